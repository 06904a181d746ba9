//! Test fixtures: guest RAM over a vector, a RAM that only checks bounds,
//! a page-table walker, and builders of synthetic images (bzImage,
//! Multiboot ELF32/ELF64, Multiboot a.out kludge) with exactly the fields
//! the loaders read.

use alloc::vec;
use alloc::vec::Vec;

use addr::GuestPhysAddr;

use super::{GuestMemory, LoadError, SliceMemory};

/// Guest RAM backed by a vector.
pub struct Ram(Vec<u8>);

impl Ram {
    pub fn new(size: u64) -> Self {
        Self(vec![0; size as usize])
    }

    pub fn memory(&mut self) -> SliceMemory<'_> {
        SliceMemory::new(&mut self.0)
    }

    pub fn bytes(&self, at: u64, len: usize) -> &[u8] {
        &self.0[at as usize..at as usize + len]
    }

    pub fn fill(&mut self, at: u64, len: usize, value: u8) {
        self.0[at as usize..at as usize + len].fill(value);
    }

    pub fn u32(&self, at: u64) -> u32 {
        u32::from_le_bytes(self.bytes(at, 4).try_into().unwrap())
    }

    pub fn u64(&self, at: u64) -> u64 {
        u64::from_le_bytes(self.bytes(at, 8).try_into().unwrap())
    }

    /// The NUL-terminated string at `at`.
    pub fn c_str(&self, at: u64) -> &str {
        let rest = &self.0[at as usize..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .expect("unterminated string");
        core::str::from_utf8(&rest[..end]).unwrap()
    }

    /// Walks the 4-level page tables at `cr3` for `virt`, as the MMU would,
    /// handling 1 GiB, 2 MiB and 4 KiB pages. `None` where not present.
    pub fn translate(&self, cr3: u64, virt: u64) -> Option<u64> {
        const PRESENT: u64 = 1;
        const HUGE: u64 = 1 << 7;
        const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
        if virt >> 48 != 0 {
            return None;
        }
        let mut table = cr3 & ADDR;
        for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
            let index = (virt >> shift) & 0x1FF;
            let entry = self.u64(table + index * 8);
            if entry & PRESENT == 0 {
                return None;
            }
            assert!(entry & 2 != 0, "identity maps are writable");
            if level == 1 || (entry & HUGE != 0 && level <= 3) {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & ADDR & !page_mask) | (virt & page_mask));
            }
            table = entry & ADDR;
        }
        None
    }
}

/// Guest memory of any size that stores nothing: it checks every write
/// lies in RAM and panics otherwise, because the loaders must check their
/// placements before they write.
pub struct NullMemory {
    size: u64,
}

impl NullMemory {
    pub fn new(size: u64) -> Self {
        Self { size }
    }

    fn check(&self, gpa: GuestPhysAddr, len: u64) -> Result<(), LoadError> {
        let inside = self.layout().is_some_and(|ram| ram.contains(gpa, len));
        assert!(
            inside,
            "loader wrote {len:#x} bytes at {gpa} outside RAM of {:#x}",
            self.size
        );
        Ok(())
    }
}

impl GuestMemory for NullMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), LoadError> {
        self.check(gpa, bytes.len() as u64)
    }

    fn zero(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), LoadError> {
        self.check(gpa, len)
    }
}

fn put(buf: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if buf.len() < at + bytes.len() {
        buf.resize(at + bytes.len(), 0);
    }
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A synthetic bzImage: boot sector and setup header, setup sectors of
/// filler, then a patterned protected-mode kernel.
#[derive(Clone, Copy, Debug)]
pub struct BzImage {
    pub setup_sects: u8,
    pub header_jump: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub relocatable: u8,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    pub payload_len: usize,
}

impl Default for BzImage {
    /// Like a current x86-64 defconfig kernel: protocol 2.15, relocatable,
    /// 2 MiB aligned, preferring 16 MiB.
    fn default() -> Self {
        Self {
            setup_sects: 3,
            // 0x202 + 0x6A = 0x26C, the end of the 2.15 header.
            header_jump: 0x6A,
            version: 0x020F,
            loadflags: 0x01,
            // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
            xloadflags: 0x03,
            relocatable: 1,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            cmdline_size: 2047,
            initrd_addr_max: 0x7FFF_FFFF,
            payload_len: 0x3000,
        }
    }
}

impl BzImage {
    pub fn setup_len(&self) -> usize {
        (usize::from(if self.setup_sects == 0 {
            4
        } else {
            self.setup_sects
        }) + 1)
            * 512
    }

    pub fn build(&self) -> Vec<u8> {
        let mut image = vec![0xA5; self.setup_len()];
        image[..0x1F1].fill(0);
        image[0x1F1..0x290].fill(0);
        image[0x1F1] = self.setup_sects;
        put(&mut image, 0x1FE, &[0x55, 0xAA]);
        put(&mut image, 0x200, &[0xEB, self.header_jump]);
        put(&mut image, 0x202, b"HdrS");
        put(&mut image, 0x206, &self.version.to_le_bytes());
        put(&mut image, 0x20E, &0x1234u16.to_le_bytes()); // kernel_version
        put(&mut image, 0x211, &[self.loadflags]);
        put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
        put(&mut image, 0x22C, &self.initrd_addr_max.to_le_bytes());
        put(&mut image, 0x230, &self.kernel_alignment.to_le_bytes());
        put(&mut image, 0x234, &[self.relocatable, 21]);
        put(&mut image, 0x236, &self.xloadflags.to_le_bytes());
        put(&mut image, 0x238, &self.cmdline_size.to_le_bytes());
        put(&mut image, 0x248, &0x1_2345u32.to_le_bytes()); // payload_offset
        put(&mut image, 0x24C, &0x40u32.to_le_bytes()); // payload_length
        put(&mut image, 0x250, &0xDEAD_BEEFu64.to_le_bytes()); // setup_data (must not survive)
        put(&mut image, 0x258, &self.pref_address.to_le_bytes());
        put(&mut image, 0x260, &self.init_size.to_le_bytes());
        put(&mut image, 0x264, &0x190u32.to_le_bytes()); // handover_offset
        put(&mut image, 0x268, &0x5000u32.to_le_bytes()); // kernel_info_offset
        image.extend((0..self.payload_len).map(|i| (i * 7 + 3) as u8));
        image
    }
}

/// The 12-byte Multiboot header, with the checksum made right.
pub fn multiboot_header(flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(0x1BAD_B002u32.to_le_bytes());
    h.extend(flags.to_le_bytes());
    h.extend(
        0u32.wrapping_sub(0x1BAD_B002)
            .wrapping_sub(flags)
            .to_le_bytes(),
    );
    h
}

/// One program header of a synthetic ELF.
#[derive(Clone, Copy, Debug)]
pub struct Phdr {
    pub p_type: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Phdr {
    pub fn load(offset: u64, addr: u64, filesz: u64, memsz: u64) -> Self {
        Self {
            p_type: 1,
            offset,
            vaddr: addr,
            paddr: addr,
            filesz,
            memsz,
        }
    }
}

/// A synthetic ELF executable: the header, program headers at 0x40, then
/// whatever the caller puts at the segments' offsets.
pub struct Elf {
    pub class64: bool,
    pub machine: u16,
    pub entry: u64,
    pub phdrs: Vec<Phdr>,
    /// (offset, bytes) pieces of the file.
    pub contents: Vec<(usize, Vec<u8>)>,
}

impl Elf {
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        put(&mut f, 0, b"\x7fELF");
        put(&mut f, 4, &[if self.class64 { 2 } else { 1 }, 1, 1]);
        put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut f, 18, &self.machine.to_le_bytes());
        put(&mut f, 20, &1u32.to_le_bytes());
        let phoff = 0x40usize;
        if self.class64 {
            put(&mut f, 24, &self.entry.to_le_bytes());
            put(&mut f, 32, &(phoff as u64).to_le_bytes());
            put(&mut f, 52, &64u16.to_le_bytes());
            put(&mut f, 54, &56u16.to_le_bytes());
            put(&mut f, 56, &(self.phdrs.len() as u16).to_le_bytes());
            for (i, p) in self.phdrs.iter().enumerate() {
                let at = phoff + i * 56;
                put(&mut f, at, &p.p_type.to_le_bytes());
                put(&mut f, at + 4, &5u32.to_le_bytes());
                put(&mut f, at + 8, &p.offset.to_le_bytes());
                put(&mut f, at + 16, &p.vaddr.to_le_bytes());
                put(&mut f, at + 24, &p.paddr.to_le_bytes());
                put(&mut f, at + 32, &p.filesz.to_le_bytes());
                put(&mut f, at + 40, &p.memsz.to_le_bytes());
                put(&mut f, at + 48, &0x1000u64.to_le_bytes());
            }
        } else {
            put(&mut f, 24, &(self.entry as u32).to_le_bytes());
            put(&mut f, 28, &(phoff as u32).to_le_bytes());
            put(&mut f, 40, &52u16.to_le_bytes());
            put(&mut f, 42, &32u16.to_le_bytes());
            put(&mut f, 44, &(self.phdrs.len() as u16).to_le_bytes());
            for (i, p) in self.phdrs.iter().enumerate() {
                let at = phoff + i * 32;
                put(&mut f, at, &p.p_type.to_le_bytes());
                put(&mut f, at + 4, &(p.offset as u32).to_le_bytes());
                put(&mut f, at + 8, &(p.vaddr as u32).to_le_bytes());
                put(&mut f, at + 12, &(p.paddr as u32).to_le_bytes());
                put(&mut f, at + 16, &(p.filesz as u32).to_le_bytes());
                put(&mut f, at + 20, &(p.memsz as u32).to_le_bytes());
                put(&mut f, at + 24, &5u32.to_le_bytes());
                put(&mut f, at + 28, &0x1000u32.to_le_bytes());
            }
        }
        for (at, bytes) in &self.contents {
            put(&mut f, *at, bytes);
        }
        f
    }
}

/// A small Multiboot ELF32 kernel: the header at 0x1000 inside a text
/// segment loaded at 1 MiB, and a data segment at 1 MiB + 0x3000 with
/// 0x100 file bytes and 0x2000 bytes of bss. Entry at 1 MiB + 0x10.
pub fn multiboot_elf32(flags: u32) -> Vec<u8> {
    let mut text = vec![0x90u8; 0x2000];
    text[..12].copy_from_slice(&multiboot_header(flags));
    Elf {
        class64: false,
        machine: 3,
        entry: 0x10_0010,
        phdrs: vec![
            Phdr {
                p_type: 6, // PT_PHDR: not loaded
                offset: 0x40,
                vaddr: 0,
                paddr: 0,
                filesz: 0x40,
                memsz: 0x40,
            },
            Phdr::load(0x1000, 0x10_0000, 0x2000, 0x2000),
            Phdr::load(0x3000, 0x10_3000, 0x100, 0x2100),
        ],
        contents: vec![(0x1000, text), (0x3000, vec![0xDA; 0x100])],
    }
    .build()
}

/// A Multiboot a.out kludge image: 0x20 bytes of preamble the kernel does
/// not load, then the text, which starts with the header; loaded at 1 MiB.
pub struct Aout {
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
    pub text_len: usize,
}

/// Where the a.out fixture's header sits in the file.
pub const AOUT_HEADER_OFFSET: usize = 0x20;

impl Default for Aout {
    fn default() -> Self {
        Self {
            flags: 1 << 16 | 0b11,
            header_addr: 0x10_0000,
            load_addr: 0x10_0000,
            load_end_addr: 0x10_0800,
            bss_end_addr: 0x10_2000,
            entry_addr: 0x10_0040,
            text_len: 0x1000,
        }
    }
}

impl Aout {
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0xEE; AOUT_HEADER_OFFSET];
        let mut text: Vec<u8> = (0..self.text_len).map(|i| (i % 251) as u8).collect();
        let mut header = multiboot_header(self.flags);
        for v in [
            self.header_addr,
            self.load_addr,
            self.load_end_addr,
            self.bss_end_addr,
            self.entry_addr,
        ] {
            header.extend(v.to_le_bytes());
        }
        text[..header.len()].copy_from_slice(&header);
        f.extend(text);
        f
    }
}
