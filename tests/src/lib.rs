//! Helpers for Ferrovisor's boot tests (the tests themselves are in
//! `tests/`): boot a prebuilt image under an engine and check what its serial
//! console says, printing the whole console when a check fails.
//!
//! The images are built by `cargo xtask test` before these tests run; a test
//! that finds none says so instead of building behind the caller's back.

use std::sync::OnceLock;
use std::time::Duration;

use std::path::Path;
use xtask::build::{Firmware, Variant};

use xtask::runner::{self, BootOptions, BootOutcome, Engine, Exit, Machine};
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
    assert!(
        image.is_file(),
        "{} is missing: the boot tests run through `cargo xtask test`, which builds the images first",
        image.display()
    );
    let opts = BootOptions {
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
    };
    runner::boot(&opts, tools())
        .unwrap_or_else(|e| panic!("cannot boot {}: {e}", opts.image.display()))
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
