//! Which hardware virtualization runs the guests: VT-x on Intel CPUs
//! (`crate::vtx`), AMD SVM (AMD-V) on AMD and Hygon ones (`crate::svm`).
//! The CPU's vendor picks the backend; each CPU reports it in one line,
//! `cpu<k>: VT-x ready` / `cpu<k>: AMD-V ready`, or why it cannot be used.

use alloc::string::String;

/// What the calling CPU's hardware virtualization offers, once it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capabilities {
    /// VT-x.
    Vmx(crate::vtx::Capabilities),
    /// AMD SVM.
    Svm(::svm::caps::SvmCaps),
}

/// The two backends, by the name the reports give them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Intel VT-x.
    Vmx,
    /// AMD-V (SVM).
    Svm,
}

impl Kind {
    /// The backend for a CPU whose CPUID vendor string is `vendor`: SVM on
    /// AMD and Hygon CPUs that list SVM in CPUID (`has_svm`, even where
    /// firmware turned it off: the report says so), VT-x on every other
    /// (whose report then says why VT-x is missing).
    pub fn for_cpu(vendor: &str, has_svm: bool) -> Kind {
        match vendor {
            "AuthenticAMD" | "HygonGenuine" if has_svm => Kind::Svm,
            _ => Kind::Vmx,
        }
    }

    /// `VT-x` or `AMD-V`, as the reports say it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vmx => "VT-x",
            Kind::Svm => "AMD-V",
        }
    }
}

/// Reports CPU `k`'s capability lines (when `verbose`) and turns its
/// backend on; `Err` says in words why it cannot be used.
pub fn detect_and_enable(
    kind: Kind,
    k: u16,
    vendor: &str,
    verbose: bool,
) -> Result<Capabilities, String> {
    match kind {
        Kind::Vmx => {
            let has_vmx = crate::arch::cpuid(1, 0).ecx & (1 << 5) != 0;
            crate::vtx::detect_and_enable(k, vendor, has_vmx, verbose).map(Capabilities::Vmx)
        }
        Kind::Svm => crate::svm::detect_and_enable(k, vendor, verbose).map(Capabilities::Svm),
    }
}

/// Turns the calling CPU's backend off if it is on; on the way to power
/// off, safe on any path, the fatal one included.
pub fn disable() {
    crate::vtx::disable();
    crate::svm::disable();
}

/// Whether an application processor with `ap` can run the vCPUs the boot
/// CPU with `boot` makes, so a vCPU can move between them.
pub fn same_guest_controls(ap: &Capabilities, boot: &Capabilities) -> bool {
    match (ap, boot) {
        (Capabilities::Vmx(ap), Capabilities::Vmx(boot)) => {
            crate::vtx::same_guest_controls(ap, boot)
        }
        (Capabilities::Svm(ap), Capabilities::Svm(boot)) => {
            crate::svm::same_guest_controls(ap, boot)
        }
        _ => false,
    }
}

/// What a guest with `memory` bytes and `vcpus` vCPUs costs beyond its RAM
/// on the backend `caps` names (VT-x's bound without one), with extended
/// state areas of `save_area` bytes.
pub fn guest_overhead(caps: Option<&Capabilities>, memory: u64, vcpus: u32, save_area: u64) -> u64 {
    match caps {
        Some(Capabilities::Svm(_)) => ::svm::capacity::guest_overhead(memory, vcpus, save_area),
        _ => ::vtx::capacity::guest_overhead(memory, vcpus, save_area),
    }
}
