//! Nested page tables: the second-level tables that translate one guest's
//! physical addresses into host-physical ones under SVM (APM Vol. 2, 15.25
//! "Nested Paging"), and the N_CR3 value that points the VMCB at them.
//!
//! The nested tables have the host's own format: AMD64 long-mode 4-level
//! paging (APM Vol. 2, 5.3 "Long-Mode Page Translation", figures 5-20 to
//! 5-27), with the PS bit (7) making a PDPE map a 1 GiB page and a PDE a
//! 2 MiB one. [`Npt`] owns such a tree (PML4, PDPT, PD, PT; 48-bit
//! guest-physical addresses) and builds it from whole-range [`Npt::map`]
//! calls, choosing 1 GiB and 2 MiB pages where alignment and the CPU
//! allow, exactly as `vmx::ept` does for VT-x. The frames that hold the
//! tables come from an [`NptFrames`] implementation: the kernel backs it
//! with its frame allocator and physical-memory mapping, the host tests
//! with heap memory, so this module needs no `unsafe`.
//!
//! Every entry this module writes is present, writable and user (U/S = 1:
//! the processor treats every nested-table access as a user access, APM
//! 15.25.5 "Nested Table Walk", so a supervisor entry would fault every
//! guest access), with NX (bit 63) clear and PWT, PCD and PAT zero, which
//! select the host PAT's entry 0: write-back, the combination the guest's
//! own PAT and MTRR types then narrow (APM 15.25.8 "Combining Memory
//! Types"). Guest RAM is therefore readable, writable and executable, and
//! its cacheability is the guest's to lower, never to raise.
//!
//! The processor sets the accessed and dirty bits (5, 6) of the entries it
//! walks; nothing here reads them, and the walks below mask them off.
//!
//! Build the tree before a vCPU runs with its N_CR3: entries are written
//! with plain stores through `&mut`, so mapping more later needs every
//! vCPU that uses it stopped first. Mappings are never changed or removed
//! except by a failed map undoing its own work and by [`Npt::destroy`];
//! both need the caller to flush the guest's ASID from the TLB (the VMCB's
//! TLB_CONTROL, APM 15.16) if a processor may have used the tree.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use core::fmt;
use core::mem::{align_of, size_of};

use addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE, SIZE_1G, SIZE_2M};

/// Entries in every table: 512 eight-byte entries fill one 4 KiB frame
/// (APM Vol. 2, 5.3.1).
pub const ENTRIES: usize = 512;

/// The first guest-physical address a 4-level nested walk cannot
/// translate: bits 47:0 are translated, 512 GiB per PML4 entry.
pub const GUEST_PHYS_LIMIT: u64 = 1 << 48;

/// The first host-physical address an entry cannot hold: the address field
/// is bits 51:12 (the architectural maximum physical-address width is 52).
pub const HOST_PHYS_LIMIT: u64 = 1 << 52;

/// The physical-address field of an entry, bits 51:12 (a large page uses
/// only its high part; bit 12 of a large-page entry is its PAT bit).
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Bit 0, P: the entry is present.
pub const PRESENT: u64 = 1 << 0;
/// Bit 1, R/W: writes allowed through this entry.
pub const WRITABLE: u64 = 1 << 1;
/// Bit 2, U/S: user accesses allowed; must be 1 at every level, since
/// nested walks are user accesses (APM 15.25.5).
pub const USER: u64 = 1 << 2;
/// Bit 3, PWT: page-level write-through (left 0: write-back).
pub const PWT: u64 = 1 << 3;
/// Bit 4, PCD: page-level cache disable (left 0).
pub const PCD: u64 = 1 << 4;
/// Bit 5, A: accessed, set by the processor.
pub const ACCESSED: u64 = 1 << 5;
/// Bit 6, D: dirty, set by the processor in leaf entries.
pub const DIRTY: u64 = 1 << 6;
/// Bit 7, PS in a PDPE (1 GiB page) or PDE (2 MiB page); reserved (must be
/// zero) in a PML4E; the PAT bit in a PTE (left 0).
pub const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bit 63, NX: no execute (left 0: guest memory is executable).
pub const NO_EXECUTE: u64 = 1 << 63;

/// The bits of every entry this module writes: present, writable, user;
/// PWT, PCD, PAT and NX zero (write-back, executable).
const ENTRY_BITS: u64 = PRESENT | WRITABLE | USER;

/// The size of the page a guest-physical address is mapped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, a PTE.
    Size4K,
    /// 2 MiB, a PDE with PS set.
    Size2M,
    /// 1 GiB, a PDPE with PS set.
    Size1G,
}

impl PageSize {
    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => PAGE_SIZE,
            Self::Size2M => SIZE_2M,
            Self::Size1G => SIZE_1G,
        }
    }
}

/// One nested page-table entry: the raw 64 bits the processor reads.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct NptEntry(u64);

impl NptEntry {
    /// The not-present entry (all zero).
    pub const EMPTY: Self = Self(0);

    /// The entry with raw value `bits`.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The physical-address field, bits 51:12.
    pub const fn addr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }

    /// Whether P (bit 0) is set.
    pub const fn is_present(self) -> bool {
        self.0 & PRESENT != 0
    }

    /// Whether PS (bit 7) is set: in a PDPE or PDE, the entry maps a page.
    pub const fn is_large(self) -> bool {
        self.0 & PAGE_SIZE_BIT != 0
    }
}

impl fmt::Debug for NptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NptEntry({:#x})", self.0)
    }
}

/// One nested paging structure (PML4, PDPT, PD or PT): 512 entries filling
/// one naturally aligned 4 KiB frame.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct NptTable {
    entries: [NptEntry; ENTRIES],
}

// The processor reads the table as one 4 KiB frame.
const _: () = assert!(size_of::<NptTable>() == 4096);
const _: () = assert!(align_of::<NptTable>() == 4096);
const _: () = assert!(size_of::<NptTable>() as u64 == PAGE_SIZE);

impl NptTable {
    /// A table of not-present entries.
    pub const fn new() -> Self {
        Self {
            entries: [NptEntry::EMPTY; ENTRIES],
        }
    }

    /// The entries, in index order.
    pub const fn entries(&self) -> &[NptEntry; ENTRIES] {
        &self.entries
    }

    /// Entry `index`; not present past the end.
    pub fn get(&self, index: usize) -> NptEntry {
        self.entries.get(index).copied().unwrap_or(NptEntry::EMPTY)
    }

    /// Sets entry `index`; nothing past the end.
    pub fn set(&mut self, index: usize, entry: NptEntry) {
        if let Some(slot) = self.entries.get_mut(index) {
            *slot = entry;
        }
    }

    /// Makes every entry not present.
    pub fn clear(&mut self) {
        self.entries = [NptEntry::EMPTY; ENTRIES];
    }

    /// Whether no entry is present.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| !e.is_present())
    }
}

impl Default for NptTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for NptTable {
    /// Lists the present entries only, as `index: entry`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.is_present()),
            )
            .finish()
    }
}

/// Where an [`Npt`]'s table frames come from and go back to, and how they
/// are reached.
///
/// The kernel implements it over its frame allocator and its mapping of
/// physical memory; host tests over heap memory with made-up physical
/// addresses. An [`Npt`] must always be given the same implementation.
pub trait NptFrames {
    /// A 4 KiB frame for a new table, or `None` when memory is exhausted.
    /// The frame must be 4 KiB aligned, below [`HOST_PHYS_LIMIT`] (and the
    /// CPU's physical-address width), used for nothing else until it is
    /// given back, and reachable through [`Self::table`]. It need not be
    /// zeroed: [`Npt`] clears it before linking it.
    fn alloc_table(&mut self) -> Option<HostPhysAddr>;

    /// Takes back a frame [`Self::alloc_table`] gave out. [`Npt`] gives
    /// back each frame once, after unlinking it, and never touches it
    /// again.
    fn free_table(&mut self, at: HostPhysAddr);

    /// The table in frame `at`, a frame [`Self::alloc_table`] gave out and
    /// that has not been given back.
    fn table(&mut self, at: HostPhysAddr) -> &mut NptTable;
}

/// What a guest-physical address translates to: [`Npt::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The host-physical address of the byte itself.
    pub hpa: HostPhysAddr,
    /// The size of the page that maps it.
    pub page_size: PageSize,
}

/// What was wrong with a nested-paging request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NptError {
    /// A guest-physical start address that is not 4 KiB aligned.
    MisalignedGuestAddr(GuestPhysAddr),
    /// A host-physical start address that is not 4 KiB aligned.
    MisalignedHostAddr(HostPhysAddr),
    /// A length that is not a multiple of 4 KiB.
    MisalignedLength(u64),
    /// A length of zero.
    EmptyRange,
    /// A guest-physical range reaching past [`GUEST_PHYS_LIMIT`] (or past
    /// the end of the address space).
    GuestRangeTooHigh {
        /// Start of the range.
        gpa: GuestPhysAddr,
        /// Its length in bytes.
        len: u64,
    },
    /// A host-physical range reaching past [`HOST_PHYS_LIMIT`] (or past the
    /// end of the address space).
    HostRangeTooHigh {
        /// Start of the range.
        hpa: HostPhysAddr,
        /// Its length in bytes.
        len: u64,
    },
    /// Part of the range is already mapped; `gpa` is the lowest mapped
    /// address in it.
    Overlap {
        /// The lowest already-mapped guest-physical address in the range.
        gpa: GuestPhysAddr,
    },
    /// [`NptFrames::alloc_table`] had no frame left.
    OutOfFrames,
    /// [`NptFrames::alloc_table`] gave a frame that is not 4 KiB aligned or
    /// lies above [`HOST_PHYS_LIMIT`]; it was given back.
    BadTableFrame(HostPhysAddr),
}

impl fmt::Display for NptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MisalignedGuestAddr(gpa) => write!(
                f,
                "NPT: guest-physical address {gpa} is not 4 KiB aligned; map whole pages"
            ),
            Self::MisalignedHostAddr(hpa) => write!(
                f,
                "NPT: host-physical address {hpa} is not 4 KiB aligned; map whole pages"
            ),
            Self::MisalignedLength(len) => write!(
                f,
                "NPT: length {len:#x} is not a multiple of 4 KiB; map whole pages"
            ),
            Self::EmptyRange => f.write_str("NPT: cannot map an empty range"),
            Self::GuestRangeTooHigh { gpa, len } => write!(
                f,
                "NPT: guest-physical range {gpa} + {len:#x} reaches past {GUEST_PHYS_LIMIT:#x}, \
                 the end of the 48-bit guest-physical space"
            ),
            Self::HostRangeTooHigh { hpa, len } => write!(
                f,
                "NPT: host-physical range {hpa} + {len:#x} reaches past {HOST_PHYS_LIMIT:#x}, \
                 beyond any physical address"
            ),
            Self::Overlap { gpa } => write!(
                f,
                "NPT: guest-physical address {gpa} is already mapped; \
                 the new range overlaps an existing one"
            ),
            Self::OutOfFrames => {
                f.write_str("NPT: out of memory for page-table frames; nothing was mapped")
            }
            Self::BadTableFrame(at) => write!(
                f,
                "NPT: the frame allocator gave table frame {at}, which is not \
                 4 KiB aligned or is above 2^52; this is a host bug"
            ),
        }
    }
}

/// The levels of the walk, leaf to root.
const PT: u8 = 1;
const PD: u8 = 2;
const PDPT: u8 = 3;
const PML4: u8 = 4;

/// Bytes translated by one entry of a table at `level` (1..=4).
const fn entry_span(level: u8) -> u64 {
    PAGE_SIZE << (9 * (level as u32 - 1))
}

/// The index of the entry for `gpa` in a table at `level`.
const fn entry_index(gpa: u64, level: u8) -> usize {
    ((gpa / entry_span(level)) % ENTRIES as u64) as usize
}

/// A validated map request: guest range `[start, end)` mapped to host
/// addresses from `hpa`.
struct Request {
    start: u64,
    end: u64,
    hpa: u64,
}

impl Request {
    /// The host-physical address `gpa` (in the range) maps to.
    const fn hpa_of(&self, gpa: u64) -> u64 {
        self.hpa + (gpa - self.start)
    }
}

/// The entries of a table at `level` whose guest range starts at `base`
/// that `[start, end)` touches, each with its own guest range clipped to
/// `[start, end)`: `(index, entry start, clipped start, clipped end)`.
fn touched(
    level: u8,
    base: u64,
    start: u64,
    end: u64,
) -> impl Iterator<Item = (usize, u64, u64, u64)> {
    let span = entry_span(level);
    let table_end = base + span * ENTRIES as u64;
    let (lo, hi) = (start.max(base), end.min(table_end));
    let (first, count) = if lo < hi {
        let first = (lo - base) / span;
        (first, (hi - 1 - base) / span - first + 1)
    } else {
        (0, 0)
    };
    (first..first + count).map(move |i| {
        let e_start = base + i * span;
        (i as usize, e_start, lo.max(e_start), hi.min(e_start + span))
    })
}

/// The nested page tables of one guest: the owner of a PML4 table and the
/// tree below it (APM Vol. 2, 15.25).
///
/// Every table frame comes from, and goes back to, one [`NptFrames`]
/// implementation, which every method takes. Guest memory is the caller's:
/// the tree points at it and never allocates or frees it.
///
/// Dropping an `Npt` without [`Npt::destroy`] leaks its table frames.
#[derive(Debug)]
#[must_use = "an Npt holds table frames until destroy gives them back"]
pub struct Npt {
    root: HostPhysAddr,
    gigabyte_pages: bool,
    tables: usize,
}

impl Npt {
    /// A tree that maps nothing: the PML4 table only. 2 MiB pages are
    /// always used where alignment allows (long mode has them
    /// architecturally); 1 GiB pages only if `gigabyte_pages`, which the
    /// caller sets from CPUID 8000_0001H:EDX\[26\] (Page1GB), as nested walks
    /// use the host's paging features.
    pub fn new<F: NptFrames>(frames: &mut F, gigabyte_pages: bool) -> Result<Self, NptError> {
        let mut npt = Self {
            root: HostPhysAddr::new(0),
            gigabyte_pages,
            tables: 0,
        };
        npt.root = npt.alloc_table(frames)?;
        Ok(npt)
    }

    /// The host-physical address of the PML4 table.
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// How many table frames the tree holds, the PML4 included.
    pub fn table_frames(&self) -> usize {
        self.tables
    }

    /// The VMCB's N_CR3 for this tree (APM Vol. 2, 15.25.4 and appendix B,
    /// offset 0B0H): the PML4's address in bits 51:12, with PWT and PCD
    /// (bits 3 and 4) zero so the tables are read write-back.
    pub fn ncr3(&self) -> u64 {
        self.root.as_u64() & ADDR_MASK
    }

    /// Maps the `len` bytes of guest-physical memory from `gpa` to the
    /// host-physical memory from `hpa`, readable, writable, executable and
    /// write-back.
    ///
    /// Each part of the range gets the largest page that fits: a 1 GiB page
    /// where the guest and host addresses are both 1 GiB aligned, a whole
    /// gigabyte remains and the tree was made with `gigabyte_pages`; a
    /// 2 MiB page likewise; 4 KiB pages elsewhere.
    ///
    /// Refused, with nothing changed: `gpa`, `hpa` or `len` not 4 KiB
    /// aligned, `len` zero, a guest range past 2^48 or a host range past
    /// 2^52, and a range of which any page is already mapped.
    ///
    /// If the frame allocator runs out (or hands out a bad frame) part way,
    /// the call undoes itself before returning the error: the entries it
    /// wrote are cleared, the tables it allocated are given back, and the
    /// tree translates exactly what it did before the call.
    pub fn map<F: NptFrames>(
        &mut self,
        frames: &mut F,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
    ) -> Result<(), NptError> {
        let req = validate(gpa, hpa, len)?;
        if let Some(mapped) = first_mapped(frames, self.root, PML4, 0, &req) {
            return Err(NptError::Overlap {
                gpa: GuestPhysAddr::new(mapped),
            });
        }
        let result = self.map_in(frames, self.root, PML4, 0, &req);
        if result.is_err() {
            // Nothing in the range was mapped before (checked above), so
            // everything in it now is this call's and can go.
            self.unmap_in(frames, self.root, PML4, 0, req.start, req.end);
        }
        result
    }

    /// The host-physical address `gpa` translates to, by a software walk
    /// of the tree, or `None` where it is not mapped.
    pub fn translate<F: NptFrames>(
        &self,
        frames: &mut F,
        gpa: GuestPhysAddr,
    ) -> Option<HostPhysAddr> {
        self.lookup(frames, gpa).map(|t| t.hpa)
    }

    /// The translation of `gpa` with the size of the page that maps it, or
    /// `None` where it is not mapped (or the entry on the way is one the
    /// processor would reject: PS set in a PML4E).
    pub fn lookup<F: NptFrames>(&self, frames: &mut F, gpa: GuestPhysAddr) -> Option<Translation> {
        let gpa = gpa.as_u64();
        if gpa >= GUEST_PHYS_LIMIT {
            return None;
        }
        let mut table = self.root;
        let mut level = PML4;
        loop {
            let entry = frames.table(table).get(entry_index(gpa, level));
            if !entry.is_present() {
                return None;
            }
            let page_size = match level {
                PT => PageSize::Size4K,
                PD if entry.is_large() => PageSize::Size2M,
                PDPT if entry.is_large() => PageSize::Size1G,
                // PS in a PML4E is reserved: a #NPF, not a translation.
                PML4 if entry.is_large() => return None,
                _ => {
                    table = entry.addr();
                    level -= 1;
                    continue;
                }
            };
            let offset = gpa & (page_size.bytes() - 1);
            let base = entry.bits() & ADDR_MASK & !(page_size.bytes() - 1);
            return Some(Translation {
                hpa: HostPhysAddr::new(base | offset),
                page_size,
            });
        }
    }

    /// Gives every table frame back to `frames`, the PML4 last. The guest
    /// memory the tree mapped is the caller's and is not touched.
    ///
    /// No processor may use this tree any more: the caller has stopped
    /// every vCPU that ran with [`Self::ncr3`] and flushed its ASID.
    pub fn destroy<F: NptFrames>(mut self, frames: &mut F) {
        let root = self.root;
        self.free_below(frames, root, PML4);
        frames.free_table(root);
        self.tables = self.tables.saturating_sub(1);
    }

    /// Whether a table at `level` may hold leaf entries.
    fn leaf_allowed(&self, level: u8) -> bool {
        match level {
            PT | PD => true,
            PDPT => self.gigabyte_pages,
            _ => false,
        }
    }

    /// A cleared table frame from `frames`, counted in `tables`.
    fn alloc_table<F: NptFrames>(&mut self, frames: &mut F) -> Result<HostPhysAddr, NptError> {
        let at = frames.alloc_table().ok_or(NptError::OutOfFrames)?;
        if !at.is_aligned(PAGE_SIZE) || at.as_u64() >= HOST_PHYS_LIMIT {
            frames.free_table(at);
            return Err(NptError::BadTableFrame(at));
        }
        // A recycled frame may hold old entries pointing anywhere in host
        // memory; they must never become reachable from a guest.
        frames.table(at).clear();
        self.tables += 1;
        Ok(at)
    }

    /// Writes the request's part under `table` (at `level`, translating
    /// from `base`), allocating tables as needed. Stops at the first error;
    /// [`Self::map`] undoes the rest.
    fn map_in<F: NptFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        req: &Request,
    ) -> Result<(), NptError> {
        let span = entry_span(level);
        for (i, e_start, lo, hi) in touched(level, base, req.start, req.end) {
            let entry = frames.table(table).get(i);
            let host = req.hpa_of(lo);
            let whole = lo == e_start && hi - lo == span && host.is_multiple_of(span);
            if !entry.is_present() && whole && self.leaf_allowed(level) {
                let large = if level == PT { 0 } else { PAGE_SIZE_BIT };
                frames
                    .table(table)
                    .set(i, NptEntry(host | ENTRY_BITS | large));
                continue;
            }
            let next = if !entry.is_present() {
                let next = self.alloc_table(frames)?;
                frames
                    .table(table)
                    .set(i, NptEntry(next.as_u64() | ENTRY_BITS));
                next
            } else if level == PT || entry.is_large() {
                // Ruled out by the overlap check in `map`.
                return Err(NptError::Overlap {
                    gpa: GuestPhysAddr::new(lo),
                });
            } else {
                entry.addr()
            };
            self.map_in(frames, next, level - 1, e_start, req)?;
        }
        Ok(())
    }

    /// Clears the leaf entries under `table` (at `level`, translating from
    /// `base`) that lie wholly in `[start, end)`, and gives back the tables
    /// that are left empty. Returns whether `table` itself is now empty.
    fn unmap_in<F: NptFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
    ) -> bool {
        let span = entry_span(level);
        for (i, e_start, lo, hi) in touched(level, base, start, end) {
            let entry = frames.table(table).get(i);
            if !entry.is_present() {
                continue;
            }
            if level == PT || entry.is_large() {
                if lo == e_start && hi - lo == span {
                    frames.table(table).set(i, NptEntry::EMPTY);
                }
                continue;
            }
            let child = entry.addr();
            if self.unmap_in(frames, child, level - 1, e_start, start, end) {
                // Unlink before giving the frame back.
                frames.table(table).set(i, NptEntry::EMPTY);
                frames.free_table(child);
                self.tables = self.tables.saturating_sub(1);
            }
        }
        frames.table(table).is_empty()
    }

    /// Gives back every table below `table` (at `level`), not `table`
    /// itself.
    fn free_below<F: NptFrames>(&mut self, frames: &mut F, table: HostPhysAddr, level: u8) {
        if level == PT {
            return;
        }
        for i in 0..ENTRIES {
            let entry = frames.table(table).get(i);
            if !entry.is_present() || entry.is_large() {
                continue;
            }
            let child = entry.addr();
            self.free_below(frames, child, level - 1);
            frames.table(table).set(i, NptEntry::EMPTY);
            frames.free_table(child);
            self.tables = self.tables.saturating_sub(1);
        }
    }
}

/// Checks a map request and turns it into a [`Request`].
fn validate(gpa: GuestPhysAddr, hpa: HostPhysAddr, len: u64) -> Result<Request, NptError> {
    if !gpa.is_aligned(PAGE_SIZE) {
        return Err(NptError::MisalignedGuestAddr(gpa));
    }
    if !hpa.is_aligned(PAGE_SIZE) {
        return Err(NptError::MisalignedHostAddr(hpa));
    }
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(NptError::MisalignedLength(len));
    }
    if len == 0 {
        return Err(NptError::EmptyRange);
    }
    let end = match gpa.checked_add(len) {
        Some(end) if end.as_u64() <= GUEST_PHYS_LIMIT => end.as_u64(),
        _ => return Err(NptError::GuestRangeTooHigh { gpa, len }),
    };
    match hpa.checked_add(len) {
        Some(end) if end.as_u64() <= HOST_PHYS_LIMIT => {}
        _ => return Err(NptError::HostRangeTooHigh { hpa, len }),
    }
    Ok(Request {
        start: gpa.as_u64(),
        end,
        hpa: hpa.as_u64(),
    })
}

/// The lowest guest-physical address in the request's range that the
/// subtree of `table` (at `level`, translating from `base`) maps.
fn first_mapped<F: NptFrames>(
    frames: &mut F,
    table: HostPhysAddr,
    level: u8,
    base: u64,
    req: &Request,
) -> Option<u64> {
    for (i, e_start, lo, _) in touched(level, base, req.start, req.end) {
        let entry = frames.table(table).get(i);
        if !entry.is_present() {
            continue;
        }
        if level == PT || entry.is_large() {
            return Some(lo);
        }
        if let Some(found) = first_mapped(frames, entry.addr(), level - 1, e_start, req) {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests;
