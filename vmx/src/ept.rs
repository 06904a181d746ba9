//! EPT: the extended page tables that translate one guest's physical
//! addresses into host-physical ones (SDM Vol. 3C, 29.3 "The Extended Page
//! Table Mechanism (EPT)"), and the EPTP that points the VMCS at them (SDM
//! Vol. 3C, 25.6.11 "Extended-Page-Table Pointer (EPTP)").
//!
//! [`Ept`] owns a four-level tree (PML4, PDPT, PD, PT; 48-bit guest-physical
//! addresses) and builds it from whole-range [`Ept::map`] calls, choosing
//! 1 GiB and 2 MiB pages where alignment and the CPU allow. The frames that
//! hold the tables come from a [`TableFrames`] implementation: the kernel
//! backs it with its frame allocator and physical-memory mapping, the host
//! tests with heap memory, so this module needs no `unsafe` at all.
//!
//! Section and table numbers follow the SDM editions in which EPT is
//! Chapter 29 and the VMCS Chapter 25 (older editions: 28 and 24); deeper
//! subsections, whose numbers move between editions, are cited by their
//! quoted titles. Entry formats are
//! Tables 29-1 to 29-6 ("Format of an EPT PML4 Entry (PML4E) that
//! References an EPT Page-Directory-Pointer Table" through "Format of an
//! EPT Page-Table Entry that Maps a 4-KByte Page").
//!
//! Build the tree before a logical processor runs with its EPTP: entries
//! are written with plain stores through `&mut`, so mapping more later
//! needs every vCPU that uses it stopped first. No INVEPT is needed after
//! a successful [`Ept::map`], which only turns not-present entries into
//! present ones, as processors cache nothing from not-present entries
//! ("Creating and Using Cached Translation Information"). Mappings are
//! never changed or removed except by a failed map undoing its own work
//! and by [`Ept::destroy`]; both need the caller's INVEPT if a processor
//! may have used the EPTP.
#![forbid(unsafe_code)]

use core::fmt;
use core::mem::{align_of, size_of};

use addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE, SIZE_1G, SIZE_2M};
use bitflags::bitflags;

use crate::caps::EptVpidCap;

/// Entries in every EPT paging structure: 512 eight-byte entries fill one
/// 4 KiB frame (29.3.2 "EPT Translation Mechanism").
pub const ENTRIES: usize = 512;

/// The first guest-physical address a four-level EPT cannot translate:
/// bits 47:0 of a guest-physical address are translated, 512 GiB per PML4
/// entry (29.3.2).
pub const GUEST_PHYS_LIMIT: u64 = 1 << 48;

/// The first host-physical address an EPT entry cannot hold: the address
/// field is bits 51:12 (bits N-1:12 for MAXPHYADDR N, which is at most 52).
pub const HOST_PHYS_LIMIT: u64 = 1 << 52;

/// The physical-address field of an EPT entry and of the EPTP, bits 51:12
/// (Tables 29-1 to 29-6; a large page uses the high part of it only).
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// EPTP bits 2:0 = 6: the EPT paging structures are write-back (SDM Vol.
/// 3C, 25.6.11, table "Format of Extended-Page-Table Pointer").
pub const EPTP_MEMORY_TYPE_WB: u64 = 6;
/// EPTP bits 5:3 = 3: the page-walk length minus one, for a four-level walk
/// (25.6.11).
pub const EPTP_WALK_LENGTH_4: u64 = 3 << 3;
/// EPTP bit 6: enable the accessed and dirty flags in EPT entries (25.6.11;
/// "Accessed and Dirty Flags for EPT").
pub const EPTP_ACCESSED_DIRTY: u64 = 1 << 6;

bitflags! {
    /// The flag bits of an EPT paging-structure entry (SDM Vol. 3C, 29.3.2,
    /// Tables 29-1 to 29-6). Which bits mean something depends on the
    /// level and on whether the entry maps a page; the doc of each bit says
    /// where it applies. Bits this module does not name pass through
    /// (`from_bits_retain`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptFlags: u64 {
        /// Bit 0: reads allowed (all levels).
        const READ = 1 << 0;
        /// Bit 1: writes allowed (all levels). Write without read is an EPT
        /// misconfiguration ("EPT Misconfigurations", 29.3.3).
        const WRITE = 1 << 1;
        /// Bit 2: instruction fetches allowed (all levels; supervisor-mode
        /// fetches only if "mode-based execute control for EPT" is 1).
        const EXECUTE = 1 << 2;
        /// Bits 5:3: the EPT memory type of a page (leaf entries only;
        /// "EPT and Memory Typing"). See [`EptMemoryType`].
        const MEMORY_TYPE = 0b111 << 3;
        /// Bit 6: ignore the guest PAT memory type (leaf entries only).
        const IGNORE_PAT = 1 << 6;
        /// Bit 7: the PDPTE maps a 1 GiB page, or the PDE a 2 MiB page
        /// (Tables 29-2 and 29-4); must be 0 in a PML4E, ignored in a PTE.
        const LARGE_PAGE = 1 << 7;
        /// Bit 8: accessed, set by the processor when EPTP bit 6 is 1
        /// ("Accessed and Dirty Flags for EPT").
        const ACCESSED = 1 << 8;
        /// Bit 9: dirty, set by the processor when EPTP bit 6 is 1 (leaf
        /// entries only).
        const DIRTY = 1 << 9;
        /// Bit 10: user-mode instruction fetches allowed, when "mode-based
        /// execute control for EPT" is 1 (all levels; ignored otherwise).
        const USER_EXECUTE = 1 << 10;
        /// Bit 57: verify guest paging (leaf entries; used with HLAT).
        const VERIFY_GUEST_PAGING = 1 << 57;
        /// Bit 58: paging-write access (leaf entries; used with HLAT).
        const PAGING_WRITE_ACCESS = 1 << 58;
        /// Bit 60: supervisor shadow-stack page (leaf entries).
        const SUPERVISOR_SHADOW_STACK = 1 << 60;
        /// Bit 63: suppress #VE (leaf entries; "Virtualization
        /// Exceptions").
        const SUPPRESS_VE = 1 << 63;
    }
}

bitflags! {
    /// The access a mapping grants, in the bit positions of the entry
    /// (Tables 29-2, 29-4 and 29-6: bits 0, 1, 2 and 10).
    ///
    /// [`Ept::map`] accepts read, read-write and read-execute combinations
    /// freely; execute-only needs [`EptVpidCap::EXECUTE_ONLY`], and write
    /// without read is refused because the processor treats it as an EPT
    /// misconfiguration ("EPT Misconfigurations", 29.3.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptPerms: u64 {
        /// Bit 0: the guest may read.
        const READ = EptFlags::READ.bits();
        /// Bit 1: the guest may write.
        const WRITE = EptFlags::WRITE.bits();
        /// Bit 2: the guest may fetch instructions (supervisor-mode fetches
        /// only, if "mode-based execute control for EPT" is 1).
        const EXECUTE = EptFlags::EXECUTE.bits();
        /// Bit 10: user-mode instruction fetches, if "mode-based execute
        /// control for EPT" is 1; ignored otherwise.
        const USER_EXECUTE = EptFlags::USER_EXECUTE.bits();
    }
}

/// The memory type of a mapped page, EPT entry bits 5:3 (SDM Vol. 3C,
/// "Memory Type Used for Translated Guest-Physical Addresses").
/// Values 2, 3 and 7 are reserved and cause an EPT misconfiguration, so
/// they have no variant.
///
/// [`Ept::map`] leaves "ignore PAT" (bit 6) clear: the type combines with
/// the guest's PAT type as the SDM describes, so a guest can make its own
/// pages uncacheable but not a UC device cacheable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EptMemoryType {
    /// 0: uncacheable (UC), for device memory.
    Uncacheable = 0,
    /// 1: write combining (WC).
    WriteCombining = 1,
    /// 4: write-through (WT).
    WriteThrough = 4,
    /// 5: write-protected (WP).
    WriteProtected = 5,
    /// 6: write-back (WB), for RAM.
    WriteBack = 6,
}

impl EptMemoryType {
    /// The memory type in entry bits 5:3 of `entry`, or `None` for a
    /// reserved value.
    pub const fn of_entry(entry: u64) -> Option<Self> {
        match (entry >> 3) & 0b111 {
            0 => Some(Self::Uncacheable),
            1 => Some(Self::WriteCombining),
            4 => Some(Self::WriteThrough),
            5 => Some(Self::WriteProtected),
            6 => Some(Self::WriteBack),
            _ => None,
        }
    }

    /// The type in entry bits 5:3, the other bits zero.
    pub const fn entry_bits(self) -> u64 {
        (self as u64) << 3
    }
}

/// The size of the page a guest-physical address is mapped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, a PTE (Table 29-6).
    Size4K,
    /// 2 MiB, a PDE with bit 7 set (Table 29-4).
    Size2M,
    /// 1 GiB, a PDPTE with bit 7 set (Table 29-2).
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

/// One EPT paging-structure entry: the raw 64 bits the processor reads.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct EptEntry(u64);

impl EptEntry {
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

    /// The flag bits.
    pub const fn flags(self) -> EptFlags {
        EptFlags::from_bits_retain(self.0)
    }

    /// The physical-address field, bits 51:12. For a large page, the bits
    /// below the page size are reserved and read as zero in entries this
    /// module writes.
    pub const fn addr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }

    /// Whether the entry is present: any of bits 2:0 is 1, or bit 10 with
    /// "mode-based execute control for EPT" (29.3.2). Bit 10 counts here
    /// whatever that control says, the cautious reading for a walk over
    /// entries this module writes (it never writes bit 10 alone).
    pub const fn is_present(self) -> bool {
        self.0 & EptPerms::all().bits() != 0
    }
}

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptEntry({:#x})", self.0)
    }
}

/// One EPT paging structure (PML4, PDPT, PD or PT): 512 entries filling one
/// naturally aligned 4 KiB frame (29.3.2).
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct EptTable {
    entries: [EptEntry; ENTRIES],
}

// The processor reads the table as one 4 KiB frame.
const _: () = assert!(size_of::<EptTable>() == 4096);
const _: () = assert!(align_of::<EptTable>() == 4096);
const _: () = assert!(size_of::<EptTable>() as u64 == PAGE_SIZE);

impl EptTable {
    /// A table of not-present entries.
    pub const fn new() -> Self {
        Self {
            entries: [EptEntry::EMPTY; ENTRIES],
        }
    }

    /// The entries, in index order.
    pub const fn entries(&self) -> &[EptEntry; ENTRIES] {
        &self.entries
    }

    /// Makes every entry not present.
    pub fn clear(&mut self) {
        self.entries = [EptEntry::EMPTY; ENTRIES];
    }

    /// Whether no entry is present.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| !e.is_present())
    }
}

impl Default for EptTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EptTable {
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

/// Where an [`Ept`]'s table frames come from and go back to, and how they
/// are reached.
///
/// The kernel implements it over its frame allocator and its mapping of
/// physical memory (the one pointer step is on that side); host tests over
/// heap memory with made-up physical addresses. An [`Ept`] must always be
/// given the same implementation.
pub trait TableFrames {
    /// A 4 KiB frame for a new table, or `None` when memory is exhausted.
    /// The frame must be 4 KiB aligned, below [`HOST_PHYS_LIMIT`] (and
    /// below the CPU's MAXPHYADDR), used for nothing else until it is given
    /// back, and reachable through [`Self::table`]. It need not be zeroed:
    /// [`Ept`] clears it before linking it.
    fn alloc_table(&mut self) -> Option<HostPhysAddr>;

    /// Takes back a frame [`Self::alloc_table`] gave out. [`Ept`] gives
    /// back each frame once, after unlinking it, and never touches it
    /// again.
    fn free_table(&mut self, at: HostPhysAddr);

    /// The table in frame `at`, a frame [`Self::alloc_table`] gave out and
    /// that has not been given back.
    fn table(&mut self, at: HostPhysAddr) -> &mut EptTable;
}

/// What a guest-physical address translates to: [`Ept::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The host-physical address of the byte itself (page base plus the
    /// offset of the guest-physical address in its page).
    pub hpa: HostPhysAddr,
    /// The access the mapping grants.
    pub perms: EptPerms,
    /// The EPT memory type of the page.
    pub memory_type: EptMemoryType,
    /// The size of the page that maps it.
    pub page_size: PageSize,
}

/// What was wrong with an EPT request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EptError {
    /// The CPU lacks an EPT capability the request needs (reported by
    /// IA32_VMX_EPT_VPID_CAP, SDM Vol. 3D, A.10).
    MissingCapability(EptVpidCap),
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
    /// Access rights the processor would reject as an EPT misconfiguration
    /// or treat as not present.
    InvalidPermissions(EptPerms),
    /// Part of the range is already mapped; `gpa` is the lowest mapped
    /// address in it.
    Overlap {
        /// The lowest already-mapped guest-physical address in the range.
        gpa: GuestPhysAddr,
    },
    /// [`TableFrames::alloc_table`] had no frame left.
    OutOfFrames,
    /// [`TableFrames::alloc_table`] gave a frame that is not 4 KiB aligned
    /// or lies above [`HOST_PHYS_LIMIT`]; it was given back.
    BadTableFrame(HostPhysAddr),
    /// [`Ept::share`] was asked for a gigabyte that is not 1 GiB aligned,
    /// or that the template does not map through a page directory.
    NothingToShare(GuestPhysAddr),
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MissingCapability(cap) => {
                let what = if cap == EptVpidCap::PAGE_WALK_LENGTH_4 {
                    "a 4-level page walk"
                } else if cap == EptVpidCap::MEMORY_TYPE_WB {
                    "write-back paging structures"
                } else if cap == EptVpidCap::ACCESSED_DIRTY {
                    "accessed and dirty flags"
                } else if cap == EptVpidCap::EXECUTE_ONLY {
                    "execute-only pages"
                } else {
                    "a needed capability"
                };
                write!(
                    f,
                    "EPT: the CPU does not support {what} \
                     (IA32_VMX_EPT_VPID_CAP bits {:#x}); \
                     ask for a configuration without it",
                    cap.bits()
                )
            }
            Self::MisalignedGuestAddr(gpa) => write!(
                f,
                "EPT: guest-physical address {gpa} is not 4 KiB aligned; \
                 map whole pages"
            ),
            Self::MisalignedHostAddr(hpa) => write!(
                f,
                "EPT: host-physical address {hpa} is not 4 KiB aligned; \
                 map whole pages"
            ),
            Self::MisalignedLength(len) => write!(
                f,
                "EPT: length {len:#x} is not a multiple of 4 KiB; map whole pages"
            ),
            Self::EmptyRange => write!(f, "EPT: cannot map an empty range"),
            Self::GuestRangeTooHigh { gpa, len } => write!(
                f,
                "EPT: guest-physical range {gpa} + {len:#x} reaches past {:#x}, \
                 the end of the 48-bit guest-physical space",
                GUEST_PHYS_LIMIT
            ),
            Self::HostRangeTooHigh { hpa, len } => write!(
                f,
                "EPT: host-physical range {hpa} + {len:#x} reaches past {:#x}, \
                 beyond any physical address",
                HOST_PHYS_LIMIT
            ),
            Self::InvalidPermissions(perms) => write!(
                f,
                "EPT: access rights {:#x} are not valid for a mapping \
                 (need read or execute, and read with write)",
                perms.bits()
            ),
            Self::Overlap { gpa } => write!(
                f,
                "EPT: guest-physical address {gpa} is already mapped; \
                 the new range overlaps an existing one"
            ),
            Self::OutOfFrames => write!(
                f,
                "EPT: out of memory for page-table frames; nothing was mapped"
            ),
            Self::BadTableFrame(at) => write!(
                f,
                "EPT: the frame allocator gave table frame {at}, which is not \
                 4 KiB aligned or is above 2^52; this is a host bug"
            ),
            Self::NothingToShare(gpa) => write!(
                f,
                "EPT: the template has no page directory for the gigabyte at \
                 {gpa} (or it is not 1 GiB aligned); this is a host bug"
            ),
        }
    }
}

/// The permissions of every non-leaf entry: everything, so that the leaf
/// alone decides the access ("EPT Violations", 29.3.3: an access is
/// allowed only if every entry on the walk allows it).
const TABLE_BITS: u64 = EptPerms::all().bits();

/// Marks a page-directory-pointer entry that points at another tree's page
/// directory ([`Ept::share`]): that subtree is never written, unmapped or
/// freed through this tree. Bit 52 is ignored by the processor in entries
/// that reference a table (SDM Vol. 3C, 29.3.2, Tables 29-3 and 29-5).
const SHARED: u64 = 1 << 52;

/// Whether `entry` is a [`SHARED`] link.
const fn is_shared(entry: EptEntry) -> bool {
    entry.bits() & SHARED != 0
}

/// The levels of the walk, leaf to root.
const PT: u8 = 1;
const PD: u8 = 2;
const PDPT: u8 = 3;
const PML4: u8 = 4;

/// Bytes translated by one entry of a table at `level`.
const fn entry_span(level: u8) -> u64 {
    PAGE_SIZE << (9 * (level as u32 - 1))
}

/// The index of the entry for `gpa` in a table at `level`.
const fn entry_index(gpa: u64, level: u8) -> usize {
    ((gpa / entry_span(level)) % ENTRIES as u64) as usize
}

/// A validated map request: guest range `[start, end)` mapped to host
/// addresses from `hpa`, every leaf entry carrying `leaf` (permissions and
/// memory type).
struct Request {
    start: u64,
    end: u64,
    hpa: u64,
    leaf: u64,
}

impl Request {
    /// The host-physical address `gpa` maps to.
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

/// The extended page tables of one guest: the owner of a PML4 table and the
/// tree below it (SDM Vol. 3C, 29.3).
///
/// Every table frame comes from, and goes back to, one [`TableFrames`]
/// implementation, which every method takes. Guest memory is the caller's:
/// the EPT points at it and never allocates or frees it.
///
/// Dropping an `Ept` without [`Ept::destroy`] leaks its table frames (they
/// cannot be given back without the allocator).
#[derive(Debug)]
#[must_use = "an Ept holds table frames until destroy gives them back"]
pub struct Ept {
    root: HostPhysAddr,
    caps: EptVpidCap,
    tables: usize,
}

impl Ept {
    /// An EPT that maps nothing, for a CPU whose IA32_VMX_EPT_VPID_CAP says
    /// `caps`: the PML4 table only. `caps` decides the large pages
    /// [`Self::map`] may use ([`EptVpidCap::PAGES_2M`],
    /// [`EptVpidCap::PAGES_1G`]), whether execute-only mappings are allowed
    /// and whether [`Self::eptp`] may enable accessed and dirty flags.
    ///
    /// Fails without a 4-level walk or write-back paging structures (the
    /// EPTP this module builds needs both), or when no frame is left.
    pub fn new<F: TableFrames>(frames: &mut F, caps: EptVpidCap) -> Result<Self, EptError> {
        for needed in [EptVpidCap::PAGE_WALK_LENGTH_4, EptVpidCap::MEMORY_TYPE_WB] {
            if !caps.contains(needed) {
                return Err(EptError::MissingCapability(needed));
            }
        }
        let mut ept = Self {
            root: HostPhysAddr::new(0),
            caps,
            tables: 0,
        };
        ept.root = ept.alloc_table(frames)?;
        Ok(ept)
    }

    /// The host-physical address of the PML4 table.
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// The EPT capabilities the tree was built for.
    pub fn caps(&self) -> EptVpidCap {
        self.caps
    }

    /// How many table frames the tree holds, the PML4 included.
    pub fn table_frames(&self) -> usize {
        self.tables
    }

    /// The EPTP VM-execution control field for this tree (SDM Vol. 3C,
    /// 25.6.11): write-back paging structures (bits 2:0 = 6), a
    /// four-level walk (bits 5:3 = 3), accessed and dirty flags if
    /// `accessed_dirty` (bit 6), and the PML4 address in bits 51:12.
    ///
    /// Fails if `accessed_dirty` is asked for and the CPU lacks it.
    pub fn eptp(&self, accessed_dirty: bool) -> Result<u64, EptError> {
        let ad = if accessed_dirty {
            if !self.caps.contains(EptVpidCap::ACCESSED_DIRTY) {
                return Err(EptError::MissingCapability(EptVpidCap::ACCESSED_DIRTY));
            }
            EPTP_ACCESSED_DIRTY
        } else {
            0
        };
        Ok(self.root.as_u64() | EPTP_MEMORY_TYPE_WB | EPTP_WALK_LENGTH_4 | ad)
    }

    /// Maps the `len` bytes of guest-physical memory from `gpa` to the
    /// host-physical memory from `hpa`, with access `perms` and memory type
    /// `memory_type`.
    ///
    /// Each part of the range gets the largest page that fits: a 1 GiB page
    /// where the guest and host addresses are both 1 GiB aligned, a whole
    /// gigabyte remains and the CPU has [`EptVpidCap::PAGES_1G`]; a 2 MiB
    /// page likewise with [`EptVpidCap::PAGES_2M`]; 4 KiB pages elsewhere.
    ///
    /// Refused, with nothing changed: `gpa`, `hpa` or `len` not 4 KiB
    /// aligned, `len` zero, a guest range past 2^48 or a host range past
    /// 2^52, permissions the processor would reject (write without read,
    /// none of read and execute, execute-only without the capability), and
    /// a range of which any page is already mapped.
    ///
    /// If the frame allocator runs out (or hands out a bad frame) part way,
    /// the call undoes itself before returning the error: the entries it
    /// wrote are cleared, the tables it allocated are given back, and the
    /// tree translates exactly what it did before the call.
    pub fn map<F: TableFrames>(
        &mut self,
        frames: &mut F,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: EptPerms,
        memory_type: EptMemoryType,
    ) -> Result<(), EptError> {
        let req = self.validate(gpa, hpa, len, perms, memory_type)?;
        if let Some(mapped) = self.first_mapped(frames, self.root, PML4, 0, &req) {
            return Err(EptError::Overlap {
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

    /// The translation of `gpa` by a software walk of the tree (29.3.2),
    /// or `None` where it is not mapped.
    pub fn translate<F: TableFrames>(
        &self,
        frames: &mut F,
        gpa: GuestPhysAddr,
    ) -> Option<Translation> {
        let gpa = gpa.as_u64();
        if gpa >= GUEST_PHYS_LIMIT {
            return None;
        }
        let mut table = self.root;
        let mut level = PML4;
        loop {
            let entry = frames.table(table).entries[entry_index(gpa, level)];
            if !entry.is_present() {
                return None;
            }
            let large = entry.flags().contains(EptFlags::LARGE_PAGE);
            let page_size = match level {
                PT => PageSize::Size4K,
                PD if large => PageSize::Size2M,
                PDPT if large => PageSize::Size1G,
                // Bit 7 of a PML4E is reserved: a misconfiguration.
                PML4 if large => return None,
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
                perms: EptPerms::from_bits_truncate(entry.bits()),
                memory_type: EptMemoryType::of_entry(entry.bits())?,
                page_size,
            });
        }
    }

    /// Makes the gigabyte of guest-physical space at `gpa` (1 GiB aligned)
    /// translate as it does in `template`, by pointing this tree's
    /// page-directory-pointer entry at the template's page directory: the
    /// tables below are the template's, shared by every tree that shares
    /// them, and cost this tree nothing. The gigabyte counts as mapped
    /// here from then on: [`Self::map`] refuses any range that touches it,
    /// and [`Self::destroy`] leaves the shared tables alone (the template
    /// must outlive every tree that shares from it, and never change what
    /// it maps there).
    ///
    /// Refused, with nothing changed: `gpa` not 1 GiB aligned or past
    /// [`GUEST_PHYS_LIMIT`], a template that does not map that gigabyte
    /// through a page directory ([`EptError::NothingToShare`]), and a
    /// gigabyte this tree already maps part of ([`EptError::Overlap`]).
    pub fn share<F: TableFrames>(
        &mut self,
        frames: &mut F,
        template: &Ept,
        gpa: GuestPhysAddr,
    ) -> Result<(), EptError> {
        let start = gpa.as_u64();
        let span = entry_span(PDPT);
        if !start.is_multiple_of(span) || start >= GUEST_PHYS_LIMIT {
            return Err(EptError::NothingToShare(gpa));
        }
        // The template's page directory for the gigabyte.
        let pml4e = frames.table(template.root).entries[entry_index(start, PML4)];
        if !pml4e.is_present() || pml4e.flags().contains(EptFlags::LARGE_PAGE) {
            return Err(EptError::NothingToShare(gpa));
        }
        let pdpte = frames.table(pml4e.addr()).entries[entry_index(start, PDPT)];
        if !pdpte.is_present() || pdpte.flags().contains(EptFlags::LARGE_PAGE) {
            return Err(EptError::NothingToShare(gpa));
        }
        let req = Request {
            start,
            end: start + span,
            hpa: 0,
            leaf: 0,
        };
        if let Some(mapped) = self.first_mapped(frames, self.root, PML4, 0, &req) {
            return Err(EptError::Overlap {
                gpa: GuestPhysAddr::new(mapped),
            });
        }
        let i = entry_index(start, PML4);
        let entry = frames.table(self.root).entries[i];
        let pdpt = if entry.is_present() {
            entry.addr()
        } else {
            let pdpt = self.alloc_table(frames)?;
            frames.table(self.root).entries[i] = EptEntry(pdpt.as_u64() | TABLE_BITS);
            pdpt
        };
        frames.table(pdpt).entries[entry_index(start, PDPT)] =
            EptEntry(pdpte.addr().as_u64() | TABLE_BITS | SHARED);
        Ok(())
    }

    /// Gives every table frame back to `frames`, the PML4 last. The guest
    /// memory the tree mapped is the caller's and is not touched.
    ///
    /// No logical processor may use this EPT any more: the caller has
    /// stopped every vCPU that ran with [`Self::eptp`] and invalidated
    /// (INVEPT) what they cached from it.
    pub fn destroy<F: TableFrames>(mut self, frames: &mut F) {
        let root = self.root;
        self.free_below(frames, root, PML4);
        frames.free_table(root);
        self.tables -= 1;
    }

    /// Checks a map request and turns it into a [`Request`].
    fn validate(
        &self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: EptPerms,
        memory_type: EptMemoryType,
    ) -> Result<Request, EptError> {
        if !gpa.is_aligned(PAGE_SIZE) {
            return Err(EptError::MisalignedGuestAddr(gpa));
        }
        if !hpa.is_aligned(PAGE_SIZE) {
            return Err(EptError::MisalignedHostAddr(hpa));
        }
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(EptError::MisalignedLength(len));
        }
        if len == 0 {
            return Err(EptError::EmptyRange);
        }
        let end = match gpa.checked_add(len) {
            Some(end) if end.as_u64() <= GUEST_PHYS_LIMIT => end.as_u64(),
            _ => return Err(EptError::GuestRangeTooHigh { gpa, len }),
        };
        match hpa.checked_add(len) {
            Some(end) if end.as_u64() <= HOST_PHYS_LIMIT => {}
            _ => return Err(EptError::HostRangeTooHigh { hpa, len }),
        }
        let (read, write) = (
            perms.contains(EptPerms::READ),
            perms.contains(EptPerms::WRITE),
        );
        let execute = perms.intersects(EptPerms::EXECUTE | EptPerms::USER_EXECUTE);
        // "EPT Misconfigurations" (29.3.3): write without read is a misconfiguration; so is
        // execute-only without the capability. Nothing at all is "not
        // present", not a mapping.
        if (write && !read) || (!read && !execute) {
            return Err(EptError::InvalidPermissions(perms));
        }
        if !read && !self.caps.contains(EptVpidCap::EXECUTE_ONLY) {
            return Err(EptError::MissingCapability(EptVpidCap::EXECUTE_ONLY));
        }
        Ok(Request {
            start: gpa.as_u64(),
            end,
            hpa: hpa.as_u64(),
            leaf: perms.bits() | memory_type.entry_bits(),
        })
    }

    /// Whether a table at `level` may hold leaf entries on this CPU.
    fn leaf_allowed(&self, level: u8) -> bool {
        match level {
            PT => true,
            PD => self.caps.contains(EptVpidCap::PAGES_2M),
            PDPT => self.caps.contains(EptVpidCap::PAGES_1G),
            _ => false,
        }
    }

    /// A cleared table frame from `frames`, counted in [`Self::tables`].
    fn alloc_table<F: TableFrames>(&mut self, frames: &mut F) -> Result<HostPhysAddr, EptError> {
        let at = frames.alloc_table().ok_or(EptError::OutOfFrames)?;
        if !at.is_aligned(PAGE_SIZE) || at.as_u64() >= HOST_PHYS_LIMIT {
            frames.free_table(at);
            return Err(EptError::BadTableFrame(at));
        }
        // A recycled frame may hold old entries pointing anywhere in host
        // memory; they must never become reachable from a guest.
        frames.table(at).clear();
        self.tables += 1;
        Ok(at)
    }

    /// The lowest guest-physical address in the request's range that the
    /// subtree of `table` (at `level`, translating from `base`) maps.
    fn first_mapped<F: TableFrames>(
        &self,
        frames: &mut F,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        req: &Request,
    ) -> Option<u64> {
        for (i, e_start, lo, _) in touched(level, base, req.start, req.end) {
            let entry = frames.table(table).entries[i];
            if !entry.is_present() {
                continue;
            }
            // A shared gigabyte is taken as a whole.
            if level == PT || entry.flags().contains(EptFlags::LARGE_PAGE) || is_shared(entry) {
                return Some(lo);
            }
            if let Some(found) = self.first_mapped(frames, entry.addr(), level - 1, e_start, req) {
                return Some(found);
            }
        }
        None
    }

    /// Writes the request's part under `table` (at `level`, translating
    /// from `base`), allocating tables as needed. Stops at the first error;
    /// [`Self::map`] undoes the rest.
    fn map_in<F: TableFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        level: u8,
        base: u64,
        req: &Request,
    ) -> Result<(), EptError> {
        let span = entry_span(level);
        for (i, e_start, lo, hi) in touched(level, base, req.start, req.end) {
            let entry = frames.table(table).entries[i];
            let host = req.hpa_of(lo);
            let whole = lo == e_start && hi - lo == span && host.is_multiple_of(span);
            if !entry.is_present() && whole && self.leaf_allowed(level) {
                let large = if level == PT {
                    0
                } else {
                    EptFlags::LARGE_PAGE.bits()
                };
                frames.table(table).entries[i] = EptEntry(host | req.leaf | large);
                continue;
            }
            let next = if !entry.is_present() {
                let next = self.alloc_table(frames)?;
                frames.table(table).entries[i] = EptEntry(next.as_u64() | TABLE_BITS);
                next
            } else if level == PT
                || entry.flags().contains(EptFlags::LARGE_PAGE)
                || is_shared(entry)
            {
                // Ruled out by the overlap check in `map`.
                return Err(EptError::Overlap {
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
    fn unmap_in<F: TableFrames>(
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
            let entry = frames.table(table).entries[i];
            // Another tree's tables: nothing of this call's is there.
            if !entry.is_present() || is_shared(entry) {
                continue;
            }
            if level == PT || entry.flags().contains(EptFlags::LARGE_PAGE) {
                if lo == e_start && hi - lo == span {
                    frames.table(table).entries[i] = EptEntry::EMPTY;
                }
                continue;
            }
            let child = entry.addr();
            if self.unmap_in(frames, child, level - 1, e_start, start, end) {
                // Unlink before giving the frame back.
                frames.table(table).entries[i] = EptEntry::EMPTY;
                frames.free_table(child);
                self.tables -= 1;
            }
        }
        frames.table(table).is_empty()
    }

    /// Gives back every table below `table` (at `level`), not `table`
    /// itself.
    fn free_below<F: TableFrames>(&mut self, frames: &mut F, table: HostPhysAddr, level: u8) {
        if level == PT {
            return;
        }
        for i in 0..ENTRIES {
            let entry = frames.table(table).entries[i];
            if !entry.is_present() || entry.flags().contains(EptFlags::LARGE_PAGE) {
                continue;
            }
            if is_shared(entry) {
                // The template's: unlinked, not freed.
                frames.table(table).entries[i] = EptEntry::EMPTY;
                continue;
            }
            let child = entry.addr();
            self.free_below(frames, child, level - 1);
            frames.table(table).entries[i] = EptEntry::EMPTY;
            frames.free_table(child);
            self.tables -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Made-up physical addresses of the heap tables start here, far above
    /// the guest memory the tests map, so a table taken for a guest page
    /// (or the reverse) shows.
    const FRAME_BASE: u64 = 0x8_0000_0000_0000;

    /// What a new heap table is filled with: every entry present and
    /// pointing somewhere, so a table the EPT forgets to clear shows up as
    /// stray translations.
    const GARBAGE: EptEntry = EptEntry(0x000F_FFFF_FFFF_F0B7);

    const CAPS_4K: EptVpidCap = EptVpidCap::PAGE_WALK_LENGTH_4.union(EptVpidCap::MEMORY_TYPE_WB);
    const CAPS_2M: EptVpidCap = CAPS_4K.union(EptVpidCap::PAGES_2M);
    const CAPS_1G: EptVpidCap = CAPS_2M.union(EptVpidCap::PAGES_1G);

    const RWX: EptPerms = EptPerms::READ
        .union(EptPerms::WRITE)
        .union(EptPerms::EXECUTE);
    const WB: EptMemoryType = EptMemoryType::WriteBack;

    /// Table frames over the heap, counting what is out, with an optional
    /// cap on how many may be out at once and an optional bad frame to hand
    /// out next.
    #[derive(Default)]
    struct HeapFrames {
        slots: Vec<Option<Box<EptTable>>>,
        outstanding: usize,
        allocated: usize,
        freed: usize,
        limit: Option<usize>,
        bad_next: Option<HostPhysAddr>,
        bad_out: Option<HostPhysAddr>,
    }

    impl HeapFrames {
        fn limited(limit: usize) -> Self {
            Self {
                limit: Some(limit),
                ..Self::default()
            }
        }

        fn slot(&self, at: HostPhysAddr) -> usize {
            let a = at.as_u64();
            assert!(
                a >= FRAME_BASE && at.is_aligned(PAGE_SIZE),
                "{at} is not a table frame"
            );
            usize::try_from((a - FRAME_BASE) / PAGE_SIZE).unwrap()
        }
    }

    impl TableFrames for HeapFrames {
        fn alloc_table(&mut self) -> Option<HostPhysAddr> {
            if let Some(bad) = self.bad_next.take() {
                self.bad_out = Some(bad);
                return Some(bad);
            }
            if self.limit.is_some_and(|limit| self.outstanding >= limit) {
                return None;
            }
            let mut table = Box::new(EptTable::new());
            table.entries = [GARBAGE; ENTRIES];
            self.slots.push(Some(table));
            self.outstanding += 1;
            self.allocated += 1;
            Some(HostPhysAddr::new(
                FRAME_BASE + (self.slots.len() as u64 - 1) * PAGE_SIZE,
            ))
        }

        fn free_table(&mut self, at: HostPhysAddr) {
            if self.bad_out == Some(at) {
                self.bad_out = None;
                return;
            }
            let slot = self.slot(at);
            assert!(
                self.slots.get_mut(slot).and_then(Option::take).is_some(),
                "{at} freed twice or never allocated"
            );
            self.outstanding -= 1;
            self.freed += 1;
        }

        fn table(&mut self, at: HostPhysAddr) -> &mut EptTable {
            let slot = self.slot(at);
            self.slots
                .get_mut(slot)
                .and_then(|t| t.as_deref_mut())
                .unwrap_or_else(|| panic!("table {at} used while not allocated"))
        }
    }

    /// The host address and page size `gpa` translates to.
    fn tr(ept: &Ept, frames: &mut HeapFrames, gpa: u64) -> Option<(u64, PageSize)> {
        ept.translate(frames, GuestPhysAddr::new(gpa))
            .map(|t| (t.hpa.as_u64(), t.page_size))
    }

    fn map(
        ept: &mut Ept,
        frames: &mut HeapFrames,
        gpa: u64,
        hpa: u64,
        len: u64,
    ) -> Result<(), EptError> {
        ept.map(
            frames,
            GuestPhysAddr::new(gpa),
            HostPhysAddr::new(hpa),
            len,
            RWX,
            WB,
        )
    }

    /// Walks the whole tree the way the processor would and checks every
    /// entry against Tables 29-1 to 29-6: non-leaf entries grant
    /// everything and have bits 7:3 clear, leaves have a valid memory type
    /// and no address bits below their page size, bit 7 only where it
    /// means "large page", write only with read. Also checks that no table
    /// but the root is empty. Returns the number of tables.
    fn check_tree(ept: &Ept, frames: &mut HeapFrames) -> usize {
        let tables = check_tree_among(ept, frames);
        assert_eq!(tables, frames.outstanding);
        tables
    }

    /// The walk of [`check_tree`]: the tables under `table`, itself
    /// included.
    fn walk(frames: &mut HeapFrames, table: HostPhysAddr, level: u8, root: bool) -> usize {
        let entries = *frames.table(table).entries();
        assert!(
            root || entries.iter().any(|e| e.is_present()),
            "empty table {table} left linked at level {level}"
        );
        let mut tables = 1;
        for (i, e) in entries.iter().enumerate() {
            if !e.is_present() {
                assert_eq!(e.bits(), 0, "level {level} entry {i} not cleared");
                continue;
            }
            let flags = e.flags();
            let leaf = level == PT || flags.contains(EptFlags::LARGE_PAGE);
            if is_shared(*e) {
                // Another tree's page directory: not this tree's table.
                assert_eq!(level, PDPT, "a shared link at level {level}");
                assert_eq!(e.bits() & !ADDR_MASK, TABLE_BITS | SHARED);
                continue;
            }
            if !leaf {
                assert_eq!(e.bits() & !ADDR_MASK, TABLE_BITS, "level {level} entry {i}");
                tables += walk(frames, e.addr(), level - 1, false);
                continue;
            }
            assert!(level != PML4, "large page in the PML4");
            let size = entry_span(level);
            assert_eq!(
                e.bits() & ADDR_MASK & (size - 1),
                0,
                "reserved address bits"
            );
            assert!(EptMemoryType::of_entry(e.bits()).is_some());
            assert!(!flags.contains(EptFlags::WRITE) || flags.contains(EptFlags::READ));
            assert!(!flags.contains(EptFlags::IGNORE_PAT));
            assert_eq!(flags.contains(EptFlags::LARGE_PAGE), level != PT);
        }
        tables
    }

    /// [`check_tree`] for one of several trees taking frames from
    /// `frames`: the tree's own tables are checked and counted, not
    /// compared with what is out.
    fn check_tree_among(ept: &Ept, frames: &mut HeapFrames) -> usize {
        let tables = walk(frames, ept.root(), PML4, true);
        assert_eq!(tables, ept.table_frames());
        tables
    }

    /// Checks the tree, destroys it and checks every table frame came back.
    fn finish(ept: Ept, frames: &mut HeapFrames) {
        check_tree(&ept, frames);
        ept.destroy(frames);
        assert_eq!(frames.outstanding, 0);
        assert_eq!(frames.freed, frames.allocated);
    }

    /// 6 MiB + 12 KiB starting one page below a 2 MiB boundary: one 4 KiB
    /// page, three 2 MiB pages, two 4 KiB pages where the host address
    /// allows, all 4 KiB pages where it or the CPU does not.
    #[test]
    fn ragged_range_maps_every_page_with_the_largest_page_that_fits() {
        const GPA: u64 = SIZE_2M - PAGE_SIZE;
        const LEN: u64 = 6 * SIZE_2M / 2 + 3 * PAGE_SIZE;
        // (caps, host start, expected tables, 2 MiB pages used)
        let cases = [
            // PML4 + PDPT + PD + PTs under PD entries 0 and 4.
            (CAPS_2M, 0x1_0000_0000 + GPA, 5, true),
            (CAPS_1G, 0x1_0000_0000 + GPA, 5, true),
            // PML4 + PDPT + PD + PTs under PD entries 0 to 4.
            (CAPS_4K, 0x1_0000_0000 + GPA, 8, false),
            // Host address one page off the guest's 2 MiB phase.
            (CAPS_2M, 0x1_0000_0000 + GPA + PAGE_SIZE, 8, false),
        ];
        for (caps, hpa, tables, large) in cases {
            let mut frames = HeapFrames::default();
            let mut ept = Ept::new(&mut frames, caps).unwrap();
            map(&mut ept, &mut frames, GPA, hpa, LEN).unwrap();
            assert_eq!(ept.table_frames(), tables, "caps {caps:?} hpa {hpa:#x}");

            for gpa in (GPA..GPA + LEN).step_by(PAGE_SIZE as usize) {
                let in_2m = (SIZE_2M..4 * SIZE_2M).contains(&gpa);
                let size = if large && in_2m {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                };
                assert_eq!(
                    tr(&ept, &mut frames, gpa + 0x123),
                    Some((hpa + (gpa - GPA) + 0x123, size)),
                    "gpa {gpa:#x}"
                );
            }
            for outside in [0, GPA - 1, GPA + LEN, GPA + LEN + PAGE_SIZE, SIZE_1G] {
                assert_eq!(tr(&ept, &mut frames, outside), None, "gpa {outside:#x}");
            }
            finish(ept, &mut frames);
        }
    }

    /// A 4 GiB guest's RAM as the kernel maps it: 3 GiB at guest 0 and the
    /// last GiB at guest 4 GiB, from host blocks that are not in guest
    /// order. Both ranges take 1 GiB pages in one PDPT, so no more tables
    /// than one 4 GiB range; the device window between maps nothing.
    #[test]
    fn ram_split_around_the_device_window_maps_both_ranges_and_not_the_window() {
        const HIGH_HPA: u64 = SIZE_1G;
        const LOW_HPA: u64 = 8 * SIZE_1G;
        for (caps, tables, size) in [
            (CAPS_1G, 2, PageSize::Size1G),
            // PML4 + PDPT + one PD per GiB.
            (CAPS_2M, 2 + 4, PageSize::Size2M),
        ] {
            let mut frames = HeapFrames::default();
            let mut ept = Ept::new(&mut frames, caps).unwrap();
            map(&mut ept, &mut frames, 0, LOW_HPA, 3 * SIZE_1G).unwrap();
            map(&mut ept, &mut frames, 4 * SIZE_1G, HIGH_HPA, SIZE_1G).unwrap();
            assert_eq!(ept.table_frames(), tables, "caps {caps:?}");
            for (gpa, hpa) in [
                (0, LOW_HPA),
                (3 * SIZE_1G - 1, LOW_HPA + 3 * SIZE_1G - 1),
                (4 * SIZE_1G, HIGH_HPA),
                (5 * SIZE_1G - 1, HIGH_HPA + SIZE_1G - 1),
            ] {
                assert_eq!(
                    tr(&ept, &mut frames, gpa),
                    Some((hpa, size)),
                    "gpa {gpa:#x}"
                );
            }
            for window in [
                3 * SIZE_1G,
                0xFEC0_0000,
                0xFEE0_0000,
                4 * SIZE_1G - 1,
                5 * SIZE_1G,
            ] {
                assert_eq!(tr(&ept, &mut frames, window), None, "gpa {window:#x}");
            }
            check_tree(&ept, &mut frames);
            finish(ept, &mut frames);
        }
    }

    /// 3 GiB of RAM at guest 0 from an aligned host address.
    #[test]
    fn three_gib_uses_huge_pages_where_aligned() {
        const LEN: u64 = 3 * SIZE_1G;
        const HPA: u64 = 4 * SIZE_1G;
        // (caps, host start, expected tables, page size)
        let cases = [
            // PML4 + PDPT.
            (CAPS_1G, HPA, 2, PageSize::Size1G),
            // PML4 + PDPT + 3 PDs.
            (CAPS_2M, HPA, 5, PageSize::Size2M),
            // 1 GiB pages allowed, but the host is only 2 MiB aligned.
            (CAPS_1G, HPA + SIZE_2M, 5, PageSize::Size2M),
            // PML4 + PDPT + 3 PDs + 3 * 512 PTs.
            (CAPS_4K, HPA, 2 + 3 + 3 * 512, PageSize::Size4K),
        ];
        for (caps, hpa, tables, size) in cases {
            let mut frames = HeapFrames::default();
            let mut ept = Ept::new(&mut frames, caps).unwrap();
            map(&mut ept, &mut frames, 0, hpa, LEN).unwrap();
            assert_eq!(ept.table_frames(), tables, "caps {caps:?} hpa {hpa:#x}");
            // Every 2 MiB block, at a page offset that moves through it.
            let samples = (0..LEN / SIZE_2M).map(|i| i * SIZE_2M + (i * 0x7123) % SIZE_2M);
            for gpa in samples.chain([0, LEN - 1]) {
                assert_eq!(
                    tr(&ept, &mut frames, gpa),
                    Some((hpa + gpa, size)),
                    "gpa {gpa:#x}"
                );
            }
            for outside in [LEN, LEN + PAGE_SIZE, HPA, GUEST_PHYS_LIMIT - 1] {
                assert_eq!(tr(&ept, &mut frames, outside), None, "gpa {outside:#x}");
            }
            finish(ept, &mut frames);
        }
    }

    /// 2 MiB, 1 GiB, 2 MiB and 4 KiB pages in one range that crosses two
    /// gigabyte boundaries.
    #[test]
    fn one_range_mixes_all_three_page_sizes() {
        const GPA: u64 = SIZE_1G - SIZE_2M;
        const LEN: u64 = SIZE_1G + 2 * SIZE_2M + PAGE_SIZE;
        const HPA: u64 = 8 * SIZE_1G + GPA;
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        map(&mut ept, &mut frames, GPA, HPA, LEN).unwrap();
        // PML4 + PDPT + PDs under PDPT entries 0 and 2 + one PT.
        assert_eq!(ept.table_frames(), 5);
        let expect = [
            (GPA, PageSize::Size2M),
            (SIZE_1G - 1, PageSize::Size2M),
            (SIZE_1G, PageSize::Size1G),
            (2 * SIZE_1G - 1, PageSize::Size1G),
            (2 * SIZE_1G, PageSize::Size2M),
            (2 * SIZE_1G + SIZE_2M - 1, PageSize::Size2M),
            (2 * SIZE_1G + SIZE_2M, PageSize::Size4K),
            (GPA + LEN - 1, PageSize::Size4K),
        ];
        for (gpa, size) in expect {
            assert_eq!(
                tr(&ept, &mut frames, gpa),
                Some((HPA + (gpa - GPA), size)),
                "gpa {gpa:#x}"
            );
        }
        assert_eq!(tr(&ept, &mut frames, GPA - 1), None);
        assert_eq!(tr(&ept, &mut frames, GPA + LEN), None);
        finish(ept, &mut frames);
    }

    /// Low RAM, a hole, high RAM and an uncacheable device page: each
    /// translates with its own rights and type, nothing between them does.
    #[test]
    fn holes_and_neighbours_stay_unmapped() {
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        let uc = EptMemoryType::Uncacheable;
        let rw = EptPerms::READ | EptPerms::WRITE;
        let ranges = [
            (0, 0x10_0000_0000, 0xA_0000, RWX, WB),
            (0x10_0000, 0x10_0010_0000, 0x7FF0_0000, RWX, WB),
            (0xFEE0_0000, 0xFEE0_0000, PAGE_SIZE, rw, uc),
            (4 * SIZE_1G, 0x20_0000_0000, SIZE_1G, EptPerms::READ, WB),
        ];
        for (gpa, hpa, len, perms, ty) in ranges {
            ept.map(
                &mut frames,
                GuestPhysAddr::new(gpa),
                HostPhysAddr::new(hpa),
                len,
                perms,
                ty,
            )
            .unwrap();
        }
        for (gpa, hpa, len, perms, ty) in ranges {
            for at in [gpa, gpa + len / 2, gpa + len - 1] {
                let t = ept.translate(&mut frames, GuestPhysAddr::new(at)).unwrap();
                assert_eq!(t.hpa, HostPhysAddr::new(hpa + (at - gpa)));
                assert_eq!((t.perms, t.memory_type), (perms, ty));
            }
            assert_eq!(tr(&ept, &mut frames, gpa + len), None);
            if gpa > 0 {
                assert_eq!(tr(&ept, &mut frames, gpa - 1), None);
            }
        }
        for hole in [
            0xA_0000,
            0xF_F000,
            0x8000_0000,
            0xFEDF_F000,
            0xFEE0_1000,
            5 * SIZE_1G,
        ] {
            assert_eq!(tr(&ept, &mut frames, hole), None, "gpa {hole:#x}");
        }
        // Past what a four-level walk translates.
        assert_eq!(tr(&ept, &mut frames, GUEST_PHYS_LIMIT), None);
        assert_eq!(tr(&ept, &mut frames, u64::MAX), None);
        finish(ept, &mut frames);
    }

    /// The raw entries match Tables 29-1 to 29-6 bit for bit.
    #[test]
    fn entries_have_the_sdm_layout() {
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        let pages = [
            // 4 KiB read-only UC at 0x1000 -> 0x7000.
            (
                0x1000,
                0x7000,
                PAGE_SIZE,
                EptPerms::READ,
                EptMemoryType::Uncacheable,
            ),
            // 2 MiB read-execute WB at 2 MiB -> 10 MiB.
            (
                SIZE_2M,
                0xA0_0000,
                SIZE_2M,
                EptPerms::READ | EptPerms::EXECUTE,
                WB,
            ),
            // 1 GiB RWX + user-execute WT at 1 GiB -> 3 GiB.
            (
                SIZE_1G,
                3 * SIZE_1G,
                SIZE_1G,
                RWX | EptPerms::USER_EXECUTE,
                EptMemoryType::WriteThrough,
            ),
        ];
        for (gpa, hpa, len, perms, ty) in pages {
            ept.map(
                &mut frames,
                GuestPhysAddr::new(gpa),
                HostPhysAddr::new(hpa),
                len,
                perms,
                ty,
            )
            .unwrap();
        }
        let entry = |frames: &mut HeapFrames, table: HostPhysAddr, i: usize| {
            frames.table(table).entries()[i].bits()
        };
        // Non-leaf: address | user-execute | execute | write | read.
        let pml4e = entry(&mut frames, ept.root(), 0);
        assert_eq!(pml4e & !ADDR_MASK, 0x407);
        let pdpt = HostPhysAddr::new(pml4e & ADDR_MASK);
        assert_eq!(
            entry(&mut frames, pdpt, 1),
            0xC000_0000 | 0x400 | 0x80 | (4 << 3) | 0x7
        );
        let pdpte = entry(&mut frames, pdpt, 0);
        assert_eq!(pdpte & !ADDR_MASK, 0x407);
        let pd = HostPhysAddr::new(pdpte & ADDR_MASK);
        assert_eq!(entry(&mut frames, pd, 1), 0xA0_0000 | 0x80 | (6 << 3) | 0x5);
        let pde = entry(&mut frames, pd, 0);
        assert_eq!(pde & !ADDR_MASK, 0x407);
        let pt = HostPhysAddr::new(pde & ADDR_MASK);
        assert_eq!(entry(&mut frames, pt, 1), 0x7000 | 0x1);
        assert_eq!(entry(&mut frames, pt, 0), 0);
        finish(ept, &mut frames);
    }

    #[test]
    fn eptp_holds_type_walk_length_flags_and_root() {
        let mut frames = HeapFrames::default();
        let ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        let root = ept.root().as_u64();
        assert_eq!(root, FRAME_BASE);
        // WB (6) in 2:0, walk length 4 - 1 = 3 in 5:3, no A/D.
        assert_eq!(ept.eptp(false), Ok(root | 0x1E));
        assert_eq!(
            ept.eptp(true),
            Err(EptError::MissingCapability(EptVpidCap::ACCESSED_DIRTY))
        );
        finish(ept, &mut frames);

        let ept = Ept::new(&mut frames, CAPS_4K | EptVpidCap::ACCESSED_DIRTY).unwrap();
        let root = ept.root().as_u64();
        assert_eq!(ept.eptp(true), Ok(root | 0x5E));
        assert_eq!(ept.eptp(false), Ok(root | 0x1E));
        finish(ept, &mut frames);
    }

    #[test]
    fn a_cpu_without_the_needed_capabilities_is_refused() {
        let mut frames = HeapFrames::default();
        for (caps, missing) in [
            (EptVpidCap::MEMORY_TYPE_WB, EptVpidCap::PAGE_WALK_LENGTH_4),
            (EptVpidCap::PAGE_WALK_LENGTH_4, EptVpidCap::MEMORY_TYPE_WB),
        ] {
            assert_eq!(
                Ept::new(&mut frames, caps).unwrap_err(),
                EptError::MissingCapability(missing)
            );
        }
        assert_eq!(frames.allocated, 0);
    }

    #[test]
    fn overlapping_maps_are_refused_and_change_nothing() {
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        // 2 MiB pages over [2 MiB, 6 MiB), one 4 KiB page at 20 KiB.
        map(&mut ept, &mut frames, SIZE_2M, SIZE_1G, 2 * SIZE_2M).unwrap();
        map(&mut ept, &mut frames, 0x5000, 0x9000, PAGE_SIZE).unwrap();
        let tables = ept.table_frames();
        let overlaps = [
            // (gpa, len, first mapped address reported)
            (
                3 * SIZE_2M - PAGE_SIZE,
                2 * PAGE_SIZE,
                3 * SIZE_2M - PAGE_SIZE,
            ),
            (SIZE_2M + 0x10_0000, PAGE_SIZE, SIZE_2M + 0x10_0000),
            (0x6000, SIZE_2M, SIZE_2M),
            (0, SIZE_2M, 0x5000),
            (0, SIZE_1G, 0x5000),
            (0, 4 * SIZE_1G, 0x5000),
            (0x5000, PAGE_SIZE, 0x5000),
        ];
        for (gpa, len, first) in overlaps {
            assert_eq!(
                map(&mut ept, &mut frames, gpa, 0x4000_0000_0000, len),
                Err(EptError::Overlap {
                    gpa: GuestPhysAddr::new(first)
                }),
                "gpa {gpa:#x} len {len:#x}"
            );
            assert_eq!(ept.table_frames(), tables);
        }
        // Nothing of the refused ranges got mapped.
        for gpa in [
            0,
            0x4000,
            0x6000,
            0x1F_F000,
            3 * SIZE_2M,
            SIZE_1G,
            3 * SIZE_1G,
        ] {
            assert_eq!(tr(&ept, &mut frames, gpa), None, "gpa {gpa:#x}");
        }
        assert_eq!(
            tr(&ept, &mut frames, 0x5000),
            Some((0x9000, PageSize::Size4K))
        );
        assert_eq!(
            tr(&ept, &mut frames, 2 * SIZE_2M),
            Some((SIZE_1G + SIZE_2M, PageSize::Size2M))
        );
        // Right next to existing mappings is fine.
        map(&mut ept, &mut frames, 0x4000, 0x2000, PAGE_SIZE).unwrap();
        map(&mut ept, &mut frames, 0x6000, 0x3000, SIZE_2M - 0x6000).unwrap();
        map(&mut ept, &mut frames, 3 * SIZE_2M, 0, SIZE_2M).unwrap();
        finish(ept, &mut frames);
    }

    #[test]
    fn bad_requests_are_refused_and_change_nothing() {
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        let g = GuestPhysAddr::new;
        let h = HostPhysAddr::new;
        let r = EptPerms::READ;
        let cases = [
            (
                (0x1800, 0x1000, PAGE_SIZE, RWX),
                EptError::MisalignedGuestAddr(g(0x1800)),
            ),
            (
                (0x1000, 0x1001, PAGE_SIZE, RWX),
                EptError::MisalignedHostAddr(h(0x1001)),
            ),
            (
                (0x1000, 0x1000, 0x1800, RWX),
                EptError::MisalignedLength(0x1800),
            ),
            ((0x1000, 0x1000, 0, RWX), EptError::EmptyRange),
            (
                (GUEST_PHYS_LIMIT - PAGE_SIZE, 0, 2 * PAGE_SIZE, RWX),
                EptError::GuestRangeTooHigh {
                    gpa: g(GUEST_PHYS_LIMIT - PAGE_SIZE),
                    len: 2 * PAGE_SIZE,
                },
            ),
            (
                (GUEST_PHYS_LIMIT, 0, PAGE_SIZE, RWX),
                EptError::GuestRangeTooHigh {
                    gpa: g(GUEST_PHYS_LIMIT),
                    len: PAGE_SIZE,
                },
            ),
            (
                (u64::MAX - 0xFFF, 0, PAGE_SIZE, RWX),
                EptError::GuestRangeTooHigh {
                    gpa: g(u64::MAX - 0xFFF),
                    len: PAGE_SIZE,
                },
            ),
            (
                (0, HOST_PHYS_LIMIT - PAGE_SIZE, 2 * PAGE_SIZE, RWX),
                EptError::HostRangeTooHigh {
                    hpa: h(HOST_PHYS_LIMIT - PAGE_SIZE),
                    len: 2 * PAGE_SIZE,
                },
            ),
            (
                (0, u64::MAX - 0xFFF, SIZE_1G, RWX),
                EptError::HostRangeTooHigh {
                    hpa: h(u64::MAX - 0xFFF),
                    len: SIZE_1G,
                },
            ),
            (
                (0, 0, PAGE_SIZE, EptPerms::empty()),
                EptError::InvalidPermissions(EptPerms::empty()),
            ),
            (
                (0, 0, PAGE_SIZE, EptPerms::WRITE),
                EptError::InvalidPermissions(EptPerms::WRITE),
            ),
            (
                (0, 0, PAGE_SIZE, EptPerms::WRITE | EptPerms::EXECUTE),
                EptError::InvalidPermissions(EptPerms::WRITE | EptPerms::EXECUTE),
            ),
            (
                (0, 0, PAGE_SIZE, EptPerms::EXECUTE),
                EptError::MissingCapability(EptVpidCap::EXECUTE_ONLY),
            ),
        ];
        for ((gpa, hpa, len, perms), err) in cases {
            assert_eq!(
                ept.map(&mut frames, g(gpa), h(hpa), len, perms, WB),
                Err(err),
                "gpa {gpa:#x} hpa {hpa:#x} len {len:#x}"
            );
            assert_eq!(ept.table_frames(), 1);
        }
        // The last page below the limits is fine, and so is read-only.
        ept.map(
            &mut frames,
            g(GUEST_PHYS_LIMIT - PAGE_SIZE),
            h(HOST_PHYS_LIMIT - PAGE_SIZE),
            PAGE_SIZE,
            r,
            WB,
        )
        .unwrap();
        assert_eq!(
            tr(&ept, &mut frames, GUEST_PHYS_LIMIT - 1),
            Some((HOST_PHYS_LIMIT - 1, PageSize::Size4K))
        );
        finish(ept, &mut frames);

        // Execute-only where the CPU has it.
        let mut ept = Ept::new(&mut frames, CAPS_4K | EptVpidCap::EXECUTE_ONLY).unwrap();
        ept.map(
            &mut frames,
            g(0),
            h(0x3000),
            PAGE_SIZE,
            EptPerms::EXECUTE,
            WB,
        )
        .unwrap();
        let t = ept.translate(&mut frames, g(0)).unwrap();
        assert_eq!(t.perms, EptPerms::EXECUTE);
        finish(ept, &mut frames);
    }

    /// Running out of frames at every possible point leaves the tree as it
    /// was and every frame of the failed call given back.
    #[test]
    fn running_out_of_frames_undoes_the_partial_map() {
        const GPA: u64 = SIZE_2M - PAGE_SIZE;
        const LEN: u64 = 3 * SIZE_2M + 3 * PAGE_SIZE;
        for spare in 0..3 {
            // An existing 4 KiB page at 1 GiB: PML4, PDPT, PD, PT.
            let mut frames = HeapFrames::limited(4 + spare);
            let mut ept = Ept::new(&mut frames, CAPS_2M).unwrap();
            map(&mut ept, &mut frames, SIZE_1G, 0x5000, PAGE_SIZE).unwrap();
            // The new range needs a PD and two PTs.
            assert_eq!(
                map(&mut ept, &mut frames, GPA, GPA, LEN),
                Err(EptError::OutOfFrames),
                "{spare} spare frames"
            );
            assert_eq!(ept.table_frames(), 4);
            assert_eq!(frames.allocated - frames.freed, 4);
            for gpa in (GPA..GPA + LEN).step_by(PAGE_SIZE as usize) {
                assert_eq!(tr(&ept, &mut frames, gpa), None, "gpa {gpa:#x}");
            }
            assert_eq!(
                tr(&ept, &mut frames, SIZE_1G),
                Some((0x5000, PageSize::Size4K))
            );
            check_tree(&ept, &mut frames);
            // With the frame it lacked, the same call succeeds.
            frames.limit = Some(7);
            map(&mut ept, &mut frames, GPA, GPA, LEN).unwrap();
            assert_eq!(ept.table_frames(), 7);
            finish(ept, &mut frames);
        }

        // Half way through 3 GiB of 4 KiB pages.
        let mut frames = HeapFrames::limited(700);
        let mut ept = Ept::new(&mut frames, CAPS_4K).unwrap();
        assert_eq!(
            map(&mut ept, &mut frames, 0, 0, 3 * SIZE_1G),
            Err(EptError::OutOfFrames)
        );
        assert_eq!(ept.table_frames(), 1);
        assert_eq!(tr(&ept, &mut frames, 0), None);
        assert_eq!(frames.allocated, 700);
        finish(ept, &mut frames);

        // Not even a root.
        let mut frames = HeapFrames::limited(0);
        assert_eq!(
            Ept::new(&mut frames, CAPS_1G).unwrap_err(),
            EptError::OutOfFrames
        );
    }

    #[test]
    fn a_bad_frame_from_the_allocator_is_given_back() {
        for bad in [0x1234, HOST_PHYS_LIMIT] {
            let bad = HostPhysAddr::new(bad);
            let mut frames = HeapFrames {
                bad_next: Some(bad),
                ..HeapFrames::default()
            };
            assert_eq!(
                Ept::new(&mut frames, CAPS_1G).unwrap_err(),
                EptError::BadTableFrame(bad)
            );
            assert_eq!(frames.bad_out, None, "{bad} not given back");

            // Mid-map: the PDPT is fine, the PD is not.
            let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
            map(&mut ept, &mut frames, 0, 0, PAGE_SIZE).unwrap();
            frames.bad_next = Some(bad);
            assert_eq!(
                map(&mut ept, &mut frames, SIZE_1G, 0, PAGE_SIZE),
                Err(EptError::BadTableFrame(bad))
            );
            assert_eq!(frames.bad_out, None);
            assert_eq!(ept.table_frames(), 4);
            assert_eq!(tr(&ept, &mut frames, SIZE_1G), None);
            finish(ept, &mut frames);
        }
    }

    #[test]
    fn destroy_gives_back_tables_and_nothing_else() {
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        // Guest memory deliberately placed among made-up table addresses:
        // `free_table` would panic on any of it, since it is not a table.
        let host = FRAME_BASE + 0x100_0000_0000;
        map(
            &mut ept,
            &mut frames,
            0,
            host,
            2 * SIZE_1G + SIZE_2M + PAGE_SIZE,
        )
        .unwrap();
        map(&mut ept, &mut frames, 0x80_0000_0000, host, PAGE_SIZE).unwrap();
        assert_eq!(ept.table_frames(), 2 + 1 + 1 + 3);
        finish(ept, &mut frames);
        assert_eq!(frames.allocated, 7);
    }

    /// A template mapping one 4 KiB page at 0xFEE0_0000 (the local APIC's
    /// page), as the kernel builds it for its guests.
    fn apic_template(frames: &mut HeapFrames, host: u64) -> Ept {
        let mut template = Ept::new(frames, CAPS_1G).unwrap();
        map(&mut template, frames, 0xFEE0_0000, host, PAGE_SIZE).unwrap();
        template
    }

    #[test]
    fn a_shared_gigabyte_translates_as_the_template_and_is_never_the_sharers() {
        let mut frames = HeapFrames::default();
        let apic = FRAME_BASE + 0x200_0000_0000;
        let template = apic_template(&mut frames, apic);
        let template_tables = template.table_frames();
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        map(&mut ept, &mut frames, 0, 0x4000_0000, 256 * SIZE_2M).unwrap();
        let own = ept.table_frames();
        ept.share(&mut frames, &template, GuestPhysAddr::new(3 * SIZE_1G))
            .unwrap();
        // The PDPT was there already: sharing took no table.
        assert_eq!(ept.table_frames(), own);
        assert_eq!(
            tr(&ept, &mut frames, 0xFEE0_0040),
            Some((apic + 0x40, PageSize::Size4K))
        );
        assert_eq!(tr(&ept, &mut frames, 0xFEC0_0000), None);
        assert_eq!(
            tr(&ept, &mut frames, 0x1000),
            Some((0x4000_1000, PageSize::Size2M))
        );
        // Nothing can be mapped through the shared tables, even where
        // they map nothing; the gigabyte counts as taken from its start.
        for gpa in [3 * SIZE_1G, 0xFEC0_0000, 0xFEE0_0000] {
            assert_eq!(
                map(&mut ept, &mut frames, gpa, 0x1_0000_0000, PAGE_SIZE),
                Err(EptError::Overlap {
                    gpa: GuestPhysAddr::new(gpa)
                })
            );
        }
        assert_eq!(
            map(
                &mut ept,
                &mut frames,
                3 * SIZE_1G - PAGE_SIZE,
                0,
                2 * PAGE_SIZE
            ),
            Err(EptError::Overlap {
                gpa: GuestPhysAddr::new(3 * SIZE_1G)
            })
        );
        // A second sharer of the same template.
        let mut other = Ept::new(&mut frames, CAPS_1G).unwrap();
        other
            .share(&mut frames, &template, GuestPhysAddr::new(3 * SIZE_1G))
            .unwrap();
        assert_eq!(other.table_frames(), 2);
        check_tree_among(&template, &mut frames);
        check_tree_among(&ept, &mut frames);
        check_tree_among(&other, &mut frames);
        // Destroying the sharers leaves the template whole.
        let outstanding = frames.outstanding;
        ept.destroy(&mut frames);
        other.destroy(&mut frames);
        assert_eq!(frames.outstanding, outstanding - own - 2);
        assert_eq!(frames.outstanding, template_tables);
        assert_eq!(
            tr(&template, &mut frames, 0xFEE0_0000),
            Some((apic, PageSize::Size4K))
        );
        finish(template, &mut frames);
    }

    #[test]
    fn sharing_is_refused_where_it_cannot_be_exact() {
        let mut frames = HeapFrames::default();
        let template = apic_template(&mut frames, FRAME_BASE + 0x200_0000_0000);
        let mut ept = Ept::new(&mut frames, CAPS_1G).unwrap();
        // Not 1 GiB aligned, or a gigabyte the template has no directory for.
        for gpa in [3 * SIZE_1G + SIZE_2M, 0, 5 * SIZE_1G, GUEST_PHYS_LIMIT] {
            assert_eq!(
                ept.share(&mut frames, &template, GuestPhysAddr::new(gpa)),
                Err(EptError::NothingToShare(GuestPhysAddr::new(gpa)))
            );
        }
        // A gigabyte this tree maps part of.
        map(&mut ept, &mut frames, 0xFEC0_0000, 0x5000_0000, PAGE_SIZE).unwrap();
        let before = ept.table_frames();
        assert_eq!(
            ept.share(&mut frames, &template, GuestPhysAddr::new(3 * SIZE_1G)),
            Err(EptError::Overlap {
                gpa: GuestPhysAddr::new(0xFEC0_0000)
            })
        );
        assert_eq!(ept.table_frames(), before);
        assert_eq!(tr(&ept, &mut frames, 0xFEE0_0000), None);
        assert!(EptError::NothingToShare(GuestPhysAddr::new(0))
            .to_string()
            .contains("no page directory"));
        check_tree_among(&ept, &mut frames);
        ept.destroy(&mut frames);
        finish(template, &mut frames);
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let e = EptError::Overlap {
            gpa: GuestPhysAddr::new(0x20_0000),
        };
        assert_eq!(
            e.to_string(),
            "EPT: guest-physical address 0x200000 is already mapped; \
             the new range overlaps an existing one"
        );
        let e = EptError::MissingCapability(EptVpidCap::PAGE_WALK_LENGTH_4);
        assert!(e.to_string().contains("4-level page walk"), "{e}");
        let e = EptError::GuestRangeTooHigh {
            gpa: GuestPhysAddr::new(GUEST_PHYS_LIMIT),
            len: PAGE_SIZE,
        };
        assert!(e.to_string().contains("0x1000000000000 + 0x1000"), "{e}");
    }

    /// A mapped range in the model: guest `[start, end)` to host `hpa`.
    #[derive(Clone, Copy, Debug)]
    struct Range {
        start: u64,
        end: u64,
        hpa: u64,
        perms: EptPerms,
        ty: EptMemoryType,
    }

    /// What the model says `gpa` translates to: the host address, rights,
    /// type and the largest page the rules allow there.
    fn model_translate(
        model: &BTreeMap<u64, Range>,
        caps: EptVpidCap,
        gpa: u64,
    ) -> Option<Translation> {
        let (_, r) = model.range(..=gpa).next_back()?;
        if gpa >= r.end {
            return None;
        }
        let mut page_size = PageSize::Size4K;
        for (size, cap) in [
            (PageSize::Size2M, EptVpidCap::PAGES_2M),
            (PageSize::Size1G, EptVpidCap::PAGES_1G),
        ] {
            let block = gpa & !(size.bytes() - 1);
            let fits = block >= r.start && block + size.bytes() <= r.end;
            if caps.contains(cap)
                && fits
                && (r.hpa + (block - r.start)).is_multiple_of(size.bytes())
            {
                page_size = size;
            }
        }
        Some(Translation {
            hpa: HostPhysAddr::new(r.hpa + (gpa - r.start)),
            perms: r.perms,
            memory_type: r.ty,
            page_size,
        })
    }

    /// The lowest model address in `[start, end)`.
    fn model_first_mapped(model: &BTreeMap<u64, Range>, start: u64, end: u64) -> Option<u64> {
        model
            .values()
            .filter(|r| r.start < end && start < r.end)
            .map(|r| r.start.max(start))
            .min()
    }

    /// A map request: addresses built from a unit (4 KiB, 2 MiB, 1 GiB) so
    /// that large pages come up often, plus a few pages of raggedness.
    fn request() -> impl Strategy<Value = (u64, u64, u64, EptPerms, EptMemoryType)> {
        let unit = prop::sample::select(vec![PAGE_SIZE, SIZE_2M, SIZE_1G]);
        let addr = (unit.clone(), 0u64..12, 0u64..3).prop_map(|(u, n, p)| u * n + p * PAGE_SIZE);
        let len = (unit, 0u64..3, 0u64..3).prop_map(|(u, n, p)| u * n + p * PAGE_SIZE);
        let perms = prop::sample::select(vec![
            EptPerms::READ,
            EptPerms::READ | EptPerms::WRITE,
            EptPerms::READ | EptPerms::EXECUTE,
            RWX,
        ]);
        let ty = prop::sample::select(vec![
            EptMemoryType::Uncacheable,
            EptMemoryType::WriteCombining,
            EptMemoryType::WriteThrough,
            EptMemoryType::WriteProtected,
            EptMemoryType::WriteBack,
        ]);
        (addr.clone(), addr, len, perms, ty)
            .prop_map(|(gpa, hpa, len, perms, ty)| (gpa, hpa + 0x100_0000_0000, len, perms, ty))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Random map requests, overlapping or not, sometimes with too few
        /// frames: the EPT refuses exactly the overlapping ones, undoes the
        /// ones that run out of frames, and translates like the model.
        #[test]
        fn translation_agrees_with_a_simple_model(
            caps in prop::sample::select(vec![CAPS_4K, CAPS_2M, CAPS_1G]),
            limit in prop::option::weighted(0.3, 3usize..400),
            requests in prop::collection::vec(request(), 1..12),
            probes in prop::collection::vec(0u64..14 * SIZE_1G, 64),
        ) {
            let mut frames = HeapFrames { limit, ..HeapFrames::default() };
            let Ok(mut ept) = Ept::new(&mut frames, caps) else {
                prop_assert_eq!(limit, Some(0));
                return Ok(());
            };
            let mut model = BTreeMap::new();
            for (gpa, hpa, len, perms, ty) in requests {
                let result = ept.map(
                    &mut frames,
                    GuestPhysAddr::new(gpa),
                    HostPhysAddr::new(hpa),
                    len,
                    perms,
                    ty,
                );
                let expected = if len == 0 {
                    Err(EptError::EmptyRange)
                } else if let Some(first) = model_first_mapped(&model, gpa, gpa + len) {
                    Err(EptError::Overlap { gpa: GuestPhysAddr::new(first) })
                } else {
                    Ok(())
                };
                if expected.is_ok() && result == Err(EptError::OutOfFrames) {
                    prop_assert!(limit.is_some());
                } else {
                    prop_assert_eq!(result, expected);
                }
                if result.is_ok() {
                    model.insert(gpa, Range { start: gpa, end: gpa + len, hpa, perms, ty });
                }
                check_tree(&ept, &mut frames);
            }
            // Each range's edges, its neighbours and pages through it, and
            // random addresses anywhere.
            let mut points: Vec<u64> = probes;
            for r in model.values() {
                let step = ((r.end - r.start) / 16).max(PAGE_SIZE);
                points.extend((r.start..r.end).step_by(step as usize));
                points.extend([r.start.saturating_sub(1), r.end - 1, r.end]);
            }
            for gpa in points {
                prop_assert_eq!(
                    ept.translate(&mut frames, GuestPhysAddr::new(gpa)),
                    model_translate(&model, caps, gpa),
                    "gpa {:#x}", gpa
                );
            }
            finish(ept, &mut frames);
        }
    }
}
