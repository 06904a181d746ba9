//! A guest's images, from the config source into its RAM: the kernel and
//! initrd named in its `[[guest]]` table are sized, the format is detected
//! from the kernel's first bytes, and the loaders read both through
//! [`ImageSource`] in pieces ([`ConfigFiles::read_at`]), so they stream
//! into guest RAM a [`CHUNK_LEN`](loader::CHUNK_LEN) chunk at a
//! time and never pass whole through the kernel heap.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use core::cell::RefCell;

use addr::GuestPhysAddr;

use config::files::ConfigFiles;
use config::{CpuMode, GuestConfig, ImageFormat};
use loader::{
    self, FlatImage, FlatMode, Format, GuestMemory, ImageSource, LinuxImage, LoadError,
    LoadedImage, Module, MultibootImage, PcPlatform, ReadError,
};

/// A guest's kernel and initrd, sized and their format known, ready to be
/// loaded (again, on a restart) by [`GuestImages::load`].
pub struct GuestImages<'c, 'f, 'a> {
    files: SharedFiles<'f, 'a>,
    config: &'c GuestConfig,
    kernel_len: u64,
    initrd_len: Option<u64>,
    format: ImageFormat,
}

/// The config source, shared by the kernel's and the initrd's
/// [`FileImage`]s, with the cause of the last failed read.
struct SharedFiles<'f, 'a> {
    files: RefCell<&'f mut dyn ConfigFiles<'a>>,
    failure: RefCell<Option<String>>,
}

/// One file of the config source as an [`ImageSource`] of the length it
/// had when it was sized.
struct FileImage<'s, 'f, 'a> {
    files: &'s SharedFiles<'f, 'a>,
    path: &'s str,
    len: u64,
}

impl ImageSource for FileImage<'_, '_, '_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut files = self
            .files
            .files
            .try_borrow_mut()
            .map_err(|_| ReadError::Failed)?;
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let at = offset.saturating_add(done as u64);
            match files.read_at(self.path, at, rest) {
                Ok(0) => return Err(ReadError::Ended { len: at }),
                Ok(n) => done += n,
                Err(e) => {
                    *self.files.failure.borrow_mut() = Some(e);
                    return Err(ReadError::Failed);
                }
            }
        }
        Ok(())
    }
}

impl<'c, 'f, 'a> GuestImages<'c, 'f, 'a> {
    /// Sizes `config`'s kernel and initrd in `files` and picks the format:
    /// the configured one, else the one the kernel's first bytes announce.
    ///
    /// # Errors
    ///
    /// A message for the log, after `guest <name>: not started: `: a file
    /// is missing, larger than the guest's RAM or unreadable, or the kernel
    /// has no format mark and none is configured.
    pub fn open(
        files: &'f mut dyn ConfigFiles<'a>,
        config: &'c GuestConfig,
    ) -> Result<Self, String> {
        let source = String::from(files.source());
        // Neither file can be larger than the guest's RAM.
        let mut size = |what: &str, path: &str| match files.size(path)? {
            Some(len) if len > config.memory => Err(format!(
                "{source}: {what} \"{path}\" is {len} bytes, more than the guest's {} bytes of RAM",
                config.memory
            )),
            Some(len) => Ok(len),
            None => Err(format!("{what} \"{path}\" is not in {source}")),
        };
        let kernel_len = size("kernel", &config.kernel)?;
        let initrd_len = match &config.initrd {
            Some(path) => Some(size("initrd", path)?),
            None => None,
        };
        let mut images = Self {
            files: SharedFiles {
                files: RefCell::new(files),
                failure: RefCell::new(None),
            },
            config,
            kernel_len,
            initrd_len,
            format: ImageFormat::Linux,
        };
        images.format = match config.format {
            Some(f) => f,
            None => {
                let kernel = images.kernel();
                match loader::detect_source_format(&kernel) {
                    Ok(Some(Format::Linux)) => ImageFormat::Linux,
                    Ok(Some(Format::Multiboot)) => ImageFormat::Multiboot,
                    Ok(_) => {
                        return Err(format!(
                            "kernel \"{}\" is neither a Linux bzImage nor a Multiboot image; \
                             for a raw image set format = \"flat\" with load_address, entry and mode",
                            config.kernel
                        ))
                    }
                    Err(e) => return Err(images.failure().unwrap_or_else(|| e.to_string())),
                }
            }
        };
        Ok(images)
    }

    /// The format the images load as.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// Why the last read failed, when a load failed with
    /// [`ReadError::Failed`]: the source's message.
    pub fn failure(&self) -> Option<String> {
        self.files.failure.borrow_mut().take()
    }

    /// Loads the images into `mem` with the guest's command line: the
    /// `load` step of the kernel's `Guest::create`, run again on each
    /// restart. A Linux kernel also gets ACPI tables describing `platform`
    /// (other formats start without firmware tables).
    ///
    /// # Errors
    ///
    /// As the loaders, and [`LoadError::Read`] where a file shrank or its
    /// source failed while loading ([`failure`](Self::failure) says why).
    pub fn load(
        &self,
        mem: &mut dyn GuestMemory,
        platform: &PcPlatform,
    ) -> Result<LoadedImage, LoadError> {
        let kernel = self.kernel();
        let initrd = self.initrd();
        let cmdline = self.config.cmdline.as_str();
        match self.format {
            ImageFormat::Flat(flat) => loader::load_flat(
                mem,
                &FlatImage {
                    data: &kernel,
                    load_address: GuestPhysAddr::new(flat.load_address),
                    entry: GuestPhysAddr::new(flat.entry),
                    mode: match flat.mode {
                        CpuMode::Real => FlatMode::Real,
                        CpuMode::Protected => FlatMode::Protected,
                        // The identity map reaches RAM past 4 GiB too.
                        CpuMode::Long => {
                            mem.layout().map_or(FlatMode::LONG, FlatMode::long_covering)
                        }
                    },
                },
            ),
            ImageFormat::Linux => loader::load_linux(
                mem,
                &LinuxImage {
                    kernel: &kernel,
                    initrd: initrd.as_ref(),
                    cmdline,
                    platform: Some(platform),
                },
            ),
            ImageFormat::Multiboot => {
                let module = initrd.as_ref().map(|data| Module { data, cmdline: "" });
                loader::load_multiboot(
                    mem,
                    &MultibootImage {
                        kernel: &kernel,
                        cmdline,
                        modules: module.as_slice(),
                    },
                )
            }
        }
    }

    fn kernel(&self) -> FileImage<'_, 'f, 'a> {
        FileImage {
            files: &self.files,
            path: &self.config.kernel,
            len: self.kernel_len,
        }
    }

    fn initrd(&self) -> Option<FileImage<'_, 'f, 'a>> {
        Some(FileImage {
            files: &self.files,
            path: self.config.initrd.as_deref()?,
            len: self.initrd_len?,
        })
    }
}

#[cfg(test)]
mod tests;
