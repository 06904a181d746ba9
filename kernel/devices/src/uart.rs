//! The virtual 16550A UART a guest sees as COM1: register state, the
//! receive FIFO and interrupt identification, as a pure state machine the
//! port-I/O exit handler drives. It performs no I/O itself: bytes the guest
//! transmits are returned to the caller, bytes for the guest are queued with
//! [`Uart16550::receive`].
//!
//! Behaviour follows the National Semiconductor (now TI) PC16550D
//! datasheet: its register descriptions and summary table, and its table
//! of interrupt control functions, cited below by register name. The
//! model has no notion of time, so a few things are simplified, each noted
//! where it happens: transmission is instant (THR and the transmitter are
//! always empty), there are no parity, framing or break errors, and a
//! received byte is reported at once rather than after the FIFO trigger
//! level or the character timeout.

use core::ops::RangeInclusive;

/// The guest-console line buffer lives in [`crate::console`]; it is
/// re-exported here because the exit handler takes both from this module.
pub use crate::console::{LineBuffer, LINE_MAX};

/// The first I/O port of COM1 on PC-compatible machines.
pub const COM1_BASE: u16 = 0x3F8;

/// Every I/O port of COM1: the eight registers of a 16550.
pub const COM1_PORTS: RangeInclusive<u16> = 0x3F8..=0x3FF;

/// Register offsets from the base port (PC16550D register summary). Offsets 0
/// and 1 are the divisor latch instead when LCR.DLAB is set.
mod reg {
    /// Receiver buffer (read) / transmitter holding (write); DLL with DLAB.
    pub const DATA: u16 = 0;
    /// Interrupt enable; DLM with DLAB.
    pub const IER: u16 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR_FCR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
    /// Modem status.
    pub const MSR: u16 = 6;
    /// Scratch.
    pub const SCR: u16 = 7;
}

/// IER bits (PC16550D, Interrupt Enable Register): only bits 0..=3 exist.
const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const IER_MS: u8 = 1 << 3;
const IER_MASK: u8 = 0x0F;

/// IIR values (PC16550D, Interrupt Identification Register and the interrupt
/// control functions table): bit 0 clear means "pending", bits 3:1 name the
/// highest-priority source, bits 7:6 mirror FCR bit 0.
const IIR_NONE: u8 = 0x01;
const IIR_RLS: u8 = 0x06;
const IIR_RDA: u8 = 0x04;
const IIR_THRE: u8 = 0x02;
const IIR_MS: u8 = 0x00;
const IIR_FIFO_ENABLED: u8 = 0xC0;

/// FCR bits (PC16550D, FIFO Control Register).
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;

/// LCR bit 7: divisor latch access (PC16550D, Line Control Register).
const LCR_DLAB: u8 = 1 << 7;

/// MCR bits (PC16550D, MODEM Control Register): only bits 0..=4 exist.
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const MCR_MASK: u8 = 0x1F;

/// LSR bits (PC16550D, Line Status Register).
const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

/// MSR bits (PC16550D, MODEM Status Register): deltas in 3:0, line states in
/// 7:4.
const MSR_DCTS: u8 = 1 << 0;
const MSR_DDSR: u8 = 1 << 1;
const MSR_TERI: u8 = 1 << 2;
const MSR_DDCD: u8 = 1 << 3;
const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;

/// The modem inputs outside loopback: CTS, DSR and DCD asserted, RI not,
/// as from a null-modem cable to a ready terminal, so that guests that wait
/// for CTS or DSR before transmitting go on.
const MSR_LINES_NORMAL: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// Depth of the receive FIFO in FIFO mode (PC16550D, Features).
pub const RX_FIFO_DEPTH: usize = 16;

/// The divisor after power-on: 12, which is 9600 baud from the PC's
/// 1.8432 MHz clock (115200 / 12). Guests program their own.
pub const DEFAULT_DIVISOR: u16 = 12;

/// The source [`Uart16550`] reports in IIR, highest priority first
/// (PC16550D, interrupt control functions table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    ReceiverLineStatus,
    ReceivedData,
    TransmitterEmpty,
    ModemStatus,
}

impl Source {
    const fn iir(self) -> u8 {
        match self {
            Self::ReceiverLineStatus => IIR_RLS,
            Self::ReceivedData => IIR_RDA,
            Self::TransmitterEmpty => IIR_THRE,
            Self::ModemStatus => IIR_MS,
        }
    }
}

/// One guest's 16550A UART.
///
/// Offsets passed to [`read`](Self::read) and [`write`](Self::write) are
/// the port minus the base (for COM1, minus [`COM1_BASE`]).
#[derive(Clone, Debug)]
pub struct Uart16550 {
    /// Received bytes not yet read: a ring of [`RX_FIFO_DEPTH`] bytes, of
    /// which only one is used while the FIFOs are disabled (the 16450-style
    /// holding register).
    rx: [u8; RX_FIFO_DEPTH],
    /// Index of the oldest received byte in `rx`.
    rx_head: usize,
    /// Number of received bytes in `rx`.
    rx_len: usize,
    /// The last byte read from RBR, returned again when RBR is read empty.
    last_rbr: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    /// LSR.OE: a received byte was lost since LSR was last read.
    overrun: bool,
    /// The THR-empty interrupt is pending (PC16550D, interrupt control
    /// functions table: set when THR empties, reset by reading IIR while it is
    /// the source or by writing THR).
    thre_pending: bool,
    /// MSR bits 3:0, cleared by reading MSR.
    msr_deltas: u8,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// A UART in its power-on state (PC16550D, UART reset configuration
    /// table): interrupts disabled, FIFOs off, nothing received, transmitter
    /// empty, divisor [`DEFAULT_DIVISOR`].
    pub const fn new() -> Self {
        Self {
            rx: [0; RX_FIFO_DEPTH],
            rx_head: 0,
            rx_len: 0,
            last_rbr: 0,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: DEFAULT_DIVISOR,
            fifo_enabled: false,
            overrun: false,
            thre_pending: false,
            msr_deltas: 0,
        }
    }

    /// Reads the register at `offset` (port minus base, 0..=7) as the guest
    /// would, with the side effects reads have on a 16550: reading RBR
    /// takes a byte, reading IIR acknowledges a THR-empty interrupt,
    /// reading LSR clears the overrun flag and reading MSR clears the delta
    /// bits. Any other offset reads 0xFF, as an unconnected port does.
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor.to_le_bytes()[0],
            reg::DATA => self.read_rbr(),
            reg::IER if self.dlab() => self.divisor.to_le_bytes()[1],
            reg::IER => self.ier,
            reg::IIR_FCR => self.read_iir(),
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let lsr = self.lsr();
                self.overrun = false;
                lsr
            }
            reg::MSR => {
                let msr = self.msr_lines() | self.msr_deltas;
                self.msr_deltas = 0;
                msr
            }
            reg::SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// Writes `value` to the register at `offset` (port minus base, 0..=7)
    /// as the guest would.
    ///
    /// Returns the byte to send to the outside world when the write is to THR
    /// (offset 0 with LCR.DLAB clear) outside loopback mode; `None` for every
    /// other write. In loopback mode THR bytes are received by this same UART
    /// instead (PC16550D, MODEM Control Register bit 4). Writes to LSR and MSR
    /// (factory test on real parts) and to offsets beyond 7 are ignored.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        match offset {
            reg::DATA if self.dlab() => {
                let [_, high] = self.divisor.to_le_bytes();
                self.divisor = u16::from_le_bytes([value, high]);
                None
            }
            reg::DATA => self.write_thr(value),
            reg::IER if self.dlab() => {
                let [low, _] = self.divisor.to_le_bytes();
                self.divisor = u16::from_le_bytes([low, value]);
                None
            }
            reg::IER => {
                let old = self.ier;
                self.ier = value & IER_MASK;
                // PC16550D, interrupt control functions table and IER: THR is
                // always empty here, so enabling the THRE interrupt raises it
                // at once; this is how drivers (Linux's 8250 among them) kick
                // transmission. Disabling it drops what was pending, so
                // re-enabling gives a fresh one.
                if old & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                } else if self.ier & IER_THRE == 0 {
                    self.thre_pending = false;
                }
                None
            }
            reg::IIR_FCR => {
                self.write_fcr(value);
                None
            }
            reg::LCR => {
                self.lcr = value;
                None
            }
            reg::MCR => {
                self.write_mcr(value);
                None
            }
            reg::SCR => {
                self.scr = value;
                None
            }
            _ => None,
        }
    }

    /// Queues `byte` as received from the outside (console input).
    ///
    /// Returns false when it cannot be taken: the receive FIFO (16 bytes with
    /// FIFOs enabled, else the single holding register) is full, in which case
    /// the byte is dropped and LSR.OE set; or the UART is in loopback mode,
    /// where the serial input is disconnected (PC16550D, MODEM Control
    /// Register), in which case the byte is dropped without an overrun.
    ///
    /// On a real 16450 an overrun overwrites the holding register; this
    /// model keeps the older byte in both modes, as the FIFO mode does, so
    /// that the caller's `false` always means "this byte was lost".
    pub fn receive(&mut self, byte: u8) -> bool {
        if self.loopback() {
            return false;
        }
        self.push_rx(byte)
    }

    /// Whether the UART drives its interrupt line now: some interrupt source is
    /// pending and enabled in IER, and MCR.OUT2 is set. On PC hardware OUT2
    /// gates the UART's interrupt onto the IRQ line, and in loopback mode OUT2
    /// is forced inactive (PC16550D, MODEM Control Register), so no interrupt
    /// reaches the CPU then even though IIR reports its source.
    pub fn interrupt_pending(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.source().is_some()
    }

    /// The baud-rate divisor the guest programmed (DLM:DLL); the baud rate
    /// is 115200 divided by it on PC hardware, and 0 means "no clock".
    pub const fn divisor(&self) -> u16 {
        self.divisor
    }

    /// Number of received bytes waiting for the guest to read.
    pub const fn rx_pending(&self) -> usize {
        self.rx_len
    }

    const fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    const fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// How many received bytes fit: the FIFO, or the holding register.
    const fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    fn push_rx(&mut self, byte: u8) -> bool {
        if self.rx_len >= self.rx_capacity() {
            self.overrun = true;
            return false;
        }
        // Both are below RX_FIFO_DEPTH: the sum cannot wrap.
        let slot = self.rx_head.wrapping_add(self.rx_len) % RX_FIFO_DEPTH;
        if let Some(cell) = self.rx.get_mut(slot) {
            *cell = byte;
            self.rx_len = self.rx_len.saturating_add(1);
            true
        } else {
            // Unreachable: `slot` is reduced modulo the array length.
            self.overrun = true;
            false
        }
    }

    fn read_rbr(&mut self) -> u8 {
        if self.rx_len == 0 {
            // Reading an empty RBR returns the old contents again.
            return self.last_rbr;
        }
        if let Some(&byte) = self.rx.get(self.rx_head) {
            self.last_rbr = byte;
        }
        self.rx_head = self.rx_head.wrapping_add(1) % RX_FIFO_DEPTH;
        self.rx_len = self.rx_len.saturating_sub(1);
        self.last_rbr
    }

    fn write_thr(&mut self, value: u8) -> Option<u8> {
        // Writing THR resets the THRE interrupt; the byte then leaves at once,
        // THR is empty again and the interrupt is pending again (PC16550D,
        // interrupt control functions table). A driver that sends from its THRE
        // handler therefore keeps being called until it stops writing.
        self.thre_pending = true;
        if self.loopback() {
            // PC16550D, MODEM Control Register bit 4: the transmitter output is
            // looped back to the receiver input, and nothing leaves the chip.
            self.push_rx(value);
            None
        } else {
            Some(value)
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        // PC16550D, FIFO Control Register: switching between FIFO and 16450
        // mode empties the FIFOs, and the other FCR bits are only acted on with
        // bit 0 set. Clearing the transmit FIFO has nothing to do here: it is
        // always empty.
        if enable != self.fifo_enabled || (enable && value & FCR_CLEAR_RX != 0) {
            self.clear_rx();
        }
        self.fifo_enabled = enable;
    }

    fn clear_rx(&mut self) {
        self.rx_head = 0;
        self.rx_len = 0;
    }

    fn write_mcr(&mut self, value: u8) {
        let before = self.msr_lines();
        self.mcr = value & MCR_MASK;
        let after = self.msr_lines();
        // PC16550D, MODEM Status Register: the delta bits record changes of the
        // modem inputs, which in loopback mode are the MCR outputs, and
        // entering or leaving loopback changes them too. TERI records only RI
        // going from asserted to not.
        let changed = before ^ after;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
    }

    /// MSR bits 7:4. In loopback mode DTR drives DSR, RTS drives CTS, OUT1
    /// drives RI and OUT2 drives DCD (PC16550D, MODEM Control Register).
    const fn msr_lines(&self) -> u8 {
        if !self.loopback() {
            return MSR_LINES_NORMAL;
        }
        let mut lines = 0;
        if self.mcr & MCR_DTR != 0 {
            lines |= MSR_DSR;
        }
        if self.mcr & MCR_RTS != 0 {
            lines |= MSR_CTS;
        }
        if self.mcr & MCR_OUT1 != 0 {
            lines |= MSR_RI;
        }
        if self.mcr & MCR_OUT2 != 0 {
            lines |= MSR_DCD;
        }
        lines
    }

    /// LSR without the read side effect. THRE and TEMT are always set as
    /// transmission is instant; there are never parity, framing or break
    /// errors, so bits 2..=4 and 7 stay clear.
    const fn lsr(&self) -> u8 {
        let mut lsr = LSR_THRE | LSR_TEMT;
        if self.rx_len > 0 {
            lsr |= LSR_DR;
        }
        if self.overrun {
            lsr |= LSR_OE;
        }
        lsr
    }

    /// The highest-priority enabled interrupt source, if any
    /// (PC16550D, interrupt control functions table).
    ///
    /// Received data is reported as soon as one byte waits, whatever the
    /// FIFO trigger level: a model without time cannot run the character
    /// timeout that would report a byte below the trigger level, and
    /// reporting early only makes the guest read sooner.
    const fn source(&self) -> Option<Source> {
        if self.ier & IER_RLS != 0 && self.overrun {
            Some(Source::ReceiverLineStatus)
        } else if self.ier & IER_RDA != 0 && self.rx_len > 0 {
            Some(Source::ReceivedData)
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(Source::TransmitterEmpty)
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            Some(Source::ModemStatus)
        } else {
            None
        }
    }

    fn read_iir(&mut self) -> u8 {
        let fifo = if self.fifo_enabled {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        match self.source() {
            None => IIR_NONE | fifo,
            Some(source) => {
                // Reading IIR while THRE is the reported source is what resets
                // it (PC16550D, interrupt control functions table); the other
                // sources are reset by reading LSR, RBR or MSR.
                if source == Source::TransmitterEmpty {
                    self.thre_pending = false;
                }
                source.iir() | fifo
            }
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

    use proptest::prelude::*;
    /// Sets LCR.DLAB, runs `f`, clears DLAB again (LCR = 0x03, 8N1).
    fn with_dlab(uart: &mut Uart16550, f: impl FnOnce(&mut Uart16550)) {
        assert_eq!(uart.write(reg::LCR, 0x83), None);
        f(uart);
        assert_eq!(uart.write(reg::LCR, 0x03), None);
    }

    #[test]
    fn com1_ports_are_the_eight_from_the_base() {
        assert_eq!(*COM1_PORTS.start(), COM1_BASE);
        assert_eq!(COM1_PORTS.count(), 8);
    }

    #[test]
    fn power_on_registers_read_as_the_datasheet_says() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.read(reg::DATA), 0, "RBR empty");
        assert_eq!(uart.read(reg::IER), 0);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01, "no interrupt, no FIFO");
        assert_eq!(uart.read(reg::LCR), 0);
        assert_eq!(uart.read(reg::MCR), 0);
        assert_eq!(uart.read(reg::LSR), 0x60, "THRE and TEMT only");
        assert_eq!(uart.read(reg::MSR), 0xB0, "CTS, DSR, DCD, no deltas");
        assert_eq!(uart.read(reg::SCR), 0);
        assert_eq!(uart.divisor(), DEFAULT_DIVISOR);
        assert!(!uart.interrupt_pending());
    }

    #[test]
    fn divisor_latch_round_trips_without_output_or_touching_ier() {
        let mut uart = Uart16550::new();
        uart.write(reg::IER, 0x05);
        with_dlab(&mut uart, |uart| {
            // 115200 baud: divisor 1; then a two-byte value to check DLM.
            assert_eq!(uart.write(reg::DATA, 0x01), None, "DLL write sends nothing");
            assert_eq!(uart.write(reg::IER, 0x00), None);
            assert_eq!(uart.read(reg::DATA), 0x01);
            assert_eq!(uart.read(reg::IER), 0x00);
            uart.write(reg::DATA, 0x34);
            uart.write(reg::IER, 0x12);
            assert_eq!(uart.read(reg::DATA), 0x34);
            assert_eq!(uart.read(reg::IER), 0x12);
        });
        assert_eq!(uart.divisor(), 0x1234);
        assert_eq!(uart.read(reg::IER), 0x05, "IER kept while DLAB was set");
        assert_eq!(uart.read(reg::LCR), 0x03);
    }

    #[test]
    fn thr_writes_go_out_only_with_dlab_clear() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.write(reg::DATA, b'A'), Some(b'A'));
        with_dlab(&mut uart, |uart| {
            assert_eq!(uart.write(reg::DATA, b'B'), None);
        });
        assert_eq!(uart.write(reg::DATA, b'C'), Some(b'C'));
        assert_eq!(uart.read(reg::LSR) & 0x60, 0x60, "transmitter still empty");
        assert_eq!(uart.read(reg::DATA), 0, "nothing was received");
    }

    #[test]
    fn loopback_sends_thr_to_rbr_and_msr_follows_mcr() {
        let mut uart = Uart16550::new();
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::MCR, 0x10);
        // Entering loopback dropped CTS, DSR and DCD: their deltas are set.
        assert_eq!(uart.read(reg::MSR), 0x0B);
        assert_eq!(uart.read(reg::MSR), 0x00, "deltas cleared by the read");
        // Linux's 8250 probe: RTS and OUT2 in loopback read back as CTS and
        // DCD.
        uart.write(reg::MCR, 0x1A);
        assert_eq!(uart.read(reg::MSR) & 0xF0, 0x90);
        uart.write(reg::MCR, 0x1F);
        assert_eq!(uart.read(reg::MSR), 0xF0 | 0x02, "DSR came up");
        uart.write(reg::MCR, 0x10);
        assert_eq!(uart.read(reg::MSR), 0x0F, "all dropped; RI trailing edge");

        assert_eq!(uart.write(reg::DATA, b'x'), None, "nothing leaves");
        assert_eq!(uart.write(reg::DATA, b'y'), None);
        assert_eq!(uart.read(reg::LSR) & 0x01, 0x01);
        assert_eq!(uart.read(reg::DATA), b'x');
        assert_eq!(uart.read(reg::DATA), b'y');
        assert_eq!(uart.read(reg::LSR) & 0x01, 0x00);

        assert!(!uart.receive(b'z'), "the serial input is disconnected");
        assert_eq!(uart.read(reg::LSR), 0x60, "and that is no overrun");

        uart.write(reg::MCR, 0x00);
        assert_eq!(uart.read(reg::MSR), 0xB0 | 0x0B, "lines back up");
        assert_eq!(uart.write(reg::DATA, b'w'), Some(b'w'));
    }

    #[test]
    fn loopback_without_fifo_overruns_on_the_second_byte() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0x10);
        uart.write(reg::DATA, 1);
        uart.write(reg::DATA, 2);
        assert_eq!(uart.read(reg::LSR), 0x63);
        assert_eq!(uart.read(reg::DATA), 1);
    }

    #[test]
    fn received_byte_sets_dr_until_read() {
        let mut uart = Uart16550::new();
        assert!(uart.receive(b'q'));
        assert_eq!(uart.rx_pending(), 1);
        assert_eq!(uart.read(reg::LSR), 0x61);
        assert_eq!(uart.read(reg::DATA), b'q');
        assert_eq!(uart.read(reg::LSR), 0x60);
        assert_eq!(uart.read(reg::DATA), b'q', "empty RBR reads the old byte");
        assert_eq!(uart.read(reg::LSR), 0x60, "without setting DR");
    }

    #[test]
    fn holding_register_overrun_keeps_the_first_byte_and_lsr_read_clears_oe() {
        let mut uart = Uart16550::new();
        assert!(uart.receive(b'1'));
        assert!(!uart.receive(b'2'));
        assert_eq!(uart.read(reg::LSR), 0x63, "DR and OE");
        assert_eq!(uart.read(reg::LSR), 0x61, "OE cleared by the read");
        assert_eq!(uart.read(reg::DATA), b'1');
        assert_eq!(uart.read(reg::LSR), 0x60);
    }

    #[test]
    fn fifo_holds_sixteen_bytes_in_order() {
        let mut uart = Uart16550::new();
        uart.write(reg::IIR_FCR, 0x01);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC1, "FIFO bits mirror FCR.0");
        for byte in 0..16u8 {
            assert!(uart.receive(byte), "byte {byte}");
        }
        assert!(!uart.receive(16));
        assert_eq!(uart.read(reg::LSR), 0x63);
        // Read some, refill across the ring's wrap-around.
        for byte in 0..10u8 {
            assert_eq!(uart.read(reg::DATA), byte);
        }
        for byte in 100..110u8 {
            assert!(uart.receive(byte));
        }
        let got: [u8; 16] = core::array::from_fn(|_| uart.read(reg::DATA));
        let want = [
            10, 11, 12, 13, 14, 15, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109,
        ];
        assert_eq!(got, want);
        assert_eq!(uart.read(reg::LSR), 0x60);
    }

    #[test]
    fn fcr_clears_the_receive_fifo_and_mode_changes_empty_it() {
        let mut uart = Uart16550::new();
        uart.write(reg::IIR_FCR, 0x01);
        uart.receive(1);
        uart.receive(2);
        uart.write(reg::IIR_FCR, 0x03);
        assert_eq!(uart.read(reg::LSR) & 0x01, 0, "FCR.1 cleared it");
        uart.receive(3);
        uart.write(reg::IIR_FCR, 0x01);
        assert_eq!(uart.rx_pending(), 1, "FCR.0 alone keeps the data");
        uart.write(reg::IIR_FCR, 0x00);
        assert_eq!(uart.rx_pending(), 0, "leaving FIFO mode empties it");
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        uart.receive(4);
        uart.write(reg::IIR_FCR, 0x02);
        assert_eq!(uart.rx_pending(), 1, "FCR.1 ignored without FCR.0");
    }

    #[test]
    fn ier_keeps_only_its_four_bits() {
        let mut uart = Uart16550::new();
        uart.write(reg::IER, 0xFF);
        assert_eq!(uart.read(reg::IER), 0x0F);
    }

    #[test]
    fn mcr_keeps_only_its_five_bits() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0xEB);
        assert_eq!(uart.read(reg::MCR), 0x0B);
    }

    #[test]
    fn thre_interrupt_raised_by_enabling_and_cleared_by_reading_iir() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0x08);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        uart.write(reg::IER, 0x02);
        assert!(uart.interrupt_pending());
        assert_eq!(uart.read(reg::IIR_FCR), 0x02);
        assert!(!uart.interrupt_pending(), "the IIR read acknowledged it");
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        // Writing IER again with the bit already set does not re-raise it.
        uart.write(reg::IER, 0x02);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        // Writing THR: the byte leaves at once and THR is empty again.
        assert_eq!(uart.write(reg::DATA, b'a'), Some(b'a'));
        assert_eq!(uart.read(reg::IIR_FCR), 0x02);
        // Disabling and re-enabling raises a fresh one.
        uart.write(reg::IER, 0x00);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        uart.write(reg::IER, 0x02);
        assert_eq!(uart.read(reg::IIR_FCR), 0x02);
    }

    #[test]
    fn thre_from_a_thr_write_is_not_reported_while_disabled() {
        let mut uart = Uart16550::new();
        uart.write(reg::DATA, b'a');
        assert_eq!(uart.read(reg::IIR_FCR), 0x01, "IER.1 clear: not reported");
    }

    #[test]
    fn iir_reports_sources_in_priority_order() {
        let mut uart = Uart16550::new();
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::MCR, 0x08);
        uart.write(reg::IER, 0x0F);
        // Modem status delta: enter and leave loopback.
        uart.write(reg::MCR, 0x18);
        uart.write(reg::MCR, 0x08);
        // Overrun with data waiting.
        for byte in 0..17u8 {
            uart.receive(byte);
        }
        assert!(uart.interrupt_pending());
        assert_eq!(uart.read(reg::IIR_FCR), 0xC6, "line status first");
        assert_eq!(uart.read(reg::IIR_FCR), 0xC6, "IIR read does not clear it");
        uart.read(reg::LSR);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC4, "then received data");
        for _ in 0..16 {
            uart.read(reg::DATA);
        }
        assert_eq!(uart.read(reg::IIR_FCR), 0xC2, "then THR empty");
        assert_eq!(uart.read(reg::IIR_FCR), 0xC0, "then modem status");
        uart.read(reg::MSR);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC1, "then nothing");
        assert!(!uart.interrupt_pending());
    }

    #[test]
    fn thre_is_not_acknowledged_while_a_higher_source_is_reported() {
        let mut uart = Uart16550::new();
        uart.write(reg::IER, 0x03);
        uart.receive(b'r');
        assert_eq!(uart.read(reg::IIR_FCR), 0x04);
        uart.read(reg::DATA);
        assert_eq!(uart.read(reg::IIR_FCR), 0x02, "THRE still pending");
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
    }

    #[test]
    fn sources_disabled_in_ier_are_not_reported() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0x08);
        uart.receive(1);
        uart.receive(2);
        uart.write(reg::DATA, 0);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        assert!(!uart.interrupt_pending());
        uart.write(reg::IER, 0x01);
        assert_eq!(uart.read(reg::IIR_FCR), 0x04);
        uart.write(reg::IER, 0x04);
        assert_eq!(uart.read(reg::IIR_FCR), 0x06);
    }

    #[test]
    fn interrupt_line_needs_out2_and_is_off_in_loopback() {
        let mut uart = Uart16550::new();
        uart.write(reg::IER, 0x01);
        uart.receive(b'k');
        assert!(!uart.interrupt_pending(), "OUT2 clear gates the IRQ");
        assert_eq!(uart.read(reg::IIR_FCR), 0x04, "IIR still reports it");
        uart.write(reg::MCR, 0x08);
        assert!(uart.interrupt_pending());
        uart.write(reg::MCR, 0x18);
        assert!(
            !uart.interrupt_pending(),
            "OUT2 forced inactive in loopback"
        );
        uart.write(reg::MCR, 0x08);
        uart.read(reg::DATA);
        assert!(!uart.interrupt_pending(), "data read: nothing left");
    }

    #[test]
    fn scratch_register_is_plain_storage() {
        let mut uart = Uart16550::new();
        for value in [0x00, 0x55, 0xAA, 0xFF] {
            assert_eq!(uart.write(reg::SCR, value), None);
            assert_eq!(uart.read(reg::SCR), value);
        }
        with_dlab(&mut uart, |uart| assert_eq!(uart.read(reg::SCR), 0xFF));
    }

    #[test]
    fn lsr_and_msr_writes_are_ignored() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.write(reg::LSR, 0xFF), None);
        assert_eq!(uart.write(reg::MSR, 0x0F), None);
        assert_eq!(uart.read(reg::LSR), 0x60);
        assert_eq!(uart.read(reg::MSR), 0xB0);
    }

    #[test]
    fn offsets_past_the_eight_registers_read_ff_and_ignore_writes() {
        let mut uart = Uart16550::new();
        for offset in [8, 9, 0x100, u16::MAX] {
            assert_eq!(uart.write(offset, b'x'), None);
            assert_eq!(uart.read(offset), 0xFF);
        }
        assert_eq!(uart.read(reg::LSR), 0x60, "no state changed");
        assert_eq!(uart.read(reg::SCR), 0);
    }

    proptest! {
        /// Any sequence of guest accesses and console input keeps the
        /// model's invariants: the transmitter always reads empty, no more
        /// than a FIFO's worth of bytes waits, and IIR bit 0 agrees with
        /// whether a source is pending.
        #[test]
        fn any_access_sequence_keeps_invariants(
            ops in prop::collection::vec((0u8..3, 0u16..10, any::<u8>()), 0..200)
        ) {
            let mut uart = Uart16550::new();
            for (kind, offset, value) in ops {
                match kind {
                    0 => {
                        uart.read(offset);
                    }
                    1 => {
                        let out = uart.write(offset, value);
                        prop_assert!(out.is_none() || (offset == 0 && out == Some(value)));
                    }
                    _ => {
                        uart.receive(value);
                    }
                }
                prop_assert!(uart.rx_pending() <= RX_FIFO_DEPTH);
                prop_assert_eq!(uart.lsr() & 0x60, 0x60);
                let pending = uart.source().is_some();
                let mut probe = uart.clone();
                prop_assert_eq!(probe.read(reg::IIR_FCR) & 1 == 0, pending);
            }
        }
    }
}
