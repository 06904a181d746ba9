//! What a VM's vCPUs share besides RAM and its second-level tables: the
//! device bus, the interrupt lines and the interrupt controller, and the
//! interrupt path from a raised line to an event injected into a vCPU.
//! Vendor-neutral: it reaches a vCPU only through [`VcpuAccess`].

use alloc::boxed::Box;

use addr::GuestPhysAddr;
use devices::bus::{Bus, DeviceId};
use devices::irq::{InterruptController, IrqLines, SimpleIrqChip};
use devices::serial::UartDevice;
use devices::timer::{TestTimer, TEST_TIMER_PORTS};

use super::access::{Event, VcpuAccess};

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// A VM's devices and interrupt routing.
pub struct VmDevices {
    /// Port and MMIO ranges to device models. Whoever changes a device
    /// through it directly calls [`VmDevices::refresh`] after.
    pub bus: Bus,
    /// The VM's interrupt lines.
    irqs: IrqLines,
    /// Where the lines go: the trivial controller until the PC's 8259,
    /// I/O APIC and local APICs exist.
    chip: SimpleIrqChip,
    /// COM1, whose console the print hypercall writes to.
    com1: Option<DeviceId>,
    /// The earliest device deadline (`u64::MAX`: none), and whether a line
    /// changed or the controller holds an interrupt, as of the last
    /// access: what [`VmDevices::needs_attention`] reads on every entry.
    deadline: u64,
    pending: bool,
}

impl core::fmt::Debug for VmDevices {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmDevices")
            .field("devices", &self.bus.len())
            .field("next_deadline", &self.bus.next_deadline())
            .finish_non_exhaustive()
    }
}

impl Default for VmDevices {
    fn default() -> Self {
        Self::new()
    }
}

impl VmDevices {
    /// The devices every guest gets today: a 16550 as COM1 (ports
    /// 0x3F8..=0x3FF, line 4) and the test timer (ports 0xE0..=0xE7, line
    /// 5), with the trivial interrupt controller (line L is vector
    /// 0x20 + L).
    pub fn new() -> Self {
        let mut bus = Bus::new();
        let com1 = UartDevice::com1();
        let com1_ports = com1.ports();
        // Neither can fail: the ranges are fixed and do not overlap.
        let com1 = bus.add(Box::new(com1), &[com1_ports], &[]).ok();
        let _ = bus.add(Box::new(TestTimer::new()), &[TEST_TIMER_PORTS], &[]);
        Self {
            bus,
            irqs: IrqLines::new(),
            chip: SimpleIrqChip::new(),
            com1,
            deadline: u64::MAX,
            pending: false,
        }
    }

    /// Brings the state [`VmDevices::needs_attention`] reads up to date
    /// after a device may have changed (a timer armed, a line moved).
    pub fn refresh(&mut self) {
        self.deadline = self.bus.next_deadline().unwrap_or(u64::MAX);
        self.pending = self.irqs.has_changes() || self.chip.pending_vector().is_some();
    }

    /// The guest reads `size` bytes from `port` at TSC `now`: `None` when
    /// no device claims it.
    pub fn port_read(
        &mut self,
        port: u16,
        size: u8,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u32> {
        let value = self.bus.port_read(port, size, now, &mut self.irqs, sink);
        self.refresh();
        value
    }

    /// The guest writes `value` to `port`: false when no device claims it.
    pub fn port_write(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> bool {
        let claimed = self
            .bus
            .port_write(port, size, value, now, &mut self.irqs, sink);
        self.refresh();
        claimed
    }

    /// The guest reads `size` bytes at `gpa`: `None` when no device claims
    /// it.
    pub fn mmio_read(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u64> {
        let value = self.bus.mmio_read(gpa, size, now, &mut self.irqs, sink);
        self.refresh();
        value
    }

    /// The guest writes `value` at `gpa`: false when no device claims it.
    pub fn mmio_write(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        value: u64,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> bool {
        let claimed = self
            .bus
            .mmio_write(gpa, size, value, now, &mut self.irqs, sink);
        self.refresh();
        claimed
    }

    /// Bytes the guest printed by hypercall join its COM1 console lines.
    pub fn print(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) {
        if let Some(uart) = self.com1.and_then(|id| self.bus.get_mut::<UartDevice>(id)) {
            uart.print(bytes, sink);
        }
    }

    /// Emits every device's partial console line (the guest stops).
    pub fn flush(&mut self, sink: &mut dyn FnMut(&str)) {
        self.bus.flush(sink);
    }

    /// Whether a device claims the MMIO page holding `gpa`.
    #[inline]
    pub fn is_mmio(&self, gpa: GuestPhysAddr) -> bool {
        self.bus.is_mmio(gpa)
    }

    /// The earliest TSC value at which a device wants its timer run.
    pub fn next_deadline(&self) -> Option<u64> {
        self.bus.next_deadline()
    }

    /// Whether anything may be due for the guest at `now`: a device timer,
    /// a line that changed, or an interrupt the controller holds. Cheap,
    /// so the run loop asks before every entry.
    #[inline]
    pub fn needs_attention(&self, now: u64) -> bool {
        self.pending || self.deadline <= now
    }

    /// Runs the timers due at `now` and forwards changed lines to the
    /// controller; the vector it would deliver next, if any.
    pub fn poll(&mut self, now: u64, sink: &mut dyn FnMut(&str)) -> Option<u8> {
        self.bus.run_timers(now, &mut self.irqs, sink);
        self.irqs.forward_to(&mut self.chip);
        self.refresh();
        self.chip.pending_vector()
    }

    /// Takes the interrupt the controller would deliver next, for
    /// injection.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.chip.acknowledge();
        self.refresh();
        vector
    }
}

/// Before an entry: injects the interrupt the controller holds if the
/// vCPU can take it now (RFLAGS.IF set, no STI or MOV SS shadow, no other
/// event already being delivered); otherwise, with one held, asks for an
/// exit when it can (interrupt window). True when it injected one.
pub fn deliver_interrupt<B: VcpuAccess>(
    vcpu: &mut B,
    vm: &mut VmDevices,
    now: u64,
    sink: &mut dyn FnMut(&str),
) -> Result<bool, B::Error> {
    if vm.poll(now, sink).is_none() {
        return Ok(false);
    }
    let open =
        vcpu.rflags()? & RFLAGS_IF != 0 && !vcpu.interrupt_shadow()? && !vcpu.event_pending()?;
    if !open {
        vcpu.request_interrupt_window(true)?;
        return Ok(false);
    }
    match vm.acknowledge() {
        Some(vector) => {
            vcpu.inject(Event::ExternalInterrupt { vector })?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use std::string::String;
    use std::vec::Vec;

    use super::*;
    use crate::fake::FakeVcpu;

    fn sink(lines: &mut Vec<String>) -> impl FnMut(&str) + '_ {
        |line| lines.push(line.into())
    }

    #[test]
    fn the_test_timer_wakes_a_guest_with_its_vector() {
        let mut vm = VmDevices::new();
        let mut lines = Vec::new();
        // Arm in 2 units (2 * 1024 ticks) at t = 1000.
        assert!(vm.port_write(0xE0, 4, 2, 1000, &mut sink(&mut lines)));
        assert_eq!(vm.next_deadline(), Some(1000 + 2048));
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x202;
        assert!(!vm.needs_attention(2000));
        assert!(!deliver_interrupt(&mut vcpu, &mut vm, 2000, &mut sink(&mut lines)).unwrap());
        assert!(vm.needs_attention(3048));
        assert!(deliver_interrupt(&mut vcpu, &mut vm, 3048, &mut sink(&mut lines)).unwrap());
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0x25 }]);
        assert!(!vm.needs_attention(3048), "delivered once");
    }

    #[test]
    fn a_guest_with_interrupts_masked_gets_a_window_request_instead() {
        let mut vm = VmDevices::new();
        let mut lines = Vec::new();
        vm.port_write(0xE0, 4, 1, 0, &mut sink(&mut lines));
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x2;
        assert!(!deliver_interrupt(&mut vcpu, &mut vm, 5000, &mut sink(&mut lines)).unwrap());
        assert!(vcpu.window && vcpu.injected.is_empty());
        // IF set but in an STI shadow: still the window.
        vcpu.rflags = 0x202;
        vcpu.shadow = true;
        vcpu.window = false;
        assert!(!deliver_interrupt(&mut vcpu, &mut vm, 5000, &mut sink(&mut lines)).unwrap());
        assert!(vcpu.window);
        // The window opens: delivered.
        vcpu.shadow = false;
        assert!(deliver_interrupt(&mut vcpu, &mut vm, 5001, &mut sink(&mut lines)).unwrap());
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0x25 }]);
    }

    #[test]
    fn print_and_com1_output_share_one_line() {
        let mut vm = VmDevices::new();
        let mut lines = Vec::new();
        vm.port_write(0x3F8, 1, u32::from(b'a'), 0, &mut sink(&mut lines));
        vm.print(b"bc\n", &mut sink(&mut lines));
        assert_eq!(lines, ["abc"]);
        vm.print(b"partial", &mut sink(&mut lines));
        vm.flush(&mut sink(&mut lines));
        assert_eq!(lines, ["abc", "partial"]);
    }
}
