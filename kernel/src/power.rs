//! Powering the machine off: ACPI S5, with the emulators' exit ports only as
//! a fallback where ACPI gives us no way.
//!
//! ACPI soft-off (spec 7.4.2, 16.1.6): write SLP_TYPa (from the DSDT's \_S5
//! object) with SLP_EN to PM1a_CNT, and SLP_TYPb to PM1b_CNT where the
//! machine has one. If the firmware left the platform in legacy mode
//! (SCI_EN clear), it is switched to ACPI mode first by writing ACPI_ENABLE
//! to SMI_CMD.

use acpi::{self, PhysMemory, PowerOff};
use log::{info, warn};
use spin::Once;

use crate::arch;
use crate::memory::PhysMap;
use mm::addr::HostPhysAddr;

static POWER_OFF: Once<Option<PowerOff>> = Once::new();
/// Where the RSDP is, for the other tables read later (the MADT).
static TABLES: Once<Option<(u64, PhysMap)>> = Once::new();

/// Physical memory as the ACPI parser reads it: through the bootloader's
/// mapping.
struct Mapped(PhysMap);

impl PhysMemory for Mapped {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), acpi::AcpiError> {
        let at = HostPhysAddr::new(phys);
        // A corrupt table pointer must give an error, not a page fault.
        if !self.0.covers(at, buf.len() as u64) {
            return Err(acpi::AcpiError::Unreadable {
                phys,
                len: buf.len(),
            });
        }
        let src = self.0.ptr(at);
        // SAFETY: `covers` checked the range lies in the physical memory the
        // bootloader mapped at `PhysMap` for the kernel's lifetime (the
        // firmware's reserved and ACPI regions included); firmware tables are
        // not written while we read them; `buf` is a distinct kernel buffer.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// Reads the ACPI tables the power-off path needs. Failure is logged, not
/// fatal: the machine can still run, only powering off falls back.
pub fn init(rsdp: Option<u64>, phys: PhysMap) {
    TABLES.call_once(|| rsdp.map(|r| (r, phys)));
    POWER_OFF.call_once(|| {
        let Some(rsdp) = rsdp else {
            warn!("acpi: the firmware gave no RSDP; power off will use the emulator exit ports");
            return None;
        };
        let mem = Mapped(phys);
        acpi::log_tables(&mem, rsdp, |line| info!("{line}"));
        match acpi::power_off_info(&mem, rsdp) {
            Ok(info) => {
                info!("acpi: {info}");
                Some(info)
            }
            Err(e) => {
                warn!("acpi: {e}; power off will use the emulator exit ports");
                None
            }
        }
    });
}

/// The MADT: the CPUs and interrupt controllers the firmware lists.
pub fn madt() -> Result<acpi::Madt, alloc::string::String> {
    let Some(Some((rsdp, phys))) = TABLES.get() else {
        return Err("the firmware gave no RSDP".into());
    };
    acpi::madt(&Mapped(*phys), *rsdp).map_err(|e| alloc::format!("{e}"))
}

/// Powers off after a normal run: the other CPUs leave VMX operation
/// first.
pub fn power_off() -> ! {
    crate::smp::park_others();
    info!("powering off");
    shut_down()
}

/// Powers off after a fatal error; the line is the failure indication.
pub fn power_off_after_failure() -> ! {
    crate::serial::write_fmt(format_args!(
        "[cpu{}] ERROR powering off after a failure\n",
        crate::cpu::current_index()
    ));
    shut_down()
}

fn shut_down() -> ! {
    x86_64::instructions::interrupts::disable();
    crate::virt::disable();
    crate::serial::drain();
    if let Some(Some(info)) = POWER_OFF.get() {
        acpi_s5(info);
        // A machine that ignored the write is still here: say so before the fallback.
        crate::serial::write_fmt(format_args!(
            "ACPI power off did not take effect; trying the emulator exit ports\n"
        ));
        crate::serial::drain();
    }
    emulator_exit()
}

/// How long to wait for a power-off write to take effect, in spin
/// iterations (a few milliseconds on hardware, well under a second under Bochs).
const SETTLE_SPINS: u32 = 2_000_000;

fn settle() {
    for _ in 0..SETTLE_SPINS {
        core::hint::spin_loop();
    }
}

fn acpi_s5(info: &PowerOff) {
    // SAFETY: the ports come from the FADT, the firmware's own description
    // of its PM1 control blocks and SMI command port, and are accessed as
    // the ACPI specification says (16-bit PM1 control, 8-bit SMI command).
    unsafe {
        let sci_en = arch::inw(info.pm1a_cnt) & acpi::PM1_SCI_EN != 0;
        // SMI_CMD is a 32-bit field but an I/O port; a value beyond the port
        // space is firmware garbage, and 0 means there is no legacy mode.
        let smi_cmd = u16::try_from(info.smi_cmd).ok().filter(|&port| port != 0);
        if let (false, Some(smi_cmd), 1..) = (sci_en, smi_cmd, info.acpi_enable) {
            arch::outb(smi_cmd, info.acpi_enable);
            for _ in 0..1000 {
                if arch::inw(info.pm1a_cnt) & acpi::PM1_SCI_EN != 0 {
                    break;
                }
                settle();
            }
        }
        let a = acpi::pm1_control_value(arch::inw(info.pm1a_cnt), info.sleep.slp_typ_a);
        if let Some(pm1b) = info.pm1b_cnt {
            arch::outw(
                pm1b,
                acpi::pm1_control_value(arch::inw(pm1b), info.sleep.slp_typ_b),
            );
        }
        arch::outw(info.pm1a_cnt, a);
    }
    settle();
}

/// Last resort where ACPI gave no way off: Bochs's (and old QEMU's)
/// shutdown port, then halt.
fn emulator_exit() -> ! {
    // SAFETY: port 0x8900 is Bochs's APM shutdown port; on a machine without
    // it the writes go nowhere, and we are about to halt anyway.
    unsafe {
        for byte in b"Shutdown" {
            arch::outb(0x8900, *byte);
        }
    }
    settle();
    crate::serial::write_fmt(format_args!(
        "could not power off; halting (switch the machine off by hand)\n"
    ));
    arch::halt_forever()
}
