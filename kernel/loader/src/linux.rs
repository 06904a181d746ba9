//! The Linux x86 boot protocol for bzImages
//! (`Documentation/arch/x86/boot.rst`): setup-header checks, placement of
//! the protected-mode kernel, `boot_params` (the "zero page",
//! `zero-page.rst`) with the e820 map, the command line and the initrd, and
//! the 64-bit entry (32-bit entry for kernels without one).
//!
//! The real-mode setup code is never run: Ferrovisor starts the kernel
//! where a 32- or 64-bit boot loader would, with `boot_params` filled in.
//!
//! Placement:
//! - the protected-mode kernel goes to `pref_address` (aligned up to
//!   `kernel_alignment`) when the kernel is relocatable, else to 1 MiB, from
//!   where it moves itself to `pref_address`. Either way it uses
//!   `init_size` bytes from `pref_address` before it reads its memory map,
//!   and all of that must be RAM;
//! - `boot_params` at [`BOOT_INFO_ADDR`], the command line at
//!   [`LINUX_CMDLINE_ADDR`];
//! - the initrd as high as it may go: below `initrd_addr_max`, the end of
//!   RAM and 4 GiB, 4 KiB aligned, above the kernel;
//! - 64-bit entry: the GDT at [`GDT_ADDR`](super::layout::GDT_ADDR) with
//!   `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), and page tables that
//!   identity-map the first 4 GiB, which covers all guest RAM.

use addr::GuestPhysAddr;

use super::acpi_tables::{write_acpi_tables, PcPlatform};
use super::bytes::{put, put_u32, put_u64, put_u8, u16_at, u32_at, u64_at, u8_at};
use super::entry::{write_gdt, write_identity_map, EntryState};
use super::error::{BzImageError, Item, LoadError, ProtocolVersion};
use super::layout::{
    identity_map_gib_for, layout_of, MemoryMap, Placements, BOOT_INFO_ADDR, BOOT_INFO_END,
    HIGH_RAM_START, LINUX_CMDLINE_ADDR,
};
use super::source::{read, Chunks, ImageSource};
use super::{GuestMemory, LoadedImage, Warnings};

// Setup header fields: offsets into the image and into `boot_params`,
// which carries the header at the same offset (boot.rst, "The Real-Mode
// Kernel Header").
const SETUP_SECTS: usize = 0x1F1;
const HEADER_START: usize = 0x1F1;
const JUMP_TARGET: usize = 0x201;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21C;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22C;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const HARDWARE_SUBARCH: usize = 0x23C;
const HARDWARE_SUBARCH_DATA: usize = 0x240;
const SETUP_DATA: usize = 0x250;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;

// `boot_params` fields outside the setup header (zero-page.rst).
const BOOT_PARAMS_LEN: usize = 4096;
/// `acpi_rsdp_addr` (protocol 2.14): where the RSDP is, so the kernel
/// need not scan for it.
const ACPI_RSDP_ADDR: usize = 0x070;
const E820_ENTRIES: usize = 0x1E8;
const E820_TABLE: usize = 0x2D0;
const E820_MAX_ENTRIES: usize = 128;
/// Where `boot_params` stops having room for the setup header.
const HEADER_ROOM_END: usize = 0x290;

/// `"HdrS"`, little-endian.
const MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// loadflags bit 0: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
/// xloadflags bit 0: the kernel has the 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// `type_of_loader` for a boot loader with no assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
/// The offset of the 64-bit entry point in the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// The initrd's alignment.
const INITRD_ALIGN: u64 = 4096;
/// `initrd_addr_max` before protocol 2.03.
const OLD_INITRD_ADDR_MAX: u32 = 0x37FF_FFFF;
/// The least protocol accepted: 2.06 has `cmdline_size`.
const MIN_VERSION: u16 = 0x0206;
/// Protocol 2.10 adds `pref_address` and `init_size`.
const VERSION_2_10: u16 = 0x020A;
/// Protocol 2.12 adds `xloadflags`.
const VERSION_2_12: u16 = 0x020C;

/// What the loader reads from a bzImage's setup header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// The boot protocol version.
    pub version: ProtocolVersion,
    /// Where the header ends in the image: 0x202 plus the byte at 0x201.
    pub header_end: usize,
    /// The length of the real-mode setup code (boot sector included),
    /// where the protected-mode kernel starts in the file.
    pub setup_len: usize,
    /// `loadflags`.
    pub loadflags: u8,
    /// `xloadflags` (0 before 2.12).
    pub xloadflags: u16,
    /// `relocatable_kernel`.
    pub relocatable: bool,
    /// `kernel_alignment`.
    pub kernel_alignment: u32,
    /// `pref_address` (0 before 2.10).
    pub pref_address: u64,
    /// `init_size` (0 before 2.10).
    pub init_size: u32,
    /// `cmdline_size`: the longest command line, without its NUL.
    pub cmdline_size: u32,
    /// `initrd_addr_max`: the highest address the initrd may occupy.
    pub initrd_addr_max: u32,
}

/// Whether the image has the setup header magic at 0x202.
pub(crate) fn has_setup_magic(image: &[u8]) -> bool {
    u32_at(image, HEADER_MAGIC) == Some(MAGIC)
}

impl SetupHeader {
    /// Reads and checks the setup header of a bzImage.
    ///
    /// # Errors
    ///
    /// [`LoadError::BzImage`] where the file is no bzImage, its protocol is
    /// older than 2.06, the header is cut short, or no protected-mode
    /// kernel follows the setup code.
    pub fn parse(image: &[u8]) -> Result<Self, LoadError> {
        Self::parse_head(image, image.len() as u64)
    }

    /// As [`parse`](Self::parse), from the image's first bytes (`head`,
    /// at least `min(len, 0x290)` of them: the whole setup header) and its
    /// length `len`.
    fn parse_head(head: &[u8], len: u64) -> Result<Self, LoadError> {
        let image = head.get(..HEADER_ROOM_END).unwrap_or(head);
        let file_len = usize::try_from(len).unwrap_or(usize::MAX);
        let short = BzImageError::TooShort { len: file_len };
        let jump = u8_at(image, JUMP_TARGET).ok_or(short)?;
        if u32_at(image, HEADER_MAGIC).ok_or(short)? != MAGIC {
            return Err(BzImageError::MagicMissing.into());
        }
        let raw_version = u16_at(image, VERSION).ok_or(short)?;
        let version = ProtocolVersion(raw_version);
        if raw_version < MIN_VERSION {
            return Err(BzImageError::ProtocolTooOld { version }.into());
        }
        // The header must reach the last field the loader reads for its
        // version: cmdline_size (2.06) or init_size (2.10).
        let needed = if raw_version >= VERSION_2_10 {
            INIT_SIZE + 4
        } else {
            CMDLINE_SIZE + 4
        };
        let header_end = HEADER_MAGIC + usize::from(jump);
        let max = file_len.min(HEADER_ROOM_END);
        if header_end < needed || header_end > max {
            return Err(BzImageError::HeaderLength {
                end: header_end,
                needed,
                max,
                version,
            }
            .into());
        }
        // Every field read below lies before `needed <= header_end <=
        // image.len()`, so the reads cannot fail; `short` stays the answer
        // if one did.
        let setup_sects = match u8_at(image, SETUP_SECTS).ok_or(short)? {
            0 => 4,
            n => usize::from(n),
        };
        let setup_len = setup_sects.saturating_add(1).saturating_mul(512);
        let loadflags = u8_at(image, LOADFLAGS).ok_or(short)?;
        let new_fields = raw_version >= VERSION_2_10;
        let header = Self {
            version,
            header_end,
            setup_len,
            loadflags,
            xloadflags: if raw_version >= VERSION_2_12 {
                u16_at(image, XLOADFLAGS).ok_or(short)?
            } else {
                0
            },
            relocatable: u8_at(image, RELOCATABLE_KERNEL).ok_or(short)? != 0,
            kernel_alignment: u32_at(image, KERNEL_ALIGNMENT).ok_or(short)?,
            pref_address: if new_fields {
                u64_at(image, PREF_ADDRESS).ok_or(short)?
            } else {
                0
            },
            init_size: if new_fields {
                u32_at(image, INIT_SIZE).ok_or(short)?
            } else {
                0
            },
            cmdline_size: u32_at(image, CMDLINE_SIZE).ok_or(short)?,
            initrd_addr_max: match u32_at(image, INITRD_ADDR_MAX).ok_or(short)? {
                // Kernels before 2.03 left it zero; 2.06+ always set it,
                // but the documented default is the safe reading of a zero.
                0 => OLD_INITRD_ADDR_MAX,
                n => n,
            },
        };
        if loadflags & LOADED_HIGH == 0 {
            return Err(BzImageError::NotLoadedHigh.into());
        }
        let kernel_len = file_len.saturating_sub(setup_len);
        let needed = if header.has_64bit_entry() {
            const { ENTRY_64_OFFSET as usize + 1 }
        } else {
            1
        };
        if kernel_len < needed {
            return Err(BzImageError::NoKernel {
                setup_len,
                kernel_len,
                needed,
            }
            .into());
        }
        if header.relocatable && !header.kernel_alignment.is_power_of_two() {
            return Err(BzImageError::BadAlignment {
                kernel_alignment: header.kernel_alignment,
            }
            .into());
        }
        Ok(header)
    }

    /// Whether the kernel has the 64-bit entry point (protocol 2.12+ and
    /// `XLF_KERNEL_64`).
    pub fn has_64bit_entry(&self) -> bool {
        self.version.0 >= VERSION_2_12 && self.xloadflags & XLF_KERNEL_64 != 0
    }

    /// Where the protected-mode kernel is loaded, and where it runs (the
    /// start of the `init_size` bytes it needs).
    fn addresses(&self) -> Result<(u64, u64), LoadError> {
        let runtime = match self.pref_address {
            0 => HIGH_RAM_START,
            a if a < HIGH_RAM_START => {
                return Err(BzImageError::PrefAddressTooLow { pref_address: a }.into())
            }
            a => a,
        };
        if self.relocatable {
            // Checked to be a power of two in `parse`.
            let align = u64::from(self.kernel_alignment).max(1);
            let load = GuestPhysAddr::new(runtime)
                .align_up(align)
                .map_or(u64::MAX, GuestPhysAddr::as_u64);
            Ok((load, load))
        } else {
            Ok((HIGH_RAM_START, runtime))
        }
    }
}

/// A Linux kernel with its initrd and command line, read through `S`
/// (byte slices by default; the kernel's files stream).
#[derive(Debug)]
pub struct LinuxImage<'a, S: ImageSource + ?Sized = [u8]> {
    /// The bzImage file.
    pub kernel: &'a S,
    /// The initial ramdisk, if any.
    pub initrd: Option<&'a S>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The platform to describe in ACPI tables (at
    /// [`ACPI_TABLES_ADDR`](super::acpi_tables::ACPI_TABLES_ADDR), also
    /// handed over in `boot_params.acpi_rsdp_addr`); `None` writes none.
    pub platform: Option<&'a PcPlatform>,
}

impl<S: ImageSource + ?Sized> Clone for LinuxImage<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ImageSource + ?Sized> Copy for LinuxImage<'_, S> {}

/// Loads a bzImage into `mem`: the protected-mode kernel, the initrd,
/// the command line, `boot_params`, and for the 64-bit entry the GDT and
/// identity map. Returns the entry state: 64-bit mode at 0x200 past the
/// load address with RSI = `boot_params`, or for kernels without a 64-bit
/// entry 32-bit protected mode at the load address with ESI =
/// `boot_params`.
///
/// The header is read into a fixed buffer; the protected-mode kernel and
/// the initrd are copied in [`CHUNK_LEN`](super::CHUNK_LEN) pieces.
///
/// # Errors
///
/// A [`LoadError`] where the image is malformed, the command line is too
/// long, or the kernel, initrd or the loader's structures do not fit.
pub fn load_linux<M: GuestMemory + ?Sized, S: ImageSource + ?Sized>(
    mem: &mut M,
    image: &LinuxImage<'_, S>,
) -> Result<LoadedImage, LoadError> {
    let file_len = image.kernel.len();
    let mut head = [0u8; HEADER_ROOM_END];
    let head = head
        .get_mut(..file_len.min(HEADER_ROOM_END as u64) as usize)
        .unwrap_or_default();
    read(image.kernel, Item::Kernel, 0, head)?;
    let head: &[u8] = head;
    let header = SetupHeader::parse_head(head, file_len)?;
    let ram = mem.size();
    let memory_map = MemoryMap::for_ram(ram)?;
    let layout = layout_of(ram)?;
    let mut placements = Placements::new(layout);
    // `parse_head` checked a kernel follows the setup code.
    let kernel_offset = header.setup_len as u64;
    let kernel_len = file_len.saturating_sub(kernel_offset);

    // The kernel first, so that a guest too small says so.
    let (load, runtime) = header.addresses()?;
    let load_end = load.checked_add(kernel_len);
    let runtime_end = runtime.checked_add(u64::from(header.init_size).max(kernel_len));
    let kernel_start = load.min(runtime);
    let kernel_end = match (load_end, runtime_end) {
        (Some(a), Some(b)) => a.max(b),
        _ => u64::MAX,
    };
    placements.claim(
        Item::Kernel,
        kernel_start,
        kernel_end.saturating_sub(kernel_start),
    )?;

    let cmdline = image.cmdline.as_bytes();
    let area = const { BOOT_INFO_END.as_u64() - LINUX_CMDLINE_ADDR.as_u64() - 1 };
    let max = u64::from(header.cmdline_size).min(area);
    if cmdline.len() as u64 > max {
        return Err(LoadError::CommandLineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.contains(&0) {
        return Err(LoadError::NulInCommandLine { item: Item::Kernel });
    }
    placements.claim(
        Item::CommandLine,
        LINUX_CMDLINE_ADDR.as_u64(),
        (cmdline.len() as u64).saturating_add(1),
    )?;
    placements.claim(
        Item::BootParams,
        BOOT_INFO_ADDR.as_u64(),
        BOOT_PARAMS_LEN as u64,
    )?;

    let initrd = match image.initrd {
        Some(data) if !data.is_empty() => {
            let len = data.len();
            let at = place_initrd(&header, len, layout.low_len(), kernel_end)?;
            placements.claim(Item::Initrd, at, len)?;
            Some((at, data))
        }
        _ => None,
    };

    let mut chunks = Chunks::new()?;
    chunks.copy(
        mem,
        image.kernel,
        Item::Kernel,
        kernel_offset,
        kernel_len,
        GuestPhysAddr::new(load),
    )?;
    mem.write(LINUX_CMDLINE_ADDR, cmdline)?;
    mem.write(
        GuestPhysAddr::new(
            LINUX_CMDLINE_ADDR
                .as_u64()
                .saturating_add(cmdline.len() as u64),
        ),
        &[0],
    )?;
    if let Some((at, data)) = initrd {
        chunks.copy(
            mem,
            data,
            Item::Initrd,
            0,
            data.len(),
            GuestPhysAddr::new(at),
        )?;
    }

    let mut params = [0u8; BOOT_PARAMS_LEN];
    build_boot_params(
        &mut params,
        head,
        &header,
        load,
        initrd.map(|(at, data)| (at, data.len())),
        &memory_map,
    );
    if let Some(platform) = image.platform {
        let rsdp = write_acpi_tables(mem, platform)?;
        put_u64(&mut params, ACPI_RSDP_ADDR, rsdp.as_u64());
    }
    mem.write(BOOT_INFO_ADDR, &params)?;

    let mut entry = if header.has_64bit_entry() {
        write_identity_map(mem, &mut placements, identity_map_gib_for(layout))?;
        EntryState::long64(load.saturating_add(ENTRY_64_OFFSET))
    } else {
        // A 32-bit entry needs a 32-bit address; RAM ends below 3 GiB.
        EntryState::protected32(u32::try_from(load).unwrap_or(u32::MAX))
    };
    entry.regs.rsi = BOOT_INFO_ADDR.as_u64();
    write_gdt(mem, &mut placements, &entry)?;

    Ok(LoadedImage {
        entry,
        memory_map,
        placements,
        warnings: Warnings::default(),
    })
}

/// The initrd's address: as high as `initrd_addr_max`, the end of the low
/// RAM range (`low_ram`, below the device window) and 4 GiB allow, 4 KiB
/// aligned, and above `kernel_end`.
fn place_initrd(
    header: &SetupHeader,
    len: u64,
    low_ram: u64,
    kernel_end: u64,
) -> Result<u64, LoadError> {
    let limit = (u64::from(header.initrd_addr_max) + 1)
        .min(low_ram)
        .min(1 << 32);
    limit
        .checked_sub(len)
        .map(|at| GuestPhysAddr::new(at).align_down(INITRD_ALIGN).as_u64())
        .filter(|&at| at >= kernel_end)
        .ok_or(
            BzImageError::InitrdDoesNotFit {
                len,
                kernel_end,
                limit,
                initrd_addr_max: header.initrd_addr_max,
            }
            .into(),
        )
}

/// Fills `boot_params`: the setup header copied from the image's first
/// bytes `head` (0x1F1..0x202 + the byte at 0x201, per boot.rst), then
/// what the loader must write, then the e820 map. Everything else stays
/// zero, as the protocol asks.
fn build_boot_params(
    params: &mut [u8; BOOT_PARAMS_LEN],
    head: &[u8],
    header: &SetupHeader,
    load: u64,
    initrd: Option<(u64, u64)>,
    memory_map: &MemoryMap,
) {
    put(
        params,
        HEADER_START,
        head.get(HEADER_START..header.header_end)
            .unwrap_or_default(),
    );
    put_u8(params, TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
    // The protected-mode entry of the 32-bit protocol; informational for
    // the 64-bit one. RAM, and so `load`, ends below 3 GiB.
    put_u32(params, CODE32_START, u32::try_from(load).unwrap_or(0));
    let (ramdisk_image, ramdisk_size) = initrd.unwrap_or((0, 0));
    put_u32(
        params,
        RAMDISK_IMAGE,
        u32::try_from(ramdisk_image).unwrap_or(0),
    );
    put_u32(
        params,
        RAMDISK_SIZE,
        u32::try_from(ramdisk_size).unwrap_or(0),
    );
    put_u32(params, CMD_LINE_PTR, LINUX_CMDLINE_ADDR.as_u64() as u32);
    // A plain PC, and no setup_data list: the image's own values of these
    // loader-written fields are not trusted.
    put_u32(params, HARDWARE_SUBARCH, 0);
    put_u64(params, HARDWARE_SUBARCH_DATA, 0);
    put_u64(params, SETUP_DATA, 0);

    let regions = memory_map.regions();
    let count = regions.len().min(E820_MAX_ENTRIES);
    put_u8(params, E820_ENTRIES, count as u8);
    for (i, region) in regions.iter().take(count).enumerate() {
        put(
            params,
            E820_TABLE.saturating_add(i.saturating_mul(20)),
            &region.e820_entry(),
        );
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::super::fixtures::{BzImage, Ram};
    use super::super::layout::{GDT_ADDR, MAX_GUEST_RAM, PML4_ADDR};
    use super::super::{entry, CpuMode, RegionKind};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn load(
        ram: &mut Ram,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: &str,
    ) -> Result<LoadedImage, LoadError> {
        load_linux(
            &mut ram.memory(),
            &LinuxImage {
                kernel,
                initrd,
                cmdline,
                platform: None,
            },
        )
    }

    #[test]
    fn a_64bit_kernel_loads_at_pref_address_and_enters_at_0x200() {
        let bz = BzImage::default();
        let image = bz.build();
        let mut ram = Ram::new(64 * MIB);
        let loaded = load(&mut ram, &image, None, "console=ttyS0").unwrap();

        let payload = &image[bz.setup_len()..];
        assert_eq!(ram.bytes(bz.pref_address, payload.len()), payload);
        let e = loaded.entry;
        assert_eq!(e.mode, CpuMode::Long64);
        assert_eq!(e.rip, bz.pref_address + 0x200);
        assert_eq!(e.regs.rsi, BOOT_INFO_ADDR.as_u64());
        assert_eq!(
            (e.regs.rax, e.regs.rbx, e.regs.rdi, e.regs.rbp),
            (0, 0, 0, 0)
        );
        assert_eq!(e.rflags & (1 << 9), 0, "interrupts must be off");
        assert_eq!(e.segments.cs.selector, 0x10);
        assert!(e.segments.cs.access.long());
        for s in [e.segments.ds, e.segments.es, e.segments.ss] {
            assert_eq!((s.selector, s.base, s.limit), (0x18, 0, 0xFFFF_FFFF));
        }
        assert_eq!(e.control.cr3, PML4_ADDR.as_u64());
        assert_eq!(e.control.efer, entry::EFER_LME | entry::EFER_LMA);
        assert_eq!(e.gdtr.base, GDT_ADDR);

        // The GDT in memory holds what the descriptor caches hold.
        assert_eq!(
            ram.u64(GDT_ADDR.as_u64() + 0x10),
            e.segments.cs.descriptor()
        );
        assert_eq!(ram.u64(GDT_ADDR.as_u64() + 0x18), 0x00CF_9300_0000_FFFF);
        assert_eq!(ram.u64(GDT_ADDR.as_u64() + 0x10), 0x00AF_9B00_0000_FFFF);

        // The identity map covers the kernel, boot_params, the command
        // line and everything up to 4 GiB.
        for addr in [
            0,
            BOOT_INFO_ADDR.as_u64(),
            LINUX_CMDLINE_ADDR.as_u64(),
            e.rip,
            64 * MIB - 1,
            (4 << 30) - 1,
        ] {
            assert_eq!(ram.translate(e.control.cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(ram.translate(e.control.cr3, 4 << 30), None);

        let kernel = loaded.placements.find(Item::Kernel).unwrap();
        assert_eq!(kernel.start.as_u64(), bz.pref_address);
        assert_eq!(kernel.len, u64::from(bz.init_size));
    }

    #[test]
    fn boot_params_carry_the_header_loader_fields_and_e820() {
        let bz = BzImage::default();
        let mut image = bz.build();
        // A byte just past the header's end must not be copied.
        let end = 0x202 + usize::from(image[0x201]);
        image[end] = 0xEE;
        let mut ram = Ram::new(64 * MIB);
        load(&mut ram, &image, None, "console=ttyS0 quiet").unwrap();
        let bp = ram.bytes(BOOT_INFO_ADDR.as_u64(), 4096).to_vec();

        // Header copied, with the loader-written fields replaced.
        assert_eq!(&bp[0x1F1..0x210], &image[0x1F1..0x210]);
        assert_eq!(&bp[0x202..0x206], b"HdrS");
        assert_eq!(bp[TYPE_OF_LOADER], 0xFF);
        assert_eq!(bp[LOADFLAGS], image[LOADFLAGS]);
        assert_eq!(&bp[0x22C..0x240], &image[0x22C..0x240]);
        assert_eq!(&bp[0x248..0x250], &image[0x248..0x250]);
        assert_eq!(&bp[0x258..end], &image[0x258..end]);
        assert_eq!(bp[end], 0);
        assert_eq!(
            ram.u32(BOOT_INFO_ADDR.as_u64() + CODE32_START as u64),
            bz.pref_address as u32
        );
        assert_eq!(ram.u64(BOOT_INFO_ADDR.as_u64() + SETUP_DATA as u64), 0);
        // Nothing outside the header was filled but the e820 map.
        assert!(bp[..0x1E8].iter().all(|&b| b == 0));

        let ptr = ram.u32(BOOT_INFO_ADDR.as_u64() + CMD_LINE_PTR as u64);
        assert_eq!(u64::from(ptr), LINUX_CMDLINE_ADDR.as_u64());
        assert_eq!(ram.bytes(u64::from(ptr), 20), b"console=ttyS0 quiet\0");

        assert_eq!(bp[E820_ENTRIES], 3);
        let entry = |i: usize| {
            let at = BOOT_INFO_ADDR.as_u64() + (E820_TABLE + 20 * i) as u64;
            (ram.u64(at), ram.u64(at + 8), ram.u32(at + 16))
        };
        assert_eq!(entry(0), (0, 0xA_0000, 1));
        assert_eq!(entry(1), (0xA_0000, 0x6_0000, 2));
        assert_eq!(entry(2), (0x10_0000, 63 * MIB, 1));
        assert_eq!(
            ram.u64(BOOT_INFO_ADDR.as_u64() + (E820_TABLE + 60) as u64),
            0
        );
        assert_eq!(ram.u32(BOOT_INFO_ADDR.as_u64() + RAMDISK_IMAGE as u64), 0);
        assert_eq!(ram.u32(BOOT_INFO_ADDR.as_u64() + RAMDISK_SIZE as u64), 0);
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let bz = BzImage {
            setup_sects: 0,
            ..BzImage::default()
        };
        let image = bz.build();
        assert_eq!(bz.setup_len(), 5 * 512);
        assert_eq!(SetupHeader::parse(&image).unwrap().setup_len, 5 * 512);
        let mut ram = Ram::new(64 * MIB);
        load(&mut ram, &image, None, "").unwrap();
        assert_eq!(
            ram.bytes(bz.pref_address, 16),
            &image[5 * 512..5 * 512 + 16]
        );
    }

    #[test]
    fn the_initrd_goes_high_aligned_and_below_its_limits() {
        let bz = BzImage::default();
        let image = bz.build();
        let initrd: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();

        // Top of RAM.
        let mut ram = Ram::new(64 * MIB);
        let loaded = load(&mut ram, &image, Some(&initrd), "").unwrap();
        let at = ram.u32(BOOT_INFO_ADDR.as_u64() + RAMDISK_IMAGE as u64) as u64;
        assert_eq!(
            ram.u32(BOOT_INFO_ADDR.as_u64() + RAMDISK_SIZE as u64),
            10_000
        );
        assert_eq!(at, (64 * MIB - 10_000) & !0xFFF);
        assert_eq!(ram.bytes(at, initrd.len()), &initrd[..]);
        let placed = loaded.placements.find(Item::Initrd).unwrap();
        assert_eq!((placed.start.as_u64(), placed.len), (at, 10_000));

        // Below initrd_addr_max (the highest byte it may occupy).
        let low = BzImage {
            initrd_addr_max: 0x30F_FFFF,
            ..bz
        };
        let mut ram = Ram::new(64 * MIB);
        load(&mut ram, &low.build(), Some(&initrd), "").unwrap();
        let at = ram.u32(BOOT_INFO_ADDR.as_u64() + RAMDISK_IMAGE as u64) as u64;
        assert_eq!(at, (0x310_0000 - 10_000) & !0xFFF);
        assert!(at + 10_000 - 1 <= 0x30F_FFFF);
    }

    #[test]
    fn an_initrd_that_does_not_fit_above_the_kernel_is_refused() {
        let bz = BzImage::default();
        let kernel_end = bz.pref_address + u64::from(bz.init_size);
        // initrd_addr_max inside the kernel.
        let low = BzImage {
            initrd_addr_max: (kernel_end - 1) as u32,
            ..bz
        };
        let mut ram = Ram::new(64 * MIB);
        let e = load(&mut ram, &low.build(), Some(&[1; 100]), "").unwrap_err();
        assert!(
            matches!(e, LoadError::BzImage(BzImageError::InitrdDoesNotFit { .. })),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("bzImage: initrd of 0x64 bytes does not fit"),
            "{e}"
        );

        // Too large for the RAM left.
        let big = vec![0; (64 * MIB - kernel_end + 1) as usize];
        let e = load(&mut ram, &bz.build(), Some(&big), "").unwrap_err();
        assert!(
            matches!(e, LoadError::BzImage(BzImageError::InitrdDoesNotFit { .. })),
            "{e}"
        );
        // Exactly the RAM left fits.
        let exact = &big[1..];
        load(&mut ram, &bz.build(), Some(exact), "").unwrap();
        // An empty initrd is no initrd.
        let loaded = load(&mut ram, &bz.build(), Some(&[]), "").unwrap();
        assert!(loaded.placements.find(Item::Initrd).is_none());
    }

    #[test]
    fn command_lines_are_limited_by_cmdline_size() {
        let bz = BzImage {
            cmdline_size: 16,
            ..BzImage::default()
        };
        let image = bz.build();
        let mut ram = Ram::new(64 * MIB);
        load(&mut ram, &image, None, "0123456789abcdef").unwrap();
        assert_eq!(
            ram.bytes(LINUX_CMDLINE_ADDR.as_u64(), 17),
            b"0123456789abcdef\0"
        );
        let e = load(&mut ram, &image, None, "0123456789abcdefg").unwrap_err();
        assert_eq!(e, LoadError::CommandLineTooLong { len: 17, max: 16 });
        assert_eq!(
            e.to_string(),
            "command line of 17 bytes is longer than the 16 bytes allowed"
        );
        let e = load(&mut ram, &image, None, "a\0b").unwrap_err();
        assert_eq!(e, LoadError::NulInCommandLine { item: Item::Kernel });

        // A huge cmdline_size is capped by the loader's area.
        let roomy = BzImage {
            cmdline_size: u32::MAX,
            ..BzImage::default()
        };
        let long = "x".repeat(0x2_0000);
        let e = load(&mut ram, &roomy.build(), None, &long).unwrap_err();
        assert_eq!(
            e,
            LoadError::CommandLineTooLong {
                len: 0x2_0000,
                max: 0x1_AFFF
            }
        );
    }

    #[test]
    fn a_kernel_bigger_than_the_guest_is_refused_with_sizes() {
        let bz = BzImage {
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            ..BzImage::default()
        };
        let mut ram = Ram::new(16 * MIB);
        let e = load(&mut ram, &bz.build(), None, "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel needs 0x2000000 bytes at 0x1000000 but the guest has 16 MiB"
        );
    }

    #[test]
    fn a_relocatable_kernel_is_aligned_up_to_kernel_alignment() {
        let bz = BzImage {
            pref_address: 0x110_0000,
            kernel_alignment: 0x20_0000,
            ..BzImage::default()
        };
        let mut ram = Ram::new(64 * MIB);
        let loaded = load(&mut ram, &bz.build(), None, "").unwrap();
        assert_eq!(loaded.entry.rip, 0x120_0000 + 0x200);
    }

    #[test]
    fn a_non_relocatable_kernel_loads_at_1mib_and_reserves_its_runtime_area() {
        let bz = BzImage {
            relocatable: 0,
            ..BzImage::default()
        };
        let image = bz.build();
        let mut ram = Ram::new(64 * MIB);
        let loaded = load(&mut ram, &image, None, "").unwrap();
        assert_eq!(loaded.entry.rip, 0x10_0000 + 0x200);
        assert_eq!(
            ram.bytes(0x10_0000, 8),
            &image[bz.setup_len()..bz.setup_len() + 8]
        );
        let k = loaded.placements.find(Item::Kernel).unwrap();
        assert_eq!(
            (k.start.as_u64(), k.end()),
            (0x10_0000, bz.pref_address + u64::from(bz.init_size))
        );
    }

    #[test]
    fn kernels_without_a_64bit_entry_start_in_32bit_protected_mode() {
        // Protocol 2.10: no xloadflags.
        let bz = BzImage {
            version: 0x020A,
            ..BzImage::default()
        };
        let mut ram = Ram::new(64 * MIB);
        let loaded = load(&mut ram, &bz.build(), None, "").unwrap();
        let e = loaded.entry;
        assert_eq!(e.mode, CpuMode::Protected32);
        assert_eq!(e.rip, bz.pref_address);
        assert_eq!(e.regs.rsi, BOOT_INFO_ADDR.as_u64());
        assert_eq!(e.control.cr0 & entry::CR0_PG, 0);
        assert_eq!(e.segments.cs.selector, 0x10);
        assert_eq!(ram.u64(GDT_ADDR.as_u64() + 0x10), 0x00CF_9B00_0000_FFFF);
        assert!(loaded.placements.find(Item::PageTables).is_none());

        // Protocol 2.12 without XLF_KERNEL_64: the same.
        let bz32 = BzImage {
            xloadflags: 0,
            ..BzImage::default()
        };
        let loaded = load(&mut ram, &bz32.build(), None, "").unwrap();
        assert_eq!(loaded.entry.mode, CpuMode::Protected32);

        // Protocol 2.06: no pref_address, so 1 MiB, aligned up to
        // kernel_alignment for a relocatable kernel.
        let old = BzImage {
            version: 0x0206,
            ..BzImage::default()
        };
        let loaded = load(&mut ram, &old.build(), None, "").unwrap();
        assert_eq!(loaded.entry.rip, 0x20_0000);
        let old_fixed = BzImage {
            relocatable: 0,
            ..old
        };
        let loaded = load(&mut ram, &old_fixed.build(), None, "").unwrap();
        assert_eq!(loaded.entry.rip, 0x10_0000);
    }

    #[test]
    fn malformed_headers_are_named() {
        let good = BzImage::default();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0; 0x100], "bzImage: file of 256 bytes is too short for a setup header (is it a bzImage?)"),
            ({ let mut i = good.build(); i[0x202] = b'X'; i }, "bzImage: setup header magic \"HdrS\" missing at 0x202"),
            (BzImage { version: 0x0205, ..good }.build(), "bzImage: boot protocol 2.05 is too old"),
            (BzImage { loadflags: 0, ..good }.build(), "bzImage: loadflags LOADED_HIGH is clear"),
            (BzImage { kernel_alignment: 0x30_0000, ..good }.build(), "bzImage: kernel_alignment 0x300000"),
            (BzImage { pref_address: 0x8_0000, ..good }.build(), "bzImage: pref_address 0x80000 is below 1 MiB"),
            (BzImage { header_jump: 0x20, ..good }.build(), "bzImage: setup header ends at 0x222"),
            (BzImage { header_jump: 0x90, ..good }.build(), "bzImage: setup header ends at 0x292"),
            (BzImage { payload_len: 0x200, ..good }.build(), "bzImage: after 0x800 bytes of setup code"),
            (good.build()[..good.setup_len()].to_vec(), "bzImage: after 0x800 bytes of setup code"),
            (good.build()[..0x260].to_vec(), "bzImage: setup header ends at 0x26c (0x202 + the byte at 0x201) but boot protocol 2.15 needs it to reach 0x264 and it may not pass 0x260"),
        ];
        for (image, message) in cases {
            let mut ram = Ram::new(64 * MIB);
            let e = load(&mut ram, &image, None, "").unwrap_err();
            assert!(e.to_string().starts_with(message), "{e}\nwanted: {message}");
            assert!(matches!(e, LoadError::BzImage(_)));
        }
    }

    #[test]
    fn guests_too_small_for_the_low_structures_or_too_large_are_refused() {
        let mut ram = Ram::new(MIB / 2);
        let e = load(&mut ram, &BzImage::default().build(), None, "").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::DoesNotFit {
                    item: Item::Kernel,
                    ..
                }
            ),
            "{e}"
        );
        let mut huge = super::super::fixtures::NullMemory::new(MAX_GUEST_RAM + MIB);
        let image = BzImage::default().build();
        let e = load_linux(
            &mut huge,
            &LinuxImage {
                kernel: &image,
                initrd: None,
                cmdline: "",
                platform: None,
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            LoadError::GuestTooLarge {
                ram: MAX_GUEST_RAM + MIB
            }
        );
    }

    #[test]
    fn a_4_gib_guest_learns_of_its_ram_from_4_gib_and_can_reach_it() {
        // Lazily backed by the host: only the pages the loader writes are
        // touched.
        let mut ram = Ram::new(4 << 30);
        let image = BzImage {
            initrd_addr_max: u32::MAX,
            ..BzImage::default()
        }
        .build();
        let initrd = [0x5A; 0x3000];
        let loaded = load(&mut ram, &image, Some(&initrd), "").unwrap();
        let bp = BOOT_INFO_ADDR.as_u64();
        assert_eq!(ram.bytes(bp + E820_ENTRIES as u64, 1)[0], 4);
        let entry = |i: u64| {
            let at = bp + E820_TABLE as u64 + i * 20;
            (ram.u64(at), ram.u64(at + 8), ram.u32(at + 16))
        };
        assert_eq!(entry(2), (0x10_0000, 0xC000_0000 - 0x10_0000, 1));
        assert_eq!(entry(3), (0x1_0000_0000, 1 << 30, 1));
        // The initrd stays below the device window, as high as it goes
        // (the kernel would take it up to 4 GiB).
        let at = u64::from(ram.u32(bp + RAMDISK_IMAGE as u64));
        assert_eq!(at + 0x3000, 0xC000_0000);
        // The 64-bit entry's identity map reaches the high RAM too.
        let cr3 = loaded.entry.control.cr3;
        for addr in [0xFEE0_0000, 1 << 32, (5 << 30) - 1] {
            assert_eq!(ram.translate(cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(ram.translate(cr3, 5 << 30), None);
    }

    #[test]
    fn the_memory_map_is_returned_as_given_to_the_guest() {
        let mut ram = Ram::new(32 * MIB);
        let loaded = load(&mut ram, &BzImage::default().build(), None, "").unwrap();
        let regions = loaded.memory_map.regions();
        assert_eq!(regions.len(), 3);
        assert_eq!(regions[2].kind, RegionKind::Ram);
        assert_eq!(regions[2].end(), 32 * MIB);
    }
}
