//! Command-line front end of the image builder, run by `cargo xtask image`.
//!
//! Usage: `boot --kernel ELF --out DIR [--ramdisk FILE] [--firmware bios|uefi|both]`.
//! Prints one `image: <firmware> <path>` line per image built.

use std::path::PathBuf;
use std::process::ExitCode;

use boot::{build_images, Firmware};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("boot: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut kernel = None;
    let mut out = None;
    let mut ramdisk = None;
    let mut firmwares = Firmware::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--ramdisk" => ramdisk = Some(PathBuf::from(value()?)),
            "--firmware" => {
                firmwares = match value()?.as_str() {
                    "bios" => vec![Firmware::Bios],
                    "uefi" => vec![Firmware::Uefi],
                    "both" => Firmware::ALL.to_vec(),
                    other => {
                        return Err(format!("unknown firmware {other:?} (bios, uefi or both)"))
                    }
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let kernel = kernel.ok_or("--kernel ELF is required")?;
    let out = out.ok_or("--out DIR is required")?;
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let images =
        build_images(&kernel, ramdisk.as_deref(), &out, &firmwares).map_err(|e| e.to_string())?;
    for (firmware, path) in images.paths {
        println!("image: {} {}", firmware.name(), path.display());
    }
    Ok(())
}
