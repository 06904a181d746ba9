//! Building the kernel and its disk images.
//!
//! A *variant* is one kernel build: the normal one, or one with a self-test
//! compiled in for the boot tests. Each variant gets its own folder under
//! `target/ferrovisor/` holding its kernel ELF and its BIOS and UEFI images.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{out_dir, workspace_root};

/// The target the kernel is built for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// What to compile into one kernel build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Log level baked into the kernel (`FERROVISOR_LOG`).
    pub log_level: String,
    /// Self-test compiled in (`FERROVISOR_SELFTEST`), if any.
    pub selftest: Option<String>,
    /// The folder whose `hypervisor.toml` (with the test guests built from
    /// `guest-images/asm`) fills the config partition and the boot ramdisk
    /// (a FAT copy of it); `None` for neither.
    pub config: Option<PathBuf>,
}

impl Default for Variant {
    /// The normal build with the default guests (`guest-images/default`).
    fn default() -> Self {
        Variant {
            log_level: "info".into(),
            selftest: None,
            config: Some(crate::guests::config_dir("default")),
        }
    }
}

impl Variant {
    /// A normal build with the given log level.
    pub fn with_log_level(level: &str) -> Self {
        Variant {
            log_level: level.into(),
            ..Variant::default()
        }
    }

    /// A build that runs the named self-test after the CPU report, with no
    /// guests.
    pub fn selftest(name: &str) -> Self {
        Variant {
            selftest: Some(name.into()),
            config: None,
            ..Variant::default()
        }
    }

    /// A normal build booting the guests of `guest-images/<name>`.
    pub fn with_guests(name: &str) -> Self {
        Variant {
            config: Some(crate::guests::config_dir(name)),
            ..Variant::default()
        }
    }

    /// The folder name of this variant under `target/ferrovisor/`.
    pub fn dir_name(&self) -> String {
        let config = match &self.config {
            Some(dir) => dir
                .file_name()
                .map_or("config".into(), |n| n.to_string_lossy().into_owned()),
            None => "none".into(),
        };
        match &self.selftest {
            Some(test) => format!("selftest-{test}-{}", self.log_level),
            None => format!("kernel-{}-{config}", self.log_level),
        }
    }

    /// The folder holding this variant's kernel and images.
    pub fn dir(&self) -> PathBuf {
        out_dir().join(self.dir_name())
    }

    /// The variant's copy of the kernel ELF, with its debug information
    /// (for addr2line and debuggers).
    pub fn kernel(&self) -> PathBuf {
        self.dir().join("kernel")
    }

    /// The kernel ELF that goes into the boot images: [`Variant::kernel`]
    /// without its debug sections, which the bootloader would otherwise read
    /// from disk at every boot (about 13 of its 14 MB; under Bochs, reading
    /// them through the BIOS cost some 170 million ticks a boot).
    pub fn boot_kernel(&self) -> PathBuf {
        self.dir().join("kernel.boot")
    }

    /// The disk image to boot with `firmware`: with a config folder, the
    /// one GPT disk that boots by BIOS and UEFI and holds the FERROCFG
    /// config partition ([`Variant::disk`]); without, the bootloader's
    /// image for that firmware.
    pub fn image(&self, firmware: Firmware) -> PathBuf {
        if self.config.is_some() {
            self.disk()
        } else {
            self.bootloader_image(firmware)
        }
    }

    /// The bootloader's own image for `firmware` (an MBR disk for BIOS, a
    /// GPT disk for UEFI), from which [`Variant::disk`] is assembled.
    pub fn bootloader_image(&self, firmware: Firmware) -> PathBuf {
        self.dir()
            .join(format!("ferrovisor-{}.img", firmware.name()))
    }

    /// The GPT disk with a hybrid MBR, bootable by BIOS and UEFI, holding
    /// the config partition.
    pub fn disk(&self) -> PathBuf {
        self.dir().join("ferrovisor.img")
    }

    /// The folder whose files fill the config partition (the config folder
    /// plus the built test guests).
    pub fn staging(&self) -> PathBuf {
        self.dir().join("config")
    }
}

/// The firmware an image boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS under QEMU, the Bochs ROM BIOS).
    Bios,
    /// UEFI (OVMF).
    Uefi,
}

impl Firmware {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// Parses `bios` or `uefi`.
    pub fn parse(s: &str) -> Option<Firmware> {
        match s {
            "bios" => Some(Firmware::Bios),
            "uefi" => Some(Firmware::Uefi),
            _ => None,
        }
    }
}

/// A build step that failed.
#[derive(Debug)]
pub struct BuildError(pub String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// The folder of the image builder, a workspace of its own whose
/// `rust-toolchain.toml` pins the bare-metal toolchain.
pub fn boot_dir() -> PathBuf {
    workspace_root().join("boot")
}

/// The bare-metal toolchain's channel, read from `boot/rust-toolchain.toml`.
pub fn bare_metal_channel() -> Result<String, BuildError> {
    let path = boot_dir().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BuildError(format!("cannot read {}: {e}", path.display())))?;
    crate::setup::parse_toolchain(&text)
        .map(|spec| spec.channel)
        .map_err(|e| BuildError(format!("{}: {e}", path.display())))
}

/// `cargo +<bare-metal toolchain>` through rustup's proxy, run in `dir`, so
/// the channel pinned for the kernel and bootloader wins over the
/// workspace's own.
pub fn bare_metal_cargo(dir: PathBuf) -> Result<Command, BuildError> {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", bare_metal_channel()?));
    // The outer cargo (running xtask) points these at its own toolchain.
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir);
    Ok(cmd)
}

fn run(mut cmd: Command, what: &str) -> Result<(), BuildError> {
    let status = cmd
        .status()
        .map_err(|e| BuildError(format!("{what}: cannot start it: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError(format!("{what} failed ({status})")))
    }
}

/// Compiles the kernel for `variant` and copies the ELF into its folder.
pub fn kernel(variant: &Variant) -> Result<PathBuf, BuildError> {
    println!("xtask: building the kernel ({})", variant.dir_name());
    let mut cmd = bare_metal_cargo(workspace_root())?;
    cmd.args([
        "build",
        "--package",
        "kernel",
        "--bin",
        "kernel",
        "--release",
        "--target",
        KERNEL_TARGET,
    ]);
    cmd.env("FERROVISOR_LOG", &variant.log_level);
    match &variant.selftest {
        Some(test) => cmd.env("FERROVISOR_SELFTEST", test),
        None => cmd.env_remove("FERROVISOR_SELFTEST"),
    };
    run(cmd, "building the kernel")?;
    let built = workspace_root()
        .join("target")
        .join(KERNEL_TARGET)
        .join("release")
        .join("kernel");
    std::fs::create_dir_all(variant.dir())
        .map_err(|e| BuildError(format!("cannot create {}: {e}", variant.dir().display())))?;
    std::fs::copy(&built, variant.kernel()).map_err(|e| {
        BuildError(format!(
            "cannot copy {} to {}: {e}",
            built.display(),
            variant.kernel().display()
        ))
    })?;
    // The symbol table stays, so a panic's addresses can still be named.
    let mut strip = Command::new("objcopy");
    strip
        .arg("--strip-debug")
        .arg(variant.kernel())
        .arg(variant.boot_kernel());
    run(
        strip,
        "stripping the kernel's debug sections (objcopy, binutils)",
    )?;
    Ok(variant.kernel())
}

/// Builds the BIOS and UEFI disk images of an already built `variant`.
///
/// The first run compiles the `bootloader` crate's boot stages, which takes
/// a few minutes; later runs take a second.
pub fn images(variant: &Variant) -> Result<(), BuildError> {
    println!(
        "xtask: writing the BIOS and UEFI disk images ({})",
        variant.dir_name()
    );
    if !boot_dir()
        .join("target")
        .join("release")
        .join("boot")
        .is_file()
    {
        println!(
            "xtask: first image build: the bootloader compiles its boot stages now (a few minutes)"
        );
    }
    let mut cmd = bare_metal_cargo(boot_dir())?;
    cmd.args(["run", "--release", "--"]);
    cmd.arg("--kernel")
        .arg(variant.boot_kernel())
        .arg("--out")
        .arg(variant.dir());
    if let Some(config) = &variant.config {
        println!(
            "xtask: building the guests and the config files from {}",
            config.display()
        );
        crate::guests::stage(config, &variant.staging()).map_err(BuildError)?;
        let ramdisk = variant.dir().join("ramdisk.fat");
        let ramdisk_files = variant.dir().join("ramdisk-files");
        ramdisk_tree(&variant.staging(), &ramdisk_files)?;
        crate::disk::ramdisk_image(&ramdisk_files, &ramdisk).map_err(BuildError)?;
        cmd.arg("--ramdisk").arg(ramdisk);
    }
    run(cmd, "building the disk images")?;
    if let Some(config) = &variant.config {
        println!(
            "xtask: writing {} (BIOS and UEFI, config partition FERROCFG from {})",
            variant.disk().display(),
            config.display()
        );
        crate::disk::hybrid_image(
            &variant.bootloader_image(Firmware::Bios),
            &variant.bootloader_image(Firmware::Uefi),
            &variant.staging(),
            &variant.disk(),
        )
        .map_err(BuildError)?;
    }
    Ok(())
}

/// Copies the config files in `staging` to `out` for the boot ramdisk, all
/// but the Linux guests' kernels and initramfs: the bootloader reads its
/// ramdisk at every boot through the firmware, and those megabytes would
/// double what it reads for a copy of the config partition that the kernel
/// uses only where no disk driver finds the partition. A Linux guest booted
/// from the ramdisk is reported with its missing kernel.
fn ramdisk_tree(staging: &Path, out: &Path) -> Result<(), BuildError> {
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        BuildError(format!("ramdisk: cannot {what} {}: {e}", path.display()))
    };
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).map_err(|e| fail("create", out, e))?;
    let skipped: Vec<&str> = crate::linux::Artifact::ALL
        .iter()
        .map(|a| a.file_name())
        .collect();
    let entries = std::fs::read_dir(staging).map_err(|e| fail("read", staging, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| fail("read", staging, e))?;
        let name = entry.file_name();
        if skipped.iter().any(|s| name.to_str() == Some(*s)) {
            continue;
        }
        copy_tree(&entry.path(), &out.join(&name)).map_err(|e| fail("copy", &entry.path(), e))?;
    }
    Ok(())
}

/// Copies the file or folder `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// Kernel and images for `variant`.
pub fn all(variant: &Variant) -> Result<(), BuildError> {
    kernel(variant)?;
    images(variant)
}
