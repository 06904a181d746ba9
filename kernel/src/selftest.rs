//! Deliberate failures, compiled in only when a boot test asks for one.
//!
//! `FERROVISOR_SELFTEST` at build time (set by `cargo xtask ... --selftest
//! NAME`) picks one; the boot tests use them to prove that the fatal paths
//! report and power off as documented. Normal builds contain none.

use log::warn;

/// The APIC ID of a CPU that does not exist, which the `ghost-cpu`
/// self-test adds in front of the MADT's CPUs: it never answers the
/// start-up IPIs, so the boot test sees it reported and left out while the
/// real CPUs after it still start.
pub fn ghost_cpu() -> Option<u32> {
    match option_env!("FERROVISOR_SELFTEST") {
        Some("ghost-cpu") => {
            warn!("selftest: adding a CPU with APIC ID {GHOST_APIC_ID}, which does not exist");
            Some(GHOST_APIC_ID)
        }
        _ => None,
    }
}

/// Below 0xFF (the xAPIC broadcast ID) and far above what the emulators
/// number their CPUs.
const GHOST_APIC_ID: u32 = 0x50;

/// Runs the self-test chosen at build time, if any.
pub fn run() {
    match option_env!("FERROVISOR_SELFTEST") {
        None | Some("") => {}
        Some("panic") => {
            warn!("selftest: panicking on purpose");
            panic!("selftest: deliberate panic");
        }
        Some("page-fault") => {
            warn!("selftest: reading unmapped address 0x0 on purpose");
            // SAFETY: not safe at all, and that is the point: the bootloader
            // leaves the zero page unmapped, so this load takes #PF, whose
            // handler reports it and powers the machine off. Nothing after
            // it runs. A plain `read_volatile` of null would be caught by a
            // debug assertion before reaching the hardware.
            unsafe { core::arch::asm!("mov {tmp}, qword ptr [0]", tmp = out(reg) _) };
        }
        Some("ghost-cpu") => {} // see `ghost_cpu`
        Some(other) => warn!("selftest: unknown self-test {other:?}, ignored"),
    }
}
