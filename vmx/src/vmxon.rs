//! What VMXON needs of the control registers, decided without touching
//! them: CR0 and CR4 with the bits VMX operation fixes (IA32_VMX_CRn_FIXED0/
//! FIXED1) and CR4.VMXE. Pure; [`crate::instructions`] reads and writes the
//! registers.
//!
//! VMXON raises #GP if CR0 or CR4 break the fixed bits, and #UD if
//! CR4.VMXE = 0 (SDM Vol. 3C, 24.7 "Enabling and Entering VMX Operation",
//! 24.8 "Restrictions on VMX Operation"; Vol. 3D, A.7 and A.8; section
//! numbers as in the editions whose VMX introduction is Chapter 24).

use crate::caps::VmxCapabilities;

/// CR4.VMXE, bit 13: VMX enable. VMXON raises #UD while it is 0.
pub const CR4_VMXE: u64 = 1 << 13;

/// The CR0 and CR4 values to hold before VMXON, from the current `cr0` and
/// `cr4`: the bits `caps` fixes to 1 are set, those it fixes to 0 cleared,
/// and CR4.VMXE set. The caller writes a register only where the value
/// changed (on hardware that booted normally CR0 already has PE, NE and PG
/// and only CR4.VMXE changes).
///
/// A CPU whose IA32_VMX_CR4_FIXED1 forbade VMXE would get a CR4 without it;
/// no such CPU exists, and VMXON would then fail with #UD rather than run.
pub const fn vmxon_prerequisites(cr0: u64, cr4: u64, caps: &VmxCapabilities) -> (u64, u64) {
    (
        caps.cr0_fixed.apply(cr0),
        caps.cr4_fixed.apply(cr4 | CR4_VMXE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::tests::{core2, skylake};
    use crate::caps::FixedBits;

    /// PE | MP | ET | NE | WP | AM | PG, as the bootloader leaves CR0.
    const BOOT_CR0: u64 = 0x8005_0033;
    /// PAE | PGE | OSFXSR | OSXMMEXCPT, without VMXE.
    const BOOT_CR4: u64 = 0x0000_06A0;

    #[test]
    fn boot_state_only_gains_vmxe() {
        let caps = VmxCapabilities::decode(&skylake());
        let (cr0, cr4) = vmxon_prerequisites(BOOT_CR0, BOOT_CR4, &caps);
        assert_eq!(cr0, BOOT_CR0);
        assert_eq!(cr4, BOOT_CR4 | CR4_VMXE);
        assert_eq!(caps.cr0_fixed.violations(cr0), 0);
        assert_eq!(caps.cr4_fixed.violations(cr4), 0);
    }

    #[test]
    fn fixed_bits_are_forced() {
        let caps = VmxCapabilities::decode(&core2());
        // CR0.NE clear (bit 5, fixed to 1) and CR4 bit 22 set (fixed to 0
        // by this CPU's FIXED1).
        let (cr0, cr4) = vmxon_prerequisites(BOOT_CR0 & !0x20, BOOT_CR4 | (1 << 22), &caps);
        assert_eq!(cr0, BOOT_CR0);
        assert_eq!(cr4, BOOT_CR4 | CR4_VMXE);
    }

    /// VMXE is set even where FIXED0 does not demand it, and an already
    /// prepared state is left as it is.
    #[test]
    fn vmxe_set_without_fixed0_and_idempotent() {
        let mut caps = VmxCapabilities::decode(&skylake());
        caps.cr4_fixed = FixedBits {
            fixed0: 0,
            fixed1: u64::MAX,
        };
        let (cr0, cr4) = vmxon_prerequisites(BOOT_CR0, BOOT_CR4, &caps);
        assert_eq!(cr4 & CR4_VMXE, CR4_VMXE);
        assert_eq!(vmxon_prerequisites(cr0, cr4, &caps), (cr0, cr4));
    }
}
