//! Reading the GUID partition table from a block device: the protective
//! MBR, the GPT header and its partition entry array, falling back to the
//! backup copy at the disk's last sector when the primary one is damaged,
//! and finding a partition by type GUID or name (Ferrovisor's config
//! partition in particular).
//!
//! The on-disk format and its checks (UEFI Specification 2.10, section 5)
//! are the `gpt` crate's, shared with the xtask code that writes the boot
//! disk; this module only reads sectors and decides which copy to use.
//!
//! Read-only: a damaged primary is reported (see [`Gpt::primary_problem`])
//! but never repaired.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use ::gpt::{check_entries, protective_mbr_problem, SIGNATURE};
pub use ::gpt::{
    crc32, header, Crc32, Guid, Header, Partition, TableProblem, BASIC_DATA_PARTITION,
    CONFIG_PARTITION_NAME, CONFIG_PARTITION_TYPE, EFI_SYSTEM_PARTITION, MAX_ENTRIES,
    MAX_ENTRY_SIZE, MIN_HEADER_SIZE,
};

use super::block::{read_sectors, sector_bytes, BlockDevice, DiskError, MAX_READ_BYTES};

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
    let checked = match Header::decode(sector).and_then(|h| {
        h.check(lba, sector_size, sectors)?;
        Ok(h)
    }) {
        Ok(h) => h,
        Err(problem) => return Ok(Err(problem)),
    };
    let (partitions, computed) = match read_entries(dev, &checked, sector_size)? {
        Some(read) => read,
        None => {
            return Ok(Err(TableProblem::EntrySize(checked.entry_size)));
        }
    };
    if computed != checked.entries_crc {
        return Ok(Err(TableProblem::EntryArrayCrc {
            stored: checked.entries_crc,
            computed,
        }));
    }
    if let Err(problem) = check_entries(&partitions, &checked) {
        return Ok(Err(problem));
    }
    Ok(Ok(Gpt {
        disk_guid: checked.disk_guid,
        header_lba: lba,
        first_usable_lba: checked.first_usable_lba,
        last_usable_lba: checked.last_usable_lba,
        partitions,
        primary_problem: None,
    }))
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
    let mut lba = header.entries_lba;
    let mut digest = Crc32::new();
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
                if let Some(p) = Partition::decode(index, &entry) {
                    partitions.push(p);
                }
                index = index.saturating_add(1);
                filled = 0;
            }
        }
    }
    Ok(Some((partitions, digest.finalize())))
}

#[cfg(test)]
mod tests;
