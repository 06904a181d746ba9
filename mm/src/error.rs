//! The crate's one error type, [`MmError`].

use core::fmt;

use crate::addr::HostPhysAddr;
use crate::frame::MAX_ORDER;

/// What went wrong in memory management. Every variant names the address,
/// order or size involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// No free block of `order` or larger is left.
    OutOfMemory {
        /// The order that was asked for.
        order: u8,
    },
    /// An order above [`MAX_ORDER`] was asked for or freed.
    InvalidOrder {
        /// The order given.
        order: u8,
    },
    /// A block was freed at an address not aligned to its size.
    Misaligned {
        /// The address given.
        addr: HostPhysAddr,
        /// The order given.
        order: u8,
    },
    /// An address or range lies beyond the memory the allocator was sized for.
    OutsideSpan {
        /// The offending address (for a range, its end).
        addr: HostPhysAddr,
        /// The end of the allocator's span.
        span_end: HostPhysAddr,
    },
    /// A block was freed that is already free.
    DoubleFree {
        /// The address given.
        addr: HostPhysAddr,
        /// The order given.
        order: u8,
    },
    /// A block was freed with a different order than it was allocated with.
    OrderMismatch {
        /// The address given.
        addr: HostPhysAddr,
        /// The order given.
        order: u8,
        /// The order the block was allocated with.
        allocated: u8,
    },
    /// A block was freed that the allocator never handed out.
    NotAllocated {
        /// The address given.
        addr: HostPhysAddr,
        /// The order given.
        order: u8,
    },
    /// Memory added as free is already managed by the allocator.
    Overlap {
        /// The first frame found already managed.
        addr: HostPhysAddr,
    },
    /// The metadata slice is smaller than the span needs.
    MetadataTooSmall {
        /// Bytes the span needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The span has more frames than frame indices can number.
    SpanTooLarge {
        /// Frames asked for.
        frames: u64,
    },
    /// The memory map holds no whole usable frame.
    NoUsableMemory,
    /// No usable range is large enough for the allocator's metadata.
    NoRoomForMetadata {
        /// Bytes needed, rounded up to whole frames.
        needed: u64,
    },
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfMemory { order } => {
                write!(
                    f,
                    "out of physical memory: no free block of order {order} or larger"
                )
            }
            Self::InvalidOrder { order } => {
                write!(f, "invalid block order {order}: the largest is {MAX_ORDER}")
            }
            Self::Misaligned { addr, order } => {
                write!(
                    f,
                    "free of {addr} at order {order}: address is not aligned to the block size"
                )
            }
            Self::OutsideSpan { addr, span_end } => {
                write!(
                    f,
                    "{addr} lies beyond the frame allocator's span, which ends at {span_end}"
                )
            }
            Self::DoubleFree { addr, order } => {
                write!(
                    f,
                    "double free of {addr} at order {order}: the block is already free"
                )
            }
            Self::OrderMismatch {
                addr,
                order,
                allocated,
            } => {
                write!(
                    f,
                    "free of {addr} at order {order}, but it was allocated at order {allocated}"
                )
            }
            Self::NotAllocated { addr, order } => {
                write!(
                    f,
                    "free of {addr} at order {order}: no block of that order was allocated there"
                )
            }
            Self::Overlap { addr } => {
                write!(f, "free memory at {addr} is already managed by the frame allocator (overlapping ranges?)")
            }
            Self::MetadataTooSmall { needed, got } => {
                write!(
                    f,
                    "frame allocator metadata too small: {got} bytes given, {needed} needed"
                )
            }
            Self::SpanTooLarge { frames } => {
                write!(
                    f,
                    "frame allocator span of {frames} frames is too large: at most {} supported",
                    u32::MAX
                )
            }
            Self::NoUsableMemory => write!(f, "the memory map has no usable whole frame"),
            Self::NoRoomForMetadata { needed } => {
                write!(
                    f,
                    "no usable memory range holds the frame allocator's {needed} bytes of metadata"
                )
            }
        }
    }
}

impl core::error::Error for MmError {}
