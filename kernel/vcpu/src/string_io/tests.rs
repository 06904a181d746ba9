//! INS and OUTS as a guest sees them, on the fake backend: every operand
//! and address size, both directions of DF, segment overrides and limits,
//! each paging mode, emulated and unclaimed ports, chunking, and faults.

use std::vec;

use proptest::prelude::*;

use crate::access::{Event, Gpr, Segment, SegmentState};
use crate::exit::{
    handle_exit, AddressSize, Exit, IoAccess, IoDirection, Outcome, VcpuModel, RESET_CONTROL_PORT,
};
use crate::fake::{FakePlatform, FakeVcpu};
use crate::stop::StopReason;
use crate::string_io::CHUNK;
use crate::vm::{VmDevices, WallClock};

const RIP: u64 = 0x7000;
/// The instruction's length (REP OUTSB: F3 6E).
const LEN: u64 = 2;
const RAM: usize = 0x20_0000;
const COM1: u16 = 0x3F8;
const UNCLAIMED: u16 = 0x2E8;
const PCI_ADDRESS: u16 = 0xCF8;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;

const CR0_PE: u64 = 1;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_SMAP: u64 = 1 << 21;
const DF: u64 = 1 << 10;
const AC: u64 = 1 << 18;

/// A vCPU, its model, RAM and devices, stopped at a string instruction.
struct Machine {
    vcpu: FakeVcpu,
    model: VcpuModel,
    platform: FakePlatform,
    devices: VmDevices,
}

/// Where the page tables of each paging mode live.
const TABLES: u64 = 0x1000;
/// The 4 KiB page table mapping 0..2 MiB, in every paging mode.
const PT: u64 = 0x4000;

impl Machine {
    fn new(vcpu: FakeVcpu) -> Self {
        Self {
            vcpu,
            model: VcpuModel::new(0, 1, 0),
            platform: FakePlatform {
                ram: vec![0; RAM],
                ..FakePlatform::default()
            },
            devices: VmDevices::new(1_000_000_000, WallClock::default()),
        }
    }

    /// 64-bit mode at CPL 0, 4-level paging identity-mapping the first
    /// 2 MiB with 4 KiB pages (user, writable).
    fn long() -> Self {
        let mut m = Self::new(FakeVcpu::long_mode(RIP, LEN));
        m.vcpu.cr0 |= CR0_WP;
        m.vcpu.cr4 = CR4_PAE;
        m.vcpu.cr3 = TABLES;
        m.put64(TABLES, 0x2000 | P | RW | US);
        m.put64(0x2000, 0x3000 | P | RW | US);
        m.put64(0x3000, PT | P | RW | US);
        m.identity_pt();
        m
    }

    /// Real mode: every segment at base 0, limit 64 KiB.
    fn real() -> Self {
        let mut vcpu = FakeVcpu {
            rip: RIP,
            rflags: 0x2,
            instruction_len: LEN,
            ..FakeVcpu::default()
        };
        for (i, s) in vcpu.segments.iter_mut().enumerate().take(6) {
            *s = SegmentState {
                selector: 0,
                base: 0,
                limit: 0xFFFF,
                attributes: if i == 1 { 0x9B } else { 0x93 },
            };
        }
        Self::new(vcpu)
    }

    /// 32-bit protected mode, flat 4 GiB segments, CPL 0, no paging.
    fn protected() -> Self {
        let mut m = Self::real();
        m.vcpu.cr0 = CR0_PE | 0x10;
        for (i, s) in m.vcpu.segments.iter_mut().enumerate().take(6) {
            s.limit = 0xFFFF_FFFF;
            s.attributes = if i == 1 { 0xC09B } else { 0xC093 };
        }
        m
    }

    /// 32-bit paging: the first 4 MiB identity-mapped, 4 KiB pages below
    /// 2 MiB.
    fn paged32() -> Self {
        let mut m = Self::protected();
        m.vcpu.cr0 |= CR0_PG | CR0_WP;
        m.vcpu.cr4 = CR4_PSE;
        m.vcpu.cr3 = TABLES;
        m.put32(TABLES, (PT | P | RW | US) as u32);
        for i in 0..512u64 {
            m.put32(PT + i * 4, ((i << 12) | P | RW | US) as u32);
        }
        m
    }

    /// PAE paging: the first 2 MiB identity-mapped with 4 KiB pages.
    fn pae() -> Self {
        let mut m = Self::protected();
        m.vcpu.cr0 |= CR0_PG | CR0_WP;
        m.vcpu.cr4 = CR4_PAE;
        m.vcpu.cr3 = TABLES;
        m.put64(TABLES, 0x3000 | P);
        m.put64(0x3000, PT | P | RW | US);
        m.identity_pt();
        m
    }

    /// The 4 KiB page table identity-mapping 0..2 MiB (8-byte entries).
    fn identity_pt(&mut self) {
        for i in 0..512u64 {
            self.put64(PT + i * 8, (i << 12) | P | RW | US);
        }
    }

    /// The page-table entry of 4 KiB page `page` (below 2 MiB) in the
    /// 8-byte-entry modes.
    fn set_pte(&mut self, page: u64, value: u64) {
        self.put64(PT + page * 8, value);
    }

    fn put(&mut self, gpa: u64, bytes: &[u8]) {
        self.platform.ram[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
    }

    fn put32(&mut self, gpa: u64, v: u32) {
        self.put(gpa, &v.to_le_bytes());
    }

    fn put64(&mut self, gpa: u64, v: u64) {
        self.put(gpa, &v.to_le_bytes());
    }

    fn ram(&self, gpa: u64, len: usize) -> &[u8] {
        &self.platform.ram[gpa as usize..gpa as usize + len]
    }

    fn set(&mut self, reg: Gpr, v: u64) {
        self.vcpu.gprs[reg as usize] = v;
    }

    fn get(&self, reg: Gpr) -> u64 {
        self.vcpu.gprs[reg as usize]
    }

    fn run(&mut self, io: IoAccess) -> Outcome {
        handle_exit(
            &Exit::Io(io),
            &mut self.vcpu,
            &mut self.model,
            &mut self.devices,
            &mut self.platform,
        )
    }

    /// Runs the instruction to its end as the guest would: re-executed
    /// after every chunk. Returns the outcome that ended it and how many
    /// exits it took.
    fn run_to_end(&mut self, io: IoAccess) -> (Outcome, u32) {
        let mut exits = 0;
        loop {
            exits += 1;
            let outcome = self.run(io);
            if outcome != Outcome::Resume || self.vcpu.rip != RIP || !self.vcpu.injected.is_empty()
            {
                return (outcome, exits);
            }
            assert!(exits < 10_000, "never finished");
        }
    }
}

/// A string I/O exit.
fn string(
    direction: IoDirection,
    port: u16,
    size: u8,
    rep: bool,
    address_size: AddressSize,
    segment: Segment,
) -> IoAccess {
    IoAccess {
        port,
        size,
        direction,
        string: true,
        rep,
        address_size,
        segment,
    }
}

fn rep_outs(port: u16, size: u8, a: AddressSize) -> IoAccess {
    string(IoDirection::Out, port, size, true, a, Segment::Ds)
}

fn rep_ins(port: u16, size: u8, a: AddressSize) -> IoAccess {
    string(IoDirection::In, port, size, true, a, Segment::Es)
}

fn page_fault(m: &Machine) -> (u32, u64) {
    match m.vcpu.injected.as_slice() {
        [Event::Exception {
            vector: 14,
            error_code: Some(code),
        }] => (*code, m.vcpu.cr2),
        other => panic!("expected one #PF, got {other:?}"),
    }
}

fn only_exception(m: &Machine) -> (u8, Option<u32>) {
    match m.vcpu.injected.as_slice() {
        [Event::Exception { vector, error_code }] => (*vector, *error_code),
        other => panic!("expected one exception, got {other:?}"),
    }
}

#[test]
fn rep_outsb_prints_a_string_on_com1_and_moves_past_the_instruction() {
    let mut m = Machine::long();
    m.put(0x8000, b"hello from rep outsb\n");
    m.set(Gpr::Rsi, 0x8000);
    m.set(Gpr::Rcx, 21);
    let outcome = m.run(rep_outs(COM1, 1, AddressSize::Bits64));
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(m.platform.lines, ["hello from rep outsb"]);
    assert_eq!(m.get(Gpr::Rcx), 0);
    assert_eq!(m.get(Gpr::Rsi), 0x8015);
    assert_eq!(m.vcpu.rip, RIP + LEN);
    assert!(m.vcpu.injected.is_empty());
    assert_eq!(m.model.stats.io, 1);
}

#[test]
fn rep_with_a_zero_count_does_nothing_but_move_on() {
    let mut m = Machine::long();
    m.set(Gpr::Rsi, 0x8000);
    m.set(Gpr::Rcx, 0);
    assert_eq!(
        m.run(rep_outs(COM1, 1, AddressSize::Bits64)),
        Outcome::Resume
    );
    assert_eq!(m.get(Gpr::Rsi), 0x8000);
    assert_eq!(m.vcpu.rip, RIP + LEN);
    assert_eq!(m.model.stats.io_writes_ignored, 0);
}

#[test]
fn outs_and_ins_without_rep_move_one_element_and_leave_the_count() {
    for size in [1u8, 2, 4] {
        let mut m = Machine::long();
        m.set(Gpr::Rsi, 0x8000);
        m.set(Gpr::Rdi, 0x9000);
        m.set(Gpr::Rcx, 77);
        let outs = string(
            IoDirection::Out,
            UNCLAIMED,
            size,
            false,
            AddressSize::Bits64,
            Segment::Ds,
        );
        assert_eq!(m.run(outs), Outcome::Resume);
        assert_eq!(m.get(Gpr::Rsi), 0x8000 + u64::from(size));
        assert_eq!(m.get(Gpr::Rcx), 77, "no REP: the count is not touched");
        assert_eq!(m.model.stats.io_writes_ignored, 1);
        assert_eq!(m.vcpu.rip, RIP + LEN);
        let ins = string(
            IoDirection::In,
            UNCLAIMED,
            size,
            false,
            AddressSize::Bits64,
            Segment::Ds,
        );
        assert_eq!(m.run(ins), Outcome::Resume);
        assert_eq!(m.get(Gpr::Rdi), 0x9000 + u64::from(size));
        let mut want = [0u8; 5];
        want[..usize::from(size)].fill(0xFF);
        assert_eq!(m.ram(0x9000, 5), want);
        assert_eq!(m.get(Gpr::Rcx), 77);
        assert_eq!(m.model.stats.io_reads_unclaimed, 1);
    }
}

#[test]
fn rep_ins_from_an_unclaimed_port_fills_the_buffer_with_ones_in_every_size() {
    for size in [1u8, 2, 4] {
        let mut m = Machine::long();
        m.set(Gpr::Rdi, 0x9000);
        m.set(Gpr::Rcx, 100);
        let (outcome, _) = m.run_to_end(rep_ins(UNCLAIMED, size, AddressSize::Bits64));
        assert_eq!(outcome, Outcome::Resume);
        let bytes = 100 * usize::from(size);
        assert!(m.ram(0x9000, bytes).iter().all(|&b| b == 0xFF));
        assert_eq!(m.ram(0x9000 + bytes as u64, 1), [0], "not a byte more");
        assert_eq!(m.get(Gpr::Rdi), 0x9000 + bytes as u64);
        assert_eq!(m.get(Gpr::Rcx), 0);
        assert_eq!(m.model.stats.io_reads_unclaimed, 100);
        assert_eq!(m.vcpu.rip, RIP + LEN);
    }
}

#[test]
fn ins_reads_an_emulated_port_and_outs_writes_one_in_every_operand_size() {
    // COM1's line status register: transmitter empty, 0x60.
    let mut m = Machine::long();
    m.set(Gpr::Rdi, 0x9000);
    m.set(Gpr::Rcx, 3);
    m.run(rep_ins(0x3FD, 1, AddressSize::Bits64));
    assert_eq!(m.ram(0x9000, 4), [0x60, 0x60, 0x60, 0]);
    // The PCI configuration address, a 32-bit register: OUTSD writes it,
    // INSD reads it back.
    m.put32(0x8000, 0x8000_1230);
    m.set(Gpr::Rsi, 0x8000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_outs(PCI_ADDRESS, 4, AddressSize::Bits64));
    m.set(Gpr::Rdi, 0xA000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(PCI_ADDRESS, 4, AddressSize::Bits64));
    assert_eq!(m.ram(0xA000, 4), 0x8000_1230u32.to_le_bytes());
    // OUTSW: the low byte to COM1's data register, the high one to the
    // next port (IER, written 0).
    m.put(0x8100, b"o\0k\0\n\0");
    m.set(Gpr::Rsi, 0x8100);
    m.set(Gpr::Rcx, 3);
    m.run(rep_outs(COM1, 2, AddressSize::Bits64));
    assert_eq!(m.platform.lines, ["ok"]);
    assert_eq!(m.get(Gpr::Rsi), 0x8106);
}

#[test]
fn with_df_set_the_index_counts_down() {
    // OUTSW with DF = 1: the words at decreasing addresses.
    let mut m = Machine::long();
    m.vcpu.rflags |= DF;
    m.put(0x8000, b"\n\0d\0f\0");
    m.set(Gpr::Rsi, 0x8004);
    m.set(Gpr::Rcx, 3);
    assert_eq!(
        m.run(rep_outs(COM1, 2, AddressSize::Bits64)),
        Outcome::Resume
    );
    assert_eq!(m.platform.lines, ["fd"]);
    assert_eq!(m.get(Gpr::Rsi), 0x7FFE);
    assert_eq!(m.get(Gpr::Rcx), 0);
    // INSD downwards from an unclaimed port.
    m.set(Gpr::Rdi, 0x9008);
    m.set(Gpr::Rcx, 2);
    m.run(rep_ins(UNCLAIMED, 4, AddressSize::Bits64));
    let mut want = [0u8; 16];
    want[4..12].fill(0xFF);
    assert_eq!(m.ram(0x9000, 16), want, "0x9008 then 0x9004");
    assert_eq!(m.get(Gpr::Rdi), 0x9000);
}

#[test]
fn a_16_bit_address_size_counts_with_cx_and_wraps_si_inside_the_segment() {
    let mut m = Machine::real();
    m.vcpu.segments[3].base = 0x2_0000; // DS
    m.put(0x2_FFFF, b"a");
    m.put(0x2_0000, b"b\n");
    // Bits 63:16 of RCX and RSI are not the count's or the index's.
    m.set(Gpr::Rcx, 0xABCD_0000_0003);
    m.set(Gpr::Rsi, 0x1234_FFFF);
    assert_eq!(
        m.run(rep_outs(COM1, 1, AddressSize::Bits16)),
        Outcome::Resume
    );
    assert_eq!(m.platform.lines, ["ab"]);
    assert_eq!(m.get(Gpr::Rcx), 0xABCD_0000_0000);
    assert_eq!(m.get(Gpr::Rsi), 0x1234_0002, "SI wrapped from 0xffff to 0");
    assert_eq!(m.vcpu.rip, RIP + LEN);
}

#[test]
fn a_32_bit_address_size_in_64_bit_mode_uses_ecx_and_esi_and_zero_extends() {
    let mut m = Machine::long();
    m.put(0x8000, b"x\n");
    m.set(Gpr::Rcx, 0xFFFF_FFFF_0000_0002);
    m.set(Gpr::Rsi, 0xDEAD_0000_0000_8000);
    assert_eq!(
        m.run(rep_outs(COM1, 1, AddressSize::Bits32)),
        Outcome::Resume
    );
    assert_eq!(m.platform.lines, ["x"]);
    assert_eq!(m.get(Gpr::Rcx), 0);
    assert_eq!(m.get(Gpr::Rsi), 0x8002);
}

#[test]
fn outs_takes_the_override_segment_and_ins_always_writes_es() {
    // Protected mode: DS, ES and FS at different bases.
    let mut m = Machine::protected();
    m.vcpu.segments[0].base = 0x1_0000; // ES
    m.vcpu.segments[3].base = 0x2_0000; // DS
    m.vcpu.segments[4].base = 0x3_0000; // FS
    m.put(0x2_0100, b"ds\n");
    m.put(0x3_0100, b"fs\n");
    for (segment, line) in [(Segment::Ds, "ds"), (Segment::Fs, "fs")] {
        m.set(Gpr::Rsi, 0x100);
        m.set(Gpr::Rcx, 3);
        let io = string(
            IoDirection::Out,
            COM1,
            1,
            true,
            AddressSize::Bits32,
            segment,
        );
        m.run(io);
        assert_eq!(m.platform.lines.last().map(String::as_str), Some(line));
    }
    // INS: ES, whatever the exit says about a segment.
    m.set(Gpr::Rdi, 0x200);
    m.set(Gpr::Rcx, 1);
    let io = string(
        IoDirection::In,
        UNCLAIMED,
        1,
        true,
        AddressSize::Bits32,
        Segment::Fs,
    );
    m.run(io);
    assert_eq!(m.ram(0x1_0200, 1), [0xFF]);
    assert_eq!(m.ram(0x3_0200, 1), [0]);
}

#[test]
fn in_64_bit_mode_only_fs_and_gs_have_a_base() {
    let mut m = Machine::long();
    m.vcpu.segments[3].base = 0x5_0000; // DS: ignored
    m.vcpu.segments[5].base = 0x8000; // GS
    m.put(0x8010, b"gs\n");
    m.put(0x10, b"ds\n");
    m.set(Gpr::Rsi, 0x10);
    m.set(Gpr::Rcx, 3);
    m.run(string(
        IoDirection::Out,
        COM1,
        1,
        true,
        AddressSize::Bits64,
        Segment::Gs,
    ));
    m.set(Gpr::Rsi, 0x10);
    m.set(Gpr::Rcx, 3);
    m.run(rep_outs(COM1, 1, AddressSize::Bits64));
    assert_eq!(m.platform.lines, ["gs", "ds"]);
}

#[test]
fn a_large_count_runs_in_chunks_and_the_guest_reexecutes_the_rest() {
    let mut m = Machine::long();
    m.set(Gpr::Rdi, 0x1_0000);
    m.set(Gpr::Rcx, 1000);
    // One exit: one chunk, RIP stays for the rest.
    assert_eq!(
        m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits64)),
        Outcome::Resume
    );
    assert_eq!(m.vcpu.rip, RIP);
    assert_eq!(m.get(Gpr::Rcx), 1000 - CHUNK);
    assert_eq!(m.get(Gpr::Rdi), 0x1_0000 + CHUNK);
    assert_eq!(m.model.stats.io_reads_unclaimed, CHUNK);
    // The guest executes it again until it is done.
    let (outcome, exits) = m.run_to_end(rep_ins(UNCLAIMED, 1, AddressSize::Bits64));
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(exits, 3);
    assert_eq!(m.get(Gpr::Rcx), 0);
    assert_eq!(m.get(Gpr::Rdi), 0x1_0000 + 1000);
    assert_eq!(m.vcpu.rip, RIP + LEN);
    assert!(m.ram(0x1_0000, 1000).iter().all(|&b| b == 0xFF));
    assert_eq!(m.ram(0x1_0000 + 1000, 1), [0]);
}

#[test]
fn a_chunk_ends_an_sti_shadow_so_interrupts_come_in_between() {
    let mut m = Machine::long();
    m.vcpu.shadow = true;
    m.set(Gpr::Rdi, 0x1_0000);
    m.set(Gpr::Rcx, 1000);
    m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits64));
    assert_eq!(m.vcpu.rip, RIP);
    assert!(!m.vcpu.shadow);
}

#[test]
fn rep_outsb_into_an_unmapped_page_faults_with_the_iterations_before_it_done() {
    let mut m = Machine::long();
    m.set_pte(0x9, 0); // 0x9000..0xA000 not present
    m.put(0x8FFD, b"abc");
    m.set(Gpr::Rsi, 0x8FFD);
    m.set(Gpr::Rcx, 10);
    assert_eq!(
        m.run(rep_outs(COM1, 1, AddressSize::Bits64)),
        Outcome::Resume
    );
    // Not present (P = 0), a read (W = 0), supervisor (U = 0).
    assert_eq!(page_fault(&m), (0, 0x9000));
    assert_eq!(m.get(Gpr::Rcx), 7);
    assert_eq!(m.get(Gpr::Rsi), 0x9000);
    assert_eq!(m.vcpu.rip, RIP, "the fault is at the instruction");
    // The three bytes went out.
    m.devices.flush(&mut |l| m.platform.lines.push(l.into()));
    assert_eq!(m.platform.lines, ["abc"]);
}

#[test]
fn an_element_straddling_into_an_unmapped_page_faults_at_the_second_page() {
    let mut m = Machine::long();
    m.set_pte(0x9, 0);
    m.set(Gpr::Rdi, 0x8FFE);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(UNCLAIMED, 4, AddressSize::Bits64));
    // A write, not present.
    assert_eq!(page_fault(&m), (0b010, 0x9000));
    assert_eq!(m.ram(0x8FFE, 2), [0, 0], "nothing written before the fault");
    assert_eq!(m.get(Gpr::Rcx), 1);
    assert_eq!(m.get(Gpr::Rdi), 0x8FFE);
    assert_eq!(m.model.stats.io_reads_unclaimed, 0, "the port was not read");
}

#[test]
fn an_element_straddling_two_pages_goes_to_both_translations() {
    // Linear 0x8000 maps to physical 0xC000: a dword at 0x7FFE is split.
    let mut m = Machine::long();
    m.set_pte(0x8, 0xC000 | P | RW);
    m.set(Gpr::Rdi, 0x7FFE);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(UNCLAIMED, 4, AddressSize::Bits64));
    assert_eq!(m.ram(0x7FFE, 2), [0xFF, 0xFF]);
    assert_eq!(m.ram(0xC000, 3), [0xFF, 0xFF, 0]);
    assert_eq!(m.ram(0x8000, 1), [0]);
}

#[test]
fn ins_into_a_read_only_page_faults_with_cr0_wp_and_writes_without() {
    let mut m = Machine::long();
    m.set_pte(0x9, 0x9000 | P);
    m.set(Gpr::Rdi, 0x9000);
    m.set(Gpr::Rcx, 4);
    m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits64));
    // Present, a write, supervisor.
    assert_eq!(page_fault(&m), (0b011, 0x9000));
    assert_eq!(m.ram(0x9000, 1), [0]);
    // CR0.WP clear: the supervisor writes read-only pages.
    let mut m = Machine::long();
    m.vcpu.cr0 &= !CR0_WP;
    m.set_pte(0x9, 0x9000 | P);
    m.set(Gpr::Rdi, 0x9000);
    m.set(Gpr::Rcx, 4);
    m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits64));
    assert!(m.vcpu.injected.is_empty());
    assert_eq!(m.ram(0x9000, 4), [0xFF; 4]);
    // OUTS only reads: a read-only page is fine.
    let mut m = Machine::long();
    m.set_pte(0x9, 0x9000 | P);
    m.put(0x9000, b"r\n");
    m.set(Gpr::Rsi, 0x9000);
    m.set(Gpr::Rcx, 2);
    m.run(rep_outs(COM1, 1, AddressSize::Bits64));
    assert_eq!(m.platform.lines, ["r"]);
}

#[test]
fn user_mode_needs_user_pages_and_smap_keeps_the_kernel_out_of_them() {
    // CPL 3 on a supervisor page: #PF, present, user.
    let mut m = Machine::long();
    m.vcpu.segments[2].attributes |= 3 << 5;
    m.set_pte(0x9, 0x9000 | P | RW);
    m.set(Gpr::Rsi, 0x9000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_outs(UNCLAIMED, 1, AddressSize::Bits64));
    assert_eq!(page_fault(&m), (0b101, 0x9000));
    // CPL 3 writing a user read-only page: present, write, user (CR0.WP
    // does not matter for user accesses).
    let mut m = Machine::long();
    m.vcpu.cr0 &= !CR0_WP;
    m.vcpu.segments[2].attributes |= 3 << 5;
    m.set_pte(0x9, 0x9000 | P | US);
    m.set(Gpr::Rdi, 0x9000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits64));
    assert_eq!(page_fault(&m), (0b111, 0x9000));
    // SMAP: the kernel on a user page faults unless RFLAGS.AC is set.
    let mut m = Machine::long();
    m.vcpu.cr4 |= CR4_SMAP;
    m.set(Gpr::Rsi, 0x9000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_outs(UNCLAIMED, 1, AddressSize::Bits64));
    assert_eq!(page_fault(&m), (0b001, 0x9000));
    let mut m = Machine::long();
    m.vcpu.cr4 |= CR4_SMAP;
    m.vcpu.rflags |= AC;
    m.set(Gpr::Rsi, 0x9000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_outs(UNCLAIMED, 1, AddressSize::Bits64));
    assert!(m.vcpu.injected.is_empty());
}

#[test]
fn every_paging_mode_translates_and_faults() {
    for (name, mut m, unmap) in [
        ("32-bit", Machine::paged32(), PT + 9 * 4),
        ("PAE", Machine::pae(), PT + 9 * 8),
        ("4-level", Machine::long(), PT + 9 * 8),
    ] {
        // Linear 0x8000 maps to physical 0xB000.
        if name == "32-bit" {
            m.put32(PT + 8 * 4, (0xB000 | P | RW) as u32);
        } else {
            m.put64(PT + 8 * 8, 0xB000 | P | RW);
        }
        m.put(0xB000, b"paged\n");
        m.set(Gpr::Rsi, 0x8000);
        m.set(Gpr::Rcx, 6);
        let a = if name == "4-level" {
            AddressSize::Bits64
        } else {
            AddressSize::Bits32
        };
        m.run(rep_outs(COM1, 1, a));
        assert_eq!(m.platform.lines, ["paged"], "{name}");
        m.put(unmap, &[0; 8]);
        m.set(Gpr::Rdi, 0x9010);
        m.set(Gpr::Rcx, 2);
        m.run(rep_ins(UNCLAIMED, 2, a));
        assert_eq!(page_fault(&m), (0b010, 0x9010), "{name}");
    }
}

#[test]
fn a_non_canonical_address_in_64_bit_mode_is_gp_and_through_ss_is_ss() {
    let mut m = Machine::long();
    m.set(Gpr::Rsi, 0x0000_8000_0000_0000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_outs(COM1, 1, AddressSize::Bits64));
    assert_eq!(only_exception(&m), (13, Some(0)));
    assert_eq!(m.vcpu.rip, RIP);
    let mut m = Machine::long();
    m.set(Gpr::Rsi, 0x0000_8000_0000_0000);
    m.set(Gpr::Rcx, 1);
    m.run(string(
        IoDirection::Out,
        COM1,
        1,
        true,
        AddressSize::Bits64,
        Segment::Ss,
    ));
    assert_eq!(only_exception(&m), (12, Some(0)));
    // The last byte of an element counts too.
    let mut m = Machine::long();
    m.set(Gpr::Rdi, 0x0000_7FFF_FFFF_FFFE);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(UNCLAIMED, 4, AddressSize::Bits64));
    assert_eq!(only_exception(&m), (13, Some(0)));
}

#[test]
fn segment_limits_and_types_are_checked_in_protected_mode() {
    // A DS limit of 0x1FF: the third byte past 0x1FE faults, two went out.
    let mut m = Machine::protected();
    m.vcpu.segments[3].limit = 0x1FF;
    m.put(0x1FE, b"ok");
    m.set(Gpr::Rsi, 0x1FE);
    m.set(Gpr::Rcx, 5);
    m.run(rep_outs(UNCLAIMED, 1, AddressSize::Bits32));
    assert_eq!(only_exception(&m), (13, Some(0)));
    assert_eq!(m.get(Gpr::Rcx), 3);
    assert_eq!(m.get(Gpr::Rsi), 0x200);
    assert_eq!(m.model.stats.io_writes_ignored, 2);
    // Through SS: #SS.
    let mut m = Machine::protected();
    m.vcpu.segments[2].limit = 0xFF;
    m.set(Gpr::Rsi, 0x100);
    m.set(Gpr::Rcx, 1);
    m.run(string(
        IoDirection::Out,
        UNCLAIMED,
        1,
        true,
        AddressSize::Bits32,
        Segment::Ss,
    ));
    assert_eq!(only_exception(&m), (12, Some(0)));
    // An expand-down ES (type 0x7): offsets above the limit only.
    let mut m = Machine::protected();
    m.vcpu.segments[0].attributes = 0xC097;
    m.vcpu.segments[0].limit = 0xFFF;
    m.set(Gpr::Rdi, 0x1000);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits32));
    assert!(m.vcpu.injected.is_empty());
    m.set(Gpr::Rdi, 0xFFF);
    m.set(Gpr::Rcx, 1);
    m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits32));
    assert_eq!(only_exception(&m), (13, Some(0)));
    // INS into a read-only data segment (type 0x1) or a code segment;
    // OUTS from an execute-only code segment (CS override, type 0xB
    // readable works, 0x9 does not).
    for (seg, attributes, direction) in [
        (0usize, 0xC091, IoDirection::In),
        (0, 0xC09B, IoDirection::In),
        (1, 0xC099, IoDirection::Out),
        (0, 0x1_0000, IoDirection::In),
    ] {
        let mut m = Machine::protected();
        m.vcpu.segments[seg].attributes = attributes;
        m.set(Gpr::Rcx, 1);
        let io = string(
            direction,
            UNCLAIMED,
            1,
            true,
            AddressSize::Bits32,
            Segment::Cs,
        );
        m.run(io);
        assert_eq!(only_exception(&m), (13, Some(0)), "{attributes:#x}");
    }
    let mut m = Machine::protected();
    m.vcpu.segments[1].attributes = 0xC09B;
    m.put(0x300, b"c\n");
    m.set(Gpr::Rsi, 0x300);
    m.set(Gpr::Rcx, 2);
    m.run(string(
        IoDirection::Out,
        COM1,
        1,
        true,
        AddressSize::Bits32,
        Segment::Cs,
    ));
    assert_eq!(m.platform.lines, ["c"]);
}

#[test]
fn real_mode_faults_carry_no_error_code() {
    let mut m = Machine::real();
    m.set(Gpr::Rsi, 0xFFFF);
    m.set(Gpr::Rcx, 1);
    m.run(rep_outs(UNCLAIMED, 2, AddressSize::Bits16));
    assert_eq!(only_exception(&m), (13, None));
}

#[test]
fn a_device_reset_mid_string_stops_the_guest_with_it() {
    let mut m = Machine::long();
    m.put(0x8000, &[0x06, 0x06]);
    m.set(Gpr::Rsi, 0x8000);
    m.set(Gpr::Rcx, 2);
    let outcome = m.run(rep_outs(RESET_CONTROL_PORT, 1, AddressSize::Bits64));
    assert_eq!(outcome, Outcome::stop(StopReason::Reset));
    assert_eq!(m.get(Gpr::Rcx), 1);
}

#[test]
fn memory_that_is_not_ram_stops_the_guest_with_the_reason() {
    // Linear 0x9000 maps beyond RAM.
    let mut m = Machine::long();
    m.set_pte(0x9, 0x4000_0000 | P | RW);
    m.set(Gpr::Rsi, 0x9000);
    m.set(Gpr::Rcx, 1);
    match m.run(rep_outs(COM1, 1, AddressSize::Bits64)) {
        Outcome::Stop(reason) => {
            assert!(matches!(*reason, StopReason::StringIo { .. }));
            assert_eq!(
                reason.to_string(),
                "REP OUTS 1 byte to port 0x3f8 at RIP 0x7000 not emulated: its memory operand at \
                 linear 0x9000 is at guest-physical 0x40000000, which is not RAM (string I/O to \
                 device memory is not emulated)"
            );
        }
        other => panic!("{other:?}"),
    }
    // A page table outside RAM.
    let mut m = Machine::long();
    m.put64(0x3000, 0x8000_0000 | P | RW);
    m.set(Gpr::Rdi, 0x9000);
    m.set(Gpr::Rcx, 1);
    assert!(matches!(
        m.run(rep_ins(UNCLAIMED, 1, AddressSize::Bits64)),
        Outcome::Stop(_)
    ));
}

#[test]
fn a_backend_failure_is_reported_not_panicked() {
    let mut m = Machine::long();
    m.vcpu.fail = true;
    assert!(matches!(
        m.run(rep_outs(COM1, 1, AddressSize::Bits64)),
        Outcome::Stop(r) if matches!(*r, StopReason::Backend(_))
    ));
}

fn any_segment() -> impl Strategy<Value = Segment> {
    prop::sample::select(vec![
        Segment::Es,
        Segment::Cs,
        Segment::Ss,
        Segment::Ds,
        Segment::Fs,
        Segment::Gs,
        Segment::Ldtr,
        Segment::Tr,
    ])
}

fn any_address_size() -> impl Strategy<Value = AddressSize> {
    prop::sample::select(vec![
        AddressSize::Bits16,
        AddressSize::Bits32,
        AddressSize::Bits64,
    ])
}

proptest! {
    /// Whatever the registers, segments, paging and page tables (random
    /// bytes in the first 16 KiB, where CR3 points), a string I/O exit
    /// ends in an outcome, RIP either stays or moves past the instruction,
    /// and no more than a chunk of elements moves.
    #[test]
    fn string_io_with_anything_never_panics(
        gprs in any::<[u64; 16]>(),
        rflags in any::<u64>(),
        cr0 in any::<u64>(),
        cr3 in 0u64..0x4000,
        cr4 in any::<u64>(),
        efer in any::<u64>(),
        segs in any::<[(u64, u32, u32); 6]>(),
        ram in prop::collection::vec(any::<u8>(), 0x4000),
        port in prop::sample::select(vec![COM1, 0x3FD, UNCLAIMED, PCI_ADDRESS, 0x70, 0x20]),
        size in prop::sample::select(vec![1u8, 2, 4]),
        out in any::<bool>(),
        rep in any::<bool>(),
        address_size in any_address_size(),
        segment in any_segment(),
    ) {
        let mut m = Machine::long();
        m.vcpu.gprs = gprs;
        m.vcpu.rflags = rflags;
        m.vcpu.cr0 = cr0;
        m.vcpu.cr3 = cr3;
        m.vcpu.cr4 = cr4;
        m.vcpu.efer = efer;
        for (s, (base, limit, attributes)) in m.vcpu.segments.iter_mut().zip(segs) {
            *s = SegmentState { selector: 0, base, limit, attributes };
        }
        m.platform.ram[..0x4000].copy_from_slice(&ram);
        let direction = if out { IoDirection::Out } else { IoDirection::In };
        let io = string(direction, port, size, rep, address_size, segment);
        let outcome = m.run(io);
        if let Outcome::Stop(reason) = &outcome {
            prop_assert!(!reason.to_string().is_empty());
        }
        let rip = m.vcpu.rip;
        let past = (RIP + LEN) & 0xFFFF_FFFF;
        prop_assert!(rip == RIP || rip == past, "RIP {rip:#x}");
        let moved = m.model.stats.io_writes_ignored + m.model.stats.io_reads_unclaimed;
        prop_assert!(moved <= CHUNK);
        prop_assert!(m.vcpu.injected.len() <= 1);
    }
}
