//! The ATA PIO protocol against a fake IDE channel that decodes the
//! registers the way a device does (two-deep LBA48 FIFOs, the device
//! register's DEV and LBA bits, DRQ per sector).

use super::*;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::string::ToString;
use alloc::vec;
use core::cell::RefCell;

/// A test clock: one TSC tick per microsecond, so the 5 s timeouts are
/// 5 million ticks (a millisecond or two of real time).
fn clock() -> Clock {
    Clock::new(1_000_000)
}

/// Sector `lba` of a fake disk: every byte names the sector.
pub(in super::super) fn sector_byte(lba: u64, i: usize) -> u8 {
    (lba as u8) ^ (i as u8).wrapping_mul(3) ^ (lba >> 8) as u8
}

enum Kind {
    Disk {
        identify: Vec<u16>,
        sectors: u64,
        sector_size: usize,
        /// Reads that reach this sector fail with UNC.
        bad_sector: Option<u64>,
        /// Commands leave BSY set for good.
        hang: bool,
    },
    Atapi,
    /// Aborts every command, with no packet signature.
    Refuses,
}

/// One fake channel and a log of the commands it ran.
struct Fake {
    drives: [Option<Kind>; 2],
    selected: usize,
    device_reg: u8,
    /// Current and previous content of count, LBA low, mid, high.
    fifo: [[u8; 2]; 4],
    /// Each device's own LBA mid/high after a reset or an aborted
    /// IDENTIFY, until a write to those registers (which reaches both
    /// devices) replaces them.
    sig: [Option<(u8, u8)>; 2],
    status: u8,
    error: u8,
    out: VecDeque<u16>,
    /// Sectors still to send after `out`, and the next one's LBA.
    remaining: u64,
    next_lba: u64,
    commands: Vec<(u8, u64, u64, usize)>,
    resets: usize,
    nien: bool,
    /// QEMU's model of a missing master whose slave exists: its
    /// registers answer (FFh/FFh signature, commands aborted) instead of
    /// reading as zero.
    absent_answers: bool,
}

pub(in super::super) fn identify_words(
    model: &str,
    sectors: u64,
    lba48: bool,
    sector_size: u32,
) -> [u16; 256] {
    let mut w = [0u16; 256];
    w[0] = 0x0040;
    let padded = format!("{model:<40}");
    for (i, pair) in padded.as_bytes().chunks(2).take(20).enumerate() {
        w[27 + i] = u16::from(pair[0]) << 8 | u16::from(pair[1]);
    }
    let serial = format!("{:<20}", "QM00001");
    for (i, pair) in serial.as_bytes().chunks(2).take(10).enumerate() {
        w[10 + i] = u16::from(pair[0]) << 8 | u16::from(pair[1]);
    }
    w[49] = 0x0200;
    let lba28 = sectors.min(0x0FFF_FFFF);
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    w[83] = 0x4000 | if lba48 { 0x0400 } else { 0 };
    for i in 0..4 {
        w[100 + i] = if lba48 {
            (sectors >> (16 * i)) as u16
        } else {
            0
        };
    }
    if sector_size != 512 {
        w[106] = 0x4000 | 0x1000;
        w[117] = (sector_size / 2) as u16;
        w[118] = ((sector_size / 2) >> 16) as u16;
    }
    w
}

fn disk(model: &str, sectors: u64, lba48: bool) -> Kind {
    Kind::Disk {
        identify: identify_words(model, sectors, lba48, 512).to_vec(),
        sectors,
        sector_size: 512,
        bad_sector: None,
        hang: false,
    }
}

impl Fake {
    fn new(master: Option<Kind>, slave: Option<Kind>) -> Rc<RefCell<Self>> {
        let mut fake = Self {
            drives: [master, slave],
            selected: 0,
            device_reg: 0,
            fifo: [[0; 2]; 4],
            sig: [None; 2],
            status: 0x50,
            error: 0,
            out: VecDeque::new(),
            remaining: 0,
            next_lba: 0,
            commands: Vec::new(),
            resets: 0,
            nien: false,
            absent_answers: false,
        };
        fake.signatures();
        Rc::new(RefCell::new(fake))
    }

    /// The registers after reset: each device's signature (ATA/ATAPI-6,
    /// "Signature and persistence").
    fn signatures(&mut self) {
        let atapi = matches!(self.drives[0], Some(Kind::Atapi));
        self.fifo = [[1, 0], [1, 0], [0, 0], [0, 0]];
        for i in 0..2 {
            self.sig[i] = match self.drives[i] {
                Some(Kind::Atapi) => Some((0x14, 0xEB)),
                None if self.absent_answers => Some((0xFF, 0xFF)),
                _ => None,
            };
        }
        self.status = if atapi { 0x00 } else { 0x50 };
        self.error = 0x01;
    }

    fn status(&self) -> u8 {
        match &self.drives[self.selected] {
            Some(_) => self.status,
            None if self.drives.iter().all(Option::is_none) => 0xFF,
            None if self.absent_answers => self.status,
            None => 0,
        }
    }

    fn lba28(&self) -> u64 {
        u64::from(self.device_reg & 0x0F) << 24
            | u64::from(self.fifo[3][0]) << 16
            | u64::from(self.fifo[2][0]) << 8
            | u64::from(self.fifo[1][0])
    }

    fn lba48(&self) -> u64 {
        let mut lba = 0;
        for (i, r) in [1, 2, 3].into_iter().enumerate() {
            lba |= u64::from(self.fifo[r][0]) << (8 * i);
            lba |= u64::from(self.fifo[r][1]) << (8 * i + 24);
        }
        lba
    }

    fn fail(&mut self, error: u8) {
        self.status = 0x51;
        self.error = error;
    }

    fn command(&mut self, cmd: u8) {
        let lba_mode = self.device_reg & 0x40 != 0;
        let (lba, count) = match cmd {
            0x20 => {
                let c = u64::from(self.fifo[0][0]);
                (self.lba28(), if c == 0 { 256 } else { c })
            }
            0x24 => {
                let c = u64::from(self.fifo[0][1]) << 8 | u64::from(self.fifo[0][0]);
                (self.lba48(), if c == 0 { 65536 } else { c })
            }
            _ => (0, 0),
        };
        self.commands.push((cmd, lba, count, self.selected));
        let selected = self.selected;
        let Some(drive) = &self.drives[selected] else {
            if self.absent_answers {
                self.fail(0x04);
            }
            return;
        };
        match (drive, cmd) {
            (Kind::Atapi, 0xEC) => {
                self.sig[selected] = Some((0x14, 0xEB));
                self.fail(0x04);
            }
            (Kind::Disk { hang: true, .. }, _) => self.status = 0xD0,
            (Kind::Disk { identify, .. }, 0xEC) => {
                self.out = identify.iter().copied().collect();
                self.status = 0x58;
            }
            (Kind::Disk { sectors, .. }, 0x20 | 0x24) => {
                if !lba_mode || lba + count > *sectors {
                    self.fail(0x10);
                    return;
                }
                self.remaining = count;
                self.next_lba = lba;
                self.load_sector();
            }
            _ => self.fail(0x04),
        }
    }

    fn load_sector(&mut self) {
        let Some(Kind::Disk {
            sector_size,
            bad_sector,
            ..
        }) = &self.drives[self.selected]
        else {
            return;
        };
        if self.remaining == 0 {
            self.status = 0x50;
            return;
        }
        if *bad_sector == Some(self.next_lba) {
            self.fail(0x40);
            return;
        }
        let lba = self.next_lba;
        let bytes: Vec<u8> = (0..*sector_size).map(|i| sector_byte(lba, i)).collect();
        self.out = bytes
            .chunks(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        self.remaining -= 1;
        self.next_lba += 1;
        self.status = 0x58;
    }
}

#[derive(Clone)]
struct FakePorts(Rc<RefCell<Fake>>);

impl AtaPorts for FakePorts {
    fn read_reg(&mut self, r: u16) -> u8 {
        let f = self.0.borrow();
        if f.drives.iter().all(Option::is_none) {
            return 0xFF;
        }
        match r {
            reg::ERROR => f.error,
            reg::COUNT => f.fifo[0][0],
            reg::LBA_MID | reg::LBA_HIGH if f.sig[f.selected].is_some() => {
                let (mid, high) = f.sig[f.selected].unwrap();
                if r == reg::LBA_MID {
                    mid
                } else {
                    high
                }
            }
            reg::LBA_LOW | reg::LBA_MID | reg::LBA_HIGH => f.fifo[usize::from(r - 2)][0],
            reg::DEVICE => f.device_reg,
            reg::STATUS => f.status(),
            _ => panic!("read of register {r}"),
        }
    }

    fn write_reg(&mut self, r: u16, value: u8) {
        let mut f = self.0.borrow_mut();
        match r {
            reg::ERROR => {}
            reg::COUNT | reg::LBA_LOW | reg::LBA_MID | reg::LBA_HIGH => {
                if r == reg::LBA_MID || r == reg::LBA_HIGH {
                    f.sig = [None; 2];
                }
                let slot = &mut f.fifo[usize::from(r - 2)];
                slot[1] = slot[0];
                slot[0] = value;
            }
            reg::DEVICE => {
                f.device_reg = value;
                f.selected = usize::from(value & 0x10 != 0);
            }
            reg::STATUS => {
                assert_eq!(f.status() & 0x88, 0, "command written while busy");
                f.command(value);
            }
            _ => panic!("write of register {r}"),
        }
    }

    fn read_data(&mut self) -> u16 {
        let mut f = self.0.borrow_mut();
        assert_ne!(f.status() & 0x08, 0, "data read without DRQ");
        let word = f.out.pop_front().expect("DRQ with no data");
        if f.out.is_empty() {
            if f.remaining > 0 {
                f.load_sector();
            } else {
                f.status = 0x50;
            }
        }
        word
    }

    fn alt_status(&mut self) -> u8 {
        self.0.borrow().status()
    }

    fn write_control(&mut self, value: u8) {
        let mut f = self.0.borrow_mut();
        f.nien = value & 0x02 != 0;
        if value & 0x04 != 0 {
            f.resets += 1;
            f.selected = 0;
            f.signatures();
        }
    }
}

fn channel(fake: &Rc<RefCell<Fake>>) -> Channel<FakePorts> {
    Channel::new(FakePorts(fake.clone()), clock())
}

fn probe_disk(fake: &Rc<RefCell<Fake>>, position: Position) -> AtaDisk<FakePorts> {
    let mut ch = channel(fake);
    ch.reset().unwrap();
    match ch.probe(position).unwrap() {
        Probe::Disk(d) => d,
        _ => panic!("no disk"),
    }
}

#[test]
fn identify_decodes_model_capacity_and_sector_size() {
    let words = identify_words("QEMU HARDDISK", 1 << 30, true, 512);
    let id = Identify::parse(&words).unwrap();
    assert_eq!(id.model, "QEMU HARDDISK");
    assert_eq!(id.serial, "QM00001");
    assert_eq!(id.sectors, 1 << 30);
    assert!(id.lba48);
    assert_eq!(id.sector_size, 512);

    // Without the 48-bit feature set, words 60..=61 count.
    let id = Identify::parse(&identify_words("OLD", 1_000_000, false, 512)).unwrap();
    assert_eq!((id.sectors, id.lba48), (1_000_000, false));

    let id = Identify::parse(&identify_words("4KN", 4096, true, 4096)).unwrap();
    assert_eq!(id.sector_size, 4096);

    // Word 83 without its validity pattern: no LBA48.
    let mut w = identify_words("X", 5000, true, 512);
    w[83] = 0x0400;
    assert!(!Identify::parse(&w).unwrap().lba48);
}

#[test]
fn identify_refuses_what_the_driver_cannot_read() {
    let mut w = identify_words("CD", 100, false, 512);
    w[0] = 0x85C0;
    assert!(Identify::parse(&w)
        .unwrap_err()
        .to_string()
        .contains("not an ATA device"));
    let mut w = identify_words("CHS", 100, false, 512);
    w[49] = 0;
    assert!(Identify::parse(&w)
        .unwrap_err()
        .to_string()
        .contains("no LBA"));
    let w = identify_words("EMPTY", 0, false, 512);
    assert!(Identify::parse(&w)
        .unwrap_err()
        .to_string()
        .contains("capacity of 0"));
    let w = identify_words("ODD", 100, true, 520);
    assert!(Identify::parse(&w)
        .unwrap_err()
        .to_string()
        .contains("sector size of 520"));
    assert!(Identify::parse(&[0u16; 10]).is_err());
}

#[test]
fn identify_strings_are_swapped_trimmed_and_printable() {
    // "ABCD" is stored as 'B''A' 'D''C' in little-endian words.
    assert_eq!(ata_string(&[0x4142, 0x4344, 0x2020]), "ABCD");
    assert_eq!(ata_string(&[0x41FF, 0x0000]), "A?");
}

#[test]
fn probe_finds_a_master_disk_and_no_slave() {
    let fake = Fake::new(Some(disk("QEMU HARDDISK", 20480, true)), None);
    let mut ch = channel(&fake);
    assert!(!ch.floating());
    ch.reset().unwrap();
    assert!(fake.borrow().nien, "interrupts must stay off");
    let Probe::Disk(d) = ch.probe(Position::Master).unwrap() else {
        panic!("master not found");
    };
    assert_eq!(d.info().model, "QEMU HARDDISK");
    assert_eq!(d.sectors(), 20480);
    assert!(matches!(ch.probe(Position::Slave).unwrap(), Probe::Absent));
    assert_eq!(fake.borrow().resets, 1);
}

#[test]
fn an_empty_channel_floats_and_atapi_is_skipped() {
    let fake = Fake::new(None, None);
    assert!(channel(&fake).floating());

    let fake = Fake::new(Some(Kind::Atapi), None);
    let mut ch = channel(&fake);
    ch.reset().unwrap();
    assert!(matches!(ch.probe(Position::Master).unwrap(), Probe::Atapi));
    // Found by its signature: IDENTIFY DEVICE was never sent.
    assert!(fake.borrow().commands.is_empty());

    // A packet device as slave, after the master's IDENTIFY wiped the
    // shared LBA registers: found when it aborts IDENTIFY.
    let fake = Fake::new(Some(disk("D", 100, false)), Some(Kind::Atapi));
    let mut ch = channel(&fake);
    ch.reset().unwrap();
    assert!(matches!(
        ch.probe(Position::Master).unwrap(),
        Probe::Disk(_)
    ));
    assert!(matches!(ch.probe(Position::Slave).unwrap(), Probe::Atapi));
}

#[test]
fn a_missing_master_whose_registers_answer_is_absent() {
    let fake = Fake::new(None, Some(disk("SLAVE", 100, true)));
    fake.borrow_mut().absent_answers = true;
    let mut ch = channel(&fake);
    ch.reset().unwrap();
    assert!(matches!(ch.probe(Position::Master).unwrap(), Probe::Absent));
    // Known absent by its floating signature: no IDENTIFY was sent.
    assert!(fake.borrow().commands.is_empty());
    let Probe::Disk(d) = ch.probe(Position::Slave).unwrap() else {
        panic!("slave not found");
    };
    assert_eq!(d.info().model, "SLAVE");
}

#[test]
fn reads_use_lba28_then_lba48_and_split_at_256_sectors() {
    let sectors = (1u64 << 28) + 1000;
    let fake = Fake::new(None, Some(disk("BIG", sectors, true)));
    let mut d = probe_disk(&fake, Position::Slave);

    let mut buf = vec![0u8; 512 * 2];
    d.read(5, &mut buf).unwrap();
    for (i, &b) in buf.iter().enumerate() {
        assert_eq!(b, sector_byte(5 + (i / 512) as u64, i % 512));
    }

    // 300 sectors straddling the 28-bit limit: one 28-bit command of 256
    // sectors, then a 48-bit command for the rest.
    let start = (1u64 << 28) - 256 - 10;
    let mut buf = vec![0u8; 512 * 300];
    d.read(start, &mut buf).unwrap();
    for (i, chunk) in buf.chunks(512).enumerate() {
        assert_eq!(chunk[7], sector_byte(start + i as u64, 7), "sector {i}");
    }

    let mut buf = vec![0u8; 512];
    d.read(sectors - 1, &mut buf).unwrap();
    assert_eq!(buf[1], sector_byte(sectors - 1, 1));

    let commands = fake.borrow().commands.clone();
    assert_eq!(
        commands,
        vec![
            (0xEC, 0, 0, 1),
            (0x20, 5, 2, 1),
            (0x20, start, 256, 1),
            (0x24, start + 256, 44, 1),
            (0x24, sectors - 1, 1, 1),
        ]
    );
}

#[test]
fn a_disk_without_lba48_reads_with_28_bit_commands_only() {
    let fake = Fake::new(Some(disk("SMALL", 600, false)), None);
    let mut d = probe_disk(&fake, Position::Master);
    let mut buf = vec![0u8; 512 * 600];
    d.read(0, &mut buf).unwrap();
    assert_eq!(buf[512 * 599 + 3], sector_byte(599, 3));
    let cmds: Vec<(u8, u64, u64)> = fake
        .borrow()
        .commands
        .iter()
        .map(|&(c, l, n, _)| (c, l, n))
        .collect();
    assert_eq!(
        cmds[1..],
        [(0x20, 0, 256), (0x20, 256, 256), (0x20, 512, 88)]
    );
}

#[test]
fn large_sectors_move_one_block_per_sector() {
    let fake = Fake::new(
        Some(Kind::Disk {
            identify: identify_words("4KN", 64, true, 4096).to_vec(),
            sectors: 64,
            sector_size: 4096,
            bad_sector: None,
            hang: false,
        }),
        None,
    );
    let mut d = probe_disk(&fake, Position::Master);
    assert_eq!(d.sector_size(), 4096);
    let mut buf = vec![0u8; 4096 * 3];
    d.read(60, &mut buf).unwrap();
    assert_eq!(buf[4096 * 2 + 4095], sector_byte(62, 4095));
    assert_eq!(
        d.read(0, &mut [0u8; 512]),
        Err(DiskError::BufferSize {
            len: 512,
            sector_size: 4096
        })
    );
}

#[test]
fn device_errors_and_bad_requests_are_reported() {
    let fake = Fake::new(
        Some(Kind::Disk {
            identify: identify_words("BAD", 100, true, 512).to_vec(),
            sectors: 100,
            sector_size: 512,
            bad_sector: Some(42),
            hang: false,
        }),
        None,
    );
    let mut d = probe_disk(&fake, Position::Master);
    let mut buf = vec![0u8; 512 * 4];
    assert_eq!(
        d.read(40, &mut buf),
        Err(DiskError::Device {
            lba: 40,
            message: String::from("status 0x51, error 0x40 (uncorrectable data)"),
        })
    );
    // The disk still works after the error.
    d.read(43, &mut buf).unwrap();
    assert_eq!(buf[0], sector_byte(43, 0));
    // Past the end: refused before any command.
    let before = fake.borrow().commands.len();
    assert!(matches!(
        d.read(98, &mut buf),
        Err(DiskError::OutOfRange { lba: 98, .. })
    ));
    assert_eq!(fake.borrow().commands.len(), before);
    d.read(100, &mut []).unwrap();
}

#[test]
fn a_dead_device_times_out_instead_of_hanging() {
    let fake = Fake::new(Some(disk("SLOW", 100, true)), None);
    let mut d = probe_disk(&fake, Position::Master);
    if let Some(Kind::Disk { hang, .. }) = &mut fake.borrow_mut().drives[0] {
        *hang = true;
    }
    let mut buf = vec![0u8; 512];
    assert_eq!(d.read(3, &mut buf), Err(DiskError::Timeout { lba: 3 }));

    // Stuck busy during IDENTIFY.
    let fake = Fake::new(
        Some(Kind::Disk {
            identify: identify_words("HUNG", 100, true, 512).to_vec(),
            sectors: 100,
            sector_size: 512,
            bad_sector: None,
            hang: true,
        }),
        None,
    );
    let mut ch = channel(&fake);
    ch.reset().unwrap();
    assert_eq!(
        ch.probe(Position::Master).err(),
        Some(DriverError::Timeout {
            what: "IDENTIFY DEVICE"
        })
    );
}

#[test]
fn identify_errors_carry_the_registers() {
    let fake = Fake::new(Some(Kind::Refuses), None);
    let mut ch = channel(&fake);
    ch.reset().unwrap();
    let err = ch.probe(Position::Master).err().unwrap();
    assert_eq!(
        err,
        DriverError::Device {
            what: "IDENTIFY DEVICE",
            status: 0x51,
            error: 0x04
        }
    );
    assert_eq!(
        err.to_string(),
        "IDENTIFY DEVICE failed: status 0x51, error 0x04 (command aborted)"
    );

    // A device whose IDENTIFY block is all zeros (no LBA support).
    let fake = Fake::new(
        Some(Kind::Disk {
            identify: vec![0; 256],
            sectors: 0,
            sector_size: 512,
            bad_sector: None,
            hang: false,
        }),
        None,
    );
    let mut ch = channel(&fake);
    ch.reset().unwrap();
    assert!(matches!(
        ch.probe(Position::Master),
        Err(DriverError::Unsupported { .. })
    ));
}

#[test]
fn native_mode_channels_use_the_bars() {
    use super::super::pci::Bar;
    let mut dev = PciDevice {
        bus: 0,
        dev: 1,
        func: 1,
        vendor: 0x8086,
        device: 0x7010,
        class: 1,
        subclass: 1,
        prog_if: 0x80,
        bars: [Bar::None; 6],
    };
    assert_eq!(channel_ports(&dev, false).unwrap(), PRIMARY);
    assert_eq!(channel_ports(&dev, true).unwrap(), SECONDARY);
    dev.prog_if = 0x85;
    dev.bars[0] = Bar::Io { port: 0xC000 };
    dev.bars[1] = Bar::Io { port: 0xC010 };
    assert_eq!(
        channel_ports(&dev, false).unwrap(),
        ChannelPorts {
            command: 0xC000,
            control: 0xC012
        }
    );
    assert!(channel_ports(&dev, true)
        .unwrap_err()
        .to_string()
        .contains("without its two I/O BARs"));
}
