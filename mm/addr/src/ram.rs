//! Where a guest's RAM lies in its guest-physical address space.
//!
//! The PC way, as QEMU's `pc` machine and Xen HVM guests have it: the first
//! [`LOW_RAM_LIMIT`] bytes (3 GiB) of RAM from address 0, below the 32-bit
//! device window (PCI memory, the I/O APIC at `0xFEC0_0000`, the local APIC
//! at `0xFEE0_0000`), and the rest from [`HIGH_RAM_BASE`] (4 GiB) up. The
//! window between is never RAM, whatever the guest's size.
//!
//! The loaders (memory maps), the host's RAM allocation and second-level
//! tables, and every copy between a guest address and host memory agree on
//! this one type, so no two of them can disagree on where RAM is.

use core::fmt;

use super::GuestPhysAddr;

/// The most RAM that lies below the 32-bit device window: RAM from 0 ends
/// here at most (3 GiB).
pub const LOW_RAM_LIMIT: u64 = 0xC000_0000;
/// Where RAM past [`LOW_RAM_LIMIT`] continues: 4 GiB, above the 32-bit
/// device window.
pub const HIGH_RAM_BASE: u64 = 0x1_0000_0000;
/// The most RAM a guest may have: 15 GiB, so that its RAM ends at 16 GiB at
/// most. That is what the loaders' long-mode identity map (16 page
/// directories of 1 GiB) covers, and 34 address bits reach it, well within
/// the 36 or more any x86-64 CPU reports.
pub const MAX_GUEST_RAM: u64 = 15 << 30;

/// A guest's RAM in guest-physical memory: `size` bytes, the first up to
/// [`LOW_RAM_LIMIT`] from address 0 and the rest from [`HIGH_RAM_BASE`].
/// Its size is at most [`MAX_GUEST_RAM`], so no address in it overflows.
/// The default is no RAM at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RamLayout {
    size: u64,
}

impl RamLayout {
    /// The layout of `size` bytes of RAM, or `None` above
    /// [`MAX_GUEST_RAM`].
    pub const fn new(size: u64) -> Option<Self> {
        if size > MAX_GUEST_RAM {
            None
        } else {
            Some(Self { size })
        }
    }

    /// The RAM's size in bytes (both ranges together).
    pub const fn size(self) -> u64 {
        self.size
    }

    /// The bytes of RAM from address 0, below the device window.
    pub const fn low_len(self) -> u64 {
        if self.size < LOW_RAM_LIMIT {
            self.size
        } else {
            LOW_RAM_LIMIT
        }
    }

    /// The bytes of RAM from [`HIGH_RAM_BASE`] up (zero for a guest of
    /// [`LOW_RAM_LIMIT`] or less).
    pub const fn high_len(self) -> u64 {
        self.size.saturating_sub(LOW_RAM_LIMIT)
    }

    /// One past the highest RAM address.
    pub const fn end(self) -> u64 {
        if self.high_len() > 0 {
            // At most 4 GiB + 12 GiB: `new` caps the size.
            HIGH_RAM_BASE.saturating_add(self.high_len())
        } else {
            self.low_len()
        }
    }

    /// The RAM ranges as (first address, length), lowest first: one, or
    /// two for a guest larger than [`LOW_RAM_LIMIT`]. A guest of no RAM
    /// has one empty range at 0.
    pub fn ranges(self) -> impl Iterator<Item = (GuestPhysAddr, u64)> {
        let high =
            (self.high_len() > 0).then_some((GuestPhysAddr::new(HIGH_RAM_BASE), self.high_len()));
        core::iter::once((GuestPhysAddr::new(0), self.low_len())).chain(high)
    }

    /// Where the byte at `gpa` is in the RAM taken as one run of `size`
    /// bytes (low range first, then the high one), or `None` if `gpa` is
    /// not RAM.
    pub fn offset_of(self, gpa: GuestPhysAddr) -> Option<u64> {
        let a = gpa.as_u64();
        if a < self.low_len() {
            Some(a)
        } else if a >= HIGH_RAM_BASE && a < self.end() && self.high_len() > 0 {
            Some(a - HIGH_RAM_BASE + LOW_RAM_LIMIT)
        } else {
            None
        }
    }

    /// The guest address of the byte at `offset` in the RAM taken as one
    /// run, or `None` at or past its size.
    pub fn gpa_of(self, offset: u64) -> Option<GuestPhysAddr> {
        if offset >= self.size {
            None
        } else if offset < LOW_RAM_LIMIT {
            Some(GuestPhysAddr::new(offset))
        } else {
            Some(GuestPhysAddr::new(offset - LOW_RAM_LIMIT + HIGH_RAM_BASE))
        }
    }

    /// Whether all `len` bytes from `gpa` are RAM: they lie in one range
    /// (the two are never adjacent). An empty access is in RAM where it
    /// starts in a range or at its end.
    pub fn contains(self, gpa: GuestPhysAddr, len: u64) -> bool {
        let Some(end) = gpa.as_u64().checked_add(len) else {
            return false;
        };
        self.ranges().any(|(start, range_len)| {
            gpa >= start && end <= start.as_u64().saturating_add(range_len)
        })
    }
}

/// `0x100000 bytes`, or for RAM in two ranges
/// `0x140000000 bytes: [0, 0xc0000000) and [0x100000000, 0x180000000)`.
impl fmt::Display for RamLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} bytes", self.size)?;
        if self.high_len() > 0 {
            write!(
                f,
                ": [0, {:#x}) and [{HIGH_RAM_BASE:#x}, {:#x})",
                self.low_len(),
                self.end()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(a)
    }

    #[test]
    fn small_guests_have_one_range_from_zero() {
        let r = RamLayout::new(256 << 20).unwrap();
        assert_eq!(r.ranges().collect::<Vec<_>>(), [(gpa(0), 256 << 20)]);
        assert_eq!(
            (r.low_len(), r.high_len(), r.end()),
            (256 << 20, 0, 256 << 20)
        );
        let three = RamLayout::new(3 * GIB).unwrap();
        assert_eq!(three.ranges().count(), 1);
        assert_eq!(three.end(), LOW_RAM_LIMIT);
    }

    #[test]
    fn ram_past_3_gib_continues_at_4_gib() {
        let r = RamLayout::new(4 * GIB).unwrap();
        assert_eq!(
            r.ranges().collect::<Vec<_>>(),
            [(gpa(0), 3 * GIB), (gpa(4 * GIB), GIB)]
        );
        assert_eq!(r.end(), 5 * GIB);
        assert_eq!(r.size(), 4 * GIB);
        assert_eq!(
            r.to_string(),
            "0x100000000 bytes: [0, 0xc0000000) and [0x100000000, 0x140000000)"
        );
        assert_eq!(
            RamLayout::new(1 << 20).unwrap().to_string(),
            "0x100000 bytes"
        );
    }

    #[test]
    fn the_device_window_is_never_ram() {
        let r = RamLayout::new(4 * GIB).unwrap();
        for a in [3 * GIB, 0xFEC0_0000, 0xFEE0_0000, 4 * GIB - 1, 5 * GIB] {
            assert_eq!(r.offset_of(gpa(a)), None, "{a:#x}");
            assert!(!r.contains(gpa(a), 1), "{a:#x}");
        }
        // An access that runs from low RAM into the window, or from the
        // window into high RAM, is not all RAM.
        assert!(!r.contains(gpa(3 * GIB - 8), 16));
        assert!(!r.contains(gpa(4 * GIB - 8), 16));
        assert!(r.contains(gpa(3 * GIB - 8), 8));
        assert!(r.contains(gpa(4 * GIB), 8));
        assert!(r.contains(gpa(5 * GIB - 8), 8));
        assert!(!r.contains(gpa(5 * GIB - 8), 9));
        assert!(!r.contains(gpa(u64::MAX), 2));
        // Empty accesses: at a range's start or end, not in the window.
        assert!(r.contains(gpa(3 * GIB), 0));
        assert!(r.contains(gpa(5 * GIB), 0));
        assert!(!r.contains(gpa(3 * GIB + 1), 0));
    }

    #[test]
    fn offsets_run_through_both_ranges_in_order() {
        let r = RamLayout::new(4 * GIB + (2 << 20)).unwrap();
        assert_eq!(r.offset_of(gpa(0x1234)), Some(0x1234));
        assert_eq!(r.offset_of(gpa(3 * GIB - 1)), Some(3 * GIB - 1));
        assert_eq!(r.offset_of(gpa(4 * GIB)), Some(3 * GIB));
        assert_eq!(r.offset_of(gpa(5 * GIB + 0x10)), Some(4 * GIB + 0x10));
        for off in [0, 1, 3 * GIB - 1, 3 * GIB, r.size() - 1] {
            let a = r.gpa_of(off).unwrap();
            assert_eq!(r.offset_of(a), Some(off), "{off:#x}");
        }
        assert_eq!(r.gpa_of(r.size()), None);
        // Without high RAM nothing at 4 GiB is RAM.
        assert_eq!(RamLayout::new(GIB).unwrap().offset_of(gpa(4 * GIB)), None);
    }

    #[test]
    fn the_size_is_capped_so_ram_ends_at_16_gib() {
        let max = RamLayout::new(MAX_GUEST_RAM).unwrap();
        assert_eq!(max.end(), 16 * GIB);
        assert_eq!(RamLayout::new(MAX_GUEST_RAM + 4096), None);
        assert_eq!(RamLayout::new(u64::MAX), None);
        assert_eq!(
            RamLayout::new(0).unwrap().ranges().collect::<Vec<_>>(),
            [(gpa(0), 0)]
        );
    }
}
