//! The AMD SVM (AMD-V) backend's hardware half, in the kernel binary:
//! detecting SVM and turning it on and off on the calling CPU (VM_CR,
//! EFER.SVME, the host save area, APM Vol. 2, 15.4), the VMRUN trampoline,
//! each CPU's ASIDs, and in [`vm`] a guest's frames, nested page tables
//! and VMCBs and the code that runs them.
//!
//! The decisions (which intercepts, which state, exit decoding) come from
//! the `svm` crate (`kernel/svm`), where they are tested; this module only
//! carries them out. With that crate it is the only code that names SVM.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use alloc::string::String;

use ::svm::caps::SvmCaps;
use addr::HostPhysAddr;
use log::info;

use crate::{arch, cpu, memory};

pub mod vm;

/// IA32_EFER and its SVME bit (APM Vol. 2, 15.4).
const EFER: u32 = 0xC000_0080;
const EFER_SVME: u64 = 1 << 12;
/// VM_CR: bit 3 LOCK, bit 4 SVMDIS (APM Vol. 2, 15.30.1).
const VM_CR: u32 = 0xC001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_HSAVE_PA: where VMRUN saves the host's state (APM Vol. 2, 15.30.4).
const VM_HSAVE_PA: u32 = 0xC001_0117;

/// Marks "SVM is off on this CPU" in the per-CPU tables below.
const OFF: u64 = 0;

/// Each CPU's host save area (VM_HSAVE_PA) while SVM is on, by CPU number.
static HSAVE: [AtomicU64; cpu::MAX_CPUS] = [const { AtomicU64::new(OFF) }; cpu::MAX_CPUS];
/// Each CPU's VMSAVE area for the host's own FS, GS, TR, LDTR and
/// SYSCALL/SYSENTER state, which VMRUN and #VMEXIT do not switch (APM
/// Vol. 2, 15.5.2): the trampoline saves it before each VMRUN and loads it
/// after.
static HOST_VMSAVE: [AtomicU64; cpu::MAX_CPUS] = [const { AtomicU64::new(OFF) }; cpu::MAX_CPUS];

fn slot(table: &'static [AtomicU64; cpu::MAX_CPUS]) -> &'static AtomicU64 {
    &table[usize::from(cpu::current_index()) % cpu::MAX_CPUS]
}

/// The calling CPU's VMSAVE area for the host's state (0 while SVM is off).
pub fn host_vmsave_area() -> u64 {
    slot(&HOST_VMSAVE).load(Ordering::Acquire)
}

/// Reports CPU `k`'s SVM capability lines (when `verbose`) and turns SVM
/// on if it can; `Err` says in one line why it cannot be used. `vendor`
/// is the CPUID vendor string.
pub fn detect_and_enable(k: u16, vendor: &str, verbose: bool) -> Result<SvmCaps, String> {
    let max_ext = arch::cpuid(0x8000_0000, 0).eax;
    let has_svm = max_ext >= 0x8000_0001 && arch::cpuid(0x8000_0001, 0).ecx & (1 << 2) != 0;
    let leaf = (has_svm && max_ext >= 0x8000_000A).then(|| {
        let r = arch::cpuid(0x8000_000A, 0);
        [r.eax, r.ebx, r.ecx, r.edx]
    });
    // VM_CR exists on CPUs with SVM (APM Vol. 2, 15.30.1).
    // SAFETY: CPUID reports SVM, so the MSR exists.
    let vm_cr = has_svm.then(|| unsafe { arch::rdmsr(VM_CR) });
    let mut verdict = ::svm::caps::assess(vendor, has_svm, vm_cr, leaf);
    if let (Err(e), Some(value)) = (&verdict, vm_cr) {
        if !e.kernel_may_enable() {
            return Err(alloc::format!("{e}"));
        }
        // Firmware turned SVM off but left VM_CR unlocked: it may be
        // turned back on (APM Vol. 2, 15.30.1).
        // SAFETY: the MSR exists and is not locked, so SVMDIS may be
        // written; nothing else depends on it.
        unsafe { arch::wrmsr(VM_CR, value & !VM_CR_SVMDIS) };
        info!("cpu{k}: svm: VM_CR.SVMDIS was set and unlocked; cleared it");
        // SAFETY: as above.
        let vm_cr = Some(unsafe { arch::rdmsr(VM_CR) });
        verdict = ::svm::caps::assess(vendor, has_svm, vm_cr, leaf);
    }
    let caps = verdict.map_err(|e| alloc::format!("{e}"))?;
    if verbose {
        for line in caps.report_lines() {
            info!("cpu{k}: {line}");
        }
    }
    enable(k).map(|()| caps)
}

/// Turns SVM on on the calling CPU: EFER.SVME and the host save areas.
fn enable(k: u16) -> Result<(), String> {
    let hsave = memory::alloc_zeroed_frame()
        .map_err(|e| alloc::format!("no frame for the host save area: {e}"))?;
    let vmsave = match memory::alloc_zeroed_frame() {
        Ok(f) => f,
        Err(e) => {
            let _ = memory::free_frame(hsave);
            return Err(alloc::format!("no frame for the host VMSAVE area: {e}"));
        }
    };
    // SAFETY: the CPU has SVM and VM_CR.SVMDIS is clear (checked by
    // `assess`), so EFER.SVME may be set; it only makes the SVM
    // instructions usable. VM_HSAVE_PA gets a 4 KiB-aligned frame of our
    // own, used for nothing else.
    unsafe {
        arch::wrmsr(EFER, arch::rdmsr(EFER) | EFER_SVME);
        arch::wrmsr(VM_HSAVE_PA, hsave.as_u64());
    }
    slot(&HSAVE).store(hsave.as_u64(), Ordering::Release);
    slot(&HOST_VMSAVE).store(vmsave.as_u64(), Ordering::Release);
    info!("cpu{k}: svm: EFER.SVME set, host save area at {hsave}");
    Ok(())
}

/// Turns SVM off on the calling CPU if it is on; called on the way to power
/// off, safe on any path, the fatal one included.
pub fn disable() {
    if slot(&HSAVE).swap(OFF, Ordering::AcqRel) == OFF {
        return;
    }
    // SAFETY: no guest runs on this CPU any more (the machine is on its
    // way down); clearing EFER.SVME only makes the SVM instructions
    // undefined again. The frames are not given back: on the fatal path
    // the frame allocator's lock may be held by the CPU that failed.
    unsafe { arch::wrmsr(EFER, arch::rdmsr(EFER) & !EFER_SVME) };
    info!("cpu{}: svm: EFER.SVME cleared", cpu::current_index());
}

/// Whether an application processor with `ap` runs the VMCBs the boot CPU
/// with `boot` sets up: the features the VMCBs use must be there.
pub fn same_guest_controls(ap: &SvmCaps, boot: &SvmCaps) -> bool {
    ap == boot
}

/// Each CPU's ASIDs: the next one to hand out and the generation, bumped
/// when they run out (then every ASID is handed out anew, and the first
/// entry of the generation flushes the whole TLB).
static NEXT_ASID: [AtomicU32; cpu::MAX_CPUS] = [const { AtomicU32::new(1) }; cpu::MAX_CPUS];
static ASID_GENERATION: [AtomicU64; cpu::MAX_CPUS] = [const { AtomicU64::new(1) }; cpu::MAX_CPUS];

/// Hands out an ASID on the calling CPU for a vCPU that has none valid
/// here, from `1..asids`: `(asid, generation, flush_all)`, where
/// `flush_all` says the TLB must be flushed whole before the entry (the
/// ASIDs ran out and are being reused).
pub fn new_asid(asids: u32) -> (u32, u64, bool) {
    let k = usize::from(cpu::current_index()) % cpu::MAX_CPUS;
    // Only this CPU touches its own entries, with interrupts off.
    let next = NEXT_ASID[k].load(Ordering::Relaxed);
    let generation = ASID_GENERATION[k].load(Ordering::Relaxed);
    if next < asids.max(2) {
        NEXT_ASID[k].store(next + 1, Ordering::Relaxed);
        (next, generation, false)
    } else {
        NEXT_ASID[k].store(2, Ordering::Relaxed);
        ASID_GENERATION[k].store(generation + 1, Ordering::Relaxed);
        (1, generation + 1, true)
    }
}

/// The calling CPU's ASID generation: a vCPU's ASID is valid here while
/// it was handed out here in this generation.
pub fn asid_generation() -> u64 {
    ASID_GENERATION[usize::from(cpu::current_index()) % cpu::MAX_CPUS].load(Ordering::Relaxed)
}

// The VMRUN path. `ferrovisor_svm_run(gprs, vmcb, host_vmsave)` saves the
// host's callee-saved registers, the GPR file pointer and both physical
// addresses on the stack, saves the host's VMSAVE state (FS, GS, TR, LDTR,
// KernelGsBase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER), loads the guest's with
// VMLOAD, loads every guest GPR but RAX and RSP (the VMCB holds both), and
// with the global interrupt flag clear (CLGI) sets RFLAGS.IF, so that a
// physical interrupt that arrives while the guest runs ends it with
// #VMEXIT(INTR) (with V_INTR_MASKING the host's IF at VMRUN gates physical
// interrupts, APM Vol. 2, 15.21.1) instead of being lost or delivered
// through the guest's IDT; GIF = 0 keeps it pending until then. VMRUN
// returns after the #VMEXIT with RAX = the VMCB's address (the host's RAX
// is restored, APM Vol. 2, 15.6): the guest GPRs go back into the file,
// VMSAVE stores the guest's VMSAVE state, VMLOAD brings the host's back,
// and CLI before STGI leaves a pending interrupt pending (the caller lets
// it in when it is ready).
//
// GPR file offsets follow `svm::regs::Gprs` (8 bytes each in encoding
// order): RCX 8, RDX 16, RBX 24, RBP 40, RSI 48, RDI 56, R8..R15 64..120.
core::arch::global_asm!(
    ".global ferrovisor_svm_run",
    "ferrovisor_svm_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "push rdx",
    "push rsi",
    "clgi",
    "mov rax, rdx",
    "vmsave rax",
    "mov rax, rsi",
    "vmload rax",
    "mov rcx, [rdi + 8]",
    "mov rdx, [rdi + 16]",
    "mov rbx, [rdi + 24]",
    "mov rbp, [rdi + 40]",
    "mov rsi, [rdi + 48]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rdi, [rdi + 56]",
    "sti",
    "vmrun rax",
    "push rdi",
    "mov rdi, [rsp + 24]",
    "mov [rdi + 8], rcx",
    "mov [rdi + 16], rdx",
    "mov [rdi + 24], rbx",
    "mov [rdi + 40], rbp",
    "mov [rdi + 48], rsi",
    "mov [rdi + 64], r8",
    "mov [rdi + 72], r9",
    "mov [rdi + 80], r10",
    "mov [rdi + 88], r11",
    "mov [rdi + 96], r12",
    "mov [rdi + 104], r13",
    "mov [rdi + 112], r14",
    "mov [rdi + 120], r15",
    "pop rax",
    "mov [rdi + 56], rax",
    "pop rax",
    "vmsave rax",
    "pop rax",
    "vmload rax",
    "cli",
    "stgi",
    "pop rdi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
);

extern "sysv64" {
    fn ferrovisor_svm_run(gprs: *mut ::svm::regs::Gprs, vmcb: u64, host_vmsave: u64);
}

/// Runs the guest of the VMCB at `vmcb` until its next #VMEXIT, its GPRs
/// but RAX and RSP loaded from and stored back to `gprs`.
///
/// # Safety
///
/// SVM must be on on this CPU (EFER.SVME, VM_HSAVE_PA) with interrupts
/// disabled; `vmcb` must be a VMCB whose intercepts, nested page tables
/// and state give the guest only the memory and devices it may have, with
/// VMRUN intercepted; `host_vmsave` must be this CPU's VMSAVE frame.
#[inline]
pub unsafe fn svm_run(gprs: &mut ::svm::regs::Gprs, vmcb: HostPhysAddr, host_vmsave: u64) {
    // SAFETY: the caller's promise covers the VMCB and this CPU; the
    // trampoline keeps every register the System V ABI has the callee
    // keep, touches memory only on this stack, in `gprs` (borrowed) and in
    // the two frames by physical address, and returns with RFLAGS.IF
    // clear and GIF set, as it found them.
    unsafe { ferrovisor_svm_run(gprs, vmcb.as_u64(), host_vmsave) }
}

/// Lets a physical interrupt that ended a guest's run (#VMEXIT(INTR): it
/// is still pending in the local APIC) be delivered through the host's
/// IDT, whose handlers end it: one instruction with interrupts on.
pub fn take_pending_interrupt() {
    x86_64::instructions::interrupts::enable();
    x86_64::instructions::nop();
    x86_64::instructions::interrupts::disable();
}
