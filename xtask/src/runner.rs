//! Booting an image under an emulator and collecting its serial console.
//!
//! By default ([`Console::Output`]) QEMU's serial port goes to its stdout,
//! read through a pipe, and Bochs writes its COM1 to a file, which is
//! followed while it runs. With [`Console::Interactive`] either emulator
//! connects its COM1 to a loopback TCP socket instead (see `console`), so
//! the caller can also type into the machine ([`start`], [`Session`]).
//! Either way everything is kept (for the boot tests) and, when asked,
//! echoed live to the terminal. A time limit kills the emulator and says
//! so.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::build::Firmware;
use crate::setup::Found;

mod console;

use console::Com1Listener;
pub use console::{find_from, SerialInput, Transcript, WaitError};

/// The emulators Ferrovisor boots under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// QEMU with TCG, emulating the CPU model [`TcgCpu`] names: SVM with
    /// nested paging by default, or no virtualization extension at all.
    Qemu(TcgCpu),
    /// QEMU with KVM and the host's CPU (`-cpu host`): nested VT-x on an
    /// Intel host, nested SVM on an AMD one.
    Kvm,
    /// Bochs: emulates VT-x with EPT, slowly.
    Bochs,
}

impl Engine {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Qemu(TcgCpu::Svm) => "qemu",
            Engine::Qemu(TcgCpu::NoVirtualization) => "qemu-novirt",
            Engine::Qemu(TcgCpu::SvmCounted) => "qemu-icount",
            Engine::Kvm => "kvm",
            Engine::Bochs => "bochs",
        }
    }
}

/// The CPU QEMU's TCG emulates. TCG never emulates VT-x; QEMU 7.2's SVM
/// offers nested paging, VGIF and the SVME address check, and nothing else
/// (no NRIP save, decode assists, VMCB clean bits, flush by ASID or PAUSE
/// filter), so the SVM backend runs there on its fallbacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcgCpu {
    /// `-cpu max`: `AuthenticAMD` with SVM, nested paging and 1 GiB pages,
    /// and every other feature TCG emulates, so QEMU warns about none. (The
    /// `EPYC` models ask for features TCG lacks, NRIP save among them, and
    /// QEMU warns and drops them.)
    #[default]
    Svm,
    /// `-cpu qemu64,-svm`: an `AuthenticAMD` CPU with neither VT-x nor SVM,
    /// for the "no virtualization" path. (Plain `qemu64` lists SVM without
    /// nested paging, which is a different path.)
    NoVirtualization,
    /// `-cpu max` with `-icount shift=7,sleep=off`: time is the count of
    /// instructions (128 ns each, the TSC at 1 GHz), so a boot runs the
    /// same way every time, as under Bochs, one emulated CPU after the
    /// other on one host thread. A 10 ms slice is about 78,000
    /// instructions, near Bochs's 100,000: the scheduler's share tests and
    /// the bench's SVM figures use it.
    SvmCounted,
}

impl TcgCpu {
    /// The value of QEMU's `-cpu` option.
    pub fn qemu_model(self) -> &'static str {
        match self {
            TcgCpu::Svm | TcgCpu::SvmCounted => "max",
            TcgCpu::NoVirtualization => "qemu64,-svm",
        }
    }

    /// QEMU's `-icount` option, where time follows the instruction count.
    pub fn icount(self) -> Option<&'static str> {
        match self {
            TcgCpu::SvmCounted => Some("shift=7,sleep=off"),
            TcgCpu::Svm | TcgCpu::NoVirtualization => None,
        }
    }
}

/// One boot of one image.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// Which emulator.
    pub engine: Engine,
    /// Which firmware; Bochs boots BIOS images only.
    pub firmware: Firmware,
    /// The disk image.
    pub image: PathBuf,
    /// Number of CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Kill the emulator after this long.
    pub timeout: Duration,
    /// Also write the serial console to this file.
    pub serial_log: Option<PathBuf>,
    /// Echo serial lines to stdout as they arrive.
    pub echo: bool,
    /// Folder for the emulator's own files (Bochs config and log, OVMF
    /// variables); made if missing.
    pub work_dir: PathBuf,
    /// The machine QEMU emulates (Bochs has one machine).
    pub machine: Machine,
    /// What COM1 is connected to: output only (the default), or a two-way
    /// stream. [`boot`] with either collects the same console; only
    /// [`start`] lets the caller type.
    pub console: Console,
}

/// What the machine's COM1 is connected to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Console {
    /// Output only: QEMU's stdout, Bochs's file; the machine reads nothing.
    #[default]
    Output,
    /// A two-way byte stream over a loopback TCP socket: the machine's
    /// output is collected as with `Output` (echoed byte for byte, `\r`
    /// kept, when `echo` is set), and bytes sent reach its UART.
    Interactive,
}

/// The PC QEMU emulates, which decides the disk controller the image sits
/// on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Machine {
    /// `q35`: ICH9 with its AHCI SATA controller (the default).
    #[default]
    Q35,
    /// `pc`: i440FX with the PIIX IDE controller (ATA).
    Pc,
}

impl Machine {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }

    /// Parses `q35` or `pc`.
    pub fn parse(s: &str) -> Option<Machine> {
        match s {
            "q35" => Some(Machine::Q35),
            "pc" => Some(Machine::Pc),
            _ => None,
        }
    }
}

/// How the emulator ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited by itself with this status code.
    Code(i32),
    /// It was killed by a signal it did not send itself.
    Signal,
    /// It ran past the time limit and was killed.
    TimedOut,
    /// The caller stopped it ([`Session::stop`]).
    Stopped,
}

/// What one boot produced.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    /// The serial console, `\r` removed.
    pub serial: String,
    /// How the emulator ended.
    pub exit: Exit,
    /// The emulator's own log where it keeps one (Bochs).
    pub emulator_log: Option<String>,
    /// Wall-clock time the boot took.
    pub elapsed: Duration,
}

impl BootOutcome {
    /// Whether the serial console contains `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.serial.contains(needle)
    }
}

/// Why a boot could not be carried out at all.
#[derive(Debug)]
pub struct RunError(pub String);

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// Bochs's memory line for `mib` MiB: `megs` up to the 2048 MiB Bochs
/// allocates at once; beyond, `memory: guest=..., host=2048`, where Bochs
/// keeps the guest's memory in blocks and holds 2048 MiB of them in host
/// memory at a time (a 4 GiB guest for the memory benchmark).
fn bochs_memory(mib: u32) -> String {
    const BOCHS_HOST_MAX_MIB: u32 = 2048;
    if mib <= BOCHS_HOST_MAX_MIB {
        format!("megs: {mib}")
    } else {
        format!("memory: guest={mib}, host={BOCHS_HOST_MAX_MIB}")
    }
}

/// Boots `opts.image` and waits for the machine to power off or the time
/// limit to pass.
pub fn boot(opts: &BootOptions, tools: &Found) -> Result<BootOutcome, RunError> {
    if opts.console == Console::Interactive {
        return start(opts, tools)?.finish();
    }
    prepare(opts)?;
    match opts.engine {
        Engine::Qemu(_) | Engine::Kvm => boot_qemu(opts, tools),
        Engine::Bochs => boot_bochs(opts, tools),
    }
}

fn prepare(opts: &BootOptions) -> Result<(), RunError> {
    if !opts.image.is_file() {
        return Err(RunError(format!(
            "disk image {} does not exist",
            opts.image.display()
        )));
    }
    fs::create_dir_all(&opts.work_dir)
        .map_err(|e| RunError(format!("cannot create {}: {e}", opts.work_dir.display())))
}

/// The QEMU command line for `opts`, its serial port on its stdout.
pub fn qemu_command(opts: &BootOptions, tools: &Found) -> Result<Command, RunError> {
    qemu_command_for(opts, tools, None)
}

/// The QEMU command line for `opts`, COM1 on stdout, or connecting to
/// the Unix socket `com1` when given.
fn qemu_command_for(
    opts: &BootOptions,
    tools: &Found,
    com1: Option<&Path>,
) -> Result<Command, RunError> {
    let qemu = tools
        .qemu
        .as_ref()
        .ok_or_else(|| RunError("QEMU was not found".into()))?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", opts.machine.name()]);
    cmd.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    match com1 {
        None => cmd.args(["-serial", "stdio"]),
        // A socket client: QEMU connects while it starts (it fails to start
        // if it cannot) and reads from it only what the UART has room for.
        // (A comma in an option value is written twice.)
        Some(path) => cmd
            .arg("-chardev")
            .arg(format!(
                "socket,id=com1,path={}",
                path.display().to_string().replace(',', ",,")
            ))
            .args(["-serial", "chardev:com1"]),
    };
    cmd.arg("-m").arg(format!("{}M", opts.memory_mib));
    cmd.arg("-smp").arg(opts.cpus.to_string());
    match opts.engine {
        // `host` passes the CPU's VMX or SVM capabilities through to
        // Ferrovisor.
        Engine::Kvm => {
            cmd.args(["-enable-kvm", "-cpu", "host"]);
        }
        Engine::Qemu(cpu) => {
            cmd.args(["-accel", "tcg", "-cpu", cpu.qemu_model()]);
            if let Some(icount) = cpu.icount() {
                cmd.args(["-icount", icount]);
            }
        }
        Engine::Bochs => {}
    }
    // `snapshot=on`: QEMU opens the image read-only (writes would go to a
    // temporary overlay), so several boots of one image can run at once
    // and a run never changes the built image.
    cmd.arg("-drive").arg(format!(
        "format=raw,file={},if=ide,index=0,media=disk,snapshot=on",
        opts.image.display()
    ));
    if opts.firmware == Firmware::Uefi {
        let ovmf = tools
            .ovmf
            .as_ref()
            .ok_or_else(|| RunError("OVMF (UEFI firmware) was not found".into()))?;
        match &ovmf.vars {
            Some(vars_template) => {
                // Split firmware: read-only code plus a private copy of the
                // variable store, so runs never share or dirty the template.
                let vars = opts.work_dir.join("OVMF_VARS.fd");
                fs::copy(vars_template, &vars).map_err(|e| {
                    RunError(format!("cannot copy {}: {e}", vars_template.display()))
                })?;
                cmd.arg("-drive").arg(format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    ovmf.code.display()
                ));
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            None => {
                cmd.arg("-bios").arg(&ovmf.code);
            }
        }
    }
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

fn boot_qemu(opts: &BootOptions, tools: &Found) -> Result<BootOutcome, RunError> {
    let mut cmd = qemu_command(opts, tools)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| RunError(format!("cannot start QEMU: {e}")))?;
    let lines = spawn_line_reader(child.stdout.take());
    let stderr = spawn_collector(child.stderr.take());
    let (serial, exit) = collect(&mut child, lines, opts, start)?;
    let stderr = stderr.join().unwrap_or_default();
    if !stderr.trim().is_empty() {
        eprintln!("qemu: {}", stderr.trim());
    }
    Ok(BootOutcome {
        serial,
        exit,
        emulator_log: Some(stderr),
        elapsed: start.elapsed(),
    })
}

/// The Bochs configuration for `opts`, as written to `bochsrc.txt`.
///
/// Each setting answers one of the quirks listed in DESIGN.md: a display
/// that needs no viewer (Debian's Bochs has no `nogui`), the cirrus VGA the
/// bootloader's BIOS stage needs, `ips` and `clock` settings that skip the
/// ROM BIOS's emulated delays, and COM1 to a file (`serial`).
///
/// The display is `term` with its panics only reported: the bootloader
/// leaves the cirrus card in an 800x600x24 mode that no Debian display
/// library can show, and each reports that as a panic at its next
/// host-timed refresh, so a fatal panic there killed boots that took longer
/// in wall-clock time (a loaded machine) at random. `rfb` with its panics
/// reported was tried and aborts in `free()` at exit after that panic;
/// `term` shuts down cleanly. Every other panic still stops Bochs.
///
/// Sound is off: with the PC speaker on, Bochs starts its sound mixer
/// thread, which aborts ("buffer overflow detected", in `mixer_thread`) on
/// hosts without an ALSA device, killing the boot before any output.
pub fn bochs_config(
    opts: &BootOptions,
    tools: &Found,
    serial: &Path,
    log: &Path,
) -> Result<String, RunError> {
    bochs_config_for(opts, tools, &Com1::File(serial), log)
}

/// Where the emulator's COM1 goes.
enum Com1<'a> {
    /// Output to this file (Bochs).
    File(&'a Path),
    /// A socket the emulator connects to while it starts.
    Connect(SocketAddr),
}

/// [`bochs_config`] with COM1 to a file or, as a socket client, to a
/// listener: Bochs connects while it starts (a failed connection would
/// leave COM1 unconnected; the runner listens before it starts Bochs) and
/// takes a byte from the socket only when the UART's receive buffer is
/// empty.
fn bochs_config_for(
    opts: &BootOptions,
    tools: &Found,
    com1: &Com1<'_>,
    log: &Path,
) -> Result<String, RunError> {
    let com1 = match com1 {
        Com1::File(path) => format!("mode=file, dev=\"{}\"", path.display()),
        Com1::Connect(addr) => format!("mode=socket-client, dev=\"{addr}\""),
    };
    let bochs = tools
        .bochs
        .as_ref()
        .ok_or_else(|| RunError("Bochs was not found".into()))?;
    Ok(format!(
        "\
{memory}
cpu: model=corei7_skylake_x, count={cpus}, ips=10000000, reset_on_triple_fault=0
romimage: file=\"{bios}\"
vgaromimage: file=\"{vgabios}\"
vga: extension=cirrus
pci: enabled=1, chipset=i440fx, slot1=cirrus
display_library: term
ata0-master: type=disk, path=\"{image}\", mode=volatile
boot: disk
clock: sync=none, time0=local
com1: enabled=1, {com1}
speaker: enabled=0
sound: driver=dummy
log: \"{log}\"
panic: action=fatal, term=report
error: action=report
info: action=report
debug: action=ignore
",
        memory = bochs_memory(opts.memory_mib),
        cpus = opts.cpus,
        bios = bochs.bios.display(),
        vgabios = bochs.vgabios.display(),
        image = opts.image.display(),
        com1 = com1,
        log = log.display(),
    ))
}

fn boot_bochs(opts: &BootOptions, tools: &Found) -> Result<BootOutcome, RunError> {
    let serial_path = opts.work_dir.join("com1.txt");
    let _ = fs::remove_file(&serial_path);
    fs::write(&serial_path, "")
        .map_err(|e| RunError(format!("cannot write {}: {e}", serial_path.display())))?;
    let (mut cmd, log_path) = bochs_command(opts, tools, &Com1::File(&serial_path))?;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| RunError(format!("cannot start Bochs: {e}")))?;
    let lines = spawn_file_follower(serial_path.clone());
    let (serial, exit) = collect(&mut child, lines, opts, start)?;
    let _ = fs::remove_file(bochs_lock(opts));
    let emulator_log = fs::read_to_string(&log_path).ok();
    Ok(BootOutcome {
        serial,
        exit,
        emulator_log,
        elapsed: start.elapsed(),
    })
}

/// The lock file Bochs keeps beside a disk image it has open.
fn bochs_lock(opts: &BootOptions) -> PathBuf {
    PathBuf::from(format!("{}.lock", opts.image.display()))
}

/// Writes Bochs's configuration and debugger script for `opts` into the
/// work folder and returns the command that starts it, with the path of
/// the log it will write.
fn bochs_command(
    opts: &BootOptions,
    tools: &Found,
    com1: &Com1<'_>,
) -> Result<(Command, PathBuf), RunError> {
    if opts.firmware != Firmware::Bios {
        return Err(RunError(
            "Bochs boots BIOS images only; use --firmware bios".into(),
        ));
    }
    let bochs = tools
        .bochs
        .as_ref()
        .ok_or_else(|| RunError("Bochs was not found".into()))?;
    let log_path = opts.work_dir.join("bochs.log");
    let rc_path = opts.work_dir.join("bochsrc.txt");
    let debugger_rc = opts.work_dir.join("debugger.rc");
    // A killed Bochs leaves `IMAGE.lock` behind and the next run refuses the
    // disk; Bochs runs are never shared, so a stale lock is always ours.
    let _ = fs::remove_file(bochs_lock(opts));
    let _ = fs::remove_file(&log_path);
    let config = bochs_config_for(opts, tools, com1, &log_path)?;
    fs::write(&rc_path, config)
        .map_err(|e| RunError(format!("cannot write {}: {e}", rc_path.display())))?;
    // Debian's Bochs has the debugger built in and stops at its prompt;
    // this script tells it to continue at once.
    fs::write(&debugger_rc, "c\n")
        .map_err(|e| RunError(format!("cannot write {}: {e}", debugger_rc.display())))?;

    let mut cmd = Command::new(&bochs.binary);
    // The term display draws with curses on stdout (sent to /dev/null); it
    // needs some terminal type, and the plainest will do.
    cmd.env("TERM", "dumb");
    cmd.arg("-q")
        .arg("-f")
        .arg(&rc_path)
        .arg("-rc")
        .arg(&debugger_rc);
    cmd.current_dir(&opts.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok((cmd, log_path))
}

/// Starts a boot of `opts.image` with COM1 as a two-way stream (whatever
/// `opts.console` says) and returns at once, the machine running: the
/// caller sends input, watches the [`Transcript`], and ends with
/// [`Session::finish`] or [`Session::stop`]. The output is echoed and
/// logged as `opts` asks, as [`boot`] does.
pub fn start(opts: &BootOptions, tools: &Found) -> Result<Session, RunError> {
    prepare(opts)?;
    let listener = match opts.engine {
        Engine::Qemu(_) | Engine::Kvm => Com1Listener::unix(),
        Engine::Bochs => Com1Listener::tcp(),
    }
    .map_err(|e| RunError(format!("cannot listen for COM1: {e}")))?;
    let (mut cmd, log) = match (listener.addr(), listener.path()) {
        (None, Some(path)) => {
            let mut cmd = qemu_command_for(opts, tools, Some(path))?;
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            (cmd, EmulatorLog::Stderr(None))
        }
        (Some(addr), _) => {
            let (cmd, path) = bochs_command(opts, tools, &Com1::Connect(addr))?;
            (cmd, EmulatorLog::File(path))
        }
        (None, None) => unreachable!("a listener has an address or a path"),
    };
    let serial_log = match &opts.serial_log {
        Some(path) => Some(
            fs::File::create(path)
                .map_err(|e| RunError(format!("cannot create {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        RunError(format!(
            "cannot start {}: {e}",
            cmd.get_program().to_string_lossy()
        ))
    })?;
    let log = match log {
        EmulatorLog::Stderr(_) => EmulatorLog::Stderr(Some(spawn_collector(child.stderr.take()))),
        file => file,
    };
    let mut session = Session {
        child,
        input: None,
        transcript: Transcript::new(),
        reader: None,
        log,
        bochs_lock: (opts.engine == Engine::Bochs).then(|| bochs_lock(opts)),
        started,
        timeout: opts.timeout,
        exit: None,
    };
    let stream = match listener.accept(&mut session.child) {
        Ok(stream) => stream,
        Err(why) => {
            // No reader ever started: nothing more will come.
            session.transcript.end();
            let outcome = session.stop()?;
            let said = outcome.emulator_log.unwrap_or_default();
            return Err(RunError(format!("{why}\n{}", said.trim_end())));
        }
    };
    let (input, reader) =
        console::spawn_reader(stream, session.transcript.clone(), opts.echo, serial_log)
            .map_err(|e| RunError(format!("cannot read COM1: {e}")))?;
    session.input = Some(input);
    session.reader = Some(reader);
    Ok(session)
}

/// Where a session finds the emulator's own log.
enum EmulatorLog {
    /// QEMU's stderr, being collected.
    Stderr(Option<thread::JoinHandle<String>>),
    /// Bochs's log file.
    File(PathBuf),
}

/// A running boot whose COM1 the caller talks to ([`start`]). Dropping it
/// kills the emulator.
pub struct Session {
    child: Child,
    input: Option<SerialInput>,
    transcript: Transcript,
    reader: Option<thread::JoinHandle<()>>,
    log: EmulatorLog,
    bochs_lock: Option<PathBuf>,
    started: Instant,
    timeout: Duration,
    exit: Option<Exit>,
}

impl Session {
    /// What the machine has printed so far; a clone follows it from
    /// another thread.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Sends `bytes` to the machine's COM1.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), RunError> {
        self.input
            .as_mut()
            .ok_or_else(|| RunError("COM1 is not connected".into()))?
            .send(bytes)
            .map_err(|e| RunError(format!("cannot send to COM1: {e}")))
    }

    /// A second handle on COM1's input, for a thread that forwards a
    /// keyboard.
    pub fn input(&self) -> Result<SerialInput, RunError> {
        self.input
            .as_ref()
            .ok_or_else(|| RunError("COM1 is not connected".into()))?
            .try_clone()
            .map_err(|e| RunError(format!("cannot share COM1's input: {e}")))
    }

    /// Time since the emulator started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// How the emulator ended, if it has: checks without waiting, and
    /// kills it once the time limit has passed.
    pub fn poll(&mut self) -> Result<Option<Exit>, RunError> {
        if self.exit.is_none() {
            let status = self
                .child
                .try_wait()
                .map_err(|e| RunError(format!("cannot wait for the emulator: {e}")))?;
            self.exit = match status {
                Some(status) => Some(match status.code() {
                    Some(code) => Exit::Code(code),
                    None => Exit::Signal,
                }),
                None if self.started.elapsed() > self.timeout => {
                    self.kill();
                    Some(Exit::TimedOut)
                }
                None => None,
            };
        }
        Ok(self.exit)
    }

    /// Waits for the emulator to exit by itself, killing it at the time
    /// limit, and returns what the boot produced.
    pub fn finish(mut self) -> Result<BootOutcome, RunError> {
        while self.poll()?.is_none() {
            thread::sleep(Duration::from_millis(20));
        }
        Ok(self.outcome())
    }

    /// Kills the emulator now (unless it has already exited) and returns
    /// what the boot produced; the exit is [`Exit::Stopped`] then.
    pub fn stop(mut self) -> Result<BootOutcome, RunError> {
        if self.poll()?.is_none() {
            self.kill();
            self.exit = Some(Exit::Stopped);
        }
        Ok(self.outcome())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The outcome once the emulator has ended.
    fn outcome(&mut self) -> BootOutcome {
        let elapsed = self.started.elapsed();
        // The emulator's end closes COM1; the reader then has the last
        // bytes. A child of the emulator holding the socket must not hang
        // the caller, hence the bound.
        if self.transcript.wait_ended(Duration::from_secs(5)) {
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
        self.input = None;
        if let Some(lock) = &self.bochs_lock {
            let _ = fs::remove_file(lock);
        }
        let emulator_log = match &mut self.log {
            EmulatorLog::Stderr(collector) => {
                let stderr = collector
                    .take()
                    .and_then(|c| c.join().ok())
                    .unwrap_or_default();
                if !stderr.trim().is_empty() {
                    eprintln!("qemu: {}", stderr.trim());
                }
                Some(stderr)
            }
            EmulatorLog::File(path) => fs::read_to_string(path).ok(),
        };
        BootOutcome {
            serial: self.transcript.text(),
            exit: self.exit.unwrap_or(Exit::Stopped),
            emulator_log,
            elapsed,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
        }
    }
}

/// Lines from the emulator, or the end of its output.
enum Line {
    Text(String),
    End,
}

fn spawn_line_reader(stdout: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Some(stdout) = stdout {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                if tx
                    .send(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
                    .is_err()
                {
                    return;
                }
                buf.clear();
            }
        }
        let _ = tx.send(Line::End);
    });
    rx
}

fn spawn_collector(stream: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_string(&mut text);
        }
        text
    })
}

/// Follows a file that another process appends to, sending complete lines.
/// It never sends `End`: the caller stops when the process exits.
fn spawn_file_follower(path: PathBuf) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut offset = 0usize;
        let mut pending = Vec::new();
        loop {
            if let Ok(bytes) = fs::read(&path) {
                if bytes.len() > offset {
                    pending.extend_from_slice(&bytes[offset..]);
                    offset = bytes.len();
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        if tx
                            .send(Line::Text(String::from_utf8_lossy(&line).into_owned()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    rx
}

/// Gathers serial lines until the emulator exits or the time runs out.
fn collect(
    child: &mut Child,
    lines: mpsc::Receiver<Line>,
    opts: &BootOptions,
    start: Instant,
) -> Result<(String, Exit), RunError> {
    let mut log_file = match &opts.serial_log {
        Some(path) => Some(
            fs::File::create(path)
                .map_err(|e| RunError(format!("cannot create {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let mut serial = String::new();
    let mut take = |text: String| {
        let text = text.replace('\r', "");
        if opts.echo {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
        if let Some(file) = log_file.as_mut() {
            let _ = file.write_all(text.as_bytes());
        }
        serial.push_str(&text);
    };
    let mut status: Option<ExitStatus> = None;
    let exit = loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(Line::Text(text)) => take(text),
            Ok(Line::End)
            | Err(mpsc::RecvTimeoutError::Timeout)
            | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if status.is_none() {
            status = child
                .try_wait()
                .map_err(|e| RunError(format!("cannot wait for the emulator: {e}")))?;
        }
        if let Some(status) = status {
            // Drain what the reader still holds (the follower needs one more
            // look at the file), then report.
            let drain_until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < drain_until {
                match lines.recv_timeout(Duration::from_millis(60)) {
                    Ok(Line::Text(text)) => take(text),
                    Ok(Line::End) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            break match status.code() {
                Some(code) => Exit::Code(code),
                None => Exit::Signal,
            };
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut;
        }
    };
    Ok((serial, exit))
}
