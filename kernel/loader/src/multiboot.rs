//! Multiboot v1 (Multiboot Specification version 0.6.96): the header
//! search, loading by ELF program headers or by the a.out kludge address
//! fields, modules, and the Multiboot information structure.
//!
//! Requirement flags (header flags bits 0-15): bit 0 (page-aligned modules)
//! and bit 1 (memory information) are always honoured; bit 2 (video mode)
//! cannot be, as there is no display, and is ignored with a
//! [`LoadWarning`](super::LoadWarning); any other requirement bit fails the
//! load, as the specification asks. Of the optional bits, 16 (address
//! fields valid) is honoured and takes precedence over the ELF headers, as
//! the specification says; the rest are ignored.
//!
//! Placement:
//! - the kernel where its ELF `p_paddr`s or its a.out kludge fields say;
//! - modules after the kernel (or 1 MiB), each 4 KiB aligned;
//! - the information structure at [`BOOT_INFO_ADDR`], followed by the
//!   memory map, the module list and the strings (boot loader name,
//!   command line, module strings), all below [`BOOT_INFO_END`];
//! - the GDT at [`GDT_ADDR`](super::layout::GDT_ADDR), which the
//!   specification does not require but a guest reloading its segment
//!   registers before building its own benefits from.
//!
//! Entry: 32-bit protected mode, paging off, CS a flat 4 GiB code segment,
//! the data segments flat 4 GiB data segments, EAX = `0x2BADB002`, EBX = the
//! information structure's address, interrupts off.

use addr::GuestPhysAddr;

use super::bytes::{put, put_u32, u32_at};
use super::elf::{self, Elf};
use super::entry::{write_gdt, EntryState};
use super::error::{Item, LoadError, MultibootError};
use super::layout::{
    layout_of, MemoryMap, Placements, BOOT_INFO_ADDR, BOOT_INFO_END, HIGH_RAM_START, LOW_RAM_END,
};
use super::source::{Chunks, ImageSource};
use super::{GuestMemory, LoadWarning, LoadedImage, Warnings};

/// The magic at the start of the header in the image.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The magic the loader passes in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The most modules one load takes.
pub const MAX_MODULES: usize = 32;
/// The header lies within this many bytes from the start of the image.
pub(crate) const SEARCH_LEN: usize = 8192;
/// magic, flags, checksum.
const HEADER_LEN: usize = 12;
/// With the a.out kludge address fields.
const HEADER_LEN_ADDRESSES: usize = 32;

/// Header flag bit 2: the image wants video mode information.
const FLAG_VIDEO: u32 = 1 << 2;
/// Header flag bit 16: the address fields are valid.
const FLAG_ADDRESSES: u32 = 1 << 16;
/// The requirement bits honoured: modules page aligned, memory information.
const FLAGS_HONOURED: u32 = 0b11;

/// Information structure flags (section 3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// Information structure field offsets (section 3.3).
const INFO_LEN: usize = 88;
const OFF_FLAGS: usize = 0;
const OFF_MEM_LOWER: usize = 4;
const OFF_MEM_UPPER: usize = 8;
const OFF_CMDLINE: usize = 16;
const OFF_MODS_COUNT: usize = 20;
const OFF_MODS_ADDR: usize = 24;
const OFF_MMAP_LENGTH: usize = 44;
const OFF_MMAP_ADDR: usize = 48;
const OFF_LOADER_NAME: usize = 64;
/// A memory map entry: a `size` of 20, then base, length, type.
const MMAP_ENTRY_LEN: u64 = 24;
/// A module list entry: start, end, string, reserved.
const MODULE_ENTRY_LEN: u64 = 16;
/// Modules are placed on page boundaries (what header bit 0 asks).
const MODULE_ALIGN: u64 = 4096;

/// The name given in `boot_loader_name`.
const LOADER_NAME: &[u8] = b"Ferrovisor";

/// A Multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its offset in the image.
    pub offset: usize,
    /// Its flags.
    pub flags: u32,
    /// The a.out kludge address fields, where flags bit 16 is set.
    pub addresses: Option<Addresses>,
}

/// The header's address fields (flags bit 16): where the image loads,
/// without looking at its executable format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The physical address the header itself is loaded to.
    pub header_addr: u32,
    /// The physical address of the start of the text segment.
    pub load_addr: u32,
    /// The end of the data segment, or 0 for the whole file.
    pub load_end_addr: u32,
    /// The end of the bss, or 0 for none.
    pub bss_end_addr: u32,
    /// The entry point.
    pub entry_addr: u32,
}

impl Header {
    /// Finds the header: the magic at a 4-byte aligned offset within the
    /// first 8192 bytes, with magic + flags + checksum = 0.
    ///
    /// # Errors
    ///
    /// [`MultibootError::NoHeader`], or where the only candidates are
    /// broken, [`MultibootError::ChecksumMismatch`] or
    /// [`MultibootError::HeaderCutOff`] for the first of them.
    pub fn find(image: &[u8]) -> Result<Self, LoadError> {
        let window = image.get(..SEARCH_LEN).unwrap_or(image);
        let mut first_broken = None;
        for offset in (0..window.len()).step_by(4) {
            if u32_at(window, offset) != Some(HEADER_MAGIC) {
                continue;
            }
            let flags = u32_at(window, offset.saturating_add(4));
            let checksum = u32_at(window, offset.saturating_add(8));
            let (Some(flags), Some(checksum)) = (flags, checksum) else {
                first_broken.get_or_insert(MultibootError::HeaderCutOff {
                    offset,
                    needed: HEADER_LEN,
                });
                continue;
            };
            if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
                first_broken.get_or_insert(MultibootError::ChecksumMismatch { offset });
                continue;
            }
            let addresses = if flags & FLAG_ADDRESSES != 0 {
                let field = |i: usize| {
                    u32_at(
                        window,
                        offset
                            .saturating_add(HEADER_LEN)
                            .saturating_add(i.saturating_mul(4)),
                    )
                };
                match (field(0), field(1), field(2), field(3), field(4)) {
                    (
                        Some(header_addr),
                        Some(load_addr),
                        Some(load_end_addr),
                        Some(bss_end_addr),
                        Some(entry_addr),
                    ) => Some(Addresses {
                        header_addr,
                        load_addr,
                        load_end_addr,
                        bss_end_addr,
                        entry_addr,
                    }),
                    _ => {
                        return Err(MultibootError::HeaderCutOff {
                            offset,
                            needed: HEADER_LEN_ADDRESSES,
                        }
                        .into())
                    }
                }
            } else {
                None
            };
            return Ok(Self {
                offset,
                flags,
                addresses,
            });
        }
        Err(first_broken.unwrap_or(MultibootError::NoHeader).into())
    }
}

/// A boot module: a file the kernel finds through the information
/// structure's module list, read through `S` (byte slices by default).
#[derive(Debug)]
pub struct Module<'a, S: ImageSource + ?Sized = [u8]> {
    /// Its contents.
    pub data: &'a S,
    /// Its string (conventionally a name or command line).
    pub cmdline: &'a str,
}

impl<S: ImageSource + ?Sized> Clone for Module<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ImageSource + ?Sized> Copy for Module<'_, S> {}

/// A Multiboot kernel with its command line and modules, read through `S`
/// (byte slices by default).
#[derive(Debug)]
pub struct MultibootImage<'a, S: ImageSource + ?Sized = [u8]> {
    /// The kernel image file.
    pub kernel: &'a S,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The modules, at most [`MAX_MODULES`].
    pub modules: &'a [Module<'a, S>],
}

impl<S: ImageSource + ?Sized> Clone for MultibootImage<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ImageSource + ?Sized> Copy for MultibootImage<'_, S> {}

/// Offsets of the parts of the boot information area from
/// [`BOOT_INFO_ADDR`].
struct InfoLayout {
    mmap: u64,
    mmap_len: u64,
    mods: u64,
    loader_name: u64,
    cmdline: u64,
    /// Where the first module string goes; the others follow it.
    module_strings: u64,
    len: u64,
}

impl InfoLayout {
    fn new<S: ImageSource + ?Sized>(image: &MultibootImage<'_, S>, map: &MemoryMap) -> Self {
        let mmap = INFO_LEN as u64;
        let mmap_len = (map.regions().len() as u64).saturating_mul(MMAP_ENTRY_LEN);
        let mods = mmap.saturating_add(mmap_len);
        let loader_name =
            mods.saturating_add((image.modules.len() as u64).saturating_mul(MODULE_ENTRY_LEN));
        let cmdline = loader_name.saturating_add(const { LOADER_NAME.len() as u64 + 1 });
        let module_strings = cmdline.saturating_add((image.cmdline.len() as u64).saturating_add(1));
        let len = image.modules.iter().fold(module_strings, |at, m| {
            at.saturating_add((m.cmdline.len() as u64).saturating_add(1))
        });
        Self {
            mmap,
            mmap_len,
            mods,
            loader_name,
            cmdline,
            module_strings,
            len,
        }
    }
}

/// Loads a Multiboot kernel and its modules into `mem` and builds the
/// information structure. Returns 32-bit protected-mode entry state with
/// EAX = [`BOOTLOADER_MAGIC`] and EBX = [`BOOT_INFO_ADDR`].
///
/// The header is searched for in the first 8 KiB read into the copy
/// buffer, ELF headers are read one at a time, and the kernel's bytes and
/// the modules are copied in [`CHUNK_LEN`](super::CHUNK_LEN) pieces.
///
/// # Errors
///
/// A [`LoadError`] where the header is missing or broken, the header asks
/// for an unsupported feature, the ELF or a.out kludge fields are
/// malformed, a string holds a NUL, or anything does not fit the guest.
pub fn load_multiboot<M: GuestMemory + ?Sized, S: ImageSource + ?Sized>(
    mem: &mut M,
    image: &MultibootImage<'_, S>,
) -> Result<LoadedImage, LoadError> {
    let mut chunks = Chunks::new()?;
    let search = image.kernel.len().min(SEARCH_LEN as u64) as usize;
    let header = Header::find(chunks.head(image.kernel, Item::Kernel, search)?)?;
    let mut warnings = Warnings::default();
    let requirements = header.flags & 0xFFFF;
    if requirements & FLAG_VIDEO != 0 {
        warnings.add(LoadWarning::MultibootVideoIgnored);
    }
    let unsupported = requirements & !(FLAGS_HONOURED | FLAG_VIDEO);
    if unsupported != 0 {
        return Err(MultibootError::UnsupportedRequirement {
            bit: unsupported.trailing_zeros(),
        }
        .into());
    }
    if image.modules.len() > MAX_MODULES {
        return Err(MultibootError::TooManyModules {
            count: image.modules.len(),
            max: MAX_MODULES,
        }
        .into());
    }
    if image.cmdline.as_bytes().contains(&0) {
        return Err(LoadError::NulInCommandLine { item: Item::Kernel });
    }
    for (i, module) in image.modules.iter().enumerate() {
        if module.cmdline.as_bytes().contains(&0) {
            return Err(LoadError::NulInCommandLine {
                item: Item::Module(i as u16),
            });
        }
    }

    let ram = mem.size();
    let memory_map = MemoryMap::for_ram(ram)?;
    let mut placements = Placements::new(layout_of(ram)?);

    let layout = InfoLayout::new(image, &memory_map);
    let area = const { BOOT_INFO_END.as_u64() - BOOT_INFO_ADDR.as_u64() };
    if layout.len > area {
        return Err(MultibootError::InfoTooLarge {
            len: layout.len,
            max: area,
        }
        .into());
    }
    placements.claim(Item::MultibootInfo, BOOT_INFO_ADDR.as_u64(), layout.len)?;
    write_gdt(mem, &mut placements, &EntryState::protected32(0))?;

    let (kernel_end, entry) = match header.addresses {
        Some(addresses) => load_aout(
            mem,
            &mut placements,
            &mut chunks,
            image.kernel,
            header.offset,
            &addresses,
        )?,
        None => load_elf(mem, &mut placements, &mut chunks, image.kernel)?,
    };

    // Modules after the kernel, page aligned.
    let mut next = kernel_end.max(HIGH_RAM_START);
    let mut module_ranges = [(0u64, 0u64); MAX_MODULES];
    for (i, (module, range)) in image
        .modules
        .iter()
        .zip(module_ranges.iter_mut())
        .enumerate()
    {
        let item = Item::Module(i as u16);
        let len = module.data.len();
        let at = GuestPhysAddr::new(next)
            .align_up(MODULE_ALIGN)
            .map_or(u64::MAX, GuestPhysAddr::as_u64);
        placements.claim(item, at, len)?;
        chunks.copy(mem, module.data, item, 0, len, GuestPhysAddr::new(at))?;
        *range = (at, at.saturating_add(len));
        next = at.saturating_add(len);
    }

    write_info(mem, image, &layout, &memory_map, &module_ranges)?;

    // Everything placed lies in RAM, below 3 GiB.
    let mut state = EntryState::protected32(u32::try_from(entry).unwrap_or(u32::MAX));
    state.regs.rax = u64::from(BOOTLOADER_MAGIC);
    state.regs.rbx = BOOT_INFO_ADDR.as_u64();
    Ok(LoadedImage {
        entry: state,
        memory_map,
        placements,
        warnings,
    })
}

/// Loads by the header's address fields. Returns the end of the kernel
/// (bss included) and the entry point.
fn load_aout<M: GuestMemory + ?Sized, S: ImageSource + ?Sized>(
    mem: &mut M,
    placements: &mut Placements,
    chunks: &mut Chunks,
    file: &S,
    header_offset: usize,
    a: &Addresses,
) -> Result<(u64, u64), LoadError> {
    let distance =
        a.header_addr
            .checked_sub(a.load_addr)
            .ok_or(MultibootError::LoadAddrAboveHeader {
                load_addr: a.load_addr,
                header_addr: a.header_addr,
            })?;
    let text_offset =
        header_offset
            .checked_sub(distance as usize)
            .ok_or(MultibootError::TextBeforeFile {
                distance,
                offset: header_offset,
            })?;
    // The header lies in the file, so the text offset does too.
    let available = file.len().saturating_sub(text_offset as u64);
    let load_len = if a.load_end_addr == 0 {
        available
    } else {
        a.load_end_addr
            .checked_sub(a.load_addr)
            .map(u64::from)
            .filter(|&len| len <= available)
            .ok_or(MultibootError::BadLoadEnd {
                load_addr: a.load_addr,
                load_end_addr: a.load_end_addr,
                available,
            })?
    };
    let load_addr = u64::from(a.load_addr);
    let load_end = load_addr.saturating_add(load_len);
    let end = match a.bss_end_addr {
        0 => load_end,
        bss_end if u64::from(bss_end) < load_end => {
            return Err(MultibootError::BssEndBeforeLoadEnd {
                bss_end_addr: bss_end,
                load_end,
            }
            .into())
        }
        bss_end => u64::from(bss_end),
    };
    let entry = u64::from(a.entry_addr);
    if !(load_addr..end).contains(&entry) {
        return Err(MultibootError::EntryOutsideImage { entry }.into());
    }
    placements.claim(Item::Kernel, load_addr, end.saturating_sub(load_addr))?;
    chunks.copy(
        mem,
        file,
        Item::Kernel,
        text_offset as u64,
        load_len,
        GuestPhysAddr::new(load_addr),
    )?;
    mem.zero(GuestPhysAddr::new(load_end), end.saturating_sub(load_end))?;
    Ok((end, entry))
}

/// Loads by the ELF program headers, at each segment's `p_paddr`. Returns
/// the end of the highest segment and the entry point, translated from
/// virtual to physical through the segment that holds it (what higher-half
/// kernels linked with a virtual `e_entry` expect).
fn load_elf<M: GuestMemory + ?Sized, S: ImageSource + ?Sized>(
    mem: &mut M,
    placements: &mut Placements,
    chunks: &mut Chunks,
    file: &S,
) -> Result<(u64, u64), LoadError> {
    let mut magic = [0u8; 4];
    let magic = magic
        .get_mut(..file.len().min(4) as usize)
        .unwrap_or_default();
    super::source::read(file, Item::Kernel, 0, magic)?;
    if !elf::is_elf(magic) {
        return Err(MultibootError::NotElf.into());
    }
    let elf = Elf::parse(file)?;
    let ram = placements.ram();

    // First every segment is checked, so nothing is written for an image
    // that fails; the total is capped so a file of many overlapping huge
    // segments cannot make the loader clear gigabytes over and over.
    let mut total = 0u64;
    let mut span: Option<(u64, u64)> = None;
    let mut entry = None;
    for index in 0..elf.phnum {
        let Some(segment) = elf.load_segment(index)? else {
            continue;
        };
        total = total.saturating_add(segment.memsz);
        if total > ram {
            return Err(MultibootError::SegmentsTooLarge { total, ram }.into());
        }
        let placed = placements.check(Item::Segment(index), segment.paddr, segment.memsz)?;
        let (lo, hi) = span.unwrap_or((placed.start.as_u64(), placed.end()));
        span = Some((lo.min(placed.start.as_u64()), hi.max(placed.end())));
        let offset = elf.entry.wrapping_sub(segment.vaddr);
        if entry.is_none() && elf.entry >= segment.vaddr && offset < segment.memsz {
            entry = Some(segment.paddr.saturating_add(offset));
        }
    }
    let (lo, hi) = span.ok_or(MultibootError::NoLoadableSegment)?;
    let entry = entry.ok_or(MultibootError::EntryOutsideImage { entry: elf.entry })?;
    placements.claim(Item::Kernel, lo, hi.saturating_sub(lo))?;

    for index in 0..elf.phnum {
        let Some(segment) = elf.load_segment(index)? else {
            continue;
        };
        let at = GuestPhysAddr::new(segment.paddr);
        chunks.copy(
            mem,
            elf.file(),
            Item::Segment(index),
            segment.offset,
            segment.filesz,
            at,
        )?;
        let bss = GuestPhysAddr::new(segment.paddr.saturating_add(segment.filesz));
        mem.zero(bss, segment.memsz.saturating_sub(segment.filesz))?;
    }
    Ok((hi, entry))
}

/// Writes the information structure and what it points at.
fn write_info<M: GuestMemory + ?Sized, S: ImageSource + ?Sized>(
    mem: &mut M,
    image: &MultibootImage<'_, S>,
    layout: &InfoLayout,
    memory_map: &MemoryMap,
    modules: &[(u64, u64)],
) -> Result<(), LoadError> {
    let base = BOOT_INFO_ADDR.as_u64();
    // Everything lies below BOOT_INFO_END, so the addresses fit 32 bits.
    let addr = |offset: u64| base.saturating_add(offset) as u32;
    // The low range: RAM up to the device window (a guest's RAM past
    // 3 GiB is in the memory map, from 4 GiB).
    let ram = layout_of(mem.size())?.low_len();

    let mut info = [0u8; INFO_LEN];
    put_u32(
        &mut info,
        OFF_FLAGS,
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME,
    );
    // In KiB: conventional memory from 0, extended memory from 1 MiB up to
    // the first hole (the device window, or the end of RAM).
    put_u32(
        &mut info,
        OFF_MEM_LOWER,
        (ram.min(LOW_RAM_END) / 1024) as u32,
    );
    put_u32(
        &mut info,
        OFF_MEM_UPPER,
        (ram.saturating_sub(HIGH_RAM_START) / 1024) as u32,
    );
    put_u32(&mut info, OFF_CMDLINE, addr(layout.cmdline));
    put_u32(&mut info, OFF_MODS_COUNT, image.modules.len() as u32);
    put_u32(&mut info, OFF_MODS_ADDR, addr(layout.mods));
    put_u32(&mut info, OFF_MMAP_LENGTH, layout.mmap_len as u32);
    put_u32(&mut info, OFF_MMAP_ADDR, addr(layout.mmap));
    put_u32(&mut info, OFF_LOADER_NAME, addr(layout.loader_name));
    mem.write(BOOT_INFO_ADDR, &info)?;

    for (i, region) in memory_map.regions().iter().enumerate() {
        let mut entry = [0u8; MMAP_ENTRY_LEN as usize];
        put_u32(&mut entry, 0, (MMAP_ENTRY_LEN - 4) as u32);
        put(&mut entry, 4, &region.e820_entry());
        mem.write(
            GuestPhysAddr::new(
                base.saturating_add(layout.mmap)
                    .saturating_add((i as u64).saturating_mul(MMAP_ENTRY_LEN)),
            ),
            &entry,
        )?;
    }

    write_string(mem, base.saturating_add(layout.loader_name), LOADER_NAME)?;
    write_string(
        mem,
        base.saturating_add(layout.cmdline),
        image.cmdline.as_bytes(),
    )?;
    let mut string_at = layout.module_strings;
    for (i, (module, &(start, end))) in image.modules.iter().zip(modules).enumerate() {
        let mut entry = [0u8; MODULE_ENTRY_LEN as usize];
        put_u32(&mut entry, 0, start as u32);
        // mod_end is exclusive: the module occupies [mod_start, mod_end).
        put_u32(&mut entry, 4, end as u32);
        put_u32(&mut entry, 8, addr(string_at));
        mem.write(
            GuestPhysAddr::new(
                base.saturating_add(layout.mods)
                    .saturating_add((i as u64).saturating_mul(MODULE_ENTRY_LEN)),
            ),
            &entry,
        )?;
        write_string(
            mem,
            base.saturating_add(string_at),
            module.cmdline.as_bytes(),
        )?;
        string_at = string_at.saturating_add((module.cmdline.len() as u64).saturating_add(1));
    }
    Ok(())
}

/// Writes `s` and a terminating NUL at `at`.
fn write_string<M: GuestMemory + ?Sized>(mem: &mut M, at: u64, s: &[u8]) -> Result<(), LoadError> {
    mem.write(GuestPhysAddr::new(at), s)?;
    mem.write(GuestPhysAddr::new(at.saturating_add(s.len() as u64)), &[0])
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
    use super::super::entry::{CR0_PE, CR0_PG};
    use super::super::fixtures::{
        multiboot_elf32, multiboot_header, Aout, Elf, Phdr, Ram, AOUT_HEADER_OFFSET,
    };
    use super::super::layout::GDT_ADDR;
    use super::super::{CpuMode, LoadWarning};
    use super::*;

    const MIB: u64 = 1 << 20;
    const INFO: u64 = BOOT_INFO_ADDR.as_u64();

    fn load(
        ram: &mut Ram,
        kernel: &[u8],
        cmdline: &str,
        modules: &[Module<'_>],
    ) -> Result<LoadedImage, LoadError> {
        load_multiboot(
            &mut ram.memory(),
            &MultibootImage {
                kernel,
                cmdline,
                modules,
            },
        )
    }

    fn error(kernel: &[u8]) -> String {
        let mut ram = Ram::new(32 * MIB);
        load(&mut ram, kernel, "", &[]).unwrap_err().to_string()
    }

    #[test]
    fn an_elf32_kernel_loads_by_paddr_with_its_bss_cleared() {
        let image = multiboot_elf32(0b11);
        let mut ram = Ram::new(32 * MIB);
        // Stale bytes where the bss goes must be cleared.
        ram.fill(0x10_3000, 0x3000, 0xAA);
        let loaded = load(&mut ram, &image, "", &[]).unwrap();
        assert_eq!(ram.bytes(0x10_0000, 0x2000), &image[0x1000..0x3000]);
        assert_eq!(ram.bytes(0x10_3000, 0x100), &[0xDA; 0x100][..]);
        assert!(ram.bytes(0x10_3100, 0x2000).iter().all(|&b| b == 0));
        assert_eq!(ram.bytes(0x10_5100, 0x10), &[0xAA; 0x10][..]);
        // PT_PHDR was not loaded at its address 0.
        assert!(ram.bytes(0, 0x40).iter().all(|&b| b == 0));
        let kernel = loaded.placements.find(Item::Kernel).unwrap();
        assert_eq!(
            (kernel.start.as_u64(), kernel.end()),
            (0x10_0000, 0x10_5100)
        );
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn the_entry_state_is_flat_protected_mode_with_the_magic() {
        let mut ram = Ram::new(32 * MIB);
        let e = load(&mut ram, &multiboot_elf32(0), "", &[]).unwrap().entry;
        assert_eq!(e.mode, CpuMode::Protected32);
        assert_eq!(e.rip, 0x10_0010);
        assert_eq!(e.regs.rax, 0x2BAD_B002);
        assert_eq!(e.regs.rbx, INFO);
        assert_eq!(e.control.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(e.rflags & (1 << 9), 0);
        let cs = e.segments.cs;
        assert_eq!(
            (cs.base, cs.limit, cs.access.long()),
            (0, 0xFFFF_FFFF, false)
        );
        for s in [
            e.segments.ds,
            e.segments.es,
            e.segments.fs,
            e.segments.gs,
            e.segments.ss,
        ] {
            assert_eq!((s.base, s.limit, s.selector), (0, 0xFFFF_FFFF, 0x18));
        }
        assert_eq!(ram.u64(GDT_ADDR.as_u64() + 0x10), 0x00CF_9B00_0000_FFFF);
    }

    #[test]
    fn the_information_structure_has_memory_cmdline_mmap_modules_and_name() {
        let mut ram = Ram::new(32 * MIB);
        let initrd = vec![0x11u8; 0x1801];
        let config = b"key=value".to_vec();
        let modules = [
            Module {
                data: &initrd[..],
                cmdline: "initrd.img rw",
            },
            Module {
                data: &config[..],
                cmdline: "",
            },
        ];
        load(
            &mut ram,
            &multiboot_elf32(0b11),
            "kernel root=/dev/sda",
            &modules,
        )
        .unwrap();

        let flags = ram.u32(INFO);
        assert_eq!(flags, 1 | 4 | 8 | 64 | 512);
        assert_eq!(ram.u32(INFO + 4), 640);
        assert_eq!(ram.u32(INFO + 8), 31 * 1024);
        assert_eq!(
            ram.c_str(u64::from(ram.u32(INFO + 16))),
            "kernel root=/dev/sda"
        );
        assert_eq!(ram.c_str(u64::from(ram.u32(INFO + 64))), "Ferrovisor");
        // Fields for absent information stay zero.
        assert_eq!(ram.u32(INFO + 12), 0);
        assert!(ram.bytes(INFO + 28, 16).iter().all(|&b| b == 0));

        // Memory map: entries of size 20 (+4 for the size field).
        let mmap_len = u64::from(ram.u32(INFO + 44));
        let mmap = u64::from(ram.u32(INFO + 48));
        assert_eq!(mmap_len, 3 * 24);
        let entries: Vec<(u32, u64, u64, u32)> = (0..3)
            .map(|i| {
                let at = mmap + i * 24;
                (
                    ram.u32(at),
                    ram.u64(at + 4),
                    ram.u64(at + 12),
                    ram.u32(at + 20),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (20, 0, 0xA_0000, 1),
                (20, 0xA_0000, 0x6_0000, 2),
                (20, 0x10_0000, 31 * MIB, 1),
            ]
        );

        // Modules: page aligned after the kernel's bss, mod_end exclusive.
        assert_eq!(ram.u32(INFO + 20), 2);
        let mods = u64::from(ram.u32(INFO + 24));
        let module = |i: u64| {
            let at = mods + 16 * i;
            (
                ram.u32(at),
                ram.u32(at + 4),
                ram.u32(at + 8),
                ram.u32(at + 12),
            )
        };
        let (start0, end0, string0, reserved0) = module(0);
        assert_eq!(
            (start0, end0, reserved0),
            (0x10_6000, 0x10_6000 + 0x1801, 0)
        );
        assert_eq!(ram.c_str(u64::from(string0)), "initrd.img rw");
        assert_eq!(ram.bytes(u64::from(start0), initrd.len()), &initrd[..]);
        let (start1, end1, string1, _) = module(1);
        assert_eq!((start1, end1), (0x10_8000, 0x10_8000 + 9));
        assert_eq!(ram.c_str(u64::from(string1)), "");
        assert_eq!(ram.bytes(u64::from(start1), 9), b"key=value");

        // Everything the structure points at is inside the claimed area.
        for ptr in [mmap, mods, u64::from(string0), u64::from(string1)] {
            assert!((INFO..BOOT_INFO_END.as_u64()).contains(&ptr), "{ptr:#x}");
        }
    }

    #[test]
    fn an_aout_kludge_image_loads_by_its_address_fields() {
        let aout = Aout::default();
        let image = aout.build();
        let mut ram = Ram::new(8 * MIB);
        ram.fill(0x10_0800, 0x1800, 0xAA);
        let loaded = load(&mut ram, &image, "", &[]).unwrap();
        // The text starts at the header (header_addr == load_addr); the
        // preamble before it is not loaded.
        let text = &image[AOUT_HEADER_OFFSET..AOUT_HEADER_OFFSET + 0x800];
        assert_eq!(ram.bytes(0x10_0000, 0x800), text);
        assert!(ram.bytes(0x10_0800, 0x1800).iter().all(|&b| b == 0));
        assert_eq!(loaded.entry.rip, 0x10_0040);
        let kernel = loaded.placements.find(Item::Kernel).unwrap();
        assert_eq!(
            (kernel.start.as_u64(), kernel.end()),
            (0x10_0000, 0x10_2000)
        );
    }

    #[test]
    fn aout_kludge_with_a_preamble_and_whole_file_loading() {
        // header_addr - load_addr = 0x20: the preamble is loaded too, and
        // load_end_addr 0 loads to the end of the file; no bss.
        let aout = Aout {
            header_addr: 0x20_0020,
            load_addr: 0x20_0000,
            load_end_addr: 0,
            bss_end_addr: 0,
            entry_addr: 0x20_0000,
            ..Aout::default()
        };
        let image = aout.build();
        let mut ram = Ram::new(8 * MIB);
        let loaded = load(&mut ram, &image, "", &[]).unwrap();
        assert_eq!(ram.bytes(0x20_0000, image.len()), &image[..]);
        let kernel = loaded.placements.find(Item::Kernel).unwrap();
        assert_eq!(kernel.end(), 0x20_0000 + image.len() as u64);
    }

    #[test]
    fn flags_bit_16_takes_precedence_over_elf_headers() {
        // An ELF whose program headers say 1 MiB but whose header's
        // address fields say 2 MiB, from file offset 0.
        let mut text = vec![0x90u8; 0x100];
        let flags = 1 << 16;
        let header_offset = 0x1000u32;
        text[..12].copy_from_slice(&multiboot_header(flags));
        for (i, v) in [0x20_0000 + header_offset, 0x20_0000, 0, 0, 0x20_1010]
            .iter()
            .enumerate()
        {
            text[12 + 4 * i..16 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let image = Elf {
            class64: false,
            machine: 3,
            entry: 0x10_0000,
            phdrs: vec![Phdr::load(0x1000, 0x10_0000, 0x100, 0x100)],
            contents: vec![(0x1000, text)],
        }
        .build();
        let mut ram = Ram::new(8 * MIB);
        let loaded = load(&mut ram, &image, "", &[]).unwrap();
        assert_eq!(loaded.entry.rip, 0x20_1010);
        assert_eq!(ram.bytes(0x20_0000, 4), b"\x7fELF");
        assert!(ram.bytes(0x10_0000, 0x100).iter().all(|&b| b == 0));
    }

    #[test]
    fn elf_entries_given_as_virtual_addresses_are_translated() {
        // A higher-half kernel: linked at 0xC010_0000, loaded at 1 MiB.
        let mut text = vec![0x90u8; 0x100];
        text[..12].copy_from_slice(&multiboot_header(0));
        let image = Elf {
            class64: false,
            machine: 3,
            entry: 0xC010_0020,
            phdrs: vec![Phdr {
                vaddr: 0xC010_0000,
                ..Phdr::load(0x1000, 0x10_0000, 0x100, 0x100)
            }],
            contents: vec![(0x1000, text)],
        }
        .build();
        let mut ram = Ram::new(8 * MIB);
        assert_eq!(
            load(&mut ram, &image, "", &[]).unwrap().entry.rip,
            0x10_0020
        );
    }

    #[test]
    fn elf64_multiboot_kernels_load_too() {
        let mut text = vec![0x90u8; 0x200];
        text[..12].copy_from_slice(&multiboot_header(0b10));
        let image = Elf {
            class64: true,
            machine: 62,
            entry: 0x10_0100,
            phdrs: vec![Phdr::load(0x1000, 0x10_0000, 0x200, 0x1000)],
            contents: vec![(0x1000, text.clone())],
        }
        .build();
        let mut ram = Ram::new(8 * MIB);
        let loaded = load(&mut ram, &image, "", &[]).unwrap();
        assert_eq!(loaded.entry.rip, 0x10_0100);
        assert_eq!(ram.bytes(0x10_0000, 0x200), &text[..]);
    }

    #[test]
    fn the_video_request_is_ignored_with_a_warning() {
        let mut ram = Ram::new(8 * MIB);
        let loaded = load(&mut ram, &multiboot_elf32(0b111), "", &[]).unwrap();
        let warnings: Vec<_> = loaded.warnings.iter().collect();
        assert_eq!(warnings, vec![LoadWarning::MultibootVideoIgnored]);
        assert!(warnings[0].to_string().contains("flags bit 2"));
    }

    #[test]
    fn unsupported_requirement_bits_fail_and_optional_ones_do_not() {
        for bit in 3..16 {
            assert_eq!(
                error(&multiboot_elf32(1 << bit)),
                format!("multiboot: header flags bit {bit} asks for a feature Ferrovisor does not provide")
            );
        }
        let mut ram = Ram::new(8 * MIB);
        load(&mut ram, &multiboot_elf32(0xFFFE_0003), "", &[]).unwrap();
    }

    #[test]
    fn the_header_is_searched_aligned_and_within_8192_bytes() {
        assert_eq!(
            error(&[0u8; 0x3000]),
            "multiboot: no header (magic 0x1BADB002, 4-byte aligned) in the first 8192 bytes"
        );
        let mut late = vec![0u8; 0x3000];
        late[8192..8204].copy_from_slice(&multiboot_header(1 << 16));
        assert!(error(&late).starts_with("multiboot: no header"));
        let mut unaligned = vec![0u8; 0x3000];
        unaligned[0x102..0x10E].copy_from_slice(&multiboot_header(1 << 16));
        assert!(error(&unaligned).starts_with("multiboot: no header"));
        let mut cut = vec![0u8; 8192];
        cut[8188..8192].copy_from_slice(&0x1BAD_B002u32.to_le_bytes());
        assert!(error(&cut).starts_with("multiboot: the header at offset 0x1ffc needs 12 bytes"));
        let mut cut = vec![0u8; 8192];
        cut[8176..8188].copy_from_slice(&multiboot_header(1 << 16));
        assert!(error(&cut).starts_with("multiboot: the header at offset 0x1ff0 needs 32 bytes"));
        let found = Header::find(&multiboot_elf32(3)).unwrap();
        assert_eq!(
            (found.offset, found.flags, found.addresses),
            (0x1000, 3, None)
        );
    }

    #[test]
    fn a_bad_checksum_is_reported_unless_a_good_header_follows() {
        let mut image = multiboot_elf32(0b11);
        image[0x1008] ^= 0x80;
        assert_eq!(
            error(&image),
            "multiboot: checksum mismatch in the header at offset 0x1000 (magic + flags + checksum must be 0)"
        );
        image[0x1100..0x110C].copy_from_slice(&multiboot_header(0));
        assert_eq!(Header::find(&image).unwrap().offset, 0x1100);
    }

    #[test]
    fn malformed_aout_fields_are_named() {
        let good = Aout::default();
        let cases = [
            (Aout { load_addr: 0x10_0004, ..Aout::default() }, "multiboot: load_addr 0x100004 is above header_addr 0x100000"),
            (Aout { load_addr: 0xF_FF00, ..Aout::default() }, "multiboot: header_addr - load_addr = 0x100 but the header is only 0x20 bytes into the file"),
            (Aout { load_end_addr: 0x10_2000, ..Aout::default() }, "multiboot: load_end_addr 0x102000 is below load_addr 0x100000 or past the 0x1000 bytes"),
            (Aout { load_end_addr: 0xF_0000, ..Aout::default() }, "multiboot: load_end_addr 0xf0000 is below load_addr"),
            (Aout { bss_end_addr: 0x10_0400, ..Aout::default() }, "multiboot: bss_end_addr 0x100400 is below the end of the loaded data at 0x100800"),
            (Aout { entry_addr: 0x10_2000, ..Aout::default() }, "multiboot: entry point 0x102000 is outside everything loaded"),
            (Aout { entry_addr: 0xF_FFFF, ..Aout::default() }, "multiboot: entry point 0xfffff is outside everything loaded"),
            (
                Aout { header_addr: 0x1000, load_addr: 0x1000, load_end_addr: 0x1800, bss_end_addr: 0, entry_addr: 0x1000, ..good },
                "kernel at [0x1000, 0x1800) overlaps the GDT at [0x1000, 0x1020)",
            ),
            (
                Aout { header_addr: 0x1F_FF00, load_addr: 0x1F_FF00, load_end_addr: 0, bss_end_addr: 0x3F_0000, entry_addr: 0x1F_FF00, ..good },
                "kernel needs 0x1f0100 bytes at 0x1fff00 but the guest has 2 MiB",
            ),
        ];
        for (aout, message) in cases {
            let mut ram = Ram::new(2 * MIB);
            let e = load(&mut ram, &aout.build(), "", &[])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(message), "{e}\nwanted: {message}");
        }
    }

    #[test]
    fn malformed_elf_images_are_named() {
        let header_only = {
            let mut f = vec![0u8; 0x100];
            f[..12].copy_from_slice(&multiboot_header(0));
            f
        };
        assert_eq!(
            error(&header_only),
            "multiboot: the image is not ELF and its header does not set flags bit 16 (a.out kludge addresses)"
        );
        let elf = |machine, class64, phdrs: Vec<Phdr>, entry| {
            let mut text = vec![0u8; 0x100];
            text[..12].copy_from_slice(&multiboot_header(0));
            Elf {
                class64,
                machine,
                entry,
                phdrs,
                contents: vec![(0x1000, text)],
            }
            .build()
        };
        let seg = Phdr::load(0x1000, 0x10_0000, 0x100, 0x100);
        assert_eq!(
            error(&elf(62, false, vec![seg], 0x10_0000)),
            "multiboot: bad ELF header: a 32-bit ELF whose e_machine is not i386"
        );
        assert_eq!(
            error(&elf(3, true, vec![seg], 0x10_0000)),
            "multiboot: bad ELF header: a 64-bit ELF whose e_machine is not x86-64"
        );
        assert_eq!(
            error(&elf(3, false, vec![], 0x10_0000)),
            "multiboot: the ELF image has no loadable segment"
        );
        assert_eq!(
            error(&elf(3, false, vec![Phdr { memsz: 0x80, ..seg }], 0x10_0000)),
            "multiboot: ELF segment 0: p_filesz is larger than p_memsz"
        );
        assert_eq!(
            error(&elf(
                3,
                false,
                vec![Phdr {
                    offset: 0x1080,
                    filesz: 0x100,
                    ..seg
                }],
                0x10_0000
            )),
            "multiboot: ELF segment 0: its file bytes pass the end of the file"
        );
        assert_eq!(
            error(&elf(3, false, vec![seg], 0x10_0100)),
            "multiboot: entry point 0x100100 is outside everything loaded"
        );
        assert_eq!(
            error(&elf(
                3,
                false,
                vec![Phdr::load(0x1000, 0xFFFF_FF00, 0x100, 0x100)],
                0x10_0000
            )),
            "ELF segment 0 needs 0x100 bytes at 0xffffff00 but the guest has 32 MiB"
        );
        assert_eq!(
            error(&elf(3, false, vec![Phdr::load(0x1000, 0x1_4000, 0x100, 0x100)], 0x1_4000)),
            "ELF segment 0 at [0x14000, 0x14100) overlaps the multiboot information at [0x14000, 0x140ac)"
        );
        let many = vec![Phdr::load(0x1000, 0x10_0000, 0x100, 20 * MIB); 2];
        assert_eq!(
            error(&elf(3, false, many, 0x10_0000)),
            "multiboot: the ELF segments ask for 0x2800000 bytes in all but the guest has 32 MiB"
        );

        let mut image = multiboot_elf32(0);
        image[42] = 16; // e_phentsize
        assert_eq!(
            error(&image),
            "multiboot: bad ELF header: e_phentsize is smaller than a program header"
        );
        let mut image = multiboot_elf32(0);
        image[28..32].copy_from_slice(&0x5000u32.to_le_bytes()); // e_phoff
        assert_eq!(
            error(&image),
            "multiboot: ELF program headers (3 of 32 bytes at 0x5000) pass the end of the file"
        );
        let mut image = multiboot_elf32(0);
        image[5] = 2; // big-endian
        assert_eq!(
            error(&image),
            "multiboot: bad ELF header: not little-endian"
        );
        let mut image = multiboot_elf32(0);
        image[16] = 1; // ET_REL
        assert!(error(&image).contains("not an executable"));
    }

    #[test]
    fn module_and_string_limits() {
        let image = multiboot_elf32(0);
        let data = [1u8; 16];
        let modules: Vec<Module<'_>> = (0..=MAX_MODULES)
            .map(|_| Module {
                data: &data[..],
                cmdline: "m",
            })
            .collect();
        let mut ram = Ram::new(32 * MIB);
        let e = load(&mut ram, &image, "", &modules).unwrap_err();
        assert_eq!(
            e.to_string(),
            "multiboot: 33 modules given; at most 32 are supported"
        );
        let loaded = load(&mut ram, &image, "", &modules[..MAX_MODULES]).unwrap();
        assert!(loaded.placements.find(Item::Module(31)).is_some());

        let e = load(&mut ram, &image, "a\0b", &[]).unwrap_err();
        assert_eq!(e.to_string(), "the kernel's command line holds a NUL byte");
        let bad = [
            Module {
                data: &data[..],
                cmdline: "ok",
            },
            Module {
                data: &data[..],
                cmdline: "\0",
            },
        ];
        let e = load(&mut ram, &image, "", &bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the module 1's command line holds a NUL byte"
        );

        let long = "x".repeat(0x1_C000);
        let e = load(&mut ram, &image, &long, &[]).unwrap_err();
        assert!(
            matches!(e, LoadError::Multiboot(MultibootError::InfoTooLarge { .. })),
            "{e}"
        );

        // Modules that do not fit the guest.
        let big = vec![0u8; 31 * MIB as usize];
        let e = load(
            &mut ram,
            &image,
            "",
            &[Module {
                data: &big,
                cmdline: "",
            }],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "module 0 needs 0x1f00000 bytes at 0x106000 but the guest has 32 MiB"
        );
    }
}
