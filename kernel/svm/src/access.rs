//! [`VcpuAccess`] over a VMCB, the GPRs the VMRUN trampoline saved and the
//! little state the backend keeps beside them ([`SoftState`]): what the
//! neutral exit handlers see of an SVM vCPU.
//!
//! Where SVM differs from what the handlers expect:
//! - The guest's EFER is the VMCB's without SVME, which the hardware needs
//!   and the guest must not see (its writes and reads exit through the MSR
//!   permission map).
//! - The guest's CPL is the VMCB's CPL field, not SS.DPL (APM Vol. 2,
//!   15.5.1): SS's attributes report it as their DPL.
//! - The next instruction's RIP comes from the exit (nRIP, EXITINFO2 of an
//!   I/O intercept) or from decoding the instruction (`crate::exit`); a
//!   handler that skips an instruction no exit measured gets an error,
//!   which stops the guest, instead of a guess.
//! - The hardware does not track an injected NMI's blocking (without
//!   virtual NMIs): injecting one turns the IRET intercept on, and the
//!   guest's NMIs stay blocked until that IRET has run.
//! - FS, GS, TR, LDTR, KernelGsBase, STAR, LSTAR, CSTAR, SFMASK and the
//!   SYSENTER MSRs are VMLOAD/VMSAVE state: the kernel VMSAVEs the guest's
//!   into the VMCB after each #VMEXIT before the handlers read them.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::fmt;

use vcpu::access::{Event, Gpr, Segment, SegmentState, VcpuAccess};

use crate::regs::Gprs;
use crate::setup::EFER_SVME;
use crate::vmcb::{
    access_rights_from_attrib, EventInjection, EventType, Intercept, SaveSegment, Vmcb,
};

/// CR4.VMXE: Intel's; reserved on AMD.
const CR4_VMXE: u64 = 1 << 13;
/// CR4.SMXE: Intel's; reserved on AMD.
const CR4_SMXE: u64 = 1 << 14;
/// RFLAGS.RF: resume flag.
const RFLAGS_RF: u64 = 1 << 16;
/// IA32_EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// IA32_EFER.LME.
const EFER_LME: u64 = 1 << 8;
/// Segment attribute L in the VMX layout.
const SEGMENT_L: u32 = 1 << 13;
/// The priority a requested window's virtual interrupt has: the highest,
/// so only RFLAGS.IF and the interrupt shadow hold it back.
const WINDOW_PRIORITY: u8 = 0xF;
/// EVENTINJ.V.
const EVENT_VALID: u64 = 1 << 31;

/// Whether exception `vector` is a fault (APM Vol. 2, 8.2, Table 8-1; SDM
/// Vol. 3A, Table 6-1): reported at the instruction that caused it, which
/// is restarted. #DB is left out: it is a trap as well.
pub const fn is_fault(vector: u8) -> bool {
    matches!(
        vector,
        0 | 5 | 6 | 7 | 10 | 11 | 12 | 13 | 14 | 16 | 17 | 19 | 20 | 21
    )
}

/// What the backend keeps of a vCPU beside its VMCB and GPRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftState {
    /// The RIP after the instruction this exit stopped at, where the exit
    /// reported it or [`crate::exit::decode_exit`] decoded it;
    /// [`VcpuAccess::skip_instruction`] moves RIP there.
    pub next_rip: Option<u64>,
    /// The RIP of the IRET that ends the guest's NMI handler, once its
    /// intercept has fired and until it has run: NMIs stay blocked
    /// meanwhile (an NMI injected before it would be delivered inside the
    /// handler).
    pub iret_rip: Option<u64>,
    /// The CPU stores the next RIP in the VMCB (NRIP save, CPUID
    /// 8000_000AH EDX bit 3).
    pub nrip_save: bool,
    /// The CPU decodes intercepted instructions' operands (decode
    /// assists, CPUID 8000_000AH EDX bit 7).
    pub decode_assists: bool,
    /// The guest set EFER.LME with paging off: the VMCB's EFER leaves it
    /// out until the guest turns paging on (a CR0 write, which exits), and
    /// the guest reads it from here. The CPU consults LME only when paging
    /// goes on, so this changes nothing the guest sees; it keeps QEMU's
    /// emulation (7.2), whose #VMEXIT loads the host's CR0 before its CR4
    /// and so, with the guest's LME and no PAE still in place, leaves the
    /// host running with the guest's CR0, from ever seeing LME without LMA
    /// at an exit.
    pub lme_held: bool,
}

impl SoftState {
    /// A vCPU on a CPU with (or without) NRIP save and decode assists.
    pub const fn new(nrip_save: bool, decode_assists: bool) -> Self {
        Self {
            next_rip: None,
            iret_rip: None,
            nrip_save,
            decode_assists,
            lme_held: false,
        }
    }
}

/// Why an access to an SVM vCPU failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmError {
    /// A handler skipped an instruction whose length the exit neither
    /// reported nor had decoded (a hypervisor bug).
    NoNextRip {
        /// RIP of the instruction.
        rip: u64,
    },
}

impl fmt::Display for SvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoNextRip { rip } => write!(
                f,
                "cannot skip the instruction at RIP {rip:#x}: this exit did not give its length"
            ),
        }
    }
}

/// A vCPU that has exited, seen through its VMCB, the GPRs the trampoline
/// saved, and the backend's [`SoftState`].
pub struct SvmVcpu<'a> {
    /// The VMCB (the guest's FS/GS/TR/LDTR state VMSAVEd into it).
    pub vmcb: &'a mut Vmcb,
    /// Every GPR but RAX and RSP (which the VMCB holds).
    pub gprs: &'a mut Gprs,
    /// The backend's state beside them.
    pub soft: &'a mut SoftState,
}

/// The save-area register of a neutral segment register.
const fn save_segment(seg: Segment) -> SaveSegment {
    match seg {
        Segment::Es => SaveSegment::Es,
        Segment::Cs => SaveSegment::Cs,
        Segment::Ss => SaveSegment::Ss,
        Segment::Ds => SaveSegment::Ds,
        Segment::Fs => SaveSegment::Fs,
        Segment::Gs => SaveSegment::Gs,
        Segment::Ldtr => SaveSegment::Ldtr,
        Segment::Tr => SaveSegment::Tr,
    }
}

impl SvmVcpu<'_> {
    /// Whether the guest runs 64-bit code (EFER.LMA and CS.L).
    pub fn long_mode(&self) -> bool {
        self.vmcb.efer() & EFER_LMA != 0
            && access_rights_from_attrib(self.vmcb.segment(SaveSegment::Cs).attrib) & SEGMENT_L != 0
    }

    /// The VMX-layout attributes of `seg` (SS with the CPL as its DPL).
    fn attributes(&self, seg: Segment) -> u32 {
        let rights = access_rights_from_attrib(self.vmcb.segment(save_segment(seg)).attrib);
        match seg {
            Segment::Ss => (rights & !(3 << 5)) | (u32::from(self.vmcb.cpl() & 3) << 5),
            _ => rights,
        }
    }
}

impl VcpuAccess for SvmVcpu<'_> {
    type Error = SvmError;

    #[inline]
    fn gpr(&self, reg: Gpr) -> Result<u64, SvmError> {
        Ok(match reg {
            Gpr::Rax => self.vmcb.rax(),
            Gpr::Rsp => self.vmcb.rsp(),
            _ => self.gprs.get(reg).unwrap_or(0),
        })
    }

    #[inline]
    fn set_gpr(&mut self, reg: Gpr, value: u64) -> Result<(), SvmError> {
        match reg {
            Gpr::Rax => self.vmcb.set_rax(value),
            Gpr::Rsp => self.vmcb.set_rsp(value),
            _ => {
                self.gprs.set(reg, value);
            }
        }
        Ok(())
    }

    fn rip(&self) -> Result<u64, SvmError> {
        Ok(self.vmcb.rip())
    }

    fn set_rip(&mut self, value: u64) -> Result<(), SvmError> {
        self.vmcb.set_rip(value);
        Ok(())
    }

    fn rflags(&self) -> Result<u64, SvmError> {
        Ok(self.vmcb.rflags())
    }

    /// RIP moves to the next RIP this exit gave ([`SoftState::next_rip`],
    /// taken so it is used once), and the interrupt shadow ends.
    fn skip_instruction(&mut self) -> Result<(), SvmError> {
        let Some(next) = self.soft.next_rip.take() else {
            return Err(SvmError::NoNextRip {
                rip: self.vmcb.rip(),
            });
        };
        self.vmcb.set_rip(next);
        self.vmcb.set_interrupt_shadow(false);
        Ok(())
    }

    fn clear_interrupt_shadow(&mut self) -> Result<(), SvmError> {
        if self.vmcb.interrupt_shadow() {
            self.vmcb.set_interrupt_shadow(false);
        }
        Ok(())
    }

    fn cr0(&self) -> Result<u64, SvmError> {
        Ok(self.vmcb.cr0())
    }

    fn cr3(&self) -> Result<u64, SvmError> {
        Ok(self.vmcb.cr3())
    }

    fn cr4(&self) -> Result<u64, SvmError> {
        Ok(self.vmcb.cr4())
    }

    /// The guest's view: SVME, which the hardware needs, left out, and
    /// LME where [`SoftState::lme_held`] keeps it.
    fn efer(&self) -> Result<u64, SvmError> {
        let held = if self.soft.lme_held { EFER_LME } else { 0 };
        Ok((self.vmcb.efer() & !EFER_SVME) | held)
    }

    fn set_cr0(&mut self, value: u64) -> Result<(), SvmError> {
        self.vmcb.set_cr0(value);
        Ok(())
    }

    fn set_cr4(&mut self, value: u64) -> Result<(), SvmError> {
        self.vmcb.set_cr4(value);
        Ok(())
    }

    fn set_cr3(&mut self, value: u64) -> Result<(), SvmError> {
        self.vmcb.set_cr3(value);
        Ok(())
    }

    /// Nothing to do: with nested paging the CPU loads a PAE guest's
    /// PDPTEs itself from the guest's CR3 (APM Vol. 2, 15.25.9).
    fn set_pdptes(&mut self, _pdptes: [u64; 4]) -> Result<(), SvmError> {
        Ok(())
    }

    /// SVME stays set for the hardware; LMA is the caller's (the rules of
    /// `vcpu::cr` keep it as the guest cannot write it), and the CPU sets
    /// and clears it itself when the guest's own CR0 writes turn paging on
    /// and off.
    fn set_efer(&mut self, value: u64) -> Result<(), SvmError> {
        // LME without LMA: paging is off (the neutral rules keep LMA = LME
        // and CR0.PG).
        self.soft.lme_held = value & EFER_LME != 0 && value & EFER_LMA == 0;
        let value = if self.soft.lme_held {
            value & !EFER_LME
        } else {
            value
        };
        self.vmcb.set_efer(value | EFER_SVME);
        Ok(())
    }

    /// VMXE and SMXE, Intel's bits, are reserved on AMD. (CR4 writes do
    /// not exit under SVM: the CPU refuses its reserved bits itself.)
    fn cr4_forbidden(&self) -> u64 {
        CR4_VMXE | CR4_SMXE
    }

    fn segment_attributes(&self, seg: Segment) -> Result<u32, SvmError> {
        Ok(self.attributes(seg))
    }

    fn segment(&self, seg: Segment) -> Result<SegmentState, SvmError> {
        let s = self.vmcb.segment(save_segment(seg));
        Ok(SegmentState {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            attributes: self.attributes(seg),
        })
    }

    /// EVENTINJ (APM Vol. 2, 15.20). A fault-class exception gets
    /// RFLAGS.RF set first, as the processor pushes RF = 1 for a fault it
    /// delivers itself. An NMI turns the IRET intercept on: the guest's
    /// NMIs are blocked until its handler returns.
    fn inject(&mut self, event: Event) -> Result<(), SvmError> {
        let injection = match event {
            Event::Exception { vector, error_code } => {
                if is_fault(vector) {
                    let rflags = self.vmcb.rflags();
                    if rflags & RFLAGS_RF == 0 {
                        self.vmcb.set_rflags(rflags | RFLAGS_RF);
                    }
                }
                EventInjection {
                    vector,
                    kind: EventType::Exception,
                    error_code,
                }
            }
            Event::ExternalInterrupt { vector } => EventInjection {
                vector,
                kind: EventType::Interrupt,
                error_code: None,
            },
            Event::Nmi => {
                self.vmcb.set_intercept(Intercept::Iret, true);
                EventInjection {
                    vector: 2,
                    kind: EventType::Nmi,
                    error_code: None,
                }
            }
        };
        self.vmcb.set_event_injection(Some(injection));
        Ok(())
    }

    fn set_cr2(&mut self, value: u64) -> Result<(), SvmError> {
        self.vmcb.set_cr2(value);
        Ok(())
    }

    /// EVENTINJ.V: `decode_exit` clears the field at every exit (and puts
    /// back an event the exit cut short), so a set bit is an event set up
    /// since.
    fn event_pending(&self) -> Result<bool, SvmError> {
        Ok(self.vmcb.event_injection_raw() & EVENT_VALID != 0)
    }

    /// A virtual interrupt of the highest priority, ignoring V_TPR, whose
    /// delivery the VINTR intercept turns into an exit as soon as the
    /// guest can take it (RFLAGS.IF set, no interrupt shadow: APM Vol. 2,
    /// 15.21.4). Off: neither.
    fn request_interrupt_window(&mut self, on: bool) -> Result<(), SvmError> {
        if on {
            self.vmcb.set_v_intr_prio(WINDOW_PRIORITY);
            self.vmcb.set_v_ign_tpr(true);
            self.vmcb.set_v_irq(true);
            self.vmcb.set_intercept(Intercept::Vintr, true);
        } else if self.vmcb.v_irq() || self.vmcb.intercepted(Intercept::Vintr) {
            self.vmcb.set_v_irq(false);
            self.vmcb.set_intercept(Intercept::Vintr, false);
        }
        Ok(())
    }

    fn interrupt_shadow(&self) -> Result<bool, SvmError> {
        Ok(self.vmcb.interrupt_shadow())
    }

    /// Blocked from an NMI's injection until its handler's IRET has run:
    /// while the IRET intercept is on, and after it fired while RIP is
    /// still on that IRET.
    fn nmi_blocked(&self) -> Result<bool, SvmError> {
        Ok(self.vmcb.intercepted(Intercept::Iret) || self.soft.iret_rip == Some(self.vmcb.rip()))
    }

    fn exit_name(&self, reason: u32) -> &'static str {
        crate::exit::exit_name(crate::exit::widen(reason))
    }

    fn entry_failure(&self, reason: u32, qualification: u64) -> alloc::string::String {
        crate::exit::entry_failure(self.vmcb, crate::exit::widen(reason), qualification)
    }

    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), SvmError> {
        self.vmcb.set_tsc_offset(offset);
        Ok(())
    }

    fn tsc_offset(&self) -> Result<u64, SvmError> {
        Ok(self.vmcb.tsc_offset())
    }
}
