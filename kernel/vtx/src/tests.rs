//! Every exit path through the VT-x backend, end to end: a fake VMCS
//! decoded into the neutral exit, handled by the neutral handlers through
//! [`VmxVcpu`], with a fake platform.

use std::collections::HashMap;
use std::string::ToString;
use std::vec::Vec;

use vmx::vmcs::{FieldEncoding, FieldType};

use super::*;
use vcpu::exit::{handle_exit, xcr0_valid, ExitKind, Outcome, VcpuModel, RESET_CONTROL_PORT};
use vcpu::fake::FakePlatform;
use vcpu::hypercall;
use vcpu::stop::StopReason;
use vcpu::vm::VmDevices;

mod facts;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;

/// A VMCS in a hash map (fields never written read as 0).
#[derive(Default)]
struct FakeVmcs {
    values: HashMap<u32, u64>,
}

impl VmcsAccess for FakeVmcs {
    fn vmread(&self, field: FieldEncoding) -> Result<u64, VmFail> {
        Ok(self.values.get(&field.bits()).copied().unwrap_or(0))
    }

    fn vmwrite(&mut self, field: FieldEncoding, value: u64) -> Result<(), VmFail> {
        assert_ne!(
            field.field_type(),
            FieldType::ReadOnly,
            "{field} is read-only"
        );
        self.values.insert(field.bits(), value);
        Ok(())
    }
}

impl FakeVmcs {
    fn set(&mut self, field: FieldEncoding, value: u64) {
        self.values.insert(field.bits(), value);
    }

    fn get(&self, field: FieldEncoding) -> u64 {
        self.values.get(&field.bits()).copied().unwrap_or(0)
    }
}

const RIP: u64 = 0x10_0000;
const CR0_PE_NE_ET: u64 = 0x31;

/// A vCPU that exited: VMCS, GPRs, model, platform, fixed CR bits, and
/// its VM's devices.
type Exited = (
    FakeVmcs,
    GuestRegisters,
    VcpuModel,
    FakePlatform,
    CrPolicy,
    VmDevices,
);

/// A 64-bit guest at CPL 0 about to exit with `reason`.
fn setup(reason: u32, qualification: u64, len: u32) -> Exited {
    let mut vmcs = FakeVmcs::default();
    vmcs.set(ReadOnly32::ExitReason.encoding(), u64::from(reason));
    vmcs.set(ReadOnlyNatural::ExitQualification.encoding(), qualification);
    vmcs.set(ReadOnly32::ExitInstructionLength.encoding(), u64::from(len));
    vmcs.set(GuestNatural::Rip.encoding(), RIP);
    vmcs.set(GuestNatural::Cr0.encoding(), CR0_PE_NE_ET | CR0_PG);
    vmcs.set(Guest64::Efer.encoding(), EFER_LME | EFER_LMA);
    vmcs.set(Guest32::CsAccessRights.encoding(), 0xA09B);
    vmcs.set(Guest32::SsAccessRights.encoding(), 0xC093);
    vmcs.set(GuestNatural::Rflags.encoding(), 0x2);
    let fixed0 = FixedBits {
        fixed0: 0x8000_0021,
        fixed1: 0xFFFF_FFFF,
    };
    let fixed4 = FixedBits {
        fixed0: 0x2000,
        fixed1: 0x0037_27FF,
    };
    let cr = CrPolicy {
        cr0_fixed: fixed0,
        cr4_fixed: fixed4,
    };
    // The guest's view starts as the hardware's.
    vmcs.set(
        ControlNatural::Cr0ReadShadow.encoding(),
        CR0_PE_NE_ET | CR0_PG,
    );
    vmcs.set(
        ControlNatural::Cr0GuestHostMask.encoding(),
        cr.cr0_host_mask(),
    );
    let platform = FakePlatform {
        ram: vec![0; 0x20_0000],
        ..FakePlatform::default()
    };
    (
        vmcs,
        GuestRegisters::new(),
        VcpuModel::new(0, 1, 0),
        platform,
        cr,
        VmDevices::new(1_000_000_000, vcpu::vm::WallClock::default()),
    )
}

/// Decodes the exit on the fake VMCS and handles it, as the run loop does.
fn run(v: &mut Exited) -> Outcome {
    let exit = match decode_exit(&mut v.0) {
        Ok(exit) => exit,
        Err(e) => return Outcome::stop(StopReason::Backend(e.to_string())),
    };
    let mut vcpu = VmxVcpu {
        vmcs: &mut v.0,
        regs: &mut v.1,
        cr: &v.4,
        cr2: None,
    };
    handle_exit(&exit, &mut vcpu, &mut v.2, &mut v.5, &mut v.3)
}

/// The reason of a stop outcome (any other outcome fails the test).
fn stop_reason(outcome: Outcome) -> StopReason {
    match outcome {
        Outcome::Stop(reason) => *reason,
        other => panic!("expected a stop, got {other:?}"),
    }
}

fn injected(vmcs: &FakeVmcs) -> (u64, Option<u64>) {
    let info = vmcs.get(Control32::EntryInterruptionInfo.encoding());
    let code =
        (info & (1 << 11) != 0).then(|| vmcs.get(Control32::EntryExceptionErrorCode.encoding()));
    (info, code)
}

#[test]
fn cpuid_gives_the_guest_view_and_skips_the_instruction() {
    let mut v = setup(10, 0, 2);
    v.1.set_rax(0x4000_0000);
    assert_eq!(run(&mut v), Outcome::Resume);
    let sig: Vec<u8> = [v.1.rbx(), v.1.rcx(), v.1.rdx()]
        .iter()
        .flat_map(|r| (*r as u32).to_le_bytes())
        .collect();
    assert_eq!(sig, b"FerrovisorVM");
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 2);

    let mut v = setup(10, 0, 2);
    v.1.set_rax(1);
    run(&mut v);
    assert_eq!(v.1.rcx() & (1 << 5), 0, "VMX must be hidden");
    assert_ne!(v.1.rcx() & (1 << 31), 0, "the hypervisor bit must be set");
    assert_eq!(v.2.stats.cpuid, 1);
}

#[test]
fn skipping_clears_the_sti_shadow() {
    let mut v = setup(10, 0, 2);
    v.0.set(Guest32::InterruptibilityState.encoding(), 0b1001);
    run(&mut v);
    assert_eq!(v.0.get(Guest32::InterruptibilityState.encoding()), 0b1000);
}

/// OUT of `value` to `port`, `size` bytes (qualification per SDM Table 28-5).
fn out(port: u16, size: u64, value: u64) -> Exited {
    let size_code = match size {
        1 => 0,
        2 => 1,
        _ => 3,
    };
    let mut v = setup(30, (u64::from(port) << 16) | size_code, 1);
    v.1.set_rax(value);
    v
}

#[test]
fn com1_output_becomes_guest_lines() {
    let mut v = out(0x3F8, 1, u64::from(b'h'));
    run(&mut v);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 1);
    assert!(v.3.lines.is_empty(), "no line before its end");
    v.1.set_rax(u64::from(b'i'));
    v.0.set(GuestNatural::Rip.encoding(), RIP);
    run(&mut v);
    v.1.set_rax(u64::from(b'\n'));
    run(&mut v);
    assert_eq!(v.3.lines, ["hi"]);
}

#[test]
fn com1_reads_come_from_the_model_and_other_ports_read_all_ones() {
    // IN AL, DX from LSR: transmitter empty.
    let mut v = setup(30, (0x3FDu64 << 16) | (1 << 3), 1);
    v.1.set_rax(0xAAAA_0000);
    run(&mut v);
    assert_eq!(v.1.rax() & 0xFF, 0x60);
    assert_eq!(
        v.1.rax() & !0xFF,
        0xAAAA_0000,
        "IN AL keeps the rest of RAX"
    );
    // IN EAX from a port with no device.
    let mut v = setup(30, (0x1234u64 << 16) | (1 << 3) | 3, 1);
    v.1.set_rax(0xDEAD_BEEF_0000_0000);
    run(&mut v);
    assert_eq!(v.1.rax(), 0xFFFF_FFFF);
    assert_eq!(v.2.stats.io_reads_unclaimed, 1);
}

#[test]
fn the_reset_port_resets_the_guest_and_an_unclaimed_port_is_ignored_and_counted() {
    // RST_CPU at 0xCF9: the guest's own reset, nothing else's.
    let mut v = out(RESET_CONTROL_PORT, 1, 0x06);
    assert_eq!(run(&mut v), Outcome::stop(StopReason::Reset));
    assert_eq!(v.2.stats.io_writes_ignored, 0);
    // Without RST_CPU the register only keeps the bits.
    let mut v = out(RESET_CONTROL_PORT, 1, 0x02);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 1);
    // A port nobody decodes.
    let mut v = out(0x2E8, 1, 0x55);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(v.2.stats.io_writes_ignored, 1);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 1);
}

#[test]
fn rep_outsb_is_decoded_with_its_address_size_and_segment_and_emulated() {
    use vmx::vmcs::ReadOnly32;
    // REP OUTSB to COM1 with a 32-bit address size and an FS override
    // (instruction information: address size 1 in bits 9:7, FS = 4 in
    // bits 17:15).
    let mut v = setup(30, (0x3F8u64 << 16) | (1 << 4) | (1 << 5), 2);
    v.0.set(
        ReadOnly32::ExitInstructionInfo.encoding(),
        (1 << 7) | (4 << 15),
    );
    v.0.set(GuestNatural::FsBase.encoding(), 0x1000);
    // 4-level paging identity-mapping the first 2 MiB.
    v.0.set(GuestNatural::Cr3.encoding(), 0x1_0000);
    v.3.ram[0x1_0000..0x1_0008].copy_from_slice(&0x1_1007u64.to_le_bytes());
    v.3.ram[0x1_1000..0x1_1008].copy_from_slice(&0x1_2007u64.to_le_bytes());
    v.3.ram[0x1_2000..0x1_2008].copy_from_slice(&0x87u64.to_le_bytes());
    v.3.ram[0x1100..0x1104].copy_from_slice(b"fs!\n");
    v.1.set(vmx::exit::Gpr::Rsi, 0xFFFF_0000_0000_0100);
    v.1.set_rcx(4);
    assert_eq!(
        decode_exit(&mut v.0),
        Ok(Exit::Io(IoAccess {
            port: 0x3F8,
            size: 1,
            direction: IoDirection::Out,
            string: true,
            rep: true,
            address_size: AddressSize::Bits32,
            segment: Segment::Fs,
        }))
    );
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(v.3.lines, ["fs!"]);
    assert_eq!(
        v.1.get(vmx::exit::Gpr::Rsi),
        Some(0x104),
        "ESI, zero-extended"
    );
    assert_eq!(v.1.rcx(), 0);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 2);
}

#[test]
fn undefined_string_instruction_information_is_an_unhandled_exit() {
    use vmx::vmcs::ReadOnly32;
    let mut v = setup(30, (0x3F8u64 << 16) | (1 << 4), 1);
    v.0.set(ReadOnly32::ExitInstructionInfo.encoding(), 3 << 7);
    assert!(matches!(
        decode_exit(&mut v.0),
        Ok(Exit::Unknown { reason: 30, .. })
    ));
    assert_eq!(
        string_operands(6 << 15, IoDirection::Out),
        None,
        "segment 6 is not defined"
    );
    assert_eq!(
        string_operands((2 << 7) | (6 << 15), IoDirection::In),
        Some((AddressSize::Bits64, Segment::Es)),
        "INS: the segment bits are undefined, ES is used"
    );
}

#[test]
fn an_injected_page_fault_leaves_cr2_for_the_caller_to_load() {
    use vcpu::access::Event;
    let mut v = setup(30, 0, 1);
    let mut vcpu = VmxVcpu {
        vmcs: &mut v.0,
        regs: &mut v.1,
        cr: &v.4,
        cr2: None,
    };
    vcpu.set_cr2(0xDEAD_B000).unwrap();
    vcpu.inject(Event::Exception {
        vector: 14,
        error_code: Some(2),
    })
    .unwrap();
    assert_eq!(vcpu.cr2, Some(0xDEAD_B000));
}

#[test]
fn hypercalls() {
    // exit(3)
    let mut v = setup(18, 0, 3);
    v.1.set_rax(hypercall::EXIT);
    v.1.set_rbx(3);
    assert_eq!(run(&mut v), Outcome::stop(StopReason::Exited { code: 3 }));
    // RAX = 0, the number other hypervisors' test programs use by habit
    // (and ABI version 1's exit): unknown, the guest goes on after it.
    let mut v = setup(18, 0, 3);
    v.1.set_rax(0);
    v.1.set_rbx(3);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(v.1.rax(), hypercall::UNKNOWN_CALL);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 3);
    // print from RAM
    let mut v = setup(18, 0, 3);
    v.3.ram[0x1000..0x1006].copy_from_slice(b"hello\n");
    v.1.set_rax(hypercall::PRINT);
    v.1.set_rbx(0x1000);
    v.1.set_rcx(6);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(v.3.lines, ["hello"]);
    assert_eq!(v.1.rax(), 0);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 3);
    // print past RAM
    let mut v = setup(18, 0, 3);
    v.1.set_rax(hypercall::PRINT);
    v.1.set_rbx(0x1F_FFF0);
    v.1.set_rcx(0x20);
    run(&mut v);
    assert_eq!(v.1.rax(), hypercall::BAD_ARGUMENT);
    // unknown call
    let mut v = setup(18, 0, 3);
    v.1.set_rax(77);
    run(&mut v);
    assert_eq!(v.1.rax(), hypercall::UNKNOWN_CALL);
}

#[test]
fn a_hypercall_from_user_mode_is_ud() {
    let mut v = setup(18, 0, 3);
    v.0.set(Guest32::SsAccessRights.encoding(), 0xC0F3); // DPL 3
    v.1.set_rbx(0);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(injected(&v.0), ((1 << 31) | (3 << 8) | 6, None));
    assert_eq!(
        v.0.get(GuestNatural::Rip.encoding()),
        RIP,
        "a fault does not skip"
    );
}

#[test]
fn hlt_blocks_or_stops() {
    let mut v = setup(12, 0, 1);
    v.0.set(GuestNatural::Rflags.encoding(), 0x202);
    assert_eq!(run(&mut v), Outcome::Halted);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 1);
    let mut v = setup(12, 0, 1);
    assert_eq!(
        run(&mut v),
        Outcome::stop(StopReason::HaltedWithInterruptsOff { rip: RIP })
    );
}

#[test]
fn a_pause_loop_exit_yields_at_the_pause() {
    // Exit reason 40, instruction length 2 (F3 90): PAUSE-loop exiting.
    let mut v = setup(40, 0, 2);
    assert_eq!(decode_exit(&mut v.0).unwrap(), Exit::Pause);
    assert_eq!(run(&mut v), Outcome::Yield);
    assert_eq!(
        v.0.get(GuestNatural::Rip.encoding()),
        RIP,
        "the guest resumes at the PAUSE"
    );
    assert_eq!(injected(&v.0).0, 0, "nothing is injected");
    let mut table = [0u64; ExitKind::COUNT];
    let mut other = 0;
    v.2.tally.drain_into(&mut table, &mut other);
    assert_eq!(table[ExitKind::Pause.index()], 1);
    assert_eq!(other, 0);
}

#[test]
fn host_msrs_are_gp_with_an_error_code_in_protected_mode_only() {
    let mut v = setup(31, 0, 2);
    v.1.set_rcx(0x3A);
    run(&mut v);
    assert_eq!(
        injected(&v.0),
        ((1 << 31) | (1 << 11) | (3 << 8) | 13, Some(0))
    );
    // Real mode: no error code may be delivered.
    let mut v = setup(31, 0, 2);
    v.0.set(GuestNatural::Cr0.encoding(), 0x30);
    v.1.set_rcx(0x480);
    run(&mut v);
    assert_eq!(injected(&v.0), ((1 << 31) | (3 << 8) | 13, None));
    // An emulated MSR reads through.
    let mut v = setup(31, 0, 2);
    v.1.set_rcx(0x1B);
    run(&mut v);
    assert_eq!(v.1.rax(), 0xFEE0_0900);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 2);
}

#[test]
fn vmx_instructions_are_ud() {
    for reason in [19u32, 20, 21, 22, 23, 24, 25, 26, 27, 50, 53, 59] {
        let mut v = setup(reason, 0, 4);
        assert_eq!(run(&mut v), Outcome::Resume);
        assert_eq!(
            injected(&v.0).0,
            (1 << 31) | (3 << 8) | 6,
            "reason {reason}"
        );
    }
}

#[test]
fn xsetbv_is_checked() {
    let mut v = setup(55, 0, 3);
    v.1.set_rax(0b111);
    run(&mut v);
    assert_eq!(v.3.xcr0, Some(0b111));
    assert_eq!(v.2.xcr0, 0b111);
    let mut v = setup(55, 0, 3);
    v.1.set_rax(0b101); // AVX without SSE
    run(&mut v);
    assert_eq!(v.3.xcr0, None);
    assert_eq!(injected(&v.0).0 & 0xFF, 13);
    assert!(xcr0_valid(1, 1));
    assert!(!xcr0_valid(0, 7));
    assert!(!xcr0_valid(0b1001, 0xFF)); // half of MPX
    assert!(!xcr0_valid(0b1110_0011, 0xFF)); // AVX-512 without AVX
    assert!(!xcr0_valid(0b1_0000_0011, 0b11)); // unsupported bit
}

#[test]
fn cr4_vmxe_is_gp_and_other_writes_keep_the_fixed_bits() {
    // MOV to CR4 from RAX (qualification: CR 4, type 0, register 0).
    let mut v = setup(28, 4, 3);
    v.1.set_rax(1 << 13);
    run(&mut v);
    assert_eq!(injected(&v.0).0 & 0xFF, 13);
    let mut v = setup(28, 4, 3);
    v.1.set_rax(0x20 | (1 << 7)); // PAE | PGE
    run(&mut v);
    assert_eq!(v.0.get(ControlNatural::Cr4ReadShadow.encoding()), 0xA0);
    assert_eq!(v.0.get(GuestNatural::Cr4.encoding()), 0xA0 | 0x2000);
    assert_eq!(v.3.flushes, 1);
}

#[test]
fn cr0_writes_keep_ne_and_switch_long_mode() {
    // Paging off to on with EFER.LME and CR4.PAE: LMA and the entry
    // control follow; ET reads 1 whatever the guest writes.
    let mut v = setup(28, 0, 3);
    v.0.set(GuestNatural::Cr0.encoding(), CR0_PE_NE_ET);
    v.0.set(GuestNatural::Cr4.encoding(), CR4_PAE | 0x2000);
    v.0.set(Guest64::Efer.encoding(), EFER_LME);
    v.0.set(Guest32::CsAccessRights.encoding(), 0xC09B);
    v.1.set_rax(CR0_PE | CR0_PG);
    run(&mut v);
    assert_eq!(
        v.0.get(ControlNatural::Cr0ReadShadow.encoding()),
        CR0_PE | CR0_PG | CR0_ET
    );
    assert_eq!(
        v.0.get(GuestNatural::Cr0.encoding()),
        CR0_PE | CR0_PG | CR0_ET | 0x20
    );
    assert_ne!(v.0.get(Guest64::Efer.encoding()) & EFER_LMA, 0);
    assert_ne!(
        v.0.get(Control32::EntryControls.encoding()) & u64::from(ENTRY_IA32E),
        0
    );
    // PG without PE is #GP.
    let mut v = setup(28, 0, 3);
    v.1.set_rax(CR0_PG);
    run(&mut v);
    assert_eq!(injected(&v.0).0 & 0xFF, 13);
}

#[test]
fn ept_violation_outside_ram_stops_with_address_access_and_rip() {
    let mut v = setup(48, 0b1010_0010, 0);
    v.0.set(ReadOnly64::GuestPhysicalAddress.encoding(), 0x1000_0000);
    match stop_reason(run(&mut v)) {
        reason @ StopReason::MemoryFault { .. } => {
            let text = reason.to_string();
            assert!(
                text.starts_with("write at guest-physical 0x10000000 outside its RAM (0x200000 bytes) at RIP 0x100000"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_short_decoding_of_instruction_exits_is_the_full_one() {
    // IN AL,0x61; OUT DX,AL to 0x3F8; IN EAX,DX from 0xCFC; a REP prefix
    // on a plain OUT; OUTSB (the full path: its address size and segment
    // are elsewhere); a size code the SDM leaves undefined; HLT, VMCALL,
    // RDMSR, WRMSR, the interrupt window.
    let cases: [(u32, u64); 11] = [
        (30, 0x0061_0048),
        (30, 0x03F8_0000),
        (30, 0x0CFC_000B),
        (30, 0x03F8_0020),
        (30, 0x03F8_0010),
        (30, 0x03F8_0002),
        (12, 0),
        (18, 0),
        (31, 0),
        (32, 0),
        (7, 0),
    ];
    for (reason, qualification) in cases {
        let mut vmcs = FakeVmcs::default();
        vmcs.set(ReadOnly32::ExitReason.encoding(), u64::from(reason));
        vmcs.set(ReadOnlyNatural::ExitQualification.encoding(), qualification);
        // For OUTS: a 16-bit address size, DS.
        vmcs.set(ReadOnly32::ExitInstructionInfo.encoding(), 3 << 15);
        let short = decode_exit(&mut vmcs).unwrap();
        let full = decode_other(&mut vmcs, reason).unwrap();
        assert_eq!(
            short, full,
            "reason {reason}, qualification {qualification:#x}"
        );
    }
}

#[test]
fn apic_access_exits_are_an_eoi_or_the_access_the_page_would_fault() {
    // A data write at the EOI register: the value is not needed.
    assert_eq!(apic_access(0x10B0), Exit::ApicEoi);
    let fault = |q: u64| apic_access(q).nested_fault().unwrap();
    // Any other write (the ICR, here), a read, a fetch.
    let icr = fault(0x1300);
    assert_eq!(icr.gpa, GuestPhysAddr::new(0xFEE0_0300));
    assert_eq!((icr.read, icr.write, icr.fetch), (false, true, false));
    let id = fault(0x0020);
    assert_eq!(id.gpa, GuestPhysAddr::new(0xFEE0_0020));
    assert_eq!((id.read, id.write, id.fetch), (true, false, false));
    let eoi_read = fault(0x00B0);
    assert_eq!((eoi_read.read, eoi_read.write), (true, false));
    let fetch = fault(0x2000);
    assert_eq!((fetch.read, fetch.write, fetch.fetch), (false, false, true));
    // An unaligned write next to EOI is not an EOI.
    assert_eq!(fault(0x10B1).gpa, GuestPhysAddr::new(0xFEE0_00B1));
    // During event delivery, or by guest-physical address: reads.
    for q in [0x30B0, 0xA0B0, 0xF0B0] {
        let f = fault(q);
        assert_eq!((f.read, f.write, f.fetch), (true, false, false), "{q:#x}");
    }
    // Decoded from the VMCS, with the instruction skipped by its length:
    // nothing else of the guest is read.
    let mut v = setup(44, 0x10B0, 3);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP + 3);
    // An access during event delivery (an external interrupt, vector
    // 0x30, cut short) takes the full decoding, which sets the event up
    // again for the next entry; an EOI write cannot be one.
    let entry_info = Control32::EntryInterruptionInfo.encoding();
    for (qualification, reinjected) in [(0x30B0, true), (0x10B0, false)] {
        let mut vmcs = FakeVmcs::default();
        vmcs.set(ReadOnly32::ExitReason.encoding(), 44);
        vmcs.set(ReadOnlyNatural::ExitQualification.encoding(), qualification);
        vmcs.set(ReadOnly32::IdtVectoringInfo.encoding(), 0x8000_0030);
        decode_exit(&mut vmcs).unwrap();
        assert_eq!(vmcs.get(entry_info) != 0, reinjected, "{qualification:#x}");
    }
}

#[test]
fn triple_fault_entry_failure_and_unknown_exits_stop_the_guest() {
    let mut v = setup(2, 0, 0);
    v.1.set_rax(0x1234);
    match stop_reason(run(&mut v)) {
        reason @ StopReason::TripleFault(_) => {
            let text = reason.to_string();
            assert!(text.starts_with("triple fault: RIP 0x100000"), "{text}");
            assert!(text.contains("RAX 0x1234"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let mut v = setup(0x8000_0021, 0, 0);
    assert!(matches!(
        stop_reason(run(&mut v)),
        StopReason::EntryFailed(_)
    ));
    let mut v = setup(0xFFFF, 0x55, 0);
    assert_eq!(
        run(&mut v),
        Outcome::stop(StopReason::UnhandledExit {
            reason: 0xFFFF,
            name: ExitReason::Unknown(0xFFFF).name(),
            qualification: 0x55,
            rip: RIP
        })
    );
    let mut v = setup(52, 0, 0);
    assert_eq!(run(&mut v), Outcome::Preempted);
    // An external interrupt is the host's: the caller handles it.
    let mut v = setup(1, 0, 0);
    assert_eq!(run(&mut v), Outcome::HostInterrupt);
    assert_eq!(v.2.stats.host_events, 1);
}

#[test]
fn exits_are_tallied_by_kind_and_drained_once() {
    let mut v = setup(1, 0, 0);
    run(&mut v);
    run(&mut v);
    let mut v2 = setup(52, 0, 0);
    run(&mut v2);
    v.2.tally.count(ExitKind::SliceEnd);
    let external = ExitKind::ExternalInterrupt.index();
    let slice = ExitKind::SliceEnd.index();
    // A table shorter than the kinds: the ones past its end go to `other`.
    let mut table = [0u64; 10];
    assert!(slice >= table.len() && external < table.len());
    let mut other = 5;
    v.2.tally.drain_into(&mut table, &mut other);
    assert_eq!((table[external], other), (2, 6));
    assert_eq!(table.iter().sum::<u64>(), 2);
    // Drained: nothing is added twice.
    v.2.tally.drain_into(&mut table, &mut other);
    assert_eq!((table[external], other), (2, 6));
    let mut full = [0u64; ExitKind::COUNT];
    v2.2.tally.drain_into(&mut full, &mut other);
    assert_eq!(full[slice], 1);
    assert_eq!(ExitKind::from_index(slice), Some(ExitKind::SliceEnd));
}

#[test]
fn paging_on_with_lme_and_no_pae_is_gp_not_a_failed_entry() {
    // The case: it used to reach VM entry as "invalid guest state".
    let mut v = setup(28, 0, 3);
    v.0.set(GuestNatural::Cr0.encoding(), CR0_PE_NE_ET);
    v.0.set(ControlNatural::Cr0ReadShadow.encoding(), CR0_PE_NE_ET);
    v.0.set(GuestNatural::Cr4.encoding(), 0x2000);
    v.0.set(Guest64::Efer.encoding(), EFER_LME);
    v.0.set(
        Control32::EntryControls.encoding(),
        0x11FF & !u64::from(ENTRY_IA32E),
    );
    v.0.set(Guest32::CsAccessRights.encoding(), 0xC09B);
    v.1.set_rax(CR0_PE | CR0_PG);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(injected(&v.0), (0x8000_0B0D, Some(0)));
    assert_eq!(v.0.get(GuestNatural::Cr0.encoding()), CR0_PE_NE_ET);
    assert_eq!(v.0.get(Guest64::Efer.encoding()), EFER_LME);
    assert_eq!(
        v.0.get(Control32::EntryControls.encoding()) & u64::from(ENTRY_IA32E),
        0
    );
    assert_eq!(v.0.get(GuestNatural::Rip.encoding()), RIP);
}

#[test]
fn entering_pae_paging_writes_the_guest_pdpte_fields() {
    let mut v = setup(28, 0, 3);
    v.0.set(GuestNatural::Cr0.encoding(), CR0_PE_NE_ET);
    v.0.set(ControlNatural::Cr0ReadShadow.encoding(), CR0_PE_NE_ET);
    v.0.set(GuestNatural::Cr4.encoding(), CR4_PAE | 0x2000);
    v.0.set(GuestNatural::Cr3.encoding(), 0x4000);
    v.0.set(Guest64::Efer.encoding(), 0);
    v.0.set(Guest32::CsAccessRights.encoding(), 0xC09B);
    for (i, e) in [0x1001u64, 0x2001, 0, 0x3001].iter().enumerate() {
        v.3.ram[0x4000 + 8 * i..0x4008 + 8 * i].copy_from_slice(&e.to_le_bytes());
    }
    v.1.set_rax(CR0_PE | CR0_PG | CR0_ET);
    run(&mut v);
    assert_eq!(injected(&v.0).0, 0);
    let fields = [
        Guest64::Pdpte0,
        Guest64::Pdpte1,
        Guest64::Pdpte2,
        Guest64::Pdpte3,
    ];
    let got: Vec<u64> = fields.iter().map(|f| v.0.get(f.encoding())).collect();
    assert_eq!(got, [0x1001, 0x2001, 0, 0x3001]);
}

#[test]
fn efer_writes_exit_and_keep_the_entry_control_with_lma() {
    let mut bitmap = MsrBitmap::pass_all();
    fill_msr_bitmap(&mut bitmap);
    assert!(bitmap.exits(IA32_EFER, true));
    assert!(!bitmap.exits(IA32_EFER, false));
    // WRMSR (exit 32) of EFER with NXE in long mode: LMA stays, and so
    // does the IA-32e mode guest control.
    let mut v = setup(32, 0, 2);
    v.0.set(Control32::EntryControls.encoding(), u64::from(ENTRY_IA32E));
    v.1.set_rcx(u64::from(IA32_EFER));
    v.1.set_rax(EFER_LME | (1 << 11));
    run(&mut v);
    assert_eq!(injected(&v.0).0, 0);
    assert_eq!(
        v.0.get(Guest64::Efer.encoding()),
        EFER_LME | EFER_LMA | (1 << 11)
    );
    assert_ne!(
        v.0.get(Control32::EntryControls.encoding()) & u64::from(ENTRY_IA32E),
        0
    );
    // Clearing LME with paging on is #GP.
    let mut v = setup(32, 0, 2);
    v.1.set_rcx(u64::from(IA32_EFER));
    v.1.set_rax(0);
    run(&mut v);
    assert_eq!(injected(&v.0), (0x8000_0B0D, Some(0)));
    assert_eq!(v.0.get(Guest64::Efer.encoding()), EFER_LME | EFER_LMA);
}
