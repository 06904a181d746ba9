//! MMIO emulation: a guest read or write of a guest-physical page that has
//! no RAM behind it but that a device on the VM's bus claims exits as a
//! nested page fault, and this module carries out the one instruction that
//! made it.
//!
//! The instruction is fetched at RIP through the guest's own paging
//! ([`walk`]), decoded ([`decode`]: the MOV forms compilers use for device
//! registers), performed on the bus at the guest-physical address the
//! exit reports, and RIP is moved past it. Vendor-neutral: it reaches the
//! vCPU only through [`VcpuAccess`], and a fault's address and direction
//! are all it needs of the backend's exit information (VT-x does not report
//! an instruction length for EPT violations; SVM's decode assist is not
//! relied on).
//!
//! Limits: the access is made at the reported address, so one that
//! straddles a RAM page and an MMIO page is made from the faulting byte
//! on; a not-present guest page at RIP stops the guest instead of
//! injecting #PF; single-step traps (RFLAGS.TF) after the emulated
//! instruction are not delivered.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod decode;
pub mod walk;

use core::fmt;

use addr::GuestPhysAddr;

use self::decode::{decode, CodeSize, DecodeError, Extension, Instruction, Operation, Register};
use self::walk::{fetch, FetchError, Fetched, GuestRam, Paging, MAX_INSTRUCTION_LEN};
use super::access::{Segment, VcpuAccess, SEGMENT_L};
use super::exit::{NestedFault, Platform};
use super::vm::VmDevices;

/// IA32_EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS.VM: virtual-8086 mode.
const RFLAGS_VM: u64 = 1 << 17;
/// Segment attribute D/B: 32-bit code segment.
const SEGMENT_D: u32 = 1 << 14;

/// What [`emulate_mmio`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOutcome {
    /// The access went to a device, the register was written and RIP
    /// moved past the instruction: resume the guest.
    Emulated,
    /// No device claims any byte of the access. Nothing was changed; the
    /// caller treats it as the memory fault it would be without MMIO.
    Unclaimed,
}

/// The instruction bytes a report shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstructionBytes {
    bytes: [u8; MAX_INSTRUCTION_LEN],
    len: u8,
}

impl InstructionBytes {
    /// The first 15 bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        // One copy: a byte at a time, with the count kept in a u8, this
        // was about 150 instructions of every MMIO exit (a Bochs trace of
        // a local APIC EOI).
        let mut out = Self::default();
        let n = bytes.len().min(MAX_INSTRUCTION_LEN);
        if let (Some(dst), Some(src)) = (out.bytes.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
            out.len = n as u8;
        }
        out
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl fmt::Display for InstructionBytes {
    /// `0f 11 07`, lower-case hex separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_slice().iter().enumerate() {
            if i != 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why an MMIO access was not emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The instruction bytes at RIP could not be read.
    Fetch(FetchError),
    /// They are not an instruction Ferrovisor emulates.
    Decode(DecodeError),
    /// They decode, but to an access in the other direction than the one
    /// that faulted: the code or its mapping changed under the vCPU, or
    /// the fault was the CPU's own access (a page-table walk into MMIO).
    DirectionMismatch {
        /// Whether the decoded instruction writes.
        decoded_write: bool,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fetch(e) => write!(f, "cannot read the instruction: {e}"),
            Self::Decode(e) => e.fmt(f),
            Self::DirectionMismatch { decoded_write } => {
                let (does, fault) = if *decoded_write {
                    ("writes", "a read")
                } else {
                    ("reads", "a write")
                };
                write!(f, "the instruction {does} memory but the fault was {fault}")
            }
        }
    }
}

/// An MMIO access that was not emulated, as the guest's stop reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotEmulated {
    /// The guest-physical address accessed.
    pub gpa: GuestPhysAddr,
    /// Whether the access was a write.
    pub write: bool,
    /// RIP of the instruction.
    pub rip: u64,
    /// The bytes read at RIP (none when they could not be read).
    pub bytes: InstructionBytes,
    /// Why.
    pub why: Refusal,
}

impl fmt::Display for NotEmulated {
    /// `MMIO write at guest-physical 0xfee000b0 by an instruction
    /// Ferrovisor does not emulate, at RIP 0x1000: 0f 11 00 ... (opcode 0f
    /// 11 is not emulated ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = if self.write { "write" } else { "read" };
        let (gpa, rip) = (self.gpa, self.rip);
        match self.why {
            Refusal::Fetch(_) if self.bytes.as_slice().is_empty() => write!(
                f,
                "MMIO {access} at guest-physical {gpa} at RIP {rip:#x}: {}",
                self.why
            ),
            // Some bytes were read, but the instruction runs on into a
            // page that could not be.
            Refusal::Fetch(_) => write!(
                f,
                "MMIO {access} at guest-physical {gpa} at RIP {rip:#x}: {} ({})",
                self.bytes, self.why
            ),
            _ => write!(
                f,
                "MMIO {access} at guest-physical {gpa} by an instruction Ferrovisor does not \
                 emulate, at RIP {rip:#x}: {} ({})",
                self.bytes, self.why
            ),
        }
    }
}

/// Why [`emulate_mmio`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmioError<E> {
    /// The backend failed to read or change the vCPU (a hypervisor bug).
    Backend(E),
    /// The guest's instruction could not be emulated: stop the guest with
    /// this report.
    NotEmulated(NotEmulated),
}

impl<E> From<E> for MmioError<E> {
    fn from(e: E) -> Self {
        Self::Backend(e)
    }
}

/// The default operand and address size of the code the vCPU runs.
fn code_size<B: VcpuAccess>(vcpu: &B, cs_attributes: u32) -> Result<CodeSize, B::Error> {
    Ok(
        if vcpu.efer()? & EFER_LMA != 0 && cs_attributes & SEGMENT_L != 0 {
            CodeSize::Bits64
        } else if vcpu.rflags()? & RFLAGS_VM != 0 || cs_attributes & SEGMENT_D == 0 {
            // Real mode (CS.D is clear after reset) and virtual-8086 mode.
            CodeSize::Bits16
        } else {
            CodeSize::Bits32
        },
    )
}

/// The instruction at RIP and its bytes, or the bytes read and why they
/// are not emulated.
type Decoded = Result<(Instruction, InstructionBytes), (InstructionBytes, Refusal)>;

/// The instruction bytes at the vCPU's RIP, fetched through the guest's
/// own paging (CS.base + EIP outside 64-bit mode), and the code size they
/// run at; `Ok(Err(_))` when not even the first byte can be read.
///
/// For a backend that must work out an instruction's length itself (SVM
/// on a CPU without NRIP save or decode assists reports neither): it
/// decodes no more than it needs from these bytes.
pub fn fetch_at_rip<B: VcpuAccess, R: GuestRam + ?Sized>(
    vcpu: &B,
    ram: &R,
) -> Result<Result<(Fetched, CodeSize), FetchError>, B::Error> {
    let rip = vcpu.rip()?;
    let cs = vcpu.segment(Segment::Cs)?;
    let code = code_size(vcpu, cs.attributes)?;
    Ok(fetch_code(vcpu, ram, rip, code, cs.base)?.map(|fetched| (fetched, code)))
}

/// The bytes at `rip` in code of size `code` whose CS base is `cs_base`.
fn fetch_code<B: VcpuAccess, R: GuestRam + ?Sized>(
    vcpu: &B,
    ram: &R,
    rip: u64,
    code: CodeSize,
    cs_base: u64,
) -> Result<Result<Fetched, FetchError>, B::Error> {
    let paging = Paging {
        cr0: vcpu.cr0()?,
        cr3: vcpu.cr3()?,
        cr4: vcpu.cr4()?,
        efer: vcpu.efer()?,
    };
    let long = code == CodeSize::Bits64;
    Ok(fetch(ram, &paging, cs_base, rip, long))
}

/// Fetches and decodes the instruction at RIP.
fn instruction_at<B: VcpuAccess, P: Platform>(
    vcpu: &B,
    platform: &P,
    rip: u64,
    code: CodeSize,
    cs_base: u64,
) -> Result<Decoded, B::Error> {
    let fetched = match fetch_code(vcpu, platform, rip, code, cs_base)? {
        Ok(fetched) => fetched,
        Err(e) => return Ok(Err((InstructionBytes::default(), Refusal::Fetch(e)))),
    };
    let bytes = InstructionBytes::new(fetched.as_slice());
    Ok(match decode(fetched.as_slice(), code) {
        Ok(insn) => Ok((insn, bytes)),
        // The bytes ran out where a page could not be read: say why.
        Err(DecodeError::Truncated) => Err((
            bytes,
            fetched
                .short
                .map_or(Refusal::Decode(DecodeError::Truncated), Refusal::Fetch),
        )),
        Err(e) => Err((bytes, Refusal::Decode(e))),
    })
}

/// The low `size` bytes of `value`, sign-extended to 64 bits.
fn sign_extend(value: u64, size: u8) -> u64 {
    let shift = 64u32.saturating_sub(u32::from(size).saturating_mul(8));
    (value.wrapping_shl(shift) as i64).wrapping_shr(shift) as u64
}

/// All ones in the low `width` bytes.
fn mask(width: u8) -> u64 {
    devices::bus::all_ones(width)
}

/// `old` with `value` written as a `width`-byte register operand `dst`
/// writes it: a 4-byte write zero-extends to 64 bits, 1- and 2-byte writes
/// (and AH..BH) keep the other bits (SDM Vol. 1, 3.4.1.1).
fn merge(old: u64, value: u64, dst: Register, width: u8) -> u64 {
    if dst.high_byte {
        return (old & !0xFF00) | ((value & 0xFF) << 8);
    }
    match width {
        1 | 2 => (old & !mask(width)) | (value & mask(width)),
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}

/// Where an emulated MMIO access goes: a VM's device bus, or a vCPU's view
/// of it (its own local APIC page in front of the bus).
pub trait MmioSpace {
    /// The guest reads `size` bytes at `gpa` at TSC `now`: `None` when
    /// nothing claims it.
    fn mmio_read(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u64>;
    /// The guest writes `value` at `gpa`: false when nothing claims it.
    fn mmio_write(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        value: u64,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> bool;
}

impl MmioSpace for VmDevices {
    fn mmio_read(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u64> {
        VmDevices::mmio_read(self, gpa, size, now, sink)
    }

    fn mmio_write(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        value: u64,
        now: u64,
        sink: &mut dyn FnMut(&str),
    ) -> bool {
        VmDevices::mmio_write(self, gpa, size, value, now, sink)
    }
}

/// Emulates the instruction at RIP that made the MMIO access `fault`: the
/// access goes to `vm` (the bus, or the vCPU's local APIC), a load's register is written, and RIP moves
/// past the instruction (an STI or MOV SS shadow it was in ends with it).
/// Outside 64-bit mode RIP wraps at 4 GiB.
///
/// `Ok(Unclaimed)` when no device claims the access (nothing changed);
/// [`MmioError::NotEmulated`] when the instruction cannot be read or is not
/// one that is emulated (nothing changed either).
pub fn emulate_mmio<B: VcpuAccess, P: Platform, S: MmioSpace + ?Sized>(
    vcpu: &mut B,
    vm: &mut S,
    platform: &mut P,
    fault: &NestedFault,
) -> Result<MmioOutcome, MmioError<B::Error>> {
    let rip = vcpu.rip()?;
    let cs = vcpu.segment(Segment::Cs)?;
    let code = code_size(vcpu, cs.attributes)?;
    let refuse = |bytes, why| {
        MmioError::NotEmulated(NotEmulated {
            gpa: fault.gpa,
            write: fault.write,
            rip,
            bytes,
            why,
        })
    };
    let (insn, bytes) = match instruction_at(vcpu, platform, rip, code, cs.base)? {
        Ok(decoded) => decoded,
        Err((bytes, why)) => return Err(refuse(bytes, why)),
    };
    if insn.writes() != fault.write {
        return Err(refuse(
            bytes,
            Refusal::DirectionMismatch {
                decoded_write: insn.writes(),
            },
        ));
    }
    let now = platform.now();
    let mut sink = |line: &str| platform.guest_line(line);
    match insn.operation {
        Operation::Store(src) => {
            let value = vcpu.gpr(src.gpr)?;
            let value = if src.high_byte { value >> 8 } else { value };
            if !vm.mmio_write(fault.gpa, insn.size, value, now, &mut sink) {
                return Ok(MmioOutcome::Unclaimed);
            }
        }
        Operation::StoreImmediate(value) => {
            if !vm.mmio_write(fault.gpa, insn.size, value, now, &mut sink) {
                return Ok(MmioOutcome::Unclaimed);
            }
        }
        Operation::Load {
            dst,
            width,
            extension,
        } => {
            let Some(value) = vm.mmio_read(fault.gpa, insn.size, now, &mut sink) else {
                return Ok(MmioOutcome::Unclaimed);
            };
            let value = match extension {
                Extension::Zero => value,
                Extension::Sign => sign_extend(value, insn.size),
            };
            let old = vcpu.gpr(dst.gpr)?;
            vcpu.set_gpr(dst.gpr, merge(old, value, dst, width))?;
        }
    }
    let next = rip.wrapping_add(u64::from(insn.len));
    let next = if code == CodeSize::Bits64 {
        next
    } else {
        next & 0xFFFF_FFFF
    };
    vcpu.set_rip(next)?;
    // The instruction completed: a shadow it ran in is over (SDM Vol. 3C,
    // 27.3.1.5, as for any instruction a handler skips).
    vcpu.clear_interrupt_shadow()?;
    Ok(MmioOutcome::Emulated)
}

#[cfg(test)]
mod tests;
