//! The guest MSR allow-list: which MSRs a guest reads and writes on the
//! processor directly, which Ferrovisor emulates, and which are refused
//! with #GP; the MSR bitmap that enforces it; and the per-vCPU values of
//! the emulated MSRs. Pure.
//!
//! MSR indices and bit layouts are SDM Vol. 4, Chapter 2, Table 2-2
//! ("IA-32 Architectural MSRs"). Refusing an MSR with #GP(0) is what the
//! processor itself does for an MSR it does not implement (SDM Vol. 2B,
//! RDMSR and WRMSR, "Protected Mode Exceptions"), so a guest sees a
//! processor that lacks the MSR, not a failure. Every MSR that is not
//! named here is denied: the host's VMX, SMM, debug, performance-monitoring,
//! speculation-control and power-management MSRs included. CPUID
//! ([`super::cpuid`]) hides the features that would lead a guest to them.

use core::fmt;

/// IA32_TIME_STAMP_COUNTER: reads pass through (the VMCS TSC offset, if in
/// use, applies); writes are dropped, see [`VirtualMsrs::write`].
pub const IA32_TIME_STAMP_COUNTER: u32 = 0x10;
/// IA32_PLATFORM_ID: read-only; emulated as 0.
pub const IA32_PLATFORM_ID: u32 = 0x17;
/// IA32_APIC_BASE: emulated by the vCPU's local APIC (SDM Vol. 3A, 11.4.4
/// "Local APIC Status and Location"); the exit handler answers it before
/// [`VirtualMsrs`], which refuses it.
pub const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_BIOS_SIGN_ID: the microcode revision; emulated as 0.
pub const IA32_BIOS_SIGN_ID: u32 = 0x8B;
/// IA32_MTRRCAP: read-only; emulated as 0 (no MTRRs).
pub const IA32_MTRRCAP: u32 = 0xFE;
/// IA32_SYSENTER_CS: pass-through, guest value in the VMCS.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP: pass-through, guest value in the VMCS.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP: pass-through, guest value in the VMCS.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MCG_CAP: read-only; emulated as 0 (no machine-check banks).
pub const IA32_MCG_CAP: u32 = 0x179;
/// IA32_MCG_STATUS: emulated as 0.
pub const IA32_MCG_STATUS: u32 = 0x17A;
/// IA32_MISC_ENABLE: emulated.
pub const IA32_MISC_ENABLE: u32 = 0x1A0;
/// IA32_PAT: pass-through, guest value in the VMCS.
pub const IA32_PAT: u32 = 0x277;
/// IA32_MTRR_DEF_TYPE: emulated as storage.
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;
/// IA32_EFER: reads pass through (guest value in the VMCS); writes exit
/// and the exit handler checks them ([`super::cr::wrmsr_efer`]), so no
/// guest can leave an EFER that VM entry refuses or that enables what its
/// CPUID hides. (SVM makes reads exit too, to hide EFER.SVME: the exit
/// handler answers them with the guest's view.)
pub const IA32_EFER: u32 = 0xC000_0080;
/// IA32_STAR: pass-through, switched by the caller.
pub const IA32_STAR: u32 = 0xC000_0081;
/// IA32_LSTAR: pass-through, switched by the caller.
pub const IA32_LSTAR: u32 = 0xC000_0082;
/// IA32_CSTAR: pass-through, switched by the caller.
pub const IA32_CSTAR: u32 = 0xC000_0083;
/// IA32_FMASK: pass-through, switched by the caller.
pub const IA32_FMASK: u32 = 0xC000_0084;
/// IA32_FS_BASE: pass-through, guest value in the VMCS (FS base field).
pub const IA32_FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE: pass-through, guest value in the VMCS (GS base field).
pub const IA32_GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE: pass-through, switched by the caller.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// IA32_TSC_AUX: pass-through, switched by the caller.
pub const IA32_TSC_AUX: u32 = 0xC000_0103;

/// MSRs passed through whose guest value the processor keeps in the VMCS
/// guest-state area: the segment-base and SYSENTER fields are always saved
/// and loaded (SDM Vol. 3C, 25.4.1 "Guest Register State"), EFER and PAT
/// when the "save/load IA32_EFER" and "save/load IA32_PAT" VM-exit and
/// VM-entry controls are 1, which passing them through requires.
pub const VMCS_MSRS: &[u32] = &[
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_PAT,
    IA32_EFER,
    IA32_FS_BASE,
    IA32_GS_BASE,
];

/// MSRs passed through whose guest value is not in the VMCS: the caller
/// saves and restores them when it switches between vCPUs on one CPU (the
/// hypervisor itself never uses them: it has no SYSCALL, no user mode
/// and no RDTSCP/RDPID, so a guest's value may stay loaded while the
/// hypervisor runs).
pub const SWITCHED_MSRS: &[u32; 6] = &[
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_KERNEL_GS_BASE,
    IA32_TSC_AUX,
];

/// IA32_TSC_DEADLINE: emulated by the vCPU's local APIC (the exit handler
/// answers it before [`VirtualMsrs`], which refuses it).
pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
/// IA32_TSC_ADJUST: emulated by the exit handler on top of the guest's TSC
/// offset (a write moves the guest's TSC by the change, SDM Vol. 3B,
/// 17.17.3); [`VirtualMsrs`] refuses it.
pub const IA32_TSC_ADJUST: u32 = 0x3B;

/// MSRs that exit to be answered: by [`VirtualMsrs`], or for
/// IA32_TSC_DEADLINE by the local APIC.
/// The emulated MSRs the exit handler answers itself (from the local APIC
/// and the TSC offset) rather than [`VirtualMsrs`].
pub const EXIT_HANDLER_MSRS: &[u32] = &[IA32_TSC_DEADLINE, IA32_TSC_ADJUST, IA32_APIC_BASE];

const EMULATED_MSRS: &[u32] = &[
    IA32_TSC_DEADLINE,
    IA32_TSC_ADJUST,
    IA32_PLATFORM_ID,
    IA32_APIC_BASE,
    IA32_BIOS_SIGN_ID,
    IA32_MTRRCAP,
    IA32_MCG_CAP,
    IA32_MCG_STATUS,
    IA32_MISC_ENABLE,
    IA32_MTRR_DEF_TYPE,
];

/// What happens to one guest RDMSR or WRMSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrRule {
    /// The access runs on the processor without a VM exit.
    PassThrough,
    /// The access exits and [`VirtualMsrs`] answers it (which may still be
    /// #GP, e.g. a write to a read-only MSR).
    Emulated,
    /// The access exits and the caller injects #GP(0).
    Denied,
}

/// The rule for RDMSR (`write` false) or WRMSR (`write` true) of `msr`.
///
/// The access kind is an argument because IA32_TIME_STAMP_COUNTER and
/// IA32_EFER are MSRs whose reads and writes differ: reads pass through,
/// writes are emulated.
pub fn rule(msr: u32, write: bool) -> MsrRule {
    if msr == IA32_EFER && write {
        MsrRule::Emulated
    } else if msr == IA32_TIME_STAMP_COUNTER {
        if write {
            MsrRule::Emulated
        } else {
            MsrRule::PassThrough
        }
    } else if VMCS_MSRS.contains(&msr) || SWITCHED_MSRS.contains(&msr) {
        MsrRule::PassThrough
    } else if EMULATED_MSRS.contains(&msr) {
        MsrRule::Emulated
    } else {
        MsrRule::Denied
    }
}

/// The guest's RDMSR or WRMSR is refused: the caller injects #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InjectGp;

impl fmt::Display for InjectGp {
    /// `MSR access refused: the guest gets #GP(0)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MSR access refused: the guest gets #GP(0)")
    }
}

// IA32_MISC_ENABLE (SDM Vol. 4, Table 2-2, "IA32_MISC_ENABLE").
/// Bit 0: fast-strings enable (R/W). The guest's setting is its own; the
/// processor keeps the host's (REP MOVS/STOS behave the same either way).
const MISC_FAST_STRINGS: u64 = 1 << 0;
/// Bit 3: automatic thermal control circuit enable (R/W); a vCPU has no
/// thermal sensor to act on, so the bit is the guest's to keep.
const MISC_AUTO_TCC: u64 = 1 << 3;
/// Bit 16: Enhanced Intel SpeedStep enable (R/W); a vCPU has no
/// performance states, so the bit is the guest's to keep.
const MISC_EIST: u64 = 1 << 16;
/// Bit 23: xTPR message disable (R/W); a vCPU sends no xTPR messages.
const MISC_XTPR_DISABLE: u64 = 1 << 23;
/// The bits a guest may set and clear.
const MISC_WRITABLE: u64 = MISC_FAST_STRINGS | MISC_AUTO_TCC | MISC_EIST | MISC_XTPR_DISABLE;
/// Bit 11: branch trace storage unavailable (read-only).
const MISC_BTS_UNAVAILABLE: u64 = 1 << 11;
/// Bit 12: PEBS unavailable (read-only).
const MISC_PEBS_UNAVAILABLE: u64 = 1 << 12;
/// The IA32_MISC_ENABLE bits no guest write may change: BTS and PEBS stay
/// unavailable (the debug-store MSRs are denied); performance monitoring
/// (bit 7, read-only) stays unavailable (CPUID leaf 0AH is empty). The
/// documented writable bits whose effect a vCPU does not model stay 0 and
/// setting them is #GP, as on a processor without the feature: ENABLE
/// MONITOR FSM (bit 18; MONITOR/MWAIT are not offered), Limit CPUID
/// Maxval (bit 22; CPUID is not limited), XD Bit Disable (bit 34; NX
/// stays). Every other bit is reserved: #GP.
const MISC_FIXED: u64 = MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE;

/// IA32_MTRR_DEF_TYPE bits that exist: type (7:0), FE (10), E (11) (SDM
/// Vol. 3A, 11.11.2.1 "IA32_MTRR_DEF_TYPE MSR"); writing 1 to any other
/// bit is #GP.
const MTRR_DEF_TYPE_BITS: u64 = 0xFF | (1 << 10) | (1 << 11);

/// Whether `memory_type` is one the MTRRs can hold: UC 0, WC 1, WT 4, WP 5,
/// WB 6; the others are #GP (SDM Vol. 3A, 11.11.2.1, Table 11-8 "Memory
/// Types That Can Be Encoded in MTRRs").
const fn mtrr_type_valid(memory_type: u64) -> bool {
    matches!(memory_type, 0 | 1 | 4 | 5 | 6)
}

/// The per-vCPU values of emulated MSRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualMsrs {
    /// The vCPU's index in its guest: index 0 is the bootstrap processor.
    vcpu_index: u32,
    /// IA32_MISC_ENABLE as the guest reads it.
    misc_enable: u64,
    /// IA32_MTRR_DEF_TYPE as the guest last wrote it.
    mtrr_def_type: u64,
}

impl VirtualMsrs {
    /// The values at reset of the vCPU with index `vcpu_index` (0 is the
    /// bootstrap processor): fast strings on, BTS and PEBS unavailable,
    /// MTRRs disabled with default type UC.
    pub fn new(vcpu_index: u32) -> Self {
        Self {
            vcpu_index,
            misc_enable: MISC_FAST_STRINGS | MISC_FIXED,
            mtrr_def_type: 0,
        }
    }

    /// The guest's RDMSR of `msr`, for an access that exited. Emulated MSRs
    /// answer; denied and unknown ones are `Err`, and so is a pass-through
    /// one, which exits only if the backend's MSR bitmap does not agree
    /// with [`rule`] (its guest value is in the VMCS or on the processor, not
    /// here).
    pub fn read(&self, msr: u32) -> Result<u64, InjectGp> {
        match msr {
            // No microcode update was loaded, no platform ID, no MTRRs and
            // no machine-check banks: CPUID agrees (MTRR, MCE, MCA hidden).
            IA32_BIOS_SIGN_ID | IA32_PLATFORM_ID | IA32_MTRRCAP | IA32_MCG_CAP
            | IA32_MCG_STATUS => Ok(0),
            IA32_MISC_ENABLE => Ok(self.misc_enable),
            IA32_MTRR_DEF_TYPE => Ok(self.mtrr_def_type),
            _ => Err(InjectGp),
        }
    }

    /// The guest's WRMSR of `value` to `msr`, for an access that exited.
    ///
    /// - IA32_TIME_STAMP_COUNTER: accepted and dropped. Writing it on the
    ///   processor would move the TSC the hypervisor and every other guest
    ///   read; a per-guest TSC through the VMCS TSC offset is not done yet,
    ///   and current OSes do not write the TSC.
    /// - IA32_BIOS_SIGN_ID: dropped (OSes write 0 before reading the
    ///   microcode revision, which stays 0).
    /// - IA32_MISC_ENABLE: the documented writable bits a vCPU can honour
    ///   change (fast strings 0, automatic thermal control 3, SpeedStep 16,
    ///   xTPR disable 23); the guest reads them back, the processor keeps
    ///   the host's settings. A write that changes a read-only bit, sets
    ///   one whose effect is not modelled, or sets a reserved bit is #GP
    ///   and changes nothing (see `MISC_FIXED`).
    /// - IA32_MTRR_DEF_TYPE: stored if reserved bits are 0 and the type is
    ///   valid (SDM Vol. 3A, 11.11.2.1); EPT decides the memory types.
    /// - IA32_MCG_STATUS: only 0 is accepted.
    /// - IA32_PLATFORM_ID, IA32_MTRRCAP, IA32_MCG_CAP are read-only: #GP.
    /// - Everything else, pass-through MSRs included (see [`Self::read`]):
    ///   #GP.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), InjectGp> {
        match msr {
            IA32_TIME_STAMP_COUNTER | IA32_BIOS_SIGN_ID => Ok(()),
            IA32_MISC_ENABLE if value & !MISC_WRITABLE == MISC_FIXED => {
                self.misc_enable = value;
                Ok(())
            }
            IA32_MTRR_DEF_TYPE
                if value & !MTRR_DEF_TYPE_BITS == 0 && mtrr_type_valid(value & 0xFF) =>
            {
                self.mtrr_def_type = value;
                Ok(())
            }
            IA32_MCG_STATUS if value == 0 => Ok(()),
            _ => Err(InjectGp),
        }
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

    #[test]
    fn named_rules() {
        for msr in [
            IA32_PAT,
            IA32_FS_BASE,
            IA32_GS_BASE,
            IA32_SYSENTER_CS,
            IA32_SYSENTER_ESP,
            IA32_SYSENTER_EIP,
            IA32_KERNEL_GS_BASE,
            IA32_STAR,
            IA32_LSTAR,
            IA32_CSTAR,
            IA32_FMASK,
            IA32_TSC_AUX,
        ] {
            assert_eq!(rule(msr, false), MsrRule::PassThrough, "{msr:#x}");
            assert_eq!(rule(msr, true), MsrRule::PassThrough, "{msr:#x}");
        }
        assert_eq!(rule(IA32_TIME_STAMP_COUNTER, false), MsrRule::PassThrough);
        assert_eq!(rule(IA32_TIME_STAMP_COUNTER, true), MsrRule::Emulated);
        assert_eq!(rule(IA32_EFER, false), MsrRule::PassThrough);
        assert_eq!(rule(IA32_EFER, true), MsrRule::Emulated);
        for msr in [0x1B, 0x8B, 0x17, 0x1A0, 0xFE, 0x2FF, 0x179, 0x17A] {
            assert_eq!(rule(msr, false), MsrRule::Emulated, "{msr:#x}");
            assert_eq!(rule(msr, true), MsrRule::Emulated, "{msr:#x}");
        }
        assert_eq!(
            SWITCHED_MSRS,
            &[
                0xC000_0081,
                0xC000_0082,
                0xC000_0083,
                0xC000_0084,
                0xC000_0102,
                0xC000_0103
            ]
        );
    }

    #[test]
    fn host_only_msrs_are_denied() {
        let host_only = [
            0x3A,        // IA32_FEATURE_CONTROL
            0x48,        // IA32_SPEC_CTRL
            0x49,        // IA32_PRED_CMD
            0x9E,        // IA32_SMBASE
            0xC1,        // IA32_PMC0
            0xCF,        // IA32_CORE_CAPABILITIES
            0xE1,        // IA32_UMWAIT_CONTROL
            0x10A,       // IA32_ARCH_CAPABILITIES
            0x10B,       // IA32_FLUSH_CMD
            0x186,       // IA32_PERFEVTSEL0
            0x199,       // IA32_PERF_CTL
            0x1C4,       // IA32_XFD
            0x1D9,       // IA32_DEBUGCTL
            0x200,       // IA32_MTRR_PHYSBASE0
            0x250,       // IA32_MTRR_FIX64K_00000
            0x309,       // IA32_FIXED_CTR0
            0x345,       // IA32_PERF_CAPABILITIES
            0x38F,       // IA32_PERF_GLOBAL_CTRL
            0x400,       // IA32_MC0_CTL
            0x600,       // IA32_DS_AREA
            0x6A2,       // IA32_S_CET
            0x802,       // x2APIC ID
            0x830,       // x2APIC ICR
            0xC80,       // IA32_DEBUG_INTERFACE
            0xC8F,       // IA32_PQR_ASSOC
            0xD90,       // IA32_BNDCFGS
            0xDA0,       // IA32_XSS
            0xC001_0114, // AMD VM_CR
            0xC001_0117, // AMD VM_HSAVE_PA
        ];
        let vmx = 0x480..=0x493; // every IA32_VMX_* MSR
        let mut msrs = VirtualMsrs::new(0);
        for msr in host_only.into_iter().chain(vmx) {
            for write in [false, true] {
                assert_eq!(rule(msr, write), MsrRule::Denied, "{msr:#x}");
            }
            assert_eq!(msrs.read(msr), Err(InjectGp), "{msr:#x}");
            for value in [0, 1, u64::MAX] {
                assert_eq!(msrs.write(msr, value), Err(InjectGp), "{msr:#x}");
            }
        }
        assert_eq!(msrs, VirtualMsrs::new(0), "refused writes changed state");
    }

    /// Every MSR a VT-x MSR bitmap covers, then a sample of those it does
    /// not.
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

    /// `VirtualMsrs` answers exactly the emulated accesses: every emulated
    /// read succeeds, and nothing denied or passed through is answered.
    #[test]
    fn virtual_msrs_agree_with_rule() {
        let mut msrs = VirtualMsrs::new(1);
        for msr in all_covered().chain(uncovered_sample()) {
            if EXIT_HANDLER_MSRS.contains(&msr) {
                assert_eq!(rule(msr, false), MsrRule::Emulated, "{msr:#x}");
                assert_eq!(rule(msr, true), MsrRule::Emulated, "{msr:#x}");
                continue;
            }
            let emulated_read = rule(msr, false) == MsrRule::Emulated;
            assert_eq!(msrs.read(msr).is_ok(), emulated_read, "{msr:#x}");
            if rule(msr, true) != MsrRule::Emulated {
                for value in [0, 0x6, u64::MAX] {
                    assert_eq!(msrs.write(msr, value), Err(InjectGp), "{msr:#x}");
                }
            }
        }
    }

    #[test]
    fn identification_and_capability_msrs() {
        let mut msrs = VirtualMsrs::new(0);
        for msr in [
            IA32_BIOS_SIGN_ID,
            IA32_PLATFORM_ID,
            IA32_MTRRCAP,
            IA32_MCG_CAP,
            IA32_MCG_STATUS,
        ] {
            assert_eq!(msrs.read(msr), Ok(0), "{msr:#x}");
        }
        // BIOS_SIGN_ID writes are dropped.
        assert_eq!(msrs.write(IA32_BIOS_SIGN_ID, 0), Ok(()));
        assert_eq!(msrs.write(IA32_BIOS_SIGN_ID, 0x1234_0000_0000), Ok(()));
        assert_eq!(msrs.read(IA32_BIOS_SIGN_ID), Ok(0));
        // Read-only MSRs.
        for msr in [IA32_PLATFORM_ID, IA32_MTRRCAP, IA32_MCG_CAP] {
            assert_eq!(msrs.write(msr, 0), Err(InjectGp), "{msr:#x}");
        }
        // MCG_STATUS: only 0.
        assert_eq!(msrs.write(IA32_MCG_STATUS, 0), Ok(()));
        assert_eq!(msrs.write(IA32_MCG_STATUS, 1), Err(InjectGp));
        assert_eq!(msrs.read(IA32_MCG_STATUS), Ok(0));
    }

    #[test]
    fn tsc_writes_are_dropped_and_reads_are_not_emulated() {
        let mut msrs = VirtualMsrs::new(0);
        assert_eq!(msrs.write(IA32_TIME_STAMP_COUNTER, 0), Ok(()));
        assert_eq!(msrs.write(IA32_TIME_STAMP_COUNTER, u64::MAX), Ok(()));
        assert_eq!(msrs, VirtualMsrs::new(0));
        // Reads pass through; one that exits anyway is not made up.
        assert_eq!(msrs.read(IA32_TIME_STAMP_COUNTER), Err(InjectGp));
        assert_eq!(msrs.read(IA32_EFER), Err(InjectGp));
        assert_eq!(msrs.write(IA32_EFER, 0x500), Err(InjectGp));
    }

    #[test]
    fn misc_enable_takes_its_documented_writable_bits() {
        let mut msrs = VirtualMsrs::new(0);
        assert_eq!(msrs.read(IA32_MISC_ENABLE), Ok(0x1801));
        assert_eq!(msrs.write(IA32_MISC_ENABLE, 0x1800), Ok(()));
        assert_eq!(msrs.read(IA32_MISC_ENABLE), Ok(0x1800));
        assert_eq!(msrs.write(IA32_MISC_ENABLE, 0x1801), Ok(()));
        assert_eq!(msrs.read(IA32_MISC_ENABLE), Ok(0x1801));
        // Each documented R/W bit a vCPU can honour, alone and together:
        // fast strings 0, thermal control 3, SpeedStep 16, xTPR disable 23.
        for bits in [
            1 << 3,
            1 << 16,
            1 << 23,
            (1 << 3) | (1 << 16) | (1 << 23) | 1,
        ] {
            let value = 0x1800 | bits;
            assert_eq!(msrs.write(IA32_MISC_ENABLE, value), Ok(()), "{value:#x}");
            assert_eq!(msrs.read(IA32_MISC_ENABLE), Ok(value));
        }
        msrs.write(IA32_MISC_ENABLE, 0x1801).unwrap();
        // Clearing BTS/PEBS unavailable or setting performance monitoring
        // available (read-only), setting a bit whose effect is not modelled
        // (MONITOR FSM 18, limit CPUID 22, XD disable 34) or a reserved one
        // (1, 2, 4, 13, 35, 63) is refused and changes nothing.
        for value in [
            0x0801,
            0x1001,
            0x1,
            0x1801 | 1 << 7,
            0x1801 | 1 << 18,
            0x1801 | 1 << 22,
            0x1801 | 1 << 34,
            0x1801 | 1 << 1,
            0x1801 | 1 << 2,
            0x1801 | 1 << 4,
            0x1801 | 1 << 13,
            0x1801 | 1 << 35,
            0x1801 | 1 << 63,
        ] {
            assert_eq!(
                msrs.write(IA32_MISC_ENABLE, value),
                Err(InjectGp),
                "{value:#x}"
            );
        }
        assert_eq!(msrs.read(IA32_MISC_ENABLE), Ok(0x1801));
    }

    #[test]
    fn mtrr_def_type_is_checked_storage() {
        let mut msrs = VirtualMsrs::new(2);
        assert_eq!(msrs.read(IA32_MTRR_DEF_TYPE), Ok(0));
        for value in [0x0C06, 0x0800, 0x0401, 0x0004, 0x0C05, 0] {
            assert_eq!(msrs.write(IA32_MTRR_DEF_TYPE, value), Ok(()), "{value:#x}");
            assert_eq!(msrs.read(IA32_MTRR_DEF_TYPE), Ok(value));
        }
        msrs.write(IA32_MTRR_DEF_TYPE, 0x0C06).expect("valid");
        // Reserved bits 8, 9, 12..63 and undefined types 2, 3, 7, 0xFF.
        for value in [
            0x0D06,
            0x0E06,
            0x1C06,
            1 << 63,
            0x0C02,
            0x0C03,
            0x0C07,
            0x0CFF,
        ] {
            assert_eq!(
                msrs.write(IA32_MTRR_DEF_TYPE, value),
                Err(InjectGp),
                "{value:#x}"
            );
        }
        assert_eq!(msrs.read(IA32_MTRR_DEF_TYPE), Ok(0x0C06));
    }

    #[test]
    fn inject_gp_says_what_happens() {
        assert_eq!(
            InjectGp.to_string(),
            "MSR access refused: the guest gets #GP(0)"
        );
    }
}
