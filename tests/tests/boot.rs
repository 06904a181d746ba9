//! Boot tests: the real image under QEMU (BIOS and UEFI), Bochs, and QEMU+KVM
//! where the host offers nested VT-x. Each reads the serial console and the
//! emulator's exit.

use std::time::Duration;

use tests::{boot, Checked};
use xtask::build::{Firmware, Variant};
use xtask::runner::Engine;

const QEMU_LIMIT: Duration = Duration::from_secs(120);
const BOCHS_LIMIT: Duration = Duration::from_secs(1200);

/// N from a `memory: <N> MiB usable` line.
fn usable_mib(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" MiB usable")?;
    before.rsplit("memory: ").next()?.parse().ok()
}

/// What every clean boot prints, in order, whatever the CPU.
fn common_report(c: &Checked<'_>) {
    c.line("`ferrovisor <version> starting`", |l| {
        l.contains(&format!("ferrovisor {} starting", env!("CARGO_PKG_VERSION")))
    })
    .line("`memory: <N> MiB usable` with N > 400 of 512", |l| usable_mib(l).is_some_and(|n| n > 400 && n <= 512))
    .in_order("starting", "memory: ")
    .never("FATAL")
    .never("ERROR");
}

/// QEMU without KVM offers no VT-x: the report says so in one line, with
/// what to do, and the machine powers off through ACPI (QEMU exits 0; the
/// emulator exit ports would give another status).
fn qemu_without_vtx(firmware: Firmware) {
    let out = boot(&Variant::default(), Engine::Qemu, firmware, QEMU_LIMIT);
    let c = Checked::new(&out, "QEMU TCG boot");
    common_report(&c);
    c.line("`cpu0: VT-x unavailable: <reason>` naming the fixes", |l| {
        l.contains("cpu0: VT-x unavailable: ")
            && l.contains("does not offer VT-x")
            && l.contains("firmware settings")
            && l.contains("--engine bochs")
    })
    .never("VT-x ready")
    .in_order("VT-x unavailable", "powering off")
    .never("powering off after a failure")
    .exit_code(0);
}

#[test]
fn qemu_bios_reports_no_vtx_and_powers_off() {
    qemu_without_vtx(Firmware::Bios);
}

#[test]
fn qemu_uefi_reports_no_vtx_and_powers_off() {
    qemu_without_vtx(Firmware::Uefi);
}

/// A panic prints a FATAL line with the message and location and powers off
/// with the failure indication.
#[test]
fn panic_reports_and_powers_off_with_failure() {
    let out = boot(&Variant::selftest("panic"), Engine::Qemu, Firmware::Bios, QEMU_LIMIT);
    Checked::new(&out, "QEMU boot with a deliberate panic")
        .line("`FATAL panic at <file>:<line>: selftest: deliberate panic`", |l| {
            l.contains("] FATAL panic at ") && l.contains("selftest.rs:") && l.ends_with("selftest: deliberate panic")
        })
        .in_order("FATAL", "powering off after a failure")
        .exit_code(0);
}

/// A CPU exception in the hypervisor reports vector, error code, RIP and
/// CR2, then powers off with the failure indication.
#[test]
fn page_fault_reports_vector_error_code_rip_cr2() {
    let out = boot(&Variant::selftest("page-fault"), Engine::Qemu, Firmware::Bios, QEMU_LIMIT);
    Checked::new(&out, "QEMU boot with a deliberate page fault")
        .line("`FATAL exception 14 (page fault) error code 0x0 at RIP 0xffff... CR2 0x0000000000000000`", |l| {
            l.contains("] FATAL exception 14 (page fault) error code 0x0 at RIP 0x")
                && l.contains(" CR2 0x0000000000000000")
                && !l.contains("RIP 0x0000000000000000")
        })
        .in_order("FATAL", "powering off after a failure")
        .exit_code(0);
}

/// The VT-x report lines an Intel CPU with Ferrovisor's needs prints.
fn vtx_ready(c: &Checked<'_>) {
    common_report(c);
    c.saw("cpu0: GenuineIntel")
        .line("`cpu0: vmx: EPT: yes (4-level walk: yes, write-back: yes, ...)`", |l| {
            l.contains("cpu0: vmx: EPT: yes (4-level walk: yes, write-back: yes")
        })
        .saw("cpu0: vmx: unrestricted guest: yes")
        .saw("cpu0: vmx: preemption timer: yes")
        .saw("cpu0: vmx: MSR bitmaps: yes")
        .saw("cpu0: vmx: I/O bitmaps: yes")
        .saw("cpu0: vmx: feature control: ")
        .in_order("cpu0: vmx: EPT", "cpu0: vmx: VMXON done, region at 0x")
        .in_order("VMXON done", "cpu0: VT-x ready")
        .never("VT-x unavailable")
        .in_order("cpu0: VT-x ready", "powering off")
        .in_order("powering off", "cpu0: vmx: VMXOFF done")
        .never("VMXON failed")
        .never("powering off after a failure");
}

/// Bochs emulates VT-x: the report lists EPT and unrestricted guest, VMXON
/// succeeds, the CPU says ready, VMXOFF precedes power-off, and the machine
/// powers off through ACPI (Bochs logs the ACPI
/// soft power-off it was asked for).
#[test]
fn bochs_reports_vtx_with_ept_and_powers_off() {
    let out = boot(&Variant::default(), Engine::Bochs, Firmware::Bios, BOCHS_LIMIT);
    let c = Checked::new(&out, "Bochs boot");
    vtx_ready(&c);
    c.exited().emulator_log_saw("ACPI control: soft power off");
}

/// The same under QEMU with KVM and nested VT-x; `cargo xtask test` runs it
/// only on hosts that offer that.
#[test]
#[ignore = "needs QEMU+KVM with nested VT-x; cargo xtask test runs it where the host offers it"]
fn kvm_reports_vtx_with_ept_and_powers_off() {
    let out = boot(&Variant::default(), Engine::Kvm, Firmware::Bios, QEMU_LIMIT);
    let c = Checked::new(&out, "QEMU+KVM boot");
    vtx_ready(&c);
    c.exit_code(0);
}
