//! Flat images: raw bytes copied to a configured `load_address`, started at
//! a configured `entry` in real, 32-bit protected or 64-bit long mode. No
//! boot information is passed; the guest knows its platform.
//!
//! - Real mode: CS:IP reaches the entry with IP below 64 KiB
//!   (`CS = (entry >> 4) & 0xF000`, `IP = entry & 0xFFFF`); DS, ES, FS, GS
//!   and SS equal CS. Nothing else is written, so the whole of RAM is the
//!   image's to use.
//! - Protected mode: flat 4 GiB segments from the GDT at
//!   [`GDT_ADDR`](super::layout::GDT_ADDR), paging off.
//! - Long mode: the same GDT with a 64-bit code segment, and page tables at
//!   [`PML4_ADDR`](super::layout::PML4_ADDR) onwards that identity-map the
//!   first N GiB with 2 MiB pages.
//!
//! Every mode starts with interrupts off and RSP = 0: the image sets up its
//! own stack.

use addr::GuestPhysAddr;

use super::entry::{write_gdt, write_identity_map, EntryState};
use super::error::{FlatError, Item, LoadError};
use super::layout::{
    identity_map_gib_for, layout_of, MemoryMap, Placements, RamLayout, HIGH_RAM_START,
    MAX_IDENTITY_MAP_GIB,
};
use super::source::{Chunks, ImageSource};
use super::{GuestMemory, LoadedImage, Warnings};

/// The mode a flat image starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlatMode {
    /// Real mode (the entry must be below 1 MiB).
    Real,
    /// 32-bit protected mode, flat segments, paging off.
    Protected,
    /// 64-bit long mode with the first `identity_map_gib` GiB
    /// identity-mapped (1 to [`MAX_IDENTITY_MAP_GIB`]).
    Long {
        /// How many GiB from address 0 to identity-map.
        identity_map_gib: u32,
    },
}

impl FlatMode {
    /// Long mode with an identity map of the first 4 GiB: RAM below the
    /// 32-bit device window and the window itself.
    pub const LONG: Self = Self::Long {
        identity_map_gib: 4,
    };

    /// Long mode with an identity map of all RAM of `ram` (RAM past 3 GiB
    /// lies from 4 GiB up) and the device window: 4 GiB or more.
    pub fn long_covering(ram: RamLayout) -> Self {
        Self::Long {
            identity_map_gib: u32::try_from(identity_map_gib_for(ram)).unwrap_or(4),
        }
    }
}

/// A flat image and where it goes, read through `S` (byte slices by
/// default).
#[derive(Debug)]
pub struct FlatImage<'a, S: ImageSource + ?Sized = [u8]> {
    /// The bytes.
    pub data: &'a S,
    /// Where the first byte goes.
    pub load_address: GuestPhysAddr,
    /// The first instruction's guest-physical address, inside the image.
    pub entry: GuestPhysAddr,
    /// The mode to start in.
    pub mode: FlatMode,
}

impl<S: ImageSource + ?Sized> Clone for FlatImage<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ImageSource + ?Sized> Copy for FlatImage<'_, S> {}

/// Loads a flat image into `mem` and, for protected and long mode, the GDT
/// and page tables. Returns the entry state.
///
/// # Errors
///
/// A [`LoadError`] where the image is empty, does not fit, overlaps the
/// loader's GDT or page tables, or the entry point is outside it or not
/// reachable in the mode asked for.
pub fn load_flat<M: GuestMemory + ?Sized, S: ImageSource + ?Sized>(
    mem: &mut M,
    image: &FlatImage<'_, S>,
) -> Result<LoadedImage, LoadError> {
    if image.data.is_empty() {
        return Err(FlatError::Empty.into());
    }
    let ram = mem.size();
    let memory_map = MemoryMap::for_ram(ram)?;
    let mut placements = Placements::new(layout_of(ram)?);
    let start = image.load_address;
    let len = image.data.len();
    let end = start.as_u64().saturating_add(len);
    let entry = image.entry;
    if !(start.as_u64()..end).contains(&entry.as_u64()) {
        return Err(FlatError::EntryOutsideImage { entry, start, end }.into());
    }

    // The loader's structures are claimed first, so an image on top of
    // them is reported as overlapping them.
    let state = match image.mode {
        FlatMode::Real => {
            if entry.as_u64() >= HIGH_RAM_START {
                return Err(FlatError::RealModeEntryTooHigh { entry }.into());
            }
            let e = entry.as_u64();
            EntryState::real(((e >> 4) & 0xF000) as u16, (e & 0xFFFF) as u16)
        }
        FlatMode::Protected => {
            // The entry lies in RAM, below 3 GiB.
            let state = EntryState::protected32(u32::try_from(entry.as_u64()).unwrap_or(u32::MAX));
            write_gdt(mem, &mut placements, &state)?;
            state
        }
        FlatMode::Long { identity_map_gib } => {
            let gib = u64::from(identity_map_gib);
            if !(1..=MAX_IDENTITY_MAP_GIB).contains(&gib) {
                return Err(FlatError::BadIdentityMap {
                    gib: identity_map_gib,
                    max: MAX_IDENTITY_MAP_GIB,
                }
                .into());
            }
            if entry.as_u64() >= gib << 30 {
                return Err(FlatError::EntryNotMapped {
                    entry,
                    gib: identity_map_gib,
                }
                .into());
            }
            let state = EntryState::long64(entry.as_u64());
            write_identity_map(mem, &mut placements, gib)?;
            write_gdt(mem, &mut placements, &state)?;
            state
        }
    };
    placements.claim(Item::Image, start.as_u64(), len)?;
    Chunks::new()?.copy(mem, image.data, Item::Image, 0, len, start)?;
    Ok(LoadedImage {
        entry: state,
        memory_map,
        placements,
        warnings: Warnings::default(),
    })
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
    use super::super::entry::{AccessRights, CR0_PE, CR0_PG, CR4_PAE};
    use super::super::fixtures::Ram;
    use super::super::layout::{GDT_ADDR, PML4_ADDR};
    use super::super::CpuMode;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn flat(data: &[u8], load: u64, entry: u64, mode: FlatMode) -> FlatImage<'_> {
        FlatImage {
            data,
            load_address: GuestPhysAddr::new(load),
            entry: GuestPhysAddr::new(entry),
            mode,
        }
    }

    #[test]
    fn real_mode_images_start_at_cs_ip() {
        let code = [0xF4u8; 512];
        let mut ram = Ram::new(MIB);
        let loaded = load_flat(
            &mut ram.memory(),
            &flat(&code, 0x7C00, 0x7C00, FlatMode::Real),
        )
        .unwrap();
        let e = loaded.entry;
        assert_eq!(e.mode, CpuMode::Real);
        assert_eq!((e.segments.cs.selector, e.rip), (0, 0x7C00));
        assert_eq!(ram.bytes(0x7C00, 512), &code[..]);
        // Nothing but the image was written: no GDT in real mode.
        assert_eq!(loaded.placements.as_slice().len(), 1);
        assert!(ram.bytes(0, 0x7C00).iter().all(|&b| b == 0));

        let loaded = load_flat(
            &mut ram.memory(),
            &flat(&code, 0x12300, 0x12345, FlatMode::Real),
        )
        .unwrap();
        let e = loaded.entry;
        assert_eq!((e.segments.cs.selector, e.rip), (0x1000, 0x2345));
        assert_eq!(e.segments.cs.base + e.rip, 0x12345);
        for s in [
            e.segments.ds,
            e.segments.es,
            e.segments.ss,
            e.segments.fs,
            e.segments.gs,
        ] {
            assert_eq!((s.selector, s.base, s.limit), (0x1000, 0x10000, 0xFFFF));
        }
        assert_eq!(e.segments.cs.access, AccessRights::CODE16);
        assert_eq!(e.control.cr0 & (CR0_PE | CR0_PG), 0);

        let mut ram = Ram::new(2 * MIB);
        let e = load_flat(
            &mut ram.memory(),
            &flat(&code, 0xFFF00, 0xFFF00, FlatMode::Real),
        )
        .unwrap()
        .entry;
        assert_eq!((e.segments.cs.selector, e.rip), (0xF000, 0xFF00));
    }

    #[test]
    fn protected_mode_images_get_flat_segments_and_a_gdt() {
        let code = [0x90u8; 64];
        let mut ram = Ram::new(4 * MIB);
        let loaded = load_flat(
            &mut ram.memory(),
            &flat(&code, 0x10_0000, 0x10_0010, FlatMode::Protected),
        )
        .unwrap();
        let e = loaded.entry;
        assert_eq!(e.mode, CpuMode::Protected32);
        assert_eq!(e.rip, 0x10_0010);
        assert_eq!(e.control.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(
            (e.segments.cs.selector, e.segments.cs.limit),
            (0x10, 0xFFFF_FFFF)
        );
        assert_eq!((e.segments.ss.selector, e.segments.ss.base), (0x18, 0));
        assert_eq!(ram.u64(GDT_ADDR.as_u64() + 0x10), 0x00CF_9B00_0000_FFFF);
        assert_eq!(ram.u64(GDT_ADDR.as_u64() + 0x18), 0x00CF_9300_0000_FFFF);
        assert_eq!(ram.u64(GDT_ADDR.as_u64()), 0);
        assert_eq!(ram.bytes(0x10_0000, 64), &code[..]);
    }

    #[test]
    fn long_mode_can_cover_ram_past_4_gib() {
        let layout = |size: u64| RamLayout::new(size).unwrap();
        assert_eq!(FlatMode::long_covering(layout(MIB)), FlatMode::LONG);
        assert_eq!(
            FlatMode::long_covering(layout(4 << 30)),
            FlatMode::Long {
                identity_map_gib: 5
            }
        );
        let code = [0xF4u8; 16];
        let mut ram = Ram::new(4 << 30);
        let loaded = load_flat(
            &mut ram.memory(),
            &flat(
                &code,
                0x10_0000,
                0x10_0000,
                FlatMode::long_covering(layout(4 << 30)),
            ),
        )
        .unwrap();
        let cr3 = loaded.entry.control.cr3;
        assert_eq!(ram.translate(cr3, (5 << 30) - 8), Some((5 << 30) - 8));
        assert_eq!(ram.translate(cr3, 5 << 30), None);
    }

    #[test]
    fn long_mode_images_get_an_identity_map_of_n_gib() {
        let code = [0xCCu8; 4096];
        let mut ram = Ram::new(8 * MIB);
        let image = flat(
            &code,
            0x20_0000,
            0x20_0000,
            FlatMode::Long {
                identity_map_gib: 2,
            },
        );
        let loaded = load_flat(&mut ram.memory(), &image).unwrap();
        let e = loaded.entry;
        assert_eq!(e.mode, CpuMode::Long64);
        assert_eq!(e.rip, 0x20_0000);
        assert_eq!(e.control.cr3, PML4_ADDR.as_u64());
        assert_eq!(e.control.cr4 & CR4_PAE, CR4_PAE);
        assert!(e.segments.cs.access.long());
        for addr in [
            0,
            0x1000,
            0x20_0000,
            0x20_1234,
            8 * MIB,
            (1 << 30) + 0x1234_5678,
            (2 << 30) - 1,
        ] {
            assert_eq!(ram.translate(e.control.cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(ram.translate(e.control.cr3, 2 << 30), None);
        let tables = loaded.placements.find(Item::PageTables).unwrap();
        assert_eq!((tables.start.as_u64(), tables.end()), (0x2000, 0x6000));

        // The default maps 4 GiB.
        let image = flat(&code, 0x20_0000, 0x20_0000, FlatMode::LONG);
        let e = load_flat(&mut ram.memory(), &image).unwrap().entry;
        assert_eq!(
            ram.translate(e.control.cr3, (4 << 30) - 1),
            Some((4 << 30) - 1)
        );
    }

    #[test]
    fn bad_flat_parameters_are_named() {
        let code = [0u8; 0x100];
        let mut ram = Ram::new(4 * MIB);
        let mut load = |image: FlatImage<'_>| {
            load_flat(&mut ram.memory(), &image)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            load(flat(&[], 0x10_0000, 0x10_0000, FlatMode::Protected)),
            "flat: the image is empty"
        );
        assert_eq!(
            load(flat(&code, 0x10_0000, 0x10_0100, FlatMode::Protected)),
            "flat: entry 0x100100 is outside the image at [0x100000, 0x100100); check load_address and entry"
        );
        assert_eq!(
            load(flat(&code, 0x3F_FF80, 0x3F_FF80, FlatMode::Protected)),
            "image needs 0x100 bytes at 0x3fff80 but the guest has 4 MiB"
        );
        assert_eq!(
            load(flat(&code, 0x1000, 0x1000, FlatMode::Protected)),
            "image at [0x1000, 0x1100) overlaps the GDT at [0x1000, 0x1020)"
        );
        assert_eq!(
            load(flat(&code, 0x3000, 0x3000, FlatMode::LONG)),
            "image at [0x3000, 0x3100) overlaps the page tables at [0x2000, 0x8000)"
        );
        assert_eq!(
            load(flat(&code, 0x10_0000, 0x10_0000, FlatMode::Real)),
            "flat: real-mode entry 0x100000 is not below 1 MiB, so no CS:IP reaches it"
        );
        assert_eq!(
            load(flat(
                &code,
                0x10_0000,
                0x10_0000,
                FlatMode::Long {
                    identity_map_gib: 0
                }
            )),
            "flat: long mode identity map of 0 GiB asked for; 1 to 16 GiB are supported"
        );
        assert_eq!(
            load(flat(
                &code,
                0x10_0000,
                0x10_0000,
                FlatMode::Long {
                    identity_map_gib: 17
                }
            )),
            "flat: long mode identity map of 17 GiB asked for; 1 to 16 GiB are supported"
        );
        assert_eq!(
            load(flat(
                &code,
                u64::MAX - 0x10,
                u64::MAX - 0x10,
                FlatMode::Real
            )),
            "flat: real-mode entry 0xffffffffffffffef is not below 1 MiB, so no CS:IP reaches it"
        );
        // A real-mode image may sit where the GDT would: nothing else is written.
        load_flat(
            &mut ram.memory(),
            &flat(&code, 0x1000, 0x1000, FlatMode::Real),
        )
        .unwrap();
    }

    #[test]
    fn long_mode_entries_must_be_mapped() {
        let code = [0u8; 0x100];
        let mut huge = super::super::fixtures::NullMemory::new(3 << 30);
        let image = flat(
            &code,
            0x8000_0000,
            0x8000_0000,
            FlatMode::Long {
                identity_map_gib: 2,
            },
        );
        let e = load_flat(&mut huge, &image).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flat: long-mode entry 0x80000000 lies above the 2 GiB the loader identity-maps"
        );
        let image = FlatImage {
            mode: FlatMode::Long {
                identity_map_gib: 3,
            },
            ..image
        };
        load_flat(&mut huge, &image).unwrap();
    }
}
