//! The application processors: started from the MADT's list with INIT and
//! two start-up IPIs (SDM Vol. 3A 9.4, "Multiple-Processor (MP)
//! Initialization"), one at a time, each through a small start-up routine
//! copied to a page below 1 MiB that takes it from real mode to long mode
//! on the kernel's page tables and into [`ap_entry`] on its own stack.
//!
//! There each CPU loads its own GDT, TSS and interrupt stacks, the shared
//! IDT, enables its local APIC and VT-x, and says `cpu<k>: VT-x ready`. A
//! CPU that does not answer, or cannot turn VT-x on, is reported and left
//! out; the others go on. CPUs that are up wait (halted, interrupts on)
//! for the guests' scheduler loop, and at power-off leave VMX operation
//! and halt.
//!
//! The start-up routine (`ferrovisor_ap_start` .. `ferrovisor_ap_end`)
//! runs at physical page P, entered by the SIPI with CS = P >> 4, IP = 0:
//! it loads its own GDT (32-bit code 0x08, data 0x10, 64-bit code 0x18),
//! enters protected mode, turns on PAE, loads CR3, sets EFER.LME and NXE,
//! turns on paging and jumps to 64-bit code, which loads RSP, RDI (the
//! CPU's number) and jumps to `ap_entry`. The boot CPU patches the data
//! words at the routine's end (GDT base, far-jump targets, CR3, stack,
//! argument, entry) before each start. CR3 must lie below 4 GiB (it is
//! loaded in 32-bit mode), and page P is identity-mapped while the APs
//! start, since the 64-bit code runs there until its jump: read-only and
//! executable (W^X, see `wx`), and taken down once they have started. The
//! routine never writes its page once paging is on: its descriptors come
//! with the accessed bit already set, so loading CS = 0x18 does not write
//! the GDT (SDM Vol. 3A 3.4.5.1: the processor sets it only when clear).

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use alloc::vec::Vec;

use crate::virt::Capabilities;
use acpi::Madt;
use log::{info, warn};
use mm::addr::{HostPhysAddr, PAGE_SIZE};

use crate::drivers::{self, Clock};
use crate::{arch, cpu, gdt, interrupts, lapic, memory};

core::arch::global_asm!(
    r#"
    .pushsection .text.ferrovisor_ap, "ax"
    .balign 16
    .global ferrovisor_ap_start
ferrovisor_ap_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movzwl %ax, %esi
    shll $4, %esi
    lgdtl (ferrovisor_ap_gdtr - ferrovisor_ap_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(ferrovisor_ap_jmp32 - ferrovisor_ap_start)

    .code32
    .global ferrovisor_ap_prot
ferrovisor_ap_prot:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (ferrovisor_ap_cr3 - ferrovisor_ap_start)(%esi), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl *(ferrovisor_ap_jmp64 - ferrovisor_ap_start)(%esi)

    .code64
    .global ferrovisor_ap_long
ferrovisor_ap_long:
    movl %esi, %esi
    xorl %eax, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (ferrovisor_ap_stack - ferrovisor_ap_start)(%rsi), %rsp
    movq (ferrovisor_ap_arg - ferrovisor_ap_start)(%rsi), %rdi
    movq (ferrovisor_ap_entry - ferrovisor_ap_start)(%rsi), %rax
    pushq $0
    jmpq *%rax

    .balign 8
    .global ferrovisor_ap_gdt
ferrovisor_ap_gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00AF9B000000FFFF
ferrovisor_ap_gdt_end:
    .global ferrovisor_ap_gdtr
ferrovisor_ap_gdtr:
    .word ferrovisor_ap_gdt_end - ferrovisor_ap_gdt - 1
    .long 0
    .global ferrovisor_ap_jmp32
ferrovisor_ap_jmp32:
    .long 0
    .word 0x08
    .global ferrovisor_ap_jmp64
ferrovisor_ap_jmp64:
    .long 0
    .word 0x18
    .balign 8
    .global ferrovisor_ap_cr3
ferrovisor_ap_cr3:
    .quad 0
    .global ferrovisor_ap_stack
ferrovisor_ap_stack:
    .quad 0
    .global ferrovisor_ap_arg
ferrovisor_ap_arg:
    .quad 0
    .global ferrovisor_ap_entry
ferrovisor_ap_entry:
    .quad 0
    .global ferrovisor_ap_end
ferrovisor_ap_end:
    .popsection
"#,
    options(att_syntax)
);

extern "C" {
    static ferrovisor_ap_start: u8;
    static ferrovisor_ap_prot: u8;
    static ferrovisor_ap_long: u8;
    static ferrovisor_ap_gdt: u8;
    static ferrovisor_ap_gdtr: u8;
    static ferrovisor_ap_jmp32: u8;
    static ferrovisor_ap_jmp64: u8;
    static ferrovisor_ap_cr3: u8;
    static ferrovisor_ap_stack: u8;
    static ferrovisor_ap_arg: u8;
    static ferrovisor_ap_entry: u8;
    static ferrovisor_ap_end: u8;
}

/// The most CPUs Ferrovisor runs on.
pub const MAX_CPUS: usize = cpu::MAX_CPUS;

/// Each AP's stack: 2^5 frames (128 KiB).
const STACK_ORDER: u8 = 5;

/// The frames [`start_aps`] takes from the allocator for good when the
/// MADT lists `cpus` enabled CPUs (this one among them): each other CPU's
/// stack, interrupt stacks and VMXON region, and the page tables that may
/// be needed to identity-map the start-up page. The configuration check,
/// which runs before the other CPUs start, keeps this much out of what the
/// guests may take.
pub fn frames_for_other_cpus(cpus: usize) -> u64 {
    /// The kernel's page tables for the start-up page: a PDPT, a PD, a PT.
    const START_UP_MAPPING: u64 = 3;
    let others = cpus.saturating_sub(1).min(MAX_CPUS.saturating_sub(1)) as u64;
    let per_cpu = (1u64 << STACK_ORDER) + (1u64 << crate::gdt::IST_BLOCK_ORDER) + 1;
    if others == 0 {
        0
    } else {
        others * per_cpu + START_UP_MAPPING
    }
}

/// Where each CPU stands.
const DOWN: u8 = 0;
/// Sent the SIPIs; has not reached Rust yet.
const STARTING: u8 = 1;
/// In `ap_entry`: the start-up page is free again.
const ALIVE: u8 = 2;
/// Up with VT-x on: it runs guests.
const READY: u8 = 3;
/// Up, but VT-x could not be turned on: halted for good.
const FAILED: u8 = 4;
/// Left VMX operation at power-off and halted.
const PARKED: u8 = 5;

static STATE: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(DOWN) }; MAX_CPUS];
/// Set at power-off: APs leave VMX operation and halt.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// The boot CPU's VT-x capabilities: an AP whose own give other controls
/// runs no guests.
static BOOT_CAPS: spin::Once<Capabilities> = spin::Once::new();
/// The TSC rate, for the APs' own waits.
static CLOCK_HZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How long an AP has to reach `ap_entry`, and then to finish its VT-x
/// bring-up.
const ARRIVAL_MS: u64 = 500;
const READY_MS: u64 = 5000;

/// Offset of a symbol of the start-up routine from its start.
fn offset(sym: *const u8) -> usize {
    let start = core::ptr::addr_of!(ferrovisor_ap_start);
    sym as usize - start as usize
}

/// Writes `value` at symbol `sym` of the start-up routine copied to the
/// page mapped at `page`.
///
/// # Safety
/// `page` must map the copied routine, writable, and no CPU may be running
/// it.
unsafe fn patch<T>(page: *mut u8, sym: *const u8, value: T) {
    // SAFETY: the caller's promise; `sym` lies inside the routine, which
    // is shorter than the page.
    unsafe { page.add(offset(sym)).cast::<T>().write_unaligned(value) }
}

/// Starts every enabled CPU the MADT lists besides this one, this one
/// having VT-x capabilities `caps` (`None`: no usable VT-x; the others are
/// still started, report their own VT-x and halt, so the line for each
/// CPU says what it is). Returns how many CPUs are ready to run guests,
/// this one included. `tsc_hz` times the waits.
pub fn start_aps(madt: &Madt, tsc_hz: u64, caps: Option<&Capabilities>) -> usize {
    CLOCK_HZ.store(tsc_hz, Ordering::Relaxed);
    if let Some(caps) = caps {
        BOOT_CAPS.call_once(|| *caps);
        STATE[0].store(READY, Ordering::Release);
    }
    let ghost = crate::selftest::ghost_cpu();
    let apic_ids: Vec<u32> = ghost
        .into_iter()
        .chain(madt.enabled_cpus().map(|c| c.apic_id))
        .filter(|&id| id != lapic::id())
        .collect();
    let others = apic_ids.len();
    if others == 0 {
        info!("smp: 1 CPU ({madt})");
        return ready_cpus().len();
    }
    let Some(page) = memory::low_page() else {
        warn!("smp: no usable page below 1 MiB for the start-up code; running on cpu0 only");
        return ready_cpus().len();
    };
    let (cr3, _) = x86_64::registers::control::Cr3::read_raw();
    let cr3 = cr3.start_address().as_u64();
    if cr3 >= 1 << 32 {
        warn!("smp: the kernel's page tables lie above 4 GiB ({cr3:#x}); running on cpu0 only");
        return ready_cpus().len();
    }
    let mapped_here = match drivers::mmio::identity_map(page) {
        Ok(new) => new,
        Err(e) => {
            warn!("smp: cannot map the start-up page: {e}; running on cpu0 only");
            return ready_cpus().len();
        }
    };
    install(page, cr3);
    let clock = Clock::new(tsc_hz);
    let mut next = 1usize;
    for apic_id in apic_ids {
        if next >= MAX_CPUS || apic_id >= MAX_CPUS as u32 {
            warn!(
                "smp: CPU with APIC ID {apic_id} left out: Ferrovisor runs at most {MAX_CPUS} CPUs with APIC IDs below {MAX_CPUS}"
            );
            continue;
        }
        if start_one(page, next, apic_id, clock) {
            next += 1;
        }
    }
    if mapped_here {
        drivers::mmio::unmap_identity(page);
    }
    let ready = ready_cpus().len();
    info!(
        "smp: {ready} of {} CPUs ready to run guests ({madt})",
        others + 1
    );
    ready
}

/// Copies the start-up routine to `page` and fills in what every AP
/// shares.
fn install(page: HostPhysAddr, cr3: u64) {
    let (start, end) = (
        core::ptr::addr_of!(ferrovisor_ap_start),
        core::ptr::addr_of!(ferrovisor_ap_end),
    );
    let len = end as usize - start as usize;
    let dst = memory::phys().ptr(page);
    let base = page.as_u64() as u32;
    // SAFETY: the routine is `len` bytes of the kernel image (well under a
    // page); `page` is usable RAM below 1 MiB that the frame allocator
    // never hands out, mapped writable at `phys().ptr`; no AP runs yet.
    unsafe {
        core::ptr::copy_nonoverlapping(start, dst, len);
        patch(
            dst,
            core::ptr::addr_of!(ferrovisor_ap_gdtr).wrapping_add(2),
            base + offset(core::ptr::addr_of!(ferrovisor_ap_gdt)) as u32,
        );
        patch(
            dst,
            core::ptr::addr_of!(ferrovisor_ap_jmp32),
            base + offset(core::ptr::addr_of!(ferrovisor_ap_prot)) as u32,
        );
        patch(
            dst,
            core::ptr::addr_of!(ferrovisor_ap_jmp64),
            base + offset(core::ptr::addr_of!(ferrovisor_ap_long)) as u32,
        );
        patch(dst, core::ptr::addr_of!(ferrovisor_ap_cr3), cr3);
        patch(
            dst,
            core::ptr::addr_of!(ferrovisor_ap_entry),
            ap_entry as extern "C" fn(u64) -> ! as usize as u64,
        );
    }
}

/// Starts the CPU with APIC ID `apic_id` as `cpu<index>`; true when it
/// came up (ready, or up without VT-x), so the number is used.
fn start_one(page: HostPhysAddr, index: usize, apic_id: u32, clock: Clock) -> bool {
    let stack = match memory::alloc_block(STACK_ORDER) {
        Ok(stack) => stack,
        Err(e) => {
            warn!("smp: no stack for the CPU with APIC ID {apic_id}: {e}; left out");
            return false;
        }
    };
    let top = memory::phys().ptr(stack) as u64 + (PAGE_SIZE << STACK_ORDER);
    let dst = memory::phys().ptr(page);
    // SAFETY: the data words lie inside the routine copied to `page` by
    // `install`; the previous AP has left the page (it reached ALIVE or was
    // sent back to wait-for-SIPI by INIT).
    unsafe {
        patch(dst, core::ptr::addr_of!(ferrovisor_ap_stack), top);
        patch(dst, core::ptr::addr_of!(ferrovisor_ap_arg), index as u64);
    }
    cpu::expect(index, apic_id);
    STATE[index].store(STARTING, Ordering::SeqCst);
    let vector = (page.as_u64() >> 12) as u8;
    if let Err(e) = lapic::start_cpu(apic_id, vector, clock) {
        warn!("smp: CPU with APIC ID {apic_id} left out: {e}");
        let _ = memory::free_block(stack, STACK_ORDER);
        return false;
    }
    let arrived = drivers::poll(clock.deadline_ms(ARRIVAL_MS), || {
        (STATE[index].load(Ordering::Acquire) != STARTING).then_some(())
    });
    if arrived.is_none() {
        // Send it back to wait-for-SIPI so it cannot run the start-up code
        // later with the next CPU's stack.
        let _ = lapic::park(apic_id, clock);
        warn!("smp: CPU with APIC ID {apic_id} left out: it did not answer the start-up IPIs within {ARRIVAL_MS} ms");
        let _ = memory::free_block(stack, STACK_ORDER);
        return false;
    }
    let settled = drivers::poll(clock.deadline_ms(READY_MS), || {
        matches!(STATE[index].load(Ordering::Acquire), READY | FAILED).then_some(())
    });
    if settled.is_none() {
        warn!("smp: cpu{index} (APIC ID {apic_id}) left out: it did not finish its bring-up within {READY_MS} ms");
    }
    true
}

/// Where an application processor starts in Rust, on its own stack, with
/// interrupts off, on the kernel's page tables and the start-up GDT.
extern "C" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    cpu::register_ap(index);
    STATE[index].store(ALIVE, Ordering::Release);
    if let Err(e) = gdt::init_ap(index) {
        warn!("cpu{index}: left out: {e}");
        STATE[index].store(FAILED, Ordering::Release);
        arch::halt_forever();
    }
    interrupts::init();
    crate::wx::check_this_cpu(index);
    lapic::enable_this_cpu();
    match cpu::report_ap() {
        Ok(_) if BOOT_CAPS.get().is_none() => {
            warn!("cpu{index}: runs no guests: cpu0 has no usable VT-x or AMD-V");
            crate::virt::disable();
            STATE[index].store(FAILED, Ordering::Release);
            arch::halt_forever()
        }
        Ok(caps) if !same_controls(&caps) => {
            warn!("cpu{index}: left out: its capabilities give other guest controls than cpu0's");
            crate::virt::disable();
            STATE[index].store(FAILED, Ordering::Release);
            arch::halt_forever()
        }
        Ok(_) => {
            STATE[index].store(READY, Ordering::Release);
            crate::guests::ap_main(index)
        }
        Err(name) => {
            warn!("cpu{index}: left out: no {name}, it runs no guests");
            STATE[index].store(FAILED, Ordering::Release);
            arch::halt_forever()
        }
    }
}

/// Whether an AP with capabilities `caps` runs guests with the same VMCS
/// controls, preemption-timer rate and VMCS revision as the boot CPU.
fn same_controls(caps: &Capabilities) -> bool {
    let Some(boot) = BOOT_CAPS.get() else {
        return false;
    };
    crate::virt::same_guest_controls(caps, boot)
}

/// The numbers of the CPUs up with VT-x on, the boot CPU first.
pub fn ready_cpus() -> Vec<usize> {
    (0..MAX_CPUS).filter(|&i| is_ready(i)).collect()
}

/// Whether power-off has been asked for (APs then stop taking work).
pub fn shutting_down() -> bool {
    SHUTDOWN.load(Ordering::Acquire)
}

/// Whether `cpu<index>` is up with VT-x on.
pub fn is_ready(index: usize) -> bool {
    STATE
        .get(index)
        .is_some_and(|s| s.load(Ordering::Acquire) == READY)
}

/// The TSC clock the APs time their waits with.
pub fn clock() -> Clock {
    Clock::new(CLOCK_HZ.load(Ordering::Relaxed).max(1))
}

/// At power-off: asks every AP to leave VMX operation and halt, and waits
/// (briefly) until they have.
pub fn park_others() {
    SHUTDOWN.store(true, Ordering::Release);
    let clock = clock();
    for (index, state) in STATE.iter().enumerate().skip(1) {
        if state.load(Ordering::Acquire) == READY {
            lapic::kick(cpu::apic_id(index), clock);
        }
    }
    let parked = drivers::poll(clock.deadline_ms(100), || {
        (1..MAX_CPUS)
            .all(|i| STATE[i].load(Ordering::Acquire) != READY)
            .then_some(())
    });
    if parked.is_none() {
        warn!("smp: some CPUs did not leave VMX operation before power-off");
    }
}

/// Called by an AP once it has left VMX operation at power-off.
pub fn parked(index: usize) -> ! {
    if let Some(s) = STATE.get(index) {
        s.store(PARKED, Ordering::Release);
    }
    arch::halt_forever()
}
