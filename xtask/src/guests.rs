//! Building the test guests and staging the config partition's files.
//!
//! The guests are GNU `as` sources in `guest-images/asm/` (one `<stem>.S`
//! each, shared helpers in `.inc` files). Each source names its load
//! address and start mode on a line of its own,
//!
//! ```text
//! # ferrovisor: load_address=0x100000 mode=long
//! ```
//!
//! and is assembled with `as --64` and linked with
//! `ld -Ttext=<load_address> --oformat binary` into a flat image,
//! `<stem>.bin`, whose first byte is its entry point. The configs in
//! `guest-images/<name>/hypervisor.toml` load them with `format = "flat"`
//! at that address (a test below checks that they agree). One is a
//! Multiboot kernel instead, `smp.S`: its header's a.out-kludge address
//! fields describe the same flat image, so Ferrovisor (`format =
//! "multiboot"`) and QEMU's `-kernel` both load it.
//!
//! [`stage`] gathers a config folder's files and every built guest into
//! one folder, from which `xtask::disk` writes the FERROCFG partition and
//! the FAT image the bootloader loads as its ramdisk. A config that names
//! one of the Linux images (`linux-small.bzImage`, `linux-stock.vmlinuz`,
//! `initramfs.cpio`; see `xtask::linux`) as a string value gets it added,
//! fetched or built first; other configs do not wait for a kernel build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::workspace_root;

/// The folder holding the guests' sources.
pub fn asm_dir() -> PathBuf {
    workspace_root().join("guest-images").join("asm")
}

/// The config folders: guest-images/<name> (`default`, `test`, `bench`).
pub fn config_dir(name: &str) -> PathBuf {
    workspace_root().join("guest-images").join(name)
}

/// Assembles and links every guest-images/asm/*.S into `<out_dir>/<stem>.bin`
/// (a flat binary linked at the load address its source's
/// `# ferrovisor: load_address=... mode=...` line gives). Returns the built
/// files, sorted by name.
///
/// # Errors
///
/// A message naming the source and what was wrong: no or a malformed
/// `# ferrovisor:` line, `as` or `ld` missing (install `binutils`), the
/// failing command with its stderr, or an image that its mode cannot reach.
pub fn build_guests(out_dir: &Path) -> Result<Vec<PathBuf>, String> {
    build_from(&asm_dir(), out_dir)
}

/// Fills `staging` (emptied first) with the config partition's contents:
/// every file of `config_dir` (folders kept, names starting with `.` left
/// out), the test guests built from `guest-images/asm` (built in a
/// `guests` folder beside `staging`) and the Linux images that its
/// `hypervisor.toml` names (from `xtask::linux`'s cache).
///
/// # Errors
///
/// A message when `config_dir` has no `hypervisor.toml`, holds something
/// other than files and folders or a file named like a built guest or a
/// Linux image it names, the guests or a Linux image do not build, or a
/// file cannot be read or written.
pub fn stage(config_dir: &Path, staging: &Path) -> Result<(), String> {
    // The guests are built beside the staging folder, not in it (it is
    // emptied below).
    let beside = staging.parent().unwrap_or(staging).join("staged");
    let files = config_files(config_dir, &beside, "config partition")?;
    if staging.exists() {
        fs::remove_dir_all(staging)
            .map_err(|e| format!("config partition: cannot empty {}: {e}", staging.display()))?;
    }
    for (name, path) in files {
        let to = staging.join(&name);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| {
                format!("config partition: cannot create {}: {e}", parent.display())
            })?;
        }
        fs::copy(&path, &to).map_err(|e| {
            format!(
                "config partition: cannot copy {} to {}: {e}",
                path.display(),
                to.display()
            )
        })?;
    }
    Ok(())
}

/// The files of a config folder plus the built guests, as (name in the
/// partition, file on the host), sorted; the guests are built under
/// `<beside's folder>/guests`.
fn config_files(
    config_dir: &Path,
    beside: &Path,
    what: &str,
) -> Result<Vec<(String, PathBuf)>, String> {
    let config = config_dir.join(CONFIG_FILE);
    if !config.is_file() {
        return Err(format!(
            "{what}: {} not found; a config folder needs its {CONFIG_FILE}",
            config.display()
        ));
    }
    let parent = match beside.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let built = build_guests(&parent.join("guests"))?;

    let mut files = Vec::new();
    collect_files(config_dir, "", &mut files)?;
    for bin in &built {
        let name = file_name(bin)?;
        if files.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "{what}: {} has a file named {name}, which the built guest of the same \
                 name would replace; rename or remove it",
                config_dir.display()
            ));
        }
        files.push((name, bin.clone()));
    }
    // The Linux images only when the config names them: building the small
    // kernel takes minutes.
    let text = fs::read_to_string(&config)
        .map_err(|e| format!("{what}: cannot read {}: {e}", config.display()))?;
    for artifact in crate::linux::referenced(&text) {
        let name = artifact.file_name();
        if files.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "{what}: {} has a file named {name}, which the Linux image of the same \
                 name that its {CONFIG_FILE} names would replace; rename or remove it",
                config_dir.display()
            ));
        }
        files.push((name.to_string(), crate::linux::artifact(artifact)?));
    }
    files.sort();
    fs::create_dir_all(&parent)
        .map_err(|e| format!("{what}: cannot create {}: {e}", parent.display()))?;
    Ok(files)
}

/// The file every config folder holds.
const CONFIG_FILE: &str = "hypervisor.toml";

/// The marker of the line in each source that says how to link it.
const LINK_MARKER: &str = "# ferrovisor:";

/// The CPU mode a guest starts in, as its config's `mode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Real,
    Protected,
    Long,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "real" => Some(Mode::Real),
            "protected" => Some(Mode::Protected),
            "long" => Some(Mode::Long),
            _ => None,
        }
    }

    #[cfg(test)]
    fn name(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Protected => "protected",
            Mode::Long => "long",
        }
    }
}

/// One guest source and how it is linked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GuestSource {
    stem: String,
    path: PathBuf,
    load_address: u64,
    mode: Mode,
}

/// Every `*.S` in `dir`, sorted by stem, with its link line read.
fn guest_sources(dir: &Path) -> Result<Vec<GuestSource>, String> {
    let listing =
        fs::read_dir(dir).map_err(|e| format!("guests: cannot list {}: {e}", dir.display()))?;
    let mut sources = Vec::new();
    for entry in listing {
        let path = entry
            .map_err(|e| format!("guests: cannot list {}: {e}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("S") || !path.is_file() {
            continue;
        }
        let stem = match path.file_stem().and_then(|s| s.to_str()) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => return Err(format!("guests: {} has no usable name", path.display())),
        };
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("guests: cannot read {}: {e}", path.display()))?;
        let (load_address, mode) = link_line(&path, &text)?;
        sources.push(GuestSource {
            stem,
            path,
            load_address,
            mode,
        });
    }
    if sources.is_empty() {
        return Err(format!("guests: no *.S sources in {}", dir.display()));
    }
    sources.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(sources)
}

/// Reads `# ferrovisor: load_address=<addr> mode=<mode>` from a source.
fn link_line(path: &Path, text: &str) -> Result<(u64, Mode), String> {
    let mut lines = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(LINK_MARKER));
    let fields = match (lines.next(), lines.next()) {
        (Some(fields), None) => fields,
        (None, _) => {
            return Err(format!(
                "guests: {} has no `{LINK_MARKER} load_address=<address> mode=<real|protected|long>` line",
                path.display()
            ))
        }
        (Some(_), Some(_)) => {
            return Err(format!(
                "guests: {} has more than one `{LINK_MARKER}` line",
                path.display()
            ))
        }
    };
    let mut load_address = None;
    let mut mode = None;
    for field in fields.split_whitespace() {
        let bad = || {
            format!(
                "guests: {}: `{field}` in the `{LINK_MARKER}` line is not load_address=<address> or mode=<real|protected|long>",
                path.display()
            )
        };
        match field.split_once('=') {
            Some(("load_address", value)) => {
                load_address = Some(parse_address(value).ok_or_else(bad)?)
            }
            Some(("mode", value)) => mode = Some(Mode::parse(value).ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    match (load_address, mode) {
        (Some(a), Some(m)) => Ok((a, m)),
        _ => Err(format!(
            "guests: {}: the `{LINK_MARKER}` line needs both load_address= and mode=",
            path.display()
        )),
    }
}

/// An address written as in the configs: decimal or `0x` hex, `_` allowed.
fn parse_address(s: &str) -> Option<u64> {
    let digits: String = s.chars().filter(|&c| c != '_').collect();
    match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

/// Tells concurrent builds in one process apart.
static BUILD_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Builds every source in `asm` into `out_dir` (see [`build_guests`]).
fn build_from(asm: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let sources = guest_sources(asm)?;
    fs::create_dir_all(out_dir)
        .map_err(|e| format!("guests: cannot create {}: {e}", out_dir.display()))?;
    let tmp = out_dir.join(format!(
        ".build-{}-{}",
        std::process::id(),
        BUILD_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&tmp)
        .map_err(|e| format!("guests: cannot create {}: {e}", tmp.display()))?;
    let result = sources
        .iter()
        .map(|source| build_one(asm, source, &tmp, out_dir))
        .collect();
    // Only intermediate files live there; a leftover is harmless.
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// Assembles, links and checks one guest; moves the image into `out_dir`.
fn build_one(
    asm: &Path,
    source: &GuestSource,
    tmp: &Path,
    out_dir: &Path,
) -> Result<PathBuf, String> {
    let object = tmp.join(format!("{}.o", source.stem));
    let image = tmp.join(format!("{}.bin", source.stem));
    run(Command::new("as")
        .arg("--64")
        .arg("--fatal-warnings")
        .arg("-I")
        .arg(asm)
        .arg("-o")
        .arg(&object)
        .arg(&source.path))?;
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "--fatal-warnings",
            "-nostdlib",
            "-static",
        ])
        .args(["--build-id=none", "-z", "noexecstack", "-e", "_start"])
        .arg(format!("-Ttext={:#x}", source.load_address))
        .args(["--oformat", "binary", "-o"])
        .arg(&image)
        .arg(&object))?;
    let len = fs::metadata(&image)
        .map_err(|e| format!("guests: cannot read {}: {e}", image.display()))?
        .len();
    check_image(source, len)?;
    let out = out_dir.join(format!("{}.bin", source.stem));
    fs::rename(&image, &out).map_err(|e| {
        format!(
            "guests: cannot move {} to {}: {e}",
            image.display(),
            out.display()
        )
    })?;
    Ok(out)
}

/// Checks that the image is not empty and, in real mode, that the CS the
/// flat loader derives from the entry (`(entry >> 4) & 0xF000`) reaches all
/// of it with 16-bit offsets.
fn check_image(source: &GuestSource, len: u64) -> Result<(), String> {
    let name = source.path.display();
    if len == 0 {
        return Err(format!("guests: {name} assembled to an empty image"));
    }
    if source.mode == Mode::Real {
        let segment_base = source.load_address & 0xF_0000;
        let end = source.load_address.saturating_add(len);
        if source.load_address >= 0x10_0000 || end - segment_base > 0x1_0000 {
            return Err(format!(
                "guests: {name}: a real-mode image of {len:#x} bytes at {:#x} does not fit the \
                 64 KiB segment at {segment_base:#x} that its entry's CS reaches",
                source.load_address
            ));
        }
    }
    Ok(())
}

/// Runs a binutils command; an error names the command and its stderr.
fn run(cmd: &mut Command) -> Result<(), String> {
    crate::run_tool("guests", cmd, "binutils")
}

/// The UTF-8 file name of `path`.
fn file_name(path: &Path) -> Result<String, String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| format!("ramdisk: {} has no UTF-8 file name", path.display()))
}

/// Adds every regular file under `dir` to `files` as (name in the partition, path),
/// the name being `prefix` plus the path relative to `dir`, `/`-separated.
/// Names starting with `.` are skipped.
fn collect_files(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<(String, PathBuf)>,
) -> Result<(), String> {
    let listing =
        fs::read_dir(dir).map_err(|e| format!("ramdisk: cannot list {}: {e}", dir.display()))?;
    for entry in listing {
        let entry = entry.map_err(|e| format!("ramdisk: cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = file_name(&path)?;
        if name.starts_with('.') {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| format!("ramdisk: cannot stat {}: {e}", path.display()))?;
        let archive_name = format!("{prefix}{name}");
        if kind.is_file() {
            files.push((archive_name, path));
        } else if kind.is_dir() {
            collect_files(&path, &format!("{archive_name}/"), files)?;
        } else {
            return Err(format!(
                "ramdisk: {} is neither a regular file nor a folder; the ramdisk holds only files",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A fresh, empty scratch folder for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferrovisor-guests-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_guest_builds_into_a_small_flat_image() {
        let out = scratch("build");
        let built = build_guests(&out).unwrap();
        let sources = guest_sources(&asm_dir()).unwrap();
        assert_eq!(built.len(), sources.len());
        assert_eq!(sources.len(), EXPECTED_LINES.len());
        for (bin, source) in built.iter().zip(&sources) {
            assert_eq!(*bin, out.join(format!("{}.bin", source.stem)));
            let image = fs::read(bin).unwrap();
            assert!(!image.is_empty(), "{}", bin.display());
            assert!(
                image.len() < 64 * 1024,
                "{}: {} bytes",
                bin.display(),
                image.len()
            );
            let (_, lines) = EXPECTED_LINES
                .iter()
                .find(|(stem, _)| *stem == source.stem)
                .unwrap_or_else(|| panic!("no expected lines for {}", source.stem));
            for line in *lines {
                assert!(
                    contains(&image, line.as_bytes()),
                    "{}: {line:?}",
                    source.stem
                );
            }
        }
        // Nothing but the images is left behind.
        let mut left: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let names: Vec<String> = sources.iter().map(|s| format!("{}.bin", s.stem)).collect();
        assert_eq!(left, names);

        // Each image starts with its main code (subsection 0), not with the
        // routines or strings the .inc files put in later subsections: every
        // guest's first instruction is CLD.
        for bin in &built {
            assert_eq!(fs::read(bin).unwrap()[0], 0xFC, "{}", bin.display());
        }
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn real_mode_guests_are_linked_at_their_load_address() {
        // real.S prints with PRINT: `push si; mov si, offset <string>` (56 BE
        // imm16). The immediate is the string's address, which must point at
        // the line inside the image loaded at 0x8000.
        let out = scratch("real");
        build_guests(&out).unwrap();
        let image = fs::read(out.join("real.bin")).unwrap();
        let at = image
            .windows(2)
            .position(|w| w == [0x56, 0xBE])
            .expect("push si; mov si, imm16");
        let addr = usize::from(u16::from_le_bytes([image[at + 2], image[at + 3]]));
        let line = b"hello from real mode\n";
        assert_eq!(&image[addr - 0x8000..addr - 0x8000 + line.len()], line);
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn build_errors_name_the_command_and_its_output() {
        let asm = scratch("broken-asm");
        let out = asm.join("out");
        fs::write(
            asm.join("bad.S"),
            "# ferrovisor: load_address=0x100000 mode=long\n.intel_syntax noprefix\n frobnicate rax\n",
        )
        .unwrap();
        let e = build_from(&asm, &out).unwrap_err();
        assert!(e.contains("`as --64"), "{e}");
        assert!(e.contains("bad.S"), "{e}");
        assert!(e.contains("frobnicate"), "{e}");
        // The scratch folder went away with the failure.
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);

        fs::write(asm.join("bad.S"), "nop\n").unwrap();
        let e = build_from(&asm, &out).unwrap_err();
        assert!(
            e.contains("bad.S has no `# ferrovisor: load_address="),
            "{e}"
        );

        fs::write(
            asm.join("bad.S"),
            "# ferrovisor: load_address=0x8000 mode=flat\nnop\n",
        )
        .unwrap();
        let e = build_from(&asm, &out).unwrap_err();
        assert!(e.contains("`mode=flat`"), "{e}");

        fs::write(asm.join("bad.S"), "# ferrovisor: mode=real\nnop\n").unwrap();
        let e = build_from(&asm, &out).unwrap_err();
        assert!(e.contains("needs both load_address= and mode="), "{e}");

        // 0xF000 + 0x2000 crosses the 64 KiB segment CS = 0 reaches.
        fs::write(
            asm.join("bad.S"),
            "# ferrovisor: load_address=0xf000 mode=real\n.code16\n.globl _start\n_start: .space 0x2000, 0x90\n",
        )
        .unwrap();
        let e = build_from(&asm, &out).unwrap_err();
        assert!(e.contains("does not fit the 64 KiB segment at 0x0"), "{e}");

        // A missing tool names the package that brings it.
        let e = run(&mut Command::new("ferrovisor-no-such-assembler")).unwrap_err();
        assert!(e.contains("install binutils"), "{e}");

        fs::remove_file(asm.join("bad.S")).unwrap();
        let e = build_from(&asm, &out).unwrap_err();
        assert!(e.contains("no *.S sources"), "{e}");
        fs::remove_dir_all(&asm).unwrap();
    }

    #[test]
    fn link_lines_are_read() {
        let p = Path::new("x.S");
        assert_eq!(
            link_line(p, "; x\n  # ferrovisor: mode=long load_address=0x10_0000\n").unwrap(),
            (0x10_0000, Mode::Long)
        );
        assert_eq!(
            link_line(p, "# ferrovisor: load_address=32768 mode=real").unwrap(),
            (0x8000, Mode::Real)
        );
        let e = link_line(
            p,
            "# ferrovisor: load_address=0x1 mode=real\n# ferrovisor: mode=long",
        )
        .unwrap_err();
        assert!(e.contains("more than one"), "{e}");
        let e = link_line(p, "# ferrovisor: load_address=0xZZ mode=real").unwrap_err();
        assert!(e.contains("`load_address=0xZZ`"), "{e}");
    }

    /// The `[[guest]]` tables of a hypervisor.toml as key → value text (a
    /// line scan of this repository's simple configs, not a TOML parser).
    fn guest_tables(text: &str) -> Vec<HashMap<String, String>> {
        let mut guests: Vec<HashMap<String, String>> = Vec::new();
        let mut in_guest = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') {
                in_guest = line == "[[guest]]";
                if in_guest {
                    guests.push(HashMap::new());
                }
                continue;
            }
            if let (true, Some((key, value)), Some(guest)) =
                (in_guest, line.split_once('='), guests.last_mut())
            {
                let value = value.trim().trim_matches('"').to_string();
                guest.insert(key.trim().to_string(), value);
            }
        }
        guests
    }

    #[test]
    fn configs_load_only_guests_that_exist_where_they_are_linked() {
        let sources = guest_sources(&asm_dir()).unwrap();
        for (config, names) in [
            (
                "test",
                &[
                    "real",
                    "protected",
                    "long",
                    "escape",
                    "halt",
                    "reset",
                    "triple",
                    "cpuid",
                    "timer",
                ][..],
            ),
            ("default", &["real", "protected", "long", "cpuid"][..]),
            ("bench", &["cpuid"][..]),
            ("fidelity-wxapic", &["apicbase", "apicgone"][..]),
            ("fidelity-crdbg", &["crdbg32", "crdbg64"][..]),
            ("fidelity-strio", &["strio"][..]),
            ("fidelity-facts", &["facts"][..]),
            ("console", &["echo", "echo2", "counter"][..]),
            ("console-flood", &["flood", "spin1", "spin2"][..]),
            ("high-ram", &["highram"][..]),
        ] {
            let path = config_dir(config).join(CONFIG_FILE);
            let text = fs::read_to_string(&path).unwrap();
            let guests = guest_tables(&text);
            let found: Vec<&str> = guests.iter().map(|g| g["name"].as_str()).collect();
            assert_eq!(found, names, "{}", path.display());
            for g in &guests {
                let at = format!("{}: guest {}", path.display(), g["name"]);
                let kernel = &g["kernel"];
                let stem = kernel
                    .strip_suffix(".bin")
                    .unwrap_or_else(|| panic!("{at}: {kernel}"));
                let source = sources
                    .iter()
                    .find(|s| s.stem == stem)
                    .unwrap_or_else(|| panic!("{at}: no guest-images/asm/{stem}.S"));
                assert_eq!(g["format"], "flat", "{at}");
                assert_eq!(
                    parse_address(&g["load_address"]),
                    Some(source.load_address),
                    "{at}"
                );
                // Each image starts with its first instruction.
                assert_eq!(
                    parse_address(&g["entry"]),
                    Some(source.load_address),
                    "{at}"
                );
                assert_eq!(g["mode"], source.mode.name(), "{at}");
                assert!(g.contains_key("memory"), "{at}");
            }
        }
    }

    /// The Multiboot v1 header of an image (Multiboot Specification
    /// 0.6.96, 3.1): its offset and its eight fields, where the magic is
    /// at a 4-byte aligned offset in the first 8 KiB with a checksum that
    /// adds up.
    fn multiboot_header(image: &[u8]) -> Option<(usize, [u32; 8])> {
        let field = |at: usize| {
            image
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        (0..image.len().min(8192)).step_by(4).find_map(|at| {
            let magic = field(at)?;
            let flags = field(at + 4)?;
            let sum = magic.wrapping_add(flags).wrapping_add(field(at + 8)?);
            if magic != 0x1BAD_B002 || sum != 0 {
                return None;
            }
            let mut fields = [0; 8];
            for (i, f) in fields.iter_mut().enumerate() {
                *f = field(at + 4 * i)?;
            }
            Some((at, fields))
        })
    }

    #[test]
    fn the_smp_guest_is_a_multiboot_image_where_it_is_linked() {
        // QEMU (`-kernel smp.bin`) and Ferrovisor both load it by the
        // header's address fields (flags bit 16), so they must describe
        // the flat image as linked: the header at its own address, the
        // file from its first byte at the link line's load address, and
        // the entry at that first byte (the CLD every guest starts with).
        let out = scratch("multiboot");
        build_guests(&out).unwrap();
        let image = fs::read(out.join("smp.bin")).unwrap();
        let source = guest_sources(&asm_dir())
            .unwrap()
            .into_iter()
            .find(|s| s.stem == "smp")
            .unwrap();
        assert_eq!(source.mode, Mode::Protected);
        let (at, [_, flags, _, header_addr, load_addr, load_end, bss_end, entry]) =
            multiboot_header(&image).expect("a Multiboot header in the first 8 KiB");
        // Only the address fields: no requirement bit Ferrovisor refuses.
        assert_eq!(flags, 1 << 16);
        assert_eq!(u64::from(load_addr), source.load_address);
        assert_eq!(u64::from(header_addr), source.load_address + at as u64);
        assert_eq!((load_end, bss_end), (0, 0), "the whole file, no bss");
        assert_eq!(u64::from(entry), source.load_address);
        assert_eq!(image[0], 0xFC);
        // Its trampoline's page (start-up vector 0x08) and the APs' stacks
        // must stay clear of where it is loaded.
        assert!(source.load_address >= 0x10_0000);

        // The config boots it as Multiboot, twice.
        let path = config_dir("smp").join(CONFIG_FILE);
        let guests = guest_tables(&fs::read_to_string(&path).unwrap());
        let found: Vec<(&str, &str, &str)> = guests
            .iter()
            .map(|g| (g["name"].as_str(), g["vcpus"].as_str(), g["cpus"].as_str()))
            .collect();
        assert_eq!(
            found,
            [("smp2", "2", "[0]"), ("smp4", "4", "[0, 1]")],
            "{}",
            path.display()
        );
        for g in &guests {
            let at = format!("{}: guest {}", path.display(), g["name"]);
            assert_eq!(g["kernel"], "smp.bin", "{at}");
            assert_eq!(g["format"], "multiboot", "{at}");
            assert_eq!(g["memory"], "4M", "{at}");
            for flat_only in ["load_address", "entry", "mode"] {
                assert!(!g.contains_key(flat_only), "{at}: {flat_only}");
            }
        }
        fs::remove_dir_all(&out).unwrap();
    }

    /// The exact lines each guest prints (the boot tests match them).
    const EXPECTED_LINES: &[(&str, &[&str])] = &[
        (
            "apicbase",
            &[
                "apic at ",
                ": id ",
                " version ",
                "apic base msr ",
                "trying a reserved bit in apic base\n",
                "reserved bit 9\0",
                "trying x2apic mode\n",
                "x2apic enable\0",
                ": #GP\n",
                "disabled: apic base msr ",
                "moved: apic base msr ",
                "at 0xfea00000: tpr ",
                " svr ",
                "back: apic base msr ",
                ": no fault\n",
                "unexpected exception ",
            ],
        ),
        (
            "apicgone",
            &[
                "apic answers at 0xfee00000\n",
                "apic disabled; reading 0xfee00020\n",
                "ESCAPED: the disabled apic page answered\n",
            ],
        ),
        ("real", &["hello from real mode\n"]),
        (
            "protected",
            &[
                "hello from protected mode\n",
                "sse state kept across 3000 exits\n",
                "sse state LOST in xmm",
            ],
        ),
        (
            "long",
            &[
                "hello from long mode\n",
                "printed by hypercall\n",
                "avx state kept across 3000 exits\n",
                "avx state LOST in ymm",
                "no AVX: sse only\n",
                "sse state kept across 3000 exits\n",
                "sse state LOST in xmm",
                "cpuid 0x40000000: ",
            ],
        ),
        (
            "cpuid_loop",
            &[
                "empty loop: 1000 iterations, average ",
                " ticks\n",
                "vmexit ",
                "overhead\0",
                "cpuid\0",
                "vmcall\0",
                "inb_pit\0",
                "rdmsr_apicbase\0",
                "apic_eoi\0",
                "irq_window\0",
                "hlt_timer\0",
                "com1_out\0",
                " samples, median ",
                " ticks, average ",
                "vmexit hlt_timer: skipped: no TSC-deadline timer (CPUID.01H:ECX[24] clear)\n",
                "vmexit hlt_timer: note: the deadline passed before HLT in ",
                "vmexit irq_window: FAILED: the self-IPI was not delivered after STI; NOP\n",
                "vmexit: FAILED: an unexpected interrupt\n",
                "vmexit: FAILED: exception ",
            ],
        ),
        (
            "escape",
            &[
                "trying vmxon\n",
                "vmxon\0",
                "trying rdmsr 0x3a\n",
                "rdmsr 0x3a\0",
                "trying rdmsr 0x480\n",
                "rdmsr 0x480\0",
                "trying cr4.vmxe\n",
                "cr4.vmxe\0",
                ": #UD\n",
                ": #GP\n",
                ": no fault\n",
                "writing past RAM at 0x10000000\n",
                "ESCAPED: write past RAM returned\n",
            ],
        ),
        (
            "halt",
            &["halting with interrupts off\n", "ESCAPED: hlt returned\n"],
        ),
        (
            "highram",
            &[
                "high ram: checking 0x100000000..0x100800000\n",
                "high ram: patterns at 0xbffffff8, 0x100000000 and 0x1007ffff8 read back\n",
                "high ram: reading the device window at 0xc0000000\n",
                "ESCAPED: the device window read as RAM\n",
            ],
        ),
        (
            "reset",
            &[
                "resetting through port 0xcf9\n",
                "ESCAPED: still running after the reset\n",
            ],
        ),
        (
            "triple",
            &["about to triple fault\n", "ESCAPED: no triple fault\n"],
        ),
        (
            "crdbg32",
            &[
                "cr0 pg without pe\0",
                "cr0 nw without cd\0",
                "cr4 vmxe\0",
                "cr4 reserved bit 15\0",
                "efer reserved bit 2\0",
                "efer lme with paging off\0",
                "cr0 pg with lme and no pae\0",
                "cr0 pg with lme and pae\0",
                "cr0 pg off in compatibility mode left ia-32e mode\n",
                "efer lme off\0",
                "cr0 pae paging\0",
                "efer lme with paging on\0",
                "cr0 paging off\0",
                "cr0 pae paging with a reserved pdpte bit\0",
                "efer.lma 0\n",
                "efer.lma 1\n",
                "dr7 0x401 kept across an exit\n",
                "dr7 LOST across an exit\n",
                "breakpoint after exits and switches\0",
                ": #GP\n",
                ": #DB\n",
                ": ok\n",
            ],
        ),
        (
            "crdbg64",
            &[
                "cr0 pg off in 64-bit mode\0",
                "cr0 bit 63\0",
                "cr4 pae off in ia-32e mode\0",
                "efer lme off with paging on\0",
                "efer lma written 0\0",
                "dr7 0x401 kept across an exit\n",
                "breakpoint after exits and switches\0",
                ": #GP\n",
                ": #DB\n",
                ": ok\n",
            ],
        ),
        (
            "echo",
            &[
                "echo\0",
                "FERROVISOR-MEM-1",
                ": ready, type a line (r12=",
                ", mem 0x50000=",
                ")\r\n",
                ": got ",
            ],
        ),
        (
            "echo2",
            &[
                "echo2\0",
                "FERROVISOR-MEM-2",
                ": ready, type a line (r12=",
                ", mem 0x50000=",
                ": got ",
            ],
        ),
        (
            "counter",
            &["counter: ready, a line every 500 ms\r\n", "counter: \0"],
        ),
        ("spin", &["progress "]),
        ("cpuid_spin", &["progress "]),
        (
            "flood",
            &["flood flood flood flood flood flood flood flood flood flood ..\r\n"],
        ),
        ("idle", &["idling with interrupts on\n", "woken up\n"]),
        (
            "timer",
            &["arming the timer\n", "woken by the timer interrupt\n"],
        ),
        (
            "strio",
            &[
                "rep outsb: a line through string i/o\n",
                "rep outsb through an fs override\n",
                "rep outsb with a 32-bit address size\n",
                "rep insb from an unclaimed port: 300 bytes of 0xff\n",
                "pf:",
                " #PF error ",
                ", cr2 +",
                ", rcx ",
                ", index +",
                "rep insb into a read-only page:",
                "BAD",
            ],
        ),
        (
            "smp",
            &[
                "smp: bsp apic id \0",
                " cpus\n",
                "smp: ap apic id \0",
                " up\n",
                "smp: all \0",
                " cpus up\n",
                "smp: FAILED only \0",
                " cpus arrived\n",
                "smp: lock counter \0",
                "smp: ipi round trip \0",
                "smp: ipi round trip skipped: 1 cpu\n",
                "median \0",
                " ticks average \0",
                " ticks\n",
                "smp: self ipi \0",
                "smp: done\n",
            ],
        ),
        (
            "facts",
            &[
                "fcw at start: ",
                "mxcsr at start: ",
                "cr0 with paging: ",
                "cr0 cd and nw clear: caching on\n",
                "cpuid osxsave follows cr4: set, then clear\n",
                "cpuid osxsave: no xsave on this cpu\n",
                "refused rdmsr: #GP, eflags in the frame: ",
                "gp frame rf: set\n",
                "misc_enable fast-strings write: taken\n",
                "vmcall 0: returned ",
                "vmcall 0: unknown call, the guest goes on\n",
                "facts done\n",
            ],
        ),
    ];

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Every file under `dir`, as (relative path, contents), sorted.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        collect_files(dir, "", &mut files).unwrap();
        files.sort();
        files
            .into_iter()
            .map(|(name, path)| (name, fs::read(path).unwrap()))
            .collect()
    }

    #[test]
    fn staging_holds_the_config_and_every_guest() {
        let dir = scratch("stage");
        let config = dir.join("config");
        fs::create_dir_all(config.join("linux")).unwrap();
        fs::write(config.join(CONFIG_FILE), "[hypervisor]\n").unwrap();
        fs::write(config.join("linux").join("bzImage"), [1u8; 3]).unwrap();
        fs::write(config.join(".hidden"), "x").unwrap();
        let staging = dir.join("out").join("config");
        stage(&config, &staging).unwrap();
        let first = tree(&staging);
        let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected: Vec<String> = guest_sources(&asm_dir())
            .unwrap()
            .iter()
            .map(|s| format!("{}.bin", s.stem))
            .chain([CONFIG_FILE.to_string(), "linux/bzImage".to_string()])
            .collect();
        expected.sort();
        assert_eq!(names, expected);
        let guests = dir.join("out").join("guests");
        for (name, data) in &first {
            if name.ends_with(".bin") {
                assert_eq!(*data, fs::read(guests.join(name)).unwrap(), "{name}");
            }
        }
        // Staging again empties the folder first and gives the same files.
        fs::write(staging.join("stale"), "x").unwrap();
        stage(&config, &staging).unwrap();
        assert_eq!(tree(&staging), first);

        // A file that a guest would overwrite, and a missing config.
        fs::write(config.join("real.bin"), "x").unwrap();
        let e = stage(&config, &staging).unwrap_err();
        assert!(e.contains("has a file named real.bin"), "{e}");
        let e = stage(&dir.join("nowhere"), &staging).unwrap_err();
        assert!(e.contains("hypervisor.toml not found"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_named_like_a_linux_image_the_config_names_is_refused() {
        let dir = scratch("linux-clash");
        let config = dir.join("config");
        fs::create_dir_all(&config).unwrap();
        fs::write(
            config.join(CONFIG_FILE),
            "[[guest]]\nname = \"l\"\nkernel = \"x\"\ninitrd = \"initramfs.cpio\"\n",
        )
        .unwrap();
        fs::write(config.join("initramfs.cpio"), "mine").unwrap();
        // Refused before anything is fetched or built.
        let e = stage(&config, &dir.join("out").join("config")).unwrap_err();
        assert!(e.contains("has a file named initramfs.cpio"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_configs_stage() {
        let dir = scratch("shipped");
        for name in [
            "default",
            "test",
            "bench",
            "broken",
            "fidelity-facts",
            "console",
            "console-flood",
            "smp",
            "smp-pair",
        ] {
            let staging = dir.join(name).join("config");
            stage(&config_dir(name), &staging).unwrap();
            assert_eq!(
                fs::read(staging.join(CONFIG_FILE)).unwrap(),
                fs::read(config_dir(name).join(CONFIG_FILE)).unwrap()
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
