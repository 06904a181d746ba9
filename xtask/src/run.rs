//! `cargo xtask run`: build, boot, and show the serial console.
//!
//! When stdin is a terminal the console is interactive: the terminal goes
//! into raw mode, every key reaches the machine's COM1 as it is typed
//! (Ctrl-A, Ctrl-C and the arrows included) and COM1 comes back byte for
//! byte; Ctrl-] leaves. Otherwise (a script, `</dev/null`) the console is
//! output only.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use xtask::build::{self, Firmware, Variant};
use xtask::host::{self, HostFacts};
use xtask::runner::{self, BootOptions, BootOutcome, Console, Engine, Exit, Machine, SerialInput};
use xtask::setup::Found;
use xtask::{out_dir, setup};

/// The key that leaves an interactive console: Ctrl-], as in telnet.
const ESCAPE: u8 = 0x1d;

use crate::cli::Options;

const OPTIONS: &[&str] = &[
    "--engine",
    "--firmware",
    "--cpus",
    "--memory",
    "--timeout",
    "--serial-log",
    "--log",
    "--selftest",
    "--config",
    "--machine",
];

/// Runs `cargo xtask run`.
pub fn main(args: &[String]) -> Result<(), String> {
    let o = Options::parse(args, OPTIONS)?;
    let request = o.get("--engine").unwrap_or("auto");
    let choice = host::choose_str(request, &HostFacts::probe())?;
    println!("xtask: engine {}: {}", choice.engine.name(), choice.reason);
    let firmware = match o.get("--firmware") {
        None => Firmware::Bios,
        Some(name) => Firmware::parse(name)
            .ok_or_else(|| format!("--firmware takes bios or uefi, not {name:?}"))?,
    };
    if choice.engine == Engine::Bochs && firmware == Firmware::Uefi {
        return Err(
            "Bochs boots BIOS images only; use --firmware bios (or --engine qemu for UEFI)".into(),
        );
    }
    let config = match (o.get("--config"), o.get("--selftest")) {
        (Some(dir), _) => Some(std::path::PathBuf::from(dir)),
        (None, Some(_)) => None,
        (None, None) => Some(xtask::guests::config_dir("demo")),
    };
    if let Some(dir) = &config {
        if !dir.join("hypervisor.toml").is_file() {
            return Err(format!(
                "--config {}: there is no hypervisor.toml in that folder",
                dir.display()
            ));
        }
    }
    let variant = Variant {
        log_level: o.log_level()?,
        selftest: o.get("--selftest").map(str::to_string),
        config,
    };
    let cpus = u32::try_from(o.number("--cpus", 1)?).map_err(|_| "--cpus is too large")?;
    let memory_mib =
        u32::try_from(o.number("--memory", 512)?).map_err(|_| "--memory is too large")?;
    let interactive = std::io::stdin().is_terminal();
    let timeout = match o.get("--timeout") {
        Some(_) => Duration::from_secs(o.number("--timeout", 0)?),
        // Someone at the keyboard leaves with Ctrl-]; a shell waiting for
        // them is no hang.
        None if interactive => Duration::MAX,
        None if choice.engine == Engine::Bochs => Duration::from_secs(900),
        None => Duration::from_secs(60),
    };

    setup::ensure_toolchain().map_err(|e| e.to_string())?;
    let tools =
        setup::ensure_tools(&setup::needs(choice.engine, firmware)).map_err(|e| e.to_string())?;
    build::all(&variant).map_err(|e| e.to_string())?;

    let machine = match o.get("--machine") {
        None => Machine::Q35,
        Some(name) => Machine::parse(name)
            .ok_or_else(|| format!("--machine takes q35 or pc, not {name:?}"))?,
    };
    let opts = BootOptions {
        machine,
        engine: choice.engine,
        firmware,
        image: variant.image(firmware),
        cpus,
        memory_mib,
        timeout,
        serial_log: o.get("--serial-log").map(Into::into),
        echo: true,
        console: if interactive {
            Console::Interactive
        } else {
            Console::Output
        },
        work_dir: out_dir().join("run").join(format!(
            "{}-{}",
            choice.engine.name(),
            firmware.name()
        )),
    };
    println!(
        "xtask: booting {} under {} ({} CPU, {} MiB); the console follows",
        opts.image.display(),
        choice.engine.name(),
        cpus,
        memory_mib
    );
    let outcome = if interactive {
        match interact(&opts, &tools)? {
            Some(outcome) => outcome,
            None => return Ok(()),
        }
    } else {
        runner::boot(&opts, &tools).map_err(|e| e.to_string())?
    };
    let took = outcome.elapsed.as_secs_f64();
    match outcome.exit {
        Exit::TimedOut => Err(format!(
            "the machine was still running after {}s and was stopped",
            timeout.as_secs()
        )),
        _ if outcome.saw("] FATAL ") => Err(format!(
            "Ferrovisor stopped on a fatal error after {took:.1}s (see above)"
        )),
        _ if !outcome.saw("powering off") => Err(format!(
            "the emulator ended ({:?}) after {took:.1}s without Ferrovisor powering off",
            outcome.exit
        )),
        _ => {
            println!("xtask: the machine powered off after {took:.1}s");
            Ok(())
        }
    }
}

/// Boots with the terminal as the machine's COM1 until the emulator exits
/// (its outcome) or Ctrl-] is pressed (`None`, the emulator killed).
fn interact(opts: &BootOptions, tools: &Found) -> Result<Option<BootOutcome>, String> {
    println!(
        "xtask: keys go to the machine; Ctrl-] leaves the emulator, \
         Ctrl-A three times moves the focus to the next guest or the monitor"
    );
    let mut session = runner::start(opts, tools).map_err(|e| e.to_string())?;
    let raw = RawTerminal::enter()?;
    let keys = forward_keys(session.input().map_err(|e| e.to_string())?);
    let left = loop {
        match keys.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => break true,
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if session.poll().map_err(|e| e.to_string())?.is_some() {
            break false;
        }
    };
    if left {
        session.stop().map_err(|e| e.to_string())?;
        drop(raw);
        println!("\nxtask: left the emulator (Ctrl-]); the machine was stopped");
        return Ok(None);
    }
    let outcome = session.finish().map_err(|e| e.to_string())?;
    drop(raw);
    println!();
    Ok(Some(outcome))
}

/// Forwards stdin to `input` byte for byte on a thread of its own, which
/// sends once on the returned channel when Ctrl-] is pressed. At the end of
/// stdin it stops forwarding and leaves the machine running.
fn forward_keys(mut input: SerialInput) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 256];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let keys = buf.get(..n).unwrap_or_default();
            let (before, escape) = match keys.iter().position(|&b| b == ESCAPE) {
                Some(at) => (keys.get(..at).unwrap_or_default(), true),
                None => (keys, false),
            };
            // The machine gone, the main thread sees its exit: stop here.
            if input.send(before).is_err() {
                return;
            }
            if escape {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx
}

/// The terminal in raw mode without echo, as long as this lives: the
/// settings `stty -g` printed before are put back when it is dropped, on
/// every way out (a return, an error, a panic's unwinding).
struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    fn enter() -> Result<RawTerminal, String> {
        let saved = stty(&["-g"])?;
        stty(&["raw", "-echo"])?;
        Ok(RawTerminal {
            saved: saved.trim().to_string(),
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(why) = stty(&[self.saved.as_str()]) {
            eprintln!("xtask: {why}; `stty sane` repairs the terminal");
        }
    }
}

/// Runs `stty` on the controlling terminal and returns what it printed.
fn stty(args: &[&str]) -> Result<String, String> {
    let tty = File::open("/dev/tty").map_err(|e| format!("cannot open /dev/tty: {e}"))?;
    let out = Command::new("stty")
        .args(args)
        .stdin(tty)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run stty: {e}"))?;
    if !out.status.success() {
        return Err(format!("`stty {}` failed ({})", args.join(" "), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
