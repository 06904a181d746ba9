//! Ferrovisor's build driver, as a library so the boot tests in `tests/`
//! start emulators exactly the way `cargo xtask run` does.
//!
//! This crate is the only place that knows QEMU, Bochs and OVMF flags. It
//! depends on nothing outside the standard library, so `cargo xtask`
//! compiles in seconds on a fresh machine and can then install what the
//! rest of the build needs.

pub mod build;
pub mod disk;
pub mod guests;
pub mod host;
pub mod runner;
pub mod setup;

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Where xtask keeps what it builds: kernels, images, emulator files.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target").join("ferrovisor")
}
