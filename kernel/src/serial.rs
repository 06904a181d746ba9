//! The physical serial console: COM1 at 115200 baud, 8N1.
//!
//! Everything Ferrovisor prints goes here. The port sits behind a spin lock;
//! the fatal paths (panic, exceptions) take it by force, because the CPU that
//! died may have held it.

use core::fmt;

use spin::Mutex;
use uart_16550::SerialPort;

use crate::arch;

/// COM1's I/O base.
const COM1: u16 = 0x3f8;

static PORT: Mutex<Option<SerialPort>> = Mutex::new(None);

/// Programs COM1. Called once, first thing on the boot CPU.
pub fn init() {
    // SAFETY: 0x3f8..0x3ff is COM1 on every PC-compatible machine and nothing
    // else in Ferrovisor drives these ports.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    // `init` leaves the divisor at 3 (38400 baud); Bochs times its UART by
    // the baud rate, so use the fastest standard rate: divisor 1 = 115200.
    // SAFETY: same ports as above, programmed while no one else uses them;
    // LCR bit 7 (DLAB) exposes the divisor latch at +0/+1, and 0x03 restores
    // 8 data bits, no parity, one stop bit with DLAB clear.
    unsafe {
        arch::outb(COM1 + 3, 0x80);
        arch::outb(COM1, 1);
        arch::outb(COM1 + 1, 0);
        arch::outb(COM1 + 3, 0x03);
    }
    *PORT.lock() = Some(port);
}

/// Writes formatted text, turning `\n` into `\r\n` for terminals.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    let mut guard = PORT.lock();
    if let Some(port) = guard.as_mut() {
        let _ = fmt::Write::write_fmt(&mut Crlf(port), args);
    }
}

/// Prints one line of a guest's console output as `[<guest>] <line>`,
/// with no log prefix: the operator reads it as the guest's own output.
pub fn guest_line(guest: &str, line: &str) {
    write_fmt(format_args!("[{guest}] {line}\n"));
}

/// Waits (bounded) until COM1 has shifted out every byte written so far:
/// the power-off path calls it so the last line is not cut off by the
/// machine stopping. Bochs times its UART, so without this the final line
/// never arrives there.
pub fn drain() {
    /// Line status register bit 6: transmitter holding and shift registers empty.
    const LSR_TEMT: u8 = 1 << 6;
    for _ in 0..1_000_000 {
        // SAFETY: reading COM1's line status register has no side effect
        // beyond clearing error flags, which nobody else reads.
        if unsafe { arch::inb(COM1 + 5) } & LSR_TEMT != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Releases the lock if a CPU died holding it, so the fatal report gets out.
pub fn force_unlock() {
    if PORT.is_locked() {
        // SAFETY: only called on the fatal path, after which the machine
        // powers off; a half-written line from the dead holder is harmless.
        unsafe { PORT.force_unlock() };
    }
}

struct Crlf<'a>(&'a mut SerialPort);

impl fmt::Write for Crlf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.0.send_raw(b'\r');
            }
            self.0.send_raw(byte);
        }
        Ok(())
    }
}
