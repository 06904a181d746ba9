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
        Some("write-code") => {
            let target = run as fn() as usize as *mut u8;
            warn!("selftest: writing to the kernel's code at {target:p} on purpose");
            // SAFETY: not safe at all, and that is the point: W^X maps the
            // kernel's code read-only, so this store takes #PF (a
            // protection violation on a write), whose handler reports it
            // and powers off. Were W^X missing, the byte written back is
            // the one already there, so the check fails without
            // corrupting the code.
            unsafe { target.write_volatile(target.read_volatile()) };
            warn!("selftest: the write to the kernel's code did not fault");
        }
        Some("exec-heap") => {
            // `ret`: harmless if it ran.
            let code = alloc::boxed::Box::new([0xC3u8; 16]);
            let target = code.as_ptr();
            warn!("selftest: executing the heap at {target:p} on purpose");
            // SAFETY: not safe at all, and that is the point: the heap lies
            // in the physical-memory window, which W^X maps no-execute, so
            // the fetch takes #PF, whose handler reports it and powers off.
            // Were W^X missing, the bytes are a lone `ret`.
            unsafe {
                let f = core::mem::transmute::<*const u8, extern "C" fn()>(target);
                f();
            }
            warn!("selftest: executing the heap did not fault");
        }
        Some("ghost-cpu") => {} // see `ghost_cpu`
        Some(other) => warn!("selftest: unknown self-test {other:?}, ignored"),
    }
}
