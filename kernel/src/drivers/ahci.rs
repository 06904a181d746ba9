//! SATA disks behind an AHCI host bus adapter, read-only and polled: the
//! HBA found on PCI (class 01/06/01), its registers (ABAR, BAR5) mapped
//! uncached, ownership taken from the firmware, AHCI mode on, and for each
//! implemented port with a SATA disk: the command engine stopped, a
//! command list, received-FIS area and command table set up in a frame,
//! the engine started, IDENTIFY DEVICE, then READ DMA (EXT) through a
//! bounce buffer. Nothing is ever written to a disk.
//!
//! Register offsets, bits and structures follow the AHCI 1.3.1
//! specification: HBA registers (3.1), port registers (3.3), the command
//! list (4.2.2), the command table and PRDT (4.2.3), the BIOS/OS handoff
//! (10.6) and the port start/stop rules (10.1.2, 10.3.1); the
//! Register Host-to-Device FIS is the Serial ATA specification's
//! "Register - Host to Device FIS".
//!
//! Registers are reached through [`HbaRegs`] and DMA memory through
//! [`DmaMemory`], so the whole protocol is tested against a fake HBA that
//! reads the structures the driver builds.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use disk::block::{check_read, BlockDevice, DiskError};
use log::{debug, info, warn};
use mm::addr::{HostPhysAddr, PAGE_SIZE};

use super::ata::Identify;
use super::pci::{self, Command, ConfigSpace, PciDevice};
use super::{command, mmio, status, Clock, Disk, DriverError};
use crate::memory;

/// Access to the HBA's memory-mapped registers, by byte offset from ABAR.
pub trait HbaRegs {
    /// Reads the 32-bit register at `offset`.
    fn read(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write(&self, offset: usize, value: u32);
}

/// A block of physical memory the HBA reads or writes by DMA.
#[derive(Debug, PartialEq, Eq)]
pub struct DmaRegion {
    phys: HostPhysAddr,
    order: u8,
}

impl DmaRegion {
    /// The region's physical (and bus) address.
    pub fn phys(&self) -> HostPhysAddr {
        self.phys
    }

    /// Its length in bytes.
    pub fn size(&self) -> usize {
        (PAGE_SIZE as usize) << self.order
    }
}

/// Physical memory for DMA: naturally aligned blocks of 2^order frames.
pub trait DmaMemory {
    /// A zeroed block of 2^`order` frames.
    ///
    /// # Errors
    ///
    /// [`DriverError::Memory`] when none is left.
    fn alloc(&self, order: u8) -> Result<DmaRegion, DriverError>;
    /// Gives a block back; the HBA must no longer use it.
    fn free(&self, region: DmaRegion);
    /// Copies `bytes` into the region at `offset`; `None` when they do not
    /// fit.
    fn write(&self, region: &DmaRegion, offset: usize, bytes: &[u8]) -> Option<()>;
    /// Copies from the region at `offset` into `buf`; `None` when the range
    /// lies outside the region.
    fn read(&self, region: &DmaRegion, offset: usize, buf: &mut [u8]) -> Option<()>;
}

/// HBA (generic host control) register offsets (AHCI 1.3.1 3.1).
mod hba {
    /// Host capabilities.
    pub const CAP: usize = 0x00;
    /// Global host control.
    pub const GHC: usize = 0x04;
    /// Ports implemented.
    pub const PI: usize = 0x0C;
    /// Version.
    pub const VS: usize = 0x10;
    /// Host capabilities extended.
    pub const CAP2: usize = 0x24;
    /// BIOS/OS handoff control and status.
    pub const BOHC: usize = 0x28;

    /// CAP.S64A: 64-bit addressing.
    pub const CAP_S64A: u32 = 1 << 31;
    /// CAP.SSS: staggered spin-up.
    pub const CAP_SSS: u32 = 1 << 27;
    /// GHC.AE: AHCI enable.
    pub const GHC_AE: u32 = 1 << 31;
    /// GHC.IE: interrupt enable.
    pub const GHC_IE: u32 = 1 << 1;
    /// CAP2.BOH: BIOS/OS handoff supported.
    pub const CAP2_BOH: u32 = 1 << 0;
    /// BOHC.BOS: BIOS owned semaphore.
    pub const BOHC_BOS: u32 = 1 << 0;
    /// BOHC.OOS: OS owned semaphore.
    pub const BOHC_OOS: u32 = 1 << 1;
    /// BOHC.BB: BIOS busy.
    pub const BOHC_BB: u32 = 1 << 4;

    /// Where port registers start, and their stride.
    pub const PORTS: usize = 0x100;
    /// Bytes of registers per port.
    pub const PORT_STRIDE: usize = 0x80;
}

/// Port register offsets within a port's block (AHCI 1.3.1 3.3).
mod port {
    /// Command list base address (1 KiB aligned).
    pub const CLB: usize = 0x00;
    /// Its upper 32 bits.
    pub const CLBU: usize = 0x04;
    /// Received-FIS base address (256-byte aligned).
    pub const FB: usize = 0x08;
    /// Its upper 32 bits.
    pub const FBU: usize = 0x0C;
    /// Interrupt status (write one to clear).
    pub const IS: usize = 0x10;
    /// Interrupt enable.
    pub const IE: usize = 0x14;
    /// Command and status.
    pub const CMD: usize = 0x18;
    /// Task file data: status (7:0) and error (15:8).
    pub const TFD: usize = 0x20;
    /// Signature of the attached device.
    pub const SIG: usize = 0x24;
    /// SATA status (SStatus).
    pub const SSTS: usize = 0x28;
    /// SATA error (SError, write one to clear).
    pub const SERR: usize = 0x30;
    /// Command issue.
    pub const CI: usize = 0x38;

    /// CMD.ST: start processing the command list.
    pub const CMD_ST: u32 = 1 << 0;
    /// CMD.SUD: spin up device.
    pub const CMD_SUD: u32 = 1 << 1;
    /// CMD.POD: power on device.
    pub const CMD_POD: u32 = 1 << 2;
    /// CMD.FRE: FIS receive enable.
    pub const CMD_FRE: u32 = 1 << 4;
    /// CMD.FR: FIS receive running.
    pub const CMD_FR: u32 = 1 << 14;
    /// CMD.CR: command list running.
    pub const CMD_CR: u32 = 1 << 15;

    /// IS.TFES: task file error (the device set ERR).
    pub const IS_TFES: u32 = 1 << 30;
    /// IS.HBFS: host bus fatal error.
    pub const IS_HBFS: u32 = 1 << 29;
    /// IS.HBDS: host bus data error.
    pub const IS_HBDS: u32 = 1 << 28;
    /// IS.IFS: interface fatal error.
    pub const IS_IFS: u32 = 1 << 27;
    /// IS.OFS: overflow (the device sent more data than the PRDT holds).
    pub const IS_OFS: u32 = 1 << 24;
    /// The interrupt status bits that end a command in failure.
    pub const IS_ERRORS: u32 = IS_TFES | IS_HBFS | IS_HBDS | IS_IFS | IS_OFS;

    /// SSTS.DET = 3: device present and PHY communication established.
    pub const DET_PRESENT: u32 = 3;
}

/// Device signatures in PxSIG (AHCI 1.3.1 3.3.9).
mod signature {
    /// A SATA disk.
    pub const ATA: u32 = 0x0000_0101;
    /// A packet device (ATAPI).
    pub const ATAPI: u32 = 0xEB14_0101;
    /// An enclosure management bridge.
    pub const SEMB: u32 = 0xC33C_0101;
    /// A port multiplier.
    pub const PM: u32 = 0x9669_0101;
    /// No D2H FIS received yet (the register's reset value).
    pub const NONE: u32 = 0xFFFF_FFFF;
}

/// Layout of the frame holding a port's structures: the command list
/// (32 headers of 32 bytes, 1 KiB aligned), the received-FIS area (256
/// bytes, 256-byte aligned) and the one command table (128-byte aligned:
/// the command FIS at 0, the PRDT at 0x80).
mod layout {
    /// Command list.
    pub const CMD_LIST: usize = 0x000;
    /// Received FIS area.
    pub const RX_FIS: usize = 0x400;
    /// Command table for slot 0.
    pub const CMD_TABLE: usize = 0x500;
    /// Its first (only) PRDT entry.
    pub const PRDT: usize = CMD_TABLE + 0x80;
    /// The end of what is used.
    pub const END: usize = PRDT + 16;
}
const _: () = assert!(layout::END <= PAGE_SIZE as usize);
const _: () = assert!(layout::CMD_LIST.is_multiple_of(1024) && layout::RX_FIS.is_multiple_of(256));
const _: () = assert!(layout::CMD_TABLE.is_multiple_of(128));

/// Bounce buffer: 2^4 frames (64 KiB), one PRDT entry (up to 4 MiB).
const BOUNCE_ORDER: u8 = 4;

/// Port stop: the HBA has 500 ms to clear CR and FR (AHCI 1.3.1 10.1.2).
const STOP_TIMEOUT_MS: u64 = 500;
/// A command (or the device leaving BSY) may take this long. ATA disks
/// recover from a read error within a few seconds; 5 s bounds a dead one.
const COMMAND_TIMEOUT_MS: u64 = 5000;
/// BIOS/OS handoff: 25 ms for the BIOS to react, 2 s more when it says
/// it is busy (AHCI 1.3.1 10.6.3).
const HANDOFF_MS: u64 = 25;
/// See [`HANDOFF_MS`].
const HANDOFF_BUSY_MS: u64 = 2000;

/// The offset of port `port`'s register `reg`.
fn port_reg(port: usize, reg: usize) -> usize {
    hba::PORTS + port * hba::PORT_STRIDE + reg
}

/// What the HBA said about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HbaInfo {
    /// CAP.
    pub cap: u32,
    /// PI: one bit per implemented port.
    pub ports: u32,
    /// VS: major version in 31:16, minor in 15:0.
    pub version: u32,
}

impl HbaInfo {
    /// Whether the HBA can address DMA memory above 4 GiB.
    pub fn addr64(&self) -> bool {
        self.cap & hba::CAP_S64A != 0
    }

    /// The version as `1.3.1` (VS holds binary-coded decimal digits).
    pub fn version_text(&self) -> String {
        let major = self.version >> 16;
        let minor = (self.version >> 8) & 0xFF;
        let sub = self.version & 0xFF;
        if sub == 0 {
            format!("{major:x}.{minor:x}")
        } else {
            format!("{major:x}.{minor:x}.{sub:x}")
        }
    }
}

/// Takes the HBA from the firmware when it offers the BIOS/OS handoff,
/// turns AHCI mode on and interrupts off (AHCI 1.3.1 10.1.2 steps 1-2,
/// 10.6.3).
///
/// # Errors
///
/// [`DriverError::FirmwareOwned`] when the firmware keeps the HBA.
pub fn init_hba(regs: &impl HbaRegs, clock: Clock) -> Result<HbaInfo, DriverError> {
    let ghc = regs.read(hba::GHC);
    regs.write(hba::GHC, (ghc | hba::GHC_AE) & !hba::GHC_IE);
    if regs.read(hba::CAP2) & hba::CAP2_BOH != 0 {
        let bohc = regs.read(hba::BOHC);
        regs.write(hba::BOHC, bohc | hba::BOHC_OOS);
        let released = || (regs.read(hba::BOHC) & hba::BOHC_BOS == 0).then_some(());
        if super::poll(clock.deadline_ms(HANDOFF_MS), released).is_none() {
            let busy = regs.read(hba::BOHC) & hba::BOHC_BB != 0;
            if !busy || super::poll(clock.deadline_ms(HANDOFF_BUSY_MS), released).is_none() {
                return Err(DriverError::FirmwareOwned);
            }
        }
    }
    Ok(HbaInfo {
        cap: regs.read(hba::CAP),
        ports: regs.read(hba::PI),
        version: regs.read(hba::VS),
    })
}

/// Stops a port's command engine and FIS receive (AHCI 1.3.1 10.1.2).
fn stop_port(regs: &impl HbaRegs, clock: Clock, port: usize) -> Result<(), DriverError> {
    let cmd_reg = port_reg(port, port::CMD);
    let cmd = regs.read(cmd_reg);
    if cmd & (port::CMD_ST | port::CMD_CR) != 0 {
        regs.write(cmd_reg, cmd & !port::CMD_ST);
        super::poll(clock.deadline_ms(STOP_TIMEOUT_MS), || {
            (regs.read(cmd_reg) & port::CMD_CR == 0).then_some(())
        })
        .ok_or(DriverError::Timeout {
            what: "command engine stop",
        })?;
    }
    let cmd = regs.read(cmd_reg);
    if cmd & (port::CMD_FRE | port::CMD_FR) != 0 {
        regs.write(cmd_reg, cmd & !port::CMD_FRE);
        super::poll(clock.deadline_ms(STOP_TIMEOUT_MS), || {
            (regs.read(cmd_reg) & port::CMD_FR == 0).then_some(())
        })
        .ok_or(DriverError::Timeout {
            what: "FIS receive stop",
        })?;
    }
    Ok(())
}

/// How a command failed.
#[derive(Debug)]
enum CommandError {
    Timeout,
    Device { status: u8, error: u8 },
    Hba(String),
}

/// A running port and the DMA memory it owns. Dropping it stops the port
/// and gives the memory back (or leaks it, if the port will not stop, so
/// the HBA never writes into a frame someone else got).
struct PortIo<H: HbaRegs, M: DmaMemory> {
    regs: H,
    dma: M,
    clock: Clock,
    port: usize,
    tables: Option<DmaRegion>,
    bounce: Option<DmaRegion>,
}

impl<H: HbaRegs, M: DmaMemory> PortIo<H, M> {
    fn reg(&self, reg: usize) -> usize {
        port_reg(self.port, reg)
    }

    /// Points the port at fresh structures and starts FIS receive (the
    /// port must be stopped).
    fn set_up(&mut self, addr64: bool) -> Result<(), DriverError> {
        let tables = self.dma.alloc(0)?;
        let tables_phys = tables.phys().as_u64();
        self.tables = Some(tables);
        let bounce = self.dma.alloc(BOUNCE_ORDER)?;
        let bounce_end = bounce.phys().as_u64() + bounce.size() as u64 - 1;
        self.bounce = Some(bounce);
        if !addr64 {
            for phys in [tables_phys, bounce_end] {
                if phys >> 32 != 0 {
                    return Err(DriverError::DmaAbove4G { phys });
                }
            }
        }
        let list = tables_phys + layout::CMD_LIST as u64;
        let fis = tables_phys + layout::RX_FIS as u64;
        self.regs.write(self.reg(port::CLB), list as u32);
        self.regs.write(self.reg(port::CLBU), (list >> 32) as u32);
        self.regs.write(self.reg(port::FB), fis as u32);
        self.regs.write(self.reg(port::FBU), (fis >> 32) as u32);
        self.regs.write(self.reg(port::SERR), u32::MAX);
        self.regs.write(self.reg(port::IS), u32::MAX);
        self.regs.write(self.reg(port::IE), 0);
        let cmd = self.regs.read(self.reg(port::CMD));
        self.regs.write(
            self.reg(port::CMD),
            cmd | port::CMD_FRE | port::CMD_SUD | port::CMD_POD,
        );
        Ok(())
    }

    /// Whether the device is neither busy nor wanting data (the condition
    /// for setting ST, AHCI 1.3.1 3.3.7).
    fn wait_idle(&self) -> bool {
        super::poll(self.clock.deadline_ms(COMMAND_TIMEOUT_MS), || {
            let tfd = self.regs.read(self.reg(port::TFD)) as u8;
            (tfd & (status::BSY | status::DRQ) == 0).then_some(())
        })
        .is_some()
    }

    /// Sets ST once the device is idle.
    fn start(&self) -> Result<(), DriverError> {
        if !self.wait_idle() {
            return Err(DriverError::Timeout {
                what: "device busy before the port start",
            });
        }
        let cmd = self.regs.read(self.reg(port::CMD));
        self.regs.write(self.reg(port::CMD), cmd | port::CMD_ST);
        Ok(())
    }

    /// After a failed command: stop the port (which clears PxCI), clear the
    /// error bits and start it again. A device still busy stays stopped
    /// and the next command says so.
    fn recover(&self) {
        if let Err(e) = stop_port(&self.regs, self.clock, self.port) {
            warn!("ahci: port {}: recovery: {e}", self.port);
            return;
        }
        self.regs.write(self.reg(port::SERR), u32::MAX);
        self.regs.write(self.reg(port::IS), u32::MAX);
        let cmd = self.regs.read(self.reg(port::CMD));
        self.regs.write(self.reg(port::CMD), cmd | port::CMD_FRE);
        if let Err(e) = self.start() {
            warn!("ahci: port {}: recovery: {e}", self.port);
        }
    }

    /// Runs one device-to-host data command in slot 0 with `bytes` (even,
    /// at most the bounce buffer) landing in the bounce buffer.
    fn run(&self, fis: &[u8; 20], bytes: usize) -> Result<(), CommandError> {
        let internal = |what: &str| CommandError::Hba(format!("driver bug: {what}"));
        let (Some(tables), Some(bounce)) = (&self.tables, &self.bounce) else {
            return Err(internal("port without DMA memory"));
        };
        if bytes == 0 || !bytes.is_multiple_of(2) || bytes > bounce.size() {
            return Err(internal("transfer size does not fit the bounce buffer"));
        }
        if self.regs.read(self.reg(port::CMD)) & port::CMD_ST == 0 {
            return Err(CommandError::Hba(String::from(
                "the port's command engine is stopped (an earlier failure left the device busy)",
            )));
        }
        let table = tables.phys().as_u64() + layout::CMD_TABLE as u64;
        let buffer = bounce.phys().as_u64();
        // Command header 0 (4.2.2): CFL = 5 dwords, W = 0 (device to host),
        // PRDTL = 1; PRDBC = 0; CTBA.
        let mut header = [0u8; 32];
        header[0..4].copy_from_slice(&(5u32 | 1 << 16).to_le_bytes());
        header[8..12].copy_from_slice(&(table as u32).to_le_bytes());
        header[12..16].copy_from_slice(&((table >> 32) as u32).to_le_bytes());
        // PRDT entry 0 (4.2.3.3): DBA, DBC = bytes - 1, no interrupt.
        let mut prd = [0u8; 16];
        prd[0..4].copy_from_slice(&(buffer as u32).to_le_bytes());
        prd[4..8].copy_from_slice(&((buffer >> 32) as u32).to_le_bytes());
        prd[12..16].copy_from_slice(&((bytes as u32 - 1) & 0x3F_FFFF).to_le_bytes());
        let mut cfis = [0u8; 64];
        cfis[..20].copy_from_slice(fis);
        self.dma
            .write(tables, layout::CMD_LIST, &header)
            .and_then(|()| self.dma.write(tables, layout::CMD_TABLE, &cfis))
            .and_then(|()| self.dma.write(tables, layout::PRDT, &prd))
            .ok_or_else(|| internal("command structures outside their frame"))?;
        // The structures must be in memory before the HBA is told to
        // fetch them.
        fence(Ordering::SeqCst);
        self.regs.write(self.reg(port::IS), u32::MAX);
        self.regs.write(self.reg(port::CI), 1);

        let deadline = self.clock.deadline_ms(COMMAND_TIMEOUT_MS);
        let outcome = super::poll(deadline, || {
            let is = self.regs.read(self.reg(port::IS));
            if is & port::IS_ERRORS != 0 {
                return Some(Err(is));
            }
            (self.regs.read(self.reg(port::CI)) & 1 == 0).then_some(Ok(()))
        });
        fence(Ordering::SeqCst);
        let tfd = self.regs.read(self.reg(port::TFD));
        let (st, error) = (tfd as u8, (tfd >> 8) as u8);
        let result = match outcome {
            None => Err(CommandError::Timeout),
            Some(Err(is)) if is & port::IS_TFES != 0 || st & (status::ERR | status::DF) != 0 => {
                Err(CommandError::Device { status: st, error })
            }
            Some(Err(is)) => Err(CommandError::Hba(format!(
                "HBA error, PxIS {is:#010x}, PxSERR {:#010x}",
                self.regs.read(self.reg(port::SERR))
            ))),
            Some(Ok(())) if st & (status::ERR | status::DF) != 0 => {
                Err(CommandError::Device { status: st, error })
            }
            Some(Ok(())) => {
                let mut moved = [0u8; 4];
                self.dma
                    .read(tables, layout::CMD_LIST + 4, &mut moved)
                    .ok_or_else(|| internal("command header outside its frame"))?;
                let moved = u32::from_le_bytes(moved);
                if moved as usize == bytes {
                    Ok(())
                } else {
                    Err(CommandError::Hba(format!(
                        "the HBA moved {moved} of {bytes} bytes"
                    )))
                }
            }
        };
        if result.is_err() {
            self.recover();
        }
        result
    }

    /// Copies the start of the bounce buffer into `buf`.
    fn copy_out(&self, buf: &mut [u8]) -> Option<()> {
        self.dma.read(self.bounce.as_ref()?, 0, buf)
    }
}

impl<H: HbaRegs, M: DmaMemory> Drop for PortIo<H, M> {
    fn drop(&mut self) {
        match stop_port(&self.regs, self.clock, self.port) {
            Ok(()) => {
                for region in [self.tables.take(), self.bounce.take()]
                    .into_iter()
                    .flatten()
                {
                    self.dma.free(region);
                }
            }
            Err(e) => warn!(
                "ahci: port {}: {e}; its DMA memory stays allocated",
                self.port
            ),
        }
    }
}

/// A Register Host-to-Device FIS (Serial ATA, "Register - Host to
/// Device FIS") for `command`.
fn h2d_fis(command: u8, lba: u64, count: u16, lba48: bool) -> [u8; 20] {
    let l = lba.to_le_bytes();
    let c = count.to_le_bytes();
    let mut fis = [0u8; 20];
    fis[0] = 0x27; // FIS type: register, host to device
    fis[1] = 0x80; // C: the FIS carries a command
    fis[2] = command;
    fis[4] = l[0];
    fis[5] = l[1];
    fis[6] = l[2];
    if command == command::IDENTIFY {
        return fis;
    }
    if lba48 {
        fis[7] = 0x40; // LBA mode
        fis[8] = l[3];
        fis[9] = l[4];
        fis[10] = l[5];
        fis[13] = c[1];
    } else {
        fis[7] = 0x40 | (l[3] & 0x0F);
    }
    fis[12] = c[0];
    fis
}

/// A SATA disk on an AHCI port.
pub struct AhciDisk<H: HbaRegs, M: DmaMemory> {
    io: PortIo<H, M>,
    info: Identify,
}

impl<H: HbaRegs, M: DmaMemory> AhciDisk<H, M> {
    /// What IDENTIFY DEVICE said.
    pub fn info(&self) -> &Identify {
        &self.info
    }
}

impl<H: HbaRegs, M: DmaMemory> BlockDevice for AhciDisk<H, M> {
    fn sector_size(&self) -> u32 {
        self.info.sector_size
    }

    fn sectors(&self) -> u64 {
        self.info.sectors
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_read(self.info.sector_size, self.info.sectors, lba, buf.len())?;
        let sector = self.info.sector_size as usize;
        let bounce = self.io.bounce.as_ref().map_or(0, DmaRegion::size);
        // A 28-bit count of 0 means 256; a 48-bit one 65536; stay below.
        let limit = if self.info.lba48 { 0xFFFF } else { 256 };
        let per_command = (bounce / sector).clamp(1, limit);
        let mut at = lba;
        for chunk in buf.chunks_mut(per_command * sector) {
            let count = chunk.len() / sector;
            let (op, lba48) = if self.info.lba48 {
                (command::READ_DMA_EXT, true)
            } else {
                (command::READ_DMA, false)
            };
            // `per_command` keeps `count` within 16 bits.
            let fis = h2d_fis(op, at, count as u16, lba48);
            self.io.run(&fis, chunk.len()).map_err(|e| match e {
                CommandError::Timeout => DiskError::Timeout { lba: at },
                CommandError::Device { status, error } => DiskError::Device {
                    lba: at,
                    message: super::ata_status_message(status, error),
                },
                CommandError::Hba(message) => DiskError::Device { lba: at, message },
            })?;
            self.io.copy_out(chunk).ok_or(DiskError::Device {
                lba: at,
                message: String::from("driver bug: bounce buffer smaller than a command"),
            })?;
            at = at.saturating_add(count as u64);
        }
        Ok(())
    }
}

/// What [`probe_port`] found.
pub enum PortProbe<H: HbaRegs, M: DmaMemory> {
    /// No device with PHY communication on the port.
    Empty,
    /// A device that is not a SATA disk, by its signature.
    NotDisk(&'static str),
    /// A SATA disk, ready to read.
    Disk(AhciDisk<H, M>),
}

/// Brings up port `port`: checks for a device, stops the port, gives it
/// fresh structures, starts it and runs IDENTIFY DEVICE.
///
/// # Errors
///
/// Whatever step fails, as a [`DriverError`]; the port is left stopped
/// and its memory freed.
pub fn probe_port<H: HbaRegs, M: DmaMemory>(
    regs: H,
    dma: M,
    clock: Clock,
    info: &HbaInfo,
    port: usize,
) -> Result<PortProbe<H, M>, DriverError> {
    let ssts = regs.read(port_reg(port, port::SSTS));
    if ssts & 0xF != port::DET_PRESENT {
        return Ok(PortProbe::Empty);
    }
    stop_port(&regs, clock, port)?;
    let mut io = PortIo {
        regs,
        dma,
        clock,
        port,
        tables: None,
        bounce: None,
    };
    io.set_up(info.addr64())?;
    if !io.wait_idle() {
        return Err(DriverError::Timeout {
            what: "device busy before the port start",
        });
    }
    // PxSIG holds the signature of the first D2H FIS, which the device
    // sent after its reset (and resends when FIS receive starts).
    match io.regs.read(io.reg(port::SIG)) {
        signature::ATA | signature::NONE => {}
        signature::ATAPI => return Ok(PortProbe::NotDisk("ATAPI device")),
        signature::SEMB => return Ok(PortProbe::NotDisk("enclosure management bridge")),
        signature::PM => return Ok(PortProbe::NotDisk("port multiplier")),
        _ => return Ok(PortProbe::NotDisk("device of unknown signature")),
    }
    io.start()?;
    let what = "IDENTIFY DEVICE";
    io.run(&h2d_fis(command::IDENTIFY, 0, 0, false), 512)
        .map_err(|e| match e {
            CommandError::Timeout => DriverError::Timeout { what },
            CommandError::Device { status, error } => DriverError::Device {
                what,
                status,
                error,
            },
            CommandError::Hba(message) => DriverError::Hba { what, message },
        })?;
    let mut bytes = [0u8; 512];
    io.copy_out(&mut bytes).ok_or(DriverError::Hba {
        what,
        message: String::from("bounce buffer too small"),
    })?;
    let mut words = [0u16; 256];
    for (w, pair) in words.iter_mut().zip(bytes.as_chunks::<2>().0) {
        *w = u16::from_le_bytes(*pair);
    }
    let info = Identify::parse(&words)?;
    Ok(PortProbe::Disk(AhciDisk { io, info }))
}

/// The HBA's registers through the uncached mapping of ABAR.
#[derive(Clone, Copy)]
struct MmioRegs {
    base: *mut u8,
    len: usize,
}

impl HbaRegs for MmioRegs {
    fn read(&self, offset: usize) -> u32 {
        if !offset.is_multiple_of(4) || offset.saturating_add(4) > self.len {
            // What a read nobody decodes returns.
            return u32::MAX;
        }
        // SAFETY: `map_uncached` mapped `len` bytes of the HBA's registers
        // at `base` for the kernel's lifetime; the offset is aligned and in
        // range; register reads are volatile and 32 bits wide, as AHCI
        // requires.
        unsafe { self.base.add(offset).cast::<u32>().read_volatile() }
    }

    fn write(&self, offset: usize, value: u32) {
        if !offset.is_multiple_of(4) || offset.saturating_add(4) > self.len {
            return;
        }
        // SAFETY: as for `read`; the driver writes only the registers of
        // the HBA and of ports it owns.
        unsafe { self.base.add(offset).cast::<u32>().write_volatile(value) }
    }
}

/// DMA memory from the kernel's frame allocator; physical addresses are
/// bus addresses (no IOMMU is set up).
#[derive(Clone, Copy)]
struct KernelDma;

impl KernelDma {
    /// Whether `[offset, offset + len)` lies inside `region`, and where.
    fn range(region: &DmaRegion, offset: usize, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        (end <= region.size()).then(|| memory::phys().ptr(region.phys).wrapping_add(offset))
    }
}

impl DmaMemory for KernelDma {
    fn alloc(&self, order: u8) -> Result<DmaRegion, DriverError> {
        let phys = memory::alloc_block(order).map_err(DriverError::Memory)?;
        let region = DmaRegion { phys, order };
        // SAFETY: the block was just taken from the allocator, so it is
        // ours alone, and lies in RAM mapped at the window.
        unsafe { core::ptr::write_bytes(memory::phys().ptr(phys), 0, region.size()) };
        Ok(region)
    }

    fn free(&self, region: DmaRegion) {
        if let Err(e) = memory::free_block(region.phys, region.order) {
            warn!("ahci: freeing DMA memory at {}: {e}", region.phys);
        }
    }

    fn write(&self, region: &DmaRegion, offset: usize, bytes: &[u8]) -> Option<()> {
        let dst = Self::range(region, offset, bytes.len())?;
        // SAFETY: `range` checked the bytes lie in a block this driver
        // owns (only `alloc` makes a `DmaRegion`), mapped at the window;
        // the HBA does not read it until the command is issued.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Some(())
    }

    fn read(&self, region: &DmaRegion, offset: usize, buf: &mut [u8]) -> Option<()> {
        let src = Self::range(region, offset, buf.len())?;
        // SAFETY: as for `write`; the command that filled it has completed
        // (PxCI cleared, with a fence after it), so the HBA no longer
        // writes it.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }
}

/// Bytes of HBA registers up to the last implemented port's block.
fn abar_len(ports: u32) -> usize {
    let highest = 32 - ports.leading_zeros() as usize;
    hba::PORTS + highest * hba::PORT_STRIDE
}

/// Brings up the AHCI HBA `dev` (number `index` in PCI order) and adds its
/// disks to `disks` as `ahci<index>-port<N>`.
///
/// # Errors
///
/// A [`DriverError`] when the HBA itself cannot be used; a port that
/// fails is logged and skipped.
pub(super) fn bring_up(
    cfg: &mut dyn ConfigSpace,
    dev: &PciDevice,
    index: usize,
    clock: Clock,
    disks: &mut Vec<Disk>,
) -> Result<(), DriverError> {
    let at = dev.address();
    let abar = dev
        .bars
        .get(5)
        .and_then(|b| b.memory_addr())
        .ok_or(DriverError::Bar {
            at,
            reason: "BAR5 (ABAR) is not a memory BAR",
        })?;
    let wanted = Command::MEMORY_SPACE
        .union(Command::BUS_MASTER)
        .union(Command::INTX_DISABLE);
    let got = pci::enable(cfg, at, wanted);
    if got.0 & (Command::MEMORY_SPACE.0 | Command::BUS_MASTER.0)
        != Command::MEMORY_SPACE.0 | Command::BUS_MASTER.0
    {
        return Err(DriverError::Bar {
            at,
            reason: "memory decoding or bus mastering will not turn on",
        });
    }
    let abar = HostPhysAddr::new(abar);
    let base = mmio::map_uncached(abar, hba::PORTS as u64)?;
    let probe = MmioRegs {
        base,
        len: hba::PORTS,
    };
    let len = abar_len(probe.read(hba::PI));
    let base = mmio::map_uncached(abar, len as u64)?;
    let regs = MmioRegs { base, len };
    let info = init_hba(&regs, clock)?;
    info!(
        "ahci{index}: {at}: AHCI {}, ports implemented {:#x}, 64-bit DMA: {}",
        info.version_text(),
        info.ports,
        if info.addr64() { "yes" } else { "no" }
    );
    if info.cap & hba::CAP_SSS != 0 {
        debug!("ahci{index}: staggered spin-up supported; SUD is set on each port used");
    }
    for port in (0..32).filter(|p| info.ports & (1 << p) != 0) {
        let name = format!("ahci{index}-port{port}");
        match probe_port(regs, KernelDma, clock, &info, port) {
            Ok(PortProbe::Empty) => debug!("ahci: {name}: no device"),
            Ok(PortProbe::NotDisk(what)) => info!("ahci: {name}: {what} skipped"),
            Ok(PortProbe::Disk(disk)) => {
                let id = disk.info();
                info!(
                    "ahci: {name}: \"{}\" {} sectors of {} bytes{}",
                    id.model,
                    id.sectors,
                    id.sector_size,
                    if id.lba48 { ", LBA48" } else { "" }
                );
                disks.push(Disk {
                    name,
                    device: Box::new(disk),
                });
            }
            Err(e) => warn!("ahci: {name} skipped: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
