//! The 16550 as a bus [`Device`]: a [`Uart16550`] at a base port, its
//! interrupt line, and the [`LineBuffer`] that turns what the guest
//! transmits into console lines.
//!
//! Every register is one byte wide, so a wider access is taken byte by
//! byte at consecutive offsets, lowest first, as the ISA bus splits it for
//! a real 16550 (bytes past the eighth register read 0xFF and are dropped).
//! After every access, and after console input, the interrupt line is set
//! to [`Uart16550::interrupt_pending`], which already holds the PC's
//! gating: the interrupt reaches the line only while MCR.OUT2 is set and
//! the UART is not in loopback.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv};
use crate::console::LineBuffer;
use crate::uart::{Uart16550, COM1_BASE};

/// COM1's interrupt line on PC-compatible machines (ISA IRQ 4).
pub const COM1_IRQ: u8 = 4;

/// The number of I/O ports a 16550 decodes: its eight registers.
pub const UART_PORTS: u16 = 8;

/// A 16550 UART on the bus, with its console line buffer.
#[derive(Clone, Debug)]
pub struct UartDevice {
    uart: Uart16550,
    console: LineBuffer,
    base: u16,
    irq: u8,
}

impl Default for UartDevice {
    fn default() -> Self {
        Self::com1()
    }
}

impl UartDevice {
    /// A UART in its power-on state whose registers start at port `base`,
    /// driving interrupt line `irq`.
    pub const fn new(base: u16, irq: u8) -> Self {
        Self {
            uart: Uart16550::new(),
            console: LineBuffer::new(),
            base,
            irq,
        }
    }

    /// COM1: ports 0x3F8..=0x3FF, line 4.
    pub const fn com1() -> Self {
        Self::new(COM1_BASE, COM1_IRQ)
    }

    /// The ports to claim on the bus: the base and the seven after it
    /// (fewer for a base within eight ports of 0xFFFF).
    pub const fn ports(&self) -> RangeInclusive<u16> {
        self.base..=self.base.saturating_add(UART_PORTS - 1)
    }

    /// The interrupt line the UART drives.
    pub const fn irq(&self) -> u8 {
        self.irq
    }

    /// The register state, to inspect.
    pub const fn uart(&self) -> &Uart16550 {
        &self.uart
    }

    /// Queues `byte` as console input for the guest and updates the
    /// interrupt line. False when the byte was dropped (see
    /// [`Uart16550::receive`]).
    pub fn receive(&mut self, byte: u8, env: &mut DeviceEnv<'_>) -> bool {
        let taken = self.uart.receive(byte);
        self.update_irq(env);
        taken
    }

    /// Passes `bytes` to the console line buffer as if the guest had
    /// written them to the transmitter one by one (the print hypercall's
    /// text, which must join the same lines as the guest's COM1 output).
    pub fn print(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) {
        for &b in bytes {
            self.console.push(b, &mut *sink);
        }
    }

    fn update_irq(&self, env: &mut DeviceEnv<'_>) {
        env.set_irq(self.irq, self.uart.interrupt_pending());
    }

    /// The register offset of byte `i` of an access at `port`.
    const fn offset(&self, port: u16, i: usize) -> u16 {
        // `i` < 4: the cast is exact.
        port.wrapping_sub(self.base).wrapping_add(i as u16)
    }
}

impl Device for UartDevice {
    fn name(&self) -> &'static str {
        "uart"
    }

    fn port_read(&mut self, port: u16, size: u8, env: &mut DeviceEnv<'_>) -> u32 {
        let mut bytes = [0xFF; 4];
        for (i, byte) in bytes.iter_mut().take(usize::from(size)).enumerate() {
            *byte = self.uart.read(self.offset(port, i));
        }
        self.update_irq(env);
        u32::from_le_bytes(bytes)
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32, env: &mut DeviceEnv<'_>) {
        for (i, &byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            if let Some(out) = self.uart.write(self.offset(port, i), byte) {
                self.console.push(out, env.sink());
            }
        }
        self.update_irq(env);
    }

    fn flush(&mut self, sink: &mut dyn FnMut(&str)) {
        self.console.flush(sink);
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
    use crate::irq::{InterruptController, IrqLines, SimpleIrqChip};
    use alloc::boxed::Box;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    use proptest::prelude::*;

    const THR: u16 = 0x3F8;
    const IER: u16 = 0x3F9;
    const IIR: u16 = 0x3FA;
    const MCR: u16 = 0x3FC;
    const LSR: u16 = 0x3FD;

    /// A bus with COM1 on it, the VM's lines and the console lines.
    struct Vm {
        bus: Bus,
        uart: crate::bus::DeviceId,
        irqs: IrqLines,
        lines: Vec<String>,
    }

    impl Vm {
        fn new() -> Self {
            let mut bus = Bus::new();
            let device = UartDevice::com1();
            let ports = device.ports();
            let uart = bus.add(Box::new(device), &[ports], &[]).unwrap();
            Self {
                bus,
                uart,
                irqs: IrqLines::new(),
                lines: Vec::new(),
            }
        }
        fn out(&mut self, port: u16, size: u8, value: u32) {
            let lines = &mut self.lines;
            let mut sink = |line: &str| lines.push(line.to_string());
            assert!(self
                .bus
                .port_write(port, size, value, 0, &mut self.irqs, &mut sink));
        }
        fn inb(&mut self, port: u16) -> u8 {
            let lines = &mut self.lines;
            let mut sink = |line: &str| lines.push(line.to_string());
            self.bus
                .port_read(port, 1, 0, &mut self.irqs, &mut sink)
                .unwrap() as u8
        }
        fn receive(&mut self, byte: u8) -> bool {
            let lines = &mut self.lines;
            let mut sink = |line: &str| lines.push(line.to_string());
            self.bus
                .with_device(
                    self.uart,
                    0,
                    &mut self.irqs,
                    &mut sink,
                    |uart: &mut UartDevice, env| uart.receive(byte, env),
                )
                .unwrap()
        }
        fn flush(&mut self) {
            let lines = &mut self.lines;
            self.bus
                .flush(&mut |line: &str| lines.push(line.to_string()));
        }
    }

    #[test]
    fn transmitted_bytes_become_console_lines() {
        let mut vm = Vm::new();
        for &byte in b"hello\r\nwor" {
            vm.out(THR, 1, u32::from(byte));
        }
        assert_eq!(vm.lines, ["hello"]);
        vm.flush();
        assert_eq!(vm.lines, ["hello", "wor"], "flush emits the partial line");
        assert_eq!(vm.inb(LSR), 0x60, "transmitter always empty");
    }

    #[test]
    fn a_wide_out_is_taken_byte_by_byte() {
        let mut vm = Vm::new();
        // OUT DX, AX at 0x3F8: 'a' to THR, 0 to IER.
        vm.out(THR, 2, u32::from_le_bytes([b'a', 0, 0, 0]));
        // OUT DX, EAX at 0x3FF: the scratch register gets the low byte; the
        // rest is past the UART and dropped.
        vm.out(0x3FF, 4, 0x5A);
        assert_eq!(vm.inb(0x3FF), 0x5A);
        vm.out(THR, 1, u32::from(b'\n'));
        assert_eq!(vm.lines, ["a"]);
    }

    #[test]
    fn the_line_follows_the_uart_interrupt_gated_by_out2() {
        let mut vm = Vm::new();
        vm.out(IER, 1, 0x01); // received-data interrupt
        assert!(vm.receive(b'k'));
        assert!(!vm.irqs.level(COM1_IRQ), "OUT2 clear: the line stays low");
        vm.out(MCR, 1, 0x08);
        assert!(vm.irqs.level(COM1_IRQ), "OUT2 set: the line is up");

        let mut chip = SimpleIrqChip::new();
        vm.irqs.forward_to(&mut chip);
        assert_eq!(chip.acknowledge(), Some(0x20 + COM1_IRQ));

        assert_eq!(vm.inb(IIR), 0x04);
        assert_eq!(vm.inb(THR), b'k');
        assert!(!vm.irqs.level(COM1_IRQ), "data read: the line drops");
    }

    #[test]
    fn console_input_raises_the_line_when_enabled() {
        let mut vm = Vm::new();
        vm.out(MCR, 1, 0x08);
        vm.out(IER, 1, 0x01);
        assert!(!vm.irqs.level(COM1_IRQ));
        assert!(vm.receive(b'x'));
        assert!(vm.irqs.level(COM1_IRQ));
        assert!(!vm.receive(b'y'), "holding register full: overrun");
    }

    #[test]
    fn a_uart_at_another_base_and_line() {
        let mut bus = Bus::new();
        let device = UartDevice::new(0x2F8, 3);
        assert_eq!(device.ports(), 0x2F8..=0x2FF);
        assert_eq!(device.irq(), 3);
        bus.add(Box::new(device), &[0x2F8..=0x2FF], &[]).unwrap();
        let mut irqs = IrqLines::new();
        let mut sink = |_: &str| {};
        assert!(bus.port_write(0x2FC, 1, 0x08, 0, &mut irqs, &mut sink));
        assert!(bus.port_write(0x2F9, 1, 0x02, 0, &mut irqs, &mut sink));
        assert!(irqs.level(3), "THRE raised on enabling it");
        assert_eq!(bus.port_read(0x3F8, 1, 0, &mut irqs, &mut sink), None);
        assert_eq!(
            UartDevice::new(0xFFFC, 4).ports(),
            0xFFFC..=0xFFFF,
            "cut at the last port"
        );
    }

    proptest! {
        /// Random port accesses of any size around COM1, and console
        /// input, never panic; the line always agrees with the model and
        /// every console line is bounded.
        #[test]
        fn random_accesses_never_panic(
            ops in prop::collection::vec(
                (0u8..3, 0x3F0u16..0x408, prop::sample::select(vec![1u8, 2, 4]), any::<u32>()),
                0..300,
            )
        ) {
            let mut vm = Vm::new();
            for (kind, port, size, value) in ops {
                let lines = &mut vm.lines;
                let mut sink = |line: &str| lines.push(line.to_string());
                match kind {
                    0 => {
                        vm.bus.port_read(port, size, 0, &mut vm.irqs, &mut sink);
                    }
                    1 => {
                        vm.bus.port_write(port, size, value, 0, &mut vm.irqs, &mut sink);
                    }
                    _ => {
                        let _ = vm.receive(value as u8);
                    }
                }
                let pending = vm.bus.get_mut::<UartDevice>(vm.uart).unwrap().uart().interrupt_pending();
                prop_assert_eq!(vm.irqs.level(COM1_IRQ), pending);
            }
            vm.flush();
            prop_assert!(vm.lines.iter().all(|line| line.len() <= crate::console::LINE_MAX));
        }
    }
}
