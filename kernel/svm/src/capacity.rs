//! What a guest costs the host besides its RAM under SVM, as a bound
//! computed from its size alone, so the configuration check can refuse a
//! guest that would not start instead of letting it fail half-built. The
//! SVM counterpart of `vtx::capacity`.
//!
//! Per VM: the nested page tables that map its RAM ([`crate::npt`]), the
//! I/O permissions map (12 KiB, three physically contiguous frames, APM
//! Vol. 2, 15.10.1) and the MSR permissions map (8 KiB, two, APM 15.11).
//! Contiguous frames come from the frame allocator as naturally aligned
//! power-of-two blocks, so the I/O map is counted as the block of four it
//! is taken from. Per vCPU, once for each of a guest's `vcpus`: its VMCB
//! (one frame, APM appendix B) and its XSAVE/FXSAVE area, a naturally
//! aligned block of frames. Guest RAM itself is taken in whole frames.
//!
//! Not counted, because no guest owns them: each physical CPU's host save
//! area (VM_HSAVE_PA) and the host's own VMSAVE area, set up once per CPU
//! at boot. Everything else a guest holds lives in the kernel heap.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::maps::{IOPM_FRAMES, MSRPM_FRAMES};

/// A frame: the unit every structure above is allocated in.
pub const FRAME: u64 = 4096;
/// The frames the I/O permissions map is taken in: its three, rounded up
/// to the power-of-two block the allocator hands out.
pub const IOPM_BLOCK_FRAMES: u64 = match IOPM_FRAMES.checked_next_power_of_two() {
    Some(frames) => frames,
    None => u64::MAX,
};
/// The frames the MSR permissions map is taken in (already a power of two).
pub const MSRPM_BLOCK_FRAMES: u64 = match MSRPM_FRAMES.checked_next_power_of_two() {
    Some(frames) => frames,
    None => u64::MAX,
};
/// The frames of a VMCB.
const VMCB_FRAMES: u64 = 1;
/// What one nested table of each level covers: a PT 2 MiB, a PD 1 GiB, a
/// PDPT 512 GiB (512 entries per table).
const PT_SPAN: u64 = 2 << 20;
const PD_SPAN: u64 = 1 << 30;
const PDPT_SPAN: u64 = 512 << 30;

/// The nested table frames that map guest-physical `0..ram_bytes` at
/// most: one PML4, and the PDPTs, PDs and PTs a map with 4 KiB pages only
/// would need. Large pages, where RAM came in blocks that allow them, need
/// fewer; nothing needs more.
pub const fn npt_frames(ram_bytes: u64) -> u64 {
    1u64.saturating_add(ram_bytes.div_ceil(PDPT_SPAN))
        .saturating_add(ram_bytes.div_ceil(PD_SPAN))
        .saturating_add(ram_bytes.div_ceil(PT_SPAN))
}

/// The frames of the VM's permission maps: the I/O map's block and the
/// MSR map's.
pub const fn map_frames() -> u64 {
    IOPM_BLOCK_FRAMES.saturating_add(MSRPM_BLOCK_FRAMES)
}

/// The frames of one vCPU's XSAVE area of `save_area_bytes` (at least the
/// 512-byte FXSAVE image), taken as a power-of-two block.
pub const fn save_area_frames(save_area_bytes: u64) -> u64 {
    let bytes = if save_area_bytes < 512 {
        512
    } else {
        save_area_bytes
    };
    match bytes.div_ceil(FRAME).checked_next_power_of_two() {
        Some(frames) => frames,
        None => u64::MAX,
    }
}

/// The frames each vCPU takes of its own: its VMCB and its save area.
pub const fn vcpu_frames(save_area_bytes: u64) -> u64 {
    VMCB_FRAMES.saturating_add(save_area_frames(save_area_bytes))
}

/// The host memory a guest with `ram_bytes` of RAM and `vcpus` vCPUs
/// takes beyond its RAM under SVM, in bytes, on a host whose XSAVE area
/// for every supported component is `save_area_bytes`
/// (CPUID.(EAX=0DH,ECX=0):ECX; 512 without XSAVE): the VM's parts once,
/// [`vcpu_frames`] once per vCPU. A bound: the guest's start never takes
/// more.
pub const fn guest_overhead(ram_bytes: u64, vcpus: u32, save_area_bytes: u64) -> u64 {
    let frames = npt_frames(ram_bytes)
        .saturating_add(map_frames())
        .saturating_add(vcpu_frames(save_area_bytes).saturating_mul(vcpus as u64));
    frames.saturating_mul(FRAME)
}

/// All the host memory such a guest takes: its RAM in whole frames plus
/// [`guest_overhead`].
pub const fn guest_footprint(ram_bytes: u64, vcpus: u32, save_area_bytes: u64) -> u64 {
    ram_bytes
        .div_ceil(FRAME)
        .saturating_mul(FRAME)
        .saturating_add(guest_overhead(ram_bytes, vcpus, save_area_bytes))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    use std::boxed::Box;
    use std::vec::Vec;

    use addr::{GuestPhysAddr, HostPhysAddr};

    use crate::maps::{IOPM_BYTES, MSRPM_BYTES};
    use crate::npt::{Npt, NptFrames, NptTable};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_maps_cost_a_block_of_four_and_one_of_two() {
        assert_eq!(IOPM_BYTES as u64, 3 * FRAME);
        assert_eq!(MSRPM_BYTES as u64, 2 * FRAME);
        assert_eq!(IOPM_BLOCK_FRAMES, 4);
        assert_eq!(MSRPM_BLOCK_FRAMES, 2);
        assert_eq!(map_frames(), 6);
    }

    #[test]
    fn small_guests_cost_a_handful_of_frames() {
        // 1 MiB: PML4, PDPT, PD, PT; 4 + 2 map frames; VMCB; a 1-frame
        // XSAVE area.
        assert_eq!(npt_frames(MIB), 4);
        assert_eq!(guest_overhead(MIB, 1, 2696), (4 + 6 + 2) * FRAME);
        assert_eq!(npt_frames(2 * MIB), 4);
        assert_eq!(npt_frames(2 * MIB + FRAME), 5);
        assert_eq!(npt_frames(64 * MIB), 1 + 1 + 1 + 32);
        assert_eq!(npt_frames(GIB), 1 + 1 + 1 + 512);
        assert_eq!(npt_frames(4 * GIB), 1 + 1 + 4 + 2048);
        assert_eq!(
            guest_footprint(64 * MIB, 1, 512),
            64 * MIB + (35 + 6 + 2) * FRAME
        );
        // A RAM size that is not whole frames is taken in whole frames.
        assert_eq!(
            guest_footprint(MIB + 1, 1, 512),
            MIB + FRAME + (4 + 6 + 2) * FRAME
        );
    }

    #[test]
    fn each_vcpu_adds_its_vmcb_and_save_area_and_nothing_else() {
        for vcpus in [0, 1, 2, 4, 64] {
            assert_eq!(
                guest_overhead(MIB, vcpus, 2696),
                (4 + 6 + 2 * u64::from(vcpus)) * FRAME,
                "{vcpus} vCPUs"
            );
        }
        // AMX's 11008 bytes: 3 frames, a block of 4, plus the VMCB.
        assert_eq!(save_area_frames(11008), 4);
        assert_eq!(vcpu_frames(11008), 5);
        assert_eq!(save_area_frames(0), 1);
        assert_eq!(save_area_frames(4097), 2);
        assert_eq!(
            guest_overhead(64 * MIB, 64, 11008),
            (35 + 6 + 64 * 5) * FRAME
        );
    }

    #[test]
    fn nothing_overflows() {
        assert_eq!(guest_overhead(u64::MAX, u32::MAX, u64::MAX), u64::MAX);
        assert_eq!(guest_footprint(u64::MAX, 1, 512), u64::MAX);
        assert_eq!(vcpu_frames(u64::MAX), 1 + (1 << 52));
    }

    /// Table frames from the heap, counted.
    #[derive(Default)]
    struct Counted {
        tables: Vec<Box<NptTable>>,
    }

    impl NptFrames for Counted {
        fn alloc_table(&mut self) -> Option<HostPhysAddr> {
            self.tables.push(Box::new(NptTable::new()));
            Some(HostPhysAddr::new(self.tables.len() as u64 * FRAME))
        }

        fn free_table(&mut self, _at: HostPhysAddr) {}

        fn table(&mut self, at: HostPhysAddr) -> &mut NptTable {
            let index = usize::try_from(at.as_u64() / FRAME - 1).unwrap();
            &mut self.tables[index]
        }
    }

    /// The tree the kernel builds for `ram` when the allocator hands out
    /// RAM in blocks of `block` bytes at most (4 KiB: the worst case), and
    /// the tables it took.
    fn built_tables(ram: u64, block: u64, gigabyte_pages: bool) -> u64 {
        let mut frames = Counted::default();
        let mut npt = Npt::new(&mut frames, gigabyte_pages).unwrap();
        let mut gpa = 0;
        while gpa < ram {
            let len = block.min(ram - gpa);
            npt.map(
                &mut frames,
                GuestPhysAddr::new(gpa),
                HostPhysAddr::new(0x40_0000_0000 + gpa),
                len,
            )
            .unwrap();
            gpa += len;
        }
        npt.table_frames() as u64
    }

    #[test]
    fn the_bound_holds_for_the_tables_a_real_build_takes() {
        for ram in [MIB, 2 * MIB, 3 * MIB + 4 * FRAME, 64 * MIB, 130 * MIB] {
            for block in [FRAME, 64 * FRAME, 2 * MIB, GIB] {
                for gig in [false, true] {
                    let built = built_tables(ram, block, gig);
                    assert!(
                        built <= npt_frames(ram),
                        "{ram:#x} in blocks of {block:#x}: {built} > {}",
                        npt_frames(ram)
                    );
                }
            }
            // With 4 KiB blocks the bound is exact.
            assert_eq!(built_tables(ram, FRAME, true), npt_frames(ram), "{ram:#x}");
        }
    }
}
