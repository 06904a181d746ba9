//! A decoder for the few instructions that touch MMIO in practice: what
//! Linux's `readb/w/l/q` and `writeb/w/l/q` compile to, and plain `mov`s to
//! APIC registers (SDM Vol. 2A, chapter 2 "Instruction format"; Vol. 2B
//! "MOV", "MOVZX", "MOVSX").
//!
//! It finds the instruction's length, the register or immediate operand,
//! the access width and direction. It does not compute the memory
//! operand's address: the exit already gives the guest-physical address,
//! so ModRM, SIB and displacement are parsed only to be skipped.
//!
//! Decoded: MOV r/m,r (88, 89), MOV r,r/m (8A, 8B), MOV r/m,imm (C6 /0,
//! C7 /0), MOV with a direct offset (A0 to A3), MOVZX (0F B6, 0F B7) and
//! MOVSX (0F BE, 0F BF); prefixes 66 and 67, the segment overrides, and REX
//! in 64-bit mode. Refused with [`DecodeError`]: every other opcode, LOCK,
//! REP/REPNE (F3/F2 turn 0F opcodes into others), VEX/EVEX, and a ModRM
//! that names a register instead of memory (that instruction cannot have
//! touched MMIO).

use core::fmt;

use crate::access::Gpr;

use super::walk::MAX_INSTRUCTION_LEN;

/// The default operand and address size of the code being run (CS.L,
/// CS.D, SDM Vol. 3A, 3.4.5; real and virtual-8086 mode are 16-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSize {
    /// 16-bit code.
    Bits16,
    /// 32-bit code (and compatibility mode with CS.D set).
    Bits32,
    /// 64-bit mode.
    Bits64,
}

/// A register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// The register.
    pub gpr: Gpr,
    /// AH, CH, DH or BH: bits 15:8 of RAX..RBX (byte operands without a
    /// REX prefix, register numbers 4 to 7).
    pub high_byte: bool,
}

/// How a load widens the value read into its register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// Zero-extended (MOV, MOVZX).
    Zero,
    /// Sign-extended (MOVSX).
    Sign,
}

/// What the instruction does with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Writes the low bytes of a register (or AH..BH) to memory.
    Store(Register),
    /// Writes an immediate (already sign-extended where the instruction
    /// does so) to memory.
    StoreImmediate(u64),
    /// Reads memory into a register.
    Load {
        /// The destination.
        dst: Register,
        /// How many bytes of the register the instruction writes: 1, 2, 4
        /// or 8 (4 zero-extends to all 64 bits, 1 and 2 keep the rest).
        width: u8,
        /// How the value read is widened to `width`.
        extension: Extension,
    },
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Its length in bytes, prefixes included.
    pub len: u8,
    /// The width of the memory access in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// What it does.
    pub operation: Operation,
}

impl Instruction {
    /// Whether it writes memory.
    pub fn writes(&self) -> bool {
        !matches!(self.operation, Operation::Load { .. })
    }
}

/// An opcode, for reports: one or two bytes and, for a group opcode, the
/// ModRM.reg extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opcode {
    /// After the 0F escape.
    pub two_byte: bool,
    /// The opcode byte.
    pub byte: u8,
    /// The `/digit` of a group opcode.
    pub extension: Option<u8>,
}

impl fmt::Display for Opcode {
    /// `0f 11`, `c7 /1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.two_byte {
            f.write_str("0f ")?;
        }
        write!(f, "{:02x}", self.byte)?;
        if let Some(digit) = self.extension {
            write!(f, " /{digit}")?;
        }
        Ok(())
    }
}

/// Why bytes were not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// An opcode that is not one of the MOVs above.
    UnsupportedOpcode(Opcode),
    /// A prefix that changes what a MOV means or makes it invalid (F0
    /// LOCK, F2, F3).
    UnsupportedPrefix(u8),
    /// ModRM names a register, not memory.
    RegisterOperand,
    /// The bytes ran out before the instruction ended (the rest could not
    /// be fetched).
    Truncated,
    /// More than 15 bytes (#GP on hardware).
    TooLong,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedOpcode(op) => write!(
                f,
                "opcode {op} is not emulated (only MOV, MOVZX and MOVSX to or from memory are)"
            ),
            Self::UnsupportedPrefix(p) => write!(f, "prefix {p:02x} is not emulated"),
            Self::RegisterOperand => {
                f.write_str("its ModRM names a register, so it cannot access memory")
            }
            Self::Truncated => {
                f.write_str("the instruction runs past the bytes that could be read")
            }
            Self::TooLong => f.write_str("the instruction is longer than 15 bytes"),
        }
    }
}

/// The instruction bytes, at most 15 of them used.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_INSTRUCTION_LEN {
            return Err(DecodeError::TooLong);
        }
        let byte = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos = self.pos.saturating_add(1);
        Ok(byte)
    }

    /// A little-endian value of `n` (at most 8) bytes.
    fn value(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..u32::from(n.min(8)) {
            value |= u64::from(self.next()?).wrapping_shl(i.wrapping_mul(8));
        }
        Ok(value)
    }
}

/// The address size, which decides the ModRM form and the length of a
/// direct offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressSize {
    A16,
    A32,
    A64,
}

/// The REX prefix's bits (SDM Vol. 2A, 2.2.1).
#[derive(Clone, Copy, Debug, Default)]
struct Rex {
    present: bool,
    w: bool,
    r: bool,
}

impl Rex {
    fn from_byte(b: u8) -> Self {
        Self {
            present: true,
            w: b & 0b1000 != 0,
            r: b & 0b0100 != 0,
        }
    }
}

/// The register with encoding `n` (masked to 4 bits, so always one).
fn gpr(n: u8) -> Gpr {
    Gpr::from_number(n & 0xF).unwrap_or(Gpr::Rax)
}

/// The register operand `reg` (0..=7, before REX.R) of a `byte`-wide
/// instruction: without any REX prefix, byte registers 4 to 7 are AH, CH,
/// DH and BH; with one they are SPL, BPL, SIL and DIL (SDM Vol. 2A,
/// 3.1.1.1, Table 3-1).
fn register(reg: u8, rex: Rex, byte: bool) -> Register {
    let reg = reg & 7;
    if byte && !rex.present && reg >= 4 {
        return Register {
            gpr: gpr(reg & 3),
            high_byte: true,
        };
    }
    Register {
        gpr: gpr(reg | if rex.r { 8 } else { 0 }),
        high_byte: false,
    }
}

/// Parses a ModRM byte and whatever SIB and displacement follow it
/// (SDM Vol. 2A, 2.1.5, Tables 2-1 to 2-3); returns ModRM.reg. RIP-relative
/// addressing (mod 00, r/m 101 in 64-bit mode) has the same shape as the
/// 32-bit absolute form: a 4-byte displacement.
fn modrm(cur: &mut Cursor<'_>, address: AddressSize) -> Result<u8, DecodeError> {
    let m = cur.next()?;
    let md = m >> 6;
    let reg = (m >> 3) & 7;
    let rm = m & 7;
    if md == 3 {
        return Err(DecodeError::RegisterOperand);
    }
    let displacement = match address {
        AddressSize::A16 => match (md, rm) {
            (0, 6) | (2, _) => 2,
            (0, _) => 0,
            _ => 1,
        },
        AddressSize::A32 | AddressSize::A64 => {
            // SIB.base 101 with mod 00 means "no base, disp32", whatever
            // REX.B says.
            let base = if rm == 4 { cur.next()? & 7 } else { rm };
            match (md, base) {
                (0, 5) | (2, _) => 4,
                (0, _) => 0,
                _ => 1,
            }
        }
    };
    cur.value(displacement)?;
    Ok(reg)
}

/// Decodes the instruction at the start of `bytes` (only the first 15
/// count) run as `code`.
pub fn decode(bytes: &[u8], code: CodeSize) -> Result<Instruction, DecodeError> {
    let mut cur = Cursor { bytes, pos: 0 };
    let mut operand_prefix = false;
    let mut address_prefix = false;
    let mut rex = Rex::default();
    let opcode = loop {
        let b = cur.next()?;
        match b {
            0x66 => operand_prefix = true,
            0x67 => address_prefix = true,
            // ES, CS, SS, DS, FS, GS overrides: the exit gives the address.
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
            0xF0 | 0xF2 | 0xF3 => return Err(DecodeError::UnsupportedPrefix(b)),
            0x40..=0x4F if code == CodeSize::Bits64 => {
                rex = Rex::from_byte(b);
                continue;
            }
            _ => break b,
        }
        // A REX prefix counts only right before the opcode (SDM Vol. 2A,
        // 2.2.1): a legacy prefix after it cancels it.
        rex = Rex::default();
    };
    let operand: u8 = if rex.w {
        8
    } else {
        match (code, operand_prefix) {
            (CodeSize::Bits16, false) | (CodeSize::Bits32 | CodeSize::Bits64, true) => 2,
            _ => 4,
        }
    };
    let address = match (code, address_prefix) {
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) => AddressSize::A16,
        (CodeSize::Bits16, true) | (CodeSize::Bits32, false) | (CodeSize::Bits64, true) => {
            AddressSize::A32
        }
        (CodeSize::Bits64, false) => AddressSize::A64,
    };
    let unsupported = |two_byte, byte, extension| {
        DecodeError::UnsupportedOpcode(Opcode {
            two_byte,
            byte,
            extension,
        })
    };
    let (size, operation) = match opcode {
        0x88 | 0x89 => {
            let size = if opcode == 0x88 { 1 } else { operand };
            let reg = modrm(&mut cur, address)?;
            (size, Operation::Store(register(reg, rex, size == 1)))
        }
        0x8A | 0x8B => {
            let size = if opcode == 0x8A { 1 } else { operand };
            let reg = modrm(&mut cur, address)?;
            let dst = register(reg, rex, size == 1);
            (
                size,
                Operation::Load {
                    dst,
                    width: size,
                    extension: Extension::Zero,
                },
            )
        }
        0xC6 | 0xC7 => {
            let size = if opcode == 0xC6 { 1 } else { operand };
            let reg = modrm(&mut cur, address)?;
            if reg != 0 {
                return Err(unsupported(false, opcode, Some(reg)));
            }
            // The immediate is at most 4 bytes; with REX.W it is
            // sign-extended to 64 bits.
            let imm = cur.value(size.min(4))?;
            let imm = if size == 8 {
                imm as u32 as i32 as i64 as u64
            } else {
                imm
            };
            (size, Operation::StoreImmediate(imm))
        }
        0xA0..=0xA3 => {
            // MOV AL/rAX to or from a direct offset as wide as the address.
            cur.value(match address {
                AddressSize::A16 => 2,
                AddressSize::A32 => 4,
                AddressSize::A64 => 8,
            })?;
            let size = if opcode & 1 == 0 { 1 } else { operand };
            let rax = Register {
                gpr: Gpr::Rax,
                high_byte: false,
            };
            let operation = if opcode < 0xA2 {
                Operation::Load {
                    dst: rax,
                    width: size,
                    extension: Extension::Zero,
                }
            } else {
                Operation::Store(rax)
            };
            (size, operation)
        }
        0x0F => {
            let second = cur.next()?;
            let (size, extension) = match second {
                0xB6 => (1, Extension::Zero),
                0xB7 => (2, Extension::Zero),
                0xBE => (1, Extension::Sign),
                0xBF => (2, Extension::Sign),
                _ => return Err(unsupported(true, second, None)),
            };
            let reg = modrm(&mut cur, address)?;
            (
                size,
                Operation::Load {
                    dst: register(reg, rex, false),
                    width: operand,
                    extension,
                },
            )
        }
        _ => return Err(unsupported(false, opcode, None)),
    };
    Ok(Instruction {
        // At most 15: `Cursor::next` refuses a 16th byte.
        len: u8::try_from(cur.pos).map_err(|_| DecodeError::TooLong)?,
        size,
        operation,
    })
}
