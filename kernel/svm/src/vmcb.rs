//! The virtual machine control block (APM Vol. 2, 15.5 and appendix B):
//! one 4 KiB page per vCPU, the control area at offset 0 (intercepts, the
//! permission maps, the exit information, event injection, nested paging)
//! and the guest's state-save area at 0x400. [`Vmcb`] lays it out exactly
//! (checked at compile time below) and gives typed accessors for every
//! field the backend uses; no raw offset leaves this module.
//!
//! VMCB clean bits (APM 15.15): where the CPU offers them (CPUID
//! 8000_000AH EDX bit 5), a set bit lets VMRUN keep the state of that
//! group cached from the previous VMRUN of this VMCB on this CPU. Every
//! setter here clears its field's bit, so the cached copy is never used
//! after a change; the kernel sets them all ([`Vmcb::mark_all_clean`])
//! after each #VMEXIT and clears them all ([`Vmcb::mark_all_dirty`]) when
//! the VMCB moves to another CPU. CPUs without the feature ignore them.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::mem::{offset_of, size_of};

/// A group of VMCB fields that one clean bit covers (APM 15.15.3, Table
/// 15-9 "VMCB Clean Field").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CleanGroup {
    /// The intercept vectors, TSC_OFFSET and the pause filter.
    Intercepts = 0,
    /// IOPM_BASE_PA and MSRPM_BASE_PA.
    Iopm = 1,
    /// The guest ASID.
    Asid = 2,
    /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING,
    /// V_INTR_VECTOR (offset 0x60).
    Tpr = 3,
    /// NP_ENABLE, N_CR3 and G_PAT.
    NestedPaging = 4,
    /// CR0, CR3, CR4 and EFER.
    ControlRegisters = 5,
    /// DR6 and DR7.
    DebugRegisters = 6,
    /// GDTR and IDTR.
    DescriptorTables = 7,
    /// CS, DS, SS and ES (selector, base, limit, attributes) and CPL.
    Segments = 8,
    /// CR2.
    Cr2 = 9,
    /// DBGCTL and the last-branch records.
    Lbr = 10,
    /// The AVIC fields.
    Avic = 11,
}

impl CleanGroup {
    /// Every group's bit: the defined part of the clean field.
    pub const ALL_BITS: u32 = (1 << 12) - 1;

    /// This group's bit in the clean field.
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// An intercept in the three general intercept vectors (APM appendix B,
/// Table B-1, offsets 0x0C, 0x10 and 0x14): the discriminant is
/// `32 * vector + bit`, vector 0 being the one at 0x0C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Intercept {
    /// Physical INTR (maskable interrupt).
    Intr = 0,
    /// Physical NMI.
    Nmi = 1,
    /// Physical SMI.
    Smi = 2,
    /// Physical INIT.
    Init = 3,
    /// Virtual INTR: the guest can take the virtual interrupt V_IRQ asks
    /// for (the interrupt window).
    Vintr = 4,
    /// Writes of CR0 that change bits other than TS and MP.
    Cr0SelectiveWrite = 5,
    /// SIDT.
    IdtrRead = 6,
    /// SGDT.
    GdtrRead = 7,
    /// SLDT.
    LdtrRead = 8,
    /// STR.
    TrRead = 9,
    /// LIDT.
    IdtrWrite = 10,
    /// LGDT.
    GdtrWrite = 11,
    /// LLDT.
    LdtrWrite = 12,
    /// LTR.
    TrWrite = 13,
    /// RDTSC.
    Rdtsc = 14,
    /// RDPMC.
    Rdpmc = 15,
    /// PUSHF.
    Pushf = 16,
    /// POPF.
    Popf = 17,
    /// CPUID.
    Cpuid = 18,
    /// RSM.
    Rsm = 19,
    /// IRET.
    Iret = 20,
    /// INTn.
    Intn = 21,
    /// INVD.
    Invd = 22,
    /// PAUSE (with the pause filter, once its count runs out).
    Pause = 23,
    /// HLT.
    Hlt = 24,
    /// INVLPG.
    Invlpg = 25,
    /// INVLPGA.
    Invlpga = 26,
    /// IN, OUT, INS, OUTS of the ports the I/O permission map selects.
    IoioProt = 27,
    /// RDMSR and WRMSR of the MSRs the MSR permission map selects.
    MsrProt = 28,
    /// Hardware task switches.
    TaskSwitch = 29,
    /// FERR_FREEZE.
    FerrFreeze = 30,
    /// Shutdown (a triple fault).
    Shutdown = 31,
    /// VMRUN (VMRUN refuses a VMCB without it).
    Vmrun = 32,
    /// VMMCALL.
    Vmmcall = 33,
    /// VMLOAD.
    Vmload = 34,
    /// VMSAVE.
    Vmsave = 35,
    /// STGI.
    Stgi = 36,
    /// CLGI.
    Clgi = 37,
    /// SKINIT.
    Skinit = 38,
    /// RDTSCP.
    Rdtscp = 39,
    /// ICEBP (INT1).
    Icebp = 40,
    /// WBINVD and WBNOINVD.
    Wbinvd = 41,
    /// MONITOR and MONITORX.
    Monitor = 42,
    /// MWAIT and MWAITX, unconditionally.
    Mwait = 43,
    /// MWAIT and MWAITX, if a monitor is armed.
    MwaitArmed = 44,
    /// XSETBV.
    Xsetbv = 45,
    /// RDPRU.
    Rdpru = 46,
    /// EFER writes, after the instruction (SEV-ES).
    EferWriteTrap = 47,
    /// INVLPGB (all forms).
    Invlpgb = 64,
    /// Illegally specified INVLPGB.
    InvlpgbIllegal = 65,
    /// INVPCID.
    Invpcid = 66,
    /// MCOMMIT.
    Mcommit = 67,
    /// TLBSYNC.
    Tlbsync = 68,
}

impl Intercept {
    /// Which vector (0: 0x0C, 1: 0x10, 2: 0x14) and bit.
    const fn place(self) -> (usize, u32) {
        let n = self as u8;
        ((n / 32) as usize, (n % 32) as u32)
    }
}

/// TLB_CONTROL (APM 15.16.1, Table B-1 offset 0x5C): what VMRUN flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TlbControl {
    /// Nothing.
    DoNothing = 0,
    /// Every TLB entry, of every ASID (every CPU has it).
    FlushAll = 1,
    /// This guest's (ASID's) entries (needs FlushByAsid, CPUID
    /// 8000_000AH EDX bit 6).
    FlushGuest = 3,
    /// This guest's non-global entries (needs FlushByAsid).
    FlushGuestNonGlobal = 7,
}

impl TlbControl {
    /// The value with raw encoding `raw`.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::DoNothing),
            1 => Some(Self::FlushAll),
            3 => Some(Self::FlushGuest),
            7 => Some(Self::FlushGuestNonGlobal),
            _ => None,
        }
    }
}

/// The kind of an event in EVENTINJ and EXITINTINFO (APM 15.20, Figure
/// 15-4: TYPE, bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// An external or virtual interrupt (INTR).
    Interrupt = 0,
    /// An NMI.
    Nmi = 2,
    /// An exception (fault or trap).
    Exception = 3,
    /// A software interrupt (INTn).
    SoftwareInterrupt = 4,
}

/// An event in the EVENTINJ / EXITINTINFO format (APM 15.20, Figure 15-4):
/// vector in bits 7:0, type in 10:8, EV (error code valid) 11, V 31, the
/// error code in 63:32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventInjection {
    /// The vector (2 for an NMI).
    pub vector: u8,
    /// The kind.
    pub kind: EventType,
    /// The error code pushed, for exceptions that push one.
    pub error_code: Option<u32>,
}

/// EVENTINJ / EXITINTINFO bit 31: the field holds an event.
const EVENT_VALID: u64 = 1 << 31;
/// EVENTINJ / EXITINTINFO bit 11: the error code is delivered.
const EVENT_ERROR_VALID: u64 = 1 << 11;

impl EventInjection {
    /// The field's value (with V set).
    pub const fn encode(self) -> u64 {
        let mut raw = EVENT_VALID | ((self.kind as u64) << 8) | self.vector as u64;
        if let Some(code) = self.error_code {
            raw |= EVENT_ERROR_VALID | ((code as u64) << 32);
        }
        raw
    }

    /// The event in a field's value: `None` when V is clear or the type
    /// is one the APM does not define.
    pub const fn decode(raw: u64) -> Option<Self> {
        if raw & EVENT_VALID == 0 {
            return None;
        }
        let kind = match (raw >> 8) & 7 {
            0 => EventType::Interrupt,
            2 => EventType::Nmi,
            3 => EventType::Exception,
            4 => EventType::SoftwareInterrupt,
            _ => return None,
        };
        let error_code = if raw & EVENT_ERROR_VALID != 0 {
            Some((raw >> 32) as u32)
        } else {
            None
        };
        Some(Self {
            vector: raw as u8,
            kind,
            error_code,
        })
    }
}

/// A segment register in the save area (APM appendix B, Table B-2): the
/// selector, the attributes in the VMCB's packed 12-bit form (see
/// [`attrib_from_access_rights`]), the limit in bytes and the base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct VmcbSegment {
    /// The selector.
    pub selector: u16,
    /// The attributes: bits 7:0 the descriptor's type, S, DPL and P
    /// (its bits 47:40), bits 11:8 its AVL, L, D/B and G (bits 55:52).
    pub attrib: u16,
    /// The limit in bytes (already scaled by G).
    pub limit: u32,
    /// The base address.
    pub base: u64,
}

const _: () = assert!(size_of::<VmcbSegment>() == 16);

/// The segment registers of the save area, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaveSegment {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS (loaded by VMLOAD, not VMRUN).
    Fs,
    /// GS (loaded by VMLOAD, not VMRUN).
    Gs,
    /// GDTR (limit and base only).
    Gdtr,
    /// LDTR (loaded by VMLOAD, not VMRUN).
    Ldtr,
    /// IDTR (limit and base only).
    Idtr,
    /// TR (loaded by VMLOAD, not VMRUN).
    Tr,
}

impl SaveSegment {
    /// The clean group the register belongs to; `None` for those VMRUN
    /// does not load (FS, GS, LDTR, TR: VMLOAD does).
    pub const fn clean_group(self) -> Option<CleanGroup> {
        match self {
            Self::Es | Self::Cs | Self::Ss | Self::Ds => Some(CleanGroup::Segments),
            Self::Gdtr | Self::Idtr => Some(CleanGroup::DescriptorTables),
            Self::Fs | Self::Gs | Self::Ldtr | Self::Tr => None,
        }
    }
}

/// The VMCB attributes of a segment whose access rights are in the VMX
/// layout that [`vcpu::access::SegmentState`] and the loader use (type,
/// S, DPL, P in bits 7:0; AVL, L, D/B, G in bits 15:12; bit 16
/// "unusable"). An unusable segment becomes 0 (not present).
pub const fn attrib_from_access_rights(access: u32) -> u16 {
    if access & ACCESS_UNUSABLE != 0 {
        return 0;
    }
    ((access & 0xFF) | ((access >> 4) & 0xF00)) as u16
}

/// The VMX-layout access rights of VMCB attributes `attrib`: the inverse
/// of [`attrib_from_access_rights`] for a present segment; a segment that
/// is not present (P clear) is reported unusable as well, which is what
/// the neutral layer checks before it uses one.
pub const fn access_rights_from_attrib(attrib: u16) -> u32 {
    let attrib = attrib as u32;
    let rights = (attrib & 0xFF) | ((attrib & 0xF00) << 4);
    if attrib & ATTRIB_P == 0 {
        rights | ACCESS_UNUSABLE
    } else {
        rights
    }
}

/// VMX access rights bit 16: the segment is unusable.
const ACCESS_UNUSABLE: u32 = 1 << 16;
/// Attribute bit 7: present.
const ATTRIB_P: u32 = 1 << 7;

/// The control area (APM appendix B, Table B-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct ControlArea {
    cr_intercepts: u32,
    dr_intercepts: u32,
    exception_intercepts: u32,
    intercepts: [u32; 3],
    _reserved0: [u8; 0x24],
    pause_filter_threshold: u16,
    pause_filter_count: u16,
    iopm_base_pa: u64,
    msrpm_base_pa: u64,
    tsc_offset: u64,
    guest_asid: u32,
    tlb_control: u8,
    _reserved1: [u8; 3],
    vintr: u64,
    interrupt_shadow: u64,
    exit_code: u64,
    exit_info1: u64,
    exit_info2: u64,
    exit_int_info: u64,
    np_control: u64,
    avic_apic_bar: u64,
    ghcb_pa: u64,
    event_inj: u64,
    n_cr3: u64,
    virt_ext: u64,
    clean: u32,
    _reserved2: u32,
    next_rip: u64,
    insn_len: u8,
    insn_bytes: [u8; 15],
    _reserved3: [u8; 0x400 - 0xE0],
}

/// The state-save area (APM appendix B, Table B-2), offsets from 0x400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct SaveArea {
    segments: [VmcbSegment; 10],
    _reserved0: [u8; 0x2B],
    cpl: u8,
    _reserved1: [u8; 4],
    efer: u64,
    _reserved2: [u8; 0x70],
    cr4: u64,
    cr3: u64,
    cr0: u64,
    dr7: u64,
    dr6: u64,
    rflags: u64,
    rip: u64,
    _reserved3: [u8; 0x58],
    rsp: u64,
    s_cet: u64,
    ssp: u64,
    isst_addr: u64,
    rax: u64,
    star: u64,
    lstar: u64,
    cstar: u64,
    sfmask: u64,
    kernel_gs_base: u64,
    sysenter_cs: u64,
    sysenter_esp: u64,
    sysenter_eip: u64,
    cr2: u64,
    _reserved4: [u8; 0x20],
    g_pat: u64,
    dbgctl: u64,
    br_from: u64,
    br_to: u64,
    last_excp_from: u64,
    last_excp_to: u64,
    _reserved5: [u8; 0xC00 - 0x298],
}

/// A virtual machine control block: one 4 KiB-aligned page (APM 15.5.1:
/// VMRUN takes its physical address in RAX, which must be page-aligned).
///
/// All zeros is a valid value of every field ([`Vmcb::new`]); the kernel
/// zeroes a frame and uses it in place.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Vmcb {
    control: ControlArea,
    save: SaveArea,
}

/// Where the save area starts.
pub const SAVE_AREA_OFFSET: usize = 0x400;

const _: () = {
    assert!(size_of::<Vmcb>() == 4096);
    assert!(size_of::<ControlArea>() == SAVE_AREA_OFFSET);
    assert!(offset_of!(Vmcb, save) == SAVE_AREA_OFFSET);
    // Control area (Table B-1).
    assert!(offset_of!(ControlArea, cr_intercepts) == 0x000);
    assert!(offset_of!(ControlArea, dr_intercepts) == 0x004);
    assert!(offset_of!(ControlArea, exception_intercepts) == 0x008);
    assert!(offset_of!(ControlArea, intercepts) == 0x00C);
    assert!(offset_of!(ControlArea, pause_filter_threshold) == 0x03C);
    assert!(offset_of!(ControlArea, pause_filter_count) == 0x03E);
    assert!(offset_of!(ControlArea, iopm_base_pa) == 0x040);
    assert!(offset_of!(ControlArea, msrpm_base_pa) == 0x048);
    assert!(offset_of!(ControlArea, tsc_offset) == 0x050);
    assert!(offset_of!(ControlArea, guest_asid) == 0x058);
    assert!(offset_of!(ControlArea, tlb_control) == 0x05C);
    assert!(offset_of!(ControlArea, vintr) == 0x060);
    assert!(offset_of!(ControlArea, interrupt_shadow) == 0x068);
    assert!(offset_of!(ControlArea, exit_code) == 0x070);
    assert!(offset_of!(ControlArea, exit_info1) == 0x078);
    assert!(offset_of!(ControlArea, exit_info2) == 0x080);
    assert!(offset_of!(ControlArea, exit_int_info) == 0x088);
    assert!(offset_of!(ControlArea, np_control) == 0x090);
    assert!(offset_of!(ControlArea, event_inj) == 0x0A8);
    assert!(offset_of!(ControlArea, n_cr3) == 0x0B0);
    assert!(offset_of!(ControlArea, virt_ext) == 0x0B8);
    assert!(offset_of!(ControlArea, clean) == 0x0C0);
    assert!(offset_of!(ControlArea, next_rip) == 0x0C8);
    assert!(offset_of!(ControlArea, insn_len) == 0x0D0);
    assert!(offset_of!(ControlArea, insn_bytes) == 0x0D1);
    // Save area (Table B-2), from 0x400.
    assert!(size_of::<SaveArea>() == 4096 - SAVE_AREA_OFFSET);
    assert!(offset_of!(SaveArea, segments) == 0x000);
    assert!(offset_of!(SaveArea, cpl) == 0x0CB);
    assert!(offset_of!(SaveArea, efer) == 0x0D0);
    assert!(offset_of!(SaveArea, cr4) == 0x148);
    assert!(offset_of!(SaveArea, cr3) == 0x150);
    assert!(offset_of!(SaveArea, cr0) == 0x158);
    assert!(offset_of!(SaveArea, dr7) == 0x160);
    assert!(offset_of!(SaveArea, dr6) == 0x168);
    assert!(offset_of!(SaveArea, rflags) == 0x170);
    assert!(offset_of!(SaveArea, rip) == 0x178);
    assert!(offset_of!(SaveArea, rsp) == 0x1D8);
    assert!(offset_of!(SaveArea, rax) == 0x1F8);
    assert!(offset_of!(SaveArea, star) == 0x200);
    assert!(offset_of!(SaveArea, lstar) == 0x208);
    assert!(offset_of!(SaveArea, cstar) == 0x210);
    assert!(offset_of!(SaveArea, sfmask) == 0x218);
    assert!(offset_of!(SaveArea, kernel_gs_base) == 0x220);
    assert!(offset_of!(SaveArea, sysenter_cs) == 0x228);
    assert!(offset_of!(SaveArea, sysenter_esp) == 0x230);
    assert!(offset_of!(SaveArea, sysenter_eip) == 0x238);
    assert!(offset_of!(SaveArea, cr2) == 0x240);
    assert!(offset_of!(SaveArea, g_pat) == 0x268);
    assert!(offset_of!(SaveArea, dbgctl) == 0x270);
    assert!(offset_of!(SaveArea, last_excp_to) == 0x290);
};

/// V_TPR: bits 7:0 of the field at 0x60 (only 3:0 are used).
const V_TPR_MASK: u64 = 0xFF;
/// V_IRQ: a virtual interrupt is pending.
const V_IRQ: u64 = 1 << 8;
/// V_INTR_PRIO: bits 19:16.
const V_INTR_PRIO_SHIFT: u32 = 16;
/// V_IGN_TPR: the virtual interrupt ignores V_TPR.
const V_IGN_TPR: u64 = 1 << 20;
/// V_INTR_MASKING: the guest's RFLAGS.IF and TPR mask only virtual
/// interrupts; physical ones follow the host's.
const V_INTR_MASKING: u64 = 1 << 24;
/// V_INTR_VECTOR: bits 39:32.
const V_INTR_VECTOR_SHIFT: u32 = 32;
/// NP_ENABLE: bit 0 of the field at 0x90.
const NP_ENABLE: u64 = 1;

/// A getter and a setter of one whole field, the setter marking `$group`
/// dirty (or none).
macro_rules! field {
    ($(#[$doc:meta])* $get:ident, $set:ident, $area:ident . $field:ident: $ty:ty, $group:expr) => {
        $(#[$doc])*
        #[inline]
        pub const fn $get(&self) -> $ty {
            self.$area.$field
        }

        #[doc = concat!("Sets [`Vmcb::", stringify!($get), "`].")]
        #[inline]
        pub fn $set(&mut self, value: $ty) {
            self.$area.$field = value;
            self.dirty($group);
        }
    };
}

impl Default for Vmcb {
    fn default() -> Self {
        Self::new()
    }
}

impl Vmcb {
    /// Every field zero: no intercepts (VMRUN would refuse it), every
    /// clean bit clear.
    pub const fn new() -> Self {
        Self {
            control: ControlArea {
                cr_intercepts: 0,
                dr_intercepts: 0,
                exception_intercepts: 0,
                intercepts: [0; 3],
                _reserved0: [0; 0x24],
                pause_filter_threshold: 0,
                pause_filter_count: 0,
                iopm_base_pa: 0,
                msrpm_base_pa: 0,
                tsc_offset: 0,
                guest_asid: 0,
                tlb_control: 0,
                _reserved1: [0; 3],
                vintr: 0,
                interrupt_shadow: 0,
                exit_code: 0,
                exit_info1: 0,
                exit_info2: 0,
                exit_int_info: 0,
                np_control: 0,
                avic_apic_bar: 0,
                ghcb_pa: 0,
                event_inj: 0,
                n_cr3: 0,
                virt_ext: 0,
                clean: 0,
                _reserved2: 0,
                next_rip: 0,
                insn_len: 0,
                insn_bytes: [0; 15],
                _reserved3: [0; 0x400 - 0xE0],
            },
            save: SaveArea {
                segments: [VmcbSegment {
                    selector: 0,
                    attrib: 0,
                    limit: 0,
                    base: 0,
                }; 10],
                _reserved0: [0; 0x2B],
                cpl: 0,
                _reserved1: [0; 4],
                efer: 0,
                _reserved2: [0; 0x70],
                cr4: 0,
                cr3: 0,
                cr0: 0,
                dr7: 0,
                dr6: 0,
                rflags: 0,
                rip: 0,
                _reserved3: [0; 0x58],
                rsp: 0,
                s_cet: 0,
                ssp: 0,
                isst_addr: 0,
                rax: 0,
                star: 0,
                lstar: 0,
                cstar: 0,
                sfmask: 0,
                kernel_gs_base: 0,
                sysenter_cs: 0,
                sysenter_esp: 0,
                sysenter_eip: 0,
                cr2: 0,
                _reserved4: [0; 0x20],
                g_pat: 0,
                dbgctl: 0,
                br_from: 0,
                br_to: 0,
                last_excp_from: 0,
                last_excp_to: 0,
                _reserved5: [0; 0xC00 - 0x298],
            },
        }
    }

    // -----------------------------------------------------------------
    // Clean bits

    #[inline]
    fn dirty(&mut self, group: Option<CleanGroup>) {
        if let Some(group) = group {
            self.control.clean &= !group.bit();
        }
    }

    /// The VMCB clean field.
    pub const fn clean_bits(&self) -> u32 {
        self.control.clean
    }

    /// Whether `group` is marked clean.
    pub const fn is_clean(&self, group: CleanGroup) -> bool {
        self.control.clean & group.bit() != 0
    }

    /// Marks `group` changed: the next VMRUN loads it from the VMCB.
    pub fn mark_dirty(&mut self, group: CleanGroup) {
        self.dirty(Some(group));
    }

    /// Marks every group changed: for a VMCB's first VMRUN, and whenever it
    /// runs on another CPU than last time (APM 15.15.2: the CPU may hold
    /// the cached copy of another VMCB at the same address otherwise).
    pub fn mark_all_dirty(&mut self) {
        self.control.clean = 0;
    }

    /// Marks every group unchanged, after a #VMEXIT: the CPU holds what
    /// the VMCB holds until a setter changes a field.
    pub fn mark_all_clean(&mut self) {
        self.control.clean = CleanGroup::ALL_BITS;
    }

    // -----------------------------------------------------------------
    // Intercepts

    /// The CR intercept vector: bit n reads of CRn, bit 16 + n writes.
    pub const fn cr_intercepts(&self) -> u32 {
        self.control.cr_intercepts
    }

    /// The DR intercept vector: bit n reads of DRn, bit 16 + n writes.
    pub const fn dr_intercepts(&self) -> u32 {
        self.control.dr_intercepts
    }

    /// The exception intercept vector: bit n exception vector n.
    pub const fn exception_intercepts(&self) -> u32 {
        self.control.exception_intercepts
    }

    /// General intercept vector `index` (0: offset 0x0C, 1: 0x10, 2:
    /// 0x14); 0 for any other index.
    pub fn intercept_vector(&self, index: usize) -> u32 {
        self.control.intercepts.get(index).copied().unwrap_or(0)
    }

    /// Intercepts reads (`write` false) or writes of CR`cr` (0..=15; others
    /// are ignored).
    pub fn set_cr_intercept(&mut self, cr: u8, write: bool, on: bool) {
        if let Some(bit) = rw_bit(cr, write) {
            set_bit(&mut self.control.cr_intercepts, bit, on);
            self.dirty(Some(CleanGroup::Intercepts));
        }
    }

    /// Intercepts reads (`write` false) or writes of DR`dr` (0..=15).
    pub fn set_dr_intercept(&mut self, dr: u8, write: bool, on: bool) {
        if let Some(bit) = rw_bit(dr, write) {
            set_bit(&mut self.control.dr_intercepts, bit, on);
            self.dirty(Some(CleanGroup::Intercepts));
        }
    }

    /// Intercepts exception `vector` (0..=31).
    pub fn set_exception_intercept(&mut self, vector: u8, on: bool) {
        if vector < 32 {
            set_bit(
                &mut self.control.exception_intercepts,
                u32::from(vector),
                on,
            );
            self.dirty(Some(CleanGroup::Intercepts));
        }
    }

    /// Whether `intercept` is on.
    pub fn intercepted(&self, intercept: Intercept) -> bool {
        let (index, bit) = intercept.place();
        self.intercept_vector(index) & (1 << bit) != 0
    }

    /// Turns `intercept` on or off.
    pub fn set_intercept(&mut self, intercept: Intercept, on: bool) {
        let (index, bit) = intercept.place();
        if let Some(vector) = self.control.intercepts.get_mut(index) {
            set_bit(vector, bit, on);
            self.dirty(Some(CleanGroup::Intercepts));
        }
    }

    field!(
        /// PAUSE_FILTER_THRESHOLD: the longest gap, in cycles, between two
        /// PAUSEs of one loop (where the CPU offers it).
        pause_filter_threshold, set_pause_filter_threshold,
        control.pause_filter_threshold: u16, Some(CleanGroup::Intercepts)
    );
    field!(
        /// PAUSE_FILTER_COUNT: how many PAUSEs before the PAUSE intercept
        /// exits (0: every PAUSE).
        pause_filter_count, set_pause_filter_count,
        control.pause_filter_count: u16, Some(CleanGroup::Intercepts)
    );
    field!(
        /// IOPM_BASE_PA: the physical address of the 12 KiB I/O
        /// permission map.
        iopm_base_pa, set_iopm_base_pa, control.iopm_base_pa: u64, Some(CleanGroup::Iopm)
    );
    field!(
        /// MSRPM_BASE_PA: the physical address of the 8 KiB MSR permission
        /// map.
        msrpm_base_pa, set_msrpm_base_pa, control.msrpm_base_pa: u64, Some(CleanGroup::Iopm)
    );
    field!(
        /// TSC_OFFSET: what the guest's TSC adds to the host's.
        tsc_offset, set_tsc_offset, control.tsc_offset: u64, Some(CleanGroup::Intercepts)
    );
    field!(
        /// The guest's ASID (not 0, which is the host's).
        guest_asid, set_guest_asid, control.guest_asid: u32, Some(CleanGroup::Asid)
    );

    /// TLB_CONTROL; `None` for an encoding the APM does not define.
    pub const fn tlb_control(&self) -> Option<TlbControl> {
        TlbControl::from_raw(self.control.tlb_control)
    }

    /// Sets TLB_CONTROL (no clean bit: VMRUN always reads it).
    pub fn set_tlb_control(&mut self, value: TlbControl) {
        self.control.tlb_control = value as u8;
    }

    // -----------------------------------------------------------------
    // Virtual interrupts (offset 0x60)

    /// The whole field at 0x60 (V_TPR, V_IRQ, ..., V_INTR_VECTOR).
    pub const fn vintr_control(&self) -> u64 {
        self.control.vintr
    }

    fn set_vintr_bits(&mut self, mask: u64, value: u64) {
        self.control.vintr = (self.control.vintr & !mask) | (value & mask);
        self.dirty(Some(CleanGroup::Tpr));
    }

    /// V_TPR: the guest's virtual TPR (CR8).
    pub const fn v_tpr(&self) -> u8 {
        (self.control.vintr & V_TPR_MASK) as u8
    }

    /// Sets V_TPR.
    pub fn set_v_tpr(&mut self, tpr: u8) {
        self.set_vintr_bits(V_TPR_MASK, u64::from(tpr));
    }

    /// V_IRQ: a virtual interrupt is pending.
    pub const fn v_irq(&self) -> bool {
        self.control.vintr & V_IRQ != 0
    }

    /// Sets V_IRQ.
    pub fn set_v_irq(&mut self, on: bool) {
        self.set_vintr_bits(V_IRQ, if on { V_IRQ } else { 0 });
    }

    /// V_INTR_PRIO: the pending virtual interrupt's priority (0..=15).
    pub const fn v_intr_prio(&self) -> u8 {
        ((self.control.vintr >> V_INTR_PRIO_SHIFT) & 0xF) as u8
    }

    /// Sets V_INTR_PRIO (the low four bits of `prio`).
    pub fn set_v_intr_prio(&mut self, prio: u8) {
        self.set_vintr_bits(
            0xF << V_INTR_PRIO_SHIFT,
            u64::from(prio & 0xF) << V_INTR_PRIO_SHIFT,
        );
    }

    /// V_IGN_TPR: the pending virtual interrupt ignores V_TPR.
    pub const fn v_ign_tpr(&self) -> bool {
        self.control.vintr & V_IGN_TPR != 0
    }

    /// Sets V_IGN_TPR.
    pub fn set_v_ign_tpr(&mut self, on: bool) {
        self.set_vintr_bits(V_IGN_TPR, if on { V_IGN_TPR } else { 0 });
    }

    /// V_INTR_MASKING: the guest's RFLAGS.IF masks only virtual
    /// interrupts, and its CR8 writes go to V_TPR (APM 15.21.1).
    pub const fn v_intr_masking(&self) -> bool {
        self.control.vintr & V_INTR_MASKING != 0
    }

    /// Sets V_INTR_MASKING.
    pub fn set_v_intr_masking(&mut self, on: bool) {
        self.set_vintr_bits(V_INTR_MASKING, if on { V_INTR_MASKING } else { 0 });
    }

    /// V_INTR_VECTOR: the vector a virtual interrupt delivers.
    pub const fn v_intr_vector(&self) -> u8 {
        (self.control.vintr >> V_INTR_VECTOR_SHIFT) as u8
    }

    /// Sets V_INTR_VECTOR.
    pub fn set_v_intr_vector(&mut self, vector: u8) {
        self.set_vintr_bits(
            0xFF << V_INTR_VECTOR_SHIFT,
            u64::from(vector) << V_INTR_VECTOR_SHIFT,
        );
    }

    /// INTERRUPT_SHADOW (bit 0 at 0x68): the guest is in an STI or MOV SS
    /// shadow.
    pub const fn interrupt_shadow(&self) -> bool {
        self.control.interrupt_shadow & 1 != 0
    }

    /// Sets INTERRUPT_SHADOW (no clean bit).
    pub fn set_interrupt_shadow(&mut self, on: bool) {
        set_bit64(&mut self.control.interrupt_shadow, 0, on);
    }

    // -----------------------------------------------------------------
    // Exit information (written by #VMEXIT; the setters are for tests and
    // for clearing)

    field!(
        /// EXITCODE: why the guest exited (APM appendix C); -1 (all ones)
        /// is VMEXIT_INVALID, a VMRUN that refused the VMCB.
        exit_code, set_exit_code, control.exit_code: u64, None
    );
    field!(
        /// EXITINFO1: the exit's first piece of information.
        exit_info1, set_exit_info1, control.exit_info1: u64, None
    );
    field!(
        /// EXITINFO2: the exit's second piece of information.
        exit_info2, set_exit_info2, control.exit_info2: u64, None
    );
    field!(
        /// EXITINTINFO: an event whose delivery the exit cut short, in the
        /// EVENTINJ format ([`EventInjection::decode`]).
        exit_int_info, set_exit_int_info, control.exit_int_info: u64, None
    );
    field!(
        /// nRIP: the next instruction's RIP, for instruction intercepts,
        /// where the CPU has NRIP save (CPUID 8000_000AH EDX bit 3).
        next_rip, set_next_rip, control.next_rip: u64, None
    );

    /// The guest instruction bytes a nested page fault or #PF intercept
    /// fetched, where the CPU has decode assists (at most 15).
    pub fn guest_instruction_bytes(&self) -> &[u8] {
        let len = usize::from(self.control.insn_len).min(15);
        self.control.insn_bytes.get(..len).unwrap_or(&[])
    }

    // -----------------------------------------------------------------
    // Nested paging and event injection

    /// NP_ENABLE.
    pub const fn np_enable(&self) -> bool {
        self.control.np_control & NP_ENABLE != 0
    }

    /// Sets NP_ENABLE.
    pub fn set_np_enable(&mut self, on: bool) {
        set_bit64(&mut self.control.np_control, 0, on);
        self.dirty(Some(CleanGroup::NestedPaging));
    }

    field!(
        /// N_CR3: the nested page tables' root.
        n_cr3, set_n_cr3, control.n_cr3: u64, Some(CleanGroup::NestedPaging)
    );
    field!(
        /// EVENTINJ, raw: the event VMRUN delivers into the guest.
        event_injection_raw, set_event_injection_raw, control.event_inj: u64, None
    );

    /// The event set up in EVENTINJ, if any.
    pub const fn event_injection(&self) -> Option<EventInjection> {
        EventInjection::decode(self.control.event_inj)
    }

    /// Sets EVENTINJ to `event`, or clears it (no clean bit: VMRUN always
    /// reads it).
    pub fn set_event_injection(&mut self, event: Option<EventInjection>) {
        self.control.event_inj = match event {
            Some(event) => event.encode(),
            None => 0,
        };
    }

    // -----------------------------------------------------------------
    // Save area

    /// A segment register.
    pub fn segment(&self, seg: SaveSegment) -> VmcbSegment {
        self.save
            .segments
            .get(seg as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Sets a segment register.
    pub fn set_segment(&mut self, seg: SaveSegment, value: VmcbSegment) {
        if let Some(slot) = self.save.segments.get_mut(seg as usize) {
            *slot = value;
            self.dirty(seg.clean_group());
        }
    }

    field!(
        /// CPL: the guest's privilege level (VMRUN takes it from here, not
        /// from SS.DPL).
        cpl, set_cpl, save.cpl: u8, Some(CleanGroup::Segments)
    );
    field!(
        /// EFER as the hardware runs the guest (SVME set).
        efer, set_efer, save.efer: u64, Some(CleanGroup::ControlRegisters)
    );
    field!(
        /// CR4.
        cr4, set_cr4, save.cr4: u64, Some(CleanGroup::ControlRegisters)
    );
    field!(
        /// CR3.
        cr3, set_cr3, save.cr3: u64, Some(CleanGroup::ControlRegisters)
    );
    field!(
        /// CR0.
        cr0, set_cr0, save.cr0: u64, Some(CleanGroup::ControlRegisters)
    );
    field!(
        /// DR7.
        dr7, set_dr7, save.dr7: u64, Some(CleanGroup::DebugRegisters)
    );
    field!(
        /// DR6.
        dr6, set_dr6, save.dr6: u64, Some(CleanGroup::DebugRegisters)
    );
    field!(
        /// RFLAGS.
        rflags, set_rflags, save.rflags: u64, None
    );
    field!(
        /// RIP.
        rip, set_rip, save.rip: u64, None
    );
    field!(
        /// RSP.
        rsp, set_rsp, save.rsp: u64, None
    );
    field!(
        /// RAX.
        rax, set_rax, save.rax: u64, None
    );
    field!(
        /// STAR (VMLOAD/VMSAVE state).
        star, set_star, save.star: u64, None
    );
    field!(
        /// LSTAR (VMLOAD/VMSAVE state).
        lstar, set_lstar, save.lstar: u64, None
    );
    field!(
        /// CSTAR (VMLOAD/VMSAVE state).
        cstar, set_cstar, save.cstar: u64, None
    );
    field!(
        /// SFMASK (VMLOAD/VMSAVE state).
        sfmask, set_sfmask, save.sfmask: u64, None
    );
    field!(
        /// KernelGsBase (VMLOAD/VMSAVE state).
        kernel_gs_base, set_kernel_gs_base, save.kernel_gs_base: u64, None
    );
    field!(
        /// SYSENTER_CS (VMLOAD/VMSAVE state).
        sysenter_cs, set_sysenter_cs, save.sysenter_cs: u64, None
    );
    field!(
        /// SYSENTER_ESP (VMLOAD/VMSAVE state).
        sysenter_esp, set_sysenter_esp, save.sysenter_esp: u64, None
    );
    field!(
        /// SYSENTER_EIP (VMLOAD/VMSAVE state).
        sysenter_eip, set_sysenter_eip, save.sysenter_eip: u64, None
    );
    field!(
        /// CR2.
        cr2, set_cr2, save.cr2: u64, Some(CleanGroup::Cr2)
    );
    field!(
        /// G_PAT: the guest's PAT with nested paging.
        g_pat, set_g_pat, save.g_pat: u64, Some(CleanGroup::NestedPaging)
    );
    field!(
        /// DBGCTL (with LBR virtualization).
        dbgctl, set_dbgctl, save.dbgctl: u64, Some(CleanGroup::Lbr)
    );
}

/// The bit of a read (`n`) or write (`16 + n`) intercept of register `n`.
fn rw_bit(n: u8, write: bool) -> Option<u32> {
    (n < 16).then_some(u32::from(n) | if write { 16 } else { 0 })
}

fn set_bit(word: &mut u32, bit: u32, on: bool) {
    if on {
        *word |= 1 << (bit & 31);
    } else {
        *word &= !(1 << (bit & 31));
    }
}

fn set_bit64(word: &mut u64, bit: u32, on: bool) {
    if on {
        *word |= 1 << (bit & 63);
    } else {
        *word &= !(1 << (bit & 63));
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    /// The bytes of `vmcb` at `offset`, as the CPU reads them.
    fn bytes_at(vmcb: &Vmcb, offset: usize, len: usize) -> Vec<u8> {
        // SAFETY: `Vmcb` is plain old data of 4096 bytes with no padding
        // (every gap is an explicit reserved array), and the slice lives
        // no longer than the borrow of `vmcb`.
        let all = unsafe {
            core::slice::from_raw_parts((vmcb as *const Vmcb).cast::<u8>(), size_of::<Vmcb>())
        };
        all[offset..offset + len].to_vec()
    }

    fn u64_at(vmcb: &Vmcb, offset: usize) -> u64 {
        u64::from_le_bytes(bytes_at(vmcb, offset, 8).try_into().unwrap())
    }

    #[test]
    fn fields_land_where_the_apm_puts_them() {
        let mut v = Vmcb::new();
        assert_eq!(core::mem::align_of::<Vmcb>(), 4096);
        v.set_exit_code(0x400);
        v.set_exit_info2(0xDEAD_B000);
        v.set_n_cr3(0x1234_5000);
        v.set_rip(0xFFFF_8000_0000_1000);
        v.set_rax(7);
        v.set_g_pat(0x0007_0406_0007_0406);
        v.set_cpl(3);
        v.set_segment(
            SaveSegment::Tr,
            VmcbSegment {
                selector: 0x28,
                attrib: 0x8B,
                limit: 0x67,
                base: 0xABCD,
            },
        );
        assert_eq!(u64_at(&v, 0x070), 0x400);
        assert_eq!(u64_at(&v, 0x080), 0xDEAD_B000);
        assert_eq!(u64_at(&v, 0x0B0), 0x1234_5000);
        assert_eq!(u64_at(&v, 0x400 + 0x178), 0xFFFF_8000_0000_1000);
        assert_eq!(u64_at(&v, 0x400 + 0x1F8), 7);
        assert_eq!(u64_at(&v, 0x400 + 0x268), 0x0007_0406_0007_0406);
        assert_eq!(bytes_at(&v, 0x400 + 0xCB, 1), [3]);
        // TR is the tenth segment: selector, attrib, limit, base.
        assert_eq!(
            bytes_at(&v, 0x400 + 0x90, 16),
            [0x28, 0, 0x8B, 0, 0x67, 0, 0, 0, 0xCD, 0xAB, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn intercepts_set_their_vector_bits() {
        let mut v = Vmcb::new();
        v.set_intercept(Intercept::Intr, true);
        v.set_intercept(Intercept::Shutdown, true);
        v.set_intercept(Intercept::Vmrun, true);
        v.set_intercept(Intercept::Xsetbv, true);
        v.set_intercept(Intercept::Invpcid, true);
        assert_eq!(u64_at(&v, 0x0C) as u32, 0x8000_0001);
        assert_eq!(u64_at(&v, 0x10) as u32, 1 | (1 << 13));
        assert_eq!(u64_at(&v, 0x14) as u32, 1 << 2);
        assert!(v.intercepted(Intercept::Xsetbv));
        v.set_intercept(Intercept::Xsetbv, false);
        assert!(!v.intercepted(Intercept::Xsetbv));
        v.set_cr_intercept(8, true, true);
        v.set_cr_intercept(8, false, true);
        v.set_cr_intercept(16, true, true);
        assert_eq!(v.cr_intercepts(), (1 << 8) | (1 << 24));
        v.set_dr_intercept(7, true, true);
        assert_eq!(v.dr_intercepts(), 1 << 23);
        v.set_exception_intercept(18, true);
        v.set_exception_intercept(32, true);
        assert_eq!(v.exception_intercepts(), 1 << 18);
        assert_eq!(v.intercept_vector(3), 0);
    }

    #[test]
    fn setters_mark_their_group_dirty() {
        let mut v = Vmcb::new();
        v.mark_all_clean();
        assert_eq!(v.clean_bits(), 0xFFF);
        v.set_rip(1);
        v.set_rax(1);
        v.set_event_injection(None);
        v.set_exit_code(1);
        v.set_tlb_control(TlbControl::FlushAll);
        v.set_interrupt_shadow(true);
        assert_eq!(v.clean_bits(), 0xFFF, "always-read fields have no bit");
        type Setter = fn(&mut Vmcb);
        let cases: [(Setter, CleanGroup); 13] = [
            (
                |v| v.set_intercept(Intercept::Hlt, true),
                CleanGroup::Intercepts,
            ),
            (|v| v.set_tsc_offset(5), CleanGroup::Intercepts),
            (|v| v.set_msrpm_base_pa(0x1000), CleanGroup::Iopm),
            (|v| v.set_guest_asid(1), CleanGroup::Asid),
            (|v| v.set_v_irq(true), CleanGroup::Tpr),
            (|v| v.set_n_cr3(0x1000), CleanGroup::NestedPaging),
            (|v| v.set_g_pat(0), CleanGroup::NestedPaging),
            (|v| v.set_efer(0x1000), CleanGroup::ControlRegisters),
            (|v| v.set_dr7(0x400), CleanGroup::DebugRegisters),
            (
                |v| v.set_segment(SaveSegment::Idtr, VmcbSegment::default()),
                CleanGroup::DescriptorTables,
            ),
            (
                |v| v.set_segment(SaveSegment::Cs, VmcbSegment::default()),
                CleanGroup::Segments,
            ),
            (|v| v.set_cr2(1), CleanGroup::Cr2),
            (|v| v.set_dbgctl(1), CleanGroup::Lbr),
        ];
        for (set, group) in cases {
            v.mark_all_clean();
            set(&mut v);
            assert_eq!(v.clean_bits(), 0xFFF & !group.bit(), "{group:?}");
            assert!(!v.is_clean(group));
        }
        // FS, GS, LDTR and TR are VMLOAD's: no bit.
        v.mark_all_clean();
        v.set_segment(SaveSegment::Fs, VmcbSegment::default());
        assert_eq!(v.clean_bits(), 0xFFF);
        v.mark_all_dirty();
        assert_eq!(v.clean_bits(), 0);
    }

    #[test]
    fn virtual_interrupt_fields_share_one_word() {
        let mut v = Vmcb::new();
        v.set_v_tpr(0x9);
        v.set_v_irq(true);
        v.set_v_intr_prio(0xF);
        v.set_v_ign_tpr(true);
        v.set_v_intr_masking(true);
        v.set_v_intr_vector(0xEC);
        assert_eq!(u64_at(&v, 0x60), 0xEC_011F_0109);
        assert_eq!(
            (v.v_tpr(), v.v_irq(), v.v_intr_prio(), v.v_ign_tpr()),
            (9, true, 0xF, true)
        );
        assert_eq!((v.v_intr_masking(), v.v_intr_vector()), (true, 0xEC));
        v.set_v_irq(false);
        assert_eq!(u64_at(&v, 0x60), 0xEC_011F_0009);
    }

    #[test]
    fn events_encode_as_figure_15_4() {
        let gp = EventInjection {
            vector: 13,
            kind: EventType::Exception,
            error_code: Some(0x18),
        };
        assert_eq!(gp.encode(), 0x18_8000_0B0D);
        assert_eq!(EventInjection::decode(gp.encode()), Some(gp));
        let nmi = EventInjection {
            vector: 2,
            kind: EventType::Nmi,
            error_code: None,
        };
        assert_eq!(nmi.encode(), 0x8000_0202);
        assert_eq!(EventInjection::decode(0x8000_0430).unwrap().kind, {
            EventType::SoftwareInterrupt
        });
        // Not valid, or a reserved type.
        assert_eq!(EventInjection::decode(0x0000_0B0D), None);
        assert_eq!(EventInjection::decode(0x8000_0130), None);
        let mut v = Vmcb::new();
        v.set_event_injection(Some(gp));
        assert_eq!(u64_at(&v, 0xA8), 0x18_8000_0B0D);
        assert_eq!(v.event_injection(), Some(gp));
    }

    #[test]
    fn attributes_convert_both_ways() {
        for (vmx, vmcb) in [
            (0xA09B, 0xA9B),
            (0xC093, 0xC93),
            (0x009B, 0x09B),
            (0x008B, 0x08B),
        ] {
            assert_eq!(attrib_from_access_rights(vmx), vmcb);
            assert_eq!(access_rights_from_attrib(vmcb), vmx);
        }
        assert_eq!(attrib_from_access_rights(1 << 16), 0);
        assert_eq!(access_rights_from_attrib(0), 1 << 16);
        assert_eq!(access_rights_from_attrib(0x013), 0x013 | (1 << 16));
    }

    #[test]
    fn tlb_control_and_instruction_bytes() {
        let mut v = Vmcb::new();
        assert_eq!(v.tlb_control(), Some(TlbControl::DoNothing));
        v.set_tlb_control(TlbControl::FlushGuestNonGlobal);
        assert_eq!(bytes_at(&v, 0x5C, 1), [7]);
        assert_eq!(TlbControl::from_raw(2), None);
        assert!(v.guest_instruction_bytes().is_empty());
        v.control.insn_len = 200;
        v.control.insn_bytes[14] = 0x90;
        assert_eq!(v.guest_instruction_bytes().len(), 15);
    }
}
