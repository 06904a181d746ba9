//! The kernel's privileged instructions that the `x86_64` crate does not
//! already wrap: port I/O by width, halting the CPU, masking the 8259s,
//! CPUID, XCR0 and the XSAVE family, CR2, the debug registers and MSRs by
//! number (the state a vCPU switch moves), and the zeroing of large memory
//! with interrupts off and the stack's translation dropped after it.
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

/// Writes a 32-bit doubleword to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: forwarded to the caller's contract.
    unsafe { Port::new(port).write(value) }
}

/// Reads a 32-bit doubleword from an I/O port.
///
/// # Safety
/// As for [`inw`].
pub unsafe fn inl(port: u16) -> u32 {
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

/// Masks every line of both 8259 interrupt controllers, so the legacy
/// timer and devices the firmware left enabled cannot interrupt the host
/// (the host runs with interrupts off; VM exits on external interrupts
/// would otherwise repeat forever).
pub fn mask_legacy_pic() {
    // SAFETY: writing the interrupt mask registers (OCW1) of the master
    // (0x21) and slave (0xA1) 8259 only masks interrupt lines; the host
    // uses none of them.
    unsafe {
        outb(0x21, 0xFF);
        outb(0xA1, 0xFF);
    }
}

/// CPUID.(leaf, subleaf) on this CPU.
pub fn cpuid(leaf: u32, subleaf: u32) -> vcpu::cpuid::CpuidResult {
    let r = raw_cpuid::cpuid!(leaf, subleaf);
    vcpu::cpuid::CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Loads XCR0.
///
/// # Safety
/// CR4.OSXSAVE must be set and `value` must be valid for this CPU
/// (bit 0 set, only supported components, the architectural pairings), or
/// XSETBV raises #GP.
pub unsafe fn xsetbv(value: u64) {
    // SAFETY: the caller's contract; XSETBV changes which state components
    // XSAVE/XRSTOR and the vector instructions use, and the host uses none.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags));
    }
}

/// XCR0, the state components XSAVE and the vector instructions use.
/// Only where CR4.OSXSAVE is set (XGETBV raises #UD otherwise).
pub fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 only reads XCR0; the callers run with
    // CR4.OSXSAVE set (`switched::prepare_this_cpu` on a CPU with XSAVE).
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Saves the extended state components enabled in XCR0 into `area`
/// (standard format).
///
/// # Safety
/// CR4.OSXSAVE must be set; `area` must be 64-byte aligned, writable and as
/// large as CPUID.(EAX=0DH,ECX=0):ECX says.
pub unsafe fn xsave(area: *mut u8) {
    // SAFETY: the caller's contract; RFBM all ones saves every enabled
    // component.
    unsafe {
        core::arch::asm!("xsave64 [{}]", in(reg) area, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack, preserves_flags));
    }
}

/// Restores the extended state components enabled in XCR0 from `area`
/// (standard format; components whose XSTATE_BV bit is clear get their
/// initial values, so an all-zero area is the power-on state).
///
/// # Safety
/// As [`xsave`], and the area must hold a valid XSAVE image (XCOMP_BV 0,
/// no reserved XSTATE_BV bits), as one written by [`xsave`] or zeroed.
pub unsafe fn xrstor(area: *const u8) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("xrstor64 [{}]", in(reg) area, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack, preserves_flags));
    }
}

/// Saves the x87/SSE state into `area` (FXSAVE, for CPUs without XSAVE).
///
/// # Safety
/// CR4.OSFXSR must be set; `area` must be 16-byte aligned, 512 writable
/// bytes.
pub unsafe fn fxsave(area: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags)) }
}

/// Restores the x87/SSE state from `area` (FXRSTOR).
///
/// # Safety
/// As [`fxsave`], and the area must hold an image written by [`fxsave`].
pub unsafe fn fxrstor(area: *const u8) {
    // SAFETY: the caller's contract.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags)) }
}

/// Zeroes `len` bytes at `dst` with interrupts off, then drops this CPU's
/// cached translation of the page the stack pointer is in (INVLPG) before
/// the stack is used again; interrupts are as they were on return.
///
/// The INVLPG is for Bochs 2.7, the VT-x test engine: a machine above 2048
/// MiB gets at most 2048 MiB of host memory there, and Bochs pages 128 KiB
/// blocks out to a file as others are touched. Its CPU keeps a pointer to
/// the current stack page's block that the paging does not check (only
/// the TLBs' pointers are), so once a long sweep has pushed the stack page
/// out of the TLB and its block out to the file, the next `ret` reads a
/// reused block (the kernel faulted at RIP 0 after zeroing a 2 GiB guest's
/// RAM). INVLPG makes Bochs drop that pointer; with interrupts off until
/// then no handler pushes through it. On hardware it costs one TLB entry.
/// It covers the kernel's one long sweep (a halted CPU keeps its stack page
/// in its TLB, which Bochs does check); a guest that itself touches more
/// than 2048 MiB under Bochs can still meet the same fault in its own code.
///
/// # Safety
/// `dst..dst + len` must be memory the caller owns and may overwrite, with
/// nothing else using it.
pub unsafe fn zero_and_refresh_stack(dst: *mut u8, len: usize) {
    // SAFETY: the caller owns `dst..dst + len`; the two REP STOS write
    // exactly those bytes (DF is clear, as the ABI has it at every
    // `asm!`). POPFQ restores IF as PUSHFQ saved it, on the stack the
    // compiler lets the block use (no `nostack`). INVLPG only drops a
    // cached translation, which the next access walks the tables for.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "cli",
            "rep stosq",
            "mov rcx, {tail}",
            "rep stosb",
            "invlpg [rsp]",
            "popfq",
            tail = in(reg) len % 8,
            inout("rdi") dst => _,
            inout("rcx") len / 8 => _,
            in("rax") 0u64,
        )
    }
}

/// Reads CR2.
pub fn read_cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// Writes CR2 (a guest's page-fault address, switched with its vCPU).
///
/// # Safety
/// Only the page-fault handler reads CR2; the caller must be switching a
/// guest's value in, which the host does not read.
pub unsafe fn write_cr2(value: u64) {
    // SAFETY: the caller's contract; CR2 has no other effect.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) value, options(nostack, preserves_flags)) }
}

/// Reads DR0..DR3 and DR6.
pub fn read_debug_registers() -> [u64; 5] {
    let (d0, d1, d2, d3, d6): (u64, u64, u64, u64, u64);
    // SAFETY: reading debug registers at CPL 0 has no side effects (DR7.GD
    // is clear: VM exits load DR7 with 0x400).
    unsafe {
        core::arch::asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3", "mov {}, dr6",
            out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3, out(reg) d6, options(nostack, nomem, preserves_flags));
    }
    [d0, d1, d2, d3, d6]
}

/// Writes DR0..DR3 and DR6.
///
/// # Safety
/// DR7 must not enable the breakpoints for the host (VM exits load DR7
/// with 0x400, which enables none), so the addresses are inert until the
/// guest's DR7 is loaded by VM entry.
pub unsafe fn write_debug_registers(values: [u64; 5]) {
    let [d0, d1, d2, d3, d6] = values;
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}", "mov dr6, {}",
            in(reg) d0, in(reg) d1, in(reg) d2, in(reg) d3, in(reg) d6, options(nostack, nomem, preserves_flags));
    }
}

/// Reads the MSR `index`.
///
/// # Safety
/// The MSR must exist on this CPU (#GP otherwise).
pub unsafe fn rdmsr(index: u32) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { x86_64::registers::model_specific::Msr::new(index).read() }
}

/// Writes the MSR `index`.
///
/// # Safety
/// The MSR must exist, `value` be valid for it, and the host must not
/// depend on its value (the callers switch guest-only MSRs).
pub unsafe fn wrmsr(index: u32, value: u64) {
    // SAFETY: the caller's contract.
    unsafe { x86_64::registers::model_specific::Msr::new(index).write(value) }
}
