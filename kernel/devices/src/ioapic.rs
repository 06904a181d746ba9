//! The VM's I/O APIC, modelled on the Intel 82093AA (its datasheet, cited
//! by section): 24 input pins, each with a redirection entry that turns
//! the pin's interrupt into an [`InterruptMessage`] for the local APICs.
//!
//! # How a VM uses it
//!
//! [`IoApic`] is a bus [`Device`] on one MMIO page at [`IOAPIC_BASE`]
//! (IOREGSEL at offset 0x00, IOWIN at 0x10; datasheet 3.1). It reaches no
//! local APIC itself: an interrupt it sends is queued, and the VM's
//! interrupt path takes it with [`take_message`](IoApic::take_message) and
//! routes it (the same place that routes IPIs). The caller drives its
//! pins with [`set_line`](IoApic::set_line) (from the VM's
//! [`IrqLines`](crate::irq::IrqLines)) and passes a local APIC's
//! level-triggered EOI on with [`eoi`](IoApic::eoi). After anything that
//! may queue a message (a line change, a guest write to the page, an EOI)
//! it checks [`has_messages`](IoApic::has_messages).
//!
//! ```
//! use devices::ioapic::{IoApic, IOAPIC_BASE};
//! use devices::bus::{Bus, GuestPhysAddr, MmioRange};
//!
//! let mut bus = Bus::new();
//! let page = MmioRange::new(GuestPhysAddr::new(IOAPIC_BASE), 1).unwrap();
//! let ioapic = bus.add(Box::new(IoApic::new(0)), &[], &[page]).unwrap();
//! let ioapic = bus.get_mut::<IoApic>(ioapic).unwrap();
//! ioapic.set_line(4, true); // masked at reset: nothing is sent
//! assert!(!ioapic.has_messages());
//! ```
//!
//! # Pin levels and polarity
//!
//! `set_line(pin, true)` means the device *asserts* its interrupt, whatever
//! the entry's polarity bit (datasheet 3.2.4, bit 13) says. The VM's
//! interrupt lines are logical assertions (a device model raises its line
//! to interrupt), not wire voltages, so the polarity the guest programs
//! (active low for PCI INTx, as ACPI tells it) describes a wire that does
//! not exist: honouring it would turn every idle active-low line into a
//! stuck interrupt. The bit is stored and reads back; it changes nothing.
//!
//! # Modelled, and left out
//!
//! Modelled: the ID, version (0x11, 24 entries) and arbitration registers;
//! the redirection entries with their read-only delivery status (set while
//! a message is queued) and remote IRR; edge-triggered pins (a rising edge
//! on an unmasked pin sends once; an edge on a masked pin is lost);
//! level-triggered pins (sent while asserted, unmasked and remote IRR
//! clear; the EOI with the entry's vector clears remote IRR and sends again
//! if the pin is still asserted).
//!
//! Left out: the EOI register of later I/O APICs (version 0x20), APIC-bus
//! arbitration (the arbitration ID is only read back) and delivery
//! failure: a queued message is taken whole by the caller. Destinations are
//! the full 8 bits (the 82093AA used 4 for physical IDs), as xAPIC systems
//! use them.

use crate::apic::{DeliveryMode, InterruptMessage};
use crate::bus::{all_ones, Device, DeviceEnv, GuestPhysAddr};

/// The guest-physical address of the I/O APIC's register page (the
/// 82093AA's default, datasheet 3.0).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;

/// How many input pins and redirection entries it has.
pub const IOAPIC_PINS: u8 = 24;

/// The version register (datasheet 3.2.2): version 0x11, maximum
/// redirection entry 23.
pub const IOAPIC_VERSION: u32 = 0x0017_0011;

/// Offsets of the two directly addressed registers (datasheet 3.1).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

/// Indexes of the indirect registers (datasheet 3.2).
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION: u8 = 0x10;
const REG_REDIRECTION_LAST: u8 = 0x3F;

/// The ID and arbitration ID sit in bits 27:24 (datasheet 3.2.1, 3.2.3).
const ID_SHIFT: u32 = 24;
const ID_MASK: u8 = 0x0F;

/// Redirection entry bits (datasheet 3.2.4).
const RTE_VECTOR: u64 = 0xFF;
const RTE_DELIVERY_SHIFT: u32 = 8;
const RTE_LOGICAL: u64 = 1 << 11;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
const RTE_DEST_SHIFT: u32 = 56;
/// What software can write: bits 0..=11, 13, 15, 16 and 63:56; delivery
/// status and remote IRR are read-only, the rest reserved.
const RTE_WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// One pin's bit in a 24-bit set: `None` for a pin that does not exist.
fn pin_bit(pin: u8) -> Option<u32> {
    (pin < IOAPIC_PINS).then(|| 1u32 << pin)
}

/// The I/O APIC (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoApic {
    base: u64,
    /// Bits 3:0 of the ID register.
    id: u8,
    /// Bits 3:0 of the arbitration register.
    arbitration_id: u8,
    /// IOREGSEL bits 7:0.
    select: u8,
    entries: [u64; IOAPIC_PINS as usize],
    /// Bit `n`: pin `n` is asserted.
    asserted: u32,
    /// Bit `n`: a message for pin `n` is queued.
    queued: u32,
}

impl IoApic {
    /// An I/O APIC at [`IOAPIC_BASE`] with ID `id` (bits 3:0 kept, as the
    /// register has 4 bits) in its reset state: every entry masked and
    /// otherwise 0, every pin deasserted, nothing queued.
    pub fn new(id: u8) -> Self {
        let id = id & ID_MASK;
        Self {
            base: IOAPIC_BASE,
            id,
            arbitration_id: id,
            select: 0,
            entries: [RTE_MASKED; IOAPIC_PINS as usize],
            asserted: 0,
            queued: 0,
        }
    }

    /// The I/O APIC ID.
    pub const fn id(&self) -> u8 {
        self.id
    }

    /// Redirection entry `pin` as the guest reads it; `None` for a pin that
    /// does not exist.
    pub fn entry(&self, pin: u8) -> Option<u64> {
        let entry = *self.entries.get(usize::from(pin))?;
        let status = if self.queued & pin_bit(pin)? != 0 {
            RTE_DELIVERY_STATUS
        } else {
            0
        };
        Some(entry | status)
    }

    /// The stored entry of a pin known to exist (0 otherwise).
    fn raw(&self, pin: u8) -> u64 {
        self.entries.get(usize::from(pin)).copied().unwrap_or(0)
    }

    /// Drives pin `pin`: `asserted` is the device's logical assertion (see
    /// "Pin levels and polarity"). Pins past 23 are ignored.
    ///
    /// Edge-triggered: a rising edge on an unmasked pin queues a message;
    /// on a masked pin it is lost (datasheet 3.2.4, bit 16). Level-triggered:
    /// asserting an unmasked pin whose remote IRR is clear queues a
    /// message; deasserting it withdraws one not taken yet.
    pub fn set_line(&mut self, pin: u8, asserted: bool) {
        let Some(bit) = pin_bit(pin) else {
            return;
        };
        let was = self.asserted & bit != 0;
        if asserted {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }
        let entry = self.raw(pin);
        if entry & RTE_LEVEL != 0 {
            if asserted {
                self.queue_if_level_ready(pin);
            } else {
                self.queued &= !bit;
            }
        } else if asserted && !was && entry & RTE_MASKED == 0 {
            self.queued |= bit;
        }
    }

    /// Whether pin `pin` is asserted.
    pub fn line(&self, pin: u8) -> bool {
        pin_bit(pin).is_some_and(|bit| self.asserted & bit != 0)
    }

    /// Queues a message for level-triggered `pin` if it is asserted,
    /// unmasked and its remote IRR is clear.
    fn queue_if_level_ready(&mut self, pin: u8) {
        let Some(bit) = pin_bit(pin) else {
            return;
        };
        let entry = self.raw(pin);
        if entry & RTE_LEVEL != 0
            && entry & (RTE_MASKED | RTE_REMOTE_IRR) == 0
            && self.asserted & bit != 0
        {
            self.queued |= bit;
        }
    }

    /// Whether a message is queued.
    pub const fn has_messages(&self) -> bool {
        self.queued != 0
    }

    /// Takes the next queued message, lowest pin first, built from its
    /// entry as it is now. A level-triggered entry's remote IRR is set: it
    /// sends nothing more until the EOI. An entry with a delivery mode the
    /// 82093AA reserves (011b, 110b) sends nothing.
    pub fn take_message(&mut self) -> Option<InterruptMessage> {
        while self.queued != 0 {
            let pin = u8::try_from(self.queued.trailing_zeros()).ok()?;
            let bit = pin_bit(pin)?;
            self.queued &= !bit;
            let entry = self.raw(pin);
            let mode = match DeliveryMode::from_bits((entry >> RTE_DELIVERY_SHIFT) as u32) {
                None | Some(DeliveryMode::StartUp) => continue,
                Some(mode) => mode,
            };
            let level_triggered = entry & RTE_LEVEL != 0;
            if level_triggered {
                if let Some(stored) = self.entries.get_mut(usize::from(pin)) {
                    *stored |= RTE_REMOTE_IRR;
                }
            }
            return Some(InterruptMessage {
                // Bits 7:0 and 63:56: the casts keep all of them.
                vector: (entry & RTE_VECTOR) as u8,
                mode,
                dest: (entry >> RTE_DEST_SHIFT) as u8,
                logical: entry & RTE_LOGICAL != 0,
                level_triggered,
            });
        }
        None
    }

    /// A local APIC ended level-triggered interrupt `vector` (the EOI
    /// message, datasheet 3.2.4 bit 14): every level-triggered entry with
    /// that vector clears its remote IRR, and sends again if its pin is
    /// still asserted and it is unmasked.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..IOAPIC_PINS {
            let entry = self.raw(pin);
            if entry & RTE_LEVEL != 0
                && entry & RTE_REMOTE_IRR != 0
                && entry & RTE_VECTOR == u64::from(vector)
            {
                if let Some(stored) = self.entries.get_mut(usize::from(pin)) {
                    *stored &= !RTE_REMOTE_IRR;
                }
                self.queue_if_level_ready(pin);
            }
        }
    }

    /// The guest writes redirection entry `pin`: `value` replaces the bits
    /// in `writable`.
    fn write_entry(&mut self, pin: u8, value: u64, writable: u64) {
        let Some(bit) = pin_bit(pin) else {
            return;
        };
        let old = self.raw(pin);
        let mut new = (old & !writable) | (value & writable & RTE_WRITABLE);
        if new & RTE_LEVEL == 0 {
            // Remote IRR means nothing for an edge-triggered entry, and
            // switching an entry to edge and back is how OSes clear a
            // stuck remote IRR on I/O APICs without an EOI register.
            new &= !RTE_REMOTE_IRR;
        }
        if let Some(stored) = self.entries.get_mut(usize::from(pin)) {
            *stored = new;
        }
        if new & RTE_MASKED != 0 {
            // An interrupt not yet sent is not sent once masked.
            self.queued &= !bit;
        } else {
            // Unmasking (or switching to level) with the pin asserted.
            self.queue_if_level_ready(pin);
        }
    }

    /// The register IOWIN reaches now (datasheet 3.2).
    fn read_window(&self) -> u32 {
        match self.select {
            REG_ID => u32::from(self.id) << ID_SHIFT,
            REG_VERSION => IOAPIC_VERSION,
            REG_ARBITRATION => u32::from(self.arbitration_id) << ID_SHIFT,
            index @ REG_REDIRECTION..=REG_REDIRECTION_LAST => {
                let offset = index.wrapping_sub(REG_REDIRECTION);
                let entry = self.entry(offset >> 1).unwrap_or(0);
                // Odd indexes read the high half; the casts keep 32 bits.
                if offset & 1 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            // Registers that do not exist read 0.
            _ => 0,
        }
    }

    fn write_window(&mut self, value: u32) {
        match self.select {
            REG_ID => {
                // Bits 27:24: the cast keeps the nibble.
                self.id = ((value >> ID_SHIFT) as u8) & ID_MASK;
                // The arbitration ID is loaded from the ID (datasheet 3.2.3).
                self.arbitration_id = self.id;
            }
            index @ REG_REDIRECTION..=REG_REDIRECTION_LAST => {
                let offset = index.wrapping_sub(REG_REDIRECTION);
                let (value, writable) = if offset & 1 == 0 {
                    (u64::from(value), 0x0000_0000_FFFF_FFFF)
                } else {
                    (u64::from(value) << 32, 0xFFFF_FFFF_0000_0000)
                };
                self.write_entry(offset >> 1, value, writable);
            }
            // Version and arbitration are read-only; the rest do not exist.
            _ => {}
        }
    }

    /// The offset of `gpa` in the register page, if it is in it.
    fn offset(&self, gpa: GuestPhysAddr) -> Option<u64> {
        gpa.as_u64()
            .checked_sub(self.base)
            .filter(|offset| *offset < crate::bus::PAGE_SIZE)
    }
}

/// The register page: 32-bit accesses to IOREGSEL and IOWIN (datasheet
/// 3.1). Accesses of another size, or at another offset, read all ones and
/// are ignored when written, as if nothing decoded them.
impl Device for IoApic {
    fn name(&self) -> &'static str {
        "ioapic"
    }

    fn mmio_read(&mut self, gpa: GuestPhysAddr, size: u8, _env: &mut DeviceEnv<'_>) -> u64 {
        match (self.offset(gpa), size) {
            (Some(IOREGSEL), 4) => u64::from(self.select),
            (Some(IOWIN), 4) => u64::from(self.read_window()),
            _ => all_ones(size),
        }
    }

    fn mmio_write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64, _env: &mut DeviceEnv<'_>) {
        match (self.offset(gpa), size) {
            // Bits 7:0 select; the rest are reserved.
            (Some(IOREGSEL), 4) => self.select = (value & 0xFF) as u8,
            // The cast keeps the low 32 bits, all a 4-byte write has.
            (Some(IOWIN), 4) => self.write_window(value as u32),
            _ => {}
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
    use crate::bus::MmioRange;
    use crate::testbus::Rig;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// An I/O APIC on a bus, driven through its page as a guest would.
    type Vm = Rig<IoApic>;

    impl Vm {
        fn new() -> Self {
            let page = MmioRange::new(GuestPhysAddr::new(IOAPIC_BASE), 1).unwrap();
            Rig::with(IoApic::new(3), &[], &[page])
        }
        fn read(&mut self, offset: u64, size: u8) -> u64 {
            self.mmio_read(IOAPIC_BASE + offset, size)
        }
        fn write(&mut self, offset: u64, size: u8, value: u64) {
            self.mmio_write(IOAPIC_BASE + offset, size, value);
        }
        /// Reads indirect register `index`.
        fn reg(&mut self, index: u8) -> u32 {
            self.write(0x00, 4, u64::from(index));
            self.read(0x10, 4) as u32
        }
        fn set_reg(&mut self, index: u8, value: u32) {
            self.write(0x00, 4, u64::from(index));
            self.write(0x10, 4, u64::from(value));
        }
        /// Programs entry `pin`: low half `low`, destination `dest`.
        fn program(&mut self, pin: u8, low: u32, dest: u8) {
            self.set_reg(0x11 + 2 * pin, u32::from(dest) << 24);
            self.set_reg(0x10 + 2 * pin, low);
        }
        fn ioapic(&mut self) -> &mut IoApic {
            self.dev()
        }
        fn messages(&mut self) -> Vec<InterruptMessage> {
            core::iter::from_fn(|| self.ioapic().take_message()).collect()
        }
    }

    const LEVEL: u32 = 1 << 15;
    const MASKED: u32 = 1 << 16;
    const ACTIVE_LOW: u32 = 1 << 13;

    fn fixed(vector: u8, dest: u8, level_triggered: bool) -> InterruptMessage {
        InterruptMessage {
            vector,
            mode: DeliveryMode::Fixed,
            dest,
            logical: false,
            level_triggered,
        }
    }

    #[test]
    fn registers_read_back_through_select_and_window() {
        let mut vm = Vm::new();
        assert_eq!(vm.reg(0x00), 3 << 24, "ID");
        assert_eq!(vm.reg(0x01), 0x0017_0011, "version: 0x11, 24 entries");
        assert_eq!(vm.reg(0x02), 3 << 24, "arbitration ID starts as the ID");
        assert_eq!(vm.read(0x00, 4), 0x02, "IOREGSEL reads back");

        vm.set_reg(0x00, 0xFFFF_FFFF);
        assert_eq!(vm.reg(0x00), 0x0F00_0000, "4-bit ID in bits 27:24");
        assert_eq!(vm.reg(0x02), 0x0F00_0000, "loaded from the ID");
        assert_eq!(vm.ioapic().id(), 0xF);
        vm.set_reg(0x01, 0);
        vm.set_reg(0x02, 0);
        assert_eq!((vm.reg(0x01), vm.reg(0x02)), (0x0017_0011, 0x0F00_0000));

        // Every entry is masked at reset.
        for pin in 0..24 {
            assert_eq!(vm.reg(0x10 + 2 * pin), MASKED, "pin {pin}");
            assert_eq!(vm.reg(0x11 + 2 * pin), 0, "pin {pin}");
        }
        // Halves are written separately; read-only and reserved bits drop.
        vm.set_reg(0x3E, 0xFFFF_FFFF);
        vm.set_reg(0x3F, 0xFFFF_FFFF);
        assert_eq!(vm.reg(0x3E), 0x0001_AFFF, "pin 23 low half");
        assert_eq!(vm.reg(0x3F), 0xFF00_0000, "pin 23 high half");
        assert_eq!(vm.ioapic().entry(23), Some(0xFF00_0000_0001_AFFF));
        vm.program(5, 0x0000_0935, 0x12);
        assert_eq!((vm.reg(0x1A), vm.reg(0x1B)), (0x935, 0x1200_0000));
        assert_eq!(vm.reg(0x18), MASKED, "neighbours untouched");
        // Registers that do not exist read 0 and ignore writes.
        vm.set_reg(0x40, 0xFFFF_FFFF);
        assert_eq!(vm.reg(0x40), 0);
        assert_eq!(vm.reg(0x03), 0);
        assert_eq!(vm.reg(0xFF), 0);
        vm.write(0x00, 4, 0xFFFF_FF01);
        assert_eq!(vm.read(0x00, 4), 0x01, "IOREGSEL bits 7:0 only");
    }

    #[test]
    fn other_sizes_and_offsets_read_all_ones_and_drop_writes() {
        let mut vm = Vm::new();
        vm.write(0x00, 4, 0x01);
        assert_eq!(vm.read(0x10, 1), 0xFF);
        assert_eq!(vm.read(0x10, 2), 0xFFFF);
        assert_eq!(vm.read(0x10, 8), u64::MAX);
        assert_eq!(vm.read(0x20, 4), 0xFFFF_FFFF);
        assert_eq!(vm.read(0xFFC, 4), 0xFFFF_FFFF);
        vm.write(0x00, 1, 0x00);
        vm.write(0x00, 8, 0x00);
        vm.write(0x04, 4, 0x00);
        assert_eq!(vm.read(0x00, 4), 0x01, "select unchanged");
        vm.write(0x00, 4, 0x10);
        vm.write(0x10, 2, 0);
        assert_eq!(vm.read(0x10, 4), u64::from(MASKED), "still masked");
    }

    #[test]
    fn edge_pins_send_on_rising_edges_only_and_lose_them_while_masked() {
        let mut vm = Vm::new();
        vm.ioapic().set_line(4, true);
        vm.ioapic().set_line(4, false);
        assert!(!vm.ioapic().has_messages(), "masked: the edge is lost");

        vm.program(4, 0x34, 1);
        assert!(!vm.ioapic().has_messages(), "unmasking does not replay it");
        vm.ioapic().set_line(4, true);
        assert!(vm.ioapic().has_messages());
        assert_eq!(
            vm.reg(0x18) & (1 << 12),
            1 << 12,
            "delivery status: pending"
        );
        vm.ioapic().set_line(4, true);
        assert_eq!(vm.messages(), [fixed(0x34, 1, false)], "one per edge");
        assert_eq!(vm.reg(0x18) & (1 << 12), 0, "delivery status: idle");
        assert_eq!(vm.reg(0x18) & (1 << 14), 0, "no remote IRR for edges");
        vm.ioapic().set_line(4, false);
        assert!(!vm.ioapic().has_messages());
        vm.ioapic().set_line(4, true);
        vm.ioapic().set_line(4, false);
        assert_eq!(vm.messages(), [fixed(0x34, 1, false)], "a pulse counts");

        // Masking withdraws an edge not yet taken.
        vm.ioapic().set_line(4, true);
        vm.program(4, MASKED | 0x34, 1);
        vm.program(4, 0x34, 1);
        assert_eq!(vm.messages(), []);
        // Pins past 23 do not exist.
        vm.ioapic().set_line(24, true);
        vm.ioapic().set_line(255, true);
        assert!(!vm.ioapic().line(24) && !vm.ioapic().has_messages());
    }

    #[test]
    fn messages_go_lowest_pin_first_built_at_take_time() {
        let mut vm = Vm::new();
        vm.program(9, 0x49, 2);
        vm.program(1, 0x800 | 0x31, 0x0C);
        vm.ioapic().set_line(9, true);
        vm.ioapic().set_line(1, true);
        // Changed after queueing: the message carries the new vector.
        vm.program(9, 0x59, 2);
        let logical = InterruptMessage {
            logical: true,
            ..fixed(0x31, 0x0C, false)
        };
        assert_eq!(vm.messages(), [logical, fixed(0x59, 2, false)]);
        assert_eq!(vm.ioapic().take_message(), None);

        // ExtINT and NMI entries keep their delivery mode; reserved ones
        // (011b, and start-up, which the I/O APIC does not have) send
        // nothing.
        vm.program(2, 0x700, 0);
        vm.program(3, 0x400, 0);
        vm.program(6, 0x300 | 0x40, 0);
        vm.program(7, 0x600 | 0x40, 0);
        for pin in [2, 3, 6, 7] {
            vm.ioapic().set_line(pin, true);
        }
        let modes: Vec<_> = vm.messages().iter().map(|m| m.mode).collect();
        assert_eq!(modes, [DeliveryMode::ExtInt, DeliveryMode::Nmi]);
    }

    #[test]
    fn level_pins_wait_for_the_eoi_and_send_again_while_asserted() {
        let mut vm = Vm::new();
        vm.program(10, LEVEL | ACTIVE_LOW | 0x3A, 0);
        // Asserted means asserted, whatever the polarity bit says.
        vm.ioapic().set_line(10, true);
        assert_eq!(vm.messages(), [fixed(0x3A, 0, true)]);
        assert_eq!(vm.reg(0x24) & (1 << 14), 1 << 14, "remote IRR set");
        vm.ioapic().set_line(10, false);
        vm.ioapic().set_line(10, true);
        assert!(!vm.ioapic().has_messages(), "remote IRR holds it back");

        vm.ioapic().eoi(0x3B);
        assert!(!vm.ioapic().has_messages(), "another vector");
        vm.ioapic().eoi(0x3A);
        assert_eq!(vm.reg(0x24) & (1 << 14), 0);
        assert_eq!(vm.messages(), [fixed(0x3A, 0, true)], "still asserted");
        vm.ioapic().set_line(10, false);
        vm.ioapic().eoi(0x3A);
        assert!(!vm.ioapic().has_messages(), "deasserted: done");

        // A deassert before the message is taken withdraws it.
        vm.ioapic().set_line(10, true);
        vm.ioapic().set_line(10, false);
        assert!(!vm.ioapic().has_messages());

        // An EOI reaches every level entry with the vector.
        vm.program(11, LEVEL | 0x3A, 1);
        vm.ioapic().set_line(10, true);
        vm.ioapic().set_line(11, true);
        assert_eq!(vm.messages().len(), 2);
        vm.ioapic().eoi(0x3A);
        assert_eq!(vm.messages(), [fixed(0x3A, 0, true), fixed(0x3A, 1, true)]);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_sends() {
        let mut vm = Vm::new();
        vm.program(12, MASKED | LEVEL | 0x50, 0);
        vm.ioapic().set_line(12, true);
        assert!(!vm.ioapic().has_messages(), "masked");
        vm.program(12, LEVEL | 0x50, 0);
        assert_eq!(vm.messages(), [fixed(0x50, 0, true)]);

        // Masked while remote IRR is set: the EOI clears it but sends
        // only once unmasked.
        vm.program(12, MASKED | LEVEL | 0x50, 0);
        vm.ioapic().eoi(0x50);
        assert!(!vm.ioapic().has_messages());
        vm.program(12, LEVEL | 0x50, 0);
        assert_eq!(vm.messages(), [fixed(0x50, 0, true)]);

        // Switching to edge clears a stuck remote IRR (how OSes clear it
        // without an EOI register); back to level, it sends again.
        vm.program(12, MASKED | 0x50, 0);
        assert_eq!(vm.reg(0x28) & (1 << 14), 0);
        vm.program(12, LEVEL | 0x50, 0);
        assert_eq!(vm.messages(), [fixed(0x50, 0, true)]);
    }

    #[test]
    fn a_level_interrupt_goes_round_trip_through_a_local_apic() {
        use crate::lapic::{ApicEffect, LocalApic};

        let mut vm = Vm::new();
        let mut cpus = [0, 1].map(|id| {
            let mut apic = LocalApic::new(id, 1_000_000_000, 25_000_000);
            apic.firmware_state();
            apic
        });
        // What the VM's interrupt path does with a message.
        let route = |msg: InterruptMessage, cpus: &mut [LocalApic; 2]| {
            for apic in cpus.iter_mut() {
                if apic.matches(msg.dest, msg.logical) {
                    apic.accept(msg.vector, msg.level_triggered);
                }
            }
        };
        vm.program(9, LEVEL | 0x39, 1);
        vm.ioapic().set_line(9, true);
        let msg = vm.ioapic().take_message().unwrap();
        route(msg, &mut cpus);
        assert_eq!(cpus[0].pending_vector(), None, "not for CPU 0");
        assert_eq!(cpus[1].acknowledge(), Some(0x39));

        // The guest's handler has not quietened the device yet: the EOI
        // goes back to the I/O APIC, which sends again.
        let eoi = cpus[1].write(0xB0, 0, 0);
        assert_eq!(
            eoi,
            ApicEffect::Eoi {
                vector: 0x39,
                level_triggered: true
            }
        );
        vm.ioapic().eoi(0x39);
        let msg = vm.ioapic().take_message().unwrap();
        route(msg, &mut cpus);
        assert_eq!(cpus[1].acknowledge(), Some(0x39));

        // This time the device lowers its line before the EOI.
        vm.ioapic().set_line(9, false);
        cpus[1].write(0xB0, 0, 0);
        vm.ioapic().eoi(0x39);
        assert!(!vm.ioapic().has_messages());
        assert_eq!(vm.reg(0x22) & (1 << 14), 0, "remote IRR clear");
    }

    proptest! {
        /// Random accesses of any size anywhere in the page, line changes
        /// and EOIs never panic; every message taken names a pin whose
        /// entry is unmasked, and the version never changes.
        #[test]
        fn random_accesses_never_panic(
            ops in prop::collection::vec(
                (0u8..6, any::<u16>(), prop::sample::select(vec![1u8, 2, 4, 8]), any::<u64>()),
                0..300,
            )
        ) {
            let mut vm = Vm::new();
            for (kind, offset, size, value) in ops {
                // Bias offsets towards the two registers.
                let offset = match offset % 3 {
                    0 => 0x00,
                    1 => 0x10,
                    _ => u64::from(offset >> 4),
                };
                match kind {
                    0 => {
                        vm.read(offset, size);
                    }
                    1 => vm.write(offset, size, value),
                    // Select an entry and write it, to unmask some.
                    2 => vm.set_reg((value & 0x3F) as u8, (value >> 8) as u32),
                    3 => vm.ioapic().set_line((value & 0x1F) as u8, value & 0x100 != 0),
                    4 => vm.ioapic().eoi((value & 0xFF) as u8),
                    _ => {
                        while let Some(msg) = vm.ioapic().take_message() {
                            prop_assert!(msg.mode != DeliveryMode::StartUp);
                        }
                    }
                }
                prop_assert_eq!(vm.reg(0x01), IOAPIC_VERSION);
                for pin in 0..IOAPIC_PINS {
                    let entry = vm.ioapic().entry(pin).unwrap();
                    if entry & RTE_MASKED != 0 {
                        prop_assert_eq!(entry & RTE_DELIVERY_STATUS, 0, "masked but queued");
                    }
                }
            }
        }
    }
}
