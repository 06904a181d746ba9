//! What a VM's vCPUs share besides RAM and its second-level tables: the
//! PC platform's devices on one bus, the interrupt lines, and the interrupt
//! path from a raised line to an event injected into a vCPU.
//! Vendor-neutral: it reaches a vCPU only through [`VcpuAccess`].
//!
//! # The platform
//!
//! Every VM gets the devices a PC kernel expects (and the firmware tables
//! describe): COM1 (a 16550A on line 4), the 8259A pair, the 8254 PIT with
//! port 0x61 (line 0), the CMOS/RTC, the keyboard controller's reset line,
//! the PCI host bridge's configuration ports (no devices) with the reset
//! control register at 0xCF9, the ACPI PM1 and PM-timer registers, the
//! I/O APIC at `0xFEC0_0000`, and Ferrovisor's test timer (line 5). Each
//! vCPU has its own local APIC (in its [`VcpuModel`](crate::exit::VcpuModel)),
//! reached through MMIO at `0xFEE0_0000` from that vCPU only.
//!
//! # Interrupt routing
//!
//! Line `n` goes to 8259 input `n` (ISA IRQ `n`) and to I/O APIC pin `n`
//! (the MADT has no interrupt source overrides). The I/O APIC's messages go
//! to the local APICs they name, through the VM's
//! [`ApicBus`](crate::apic_bus::ApicBus); the 8259's output reaches the
//! boot vCPU when its local APIC passes ExtINT (LINT0 in virtual-wire
//! mode, or the APIC disabled), as on a PC, where only the bootstrap
//! processor's LINT0 is wired for it. Before each entry [`deliver_interrupt`] injects
//! what the vCPU can take: the 8259's vector by an INTA cycle, or the
//! local APIC's highest pending vector.

use alloc::boxed::Box;
use alloc::sync::Arc;

use addr::GuestPhysAddr;
use devices::acpi_pm::{AcpiPm, ACPI_PM_PORTS};
use devices::bus::{Bus, DeviceId, VmRequest};
use devices::i8042::{I8042, I8042_PORTS};
use devices::ioapic::{IoApic, IOAPIC_BASE};
use devices::irq::{InterruptController, IrqLines};
use devices::lapic::{ApicEffect, IpiShorthand, LocalApic};
use devices::pci_host::{PciHost, PCI_HOST_PORTS};
use devices::pic::{DualPic, PIC_PORTS};
use devices::pit::{Pit, PIT_PORTS};
use devices::rtc::{Rtc, RTC_PORTS};
use devices::serial::{UartDevice, UART_PORTS};
use devices::timer::{TestTimer, TEST_TIMER_PORTS};
use devices::uart::COM1_BASE;

use super::access::{Event, VcpuAccess};
use super::apic_bus::ApicBus;
use super::mmio::MmioSpace;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// The wall-clock time at one TSC value: what a VM's RTC starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    /// Seconds since 1970-01-01 00:00 UTC.
    pub unix_seconds: u64,
    /// The TSC when it was that time.
    pub tsc: u64,
}

/// A VM's devices and interrupt routing.
pub struct VmDevices {
    /// Port and MMIO ranges to device models. Whoever changes a device
    /// through it directly calls [`VmDevices::refresh`] after.
    pub bus: Bus,
    /// The VM's interrupt lines.
    irqs: IrqLines,
    /// The 8259 pair and the I/O APIC, on the bus.
    pic: Option<DeviceId>,
    ioapic: Option<DeviceId>,
    /// COM1, whose console the print hypercall writes to.
    com1: Option<DeviceId>,
    /// Whether COM1 transmits plainly, as of the last write to its ports
    /// (see [`VmDevices::com1_transmits_plainly`]).
    com1_plain: bool,
    /// Whether COM1 may hold transmitted bytes not yet taken (set by a
    /// write to its ports, cleared when they are taken).
    com1_output: bool,
    /// What a read of COM1's LSR returns while that read changes nothing,
    /// as of the last access to COM1 or input for it.
    com1_lsr: Option<u8>,
    /// Whether the 8259 pair asserts its output, and whether the I/O APIC
    /// holds a message, as of the last change that could move them (kept
    /// so that the exit path asks neither device on every exit).
    pic_out: bool,
    ioapic_pending: bool,
    /// The earliest device deadline (`u64::MAX`: none), and whether a line
    /// changed or the I/O APIC holds a message, as of the last access:
    /// what [`VmDevices::needs_attention`] reads on every entry.
    deadline: u64,
    pending: bool,
    /// The wires between the VM's local APICs, shared with the run, which
    /// reads each vCPU's inbox without this struct's lock.
    apics: Arc<ApicBus>,
}

impl core::fmt::Debug for VmDevices {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmDevices")
            .field("devices", &self.bus.len())
            .field("next_deadline", &self.bus.next_deadline())
            .finish_non_exhaustive()
    }
}

/// The I/O APIC's input pins as an [`InterruptController`] that
/// [`IrqLines::forward_to`] can drive: only `set_line` means anything, the
/// vectors come out as messages ([`IoApic::take_message`]).
struct IoApicPins<'a>(&'a mut IoApic);

impl InterruptController for IoApicPins<'_> {
    fn set_line(&mut self, line: u8, level: bool) {
        self.0.set_line(line, level);
    }

    fn pending_vector(&self) -> Option<u8> {
        None
    }

    fn acknowledge(&mut self) -> Option<u8> {
        None
    }
}

impl VmDevices {
    /// The PC platform (see the module documentation) on a host whose TSC
    /// runs at `tsc_hz`, its RTC showing `clock`.
    pub fn new(tsc_hz: u64, clock: WallClock) -> Self {
        Self::with_vcpus(tsc_hz, clock, 1)
    }

    /// [`VmDevices::new`] for a VM with `vcpus` vCPUs, whose local APICs
    /// the devices' messages and the IPIs reach through one [`ApicBus`].
    pub fn with_vcpus(tsc_hz: u64, clock: WallClock, vcpus: u32) -> Self {
        let mut bus = Bus::new();
        let com1 = UartDevice::com1();
        let com1_ports = com1.ports();
        // None of these can fail: the ranges are fixed and do not overlap
        // (a test adds them all).
        let com1 = bus.add(Box::new(com1), &[com1_ports], &[]).ok();
        let _ = bus.add(Box::new(TestTimer::new()), &[TEST_TIMER_PORTS], &[]);
        let pic = bus.add(Box::new(DualPic::new()), &PIC_PORTS, &[]).ok();
        let _ = bus.add(Box::new(Pit::new(tsc_hz)), &PIT_PORTS, &[]);
        let _ = bus.add(
            Box::new(Rtc::new(tsc_hz, clock.unix_seconds, clock.tsc)),
            &[RTC_PORTS],
            &[],
        );
        let _ = bus.add(Box::new(I8042::new()), &I8042_PORTS, &[]);
        let _ = bus.add(Box::new(PciHost::new()), &[PCI_HOST_PORTS], &[]);
        let _ = bus.add(Box::new(AcpiPm::new(tsc_hz)), &ACPI_PM_PORTS, &[]);
        let ioapic = devices::bus::MmioRange::new(GuestPhysAddr::new(IOAPIC_BASE), 1)
            .ok()
            .and_then(|range| bus.add(Box::new(IoApic::new(0)), &[], &[range]).ok());
        let mut vm = Self {
            bus,
            irqs: IrqLines::new(),
            pic,
            ioapic,
            com1,
            com1_plain: false,
            com1_output: false,
            com1_lsr: None,
            pic_out: false,
            ioapic_pending: false,
            deadline: u64::MAX,
            pending: false,
            apics: Arc::new(ApicBus::new(vcpus as usize)),
        };
        vm.refresh_com1();
        vm
    }

    /// The wires between the VM's local APICs.
    pub fn apic_bus(&self) -> &Arc<ApicBus> {
        &self.apics
    }

    /// Reads the 8259 pair's output again (its registers or inputs moved).
    fn sync_pic(&mut self) {
        self.pic_out = self.pic_mut().is_some_and(|pic| pic.output());
    }

    /// Reads whether the I/O APIC holds a message again.
    fn sync_ioapic(&mut self) {
        self.ioapic_pending = self.ioapic_mut().is_some_and(|io| io.has_messages());
    }

    /// Brings the state [`VmDevices::needs_attention`] reads up to date
    /// after a device may have changed (a timer armed, a line moved).
    pub fn refresh(&mut self) {
        self.deadline = self.bus.next_deadline().unwrap_or(u64::MAX);
        self.pending = self.irqs.has_changes() || self.ioapic_pending;
    }

    fn ioapic_mut(&mut self) -> Option<&mut IoApic> {
        self.ioapic.and_then(|id| self.bus.get_mut::<IoApic>(id))
    }

    fn pic_mut(&mut self) -> Option<&mut DualPic> {
        self.pic.and_then(|id| self.bus.get_mut::<DualPic>(id))
    }

    /// Whether the 8259 pair asserts its output to the CPU.
    pub fn pic_output(&self) -> bool {
        self.pic_out
    }

    /// A reset or power-off a device asked for since the last call.
    pub fn take_request(&mut self) -> Option<VmRequest> {
        self.bus.take_request()
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
        if is_pic_port(port) {
            // Poll mode and reading ISR/IRR can move the pair's state.
            self.sync_pic();
        }
        if port.wrapping_sub(COM1_BASE) < UART_PORTS {
            self.refresh_com1();
        }
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
        if is_pic_port(port) {
            self.sync_pic();
        }
        if port.wrapping_sub(COM1_BASE) < UART_PORTS {
            self.refresh_com1();
            self.com1_output = true;
        }
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
        self.sync_ioapic();
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
        self.sync_ioapic();
        self.refresh();
        claimed
    }

    /// Bytes the guest printed by hypercall join its COM1 console lines.
    pub fn print(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) {
        if let Some(uart) = self.com1_uart_mut() {
            uart.print(bytes, sink);
        }
    }

    /// Whether a write to COM1's transmit register only sends its byte
    /// (see [`devices::uart::Uart16550::transmits_plainly`]), so it may be
    /// queued in a [`crate::com_out::ComOut`] instead of coming here.
    pub fn com1_transmits_plainly(&self) -> bool {
        self.com1_plain
    }

    /// What a read of COM1's line status register would return, when
    /// that read changes nothing (see
    /// [`devices::uart::Uart16550::quiet_line_status`]), as of the last
    /// access to COM1 or input for it; a backend may answer such a read
    /// on the exit path with it.
    pub fn com1_quiet_lsr(&self) -> Option<u8> {
        self.com1_lsr
    }

    /// Brings what the exit path may know of COM1 ([`com1_plain`] and
    /// [`com1_lsr`]) up to date with its registers, after any change.
    ///
    /// [`com1_plain`]: VmDevices::com1_transmits_plainly
    /// [`com1_lsr`]: VmDevices::com1_quiet_lsr
    fn refresh_com1(&mut self) {
        let uart = self.com1_uart().map(UartDevice::uart);
        let plain = uart.is_some_and(|u| u.transmits_plainly());
        let lsr = uart.and_then(|u| u.quiet_line_status());
        self.com1_plain = plain;
        self.com1_lsr = lsr;
    }

    /// COM1's device on the bus.
    fn com1_uart(&self) -> Option<&UartDevice> {
        self.com1.and_then(|id| self.bus.get::<UartDevice>(id))
    }

    /// COM1's device on the bus, to change.
    fn com1_uart_mut(&mut self) -> Option<&mut UartDevice> {
        self.com1.and_then(|id| self.bus.get_mut::<UartDevice>(id))
    }

    /// Writes `bytes` to COM1's transmit register, one byte-sized OUT
    /// each, as the guest did: the bytes a [`crate::com_out::ComOut`]
    /// queued.
    pub fn com1_transmit(&mut self, bytes: &[u8], now: u64, sink: &mut dyn FnMut(&str)) {
        self.com1_output = true;
        let sent = self
            .com1_uart_mut()
            .is_some_and(|uart| uart.send_plain(bytes, sink));
        if !sent {
            for &byte in bytes {
                self.port_write(COM1_BASE, 1, u32::from(byte), now, sink);
            }
        }
    }

    /// Console input for the guest's COM1: how many of `bytes` its receive
    /// FIFO took (the rest are the caller's to offer again).
    pub fn feed_com1(&mut self, bytes: &[u8], now: u64, sink: &mut dyn FnMut(&str)) -> usize {
        let taken = match self.com1 {
            Some(id) => self
                .bus
                .with_device(
                    id,
                    now,
                    &mut self.irqs,
                    sink,
                    |uart: &mut UartDevice, env| uart.receive(bytes, env),
                )
                .unwrap_or(0),
            None => 0,
        };
        self.refresh_com1();
        self.refresh();
        taken
    }

    /// Switches COM1 to raw output (`true`: what the guest transmits is
    /// queued byte for byte for [`VmDevices::take_console_output`]) or
    /// back to console lines through the sink (`false`, the default).
    /// Hypercall prints make lines either way.
    pub fn set_com1_raw(&mut self, raw: bool) {
        if let Some(uart) = self.com1_uart_mut() {
            uart.set_raw(raw);
        }
    }

    /// Hands what the guest transmitted on COM1 in raw mode since the last
    /// call to `out` (not called when there is nothing).
    pub fn take_console_output(&mut self, out: &mut dyn FnMut(&[u8])) {
        self.com1_output = false;
        if let Some(uart) = self.com1_uart_mut() {
            uart.take_output(out);
        }
    }

    /// Whether [`take_console_output`](Self::take_console_output) may have
    /// bytes to give: false only when nothing was written to COM1 since
    /// they were last taken.
    pub fn console_output_waiting(&self) -> bool {
        self.com1_output
    }

    /// COM1 output bytes raw mode dropped because they were not taken in
    /// time.
    pub fn console_output_dropped(&mut self) -> u64 {
        self.com1_uart().map_or(0, |uart| uart.output_dropped())
    }

    /// Whether console input would wake the guest: its COM1 interrupts on
    /// received data. Such a guest, halted with no timer armed, waits for
    /// its console rather than forever.
    pub fn waits_for_console(&mut self) -> bool {
        self.com1_uart()
            .is_some_and(|uart| uart.receive_interrupt_enabled())
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

    /// Whether anything may be due for the VM's vCPUs at `now`: a device
    /// timer, a line that changed, or an I/O APIC message to route. Cheap,
    /// so the run loop asks before every entry (together with the vCPU's
    /// own [`attention_at`]).
    #[inline]
    pub fn needs_attention(&self, now: u64) -> bool {
        self.pending || self.deadline <= now
    }

    /// [`VmDevices::needs_attention`] as a time: 0 when something is
    /// pending now, else the earliest device deadline (`u64::MAX`: none).
    #[inline]
    pub fn attention_tsc(&self) -> u64 {
        if self.pending {
            0
        } else {
            self.deadline
        }
    }

    /// Runs the timers due at `now` and hands changed lines to the 8259
    /// pair and the I/O APIC.
    pub fn poll(&mut self, now: u64, sink: &mut dyn FnMut(&str)) {
        self.bus.run_timers(now, &mut self.irqs, sink);
        if self.irqs.has_changes() {
            let mut copy = self.irqs;
            match self.pic.and_then(|id| self.bus.get_mut::<DualPic>(id)) {
                Some(pic) => self.irqs.forward_to(pic),
                // (Never: every VM has the pair.) The changes are seen.
                None => self
                    .irqs
                    .forward_to(&mut devices::irq::SimpleIrqChip::new()),
            }
            if let Some(io) = self.ioapic.and_then(|id| self.bus.get_mut::<IoApic>(id)) {
                copy.forward_to(&mut IoApicPins(io));
            }
            self.sync_pic();
            self.sync_ioapic();
        }
        self.refresh();
    }

    /// Sends the I/O APIC's messages to the local APICs they name: what is
    /// for vCPU `own` goes straight into its `lapic`, the rest is posted
    /// on the VM's [`ApicBus`] (whose notification mask the run reads).
    /// A message for a destination nobody has is dropped, as on a bus
    /// with nobody listening.
    pub fn route_messages(&mut self, own: u32, lapic: &mut LocalApic) {
        // Every change that can queue a message updates the flag
        // (`sync_ioapic`); with none queued there is nothing to route.
        if !self.ioapic_pending {
            return;
        }
        let apics = Arc::clone(&self.apics);
        let Some(io) = self.ioapic_mut() else {
            return;
        };
        while let Some(msg) = io.take_message() {
            apics.send(
                Some(own),
                Some(&mut *lapic),
                IpiShorthand::Destination,
                &msg,
            );
        }
        self.ioapic_pending = false;
        self.refresh();
    }

    /// A level-triggered interrupt's EOI at a local APIC reaches the I/O
    /// APIC (SDM Vol. 3A, 11.8.5).
    pub fn ioapic_eoi(&mut self, vector: u8) {
        if let Some(io) = self.ioapic_mut() {
            io.eoi(vector);
        }
        self.sync_ioapic();
        self.refresh();
    }

    /// The INTA cycle: the 8259's vector.
    pub fn pic_acknowledge(&mut self) -> Option<u8> {
        let vector = self.pic_mut().map(|pic| pic.inta());
        self.sync_pic();
        self.refresh();
        vector
    }
}

/// Whether `port` is one of the 8259 pair's (with the ELCR).
#[inline]
fn is_pic_port(port: u16) -> bool {
    matches!(port, 0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1)
}

/// One vCPU's view of guest-physical MMIO: its own local APIC's page in
/// front of the VM's bus.
pub struct VcpuMmio<'a> {
    /// The vCPU's index in its VM.
    pub index: u32,
    /// The vCPU's local APIC.
    pub lapic: &'a mut LocalApic,
    /// The VM's devices.
    pub devices: &'a mut VmDevices,
}

/// Whether `gpa` is on the page of `lapic`'s registers: at its
/// IA32_APIC_BASE base, while it is enabled. Each vCPU has its own (a
/// guest may move or disable one APIC and not the others). The page is not
/// guest RAM, so EPT maps nothing there and every access exits; a
/// disabled APIC's page, or the page an APIC left, is then whatever the
/// VM's bus has there, usually nothing (the guest is stopped with a
/// memory-fault report, as for any access nothing claims). An APIC moved
/// onto guest RAM is not reachable: the RAM is mapped and answers.
#[inline]
pub fn is_lapic_page(lapic: &LocalApic, gpa: GuestPhysAddr) -> bool {
    lapic.decodes(gpa.as_u64())
}

impl MmioSpace for VcpuMmio<'_> {
    fn mmio_read(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u64> {
        if !is_lapic_page(self.lapic, gpa) {
            return self.devices.mmio_read(gpa, size, now, sink);
        }
        // 32-bit registers on 16-byte boundaries (SDM Vol. 3A, 11.4.1): a
        // narrower read takes its bytes of the aligned dword.
        let offset = (gpa.as_u64() & 0xFFF) as u32;
        let value = u64::from(self.lapic.read(offset & !3, now));
        let shift = (offset & 3).saturating_mul(8);
        Some(value.checked_shr(shift).unwrap_or(0))
    }

    fn mmio_write(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        value: u64,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> bool {
        if !is_lapic_page(self.lapic, gpa) {
            return self.devices.mmio_write(gpa, size, value, now, sink);
        }
        // Only whole aligned dwords write a register (narrower writes are
        // undefined on hardware and dropped here).
        let offset = (gpa.as_u64() & 0xFFF) as u32;
        if size < 4 || offset & 3 != 0 {
            return true;
        }
        let effect = self.lapic.write(offset, value as u32, now);
        // LDR, DFR and SVR writes move what senders match against.
        self.devices.apics.publish(self.index, self.lapic);
        match effect {
            ApicEffect::None => {}
            ApicEffect::Eoi {
                vector,
                level_triggered,
            } => {
                if level_triggered {
                    self.devices.ioapic_eoi(vector);
                }
            }
            ApicEffect::Ipi(ipi) => {
                self.devices.apics.send(
                    Some(self.index),
                    Some(&mut *self.lapic),
                    ipi.shorthand,
                    &ipi.message,
                );
            }
        }
        true
    }
}

/// When the vCPU with `lapic` next needs the interrupt path: 0 when it
/// has an interrupt it could be given now (its local APIC's, or the
/// 8259's through LINT0), else its APIC timer's deadline, else
/// `u64::MAX`. The run loop compares it with the clock before each entry
/// and when the vCPU halts.
pub fn attention_at(index: u32, lapic: &LocalApic, vm: &VmDevices) -> u64 {
    attention_with(index, lapic, vm.pic_output())
}

/// [`attention_at`] with the 8259 pair's output `pic_output` as the
/// caller knows it (the run publishes it whenever the devices are
/// unlocked), for a caller without the devices.
pub fn attention_with(index: u32, lapic: &LocalApic, pic_output: bool) -> u64 {
    if lapic.pending_vector().is_some() || (takes_extint(index, lapic) && pic_output) {
        return 0;
    }
    lapic.timer_deadline().unwrap_or(u64::MAX)
}

/// Whether vCPU `index` takes the 8259's interrupts: only the boot vCPU
/// is wired to the 8259's output (the others' LINT0 pins are not, as on a
/// PC, where firmware sets virtual-wire mode on the bootstrap processor
/// alone), so two vCPUs never both acknowledge one interrupt.
#[inline]
pub fn takes_extint(index: u32, lapic: &LocalApic) -> bool {
    index == 0 && lapic.wants_extint()
}

/// Before an entry: routes what the devices raised to the vCPU's local
/// APIC, runs its timer, and injects the interrupt the vCPU can take now
/// (RFLAGS.IF set, no STI or MOV SS shadow, no other event already being
/// delivered): the 8259's through an INTA cycle where LINT0 passes ExtINT,
/// else the local APIC's highest. With one held but the vCPU closed, asks
/// for an exit when it opens (interrupt window). True when it injected.
pub fn deliver_interrupt<B: VcpuAccess>(
    vcpu: &mut B,
    index: u32,
    lapic: &mut LocalApic,
    vm: &mut VmDevices,
    now: u64,
    sink: &mut dyn FnMut(&str),
) -> Result<bool, B::Error> {
    vm.apics.collect(index, lapic);
    vm.poll(now, sink);
    vm.route_messages(index, lapic);
    let pic_output = vm.pic_output();
    pic_output_for_boot_vcpu(index, pic_output, &vm.apics);
    deliver_from_lapic(vcpu, index, lapic, now, pic_output, || vm.pic_acknowledge())
}

/// Whether [`deliver_from_lapic`] can do all of [`deliver_interrupt`]
/// without the devices: none of them needs attention (no timer due, no
/// line changed, no I/O APIC message queued: the caller knows from what
/// the run published at their last unlock), and the vCPU would not take
/// the 8259's interrupt (whose acknowledge cycle needs the pair).
pub fn lapic_only(index: u32, lapic: &LocalApic, devices_quiet: bool, pic_output: bool) -> bool {
    devices_quiet && !(takes_extint(index, lapic) && pic_output)
}

/// Part of [`deliver_interrupt`] for vCPU `index`: when the 8259 pair's
/// output is up and this is not the boot vCPU (another vCPU's timers or
/// accesses raised it), the boot vCPU, the only one that takes it, is
/// told to look.
#[inline]
pub fn pic_output_for_boot_vcpu(index: u32, pic_output: bool, apics: &ApicBus) {
    if index != 0 && pic_output {
        apics.notify(1);
    }
}

/// The vCPU's part of [`deliver_interrupt`], after the devices' (their
/// timers run, the I/O APIC's messages routed, the boot vCPU told of the
/// 8259's output): its APIC's timer, an NMI, then the 8259's interrupt
/// through LINT0 (`pic_output`, taken with `pic_acknowledge`) or the
/// APIC's highest, injected if the vCPU can take it now, else an
/// interrupt window asked for.
pub fn deliver_from_lapic<B: VcpuAccess>(
    vcpu: &mut B,
    index: u32,
    lapic: &mut LocalApic,
    now: u64,
    pic_output: bool,
    pic_acknowledge: impl FnOnce() -> Option<u8>,
) -> Result<bool, B::Error> {
    lapic.run_timer(now);
    if lapic.take_nmi() {
        // Not while another event is being delivered, nor inside the
        // guest's NMI handler (an NMI injected then fails the VM entry):
        // it stays pending for the next chance.
        if !vcpu.event_pending()? && !vcpu.nmi_blocked()? {
            vcpu.inject(Event::Nmi)?;
            return Ok(true);
        }
        lapic.accept_nmi();
    }
    let extint = takes_extint(index, lapic) && pic_output;
    let pending = if extint { None } else { lapic.pending_vector() };
    if !extint && pending.is_none() {
        return Ok(false);
    }
    let open =
        vcpu.rflags()? & RFLAGS_IF != 0 && !vcpu.interrupt_shadow()? && !vcpu.event_pending()?;
    if !open {
        vcpu.request_interrupt_window(true)?;
        return Ok(false);
    }
    let vector = if extint {
        pic_acknowledge()
    } else {
        // Nothing changed the APIC since `pending`: it is the one.
        pending.inspect(|&v| lapic.service(v))
    };
    match vector {
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
    use devices::lapic::LAPIC_BASE;

    fn sink(lines: &mut Vec<String>) -> impl FnMut(&str) + '_ {
        |line| lines.push(line.into())
    }

    const TSC_HZ: u64 = 1_000_000_000;

    fn pc() -> VmDevices {
        VmDevices::new(TSC_HZ, WallClock::default())
    }

    /// A local APIC as a vCPU starts with it: firmware's virtual wire.
    fn lapic() -> LocalApic {
        let mut lapic = LocalApic::new(0, TSC_HZ, 25_000_000);
        lapic.firmware_state();
        lapic
    }

    /// The 8259 pair set up as a PC BIOS does (vectors 0x20 and 0x28),
    /// every input masked but `unmasked`.
    fn program_pic(vm: &mut VmDevices, unmasked: u8) {
        let mut lines = Vec::new();
        for (port, value) in [
            (0x20, 0x11),
            (0xA0, 0x11),
            (0x21, 0x20),
            (0xA1, 0x28),
            (0x21, 0x04),
            (0xA1, 0x02),
            (0x21, 0x01),
            (0xA1, 0x01),
            (0x21, u32::from(!(1u8 << unmasked))),
            (0xA1, 0xFF),
        ] {
            assert!(vm.port_write(port, 1, value, 0, &mut sink(&mut lines)));
        }
    }

    /// With the devices needing nothing, the vCPU's own part of the
    /// delivery does what the whole of it does: the same injection or
    /// window, the same APIC state, the same next look.
    #[test]
    fn a_delivery_from_the_local_apic_alone_is_the_whole_delivery() {
        // (IF, an interrupt in the IRR, an NMI, the timer armed at 50)
        for (open, pending, nmi, timer) in [
            (true, Some(0x40), false, false),
            (false, Some(0x40), false, false),
            (true, None, false, false),
            (true, None, false, true),
            (true, Some(0x50), true, false),
        ] {
            let prepare = || {
                let vm = pc();
                let mut apic = lapic();
                if let Some(v) = pending {
                    apic.accept(v, false);
                }
                if nmi {
                    apic.accept_nmi();
                }
                if timer {
                    // TSC-deadline mode, vector 0x30, due at 50.
                    let _ = apic.write(0x320, 0x4_0030, 0);
                    apic.set_tsc_deadline(50, 0);
                }
                let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
                vcpu.rflags = if open { 0x202 } else { 0x2 };
                (vm, apic, vcpu)
            };
            let now = 100;
            let mut lines = Vec::new();
            let (mut vm, mut apic, mut vcpu) = prepare();
            let whole =
                deliver_interrupt(&mut vcpu, 0, &mut apic, &mut vm, now, &mut sink(&mut lines))
                    .unwrap();
            let (vm2, mut apic2, mut vcpu2) = prepare();
            assert!(lapic_only(
                0,
                &apic2,
                !vm2.needs_attention(now),
                vm2.pic_output()
            ));
            let own = deliver_from_lapic(&mut vcpu2, 0, &mut apic2, now, vm2.pic_output(), || {
                panic!("the 8259 is not asked")
            })
            .unwrap();
            let case = (open, pending, nmi, timer);
            assert_eq!(whole, own, "{case:?}");
            assert_eq!(vcpu.injected, vcpu2.injected, "{case:?}");
            assert_eq!(vcpu.window, vcpu2.window, "{case:?}");
            assert_eq!(apic.pending_vector(), apic2.pending_vector(), "{case:?}");
            assert_eq!(apic.ppr(), apic2.ppr(), "{case:?}");
            assert_eq!(
                attention_at(0, &apic, &vm),
                attention_with(0, &apic2, vm2.pic_output()),
                "{case:?}"
            );
        }
        // The 8259's interrupt, which the boot vCPU takes through LINT0
        // (ExtINT, as firmware leaves it), needs the pair: not the APIC's
        // alone, when the pair's output is up.
        let apic = lapic();
        assert!(takes_extint(0, &apic));
        assert!(!lapic_only(0, &apic, true, true));
        assert!(lapic_only(0, &apic, true, false));
        assert!(
            lapic_only(1, &apic, true, true),
            "only the boot vCPU takes it"
        );
        assert!(!lapic_only(0, &apic, false, false), "devices to look at");
    }

    #[test]
    fn the_test_timer_wakes_a_guest_through_the_8259_and_lint0() {
        let mut vm = pc();
        let mut apic = lapic();
        program_pic(&mut vm, 5);
        let mut lines = Vec::new();
        // Arm in 2 units (2 * 1024 ticks) at t = 1000.
        assert!(vm.port_write(0xE0, 4, 2, 1000, &mut sink(&mut lines)));
        assert_eq!(vm.next_deadline(), Some(1000 + 2048));
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x202;
        assert!(!vm.needs_attention(2000));
        assert!(!deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            2000,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert!(vm.needs_attention(3048));
        assert!(deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            3048,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0x25 }]);
        // In service at the 8259 until the guest's EOI: nothing more now.
        assert_eq!(attention_at(0, &apic, &vm), u64::MAX);
        assert!(!deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            3049,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert!(vm.port_write(0x20, 1, 0x20, 3050, &mut sink(&mut lines)));
        assert_eq!(vcpu.injected.len(), 1, "delivered once");
    }

    #[test]
    fn the_8259_reaches_only_the_boot_vcpu_and_another_vcpu_that_raises_it_says_so() {
        let mut vm = VmDevices::with_vcpus(TSC_HZ, WallClock::default(), 2);
        program_pic(&mut vm, 5);
        let mut lines = Vec::new();
        assert!(vm.port_write(0xE0, 4, 1, 0, &mut sink(&mut lines)));
        // vCPU 1, its APIC as INIT leaves it (LINT0 masked), runs the
        // due timer: it takes nothing, and asks for vCPU 0.
        let mut ap = LocalApic::new(1, TSC_HZ, 25_000_000);
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x202;
        assert!(
            !deliver_interrupt(&mut vcpu, 1, &mut ap, &mut vm, 5000, &mut sink(&mut lines))
                .unwrap()
        );
        assert!(vcpu.injected.is_empty());
        assert_eq!(attention_at(1, &ap, &vm), u64::MAX);
        assert_eq!(vm.apic_bus().take_notify(), 1, "vCPU 0 is told");
        // vCPU 0 takes it.
        let mut bsp = lapic();
        assert_eq!(attention_at(0, &bsp, &vm), 0);
        assert!(
            deliver_interrupt(&mut vcpu, 0, &mut bsp, &mut vm, 5001, &mut sink(&mut lines))
                .unwrap()
        );
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0x25 }]);
    }

    #[test]
    fn a_guest_with_interrupts_masked_gets_a_window_request_instead() {
        let mut vm = pc();
        let mut apic = lapic();
        program_pic(&mut vm, 5);
        let mut lines = Vec::new();
        vm.port_write(0xE0, 4, 1, 0, &mut sink(&mut lines));
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x2;
        assert!(!deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            5000,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert!(vcpu.window && vcpu.injected.is_empty());
        assert_eq!(attention_at(0, &apic, &vm), 0, "held for the vCPU");
        // IF set but in an STI shadow: still the window.
        vcpu.rflags = 0x202;
        vcpu.shadow = true;
        vcpu.window = false;
        assert!(!deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            5000,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert!(vcpu.window);
        // The window opens: delivered.
        vcpu.shadow = false;
        assert!(deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            5001,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0x25 }]);
    }

    /// Writes the I/O APIC register `index` through its MMIO window.
    fn ioapic_write(vm: &mut VmDevices, index: u32, value: u32) {
        let mut lines = Vec::new();
        let base = GuestPhysAddr::new(IOAPIC_BASE);
        assert!(vm.mmio_write(base, 4, u64::from(index), 0, &mut sink(&mut lines)));
        let window = GuestPhysAddr::new(IOAPIC_BASE + 0x10);
        assert!(vm.mmio_write(window, 4, u64::from(value), 0, &mut sink(&mut lines)));
    }

    #[test]
    fn the_pit_reaches_the_local_apic_through_the_io_apic_and_eoi_ends_it() {
        let mut vm = pc();
        let mut apic = lapic();
        let mut lines = Vec::new();
        // Pin 0: vector 0x30, fixed, physical destination APIC 0, edge.
        ioapic_write(&mut vm, 0x10, 0x30);
        ioapic_write(&mut vm, 0x11, 0);
        // PIT channel 0, mode 2, 1193 counts (about 1 ms).
        assert!(vm.port_write(0x43, 1, 0x34, 0, &mut sink(&mut lines)));
        assert!(vm.port_write(0x40, 1, 1193 & 0xFF, 0, &mut sink(&mut lines)));
        assert!(vm.port_write(0x40, 1, 1193 >> 8, 0, &mut sink(&mut lines)));
        let period = vm.next_deadline().unwrap();
        assert!((999_000..=1_001_000).contains(&period), "{period}");
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x202;
        assert!(deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            period,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0x30 }]);
        // The guest's EOI at its local APIC, through the vCPU's MMIO view.
        let mut space = VcpuMmio {
            index: 0,
            lapic: &mut apic,
            devices: &mut vm,
        };
        let eoi = GuestPhysAddr::new(LAPIC_BASE + 0xB0);
        assert!(MmioSpace::mmio_write(
            &mut space,
            eoi,
            4,
            0,
            period + 1,
            &mut sink(&mut lines)
        ));
        assert_eq!(attention_at(0, &apic, &vm), u64::MAX);
        // The next period brings the next one.
        let next = vm.next_deadline().unwrap();
        assert!(next > period);
        assert!(deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            next,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert_eq!(vcpu.injected.len(), 2);
    }

    #[test]
    fn the_local_apic_page_belongs_to_the_vcpu_and_reads_its_id_and_version() {
        let mut vm = pc();
        let mut apic = LocalApic::new(3, TSC_HZ, 25_000_000);
        let mut lines = Vec::new();
        let mut space = VcpuMmio {
            index: 0,
            lapic: &mut apic,
            devices: &mut vm,
        };
        let at = |off: u64| GuestPhysAddr::new(LAPIC_BASE + off);
        assert_eq!(
            MmioSpace::mmio_read(&mut space, at(0x20), 4, 0, &mut sink(&mut lines)),
            Some(3 << 24)
        );
        assert_eq!(
            MmioSpace::mmio_read(&mut space, at(0x30), 4, 0, &mut sink(&mut lines)),
            Some(0x0005_0014)
        );
        // A byte of the version register.
        assert_eq!(
            MmioSpace::mmio_read(&mut space, at(0x32), 1, 0, &mut sink(&mut lines))
                .map(|v| v & 0xFF),
            Some(5)
        );
        // The bus is not asked for the APIC page.
        assert!(!vm.is_mmio(at(0)));
        assert!(vm.is_mmio(GuestPhysAddr::new(IOAPIC_BASE)));
    }

    #[test]
    fn the_apic_timer_sets_when_the_vcpu_needs_attention() {
        let mut vm = pc();
        let mut apic = lapic();
        // LVT timer: TSC-deadline mode (bits 18:17 = 10), vector 0xEC.
        let _ = apic.write(0x320, (2 << 17) | 0xEC, 0);
        apic.set_tsc_deadline(50_000, 0);
        assert_eq!(attention_at(0, &apic, &vm), 50_000);
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        vcpu.rflags = 0x202;
        let mut lines = Vec::new();
        assert!(!deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            49_999,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert!(deliver_interrupt(
            &mut vcpu,
            0,
            &mut apic,
            &mut vm,
            50_000,
            &mut sink(&mut lines)
        )
        .unwrap());
        assert_eq!(vcpu.injected, [Event::ExternalInterrupt { vector: 0xEC }]);
    }

    #[test]
    fn an_nmi_waits_while_the_guest_is_in_its_nmi_handler() {
        let mut vm = pc();
        let mut apic = lapic();
        let mut lines = Vec::new();
        let mut vcpu = FakeVcpu::long_mode(0x1000, 1);
        // An IPI with NMI delivery (mode 100b) to APIC ID 0, its own.
        let mut space = VcpuMmio {
            index: 0,
            lapic: &mut apic,
            devices: &mut vm,
        };
        let icr_high = GuestPhysAddr::new(LAPIC_BASE + 0x310);
        let icr_low = GuestPhysAddr::new(LAPIC_BASE + 0x300);
        assert!(MmioSpace::mmio_write(
            &mut space,
            icr_high,
            4,
            0,
            0,
            &mut sink(&mut lines)
        ));
        assert!(MmioSpace::mmio_write(
            &mut space,
            icr_low,
            4,
            4 << 8,
            0,
            &mut sink(&mut lines)
        ));
        // Inside the guest's NMI handler: not injected (the VM entry
        // would fail), kept.
        vcpu.nmi_blocked = true;
        assert!(
            !deliver_interrupt(&mut vcpu, 0, &mut apic, &mut vm, 1, &mut sink(&mut lines)).unwrap()
        );
        assert!(vcpu.injected.is_empty());
        // Its IRET ends the blocking: delivered.
        vcpu.nmi_blocked = false;
        assert!(
            deliver_interrupt(&mut vcpu, 0, &mut apic, &mut vm, 2, &mut sink(&mut lines)).unwrap()
        );
        assert_eq!(vcpu.injected, [Event::Nmi]);
    }

    #[test]
    fn resets_and_power_off_reach_the_vm_owner() {
        let mut lines = Vec::new();
        let mut vm = pc();
        assert!(vm.port_write(0xCF9, 1, 0x06, 0, &mut sink(&mut lines)));
        assert_eq!(vm.take_request(), Some(VmRequest::Reset));
        assert_eq!(vm.take_request(), None);
        assert!(vm.port_write(0x64, 1, 0xFE, 0, &mut sink(&mut lines)));
        assert_eq!(vm.take_request(), Some(VmRequest::Reset));
        // ACPI S5: SLP_TYP 5 with SLP_EN.
        assert!(vm.port_write(0x604, 2, (5 << 10) | (1 << 13), 0, &mut sink(&mut lines)));
        assert_eq!(vm.take_request(), Some(VmRequest::PowerOff));
    }

    #[test]
    fn print_and_com1_output_share_one_line() {
        let mut vm = pc();
        let mut lines = Vec::new();
        vm.port_write(0x3F8, 1, u32::from(b'a'), 0, &mut sink(&mut lines));
        vm.print(b"bc\n", &mut sink(&mut lines));
        assert_eq!(lines, ["abc"]);
        vm.print(b"partial", &mut sink(&mut lines));
        vm.flush(&mut sink(&mut lines));
        assert_eq!(lines, ["abc", "partial"]);
    }

    #[test]
    fn raw_com1_output_is_taken_as_bytes_and_prints_stay_lines() {
        let mut vm = pc();
        vm.set_com1_raw(true);
        let mut lines = Vec::new();
        assert!(!vm.console_output_waiting(), "nothing written yet");
        for &b in b"$ ls\r\n" {
            vm.port_write(0x3F8, 1, u32::from(b), 0, &mut sink(&mut lines));
        }
        assert!(vm.console_output_waiting());
        vm.print(b"hyper\n", &mut sink(&mut lines));
        assert_eq!(lines, ["hyper"]);
        let mut raw = Vec::new();
        vm.take_console_output(&mut |b| raw.extend_from_slice(b));
        assert_eq!(raw, b"$ ls\r\n");
        assert!(!vm.console_output_waiting(), "taken");
        vm.take_console_output(&mut |_| panic!("nothing is left"));
        assert_eq!(vm.console_output_dropped(), 0);
        vm.com1_transmit(b"queued", 0, &mut sink(&mut lines));
        assert!(vm.console_output_waiting(), "queued bytes written");
        // The line status a read would give, while the read changes
        // nothing: THR empty, then data ready with input, then empty again
        // once the byte is read.
        assert_eq!(vm.com1_quiet_lsr(), Some(0x60));
        assert_eq!(vm.feed_com1(b"k", 0, &mut sink(&mut lines)), 1);
        assert_eq!(vm.com1_quiet_lsr(), Some(0x61));
        assert_eq!(
            vm.port_read(0x3F8, 1, 0, &mut sink(&mut lines)),
            Some(u32::from(b'k'))
        );
        assert_eq!(vm.com1_quiet_lsr(), Some(0x60));
        // An overrun (FIFOs off: a second byte before the first is read)
        // is cleared by the read: that one goes through the bus.
        vm.port_write(0x3FC, 1, 0x10, 0, &mut sink(&mut lines));
        vm.port_write(0x3F8, 1, 1, 0, &mut sink(&mut lines));
        vm.port_write(0x3F8, 1, 2, 0, &mut sink(&mut lines));
        assert_eq!(vm.com1_quiet_lsr(), None);
        assert_eq!(vm.port_read(0x3FD, 1, 0, &mut sink(&mut lines)), Some(0x63));
        assert_eq!(vm.com1_quiet_lsr(), Some(0x61));
    }
}
