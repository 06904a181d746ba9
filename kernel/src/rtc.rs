//! The machine's real-time clock, read once at boot so each guest's
//! virtual RTC can start at the time of day (MC146818 registers through
//! CMOS ports 0x70/0x71).

use devices::rtc::Civil;
use vcpu::vm::WallClock;

use crate::arch::{inb, outb};

/// CMOS index port; bit 7 set keeps NMIs masked while the index is set.
const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;
const NMI_OFF: u8 = 0x80;

/// Reads CMOS register `reg`.
fn read(reg: u8) -> u8 {
    // SAFETY: ports 0x70/0x71 are the PC's CMOS index and data registers;
    // selecting a register and reading it has no other effect, and only
    // the boot CPU calls this, before any other CPU runs.
    unsafe {
        outb(INDEX, NMI_OFF | reg);
        inb(DATA)
    }
}

/// Whether an update is in progress (register A bit 7): the time
/// registers may be changing.
fn updating() -> bool {
    read(0x0A) & 0x80 != 0
}

/// The date and time the clock shows, as read between two updates.
fn civil() -> Option<Civil> {
    let snapshot = || {
        let mut spins = 0u32;
        while updating() && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        [
            read(0x00),
            read(0x02),
            read(0x04),
            read(0x07),
            read(0x08),
            read(0x09),
            read(0x32),
        ]
    };
    // Read until two readings agree, so none straddles an update.
    let mut last = snapshot();
    for _ in 0..8 {
        let now = snapshot();
        if now == last {
            break;
        }
        last = now;
    }
    let b = read(0x0B);
    let bcd = b & 0x04 == 0;
    let h24 = b & 0x02 != 0;
    let decode = |v: u8| if bcd { (v >> 4) * 10 + (v & 0x0F) } else { v };
    let [sec, min, hour, day, month, year, century] = last;
    let pm = !h24 && hour & 0x80 != 0;
    let mut hour = decode(hour & 0x7F);
    if !h24 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let century = match decode(century) {
        c @ 19..=21 => u64::from(c),
        _ => 20,
    };
    let civil = Civil {
        year: century * 100 + u64::from(decode(year)),
        month: decode(month),
        day: decode(day),
        hour,
        minute: decode(min),
        second: decode(sec),
    };
    let valid = (1..=12).contains(&civil.month)
        && (1..=31).contains(&civil.day)
        && civil.hour < 24
        && civil.minute < 60
        && civil.second < 60;
    valid.then_some(civil)
}

/// The time of day now, paired with the TSC: the epoch where the machine
/// has no readable clock.
pub fn wall_clock() -> WallClock {
    let unix_seconds = civil().map_or(0, |c| c.to_unix());
    WallClock {
        unix_seconds,
        tsc: crate::guests::rdtsc(),
    }
}
