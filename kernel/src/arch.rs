//! The kernel's privileged instructions that the `x86_64` crate does not
//! already wrap: port I/O by width and halting the CPU.
//!
//! Each is an `unsafe fn`: which port is safe to touch depends on the device
//! behind it, which only the caller knows.

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives, and the write must be
/// valid for that device's state.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::new(port).write(value) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives; reads can have side
/// effects on some devices.
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::new(port).read() }
}

/// Writes a 16-bit word to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::new(port).write(value) }
}

/// Reads a 16-bit word from an I/O port.
///
/// # Safety
/// The port must belong to a device the caller drives; reads can have side
/// effects on some devices.
pub unsafe fn inw(port: u16) -> u16 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::new(port).read() }
}

/// Stops this CPU for good: interrupts off, then `hlt` forever (an NMI or SMI
/// may wake it; it halts again).
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}
