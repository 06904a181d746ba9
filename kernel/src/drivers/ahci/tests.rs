//! The AHCI driver against a fake HBA that fetches the command header,
//! command FIS and PRDT from fake physical memory exactly where the
//! specification says the HBA finds them, and answers the way a SATA disk
//! would.

use super::super::ata::tests::{identify_words, sector_byte};
use super::*;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::ToString;
use alloc::vec;
use core::cell::RefCell;

fn clock() -> Clock {
    Clock::new(1_000_000)
}

/// Physical memory for the fake: blocks handed out by a bump allocator.
#[derive(Clone)]
struct FakeMem(Rc<RefCell<MemState>>);

struct MemState {
    next: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl FakeMem {
    fn starting_at(base: u64) -> Self {
        Self(Rc::new(RefCell::new(MemState {
            next: base,
            blocks: BTreeMap::new(),
        })))
    }

    /// The block holding `[phys, phys + len)` and the offset in it.
    fn locate(&self, phys: u64, len: usize) -> (u64, usize) {
        let state = self.0.borrow();
        let (&base, block) = state
            .blocks
            .range(..=phys)
            .next_back()
            .unwrap_or_else(|| panic!("DMA to unallocated {phys:#x}"));
        let offset = (phys - base) as usize;
        assert!(
            offset + len <= block.len(),
            "DMA past the block at {base:#x}"
        );
        (base, offset)
    }

    fn read_phys(&self, phys: u64, len: usize) -> Vec<u8> {
        let (base, offset) = self.locate(phys, len);
        self.0.borrow().blocks[&base][offset..offset + len].to_vec()
    }

    fn write_phys(&self, phys: u64, bytes: &[u8]) {
        let (base, offset) = self.locate(phys, bytes.len());
        self.0.borrow_mut().blocks.get_mut(&base).unwrap()[offset..offset + bytes.len()]
            .copy_from_slice(bytes);
    }

    fn allocated(&self) -> usize {
        self.0.borrow().blocks.len()
    }
}

impl DmaMemory for FakeMem {
    fn alloc(&self, order: u8) -> Result<DmaRegion, DriverError> {
        let mut state = self.0.borrow_mut();
        let size = PAGE_SIZE << order;
        let phys = state.next.next_multiple_of(size);
        state.next = phys + size;
        state.blocks.insert(phys, vec![0; size as usize]);
        Ok(DmaRegion {
            phys: HostPhysAddr::new(phys),
            order,
        })
    }

    fn free(&self, region: DmaRegion) {
        let removed = self.0.borrow_mut().blocks.remove(&region.phys.as_u64());
        assert!(removed.is_some(), "double free");
    }

    fn write(&self, region: &DmaRegion, offset: usize, bytes: &[u8]) -> Option<()> {
        let mut state = self.0.borrow_mut();
        let block = state.blocks.get_mut(&region.phys.as_u64())?;
        block
            .get_mut(offset..offset.checked_add(bytes.len())?)?
            .copy_from_slice(bytes);
        Some(())
    }

    fn read(&self, region: &DmaRegion, offset: usize, buf: &mut [u8]) -> Option<()> {
        let state = self.0.borrow();
        let block = state.blocks.get(&region.phys.as_u64())?;
        buf.copy_from_slice(block.get(offset..offset.checked_add(buf.len())?)?);
        Some(())
    }
}

enum Drive {
    Disk {
        identify: Vec<u16>,
        sectors: u64,
        bad_sector: Option<u64>,
    },
    Atapi,
}

fn disk(model: &str, sectors: u64, lba48: bool) -> Drive {
    Drive::Disk {
        identify: identify_words(model, sectors, lba48, 512).to_vec(),
        sectors,
        bad_sector: None,
    }
}

struct HbaState {
    regs: BTreeMap<usize, u32>,
    mem: FakeMem,
    drives: BTreeMap<usize, Drive>,
    /// The BIOS never lets go of the HBA.
    bios_keeps: bool,
    /// CR stays set after ST clears.
    stuck_cr: bool,
    /// Issued commands never complete.
    hang: bool,
    /// (port, command, lba, count, PRD byte count) of every command.
    issued: Vec<(usize, u8, u64, u32, usize)>,
}

#[derive(Clone)]
struct FakeHba(Rc<RefCell<HbaState>>);

const P_CMD: usize = port::CMD;

impl FakeHba {
    fn new(mem: &FakeMem, cap: u32, drives: Vec<(usize, Drive)>) -> Self {
        let mut regs = BTreeMap::new();
        let mut pi = 0u32;
        for (p, drive) in &drives {
            pi |= 1 << p;
            let base = port_reg(*p, 0);
            regs.insert(base + port::SSTS, 0x113);
            let sig = match drive {
                Drive::Disk { .. } => signature::ATA,
                Drive::Atapi => signature::ATAPI,
            };
            regs.insert(base + port::SIG, sig);
            regs.insert(base + port::TFD, 0x50);
            // The firmware left the port running.
            regs.insert(
                base + P_CMD,
                port::CMD_ST | port::CMD_CR | port::CMD_FRE | port::CMD_FR,
            );
        }
        // An implemented port with nothing attached.
        pi |= 1 << 7;
        regs.insert(hba::CAP, cap);
        regs.insert(hba::PI, pi);
        regs.insert(hba::VS, 0x0001_0301);
        regs.insert(hba::CAP2, hba::CAP2_BOH);
        regs.insert(hba::BOHC, hba::BOHC_BOS);
        regs.insert(hba::GHC, hba::GHC_IE);
        Self(Rc::new(RefCell::new(HbaState {
            regs,
            mem: mem.clone(),
            drives: drives.into_iter().collect(),
            bios_keeps: false,
            stuck_cr: false,
            hang: false,
            issued: Vec::new(),
        })))
    }

    fn reg(&self, offset: usize) -> u32 {
        self.0.borrow().regs.get(&offset).copied().unwrap_or(0)
    }
}

impl HbaState {
    fn get(&self, offset: usize) -> u32 {
        self.regs.get(&offset).copied().unwrap_or(0)
    }

    fn set(&mut self, offset: usize, value: u32) {
        self.regs.insert(offset, value);
    }

    fn port_write(&mut self, p: usize, r: usize, value: u32) {
        let at = port_reg(p, r);
        match r {
            port::IS | port::SERR => {
                let v = self.get(at) & !value;
                self.set(at, v);
            }
            P_CMD => {
                let mut v = value & !(port::CMD_CR | port::CMD_FR);
                let was = self.get(at);
                if value & port::CMD_ST != 0 {
                    assert_ne!(value & port::CMD_FRE, 0, "ST set without FRE");
                    assert_eq!(
                        self.get(port_reg(p, port::TFD)) & 0x88,
                        0,
                        "ST set while the device is busy"
                    );
                    v |= port::CMD_CR;
                } else {
                    // Clearing ST clears PxCI (AHCI 1.3.1 3.3.14).
                    self.set(port_reg(p, port::CI), 0);
                    if self.stuck_cr && was & port::CMD_CR != 0 {
                        v |= port::CMD_CR;
                    }
                }
                if value & port::CMD_FRE != 0 {
                    v |= port::CMD_FR;
                }
                self.set(at, v);
            }
            port::CI => {
                assert_ne!(
                    self.get(port_reg(p, P_CMD)) & port::CMD_ST,
                    0,
                    "CI while stopped"
                );
                self.set(at, self.get(at) | value);
                if value & 1 != 0 && !self.hang {
                    self.execute(p);
                }
            }
            _ => self.set(at, value),
        }
    }

    fn execute(&mut self, p: usize) {
        let reg = |s: &Self, r| u64::from(s.get(port_reg(p, r)));
        let clb = reg(self, port::CLB) | reg(self, port::CLBU) << 32;
        assert_eq!(clb % 1024, 0, "command list misaligned");
        let fb = reg(self, port::FB) | reg(self, port::FBU) << 32;
        assert_eq!(fb % 256, 0, "FIS area misaligned");
        let mem = self.mem.clone();
        let dw = |bytes: &[u8], i: usize| {
            u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap())
        };
        let header = mem.read_phys(clb, 32);
        let dw0 = dw(&header, 0);
        assert_eq!(dw0 & 0x1F, 5, "CFL");
        assert_eq!(dw0 & (1 << 6), 0, "W set on a read");
        assert_eq!(dw0 >> 16, 1, "PRDTL");
        let ctba = u64::from(dw(&header, 2)) | u64::from(dw(&header, 3)) << 32;
        assert_eq!(ctba % 128, 0, "command table misaligned");
        let fis = mem.read_phys(ctba, 20);
        assert_eq!(
            (fis[0], fis[1] & 0x80),
            (0x27, 0x80),
            "not a command H2D FIS"
        );
        let prd = mem.read_phys(ctba + 0x80, 16);
        let dba = u64::from(dw(&prd, 0)) | u64::from(dw(&prd, 1)) << 32;
        let dbc = (dw(&prd, 3) & 0x3F_FFFF) as usize + 1;
        let cmd = fis[2];
        let (lba, count) = match cmd {
            0x25 => {
                assert_ne!(fis[7] & 0x40, 0, "LBA bit");
                let lba = (0..3).fold(0u64, |a, i| a | u64::from(fis[4 + i]) << (8 * i))
                    | (0..3).fold(0u64, |a, i| a | u64::from(fis[8 + i]) << (24 + 8 * i));
                let c = u32::from(fis[12]) | u32::from(fis[13]) << 8;
                (lba, if c == 0 { 65536 } else { c })
            }
            0xC8 => {
                assert_ne!(fis[7] & 0x40, 0, "LBA bit");
                let lba = (0..3).fold(0u64, |a, i| a | u64::from(fis[4 + i]) << (8 * i))
                    | u64::from(fis[7] & 0x0F) << 24;
                let c = u32::from(fis[12]);
                (lba, if c == 0 { 256 } else { c })
            }
            _ => (0, 1),
        };
        self.issued.push((p, cmd, lba, count, dbc));
        let result = match (self.drives.get(&p), cmd) {
            (Some(Drive::Disk { identify, .. }), 0xEC) => Ok(identify
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()),
            (
                Some(Drive::Disk {
                    sectors,
                    bad_sector,
                    ..
                }),
                0x25 | 0xC8,
            ) => {
                if lba + u64::from(count) > *sectors {
                    Err(0x10u8)
                } else if bad_sector.is_some_and(|b| (lba..lba + u64::from(count)).contains(&b)) {
                    Err(0x40)
                } else {
                    Ok((0..u64::from(count) * 512)
                        .map(|i| sector_byte(lba + i / 512, (i % 512) as usize))
                        .collect())
                }
            }
            _ => Err(0x04),
        };
        match result {
            Ok(data) => {
                assert!(data.len() <= dbc, "PRD smaller than the transfer");
                mem.write_phys(dba, &data);
                mem.write_phys(clb + 4, &(data.len() as u32).to_le_bytes());
                self.set(port_reg(p, port::TFD), 0x50);
                let ci = self.get(port_reg(p, port::CI)) & !1;
                self.set(port_reg(p, port::CI), ci);
                let is = self.get(port_reg(p, port::IS)) | 1;
                self.set(port_reg(p, port::IS), is);
            }
            Err(error) => {
                self.set(port_reg(p, port::TFD), u32::from(error) << 8 | 0x51);
                let is = self.get(port_reg(p, port::IS)) | port::IS_TFES;
                self.set(port_reg(p, port::IS), is);
            }
        }
    }
}

impl HbaRegs for FakeHba {
    fn read(&self, offset: usize) -> u32 {
        self.0.borrow().get(offset)
    }

    fn write(&self, offset: usize, value: u32) {
        let mut s = self.0.borrow_mut();
        if offset >= hba::PORTS {
            let p = (offset - hba::PORTS) / hba::PORT_STRIDE;
            let r = (offset - hba::PORTS) % hba::PORT_STRIDE;
            s.port_write(p, r, value);
            return;
        }
        match offset {
            hba::BOHC => {
                let mut v = (s.get(offset) & hba::BOHC_BOS) | (value & !hba::BOHC_BOS);
                if value & hba::BOHC_OOS != 0 && !s.bios_keeps {
                    v &= !hba::BOHC_BOS;
                }
                s.set(offset, v);
            }
            hba::GHC => s.set(offset, value),
            _ => panic!("write to read-only HBA register {offset:#x}"),
        }
    }
}

const CAP_64: u32 = hba::CAP_S64A | 0x1F;

fn open(hba: &FakeHba, mem: &FakeMem, port: usize) -> AhciDisk<FakeHba, FakeMem> {
    let info = init_hba(hba, clock()).unwrap();
    match probe_port(hba.clone(), mem.clone(), clock(), &info, port).unwrap() {
        PortProbe::Disk(d) => d,
        _ => panic!("no disk on port {port}"),
    }
}

#[test]
fn init_takes_the_hba_from_the_bios_and_turns_ahci_on() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(0, disk("D", 100, true))]);
    let info = init_hba(&hba, clock()).unwrap();
    assert_eq!(
        hba.reg(hba::BOHC) & (hba::BOHC_BOS | hba::BOHC_OOS),
        hba::BOHC_OOS
    );
    assert_eq!(hba.reg(hba::GHC), hba::GHC_AE, "AHCI on, interrupts off");
    assert_eq!(info.ports, 0x81);
    assert!(info.addr64());
    assert_eq!(info.version_text(), "1.3.1");
    assert_eq!(
        HbaInfo {
            cap: 0,
            ports: 0,
            version: 0x0001_0000
        }
        .version_text(),
        "1.0"
    );
}

#[test]
fn a_bios_that_keeps_the_hba_is_reported() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![]);
    hba.0.borrow_mut().bios_keeps = true;
    assert_eq!(init_hba(&hba, clock()), Err(DriverError::FirmwareOwned));
    // Busy, then still keeping it after the 2 s grace period.
    let v = hba.reg(hba::BOHC) | hba::BOHC_BB;
    hba.0.borrow_mut().set(hba::BOHC, v);
    assert_eq!(init_hba(&hba, clock()), Err(DriverError::FirmwareOwned));
}

#[test]
fn probe_sets_up_the_port_and_identifies_the_disk() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(2, disk("QEMU HARDDISK", 20480, true))]);
    let d = open(&hba, &mem, 2);
    assert_eq!(d.info().model, "QEMU HARDDISK");
    assert_eq!((d.sectors(), d.sector_size()), (20480, 512));
    let cmd = hba.reg(port_reg(2, P_CMD));
    assert_eq!(
        cmd & (port::CMD_ST | port::CMD_FRE),
        port::CMD_ST | port::CMD_FRE,
        "port running"
    );
    let issued = hba.0.borrow().issued.clone();
    assert_eq!(issued, vec![(2, 0xEC, 0, 1, 512)]);
    // Command list and FIS area inside the one frame, where the layout
    // says.
    let clb = u64::from(hba.reg(port_reg(2, port::CLB)));
    assert_eq!(u64::from(hba.reg(port_reg(2, port::FB))), clb + 0x400);
    assert_eq!(clb % PAGE_SIZE, 0);
    assert_eq!(mem.allocated(), 2);
}

#[test]
fn empty_ports_and_packet_devices_are_not_disks() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(1, Drive::Atapi)]);
    let info = init_hba(&hba, clock()).unwrap();
    assert!(matches!(
        probe_port(hba.clone(), mem.clone(), clock(), &info, 7),
        Ok(PortProbe::Empty)
    ));
    assert!(matches!(
        probe_port(hba.clone(), mem.clone(), clock(), &info, 1),
        Ok(PortProbe::NotDisk("ATAPI device"))
    ));
    // The port was stopped again and its memory given back.
    assert_eq!(mem.allocated(), 0);
    assert_eq!(
        hba.reg(port_reg(1, P_CMD)) & (port::CMD_ST | port::CMD_FRE),
        0
    );
    assert!(hba.0.borrow().issued.is_empty());
}

#[test]
fn reads_split_at_the_bounce_buffer_and_land_in_order() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(0, disk("D", 1 << 40, true))]);
    let mut d = open(&hba, &mem, 0);
    let start = (1u64 << 33) + 10;
    let mut buf = vec![0u8; 512 * 300];
    d.read(start, &mut buf).unwrap();
    for (i, sector) in buf.chunks(512).enumerate() {
        assert_eq!(sector[0], sector_byte(start + i as u64, 0), "sector {i}");
        assert_eq!(
            sector[511],
            sector_byte(start + i as u64, 511),
            "sector {i}"
        );
    }
    let issued: Vec<_> = hba.0.borrow().issued[1..].to_vec();
    assert_eq!(
        issued,
        vec![
            (0, 0x25, start, 128, 65536),
            (0, 0x25, start + 128, 128, 65536),
            (0, 0x25, start + 256, 44, 512 * 44),
        ]
    );
}

#[test]
fn a_28_bit_disk_gets_read_dma_with_the_high_lba_bits_in_device() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(0, disk("OLD", 0x0FFF_0000, false))]);
    let mut d = open(&hba, &mem, 0);
    let lba = 0x0ABC_DEF0;
    let mut buf = vec![0u8; 1024];
    d.read(lba, &mut buf).unwrap();
    assert_eq!(buf[600], sector_byte(lba + 1, 600 - 512));
    assert_eq!(hba.0.borrow().issued[1], (0, 0xC8, lba, 2, 1024));
}

#[test]
fn the_command_fis_layout() {
    let fis = h2d_fis(command::READ_DMA_EXT, 0x1234_5678_9ABC, 0x0102, true);
    assert_eq!(
        fis,
        [
            0x27, 0x80, 0x25, 0, 0xBC, 0x9A, 0x78, 0x40, 0x56, 0x34, 0x12, 0, 0x02, 0x01, 0, 0, 0,
            0, 0, 0
        ]
    );
    let fis = h2d_fis(command::READ_DMA, 0x0ABC_DEF0, 256, false);
    assert_eq!(&fis[4..14], &[0xF0, 0xDE, 0xBC, 0x4A, 0, 0, 0, 0, 0x00, 0]);
    let fis = h2d_fis(command::IDENTIFY, 0, 0, false);
    assert_eq!(&fis[..8], &[0x27, 0x80, 0xEC, 0, 0, 0, 0, 0]);
}

#[test]
fn device_errors_are_reported_and_the_port_recovers() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(
        &mem,
        CAP_64,
        vec![(
            3,
            Drive::Disk {
                identify: identify_words("BAD", 1000, true, 512).to_vec(),
                sectors: 1000,
                bad_sector: Some(500),
            },
        )],
    );
    let mut d = open(&hba, &mem, 3);
    let mut buf = vec![0u8; 512 * 8];
    let err = d.read(496, &mut buf).unwrap_err();
    assert_eq!(
        err,
        DiskError::Device {
            lba: 496,
            message: String::from("status 0x51, error 0x40 (uncorrectable data)")
        }
    );
    assert_eq!(
        err.to_string(),
        "disk: read at LBA 496 failed: status 0x51, error 0x40 (uncorrectable data)"
    );
    // The device is idle again once the error is read: the port restarts.
    hba.0.borrow_mut().set(port_reg(3, port::TFD), 0x50);
    let v = hba.reg(port_reg(3, P_CMD));
    assert_ne!(v & port::CMD_ST, 0);
    d.read(501, &mut buf).unwrap();
    assert_eq!(buf[512 * 7], sector_byte(508, 0));
    assert!(matches!(
        d.read(999, &mut buf),
        Err(DiskError::OutOfRange { lba: 999, .. })
    ));
}

#[test]
fn a_command_that_never_completes_times_out() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(0, disk("HUNG", 100, true))]);
    let mut d = open(&hba, &mem, 0);
    hba.0.borrow_mut().hang = true;
    let mut buf = vec![0u8; 512];
    assert_eq!(d.read(7, &mut buf), Err(DiskError::Timeout { lba: 7 }));
    // Stopping the port cleared PxCI; the device answers again.
    assert_eq!(hba.reg(port_reg(0, port::CI)), 0);
    hba.0.borrow_mut().hang = false;
    d.read(7, &mut buf).unwrap();
    assert_eq!(buf[9], sector_byte(7, 9));
}

#[test]
fn dma_memory_above_4_gib_needs_64_bit_addressing() {
    let mem = FakeMem::starting_at(0x1_0000_0000);
    let hba = FakeHba::new(&mem, 0x1F, vec![(0, disk("D", 100, true))]);
    let info = init_hba(&hba, clock()).unwrap();
    assert!(!info.addr64());
    let err = probe_port(hba.clone(), mem.clone(), clock(), &info, 0).err();
    assert_eq!(
        err,
        Some(DriverError::DmaAbove4G {
            phys: 0x1_0000_0000
        })
    );
    assert_eq!(mem.allocated(), 0, "memory given back");
    // With S64A the same memory is fine, and its upper half is programmed.
    let hba = FakeHba::new(&mem, CAP_64, vec![(0, disk("D", 100, true))]);
    let d = open(&hba, &mem, 0);
    assert_eq!(hba.reg(port_reg(0, port::CLBU)), 1);
    drop(d);
    assert_eq!(mem.allocated(), 0);
}

#[test]
fn a_port_that_will_not_stop_is_reported_and_its_memory_kept() {
    let mem = FakeMem::starting_at(0x10_0000);
    let hba = FakeHba::new(&mem, CAP_64, vec![(0, disk("D", 100, true))]);
    hba.0.borrow_mut().stuck_cr = true;
    let info = init_hba(&hba, clock()).unwrap();
    assert_eq!(
        probe_port(hba.clone(), mem.clone(), clock(), &info, 0).err(),
        Some(DriverError::Timeout {
            what: "command engine stop"
        })
    );
    assert_eq!(mem.allocated(), 0, "nothing was allocated yet");

    hba.0.borrow_mut().stuck_cr = false;
    let d = open(&hba, &mem, 0);
    hba.0.borrow_mut().stuck_cr = true;
    drop(d);
    // The HBA may still write there, so the memory is not reused.
    assert_eq!(mem.allocated(), 2);
}

#[test]
fn abar_length_covers_the_highest_port() {
    assert_eq!(abar_len(0), 0x100);
    assert_eq!(abar_len(0x3F), 0x400);
    assert_eq!(abar_len(1 << 31), 0x1100);
}
