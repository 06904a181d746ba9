//! The VT-x backend's decisions, host-tested: exits decoded from the VMCS
//! into the vendor-neutral [`Exit`], the vCPU's state behind
//! [`VcpuAccess`] over a VMCS and the saved GPRs, the initial VMCS
//! contents (`setup`) and the MSR bitmap. Together with the kernel binary's
//! `vtx` module (`kernel/src/vtx`: VMXON, frames, the VMX instructions),
//! this is the only code that names VT-x: everything above it sees [`Exit`] and [`VcpuAccess`].
//!
//! An AMD SVM backend will sit beside it with the same two jobs: decode
//! its exits into [`Exit`] and implement [`VcpuAccess`] over its VMCB.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::string::ToString;
use core::fmt;

use addr::GuestPhysAddr;
use vmx::bitmaps::{MsrAccess, MsrBitmap};
use vmx::caps::FixedBits;
use vmx::error::VmFail;
use vmx::exit::{
    CrAccess as VmxCrAccess, CrAccessType, EntryFailure, EptViolation, ExitInfo, ExitReason,
    InterruptionInfo, IoDirection as VmxIoDirection, IoQualification,
};
use vmx::regs::GuestRegisters;
use vmx::vmcs::{
    Control32, Control64, ControlNatural, Guest16, Guest32, Guest64, GuestNatural, ReadOnly32,
    ReadOnly64, ReadOnlyNatural, VmcsAccess,
};

use vcpu::access::{Event, Gpr, Segment, SegmentState, VcpuAccess};
use vcpu::exit::{AddressSize, CrAccess, CrAccessKind, Exit, IoAccess, IoDirection, NestedFault};
use vcpu::msr::{IA32_EFER, IA32_TIME_STAMP_COUNTER, SWITCHED_MSRS, VMCS_MSRS};

pub mod capacity;
pub mod setup;

/// CR0.PE and CR0.PG, which unrestricted guest leaves to the guest.
const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
/// CR0.NW and CR0.CD: caching, which the host and its guests share.
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
/// CR4.VMXE: VT-x is hidden from guests.
const CR4_VMXE: u64 = 1 << 13;
/// IA32_EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// "IA-32e mode guest" in the VM-entry controls.
const ENTRY_IA32E: u32 = 1 << 9;
/// "Interrupt-window exiting" in the primary processor-based controls.
const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
/// Interruptibility state: blocking by STI (bit 0) and by MOV SS (bit 1).
const SHADOW: u32 = 0b11;
/// Interruptibility state: blocking by NMI (bit 3, SDM Vol. 3C, 25.4.2).
const BLOCKING_BY_NMI: u32 = 1 << 3;
/// RFLAGS.RF: resume flag.
const RFLAGS_RF: u64 = 1 << 16;

/// Whether exception `vector` is a fault (SDM Vol. 3A, 6.15, Table 6-1):
/// reported at the instruction that caused it, which is restarted. #DB
/// (1) is left out: it is a trap as well, and an instruction-breakpoint
/// fault pushes RF = 0 (SDM Vol. 3A, 17.3.1.1).
pub const fn is_fault(vector: u8) -> bool {
    matches!(
        vector,
        0 | 5 | 6 | 7 | 10 | 11 | 12 | 13 | 14 | 16 | 17 | 19 | 20 | 21
    )
}

/// The CR0 and CR4 bits VMX operation fixes on this CPU, and what follows
/// from them for a guest: which bits the host owns (guest/host masks) and
/// what the hardware runs with for a guest value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrPolicy {
    /// CR0 bits VMX operation fixes.
    pub cr0_fixed: FixedBits,
    /// CR4 bits VMX operation fixes.
    pub cr4_fixed: FixedBits,
}

impl CrPolicy {
    /// The CR0 bits the host owns: those VMX fixes, except PE and PG, which
    /// unrestricted guest leaves to the guest; and CD and NW, which VM
    /// entries and exits never load (SDM Vol. 3C, 27.3.2.1 and 28.5.1), so
    /// the processor's are the host's: the guest reads its own from the
    /// read shadow (caching off at reset, on after firmware) and a MOV that
    /// changes them exits, whatever the host runs with.
    pub fn cr0_host_mask(&self) -> u64 {
        ((self.cr0_fixed.must_be_one() | self.cr0_fixed.must_be_zero()) & !(CR0_PE | CR0_PG)
            | CR0_CD
            | CR0_NW)
            & 0xFFFF_FFFF
    }

    /// The CR4 bits the host owns: those VMX fixes (VMXE among them).
    pub fn cr4_host_mask(&self) -> u64 {
        (self.cr4_fixed.must_be_one() | self.cr4_fixed.must_be_zero()) & 0xFFFF_FFFF
    }

    /// The CR0 value the hardware runs with for a guest value `guest`.
    pub fn cr0_for_hardware(&self, guest: u64) -> u64 {
        guest | (self.cr0_fixed.must_be_one() & !(CR0_PE | CR0_PG))
    }

    /// The CR4 value the hardware runs with for a guest value `guest`.
    pub fn cr4_for_hardware(&self, guest: u64) -> u64 {
        guest | self.cr4_fixed.must_be_one()
    }
}

/// A VMREAD or VMWRITE that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsError(pub VmFail);

impl fmt::Display for VmcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VMCS access failed: {}", self.0)
    }
}

impl From<VmFail> for VmcsError {
    fn from(e: VmFail) -> Self {
        Self(e)
    }
}

/// A vCPU that has exited, seen through its VMCS (current on this CPU)
/// and the GPRs the exit path saved.
pub struct VmxVcpu<'a, V: VmcsAccess> {
    /// The current VMCS.
    pub vmcs: &'a mut V,
    /// Every GPR but RSP (which the VMCS holds).
    pub regs: &'a mut GuestRegisters,
    /// The CPU's fixed CR bits.
    pub cr: &'a CrPolicy,
    /// A CR2 value a handler set (for a #PF it injects): the caller
    /// loads it into the CPU's CR2 before the next entry.
    pub cr2: Option<u64>,
}

/// The VMCS fields of one segment register.
fn segment_fields(seg: Segment) -> (Guest16, GuestNatural, Guest32, Guest32) {
    match seg {
        Segment::Es => (
            Guest16::EsSelector,
            GuestNatural::EsBase,
            Guest32::EsLimit,
            Guest32::EsAccessRights,
        ),
        Segment::Cs => (
            Guest16::CsSelector,
            GuestNatural::CsBase,
            Guest32::CsLimit,
            Guest32::CsAccessRights,
        ),
        Segment::Ss => (
            Guest16::SsSelector,
            GuestNatural::SsBase,
            Guest32::SsLimit,
            Guest32::SsAccessRights,
        ),
        Segment::Ds => (
            Guest16::DsSelector,
            GuestNatural::DsBase,
            Guest32::DsLimit,
            Guest32::DsAccessRights,
        ),
        Segment::Fs => (
            Guest16::FsSelector,
            GuestNatural::FsBase,
            Guest32::FsLimit,
            Guest32::FsAccessRights,
        ),
        Segment::Gs => (
            Guest16::GsSelector,
            GuestNatural::GsBase,
            Guest32::GsLimit,
            Guest32::GsAccessRights,
        ),
        Segment::Ldtr => (
            Guest16::LdtrSelector,
            GuestNatural::LdtrBase,
            Guest32::LdtrLimit,
            Guest32::LdtrAccessRights,
        ),
        Segment::Tr => (
            Guest16::TrSelector,
            GuestNatural::TrBase,
            Guest32::TrLimit,
            Guest32::TrAccessRights,
        ),
    }
}

/// The VMX numbering of a neutral GPR (the same numbers).
#[inline(always)]
fn vmx_gpr(reg: Gpr) -> vmx::exit::Gpr {
    match reg {
        Gpr::Rax => vmx::exit::Gpr::Rax,
        Gpr::Rcx => vmx::exit::Gpr::Rcx,
        Gpr::Rdx => vmx::exit::Gpr::Rdx,
        Gpr::Rbx => vmx::exit::Gpr::Rbx,
        Gpr::Rsp => vmx::exit::Gpr::Rsp,
        Gpr::Rbp => vmx::exit::Gpr::Rbp,
        Gpr::Rsi => vmx::exit::Gpr::Rsi,
        Gpr::Rdi => vmx::exit::Gpr::Rdi,
        Gpr::R8 => vmx::exit::Gpr::R8,
        Gpr::R9 => vmx::exit::Gpr::R9,
        Gpr::R10 => vmx::exit::Gpr::R10,
        Gpr::R11 => vmx::exit::Gpr::R11,
        Gpr::R12 => vmx::exit::Gpr::R12,
        Gpr::R13 => vmx::exit::Gpr::R13,
        Gpr::R14 => vmx::exit::Gpr::R14,
        Gpr::R15 => vmx::exit::Gpr::R15,
    }
}

/// The neutral name of a VMX-numbered GPR.
fn neutral_gpr(reg: vmx::exit::Gpr) -> Gpr {
    Gpr::from_number(reg.number()).unwrap_or(Gpr::Rax)
}

impl<V: VmcsAccess> VcpuAccess for VmxVcpu<'_, V> {
    type Error = VmcsError;

    #[inline(always)]
    fn gpr(&self, reg: Gpr) -> Result<u64, VmcsError> {
        match self.regs.get(vmx_gpr(reg)) {
            Some(value) => Ok(value),
            None => Ok(self.vmcs.read(GuestNatural::Rsp)?),
        }
    }

    #[inline(always)]
    fn set_gpr(&mut self, reg: Gpr, value: u64) -> Result<(), VmcsError> {
        if !self.regs.set(vmx_gpr(reg), value) {
            self.vmcs.write(GuestNatural::Rsp, value)?;
        }
        Ok(())
    }

    fn rip(&self) -> Result<u64, VmcsError> {
        Ok(self.vmcs.read(GuestNatural::Rip)?)
    }

    fn set_rip(&mut self, value: u64) -> Result<(), VmcsError> {
        Ok(self.vmcs.write(GuestNatural::Rip, value)?)
    }

    fn rflags(&self) -> Result<u64, VmcsError> {
        Ok(self.vmcs.read(GuestNatural::Rflags)?)
    }

    /// SDM Vol. 3C, 27.3.1.5: "blocking by STI" and "by MOV SS" must be
    /// clear when the instruction is skipped.
    #[inline]
    fn skip_instruction(&mut self) -> Result<(), VmcsError> {
        let len = self.vmcs.read(ReadOnly32::ExitInstructionLength)?;
        let rip = self.vmcs.read(GuestNatural::Rip)?;
        let mut next = rip.wrapping_add(u64::from(len));
        // Outside 64-bit mode EIP wraps at 4 GiB; asking the mode only when
        // that can matter keeps the common path to three VMCS accesses.
        if next > u64::from(u32::MAX) && !self.long_mode()? {
            next &= 0xFFFF_FFFF;
        }
        self.vmcs.write(GuestNatural::Rip, next)?;
        self.clear_interrupt_shadow()
    }

    /// SDM Vol. 3C, 27.3.1.5, as for [`VcpuAccess::skip_instruction`].
    #[inline]
    fn clear_interrupt_shadow(&mut self) -> Result<(), VmcsError> {
        let interruptibility = self.vmcs.read(Guest32::InterruptibilityState)?;
        if interruptibility & SHADOW != 0 {
            self.vmcs
                .write(Guest32::InterruptibilityState, interruptibility & !SHADOW)?;
        }
        Ok(())
    }

    fn cr0(&self) -> Result<u64, VmcsError> {
        let mask = self.cr.cr0_host_mask();
        let real = self.vmcs.read(GuestNatural::Cr0)?;
        let shadow = self.vmcs.read(ControlNatural::Cr0ReadShadow)?;
        Ok((real & !mask) | (shadow & mask))
    }

    fn cr3(&self) -> Result<u64, VmcsError> {
        Ok(self.vmcs.read(GuestNatural::Cr3)?)
    }

    #[inline]
    fn cr4(&self) -> Result<u64, VmcsError> {
        let mask = self.cr.cr4_host_mask();
        let real = self.vmcs.read(GuestNatural::Cr4)?;
        let shadow = self.vmcs.read(ControlNatural::Cr4ReadShadow)?;
        Ok((real & !mask) | (shadow & mask))
    }

    /// Bits the host does not own are in the hardware CR4 as the guest
    /// set them: one VMREAD.
    #[inline]
    fn cr4_bits(&self, bits: u64) -> Result<u64, VmcsError> {
        // Bits the guest may never set read 0 whatever the hardware runs
        // with; the rest, where the host does not own them, are in CR4.
        let bits = bits & !self.cr4_forbidden();
        if bits & self.cr.cr4_host_mask() == 0 {
            Ok(self.vmcs.read(GuestNatural::Cr4)? & bits)
        } else {
            Ok(self.cr4()? & bits)
        }
    }

    fn efer(&self) -> Result<u64, VmcsError> {
        Ok(self.vmcs.read(Guest64::Efer)?)
    }

    fn set_cr0(&mut self, value: u64) -> Result<(), VmcsError> {
        self.vmcs.write(ControlNatural::Cr0ReadShadow, value)?;
        self.vmcs
            .write(GuestNatural::Cr0, self.cr.cr0_for_hardware(value))?;
        Ok(())
    }

    fn set_cr4(&mut self, value: u64) -> Result<(), VmcsError> {
        self.vmcs.write(ControlNatural::Cr4ReadShadow, value)?;
        self.vmcs
            .write(GuestNatural::Cr4, self.cr.cr4_for_hardware(value))?;
        Ok(())
    }

    fn set_cr3(&mut self, value: u64) -> Result<(), VmcsError> {
        Ok(self.vmcs.write(GuestNatural::Cr3, value)?)
    }

    /// With EPT, VM entry loads a PAE-paging guest's PDPTEs from these
    /// fields (SDM Vol. 3C, 27.3.2.4), and VM exit stores them.
    fn set_pdptes(&mut self, pdptes: [u64; 4]) -> Result<(), VmcsError> {
        let [p0, p1, p2, p3] = pdptes;
        self.vmcs.write(Guest64::Pdpte0, p0)?;
        self.vmcs.write(Guest64::Pdpte1, p1)?;
        self.vmcs.write(Guest64::Pdpte2, p2)?;
        self.vmcs.write(Guest64::Pdpte3, p3)?;
        Ok(())
    }

    /// VM entry's "IA-32e mode guest" must equal EFER.LMA (SDM Vol. 3C,
    /// 27.3.1.1), so it follows (VM exits store LMA into it themselves
    /// when the guest switched modes without an exit).
    fn set_efer(&mut self, value: u64) -> Result<(), VmcsError> {
        let entry = self.vmcs.read(Control32::EntryControls)?;
        let wanted = if value & EFER_LMA != 0 {
            entry | ENTRY_IA32E
        } else {
            entry & !ENTRY_IA32E
        };
        if wanted != entry {
            self.vmcs.write(Control32::EntryControls, wanted)?;
        }
        self.vmcs.write(Guest64::Efer, value)?;
        Ok(())
    }

    fn cr4_forbidden(&self) -> u64 {
        CR4_VMXE | self.cr.cr4_fixed.must_be_zero()
    }

    fn segment_attributes(&self, seg: Segment) -> Result<u32, VmcsError> {
        let (_, _, _, access) = segment_fields(seg);
        Ok(self.vmcs.read(access)?)
    }

    fn segment(&self, seg: Segment) -> Result<SegmentState, VmcsError> {
        let (selector, base, limit, access) = segment_fields(seg);
        Ok(SegmentState {
            selector: self.vmcs.read(selector)?,
            base: self.vmcs.read(base)?,
            limit: self.vmcs.read(limit)?,
            attributes: self.vmcs.read(access)?,
        })
    }

    /// Kept for the caller, which loads it into CR2 before the next
    /// entry: CR2 is not in the VMCS's guest-state area (SDM Vol. 3C,
    /// 25.4.1), so the guest's lives in the CPU's while it runs there.
    fn set_cr2(&mut self, value: u64) -> Result<(), VmcsError> {
        self.cr2 = Some(value);
        Ok(())
    }

    /// SDM Vol. 3C, 25.8.3 "VM-Entry Controls for Event Injection".
    ///
    /// A fault-class exception gets RFLAGS.RF set first: a fault delivered
    /// by the processor pushes RF = 1 (SDM Vol. 3A, 17.3.1.1), so the
    /// handler's IRET does not re-trigger an instruction breakpoint at the
    /// faulting instruction, but an injected event pushes RF as the
    /// guest-state area holds it, "not modified based on the type of event"
    /// (SDM Vol. 3C, 27.6.1.1).
    fn inject(&mut self, event: Event) -> Result<(), VmcsError> {
        const VALID: u32 = 1 << 31;
        const DELIVER_ERROR_CODE: u32 = 1 << 11;
        const EXTERNAL: u32 = 0 << 8;
        const NMI: u32 = 2 << 8;
        const HARDWARE_EXCEPTION: u32 = 3 << 8;
        let info = match event {
            Event::Exception { vector, error_code } => {
                if is_fault(vector) {
                    let rflags = self.vmcs.read(GuestNatural::Rflags)?;
                    if rflags & RFLAGS_RF == 0 {
                        self.vmcs.write(GuestNatural::Rflags, rflags | RFLAGS_RF)?;
                    }
                }
                let mut info = VALID | HARDWARE_EXCEPTION | u32::from(vector);
                if let Some(code) = error_code {
                    info |= DELIVER_ERROR_CODE;
                    self.vmcs.write(Control32::EntryExceptionErrorCode, code)?;
                }
                info
            }
            Event::ExternalInterrupt { vector } => VALID | EXTERNAL | u32::from(vector),
            Event::Nmi => VALID | NMI | 2,
        };
        self.vmcs.write(Control32::EntryInterruptionInfo, info)?;
        Ok(())
    }

    /// VM exits clear the field's valid bit (SDM Vol. 3C, 28.2.5), so a
    /// set bit is an event this exit's handling set up.
    fn event_pending(&self) -> Result<bool, VmcsError> {
        Ok(self.vmcs.read(Control32::EntryInterruptionInfo)? & (1 << 31) != 0)
    }

    fn request_interrupt_window(&mut self, on: bool) -> Result<(), VmcsError> {
        let controls = self.vmcs.read(Control32::PrimaryProcBasedControls)?;
        let wanted = if on {
            controls | INTERRUPT_WINDOW_EXITING
        } else {
            controls & !INTERRUPT_WINDOW_EXITING
        };
        if wanted != controls {
            self.vmcs
                .write(Control32::PrimaryProcBasedControls, wanted)?;
        }
        Ok(())
    }

    fn interrupt_shadow(&self) -> Result<bool, VmcsError> {
        Ok(self.vmcs.read(Guest32::InterruptibilityState)? & SHADOW != 0)
    }

    fn nmi_blocked(&self) -> Result<bool, VmcsError> {
        Ok(self.vmcs.read(Guest32::InterruptibilityState)? & BLOCKING_BY_NMI != 0)
    }

    fn exit_name(&self, reason: u32) -> &'static str {
        ExitReason::from_basic((reason & 0xFFFF) as u16).name()
    }

    /// SDM Vol. 3C, 27.8 "VM-Entry Failures During or After Loading Guest
    /// State", in words.
    fn entry_failure(&self, reason: u32, qualification: u64) -> alloc::string::String {
        let info = ExitInfo::from_exit_reason(reason);
        match EntryFailure::decode(info.reason, qualification) {
            Some(failure) => failure.to_string(),
            None => alloc::format!(
                "VM entry failed: exit reason {reason:#x}, qualification {qualification:#x}"
            ),
        }
    }

    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), VmcsError> {
        Ok(self.vmcs.write(Control64::TscOffset, offset)?)
    }

    fn tsc_offset(&self) -> Result<u64, VmcsError> {
        Ok(self.vmcs.read(Control64::TscOffset)?)
    }
}

impl<V: VmcsAccess> VmxVcpu<'_, V> {
    /// Whether the guest runs 64-bit code (IA32_EFER.LMA and CS.L).
    fn long_mode(&self) -> Result<bool, VmcsError> {
        Ok(self.vmcs.read(Guest64::Efer)? & EFER_LMA != 0
            && self.vmcs.read(Guest32::CsAccessRights)? & (1 << 13) != 0)
    }
}

/// Reads why the guest on the current VMCS exited and decodes it.
///
/// An event whose delivery the exit cut short (IDT-vectoring information,
/// SDM Vol. 3C, 28.2.4) is set up again for the next entry here, so every
/// handler sees a vCPU whose pending event is not lost (SDM Vol. 3C,
/// 28.2.4 and 27.6.1.1: the hypervisor re-injects it).
#[inline]
pub fn decode_exit<V: VmcsAccess>(vmcs: &mut V) -> Result<Exit, VmcsError> {
    // CPUID, the most frequent exit, needs nothing else decoded (basic
    // reason 10, no flag bits) and cannot happen during event delivery.
    const CPUID: u32 = ExitReason::Cpuid.number() as u32;
    // An EOI write, the most frequent exit of a Linux guest's interrupts,
    // needs only its qualification: a data write during an instruction's
    // execution (access type 1) is never during event delivery, so there
    // is no IDT-vectoring information to look at.
    const APIC_ACCESS: u32 = ExitReason::ApicAccess.number() as u32;
    // The other exits a running kernel takes most are instructions too,
    // which never happen during event delivery either: their basic
    // reason is the whole of the raw one (no entry-failure or other flag
    // bit) and, for IN and OUT, the qualification says the rest.
    const IO: u32 = ExitReason::IoInstruction.number() as u32;
    const HLT: u32 = ExitReason::Hlt.number() as u32;
    const VMCALL: u32 = ExitReason::Vmcall.number() as u32;
    const RDMSR: u32 = ExitReason::Rdmsr.number() as u32;
    const WRMSR: u32 = ExitReason::Wrmsr.number() as u32;
    // An interrupt window opens at an instruction boundary, with no event
    // being delivered.
    const WINDOW: u32 = ExitReason::InterruptWindow.number() as u32;
    match vmcs.read(ReadOnly32::ExitReason)? {
        CPUID => Ok(Exit::Cpuid),
        IO => {
            let qualification = vmcs.read(ReadOnlyNatural::ExitQualification)?;
            match port_io(qualification) {
                Some(io) => Ok(Exit::Io(io)),
                None => decode_other(vmcs, IO),
            }
        }
        HLT => Ok(Exit::Hlt),
        VMCALL => Ok(Exit::Hypercall),
        RDMSR => Ok(Exit::MsrRead),
        WRMSR => Ok(Exit::MsrWrite),
        WINDOW => Ok(Exit::InterruptWindow),
        APIC_ACCESS => {
            let qualification = vmcs.read(ReadOnlyNatural::ExitQualification)?;
            match apic_access(qualification) {
                Exit::ApicEoi => Ok(Exit::ApicEoi),
                _ => decode_other(vmcs, APIC_ACCESS),
            }
        }
        raw => decode_other(vmcs, raw),
    }
}

/// Every exit but CPUID.
#[inline(never)]
fn decode_other<V: VmcsAccess>(vmcs: &mut V, raw: u32) -> Result<Exit, VmcsError> {
    let info = ExitInfo::from_exit_reason(raw);
    let qualification = vmcs.read(ReadOnlyNatural::ExitQualification)?;
    let unknown = |reason: ExitReason| Exit::Unknown {
        reason: u32::from(reason.number()),
        qualification,
    };
    if info.entry_failure {
        return Ok(match EntryFailure::decode(info.reason, qualification) {
            Some(_) => Exit::EntryFailed {
                reason: raw,
                qualification,
            },
            None => unknown(info.reason),
        });
    }
    reinject_cut_short(vmcs)?;
    Ok(match info.reason {
        ExitReason::Cpuid => Exit::Cpuid,
        ExitReason::IoInstruction => match IoQualification::from_qualification(qualification) {
            Ok(io) => {
                let direction = match io.direction {
                    VmxIoDirection::In => IoDirection::In,
                    VmxIoDirection::Out => IoDirection::Out,
                };
                let mut access = IoAccess::port(io.port, io.size.bytes(), direction);
                access.rep = io.rep;
                if io.string {
                    let insn_info = vmcs.read(ReadOnly32::ExitInstructionInfo)?;
                    match string_operands(insn_info, direction) {
                        Some((address_size, segment)) => {
                            access.string = true;
                            access.address_size = address_size;
                            access.segment = segment;
                        }
                        None => return Ok(unknown(info.reason)),
                    }
                }
                Exit::Io(access)
            }
            Err(_) => unknown(info.reason),
        },
        ExitReason::Vmcall => Exit::Hypercall,
        ExitReason::Hlt => Exit::Hlt,
        ExitReason::Rdmsr => Exit::MsrRead,
        ExitReason::Wrmsr => Exit::MsrWrite,
        ExitReason::ControlRegisterAccess => {
            let access = VmxCrAccess::from_qualification(qualification);
            let kind = match access.access {
                CrAccessType::MovTo { gpr } => CrAccessKind::MovTo(neutral_gpr(gpr)),
                CrAccessType::MovFrom { gpr } => CrAccessKind::MovFrom(neutral_gpr(gpr)),
                CrAccessType::Lmsw { source, .. } => CrAccessKind::Lmsw(source),
                CrAccessType::Clts => CrAccessKind::Clts,
            };
            Exit::ControlRegister(CrAccess {
                cr: access.cr,
                kind,
            })
        }
        ExitReason::Xsetbv => Exit::Xsetbv,
        ExitReason::PreemptionTimerExpired => Exit::SliceEnd,
        ExitReason::ExternalInterrupt => Exit::ExternalInterrupt,
        // No exception is intercepted (the exception bitmap is 0): an NMI.
        ExitReason::ExceptionOrNmi => Exit::Nmi,
        ExitReason::InterruptWindow => Exit::InterruptWindow,
        ExitReason::Invd | ExitReason::Wbinvd => Exit::CacheFlush,
        ExitReason::Vmclear
        | ExitReason::Vmlaunch
        | ExitReason::Vmptrld
        | ExitReason::Vmptrst
        | ExitReason::Vmread
        | ExitReason::Vmresume
        | ExitReason::Vmwrite
        | ExitReason::Vmxoff
        | ExitReason::Vmxon
        | ExitReason::Invept
        | ExitReason::Invvpid
        | ExitReason::Vmfunc
        | ExitReason::Getsec
        | ExitReason::Monitor
        | ExitReason::Mwait => Exit::VirtualizationInstruction,
        ExitReason::Rdpmc => Exit::Rdpmc,
        ExitReason::TripleFault => Exit::TripleFault,
        ExitReason::EptViolation => {
            let gpa = GuestPhysAddr::new(vmcs.read(ReadOnly64::GuestPhysicalAddress)?);
            let v = EptViolation::from_qualification(qualification, gpa);
            Exit::nested(NestedFault {
                gpa,
                read: v.read,
                write: v.write,
                fetch: v.fetch,
                allowed: Some([v.readable, v.writable, v.executable]),
            })
        }
        ExitReason::ApicAccess => apic_access(qualification),
        ExitReason::EptMisconfiguration => Exit::NestedPagingMisconfigured {
            gpa: vmcs.read(ReadOnly64::GuestPhysicalAddress)?,
        },
        ExitReason::TaskSwitch => Exit::TaskSwitch,
        // Only PAUSE-loop exiting makes PAUSE exit (PAUSE exiting is off).
        ExitReason::Pause => Exit::Pause,
        reason => unknown(reason),
    })
}

/// An IN or OUT from an I/O-instruction exit's qualification (SDM Vol.
/// 3C, 28.2.1, Table 28-5), as [`decode_other`] reads it; `None` for a
/// string instruction (its address size and segment are in another
/// field) or a size code the SDM does not define.
fn port_io(qualification: u64) -> Option<IoAccess> {
    let io = IoQualification::from_qualification(qualification).ok()?;
    if io.string {
        return None;
    }
    let direction = match io.direction {
        VmxIoDirection::In => IoDirection::In,
        VmxIoDirection::Out => IoDirection::Out,
    };
    let mut access = IoAccess::port(io.port, io.size.bytes(), direction);
    access.rep = io.rep;
    Some(access)
}

/// An APIC-access exit (reason 44; SDM Vol. 3C, 28.2.1, Table 28-6:
/// bits 11:0 the offset in the APIC-access page, bits 15:12 the kind of
/// access). The guests' EPT maps only the local APIC's reset page,
/// [`vcpu::exit::LAPIC_BASE`], to the APIC-access page, so that is the
/// page. A data write at the EOI register's offset is an
/// [`Exit::ApicEoi`] (the instruction-length field is valid for it, as
/// for any exit during an instruction's execution); any other access is
/// the EPT violation the page would have taken unmapped: a read (0), a
/// write (1), an instruction fetch (2), and reads for the accesses during
/// event delivery or by guest-physical address (3, 10, 15), which the
/// MMIO path refuses or decodes from the instruction as before.
pub fn apic_access(qualification: u64) -> Exit {
    let offset = qualification & 0xFFF;
    let kind = (qualification >> 12) & 0xF;
    if kind == 1 && offset == u64::from(vcpu::exit::EOI_OFFSET) {
        return Exit::ApicEoi;
    }
    Exit::nested(NestedFault {
        gpa: GuestPhysAddr::new(vcpu::exit::LAPIC_BASE | offset),
        read: kind != 1 && kind != 2,
        write: kind == 1,
        fetch: kind == 2,
        allowed: None,
    })
}

/// The address size and segment of an INS/OUTS from the VM-exit
/// instruction information (SDM Vol. 3C, 28.2.5, Table 28-8: bits 9:7
/// address size, 0 = 16-bit, 1 = 32-bit, 2 = 64-bit; bits 17:15 the
/// segment register of OUTS, ES CS SS DS FS GS = 0..5, undefined for INS,
/// which always writes through ES). CPUs report it where IA32_VMX_BASIC
/// bit 54 is set (every CPU with unrestricted guest that Ferrovisor has
/// run on, Bochs included); `None` for values the SDM does not define.
pub fn string_operands(info: u32, direction: IoDirection) -> Option<(AddressSize, Segment)> {
    let address_size = match (info >> 7) & 0b111 {
        0 => AddressSize::Bits16,
        1 => AddressSize::Bits32,
        2 => AddressSize::Bits64,
        _ => return None,
    };
    let segment = match direction {
        IoDirection::In => Segment::Es,
        IoDirection::Out => match (info >> 15) & 0b111 {
            0 => Segment::Es,
            1 => Segment::Cs,
            2 => Segment::Ss,
            3 => Segment::Ds,
            4 => Segment::Fs,
            5 => Segment::Gs,
            _ => return None,
        },
    };
    Some((address_size, segment))
}

/// Sets up for the next entry the event whose delivery this exit
/// interrupted, if any (the IDT-vectoring information).
fn reinject_cut_short<V: VmcsAccess>(vmcs: &mut V) -> Result<(), VmcsError> {
    let Some(info) = InterruptionInfo::decode(vmcs.read(ReadOnly32::IdtVectoringInfo)?) else {
        return Ok(());
    };
    if info.error_code {
        let code = vmcs.read(ReadOnly32::IdtVectoringErrorCode)?;
        vmcs.write(Control32::EntryExceptionErrorCode, code)?;
    }
    // Software interrupts and exceptions need their instruction length.
    let len = vmcs.read(ReadOnly32::ExitInstructionLength)?;
    vmcs.write(Control32::EntryInstructionLength, len)?;
    vmcs.write(Control32::EntryInterruptionInfo, info.to_entry_field())?;
    Ok(())
}

/// Fills the MSR bitmap: every MSR exits except those whose guest value
/// lives in the VMCS or is switched with the vCPU ([`VMCS_MSRS`],
/// [`SWITCHED_MSRS`]), and reads of the TSC.
pub fn fill_msr_bitmap(bitmap: &mut MsrBitmap) {
    bitmap.set_all(true);
    for &msr in VMCS_MSRS.iter().chain(SWITCHED_MSRS) {
        // Cannot fail: every entry is covered (the assertions below).
        let _ = bitmap.set(msr, MsrAccess::ReadWrite, false);
    }
    let _ = bitmap.set(IA32_TIME_STAMP_COUNTER, MsrAccess::Read, false);
    // EFER writes are checked by the exit handler (`vcpu::cr`).
    let _ = bitmap.set(IA32_EFER, MsrAccess::Write, true);
}

const _: () = {
    let mut i = 0;
    while i < VMCS_MSRS.len() {
        assert!(MsrBitmap::covers(VMCS_MSRS[i]));
        i += 1;
    }
    let mut i = 0;
    while i < SWITCHED_MSRS.len() {
        assert!(MsrBitmap::covers(SWITCHED_MSRS[i]));
        i += 1;
    }
    assert!(MsrBitmap::covers(IA32_TIME_STAMP_COUNTER));
};

#[cfg(test)]
mod msr_bitmap_tests {
    use super::*;
    use vcpu::msr::{rule, MsrRule};

    /// Every MSR the bitmap covers, then a sample of those it does not.
    fn all_covered() -> impl Iterator<Item = u32> {
        (0..=0x1FFF).chain(0xC000_0000..=0xC000_1FFF)
    }

    fn uncovered_sample() -> impl Iterator<Item = u32> {
        (0x2000..=0x1_0000).chain(0xC000_2000..=0xC001_1000).chain([
            0x4000_0000,
            0x4000_0070,
            0xBFFF_FFFF,
            u32::MAX,
        ])
    }

    #[test]
    fn bitmap_agrees_with_rule_for_every_covered_msr() {
        let mut bitmap = MsrBitmap::pass_all();
        fill_msr_bitmap(&mut bitmap);
        let mut passed = 0;
        for msr in all_covered() {
            for write in [false, true] {
                let passes = rule(msr, write) == MsrRule::PassThrough;
                assert_eq!(bitmap.exits(msr, write), !passes, "{msr:#x} write={write}");
                passed += u32::from(passes);
            }
        }
        // 13 MSRs both ways but IA32_EFER writes, plus
        // IA32_TIME_STAMP_COUNTER reads.
        assert_eq!(passed, 26);
    }

    #[test]
    fn nothing_outside_the_bitmap_is_passed_through() {
        let mut bitmap = MsrBitmap::exit_all();
        fill_msr_bitmap(&mut bitmap);
        for msr in uncovered_sample() {
            for write in [false, true] {
                assert_ne!(rule(msr, write), MsrRule::PassThrough, "{msr:#x}");
                assert!(bitmap.exits(msr, write));
            }
        }
    }

    #[test]
    fn fill_bitmap_overwrites_whatever_was_there() {
        let mut from_pass = MsrBitmap::pass_all();
        let mut from_exit = MsrBitmap::exit_all();
        fill_msr_bitmap(&mut from_pass);
        fill_msr_bitmap(&mut from_exit);
        assert_eq!(from_pass, from_exit);
    }
}

#[cfg(test)]
mod tests;
