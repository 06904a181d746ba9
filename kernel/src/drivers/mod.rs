//! Disk drivers for the boot path: PCI enumeration ([`pci`]), legacy IDE
//! disks through ATA PIO ([`ata`]) and SATA disks behind AHCI ([`ahci`]),
//! all polled and read-only, each disk handed out as a named
//! [`BlockDevice`] by [`find_disks`].
//!
//! Timing: every wait on a device is bounded by a [`Deadline`] on the TSC,
//! so a missing or dead device ends in an error, never a hang.

pub mod ahci;
pub mod ata;
pub mod mmio;
pub mod pci;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use disk::block::BlockDevice;
use log::{info, warn};

use pci::PciAddress;

/// A disk found by [`find_disks`].
pub struct Disk {
    /// `ata0-master`, `ata1-slave`, `ahci0-port3`, ...: the controller
    /// kind, its index in PCI order and the place on it.
    pub name: String,
    /// The device, ready to read.
    pub device: Box<dyn BlockDevice>,
}

/// Finds every readable disk: scans PCI, logs each storage controller,
/// probes the IDE channels (ATA PIO) and the AHCI ports, and returns the
/// disks in PCI order. A controller or drive that fails is logged and
/// skipped; the others are still returned.
///
/// `tsc_hz` is the TSC rate (`tsc::measure_hz`), which turns the drivers'
/// timeouts into TSC ticks.
pub fn find_disks(tsc_hz: u64) -> Vec<Disk> {
    let clock = Clock::new(tsc_hz);
    let mut cfg = pci::PortConfigSpace;
    let devices = pci::scan(&mut cfg);
    let mut disks = Vec::new();
    let mut ide_channels = 0usize;
    let mut ahci_controllers = 0usize;
    // The legacy (compatibility-mode) channels exist once per machine,
    // whatever number of controllers claim them.
    let mut legacy_taken = [false; 2];
    for dev in &devices {
        let Some(kind) = dev.storage_kind() else {
            continue;
        };
        info!("pci: {dev} {kind}");
        if dev.is_ide() {
            ata::bring_up(
                &mut cfg,
                dev,
                clock,
                &mut ide_channels,
                &mut legacy_taken,
                &mut disks,
            );
        } else if dev.is_ahci() {
            let index = ahci_controllers;
            ahci_controllers += 1;
            if let Err(e) = ahci::bring_up(&mut cfg, dev, index, clock, &mut disks) {
                warn!("ahci{index}: {} skipped: {e}", dev.address());
            }
        }
    }
    if disks.is_empty() {
        info!("disks: none found");
    } else {
        let list: Vec<String> = disks
            .iter()
            .map(|d| {
                let bytes = d
                    .device
                    .sectors()
                    .saturating_mul(u64::from(d.device.sector_size()));
                format!("{} ({} MiB)", d.name, bytes >> 20)
            })
            .collect();
        info!("disks: {}", list.join(", "));
    }
    disks
}

/// Why a controller or drive could not be brought up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The device did not finish `what` in time.
    Timeout {
        /// The step that timed out (`"IDENTIFY DEVICE"`, `"port stop"`).
        what: &'static str,
    },
    /// The device reported an error for `what`.
    Device {
        /// The step that failed.
        what: &'static str,
        /// ATA status register (or AHCI PxTFD.STS).
        status: u8,
        /// ATA error register (or AHCI PxTFD.ERR).
        error: u8,
    },
    /// The AHCI HBA reported a failure that is not the device's.
    Hba {
        /// The step that failed.
        what: &'static str,
        /// What the HBA said, in words.
        message: String,
    },
    /// The device answered IDENTIFY with something this driver cannot use.
    Unsupported {
        /// What is missing or odd, in words.
        reason: String,
    },
    /// A controller BAR is missing or of the wrong kind.
    Bar {
        /// The controller.
        at: PciAddress,
        /// Which BAR and what was expected.
        reason: &'static str,
    },
    /// No frame for the driver's DMA structures.
    Memory(mm::MmError),
    /// A DMA frame lies above 4 GiB and the HBA only addresses 32 bits.
    DmaAbove4G {
        /// The frame's physical address.
        phys: u64,
    },
    /// An MMIO region could not be mapped uncached.
    Map {
        /// The region's physical address.
        phys: u64,
        /// Why not.
        reason: &'static str,
    },
    /// The firmware kept the AHCI HBA (BIOS/OS handoff, AHCI 1.3.1 10.6).
    FirmwareOwned,
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { what } => write!(f, "{what} timed out"),
            Self::Device {
                what,
                status,
                error,
            } => write!(f, "{what} failed: {}", ata_status_message(*status, *error)),
            Self::Hba { what, message } => write!(f, "{what} failed: {message}"),
            Self::Unsupported { reason } => write!(f, "unsupported device: {reason}"),
            Self::Bar { at, reason } => write!(f, "controller {at}: {reason}"),
            Self::Memory(e) => write!(f, "no memory for DMA structures: {e}"),
            Self::DmaAbove4G { phys } => write!(
                f,
                "DMA frame {phys:#x} lies above 4 GiB and the HBA has no 64-bit addressing"
            ),
            Self::Map { phys, reason } => {
                write!(f, "cannot map MMIO at {phys:#x} uncached: {reason}")
            }
            Self::FirmwareOwned => {
                f.write_str("the firmware did not release the HBA (BIOS/OS handoff)")
            }
        }
    }
}

/// ATA status register bits (ACS-3 6.2, "Normal outputs").
pub mod status {
    /// Busy: the other bits are not valid.
    pub const BSY: u8 = 0x80;
    /// Device fault.
    pub const DF: u8 = 0x20;
    /// Data request: the device wants a data block moved.
    pub const DRQ: u8 = 0x08;
    /// Error: the error register says which.
    pub const ERR: u8 = 0x01;
}

/// The ATA commands the drivers issue, the same through the task-file
/// registers (ATA PIO) and in AHCI's command FIS (ACS-3, "Command
/// descriptions").
pub mod command {
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xEC;
    /// READ SECTORS, 28-bit PIO.
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT, 48-bit PIO.
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// READ DMA, 28-bit.
    pub const READ_DMA: u8 = 0xC8;
    /// READ DMA EXT, 48-bit.
    pub const READ_DMA_EXT: u8 = 0x25;
}

/// The ATA status and error registers in words, the same for ATA PIO and
/// for AHCI's PxTFD: `status 0x51, error 0x40 (uncorrectable data)`.
pub fn ata_status_message(status: u8, error: u8) -> String {
    let mut words: Vec<&str> = Vec::new();
    if status & status::DF != 0 {
        words.push("device fault");
    }
    if status & status::ERR != 0 {
        // Error register bits (ACS-3 6.3).
        for (bit, name) in [
            (0x80, "interface CRC error"),
            (0x40, "uncorrectable data"),
            (0x20, "media changed"),
            (0x10, "sector not found"),
            (0x08, "media change request"),
            (0x04, "command aborted"),
            (0x02, "no media"),
            (0x01, "address mark not found"),
        ] {
            if error & bit != 0 {
                words.push(name);
            }
        }
        if error == 0 {
            words.push("no error bits set");
        }
    }
    let mut text = format!("status {status:#04x}");
    if status & status::ERR != 0 {
        text.push_str(&format!(", error {error:#04x}"));
    }
    if !words.is_empty() {
        text.push_str(&format!(" ({})", words.join(", ")));
    }
    text
}

/// The TSC rate the drivers' deadlines count in.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    hz: u64,
}

impl Clock {
    /// A clock of `hz` TSC ticks per second (at least 1).
    pub fn new(hz: u64) -> Self {
        Self { hz: hz.max(1) }
    }

    /// A deadline `us` microseconds from now.
    pub fn deadline_us(self, us: u64) -> Deadline {
        let ticks = u128::from(self.hz) * u128::from(us) / 1_000_000;
        Deadline {
            start: now(),
            ticks: u64::try_from(ticks).unwrap_or(u64::MAX).max(1),
        }
    }

    /// A deadline `ms` milliseconds from now.
    pub fn deadline_ms(self, ms: u64) -> Deadline {
        self.deadline_us(ms.saturating_mul(1000))
    }

    /// Spins for at least `us` microseconds (the minimum delays the ATA
    /// protocol asks for).
    pub fn delay_us(self, us: u64) {
        let deadline = self.deadline_us(us);
        while !deadline.expired() {
            core::hint::spin_loop();
        }
    }
}

/// A point in TSC time after which a wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    start: u64,
    ticks: u64,
}

impl Deadline {
    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        now().wrapping_sub(self.start) >= self.ticks
    }
}

/// Polls `ready` until it gives a value or `deadline` passes. `ready` is
/// asked once more after the deadline, so a device that finished while
/// the caller was away is not reported late.
pub fn poll<T>(deadline: Deadline, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        let expired = deadline.expired();
        if let Some(value) = ready() {
            return Some(value);
        }
        if expired {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// The TSC now.
fn now() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; CR4.TSD is clear
    // (the kernel runs at CPL 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn status_messages_name_the_bits() {
        assert_eq!(
            ata_status_message(0x51, 0x40),
            "status 0x51, error 0x40 (uncorrectable data)"
        );
        assert_eq!(
            ata_status_message(0x71, 0x14),
            "status 0x71, error 0x14 (device fault, sector not found, command aborted)"
        );
        assert_eq!(ata_status_message(0x60, 0xFF), "status 0x60 (device fault)");
        assert_eq!(
            ata_status_message(0x41, 0x00),
            "status 0x41, error 0x00 (no error bits set)"
        );
        assert_eq!(ata_status_message(0x50, 0x04), "status 0x50");
    }

    #[test]
    fn errors_say_what_failed() {
        let e = DriverError::Device {
            what: "IDENTIFY DEVICE",
            status: 0x51,
            error: 0x04,
        };
        assert_eq!(
            e.to_string(),
            "IDENTIFY DEVICE failed: status 0x51, error 0x04 (command aborted)"
        );
        assert_eq!(
            DriverError::Timeout { what: "port stop" }.to_string(),
            "port stop timed out"
        );
        assert_eq!(
            DriverError::DmaAbove4G {
                phys: 0x1_0000_0000
            }
            .to_string(),
            "DMA frame 0x100000000 lies above 4 GiB and the HBA has no 64-bit addressing"
        );
    }

    #[test]
    fn deadlines_expire_and_poll_gives_up() {
        // One tick per microsecond: a 50 us deadline is 50 TSC ticks.
        let clock = Clock::new(1_000_000);
        let deadline = clock.deadline_us(50);
        let mut polls = 0u64;
        let got: Option<()> = poll(deadline, || {
            polls += 1;
            None
        });
        assert!(got.is_none());
        assert!(deadline.expired());
        assert!(polls >= 1);
        let mut countdown = 3;
        let got = poll(Clock::new(1_000_000_000).deadline_ms(1000), || {
            countdown -= 1;
            (countdown == 0).then_some(7)
        });
        assert_eq!(got, Some(7));
    }

    #[test]
    fn huge_waits_saturate_instead_of_wrapping() {
        let deadline = Clock::new(u64::MAX).deadline_ms(u64::MAX);
        assert_eq!(deadline.ticks, u64::MAX);
        assert!(!deadline.expired());
        assert_eq!(Clock::new(0).deadline_us(0).ticks, 1);
    }
}
