//! Each rule of [`super`] as rows: a state, a write, the outcome the SDM
//! names.

use super::*;

const ALL_CR4: u64 = 0x03FF_7FFF;

const REAL: CrState = CrState {
    cr0: cr0::ET,
    cr3: 0,
    cr4: 0,
    efer: 0,
    cs_l: false,
};
const PROTECTED: CrState = CrState {
    cr0: cr0::PE | cr0::ET,
    ..REAL
};
const PROTECTED_PAE: CrState = CrState {
    cr4: cr4::PAE,
    ..PROTECTED
};
const PROTECTED_LME: CrState = CrState {
    efer: efer::LME,
    ..PROTECTED
};
const PROTECTED_LME_PAE: CrState = CrState {
    efer: efer::LME,
    cr4: cr4::PAE,
    ..PROTECTED
};
const PAGED32: CrState = CrState {
    cr0: cr0::PE | cr0::ET | cr0::PG,
    cr3: 0x1000,
    ..REAL
};
const PAE_PAGING: CrState = CrState {
    cr4: cr4::PAE,
    ..PAGED32
};
const LONG64: CrState = CrState {
    cr0: cr0::PE | cr0::ET | cr0::PG | cr0::WP,
    cr3: 0x1000,
    cr4: cr4::PAE,
    efer: efer::LME | efer::LMA,
    cs_l: true,
};
const COMPAT: CrState = CrState {
    cs_l: false,
    ..LONG64
};

#[derive(Debug, PartialEq)]
enum Want {
    Gp,
    Cr0(u64),
    Cr0Efer(u64, u64),
}

#[test]
fn mov_to_cr0_follows_the_sdm() {
    let pe_pg = cr0::PE | cr0::PG;
    let rows: &[(&str, CrState, u64, Want)] = &[
        ("pg without pe", PROTECTED, cr0::PG, Want::Gp),
        (
            "pg and pe from real mode",
            REAL,
            pe_pg,
            Want::Cr0(pe_pg | cr0::ET),
        ),
        ("nw without cd", PROTECTED, cr0::PE | cr0::NW, Want::Gp),
        (
            "nw with cd",
            PROTECTED,
            cr0::PE | cr0::NW | cr0::CD,
            Want::Cr0(0x6000_0011),
        ),
        ("bit 32", LONG64, LONG64.cr0 | (1 << 32), Want::Gp),
        ("bit 63", LONG64, LONG64.cr0 | (1 << 63), Want::Gp),
        // Reserved bits of 31:0 are ignored, ET reads 1 whatever is written.
        (
            "low reserved bits and et",
            PROTECTED,
            cr0::PE | 0x0000_FFC0,
            Want::Cr0(0x11),
        ),
        ("pg with lme, no pae", PROTECTED_LME, pe_pg, Want::Gp),
        (
            "pg with lme and pae enters ia-32e",
            PROTECTED_LME_PAE,
            pe_pg,
            Want::Cr0Efer(pe_pg | cr0::ET, efer::LME | efer::LMA),
        ),
        (
            "pg with lme and cs.l",
            CrState {
                cs_l: true,
                ..PROTECTED_LME_PAE
            },
            pe_pg,
            Want::Gp,
        ),
        ("pg off in 64-bit mode", LONG64, cr0::PE, Want::Gp),
        (
            "pg off in compatibility mode leaves ia-32e",
            COMPAT,
            cr0::PE,
            Want::Cr0Efer(0x11, efer::LME),
        ),
        (
            "pg off with pcide",
            CrState {
                cr4: cr4::PAE | cr4::PCIDE,
                ..COMPAT
            },
            cr0::PE,
            Want::Gp,
        ),
        ("pg off in 32-bit paging", PAGED32, cr0::PE, Want::Cr0(0x11)),
        (
            "wp off with cet",
            CrState {
                cr4: cr4::PAE | cr4::CET,
                ..LONG64
            },
            pe_pg,
            Want::Gp,
        ),
        (
            "ne in 64-bit mode",
            LONG64,
            LONG64.cr0 | 0x20,
            Want::Cr0(LONG64.cr0 | 0x20),
        ),
    ];
    for (name, state, value, want) in rows {
        let got = match mov_to_cr0(state, *value) {
            Err(GpFault) => Want::Gp,
            Ok(a) if a.state.efer != state.efer => Want::Cr0Efer(a.state.cr0, a.state.efer),
            Ok(a) => Want::Cr0(a.state.cr0),
        };
        assert_eq!(&got, want, "{name}");
    }
}

#[test]
fn mov_to_cr4_follows_the_sdm() {
    let rows: &[(&str, CrState, u64, u64, bool)] = &[
        ("reserved bit 15", PROTECTED, 1 << 15, ALL_CR4, false),
        ("bit 32", LONG64, cr4::PAE | (1 << 32), ALL_CR4, false),
        (
            "vmxe hidden",
            PROTECTED,
            cr4::VMXE,
            ALL_CR4 & !cr4::VMXE,
            false,
        ),
        (
            "smxe hidden",
            PROTECTED,
            cr4::SMXE,
            ALL_CR4 & !cr4::SMXE,
            false,
        ),
        (
            "pke without pku",
            PROTECTED,
            1 << 22,
            ALL_CR4 & !(1 << 22),
            false,
        ),
        ("pae off in ia-32e", LONG64, 0, ALL_CR4, false),
        ("pae off in compatibility mode", COMPAT, 0, ALL_CR4, false),
        (
            "pge in 64-bit mode",
            LONG64,
            cr4::PAE | cr4::PGE,
            ALL_CR4,
            true,
        ),
        (
            "la57 change in ia-32e",
            LONG64,
            cr4::PAE | cr4::LA57,
            ALL_CR4,
            false,
        ),
        ("la57 outside paging", PROTECTED, cr4::LA57, ALL_CR4, true),
        (
            "pcide outside ia-32e",
            PROTECTED,
            cr4::PCIDE,
            ALL_CR4,
            false,
        ),
        (
            "pcide with cr3[11:0] = 0",
            LONG64,
            cr4::PAE | cr4::PCIDE,
            ALL_CR4,
            true,
        ),
        (
            "pcide with cr3[11:0] != 0",
            CrState {
                cr3: 0x1008,
                ..LONG64
            },
            cr4::PAE | cr4::PCIDE,
            ALL_CR4,
            false,
        ),
        (
            "cet without wp",
            CrState {
                cr0: LONG64.cr0 & !cr0::WP,
                ..LONG64
            },
            cr4::PAE | cr4::CET,
            ALL_CR4,
            false,
        ),
        ("cet with wp", LONG64, cr4::PAE | cr4::CET, ALL_CR4, true),
        ("pae outside paging", PROTECTED, cr4::PAE, ALL_CR4, true),
    ];
    for (name, state, value, supported, ok) in rows {
        let got = mov_to_cr4(state, *value, *supported);
        assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
        if let Ok(a) = got {
            assert_eq!(a.state.cr4, *value, "{name}");
        }
    }
}

#[test]
fn paging_changes_flush_and_pae_paging_reloads_its_pdptes() {
    // Entering PAE paging from CR0 and from CR4.
    let a = mov_to_cr0(&PROTECTED_PAE, cr0::PE | cr0::PG).unwrap();
    assert!(a.load_pdptes && a.flush_tlb);
    let a = mov_to_cr4(&PAGED32, cr4::PAE, ALL_CR4).unwrap();
    assert!(a.load_pdptes && a.flush_tlb);
    // PGE changes under PAE paging reload; TS does not.
    assert!(
        mov_to_cr4(&PAE_PAGING, cr4::PAE | cr4::PGE, ALL_CR4)
            .unwrap()
            .load_pdptes
    );
    let a = mov_to_cr0(&PAE_PAGING, PAE_PAGING.cr0 | (1 << 3)).unwrap();
    assert!(!a.load_pdptes && !a.flush_tlb);
    // CR3 under PAE paging always reloads; IA-32e mode never has PDPTE
    // registers.
    assert!(mov_to_cr3(&PAE_PAGING, 0x2000, 36).unwrap().load_pdptes);
    assert!(!mov_to_cr3(&LONG64, 0x2000, 36).unwrap().load_pdptes);
    assert!(
        !mov_to_cr0(&PROTECTED_LME_PAE, cr0::PE | cr0::PG)
            .unwrap()
            .load_pdptes
    );
}

#[test]
fn mov_to_cr3_checks_reserved_bits_in_ia32e_mode() {
    assert_eq!(mov_to_cr3(&LONG64, 1 << 40, 39), Err(GpFault));
    assert_eq!(mov_to_cr3(&LONG64, 1 << 38, 39).unwrap().state.cr3, 1 << 38);
    assert_eq!(mov_to_cr3(&LONG64, 1 << 63, 39), Err(GpFault));
    // With PCIDs bit 63 is the no-flush hint, not stored.
    let pcid = CrState {
        cr4: cr4::PAE | cr4::PCIDE,
        ..LONG64
    };
    assert_eq!(
        mov_to_cr3(&pcid, (1 << 63) | 0x2005, 39).unwrap().state.cr3,
        0x2005
    );
    // Outside IA-32e mode the operand is 32 bits and every value loads.
    assert_eq!(
        mov_to_cr3(&PAGED32, 0xFFFF_F000, 36).unwrap().state.cr3,
        0xFFFF_F000
    );
}

#[test]
fn wrmsr_efer_follows_the_sdm() {
    let all = efer::SCE | efer::LME | efer::NXE;
    let rows: &[(&str, CrState, u64, u64, Option<u64>)] = &[
        (
            "lme with paging off",
            PROTECTED,
            efer::LME,
            all,
            Some(efer::LME),
        ),
        ("lme set with paging on", PAGED32, efer::LME, all, None),
        ("lme cleared in ia-32e", LONG64, efer::LMA, all, None),
        (
            "nxe and sce in ia-32e",
            LONG64,
            efer::LME | efer::NXE | efer::SCE,
            all,
            Some(0xD01),
        ),
        ("lma written is ignored", PROTECTED, efer::LMA, all, Some(0)),
        (
            "lma cleared is ignored",
            LONG64,
            efer::LME,
            all,
            Some(efer::LME | efer::LMA),
        ),
        ("reserved bit 1", PROTECTED, 1 << 1, all, None),
        ("svme (amd) reserved", PROTECTED, 1 << 12, all, None),
        ("bit 63", PROTECTED, 1 << 63, all, None),
        (
            "nxe hidden by cpuid",
            PROTECTED,
            efer::NXE,
            efer::SCE | efer::LME,
            None,
        ),
        ("lme hidden by cpuid", PROTECTED, efer::LME, efer::SCE, None),
    ];
    for (name, state, value, supported, want) in rows {
        let got = wrmsr_efer(state, *value, *supported)
            .ok()
            .map(|a| a.state.efer);
        assert_eq!(got, *want, "{name}");
    }
}

#[test]
fn every_allowed_write_leaves_a_state_vm_entry_accepts() {
    // SDM Vol. 3C, 27.3.1.1: with CR0.PG, LMA equals LME; in IA-32e mode
    // CR4.PAE is set; PG needs PE; NW needs CD.
    let states = [
        REAL,
        PROTECTED,
        PROTECTED_PAE,
        PROTECTED_LME,
        PROTECTED_LME_PAE,
        PAGED32,
        PAE_PAGING,
        LONG64,
        COMPAT,
    ];
    let values = [
        0,
        1,
        0x11,
        0x8000_0001,
        0x8000_0011,
        0x6000_0011,
        0x2000_0011,
        0xE000_0011,
        0x8001_0031,
    ];
    let consistent = |s: &CrState| {
        let pg = s.cr0 & cr0::PG != 0;
        (!pg || (s.efer & efer::LMA != 0) == (s.efer & efer::LME != 0))
            && (!s.ia32e() || (s.cr4 & cr4::PAE != 0 && pg))
            && (!pg || s.cr0 & cr0::PE != 0)
            && (s.cr0 & cr0::NW == 0 || s.cr0 & cr0::CD != 0)
    };
    for s in &states {
        assert!(consistent(s), "{s:?}");
        for v in values {
            if let Ok(a) = mov_to_cr0(s, v) {
                assert!(consistent(&a.state), "cr0 {v:#x} on {s:?}: {a:?}");
            }
            if let Ok(a) = mov_to_cr4(s, v & ALL_CR4, ALL_CR4) {
                assert!(consistent(&a.state), "cr4 {v:#x} on {s:?}");
            }
            if let Ok(a) = wrmsr_efer(s, v & 0xFFF, 0xD01) {
                assert!(consistent(&a.state), "efer {v:#x} on {s:?}");
            }
        }
    }
}

#[test]
fn pdptes_with_reserved_bits_are_refused() {
    assert!(pdptes_valid(&[0x1001, 0, 0x2001, 0], 36));
    assert!(
        pdptes_valid(&[0xFFFF_FFFF_FFFF_FFFE, 0, 0, 0], 36),
        "not present"
    );
    assert!(!pdptes_valid(&[0x1003, 0, 0, 0], 36), "bit 1");
    assert!(!pdptes_valid(&[0, 0x1021, 0, 0], 36), "bit 5");
    assert!(
        !pdptes_valid(&[0, 0, 0, (1 << 40) | 1], 36),
        "above MAXPHYADDR"
    );
    assert!(pdptes_valid(&[0, 0, 0, (1 << 40) | 1], 41));
    assert_eq!(pdpt_address(0x1234_5FFF), 0x1234_5FE0);
}

#[test]
fn cpuid_features_gate_cr4_and_efer_bits() {
    let none = CpuidResult::default();
    assert_eq!(cr4_supported(&none, &none), 1 << 8);
    let leaf1 = CpuidResult {
        ecx: 1 << 26,
        edx: (1 << 6) | (1 << 13),
        ..none
    };
    let leaf7 = CpuidResult {
        ebx: 1 << 7,
        ecx: 1 << 3,
        ..none
    };
    assert_eq!(
        cr4_supported(&leaf1, &leaf7),
        (1 << 8) | cr4::PAE | cr4::PGE | (1 << 18) | cr4::SMEP | (1 << 22)
    );
    let ext1 = CpuidResult {
        edx: (1 << 11) | (1 << 29),
        ..none
    };
    assert_eq!(efer_supported(&ext1), efer::SCE | efer::LME);
}
