//! `hypervisor.toml`: the operator's list of guests and the hypervisor's
//! settings, read from the config partition at boot. This module owns the
//! file's schema, its parsing and its validation, and nothing else: it is
//! pure (no I/O, no hardware) and host-tested. The boot path hands it the
//! file's text, a way to ask whether a file exists on the partition, and
//! the free memory, and prints each [`ConfigError`] as a console line.
//!
//! # An example
//!
//! ```toml
//! # Ferrovisor configuration
//! [hypervisor]
//! log_level = "info"
//! slice_ms = 10
//! on_guest_stop = "stop"
//! power_off_when_all_stopped = true
//!
//! [[guest]]
//! name = "linux"
//! kernel = "linux/bzImage"
//! initrd = "linux/initramfs.cpio"
//! cmdline = "console=ttyS0,115200 nolapic"
//! memory = "128M"
//! vcpus = 1
//! cpus = [0, 1]
//! format = "linux"
//!
//! [[guest]]
//! name = "hello"
//! kernel = "hello.bin"
//! memory = "1M"
//! format = "flat"
//! load_address = 0x7c00
//! entry = 0x7c00
//! mode = "real"
//! ```
//!
//! # `[hypervisor]` (optional; every key optional)
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `log_level` | `"error"`, `"warn"`, `"info"`, `"debug"` or `"trace"` | `"info"` |
//! | `slice_ms` | scheduler time slice in milliseconds, integer 1 to 1000 | `10` |
//! | `console_hotkey` | `"ctrl-<letter>"` (either case), the key that, pressed three times, moves the serial console's input focus (monitor, then each guest in turn); `h`, `i`, `j`, `m` (Backspace, Tab, Enter) and `q`, `s` (XON/XOFF) could never be one | `"ctrl-a"` |
//! | `on_guest_stop` | `"stop"` (leave it stopped) or `"restart"` (boot it again) | `"stop"` |
//! | `power_off_when_all_stopped` | boolean: power the machine off once every guest has stopped | `true` |
//!
//! # `[[guest]]` (one table per guest, in boot order)
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `name` | required; 1 to 32 characters of `A-Z a-z 0-9 _ -`; unique in the file | — |
//! | `kernel` | required; path of the image in the config partition | — |
//! | `initrd` | path of an initial ramdisk in the partition | none |
//! | `cmdline` | kernel command line, at most 2048 bytes, no NUL | `""` |
//! | `memory` | required; guest RAM: a size string or an integer number of bytes; a multiple of 4K, at least 1M and at most 15G (RAM past 3G lies from 4G up, above the 32-bit device window) | — |
//! | `vcpus` | number of virtual CPUs, 1 to 64: the first starts at the image's entry, the others wait for INIT and start-up IPIs from it, as on hardware | `1` |
//! | `cpus` | affinity: array of physical CPU indices (as numbered at boot) the vCPUs may run on, no repeats | any CPU |
//! | `format` | `"linux"` (x86 boot protocol), `"multiboot"` (v1) or `"flat"` (raw image) | detected from the image |
//! | `load_address` | flat images only: guest-physical address the image is copied to | — |
//! | `entry` | flat images only: guest-physical address execution starts at | — |
//! | `mode` | flat images only: CPU mode at entry, `"real"`, `"protected"` or `"long"` | — |
//!
//! `load_address`, `entry` and `mode` are all required with
//! `format = "flat"` and are errors with any other format, or none (a flat
//! image has no header to detect). Both addresses must lie inside the
//! guest's memory, below 1M in real mode and below 4G in protected mode.
//!
//! Paths are relative to the partition's root, with `/` between folders; a
//! leading `/` means the same. `.`, `..`, empty folder names and `\` are
//! refused. Whether the file exists is checked by [`check_images`].
//!
//! Sizes are decimal digits followed by a binary unit: `K` (KiB), `M`
//! (MiB) or `G` (GiB), either case, optionally followed by `B` or `iB`:
//! `"512K"`, `"128M"`, `"128MiB"`, `"1GB"` (all binary: `1GB` is 2^30
//! bytes). A plain integer (`memory = 134217728`, TOML underscores and hex
//! allowed) is a number of bytes; a number in a string without a unit
//! (`"512"`) is refused as ambiguous.
//!
//! # TOML
//!
//! The file is TOML 1.0 (UTF-8, a leading byte-order mark allowed, LF or
//! CRLF line ends), parsed by the `toml` crate. Valid TOML that the schema
//! does not use is refused by key, not ignored: an unknown key or table
//! anywhere, a value of the wrong type (a float, a date, an inline table
//! where a string is expected), dotted keys or sub-tables inside a guest.
//! `[[guest]]` must be an array of tables (`[guest]` is an error); the
//! array form `guest = [{ name = "a", ... }]` is TOML's other spelling of
//! the same and is accepted.
//!
//! # Errors
//!
//! Every error is a [`ConfigError`], printed as
//! `config: error: <file>:<line>:<column>: <message>`, pointing at the key
//! (or the array element) that is wrong; a missing key points at its
//! table's header. What happens next depends on where the error is:
//!
//! - A TOML syntax error (an unterminated string, a key defined twice, ...)
//!   is fatal: no guest is loaded and the settings are the defaults.
//! - An error in a guest skips that guest; every error of that guest is
//!   reported, and the other guests are kept. Guest names are unique
//!   across the whole file: a second guest with a name already used (even
//!   by a guest skipped for another error) is skipped, its error naming the
//!   line of the first's `name` key.
//! - An error in `[hypervisor]` or at the top level (an unknown table or
//!   key) is reported and otherwise ignored: a bad setting keeps its
//!   default.
//! - [`check_images`] and [`check_memory`] run later, with the partition
//!   and the memory map at hand; they skip guests the same way.
//!
//! A guest's messages start with `guest '<name>': `, or `guest #<n>: ` (its
//! 1-based place among the `[[guest]]` tables) when its name is missing or
//! invalid (except `duplicate guest name '<name>' ...`, which names it
//! already); a setting's start with `hypervisor: `.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod error;
pub mod files;
mod schema;
#[cfg(test)]
mod tests;
mod values;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub use error::{ConfigError, Position};
pub use values::{ConsoleHotkey, GIB, KIB, MAX_NAME_LEN, MIB};

use values::Size;

/// The most vCPUs one guest may have.
pub const MAX_VCPUS: u32 = 64;
/// The longest kernel command line, in bytes.
pub const MAX_CMDLINE_LEN: usize = 2048;
/// The least memory a guest may have.
pub const MIN_GUEST_MEMORY: u64 = MIB;
/// The most memory a guest may have (15G): RAM past 3G lies from 4G up,
/// above the 32-bit device window, and ends by 16G (see
/// [`addr::RamLayout`]).
pub const MAX_GUEST_MEMORY: u64 = addr::MAX_GUEST_RAM;
/// Guest memory is a whole number of these (4 KiB pages).
pub const GUEST_MEMORY_GRANULE: u64 = 4 * KIB;
/// The shortest and longest scheduler slice, in milliseconds.
pub const SLICE_MS_RANGE: core::ops::RangeInclusive<u32> = 1..=1000;

/// The whole configuration: settings and the guests that passed validation,
/// in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The `[hypervisor]` table, defaults filled in.
    pub hypervisor: HypervisorSettings,
    /// The valid `[[guest]]` tables, in the order they appear in the file.
    pub guests: Vec<GuestConfig>,
}

/// The `[hypervisor]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypervisorSettings {
    /// The most detailed log level printed (`log_level`).
    pub log_level: LogLevel,
    /// The scheduler's time slice in milliseconds (`slice_ms`), within
    /// [`SLICE_MS_RANGE`].
    pub slice_ms: u32,
    /// The key that switches the console (`console_hotkey`).
    pub console_hotkey: ConsoleHotkey,
    /// What happens to a guest that stops (`on_guest_stop`).
    pub on_guest_stop: GuestStopAction,
    /// Power off once every guest has stopped
    /// (`power_off_when_all_stopped`).
    pub power_off_when_all_stopped: bool,
}

impl Default for HypervisorSettings {
    fn default() -> Self {
        Self {
            log_level: LogLevel::Info,
            slice_ms: 10,
            console_hotkey: ConsoleHotkey::CTRL_A,
            on_guest_stop: GuestStopAction::Stop,
            power_off_when_all_stopped: true,
        }
    }
}

/// `log_level`: the most detailed level printed, from least to most
/// detailed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `"error"`
    Error,
    /// `"warn"`
    Warn,
    /// `"info"`
    Info,
    /// `"debug"`
    Debug,
    /// `"trace"`
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `on_guest_stop`: what happens when a guest stops (powers off, halts for
/// good, or is stopped for a fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStopAction {
    /// `"stop"`: it stays stopped.
    Stop,
    /// `"restart"`: it is loaded and started again.
    Restart,
}

/// One `[[guest]]` table that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// Unique name (`name`).
    pub name: String,
    /// Path of the kernel image in the partition, without a leading `/`
    /// (`kernel`).
    pub kernel: String,
    /// Path of the initial ramdisk in the partition, if any (`initrd`).
    pub initrd: Option<String>,
    /// Kernel command line; empty when absent (`cmdline`).
    pub cmdline: String,
    /// Guest RAM in bytes: a multiple of [`GUEST_MEMORY_GRANULE`], at least
    /// [`MIN_GUEST_MEMORY`] (`memory`).
    pub memory: u64,
    /// Number of virtual CPUs, 1 to [`MAX_VCPUS`] (`vcpus`).
    pub vcpus: u32,
    /// Physical CPUs the vCPUs may run on; `None` for any (`cpus`). Not
    /// yet checked against the CPUs present: that needs the MADT.
    pub cpus: Option<Vec<u32>>,
    /// Image format; `None` to detect it from the image (`format`).
    pub format: Option<ImageFormat>,
    /// Where the guest's keys are in the file, for later errors.
    pub source: GuestSource,
}

/// `format`, with the parameters a flat image needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// `"linux"`: the Linux x86 boot protocol (bzImage).
    Linux,
    /// `"multiboot"`: Multiboot version 1.
    Multiboot,
    /// `"flat"`: a raw image copied to a fixed address.
    Flat(FlatImage),
}

/// Where and how a flat image runs (`load_address`, `entry`, `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatImage {
    /// Guest-physical address the image is copied to.
    pub load_address: u64,
    /// Guest-physical address execution starts at.
    pub entry: u64,
    /// CPU mode at entry.
    pub mode: CpuMode,
}

/// `mode`: the CPU mode a flat image starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// `"real"`: 16-bit real mode.
    Real,
    /// `"protected"`: 32-bit protected mode, paging off.
    Protected,
    /// `"long"`: 64-bit long mode.
    Long,
}

/// Positions of a guest's keys, kept so that checks run after parsing can
/// point at the right line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSource {
    /// The `[[guest]]` header (or the inline table).
    pub table: Position,
    /// The `name` key.
    pub name: Position,
    /// The `kernel` key.
    pub kernel: Position,
    /// The `initrd` key, if present.
    pub initrd: Option<Position>,
    /// The `memory` key.
    pub memory: Position,
}

/// What [`parse`] found: the usable configuration and every error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOutcome {
    /// The file name given to [`parse`], used in later errors.
    pub file: String,
    /// The settings and the guests that passed validation.
    pub config: Config,
    /// Every error, in file order for those found by [`parse`], followed by
    /// those of later checks.
    pub errors: Vec<ConfigError>,
}

/// Parses and validates `text`, the contents of the file called `file`
/// (the name only appears in errors).
///
/// Never fails as a whole: a syntax error gives the default settings, no
/// guests and that one error; other errors skip what they are about (see
/// the module documentation).
pub fn parse(file: &str, text: &str) -> ParseOutcome {
    schema::parse(file, text)
}

/// [`parse`] for the file's raw bytes, which must be UTF-8; anything else is
/// a fatal error at the first bad byte.
pub fn parse_bytes(file: &str, bytes: &[u8]) -> ParseOutcome {
    match core::str::from_utf8(bytes) {
        Ok(text) => parse(file, text),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            // The prefix up to `valid_up_to` is UTF-8 by definition.
            let prefix = core::str::from_utf8(valid).unwrap_or_default();
            let at = error::LineIndex::new(prefix).position(prefix.len());
            let bad = bytes[e.valid_up_to()];
            ParseOutcome {
                file: String::from(file),
                config: Config::default(),
                errors: alloc::vec![ConfigError::new(
                    file,
                    at,
                    format!("the file is not UTF-8 (byte {bad:#04x}); save it as UTF-8"),
                )],
            }
        }
    }
}

/// Skips every guest whose `kernel` or `initrd` is not a file in the config
/// partition, with an error at that key: `guest 'a': kernel "bzImage" is
/// not in the config partition`.
///
/// `exists` is asked about each path as stored in [`GuestConfig`] (relative
/// to the partition's root, `/` between folders); whether names compare
/// without regard to case, as FAT does, is up to it.
pub fn check_images(outcome: &mut ParseOutcome, mut exists: impl FnMut(&str) -> bool) {
    let file = outcome.file.as_str();
    let errors = &mut outcome.errors;
    outcome.config.guests.retain(|guest| {
        let mut ok = true;
        let mut check = |key: &str, path: &str, at: Position| {
            if !exists(path) {
                errors.push(ConfigError::new(
                    file,
                    at,
                    format!(
                        "guest '{}': {key} \"{path}\" is not in the config partition",
                        guest.name
                    ),
                ));
                ok = false;
            }
        };
        check("kernel", &guest.kernel, guest.source.kernel);
        if let (Some(initrd), Some(at)) = (&guest.initrd, guest.source.initrd) {
            check("initrd", initrd, at);
        }
        ok
    });
}

/// Skips the guests whose memory no longer fits in `available_bytes`, taking
/// the guests in file order: each guest that fits takes its memory and its
/// `overhead` (what running it costs the host besides its RAM: page
/// tables, control structures) from what is left, and one that does not is
/// skipped with an error at its `memory` key while the guests after it may
/// still fit. `overhead` is asked once per guest.
pub fn check_memory(
    outcome: &mut ParseOutcome,
    available_bytes: u64,
    mut overhead: impl FnMut(&GuestConfig) -> u64,
) {
    let file = outcome.file.as_str();
    let errors = &mut outcome.errors;
    let mut left = available_bytes;
    outcome.config.guests.retain(|guest| {
        let extra = overhead(guest);
        let needed = guest.memory.saturating_add(extra);
        if let Some(rest) = left.checked_sub(needed) {
            left = rest;
            return true;
        }
        let what = if extra == 0 {
            format!("memory {} does not fit", Size(guest.memory))
        } else {
            format!(
                "memory {} and its {} of overhead (page tables, control structures) do not fit",
                Size(guest.memory),
                Size(extra)
            )
        };
        errors.push(ConfigError::new(
            file,
            guest.source.memory,
            format!(
                "guest '{}': {what} in the {} left of {} free \
                 (the guests before it take the rest); lower memory or remove a guest",
                guest.name,
                Size(left),
                Size(available_bytes),
            ),
        ));
        false
    });
}
