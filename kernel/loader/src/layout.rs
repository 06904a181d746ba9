//! Where the loaders put things in guest-physical memory, the memory map
//! they report to the guest (and to the code that builds the guest's EPT
//! and devices), and the bookkeeping that keeps every placement inside RAM
//! and apart from the others.
//!
//! # Guest-physical layout
//!
//! Guest RAM is laid out by [`RamLayout`], the PC way: up to [`RAM_LIMIT`]
//! (3 GiB) from address 0, below the 32-bit device window, and the rest
//! from 4 GiB ([`HIGH_RAM_BASE`]) up; a guest has at most
//! [`MAX_GUEST_RAM`] (15 GiB), so its RAM ends at 16 GiB at most. The
//! loaders place everything they load in the low range (the boot protocols
//! want kernels, initrds and modules below 4 GiB). Every loader uses the
//! same fixed spots for what it builds, all in conventional memory:
//!
//! | address                | contents                                             |
//! |------------------------|------------------------------------------------------|
//! | `0x00000..0x01000`     | untouched (real-mode IVT and BIOS data area)         |
//! | `0x01000..0x01020`     | [`GDT_ADDR`]: GDT, protected and long mode entries   |
//! | `0x02000`              | [`PML4_ADDR`]: PML4, long mode entries               |
//! | `0x03000`              | [`PDPT_ADDR`]: page-directory-pointer table          |
//! | `0x04000..0x14000`     | [`PD_ADDR`]: one page directory per identity-mapped GiB |
//! | `0x14000..0x15000`     | [`BOOT_INFO_ADDR`]: Linux `boot_params`              |
//! | `0x15000..0x30000`     | [`LINUX_CMDLINE_ADDR`]: Linux command line           |
//! | `0x14000..0x30000`     | Multiboot information, memory map, modules, strings  |
//! | `0x30000..0xA0000`     | free conventional memory                             |
//! | `0xA0000..0x100000`    | reserved in the memory map (legacy VGA and ROM hole) |
//! | `0x100000..`           | kernels and flat images (where they ask), then the   |
//! |                        | initrd (high) or Multiboot modules (after the kernel)|
//! | `..0xC0000000`         | the end of the low RAM range (3 GiB at most)         |
//! | `0x100000000..`        | RAM past 3 GiB, reported as RAM, left to the guest   |
//!
//! The loader's own structures are reported as RAM: the boot protocols
//! leave it to the guest not to overwrite them before it has read them.

use core::fmt;

use addr::GuestPhysAddr;
pub use addr::{RamLayout, HIGH_RAM_BASE, MAX_GUEST_RAM};

use super::bytes::{put_u32, put_u64};
use super::error::{Item, LoadError};

/// The GDT the loader builds for protected and long mode entries.
pub const GDT_ADDR: GuestPhysAddr = GuestPhysAddr::new(0x1000);
/// The PML4 of the identity map built for long mode entries (CR3).
pub const PML4_ADDR: GuestPhysAddr = GuestPhysAddr::new(0x2000);
/// The page-directory-pointer table of the identity map.
pub const PDPT_ADDR: GuestPhysAddr = GuestPhysAddr::new(0x3000);
/// The first page directory of the identity map; the one for GiB `n` is
/// `n` pages above it.
pub const PD_ADDR: GuestPhysAddr = GuestPhysAddr::new(0x4000);
/// The most GiB an identity map covers (one page directory each, so they
/// end at `0x14000`): all the RAM of the largest guest, which ends at
/// 16 GiB.
pub const MAX_IDENTITY_MAP_GIB: u64 = 16;
const _: () = assert!(MAX_IDENTITY_MAP_GIB << 30 >= HIGH_RAM_BASE + MAX_GUEST_RAM - RAM_LIMIT);
/// Linux's `boot_params` and the start of the Multiboot information area.
pub const BOOT_INFO_ADDR: GuestPhysAddr = GuestPhysAddr::new(0x1_4000);
/// The Linux command line.
pub const LINUX_CMDLINE_ADDR: GuestPhysAddr = GuestPhysAddr::new(0x1_5000);
/// The first address past the boot information area.
pub const BOOT_INFO_END: GuestPhysAddr = GuestPhysAddr::new(0x3_0000);
/// The end of conventional memory (640 KiB) and start of the legacy hole.
pub const LOW_RAM_END: u64 = 0xA_0000;
/// The end of the legacy hole and start of extended memory (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Where RAM from address 0 ends at most: above 3 GiB the 32-bit device
/// window begins (PCI memory, the I/O APIC at `0xFEC0_0000`, the local
/// APIC at `0xFEE0_0000`), and RAM past it continues at
/// [`HIGH_RAM_BASE`].
pub const RAM_LIMIT: u64 = addr::LOW_RAM_LIMIT;

/// What a range of guest-physical addresses is, in e820 terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Usable RAM (e820 type 1, Multiboot type 1).
    Ram,
    /// Not for the guest's use (e820 type 2, any other Multiboot type).
    Reserved,
}

impl RegionKind {
    /// The e820 type code, which Multiboot memory maps share.
    pub const fn e820_type(self) -> u32 {
        match self {
            Self::Ram => 1,
            Self::Reserved => 2,
        }
    }
}

/// One range of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The first address.
    pub start: GuestPhysAddr,
    /// The length in bytes.
    pub len: u64,
    /// What the range is.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// The first address past the range.
    pub const fn end(&self) -> u64 {
        self.start.as_u64().saturating_add(self.len)
    }

    /// The 20-byte e820 entry: base, length, type (the Multiboot memory map
    /// entry without its size prefix).
    pub fn e820_entry(&self) -> [u8; 20] {
        let mut entry = [0; 20];
        put_u64(&mut entry, 0, self.start.as_u64());
        put_u64(&mut entry, 8, self.len);
        put_u32(&mut entry, 16, self.kind.e820_type());
        entry
    }
}

/// The most regions a [`MemoryMap`] holds.
const MAX_REGIONS: usize = 4;

/// The guest-physical memory map the loader reported to the guest (e820 in
/// `boot_params`, the Multiboot memory map), which EPT and device code must
/// agree with: RAM below 640 KiB, the legacy hole reserved, RAM from 1 MiB
/// to the end of the low range, and RAM from 4 GiB for a guest larger than
/// 3 GiB. The device window between is absent (not RAM), as on a PC
/// whose firmware lists only RAM and its own reservations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMap {
    regions: [MemoryRegion; MAX_REGIONS],
    len: usize,
}

impl MemoryMap {
    /// The memory map of a guest with `ram` bytes of RAM, laid out as
    /// [`RamLayout`] says.
    ///
    /// # Errors
    ///
    /// [`LoadError::GuestTooLarge`] where `ram` passes [`MAX_GUEST_RAM`].
    pub fn for_ram(ram: u64) -> Result<Self, LoadError> {
        let layout = layout_of(ram)?;
        let low_ram = layout.low_len();
        let empty = MemoryRegion {
            start: GuestPhysAddr::new(0),
            len: 0,
            kind: RegionKind::Ram,
        };
        let mut map = Self {
            regions: [empty; MAX_REGIONS],
            len: 0,
        };
        let low = low_ram.min(LOW_RAM_END);
        if low > 0 {
            map.push(0, low, RegionKind::Ram);
        }
        map.push(
            LOW_RAM_END,
            HIGH_RAM_START - LOW_RAM_END,
            RegionKind::Reserved,
        );
        if low_ram > HIGH_RAM_START {
            map.push(
                HIGH_RAM_START,
                low_ram.saturating_sub(HIGH_RAM_START),
                RegionKind::Ram,
            );
        }
        if layout.high_len() > 0 {
            map.push(HIGH_RAM_BASE, layout.high_len(), RegionKind::Ram);
        }
        Ok(map)
    }

    fn push(&mut self, start: u64, len: u64, kind: RegionKind) {
        if let Some(slot) = self.regions.get_mut(self.len) {
            *slot = MemoryRegion {
                start: GuestPhysAddr::new(start),
                len,
                kind,
            };
            self.len = self.len.saturating_add(1);
        }
    }

    /// The regions, in ascending address order.
    pub fn regions(&self) -> &[MemoryRegion] {
        self.regions.get(..self.len).unwrap_or_default()
    }
}

/// The layout of a guest with `ram` bytes of RAM.
///
/// # Errors
///
/// [`LoadError::GuestTooLarge`] where `ram` passes [`MAX_GUEST_RAM`].
pub fn layout_of(ram: u64) -> Result<RamLayout, LoadError> {
    RamLayout::new(ram).ok_or(LoadError::GuestTooLarge { ram })
}

/// How many GiB a long-mode identity map covers so that the guest reaches
/// all its RAM and the 32-bit device window: 4, or up to the end of RAM
/// above 4 GiB (at most [`MAX_IDENTITY_MAP_GIB`]; a page directory of
/// 4 KiB per GiB is all it costs).
pub fn identity_map_gib_for(ram: RamLayout) -> u64 {
    let gib = ram.end().div_ceil(1 << 30);
    gib.clamp(4, MAX_IDENTITY_MAP_GIB)
}

/// A range the loader filled, and with what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// What the range holds.
    pub item: Item,
    /// The first address.
    pub start: GuestPhysAddr,
    /// The length in bytes.
    pub len: u64,
}

impl Placement {
    /// The first address past the range.
    pub const fn end(&self) -> u64 {
        self.start.as_u64().saturating_add(self.len)
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.len > 0
            && other.len > 0
            && self.start.as_u64() < other.end()
            && other.start.as_u64() < self.end()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at [{}, {:#x})", self.item, self.start, self.end())
    }
}

/// The most placements one load records: the loader's own structures, the
/// kernel, the initrd and up to [`MAX_MODULES`](super::multiboot::MAX_MODULES)
/// Multiboot modules.
pub const MAX_PLACEMENTS: usize = 8 + super::multiboot::MAX_MODULES;

/// Everything one load placed in guest memory, checked as it is claimed to
/// lie inside RAM and apart from what was claimed before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placements {
    ram: RamLayout,
    items: [Placement; MAX_PLACEMENTS],
    len: usize,
}

impl Placements {
    /// No placements yet, in a guest whose RAM is `ram`.
    pub(crate) fn new(ram: RamLayout) -> Self {
        let empty = Placement {
            item: Item::Image,
            start: GuestPhysAddr::new(0),
            len: 0,
        };
        Self {
            ram,
            items: [empty; MAX_PLACEMENTS],
            len: 0,
        }
    }

    /// The guest RAM size the placements are checked against.
    pub fn ram(&self) -> u64 {
        self.ram.size()
    }

    /// The guest RAM the placements are checked against.
    pub fn layout(&self) -> RamLayout {
        self.ram
    }

    /// The placements, in the order they were made.
    pub fn as_slice(&self) -> &[Placement] {
        self.items.get(..self.len).unwrap_or_default()
    }

    /// The first placement of `item`, if any.
    pub fn find(&self, item: Item) -> Option<&Placement> {
        self.as_slice().iter().find(|p| p.item == item)
    }

    /// Checks that `len` bytes at `start` lie in RAM (in one of its
    /// ranges, never the device window) and overlap nothing placed so far,
    /// without recording them.
    pub(crate) fn check(&self, item: Item, start: u64, len: u64) -> Result<Placement, LoadError> {
        if !self.ram.contains(GuestPhysAddr::new(start), len) {
            return Err(LoadError::DoesNotFit {
                item,
                at: GuestPhysAddr::new(start),
                len,
                ram: self.ram.size(),
            });
        }
        let new = Placement {
            item,
            start: GuestPhysAddr::new(start),
            len,
        };
        if let Some(other) = self.as_slice().iter().find(|p| p.overlaps(&new)) {
            return Err(LoadError::Overlap {
                item,
                at: new.start,
                len,
                other: *other,
            });
        }
        Ok(new)
    }

    /// Checks as [`check`](Self::check) does, then records the placement.
    pub(crate) fn claim(
        &mut self,
        item: Item,
        start: u64,
        len: u64,
    ) -> Result<Placement, LoadError> {
        let new = self.check(item, start, len)?;
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = new;
                self.len = self.len.saturating_add(1);
            }
            // The module count is capped below the capacity, so every load
            // fits; were it not, the placement is still checked, only not
            // listed.
            None => debug_assert!(false, "placement list full"),
        }
        Ok(new)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_has_low_ram_hole_and_high_ram() {
        let map = MemoryMap::for_ram(64 << 20).unwrap();
        let r = map.regions();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].start.as_u64(), r[0].len, r[0].kind),
            (0, 0xA_0000, RegionKind::Ram)
        );
        assert_eq!(
            (r[1].start.as_u64(), r[1].len, r[1].kind),
            (0xA_0000, 0x6_0000, RegionKind::Reserved)
        );
        assert_eq!(
            (r[2].start.as_u64(), r[2].end(), r[2].kind),
            (0x10_0000, 64 << 20, RegionKind::Ram)
        );
    }

    #[test]
    fn small_guests_get_only_the_ram_they_have() {
        let r = MemoryMap::for_ram(0x8_0000).unwrap();
        assert_eq!(r.regions().len(), 2);
        assert_eq!(r.regions()[0].len, 0x8_0000);
        assert_eq!(MemoryMap::for_ram(0).unwrap().regions().len(), 1);
        assert_eq!(
            MemoryMap::for_ram(HIGH_RAM_START).unwrap().regions().len(),
            2
        );
    }

    #[test]
    fn ram_past_3_gib_is_reported_from_4_gib() {
        let map = MemoryMap::for_ram(4 << 30).unwrap();
        let r: Vec<_> = map
            .regions()
            .iter()
            .map(|r| (r.start.as_u64(), r.end(), r.kind))
            .collect();
        assert_eq!(
            r,
            [
                (0, 0xA_0000, RegionKind::Ram),
                (0xA_0000, 0x10_0000, RegionKind::Reserved),
                (0x10_0000, 0xC000_0000, RegionKind::Ram),
                (0x1_0000_0000, 0x1_4000_0000, RegionKind::Ram),
            ]
        );
        // The device window 3 GiB..4 GiB is in no region: not RAM.
        assert!(map
            .regions()
            .iter()
            .all(|r| r.end() <= RAM_LIMIT || r.start.as_u64() >= HIGH_RAM_BASE));
        // Exactly 3 GiB needs no high range.
        assert_eq!(MemoryMap::for_ram(RAM_LIMIT).unwrap().regions().len(), 3);
    }

    #[test]
    fn guests_past_the_largest_size_are_refused() {
        let max = MemoryMap::for_ram(MAX_GUEST_RAM).unwrap();
        assert_eq!(max.regions().last().unwrap().end(), 16 << 30);
        let e = MemoryMap::for_ram(MAX_GUEST_RAM + 4096).unwrap_err();
        assert_eq!(
            e,
            LoadError::GuestTooLarge {
                ram: MAX_GUEST_RAM + 4096
            }
        );
        assert!(e.to_string().contains("give it at most 15 GiB"), "{e}");
    }

    #[test]
    fn identity_maps_reach_all_ram_and_the_device_window() {
        let gib = |g: u64| identity_map_gib_for(RamLayout::new(g << 30).unwrap());
        assert_eq!(gib(0), 4);
        assert_eq!(gib(3), 4);
        // 4 GiB of RAM ends at 5 GiB; 4.5 GiB at 5.5, rounded up.
        assert_eq!(gib(4), 5);
        assert_eq!(identity_map_gib_for(RamLayout::new(9 << 29).unwrap()), 6);
        assert_eq!(gib(15), MAX_IDENTITY_MAP_GIB);
    }

    #[test]
    fn claims_in_the_device_window_or_across_it_are_refused() {
        let mut p = Placements::new(RamLayout::new(4 << 30).unwrap());
        p.claim(Item::Image, RAM_LIMIT - 0x1000, 0x1000).unwrap();
        p.claim(Item::Initrd, HIGH_RAM_BASE, 0x1000).unwrap();
        for (at, len) in [
            (RAM_LIMIT - 0x10, 0x20),
            (RAM_LIMIT, 0x10),
            (HIGH_RAM_BASE - 0x10, 0x20),
            ((5 << 30) - 0x10, 0x20),
        ] {
            assert!(
                matches!(
                    p.check(Item::Kernel, at, len),
                    Err(LoadError::DoesNotFit { .. })
                ),
                "{at:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn e820_entries_are_base_length_type() {
        let region = MemoryRegion {
            start: GuestPhysAddr::new(0x10_0000),
            len: 0x300_0000,
            kind: RegionKind::Reserved,
        };
        let e = region.e820_entry();
        assert_eq!(&e[0..8], &0x10_0000u64.to_le_bytes());
        assert_eq!(&e[8..16], &0x300_0000u64.to_le_bytes());
        assert_eq!(&e[16..20], &2u32.to_le_bytes());
    }

    #[test]
    fn claims_must_fit_ram_and_stay_apart() {
        let mut p = Placements::new(RamLayout::new(0x10_0000).unwrap());
        p.claim(Item::Gdt, 0x1000, 0x20).unwrap();
        p.claim(Item::Kernel, 0x2000, 0x1000).unwrap();
        // Touching is fine, overlapping is not.
        p.claim(Item::Initrd, 0x3000, 0x1000).unwrap();
        let e = p.claim(Item::Image, 0x1010, 0x10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image at [0x1010, 0x1020) overlaps the GDT at [0x1000, 0x1020)"
        );
        let e = p.claim(Item::Image, 0xF_F000, 0x1001).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image needs 0x1001 bytes at 0xff000 but the guest has 1 MiB"
        );
        assert!(p.check(Item::Image, u64::MAX, 2).is_err());
        // Empty placements never overlap.
        p.claim(Item::Module(0), 0x1000, 0).unwrap();
        assert_eq!(p.as_slice().len(), 4);
        assert_eq!(p.find(Item::Kernel).unwrap().end(), 0x3000);
    }
}
