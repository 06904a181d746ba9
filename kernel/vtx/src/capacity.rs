//! What a guest costs the host besides its RAM under VT-x, as a bound
//! computed from its size alone, so the configuration check can refuse a
//! guest that would not start instead of letting it fail half-built.
//!
//! Per VM: the EPT tables that map its RAM. Per vCPU, once for each of a
//! guest's `vcpus`: its VMCS (one frame, SDM Vol. 3C, 25.2) and its
//! XSAVE/FXSAVE area, a naturally aligned block of frames. The I/O bitmaps
//! A and B and the MSR bitmap (one 4 KiB frame each, SDM Vol. 3C, 25.6.4
//! and 25.6.9) are the same for every guest and the host's, taken once
//! before any guest: no guest's cost. Guest RAM itself is taken in
//! whole frames. Everything else a guest holds (its devices, the vCPU's
//! model) lives in the kernel heap, which is set aside at boot.

/// A frame: the unit every structure above is allocated in.
pub const FRAME: u64 = 4096;
/// The frames of a VMCS.
const VMCS_FRAMES: u64 = 1;
/// What one EPT table of each level covers: a PT 2 MiB, a PD 1 GiB, a PDPT
/// 512 GiB (SDM Vol. 3C, 29.3.2: 512 entries per table).
const PT_SPAN: u64 = 2 << 20;
const PD_SPAN: u64 = 1 << 30;
const PDPT_SPAN: u64 = 512 << 30;

/// The EPT table frames that map `ram_bytes` of guest RAM at most: one
/// PML4, and the PDPTs, PDs and PTs a map with 4 KiB pages only would
/// need. Large pages (2 MiB, 1 GiB), where RAM came in blocks that allow
/// them, need fewer; nothing needs more. RAM past 3 GiB lies from 4 GiB
/// (`addr::RamLayout`): both points are 1 GiB aligned, so the two ranges
/// need no more tables than one range of the same size would.
pub const fn ept_frames(ram_bytes: u64) -> u64 {
    1u64.saturating_add(ram_bytes.div_ceil(PDPT_SPAN))
        .saturating_add(ram_bytes.div_ceil(PD_SPAN))
        .saturating_add(ram_bytes.div_ceil(PT_SPAN))
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

/// The frames each vCPU takes of its own: its VMCS and its save area.
pub const fn vcpu_frames(save_area_bytes: u64) -> u64 {
    VMCS_FRAMES.saturating_add(save_area_frames(save_area_bytes))
}

/// The host memory a guest with `ram_bytes` of RAM and `vcpus` vCPUs
/// (its config's `vcpus`) takes beyond its RAM, in bytes, on a host whose
/// XSAVE area for every supported component is `save_area_bytes`
/// (CPUID.(EAX=0DH,ECX=0):ECX; 512 without XSAVE): the VM's parts once,
/// [`vcpu_frames`] once per vCPU. A bound: the guest's start never takes
/// more.
pub const fn guest_overhead(ram_bytes: u64, vcpus: u32, save_area_bytes: u64) -> u64 {
    let frames = ept_frames(ram_bytes)
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
mod tests {
    use super::*;

    use std::boxed::Box;
    use std::vec::Vec;

    use addr::{GuestPhysAddr, HostPhysAddr};
    use vmx::caps::EptVpidCap;
    use vmx::ept::{Ept, EptMemoryType, EptPerms, EptTable, TableFrames};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guests_cost_a_handful_of_frames() {
        // 1 MiB: PML4, PDPT, PD, PT; VMCS; a 1-frame XSAVE area
        // (AVX-512's 2696 bytes fit one frame).
        assert_eq!(ept_frames(MIB), 4);
        assert_eq!(guest_overhead(MIB, 1, 2696), 6 * FRAME);
        // 2 MiB still fits one PT; 2 MiB + 4 KiB needs a second.
        assert_eq!(ept_frames(2 * MIB), 4);
        assert_eq!(ept_frames(2 * MIB + FRAME), 5);
        // 64 MiB: 32 PTs; 1 GiB: 512 PTs; 4 GiB: 4 PDs and 2048 PTs.
        assert_eq!(ept_frames(64 * MIB), 1 + 1 + 1 + 32);
        assert_eq!(ept_frames(GIB), 1 + 1 + 1 + 512);
        assert_eq!(ept_frames(4 * GIB), 1 + 1 + 4 + 2048);
        assert_eq!(guest_footprint(64 * MIB, 1, 512), 64 * MIB + 37 * FRAME);
    }

    #[test]
    fn save_areas_round_up_to_power_of_two_blocks() {
        assert_eq!(save_area_frames(0), 1);
        assert_eq!(save_area_frames(512), 1);
        assert_eq!(save_area_frames(4096), 1);
        assert_eq!(save_area_frames(4097), 2);
        // AMX's tile data makes the area 11008 bytes: 3 frames, a block of 4.
        assert_eq!(save_area_frames(11008), 4);
        assert_eq!(guest_overhead(MIB, 2, 11008), (4 + 2 * (1 + 4)) * FRAME);
    }

    #[test]
    fn each_vcpu_adds_its_vmcs_and_save_area_and_nothing_else() {
        // The VM's part (EPT) is paid once, whatever the count: 1 MiB with
        // a 1-frame save area is 4 frames plus 2 per vCPU.
        for vcpus in [1, 2, 4, 64] {
            assert_eq!(
                guest_overhead(MIB, vcpus, 2696),
                (4 + 2 * u64::from(vcpus)) * FRAME,
                "{vcpus} vCPUs"
            );
        }
        // With AMX's 4-frame block each vCPU costs 5 frames; 64 vCPUs of a
        // 64 MiB guest: 35 EPT frames and 64 * 5.
        assert_eq!(vcpu_frames(11008), 5);
        assert_eq!(guest_overhead(64 * MIB, 64, 11008), (35 + 64 * 5) * FRAME);
        assert_eq!(
            guest_footprint(64 * MIB, 4, 512) - guest_footprint(64 * MIB, 1, 512),
            3 * vcpu_frames(512) * FRAME
        );
    }

    #[test]
    fn nothing_overflows() {
        assert_eq!(guest_overhead(u64::MAX, u32::MAX, u64::MAX), u64::MAX);
        assert_eq!(guest_footprint(u64::MAX, 1, 512), u64::MAX);
    }

    /// Table frames from the heap, counted.
    #[derive(Default)]
    struct Counted {
        tables: Vec<Box<EptTable>>,
    }

    impl TableFrames for Counted {
        fn alloc_table(&mut self) -> Option<HostPhysAddr> {
            self.tables.push(Box::new(EptTable::new()));
            Some(HostPhysAddr::new(self.tables.len() as u64 * FRAME))
        }

        fn free_table(&mut self, _at: HostPhysAddr) {}

        fn table(&mut self, at: HostPhysAddr) -> &mut EptTable {
            let index = usize::try_from(at.as_u64() / FRAME - 1).unwrap();
            &mut self.tables[index]
        }
    }

    /// The EPT the kernel builds for `ram` when the allocator hands out
    /// RAM in blocks of `block` bytes at most (4 KiB: the worst case, no
    /// large page anywhere), and the tables it took.
    fn built_tables(ram: u64, block: u64) -> usize {
        let caps = EptVpidCap::PAGE_WALK_LENGTH_4
            | EptVpidCap::MEMORY_TYPE_WB
            | EptVpidCap::PAGES_2M
            | EptVpidCap::PAGES_1G;
        let mut frames = Counted::default();
        let mut ept = Ept::new(&mut frames, caps).unwrap();
        let mut gpa = 0;
        while gpa < ram {
            let len = block.min(ram - gpa);
            ept.map(
                &mut frames,
                GuestPhysAddr::new(gpa),
                // Host blocks aligned like the guest's, as the kernel's are.
                HostPhysAddr::new(0x40_0000_0000 + gpa),
                len,
                EptPerms::READ | EptPerms::WRITE | EptPerms::EXECUTE,
                EptMemoryType::WriteBack,
            )
            .unwrap();
            gpa += len;
        }
        ept.table_frames()
    }

    #[test]
    fn the_bound_holds_for_the_tables_a_real_build_takes() {
        for ram in [MIB, 2 * MIB, 3 * MIB + 4 * FRAME, 64 * MIB, 130 * MIB] {
            for block in [FRAME, 64 * FRAME, 2 * MIB, GIB] {
                let built = built_tables(ram, block) as u64;
                assert!(
                    built <= ept_frames(ram),
                    "{ram:#x} in blocks of {block:#x}: {built} > {}",
                    ept_frames(ram)
                );
            }
            // With 4 KiB blocks the bound is exact.
            assert_eq!(built_tables(ram, FRAME) as u64, ept_frames(ram), "{ram:#x}");
        }
    }
}
