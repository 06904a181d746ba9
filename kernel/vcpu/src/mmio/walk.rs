//! The guest's own linear-to-physical translation, walked in software over
//! its page tables in guest RAM (SDM Vol. 3A, chapter 4 "Paging"), and the
//! fetch of the instruction bytes at RIP through it.
//!
//! For an instruction fetch only translation matters: the bytes walked are
//! the ones the CPU itself fetched just before the exit. The walk does not
//! check reserved bits or protection keys and does not set accessed or
//! dirty bits (the CPU already did for the fetch); it gathers the R/W and
//! U/S bits along the way ([`Translation`]) for callers that make a data
//! access the CPU did not (string I/O) and check them themselves. A guest
//! that changes its tables under a running vCPU may make the walk see
//! other bytes than the CPU did; the MMIO caller checks that the decoded
//! access matches the fault.

use core::fmt;

use addr::GuestPhysAddr;

use crate::exit::Platform;

/// Guest RAM as the walk reads it: every [`Platform`] is one, and a
/// backend that has only a reader of guest RAM at hand (decoding an exit,
/// before a `Platform` exists) wraps it in [`RamReader`].
pub trait GuestRam {
    /// Copies guest RAM at `gpa` into `buf`; false (and `buf`
    /// unspecified) when any byte is outside RAM.
    fn read_ram(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> bool;
}

impl<P: Platform + ?Sized> GuestRam for P {
    #[inline]
    fn read_ram(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> bool {
        self.read_guest(gpa, buf)
    }
}

/// A function that reads guest RAM (as [`Platform::read_guest`]), as
/// [`GuestRam`].
#[derive(Clone, Copy, Debug)]
pub struct RamReader<F>(pub F);

impl<F: Fn(GuestPhysAddr, &mut [u8]) -> bool> GuestRam for RamReader<F> {
    #[inline]
    fn read_ram(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> bool {
        (self.0)(gpa, buf)
    }
}

/// CR0.PG (SDM Vol. 3A, 2.5).
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages with 32-bit paging.
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
const CR4_LA57: u64 = 1 << 12;
/// IA32_EFER.LMA.
const EFER_LMA: u64 = 1 << 10;

/// Paging-structure entry bits (SDM Vol. 3A, Tables 4-4 to 4-20).
const PRESENT: u64 = 1;
/// R/W: writes allowed through this entry.
const WRITABLE: u64 = 1 << 1;
/// U/S: user-mode accesses allowed through this entry.
const USER: u64 = 1 << 2;
/// The entry maps a page (4 MiB, 2 MiB or 1 GiB) instead of a table.
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 51:12 of a 64-bit entry: the next table or the 4 KiB page. The
/// walk assumes the architectural maximum MAXPHYADDR (52); a guest that
/// sets bits its CPU reports reserved would take a #PF on hardware.
const ADDR_4K: u64 = 0x000F_FFFF_FFFF_F000;
/// Bits 51:21: a 2 MiB page.
const ADDR_2M: u64 = 0x000F_FFFF_FFE0_0000;
/// Bits 51:30: a 1 GiB page.
const ADDR_1G: u64 = 0x000F_FFFF_C000_0000;
/// Bits 31:12 of a 32-bit entry.
const ADDR32_4K: u64 = 0xFFFF_F000;
/// Bits 31:22 of a 32-bit 4 MiB page (bits 39:32 come from entry bits 20:13).
const ADDR32_4M: u64 = 0xFFC0_0000;
/// CR3 bits 31:5 with PAE paging: the page-directory-pointer table.
const CR3_PAE_PDPT: u64 = 0xFFFF_FFE0;

/// The size of the smallest page: fetches are split at its boundaries.
const PAGE: u64 = 4096;

/// The longest x86 instruction (SDM Vol. 2A, 2.3.11).
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// What the walk needs of the vCPU's state, read once per exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0 as the guest sees it.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as the guest sees it.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

/// The guest's paging mode (SDM Vol. 3A, 4.1.1, Table 4-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical (32 bits wide).
    None,
    /// 32-bit paging; 4 MiB pages when CR4.PSE is set.
    Bits32 {
        /// CR4.PSE.
        pse: bool,
    },
    /// PAE paging: 3 levels, 2 MiB pages.
    Pae,
    /// 4-level paging (IA-32e mode): 1 GiB, 2 MiB and 4 KiB pages.
    Level4,
    /// 5-level paging (CR4.LA57), which Ferrovisor does not walk.
    Level5,
}

impl Paging {
    /// The mode these registers select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::None
        } else if self.efer & EFER_LMA != 0 {
            if self.cr4 & CR4_LA57 != 0 {
                PagingMode::Level5
            } else {
                PagingMode::Level4
            }
        } else if self.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Bits32 {
                pse: self.cr4 & CR4_PSE != 0,
            }
        }
    }
}

/// Why a linear address has no translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry on the way is not present: the guest would take a #PF.
    /// `level` counts from the page table (1) up to the PML4 (4).
    NotPresent {
        /// The linear address.
        linear: u64,
        /// The level whose entry is not present.
        level: u8,
    },
    /// A paging-structure entry lies outside guest RAM.
    TableNotInRam {
        /// The linear address.
        linear: u64,
        /// Where the entry would be.
        entry: GuestPhysAddr,
    },
    /// A 64-bit linear address whose bits 63:47 are not all equal.
    NonCanonical {
        /// The linear address.
        linear: u64,
    },
    /// The guest uses 5-level paging.
    FiveLevel,
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPresent { linear, level } => write!(
                f,
                "linear {linear:#x} is not mapped (its level-{level} paging entry is not present)"
            ),
            Self::TableNotInRam { linear, entry } => write!(
                f,
                "the paging entry for linear {linear:#x} would be at guest-physical {entry}, outside RAM"
            ),
            Self::NonCanonical { linear } => {
                write!(f, "linear {linear:#x} is not canonical")
            }
            Self::FiveLevel => f.write_str("5-level paging (CR4.LA57) is not supported"),
        }
    }
}

/// Why the instruction bytes at RIP could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// The linear address has no translation.
    Walk(WalkError),
    /// It translates to guest-physical memory that is not RAM.
    NotInRam {
        /// The linear address.
        linear: u64,
        /// Its translation.
        gpa: GuestPhysAddr,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Walk(e) => e.fmt(f),
            Self::NotInRam { linear, gpa } => write!(
                f,
                "code at linear {linear:#x} is at guest-physical {gpa}, outside RAM"
            ),
        }
    }
}

impl From<WalkError> for FetchError {
    fn from(e: WalkError) -> Self {
        Self::Walk(e)
    }
}

/// Translates `linear` through the guest's paging as `paging` sets it up,
/// reading its tables with [`GuestRam::read_ram`].
pub fn translate<P: GuestRam + ?Sized>(
    platform: &P,
    paging: &Paging,
    linear: u64,
) -> Result<GuestPhysAddr, WalkError> {
    translate_with_rights(platform, paging, linear).map(|t| t.gpa)
}

/// A linear address's translation and the access rights of the entries
/// that map it (SDM Vol. 3A, 4.6: an access is allowed only if every
/// entry on the way allows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address.
    pub gpa: GuestPhysAddr,
    /// R/W was set in every entry (PAE PDPTEs have no R/W bit).
    pub writable: bool,
    /// U/S was set in every entry (PAE PDPTEs have no U/S bit).
    pub user: bool,
}

/// The rights gathered so far on a walk: the R/W and U/S bits of every
/// entry ANDed together.
const ALL_RIGHTS: u64 = WRITABLE | USER;

/// [`translate`], with the rights of the entries that map `linear`
/// (without paging everything is allowed).
pub fn translate_with_rights<P: GuestRam + ?Sized>(
    platform: &P,
    paging: &Paging,
    linear: u64,
) -> Result<Translation, WalkError> {
    let low32 = linear & 0xFFFF_FFFF;
    let (pa, rights) = match paging.mode() {
        // Without paging a linear address is a physical one; outside
        // IA-32e mode (and without paging it always is) they are 32 bits.
        PagingMode::None => (low32, ALL_RIGHTS),
        PagingMode::Bits32 { pse } => walk32(platform, paging.cr3, low32, pse)?,
        PagingMode::Pae => walk_pae(platform, paging.cr3, low32)?,
        PagingMode::Level4 => walk4(platform, paging.cr3, linear)?,
        PagingMode::Level5 => return Err(WalkError::FiveLevel),
    };
    Ok(Translation {
        gpa: GuestPhysAddr::new(pa),
        writable: rights & WRITABLE != 0,
        user: rights & USER != 0,
    })
}

/// Reads the `N`-byte entry `index` of the table at `table`; an entry that
/// is not present is reported at `level`.
fn entry<P: GuestRam + ?Sized, const N: usize>(
    platform: &P,
    table: u64,
    index: u64,
    linear: u64,
    level: u8,
) -> Result<u64, WalkError> {
    // `index` is at most 1023 and N at most 8: the offset fits easily; an
    // address past the top wraps to one that is not RAM either.
    let at = GuestPhysAddr::new(table.wrapping_add(index.wrapping_mul(N as u64)));
    let mut buf = [0u8; 8];
    let Some(part) = buf.get_mut(..N) else {
        return Err(WalkError::TableNotInRam { linear, entry: at });
    };
    if !platform.read_ram(at, part) {
        return Err(WalkError::TableNotInRam { linear, entry: at });
    }
    let value = u64::from_le_bytes(buf);
    if value & PRESENT == 0 {
        return Err(WalkError::NotPresent { linear, level });
    }
    Ok(value)
}

/// The 9-bit (64-bit entries) or 10-bit (32-bit entries) table index of
/// `linear` starting at bit `shift`.
fn index(linear: u64, shift: u32, bits: u32) -> u64 {
    linear.wrapping_shr(shift) & (1u64.wrapping_shl(bits).wrapping_sub(1))
}

/// 32-bit paging (SDM Vol. 3A, 4.3): a page directory and page tables of
/// 1024 4-byte entries; with CR4.PSE a directory entry with PS set maps a
/// 4 MiB page (PSE-36: entry bits 20:13 are physical bits 39:32).
fn walk32<P: GuestRam + ?Sized>(
    platform: &P,
    cr3: u64,
    linear: u64,
    pse: bool,
) -> Result<(u64, u64), WalkError> {
    let pde = entry::<P, 4>(platform, cr3 & ADDR32_4K, index(linear, 22, 10), linear, 2)?;
    if pse && pde & PAGE_SIZE_BIT != 0 {
        let high = (pde.wrapping_shr(13) & 0xFF).wrapping_shl(32);
        let pa = (pde & ADDR32_4M) | high | (linear & 0x3F_FFFF);
        return Ok((pa, pde & ALL_RIGHTS));
    }
    let pte = entry::<P, 4>(platform, pde & ADDR32_4K, index(linear, 12, 10), linear, 1)?;
    Ok(((pte & ADDR32_4K) | (linear & 0xFFF), pde & pte & ALL_RIGHTS))
}

/// PAE paging (SDM Vol. 3A, 4.4): four PDPTEs at CR3, then directories and
/// tables of 512 8-byte entries; a directory entry with PS set maps 2 MiB.
/// The hardware loads the PDPTEs when CR3 is written; reading them from
/// memory now sees the same values unless the guest changed them without
/// reloading CR3.
fn walk_pae<P: GuestRam + ?Sized>(
    platform: &P,
    cr3: u64,
    linear: u64,
) -> Result<(u64, u64), WalkError> {
    let pdpte = entry::<P, 8>(
        platform,
        cr3 & CR3_PAE_PDPT,
        index(linear, 30, 2),
        linear,
        3,
    )?;
    let pde = entry::<P, 8>(platform, pdpte & ADDR_4K, index(linear, 21, 9), linear, 2)?;
    if pde & PAGE_SIZE_BIT != 0 {
        return Ok(((pde & ADDR_2M) | (linear & 0x1F_FFFF), pde & ALL_RIGHTS));
    }
    let pte = entry::<P, 8>(platform, pde & ADDR_4K, index(linear, 12, 9), linear, 1)?;
    Ok(((pte & ADDR_4K) | (linear & 0xFFF), pde & pte & ALL_RIGHTS))
}

/// 4-level paging (SDM Vol. 3A, 4.5): PML4, PDPT (PS: 1 GiB), PD (PS:
/// 2 MiB), PT, each of 512 8-byte entries, for canonical 48-bit addresses.
fn walk4<P: GuestRam + ?Sized>(
    platform: &P,
    cr3: u64,
    linear: u64,
) -> Result<(u64, u64), WalkError> {
    let top = linear.wrapping_shr(47);
    if top != 0 && top != 0x1_FFFF {
        return Err(WalkError::NonCanonical { linear });
    }
    let pml4e = entry::<P, 8>(platform, cr3 & ADDR_4K, index(linear, 39, 9), linear, 4)?;
    let pdpte = entry::<P, 8>(platform, pml4e & ADDR_4K, index(linear, 30, 9), linear, 3)?;
    let rights = pml4e & pdpte & ALL_RIGHTS;
    if pdpte & PAGE_SIZE_BIT != 0 {
        return Ok(((pdpte & ADDR_1G) | (linear & 0x3FFF_FFFF), rights));
    }
    let pde = entry::<P, 8>(platform, pdpte & ADDR_4K, index(linear, 21, 9), linear, 2)?;
    let rights = rights & pde;
    if pde & PAGE_SIZE_BIT != 0 {
        return Ok(((pde & ADDR_2M) | (linear & 0x1F_FFFF), rights));
    }
    let pte = entry::<P, 8>(platform, pde & ADDR_4K, index(linear, 12, 9), linear, 1)?;
    Ok(((pte & ADDR_4K) | (linear & 0xFFF), rights & pte))
}

/// Up to [`MAX_INSTRUCTION_LEN`] bytes read at a linear address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// The bytes; only the first `len` were read.
    pub bytes: [u8; MAX_INSTRUCTION_LEN],
    /// How many were read (at least 1).
    pub len: usize,
    /// Why fewer than 15 were read: a later page did not translate or
    /// is not RAM. The instruction may well end before it.
    pub short: Option<FetchError>,
}

impl Fetched {
    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// Reads up to 15 instruction bytes at `rip`, translating each 4 KiB page
/// on its own (an instruction may straddle two pages that are not
/// adjacent in guest-physical memory). Outside 64-bit mode the linear
/// address is CS.base + EIP and wraps at 4 GiB (`cs_base` is ignored in
/// 64-bit mode, where CS's base is treated as 0). Fails only when not even
/// the first byte can be read.
pub fn fetch<P: GuestRam + ?Sized>(
    platform: &P,
    paging: &Paging,
    cs_base: u64,
    rip: u64,
    long: bool,
) -> Result<Fetched, FetchError> {
    let mut out = Fetched::default();
    while out.len < MAX_INSTRUCTION_LEN {
        let offset = out.len as u64;
        let linear = if long {
            rip.wrapping_add(offset)
        } else {
            cs_base.wrapping_add(rip).wrapping_add(offset) & 0xFFFF_FFFF
        };
        let in_page = PAGE.wrapping_sub(linear & (PAGE.wrapping_sub(1)));
        let room = MAX_INSTRUCTION_LEN.saturating_sub(out.len);
        let n = usize::try_from(in_page).map_or(room, |p| p.min(room));
        let read = translate(platform, paging, linear)
            .map_err(FetchError::from)
            .and_then(|gpa| {
                let end = out.len.saturating_add(n);
                let ok = out
                    .bytes
                    .get_mut(out.len..end)
                    .is_some_and(|dst| platform.read_ram(gpa, dst));
                if ok {
                    Ok(())
                } else {
                    Err(FetchError::NotInRam { linear, gpa })
                }
            });
        match read {
            Ok(()) => out.len = out.len.saturating_add(n),
            Err(e) if out.len == 0 => return Err(e),
            Err(e) => {
                out.short = Some(e);
                break;
            }
        }
    }
    Ok(out)
}
