//! The fatal path: a panic or an exception in Ferrovisor itself.
//!
//! It prints one `FATAL` line (bypassing the log level, taking the serial
//! port by force), stops this CPU's work and powers the machine off after
//! the line `powering off after a failure`, which is the failure indication
//! tests and users look for (ACPI power-off itself carries no status).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::{arch, cpu, power, serial};

static DYING: AtomicBool = AtomicBool::new(false);

/// Reports a fatal error and powers off. A second fatal error while the
/// first is being handled only halts this CPU.
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    if DYING.swap(true, Ordering::SeqCst) {
        arch::halt_forever();
    }
    // What the console still queues goes out first, so the report comes
    // after the lines that led to it.
    crate::serial_console::fatal_flush();
    serial::force_unlock();
    serial::write_fmt(format_args!("[cpu{}] FATAL {args}\n", cpu::current_index()));
    power::power_off_after_failure()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(at) => fatal(format_args!(
            "panic at {}:{}: {}",
            at.file(),
            at.line(),
            info.message()
        )),
        None => fatal(format_args!("panic: {}", info.message())),
    }
}
