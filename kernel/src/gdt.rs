//! Each CPU's GDT and TSS, with interrupt stacks for the exceptions that
//! must not run on a stack that may be broken.
//!
//! VMX needs a real TSS (host TR must not be null, SDM Vol. 3C 26.2.3), so
//! even though Ferrovisor never switches tasks each CPU loads one.

use core::ptr::addr_of_mut;

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

/// The boot CPU's TSS selector (the VMCS host-state TR selector).
pub fn tss_selector() -> u16 {
    BOOT_TABLES.get().map_or(0, |t| t.tss_selector.0)
}

/// The linear address of the boot CPU's TSS (the VMCS host-state TR base).
pub fn tss_base() -> u64 {
    BOOT_TSS
        .get()
        .map_or(0, |tss| core::ptr::from_ref(tss) as u64)
}
