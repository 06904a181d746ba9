//! The virtual 16550A UART a guest sees as COM1: register state, the
//! receive FIFO and interrupt identification, as a pure state machine the
//! port-I/O exit handler drives. It performs no I/O itself: bytes the guest
//! transmits are returned to the caller, bytes for the guest are queued with
//! [`Uart16550::receive`].
//!
//! Behaviour follows the National Semiconductor (now TI) PC16550D
//! datasheet, cited below by section name: the register descriptions
//! (Line Status, FIFO Control, Interrupt Identification, Interrupt Enable,
//! MODEM Control, MODEM Status, Scratchpad), the register summary table,
//! the table of interrupt control functions and "FIFO Interrupt Mode
//! Operation". It is written to pass what an unmodified Linux 8250 driver
//! does with a 16550A: its autoconfig probe (IER, scratch, LCR read-back,
//! MCR loopback seen in MSR, IIR bits 7:6 after enabling the FIFOs, the
//! FIFO-size count in loopback), the THRE tests at port start-up, and an
//! interrupt handler that reads IIR, LSR, RBR while LSR.DR, MSR, and
//! refills THR while LSR.THRE.
//!
//! # What the model leaves out, and why
//!
//! The model has no notion of time:
//!
//! - Transmission is instant. THR and the transmitter are always empty
//!   (LSR.THRE and LSR.TEMT always set), so the transmit FIFO never holds
//!   anything and clearing it (FCR bit 2) has nothing to do. Writing THR
//!   resets the THRE interrupt and, the byte being gone at once, sets it
//!   again: a driver that sends from its THRE handler is called again
//!   until it stops writing or disables ETBEI.
//! - The character timeout (FIFO Interrupt Mode Operation: data below the
//!   trigger level and no FIFO activity for four character times) cannot
//!   be timed. Data below the trigger level is reported as a timeout at
//!   once (IIR 0xCC), so a guest never waits for bytes that are already
//!   here; at or above the trigger level it is "received data available"
//!   (IIR 0xC4) as on the chip. Both are cleared as the datasheet says:
//!   the first when the FIFO falls below the trigger level (then the
//!   timeout takes over while bytes remain), the second by reading RBR
//!   (after which, with bytes left, it is reported again at once, as if
//!   the four character times had passed).
//! - There are no parity, framing or break errors (LSR bits 2..=4 and 7
//!   stay clear); the only line-status condition is overrun.
//!
//! # Receiving
//!
//! [`Uart16550::receive`] takes console input paced to the guest: it takes
//! only what fits ([`Uart16550::rx_space`]: the 16-byte FIFO, or the one
//! holding register in 16450 mode) and never overruns, so a console that
//! keeps the rest until the guest has read loses nothing.
//! [`Uart16550::receive_lossy`] is for a source that cannot wait: bytes
//! over a full receiver are lost as on the chip, with LSR.OE set. Bytes
//! the guest sends itself in loopback mode arrive the lossy way.

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
/// ERBFI (bit 0) enables both received data available and the character
/// timeout.
const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const IER_MS: u8 = 1 << 3;
const IER_MASK: u8 = 0x0F;

/// IIR values (PC16550D, Interrupt Identification Register and the interrupt
/// control functions table): bit 0 clear means "pending", bits 3:1 name the
/// highest-priority source, bits 5:4 are always 0 and bits 7:6 are set
/// while FCR bit 0 is.
const IIR_NONE: u8 = 0x01;
const IIR_RLS: u8 = 0x06;
const IIR_RDA: u8 = 0x04;
const IIR_TIMEOUT: u8 = 0x0C;
const IIR_THRE: u8 = 0x02;
const IIR_MS: u8 = 0x00;
const IIR_FIFO_ENABLED: u8 = 0xC0;

/// FCR bits (PC16550D, FIFO Control Register). Bit 3 (DMA mode) only
/// changes the RXRDY/TXRDY pins, which a guest cannot see; bits 5:4 are
/// reserved.
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
/// Bits 7:6: the receiver trigger level.
const FCR_TRIGGER_SHIFT: u8 = 6;

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

/// Depth of the receive FIFO in FIFO mode (PC16550D, Features: 16 bytes
/// each way). In 16450 mode only one byte (the holding register) is used.
pub const RX_FIFO_DEPTH: usize = 16;

/// The receiver trigger levels FCR bits 7:6 select, in bytes (PC16550D,
/// FIFO Control Register): 00 → 1, 01 → 4, 10 → 8, 11 → 14.
pub const RX_TRIGGER_LEVELS: [usize; 4] = [1, 4, 8, 14];

/// The divisor after power-on: 12, which is 9600 baud from the PC's
/// 1.8432 MHz clock (115200 / 12). Guests program their own.
pub const DEFAULT_DIVISOR: u16 = 12;

/// The source [`Uart16550`] reports in IIR, highest priority first
/// (PC16550D, interrupt control functions table). Received data and the
/// character timeout share the second priority; which one is reported
/// depends on the FIFO level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    ReceiverLineStatus,
    ReceivedData,
    CharacterTimeout,
    TransmitterEmpty,
    ModemStatus,
}

impl Source {
    const fn iir(self) -> u8 {
        match self {
            Self::ReceiverLineStatus => IIR_RLS,
            Self::ReceivedData => IIR_RDA,
            Self::CharacterTimeout => IIR_TIMEOUT,
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
    /// FCR bits 7:6 as last written with FCR bit 0 set (an index into
    /// [`RX_TRIGGER_LEVELS`]).
    trigger: u8,
    /// LSR.OE: a received byte was lost since LSR was last read.
    overrun: bool,
    /// The THR-empty interrupt is pending (PC16550D, interrupt control
    /// functions table: set when THR empties, reset by reading IIR while it is
    /// the source or by writing THR). Only kept while IER.ETBEI is set.
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
    /// table): interrupts disabled, FIFOs off (trigger level 1), nothing
    /// received, transmitter empty, divisor [`DEFAULT_DIVISOR`].
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
            trigger: 0,
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
                let lsr = self.line_status();
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
                self.write_ier(value);
                None
            }
            // FCR is decoded whatever LCR.DLAB is (PC16550D register
            // summary: DLAB is "don't care" for offset 2); Linux writes it
            // with LCR = 0xBF while probing for an EFR.
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

    /// Queues console input for the guest, paced: takes bytes from the
    /// front of `bytes` while the receiver has room and returns how many it
    /// took. The rest are the caller's: it should keep them and offer them
    /// again once the guest has read (see [`rx_space`](Self::rx_space)), so
    /// nothing is lost and no overrun is ever caused this way.
    ///
    /// In loopback mode the serial input is disconnected from the receiver
    /// (PC16550D, MODEM Control Register bit 4), so nothing is taken.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.rx_space());
        for &byte in bytes.iter().take(taken) {
            self.push_rx(byte);
        }
        taken
    }

    /// Queues one byte arriving on the serial input whether or not there is
    /// room, as on a line without flow control. Returns false when a byte
    /// was lost to an overrun (PC16550D, Line Status Register bit 1): in
    /// FIFO mode a full FIFO keeps its bytes and this one is lost; in 16450
    /// mode this one overwrites the unread holding register. Either way
    /// LSR.OE is set and, if enabled, the line-status interrupt raised.
    ///
    /// In loopback mode the byte never reaches the receiver: it is dropped
    /// (false) without an overrun.
    pub fn receive_lossy(&mut self, byte: u8) -> bool {
        if self.loopback() {
            return false;
        }
        self.push_rx_lossy(byte)
    }

    /// How many bytes [`receive`](Self::receive) would take now: the
    /// receiver's free room (16 bytes in FIFO mode, 1 in 16450 mode, minus
    /// what waits), or 0 in loopback mode.
    pub const fn rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.rx_capacity().saturating_sub(self.rx_len)
        }
    }

    /// Whether received data would interrupt the guest: the received-data
    /// interrupt enabled (IER bit 0), OUT2 set, not in loopback. A guest
    /// waiting like this waits for console input.
    pub const fn receive_interrupt_enabled(&self) -> bool {
        self.ier & IER_RDA != 0 && self.mcr & MCR_OUT2 != 0 && !self.loopback()
    }

    /// Whether the UART drives its interrupt line now: some interrupt source is
    /// pending and enabled in IER, and MCR.OUT2 is set. On PC hardware OUT2
    /// gates the UART's interrupt onto the IRQ line, and in loopback mode OUT2
    /// is forced inactive (PC16550D, MODEM Control Register), so no interrupt
    /// reaches the CPU then even though IIR reports its source.
    pub const fn interrupt_pending(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.source().is_some()
    }

    /// IIR as the guest would read it now, without the read's side effect
    /// (acknowledging a THR-empty interrupt).
    pub const fn interrupt_id(&self) -> u8 {
        let fifo = if self.fifo_enabled {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        match self.source() {
            Some(source) => source.iir() | fifo,
            None => IIR_NONE | fifo,
        }
    }

    /// LSR as the guest would read it now, without the read's side effect
    /// (clearing OE). THRE and TEMT are always set as transmission is
    /// instant; there are never parity, framing or break errors, so bits
    /// 2..=4 and 7 stay clear.
    pub const fn line_status(&self) -> u8 {
        let mut lsr = LSR_THRE | LSR_TEMT;
        if self.rx_len > 0 {
            lsr |= LSR_DR;
        }
        if self.overrun {
            lsr |= LSR_OE;
        }
        lsr
    }

    /// What a read of LSR returns when that read changes nothing (no
    /// overrun for it to clear), else `None`.
    pub const fn quiet_line_status(&self) -> Option<u8> {
        if self.overrun {
            None
        } else {
            Some(self.line_status())
        }
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

    /// Whether the FIFOs are enabled (FCR bit 0): 16550 rather than 16450
    /// mode.
    pub const fn fifo_enabled(&self) -> bool {
        self.fifo_enabled
    }

    /// The receiver trigger level in bytes, as FCR bits 7:6 last set it
    /// (see [`RX_TRIGGER_LEVELS`]). It applies in FIFO mode only; in 16450
    /// mode every byte is "received data available".
    pub const fn rx_trigger(&self) -> usize {
        match self.trigger & 0b11 {
            0 => RX_TRIGGER_LEVELS[0],
            1 => RX_TRIGGER_LEVELS[1],
            2 => RX_TRIGGER_LEVELS[2],
            _ => RX_TRIGGER_LEVELS[3],
        }
    }

    /// Whether a write to offset 0 only sends its byte: LCR.DLAB clear
    /// (it is THR, not the divisor latch), no loopback (the byte leaves the
    /// chip) and no THR-empty interrupt enabled (nothing the guest can see
    /// changes: THR is empty again at once, see the module's notes).
    pub const fn transmits_plainly(&self) -> bool {
        !self.dlab() && !self.loopback() && self.ier & IER_THRE == 0
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

    /// Appends `byte` to the receiver; the caller checked there is room.
    fn push_rx(&mut self, byte: u8) {
        // Both are below RX_FIFO_DEPTH: the sum cannot wrap.
        let slot = self.rx_head.wrapping_add(self.rx_len) % RX_FIFO_DEPTH;
        if self.rx_len < self.rx_capacity() {
            if let Some(cell) = self.rx.get_mut(slot) {
                *cell = byte;
                self.rx_len = self.rx_len.saturating_add(1);
            }
        }
    }

    /// A byte arrives whatever the room; false when one was lost.
    fn push_rx_lossy(&mut self, byte: u8) -> bool {
        if self.rx_len < self.rx_capacity() {
            self.push_rx(byte);
            return true;
        }
        // PC16550D, Line Status Register bit 1: in 16450 mode the next
        // character is transferred into RBR, destroying the unread one; in
        // FIFO mode the character in the shift register is overwritten and
        // not transferred to the full FIFO.
        self.overrun = true;
        if !self.fifo_enabled {
            if let Some(cell) = self.rx.get_mut(self.rx_head) {
                *cell = byte;
            }
        }
        false
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

    fn write_ier(&mut self, value: u8) {
        let old = self.ier;
        self.ier = value & IER_MASK;
        // PC16550D, Interrupt Enable Register and interrupt control functions
        // table: the THRE interrupt is "THR empty" while ETBEI is set. THR is
        // always empty here, so setting ETBEI raises it at once; Linux's
        // start-up THRE test and its transmit path (set ETBEI, wait for the
        // interrupt) rely on this. Clearing ETBEI drops what was pending, so
        // setting it again gives a fresh one; rewriting IER with ETBEI
        // already set does not re-raise one that was acknowledged.
        if old & IER_THRE == 0 && self.ier & IER_THRE != 0 {
            self.thre_pending = true;
        } else if self.ier & IER_THRE == 0 {
            self.thre_pending = false;
        }
    }

    fn write_thr(&mut self, value: u8) -> Option<u8> {
        // Writing THR resets the THRE interrupt; the byte then leaves at once,
        // THR is empty again and, with ETBEI set, the interrupt is pending
        // again (PC16550D, interrupt control functions table).
        self.thre_pending = self.ier & IER_THRE != 0;
        if self.loopback() {
            // PC16550D, MODEM Control Register bit 4: the transmitter output is
            // looped back to the receiver input, and nothing leaves the chip.
            // The guest sends as fast as it likes, so a full receiver overruns.
            self.push_rx_lossy(value);
            None
        } else {
            Some(value)
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        // PC16550D, FIFO Control Register: switching between FIFO and 16450
        // mode empties the FIFOs, and the other FCR bits are only acted on
        // with bit 0 set. Clearing the receive FIFO leaves LSR alone (the
        // shift register and OE are not touched); clearing the transmit FIFO
        // has nothing to do here: it is always empty.
        if enable != self.fifo_enabled {
            self.clear_rx();
        }
        if enable {
            if value & FCR_CLEAR_RX != 0 {
                self.clear_rx();
            }
            self.trigger = value >> FCR_TRIGGER_SHIFT;
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

    /// The highest-priority enabled interrupt source, if any
    /// (PC16550D, interrupt control functions table).
    ///
    /// In FIFO mode received data is "available" at or above the trigger
    /// level and a character timeout below it (reported at once: see the
    /// module documentation); in 16450 mode one byte is available data.
    const fn source(&self) -> Option<Source> {
        if self.ier & IER_RLS != 0 && self.overrun {
            Some(Source::ReceiverLineStatus)
        } else if self.ier & IER_RDA != 0 && self.rx_len > 0 {
            if self.fifo_enabled && self.rx_len < self.rx_trigger() {
                Some(Source::CharacterTimeout)
            } else {
                Some(Source::ReceivedData)
            }
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(Source::TransmitterEmpty)
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            Some(Source::ModemStatus)
        } else {
            None
        }
    }

    fn read_iir(&mut self) -> u8 {
        // Reading IIR while THRE is the reported source is what resets it
        // (PC16550D, interrupt control functions table); the other sources
        // are reset by reading LSR, RBR or MSR.
        if self.source() == Some(Source::TransmitterEmpty) {
            self.thre_pending = false;
            return IIR_THRE | (self.interrupt_id() & IIR_FIFO_ENABLED);
        }
        self.interrupt_id()
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

    /// A UART with OUT2 set, the FIFOs on with `fcr`, and IER = `ier`.
    fn uart_with(fcr: u8, ier: u8) -> Uart16550 {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0x0B);
        uart.write(reg::IIR_FCR, fcr);
        uart.write(reg::IER, ier);
        uart
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
        assert!(!uart.fifo_enabled());
        assert_eq!(uart.rx_trigger(), 1);
        assert_eq!(uart.rx_space(), 1, "the 16450 holding register");
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

    /// Linux's `autoconfig()` for a port at 0x3F8, in order: the IER test,
    /// the loopback test, the FIFO identification through IIR bits 7:6
    /// and, with 16550A variants probed, the EFR, 16750 and XScale tests
    /// and the FIFO size count. A 16550A must come out as a 16550A.
    #[test]
    fn linux_autoconfig_identifies_a_16550a() {
        let mut uart = Uart16550::new();

        // Scratch register (8250 vs 16450 detection in autoconfig_8250 and
        // the scratch test of older probes).
        for value in [0x55, 0xAA, 0x5A] {
            uart.write(reg::SCR, value);
            assert_eq!(uart.read(reg::SCR), value);
        }

        // IER test: 0 reads back 0, 0x0F reads back 0x0F.
        let saved_ier = uart.read(reg::IER);
        uart.write(reg::IER, 0);
        assert_eq!(uart.read(reg::IER) & 0x0F, 0);
        uart.write(reg::IER, 0x0F);
        assert_eq!(uart.read(reg::IER) & 0x0F, 0x0F);
        uart.write(reg::IER, saved_ier);

        // Loopback test: MCR = LOOP | OUT2 | RTS must read MSR 7:4 = 0x90
        // (DCD and CTS).
        let saved_mcr = uart.read(reg::MCR);
        let saved_lcr = uart.read(reg::LCR);
        uart.write(reg::MCR, 0x1A);
        assert_eq!(uart.read(reg::MSR) & 0xF0, 0x90);
        uart.write(reg::MCR, saved_mcr);

        // LCR read-back, including the configuration-mode values.
        for lcr in [0xBF, 0x80, 0x03, 0x1B, 0x00] {
            uart.write(reg::LCR, lcr);
            assert_eq!(uart.read(reg::LCR), lcr);
        }

        // FIFO identification: EFR = 0 with LCR = 0xBF is an FCR write on
        // a 16550 (FIFOs off), then FCR = ENABLE_FIFO and IIR >> 6 must be
        // 3: a 16550A.
        uart.write(reg::LCR, 0xBF);
        uart.write(reg::IIR_FCR, 0);
        uart.write(reg::LCR, 0);
        uart.write(reg::IIR_FCR, 0x01);
        assert_eq!(uart.read(reg::IIR_FCR) >> 6, 3, "16550A");

        // No EFR with LCR = 0x80 or 0xBF: IIR reads non-zero there.
        uart.write(reg::LCR, 0x80);
        assert_ne!(uart.read(reg::IIR_FCR), 0);
        uart.write(reg::LCR, 0xBF);
        assert_ne!(uart.read(reg::IIR_FCR), 0);

        // NS SuperIO test: offset 2 with LCR = 0xE0 must not mirror
        // MCR.LOOP.
        uart.write(reg::LCR, 0);
        let mcr = uart.read(reg::MCR);
        uart.write(reg::LCR, 0xE0);
        let excr1 = uart.read(reg::IIR_FCR);
        assert_eq!((excr1 ^ mcr) & 0x10, 0);
        uart.write(reg::LCR, 0);
        uart.write(reg::MCR, mcr ^ 0x10);
        uart.write(reg::LCR, 0xE0);
        let excr1 = uart.read(reg::IIR_FCR);
        uart.write(reg::LCR, 0);
        uart.write(reg::MCR, mcr);
        assert_eq!((excr1 ^ mcr) & 0x10, 0, "not a SuperIO");

        // TI16750 test: FCR bit 5 must not show as IIR bit 5.
        uart.write(reg::IIR_FCR, 0x21);
        let status1 = uart.read(reg::IIR_FCR) >> 5;
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::LCR, 0x80);
        uart.write(reg::IIR_FCR, 0x21);
        let status2 = uart.read(reg::IIR_FCR) >> 5;
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::LCR, 0);
        assert!(!(status1 == 6 && status2 == 7), "not a 16750");
        assert_eq!((status1, status2), (6, 6));

        // XScale UUE test: IER bit 6 does not stick.
        uart.write(reg::IER, 0x40);
        assert_eq!(uart.read(reg::IER) & 0x40, 0);
        uart.write(reg::IER, 0);

        // size_fifo(): FIFOs cleared, loopback, 256 bytes sent, count the
        // bytes that come back while LSR.DR. 16, not 64.
        uart.write(reg::IIR_FCR, 0x07);
        uart.write(reg::MCR, 0x10);
        uart.write(reg::LCR, 0x03);
        for byte in 0..=255u8 {
            assert_eq!(uart.write(reg::DATA, byte), None, "nothing leaves");
        }
        let mut count = 0;
        while uart.read(reg::LSR) & 0x01 != 0 && count < 256 {
            assert_eq!(uart.read(reg::DATA), count as u8, "the first 16 kept");
            count += 1;
        }
        assert_eq!(count, RX_FIFO_DEPTH);

        // Reset as autoconfig ends it.
        uart.write(reg::LCR, saved_lcr);
        uart.write(reg::MCR, saved_mcr);
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::IIR_FCR, 0x07);
        uart.write(reg::IIR_FCR, 0x00);
        uart.read(reg::DATA);
        uart.write(reg::IER, 0);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        assert_eq!(uart.read(reg::LSR), 0x60, "no data, no overrun left");
    }

    /// `serial8250_do_startup()`: the THRE test (ETBEI with THR empty gives
    /// a THRE interrupt; IIR read clears it; clearing and setting ETBEI
    /// gives it back) and the TXEN test, after which Linux must not mark
    /// the port with UART_BUG_THRE or UART_BUG_TXEN.
    #[test]
    fn linux_startup_thre_tests_pass() {
        let mut uart = Uart16550::new();
        // Clear and disable the FIFOs, clear the interrupt registers.
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::IIR_FCR, 0x07);
        uart.write(reg::IIR_FCR, 0x00);
        uart.read(reg::LSR);
        uart.read(reg::DATA);
        uart.read(reg::IIR_FCR);
        uart.read(reg::MSR);
        assert_ne!(uart.read(reg::LSR), 0xFF);

        // The THRE test, before OUT2 is set: IIR still reports.
        assert_ne!(uart.read(reg::LSR) & 0x20, 0, "wait_for_xmitr: THRE");
        uart.write(reg::IER, 0x02);
        let iir1 = uart.read(reg::IIR_FCR);
        uart.write(reg::IER, 0);
        uart.write(reg::IER, 0x02);
        let iir = uart.read(reg::IIR_FCR);
        uart.write(reg::IER, 0);
        assert_eq!(iir1, 0x02);
        assert_eq!(iir, 0x02, "THRE reasserted: no UART_BUG_THRE");

        // LCR = 8N1, MCR = DTR | RTS | OUT2; the TXEN test.
        uart.write(reg::LCR, 0x03);
        uart.write(reg::MCR, 0x0B);
        uart.write(reg::IER, 0x02);
        assert!(uart.interrupt_pending(), "the line is raised");
        let lsr = uart.read(reg::LSR);
        let iir = uart.read(reg::IIR_FCR);
        uart.write(reg::IER, 0);
        assert!(
            !(lsr & 0x40 != 0 && iir & 0x01 != 0),
            "TEMT with an interrupt: no UART_BUG_TXEN"
        );
        assert!(!uart.interrupt_pending());

        // set_termios for a 16550A: FIFOs on, trigger 8.
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::IIR_FCR, 0x81);
        assert!(uart.fifo_enabled());
        assert_eq!(uart.rx_trigger(), 8);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC1);
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
        assert!(uart.interrupt_pending(), "back right after the write");
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
        uart.write(reg::IER, 0x01);
        assert_eq!(uart.read(reg::IIR_FCR), 0x01, "nor with only ERBFI");
    }

    #[test]
    fn only_a_plain_transmitter_sends_without_side_effects() {
        let mut uart = Uart16550::new();
        assert!(uart.transmits_plainly());
        uart.write(reg::LCR, LCR_DLAB);
        assert!(!uart.transmits_plainly(), "offset 0 is the divisor latch");
        uart.write(reg::LCR, 0x03);
        assert!(uart.transmits_plainly());
        uart.write(reg::IER, IER_THRE);
        assert!(!uart.transmits_plainly(), "a THR write re-raises THRE");
        uart.write(reg::IER, 0x01);
        assert!(uart.transmits_plainly(), "receive interrupts do not matter");
        uart.write(reg::MCR, 0x10);
        assert!(!uart.transmits_plainly(), "loopback receives the byte");
        uart.write(reg::MCR, 0x0B);
        assert!(uart.transmits_plainly());
    }

    #[test]
    fn loopback_sends_thr_to_rbr_and_msr_follows_mcr() {
        let mut uart = Uart16550::new();
        uart.write(reg::IIR_FCR, 0x01);
        uart.write(reg::MCR, 0x10);
        // Entering loopback dropped CTS, DSR and DCD: their deltas are set.
        assert_eq!(uart.read(reg::MSR), 0x0B);
        assert_eq!(uart.read(reg::MSR), 0x00, "deltas cleared by the read");
        // Each MCR output maps to its MSR input.
        for (mcr, msr) in [(0x01, 0x20), (0x02, 0x10), (0x04, 0x40), (0x08, 0x80)] {
            uart.write(reg::MCR, 0x10 | mcr);
            assert_eq!(uart.read(reg::MSR) & 0xF0, msr, "MCR {mcr:#x}");
            uart.write(reg::MCR, 0x10);
            uart.read(reg::MSR);
        }
        uart.write(reg::MCR, 0x1A);
        assert_eq!(uart.read(reg::MSR) & 0xF0, 0x90, "Linux's probe value");
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

        assert_eq!(uart.rx_space(), 0, "the serial input is disconnected");
        assert_eq!(uart.receive(b"z"), 0);
        assert!(!uart.receive_lossy(b'z'));
        assert_eq!(uart.read(reg::LSR), 0x60, "and that is no overrun");

        uart.write(reg::MCR, 0x00);
        assert_eq!(uart.read(reg::MSR), 0xB0 | 0x0B, "lines back up");
        assert_eq!(uart.write(reg::DATA, b'w'), Some(b'w'));
        assert_eq!(uart.receive(b"z"), 1, "connected again");
    }

    #[test]
    fn loopback_without_fifo_overruns_on_the_second_byte() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0x10);
        uart.write(reg::DATA, 1);
        uart.write(reg::DATA, 2);
        assert_eq!(uart.read(reg::LSR), 0x63);
        assert_eq!(uart.read(reg::DATA), 2, "16450: the new byte overwrote");
        assert_eq!(uart.read(reg::LSR), 0x60);
    }

    #[test]
    fn received_byte_sets_dr_until_read() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.receive(b"q"), 1);
        assert_eq!(uart.rx_pending(), 1);
        assert_eq!(uart.read(reg::LSR), 0x61);
        assert_eq!(uart.read(reg::DATA), b'q');
        assert_eq!(uart.read(reg::LSR), 0x60);
        assert_eq!(uart.read(reg::DATA), b'q', "empty RBR reads the old byte");
        assert_eq!(uart.read(reg::LSR), 0x60, "without setting DR");
    }

    #[test]
    fn holding_register_takes_one_byte_paced_and_overwrites_when_lossy() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.receive(b"12"), 1, "the holding register is full");
        assert_eq!(uart.rx_space(), 0);
        assert_eq!(uart.read(reg::LSR), 0x61, "paced input never overruns");
        assert!(!uart.receive_lossy(b'3'));
        assert_eq!(uart.read(reg::LSR), 0x63, "DR and OE");
        assert_eq!(uart.read(reg::LSR), 0x61, "OE cleared by the read");
        assert_eq!(uart.read(reg::DATA), b'3', "the unread byte was lost");
        assert_eq!(uart.read(reg::LSR), 0x60);
        assert_eq!(uart.rx_space(), 1);
        assert!(uart.receive_lossy(b'4'));
        assert_eq!(uart.read(reg::DATA), b'4');
    }

    #[test]
    fn fifo_holds_sixteen_bytes_in_order() {
        let mut uart = Uart16550::new();
        uart.write(reg::IIR_FCR, 0x01);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC1, "FIFO bits mirror FCR.0");
        assert_eq!(uart.rx_space(), 16);
        let bytes: Vec<u8> = (0..20).collect();
        assert_eq!(uart.receive(&bytes), 16, "a full FIFO takes no more");
        assert_eq!(uart.rx_space(), 0);
        assert_eq!(uart.receive(&bytes[16..]), 0);
        assert_eq!(uart.read(reg::LSR), 0x61, "no overrun from paced input");
        // Read some, refill across the ring's wrap-around.
        for byte in 0..10u8 {
            assert_eq!(uart.read(reg::DATA), byte);
        }
        assert_eq!(uart.rx_space(), 10);
        let more: Vec<u8> = (100..110).collect();
        assert_eq!(uart.receive(&more), 10);
        let got: [u8; 16] = core::array::from_fn(|_| uart.read(reg::DATA));
        let want = [
            10, 11, 12, 13, 14, 15, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109,
        ];
        assert_eq!(got, want);
        assert_eq!(uart.read(reg::LSR), 0x60);
    }

    #[test]
    fn full_fifo_overrun_keeps_the_fifo_and_raises_line_status() {
        let mut uart = uart_with(0xC1, 0x05);
        for byte in 0..16u8 {
            assert!(uart.receive_lossy(byte));
        }
        assert_eq!(uart.read(reg::IIR_FCR), 0xC4, "14 or more: data available");
        assert!(!uart.receive_lossy(0xEE), "the 17th byte is lost");
        assert!(uart.interrupt_pending());
        assert_eq!(uart.read(reg::IIR_FCR), 0xC6, "line status first");
        assert_eq!(uart.read(reg::IIR_FCR), 0xC6, "IIR read does not clear it");
        assert_eq!(uart.read(reg::LSR), 0x63);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC4, "cleared by reading LSR");
        let got: Vec<u8> = (0..16).map(|_| uart.read(reg::DATA)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>(), "FIFO kept intact");
        assert_eq!(uart.read(reg::IIR_FCR), 0xC1);
    }

    #[test]
    fn overrun_without_its_interrupt_enabled_only_shows_in_lsr() {
        let mut uart = uart_with(0x01, 0x01);
        uart.write(reg::MCR, 0x10); // loopback
        for byte in 0..17u8 {
            uart.write(reg::DATA, byte);
        }
        uart.write(reg::MCR, 0x08);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC4, "no ELSI: data available");
        assert_eq!(uart.read(reg::LSR), 0x63);
    }

    #[test]
    fn trigger_levels_and_the_immediate_character_timeout() {
        for (fcr, level) in [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)] {
            let mut uart = uart_with(fcr, 0x01);
            assert_eq!(uart.rx_trigger(), level);
            assert_eq!(uart.read(reg::IIR_FCR), 0xC1, "{fcr:#x}: empty");
            for n in 1..=RX_FIFO_DEPTH {
                assert_eq!(uart.receive(&[n as u8]), 1);
                let want = if n < level { 0xCC } else { 0xC4 };
                assert_eq!(uart.read(reg::IIR_FCR), want, "{fcr:#x}: {n} bytes");
                assert!(uart.interrupt_pending());
            }
            // Reading down: available data until below the level, then the
            // timeout while any byte remains.
            for left in (0..RX_FIFO_DEPTH).rev() {
                uart.read(reg::DATA);
                let want = match left {
                    0 => 0xC1,
                    n if n < level => 0xCC,
                    _ => 0xC4,
                };
                assert_eq!(uart.read(reg::IIR_FCR), want, "{fcr:#x}: {left} left");
            }
            assert!(!uart.interrupt_pending());
        }
    }

    #[test]
    fn no_timeout_in_16450_mode_and_fcr_bits_need_bit_0() {
        let mut uart = uart_with(0x00, 0x01);
        uart.receive(b"a");
        assert_eq!(uart.read(reg::IIR_FCR), 0x04, "one byte is available");
        uart.write(reg::IIR_FCR, 0xC0);
        assert!(!uart.fifo_enabled());
        assert_eq!(uart.rx_trigger(), 1, "trigger not programmed without bit 0");
        assert_eq!(uart.rx_pending(), 1, "nor the FIFO cleared");
        uart.write(reg::IIR_FCR, 0xC1);
        assert_eq!(uart.rx_trigger(), 14);
        assert_eq!(uart.rx_pending(), 0, "entering FIFO mode empties it");
        uart.receive(b"b");
        assert_eq!(uart.read(reg::IIR_FCR), 0xCC);
        uart.write(reg::IIR_FCR, 0x00);
        assert_eq!(uart.rx_pending(), 0, "leaving FIFO mode empties it");
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
        assert_eq!(uart.rx_trigger(), 14, "kept for the next enable");
    }

    #[test]
    fn fcr_clears_the_receive_fifo_but_not_overrun_or_thre() {
        let mut uart = uart_with(0x01, 0x02);
        uart.receive(b"12");
        uart.write(reg::MCR, 0x1B);
        for byte in 0..16 {
            uart.write(reg::DATA, byte);
        }
        uart.write(reg::MCR, 0x0B);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC2);
        uart.write(reg::IIR_FCR, 0x03);
        assert_eq!(uart.rx_pending(), 0, "FCR.1 cleared it");
        assert_eq!(uart.read(reg::LSR), 0x62, "OE is not part of the FIFO");
        uart.receive(b"3");
        uart.write(reg::IIR_FCR, 0x05);
        assert_eq!(uart.rx_pending(), 1, "FCR.2 (transmit) keeps the receiver");
        uart.write(reg::IIR_FCR, 0x01);
        assert_eq!(uart.rx_pending(), 1, "FCR.0 alone keeps the data");
        uart.write(reg::DATA, b'x');
        uart.write(reg::IIR_FCR, 0x07);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC2, "THRE survives FIFO resets");
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
    fn iir_reports_sources_in_priority_order() {
        let mut uart = uart_with(0x81, 0x0F);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC2, "enabling ETBEI: THRE");
        // Modem status delta: enter loopback with DTR and RTS off (DSR and
        // CTS drop) and leave it again.
        uart.write(reg::MCR, 0x18);
        uart.write(reg::MCR, 0x0B);
        uart.write(reg::DATA, b'!');
        // Overrun with data waiting.
        for byte in 0..17u8 {
            uart.receive_lossy(byte);
        }
        assert!(uart.interrupt_pending());
        assert_eq!(uart.read(reg::IIR_FCR), 0xC6, "line status first");
        uart.read(reg::LSR);
        assert_eq!(uart.read(reg::IIR_FCR), 0xC4, "then received data");
        for _ in 0..9 {
            uart.read(reg::DATA);
        }
        assert_eq!(uart.read(reg::IIR_FCR), 0xCC, "then the timeout (7 left)");
        for _ in 0..7 {
            uart.read(reg::DATA);
        }
        assert_eq!(uart.read(reg::IIR_FCR), 0xC2, "then THR empty");
        assert_eq!(uart.read(reg::IIR_FCR), 0xC0, "then modem status");
        assert_eq!(uart.read(reg::MSR) & 0x0F, 0x03, "DCTS and DDSR");
        assert_eq!(uart.read(reg::IIR_FCR), 0xC1, "then nothing");
        assert!(!uart.interrupt_pending());
    }

    #[test]
    fn thre_is_not_acknowledged_while_a_higher_source_is_reported() {
        let mut uart = Uart16550::new();
        uart.write(reg::IER, 0x03);
        uart.receive(b"r");
        assert_eq!(uart.read(reg::IIR_FCR), 0x04);
        uart.read(reg::DATA);
        assert_eq!(uart.read(reg::IIR_FCR), 0x02, "THRE still pending");
        assert_eq!(uart.read(reg::IIR_FCR), 0x01);
    }

    #[test]
    fn sources_disabled_in_ier_are_not_reported() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, 0x08);
        uart.receive(b"1");
        uart.receive_lossy(2);
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
        uart.receive(b"k");
        assert!(!uart.interrupt_pending(), "OUT2 clear gates the IRQ");
        assert_eq!(uart.read(reg::IIR_FCR), 0x04, "IIR still reports it");
        uart.write(reg::MCR, 0x08);
        assert!(uart.interrupt_pending());
        uart.write(reg::MCR, 0x18);
        assert!(
            !uart.interrupt_pending(),
            "OUT2 forced inactive in loopback"
        );
        assert_eq!(uart.read(reg::IIR_FCR), 0x04, "though IIR reports it");
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

    /// The invariants every state must keep, whatever the guest and the
    /// console did.
    fn check_invariants(uart: &Uart16550) -> Result<(), TestCaseError> {
        let lsr = uart.line_status();
        let iir = uart.interrupt_id();
        let capacity = if uart.fifo_enabled() {
            RX_FIFO_DEPTH
        } else {
            1
        };
        prop_assert!(uart.rx_pending() <= capacity);
        prop_assert_eq!(lsr & 0x01 != 0, uart.rx_pending() > 0, "DR iff data");
        prop_assert_eq!(lsr & 0x60, 0x60, "transmitter always empty");
        prop_assert_eq!(lsr & 0x9C, 0, "no PE, FE, BI or FIFO error");
        if uart.loopback() {
            prop_assert_eq!(uart.rx_space(), 0);
        } else {
            prop_assert_eq!(uart.rx_space() + uart.rx_pending(), capacity);
        }
        prop_assert_eq!(iir & 0xC0 == 0xC0, uart.fifo_enabled(), "IIR 7:6");
        prop_assert_eq!(iir & 0x30, 0, "IIR 5:4 always 0");
        prop_assert!(matches!(
            iir & 0x0F,
            0x01 | 0x06 | 0x04 | 0x0C | 0x02 | 0x00
        ));
        prop_assert_eq!(iir & 0x01 == 0, uart.source().is_some());
        if iir & 0x0F == 0x0C {
            prop_assert!(uart.fifo_enabled() && uart.rx_pending() < uart.rx_trigger());
        }
        if iir & 0x0F == 0x04 && uart.fifo_enabled() {
            prop_assert!(uart.rx_pending() >= uart.rx_trigger());
        }
        if uart.interrupt_pending() {
            prop_assert!(iir & 0x01 == 0);
        }
        Ok(())
    }

    proptest! {
        /// Any sequence of guest accesses and console input, paced or not,
        /// never panics and keeps the invariants above; paced input never
        /// overruns, and IIR's side effect is only THRE's acknowledgement.
        #[test]
        fn any_access_sequence_keeps_invariants(
            ops in prop::collection::vec(
                (0u8..5, 0u16..10, any::<u8>(), prop::collection::vec(any::<u8>(), 0..20)),
                0..300,
            )
        ) {
            let mut uart = Uart16550::new();
            for (kind, offset, value, bytes) in ops {
                match kind {
                    0 => {
                        let before = uart.interrupt_id();
                        let got = uart.read(offset);
                        if offset == reg::IIR_FCR {
                            prop_assert_eq!(got, before);
                        }
                    }
                    1 | 2 => {
                        // Bias writes towards the registers that matter.
                        let value = if kind == 2 && offset == reg::MCR { value & 0x0F } else { value };
                        let out = uart.write(offset, value);
                        prop_assert!(out.is_none() || (offset == 0 && out == Some(value)));
                    }
                    3 => {
                        let overrun = uart.line_status() & 0x02;
                        let space = uart.rx_space();
                        let taken = uart.receive(&bytes);
                        prop_assert_eq!(taken, bytes.len().min(space));
                        prop_assert_eq!(uart.line_status() & 0x02, overrun, "paced: no overrun");
                    }
                    _ => {
                        let full = uart.rx_space() == 0;
                        let kept = uart.receive_lossy(value);
                        prop_assert_eq!(kept, !full);
                    }
                }
                check_invariants(&uart)?;
            }
        }
    }
}
