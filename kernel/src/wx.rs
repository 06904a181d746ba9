//! W^X for Ferrovisor's own page tables, enforced once at boot on the boot
//! CPU before any other CPU starts (they all share these tables: the
//! application processors load the same CR3).
//!
//! What the bootloader (0.11) leaves: the kernel's ELF segments mapped by
//! their flags (text read-only and executable, rodata read-only and
//! no-execute, data and bss writable and no-execute, RELRO made read-only),
//! the boot stack, boot info, ramdisk and physical-memory window writable
//! and no-execute, EFER.NXE and CR0.WP on, and two identity mappings it
//! needed itself left executable: its context-switch code (two pages) and
//! its GDT page. The window also maps every frame of the kernel a second
//! time, writable, so the text could be changed through it.
//!
//! This module takes the kernel's code and read-only ranges from its own
//! ELF program headers (the file lies in memory at `BootInfo::kernel_addr`),
//! adds the window's views of those frames as read-only, and lets
//! `mm::wx::enforce` mark every other mapping no-execute and every code or
//! read-only one non-writable, splitting the window's 2 MiB pages around
//! the kernel's frames. Later mappings keep the rule: device registers are
//! mapped no-execute (`drivers::mmio`), and the application processors'
//! start-up page is mapped read-only and executable only while they start.

use alloc::vec::Vec;
use core::ops::Range;

use bootloader_api::BootInfo;
use log::{info, warn};
use mm::addr::{HostPhysAddr, PAGE_SIZE};
use mm::wx::{KernelSegments, Policy, TableMemory};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3};
use x86_64::registers::model_specific::{Efer, EferFlags};

use crate::memory::{self, PhysMap};
use crate::panic;

/// The live page tables, reached through the physical-memory window.
struct LiveTables {
    phys: PhysMap,
}

impl LiveTables {
    fn entry(&self, table: HostPhysAddr, index: usize) -> *mut u64 {
        // Entries are 8 bytes, 512 to a table; `index` is below 512.
        self.phys
            .ptr(table)
            .wrapping_add(index.min(511) * 8)
            .cast::<u64>()
    }
}

impl TableMemory for LiveTables {
    fn read(&self, table: HostPhysAddr, index: usize) -> u64 {
        // SAFETY: `table` is a page-table frame named by CR3 or by a
        // present non-leaf entry, in RAM the window maps; the entry is
        // aligned and inside the frame. Reading it has no side effect.
        unsafe { self.entry(table, index).read_volatile() }
    }

    fn write(&mut self, table: HostPhysAddr, index: usize, entry: u64) {
        // SAFETY: as for `read`. Only the boot CPU runs, and `mm::wx`
        // writes only entries that keep every mapping the kernel is using
        // right now (it removes the execute right from non-code and the
        // write right from code and read-only data, and writes a split
        // table in full before linking it), so this CPU's accesses go on
        // working whichever translation it caches meanwhile.
        unsafe { self.entry(table, index).write_volatile(entry) }
    }

    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        memory::alloc_zeroed_frame().ok()
    }
}

/// Enforces W^X on the kernel's page tables and says so in one line
/// (`memory: W^X: code read-only, N mappings no-execute`). A kernel whose
/// tables cannot be made W^X is not started.
pub fn enforce(boot_info: &BootInfo) {
    ensure_nxe_and_wp();
    let phys = memory::phys();
    let Some(elf) = kernel_file(boot_info, phys) else {
        panic::fatal(format_args!(
            "memory: W^X: the kernel's ELF file at {:#x} ({} bytes) is outside the physical-memory window",
            boot_info.kernel_addr, boot_info.kernel_len
        ));
    };
    let segments = KernelSegments::from_elf(elf, boot_info.kernel_image_offset)
        .unwrap_or_else(|e| panic::fatal(format_args!("memory: W^X: the kernel image: {e}")));
    let mut tables = LiveTables { phys };
    let (root, _) = Cr3::read();
    let root = HostPhysAddr::new(root.start_address().as_u64());
    let mut read_only: Vec<Range<u64>> = segments.read_only().to_vec();
    // The window's views of the code and read-only frames.
    let window = phys.ptr(HostPhysAddr::new(0)) as u64;
    for range in segments.code().iter().chain(segments.read_only()) {
        let mut page = range.start & !(PAGE_SIZE - 1);
        while page < range.end {
            if let Some(frame) = mm::wx::translate(&tables, root, page) {
                let alias = window.wrapping_add(frame.as_u64());
                match read_only.last_mut() {
                    Some(last) if last.end == alias => last.end += PAGE_SIZE,
                    _ => read_only.push(alias..alias + PAGE_SIZE),
                }
            }
            page += PAGE_SIZE;
        }
    }
    let policy = Policy {
        code: segments.code(),
        read_only: &read_only,
    };
    let report = mm::wx::enforce(&mut tables, root, &policy)
        .unwrap_or_else(|e| panic::fatal(format_args!("memory: W^X: {e}")));
    // Drop every cached translation that still allows more: none of the
    // kernel's mappings is global, so reloading CR3 drops them all.
    x86_64::instructions::tlb::flush_all();
    info!(
        "memory: W^X: code read-only, {} mappings no-execute ({} newly, {} large pages split, {} code pages executable)",
        report.no_execute, report.made_no_execute, report.split, report.executable_pages
    );
}

/// The kernel's ELF file as the bootloader loaded it.
fn kernel_file(boot_info: &BootInfo, phys: PhysMap) -> Option<&'static [u8]> {
    let start = HostPhysAddr::new(boot_info.kernel_addr);
    let len = usize::try_from(boot_info.kernel_len).ok()?;
    if !phys.covers(start, boot_info.kernel_len) {
        return None;
    }
    // SAFETY: the bootloader keeps the kernel's file in memory it reports
    // as in use (never handed to the frame allocator), and the window maps
    // it; nothing writes the file after boot.
    Some(unsafe { core::slice::from_raw_parts(phys.ptr(start), len) })
}

/// No-execute needs EFER.NXE (without it bit 63 is reserved, SDM Vol. 3A
/// 4.5) and read-only needs CR0.WP to hold against the kernel itself (SDM
/// Vol. 3A 4.6.1). The bootloader turns both on; a boot that finds them
/// off turns them on and says so.
fn ensure_nxe_and_wp() {
    if !Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE) {
        warn!("memory: W^X: EFER.NXE was off; turning it on");
        // SAFETY: NXE only gives bit 63 of paging entries its meaning; the
        // kernel's tables set it only in mappings of data, which are never
        // executed.
        unsafe { Efer::update(|efer| *efer |= EferFlags::NO_EXECUTE_ENABLE) };
    }
    if !Cr0::read().contains(Cr0Flags::WRITE_PROTECT) {
        warn!("memory: W^X: CR0.WP was off; turning it on");
        // SAFETY: WP only makes read-only mappings hold for the kernel;
        // the kernel writes only through writable mappings.
        unsafe { Cr0::update(|cr0| *cr0 |= Cr0Flags::WRITE_PROTECT) };
    }
}

/// Whether the calling CPU enforces what the shared tables say (an
/// application processor's start-up code turns NXE and WP on); a CPU that
/// does not is reported.
pub fn check_this_cpu(index: usize) {
    let nxe = Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE);
    let wp = Cr0::read().contains(Cr0Flags::WRITE_PROTECT);
    if !(nxe && wp) {
        warn!("cpu{index}: W^X not enforced here (EFER.NXE {nxe}, CR0.WP {wp})");
    }
}
