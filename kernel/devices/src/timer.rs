//! [`TestTimer`]: a one-shot timer for test guests, so that interrupt
//! delivery and timed wake-ups can be tested without modelling a PIT or a
//! local APIC timer.
//!
//! # Guest ABI
//!
//! Eight I/O ports from [`TEST_TIMER_BASE`] (0x0E0..=0x0E7); the timer
//! drives interrupt line [`TEST_TIMER_IRQ`] (5). Only whole 32-bit accesses
//! (`IN EAX, DX` / `OUT DX, EAX`) at the two registers below do anything;
//! other reads return all ones and other writes are ignored.
//!
//! | Port        | OUT (32-bit)                                              | IN (32-bit)                                   |
//! |-------------|-----------------------------------------------------------|-----------------------------------------------|
//! | base+0 0xE0 | N > 0: fire once N * 1024 TSC ticks from now, replacing any pending one; N = 0: cancel | how many times it fired (wraps at 2^32) |
//! | base+4 0xE4 | any value: lower the line (acknowledge)                   | bit 0: line high; bit 1: a one-shot is armed  |
//!
//! Firing raises the line and leaves it high until the guest writes
//! base+4, like a level-triggered device. A fire while the line is still
//! high counts but gives no new edge, so an edge-triggered controller (such
//! as [`SimpleIrqChip`](crate::irq::SimpleIrqChip)) sees it only if the
//! guest acknowledged the previous one. The unit is 1024 TSC ticks (about
//! 0.3 µs at 3 GHz), so 32 bits reach about 2^42 ticks: over 20 minutes at
//! 3 GHz.
//!
//! # Why these ports and this line are free
//!
//! On the PC/AT I/O map 0x0E0..=0x0EF is reserved and no ISA or chipset
//! device decodes 0x0E0..=0x0E7; the nearby ports that software does use
//! (0x0E9, the Bochs/QEMU debug console, and 0x0ED, Linux's alternative
//! I/O-delay port) lie outside this range. ISA IRQ 5 belongs to a second
//! parallel port or a sound card, neither of which a Ferrovisor VM has,
//! and it is not COM1's line 4 or COM2's line 3.

use core::ops::RangeInclusive;

use crate::bus::{all_ones, Device, DeviceEnv};

/// The test timer's first port.
pub const TEST_TIMER_BASE: u16 = 0x0E0;

/// The test timer's ports.
pub const TEST_TIMER_PORTS: RangeInclusive<u16> = 0x0E0..=0x0E7;

/// The test timer's interrupt line.
pub const TEST_TIMER_IRQ: u8 = 5;

/// TSC ticks per unit of the count written to base+0.
pub const TICKS_PER_UNIT: u64 = 1024;

/// Register offsets from the base port.
const REG_COUNT: u16 = 0;
const REG_ACK: u16 = 4;

/// Status bits read at base+4.
const STATUS_LINE: u32 = 1 << 0;
const STATUS_ARMED: u32 = 1 << 1;

/// The one-shot test timer (see the module documentation for the guest's
/// view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestTimer {
    base: u16,
    irq: u8,
    /// When the armed one-shot fires, in TSC ticks.
    deadline: Option<u64>,
    /// Times it fired.
    fired: u32,
    /// Whether it holds its line high.
    line: bool,
}

impl Default for TestTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestTimer {
    /// The timer at [`TEST_TIMER_BASE`] on line [`TEST_TIMER_IRQ`], idle.
    pub const fn new() -> Self {
        Self::at(TEST_TIMER_BASE, TEST_TIMER_IRQ)
    }

    /// The timer at ports `base..=base + 7`, driving line `irq`, idle.
    pub const fn at(base: u16, irq: u8) -> Self {
        Self {
            base,
            irq,
            deadline: None,
            fired: 0,
            line: false,
        }
    }

    /// The ports to claim on the bus (cut at 0xFFFF).
    pub const fn ports(&self) -> RangeInclusive<u16> {
        self.base..=self.base.saturating_add(7)
    }

    /// The interrupt line it drives.
    pub const fn irq(&self) -> u8 {
        self.irq
    }

    /// How many times it fired.
    pub const fn fired(&self) -> u32 {
        self.fired
    }

    /// When the armed one-shot fires, if one is armed.
    pub const fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    fn set_line(&mut self, level: bool, env: &mut DeviceEnv<'_>) {
        self.line = level;
        env.set_irq(self.irq, level);
    }
}

impl Device for TestTimer {
    fn name(&self) -> &'static str {
        "test-timer"
    }

    fn port_read(&mut self, port: u16, size: u8, _env: &mut DeviceEnv<'_>) -> u32 {
        match (port.wrapping_sub(self.base), size) {
            (REG_COUNT, 4) => self.fired,
            (REG_ACK, 4) => {
                let line = if self.line { STATUS_LINE } else { 0 };
                let armed = if self.deadline.is_some() {
                    STATUS_ARMED
                } else {
                    0
                };
                line | armed
            }
            // At most 4 bytes of ones: the cast drops only zeros.
            _ => all_ones(size.min(4)) as u32,
        }
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32, env: &mut DeviceEnv<'_>) {
        match (port.wrapping_sub(self.base), size) {
            (REG_COUNT, 4) => {
                env.cancel_wake();
                self.deadline = None;
                if value != 0 {
                    // At most 2^32 * 2^10 ticks: the product cannot
                    // overflow, and the sum saturates at the end of time.
                    let delay = u64::from(value).saturating_mul(TICKS_PER_UNIT);
                    let deadline = env.now().saturating_add(delay);
                    self.deadline = Some(deadline);
                    env.wake_at(deadline);
                }
            }
            (REG_ACK, 4) => self.set_line(false, env),
            _ => {}
        }
    }

    fn timer(&mut self, now: u64, env: &mut DeviceEnv<'_>) {
        match self.deadline {
            Some(deadline) if deadline <= now => {
                self.deadline = None;
                self.fired = self.fired.wrapping_add(1);
                self.set_line(true, env);
            }
            // Called early: ask again for the one-shot's own deadline.
            Some(deadline) => env.wake_at(deadline),
            None => {}
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
    use crate::bus::{Bus, DeviceId};
    use crate::irq::{InterruptController, IrqLines, SimpleIrqChip};
    use alloc::boxed::Box;

    struct Vm {
        bus: Bus,
        timer: DeviceId,
        irqs: IrqLines,
        chip: SimpleIrqChip,
    }

    impl Vm {
        fn new() -> Self {
            let mut bus = Bus::new();
            let timer = bus
                .add(Box::new(TestTimer::new()), &[TEST_TIMER_PORTS], &[])
                .unwrap();
            Self {
                bus,
                timer,
                irqs: IrqLines::new(),
                chip: SimpleIrqChip::new(),
            }
        }
        fn out(&mut self, now: u64, port: u16, size: u8, value: u32) {
            assert!(self
                .bus
                .port_write(port, size, value, now, &mut self.irqs, &mut |_| {}));
        }
        fn ind(&mut self, now: u64, port: u16) -> u32 {
            self.bus
                .port_read(port, 4, now, &mut self.irqs, &mut |_| {})
                .unwrap()
        }
        fn run(&mut self, now: u64) -> usize {
            let called = self.bus.run_timers(now, &mut self.irqs, &mut |_| {});
            self.irqs.forward_to(&mut self.chip);
            called
        }
    }

    #[test]
    fn arming_fires_once_at_the_deadline_and_raises_the_line() {
        let mut vm = Vm::new();
        vm.out(1000, 0xE0, 4, 3);
        assert_eq!(vm.bus.next_deadline(), Some(1000 + 3 * 1024));
        assert_eq!(vm.ind(1000, 0xE4), STATUS_ARMED);

        assert_eq!(vm.run(1000 + 3 * 1024 - 1), 0, "before the deadline");
        assert!(!vm.irqs.level(TEST_TIMER_IRQ));
        assert_eq!(vm.chip.pending_vector(), None);
        assert_eq!(vm.ind(0, 0xE0), 0);

        assert_eq!(vm.run(1000 + 3 * 1024), 1, "at the deadline");
        assert!(vm.irqs.level(TEST_TIMER_IRQ));
        assert_eq!(vm.chip.pending_vector(), Some(0x20 + TEST_TIMER_IRQ));
        assert_eq!(vm.ind(0, 0xE0), 1, "fired once");
        assert_eq!(vm.ind(0, 0xE4), STATUS_LINE, "line high, not armed");
        assert_eq!(vm.bus.next_deadline(), None, "one-shot");
        assert_eq!(vm.run(u64::MAX), 0);

        assert_eq!(vm.chip.acknowledge(), Some(0x25));
        vm.out(0, 0xE4, 4, 0);
        assert!(!vm.irqs.level(TEST_TIMER_IRQ), "acknowledged");
        assert_eq!(vm.ind(0, 0xE4), 0);
    }

    #[test]
    fn rearming_replaces_and_zero_cancels() {
        let mut vm = Vm::new();
        vm.out(0, 0xE0, 4, 1);
        vm.out(0, 0xE0, 4, 10);
        assert_eq!(
            vm.bus.next_deadline(),
            Some(10 * 1024),
            "later deadline kept"
        );
        assert_eq!(vm.run(1024), 0);
        vm.out(0, 0xE0, 4, 2);
        assert_eq!(vm.bus.next_deadline(), Some(2048));
        vm.out(0, 0xE0, 4, 0);
        assert_eq!(vm.bus.next_deadline(), None);
        assert_eq!(vm.run(u64::MAX), 0);
        assert_eq!(vm.ind(0, 0xE0), 0);
    }

    #[test]
    fn a_late_run_still_fires_and_huge_counts_do_not_overflow() {
        let mut vm = Vm::new();
        vm.out(u64::MAX - 5, 0xE0, 4, u32::MAX);
        assert_eq!(vm.bus.next_deadline(), Some(u64::MAX));
        vm.out(50, 0xE0, 4, 1);
        assert_eq!(vm.run(1_000_000), 1);
        assert_eq!(vm.ind(0, 0xE0), 1);
    }

    #[test]
    fn a_fire_while_high_counts_without_a_new_edge() {
        let mut vm = Vm::new();
        vm.out(0, 0xE0, 4, 1);
        vm.run(1024);
        assert_eq!(vm.chip.acknowledge(), Some(0x25));
        vm.out(0, 0xE0, 4, 1);
        vm.run(2048);
        assert_eq!(vm.ind(0, 0xE0), 2);
        assert_eq!(vm.chip.acknowledge(), None, "line never dropped");
        vm.out(0, 0xE4, 4, 0);
        vm.out(0, 0xE0, 4, 1);
        vm.run(4096);
        vm.irqs.forward_to(&mut vm.chip);
        assert_eq!(vm.chip.acknowledge(), Some(0x25));
    }

    #[test]
    fn narrow_or_stray_accesses_do_nothing() {
        let mut vm = Vm::new();
        vm.out(0, 0xE0, 1, 5);
        vm.out(0, 0xE0, 2, 5);
        vm.out(0, 0xE2, 4, 5);
        assert_eq!(vm.bus.next_deadline(), None);
        let mut irqs = IrqLines::new();
        assert_eq!(
            vm.bus.port_read(0xE0, 1, 0, &mut irqs, &mut |_| {}),
            Some(0xFF)
        );
        assert_eq!(
            vm.bus.port_read(0xE6, 2, 0, &mut irqs, &mut |_| {}),
            Some(0xFFFF)
        );
        assert_eq!(vm.ind(0, 0xE1), u32::MAX);
        let timer = vm.bus.get_mut::<TestTimer>(vm.timer).unwrap();
        assert_eq!((timer.fired(), timer.deadline()), (0, None));
    }

    #[test]
    fn an_early_timer_call_asks_again() {
        let mut timer = TestTimer::new();
        let mut irqs = IrqLines::new();
        let mut wake = None;
        let mut request = None;
        let mut sink = |_: &str| {};
        let mut env = DeviceEnv::new(0, &mut irqs, &mut wake, &mut request, &mut sink);
        timer.port_write(0xE0, 4, 2, &mut env);
        env.cancel_wake();
        timer.timer(100, &mut env);
        assert_eq!(env.wake(), Some(2048));
        assert_eq!(timer.fired(), 0);
    }
}
