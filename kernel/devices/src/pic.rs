//! [`DualPic`]: the PC/AT pair of 8259A programmable interrupt
//! controllers, master at 0x20-0x21 and slave at 0xA0-0xA1 cascaded on the
//! master's IR2, with the chipset's edge/level control registers (ELCR) at
//! 0x4D0-0x4D1. It owns both chips' registers (IRR, ISR, IMR), their
//! initialisation state, priority resolution and the INTA cycle.
//!
//! Sources: Intel 8259A datasheet (order 231468): "Interrupt Sequence",
//! "Programming the 8259A" (ICW1-ICW4, OCW1-OCW3), "The Fully Nested Mode",
//! "End of Interrupt", "Automatic Rotation", "Special Mask Mode", "Poll
//! Command", "Edge and Level Triggered Modes", "Cascade Mode"; the ELCR as
//! in Intel's PIIX/ICH south-bridge datasheets ("ELCR1/ELCR2 Edge/Level
//! Control Registers").
//!
//! # How a VM uses it
//!
//! The pair is both a bus [`Device`] (the guest programs it through its
//! ports, [`PIC_PORTS`]) and the VM's [`InterruptController`]: the owner
//! reaches it on the bus with [`Bus::get_mut`](crate::bus::Bus::get_mut)
//! and hands it the line changes with
//! [`IrqLines::forward_to`](crate::irq::IrqLines::forward_to), then asks
//! [`pending_vector`](InterruptController::pending_vector) and
//! [`acknowledge`](InterruptController::acknowledge) as for any controller.
//! [`DualPic::output`] is the master's INT pin.
//!
//! # Model
//!
//! - Lines: [`set_line`](InterruptController::set_line) takes ISA IRQs
//!   0..=15; 0-7 are the master's IR0-7, 8-15 the slave's IR0-7. The
//!   master's IR2 is the slave's INT output, not a device line. ISA IRQ 2
//!   is routed to IRQ 9 (the slave's IR1), as the PC/AT rewired the ISA
//!   bus's IRQ2 pin when it added the slave; IRQ 2 and IRQ 9 are ORed.
//!   Lines 16 and up are ignored.
//! - Triggering: an input is level-triggered when its ELCR bit is set (or
//!   its chip's ICW1 LTIM bit is): its IRR bit follows the line and is not
//!   cleared by INTA. Otherwise a rising edge latches its IRR bit until the
//!   INTA takes it. Unlike the real part, whose IR input must stay high
//!   until the first INTA, a latched edge survives the line falling again:
//!   the devices here deliver edges as pulses (the PIT's mode 2). The
//!   ELCR bits of IRQ 0, 1, 2, 8 and 13 are fixed at 0 (edge), as in the
//!   PIIX/ICH, whose datasheets reserve them.
//! - The cascade: the master's IR2 is edge-triggered on the slave's INT,
//!   so a slave request that vanishes after the master latched it gives
//!   the slave's IR7 vector on INTA (spurious IRQ 15) with the master's
//!   ISR bit 2 set, as Linux expects. After an INTA through IR2 the master
//!   looks at the slave's INT afresh, so a slave in automatic EOI with a
//!   second request still gets it delivered. The cascade is always IR2 and
//!   the slave always answers it; ICW3 is stored but not checked.
//! - Priority: fully nested, with rotation (OCW2 rotate commands, set
//!   priority, rotate in automatic EOI). A request is offered when it is
//!   not masked and of higher priority than everything in service on its
//!   chip; special mask mode leaves masked in-service levels out of that
//!   comparison; special fully nested mode (ICW4 SFNM) on the master leaves
//!   IR2 out, so the slave can interrupt its own in-service request.
//! - INTA: [`acknowledge`](InterruptController::acknowledge) is the INTA
//!   cycle while INT is asserted: IRR to ISR (not in automatic EOI), the
//!   vector is the chip's ICW2 base with the IR number in bits 0-2. With
//!   INT not asserted it returns `None`: in a VM the moment the CPU samples
//!   INT and the INTA are the same moment, so nothing can vanish between
//!   them. [`DualPic::inta`] is the raw cycle for a caller that sampled INT
//!   earlier: with no request left it returns the master's IR7 vector
//!   (spurious IRQ 7) and changes nothing.
//! - Power-on: both chips uninitialised, every input masked, no vector
//!   base; neither chip asserts INT until an ICW1..ICW2(..ICW4) sequence
//!   has completed. ICW1 clears the IMR, the ISR, the edge-triggered IRR
//!   bits, special mask mode, the ICW4 features and the rotation, and
//!   selects IRR for reads (the datasheet's list does not name the ISR; a
//!   guest that initialises again expects nothing left in service). A line
//!   already high at ICW1 must fall and rise to request again (the edge
//!   sense circuit is reset).
//! - Poll: after OCW3 with P set, the next read of either of that chip's
//!   ports is an INTA for that chip alone and returns 0x80 | IR (0 with no
//!   request).
//!
//! Left out: MCS-80/85 mode (ICW4 bit 0 clear is treated as 8086 mode),
//! buffered mode and ADI (no effect on the guest), and cascading through
//! an input other than IR2.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv};
use crate::irq::InterruptController;

/// The master 8259A's command and data ports.
pub const MASTER_PORTS: RangeInclusive<u16> = 0x20..=0x21;
/// The slave 8259A's command and data ports.
pub const SLAVE_PORTS: RangeInclusive<u16> = 0xA0..=0xA1;
/// ELCR1 (IRQ 0-7) and ELCR2 (IRQ 8-15).
pub const ELCR_PORTS: RangeInclusive<u16> = 0x4D0..=0x4D1;
/// Every port [`DualPic`] decodes, to claim on the bus.
pub const PIC_PORTS: [RangeInclusive<u16>; 3] = [MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS];

/// The master's input the slave's INT drives.
pub const CASCADE_IR: u8 = 2;

/// ELCR bits a guest can set: IRQ 0, 1 and 2 (ELCR1) and 8 and 13 (ELCR2)
/// are edge-triggered on the PC and read 0.
const ELCR1_WRITABLE: u8 = 0xF8;
const ELCR2_WRITABLE: u8 = 0xDE;

// ICW1 (A0 = 0, D4 = 1).
const ICW1: u8 = 1 << 4;
const ICW1_IC4: u8 = 1 << 0;
const ICW1_SNGL: u8 = 1 << 1;
const ICW1_LTIM: u8 = 1 << 3;
// ICW4.
const ICW4_AEOI: u8 = 1 << 1;
const ICW4_SFNM: u8 = 1 << 4;
// OCW3 (A0 = 0, D4 = 0, D3 = 1).
const OCW3: u8 = 1 << 3;
const OCW3_RIS: u8 = 1 << 0;
const OCW3_RR: u8 = 1 << 1;
const OCW3_P: u8 = 1 << 2;
const OCW3_SMM: u8 = 1 << 5;
const OCW3_ESMM: u8 = 1 << 6;
/// The poll word's "a request was there" bit.
const POLL_INT: u8 = 1 << 7;

/// The bit of input `ir` (taken modulo 8).
const fn ir_bit(ir: u8) -> u8 {
    1 << (ir & 7)
}

/// Which initialisation word a chip expects on its odd port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// None: odd-port writes are OCW1.
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chip {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// The level of each input as last set (the edge sense).
    inputs: u8,
    /// Inputs the ELCR makes level-triggered.
    elcr: u8,
    /// ICW1 as last written.
    icw1: u8,
    /// ICW3 as last written (stored only).
    icw3: u8,
    /// ICW4 as last written (0 when ICW1 said none follows).
    icw4: u8,
    /// The vector base from ICW2 (bits 7-3).
    base: u8,
    init: Init,
    /// An initialisation sequence completed since power-on.
    initialised: bool,
    /// The input with the lowest priority (7 unless rotated).
    lowest: u8,
    rotate_on_aeoi: bool,
    special_mask: bool,
    /// OCW3 selected the ISR for reads of the even port (else the IRR).
    read_isr: bool,
    /// OCW3 asked for a poll: the next read is one.
    poll: bool,
    /// The master of the pair (special fully nested mode applies).
    master: bool,
}

impl Chip {
    const fn new(master: bool) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0xFF,
            inputs: 0,
            elcr: 0,
            icw1: 0,
            icw3: 0,
            icw4: 0,
            base: 0,
            init: Init::Ready,
            initialised: false,
            lowest: 7,
            rotate_on_aeoi: false,
            special_mask: false,
            read_isr: false,
            poll: false,
            master,
        }
    }

    /// Inputs that are level-triggered.
    const fn level_mask(&self) -> u8 {
        if self.icw1 & ICW1_LTIM != 0 {
            0xFF
        } else {
            self.elcr
        }
    }

    /// The input of highest priority among the bits of `mask`.
    fn highest(&self, mask: u8) -> Option<u8> {
        // Priority order starts at lowest + 1: rotate that input to bit 0.
        let first = self.lowest.wrapping_add(1) & 7;
        let rotated = mask.rotate_right(u32::from(first));
        if rotated == 0 {
            return None;
        }
        // trailing_zeros of a non-zero u8 is 0..=7.
        let k = rotated.trailing_zeros() as u8;
        Some(k.wrapping_add(first) & 7)
    }

    /// The priority of input `ir`: 0 is the highest.
    const fn priority(&self, ir: u8) -> u8 {
        ir.wrapping_sub(self.lowest).wrapping_sub(1) & 7
    }

    /// The input this chip would raise INT for now, if any.
    fn request(&self) -> Option<u8> {
        if !self.initialised || self.init != Init::Ready {
            return None;
        }
        let ir = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.master && self.icw4 & ICW4_SFNM != 0 {
            in_service &= !ir_bit(CASCADE_IR);
        }
        match self.highest(in_service) {
            Some(busy) if self.priority(busy) <= self.priority(ir) => None,
            _ => Some(ir),
        }
    }

    /// The INT output.
    fn int(&self) -> bool {
        self.request().is_some()
    }

    /// Input `ir` is at `level` now.
    fn set_input(&mut self, ir: u8, level: bool) {
        let bit = ir_bit(ir);
        let rose = level && self.inputs & bit == 0;
        if level {
            self.inputs |= bit;
        } else {
            self.inputs &= !bit;
        }
        if self.level_mask() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if rose {
            self.irr |= bit;
        }
    }

    /// Level-triggered IRR bits follow their inputs (after the trigger
    /// mode changed).
    fn follow_levels(&mut self) {
        let level = self.level_mask();
        self.irr = (self.irr & !level) | (self.inputs & level);
    }

    /// The INTA cycle for input `ir`: the request goes in service (or,
    /// in automatic EOI, is done at once).
    fn ack(&mut self, ir: u8) {
        let bit = ir_bit(ir);
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
        if self.icw4 & ICW4_AEOI != 0 {
            if self.rotate_on_aeoi {
                self.lowest = ir & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    /// The vector of input `ir`: the ICW2 base with the input in bits 0-2.
    const fn vector(&self, ir: u8) -> u8 {
        self.base | (ir & 7)
    }

    /// A read of the even (`odd` false) or odd port.
    fn read(&mut self, odd: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return match self.request() {
                Some(ir) => {
                    self.ack(ir);
                    POLL_INT | ir
                }
                None => 0,
            };
        }
        match (odd, self.read_isr) {
            (true, _) => self.imr,
            (false, true) => self.isr,
            (false, false) => self.irr,
        }
    }

    /// A write of `value` to the even (`odd` false) or odd port.
    fn write(&mut self, odd: bool, value: u8) {
        if !odd {
            if value & ICW1 != 0 {
                self.icw1(value);
            } else if value & OCW3 != 0 {
                self.ocw3(value);
            } else {
                self.ocw2(value);
            }
            return;
        }
        match self.init {
            Init::Ready => self.imr = value,
            Init::Icw2 => {
                self.base = value & 0xF8;
                self.init = if self.icw1 & ICW1_SNGL == 0 {
                    Init::Icw3
                } else {
                    self.after_icw3()
                };
            }
            Init::Icw3 => {
                self.icw3 = value;
                self.init = self.after_icw3();
            }
            Init::Icw4 => {
                self.icw4 = value;
                self.init = Init::Ready;
                self.initialised = true;
            }
        }
    }

    /// The step after ICW3 (or after ICW2 for a single chip).
    fn after_icw3(&mut self) -> Init {
        if self.icw1 & ICW1_IC4 != 0 {
            Init::Icw4
        } else {
            self.initialised = true;
            Init::Ready
        }
    }

    /// ICW1: starts the initialisation sequence (8259A datasheet,
    /// "Initialization Command Words", items a-f).
    fn icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.icw4 = 0;
        self.imr = 0;
        self.isr = 0;
        self.irr &= self.level_mask();
        self.follow_levels();
        self.lowest = 7;
        self.rotate_on_aeoi = false;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.init = Init::Icw2;
    }

    /// OCW2: end of interrupt, rotation and priority commands.
    fn ocw2(&mut self, value: u8) {
        let level = value & 7;
        // R, SL, EOI in bits 7-5.
        match value >> 5 {
            // Non-specific EOI, and rotate on non-specific EOI.
            0b001 | 0b101 => {
                let mut in_service = self.isr;
                if self.special_mask {
                    in_service &= !self.imr;
                }
                if let Some(ir) = self.highest(in_service) {
                    self.isr &= !ir_bit(ir);
                    if value >> 5 == 0b101 {
                        self.lowest = ir;
                    }
                }
            }
            // Specific EOI.
            0b011 => self.isr &= !ir_bit(level),
            // Rotate on specific EOI.
            0b111 => {
                self.isr &= !ir_bit(level);
                self.lowest = level;
            }
            // Set priority.
            0b110 => self.lowest = level,
            // Rotate in automatic EOI mode: set, clear.
            0b100 => self.rotate_on_aeoi = true,
            0b000 => self.rotate_on_aeoi = false,
            // 0b010: no operation.
            _ => {}
        }
    }

    /// OCW3: read register select, poll, special mask mode.
    fn ocw3(&mut self, value: u8) {
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
        self.poll = value & OCW3_P != 0;
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
    }
}

/// The cascaded 8259A pair with the ELCR (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DualPic {
    master: Chip,
    slave: Chip,
    /// Bit `n`: ISA IRQ `n` is high.
    lines: u16,
}

impl Default for DualPic {
    fn default() -> Self {
        Self::new()
    }
}

impl DualPic {
    /// The pair at power-on: uninitialised, every input masked, all lines
    /// low, every input edge-triggered.
    pub const fn new() -> Self {
        Self {
            master: Chip::new(true),
            slave: Chip::new(false),
            lines: 0,
        }
    }

    /// Whether the master's INT pin is asserted: a request would be
    /// delivered if the CPU took interrupts now.
    pub fn output(&self) -> bool {
        self.master.int()
    }

    /// The INTA cycle as the CPU runs it after it saw INT asserted: the
    /// vector, with the state change [`acknowledge`] makes. With no
    /// request left on the master it returns the master's IR7 vector
    /// (spurious IRQ 7) and changes nothing; with the master's IR2 latched
    /// and no request left on the slave, the slave's IR7 vector (spurious
    /// IRQ 15), with the master's IR2 in service.
    ///
    /// [`acknowledge`]: InterruptController::acknowledge
    pub fn inta(&mut self) -> u8 {
        let Some(ir) = self.master.request() else {
            return self.master.vector(7);
        };
        self.master.ack(ir);
        let vector = if ir == CASCADE_IR {
            let vector = match self.slave.request() {
                Some(slave_ir) => {
                    self.slave.ack(slave_ir);
                    self.slave.vector(slave_ir)
                }
                None => self.slave.vector(7),
            };
            // Look at the slave's INT afresh: a request still there
            // latches IR2 again.
            self.master.inputs &= !ir_bit(CASCADE_IR);
            vector
        } else {
            self.master.vector(ir)
        };
        self.cascade();
        vector
    }

    /// The vector [`inta`](Self::inta) would return now, without taking it.
    fn peek(&self) -> u8 {
        match self.master.request() {
            None => self.master.vector(7),
            Some(CASCADE_IR) => self.slave.vector(self.slave.request().unwrap_or(7)),
            Some(ir) => self.master.vector(ir),
        }
    }

    /// Feeds the slave's INT to the master's IR2.
    fn cascade(&mut self) {
        let int = self.slave.int();
        self.master.set_input(CASCADE_IR, int);
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let value = match port {
            0x20 => self.master.read(false),
            0x21 => self.master.read(true),
            0xA0 => self.slave.read(false),
            0xA1 => self.slave.read(true),
            0x4D0 => self.master.elcr,
            0x4D1 => self.slave.elcr,
            _ => 0xFF,
        };
        // A poll is an INTA on its chip.
        self.cascade();
        value
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        match port {
            0x20 => self.master.write(false, value),
            0x21 => self.master.write(true, value),
            0xA0 => self.slave.write(false, value),
            0xA1 => self.slave.write(true, value),
            0x4D0 => {
                self.master.elcr = value & ELCR1_WRITABLE;
                self.master.follow_levels();
            }
            0x4D1 => {
                self.slave.elcr = value & ELCR2_WRITABLE;
                self.slave.follow_levels();
            }
            _ => {}
        }
        self.cascade();
    }
}

impl InterruptController for DualPic {
    fn set_line(&mut self, line: u8, level: bool) {
        let Some(bit) = 1u16.checked_shl(u32::from(line)) else {
            return;
        };
        if line >= 16 {
            return;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        match line {
            // IRQ 2 and IRQ 9 share the slave's IR1.
            2 | 9 => {
                let high = self.lines & (1 << 2 | 1 << 9) != 0;
                self.slave.set_input(1, high);
            }
            0..=7 => self.master.set_input(line, level),
            _ => self.slave.set_input(line & 7, level),
        }
        self.cascade();
    }

    fn pending_vector(&self) -> Option<u8> {
        self.output().then(|| self.peek())
    }

    fn acknowledge(&mut self) -> Option<u8> {
        self.output().then(|| self.inta())
    }
}

impl Device for DualPic {
    fn name(&self) -> &'static str {
        "pic"
    }

    /// Every register is a byte: a wider access is taken byte by byte at
    /// consecutive ports.
    fn port_read(&mut self, port: u16, size: u8, _env: &mut DeviceEnv<'_>) -> u32 {
        let mut bytes = [0xFF; 4];
        for (i, byte) in bytes.iter_mut().take(usize::from(size)).enumerate() {
            // `i` < 4: the cast is exact.
            *byte = self.read_byte(port.wrapping_add(i as u16));
        }
        u32::from_le_bytes(bytes)
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32, _env: &mut DeviceEnv<'_>) {
        for (i, &byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            self.write_byte(port.wrapping_add(i as u16), byte);
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

    /// A bus with the pair on it, as a VM holds it.
    type Vm = Rig<DualPic>;

    impl Vm {
        fn new() -> Self {
            Rig::with(DualPic::new(), &PIC_PORTS, &[])
        }
        fn pic(&mut self) -> &mut DualPic {
            self.dev()
        }
        /// A device drives ISA line `line`; the changes reach the pair.
        fn line(&mut self, line: u8, level: bool) {
            self.t.irqs.set(line, level);
            let pic = self.t.bus.get_mut::<DualPic>(self.id).unwrap();
            self.t.irqs.forward_to(pic);
        }
        fn pulse(&mut self, line: u8) {
            self.line(line, true);
            self.line(line, false);
        }
        fn ack(&mut self) -> Option<u8> {
            let pic = self.pic();
            let peek = pic.pending_vector();
            let got = pic.acknowledge();
            assert_eq!(peek, got, "pending_vector predicts acknowledge");
            got
        }
        /// Linux's init_8259A (arch/x86/kernel/i8259.c, as the datasheet's
        /// sequence): mask all, ICW1-4 to master then slave, vectors 0x30
        /// and 0x38, slave on IR2, 8086 mode, then the masks back.
        fn linux_init(&mut self, auto_eoi: bool) {
            self.outb(0x21, 0xFF);
            self.outb(0xA1, 0xFF);
            self.outb(0x20, 0x11);
            self.outb(0x21, 0x30);
            self.outb(0x21, 1 << CASCADE_IR);
            self.outb(0x21, if auto_eoi { 0x03 } else { 0x01 });
            self.outb(0xA0, 0x11);
            self.outb(0xA1, 0x38);
            self.outb(0xA1, CASCADE_IR);
            self.outb(0xA1, 0x01);
            self.outb(0x21, 0x00);
            self.outb(0xA1, 0x00);
        }
        fn isr(&mut self, cmd: u16) -> u8 {
            self.outb(cmd, OCW3 | OCW3_RR | OCW3_RIS);
            let v = self.inb(cmd);
            self.outb(cmd, OCW3 | OCW3_RR);
            v
        }
        fn irr(&mut self, cmd: u16) -> u8 {
            self.outb(cmd, OCW3 | OCW3_RR);
            self.inb(cmd)
        }
        /// Linux's mask_and_ack_8259A for `irq`: specific EOI(s).
        fn eoi(&mut self, irq: u8) {
            if irq >= 8 {
                self.outb(0xA0, 0x60 + (irq & 7));
                self.outb(0x20, 0x60 + CASCADE_IR);
            } else {
                self.outb(0x20, 0x60 + irq);
            }
        }
    }

    #[test]
    fn power_on_is_masked_and_silent_until_initialised() {
        let mut vm = Vm::new();
        assert_eq!(vm.inb(0x21), 0xFF);
        assert_eq!(vm.inb(0xA1), 0xFF);
        vm.pulse(0);
        vm.outb(0x21, 0x00);
        assert!(!vm.pic().output(), "no ICW sequence yet");
        assert_eq!(vm.ack(), None);
        // ICW1 alone: unmasked, but still initialising.
        vm.outb(0x20, 0x11);
        assert_eq!(vm.inb(0x21), 0x00, "ICW1 clears the IMR");
        vm.pulse(0);
        assert!(!vm.pic().output());
    }

    #[test]
    fn linux_init_then_timer_and_keyboard_in_priority_order() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        assert!(!vm.pic().output());
        vm.pulse(1);
        vm.pulse(0);
        assert_eq!(vm.irr(0x20), 0b11);
        assert!(vm.pic().output());
        assert_eq!(vm.ack(), Some(0x30), "IRQ 0 beats IRQ 1");
        assert_eq!(vm.isr(0x20), 0b01);
        assert_eq!(vm.ack(), None, "IRQ 1 waits behind IRQ 0 in service");
        vm.eoi(0);
        assert_eq!(vm.ack(), Some(0x31));
        // IRQ 0 again preempts IRQ 1 in service (fully nested).
        vm.pulse(0);
        assert_eq!(vm.ack(), Some(0x30));
        assert_eq!(vm.isr(0x20), 0b11);
        // Non-specific EOI ends the highest in service: IRQ 0.
        vm.outb(0x20, 0x20);
        assert_eq!(vm.isr(0x20), 0b10);
        vm.outb(0x20, 0x20);
        assert_eq!(vm.isr(0x20), 0);
        assert_eq!(vm.ack(), None);
    }

    #[test]
    fn the_slave_cascades_through_ir2_fully_nested() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.pulse(8);
        assert_eq!(vm.irr(0x20), 1 << 2, "the slave's INT latched IR2");
        assert_eq!(vm.ack(), Some(0x38));
        assert_eq!(vm.isr(0x20), 1 << 2);
        assert_eq!(vm.isr(0xA0), 1 << 0);
        // IRQ 3 is below IR2 in service: it waits; IRQ 1 is above: it goes.
        vm.pulse(3);
        vm.pulse(14);
        assert_eq!(vm.ack(), None);
        vm.pulse(1);
        assert_eq!(vm.ack(), Some(0x31));
        vm.eoi(1);
        assert_eq!(vm.ack(), None);
        // Slave EOI then master EOI: IRQ 14 (via IR2) before IRQ 3.
        vm.eoi(8);
        assert_eq!(vm.ack(), Some(0x3E));
        vm.eoi(14);
        assert_eq!(vm.ack(), Some(0x33));
        vm.eoi(3);
        assert_eq!((vm.isr(0x20), vm.isr(0xA0)), (0, 0));
        assert_eq!(vm.ack(), None);
    }

    #[test]
    fn automatic_eoi_sets_nothing_in_service_on_either_chip() {
        let mut vm = Vm::new();
        vm.linux_init(true);
        vm.pulse(0);
        assert_eq!(vm.ack(), Some(0x30));
        vm.pulse(0);
        assert_eq!(vm.ack(), Some(0x30), "no EOI needed");
        assert_eq!(vm.isr(0x20), 0);
        // A slave in AEOI with two requests delivers both.
        vm.outb(0xA0, 0x11);
        vm.outb(0xA1, 0x38);
        vm.outb(0xA1, 2);
        vm.outb(0xA1, 0x03);
        vm.pulse(12);
        vm.pulse(10);
        assert_eq!(vm.ack(), Some(0x3A));
        assert_eq!(vm.ack(), Some(0x3C));
        assert_eq!(vm.ack(), None);
        assert_eq!((vm.isr(0x20), vm.isr(0xA0)), (0, 0));
    }

    #[test]
    fn edge_inputs_latch_and_elcr_inputs_follow_the_level() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        // Edge: held high gives one request.
        vm.line(4, true);
        assert_eq!(vm.ack(), Some(0x34));
        vm.eoi(4);
        assert_eq!(vm.ack(), None, "still high, no new edge");
        vm.line(4, false);
        // A masked edge stays in the IRR until unmasked.
        vm.outb(0x21, 1 << 4);
        vm.pulse(4);
        assert_eq!(vm.ack(), None);
        assert_eq!(vm.irr(0x20), 1 << 4);
        vm.outb(0x21, 0);
        assert_eq!(vm.ack(), Some(0x34));
        vm.eoi(4);

        // Level (ELCR2 bit 2 = IRQ 10): requests again after EOI while high.
        vm.outb(0x4D1, 0xFF);
        assert_eq!(vm.inb(0x4D1), 0xDE, "IRQ 8 and 13 stay edge");
        vm.outb(0x4D0, 0xFF);
        assert_eq!(vm.inb(0x4D0), 0xF8, "IRQ 0, 1, 2 stay edge");
        vm.line(10, true);
        assert_eq!(vm.ack(), Some(0x3A));
        vm.eoi(10);
        assert_eq!(vm.ack(), Some(0x3A), "level still high");
        vm.line(10, false);
        vm.eoi(10);
        assert_eq!(vm.ack(), None);
        assert_eq!(vm.irr(0xA0), 0);
    }

    #[test]
    fn vanished_requests_give_spurious_irq_7_and_15() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.outb(0x4D0, 1 << 5);
        // A level request that drops before the INTA.
        vm.line(5, true);
        assert!(vm.pic().output());
        vm.line(5, false);
        assert!(!vm.pic().output());
        assert_eq!(vm.ack(), None, "the trait path: no INT, no INTA");
        assert_eq!(vm.pic().inta(), 0x37, "a sampled INT: spurious IRQ 7");
        assert_eq!(vm.isr(0x20), 0, "nothing in service");

        // The slave's request masked after the master latched IR2.
        vm.pulse(8);
        vm.outb(0xA1, 0x01);
        assert!(vm.pic().output(), "IR2 is latched on the master");
        assert_eq!(vm.ack(), Some(0x3F), "spurious IRQ 15");
        assert_eq!(vm.isr(0x20), 1 << 2, "the master's IR2 is in service");
        assert_eq!(vm.isr(0xA0), 0);
        // Linux then sends EOI to the master only.
        vm.outb(0x20, 0x62);
        vm.outb(0xA1, 0x00);
        assert_eq!(vm.ack(), Some(0x38), "the masked edge was kept");
    }

    #[test]
    fn poll_mode_reads_are_an_inta_on_their_chip() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.outb(0x20, OCW3 | OCW3_P);
        assert_eq!(vm.inb(0x20), 0, "nothing requested");
        vm.pulse(6);
        vm.outb(0x20, OCW3 | OCW3_P);
        assert_eq!(vm.inb(0x21), 0x86, "either port");
        assert_eq!(vm.isr(0x20), 1 << 6);
        assert_eq!(vm.inb(0x21), 0x00, "one read only: the IMR again");
        vm.pulse(11);
        vm.outb(0xA0, OCW3 | OCW3_P);
        assert_eq!(vm.inb(0xA0), 0x83);
        assert_eq!(vm.isr(0xA0), 1 << 3);
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_through() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.pulse(1);
        assert_eq!(vm.ack(), Some(0x31));
        vm.pulse(5);
        assert_eq!(vm.ack(), None);
        vm.outb(0x21, 1 << 1);
        vm.outb(0x20, OCW3 | OCW3_ESMM | OCW3_SMM);
        assert_eq!(vm.ack(), Some(0x35), "IRQ 1 in service but masked");
        // Non-specific EOI skips the masked in-service level.
        vm.outb(0x20, 0x20);
        assert_eq!(vm.isr(0x20), 1 << 1);
        vm.outb(0x20, OCW3 | OCW3_ESMM);
        vm.outb(0x20, 0x20);
        assert_eq!(vm.isr(0x20), 0);
    }

    #[test]
    fn rotation_moves_the_lowest_priority() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.pulse(3);
        assert_eq!(vm.ack(), Some(0x33));
        // Rotate on non-specific EOI: IRQ 3 becomes the lowest, 4 highest.
        vm.outb(0x20, 0xA0);
        vm.pulse(3);
        vm.pulse(6);
        assert_eq!(vm.ack(), Some(0x36));
        vm.outb(0x20, 0x20);
        assert_eq!(vm.ack(), Some(0x33));
        vm.outb(0x20, 0x20);
        // Set priority: IRQ 7 lowest again, so 0 is highest.
        vm.outb(0x20, 0xC7);
        vm.pulse(7);
        vm.pulse(0);
        assert_eq!(vm.ack(), Some(0x30));
        // Rotate on specific EOI (IRQ 0 lowest): 7 beats nothing else.
        vm.outb(0x20, 0xE0);
        vm.pulse(0);
        assert_eq!(vm.ack(), Some(0x37));
    }

    #[test]
    fn isa_irq_2_arrives_as_irq_9_and_lines_past_15_are_ignored() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.pulse(2);
        assert_eq!(vm.ack(), Some(0x39));
        vm.eoi(9);
        // IRQ 9 held high: IRQ 2 rising adds no edge (the pins are ORed).
        vm.line(9, true);
        assert_eq!(vm.ack(), Some(0x39));
        vm.eoi(9);
        vm.line(2, true);
        assert_eq!(vm.ack(), None);
        let mut pic = DualPic::new();
        pic.set_line(16, true);
        pic.set_line(255, true);
        assert_eq!(pic, DualPic::new());
    }

    #[test]
    fn reinitialising_clears_what_was_in_service() {
        let mut vm = Vm::new();
        vm.linux_init(false);
        vm.line(0, true);
        assert_eq!(vm.ack(), Some(0x30));
        vm.linux_init(false);
        assert_eq!(vm.isr(0x20), 0);
        assert_eq!(vm.ack(), None, "the line was high at ICW1: no edge");
        vm.line(0, false);
        vm.line(0, true);
        assert_eq!(vm.ack(), Some(0x30));
        // Wide accesses go byte by byte: 0x20 then 0x21 (the IMR).
        let got = vm.port_read_at(0, 0x20, 2);
        assert_eq!(got, Some(0x0000));
    }

    proptest! {
        /// Random port accesses, line changes and INTAs never panic, and
        /// pending_vector always predicts what acknowledge returns.
        #[test]
        fn random_port_accesses_never_panic(
            ops in prop::collection::vec(
                (0u8..5, any::<u16>(), 0u8..6, any::<u32>()),
                0..300,
            )
        ) {
            let mut vm = Vm::new();
            let ports = [0x20u16, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x1F, 0x4CF];
            for (kind, pick, size, value) in ops {
                let port = ports[usize::from(pick) % ports.len()];
                match kind {
                    0 => {
                        let _ = vm.port_read_at(0, port, size);
                    }
                    1 => {
                        let _ = vm.port_write_at(0, port, size, value);
                    }
                    2 => vm.line((value % 20) as u8, value & 0x100 != 0),
                    3 => {
                        let pic = vm.pic();
                        let peek = pic.pending_vector();
                        prop_assert_eq!(peek.is_some(), pic.output());
                        prop_assert_eq!(pic.acknowledge(), peek);
                    }
                    _ => {
                        let _ = vm.pic().inta();
                    }
                }
            }
        }
    }
}
