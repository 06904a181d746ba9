//! The physical frame allocator: a binary buddy allocator over host-physical
//! frames whose bookkeeping lives out of band.
//!
//! Blocks have orders `0..=MAX_ORDER`; a block of order `k` is `2^k` frames
//! (order 0 = 4 KiB, [`ORDER_2M`] = 2 MiB, [`ORDER_1G`] = 1 GiB) and starts at
//! a physical address that is a multiple of its size, so any block can back a
//! page-table or EPT mapping of that size.
//!
//! Frames will hold untrusted guest RAM, so the allocator never reads or
//! writes a frame: free lists and block tags live in a caller-provided byte
//! slice, [`BuddyAllocator::metadata_bytes`] long (9 bytes per frame of the
//! span). Nothing a guest writes into its memory can corrupt them.
//!
//! Boot sequence, as the kernel does it:
//! 1. [`place_metadata`] picks frames of usable RAM for the metadata;
//! 2. [`BuddyAllocator::new`] takes that memory as a slice;
//! 3. [`BuddyAllocator::add_usable`] adds every usable range except those
//!    frames.

use core::fmt;
use core::iter;
use core::ops::Range;

use crate::addr::{HostPhysAddr, PhysRange, PAGE_SIZE};
use crate::MmError;

/// The largest block order: 2^18 frames = 1 GiB.
pub const MAX_ORDER: u8 = 18;
/// The order of a 2 MiB block.
pub const ORDER_2M: u8 = 9;
/// The order of a 1 GiB block.
pub const ORDER_1G: u8 = 18;
/// The most frames one allocator can manage (16 TiB of span): frame indices
/// are stored as `u32`, with `u32::MAX` marking the end of a free list.
pub const MAX_SPAN_FRAMES: u64 = u32::MAX as u64;

const ORDERS: usize = MAX_ORDER as usize + 1;
const NIL: u32 = u32::MAX;

/// Per-frame metadata: `next` and `prev` frame indices (little-endian `u32`)
/// linking a free block head into its order's free list, then a tag byte.
const ENTRY_BYTES: usize = 9;
const NEXT: usize = 0;
const PREV: usize = 4;
const TAG: usize = 8;

/// What a frame's tag byte says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// Not the first frame of a block: inside a block, or not managed.
    Plain,
    /// The first frame of a free block of this order.
    FreeHead(u8),
    /// The first frame of an allocated block of this order.
    AllocatedHead(u8),
}

impl Tag {
    const ALLOCATED: u8 = 0x80;

    fn encode(self) -> u8 {
        match self {
            Self::Plain => 0,
            Self::FreeHead(order) => order + 1,
            Self::AllocatedHead(order) => Self::ALLOCATED | order,
        }
    }

    fn decode(byte: u8) -> Self {
        match byte {
            0 => Self::Plain,
            b if b & Self::ALLOCATED != 0 => Self::AllocatedHead(b & !Self::ALLOCATED),
            b => Self::FreeHead(b - 1),
        }
    }

    /// The order of the block this frame heads, if it heads one.
    fn order(self) -> Option<u8> {
        match self {
            Self::Plain => None,
            Self::FreeHead(order) | Self::AllocatedHead(order) => Some(order),
        }
    }
}

/// A binary buddy allocator of host-physical frames in the span
/// `[0, span_frames * PAGE_SIZE)`. Only frames added with
/// [`add_free_range`](Self::add_free_range) or
/// [`add_usable`](Self::add_usable) are ever handed out.
///
/// A block must be freed with the address and order it was allocated with;
/// anything else is refused with an error and leaves the allocator unchanged.
pub struct BuddyAllocator<'a> {
    entries: &'a mut [[u8; ENTRY_BYTES]],
    free_lists: [Option<usize>; ORDERS],
    total_frames: u64,
    free_frames: u64,
}

impl<'a> BuddyAllocator<'a> {
    /// Bytes of metadata needed for a span of `span_frames` frames.
    pub fn metadata_bytes(span_frames: u64) -> usize {
        usize::try_from(span_frames).map_or(usize::MAX, |frames| frames.saturating_mul(ENTRY_BYTES))
    }

    /// An allocator for the span `[0, span_frames * PAGE_SIZE)` with no free
    /// memory yet, keeping its metadata in `meta`. The slice's contents need
    /// not be initialised; bytes past [`metadata_bytes`](Self::metadata_bytes)
    /// are left alone.
    pub fn new(span_frames: u64, meta: &'a mut [u8]) -> Result<Self, MmError> {
        if span_frames > MAX_SPAN_FRAMES {
            return Err(MmError::SpanTooLarge {
                frames: span_frames,
            });
        }
        let needed = Self::metadata_bytes(span_frames);
        let got = meta.len();
        let Some(meta) = meta.get_mut(..needed) else {
            return Err(MmError::MetadataTooSmall { needed, got });
        };
        let (entries, _) = meta.as_chunks_mut::<ENTRY_BYTES>();
        for entry in entries.iter_mut() {
            entry[TAG] = Tag::Plain.encode();
        }
        Ok(Self {
            entries,
            free_lists: [None; ORDERS],
            total_frames: 0,
            free_frames: 0,
        })
    }

    /// Adds the whole frames of `range` as free memory, as maximal naturally
    /// aligned blocks merged with free neighbours. Partial frames at either
    /// end are dropped. Fails, adding nothing, if the frames reach past the
    /// span or any of them is already managed (free or allocated).
    pub fn add_free_range(&mut self, range: PhysRange) -> Result<(), MmError> {
        let trimmed = range.page_trimmed();
        if trimmed.is_empty() {
            return Ok(());
        }
        if trimmed.end > self.span_end() {
            return Err(MmError::OutsideSpan {
                addr: range.end,
                span_end: self.span_end(),
            });
        }
        let frames = frame_index(trimmed.start)..frame_index(trimmed.end);
        for (frame, order) in blocks(frames.clone()) {
            self.check_unmanaged(frame, order)?;
        }
        for (frame, order) in blocks(frames.clone()) {
            self.release(frame, order);
        }
        let added = frames.len() as u64;
        self.total_frames += added;
        self.free_frames += added;
        Ok(())
    }

    /// Adds every range of a boot memory map's `usable` ranges except the
    /// addresses in `exclude` (the metadata from [`place_metadata`]).
    /// Ranges may be unsorted, unaligned and may overlap one another;
    /// overlaps are added once. Each piece is trimmed to whole frames on its
    /// own, so a frame that only two ranges together cover is left out. On
    /// error, the pieces before the failing one stay added.
    pub fn add_usable(&mut self, usable: &[PhysRange], exclude: PhysRange) -> Result<(), MmError> {
        for (i, range) in usable.iter().enumerate() {
            // Skip `exclude` and whatever earlier ranges already added.
            let holes = || {
                iter::once(&exclude)
                    .chain(&usable[..i])
                    .filter(|h| !h.is_empty())
            };
            let mut at = range.start;
            while at < range.end {
                if let Some(hole_end) = holes().filter(|h| h.contains(at)).map(|h| h.end).max() {
                    at = hole_end;
                    continue;
                }
                let next_hole = holes().map(|h| h.start).filter(|&s| s > at).min();
                let end = next_hole.map_or(range.end, |s| s.min(range.end));
                self.add_free_range(PhysRange::new(at, end))?;
                at = end;
            }
        }
        Ok(())
    }

    /// Allocates a block of `2^order` frames, aligned to its size.
    pub fn alloc(&mut self, order: u8) -> Result<HostPhysAddr, MmError> {
        check_order(order)?;
        let (mut k, frame) = (order..=MAX_ORDER)
            .find_map(|k| self.free_lists[usize::from(k)].map(|frame| (k, frame)))
            .ok_or(MmError::OutOfMemory { order })?;
        self.unlink(frame, k);
        // Split, returning the upper halves to the free lists.
        while k > order {
            k -= 1;
            self.push(frame + (1 << k), k);
        }
        self.set_tag(frame, Tag::AllocatedHead(order));
        self.free_frames -= 1 << order;
        Ok(frame_addr(frame))
    }

    /// Allocates one 4 KiB frame.
    pub fn alloc_frame(&mut self) -> Result<HostPhysAddr, MmError> {
        self.alloc(0)
    }

    /// Allocates a 2 MiB block aligned to 2 MiB.
    pub fn alloc_2m(&mut self) -> Result<HostPhysAddr, MmError> {
        self.alloc(ORDER_2M)
    }

    /// Allocates a 1 GiB block aligned to 1 GiB.
    pub fn alloc_1g(&mut self) -> Result<HostPhysAddr, MmError> {
        self.alloc(ORDER_1G)
    }

    /// Frees the block of `2^order` frames at `addr`, which must be what an
    /// earlier `alloc(order)` returned, and merges it with its buddies.
    pub fn free(&mut self, addr: HostPhysAddr, order: u8) -> Result<(), MmError> {
        check_order(order)?;
        if !addr.is_aligned(PAGE_SIZE << order) {
            return Err(MmError::Misaligned { addr, order });
        }
        let frame = frame_index(addr);
        if frame >= self.entries.len() {
            return Err(MmError::OutsideSpan {
                addr,
                span_end: self.span_end(),
            });
        }
        match self.tag(frame) {
            Tag::AllocatedHead(allocated) if allocated == order => {}
            Tag::AllocatedHead(allocated) => {
                return Err(MmError::OrderMismatch {
                    addr,
                    order,
                    allocated,
                })
            }
            Tag::FreeHead(_) => return Err(MmError::DoubleFree { addr, order }),
            Tag::Plain => {
                return Err(match self.covering_head(frame, 0) {
                    Some(Tag::FreeHead(_)) => MmError::DoubleFree { addr, order },
                    _ => MmError::NotAllocated { addr, order },
                });
            }
        }
        self.set_tag(frame, Tag::Plain);
        self.release(frame, order);
        self.free_frames += 1 << order;
        Ok(())
    }

    /// Frame counts now.
    pub fn stats(&self) -> FrameStats {
        let largest = (0..ORDERS).rev().find(|&k| self.free_lists[k].is_some());
        FrameStats {
            total_frames: self.total_frames,
            free_frames: self.free_frames,
            largest_free_frames: largest.map_or(0, |k| 1 << k),
        }
    }

    fn span_end(&self) -> HostPhysAddr {
        frame_addr(self.entries.len())
    }

    /// Puts the free block `frame` of `order` on a free list, first merging
    /// it with its buddy for as long as the buddy is a free block of the
    /// same order.
    fn release(&mut self, mut frame: usize, mut order: u8) {
        while order < MAX_ORDER {
            let buddy = frame ^ (1 << order);
            if buddy >= self.entries.len() || self.tag(buddy) != Tag::FreeHead(order) {
                break;
            }
            self.unlink(buddy, order);
            frame = frame.min(buddy);
            order += 1;
        }
        self.push(frame, order);
    }

    /// Fails if any frame of the block `frame` of `order` is already managed.
    fn check_unmanaged(&self, frame: usize, order: u8) -> Result<(), MmError> {
        let block = frame..frame + (1 << order);
        let managed = block.clone().find(|&f| self.tag(f) != Tag::Plain);
        match managed {
            Some(f) => Err(MmError::Overlap {
                addr: frame_addr(f),
            }),
            None if self.covering_head(frame, order).is_some() => Err(MmError::Overlap {
                addr: frame_addr(frame),
            }),
            None => Ok(()),
        }
    }

    /// The tag of the block larger than `order` that contains `frame`, if
    /// any. Blocks are naturally aligned, so the only candidate head of
    /// order `k` is `frame` rounded down to `2^k`.
    fn covering_head(&self, frame: usize, order: u8) -> Option<Tag> {
        (order + 1..=MAX_ORDER).find_map(|k| {
            let tag = self.tag(frame & !((1 << k) - 1));
            (tag.order() == Some(k)).then_some(tag)
        })
    }

    fn push(&mut self, frame: usize, order: u8) {
        let list = &mut self.free_lists[usize::from(order)];
        let old_head = list.replace(frame);
        self.set_link(frame, NEXT, old_head);
        self.set_link(frame, PREV, None);
        if let Some(old_head) = old_head {
            self.set_link(old_head, PREV, Some(frame));
        }
        self.set_tag(frame, Tag::FreeHead(order));
    }

    fn unlink(&mut self, frame: usize, order: u8) {
        let (prev, next) = (self.link(frame, PREV), self.link(frame, NEXT));
        match prev {
            Some(prev) => self.set_link(prev, NEXT, next),
            None => self.free_lists[usize::from(order)] = next,
        }
        if let Some(next) = next {
            self.set_link(next, PREV, prev);
        }
        self.set_tag(frame, Tag::Plain);
    }

    fn tag(&self, frame: usize) -> Tag {
        Tag::decode(self.entries[frame][TAG])
    }

    fn set_tag(&mut self, frame: usize, tag: Tag) {
        self.entries[frame][TAG] = tag.encode();
    }

    fn link(&self, frame: usize, field: usize) -> Option<usize> {
        let e = &self.entries[frame];
        let index = u32::from_le_bytes([e[field], e[field + 1], e[field + 2], e[field + 3]]);
        (index != NIL).then_some(index as usize)
    }

    fn set_link(&mut self, frame: usize, field: usize, link: Option<usize>) {
        // Frame indices are below the span, at most `MAX_SPAN_FRAMES`, so
        // they fit in a u32 and never equal NIL.
        let index = link.map_or(NIL, |f| f as u32);
        self.entries[frame][field..field + 4].copy_from_slice(&index.to_le_bytes());
    }
}

/// Chooses where the frame allocator's metadata goes, given the usable
/// ranges of the boot memory map (any order, any alignment).
///
/// Returns the metadata's range, whole frames at the start of the smallest
/// usable range that holds it (keeping large ranges whole for large blocks),
/// and the span in frames: up to the end of the highest whole usable frame.
pub fn place_metadata(usable: &[PhysRange]) -> Result<(PhysRange, u64), MmError> {
    let whole = || {
        usable
            .iter()
            .map(PhysRange::page_trimmed)
            .filter(|r| !r.is_empty())
    };
    let span_end = whole()
        .map(|r| r.end)
        .max()
        .ok_or(MmError::NoUsableMemory)?;
    let span_frames = span_end.as_u64() / PAGE_SIZE;
    if span_frames > MAX_SPAN_FRAMES {
        return Err(MmError::SpanTooLarge {
            frames: span_frames,
        });
    }
    // At most 9 * 2^32 bytes, so neither conversion nor rounding overflows.
    let needed = (BuddyAllocator::metadata_bytes(span_frames) as u64).next_multiple_of(PAGE_SIZE);
    let home = whole()
        .filter(|r| r.len() >= needed)
        .min_by_key(PhysRange::len);
    let home = home.ok_or(MmError::NoRoomForMetadata { needed })?;
    let end = HostPhysAddr::new(home.start.as_u64() + needed);
    Ok((PhysRange::new(home.start, end), span_frames))
}

/// Frame counts of a [`BuddyAllocator`]. Displays as one line for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames ever added as free memory (allocated or not).
    pub total_frames: u64,
    /// Frames free now.
    pub free_frames: u64,
    /// Frames in the largest free block.
    pub largest_free_frames: u64,
}

impl FrameStats {
    /// How much of the free memory lies outside the largest free block, in
    /// percent: 0 when it is all one block (or nothing is free), near 100
    /// when it is scattered in small blocks.
    pub fn fragmentation_percent(&self) -> u8 {
        match self.free_frames {
            0 => 0,
            free => (100 - self.largest_free_frames * 100 / free) as u8,
        }
    }
}

impl fmt::Display for FrameStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |frames: u64| (frames * PAGE_SIZE) >> 20;
        write!(
            f,
            "frames: {} MiB total, {} MiB free, largest free block {} MiB, fragmentation {}%",
            mib(self.total_frames),
            mib(self.free_frames),
            mib(self.largest_free_frames),
            self.fragmentation_percent(),
        )
    }
}

fn check_order(order: u8) -> Result<(), MmError> {
    if order > MAX_ORDER {
        return Err(MmError::InvalidOrder { order });
    }
    Ok(())
}

fn frame_index(addr: HostPhysAddr) -> usize {
    usize::try_from(addr.as_u64() / PAGE_SIZE).unwrap_or(usize::MAX)
}

fn frame_addr(frame: usize) -> HostPhysAddr {
    HostPhysAddr::new(frame as u64 * PAGE_SIZE)
}

/// Splits a run of frames into maximal naturally aligned blocks, lowest
/// first, as `(first frame, order)`.
fn blocks(frames: Range<usize>) -> impl Iterator<Item = (usize, u8)> {
    let mut frame = frames.start;
    iter::from_fn(move || {
        let left = frames.end.checked_sub(frame).filter(|&n| n > 0)?;
        let align = if frame == 0 {
            u32::from(MAX_ORDER)
        } else {
            frame.trailing_zeros()
        };
        let order = align.min(left.ilog2()).min(u32::from(MAX_ORDER)) as u8;
        let block = (frame, order);
        frame += 1 << order;
        Some(block)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::addr::{SIZE_1G, SIZE_2M};

    fn addr(a: u64) -> HostPhysAddr {
        HostPhysAddr::new(a)
    }

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::new(addr(start), addr(end))
    }

    /// An allocator over `span_bytes` whose metadata is a leaked buffer of
    /// garbage, so tests also show `new` initialises what it uses.
    fn allocator(span_bytes: u64) -> BuddyAllocator<'static> {
        let frames = span_bytes / PAGE_SIZE;
        let meta = vec![0xa5; BuddyAllocator::metadata_bytes(frames)].leak();
        BuddyAllocator::new(frames, meta).unwrap()
    }

    fn allocator_with(span_bytes: u64, free: PhysRange) -> BuddyAllocator<'static> {
        let mut frames = allocator(span_bytes);
        frames.add_free_range(free).unwrap();
        frames
    }

    #[test]
    fn blocks_of_every_order_are_physically_aligned() {
        // Free memory starts at an odd frame, so alignment relative to the
        // range start would not be enough.
        let mut frames = allocator_with(4 * SIZE_1G, range(0x3000, 4 * SIZE_1G - 0x5000));
        for order in 0..=MAX_ORDER {
            let block = frames.alloc(order).unwrap();
            assert!(
                block.is_aligned(PAGE_SIZE << order),
                "order {order} block at {block}"
            );
            assert!(
                block.as_u64() >= 0x3000
                    && block.as_u64() + (PAGE_SIZE << order) <= 4 * SIZE_1G - 0x5000
            );
        }
        assert!(frames.alloc_2m().unwrap().is_aligned(SIZE_2M));
        assert!(frames.alloc_1g().unwrap().is_aligned(SIZE_1G));
        assert!(frames.alloc_frame().unwrap().is_aligned(PAGE_SIZE));
    }

    #[test]
    fn exhaustion_is_an_error_not_a_panic() {
        let mut frames = allocator_with(4 * SIZE_2M, range(SIZE_2M, 2 * SIZE_2M));
        assert_eq!(frames.alloc(10), Err(MmError::OutOfMemory { order: 10 }));
        assert_eq!(
            frames.alloc(MAX_ORDER + 1),
            Err(MmError::InvalidOrder {
                order: MAX_ORDER + 1
            })
        );
        for _ in 0..512 {
            frames.alloc_frame().unwrap();
        }
        assert_eq!(frames.alloc_frame(), Err(MmError::OutOfMemory { order: 0 }));
        assert_eq!(frames.stats().free_frames, 0);
    }

    #[test]
    fn empty_allocator_has_nothing_to_give() {
        let mut frames = allocator(0);
        assert_eq!(frames.alloc_frame(), Err(MmError::OutOfMemory { order: 0 }));
        assert_eq!(
            frames.stats(),
            FrameStats {
                total_frames: 0,
                free_frames: 0,
                largest_free_frames: 0
            }
        );
    }

    #[test]
    fn freeing_every_frame_of_a_2m_block_merges_it_back() {
        let mut frames = allocator_with(4 * SIZE_2M, range(SIZE_2M, 2 * SIZE_2M));
        let start = frames.stats();
        assert_eq!(start.largest_free_frames, 512);
        let mut blocks: Vec<_> = (0..512).map(|_| frames.alloc_frame().unwrap()).collect();
        // Free in an order unrelated to allocation order.
        blocks.sort_by_key(|a| a.as_u64().reverse_bits());
        for block in blocks {
            frames.free(block, 0).unwrap();
        }
        assert_eq!(frames.stats(), start);
        assert_eq!(frames.alloc_2m(), Ok(addr(SIZE_2M)));
    }

    #[test]
    fn adjacent_ranges_merge_into_larger_blocks() {
        let mut frames = allocator(2 * SIZE_2M);
        frames
            .add_free_range(range(SIZE_2M, SIZE_2M + 0x10_0000))
            .unwrap();
        frames
            .add_free_range(range(SIZE_2M + 0x10_0000, 2 * SIZE_2M))
            .unwrap();
        assert_eq!(frames.stats().largest_free_frames, 512);
        assert_eq!(frames.alloc_2m(), Ok(addr(SIZE_2M)));
    }

    #[test]
    fn unaligned_ranges_are_trimmed_to_whole_frames() {
        let mut frames = allocator(SIZE_2M);
        frames.add_free_range(range(0x1800, 0x5100)).unwrap();
        // Less than a frame: nothing to add, and not an error.
        frames.add_free_range(range(0x8100, 0x8f00)).unwrap();
        assert_eq!(frames.stats().total_frames, 3);
        let got: HashSet<_> = (0..3)
            .map(|_| frames.alloc_frame().unwrap().as_u64())
            .collect();
        assert_eq!(got, HashSet::from([0x2000, 0x3000, 0x4000]));
        assert_eq!(frames.alloc_frame(), Err(MmError::OutOfMemory { order: 0 }));
    }

    #[test]
    fn double_free_is_detected_and_changes_nothing() {
        let mut frames = allocator_with(SIZE_2M, range(0, SIZE_2M));
        let pair = frames.alloc(1).unwrap();
        frames.free(pair, 1).unwrap();
        let before = frames.stats();
        assert_eq!(
            frames.free(pair, 1),
            Err(MmError::DoubleFree {
                addr: pair,
                order: 1
            })
        );
        // The pair's second frame now lies inside a larger free block.
        let inner = addr(pair.as_u64() + PAGE_SIZE);
        assert_eq!(
            frames.free(inner, 0),
            Err(MmError::DoubleFree {
                addr: inner,
                order: 0
            })
        );
        assert_eq!(frames.stats(), before);
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        let mut frames = allocator_with(SIZE_2M, range(0x10_0000, SIZE_2M));
        let pair = frames.alloc(1).unwrap();
        let before = frames.stats();
        let span_end = addr(SIZE_2M);
        let cases = [
            (
                pair,
                0,
                MmError::OrderMismatch {
                    addr: pair,
                    order: 0,
                    allocated: 1,
                },
            ),
            (
                addr(pair.as_u64() + PAGE_SIZE),
                0,
                MmError::NotAllocated {
                    addr: addr(pair.as_u64() + PAGE_SIZE),
                    order: 0,
                },
            ),
            (
                addr(pair.as_u64() + PAGE_SIZE),
                1,
                MmError::Misaligned {
                    addr: addr(pair.as_u64() + PAGE_SIZE),
                    order: 1,
                },
            ),
            (
                addr(pair.as_u64() + 8),
                0,
                MmError::Misaligned {
                    addr: addr(pair.as_u64() + 8),
                    order: 0,
                },
            ),
            (
                addr(0x1000),
                0,
                MmError::NotAllocated {
                    addr: addr(0x1000),
                    order: 0,
                },
            ),
            (
                span_end,
                0,
                MmError::OutsideSpan {
                    addr: span_end,
                    span_end,
                },
            ),
            (
                pair,
                MAX_ORDER + 1,
                MmError::InvalidOrder {
                    order: MAX_ORDER + 1,
                },
            ),
        ];
        for (at, order, err) in cases {
            assert_eq!(frames.free(at, order), Err(err));
        }
        assert_eq!(frames.stats(), before);
        frames.free(pair, 1).unwrap();
    }

    #[test]
    fn adding_managed_memory_again_is_refused_and_adds_nothing() {
        let mut frames = allocator_with(SIZE_2M, range(0x1_0000, 0x2_0000));
        frames.add_free_range(range(0x4_0000, 0x8_0000)).unwrap();
        assert_eq!(frames.alloc(4), Ok(addr(0x1_0000)));
        let before = frames.stats();
        let overlap = |a| Err(MmError::Overlap { addr: addr(a) });
        // Free memory again; a range ending inside the allocated block (the
        // part before it is fine, but nothing is added); one starting inside.
        assert_eq!(
            frames.add_free_range(range(0x4_0000, 0x4_2000)),
            overlap(0x4_0000)
        );
        assert_eq!(
            frames.add_free_range(range(0x8000, 0x1_3000)),
            overlap(0x1_0000)
        );
        assert_eq!(
            frames.add_free_range(range(0x1_8000, 0x3_0000)),
            overlap(0x1_8000)
        );
        assert_eq!(frames.stats(), before);
        assert_eq!(
            frames.add_free_range(range(0x10_0000, 0x30_0000)),
            Err(MmError::OutsideSpan {
                addr: addr(0x30_0000),
                span_end: addr(SIZE_2M)
            })
        );
    }

    #[test]
    fn new_checks_the_metadata_slice() {
        let mut meta = vec![0; BuddyAllocator::metadata_bytes(100) - 1];
        assert_eq!(
            BuddyAllocator::new(100, &mut meta).err(),
            Some(MmError::MetadataTooSmall {
                needed: 900,
                got: 899
            })
        );
        assert_eq!(
            BuddyAllocator::new(MAX_SPAN_FRAMES + 1, &mut meta).err(),
            Some(MmError::SpanTooLarge {
                frames: MAX_SPAN_FRAMES + 1
            })
        );
    }

    #[test]
    fn metadata_goes_in_the_smallest_usable_range_that_fits() {
        // Unsorted and unaligned; the span ends at 0x1_0000_0000 rounded
        // down to 0x0fff_f000 from the top range.
        let usable = [
            range(0x1_0000_0000, 0x1_4000_0800),
            range(0x10_0800, 0x20_0000),
            range(0x8000, 0x9000),
            range(0x80_0000, 0x180_0000),
        ];
        let (meta, span_frames) = place_metadata(&usable).unwrap();
        assert_eq!(span_frames, 0x1_4000_0000 / PAGE_SIZE);
        let needed = BuddyAllocator::metadata_bytes(span_frames) as u64;
        assert!(meta.start.is_aligned(PAGE_SIZE) && meta.end.is_aligned(PAGE_SIZE));
        assert!(meta.len() >= needed && meta.len() < needed + PAGE_SIZE);
        // 11.25 MiB of metadata: too big for the two small ranges, so the
        // 16 MiB one, not the 1 GiB one.
        assert_eq!(meta.start, addr(0x80_0000));
    }

    #[test]
    fn metadata_placement_fails_cleanly() {
        assert_eq!(place_metadata(&[]), Err(MmError::NoUsableMemory));
        assert_eq!(
            place_metadata(&[range(0x1800, 0x2100)]),
            Err(MmError::NoUsableMemory)
        );
        // 1 GiB of span needs 2.25 MiB of metadata; 2 MiB ranges are too small.
        let usable = [range(0, SIZE_2M), range(SIZE_1G - SIZE_2M, SIZE_1G)];
        assert_eq!(
            place_metadata(&usable),
            Err(MmError::NoRoomForMetadata {
                needed: 9 * SIZE_1G / PAGE_SIZE
            })
        );
    }

    #[test]
    fn boot_setup_hands_out_usable_memory_except_the_metadata() {
        // Overlapping and duplicated entries, as a sloppy firmware map has.
        let usable = [
            range(0x10_0000, 0x7fe_0000),
            range(0x8000, 0x9f000),
            range(0x200_0000, 0x300_0000),
            range(0x7f0_0000, 0x800_0000),
            range(0x8000, 0x9f000),
        ];
        let (meta_range, span_frames) = place_metadata(&usable).unwrap();
        let meta = vec![0xff; meta_range.len() as usize].leak();
        let mut frames = BuddyAllocator::new(span_frames, meta).unwrap();
        frames.add_usable(&usable, meta_range).unwrap();

        let expected = (0x9f000 - 0x8000 + 0x800_0000 - 0x10_0000 - meta_range.len()) / PAGE_SIZE;
        assert_eq!(frames.stats().total_frames, expected);
        let mut seen = HashSet::new();
        while let Ok(frame) = frames.alloc_frame() {
            assert!(
                !meta_range.contains(frame),
                "metadata frame {frame} handed out"
            );
            assert!(
                usable.iter().any(|r| r.contains(frame)),
                "{frame} is not usable"
            );
            assert!(seen.insert(frame), "{frame} handed out twice");
        }
        assert_eq!(seen.len() as u64, expected);
    }

    #[test]
    fn stats_print_one_line_in_mib() {
        let mib = |n: u64| n << 8;
        let stats = FrameStats {
            total_frames: mib(2048),
            free_frames: mib(1990),
            largest_free_frames: mib(1024),
        };
        assert_eq!(
            stats.to_string(),
            "frames: 2048 MiB total, 1990 MiB free, largest free block 1024 MiB, fragmentation 49%"
        );
        let none_free = FrameStats {
            free_frames: 0,
            largest_free_frames: 0,
            ..stats
        };
        assert_eq!(none_free.fragmentation_percent(), 0);
        let one_block = FrameStats {
            free_frames: 512,
            largest_free_frames: 512,
            ..stats
        };
        assert_eq!(one_block.fragmentation_percent(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u8),
        /// Free the live block at this index, modulo the number live.
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..=10u8).prop_map(Op::Alloc),
            any::<usize>().prop_map(Op::Free)
        ]
    }

    proptest! {
        #[test]
        fn random_alloc_and_free_never_hand_out_a_frame_twice(ops in prop::collection::vec(op(), 1..400)) {
            // 16 MiB span with ragged free memory, so blocks of order 10
            // (4 MiB) run out now and then.
            let free = range(0x3000, 0x100_0000 - 0x5000);
            let mut frames = allocator_with(0x100_0000, free);
            let start = frames.stats();
            // Live blocks by first frame address: (end address, order).
            let mut live: BTreeMap<u64, (u64, u8)> = BTreeMap::new();
            let mut live_frames = 0;
            for op in ops {
                match op {
                    Op::Alloc(order) => match frames.alloc(order) {
                        Ok(block) => {
                            let (start, end) = (block.as_u64(), block.as_u64() + (PAGE_SIZE << order));
                            prop_assert!(block.is_aligned(PAGE_SIZE << order));
                            prop_assert!(free.contains(block) && end <= free.end.as_u64());
                            let below = live.range(..end).next_back();
                            prop_assert!(below.is_none_or(|(_, &(e, _))| e <= start), "{block} overlaps a live block");
                            live.insert(start, (end, order));
                            live_frames += 1 << order;
                        }
                        Err(e) => {
                            prop_assert_eq!(e, MmError::OutOfMemory { order });
                            prop_assert!(frames.stats().largest_free_frames < 1 << order);
                        }
                    },
                    Op::Free(i) if !live.is_empty() => {
                        let (&start, &(_, order)) = live.iter().nth(i % live.len()).unwrap();
                        frames.free(addr(start), order).unwrap();
                        live.remove(&start);
                        live_frames -= 1 << order;
                    }
                    Op::Free(_) => {}
                }
                prop_assert_eq!(frames.stats().free_frames, start.free_frames - live_frames);
            }
            for (start, (_, order)) in live {
                frames.free(addr(start), order).unwrap();
            }
            prop_assert_eq!(frames.stats(), start);
        }
    }
}
