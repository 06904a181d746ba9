//! The one disk image Ferrovisor ships: a GPT disk with a hybrid MBR that
//! boots by BIOS and by UEFI and carries the FAT32 config partition
//! `FERROCFG`.
//!
//! The rust-osdev `bootloader` writes two disks, an MBR one for BIOS and a
//! GPT one for UEFI. [`hybrid_image`] takes the pieces out of both and lays
//! them out on one disk (LBAs of 512 bytes; every partition starts on a
//! 1 MiB boundary):
//!
//! ```text
//! LBA 0          hybrid MBR: the BIOS image's boot code (bytes 0..446), then
//!                  [0] stage 2          type 0x20, active (the boot sector
//!                                       loads entry 0)
//!                  [1] BIOS boot FAT    type 0x0C, active (stage 2 takes the
//!                                       entry after the 0x20 one)
//!                  [2] GPT protective   type 0xEE, LBA 1 .. 2047
//!                  [3] FERROCFG         type 0x0C
//!                and the 0x55 0xAA signature
//! LBA 1          primary GPT header
//! LBA 2..33      primary GPT entry array: 128 entries of 128 bytes
//! LBA 2048       GPT #1 "bios-stage-2"  BIOS boot partition type
//! next MiB       GPT #2 "bios-boot"     basic data: stage 3/4, kernel,
//!                                       ramdisk, boot.json
//! next MiB       GPT #3 "efi-system"    EFI system partition:
//!                                       efi/boot/bootx64.efi, kernel, ...
//! next MiB       GPT #4 "FERROCFG"      CONFIG_PARTITION_TYPE: FAT32 with
//!                                       512-byte clusters, at least 64 MiB
//! ...            zeros up to a whole number of 16 x 63-sector cylinders
//! last 33 LBAs   backup GPT entry array, then the backup header (last LBA)
//! ```
//!
//! BIOS: the boot sector reads MBR entry 0 (stage 2, wherever it starts),
//! and stage 2 reads its FAT from the entry after the 0x20 one, so only the
//! MBR entries' LBAs change. UEFI: OVMF (EDK II `PartitionDxe`) reads the
//! GPT when any MBR entry has type 0xEE and starts at LBA 1, which makes the
//! MBR "hybrid" rather than protective, and boots the ESP's
//! `efi/boot/bootx64.efi`. GPT structures follow the UEFI Specification 2.10
//! section 5.3 ("GUID Partition Table (GPT) Disk Layout"); the MBR follows
//! section 5.2.1 ("Legacy Master Boot Record").
//!
//! The total size is a whole number of 1008-sector cylinders because Bochs
//! guesses a 16-head, 63-sector geometry for a flat image and shows the
//! machine only whole cylinders ("extra data outside of CHS address range"
//! in its log): without the padding the backup GPT at the last LBA would be
//! out of reach there.
//!
//! FAT work is done by mtools (`mformat`, `mmd`, `mcopy`); the MBR is
//! written here and the GPT with the `gpt` crate (`kernel/gpt`, no
//! dependencies), the same layout, GUIDs and CRC32 the kernel reads it
//! with, so xtask stays free of crates.io crates.

use gpt::{Guid, Header, Partition};
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

/// GPT partition type GUID of Ferrovisor's config partition, `FERROCFG`,
/// and its GPT name and FAT label: the kernel's config reader looks for
/// them, through the same crate.
pub use gpt::{CONFIG_PARTITION_NAME, CONFIG_PARTITION_TYPE};

/// Bytes per logical block: the bootloader's images and every firmware
/// Ferrovisor boots with use 512.
pub(crate) const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (the alignment partitioning tools
/// use, good for any physical block size up to 1 MiB).
pub(crate) const ALIGN: u64 = 2048;
/// Number of GPT entries: the minimum the UEFI spec asks the array to
/// reserve room for (16 KiB).
const GPT_ENTRY_COUNT: u32 = 128;
/// Size of one GPT entry.
const GPT_ENTRY_SIZE: u32 = gpt::ENTRY_SIZE;
/// Sectors the entry array fills.
const GPT_ENTRY_SECTORS: u64 = GPT_ENTRY_COUNT as u64 * GPT_ENTRY_SIZE as u64 / SECTOR;
/// The largest entry array this reader accepts from an input image, so a
/// corrupt header cannot make it allocate gigabytes.
const MAX_GPT_ARRAY: u64 = 1 << 20;

/// Bochs's guessed geometry for a flat image: 16 heads of 63 sectors.
pub(crate) const BOCHS_CYLINDER: u64 = 16 * 63;

/// FERROCFG is never smaller: 64 MiB of 512-byte clusters is about 129000
/// clusters, safely above FAT32's floor.
const MIN_CONFIG_SECTORS: u64 = 64 * 1024 * 1024 / SECTOR;
/// A FAT with fewer clusters than this is FAT12 or FAT16, whatever its BPB
/// says (Microsoft FAT specification, "FAT Type Determination").
const FAT32_MIN_CLUSTERS: u64 = 65525;
/// FAT32 cluster numbers are 28 bits and the top few are reserved.
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF5 - 2;
/// FERROCFG's reserved sectors, as mformat writes them for FAT32.
const FAT32_RESERVED_SECTORS: u64 = 32;
/// A FAT32 file is at most 4 GiB - 1 bytes (the size field is 32 bits).
const FAT_MAX_FILE: u64 = u32::MAX as u64;
/// Longest FAT long file name, in UTF-16 units.
const FAT_MAX_NAME: usize = 255;

/// MBR partition type of the bootloader's second stage.
const MBR_STAGE_2: u8 = 0x20;
/// MBR partition type of a FAT32 partition reached by LBA.
const MBR_FAT32_LBA: u8 = 0x0C;
/// MBR partition type of the GPT protective entry.
const MBR_GPT_PROTECTIVE: u8 = 0xEE;
/// MBR types the bootloader's stage 2 accepts as its FAT boot partition
/// (FAT12, FAT16 <32M, FAT16, FAT32 CHS, FAT32 LBA, FAT16 LBA).
const MBR_FAT_TYPES: [u8; 6] = [0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E];
/// Where the partition table starts in the MBR; the boot code ends here.
const MBR_TABLE: usize = 446;

/// "BIOS boot partition" (GRUB's type for a boot loader's own sectors).
const BIOS_BOOT_TYPE: Guid = gpt::BIOS_BOOT_PARTITION;
/// "Microsoft basic data": a FAT that any system may mount.
const BASIC_DATA_TYPE: Guid = gpt::BASIC_DATA_PARTITION;
/// "EFI System Partition" (UEFI Specification 2.10, section 5.3.3, table
/// "Defined GPT Partition Entry - Partition Type GUIDs").
const ESP_TYPE: Guid = gpt::EFI_SYSTEM_PARTITION;

/// Writes `out`: a hybrid-MBR GPT disk that boots by BIOS (MBR boot code +
/// stage 2 + the BIOS FAT boot partition) and by UEFI (the ESP), plus a
/// FAT32 partition named FERROCFG (GPT type [`CONFIG_PARTITION_TYPE`],
/// label [`CONFIG_PARTITION_NAME`]) holding every file of `config_dir`
/// (subfolders kept).
///
/// `bios_img` is the bootloader's BIOS disk (MBR with a type 0x20 stage 2
/// entry followed by its FAT entry), `uefi_img` its UEFI disk (GPT with an
/// EFI system partition). Names in `config_dir` starting with `.` are left
/// out. FERROCFG is at least 64 MiB and grows with the files; the disk and
/// partition GUIDs are fresh random ones on every call.
///
/// # Errors
///
/// A message naming the file or command that failed: an input image that
/// cannot be read or does not hold what the bootloader writes (with the
/// value found), a config entry that is neither file nor folder or whose
/// name FAT cannot hold (or holds twice, ignoring case), an `out` that is
/// one of the inputs, or an mtools command that is missing or failed (with
/// its output). `out` is removed again when writing it failed.
pub fn hybrid_image(
    bios_img: &Path,
    uefi_img: &Path,
    config_dir: &Path,
    out: &Path,
) -> Result<(), String> {
    if out.to_string_lossy().contains("@@") {
        return Err(format!(
            "hybrid image: the output path {} holds \"@@\", which mtools reads as an offset",
            out.display()
        ));
    }
    for input in [bios_img, uefi_img] {
        if same_file(input, out) {
            return Err(format!(
                "hybrid image: the output {} is also an input; write it elsewhere",
                out.display()
            ));
        }
    }
    let bios = read_bios_image(bios_img)?;
    let esp = read_esp(uefi_img)?;
    let config = ConfigTree::collect(config_dir)?;
    let layout = Layout::new(
        bios.stage_2.sectors,
        bios.fat.sectors,
        esp.sectors,
        config.partition_sectors()?,
    )?;
    let plan = Plan {
        bios,
        bios_img,
        esp,
        uefi_img,
        config,
        layout,
        guids: Guids::random(),
    };
    let result = write_image(out, &plan);
    if result.is_err() {
        // A half-written disk must not be mistaken for a bootable one.
        let _ = fs::remove_file(out);
    }
    result
}

/// Writes `out`: a small FAT image (FAT12 or FAT16, whichever mtools picks
/// for its size) with every file of `dir`, labelled FERROCFG: the copy of
/// the config partition the bootloader loads as its ramdisk, which the
/// kernel reads when no disk driver finds the partition.
///
/// # Errors
///
/// A message naming the folder, the file or the mtools command that
/// failed.
pub fn ramdisk_image(dir: &Path, out: &Path) -> Result<(), String> {
    let tree = ConfigTree::collect(dir)?;
    let files: u64 = tree.files.iter().map(|(_, f)| f.len() as u64).sum();
    // The data in 512-byte units, most of a cluster more per file (mtools
    // picks clusters of up to 4 KiB for a disk this small) and 512 KiB for
    // the FATs, the root folder and slack.
    let sectors = tree.clusters + files * 8 + 1024;
    let _ = fs::remove_file(out);
    let image = OsString::from(out.as_os_str());
    mtool(
        "mformat",
        [
            OsString::from("-C"),
            OsString::from("-i"),
            image.clone(),
            OsString::from("-T"),
            OsString::from(sectors.to_string()),
            OsString::from("-v"),
            OsString::from(CONFIG_PARTITION_NAME),
            OsString::from("::"),
        ],
    )?;
    tree.copy_into(&image)
}

/// The byte range of the FERROCFG partition (the GPT entry of type
/// [`CONFIG_PARTITION_TYPE`]) in the GPT disk `image`: what
/// `mdir -i IMAGE@@START` needs.
///
/// # Errors
///
/// A message naming `image` when it cannot be read, its primary GPT is
/// missing or fails its CRC checks, or no entry has the config type.
pub fn config_partition(image: &Path) -> Result<Range<u64>, String> {
    let mut file = open(image)?;
    let gpt = read_gpt(&mut file, image, 1)?;
    let entry = gpt
        .entries
        .iter()
        .find(|e| e.type_guid == CONFIG_PARTITION_TYPE)
        .ok_or_else(|| {
            format!(
                "hybrid image: {} has no {CONFIG_PARTITION_NAME} partition (GPT type {CONFIG_PARTITION_TYPE})",
                image.display()
            )
        })?;
    let start = entry.first_lba.checked_mul(SECTOR);
    let end = entry
        .last_lba
        .checked_add(1)
        .and_then(|n| n.checked_mul(SECTOR));
    match (start, end) {
        (Some(start), Some(end)) if start < end => Ok(start..end),
        _ => Err(format!(
            "hybrid image: {}: the {CONFIG_PARTITION_NAME} entry spans LBA {}..={}, not a valid range",
            image.display(),
            entry.first_lba,
            entry.last_lba
        )),
    }
}

// ---------------------------------------------------------------------------
// GUIDs

/// A random version 4 GUID (RFC 9562 section 5.4) in on-disk byte order.
///
/// `RandomState`'s SipHash keys come from the operating system's random
/// source (once per thread, then a different key for each new one), so
/// hashing with fresh ones gives unpredictable bits without a crate.
fn random_guid() -> Guid {
    let mut out = [0u8; 16];
    let mut filled = 0;
    while filled < out.len() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_usize(filled);
        hasher.write_u32(std::process::id());
        for (dst, src) in out
            .iter_mut()
            .skip(filled)
            .zip(hasher.finish().to_le_bytes())
        {
            *dst = src;
            filled += 1;
        }
    }
    // Version: the top nibble of the third group (stored little-endian, so
    // byte 7); variant 10 in the top bits of byte 8.
    out[7] = (out[7] & 0x0F) | 0x40;
    out[8] = (out[8] & 0x3F) | 0x80;
    Guid::from_bytes(out)
}

// ---------------------------------------------------------------------------
// Little-endian fields

/// `N` bytes of `buf` at `at`, if they are all there.
fn field<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn le_u16(buf: &[u8], at: usize) -> Option<u16> {
    field(buf, at).map(u16::from_le_bytes)
}

fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    field(buf, at).map(u32::from_le_bytes)
}

/// Writes `value` into `buf` at `at`; every caller writes a field that lies
/// inside a buffer of fixed size.
fn put(buf: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = at
        .checked_add(value.len())
        .and_then(|end| buf.get_mut(at..end))
    {
        dst.copy_from_slice(value);
    }
}

// ---------------------------------------------------------------------------
// GPT

/// A header's sector: the header, then zeros.
fn header_sector(header: &Header) -> [u8; SECTOR as usize] {
    let mut sector = [0u8; SECTOR as usize];
    let encoded = header.encode();
    if let Some(to) = sector.get_mut(..encoded.len()) {
        to.copy_from_slice(&encoded);
    }
    sector
}

/// A GPT as read back: the header and its used entries.
#[derive(Debug)]
struct Gpt {
    header: Header,
    entries: Vec<Partition>,
}

/// Reads the GPT whose header is at `lba` of `file` (named `path` in
/// errors), checking both CRCs and that the header says it is at `lba`.
fn read_gpt(file: &mut File, path: &Path, lba: u64) -> Result<Gpt, String> {
    let bad = |what: String| {
        format!(
            "hybrid image: {}: GPT header at LBA {lba}: {what}",
            path.display()
        )
    };
    let offset = lba
        .checked_mul(SECTOR)
        .ok_or_else(|| bad("LBA too large".into()))?;
    let sector = read_at(file, path, offset, SECTOR)?;
    let header = Header::decode(&sector).map_err(|problem| bad(problem.to_string()))?;
    if header.my_lba != lba {
        return Err(bad(format!("says it is at LBA {}", header.my_lba)));
    }
    if header.entry_size < GPT_ENTRY_SIZE || header.entry_size % 8 != 0 {
        return Err(bad(format!(
            "entry size {} is not a multiple of 8 of at least 128",
            header.entry_size
        )));
    }
    let array = u64::from(header.entry_count) * u64::from(header.entry_size);
    if array > MAX_GPT_ARRAY {
        return Err(bad(format!(
            "{} entries of {} bytes is more than {MAX_GPT_ARRAY} bytes",
            header.entry_count, header.entry_size
        )));
    }
    let array_at = header
        .entries_lba
        .checked_mul(SECTOR)
        .ok_or_else(|| bad(format!("entry array LBA {} too large", header.entries_lba)))?;
    let bytes = read_at(file, path, array_at, array)?;
    let crc = gpt::crc32(&bytes);
    if crc != header.entries_crc {
        return Err(bad(format!(
            "entry array CRC32 is {:#010x}, the array's bytes give {crc:#010x}",
            header.entries_crc
        )));
    }
    let entries = bytes
        .chunks(header.entry_size as usize)
        .zip(0..)
        .filter_map(|(entry, index)| Partition::decode(index, entry))
        .collect();
    Ok(Gpt { header, entries })
}

/// The primary and backup GPT of a disk of `total_sectors` holding
/// `entries`: (primary header sector, backup header sector, entry array).
fn gpt_sectors(
    total_sectors: u64,
    disk_guid: Guid,
    entries: &[Partition],
) -> ([u8; SECTOR as usize], [u8; SECTOR as usize], Vec<u8>) {
    let mut array = vec![0u8; (GPT_ENTRY_COUNT * GPT_ENTRY_SIZE) as usize];
    for (slot, entry) in array
        .chunks_mut(GPT_ENTRY_SIZE as usize)
        .zip(entries.iter())
    {
        slot.copy_from_slice(&entry.encode());
    }
    let last = total_sectors.saturating_sub(1);
    let primary = Header {
        my_lba: 1,
        alternate_lba: last,
        first_usable_lba: 2 + GPT_ENTRY_SECTORS,
        last_usable_lba: last.saturating_sub(1 + GPT_ENTRY_SECTORS),
        disk_guid,
        entries_lba: 2,
        entry_count: GPT_ENTRY_COUNT,
        entry_size: GPT_ENTRY_SIZE,
        entries_crc: gpt::crc32(&array),
    };
    let backup = Header {
        my_lba: last,
        alternate_lba: 1,
        entries_lba: last.saturating_sub(GPT_ENTRY_SECTORS),
        ..primary.clone()
    };
    (header_sector(&primary), header_sector(&backup), array)
}

// ---------------------------------------------------------------------------
// MBR

/// One MBR partition entry (UEFI Specification 2.10, section 5.2.1, table
/// "Legacy MBR Partition Record").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MbrEntry {
    pub(crate) boot: u8,
    pub(crate) kind: u8,
    pub(crate) first_lba: u32,
    pub(crate) sectors: u32,
}

impl MbrEntry {
    fn encode(self) -> [u8; 16] {
        let mut e = [0u8; 16];
        if self.kind == 0 {
            return e;
        }
        let last = self
            .first_lba
            .saturating_add(self.sectors.saturating_sub(1));
        e[0] = self.boot;
        put(&mut e, 1, &chs(self.first_lba));
        e[4] = self.kind;
        put(&mut e, 5, &chs(last));
        put(&mut e, 8, &self.first_lba.to_le_bytes());
        put(&mut e, 12, &self.sectors.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Option<MbrEntry> {
        Some(MbrEntry {
            boot: *e.first()?,
            kind: *e.get(4)?,
            first_lba: le_u32(e, 8)?,
            sectors: le_u32(e, 12)?,
        })
    }
}

/// The CHS bytes (head, sector | cylinder bits 8-9, cylinder bits 0-7) of
/// `lba` in the 255-head, 63-sector geometry every BIOS of the last decades
/// translates to; past cylinder 1023 the largest address, FE FF FF, as
/// partitioning tools write.
fn chs(lba: u32) -> [u8; 3] {
    let lba = u64::from(lba);
    let cylinder = lba / (255 * 63);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / 63) % 255;
    let sector = lba % 63 + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

/// An MBR sector: `boot_code` (up to 446 bytes: the BIOS image's, or
/// SYSLINUX's MBR for `xtask::native`), four entries, 0x55 0xAA.
pub(crate) fn mbr_sector(boot_code: &[u8], entries: &[MbrEntry; 4]) -> [u8; SECTOR as usize] {
    let mut s = [0u8; SECTOR as usize];
    put(&mut s, 0, boot_code.get(..MBR_TABLE).unwrap_or(boot_code));
    for (i, entry) in entries.iter().enumerate() {
        put(&mut s, MBR_TABLE + 16 * i, &entry.encode());
    }
    put(&mut s, 510, &[0x55, 0xAA]);
    s
}

// ---------------------------------------------------------------------------
// Inputs

/// A run of sectors in an input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    first_lba: u64,
    sectors: u64,
}

/// What the hybrid disk takes from the bootloader's BIOS image.
#[derive(Debug)]
struct BiosParts {
    /// Bytes 0..446 of its MBR.
    boot_code: Vec<u8>,
    stage_2: Extent,
    stage_2_boot: u8,
    fat: Extent,
    fat_boot: u8,
    fat_kind: u8,
}

/// Reads the MBR of the bootloader's BIOS disk at `path`.
fn read_bios_image(path: &Path) -> Result<BiosParts, String> {
    let mut file = open(path)?;
    let len = file_len(&file, path)?;
    let mbr = read_at(&mut file, path, 0, SECTOR)?;
    let bad = |what: String| {
        format!(
            "hybrid image: {}: not a bootloader BIOS disk: {what}",
            path.display()
        )
    };
    if mbr.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Err(bad("no 0x55 0xAA MBR signature at byte 510".into()));
    }
    let entries: Vec<MbrEntry> = (0..4)
        .filter_map(|i| MbrEntry::decode(mbr.get(MBR_TABLE + 16 * i..)?))
        .collect();
    // Stage 2 reads its FAT from the entry after the 0x20 one.
    let (index, stage_2) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.kind == MBR_STAGE_2)
        .ok_or_else(|| bad("no MBR entry of type 0x20 (the second stage)".into()))?;
    let fat = entries.get(index + 1).ok_or_else(|| {
        bad(format!(
            "the stage 2 entry is entry {index}, the last; its FAT must be the next"
        ))
    })?;
    if !MBR_FAT_TYPES.contains(&fat.kind) {
        return Err(bad(format!(
            "MBR entry {} after stage 2 has type {:#04x}, not a FAT type",
            index + 1,
            fat.kind
        )));
    }
    let stage_2_extent =
        mbr_extent(stage_2, len).map_err(|e| bad(format!("stage 2 entry {index}: {e}")))?;
    let fat_extent =
        mbr_extent(fat, len).map_err(|e| bad(format!("FAT entry {}: {e}", index + 1)))?;
    Ok(BiosParts {
        boot_code: mbr.get(..MBR_TABLE).unwrap_or_default().to_vec(),
        stage_2: stage_2_extent,
        stage_2_boot: stage_2.boot,
        fat: fat_extent,
        fat_boot: fat.boot,
        fat_kind: fat.kind,
    })
}

/// An MBR entry's sectors, checked to be non-empty, past LBA 0 and inside
/// a file of `len` bytes.
fn mbr_extent(entry: &MbrEntry, len: u64) -> Result<Extent, String> {
    let extent = Extent {
        first_lba: u64::from(entry.first_lba),
        sectors: u64::from(entry.sectors),
    };
    check_extent(extent, len)?;
    Ok(extent)
}

/// Refuses an empty extent, one at LBA 0 or one reaching past the file's
/// last (possibly partial) sector.
fn check_extent(extent: Extent, len: u64) -> Result<(), String> {
    let file_sectors = len.div_ceil(SECTOR);
    let end = extent.first_lba.checked_add(extent.sectors);
    if extent.sectors == 0 || extent.first_lba == 0 || end.is_none_or(|end| end > file_sectors) {
        return Err(format!(
            "LBA {} + {} sectors does not fit a {file_sectors}-sector image",
            extent.first_lba, extent.sectors
        ));
    }
    Ok(())
}

/// Finds the EFI system partition in the bootloader's UEFI disk at `path`.
fn read_esp(path: &Path) -> Result<Extent, String> {
    let mut file = open(path)?;
    let len = file_len(&file, path)?;
    let gpt = read_gpt(&mut file, path, 1)?;
    let esp = gpt
        .entries
        .iter()
        .find(|e| e.type_guid == ESP_TYPE)
        .ok_or_else(|| {
            format!(
                "hybrid image: {}: the GPT has no EFI system partition (type {})",
                path.display(),
                ESP_TYPE
            )
        })?;
    let extent = esp
        .last_lba
        .checked_sub(esp.first_lba)
        .and_then(|n| n.checked_add(1))
        .map(|sectors| Extent {
            first_lba: esp.first_lba,
            sectors,
        });
    let usable = gpt.header.first_usable_lba..=gpt.header.last_usable_lba;
    match extent {
        Some(extent)
            if check_extent(extent, len).is_ok()
                && usable.contains(&esp.first_lba)
                && usable.contains(&esp.last_lba) =>
        {
            Ok(extent)
        }
        _ => Err(format!(
            "hybrid image: {}: the EFI system partition spans LBA {}..={}, outside the image \
             or its GPT's usable LBAs {}..={}",
            path.display(),
            esp.first_lba,
            esp.last_lba,
            usable.start(),
            usable.end()
        )),
    }
}

// ---------------------------------------------------------------------------
// The config folder

/// The config folder's contents as FERROCFG will hold them.
#[derive(Debug)]
struct ConfigTree {
    /// Folders to create, `/`-separated relative paths, parents first.
    dirs: Vec<String>,
    /// Per folder ("" for the root), the files to copy into it.
    files: Vec<(String, Vec<PathBuf>)>,
    /// Data clusters (of one sector) the files and folders need.
    clusters: u64,
}

impl ConfigTree {
    /// Walks `dir` in name order, skipping names that start with `.`.
    fn collect(dir: &Path) -> Result<ConfigTree, String> {
        // mtools reads `x:name` as a drive letter; absolute paths never
        // look like one.
        let root = fs::canonicalize(dir).map_err(|e| {
            format!(
                "hybrid image: cannot open the config folder {}: {e}",
                dir.display()
            )
        })?;
        let mut tree = ConfigTree {
            dirs: Vec::new(),
            files: Vec::new(),
            clusters: 0,
        };
        tree.walk(&root, "")?;
        Ok(tree)
    }

    fn walk(&mut self, dir: &Path, rel: &str) -> Result<(), String> {
        let listing = |e: io::Error| format!("hybrid image: cannot list {}: {e}", dir.display());
        let mut entries = fs::read_dir(dir)
            .map_err(listing)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(listing)?;
        entries.sort_by_key(|e| e.file_name());
        let mut seen = HashSet::new();
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        // ".", ".." and the end marker, one slot each.
        let mut dir_bytes = 3 * 32;
        for entry in entries {
            let path = entry.path();
            let name = fat_name(&path, &entry.file_name())?;
            if name.starts_with('.') {
                continue;
            }
            if !seen.insert(name.to_lowercase()) {
                return Err(format!(
                    "hybrid image: {} differs from another name in {} only in case; FAT cannot hold both",
                    path.display(),
                    dir.display()
                ));
            }
            // One long-name slot per 13 UTF-16 units plus the short entry.
            dir_bytes += 32 * (1 + name.encode_utf16().count().div_ceil(13) as u64);
            let stat_err =
                |e: io::Error| format!("hybrid image: cannot stat {}: {e}", path.display());
            let linked = entry.file_type().map_err(stat_err)?.is_symlink();
            // Links to files are followed, as mcopy does.
            let meta = fs::metadata(&path).map_err(stat_err)?;
            if meta.is_file() {
                if meta.len() > FAT_MAX_FILE {
                    return Err(format!(
                        "hybrid image: {} is {} bytes; a FAT32 file holds at most {FAT_MAX_FILE}",
                        path.display(),
                        meta.len()
                    ));
                }
                self.clusters = self.clusters.saturating_add(meta.len().div_ceil(SECTOR));
                files.push(path);
            } else if meta.is_dir() && linked {
                return Err(format!(
                    "hybrid image: {} links to a folder; {CONFIG_PARTITION_NAME} takes real folders \
                     only (a linked one can loop)",
                    path.display()
                ));
            } else if meta.is_dir() {
                subdirs.push((path, name));
            } else {
                return Err(format!(
                    "hybrid image: {} is neither a regular file nor a folder; {CONFIG_PARTITION_NAME} holds only those",
                    path.display()
                ));
            }
        }
        self.clusters = self.clusters.saturating_add(dir_bytes.div_ceil(SECTOR));
        if !files.is_empty() {
            self.files.push((rel.to_string(), files));
        }
        for (path, name) in subdirs {
            let sub = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            self.dirs.push(sub.clone());
            self.walk(&path, &sub)?;
        }
        Ok(())
    }

    /// Makes the folders and copies the files into the FAT file system
    /// `image` (an mtools image name, `@@offset` included).
    fn copy_into(&self, image: &OsString) -> Result<(), String> {
        for dir in &self.dirs {
            mtool(
                "mmd",
                ["-i".into(), image.clone(), format!("::/{dir}").into()],
            )?;
        }
        for (dir, files) in &self.files {
            let mut args: Vec<OsString> =
                vec!["-i".into(), image.clone(), "-m".into(), "-Q".into()];
            args.extend(files.iter().map(|f| f.as_os_str().to_os_string()));
            args.push(if dir.is_empty() {
                "::/".into()
            } else {
                format!("::/{dir}/").into()
            });
            mtool("mcopy", args)?;
        }
        Ok(())
    }

    /// FERROCFG's size: the data clusters, a tenth more and 1 MiB of room,
    /// the two FATs and the reserved sectors, rounded up to whole MiB and
    /// never below 64 MiB (so FAT32 always has enough clusters).
    fn partition_sectors(&self) -> Result<u64, String> {
        let too_big = || {
            format!(
                "hybrid image: the config files need {} clusters of 512 bytes; FAT32 holds at most {FAT32_MAX_CLUSTERS}",
                self.clusters
            )
        };
        let clusters = self
            .clusters
            .checked_add(self.clusters / 10)
            .and_then(|n| n.checked_add(ALIGN))
            .filter(|&n| n <= FAT32_MAX_CLUSTERS)
            .ok_or_else(too_big)?;
        // Two FATs of four bytes per cluster, plus the two reserved entries.
        let fats = 2 * ((clusters + 2) * 4).div_ceil(SECTOR);
        let sectors = FAT32_RESERVED_SECTORS + fats + clusters;
        Ok(sectors
            .div_ceil(ALIGN)
            .saturating_mul(ALIGN)
            .max(MIN_CONFIG_SECTORS))
    }
}

/// The UTF-8 name of a config entry, refused when FAT cannot store it as
/// given (Microsoft FAT specification, "Long Directory Entries": no
/// control characters or `"*/:<>?\|`, no trailing dot or space, at most 255
/// UTF-16 units).
fn fat_name(path: &Path, name: &OsStr) -> Result<String, String> {
    let name = name.to_str().ok_or_else(|| {
        format!(
            "hybrid image: {} has no UTF-8 name; FAT names are Unicode",
            path.display()
        )
    })?;
    let refuse = |why: &str| {
        Err(format!(
            "hybrid image: {}: FAT cannot hold this name ({why})",
            path.display()
        ))
    };
    if name.starts_with('.') {
        // Left out anyway.
        return Ok(name.to_string());
    }
    if let Some(c) = name.chars().find(|&c| c < ' ' || "\"*/:<>?\\|".contains(c)) {
        return refuse(&format!("it holds {c:?}"));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return refuse("it ends with a dot or a space, which FAT drops");
    }
    if name.encode_utf16().count() > FAT_MAX_NAME {
        return refuse("longer than 255 UTF-16 units");
    }
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------
// Layout

/// Where everything goes on the hybrid disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    stage_2: Extent,
    bios_fat: Extent,
    esp: Extent,
    config: Extent,
    total_sectors: u64,
}

impl Layout {
    /// Places partitions of the given sizes (in sectors) one after the
    /// other on 1 MiB boundaries from LBA 2048, then the backup GPT, and
    /// pads the disk to whole Bochs cylinders.
    fn new(stage_2: u64, bios_fat: u64, esp: u64, config: u64) -> Result<Layout, String> {
        let overflow = || "hybrid image: the partitions do not fit a disk's LBA range".to_string();
        if [stage_2, bios_fat, esp, config].contains(&0) {
            return Err(format!(
                "hybrid image: a partition of 0 sectors (stage 2 {stage_2}, BIOS FAT {bios_fat}, \
                 ESP {esp}, {CONFIG_PARTITION_NAME} {config})"
            ));
        }
        let mut next = ALIGN;
        let mut place = |sectors: u64| -> Result<Extent, String> {
            let extent = Extent {
                first_lba: next,
                sectors,
            };
            next = next
                .checked_add(sectors)
                .and_then(|end| end.checked_next_multiple_of(ALIGN))
                .ok_or_else(overflow)?;
            Ok(extent)
        };
        let stage_2 = place(stage_2)?;
        let bios_fat = place(bios_fat)?;
        let esp = place(esp)?;
        let config = place(config)?;
        // The backup array and header follow the last partition.
        let total_sectors = next
            .checked_add(GPT_ENTRY_SECTORS + 1)
            .and_then(|n| n.checked_next_multiple_of(BOCHS_CYLINDER))
            .ok_or_else(overflow)?;
        let layout = Layout {
            stage_2,
            bios_fat,
            esp,
            config,
            total_sectors,
        };
        // The BIOS reaches these through the MBR's 32-bit fields.
        for (what, extent) in [
            ("stage 2", stage_2),
            ("the BIOS FAT", bios_fat),
            (CONFIG_PARTITION_NAME, config),
        ] {
            if extent.first_lba + extent.sectors > u64::from(u32::MAX) {
                return Err(format!(
                    "hybrid image: {what} would end past LBA {} (2 TiB), which the MBR cannot address",
                    u32::MAX
                ));
            }
        }
        Ok(layout)
    }

    /// The four MBR entries: stage 2 and its FAT first, where the boot
    /// sector and stage 2 look; the GPT protective entry over LBA 1 up to
    /// the first partition; FERROCFG for MBR-only tools.
    fn mbr_entries(&self, bios: &BiosParts) -> [MbrEntry; 4] {
        let mbr = |boot: u8, kind: u8, extent: Extent| MbrEntry {
            boot,
            kind,
            first_lba: extent.first_lba as u32,
            sectors: extent.sectors as u32,
        };
        [
            mbr(bios.stage_2_boot, MBR_STAGE_2, self.stage_2),
            mbr(bios.fat_boot, bios.fat_kind, self.bios_fat),
            mbr(
                0,
                MBR_GPT_PROTECTIVE,
                Extent {
                    first_lba: 1,
                    sectors: self.stage_2.first_lba - 1,
                },
            ),
            mbr(0, MBR_FAT32_LBA, self.config),
        ]
    }

    /// The GPT entries, in disk order.
    fn gpt_entries(&self, guids: &Guids) -> [Partition; 4] {
        let entry = |index, type_guid, unique_guid, extent: Extent, name: &str| Partition {
            index,
            type_guid,
            unique_guid,
            first_lba: extent.first_lba,
            last_lba: extent.first_lba + extent.sectors - 1,
            attributes: 0,
            name: name.to_string(),
        };
        [
            entry(
                0,
                BIOS_BOOT_TYPE,
                guids.stage_2,
                self.stage_2,
                "bios-stage-2",
            ),
            entry(
                1,
                BASIC_DATA_TYPE,
                guids.bios_fat,
                self.bios_fat,
                "bios-boot",
            ),
            entry(2, ESP_TYPE, guids.esp, self.esp, "efi-system"),
            entry(
                3,
                CONFIG_PARTITION_TYPE,
                guids.config,
                self.config,
                CONFIG_PARTITION_NAME,
            ),
        ]
    }
}

/// The disk's and each partition's unique GUID.
#[derive(Clone, Copy, Debug)]
struct Guids {
    disk: Guid,
    stage_2: Guid,
    bios_fat: Guid,
    esp: Guid,
    config: Guid,
}

impl Guids {
    fn random() -> Guids {
        Guids {
            disk: random_guid(),
            stage_2: random_guid(),
            bios_fat: random_guid(),
            esp: random_guid(),
            config: random_guid(),
        }
    }
}

// ---------------------------------------------------------------------------
// Writing

/// Everything [`write_image`] needs, checked and placed.
struct Plan<'a> {
    bios: BiosParts,
    bios_img: &'a Path,
    esp: Extent,
    uefi_img: &'a Path,
    config: ConfigTree,
    layout: Layout,
    guids: Guids,
}

/// Writes the disk `plan` describes to `out`: tables, the copied
/// partitions, then FERROCFG.
fn write_image(out: &Path, plan: &Plan) -> Result<(), String> {
    let Plan {
        bios,
        bios_img,
        esp,
        uefi_img,
        config,
        layout,
        guids,
    } = plan;
    let write_err = |e: io::Error| format!("hybrid image: cannot write {}: {e}", out.display());
    let mut disk = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(out)
        .map_err(write_err)?;
    disk.set_len(layout.total_sectors * SECTOR)
        .map_err(write_err)?;

    let (primary, backup, array) =
        gpt_sectors(layout.total_sectors, guids.disk, &layout.gpt_entries(guids));
    let last = layout.total_sectors - 1;
    write_at(
        &mut disk,
        out,
        0,
        &mbr_sector(&bios.boot_code, &layout.mbr_entries(bios)),
    )?;
    write_at(&mut disk, out, SECTOR, &primary)?;
    write_at(&mut disk, out, 2 * SECTOR, &array)?;
    write_at(&mut disk, out, (last - GPT_ENTRY_SECTORS) * SECTOR, &array)?;
    write_at(&mut disk, out, last * SECTOR, &backup)?;

    copy_extent(bios_img, bios.stage_2, &mut disk, out, layout.stage_2)?;
    copy_extent(bios_img, bios.fat, &mut disk, out, layout.bios_fat)?;
    copy_extent(uefi_img, *esp, &mut disk, out, layout.esp)?;
    // mtools opens the file on its own from here.
    drop(disk);

    fill_config(out, layout.config, &guids.config, config)
}

/// Formats FERROCFG inside `out` and copies the config tree into it.
fn fill_config(out: &Path, extent: Extent, guid: &Guid, tree: &ConfigTree) -> Result<(), String> {
    let offset = extent.first_lba * SECTOR;
    let image = {
        let mut s = out.as_os_str().to_os_string();
        s.push(format!("@@{offset}"));
        s
    };
    let guid = guid.to_bytes();
    let serial = u32::from_le_bytes([guid[0], guid[1], guid[2], guid[3]]);
    // FAT32 (-F) with one-sector clusters (-c 1) over exactly the partition
    // (-T); hidden sectors (-H) = the partition's LBA, as a BPB on a
    // partitioned disk records; 64 heads x 32 sectors divides the 1 MiB
    // multiple the partition is.
    mtool(
        "mformat",
        [
            "-i".into(),
            image.clone(),
            "-F".into(),
            "-c".into(),
            "1".into(),
            "-T".into(),
            extent.sectors.to_string().into(),
            "-h".into(),
            "64".into(),
            "-s".into(),
            "32".into(),
            "-H".into(),
            extent.first_lba.to_string().into(),
            "-v".into(),
            CONFIG_PARTITION_NAME.into(),
            "-N".into(),
            format!("{serial:08x}").into(),
            "::".into(),
        ],
    )?;
    check_fat32(out, offset, extent.sectors)?;
    tree.copy_into(&image)
}

/// Checks that the FAT mformat wrote at `offset` of `out` is FAT32 by the
/// cluster count, the only test that counts (Microsoft FAT specification,
/// "FAT Type Determination"), and spans `sectors`.
fn check_fat32(out: &Path, offset: u64, sectors: u64) -> Result<(), String> {
    let mut file = open(out)?;
    let bpb = read_at(&mut file, out, offset, SECTOR)?;
    let bad = |what: String| {
        format!(
            "hybrid image: mformat did not write FAT32 for {CONFIG_PARTITION_NAME} in {}: {what}",
            out.display()
        )
    };
    let summary = fat_summary(&bpb).ok_or_else(|| bad("its boot sector is cut short".into()))?;
    if summary.total_sectors != sectors {
        return Err(bad(format!(
            "it spans {} sectors, the partition {sectors}",
            summary.total_sectors
        )));
    }
    if summary.fat16_size != 0 || summary.clusters < FAT32_MIN_CLUSTERS {
        return Err(bad(format!(
            "{} clusters (FAT32 needs at least {FAT32_MIN_CLUSTERS}), 16-bit FAT size {}",
            summary.clusters, summary.fat16_size
        )));
    }
    Ok(())
}

/// The BPB fields that decide a FAT's type.
#[derive(Debug, PartialEq, Eq)]
struct FatSummary {
    total_sectors: u64,
    fat16_size: u16,
    clusters: u64,
}

/// Reads a FAT boot sector's BPB (Microsoft FAT specification, "Boot
/// Sector and BPB") and counts its data clusters.
fn fat_summary(bpb: &[u8]) -> Option<FatSummary> {
    let bytes_per_sector = u64::from(le_u16(bpb, 11)?);
    let per_cluster = u64::from(*bpb.get(13)?);
    let reserved = u64::from(le_u16(bpb, 14)?);
    let fats = u64::from(*bpb.get(16)?);
    let root_entries = u64::from(le_u16(bpb, 17)?);
    let total_16 = le_u16(bpb, 19)?;
    let fat16_size = le_u16(bpb, 22)?;
    let total_32 = le_u32(bpb, 32)?;
    let fat32_size = le_u32(bpb, 36)?;
    let total_sectors = if total_16 != 0 {
        u64::from(total_16)
    } else {
        u64::from(total_32)
    };
    let fat_size = if fat16_size != 0 {
        u64::from(fat16_size)
    } else {
        u64::from(fat32_size)
    };
    let root_sectors = (root_entries * 32).checked_add(bytes_per_sector.checked_sub(1)?)?
        / bytes_per_sector.max(1);
    let data = total_sectors.checked_sub(reserved + fats * fat_size + root_sectors)?;
    Some(FatSummary {
        total_sectors,
        fat16_size,
        clusters: data.checked_div(per_cluster)?,
    })
}

/// Runs an mtools command; an error names the command and its output, or
/// the package to install.
fn mtool<I>(program: &str, args: I) -> Result<(), String>
where
    I: IntoIterator<Item = OsString>,
{
    crate::run_tool("hybrid image", Command::new(program).args(args), "mtools")
}

// ---------------------------------------------------------------------------
// File helpers

fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("hybrid image: cannot open {}: {e}", path.display()))
}

fn file_len(file: &File, path: &Path) -> Result<u64, String> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| format!("hybrid image: cannot stat {}: {e}", path.display()))
}

/// `len` bytes of `file` from `offset`; an error names `path` and where.
fn read_at(file: &mut File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let err = |e: io::Error| {
        format!(
            "hybrid image: cannot read {len} bytes at byte {offset} of {}: {e}",
            path.display()
        )
    };
    file.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut buf = Vec::new();
    file.take(len).read_to_end(&mut buf).map_err(err)?;
    if (buf.len() as u64) < len {
        return Err(err(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(buf)
}

fn write_at(file: &mut File, path: &Path, offset: u64, data: &[u8]) -> Result<(), String> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(data))
        .map_err(|e| {
            format!(
                "hybrid image: cannot write {} bytes at byte {offset} of {}: {e}",
                data.len(),
                path.display()
            )
        })
}

/// Copies `from` of the image at `src` to `to` of `disk` (named `out`); a
/// last partial sector in the source stays zero in the copy.
fn copy_extent(
    src: &Path,
    from: Extent,
    disk: &mut File,
    out: &Path,
    to: Extent,
) -> Result<(), String> {
    let mut input = open(src)?;
    let err = |e: io::Error| {
        format!(
            "hybrid image: cannot copy LBA {}+{} of {} to LBA {} of {}: {e}",
            from.first_lba,
            from.sectors,
            src.display(),
            to.first_lba,
            out.display()
        )
    };
    input
        .seek(SeekFrom::Start(from.first_lba * SECTOR))
        .map_err(err)?;
    disk.seek(SeekFrom::Start(to.first_lba * SECTOR))
        .map_err(err)?;
    io::copy(&mut input.take(from.sectors * SECTOR), disk).map_err(err)?;
    Ok(())
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt::crc32;

    /// A fresh, empty scratch folder for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferrovisor-disk-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs an mtools command that must work and returns its stdout.
    fn mtools_out(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// An image argument for mtools: `path@@byte offset`.
    fn at(path: &Path, lba: u64) -> String {
        format!("{}@@{}", path.display(), lba * SECTOR)
    }

    /// A standalone FAT16 file system of `sectors` holding `files`
    /// (path inside, contents), made with mtools.
    fn fat_image(dir: &Path, name: &str, sectors: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
        let img = dir.join(name);
        let _ = fs::remove_file(&img);
        File::create(&img)
            .unwrap()
            .set_len(sectors * SECTOR)
            .unwrap();
        let img_arg = img.to_str().unwrap().to_string();
        let total = sectors.to_string();
        mtools_out(
            "mformat",
            &["-i", &img_arg, "-T", &total, "-h", "64", "-s", "32", "::"],
        );
        for (inside, data) in files {
            let src = dir.join(format!("{name}.src"));
            fs::write(&src, data).unwrap();
            let mut parent = String::new();
            let parts: Vec<&str> = inside.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                parent.push('/');
                parent.push_str(part);
                let _ = Command::new("mmd")
                    .args(["-i", &img_arg, &format!("::{parent}")])
                    .output();
            }
            mtools_out(
                "mcopy",
                &[
                    "-i",
                    &img_arg,
                    src.to_str().unwrap(),
                    &format!("::/{inside}"),
                ],
            );
        }
        fs::read(&img).unwrap()
    }

    /// The boot code of the fake BIOS disk: recognisable, non-zero bytes.
    fn boot_code() -> Vec<u8> {
        (0..MBR_TABLE).map(|i| (i * 7 % 251 + 1) as u8).collect()
    }

    /// The second stage of the fake BIOS disk: 3 sectors and a half.
    fn stage_2() -> Vec<u8> {
        (0..3 * SECTOR as usize + 100)
            .map(|i| (i * 13 % 253) as u8 ^ 0x5A)
            .collect()
    }

    /// A BIOS disk laid out like the bootloader's: MBR, stage 2 at LBA 1
    /// (entry 0, type 0x20), the FAT right after it (entry 1, type 0x0C).
    fn fake_bios(dir: &Path) -> PathBuf {
        let fat = fat_image(dir, "bios-fat", 4096, &[("kernel-x86_64", b"bios kernel")]);
        let stage_2 = stage_2();
        let stage_2_sectors = (stage_2.len() as u64).div_ceil(SECTOR);
        let fat_lba = 1 + stage_2_sectors;
        let mut disk = vec![0u8; (fat_lba * SECTOR) as usize];
        disk[..MBR_TABLE].copy_from_slice(&boot_code());
        let entry = |boot: u8, kind: u8, lba: u64, sectors: u64| {
            let mut e = [0u8; 16];
            e[0] = boot;
            e[4] = kind;
            e[8..12].copy_from_slice(&(lba as u32).to_le_bytes());
            e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
            e
        };
        disk[446..462].copy_from_slice(&entry(0x80, 0x20, 1, stage_2_sectors));
        disk[462..478].copy_from_slice(&entry(0x80, 0x0C, fat_lba, 4096));
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[512..512 + stage_2.len()].copy_from_slice(&stage_2);
        disk.extend_from_slice(&fat);
        let path = dir.join("bios.img");
        fs::write(&path, disk).unwrap();
        path
    }

    /// The ESP's first LBA in the fake UEFI disk (as the bootloader puts it).
    const FAKE_ESP_LBA: u64 = 34;

    /// A UEFI disk like the bootloader's: a GPT whose one entry is the ESP
    /// at LBA 34. The header is written field by field here, apart from
    /// `gpt::Header::encode`, so the reader is checked against an independent
    /// writer.
    fn fake_uefi(dir: &Path, esp_type: Guid) -> PathBuf {
        let fat = fat_image(
            dir,
            "esp-fat",
            4096,
            &[
                ("efi/boot/bootx64.efi", b"uefi loader"),
                ("kernel-x86_64", b"uefi kernel"),
            ],
        );
        let mut disk = vec![0u8; (FAKE_ESP_LBA * SECTOR) as usize];
        disk.extend_from_slice(&fat);
        disk.resize(disk.len() + 64 * 1024, 0);
        let mut entries = vec![0u8; 128 * 128];
        entries[..16].copy_from_slice(&esp_type.to_bytes());
        entries[16..32].copy_from_slice(&[7; 16]);
        entries[32..40].copy_from_slice(&FAKE_ESP_LBA.to_le_bytes());
        entries[40..48].copy_from_slice(&(FAKE_ESP_LBA + 4095).to_le_bytes());
        for (i, c) in "boot".encode_utf16().enumerate() {
            entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        let last = disk.len() as u64 / SECTOR - 1;
        let mut h = [0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&last.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(last - 33).to_le_bytes());
        h[56..72].copy_from_slice(&[9; 16]);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk[512..1024].copy_from_slice(&h);
        disk[1024..1024 + entries.len()].copy_from_slice(&entries);
        let path = dir.join("uefi.img");
        fs::write(&path, disk).unwrap();
        path
    }

    /// A config folder with a subfolder, a dot file and a long name.
    fn fake_config(dir: &Path) -> PathBuf {
        let config = dir.join("config");
        fs::create_dir_all(config.join("linux").join("deeper")).unwrap();
        fs::write(config.join("hypervisor.toml"), "[[guest]]\nname = \"a\"\n").unwrap();
        fs::write(config.join("linux").join("bzImage"), vec![0xC3u8; 5000]).unwrap();
        fs::write(
            config
                .join("linux")
                .join("deeper")
                .join("a rather long file name.txt"),
            "long",
        )
        .unwrap();
        fs::write(config.join(".hidden"), "not copied").unwrap();
        config
    }

    /// Builds the hybrid disk from the fake inputs.
    fn built(name: &str) -> (PathBuf, PathBuf) {
        let dir = scratch(name);
        let bios = fake_bios(&dir);
        let uefi = fake_uefi(&dir, ESP_TYPE);
        let config = fake_config(&dir);
        let out = dir.join("hybrid.img");
        hybrid_image(&bios, &uefi, &config, &out).unwrap();
        (dir, out)
    }

    #[test]
    fn crc32_is_the_ieee_crc() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guids_are_stored_mixed_endian() {
        // The ESP type as the bootloader's real UEFI image stores it.
        assert_eq!(
            ESP_TYPE.to_bytes(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        let config_text = "43512ee0-5019-4c06-ace2-4e748860ee00";
        assert_eq!(Guid::parse(config_text), Some(CONFIG_PARTITION_TYPE));
        assert_eq!(CONFIG_PARTITION_TYPE.to_string(), config_text);
        assert_eq!(
            CONFIG_PARTITION_TYPE.to_bytes(),
            [
                0xe0, 0x2e, 0x51, 0x43, 0x19, 0x50, 0x06, 0x4c, 0xac, 0xe2, 0x4e, 0x74, 0x88, 0x60,
                0xee, 0x00
            ]
        );
        assert_eq!(
            BIOS_BOOT_TYPE.to_string(),
            "21686148-6449-6e6f-744e-656564454649"
        );
        assert_eq!(Guid::parse("43512ee0-5019-4c06-ace2-4e748860ee0"), None);
        assert_eq!(Guid::parse("43512ee0-5019-4c06-ace2_4e748860ee00"), None);
        assert_eq!(Guid::parse("43512ee0-5019-4c06-ace2-4e748860ee0g"), None);
    }

    #[test]
    fn random_guids_are_version_4_and_differ() {
        let a = random_guid();
        let b = random_guid();
        assert_ne!(a, b);
        for g in [a, b] {
            let text = g.to_string();
            assert_eq!(&text[14..15], "4", "{text}");
            assert!("89ab".contains(&text[19..20]), "{text}");
        }
    }

    #[test]
    fn chs_addresses_follow_the_255_head_63_sector_geometry() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(1), [0, 2, 0]);
        assert_eq!(chs(63), [1, 1, 0]);
        assert_eq!(chs(255 * 63), [0, 1, 1]);
        // Cylinder 300: bits 8-9 go to the top of the sector byte.
        assert_eq!(chs(300 * 255 * 63 + 2 * 63 + 4), [2, 5 | 1 << 6, 44]);
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF]);
    }

    #[test]
    fn gpt_headers_and_entries_read_back_as_written() {
        let entries = [Partition {
            index: 0,
            type_guid: CONFIG_PARTITION_TYPE,
            unique_guid: Guid::from_bytes([3; 16]),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 1 << 60,
            name: "FERROCFG".into(),
        }];
        let (primary, backup, array) = gpt_sectors(10_000, Guid::from_bytes([5; 16]), &entries);
        let p = Header::decode(&primary).unwrap();
        let b = Header::decode(&backup).unwrap();
        assert_eq!((p.my_lba, p.alternate_lba, p.entries_lba), (1, 9999, 2));
        assert_eq!(
            (b.my_lba, b.alternate_lba, b.entries_lba),
            (9999, 1, 9999 - 32)
        );
        assert_eq!((p.first_usable_lba, p.last_usable_lba), (34, 9999 - 33));
        assert_eq!(p.first_usable_lba, b.first_usable_lba);
        assert_eq!(p.last_usable_lba, b.last_usable_lba);
        assert_eq!((p.entry_count, p.entry_size), (128, 128));
        assert_eq!(p.entries_crc, crc32(&array));
        assert_eq!(p.disk_guid, Guid::from_bytes([5; 16]));
        assert_eq!(array.len(), 128 * 128);
        // Name as UTF-16LE at byte 56 of the entry.
        assert_eq!(&array[56..60], &[b'F', 0, b'E', 0]);
        assert_eq!(
            Partition::decode(0, &array[..128]),
            Some(entries[0].clone())
        );
        assert_eq!(Partition::decode(1, &array[128..256]), None);
    }

    #[test]
    fn gpt_headers_with_a_bad_crc_or_signature_are_refused() {
        let (primary, _, _) = gpt_sectors(10_000, Guid::from_bytes([5; 16]), &[]);
        let mut flipped = primary;
        flipped[40] ^= 1;
        let err = Header::decode(&flipped).unwrap_err().to_string();
        assert!(err.contains("header CRC32"), "{err}");
        let mut unsigned = primary;
        unsigned[0] = b'X';
        assert!(Header::decode(&unsigned)
            .unwrap_err()
            .to_string()
            .contains("EFI PART"));
        let mut huge = primary;
        huge[12..16].copy_from_slice(&600u32.to_le_bytes());
        assert!(Header::decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("header size 600"));
        assert!(Header::decode(&primary[..50]).is_err());
    }

    #[test]
    fn partitions_are_aligned_ordered_and_inside_the_usable_range() {
        for sizes in [
            (961, 20480, 20480, MIN_CONFIG_SECTORS),
            (1, 1, 1, 1),
            (2048, 2049, 4095, 300_000),
            (5000, 1, 2048, 2047),
        ] {
            let l = Layout::new(sizes.0, sizes.1, sizes.2, sizes.3).unwrap();
            let parts = [l.stage_2, l.bios_fat, l.esp, l.config];
            assert_eq!(parts[0].first_lba, 2048);
            for (p, want) in parts.iter().zip([sizes.0, sizes.1, sizes.2, sizes.3]) {
                assert_eq!(p.first_lba % ALIGN, 0, "{l:?}");
                assert_eq!(p.sectors, want);
            }
            for pair in parts.windows(2) {
                assert!(
                    pair[0].first_lba + pair[0].sectors <= pair[1].first_lba,
                    "{l:?}"
                );
            }
            // The last partition ends before the backup entry array.
            let last_usable = l.total_sectors - 34;
            assert!(
                l.config.first_lba + l.config.sectors - 1 <= last_usable,
                "{l:?}"
            );
            assert_eq!(l.total_sectors % BOCHS_CYLINDER, 0);
            let guids = Guids::random();
            for e in l.gpt_entries(&guids) {
                assert!(
                    e.first_lba >= 34 && e.last_lba <= last_usable && e.first_lba <= e.last_lba
                );
            }
        }
    }

    #[test]
    fn layouts_the_mbr_cannot_address_or_empty_partitions_are_refused() {
        let err = Layout::new(961, 20480, 20480, u64::from(u32::MAX)).unwrap_err();
        assert!(err.contains("FERROCFG") && err.contains("2 TiB"), "{err}");
        let err = Layout::new(0, 20480, 20480, MIN_CONFIG_SECTORS).unwrap_err();
        assert!(err.contains("0 sectors"), "{err}");
        assert!(Layout::new(1, 1, 1, u64::MAX - 10).is_err());
    }

    #[test]
    fn the_config_partition_is_fat32_sized_for_its_files() {
        for clusters in [0, 1000, 200_000, 3_000_000] {
            let tree = ConfigTree {
                dirs: vec![],
                files: vec![],
                clusters,
            };
            let sectors = tree.partition_sectors().unwrap();
            assert_eq!(sectors % ALIGN, 0);
            assert!(sectors >= MIN_CONFIG_SECTORS);
            let fats = 2 * (sectors * 4).div_ceil(SECTOR);
            let data = sectors - FAT32_RESERVED_SECTORS - fats;
            assert!(data >= clusters + clusters / 10, "{clusters}: {sectors}");
            assert!(data >= FAT32_MIN_CLUSTERS);
        }
        let tree = ConfigTree {
            dirs: vec![],
            files: vec![],
            clusters: FAT32_MAX_CLUSTERS,
        };
        assert!(tree
            .partition_sectors()
            .unwrap_err()
            .contains("FAT32 holds at most"));
    }

    #[test]
    fn the_hybrid_mbr_points_the_boot_code_at_the_moved_stages() {
        let (dir, out) = built("mbr");
        let disk = fs::read(&out).unwrap();
        assert_eq!(&disk[..MBR_TABLE], &boot_code()[..]);
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
        let entries: Vec<MbrEntry> = (0..4)
            .map(|i| MbrEntry::decode(&disk[446 + 16 * i..]).unwrap())
            .collect();
        let config = config_partition(&out).unwrap();
        let stage_2_sectors = (stage_2().len() as u64).div_ceil(SECTOR) as u32;
        assert_eq!(
            entries,
            [
                MbrEntry {
                    boot: 0x80,
                    kind: 0x20,
                    first_lba: 2048,
                    sectors: stage_2_sectors
                },
                MbrEntry {
                    boot: 0x80,
                    kind: 0x0C,
                    first_lba: 4096,
                    sectors: 4096
                },
                MbrEntry {
                    boot: 0,
                    kind: 0xEE,
                    first_lba: 1,
                    sectors: 2047
                },
                MbrEntry {
                    boot: 0,
                    kind: 0x0C,
                    first_lba: (config.start / SECTOR) as u32,
                    sectors: ((config.end - config.start) / SECTOR) as u32
                },
            ]
        );
        // The protective entry's CHS start is LBA 1, as UEFI asks.
        assert_eq!(&disk[446 + 32 + 1..446 + 32 + 4], &[0, 2, 0]);
        // Stage 2 moved byte for byte; the rest of its last sector is zero.
        let stage_2 = stage_2();
        let moved = 2048 * SECTOR as usize;
        assert_eq!(&disk[moved..moved + stage_2.len()], &stage_2[..]);
        assert!(disk[moved + stage_2.len()..moved + 4 * 512]
            .iter()
            .all(|&b| b == 0));
        // Stage 2 reads its kernel from the FAT the next entry names.
        assert_eq!(
            mtools_out("mtype", &["-i", &at(&out, 4096), "::kernel-x86_64"]),
            "bios kernel"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn both_gpt_copies_are_valid_and_list_the_four_partitions() {
        let (dir, out) = built("gpt");
        let len = fs::metadata(&out).unwrap().len();
        assert_eq!(len % (BOCHS_CYLINDER * SECTOR), 0);
        let last = len / SECTOR - 1;
        let mut file = File::open(&out).unwrap();
        let primary = read_gpt(&mut file, &out, 1).unwrap();
        let backup = read_gpt(&mut file, &out, last).unwrap();
        assert_eq!(primary.header.alternate_lba, last);
        assert_eq!(backup.header.alternate_lba, 1);
        assert_eq!(backup.header.entries_lba, last - 32);
        assert_eq!(primary.entries, backup.entries);
        assert_eq!(primary.header.disk_guid, backup.header.disk_guid);
        let summary: Vec<(String, Guid, u64)> = primary
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.type_guid, e.first_lba))
            .collect();
        assert_eq!(summary[0], ("bios-stage-2".into(), BIOS_BOOT_TYPE, 2048));
        assert_eq!(summary[1], ("bios-boot".into(), BASIC_DATA_TYPE, 4096));
        assert_eq!(summary[2], ("efi-system".into(), ESP_TYPE, 8192));
        assert_eq!(
            summary[3],
            ("FERROCFG".into(), CONFIG_PARTITION_TYPE, 12288)
        );
        let mut seen = HashSet::new();
        let mut end = 0;
        for e in &primary.entries {
            assert!(seen.insert(e.unique_guid), "unique GUIDs repeat");
            assert!(e.first_lba > end && e.first_lba % ALIGN == 0);
            assert!(e.last_lba <= primary.header.last_usable_lba);
            end = e.last_lba;
        }
        // The UEFI loader and its files are in the ESP.
        assert_eq!(
            mtools_out("mtype", &["-i", &at(&out, 8192), "::efi/boot/bootx64.efi"]),
            "uefi loader"
        );
        assert_eq!(
            mtools_out("mtype", &["-i", &at(&out, 8192), "::kernel-x86_64"]),
            "uefi kernel"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn ferrocfg_is_fat32_and_holds_the_config_folder() {
        let (dir, out) = built("ferrocfg");
        let range = config_partition(&out).unwrap();
        assert_eq!(range.end - range.start, MIN_CONFIG_SECTORS * SECTOR);
        let disk = fs::read(&out).unwrap();
        let bpb = &disk[range.start as usize..range.start as usize + 512];
        let summary = fat_summary(bpb).unwrap();
        assert_eq!(summary.fat16_size, 0);
        assert!(summary.clusters >= FAT32_MIN_CLUSTERS, "{summary:?}");
        assert_eq!(&bpb[71..82], b"FERROCFG   ");
        assert_eq!(&bpb[82..90], b"FAT32   ");
        assert_eq!(le_u32(bpb, 28), Some((range.start / SECTOR) as u32));
        let image = format!("{}@@{}", out.display(), range.start);
        let listing = mtools_out("mdir", &["-/", "-b", "-i", &image, "::"]);
        let mut names: Vec<&str> = listing.lines().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "::/hypervisor.toml",
                "::/linux/",
                "::/linux/bzImage",
                "::/linux/deeper/",
                "::/linux/deeper/a rather long file name.txt",
            ]
        );
        assert_eq!(
            mtools_out("mtype", &["-i", &image, "::hypervisor.toml"]),
            fs::read_to_string(dir.join("config").join("hypervisor.toml")).unwrap()
        );
        let copied = dir.join("bzImage.back");
        mtools_out(
            "mcopy",
            &["-i", &image, "::linux/bzImage", copied.to_str().unwrap()],
        );
        assert_eq!(fs::read(copied).unwrap(), vec![0xC3u8; 5000]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn ferrocfg_grows_past_64_mib_for_large_files() {
        let dir = scratch("large");
        let bios = fake_bios(&dir);
        let uefi = fake_uefi(&dir, ESP_TYPE);
        let config = dir.join("config");
        fs::create_dir_all(&config).unwrap();
        // Sparse: 70 MiB that cost no disk until copied.
        File::create(config.join("big.img"))
            .unwrap()
            .set_len(70 << 20)
            .unwrap();
        let out = dir.join("hybrid.img");
        hybrid_image(&bios, &uefi, &config, &out).unwrap();
        let range = config_partition(&out).unwrap();
        assert!(range.end - range.start > 70 << 20);
        let image = format!("{}@@{}", out.display(), range.start);
        let listing = mtools_out("mdir", &["-i", &image, "::"]);
        assert!(
            listing.contains("73 400 320") || listing.contains("73400320"),
            "{listing}"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn broken_bios_images_are_refused_with_the_reason() {
        let dir = scratch("bad-bios");
        let uefi = fake_uefi(&dir, ESP_TYPE);
        let config = fake_config(&dir);
        let out = dir.join("out.img");
        let missing = dir.join("missing.img");
        let err = hybrid_image(&missing, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("cannot open") && err.contains("missing.img"),
            "{err}"
        );

        let bios = fake_bios(&dir);
        let good = fs::read(&bios).unwrap();
        let mut unsigned = good.clone();
        unsigned[511] = 0;
        fs::write(&bios, &unsigned).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("bios.img") && err.contains("0x55 0xAA"),
            "{err}"
        );

        let mut no_stage_2 = good.clone();
        no_stage_2[446 + 4] = 0x83;
        fs::write(&bios, &no_stage_2).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(err.contains("type 0x20"), "{err}");

        let mut not_fat = good.clone();
        not_fat[462 + 4] = 0x83;
        fs::write(&bios, &not_fat).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("0x83") && err.contains("not a FAT type"),
            "{err}"
        );

        let mut past_end = good;
        past_end[462 + 12..462 + 16].copy_from_slice(&9000u32.to_le_bytes());
        fs::write(&bios, &past_end).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("FAT entry 1") && err.contains("does not fit"),
            "{err}"
        );
        assert!(!out.exists());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn broken_uefi_images_are_refused_with_the_reason() {
        let dir = scratch("bad-uefi");
        let bios = fake_bios(&dir);
        let config = fake_config(&dir);
        let out = dir.join("out.img");

        let uefi = fake_uefi(&dir, BASIC_DATA_TYPE);
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("uefi.img") && err.contains("no EFI system partition"),
            "{err}"
        );
        let err = config_partition(&uefi).unwrap_err();
        assert!(
            err.contains("uefi.img") && err.contains("no FERROCFG"),
            "{err}"
        );

        let uefi = fake_uefi(&dir, ESP_TYPE);
        let mut disk = fs::read(&uefi).unwrap();
        disk[1024 + 60] ^= 1;
        fs::write(&uefi, &disk).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("LBA 1") && err.contains("entry array CRC32"),
            "{err}"
        );

        // An ESP reaching past the usable LBAs (and the file), CRCs intact.
        let mut disk = fs::read(fake_uefi(&dir, ESP_TYPE)).unwrap();
        disk[1024 + 40..1024 + 48].copy_from_slice(&100_000u64.to_le_bytes());
        let crc = crc32(&disk[1024..1024 + 128 * 128]);
        disk[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
        disk[512 + 16..512 + 20].fill(0);
        let crc = crc32(&disk[512..512 + 92]);
        disk[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        fs::write(&uefi, &disk).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("LBA 34..=100000") && err.contains("outside"),
            "{err}"
        );

        fs::write(&uefi, vec![0u8; 4096]).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(err.contains("EFI PART"), "{err}");

        let err = hybrid_image(&bios, &bios, &config, &bios).unwrap_err();
        assert!(err.contains("is also an input"), "{err}");
        assert!(!out.exists());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn config_entries_fat_cannot_hold_are_refused_by_name() {
        let dir = scratch("bad-config");
        let bios = fake_bios(&dir);
        let uefi = fake_uefi(&dir, ESP_TYPE);
        let out = dir.join("out.img");
        let case = |name: &str| {
            let config = dir.join(format!("config-{name}"));
            let _ = fs::remove_dir_all(&config);
            fs::create_dir_all(&config).unwrap();
            config
        };

        let config = case("colon");
        fs::write(config.join("a:b"), "x").unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(err.contains("a:b") && err.contains("':'"), "{err}");

        let config = case("twice");
        fs::write(config.join("Guest.toml"), "x").unwrap();
        fs::write(config.join("guest.TOML"), "x").unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(err.contains("only in case"), "{err}");

        let config = case("dot");
        fs::write(config.join("trailing."), "x").unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("trailing.") && err.contains("ends with a dot"),
            "{err}"
        );

        let config = case("socket");
        let _listener =
            std::os::unix::net::UnixListener::bind(config.join("control.sock")).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("control.sock") && err.contains("neither"),
            "{err}"
        );

        let config = case("links");
        fs::write(dir.join("outside.txt"), "linked file").unwrap();
        std::os::unix::fs::symlink(dir.join("outside.txt"), config.join("file-link")).unwrap();
        let linked_out = dir.join("linked.img");
        hybrid_image(&bios, &uefi, &config, &linked_out).unwrap();
        let start = config_partition(&linked_out).unwrap().start;
        let image = format!("{}@@{start}", linked_out.display());
        assert_eq!(
            mtools_out("mtype", &["-i", &image, "::file-link"]),
            "linked file"
        );
        std::os::unix::fs::symlink(&config, config.join("loop")).unwrap();
        let err = hybrid_image(&bios, &uefi, &config, &out).unwrap_err();
        assert!(
            err.contains("loop") && err.contains("links to a folder"),
            "{err}"
        );

        let err = hybrid_image(&bios, &uefi, &config, &dir.join("a@@b.img")).unwrap_err();
        assert!(err.contains("\"@@\""), "{err}");

        let err = hybrid_image(&bios, &uefi, &dir.join("nowhere"), &out).unwrap_err();
        assert!(
            err.contains("config folder") && err.contains("nowhere"),
            "{err}"
        );
        assert!(!out.exists());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn mtools_errors_name_the_command_and_its_output() {
        let err = mtool(
            "mdir",
            [
                "-i".into(),
                "/nonexistent/ferrovisor.img@@0".into(),
                "::".into(),
            ],
        )
        .unwrap_err();
        assert!(
            err.contains("`mdir -i /nonexistent/ferrovisor.img@@0 ::` failed"),
            "{err}"
        );
        assert!(err.lines().count() > 1, "no output quoted: {err}");
        let err = mtool("mformat-that-does-not-exist", []).unwrap_err();
        assert!(
            err.contains("not found") && err.contains("install mtools"),
            "{err}"
        );
    }

    #[test]
    fn fat_summaries_count_clusters_like_the_fat_specification() {
        // A FAT16 BPB: 20480 sectors, 2 per cluster, 1 reserved, 2 FATs of
        // 40, 512 root entries (32 sectors): (20480-1-80-32)/2 clusters.
        let mut bpb = [0u8; 512];
        bpb[11..13].copy_from_slice(&512u16.to_le_bytes());
        bpb[13] = 2;
        bpb[14..16].copy_from_slice(&1u16.to_le_bytes());
        bpb[16] = 2;
        bpb[17..19].copy_from_slice(&512u16.to_le_bytes());
        bpb[19..21].copy_from_slice(&20480u16.to_le_bytes());
        bpb[22..24].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            fat_summary(&bpb),
            Some(FatSummary {
                total_sectors: 20480,
                fat16_size: 40,
                clusters: 10183
            })
        );
        assert_eq!(fat_summary(&bpb[..20]), None);
        bpb[13] = 0;
        assert_eq!(fat_summary(&bpb), None);
    }
}
