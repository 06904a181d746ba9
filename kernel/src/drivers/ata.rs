//! Legacy IDE disks through ATA PIO, read-only and polled: the two
//! channels of each PCI IDE controller (legacy ports or native-mode BARs),
//! a soft reset, IDENTIFY DEVICE on master and slave (ATAPI devices are
//! skipped), and READ SECTORS / READ SECTORS EXT.
//!
//! The protocol is ATA/ATAPI-6 (T13/1410D), cited by clause title: the
//! command and control block registers, the "Device selection protocol",
//! the "PIO data-in command protocol", the "Software reset protocol" (SRST
//! held at least 5 us, status valid 2 ms after it clears), "Signature and
//! persistence", and the IDENTIFY DEVICE data words (with ACS-3 for the
//! logical sector size words).
//! Register access goes through [`AtaPorts`], so the protocol is tested
//! over a fake channel.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use disk::block::{check_read, valid_sector_size, BlockDevice, DiskError};
use log::{debug, info, warn};

use super::pci::{self, Command, ConfigSpace, PciDevice};
use super::{ata_status_message, command, status, Clock, Deadline, Disk, DriverError};
use crate::arch;

/// Access to one channel's registers.
pub trait AtaPorts {
    /// Reads command-block register `reg` (1..=7; see [`reg`]).
    fn read_reg(&mut self, reg: u16) -> u8;
    /// Writes command-block register `reg`.
    fn write_reg(&mut self, reg: u16, value: u8);
    /// Reads one word from the data register.
    fn read_data(&mut self) -> u16;
    /// Reads the alternate status register (status without clearing a
    /// pending interrupt).
    fn alt_status(&mut self) -> u8;
    /// Writes the device control register.
    fn write_control(&mut self, value: u8);
}

/// Command-block register offsets (ATA/ATAPI-6, "I/O register
/// descriptions").
pub mod reg {
    /// Data (16-bit).
    pub const DATA: u16 = 0;
    /// Error (read) / Features (write).
    pub const ERROR: u16 = 1;
    /// Sector count.
    pub const COUNT: u16 = 2;
    /// LBA bits 7:0 (and 31:24 as the previous content).
    pub const LBA_LOW: u16 = 3;
    /// LBA bits 15:8 (and 39:32).
    pub const LBA_MID: u16 = 4;
    /// LBA bits 23:16 (and 47:40).
    pub const LBA_HIGH: u16 = 5;
    /// Device: bit 6 LBA, bit 4 DEV (slave), bits 3:0 LBA 27:24.
    pub const DEVICE: u16 = 6;
    /// Status (read) / Command (write).
    pub const STATUS: u16 = 7;
}

/// Device control register bits (ATA/ATAPI-6, "Device Control
/// register").
mod control {
    /// Interrupts off: the driver polls.
    pub const NIEN: u8 = 0x02;
    /// Software reset of both devices on the channel.
    pub const SRST: u8 = 0x04;
}

/// Bits 7 and 5 of the device register are obsolete and set by
/// convention; bit 6 selects LBA addressing.
const DEVICE_LBA: u8 = 0xE0;

/// One past the highest sector a 28-bit command can reach.
const LBA28_END: u64 = 1 << 28;

/// The most sectors one command moves (a count of 0 means 256 in 28-bit
/// commands; the 48-bit ones are kept to the same size).
const SECTORS_PER_COMMAND: u64 = 256;

/// How long a reset, an IDENTIFY or one data block may take. ATA allows a
/// device 31 s to leave reset (spin-up); the firmware has spun the disks
/// up already, so 5 s is generous for a working device and still bounds a
/// dead one.
const TIMEOUT_MS: u64 = 5000;

/// The I/O ports of one channel: the command block and the control block
/// (the alternate status / device control register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelPorts {
    /// Command block base (data register).
    pub command: u16,
    /// Alternate status / device control port.
    pub control: u16,
}

/// The primary channel in compatibility mode.
pub const PRIMARY: ChannelPorts = ChannelPorts {
    command: 0x1F0,
    control: 0x3F6,
};

/// The secondary channel in compatibility mode.
pub const SECONDARY: ChannelPorts = ChannelPorts {
    command: 0x170,
    control: 0x376,
};

impl AtaPorts for ChannelPorts {
    fn read_reg(&mut self, reg: u16) -> u8 {
        // SAFETY: the ports belong to an IDE channel this driver alone
        // drives (the controller was found on PCI; guests never reach host
        // ports); reading status acknowledges an interrupt, which nIEN
        // keeps from being raised anyway.
        unsafe { arch::inb(self.command.wrapping_add(reg)) }
    }

    fn write_reg(&mut self, reg: u16, value: u8) {
        // SAFETY: as in `read_reg`; the driver only issues the read-only
        // commands of this module.
        unsafe { arch::outb(self.command.wrapping_add(reg), value) }
    }

    fn read_data(&mut self) -> u16 {
        // SAFETY: as in `read_reg`; the driver reads the data register
        // only while DRQ says a block is there.
        unsafe { arch::inw(self.command.wrapping_add(reg::DATA)) }
    }

    fn alt_status(&mut self) -> u8 {
        // SAFETY: the alternate status register has no side effects.
        unsafe { arch::inb(self.control) }
    }

    fn write_control(&mut self, value: u8) {
        // SAFETY: the device control register of this driver's channel;
        // the driver writes only nIEN and SRST.
        unsafe { arch::outb(self.control, value) }
    }
}

/// Master or slave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Device 0.
    Master,
    /// Device 1.
    Slave,
}

impl Position {
    /// The device register's DEV bit (bit 4).
    fn dev_bit(self) -> u8 {
        match self {
            Self::Master => 0,
            Self::Slave => 0x10,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Master => "master",
            Self::Slave => "slave",
        })
    }
}

/// What IDENTIFY DEVICE says about a disk (ATA/ATAPI-6 and ACS-3,
/// "IDENTIFY DEVICE" data): the same data block for ATA PIO and AHCI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identify {
    /// Model number (words 27..=46), trimmed, non-ASCII shown as `?`.
    pub model: String,
    /// Serial number (words 10..=19), trimmed likewise.
    pub serial: String,
    /// User-addressable sectors: words 100..=103 with the 48-bit feature
    /// set, words 60..=61 otherwise.
    pub sectors: u64,
    /// Logical sector size in bytes (words 106, 117..=118; 512 unless the
    /// device says otherwise).
    pub sector_size: u32,
    /// Whether the 48-bit address feature set is supported (word 83 bit
    /// 10).
    pub lba48: bool,
}

impl Identify {
    /// Decodes a 256-word IDENTIFY DEVICE block.
    ///
    /// # Errors
    ///
    /// [`DriverError::Unsupported`] for a block that is not an ATA
    /// device's (word 0 bit 15), a device without LBA (word 49 bit 9), a
    /// capacity of zero or a sector size outside 512..=4096.
    pub fn parse(words: &[u16]) -> Result<Self, DriverError> {
        let word = |i: usize| words.get(i).copied().unwrap_or(0);
        let unsupported = |reason: String| Err(DriverError::Unsupported { reason });
        if words.len() < 256 {
            return unsupported(format!("IDENTIFY data of {} words", words.len()));
        }
        if word(0) & 0x8000 != 0 {
            return unsupported(format!(
                "not an ATA device (IDENTIFY word 0 = {:#06x})",
                word(0)
            ));
        }
        if word(49) & 0x0200 == 0 {
            return unsupported(String::from("no LBA addressing (CHS only)"));
        }
        // Words 83, 86 and 106 are valid when bit 14 is set and bit 15
        // clear.
        let valid = |w: u16| w & 0xC000 == 0x4000;
        let lba48 = valid(word(83)) && word(83) & 0x0400 != 0;
        let lba28_sectors = u64::from(word(60)) | u64::from(word(61)) << 16;
        let lba48_sectors =
            (100..104).fold(0u64, |acc, i| acc | u64::from(word(i)) << (16 * (i - 100)));
        let sectors = if lba48 && lba48_sectors != 0 {
            lba48_sectors
        } else {
            lba28_sectors
        };
        if sectors == 0 {
            return unsupported(String::from("IDENTIFY reports a capacity of 0 sectors"));
        }
        // Word 106 bit 12: the logical sector is longer than 256 words,
        // and words 117..=118 give its length in words.
        let sector_size = if valid(word(106)) && word(106) & 0x1000 != 0 {
            let len_words = u32::from(word(117)) | u32::from(word(118)) << 16;
            len_words.saturating_mul(2)
        } else {
            512
        };
        if !valid_sector_size(sector_size) {
            return unsupported(format!("logical sector size of {sector_size} bytes"));
        }
        Ok(Self {
            model: ata_string(words.get(27..47).unwrap_or(&[])),
            serial: ata_string(words.get(10..20).unwrap_or(&[])),
            sectors,
            sector_size,
            lba48,
        })
    }
}

/// An IDENTIFY string: two characters per word, the first in the high
/// byte, padded with spaces (ATA/ATAPI-6, "Byte, word and DWORD
/// relationships" for ATA strings).
fn ata_string(words: &[u16]) -> String {
    let text: String = words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .map(|b| match b {
            0x20..=0x7E => char::from(b),
            0 => ' ',
            _ => '?',
        })
        .collect();
    String::from(text.trim())
}

/// What [`Channel::probe`] found at one position.
pub enum Probe<P: AtaPorts> {
    /// Nothing answers there.
    Absent,
    /// A packet (ATAPI) device: not a disk this driver reads.
    Atapi,
    /// An ATA disk, ready to read.
    Disk(AtaDisk<P>),
}

/// One IDE channel: two device positions sharing a register block.
pub struct Channel<P: AtaPorts + Clone> {
    ports: P,
    clock: Clock,
}

impl<P: AtaPorts + Clone> Channel<P> {
    /// The channel at `ports`; nothing is touched yet.
    pub fn new(ports: P, clock: Clock) -> Self {
        Self { ports, clock }
    }

    /// Whether anything drives the bus: with no device at all, the
    /// pulled-up data lines read as 0xFF.
    pub fn floating(&mut self) -> bool {
        self.ports.alt_status() == 0xFF
    }

    /// Soft reset of both devices (ATA/ATAPI-6, "Software reset
    /// protocol"), leaving interrupts off (nIEN), then waits for BSY to
    /// clear.
    ///
    /// # Errors
    ///
    /// [`DriverError::Timeout`] when the channel stays busy.
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.ports.write_control(control::NIEN | control::SRST);
        self.clock.delay_us(5);
        self.ports.write_control(control::NIEN);
        self.clock.delay_us(2000);
        let deadline = self.clock.deadline_ms(TIMEOUT_MS);
        wait_status(&mut self.ports, deadline, |s| s & status::BSY == 0)
            .map(|_| ())
            .ok_or(DriverError::Timeout {
                what: "channel reset",
            })
    }

    /// Selects `position`, runs IDENTIFY DEVICE and returns the disk
    /// there, if any.
    ///
    /// # Errors
    ///
    /// [`DriverError::Timeout`], [`DriverError::Device`] when the device
    /// rejects IDENTIFY (and is not ATAPI), or
    /// [`DriverError::Unsupported`] from [`Identify::parse`].
    pub fn probe(&mut self, position: Position) -> Result<Probe<P>, DriverError> {
        let ports = &mut self.ports;
        let deadline = self.clock.deadline_ms(TIMEOUT_MS);
        wait_status(ports, deadline, |s| s & (status::BSY | status::DRQ) == 0).ok_or(
            DriverError::Timeout {
                what: "channel idle",
            },
        )?;
        ports.write_reg(reg::DEVICE, 0xA0 | position.dev_bit());
        self.clock.delay_us(1);
        if ports.alt_status() == 0xFF {
            return Ok(Probe::Absent);
        }
        // The signature in LBA mid/high after reset (ATA/ATAPI-6,
        // "Signature and persistence"): a
        // packet device shows 14h/EBh (SATA bridges 69h/96h); a position
        // with nothing behind it floats to FFh/FFh (QEMU too shows FFh/FFh
        // for a missing master whose slave exists).
        match signature(ports) {
            Signature::Atapi => return Ok(Probe::Atapi),
            Signature::Floating => return Ok(Probe::Absent),
            Signature::Other => {}
        }
        for r in [
            reg::ERROR,
            reg::COUNT,
            reg::LBA_LOW,
            reg::LBA_MID,
            reg::LBA_HIGH,
        ] {
            ports.write_reg(r, 0);
        }
        ports.write_reg(reg::STATUS, command::IDENTIFY);
        self.clock.delay_us(1);
        // No device at this position: the other one answers for it with a
        // status of zero (ATA/ATAPI-6: device 0 responds for an absent
        // device 1).
        if ports.alt_status() == 0 {
            return Ok(Probe::Absent);
        }
        let what = "IDENTIFY DEVICE";
        let deadline = self.clock.deadline_ms(TIMEOUT_MS);
        let st = wait_status(ports, deadline, |s| {
            s & status::BSY == 0 && s & (status::DRQ | status::ERR | status::DF) != 0
        })
        .ok_or(DriverError::Timeout { what })?;
        if st & (status::ERR | status::DF) != 0 {
            let error = ports.read_reg(reg::ERROR);
            // A packet device aborts IDENTIFY DEVICE and shows its
            // signature.
            match signature(ports) {
                Signature::Atapi => return Ok(Probe::Atapi),
                Signature::Floating => return Ok(Probe::Absent),
                Signature::Other => {}
            }
            let status = ports.read_reg(reg::STATUS);
            return Err(DriverError::Device {
                what,
                status,
                error,
            });
        }
        let mut words = [0u16; 256];
        for w in words.iter_mut() {
            *w = ports.read_data();
        }
        // Reading status ends the command (and acknowledges it).
        ports.read_reg(reg::STATUS);
        let info = Identify::parse(&words)?;
        Ok(Probe::Disk(AtaDisk {
            ports: self.ports.clone(),
            position,
            clock: self.clock,
            info,
        }))
    }
}

/// What LBA mid/high say about the selected position.
enum Signature {
    /// A packet (ATAPI) device.
    Atapi,
    /// Nothing drives the bus.
    Floating,
    /// An ATA device, or registers a command has overwritten.
    Other,
}

/// Reads the signature registers of the selected position.
fn signature(ports: &mut impl AtaPorts) -> Signature {
    match (ports.read_reg(reg::LBA_MID), ports.read_reg(reg::LBA_HIGH)) {
        (0x14, 0xEB) | (0x69, 0x96) => Signature::Atapi,
        (0xFF, 0xFF) => Signature::Floating,
        _ => Signature::Other,
    }
}

/// Polls the alternate status register until `done` accepts it; `None`
/// when the deadline passes first.
fn wait_status(
    ports: &mut impl AtaPorts,
    deadline: Deadline,
    done: impl Fn(u8) -> bool,
) -> Option<u8> {
    super::poll(deadline, || {
        let s = ports.alt_status();
        done(s).then_some(s)
    })
}

/// An ATA disk read with PIO commands.
pub struct AtaDisk<P: AtaPorts> {
    ports: P,
    position: Position,
    clock: Clock,
    info: Identify,
}

impl<P: AtaPorts> AtaDisk<P> {
    /// What IDENTIFY DEVICE said.
    pub fn info(&self) -> &Identify {
        &self.info
    }

    /// Reads `buf.len() / sector_size` sectors (1..=256) at `lba` with one
    /// command.
    fn read_command(&mut self, lba: u64, count: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let timeout = DiskError::Timeout { lba };
        let ports = &mut self.ports;
        let deadline = self.clock.deadline_ms(TIMEOUT_MS);
        wait_status(ports, deadline, |s| s & (status::BSY | status::DRQ) == 0)
            .ok_or(timeout.clone())?;
        let end = lba.saturating_add(count);
        let lba_bytes = lba.to_le_bytes();
        let [l0, l1, l2, l3, l4, l5, ..] = lba_bytes;
        let [count_low, count_high, ..] = count.to_le_bytes();
        if end <= LBA28_END {
            // 28-bit: LBA 27:24 in the device register, a count of 256 as
            // 0.
            ports.write_reg(
                reg::DEVICE,
                DEVICE_LBA | self.position.dev_bit() | (l3 & 0x0F),
            );
            self.clock.delay_us(1);
            wait_status(ports, deadline, |s| s & (status::BSY | status::DRQ) == 0)
                .ok_or(timeout.clone())?;
            ports.write_reg(reg::COUNT, count_low);
            ports.write_reg(reg::LBA_LOW, l0);
            ports.write_reg(reg::LBA_MID, l1);
            ports.write_reg(reg::LBA_HIGH, l2);
            ports.write_reg(reg::STATUS, command::READ_SECTORS);
        } else {
            // 48-bit: each register is a two-deep FIFO; the high-order
            // bytes go first (ATA/ATAPI-6, "48-bit Address feature set").
            ports.write_reg(reg::DEVICE, DEVICE_LBA | self.position.dev_bit());
            self.clock.delay_us(1);
            wait_status(ports, deadline, |s| s & (status::BSY | status::DRQ) == 0)
                .ok_or(timeout.clone())?;
            ports.write_reg(reg::COUNT, count_high);
            ports.write_reg(reg::LBA_LOW, l3);
            ports.write_reg(reg::LBA_MID, l4);
            ports.write_reg(reg::LBA_HIGH, l5);
            ports.write_reg(reg::COUNT, count_low);
            ports.write_reg(reg::LBA_LOW, l0);
            ports.write_reg(reg::LBA_MID, l1);
            ports.write_reg(reg::LBA_HIGH, l2);
            ports.write_reg(reg::STATUS, command::READ_SECTORS_EXT);
        }
        let sector = self.info.sector_size as usize;
        for block in buf.chunks_exact_mut(sector) {
            // Status is valid 400 ns after the command or the previous
            // block (ATA/ATAPI-6, "PIO data-in command protocol").
            self.clock.delay_us(1);
            let deadline = self.clock.deadline_ms(TIMEOUT_MS);
            let st = wait_status(ports, deadline, |s| {
                s & status::BSY == 0 && s & (status::DRQ | status::ERR | status::DF) != 0
            })
            .ok_or(timeout.clone())?;
            if st & (status::ERR | status::DF) != 0 {
                return Err(device_error(ports, lba));
            }
            for pair in block.as_chunks_mut::<2>().0 {
                *pair = ports.read_data().to_le_bytes();
            }
        }
        self.clock.delay_us(1);
        let deadline = self.clock.deadline_ms(TIMEOUT_MS);
        wait_status(ports, deadline, |s| s & status::BSY == 0).ok_or(timeout)?;
        let st = ports.read_reg(reg::STATUS);
        if st & (status::ERR | status::DF | status::DRQ) != 0 {
            return Err(device_error(ports, lba));
        }
        Ok(())
    }
}

/// The error a failed read ends in, from the status and error registers.
fn device_error(ports: &mut impl AtaPorts, lba: u64) -> DiskError {
    let error = ports.read_reg(reg::ERROR);
    let st = ports.read_reg(reg::STATUS);
    let mut message = ata_status_message(st, error);
    if st & (status::ERR | status::DF) == 0 {
        message.push_str(" (data left over after the last sector)");
    }
    DiskError::Device { lba, message }
}

impl<P: AtaPorts> BlockDevice for AtaDisk<P> {
    fn sector_size(&self) -> u32 {
        self.info.sector_size
    }

    fn sectors(&self) -> u64 {
        self.info.sectors
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_read(self.info.sector_size, self.info.sectors, lba, buf.len())?;
        let sector = self.info.sector_size as usize;
        let chunk_bytes = sector.saturating_mul(SECTORS_PER_COMMAND as usize);
        let mut at = lba;
        for chunk in buf.chunks_mut(chunk_bytes) {
            let count = (chunk.len() / sector) as u64;
            self.read_command(at, count, chunk)?;
            at = at.saturating_add(count);
        }
        Ok(())
    }
}

/// Which ports a channel of an IDE controller uses: the legacy ones in
/// compatibility mode, BAR0/BAR1 (primary) or BAR2/BAR3 (secondary) in
/// native mode (PCI IDE Controller Specification 1.0, the programming
/// interface bit 0 primary native, bit 2 secondary native; the control
/// block's alternate status register is at offset 2 of its 4-byte BAR).
///
/// # Errors
///
/// [`DriverError::Bar`] when a native-mode channel lacks its I/O BARs.
pub fn channel_ports(dev: &PciDevice, secondary: bool) -> Result<ChannelPorts, DriverError> {
    let (native_bit, legacy, first_bar) = if secondary {
        (0x04, SECONDARY, 2)
    } else {
        (0x01, PRIMARY, 0)
    };
    if dev.prog_if & native_bit == 0 {
        return Ok(legacy);
    }
    let bar = |i: usize| dev.bars.get(i).and_then(|b| b.io_port());
    match (bar(first_bar), bar(first_bar + 1)) {
        (Some(command), Some(control)) => Ok(ChannelPorts {
            command,
            control: control.wrapping_add(2),
        }),
        _ => Err(DriverError::Bar {
            at: dev.address(),
            reason: "native-mode IDE channel without its two I/O BARs",
        }),
    }
}

/// Brings up both channels of the IDE controller `dev`: I/O decoding on,
/// then each channel reset and probed. Disks go to `disks` as
/// `ata<N>-master` / `ata<N>-slave`, `N` counting channels across
/// controllers (`next_channel`); the legacy channels are used once even if
/// several controllers claim them (`legacy_taken`).
pub(super) fn bring_up(
    cfg: &mut dyn ConfigSpace,
    dev: &PciDevice,
    clock: Clock,
    next_channel: &mut usize,
    legacy_taken: &mut [bool; 2],
    disks: &mut Vec<Disk>,
) {
    let command = pci::enable(cfg, dev.address(), Command::IO_SPACE);
    if command.0 & Command::IO_SPACE.0 == 0 {
        warn!(
            "ata: {} skipped: I/O decoding will not turn on",
            dev.address()
        );
        return;
    }
    for (secondary, which) in [(false, "primary"), (true, "secondary")] {
        let ports = match channel_ports(dev, secondary) {
            Ok(ports) => ports,
            Err(e) => {
                warn!("ata: {} {which} channel skipped: {e}", dev.address());
                continue;
            }
        };
        let legacy = [PRIMARY, SECONDARY].iter().position(|l| *l == ports);
        if let Some(taken) = legacy.and_then(|i| legacy_taken.get_mut(i)) {
            if *taken {
                debug!(
                    "ata: {} {which} channel: legacy ports already probed",
                    dev.address()
                );
                continue;
            }
            *taken = true;
        }
        let index = *next_channel;
        *next_channel += 1;
        let channel = format!("ata{index}");
        bring_up_channel(Channel::new(ports, clock), &channel, which, ports, disks);
    }
}

/// Resets and probes one channel, logging each position.
fn bring_up_channel(
    mut channel: Channel<ChannelPorts>,
    name: &str,
    which: &str,
    ports: ChannelPorts,
    disks: &mut Vec<Disk>,
) {
    let where_ = format!("{which}, ports {:#x}/{:#x}", ports.command, ports.control);
    if channel.floating() {
        debug!("ata: {name} ({where_}): no devices");
        return;
    }
    if let Err(e) = channel.reset() {
        warn!("ata: {name} ({where_}) skipped: {e}");
        return;
    }
    for position in [Position::Master, Position::Slave] {
        let disk_name = format!("{name}-{position}");
        match channel.probe(position) {
            Ok(Probe::Absent) => debug!("ata: {disk_name} ({which} {position}): no device"),
            Ok(Probe::Atapi) => {
                info!("ata: {disk_name} ({which} {position}): ATAPI device skipped")
            }
            Ok(Probe::Disk(disk)) => {
                let info = disk.info();
                info!(
                    "ata: {disk_name} ({which} {position}): \"{}\" {} sectors of {} bytes{}",
                    info.model,
                    info.sectors,
                    info.sector_size,
                    if info.lba48 { ", LBA48" } else { "" }
                );
                disks.push(Disk {
                    name: disk_name,
                    device: Box::new(disk),
                });
            }
            Err(e) => warn!("ata: {disk_name} ({which} {position}) skipped: {e}"),
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
