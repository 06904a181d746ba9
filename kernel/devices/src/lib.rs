//! Ferrovisor's guest device models: pure state machines the VM-exit
//! handlers drive, tested on the host. Nothing here executes a privileged
//! instruction, reads a VMCS or knows the scheduler: the crate depends on
//! neither `vmx`, `sched` nor `kernel`.
//!
//! # How a VM uses it
//!
//! Each VM owns one [`Bus`], one [`IrqLines`] and one
//! [`InterruptController`] (for now [`SimpleIrqChip`]):
//!
//! ```
//! use devices::bus::Bus;
//! use devices::irq::{InterruptController, IrqLines, SimpleIrqChip};
//! use devices::serial::UartDevice;
//! use devices::timer::{TestTimer, TEST_TIMER_PORTS};
//!
//! let mut bus = Bus::new();
//! let com1 = UartDevice::com1();
//! let com1_ports = com1.ports();
//! let com1 = bus.add(Box::new(com1), &[com1_ports], &[]).unwrap();
//! bus.add(Box::new(TestTimer::new()), &[TEST_TIMER_PORTS], &[]).unwrap();
//! let (mut irqs, mut chip) = (IrqLines::new(), SimpleIrqChip::new());
//! let mut console = |line: &str| println!("[guest] {line}");
//!
//! // Port-I/O exit: OUT DX, AL with DX = 0x3F8; `now` is the VM's TSC.
//! let now = 1_000;
//! if !bus.port_write(0x3F8, 1, u32::from(b'A'), now, &mut irqs, &mut console) {
//!     // No device: count the write and drop it.
//! }
//! // IN: `None` means no device, read all ones.
//! let lsr = bus.port_read(0x3FD, 1, now, &mut irqs, &mut console).unwrap_or(0xFF);
//! assert_eq!(lsr, 0x60);
//!
//! // Before entering the guest: due timers, then interrupts.
//! bus.run_timers(now, &mut irqs, &mut console);
//! irqs.forward_to(&mut chip);
//! if let Some(vector) = chip.acknowledge() {
//!     // inject `vector` (when the guest can take it)
//! }
//! // Arm the preemption timer (or wake a halted vCPU) for this:
//! let _next = bus.next_deadline();
//!
//! // The guest stops: emit partial console lines.
//! bus.flush(&mut console);
//! # let _ = com1;
//! ```
//!
//! - [`bus`]: the [`Device`] trait (port and MMIO reads and
//!   writes with absolute port or guest-physical address, a timer callback,
//!   a name, a flush), the [`DeviceEnv`] a device acts
//!   through (the clock, interrupt lines, wake-up deadlines, the console
//!   line sink, a reset or power-off [`VmRequest`] for the VM), and the
//!   [`Bus`] itself: ranges refused on overlap with a
//!   [`BusError`](bus::BusError), binary-search dispatch with no allocation
//!   per access, accesses that cross a device's range split per byte,
//!   [`Bus::mmio_ranges`] for the EPT builder to leave unmapped, and
//!   [`Bus::get_mut`] / [`Bus::with_device`] to reach a device's own type.
//! - [`irq`]: [`IrqLines`] (lines 0..24, levels and changes, pulses kept),
//!   the [`InterruptController`] trait and [`SimpleIrqChip`] (vector
//!   base + line, edge-latched, lowest line first, auto-EOI, maskable).
//! - [`acpi_pm`]: [`AcpiPm`](acpi_pm::AcpiPm), the ACPI PM1 event and
//!   control blocks and the PM timer at 0x600-0x60B (the FADT's addresses
//!   as constants); SLP_EN with S5 powers the VM off.
//! - [`i8042`]: [`I8042`](i8042::I8042), the keyboard controller at 0x60
//!   and 0x64 with no keyboard behind it: self test, command byte, output
//!   port, and the reset line (0xFE) as a VM reset.
//! - [`pci_host`]: [`PciHost`](pci_host::PciHost), ports 0xCF8-0xCFF:
//!   CONFIG_ADDRESS, a configuration space with no devices, and the reset
//!   control register at 0xCF9.
//! - [`pic`]: [`DualPic`](pic::DualPic), the cascaded 8259A pair at
//!   0x20/0xA0 with the ELCR at 0x4D0, an [`InterruptController`] and a
//!   bus device at once.
//! - [`pit`]: [`Pit`](pit::Pit), the 8254 at 0x40-0x43 and port 0x61,
//!   counting from the TSC lazily, channel 0's edges on line 0.
//! - [`rtc`]: [`Rtc`](rtc::Rtc), the MC146818 clock and CMOS RAM at
//!   0x70-0x71, its time from a wall-clock base plus the TSC, and the
//!   civil-date conversions.
//! - [`uart`]: the 16550A register model; [`console`]: the line buffer that
//!   makes guest output safe to print; [`serial`]: the two as a bus device
//!   ([`UartDevice`](serial::UartDevice), COM1 at 0x3F8 on line 4).
//! - [`timer`]: [`TestTimer`](timer::TestTimer), a one-shot timer for test
//!   guests at ports 0x0E0..=0x0E7 on line 5 (its module documents the
//!   guest ABI).
//! - [`apic`]: the [`InterruptMessage`](apic::InterruptMessage) an I/O APIC
//!   entry or an IPI sends, and its delivery mode, trigger mode and
//!   destination.
//! - [`lapic`]: [`LocalApic`](lapic::LocalApic), one vCPU's xAPIC (registers
//!   at 0xFEE00000, priorities, IRR/ISR/EOI, the timer, IPIs as
//!   [`ApicEffect`](lapic::ApicEffect)s for the caller to route); not a bus
//!   device: the exit handler calls its vCPU's own.
//! - [`ioapic`]: [`IoApic`](ioapic::IoApic), the VM's 82093AA I/O APIC on
//!   the bus at 0xFEC00000: 24 redirection entries that turn line
//!   assertions into queued interrupt messages for the caller to route.
//!
//! Guests are untrusted: no guest-controlled value (port, address, size,
//! data, timing) can make this crate panic, which the lints below and the
//! property tests hold to.
#![cfg_attr(not(test), no_std)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

extern crate alloc;

pub mod acpi_pm;
pub mod apic;
pub mod bus;
pub mod console;
pub mod i8042;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod pci_host;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;
pub mod timer;
pub mod uart;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::arithmetic_side_effects)]
mod testbus;

pub use bus::{Bus, Device, DeviceEnv, VmRequest};
pub use irq::{InterruptController, IrqLines, SimpleIrqChip};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use alloc::boxed::Box;

    use crate::bus::{Bus, VmRequest};
    use crate::irq::IrqLines;

    /// The legacy PC devices claim disjoint ports, so a VM can have all of
    /// them (and COM1) on one bus, and their reset and power-off requests
    /// reach the bus owner.
    #[test]
    fn the_pc_platform_fits_on_one_bus() {
        let tsc_hz = 3_000_000_000;
        let mut bus = Bus::new();
        let pic = crate::pic::DualPic::new();
        bus.add(Box::new(pic), &crate::pic::PIC_PORTS, &[]).unwrap();
        let pit = crate::pit::Pit::new(tsc_hz);
        bus.add(Box::new(pit), &crate::pit::PIT_PORTS, &[]).unwrap();
        let rtc = crate::rtc::Rtc::new(tsc_hz, 1_700_000_000, 0);
        bus.add(Box::new(rtc), &[crate::rtc::RTC_PORTS], &[])
            .unwrap();
        let host = crate::pci_host::PciHost::new();
        bus.add(Box::new(host), &[crate::pci_host::PCI_HOST_PORTS], &[])
            .unwrap();
        let kbc = crate::i8042::I8042::new();
        bus.add(Box::new(kbc), &crate::i8042::I8042_PORTS, &[])
            .unwrap();
        let pm = crate::acpi_pm::AcpiPm::new(tsc_hz);
        bus.add(Box::new(pm), &crate::acpi_pm::ACPI_PM_PORTS, &[])
            .unwrap();
        let com1 = crate::serial::UartDevice::com1();
        let com1_ports = com1.ports();
        bus.add(Box::new(com1), &[com1_ports], &[]).unwrap();

        let mut irqs = IrqLines::new();
        let mut out = |bus: &mut Bus, port: u16, size: u8, value: u32| {
            assert!(bus.port_write(port, size, value, 0, &mut irqs, &mut |_| {}));
        };
        out(&mut bus, 0x64, 1, 0xFE);
        assert_eq!(bus.take_request(), Some(VmRequest::Reset));
        out(&mut bus, 0x604, 2, (5 << 10) | (1 << 13));
        assert_eq!(bus.take_request(), Some(VmRequest::PowerOff));
        out(&mut bus, 0xCF9, 1, 0x06);
        assert_eq!(bus.take_request(), Some(VmRequest::Reset));
    }
}
