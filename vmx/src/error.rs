//! How a VMX instruction fails: [`VmFail`] (VMfailInvalid or VMfailValid)
//! and [`InstructionError`], the VM-instruction error number decoded into
//! words. Pure: the instruction wrappers in [`crate::instructions`] build
//! these values.
//!
//! A VMX instruction reports its outcome in RFLAGS (SDM Vol. 3C, 31.2
//! "Conventions"): VMsucceed clears CF and ZF, VMfailInvalid sets CF (there
//! is no current VMCS to hold an error number), VMfailValid sets ZF and
//! stores an error number in the current VMCS's VM-instruction error field.
//! The numbers are SDM Vol. 3C, 31.4 "VM Instruction Error Numbers"
//! (Table 31-1); section numbers here follow the editions in which the VMX
//! instruction reference is Chapter 31.

use core::fmt;

/// Why a VMX instruction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): the instruction failed and there is no
    /// current VMCS (or the current-VMCS pointer is invalid), so no error
    /// number was stored.
    Invalid,
    /// VMfailValid (ZF = 1): the instruction failed with a current VMCS,
    /// whose VM-instruction error field says why.
    Valid(InstructionError),
}

impl fmt::Display for VmFail {
    /// `VMfailInvalid: no current VMCS to hold an error number` or the
    /// [`InstructionError`] line, e.g. `VM-instruction error 7: VM entry
    /// with invalid control field(s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => f.write_str(
                "VMfailInvalid: no current VMCS to hold an error number (was VMPTRLD run on this CPU?)",
            ),
            Self::Valid(error) => error.fmt(f),
        }
    }
}

/// The outcome a VMX instruction signals in RFLAGS (SDM Vol. 3C, 31.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VmxStatus {
    /// CF = 0 and ZF = 0.
    Succeed,
    /// CF = 1.
    FailInvalid,
    /// ZF = 1 (and CF = 0).
    FailValid,
}

impl VmxStatus {
    /// The outcome from the CF and ZF read right after the instruction. The
    /// SDM never sets both; CF wins if it did, since then no error number
    /// can be trusted.
    pub(crate) const fn from_flags(cf: bool, zf: bool) -> Self {
        if cf {
            Self::FailInvalid
        } else if zf {
            Self::FailValid
        } else {
            Self::Succeed
        }
    }
}

macro_rules! instruction_errors {
    ($( $(#[$doc:meta])* $number:literal => $variant:ident: $words:literal, )+) => {
        /// A VM-instruction error number (SDM Vol. 3C, 31.4, Table 31-1
        /// "VM-Instruction Error Numbers"), decoded once from the
        /// VM-instruction error field.
        ///
        /// The numbers the SDM leaves reserved (14, 21, 27), 0 and anything
        /// above 28 decode as [`Self::Unknown`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum InstructionError {
            $( $(#[$doc])* #[doc = concat!("Error ", stringify!($number), ": ", $words, ".")] $variant, )+
            /// A number the SDM does not define.
            Unknown(u32),
            /// VMfailValid was signalled, but the VMREAD of the
            /// VM-instruction error field failed too, so the number is not
            /// known.
            Unreadable,
        }

        impl InstructionError {
            /// Decodes the value of the VM-instruction error field.
            pub const fn from_number(number: u32) -> Self {
                match number {
                    $( $number => Self::$variant, )+
                    other => Self::Unknown(other),
                }
            }

            /// The error number, `None` for [`Self::Unreadable`].
            pub const fn number(self) -> Option<u32> {
                match self {
                    $( Self::$variant => Some($number), )+
                    Self::Unknown(n) => Some(n),
                    Self::Unreadable => None,
                }
            }

            /// The SDM's description of the error, e.g. `VM entry with
            /// invalid control field(s)`.
            pub const fn description(self) -> &'static str {
                match self {
                    $( Self::$variant => $words, )+
                    Self::Unknown(_) => "error number not defined by the SDM",
                    Self::Unreadable => "the VM-instruction error field could not be read",
                }
            }
        }
    };
}

instruction_errors! {
    1 => VmcallInVmxRoot: "VMCALL executed in VMX root operation",
    2 => VmclearInvalidAddress: "VMCLEAR with invalid physical address",
    3 => VmclearVmxonPointer: "VMCLEAR with VMXON pointer",
    4 => VmlaunchNonClearVmcs: "VMLAUNCH with non-clear VMCS",
    5 => VmresumeNonLaunchedVmcs: "VMRESUME with non-launched VMCS",
    6 => VmresumeAfterVmxoff: "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
    7 => EntryInvalidControlFields: "VM entry with invalid control field(s)",
    8 => EntryInvalidHostStateFields: "VM entry with invalid host-state field(s)",
    9 => VmptrldInvalidAddress: "VMPTRLD with invalid physical address",
    10 => VmptrldVmxonPointer: "VMPTRLD with VMXON pointer",
    11 => VmptrldBadRevision: "VMPTRLD with incorrect VMCS revision identifier",
    12 => UnsupportedComponent: "VMREAD/VMWRITE from/to unsupported VMCS component",
    13 => VmwriteReadOnlyComponent: "VMWRITE to read-only VMCS component",
    15 => VmxonInVmxRoot: "VMXON executed in VMX root operation",
    16 => EntryInvalidExecutiveVmcsPointer: "VM entry with invalid executive-VMCS pointer",
    17 => EntryNonLaunchedExecutiveVmcs: "VM entry with non-launched executive VMCS",
    18 => EntryExecutiveVmcsNotVmxonPointer:
        "VM entry with executive-VMCS pointer not VMXON pointer \
         (when attempting to deactivate the dual-monitor treatment of SMIs and SMM)",
    19 => VmcallNonClearVmcs:
        "VMCALL with non-clear VMCS \
         (when attempting to activate the dual-monitor treatment of SMIs and SMM)",
    20 => VmcallInvalidExitControls: "VMCALL with invalid VM-exit control fields",
    22 => VmcallBadMsegRevision:
        "VMCALL with incorrect MSEG revision identifier \
         (when attempting to activate the dual-monitor treatment of SMIs and SMM)",
    23 => VmxoffUnderDualMonitor: "VMXOFF under dual-monitor treatment of SMIs and SMM",
    24 => VmcallInvalidSmmMonitorFeatures:
        "VMCALL with invalid SMM-monitor features \
         (when attempting to activate the dual-monitor treatment of SMIs and SMM)",
    25 => EntryInvalidExecutiveControls:
        "VM entry with invalid VM-execution control fields in executive VMCS \
         (when attempting to return from SMM)",
    26 => EntryEventsBlockedByMovSs: "VM entry with events blocked by MOV SS",
    28 => InvalidInveptInvvpidOperand: "invalid operand to INVEPT/INVVPID",
}

impl fmt::Display for InstructionError {
    /// `VM-instruction error 7: VM entry with invalid control field(s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number() {
            Some(n) => write!(f, "VM-instruction error {n}: {}", self.description()),
            None => write!(f, "VM-instruction error (unknown): {}", self.description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_sdm_words() {
        assert_eq!(
            InstructionError::from_number(7).to_string(),
            "VM-instruction error 7: VM entry with invalid control field(s)"
        );
        assert_eq!(
            InstructionError::from_number(8).to_string(),
            "VM-instruction error 8: VM entry with invalid host-state field(s)"
        );
        assert_eq!(
            InstructionError::from_number(4).to_string(),
            "VM-instruction error 4: VMLAUNCH with non-clear VMCS"
        );
        assert_eq!(
            InstructionError::from_number(28).to_string(),
            "VM-instruction error 28: invalid operand to INVEPT/INVVPID"
        );
        assert_eq!(
            VmFail::Valid(InstructionError::VmwriteReadOnlyComponent).to_string(),
            "VM-instruction error 13: VMWRITE to read-only VMCS component"
        );
        assert!(VmFail::Invalid
            .to_string()
            .starts_with("VMfailInvalid: no current VMCS"));
    }

    #[test]
    fn every_defined_number_round_trips() {
        let reserved = [14, 21, 27];
        for n in 1..=28 {
            let e = InstructionError::from_number(n);
            assert_eq!(e.number(), Some(n));
            if reserved.contains(&n) {
                assert_eq!(e, InstructionError::Unknown(n), "{n}");
            } else {
                assert!(!matches!(e, InstructionError::Unknown(_)), "{n}");
                assert!(e
                    .to_string()
                    .starts_with(&format!("VM-instruction error {n}: ")));
            }
        }
    }

    #[test]
    fn undefined_numbers_are_unknown_not_a_panic() {
        for n in [0, 14, 21, 27, 29, 0xFFFF_FFFF] {
            assert_eq!(
                InstructionError::from_number(n),
                InstructionError::Unknown(n)
            );
        }
        assert_eq!(
            InstructionError::from_number(29).to_string(),
            "VM-instruction error 29: error number not defined by the SDM"
        );
        assert_eq!(InstructionError::Unreadable.number(), None);
        assert_eq!(
            InstructionError::Unreadable.to_string(),
            "VM-instruction error (unknown): the VM-instruction error field could not be read"
        );
    }

    #[test]
    fn status_from_flags() {
        assert_eq!(VmxStatus::from_flags(false, false), VmxStatus::Succeed);
        assert_eq!(VmxStatus::from_flags(true, false), VmxStatus::FailInvalid);
        assert_eq!(VmxStatus::from_flags(false, true), VmxStatus::FailValid);
        assert_eq!(VmxStatus::from_flags(true, true), VmxStatus::FailInvalid);
    }
}
