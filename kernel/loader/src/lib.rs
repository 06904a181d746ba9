//! Guest kernel image loaders: Linux bzImages (x86 boot protocol, 64-bit
//! entry, 32-bit entry for older or 32-bit kernels), Multiboot v1 images
//! (ELF or the a.out kludge) and flat binaries (real, protected or long
//! mode). Each places the image and what its boot protocol needs in a
//! guest's RAM and returns the vCPU state to start it in.
//!
//! Everything here is pure: guest RAM is reached only through
//! [`GuestMemory`], which the kernel implements over the guest's frames and
//! the tests over a byte vector, and images only through [`ImageSource`],
//! which the kernel implements over the config partition's files and the
//! tests over byte slices. Images stream: headers are read into small
//! fixed buffers and payloads copied through one [`CHUNK_LEN`] buffer, so
//! an image larger than the kernel heap loads. Images are untrusted input: every field
//! read from them is bounds checked and every sum overflow checked, and a
//! malformed image, or one that does not fit the guest, is a [`LoadError`]
//! whose message names what was wrong, never a panic.
//!
//! Where things go in guest memory is fixed and documented in [`layout`];
//! every load returns a [`LoadedImage`] with the entry state, the memory map
//! the guest was told about and the list of ranges the loader filled.
//!
//! Specifications: Linux `Documentation/arch/x86/boot.rst` (setup header,
//! 32- and 64-bit boot protocols) and `zero-page.rst` (`boot_params`); the
//! Multiboot Specification version 0.6.96; the System V ABI (ELF) for the
//! program headers.
#![cfg_attr(not(test), no_std)]
// Guests (and their images) are untrusted: nothing here may panic on what
// they control, so the panicking forms are refused outright.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

extern crate alloc;

pub mod acpi_tables;
mod bytes;
mod elf;
pub mod entry;
mod error;
pub mod flat;
pub mod layout;
pub mod linux;
pub mod multiboot;
mod source;

use core::fmt;

use addr::GuestPhysAddr;

pub use acpi_tables::{write_acpi_tables, PcPlatform};
pub use entry::{CpuMode, EntryState};
pub use error::{
    BzImageError, FlatError, Item, LoadError, MultibootError, ProtocolVersion, ReadError,
};
pub use flat::{load_flat, FlatImage, FlatMode};
pub use layout::{MemoryMap, MemoryRegion, Placement, Placements, RamLayout, RegionKind};
pub use linux::{load_linux, LinuxImage, SetupHeader};
pub use multiboot::{load_multiboot, Module, MultibootImage};
pub use source::{ImageSource, CHUNK_LEN};

/// A guest's RAM, as the loaders see it: [`size`](Self::size) bytes laid
/// out as [`RamLayout`] says (from 0, and past 3 GiB from 4 GiB up).
pub trait GuestMemory {
    /// The RAM size in bytes.
    fn size(&self) -> u64;

    /// Where the RAM lies; `None` for a size past
    /// [`MAX_GUEST_RAM`](layout::MAX_GUEST_RAM), which no loader accepts.
    fn layout(&self) -> Option<RamLayout> {
        RamLayout::new(self.size())
    }

    /// Copies `bytes` to guest-physical address `gpa`.
    ///
    /// # Errors
    ///
    /// [`LoadError::OutsideRam`] where any byte would fall outside RAM; the
    /// implementation then writes nothing.
    fn write(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), LoadError>;

    /// Sets `len` bytes at `gpa` to zero.
    ///
    /// The default writes a page of zeros at a time; implementations that
    /// can clear faster should override it.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    fn zero(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), LoadError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let outside = LoadError::OutsideRam {
            at: gpa,
            len,
            ram: self.size(),
        };
        if !self.layout().is_some_and(|ram| ram.contains(gpa, len)) {
            return Err(outside);
        }
        let mut done = 0;
        while done < len {
            let chunk = len.saturating_sub(done).min(ZEROS.len() as u64);
            let at = gpa.checked_add(done).ok_or(outside)?;
            self.write(at, ZEROS.get(..chunk as usize).unwrap_or_default())?;
            done = done.saturating_add(chunk);
        }
        Ok(())
    }
}

/// [`GuestMemory`] over a byte slice that stands for guest RAM, its bytes
/// in [`RamLayout`] order (the low range, then the range from 4 GiB): what
/// the host tests and tools load into.
#[derive(Debug)]
pub struct SliceMemory<'a> {
    ram: &'a mut [u8],
}

impl<'a> SliceMemory<'a> {
    /// Guest RAM backed by `ram`.
    pub fn new(ram: &'a mut [u8]) -> Self {
        Self { ram }
    }

    /// Where the `len` bytes at `gpa` are in the slice, if they all lie in
    /// RAM.
    fn offsets(&self, gpa: GuestPhysAddr, len: usize) -> Option<core::ops::Range<usize>> {
        let ram = self.layout()?;
        if !ram.contains(gpa, len as u64) {
            return None;
        }
        // An empty access at the end of a range has no byte to find.
        let start = match ram.offset_of(gpa) {
            Some(offset) => offset,
            None if len == 0 => return Some(0..0),
            None => return None,
        };
        let start = usize::try_from(start).ok()?;
        Some(start..start.checked_add(len)?)
    }

    /// The bytes at `gpa..gpa + len`, if they lie in RAM.
    pub fn read(&self, gpa: GuestPhysAddr, len: usize) -> Option<&[u8]> {
        let range = self.offsets(gpa, len)?;
        self.ram.get(range)
    }

    fn range(&mut self, gpa: GuestPhysAddr, len: usize) -> Result<&mut [u8], LoadError> {
        let size = self.size();
        let outside = LoadError::OutsideRam {
            at: gpa,
            len: len as u64,
            ram: size,
        };
        let range = self.offsets(gpa, len).ok_or(outside)?;
        self.ram.get_mut(range).ok_or(outside)
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn size(&self) -> u64 {
        self.ram.len() as u64
    }

    fn write(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), LoadError> {
        self.range(gpa, bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    fn zero(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), LoadError> {
        let size = self.size();
        let outside = LoadError::OutsideRam {
            at: gpa,
            len,
            ram: size,
        };
        let len = usize::try_from(len).map_err(|_| outside)?;
        self.range(gpa, len)?.fill(0);
        Ok(())
    }
}

/// Something the loader chose not to honour, for the log; the guest still
/// starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadWarning {
    /// A Multiboot header set flags bit 2 (video mode information). There is
    /// no display, so the request is ignored and the information structure
    /// carries no video fields.
    MultibootVideoIgnored,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MultibootVideoIgnored => f.write_str(
                "multiboot: the image asks for video mode information (flags bit 2); \
                 Ferrovisor has no display and ignores the request",
            ),
        }
    }
}

/// The warnings of one load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Warnings {
    video_ignored: bool,
}

impl Warnings {
    pub(crate) fn add(&mut self, warning: LoadWarning) {
        match warning {
            LoadWarning::MultibootVideoIgnored => self.video_ignored = true,
        }
    }

    /// The warnings, each once.
    pub fn iter(&self) -> impl Iterator<Item = LoadWarning> + '_ {
        self.video_ignored
            .then_some(LoadWarning::MultibootVideoIgnored)
            .into_iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// What a load produced: how to start the guest and what is where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The vCPU state at the first instruction (the boot CPU; others start
    /// through the guest's own INIT-SIPI).
    pub entry: EntryState,
    /// The memory map the guest was given (or, for flat images, would
    /// assume); EPT and device code must agree with it.
    pub memory_map: MemoryMap,
    /// Every range the loader filled, for the log and for checks.
    pub placements: Placements,
    /// Requests the loader ignored.
    pub warnings: Warnings,
}

/// An image format a loader handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A Linux bzImage ([`load_linux`]).
    Linux,
    /// A Multiboot v1 image ([`load_multiboot`]).
    Multiboot,
    /// Raw bytes loaded at a given address ([`load_flat`]).
    Flat,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linux => "linux",
            Self::Multiboot => "multiboot",
            Self::Flat => "flat",
        })
    }
}

/// The format an image announces: [`Format::Linux`] where the setup header
/// magic `HdrS` sits at 0x202, [`Format::Multiboot`] where a Multiboot header
/// with a valid checksum lies in the first 8192 bytes, else `None` (a flat
/// image has no marks; its configuration must say so and where it loads).
pub fn detect_format(image: &[u8]) -> Option<Format> {
    if linux::has_setup_magic(image) {
        Some(Format::Linux)
    } else if multiboot::Header::find(image).is_ok() {
        Some(Format::Multiboot)
    } else {
        None
    }
}

/// How many leading bytes [`detect_format`] looks at: the Multiboot
/// header search window, which also holds the bzImage setup header.
pub const DETECT_LEN: usize = multiboot::SEARCH_LEN;

/// [`detect_format`] for an image read through `src`: reads its first
/// [`DETECT_LEN`] bytes (fewer for a shorter image).
///
/// # Errors
///
/// [`LoadError::Read`] (as [`Item::Kernel`]) where the bytes cannot be
/// read, [`LoadError::NoMemory`] where the heap cannot lend
/// [`DETECT_LEN`] bytes.
pub fn detect_source_format<S: ImageSource + ?Sized>(src: &S) -> Result<Option<Format>, LoadError> {
    let len = src.len().min(DETECT_LEN as u64) as usize;
    let mut head = alloc::vec::Vec::new();
    head.try_reserve_exact(len)
        .map_err(|_| LoadError::NoMemory { bytes: len as u64 })?;
    head.resize(len, 0);
    source::read(src, Item::Kernel, 0, &mut head)?;
    Ok(detect_format(&head))
}

// Synthetic images and guest RAMs for tests, here and in the crates above
// (`image`), which enable the `fixtures` feature as a dev-dependency.
#[cfg(any(test, feature = "fixtures"))]
#[allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
pub mod fixtures;
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests;
