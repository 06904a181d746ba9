//! PCI enumeration: configuration space through I/O mechanism #1
//! (ports 0xCF8/0xCFC), the brute-force scan of every bus, device and
//! function, BAR decoding and the command-register bits the disk drivers
//! need.
//!
//! Register offsets and bit layouts are those of the PCI Local Bus
//! Specification 3.0: the configuration header (6.1, figure 6-1), the
//! command register (6.2.2), the header-type register (6.2.1) and the base
//! address registers (6.2.5.1); mechanism #1 is its section 3.2.2.3.2.
//!
//! Hardware access goes through [`ConfigSpace`], so the scan and the
//! decoding are tested over a fake configuration space.

use alloc::vec::Vec;
use core::fmt;

use crate::arch;

/// Where a function sits on the PCI buses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    /// Bus number, 0..=255.
    pub bus: u8,
    /// Device number, 0..=31.
    pub dev: u8,
    /// Function number, 0..=7.
    pub func: u8,
}

impl fmt::Display for PciAddress {
    /// The `bus:dev.func` form that `lspci` prints (`00:1f.2`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// Reads and writes the 256-byte configuration space of a function, one
/// aligned dword at a time.
pub trait ConfigSpace {
    /// The dword at `offset` (rounded down to a multiple of 4). A function
    /// that does not exist reads as all ones.
    fn read32(&mut self, at: PciAddress, offset: u8) -> u32;

    /// Writes the dword at `offset` (rounded down to a multiple of 4).
    fn write32(&mut self, at: PciAddress, offset: u8, value: u32);
}

/// Configuration mechanism #1 (PCI 3.0 section 3.2.2.3.2): the address of
/// the dword goes to CONFIG_ADDRESS (0xCF8), the data moves through
/// CONFIG_DATA (0xCFC).
///
/// Only one agent may use these ports at a time: the boot CPU enumerates
/// before any other CPU or guest runs, and guests never reach them (every
/// port exits).
pub struct PortConfigSpace;

/// CONFIG_ADDRESS.
const CONFIG_ADDRESS: u16 = 0xCF8;
/// CONFIG_DATA.
const CONFIG_DATA: u16 = 0xCFC;

/// The CONFIG_ADDRESS value for a dword: the enable bit (31), bus (23:16),
/// device (15:11), function (10:8) and register (7:2).
fn config_address(at: PciAddress, offset: u8) -> u32 {
    0x8000_0000
        | u32::from(at.bus) << 16
        | u32::from(at.dev & 0x1F) << 11
        | u32::from(at.func & 0x07) << 8
        | u32::from(offset & 0xFC)
}

impl ConfigSpace for PortConfigSpace {
    fn read32(&mut self, at: PciAddress, offset: u8) -> u32 {
        // SAFETY: 0xCF8/0xCFC are the host bridge's configuration ports,
        // which only this driver uses, on one CPU; reading a configuration
        // dword has no side effect on the functions the disk drivers probe
        // (none of them has read-to-clear configuration registers).
        unsafe {
            arch::outl(CONFIG_ADDRESS, config_address(at, offset));
            arch::inl(CONFIG_DATA)
        }
    }

    fn write32(&mut self, at: PciAddress, offset: u8, value: u32) {
        // SAFETY: as for `read32`; the callers only write the command
        // register of the storage controllers they are about to drive.
        unsafe {
            arch::outl(CONFIG_ADDRESS, config_address(at, offset));
            arch::outl(CONFIG_DATA, value);
        }
    }
}

/// Configuration header offsets (PCI 3.0 figure 6-1).
mod reg {
    /// Vendor ID (15:0) and device ID (31:16).
    pub const ID: u8 = 0x00;
    /// Command (15:0) and status (31:16).
    pub const COMMAND: u8 = 0x04;
    /// Revision (7:0), programming interface (15:8), subclass (23:16),
    /// class (31:24).
    pub const CLASS: u8 = 0x08;
    /// Cache line size, latency timer, header type (23:16), BIST.
    pub const HEADER: u8 = 0x0C;
    /// The first base address register.
    pub const BAR0: u8 = 0x10;
}

/// Header type bit 7: the device has functions 1..=7 (PCI 3.0 6.2.1).
const MULTI_FUNCTION: u8 = 0x80;

/// Command register bits (PCI 3.0 6.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub u16);

impl Command {
    /// Bit 0: the function answers I/O-space accesses to its BARs.
    pub const IO_SPACE: Self = Self(1 << 0);
    /// Bit 1: the function answers memory-space accesses to its BARs.
    pub const MEMORY_SPACE: Self = Self(1 << 1);
    /// Bit 2: the function may master the bus (needed for DMA).
    pub const BUS_MASTER: Self = Self(1 << 2);
    /// Bit 10: the function may not assert INTx (the drivers poll).
    pub const INTX_DISABLE: Self = Self(1 << 10);

    /// Both sets of bits.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// One decoded base address register (PCI 3.0 6.2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented (reads as zero), or the upper half of a 64-bit BAR.
    None,
    /// An I/O-space window starting at `port`.
    Io {
        /// The first port (bits 31:2 of the BAR; x86 ports are 16-bit, so a
        /// base above 0xFFFF cannot be used and reads as `None` instead).
        port: u16,
    },
    /// A memory-space window starting at `addr`.
    Memory {
        /// The physical base address.
        addr: u64,
        /// Whether reads have no side effects (bit 3).
        prefetchable: bool,
        /// Whether the BAR is 64-bit and used the next slot too.
        wide: bool,
    },
}

impl Bar {
    /// The I/O port base, if this is an I/O BAR.
    pub fn io_port(self) -> Option<u16> {
        match self {
            Self::Io { port } => Some(port),
            _ => None,
        }
    }

    /// The memory base, if this is a memory BAR.
    pub fn memory_addr(self) -> Option<u64> {
        match self {
            Self::Memory { addr, .. } => Some(addr),
            _ => None,
        }
    }
}

/// Decodes the raw values of a function's base address registers. A 64-bit
/// memory BAR takes the next slot as its upper half, which becomes
/// [`Bar::None`]; a 64-bit BAR in the last slot has no upper half and is
/// taken as 32-bit.
pub fn decode_bars(raw: &[u32]) -> [Bar; 6] {
    let mut bars = [Bar::None; 6];
    let mut i = 0;
    while let (Some(&value), Some(slot)) = (raw.get(i), bars.get_mut(i)) {
        i += 1;
        if value & 1 == 1 {
            // I/O BAR: bit 1 is reserved, bits 31:2 the base.
            *slot = match u16::try_from(value & !0x3) {
                Ok(0) | Err(_) => Bar::None,
                Ok(port) => Bar::Io { port },
            };
            continue;
        }
        // Memory BAR: type in bits 2:1 (00 32-bit, 10 64-bit), bit 3
        // prefetchable, bits 31:4 the base.
        let prefetchable = value & 0x8 != 0;
        let low = u64::from(value & !0xF);
        let (addr, wide) = if (value >> 1) & 0x3 == 0x2 {
            match raw.get(i) {
                Some(&high) => {
                    // The upper half stays `Bar::None`.
                    i += 1;
                    (u64::from(high) << 32 | low, true)
                }
                None => (low, false),
            }
        } else {
            (low, false)
        };
        if addr != 0 {
            *slot = Bar::Memory {
                addr,
                prefetchable,
                wide,
            };
        }
    }
    bars
}

/// A function found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Bus number.
    pub bus: u8,
    /// Device number.
    pub dev: u8,
    /// Function number.
    pub func: u8,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Base class (0x01: mass storage).
    pub class: u8,
    /// Subclass (with class 0x01: 0x01 IDE, 0x06 SATA).
    pub subclass: u8,
    /// Programming interface (with 01/06: 0x01 AHCI).
    pub prog_if: u8,
    /// The decoded BARs; a bridge (header type 1) has only the first two,
    /// a CardBus bridge (type 2) none.
    pub bars: [Bar; 6],
}

impl PciDevice {
    /// The function's address.
    pub fn address(&self) -> PciAddress {
        PciAddress {
            bus: self.bus,
            dev: self.dev,
            func: self.func,
        }
    }

    /// What a storage controller is, in words; `None` for anything that is
    /// not a mass-storage controller (class 0x01).
    pub fn storage_kind(&self) -> Option<&'static str> {
        if self.class != class::MASS_STORAGE {
            return None;
        }
        Some(match (self.subclass, self.prog_if) {
            (class::IDE, _) => "IDE controller",
            (class::SATA, class::AHCI) => "AHCI controller",
            (class::SATA, _) => "SATA controller (not AHCI)",
            (0x00, _) => "SCSI controller",
            (0x04, _) => "RAID controller",
            (0x08, 0x02) => "NVMe controller",
            (0x08, _) => "non-volatile memory controller",
            _ => "mass-storage controller",
        })
    }

    /// Whether this is an IDE controller (01/01).
    pub fn is_ide(&self) -> bool {
        self.class == class::MASS_STORAGE && self.subclass == class::IDE
    }

    /// Whether this is an AHCI SATA controller (01/06/01).
    pub fn is_ahci(&self) -> bool {
        self.class == class::MASS_STORAGE
            && self.subclass == class::SATA
            && self.prog_if == class::AHCI
    }
}

impl fmt::Display for PciDevice {
    /// `00:1f.2 8086:2922`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x}",
            self.address(),
            self.vendor,
            self.device
        )
    }
}

/// Class codes (PCI Code and ID Assignment Specification, class 01h).
pub mod class {
    /// Mass-storage controller.
    pub const MASS_STORAGE: u8 = 0x01;
    /// Subclass 01h: IDE controller.
    pub const IDE: u8 = 0x01;
    /// Subclass 06h: Serial ATA controller.
    pub const SATA: u8 = 0x06;
    /// With subclass 06h: AHCI 1.0 programming interface.
    pub const AHCI: u8 = 0x01;
}

/// Reads function `at`, or `None` when nothing answers there.
fn probe(cfg: &mut dyn ConfigSpace, at: PciAddress) -> Option<(PciDevice, u8)> {
    let id = cfg.read32(at, reg::ID);
    let vendor = (id & 0xFFFF) as u16;
    // An absent function reads as all ones (the host bridge's master
    // abort); 0x0000 is no valid vendor either.
    if vendor == 0xFFFF || vendor == 0 {
        return None;
    }
    let class_reg = cfg.read32(at, reg::CLASS);
    let header_type = (cfg.read32(at, reg::HEADER) >> 16) as u8;
    // Header type 0 has six BARs, type 1 (PCI-to-PCI bridge) two, type 2
    // (CardBus bridge) none that this driver uses.
    let bar_count: u8 = match header_type & 0x7F {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let raw: Vec<u32> = (0..bar_count)
        .map(|i| cfg.read32(at, reg::BAR0 + 4 * i))
        .collect();
    let device = PciDevice {
        bus: at.bus,
        dev: at.dev,
        func: at.func,
        vendor,
        device: (id >> 16) as u16,
        class: (class_reg >> 24) as u8,
        subclass: (class_reg >> 16) as u8,
        prog_if: (class_reg >> 8) as u8,
        bars: decode_bars(&raw),
    };
    Some((device, header_type))
}

/// Every function on every bus: buses 0..=255, devices 0..=31, and
/// functions 1..=7 only where function 0 says it is multi-function. The
/// brute-force scan needs no knowledge of the bridges (they forward
/// configuration cycles for the buses the firmware numbered).
pub fn scan(cfg: &mut dyn ConfigSpace) -> Vec<PciDevice> {
    let mut found = Vec::new();
    for bus in 0..=255u8 {
        for dev in 0..32u8 {
            let at = PciAddress { bus, dev, func: 0 };
            let Some((first, header_type)) = probe(cfg, at) else {
                continue;
            };
            found.push(first);
            if header_type & MULTI_FUNCTION == 0 {
                continue;
            }
            for func in 1..8u8 {
                if let Some((device, _)) = probe(cfg, PciAddress { bus, dev, func }) {
                    found.push(device);
                }
            }
        }
    }
    found
}

/// Sets `bits` in the function's command register and returns the new
/// value. The status half of the dword is written as zero: its bits are
/// write-one-to-clear, so zero leaves them alone.
pub fn enable(cfg: &mut dyn ConfigSpace, at: PciAddress, bits: Command) -> Command {
    let old = cfg.read32(at, reg::COMMAND) as u16;
    let new = old | bits.0;
    if new != old {
        cfg.write32(at, reg::COMMAND, u32::from(new));
    }
    Command(cfg.read32(at, reg::COMMAND) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::{String, ToString};
    use alloc::vec;

    /// A configuration space holding a few functions' headers; everything
    /// else reads as all ones, as on real buses.
    #[derive(Default)]
    struct FakeConfig {
        functions: BTreeMap<PciAddress, [u32; 64]>,
        reads: usize,
        writes: Vec<(PciAddress, u8, u32)>,
    }

    impl FakeConfig {
        fn add(&mut self, at: PciAddress, id: u32, class: u32, header: u8, bars: &[u32]) {
            let mut space = [0u32; 64];
            space[0] = id;
            space[1] = 0x0290_0000; // status bits set (RW1C), command 0
            space[2] = class;
            space[3] = u32::from(header) << 16;
            for (i, &bar) in bars.iter().enumerate() {
                space[4 + i] = bar;
            }
            self.functions.insert(at, space);
        }
    }

    impl ConfigSpace for FakeConfig {
        fn read32(&mut self, at: PciAddress, offset: u8) -> u32 {
            self.reads += 1;
            self.functions
                .get(&at)
                .map_or(u32::MAX, |space| space[usize::from(offset / 4)])
        }

        fn write32(&mut self, at: PciAddress, offset: u8, value: u32) {
            self.writes.push((at, offset, value));
            if let Some(space) = self.functions.get_mut(&at) {
                let slot = &mut space[usize::from(offset / 4)];
                if offset == reg::COMMAND {
                    // Status bits are write-one-to-clear.
                    let status = (*slot >> 16) & !(value >> 16);
                    *slot = status << 16 | (value & 0xFFFF);
                } else {
                    *slot = value;
                }
            }
        }
    }

    fn at(bus: u8, dev: u8, func: u8) -> PciAddress {
        PciAddress { bus, dev, func }
    }

    #[test]
    fn addresses_print_like_lspci() {
        assert_eq!(at(0, 0x1f, 2).to_string(), "00:1f.2");
        assert_eq!(at(0xab, 3, 7).to_string(), "ab:03.7");
    }

    #[test]
    fn mechanism_one_address_layout() {
        assert_eq!(config_address(at(0, 0x1f, 2), 0x24), 0x8000_FA24);
        assert_eq!(config_address(at(0xff, 0, 0), 0x0F), 0x80FF_000C);
        assert_eq!(config_address(at(1, 2, 3), 0), 0x8001_1300);
    }

    #[test]
    fn bars_decode_io_memory_and_64_bit_pairs() {
        let raw = [
            0x0000_C001, // I/O at 0xC000
            0xFEBF_1000, // 32-bit memory, not prefetchable
            0xE000_000C, // 64-bit prefetchable, low half
            0x0000_0001, // high half: 0x1_E000_0000
            0x0000_0000, // unimplemented
            0xFEBD_5000, // 32-bit memory (the ABAR slot)
        ];
        assert_eq!(
            decode_bars(&raw),
            [
                Bar::Io { port: 0xC000 },
                Bar::Memory {
                    addr: 0xFEBF_1000,
                    prefetchable: false,
                    wide: false
                },
                Bar::Memory {
                    addr: 0x1_E000_0000,
                    prefetchable: true,
                    wide: true
                },
                Bar::None,
                Bar::None,
                Bar::Memory {
                    addr: 0xFEBD_5000,
                    prefetchable: false,
                    wide: false
                },
            ]
        );
    }

    #[test]
    fn a_64_bit_bar_in_the_last_slot_and_odd_io_values() {
        let mut raw = [0u32; 6];
        raw[5] = 0x8000_0004; // 64-bit type with no upper slot left
        raw[0] = 0x0001_0001; // I/O base above 0xFFFF: unusable
        raw[1] = 0x0000_0001; // I/O base 0: unassigned
        let bars = decode_bars(&raw);
        assert_eq!(bars[0], Bar::None);
        assert_eq!(bars[1], Bar::None);
        assert_eq!(bars[5].memory_addr(), Some(0x8000_0000));
        assert_eq!(bars[5].io_port(), None);
        // Fewer than six raw values (a bridge) leave the rest empty.
        assert_eq!(decode_bars(&[0x1F1])[0].io_port(), Some(0x1F0));
        assert_eq!(decode_bars(&[0x1F1])[1], Bar::None);
    }

    #[test]
    fn scan_finds_functions_only_where_function_0_is_multi_function() {
        let mut cfg = FakeConfig::default();
        // Host bridge, single-function.
        cfg.add(at(0, 0, 0), 0x29C0_8086, 0x0600_0000, 0x00, &[]);
        // A single-function device whose function 3 decodes anyway (some
        // devices alias): must not be reported.
        cfg.add(at(0, 2, 0), 0x1111_1234, 0x0300_0000, 0x00, &[]);
        cfg.add(at(0, 2, 3), 0x2222_1234, 0x0300_0000, 0x00, &[]);
        // ICH9: LPC at function 0 (multi-function), AHCI at function 2.
        cfg.add(at(0, 0x1f, 0), 0x2918_8086, 0x0601_0000, 0x80, &[]);
        cfg.add(
            at(0, 0x1f, 2),
            0x2922_8086,
            0x0106_0102,
            0x00,
            &[0xC041, 0xC061, 0xC081, 0xC0A1, 0xC021, 0xFEBD_5000],
        );
        // A bridge behind which bus 3 holds an IDE controller.
        cfg.add(at(0, 0x1e, 0), 0x244E_8086, 0x0604_0000, 0x01, &[0, 0]);
        cfg.add(at(3, 5, 0), 0x7010_8086, 0x0101_8000, 0x00, &[]);

        let found = scan(&mut cfg);
        let names: Vec<String> = found.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            names,
            [
                "00:00.0 8086:29c0",
                "00:02.0 1234:1111",
                "00:1e.0 8086:244e",
                "00:1f.0 8086:2918",
                "00:1f.2 8086:2922",
                "03:05.0 8086:7010",
            ]
        );
        let ahci = &found[4];
        assert!(ahci.is_ahci() && !ahci.is_ide());
        assert_eq!(ahci.storage_kind(), Some("AHCI controller"));
        assert_eq!(ahci.bars[5].memory_addr(), Some(0xFEBD_5000));
        assert_eq!(ahci.bars[0].io_port(), Some(0xC040));
        let ide = &found[5];
        assert!(ide.is_ide());
        assert_eq!((ide.class, ide.subclass, ide.prog_if), (1, 1, 0x80));
        assert_eq!(ide.storage_kind(), Some("IDE controller"));
        assert_eq!(found[0].storage_kind(), None);
        // 256 buses x 32 devices probed at function 0, plus the seven
        // extra functions of the one multi-function device.
        assert!(cfg.reads >= 256 * 32 + 7);
    }

    #[test]
    fn enabling_sets_command_bits_without_clearing_status() {
        let mut cfg = FakeConfig::default();
        let ahci = at(0, 0x1f, 2);
        cfg.add(ahci, 0x2922_8086, 0x0106_0100, 0, &[]);
        cfg.functions.get_mut(&ahci).unwrap()[1] |= 0x0001; // I/O on
        let bits = Command::MEMORY_SPACE.union(Command::BUS_MASTER);
        let now = enable(&mut cfg, ahci, bits);
        assert_eq!(now, Command(0x0007));
        assert_eq!(cfg.functions[&ahci][1], 0x0290_0007);
        assert_eq!(cfg.writes, vec![(ahci, reg::COMMAND, 0x0000_0007)]);
        // Already set: nothing written.
        enable(&mut cfg, ahci, Command::BUS_MASTER);
        assert_eq!(cfg.writes.len(), 1);
    }
}
