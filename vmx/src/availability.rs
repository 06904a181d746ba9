//! Can this CPU run guests under VT-x at all: the verdict from CPUID and
//! IA32_FEATURE_CONTROL, and [`Unavailable`], the one-line reason given to
//! the user when it cannot. Pure.

use core::fmt;

use crate::caps::MissingFeature;
use crate::feature_control::FeatureControlState;

/// Why this CPU cannot run Ferrovisor's guests. `Display` is one line saying
/// what is wrong and what to do; the kernel prints it as
/// `cpu<k>: VT-x unavailable: <line>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// CPUID.1:ECX.VMX = 0: no VT-x at all (another vendor, or a virtual
    /// machine without nested VT-x).
    NoVmx {
        /// The CPUID vendor string, e.g. `AuthenticAMD`.
        vendor: CpuVendor,
    },
    /// IA32_FEATURE_CONTROL is locked with VMXON outside SMX forbidden.
    LockedOff {
        /// The IA32_FEATURE_CONTROL value read.
        feature_control: u64,
    },
    /// CPUID reports VT-x but the caller did not read IA32_FEATURE_CONTROL
    /// (a bug in the caller: the MSR exists whenever CPUID.1:ECX.VMX = 1).
    FeatureControlNotRead,
    /// VT-x lacks a feature Ferrovisor needs.
    MissingFeature(MissingFeature),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVmx { vendor } => write!(
                f,
                "this CPU ({vendor}) does not offer VT-x (CPUID.1:ECX.VMX = 0); enable VT-x in the \
                 firmware settings, under QEMU use KVM with nested VT-x (cargo xtask run --engine kvm), \
                 or use cargo xtask run --engine bochs"
            ),
            Self::LockedOff { feature_control } => write!(
                f,
                "VT-x is disabled and locked by the firmware (IA32_FEATURE_CONTROL = {feature_control:#x}); \
                 enable Intel Virtualization Technology (VT-x) in the firmware settings and boot again"
            ),
            Self::FeatureControlNotRead => f.write_str(
                "CPUID reports VT-x but IA32_FEATURE_CONTROL (MSR 0x3a) was not read; this is a bug in \
                 Ferrovisor's CPU bring-up, please report it",
            ),
            Self::MissingFeature(feature) => write!(
                f,
                "this CPU's VT-x lacks {feature}, which Ferrovisor needs; run on a newer Intel CPU, in a \
                 virtual machine enable nested VT-x with EPT and unrestricted guest (KVM: kvm_intel \
                 ept=1 unrestricted_guest=1), or use cargo xtask run --engine bochs"
            ),
        }
    }
}

impl From<MissingFeature> for Unavailable {
    fn from(feature: MissingFeature) -> Self {
        Self::MissingFeature(feature)
    }
}

/// Decides whether VT-x can be used, before any capability MSR is read.
///
/// `cpuid_vmx` is CPUID.1:ECX.VMX (bit 5); `vendor` the CPUID vendor string;
/// `feature_control` the IA32_FEATURE_CONTROL value, read only when
/// `cpuid_vmx` is true (the MSR may not exist otherwise). On success the
/// state is [`FeatureControlState::LockedEnabled`] or
/// [`FeatureControlState::Unlocked`] (the caller enables and locks it
/// before VMXON).
pub fn assess(
    cpuid_vmx: bool,
    vendor: &str,
    feature_control: Option<u64>,
) -> Result<FeatureControlState, Unavailable> {
    if !cpuid_vmx {
        return Err(Unavailable::NoVmx {
            vendor: CpuVendor::new(vendor),
        });
    }
    let raw = feature_control.ok_or(Unavailable::FeatureControlNotRead)?;
    match FeatureControlState::decode(raw) {
        FeatureControlState::LockedDisabled => Err(Unavailable::LockedOff {
            feature_control: raw,
        }),
        state => Ok(state),
    }
}

/// A CPUID vendor string kept inline (12 bytes, e.g. `GenuineIntel`), so
/// [`Unavailable`] needs neither a lifetime nor an allocator. Longer input is
/// cut at a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuVendor {
    bytes: [u8; 12],
    len: u8,
}

impl CpuVendor {
    /// Keeps up to 12 bytes of `vendor`.
    pub fn new(vendor: &str) -> Self {
        let mut len = vendor.len().min(12);
        while !vendor.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; 12];
        bytes[..len].copy_from_slice(&vendor.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The vendor string.
    pub fn as_str(&self) -> &str {
        // Built from a `&str` cut at a character boundary, so this is valid
        // UTF-8; the fallback only keeps this free of panics.
        core::str::from_utf8(self.bytes.get(..usize::from(self.len)).unwrap_or(&[])).unwrap_or("?")
    }
}

impl fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_vmx_names_the_vendor_and_the_fixes() {
        // QEMU TCG's default CPU.
        let err = assess(false, "AuthenticAMD", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this CPU (AuthenticAMD) does not offer VT-x (CPUID.1:ECX.VMX = 0); enable VT-x in the \
             firmware settings, under QEMU use KVM with nested VT-x (cargo xtask run --engine kvm), \
             or use cargo xtask run --engine bochs"
        );
        // A feature-control value is ignored without VMX.
        assert_eq!(
            assess(false, "GenuineIntel", Some(0x5)),
            Err(Unavailable::NoVmx {
                vendor: CpuVendor::new("GenuineIntel")
            })
        );
    }

    #[test]
    fn locked_off_shows_the_msr_value() {
        let err = assess(true, "GenuineIntel", Some(0x1)).unwrap_err();
        assert_eq!(
            err,
            Unavailable::LockedOff {
                feature_control: 0x1
            }
        );
        assert_eq!(
            err.to_string(),
            "VT-x is disabled and locked by the firmware (IA32_FEATURE_CONTROL = 0x1); enable Intel \
             Virtualization Technology (VT-x) in the firmware settings and boot again"
        );
        // Enabled inside SMX only is still off for us.
        assert_eq!(
            assess(true, "GenuineIntel", Some(0x3)),
            Err(Unavailable::LockedOff {
                feature_control: 0x3
            })
        );
    }

    #[test]
    fn locked_on_and_unlocked_are_usable() {
        assert_eq!(
            assess(true, "GenuineIntel", Some(0x5)),
            Ok(FeatureControlState::LockedEnabled)
        );
        assert_eq!(
            assess(true, "GenuineIntel", Some(0x0)),
            Ok(FeatureControlState::Unlocked)
        );
        // VMX on a non-Intel vendor (Centaur/Zhaoxin implement VT-x) is judged
        // by the bits, not the name.
        assert_eq!(
            assess(true, "CentaurHauls", Some(0x5)),
            Ok(FeatureControlState::LockedEnabled)
        );
    }

    #[test]
    fn unread_feature_control_is_reported_not_guessed() {
        let err = assess(true, "GenuineIntel", None).unwrap_err();
        assert_eq!(err, Unavailable::FeatureControlNotRead);
        assert!(err
            .to_string()
            .contains("IA32_FEATURE_CONTROL (MSR 0x3a) was not read"));
    }

    /// The kernel's flow: `assess`, then the capability check, as one line.
    #[test]
    fn missing_feature_line() {
        let caps = crate::caps::VmxCapabilities::decode(&crate::caps::tests::core2());
        let verdict = assess(true, "GenuineIntel", Some(0x5))
            .and_then(|_| caps.check_required().map_err(Unavailable::MissingFeature));
        let line = verdict.unwrap_err().to_string();
        assert!(
            line.starts_with(
                "this CPU's VT-x lacks EPT (extended page tables), which Ferrovisor needs; "
            ),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(
            Unavailable::from(MissingFeature::PreemptionTimer)
                .to_string()
                .split(';')
                .next(),
            Some("this CPU's VT-x lacks the VMX-preemption timer, which Ferrovisor needs")
        );
    }

    #[test]
    fn every_reason_is_one_line() {
        let reasons = [
            Unavailable::NoVmx {
                vendor: CpuVendor::new("AuthenticAMD"),
            },
            Unavailable::LockedOff {
                feature_control: 0x1,
            },
            Unavailable::FeatureControlNotRead,
            Unavailable::MissingFeature(MissingFeature::Invept),
        ];
        for r in reasons {
            let s = r.to_string();
            assert!(!s.contains('\n') && !s.is_empty(), "{s}");
        }
    }

    #[test]
    fn vendor_is_kept_inline_and_cut_safely() {
        assert_eq!(CpuVendor::new("GenuineIntel").as_str(), "GenuineIntel");
        assert_eq!(CpuVendor::new("unknown").as_str(), "unknown");
        assert_eq!(CpuVendor::new("").as_str(), "");
        assert_eq!(CpuVendor::new("ABCDEFGHIJKLMNOP").as_str(), "ABCDEFGHIJKL");
        // 11 ASCII bytes then a 2-byte character: cut before it.
        assert_eq!(CpuVendor::new("ABCDEFGHIJKé").as_str(), "ABCDEFGHIJK");
        assert_eq!(
            format!("{:?}", CpuVendor::new("AuthenticAMD")),
            "\"AuthenticAMD\""
        );
    }
}
