//! The guest's writes to CR0, CR3, CR4 and IA32_EFER, checked against the
//! SDM before anything is applied. Pure: a write and the state it lands in
//! come in, the new state (or the #GP(0) the processor raises) comes out,
//! so every rule is a row in a host-tested table.
//!
//! The rules are those of SDM Vol. 3A, 2.5 "Control Registers" and 2.2.1
//! "Extended Feature Enable Register", 4.1 "Paging Modes and Control
//! Bits", 4.4.1 (PAE PDPTE registers) and 4.10.1 (PCIDs), and the
//! exception lists of "MOV—Move to/from Control Registers" (Vol. 2B) and
//! "WRMSR" (Vol. 2D). They matter twice: a guest that breaks one must see
//! the fault a processor raises, and a state a processor cannot be in
//! would fail the VM-entry checks on guest control registers (Vol. 3C,
//! 27.3.1.1), which a guest must never be able to cause.

use super::cpuid::CpuidResult;

/// CR0 bits (SDM Vol. 3A, 2.5).
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Extension type: hardwired to 1 since the P6 family.
    pub const ET: u64 = 1 << 4;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
    /// Every bit CR0 has: PE, MP, EM, TS, ET, NE, WP, AM, NW, CD, PG.
    /// Writes of 1 to the other bits of 31:0 are ignored; to 63:32, #GP.
    pub const DEFINED: u64 = 0xE005_003F;
}

/// CR4 bits (SDM Vol. 3A, 2.5).
pub mod cr4 {
    /// Page size extensions.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Page global enable.
    pub const PGE: u64 = 1 << 7;
    /// 5-level paging.
    pub const LA57: u64 = 1 << 12;
    /// VMX enable.
    pub const VMXE: u64 = 1 << 13;
    /// SMX enable.
    pub const SMXE: u64 = 1 << 14;
    /// Process-context identifiers.
    pub const PCIDE: u64 = 1 << 17;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
    /// Control-flow enforcement.
    pub const CET: u64 = 1 << 23;
    /// Bits whose change drops cached translations when executed natively
    /// (SDM Vol. 3A, 4.10.4.1).
    pub const PAGING: u64 = PSE | PAE | PGE | PCIDE | SMEP | SMAP;
    /// Bits whose change reloads the PDPTEs under PAE paging (SDM Vol. 3A,
    /// 4.4.1).
    pub const PDPTE_RELOAD: u64 = PSE | PAE | PGE | SMEP;
}

/// IA32_EFER bits (SDM Vol. 3A, 2.2.1).
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// IA-32e mode enable.
    pub const LME: u64 = 1 << 8;
    /// IA-32e mode active (read-only to WRMSR).
    pub const LMA: u64 = 1 << 10;
    /// Execute-disable enable.
    pub const NXE: u64 = 1 << 11;
}

/// The processor's answer to a write that breaks a rule: #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpFault;

/// The registers a control-register or EFER write depends on, as the guest
/// sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// CS.L: with EFER.LMA, the guest runs 64-bit code.
    pub cs_l: bool,
}

impl CrState {
    /// IA-32e mode is active.
    pub fn ia32e(&self) -> bool {
        self.efer & efer::LMA != 0
    }

    /// The guest runs 64-bit code (IA-32e mode and CS.L).
    pub fn in_64bit_mode(&self) -> bool {
        self.ia32e() && self.cs_l
    }

    /// PAE paging (CR0.PG, CR4.PAE, not IA-32e mode): the paging mode whose
    /// four PDPTEs the processor holds in registers.
    pub fn pae_paging(&self) -> bool {
        self.cr0 & cr0::PG != 0 && self.cr4 & cr4::PAE != 0 && !self.ia32e()
    }
}

/// A write that the rules allow: the state after it, and what the
/// processor would do besides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The registers after the write (EFER.LMA following CR0.PG).
    pub state: CrState,
    /// Cached linear translations are dropped.
    pub flush_tlb: bool,
    /// The guest is (still) in PAE paging and the processor loads the four
    /// PDPTEs from CR3 now: the caller reads them and checks them with
    /// [`pdptes_valid`] (#GP if not) before it applies anything.
    pub load_pdptes: bool,
}

/// MOV to CR0 of `value` (already cut to the operand size: 32 bits outside
/// 64-bit mode), LMSW and CLTS included.
pub fn mov_to_cr0(state: &CrState, value: u64) -> Result<Applied, GpFault> {
    let old = state.cr0;
    let value_pg = value & cr0::PG != 0;
    let old_pg = old & cr0::PG != 0;
    let lme = state.efer & efer::LME != 0;
    let fault = value >> 32 != 0
        || (value_pg && value & cr0::PE == 0)
        || (value & cr0::NW != 0 && value & cr0::CD == 0)
        // Turning paging on with LME enters IA-32e mode: only from PAE
        // and a CS that is not already 64-bit.
        || (value_pg && !old_pg && lme && (state.cr4 & cr4::PAE == 0 || state.cs_l))
        // Leaving IA-32e mode is done from compatibility mode only, and
        // paging stays on while PCIDs are in use.
        || (!value_pg && old_pg && (state.in_64bit_mode() || state.cr4 & cr4::PCIDE != 0))
        // CET needs write protection.
        || (value & cr0::WP == 0 && state.cr4 & cr4::CET != 0);
    if fault {
        return Err(GpFault);
    }
    let cr0 = (value & cr0::DEFINED) | cr0::ET;
    let mut next = CrState { cr0, ..*state };
    if lme && value_pg != old_pg {
        // SDM Vol. 3A, 10.8.5: EFER.LMA follows CR0.PG while LME is set.
        next.efer = if value_pg {
            state.efer | efer::LMA
        } else {
            state.efer & !efer::LMA
        };
    }
    let changed = old ^ cr0;
    Ok(Applied {
        state: next,
        flush_tlb: changed & (cr0::PG | cr0::WP) != 0,
        load_pdptes: next.pae_paging()
            && (!state.pae_paging() || changed & (cr0::CD | cr0::NW) != 0),
    })
}

/// MOV to CR4 of `value` (cut to the operand size). `supported` holds the
/// bits this guest may set: those of features its CPUID reports
/// ([`cr4_supported`]) less those the backend cannot run a guest with.
pub fn mov_to_cr4(state: &CrState, value: u64, supported: u64) -> Result<Applied, GpFault> {
    let old = state.cr4;
    let changed = old ^ value;
    let ia32e = state.ia32e();
    let fault = value & !supported != 0
        || (ia32e && value & cr4::PAE == 0)
        || (ia32e && changed & cr4::LA57 != 0)
        || (value & cr4::PCIDE != 0 && old & cr4::PCIDE == 0 && (!ia32e || state.cr3 & 0xFFF != 0))
        || (value & cr4::CET != 0 && state.cr0 & cr0::WP == 0);
    if fault {
        return Err(GpFault);
    }
    let next = CrState {
        cr4: value,
        ..*state
    };
    Ok(Applied {
        state: next,
        flush_tlb: changed & cr4::PAGING != 0,
        load_pdptes: next.pae_paging() && (!state.pae_paging() || changed & cr4::PDPTE_RELOAD != 0),
    })
}

/// MOV to CR3 of `value` (cut to the operand size) on a guest whose
/// physical addresses are `max_phys_bits` wide.
pub fn mov_to_cr3(state: &CrState, value: u64, max_phys_bits: u32) -> Result<Applied, GpFault> {
    let mut cr3 = value;
    if state.ia32e() {
        // With PCIDs, bit 63 asks to keep the PCID's translations and is
        // not stored (SDM Vol. 3A, 4.10.4.1).
        if state.cr4 & cr4::PCIDE != 0 {
            cr3 &= !(1 << 63);
        }
        if cr3 & !phys_mask(max_phys_bits) != 0 {
            return Err(GpFault);
        }
    }
    let next = CrState { cr3, ..*state };
    Ok(Applied {
        state: next,
        flush_tlb: true,
        load_pdptes: next.pae_paging(),
    })
}

/// WRMSR to IA32_EFER of `value`. `supported` holds the bits the guest's
/// CPUID offers ([`efer_supported`]). LMA is the processor's: what is
/// written to it is ignored.
pub fn wrmsr_efer(state: &CrState, value: u64, supported: u64) -> Result<Applied, GpFault> {
    let old = state.efer;
    let fault = value & !(supported | efer::LMA) != 0
        || ((value ^ old) & efer::LME != 0 && state.cr0 & cr0::PG != 0);
    if fault {
        return Err(GpFault);
    }
    let efer = (value & !efer::LMA) | (old & efer::LMA);
    Ok(Applied {
        state: CrState { efer, ..*state },
        flush_tlb: (old ^ efer) & efer::NXE != 0,
        load_pdptes: false,
    })
}

/// The guest-physical address the four PAE PDPTEs are read from: CR3
/// bits 31:5.
pub fn pdpt_address(cr3: u64) -> u64 {
    cr3 & 0xFFFF_FFE0
}

/// Whether the PDPTEs a PAE-paging load found are ones the processor
/// accepts: no present entry with a reserved bit (2:1, 8:5, and 63 down to
/// MAXPHYADDR; SDM Vol. 3A, 4.4.1, Table 4-8).
pub fn pdptes_valid(pdptes: &[u64; 4], max_phys_bits: u32) -> bool {
    let reserved = 0b110 | 0x1E0 | !phys_mask(max_phys_bits);
    pdptes.iter().all(|e| e & 1 == 0 || e & reserved == 0)
}

/// The bits of a physical address `bits` wide (clamped to 32..=52).
fn phys_mask(bits: u32) -> u64 {
    let bits = bits.clamp(32, 52);
    (1u64 << bits).wrapping_sub(1)
}

/// The CR4 bits a guest may set given its CPUID leaf 1 and leaf 7
/// subleaf 0 (SDM Vol. 3A, 2.5: each bit is reserved where its feature is
/// absent).
pub fn cr4_supported(leaf1: &CpuidResult, leaf7: &CpuidResult) -> u64 {
    let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
    let (ecx1, edx1) = (leaf1.ecx, leaf1.edx);
    let (ebx7, ecx7, edx7) = (leaf7.ebx, leaf7.ecx, leaf7.edx);
    // PCE (8) needs no feature bit.
    let mut bits: u64 = 1 << 8;
    let mut when = |on: bool, mask: u64| {
        if on {
            bits |= mask;
        }
    };
    when(has(edx1, 1), (1 << 0) | (1 << 1)); // VME, PVI
    when(has(edx1, 4), 1 << 2); // TSD
    when(has(edx1, 2), 1 << 3); // DE
    when(has(edx1, 3), cr4::PSE);
    when(has(edx1, 6), cr4::PAE);
    when(has(edx1, 7), 1 << 6); // MCE
    when(has(edx1, 13), cr4::PGE);
    when(has(edx1, 24), 1 << 9); // OSFXSR
    when(has(edx1, 25), 1 << 10); // OSXMMEXCPT
    when(has(ecx7, 2), 1 << 11); // UMIP
    when(has(ecx7, 16), cr4::LA57);
    when(has(ecx1, 5), cr4::VMXE);
    when(has(ecx1, 6), cr4::SMXE);
    when(has(ebx7, 0), 1 << 16); // FSGSBASE
    when(has(ecx1, 17), cr4::PCIDE);
    when(has(ecx1, 26), 1 << 18); // OSXSAVE
    when(has(ecx7, 23), 1 << 19); // KL
    when(has(ebx7, 7), cr4::SMEP);
    when(has(ebx7, 20), cr4::SMAP);
    when(has(ecx7, 3), 1 << 22); // PKE
    when(has(ecx7, 7) || has(edx7, 20), cr4::CET);
    when(has(ecx7, 31), 1 << 24); // PKS
    when(has(edx7, 5), 1 << 25); // UINTR
    bits
}

/// The IA32_EFER bits a guest may set given its CPUID leaf 8000_0001H:
/// SCE with SYSCALL (EDX 11), NXE with execute-disable (EDX 20), LME with
/// Intel 64 (EDX 29).
pub fn efer_supported(ext1: &CpuidResult) -> u64 {
    let has = |bit: u32| ext1.edx & (1 << bit) != 0;
    let mut bits = 0;
    if has(11) {
        bits |= efer::SCE;
    }
    if has(20) {
        bits |= efer::NXE;
    }
    if has(29) {
        bits |= efer::LME;
    }
    bits
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests;
