//! The VMX control fields as typed bit sets, and the allowed-settings rule
//! that the capability MSRs report for each of them.
//!
//! Section and table numbers follow the SDM editions whose VMCS chapter is
//! Vol. 3C, Chapter 24 (later editions moved it to Chapter 25 and renumbered
//! the tables; the table titles are quoted so they can be found in any
//! edition). Only bits this crate has a use for, or that the capability
//! report decodes, are named; the others pass through untouched
//! (`from_bits_retain`).

use bitflags::{bitflags, Flags};

bitflags! {
    /// Pin-based VM-execution controls (SDM Vol. 3C, 24.6.1, Table 24-5
    /// "Definitions of Pin-Based VM-Execution Controls"). Allowed settings:
    /// IA32_VMX_(TRUE_)PINBASED_CTLS, SDM Vol. 3D, A.3.1.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PinBasedControls: u32 {
        /// Bit 0: external interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// Bit 3: non-maskable interrupts cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// Bit 5: virtual NMIs.
        const VIRTUAL_NMIS = 1 << 5;
        /// Bit 6: activate the VMX-preemption timer (SDM Vol. 3C, 25.5.1).
        const ACTIVATE_PREEMPTION_TIMER = 1 << 6;
        /// Bit 7: process posted interrupts.
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM Vol. 3C, 24.6.2,
    /// Table 24-6 "Definitions of Primary Processor-Based VM-Execution
    /// Controls"). Allowed settings: IA32_VMX_(TRUE_)PROCBASED_CTLS, SDM
    /// Vol. 3D, A.3.2.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        /// Bit 2: interrupt-window exiting.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Bit 3: use TSC offsetting.
        const USE_TSC_OFFSETTING = 1 << 3;
        /// Bit 7: HLT exiting.
        const HLT_EXITING = 1 << 7;
        /// Bit 9: INVLPG exiting.
        const INVLPG_EXITING = 1 << 9;
        /// Bit 10: MWAIT exiting.
        const MWAIT_EXITING = 1 << 10;
        /// Bit 11: RDPMC exiting.
        const RDPMC_EXITING = 1 << 11;
        /// Bit 12: RDTSC exiting.
        const RDTSC_EXITING = 1 << 12;
        /// Bit 15: CR3-load exiting.
        const CR3_LOAD_EXITING = 1 << 15;
        /// Bit 16: CR3-store exiting.
        const CR3_STORE_EXITING = 1 << 16;
        /// Bit 19: CR8-load exiting.
        const CR8_LOAD_EXITING = 1 << 19;
        /// Bit 20: CR8-store exiting.
        const CR8_STORE_EXITING = 1 << 20;
        /// Bit 21: use TPR shadow.
        const USE_TPR_SHADOW = 1 << 21;
        /// Bit 22: NMI-window exiting.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// Bit 23: MOV-DR exiting.
        const MOV_DR_EXITING = 1 << 23;
        /// Bit 24: unconditional I/O exiting.
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// Bit 25: use I/O bitmaps (SDM Vol. 3C, 24.6.4).
        const USE_IO_BITMAPS = 1 << 25;
        /// Bit 27: monitor trap flag.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// Bit 28: use MSR bitmaps (SDM Vol. 3C, 24.6.9).
        const USE_MSR_BITMAPS = 1 << 28;
        /// Bit 29: MONITOR exiting.
        const MONITOR_EXITING = 1 << 29;
        /// Bit 30: PAUSE exiting.
        const PAUSE_EXITING = 1 << 30;
        /// Bit 31: activate secondary controls; without it the secondary
        /// controls (and IA32_VMX_PROCBASED_CTLS2) do not exist.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM Vol. 3C, 24.6.2,
    /// Table 24-7 "Definitions of Secondary Processor-Based VM-Execution
    /// Controls"). Allowed settings: IA32_VMX_PROCBASED_CTLS2, SDM Vol. 3D,
    /// A.3.3.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        /// Bit 0: virtualize APIC accesses.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Bit 1: enable EPT (SDM Vol. 3C, 28.2).
        const ENABLE_EPT = 1 << 1;
        /// Bit 2: descriptor-table exiting.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// Bit 3: enable RDTSCP.
        const ENABLE_RDTSCP = 1 << 3;
        /// Bit 4: virtualize x2APIC mode.
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        /// Bit 5: enable VPID (SDM Vol. 3C, 28.1).
        const ENABLE_VPID = 1 << 5;
        /// Bit 6: WBINVD exiting.
        const WBINVD_EXITING = 1 << 6;
        /// Bit 7: unrestricted guest (guest may run unpaged or in real
        /// mode; requires "enable EPT").
        const UNRESTRICTED_GUEST = 1 << 7;
        /// Bit 8: APIC-register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Bit 9: virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// Bit 10: PAUSE-loop exiting.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// Bit 11: RDRAND exiting.
        const RDRAND_EXITING = 1 << 11;
        /// Bit 12: enable INVPCID.
        const ENABLE_INVPCID = 1 << 12;
        /// Bit 13: enable VM functions; IA32_VMX_VMFUNC exists only if this
        /// may be 1.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// Bit 14: VMCS shadowing.
        const VMCS_SHADOWING = 1 << 14;
        /// Bit 16: RDSEED exiting.
        const RDSEED_EXITING = 1 << 16;
        /// Bit 17: enable PML (page-modification logging).
        const ENABLE_PML = 1 << 17;
        /// Bit 18: EPT-violation #VE.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Bit 20: enable XSAVES/XRSTORS.
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        /// Bit 25: use TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
    }
}

bitflags! {
    /// VM-exit controls (SDM Vol. 3C, 24.7.1, Table 24-10 "Definitions of
    /// VM-Exit Controls"). Allowed settings: IA32_VMX_(TRUE_)EXIT_CTLS, SDM
    /// Vol. 3D, A.4.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        /// Bit 2: save debug controls (DR7, IA32_DEBUGCTL).
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// Bit 9: host address-space size (return to a 64-bit host).
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// Bit 12: load IA32_PERF_GLOBAL_CTRL.
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12;
        /// Bit 15: acknowledge interrupt on exit.
        const ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15;
        /// Bit 18: save IA32_PAT.
        const SAVE_IA32_PAT = 1 << 18;
        /// Bit 19: load IA32_PAT.
        const LOAD_IA32_PAT = 1 << 19;
        /// Bit 20: save IA32_EFER.
        const SAVE_IA32_EFER = 1 << 20;
        /// Bit 21: load IA32_EFER.
        const LOAD_IA32_EFER = 1 << 21;
        /// Bit 22: save VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER_VALUE = 1 << 22;
    }
}

bitflags! {
    /// VM-entry controls (SDM Vol. 3C, 24.8.1, Table 24-12 "Definitions of
    /// VM-Entry Controls"). Allowed settings: IA32_VMX_(TRUE_)ENTRY_CTLS, SDM
    /// Vol. 3D, A.5.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        /// Bit 2: load debug controls (DR7, IA32_DEBUGCTL).
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// Bit 9: IA-32e mode guest.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Bit 10: entry to SMM.
        const ENTRY_TO_SMM = 1 << 10;
        /// Bit 11: deactivate dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR_TREATMENT = 1 << 11;
        /// Bit 13: load IA32_PERF_GLOBAL_CTRL.
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13;
        /// Bit 14: load IA32_PAT.
        const LOAD_IA32_PAT = 1 << 14;
        /// Bit 15: load IA32_EFER.
        const LOAD_IA32_EFER = 1 << 15;
    }
}

/// Whether a VMX control may be 1, read from its capability MSR (`raw`):
/// control `bit` may be 1 iff bit `32 + bit` of the MSR is 1 (SDM Vol. 3D,
/// A.3.1: "bits 63:32 indicate the allowed 1-settings"). Bits outside 0..32
/// are never allowed.
pub const fn control_allowed(raw_ctl_msr: u64, bit: u32) -> bool {
    bit < 32 && (raw_ctl_msr >> 32) & (1 << bit) != 0
}

/// Whether a VMX control must be 1, read from its capability MSR (`raw`):
/// control `bit` must be 1 iff bit `bit` of the MSR is 1 (SDM Vol. 3D,
/// A.3.1: "bits 31:0 indicate the allowed 0-settings").
pub const fn control_required(raw_ctl_msr: u64, bit: u32) -> bool {
    bit < 32 && raw_ctl_msr & (1 << bit) != 0
}

/// The allowed settings of one 32-bit control field, as a VMX capability MSR
/// reports them (SDM Vol. 3D, A.3-A.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedSettings<F> {
    /// Controls that must be 1 (the MSR's bits 31:0; a 1 there means the
    /// 0-setting is not allowed).
    pub must_be_one: F,
    /// Controls that may be 1 (the MSR's bits 63:32).
    pub may_be_one: F,
}

impl<F: Flags<Bits = u32> + Copy> AllowedSettings<F> {
    /// Splits a capability MSR value into its allowed 0- and 1-settings.
    pub fn from_msr(raw: u64) -> Self {
        Self {
            must_be_one: F::from_bits_retain((raw & 0xFFFF_FFFF) as u32),
            may_be_one: F::from_bits_retain((raw >> 32) as u32),
        }
    }

    /// The settings of a control field that does not exist on this CPU:
    /// nothing may be 1.
    pub fn unsupported() -> Self {
        Self {
            must_be_one: F::empty(),
            may_be_one: F::empty(),
        }
    }

    /// Whether every control in `controls` may be 1.
    pub fn allows(&self, controls: F) -> bool {
        self.may_be_one.contains(controls)
    }

    /// Whether every control in `controls` must be 1.
    pub fn requires(&self, controls: F) -> bool {
        self.must_be_one.contains(controls)
    }

    /// The value to write for a field where `wanted` should be 1: `wanted`
    /// plus every control that must be 1. Fails with the controls of
    /// `wanted` that may not be 1.
    pub fn apply(&self, wanted: F) -> Result<F, F> {
        let refused = wanted.difference(self.may_be_one);
        if refused.is_empty() {
            Ok(wanted.union(self.must_be_one))
        } else {
            Err(refused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skylake's IA32_VMX_TRUE_PROCBASED_CTLS.
    const SKYLAKE_TRUE_PROCBASED: u64 = 0xFFF9_FFFE_0400_6172;

    #[test]
    fn control_allowed_reads_bits_63_32() {
        // Bit 31 (activate secondary controls) may be 1: MSR bit 63 is set.
        assert!(control_allowed(SKYLAKE_TRUE_PROCBASED, 31));
        // Bits 25 and 28 (I/O and MSR bitmaps).
        assert!(control_allowed(SKYLAKE_TRUE_PROCBASED, 25));
        assert!(control_allowed(SKYLAKE_TRUE_PROCBASED, 28));
        // Bits 17 and 18 are reserved-0 here (MSR bits 49, 50 clear).
        assert!(!control_allowed(SKYLAKE_TRUE_PROCBASED, 17));
        assert!(!control_allowed(SKYLAKE_TRUE_PROCBASED, 18));
        // Bit 0 is reserved-0 (MSR bit 32 clear).
        assert!(!control_allowed(SKYLAKE_TRUE_PROCBASED, 0));
        // Out of range is never allowed (and does not overflow a shift).
        assert!(!control_allowed(u64::MAX, 32));
        assert!(!control_allowed(u64::MAX, 200));
    }

    #[test]
    fn control_required_reads_bits_31_0() {
        // Default1 bit 1 must be 1; CR3-load exiting (15) need not be with
        // the TRUE MSR.
        assert!(control_required(SKYLAKE_TRUE_PROCBASED, 1));
        assert!(!control_required(SKYLAKE_TRUE_PROCBASED, 15));
        assert!(control_required(0xFFF9_FFFE_0401_E172, 15));
        assert!(!control_required(u64::MAX, 32));
    }

    #[test]
    fn typed_settings_agree_with_the_bit_rule() {
        let s = AllowedSettings::<PrimaryControls>::from_msr(SKYLAKE_TRUE_PROCBASED);
        for bit in 0..32 {
            let f = PrimaryControls::from_bits_retain(1 << bit);
            assert_eq!(
                s.allows(f),
                control_allowed(SKYLAKE_TRUE_PROCBASED, bit),
                "bit {bit}"
            );
            assert_eq!(
                s.requires(f),
                control_required(SKYLAKE_TRUE_PROCBASED, bit),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn apply_adds_required_bits_and_refuses_unsupported_ones() {
        let s = AllowedSettings::<PrimaryControls>::from_msr(SKYLAKE_TRUE_PROCBASED);
        let wanted = PrimaryControls::USE_IO_BITMAPS | PrimaryControls::USE_MSR_BITMAPS;
        let value = s.apply(wanted).unwrap();
        assert_eq!(value.bits(), 0x0400_6172 | (1 << 25) | (1 << 28));

        // Pin-based controls of a CPU without the preemption timer.
        let pin = AllowedSettings::<PinBasedControls>::from_msr(0x0000_003F_0000_0016);
        let wanted = PinBasedControls::ACTIVATE_PREEMPTION_TIMER | PinBasedControls::NMI_EXITING;
        assert_eq!(
            pin.apply(wanted),
            Err(PinBasedControls::ACTIVATE_PREEMPTION_TIMER)
        );

        let none = AllowedSettings::<SecondaryControls>::unsupported();
        assert_eq!(
            none.apply(SecondaryControls::empty()),
            Ok(SecondaryControls::empty())
        );
        assert_eq!(
            none.apply(SecondaryControls::ENABLE_EPT),
            Err(SecondaryControls::ENABLE_EPT)
        );
    }
}
