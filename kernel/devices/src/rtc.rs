//! [`Rtc`]: the MC146818 real-time clock and CMOS RAM at ports 0x70
//! (index, with the NMI mask in bit 7) and 0x71 (data). It owns the
//! guest's wall clock (a base instant plus the TSC time elapsed since),
//! registers A-D and 128 bytes of CMOS RAM, and the civil-date arithmetic
//! that turns seconds into the clock registers and back.
//!
//! Sources: Motorola MC146818A datasheet: "Address Map" (Figure 3),
//! "Time, Calendar and Alarm Locations" (Table 2, the binary and BCD
//! encodings and the 12-hour PM bit), "Control Registers" (A: UIP and the
//! rate bits; B: SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE; C: IRQF, PF,
//! AF, UF, cleared by reading; D: VRT); the PC/AT's use of index 0x32 for
//! the century (which ACPI's FADT names in its CENTURY field).
//!
//! # Model
//!
//! - Time: built with the instant the clock shows (`unix_seconds`, UTC)
//!   at TSC `tsc` and the TSC rate; registers 0 (seconds), 2 (minutes),
//!   4 (hours), 6 (day of week, 1 = Sunday), 7 (day of month), 8 (month),
//!   9 (year) and 0x32 (century) are computed from it when read, in BCD or
//!   binary and 24- or 12-hour form as register B says. Power-on B is
//!   0x02 (24-hour, BCD), as PC firmware leaves it. A `tsc_hz` of 0 stops
//!   the clock at its base.
//! - Setting the clock: while B's SET bit is set the clock registers hold
//!   still and take the guest's writes; clearing SET makes what they hold
//!   the new base from that moment. A write to a clock register with SET
//!   clear takes effect at once the same way. Only this VM's clock moves:
//!   nothing reaches the host. Values out of range are clamped (month
//!   1-12, day 1-31, hour 0-23, minute and second 0-59), a date before
//!   1970 becomes 1970-01-01, and the day of week written is ignored (it
//!   follows from the date).
//! - Register A: UIP always reads 0 (an update never appears to be in
//!   progress, so the guest never waits); the divider and rate bits are
//!   stored. Register B is stored (setting SET clears UIE, as the
//!   datasheet says). Register C: UF (update ended) is set once a second
//!   has passed since C was last read (and SET is clear); reading C
//!   returns and clears it; PF, AF and IRQF stay 0. Register D reads 0x80
//!   (VRT: the battery is good).
//! - Indices 0x0E-0x7F other than 0x32, and the alarm registers 1, 3 and
//!   5, are plain CMOS RAM: what the guest wrote, 0 where it wrote
//!   nothing. Port 0x70 is write-only (reads all ones); its bit 7, the
//!   NMI mask, is kept but has no effect.
//!
//! Left out: the RTC interrupt (IRQ 8: periodic, alarm and update-ended
//! interrupts are never raised), the alarm comparison, daylight saving
//! (DSE), the square-wave output, and the extended 256-byte bank of later
//! chipsets.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv};

/// The index and data ports.
pub const RTC_PORTS: RangeInclusive<u16> = 0x70..=0x71;
/// The index port.
pub const RTC_INDEX: u16 = 0x70;
/// The data port.
pub const RTC_DATA: u16 = 0x71;
/// The CMOS index of the century (FADT's CENTURY field).
pub const RTC_CENTURY: u8 = 0x32;

// Register indices.
const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_C: u8 = 0x0C;
const REG_D: u8 = 0x0D;

// Register B bits.
const B_SET: u8 = 1 << 7;
const B_UIE: u8 = 1 << 4;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;
// Register C, D bits.
const C_UF: u8 = 1 << 4;
const D_VRT: u8 = 1 << 7;
/// The 12-hour mode's PM bit in the hours register.
const PM: u8 = 1 << 7;

const SECONDS_PER_DAY: u64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const DAYS_0000_03_01_TO_EPOCH: u64 = 719_468;
/// Days in 400 Gregorian years.
const DAYS_PER_ERA: u64 = 146_097;

/// A date and time of day (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// The full year (1970 and on).
    pub year: u64,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
}

/// Days since 1970-01-01 of `year`-`month`-`day` (proleptic Gregorian;
/// month 1-12, day 1-31: a day past the month's end runs into the next
/// month). Dates before 1970 give 0.
pub fn days_from_civil(year: u64, month: u8, day: u8) -> u64 {
    let month = u64::from(month.clamp(1, 12));
    let day = u64::from(day.clamp(1, 31));
    // Count years from March, so the leap day is the last day of a year.
    let (y, m) = if month <= 2 {
        (year.saturating_sub(1), month.saturating_add(9))
    } else {
        (year, month.saturating_sub(3))
    };
    // Day of the March-based year: the month lengths from March repeat
    // 31, 30, 31, 30, 31 every five months, which (153 m + 2) / 5 sums.
    let day_of_year = m
        .saturating_mul(153)
        .saturating_add(2)
        .checked_div(5)
        .unwrap_or(0)
        .saturating_add(day)
        .saturating_sub(1);
    // Leap days before March of year y: every 4th year but not every
    // 100th, yet every 400th.
    let leap_days = (y / 4).saturating_sub(y / 100).saturating_add(y / 400);
    y.saturating_mul(365)
        .saturating_add(leap_days)
        .saturating_add(day_of_year)
        .saturating_sub(DAYS_0000_03_01_TO_EPOCH)
}

/// The date `days` after 1970-01-01: (year, month 1-12, day 1-31).
pub fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let n = days.saturating_add(DAYS_0000_03_01_TO_EPOCH);
    let era = n / DAYS_PER_ERA;
    let day_of_era = n % DAYS_PER_ERA;
    // Years into the era: remove the leap days (one per 1460 days, none
    // per 36524, one back per 146096) before dividing by 365.
    let year_of_era = day_of_era
        .saturating_sub(day_of_era / 1460)
        .saturating_add(day_of_era / 36_524)
        .saturating_sub(day_of_era / (DAYS_PER_ERA - 1))
        / 365;
    let day_of_year = day_of_era.saturating_sub(
        year_of_era
            .saturating_mul(365)
            .saturating_add(year_of_era / 4)
            .saturating_sub(year_of_era / 100),
    );
    // The month from March (0-11) and the day within it.
    let mp = day_of_year.saturating_mul(5).saturating_add(2) / 153;
    let day = day_of_year
        .saturating_sub(mp.saturating_mul(153).saturating_add(2) / 5)
        .saturating_add(1);
    let month = if mp < 10 {
        mp.saturating_add(3)
    } else {
        mp.saturating_sub(9)
    };
    let year = era
        .saturating_mul(400)
        .saturating_add(year_of_era)
        .saturating_add(u64::from(month <= 2));
    // Day 1-31 and month 1-12 fit in a byte.
    (year, month as u8, day as u8)
}

impl Civil {
    /// The instant `unix_seconds` after 1970-01-01 00:00:00 UTC.
    pub fn from_unix(unix_seconds: u64) -> Self {
        let (year, month, day) = civil_from_days(unix_seconds / SECONDS_PER_DAY);
        let secs = unix_seconds % SECONDS_PER_DAY;
        // Each is below 60 (or 24): the casts are exact.
        Self {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
        }
    }

    /// Seconds since 1970-01-01 00:00:00 UTC, fields clamped to their
    /// ranges; 0 before 1970.
    pub fn to_unix(&self) -> u64 {
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = u64::from(self.hour.min(23))
            .saturating_mul(3600)
            .saturating_add(u64::from(self.minute.min(59)).saturating_mul(60))
            .saturating_add(u64::from(self.second.min(59)));
        if self.year < 1970 {
            return 0;
        }
        days.saturating_mul(SECONDS_PER_DAY).saturating_add(secs)
    }

    /// The day of the week, 1 = Sunday .. 7 = Saturday (1970-01-01 was a
    /// Thursday).
    pub fn day_of_week(&self) -> u8 {
        let days = days_from_civil(self.year, self.month, self.day);
        // Below 8: the cast is exact.
        (days.saturating_add(4) % 7).saturating_add(1) as u8
    }
}

/// `value` (below 100) as two BCD digits.
const fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// Two BCD digits as a number (a nibble above 9 counts as its value).
const fn from_bcd(value: u8) -> u8 {
    (value >> 4).saturating_mul(10).saturating_add(value & 0xF)
}

/// The MC146818 RTC and CMOS RAM (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtc {
    tsc_hz: u64,
    /// The clock showed `base_unix` at TSC `base_tsc`.
    base_unix: u64,
    base_tsc: u64,
    /// The selected register (port 0x70 bits 0-6).
    index: u8,
    /// Port 0x70 bit 7 (kept, no effect).
    nmi_masked: bool,
    reg_a: u8,
    reg_b: u8,
    /// The clock second at which register C was last read.
    c_read_at: u64,
    /// The clock registers while SET holds them (or a write is applied).
    held: Option<Civil>,
    cmos: [u8; 128],
}

impl Rtc {
    /// A clock showing `unix_seconds` (UTC) at TSC `tsc`, running at
    /// `tsc_hz` TSC ticks per second (0: stopped).
    pub const fn new(tsc_hz: u64, unix_seconds: u64, tsc: u64) -> Self {
        Self {
            tsc_hz,
            base_unix: unix_seconds,
            base_tsc: tsc,
            index: 0,
            nmi_masked: false,
            // 32.768 kHz time base, 1024 Hz periodic rate.
            reg_a: 0x26,
            reg_b: B_24H,
            c_read_at: unix_seconds,
            held: None,
            cmos: [0; 128],
        }
    }

    /// The time the clock shows at TSC `now`, in seconds since the epoch.
    pub fn unix_seconds(&self, now: u64) -> u64 {
        let elapsed = u128::from(now.saturating_sub(self.base_tsc))
            .checked_div(u128::from(self.tsc_hz))
            .unwrap_or(0);
        self.base_unix
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// Whether the guest set the NMI mask bit at port 0x70.
    pub const fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// `value` in the register encoding register B selects.
    const fn encode(&self, value: u8) -> u8 {
        if self.reg_b & B_BINARY != 0 {
            value
        } else {
            to_bcd(value)
        }
    }

    const fn decode(&self, value: u8) -> u8 {
        if self.reg_b & B_BINARY != 0 {
            value
        } else {
            from_bcd(value)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.reg_b & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { PM } else { 0 };
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | pm
    }

    fn decode_hour(&self, value: u8) -> u8 {
        if self.reg_b & B_24H != 0 {
            return self.decode(value);
        }
        let hour = self.decode(value & !PM) % 12;
        if value & PM != 0 {
            hour.saturating_add(12)
        } else {
            hour
        }
    }

    /// The clock registers' time now: held, or computed.
    fn civil(&self, now: u64) -> Civil {
        self.held
            .unwrap_or_else(|| Civil::from_unix(self.unix_seconds(now)))
    }

    fn read_register(&mut self, index: u8, now: u64) -> u8 {
        let civil = || self.civil(now);
        match index {
            SECONDS => self.encode(civil().second),
            MINUTES => self.encode(civil().minute),
            HOURS => self.encode_hour(civil().hour),
            DAY_OF_WEEK => self.encode(civil().day_of_week()),
            DAY_OF_MONTH => self.encode(civil().day),
            MONTH => self.encode(civil().month),
            // Each below 100: the casts are exact.
            YEAR => self.encode((civil().year % 100) as u8),
            RTC_CENTURY => self.encode((civil().year / 100 % 100) as u8),
            REG_A => self.reg_a & 0x7F,
            REG_B => self.reg_b,
            REG_C => {
                let second = self.unix_seconds(now);
                let updated = self.held.is_none() && second > self.c_read_at;
                self.c_read_at = second;
                if updated {
                    C_UF
                } else {
                    0
                }
            }
            REG_D => D_VRT,
            _ => self.cmos.get(usize::from(index)).copied().unwrap_or(0xFF),
        }
    }

    fn write_register(&mut self, index: u8, value: u8, now: u64) {
        let field: Option<fn(&mut Civil, u8, &Self)> = match index {
            SECONDS => Some(|c, v, rtc| c.second = rtc.decode(v)),
            MINUTES => Some(|c, v, rtc| c.minute = rtc.decode(v)),
            HOURS => Some(|c, v, rtc| c.hour = rtc.decode_hour(v)),
            // The day of week follows from the date.
            DAY_OF_WEEK => Some(|_, _, _| {}),
            DAY_OF_MONTH => Some(|c, v, rtc| c.day = rtc.decode(v)),
            MONTH => Some(|c, v, rtc| c.month = rtc.decode(v)),
            YEAR => Some(|c, v, rtc| {
                let century = c.year / 100;
                c.year = century
                    .saturating_mul(100)
                    .saturating_add(u64::from(rtc.decode(v) % 100));
            }),
            RTC_CENTURY => Some(|c, v, rtc| {
                c.year = u64::from(rtc.decode(v))
                    .saturating_mul(100)
                    .saturating_add(c.year % 100);
            }),
            _ => None,
        };
        if let Some(set) = field {
            let mut civil = self.civil(now);
            set(&mut civil, value, self);
            self.held = Some(civil);
            if self.reg_b & B_SET == 0 {
                self.commit(now);
            }
            return;
        }
        match index {
            REG_A => self.reg_a = value & 0x7F,
            REG_B => {
                let was_set = self.reg_b & B_SET != 0;
                let mut value = value;
                if value & B_SET != 0 {
                    value &= !B_UIE;
                    if !was_set {
                        self.held = Some(self.civil(now));
                    }
                }
                self.reg_b = value;
                if was_set && value & B_SET == 0 {
                    self.commit(now);
                }
            }
            // C and D are read-only.
            REG_C | REG_D => {}
            _ => {
                if let Some(byte) = self.cmos.get_mut(usize::from(index)) {
                    *byte = value;
                }
            }
        }
    }

    /// What the clock registers hold becomes the time at `now`.
    fn commit(&mut self, now: u64) {
        if let Some(civil) = self.held.take() {
            self.base_unix = civil.to_unix();
            self.base_tsc = now;
            self.c_read_at = self.base_unix;
        }
    }

    fn read_byte(&mut self, port: u16, now: u64) -> u8 {
        match port {
            RTC_DATA => self.read_register(self.index, now),
            // The index port is write-only.
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8, now: u64) {
        match port {
            RTC_INDEX => {
                self.index = value & 0x7F;
                self.nmi_masked = value & 0x80 != 0;
            }
            RTC_DATA => self.write_register(self.index, value, now),
            _ => {}
        }
    }
}

impl Device for Rtc {
    fn name(&self) -> &'static str {
        "rtc"
    }

    /// Both ports are a byte wide: a wider access is taken byte by byte.
    fn port_read(&mut self, port: u16, size: u8, env: &mut DeviceEnv<'_>) -> u32 {
        let now = env.now();
        let mut bytes = [0xFF; 4];
        for (i, byte) in bytes.iter_mut().take(usize::from(size)).enumerate() {
            // `i` < 4: the cast is exact.
            *byte = self.read_byte(port.wrapping_add(i as u16), now);
        }
        u32::from_le_bytes(bytes)
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32, env: &mut DeviceEnv<'_>) {
        let now = env.now();
        for (i, &byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            self.write_byte(port.wrapping_add(i as u16), byte, now);
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use crate::testbus::Rig;

    use proptest::prelude::*;

    /// 2024-02-29 13:34:56 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_213_696;
    const HZ: u64 = 1_000_000;

    type Vm = Rig<Rtc>;

    impl Vm {
        fn new(tsc_hz: u64, unix: u64, tsc: u64) -> Self {
            let mut vm = Rig::with(Rtc::new(tsc_hz, unix, tsc), &[RTC_PORTS], &[]);
            vm.now = tsc;
            vm
        }
        fn read(&mut self, index: u8) -> u8 {
            self.outb(0x70, index);
            self.inb(0x71)
        }
        fn write(&mut self, index: u8, value: u8) {
            self.outb(0x70, index);
            self.outb(0x71, value);
        }
        /// Registers 0, 2, 4, 6, 7, 8, 9, 0x32.
        fn clock(&mut self) -> [u8; 8] {
            [0, 2, 4, 6, 7, 8, 9, 0x32].map(|i| self.read(i))
        }
    }

    #[test]
    fn civil_dates_across_leap_years_and_2100() {
        let cases: [(u64, u64, u8, u8); 8] = [
            (0, 1970, 1, 1),
            (59, 1970, 3, 1),
            (11_016, 2000, 2, 29), // 2000: divisible by 400, leap
            (11_017, 2000, 3, 1),
            (19_782, 2024, 2, 29),
            (47_481, 2099, 12, 31),
            (47_540, 2100, 2, 28), // 2100: divisible by 100, not leap
            (47_541, 2100, 3, 1),
        ];
        for (days, y, m, d) in cases {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(2100, 2, 29), 47_541, "runs into March");
        assert_eq!(days_from_civil(1969, 12, 31), 0, "clamped at the epoch");
        // Every day for over 400 years round-trips, and days are
        // consecutive.
        let mut prev = civil_from_days(0);
        for days in 1..160_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((y, m, d) > prev);
            prev = (y, m, d);
        }
        let c = Civil::from_unix(LEAP_DAY);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2024, 2, 29, 13, 34, 56)
        );
        assert_eq!(c.day_of_week(), 5, "Thursday");
        assert_eq!(c.to_unix(), LEAP_DAY);
        let _ = civil_from_days(u64::MAX);
        let _ = Civil::from_unix(u64::MAX).to_unix();
    }

    #[test]
    fn a_known_instant_reads_in_bcd_binary_and_12_hour_form() {
        let mut vm = Vm::new(HZ, LEAP_DAY, 5_000);
        assert_eq!(vm.read(0x0B), 0x02, "24-hour BCD");
        assert_eq!(vm.clock(), [0x56, 0x34, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
        vm.write(0x0B, 0x06);
        assert_eq!(vm.clock(), [56, 34, 13, 5, 29, 2, 24, 20]);
        vm.write(0x0B, 0x04); // binary, 12-hour
        assert_eq!(vm.read(4), 0x80 | 1, "1 PM");
        vm.write(0x0B, 0x00); // BCD, 12-hour
        assert_eq!(vm.read(4), 0x81);
        // Time goes on with the TSC: 1 h 1 min 1 s later, and past
        // midnight into March.
        vm.write(0x0B, 0x02);
        vm.now += 3_661 * HZ;
        assert_eq!(&vm.clock()[..3], [0x57, 0x35, 0x14]);
        vm.now += 11 * 3_600 * HZ;
        assert_eq!(vm.clock(), [0x57, 0x35, 0x01, 0x06, 0x01, 0x03, 0x24, 0x20]);
        // Midnight and noon in 12-hour form.
        vm.write(0x0B, 0x00);
        vm.now -= 3_600 * HZ; // 00:35
        assert_eq!(vm.read(4), 0x12, "12 AM");
    }

    #[test]
    fn setting_the_clock_moves_only_this_rtc() {
        let mut vm = Vm::new(HZ, LEAP_DAY, 0);
        vm.write(0x0B, 0x82); // SET, 24-hour BCD
        vm.now += 10 * HZ;
        assert_eq!(vm.read(0), 0x56, "held while SET");
        for (index, value) in [
            (0, 0x00),
            (2, 0x00),
            (4, 0x09),
            (7, 0x01),
            (8, 0x01),
            (9, 0x00),
            (0x32, 0x21),
        ] {
            vm.write(index, value);
        }
        assert_eq!(vm.read(9), 0x00);
        vm.now += 5 * HZ;
        vm.write(0x0B, 0x02);
        assert_eq!(
            vm.clock(),
            [0x00, 0x00, 0x09, 0x06, 0x01, 0x01, 0x00, 0x21],
            "2100-01-01 is a Friday"
        );
        vm.now += 61 * HZ;
        assert_eq!(&vm.clock()[..2], [0x01, 0x01]);
        // A write without SET takes effect at once.
        vm.write(2, 0x30);
        assert_eq!(vm.read(2), 0x30);
        assert_eq!(vm.read(0), 0x01);
        // Garbage is clamped, not a panic; before 1970 becomes the epoch.
        vm.write(0x32, 0x19);
        vm.write(8, 0xFF);
        assert_eq!(vm.clock()[5..], [0x12, 0x70, 0x19], "month 12, 1970");
    }

    #[test]
    fn registers_a_to_d_and_cmos_ram() {
        let mut vm = Vm::new(HZ, LEAP_DAY, 0);
        vm.write(0x0A, 0xFF);
        assert_eq!(vm.read(0x0A), 0x7F, "UIP reads 0, the rest is kept");
        assert_eq!(vm.read(0x0D), 0x80);
        vm.write(0x0D, 0);
        assert_eq!(vm.read(0x0D), 0x80, "read-only");
        assert_eq!(vm.read(0x0C), 0);
        vm.now += HZ;
        assert_eq!(vm.read(0x0C), C_UF, "a second went by");
        assert_eq!(vm.read(0x0C), 0, "reading cleared it");
        vm.write(0x0B, 0x12 | B_SET);
        assert_eq!(vm.read(0x0B), 0x82, "SET clears UIE");
        vm.now += 5 * HZ;
        assert_eq!(vm.read(0x0C), 0, "no updates while SET");
        // CMOS RAM, and the NMI mask bit does not change the index.
        assert_eq!(vm.read(0x40), 0, "untouched");
        vm.write(0x40, 0xA5);
        vm.write(0x80 | 0x41, 0x5A);
        assert_eq!(vm.read(0x40), 0xA5);
        assert_eq!(vm.read(0xC1), 0x5A);
        vm.write(1, 0x33); // seconds alarm: plain RAM
        assert_eq!(vm.read(1), 0x33);
        assert_eq!(vm.port_read_at(0, 0x70, 1), Some(0xFF));
    }

    #[test]
    fn a_stopped_or_odd_clock_does_not_panic() {
        let rtc = Rtc::new(0, 100, 50);
        assert_eq!(rtc.unix_seconds(u64::MAX), 100);
        assert_eq!(rtc.unix_seconds(0), 100, "before the base: the base");
        let rtc = Rtc::new(1, u64::MAX - 5, 0);
        assert_eq!(rtc.unix_seconds(u64::MAX), u64::MAX);
        let mut vm = Vm::new(1, u64::MAX, 0);
        vm.now = u64::MAX;
        let _ = vm.clock();
        assert!(!Rtc::new(1, 0, 0).nmi_masked());
    }

    proptest! {
        /// Random accesses to the two ports (and around them) at random
        /// times never panic.
        #[test]
        fn random_port_accesses_never_panic(
            tsc_hz in prop_oneof![Just(0u64), Just(1), Just(HZ), any::<u64>()],
            base in any::<u64>(),
            ops in prop::collection::vec((any::<bool>(), 0u16..4, 0u8..6, any::<u32>(), any::<u64>()), 0..300)
        ) {
            let mut vm = Vm::new(tsc_hz, base, 0);
            for (write, port, size, value, time) in ops {
                let port = 0x6F + port;
                vm.now = vm.now.saturating_add(time >> (time % 64));
                if write {
                    let _ = vm.t.port_write_at(vm.t.now, port, size, value);
                } else {
                    let _ = vm.t.port_read_at(vm.t.now, port, size);
                }
            }
        }

        /// Any instant from 1970 to past 9999 survives the trip through
        /// the calendar.
        #[test]
        fn unix_seconds_round_trip(secs in 0u64..300_000_000_000) {
            prop_assert_eq!(Civil::from_unix(secs).to_unix(), secs);
        }
    }
}
