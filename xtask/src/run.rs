//! `cargo xtask run`: build, boot, and show the serial console.

use std::time::Duration;

use xtask::build::{self, Firmware, Variant};
use xtask::host::{self, HostFacts};
use xtask::runner::{self, BootOptions, Engine, Exit, Machine};
use xtask::{out_dir, setup};

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
    let default_timeout = if choice.engine == Engine::Bochs {
        900
    } else {
        60
    };
    let timeout = Duration::from_secs(o.number("--timeout", default_timeout)?);

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
    let outcome = runner::boot(&opts, &tools).map_err(|e| e.to_string())?;
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
