//! The Linux guests' images, fetched or built once and cached: Debian's
//! stock kernel, a small kernel built from Debian's kernel source with the
//! recipe in `guest-images/linux/`, and a busybox initramfs.
//!
//! | artifact | made from | how |
//! | --- | --- | --- |
//! | `linux-stock.vmlinuz` | `linux-image-amd64`'s kernel package | `apt-get download`, its `boot/vmlinuz-*` |
//! | `linux-stock-kvm-modules/` | the same package version | its `irqbypass.ko`, `kvm.ko` and `kvm-intel.ko`, for `cargo xtask bench --peer kvm` ([`stock_kernel_with_kvm`]) |
//! | `linux-small.bzImage` | `linux-source-6.1` and `small.config` | `make tinyconfig`, the fragment merged with every other option off, `make bzImage` |
//! | `initramfs.cpio` | `busybox-static`, `init` and `rdtsc.S` | an uncompressed `newc` archive written here ([`crate::cpio`]), `rdtsc.S` assembled and linked with binutils |
//!
//! Everything lives under `target/ferrovisor/linux/`: each artifact beside
//! a `<artifact>.stamp` holding what it was made from (the package and its
//! version, the recipe files' text, the layout revision below), so a new
//! package version or an edited recipe makes it again, and nothing else
//! does. The kernel source stays unpacked in `small-build/` (with its own
//! stamp, the package version) so a changed fragment only reconfigures and
//! rebuilds; `small-build/build.log` has the output of every `make`.
//! Downloads go to a scratch folder that is removed once unpacked. A file
//! lock on `.lock` keeps two xtask processes (or test threads) from
//! building at once.
//!
//! Where apt cannot answer (no apt, no network) a cached artifact is used as
//! it is; for the stock kernel, `FERROVISOR_STOCK_VMLINUZ=<file>` names a
//! kernel to use instead of Debian's.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::cpio::Archive;
use crate::setup::{self, Tool};
use crate::{out_dir, workspace_root};

/// The environment variable that names a stock kernel to use instead of
/// Debian's.
pub const STOCK_KERNEL_ENV: &str = "FERROVISOR_STOCK_VMLINUZ";

/// Debian's kernel source package the small kernel is built from.
const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Debian's metapackage that depends on the current stock kernel package.
const STOCK_METAPACKAGE: &str = "linux-image-amd64";
/// The package whose statically linked busybox the initramfs holds.
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The revision of how this module makes the artifacts out of the
/// packages and recipe files; part of every stamp, so raising it remakes
/// them all.
const RECIPE_REVISION: u32 = 1;

/// One of the three images a Linux guest is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Artifact {
    /// The kernel built from `guest-images/linux/small.config`.
    SmallKernel,
    /// Debian's stock kernel.
    StockKernel,
    /// The busybox initramfs with `guest-images/linux/init` and
    /// `/bin/rdtsc` from `guest-images/linux/rdtsc.S`.
    Initramfs,
}

impl Artifact {
    /// Every artifact, in the order `cargo xtask linux` makes them.
    pub const ALL: [Artifact; 3] = [
        Artifact::Initramfs,
        Artifact::StockKernel,
        Artifact::SmallKernel,
    ];

    /// The artifact's file name, in the cache and on the config partition
    /// (a `hypervisor.toml` names it as `kernel` or `initrd`).
    pub fn file_name(self) -> &'static str {
        match self {
            Artifact::SmallKernel => "linux-small.bzImage",
            Artifact::StockKernel => "linux-stock.vmlinuz",
            Artifact::Initramfs => "initramfs.cpio",
        }
    }

    /// What it is, in words.
    fn what(self) -> &'static str {
        match self {
            Artifact::SmallKernel => "small kernel",
            Artifact::StockKernel => "stock kernel",
            Artifact::Initramfs => "initramfs",
        }
    }
}

/// The paths of all three artifacts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifacts {
    /// `linux-small.bzImage`.
    pub small_kernel: PathBuf,
    /// `linux-stock.vmlinuz` (or the file `FERROVISOR_STOCK_VMLINUZ` names).
    pub stock_kernel: PathBuf,
    /// `initramfs.cpio`.
    pub initramfs: PathBuf,
}

/// The folder holding the recipe: `small.config`, `init`, the example
/// `hypervisor.toml`.
pub fn recipe_dir() -> PathBuf {
    workspace_root().join("guest-images").join("linux")
}

/// The cache: `target/ferrovisor/linux`.
pub fn cache_dir() -> PathBuf {
    out_dir().join("linux")
}

/// Makes (or finds in the cache) every artifact.
///
/// # Errors
///
/// See [`artifact`].
pub fn all() -> Result<Artifacts, String> {
    Ok(Artifacts {
        initramfs: artifact(Artifact::Initramfs)?,
        stock_kernel: artifact(Artifact::StockKernel)?,
        small_kernel: artifact(Artifact::SmallKernel)?,
    })
}

/// The artifact cache, created if missing, and its lock, held: one xtask
/// at a time fetches or builds there.
fn locked_cache() -> Result<(PathBuf, File), String> {
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .map_err(|e| format!("linux: cannot create {}: {e}", cache.display()))?;
    let lock_path = cache.join(".lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("linux: cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("linux: cannot lock {}: {e}", lock_path.display()))?;
    Ok((cache, lock))
}

/// Makes `which` unless the cache holds it, made from the current package
/// version and recipe, and returns its path. Prints one line per step, or
/// one for the cache hit.
///
/// # Errors
///
/// One message saying what failed and what to do: a missing host tool (with
/// the `apt-get install` command where this process may not run it), apt
/// unable to fetch a package, a failed `make` (with the tail of its log and
/// the log's path), or an option of `small.config` missing from the final
/// kernel configuration.
pub fn artifact(which: Artifact) -> Result<PathBuf, String> {
    let (cache, lock) = locked_cache()?;
    let made = match which {
        Artifact::SmallKernel => small_kernel(&cache),
        Artifact::StockKernel => stock_kernel(&cache),
        Artifact::Initramfs => initramfs(&cache),
    };
    // Dropping the file releases the lock.
    drop(lock);
    made
}

/// The artifacts a config file names: each whose file name appears as a
/// string value (optionally with a leading `/`) outside a comment, such as
/// `kernel = "linux-small.bzImage"`. xtask reads the config without the
/// kernel's TOML parser (it stays free of crates.io crates), which is
/// enough to decide what to build: a name inside a longer string does not
/// count.
pub fn referenced(config_text: &str) -> Vec<Artifact> {
    let mut found = Vec::new();
    for line in config_text.lines() {
        for value in quoted_strings(line) {
            let value = value.strip_prefix('/').unwrap_or(value);
            for artifact in Artifact::ALL {
                if value == artifact.file_name() && !found.contains(&artifact) {
                    found.push(artifact);
                }
            }
        }
    }
    found.sort();
    found
}

/// The quoted strings of one TOML line up to its comment: basic strings
/// (`"..."`, backslash escapes skipped over, not decoded) and literal ones
/// (`'...'`).
fn quoted_strings(line: &str) -> Vec<&str> {
    let mut strings = Vec::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => break,
            '"' | '\'' => {
                let start = i + 1;
                let mut end = None;
                while let Some((j, d)) = chars.next() {
                    if c == '"' && d == '\\' {
                        chars.next();
                    } else if d == c {
                        end = Some(j);
                        break;
                    }
                }
                match end {
                    Some(end) => strings.push(&line[start..end]),
                    // An unterminated string: the kernel's parser reports it.
                    None => break,
                }
            }
            _ => {}
        }
    }
    strings
}

/// `cargo xtask linux`: makes every artifact and prints their paths.
///
/// # Errors
///
/// See [`artifact`].
pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(arg) = args.first() {
        return Err(format!("`cargo xtask linux` takes no options, not {arg:?}"));
    }
    let made = all()?;
    println!(
        "xtask: linux: {} {}",
        Artifact::SmallKernel.file_name(),
        made.small_kernel.display()
    );
    println!(
        "xtask: linux: {} {}",
        Artifact::StockKernel.file_name(),
        made.stock_kernel.display()
    );
    println!(
        "xtask: linux: {} {}",
        Artifact::Initramfs.file_name(),
        made.initramfs.display()
    );
    Ok(())
}

/// One progress line.
fn step(which: Artifact, what: &str) {
    println!("xtask: linux: {}: {what}", which.what());
}

/// The stamp file beside an artifact.
fn stamp_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".stamp");
    PathBuf::from(name)
}

/// Whether `artifact` exists and was made from exactly `stamp`.
fn up_to_date(artifact: &Path, stamp: &str) -> bool {
    artifact.is_file() && fs::read_to_string(stamp_path(artifact)).is_ok_and(|s| s == stamp)
}

/// Puts `bytes` at `to` through a temporary file, so an interrupted write
/// leaves no artifact that looks whole, then writes its stamp.
fn install(which: Artifact, bytes: &[u8], to: &Path, stamp: &str) -> Result<(), String> {
    let stamp_file = stamp_path(to);
    // The stamp goes first, so a crash in between leaves a stamp without
    // an artifact (remade), never an artifact with an old stamp.
    let _ = fs::remove_file(&stamp_file);
    let tmp = to.with_extension("tmp");
    fs::write(&tmp, bytes)
        .map_err(|e| format!("{}: cannot write {}: {e}", which.what(), tmp.display()))?;
    fs::rename(&tmp, to).map_err(|e| {
        format!(
            "{}: cannot move {} to {}: {e}",
            which.what(),
            tmp.display(),
            to.display()
        )
    })?;
    fs::write(&stamp_file, stamp).map_err(|e| {
        format!(
            "{}: cannot write {}: {e}",
            which.what(),
            stamp_file.display()
        )
    })
}

/// Empties (or creates) a scratch folder.
fn fresh_dir(which: Artifact, dir: &Path) -> Result<(), String> {
    if dir.exists() {
        fs::remove_dir_all(dir)
            .map_err(|e| format!("{}: cannot remove {}: {e}", which.what(), dir.display()))?;
    }
    fs::create_dir_all(dir)
        .map_err(|e| format!("{}: cannot create {}: {e}", which.what(), dir.display()))
}

/// Reads a recipe file.
fn recipe(which: Artifact, name: &str) -> Result<(PathBuf, String), String> {
    let path = recipe_dir().join(name);
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: cannot read the recipe {}: {e}",
            which.what(),
            path.display()
        )
    })?;
    Ok((path, text))
}

/// A stamp: one `key value` line per input, then each recipe file's text.
fn stamp(inputs: &[(&str, &str)], files: &[(&str, &str)]) -> String {
    let mut s = format!("recipe-revision {RECIPE_REVISION}\n");
    for (key, value) in inputs {
        let _ = writeln!(s, "{key} {value}");
    }
    for (name, text) in files {
        let _ = write!(s, "--- {name}\n{text}");
    }
    s
}

// ---------------------------------------------------------------- apt

/// Runs a query tool and returns its standard output.
fn query(cmd: &mut Command) -> Result<String, String> {
    let shown = shown(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let last = said.lines().last().unwrap_or("").trim();
        return Err(format!("`{shown}` failed ({}): {last}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A command as the user would type it.
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The version apt would install of `package`.
fn candidate_version(package: &str) -> Result<String, String> {
    let text = query(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    field(&text, "Version").ok_or_else(|| format!("apt-cache knows no version of {package}"))
}

/// The value of the first `name: value` line of an apt record.
fn field(record: &str, name: &str) -> Option<String> {
    record.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}

/// The kernel package `linux-image-amd64` depends on, from `apt-cache
/// depends` output (`  Depends: linux-image-6.1.0-N-amd64`).
fn stock_package_from(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends:")?.trim();
        name.starts_with("linux-image-").then(|| name.to_string())
    })
}

/// Downloads `package` at `version` into `dir` (emptied first) and returns
/// the `.deb`. A failure is retried once after `apt-get update` when this
/// process may run it (a stale package list names versions the mirror no
/// longer has).
fn download(which: Artifact, package: &str, version: &str, dir: &Path) -> Result<PathBuf, String> {
    fresh_dir(which, dir)?;
    step(which, &format!("downloading {package} {version}"));
    let fetch = || {
        query(
            Command::new("apt-get")
                .arg("download")
                .arg(format!("{package}={version}"))
                .current_dir(dir),
        )
    };
    if let Err(first) = fetch() {
        if !setup::is_root() {
            return Err(first);
        }
        step(
            which,
            &format!("{first}; updating apt's package lists and trying again"),
        );
        query(Command::new("apt-get").arg("update"))?;
        fetch()?;
    }
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.as_slice() {
        [deb] => Ok(deb.clone()),
        _ => Err(format!(
            "`apt-get download {package}={version}` left {} .deb files in {}, not one",
            debs.len(),
            dir.display()
        )),
    }
}

/// Runs a tool that writes nothing worth showing; an error carries its
/// stderr.
fn tool(which: Artifact, cmd: &mut Command, package: &str) -> Result<(), String> {
    crate::run_tool(which.what(), cmd, package)
}

/// The version apt offers of an artifact's package, or, where apt cannot
/// answer, `None` when a cached artifact can stand in (after saying so).
fn version_or_cached(
    which: Artifact,
    package: &str,
    cached: &Path,
) -> Result<Option<String>, String> {
    match candidate_version(package) {
        Ok(v) => Ok(Some(v)),
        Err(e) if cached.is_file() => {
            step(
                which,
                &format!(
                    "cannot ask apt for {package} ({e}); using the cached {}",
                    cached.display()
                ),
            );
            Ok(None)
        }
        Err(e) => Err(format!(
            "{}: cannot ask apt for {package}: {e}; Debian or Ubuntu with network access is needed \
             to fetch it",
            which.what()
        )),
    }
}

// ---------------------------------------------------------------- stock kernel

/// The stock kernel package's modules that Linux KVM on Intel is made of,
/// in the order they load (each needs the ones before it), with their
/// paths under the package's `lib/modules/<release>/kernel/`.
pub const KVM_MODULES: [(&str, &str); 3] = [
    ("irqbypass", "virt/lib/irqbypass.ko"),
    ("kvm", "arch/x86/kvm/kvm.ko"),
    ("kvm-intel", "arch/x86/kvm/kvm-intel.ko"),
];

/// The folder in the cache holding [`KVM_MODULES`] as `<name>.ko`.
const KVM_MODULES_DIR: &str = "linux-stock-kvm-modules";

/// Debian's stock kernel and, in a folder beside it, its package's KVM
/// modules ([`KVM_MODULES`], as `<name>.ko`), both from the same package
/// version (their stamps are the same), fetched unless the cache holds
/// them.
///
/// # Errors
///
/// As [`artifact`], and where `FERROVISOR_STOCK_VMLINUZ` names another
/// kernel: the package's modules would not load into it.
pub fn stock_kernel_with_kvm() -> Result<(PathBuf, PathBuf), String> {
    if std::env::var_os(STOCK_KERNEL_ENV).is_some() {
        return Err(format!(
            "stock kernel: the KVM peer loads the modules of Debian's {STOCK_METAPACKAGE} package, \
             which fit that package's kernel only; unset {STOCK_KERNEL_ENV}"
        ));
    }
    let (cache, lock) = locked_cache()?;
    let made = stock(&cache, true);
    drop(lock);
    let kernel = made?;
    Ok((kernel, cache.join(KVM_MODULES_DIR)))
}

fn stock_kernel(cache: &Path) -> Result<PathBuf, String> {
    let which = Artifact::StockKernel;
    if let Some(path) = std::env::var_os(STOCK_KERNEL_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!(
                "stock kernel: {STOCK_KERNEL_ENV}={} is not a file",
                path.display()
            ));
        }
        step(
            which,
            &format!("{} (from {STOCK_KERNEL_ENV})", path.display()),
        );
        return Ok(path);
    }
    stock(cache, false)
}

/// Whether the KVM modules in `dir` are all there, unpacked from the
/// package that `stamp` names.
fn modules_up_to_date(dir: &Path, stamp: &str) -> bool {
    KVM_MODULES
        .iter()
        .all(|(name, _)| dir.join(format!("{name}.ko")).is_file())
        && fs::read_to_string(stamp_path(dir)).is_ok_and(|s| s == stamp)
}

/// The `tar` patterns that pick the kernel (`./boot/vmlinuz-*`) and, with
/// `modules`, [`KVM_MODULES`] out of the kernel package.
fn stock_members(kernel: bool, modules: bool) -> Vec<String> {
    let mut members = Vec::new();
    if kernel {
        members.push("./boot/vmlinuz-*".to_string());
    }
    if modules {
        for (_, path) in KVM_MODULES {
            members.push(format!("./lib/modules/*/kernel/{path}"));
        }
    }
    members
}

/// The stock kernel from the package `linux-image-amd64` depends on now
/// and, with `modules`, its KVM modules in [`KVM_MODULES_DIR`]; what the
/// cache holds from that package version is not fetched again.
fn stock(cache: &Path, modules: bool) -> Result<PathBuf, String> {
    let which = Artifact::StockKernel;
    let out = cache.join(which.file_name());
    let modules_dir = cache.join(KVM_MODULES_DIR);
    let unavailable = |why: &str| {
        format!(
            "stock kernel: cannot fetch Debian's {STOCK_METAPACKAGE} with apt ({why}); put a Linux \
             bzImage at {} or name one with {STOCK_KERNEL_ENV}=<file>",
            out.display()
        )
    };
    let resolved = query(Command::new("apt-cache").args(["depends", STOCK_METAPACKAGE]))
        .and_then(|text| {
            stock_package_from(&text)
                .ok_or_else(|| format!("{STOCK_METAPACKAGE} depends on no linux-image-* package"))
        })
        .and_then(|package| Ok((candidate_version(&package)?, package)));
    let (version, package) = match resolved {
        Ok(found) => found,
        Err(e) if out.is_file() => {
            // The cached modules only with the cached kernel's package.
            let cached = fs::read_to_string(stamp_path(&out)).unwrap_or_default();
            if modules && !modules_up_to_date(&modules_dir, &cached) {
                return Err(unavailable(&format!(
                    "{e}; the cache has no KVM modules from the cached kernel's package"
                )));
            }
            step(
                which,
                &format!("cannot ask apt ({e}); using the cached {}", out.display()),
            );
            return Ok(out);
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let stamp = stamp(&[("package", &format!("{package} {version}"))], &[]);
    let kernel_ok = up_to_date(&out, &stamp);
    let modules_ok = !modules || modules_up_to_date(&modules_dir, &stamp);
    if kernel_ok && modules_ok {
        step(
            which,
            &format!("up to date ({package} {version}): {}", out.display()),
        );
        return Ok(out);
    }
    let work = cache.join("stock-fetch");
    let deb =
        download(which, &package, &version, &work.join("download")).map_err(|e| unavailable(&e))?;
    let members = stock_members(!kernel_ok, !modules_ok);
    step(
        which,
        &format!("unpacking {} from {}", members.join(" "), file_name(&deb)),
    );
    // Only these members: the package's modules are hundreds of megabytes.
    let unpacked = work.join("package");
    fs::create_dir_all(&unpacked)
        .map_err(|e| format!("stock kernel: cannot create {}: {e}", unpacked.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| unavailable(&format!("cannot run dpkg-deb: {e}")))?;
    let tar_input = dpkg
        .stdout
        .take()
        .map(Stdio::from)
        .unwrap_or_else(Stdio::null);
    let tar = Command::new("tar")
        .arg("-x")
        .arg("--wildcards")
        .arg("-C")
        .arg(&unpacked)
        .args(&members)
        .stdin(tar_input)
        .status();
    let dpkg = dpkg.wait();
    match (dpkg, tar) {
        (Ok(d), Ok(t)) if d.success() && t.success() => {}
        (d, t) => {
            return Err(format!(
                "stock kernel: unpacking {} of {} failed (dpkg-deb: {d:?}, tar: {t:?})",
                members.join(" "),
                deb.display()
            ))
        }
    }
    if !kernel_ok {
        let vmlinuz = find_one(&unpacked.join("boot"), "vmlinuz-")
            .ok_or_else(|| format!("stock kernel: {} holds no boot/vmlinuz-*", deb.display()))?;
        let bytes = fs::read(&vmlinuz)
            .map_err(|e| format!("stock kernel: cannot read {}: {e}", vmlinuz.display()))?;
        install(which, &bytes, &out, &stamp)?;
        step(
            which,
            &format!(
                "{} ({} KiB, {package} {version})",
                out.display(),
                bytes.len() / 1024
            ),
        );
    }
    if !modules_ok {
        install_modules(&unpacked, &modules_dir, &stamp)
            .map_err(|e| format!("stock kernel: {} ({package} {version}): {e}", deb.display()))?;
        step(
            which,
            &format!(
                "{} ({package} {version}): {}",
                modules_dir.display(),
                KVM_MODULES.map(|(name, _)| format!("{name}.ko")).join(", ")
            ),
        );
    }
    let _ = fs::remove_dir_all(&work);
    Ok(out)
}

/// Copies [`KVM_MODULES`] from the unpacked package (`unpacked/lib/
/// modules/<release>/kernel/...`, one release) into `dir` (emptied
/// first), then writes `dir`'s stamp.
fn install_modules(unpacked: &Path, dir: &Path, stamp: &str) -> Result<(), String> {
    let releases = unpacked.join("lib").join("modules");
    let release = fs::read_dir(&releases)
        .ok()
        .and_then(|entries| {
            let found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            (found.len() == 1).then(|| found[0].clone())
        })
        .ok_or_else(|| "the package holds no single lib/modules/<release> folder".to_string())?;
    let _ = fs::remove_file(stamp_path(dir));
    fresh_dir(Artifact::StockKernel, dir)?;
    for (name, path) in KVM_MODULES {
        let from = release.join("kernel").join(path);
        let to = dir.join(format!("{name}.ko"));
        fs::copy(&from, &to).map_err(|e| {
            format!(
                "the package holds no {} ({e}); a compressed or moved module is not supported",
                from.strip_prefix(unpacked).unwrap_or(&from).display()
            )
        })?;
    }
    fs::write(stamp_path(dir), stamp)
        .map_err(|e| format!("cannot write {}: {e}", stamp_path(dir).display()))
}

/// The one file in `dir` whose name starts with `prefix`.
fn find_one(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    (found.len() == 1).then(|| found.remove(0))
}

/// A path's file name, for progress lines.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

// ---------------------------------------------------------------- initramfs

/// The initramfs's folders, with their permissions.
const INITRAMFS_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
];

/// The initramfs's bytes: the folders above, `/dev/console` (character
/// device 5,1, so the kernel can give init a console before devtmpfs is
/// mounted), `/bin/busybox`, `/bin/sh` linked to it (the interpreter `init`
/// names; `init` installs the other applets' links itself), `/bin/rdtsc`
/// (prints the TSC for the ready marker) and `/init`.
pub fn initramfs_bytes(init: &[u8], busybox: &[u8], rdtsc: &[u8]) -> Result<Vec<u8>, String> {
    let mut archive = Archive::new();
    for (dir, permissions) in INITRAMFS_DIRS {
        archive.dir(dir, *permissions)?;
    }
    archive.char_device("dev/console", 0o600, 5, 1)?;
    archive.file("bin/busybox", 0o755, busybox)?;
    archive.symlink("bin/sh", "busybox")?;
    archive.file("bin/rdtsc", 0o755, rdtsc)?;
    archive.file("init", 0o755, init)?;
    Ok(archive.finish())
}

fn initramfs(cache: &Path) -> Result<PathBuf, String> {
    let which = Artifact::Initramfs;
    let out = cache.join(which.file_name());
    let (_, init) = recipe(which, "init")?;
    let (rdtsc_source, rdtsc_text) = recipe(which, "rdtsc.S")?;
    let Some(version) = version_or_cached(which, BUSYBOX_PACKAGE, &out)? else {
        return Ok(out);
    };
    let stamp = stamp(
        &[("package", &format!("{BUSYBOX_PACKAGE} {version}"))],
        &[("init", &init), ("rdtsc.S", &rdtsc_text)],
    );
    if up_to_date(&out, &stamp) {
        step(
            which,
            &format!(
                "up to date ({BUSYBOX_PACKAGE} {version}): {}",
                out.display()
            ),
        );
        return Ok(out);
    }
    let work = cache.join("initramfs-fetch");
    let deb = download(which, BUSYBOX_PACKAGE, &version, &work.join("download"))
        .map_err(|e| format!("initramfs: {e}"))?;
    step(
        which,
        &format!("unpacking bin/busybox from {}", file_name(&deb)),
    );
    let unpacked = work.join("package");
    tool(
        which,
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg",
    )?;
    let busybox_path = unpacked.join("bin").join("busybox");
    let busybox = fs::read(&busybox_path)
        .map_err(|e| format!("initramfs: cannot read {}: {e}", busybox_path.display()))?;
    step(which, "assembling /bin/rdtsc from rdtsc.S");
    let rdtsc = assemble_program(&rdtsc_source, &work)?;
    step(which, &format!("writing {}", out.display()));
    let bytes = initramfs_bytes(init.as_bytes(), &busybox, &rdtsc)?;
    install(which, &bytes, &out, &stamp)?;
    let _ = fs::remove_dir_all(&work);
    step(
        which,
        &format!("{} ({} KiB)", out.display(), bytes.len() / 1024),
    );
    Ok(out)
}

/// Assembles and links `source`, a static x86-64 Linux program with no
/// libc whose entry is `_start`, in `work`; returns the stripped ELF.
fn assemble_program(source: &Path, work: &Path) -> Result<Vec<u8>, String> {
    let which = Artifact::Initramfs;
    let object = work.join("program.o");
    let program = work.join("program");
    tool(
        which,
        Command::new("as")
            .args(["--64", "--fatal-warnings", "-o"])
            .arg(&object)
            .arg(source),
        "binutils",
    )?;
    tool(
        which,
        Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "--fatal-warnings",
                "-nostdlib",
                "-static",
            ])
            .args(["--build-id=none", "-z", "noexecstack", "-s", "-e", "_start"])
            .arg("-o")
            .arg(&program)
            .arg(&object),
        "binutils",
    )?;
    fs::read(&program).map_err(|e| format!("initramfs: cannot read {}: {e}", program.display()))
}

// ---------------------------------------------------------------- small kernel

/// How many lines of a failed `make`'s log an error shows.
const LOG_TAIL: usize = 25;

fn small_kernel(cache: &Path) -> Result<PathBuf, String> {
    let which = Artifact::SmallKernel;
    let out = cache.join(which.file_name());
    let (fragment_path, fragment) = recipe(which, "small.config")?;
    let Some(version) = version_or_cached(which, SOURCE_PACKAGE, &out)? else {
        return Ok(out);
    };
    let stamp = stamp(
        &[("package", &format!("{SOURCE_PACKAGE} {version}"))],
        &[("small.config", &fragment)],
    );
    if up_to_date(&out, &stamp) {
        step(
            which,
            &format!("up to date ({SOURCE_PACKAGE} {version}): {}", out.display()),
        );
        return Ok(out);
    }
    if std::env::consts::ARCH != "x86_64" {
        return Err(format!(
            "small kernel: building it needs an x86_64 host (this one is {}); copy a \
             {} built elsewhere to {}",
            std::env::consts::ARCH,
            which.file_name(),
            out.display()
        ));
    }
    setup::ensure_tools(&[Tool::LinuxBuild]).map_err(|e| format!("small kernel: {e}"))?;
    let work = cache.join("small-build");
    let tree = work.join(SOURCE_PACKAGE);
    unpack_source(&work, &tree, &version)?;

    let log_path = work.join("build.log");
    File::create(&log_path)
        .map_err(|e| format!("small kernel: cannot create {}: {e}", log_path.display()))?;
    let started = Instant::now();
    step(
        which,
        &format!(
            "configuring: tinyconfig with small.config, every other option off (log: {})",
            log_path.display()
        ),
    );
    make(&tree, &log_path, &["tinyconfig"])?;
    // merge_config.sh without -m runs `make allnoconfig` with the merged
    // file as KCONFIG_ALLCONFIG, the way tinyconfig itself is made: an
    // option the fragment makes visible is off unless the fragment sets
    // it, where olddefconfig would give it its default (ACPI's default
    // drivers, the PS/2 keyboard and mouse, the VT console).
    logged(
        &log_path,
        Command::new("sh")
            .arg("scripts/kconfig/merge_config.sh")
            .arg("-n")
            .arg(".config")
            .arg(&fragment_path)
            .current_dir(&tree)
            .env("ARCH", "x86_64"),
    )?;
    make(&tree, &log_path, &["olddefconfig"])?;
    let config_path = tree.join(".config");
    let config = fs::read_to_string(&config_path)
        .map_err(|e| format!("small kernel: cannot read {}: {e}", config_path.display()))?;
    check_config(&fragment, &config).map_err(|dropped| {
        format!(
            "small kernel: the final configuration lost options that {} sets (a dependency of \
             theirs is off, or the option does not exist in {SOURCE_PACKAGE} {version}): {}",
            fragment_path.display(),
            dropped.join("; ")
        )
    })?;

    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    step(
        which,
        &format!(
            "building bzImage with {jobs} jobs (about 6 minutes on 2 cores; log: {})",
            log_path.display()
        ),
    );
    make(&tree, &log_path, &[&format!("-j{jobs}"), "bzImage"])?;
    let built = tree.join("arch/x86/boot/bzImage");
    let bytes = fs::read(&built)
        .map_err(|e| format!("small kernel: cannot read {}: {e}", built.display()))?;
    // The configuration beside the kernel, for reading what it has.
    let _ = fs::write(cache.join("linux-small.config"), &config);
    install(which, &bytes, &out, &stamp)?;
    let seconds = started.elapsed().as_secs();
    step(
        which,
        &format!(
            "{} ({} KiB) configured and built in {}m{:02}s",
            out.display(),
            bytes.len() / 1024,
            seconds / 60,
            seconds % 60
        ),
    );
    Ok(out)
}

/// Unpacks the kernel source of `version` into `tree` unless the tree there
/// is already that version's.
fn unpack_source(work: &Path, tree: &Path, version: &str) -> Result<(), String> {
    let which = Artifact::SmallKernel;
    let source_stamp = work.join("source.stamp");
    let wanted = format!("{SOURCE_PACKAGE} {version}\n");
    if tree.is_dir() && fs::read_to_string(&source_stamp).is_ok_and(|s| s == wanted) {
        step(
            which,
            &format!(
                "reusing the unpacked {SOURCE_PACKAGE} {version} in {}",
                tree.display()
            ),
        );
        return Ok(());
    }
    fresh_dir(which, work)?;
    let deb = download(which, SOURCE_PACKAGE, version, &work.join("download"))
        .map_err(|e| format!("small kernel: {e}"))?;
    step(which, &format!("unpacking {}", file_name(&deb)));
    let unpacked = work.join("package");
    tool(
        which,
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg",
    )?;
    let tarball = find_one(&unpacked.join("usr/src"), &format!("{SOURCE_PACKAGE}.tar"))
        .ok_or_else(|| {
            format!(
                "small kernel: {} holds no usr/src/{SOURCE_PACKAGE}.tar.*",
                deb.display()
            )
        })?;
    step(
        which,
        &format!("extracting {} (about a minute)", file_name(&tarball)),
    );
    tool(
        which,
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(work),
        "xz-utils",
    )?;
    if !tree.join("Makefile").is_file() {
        return Err(format!(
            "small kernel: {} did not unpack into {}",
            tarball.display(),
            tree.display()
        ));
    }
    let _ = fs::remove_dir_all(&unpacked);
    let _ = fs::remove_dir_all(work.join("download"));
    fs::write(&source_stamp, wanted)
        .map_err(|e| format!("small kernel: cannot write {}: {e}", source_stamp.display()))
}

/// `make ARGS` in the kernel tree, its output appended to the log.
fn make(tree: &Path, log: &Path, args: &[&str]) -> Result<(), String> {
    logged(
        log,
        Command::new("make")
            .args(args)
            .current_dir(tree)
            .env("ARCH", "x86_64")
            // The same version string on every machine.
            .env("KBUILD_BUILD_USER", "ferrovisor")
            .env("KBUILD_BUILD_HOST", "xtask"),
    )
}

/// Runs `cmd` with its output appended to `log`; an error names the
/// command and shows the log's last lines.
fn logged(log: &Path, cmd: &mut Command) -> Result<(), String> {
    let shown = shown(cmd);
    let open = || {
        File::options()
            .append(true)
            .open(log)
            .map_err(|e| format!("small kernel: cannot open {}: {e}", log.display()))
    };
    let (stdout, stderr) = (open()?, open()?);
    let status = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .map_err(|e| format!("small kernel: cannot run `{shown}`: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
    Err(format!(
        "small kernel: `{shown}` failed ({status}); the end of {}:\n{tail}",
        log.display()
    ))
}

/// One option setting of a Kconfig file: `CONFIG_X=value` or `# CONFIG_X
/// is not set` (value `None`).
fn setting(line: &str) -> Option<(&str, Option<&str>)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.strip_suffix(" is not set")?;
        return name.starts_with("CONFIG_").then_some((name, None));
    }
    let (name, value) = line.split_once('=')?;
    name.starts_with("CONFIG_").then_some((name, Some(value)))
}

/// Checks that every setting of `fragment` holds in the final `config`: a
/// value is there exactly, an option the fragment turns off is not on.
/// Returns the settings that do not hold, each with what the final file has.
fn check_config(fragment: &str, config: &str) -> Result<(), Vec<String>> {
    let final_value = |name: &str| {
        config
            .lines()
            .filter_map(setting)
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v)
    };
    let dropped: Vec<String> = fragment
        .lines()
        .filter_map(setting)
        .filter_map(|(name, wanted)| {
            let got = final_value(name);
            let holds = match wanted {
                Some(w) => got == Some(w),
                None => got.is_none_or(|v| v == "n"),
            };
            (!holds).then(|| {
                let wanted = wanted.map_or_else(|| "off".to_string(), |w| format!("={w}"));
                let got = got.map_or_else(|| "off".to_string(), |g| format!("={g}"));
                format!("{name} {wanted} is {got}")
            })
        })
        .collect();
    if dropped.is_empty() {
        Ok(())
    } else {
        Err(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_check_names_each_dropped_option() {
        let fragment =
            "# comment\nCONFIG_A=y\nCONFIG_N=8\n# CONFIG_OFF is not set\nCONFIG_GONE=y\n";
        let good = "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_OFF is not set\nCONFIG_GONE=y\n";
        assert_eq!(check_config(fragment, good), Ok(()));
        // An option the fragment turns off may also be absent altogether.
        assert_eq!(
            check_config(fragment, "CONFIG_A=y\nCONFIG_N=8\nCONFIG_GONE=y\n"),
            Ok(())
        );
        let bad = "CONFIG_A=m\nCONFIG_N=64\nCONFIG_OFF=y\n# CONFIG_GONE is not set\n";
        assert_eq!(
            check_config(fragment, bad),
            Err(vec![
                "CONFIG_A =y is =m".to_string(),
                "CONFIG_N =8 is =64".to_string(),
                "CONFIG_OFF off is =y".to_string(),
                "CONFIG_GONE =y is off".to_string(),
            ])
        );
    }

    #[test]
    fn the_shipped_fragment_checks_against_itself_and_names_its_musts() {
        let (_, fragment) = recipe(Artifact::SmallKernel, "small.config").unwrap();
        assert_eq!(check_config(&fragment, &fragment), Ok(()));
        for option in [
            "CONFIG_64BIT=y",
            "CONFIG_SMP=y",
            "CONFIG_ACPI=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_BLK_DEV_INITRD=y",
            "CONFIG_KERNEL_LZ4=y",
            "CONFIG_DEVTMPFS=y",
            "CONFIG_BINFMT_SCRIPT=y",
        ] {
            assert!(fragment.lines().any(|l| l == option), "{option}");
        }
    }

    #[test]
    fn apt_output_is_read() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            stock_package_from(depends).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(
            stock_package_from("linux-image-amd64\n  Depends: foo\n"),
            None
        );
        let record =
            "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nInstalled-Size: 2000\n";
        assert_eq!(
            field(record, "Version").as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
        assert_eq!(field(record, "Depends"), None);
    }

    #[test]
    fn configs_reference_artifacts_only_as_whole_string_values() {
        let config = r#"
            # kernel = "linux-stock.vmlinuz" is only a comment here
            [[guest]]
            name = "linux"
            kernel = "/linux-small.bzImage"
            initrd = 'initramfs.cpio' # and "linux-stock.vmlinuz" again
            cmdline = "console=ttyS0 root=linux-stock.vmlinuz \"quoted\""
        "#;
        assert_eq!(
            referenced(config),
            [Artifact::SmallKernel, Artifact::Initramfs]
        );
        assert_eq!(
            referenced("kernel = \"linux-stock.vmlinuz\"\n"),
            [Artifact::StockKernel]
        );
        assert!(referenced("kernel = \"real.bin\"\n").is_empty());
        assert!(referenced("kernel = \"unterminated linux-small.bzImage\n").is_empty());
    }

    #[test]
    fn the_shipped_linux_config_references_the_small_kernel_and_initramfs() {
        let (_, text) = recipe(Artifact::SmallKernel, "hypervisor.toml").unwrap();
        assert_eq!(
            referenced(&text),
            [Artifact::SmallKernel, Artifact::Initramfs]
        );
        // The configs with several vCPUs boot the same kernel and
        // initramfs, with the parallel workload on as many loops as vCPUs.
        for (name, vcpus) in [("linux-smp2", 2), ("linux-smp4", 4)] {
            let path = crate::guests::config_dir(name).join("hypervisor.toml");
            let text = fs::read_to_string(&path).unwrap();
            assert_eq!(
                referenced(&text),
                [Artifact::SmallKernel, Artifact::Initramfs],
                "{}",
                path.display()
            );
            assert!(
                text.contains(&format!("\nvcpus = {vcpus}\n")),
                "{}",
                path.display()
            );
            assert!(
                text.contains(&format!(" fv.parallel={vcpus} ")),
                "{}",
                path.display()
            );
        }
        // The configs the other tests and `run` use build no Linux.
        for name in ["default", "test", "bench", "broken", "sched", "smp"] {
            let path = crate::guests::config_dir(name).join("hypervisor.toml");
            let text = fs::read_to_string(&path).unwrap();
            assert!(referenced(&text).is_empty(), "{}", path.display());
        }
    }

    #[test]
    fn the_initramfs_has_init_busybox_and_a_console() {
        let bytes = initramfs_bytes(
            b"#!/bin/sh\necho hi\n",
            b"\x7fELF busybox",
            b"\x7fELF rdtsc",
        )
        .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        // Each member's header is followed by its NUL-terminated name.
        for name in [
            "init",
            "bin/busybox",
            "bin/sh",
            "bin/rdtsc",
            "dev/console",
            "proc",
            "sys",
            "tmp",
            "root",
            "TRAILER!!!",
        ] {
            assert!(text.contains(&format!("{name}\0")), "{name}");
        }
        // /dev/console: a character device, rw for root, 5,1.
        let at = text.find("dev/console\0").unwrap() - 110;
        let field =
            |i: usize| u32::from_str_radix(&text[at + 6 + i * 8..at + 14 + i * 8], 16).unwrap();
        assert_eq!(field(1), 0o020_600);
        assert_eq!((field(9), field(10)), (5, 1));
        assert!(text.contains("#!/bin/sh\necho hi\n"));
        assert!(text.contains("\x7fELF rdtsc"));
    }

    #[test]
    fn rdtsc_prints_the_time_stamp_counter_in_decimal() {
        if std::env::consts::ARCH != "x86_64" {
            return;
        }
        let work = std::env::temp_dir().join(format!("xtask-rdtsc-{}", std::process::id()));
        fs::create_dir_all(&work).unwrap();
        let (source, _) = recipe(Artifact::Initramfs, "rdtsc.S").unwrap();
        let elf = assemble_program(&source, &work).unwrap();
        let program = work.join("rdtsc");
        fs::write(&program, &elf).unwrap();
        fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let read = || {
            let out = Command::new(&program).output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            let digits = text.strip_suffix('\n').unwrap();
            assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
            digits.parse::<u64>().unwrap()
        };
        let (first, second) = (read(), read());
        let _ = fs::remove_dir_all(&work);
        assert!(first > 0 && second > first, "{first} then {second}");
    }

    #[test]
    fn the_kvm_modules_are_picked_out_of_the_kernel_package_in_load_order() {
        assert_eq!(stock_members(true, false), ["./boot/vmlinuz-*"]);
        assert_eq!(
            stock_members(false, true),
            [
                "./lib/modules/*/kernel/virt/lib/irqbypass.ko",
                "./lib/modules/*/kernel/arch/x86/kvm/kvm.ko",
                "./lib/modules/*/kernel/arch/x86/kvm/kvm-intel.ko",
            ]
        );
        assert_eq!(stock_members(true, true).len(), 4);
        let names: Vec<&str> = KVM_MODULES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["irqbypass", "kvm", "kvm-intel"]);
    }

    #[test]
    fn the_kvm_modules_are_taken_from_one_release_and_stamped() {
        let work = std::env::temp_dir().join(format!("xtask-kvm-modules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        let release = work.join("package/lib/modules/6.1.0-1-amd64/kernel");
        for (name, path) in KVM_MODULES {
            let file = release.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, name).unwrap();
        }
        let dir = work.join("modules");
        install_modules(&work.join("package"), &dir, "stamp 1\n").unwrap();
        assert!(modules_up_to_date(&dir, "stamp 1\n"));
        assert!(!modules_up_to_date(&dir, "stamp 2\n"));
        assert_eq!(
            fs::read_to_string(dir.join("kvm-intel.ko")).unwrap(),
            "kvm-intel"
        );
        // A module missing from the package is named.
        fs::remove_file(release.join("arch/x86/kvm/kvm.ko")).unwrap();
        let err = install_modules(&work.join("package"), &dir, "stamp 3\n").unwrap_err();
        assert!(err.contains("arch/x86/kvm/kvm.ko"), "{err}");
        assert!(!modules_up_to_date(&dir, "stamp 3\n"));
        // Two releases: which one is meant is not guessed.
        fs::create_dir_all(work.join("package/lib/modules/6.1.0-2-amd64")).unwrap();
        assert!(install_modules(&work.join("package"), &dir, "stamp 4\n").is_err());
        let _ = fs::remove_dir_all(&work);
    }

    #[test]
    fn stamps_change_with_every_input() {
        let a = stamp(&[("package", "p 1")], &[("init", "x")]);
        assert_ne!(a, stamp(&[("package", "p 2")], &[("init", "x")]));
        assert_ne!(a, stamp(&[("package", "p 1")], &[("init", "y")]));
        assert_eq!(a, stamp(&[("package", "p 1")], &[("init", "x")]));
    }
}
