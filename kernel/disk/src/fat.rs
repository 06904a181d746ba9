//! A read-only FAT12/16/32 file system reader over a [`BlockDevice`]
//! partition: boot sector (BPB) checks, cluster-chain walking that ends
//! every damaged chain (cycle, free or bad cluster, number out of range)
//! in an error, directories with VFAT long names, case-insensitive path
//! lookup, and reading a whole file into memory under a size limit, or in
//! pieces through an open [`FatFile`] (how guest images larger than the
//! heap are read).
//!
//! Sources: Microsoft, "FAT: General Overview of On-Disk Format" 1.03
//! (`fatgen103`): section 3 (boot sector and BPB), 3.5 (FAT type from the
//! cluster count), 4 (FAT entries), 6 (directory entries) and 7 (long
//! names, their checksum). One departure, as Linux makes it: a BPB whose
//! 16-bit FAT size is zero is FAT32 whatever its cluster count, so small
//! FAT32 volumes (`mformat -F`, `mkfs.vfat -F 32`) read as FAT32.
//!
//! The volume is trusted by the operator but still validated: every
//! number from the disk is range-checked before it picks a sector, every
//! chain walk is bounded by the file's size or the directory limit, and
//! nothing from the disk can make this code panic or loop.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::block::{sector_bytes, BlockDevice, DiskError, MAX_READ_BYTES};

/// A directory holds at most 65,536 entries of 32 bytes (fatgen103,
/// section 6), so a longer directory chain is damage, not a directory.
pub const MAX_DIR_BYTES: usize = 65_536 * DIR_ENTRY;

/// Bytes per directory entry.
const DIR_ENTRY: usize = 32;

/// UTF-16 code units per long-name entry.
const LFN_UNITS: usize = 13;

/// Long names have at most 255 characters, so at most 20 entries.
const MAX_LFN_ENTRIES: u8 = 20;

/// Directory entry attribute bits (fatgen103 section 6).
mod attr {
    /// Read-only.
    pub const READ_ONLY: u8 = 0x01;
    /// Hidden.
    pub const HIDDEN: u8 = 0x02;
    /// System.
    pub const SYSTEM: u8 = 0x04;
    /// The volume label.
    pub const VOLUME_ID: u8 = 0x08;
    /// A directory.
    pub const DIRECTORY: u8 = 0x10;
    /// The four low bits together mark a long-name entry.
    pub const LONG_NAME: u8 = READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID;
    /// The bits that decide whether an entry is a long-name entry.
    pub const LONG_NAME_MASK: u8 = 0x3F;
}

/// Which FAT entry width the volume uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit FAT entries (fewer than 4085 clusters).
    Fat12,
    /// 16-bit FAT entries.
    Fat16,
    /// 28-bit FAT entries in 32 bits.
    Fat32,
}

impl FatType {
    /// The smallest FAT entry value that ends a chain (fatgen103 section
    /// 4: any of 0x…FF8 to 0x…FFF).
    const fn end_of_chain(self) -> u32 {
        match self {
            Self::Fat12 => 0xFF8,
            Self::Fat16 => 0xFFF8,
            Self::Fat32 => 0x0FFF_FFF8,
        }
    }

    /// The FAT entry value of a bad cluster.
    const fn bad(self) -> u32 {
        self.end_of_chain() - 1
    }

    /// The most clusters the entry width can address: cluster numbers
    /// run from 2 to one below the bad-cluster mark.
    const fn max_clusters(self) -> u32 {
        self.bad() - 2
    }

    /// Bytes of FAT needed for `entries` entries.
    const fn fat_bytes(self, entries: u64) -> u64 {
        match self {
            Self::Fat12 => entries.saturating_mul(3).div_ceil(2),
            Self::Fat16 => entries.saturating_mul(2),
            Self::Fat32 => entries.saturating_mul(4),
        }
    }
}

impl fmt::Display for FatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fat12 => "FAT12",
            Self::Fat16 => "FAT16",
            Self::Fat32 => "FAT32",
        })
    }
}

/// What is wrong with the boot sector's BIOS parameter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProblem {
    /// The partition is smaller than one sector.
    Empty,
    /// Bytes 510 and 511 are not 0x55 0xAA.
    Signature,
    /// The first byte is not a jump instruction (0xEB or 0xE9).
    Jump(u8),
    /// Bytes per sector is not 512, 1024, 2048 or 4096.
    BytesPerSector(u16),
    /// The file system's sectors are smaller than the disk's.
    SmallerThanDisk {
        /// Bytes per file system sector.
        fs: u32,
        /// Bytes per disk sector.
        disk: u32,
    },
    /// Sectors per cluster is not a power of two from 1 to 128.
    SectorsPerCluster(u8),
    /// No reserved sectors (the boot sector itself is one).
    NoReservedSectors,
    /// No FAT.
    NoFats,
    /// Total sectors is zero.
    NoSectors,
    /// FAT size is zero.
    NoFatSectors,
    /// A FAT32 BPB with root directory entries, or a FAT12/16 BPB
    /// without.
    RootEntries {
        /// The count in the BPB.
        count: u16,
        /// Whether the FAT size fields say FAT32.
        fat32: bool,
    },
    /// The FATs and the root directory leave no room for a data cluster.
    NoDataClusters {
        /// The first data sector.
        data_start: u64,
        /// The volume's sectors.
        sectors: u64,
    },
    /// The volume is larger than its partition.
    BeyondPartition {
        /// The volume's size in disk sectors.
        volume: u64,
        /// The partition's size in disk sectors.
        partition: u64,
    },
    /// More clusters than the FAT type can number.
    TooManyClusters {
        /// The cluster count.
        clusters: u64,
        /// The FAT type.
        fat_type: FatType,
    },
    /// The FAT is too small for the clusters.
    FatTooSmall {
        /// Bytes in one FAT.
        fat_bytes: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A FAT32 version other than 0.0.
    Version(u16),
    /// The FAT32 root directory cluster is not a data cluster.
    RootCluster(u32),
    /// The FAT32 active-FAT number (mirroring off) is not one of the FATs.
    ActiveFat {
        /// The active FAT's number.
        active: u8,
        /// The number of FATs.
        fats: u8,
    },
}

impl fmt::Display for BootProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("the partition is smaller than one sector"),
            Self::Signature => f.write_str("no 0x55 0xAA signature at bytes 510 and 511"),
            Self::Jump(byte) => write!(
                f,
                "first byte {byte:#04x} is not a jump (0xeb or 0xe9): not a FAT boot sector"
            ),
            Self::BytesPerSector(n) => {
                write!(f, "bytes per sector {n} is not 512, 1024, 2048 or 4096")
            }
            Self::SmallerThanDisk { fs, disk } => write!(
                f,
                "its {fs}-byte sectors are smaller than the disk's {disk}-byte sectors"
            ),
            Self::SectorsPerCluster(n) => write!(
                f,
                "sectors per cluster {n} is not a power of two from 1 to 128"
            ),
            Self::NoReservedSectors => f.write_str("reserved sector count is 0"),
            Self::NoFats => f.write_str("number of FATs is 0"),
            Self::NoSectors => f.write_str("total sector count is 0"),
            Self::NoFatSectors => f.write_str("FAT size is 0 sectors"),
            Self::RootEntries { count, fat32: true } => write!(
                f,
                "{count} fixed root directory entries on FAT32, whose root is a cluster chain"
            ),
            Self::RootEntries { fat32: false, .. } => {
                f.write_str("no root directory entries on FAT12/16, whose root is fixed")
            }
            Self::NoDataClusters {
                data_start,
                sectors,
            } => write!(
                f,
                "the FATs and root directory end at sector {data_start}, leaving no data \
                 cluster in a volume of {sectors} sectors"
            ),
            Self::BeyondPartition { volume, partition } => write!(
                f,
                "the volume ({volume} disk sectors) is larger than its partition ({partition})"
            ),
            Self::TooManyClusters { clusters, fat_type } => {
                write!(f, "{clusters} clusters are more than {fat_type} can number")
            }
            Self::FatTooSmall { fat_bytes, needed } => write!(
                f,
                "a FAT of {fat_bytes} bytes is smaller than the {needed} bytes its clusters need"
            ),
            Self::Version(v) => write!(f, "FAT32 version {v:#06x} is not 0.0"),
            Self::RootCluster(c) => {
                write!(f, "root directory cluster {c} is not a data cluster")
            }
            Self::ActiveFat { active, fats } => {
                write!(f, "active FAT {active} is not one of the {fats} FATs")
            }
        }
    }
}

/// What is wrong with a cluster chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainProblem {
    /// The directory entry's first cluster is not a data cluster.
    Start(u32),
    /// A cluster's FAT entry is 0: the chain runs into free space.
    Free(u32),
    /// A cluster's FAT entry is 1, which is reserved.
    Reserved(u32),
    /// A cluster in the chain is marked bad.
    Bad(u32),
    /// A cluster links to a number past the last cluster.
    OutOfRange {
        /// The cluster.
        cluster: u32,
        /// Its FAT entry.
        next: u32,
    },
    /// A cluster links back into the chain.
    Cycle {
        /// The cluster.
        cluster: u32,
        /// The cluster it links to, already in the chain.
        next: u32,
    },
    /// The chain ends before the file's size is covered.
    TooShort {
        /// Clusters in the chain.
        clusters: u64,
        /// Clusters the size needs.
        needed: u64,
    },
    /// A directory's chain is longer than a directory may be.
    TooLong {
        /// The most clusters a directory may have at this cluster size.
        max: u64,
    },
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Start(c) => write!(f, "first cluster {c} is not a data cluster"),
            Self::Free(c) => write!(
                f,
                "cluster {c} is in the chain but free in the FAT (entry 0)"
            ),
            Self::Reserved(c) => write!(f, "cluster {c} has the reserved FAT entry 1"),
            Self::Bad(c) => write!(f, "cluster {c} is marked bad"),
            Self::OutOfRange { cluster, next } => write!(
                f,
                "cluster {cluster} links to {next}, which is not a data cluster"
            ),
            Self::Cycle { cluster, next } => write!(
                f,
                "cluster {cluster} links back to cluster {next}, earlier in the chain (a cycle)"
            ),
            Self::TooShort { clusters, needed } => write!(
                f,
                "the chain ends after {clusters} clusters but the size needs {needed}"
            ),
            Self::TooLong { max } => write!(
                f,
                "the directory's chain is longer than {max} clusters ({MAX_DIR_BYTES} bytes, \
                 the most a directory holds)"
            ),
        }
    }
}

/// Why a FAT operation failed. Paths are as the caller gave them, without
/// leading `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsError {
    /// The disk could not be read.
    Disk(DiskError),
    /// The boot sector at `lba` is not a usable FAT boot sector.
    BootSector {
        /// The boot sector's disk LBA.
        lba: u64,
        /// What is wrong.
        problem: BootProblem,
    },
    /// The cluster chain of `path` is damaged.
    Chain {
        /// The file or directory.
        path: String,
        /// What is wrong.
        problem: ChainProblem,
    },
    /// `path` does not exist.
    NotFound {
        /// The first missing part of the path.
        path: String,
    },
    /// A part of the path that should be a directory is a file.
    NotADirectory {
        /// That part of the path.
        path: String,
    },
    /// A file was asked for and `path` is a directory.
    IsADirectory {
        /// The directory.
        path: String,
    },
    /// The file is larger than the caller's limit.
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The heap cannot hold the file.
    OutOfMemory {
        /// The file.
        path: String,
        /// The bytes asked for.
        bytes: usize,
    },
    /// The path is not one this reader accepts.
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The file system was in use by another call (a re-entrant call
    /// through [`super::ConfigFs`]).
    Busy,
}

impl From<DiskError> for FsError {
    fn from(e: DiskError) -> Self {
        Self::Disk(e)
    }
}

/// `path` for messages: the root is `/`.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"/\"")
        } else {
            write!(f, "\"{}\"", self.0.escape_debug())
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "FAT: {e}"),
            Self::BootSector { lba, problem } => {
                write!(f, "FAT: boot sector at LBA {lba}: {problem}")
            }
            Self::Chain { path, problem } => {
                write!(f, "FAT: {}: damaged cluster chain: {problem}", Shown(path))
            }
            Self::NotFound { path } => write!(f, "FAT: {} does not exist", Shown(path)),
            Self::NotADirectory { path } => {
                write!(f, "FAT: {} is a file, not a directory", Shown(path))
            }
            Self::IsADirectory { path } => {
                write!(f, "FAT: {} is a directory, not a file", Shown(path))
            }
            Self::TooLarge { path, size, limit } => write!(
                f,
                "FAT: {} is {size} bytes, more than the {limit} allowed",
                Shown(path)
            ),
            Self::OutOfMemory { path, bytes } => {
                write!(f, "FAT: {}: no memory for its {bytes} bytes", Shown(path))
            }
            Self::BadPath { path, reason } => {
                write!(f, "FAT: path {}: {reason}", Shown(path))
            }
            Self::Busy => f.write_str("FAT: the file system is already in use"),
        }
    }
}

/// One file or directory in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The long name, or when there is none the 8.3 name (`NAME.EXT`,
    /// lower-cased where the Windows NT case bits say so).
    pub name: String,
    /// The 8.3 name as stored (`AVERYL~1.TEX`); bytes outside ASCII are
    /// shown as U+FFFD.
    pub short_name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// The size in bytes (0 for a directory).
    pub size: u32,
    /// The first cluster (0 for an empty file).
    pub first_cluster: u32,
    /// The attribute byte (read-only 0x01, hidden 0x02, system 0x04,
    /// directory 0x10, archive 0x20).
    pub attributes: u8,
}

/// A file opened for reading in pieces ([`FatVolume::open_file`],
/// [`FatVolume::read_at`]). Its cluster chain is walked and checked once,
/// at open, and kept as runs of consecutive clusters, so a read at any
/// offset finds its clusters by a binary search instead of a walk from
/// the first cluster: reading a file front to back costs one chain walk,
/// not one per read, and a file stored in one piece is one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatFile {
    /// The path as shown in messages.
    path: String,
    /// The size in bytes.
    size: u64,
    /// The chain as runs, in file order; enough clusters for `size`.
    runs: Vec<Run>,
}

impl FatFile {
    /// The path as opened, without a leading `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Consecutive clusters of a file's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// The first cluster.
    first: u32,
    /// How many.
    count: u32,
    /// The file's cluster index of `first` (its byte offset over the
    /// cluster size).
    index: u64,
}

impl Run {
    /// The file's cluster index just past the run.
    fn end(&self) -> u64 {
        self.index + u64::from(self.count)
    }
}

/// Where a directory's entries are.
#[derive(Clone, Copy, Debug)]
enum Dir {
    /// The FAT12/16 root directory: a fixed run of sectors.
    FixedRoot,
    /// A cluster chain from this cluster.
    Chain(u32),
}

/// A FAT volume on a partition of a block device.
pub struct FatVolume<'d> {
    dev: &'d mut dyn BlockDevice,
    /// The partition's first disk LBA.
    first_lba: u64,
    /// Disk sectors per file system sector.
    disk_per_fs: u64,
    /// Bytes per file system sector.
    bytes_per_sector: usize,
    /// File system sectors per cluster.
    sectors_per_cluster: u64,
    fat_type: FatType,
    /// File system sector of the FAT in use.
    fat_start: u64,
    /// File system sector of the FAT12/16 root directory.
    root_start: u64,
    /// Its length in sectors (0 on FAT32).
    root_sectors: u64,
    /// The FAT32 root directory's first cluster.
    root_cluster: u32,
    /// File system sector of cluster 2.
    data_start: u64,
    /// The volume's size in file system sectors.
    total_sectors: u64,
    /// Number of data clusters; clusters are numbered 2 to this plus 1.
    clusters: u32,
    /// The volume label from the boot sector, if it has one.
    label: Option<String>,
    /// The FAT sector last read, so that walking a chain reads each FAT
    /// sector once.
    cache: Option<(u64, Vec<u8>)>,
    /// One sector, for reads that start or end inside a sector.
    bounce: Vec<u8>,
}

impl fmt::Debug for FatVolume<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FatVolume")
            .field("first_lba", &self.first_lba)
            .field("fat_type", &self.fat_type)
            .field("bytes_per_sector", &self.bytes_per_sector)
            .field("sectors_per_cluster", &self.sectors_per_cluster)
            .field("clusters", &self.clusters)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// A little-endian 16-bit field.
fn le16(b: &[u8], at: usize) -> u16 {
    match (b.get(at), b.get(at + 1)) {
        (Some(&lo), Some(&hi)) => u16::from_le_bytes([lo, hi]),
        _ => 0,
    }
}

/// A little-endian 32-bit field.
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from(le16(b, at)) | (u32::from(le16(b, at + 2)) << 16)
}

/// One byte.
fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

impl<'d> FatVolume<'d> {
    /// Opens the FAT volume on the partition of `sectors` disk sectors
    /// from `first_lba`, checking its boot sector (fatgen103 section 3).
    ///
    /// # Errors
    ///
    /// [`FsError::Disk`] when the boot sector cannot be read,
    /// [`FsError::BootSector`] naming the field that is wrong.
    pub fn open(
        dev: &'d mut dyn BlockDevice,
        first_lba: u64,
        sectors: u64,
    ) -> Result<Self, FsError> {
        let bad = |problem| FsError::BootSector {
            lba: first_lba,
            problem,
        };
        let disk_sector = sector_bytes(dev)?;
        if sectors == 0 {
            return Err(bad(BootProblem::Empty));
        }
        let mut boot = vec![0; disk_sector];
        dev.read(first_lba, &mut boot)?;
        // The partition must lie on the disk; the boot sector read only
        // checked its first sector.
        if first_lba
            .checked_add(sectors)
            .is_none_or(|end| end > dev.sectors())
        {
            return Err(DiskError::OutOfRange {
                lba: first_lba,
                count: sectors,
                sectors: dev.sectors(),
            }
            .into());
        }

        if boot.get(510..512) != Some(&[0x55, 0xAA][..]) {
            return Err(bad(BootProblem::Signature));
        }
        let jump = byte(&boot, 0);
        if jump != 0xEB && jump != 0xE9 {
            return Err(bad(BootProblem::Jump(jump)));
        }
        let bps = le16(&boot, 11);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(bad(BootProblem::BytesPerSector(bps)));
        }
        let bytes_per_sector = usize::from(bps);
        if bytes_per_sector < disk_sector {
            return Err(bad(BootProblem::SmallerThanDisk {
                fs: u32::from(bps),
                disk: dev.sector_size(),
            }));
        }
        // Both are powers of two, so this divides exactly.
        let disk_per_fs = (bytes_per_sector / disk_sector) as u64;
        let spc = byte(&boot, 13);
        if !spc.is_power_of_two() {
            return Err(bad(BootProblem::SectorsPerCluster(spc)));
        }
        let reserved = u64::from(le16(&boot, 14));
        if reserved == 0 {
            return Err(bad(BootProblem::NoReservedSectors));
        }
        let fats = byte(&boot, 16);
        if fats == 0 {
            return Err(bad(BootProblem::NoFats));
        }
        let root_entries = le16(&boot, 17);
        let total_sectors = match le16(&boot, 19) {
            0 => u64::from(le32(&boot, 32)),
            n => u64::from(n),
        };
        if total_sectors == 0 {
            return Err(bad(BootProblem::NoSectors));
        }
        let fat16_size = le16(&boot, 22);
        let fat32 = fat16_size == 0;
        let fat_sectors = if fat32 {
            u64::from(le32(&boot, 36))
        } else {
            u64::from(fat16_size)
        };
        if fat_sectors == 0 {
            return Err(bad(BootProblem::NoFatSectors));
        }
        if fat32 != (root_entries == 0) {
            return Err(bad(BootProblem::RootEntries {
                count: root_entries,
                fat32,
            }));
        }
        let volume = total_sectors.saturating_mul(disk_per_fs);
        if volume > sectors {
            return Err(bad(BootProblem::BeyondPartition {
                volume,
                partition: sectors,
            }));
        }

        let root_sectors =
            (u64::from(root_entries) * DIR_ENTRY as u64).div_ceil(bytes_per_sector as u64);
        let root_start = reserved + u64::from(fats) * fat_sectors;
        let data_start = root_start + root_sectors;
        let spc = u64::from(spc);
        let clusters = total_sectors.saturating_sub(data_start) / spc;
        if clusters == 0 {
            return Err(bad(BootProblem::NoDataClusters {
                data_start,
                sectors: total_sectors,
            }));
        }
        // fatgen103 section 3.5: fewer than 4085 clusters is FAT12.
        let fat_type = if fat32 {
            FatType::Fat32
        } else if clusters < 4085 {
            FatType::Fat12
        } else {
            FatType::Fat16
        };
        let clusters = u32::try_from(clusters)
            .ok()
            .filter(|&c| c <= fat_type.max_clusters())
            .ok_or(bad(BootProblem::TooManyClusters { clusters, fat_type }))?;
        let fat_bytes = fat_sectors.saturating_mul(bytes_per_sector as u64);
        let needed = fat_type.fat_bytes(u64::from(clusters) + 2);
        if fat_bytes < needed {
            return Err(bad(BootProblem::FatTooSmall { fat_bytes, needed }));
        }

        let mut fat_start = reserved;
        let mut root_cluster = 0;
        let label_at = if fat32 {
            let version = le16(&boot, 42);
            if version != 0 {
                return Err(bad(BootProblem::Version(version)));
            }
            root_cluster = le32(&boot, 44);
            if !(2..=clusters.saturating_add(1)).contains(&root_cluster) {
                return Err(bad(BootProblem::RootCluster(root_cluster)));
            }
            // ExtFlags bit 7: mirroring off, and bits 0-3 name the one
            // FAT in use (fatgen103 section 3.3, BPB_ExtFlags).
            let flags = le16(&boot, 40);
            if flags & 0x80 != 0 {
                let active = (flags & 0x0F) as u8;
                if active >= fats {
                    return Err(bad(BootProblem::ActiveFat { active, fats }));
                }
                fat_start += u64::from(active) * fat_sectors;
            }
            64
        } else {
            36
        };
        // The extended boot signature 0x29 says the serial number and
        // label fields follow (BS_BootSig, BS_VolLab).
        let label = (byte(&boot, label_at + 2) == 0x29)
            .then(|| boot.get(label_at + 7..label_at + 18))
            .flatten()
            .map(|raw| {
                let text: String = raw.iter().map(|&b| oem_char(b)).collect();
                String::from(text.trim_end())
            })
            .filter(|l| !l.is_empty() && l != "NO NAME");

        Ok(Self {
            dev,
            first_lba,
            disk_per_fs,
            bytes_per_sector,
            sectors_per_cluster: spc,
            fat_type,
            fat_start,
            root_start,
            root_sectors,
            root_cluster,
            data_start,
            total_sectors,
            clusters,
            label,
            cache: None,
            bounce: Vec::new(),
        })
    }

    /// FAT12, FAT16 or FAT32.
    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> usize {
        self.bytes_per_sector * self.sectors_per_cluster as usize
    }

    /// The number of data clusters.
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// The volume label from the boot sector (`FERROCFG`), if set.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The entries of the directory at `path` (`""` or `"/"` for the
    /// root), without `.` and `..` and the volume label, in directory
    /// order.
    ///
    /// # Errors
    ///
    /// [`FsError::NotFound`], [`FsError::NotADirectory`],
    /// [`FsError::BadPath`], [`FsError::Chain`] or [`FsError::Disk`].
    pub fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let (shown, entry) = self.lookup(path)?;
        match entry {
            None => self.dir_entries(self.root_dir(), &shown),
            Some(e) if e.is_dir => self.dir_entries(Dir::Chain(e.first_cluster), &shown),
            Some(_) => Err(FsError::NotADirectory { path: shown }),
        }
    }

    /// The entry of the file or directory at `path`, found
    /// case-insensitively by long or 8.3 name; `None` for the root, which
    /// has no entry.
    ///
    /// # Errors
    ///
    /// As [`FatVolume::read_dir`].
    pub fn metadata(&mut self, path: &str) -> Result<Option<DirEntry>, FsError> {
        self.lookup(path).map(|(_, entry)| entry)
    }

    /// Whether `path` is a regular file.
    pub fn is_file(&mut self, path: &str) -> bool {
        matches!(self.metadata(path), Ok(Some(e)) if !e.is_dir)
    }

    /// The whole contents of the file at `path`, if it is at most `limit`
    /// bytes. The size is checked before anything is allocated, and the
    /// allocation is fallible, so a huge file is an error, not an
    /// exhausted heap.
    ///
    /// # Errors
    ///
    /// [`FsError::TooLarge`], [`FsError::OutOfMemory`],
    /// [`FsError::IsADirectory`], [`FsError::Chain`] when the chain is
    /// shorter than the size or damaged, and the lookup errors of
    /// [`FatVolume::read_dir`].
    pub fn read_file(&mut self, path: &str, limit: usize) -> Result<Vec<u8>, FsError> {
        let (shown, entry) = self.lookup(path)?;
        let entry = match entry {
            Some(e) if !e.is_dir => e,
            _ => return Err(FsError::IsADirectory { path: shown }),
        };
        let size = entry.size as usize;
        if size > limit {
            return Err(FsError::TooLarge {
                path: shown,
                size: u64::from(entry.size),
                limit,
            });
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let sectors = size.div_ceil(self.bytes_per_sector);
        let bytes = sectors * self.bytes_per_sector;
        let needed = (sectors as u64).div_ceil(self.sectors_per_cluster);
        // The chain first: a size the chain does not back is an error
        // before the buffer for it is allocated.
        let chain = self.chain(&shown, entry.first_cluster, Some(needed))?;
        let mut data = Vec::new();
        if data.try_reserve_exact(bytes).is_err() {
            return Err(FsError::OutOfMemory { path: shown, bytes });
        }
        data.resize(bytes, 0);
        self.read_chain(&chain, &mut data)?;
        data.truncate(size);
        Ok(data)
    }

    /// Opens the file at `path` for [`FatVolume::read_at`]: looks it up
    /// and walks and checks its cluster chain once. Only the runs of
    /// consecutive clusters are kept (one for an unfragmented file).
    ///
    /// # Errors
    ///
    /// [`FsError::IsADirectory`], [`FsError::Chain`] when the chain is
    /// shorter than the size or damaged (a cycle among them),
    /// [`FsError::OutOfMemory`], and the lookup errors of
    /// [`FatVolume::read_dir`].
    pub fn open_file(&mut self, path: &str) -> Result<FatFile, FsError> {
        let (shown, entry) = self.lookup(path)?;
        let entry = match entry {
            Some(e) if !e.is_dir => e,
            _ => return Err(FsError::IsADirectory { path: shown }),
        };
        let size = u64::from(entry.size);
        let runs = if size == 0 {
            Vec::new()
        } else {
            let needed = size.div_ceil(self.cluster_bytes() as u64);
            self.runs(&shown, entry.first_cluster, needed)?
        };
        Ok(FatFile {
            path: shown,
            size,
            runs,
        })
    }

    /// Reads `file`'s bytes from `offset` into `buf`; returns how many:
    /// `buf.len()`, or fewer where the file ends first (0 at or past its
    /// end). Contiguous clusters go in one device read; only a partial
    /// first or last sector passes through a sector buffer.
    ///
    /// # Errors
    ///
    /// [`FsError::Disk`] when the device fails.
    pub fn read_at(
        &mut self,
        file: &FatFile,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        let cluster_bytes = self.cluster_bytes() as u64;
        let len = file.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let index = at / cluster_bytes;
            let Some(run) = file
                .runs
                .get(file.runs.partition_point(|r| r.end() <= index))
            else {
                break;
            };
            // Bytes from the run's start to `at`, and what the run holds
            // from there.
            let into_run = (index - run.index) * cluster_bytes + at % cluster_bytes;
            let left = u64::from(run.count) * cluster_bytes - into_run;
            let take = (len - done).min(usize::try_from(left).unwrap_or(usize::MAX));
            let start = self.data_start + u64::from(run.first - 2) * self.sectors_per_cluster;
            let Some(out) = buf.get_mut(done..done + take) else {
                break;
            };
            self.read_bytes(start, into_run, out)?;
            done += take;
        }
        Ok(done)
    }

    /// Reads `out.len()` bytes starting `offset` bytes into the data from
    /// file system sector `sector`.
    fn read_bytes(&mut self, sector: u64, offset: u64, out: &mut [u8]) -> Result<(), FsError> {
        let bps = self.bytes_per_sector;
        let mut sector = sector + offset / bps as u64;
        let mut skip = (offset % bps as u64) as usize;
        let mut rest = out;
        while !rest.is_empty() {
            if skip == 0 && rest.len() >= bps {
                let whole = rest.len() - rest.len() % bps;
                let (now, later) = rest.split_at_mut(whole);
                self.read_sectors(sector, now)?;
                sector += (whole / bps) as u64;
                rest = later;
                continue;
            }
            let mut bounce = core::mem::take(&mut self.bounce);
            bounce.resize(bps, 0);
            let read = self.read_sectors(sector, &mut bounce);
            let take = rest.len().min(bps - skip);
            let (now, later) = rest.split_at_mut(take);
            if read.is_ok() {
                now.copy_from_slice(bounce.get(skip..skip + take).unwrap_or_default());
            }
            self.bounce = bounce;
            read?;
            sector += 1;
            skip = 0;
            rest = later;
        }
        Ok(())
    }

    /// The file chain from `first` as runs of consecutive clusters,
    /// `needed` clusters long: checked as [`FatVolume::chain`] checks it,
    /// but holding one entry per run instead of one per cluster.
    fn runs(&mut self, path: &str, first: u32, needed: u64) -> Result<Vec<Run>, FsError> {
        let fail = |problem| FsError::Chain {
            path: String::from(path),
            problem,
        };
        let no_memory = |runs: usize| FsError::OutOfMemory {
            path: String::from(path),
            bytes: runs.saturating_mul(2 * size_of::<Run>()),
        };
        if !self.is_data_cluster(first) {
            return Err(fail(ChainProblem::Start(first)));
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut cluster = first;
        let mut clusters = 0u64;
        // Every step adds one cluster and stops at `needed`, so a cyclic
        // chain ends here; the overlap check below finds the cycle.
        loop {
            match runs.last_mut() {
                Some(run) if run.first.checked_add(run.count) == Some(cluster) => run.count += 1,
                _ => {
                    runs.try_reserve(1).map_err(|_| no_memory(runs.len()))?;
                    runs.push(Run {
                        first: cluster,
                        count: 1,
                        index: clusters,
                    });
                }
            }
            clusters += 1;
            if clusters >= needed {
                break;
            }
            match self.next_cluster(path, cluster)? {
                Some(next) => cluster = next,
                None => return Err(fail(ChainProblem::TooShort { clusters, needed })),
            }
        }
        // A cluster visited twice lies in two runs that overlap (a run
        // never repeats a cluster). The walk with every cluster names the
        // cycle as `chain` always has.
        let mut sorted: Vec<(u32, u32)> = Vec::new();
        sorted
            .try_reserve_exact(runs.len())
            .map_err(|_| no_memory(runs.len()))?;
        sorted.extend(runs.iter().map(|r| (r.first, r.count)));
        sorted.sort_unstable();
        let mut end = 0u64;
        for &(start, count) in &sorted {
            if u64::from(start) < end {
                self.chain(path, first, Some(needed))?;
                return Err(fail(ChainProblem::Cycle {
                    cluster: start,
                    next: start,
                }));
            }
            end = u64::from(start) + u64::from(count);
        }
        Ok(runs)
    }

    /// The cluster after `cluster` in its chain, `None` at the end of the
    /// chain; a damaged link is an error naming `path`.
    fn next_cluster(&mut self, path: &str, cluster: u32) -> Result<Option<u32>, FsError> {
        let fail = |problem| FsError::Chain {
            path: String::from(path),
            problem,
        };
        match self.fat_entry(cluster)? {
            0 => Err(fail(ChainProblem::Free(cluster))),
            1 => Err(fail(ChainProblem::Reserved(cluster))),
            n if n >= self.fat_type.end_of_chain() => Ok(None),
            n if n == self.fat_type.bad() => Err(fail(ChainProblem::Bad(cluster))),
            n if !self.is_data_cluster(n) => {
                Err(fail(ChainProblem::OutOfRange { cluster, next: n }))
            }
            n => Ok(Some(n)),
        }
    }

    /// Splits `path` and walks it from the root. Returns the path as
    /// shown in messages and the entry (`None` for the root).
    fn lookup(&mut self, path: &str) -> Result<(String, Option<DirEntry>), FsError> {
        let trimmed = path.trim_matches('/');
        let bad = |reason| FsError::BadPath {
            path: String::from(path),
            reason,
        };
        if trimmed.contains('\\') {
            return Err(bad("'\\' is not a separator; use '/'"));
        }
        let mut dir = self.root_dir();
        let mut entry = None;
        let mut end = 0;
        if trimmed.is_empty() {
            return Ok((String::new(), None));
        }
        for part in trimmed.split('/') {
            if part.is_empty() {
                return Err(bad("empty folder name"));
            }
            if part == "." || part == ".." {
                return Err(bad("'.' and '..' are not allowed"));
            }
        }
        for part in trimmed.split('/') {
            let here = trimmed.get(..end).unwrap_or_default();
            if let Some(DirEntry { is_dir: false, .. }) = entry {
                return Err(FsError::NotADirectory {
                    path: String::from(here),
                });
            }
            let entries = self.dir_entries(dir, here)?;
            end = if end == 0 {
                part.len()
            } else {
                end + 1 + part.len()
            };
            let here = trimmed.get(..end).unwrap_or_default();
            let found = entries
                .into_iter()
                .find(|e| same_name(part, &e.name) || same_name(part, &e.short_name))
                .ok_or_else(|| FsError::NotFound {
                    path: String::from(here),
                })?;
            dir = Dir::Chain(found.first_cluster);
            entry = Some(found);
        }
        Ok((String::from(trimmed), entry))
    }

    /// Where the root directory is.
    fn root_dir(&self) -> Dir {
        if self.fat_type == FatType::Fat32 {
            Dir::Chain(self.root_cluster)
        } else {
            Dir::FixedRoot
        }
    }

    /// The entries of a directory; `path` names it in errors.
    fn dir_entries(&mut self, dir: Dir, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let mut bytes = Vec::new();
        match dir {
            Dir::FixedRoot => {
                // At most 65535 entries, so at most 2 MiB.
                bytes.resize(self.root_sectors as usize * self.bytes_per_sector, 0);
                self.read_sectors(self.root_start, &mut bytes)?;
            }
            Dir::Chain(first) => {
                let chain = self.chain(path, first, None)?;
                // The chain is at most MAX_DIR_BYTES long.
                bytes.resize(chain.len() * self.cluster_bytes(), 0);
                self.read_chain(&chain, &mut bytes)?;
            }
        }
        Ok(parse_dir(&bytes))
    }

    /// The chain from `first`: `needed` clusters for a file (a longer
    /// chain is not followed further), or up to the end-of-chain mark for
    /// a directory (at most [`MAX_DIR_BYTES`]).
    fn chain(&mut self, path: &str, first: u32, needed: Option<u64>) -> Result<Vec<u32>, FsError> {
        let fail = |problem| FsError::Chain {
            path: String::from(path),
            problem,
        };
        if !self.is_data_cluster(first) {
            return Err(fail(ChainProblem::Start(first)));
        }
        let max = (MAX_DIR_BYTES / self.cluster_bytes()) as u64;
        let limit = needed.unwrap_or(max);
        let mut chain = Vec::new();
        let mut cluster = first;
        // Every step adds one cluster and stops at `limit`, so a cyclic
        // chain ends here; the duplicate check below names the cycle. The
        // vector grows with the chain, not with the size claimed.
        loop {
            if chain.try_reserve(1).is_err() {
                return Err(FsError::OutOfMemory {
                    path: String::from(path),
                    bytes: chain.len().saturating_mul(2 * size_of::<u32>()),
                });
            }
            chain.push(cluster);
            if chain.len() as u64 >= limit {
                break;
            }
            match self.next_cluster(path, cluster)? {
                Some(next) => cluster = next,
                None => break,
            }
        }
        match find_cycle(&chain) {
            Ok(None) => {}
            Ok(Some(problem)) => return Err(fail(problem)),
            Err(bytes) => {
                return Err(FsError::OutOfMemory {
                    path: String::from(path),
                    bytes,
                })
            }
        }
        let clusters = chain.len() as u64;
        match needed {
            Some(needed) if clusters < needed => {
                Err(fail(ChainProblem::TooShort { clusters, needed }))
            }
            None if clusters >= max && !self.ends(cluster)? => {
                Err(fail(ChainProblem::TooLong { max }))
            }
            _ => Ok(chain),
        }
    }

    /// Whether `cluster`'s FAT entry ends its chain.
    fn ends(&mut self, cluster: u32) -> Result<bool, FsError> {
        Ok(self.fat_entry(cluster)? >= self.fat_type.end_of_chain())
    }

    /// Whether `n` numbers a data cluster.
    fn is_data_cluster(&self, n: u32) -> bool {
        n >= 2 && n - 2 < self.clusters
    }

    /// Reads the clusters of `chain`, in order, into `out` (whose length
    /// is a whole number of sectors and at most the chain's bytes):
    /// contiguous clusters go in one read.
    fn read_chain(&mut self, chain: &[u32], out: &mut [u8]) -> Result<(), FsError> {
        let cluster_bytes = self.cluster_bytes();
        let mut rest = out;
        let mut i = 0;
        while !rest.is_empty() {
            let Some(&start) = chain.get(i) else {
                break;
            };
            let mut run = 1;
            while chain.get(i + run).copied() == start.checked_add(run as u32) {
                run += 1;
            }
            i += run;
            let take = rest.len().min(run.saturating_mul(cluster_bytes));
            let (now, later) = rest.split_at_mut(take);
            let sector =
                self.data_start + u64::from(start.saturating_sub(2)) * self.sectors_per_cluster;
            self.read_sectors(sector, now)?;
            rest = later;
        }
        Ok(())
    }

    /// Reads file system sectors from `sector` into `buf` (a whole number
    /// of sectors), at most [`MAX_READ_BYTES`] per device read.
    fn read_sectors(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let count = (buf.len() / self.bytes_per_sector) as u64;
        let outside = DiskError::OutOfRange {
            lba: self
                .first_lba
                .saturating_add(sector.saturating_mul(self.disk_per_fs)),
            count: count.saturating_mul(self.disk_per_fs),
            sectors: self.dev.sectors(),
        };
        // Callers pass only sectors inside the volume; a miss is a bug
        // here, reported as a read outside the partition.
        if sector
            .checked_add(count)
            .is_none_or(|end| end > self.total_sectors)
        {
            return Err(outside.into());
        }
        let mut lba = self.first_lba + sector * self.disk_per_fs;
        let disk_sector = self.bytes_per_sector as u64 / self.disk_per_fs;
        for chunk in buf.chunks_mut(MAX_READ_BYTES) {
            self.dev.read(lba, chunk)?;
            lba += chunk.len() as u64 / disk_sector;
        }
        Ok(())
    }

    /// The FAT entry of `cluster` (a data cluster), through the one-sector
    /// cache (fatgen103 section 4: FAT12 entries are 12 bits packed in
    /// pairs and may straddle a sector boundary; FAT32 entries use their
    /// low 28 bits).
    fn fat_entry(&mut self, cluster: u32) -> Result<u32, FsError> {
        let n = u64::from(cluster);
        Ok(match self.fat_type {
            FatType::Fat12 => {
                let at = n + n / 2;
                let pair = u16::from_le_bytes([self.fat_byte(at)?, self.fat_byte(at + 1)?]);
                u32::from(if cluster % 2 == 1 {
                    pair >> 4
                } else {
                    pair & 0x0FFF
                })
            }
            FatType::Fat16 => {
                let at = n * 2;
                u32::from(u16::from_le_bytes([
                    self.fat_byte(at)?,
                    self.fat_byte(at + 1)?,
                ]))
            }
            FatType::Fat32 => {
                let at = n * 4;
                let mut b = [0; 4];
                for (k, slot) in (0u64..).zip(b.iter_mut()) {
                    *slot = self.fat_byte(at + k)?;
                }
                u32::from_le_bytes(b) & 0x0FFF_FFFF
            }
        })
    }

    /// Byte `at` of the FAT in use.
    fn fat_byte(&mut self, at: u64) -> Result<u8, FsError> {
        let bps = self.bytes_per_sector as u64;
        let sector = self.fat_start + at / bps;
        let index = (at % bps) as usize;
        if let Some((cached, bytes)) = &self.cache {
            if *cached == sector {
                return Ok(byte(bytes, index));
            }
        }
        let mut bytes = self.cache.take().map(|(_, b)| b).unwrap_or_default();
        bytes.resize(self.bytes_per_sector, 0);
        self.read_sectors(sector, &mut bytes)?;
        let value = byte(&bytes, index);
        self.cache = Some((sector, bytes));
        Ok(value)
    }
}

/// The first link back into `chain`, if any: the first position whose
/// cluster came earlier, and the cluster before it, which links there.
/// The error is the bytes of the sorted copy that could not be allocated.
fn find_cycle(chain: &[u32]) -> Result<Option<ChainProblem>, usize> {
    let mut sorted: Vec<(u32, usize)> = Vec::new();
    if sorted.try_reserve_exact(chain.len()).is_err() {
        return Err(chain.len().saturating_mul(size_of::<(u32, usize)>()));
    }
    sorted.extend(chain.iter().copied().zip(0..));
    // By cluster, then position: in each run of one cluster the second
    // pair is that cluster's second visit.
    sorted.sort_unstable();
    let second_visit = sorted
        .windows(2)
        .filter_map(|w| match w {
            [a, b] if a.0 == b.0 => Some(b.1),
            _ => None,
        })
        .min();
    Ok(second_visit.and_then(|at| {
        Some(ChainProblem::Cycle {
            cluster: *chain.get(at.checked_sub(1)?)?,
            next: *chain.get(at)?,
        })
    }))
}

/// Whether two names are the same as FAT compares them: ignoring case.
fn same_name(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// An 8.3 name byte as a character: ASCII as itself, anything else (an
/// OEM code page character) as U+FFFD.
fn oem_char(b: u8) -> char {
    if b.is_ascii() && !b.is_ascii_control() {
        char::from(b)
    } else {
        char::REPLACEMENT_CHARACTER
    }
}

/// The checksum of an 8.3 name that its long-name entries carry
/// (fatgen103 section 7: rotate right by one, add the next byte).
fn short_name_checksum(name: &[u8]) -> u8 {
    name.iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// A long name being gathered from its entries, which come last part
/// first (fatgen103 section 7).
struct LongName {
    /// 13 code units per entry, in name order.
    units: Vec<u16>,
    /// The checksum every entry carries.
    checksum: u8,
    /// The sequence number the next entry must have; 0 once complete.
    next: u8,
}

/// The directory entries in `bytes`, up to the first free-and-last
/// marker. Long names that are out of order, incomplete or whose checksum
/// does not match the 8.3 entry are dropped, and the 8.3 name used, as
/// fatgen103 section 7 asks.
fn parse_dir(bytes: &[u8]) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let mut long: Option<LongName> = None;
    for raw in bytes.as_chunks::<DIR_ENTRY>().0 {
        let first = byte(raw, 0);
        if first == 0x00 {
            break;
        }
        let attributes = byte(raw, 11);
        if first == 0xE5 {
            long = None;
            continue;
        }
        if attributes & attr::LONG_NAME_MASK == attr::LONG_NAME {
            long = long_name_entry(long.take(), raw);
            continue;
        }
        let name83 = raw.get(..11).unwrap_or_default();
        let long_name = long
            .take()
            .filter(|l| l.next == 0 && l.checksum == short_name_checksum(name83))
            .and_then(|l| decode_long(&l.units));
        if attributes & attr::VOLUME_ID != 0 {
            continue;
        }
        if name83 == b".          " || name83 == b"..         " {
            continue;
        }
        let (short_name, cased) = short_names(raw);
        let is_dir = attributes & attr::DIRECTORY != 0;
        out.push(DirEntry {
            name: long_name.unwrap_or(cased),
            short_name,
            is_dir,
            size: if is_dir { 0 } else { le32(raw, 28) },
            first_cluster: (u32::from(le16(raw, 20)) << 16) | u32::from(le16(raw, 26)),
            attributes,
        });
    }
    out
}

/// Adds one long-name entry to the name being gathered, or starts a new
/// one; `None` when the sequence is broken.
fn long_name_entry(current: Option<LongName>, raw: &[u8]) -> Option<LongName> {
    let order = byte(raw, 0);
    let seq = order & 0x1F;
    let checksum = byte(raw, 13);
    if seq == 0 || seq > MAX_LFN_ENTRIES {
        return None;
    }
    let mut name = if order & 0x40 != 0 {
        // The last part of the name comes first and says how many parts
        // there are.
        LongName {
            units: vec![0xFFFF; usize::from(seq) * LFN_UNITS],
            checksum,
            next: seq,
        }
    } else {
        current.filter(|l| l.next == seq && l.checksum == checksum)?
    };
    // Characters 1-5 at bytes 1-10, 6-11 at 14-25, 12-13 at 28-31.
    let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    let base = usize::from(seq - 1) * LFN_UNITS;
    for (k, at) in offsets.into_iter().enumerate() {
        if let Some(slot) = name.units.get_mut(base + k) {
            *slot = le16(raw, at);
        }
    }
    name.next = seq - 1;
    Some(name)
}

/// The long name in `units`: up to the first NUL, `None` if empty.
fn decode_long(units: &[u16]) -> Option<String> {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    let units = units.get(..end)?;
    if units.is_empty() {
        return None;
    }
    Some(
        char::decode_utf16(units.iter().copied())
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    )
}

/// The 8.3 name as stored (`HELLO.BIN`) and as shown when there is no
/// long name, lower-cased where the Windows NT case bits (byte 12: 0x08
/// name, 0x10 extension) say so (`hello.bin`).
fn short_names(raw: &[u8]) -> (String, String) {
    let nt_case = byte(raw, 12);
    let field = |range: core::ops::Range<usize>, lower: bool| -> (String, String) {
        let bytes = raw.get(range.clone()).unwrap_or_default();
        let len = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        let mut stored = String::new();
        let mut shown = String::new();
        for (k, &b) in bytes.iter().take(len).enumerate() {
            // 0x05 in the first byte stands for 0xE5, which marks free
            // entries (fatgen103 section 6, DIR_Name[0]).
            let b = if range.start == 0 && k == 0 && b == 0x05 {
                0xE5
            } else {
                b
            };
            let c = oem_char(b);
            stored.push(c);
            shown.push(if lower { c.to_ascii_lowercase() } else { c });
        }
        (stored, shown)
    };
    let (base, base_shown) = field(0..8, nt_case & 0x08 != 0);
    let (ext, ext_shown) = field(8..11, nt_case & 0x10 != 0);
    if ext.is_empty() {
        (base, base_shown)
    } else {
        (format!("{base}.{ext}"), format!("{base_shown}.{ext_shown}"))
    }
}

#[cfg(test)]
mod tests;
