//! `cargo xtask`: build, image, run and test Ferrovisor.
//!
//! One subcommand per module: `build` and `image` (build.rs), `run`
//! (run.rs), `test` (test.rs), `lint` (lint.rs), `bench` (bench.rs), `fuzz`
//! (fuzz.rs). Run `cargo xtask help`.

mod bench;
mod cli;
mod fuzz;
mod lint;
mod run;
mod test;

use std::process::ExitCode;

use xtask::build::{self, Variant};

const HELP: &str = "\
cargo xtask <command> [options]

commands:
  build    build the kernel                          [--log LEVEL]
  image    build the kernel and the disk image (GPT, boots by BIOS and UEFI, with
           the FERROCFG config partition)   [--log LEVEL] [--config DIR]
                                            [--selftest NAME]
  run      build, then boot the image with the serial console on this terminal
             --engine auto|qemu|qemu-icount|qemu-novirt|kvm|bochs
                            (default auto: QEMU+KVM when this host offers
                            nested VT-x or SVM, else Bochs; qemu: TCG with
                            SVM; qemu-icount: the same, time counted in
                            instructions; qemu-novirt: no virtualization)
             --firmware bios|uefi           (default bios)
             --cpus N        (default 1)     --memory MIB   (default 512)
             --timeout SECS  (default 60 for QEMU, 900 for Bochs)
             --serial-log FILE              also write the console to FILE
             --log error|warn|info|debug|trace   kernel log level (default info)
             --selftest NAME    build in a deliberate failure (the boot tests use
                                these to check the fatal paths): panic,
                                page-fault, write-code, exec-heap, ghost-cpu
             --config DIR   boot the guests of DIR/hypervisor.toml, with the
                            test guests built from guest-images/asm (default
                            guest-images/default)
             --machine q35|pc   QEMU's machine: AHCI (default) or IDE disk
  linux    fetch or build the Linux guests' images (cached under target/ferrovisor/linux):
           Debian's stock kernel, a small kernel from guest-images/linux/small.config
           and a busybox initramfs; prints their paths (a stock kernel of your own:
           FERROVISOR_STOCK_VMLINUZ=FILE)
  test     every test: the lint checks, host unit tests, then boot tests under
           QEMU (BIOS, UEFI) and Bochs, and under QEMU+KVM when this host offers
           nested VT-x
  lint     rustfmt --check and clippy -D warnings on every crate (the kernel
           also for its bare-metal target); `test` runs these first
  bench    benchmarks under Bochs (VM-exit round trips, scheduling, Linux boots under
           Ferrovisor and natively, the small kernel with 1, 2 and 4 vCPUs);
           writes BENCHMARKS.md
             [--quick]     leave out the stock kernel's boots; print, do not write
             [--exits]     only the VM-exit round trips; print, do not write
             [--peer kvm]  also run the VM-exit guest under Linux KVM (Debian's
                           stock kernel and its kvm modules, natively under
                           Bochs; with default mitigations and with them off)
  fuzz     fuzz the parsers of untrusted input (config, image loaders, ramdisk)
             [--seconds N (default 30)] [TARGET...]
  help     this text

Missing emulators, firmware and toolchain components are installed when run
as root on Debian/Ubuntu; otherwise the command to install them is printed.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    };
    let result = match command.as_str() {
        "build" => cli::Options::parse(rest, &["--log"]).and_then(|o| {
            xtask::setup::ensure_toolchain().map_err(|e| e.to_string())?;
            build::kernel(&Variant::with_log_level(&o.log_level()?))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        "image" => cli::Options::parse(rest, &["--log", "--config", "--selftest"]).and_then(|o| {
            xtask::setup::ensure_toolchain().map_err(|e| e.to_string())?;
            xtask::setup::ensure_tools(&[xtask::setup::Tool::Mtools]).map_err(|e| e.to_string())?;
            let mut variant = Variant::with_log_level(&o.log_level()?);
            if let Some(dir) = o.get("--config") {
                variant.config = Some(dir.into());
            }
            // The build a self-test boot test uses (`Variant::selftest`).
            if let Some(test) = o.get("--selftest") {
                variant = Variant {
                    log_level: variant.log_level,
                    ..Variant::selftest(test)
                };
            }
            build::all(&variant).map_err(|e| e.to_string())?;
            println!("xtask: the disk image is {}", variant.disk().display());
            Ok(())
        }),
        "linux" => xtask::linux::main(rest),
        "run" => run::main(rest),
        "test" => test::main(rest),
        "lint" => lint::main(rest),
        "bench" => bench::main(rest),
        "fuzz" => fuzz::main(rest),
        "help" | "-h" | "--help" => {
            println!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}; run `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}
