//! The I/O and MSR permission maps: the tables whose bits decide which of a
//! guest's IN/OUT/INS/OUTS and RDMSR/WRMSR accesses cause a #VMEXIT (APM
//! Vol. 2, 15.10.1 "I/O Permissions Map" and 15.11 "MSR Intercepts").
//! Pure: the caller provides the memory (physically contiguous, 4 KiB
//! aligned frames), fills it here and writes its physical address into the
//! VMCB's IOPM_BASE_PA and MSRPM_BASE_PA; the maps are used only while the
//! VMCB's IOIO_PROT and MSR_PROT intercepts are set.
//!
//! Every port is intercepted: the VM's device bus answers the ports its
//! devices claim, the rest read all ones and drop writes, as under VT-x.
//!
//! MSRs follow the policy the VT-x MSR bitmap follows ([`vcpu::msr::rule`]):
//! an access passes through only where the guest's value lives with the
//! vCPU, and TSC reads pass through. Under SVM that means:
//! - IA32_SYSENTER_CS/ESP/EIP, IA32_FS_BASE, IA32_GS_BASE,
//!   IA32_KERNEL_GS_BASE, IA32_STAR, IA32_LSTAR, IA32_CSTAR and IA32_FMASK
//!   (SFMASK) are in the VMCB's save area, but VMRUN and #VMEXIT do not
//!   move them: VMLOAD and VMSAVE do (APM 15.5.2 "VMSAVE and VMLOAD
//!   Instructions"). The kernel runs VMLOAD before and VMSAVE after every
//!   VMRUN, so the guest's values are the CPU's whenever the guest runs and
//!   the VMCB's whenever it does not, as the VMCS fields and the switched
//!   MSRs are under VT-x.
//! - IA32_PAT is the VMCB's G_PAT, which VMRUN loads and #VMEXIT saves
//!   when nested paging is on (APM 15.25.8), as it always is here.
//! - IA32_TSC_AUX is in neither: it stays switched with the vCPU by the
//!   kernel ([`vcpu::msr::SWITCHED_MSRS`]).
//! - IA32_TIME_STAMP_COUNTER reads see the VMCB's TSC offset, as RDTSC
//!   does; writes exit.
//! - IA32_EFER is the exception: reads and writes both exit. The guest's
//!   EFER as the CPU runs it has SVME (bit 12) set, which VMRUN requires
//!   (APM 15.5.1), and the guest must read back the value it wrote,
//!   without SVME; writes are checked as under VT-x ([`vcpu::cr`]).
//!
//! Every other MSR exits, and so does every MSR outside the three ranges
//! the map covers (APM 15.11).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use vcpu::msr::{rule, MsrRule, IA32_EFER, IA32_TIME_STAMP_COUNTER, SWITCHED_MSRS, VMCS_MSRS};

/// Bytes of the I/O permissions map: 12 KiB, three frames (APM 15.10.1).
pub const IOPM_BYTES: usize = 3 * 4096;
/// Frames of the I/O permissions map.
pub const IOPM_FRAMES: u64 = 3;
/// Bytes of the MSR permissions map: 8 KiB, two frames (APM 15.11).
pub const MSRPM_BYTES: usize = 2 * 4096;
/// Frames of the MSR permissions map.
pub const MSRPM_FRAMES: u64 = 2;

/// The bits of the I/O map the processor reads: one per port 0..=FFFFH,
/// and three more for a 2- or 4-byte access that starts at FFFDH..FFFFH
/// and runs past the last port (APM 15.10.1: "a linear array of 64K+3
/// bits").
pub const IOPM_BITS: usize = 0x1_0000 + 3;

/// The three MSR ranges the MSR map covers, each 2000H MSRs at two bits
/// per MSR (800H bytes), with the byte offset of its part of the map (APM
/// 15.11, table "MSR Ranges Covered by MSRPM"). Bytes 1800H..2000H are
/// reserved.
const MSR_RANGES: [(u32, usize); 3] = [
    (0x0000_0000, 0x000),
    (0xC000_0000, 0x800),
    (0xC001_0000, 0x1000),
];
/// MSRs in each range.
const MSR_RANGE_LEN: u32 = 0x2000;

/// Fills `map` so that every I/O port access is intercepted: all
/// [`IOPM_BITS`] bits set, and the rest of the last frame with them.
pub fn fill_io_map(map: &mut [u8; IOPM_BYTES]) {
    map.fill(0xFF);
}

/// Whether an access of `size` bytes (1, 2 or 4) at `port` is intercepted
/// by `map`: the processor checks the bit of every port the access
/// touches (APM 15.10.1), the extra bits past FFFFH included.
pub fn io_intercepted(map: &[u8; IOPM_BYTES], port: u16, size: u8) -> bool {
    let first = usize::from(port);
    (first..first.saturating_add(usize::from(size.max(1)))).any(|bit| bit_of(map, bit))
}

/// Where the two bits of `msr` are: the byte of the map and the shift of
/// its read bit (the write bit is the next one up). `None` for an MSR the
/// map does not cover.
fn msr_bits(msr: u32) -> Option<(usize, u32)> {
    MSR_RANGES.iter().find_map(|&(first, offset)| {
        let n = msr.checked_sub(first).filter(|n| *n < MSR_RANGE_LEN)?;
        // Four MSRs a byte: n < 2000H, so none of this can overflow.
        let byte = offset.checked_add(usize::try_from(n / 4).ok()?)?;
        Some((byte, (n % 4).checked_mul(2)?))
    })
}

/// Whether `map` intercepts RDMSR (`write` false) or WRMSR (`write` true)
/// of `msr`. MSRs outside the covered ranges are always intercepted.
pub fn msr_intercepted(map: &[u8; MSRPM_BYTES], msr: u32, write: bool) -> bool {
    let Some((byte, shift)) = msr_bits(msr) else {
        return true;
    };
    let shift = if write { shift | 1 } else { shift };
    map.get(byte).is_none_or(|b| b & (1 << shift) != 0)
}

/// Whether the policy lets this access run on the processor under SVM:
/// what [`rule`] passes through, but never IA32_EFER.
pub fn msr_passes_through(msr: u32, write: bool) -> bool {
    msr != IA32_EFER && rule(msr, write) == MsrRule::PassThrough
}

/// Fills `map` by the policy (see the module documentation): everything
/// intercepted, the reserved bytes included, then the pass-through
/// accesses cleared.
pub fn fill_msr_map(map: &mut [u8; MSRPM_BYTES]) {
    map.fill(0xFF);
    for &msr in VMCS_MSRS.iter().chain(SWITCHED_MSRS) {
        for write in [false, true] {
            if msr_passes_through(msr, write) {
                clear_msr(map, msr, write);
            }
        }
    }
    clear_msr(map, IA32_TIME_STAMP_COUNTER, false);
}

/// Clears the intercept bit of one access; nothing for an MSR the map does
/// not cover (the assertions below rule that out for the policy's MSRs).
fn clear_msr(map: &mut [u8; MSRPM_BYTES], msr: u32, write: bool) {
    if let Some((byte, shift)) = msr_bits(msr) {
        let shift = if write { shift | 1 } else { shift };
        if let Some(b) = map.get_mut(byte) {
            *b &= !(1 << shift);
        }
    }
}

/// Bit `bit` of `bytes`, counted from bit 0 of byte 0; set past the end.
fn bit_of(bytes: &[u8], bit: usize) -> bool {
    bytes.get(bit / 8).is_none_or(|b| b & (1 << (bit % 8)) != 0)
}

// Every MSR the policy passes through has bits in the map. Evaluated at
// compile time: an index out of range fails the build, not a guest.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const _: () = {
    const fn covered(msr: u32) -> bool {
        msr < MSR_RANGE_LEN
            || (msr >= 0xC000_0000 && msr < 0xC000_2000)
            || (msr >= 0xC001_0000 && msr < 0xC001_2000)
    }
    let mut i = 0;
    while i < VMCS_MSRS.len() {
        assert!(covered(VMCS_MSRS[i]));
        i += 1;
    }
    let mut i = 0;
    while i < SWITCHED_MSRS.len() {
        assert!(covered(SWITCHED_MSRS[i]));
        i += 1;
    }
    assert!(covered(IA32_TIME_STAMP_COUNTER));
    // The three extra bits fit the third frame.
    assert!(IOPM_BITS <= IOPM_BYTES * 8);
};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use vcpu::msr::{
        IA32_CSTAR, IA32_FMASK, IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR,
        IA32_PAT, IA32_STAR, IA32_SYSENTER_CS, IA32_SYSENTER_EIP, IA32_SYSENTER_ESP, IA32_TSC_AUX,
    };

    fn msr_map() -> Box<[u8; MSRPM_BYTES]> {
        let mut map = Box::new([0u8; MSRPM_BYTES]);
        fill_msr_map(&mut map);
        map
    }

    fn covered() -> impl Iterator<Item = u32> {
        (0..=0x1FFF)
            .chain(0xC000_0000..=0xC000_1FFF)
            .chain(0xC001_0000..=0xC001_1FFF)
    }

    #[test]
    fn every_port_and_the_bits_past_the_last_are_intercepted() {
        let mut map = Box::new([0u8; IOPM_BYTES]);
        fill_io_map(&mut map);
        for port in 0..=u16::MAX {
            for size in [1, 2, 4] {
                assert!(io_intercepted(&map, port, size), "{port:#x}/{size}");
            }
        }
        for bit in 0..IOPM_BITS {
            assert!(bit_of(&map[..], bit), "bit {bit:#x}");
        }
        // A map with only the extra bits clear lets a 4-byte access at
        // FFFFH through only if its port bit is clear too: the check is
        // over every byte it touches.
        map[0x1FFF] &= 0x7F; // port FFFFH
        assert!(!io_intercepted(&map, 0xFFFF, 1));
        assert!(io_intercepted(&map, 0xFFFF, 4));
        map[0x2000] &= !0b111; // the three extra bits
        assert!(!io_intercepted(&map, 0xFFFF, 4));
        assert!(io_intercepted(&map, 0xFFFE, 2));
    }

    #[test]
    fn msr_bits_follow_the_apm_layout() {
        // Two bits per MSR, read then write, four MSRs a byte, each range
        // at its own offset.
        assert_eq!(msr_bits(0), Some((0, 0)));
        assert_eq!(msr_bits(3), Some((0, 6)));
        assert_eq!(msr_bits(4), Some((1, 0)));
        assert_eq!(msr_bits(0x1FFF), Some((0x7FF, 6)));
        assert_eq!(msr_bits(0xC000_0000), Some((0x800, 0)));
        assert_eq!(msr_bits(0xC000_0080), Some((0x820, 0)));
        assert_eq!(msr_bits(0xC000_1FFF), Some((0xFFF, 6)));
        assert_eq!(msr_bits(0xC001_0000), Some((0x1000, 0)));
        assert_eq!(msr_bits(0xC001_1FFF), Some((0x17FF, 6)));
        for msr in [0x2000, 0xBFFF_FFFF, 0xC000_2000, 0xC001_2000, u32::MAX] {
            assert_eq!(msr_bits(msr), None, "{msr:#x}");
        }
        // EFER (C000_0080H): byte 820H, bits 0 (read) and 1 (write).
        let mut map = Box::new([0u8; MSRPM_BYTES]);
        assert!(!msr_intercepted(&map, IA32_EFER, false));
        map[0x820] = 0b10;
        assert!(!msr_intercepted(&map, IA32_EFER, false));
        assert!(msr_intercepted(&map, IA32_EFER, true));
        assert!(!msr_intercepted(&map, IA32_STAR, true));
        // Outside the ranges nothing in the map matters.
        assert!(msr_intercepted(&map, 0x4000_0000, false));
    }

    #[test]
    fn the_map_agrees_with_the_policy_for_every_covered_msr() {
        let map = msr_map();
        let mut passed = 0;
        for msr in covered() {
            for write in [false, true] {
                let passes = rule(msr, write) == MsrRule::PassThrough && msr != IA32_EFER;
                assert_eq!(msr_passes_through(msr, write), passes, "{msr:#x}");
                assert_eq!(
                    msr_intercepted(&map, msr, write),
                    !passes,
                    "{msr:#x} write={write}"
                );
                passed += u32::from(passes);
            }
        }
        // 12 MSRs both ways (the VT-x list less EFER) plus TSC reads.
        assert_eq!(passed, 25);
        // The reserved bytes stay set.
        assert!(map[0x1800..].iter().all(|b| *b == 0xFF));
    }

    #[test]
    fn efer_always_exits_and_the_vmload_msrs_pass() {
        let map = msr_map();
        assert!(msr_intercepted(&map, IA32_EFER, false));
        assert!(msr_intercepted(&map, IA32_EFER, true));
        for msr in [
            IA32_SYSENTER_CS,
            IA32_SYSENTER_ESP,
            IA32_SYSENTER_EIP,
            IA32_PAT,
            IA32_FS_BASE,
            IA32_GS_BASE,
            IA32_KERNEL_GS_BASE,
            IA32_STAR,
            IA32_LSTAR,
            IA32_CSTAR,
            IA32_FMASK,
            IA32_TSC_AUX,
        ] {
            assert!(!msr_intercepted(&map, msr, false), "{msr:#x}");
            assert!(!msr_intercepted(&map, msr, true), "{msr:#x}");
        }
        assert!(!msr_intercepted(&map, IA32_TIME_STAMP_COUNTER, false));
        assert!(msr_intercepted(&map, IA32_TIME_STAMP_COUNTER, true));
        // SVM's own MSRs, in the third range, are the host's.
        for msr in [0xC001_0114, 0xC001_0117, 0xC001_0010] {
            assert!(msr_intercepted(&map, msr, false), "{msr:#x}");
            assert!(msr_intercepted(&map, msr, true), "{msr:#x}");
        }
    }

    #[test]
    fn nothing_outside_the_ranges_passes() {
        let map = msr_map();
        for msr in (0x2000..=0x1_0000)
            .chain(0xC000_2000..=0xC000_3000)
            .chain(0xC001_2000..=0xC001_3000)
            .chain([0x4000_0000, 0xBFFF_FFFF, 0xC002_0000, u32::MAX])
        {
            for write in [false, true] {
                assert!(!msr_passes_through(msr, write), "{msr:#x}");
                assert!(msr_intercepted(&map, msr, write), "{msr:#x}");
            }
        }
    }

    #[test]
    fn filling_overwrites_whatever_was_there() {
        let mut from_zero = Box::new([0u8; MSRPM_BYTES]);
        let mut from_ones = Box::new([0xFFu8; MSRPM_BYTES]);
        fill_msr_map(&mut from_zero);
        fill_msr_map(&mut from_ones);
        assert_eq!(from_zero, from_ones);
        let mut io = Box::new([0x5Au8; IOPM_BYTES]);
        fill_io_map(&mut io);
        assert!(io.iter().all(|b| *b == 0xFF));
    }
}
