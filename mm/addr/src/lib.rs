//! Address newtypes: host-physical, guest-physical and host-virtual
//! addresses are distinct types with checked arithmetic, so one kind can
//! never be used where another is meant; and [`RamLayout`], where a
//! guest's RAM lies among its guest-physical addresses.
//!
//! There is deliberately no conversion between the physical kinds: turning a
//! guest-physical address into a host-physical one is a walk of that guest's
//! EPT, not a cast.
//!
//! A crate of its own so that `mm` and `vmx` (EPT) share these types without
//! depending on each other; `mm` re-exports it as `mm::addr`.
//!
//! ```
//! use addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
//! let gpa = GuestPhysAddr::new(0x1234);
//! let hpa = HostPhysAddr::new(0x1234);
//! assert_eq!(gpa.as_u64(), hpa.as_u64());
//! assert_eq!(hpa.align_down(PAGE_SIZE), HostPhysAddr::new(0x1000));
//! ```
//!
//! ```compile_fail
//! use addr::{GuestPhysAddr, HostPhysAddr};
//! let hpa: HostPhysAddr = GuestPhysAddr::new(0x1234);
//! ```

#![cfg_attr(not(test), no_std)]

use core::fmt;

mod ram;

pub use ram::{RamLayout, HIGH_RAM_BASE, LOW_RAM_LIMIT, MAX_GUEST_RAM};

/// The size of a base page and of a physical frame: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// The size of a large page (a page-directory entry): 2 MiB.
pub const SIZE_2M: u64 = 2 << 20;
/// The size of a huge page (a PDPT entry): 1 GiB.
pub const SIZE_1G: u64 = 1 << 30;

/// The low-bit mask of `align`, which must be a power of two.
const fn align_mask(align: u64) -> u64 {
    debug_assert!(align.is_power_of_two(), "alignment must be a power of two");
    align.wrapping_sub(1)
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Alignment arguments must be powers of two (constants such as
        /// [`PAGE_SIZE`]); other values give a meaningless result.
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address `addr`.
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The address as a plain number.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + offset`, or `None` if that passes the top of the
            /// address space.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(addr) => Some(Self(addr)),
                    None => None,
                }
            }

            /// `self - offset`, or `None` if that goes below zero.
            pub const fn checked_sub(self, offset: u64) -> Option<Self> {
                match self.0.checked_sub(offset) {
                    Some(addr) => Some(Self(addr)),
                    None => None,
                }
            }

            /// The highest address at or below `self` that is a multiple of
            /// `align`.
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !align_mask(align))
            }

            /// The lowest address at or above `self` that is a multiple of
            /// `align`, or `None` if that passes the top of the address space.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                let mask = align_mask(align);
                match self.0.checked_add(mask) {
                    Some(addr) => Some(Self(addr & !mask)),
                    None => None,
                }
            }

            /// Whether `self` is a multiple of `align`.
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & align_mask(align) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// A host-physical address: what the CPU puts on the memory bus, and
    /// what EPT entries and page tables point at.
    HostPhysAddr
);
address_type!(
    /// A guest-physical address: an address in a guest's view of its RAM,
    /// meaningful only through that guest's EPT.
    GuestPhysAddr
);
address_type!(
    /// A host-virtual address: an address in the hypervisor's own page
    /// tables.
    VirtAddr
);

/// A half-open range `[start, end)` of host-physical addresses. A range
/// with `end <= start` is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// The first address in the range.
    pub start: HostPhysAddr,
    /// The first address past the range.
    pub end: HostPhysAddr,
}

impl PhysRange {
    /// The empty range at address zero, for filling fixed-size arrays.
    pub const EMPTY: Self = Self::new(HostPhysAddr::new(0), HostPhysAddr::new(0));

    /// The range `[start, end)`.
    pub const fn new(start: HostPhysAddr, end: HostPhysAddr) -> Self {
        Self { start, end }
    }

    /// The length in bytes (zero for an empty range).
    pub const fn len(&self) -> u64 {
        self.end.as_u64().saturating_sub(self.start.as_u64())
    }

    /// Whether the range holds no address.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: HostPhysAddr) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The addresses in both ranges, or `None` if they share none.
    pub fn intersection(&self, other: &Self) -> Option<Self> {
        let both = Self::new(self.start.max(other.start), self.end.min(other.end));
        (!both.is_empty()).then_some(both)
    }

    /// The whole pages inside the range: the start rounded up and the end
    /// rounded down to [`PAGE_SIZE`]. Empty if no whole page fits.
    pub fn page_trimmed(&self) -> Self {
        match self.start.align_up(PAGE_SIZE) {
            Some(start) => Self::new(start, self.end.align_down(PAGE_SIZE).max(start)),
            None => Self::new(self.end, self.end),
        }
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::new(HostPhysAddr::new(start), HostPhysAddr::new(end))
    }

    #[test]
    fn checked_arithmetic_stops_at_the_ends_of_the_address_space() {
        let top = GuestPhysAddr::new(u64::MAX - 1);
        assert_eq!(top.checked_add(1), Some(GuestPhysAddr::new(u64::MAX)));
        assert_eq!(top.checked_add(2), None);
        assert_eq!(VirtAddr::new(5).checked_sub(5), Some(VirtAddr::new(0)));
        assert_eq!(VirtAddr::new(5).checked_sub(6), None);
    }

    #[test]
    fn alignment_rounds_to_the_boundary() {
        let a = HostPhysAddr::new(0x20_1234);
        assert_eq!(a.align_down(PAGE_SIZE), HostPhysAddr::new(0x20_1000));
        assert_eq!(a.align_up(PAGE_SIZE), Some(HostPhysAddr::new(0x20_2000)));
        assert_eq!(a.align_down(SIZE_2M), HostPhysAddr::new(0x20_0000));
        assert_eq!(a.align_up(SIZE_2M), Some(HostPhysAddr::new(0x40_0000)));
        assert_eq!(a.align_up(SIZE_1G), Some(HostPhysAddr::new(SIZE_1G)));
        assert!(!a.is_aligned(PAGE_SIZE));
        assert!(HostPhysAddr::new(SIZE_1G).is_aligned(SIZE_1G));
        // An aligned address stays put, and rounding past the top is refused.
        assert_eq!(
            HostPhysAddr::new(0x3000).align_up(PAGE_SIZE),
            Some(HostPhysAddr::new(0x3000))
        );
        assert_eq!(HostPhysAddr::new(u64::MAX).align_up(PAGE_SIZE), None);
    }

    #[test]
    fn addresses_print_as_hex() {
        assert_eq!(HostPhysAddr::new(0xfee0_0000).to_string(), "0xfee00000");
        assert_eq!(
            format!("{:?}", GuestPhysAddr::new(0x1000)),
            "GuestPhysAddr(0x1000)"
        );
        assert_eq!(range(0x1000, 0x2000).to_string(), "[0x1000, 0x2000)");
    }

    #[test]
    fn ranges_are_half_open() {
        let r = range(0x1000, 0x3000);
        assert_eq!(r.len(), 0x2000);
        assert!(r.contains(HostPhysAddr::new(0x1000)));
        assert!(r.contains(HostPhysAddr::new(0x2fff)));
        assert!(!r.contains(HostPhysAddr::new(0x3000)));
        assert!(range(0x3000, 0x1000).is_empty());
        assert_eq!(range(0x3000, 0x1000).len(), 0);
    }

    #[test]
    fn intersection_keeps_only_shared_addresses() {
        let r = range(0x1000, 0x3000);
        assert_eq!(
            r.intersection(&range(0x2000, 0x5000)),
            Some(range(0x2000, 0x3000))
        );
        assert_eq!(r.intersection(&range(0, 0x10000)), Some(r));
        assert_eq!(r.intersection(&range(0x3000, 0x4000)), None);
    }

    #[test]
    fn page_trimming_keeps_whole_pages_only() {
        assert_eq!(range(0x1800, 0x5100).page_trimmed(), range(0x2000, 0x5000));
        assert!(range(0x1800, 0x1f00).page_trimmed().is_empty());
        assert!(range(0x1800, 0x2100).page_trimmed().is_empty());
        assert!(range(u64::MAX - 10, u64::MAX).page_trimmed().is_empty());
    }
}
