//! Helpers for Ferrovisor's boot tests (the tests themselves are in
//! `tests/`): boot a prebuilt image under an engine and check what its serial
//! console says, printing the whole console when a check fails.
//!
//! The images are built by `cargo xtask test` before these tests run; a test
//! that finds none says so instead of building behind the caller's back.
//!
//! A test that types into the machine starts it with [`start`] and gets an
//! [`Interactive`] boot: it sends bytes, waits for text printed after what
//! it has already seen, and ends with the same [`BootOutcome`] the
//! [`Checked`] helpers read.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::path::Path;
use xtask::build::{Firmware, Variant};

use xtask::runner::{self, BootOptions, BootOutcome, Console, Engine, Exit, Machine, WaitError};
use xtask::setup::{self, Found};

/// Emulators and firmware, looked up once per test binary.
fn tools() -> &'static Found {
    static TOOLS: OnceLock<Found> = OnceLock::new();
    TOOLS.get_or_init(|| setup::find_tools(&setup::boot_test_needs()))
}

/// Boots `variant`'s image for `firmware` under `engine` (QEMU as `q35`, with
/// its AHCI controller) and returns what happened. `timeout` bounds the run.
pub fn boot(
    variant: &Variant,
    engine: Engine,
    firmware: Firmware,
    timeout: Duration,
) -> BootOutcome {
    let tag = format!(
        "{}-{}-{}",
        variant.dir_name(),
        engine.name(),
        firmware.name()
    );
    boot_image(
        &variant.image(firmware),
        engine,
        firmware,
        Machine::Q35,
        timeout,
        &tag,
    )
}

/// [`boot`] on a machine with `cpus` CPUs.
pub fn boot_smp(
    variant: &Variant,
    engine: Engine,
    firmware: Firmware,
    cpus: u32,
    timeout: Duration,
) -> BootOutcome {
    let tag = format!(
        "{}-{}-{}-smp{cpus}",
        variant.dir_name(),
        engine.name(),
        firmware.name()
    );
    boot_machine(
        &variant.image(firmware),
        engine,
        firmware,
        Machine::Q35,
        cpus,
        timeout,
        &tag,
    )
}

/// [`boot`] on a machine with `memory_mib` MiB of RAM.
pub fn boot_with_memory(
    variant: &Variant,
    engine: Engine,
    firmware: Firmware,
    memory_mib: u32,
    timeout: Duration,
) -> BootOutcome {
    let tag = format!(
        "{}-{}-{}-{memory_mib}m",
        variant.dir_name(),
        engine.name(),
        firmware.name()
    );
    let image = variant.image(firmware);
    let mut opts = options(&image, engine, firmware, Machine::Q35, 1, timeout, &tag);
    opts.memory_mib = memory_mib;
    runner::boot(&opts, tools())
        .unwrap_or_else(|e| panic!("cannot boot {}: {e}", opts.image.display()))
}

/// Boots the disk image `image` under `engine` on `machine` (QEMU only);
/// `tag` names the emulator's work folder, so concurrent tests stay apart.
pub fn boot_image(
    image: &Path,
    engine: Engine,
    firmware: Firmware,
    machine: Machine,
    timeout: Duration,
    tag: &str,
) -> BootOutcome {
    boot_machine(image, engine, firmware, machine, 1, timeout, tag)
}

/// [`boot_image`] with `cpus` CPUs.
fn boot_machine(
    image: &Path,
    engine: Engine,
    firmware: Firmware,
    machine: Machine,
    cpus: u32,
    timeout: Duration,
    tag: &str,
) -> BootOutcome {
    let opts = options(image, engine, firmware, machine, cpus, timeout, tag);
    runner::boot(&opts, tools())
        .unwrap_or_else(|e| panic!("cannot boot {}: {e}", opts.image.display()))
}

/// The runner's options for one boot test.
fn options(
    image: &Path,
    engine: Engine,
    firmware: Firmware,
    machine: Machine,
    cpus: u32,
    timeout: Duration,
    tag: &str,
) -> BootOptions {
    assert!(
        image.is_file(),
        "{} is missing: the boot tests run through `cargo xtask test`, which builds the images first",
        image.display()
    );
    BootOptions {
        engine,
        firmware,
        image: image.to_path_buf(),
        cpus,
        memory_mib: 512,
        timeout,
        serial_log: None,
        echo: false,
        work_dir: xtask::out_dir().join("boot-tests").join(tag),
        machine,
        console: Console::Output,
    }
}

/// Starts `variant`'s image for `firmware` under `engine` (QEMU as `q35`)
/// with COM1 connected to the test, and returns as soon as the emulator
/// has connected it, the machine running. `timeout` bounds the whole run
/// (the emulator is killed then); `what` names the boot in failure
/// messages.
pub fn start(
    variant: &Variant,
    engine: Engine,
    firmware: Firmware,
    timeout: Duration,
    what: &str,
) -> Interactive {
    // One work folder per test (the test harness names each thread after
    // its test): two interactive boots of one image may run at once.
    let test = std::thread::current()
        .name()
        .unwrap_or("interactive")
        .replace("::", "-");
    let tag = format!(
        "{}-{}-{}-{test}",
        variant.dir_name(),
        engine.name(),
        firmware.name()
    );
    let mut opts = options(
        &variant.image(firmware),
        engine,
        firmware,
        Machine::Q35,
        1,
        timeout,
        &tag,
    );
    opts.console = Console::Interactive;
    let session = runner::start(&opts, tools())
        .unwrap_or_else(|e| panic!("cannot boot {}: {e}", opts.image.display()));
    Interactive {
        session: Some(session),
        cursor: 0,
        what: what.to_string(),
    }
}

/// A running boot the test talks to through COM1 ([`start`]). Waits look
/// for text after the cursor: the end of the last match.
pub struct Interactive {
    // `None` only once `finish` or `stop` has taken it.
    session: Option<runner::Session>,
    cursor: usize,
    what: String,
}

impl Interactive {
    fn session(&mut self) -> &mut runner::Session {
        match self.session.as_mut() {
            Some(session) => session,
            None => {
                unreachable!("the session is taken only by finish and stop, which consume self")
            }
        }
    }

    /// Everything the machine has printed so far, `\r` removed.
    pub fn console(&mut self) -> String {
        self.session().transcript().text()
    }

    /// The byte offset in [`Self::console`] after which waits look.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    fn fail(&mut self, problem: &str) -> ! {
        let session = self.session();
        // COM1 closed: the emulator is exiting; give it a moment to say how.
        let mut exit = session.poll().ok().flatten();
        let until = Instant::now() + Duration::from_secs(2);
        while exit.is_none() && session.transcript().ended() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            exit = session.poll().ok().flatten();
        }
        let elapsed = session.elapsed().as_secs_f64();
        let console = session.transcript().text();
        panic!(
            "{}: {problem}\nexit: {exit:?} after {elapsed:.1}s\n--- serial console ---\n{console}",
            self.what
        );
    }

    /// Sends `bytes` to the machine's COM1 (all at once: the emulator
    /// hands them to the UART as the guest reads).
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        if let Err(e) = self.session().send(bytes) {
            self.fail(&format!(
                "cannot send {:?}: {e}",
                String::from_utf8_lossy(bytes)
            ));
        }
        self
    }

    /// Waits up to `timeout` for `needle` to appear after the cursor and
    /// moves the cursor past it; true if it did. A machine that powers
    /// off first answers false at once.
    pub fn saw_within(&mut self, needle: &str, timeout: Duration) -> bool {
        self.try_wait(needle, timeout).is_ok()
    }

    /// Waits up to `timeout` for `needle` after the cursor; moves the
    /// cursor past it when it comes.
    fn try_wait(&mut self, needle: &str, timeout: Duration) -> Result<(), WaitError> {
        let cursor = self.cursor;
        let end = self
            .session()
            .transcript()
            .wait_for(cursor, needle, timeout)?;
        self.cursor = end;
        Ok(())
    }

    /// [`Self::saw_within`], failing the test with the whole console so
    /// far when `needle` does not come.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> &mut Self {
        let start = Instant::now();
        let cursor = self.cursor;
        match self.try_wait(needle, timeout) {
            Ok(()) => self,
            Err(WaitError::TimedOut) => self.fail(&format!(
                "the console did not show {needle:?} (after byte {cursor}) within {:.1}s",
                start.elapsed().as_secs_f64()
            )),
            Err(WaitError::Ended) => self.fail(&format!(
                "the emulator closed COM1 without showing {needle:?} (after byte {cursor})"
            )),
        }
    }

    /// Waits for the emulator to exit by itself (killed at the boot's time
    /// limit: [`Exit::TimedOut`]) and returns the outcome for [`Checked`].
    pub fn finish(mut self) -> BootOutcome {
        let what = self.what.clone();
        match self.session.take().map(runner::Session::finish) {
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) => panic!("{what}: {e}"),
            None => unreachable!("finish consumes the only handle"),
        }
    }

    /// Kills the emulator now and returns the outcome ([`Exit::Stopped`]
    /// unless it had already exited).
    pub fn stop(mut self) -> BootOutcome {
        let what = self.what.clone();
        match self.session.take().map(runner::Session::stop) {
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) => panic!("{what}: {e}"),
            None => unreachable!("stop consumes the only handle"),
        }
    }
}

/// Checks made on one boot, each failure reported with the whole console.
pub struct Checked<'a> {
    outcome: &'a BootOutcome,
    what: &'a str,
}

impl<'a> Checked<'a> {
    /// Starts checking `outcome`; `what` names the boot in failure messages.
    pub fn new(outcome: &'a BootOutcome, what: &'a str) -> Self {
        Checked { outcome, what }
    }

    fn fail(&self, problem: &str) -> ! {
        let log = match &self.outcome.emulator_log {
            Some(log) if !log.is_empty() => {
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "\n--- emulator log (last lines) ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            }
            _ => String::new(),
        };
        panic!(
            "{}: {problem}\nexit: {:?} after {:.1}s\n--- serial console ---\n{}{log}",
            self.what,
            self.outcome.exit,
            self.outcome.elapsed.as_secs_f64(),
            self.outcome.serial
        );
    }

    /// The console contains `needle`.
    pub fn saw(&self, needle: &str) -> &Self {
        if !self.outcome.saw(needle) {
            self.fail(&format!("the console never showed {needle:?}"));
        }
        self
    }

    /// The console does not contain `needle`.
    pub fn never(&self, needle: &str) -> &Self {
        if self.outcome.saw(needle) {
            self.fail(&format!("the console showed {needle:?}"));
        }
        self
    }

    /// `first` appears, and `then` appears after it.
    pub fn in_order(&self, first: &str, then: &str) -> &Self {
        let serial = &self.outcome.serial;
        match serial.find(first) {
            Some(at) if serial[at..].contains(then) => self,
            _ => self.fail(&format!("expected {first:?} followed by {then:?}")),
        }
    }

    /// A line matches `pred`; `what` describes it for the failure message.
    pub fn line(&self, what: &str, pred: impl Fn(&str) -> bool) -> &Self {
        if !self.outcome.serial.lines().any(pred) {
            self.fail(&format!("no console line {what}"));
        }
        self
    }

    /// The emulator exited by itself (it did not time out or get killed)
    /// with status `code`.
    pub fn exit_code(&self, code: i32) -> &Self {
        if self.outcome.exit != Exit::Code(code) {
            self.fail(&format!(
                "expected the emulator to exit by itself with status {code}"
            ));
        }
        self
    }

    /// The emulator exited by itself, whatever the status.
    pub fn exited(&self) -> &Self {
        if !matches!(self.outcome.exit, Exit::Code(_)) {
            self.fail("expected the emulator to exit by itself");
        }
        self
    }

    /// The emulator's own log contains `needle`.
    pub fn emulator_log_saw(&self, needle: &str) -> &Self {
        if !self
            .outcome
            .emulator_log
            .as_deref()
            .unwrap_or("")
            .contains(needle)
        {
            self.fail(&format!("the emulator's log never showed {needle:?}"));
        }
        self
    }
}
