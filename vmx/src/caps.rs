//! VT-x capabilities: the raw capability MSR values, their decoding into
//! [`VmxCapabilities`], the check of what Ferrovisor needs, and the
//! capability report lines. Pure: nothing here reads an MSR.
//!
//! The MSR formats are SDM Vol. 3D, Appendix A ("VMX Capability Reporting
//! Facility"); section numbers below are of that appendix.

use core::fmt;

use bitflags::bitflags;

use crate::controls::{
    AllowedSettings, EntryControls, ExitControls, PinBasedControls, PrimaryControls,
    SecondaryControls,
};

/// IA32_VMX_BASIC bit 55: the TRUE control MSRs exist (A.1).
const BASIC_TRUE_CONTROLS: u64 = 1 << 55;

/// The values of the VT-x capability MSRs, as read from one CPU.
///
/// The first eleven exist on every CPU with CPUID.1:ECX.VMX = 1; the others
/// exist only where the bits of the earlier ones say so, and are `None`
/// where they do not (see the `*_exist(s)` functions, which
/// [`crate::instructions::read_vmx_msrs`] follows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawVmxMsrs {
    /// IA32_VMX_BASIC (480H).
    pub basic: u64,
    /// IA32_VMX_PINBASED_CTLS (481H).
    pub pinbased_ctls: u64,
    /// IA32_VMX_PROCBASED_CTLS (482H).
    pub procbased_ctls: u64,
    /// IA32_VMX_EXIT_CTLS (483H).
    pub exit_ctls: u64,
    /// IA32_VMX_ENTRY_CTLS (484H).
    pub entry_ctls: u64,
    /// IA32_VMX_MISC (485H).
    pub misc: u64,
    /// IA32_VMX_CR0_FIXED0 (486H).
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1 (487H).
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0 (488H).
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1 (489H).
    pub cr4_fixed1: u64,
    /// IA32_VMX_VMCS_ENUM (48AH).
    pub vmcs_enum: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (48BH); `None` where
    /// [`Self::procbased_ctls2_exists`] is false.
    pub procbased_ctls2: Option<u64>,
    /// IA32_VMX_EPT_VPID_CAP (48CH); `None` where
    /// [`Self::ept_vpid_cap_exists`] is false.
    pub ept_vpid_cap: Option<u64>,
    /// IA32_VMX_TRUE_{PINBASED,PROCBASED,EXIT,ENTRY}_CTLS (48DH-490H);
    /// `None` where [`Self::true_controls_exist`] is false.
    pub true_ctls: Option<TrueControlMsrs>,
    /// IA32_VMX_VMFUNC (491H); `None` where [`Self::vmfunc_exists`] is false.
    pub vmfunc: Option<u64>,
}

/// The four TRUE control MSRs, which exist together or not at all (A.1,
/// A.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrueControlMsrs {
    /// IA32_VMX_TRUE_PINBASED_CTLS (48DH).
    pub pinbased: u64,
    /// IA32_VMX_TRUE_PROCBASED_CTLS (48EH).
    pub procbased: u64,
    /// IA32_VMX_TRUE_EXIT_CTLS (48FH).
    pub exit: u64,
    /// IA32_VMX_TRUE_ENTRY_CTLS (490H).
    pub entry: u64,
}

impl RawVmxMsrs {
    /// The TRUE control MSRs exist iff IA32_VMX_BASIC bit 55 is 1 (A.1).
    pub const fn true_controls_exist(basic: u64) -> bool {
        basic & BASIC_TRUE_CONTROLS != 0
    }

    /// IA32_VMX_PROCBASED_CTLS2 exists iff IA32_VMX_PROCBASED_CTLS bit 63 is
    /// 1, i.e. "activate secondary controls" may be 1 (A.3.3).
    pub const fn procbased_ctls2_exists(procbased_ctls: u64) -> bool {
        crate::controls::control_allowed(procbased_ctls, 31)
    }

    /// IA32_VMX_EPT_VPID_CAP exists iff IA32_VMX_PROCBASED_CTLS2 bit 33 or
    /// bit 37 is 1, i.e. "enable EPT" or "enable VPID" may be 1 (A.10). Only
    /// meaningful where IA32_VMX_PROCBASED_CTLS2 exists.
    pub const fn ept_vpid_cap_exists(procbased_ctls2: u64) -> bool {
        crate::controls::control_allowed(procbased_ctls2, 1)
            || crate::controls::control_allowed(procbased_ctls2, 5)
    }

    /// IA32_VMX_VMFUNC exists iff IA32_VMX_PROCBASED_CTLS2 bit 45 is 1, i.e.
    /// "enable VM functions" may be 1 (A.11). Only meaningful where
    /// IA32_VMX_PROCBASED_CTLS2 exists.
    pub const fn vmfunc_exists(procbased_ctls2: u64) -> bool {
        crate::controls::control_allowed(procbased_ctls2, 13)
    }
}

/// The memory type the processor uses to access the VMCS and the structures
/// it points to (IA32_VMX_BASIC bits 53:50, A.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmcsMemoryType {
    /// 0: uncacheable.
    Uncacheable,
    /// 6: write-back.
    WriteBack,
    /// Any other value (not used by processors to date).
    Other(u8),
}

/// IA32_VMX_BASIC decoded (A.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxBasic {
    /// Bits 30:0: the VMCS revision identifier, written to the first 31 bits
    /// of the VMXON region and of every VMCS.
    pub revision_id: u32,
    /// Bits 44:32: bytes to allocate for the VMXON region and each VMCS
    /// (1..=4096).
    pub region_size: u16,
    /// Bit 48: VMXON region, VMCS and referenced structures must lie below
    /// 4 GiB.
    pub addresses_limited_to_32_bits: bool,
    /// Bit 49: dual-monitor treatment of SMIs and SMM is supported.
    pub dual_monitor_smm: bool,
    /// Bits 53:50: memory type for VMCS accesses.
    pub vmcs_memory_type: VmcsMemoryType,
    /// Bit 54: VM exits for INS/OUTS report instruction information.
    pub ins_outs_exit_information: bool,
    /// Bit 55: the TRUE control MSRs exist (default1 controls may be 0).
    pub true_controls: bool,
}

impl VmxBasic {
    /// Decodes IA32_VMX_BASIC.
    pub const fn decode(raw: u64) -> Self {
        Self {
            revision_id: (raw & 0x7FFF_FFFF) as u32,
            region_size: ((raw >> 32) & 0x1FFF) as u16,
            addresses_limited_to_32_bits: raw & (1 << 48) != 0,
            dual_monitor_smm: raw & (1 << 49) != 0,
            vmcs_memory_type: match (raw >> 50) & 0xF {
                0 => VmcsMemoryType::Uncacheable,
                6 => VmcsMemoryType::WriteBack,
                other => VmcsMemoryType::Other(other as u8),
            },
            ins_outs_exit_information: raw & (1 << 54) != 0,
            true_controls: RawVmxMsrs::true_controls_exist(raw),
        }
    }
}

/// IA32_VMX_MISC decoded (A.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxMisc {
    /// Bits 4:0: the VMX-preemption timer counts down by one every time bit
    /// X of the TSC changes, i.e. once every 2^X TSC cycles.
    pub preemption_timer_rate: u8,
    /// Bit 5: VM exits store IA32_EFER.LMA into the "IA-32e mode guest"
    /// entry control (1 on every CPU with unrestricted guest).
    pub exit_stores_efer_lma: bool,
    /// Bit 6: VM entry to the HLT activity state is supported.
    pub activity_hlt: bool,
    /// Bit 7: VM entry to the shutdown activity state is supported.
    pub activity_shutdown: bool,
    /// Bit 8: VM entry to the wait-for-SIPI activity state is supported.
    pub activity_wait_for_sipi: bool,
    /// Bits 24:16: number of CR3-target values.
    pub cr3_targets: u16,
    /// Bits 27:25 as a count: the recommended most entries in each MSR
    /// load/store list, 512 * (N + 1).
    pub max_msr_list_entries: u32,
    /// Bit 29: VMWRITE may write any VMCS field, exit-information fields
    /// included.
    pub vmwrite_any_field: bool,
    /// Bit 30: VM entry may inject a software interrupt or exception with
    /// instruction length 0.
    pub inject_zero_length_instructions: bool,
    /// Bits 63:32: the MSEG revision identifier.
    pub mseg_revision_id: u32,
}

impl VmxMisc {
    /// Decodes IA32_VMX_MISC.
    pub const fn decode(raw: u64) -> Self {
        Self {
            preemption_timer_rate: (raw & 0x1F) as u8,
            exit_stores_efer_lma: raw & (1 << 5) != 0,
            activity_hlt: raw & (1 << 6) != 0,
            activity_shutdown: raw & (1 << 7) != 0,
            activity_wait_for_sipi: raw & (1 << 8) != 0,
            cr3_targets: ((raw >> 16) & 0x1FF) as u16,
            max_msr_list_entries: 512 * (((raw >> 25) & 0x7) as u32 + 1),
            vmwrite_any_field: raw & (1 << 29) != 0,
            inject_zero_length_instructions: raw & (1 << 30) != 0,
            mseg_revision_id: (raw >> 32) as u32,
        }
    }
}

/// The bits of CR0 or CR4 that VMX operation fixes, from the
/// IA32_VMX_CRn_FIXED0/FIXED1 pair (A.7, A.8): a bit that is 1 in FIXED0 must
/// be 1; a bit that is 0 in FIXED1 must be 0. VMXON checks them (SDM
/// Vol. 3C, 23.8 "Restrictions on VMX Operation").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedBits {
    /// IA32_VMX_CRn_FIXED0.
    pub fixed0: u64,
    /// IA32_VMX_CRn_FIXED1.
    pub fixed1: u64,
}

impl FixedBits {
    /// Bits that must be 1.
    pub const fn must_be_one(self) -> u64 {
        self.fixed0
    }

    /// Bits that must be 0.
    pub const fn must_be_zero(self) -> u64 {
        !self.fixed1
    }

    /// `value` with the fixed bits forced to their required settings.
    pub const fn apply(self, value: u64) -> u64 {
        (value | self.fixed0) & self.fixed1
    }

    /// The bits of `value` that break the rule (0 when `value` is fine).
    pub const fn violations(self, value: u64) -> u64 {
        (!value & self.must_be_one()) | (value & self.must_be_zero())
    }
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (SDM Vol. 3D, A.10 "VPID and EPT
    /// Capabilities"). Bits the decoder does not name pass through.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptVpidCap: u64 {
        /// Bit 0: execute-only EPT translations (bits 2:0 = 100b).
        const EXECUTE_ONLY = 1 << 0;
        /// Bit 6: page-walk length of 4 (EPTP bits 5:3 = 3).
        const PAGE_WALK_LENGTH_4 = 1 << 6;
        /// Bit 7: page-walk length of 5.
        const PAGE_WALK_LENGTH_5 = 1 << 7;
        /// Bit 8: the EPT paging structures may be uncacheable (EPTP memory
        /// type 0).
        const MEMORY_TYPE_UC = 1 << 8;
        /// Bit 14: the EPT paging structures may be write-back (EPTP memory
        /// type 6).
        const MEMORY_TYPE_WB = 1 << 14;
        /// Bit 16: 2 MiB pages (EPT PDE bit 7).
        const PAGES_2M = 1 << 16;
        /// Bit 17: 1 GiB pages (EPT PDPTE bit 7).
        const PAGES_1G = 1 << 17;
        /// Bit 20: the INVEPT instruction.
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags for EPT (EPTP bit 6).
        const ACCESSED_DIRTY = 1 << 21;
        /// Bit 22: advanced VM-exit information for EPT violations.
        const ADVANCED_EPT_VIOLATION_INFO = 1 << 22;
        /// Bit 25: single-context INVEPT (type 1).
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// Bit 26: all-context INVEPT (type 2).
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// Bit 32: the INVVPID instruction.
        const INVVPID = 1 << 32;
        /// Bit 40: individual-address INVVPID (type 0).
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Bit 41: single-context INVVPID (type 1).
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// Bit 42: all-context INVVPID (type 2).
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Bit 43: single-context-retaining-globals INVVPID (type 3).
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

/// What one CPU's VT-x offers, decoded from its [`RawVmxMsrs`].
///
/// Control settings come from the TRUE MSRs where they exist (A.2: they
/// then hold the full answer). A field whose MSR does not exist reads as
/// "nothing supported": [`AllowedSettings::unsupported`],
/// [`EptVpidCap::empty`], `vm_functions == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCapabilities {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// Pin-based VM-execution controls.
    pub pin_based: AllowedSettings<PinBasedControls>,
    /// Primary processor-based VM-execution controls.
    pub primary: AllowedSettings<PrimaryControls>,
    /// Secondary processor-based VM-execution controls (none may be 1 where
    /// the primary control "activate secondary controls" may not be 1).
    pub secondary: AllowedSettings<SecondaryControls>,
    /// VM-exit controls.
    pub exit: AllowedSettings<ExitControls>,
    /// VM-entry controls.
    pub entry: AllowedSettings<EntryControls>,
    /// IA32_VMX_MISC.
    pub misc: VmxMisc,
    /// CR0 bits fixed in VMX operation, for VMXON.
    pub cr0_fixed: FixedBits,
    /// CR4 bits fixed in VMX operation, for VMXON.
    pub cr4_fixed: FixedBits,
    /// Highest index used in any VMCS field encoding (IA32_VMX_VMCS_ENUM
    /// bits 9:1, A.9).
    pub vmcs_max_index: u16,
    /// IA32_VMX_EPT_VPID_CAP; empty where it does not exist.
    pub ept_vpid: EptVpidCap,
    /// IA32_VMX_VMFUNC, the VM functions that may be enabled (bit 0: EPTP
    /// switching); 0 where it does not exist.
    pub vm_functions: u64,
}

impl VmxCapabilities {
    /// Decodes the capability MSRs of one CPU.
    ///
    /// Values of MSRs that the rules say do not exist are ignored even if
    /// present in `raw`, so an inconsistent `raw` cannot claim a feature its
    /// own control MSRs deny.
    pub fn decode(raw: &RawVmxMsrs) -> Self {
        let basic = VmxBasic::decode(raw.basic);
        let (pin, proc, exit, entry) = match raw.true_ctls {
            Some(t) if basic.true_controls => (t.pinbased, t.procbased, t.exit, t.entry),
            _ => (
                raw.pinbased_ctls,
                raw.procbased_ctls,
                raw.exit_ctls,
                raw.entry_ctls,
            ),
        };
        let primary = AllowedSettings::<PrimaryControls>::from_msr(proc);
        // A.3.3: the secondary controls exist only if "activate secondary
        // controls" may be 1 (the TRUE and plain MSRs agree on allowed 1s).
        let ctls2 = raw
            .procbased_ctls2
            .filter(|_| RawVmxMsrs::procbased_ctls2_exists(raw.procbased_ctls));
        let secondary = ctls2.map_or_else(AllowedSettings::unsupported, AllowedSettings::from_msr);
        let ept_vpid = match (ctls2, raw.ept_vpid_cap) {
            (Some(c2), Some(cap)) if RawVmxMsrs::ept_vpid_cap_exists(c2) => {
                EptVpidCap::from_bits_retain(cap)
            }
            _ => EptVpidCap::empty(),
        };
        let vm_functions = match (ctls2, raw.vmfunc) {
            (Some(c2), Some(v)) if RawVmxMsrs::vmfunc_exists(c2) => v,
            _ => 0,
        };
        Self {
            basic,
            pin_based: AllowedSettings::from_msr(pin),
            primary,
            secondary,
            exit: AllowedSettings::from_msr(exit),
            entry: AllowedSettings::from_msr(entry),
            misc: VmxMisc::decode(raw.misc),
            cr0_fixed: FixedBits {
                fixed0: raw.cr0_fixed0,
                fixed1: raw.cr0_fixed1,
            },
            cr4_fixed: FixedBits {
                fixed0: raw.cr4_fixed0,
                fixed1: raw.cr4_fixed1,
            },
            vmcs_max_index: ((raw.vmcs_enum >> 1) & 0x1FF) as u16,
            ept_vpid,
            vm_functions,
        }
    }

    /// EPT: the secondary control "enable EPT" may be 1.
    pub fn ept(&self) -> bool {
        self.secondary.allows(SecondaryControls::ENABLE_EPT)
    }

    /// The EPT capability bits, or `None` without EPT (the EPT bits of
    /// IA32_VMX_EPT_VPID_CAP mean nothing then).
    pub fn ept_caps(&self) -> Option<EptVpidCap> {
        self.ept().then_some(self.ept_vpid)
    }

    /// INVEPT with at least one of the single-context and all-context types.
    pub fn invept(&self) -> bool {
        self.ept_caps().is_some_and(|c| {
            c.contains(EptVpidCap::INVEPT)
                && c.intersects(EptVpidCap::INVEPT_SINGLE_CONTEXT | EptVpidCap::INVEPT_ALL_CONTEXT)
        })
    }

    /// VPID: the secondary control "enable VPID" may be 1.
    pub fn vpid(&self) -> bool {
        self.secondary.allows(SecondaryControls::ENABLE_VPID)
    }

    /// Unrestricted guest: the secondary control may be 1.
    pub fn unrestricted_guest(&self) -> bool {
        self.secondary.allows(SecondaryControls::UNRESTRICTED_GUEST)
    }

    /// The VMX-preemption timer: the pin-based control may be 1.
    pub fn preemption_timer(&self) -> bool {
        self.pin_based
            .allows(PinBasedControls::ACTIVATE_PREEMPTION_TIMER)
    }

    /// MSR bitmaps: the primary control "use MSR bitmaps" may be 1.
    pub fn msr_bitmaps(&self) -> bool {
        self.primary.allows(PrimaryControls::USE_MSR_BITMAPS)
    }

    /// I/O bitmaps: the primary control "use I/O bitmaps" may be 1.
    pub fn io_bitmaps(&self) -> bool {
        self.primary.allows(PrimaryControls::USE_IO_BITMAPS)
    }

    /// PAUSE-loop exiting: the secondary control may be 1 (optional: a
    /// vCPU spinning on a lock exits to be descheduled where it is
    /// offered, and spins out its slice where not).
    pub fn pause_loop_exiting(&self) -> bool {
        self.secondary.allows(SecondaryControls::PAUSE_LOOP_EXITING)
    }

    /// Every feature Ferrovisor needs that this CPU lacks, in the order of
    /// [`MissingFeature`]. Without EPT only [`MissingFeature::Ept`] is listed
    /// for EPT (its details mean nothing then).
    pub fn missing(&self) -> impl Iterator<Item = MissingFeature> {
        let ept = self.ept_caps();
        let ept_lacks = |bit| ept.is_some_and(|c| !c.contains(bit));
        [
            (ept.is_none(), MissingFeature::Ept),
            (
                ept_lacks(EptVpidCap::PAGE_WALK_LENGTH_4),
                MissingFeature::EptPageWalk4,
            ),
            (
                ept_lacks(EptVpidCap::MEMORY_TYPE_WB),
                MissingFeature::EptWriteBack,
            ),
            (ept.is_some() && !self.invept(), MissingFeature::Invept),
            (
                !self.unrestricted_guest(),
                MissingFeature::UnrestrictedGuest,
            ),
            (!self.io_bitmaps(), MissingFeature::IoBitmaps),
            (!self.msr_bitmaps(), MissingFeature::MsrBitmaps),
            (!self.preemption_timer(), MissingFeature::PreemptionTimer),
        ]
        .into_iter()
        .filter_map(|(missing, feature)| missing.then_some(feature))
    }

    /// Checks what Ferrovisor needs: EPT with a 4-level walk, write-back
    /// paging structures and INVEPT (single- or all-context), unrestricted
    /// guest, I/O and MSR bitmaps, and the VMX-preemption timer. VPID, large
    /// EPT pages, EPT A/D flags and the TRUE controls are only reported.
    /// Fails with the first missing feature.
    pub fn check_required(&self) -> Result<(), MissingFeature> {
        self.missing().next().map_or(Ok(()), Err)
    }

    /// The capability report, one [`ReportLine`] per line, in the order of
    /// [`ReportLineKind::ALL`].
    pub fn report_lines(&self) -> impl Iterator<Item = ReportLine<'_>> + '_ {
        ReportLineKind::ALL
            .into_iter()
            .map(move |kind| ReportLine { caps: self, kind })
    }
}

/// A VT-x feature Ferrovisor needs and a CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MissingFeature {
    /// Secondary control "enable EPT" (bit 1).
    Ept,
    /// EPT page-walk length 4 (IA32_VMX_EPT_VPID_CAP bit 6).
    EptPageWalk4,
    /// Write-back EPT paging structures (IA32_VMX_EPT_VPID_CAP bit 14).
    EptWriteBack,
    /// INVEPT with single- or all-context type (IA32_VMX_EPT_VPID_CAP bits
    /// 20, 25, 26).
    Invept,
    /// Secondary control "unrestricted guest" (bit 7).
    UnrestrictedGuest,
    /// Primary control "use I/O bitmaps" (bit 25).
    IoBitmaps,
    /// Primary control "use MSR bitmaps" (bit 28).
    MsrBitmaps,
    /// Pin-based control "activate VMX-preemption timer" (bit 6).
    PreemptionTimer,
}

impl fmt::Display for MissingFeature {
    /// The feature in words, e.g. `EPT (extended page tables)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ept => "EPT (extended page tables)",
            Self::EptPageWalk4 => "a 4-level EPT page walk",
            Self::EptWriteBack => "write-back EPT paging structures",
            Self::Invept => "INVEPT (single- or all-context)",
            Self::UnrestrictedGuest => "unrestricted guest",
            Self::IoBitmaps => "I/O bitmaps",
            Self::MsrBitmaps => "MSR bitmaps",
            Self::PreemptionTimer => "the VMX-preemption timer",
        })
    }
}

/// Which line of the capability report a [`ReportLine`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportLineKind {
    /// `vmx: basic: revision 0x00000004, VMCS region 1024 bytes, TRUE controls: yes`
    Basic,
    /// `vmx: EPT: yes (4-level walk: yes, ...)` or `vmx: EPT: no`
    Ept,
    /// `vmx: unrestricted guest: yes`
    UnrestrictedGuest,
    /// `vmx: VPID: yes (INVVPID: yes)` or `vmx: VPID: no`
    Vpid,
    /// `vmx: preemption timer: yes (one tick every 2^5 TSC cycles)` or
    /// `vmx: preemption timer: no`
    PreemptionTimer,
    /// `vmx: MSR bitmaps: yes`
    MsrBitmaps,
    /// `vmx: I/O bitmaps: yes`
    IoBitmaps,
    /// `vmx: PAUSE-loop exiting: yes` or `vmx: PAUSE-loop exiting: no`
    PauseLoopExiting,
}

impl ReportLineKind {
    /// Every line, in report order.
    pub const ALL: [Self; 8] = [
        Self::Basic,
        Self::Ept,
        Self::UnrestrictedGuest,
        Self::Vpid,
        Self::PreemptionTimer,
        Self::MsrBitmaps,
        Self::IoBitmaps,
        Self::PauseLoopExiting,
    ];
}

/// One line of the capability report; its `Display` is the line, without a
/// trailing newline. Callers prefix it (the kernel adds `cpu<k>: `).
#[derive(Clone, Copy, Debug)]
pub struct ReportLine<'a> {
    caps: &'a VmxCapabilities,
    kind: ReportLineKind,
}

impl ReportLine<'_> {
    /// Which line this is.
    pub fn kind(&self) -> ReportLineKind {
        self.kind
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for ReportLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.caps;
        match self.kind {
            ReportLineKind::Basic => write!(
                f,
                "vmx: basic: revision {:#010x}, VMCS region {} bytes, TRUE controls: {}",
                c.basic.revision_id,
                c.basic.region_size,
                yes_no(c.basic.true_controls)
            ),
            ReportLineKind::Ept => match c.ept_caps() {
                None => f.write_str("vmx: EPT: no"),
                Some(e) => {
                    let has = |bit| yes_no(e.contains(bit));
                    let invept = |ty| yes_no(e.contains(EptVpidCap::INVEPT | ty));
                    write!(
                        f,
                        "vmx: EPT: yes (4-level walk: {}, write-back: {}, 2 MiB pages: {}, \
                         1 GiB pages: {}, A/D flags: {}, INVEPT single-context: {}, all-context: {})",
                        has(EptVpidCap::PAGE_WALK_LENGTH_4),
                        has(EptVpidCap::MEMORY_TYPE_WB),
                        has(EptVpidCap::PAGES_2M),
                        has(EptVpidCap::PAGES_1G),
                        has(EptVpidCap::ACCESSED_DIRTY),
                        invept(EptVpidCap::INVEPT_SINGLE_CONTEXT),
                        invept(EptVpidCap::INVEPT_ALL_CONTEXT),
                    )
                }
            },
            ReportLineKind::UnrestrictedGuest => {
                write!(
                    f,
                    "vmx: unrestricted guest: {}",
                    yes_no(c.unrestricted_guest())
                )
            }
            ReportLineKind::Vpid => {
                if c.vpid() {
                    write!(
                        f,
                        "vmx: VPID: yes (INVVPID: {})",
                        yes_no(c.ept_vpid.contains(EptVpidCap::INVVPID))
                    )
                } else {
                    f.write_str("vmx: VPID: no")
                }
            }
            ReportLineKind::PreemptionTimer => {
                if c.preemption_timer() {
                    write!(
                        f,
                        "vmx: preemption timer: yes (one tick every 2^{} TSC cycles)",
                        c.misc.preemption_timer_rate
                    )
                } else {
                    f.write_str("vmx: preemption timer: no")
                }
            }
            ReportLineKind::MsrBitmaps => {
                write!(f, "vmx: MSR bitmaps: {}", yes_no(c.msr_bitmaps()))
            }
            ReportLineKind::IoBitmaps => write!(f, "vmx: I/O bitmaps: {}", yes_no(c.io_bitmaps())),
            ReportLineKind::PauseLoopExiting => write!(
                f,
                "vmx: PAUSE-loop exiting: {}",
                yes_no(c.pause_loop_exiting())
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A Skylake client CPU (Core i7-6700 class), self-consistent: VMCS
    /// revision 4 with a 1024-byte region, TRUE controls, timer rate 5, no
    /// APIC virtualization or posted interrupts.
    pub(crate) fn skylake() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x00DA_0400_0000_0004,
            pinbased_ctls: 0x0000_007F_0000_0016,
            procbased_ctls: 0xFFF9_FFFE_0401_E172,
            exit_ctls: 0x01FF_FFFF_0003_6DFF,
            entry_ctls: 0x0003_FFFF_0000_11FF,
            misc: 0x0000_0000_3004_81E5,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_27FF,
            vmcs_enum: 0x2E,
            procbased_ctls2: Some(0x001F_FCFF_0000_0000),
            ept_vpid_cap: Some(0x0000_0F01_0673_4141),
            true_ctls: Some(TrueControlMsrs {
                pinbased: 0x0000_007F_0000_0016,
                procbased: 0xFFF9_FFFE_0400_6172,
                exit: 0x01FF_FFFF_0003_6DFB,
                entry: 0x0003_FFFF_0000_11FB,
            }),
            vmfunc: Some(1),
        }
    }

    /// Shaped like an emulator's report (Bochs' model derives its MSRs the
    /// same way): a 4096-byte VMCS region (bit 44 set, bits 43:32 clear),
    /// timer rate 0, no VM functions. The revision is illustrative.
    pub(crate) fn emulated() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x00DA_1000_0000_0001,
            misc: 0x0000_0000_6004_01E0,
            procbased_ctls2: Some(0x0000_12FF_0000_0000),
            vmfunc: None,
            ..skylake()
        }
    }

    /// A Core 2 class CPU: no secondary controls (so no EPT, VPID or
    /// unrestricted guest), no preemption timer, no TRUE MSRs.
    pub(crate) fn core2() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x005A_1000_0000_000D,
            pinbased_ctls: 0x0000_003F_0000_0016,
            procbased_ctls: 0x7FF9_FFFE_0401_E172,
            exit_ctls: 0x0003_6FFF_0003_6DFF,
            entry_ctls: 0x0000_33FF_0000_11FF,
            misc: 0x0000_0000_0004_03C0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0000_27FF,
            vmcs_enum: 0x2C,
            procbased_ctls2: None,
            ept_vpid_cap: None,
            true_ctls: None,
            vmfunc: None,
        }
    }

    fn lines(caps: &VmxCapabilities) -> Vec<String> {
        caps.report_lines().map(|l| l.to_string()).collect()
    }

    #[test]
    fn skylake_decodes() {
        let c = VmxCapabilities::decode(&skylake());
        assert_eq!(c.basic.revision_id, 4);
        assert_eq!(c.basic.region_size, 1024);
        assert_eq!(c.basic.vmcs_memory_type, VmcsMemoryType::WriteBack);
        assert!(c.basic.true_controls);
        assert!(c.basic.ins_outs_exit_information);
        assert!(c.basic.dual_monitor_smm);
        assert!(!c.basic.addresses_limited_to_32_bits);
        assert!(c.ept() && c.vpid() && c.unrestricted_guest());
        assert!(c.preemption_timer() && c.msr_bitmaps() && c.io_bitmaps());
        assert!(c.pause_loop_exiting());
        assert!(c.invept());
        assert_eq!(c.misc.preemption_timer_rate, 5);
        assert!(c.misc.exit_stores_efer_lma);
        assert!(c.misc.activity_hlt && c.misc.activity_shutdown && c.misc.activity_wait_for_sipi);
        assert_eq!(c.misc.cr3_targets, 4);
        assert_eq!(c.misc.max_msr_list_entries, 512);
        assert!(c.misc.vmwrite_any_field);
        assert_eq!(c.vmcs_max_index, 0x17);
        assert_eq!(c.vm_functions, 1);
        // TRUE MSRs are used: CR3-load/store exiting may be 0.
        assert!(!c.primary.requires(PrimaryControls::CR3_LOAD_EXITING));
        assert!(!c.exit.requires(ExitControls::SAVE_DEBUG_CONTROLS));
        assert!(c
            .exit
            .allows(ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::LOAD_IA32_EFER));
        assert!(c
            .entry
            .allows(EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_IA32_EFER));
        // No APIC-register virtualization or posted interrupts on a client part.
        assert!(!c
            .secondary
            .allows(SecondaryControls::APIC_REGISTER_VIRTUALIZATION));
        assert!(!c
            .pin_based
            .allows(PinBasedControls::PROCESS_POSTED_INTERRUPTS));
        let e = c.ept_caps().unwrap();
        assert!(e.contains(EptVpidCap::EXECUTE_ONLY | EptVpidCap::MEMORY_TYPE_UC));
        assert!(!e.contains(EptVpidCap::PAGE_WALK_LENGTH_5));
        assert!(e.contains(
            EptVpidCap::INVVPID_INDIVIDUAL_ADDRESS
                | EptVpidCap::INVVPID_SINGLE_CONTEXT
                | EptVpidCap::INVVPID_ALL_CONTEXT
                | EptVpidCap::INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS
        ));
        assert_eq!(c.check_required(), Ok(()));
        assert_eq!(c.missing().count(), 0);
    }

    #[test]
    fn skylake_report_lines() {
        let c = VmxCapabilities::decode(&skylake());
        assert_eq!(
            lines(&c),
            [
                "vmx: basic: revision 0x00000004, VMCS region 1024 bytes, TRUE controls: yes",
                "vmx: EPT: yes (4-level walk: yes, write-back: yes, 2 MiB pages: yes, 1 GiB pages: yes, \
                 A/D flags: yes, INVEPT single-context: yes, all-context: yes)",
                "vmx: unrestricted guest: yes",
                "vmx: VPID: yes (INVVPID: yes)",
                "vmx: preemption timer: yes (one tick every 2^5 TSC cycles)",
                "vmx: MSR bitmaps: yes",
                "vmx: I/O bitmaps: yes",
                "vmx: PAUSE-loop exiting: yes",
            ]
        );
        let kinds: Vec<_> = c.report_lines().map(|l| l.kind()).collect();
        assert_eq!(kinds, ReportLineKind::ALL);
    }

    #[test]
    fn emulated_4096_byte_region_and_rate_0() {
        let c = VmxCapabilities::decode(&emulated());
        assert_eq!(c.basic.region_size, 4096);
        let l = lines(&c);
        assert_eq!(
            l[0],
            "vmx: basic: revision 0x00000001, VMCS region 4096 bytes, TRUE controls: yes"
        );
        assert_eq!(
            l[4],
            "vmx: preemption timer: yes (one tick every 2^0 TSC cycles)"
        );
        // VM functions are not offered, so IA32_VMX_VMFUNC is ignored.
        assert_eq!(c.vm_functions, 0);
        // Secondary bit 10 is clear in its allowed 1-settings: PAUSE-loop
        // exiting is optional, so the CPU is still usable.
        assert!(!c.pause_loop_exiting());
        assert_eq!(l[7], "vmx: PAUSE-loop exiting: no");
        assert_eq!(c.check_required(), Ok(()));
    }

    #[test]
    fn core2_has_no_secondary_controls() {
        let raw = core2();
        assert!(!RawVmxMsrs::procbased_ctls2_exists(raw.procbased_ctls));
        assert!(!RawVmxMsrs::true_controls_exist(raw.basic));
        let c = VmxCapabilities::decode(&raw);
        assert_eq!(c.secondary, AllowedSettings::unsupported());
        assert_eq!(c.ept_vpid, EptVpidCap::empty());
        assert!(!c.basic.true_controls);
        // Without TRUE MSRs the default1 controls must stay 1.
        assert!(c.primary.requires(PrimaryControls::CR3_LOAD_EXITING));
        assert_eq!(c.check_required(), Err(MissingFeature::Ept));
        let missing: Vec<_> = c.missing().collect();
        assert_eq!(
            missing,
            [
                MissingFeature::Ept,
                MissingFeature::UnrestrictedGuest,
                MissingFeature::PreemptionTimer
            ]
        );
        assert_eq!(
            lines(&c),
            [
                "vmx: basic: revision 0x0000000d, VMCS region 4096 bytes, TRUE controls: no",
                "vmx: EPT: no",
                "vmx: unrestricted guest: no",
                "vmx: VPID: no",
                "vmx: preemption timer: no",
                "vmx: MSR bitmaps: yes",
                "vmx: I/O bitmaps: yes",
                "vmx: PAUSE-loop exiting: no",
            ]
        );
    }

    /// Secondary controls without EPT or VPID: IA32_VMX_EPT_VPID_CAP does
    /// not exist, and a stray value for it is ignored.
    #[test]
    fn secondary_controls_without_ept_or_vpid() {
        // Allowed 1s: virtualize APIC accesses, RDTSCP, WBINVD exiting.
        let ctls2 = 0x0000_0049_0000_0000;
        assert!(RawVmxMsrs::procbased_ctls2_exists(skylake().procbased_ctls));
        assert!(!RawVmxMsrs::ept_vpid_cap_exists(ctls2));
        assert!(!RawVmxMsrs::vmfunc_exists(ctls2));
        let raw = RawVmxMsrs {
            procbased_ctls2: Some(ctls2),
            ..skylake()
        };
        let c = VmxCapabilities::decode(&raw);
        assert!(!c.ept() && !c.vpid() && !c.unrestricted_guest());
        assert_eq!(c.ept_vpid, EptVpidCap::empty());
        assert_eq!(c.vm_functions, 0);
        assert_eq!(c.check_required(), Err(MissingFeature::Ept));
    }

    /// VPID without EPT: the capability MSR exists (for INVVPID), EPT stays
    /// absent.
    #[test]
    fn vpid_without_ept() {
        let ctls2 = 0x0000_0020_0000_0000;
        assert!(RawVmxMsrs::ept_vpid_cap_exists(ctls2));
        let raw = RawVmxMsrs {
            procbased_ctls2: Some(ctls2),
            ept_vpid_cap: Some(0x0000_0F01_0000_0000),
            ..skylake()
        };
        let c = VmxCapabilities::decode(&raw);
        assert!(c.vpid() && !c.ept());
        assert_eq!(c.ept_caps(), None);
        let l = lines(&c);
        assert_eq!(l[1], "vmx: EPT: no");
        assert_eq!(l[3], "vmx: VPID: yes (INVVPID: yes)");
    }

    #[test]
    fn existence_rules_use_the_allowed_1_bits() {
        assert!(RawVmxMsrs::true_controls_exist(1 << 55));
        assert!(!RawVmxMsrs::true_controls_exist(!(1 << 55)));
        assert!(RawVmxMsrs::procbased_ctls2_exists(1 << 63));
        // Bit 31 (the allowed-0 half) does not count.
        assert!(!RawVmxMsrs::procbased_ctls2_exists(1 << 31));
        assert!(RawVmxMsrs::ept_vpid_cap_exists(1 << 33));
        assert!(RawVmxMsrs::ept_vpid_cap_exists(1 << 37));
        assert!(!RawVmxMsrs::ept_vpid_cap_exists((1 << 1) | (1 << 5)));
        assert!(RawVmxMsrs::vmfunc_exists(1 << 45));
        assert!(!RawVmxMsrs::vmfunc_exists(1 << 13));
    }

    /// Values the control MSRs say cannot exist are ignored.
    #[test]
    fn inconsistent_raw_values_are_ignored() {
        // PROCBASED_CTLS2 given although bit 63 of PROCBASED_CTLS is clear.
        let raw = RawVmxMsrs {
            procbased_ctls: 0x7FF9_FFFE_0401_E172,
            true_ctls: Some(TrueControlMsrs {
                procbased: 0x7FF9_FFFE_0400_6172,
                ..skylake().true_ctls.unwrap()
            }),
            ..skylake()
        };
        let c = VmxCapabilities::decode(&raw);
        assert!(!c.ept());
        assert_eq!(c.ept_vpid, EptVpidCap::empty());

        // TRUE values given although IA32_VMX_BASIC bit 55 is clear: the
        // plain MSRs rule.
        let raw = RawVmxMsrs {
            basic: 0x005A_0400_0000_0004,
            ..skylake()
        };
        let c = VmxCapabilities::decode(&raw);
        assert!(!c.basic.true_controls);
        assert!(c.primary.requires(PrimaryControls::CR3_LOAD_EXITING));
        assert!(c.exit.requires(ExitControls::SAVE_DEBUG_CONTROLS));
    }

    /// Bit 55 set but the TRUE values were not read: fall back to the plain
    /// MSRs (more conservative, still correct).
    #[test]
    fn missing_true_values_fall_back_to_plain_msrs() {
        let raw = RawVmxMsrs {
            true_ctls: None,
            ..skylake()
        };
        let c = VmxCapabilities::decode(&raw);
        assert!(c.basic.true_controls);
        assert!(c.primary.requires(PrimaryControls::CR3_STORE_EXITING));
        assert_eq!(c.check_required(), Ok(()));
    }

    #[test]
    fn ept_details_that_are_required() {
        let with_cap = |cap: u64| {
            VmxCapabilities::decode(&RawVmxMsrs {
                ept_vpid_cap: Some(cap),
                ..skylake()
            })
        };
        let full = EptVpidCap::from_bits_retain(skylake().ept_vpid_cap.unwrap());

        let c = with_cap(full.difference(EptVpidCap::PAGE_WALK_LENGTH_4).bits());
        assert_eq!(c.check_required(), Err(MissingFeature::EptPageWalk4));
        assert!(lines(&c)[1].starts_with("vmx: EPT: yes (4-level walk: no, write-back: yes"));

        let c = with_cap(full.difference(EptVpidCap::MEMORY_TYPE_WB).bits());
        assert_eq!(c.check_required(), Err(MissingFeature::EptWriteBack));

        // INVEPT without either type, or the types without INVEPT.
        let c = with_cap(
            full.difference(EptVpidCap::INVEPT_SINGLE_CONTEXT | EptVpidCap::INVEPT_ALL_CONTEXT)
                .bits(),
        );
        assert_eq!(c.check_required(), Err(MissingFeature::Invept));
        let c = with_cap(full.difference(EptVpidCap::INVEPT).bits());
        assert_eq!(c.check_required(), Err(MissingFeature::Invept));
        assert!(lines(&c)[1].ends_with("INVEPT single-context: no, all-context: no)"));

        // One INVEPT type is enough.
        let c = with_cap(full.difference(EptVpidCap::INVEPT_SINGLE_CONTEXT).bits());
        assert_eq!(c.check_required(), Ok(()));
        assert!(lines(&c)[1].ends_with("INVEPT single-context: no, all-context: yes)"));
    }

    #[test]
    fn report_only_features_do_not_fail_the_check() {
        let full = EptVpidCap::from_bits_retain(skylake().ept_vpid_cap.unwrap());
        let cap = full.difference(
            EptVpidCap::PAGES_2M
                | EptVpidCap::PAGES_1G
                | EptVpidCap::ACCESSED_DIRTY
                | EptVpidCap::INVVPID,
        );
        let raw = RawVmxMsrs {
            // Secondary controls without VPID (bit 5).
            procbased_ctls2: Some(0x001F_FCDF_0000_0000),
            ept_vpid_cap: Some(cap.bits()),
            basic: 0x005A_0400_0000_0004,
            ..skylake()
        };
        let c = VmxCapabilities::decode(&raw);
        assert_eq!(c.check_required(), Ok(()));
        assert_eq!(
            lines(&c)[..4],
            [
                "vmx: basic: revision 0x00000004, VMCS region 1024 bytes, TRUE controls: no",
                "vmx: EPT: yes (4-level walk: yes, write-back: yes, 2 MiB pages: no, 1 GiB pages: no, \
                 A/D flags: no, INVEPT single-context: yes, all-context: yes)",
                "vmx: unrestricted guest: yes",
                "vmx: VPID: no",
            ]
        );
    }

    #[test]
    fn each_required_control_is_checked() {
        let c = VmxCapabilities::decode(&RawVmxMsrs {
            procbased_ctls2: Some(0x001F_FC7F_0000_0000),
            ..skylake()
        });
        assert_eq!(c.check_required(), Err(MissingFeature::UnrestrictedGuest));

        let mut raw = skylake();
        let t = raw.true_ctls.as_mut().unwrap();
        t.procbased &= !(1 << (32 + 25));
        let c = VmxCapabilities::decode(&raw);
        assert_eq!(c.check_required(), Err(MissingFeature::IoBitmaps));
        assert_eq!(lines(&c)[6], "vmx: I/O bitmaps: no");

        let mut raw = skylake();
        raw.true_ctls.as_mut().unwrap().procbased &= !(1 << (32 + 28));
        let c = VmxCapabilities::decode(&raw);
        assert_eq!(c.check_required(), Err(MissingFeature::MsrBitmaps));
        assert_eq!(lines(&c)[5], "vmx: MSR bitmaps: no");

        let mut raw = skylake();
        raw.true_ctls.as_mut().unwrap().pinbased &= !(1 << (32 + 6));
        let c = VmxCapabilities::decode(&raw);
        assert_eq!(c.check_required(), Err(MissingFeature::PreemptionTimer));
        assert_eq!(lines(&c)[4], "vmx: preemption timer: no");
    }

    #[test]
    fn vmcs_memory_type_and_32_bit_limit() {
        let b = VmxBasic::decode(0x0001_1000_0000_0007);
        assert_eq!(b.vmcs_memory_type, VmcsMemoryType::Uncacheable);
        assert!(b.addresses_limited_to_32_bits);
        assert_eq!(b.region_size, 4096);
        assert_eq!(
            VmxBasic::decode(0x0014_0400_0000_0000).vmcs_memory_type,
            VmcsMemoryType::Other(5)
        );
        // Bit 31 is not part of the revision.
        assert_eq!(VmxBasic::decode(0x8000_0004).revision_id, 4);
    }

    #[test]
    fn misc_msr_list_size() {
        assert_eq!(VmxMisc::decode(7 << 25).max_msr_list_entries, 4096);
        assert_eq!(VmxMisc::decode(0x1F).preemption_timer_rate, 31);
        assert_eq!(VmxMisc::decode(0x0000_0001_0000_0000).mseg_revision_id, 1);
    }

    #[test]
    fn cr_fixed_bits() {
        let c = VmxCapabilities::decode(&skylake());
        // PE | NE | PG, as after the bootloader.
        let cr0 = 0x8005_0033;
        assert_eq!(c.cr0_fixed.violations(cr0), 0);
        assert_eq!(c.cr0_fixed.apply(cr0), cr0);
        // NE clear: one violation, and apply sets it.
        assert_eq!(c.cr0_fixed.violations(cr0 & !0x20), 0x20);
        assert_eq!(c.cr0_fixed.apply(cr0 & !0x20), cr0);
        // CR4 without VMXE, and with a bit FIXED1 forbids (bit 23).
        let cr4 = 0x0000_06A0;
        assert_eq!(c.cr4_fixed.violations(cr4), 0x2000);
        assert_eq!(c.cr4_fixed.apply(cr4 | (1 << 23)), cr4 | 0x2000);
        assert_eq!(c.cr4_fixed.violations(cr4 | 0x2000 | (1 << 23)), 1 << 23);
        assert_eq!(c.cr4_fixed.must_be_one(), 0x2000);
    }
}
