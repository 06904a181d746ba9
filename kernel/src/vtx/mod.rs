//! The VT-x backend's hardware half, in the kernel binary: detecting VT-x
//! and turning it on and off on the calling CPU (IA32_FEATURE_CONTROL, the
//! CR0/CR4 bits VMX operation fixes, the VMXON region, VMXON and VMXOFF;
//! SDM Vol. 3C, "Enabling and Entering VMX Operation"), and in [`vm`] a
//! guest's frames, EPT and VMCS and the VMX instructions that run it.
//!
//! The decisions (which bits, which value) come from `vmx` and from the
//! `vtx` crate (`kernel/vtx`), and are tested there; this module only carries
//! them out. With that crate it is the only code that names VT-x.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::string::String;

use log::info;
use vmx::error::VmFail;
use vmx::execution::GuestControls;
use vmx::feature_control::{enable_and_lock, FeatureControlState};
use vmx::instructions as hw;

/// CR0.NW (not write-through) and CR0.CD (cache disable).
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
use vmx::msr::IA32_FEATURE_CONTROL;

use crate::{cpu, memory};

pub mod vm;

/// What this CPU's VT-x offers; opaque to the rest of the kernel, which
/// only passes it back here.
pub use vmx::caps::VmxCapabilities as Capabilities;

/// Marks "this CPU is not in VMX operation" in [`VMXON_REGION`].
const OFF: u64 = 0;

/// Each CPU's VMXON region while it is in VMX operation, by CPU number.
static VMXON_REGION: [AtomicU64; cpu::MAX_CPUS] = [const { AtomicU64::new(OFF) }; cpu::MAX_CPUS];

/// The calling CPU's slot in [`VMXON_REGION`].
fn region_slot() -> &'static AtomicU64 {
    &VMXON_REGION[usize::from(cpu::current_index()) % cpu::MAX_CPUS]
}

/// Why VT-x could not be turned on.
pub enum EnableError {
    /// No frame for the VMXON region.
    NoMemory(mm::MmError),
    /// VMXON itself failed.
    VmxOn(VmFail),
}

impl fmt::Display for EnableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnableError::NoMemory(e) => write!(f, "no frame for the VMXON region: {e}"),
            EnableError::VmxOn(e) => write!(f, "VMXON failed: {e}"),
        }
    }
}

/// Enters VMX operation on the calling CPU, whose capabilities are `caps`
/// and whose IA32_FEATURE_CONTROL is in state `feature_control` (checked
/// usable by `vmx::availability::assess`).
pub fn enable(
    caps: &Capabilities,
    feature_control: FeatureControlState,
) -> Result<(), EnableError> {
    let k = cpu::current_index();
    if feature_control == FeatureControlState::Unlocked {
        // SAFETY: the MSR exists (CPUID reported VMX) and is unlocked, so the
        // write is allowed; setting the lock with VMX-outside-SMX enabled is
        // what firmware normally does at boot, and nothing else depends on
        // the other bits, which are kept.
        unsafe {
            hw::wrmsr(
                IA32_FEATURE_CONTROL,
                enable_and_lock(hw::rdmsr(IA32_FEATURE_CONTROL)),
            )
        };
        info!("cpu{k}: vmx: feature control locked with VMX outside SMX enabled");
    }
    let region = memory::alloc_zeroed_frame().map_err(EnableError::NoMemory)?;
    // The region starts with the VMCS revision identifier, bit 31 clear
    // (SDM Vol. 3C, "VMXON Region").
    let revision = caps.basic.revision_id & 0x7fff_ffff;
    // SAFETY: the frame is ours (just allocated) and mapped writable.
    unsafe {
        memory::phys()
            .ptr(region)
            .cast::<u32>()
            .write_volatile(revision)
    };

    // SAFETY: reading CR0/CR4 has no side effects.
    let (cr0, cr4) = unsafe { (hw::read_cr0(), hw::read_cr4()) };
    let (want_cr0, want_cr4) = vmx::vmxon::vmxon_prerequisites(cr0, cr4, caps);
    // Caching on (CR0.CD and NW clear), as firmware leaves a booted PC: an
    // application processor comes out of INIT with both set, and some
    // firmware (Bochs's) never clears them. VM entries and exits leave
    // CD and NW as they are (SDM Vol. 3C, 27.3.2.1 and 28.5.1), so the host
    // and its guests share them; each guest reads its own copy through the
    // CR0 read shadow.
    let want_cr0 = want_cr0 & !(CR0_CD | CR0_NW);
    // SAFETY: the new values differ from the running ones only in bits VMX
    // operation requires (the fixed-1 bits, which long mode already has, and
    // CR4.VMXE) and in CD/NW, whose clearing only lets the caches fill
    // (memory types stay what the MTRRs and PAT say), so paging,
    // protection and the kernel's mappings stay as they are.
    unsafe {
        if want_cr0 != cr0 {
            hw::write_cr0(want_cr0);
        }
        if want_cr4 != cr4 {
            hw::write_cr4(want_cr4);
        }
    }
    // SAFETY: CR0/CR4 satisfy the fixed bits and CR4.VMXE is set, feature
    // control allows VMXON outside SMX, and the region is a 4 KiB-aligned
    // frame holding the revision identifier, used for nothing else.
    match unsafe { hw::vmxon(region) } {
        Ok(()) => {
            region_slot().store(region.as_u64(), Ordering::Release);
            info!("cpu{k}: vmx: VMXON done, region at {region}");
            Ok(())
        }
        Err(e) => {
            // SAFETY: VMXON failed, so the CPU is not in VMX operation and
            // CR4.VMXE may go back to what it was.
            unsafe { hw::write_cr4(cr4) };
            let _ = memory::free_frame(region);
            Err(EnableError::VmxOn(e))
        }
    }
}

/// Leaves VMX operation on the calling CPU if it is in it; called on the way
/// to power off. Safe to call on any path, the fatal one included.
pub fn disable() {
    let region = region_slot().swap(OFF, Ordering::AcqRel);
    if region == OFF {
        return;
    }
    // SAFETY: the CPU entered VMX operation (the region was recorded after a
    // successful VMXON) and has not left it; no VMCS is in use once the
    // machine is on its way down.
    match unsafe { hw::vmxoff() } {
        // The region is not given back: the machine is powering off, and on
        // the fatal path the frame allocator's lock may be held by the CPU
        // that failed.
        Ok(()) => info!("cpu{}: vmx: VMXOFF done", cpu::current_index()),
        Err(e) => log::warn!("cpu{}: vmx: VMXOFF failed: {e}", cpu::current_index()),
    }
}

/// Reports CPU `k`'s VT-x capability lines (when `verbose`) and turns
/// VT-x on if it can; `Err` says in words why it cannot be used. `vendor`
/// is the CPUID vendor string, `has_vmx` CPUID.1:ECX.VMX.
pub fn detect_and_enable(
    k: u16,
    vendor: &str,
    has_vmx: bool,
    verbose: bool,
) -> Result<Capabilities, String> {
    // IA32_FEATURE_CONTROL exists on CPUs that report VMX (SDM Vol. 4, 2.1).
    let feature_control = has_vmx.then(|| {
        // SAFETY: CPUID.1:ECX.VMX = 1, so the MSR exists.
        unsafe { vmx::instructions::rdmsr(vmx::msr::IA32_FEATURE_CONTROL) }
    });
    let verdict = vmx::availability::assess(has_vmx, vendor, feature_control).and_then(|fc| {
        // SAFETY: `assess` succeeded, so the CPU has VMX and its capability
        // MSRs; `read_vmx_msrs` reads only those its own bits say exist.
        let raw = unsafe { vmx::instructions::read_vmx_msrs() };
        let caps = vmx::caps::VmxCapabilities::decode(&raw);
        if verbose {
            for line in caps.report_lines() {
                info!("cpu{k}: {line}");
            }
            info!("cpu{k}: {fc}");
        }
        caps.check_required()
            .map_err(vmx::availability::Unavailable::MissingFeature)?;
        Ok((caps, fc))
    });
    match verdict {
        Ok((caps, fc)) => enable(&caps, fc)
            .map(|()| caps)
            .map_err(|e| alloc::format!("{e}")),
        Err(reason) => Err(alloc::format!("{reason}")),
    }
}

/// Whether an application processor with capabilities `ap` runs guests
/// with the same VMCS controls, preemption-timer rate and VMCS revision
/// as the boot CPU with `boot`, so a VMCS can move between them.
pub fn same_guest_controls(ap: &Capabilities, boot: &Capabilities) -> bool {
    ap == boot
        || (GuestControls::compute(ap).ok() == GuestControls::compute(boot).ok()
            && ap.misc.preemption_timer_rate == boot.misc.preemption_timer_rate
            && ap.basic.revision_id == boot.basic.revision_id)
}
