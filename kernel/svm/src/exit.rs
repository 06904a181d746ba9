//! #VMEXIT decoded from the VMCB into the vendor-neutral [`Exit`] (APM
//! Vol. 2, 15.6 and appendix C), with what the handlers need set up on
//! the way: the next RIP of the instructions they skip, the event the
//! exit cut short put back for the next VMRUN, the NMI and interrupt
//! windows' bookkeeping.
//!
//! The next RIP comes from nRIP where the CPU has NRIP save, from
//! EXITINFO2 for I/O (every CPU), and otherwise from the instruction
//! itself: the bytes at RIP are fetched through the guest's paging and
//! measured ([`crate::insn`]); bytes that are not the instruction the exit
//! names (the guest changed its code or its mapping under the vCPU) stop
//! the guest as an unknown exit, rather than move RIP by a guess.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::cell::RefCell;
use core::fmt::Write;

use addr::GuestPhysAddr;
use alloc::string::String;
use vcpu::access::{Gpr, Segment};
use vcpu::exit::{AddressSize, CrAccess, CrAccessKind, Exit, IoAccess, IoDirection, NestedFault};
use vcpu::mmio::decode::CodeSize;
use vcpu::mmio::walk::{Fetched, RamReader};

use crate::access::SvmVcpu;
use crate::insn::{
    cr0_write, instruction_length, mov_cr, outs_segment, string_address_size, Cr0Write, Expected,
};
use crate::setup::EFER_SVME;
use crate::vmcb::{EventInjection, EventType, Intercept, SaveSegment, Vmcb};

/// Exit codes (APM Vol. 2, appendix C, Table C-1).
pub mod code {
    /// Read of CR8 (CR0..CR15 reads are 0x00..0x0F).
    pub const CR8_READ: u64 = 0x08;
    /// Write of CR0 (MOV, LMSW, CLTS).
    pub const CR0_WRITE: u64 = 0x10;
    /// Write of CR4.
    pub const CR4_WRITE: u64 = 0x14;
    /// Write of CR8 (CR0..CR15 writes are 0x10..0x1F).
    pub const CR8_WRITE: u64 = 0x18;
    /// Exception 6, #UD (exceptions are 0x40 + vector).
    pub const EXCP_UD: u64 = 0x46;
    /// Physical INTR.
    pub const INTR: u64 = 0x60;
    /// Physical NMI.
    pub const NMI: u64 = 0x61;
    /// Physical SMI.
    pub const SMI: u64 = 0x62;
    /// Physical INIT.
    pub const INIT: u64 = 0x63;
    /// Virtual INTR: the interrupt window.
    pub const VINTR: u64 = 0x64;
    /// RDPMC.
    pub const RDPMC: u64 = 0x6F;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// IRET.
    pub const IRET: u64 = 0x74;
    /// INVD.
    pub const INVD: u64 = 0x76;
    /// PAUSE.
    pub const PAUSE: u64 = 0x77;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// INVLPGA.
    pub const INVLPGA: u64 = 0x7A;
    /// IN, OUT, INS, OUTS.
    pub const IOIO: u64 = 0x7B;
    /// RDMSR or WRMSR.
    pub const MSR: u64 = 0x7C;
    /// A task switch.
    pub const TASK_SWITCH: u64 = 0x7D;
    /// Shutdown.
    pub const SHUTDOWN: u64 = 0x7F;
    /// VMRUN.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// VMLOAD.
    pub const VMLOAD: u64 = 0x82;
    /// VMSAVE.
    pub const VMSAVE: u64 = 0x83;
    /// STGI.
    pub const STGI: u64 = 0x84;
    /// CLGI.
    pub const CLGI: u64 = 0x85;
    /// SKINIT.
    pub const SKINIT: u64 = 0x86;
    /// WBINVD or WBNOINVD.
    pub const WBINVD: u64 = 0x89;
    /// MONITOR or MONITORX.
    pub const MONITOR: u64 = 0x8A;
    /// MWAIT or MWAITX.
    pub const MWAIT: u64 = 0x8B;
    /// MWAIT or MWAITX with a monitor armed.
    pub const MWAIT_CONDITIONAL: u64 = 0x8C;
    /// XSETBV.
    pub const XSETBV: u64 = 0x8D;
    /// A nested page fault.
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the VMCB (-1).
    pub const INVALID: u64 = u64::MAX;
    /// VMRUN found the VMSA busy (-2, SEV-ES).
    pub const BUSY: u64 = u64::MAX - 1;
}

/// IOIO EXITINFO1 (APM Vol. 2, 15.10.2, Figure 15-2).
mod ioio {
    /// TYPE: 1 = IN/INS.
    pub const IN: u64 = 1 << 0;
    /// STR: INS/OUTS.
    pub const STRING: u64 = 1 << 2;
    /// REP.
    pub const REP: u64 = 1 << 3;
    /// SZ8, SZ16, SZ32: the operand size.
    pub const SZ8: u64 = 1 << 4;
    pub const SZ16: u64 = 1 << 5;
    pub const SZ32: u64 = 1 << 6;
    /// A16, A32, A64: the address size.
    pub const A16: u64 = 1 << 7;
    pub const A32: u64 = 1 << 8;
    pub const A64: u64 = 1 << 9;
    /// SEG: bits 12:10, the effective segment (decode assists).
    pub const SEG_SHIFT: u32 = 10;
}

/// Nested page fault EXITINFO1 (APM Vol. 2, 15.25.6): the #PF error code
/// bits.
mod npf {
    /// RW: the access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// ID: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

/// EXITINFO1 bit 63 of a CR access with decode assists: a MOV, whose GPR
/// is in bits 3:0.
const CR_MOV: u64 = 1 << 63;

/// Reads why the guest behind `vcpu` exited and decodes it. `slice_over`:
/// the host's slice timer is due, so a physical interrupt ends the slice
/// rather than being a kick. `read_guest` copies guest RAM at a
/// guest-physical address (false when any byte is not RAM): instructions
/// are fetched through it where the CPU does not measure them.
///
/// Before anything is decoded, an event whose delivery the exit cut short
/// (EXITINTINFO) is set up again in EVENTINJ, and EVENTINJ is otherwise
/// cleared, so every handler sees the pending event as
/// [`vcpu::access::VcpuAccess::event_pending`] and nothing stale.
pub fn decode_exit(
    vcpu: &mut SvmVcpu<'_>,
    slice_over: bool,
    read_guest: &mut dyn FnMut(GuestPhysAddr, &mut [u8]) -> bool,
) -> Exit {
    let raw = vcpu.vmcb.exit_code();
    let info1 = vcpu.vmcb.exit_info1();
    vcpu.soft.next_rip = None;
    // The IRET that ended an NMI handler has run once RIP has moved.
    if vcpu.soft.iret_rip.is_some_and(|at| at != vcpu.vmcb.rip()) {
        vcpu.soft.iret_rip = None;
    }
    if raw == code::INVALID || raw == code::BUSY {
        return Exit::EntryFailed {
            reason: raw as u32,
            qualification: info1,
        };
    }
    reinject_cut_short(vcpu.vmcb);
    let unknown = Exit::Unknown {
        reason: raw as u32,
        qualification: info1,
    };
    let mut fetch = Fetcher { read_guest };
    match raw {
        code::CPUID => measured(vcpu, &mut fetch, Expected::Cpuid, Exit::Cpuid, unknown),
        code::HLT => measured(vcpu, &mut fetch, Expected::Hlt, Exit::Hlt, unknown),
        code::MSR => match info1 {
            0 => measured(vcpu, &mut fetch, Expected::Rdmsr, Exit::MsrRead, unknown),
            1 => measured(vcpu, &mut fetch, Expected::Wrmsr, Exit::MsrWrite, unknown),
            _ => unknown,
        },
        code::VMMCALL => measured(
            vcpu,
            &mut fetch,
            Expected::Vmmcall,
            Exit::Hypercall,
            unknown,
        ),
        code::XSETBV => measured(vcpu, &mut fetch, Expected::Xsetbv, Exit::Xsetbv, unknown),
        code::INVD => measured(vcpu, &mut fetch, Expected::Invd, Exit::CacheFlush, unknown),
        code::WBINVD => measured(
            vcpu,
            &mut fetch,
            Expected::Wbinvd,
            Exit::CacheFlush,
            unknown,
        ),
        code::IOIO => io(vcpu, &mut fetch, info1).unwrap_or(unknown),
        code::CR8_READ | code::CR8_WRITE => {
            mov_cr_exit(vcpu, &mut fetch, 8, raw == code::CR8_WRITE, info1).unwrap_or(unknown)
        }
        code::CR4_WRITE => mov_cr_exit(vcpu, &mut fetch, 4, true, info1).unwrap_or(unknown),
        code::CR0_WRITE => mov_cr_exit(vcpu, &mut fetch, 0, true, info1)
            .or_else(|| clts_or_lmsw(vcpu, &mut fetch))
            .unwrap_or(unknown),
        code::EXCP_UD => undefined_opcode(vcpu, &mut fetch),
        code::NPF => {
            let write = info1 & npf::WRITE != 0;
            let fetch = info1 & npf::FETCH != 0;
            Exit::nested(NestedFault {
                gpa: GuestPhysAddr::new(vcpu.vmcb.exit_info2()),
                read: !write && !fetch,
                write,
                fetch,
                allowed: None,
            })
        }
        code::INTR if slice_over => Exit::SliceEnd,
        code::INTR => Exit::ExternalInterrupt,
        code::NMI => Exit::Nmi,
        code::VINTR => {
            // The window is open; the handler stops asking for it.
            vcpu.vmcb.set_v_irq(false);
            Exit::InterruptWindow
        }
        code::IRET => {
            // The NMI handler returns: NMIs are unblocked once this IRET
            // has run, which it does when the guest resumes.
            vcpu.vmcb.set_intercept(Intercept::Iret, false);
            vcpu.soft.iret_rip = Some(vcpu.vmcb.rip());
            Exit::NmiWindow
        }
        code::SHUTDOWN => Exit::TripleFault,
        code::TASK_SWITCH => Exit::TaskSwitch,
        code::RDPMC => Exit::Rdpmc,
        // Only with the pause filter on; RIP is on the PAUSE.
        code::PAUSE => Exit::Pause,
        code::VMRUN
        | code::VMLOAD
        | code::VMSAVE
        | code::STGI
        | code::CLGI
        | code::SKINIT
        | code::INVLPGA
        | code::MONITOR
        | code::MWAIT
        | code::MWAIT_CONDITIONAL => Exit::VirtualizationInstruction,
        _ => unknown,
    }
}

/// Fetches instruction bytes through the caller's guest-RAM reader.
struct Fetcher<'r, 'f> {
    read_guest: &'r mut (dyn FnMut(GuestPhysAddr, &mut [u8]) -> bool + 'f),
}

impl Fetcher<'_, '_> {
    /// The bytes at the vCPU's RIP and the code size they run at; `None`
    /// when they cannot be read.
    fn at_rip(&mut self, vcpu: &SvmVcpu<'_>) -> Option<(Fetched, CodeSize)> {
        let cell = RefCell::new(&mut *self.read_guest);
        let ram = RamReader(
            |gpa: GuestPhysAddr, buf: &mut [u8]| match cell.try_borrow_mut() {
                Ok(mut read) => (*read)(gpa, buf),
                Err(_) => false,
            },
        );
        vcpu::mmio::fetch_at_rip(vcpu, &ram).ok()?.ok()
    }
}

/// RIP plus `len`, wrapping at 4 GiB outside 64-bit code.
fn advance(rip: u64, len: u8, code: CodeSize) -> u64 {
    let next = rip.wrapping_add(u64::from(len));
    match code {
        CodeSize::Bits64 => next,
        _ => next & 0xFFFF_FFFF,
    }
}

/// `exit`, with the next RIP set up for a handler that skips the
/// `expected` instruction: nRIP, or the instruction's measured length;
/// `unknown` if the bytes at RIP are not that instruction.
fn measured(
    vcpu: &mut SvmVcpu<'_>,
    fetch: &mut Fetcher<'_, '_>,
    expected: Expected,
    exit: Exit,
    unknown: Exit,
) -> Exit {
    if vcpu.soft.nrip_save {
        vcpu.soft.next_rip = Some(vcpu.vmcb.next_rip());
        return exit;
    }
    let Some((bytes, code)) = fetch.at_rip(vcpu) else {
        return unknown;
    };
    match instruction_length(bytes.as_slice(), code, expected) {
        Some(len) => {
            vcpu.soft.next_rip = Some(advance(vcpu.vmcb.rip(), len, code));
            exit
        }
        None => unknown,
    }
}

/// An IOIO intercept: the port, size and direction from EXITINFO1, the
/// next RIP from EXITINFO2; for INS/OUTS the address size, and OUTS's
/// segment (from EXITINFO1 with decode assists, else from its prefixes).
fn io(vcpu: &mut SvmVcpu<'_>, fetch: &mut Fetcher<'_, '_>, info1: u64) -> Option<Exit> {
    let size = if info1 & ioio::SZ8 != 0 {
        1
    } else if info1 & ioio::SZ16 != 0 {
        2
    } else if info1 & ioio::SZ32 != 0 {
        4
    } else {
        return None;
    };
    let direction = if info1 & ioio::IN != 0 {
        IoDirection::In
    } else {
        IoDirection::Out
    };
    let mut access = IoAccess::port((info1 >> 16) as u16, size, direction);
    access.rep = info1 & ioio::REP != 0;
    if info1 & ioio::STRING != 0 {
        access.string = true;
        access.address_size = if info1 & ioio::A16 != 0 {
            AddressSize::Bits16
        } else if info1 & ioio::A32 != 0 {
            AddressSize::Bits32
        } else if info1 & ioio::A64 != 0 {
            AddressSize::Bits64
        } else {
            // QEMU's emulation (7.2) leaves the address-size bits clear:
            // take it from the instruction.
            let (bytes, code) = fetch.at_rip(vcpu)?;
            string_address_size(bytes.as_slice(), code)?
        };
        access.segment = match direction {
            IoDirection::In => Segment::Es,
            IoDirection::Out if vcpu.soft.decode_assists => match (info1 >> ioio::SEG_SHIFT) & 7 {
                0 => Segment::Es,
                1 => Segment::Cs,
                2 => Segment::Ss,
                3 => Segment::Ds,
                4 => Segment::Fs,
                5 => Segment::Gs,
                _ => return None,
            },
            IoDirection::Out => {
                let (bytes, code) = fetch.at_rip(vcpu)?;
                outs_segment(bytes.as_slice(), code)?
            }
        };
    }
    vcpu.soft.next_rip = Some(vcpu.vmcb.exit_info2());
    Some(Exit::Io(access))
}

/// #UD: the hypercall ABI's VMCALL, written for VT-x, is a hypercall
/// here as VMMCALL is; any other #UD goes back to the guest.
fn undefined_opcode(vcpu: &mut SvmVcpu<'_>, fetch: &mut Fetcher<'_, '_>) -> Exit {
    if let Some((bytes, code)) = fetch.at_rip(vcpu) {
        if let Some(len) = instruction_length(bytes.as_slice(), code, Expected::Vmcall) {
            vcpu.soft.next_rip = Some(advance(vcpu.vmcb.rip(), len, code));
            return Exit::Hypercall;
        }
    }
    vcpu.vmcb.set_event_injection(Some(EventInjection {
        vector: 6,
        kind: EventType::Exception,
        error_code: None,
    }));
    Exit::Reflected
}

/// CLTS or LMSW from a register at a CR0 write intercept (LMSW from
/// memory is not decoded: the guest stops with the exit named).
fn clts_or_lmsw(vcpu: &mut SvmVcpu<'_>, fetch: &mut Fetcher<'_, '_>) -> Option<Exit> {
    let (bytes, code) = fetch.at_rip(vcpu)?;
    let (len, kind) = match cr0_write(bytes.as_slice(), code)? {
        Cr0Write::Clts { len } => (len, CrAccessKind::Clts),
        Cr0Write::Lmsw { len, gpr } => {
            let value = vcpu::access::VcpuAccess::gpr(vcpu, gpr).ok()?;
            (len, CrAccessKind::Lmsw(value as u16))
        }
    };
    vcpu.soft.next_rip = Some(advance(vcpu.vmcb.rip(), len, code));
    Some(Exit::ControlRegister(CrAccess { cr: 0, kind }))
}

/// A MOV to (`write`) or from control register `n` (CR0 and CR4 writes,
/// CR8): the
/// GPR and the next RIP from the exit with decode assists and NRIP save,
/// else from the instruction (`None` if it is not that MOV: a CR0 write
/// intercept also fires for LMSW and CLTS).
fn mov_cr_exit(
    vcpu: &mut SvmVcpu<'_>,
    fetch: &mut Fetcher<'_, '_>,
    n: u8,
    write: bool,
    info1: u64,
) -> Option<Exit> {
    let gpr = if vcpu.soft.decode_assists && vcpu.soft.nrip_save && info1 & CR_MOV != 0 {
        vcpu.soft.next_rip = Some(vcpu.vmcb.next_rip());
        Gpr::from_number((info1 & 0xF) as u8)?
    } else {
        let (bytes, code) = fetch.at_rip(vcpu)?;
        let mov = mov_cr(bytes.as_slice(), code)?;
        if mov.cr != n || mov.to_cr != write {
            return None;
        }
        vcpu.soft.next_rip = Some(advance(vcpu.vmcb.rip(), mov.len, code));
        mov.gpr
    };
    let kind = if write {
        CrAccessKind::MovTo(gpr)
    } else {
        CrAccessKind::MovFrom(gpr)
    };
    Some(Exit::ControlRegister(CrAccess { cr: n, kind }))
}

/// Sets up for the next VMRUN the event whose delivery this exit cut
/// short (EXITINTINFO, APM Vol. 2, 15.7.2), and clears EVENTINJ otherwise.
///
/// A software interrupt (INTn), and #BP and #OF (INT3, INTO), are not
/// injected again: RIP is still on their instruction, which raises them
/// again when the guest resumes. An NMI keeps the IRET intercept on.
pub fn reinject_cut_short(vmcb: &mut Vmcb) {
    vmcb.set_event_injection(None);
    let Some(event) = EventInjection::decode(vmcb.exit_int_info()) else {
        return;
    };
    match event.kind {
        EventType::SoftwareInterrupt => return,
        EventType::Exception if matches!(event.vector, 3 | 4) => return,
        EventType::Nmi => vmcb.set_intercept(Intercept::Iret, true),
        EventType::Interrupt | EventType::Exception => {}
    }
    vmcb.set_event_injection(Some(event));
}

/// The 64-bit exit code an [`Exit::Unknown`] or [`Exit::EntryFailed`]
/// carried as `reason` (its low 32 bits): the negative codes come back
/// sign-extended.
pub fn widen(reason: u32) -> u64 {
    if reason >= 0xFFFF_FF00 {
        i64::from(reason as i32) as u64
    } else {
        u64::from(reason)
    }
}

/// The APM's name for exit code `raw` (appendix C).
pub fn exit_name(raw: u64) -> &'static str {
    const CR_READ: [&str; 16] = [
        "CR0 read",
        "CR1 read",
        "CR2 read",
        "CR3 read",
        "CR4 read",
        "CR5 read",
        "CR6 read",
        "CR7 read",
        "CR8 read",
        "CR9 read",
        "CR10 read",
        "CR11 read",
        "CR12 read",
        "CR13 read",
        "CR14 read",
        "CR15 read",
    ];
    const CR_WRITE: [&str; 16] = [
        "CR0 write",
        "CR1 write",
        "CR2 write",
        "CR3 write",
        "CR4 write",
        "CR5 write",
        "CR6 write",
        "CR7 write",
        "CR8 write",
        "CR9 write",
        "CR10 write",
        "CR11 write",
        "CR12 write",
        "CR13 write",
        "CR14 write",
        "CR15 write",
    ];
    match raw {
        0x00..=0x0F => CR_READ.get(raw as usize).copied().unwrap_or("CR read"),
        0x10..=0x1F => CR_WRITE
            .get((raw & 0xF) as usize)
            .copied()
            .unwrap_or("CR write"),
        0x20..=0x2F => "DR read",
        0x30..=0x3F => "DR write",
        0x40..=0x5F => "exception",
        code::INTR => "INTR",
        code::NMI => "NMI",
        code::SMI => "SMI",
        code::INIT => "INIT",
        code::VINTR => "VINTR",
        0x65 => "CR0 selective write",
        0x66 => "IDTR read",
        0x67 => "GDTR read",
        0x68 => "LDTR read",
        0x69 => "TR read",
        0x6A => "IDTR write",
        0x6B => "GDTR write",
        0x6C => "LDTR write",
        0x6D => "TR write",
        0x6E => "RDTSC",
        code::RDPMC => "RDPMC",
        0x70 => "PUSHF",
        0x71 => "POPF",
        code::CPUID => "CPUID",
        0x73 => "RSM",
        code::IRET => "IRET",
        0x75 => "INTn",
        code::INVD => "INVD",
        code::PAUSE => "PAUSE",
        code::HLT => "HLT",
        0x79 => "INVLPG",
        code::INVLPGA => "INVLPGA",
        code::IOIO => "IOIO",
        code::MSR => "MSR",
        code::TASK_SWITCH => "task switch",
        0x7E => "FERR_FREEZE",
        code::SHUTDOWN => "shutdown",
        code::VMRUN => "VMRUN",
        code::VMMCALL => "VMMCALL",
        code::VMLOAD => "VMLOAD",
        code::VMSAVE => "VMSAVE",
        code::STGI => "STGI",
        code::CLGI => "CLGI",
        code::SKINIT => "SKINIT",
        0x87 => "RDTSCP",
        0x88 => "ICEBP",
        code::WBINVD => "WBINVD",
        code::MONITOR => "MONITOR",
        code::MWAIT => "MWAIT",
        code::MWAIT_CONDITIONAL => "MWAIT (armed)",
        code::XSETBV => "XSETBV",
        0x8E => "RDPRU",
        0x8F => "EFER write trap",
        0x90..=0x9F => "CR write trap",
        0xA0 => "INVLPGB",
        0xA1 => "illegal INVLPGB",
        0xA2 => "INVPCID",
        0xA3 => "MCOMMIT",
        0xA4 => "TLBSYNC",
        code::NPF => "nested page fault",
        0x401 => "AVIC incomplete IPI",
        0x402 => "AVIC unaccelerated access",
        0x403 => "VMGEXIT",
        code::INVALID => "VMEXIT_INVALID",
        code::BUSY => "VMEXIT_BUSY",
        _ => "unknown",
    }
}

/// Why VMRUN refused the VMCB (exit code `raw`, EXITINFO1 `info1`), in
/// words: the consistency checks of APM Vol. 2, 15.5.1 that `vmcb`
/// fails, as far as they can be told from the VMCB alone.
pub fn entry_failure(vmcb: &Vmcb, raw: u64, info1: u64) -> String {
    const CR0_PE: u64 = 1;
    const CR0_NW: u64 = 1 << 29;
    const CR0_CD: u64 = 1 << 30;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const HIGH: u64 = 0xFFFF_FFFF_0000_0000;
    let (cr0, cr4, efer) = (vmcb.cr0(), vmcb.cr4(), vmcb.efer());
    let cs = vmcb.segment(SaveSegment::Cs).attrib;
    let long_paging = efer & EFER_LME != 0 && cr0 & CR0_PG != 0;
    let checks: [(bool, &str); 13] = [
        (efer & EFER_SVME == 0, "EFER.SVME is clear"),
        (
            cr0 & CR0_CD == 0 && cr0 & CR0_NW != 0,
            "CR0.NW is set without CR0.CD",
        ),
        (cr0 & HIGH != 0, "CR0 bits 63:32 are set"),
        (vmcb.cr3() >> 52 != 0, "CR3 bits 63:52 are set"),
        (cr4 & HIGH != 0, "CR4 bits 63:32 are set"),
        (vmcb.dr6() & HIGH != 0, "DR6 bits 63:32 are set"),
        (vmcb.dr7() & HIGH != 0, "DR7 bits 63:32 are set"),
        (efer & HIGH != 0, "EFER bits 63:32 are set"),
        (
            long_paging && cr4 & CR4_PAE == 0,
            "EFER.LME and CR0.PG without CR4.PAE",
        ),
        (
            long_paging && cr0 & CR0_PE == 0,
            "EFER.LME and CR0.PG without CR0.PE",
        ),
        (
            long_paging && cr4 & CR4_PAE != 0 && cs & (1 << 9) != 0 && cs & (1 << 10) != 0,
            "CS.L and CS.D both set in long mode",
        ),
        (
            !vmcb.intercepted(Intercept::Vmrun),
            "the VMRUN intercept is off",
        ),
        (vmcb.guest_asid() == 0, "the guest ASID is 0"),
    ];
    let mut out = String::new();
    let _ = write!(
        out,
        "VMRUN refused the VMCB ({}, EXITINFO1 {info1:#x})",
        exit_name(raw)
    );
    let mut found = false;
    for (fails, why) in checks {
        if fails {
            out.push_str(if found { "; " } else { ": " });
            out.push_str(why);
            found = true;
        }
    }
    if let Some(event) = vmcb.event_injection() {
        let bad = match event.kind {
            EventType::Exception => event.vector == 2 || event.vector > 31,
            EventType::Nmi => event.vector != 2,
            EventType::Interrupt | EventType::SoftwareInterrupt => false,
        };
        if bad {
            out.push_str(if found { "; " } else { ": " });
            let _ = write!(out, "EVENTINJ is not a valid event ({event:?})");
            found = true;
        }
    }
    if !found {
        out.push_str(
            ": none of the checks on the VMCB's own state fails (the permission maps' \
             or N_CR3's address beyond the CPU's physical address width, or a \
             reserved bit this CPU defines, remain)",
        );
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests;
