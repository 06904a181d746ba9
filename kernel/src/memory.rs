//! Physical memory at boot: the usable-memory figure, the frame allocator
//! built from the bootloader's memory map, and the kernel heap.

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use log::{info, warn};
use mm::addr::{HostPhysAddr, PhysRange, PAGE_SIZE};
use mm::frame::BuddyAllocator;
use mm::heap::KernelHeap;
use spin::{Mutex, Once};

use crate::panic;

#[global_allocator]
static HEAP: KernelHeap = KernelHeap::empty();

/// The machine's frame allocator, set up once by [`init`].
static FRAMES: Mutex<Option<BuddyAllocator<'static>>> = Mutex::new(None);

/// The physical-memory mapping, recorded by [`init`].
static PHYS: Once<PhysMap> = Once::new();

/// A usable 4 KiB page below 1 MiB, kept for the application processors'
/// start-up code (recorded by [`init`]; `None` if the map has none).
static LOW_PAGE: Once<Option<HostPhysAddr>> = Once::new();

/// Frames below 1 MiB stay out of the allocator: real-mode structures and,
/// later, the application processors' start-up code live there.
const LOW_MEMORY_END: u64 = 0x10_0000;

/// The start-up page for application processors lies below this: the
/// extended BIOS data area may begin at 0x9F000.
const LOW_PAGE_LIMIT: u64 = 0x9F000;

/// The most usable regions taken from the memory map; firmware maps have a
/// few dozen at most.
const MAX_REGIONS: usize = 128;

/// Heap size: 2^HEAP_ORDER frames (8 MiB).
const HEAP_ORDER: u8 = 11;

/// The bootloader's mapping of all physical memory at a fixed offset.
#[derive(Clone, Copy, Debug)]
pub struct PhysMap {
    offset: u64,
    end: u64,
}

impl PhysMap {
    /// The mapping the bootloader reported at `offset`, covering physical
    /// addresses up to the end of the highest region in `regions` (that is
    /// what the bootloader maps).
    pub fn new(offset: u64, regions: &MemoryRegions) -> Self {
        PhysMap {
            offset,
            end: regions.iter().map(|r| r.end).max().unwrap_or(0),
        }
    }

    /// Whether `[phys, phys + len)` lies inside the mapping.
    pub fn covers(self, phys: HostPhysAddr, len: u64) -> bool {
        phys.as_u64()
            .checked_add(len)
            .is_some_and(|end| end <= self.end)
    }

    /// The virtual address at which `phys` is mapped.
    pub fn ptr(self, phys: HostPhysAddr) -> *mut u8 {
        self.offset.wrapping_add(phys.as_u64()) as *mut u8
    }
}

/// Counts usable memory, builds the frame allocator and the heap.
pub fn init(regions: &MemoryRegions, phys: PhysMap) {
    PHYS.call_once(|| phys);
    let mut usable = [PhysRange::EMPTY; MAX_REGIONS];
    let mut count = 0;
    let mut usable_bytes = 0u64;
    let mut dropped = 0usize;
    let mut low_page = None;
    for region in regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
    {
        usable_bytes += region.end.saturating_sub(region.start);
        // The highest whole page of usable RAM in [4 KiB, 636 KiB): below
        // the extended BIOS data area, above the real-mode IVT and BDA.
        let low_end = region.end.min(LOW_PAGE_LIMIT) & !(PAGE_SIZE - 1);
        let low_start = region.start.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE);
        if low_end >= low_start + PAGE_SIZE {
            low_page = low_page.max(Some(low_end - PAGE_SIZE));
        }
        let start = region.start.max(LOW_MEMORY_END);
        if start >= region.end {
            continue;
        }
        match usable.get_mut(count) {
            Some(slot) => {
                *slot = PhysRange::new(HostPhysAddr::new(start), HostPhysAddr::new(region.end));
                count += 1;
            }
            None => dropped += 1,
        }
    }
    info!("memory: {} MiB usable", usable_bytes >> 20);
    LOW_PAGE.call_once(|| low_page.map(HostPhysAddr::new));
    if dropped > 0 {
        warn!("memory: {dropped} usable regions beyond the first {MAX_REGIONS} are left unused");
    }
    let usable = &usable[..count];

    let frames = build_allocator(usable, phys)
        .unwrap_or_else(|e| panic::fatal(format_args!("frame allocator: {e}")));
    info!("{}", frames.stats());
    let mut guard = FRAMES.lock();
    let frames = guard.insert(frames);

    let heap = frames
        .alloc(HEAP_ORDER)
        .unwrap_or_else(|e| panic::fatal(format_args!("no memory for the kernel heap: {e}")));
    let heap_size = PAGE_SIZE << HEAP_ORDER;
    // SAFETY: the frames were just taken from the allocator, so nothing else
    // uses them; they are mapped writable at `phys.ptr` for the kernel's
    // lifetime, and `init` runs once.
    unsafe { HEAP.init(phys.ptr(heap), heap_size as usize) };
    info!("heap: {} MiB at {heap}", heap_size >> 20);
}

fn build_allocator(
    usable: &[PhysRange],
    phys: PhysMap,
) -> Result<BuddyAllocator<'static>, mm::MmError> {
    let (meta_range, span_frames) = mm::frame::place_metadata(usable)?;
    // SAFETY: `place_metadata` chose whole frames inside usable RAM, which
    // the bootloader mapped at `phys` and nothing else uses: the allocator
    // below is told to exclude them, so they are never handed out.
    let meta = unsafe {
        core::slice::from_raw_parts_mut(phys.ptr(meta_range.start), meta_range.len() as usize)
    };
    let mut frames = BuddyAllocator::new(span_frames, meta)?;
    frames.add_usable(usable, meta_range)?;
    Ok(frames)
}

/// Runs `f` on the frame allocator. Using it before [`init`] is a bug in
/// Ferrovisor's boot order, reported as fatal.
fn with_frames<T>(f: impl FnOnce(&mut BuddyAllocator<'static>) -> T) -> T {
    match FRAMES.lock().as_mut() {
        Some(frames) => f(frames),
        None => panic::fatal(format_args!(
            "the frame allocator was used before memory::init"
        )),
    }
}

/// Takes one 4 KiB frame from the allocator and fills it with zeros.
pub fn alloc_zeroed_frame() -> Result<HostPhysAddr, mm::MmError> {
    let frame = with_frames(|frames| frames.alloc_frame())?;
    let phys = phys();
    // SAFETY: the frame was just handed out by the allocator, so nothing
    // else uses it, and the bootloader maps it writable at `phys`.
    unsafe { core::ptr::write_bytes(phys.ptr(frame), 0, PAGE_SIZE as usize) };
    Ok(frame)
}

/// Gives back a frame taken with [`alloc_zeroed_frame`].
pub fn free_frame(frame: HostPhysAddr) -> Result<(), mm::MmError> {
    with_frames(|frames| frames.free(frame, 0))
}

/// The physical-memory mapping. Like the frame allocator, it exists once
/// [`init`] has run.
pub fn phys() -> PhysMap {
    match PHYS.get() {
        Some(phys) => *phys,
        None => panic::fatal(format_args!(
            "the physical-memory mapping was used before memory::init"
        )),
    }
}

/// Takes a naturally aligned block of 2^`order` frames (not zeroed).
pub fn alloc_block(order: u8) -> Result<HostPhysAddr, mm::MmError> {
    with_frames(|frames| frames.alloc(order))
}

/// Gives back a block taken with [`alloc_block`].
pub fn free_block(block: HostPhysAddr, order: u8) -> Result<(), mm::MmError> {
    with_frames(|frames| frames.free(block, order))
}

/// The usable page below 1 MiB set aside for the application processors'
/// start-up code, if the memory map has one. Only `smp` uses it.
pub fn low_page() -> Option<HostPhysAddr> {
    LOW_PAGE.get().copied().flatten()
}

/// How many frames are free now.
pub fn free_frames() -> u64 {
    with_frames(|frames| frames.stats().free_frames)
}

/// Bytes of the kernel heap in use now.
pub fn heap_used() -> u64 {
    HEAP.stats().used as u64
}

/// The frame allocator's figures now (for the monitor's `stats`).
pub fn frame_stats() -> mm::frame::FrameStats {
    with_frames(|frames| frames.stats())
}
