//! A disk that boots a Linux kernel and initrd with no hypervisor, for
//! comparing a Linux guest's boot under Ferrovisor with the same boot on
//! the bare (emulated) machine (`cargo xtask bench`).
//!
//! The disk is what a PC with SYSLINUX on its first disk looks like
//! (LBAs of 512 bytes):
//!
//! ```text
//! LBA 0      SYSLINUX's MBR boot code, one entry: FAT16 (type 0x0E,
//!            active) from LBA 2048 to the end
//! LBA 2048   FAT16: SYSLINUX's boot sector, ldlinux.sys and ldlinux.c32,
//!            syslinux.cfg, /vmlinuz, /initrd
//! ...        up to a whole number of 16 x 63-sector cylinders (the
//!            geometry Bochs guesses for a flat image)
//! ```
//!
//! The MBR code loads the active partition's boot sector, which SYSLINUX's
//! installer wrote; `syslinux.cfg` boots `/vmlinuz` with `/initrd` and the
//! command line given. mtools writes the FAT (`image@@offset` names the
//! partition inside the disk) and SYSLINUX's installer works through
//! mtools too, so nothing is mounted and root is not needed.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use crate::disk::{mbr_sector, MbrEntry, ALIGN, BOCHS_CYLINDER, SECTOR};
use crate::setup::Syslinux;

/// MBR partition type of a FAT16 partition reached by LBA.
const MBR_FAT16_LBA: u8 = 0x0E;
/// The active ("boot") flag of an MBR entry.
const MBR_ACTIVE: u8 = 0x80;
/// The partition is never smaller (FAT16 wants at least 4085 clusters,
/// and mformat picks FAT16 comfortably above 16 MiB).
const MIN_PARTITION_SECTORS: u64 = 32 * 1024 * 1024 / SECTOR;
/// Room left in the partition besides the kernel and the initrd
/// (SYSLINUX's files, the FATs, the root directory, cluster slack).
const SLACK_SECTORS: u64 = 4 * 1024 * 1024 / SECTOR;

/// The `syslinux.cfg` that boots `/vmlinuz` with `/initrd` at once.
pub fn syslinux_cfg(cmdline: &str) -> String {
    format!(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /vmlinuz\n  INITRD /initrd\n  APPEND {cmdline}\n"
    )
}

/// The partition's length in sectors for `payload` bytes of kernel and
/// initrd, and the disk's (the partition at [`ALIGN`], the disk padded to
/// whole Bochs cylinders).
pub fn layout(payload: u64) -> (u64, u64) {
    let needed = payload.div_ceil(SECTOR) + SLACK_SECTORS;
    let partition = needed.max(MIN_PARTITION_SECTORS).next_multiple_of(ALIGN);
    let disk = (ALIGN + partition).next_multiple_of(BOCHS_CYLINDER);
    (partition, disk)
}

/// Writes `out`: a disk that boots `kernel` with `initrd` and `cmdline`
/// through SYSLINUX (see the module's documentation).
///
/// # Errors
///
/// A message naming the file or command that failed.
pub fn syslinux_disk(
    syslinux: &Syslinux,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
) -> Result<(), String> {
    let len = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| format!("native disk: cannot read {}: {e}", p.display()))
    };
    let (partition, sectors) = layout(len(kernel)? + len(initrd)?);
    let mbr_code = fs::read(&syslinux.mbr)
        .map_err(|e| format!("native disk: cannot read {}: {e}", syslinux.mbr.display()))?;
    let unused = MbrEntry {
        boot: 0,
        kind: 0,
        first_lba: 0,
        sectors: 0,
    };
    let entries = [
        MbrEntry {
            boot: MBR_ACTIVE,
            kind: MBR_FAT16_LBA,
            first_lba: ALIGN as u32,
            sectors: u32::try_from(partition).map_err(|_| {
                "native disk: the kernel and initrd are too large for an MBR partition".to_string()
            })?,
        },
        unused,
        unused,
        unused,
    ];
    let write_err = |e: std::io::Error| format!("native disk: cannot write {}: {e}", out.display());
    // A fresh file: an old disk's FAT must not survive in the new one.
    let _ = fs::remove_file(out);
    let mut disk = File::create(out).map_err(write_err)?;
    disk.set_len(sectors * SECTOR).map_err(write_err)?;
    disk.seek(SeekFrom::Start(0)).map_err(write_err)?;
    disk.write_all(&mbr_sector(&mbr_code, &entries))
        .map_err(write_err)?;
    drop(disk);

    let offset = ALIGN * SECTOR;
    let mut image = out.as_os_str().to_os_string();
    image.push(format!("@@{offset}"));
    // Hidden sectors (-H) = the partition's LBA, as on any partitioned
    // disk; the geometry is the one Bochs gives the disk.
    mtools(
        "mformat",
        [
            "-i".into(),
            image.clone(),
            "-T".into(),
            partition.to_string().into(),
            "-h".into(),
            "16".into(),
            "-s".into(),
            "63".into(),
            "-H".into(),
            ALIGN.to_string().into(),
            "-v".into(),
            "FVNATIVE".into(),
            "::".into(),
        ],
    )?;
    let cfg = out.with_extension("syslinux.cfg");
    fs::write(&cfg, syslinux_cfg(cmdline))
        .map_err(|e| format!("native disk: cannot write {}: {e}", cfg.display()))?;
    for (from, name) in [
        (kernel, "::/vmlinuz"),
        (initrd, "::/initrd"),
        (cfg.as_path(), "::/syslinux.cfg"),
    ] {
        mtools(
            "mcopy",
            [
                "-i".into(),
                image.clone(),
                from.as_os_str().to_os_string(),
                name.into(),
            ],
        )?;
    }
    let _ = fs::remove_file(&cfg);
    crate::run_tool(
        "native disk",
        Command::new(&syslinux.binary)
            .arg("--offset")
            .arg(offset.to_string())
            .arg("--install")
            .arg(out)
            .env("MTOOLS_SKIP_CHECK", "1"),
        "syslinux",
    )
}

/// Runs an mtools program on the partition.
fn mtools<const N: usize>(program: &str, args: [OsString; N]) -> Result<(), String> {
    crate::run_tool(
        "native disk",
        Command::new(program)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1"),
        "mtools",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_holds_the_payload_and_the_disk_is_whole_cylinders() {
        let (partition, disk) = layout(10 * 1024 * 1024);
        assert_eq!(partition, MIN_PARTITION_SECTORS);
        assert_eq!(disk % BOCHS_CYLINDER, 0);
        assert!(disk >= ALIGN + partition);
        let (partition, disk) = layout(40 * 1024 * 1024);
        assert!(partition * SECTOR >= 44 * 1024 * 1024);
        assert_eq!(partition % ALIGN, 0);
        assert_eq!(disk % BOCHS_CYLINDER, 0);
        assert!(disk - (ALIGN + partition) < BOCHS_CYLINDER);
    }

    #[test]
    fn syslinux_boots_the_kernel_at_once_with_the_command_line() {
        let cfg = syslinux_cfg("console=ttyS0,115200 fv.after=poweroff");
        let lines: Vec<&str> = cfg.lines().map(str::trim).collect();
        for line in [
            "DEFAULT linux",
            "PROMPT 0",
            "LINUX /vmlinuz",
            "INITRD /initrd",
            "APPEND console=ttyS0,115200 fv.after=poweroff",
        ] {
            assert!(lines.contains(&line), "{line}: {cfg}");
        }
    }
}
