//! `cargo xtask test`: every test, in the order that fails fastest.
//!
//! 1. set-up: toolchain components, emulators, firmware;
//! 2. formatting and clippy, warnings as errors (`cargo xtask lint`);
//! 3. host unit tests of every library crate, and a few seconds of fuzzing
//!    for each parser of untrusted input;
//! 4. the Linux guests' kernels and initramfs (`cargo xtask linux`), then
//!    the kernel and images the boot tests boot (normal and self-test
//!    builds);
//! 5. the boot tests in `tests/` (QEMU BIOS and UEFI, Bochs);
//! 6. when this host offers nested VT-x, the boot tests that need QEMU+KVM.

use std::process::Command;

use xtask::build::{self, Variant};
use xtask::host::{self, HostFacts};
use xtask::{setup, workspace_root};

/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SECONDS: u64 = 5;

/// The kernel builds the boot tests use; `tests/` names the same ones.
fn variants() -> Vec<Variant> {
    vec![
        Variant::default(),
        Variant::with_guests("test"),
        Variant::with_guests("broken"),
        Variant::with_guests("sched"),
        Variant::with_guests("cpuid-spin"),
        Variant::with_guests("smp"),
        Variant::with_guests("fidelity-crdbg"),
        Variant::with_guests("fidelity-strio"),
        Variant::with_guests("fidelity-facts"),
        Variant::with_guests("linux"),
        Variant::with_guests("linux-stock"),
        Variant::with_guests("linux-multi"),
        Variant::with_guests("linux-smp2"),
        Variant::with_guests("linux-smp4"),
        Variant::with_guests("fidelity-wxapic"),
        Variant::with_guests("console"),
        Variant::with_guests("console-linux"),
        Variant::with_guests("console-flood"),
        Variant::with_guests("big-ram"),
        Variant::with_guests("high-ram"),
        Variant::selftest("panic"),
        Variant::selftest("page-fault"),
        Variant::selftest("write-code"),
        Variant::selftest("exec-heap"),
        Variant::selftest("ghost-cpu"),
    ]
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Runs `cargo xtask test`.
pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "`cargo xtask test` takes no options (got {extra:?})"
        ));
    }
    setup::ensure_toolchain().map_err(|e| e.to_string())?;
    setup::ensure_tools(&setup::boot_test_needs()).map_err(|e| e.to_string())?;
    // A formatting slip or a clippy warning fails here, before the unit
    // tests and the slow image builds.
    crate::lint::run()?;

    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "kernel",
        "--exclude",
        "tests",
    ])?;
    cargo(&["test", "--package", "kernel", "--lib"])?;
    // The parsers of untrusted input meet a few seconds of fresh fuzzing
    // input each (`cargo xtask fuzz` runs longer).
    crate::fuzz::build()?;
    for target in crate::fuzz::TARGETS {
        crate::fuzz::run(target, FUZZ_SECONDS)?;
    }

    // The Linux guests' kernels and initramfs: fetched or built once,
    // then cached (building the small kernel takes minutes the first
    // time), before the images that carry them.
    xtask::linux::all()?;
    for variant in variants() {
        build::all(&variant).map_err(|e| e.to_string())?;
    }
    cargo(&["test", "--package", "tests"])?;

    match host::choose_str("kvm", &HostFacts::probe()) {
        Ok(_) => cargo(&["test", "--package", "tests", "--", "--ignored", "kvm"]),
        Err(why) => {
            println!("xtask: the QEMU+KVM boot tests did not run: {why}");
            Ok(())
        }
    }
}
