//! [`Pit`]: the 8254 programmable interval timer at ports 0x40-0x43 and
//! the PC's system control port B at 0x61 (channel 2's gate, the speaker
//! data bit, the refresh toggle and channel 2's OUT). It owns the three
//! counters' programming and their count, computed from the VM's TSC when
//! the guest looks, and channel 0's interrupt edges on line 0.
//!
//! Sources: Intel 8254 datasheet (order 231164): "Control Word Register",
//! "Write Operations", "Read Operations" (counter latch command, read-back
//! command, status byte), "Mode Definitions" (modes 0-5, Figures 13-18),
//! "Operation Common to All Modes" (gate, counter wrap); the PC/AT
//! technical reference for port 0x61 (system control port B) and the
//! wiring: CLK = 1 193 182 Hz on every channel, GATE0 and GATE1 tied high,
//! OUT0 to ISA IRQ 0, OUT2 to the speaker and to port 0x61 bit 5.
//!
//! # Model
//!
//! - Time: the input clock is [`PIT_HZ`], derived from the TSC as
//!   `tsc * PIT_HZ / tsc_hz` (128-bit arithmetic). Nothing happens per
//!   tick: a count or an OUT level is computed from the elapsed ticks when
//!   it is read. A `tsc_hz` of 0 stops the clock: counts stay where they
//!   were loaded and channel 0 asks for no wake-ups.
//! - Channels: every mode (6 and 7 are 2 and 3), binary or BCD, access
//!   by LSB, MSB or LSB then MSB with the read and write byte flip-flops,
//!   the counter latch command, and the read-back command (count and
//!   status, status first when both are latched). A count of 0 is the
//!   largest (65 536, or 10 000 in BCD); counts wrap in modes 0, 1, 4 and
//!   5 after the terminal count, as the part does. Channel 0 and 1 gates
//!   are high (modes 1 and 5 on them never trigger, as on a PC); channel
//!   2's gate is port 0x61 bit 0: low pauses modes 0 and 4, stops modes 2
//!   and 3 (OUT high), and a rising edge triggers modes 1 and 5 and
//!   restarts modes 2 and 3.
//! - Channel 0's OUT drives line 0 through
//!   [`DeviceEnv::set_irq`](crate::bus::DeviceEnv::set_irq): a control
//!   word sets it low in mode 0 and high in the others. Its rising edges
//!   are delivered from [`Device::timer`] at the TSC deadline of the tick
//!   they fall on: mode 0 and 1 at the terminal count (OUT stays high),
//!   mode 4 and 5 at the end of the one-tick strobe, and modes 2 and 3
//!   once per period. In those the line is set low then high within the
//!   timer call (a pulse: [`IrqLines`](crate::irq::IrqLines) keeps it for
//!   an edge-triggered controller), so mode 3's low half-period is not
//!   seen on the line, only in the status byte.
//! - Catching up: a timer call that comes late delivers one edge however
//!   many periods passed, then asks for the first period boundary after
//!   `now`. Ticks missed while the VM did not run are dropped, not
//!   replayed as a storm of interrupts; a guest that keeps time by
//!   counting PIT interrupts falls behind, as on a real PC whose timer
//!   interrupt stayed masked (Linux keeps time from its clocksource).
//! - Channel 1 counts and has no output (it refreshed DRAM on the AT).
//! - Port 0x61: writes keep bits 0-3 (gate 2, speaker data, and the
//!   parity-check enables, which do nothing); reads return them with bit
//!   4, the refresh request toggle, flipping every 18 input ticks (about
//!   15 µs), and bit 5, OUT2. Bits 6 and 7 (parity errors) read 0.
//!
//! Left out: the speaker's sound; a new count written in modes 2 and 3
//! while counting restarts the period at once (the part loads it at the
//! end of the current one); mode 3 with an odd count reads its count as
//! for the even count below it.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv};

/// The 8254's input clock on the PC, in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// The counters and the control word register.
pub const PIT_COUNTER_PORTS: RangeInclusive<u16> = 0x40..=0x43;
/// System control port B.
pub const PORT_B: u16 = 0x61;
/// Every port [`Pit`] decodes, to claim on the bus.
pub const PIT_PORTS: [RangeInclusive<u16>; 2] = [PIT_COUNTER_PORTS, PORT_B..=PORT_B];

/// The interrupt line channel 0's OUT drives (ISA IRQ 0).
pub const PIT_IRQ: u8 = 0;

/// The control word port.
const CONTROL: u16 = 0x43;

/// Port 0x61 bits.
const B_GATE2: u8 = 1 << 0;
const B_WRITABLE: u8 = 0x0F;
const B_REFRESH: u8 = 1 << 4;
const B_OUT2: u8 = 1 << 5;
/// Input ticks per refresh toggle: the AT's channel 1 refresh period.
const REFRESH_TICKS: u64 = 18;

/// Read/write access (control word bits 5-4).
const ACCESS_LATCH: u8 = 0;
const ACCESS_LSB: u8 = 1;
const ACCESS_MSB: u8 = 2;
const ACCESS_BOTH: u8 = 3;

/// Status byte bits (read-back).
const STATUS_OUT: u8 = 1 << 7;
const STATUS_NULL: u8 = 1 << 6;

/// One counter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Channel {
    /// Mode 0-5.
    mode: u8,
    bcd: bool,
    /// ACCESS_LSB, ACCESS_MSB or ACCESS_BOTH.
    access: u8,
    /// The count register as written (0 = the largest count).
    reload: u16,
    /// A count was loaded since the control word.
    loaded: bool,
    /// The LSB of a two-byte write, waiting for its MSB.
    write_lsb: Option<u8>,
    /// The next unlatched read returns the MSB.
    read_msb_next: bool,
    /// A latched count and whether its MSB is read next.
    latched: Option<u16>,
    latch_msb_next: bool,
    /// A latched status byte.
    status: Option<u8>,
    /// Null count: a count was written and not yet loaded (status bit 6).
    null_count: bool,
    gate: bool,
    /// Ticks counted before `since` (while the gate paused counting).
    frozen: u64,
    /// The input tick counting (re)started at, while counting.
    since: Option<u64>,
    /// Modes 1 and 5: the gate triggered since the count was loaded.
    triggered: bool,
    /// Channel 0: the elapsed tick of the next OUT edge to deliver.
    next_edge: Option<u64>,
}

impl Channel {
    const fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            bcd: false,
            access: ACCESS_BOTH,
            reload: 0,
            loaded: false,
            write_lsb: None,
            read_msb_next: false,
            latched: None,
            latch_msb_next: false,
            status: None,
            null_count: false,
            gate,
            frozen: 0,
            since: None,
            triggered: false,
            next_edge: None,
        }
    }

    /// The counter's modulus: 65 536 binary, 10 000 BCD.
    const fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    /// The initial count N, 0 meaning the modulus.
    fn initial(&self) -> u64 {
        let raw = if self.bcd {
            from_bcd(self.reload)
        } else {
            u64::from(self.reload)
        };
        if raw == 0 {
            self.modulus()
        } else {
            raw
        }
    }

    /// Ticks counted at input tick `t`.
    fn elapsed(&self, t: u64) -> u64 {
        let running = self.since.map_or(0, |since| t.saturating_sub(since));
        self.frozen.saturating_add(running)
    }

    /// Whether the counter counts from its load (not waiting for a gate
    /// trigger).
    const fn started(&self) -> bool {
        self.loaded && (!matches!(self.mode, 1 | 5) || self.triggered)
    }

    /// Whether the count ran since it was loaded (gate allowing).
    const fn counting(&self) -> bool {
        self.started() && (self.since.is_some() || self.frozen != 0)
    }

    /// The count element at input tick `t`, as the guest reads it.
    fn count(&self, t: u64) -> u16 {
        if !self.loaded {
            return self.reload;
        }
        let n = self.initial();
        let m = self.modulus();
        let e = self.elapsed(t);
        let value = if !self.counting() {
            n
        } else {
            match self.mode {
                2 => n.saturating_sub(e.checked_rem(n).unwrap_or(0)),
                3 => {
                    let p = e.checked_rem(n).unwrap_or(0);
                    let high = n.div_ceil(2);
                    let into = if p < high { p } else { p.saturating_sub(high) };
                    n.saturating_sub(into.saturating_mul(2)) & !1
                }
                // Modes 0, 1, 4, 5 count down and wrap past 0.
                _ => n
                    .wrapping_add(m)
                    .wrapping_sub(e.checked_rem(m).unwrap_or(0)),
            }
        };
        let value = value.checked_rem(m).unwrap_or(0);
        if self.bcd {
            to_bcd(value)
        } else {
            // Below 65 536: the cast is exact.
            value as u16
        }
    }

    /// OUT at input tick `t`.
    fn out(&self, t: u64) -> bool {
        if !self.loaded {
            // After the control word: low in mode 0, high otherwise.
            return self.mode != 0;
        }
        if !self.started() {
            return true;
        }
        let n = self.initial();
        let e = self.elapsed(t);
        let running = self.since.is_some();
        match self.mode {
            0 => self.counting() && e >= n,
            1 => e >= n,
            2 => !running || e.checked_rem(n) != Some(n.saturating_sub(1)),
            3 => !running || e.checked_rem(n).unwrap_or(0) < n.div_ceil(2),
            // 4, 5: low for the one tick at the terminal count.
            _ => !self.counting() || e != n,
        }
    }

    /// The status byte at input tick `t`.
    fn status_byte(&self, t: u64) -> u8 {
        let mut status = (self.access << 4) | (self.mode << 1) | u8::from(self.bcd);
        if self.out(t) {
            status |= STATUS_OUT;
        }
        if self.null_count {
            status |= STATUS_NULL;
        }
        status
    }

    /// The first OUT rising edge after loading or a trigger, as elapsed
    /// ticks.
    fn first_edge(&self) -> Option<u64> {
        if !self.started() {
            return None;
        }
        let n = self.initial();
        match self.mode {
            0..=3 => Some(n),
            _ => n.checked_add(1),
        }
    }

    /// The input tick elapsed tick `e` falls on, if the counter runs.
    fn tick_of(&self, e: u64) -> Option<u64> {
        self.since?.checked_add(e.checked_sub(self.frozen)?)
    }

    /// A control word for this channel: mode, access, BCD.
    fn program(&mut self, value: u8) {
        let mode = (value >> 1) & 7;
        *self = Self {
            mode: if mode >= 6 { mode & 3 } else { mode },
            bcd: value & 1 != 0,
            access: (value >> 4) & 3,
            null_count: true,
            ..Self::new(self.gate)
        };
    }

    /// The count register takes `reload`: counting starts at tick `t`
    /// (gate allowing; modes 1 and 5 wait for a trigger).
    fn load(&mut self, reload: u16, t: u64) {
        self.reload = reload;
        self.loaded = true;
        self.null_count = false;
        self.frozen = 0;
        self.triggered = false;
        let gated_off = matches!(self.mode, 1 | 5) || !self.gate;
        self.since = if gated_off { None } else { Some(t) };
        self.next_edge = self.first_edge();
    }

    /// A guest byte to the counter's port at tick `t`.
    fn write(&mut self, byte: u8, t: u64) {
        match self.access {
            ACCESS_LSB => self.load(u16::from(byte), t),
            ACCESS_MSB => self.load(u16::from(byte) << 8, t),
            _ => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(byte);
                    self.null_count = true;
                    if self.mode == 0 {
                        // Writing the first byte stops counting, OUT low.
                        self.loaded = false;
                        self.since = None;
                        self.next_edge = None;
                    }
                }
                Some(lsb) => self.load(u16::from_le_bytes([lsb, byte]), t),
            },
        }
    }

    /// A guest read of the counter's port at tick `t`.
    fn read(&mut self, t: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let (value, msb) = match self.latched {
            Some(latched) => {
                let msb = match self.access {
                    ACCESS_MSB => true,
                    ACCESS_BOTH => self.latch_msb_next,
                    _ => false,
                };
                let done = self.access != ACCESS_BOTH || msb;
                self.latch_msb_next = !done;
                if done {
                    self.latched = None;
                }
                (latched, msb)
            }
            None => {
                let msb = match self.access {
                    ACCESS_MSB => true,
                    ACCESS_BOTH => {
                        let msb = self.read_msb_next;
                        self.read_msb_next = !msb;
                        msb
                    }
                    _ => false,
                };
                (self.count(t), msb)
            }
        };
        let [lsb, hi] = value.to_le_bytes();
        if msb {
            hi
        } else {
            lsb
        }
    }

    fn latch_count(&mut self, t: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.count(t));
            self.latch_msb_next = false;
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(t));
        }
    }

    /// The gate goes to `level` at tick `t` (8254 datasheet, "Gate",
    /// Figure 19).
    fn set_gate(&mut self, level: bool, t: u64) {
        if level == self.gate {
            return;
        }
        self.gate = level;
        if !self.loaded {
            return;
        }
        match (self.mode, level) {
            (0 | 4, true) => self.since = Some(t),
            (0 | 4, false) => {
                self.frozen = self.elapsed(t);
                self.since = None;
            }
            (1 | 5, true) | (2 | 3, true) => {
                self.triggered = true;
                self.frozen = 0;
                self.since = Some(t);
                self.next_edge = self.first_edge();
            }
            (2 | 3, false) => {
                self.frozen = 0;
                self.since = None;
            }
            _ => {}
        }
    }
}

/// `value` (4 BCD digits) as a number; a nibble above 9 counts as its
/// binary value, so nothing a guest writes can fail.
fn from_bcd(value: u16) -> u64 {
    let [lo, hi] = value.to_le_bytes();
    let digit = |b: u8, shift: u8| u64::from((b >> shift) & 0xF);
    digit(hi, 4)
        .saturating_mul(1000)
        .saturating_add(digit(hi, 0).saturating_mul(100))
        .saturating_add(digit(lo, 4).saturating_mul(10))
        .saturating_add(digit(lo, 0))
}

/// `value` (below 10 000) as 4 BCD digits.
fn to_bcd(value: u64) -> u16 {
    let mut out = 0u16;
    let mut rest = value;
    for shift in [0u32, 4, 8, 12] {
        let digit = rest.checked_rem(10).unwrap_or(0);
        rest = rest.checked_div(10).unwrap_or(0);
        // A digit is below 10: the cast is exact.
        out |= (digit as u16).wrapping_shl(shift);
    }
    out
}

/// The 8254 and port 0x61 (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pit {
    tsc_hz: u64,
    channels: [Channel; 3],
    /// Port 0x61 bits 0-3 as last written.
    port_b: u8,
}

impl Pit {
    /// The timer at power-on, clocked from a TSC of `tsc_hz` Hz: no
    /// channel programmed (OUT low), channel 2's gate low, line 0 low.
    pub const fn new(tsc_hz: u64) -> Self {
        Self {
            tsc_hz,
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port_b: 0,
        }
    }

    /// The TSC rate it was built with.
    pub const fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Input clock ticks at TSC `tsc`: `tsc * PIT_HZ / tsc_hz`, 0 for a
    /// `tsc_hz` of 0, saturating.
    pub fn ticks_at(&self, tsc: u64) -> u64 {
        // Without overflow (a TSC below 2^64 / PIT_HZ: the first hours of
        // a GHz clock) the 64-bit division gives the same quotient and is
        // one instruction rather than a 128-bit division's call.
        if let Some(x) = tsc.checked_mul(PIT_HZ) {
            return x.checked_div(self.tsc_hz).unwrap_or(0);
        }
        let ticks = u128::from(tsc)
            .checked_mul(u128::from(PIT_HZ))
            .and_then(|x| x.checked_div(u128::from(self.tsc_hz)))
            .unwrap_or(0);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The first TSC value at which [`ticks_at`](Self::ticks_at) reaches
    /// `tick`; `None` for a stopped clock.
    pub fn tsc_of_tick(&self, tick: u64) -> Option<u64> {
        if self.tsc_hz == 0 {
            return None;
        }
        // As in `ticks_at`: 64 bits when they hold the product.
        if let Some(x) = tick
            .checked_mul(self.tsc_hz)
            .and_then(|x| x.checked_add(PIT_HZ - 1))
        {
            return Some(x / PIT_HZ);
        }
        let tsc = u128::from(tick)
            .checked_mul(u128::from(self.tsc_hz))
            .and_then(|x| x.checked_add(u128::from(PIT_HZ - 1)))
            .and_then(|x| x.checked_div(u128::from(PIT_HZ)))?;
        Some(u64::try_from(tsc).unwrap_or(u64::MAX))
    }

    /// Channel 2's OUT at TSC `now` (port 0x61 bit 5).
    pub fn out2(&self, now: u64) -> bool {
        self.out2_at_tick(self.ticks_at(now))
    }

    /// Channel 2's OUT at input tick `t`.
    fn out2_at_tick(&self, t: u64) -> bool {
        self.channels.get(2).is_some_and(|ch| ch.out(t))
    }

    /// Channel 0's next rising edge, if one is due: when the device asks
    /// to be woken.
    pub fn next_irq_deadline(&self) -> Option<u64> {
        let ch0 = self.channels.first()?;
        self.tsc_of_tick(ch0.tick_of(ch0.next_edge?)?)
    }

    /// Asks for a wake-up at channel 0's next edge, replacing any other.
    fn arm(&self, env: &mut DeviceEnv<'_>) {
        env.cancel_wake();
        if let Some(deadline) = self.next_irq_deadline() {
            env.wake_at(deadline);
        }
    }

    fn read_byte(&mut self, port: u16, now: u64) -> u8 {
        let t = self.ticks_at(now);
        match port {
            0x40..=0x42 => self
                .channels
                .get_mut(usize::from(port.wrapping_sub(0x40)))
                .map_or(0xFF, |ch| ch.read(t)),
            PORT_B => {
                let refresh = if t.checked_div(REFRESH_TICKS).unwrap_or(0) & 1 != 0 {
                    B_REFRESH
                } else {
                    0
                };
                let out2 = if self.out2_at_tick(t) { B_OUT2 } else { 0 };
                self.port_b | refresh | out2
            }
            // The control word register cannot be read.
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8, env: &mut DeviceEnv<'_>) {
        let t = self.ticks_at(env.now());
        match port {
            0x40..=0x42 => {
                let index = usize::from(port.wrapping_sub(0x40));
                if let Some(ch) = self.channels.get_mut(index) {
                    ch.write(value, t);
                }
                if index == 0 {
                    self.arm(env);
                }
            }
            CONTROL => self.control(value, t, env),
            PORT_B => {
                self.port_b = value & B_WRITABLE;
                if let Some(ch) = self.channels.get_mut(2) {
                    ch.set_gate(value & B_GATE2 != 0, t);
                }
            }
            _ => {}
        }
    }

    /// A control word (8254 datasheet, "Control Word Format", "Read-Back
    /// Command").
    fn control(&mut self, value: u8, t: u64, env: &mut DeviceEnv<'_>) {
        let select = value >> 6;
        if select == 3 {
            let latch_count = value & (1 << 5) == 0;
            let latch_status = value & (1 << 4) == 0;
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (1 << (i.wrapping_add(1))) == 0 {
                    continue;
                }
                // Status first: it captures the state before nothing else.
                if latch_status {
                    ch.latch_status(t);
                }
                if latch_count {
                    ch.latch_count(t);
                }
            }
            return;
        }
        let Some(ch) = self.channels.get_mut(usize::from(select)) else {
            return;
        };
        if (value >> 4) & 3 == ACCESS_LATCH {
            ch.latch_count(t);
            return;
        }
        ch.program(value);
        if select == 0 {
            let level = ch.out(t);
            env.set_irq(PIT_IRQ, level);
            self.arm(env);
        }
    }
}

impl Device for Pit {
    fn name(&self) -> &'static str {
        "pit"
    }

    /// Every register is a byte: a wider access is taken byte by byte.
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
        for (i, &byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            self.write_byte(port.wrapping_add(i as u16), byte, env);
        }
    }

    /// Delivers channel 0's due edge (one, however late) and asks for the
    /// next.
    fn timer(&mut self, now: u64, env: &mut DeviceEnv<'_>) {
        let t = self.ticks_at(now);
        let Some(ch0) = self.channels.first_mut() else {
            return;
        };
        if let Some(edge) = ch0.next_edge {
            let due = ch0.tick_of(edge).is_some_and(|tick| tick <= t);
            if due {
                env.set_irq(PIT_IRQ, false);
                env.set_irq(PIT_IRQ, true);
                ch0.next_edge = match ch0.mode {
                    2 | 3 => {
                        let n = ch0.initial();
                        let e = ch0.elapsed(t);
                        e.checked_div(n)
                            .and_then(|k| k.checked_add(1))
                            .and_then(|k| k.checked_mul(n))
                    }
                    _ => None,
                };
            }
        }
        self.arm(env);
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
    use crate::bus::Bus;
    use crate::irq::{InterruptController, IrqLines};
    use crate::pic::{DualPic, PIC_PORTS};
    use crate::testbus::Rig;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    use proptest::prelude::*;

    /// Two TSC ticks per PIT tick: deadlines are exact.
    const HZ2: u64 = 2 * PIT_HZ;

    type Vm = Rig<Pit>;

    impl Vm {
        fn new(tsc_hz: u64) -> Self {
            Rig::with(Pit::new(tsc_hz), &PIT_PORTS, &[])
        }
        /// Runs the timers at `now` and counts the IRQ 0 edges delivered.
        fn run(&mut self, now: u64) -> usize {
            let vectors = self.t.run(now);
            assert!(vectors.iter().all(|&v| v == 0x20 + PIT_IRQ), "{vectors:?}");
            vectors.len()
        }
        fn read_counter(&mut self, ch: u16) -> u16 {
            let lo = self.inb(0x40 + ch);
            let hi = self.inb(0x40 + ch);
            u16::from_le_bytes([lo, hi])
        }
    }

    #[test]
    fn mode_2_delivers_one_edge_per_period_at_the_tsc_deadlines() {
        let mut vm = Vm::new(HZ2);
        vm.now = 1000;
        // Linux's periodic PIT: channel 0, LSB then MSB, mode 2, binary.
        vm.outb(0x43, 0x34);
        vm.outb(0x40, (1193 & 0xFF) as u8);
        vm.outb(0x40, (1193 >> 8) as u8);
        // Loaded at tick 500; the first edge 1193 ticks later.
        let first = (500 + 1193) * 2;
        assert_eq!(vm.bus.next_deadline(), Some(first));
        vm.t.irqs.forward_to(&mut vm.t.chip);
        vm.chip.acknowledge(); // the control word set OUT high
        assert_eq!(vm.run(first - 1), 0);
        let mut deadlines = Vec::new();
        for _ in 0..5 {
            let due = vm.bus.next_deadline().unwrap();
            deadlines.push(due);
            assert_eq!(vm.run(due), 1, "one edge at {due}");
        }
        let want: Vec<u64> = (1..=5).map(|k| (500 + k * 1193) * 2).collect();
        assert_eq!(deadlines, want);
        assert!(vm.irqs.level(PIT_IRQ), "the pulse ends high");

        // Count read between edges: reloads from 1193 down to 1.
        vm.now = (500 + 5 * 1193 + 100) * 2;
        vm.outb(0x43, 0x00);
        assert_eq!(vm.read_counter(0), 1193 - 100);
        vm.now = (500 + 6 * 1193 - 1) * 2;
        vm.outb(0x43, 0x00);
        assert_eq!(vm.read_counter(0), 1);
    }

    #[test]
    fn a_late_vm_gets_one_edge_and_the_next_period_after_now() {
        let mut vm = Vm::new(HZ2);
        vm.outb(0x43, 0x34);
        vm.outb(0x40, 100);
        vm.outb(0x40, 0);
        vm.t.irqs.forward_to(&mut vm.t.chip);
        vm.chip.acknowledge();
        // A thousand periods late.
        let late = (100 * 1000 + 37) * 2;
        assert_eq!(vm.run(late), 1, "no catch-up storm");
        assert_eq!(vm.bus.next_deadline(), Some(100 * 1001 * 2));
        assert_eq!(vm.run(100 * 1001 * 2), 1);
    }

    #[test]
    fn mode_3_square_wave_edges_each_period_and_out_in_the_status() {
        let mut vm = Vm::new(HZ2);
        vm.outb(0x43, 0x36);
        vm.outb(0x40, 10);
        vm.outb(0x40, 0);
        vm.t.irqs.forward_to(&mut vm.t.chip);
        vm.chip.acknowledge();
        assert_eq!(vm.bus.next_deadline(), Some(20));
        assert_eq!(vm.run(20), 1);
        assert_eq!(vm.run(40), 1);
        // Read-back status of channel 0: OUT high in the first half.
        vm.now = 42; // tick 21: 1 into the period
        vm.outb(0x43, 0xE2);
        assert_eq!(vm.inb(0x40), STATUS_OUT | 0x36);
        vm.now = 52; // tick 26: second half, low
        vm.outb(0x43, 0xE2);
        assert_eq!(vm.inb(0x40), 0x36);
        // Count decrements by two.
        vm.now = 44; // tick 22: 2 into the period
        vm.outb(0x43, 0x00);
        assert_eq!(vm.read_counter(0), 6);
    }

    #[test]
    fn mode_0_fires_once_at_terminal_count_and_keeps_counting() {
        let mut vm = Vm::new(HZ2);
        // Linux's i8253 one-shot: mode 0, LSB then MSB.
        vm.outb(0x43, 0x30);
        assert!(!vm.irqs.level(PIT_IRQ), "mode 0 sets OUT low");
        vm.outb(0x40, 0x00);
        assert_eq!(vm.bus.next_deadline(), None, "first byte stops counting");
        vm.outb(0x40, 0x01); // 256
        assert_eq!(vm.bus.next_deadline(), Some(512));
        let pit = vm.dev();
        assert_eq!((pit.next_irq_deadline(), pit.tsc_hz()), (Some(512), HZ2));
        assert_eq!(vm.run(511), 0);
        assert_eq!(vm.run(512), 1);
        assert!(vm.irqs.level(PIT_IRQ), "OUT stays high");
        assert_eq!(vm.bus.next_deadline(), None, "one-shot");
        assert_eq!(vm.run(u64::MAX), 0);
        // The counter wrapped past 0 and goes on down from 0xFFFF.
        vm.now = (256 + 10) * 2;
        assert_eq!(vm.read_counter(0), 0xFFFF - 9);
        // A new count re-arms.
        vm.outb(0x43, 0x30);
        vm.outb(0x40, 4);
        vm.outb(0x40, 0);
        assert_eq!(vm.bus.next_deadline(), Some(vm.now + 8));
    }

    #[test]
    fn latch_and_read_back_hold_the_count_until_read() {
        let mut vm = Vm::new(HZ2);
        vm.outb(0x43, 0xB4); // channel 2, both bytes, mode 2
        vm.outb(0x61, B_GATE2);
        vm.outb(0x42, 0x00);
        vm.outb(0x42, 0x10); // 0x1000
        vm.now = 2 * 0x10;
        vm.outb(0x43, 0x80); // latch channel 2
        vm.now = 2 * 0x400;
        vm.outb(0x43, 0x80); // a second latch is ignored
        assert_eq!(vm.read_counter(2), 0x1000 - 0x10);
        assert_eq!(vm.read_counter(2), 0x1000 - 0x400, "live again");
        // Read-back: status and count of channel 2; status comes first.
        vm.outb(0x43, 0xC8);
        vm.now = 2 * 0x800;
        assert_eq!(vm.inb(0x42), STATUS_OUT | 0x34);
        assert_eq!(vm.read_counter(2), 0x1000 - 0x400);
        // LSB-only and MSB-only access.
        vm.outb(0x43, 0x90); // channel 2, LSB only, mode 0
        vm.outb(0x42, 0x80);
        vm.outb(0x43, 0x80);
        assert_eq!(vm.inb(0x42), 0x80);
        vm.outb(0x43, 0xA0); // MSB only
        vm.outb(0x42, 0x12);
        assert_eq!(vm.inb(0x42), 0x12);
        assert_eq!(vm.inb(0x42), 0x12, "no flip-flop");
        // Status shows null count between control word and count.
        vm.outb(0x43, 0xB0);
        vm.outb(0x43, 0xE8);
        assert_eq!(vm.inb(0x42), STATUS_NULL | 0x30);
    }

    #[test]
    fn channel_2_calibration_as_linux_does_it() {
        // 3 GHz TSC; Linux's pit_calibrate_tsc: gate on, speaker off,
        // channel 2 mode 0, count CAL_LATCH = PIT_HZ / 20 (50 ms).
        let tsc_hz = 3_000_000_000;
        let mut vm = Vm::new(tsc_hz);
        vm.now = 7_777;
        let b = vm.inb(0x61);
        vm.outb(0x61, (b & !0x02) | 0x01);
        vm.outb(0x43, 0xB0);
        let latch = (PIT_HZ / 20) as u16;
        vm.outb(0x42, latch as u8);
        vm.outb(0x42, (latch >> 8) as u8);
        let start = vm.now;
        assert_eq!(vm.inb(0x61) & B_OUT2, 0);
        let mut loops = 0u64;
        while vm.inb(0x61) & B_OUT2 == 0 {
            vm.now += 10_000; // the guest's loop takes 10 000 TSC ticks
            loops += 1;
            assert!(loops < 1_000_000);
        }
        let measured = (vm.now - start) * 20;
        let err = measured.abs_diff(tsc_hz);
        assert!(err < tsc_hz / 10_000, "measured {measured} Hz");
        assert_eq!(vm.inb(0x61) & 0x0F, 0x01, "bits 0-3 as written");
        assert_eq!(vm.bus.next_deadline(), None, "channel 2 needs no wake");
    }

    #[test]
    fn channel_2_gate_pauses_mode_0_and_restarts_mode_2() {
        let mut vm = Vm::new(HZ2);
        vm.outb(0x43, 0xB0);
        vm.outb(0x42, 100);
        vm.outb(0x42, 0);
        vm.now = 200;
        assert_eq!(vm.read_counter(2), 100, "gate low: not counting");
        vm.outb(0x61, 1);
        vm.now = 300; // 50 ticks
        vm.outb(0x61, 0);
        vm.now = 10_000;
        assert_eq!(vm.read_counter(2), 50, "paused");
        vm.outb(0x61, 1);
        vm.now = 10_000 + 99;
        assert_eq!(vm.inb(0x61) & B_OUT2, 0);
        vm.now = 10_000 + 100;
        assert_eq!(vm.inb(0x61) & B_OUT2, B_OUT2, "terminal count");

        // Mode 1: a gate rising edge triggers the one-shot, OUT low.
        vm.outb(0x61, 0);
        vm.outb(0x43, 0xB2);
        vm.outb(0x42, 10);
        vm.outb(0x42, 0);
        assert_eq!(vm.inb(0x61) & B_OUT2, B_OUT2);
        vm.outb(0x61, 1);
        assert_eq!(vm.inb(0x61) & B_OUT2, 0);
        vm.now += 20;
        assert_eq!(vm.inb(0x61) & B_OUT2, B_OUT2);
    }

    #[test]
    fn port_b_refresh_toggles_with_time() {
        let mut vm = Vm::new(HZ2);
        vm.outb(0x61, 0xFF);
        assert_eq!(vm.inb(0x61) & !B_REFRESH, 0x0F);
        let a = vm.inb(0x61) & B_REFRESH;
        vm.now += REFRESH_TICKS * 2;
        let b = vm.inb(0x61) & B_REFRESH;
        assert_ne!(a, b);
    }

    #[test]
    fn bcd_counts_and_a_zero_tsc_rate_stop_nothing_from_working() {
        let mut vm = Vm::new(HZ2);
        vm.outb(0x43, 0xB1); // channel 2, both, mode 0, BCD
        vm.outb(0x61, 1);
        vm.outb(0x42, 0x00);
        vm.outb(0x42, 0x10); // BCD 1000
        vm.now = 2;
        assert_eq!(vm.read_counter(2), 0x0999);
        vm.now = 2 * 1001;
        assert_eq!(vm.read_counter(2), 0x9999, "wraps at 10 000");

        let mut vm = Vm::new(0);
        vm.outb(0x43, 0x34);
        vm.outb(0x40, 1);
        vm.outb(0x40, 0);
        assert_eq!(vm.bus.next_deadline(), None);
        vm.now = u64::MAX;
        assert_eq!(vm.read_counter(0), 1);
        assert_eq!(vm.run(0), 1, "the control word's OUT high, only");
        assert_eq!(vm.run(u64::MAX), 0);
        let pit = Pit::new(0);
        assert_eq!((pit.ticks_at(u64::MAX), pit.tsc_of_tick(5)), (0, None));
        let pit = Pit::new(1);
        assert_eq!(pit.ticks_at(u64::MAX), u64::MAX, "saturates");
        assert_eq!(pit.tsc_of_tick(PIT_HZ), Some(1));
    }

    #[test]
    fn the_pit_drives_irq_0_through_the_8259() {
        let mut bus = Bus::new();
        let pit = bus.add(Box::new(Pit::new(HZ2)), &PIT_PORTS, &[]).unwrap();
        let pic = bus.add(Box::new(DualPic::new()), &PIC_PORTS, &[]).unwrap();
        let mut irqs = IrqLines::new();
        let out = |bus: &mut Bus, irqs: &mut IrqLines, port: u16, v: u8| {
            bus.port_write(port, 1, u32::from(v), 0, irqs, &mut |_| {});
        };
        for (port, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 4), (0x21, 1), (0x21, 0)] {
            out(&mut bus, &mut irqs, port, v);
        }
        for (port, v) in [(0x43, 0x34), (0x40, 50), (0x40, 0)] {
            out(&mut bus, &mut irqs, port, v);
        }
        let _ = pit;
        let mut got = Vec::new();
        for _ in 0..3 {
            let due = bus.next_deadline().unwrap();
            bus.run_timers(due, &mut irqs, &mut |_| {});
            let chip = bus.get_mut::<DualPic>(pic).unwrap();
            irqs.forward_to(chip);
            got.push((due, chip.acknowledge()));
            out(&mut bus, &mut irqs, 0x20, 0x20);
        }
        assert_eq!(
            got,
            [(100, Some(0x30)), (200, Some(0x30)), (300, Some(0x30))]
        );
    }

    proptest! {
        /// The clock conversions give exactly the 128-bit formulas'
        /// answers, on both sides of the point where the 64-bit product
        /// overflows.
        #[test]
        fn clock_conversions_equal_the_128_bit_formulas(
            tsc_hz in prop_oneof![Just(0u64), Just(1), Just(HZ2), 1u64..10_000_000_000, any::<u64>()],
            value in prop_oneof![
                any::<u64>(),
                0u64..1 << 40,
                (u64::MAX / PIT_HZ - 1000)..(u64::MAX / PIT_HZ + 1000),
            ],
        ) {
            let pit = Pit::new(tsc_hz);
            let ticks = (u128::from(value) * u128::from(PIT_HZ))
                .checked_div(u128::from(tsc_hz))
                .map_or(0, |t| u64::try_from(t).unwrap_or(u64::MAX));
            prop_assert_eq!(pit.ticks_at(value), ticks);
            let tsc = (tsc_hz != 0).then(|| {
                let t = (u128::from(value) * u128::from(tsc_hz) + u128::from(PIT_HZ - 1))
                    / u128::from(PIT_HZ);
                u64::try_from(t).unwrap_or(u64::MAX)
            });
            prop_assert_eq!(pit.tsc_of_tick(value), tsc);
        }

        /// Random port accesses and timer runs at random times never
        /// panic, and a deadline asked for is never in the past of the
        /// timer run that asked for it.
        #[test]
        fn random_port_accesses_never_panic(
            tsc_hz in prop_oneof![Just(0u64), Just(1), Just(HZ2), any::<u64>()],
            ops in prop::collection::vec((0u8..3, any::<u16>(), 0u8..6, any::<u32>(), any::<u64>()), 0..300)
        ) {
            let mut vm = Vm::new(tsc_hz);
            let ports = [0x40u16, 0x41, 0x42, 0x43, 0x61, 0x3F, 0x60];
            for (kind, pick, size, value, time) in ops {
                let port = ports[usize::from(pick) % ports.len()];
                vm.now = vm.now.saturating_add(time >> (time % 64));
                match kind {
                    0 => {
                        let _ = vm.t.port_read_at(vm.t.now, port, size);
                    }
                    1 => {
                        let _ = vm.t.port_write_at(vm.t.now, port, size, value);
                    }
                    _ => {
                        let now = vm.now;
                        vm.run(now);
                        let saturated = Pit::new(tsc_hz).ticks_at(now) == u64::MAX;
                        if let Some(d) = vm.bus.next_deadline() {
                            prop_assert!(d > now || d == u64::MAX || saturated, "{} <= {}", d, now);
                        }
                    }
                }
            }
        }
    }
}
