//! The GUID partition table: reading and checking the protective MBR, the
//! GPT header and its partition entry array, falling back to the backup
//! copy at the disk's last sector when the primary one is damaged, and
//! finding a partition by type GUID or name (Ferrovisor's config
//! partition in particular).
//!
//! Layout and checks follow the UEFI Specification 2.10, section 5
//! ("GUID Partition Table (GPT) Disk Layout"): 5.2.3 (protective MBR),
//! 5.3.2 (GPT header, and "the following test must be performed to
//! determine if a GPT is valid") and 5.3.3 (partition entry). The CRC32
//! is the one the spec names in appendix F: IEEE 802.3, reflected, as in
//! zlib (`crc::CRC_32_ISO_HDLC`).
//!
//! Read-only: a damaged primary is reported (see [`Gpt::primary_problem`])
//! but never repaired.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::block::{read_sectors, sector_bytes, BlockDevice, DiskError, MAX_READ_BYTES};

/// The GPT's CRC32 (UEFI 2.10 appendix F: IEEE 802.3 polynomial
/// 0x04C11DB7, reflected, initial value and final XOR all ones).
pub(crate) const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The most partition entries accepted. Tools write 128; the spec sets no
/// bound, but this one keeps a damaged header from sending the reader
/// through megabytes of entries.
pub const MAX_ENTRIES: u32 = 1024;

/// The largest partition entry accepted, in bytes. The spec allows
/// `128 * 2^n`; every tool writes 128.
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// The smallest GPT header (UEFI 2.10 table 5.5: 92 bytes of fields).
pub const MIN_HEADER_SIZE: u32 = 92;

/// `"EFI PART"`, the header signature.
const SIGNATURE: [u8; 8] = *b"EFI PART";

/// The MBR partition type of the one partition a protective MBR holds
/// (UEFI 2.10 table 5.4, "GPT Protective").
const PROTECTIVE_TYPE: u8 = 0xEE;

/// Offsets in the GPT header (UEFI 2.10 table 5.5).
mod header {
    use core::ops::Range;

    /// `"EFI PART"`.
    pub const SIGNATURE: Range<usize> = 0..8;
    /// Revision, 0x0001_0000 for 1.0.
    pub const REVISION: Range<usize> = 8..12;
    /// Header size in bytes.
    pub const HEADER_SIZE: Range<usize> = 12..16;
    /// CRC32 of the header, computed with this field zero.
    pub const HEADER_CRC: Range<usize> = 16..20;
    /// This header's own LBA.
    pub const MY_LBA: Range<usize> = 24..32;
    /// First LBA a partition may use.
    pub const FIRST_USABLE: Range<usize> = 40..48;
    /// Last LBA a partition may use.
    pub const LAST_USABLE: Range<usize> = 48..56;
    /// The disk's GUID.
    pub const DISK_GUID: Range<usize> = 56..72;
    /// First LBA of the partition entry array.
    pub const ENTRY_LBA: Range<usize> = 72..80;
    /// Number of entries in the array.
    pub const ENTRY_COUNT: Range<usize> = 80..84;
    /// Bytes per entry.
    pub const ENTRY_SIZE: Range<usize> = 84..88;
    /// CRC32 of the entry array.
    pub const ENTRY_CRC: Range<usize> = 88..92;
}

/// Offsets in a partition entry (UEFI 2.10 table 5.6).
mod entry {
    use core::ops::Range;

    /// Partition type GUID; all zero for an unused entry.
    pub const TYPE_GUID: Range<usize> = 0..16;
    /// The partition's own GUID.
    pub const UNIQUE_GUID: Range<usize> = 16..32;
    /// First LBA.
    pub const FIRST_LBA: Range<usize> = 32..40;
    /// Last LBA, inclusive.
    pub const LAST_LBA: Range<usize> = 40..48;
    /// Attribute bits.
    pub const ATTRIBUTES: Range<usize> = 48..56;
    /// Name: 36 UTF-16LE code units, NUL-terminated unless full.
    pub const NAME: Range<usize> = 56..128;
}

/// A GUID as it lies on disk: the first three fields little-endian, the
/// last eight bytes in order (UEFI 2.10 appendix A, "EFI_GUID").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The all-zero GUID, the type of an unused partition entry.
    pub const ZERO: Self = Self([0; 16]);

    /// The GUID written `d1-d2-d3-d4[0..2]-d4[2..8]` in text.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The GUID whose on-disk bytes are `bytes`.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The on-disk bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// Whether this is the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl fmt::Display for Guid {
    /// The registry form, lower case: `c12a7328-f81f-11d2-ba4b-00a0c93ec93b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

/// The partition type of Ferrovisor's config partition,
/// `43512ee0-5019-4c06-ace2-4e748860ee00`: a random GUID generated for
/// Ferrovisor alone, the one `xtask::disk` writes for the shipped disk
/// (its `CONFIG_PARTITION_TYPE`; the two are copies and must stay equal).
/// The partition holds a FAT file system with `hypervisor.toml` and the
/// guest images; its GPT *name* is [`CONFIG_PARTITION_NAME`], and
/// [`Gpt::config_partition`] finds it by this type first and by that name
/// only when no partition has the type.
///
/// With `sgdisk`: `--typecode=N:43512ee0-5019-4c06-ace2-4e748860ee00
/// --change-name=N:FERROCFG`.
pub const CONFIG_PARTITION_TYPE: Guid = Guid::from_fields(
    0x4351_2ee0,
    0x5019,
    0x4c06,
    [0xac, 0xe2, 0x4e, 0x74, 0x88, 0x60, 0xee, 0x00],
);

/// The GPT partition name of Ferrovisor's config partition; its type is
/// [`CONFIG_PARTITION_TYPE`].
pub const CONFIG_PARTITION_NAME: &str = "FERROCFG";

/// EFI system partition, `c12a7328-f81f-11d2-ba4b-00a0c93ec93b` (UEFI 2.10
/// table 5.7).
pub const EFI_SYSTEM_PARTITION: Guid = Guid::from_fields(
    0xc12a_7328,
    0xf81f,
    0x11d2,
    [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b],
);

/// Microsoft basic data, `ebd0a0a2-b9e5-4433-87c0-68b6b72699c7`: the type
/// most tools give a FAT partition.
pub const BASIC_DATA_PARTITION: Guid = Guid::from_fields(
    0xebd0_a0a2,
    0xb9e5,
    0x4433,
    [0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7],
);

/// One used entry of the partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The entry's index in the array, from 0 (tools number from 1).
    pub index: u32,
    /// What the partition holds.
    pub type_guid: Guid,
    /// The partition's own GUID.
    pub unique_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector, inclusive; at least `first_lba`.
    pub last_lba: u64,
    /// Attribute bits (UEFI 2.10 table 5.8).
    pub attributes: u64,
    /// The name, decoded from UTF-16LE (unpaired surrogates become
    /// U+FFFD).
    pub name: String,
}

impl Partition {
    /// The number of sectors.
    pub const fn sectors(&self) -> u64 {
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
    }
}

/// What is wrong with one GPT header or the entry array it describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableProblem {
    /// The sector does not start with `"EFI PART"`.
    Signature([u8; 8]),
    /// The revision's major number is not 1.
    Revision(u32),
    /// The header size is below 92 bytes or above the sector size.
    HeaderSize {
        /// The size the header gives.
        size: u32,
        /// The disk's sector size.
        sector_size: u32,
    },
    /// The header's CRC32 does not match its bytes.
    HeaderCrc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the header's bytes.
        computed: u32,
    },
    /// The header's own-LBA field is not where it was read from.
    MyLba {
        /// The LBA in the field.
        found: u64,
    },
    /// The usable range is empty, runs past the disk, or covers LBA 0, 1
    /// or the last LBA (where the MBR and the headers lie).
    UsableRange {
        /// First usable LBA.
        first: u64,
        /// Last usable LBA.
        last: u64,
        /// The disk's size in sectors.
        sectors: u64,
    },
    /// The entry size is not 128 times a power of two, at most 4096.
    EntrySize(u32),
    /// More than [`MAX_ENTRIES`] entries.
    EntryCount(u32),
    /// The entry array runs past the disk or overlaps the MBR, this
    /// header or the usable range.
    EntryArray {
        /// First LBA of the array.
        lba: u64,
        /// Its length in sectors.
        sectors: u64,
    },
    /// The entry array's CRC32 does not match its bytes.
    EntryArrayCrc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the array's bytes.
        computed: u32,
    },
    /// A used entry's last LBA is before its first.
    EntryBackwards {
        /// The entry's index.
        index: u32,
        /// Its first LBA.
        first: u64,
        /// Its last LBA.
        last: u64,
    },
    /// A used entry lies outside the usable range.
    EntryOutsideUsable {
        /// The entry's index.
        index: u32,
        /// Its first LBA.
        first: u64,
        /// Its last LBA.
        last: u64,
    },
    /// Two used entries share sectors.
    EntriesOverlap {
        /// One entry's index.
        index: u32,
        /// The other's.
        other: u32,
    },
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signature(found) => write!(
                f,
                "signature \"{}\" is not \"EFI PART\"",
                found.escape_ascii()
            ),
            Self::Revision(r) => write!(f, "revision {r:#010x} is not 1.x"),
            Self::HeaderSize { size, sector_size } => write!(
                f,
                "header size {size} is not from {MIN_HEADER_SIZE} to the sector size {sector_size}"
            ),
            Self::HeaderCrc { stored, computed } => write!(
                f,
                "header CRC32 {stored:#010x} does not match {computed:#010x}, the CRC of the header"
            ),
            Self::MyLba { found } => write!(f, "header says it lies at LBA {found}"),
            Self::UsableRange {
                first,
                last,
                sectors,
            } => write!(
                f,
                "usable LBAs {first}..={last} are empty or do not fit between the headers \
                 of a {sectors}-sector disk"
            ),
            Self::EntrySize(size) => write!(
                f,
                "partition entry size {size} is not 128 times a power of two up to {MAX_ENTRY_SIZE}"
            ),
            Self::EntryCount(count) => write!(
                f,
                "{count} partition entries are more than the {MAX_ENTRIES} accepted"
            ),
            Self::EntryArray { lba, sectors } => write!(
                f,
                "partition entry array at LBA {lba} ({sectors} sectors) runs past the disk \
                 or overlaps the MBR, a header or the usable LBAs"
            ),
            Self::EntryArrayCrc { stored, computed } => write!(
                f,
                "partition entry array CRC32 {stored:#010x} does not match {computed:#010x}, \
                 the CRC of the entries"
            ),
            Self::EntryBackwards { index, first, last } => write!(
                f,
                "partition {index} ends at LBA {last}, before its start at LBA {first}"
            ),
            Self::EntryOutsideUsable { index, first, last } => write!(
                f,
                "partition {index} (LBA {first}..={last}) lies outside the usable LBAs"
            ),
            Self::EntriesOverlap { index, other } => {
                write!(f, "partitions {index} and {other} overlap")
            }
        }
    }
}

/// One header's problem and where that header was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    /// The LBA the header was read from (1 for the primary).
    pub lba: u64,
    /// What is wrong.
    pub problem: TableProblem,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GPT header at LBA {}: {}", self.lba, self.problem)
    }
}

/// Why a disk's partition table cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GptError {
    /// Neither a protective MBR at LBA 0 nor a GPT signature at LBA 1:
    /// the disk is not partitioned with GPT (it may be blank).
    NotGpt,
    /// LBA 1 holds a GPT header but LBA 0 is not a protective MBR.
    ProtectiveMbr {
        /// What is missing.
        problem: &'static str,
    },
    /// The disk is too small for a GPT (a header each at LBA 1 and the
    /// last LBA, and something between).
    TooSmall {
        /// Its size in sectors.
        sectors: u64,
    },
    /// Both the primary and the backup header (or their arrays) are bad.
    Corrupt {
        /// The primary's problem.
        primary: TableError,
        /// The backup's problem.
        backup: TableError,
    },
    /// Two partitions qualify as the config partition.
    AmbiguousConfig {
        /// The first one's index.
        first: u32,
        /// The second one's index.
        second: u32,
        /// `"type"` or `"name"`: how they qualified.
        by: &'static str,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGpt => f.write_str(
                "no GUID partition table: LBA 0 is not a protective MBR and LBA 1 has no \
                 GPT header",
            ),
            Self::ProtectiveMbr { problem } => write!(
                f,
                "LBA 1 has a GPT header but LBA 0 is not a protective MBR: {problem}"
            ),
            Self::TooSmall { sectors } => {
                write!(f, "a disk of {sectors} sectors is too small for a GPT")
            }
            Self::Corrupt { primary, backup } => write!(
                f,
                "both GPT copies are damaged: primary: {primary}; backup: {backup}"
            ),
            Self::AmbiguousConfig { first, second, by } => write!(
                f,
                "partitions {first} and {second} both have the config partition's {by} \
                 ({CONFIG_PARTITION_NAME}, {CONFIG_PARTITION_TYPE}); keep one"
            ),
        }
    }
}

/// A checked partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// The disk's GUID.
    pub disk_guid: Guid,
    /// The LBA of the header in use: 1, or the last LBA when the backup
    /// was used.
    pub header_lba: u64,
    /// First LBA a partition may use.
    pub first_usable_lba: u64,
    /// Last LBA a partition may use.
    pub last_usable_lba: u64,
    /// The used entries, in array order.
    pub partitions: Vec<Partition>,
    /// Why the primary was not used, when the backup was.
    primary_problem: Option<TableError>,
}

impl Gpt {
    /// Reads and checks the protective MBR and the primary GPT (header at
    /// LBA 1 and its entry array); if the primary is damaged, reads and
    /// checks the backup (header at the last LBA) instead, and keeps the
    /// primary's problem for [`Gpt::primary_problem`].
    ///
    /// # Errors
    ///
    /// A [`DiskError`] from the device, or [`DiskError::Gpt`] with
    /// [`GptError::NotGpt`] (no GPT at all), [`GptError::ProtectiveMbr`],
    /// [`GptError::TooSmall`] or [`GptError::Corrupt`] (both copies bad,
    /// each problem named).
    pub fn read(dev: &mut dyn BlockDevice) -> Result<Self, DiskError> {
        let size = sector_bytes(dev)?;
        let sectors = dev.sectors();
        if sectors < 2 {
            return Err(GptError::NotGpt.into());
        }
        let mbr = read_sectors(dev, 0, 1)?;
        let primary = read_sectors(dev, 1, 1)?;
        let has_signature = primary.get(header::SIGNATURE) == Some(&SIGNATURE[..]);
        match protective_mbr_problem(&mbr) {
            None => {}
            Some(_) if !has_signature => return Err(GptError::NotGpt.into()),
            Some(problem) => return Err(GptError::ProtectiveMbr { problem }.into()),
        }
        // LBA 0, both headers, and at least one sector of entries each.
        if sectors < 5 {
            return Err(GptError::TooSmall { sectors }.into());
        }
        let primary = match read_table(dev, 1, &primary, size, sectors)? {
            Ok(gpt) => return Ok(gpt),
            Err(problem) => TableError { lba: 1, problem },
        };
        let last = sectors - 1;
        let backup = read_sectors(dev, last, 1)?;
        match read_table(dev, last, &backup, size, sectors)? {
            Ok(mut gpt) => {
                gpt.primary_problem = Some(primary);
                Ok(gpt)
            }
            Err(problem) => Err(GptError::Corrupt {
                primary,
                backup: TableError { lba: last, problem },
            }
            .into()),
        }
    }

    /// Why the primary GPT was not used, when the table came from the
    /// backup; the caller should warn, since firmware and tools may see
    /// a different table until the primary is repaired.
    pub fn primary_problem(&self) -> Option<&TableError> {
        self.primary_problem.as_ref()
    }

    /// The first partition with type `type_guid` (when given) and name
    /// `name` (when given, compared exactly).
    pub fn find(&self, type_guid: Option<Guid>, name: Option<&str>) -> Option<&Partition> {
        self.partitions.iter().find(|p| {
            type_guid.is_none_or(|t| p.type_guid == t) && name.is_none_or(|n| p.name == n)
        })
    }

    /// Ferrovisor's config partition: the partition of type
    /// [`CONFIG_PARTITION_TYPE`]; when none has it, the partition named
    /// [`CONFIG_PARTITION_NAME`] (of any type, so that a partition made
    /// with a tool's default FAT type is still found).
    ///
    /// # Errors
    ///
    /// [`GptError::AmbiguousConfig`] when two partitions have the type,
    /// or none has it and two have the name: picking one would be a
    /// guess.
    pub fn config_partition(&self) -> Result<Option<&Partition>, GptError> {
        let typed: Vec<&Partition> = self
            .partitions
            .iter()
            .filter(|p| p.type_guid == CONFIG_PARTITION_TYPE)
            .collect();
        let (found, by) = if typed.is_empty() {
            let named = self
                .partitions
                .iter()
                .filter(|p| p.name == CONFIG_PARTITION_NAME)
                .collect();
            (named, "name")
        } else {
            (typed, "type")
        };
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            [a, b, ..] => Err(GptError::AmbiguousConfig {
                first: a.index,
                second: b.index,
                by,
            }),
        }
    }
}

/// What keeps `mbr` from being a protective MBR, if anything (UEFI 2.10
/// 5.2.3: boot signature 0xAA55, a partition record of type 0xEE). A
/// hybrid MBR, which also lists other partitions, is accepted.
fn protective_mbr_problem(mbr: &[u8]) -> Option<&'static str> {
    if mbr.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Some("no 0x55 0xAA boot signature");
    }
    // Four 16-byte partition records from offset 446; the type is byte 4.
    let protective = (0..4).any(|i| mbr.get(446 + 16 * i + 4) == Some(&PROTECTIVE_TYPE));
    if protective {
        None
    } else {
        Some("no partition of type 0xEE")
    }
}

/// A little-endian field of `bytes`, zero when out of range (the callers
/// check the header's length first).
fn le_u32(bytes: &[u8], range: core::ops::Range<usize>) -> u32 {
    bytes
        .get(range)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

/// See [`le_u32`].
fn le_u64(bytes: &[u8], range: core::ops::Range<usize>) -> u64 {
    bytes
        .get(range)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// See [`le_u32`].
fn guid_at(bytes: &[u8], range: core::ops::Range<usize>) -> Guid {
    bytes
        .get(range)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map_or(Guid::ZERO, Guid)
}

/// Checks the header in `sector` (read from `lba`) and the entry array
/// it points to. The outer error is the device's; the inner one says
/// what is wrong with this copy of the table.
fn read_table(
    dev: &mut dyn BlockDevice,
    lba: u64,
    sector: &[u8],
    sector_size: usize,
    sectors: u64,
) -> Result<Result<Gpt, TableProblem>, DiskError> {
    let checked = match check_header(lba, sector, sector_size, sectors) {
        Ok(h) => h,
        Err(problem) => return Ok(Err(problem)),
    };
    let (partitions, computed) = match read_entries(dev, &checked, sector_size)? {
        Some(read) => read,
        None => {
            return Ok(Err(TableProblem::EntrySize(checked.entry_size)));
        }
    };
    if computed != checked.entry_crc {
        return Ok(Err(TableProblem::EntryArrayCrc {
            stored: checked.entry_crc,
            computed,
        }));
    }
    if let Err(problem) = check_entries(&partitions, &checked) {
        return Ok(Err(problem));
    }
    Ok(Ok(Gpt {
        disk_guid: checked.disk_guid,
        header_lba: lba,
        first_usable_lba: checked.first_usable,
        last_usable_lba: checked.last_usable,
        partitions,
        primary_problem: None,
    }))
}

/// A header's fields after [`check_header`].
struct Header {
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entry_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entry_crc: u32,
}

/// The checks of UEFI 2.10 5.3.2 on one header, read from `lba` of a disk
/// of `sectors` sectors, except the entry array's CRC.
fn check_header(
    lba: u64,
    sector: &[u8],
    sector_size: usize,
    sectors: u64,
) -> Result<Header, TableProblem> {
    let signature = sector
        .get(header::SIGNATURE)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .unwrap_or_default();
    if signature != SIGNATURE {
        return Err(TableProblem::Signature(signature));
    }
    let revision = le_u32(sector, header::REVISION);
    if revision >> 16 != 1 {
        return Err(TableProblem::Revision(revision));
    }
    let header_size = le_u32(sector, header::HEADER_SIZE);
    let sector_size_u32 = u32::try_from(sector_size).unwrap_or(u32::MAX);
    let bytes = usize::try_from(header_size)
        .ok()
        .filter(|_| (MIN_HEADER_SIZE..=sector_size_u32).contains(&header_size))
        .and_then(|len| sector.get(..len))
        .ok_or(TableProblem::HeaderSize {
            size: header_size,
            sector_size: sector_size_u32,
        })?;

    // The CRC covers `header_size` bytes with the CRC field counted as
    // zero.
    let stored = le_u32(bytes, header::HEADER_CRC);
    let mut digest = CRC32.digest();
    digest.update(bytes.get(..header::HEADER_CRC.start).unwrap_or_default());
    digest.update(&[0; 4]);
    digest.update(bytes.get(header::HEADER_CRC.end..).unwrap_or_default());
    let computed = digest.finalize();
    if stored != computed {
        return Err(TableProblem::HeaderCrc { stored, computed });
    }

    let my_lba = le_u64(bytes, header::MY_LBA);
    if my_lba != lba {
        return Err(TableProblem::MyLba { found: my_lba });
    }
    let first_usable = le_u64(bytes, header::FIRST_USABLE);
    let last_usable = le_u64(bytes, header::LAST_USABLE);
    // Partitions must stay off LBA 0 (MBR), LBA 1 (primary header) and
    // the last LBA (backup header).
    if first_usable < 2 || first_usable > last_usable || last_usable >= sectors - 1 {
        return Err(TableProblem::UsableRange {
            first: first_usable,
            last: last_usable,
            sectors,
        });
    }
    let entry_size = le_u32(bytes, header::ENTRY_SIZE);
    if entry_size < 128 || !entry_size.is_power_of_two() || entry_size > MAX_ENTRY_SIZE {
        return Err(TableProblem::EntrySize(entry_size));
    }
    let entry_count = le_u32(bytes, header::ENTRY_COUNT);
    if entry_count > MAX_ENTRIES {
        return Err(TableProblem::EntryCount(entry_count));
    }
    let entry_lba = le_u64(bytes, header::ENTRY_LBA);
    let array_bytes = u64::from(entry_count) * u64::from(entry_size);
    let array_sectors = array_bytes.div_ceil(sector_size as u64);
    let array_ok = entry_lba.checked_add(array_sectors).is_some_and(|end| {
        entry_lba >= 1
            && end <= sectors
            && !(entry_lba..end).contains(&lba)
            && (end <= first_usable || entry_lba > last_usable)
    });
    if !array_ok {
        return Err(TableProblem::EntryArray {
            lba: entry_lba,
            sectors: array_sectors,
        });
    }
    Ok(Header {
        first_usable,
        last_usable,
        disk_guid: guid_at(bytes, header::DISK_GUID),
        entry_lba,
        entry_count,
        entry_size,
        entry_crc: le_u32(bytes, header::ENTRY_CRC),
    })
}

/// Reads the entry array in chunks, computing its CRC32 and decoding the
/// used entries on the way, so that only one entry is held at a time.
/// Returns `None` when the entry size cannot be held (not after
/// [`check_header`]).
fn read_entries(
    dev: &mut dyn BlockDevice,
    header: &Header,
    sector_size: usize,
) -> Result<Option<(Vec<Partition>, u32)>, DiskError> {
    let Ok(entry_size) = usize::try_from(header.entry_size) else {
        return Ok(None);
    };
    // At most MAX_ENTRIES * MAX_ENTRY_SIZE, checked by `check_header`.
    let mut remaining = (header.entry_count as usize).saturating_mul(entry_size);
    let chunk_sectors = (MAX_READ_BYTES / sector_size).max(1);
    let mut buf = vec![0; chunk_sectors * sector_size];
    let mut entry = vec![0; entry_size];
    let mut filled = 0;
    let mut index: u32 = 0;
    let mut lba = header.entry_lba;
    let mut digest = CRC32.digest();
    let mut partitions = Vec::new();
    while remaining > 0 {
        let count = remaining.div_ceil(sector_size).min(chunk_sectors);
        let Some(chunk) = buf.get_mut(..count * sector_size) else {
            return Ok(None);
        };
        dev.read(lba, chunk)?;
        lba = lba.saturating_add(count as u64);
        let data = chunk.get(..remaining.min(chunk.len())).unwrap_or_default();
        remaining = remaining.saturating_sub(data.len());
        digest.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let take = (entry_size - filled).min(rest.len());
            let (piece, tail) = rest.split_at(take);
            if let Some(to) = entry.get_mut(filled..filled + take) {
                to.copy_from_slice(piece);
            }
            filled += take;
            rest = tail;
            if filled == entry_size {
                if let Some(p) = decode_entry(index, &entry) {
                    partitions.push(p);
                }
                index = index.saturating_add(1);
                filled = 0;
            }
        }
    }
    Ok(Some((partitions, digest.finalize())))
}

/// The partition an entry describes, or `None` for an unused entry.
fn decode_entry(index: u32, entry: &[u8]) -> Option<Partition> {
    let type_guid = guid_at(entry, entry::TYPE_GUID);
    if type_guid.is_zero() {
        return None;
    }
    let units = entry
        .get(entry::NAME)
        .unwrap_or_default()
        .as_chunks::<2>()
        .0
        .iter()
        .map(|c| u16::from_le_bytes(*c))
        .take_while(|&u| u != 0);
    let name = char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    Some(Partition {
        index,
        type_guid,
        unique_guid: guid_at(entry, entry::UNIQUE_GUID),
        first_lba: le_u64(entry, entry::FIRST_LBA),
        last_lba: le_u64(entry, entry::LAST_LBA),
        attributes: le_u64(entry, entry::ATTRIBUTES),
        name,
    })
}

/// UEFI 2.10 5.3.3: each partition lies inside the usable range, and no
/// two share a sector.
fn check_entries(partitions: &[Partition], header: &Header) -> Result<(), TableProblem> {
    for p in partitions {
        if p.last_lba < p.first_lba {
            return Err(TableProblem::EntryBackwards {
                index: p.index,
                first: p.first_lba,
                last: p.last_lba,
            });
        }
        if p.first_lba < header.first_usable || p.last_lba > header.last_usable {
            return Err(TableProblem::EntryOutsideUsable {
                index: p.index,
                first: p.first_lba,
                last: p.last_lba,
            });
        }
    }
    let mut by_start: Vec<&Partition> = partitions.iter().collect();
    by_start.sort_by_key(|p| p.first_lba);
    for pair in by_start.windows(2) {
        if let [a, b] = pair {
            if b.first_lba <= a.last_lba {
                let (index, other) = (a.index.min(b.index), a.index.max(b.index));
                return Err(TableProblem::EntriesOverlap { index, other });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
