//! Making sure the host has what the build and the engines need, installing
//! it where this process may and naming the exact command where it may not.
//!
//! Two kinds of things: the Rust toolchains, components and targets that the
//! `rust-toolchain.toml` files name (rustup does not fetch them itself when
//! `RUSTUP_AUTO_INSTALL=0`), and the host tools of each engine (QEMU, OVMF,
//! Bochs with its ROM images and display plugin, mtools). Lookups and
//! decisions are pure functions over what the system reports, so they are
//! unit tested; the functions that run rustup and apt-get are thin.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::Firmware;
use crate::runner::{Engine, TcgCpu};
use crate::workspace_root;

/// A host tool that an engine or a build step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `qemu-system-x86_64`.
    Qemu,
    /// OVMF, the UEFI firmware QEMU boots UEFI images with.
    Ovmf,
    /// Bochs with its ROM BIOS, the cirrus VGA BIOS and the term display.
    Bochs,
    /// mtools (`mformat`, `mcopy`): writing the FERROCFG config partition
    /// of every image, and the boot tests that edit it.
    Mtools,
    /// What building a Linux kernel needs (`xtask::linux`'s small kernel):
    /// make and a C compiler, flex and bison for Kconfig, bc, libelf for
    /// objtool, lz4 for the LZ4-compressed image, xz for the source
    /// tarball, perl for the build scripts, dpkg-deb to unpack it.
    LinuxBuild,
    /// SYSLINUX (its installer and MBR): the disk that boots a Linux guest's
    /// kernel natively, for `cargo xtask bench` (`xtask::native`).
    Syslinux,
}

/// The programs [`Tool::LinuxBuild`] needs on `PATH`, each with its Debian
/// package.
const LINUX_BUILD_PROGRAMS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("lz4", "lz4"),
    ("xz", "xz-utils"),
    ("perl", "perl"),
    ("dpkg-deb", "dpkg"),
];

/// libelf's header, which objtool includes.
const LIBELF_HEADER: &str = "/usr/include/gelf.h";

/// The host tools `engine` needs to build and boot an image made for
/// `firmware` (every image has a config partition, which mtools writes).
pub fn needs(engine: Engine, firmware: Firmware) -> Vec<Tool> {
    let mut tools = match (engine, firmware) {
        (Engine::Qemu(_) | Engine::Kvm, Firmware::Bios) => vec![Tool::Qemu],
        (Engine::Qemu(_) | Engine::Kvm, Firmware::Uefi) => vec![Tool::Qemu, Tool::Ovmf],
        // Bochs boots BIOS images only; the runner says so for UEFI.
        (Engine::Bochs, _) => vec![Tool::Bochs],
    };
    tools.push(Tool::Mtools);
    tools
}

/// The host tools the boot tests need: QEMU with OVMF, and Bochs. `cargo
/// xtask test` installs them and the tests look them up, from this one list.
pub fn boot_test_needs() -> Vec<Tool> {
    let mut tools = [
        needs(Engine::Qemu(TcgCpu::Svm), Firmware::Uefi),
        needs(Engine::Bochs, Firmware::Bios),
    ]
    .concat();
    tools.sort_by_key(|t| *t as u8);
    tools.dedup();
    tools
}

/// OVMF's code image and, where the firmware is split, the template of its
/// variable store (the runner gives each boot a private copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovmf {
    /// The code image (or the unified image when `vars` is `None`).
    pub code: PathBuf,
    /// The variable store template of a split firmware.
    pub vars: Option<PathBuf>,
}

/// The files a Bochs boot uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bochs {
    /// The `bochs` binary.
    pub binary: PathBuf,
    /// The ROM BIOS (`romimage`).
    pub bios: PathBuf,
    /// The cirrus VGA BIOS (`vgaromimage`) the bootloader's BIOS stage needs.
    pub vgabios: PathBuf,
    /// The term display plugin; `None` for a build without plugins.
    pub display_plugin: Option<PathBuf>,
}

/// The tools found. A tool that was not asked for, or is missing, is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// `qemu-system-x86_64`.
    pub qemu: Option<PathBuf>,
    /// The UEFI firmware.
    pub ovmf: Option<Ovmf>,
    /// Bochs and its files.
    pub bochs: Option<Bochs>,
    /// `mcopy` from mtools.
    pub mcopy: Option<PathBuf>,
    /// SYSLINUX's installer and MBR.
    pub syslinux: Option<Syslinux>,
}

/// What writing a SYSLINUX boot disk takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syslinux {
    /// The `syslinux` installer (it installs onto a FAT image through
    /// mtools).
    pub binary: PathBuf,
    /// The MBR boot code that starts the active partition's boot sector.
    pub mbr: PathBuf,
}

/// SYSLINUX's MBR: Debian's `syslinux-common`, then other distributions'.
const SYSLINUX_MBR: &[&str] = &[
    "/usr/lib/syslinux/mbr/mbr.bin",
    "/usr/share/syslinux/mbr.bin",
    "/usr/lib/syslinux/bios/mbr.bin",
];

/// One missing piece and the Debian package that provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// What is missing, in words.
    pub what: String,
    /// The Debian/Ubuntu package that provides it.
    pub package: &'static str,
}

/// Split OVMF builds, most wanted first: (code, variable store template).
const OVMF_SPLIT: &[(&str, &str)] = &[
    // Debian 12+, Ubuntu 22.04+.
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    // Older Debian and Ubuntu.
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    // Fedora.
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    // Arch, then its older layouts, then Gentoo.
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
    (
        "/usr/share/edk2/x64/OVMF_CODE.fd",
        "/usr/share/edk2/x64/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2-ovmf/x64/OVMF_CODE.fd",
        "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2-ovmf/OVMF_CODE.fd",
        "/usr/share/edk2-ovmf/OVMF_VARS.fd",
    ),
    // openSUSE.
    (
        "/usr/share/qemu/ovmf-x86_64-code.bin",
        "/usr/share/qemu/ovmf-x86_64-vars.bin",
    ),
];

/// Unified OVMF images (code and variables in one file, for `-bios`).
const OVMF_UNIFIED: &[&str] = &["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"];

const BOCHS_BIOS: &[&str] = &[
    "/usr/share/bochs/BIOS-bochs-latest",
    "/usr/local/share/bochs/BIOS-bochs-latest",
];

/// Debian's vgabios package, then the file an upstream Bochs install ships.
const BOCHS_VGABIOS: &[&str] = &[
    "/usr/share/vgabios/vgabios.cirrus.bin",
    "/usr/share/bochs/VGABIOS-lgpl-latest-cirrus",
    "/usr/local/share/bochs/VGABIOS-lgpl-latest-cirrus",
];

/// The term display plugin's file name starts with this (`.so`, `.so.0`,
/// ...). Term rather than rfb: see `runner::bochs_config` for why.
const DISPLAY_PLUGIN: &str = "libbx_term_gui.so";

/// The OVMF image to use, given which paths exist: a split build whose code
/// and variables are both present, else a unified image.
pub fn choose_ovmf(exists: &dyn Fn(&Path) -> bool) -> Option<Ovmf> {
    let split = OVMF_SPLIT
        .iter()
        .find(|(code, vars)| exists(Path::new(code)) && exists(Path::new(vars)));
    if let Some((code, vars)) = split {
        return Some(Ovmf {
            code: code.into(),
            vars: Some(vars.into()),
        });
    }
    let unified = OVMF_UNIFIED.iter().find(|code| exists(Path::new(code)))?;
    Some(Ovmf {
        code: unified.into(),
        vars: None,
    })
}

/// What the system tells the lookup; tests answer from lists.
struct System<'a> {
    /// The path of an executable on `PATH`.
    which: &'a dyn Fn(&str) -> Option<PathBuf>,
    /// Whether a file exists.
    exists: &'a dyn Fn(&Path) -> bool,
    /// The Bochs plugin folders that exist, each with its file names.
    plugin_dirs: &'a dyn Fn() -> Vec<(PathBuf, Vec<String>)>,
}

impl System<'_> {
    fn first(&self, candidates: &[&str]) -> Option<PathBuf> {
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| (self.exists)(p))
    }
}

/// Looks up `needs`, returning what was found and what is missing.
fn find_in(needs: &[Tool], sys: &System) -> (Found, Vec<Missing>) {
    let mut found = Found::default();
    let mut missing = Vec::new();
    let mut lack = |what: String, package| {
        let m = Missing { what, package };
        if !missing.contains(&m) {
            missing.push(m);
        }
    };
    for tool in needs {
        match tool {
            Tool::Qemu => match (sys.which)("qemu-system-x86_64") {
                Some(path) => found.qemu = Some(path),
                None => lack(
                    "qemu-system-x86_64 (QEMU) on PATH".into(),
                    "qemu-system-x86",
                ),
            },
            Tool::Ovmf => match choose_ovmf(sys.exists) {
                Some(ovmf) => found.ovmf = Some(ovmf),
                None => lack(
                    format!(
                        "OVMF UEFI firmware (looked for {} and the usual other places)",
                        OVMF_SPLIT[0].0
                    ),
                    "ovmf",
                ),
            },
            Tool::Bochs => {
                let binary = (sys.which)("bochs");
                let bios = sys.first(BOCHS_BIOS);
                let vgabios = sys.first(BOCHS_VGABIOS);
                let plugin_dirs = (sys.plugin_dirs)();
                let plugin = plugin_dirs.iter().find_map(|(dir, files)| {
                    files
                        .iter()
                        .find(|f| f.starts_with(DISPLAY_PLUGIN))
                        .map(|f| dir.join(f))
                });
                if binary.is_none() {
                    lack("bochs on PATH".into(), "bochs");
                }
                if bios.is_none() {
                    lack(format!("the Bochs ROM BIOS {}", BOCHS_BIOS[0]), "bochsbios");
                }
                if vgabios.is_none() {
                    lack(
                        format!("the cirrus VGA BIOS {}", BOCHS_VGABIOS[0]),
                        "vgabios",
                    );
                }
                // No plugin folder beside an installed Bochs means a build
                // without plugins, with its displays compiled in; with no
                // Bochs at all, the display package is needed with it.
                if plugin.is_none() && (!plugin_dirs.is_empty() || binary.is_none()) {
                    let dirs: Vec<String> = plugin_dirs
                        .iter()
                        .map(|(d, _)| d.display().to_string())
                        .collect();
                    lack(
                        format!(
                            "the Bochs term display plugin ({DISPLAY_PLUGIN} in {})",
                            dirs.join(", ")
                        ),
                        "bochs-term",
                    );
                }
                if let (Some(binary), Some(bios), Some(vgabios)) = (binary, bios, vgabios) {
                    if plugin.is_some() || plugin_dirs.is_empty() {
                        found.bochs = Some(Bochs {
                            binary,
                            bios,
                            vgabios,
                            display_plugin: plugin,
                        });
                    }
                }
            }
            Tool::Mtools => match (sys.which)("mcopy") {
                Some(path) => found.mcopy = Some(path),
                None => lack("mcopy (mtools) on PATH".into(), "mtools"),
            },
            Tool::LinuxBuild => {
                for (program, package) in LINUX_BUILD_PROGRAMS {
                    if (sys.which)(program).is_none() {
                        lack(format!("{program} on PATH"), package);
                    }
                }
                if !(sys.exists)(Path::new(LIBELF_HEADER)) {
                    lack(format!("libelf's {LIBELF_HEADER}"), "libelf-dev");
                }
            }
            Tool::Syslinux => {
                let binary = (sys.which)("syslinux");
                let mbr = sys.first(SYSLINUX_MBR);
                if binary.is_none() {
                    lack("syslinux on PATH".into(), "syslinux");
                }
                if mbr.is_none() {
                    lack(
                        format!("SYSLINUX's MBR {}", SYSLINUX_MBR[0]),
                        "syslinux-common",
                    );
                }
                if let (Some(binary), Some(mbr)) = (binary, mbr) {
                    found.syslinux = Some(Syslinux { binary, mbr });
                }
            }
        }
    }
    (found, missing)
}

/// The Debian packages that provide `missing`, each once, in order.
pub fn packages(missing: &[Missing]) -> Vec<&'static str> {
    let mut packages = Vec::new();
    for m in missing {
        if !packages.contains(&m.package) {
            packages.push(m.package);
        }
    }
    packages
}

/// The command that installs `packages`, as the user should type it.
pub fn install_command(packages: &[&str], root: bool) -> String {
    let sudo = if root { "" } else { "sudo " };
    format!("{sudo}apt-get install -y {}", packages.join(" "))
}

/// The effective user id from the text of `/proc/self/status`.
pub fn effective_uid(status: &str) -> Option<u32> {
    let ids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// Whether this process runs as root (and so may run apt-get).
pub fn is_root() -> bool {
    let from_proc = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s));
    let uid = from_proc.or_else(|| {
        let out = Command::new("id").arg("-u").output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    });
    uid == Some(0)
}

/// The path of the executable `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Bochs plugin folders that exist: `/usr/lib/<multiarch>/bochs/plugins`
/// and the plain lib folders.
fn bochs_plugin_dirs() -> Vec<(PathBuf, Vec<String>)> {
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bochs/plugins"))
        .collect();
    candidates.sort();
    for dir in [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/lib64",
    ] {
        candidates.push(Path::new(dir).join("bochs/plugins"));
    }
    candidates
        .into_iter()
        .filter_map(|dir| {
            let files = fs::read_dir(&dir).ok()?;
            let mut names: Vec<String> = files
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            // Sorted, so `libbx_term_gui.so` comes before its `.so.0` links.
            names.sort();
            Some((dir, names))
        })
        .collect()
}

fn live_system() -> System<'static> {
    System {
        which: &which,
        exists: &|p: &Path| p.is_file(),
        plugin_dirs: &bochs_plugin_dirs,
    }
}

/// Looks up the tools in `needs` without installing anything.
pub fn find_tools(needs: &[Tool]) -> Found {
    find_in(needs, &live_system()).0
}

/// Looks up the tools in `needs`; installs missing ones with apt-get when
/// running as root on a system that has it, else fails with the command to
/// run.
pub fn ensure_tools(needs: &[Tool]) -> Result<Found, SetupError> {
    let (found, missing) = find_in(needs, &live_system());
    if missing.is_empty() {
        return Ok(found);
    }
    let packages = packages(&missing);
    let root = is_root();
    let apt = which("apt-get").is_some();
    if !(root && apt) {
        return Err(SetupError::ToolsMissing {
            missing,
            command: install_command(&packages, root),
            apt,
        });
    }
    let list: Vec<&str> = missing.iter().map(|m| m.what.as_str()).collect();
    println!(
        "xtask: installing {} with apt-get (missing: {})",
        packages.join(" "),
        list.join("; ")
    );
    let apt_get = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        let shown = format!("apt-get {}", args.join(" "));
        match cmd.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(SetupError::CommandFailed {
                command: shown,
                detail: status.to_string(),
            }),
            Err(e) => Err(SetupError::CommandFailed {
                command: shown,
                detail: e.to_string(),
            }),
        }
    };
    // A failed update (offline, a broken mirror) may still leave an index
    // good enough to install from, so only the install decides.
    if let Err(e) = apt_get(&["update"]) {
        eprintln!("xtask: warning: {e}; trying the install anyway");
    }
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&packages);
    apt_get(&install)?;
    let (found, missing) = find_in(needs, &live_system());
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(SetupError::StillMissing { missing })
    }
}

/// What `rust-toolchain.toml` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolchainSpec {
    /// `channel`, such as `nightly` or `nightly-2026-07-10`.
    pub channel: String,
    /// `components`, such as `rust-src` and `llvm-tools`.
    pub components: Vec<String>,
    /// `targets`, such as `x86_64-unknown-none`.
    pub targets: Vec<String>,
}

/// Cuts a `#` comment off a line, leaving `#` inside quotes alone.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn parse_string(value: &str) -> Result<String, String> {
    let v = value.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .ok_or_else(|| format!("expected a quoted string, found {v:?}"))?;
    Ok(inner.to_string())
}

fn parse_array(value: &str) -> Result<Vec<String>, String> {
    let v = value.trim();
    let inner = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| format!("expected [\"...\", ...], found {v:?}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_string)
        .collect()
}

/// Reads `channel`, `components` and `targets` from the `[toolchain]` table
/// of a `rust-toolchain.toml` (arrays may span lines); other keys are
/// ignored.
pub fn parse_toolchain(text: &str) -> Result<ToolchainSpec, String> {
    let mut spec = ToolchainSpec::default();
    let mut in_table = false;
    // An array whose `]` is on a later line: key, start line, text so far.
    let mut open: Option<(String, usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        let (key, value, at) = match open.take() {
            Some((key, at, mut buf)) => {
                buf.push(' ');
                buf.push_str(line);
                if !line.contains(']') {
                    open = Some((key, at, buf));
                    continue;
                }
                (key, buf, at)
            }
            None if line.is_empty() => continue,
            None if line.starts_with('[') => {
                in_table = line == "[toolchain]";
                continue;
            }
            None if !in_table => continue,
            None => {
                let (key, value) = line
                    .split_once('=')
                    .ok_or_else(|| format!("line {}: expected `key = value`", n + 1))?;
                let (key, value) = (key.trim().to_string(), value.trim().to_string());
                if value.starts_with('[') && !value.contains(']') {
                    open = Some((key, n + 1, value));
                    continue;
                }
                (key, value, n + 1)
            }
        };
        let located = |e: String| format!("line {at}: {key}: {e}");
        match key.as_str() {
            "channel" => spec.channel = parse_string(&value).map_err(located)?,
            "components" => spec.components = parse_array(&value).map_err(located)?,
            "targets" => spec.targets = parse_array(&value).map_err(located)?,
            _ => {}
        }
    }
    if let Some((key, at, _)) = open {
        return Err(format!(
            "line {at}: {key}: the array is never closed with `]`"
        ));
    }
    if spec.channel.is_empty() {
        return Err("no `channel = \"...\"` in the [toolchain] table".into());
    }
    Ok(spec)
}

/// The components of `wanted` that the output of `rustup component list
/// --installed` lacks. `installed_targets` (from `rustup target list
/// --installed`) includes the host, whose triple rustup appends to most
/// component names (`llvm-tools-x86_64-unknown-linux-gnu`); some rustup
/// versions also call a component `NAME-preview`.
pub fn missing_components(
    wanted: &[String],
    installed: &str,
    installed_targets: &[String],
) -> Vec<String> {
    let normal = |name: &str| -> String {
        let base = installed_targets
            .iter()
            .find_map(|t| {
                name.strip_suffix(t.as_str())
                    .and_then(|n| n.strip_suffix('-'))
            })
            .unwrap_or(name);
        base.strip_suffix("-preview").unwrap_or(base).to_string()
    };
    let have: Vec<String> = installed.split_whitespace().map(normal).collect();
    wanted
        .iter()
        .filter(|w| !have.contains(&normal(w)))
        .cloned()
        .collect()
}

/// The targets of `wanted` absent from `installed`.
pub fn missing_targets(wanted: &[String], installed: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| !installed.contains(w))
        .cloned()
        .collect()
}

/// `rustup`: on `PATH`, or where rustup's installer puts it.
fn find_rustup() -> Option<PathBuf> {
    which("rustup").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        Some(home.join("bin/rustup")).filter(|p| p.is_file())
    })
}

/// Runs rustup with `args`, returning its stdout, or its first error line.
fn rustup_output(rustup: &Path, args: &[&str]) -> Result<String, SetupError> {
    let command = format!("rustup {}", args.join(" "));
    let out = Command::new(rustup)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|e| SetupError::CommandFailed {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string();
    Err(SetupError::CommandFailed { command, detail })
}

/// Runs rustup with `args`, its output going to the terminal, after a line
/// saying `why`.
fn rustup_visible(rustup: &Path, why: &str, args: &[&str]) -> Result<(), SetupError> {
    let command = format!("rustup {}", args.join(" "));
    println!("xtask: {why}: {command}");
    match Command::new(rustup)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(SetupError::CommandFailed {
            command,
            detail: status.to_string(),
        }),
        Err(e) => Err(SetupError::CommandFailed {
            command,
            detail: e.to_string(),
        }),
    }
}

/// The toolchain files of the builds xtask runs, from the workspace root:
/// the workspace's own, and the bare-metal build's pinned one.
pub const TOOLCHAIN_FILES: &[&str] = &["rust-toolchain.toml", "boot/rust-toolchain.toml"];

/// Makes sure every toolchain that [`TOOLCHAIN_FILES`] name (those files
/// that exist) is installed with its components and targets; see
/// [`ensure_toolchain_file`].
pub fn ensure_toolchain() -> Result<Vec<ToolchainSpec>, SetupError> {
    let root = workspace_root();
    TOOLCHAIN_FILES
        .iter()
        .map(|file| root.join(file))
        .filter(|p| p.is_file())
        .map(|p| ensure_toolchain_file(&p))
        .collect()
}

/// Makes sure the toolchain that the `rust-toolchain.toml` at `path` names
/// is installed with its components and targets, adding what is missing
/// with rustup (which does not add them itself when `RUSTUP_AUTO_INSTALL=0`).
/// Without rustup it warns, saying what the build needs, and carries on: a
/// toolchain from elsewhere may have it all.
pub fn ensure_toolchain_file(path: &Path) -> Result<ToolchainSpec, SetupError> {
    let text = fs::read_to_string(path).map_err(|e| SetupError::ToolchainFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let spec = parse_toolchain(&text).map_err(|detail| SetupError::ToolchainFile {
        path: path.to_path_buf(),
        detail,
    })?;
    ensure_spec(&spec)?;
    Ok(spec)
}

/// Adds what `spec` names and its toolchain lacks (the toolchain too, if
/// it is missing).
fn ensure_spec(spec: &ToolchainSpec) -> Result<(), SetupError> {
    let channel = spec.channel.as_str();
    let Some(rustup) = find_rustup() else {
        eprintln!(
            "xtask: warning: rustup is not on PATH, so xtask cannot check the toolchain; the build needs Rust \
             {channel} with the components {} and the targets {}",
            spec.components.join(", "),
            spec.targets.join(", ")
        );
        return Ok(());
    };
    let targets = match rustup_output(
        &rustup,
        &["target", "list", "--installed", "--toolchain", channel],
    ) {
        Ok(out) => out
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        Err(SetupError::CommandFailed { detail, .. }) if detail.contains("is not installed") => {
            let (components, targets) = (spec.components.join(","), spec.targets.join(","));
            let mut args = vec!["toolchain", "install", channel, "--profile", "minimal"];
            if !components.is_empty() {
                args.extend(["--component", &components]);
            }
            if !targets.is_empty() {
                args.extend(["--target", &targets]);
            }
            rustup_visible(
                &rustup,
                &format!("the {channel} toolchain is not installed"),
                &args,
            )?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let components = rustup_output(
        &rustup,
        &["component", "list", "--installed", "--toolchain", channel],
    )?;
    let missing = missing_components(&spec.components, &components, &targets);
    if !missing.is_empty() {
        let why = format!(
            "the {channel} toolchain lacks the components {}",
            missing.join(", ")
        );
        let mut args = vec!["component", "add", "--toolchain", channel];
        args.extend(missing.iter().map(String::as_str));
        rustup_visible(&rustup, &why, &args)?;
    }
    let missing = missing_targets(&spec.targets, &targets);
    if !missing.is_empty() {
        let why = format!(
            "the {channel} toolchain lacks the targets {}",
            missing.join(", ")
        );
        let mut args = vec!["target", "add", "--toolchain", channel];
        args.extend(missing.iter().map(String::as_str));
        rustup_visible(&rustup, &why, &args)?;
    }
    Ok(())
}

/// Why the host is not ready.
#[derive(Debug)]
pub enum SetupError {
    /// Host tools are missing and this process cannot install them.
    ToolsMissing {
        /// What is missing.
        missing: Vec<Missing>,
        /// The command that installs it.
        command: String,
        /// Whether this host has apt-get (else the packages are Debian's
        /// names for what to install).
        apt: bool,
    },
    /// apt-get installed the packages, yet something is still not found.
    StillMissing {
        /// What is still missing.
        missing: Vec<Missing>,
    },
    /// `rust-toolchain.toml` could not be read or understood.
    ToolchainFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A command (apt-get, rustup) failed.
    CommandFailed {
        /// The command, as the user would type it.
        command: String,
        /// Its exit status or error message.
        detail: String,
    },
}

fn list(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| m.what.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::ToolsMissing { missing, command, apt: true } => {
                write!(f, "missing: {}; install with: {command}", list(missing))
            }
            SetupError::ToolsMissing { missing, command, apt: false } => write!(
                f,
                "missing: {}; on Debian or Ubuntu install with: {command} (elsewhere install the same tools \
                 with this system's package manager)",
                list(missing)
            ),
            SetupError::StillMissing { missing } => {
                write!(f, "still missing after installing their packages: {}", list(missing))
            }
            SetupError::ToolchainFile { path, detail } => write!(f, "cannot use {}: {detail}", path.display()),
            SetupError::CommandFailed { command, detail } => write!(f, "`{command}` failed: {detail}"),
        }
    }
}

impl std::error::Error for SetupError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_this_repositorys_toolchain_files() {
        let root = workspace_root();
        let files: Vec<PathBuf> = TOOLCHAIN_FILES
            .iter()
            .map(|f| root.join(f))
            .filter(|p| p.is_file())
            .collect();
        assert!(
            !files.is_empty(),
            "no toolchain file under {}",
            root.display()
        );
        for path in files {
            let spec = parse_toolchain(&fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                spec.channel.starts_with("nightly") || spec.channel.starts_with("stable"),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn parses_arrays_over_lines_comments_and_other_tables() {
        let text = "\
# The toolchain [with a comment]
[other]
channel = \"stable\"

[toolchain]
channel = 'nightly-2026-07-10' # pinned
components = [
    \"rust-src\",   # for build-std
    \"llvm-tools\",
]
targets = [\"x86_64-unknown-none\"]
profile = \"minimal\"
";
        let spec = parse_toolchain(text).unwrap();
        assert_eq!(
            spec,
            ToolchainSpec {
                channel: "nightly-2026-07-10".into(),
                components: strings(&["rust-src", "llvm-tools"]),
                targets: strings(&["x86_64-unknown-none"]),
            }
        );
    }

    #[test]
    fn toolchain_file_errors_name_the_line() {
        assert!(parse_toolchain("[toolchain]\nprofile = \"minimal\"\n")
            .unwrap_err()
            .contains("no `channel"));
        let err = parse_toolchain("[toolchain]\nchannel = nightly\n").unwrap_err();
        assert!(err.starts_with("line 2: channel:"), "{err}");
        let err =
            parse_toolchain("[toolchain]\nchannel = \"nightly\"\ntargets = [\"a\",\n").unwrap_err();
        assert!(
            err.contains("line 3: targets: the array is never closed"),
            "{err}"
        );
    }

    /// `rustup component list --installed` as rustup 1.29 prints it here.
    const INSTALLED: &str = "\
cargo-x86_64-unknown-linux-gnu
clippy-x86_64-unknown-linux-gnu
llvm-tools-x86_64-unknown-linux-gnu
rust-docs-x86_64-unknown-linux-gnu
rust-src
rust-std-x86_64-unknown-linux-gnu
rust-std-x86_64-unknown-none
rustc-x86_64-unknown-linux-gnu
rustfmt-x86_64-unknown-linux-gnu
";

    #[test]
    fn installed_components_match_with_triple_and_preview_suffixes() {
        let targets = strings(&["x86_64-unknown-linux-gnu", "x86_64-unknown-none"]);
        let wanted = strings(&["rust-src", "llvm-tools", "clippy", "rustfmt"]);
        assert!(missing_components(&wanted, INSTALLED, &targets).is_empty());

        let older = "llvm-tools-preview-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(missing_components(&strings(&["llvm-tools"]), older, &targets).is_empty());
        assert!(
            missing_components(&strings(&["llvm-tools-preview"]), INSTALLED, &targets).is_empty()
        );

        // A fresh machine: the minimal profile only.
        let fresh =
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n";
        let host = strings(&["x86_64-unknown-linux-gnu"]);
        assert_eq!(missing_components(&wanted, fresh, &host), wanted);
        // `rust` is a prefix of installed names but not installed itself.
        assert_eq!(
            missing_components(&strings(&["rust"]), INSTALLED, &targets),
            strings(&["rust"])
        );
    }

    #[test]
    fn missing_targets_are_the_ones_not_listed() {
        let installed = strings(&["x86_64-unknown-linux-gnu"]);
        let wanted = strings(&["x86_64-unknown-none"]);
        assert_eq!(missing_targets(&wanted, &installed), wanted);
        assert!(missing_targets(
            &wanted,
            &strings(&["x86_64-unknown-linux-gnu", "x86_64-unknown-none"])
        )
        .is_empty());
    }

    #[test]
    fn reads_the_effective_uid() {
        let status =
            "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t1000\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn ovmf_prefers_a_complete_split_build() {
        let on = |paths: &'static [&'static str]| {
            move |p: &Path| paths.iter().any(|q| Path::new(q) == p)
        };
        // Debian 12: split 4M build and a unified image.
        let debian = on(&[
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
            "/usr/share/ovmf/OVMF.fd",
        ]);
        assert_eq!(
            choose_ovmf(&debian),
            Some(Ovmf {
                code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                vars: Some("/usr/share/OVMF/OVMF_VARS_4M.fd".into())
            })
        );
        // A code image without its variables is skipped for the next.
        let arch = on(&[
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/edk2/x64/OVMF_CODE.fd",
            "/usr/share/edk2/x64/OVMF_VARS.fd",
        ]);
        assert_eq!(
            choose_ovmf(&arch).unwrap().code,
            Path::new("/usr/share/edk2/x64/OVMF_CODE.fd")
        );
        let unified = on(&["/usr/share/ovmf/OVMF.fd"]);
        assert_eq!(
            choose_ovmf(&unified),
            Some(Ovmf {
                code: "/usr/share/ovmf/OVMF.fd".into(),
                vars: None
            })
        );
        assert_eq!(choose_ovmf(&on(&[])), None);
    }

    /// A pretend system with the given executables, files and plugin folders.
    fn lookup(
        needs: &[Tool],
        programs: &[&str],
        files: &[&str],
        plugins: Vec<(PathBuf, Vec<String>)>,
    ) -> (Found, Vec<Missing>) {
        let which = |name: &str| {
            programs
                .contains(&name)
                .then(|| Path::new("/usr/bin").join(name))
        };
        let exists = |p: &Path| files.iter().any(|f| Path::new(f) == p);
        let dirs = move || plugins.clone();
        find_in(
            needs,
            &System {
                which: &which,
                exists: &exists,
                plugin_dirs: &dirs,
            },
        )
    }

    const BOCHS_FILES: &[&str] = &[
        "/usr/share/bochs/BIOS-bochs-latest",
        "/usr/share/vgabios/vgabios.cirrus.bin",
    ];

    fn debian_plugins(with_term: bool) -> Vec<(PathBuf, Vec<String>)> {
        let mut files = strings(&["libbx_rfb_gui.so", "libbx_rfb_gui.so.0"]);
        if with_term {
            files.extend(strings(&["libbx_term_gui.so", "libbx_term_gui.so.0"]));
        }
        vec![("/usr/lib/x86_64-linux-gnu/bochs/plugins".into(), files)]
    }

    #[test]
    fn a_bare_machine_needs_the_debian_packages_of_each_engine() {
        let (found, missing) = lookup(&boot_test_needs(), &[], &[], vec![]);
        assert_eq!(found, Found::default());
        assert_eq!(
            packages(&missing),
            [
                "qemu-system-x86",
                "ovmf",
                "bochs",
                "bochsbios",
                "vgabios",
                "bochs-term",
                "mtools"
            ]
        );
        assert_eq!(
            install_command(&packages(&missing), false),
            "sudo apt-get install -y qemu-system-x86 ovmf bochs bochsbios vgabios bochs-term mtools"
        );
        assert_eq!(
            install_command(&["mtools"], true),
            "apt-get install -y mtools"
        );
    }

    #[test]
    fn only_what_is_asked_for_is_required() {
        let (found, missing) = lookup(
            &needs(Engine::Kvm, Firmware::Bios),
            &["qemu-system-x86_64", "mcopy"],
            &[],
            vec![],
        );
        assert!(missing.is_empty());
        assert_eq!(found.qemu, Some("/usr/bin/qemu-system-x86_64".into()));
        assert_eq!(found.ovmf, None);
        let (_, missing) = lookup(&[Tool::Mtools], &[], &[], vec![]);
        assert_eq!(packages(&missing), ["mtools"]);
    }

    #[test]
    fn a_kernel_build_names_each_missing_package() {
        let (_, missing) = lookup(
            &[Tool::LinuxBuild],
            &["make", "gcc", "perl", "xz"],
            &[],
            vec![],
        );
        assert_eq!(
            packages(&missing),
            ["flex", "bison", "bc", "lz4", "dpkg", "libelf-dev"]
        );
        let programs: Vec<&str> = LINUX_BUILD_PROGRAMS.iter().map(|(p, _)| *p).collect();
        let (_, missing) = lookup(&[Tool::LinuxBuild], &programs, &[LIBELF_HEADER], vec![]);
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn syslinux_needs_its_installer_and_its_mbr() {
        let (found, missing) = lookup(&[Tool::Syslinux], &[], &[], vec![]);
        assert_eq!(found.syslinux, None);
        assert_eq!(packages(&missing), ["syslinux", "syslinux-common"]);
        let (found, missing) = lookup(
            &[Tool::Syslinux],
            &["syslinux"],
            &["/usr/lib/syslinux/mbr/mbr.bin"],
            vec![],
        );
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            found.syslinux,
            Some(Syslinux {
                binary: "/usr/bin/syslinux".into(),
                mbr: "/usr/lib/syslinux/mbr/mbr.bin".into(),
            })
        );
    }

    #[test]
    fn bochs_is_found_with_its_term_plugin() {
        let (found, missing) = lookup(
            &[Tool::Bochs],
            &["bochs"],
            BOCHS_FILES,
            debian_plugins(true),
        );
        assert!(missing.is_empty(), "{missing:?}");
        let bochs = found.bochs.unwrap();
        assert_eq!(bochs.bios, Path::new("/usr/share/bochs/BIOS-bochs-latest"));
        assert_eq!(
            bochs.vgabios,
            Path::new("/usr/share/vgabios/vgabios.cirrus.bin")
        );
        assert_eq!(
            bochs.display_plugin,
            Some("/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so".into())
        );
    }

    #[test]
    fn a_plugin_build_without_term_needs_the_bochs_term_package() {
        let (found, missing) = lookup(
            &[Tool::Bochs],
            &["bochs"],
            BOCHS_FILES,
            debian_plugins(false),
        );
        assert_eq!(found.bochs, None);
        assert_eq!(packages(&missing), ["bochs-term"]);
        assert!(
            missing[0].what.contains("term display plugin"),
            "{missing:?}"
        );
    }

    #[test]
    fn a_build_without_plugin_folders_is_taken_as_is() {
        let (found, missing) = lookup(&[Tool::Bochs], &["bochs"], BOCHS_FILES, vec![]);
        assert!(missing.is_empty());
        assert_eq!(found.bochs.unwrap().display_plugin, None);
        // Only the VGA BIOS missing: only its package.
        let (_, missing) = lookup(&[Tool::Bochs], &["bochs"], &BOCHS_FILES[..1], vec![]);
        assert_eq!(packages(&missing), ["vgabios"]);
    }

    #[test]
    fn the_error_names_the_command() {
        let missing = vec![Missing {
            what: "qemu-system-x86_64 (QEMU) on PATH".into(),
            package: "qemu-system-x86",
        }];
        let command = install_command(&packages(&missing), false);
        let err = SetupError::ToolsMissing {
            missing,
            command,
            apt: true,
        };
        assert_eq!(
            err.to_string(),
            "missing: qemu-system-x86_64 (QEMU) on PATH; install with: sudo apt-get install -y qemu-system-x86"
        );
    }
}
