//! The MSR bitmap and the I/O bitmaps: the page-sized, page-aligned tables
//! whose bits decide which of a guest's RDMSR/WRMSR and IN/OUT/INS/OUTS
//! accesses cause VM exits. Pure: the caller fills them and writes their
//! physical addresses into the VMCS.
//!
//! Layouts: SDM Vol. 3C, 25.6.4 "I/O-Bitmap Addresses" and 25.6.9
//! "MSR-Bitmap Address". Which accesses exit: SDM Vol. 3C, 26.1.3
//! "Instructions That Cause VM Exits Conditionally" (RDMSR, WRMSR, IN, OUT).
//! Earlier editions number these 24.6.4, 24.6.9 and 25.1.3; the titles are
//! the same. The bitmaps are used only while the "use MSR bitmaps" and
//! "use I/O bitmaps" controls are 1 ([`crate::controls::PrimaryControls`]).

use core::fmt;
use core::mem::{align_of, offset_of, size_of};
use core::ops::RangeInclusive;

/// Last MSR of the low range the MSR bitmap covers (0 to 1FFFH).
const LOW_MSR_LAST: u32 = 0x0000_1FFF;
/// First MSR of the high range the MSR bitmap covers.
const HIGH_MSR_FIRST: u32 = 0xC000_0000;
/// Last MSR of the high range the MSR bitmap covers.
const HIGH_MSR_LAST: u32 = 0xC000_1FFF;

/// Byte offset of the read bitmap for low MSRs (SDM Vol. 3C, 25.6.9).
const READ_LOW: usize = 0;
/// Byte offset of the read bitmap for high MSRs.
const READ_HIGH: usize = 1024;
/// Byte offset of the write bitmap for low MSRs.
const WRITE_LOW: usize = 2048;
/// Byte offset of the write bitmap for high MSRs.
const WRITE_HIGH: usize = 3072;

/// Which accesses of an MSR a [`MsrBitmap::set`] call changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrAccess {
    /// RDMSR only.
    Read,
    /// WRMSR only.
    Write,
    /// Both RDMSR and WRMSR.
    ReadWrite,
}

impl MsrAccess {
    /// Whether this kind includes RDMSR.
    const fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }

    /// Whether this kind includes WRMSR.
    const fn writes(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }
}

/// An MSR index that the MSR bitmap has no bit for: accesses to it always
/// cause VM exits (SDM Vol. 3C, 26.1.3), so it cannot be passed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsrOutOfRange {
    /// The MSR index that was asked for.
    pub msr: u32,
}

impl fmt::Display for MsrOutOfRange {
    /// `vmx: MSR bitmap: MSR 0x3000 is outside 0x0..=0x1fff and
    /// 0xc0000000..=0xc0001fff; RDMSR and WRMSR of it always exit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vmx: MSR bitmap: MSR {:#x} is outside {:#x}..={:#x} and {:#x}..={:#x}; \
             RDMSR and WRMSR of it always exit",
            self.msr, 0, LOW_MSR_LAST, HIGH_MSR_FIRST, HIGH_MSR_LAST
        )
    }
}

/// The 4-KiB MSR bitmap (SDM Vol. 3C, 25.6.9): four 1-KiB bitmaps, read-low
/// (MSRs 0..=1FFFH) at bytes 0..1024, read-high (C000_0000H..=C000_1FFFH)
/// at 1024..2048, write-low at 2048..3072 and write-high at 3072..4096. MSR
/// `n` of a range is bit `n % 8` of byte `n / 8` of its quarter; a 1 makes
/// that access exit. MSRs outside both ranges always exit.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct MsrBitmap {
    /// The page as the processor reads it.
    bytes: [u8; 4096],
}

// The VMCS takes the bitmap's physical address, which must be 4-KiB aligned
// and the bitmap exactly one page (SDM Vol. 3C, 25.6.9).
const _: () = assert!(size_of::<MsrBitmap>() == 4096);
const _: () = assert!(align_of::<MsrBitmap>() == 4096);

/// Where an MSR's bits are: the byte offsets of its read and write quarters
/// and its bit number within a quarter. `None` outside both ranges.
const fn locate_msr(msr: u32) -> Option<(usize, usize, usize)> {
    if msr <= LOW_MSR_LAST {
        Some((READ_LOW, WRITE_LOW, msr as usize))
    } else if msr >= HIGH_MSR_FIRST && msr <= HIGH_MSR_LAST {
        Some((READ_HIGH, WRITE_HIGH, (msr - HIGH_MSR_FIRST) as usize))
    } else {
        None
    }
}

/// Bit `bit` (counted from bit 0 of byte 0) of `bytes`; `None` past the end.
fn get_bit(bytes: &[u8], bit: usize) -> Option<bool> {
    bytes.get(bit / 8).map(|byte| byte & (1 << (bit % 8)) != 0)
}

/// Sets or clears bit `bit` of `bytes`; nothing past the end.
fn put_bit(bytes: &mut [u8], bit: usize, value: bool) {
    if let Some(byte) = bytes.get_mut(bit / 8) {
        let mask = 1 << (bit % 8);
        if value {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
    }
}

/// The number of 1 bits of `bytes`.
fn ones(bytes: &[u8]) -> u32 {
    bytes.iter().map(|b| b.count_ones()).sum()
}

impl fmt::Debug for MsrBitmap {
    /// How many MSRs of each quarter exit; the 4096 bytes would drown a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quarter = |start: usize| ones(self.bytes.get(start..start + 1024).unwrap_or(&[]));
        f.debug_struct("MsrBitmap")
            .field("read_low_exits", &quarter(READ_LOW))
            .field("read_high_exits", &quarter(READ_HIGH))
            .field("write_low_exits", &quarter(WRITE_LOW))
            .field("write_high_exits", &quarter(WRITE_HIGH))
            .finish()
    }
}

impl MsrBitmap {
    /// Every RDMSR and WRMSR exits: the safe starting point.
    pub const fn exit_all() -> Self {
        Self {
            bytes: [0xFF; 4096],
        }
    }

    /// No access to an MSR in the covered ranges exits (MSRs outside them
    /// still do).
    pub const fn pass_all() -> Self {
        Self { bytes: [0; 4096] }
    }

    /// Makes every access to an MSR of the covered ranges exit (`exit`) or
    /// run without an exit, in place (a fresh 4-KiB value on a small kernel
    /// stack is avoided).
    pub fn set_all(&mut self, exit: bool) {
        self.bytes.fill(if exit { 0xFF } else { 0 });
    }

    /// Whether the bitmap has bits for `msr`, i.e. whether its accesses can
    /// be passed through at all.
    pub const fn covers(msr: u32) -> bool {
        locate_msr(msr).is_some()
    }

    /// Makes the `kind` accesses of `msr` exit (`exit`) or run without an
    /// exit. Fails, changing nothing, for an MSR outside both ranges.
    pub fn set(&mut self, msr: u32, kind: MsrAccess, exit: bool) -> Result<(), MsrOutOfRange> {
        let (read_quarter, write_quarter, bit) = locate_msr(msr).ok_or(MsrOutOfRange { msr })?;
        if kind.reads() {
            put_bit(&mut self.bytes, read_quarter * 8 + bit, exit);
        }
        if kind.writes() {
            put_bit(&mut self.bytes, write_quarter * 8 + bit, exit);
        }
        Ok(())
    }

    /// Whether RDMSR (`write` false) or WRMSR (`write` true) of `msr` causes
    /// a VM exit with this bitmap: always for an MSR outside both ranges
    /// (SDM Vol. 3C, 26.1.3).
    pub fn exits(&self, msr: u32, write: bool) -> bool {
        match locate_msr(msr) {
            None => true,
            Some((read_quarter, write_quarter, bit)) => {
                let quarter = if write { write_quarter } else { read_quarter };
                get_bit(&self.bytes, quarter * 8 + bit).unwrap_or(true)
            }
        }
    }

    /// The page as the processor reads it.
    pub fn as_bytes(&self) -> &[u8; 4096] {
        &self.bytes
    }
}

/// I/O bitmaps A and B (SDM Vol. 3C, 25.6.4), two consecutive 4-KiB pages:
/// A has one bit per port 0..=7FFFH, B one per port 8000H..=FFFFH; port `p`
/// of a page is bit `p % 8` of byte `(p % 8000H) / 8`. A 1 makes accesses
/// touching that port exit. The VMCS takes each page's address separately.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct IoBitmaps {
    /// Bitmap A: ports 0..=7FFFH.
    a: [u8; 4096],
    /// Bitmap B: ports 8000H..=FFFFH.
    b: [u8; 4096],
}

// Each page's physical address goes into the VMCS and must be 4-KiB aligned
// (SDM Vol. 3C, 25.6.4): A starts the struct and B starts one page later.
const _: () = assert!(size_of::<IoBitmaps>() == 8192);
const _: () = assert!(align_of::<IoBitmaps>() == 4096);
const _: () = assert!(offset_of!(IoBitmaps, b) == 4096);

impl fmt::Debug for IoBitmaps {
    /// How many ports of each page exit; the 8192 bytes would drown a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBitmaps")
            .field("a_exits", &ones(&self.a))
            .field("b_exits", &ones(&self.b))
            .finish()
    }
}

impl IoBitmaps {
    /// Every port access exits: the safe starting point.
    pub const fn exit_all() -> Self {
        Self {
            a: [0xFF; 4096],
            b: [0xFF; 4096],
        }
    }

    /// No port access exits (except one that wraps past port FFFFH, which
    /// always does).
    pub const fn pass_all() -> Self {
        Self {
            a: [0; 4096],
            b: [0; 4096],
        }
    }

    /// Makes every port exit (`exit`) or run without an exit, in place.
    pub fn set_all(&mut self, exit: bool) {
        let byte = if exit { 0xFF } else { 0 };
        self.a.fill(byte);
        self.b.fill(byte);
    }

    /// The page holding `port`'s bit, and the bit number within it.
    fn locate(&self, port: u16) -> (&[u8; 4096], usize) {
        let page = if port < 0x8000 { &self.a } else { &self.b };
        (page, usize::from(port & 0x7FFF))
    }

    /// Makes every port of `ports` exit (`exit`) or run without an exit. An
    /// empty range changes nothing.
    pub fn set(&mut self, ports: RangeInclusive<u16>, exit: bool) {
        for port in ports {
            let page = if port < 0x8000 {
                &mut self.a
            } else {
                &mut self.b
            };
            put_bit(page, usize::from(port & 0x7FFF), exit);
        }
    }

    /// Whether an access of `size` bytes starting at `port` causes a VM
    /// exit: if the bit of any port it touches is 1, or if it wraps past
    /// FFFFH to port 0 (SDM Vol. 3C, 26.1.3, IN/OUT with "use I/O bitmaps").
    /// Sizes other than 1, 2 and 4 are no I/O access a processor makes and
    /// are answered with an exit, so nothing unexpected runs unchecked.
    pub fn exits(&self, port: u16, size: u8) -> bool {
        if !matches!(size, 1 | 2 | 4) {
            return true;
        }
        (0..u16::from(size)).any(|offset| match port.checked_add(offset) {
            None => true,
            Some(p) => {
                let (page, bit) = self.locate(p);
                get_bit(page, bit).unwrap_or(true)
            }
        })
    }

    /// Bitmap A (ports 0..=7FFFH), the page for the VMCS's I/O-bitmap A
    /// address.
    pub fn a(&self) -> &[u8; 4096] {
        &self.a
    }

    /// Bitmap B (ports 8000H..=FFFFH), the page for the VMCS's I/O-bitmap B
    /// address.
    pub fn b(&self) -> &[u8; 4096] {
        &self.b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte `byte` of the bitmap, bit `bit`.
    fn raw_bit(bytes: &[u8], byte: usize, bit: u8) -> bool {
        bytes[byte] & (1 << bit) != 0
    }

    #[test]
    fn msr_layout_follows_the_sdm_quarters() {
        let mut bitmap = MsrBitmap::pass_all();
        // EFER (C000_0080H) write: write-high quarter (3072), bit 80H.
        bitmap
            .set(0xC000_0080, MsrAccess::Write, true)
            .expect("in range");
        let bytes = bitmap.as_bytes();
        assert!(raw_bit(bytes, 3072 + 0x80 / 8, 0));
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1);
        assert!(bitmap.exits(0xC000_0080, true));
        assert!(!bitmap.exits(0xC000_0080, false));

        // IA32_PAT (277H) read: read-low quarter, byte 4EH, bit 7.
        let mut bitmap = MsrBitmap::pass_all();
        bitmap.set(0x277, MsrAccess::Read, true).expect("in range");
        assert!(raw_bit(bitmap.as_bytes(), 0x277 / 8, 7));
        assert_eq!(bitmap.as_bytes()[0x4E], 0x80);
        assert!(bitmap.exits(0x277, false));
        assert!(!bitmap.exits(0x277, true));

        // ReadWrite touches both quarters of the low range.
        let mut bitmap = MsrBitmap::pass_all();
        bitmap
            .set(0x10, MsrAccess::ReadWrite, true)
            .expect("in range");
        assert_eq!(bitmap.as_bytes()[2], 1);
        assert_eq!(bitmap.as_bytes()[2048 + 2], 1);
        assert_eq!(bitmap.as_bytes().iter().filter(|b| **b != 0).count(), 2);
    }

    #[test]
    fn msr_range_boundaries() {
        let mut bitmap = MsrBitmap::pass_all();
        for msr in [0, 0x1FFF, 0xC000_0000, 0xC000_1FFF] {
            assert!(MsrBitmap::covers(msr));
            bitmap
                .set(msr, MsrAccess::ReadWrite, true)
                .expect("in range");
        }
        let bytes = bitmap.as_bytes();
        // First and last bit of each quarter.
        for quarter in [READ_LOW, READ_HIGH, WRITE_LOW, WRITE_HIGH] {
            assert!(raw_bit(bytes, quarter, 0), "quarter {quarter}");
            assert!(raw_bit(bytes, quarter + 1023, 7), "quarter {quarter}");
        }
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 8);
    }

    #[test]
    fn msrs_outside_the_ranges_always_exit_and_cannot_be_set() {
        let mut bitmap = MsrBitmap::pass_all();
        for msr in [0x2000, 0xBFFF_FFFF, 0xC000_2000, 0xC001_0114, u32::MAX] {
            assert!(!MsrBitmap::covers(msr));
            assert!(bitmap.exits(msr, false), "{msr:#x}");
            assert!(bitmap.exits(msr, true), "{msr:#x}");
            assert_eq!(
                bitmap.set(msr, MsrAccess::ReadWrite, false),
                Err(MsrOutOfRange { msr })
            );
        }
        assert_eq!(bitmap, MsrBitmap::pass_all(), "a failed set changed bits");
        assert_eq!(
            MsrOutOfRange { msr: 0x2000 }.to_string(),
            "vmx: MSR bitmap: MSR 0x2000 is outside 0x0..=0x1fff and \
             0xc0000000..=0xc0001fff; RDMSR and WRMSR of it always exit"
        );
    }

    #[test]
    fn exit_all_and_pass_all() {
        let all = MsrBitmap::exit_all();
        let none = MsrBitmap::pass_all();
        assert!(all.as_bytes().iter().all(|b| *b == 0xFF));
        assert!(none.as_bytes().iter().all(|b| *b == 0));
        for msr in (0..=0x1FFF).chain(0xC000_0000..=0xC000_1FFF) {
            for write in [false, true] {
                assert!(all.exits(msr, write));
                assert!(!none.exits(msr, write));
            }
        }
    }

    #[test]
    fn set_all_in_place() {
        let mut bitmap = MsrBitmap::pass_all();
        bitmap.set_all(true);
        assert_eq!(bitmap, MsrBitmap::exit_all());
        bitmap.set_all(false);
        assert_eq!(bitmap, MsrBitmap::pass_all());
        let mut io = IoBitmaps::pass_all();
        io.set_all(true);
        assert_eq!(io, IoBitmaps::exit_all());
        io.set_all(false);
        assert_eq!(io, IoBitmaps::pass_all());
    }

    #[test]
    fn msr_set_clears_only_the_asked_bits() {
        let mut bitmap = MsrBitmap::exit_all();
        bitmap
            .set(0xC000_0100, MsrAccess::ReadWrite, false)
            .expect("in range");
        bitmap.set(0x10, MsrAccess::Read, false).expect("in range");
        for msr in (0..=0x1FFF).chain(0xC000_0000..=0xC000_1FFF) {
            let read_passes = msr == 0xC000_0100 || msr == 0x10;
            let write_passes = msr == 0xC000_0100;
            assert_eq!(bitmap.exits(msr, false), !read_passes, "{msr:#x} read");
            assert_eq!(bitmap.exits(msr, true), !write_passes, "{msr:#x} write");
        }
        // Setting back restores the page.
        bitmap
            .set(0xC000_0100, MsrAccess::ReadWrite, true)
            .expect("in range");
        bitmap.set(0x10, MsrAccess::Read, true).expect("in range");
        assert_eq!(bitmap, MsrBitmap::exit_all());
    }

    #[test]
    fn io_layout_and_the_a_b_boundary() {
        let mut io = IoBitmaps::pass_all();
        io.set(0x7FFE..=0x8001, true);
        // A: ports 7FFEH and 7FFFH are bits 6 and 7 of its last byte.
        assert_eq!(io.a()[4095], 0xC0);
        // B: ports 8000H and 8001H are bits 0 and 1 of its first byte.
        assert_eq!(io.b()[0], 0x03);
        assert_eq!(io.a().iter().filter(|b| **b != 0).count(), 1);
        assert_eq!(io.b().iter().filter(|b| **b != 0).count(), 1);
        for port in 0x7FF0..=0x8010u16 {
            let set = (0x7FFE..=0x8001).contains(&port);
            assert_eq!(io.exits(port, 1), set, "{port:#x}");
        }

        // COM1 (3F8H..=3FFH) is exactly byte 7FH of A.
        let mut io = IoBitmaps::pass_all();
        io.set(0x3F8..=0x3FF, true);
        assert_eq!(io.a()[0x7F], 0xFF);
        assert_eq!(io.a().iter().filter(|b| **b != 0).count(), 1);
    }

    #[test]
    fn io_set_and_clear_ranges() {
        let mut io = IoBitmaps::exit_all();
        io.set(0..=0xFFFF, false);
        assert_eq!(io, IoBitmaps::pass_all());
        io.set(0xFFFF..=0xFFFF, true);
        assert_eq!(io.b()[4095], 0x80);
        assert!(io.exits(0xFFFF, 1));
        assert!(!io.exits(0xFFFE, 1));
        // An empty range changes nothing.
        #[allow(clippy::reversed_empty_ranges)]
        io.set(0x20..=0x10, true);
        assert!(io.a().iter().all(|b| *b == 0));
        let mut io = IoBitmaps::exit_all();
        io.set(0x60..=0x64, false);
        assert!(!io.exits(0x60, 4));
        assert!(io.exits(0x65, 1));
        assert!(io.exits(0x5F, 1));
    }

    #[test]
    fn io_access_size_covers_every_byte() {
        let mut io = IoBitmaps::pass_all();
        io.set(0x71..=0x71, true);
        assert!(!io.exits(0x70, 1));
        assert!(io.exits(0x70, 2), "the second byte's bit is set");
        assert!(io.exits(0x6E, 4), "the fourth byte's bit is set");
        assert!(!io.exits(0x6D, 4));
        assert!(!io.exits(0x72, 4));
        // Across the A/B boundary: a 4-byte access at 7FFEH reads B's bits.
        let mut io = IoBitmaps::pass_all();
        io.set(0x8001..=0x8001, true);
        assert!(io.exits(0x7FFE, 4));
        assert!(!io.exits(0x7FFE, 2));
    }

    #[test]
    fn io_accesses_that_wrap_always_exit() {
        let io = IoBitmaps::pass_all();
        assert!(!io.exits(0xFFFF, 1));
        assert!(io.exits(0xFFFF, 2));
        assert!(!io.exits(0xFFFE, 2));
        assert!(io.exits(0xFFFD, 4));
        assert!(!io.exits(0xFFFC, 4));
    }

    #[test]
    fn debug_counts_exiting_bits() {
        let mut bitmap = MsrBitmap::pass_all();
        bitmap
            .set(0xC000_0080, MsrAccess::ReadWrite, true)
            .expect("in range");
        assert_eq!(
            format!("{bitmap:?}"),
            "MsrBitmap { read_low_exits: 0, read_high_exits: 1, write_low_exits: 0, write_high_exits: 1 }"
        );
        let mut io = IoBitmaps::pass_all();
        io.set(0x3F8..=0x3FF, true);
        assert_eq!(format!("{io:?}"), "IoBitmaps { a_exits: 8, b_exits: 0 }");
    }

    #[test]
    fn io_sizes_that_are_no_access_exit() {
        let io = IoBitmaps::pass_all();
        for size in [0, 3, 5, 8, 255] {
            assert!(io.exits(0x80, size), "size {size}");
        }
        for size in [1, 2, 4] {
            assert!(!io.exits(0x80, size), "size {size}");
        }
    }
}
