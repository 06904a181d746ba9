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
//! the UART is not in loopback. The line is a level: it drops when the
//! guest clears the last source (reading IIR for THRE, RBR, LSR or MSR)
//! and rises again with the next one (a THR write, console input), which
//! gives an edge-triggered controller a fresh edge for every new event,
//! as Linux's 8250 interrupt handler expects.
//!
//! Console input goes in with [`UartDevice::receive`], paced by
//! [`UartDevice::rx_space`]: the console keeps what the receiver cannot
//! take yet, so no input is lost while the guest is slow to read.
//!
//! In raw mode ([`UartDevice::set_raw`]) what the guest transmits is kept
//! byte for byte instead (a shell's echo, its prompt, escape sequences):
//! in a fixed-size queue in the device, which the caller empties with
//! [`UartDevice::take_output`] after each access that can have filled it.
//! A full queue drops further bytes and counts them; nothing is allocated
//! per access. Text the guest prints by hypercall still goes through the
//! line buffer.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv};
use crate::console::LineBuffer;
use crate::uart::{Uart16550, COM1_BASE};

/// COM1's interrupt line on PC-compatible machines (ISA IRQ 4).
pub const COM1_IRQ: u8 = 4;

/// The number of I/O ports a 16550 decodes: its eight registers.
pub const UART_PORTS: u16 = 8;

/// How many transmitted bytes raw mode keeps until they are taken: far
/// more than one exit can write (a REP OUTSB is split into chunks
/// smaller than this).
pub const RAW_OUTPUT_CAPACITY: usize = 4096;

/// Transmitted bytes waiting to be taken, in raw mode.
#[derive(Clone, Debug)]
struct RawOutput {
    bytes: [u8; RAW_OUTPUT_CAPACITY],
    len: usize,
    dropped: u64,
}

impl RawOutput {
    const fn new() -> Self {
        Self {
            bytes: [0; RAW_OUTPUT_CAPACITY],
            len: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        match self.bytes.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len = self.len.saturating_add(1);
            }
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }
}

/// A 16550 UART on the bus, with its console line buffer.
#[derive(Clone, Debug)]
pub struct UartDevice {
    uart: Uart16550,
    console: LineBuffer,
    /// `Some` in raw mode: transmitted bytes go here, not to `console`.
    raw: Option<RawOutput>,
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
            raw: None,
            base,
            irq,
        }
    }

    /// Turns raw mode on or off (it starts off). In raw mode transmitted
    /// bytes are queued for [`take_output`](Self::take_output) instead of
    /// becoming console lines; turning it off drops what is queued.
    pub fn set_raw(&mut self, raw: bool) {
        match (raw, self.raw.is_some()) {
            (true, false) => self.raw = Some(RawOutput::new()),
            (false, true) => self.raw = None,
            _ => {}
        }
    }

    /// Whether raw mode is on.
    pub const fn is_raw(&self) -> bool {
        self.raw.is_some()
    }

    /// Hands the transmitted bytes queued in raw mode, oldest first, to
    /// `out` (not called when there are none) and empties the queue.
    pub fn take_output(&mut self, out: &mut dyn FnMut(&[u8])) {
        if let Some(raw) = self.raw.as_mut() {
            if let Some(bytes) = raw.bytes.get(..raw.len).filter(|b| !b.is_empty()) {
                out(bytes);
            }
            raw.len = 0;
        }
    }

    /// Sends `bytes` as writes to THR would while the UART transmits
    /// plainly ([`Uart16550::transmits_plainly`]): such a write changes
    /// no register and raises nothing, so only the bytes go out, to the
    /// raw queue or the console line. False, with nothing sent, when the
    /// UART does not transmit plainly: the caller writes THR instead.
    pub fn send_plain(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) -> bool {
        if !self.uart.transmits_plainly() {
            return false;
        }
        match self.raw.as_mut() {
            Some(raw) => {
                for &b in bytes {
                    raw.push(b);
                }
            }
            None => {
                for &b in bytes {
                    self.console.push(b, &mut *sink);
                }
            }
        }
        true
    }

    /// Transmitted bytes raw mode dropped because its queue was full.
    pub const fn output_dropped(&self) -> u64 {
        match &self.raw {
            Some(raw) => raw.dropped,
            None => 0,
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

    /// Queues console input for the guest, paced to what the guest reads,
    /// and updates the interrupt line: takes bytes from the front of
    /// `bytes` while the receiver has room (see [`rx_space`](Self::rx_space))
    /// and returns how many it took. A full receiver takes no more and
    /// nothing overruns: the caller keeps the rest and offers them again
    /// after the guest has read (after a port access, or before the next
    /// entry). In loopback mode nothing is taken. See
    /// [`Uart16550::receive`].
    ///
    /// The bus owns the device, so the console reaches it with
    /// [`Bus::with_device`](crate::bus::Bus::with_device):
    ///
    /// ```
    /// use devices::bus::Bus;
    /// use devices::irq::IrqLines;
    /// use devices::serial::{UartDevice, COM1_IRQ};
    ///
    /// let mut bus = Bus::new();
    /// let com1 = UartDevice::com1();
    /// let ports = com1.ports();
    /// let com1 = bus.add(Box::new(com1), &[ports], &[]).unwrap();
    /// let mut irqs = IrqLines::new();
    /// let mut sink = |line: &str| println!("[guest] {line}");
    ///
    /// // The console's pending input; what COM1 takes is removed.
    /// let mut input: Vec<u8> = b"root\n".to_vec();
    /// let now = 0;
    /// let taken = bus
    ///     .with_device(com1, now, &mut irqs, &mut sink, |uart: &mut UartDevice, env| {
    ///         uart.receive(&input, env)
    ///     })
    ///     .unwrap_or(0);
    /// input.drain(..taken);
    /// assert_eq!(taken, 1, "FIFOs off: the holding register takes one byte");
    /// assert!(!irqs.level(COM1_IRQ), "the guest enabled no interrupt yet");
    /// ```
    pub fn receive(&mut self, bytes: &[u8], env: &mut DeviceEnv<'_>) -> usize {
        let taken = self.uart.receive(bytes);
        self.update_irq(env);
        taken
    }

    /// Queues `bytes` from a source that cannot wait, and updates the
    /// interrupt line: every byte arrives, and those that find the
    /// receiver full are lost to an overrun as on the chip (LSR.OE, the
    /// line-status interrupt). Returns how many were lost (in loopback
    /// mode, all of them: the serial input is cut off). Prefer
    /// [`receive`](Self::receive), which loses nothing; this is for a
    /// console that has given up keeping input for a guest that does not
    /// read, so that the guest still learns input was lost.
    pub fn receive_lossy(&mut self, bytes: &[u8], env: &mut DeviceEnv<'_>) -> usize {
        let lost = bytes
            .iter()
            .filter(|&&byte| !self.uart.receive_lossy(byte))
            .count();
        self.update_irq(env);
        lost
    }

    /// How many bytes [`receive`](Self::receive) would take now (0 while
    /// the receiver is full or in loopback mode). A console can feed
    /// exactly this much, so that it drops nothing.
    pub const fn rx_space(&self) -> usize {
        self.uart.rx_space()
    }

    /// Whether received data would interrupt the guest (it waits for
    /// console input that way).
    pub const fn receive_interrupt_enabled(&self) -> bool {
        self.uart.receive_interrupt_enabled()
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
                match self.raw.as_mut() {
                    Some(raw) => raw.push(out),
                    None => self.console.push(out, env.sink()),
                }
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
    use crate::uart::RX_FIFO_DEPTH;
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
        fn receive(&mut self, bytes: &[u8]) -> usize {
            let lines = &mut self.lines;
            let mut sink = |line: &str| lines.push(line.to_string());
            self.bus
                .with_device(
                    self.uart,
                    0,
                    &mut self.irqs,
                    &mut sink,
                    |uart: &mut UartDevice, env| uart.receive(bytes, env),
                )
                .unwrap()
        }
        fn receive_lossy(&mut self, bytes: &[u8]) -> usize {
            let lines = &mut self.lines;
            let mut sink = |line: &str| lines.push(line.to_string());
            self.bus
                .with_device(
                    self.uart,
                    0,
                    &mut self.irqs,
                    &mut sink,
                    |uart: &mut UartDevice, env| uart.receive_lossy(bytes, env),
                )
                .unwrap()
        }
        fn device(&mut self) -> &mut UartDevice {
            self.bus.get_mut::<UartDevice>(self.uart).unwrap()
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
    fn a_plain_send_is_what_thr_writes_would_send() {
        for raw in [false, true] {
            let mut written = Vm::new();
            let mut sent = Vm::new();
            written.device().set_raw(raw);
            sent.device().set_raw(raw);
            for &byte in b"one\r\ntw" {
                written.out(THR, 1, u32::from(byte));
            }
            let lines = &mut sent.lines;
            let uart = sent.bus.get_mut::<UartDevice>(sent.uart).unwrap();
            assert!(uart.send_plain(b"one\r\ntw", &mut |l| lines.push(l.to_string())));
            assert_eq!(written.lines, sent.lines);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            written
                .device()
                .take_output(&mut |x| a.extend_from_slice(x));
            sent.device().take_output(&mut |x| b.extend_from_slice(x));
            assert_eq!(a, b);
            assert_eq!(written.inb(IIR), sent.inb(IIR));
            assert_eq!(written.irqs.level(COM1_IRQ), sent.irqs.level(COM1_IRQ));
        }
        // Not plainly: with the THR-empty interrupt on, a THR write raises
        // it again, so nothing is sent this way.
        let mut vm = Vm::new();
        vm.out(IER, 1, 0x02);
        assert!(!vm.device().send_plain(b"x", &mut |_| {}));
        vm.flush();
        assert!(vm.lines.is_empty());
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
        assert_eq!(vm.receive(b"k"), 1);
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
        assert_eq!(vm.receive(b"xy"), 1, "the holding register takes one");
        assert!(vm.irqs.level(COM1_IRQ));
        assert_eq!(vm.device().rx_space(), 0);
        assert_eq!(vm.receive(b"y"), 0, "full: taken later, not overrun");
        assert_eq!(vm.inb(LSR), 0x61);
        assert_eq!(vm.inb(THR), b'x');
        assert!(!vm.irqs.level(COM1_IRQ));
        assert_eq!(vm.receive(b"y"), 1);
        assert!(vm.irqs.level(COM1_IRQ), "a fresh rise for the next byte");
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

    const FCR: u16 = 0x3FA;
    const MSR: u16 = 0x3FE;

    /// What Linux's 8250 interrupt handler does for one port: read IIR
    /// until it reports nothing; for each interrupt read LSR, take bytes
    /// while LSR.DR, read MSR, and while LSR.THRE with ETBEI set send up to
    /// 16 bytes of `tx`, clearing ETBEI once `tx` is empty. Returns the
    /// bytes received.
    fn linux_handler(vm: &mut Vm, tx: &mut Vec<u8>) -> Vec<u8> {
        let mut rx = Vec::new();
        for _ in 0..512 {
            if vm.inb(IIR) & 0x01 != 0 {
                return rx;
            }
            let mut lsr = vm.inb(LSR);
            while lsr & 0x01 != 0 {
                rx.push(vm.inb(THR));
                lsr = vm.inb(LSR);
            }
            vm.inb(MSR);
            let ier = vm.inb(IER);
            if lsr & 0x20 != 0 && ier & 0x02 != 0 {
                for byte in tx.drain(..tx.len().min(16)) {
                    vm.out(THR, 1, u32::from(byte));
                }
                if tx.is_empty() {
                    vm.out(IER, 1, u32::from(ier & !0x02));
                }
            }
        }
        unreachable!("the interrupt never went away");
    }

    /// The port as Linux leaves it after start-up and set_termios: 8N1,
    /// DTR | RTS | OUT2, FIFOs on with trigger 8, RLSI | RDI enabled.
    fn linux_port() -> Vm {
        let mut vm = Vm::new();
        vm.out(0x3FB, 1, 0x03);
        vm.out(MCR, 1, 0x0B);
        vm.out(FCR, 1, 0x01);
        vm.out(FCR, 1, 0x81);
        vm.out(IER, 1, 0x05);
        vm
    }

    #[test]
    fn console_input_is_fed_paced_through_linux_style_interrupts() {
        let mut vm = linux_port();
        let mut chip = SimpleIrqChip::new();
        let input: Vec<u8> = (0..40).collect();
        let mut pending = &input[..];
        let mut got = Vec::new();
        let mut interrupts = 0;
        while !pending.is_empty() {
            let taken = vm.receive(pending);
            assert_eq!(taken, pending.len().min(RX_FIFO_DEPTH), "a FIFO at a time");
            pending = &pending[taken..];
            assert!(vm.irqs.level(COM1_IRQ));
            vm.irqs.forward_to(&mut chip);
            assert_eq!(chip.acknowledge(), Some(0x20 + COM1_IRQ), "a fresh edge");
            interrupts += 1;
            got.extend(linux_handler(&mut vm, &mut Vec::new()));
            assert!(!vm.irqs.level(COM1_IRQ), "the handler cleared it all");
        }
        assert_eq!(got, input, "nothing lost, in order");
        assert_eq!(interrupts, 3);
        assert_eq!(vm.inb(LSR), 0x60, "never an overrun");
    }

    #[test]
    fn a_few_bytes_below_the_trigger_level_interrupt_at_once() {
        let mut vm = linux_port();
        assert_eq!(vm.receive(b"ls\r"), 3);
        assert!(
            vm.irqs.level(COM1_IRQ),
            "no waiting for a character timeout"
        );
        assert_eq!(vm.inb(IIR), 0xCC, "reported as the timeout");
        assert_eq!(linux_handler(&mut vm, &mut Vec::new()), b"ls\r");
        assert!(!vm.irqs.level(COM1_IRQ));
    }

    #[test]
    fn linux_style_transmit_runs_on_thre_interrupts() {
        let mut vm = linux_port();
        let mut chip = SimpleIrqChip::new();
        vm.irqs.forward_to(&mut chip);
        let mut tx = b"Welcome to Ferrovisor\r\nlogin: ".to_vec();
        // start_tx: set ETBEI; the interrupt comes at once.
        vm.out(IER, 1, 0x07);
        assert!(vm.irqs.level(COM1_IRQ));
        vm.irqs.forward_to(&mut chip);
        assert_eq!(chip.acknowledge(), Some(0x20 + COM1_IRQ));
        linux_handler(&mut vm, &mut tx);
        assert!(tx.is_empty());
        assert_eq!(vm.inb(IER), 0x05, "ETBEI cleared when done");
        assert!(!vm.irqs.level(COM1_IRQ));
        vm.flush();
        assert_eq!(vm.lines, ["Welcome to Ferrovisor", "login: "]);
    }

    #[test]
    fn thre_drops_on_the_iir_read_and_rises_on_the_thr_write() {
        let mut vm = linux_port();
        vm.out(IER, 1, 0x02);
        let mut chip = SimpleIrqChip::new();
        vm.irqs.forward_to(&mut chip);
        assert_eq!(chip.acknowledge(), Some(0x20 + COM1_IRQ));
        assert_eq!(vm.inb(IIR), 0xC2);
        assert!(!vm.irqs.level(COM1_IRQ), "acknowledged by the IIR read");
        vm.out(THR, 1, u32::from(b'a'));
        assert!(vm.irqs.level(COM1_IRQ), "transmitted at once: THRE again");
        vm.irqs.forward_to(&mut chip);
        assert_eq!(chip.acknowledge(), Some(0x20 + COM1_IRQ), "a new edge");
    }

    #[test]
    fn loopback_keeps_the_line_low_and_the_console_out() {
        let mut vm = linux_port();
        vm.out(MCR, 1, 0x1B);
        assert_eq!(vm.device().rx_space(), 0);
        assert_eq!(vm.receive(b"abc"), 0, "the serial input is cut off");
        vm.out(THR, 1, u32::from(b'L'));
        assert_eq!(vm.inb(IIR), 0xCC, "the looped byte is reported in IIR");
        assert!(!vm.irqs.level(COM1_IRQ), "but OUT2 is forced off");
        assert_eq!(vm.inb(THR), b'L');
        vm.out(MCR, 1, 0x0B);
        assert_eq!(vm.receive(b"abc"), 3, "back in normal mode");
        assert!(vm.irqs.level(COM1_IRQ));
        vm.flush();
        assert!(vm.lines.is_empty(), "nothing looped left the UART");
    }

    #[test]
    fn lossy_input_overruns_a_full_fifo_and_tells_the_guest() {
        let mut vm = linux_port();
        let input: Vec<u8> = (0..20).collect();
        assert_eq!(vm.receive_lossy(&input), 4);
        assert!(vm.irqs.level(COM1_IRQ));
        assert_eq!(vm.inb(IIR), 0xC6, "line status");
        assert_eq!(vm.inb(LSR), 0x63, "DR and OE");
        assert_eq!(vm.inb(IIR), 0xC4, "then the 16 bytes kept");
        assert_eq!(linux_handler(&mut vm, &mut Vec::new()), &input[..16]);
    }

    /// Everything queued in raw mode, taken.
    fn take_raw(vm: &mut Vm) -> Vec<u8> {
        let mut out = Vec::new();
        vm.device().take_output(&mut |b| out.extend_from_slice(b));
        out
    }

    #[test]
    fn raw_mode_keeps_transmitted_bytes_as_they_are() {
        let mut vm = Vm::new();
        assert!(!vm.device().is_raw(), "off by default");
        vm.device().set_raw(true);
        for &byte in b"$ \x1b[1mls\r\n" {
            vm.out(THR, 1, u32::from(byte));
        }
        // A wide OUT is byte by byte, as in line mode.
        vm.out(THR, 2, u32::from_le_bytes([b'x', 0, 0, 0]));
        assert_eq!(take_raw(&mut vm), b"$ \x1b[1mls\r\nx");
        assert_eq!(take_raw(&mut vm), b"", "taking empties the queue");
        vm.flush();
        assert!(vm.lines.is_empty(), "nothing went to the line buffer");
        // Hypercall text still makes lines.
        let lines = &mut vm.lines;
        vm.bus
            .get_mut::<UartDevice>(vm.uart)
            .unwrap()
            .print(b"hello\n", &mut |l| lines.push(l.to_string()));
        assert_eq!(vm.lines, ["hello"]);
    }

    #[test]
    fn a_full_raw_queue_drops_and_counts() {
        let mut vm = Vm::new();
        vm.device().set_raw(true);
        for k in 0..RAW_OUTPUT_CAPACITY + 10 {
            vm.out(THR, 1, (k % 251) as u32);
        }
        assert_eq!(vm.device().output_dropped(), 10);
        let out = take_raw(&mut vm);
        assert_eq!(out.len(), RAW_OUTPUT_CAPACITY);
        assert_eq!(out[..3], [0, 1, 2], "the oldest bytes are kept");
        vm.out(THR, 1, u32::from(b'z'));
        assert_eq!(take_raw(&mut vm), b"z", "room again once taken");
        vm.device().set_raw(false);
        vm.out(THR, 1, u32::from(b'\n'));
        assert_eq!(vm.lines, [""], "line mode again");
    }

    proptest! {
        /// Random port accesses of any size around COM1, and console
        /// input, never panic; the line always agrees with the model and
        /// every console line is bounded.
        #[test]
        fn random_accesses_never_panic(
            ops in prop::collection::vec(
                (0u8..4, 0x3F0u16..0x408, prop::sample::select(vec![1u8, 2, 4]), any::<u32>()),
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
                    2 => {
                        let space = vm.device().rx_space();
                        let bytes = value.to_le_bytes();
                        let bytes = &bytes[..usize::from(size)];
                        prop_assert_eq!(vm.receive(bytes), bytes.len().min(space));
                    }
                    _ => {
                        vm.receive_lossy(&[value as u8]);
                    }
                }
                let level = vm.irqs.level(COM1_IRQ);
                let uart = vm.device().uart();
                prop_assert_eq!(level, uart.interrupt_pending());
                prop_assert_eq!(uart.line_status() & 1 != 0, uart.rx_pending() > 0);
            }
            vm.flush();
            prop_assert!(vm.lines.iter().all(|line| line.len() <= crate::console::LINE_MAX));
        }
    }
}
