//! Which CPU is this, what is it, and can it run guests: the boot-time CPU
//! report.
//!
//! CPUs are numbered in the order they come up (`cpu0` is the boot CPU);
//! the number is looked up from the initial APIC ID, which CPUID reports
//! without any per-CPU state having to exist yet.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};

use log::{info, warn};
use raw_cpuid::CpuId;

/// The most CPUs Ferrovisor numbers (initial APIC IDs are 8 bits here).
pub const MAX_CPUS: usize = 256;

/// Marks an APIC ID that has no CPU number yet.
const UNNUMBERED: u16 = u16::MAX;

/// CPU number by initial APIC ID.
static INDEX_BY_APIC_ID: [AtomicU16; MAX_CPUS] = [const { AtomicU16::new(UNNUMBERED) }; MAX_CPUS];
static CPUS_UP: AtomicUsize = AtomicUsize::new(0);
/// Local APIC ID by CPU number: where kicks for that CPU go.
static APIC_ID_BY_INDEX: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// CPUID.1:EBX[31:24]. Read directly rather than through `raw_cpuid`,
/// whose `CpuId::new` first reads and decodes the vendor string: this is on
/// the path of every log line and of every hand-over of a vCPU between
/// CPUs.
fn initial_apic_id() -> u8 {
    (crate::arch::cpuid(1, 0).ebx >> 24) as u8
}

/// Gives the calling CPU the next number. The boot CPU calls it first and
/// becomes `cpu0`.
pub fn register_boot_cpu() {
    let id = usize::from(initial_apic_id());
    let index = CPUS_UP.fetch_add(1, Ordering::Relaxed);
    // At most MAX_CPUS CPUs register, one per APIC ID, so this fits.
    INDEX_BY_APIC_ID[id].store(index as u16, Ordering::Relaxed);
}

/// Records that `cpu<index>` is being started at local APIC ID `apic_id`
/// (the boot CPU does this before it sends the start-up IPIs).
pub fn expect(index: usize, apic_id: u32) {
    if let Some(slot) = APIC_ID_BY_INDEX.get(index) {
        slot.store(apic_id, Ordering::Release);
    }
}

/// Numbers the calling application processor `cpu<index>`: from now on
/// its log lines say so.
pub fn register_ap(index: usize) {
    let id = usize::from(initial_apic_id());
    INDEX_BY_APIC_ID[id].store(index as u16, Ordering::Release);
    CPUS_UP.fetch_add(1, Ordering::AcqRel);
}

/// The local APIC ID of `cpu<index>` (the boot CPU's is recorded by
/// [`record_boot_apic_id`]).
pub fn apic_id(index: usize) -> u32 {
    APIC_ID_BY_INDEX
        .get(index)
        .map_or(0, |id| id.load(Ordering::Acquire))
}

/// Records the boot CPU's local APIC ID, once its APIC is set up.
pub fn record_boot_apic_id(apic_id: u32) {
    APIC_ID_BY_INDEX[0].store(apic_id, Ordering::Release);
}

/// The calling CPU's number, for log prefixes. A CPU that has not
/// registered (which only happens before `register_boot_cpu`) reads as 0.
pub fn current_index() -> u16 {
    match INDEX_BY_APIC_ID[usize::from(initial_apic_id())].load(Ordering::Relaxed) {
        UNNUMBERED => 0,
        index => index,
    }
}

/// Prints the CPU report: identity, the VT-x or SVM capabilities and the
/// verdict, as `cpu<k>: VT-x ready` / `cpu<k>: AMD-V ready`, or `cpu<k>:
/// VT-x unavailable: <reason>` / `cpu<k>: AMD-V unavailable: <reason>`.
/// Returns the capabilities of the backend now on, or the name of the one
/// that is not.
pub fn report() -> Result<crate::virt::Capabilities, &'static str> {
    report_cpu(true)
}

/// The report for an application processor: its identity line, then
/// `cpu<k>: VT-x ready` or why not. The capability lines are left out:
/// the caller checks that they match the boot CPU's.
pub fn report_ap() -> Result<crate::virt::Capabilities, &'static str> {
    report_cpu(false)
}

fn report_cpu(verbose: bool) -> Result<crate::virt::Capabilities, &'static str> {
    let k = current_index();
    let cpuid = CpuId::new();
    let vendor = cpuid.get_vendor_info();
    let vendor = vendor.as_ref().map_or("unknown", |v| v.as_str());
    let brand = cpuid.get_processor_brand_string();
    let brand = brand.as_ref().map_or("", |b| b.as_str().trim());
    let features = cpuid.get_feature_info();
    match &features {
        Some(f) => info!(
            "cpu{k}: {vendor} family {:#x} model {:#x} stepping {} \"{brand}\"",
            f.family_id(),
            f.model_id(),
            f.stepping_id()
        ),
        None => info!("cpu{k}: {vendor} (no CPUID leaf 1) \"{brand}\""),
    }
    let has_svm = crate::arch::cpuid(0x8000_0000, 0).eax >= 0x8000_0001
        && crate::arch::cpuid(0x8000_0001, 0).ecx & (1 << 2) != 0;
    let kind = crate::virt::Kind::for_cpu(vendor, has_svm);
    let name = kind.name();
    let result = crate::virt::detect_and_enable(kind, k, vendor, verbose).map_err(|e| {
        warn!("cpu{k}: {name} unavailable: {e}");
        name
    });
    if result.is_ok() {
        info!("cpu{k}: {name} ready");
    }
    result
}
