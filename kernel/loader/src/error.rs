//! What can go wrong while loading a guest image, in words a user can act
//! on: which format, which field or which piece of the guest's memory, and
//! the numbers involved.

use core::fmt;

use addr::GuestPhysAddr;

use super::layout::Placement;

/// A piece of guest memory the loader fills, named in placements and
/// errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// The global descriptor table for protected and long mode entries.
    Gdt,
    /// The identity-mapping page tables for long mode entries.
    PageTables,
    /// Linux's `boot_params` ("zero page").
    BootParams,
    /// The kernel command line.
    CommandLine,
    /// The kernel: for Linux the memory it uses until it has read its
    /// memory map (the loaded image and `init_size` from its runtime
    /// address); for Multiboot the loaded image with its bss.
    Kernel,
    /// One loadable segment of an ELF image (index into the program
    /// headers).
    Segment(u16),
    /// The Linux initial ramdisk.
    Initrd,
    /// The Multiboot information structure with its memory map, module list
    /// and strings.
    MultibootInfo,
    /// A Multiboot module (index in the module list).
    Module(u16),
    /// A flat image.
    Image,
    /// The ACPI tables that describe the guest's platform.
    FirmwareTables,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Gdt => f.write_str("GDT"),
            Self::PageTables => f.write_str("page tables"),
            Self::BootParams => f.write_str("boot_params"),
            Self::CommandLine => f.write_str("command line"),
            Self::Kernel => f.write_str("kernel"),
            Self::Segment(i) => write!(f, "ELF segment {i}"),
            Self::Initrd => f.write_str("initrd"),
            Self::MultibootInfo => f.write_str("multiboot information"),
            Self::Module(i) => write!(f, "module {i}"),
            Self::Image => f.write_str("image"),
            Self::FirmwareTables => f.write_str("ACPI tables"),
        }
    }
}

/// A byte count printed the way people write memory sizes: `16 MiB`,
/// `640 KiB`, else `0x1234 bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        match self.0 {
            0 => f.write_str("0 bytes"),
            n if n % GIB == 0 => write!(f, "{} GiB", n / GIB),
            n if n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n:#x} bytes"),
        }
    }
}

/// Everything that stops a guest image from loading.
///
/// Images are untrusted input: every malformed field and every placement
/// that does not fit the guest ends up here, never in a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// A [`GuestMemory`](super::GuestMemory) write fell outside the guest's
    /// RAM. The loaders check placements first, so this comes only from a
    /// memory implementation with holes.
    OutsideRam {
        /// Where the write started.
        at: GuestPhysAddr,
        /// How many bytes it wrote.
        len: u64,
        /// The guest's RAM size.
        ram: u64,
    },
    /// The guest has more RAM than a guest may have (see
    /// [`MAX_GUEST_RAM`](super::layout::MAX_GUEST_RAM)).
    GuestTooLarge {
        /// The guest's RAM size.
        ram: u64,
    },
    /// Something the loader must place does not fit in the guest's RAM.
    DoesNotFit {
        /// What was being placed.
        item: Item,
        /// Where it goes.
        at: GuestPhysAddr,
        /// How many bytes it needs.
        len: u64,
        /// The guest's RAM size.
        ram: u64,
    },
    /// Two things the loader places would share memory.
    Overlap {
        /// What was being placed.
        item: Item,
        /// Where it goes.
        at: GuestPhysAddr,
        /// How many bytes it needs.
        len: u64,
        /// What is already there.
        other: Placement,
    },
    /// The command line is longer than the kernel or the loader's area for
    /// it accepts.
    CommandLineTooLong {
        /// Its length in bytes, without a terminating NUL.
        len: usize,
        /// The most bytes accepted.
        max: u64,
    },
    /// A command line (the kernel's, or a module's) holds a NUL byte, which
    /// would cut it short.
    NulInCommandLine {
        /// Whose command line.
        item: Item,
    },
    /// The Linux image is malformed or asks for something unsupported.
    BzImage(BzImageError),
    /// The Multiboot image is malformed or asks for something unsupported.
    Multiboot(MultibootError),
    /// The flat image's parameters do not work.
    Flat(FlatError),
    /// Reading an image failed part way: its file shrank while it loaded,
    /// or its source reported an error.
    Read {
        /// Whose bytes were being read.
        item: Item,
        /// Where in its file.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// What went wrong.
        error: ReadError,
    },
    /// The firmware tables cannot describe this many vCPUs.
    TooManyCpus {
        /// The guest's vCPUs.
        cpus: u32,
        /// The most the tables list.
        max: u32,
    },
    /// The kernel heap could not lend the loader its copy buffer.
    NoMemory {
        /// The bytes asked for.
        bytes: u64,
    },
}

/// Why an [`ImageSource`](super::ImageSource) read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The image ends before the bytes asked for: it is shorter than the
    /// length it had when the load started.
    Ended {
        /// Its length now, as far as the source knows.
        len: u64,
    },
    /// The source could not be read; it keeps the cause (a disk or file
    /// system error) for its owner to report.
    Failed,
}

impl From<BzImageError> for LoadError {
    fn from(e: BzImageError) -> Self {
        Self::BzImage(e)
    }
}

impl From<MultibootError> for LoadError {
    fn from(e: MultibootError) -> Self {
        Self::Multiboot(e)
    }
}

impl From<FlatError> for LoadError {
    fn from(e: FlatError) -> Self {
        Self::Flat(e)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutsideRam { at, len, ram } => write!(
                f,
                "write of {len:#x} bytes at {at} is outside the guest's {} of RAM",
                Size(ram)
            ),
            Self::Read {
                item,
                offset,
                len,
                error: ReadError::Ended { len: now },
            } => write!(
                f,
                "{item}: the file ended at {now:#x} bytes, before the {len:#x} bytes at offset \
                 {offset:#x} could be read; it changed while it was loading"
            ),
            Self::Read {
                item,
                offset,
                len,
                error: ReadError::Failed,
            } => write!(
                f,
                "{item}: reading {len:#x} bytes at offset {offset:#x} of its file failed"
            ),
            Self::TooManyCpus { cpus, max } => {
                write!(f, "the ACPI tables describe 1 to {max} vCPUs, not {cpus}")
            }
            Self::NoMemory { bytes } => write!(
                f,
                "no heap left for the loader's {} copy buffer",
                Size(bytes)
            ),
            Self::GuestTooLarge { ram } => write!(
                f,
                "the guest's {} of RAM pass the most a guest may have (its RAM past 3 GiB \
                 lies from 4 GiB up and must end by 16 GiB); give it at most {}",
                Size(ram),
                Size(super::layout::MAX_GUEST_RAM)
            ),
            Self::DoesNotFit { item, at, len, ram } => write!(
                f,
                "{item} needs {len:#x} bytes at {at} but the guest has {}",
                Size(ram)
            ),
            Self::Overlap {
                item,
                at,
                len,
                other,
            } => write!(
                f,
                "{item} at [{at}, {:#x}) overlaps the {} at [{}, {:#x})",
                at.as_u64().saturating_add(len),
                other.item,
                other.start,
                other.end()
            ),
            Self::CommandLineTooLong { len, max } => write!(
                f,
                "command line of {len} bytes is longer than the {max} bytes allowed"
            ),
            Self::NulInCommandLine { item } => {
                write!(f, "the {item}'s command line holds a NUL byte")
            }
            Self::BzImage(e) => write!(f, "bzImage: {e}"),
            Self::Multiboot(e) => write!(f, "multiboot: {e}"),
            Self::Flat(e) => write!(f, "flat: {e}"),
        }
    }
}

/// A Linux boot protocol version as the setup header stores it (`0x020f`
/// is 2.15), printed as `2.15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion(pub u16);

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 >> 8, self.0 & 0xff)
    }
}

/// What is wrong with a Linux bzImage (Documentation/arch/x86/boot.rst).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BzImageError {
    /// The file is too short to hold a setup header.
    TooShort {
        /// The file's length.
        len: usize,
    },
    /// No `HdrS` at 0x202: not a Linux kernel, or one older than protocol
    /// 2.00.
    MagicMissing,
    /// The boot protocol predates what the loader needs (2.06: cmdline_size
    /// and initrd_addr_max).
    ProtocolTooOld {
        /// The image's protocol version.
        version: ProtocolVersion,
    },
    /// The header (its length comes from the jump at 0x200) stops before the
    /// fields its protocol version promises, or runs past the file or past
    /// the room `boot_params` has for it (0x290).
    HeaderLength {
        /// Where the header ends (0x202 plus the byte at 0x201).
        end: usize,
        /// The least end the protocol version needs.
        needed: usize,
        /// The most the file and `boot_params` allow.
        max: usize,
        /// The image's protocol version.
        version: ProtocolVersion,
    },
    /// The setup sectors leave no protected-mode kernel in the file, or one
    /// too short to hold the 64-bit entry point at offset 0x200.
    NoKernel {
        /// The length of the real-mode setup code (`(setup_sects + 1) * 512`).
        setup_len: usize,
        /// The protected-mode kernel's length.
        kernel_len: usize,
        /// The least length accepted.
        needed: usize,
    },
    /// `loadflags` bit 0 (LOADED_HIGH) is clear: a zImage, which runs below
    /// 1 MiB.
    NotLoadedHigh,
    /// A relocatable kernel whose `kernel_alignment` is not a power of two.
    BadAlignment {
        /// The field's value.
        kernel_alignment: u32,
    },
    /// `pref_address` lies below 1 MiB, in the loader's own area.
    PrefAddressTooLow {
        /// The field's value.
        pref_address: u64,
    },
    /// No 4 KiB-aligned spot between the kernel's end and the highest
    /// address the initrd may use holds the initrd.
    InitrdDoesNotFit {
        /// The initrd's length.
        len: u64,
        /// The first address past the kernel.
        kernel_end: u64,
        /// The first address the initrd may not use: the least of
        /// `initrd_addr_max + 1`, the end of RAM and 4 GiB.
        limit: u64,
        /// The header's `initrd_addr_max`.
        initrd_addr_max: u32,
    },
}

impl fmt::Display for BzImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(
                f,
                "file of {len} bytes is too short for a setup header (is it a bzImage?)"
            ),
            Self::MagicMissing => f.write_str(
                "setup header magic \"HdrS\" missing at 0x202 (not a bzImage, or older than boot protocol 2.00)",
            ),
            Self::ProtocolTooOld { version } => write!(
                f,
                "boot protocol {version} is too old; Ferrovisor needs 2.06 or newer (Linux 2.6.22+)"
            ),
            Self::HeaderLength { end, needed, max, version } => write!(
                f,
                "setup header ends at {end:#x} (0x202 + the byte at 0x201) but boot protocol \
                 {version} needs it to reach {needed:#x} and it may not pass {max:#x}"
            ),
            Self::NoKernel { setup_len, kernel_len, needed } => write!(
                f,
                "after {setup_len:#x} bytes of setup code (setup_sects) the protected-mode kernel \
                 has {kernel_len:#x} bytes; at least {needed:#x} are needed"
            ),
            Self::NotLoadedHigh => f.write_str(
                "loadflags LOADED_HIGH is clear: a zImage, which runs below 1 MiB, is not supported; build a bzImage",
            ),
            Self::BadAlignment { kernel_alignment } => write!(
                f,
                "kernel_alignment {kernel_alignment:#x} of a relocatable kernel is not a power of two"
            ),
            Self::PrefAddressTooLow { pref_address } => write!(
                f,
                "pref_address {pref_address:#x} is below 1 MiB, where the loader keeps its own structures"
            ),
            Self::InitrdDoesNotFit { len, kernel_end, limit, initrd_addr_max } => write!(
                f,
                "initrd of {len:#x} bytes does not fit between the kernel's end at {kernel_end:#x} \
                 and {limit:#x} (initrd_addr_max {initrd_addr_max:#x}, end of RAM, 4 GiB); \
                 give the guest more memory or use a smaller initrd"
            ),
        }
    }
}

/// What is wrong with a Multiboot (version 0.6.96) image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultibootError {
    /// No magic `0x1BADB002` at a 4-byte aligned offset in the first 8192
    /// bytes.
    NoHeader,
    /// The magic was found but magic + flags + checksum is not zero.
    ChecksumMismatch {
        /// The header's offset in the file.
        offset: usize,
    },
    /// The header's flags need fields that lie past the file or past the
    /// first 8192 bytes.
    HeaderCutOff {
        /// The header's offset in the file.
        offset: usize,
        /// How many header bytes the flags need.
        needed: usize,
    },
    /// A requirement flag (bits 0-15) the loader cannot honour.
    UnsupportedRequirement {
        /// The flag's bit number.
        bit: u32,
    },
    /// a.out kludge: `load_addr` is above `header_addr`.
    LoadAddrAboveHeader {
        /// The header's `load_addr`.
        load_addr: u32,
        /// The header's `header_addr`.
        header_addr: u32,
    },
    /// a.out kludge: `header_addr - load_addr` is more than the header's
    /// offset in the file, so the text would start before the file does.
    TextBeforeFile {
        /// `header_addr - load_addr`.
        distance: u32,
        /// The header's offset in the file.
        offset: usize,
    },
    /// a.out kludge: `load_end_addr` is below `load_addr` or asks for more
    /// bytes than the file holds.
    BadLoadEnd {
        /// The header's `load_addr`.
        load_addr: u32,
        /// The header's `load_end_addr`.
        load_end_addr: u32,
        /// The bytes the file holds from the text's start.
        available: u64,
    },
    /// a.out kludge: `bss_end_addr` is below the end of the loaded data.
    BssEndBeforeLoadEnd {
        /// The header's `bss_end_addr`.
        bss_end_addr: u32,
        /// The end of the loaded data.
        load_end: u64,
    },
    /// The entry point lies outside everything loaded.
    EntryOutsideImage {
        /// The entry point.
        entry: u64,
    },
    /// Flags bit 16 is clear and the file is not ELF, so there is no way to
    /// know where it loads.
    NotElf,
    /// The ELF header is malformed or not for x86.
    BadElfHeader {
        /// What is wrong.
        reason: &'static str,
    },
    /// The program header table does not fit in the file.
    ProgramHeadersOutsideFile {
        /// `e_phoff`.
        phoff: u64,
        /// `e_phnum`.
        phnum: u16,
        /// `e_phentsize`.
        phentsize: u16,
    },
    /// A loadable segment's file bytes lie outside the file, or its file size
    /// exceeds its memory size.
    BadSegment {
        /// The segment's index in the program headers.
        index: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// The ELF image has no loadable segment.
    NoLoadableSegment,
    /// The loadable segments together ask for more bytes than the guest has.
    SegmentsTooLarge {
        /// Their total memory size.
        total: u64,
        /// The guest's RAM size.
        ram: u64,
    },
    /// More modules than the loader takes.
    TooManyModules {
        /// How many were given.
        count: usize,
        /// The most accepted.
        max: usize,
    },
    /// The information structure, memory map, module list and strings do
    /// not fit the area the loader keeps for them.
    InfoTooLarge {
        /// Their size.
        len: u64,
        /// The area's size.
        max: u64,
    },
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoHeader => f.write_str(
                "no header (magic 0x1BADB002, 4-byte aligned) in the first 8192 bytes",
            ),
            Self::ChecksumMismatch { offset } => write!(
                f,
                "checksum mismatch in the header at offset {offset:#x} (magic + flags + checksum must be 0)"
            ),
            Self::HeaderCutOff { offset, needed } => write!(
                f,
                "the header at offset {offset:#x} needs {needed} bytes for its flags but they pass the \
                 end of the file or its first 8192 bytes"
            ),
            Self::UnsupportedRequirement { bit } => write!(
                f,
                "header flags bit {bit} asks for a feature Ferrovisor does not provide"
            ),
            Self::LoadAddrAboveHeader { load_addr, header_addr } => write!(
                f,
                "load_addr {load_addr:#x} is above header_addr {header_addr:#x}"
            ),
            Self::TextBeforeFile { distance, offset } => write!(
                f,
                "header_addr - load_addr = {distance:#x} but the header is only {offset:#x} bytes into the file"
            ),
            Self::BadLoadEnd { load_addr, load_end_addr, available } => write!(
                f,
                "load_end_addr {load_end_addr:#x} is below load_addr {load_addr:#x} or past the \
                 {available:#x} bytes the file holds from there"
            ),
            Self::BssEndBeforeLoadEnd { bss_end_addr, load_end } => write!(
                f,
                "bss_end_addr {bss_end_addr:#x} is below the end of the loaded data at {load_end:#x}"
            ),
            Self::EntryOutsideImage { entry } => {
                write!(f, "entry point {entry:#x} is outside everything loaded")
            }
            Self::NotElf => f.write_str(
                "the image is not ELF and its header does not set flags bit 16 (a.out kludge addresses)",
            ),
            Self::BadElfHeader { reason } => write!(f, "bad ELF header: {reason}"),
            Self::ProgramHeadersOutsideFile { phoff, phnum, phentsize } => write!(
                f,
                "ELF program headers ({phnum} of {phentsize} bytes at {phoff:#x}) pass the end of the file"
            ),
            Self::BadSegment { index, reason } => write!(f, "ELF segment {index}: {reason}"),
            Self::NoLoadableSegment => f.write_str("the ELF image has no loadable segment"),
            Self::SegmentsTooLarge { total, ram } => write!(
                f,
                "the ELF segments ask for {total:#x} bytes in all but the guest has {}",
                Size(ram)
            ),
            Self::TooManyModules { count, max } => {
                write!(f, "{count} modules given; at most {max} are supported")
            }
            Self::InfoTooLarge { len, max } => write!(
                f,
                "boot information of {len:#x} bytes (command lines, modules, memory map) does not fit \
                 the {} area for it",
                Size(max)
            ),
        }
    }
}

/// What is wrong with a flat image's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlatError {
    /// The image has no bytes.
    Empty,
    /// The entry point is not inside the loaded image.
    EntryOutsideImage {
        /// The entry point.
        entry: GuestPhysAddr,
        /// The image's first address.
        start: GuestPhysAddr,
        /// The first address past the image.
        end: u64,
    },
    /// A real-mode entry point must be reachable as CS:IP, below 1 MiB.
    RealModeEntryTooHigh {
        /// The entry point.
        entry: GuestPhysAddr,
    },
    /// The long-mode identity map size is outside what the loader builds.
    BadIdentityMap {
        /// The GiB asked for.
        gib: u32,
        /// The most the loader maps.
        max: u64,
    },
    /// The long-mode entry point is not identity-mapped.
    EntryNotMapped {
        /// The entry point.
        entry: GuestPhysAddr,
        /// The GiB identity-mapped.
        gib: u32,
    },
}

impl fmt::Display for FlatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("the image is empty"),
            Self::EntryOutsideImage { entry, start, end } => write!(
                f,
                "entry {entry} is outside the image at [{start}, {end:#x}); check load_address and entry"
            ),
            Self::RealModeEntryTooHigh { entry } => write!(
                f,
                "real-mode entry {entry} is not below 1 MiB, so no CS:IP reaches it"
            ),
            Self::BadIdentityMap { gib, max } => write!(
                f,
                "long mode identity map of {gib} GiB asked for; 1 to {max} GiB are supported"
            ),
            Self::EntryNotMapped { entry, gib } => write!(
                f,
                "long-mode entry {entry} lies above the {gib} GiB the loader identity-maps"
            ),
        }
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
    use super::*;

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(Size(16 << 20).to_string(), "16 MiB");
        assert_eq!(Size(2 << 30).to_string(), "2 GiB");
        assert_eq!(Size(640 << 10).to_string(), "640 KiB");
        assert_eq!(Size(0x1001).to_string(), "0x1001 bytes");
        assert_eq!(Size(0).to_string(), "0 bytes");
    }

    #[test]
    fn protocol_versions_print_as_major_dot_minor() {
        assert_eq!(ProtocolVersion(0x020f).to_string(), "2.15");
        assert_eq!(ProtocolVersion(0x0206).to_string(), "2.06");
    }

    #[test]
    fn does_not_fit_names_item_size_address_and_guest() {
        let e = LoadError::DoesNotFit {
            item: Item::Kernel,
            at: GuestPhysAddr::new(0x100_0000),
            len: 0x200_0000,
            ram: 16 << 20,
        };
        assert_eq!(
            e.to_string(),
            "kernel needs 0x2000000 bytes at 0x1000000 but the guest has 16 MiB"
        );
    }
}
