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

    /// The size of the file at `path` in bytes; `Ok(None)` when there is
    /// none. A source may open the file here for the
    /// [`read_at`](Self::read_at) calls that follow.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), for a file that cannot be opened.
    fn size(&mut self, path: &str) -> Result<Option<u64>, String>;

    /// Reads the bytes of the file at `path` from `offset` into `buf` and
    /// returns how many: `buf.len()`, or fewer where the file ends first
    /// (0 at or past its end). Reading a file front to back in pieces
    /// costs about what one whole read does: sources keep the files they
    /// opened (a FAT source keeps each chain's position) rather than
    /// finding the file and walking to `offset` on every call.
    ///
    /// # Errors
    ///
    /// A message naming the file and what went wrong: it is missing, or
    /// the device or file system failed.
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, String>;

    /// Whether `path` names a file.
    fn exists(&mut self, path: &str) -> bool;
}
