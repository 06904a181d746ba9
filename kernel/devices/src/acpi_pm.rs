//! [`AcpiPm`]: the ACPI fixed-hardware power-management registers a
//! guest's FADT points at: the PM1a event block (PM1 status and enable),
//! the PM1a control block (SCI_EN, SLP_TYP, SLP_EN) and the PM timer. It
//! owns those registers and turns the guest's request to enter S5 (soft
//! off) into [`VmRequest::PowerOff`]. The public constants are the
//! addresses and lengths the firmware-table writer puts in the FADT.
//!
//! Sources: ACPI Specification 6.5, chapter 4 "ACPI Hardware
//! Specification", "Fixed Hardware Registers": "PM1 Event Grouping" (the
//! status register's write-1-to-clear bits, TMR_STS set when bit 23 of
//! the timer changes, WAK_STS; the enable register), "PM1 Control
//! Grouping" (SCI_EN, BM_RLD, GBL_RLS, SLP_TYPx, SLP_ENx write-only),
//! "Power Management Timer" (3.579545 MHz, 24 bits unless the FADT sets
//! TMR_VAL_EXT); chapter 7, "\_Sx (System States)" (the SLP_TYP value
//! comes from the DSDT's \_S5 package); chapter 16, "Sleeping and Waking".
//!
//! # Model
//!
//! - PM1 status (0x600, 16 bits): TMR_STS (bit 0) is set whenever bit 23
//!   of the PM timer changed since the guest last cleared it, computed
//!   from the TSC when read; WAK_STS (bit 15) is set when a sleep state
//!   other than S5 is entered (below). Writing 1 clears a bit. No other
//!   event (power button, RTC, bus master, GBL) ever happens.
//! - PM1 enable (0x602, 16 bits): stored (TMR_EN, GBL_EN, PWRBTN_EN,
//!   SLPBTN_EN, RTC_EN, PCIEXP_WAKE_DIS); the SCI is never raised, so the
//!   FADT's SCI_INT line stays quiet.
//! - PM1 control (0x604, 16 bits): SCI_EN (bit 0) always reads 1, since
//!   the machine is always in ACPI mode (the FADT's SMI_CMD is 0, so a
//!   guest never tries to switch); BM_RLD and SLP_TYP (bits 10-12) are
//!   stored; GBL_RLS and SLP_EN (bit 13) are write-only and read 0.
//!   Writing SLP_EN with SLP_TYP = [`SLP_TYP_S5`] asks the VM to power
//!   off. Other sleep types are not entered: WAK_STS is set at once, so
//!   a guest that tried S1-S4 (the DSDT offers only \_S5) wakes straight
//!   away instead of waiting forever.
//! - PM timer (0x608, 32 bits read-only): a 24-bit count at
//!   [`PM_TIMER_HZ`], `tsc * PM_TIMER_HZ / tsc_hz` (128-bit arithmetic),
//!   wrapping; bits 24-31 read 0. A `tsc_hz` of 0 stops it at 0.
//! - Registers may be read and written a byte, a word or a dword at a
//!   time; each byte is its own register byte.
//!
//! Left out: the SCI, the PM1b blocks, GPE blocks, and sleep states other
//! than S5.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv, VmRequest};

/// PM1a_EVT_BLK: PM1 status (2 bytes) then PM1 enable (2 bytes).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// PM1_EVT_LEN for the FADT.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK: PM1 control.
pub const PM1A_CNT_BLK: u16 = 0x604;
/// PM1_CNT_LEN for the FADT.
pub const PM1_CNT_LEN: u8 = 2;
/// PM_TMR_BLK: the PM timer.
pub const PM_TMR_BLK: u16 = 0x608;
/// PM_TMR_LEN for the FADT.
pub const PM_TMR_LEN: u8 = 4;
/// The SLP_TYP value the DSDT's \_S5 package carries: writing it with
/// SLP_EN powers the VM off.
pub const SLP_TYP_S5: u8 = 5;
/// The PM timer's frequency, in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// The event block's ports.
pub const PM1A_EVT_PORTS: RangeInclusive<u16> = PM1A_EVT_BLK..=PM1A_EVT_BLK + 3;
/// The control block's ports.
pub const PM1A_CNT_PORTS: RangeInclusive<u16> = PM1A_CNT_BLK..=PM1A_CNT_BLK + 1;
/// The timer's ports.
pub const PM_TMR_PORTS: RangeInclusive<u16> = PM_TMR_BLK..=PM_TMR_BLK + 3;
/// Every port [`AcpiPm`] decodes, to claim on the bus.
pub const ACPI_PM_PORTS: [RangeInclusive<u16>; 3] = [PM1A_EVT_PORTS, PM1A_CNT_PORTS, PM_TMR_PORTS];

// PM1 status bits.
/// TMR_STS: bit 23 of the PM timer changed.
pub const TMR_STS: u16 = 1 << 0;
/// WAK_STS: the machine woke from a sleep state.
pub const WAK_STS: u16 = 1 << 15;
/// PM1 enable bits a guest can set.
const PM1_EN_WRITABLE: u16 = 0x4721;

// PM1 control bits.
/// SCI_EN: the machine is in ACPI mode.
pub const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
/// SLP_EN: enter the sleep state SLP_TYP names.
pub const SLP_EN: u16 = 1 << 13;

/// The PM timer's top bit, whose changes set TMR_STS.
const TMR_TOP_BIT: u32 = 23;
const TMR_MASK: u64 = (1 << 24) - 1;

/// The ACPI fixed power-management registers (see the module
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiPm {
    tsc_hz: u64,
    /// PM1 status bits other than TMR_STS.
    status: u16,
    /// The timer tick at which the guest last cleared TMR_STS.
    tmr_cleared_at: u64,
    enable: u16,
    /// BM_RLD and SLP_TYP as written.
    control: u16,
}

impl AcpiPm {
    /// The registers at power-on, the PM timer clocked from a TSC of
    /// `tsc_hz` Hz: status and enable clear, TMR_STS counted from the
    /// timer's start.
    pub const fn new(tsc_hz: u64) -> Self {
        Self {
            tsc_hz,
            status: 0,
            tmr_cleared_at: 0,
            enable: 0,
            control: 0,
        }
    }

    /// PM timer ticks at TSC `now` (unwrapped, saturating; 0 for a
    /// `tsc_hz` of 0).
    pub fn ticks_at(&self, now: u64) -> u64 {
        let ticks = u128::from(now)
            .checked_mul(u128::from(PM_TIMER_HZ))
            .and_then(|x| x.checked_div(u128::from(self.tsc_hz)))
            .unwrap_or(0);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The PM timer register at TSC `now`: 24 bits, wrapping.
    pub fn timer(&self, now: u64) -> u32 {
        // Masked to 24 bits: the cast is exact.
        (self.ticks_at(now) & TMR_MASK) as u32
    }

    /// PM1 status at TSC `now`.
    pub fn pm1_status(&self, now: u64) -> u16 {
        let top = |t: u64| t.checked_shr(TMR_TOP_BIT).unwrap_or(0);
        if top(self.ticks_at(now)) != top(self.tmr_cleared_at) {
            self.status | TMR_STS
        } else {
            self.status
        }
    }

    /// PM1 enable.
    pub const fn pm1_enable(&self) -> u16 {
        self.enable
    }

    /// PM1 control as the guest reads it.
    pub const fn pm1_control(&self) -> u16 {
        self.control | SCI_EN
    }

    fn read_byte(&self, port: u16, now: u64) -> u8 {
        let offset = port.wrapping_sub(PM1A_EVT_BLK);
        let (register, high) = match offset {
            0 | 1 => (self.pm1_status(now), offset == 1),
            2 | 3 => (self.enable, offset == 3),
            4 | 5 => (self.pm1_control(), offset == 5),
            8..=11 => {
                let bytes = self.timer(now).to_le_bytes();
                return bytes
                    .get(usize::from(offset.wrapping_sub(8)))
                    .copied()
                    .unwrap_or(0);
            }
            _ => return 0xFF,
        };
        let [lo, hi] = register.to_le_bytes();
        if high {
            hi
        } else {
            lo
        }
    }

    fn write_byte(&mut self, port: u16, byte: u8, now: u64, env: &mut DeviceEnv<'_>) {
        let offset = port.wrapping_sub(PM1A_EVT_BLK);
        let (value, keep) = if offset & 1 == 0 {
            (u16::from(byte), 0xFF00)
        } else {
            (u16::from(byte) << 8, 0x00FF)
        };
        match offset {
            // Status: write 1 to clear.
            0 | 1 => {
                self.status &= !value;
                if value & TMR_STS != 0 {
                    self.tmr_cleared_at = self.ticks_at(now);
                }
            }
            2 | 3 => self.enable = (self.enable & keep) | (value & PM1_EN_WRITABLE),
            4 | 5 => {
                self.control = (self.control & keep) | (value & (BM_RLD | SLP_TYP_MASK));
                if value & SLP_EN != 0 {
                    self.sleep(env);
                }
            }
            // The timer is read-only.
            _ => {}
        }
    }

    /// SLP_EN was written: enter the state SLP_TYP names.
    fn sleep(&mut self, env: &mut DeviceEnv<'_>) {
        let slp_typ = (self.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if slp_typ == u16::from(SLP_TYP_S5) {
            env.request(VmRequest::PowerOff);
        } else {
            // Not entered: woken at once.
            self.status |= WAK_STS;
        }
    }
}

impl Device for AcpiPm {
    fn name(&self) -> &'static str {
        "acpi-pm"
    }

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
            self.write_byte(port.wrapping_add(i as u16), byte, now, env);
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

    type Vm = Rig<AcpiPm>;

    impl Vm {
        fn new(tsc_hz: u64) -> Self {
            Rig::with(AcpiPm::new(tsc_hz), &ACPI_PM_PORTS, &[])
        }
    }

    #[test]
    fn the_pm_timer_runs_at_3_579545_mhz_and_wraps_at_24_bits() {
        let tsc_hz = 2_400_000_000;
        let mut vm = Vm::new(tsc_hz);
        vm.now = 1_000_000;
        let a = vm.inp(0x608, 4);
        // One second later: 3 579 545 ticks.
        vm.now += tsc_hz;
        let b = vm.inp(0x608, 4);
        assert_eq!(b.wrapping_sub(a) & 0xFF_FFFF, 3_579_545);
        // Ten seconds in: wrapped (2^24 ticks is about 4.7 s), top byte 0.
        vm.now = 10 * tsc_hz;
        let t = vm.inp(0x608, 4);
        assert_eq!(u64::from(t), (10 * PM_TIMER_HZ) & TMR_MASK);
        assert_eq!(t >> 24, 0);
        // Byte reads are its bytes; writes do nothing.
        assert_eq!(vm.inp(0x609, 1), (t >> 8) & 0xFF);
        vm.out(0x608, 4, 0);
        assert_eq!(vm.inp(0x608, 4), t);
        // A stopped clock.
        let pm = AcpiPm::new(0);
        assert_eq!(pm.timer(u64::MAX), 0);
        assert_eq!(AcpiPm::new(1).ticks_at(u64::MAX), u64::MAX);
    }

    #[test]
    fn tmr_sts_follows_bit_23_and_clears_on_write_1() {
        let mut vm = Vm::new(PM_TIMER_HZ);
        assert_eq!(vm.inp(0x600, 2), 0);
        vm.now = 1 << 23;
        assert_eq!(vm.inp(0x600, 2), u32::from(TMR_STS));
        vm.out(0x600, 2, 0);
        assert_eq!(vm.inp(0x600, 2), u32::from(TMR_STS), "writing 0 keeps it");
        vm.out(0x600, 2, u32::from(TMR_STS));
        assert_eq!(vm.inp(0x600, 2), 0);
        vm.now = (1 << 24) - 1;
        assert_eq!(vm.inp(0x600, 2), 0);
        vm.now = 1 << 24;
        assert_eq!(vm.inp(0x600, 2), u32::from(TMR_STS));
        // Enable: stored, reserved bits dropped; a dword at 0x600 is both.
        vm.out(0x602, 2, 0xFFFF);
        assert_eq!(vm.inp(0x602, 2), 0x4721);
        assert_eq!(vm.inp(0x600, 4), 0x4721_0001);
    }

    #[test]
    fn slp_en_with_s5_powers_off_and_sci_en_always_reads_1() {
        let mut vm = Vm::new(1_000_000);
        assert_eq!(vm.inp(0x604, 2), 1, "ACPI mode");
        vm.out(0x604, 2, 0);
        assert_eq!(vm.inp(0x604, 2), 1);
        // SLP_TYP alone: stored, nothing happens.
        let s5 = u32::from(SLP_TYP_S5) << 10;
        vm.out(0x604, 2, s5);
        assert_eq!(vm.bus.take_request(), None);
        assert_eq!(vm.inp(0x604, 2), s5 | 1);
        // Linux's acpi_enter_sleep_state(5): SLP_TYP, then SLP_TYP | SLP_EN.
        vm.out(0x604, 2, s5 | u32::from(SLP_EN));
        assert_eq!(vm.bus.take_request(), Some(VmRequest::PowerOff));
        assert_eq!(vm.inp(0x604, 2), s5 | 1, "SLP_EN reads 0");
        // The high byte alone does it too.
        vm.out(0x605, 1, (s5 | u32::from(SLP_EN)) >> 8);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::PowerOff));
    }

    #[test]
    fn other_sleep_types_wake_at_once() {
        let mut vm = Vm::new(1_000_000);
        vm.out(0x604, 2, (3 << 10) | u32::from(SLP_EN));
        assert_eq!(vm.bus.take_request(), None, "S3 is not entered");
        assert_eq!(vm.inp(0x600, 2), u32::from(WAK_STS));
        vm.out(0x601, 1, 0x80);
        assert_eq!(vm.inp(0x600, 2), 0);
    }

    proptest! {
        /// Random accesses never panic; the timer's top byte reads 0.
        #[test]
        fn random_port_accesses_never_panic(
            tsc_hz in prop_oneof![Just(0u64), Just(1), Just(PM_TIMER_HZ), any::<u64>()],
            ops in prop::collection::vec((any::<bool>(), 0u16..14, 0u8..6, any::<u32>(), any::<u64>()), 0..300)
        ) {
            let mut vm = Vm::new(tsc_hz);
            for (write, port, size, value, now) in ops {
                let port = 0x5FF + port;
                vm.now = now;
                if write {
                    let _ = vm.port_write_at(now, port, size, value);
                    let _ = vm.bus.take_request();
                } else {
                    let _ = vm.port_read_at(now, port, size);
                }
                prop_assert_eq!(vm.inp(0x60B, 1), 0);
            }
        }
    }
}
