//! Where the loaders read images from: [`ImageSource`], a file-like source
//! read at offsets, so that an image larger than the kernel heap streams
//! from its file straight into guest RAM. The loaders read the headers they
//! parse into small fixed buffers and copy payloads through one reusable
//! [`CHUNK_LEN`] buffer ([`Chunks`]); no image is ever whole on the heap.

use alloc::vec::Vec;

use addr::GuestPhysAddr;

use super::error::{Item, LoadError, ReadError};
use super::GuestMemory;

/// The most bytes one payload copy moves: the size of the loaders' copy
/// buffer, and so the most heap a load uses for image bytes.
pub const CHUNK_LEN: usize = 64 << 10;

/// An image the loaders read piece by piece, like a file read with
/// `pread` (`std::os::unix::fs::FileExt::read_at` takes `&self` too):
/// sources that keep a cursor or a cache hold it behind a `RefCell`.
///
/// Its length is fixed when the load starts; a source whose file turns
/// out shorter answers [`ReadError::Ended`], and the load fails naming the
/// item, never loading a half-filled image.
pub trait ImageSource {
    /// The image's length in bytes.
    fn len(&self) -> u64;

    /// Whether the image has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `buf` with the image's bytes from `offset`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Ended`] where the image ends before `offset +
    /// buf.len()`; [`ReadError::Failed`] where the source could not be
    /// read (it keeps the cause for its owner to report).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

impl ImageSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let ended = ReadError::Ended {
            len: <[u8]>::len(self) as u64,
        };
        let start = usize::try_from(offset).map_err(|_| ended)?;
        let end = start.checked_add(buf.len()).ok_or(ended)?;
        buf.copy_from_slice(self.get(start..end).ok_or(ended)?);
        Ok(())
    }
}

impl ImageSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.as_slice().read_at(offset, buf)
    }
}

/// Reads `buf.len()` bytes of `item` from `src` at `offset`, as a
/// [`LoadError`] naming the item on failure.
pub(crate) fn read<S: ImageSource + ?Sized>(
    src: &S,
    item: Item,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), LoadError> {
    src.read_at(offset, buf).map_err(|error| LoadError::Read {
        item,
        offset,
        len: buf.len() as u64,
        error,
    })
}

/// The copy buffer of one load: [`CHUNK_LEN`] bytes, allocated once and
/// reused for every payload (and by the Multiboot loader for its header
/// search window).
pub(crate) struct Chunks {
    buf: Vec<u8>,
}

impl Chunks {
    /// Allocates the buffer; fallibly, so an exhausted heap fails the load
    /// instead of the hypervisor.
    pub(crate) fn new() -> Result<Self, LoadError> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(CHUNK_LEN)
            .map_err(|_| LoadError::NoMemory {
                bytes: CHUNK_LEN as u64,
            })?;
        buf.resize(CHUNK_LEN, 0);
        Ok(Self { buf })
    }

    /// The first `len` bytes of the buffer (at most [`CHUNK_LEN`]), filled
    /// from `src` at offset 0: a header window.
    pub(crate) fn head<S: ImageSource + ?Sized>(
        &mut self,
        src: &S,
        item: Item,
        len: usize,
    ) -> Result<&[u8], LoadError> {
        let window = self.buf.get_mut(..len.min(CHUNK_LEN)).unwrap_or_default();
        read(src, item, 0, window)?;
        Ok(window)
    }

    /// Copies `len` bytes of `src` from `offset` to guest-physical `to`, a
    /// chunk at a time.
    pub(crate) fn copy<S: ImageSource + ?Sized, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        src: &S,
        item: Item,
        offset: u64,
        len: u64,
        to: GuestPhysAddr,
    ) -> Result<(), LoadError> {
        let mut done = 0;
        while done < len {
            let n = len.saturating_sub(done).min(self.buf.len() as u64);
            let chunk = self.buf.get_mut(..n as usize).unwrap_or_default();
            if chunk.is_empty() {
                // Only a zero-length buffer gets here; nothing would move.
                return Err(LoadError::NoMemory {
                    bytes: CHUNK_LEN as u64,
                });
            }
            let at = offset.checked_add(done).ok_or(LoadError::Read {
                item,
                offset,
                len,
                error: ReadError::Ended { len: src.len() },
            })?;
            read(src, item, at, chunk)?;
            let dest = to.checked_add(done).ok_or(LoadError::OutsideRam {
                at: to,
                len,
                ram: mem.size(),
            })?;
            mem.write(dest, chunk)?;
            done = done.saturating_add(n);
        }
        Ok(())
    }
}
