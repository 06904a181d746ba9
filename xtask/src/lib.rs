//! Ferrovisor's build driver, as a library so the boot tests in `tests/`
//! start emulators exactly the way `cargo xtask run` does.
//!
//! This crate is the only place that knows QEMU, Bochs and OVMF flags. It
//! depends on nothing outside the standard library, so `cargo xtask`
//! compiles in seconds on a fresh machine and can then install what the
//! rest of the build needs.

pub mod build;
pub mod cpio;
pub mod disk;
pub mod guests;
pub mod host;
pub mod linux;
pub mod native;
pub mod runner;
pub mod setup;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Where xtask keeps what it builds: kernels, images, emulator files.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target").join("ferrovisor")
}

/// Runs a host tool to completion with no terminal input. An error starts
/// with `what` and names the command with its output, or, when the program
/// is missing, the Debian package that has it (`package`).
pub fn run_tool(what: &str, cmd: &mut Command, package: &str) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let shown = std::iter::once(program.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    // A tool that asks a question (mtools on a name clash) gets no answer
    // rather than a wait.
    let output = cmd.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!("{what}: `{program}` not found; install {package} (Debian/Ubuntu: apt-get install {package})")
        } else {
            format!("{what}: cannot run `{shown}`: {e}")
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_string();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        said.push('\n');
        said.push_str(stdout.trim_end());
    }
    Err(format!(
        "{what}: `{shown}` failed ({}):\n{said}",
        output.status
    ))
}
