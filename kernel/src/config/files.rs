//! Where `hypervisor.toml` and the guest images come from, as the boot path
//! sees it: the config partition on a disk, or the boot ramdisk. The boot
//! path reads through [`ConfigFiles`] only, so the source can change without
//! touching guest start-up.

use alloc::borrow::Cow;
use alloc::string::String;

/// The name of the configuration file at the root of the source.
pub const CONFIG_FILE: &str = "hypervisor.toml";

/// A read-only tree of files addressed by `/`-separated paths relative to
/// its root (the form `hypervisor.toml` uses). `'a` is how long what
/// [`ConfigFiles::read`] returns may live: sources already in memory lend
/// their bytes for that long, others return owned copies.
pub trait ConfigFiles<'a> {
    /// Where the files are, for the log (`the boot ramdisk`, `disk
    /// ata0-master partition FERROCFG`).
    fn source(&self) -> &str;

    /// The whole file at `path`; `Ok(None)` when there is none.
    ///
    /// # Errors
    ///
    /// A message naming the file and what went wrong reading it (a device
    /// error, a damaged file system, a file over `limit` bytes).
    fn read(&mut self, path: &str, limit: u64) -> Result<Option<Cow<'a, [u8]>>, String>;

    /// Whether `path` names a file.
    fn exists(&mut self, path: &str) -> bool;
}
