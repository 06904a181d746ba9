//! Block devices: the [`BlockDevice`] trait the disk drivers (ATA PIO,
//! AHCI) implement, the [`DiskError`] every disk read can end in, and
//! [`MemDisk`], a device over bytes in memory (the ramdisk fallback and
//! the host tests).
//!
//! Everything above this trait (GPT, FAT) reads whole sectors through it
//! and never sees the hardware, so it is tested on the host over
//! [`MemDisk`].

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::gpt::GptError;

/// Smallest sector size accepted: an MBR and a GPT header need 512 bytes.
pub const MIN_SECTOR_SIZE: u32 = 512;
/// Largest sector size accepted (4Kn disks; nothing larger is sold).
pub const MAX_SECTOR_SIZE: u32 = 4096;

/// A disk read in whole sectors.
pub trait BlockDevice {
    /// Bytes per sector: a power of two from 512 to 4096.
    fn sector_size(&self) -> u32;

    /// The number of sectors on the device; valid LBAs are
    /// `0..sectors()`.
    fn sectors(&self) -> u64;

    /// Reads `buf.len() / sector_size()` sectors starting at `lba` into
    /// `buf`. `buf` must hold a whole number of sectors (it may be empty);
    /// [`check_read`] checks a request against the device's geometry.
    ///
    /// Callers here never ask for more than [`MAX_READ_BYTES`] at once,
    /// so a driver whose command moves fewer sectors must still split
    /// a request of that size itself.
    ///
    /// # Errors
    ///
    /// [`DiskError::BufferSize`] when `buf` is not a whole number of
    /// sectors, [`DiskError::OutOfRange`] when the sectors run past the
    /// end, and whatever the device reports ([`DiskError::Device`],
    /// [`DiskError::Timeout`]).
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError>;
}

/// The most bytes the GPT and FAT code asks for in one
/// [`BlockDevice::read`] call (256 sectors of 512 bytes: one 28-bit ATA
/// command).
pub const MAX_READ_BYTES: usize = 128 * 1024;

/// Why a disk could not be read, or its partition table not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The device reported an error for a read at `lba`.
    Device {
        /// The first sector of the failed read.
        lba: u64,
        /// What the device said (status and error registers, in words).
        message: String,
    },
    /// The device did not finish a read at `lba` in time.
    Timeout {
        /// The first sector of the read.
        lba: u64,
    },
    /// A read of `count` sectors at `lba` runs past the end of a device of
    /// `sectors` sectors.
    OutOfRange {
        /// The first sector asked for.
        lba: u64,
        /// How many sectors.
        count: u64,
        /// The device's size in sectors.
        sectors: u64,
    },
    /// A read buffer of `len` bytes is not a whole number of sectors.
    BufferSize {
        /// The buffer's length.
        len: usize,
        /// The device's sector size.
        sector_size: u32,
    },
    /// The device reports a sector size that is not a power of two from
    /// 512 to 4096.
    SectorSize {
        /// The size reported.
        size: u32,
    },
    /// The disk's GUID partition table cannot be used.
    Gpt(GptError),
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device { lba, message } => {
                write!(f, "disk: read at LBA {lba} failed: {message}")
            }
            Self::Timeout { lba } => write!(f, "disk: read at LBA {lba} timed out"),
            Self::OutOfRange {
                lba,
                count,
                sectors,
            } => write!(
                f,
                "disk: read of {count} sectors at LBA {lba} runs past the end of the \
                 disk ({sectors} sectors)"
            ),
            Self::BufferSize { len, sector_size } => write!(
                f,
                "disk: read buffer of {len} bytes is not a whole number of \
                 {sector_size}-byte sectors"
            ),
            Self::SectorSize { size } => write!(
                f,
                "disk: sector size {size} is not a power of two from \
                 {MIN_SECTOR_SIZE} to {MAX_SECTOR_SIZE}"
            ),
            Self::Gpt(e) => write!(f, "disk: {e}"),
        }
    }
}

impl From<GptError> for DiskError {
    fn from(e: GptError) -> Self {
        Self::Gpt(e)
    }
}

/// Whether `size` is a sector size this code handles.
pub const fn valid_sector_size(size: u32) -> bool {
    size.is_power_of_two() && size >= MIN_SECTOR_SIZE && size <= MAX_SECTOR_SIZE
}

/// Checks a read of `len` bytes at `lba` against a device of `sectors`
/// sectors of `sector_size` bytes, and returns the number of sectors it
/// covers. Drivers call it first so that every device refuses bad
/// requests the same way.
///
/// # Errors
///
/// [`DiskError::SectorSize`], [`DiskError::BufferSize`] or
/// [`DiskError::OutOfRange`].
pub fn check_read(sector_size: u32, sectors: u64, lba: u64, len: usize) -> Result<u64, DiskError> {
    if !valid_sector_size(sector_size) {
        return Err(DiskError::SectorSize { size: sector_size });
    }
    let size = sector_size as usize;
    if !len.is_multiple_of(size) {
        return Err(DiskError::BufferSize { len, sector_size });
    }
    let count = (len / size) as u64;
    match lba.checked_add(count) {
        Some(end) if end <= sectors => Ok(count),
        _ => Err(DiskError::OutOfRange {
            lba,
            count,
            sectors,
        }),
    }
}

/// `dev`'s sector size in bytes, checked.
pub(crate) fn sector_bytes(dev: &dyn BlockDevice) -> Result<usize, DiskError> {
    let size = dev.sector_size();
    if valid_sector_size(size) {
        Ok(size as usize)
    } else {
        Err(DiskError::SectorSize { size })
    }
}

/// Reads `count` sectors at `lba` into a new vector. Only for the few
/// sectors of a table: `count` comes from validated headers.
pub(crate) fn read_sectors(
    dev: &mut dyn BlockDevice,
    lba: u64,
    count: usize,
) -> Result<Vec<u8>, DiskError> {
    let size = sector_bytes(dev)?;
    let mut buf = vec![0; size.saturating_mul(count)];
    dev.read(lba, &mut buf)?;
    Ok(buf)
}

/// A block device over bytes in memory: the boot ramdisk when there is no
/// disk driver, and the disks the host tests build. A trailing partial
/// sector is not part of the device.
#[derive(Clone, Copy, Debug)]
pub struct MemDisk<'a> {
    bytes: &'a [u8],
    sector_size: u32,
}

impl<'a> MemDisk<'a> {
    /// A device of 512-byte sectors over `bytes`.
    pub const fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            sector_size: MIN_SECTOR_SIZE,
        }
    }

    /// A device of `sector_size`-byte sectors over `bytes`.
    ///
    /// # Errors
    ///
    /// [`DiskError::SectorSize`] unless `sector_size` is a power of two
    /// from 512 to 4096.
    pub const fn with_sector_size(bytes: &'a [u8], sector_size: u32) -> Result<Self, DiskError> {
        if valid_sector_size(sector_size) {
            Ok(Self { bytes, sector_size })
        } else {
            Err(DiskError::SectorSize { size: sector_size })
        }
    }
}

impl BlockDevice for MemDisk<'_> {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn sectors(&self) -> u64 {
        (self.bytes.len() / self.sector_size as usize) as u64
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let count = check_read(self.sector_size, self.sectors(), lba, buf.len())?;
        let out_of_range = DiskError::OutOfRange {
            lba,
            count,
            sectors: self.sectors(),
        };
        // `check_read` put the range inside `bytes`, so these conversions
        // and the slice cannot fail; they are checked all the same.
        let start = usize::try_from(lba)
            .ok()
            .and_then(|lba| lba.checked_mul(self.sector_size as usize))
            .ok_or_else(|| out_of_range.clone())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(start..end))
            .ok_or(out_of_range)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn mem_disk_reads_whole_sectors() {
        let bytes: Vec<u8> = (0..2048u32).map(|i| (i / 512) as u8 + 1).collect();
        let mut disk = MemDisk::new(&bytes);
        assert_eq!(disk.sectors(), 4);
        assert_eq!(disk.sector_size(), 512);
        let mut buf = vec![0; 1024];
        disk.read(2, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 3));
        assert!(buf[512..].iter().all(|&b| b == 4));
        disk.read(4, &mut []).unwrap();
    }

    #[test]
    fn mem_disk_ignores_a_trailing_partial_sector() {
        let bytes = vec![0; 512 * 3 + 100];
        let mut disk = MemDisk::new(&bytes);
        assert_eq!(disk.sectors(), 3);
        let mut buf = vec![0; 512];
        assert_eq!(
            disk.read(3, &mut buf),
            Err(DiskError::OutOfRange {
                lba: 3,
                count: 1,
                sectors: 3
            })
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let bytes = vec![0; 4096 * 2];
        let mut disk = MemDisk::with_sector_size(&bytes, 4096).unwrap();
        assert_eq!(disk.sectors(), 2);
        let mut buf = vec![0; 512];
        assert_eq!(
            disk.read(0, &mut buf),
            Err(DiskError::BufferSize {
                len: 512,
                sector_size: 4096
            })
        );
        let mut buf = vec![0; 4096];
        assert!(matches!(
            disk.read(u64::MAX, &mut buf),
            Err(DiskError::OutOfRange { lba: u64::MAX, .. })
        ));
        for size in [0, 256, 513, 8192] {
            assert_eq!(
                MemDisk::with_sector_size(&bytes, size).err(),
                Some(DiskError::SectorSize { size })
            );
        }
    }

    #[test]
    fn messages_name_the_sector() {
        let e = DiskError::Device {
            lba: 77,
            message: "status 0x51, error 0x40 (uncorrectable data)".to_string(),
        };
        assert_eq!(
            e.to_string(),
            "disk: read at LBA 77 failed: status 0x51, error 0x40 (uncorrectable data)"
        );
        assert_eq!(
            DiskError::Timeout { lba: 9 }.to_string(),
            "disk: read at LBA 9 timed out"
        );
        assert_eq!(
            check_read(512, 10, 8, 1536).unwrap_err().to_string(),
            "disk: read of 3 sectors at LBA 8 runs past the end of the disk (10 sectors)"
        );
    }
}
