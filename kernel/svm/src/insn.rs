//! The little instruction decoding the SVM backend needs where the CPU
//! reports neither the next RIP (NRIP save) nor the operands (decode
//! assists), as under QEMU's TCG: the length of an instruction an
//! intercept stopped at, whose opcode the exit code already names; the
//! operands of an intercepted MOV to or from CR8; the segment override of
//! an OUTS. The bytes are the guest's and untrusted: anything that is not
//! the expected instruction is refused (`None`), never guessed at.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use vcpu::access::{Gpr, Segment};
use vcpu::exit::AddressSize;
use vcpu::mmio::decode::CodeSize;

/// The longest x86 instruction (APM Vol. 3, 1.1; SDM Vol. 2A, 2.3.11).
const MAX_LEN: usize = 15;

/// An instruction an intercept reports by its exit code alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expected {
    /// CPUID: 0F A2.
    Cpuid,
    /// HLT: F4.
    Hlt,
    /// RDMSR: 0F 32.
    Rdmsr,
    /// WRMSR: 0F 30.
    Wrmsr,
    /// VMMCALL: 0F 01 D9.
    Vmmcall,
    /// VMCALL: 0F 01 C1 (VT-x's hypercall, which raises #UD on AMD).
    Vmcall,
    /// XSETBV: 0F 01 D1.
    Xsetbv,
    /// INVD: 0F 08.
    Invd,
    /// WBINVD: 0F 09 (WBNOINVD is the same with an F3 prefix).
    Wbinvd,
}

impl Expected {
    /// The opcode bytes after the prefixes.
    const fn opcode(self) -> &'static [u8] {
        match self {
            Self::Cpuid => &[0x0F, 0xA2],
            Self::Hlt => &[0xF4],
            Self::Rdmsr => &[0x0F, 0x32],
            Self::Wrmsr => &[0x0F, 0x30],
            Self::Vmmcall => &[0x0F, 0x01, 0xD9],
            Self::Vmcall => &[0x0F, 0x01, 0xC1],
            Self::Xsetbv => &[0x0F, 0x01, 0xD1],
            Self::Invd => &[0x0F, 0x08],
            Self::Wbinvd => &[0x0F, 0x09],
        }
    }
}

/// The prefixes at the start of an instruction (APM Vol. 3, 1.2; SDM
/// Vol. 2A, 2.1.1): legacy prefixes in any order, then in 64-bit mode a
/// REX prefix, which counts only right before the opcode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Prefixes {
    /// How many bytes they take.
    len: usize,
    /// The last segment override.
    segment: Option<Segment>,
    /// LOCK (F0).
    lock: bool,
    /// The REX prefix right before the opcode.
    rex: u8,
    /// An address-size override (67) came.
    address_size: bool,
}

fn prefixes(bytes: &[u8], code: CodeSize) -> Prefixes {
    let mut p = Prefixes::default();
    for &b in bytes.iter().take(MAX_LEN) {
        let segment = match b {
            0x26 => Some(Segment::Es),
            0x2E => Some(Segment::Cs),
            0x36 => Some(Segment::Ss),
            0x3E => Some(Segment::Ds),
            0x64 => Some(Segment::Fs),
            0x65 => Some(Segment::Gs),
            _ => None,
        };
        match b {
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 => {
                // A legacy prefix after a REX makes that REX void.
                p.rex = 0;
                p.segment = segment.or(p.segment);
                p.lock |= b == 0xF0;
                p.address_size |= b == 0x67;
            }
            0x40..=0x4F if code == CodeSize::Bits64 => p.rex = b,
            _ => break,
        }
        p.len = p.len.saturating_add(1);
    }
    p
}

/// The length of the instruction at the start of `bytes`, in code of size
/// `code`, if it is `expected` (with any prefixes); `None` if the bytes
/// are something else, or run out, or it would be longer than 15 bytes.
pub fn instruction_length(bytes: &[u8], code: CodeSize, expected: Expected) -> Option<u8> {
    let p = prefixes(bytes, code);
    let opcode = expected.opcode();
    let end = p.len.checked_add(opcode.len())?;
    if end > MAX_LEN || bytes.get(p.len..end)? != opcode {
        return None;
    }
    u8::try_from(end).ok()
}

/// A MOV to or from a control register (0F 22 /r, 0F 20 /r).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MovCr {
    /// The instruction's length.
    pub len: u8,
    /// The control register: ModRM.reg, plus 8 with REX.R or (AMD's
    /// alternative encoding of CR8) a LOCK prefix.
    pub cr: u8,
    /// The general-purpose register: ModRM.rm, plus 8 with REX.B. The
    /// instruction treats ModRM.mod as 11 whatever it says.
    pub gpr: Gpr,
    /// MOV to the control register (0F 22), else from it (0F 20).
    pub to_cr: bool,
}

/// The MOV to or from a control register at the start of `bytes`.
pub fn mov_cr(bytes: &[u8], code: CodeSize) -> Option<MovCr> {
    let p = prefixes(bytes, code);
    let end = p.len.checked_add(3)?;
    if end > MAX_LEN {
        return None;
    }
    let to_cr = match bytes.get(p.len..end)? {
        [0x0F, 0x22, _] => true,
        [0x0F, 0x20, _] => false,
        _ => return None,
    };
    let modrm = *bytes.get(end.checked_sub(1)?)?;
    let mut cr = (modrm >> 3) & 7;
    if p.rex & 0b100 != 0 || p.lock {
        cr |= 8;
    }
    let rm = (modrm & 7) | if p.rex & 0b001 != 0 { 8 } else { 0 };
    Some(MovCr {
        len: u8::try_from(end).ok()?,
        cr,
        gpr: Gpr::from_number(rm)?,
        to_cr,
    })
}

/// The address size of the INS or OUTS at the start of `bytes` in code
/// of size `code`: the code's, switched by an address-size prefix (67).
/// `None` if the bytes are not an INS or OUTS.
pub fn string_address_size(bytes: &[u8], code: CodeSize) -> Option<AddressSize> {
    let p = prefixes(bytes, code);
    match bytes.get(p.len)? {
        0x6C..=0x6F if p.len < MAX_LEN => Some(match (code, p.address_size) {
            (CodeSize::Bits64, false) => AddressSize::Bits64,
            (CodeSize::Bits64, true) | (CodeSize::Bits32, false) | (CodeSize::Bits16, true) => {
                AddressSize::Bits32
            }
            (CodeSize::Bits32, true) | (CodeSize::Bits16, false) => AddressSize::Bits16,
        }),
        _ => None,
    }
}

/// What a CR0 write intercept stopped at, other than MOV to CR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cr0Write {
    /// CLTS (0F 06).
    Clts {
        /// The instruction's length.
        len: u8,
    },
    /// LMSW from a register (0F 01 /6, ModRM.mod 11).
    Lmsw {
        /// The instruction's length.
        len: u8,
        /// The source register.
        gpr: Gpr,
    },
}

/// The CLTS or register LMSW at the start of `bytes`; `None` for anything
/// else, LMSW from memory included.
pub fn cr0_write(bytes: &[u8], code: CodeSize) -> Option<Cr0Write> {
    let p = prefixes(bytes, code);
    match bytes.get(p.len..)? {
        [0x0F, 0x06, ..] => Some(Cr0Write::Clts {
            len: u8::try_from(p.len.checked_add(2)?).ok()?,
        }),
        [0x0F, 0x01, modrm, ..] if modrm >> 6 == 3 && (modrm >> 3) & 7 == 6 => {
            let rm = (modrm & 7) | if p.rex & 0b001 != 0 { 8 } else { 0 };
            let len = p.len.checked_add(3)?;
            if len > MAX_LEN {
                return None;
            }
            Some(Cr0Write::Lmsw {
                len: u8::try_from(len).ok()?,
                gpr: Gpr::from_number(rm)?,
            })
        }
        _ => None,
    }
}

/// The segment an OUTS at the start of `bytes` reads from: its last
/// segment-override prefix, else DS. `None` if the bytes are not an OUTS
/// (6E, 6F).
pub fn outs_segment(bytes: &[u8], code: CodeSize) -> Option<Segment> {
    let p = prefixes(bytes, code);
    match bytes.get(p.len)? {
        0x6E | 0x6F if p.len < MAX_LEN => Some(p.segment.unwrap_or(Segment::Ds)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    const B16: CodeSize = CodeSize::Bits16;
    const B32: CodeSize = CodeSize::Bits32;
    const B64: CodeSize = CodeSize::Bits64;

    #[test]
    fn lengths_of_the_intercepted_instructions() {
        let cases: &[(&[u8], CodeSize, Expected, Option<u8>)] = &[
            (&[0x0F, 0xA2, 0x90], B64, Expected::Cpuid, Some(2)),
            (&[0xF4], B16, Expected::Hlt, Some(1)),
            (&[0x0F, 0x32], B32, Expected::Rdmsr, Some(2)),
            (&[0x0F, 0x30], B64, Expected::Wrmsr, Some(2)),
            (&[0x0F, 0x01, 0xD9], B64, Expected::Vmmcall, Some(3)),
            (&[0x0F, 0x01, 0xD1], B32, Expected::Xsetbv, Some(3)),
            (&[0x0F, 0x08], B64, Expected::Invd, Some(2)),
            (&[0xF3, 0x0F, 0x09], B64, Expected::Wbinvd, Some(3)),
            // Prefixes count: operand size, segment, REX in 64-bit mode.
            (&[0x66, 0x2E, 0x0F, 0xA2], B16, Expected::Cpuid, Some(4)),
            (&[0x48, 0x0F, 0x30], B64, Expected::Wrmsr, Some(3)),
            (
                &[0x66, 0x48, 0x0F, 0x01, 0xD9],
                B64,
                Expected::Vmmcall,
                Some(5),
            ),
            // 48 is DEC EAX outside 64-bit mode, not a prefix.
            (&[0x48, 0x0F, 0x30], B32, Expected::Wrmsr, None),
            // Something else, a different instruction, too few bytes.
            (&[0x0F, 0xA2], B64, Expected::Hlt, None),
            (&[0x0F, 0x01, 0xC1], B64, Expected::Vmmcall, None),
            (&[0x0F, 0x01, 0xC1], B64, Expected::Vmcall, Some(3)),
            (&[0x66, 0x0F, 0x01, 0xC1], B64, Expected::Vmcall, Some(4)),
            (&[0x0F, 0x01, 0xD9], B64, Expected::Vmcall, None),
            (&[0x0F, 0x01], B64, Expected::Vmmcall, None),
            (&[], B64, Expected::Hlt, None),
            (&[0x66; 20], B64, Expected::Hlt, None),
        ];
        for &(bytes, code, expected, len) in cases {
            assert_eq!(
                instruction_length(bytes, code, expected),
                len,
                "{bytes:02x?} {code:?} {expected:?}"
            );
        }
        // Fourteen prefixes and HLT is 15 bytes; fifteen is too long.
        let mut long = [0x66u8; 16];
        long[14] = 0xF4;
        assert_eq!(instruction_length(&long, B64, Expected::Hlt), Some(15));
        long[14] = 0x66;
        long[15] = 0xF4;
        assert_eq!(instruction_length(&long, B64, Expected::Hlt), None);
    }

    #[test]
    fn mov_cr8_operands() {
        // MOV CR8, RAX: 44 0F 22 C0.
        assert_eq!(
            mov_cr(&[0x44, 0x0F, 0x22, 0xC0], B64),
            Some(MovCr {
                len: 4,
                cr: 8,
                gpr: Gpr::Rax,
                to_cr: true
            })
        );
        // MOV R9, CR8: 4D 0F 20 C1.
        assert_eq!(
            mov_cr(&[0x4D, 0x0F, 0x20, 0xC1], B64),
            Some(MovCr {
                len: 4,
                cr: 8,
                gpr: Gpr::R9,
                to_cr: false
            })
        );
        // LOCK MOV CR0, ECX is CR8 in 32-bit code; MOD is ignored.
        assert_eq!(
            mov_cr(&[0xF0, 0x0F, 0x22, 0x01], B32),
            Some(MovCr {
                len: 4,
                cr: 8,
                gpr: Gpr::Rcx,
                to_cr: true
            })
        );
        // MOV CR3, RAX is not CR8; a REX before a legacy prefix is void.
        assert_eq!(mov_cr(&[0x0F, 0x22, 0xD8], B64).map(|m| m.cr), Some(3));
        assert_eq!(
            mov_cr(&[0x44, 0x66, 0x0F, 0x22, 0xC0], B64).map(|m| m.cr),
            Some(0)
        );
        assert_eq!(mov_cr(&[0x0F, 0x21, 0xC0], B64), None);
        assert_eq!(mov_cr(&[0x0F, 0x22], B64), None);
    }

    #[test]
    fn outs_segments() {
        assert_eq!(outs_segment(&[0x6E], B32), Some(Segment::Ds));
        assert_eq!(outs_segment(&[0xF3, 0x6F], B64), Some(Segment::Ds));
        assert_eq!(outs_segment(&[0x26, 0xF3, 0x6E], B16), Some(Segment::Es));
        assert_eq!(
            outs_segment(&[0x2E, 0x64, 0x66, 0x6F], B32),
            Some(Segment::Fs)
        );
        assert_eq!(outs_segment(&[0x65, 0x48, 0x6F], B64), Some(Segment::Gs));
        assert_eq!(outs_segment(&[0x6C], B32), None);
        assert_eq!(outs_segment(&[0x3E], B32), None);
    }

    #[test]
    fn string_address_sizes() {
        use AddressSize::{Bits16, Bits32, Bits64};
        assert_eq!(string_address_size(&[0xF3, 0x6E], B64), Some(Bits64));
        assert_eq!(string_address_size(&[0x67, 0xF3, 0x6E], B64), Some(Bits32));
        assert_eq!(string_address_size(&[0x6C], B32), Some(Bits32));
        assert_eq!(string_address_size(&[0x67, 0x6D], B32), Some(Bits16));
        assert_eq!(string_address_size(&[0xF3, 0x6F], B16), Some(Bits16));
        assert_eq!(string_address_size(&[0x67, 0x6F], B16), Some(Bits32));
        assert_eq!(string_address_size(&[0xEE], B32), None);
    }

    #[test]
    fn cr0_writes_other_than_mov() {
        assert_eq!(
            cr0_write(&[0x0F, 0x06], B32),
            Some(Cr0Write::Clts { len: 2 })
        );
        // LMSW AX (0F 01 F0), and R9W with REX.B in 64-bit code.
        assert_eq!(
            cr0_write(&[0x0F, 0x01, 0xF0], B16),
            Some(Cr0Write::Lmsw {
                len: 3,
                gpr: Gpr::Rax
            })
        );
        assert_eq!(
            cr0_write(&[0x41, 0x0F, 0x01, 0xF1], B64),
            Some(Cr0Write::Lmsw {
                len: 4,
                gpr: Gpr::R9
            })
        );
        // LMSW from memory, SMSW, a MOV: not these.
        assert_eq!(cr0_write(&[0x0F, 0x01, 0x30], B32), None);
        assert_eq!(cr0_write(&[0x0F, 0x01, 0xE0], B32), None);
        assert_eq!(cr0_write(&[0x0F, 0x22, 0xC0], B32), None);
    }
}
