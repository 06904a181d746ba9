//! W^X for the host's own 4-level page tables: which mappings may be
//! executed, which may be written, and the walk that makes every leaf
//! entry say so.
//!
//! The policy is decided here and applied through [`TableMemory`], which the
//! caller implements over the live tables (the kernel: its physical-memory
//! window) and the host tests over ordinary memory. Nothing here loads CR3,
//! touches EFER or flushes a TLB: the caller does, once [`enforce`] returns.
//!
//! Rules (SDM Vol. 3A 4.5, "4-Level Paging", and 4.6, "Access Rights"):
//! a leaf entry is the one with PS set (PDPTE: 1 GiB, PDE: 2 MiB) or any
//! PTE (4 KiB). With EFER.NXE = 1, XD (bit 63) in any entry of a walk
//! forbids instruction fetches; with CR0.WP = 1, R/W clear in any entry
//! forbids supervisor writes. The walk only ever sets XD and clears R/W in
//! leaves, so the access rights can only shrink, and splits a large page
//! whose range is partly code or partly read-only into the next smaller
//! size with the same frames, attributes and memory type first.

use core::ops::Range;

use crate::addr::HostPhysAddr;

/// Present.
const P: u64 = 1 << 0;
/// Writable.
const RW: u64 = 1 << 1;
/// User.
const US: u64 = 1 << 2;
/// Accessed.
const A: u64 = 1 << 5;
/// Page size (in a PDPTE or PDE); PAT in a PTE.
const PS: u64 = 1 << 7;
/// PAT in a PDPTE or PDE that maps a page.
const PAT_LARGE: u64 = 1 << 12;
/// PAT in a PTE.
const PAT_4K: u64 = 1 << 7;
/// Execute-disable.
const XD: u64 = 1 << 63;
/// Physical-address bits of a table or 4 KiB frame (MAXPHYADDR up to 52).
const ADDR_4K: u64 = 0x000F_FFFF_FFFF_F000;

/// Entries per table.
const ENTRIES: usize = 512;

/// Size of what one entry maps at each level (index: level - 1).
const LEVEL_SIZE: [u64; 4] = [1 << 12, 1 << 21, 1 << 30, 1 << 39];

/// Access to the page tables being changed.
pub trait TableMemory {
    /// Entry `index` (below 512) of the table at physical `table`.
    fn read(&self, table: HostPhysAddr, index: usize) -> u64;
    /// Writes entry `index` (below 512) of the table at physical `table`.
    fn write(&mut self, table: HostPhysAddr, index: usize, entry: u64);
    /// A new zeroed table frame for a split, or `None` when none is left.
    fn alloc_table(&mut self) -> Option<HostPhysAddr>;
}

/// What must stay executable and what must not be written, as virtual
/// address ranges (any alignment: a page that overlaps a range counts as
/// inside it).
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// The kernel's executable segments. Pages here keep their execute
    /// right and lose their write right; every other mapping becomes
    /// no-execute.
    pub code: &'a [Range<u64>],
    /// Ranges that must not be written besides the code: read-only data,
    /// and other views (aliases) of the code's and read-only data's frames.
    pub read_only: &'a [Range<u64>],
}

/// What [`enforce`] found and changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Leaf mappings (of any size) that are no-execute afterwards.
    pub no_execute: u64,
    /// Of those, how many the walk had to mark (the rest already were).
    pub made_no_execute: u64,
    /// 4 KiB pages left executable (all inside [`Policy::code`]).
    pub executable_pages: u64,
    /// Leaf mappings whose write right the walk removed.
    pub made_read_only: u64,
    /// Large pages split because only part of them was code or read-only.
    pub split: u64,
}

/// Why [`enforce`] stopped. The tables are consistent at every step: what
/// was changed before the error is a valid (partly enforced) mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WxError {
    /// A large page had to be split and no frame was left for the table.
    NoFrameForSplit {
        /// The virtual address of the large page.
        virt: u64,
    },
    /// A user-accessible leaf: the host's tables have none, so the tables
    /// are not what this walk understands.
    UserMapping {
        /// The virtual address of the mapping.
        virt: u64,
    },
}

impl core::fmt::Display for WxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WxError::NoFrameForSplit { virt } => write!(
                f,
                "no frame left to split the large page at {virt:#x} into smaller pages"
            ),
            WxError::UserMapping { virt } => write!(
                f,
                "the page tables map {virt:#x} for user mode, which the host never does"
            ),
        }
    }
}

/// How a leaf's range relates to a set of ranges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overlap {
    None,
    Partly,
    Wholly,
}

fn overlap(ranges: &[Range<u64>], start: u64, size: u64) -> Overlap {
    let end = start.saturating_add(size);
    let mut seen = Overlap::None;
    for r in ranges {
        if r.start <= start && end <= r.end {
            return Overlap::Wholly;
        }
        if r.start < end && start < r.end {
            // Covered by several ranges together still counts as partly:
            // the split below ends in 4 KiB pages, where any overlap
            // counts as inside.
            seen = Overlap::Partly;
        }
    }
    seen
}

/// The canonical virtual address of entry `index` of a table at `level`
/// (4: PML4) whose own range starts at `base`.
fn entry_virt(base: u64, level: usize, index: usize) -> u64 {
    let v = base | ((index as u64) << (12 + 9 * (level - 1)));
    // Sign-extend bit 47 (SDM Vol. 1 3.3.7.1, "Canonical Addressing").
    if v & (1 << 47) != 0 {
        v | 0xFFFF_0000_0000_0000
    } else {
        v
    }
}

/// Makes the tables rooted at `root` (a PML4) follow `policy`: every leaf
/// outside `policy.code` gets XD, every leaf inside it or inside
/// `policy.read_only` loses R/W, splitting large pages where only part of
/// one is code or read-only. Pages at the same address keep their frames,
/// caching attributes and other bits.
///
/// The caller must flush the TLBs of every CPU using these tables
/// afterwards; before that they may still allow what the tables no longer
/// do, never the other way round.
///
/// # Errors
///
/// [`WxError`] when a split needs a frame and none is left, or when a leaf
/// is user-accessible.
pub fn enforce(
    tables: &mut impl TableMemory,
    root: HostPhysAddr,
    policy: &Policy<'_>,
) -> Result<Report, WxError> {
    let mut report = Report::default();
    walk(tables, root, 4, 0, policy, &mut report)?;
    Ok(report)
}

fn walk(
    tables: &mut impl TableMemory,
    table: HostPhysAddr,
    level: usize,
    base: u64,
    policy: &Policy<'_>,
    report: &mut Report,
) -> Result<(), WxError> {
    let size = LEVEL_SIZE[level - 1];
    for index in 0..ENTRIES {
        let entry = tables.read(table, index);
        if entry & P == 0 {
            continue;
        }
        let virt = entry_virt(base, level, index);
        let leaf = level == 1 || (level < 4 && entry & PS != 0);
        if !leaf {
            walk(
                tables,
                HostPhysAddr::new(entry & ADDR_4K),
                level - 1,
                virt,
                policy,
                report,
            )?;
            continue;
        }
        if entry & US != 0 {
            return Err(WxError::UserMapping { virt });
        }
        let code = overlap(policy.code, virt, size);
        let read_only = overlap(policy.read_only, virt, size);
        if level > 1 && (code == Overlap::Partly || read_only == Overlap::Partly) {
            let child = split(tables, entry, level, virt)?;
            // Present, writable, accessed: the leaves below carry the
            // rights, and the walk below sets them.
            tables.write(table, index, child.as_u64() | P | RW | A);
            report.split += 1;
            walk(tables, child, level - 1, virt, policy, report)?;
            continue;
        }
        // A 4 KiB page that overlaps a range at all counts as inside it.
        let is_code = code != Overlap::None;
        let mut new = entry;
        if is_code {
            report.executable_pages += size / LEVEL_SIZE[0];
        } else {
            new |= XD;
            report.no_execute += 1;
            if entry & XD == 0 {
                report.made_no_execute += 1;
            }
        }
        if (is_code || read_only != Overlap::None) && entry & RW != 0 {
            new &= !RW;
            report.made_read_only += 1;
        }
        if new != entry {
            tables.write(table, index, new);
        }
    }
    Ok(())
}

/// Builds the next-level table that maps the large page `entry` (at
/// `level`, 2 or 3) with 512 smaller pages: the same frames, the same
/// attributes, the PAT bit moved to where the smaller entry keeps it.
fn split(
    tables: &mut impl TableMemory,
    entry: u64,
    level: usize,
    virt: u64,
) -> Result<HostPhysAddr, WxError> {
    let child = tables
        .alloc_table()
        .ok_or(WxError::NoFrameForSplit { virt })?;
    let size = LEVEL_SIZE[level - 1];
    let child_size = LEVEL_SIZE[level - 2];
    let frame = entry & ADDR_4K & !(size - 1);
    let pat = entry & PAT_LARGE != 0;
    // Everything but the address and the PAT bit carries over.
    let attrs = entry & !ADDR_4K & !PAT_LARGE;
    let child_attrs = if level == 2 {
        // 4 KiB PTEs: no PS; PAT lives in bit 7.
        (attrs & !PS) | if pat { PAT_4K } else { 0 }
    } else {
        // 2 MiB PDEs: PS stays; PAT stays in bit 12.
        attrs | if pat { PAT_LARGE } else { 0 }
    };
    for i in 0..ENTRIES {
        tables.write(child, i, (frame + i as u64 * child_size) | child_attrs);
    }
    Ok(child)
}

/// The physical address `virt` is mapped to by the tables rooted at
/// `root`, or `None` when it is not mapped.
pub fn translate(tables: &impl TableMemory, root: HostPhysAddr, virt: u64) -> Option<HostPhysAddr> {
    let mut table = root;
    for level in (1..=4usize).rev() {
        let index = ((virt >> (12 + 9 * (level - 1))) & 0x1FF) as usize;
        let entry = tables.read(table, index);
        if entry & P == 0 {
            return None;
        }
        if level == 1 || (level < 4 && entry & PS != 0) {
            let size = LEVEL_SIZE[level - 1];
            // A large page's PAT bit (12) is not an address bit.
            let frame = entry & ADDR_4K & !(size - 1);
            return Some(HostPhysAddr::new(frame | (virt & (size - 1))));
        }
        table = HostPhysAddr::new(entry & ADDR_4K);
    }
    None
}

/// The most ranges of each kind [`KernelSegments`] keeps; a linker puts a
/// kernel in four or five loadable segments.
pub const MAX_SEGMENTS: usize = 8;

/// The kernel's code and read-only ranges, read from its ELF program
/// headers (ELF-64 object file format, "Program header"): a `PT_LOAD`
/// segment with `PF_X` is code, one without `PF_W` read-only data, and a
/// `PT_GNU_RELRO` range is read-only once relocated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSegments {
    code: [Range<u64>; MAX_SEGMENTS],
    code_len: usize,
    read_only: [Range<u64>; MAX_SEGMENTS],
    read_only_len: usize,
}

/// Why the kernel's program headers could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian ELF-64 file, or its headers lie outside it.
    Malformed,
    /// More than [`MAX_SEGMENTS`] code or read-only segments.
    TooManySegments,
    /// No executable segment at all.
    NoCode,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ElfError::Malformed => "its ELF program headers are malformed",
            ElfError::TooManySegments => "it has more loadable segments than expected",
            ElfError::NoCode => "it has no executable segment",
        })
    }
}

const PT_LOAD: u32 = 1;
const PT_GNU_RELRO: u32 = 0x6474_E552;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

impl KernelSegments {
    /// Reads the program headers of the ELF file `elf`, loaded at
    /// `load_offset` (added to each segment's virtual address).
    ///
    /// # Errors
    ///
    /// [`ElfError`] as its variants say.
    pub fn from_elf(elf: &[u8], load_offset: u64) -> Result<Self, ElfError> {
        let bytes = |at: usize, n: usize| elf.get(at..at.checked_add(n)?);
        let u16_at = |at| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at| {
            bytes(at, 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let u64_at = |at| {
            bytes(at, 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        // "\x7fELF", ELFCLASS64, ELFDATA2LSB.
        if bytes(0, 6) != Some(&[0x7F, b'E', b'L', b'F', 2, 1][..]) {
            return Err(ElfError::Malformed);
        }
        let phoff = u64_at(0x20).ok_or(ElfError::Malformed)?;
        let phentsize = u16_at(0x36).ok_or(ElfError::Malformed)?;
        let phnum = u16_at(0x38).ok_or(ElfError::Malformed)?;
        if phentsize < 56 {
            return Err(ElfError::Malformed);
        }
        let mut out = KernelSegments::default();
        for i in 0..u64::from(phnum) {
            let at = i
                .checked_mul(u64::from(phentsize))
                .and_then(|o| o.checked_add(phoff))
                .and_then(|o| usize::try_from(o).ok())
                .ok_or(ElfError::Malformed)?;
            let field = |o: usize| at.checked_add(o).ok_or(ElfError::Malformed);
            let p_type = u32_at(field(0)?).ok_or(ElfError::Malformed)?;
            let p_flags = u32_at(field(4)?).ok_or(ElfError::Malformed)?;
            let vaddr = u64_at(field(16)?).ok_or(ElfError::Malformed)?;
            let memsz = u64_at(field(40)?).ok_or(ElfError::Malformed)?;
            if memsz == 0 {
                continue;
            }
            let start = vaddr.checked_add(load_offset).ok_or(ElfError::Malformed)?;
            let end = start.checked_add(memsz).ok_or(ElfError::Malformed)?;
            let (list, len) = match p_type {
                PT_LOAD if p_flags & PF_X != 0 => (&mut out.code, &mut out.code_len),
                PT_LOAD if p_flags & PF_W == 0 => (&mut out.read_only, &mut out.read_only_len),
                PT_GNU_RELRO => (&mut out.read_only, &mut out.read_only_len),
                _ => continue,
            };
            let slot = list.get_mut(*len).ok_or(ElfError::TooManySegments)?;
            *slot = start..end;
            *len += 1;
        }
        if out.code_len == 0 {
            return Err(ElfError::NoCode);
        }
        Ok(out)
    }

    /// The executable segments' virtual ranges.
    pub fn code(&self) -> &[Range<u64>] {
        &self.code[..self.code_len]
    }

    /// The read-only (non-executable) ranges.
    pub fn read_only(&self) -> &[Range<u64>] {
        &self.read_only[..self.read_only_len]
    }
}

#[cfg(test)]
// Lists of one range are lists of ranges here, not ranges mistyped.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Tables in a map from frame address to 512 entries.
    #[derive(Default)]
    struct Mem {
        tables: HashMap<u64, Vec<u64>>,
        next: u64,
        frames_left: usize,
    }

    impl Mem {
        fn new() -> Self {
            Mem {
                tables: HashMap::new(),
                next: 0x10_0000,
                frames_left: 100,
            }
        }
        fn table(&mut self) -> u64 {
            let t = self.next;
            self.next += 0x1000;
            self.tables.insert(t, vec![0; ENTRIES]);
            t
        }
        /// The leaf entry mapping `virt` and its size.
        fn translate(&self, root: u64, virt: u64) -> Option<(u64, u64)> {
            let mut table = root;
            for level in (1..=4).rev() {
                let index = ((virt >> (12 + 9 * (level - 1))) & 0x1FF) as usize;
                let e = self.tables[&table][index];
                if e & P == 0 {
                    return None;
                }
                if level == 1 || (level < 4 && e & PS != 0) {
                    return Some((e, LEVEL_SIZE[level - 1]));
                }
                table = e & ADDR_4K;
            }
            None
        }
    }

    impl TableMemory for Mem {
        fn read(&self, table: HostPhysAddr, index: usize) -> u64 {
            self.tables[&table.as_u64()][index]
        }
        fn write(&mut self, table: HostPhysAddr, index: usize, entry: u64) {
            self.tables.get_mut(&table.as_u64()).unwrap()[index] = entry;
        }
        fn alloc_table(&mut self) -> Option<HostPhysAddr> {
            if self.frames_left == 0 {
                return None;
            }
            self.frames_left -= 1;
            Some(HostPhysAddr::new(self.table()))
        }
    }

    const KERNEL: u64 = 0xFFFF_8000_0000_0000;
    const WINDOW: u64 = 0xFFFF_C000_0000_0000;

    /// A kernel at KERNEL: rodata page 0 (R), text pages 1-2 (RX), data
    /// page 3 (RW, NX); a 4 MiB window of 2 MiB writable pages at WINDOW
    /// (one without XD, like a careless mapper); an identity-mapped
    /// executable page at 0x8000.
    fn layout() -> (Mem, u64) {
        let mut m = Mem::new();
        let root = m.table();
        let (k3, k2, k1) = (m.table(), m.table(), m.table());
        m.tables.get_mut(&root).unwrap()[256] = k3 | P | RW;
        m.tables.get_mut(&k3).unwrap()[0] = k2 | P | RW;
        m.tables.get_mut(&k2).unwrap()[0] = k1 | P | RW;
        let k1t = m.tables.get_mut(&k1).unwrap();
        k1t[0] = 0x20_0000 | P | XD;
        k1t[1] = 0x20_1000 | P;
        k1t[2] = 0x20_2000 | P;
        k1t[3] = 0x20_3000 | P | RW | XD;
        let (w3, w2) = (m.table(), m.table());
        m.tables.get_mut(&root).unwrap()[384] = w3 | P | RW;
        m.tables.get_mut(&w3).unwrap()[0] = w2 | P | RW;
        let w2t = m.tables.get_mut(&w2).unwrap();
        w2t[0] = P | RW | PS | XD;
        // PCD|PWT and the PAT bit: the split must keep the memory type.
        w2t[1] = 0x20_0000 | P | RW | PS | (1 << 3) | (1 << 4) | PAT_LARGE;
        let (i3, i2, i1) = (m.table(), m.table(), m.table());
        m.tables.get_mut(&root).unwrap()[0] = i3 | P | RW;
        m.tables.get_mut(&i3).unwrap()[0] = i2 | P | RW;
        m.tables.get_mut(&i2).unwrap()[0] = i1 | P | RW;
        m.tables.get_mut(&i1).unwrap()[8] = 0x8000 | P;
        (m, root)
    }

    fn policy_ranges() -> (Vec<Range<u64>>, Vec<Range<u64>>) {
        let code = vec![KERNEL + 0x1000..KERNEL + 0x2800];
        // Rodata, and the window's view of the text frames.
        let ro = vec![
            KERNEL..KERNEL + 0x1000,
            WINDOW + 0x20_1000..WINDOW + 0x20_3000,
        ];
        (code, ro)
    }

    #[test]
    fn code_stays_executable_read_only_and_the_rest_becomes_no_execute() {
        let (mut m, root) = layout();
        let (code, read_only) = policy_ranges();
        let report = enforce(
            &mut m,
            HostPhysAddr::new(root),
            &Policy {
                code: &code,
                read_only: &read_only,
            },
        )
        .unwrap();
        let t = |v| m.translate(root, v).unwrap().0;
        // Text: executable, not writable.
        assert_eq!(t(KERNEL + 0x1000) & (XD | RW), 0);
        assert_eq!(t(KERNEL + 0x2000) & (XD | RW), 0);
        // Rodata and data: no-execute; data still writable.
        assert_eq!(t(KERNEL) & (XD | RW), XD);
        assert_eq!(t(KERNEL + 0x3000) & (XD | RW), XD | RW);
        // The identity-mapped page loses its execute right.
        assert_ne!(t(0x8000) & XD, 0);
        // The window: the first 2 MiB page stays large and gains XD...
        assert_eq!(
            m.translate(root, WINDOW).unwrap(),
            (P | RW | PS | XD, 1 << 21)
        );
        // ...the second is split: the text frames' views are read-only,
        // the rest writable, all XD, all with the same frame and memory
        // type (PAT moved to bit 7).
        let (e, size) = m.translate(root, WINDOW + 0x20_1000).unwrap();
        assert_eq!(size, 0x1000);
        assert_eq!(
            e,
            0x20_1000 | P | XD | (1 << 3) | (1 << 4) | PAT_4K,
            "{e:#x}"
        );
        let (e, _) = m.translate(root, WINDOW + 0x20_5000).unwrap();
        assert_eq!(e, 0x20_5000 | P | RW | XD | (1 << 3) | (1 << 4) | PAT_4K);
        assert_eq!(
            report,
            Report {
                // Rodata, data, the identity page, the large window page
                // and the 512 pages of the split one; of those the
                // identity page and the split pages were executable.
                no_execute: 2 + 1 + 1 + 512,
                made_no_execute: 1 + 512,
                executable_pages: 2,
                made_read_only: 2,
                split: 1,
            }
        );
        // No leaf anywhere is both writable and executable.
        for (&t, entries) in &m.tables {
            let _ = t;
            for &e in entries {
                if e & P != 0 && e & XD == 0 && e & RW != 0 {
                    // Only non-leaf entries may look like this; they
                    // point at tables, which are all keys of the map.
                    assert!(m.tables.contains_key(&(e & ADDR_4K)), "{e:#x}");
                }
            }
        }
    }

    #[test]
    fn a_second_walk_changes_nothing() {
        let (mut m, root) = layout();
        let (code, read_only) = policy_ranges();
        let policy = Policy {
            code: &code,
            read_only: &read_only,
        };
        enforce(&mut m, HostPhysAddr::new(root), &policy).unwrap();
        let again = enforce(&mut m, HostPhysAddr::new(root), &policy).unwrap();
        assert_eq!(again.made_no_execute, 0);
        assert_eq!(again.made_read_only, 0);
        assert_eq!(again.split, 0);
        // The split window page still maps the same frames.
        assert_eq!(
            translate(&m, HostPhysAddr::new(root), WINDOW + 0x20_1234),
            Some(HostPhysAddr::new(0x20_1234))
        );
        assert_eq!(
            translate(&m, HostPhysAddr::new(root), WINDOW + 0x1234),
            Some(HostPhysAddr::new(0x1234))
        );
        assert_eq!(translate(&m, HostPhysAddr::new(root), 0x9000), None);
    }

    #[test]
    fn a_1g_page_partly_code_splits_twice() {
        let mut m = Mem::new();
        let root = m.table();
        let l3 = m.table();
        m.tables.get_mut(&root).unwrap()[0] = l3 | P | RW;
        m.tables.get_mut(&l3).unwrap()[1] = (1 << 30) | P | RW | PS;
        let code = [(1 << 30) + 0x5000..(1 << 30) + 0x6000];
        let report = enforce(
            &mut m,
            HostPhysAddr::new(root),
            &Policy {
                code: &code,
                read_only: &[],
            },
        )
        .unwrap();
        assert_eq!(report.split, 2);
        assert_eq!(report.executable_pages, 1);
        assert_eq!(
            m.translate(root, (1 << 30) + 0x5000).unwrap(),
            (((1 << 30) + 0x5000) | P, 0x1000)
        );
        assert_eq!(
            m.translate(root, (1 << 30) + 0x4000).unwrap(),
            (((1 << 30) + 0x4000) | P | RW | XD, 0x1000)
        );
        assert_eq!(
            m.translate(root, (1 << 30) + (4 << 20)).unwrap(),
            (((1 << 30) + (4 << 20)) | P | RW | PS | XD, 1 << 21)
        );
    }

    /// An ELF-64 header with the program headers `phdrs` (type, flags,
    /// vaddr, memsz) right after it.
    fn elf(phdrs: &[(u32, u32, u64, u64)]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1]);
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3A].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(t, fl, va, sz) in phdrs {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[4..8].copy_from_slice(&fl.to_le_bytes());
            p[16..24].copy_from_slice(&va.to_le_bytes());
            p[40..48].copy_from_slice(&sz.to_le_bytes());
            f.extend(p);
        }
        f
    }

    #[test]
    fn the_kernels_segments_come_from_its_program_headers() {
        // The layout lld gives the kernel: PHDR, R, RX, RW (RELRO), RW,
        // DYNAMIC, GNU_RELRO, GNU_EH_FRAME, GNU_STACK.
        let file = elf(&[
            (6, 4, 0x40, 0x1F8),
            (PT_LOAD, 4, 0, 0x194A4),
            (PT_LOAD, 5, 0x1A4B0, 0x7C015),
            (PT_LOAD, 6, 0x974C8, 0x3B38),
            (PT_LOAD, 6, 0x9BF30, 0xEAD8),
            (2, 6, 0x9A400, 0xE0),
            (PT_GNU_RELRO, 4, 0x974C8, 0x3B38),
            (0x6474_E550, 4, 0x19440, 0x1C),
            (0x6474_E551, 6, 0, 0),
        ]);
        let s = KernelSegments::from_elf(&file, KERNEL).unwrap();
        assert_eq!(s.code(), &[KERNEL + 0x1A4B0..KERNEL + 0x1A4B0 + 0x7C015]);
        assert_eq!(
            s.read_only(),
            &[
                KERNEL..KERNEL + 0x194A4,
                KERNEL + 0x974C8..KERNEL + 0x974C8 + 0x3B38
            ]
        );
    }

    #[test]
    fn malformed_program_headers_are_refused() {
        assert_eq!(
            KernelSegments::from_elf(b"\x7fELF", 0),
            Err(ElfError::Malformed)
        );
        let mut file = elf(&[(PT_LOAD, 5, 0, 0x1000)]);
        file.truncate(100);
        assert_eq!(KernelSegments::from_elf(&file, 0), Err(ElfError::Malformed));
        let file = elf(&[(PT_LOAD, 4, 0, 0x1000)]);
        assert_eq!(KernelSegments::from_elf(&file, 0), Err(ElfError::NoCode));
        let file = elf(&[(PT_LOAD, 5, 0, 0x1000); 9]);
        assert_eq!(
            KernelSegments::from_elf(&file, 0),
            Err(ElfError::TooManySegments)
        );
        let file = elf(&[(PT_LOAD, 5, u64::MAX, 0x1000)]);
        assert_eq!(KernelSegments::from_elf(&file, 1), Err(ElfError::Malformed));
    }

    #[test]
    fn without_a_frame_for_a_split_the_walk_says_where() {
        let (mut m, root) = layout();
        m.frames_left = 0;
        let (code, read_only) = policy_ranges();
        let err = enforce(
            &mut m,
            HostPhysAddr::new(root),
            &Policy {
                code: &code,
                read_only: &read_only,
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            WxError::NoFrameForSplit {
                virt: WINDOW + 0x20_0000
            }
        );
    }
}
