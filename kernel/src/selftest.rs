//! Deliberate failures, compiled in only when a boot test asks for one.
//!
//! `FERROVISOR_SELFTEST` at build time (set by `cargo xtask ... --selftest
//! NAME`) picks one; the boot tests use them to prove that the fatal paths
//! report and power off as documented. Normal builds contain none.

use log::warn;

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
        Some(other) => warn!("selftest: unknown self-test {other:?}, ignored"),
    }
}
