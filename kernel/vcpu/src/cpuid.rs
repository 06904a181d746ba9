//! What CPUID returns to a guest: the host's values with the features the
//! guest may not use hidden, a processor topology that matches the guest's
//! vCPU count, and Ferrovisor's own hypervisor leaves. Pure: the caller
//! executes CPUID on the host and passes the values in.
//!
//! Leaf and bit numbers are SDM Vol. 2A, "CPUID—CPU Identification",
//! Table 3-8 "Information Returned by CPUID Instruction", with leaf 1 in
//! Table 3-10 "Feature Information Returned in the ECX Register" and
//! Table 3-11 "More on Feature Information Returned in the EDX Register".
//!
//! The rule that runs through the masks: a feature stays visible only if
//! the guest can use it under Ferrovisor. Features whose MSRs the guest MSR
//! allow-list ([`super::msr`]) denies are hidden, so a guest never takes a
//! #GP from an MSR that CPUID promised; features whose instructions exit
//! and are answered with #UD (MONITOR/MWAIT, VMX, SMX, SGX) are hidden;
//! leaves that describe hidden features are all zero.

/// The four registers one CPUID execution returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// What the guest's CPUID view depends on besides the host's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCpuidContext {
    /// This vCPU's index in its guest, 0 for the boot vCPU; it is also the
    /// vCPU's (x2)APIC ID.
    pub vcpu_index: u32,
    /// How many vCPUs the guest has (0 is taken as 1).
    pub vcpus: u32,
    /// The guest's CR4.OSXSAVE (bit 18): CPUID.1:ECX.OSXSAVE mirrors it.
    pub cr4_osxsave: bool,
    /// The guest's CR4.PKE (bit 22): CPUID.(7,0):ECX.OSPKE mirrors it.
    pub cr4_pke: bool,
    /// The guest's TSC rate in Hz (the host's: the guest TSC is offset,
    /// never scaled), which leaves 15H and 16H report; 0 where unknown.
    pub tsc_hz: u64,
}

/// The crystal clock leaf 15H reports, in Hz: also the input clock of the
/// virtual local APIC timer, as on the processors whose leaf 15H lists a
/// crystal (Linux then takes the APIC timer's rate from it instead of
/// calibrating).
pub const CRYSTAL_HZ: u32 = 25_000_000;

/// The first hypervisor leaf: the highest hypervisor leaf and the signature.
/// Leaves 4000_0000H..=4FFF_FFFFH are reserved by Intel for hypervisors and
/// return no processor information (SDM Vol. 2A, Table 3-8, "Unimplemented
/// CPUID Leaf Functions").
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;

/// The vendor signature CPUID.4000_0000H returns in EBX, ECX, EDX (four
/// bytes each, little-endian), so a guest can tell it runs on Ferrovisor.
pub const SIGNATURE: &[u8; 12] = b"FerrovisorVM";

/// The hypercall ABI version CPUID.4000_0001H:EAX reports (see
/// [`super::hypercall`]; 2 since the call numbers carry the "FV" prefix).
pub const HYPERCALL_ABI_VERSION: u32 = 2;

/// The highest hypervisor leaf Ferrovisor implements.
const HYPERVISOR_LEAF_MAX: u32 = HYPERVISOR_LEAF + 1;
/// The last leaf of the hypervisor range.
const HYPERVISOR_RANGE_LAST: u32 = 0x4FFF_FFFF;
/// The first extended leaf; it reports the highest extended leaf.
const EXTENDED_LEAF: u32 = 0x8000_0000;
/// The last leaf of the extended range.
const EXTENDED_RANGE_LAST: u32 = 0x8FFF_FFFF;

/// Bit `n` of a register.
const fn bit(n: u32) -> u32 {
    1 << n
}

/// Leaf 1 ECX (SDM Vol. 2A, Table 3-10).
mod leaf1_ecx {
    use super::bit;

    /// Bit 2, DTES64: 64-bit debug store, needs IA32_DS_AREA (denied).
    pub const DTES64: u32 = bit(2);
    /// Bit 3, MONITOR/MWAIT: they exit and the guest gets #UD.
    pub const MONITOR: u32 = bit(3);
    /// Bit 4, DS-CPL: CPL-qualified debug store, needs IA32_DS_AREA.
    pub const DS_CPL: u32 = bit(4);
    /// Bit 5, VMX: no nested virtualization; VMX instructions exit.
    pub const VMX: u32 = bit(5);
    /// Bit 6, SMX: GETSEC exits; the host's measured launch is not the
    /// guest's.
    pub const SMX: u32 = bit(6);
    /// Bit 7, EST: Enhanced SpeedStep, IA32_PERF_CTL (denied); the host owns
    /// power management.
    pub const EST: u32 = bit(7);
    /// Bit 8, TM2: thermal monitor 2, host thermal MSRs.
    pub const TM2: u32 = bit(8);
    /// Bit 11, SDBG: silicon debug, IA32_DEBUG_INTERFACE (denied).
    pub const SDBG: u32 = bit(11);
    /// Bit 14, xTPR update control: IA32_MISC_ENABLE bit 23, not emulated.
    pub const XTPR: u32 = bit(14);
    /// Bit 15, PDCM: IA32_PERF_CAPABILITIES (denied; no guest PMU).
    pub const PDCM: u32 = bit(15);
    /// Bit 18, DCA: direct cache access, IA32_PLATFORM_DCA_CAP (denied).
    pub const DCA: u32 = bit(18);
    /// Bit 21, x2APIC: the virtual local APIC is an xAPIC only (MMIO),
    /// which every kernel drives; the x2APIC MSRs are denied.
    pub const X2APIC: u32 = bit(21);
    /// Bit 24, TSC-deadline: offered, the virtual local APIC's timer has
    /// the TSC-deadline mode (IA32_TSC_DEADLINE is emulated). Named for
    /// the tests that check it stays offered.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const TSC_DEADLINE: u32 = bit(24);
    /// Bit 26, XSAVE: passed through; OSXSAVE depends on it.
    pub const XSAVE: u32 = bit(26);
    /// Bit 27, OSXSAVE: a copy of the guest's CR4.OSXSAVE.
    pub const OSXSAVE: u32 = bit(27);
    /// Bit 31: "not used" on hardware; hypervisors set it so a guest knows
    /// it is virtualized and looks at leaf 4000_0000H.
    pub const HYPERVISOR: u32 = bit(31);

    /// Everything hidden outright.
    pub const HIDDEN: u32 =
        DTES64 | MONITOR | DS_CPL | VMX | SMX | EST | TM2 | SDBG | XTPR | PDCM | DCA | X2APIC;
}

/// Leaf 1 EDX (SDM Vol. 2A, Table 3-11).
mod leaf1_edx {
    use super::bit;

    /// Bit 7, MCE: no machine checks are delivered to a guest, and
    /// IA32_MCG_CAP reads 0.
    pub const MCE: u32 = bit(7);
    /// Bit 12, MTRR: IA32_MTRRCAP reads 0 (EPT decides memory types).
    pub const MTRR: u32 = bit(12);
    /// Bit 14, MCA: the machine-check bank MSRs are denied.
    pub const MCA: u32 = bit(14);
    /// Bit 21, DS: debug store, IA32_DS_AREA (denied).
    pub const DS: u32 = bit(21);
    /// Bit 22, ACPI: thermal monitor and clock control MSRs of the host.
    pub const ACPI: u32 = bit(22);
    /// Bit 28, HTT: CPUID.1:EBX[23:16] is valid; set iff the guest has more
    /// than one logical processor.
    pub const HTT: u32 = bit(28);
    /// Bit 29, TM: thermal monitor, host MSRs.
    pub const TM: u32 = bit(29);
    /// Bit 31, PBE: pending break enable, IA32_MISC_ENABLE bit 10, host
    /// power management.
    pub const PBE: u32 = bit(31);

    /// Everything hidden outright (HTT is computed).
    pub const HIDDEN: u32 = MCE | MTRR | MCA | DS | ACPI | TM | PBE;
}

/// Leaf 7 subleaf 0 EBX (SDM Vol. 2A, Table 3-8, leaf 07H).
mod leaf7_ebx {
    use super::bit;

    /// Bit 1: IA32_TSC_ADJUST, offered: emulated per vCPU on top of the
    /// guest's TSC offset. With an invariant TSC it tells Linux the TSC
    /// needs no clocksource watchdog (which, against jiffies that lost
    /// ticks while the guest had interrupts off, would wrongly call it
    /// unstable). Named for the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const TSC_ADJUST: u32 = bit(1);
    /// Bit 2: SGX; ENCLS exits and leaf 12H is zero.
    pub const SGX: u32 = bit(2);
    /// Bit 12: RDT-M (resource monitoring), IA32_PQR_ASSOC (denied), leaf
    /// 0FH zero.
    pub const RDT_M: u32 = bit(12);
    /// Bit 14: MPX, IA32_BNDCFGS (denied).
    pub const MPX: u32 = bit(14);
    /// Bit 15: RDT-A (resource allocation), IA32_PQR_ASSOC (denied), leaf
    /// 10H zero.
    pub const RDT_A: u32 = bit(15);
    /// Bit 25: Intel Processor Trace, IA32_RTIT_* (denied), leaf 14H zero.
    pub const PT: u32 = bit(25);

    /// Everything hidden.
    pub const HIDDEN: u32 = SGX | RDT_M | MPX | RDT_A | PT;
}

/// Leaf 7 subleaf 0 ECX (SDM Vol. 2A, Table 3-8, leaf 07H).
mod leaf7_ecx {
    use super::bit;

    /// Bit 3: PKU, passed through; OSPKE depends on it.
    pub const PKU: u32 = bit(3);
    /// Bit 4: OSPKE, a copy of the guest's CR4.PKE.
    pub const OSPKE: u32 = bit(4);
    /// Bit 5: WAITPKG (UMONITOR/UMWAIT/TPAUSE), IA32_UMWAIT_CONTROL
    /// (denied); they would also let a guest idle the host's CPU.
    pub const WAITPKG: u32 = bit(5);
    /// Bit 7: CET shadow stacks, IA32_U_CET/S_CET/PLx_SSP (denied) and the
    /// XSAVES supervisor states (XSAVES hidden).
    pub const CET_SS: u32 = bit(7);
    /// Bit 13: TME_EN, IA32_TME_* (denied); memory encryption is the host's.
    pub const TME_EN: u32 = bit(13);
    /// Bit 16: LA57, 5-level paging. The guest page walk that MMIO
    /// emulation, string I/O and SVM's instruction measuring go through
    /// handles 4 levels, so CR4.LA57 stays reserved (Debian's kernel turns
    /// it on wherever CPUID offers it, as QEMU's `-cpu max` does).
    pub const LA57: u32 = bit(16);
    /// Bit 23: Key Locker; the wrapping key is per logical processor state
    /// Ferrovisor does not switch, and leaf 19H is zero.
    pub const KL: u32 = bit(23);
    /// Bit 24: bus-lock detection, IA32_DEBUGCTL (denied).
    pub const BUS_LOCK_DETECT: u32 = bit(24);
    /// Bit 29: ENQCMD, IA32_PASID (denied).
    pub const ENQCMD: u32 = bit(29);
    /// Bit 30: SGX launch configuration, IA32_SGXLEPUBKEYHASH (denied).
    pub const SGX_LC: u32 = bit(30);
    /// Bit 31: PKS, IA32_PKRS (denied).
    pub const PKS: u32 = bit(31);

    /// Everything hidden outright (OSPKE is computed).
    pub const HIDDEN: u32 =
        WAITPKG | CET_SS | TME_EN | LA57 | KL | BUS_LOCK_DETECT | ENQCMD | SGX_LC | PKS;
}

/// Leaf 7 subleaf 0 EDX (SDM Vol. 2A, Table 3-8, leaf 07H).
mod leaf7_edx {
    use super::bit;

    /// Bit 1: SGX-KEYS (SGX is hidden).
    pub const SGX_KEYS: u32 = bit(1);
    /// Bit 5: user interrupts, IA32_UINTR_* (denied).
    pub const UINTR: u32 = bit(5);
    /// Bit 9: SRBDS_CTRL, IA32_MCU_OPT_CTRL (denied).
    pub const SRBDS_CTRL: u32 = bit(9);
    /// Bit 13: RTM_FORCE_ABORT, MSR_TSX_FORCE_ABORT (denied).
    pub const RTM_FORCE_ABORT: u32 = bit(13);
    /// Bit 18: PCONFIG; it is #UD unless the "enable PCONFIG" control is set,
    /// and leaf 1BH is zero.
    pub const PCONFIG: u32 = bit(18);
    /// Bit 19: architectural LBRs, IA32_LBR_* (denied), leaf 1CH zero.
    pub const ARCH_LBR: u32 = bit(19);
    /// Bit 20: CET indirect-branch tracking, IA32_U_CET/S_CET (denied).
    pub const CET_IBT: u32 = bit(20);
    /// Bit 22: AMX-BF16 (AMX is hidden: leaves 1DH/1EH are zero and
    /// IA32_XFD is denied).
    pub const AMX_BF16: u32 = bit(22);
    /// Bit 24: AMX-TILE.
    pub const AMX_TILE: u32 = bit(24);
    /// Bit 25: AMX-INT8.
    pub const AMX_INT8: u32 = bit(25);
    /// Bit 26: IBRS/IBPB, IA32_SPEC_CTRL and IA32_PRED_CMD (denied).
    pub const IBRS_IBPB: u32 = bit(26);
    /// Bit 27: STIBP, IA32_SPEC_CTRL (denied).
    pub const STIBP: u32 = bit(27);
    /// Bit 28: L1D_FLUSH, IA32_FLUSH_CMD (denied).
    pub const L1D_FLUSH: u32 = bit(28);
    /// Bit 29: IA32_ARCH_CAPABILITIES (denied).
    pub const ARCH_CAPABILITIES: u32 = bit(29);
    /// Bit 30: IA32_CORE_CAPABILITIES (denied).
    pub const CORE_CAPABILITIES: u32 = bit(30);
    /// Bit 31: SSBD, IA32_SPEC_CTRL (denied).
    pub const SSBD: u32 = bit(31);

    /// Everything hidden.
    pub const HIDDEN: u32 = SGX_KEYS
        | UINTR
        | SRBDS_CTRL
        | RTM_FORCE_ABORT
        | PCONFIG
        | ARCH_LBR
        | CET_IBT
        | AMX_BF16
        | AMX_TILE
        | AMX_INT8
        | IBRS_IBPB
        | STIBP
        | L1D_FLUSH
        | ARCH_CAPABILITIES
        | CORE_CAPABILITIES
        | SSBD;
}

/// Leaf 0DH subleaf 1 EAX (SDM Vol. 2A, Table 3-8, leaf 0DH, ECX = 1).
mod leaf_d1_eax {
    use super::bit;

    /// Bit 3: XSAVES/XRSTORS and IA32_XSS (denied; the instructions are also
    /// #UD unless the "enable XSAVES/XRSTORS" control is set).
    pub const XSAVES: u32 = bit(3);
    /// Bit 4: extended feature disable, IA32_XFD (denied).
    pub const XFD: u32 = bit(4);

    /// Everything hidden.
    pub const HIDDEN: u32 = XSAVES | XFD;
}

/// Leaf 8000_0001H ECX. Intel defines only bits 0, 5 and 8 (SDM Vol. 2A,
/// Table 3-8); the others are AMD's (AMD APM Vol. 3, Appendix E.4.2) and
/// are hidden for when the host is an AMD processor.
mod ext1_ecx {
    use super::bit;

    /// Bit 1, CmpLegacy: AMD's host core/thread layout, not the guest's.
    pub const CMP_LEGACY: u32 = bit(1);
    /// Bit 2, SVM: no nested virtualization.
    pub const SVM: u32 = bit(2);
    /// Bit 3, ExtApicSpace: no virtual APIC yet.
    pub const EXT_APIC_SPACE: u32 = bit(3);
    /// Bit 10, IBS: instruction-based sampling MSRs (denied).
    pub const IBS: u32 = bit(10);
    /// Bit 12, SKINIT: SKINIT/STGI belong to SVM.
    pub const SKINIT: u32 = bit(12);
    /// Bit 13, WDT: the host's watchdog timer.
    pub const WDT: u32 = bit(13);
    /// Bit 22, TopologyExtensions: leaf 8000_001EH would show the host's
    /// topology, not the guest's.
    pub const TOPOLOGY_EXTENSIONS: u32 = bit(22);
    /// Bit 23, PerfCtrExtCore: core performance counter MSRs (denied).
    pub const PERF_CTR_EXT_CORE: u32 = bit(23);
    /// Bit 24, PerfCtrExtNB: northbridge performance counters (denied).
    pub const PERF_CTR_EXT_NB: u32 = bit(24);
    /// Bit 26, DataBreakpointExtension: DR address-mask MSRs (denied).
    pub const DATA_BP_EXT: u32 = bit(26);
    /// Bit 27, PerfTsc: performance TSC MSR (denied).
    pub const PERF_TSC: u32 = bit(27);
    /// Bit 28, PerfCtrExtLLC: last-level-cache counters (denied).
    pub const PERF_CTR_EXT_LLC: u32 = bit(28);

    /// Everything hidden.
    pub const HIDDEN: u32 = CMP_LEGACY
        | SVM
        | EXT_APIC_SPACE
        | IBS
        | SKINIT
        | WDT
        | TOPOLOGY_EXTENSIONS
        | PERF_CTR_EXT_CORE
        | PERF_CTR_EXT_NB
        | DATA_BP_EXT
        | PERF_TSC
        | PERF_CTR_EXT_LLC;
}

/// Leaf 8000_0001H EDX: AMD mirrors leaf 1's MCE (7), MTRR (12) and MCA
/// (14) here (AMD APM Vol. 3, Appendix E.4.2; reserved on Intel); they are
/// hidden for the same reasons as in leaf 1.
const EXT1_EDX_HIDDEN: u32 = leaf1_edx::MCE | leaf1_edx::MTRR | leaf1_edx::MCA;

/// Basic leaves whose every register reads 0 for the guest, each describing
/// a feature that is hidden.
const ZERO_BASIC_LEAVES: &[u32] = &[
    0x05, // MONITOR/MWAIT parameters: MONITOR is hidden.
    0x06, // Thermal and power management: the host's.
    0x0A, // Architectural performance monitoring: no guest PMU.
    0x0F, // RDT monitoring: RDT-M is hidden.
    0x10, // RDT allocation: RDT-A is hidden.
    0x12, // SGX: hidden.
    0x14, // Intel Processor Trace: hidden.
    0x19, // Key Locker: hidden.
    0x1B, // PCONFIG: hidden.
    0x1C, // Architectural LBRs: hidden.
    0x1D, // AMX tile information: AMX is hidden.
    0x1E, // AMX TMUL information: AMX is hidden.
];

/// AMD's SVM features leaf: SVM is hidden (AMD APM Vol. 3, Appendix E.4.9).
const EXT_SVM_LEAF: u32 = 0x8000_000A;

/// One 4-byte word of [`SIGNATURE`], little-endian.
// Only ever evaluated at compile time (`const { .. }` at the callers), so a
// word past the 12-byte signature fails the build instead of panicking.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn signature_word(word: usize) -> u32 {
    let s = SIGNATURE;
    u32::from_le_bytes([
        s[word * 4],
        s[word * 4 + 1],
        s[word * 4 + 2],
        s[word * 4 + 3],
    ])
}

/// The guest's view of CPUID.(leaf, subleaf), from the host's values
/// `host(leaf, subleaf)`.
///
/// `host` should execute CPUID on the physical processor; it is called for
/// the asked leaf and, to apply the rules on leaf ranges, for leaves 0 and
/// 8000_0000H. A leaf above the host's highest basic or extended leaf, or
/// in no range at all, is answered as the guest view of the highest basic
/// leaf: Intel's rule for such leaves (SDM Vol. 2A, CPUID, "If a value
/// entered for CPUID.EAX is higher than the maximum input value for basic
/// or extended function for that processor then the data for the highest
/// basic information leaf is returned"), applied here so that the masks
/// still hold.
pub fn guest_cpuid(
    leaf: u32,
    subleaf: u32,
    ctx: &GuestCpuidContext,
    host: impl Fn(u32, u32) -> CpuidResult,
) -> CpuidResult {
    // The highest basic leaf, kept below the hypervisor range whatever the
    // host says, so the substitute leaf is always a basic one.
    let highest_basic = || host(0, 0).eax.min(HYPERVISOR_LEAF - 1);
    match leaf {
        0..HYPERVISOR_LEAF => {
            let max = highest_basic();
            basic_leaf(leaf.min(max), subleaf, ctx, &host)
        }
        HYPERVISOR_LEAF..=HYPERVISOR_RANGE_LAST => hypervisor_leaf(leaf),
        EXTENDED_LEAF..=EXTENDED_RANGE_LAST => {
            // A host with no extended leaves still answers 8000_0000H.
            let max = host(EXTENDED_LEAF, 0).eax.max(EXTENDED_LEAF);
            if leaf > max {
                basic_leaf(highest_basic(), subleaf, ctx, &host)
            } else {
                extended_leaf(leaf, subleaf, &host)
            }
        }
        _ => basic_leaf(highest_basic(), subleaf, ctx, &host),
    }
}

/// A basic leaf (below 4000_0000H) that the host implements.
fn basic_leaf(
    leaf: u32,
    subleaf: u32,
    ctx: &GuestCpuidContext,
    host: &impl Fn(u32, u32) -> CpuidResult,
) -> CpuidResult {
    let vcpus = ctx.vcpus.max(1);
    match leaf {
        1 => leaf_1(host(1, subleaf), ctx, vcpus),
        4 => leaf_4(host(4, subleaf), vcpus),
        7 if subleaf == 0 => leaf_7_0(host(7, 0), ctx),
        0x0B | 0x1F => extended_topology(subleaf, ctx, vcpus),
        0x15 => tsc_leaf(ctx.tsc_hz),
        0x16 => frequency_leaf(ctx.tsc_hz),
        0x0D if subleaf == 1 => {
            // IA32_XSS is denied, so no supervisor state component is
            // offered: ECX:EDX (the IA32_XSS bits supported) are 0.
            let raw = host(0x0D, 1);
            CpuidResult {
                eax: raw.eax & !leaf_d1_eax::HIDDEN,
                ebx: raw.ebx,
                ecx: 0,
                edx: 0,
            }
        }
        _ if ZERO_BASIC_LEAVES.contains(&leaf) => CpuidResult::default(),
        // Leaf 0 (vendor, highest basic leaf), 0DH (XSAVE: the exit handler
        // checks XSETBV against the host), the other subleaves of leaf 7,
        // and the rest describe the processor as it is.
        _ => host(leaf, subleaf),
    }
}

/// Leaf 1: version, brand/CLFLUSH/topology in EBX, feature flags.
fn leaf_1(raw: CpuidResult, ctx: &GuestCpuidContext, vcpus: u32) -> CpuidResult {
    let mut ecx = raw.ecx & !(leaf1_ecx::HIDDEN | leaf1_ecx::OSXSAVE);
    // OSXSAVE reflects the guest's CR4 (SDM Vol. 2A, Table 3-10), and only
    // means something if XSAVE itself is offered.
    if ctx.cr4_osxsave && raw.ecx & leaf1_ecx::XSAVE != 0 {
        ecx |= leaf1_ecx::OSXSAVE;
    }
    ecx |= leaf1_ecx::HYPERVISOR;

    let mut edx = raw.edx & !(leaf1_edx::HIDDEN | leaf1_edx::HTT);
    if vcpus > 1 {
        edx |= leaf1_edx::HTT;
    }

    // EBX[31:24]: initial APIC ID (the low 8 bits of the x2APIC ID for
    // larger IDs); EBX[23:16]: addressable logical processor IDs in the
    // package, an 8-bit field; EBX[15:0]: brand index and CLFLUSH line
    // size, kept.
    let logical = vcpus.min(0xFF);
    let ebx = (raw.ebx & 0xFFFF) | (logical << 16) | ((ctx.vcpu_index & 0xFF) << 24);

    CpuidResult {
        eax: raw.eax,
        ebx,
        ecx,
        edx,
    }
}

/// Leaf 4, deterministic cache parameters: the host's cache descriptions,
/// each private to one logical processor in a package of `vcpus` cores.
/// Leaf 15H, "Time Stamp Counter and Nominal Core Crystal Clock": the TSC
/// runs at ECX * EBX / EAX Hz. ECX is [`CRYSTAL_HZ`]; EBX/EAX is the TSC
/// rate in kHz over the crystal's, which fits 32 bits for any TSC below
/// 4 THz. All zero (not enumerated) where the rate is unknown.
fn tsc_leaf(tsc_hz: u64) -> CpuidResult {
    let tsc_khz = u32::try_from(tsc_hz / 1000).unwrap_or(0);
    if tsc_khz == 0 {
        return CpuidResult::default();
    }
    CpuidResult {
        eax: CRYSTAL_HZ / 1000,
        ebx: tsc_khz,
        ecx: CRYSTAL_HZ,
        edx: 0,
    }
}

/// Leaf 16H, "Processor Frequency Information": base and maximum frequency
/// in MHz (the TSC's: what a guest would measure) and the bus (reference)
/// frequency, which is the crystal's.
fn frequency_leaf(tsc_hz: u64) -> CpuidResult {
    let mhz = u32::try_from(tsc_hz / 1_000_000).unwrap_or(0) & 0xFFFF;
    if mhz == 0 {
        return CpuidResult::default();
    }
    CpuidResult {
        eax: mhz,
        ebx: mhz,
        ecx: CRYSTAL_HZ / 1_000_000,
        edx: 0,
    }
}

fn leaf_4(raw: CpuidResult, vcpus: u32) -> CpuidResult {
    // Cache type 0 in EAX[4:0]: no more caches, and the rest is not defined.
    if raw.eax & 0x1F == 0 {
        return raw;
    }
    // EAX[31:26]: addressable core IDs in the package, minus 1 (6 bits);
    // EAX[25:14]: addressable logical processor IDs sharing this cache,
    // minus 1: 0, one thread per cache.
    let cores_minus_one = vcpus.saturating_sub(1).min(0x3F);
    CpuidResult {
        eax: (raw.eax & 0x3FFF) | (cores_minus_one << 26),
        ..raw
    }
}

/// Leaf 7 subleaf 0: structured extended feature flags.
fn leaf_7_0(raw: CpuidResult, ctx: &GuestCpuidContext) -> CpuidResult {
    let mut ecx = raw.ecx & !(leaf7_ecx::HIDDEN | leaf7_ecx::OSPKE);
    // OSPKE reflects the guest's CR4.PKE, and only if PKU is offered.
    if ctx.cr4_pke && raw.ecx & leaf7_ecx::PKU != 0 {
        ecx |= leaf7_ecx::OSPKE;
    }
    CpuidResult {
        eax: raw.eax,
        ebx: raw.ebx & !leaf7_ebx::HIDDEN,
        ecx,
        edx: raw.edx & !leaf7_edx::HIDDEN,
    }
}

/// Leaves 0BH and 1FH, extended topology: every vCPU is one core of one
/// package with one thread, its x2APIC ID being its index.
///
/// Subleaf 0 is the SMT level (level type 1): 1 logical processor, shift 0.
/// Subleaf 1 is the core level (type 2): `vcpus` logical processors, and
/// the x2APIC ID shifted right by ceil(log2(vcpus)) is the package ID (0).
/// Higher subleaves are invalid (type 0). EDX is the x2APIC ID throughout;
/// ECX[7:0] echoes the subleaf (SDM Vol. 2A, Table 3-8, leaves 0BH, 1FH).
fn extended_topology(subleaf: u32, ctx: &GuestCpuidContext, vcpus: u32) -> CpuidResult {
    let (eax, ebx, level_type) = match subleaf {
        0 => (0, 1, 1),
        1 => (id_bits(vcpus), vcpus.min(0xFFFF), 2),
        _ => (0, 0, 0),
    };
    CpuidResult {
        eax,
        ebx,
        ecx: (level_type << 8) | (subleaf & 0xFF),
        edx: ctx.vcpu_index,
    }
}

/// ceil(log2(n)): how many low x2APIC ID bits number `n` processors, kept
/// to the 5-bit EAX[4:0] field of the topology leaves.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS
            .saturating_sub(n.saturating_sub(1).leading_zeros())
            .min(0x1F)
    }
}

/// The hypervisor range, 4000_0000H..=4FFF_FFFFH: Ferrovisor's leaves, never
/// the host's (the host may itself run under a hypervisor).
fn hypervisor_leaf(leaf: u32) -> CpuidResult {
    match leaf {
        HYPERVISOR_LEAF => CpuidResult {
            eax: HYPERVISOR_LEAF_MAX,
            ebx: const { signature_word(0) },
            ecx: const { signature_word(1) },
            edx: const { signature_word(2) },
        },
        HYPERVISOR_LEAF_MAX => CpuidResult {
            eax: HYPERCALL_ABI_VERSION,
            ..CpuidResult::default()
        },
        _ => CpuidResult::default(),
    }
}

/// An extended leaf (8000_0000H and up) that the host implements: the
/// host's values but for SVM and AMD's host-only bits.
fn extended_leaf(leaf: u32, subleaf: u32, host: &impl Fn(u32, u32) -> CpuidResult) -> CpuidResult {
    match leaf {
        0x8000_0001 => {
            let raw = host(leaf, subleaf);
            CpuidResult {
                ecx: raw.ecx & !ext1_ecx::HIDDEN,
                edx: raw.edx & !EXT1_EDX_HIDDEN,
                ..raw
            }
        }
        EXT_SVM_LEAF => CpuidResult::default(),
        _ => host(leaf, subleaf),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A host whose every register of every leaf is all ones.
    fn all_ones(_: u32, _: u32) -> CpuidResult {
        CpuidResult {
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
        }
    }

    /// A distinct value for every (leaf, subleaf, register).
    fn pattern(leaf: u32, subleaf: u32, reg: u32) -> u32 {
        leaf.wrapping_mul(0x9E37_79B9)
            ^ subleaf.wrapping_mul(0x85EB_CA6B)
            ^ reg.wrapping_mul(0xC2B2_AE35)
    }

    /// A host with distinct values everywhere, highest basic leaf 20H and
    /// highest extended leaf 8000_0008H.
    fn patterned(leaf: u32, subleaf: u32) -> CpuidResult {
        match leaf {
            0 => CpuidResult {
                eax: 0x20,
                ebx: 0x756E_6547,
                ecx: 0x6C65_746E,
                edx: 0x4965_6E69,
            },
            EXTENDED_LEAF => CpuidResult {
                eax: 0x8000_0008,
                ..CpuidResult::default()
            },
            _ => CpuidResult {
                eax: pattern(leaf, subleaf, 0),
                ebx: pattern(leaf, subleaf, 1),
                ecx: pattern(leaf, subleaf, 2),
                edx: pattern(leaf, subleaf, 3),
            },
        }
    }

    fn ctx(vcpu_index: u32, vcpus: u32) -> GuestCpuidContext {
        GuestCpuidContext {
            vcpu_index,
            vcpus,
            cr4_osxsave: false,
            cr4_pke: false,
            tsc_hz: 0,
        }
    }

    #[test]
    fn the_tsc_rate_is_offered_through_leaves_15h_and_16h() {
        let mut c = ctx(0, 1);
        c.tsc_hz = 3_500_000_000;
        let l15 = guest_cpuid(0x15, 0, &c, patterned);
        assert_eq!(l15.ecx, CRYSTAL_HZ);
        // Linux: tsc_khz = crystal_khz * EBX / EAX.
        let khz = u64::from(l15.ecx / 1000) * u64::from(l15.ebx) / u64::from(l15.eax);
        assert_eq!(khz, 3_500_000);
        let l16 = guest_cpuid(0x16, 0, &c, patterned);
        assert_eq!((l16.eax, l16.ebx, l16.ecx), (3500, 3500, 25));
        // Unknown rate: not enumerated.
        c.tsc_hz = 0;
        assert_eq!(guest_cpuid(0x15, 0, &c, patterned), CpuidResult::default());
        assert_eq!(guest_cpuid(0x16, 0, &c, patterned), CpuidResult::default());
    }

    #[test]
    fn the_tsc_deadline_timer_is_offered_and_the_x2apic_is_not() {
        let l1 = guest_cpuid(1, 0, &ctx(0, 1), all_ones);
        assert_ne!(l1.ecx & leaf1_ecx::TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & leaf1_ecx::X2APIC, 0);
    }

    #[test]
    fn leaf_1_with_an_all_ones_host() {
        let one = guest_cpuid(1, 0, &ctx(0, 1), all_ones);
        assert_eq!(one.eax, u32::MAX);
        // Hidden ECX bits 2-8, 11, 14, 15, 18, 21, 27 (OSXSAVE, CR4 off);
        // bit 24 (TSC-deadline) kept, bit 31 set.
        assert_eq!(one.ecx, 0xF7DB_3603);
        // Hidden EDX bits 7, 12, 14, 21, 22, 28 (one vCPU), 29, 31.
        assert_eq!(one.edx, 0x4F9F_AF7F);
        // APIC ID 0, one logical processor, low 16 bits kept.
        assert_eq!(one.ebx, 0x0001_FFFF);

        let four = guest_cpuid(1, 0, &ctx(3, 4), all_ones);
        assert_eq!(four.edx, 0x5F9F_AF7F, "HTT with 4 vCPUs");
        assert_eq!(four.ebx, 0x0304_FFFF);
        assert_eq!(four.ecx, one.ecx);
    }

    #[test]
    fn leaf_1_hides_each_named_bit() {
        let r = guest_cpuid(1, 0, &ctx(0, 2), all_ones);
        for bit in [2, 3, 4, 5, 6, 7, 8, 14, 15, 21] {
            assert_eq!(r.ecx & (1 << bit), 0, "ECX bit {bit}");
        }
        for bit in [7, 12, 14, 21, 22, 29, 31] {
            assert_eq!(r.edx & (1 << bit), 0, "EDX bit {bit}");
        }
        assert_ne!(r.ecx & (1 << 31), 0, "hypervisor bit");
        // PAT (16), APIC (9), TSC (4), XSAVE (26) and AES (25) stay.
        for bit in [4, 9, 16] {
            assert_ne!(r.edx & (1 << bit), 0, "EDX bit {bit}");
        }
        for bit in [25, 26] {
            assert_ne!(r.ecx & (1 << bit), 0, "ECX bit {bit}");
        }
    }

    #[test]
    fn hypervisor_bit_set_even_when_the_host_clears_it() {
        let r = guest_cpuid(1, 0, &ctx(0, 1), |_, _| CpuidResult {
            eax: 1,
            ..CpuidResult::default()
        });
        assert_eq!(r.ecx, leaf1_ecx::HYPERVISOR);
        assert_eq!(r.edx, 0);
    }

    #[test]
    fn osxsave_follows_cr4_only_with_xsave() {
        let xsave_host = |leaf: u32, _| CpuidResult {
            eax: 0xD,
            ecx: if leaf == 1 {
                leaf1_ecx::XSAVE | leaf1_ecx::OSXSAVE
            } else {
                0
            },
            ..CpuidResult::default()
        };
        let no_xsave_host = |leaf: u32, _| CpuidResult {
            eax: 0xD,
            ecx: if leaf == 1 { leaf1_ecx::OSXSAVE } else { 0 },
            ..CpuidResult::default()
        };
        let mut c = ctx(0, 1);
        // The host's own OSXSAVE (set) does not leak through.
        assert_eq!(
            guest_cpuid(1, 0, &c, xsave_host).ecx & leaf1_ecx::OSXSAVE,
            0
        );
        c.cr4_osxsave = true;
        assert_ne!(
            guest_cpuid(1, 0, &c, xsave_host).ecx & leaf1_ecx::OSXSAVE,
            0
        );
        assert_eq!(
            guest_cpuid(1, 0, &c, no_xsave_host).ecx & leaf1_ecx::OSXSAVE,
            0
        );
    }

    #[test]
    fn leaf_1_clamps_the_logical_processor_count_and_apic_id() {
        let r = guest_cpuid(1, 0, &ctx(300, 300), all_ones);
        assert_eq!(r.ebx >> 16 & 0xFF, 255);
        assert_eq!(r.ebx >> 24, 300 & 0xFF);
        // Zero vCPUs is taken as one.
        let r = guest_cpuid(1, 0, &ctx(0, 0), all_ones);
        assert_eq!(r.ebx >> 16 & 0xFF, 1);
        assert_eq!(r.edx & leaf1_edx::HTT, 0);
    }

    #[test]
    fn leaf_4_keeps_the_cache_and_rewrites_sharing() {
        for subleaf in 0..4 {
            let raw = patterned(4, subleaf);
            let r = guest_cpuid(4, subleaf, &ctx(1, 8), patterned);
            assert_eq!(r.eax & 0x3FFF, raw.eax & 0x3FFF, "subleaf {subleaf}");
            assert_eq!(r.eax >> 14 & 0xFFF, 0, "one thread per cache");
            assert_eq!(r.eax >> 26, 7);
            assert_eq!((r.ebx, r.ecx, r.edx), (raw.ebx, raw.ecx, raw.edx));
        }
        // The all-ones host: cache fields kept, 63 cores at most.
        let r = guest_cpuid(4, 0, &ctx(0, 1000), all_ones);
        assert_eq!(r.eax, (63 << 26) | 0x3FFF);
        // A null cache (type 0) is left alone.
        let null = |leaf: u32, _| CpuidResult {
            eax: if leaf == 0 { 4 } else { 0xFC00_0000 },
            ebx: 5,
            ..CpuidResult::default()
        };
        assert_eq!(
            guest_cpuid(4, 3, &ctx(0, 2), null),
            CpuidResult {
                eax: 0xFC00_0000,
                ebx: 5,
                ..CpuidResult::default()
            }
        );
    }

    #[test]
    fn feature_leaves_of_hidden_features_are_zero() {
        for leaf in [
            5, 6, 0xA, 0xF, 0x10, 0x12, 0x14, 0x19, 0x1B, 0x1C, 0x1D, 0x1E,
        ] {
            for subleaf in [0, 1, 2] {
                assert_eq!(
                    guest_cpuid(leaf, subleaf, &ctx(0, 2), all_ones),
                    CpuidResult::default(),
                    "leaf {leaf:#x}.{subleaf}"
                );
            }
        }
    }

    #[test]
    fn leaf_7_subleaf_0_masks() {
        let r = guest_cpuid(7, 0, &ctx(0, 1), all_ones);
        assert_eq!(r.eax, u32::MAX, "highest subleaf passed through");
        for bit in [2, 12, 14, 15, 25] {
            assert_eq!(r.ebx & (1 << bit), 0, "EBX bit {bit}");
        }
        assert_ne!(
            r.ebx & leaf7_ebx::TSC_ADJUST,
            0,
            "IA32_TSC_ADJUST is emulated"
        );
        assert_eq!(r.ebx, !leaf7_ebx::HIDDEN);
        for bit in [4, 5, 7, 13, 16, 23, 24, 29, 30, 31] {
            assert_eq!(r.ecx & (1 << bit), 0, "ECX bit {bit}");
        }
        assert_ne!(r.ecx & leaf7_ecx::PKU, 0);
        for bit in [1, 5, 9, 13, 18, 19, 20, 22, 24, 25, 26, 27, 28, 29, 30, 31] {
            assert_eq!(r.edx & (1 << bit), 0, "EDX bit {bit}");
        }
        assert_eq!(r.edx, 0x00A3_DDDD);
    }

    #[test]
    fn ospke_follows_cr4_pke_only_with_pku() {
        let mut c = ctx(0, 1);
        assert_eq!(guest_cpuid(7, 0, &c, all_ones).ecx & leaf7_ecx::OSPKE, 0);
        c.cr4_pke = true;
        assert_ne!(guest_cpuid(7, 0, &c, all_ones).ecx & leaf7_ecx::OSPKE, 0);
        let no_pku = |leaf: u32, _| CpuidResult {
            eax: if leaf == 0 { 7 } else { 0 },
            ecx: !leaf7_ecx::PKU,
            ..CpuidResult::default()
        };
        assert_eq!(guest_cpuid(7, 0, &c, no_pku).ecx & leaf7_ecx::OSPKE, 0);
    }

    #[test]
    fn leaf_7_other_subleaves_pass_through() {
        for subleaf in [1, 2, 5] {
            assert_eq!(
                guest_cpuid(7, subleaf, &ctx(0, 1), patterned),
                patterned(7, subleaf)
            );
        }
    }

    #[test]
    fn xsave_leaf_passes_through_but_xsaves_and_xfd() {
        for subleaf in [0, 2, 5, 17, 18] {
            assert_eq!(
                guest_cpuid(0xD, subleaf, &ctx(0, 1), patterned),
                patterned(0xD, subleaf)
            );
        }
        let r = guest_cpuid(0xD, 1, &ctx(0, 1), all_ones);
        assert_eq!(r.eax, !0b1_1000, "XSAVEOPT, XSAVEC, XGETBV1 kept");
        assert_eq!(r.ebx, u32::MAX);
        assert_eq!((r.ecx, r.edx), (0, 0), "no IA32_XSS state");
    }

    #[test]
    fn topology_leaves() {
        for leaf in [0xB, 0x1F] {
            let c = ctx(5, 6);
            assert_eq!(
                guest_cpuid(leaf, 0, &c, all_ones),
                CpuidResult {
                    eax: 0,
                    ebx: 1,
                    ecx: 0x100,
                    edx: 5
                }
            );
            assert_eq!(
                guest_cpuid(leaf, 1, &c, all_ones),
                CpuidResult {
                    eax: 3,
                    ebx: 6,
                    ecx: 0x201,
                    edx: 5
                }
            );
            for subleaf in [2, 3, 0x1FF] {
                assert_eq!(
                    guest_cpuid(leaf, subleaf, &c, all_ones),
                    CpuidResult {
                        eax: 0,
                        ebx: 0,
                        ecx: subleaf & 0xFF,
                        edx: 5
                    }
                );
            }
        }
        assert_eq!(guest_cpuid(0xB, 1, &ctx(0, 1), all_ones).eax, 0);
        assert_eq!(id_bits(u32::MAX), 31, "kept to the 5-bit field");
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(65), 7);
    }

    /// Leaves 1, 4 and 0BH/1FH describe the same package.
    #[test]
    fn topology_agrees_between_leaves_1_4_and_0b() {
        for vcpus in [1, 2, 3, 64] {
            for vcpu_index in [0, vcpus - 1] {
                let c = ctx(vcpu_index, vcpus);
                let l1 = guest_cpuid(1, 0, &c, patterned);
                let l4 = guest_cpuid(4, 0, &c, patterned);
                let smt = guest_cpuid(0xB, 0, &c, patterned);
                let core = guest_cpuid(0xB, 1, &c, patterned);
                let shift = core.eax & 0x1F;

                // One package of `vcpus` logical processors.
                assert_eq!(core.ebx & 0xFFFF, vcpus);
                assert_eq!(l1.edx & leaf1_edx::HTT != 0, vcpus > 1);
                let l1_count = if vcpus > 1 { l1.ebx >> 16 & 0xFF } else { 1 };
                assert_eq!(l1_count, vcpus);
                // The ID space each leaf reserves, rounded to a power of two
                // as the SDM says, is the same.
                let ids = 1u32 << shift;
                assert_eq!(l1_count.next_power_of_two(), ids, "vcpus {vcpus}");
                assert_eq!(((l4.eax >> 26) + 1).next_power_of_two(), ids);
                assert!(ids >= vcpus && ids / 2 < vcpus.max(1) || vcpus == 1);
                // One thread per core, and per cache.
                assert_eq!((smt.eax & 0x1F, smt.ebx & 0xFFFF), (0, 1));
                assert_eq!(l4.eax >> 14 & 0xFFF, 0);
                // The same APIC ID everywhere, in the same package.
                assert_eq!(l1.ebx >> 24, smt.edx & 0xFF);
                assert_eq!(smt.edx, vcpu_index);
                assert_eq!(core.edx, vcpu_index);
                assert_eq!(core.edx >> shift, 0, "package 0");
                assert_eq!(guest_cpuid(0x1F, 1, &c, patterned), core);
            }
        }
    }

    #[test]
    fn vmx_is_never_visible() {
        let hosts: [&dyn Fn(u32, u32) -> CpuidResult; 2] = [&all_ones, &patterned];
        for host in hosts {
            for vcpus in [0, 1, 2, 255, 256, u32::MAX] {
                for (osxsave, pke) in [(false, false), (true, true)] {
                    let c = GuestCpuidContext {
                        vcpu_index: 0,
                        vcpus,
                        cr4_osxsave: osxsave,
                        cr4_pke: pke,
                        tsc_hz: 0,
                    };
                    let r = guest_cpuid(1, 0, &c, host);
                    assert_eq!(r.ecx & leaf1_ecx::VMX, 0);
                    assert_eq!(r.ecx & leaf1_ecx::SMX, 0);
                    let ext = guest_cpuid(0x8000_0001, 0, &c, host);
                    assert_eq!(ext.ecx & ext1_ecx::SVM, 0);
                }
            }
        }
    }

    #[test]
    fn hypervisor_leaves() {
        let r = guest_cpuid(HYPERVISOR_LEAF, 0, &ctx(0, 1), all_ones);
        assert_eq!(r.eax, 0x4000_0001);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
        assert_eq!(&sig, b"FerrovisorVM");
        assert_eq!(r.ebx, u32::from_le_bytes(*b"Ferr"));

        assert_eq!(
            guest_cpuid(0x4000_0001, 0, &ctx(0, 1), all_ones),
            CpuidResult {
                // Version 2: call numbers carry the "FV" prefix.
                eax: 2,
                ..CpuidResult::default()
            }
        );
        for leaf in [0x4000_0002, 0x4000_0100, 0x4FFF_FFFF] {
            assert_eq!(
                guest_cpuid(leaf, 0, &ctx(0, 1), all_ones),
                CpuidResult::default()
            );
        }
    }

    #[test]
    fn leaf_0_and_other_basic_leaves_pass_through() {
        // (15H and 16H report the guest's TSC rate instead.)
        for leaf in [0, 2, 3, 0x17, 0x20] {
            for subleaf in [0, 1] {
                assert_eq!(
                    guest_cpuid(leaf, subleaf, &ctx(0, 2), patterned),
                    patterned(leaf, subleaf),
                    "leaf {leaf:#x}"
                );
            }
        }
    }

    #[test]
    fn leaves_beyond_the_host_maximum_get_the_highest_basic_leaf() {
        // Highest basic leaf 0BH, highest extended 8000_0001H.
        let host = |leaf: u32, subleaf: u32| match leaf {
            0 => CpuidResult {
                eax: 0xB,
                ..CpuidResult::default()
            },
            EXTENDED_LEAF => CpuidResult {
                eax: 0x8000_0001,
                ..CpuidResult::default()
            },
            _ => patterned(leaf, subleaf),
        };
        let c = ctx(2, 4);
        let topology = guest_cpuid(0xB, 1, &c, host);
        assert_eq!(topology.ebx, 4);
        for leaf in [
            0xC,
            0x1F,
            0x3FFF_FFFF,
            0x8000_0002,
            0x8FFF_FFFF,
            0x9000_0000,
            u32::MAX,
        ] {
            assert_eq!(guest_cpuid(leaf, 1, &c, host), topology, "leaf {leaf:#x}");
        }
        // The host's topology in leaf 0BH never shows.
        assert_ne!(topology, patterned(0xB, 1));
        // In range, the extended leaves are the host's.
        assert_eq!(guest_cpuid(0x8000_0000, 0, &c, host).eax, 0x8000_0001);
    }

    #[test]
    fn extended_leaves() {
        let r = guest_cpuid(0x8000_0001, 0, &ctx(0, 1), all_ones);
        assert_eq!(r.eax, u32::MAX);
        assert_eq!(r.ecx, 0xE23F_CBF1);
        assert_eq!(r.edx, !((1 << 7) | (1 << 12) | (1 << 14)));
        // LAHF/SAHF, LZCNT, PREFETCHW; SYSCALL, NX, 1-GiB pages, RDTSCP, LM.
        for bit in [0, 5, 8] {
            assert_ne!(r.ecx & (1 << bit), 0);
        }
        for bit in [11, 20, 26, 27, 29] {
            assert_ne!(r.edx & (1 << bit), 0);
        }
        assert_eq!(
            guest_cpuid(0x8000_000A, 0, &ctx(0, 1), all_ones),
            CpuidResult::default()
        );
        for leaf in [0x8000_0000, 0x8000_0002, 0x8000_0006, 0x8000_0008] {
            assert_eq!(
                guest_cpuid(leaf, 0, &ctx(0, 1), patterned),
                patterned(leaf, 0),
                "leaf {leaf:#x}"
            );
        }
    }

    proptest! {
        /// Whatever the host returns, nothing panics and the hidden bits
        /// stay hidden.
        #[test]
        fn any_host_any_leaf(
            leaf in any::<u32>(),
            subleaf in any::<u32>(),
            regs in any::<[u32; 4]>(),
            max in any::<u32>(),
            vcpu_index in any::<u32>(),
            vcpus in any::<u32>(),
        ) {
            let host = |l: u32, _| if l == 0 { CpuidResult { eax: max, ..CpuidResult::default() } }
                else { CpuidResult { eax: regs[0], ebx: regs[1], ecx: regs[2], edx: regs[3] } };
            let c = GuestCpuidContext { vcpu_index, vcpus, cr4_osxsave: true, cr4_pke: true, tsc_hz: 3_500_000_000 };
            let _ = guest_cpuid(leaf, subleaf, &c, host);
            let l1 = guest_cpuid(1, subleaf, &c, host);
            if max >= 1 {
                prop_assert_eq!(l1.ecx & leaf1_ecx::HIDDEN, 0);
                prop_assert_eq!(l1.edx & leaf1_edx::HIDDEN, 0);
            }
            let l7 = guest_cpuid(7, 0, &c, host);
            if max >= 7 {
                prop_assert_eq!(l7.edx & leaf7_edx::HIDDEN, 0);
            }
        }
    }
}
