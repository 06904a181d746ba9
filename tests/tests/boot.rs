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
        l.contains(&format!(
            "ferrovisor {} starting",
            env!("CARGO_PKG_VERSION")
        ))
    })
    .line("`memory: <N> MiB usable` with N > 400 of 512", |l| {
        usable_mib(l).is_some_and(|n| n > 400 && n <= 512)
    })
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
    let out = boot(
        &Variant::selftest("panic"),
        Engine::Qemu,
        Firmware::Bios,
        QEMU_LIMIT,
    );
    Checked::new(&out, "QEMU boot with a deliberate panic")
        .line(
            "`FATAL panic at <file>:<line>: selftest: deliberate panic`",
            |l| {
                l.contains("] FATAL panic at ")
                    && l.contains("selftest.rs:")
                    && l.ends_with("selftest: deliberate panic")
            },
        )
        .in_order("FATAL", "powering off after a failure")
        .exit_code(0);
}

/// A CPU exception in the hypervisor reports vector, error code, RIP and
/// CR2, then powers off with the failure indication.
#[test]
fn page_fault_reports_vector_error_code_rip_cr2() {
    let out = boot(
        &Variant::selftest("page-fault"),
        Engine::Qemu,
        Firmware::Bios,
        QEMU_LIMIT,
    );
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
        .line(
            "`cpu0: vmx: EPT: yes (4-level walk: yes, write-back: yes, ...)`",
            |l| l.contains("cpu0: vmx: EPT: yes (4-level walk: yes, write-back: yes"),
        )
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
    let out = boot(
        &Variant::default(),
        Engine::Bochs,
        Firmware::Bios,
        BOCHS_LIMIT,
    );
    let c = Checked::new(&out, "Bochs boot");
    vtx_ready(&c);
    guests_run(&c);
    frames_all_back(&c);
    c.exited().emulator_log_saw("ACPI control: soft power off");
}

/// The test guests of `guest-images/test` under Bochs: each mode's guest
/// prints through its own COM1 with its prefix and exits by hypercall; the
/// SSE/AVX state of two guests survives 3000 exits and the vCPU switches
/// between them; the hostile guest gets #UD/#GP for VMXON, host MSRs and
/// CR4.VMXE, its reset-port write is ignored and its write past RAM stops
/// it, while the well-behaved guests started beside it complete; HLT with
/// interrupts off and a triple fault stop their guests with the reason;
/// every frame comes back; the machine powers off.
#[test]
fn bochs_runs_and_contains_the_test_guests() {
    let out = boot(
        &Variant::with_guests("test"),
        Engine::Bochs,
        Firmware::Bios,
        BOCHS_LIMIT,
    );
    let c = Checked::new(&out, "Bochs boot with the test guests");
    test_guests(&c);
    c.exited();
}

/// What the test guests print wherever VT-x runs them.
fn test_guests(c: &Checked<'_>) {
    vtx_ready(c);
    c.saw("config: loaded 7 guests from the boot ramdisk");
    for name in [
        "real",
        "protected",
        "long",
        "escape",
        "halt",
        "triple",
        "cpuid",
    ] {
        c.in_order("cpu0: VT-x ready", &format!("guest {name}: started"));
    }
    guests_run(c);
    c.saw("[protected] hello from protected mode")
        .in_order("[protected] sse state kept across 3000 exits", "guest protected: stopped: exited with code 0")
        .in_order("[long] printed by hypercall", "[long] avx state kept across 3000 exits")
        .in_order("[long] cpuid 0x40000000: FerrovisorVM", "guest long: stopped: exited with code 0")
        // The hostile guest, step by step.
        .in_order("[escape] trying vmxon", "[escape] vmxon: #UD")
        .in_order("[escape] trying rdmsr 0x3a", "[escape] rdmsr 0x3a: #GP")
        .in_order("[escape] trying rdmsr 0x480", "[escape] rdmsr 0x480: #GP")
        .in_order("[escape] trying cr4.vmxe", "[escape] cr4.vmxe: #GP")
        .in_order("[escape] trying reset port 0xcf9", "[escape] still running after reset port write")
        .in_order("[escape] writing past RAM at 0x10000000", "guest escape: stopped: ")
        .line("`guest escape: stopped: write at guest-physical 0x10000000 outside its RAM (0x200000 bytes) at RIP ...`", |l| {
            l.contains("guest escape: stopped: write at guest-physical 0x10000000 outside its RAM (0x200000 bytes) at RIP 0x")
        })
        .never("ESCAPED")
        .never("no fault")
        .never("LOST")
        .in_order("[halt] halting with interrupts off", "guest halt: stopped: halted forever (HLT with interrupts off at RIP 0x")
        .in_order("[triple] about to triple fault", "guest triple: stopped: triple fault: RIP 0x")
        .line("`[cpuid] cpuid exit: 1000 round trips, average <n> ticks`", |l| {
            l.starts_with("[cpuid] cpuid exit: 1000 round trips, average ") && l.ends_with(" ticks")
        })
        .saw("guest cpuid: stopped: exited with code 0")
        .never("not started");
    frames_all_back(c);
    c.in_order("all guests stopped, powering off", "cpu0: vmx: VMXOFF done");
}

/// A configuration with one mistake of each kind (`guest-images/broken`):
/// each is reported with file, line, column and what to do, the bad guests
/// are skipped, and the valid guest still starts and runs.
#[test]
fn bochs_reports_a_broken_config_and_starts_the_valid_guest() {
    let out = boot(&Variant::with_guests("broken"), Engine::Bochs, Firmware::Bios, BOCHS_LIMIT);
    let c = Checked::new(&out, "Bochs boot with a broken config");
    c.saw("config: error: hypervisor.toml:6:1: hypervisor: slice_ms 0 is out of range; use 1 to 1000 milliseconds")
        .saw("config: error: hypervisor.toml:20:1: guest 'web': memory \"12Q\" is not a size like 128M")
        .saw("config: error: hypervisor.toml:28:1: guest 'a': kernel \"bzImage\" is not in the config partition")
        .saw("config: error: hypervisor.toml:32:1: duplicate guest name 'good' (first defined at line 9)")
        .saw("config: error: hypervisor.toml:42:1: guest 'typo': unknown key \"kernal\" (did you mean \"kernel\"?)")
        .saw("config: loaded 1 guests from ")
        .in_order("config: loaded 1 guests", "guest good: started")
        .in_order("[good] hello from real mode", "guest good: stopped: exited with code 0")
        .never("guest web: started")
        .never("guest a: started")
        .never("guest typo: started")
        .in_order("guest good: stopped", "all guests stopped, powering off")
        .exited();
}

/// The default guests ran to their exits.
fn guests_run(c: &Checked<'_>) {
    c.in_order(
        "[real] hello from real mode",
        "guest real: stopped: exited with code 0",
    )
    .in_order(
        "[long] hello from long mode",
        "guest long: stopped: exited with code 0",
    )
    .in_order("guest long: stopped", "all guests stopped, powering off");
}

/// The free-frame count after every guest stopped equals the count before.
fn frames_all_back(c: &Checked<'_>) {
    c.line(
        "`memory: <n> frames free before the guests, <n> after they stopped` (the same n)",
        |l| {
            let Some(rest) = l.split("memory: ").nth(1) else {
                return false;
            };
            let Some((before, rest)) = rest.split_once(" frames free before the guests, ") else {
                return false;
            };
            let Some(after) = rest.strip_suffix(" after they stopped") else {
                return false;
            };
            before.parse::<u64>().is_ok() && before == after
        },
    );
}

/// The same under QEMU with KVM and nested VT-x; `cargo xtask test` runs it
/// only on hosts that offer that.
#[test]
#[ignore = "needs QEMU+KVM with nested VT-x; cargo xtask test runs it where the host offers it"]
fn kvm_reports_vtx_with_ept_and_powers_off() {
    let out = boot(&Variant::default(), Engine::Kvm, Firmware::Bios, QEMU_LIMIT);
    let c = Checked::new(&out, "QEMU+KVM boot");
    vtx_ready(&c);
    guests_run(&c);
    frames_all_back(&c);
    c.exit_code(0);
}

/// The test guests under QEMU with KVM and nested VT-x, where offered.
#[test]
#[ignore = "needs QEMU+KVM with nested VT-x; cargo xtask test runs it where the host offers it"]
fn kvm_runs_and_contains_the_test_guests() {
    let out = boot(
        &Variant::with_guests("test"),
        Engine::Kvm,
        Firmware::Bios,
        QEMU_LIMIT,
    );
    let c = Checked::new(&out, "QEMU+KVM boot with the test guests");
    test_guests(&c);
    c.exit_code(0);
}
