//! The IDT, shared by every CPU: every CPU exception reports itself and
//! stops the machine; the kick vector wakes a halted CPU; any other
//! external interrupt is acknowledged and dropped.
//!
//! An exception in Ferrovisor itself is a host bug: the report gives the
//! vector, its name, the error code, RIP and CR2 so it can be found. The
//! CPU that took it stops and the machine powers off with a failure
//! indication (see `panic::fatal`): a host bug may have broken what the
//! other CPUs share.
//!
//! The host runs with interrupts off except while a CPU waits for work
//! (`sti; hlt`): the kick IPI (`lapic::KICK_VECTOR`) then only wakes it;
//! what to do is in the scheduler's state, read once it is awake. While a
//! guest runs, a kick is a VM exit instead (acknowledged on exit), handled
//! by the scheduler loop.

use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use crate::{gdt, panic};

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded
        .set_handler_fn(bound_range_exceeded);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available
        .set_handler_fn(device_not_available);
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment_fault);
    idt.general_protection_fault
        .set_handler_fn(general_protection_fault);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception.set_handler_fn(cp_protection);
    idt.hv_injection_exception.set_handler_fn(hv_injection);
    idt.vmm_communication_exception
        .set_handler_fn(vmm_communication);
    idt.security_exception.set_handler_fn(security_exception);
    // Any other external vector (a device or firmware interrupt nobody
    // asked for) is acknowledged and dropped rather than faulting.
    for vector in 32..=u8::MAX {
        idt[vector].set_handler_fn(stray);
    }
    idt[crate::lapic::KICK_VECTOR].set_handler_fn(kick);
    idt[crate::serial_console::CONSOLE_VECTOR].set_handler_fn(console_port);
    idt[crate::lapic::SPURIOUS_VECTOR].set_handler_fn(spurious);
    // SAFETY: the IST indices name stacks that `gdt` installs in every
    // CPU's TSS before that CPU loads this IDT.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(gdt::DOUBLE_FAULT_IST);
        idt.non_maskable_interrupt
            .set_handler_fn(nmi)
            .set_stack_index(gdt::NMI_IST);
        idt.machine_check
            .set_handler_fn(machine_check)
            .set_stack_index(gdt::MACHINE_CHECK_IST);
    }
    idt
});

/// Loads the IDT on the calling CPU (after its GDT and TSS).
pub fn init() {
    IDT.load();
}

/// Reports an exception and stops: the one place every handler ends.
fn exception(vector: u8, name: &str, frame: &InterruptStackFrame, error_code: Option<u64>) -> ! {
    let cr2 = Cr2::read_raw();
    let rip = frame.instruction_pointer.as_u64();
    let rsp = frame.stack_pointer.as_u64();
    match error_code {
        Some(code) => panic::fatal(format_args!(
            "exception {vector} ({name}) error code {code:#x} at RIP {rip:#018x} RSP {rsp:#018x} CR2 {cr2:#018x}"
        )),
        None => panic::fatal(format_args!(
            "exception {vector} ({name}) at RIP {rip:#018x} RSP {rsp:#018x} CR2 {cr2:#018x}"
        )),
    }
}

macro_rules! handlers {
    ($($name:ident, $vector:literal, $words:literal;)*) => {$(
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            exception($vector, $words, &frame, None)
        }
    )*};
}

macro_rules! handlers_with_code {
    ($($name:ident, $vector:literal, $words:literal;)*) => {$(
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            exception($vector, $words, &frame, Some(code))
        }
    )*};
}

handlers! {
    divide_error, 0, "divide error";
    debug, 1, "debug";
    nmi, 2, "non-maskable interrupt";
    breakpoint, 3, "breakpoint";
    overflow, 4, "overflow";
    bound_range_exceeded, 5, "bound range exceeded";
    invalid_opcode, 6, "invalid opcode";
    device_not_available, 7, "device not available";
    x87_floating_point, 16, "x87 floating point";
    simd_floating_point, 19, "SIMD floating point";
    virtualization, 20, "virtualization";
    hv_injection, 28, "hypervisor injection";
}

handlers_with_code! {
    invalid_tss, 10, "invalid TSS";
    segment_not_present, 11, "segment not present";
    stack_segment_fault, 12, "stack-segment fault";
    general_protection_fault, 13, "general protection";
    alignment_check, 17, "alignment check";
    cp_protection, 21, "control protection";
    vmm_communication, 29, "VMM communication";
    security_exception, 30, "security exception";
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let cr2 = Cr2::read_raw();
    let rip = frame.instruction_pointer.as_u64();
    let rsp = frame.stack_pointer.as_u64();
    panic::fatal(format_args!(
        "exception 14 (page fault) error code {:#x} at RIP {rip:#018x} RSP {rsp:#018x} CR2 {cr2:#018x}: {}",
        code.bits(),
        page_fault_cause(code)
    ))
}

/// What a page-fault error code says happened, in words (SDM Vol. 3A
/// 4.7, "Page-Fault Exceptions": P is clear for a not-present page and
/// set for a protection violation; W/R and I/D say what the access was).
fn page_fault_cause(code: PageFaultErrorCode) -> &'static str {
    let present = code.contains(PageFaultErrorCode::PROTECTION_VIOLATION);
    if code.contains(PageFaultErrorCode::MALFORMED_TABLE) {
        "reserved bit set in a paging entry"
    } else if code.contains(PageFaultErrorCode::INSTRUCTION_FETCH) {
        if present {
            "protection violation: instruction fetch from a no-execute page"
        } else {
            "instruction fetch from a page that is not present"
        }
    } else if code.contains(PageFaultErrorCode::CAUSED_BY_WRITE) {
        if present {
            "protection violation: write to a read-only page"
        } else {
            "write to a page that is not present"
        }
    } else if present {
        "protection violation on a read"
    } else {
        "read of a page that is not present"
    }
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    exception(8, "double fault", &frame, Some(code))
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    exception(18, "machine check", &frame, None)
}

/// A kick woke this CPU: acknowledge it; the waiting loop looks at the
/// run queue next.
extern "x86-interrupt" fn kick(_frame: InterruptStackFrame) {
    crate::lapic::kicked();
    crate::lapic::eoi();
}

/// COM1 interrupted the boot CPU while it waited for work: serve the
/// port (input in, output out), then end the interrupt.
extern "x86-interrupt" fn console_port(_frame: InterruptStackFrame) {
    crate::serial_console::on_interrupt();
    crate::lapic::eoi();
}

/// An interrupt on a vector the host does not use: end it at the APIC and
/// go on (the host enables interrupts only to halt for work).
extern "x86-interrupt" fn stray(_frame: InterruptStackFrame) {
    crate::lapic::eoi();
}

/// A spurious APIC interrupt: no EOI (SDM Vol. 3A 11.9).
extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}
