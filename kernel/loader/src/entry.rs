//! The initial vCPU state a loader asks for ([`EntryState`]), and the
//! structures in guest memory that state points at: the GDT and the
//! identity-mapping page tables.
//!
//! The state is architectural: what the guest must see at its first
//! instruction. The VT-x code turns it into VMCS guest-state fields and
//! applies what VMX itself imposes (CR0/CR4 fixed bits through guest/host
//! masks and read shadows, the unrestricted-guest control for real mode).
//! Segment access rights are already in the VMCS format (Intel SDM Vol. 3C,
//! 25.4.1 "Guest Register State", Table 25-2), so descriptor caches can be
//! loaded without decoding the GDT.

use addr::GuestPhysAddr;

use super::bytes::put_u64;
use super::error::{Item, LoadError};
use super::layout::{Placements, GDT_ADDR, MAX_IDENTITY_MAP_GIB, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use super::GuestMemory;

/// The code segment selector the loader's GDT provides (Linux's
/// `__BOOT_CS`, GDT entry 2).
pub const BOOT_CS: u16 = 0x10;
/// The data segment selector the loader's GDT provides (Linux's
/// `__BOOT_DS`, GDT entry 3).
pub const BOOT_DS: u16 = 0x18;
/// The GDT's size: null, unused, code, data.
pub const GDT_LEN: u64 = 4 * 8;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type, hard-wired to 1 on every CPU since the 486.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting, which VMX operation requires.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.NW: not write-through (with CD: caching off), set at reset.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable, set at reset until firmware turns caching on.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
pub const CR4_PAE: u64 = 1 << 5;
/// IA32_EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// IA32_EFER.LMA: long mode active (what the CPU sets once paging is on).
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, which always reads as 1. Every entry starts with only this
/// bit set: interrupts off, direction flag clear.
pub const RFLAGS_FIXED: u64 = 1 << 1;

/// Page-table entry bits (SDM Vol. 3A, 4.5 "4-Level Paging").
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
const PAGE: usize = 4096;
const SIZE_1G: u64 = 1 << 30;
const SIZE_2M: u64 = 2 << 20;

/// The processor mode the guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode: CS:IP, 64 KiB segments, no paging (needs VT-x's
    /// unrestricted guest).
    Real,
    /// 32-bit protected mode with flat 4 GiB segments and paging off.
    Protected32,
    /// 64-bit long mode with paging on, through the identity map the loader
    /// built (CR3).
    Long64,
}

/// Segment access rights in the VMCS format (SDM Vol. 3C, Table 25-2):
/// bits 3:0 type, 4 S (code/data), 6:5 DPL, 7 P, 12 AVL, 13 L (64-bit
/// code), 14 D/B, 15 G, 16 unusable. Bits 7:0 and 15:12 are also the
/// descriptor's bytes 5 and the high nibble of byte 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessRights(u32);

impl AccessRights {
    /// 64-bit code: execute/read, accessed, present, L, 4 KiB granular.
    pub const CODE64: Self = Self(0xA09B);
    /// 32-bit code: execute/read, accessed, present, D, 4 KiB granular.
    pub const CODE32: Self = Self(0xC09B);
    /// 32-bit data: read/write, accessed, present, B, 4 KiB granular.
    pub const DATA32: Self = Self(0xC093);
    /// Real-mode code: execute/read, accessed, present, 16-bit.
    pub const CODE16: Self = Self(0x009B);
    /// Real-mode data: read/write, accessed, present, 16-bit.
    pub const DATA16: Self = Self(0x0093);
    /// A busy 32/64-bit TSS, what VM entry requires of TR in every mode.
    pub const TSS_BUSY: Self = Self(0x008B);
    /// An unusable segment (the LDT, until the guest loads one).
    pub const UNUSABLE: Self = Self(1 << 16);

    /// The raw VMCS access-rights value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether the L bit (64-bit code segment) is set.
    pub const fn long(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// Whether the G bit (limit in 4 KiB units) is set.
    pub const fn granular(self) -> bool {
        self.0 & (1 << 15) != 0
    }
}

/// A segment register as the guest sees it: selector and descriptor cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The selector.
    pub selector: u16,
    /// The base address.
    pub base: u64,
    /// The limit in bytes (the last valid offset).
    pub limit: u32,
    /// The access rights.
    pub access: AccessRights,
}

impl Segment {
    /// A flat 4 GiB segment from the loader's GDT.
    pub const fn flat(selector: u16, access: AccessRights) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            access,
        }
    }

    /// A real-mode segment: base `selector * 16`, limit 64 KiB.
    pub const fn real(selector: u16, access: AccessRights) -> Self {
        Self {
            selector,
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            access,
        }
    }

    /// The 8-byte GDT descriptor for this segment (SDM Vol. 3A, 3.4.5
    /// "Segment Descriptors").
    pub const fn descriptor(&self) -> u64 {
        let limit = if self.access.granular() {
            (self.limit >> 12) as u64
        } else {
            self.limit as u64
        };
        let base = self.base;
        let access = self.access.0 as u64;
        (limit & 0xFFFF)
            | ((base & 0xFF_FFFF) << 16)
            | ((access & 0xFF) << 40)
            | (((limit >> 16) & 0xF) << 48)
            | (((access >> 12) & 0xF) << 52)
            | (((base >> 24) & 0xFF) << 56)
    }
}

/// The segment registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// Code.
    pub cs: Segment,
    /// Data.
    pub ds: Segment,
    /// Extra.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// Stack.
    pub ss: Segment,
    /// Task register: a busy TSS at base 0, which VM entry requires; the
    /// guest loads its own before it needs one.
    pub tr: Segment,
    /// LDT register: unusable.
    pub ldtr: Segment,
}

impl Segments {
    /// `cs` for code and `data` for every data segment register.
    const fn new(cs: Segment, data: Segment) -> Self {
        Self {
            cs,
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: Segment {
                selector: 0,
                base: 0,
                limit: 0xFFFF,
                access: AccessRights::TSS_BUSY,
            },
            ldtr: Segment {
                selector: 0,
                base: 0,
                limit: 0,
                access: AccessRights::UNUSABLE,
            },
        }
    }
}

/// A descriptor-table register (GDTR or IDTR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorTable {
    /// The table's guest-physical (= linear, identity-mapped) address.
    pub base: GuestPhysAddr,
    /// The table's size minus one.
    pub limit: u16,
}

/// The control registers and IA32_EFER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlRegisters {
    /// CR0 ([`CR0_PE`], [`CR0_PG`], ...).
    pub cr0: u64,
    /// CR3: the PML4's address in long mode, else 0.
    pub cr3: u64,
    /// CR4 ([`CR4_PAE`] in long mode).
    pub cr4: u64,
    /// IA32_EFER ([`EFER_LME`] and [`EFER_LMA`] in long mode).
    pub efer: u64,
}

/// The general-purpose registers a boot protocol sets. The rest are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// RAX (Multiboot: the magic `0x2BADB002`).
    pub rax: u64,
    /// RBX (Multiboot: the information structure's address).
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI (Linux: the `boot_params` address).
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// RSP: 0 in every protocol here, which all leave the stack to the
    /// guest.
    pub rsp: u64,
}

/// The vCPU state at the guest's first instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// The processor mode.
    pub mode: CpuMode,
    /// The instruction pointer: an offset in CS in real mode, else a
    /// linear (identity-mapped) address.
    pub rip: u64,
    /// RFLAGS: [`RFLAGS_FIXED`] only, so interrupts are off.
    pub rflags: u64,
    /// The general-purpose registers.
    pub regs: Registers,
    /// The segment registers.
    pub segments: Segments,
    /// The GDT register.
    pub gdtr: DescriptorTable,
    /// The IDT register: in real mode the interrupt vector table at 0 with
    /// the reset limit 0xFFFF, else empty
    /// (the guest runs with interrupts off until it loads its own).
    pub idtr: DescriptorTable,
    /// The control registers.
    pub control: ControlRegisters,
}

impl EntryState {
    /// Real mode at `cs:ip`, every data segment equal to CS: the processor
    /// as RESET leaves it (SDM Vol. 3A, 9.1.1, Table 9-1) but for where it
    /// starts: CR0 0x60000010 (CD, NW and ET; caching off, as for firmware),
    /// GDTR and IDTR at base 0 with limit 0xFFFF, RFLAGS 2, EFER 0. VMX
    /// forces CR0.NE while the guest runs; the guest reads its own CR0.
    pub const fn real(cs: u16, ip: u16) -> Self {
        Self {
            mode: CpuMode::Real,
            rip: ip as u64,
            rflags: RFLAGS_FIXED,
            regs: Registers {
                rax: 0,
                rbx: 0,
                rcx: 0,
                rdx: 0,
                rsi: 0,
                rdi: 0,
                rbp: 0,
                rsp: 0,
            },
            segments: Segments::new(
                Segment::real(cs, AccessRights::CODE16),
                Segment::real(cs, AccessRights::DATA16),
            ),
            gdtr: DescriptorTable {
                base: GuestPhysAddr::new(0),
                limit: 0xFFFF,
            },
            idtr: DescriptorTable {
                base: GuestPhysAddr::new(0),
                limit: 0xFFFF,
            },
            control: ControlRegisters {
                cr0: CR0_CD | CR0_NW | CR0_ET,
                cr3: 0,
                cr4: 0,
                efer: 0,
            },
        }
    }

    /// 32-bit protected mode at `eip`, paging off, CS = [`BOOT_CS`] and the
    /// data segments = [`BOOT_DS`], flat, from the GDT at [`GDT_ADDR`]: what
    /// Multiboot ("Machine state": PE set, PG clear, flat 4 GiB segments,
    /// IF clear) and Linux's 32-bit boot protocol (`__BOOT_CS`/`__BOOT_DS`,
    /// interrupts off) ask for. CR0 is PE, ET and NE, with CD and NW
    /// clear as the firmware these protocols follow leaves them, so a
    /// guest that ORs in PG runs cached.
    pub const fn protected32(eip: u32) -> Self {
        let mut state = Self::real(0, 0);
        state.mode = CpuMode::Protected32;
        state.rip = eip as u64;
        state.segments = Segments::new(
            Segment::flat(BOOT_CS, AccessRights::CODE32),
            Segment::flat(BOOT_DS, AccessRights::DATA32),
        );
        state.gdtr = DescriptorTable {
            base: GDT_ADDR,
            limit: const { GDT_LEN as u16 - 1 },
        };
        state.idtr = DescriptorTable {
            base: GuestPhysAddr::new(0),
            limit: 0,
        };
        state.control.cr0 = CR0_PE | CR0_ET | CR0_NE;
        state
    }

    /// 64-bit long mode at `rip`, paging through the identity map whose
    /// PML4 is at [`PML4_ADDR`], CS = [`BOOT_CS`] (64-bit) and the data
    /// segments = [`BOOT_DS`], from the GDT at [`GDT_ADDR`] (Linux's 64-bit
    /// boot protocol: identity-mapped, `__BOOT_CS` 64-bit, interrupts off).
    pub const fn long64(rip: u64) -> Self {
        let mut state = Self::protected32(0);
        state.mode = CpuMode::Long64;
        state.rip = rip;
        state.segments.cs = Segment::flat(BOOT_CS, AccessRights::CODE64);
        state.control = ControlRegisters {
            cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
            cr3: PML4_ADDR.as_u64(),
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
        };
        state
    }
}

/// Writes the loader's GDT at [`GDT_ADDR`] (null, unused, the state's CS
/// descriptor as [`BOOT_CS`], its DS descriptor as [`BOOT_DS`]) so that a
/// guest reloading its segment registers, or returning from an interrupt,
/// finds what the descriptor caches hold.
pub(crate) fn write_gdt<M: GuestMemory + ?Sized>(
    mem: &mut M,
    placements: &mut Placements,
    state: &EntryState,
) -> Result<(), LoadError> {
    placements.claim(Item::Gdt, GDT_ADDR.as_u64(), GDT_LEN)?;
    let mut gdt = [0u8; GDT_LEN as usize];
    put_u64(
        &mut gdt,
        usize::from(BOOT_CS),
        state.segments.cs.descriptor(),
    );
    put_u64(
        &mut gdt,
        usize::from(BOOT_DS),
        state.segments.ds.descriptor(),
    );
    mem.write(GDT_ADDR, &gdt)
}

/// Claims and writes page tables that identity-map the first `gib` GiB
/// with 2 MiB pages, present and writable: the PML4 at [`PML4_ADDR`], the
/// PDPT at [`PDPT_ADDR`], one page directory per GiB from [`PD_ADDR`].
///
/// `gib` must be 1 to [`MAX_IDENTITY_MAP_GIB`]; callers check it.
pub(crate) fn write_identity_map<M: GuestMemory + ?Sized>(
    mem: &mut M,
    placements: &mut Placements,
    gib: u64,
) -> Result<(), LoadError> {
    debug_assert!((1..=MAX_IDENTITY_MAP_GIB).contains(&gib));
    let gib = gib.clamp(1, MAX_IDENTITY_MAP_GIB);
    let len = PD_ADDR
        .as_u64()
        .saturating_add(gib.saturating_mul(PAGE as u64))
        .saturating_sub(PML4_ADDR.as_u64());
    placements.claim(Item::PageTables, PML4_ADDR.as_u64(), len)?;

    let mut table = [0u8; PAGE];
    put_u64(
        &mut table,
        0,
        PDPT_ADDR.as_u64() | PTE_PRESENT | PTE_WRITABLE,
    );
    mem.write(PML4_ADDR, &table)?;

    table = [0u8; PAGE];
    for i in 0..gib {
        let pd = PD_ADDR
            .as_u64()
            .saturating_add(i.saturating_mul(PAGE as u64));
        put_u64(
            &mut table,
            (i as usize).saturating_mul(8),
            pd | PTE_PRESENT | PTE_WRITABLE,
        );
    }
    mem.write(PDPT_ADDR, &table)?;

    for i in 0..gib {
        for j in 0..512u64 {
            let frame = i
                .saturating_mul(SIZE_1G)
                .saturating_add(j.saturating_mul(SIZE_2M));
            put_u64(
                &mut table,
                (j as usize).saturating_mul(8),
                frame | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE,
            );
        }
        mem.write(
            GuestPhysAddr::new(
                PD_ADDR
                    .as_u64()
                    .saturating_add(i.saturating_mul(PAGE as u64)),
            ),
            &table,
        )?;
    }
    Ok(())
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
    fn flat_descriptors_match_the_classic_encodings() {
        assert_eq!(
            Segment::flat(BOOT_CS, AccessRights::CODE32).descriptor(),
            0x00CF_9B00_0000_FFFF
        );
        assert_eq!(
            Segment::flat(BOOT_CS, AccessRights::CODE64).descriptor(),
            0x00AF_9B00_0000_FFFF
        );
        assert_eq!(
            Segment::flat(BOOT_DS, AccessRights::DATA32).descriptor(),
            0x00CF_9300_0000_FFFF
        );
    }

    #[test]
    fn byte_granular_descriptors_keep_base_and_limit() {
        let s = Segment {
            selector: 0,
            base: 0x1234_5678,
            limit: 0xA_BCDE,
            access: AccessRights::DATA16,
        };
        assert_eq!(s.descriptor(), 0x120A_9334_5678_BCDE);
    }

    #[test]
    fn real_mode_segments_are_selector_times_16() {
        let s = EntryState::real(0x1000, 0x2345);
        assert_eq!(s.segments.cs.base, 0x10000);
        assert_eq!(s.segments.ss.base, 0x10000);
        assert_eq!(s.segments.cs.limit, 0xFFFF);
        assert_eq!(s.rip, 0x2345);
        assert_eq!(s.control.cr0 & (CR0_PE | CR0_PG), 0);
        // The reset values of SDM Vol. 3A, Table 9-1.
        assert_eq!(s.control.cr0, 0x6000_0010);
        assert_eq!(s.idtr.limit, 0xFFFF);
        assert_eq!(s.gdtr.limit, 0xFFFF);
    }

    #[test]
    fn long_mode_state_has_paging_pae_and_lma() {
        let s = EntryState::long64(0x20_0000);
        assert_eq!(s.mode, CpuMode::Long64);
        assert_eq!(s.control.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.control.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.control.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.control.cr3, PML4_ADDR.as_u64());
        assert!(s.segments.cs.access.long());
        assert!(!s.segments.ds.access.long());
        assert_eq!(s.rflags, RFLAGS_FIXED);
        assert_eq!(s.gdtr.limit, 31);
    }
}
