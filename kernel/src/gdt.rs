//! Each CPU's GDT and TSS, with interrupt stacks for the exceptions that
//! must not run on a stack that may be broken.
//!
//! VMX needs a real TSS (host TR must not be null, SDM Vol. 3C 26.2.3), so
//! even though Ferrovisor never switches tasks each CPU loads one.

use alloc::boxed::Box;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// Interrupt stack table slots (index into the TSS's IST, 0-based as the
/// `x86_64` crate counts them).
pub const DOUBLE_FAULT_IST: u16 = 0;
/// NMIs can arrive at any instruction, including right after a stack switch.
pub const NMI_IST: u16 = 1;
/// Machine checks, likewise.
pub const MACHINE_CHECK_IST: u16 = 2;

/// Size of each interrupt stack.
const IST_STACK_SIZE: usize = 16 * 1024;

/// One CPU's GDT and the selectors it loads; its TSS lives beside it, also
/// for 'static.
pub struct CpuTables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss_selector: SegmentSelector,
}

/// The boot CPU's interrupt stacks; they must exist before the heap does.
static mut BOOT_IST_STACKS: [[u8; IST_STACK_SIZE]; 3] = [[0; IST_STACK_SIZE]; 3];
static BOOT_TSS: Once<TaskStateSegment> = Once::new();
static BOOT_TABLES: Once<CpuTables> = Once::new();

/// Each CPU's TSS address, by CPU number (the VMCS host-state TR base).
static TSS_BASE: [AtomicU64; crate::cpu::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::cpu::MAX_CPUS];
/// The TSS selector: every CPU's GDT has the same layout.
static TSS_SELECTOR: AtomicU16 = AtomicU16::new(0);

/// An application processor's three interrupt stacks: one block of
/// 2^IST_BLOCK_ORDER frames.
pub(crate) const IST_BLOCK_ORDER: u8 = 4;

fn stack_top(stack: *mut [u8; IST_STACK_SIZE]) -> VirtAddr {
    // Stacks grow down; keep the top 16-byte aligned as the ABI expects.
    (VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64).align_down(16u64)
}

/// Loads the boot CPU's GDT, segment registers and TSS.
pub fn init_boot_cpu() {
    let tss = BOOT_TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        // SAFETY: only the boot CPU runs this, once (`Once`), so nothing else
        // holds a reference to the stacks; we only take their addresses.
        let stacks = unsafe { &mut *addr_of_mut!(BOOT_IST_STACKS) };
        for (slot, stack) in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST]
            .into_iter()
            .zip(stacks)
        {
            tss.interrupt_stack_table[usize::from(slot)] = stack_top(stack);
        }
        tss
    });
    let tables = BOOT_TABLES.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_selector = gdt.append(Descriptor::tss_segment(tss));
        CpuTables {
            gdt,
            code,
            data,
            tss_selector,
        }
    });
    load(tables);
    TSS_SELECTOR.store(tables.tss_selector.0, Ordering::Release);
    TSS_BASE[0].store(core::ptr::from_ref(tss) as u64, Ordering::Release);
}

/// Builds and loads `cpu<index>`'s GDT and TSS, with interrupt stacks
/// from the frame allocator; the tables live for good (a CPU never goes
/// away).
pub fn init_ap(index: usize) -> Result<(), &'static str> {
    let block = crate::memory::alloc_block(IST_BLOCK_ORDER)
        .map_err(|_| "no memory for its interrupt stacks")?;
    let base = VirtAddr::from_ptr(crate::memory::phys().ptr(block));
    let mut tss = TaskStateSegment::new();
    for (k, slot) in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST]
        .into_iter()
        .enumerate()
    {
        let top = base + ((k + 1) * IST_STACK_SIZE) as u64;
        tss.interrupt_stack_table[usize::from(slot)] = top.align_down(16u64);
    }
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_selector = gdt.append(Descriptor::tss_segment(tss));
    let tables: &'static CpuTables = Box::leak(Box::new(CpuTables {
        gdt,
        code,
        data,
        tss_selector,
    }));
    load(tables);
    if let Some(slot) = TSS_BASE.get(index) {
        slot.store(core::ptr::from_ref(tss) as u64, Ordering::Release);
    }
    Ok(())
}

fn load(tables: &'static CpuTables) {
    tables.gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which
    // lives for 'static; the code segment is a 64-bit ring-0 code segment,
    // the data segment a writable ring-0 data segment, and the TSS
    // descriptor points at a 'static TSS.
    unsafe {
        CS::set_reg(tables.code);
        SS::set_reg(tables.data);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        load_tss(tables.tss_selector);
    }
}

/// The TSS selector (the VMCS host-state TR selector), the same on every
/// CPU.
pub fn tss_selector() -> u16 {
    TSS_SELECTOR.load(Ordering::Acquire)
}

/// The linear address of the calling CPU's TSS (the VMCS host-state TR
/// base).
pub fn tss_base() -> u64 {
    TSS_BASE
        .get(usize::from(crate::cpu::current_index()))
        .map_or(0, |b| b.load(Ordering::Acquire))
}
