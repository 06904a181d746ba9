//! Test-only builders for the disk tests: a GPT writer with correct
//! CRCs (and helpers to damage one field and re-seal the CRCs so that a
//! single check fires), FAT images made with mtools, and block devices
//! that fail or patch reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::block::{check_read, BlockDevice, DiskError};
use super::gpt::{crc32, Guid};

/// One partition for [`write_gpt`].
#[derive(Clone, Debug)]
pub struct Part {
    /// Entry index.
    pub index: u32,
    /// Type GUID.
    pub type_guid: Guid,
    /// Unique GUID.
    pub unique_guid: Guid,
    /// First LBA.
    pub first: u64,
    /// Last LBA.
    pub last: u64,
    /// Attributes.
    pub attributes: u64,
    /// Name (at most 36 UTF-16 units).
    pub name: String,
}

/// A disk layout for [`write_gpt`].
#[derive(Clone, Debug)]
pub struct Layout {
    /// Bytes per sector.
    pub sector_size: usize,
    /// Sectors on the disk.
    pub sectors: u64,
    /// Entries in the array.
    pub entries: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Partitions.
    pub parts: Vec<Part>,
}

impl Layout {
    /// 512-byte sectors, 128 entries of 128 bytes.
    pub fn new(sectors: u64, parts: Vec<Part>) -> Self {
        Self {
            sector_size: 512,
            sectors,
            entries: 128,
            entry_size: 128,
            disk_guid: Guid::from_fields(0x1234_5678, 0x9abc, 0xdef0, *b"ferrodsk"),
            parts,
        }
    }

    /// Sectors of one entry array.
    pub fn array_sectors(&self) -> u64 {
        (u64::from(self.entries) * u64::from(self.entry_size)).div_ceil(self.sector_size as u64)
    }

    /// First usable LBA.
    pub fn first_usable(&self) -> u64 {
        2 + self.array_sectors()
    }

    /// Last usable LBA.
    pub fn last_usable(&self) -> u64 {
        self.sectors - 2 - self.array_sectors()
    }
}

/// A partition with a made-up unique GUID.
pub fn part(index: u32, type_guid: Guid, first: u64, last: u64, name: &str) -> Part {
    Part {
        index,
        type_guid,
        unique_guid: Guid::from_fields(0xaaaa_0000 + index, 0x1111, 0x2222, [index as u8; 8]),
        first,
        last,
        attributes: u64::from(index) << 48,
        name: name.to_string(),
    }
}

fn put(disk: &mut [u8], at: usize, bytes: &[u8]) {
    disk[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Writes a protective MBR, both headers and both arrays (UEFI 2.10
/// 5.2.3, 5.3.2, 5.3.3) into a zeroed disk.
pub fn write_gpt(layout: &Layout) -> Vec<u8> {
    let ss = layout.sector_size;
    let mut disk = vec![0u8; ss * layout.sectors as usize];
    // Protective MBR: one record of type 0xEE from LBA 1 to the end.
    let rec = 446;
    put(
        &mut disk,
        rec,
        &[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF],
    );
    put(&mut disk, rec + 8, &1u32.to_le_bytes());
    let size = u32::try_from(layout.sectors - 1).unwrap_or(u32::MAX);
    put(&mut disk, rec + 12, &size.to_le_bytes());
    put(&mut disk, 510, &[0x55, 0xAA]);

    let mut array = vec![0u8; layout.array_sectors() as usize * ss];
    for p in &layout.parts {
        let at = p.index as usize * layout.entry_size as usize;
        put(&mut array, at, &p.type_guid.to_bytes());
        put(&mut array, at + 16, &p.unique_guid.to_bytes());
        put(&mut array, at + 32, &p.first.to_le_bytes());
        put(&mut array, at + 40, &p.last.to_le_bytes());
        put(&mut array, at + 48, &p.attributes.to_le_bytes());
        let name: Vec<u8> = p.name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        put(&mut array, at + 56, &name[..name.len().min(72)]);
    }
    let array_len = layout.entries as usize * layout.entry_size as usize;
    let array_crc = crc32(&array[..array_len]);

    let last = layout.sectors - 1;
    let backup_array = last - layout.array_sectors();
    for (my, alternate, entry_lba) in [(1, last, 2), (last, 1, backup_array)] {
        put(&mut disk, entry_lba as usize * ss, &array);
        let h = my as usize * ss;
        put(&mut disk, h, b"EFI PART");
        put(&mut disk, h + 8, &0x0001_0000u32.to_le_bytes());
        put(&mut disk, h + 12, &92u32.to_le_bytes());
        put(&mut disk, h + 24, &my.to_le_bytes());
        put(&mut disk, h + 32, &alternate.to_le_bytes());
        put(&mut disk, h + 40, &layout.first_usable().to_le_bytes());
        put(&mut disk, h + 48, &layout.last_usable().to_le_bytes());
        put(&mut disk, h + 56, &layout.disk_guid.to_bytes());
        put(&mut disk, h + 72, &entry_lba.to_le_bytes());
        put(&mut disk, h + 80, &layout.entries.to_le_bytes());
        put(&mut disk, h + 84, &layout.entry_size.to_le_bytes());
        put(&mut disk, h + 88, &array_crc.to_le_bytes());
        seal_header(&mut disk, ss, my);
    }
    disk
}

fn field_u32(disk: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(disk[at..at + 4].try_into().unwrap())
}

fn field_u64(disk: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(disk[at..at + 8].try_into().unwrap())
}

/// Recomputes the CRC of the header at `lba` over its header-size bytes.
pub fn seal_header(disk: &mut [u8], ss: usize, lba: u64) {
    let h = lba as usize * ss;
    let size = (field_u32(disk, h + 12) as usize).clamp(20, ss);
    put(disk, h + 16, &[0; 4]);
    let crc = crc32(&disk[h..h + size]);
    put(disk, h + 16, &crc.to_le_bytes());
}

/// Recomputes the entry-array CRC of the header at `lba` (from its own
/// array fields), then the header's CRC.
pub fn seal_array(disk: &mut [u8], ss: usize, lba: u64) {
    let h = lba as usize * ss;
    let entry_lba = field_u64(disk, h + 72) as usize;
    let len = field_u32(disk, h + 80) as usize * field_u32(disk, h + 84) as usize;
    // Fields damaged out of range (by a proptest) leave the old CRC.
    let array = entry_lba
        .checked_mul(ss)
        .and_then(|start| disk.get(start..start.checked_add(len)?));
    if let Some(array) = array {
        let crc = crc32(array);
        put(disk, h + 88, &crc.to_le_bytes());
    }
    seal_header(disk, ss, lba);
}

/// The byte offset of entry `index` of the array of the header at `lba`.
pub fn entry_offset(disk: &[u8], ss: usize, lba: u64, index: usize) -> usize {
    let h = lba as usize * ss;
    field_u64(disk, h + 72) as usize * ss + index * field_u32(disk, h + 84) as usize
}

/// A block device that fails every read touching `bad_lba`.
pub struct FailingDisk<'a> {
    /// The disk.
    pub bytes: &'a [u8],
    /// The sector that cannot be read.
    pub bad_lba: u64,
}

impl BlockDevice for FailingDisk<'_> {
    fn sector_size(&self) -> u32 {
        512
    }
    fn sectors(&self) -> u64 {
        self.bytes.len() as u64 / 512
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let count = check_read(512, self.sectors(), lba, buf.len())?;
        if (lba..lba + count).contains(&self.bad_lba) {
            return Err(DiskError::Device {
                lba,
                message: "uncorrectable data".to_string(),
            });
        }
        let start = lba as usize * 512;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
}

/// A disk over shared bytes with some bytes replaced, so that proptests
/// can damage a large image without copying it.
pub struct PatchedDisk<'a> {
    /// The image.
    pub bytes: &'a [u8],
    /// Byte offset to new value.
    pub patches: BTreeMap<usize, u8>,
}

impl BlockDevice for PatchedDisk<'_> {
    fn sector_size(&self) -> u32 {
        512
    }
    fn sectors(&self) -> u64 {
        self.bytes.len() as u64 / 512
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_read(512, self.sectors(), lba, buf.len())?;
        let start = lba as usize * 512;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        for (&at, &value) in self.patches.range(start..start + buf.len()) {
            buf[at - start] = value;
        }
        Ok(())
    }
}

/// One step in building a FAT image with mtools.
pub enum Op<'a> {
    /// `mmd`: make a directory.
    Dir(&'a str),
    /// `mcopy`: copy in a file with these contents.
    File(&'a str, &'a [u8]),
    /// `mdel`: delete a file.
    Delete(&'a str),
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn mtools(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (is mtools installed?): {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A FAT image formatted with `mformat -C -i IMG <format> ::` and filled
/// by `ops`.
pub fn mtools_image(format: &[&str], ops: &[Op<'_>]) -> Vec<u8> {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "ferrovisor-kernel-fat-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("fat.img");
    let img_s = img.to_str().unwrap();
    let mut args = vec!["mformat", "-C", "-i", img_s];
    args.extend_from_slice(format);
    args.push("::");
    mtools(&args);
    for op in ops {
        match op {
            Op::Dir(path) => mtools(&["mmd", "-i", img_s, &format!("::/{path}")]),
            Op::File(path, data) => {
                let host = dir.join("file");
                std::fs::write(&host, data).unwrap();
                mtools(&[
                    "mcopy",
                    "-i",
                    img_s,
                    host.to_str().unwrap(),
                    &format!("::/{path}"),
                ]);
            }
            Op::Delete(path) => mtools(&["mdel", "-i", img_s, &format!("::/{path}")]),
        }
    }
    let bytes = std::fs::read(&img).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

/// `len` bytes of a xorshift stream from `seed`, so that every file's
/// contents differ and a misplaced cluster shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
