//! Just enough ELF to load an executable by its program headers: the file
//! header (32- or 64-bit, little-endian, x86) and the `PT_LOAD` entries
//! (System V ABI, "Object Files" and "Program Loading"). Every offset and
//! size from the file is checked against the file before use.

use super::bytes::{u16_at, u32_at, u64_at, u8_at};
use super::error::MultibootError;

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

/// Whether the file starts with the ELF magic.
pub(crate) fn is_elf(file: &[u8]) -> bool {
    file.starts_with(MAGIC)
}

/// A checked ELF file header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elf<'a> {
    file: &'a [u8],
    class64: bool,
    /// `e_entry`.
    pub(crate) entry: u64,
    phoff: usize,
    phentsize: usize,
    /// `e_phnum`.
    pub(crate) phnum: u16,
}

/// A `PT_LOAD` segment whose file bytes lie inside the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    /// Its file bytes, `p_filesz` of them.
    pub(crate) offset: usize,
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

impl<'a> Elf<'a> {
    /// Reads and checks the file header and the program header table's
    /// bounds.
    pub(crate) fn parse(file: &'a [u8]) -> Result<Self, MultibootError> {
        let short = bad("the file ends inside the ELF header");
        if !is_elf(file) {
            return Err(bad("no ELF magic"));
        }
        let class64 = match u8_at(file, EI_CLASS).ok_or(short)? {
            CLASS_32 => false,
            CLASS_64 => true,
            _ => return Err(bad("EI_CLASS is neither 32- nor 64-bit")),
        };
        if u8_at(file, EI_DATA).ok_or(short)? != DATA_LSB {
            return Err(bad("not little-endian"));
        }
        let e_type = u16_at(file, 16).ok_or(short)?;
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(bad(
                "not an executable (e_type is neither ET_EXEC nor ET_DYN)",
            ));
        }
        let machine = u16_at(file, 18).ok_or(short)?;
        let (entry, phoff, phentsize, phnum, min_phentsize) = if class64 {
            if machine != EM_X86_64 {
                return Err(bad("a 64-bit ELF whose e_machine is not x86-64"));
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
                return Err(bad("a 32-bit ELF whose e_machine is not i386"));
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
            return Err(bad("e_phentsize is smaller than a program header"));
        }
        let outside = MultibootError::ProgramHeadersOutsideFile {
            phoff,
            phnum,
            phentsize,
        };
        let table_len = u64::from(phnum) * u64::from(phentsize);
        let fits = phoff
            .checked_add(table_len)
            .is_some_and(|end| end <= file.len() as u64);
        if !fits {
            return Err(outside);
        }
        Ok(Self {
            file,
            class64,
            entry,
            // Both fit in the file's length, so in usize.
            phoff: usize::try_from(phoff).map_err(|_| outside)?,
            phentsize: usize::from(phentsize),
            phnum,
        })
    }

    /// Program header `index` if it is a `PT_LOAD` with a non-zero memory
    /// size, checked.
    pub(crate) fn load_segment(&self, index: u16) -> Result<Option<LoadSegment>, MultibootError> {
        let bad_segment = |reason| MultibootError::BadSegment { index, reason };
        // `parse` checked the whole table lies in the file.
        let at = usize::from(index)
            .checked_mul(self.phentsize)
            .and_then(|o| o.checked_add(self.phoff))
            .ok_or(bad_segment("program header outside the file"))?;
        let header = self
            .file
            .get(at..)
            .ok_or(bad_segment("program header outside the file"))?;
        let short = bad_segment("program header outside the file");
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
            return Err(bad_segment("p_filesz is larger than p_memsz"));
        }
        let in_file = offset
            .checked_add(filesz)
            .is_some_and(|end| end <= self.file.len() as u64);
        if !in_file {
            return Err(bad_segment("its file bytes pass the end of the file"));
        }
        Ok(Some(LoadSegment {
            offset: usize::try_from(offset).map_err(|_| short)?,
            filesz,
            memsz,
            vaddr,
            paddr,
        }))
    }

    /// The file bytes of a segment [`load_segment`](Self::load_segment)
    /// returned.
    pub(crate) fn file_bytes(&self, segment: &LoadSegment) -> &'a [u8] {
        let end = segment.offset.saturating_add(segment.filesz as usize);
        self.file.get(segment.offset..end).unwrap_or_default()
    }
}
