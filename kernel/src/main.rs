//! Ferrovisor's bare-metal entry point and boot sequence.
//!
//! Only this binary sees `BootInfo`. It brings the boot CPU up (serial log,
//! GDT/TSS/IDT, frames and heap, ACPI), reports the CPU and its VT-x support,
//! starts the other CPUs, runs the guests the configuration names on all of
//! them, and powers the machine off once they have all stopped.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

extern crate alloc;

mod arch;
mod bootcfg;
mod cpu;
mod drivers;
mod gdt;
mod guest_ram;
mod guests;
mod interrupts;
mod lapic;
mod logger;
mod memory;
mod panic;
mod power;
mod rtc;
mod selftest;
mod serial;
mod serial_console;
mod smp;
mod tsc;
// The VT-x backend's hardware half; its pure half is the `vtx` crate
// (`kernel/vtx`), which this module names as `::vtx`.
mod vtx;
// AMD SVM's hardware half; its pure half is the `svm` crate.
mod svm;
mod switched;
mod virt;
mod wx;

use bootloader_api::config::Mapping;
use bootloader_api::{entry_point, BootInfo, BootloaderConfig};
use log::info;

/// What the kernel asks of the bootloader: the whole of physical memory
/// mapped at an offset it chooses (the frame allocator, ACPI and later EPT
/// construction reach physical memory through it) and a roomy boot stack.
const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

/// The version printed in the first console line.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    serial::init();
    serial_console::record_boot(guests::rdtsc());
    logger::init();
    info!("ferrovisor {VERSION} starting");
    cpu::register_boot_cpu();
    gdt::init_boot_cpu();
    interrupts::init();

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        panic::fatal(format_args!("the bootloader did not map physical memory"));
    };
    let phys = memory::PhysMap::new(phys_offset, &boot_info.memory_regions);
    memory::init(&boot_info.memory_regions, phys);
    wx::enforce(boot_info);
    power::init(boot_info.rsdp_addr.into_option(), phys);

    let virt = cpu::report();
    selftest::run();
    let tsc_hz = tsc::measure_hz();
    let mut disks = drivers::find_disks(tsc_hz);
    let mut files = bootcfg::open(&mut disks, ramdisk(boot_info));
    let outcome = files
        .as_mut()
        .and_then(|f| guests::load_config(&mut **f, virt.as_ref().ok()));
    // After the drivers: they change the shared page tables (uncached
    // device mappings) and flush only this CPU's TLB.
    start_other_cpus(virt.as_ref().ok(), tsc_hz);
    match (virt, files.as_mut(), outcome) {
        (Ok(caps), Some(files), Some(outcome)) => {
            arch::mask_legacy_pic();
            if let guests::AllStopped::StayUp = guests::run_all(caps, tsc_hz, &mut **files, outcome)
            {
                arch::halt_forever();
            }
        }
        (Ok(_), _, _) => info!("no guests to run"),
        (Err(name), _, _) => info!("nothing to do without {name}"),
    }
    power::power_off()
}

/// Starts the application processors the MADT lists (each says `cpu<k>:
/// VT-x ready` or why it is left out); without a MADT or a usable local
/// APIC the guests run on this CPU alone. `caps`: this CPU's VT-x, if it
/// has it.
fn start_other_cpus(caps: Option<&virt::Capabilities>, tsc_hz: u64) {
    if let Err(e) = lapic::init_boot_cpu() {
        log::warn!("smp: {e}; running on cpu0 only");
        return;
    }
    cpu::record_boot_apic_id(lapic::id());
    lapic::calibrate(tsc_hz);
    serial_console::prepare_irq();
    match power::madt() {
        Ok(madt) => {
            smp::start_aps(&madt, tsc_hz, caps);
        }
        Err(e) => log::warn!("smp: no CPU list: {e}; running on cpu0 only"),
    }
}

/// The boot ramdisk the bootloader loaded and mapped, if any.
fn ramdisk(boot_info: &BootInfo) -> Option<&'static [u8]> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    let len = usize::try_from(boot_info.ramdisk_len).ok()?;
    // SAFETY: the bootloader maps the ramdisk's `len` bytes at `addr` for
    // the kernel's lifetime and nothing writes them.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}
