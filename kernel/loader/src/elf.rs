//! Just enough ELF to load an executable by its program headers: the file
//! header (32- or 64-bit, little-endian, x86) and the `PT_LOAD` entries
//! (System V ABI, "Object Files" and "Program Loading"). Every offset and
//! size from the file is checked against the file before use. The file is
//! an [`ImageSource`]: the file header and each program header are read
//! into small fixed buffers when needed, never the whole file.

use super::bytes::{u16_at, u32_at, u64_at, u8_at};
use super::error::{Item, LoadError, MultibootError};
use super::source::{read, ImageSource};

const MAGIC: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const CLASS_32: u8 = 1;
const CLASS_64: u8 = 2;
const DATA_LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PHDR32_LEN: u16 = 32;
const PHDR64_LEN: u16 = 56;
/// The 64-bit file header's length, the longer of the two.
const EHDR64_LEN: usize = 64;

/// Whether the file starts with the ELF magic.
pub(crate) fn is_elf(file: &[u8]) -> bool {
    file.starts_with(MAGIC)
}

/// A checked ELF file header.
#[derive(Debug)]
pub(crate) struct Elf<'a, S: ImageSource + ?Sized> {
    file: &'a S,
    class64: bool,
    /// `e_entry`.
    pub(crate) entry: u64,
    phoff: u64,
    phentsize: u64,
    /// `e_phnum`.
    pub(crate) phnum: u16,
}

/// A `PT_LOAD` segment whose file bytes lie inside the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    /// Where its file bytes start (`p_offset`); `p_filesz` of them lie in
    /// the file.
    pub(crate) offset: u64,
    /// `p_filesz`.
    pub(crate) filesz: u64,
    /// `p_memsz`, at least `p_filesz`.
    pub(crate) memsz: u64,
    /// `p_vaddr`.
    pub(crate) vaddr: u64,
    /// `p_paddr`: where Multiboot loads it.
    pub(crate) paddr: u64,
}

fn bad(reason: &'static str) -> MultibootError {
    MultibootError::BadElfHeader { reason }
}

impl<'a, S: ImageSource + ?Sized> Elf<'a, S> {
    /// Reads and checks the file header and the program header table's
    /// bounds.
    pub(crate) fn parse(image: &'a S) -> Result<Self, LoadError> {
        let mut head = [0u8; EHDR64_LEN];
        let head = head
            .get_mut(..image.len().min(EHDR64_LEN as u64) as usize)
            .unwrap_or_default();
        read(image, Item::Kernel, 0, head)?;
        let file: &[u8] = head;
        let short = bad("the file ends inside the ELF header");
        if !is_elf(file) {
            return Err(bad("no ELF magic").into());
        }
        let class64 = match u8_at(file, EI_CLASS).ok_or(short)? {
            CLASS_32 => false,
            CLASS_64 => true,
            _ => return Err(bad("EI_CLASS is neither 32- nor 64-bit").into()),
        };
        if u8_at(file, EI_DATA).ok_or(short)? != DATA_LSB {
            return Err(bad("not little-endian").into());
        }
        let e_type = u16_at(file, 16).ok_or(short)?;
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(bad("not an executable (e_type is neither ET_EXEC nor ET_DYN)").into());
        }
        let machine = u16_at(file, 18).ok_or(short)?;
        let (entry, phoff, phentsize, phnum, min_phentsize) = if class64 {
            if machine != EM_X86_64 {
                return Err(bad("a 64-bit ELF whose e_machine is not x86-64").into());
            }
            (
                u64_at(file, 24).ok_or(short)?,
                u64_at(file, 32).ok_or(short)?,
                u16_at(file, 54).ok_or(short)?,
                u16_at(file, 56).ok_or(short)?,
                PHDR64_LEN,
            )
        } else {
            if machine != EM_386 {
                return Err(bad("a 32-bit ELF whose e_machine is not i386").into());
            }
            (
                u64::from(u32_at(file, 24).ok_or(short)?),
                u64::from(u32_at(file, 28).ok_or(short)?),
                u16_at(file, 42).ok_or(short)?,
                u16_at(file, 44).ok_or(short)?,
                PHDR32_LEN,
            )
        };
        if phentsize < min_phentsize {
            return Err(bad("e_phentsize is smaller than a program header").into());
        }
        let outside = MultibootError::ProgramHeadersOutsideFile {
            phoff,
            phnum,
            phentsize,
        };
        let table_len = u64::from(phnum).saturating_mul(u64::from(phentsize));
        let fits = phoff
            .checked_add(table_len)
            .is_some_and(|end| end <= image.len());
        if !fits {
            return Err(outside.into());
        }
        Ok(Self {
            file: image,
            class64,
            entry,
            phoff,
            phentsize: u64::from(phentsize),
            phnum,
        })
    }

    /// Program header `index` if it is a `PT_LOAD` with a non-zero memory
    /// size, checked.
    pub(crate) fn load_segment(&self, index: u16) -> Result<Option<LoadSegment>, LoadError> {
        let bad_segment = |reason| MultibootError::BadSegment { index, reason };
        let short = bad_segment("program header outside the file");
        // `parse` checked the whole table lies in the file, and that an
        // entry is at least a program header long.
        let at = u64::from(index)
            .checked_mul(self.phentsize)
            .and_then(|o| o.checked_add(self.phoff))
            .filter(|&at| at < self.file.len())
            .ok_or(short)?;
        let wanted = if self.class64 { PHDR64_LEN } else { PHDR32_LEN };
        let mut entry = [0u8; PHDR64_LEN as usize];
        let entry = entry.get_mut(..usize::from(wanted)).unwrap_or_default();
        read(self.file, Item::Kernel, at, entry)?;
        let header: &[u8] = entry;
        if u32_at(header, 0).ok_or(short)? != PT_LOAD {
            return Ok(None);
        }
        let (offset, vaddr, paddr, filesz, memsz) = if self.class64 {
            (
                u64_at(header, 8).ok_or(short)?,
                u64_at(header, 16).ok_or(short)?,
                u64_at(header, 24).ok_or(short)?,
                u64_at(header, 32).ok_or(short)?,
                u64_at(header, 40).ok_or(short)?,
            )
        } else {
            (
                u64::from(u32_at(header, 4).ok_or(short)?),
                u64::from(u32_at(header, 8).ok_or(short)?),
                u64::from(u32_at(header, 12).ok_or(short)?),
                u64::from(u32_at(header, 16).ok_or(short)?),
                u64::from(u32_at(header, 20).ok_or(short)?),
            )
        };
        if memsz == 0 {
            return Ok(None);
        }
        if filesz > memsz {
            return Err(bad_segment("p_filesz is larger than p_memsz").into());
        }
        let in_file = offset
            .checked_add(filesz)
            .is_some_and(|end| end <= self.file.len());
        if !in_file {
            return Err(bad_segment("its file bytes pass the end of the file").into());
        }
        Ok(Some(LoadSegment {
            offset,
            filesz,
            memsz,
            vaddr,
            paddr,
        }))
    }

    /// The file the headers were read from.
    pub(crate) fn file(&self) -> &'a S {
        self.file
    }
}
