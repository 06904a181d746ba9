//! The one table of model-specific registers that VT-x uses: their indices
//! and names, as typed [`Msr`] values.
//!
//! Indices come from SDM Vol. 4, Chapter 2, Table 2-2 ("IA-32 Architectural
//! MSRs"); what each capability MSR reports is SDM Vol. 3D, Appendix A ("VMX
//! Capability Reporting Facility"). The [`Msr`] type can only be made from
//! this table, so [`crate::instructions::rdmsr`] never sees a bare number.
//!
//! Which of these exist on a given CPU is decided by
//! [`crate::caps::RawVmxMsrs`]' existence rules, not here.

use core::fmt;

/// A model-specific register known to this crate (one row of [`TABLE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Msr(u32);

impl Msr {
    /// The MSR index, the value RDMSR takes in ECX.
    pub const fn index(self) -> u32 {
        self.0
    }

    /// The SDM's name of this MSR, e.g. `IA32_VMX_BASIC`.
    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(msr, _)| *msr == self)
            .map_or("unknown MSR", |(_, name)| name)
    }
}

impl fmt::Display for Msr {
    /// `IA32_VMX_BASIC (MSR 0x480)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (MSR {:#x})", self.name(), self.0)
    }
}

/// IA32_FEATURE_CONTROL: lock bit and the VMXON enables (SDM Vol. 4,
/// Table 2-2; Vol. 3C, 23.7 "Enabling and Entering VMX Operation").
/// Exists when CPUID.1:ECX.VMX = 1 (or SMX = 1).
pub const IA32_FEATURE_CONTROL: Msr = Msr(0x3A);
/// IA32_VMX_BASIC: VMCS revision, region size, memory type, TRUE-controls
/// flag (SDM Vol. 3D, A.1).
pub const IA32_VMX_BASIC: Msr = Msr(0x480);
/// IA32_VMX_PINBASED_CTLS: allowed settings of the pin-based
/// VM-execution controls (SDM Vol. 3D, A.3.1).
pub const IA32_VMX_PINBASED_CTLS: Msr = Msr(0x481);
/// IA32_VMX_PROCBASED_CTLS: allowed settings of the primary
/// processor-based VM-execution controls (SDM Vol. 3D, A.3.2).
pub const IA32_VMX_PROCBASED_CTLS: Msr = Msr(0x482);
/// IA32_VMX_EXIT_CTLS: allowed settings of the VM-exit controls (SDM
/// Vol. 3D, A.4).
pub const IA32_VMX_EXIT_CTLS: Msr = Msr(0x483);
/// IA32_VMX_ENTRY_CTLS: allowed settings of the VM-entry controls (SDM
/// Vol. 3D, A.5).
pub const IA32_VMX_ENTRY_CTLS: Msr = Msr(0x484);
/// IA32_VMX_MISC: preemption-timer rate, activity states, CR3-target count
/// and more (SDM Vol. 3D, A.6).
pub const IA32_VMX_MISC: Msr = Msr(0x485);
/// IA32_VMX_CR0_FIXED0: CR0 bits fixed to 1 in VMX operation (SDM Vol. 3D,
/// A.7).
pub const IA32_VMX_CR0_FIXED0: Msr = Msr(0x486);
/// IA32_VMX_CR0_FIXED1: CR0 bits that may be 1 in VMX operation (SDM
/// Vol. 3D, A.7).
pub const IA32_VMX_CR0_FIXED1: Msr = Msr(0x487);
/// IA32_VMX_CR4_FIXED0: CR4 bits fixed to 1 in VMX operation (SDM Vol. 3D,
/// A.8).
pub const IA32_VMX_CR4_FIXED0: Msr = Msr(0x488);
/// IA32_VMX_CR4_FIXED1: CR4 bits that may be 1 in VMX operation (SDM
/// Vol. 3D, A.8).
pub const IA32_VMX_CR4_FIXED1: Msr = Msr(0x489);
/// IA32_VMX_VMCS_ENUM: highest index used in any VMCS field encoding (SDM
/// Vol. 3D, A.9).
pub const IA32_VMX_VMCS_ENUM: Msr = Msr(0x48A);
/// IA32_VMX_PROCBASED_CTLS2: allowed settings of the secondary
/// processor-based VM-execution controls (SDM Vol. 3D, A.3.3). Exists only
/// if IA32_VMX_PROCBASED_CTLS bit 63 is 1.
pub const IA32_VMX_PROCBASED_CTLS2: Msr = Msr(0x48B);
/// IA32_VMX_EPT_VPID_CAP: EPT and VPID capabilities (SDM Vol. 3D, A.10).
/// Exists only if secondary control "enable EPT" or "enable VPID" may be 1.
pub const IA32_VMX_EPT_VPID_CAP: Msr = Msr(0x48C);
/// IA32_VMX_TRUE_PINBASED_CTLS: pin-based controls including the default1
/// class (SDM Vol. 3D, A.3.1). Exists only if IA32_VMX_BASIC bit 55 is 1.
pub const IA32_VMX_TRUE_PINBASED_CTLS: Msr = Msr(0x48D);
/// IA32_VMX_TRUE_PROCBASED_CTLS: primary processor-based controls including
/// the default1 class (SDM Vol. 3D, A.3.2). Exists only if IA32_VMX_BASIC
/// bit 55 is 1.
pub const IA32_VMX_TRUE_PROCBASED_CTLS: Msr = Msr(0x48E);
/// IA32_VMX_TRUE_EXIT_CTLS: VM-exit controls including the default1 class
/// (SDM Vol. 3D, A.4). Exists only if IA32_VMX_BASIC bit 55 is 1.
pub const IA32_VMX_TRUE_EXIT_CTLS: Msr = Msr(0x48F);
/// IA32_VMX_TRUE_ENTRY_CTLS: VM-entry controls including the default1 class
/// (SDM Vol. 3D, A.5). Exists only if IA32_VMX_BASIC bit 55 is 1.
pub const IA32_VMX_TRUE_ENTRY_CTLS: Msr = Msr(0x490);
/// IA32_VMX_VMFUNC: allowed VM functions (SDM Vol. 3D, A.11). Exists only
/// if secondary control "enable VM functions" (bit 13) may be 1.
pub const IA32_VMX_VMFUNC: Msr = Msr(0x491);

/// Every MSR of this module with its SDM name, in index order.
pub const TABLE: [(Msr, &str); 19] = [
    (IA32_FEATURE_CONTROL, "IA32_FEATURE_CONTROL"),
    (IA32_VMX_BASIC, "IA32_VMX_BASIC"),
    (IA32_VMX_PINBASED_CTLS, "IA32_VMX_PINBASED_CTLS"),
    (IA32_VMX_PROCBASED_CTLS, "IA32_VMX_PROCBASED_CTLS"),
    (IA32_VMX_EXIT_CTLS, "IA32_VMX_EXIT_CTLS"),
    (IA32_VMX_ENTRY_CTLS, "IA32_VMX_ENTRY_CTLS"),
    (IA32_VMX_MISC, "IA32_VMX_MISC"),
    (IA32_VMX_CR0_FIXED0, "IA32_VMX_CR0_FIXED0"),
    (IA32_VMX_CR0_FIXED1, "IA32_VMX_CR0_FIXED1"),
    (IA32_VMX_CR4_FIXED0, "IA32_VMX_CR4_FIXED0"),
    (IA32_VMX_CR4_FIXED1, "IA32_VMX_CR4_FIXED1"),
    (IA32_VMX_VMCS_ENUM, "IA32_VMX_VMCS_ENUM"),
    (IA32_VMX_PROCBASED_CTLS2, "IA32_VMX_PROCBASED_CTLS2"),
    (IA32_VMX_EPT_VPID_CAP, "IA32_VMX_EPT_VPID_CAP"),
    (IA32_VMX_TRUE_PINBASED_CTLS, "IA32_VMX_TRUE_PINBASED_CTLS"),
    (IA32_VMX_TRUE_PROCBASED_CTLS, "IA32_VMX_TRUE_PROCBASED_CTLS"),
    (IA32_VMX_TRUE_EXIT_CTLS, "IA32_VMX_TRUE_EXIT_CTLS"),
    (IA32_VMX_TRUE_ENTRY_CTLS, "IA32_VMX_TRUE_ENTRY_CTLS"),
    (IA32_VMX_VMFUNC, "IA32_VMX_VMFUNC"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The capability MSRs are the contiguous block 480H..=491H (SDM Vol. 4,
    /// Table 2-2) and the table is in index order with unique entries.
    #[test]
    fn capability_msrs_are_contiguous_from_0x480() {
        assert_eq!(TABLE[0].0.index(), 0x3A);
        for (offset, (msr, _)) in TABLE[1..].iter().enumerate() {
            assert_eq!(msr.index(), 0x480 + offset as u32, "{}", msr.name());
        }
        assert_eq!(IA32_VMX_VMFUNC.index(), 0x491);
    }

    #[test]
    fn names_and_display() {
        assert_eq!(IA32_VMX_EPT_VPID_CAP.name(), "IA32_VMX_EPT_VPID_CAP");
        assert_eq!(IA32_VMX_BASIC.to_string(), "IA32_VMX_BASIC (MSR 0x480)");
        assert_eq!(
            IA32_FEATURE_CONTROL.to_string(),
            "IA32_FEATURE_CONTROL (MSR 0x3a)"
        );
        for (msr, name) in TABLE {
            assert_eq!(msr.name(), name);
        }
    }
}
