//! The page walker over guest page tables built in fake RAM, the decoder
//! on a table of encodings, and whole MMIO exits through `handle_exit` on
//! the fake backend with a register-file device on the bus.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::boxed::Box;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use devices::bus::{Device, DeviceEnv, DeviceId, MmioRange};
use proptest::prelude::*;

use super::decode::{decode, CodeSize, DecodeError, Extension, Opcode, Operation, Register};
use super::walk::{fetch, translate, FetchError, Paging, RamReader, WalkError};
use super::*;
use crate::access::Gpr;
use crate::exit::{handle_exit, Exit, Outcome, VcpuModel};
use crate::fake::{FakePlatform, FakeVcpu};
use crate::stop::StopReason;

// ---------------------------------------------------------------------
// Guest memory and page tables

fn platform(ram: usize) -> FakePlatform {
    FakePlatform {
        ram: vec![0; ram],
        ..FakePlatform::default()
    }
}

fn put(p: &mut FakePlatform, gpa: u64, bytes: &[u8]) {
    let at = gpa as usize;
    p.ram[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put32(p: &mut FakePlatform, gpa: u64, value: u32) {
    put(p, gpa, &value.to_le_bytes());
}

fn put64(p: &mut FakePlatform, gpa: u64, value: u64) {
    put(p, gpa, &value.to_le_bytes());
}

const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 1 << 7;
const CR0_PE_PG: u64 = 0x8000_0011;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);

fn gpa(v: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(v)
}

#[test]
fn without_paging_linear_is_physical_cut_to_32_bits() {
    let p = platform(0);
    let paging = Paging {
        cr0: 0x11,
        ..Paging::default()
    };
    assert_eq!(translate(&p, &paging, 0x1_0000_1234), Ok(gpa(0x1234)));
    assert_eq!(translate(&p, &paging, 0xFEE0_0030), Ok(gpa(0xFEE0_0030)));
}

#[test]
fn thirty_two_bit_paging_with_and_without_pse() {
    let mut p = platform(0x10_0000);
    // Directory at 0x1000: entry 1 -> table at 0x2000, entry 3 -> 0x7000.
    put32(&mut p, 0x1004, 0x2000 | P as u32);
    put32(&mut p, 0x2000 + 3 * 4, 0x7000 | P as u32);
    let mut paging = Paging {
        cr0: CR0_PE_PG,
        cr3: 0x1000,
        ..Paging::default()
    };
    assert_eq!(translate(&p, &paging, 0x0040_3ABC), Ok(gpa(0x7ABC)));
    // Only 32 bits of linear address exist.
    assert_eq!(
        translate(&p, &paging, 0xFFFF_FFFF_0040_3ABC),
        Ok(gpa(0x7ABC))
    );
    // Entry 2: PS set with PSE-36 bits 39:32 = 0x12.
    put32(&mut p, 0x1008, 0x00C0_0000 | (0x12 << 13) | (PS | P) as u32);
    // Without CR4.PSE the PS bit is ignored: the entry names a table (at
    // 0x00C0_0000 | 0x24000, outside this RAM).
    assert_eq!(
        translate(&p, &paging, 0x0080_1234),
        Err(WalkError::TableNotInRam {
            linear: 0x0080_1234,
            entry: gpa(0x00C2_4000 + 4)
        })
    );
    paging.cr4 = CR4_PSE;
    assert_eq!(translate(&p, &paging, 0x0080_1234), Ok(gpa(0x12_00C0_1234)));
    // Not present: the table's entry 4, then the directory's entry 0.
    assert_eq!(
        translate(&p, &paging, 0x0040_4000),
        Err(WalkError::NotPresent {
            linear: 0x0040_4000,
            level: 1
        })
    );
    assert_eq!(
        translate(&p, &paging, 0x10),
        Err(WalkError::NotPresent {
            linear: 0x10,
            level: 2
        })
    );
}

#[test]
fn pae_paging_with_4k_and_2m_pages() {
    let mut p = platform(0x10_0000);
    // The PDPT is 32-byte aligned: CR3 0x1020 (low bits ignored: 0x1027).
    put64(&mut p, 0x1020 + 3 * 8, 0x3000 | P);
    put64(&mut p, 0x3000 + 8, 0x4000 | P | RW);
    put64(&mut p, 0x4000 + 8, 0x9000 | P);
    put64(&mut p, 0x3000 + 2 * 8, 0x1_0060_0000 | PS | P);
    let paging = Paging {
        cr0: CR0_PE_PG,
        cr3: 0x1027,
        cr4: CR4_PAE,
        efer: 0,
    };
    assert_eq!(translate(&p, &paging, 0xC020_1ABC), Ok(gpa(0x9ABC)));
    assert_eq!(translate(&p, &paging, 0xC040_0123), Ok(gpa(0x1_0060_0123)));
    assert_eq!(
        translate(&p, &paging, 0x4000_0000),
        Err(WalkError::NotPresent {
            linear: 0x4000_0000,
            level: 3
        })
    );
}

/// A 4-level hierarchy at CR3 0x1000 for the higher half 0xFFFF_8000_...:
/// PML4[256] -> PDPT 0x2000; PDPT[0] -> PD 0x3000, PDPT[1] a 1 GiB page at
/// 2 GiB; PD[1] -> PT 0x4000, PD[2] a 2 MiB page at 2 MiB; PT[1] -> 0x5000,
/// PT[2] -> 0xA000.
fn four_level(p: &mut FakePlatform) -> Paging {
    put64(p, 0x1000 + 256 * 8, 0x2000 | P | RW);
    put64(p, 0x2000, 0x3000 | P | RW);
    put64(p, 0x2008, 0x8000_0000 | PS | P | RW);
    put64(p, 0x3008, 0x4000 | P | RW);
    put64(p, 0x3010, 0x20_0000 | PS | P | RW);
    put64(p, 0x4008, 0x5000 | P | RW);
    put64(p, 0x4010, 0xA000 | P | RW);
    Paging {
        cr0: CR0_PE_PG,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LME_LMA,
    }
}

const HIGH: u64 = 0xFFFF_8000_0000_0000;

#[test]
fn four_level_paging_with_1g_2m_and_4k_pages() {
    let mut p = platform(0x10_0000);
    let paging = four_level(&mut p);
    assert_eq!(translate(&p, &paging, HIGH + 0x20_1ABC), Ok(gpa(0x5ABC)));
    assert_eq!(
        translate(&p, &paging, HIGH + 0x5234_5678),
        Ok(gpa(0x9234_5678))
    );
    assert_eq!(translate(&p, &paging, HIGH + 0x40_1234), Ok(gpa(0x20_1234)));
    assert_eq!(
        translate(&p, &paging, 0x1000),
        Err(WalkError::NotPresent {
            linear: 0x1000,
            level: 4
        })
    );
    assert_eq!(
        translate(&p, &paging, HIGH + 0x20_3000),
        Err(WalkError::NotPresent {
            linear: HIGH + 0x20_3000,
            level: 1
        })
    );
    assert_eq!(
        translate(&p, &paging, 0x0000_8000_0000_0000),
        Err(WalkError::NonCanonical {
            linear: 0x0000_8000_0000_0000
        })
    );
    // A table pointer outside RAM.
    put64(&mut p, 0x3018, 0x4000_0000 | P);
    assert_eq!(
        translate(&p, &paging, HIGH + 0x60_0000),
        Err(WalkError::TableNotInRam {
            linear: HIGH + 0x60_0000,
            entry: gpa(0x4000_0000)
        })
    );
    let five = Paging {
        cr4: CR4_PAE | CR4_LA57,
        ..paging
    };
    assert_eq!(
        translate(&p, &five, HIGH + 0x20_1ABC),
        Err(WalkError::FiveLevel)
    );
}

#[test]
fn a_fetch_across_a_page_boundary_translates_each_page() {
    let mut p = platform(0x10_0000);
    let paging = four_level(&mut p);
    // Linear HIGH+0x201FFD.. is physical 0x5FFD..0x5FFF then 0xA000..
    put(&mut p, 0x5FFD, &[0x48, 0x8B, 0x88]);
    put(&mut p, 0xA000, &[0x00, 0x01, 0x00, 0x00, 0x90]);
    let f = fetch(&p, &paging, 0, HIGH + 0x20_1FFD, true).unwrap();
    assert_eq!(f.len, 15);
    assert_eq!(
        &f.as_slice()[..8],
        &[0x48, 0x8B, 0x88, 0x00, 0x01, 0x00, 0x00, 0x90]
    );
    assert_eq!(f.short, None);
    // The next page is not present: the first page's bytes come back.
    let f = fetch(&p, &paging, 0, HIGH + 0x20_2FFE, true).unwrap();
    assert_eq!(f.len, 2);
    assert_eq!(
        f.short,
        Some(FetchError::Walk(WalkError::NotPresent {
            linear: HIGH + 0x20_3000,
            level: 1
        }))
    );
    // Not even the first byte.
    assert!(matches!(
        fetch(&p, &paging, 0, 0x1000, true),
        Err(FetchError::Walk(WalkError::NotPresent { level: 4, .. }))
    ));
}

#[test]
fn outside_64_bit_mode_the_fetch_adds_cs_base_and_wraps_at_4g() {
    let mut p = platform(0x10_0000);
    let real = Paging {
        cr0: 0x10,
        ..Paging::default()
    };
    put(&mut p, 0xFFFF0, &[0xAA, 0xBB]);
    let f = fetch(&p, &real, 0xF0000, 0xFFF0, false).unwrap();
    assert_eq!(&f.as_slice()[..2], &[0xAA, 0xBB]);
    // CS.base + EIP past 4 GiB wraps to 0.
    put(&mut p, 0x10, &[0xCC]);
    let f = fetch(&p, &real, 0xFFFF_FFF0, 0x20, false).unwrap();
    assert_eq!(f.as_slice()[0], 0xCC);
    // Code that is not RAM.
    assert_eq!(
        fetch(&p, &real, 0, 0xFEE0_0000, false),
        Err(FetchError::NotInRam {
            linear: 0xFEE0_0000,
            gpa: gpa(0xFEE0_0000)
        })
    );
}

#[test]
fn fetch_at_rip_reads_through_a_bare_reader_in_the_vcpus_mode() {
    let mut p = platform(0x10_0000);
    let paging = four_level(&mut p);
    put(&mut p, 0x5ABC, &[0x0F, 0xA2]);
    let reader = RamReader(|at: GuestPhysAddr, buf: &mut [u8]| {
        let start = at.as_u64() as usize;
        match p.ram.get(start..start + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    });
    let mut v = FakeVcpu::long_mode(HIGH + 0x20_1ABC, 2);
    (v.cr0, v.cr3, v.cr4, v.efer) = (paging.cr0, paging.cr3, paging.cr4, paging.efer);
    let (f, code) = fetch_at_rip(&v, &reader).unwrap().unwrap();
    assert_eq!(code, CodeSize::Bits64);
    assert_eq!(&f.as_slice()[..2], &[0x0F, 0xA2]);
    // Real mode: CS.base + IP, 16-bit code.
    let mut v = FakeVcpu::long_mode(0x10, 2);
    (v.cr0, v.efer) = (0x10, 0);
    v.segments[1].attributes = 0x9B;
    v.segments[1].base = 0x5AAC;
    let (f, code) = fetch_at_rip(&v, &reader).unwrap().unwrap();
    assert_eq!(code, CodeSize::Bits16);
    assert_eq!(&f.as_slice()[..2], &[0x0F, 0xA2]);
    // Nothing there.
    v.segments[1].base = 0x4000_0000;
    assert!(matches!(
        fetch_at_rip(&v, &reader),
        Ok(Err(FetchError::NotInRam { .. }))
    ));
    // The backend's failure is the caller's.
    v.fail = true;
    assert!(fetch_at_rip(&v, &reader).is_err());
}

// ---------------------------------------------------------------------
// Decoder

fn reg(gpr: Gpr) -> Register {
    Register {
        gpr,
        high_byte: false,
    }
}

fn high(gpr: Gpr) -> Register {
    Register {
        gpr,
        high_byte: true,
    }
}

fn load(dst: Register, width: u8) -> Operation {
    Operation::Load {
        dst,
        width,
        extension: Extension::Zero,
    }
}

#[test]
fn the_decoder_finds_length_operand_and_size() {
    use CodeSize::{Bits16, Bits32, Bits64};
    use Gpr::*;
    let table: &[(CodeSize, &[u8], u8, u8, Operation)] = &[
        // mov [rax], ebx
        (Bits64, &[0x89, 0x18], 2, 4, Operation::Store(reg(Rbx))),
        // mov ecx, [rax+0x20] (disp8)
        (Bits64, &[0x8B, 0x48, 0x20], 3, 4, load(reg(Rcx), 4)),
        // mov rcx, [rax+0x100] (REX.W, disp32)
        (
            Bits64,
            &[0x48, 0x8B, 0x88, 0, 1, 0, 0],
            7,
            8,
            load(reg(Rcx), 8),
        ),
        // mov [rsp], r8d (REX.R, SIB)
        (
            Bits64,
            &[0x44, 0x89, 0x04, 0x24],
            4,
            4,
            Operation::Store(reg(R8)),
        ),
        // mov r9d, [r12+8] (REX.RB, SIB, disp8)
        (
            Bits64,
            &[0x45, 0x8B, 0x4C, 0x24, 0x08],
            5,
            4,
            load(reg(R9), 4),
        ),
        // mov r10, [r13+0] (REX.WRB; base 101 with mod 01 needs its disp8)
        (Bits64, &[0x4D, 0x8B, 0x55, 0x00], 4, 8, load(reg(R10), 8)),
        // mov eax, [rip+0x12345678]
        (
            Bits64,
            &[0x8B, 0x05, 0x78, 0x56, 0x34, 0x12],
            6,
            4,
            load(reg(Rax), 4),
        ),
        // mov eax, [0xfee00000] (SIB with no base: disp32)
        (
            Bits64,
            &[0x8B, 0x04, 0x25, 0, 0, 0xE0, 0xFE],
            7,
            4,
            load(reg(Rax), 4),
        ),
        // mov eax, gs:[0xfee00000]; addr32 mov eax, [ebx]
        (
            Bits64,
            &[0x65, 0x8B, 0x04, 0x25, 0, 0, 0xE0, 0xFE],
            8,
            4,
            load(reg(Rax), 4),
        ),
        (Bits64, &[0x67, 0x8B, 0x03], 3, 4, load(reg(Rax), 4)),
        // mov [rax], cx (66)
        (
            Bits64,
            &[0x66, 0x89, 0x08],
            3,
            2,
            Operation::Store(reg(Rcx)),
        ),
        // REX.W wins over 66; a 66 after REX cancels the REX.
        (
            Bits64,
            &[0x66, 0x48, 0x89, 0x08],
            4,
            8,
            Operation::Store(reg(Rcx)),
        ),
        (
            Bits64,
            &[0x48, 0x66, 0x89, 0x08],
            4,
            2,
            Operation::Store(reg(Rcx)),
        ),
        // mov [rax], ah (no REX) and mov [rax], spl (REX)
        (Bits64, &[0x88, 0x20], 2, 1, Operation::Store(high(Rax))),
        (
            Bits64,
            &[0x40, 0x88, 0x20],
            3,
            1,
            Operation::Store(reg(Rsp)),
        ),
        // mov bh, [rsi]; mov r15b, [rsi] (REX.R)
        (Bits64, &[0x8A, 0x3E], 2, 1, load(high(Rbx), 1)),
        (Bits64, &[0x44, 0x8A, 0x3E], 3, 1, load(reg(R15), 1)),
        // mov dword [rax+0x300], 0x10000
        (
            Bits64,
            &[0xC7, 0x80, 0, 3, 0, 0, 0, 0, 1, 0],
            10,
            4,
            Operation::StoreImmediate(0x10000),
        ),
        // mov qword [rax], -1 (imm32 sign-extended)
        (
            Bits64,
            &[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF],
            7,
            8,
            Operation::StoreImmediate(u64::MAX),
        ),
        // mov byte [rax+0x10], 0x7f; mov word [rax], 0x1234
        (
            Bits64,
            &[0xC6, 0x40, 0x10, 0x7F],
            4,
            1,
            Operation::StoreImmediate(0x7F),
        ),
        (
            Bits64,
            &[0x66, 0xC7, 0x00, 0x34, 0x12],
            5,
            2,
            Operation::StoreImmediate(0x1234),
        ),
        // movzx ecx, byte [rax]; movsx rcx, word [rax+rcx*4]
        (Bits64, &[0x0F, 0xB6, 0x08], 3, 1, load(reg(Rcx), 4)),
        (
            Bits64,
            &[0x48, 0x0F, 0xBF, 0x0C, 0x88],
            5,
            2,
            Operation::Load {
                dst: reg(Rcx),
                width: 8,
                extension: Extension::Sign,
            },
        ),
        // movzx r11d, word [rdi]
        (Bits64, &[0x44, 0x0F, 0xB7, 0x1F], 4, 2, load(reg(R11), 4)),
        // mov eax, [moffs64]; mov [moffs64], al
        (
            Bits64,
            &[0xA1, 0, 0, 0xE0, 0xFE, 0, 0, 0, 0],
            9,
            4,
            load(reg(Rax), 4),
        ),
        (
            Bits64,
            &[0xA2, 0, 0, 0xE0, 0xFE, 0, 0, 0, 0],
            9,
            1,
            Operation::Store(reg(Rax)),
        ),
        // 32-bit: mov ecx, [0xfee00000] (mod 00 r/m 101 is absolute)
        (
            Bits32,
            &[0x8B, 0x0D, 0, 0, 0xE0, 0xFE],
            6,
            4,
            load(reg(Rcx), 4),
        ),
        (
            Bits32,
            &[0x66, 0x8B, 0x0D, 0, 0, 0xE0, 0xFE],
            7,
            2,
            load(reg(Rcx), 2),
        ),
        (
            Bits32,
            &[0xA3, 0, 0, 0xE0, 0xFE],
            5,
            4,
            Operation::Store(reg(Rax)),
        ),
        // 32-bit with 67: 16-bit addressing, mov eax, [bx+si]
        (Bits32, &[0x67, 0x8B, 0x00], 3, 4, load(reg(Rax), 4)),
        // 16-bit: mov ax, [bx]; mov eax, [bx]; mov ax, [bp+2];
        // mov cx, [0x1234]; mov ax, [bx+0x1234]; mov ax, [esp] (67, SIB)
        (Bits16, &[0x8B, 0x07], 2, 2, load(reg(Rax), 2)),
        (Bits16, &[0x66, 0x8B, 0x07], 3, 4, load(reg(Rax), 4)),
        (Bits16, &[0x8B, 0x46, 0x02], 3, 2, load(reg(Rax), 2)),
        (Bits16, &[0x8B, 0x0E, 0x34, 0x12], 4, 2, load(reg(Rcx), 2)),
        (Bits16, &[0x8B, 0x87, 0x34, 0x12], 4, 2, load(reg(Rax), 2)),
        (Bits16, &[0x67, 0x8B, 0x04, 0x24], 4, 2, load(reg(Rax), 2)),
        (
            Bits16,
            &[0xC7, 0x06, 0x00, 0x10, 0x34, 0x12],
            6,
            2,
            Operation::StoreImmediate(0x1234),
        ),
    ];
    for (code, bytes, len, size, operation) in table {
        // Trailing bytes (the next instruction) do not change anything.
        let mut padded = bytes.to_vec();
        padded.extend_from_slice(&[0x90; 4]);
        let insn = decode(&padded, *code).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
        assert_eq!(
            (insn.len, insn.size, insn.operation),
            (*len, *size, *operation),
            "{code:?} {bytes:02x?}"
        );
    }
}

#[test]
fn the_decoder_refuses_what_it_does_not_emulate() {
    use CodeSize::{Bits32, Bits64};
    let op = |two_byte, byte, extension| {
        DecodeError::UnsupportedOpcode(Opcode {
            two_byte,
            byte,
            extension,
        })
    };
    let mut prefixes = vec![0x66u8; 15];
    prefixes.extend_from_slice(&[0x89, 0x00]);
    let table: &[(CodeSize, &[u8], DecodeError)] = &[
        (Bits64, &[0x0F, 0x11, 0x07], op(true, 0x11, None)),
        (Bits64, &[0xC5, 0xF8, 0x11, 0x07], op(false, 0xC5, None)),
        (Bits64, &[0x01, 0x08], op(false, 0x01, None)),
        (Bits64, &[0xC7, 0x08, 0, 0, 0, 0], op(false, 0xC7, Some(1))),
        (Bits64, &[0x89, 0xD8], DecodeError::RegisterOperand),
        (
            Bits64,
            &[0xC7, 0xC0, 1, 0, 0, 0],
            DecodeError::RegisterOperand,
        ),
        (
            Bits64,
            &[0xF0, 0x89, 0x08],
            DecodeError::UnsupportedPrefix(0xF0),
        ),
        (
            Bits64,
            &[0xF3, 0x0F, 0xB6, 0x00],
            DecodeError::UnsupportedPrefix(0xF3),
        ),
        (Bits64, &[0x8B], DecodeError::Truncated),
        (Bits64, &[0x8B, 0x80, 0x00], DecodeError::Truncated),
        (Bits64, &[], DecodeError::Truncated),
        (Bits64, &prefixes, DecodeError::TooLong),
        // 48 is DEC EAX outside 64-bit mode, not REX.W.
        (Bits32, &[0x48, 0x89, 0x08], op(false, 0x48, None)),
    ];
    for (code, bytes, want) in table {
        assert_eq!(decode(bytes, *code), Err(*want), "{bytes:02x?}");
    }
    assert_eq!(
        op(true, 0x11, None).to_string(),
        "opcode 0f 11 is not emulated (only MOV, MOVZX and MOVSX to or from memory are)"
    );
    assert_eq!(
        op(false, 0xC7, Some(1)).to_string().get(..12),
        Some("opcode c7 /1")
    );
}

// ---------------------------------------------------------------------
// Whole exits

/// A page of byte registers at [`APIC`] that logs every access.
struct RegisterFile {
    bytes: Vec<u8>,
    log: Vec<(bool, u64, u8, u64)>,
}

const APIC: u64 = 0xFED0_0000;

impl Device for RegisterFile {
    fn name(&self) -> &'static str {
        "register-file"
    }

    fn mmio_read(&mut self, gpa: GuestPhysAddr, size: u8, _env: &mut DeviceEnv<'_>) -> u64 {
        let at = (gpa.as_u64() - APIC) as usize;
        let mut buf = [0u8; 8];
        buf[..usize::from(size)].copy_from_slice(&self.bytes[at..at + usize::from(size)]);
        let value = u64::from_le_bytes(buf);
        self.log.push((false, gpa.as_u64(), size, value));
        value
    }

    fn mmio_write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64, _env: &mut DeviceEnv<'_>) {
        let at = (gpa.as_u64() - APIC) as usize;
        self.bytes[at..at + usize::from(size)]
            .copy_from_slice(&value.to_le_bytes()[..usize::from(size)]);
        self.log.push((true, gpa.as_u64(), size, value));
    }
}

/// RIP of the code in the 64-bit tests: identity-mapped.
const CODE: u64 = 0x10_0000;

struct Machine {
    vcpu: FakeVcpu,
    model: VcpuModel,
    vm: VmDevices,
    platform: FakePlatform,
    device: DeviceId,
}

impl Machine {
    /// A 64-bit guest whose first 2 MiB are identity-mapped with one 2 MiB
    /// page, running `code` at [`CODE`], with the register file at
    /// [`APIC`].
    fn long(code: &[u8]) -> Self {
        let mut platform = platform(0x20_0000);
        put64(&mut platform, 0x1000, 0x2000 | P | RW);
        put64(&mut platform, 0x2000, 0x3000 | P | RW);
        put64(&mut platform, 0x3000, PS | P | RW);
        put(&mut platform, CODE, code);
        let mut vcpu = FakeVcpu::long_mode(CODE, 0);
        vcpu.cr3 = 0x1000;
        vcpu.cr4 = CR4_PAE;
        let mut vm = VmDevices::new(1_000_000_000, crate::vm::WallClock::default());
        let device = vm
            .bus
            .add(
                Box::new(RegisterFile {
                    bytes: vec![0; 4096],
                    log: Vec::new(),
                }),
                &[],
                &[MmioRange::new(gpa(APIC), 1).unwrap()],
            )
            .unwrap();
        Self {
            vcpu,
            model: VcpuModel::new(0, 1, 0),
            vm,
            platform,
            device,
        }
    }

    fn access(&mut self, at: u64, write: bool) -> Outcome {
        self.exit(NestedFault {
            gpa: gpa(at),
            read: !write,
            write,
            fetch: false,
            allowed: Some([false, false, false]),
        })
    }

    fn exit(&mut self, fault: NestedFault) -> Outcome {
        handle_exit(
            &Exit::nested(fault),
            &mut self.vcpu,
            &mut self.model,
            &mut self.vm,
            &mut self.platform,
        )
    }

    fn device(&mut self) -> &mut RegisterFile {
        self.vm.bus.get_mut::<RegisterFile>(self.device).unwrap()
    }

    fn stop_text(outcome: Outcome) -> (StopReason, std::string::String) {
        match outcome {
            Outcome::Stop(reason) => {
                let text = reason.to_string();
                (*reason, text)
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_guest_writes_a_device_register_and_reads_it_back() {
    // mov [rax], ebx ; mov ecx, [rax+0x20]
    let mut m = Machine::long(&[0x89, 0x18, 0x8B, 0x48, 0x20]);
    m.vcpu.gprs[Gpr::Rax as usize] = APIC;
    m.vcpu.gprs[Gpr::Rbx as usize] = 0xAAAA_BBBB_1234_5678;
    assert_eq!(m.access(APIC, true), Outcome::Resume);
    assert_eq!(m.vcpu.rip, CODE + 2);
    assert_eq!(m.device().log, [(true, APIC, 4, 0x1234_5678)]);
    // The guest's own value at +0x20, then the read.
    m.device().bytes[0x20..0x24].copy_from_slice(&0xCAFE_F00Du32.to_le_bytes());
    m.vcpu.gprs[Gpr::Rcx as usize] = u64::MAX;
    assert_eq!(m.access(APIC + 0x20, false), Outcome::Resume);
    assert_eq!(
        m.vcpu.gprs[Gpr::Rcx as usize],
        0xCAFE_F00D,
        "a 32-bit load zero-extends"
    );
    assert_eq!(m.vcpu.rip, CODE + 5);
    assert_eq!(m.device().log[1], (false, APIC + 0x20, 4, 0xCAFE_F00D));
}

#[test]
fn narrow_loads_keep_the_rest_of_the_register_and_movsx_extends() {
    // mov ah, [rax+0x10] ; mov cx, [rax+0x10] ; movsx rdx, byte [rax+0x10]
    // ; movzx esi, word [rax+0x10]
    let code = [
        0x8A, 0x60, 0x10, 0x66, 0x8B, 0x48, 0x10, 0x48, 0x0F, 0xBE, 0x50, 0x10, 0x0F, 0xB7, 0x70,
        0x10,
    ];
    let mut m = Machine::long(&code);
    m.device().bytes[0x10..0x12].copy_from_slice(&[0x85, 0x97]);
    m.vcpu.gprs[Gpr::Rax as usize] = 0x1111_2222_FED0_0000;
    m.vcpu.gprs[Gpr::Rcx as usize] = 0x3333_4444_5555_6666;
    m.vcpu.gprs[Gpr::Rsi as usize] = u64::MAX;
    for _ in 0..4 {
        assert_eq!(m.access(APIC + 0x10, false), Outcome::Resume);
    }
    assert_eq!(m.vcpu.gprs[Gpr::Rax as usize], 0x1111_2222_FED0_8500);
    assert_eq!(m.vcpu.gprs[Gpr::Rcx as usize], 0x3333_4444_5555_9785);
    assert_eq!(m.vcpu.gprs[Gpr::Rdx as usize], 0xFFFF_FFFF_FFFF_FF85);
    assert_eq!(m.vcpu.gprs[Gpr::Rsi as usize], 0x9785);
    assert_eq!(m.vcpu.rip, CODE + code.len() as u64);
}

#[test]
fn immediates_and_high_byte_registers_are_stored() {
    // mov dword [rax+0xb0], 0 ; mov [rax+4], bh ; mov qword [rax+8], -2
    let code = [
        0xC7, 0x80, 0xB0, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x78, 0x04, 0x48, 0xC7, 0x40, 0x08, 0xFE,
        0xFF, 0xFF, 0xFF,
    ];
    let mut m = Machine::long(&code);
    m.vcpu.gprs[Gpr::Rbx as usize] = 0xAB00;
    assert_eq!(m.access(APIC + 0xB0, true), Outcome::Resume);
    assert_eq!(m.access(APIC + 4, true), Outcome::Resume);
    assert_eq!(m.access(APIC + 8, true), Outcome::Resume);
    assert_eq!(
        m.device().log,
        [
            (true, APIC + 0xB0, 4, 0),
            (true, APIC + 4, 1, 0xAB),
            (true, APIC + 8, 8, 0xFFFF_FFFF_FFFF_FFFE)
        ]
    );
    assert_eq!(m.vcpu.rip, CODE + code.len() as u64);
}

#[test]
fn an_mmio_access_ends_an_sti_shadow() {
    let mut m = Machine::long(&[0x89, 0x18]);
    m.vcpu.shadow = true;
    m.vcpu.instruction_len = 7; // what a backend would not report
    assert_eq!(m.access(APIC, true), Outcome::Resume);
    assert!(!m.vcpu.shadow);
    assert_eq!(m.vcpu.rip, CODE + 2, "RIP moves by the decoded length");
}

#[test]
fn a_real_mode_guest_fetches_through_cs_base() {
    // At F000:FFF0: mov eax, [bx] (66) ; mov byte [bx], 0x5a
    let mut m = Machine::long(&[]);
    put(
        &mut m.platform,
        0xFFFF0,
        &[0x66, 0x8B, 0x07, 0xC6, 0x07, 0x5A],
    );
    m.vcpu.cr0 = 0x10;
    m.vcpu.efer = 0;
    m.vcpu.segments[1].attributes = 0x9B;
    m.vcpu.segments[1].base = 0xF0000;
    m.vcpu.rip = 0xFFF0;
    m.device().bytes[0x30..0x34].copy_from_slice(&0x0102_0304u32.to_le_bytes());
    assert_eq!(m.access(APIC + 0x30, false), Outcome::Resume);
    assert_eq!(m.vcpu.gprs[Gpr::Rax as usize], 0x0102_0304);
    assert_eq!(m.vcpu.rip, 0xFFF3);
    assert_eq!(m.access(APIC + 0x30, true), Outcome::Resume);
    assert_eq!(m.device().bytes[0x30], 0x5A);
    assert_eq!(m.vcpu.rip, 0xFFF6);
}

#[test]
fn an_instruction_not_emulated_stops_the_guest_with_its_bytes() {
    // movups [rdi], xmm0
    let mut m = Machine::long(&[0x0F, 0x11, 0x07, 0x90]);
    let (reason, text) = Machine::stop_text(m.access(APIC + 0x300, true));
    assert!(
        matches!(reason, StopReason::MmioNotEmulated(_)),
        "{reason:?}"
    );
    assert!(
        text.starts_with(
            "MMIO write at guest-physical 0xfed00300 by an instruction Ferrovisor does not \
             emulate, at RIP 0x100000: 0f 11 07 90 00"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "(opcode 0f 11 is not emulated (only MOV, MOVZX and MOVSX to or from memory are))"
        ),
        "{text}"
    );
    assert_eq!(m.vcpu.rip, CODE, "nothing changed");
    assert!(m.device().log.is_empty());
}

#[test]
fn a_decoded_access_in_the_other_direction_is_refused() {
    // A load at RIP, but the fault says write.
    let mut m = Machine::long(&[0x8B, 0x08]);
    let (_, text) = Machine::stop_text(m.access(APIC, true));
    assert!(
        text.ends_with("(the instruction reads memory but the fault was a write)"),
        "{text}"
    );
    assert!(m.device().log.is_empty());
}

#[test]
fn code_that_cannot_be_fetched_stops_the_guest_with_the_reason() {
    let mut m = Machine::long(&[]);
    m.vcpu.rip = 0x40_0000; // past the one 2 MiB page mapped
    let (_, text) = Machine::stop_text(m.access(APIC, false));
    assert_eq!(
        text,
        "MMIO read at guest-physical 0xfed00000 at RIP 0x400000: cannot read the instruction: \
         linear 0x400000 is not mapped (its level-2 paging entry is not present)"
    );
    // An instruction cut off by a page that is not mapped reports the page.
    let mut m = Machine::long(&[]);
    put(&mut m.platform, 0x1F_FFFE, &[0x8B, 0x88]);
    m.vcpu.rip = 0x1F_FFFE;
    let (_, text) = Machine::stop_text(m.access(APIC, false));
    assert!(
        text.ends_with("8b 88 (cannot read the instruction: linear 0x200000 is not mapped (its level-2 paging entry is not present))"),
        "{text}"
    );
}

#[test]
fn faults_outside_mmio_pages_and_fetches_keep_the_memory_fault_report() {
    let mut m = Machine::long(&[0x89, 0x18]);
    let (reason, _) = Machine::stop_text(m.access(0xFEB0_0000, true));
    assert!(
        matches!(reason, StopReason::MemoryFault { .. }),
        "{reason:?}"
    );
    let (reason, _) = Machine::stop_text(m.exit(NestedFault {
        gpa: gpa(APIC),
        read: true,
        write: false,
        fetch: true,
        allowed: None,
    }));
    assert!(
        matches!(reason, StopReason::MemoryFault { .. }),
        "{reason:?}"
    );
    assert!(m.device().log.is_empty());
    assert_eq!(m.vcpu.rip, CODE);
}

#[test]
fn the_bus_tells_mmio_pages_apart() {
    let m = Machine::long(&[]);
    assert!(m.vm.is_mmio(gpa(APIC)));
    assert!(m.vm.is_mmio(gpa(APIC + 0xFFF)));
    assert!(!m.vm.is_mmio(gpa(APIC + 0x1000)));
    assert!(!m.vm.is_mmio(gpa(APIC - 1)));
    assert!(!VmDevices::new(1_000_000_000, crate::vm::WallClock::default()).is_mmio(gpa(APIC)));
}

#[test]
fn a_32_bit_guest_with_pae_paging_wraps_rip_at_4g() {
    // mov [eax], ecx as the last bytes below 4 GiB, mapped by PAE.
    let mut m = Machine::long(&[]);
    let p = &mut m.platform;
    put64(p, 0x5000 + 3 * 8, 0x6000 | P);
    put64(p, 0x6000 + 511 * 8, 0x7000 | P);
    put64(p, 0x7000 + 511 * 8, 0x8000 | P);
    put(p, 0x8FFE, &[0x89, 0x08]);
    m.vcpu.cr0 = CR0_PE_PG;
    m.vcpu.cr3 = 0x5000;
    m.vcpu.cr4 = CR4_PAE;
    m.vcpu.efer = 0;
    m.vcpu.segments[1].attributes = 0xC09B;
    m.vcpu.rip = 0xFFFF_FFFE;
    m.vcpu.gprs[Gpr::Rcx as usize] = 0x77;
    assert_eq!(m.access(APIC + 0x80, true), Outcome::Resume);
    assert_eq!(m.vcpu.rip, 0);
    assert_eq!(m.device().log, [(true, APIC + 0x80, 4, 0x77)]);
}

// ---------------------------------------------------------------------
// Anything the guest controls

/// RAM filled from `seed` (a xorshift), so page walks read arbitrary
/// entries.
fn noisy_ram(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

proptest! {
    /// Whatever the instruction bytes, registers, control registers and
    /// RAM, an MMIO exit ends in an outcome; a resumed guest moved RIP by
    /// 1 to 15 bytes, a stopped one kept it and says why.
    #[test]
    fn any_mmio_exit_ends_in_an_outcome(
        code in proptest::collection::vec(any::<u8>(), 0..20),
        gprs in any::<[u64; 16]>(),
        paged in any::<bool>(),
        cr0 in any::<u64>(),
        cr3 in any::<u64>(),
        cr4 in any::<u64>(),
        efer in any::<u64>(),
        cs_attributes in any::<u32>(),
        cs_base in any::<u64>(),
        rflags in any::<u64>(),
        rip in any::<u64>(),
        seed in any::<u64>(),
        offset in 0u64..0x1000,
        write in any::<bool>(),
    ) {
        let mut m = Machine::long(&[]);
        m.platform.ram = noisy_ram(seed, 0x1_0000);
        m.vcpu.gprs = gprs;
        m.vcpu.rflags = rflags;
        m.vcpu.segments[1].attributes = cs_attributes;
        if paged {
            m.vcpu.cr0 = cr0;
            m.vcpu.cr3 = cr3 & 0xFFFF;
            m.vcpu.cr4 = cr4;
            m.vcpu.efer = efer;
            m.vcpu.segments[1].base = cs_base;
            m.vcpu.rip = rip;
        } else {
            // Flat and within RAM, so the decoder sees `code`.
            m.vcpu.cr0 = 0x11;
            m.vcpu.efer = 0;
            m.vcpu.segments[1].base = 0;
            m.vcpu.rip = rip & 0x7FFF;
            let at = m.vcpu.rip as usize;
            m.platform.ram[at..at + code.len()].copy_from_slice(&code);
        }
        let before = m.vcpu.rip;
        match m.access(APIC + offset, write) {
            Outcome::Resume => {
                let moved = m.vcpu.rip.wrapping_sub(before) & 0xFFFF_FFFF;
                prop_assert!((1..=15).contains(&moved), "moved {moved}");
            }
            Outcome::Stop(reason) => {
                prop_assert!(!reason.to_string().is_empty());
                prop_assert_eq!(m.vcpu.rip, before);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// The decoder alone, on any bytes in any mode: no panic, and a
    /// decoded length within the bytes and at most 15.
    #[test]
    fn any_bytes_decode_or_are_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..20),
        mode in 0u8..3,
    ) {
        let code = [CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64][usize::from(mode)];
        if let Ok(insn) = decode(&bytes, code) {
            prop_assert!(usize::from(insn.len) <= bytes.len().min(15));
            prop_assert!(matches!(insn.size, 1 | 2 | 4 | 8));
        }
    }
}

#[test]
fn instruction_bytes_keep_at_most_fifteen() {
    assert_eq!(
        InstructionBytes::new(&[0x89, 0xB3]).as_slice(),
        [0x89, 0xB3]
    );
    assert_eq!(InstructionBytes::new(&[]).as_slice(), [0u8; 0]);
    let long: Vec<u8> = (0..20).collect();
    assert_eq!(InstructionBytes::new(&long).as_slice(), &long[..15]);
    assert_eq!(
        InstructionBytes::new(&long).to_string(),
        "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e"
    );
}
