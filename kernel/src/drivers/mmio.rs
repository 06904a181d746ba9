//! Uncached mappings of device registers (MMIO BARs) in the kernel's
//! window onto physical memory.
//!
//! The bootloader maps physical memory at a fixed offset with 2 MiB pages,
//! write-back, from 0 up to the end of the highest memory-map region but
//! never less than 4 GiB (bootloader 0.11 `max_phys_addr`), so a BAR below
//! 4 GiB is usually reachable already, though `PhysMap::covers` (which
//! only knows the memory map) may not say so, and it is cached. Register
//! accesses must not be cached, combined or reordered (SDM Vol. 3A,
//! "Memory Cache Control", "Methods of Caching Available"): each page of a
//! BAR is given PCD|PWT, which with the power-on PAT selects UC (same
//! chapter, "Page Attribute Table (PAT)": PAT entry 3). A 2 MiB page holding a BAR is split into 512 4 KiB pages with the
//! same frames and flags first, so nothing else in it changes; a page the
//! window lacks (a BAR above the mapped range) is mapped anew at
//! `offset + BAR`, with page-table frames from `memory::alloc_zeroed_frame`.
//!
//! Either way the BAR ends up at `memory::phys().ptr(BAR)`, the address
//! every other physical access uses.

use mm::addr::{HostPhysAddr, PAGE_SIZE};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
    Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use log::debug;

use super::DriverError;
use crate::memory;

/// Size of a large page.
const LARGE_PAGE: u64 = 0x20_0000;

/// The flags of a device-register page: present, writable, never
/// executed, uncached.
const MMIO_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::NO_EXECUTE)
    .union(PageTableFlags::NO_CACHE)
    .union(PageTableFlags::WRITE_THROUGH);

/// Page-table frames for new mappings, from the kernel's allocator.
struct KernelFrames;

// SAFETY: every frame handed out comes from the buddy allocator, which
// gives each frame to one owner only; it is zeroed and unused.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let frame = memory::alloc_zeroed_frame().ok()?;
        PhysFrame::from_start_address(PhysAddr::new(frame.as_u64())).ok()
    }
}

/// Makes `[phys, phys + len)` reachable uncached at
/// `memory::phys().ptr(phys)` and returns that pointer.
///
/// Run on the boot CPU before any other CPU starts: the page tables are
/// shared and only this CPU's TLB is flushed.
///
/// # Errors
///
/// [`DriverError::Map`] when the range wraps, lies outside the canonical
/// window, sits inside a 1 GiB page, or the window maps another frame at
/// its address; [`DriverError::Memory`] when no page-table frame is left.
pub fn map_uncached(phys: HostPhysAddr, len: u64) -> Result<*mut u8, DriverError> {
    let map_err = |reason| DriverError::Map {
        phys: phys.as_u64(),
        reason,
    };
    let window = memory::phys();
    let offset = window.ptr(HostPhysAddr::new(0)) as u64;
    let first = phys.as_u64() & !(PAGE_SIZE - 1);
    let end = phys
        .as_u64()
        .checked_add(len.max(1))
        .and_then(|e| e.checked_next_multiple_of(PAGE_SIZE))
        .ok_or(map_err("the range wraps around"))?;
    let (l4_frame, _) = Cr3::read();
    let l4_ptr = window.ptr(HostPhysAddr::new(l4_frame.start_address().as_u64())) as *mut PageTable;
    // SAFETY: CR3 names the live level-4 table, which lies in RAM the
    // bootloader mapped at the window (its page tables are in the memory
    // map, out of the frame allocator's reach); the boot CPU is the only
    // one running and nothing else holds a reference to the tables while
    // this function runs.
    let l4 = unsafe { &mut *l4_ptr };
    // SAFETY: all physical memory the tables live in is mapped at `offset`
    // (the bootloader's window), as `OffsetPageTable` requires.
    let mut mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(offset)) };
    let mut page_phys = first;
    while page_phys < end {
        let virt = offset
            .checked_add(page_phys)
            .and_then(|v| VirtAddr::try_new(v).ok())
            .ok_or(map_err(
                "the range lies outside the canonical address space",
            ))?;
        let page = Page::<Size4KiB>::containing_address(virt);
        let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(page_phys));
        match mapper.translate(virt) {
            TranslateResult::Mapped {
                frame: MappedFrame::Size4KiB(f),
                flags,
                ..
            } if f == frame => {
                if !flags.contains(MMIO_FLAGS) {
                    set_flags(&mut mapper, page, flags | MMIO_FLAGS)?;
                }
            }
            TranslateResult::Mapped {
                frame: MappedFrame::Size2MiB(f),
                offset: within,
                ..
            } if f.start_address().as_u64() + within == page_phys => {
                split_large_page(&mut mapper, offset, virt).map_err(map_err)?;
                debug!(
                    "mmio: {:#x}: its 2 MiB page in the physical-memory window is now 4 KiB pages",
                    page_phys
                );
                let TranslateResult::Mapped { flags, .. } = mapper.translate(virt) else {
                    return Err(map_err("the split page vanished"));
                };
                set_flags(&mut mapper, page, flags | MMIO_FLAGS)?;
            }
            TranslateResult::Mapped {
                frame: MappedFrame::Size1GiB(_),
                ..
            } => return Err(map_err("the window maps it with a 1 GiB page")),
            TranslateResult::Mapped { .. } => {
                return Err(map_err("the window maps another frame at its address"))
            }
            TranslateResult::NotMapped => {
                // SAFETY: the page is unmapped, so no reference to it
                // exists; it gets the device's own frame, uncached, in the
                // window where only device drivers look for it.
                let flush = unsafe { mapper.map_to(page, frame, MMIO_FLAGS, &mut KernelFrames) }
                    .map_err(|e| match e {
                        x86_64::structures::paging::mapper::MapToError::FrameAllocationFailed => {
                            map_err("no frame left for a page table")
                        }
                        _ => map_err("the page tables refused the mapping"),
                    })?;
                flush.flush();
                debug!("mmio: {page_phys:#x}: mapped anew in the physical-memory window");
            }
            TranslateResult::InvalidFrameAddress(_) => {
                return Err(map_err("a page-table entry holds an invalid address"))
            }
        }
        page_phys += PAGE_SIZE;
    }
    debug!(
        "mmio: {:#x}..{end:#x} mapped uncached at {:p}",
        phys.as_u64(),
        window.ptr(phys)
    );
    Ok(window.ptr(phys))
}

/// Maps the 4 KiB page at physical `page` at the same virtual address,
/// read-only and executable (the boot CPU writes the routine through the
/// physical-memory window), for the application processors' start-up code, which runs
/// there between turning paging on and jumping into the kernel. Returns
/// whether the mapping is new (and so should be taken down afterwards);
/// an identity mapping already there is kept.
///
/// Run on the boot CPU while no other CPU runs: as [`map_uncached`].
pub fn identity_map(page: HostPhysAddr) -> Result<bool, DriverError> {
    let map_err = |reason| DriverError::Map {
        phys: page.as_u64(),
        reason,
    };
    let mut mapper = kernel_mapper();
    let virt = VirtAddr::new(page.as_u64());
    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(page.as_u64()));
    match mapper.translate(virt) {
        TranslateResult::Mapped {
            frame: MappedFrame::Size4KiB(f),
            flags,
            ..
        } if f == frame
            && !flags.contains(PageTableFlags::NO_EXECUTE)
            && !flags.contains(PageTableFlags::WRITABLE) =>
        {
            Ok(false)
        }
        TranslateResult::NotMapped => {
            // Read-only and executable: W^X. Tables created on the way are
            // writable, as the bootloader's are, so they restrict nothing
            // mapped under them later.
            let flags = PageTableFlags::PRESENT;
            let table_flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
            // SAFETY: the address is unmapped in the kernel's tables, so no
            // reference to it exists; it maps the page to itself, a page of
            // RAM below 1 MiB reserved for this use.
            let flush = unsafe {
                mapper.map_to_with_table_flags(
                    Page::<Size4KiB>::containing_address(virt),
                    frame,
                    flags,
                    table_flags,
                    &mut KernelFrames,
                )
            }
            .map_err(|_| map_err("the page tables refused the identity mapping"))?;
            flush.flush();
            Ok(true)
        }
        _ => Err(map_err("its address is already mapped to something else")),
    }
}

/// Takes down a mapping [`identity_map`] made, once the application
/// processors are up. Only this CPU's TLB is flushed: the others may keep
/// the translation, but nothing of theirs uses that address again.
pub fn unmap_identity(page: HostPhysAddr) {
    let mut mapper = kernel_mapper();
    let virt = VirtAddr::new(page.as_u64());
    if let Ok((_, flush)) = mapper.unmap(Page::<Size4KiB>::containing_address(virt)) {
        flush.flush();
    }
}

/// The kernel's live page tables, through the physical-memory window.
fn kernel_mapper() -> OffsetPageTable<'static> {
    let window = memory::phys();
    let offset = window.ptr(HostPhysAddr::new(0)) as u64;
    let (l4_frame, _) = Cr3::read();
    let l4_ptr = window.ptr(HostPhysAddr::new(l4_frame.start_address().as_u64())) as *mut PageTable;
    // SAFETY: as in `map_uncached`: CR3 names the live level-4 table, in
    // RAM mapped at the window; the caller is the boot CPU, and the other
    // CPUs (not started yet, or halted waiting for guests) never change the
    // tables, so nothing else holds a reference to them meanwhile.
    let l4 = unsafe { &mut *l4_ptr };
    // SAFETY: all physical memory the tables live in is mapped at `offset`.
    unsafe { OffsetPageTable::new(l4, VirtAddr::new(offset)) }
}

/// Sets the flags of a 4 KiB page and flushes it from this CPU's TLB.
fn set_flags(
    mapper: &mut OffsetPageTable<'_>,
    page: Page<Size4KiB>,
    flags: PageTableFlags,
) -> Result<(), DriverError> {
    // SAFETY: only the caching bits change, on a page of device registers
    // that nothing has accessed through this mapping yet (the drivers
    // map a BAR before touching it).
    match unsafe { mapper.update_flags(page, flags) } {
        Ok(flush) => {
            flush.flush();
            Ok(())
        }
        Err(_) => Err(DriverError::Map {
            phys: page.start_address().as_u64(),
            reason: "its page vanished while its flags were set",
        }),
    }
}

/// Replaces the 2 MiB page that maps `virt` with a table of 512 4 KiB
/// pages mapping the same frames with the same flags.
fn split_large_page(
    mapper: &mut OffsetPageTable<'_>,
    offset: u64,
    virt: VirtAddr,
) -> Result<(), &'static str> {
    let table_at = |phys: PhysAddr| offset.wrapping_add(phys.as_u64()) as *mut PageTable;
    let l4 = mapper.level_4_table_mut();
    let l3_phys = l4[virt.p4_index()].addr();
    // SAFETY: a present level-4 entry (translate found the page) names a
    // level-3 table in RAM, mapped at the window; no other reference to it
    // exists while the caller holds the mapper.
    let l3 = unsafe { &mut *table_at(l3_phys) };
    let l3_entry = &l3[virt.p3_index()];
    if l3_entry.flags().contains(PageTableFlags::HUGE_PAGE) {
        return Err("the window maps it with a 1 GiB page");
    }
    // SAFETY: as above, for the level-2 table the level-3 entry names.
    let l2 = unsafe { &mut *table_at(l3_entry.addr()) };
    let entry = &mut l2[virt.p2_index()];
    let flags = entry.flags();
    if !flags.contains(PageTableFlags::HUGE_PAGE) {
        return Ok(());
    }
    let base = entry.addr().as_u64();
    // In a 2 MiB entry bit 12 is the PAT bit, which `addr` would count
    // as an address bit; the bootloader never sets it.
    if base % LARGE_PAGE != 0 {
        return Err("its 2 MiB page uses the PAT bit");
    }
    let table_frame = memory::alloc_zeroed_frame().map_err(|_| "no frame left for a page table")?;
    // Bit 7 is HUGE_PAGE in a 2 MiB entry but PAT in a 4 KiB one.
    let leaf_flags = flags.difference(PageTableFlags::HUGE_PAGE);
    // SAFETY: the frame was just taken from the allocator, zeroed, and is
    // mapped at the window; nothing else refers to it.
    let table = unsafe { &mut *table_at(PhysAddr::new(table_frame.as_u64())) };
    for (i, e) in table.iter_mut().enumerate() {
        e.set_addr(PhysAddr::new(base + i as u64 * PAGE_SIZE), leaf_flags);
    }
    let parent_flags = flags
        & (PageTableFlags::PRESENT
            | PageTableFlags::WRITABLE
            | PageTableFlags::USER_ACCESSIBLE
            | PageTableFlags::NO_EXECUTE);
    entry.set_addr(PhysAddr::new(table_frame.as_u64()), parent_flags);
    // INVLPG on any address of a large page drops its TLB entry and the
    // paging-structure caches for it (SDM Vol. 3A 4.10.4.1, "Operations
    // that Invalidate TLBs and Paging-Structure Caches").
    x86_64::instructions::tlb::flush(virt.align_down(LARGE_PAGE));
    Ok(())
}
