//! The privileged instructions of the `vmx` crate, and the only place with
//! `asm!`: for now RDMSR and the read of the VT-x capability MSRs.
//!
//! Everything here runs only on the target; host tests exercise the pure
//! decisions these functions feed ([`crate::caps`]), never the functions.

use core::arch::asm;

use crate::caps::{RawVmxMsrs, TrueControlMsrs};
use crate::msr::{self, Msr};

/// Reads a model-specific register with RDMSR.
///
/// # Safety
///
/// The caller must run at CPL 0, and `msr` must exist on this CPU: RDMSR of
/// an MSR the CPU does not implement raises #GP(0). For the VT-x MSRs the
/// existence rules are those of [`RawVmxMsrs`] (SDM Vol. 3D, Appendix A).
pub unsafe fn rdmsr(msr: Msr) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and that the MSR exists, so RDMSR
    // does not fault. It reads no memory, does not touch the stack and
    // leaves the flags alone (SDM Vol. 2B, RDMSR).
    unsafe {
        asm!(
            "rdmsr",
            in("ecx") msr.index(),
            out("eax") low,
            out("edx") high,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// Reads the VT-x capability MSRs of the calling CPU, only those that exist:
/// the TRUE control MSRs iff IA32_VMX_BASIC bit 55 is 1;
/// IA32_VMX_PROCBASED_CTLS2 iff "activate secondary controls" may be 1;
/// IA32_VMX_EPT_VPID_CAP iff "enable EPT" or "enable VPID" may be 1;
/// IA32_VMX_VMFUNC iff "enable VM functions" may be 1.
///
/// # Safety
///
/// The caller must run at CPL 0 on a CPU with CPUID.1:ECX.VMX = 1: the
/// capability MSRs do not exist otherwise (SDM Vol. 3D, Appendix A: RDMSR of
/// them raises #GP(0)). VMX need not be enabled in IA32_FEATURE_CONTROL.
pub unsafe fn read_vmx_msrs() -> RawVmxMsrs {
    // SAFETY: CPL 0 and CPUID.1:ECX.VMX = 1 by the caller's promise;
    // 480H-48AH exist on every CPU with VMX (SDM Vol. 4, Table 2-2).
    let mut raw = unsafe {
        RawVmxMsrs {
            basic: rdmsr(msr::IA32_VMX_BASIC),
            pinbased_ctls: rdmsr(msr::IA32_VMX_PINBASED_CTLS),
            procbased_ctls: rdmsr(msr::IA32_VMX_PROCBASED_CTLS),
            exit_ctls: rdmsr(msr::IA32_VMX_EXIT_CTLS),
            entry_ctls: rdmsr(msr::IA32_VMX_ENTRY_CTLS),
            misc: rdmsr(msr::IA32_VMX_MISC),
            cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
            vmcs_enum: rdmsr(msr::IA32_VMX_VMCS_ENUM),
            procbased_ctls2: None,
            ept_vpid_cap: None,
            true_ctls: None,
            vmfunc: None,
        }
    };
    if RawVmxMsrs::true_controls_exist(raw.basic) {
        // SAFETY: IA32_VMX_BASIC bit 55 is 1, so 48DH-490H exist (SDM
        // Vol. 3D, A.1).
        raw.true_ctls = Some(unsafe {
            TrueControlMsrs {
                pinbased: rdmsr(msr::IA32_VMX_TRUE_PINBASED_CTLS),
                procbased: rdmsr(msr::IA32_VMX_TRUE_PROCBASED_CTLS),
                exit: rdmsr(msr::IA32_VMX_TRUE_EXIT_CTLS),
                entry: rdmsr(msr::IA32_VMX_TRUE_ENTRY_CTLS),
            }
        });
    }
    if RawVmxMsrs::procbased_ctls2_exists(raw.procbased_ctls) {
        // SAFETY: IA32_VMX_PROCBASED_CTLS bit 63 is 1, so 48BH exists (SDM
        // Vol. 3D, A.3.3).
        let ctls2 = unsafe { rdmsr(msr::IA32_VMX_PROCBASED_CTLS2) };
        raw.procbased_ctls2 = Some(ctls2);
        if RawVmxMsrs::ept_vpid_cap_exists(ctls2) {
            // SAFETY: IA32_VMX_PROCBASED_CTLS2 bit 33 or 37 is 1, so 48CH
            // exists (SDM Vol. 3D, A.10).
            raw.ept_vpid_cap = Some(unsafe { rdmsr(msr::IA32_VMX_EPT_VPID_CAP) });
        }
        if RawVmxMsrs::vmfunc_exists(ctls2) {
            // SAFETY: IA32_VMX_PROCBASED_CTLS2 bit 45 is 1, so 491H exists
            // (SDM Vol. 3D, A.11).
            raw.vmfunc = Some(unsafe { rdmsr(msr::IA32_VMX_VMFUNC) });
        }
    }
    raw
}
