//! The GUID partition table's on-disk format, in one place for both its
//! writer (`xtask`, which builds Ferrovisor's boot disk) and its reader
//! (the kernel's `disk` crate): GUIDs ([`Guid`]), the CRC32 ([`crc32`]),
//! the header ([`Header`]) and partition entry ([`Partition`]) layouts with
//! their encoding and decoding, and the validity checks a reader makes
//! ([`Header::decode`], [`Header::check`], [`check_entries`],
//! [`protective_mbr_problem`]). Reading sectors is the caller's job.
//!
//! Layout and checks follow the UEFI Specification 2.10, section 5
//! ("GUID Partition Table (GPT) Disk Layout"): 5.2.3 (protective MBR),
//! 5.3.2 (GPT header, and "the following test must be performed to
//! determine if a GPT is valid") and 5.3.3 (partition entry).
//!
//! No dependencies, so xtask can use it before anything is downloaded.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod crc32;
mod guid;

use alloc::string::String;
use core::fmt;

pub use crc32::{crc32, Crc32};
pub use guid::{
    Guid, BASIC_DATA_PARTITION, BIOS_BOOT_PARTITION, CONFIG_PARTITION_NAME, CONFIG_PARTITION_TYPE,
    EFI_SYSTEM_PARTITION,
};

/// `"EFI PART"`, the header signature.
pub const SIGNATURE: [u8; 8] = *b"EFI PART";

/// Revision 1.0, the one written.
pub const REVISION: u32 = 0x0001_0000;

/// The smallest GPT header, and the size written (UEFI 2.10 table 5.5:
/// 92 bytes of fields).
pub const MIN_HEADER_SIZE: u32 = 92;

/// The entry size written; every tool writes 128.
pub const ENTRY_SIZE: u32 = 128;

/// The most partition entries accepted. Tools write 128; the spec sets no
/// bound, but this one keeps a damaged header from sending the reader
/// through megabytes of entries.
pub const MAX_ENTRIES: u32 = 1024;

/// The largest partition entry accepted, in bytes. The spec allows
/// `128 * 2^n`; every tool writes 128.
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// The UTF-16 code units of a partition name.
pub const NAME_UNITS: usize = 36;

/// The MBR partition type of the one partition a protective MBR holds
/// (UEFI 2.10 table 5.4, "GPT Protective").
pub const PROTECTIVE_TYPE: u8 = 0xEE;

/// Offsets in the GPT header (UEFI 2.10 table 5.5).
pub mod header {
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
    /// The other copy's LBA.
    pub const ALTERNATE_LBA: Range<usize> = 32..40;
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
pub mod entry {
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

/// A GPT header's fields (UEFI 2.10 table 5.5), less the signature,
/// revision, size and CRC, which [`Header::encode`] writes and
/// [`Header::decode`] checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The LBA this header is at.
    pub my_lba: u64,
    /// The LBA of the other copy.
    pub alternate_lba: u64,
    /// First LBA a partition may use.
    pub first_usable_lba: u64,
    /// Last LBA a partition may use.
    pub last_usable_lba: u64,
    /// The disk's GUID.
    pub disk_guid: Guid,
    /// Where this copy's entry array starts.
    pub entries_lba: u64,
    /// Number of entries in the array.
    pub entry_count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// CRC32 of the entry array.
    pub entries_crc: u32,
}

impl Header {
    /// The header's [`MIN_HEADER_SIZE`] bytes, revision 1.0, with its CRC
    /// filled in; the rest of its sector is zero.
    pub fn encode(&self) -> [u8; MIN_HEADER_SIZE as usize] {
        let mut h = [0u8; MIN_HEADER_SIZE as usize];
        put(&mut h, header::SIGNATURE, &SIGNATURE);
        put(&mut h, header::REVISION, &REVISION.to_le_bytes());
        put(&mut h, header::HEADER_SIZE, &MIN_HEADER_SIZE.to_le_bytes());
        // HEADER_CRC is computed with the field zero; 20..24 is reserved.
        put(&mut h, header::MY_LBA, &self.my_lba.to_le_bytes());
        put(
            &mut h,
            header::ALTERNATE_LBA,
            &self.alternate_lba.to_le_bytes(),
        );
        put(
            &mut h,
            header::FIRST_USABLE,
            &self.first_usable_lba.to_le_bytes(),
        );
        put(
            &mut h,
            header::LAST_USABLE,
            &self.last_usable_lba.to_le_bytes(),
        );
        put(&mut h, header::DISK_GUID, &self.disk_guid.to_bytes());
        put(&mut h, header::ENTRY_LBA, &self.entries_lba.to_le_bytes());
        put(&mut h, header::ENTRY_COUNT, &self.entry_count.to_le_bytes());
        put(&mut h, header::ENTRY_SIZE, &self.entry_size.to_le_bytes());
        put(&mut h, header::ENTRY_CRC, &self.entries_crc.to_le_bytes());
        let crc = crc32(&h);
        put(&mut h, header::HEADER_CRC, &crc.to_le_bytes());
        h
    }

    /// Reads the header in `sector` (a whole sector: its length bounds the
    /// header size), checking its signature, revision (1.x), size (from
    /// [`MIN_HEADER_SIZE`] to the sector) and CRC (UEFI 2.10 5.3.2).
    ///
    /// # Errors
    ///
    /// [`TableProblem::Signature`], [`TableProblem::Revision`],
    /// [`TableProblem::HeaderSize`] or [`TableProblem::HeaderCrc`].
    pub fn decode(sector: &[u8]) -> Result<Self, TableProblem> {
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
        let sector_size = u32::try_from(sector.len()).unwrap_or(u32::MAX);
        let bytes = usize::try_from(header_size)
            .ok()
            .filter(|_| (MIN_HEADER_SIZE..=sector_size).contains(&header_size))
            .and_then(|len| sector.get(..len))
            .ok_or(TableProblem::HeaderSize {
                size: header_size,
                sector_size,
            })?;

        // The CRC covers `header_size` bytes with the CRC field counted as
        // zero.
        let stored = le_u32(bytes, header::HEADER_CRC);
        let mut digest = Crc32::new();
        digest.update(bytes.get(..header::HEADER_CRC.start).unwrap_or_default());
        digest.update(&[0; 4]);
        digest.update(bytes.get(header::HEADER_CRC.end..).unwrap_or_default());
        let computed = digest.finalize();
        if stored != computed {
            return Err(TableProblem::HeaderCrc { stored, computed });
        }
        Ok(Self {
            my_lba: le_u64(bytes, header::MY_LBA),
            alternate_lba: le_u64(bytes, header::ALTERNATE_LBA),
            first_usable_lba: le_u64(bytes, header::FIRST_USABLE),
            last_usable_lba: le_u64(bytes, header::LAST_USABLE),
            disk_guid: guid_at(bytes, header::DISK_GUID),
            entries_lba: le_u64(bytes, header::ENTRY_LBA),
            entry_count: le_u32(bytes, header::ENTRY_COUNT),
            entry_size: le_u32(bytes, header::ENTRY_SIZE),
            entries_crc: le_u32(bytes, header::ENTRY_CRC),
        })
    }

    /// The rest of UEFI 2.10 5.3.2's checks on a decoded header read from
    /// `lba` of a disk of `sectors` sectors of `sector_size` bytes: its
    /// own LBA, the usable range, the entry size and count, and where the
    /// entry array lies. The entry array's CRC is the reader's to check.
    ///
    /// # Errors
    ///
    /// [`TableProblem::MyLba`], [`TableProblem::UsableRange`],
    /// [`TableProblem::EntrySize`], [`TableProblem::EntryCount`] or
    /// [`TableProblem::EntryArray`].
    pub fn check(&self, lba: u64, sector_size: usize, sectors: u64) -> Result<(), TableProblem> {
        if self.my_lba != lba {
            return Err(TableProblem::MyLba { found: self.my_lba });
        }
        let (first_usable, last_usable) = (self.first_usable_lba, self.last_usable_lba);
        // Partitions must stay off LBA 0 (MBR), LBA 1 (primary header) and
        // the last LBA (backup header).
        if first_usable < 2
            || first_usable > last_usable
            || last_usable >= sectors.saturating_sub(1)
        {
            return Err(TableProblem::UsableRange {
                first: first_usable,
                last: last_usable,
                sectors,
            });
        }
        let entry_size = self.entry_size;
        if entry_size < 128 || !entry_size.is_power_of_two() || entry_size > MAX_ENTRY_SIZE {
            return Err(TableProblem::EntrySize(entry_size));
        }
        if self.entry_count > MAX_ENTRIES {
            return Err(TableProblem::EntryCount(self.entry_count));
        }
        let entry_lba = self.entries_lba;
        // Both at most 2^32, so the product fits.
        let array_bytes = u64::from(self.entry_count).saturating_mul(u64::from(entry_size));
        let array_sectors = array_bytes.div_ceil((sector_size as u64).max(1));
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
        Ok(())
    }
}

/// One used entry of the partition table (UEFI 2.10 table 5.6).
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
    /// Last sector, inclusive; at least `first_lba` in a valid table.
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

    /// The 128-byte entry; the name is UTF-16LE, cut at [`NAME_UNITS`]
    /// units. (`index` is where the caller puts it.)
    pub fn encode(&self) -> [u8; ENTRY_SIZE as usize] {
        let mut e = [0u8; ENTRY_SIZE as usize];
        put(&mut e, entry::TYPE_GUID, &self.type_guid.to_bytes());
        put(&mut e, entry::UNIQUE_GUID, &self.unique_guid.to_bytes());
        put(&mut e, entry::FIRST_LBA, &self.first_lba.to_le_bytes());
        put(&mut e, entry::LAST_LBA, &self.last_lba.to_le_bytes());
        put(&mut e, entry::ATTRIBUTES, &self.attributes.to_le_bytes());
        if let Some(name) = e.get_mut(entry::NAME) {
            for (to, unit) in name
                .as_chunks_mut::<2>()
                .0
                .iter_mut()
                .zip(self.name.encode_utf16().take(NAME_UNITS))
            {
                *to = unit.to_le_bytes();
            }
        }
        e
    }

    /// The partition entry `index` of the array describes, or `None` for
    /// an unused entry (type all zero).
    pub fn decode(index: u32, entry: &[u8]) -> Option<Self> {
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
        Some(Self {
            index,
            type_guid,
            unique_guid: guid_at(entry, entry::UNIQUE_GUID),
            first_lba: le_u64(entry, entry::FIRST_LBA),
            last_lba: le_u64(entry, entry::LAST_LBA),
            attributes: le_u64(entry, entry::ATTRIBUTES),
            name,
        })
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

/// What keeps `mbr` from being a protective MBR, if anything (UEFI 2.10
/// 5.2.3: boot signature 0xAA55, a partition record of type 0xEE). A
/// hybrid MBR, which also lists other partitions, is accepted.
pub fn protective_mbr_problem(mbr: &[u8]) -> Option<&'static str> {
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

/// UEFI 2.10 5.3.3: each partition lies inside `header`'s usable range,
/// and no two share a sector.
///
/// # Errors
///
/// [`TableProblem::EntryBackwards`], [`TableProblem::EntryOutsideUsable`]
/// or [`TableProblem::EntriesOverlap`].
pub fn check_entries(partitions: &[Partition], header: &Header) -> Result<(), TableProblem> {
    for p in partitions {
        if p.last_lba < p.first_lba {
            return Err(TableProblem::EntryBackwards {
                index: p.index,
                first: p.first_lba,
                last: p.last_lba,
            });
        }
        if p.first_lba < header.first_usable_lba || p.last_lba > header.last_usable_lba {
            return Err(TableProblem::EntryOutsideUsable {
                index: p.index,
                first: p.first_lba,
                last: p.last_lba,
            });
        }
    }
    let mut by_start: alloc::vec::Vec<&Partition> = partitions.iter().collect();
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
        .map_or(Guid::ZERO, Guid::from_bytes)
}

/// Writes `value` into `buf` at `range`; every caller writes a field that
/// lies inside a buffer of fixed size.
fn put(buf: &mut [u8], range: core::ops::Range<usize>, value: &[u8]) {
    if let Some(to) = buf.get_mut(range) {
        if to.len() == value.len() {
            to.copy_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests;
