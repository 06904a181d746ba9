//! The TSC rate, measured against the 8254 PIT (channel 2, gated through
//! port 0x61, as PC firmware and Linux's early calibration do), so that
//! scheduler slices given in milliseconds become TSC ticks and
//! VMX-preemption timer counts.

use log::{info, warn};

use crate::arch::{inb, outb};

/// The PIT's input clock (Hz).
const PIT_HZ: u64 = 1_193_182;
/// How long the measurement runs: 10 ms.
const CALIBRATION_MS: u64 = 10;
/// Gives up on a PIT that never counts down after this many polls.
const MAX_POLLS: u64 = 50_000_000;
/// The rate assumed when the PIT cannot be used: 1 GHz.
const FALLBACK_HZ: u64 = 1_000_000_000;

/// TSC ticks per second, measured once at boot.
pub fn measure_hz() -> u64 {
    match measure() {
        Some(hz) => {
            info!(
                "tsc: {} kHz (measured against the PIT over {CALIBRATION_MS} ms)",
                hz / 1000
            );
            hz
        }
        None => {
            warn!(
                "tsc: the PIT did not count down; assuming {} MHz",
                FALLBACK_HZ / 1_000_000
            );
            FALLBACK_HZ
        }
    }
}

fn measure() -> Option<u64> {
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: port 0x61 bits 0 (channel 2 gate) and 1 (speaker data) and
    // the PIT's channel 2 (ports 0x42, 0x43) belong to the platform timer,
    // which no other code of Ferrovisor drives; the speaker stays off.
    unsafe {
        let port61 = inb(0x61);
        outb(0x61, (port61 & !0x02) | 0x01);
        // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count),
        // binary.
        outb(0x43, 0b1011_0000);
        outb(0x42, (count & 0xFF) as u8);
        outb(0x42, (count >> 8) as u8);
        let start = core::arch::x86_64::_rdtsc();
        let mut polls = 0;
        // OUT2 (port 0x61 bit 5) goes high at terminal count.
        while inb(0x61) & 0x20 == 0 {
            polls += 1;
            if polls > MAX_POLLS {
                outb(0x61, port61);
                return None;
            }
        }
        let end = core::arch::x86_64::_rdtsc();
        outb(0x61, port61);
        let ticks = end.checked_sub(start)?;
        (ticks > 0).then(|| ticks * 1000 / CALIBRATION_MS)
    }
}
