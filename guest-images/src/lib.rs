//! The guests Ferrovisor boots in its tests and its default configuration.
//!
//! This crate holds no code: it owns the files next to it.
//!
//! - `asm/`: the test guests, GNU `as` sources of flat images, one `<stem>.S`
//!   each (`real`, `protected`, `long`, `cpuid_loop`, `escape`, `halt`,
//!   `triple`), with shared macros and routines in `fv.inc` (platform
//!   constants) and `lib16.inc`, `lib32.inc`, `lib64.inc` (COM1 output,
//!   FV_EXIT, compare routines, per CPU mode). Each source says where it is
//!   linked and in which mode it starts on a
//!   `# ferrovisor: load_address=<address> mode=<real|protected|long>` line.
//! - `default/`, `test/`, `bench/`: a `hypervisor.toml` each, for
//!   `cargo xtask run`, the boot tests and `cargo xtask bench`.
//!
//! `xtask::guests` builds the sources into `<stem>.bin` (with binutils' `as`
//! and `ld`) and packs a config folder with the images into the ramdisk.
#![cfg_attr(not(test), no_std)]
