//! IA32_FEATURE_CONTROL: whether the firmware lets us execute VMXON, decoded
//! into a [`FeatureControlState`]. Pure.
//!
//! VMXON outside SMX raises #GP unless the lock bit and the "VMXON outside
//! SMX" bit are both 1. Once locked, the MSR cannot be written until reset;
//! unlocked, system software may set both bits itself (SDM Vol. 3C, 23.7
//! "Enabling and Entering VMX Operation"; Vol. 4, Table 2-2).

use core::fmt;

use bitflags::bitflags;

bitflags! {
    /// The VMX bits of IA32_FEATURE_CONTROL (SDM Vol. 4, Table 2-2, MSR 3AH;
    /// Vol. 3C, 23.7). Other bits (SENTER, SGX, LMCE) pass through.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct FeatureControl: u64 {
        /// Bit 0: lock. Once 1, writes fault until the next reset.
        const LOCK = 1 << 0;
        /// Bit 1: VMXON allowed inside SMX operation.
        const VMX_INSIDE_SMX = 1 << 1;
        /// Bit 2: VMXON allowed outside SMX operation (Ferrovisor's case).
        const VMX_OUTSIDE_SMX = 1 << 2;
    }
}

/// What IA32_FEATURE_CONTROL means for VMXON outside SMX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeatureControlState {
    /// Not locked: VMXON would fault now, but we may write
    /// [`enable_and_lock`]'s value ourselves first.
    Unlocked,
    /// Locked with VMXON outside SMX allowed: ready for VMXON.
    LockedEnabled,
    /// Locked with VMXON outside SMX forbidden: VT-x is off until the
    /// firmware setting changes and the machine resets.
    LockedDisabled,
}

impl FeatureControlState {
    /// Decodes an IA32_FEATURE_CONTROL value.
    pub const fn decode(raw: u64) -> Self {
        let fc = FeatureControl::from_bits_retain(raw);
        if !fc.contains(FeatureControl::LOCK) {
            Self::Unlocked
        } else if fc.contains(FeatureControl::VMX_OUTSIDE_SMX) {
            Self::LockedEnabled
        } else {
            Self::LockedDisabled
        }
    }
}

impl fmt::Display for FeatureControlState {
    /// `vmx: feature control: locked, VMX outside SMX enabled` and the like.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unlocked => {
                "vmx: feature control: unlocked, VMX outside SMX to be enabled and locked before VMXON"
            }
            Self::LockedEnabled => "vmx: feature control: locked, VMX outside SMX enabled",
            Self::LockedDisabled => "vmx: feature control: locked, VMX outside SMX disabled",
        })
    }
}

/// The IA32_FEATURE_CONTROL value to write when it is
/// [`FeatureControlState::Unlocked`]: `current` with VMXON outside SMX
/// allowed and the lock set; the other bits are kept.
pub const fn enable_and_lock(current: u64) -> u64 {
    FeatureControl::from_bits_retain(current)
        .union(FeatureControl::LOCK)
        .union(FeatureControl::VMX_OUTSIDE_SMX)
        .bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_three_states() {
        // Firmware left it open (QEMU+KVM without a firmware lock, some
        // boards).
        assert_eq!(
            FeatureControlState::decode(0x0),
            FeatureControlState::Unlocked
        );
        assert_eq!(
            FeatureControlState::decode(0x4),
            FeatureControlState::Unlocked
        );
        // Typical firmware with VT-x on (and Bochs): lock + outside SMX.
        assert_eq!(
            FeatureControlState::decode(0x5),
            FeatureControlState::LockedEnabled
        );
        assert_eq!(
            FeatureControlState::decode(0x7),
            FeatureControlState::LockedEnabled
        );
        // VT-x switched off in the firmware settings.
        assert_eq!(
            FeatureControlState::decode(0x1),
            FeatureControlState::LockedDisabled
        );
        // Only inside SMX is no use to us.
        assert_eq!(
            FeatureControlState::decode(0x3),
            FeatureControlState::LockedDisabled
        );
        // Unrelated bits (SGX launch control, LMCE, ...) do not matter.
        assert_eq!(
            FeatureControlState::decode(0x0010_0005),
            FeatureControlState::LockedEnabled
        );
        assert_eq!(
            FeatureControlState::decode(0x0010_0000),
            FeatureControlState::Unlocked
        );
    }

    #[test]
    fn display_lines() {
        assert_eq!(
            FeatureControlState::LockedEnabled.to_string(),
            "vmx: feature control: locked, VMX outside SMX enabled"
        );
        assert_eq!(
            FeatureControlState::LockedDisabled.to_string(),
            "vmx: feature control: locked, VMX outside SMX disabled"
        );
        assert_eq!(
            FeatureControlState::Unlocked.to_string(),
            "vmx: feature control: unlocked, VMX outside SMX to be enabled and locked before VMXON"
        );
    }

    #[test]
    fn enable_and_lock_keeps_other_bits() {
        assert_eq!(enable_and_lock(0), 0x5);
        assert_eq!(enable_and_lock(0x2), 0x7);
        assert_eq!(enable_and_lock(0x0010_0000), 0x0010_0005);
        assert_eq!(
            FeatureControlState::decode(enable_and_lock(0)),
            FeatureControlState::LockedEnabled
        );
    }
}
