//! Disks, read-only: block devices ([`block`]), the GUID partition table
//! ([`gpt`]) and FAT file systems ([`fat`]), and on top of them the
//! config partition the boot path reads `hypervisor.toml` and the guest
//! images from ([`find_config_partition`], [`ConfigFs`]).
//!
//! The disk drivers (ATA PIO, AHCI) live in the binary and implement
//! [`BlockDevice`]; everything here is pure and tested on the host over
//! [`MemDisk`].
//!
//! The boot disk is GPT-partitioned: the bootloader's partitions and a
//! FAT partition of type [`gpt::CONFIG_PARTITION_TYPE`] named
//! [`gpt::CONFIG_PARTITION_NAME`] (`FERROCFG`). Paths inside it are as
//! in `hypervisor.toml`: relative to the partition's root, `/` between
//! folders, matched case-insensitively as FAT does.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod block;
pub mod fat;
pub mod gpt;

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use config::files::ConfigFiles;

pub use self::gpt::{Gpt, GptError, Guid, Partition};
pub use block::{BlockDevice, DiskError, MemDisk};
pub use fat::{DirEntry, FatFile, FatType, FatVolume, FsError};

/// Finds Ferrovisor's config partition on `dev` (see
/// [`Gpt::config_partition`]). A disk without any GPT gives `Ok(None)`;
/// when the primary GPT is damaged and the backup is used, a warning
/// names the primary's problem.
///
/// # Errors
///
/// A [`DiskError`] when the disk cannot be read, when its GPT is damaged
/// beyond the backup's help, or when two partitions qualify.
pub fn find_config_partition(dev: &mut dyn BlockDevice) -> Result<Option<Partition>, DiskError> {
    let table = match Gpt::read(dev) {
        Ok(table) => table,
        Err(DiskError::Gpt(GptError::NotGpt)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Some(problem) = table.primary_problem() {
        log::warn!(
            "disk: {problem}; using the backup GPT at LBA {}",
            table.header_lba
        );
    }
    Ok(table.config_partition()?.cloned())
}

/// The files of the config partition (or of the ramdisk's FAT image): a
/// [`ConfigFiles`] source, and
/// [`ConfigFs::read_file`] and [`ConfigFs::exists`] also take `&self`, so
/// `exists` can be handed to [`config::check_images`] as a plain
/// closure.
#[derive(Debug)]
pub struct ConfigFs<'d> {
    volume: RefCell<FatVolume<'d>>,
    fat_type: FatType,
    label: Option<String>,
    /// Where the files are, for the log.
    source: String,
    /// The files [`ConfigFiles::read_at`] read lately, most recent last,
    /// at most [`OPEN_FILES`]: a guest's kernel and initrd stay open
    /// while they load.
    open: Vec<FatFile>,
}

/// How many open files a [`ConfigFs`] keeps.
const OPEN_FILES: usize = 4;

impl<'d> ConfigFs<'d> {
    /// Opens the FAT file system on `partition` of `dev`; its source, for
    /// the log, is `partition <name>` until [`ConfigFs::with_source`]
    /// names the disk too.
    ///
    /// # Errors
    ///
    /// As [`FatVolume::open`].
    pub fn open(dev: &'d mut dyn BlockDevice, partition: &Partition) -> Result<Self, FsError> {
        let volume = FatVolume::open(dev, partition.first_lba, partition.sectors())?;
        Ok(Self::new(volume).with_source(format!("partition {}", partition.name)))
    }

    /// Serves the files of an already open volume (a FAT image as the
    /// whole ramdisk, say); its source is `the FAT volume` until
    /// [`ConfigFs::with_source`] says more.
    pub fn new(volume: FatVolume<'d>) -> Self {
        Self {
            fat_type: volume.fat_type(),
            label: volume.label().map(String::from),
            volume: RefCell::new(volume),
            source: String::from("the FAT volume"),
            open: Vec::new(),
        }
    }

    /// Names where the files are, for the log and the errors of
    /// [`ConfigFiles::read`] (`disk ata0-master partition FERROCFG`).
    pub fn with_source(mut self, source: String) -> Self {
        self.source = source;
        self
    }

    /// The contents of the file at `path` (`"hypervisor.toml"`,
    /// `"guests/a.bin"`; a leading `/` means the same), if it is at most
    /// `limit` bytes.
    ///
    /// # Errors
    ///
    /// As [`FatVolume::read_file`]; [`FsError::Busy`] if called from
    /// inside another call on the same `ConfigFs` (which nothing does).
    pub fn read_file(&self, path: &str, limit: usize) -> Result<Vec<u8>, FsError> {
        self.volume
            .try_borrow_mut()
            .map_err(|_| FsError::Busy)?
            .read_file(path, limit)
    }

    /// Whether `path` is a regular file on the partition. A path that
    /// cannot be looked up (a damaged directory, a read error) is reported
    /// as missing; [`ConfigFs::read_file`] names the reason.
    pub fn exists(&self, path: &str) -> bool {
        self.volume
            .try_borrow_mut()
            .is_ok_and(|mut v| v.is_file(path))
    }

    /// The entries of the directory at `path` (`""` for the root).
    ///
    /// # Errors
    ///
    /// As [`FatVolume::read_dir`], and [`FsError::Busy`] as for
    /// [`ConfigFs::read_file`].
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        self.volume
            .try_borrow_mut()
            .map_err(|_| FsError::Busy)?
            .read_dir(path)
    }

    /// The open file at `path`, opened now if it is not already, as an
    /// index into `open`; `Ok(None)` when there is no such file.
    fn open_file(&mut self, path: &str) -> Result<Option<usize>, String> {
        let trimmed = path.trim_matches('/');
        if let Some(i) = self.open.iter().position(|f| f.path() == trimmed) {
            return Ok(Some(i));
        }
        let opened = self
            .volume
            .try_borrow_mut()
            .map_err(|_| FsError::Busy)
            .and_then(|mut v| v.open_file(path));
        match opened {
            Ok(file) => {
                if self.open.len() >= OPEN_FILES {
                    self.open.remove(0);
                }
                self.open.push(file);
                Ok(Some(self.open.len() - 1))
            }
            Err(FsError::NotFound { .. } | FsError::NotADirectory { .. }) => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.source)),
        }
    }

    /// FAT12, FAT16 or FAT32, for the boot log.
    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// The volume label (`FERROCFG`), if the boot sector has one.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl<'a> ConfigFiles<'a> for ConfigFs<'_> {
    fn source(&self) -> &str {
        &self.source
    }

    /// Reads always copy into the heap; a missing file (or a missing
    /// folder on its path) is `Ok(None)`, anything else an error naming
    /// the source, the file and the problem.
    fn read(&mut self, path: &str, limit: u64) -> Result<Option<Cow<'a, [u8]>>, String> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match self.read_file(path, limit) {
            Ok(data) => Ok(Some(Cow::Owned(data))),
            Err(FsError::NotFound { .. } | FsError::NotADirectory { .. }) => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.source)),
        }
    }

    fn size(&mut self, path: &str) -> Result<Option<u64>, String> {
        let open = self.open_file(path)?;
        Ok(open.and_then(|i| self.open.get(i)).map(FatFile::size))
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        let file = self
            .open_file(path)?
            .and_then(|i| self.open.get(i))
            .ok_or_else(|| {
                format!(
                    "{}: {}",
                    self.source,
                    FsError::NotFound {
                        path: String::from(path.trim_matches('/'))
                    }
                )
            })?;
        self.volume
            .try_borrow_mut()
            .map_err(|_| FsError::Busy)
            .and_then(|mut v| v.read_at(file, offset, buf))
            .map_err(|e| format!("{}: {e}", self.source))
    }

    fn exists(&mut self, path: &str) -> bool {
        ConfigFs::exists(self, path)
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
