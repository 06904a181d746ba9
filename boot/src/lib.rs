//! Builds Ferrovisor's bootable disk images from the kernel ELF.
//!
//! The rust-osdev `bootloader` crate does the heavy lifting: its build script
//! compiles the BIOS stages and the UEFI loader, and its `DiskImageBuilder`
//! lays out an MBR disk (BIOS) or a GPT disk (UEFI) whose FAT boot partition
//! carries the kernel and, optionally, a ramdisk. This crate fixes the
//! bootloader settings Ferrovisor wants and gives xtask one call.
//!
//! It is a host-side library with a small command-line front end
//! (`src/main.rs`): xtask runs that binary instead of linking this crate, so
//! `cargo xtask` compiles in seconds and can install the nightly components
//! the bootloader build needs before anything asks for them.

use std::fmt;
use std::path::{Path, PathBuf};

use bootloader::{BootConfig, DiskImageBuilder};
use bootloader_boot_config::LevelFilter;

/// The firmware a disk image boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS: an MBR disk with the bootloader's boot sector and stages.
    Bios,
    /// UEFI: a GPT disk with an EFI system partition.
    Uefi,
}

impl Firmware {
    /// Both firmwares, in the order images are built.
    pub const ALL: [Firmware; 2] = [Firmware::Bios, Firmware::Uefi];

    /// The lower-case name used in file names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// The image file name for this firmware inside an output folder.
    pub fn image_file_name(self) -> String {
        format!("ferrovisor-{}.img", self.name())
    }
}

/// What went wrong while building an image.
#[derive(Debug)]
pub enum BootError {
    /// The kernel ELF does not exist.
    MissingKernel(PathBuf),
    /// The ramdisk file does not exist.
    MissingRamdisk(PathBuf),
    /// The bootloader's image builder failed.
    Builder {
        /// Which image was being built.
        firmware: Firmware,
        /// The builder's error chain, rendered.
        message: String,
    },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::MissingKernel(p) => {
                write!(
                    f,
                    "kernel ELF {} does not exist (build it with `cargo xtask build`)",
                    p.display()
                )
            }
            BootError::MissingRamdisk(p) => write!(f, "ramdisk {} does not exist", p.display()),
            BootError::Builder { firmware, message } => {
                write!(
                    f,
                    "building the {} image failed: {message}",
                    firmware.name()
                )
            }
        }
    }
}

impl std::error::Error for BootError {}

/// Settings for the bootloader itself, baked into each image.
fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    // Drawing text into the frame buffer is slow under Bochs and nobody
    // watches a screen: Ferrovisor's console is the serial port.
    config.frame_buffer_logging = false;
    // The serial console belongs to Ferrovisor's own lines; the bootloader
    // still reports its warnings and errors there.
    config.serial_logging = true;
    config.log_level = LevelFilter::Warn;
    config
}

/// The disk images built for one kernel.
#[derive(Clone, Debug)]
pub struct Images {
    /// One path per firmware that was asked for.
    pub paths: Vec<(Firmware, PathBuf)>,
}

/// Builds one disk image per firmware in `firmwares` from `kernel` into
/// `out_dir`, with `ramdisk` as the bootloader's ramdisk when given.
pub fn build_images(
    kernel: &Path,
    ramdisk: Option<&Path>,
    out_dir: &Path,
    firmwares: &[Firmware],
) -> Result<Images, BootError> {
    if !kernel.is_file() {
        return Err(BootError::MissingKernel(kernel.to_path_buf()));
    }
    let mut builder = DiskImageBuilder::new(kernel.to_path_buf());
    if let Some(ramdisk) = ramdisk {
        if !ramdisk.is_file() {
            return Err(BootError::MissingRamdisk(ramdisk.to_path_buf()));
        }
        builder.set_ramdisk(ramdisk.to_path_buf());
    }
    builder.set_boot_config(&boot_config());
    let mut paths = Vec::new();
    for &firmware in firmwares {
        let path = out_dir.join(firmware.image_file_name());
        let result = match firmware {
            Firmware::Bios => builder.create_bios_image(&path),
            Firmware::Uefi => builder.create_uefi_image(&path),
        };
        result.map_err(|e| BootError::Builder {
            firmware,
            message: format!("{e:#}"),
        })?;
        paths.push((firmware, path));
    }
    Ok(Images { paths })
}
