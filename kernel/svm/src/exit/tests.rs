//! Exits decoded from VMCBs built here, over guest RAM in a vector: what
//! each exit code becomes, the next RIP it leaves, the events it puts
//! back, and the vCPU access the handlers then get.

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use loader::entry::EntryState;
use vcpu::access::{Event, VcpuAccess};
use vcpu::exit::{handle_exit, Outcome, VcpuModel};
use vcpu::fake::FakePlatform;
use vcpu::vm::{VmDevices, WallClock};

use super::*;
use crate::access::{SoftState, SvmError};
use crate::regs::Gprs;
use crate::setup::{write_initial, VmcbLinks};
use crate::vmcb::VmcbSegment;

const RIP: u64 = 0x1000;
const RAM: usize = 0x10_0000;

/// A 32-bit guest without paging at [`RIP`], with `code` there.
struct Guest {
    vmcb: Box<Vmcb>,
    gprs: Gprs,
    soft: SoftState,
    ram: Vec<u8>,
}

impl Guest {
    fn new(code: &[u8]) -> Self {
        let mut vmcb = Box::new(Vmcb::new());
        let mut gprs = Gprs::new();
        let links = VmcbLinks {
            iopm: 0x1_0000,
            msrpm: 0x1_3000,
            ncr3: 0x2_0000,
            asid: 1,
            tsc_offset: 0,
        };
        write_initial(
            &mut vmcb,
            &mut gprs,
            &links,
            &EntryState::protected32(RIP as u32),
        );
        let mut ram = vec![0u8; RAM];
        ram[RIP as usize..RIP as usize + code.len()].copy_from_slice(code);
        Self {
            vmcb,
            gprs,
            soft: SoftState::default(),
            ram,
        }
    }

    fn long_mode(mut self) -> Self {
        let cs = self.vmcb.segment(SaveSegment::Cs);
        self.vmcb.set_segment(
            SaveSegment::Cs,
            VmcbSegment {
                attrib: 0xA9B,
                ..cs
            },
        );
        // Identity-mapped 2 MiB page at 0 through tables at 0x8000.
        let put = |ram: &mut Vec<u8>, at: usize, v: u64| {
            ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut self.ram, 0x8000, 0x9003);
        put(&mut self.ram, 0x9000, 0xA003);
        put(&mut self.ram, 0xA000, 0x83);
        self.vmcb.set_cr3(0x8000);
        self.vmcb.set_cr4(1 << 5);
        self.vmcb.set_cr0(0x8000_0011);
        self.vmcb.set_efer((1 << 8) | (1 << 10) | EFER_SVME);
        self
    }

    fn exit(&mut self, code: u64, info1: u64, info2: u64) {
        self.vmcb.set_exit_code(code);
        self.vmcb.set_exit_info1(info1);
        self.vmcb.set_exit_info2(info2);
    }

    fn decode(&mut self, slice_over: bool) -> Exit {
        let ram = &self.ram;
        let mut read = |gpa: GuestPhysAddr, buf: &mut [u8]| {
            let at = gpa.as_u64() as usize;
            match ram.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        };
        let mut vcpu = SvmVcpu {
            vmcb: &mut self.vmcb,
            gprs: &mut self.gprs,
            soft: &mut self.soft,
        };
        decode_exit(&mut vcpu, slice_over, &mut read)
    }

    fn vcpu(&mut self) -> SvmVcpu<'_> {
        SvmVcpu {
            vmcb: &mut self.vmcb,
            gprs: &mut self.gprs,
            soft: &mut self.soft,
        }
    }
}

fn unknown(code: u64, info1: u64) -> Exit {
    Exit::Unknown {
        reason: code as u32,
        qualification: info1,
    }
}

#[test]
fn instruction_exits_measure_the_instruction_without_nrip_save() {
    let cases: &[(&[u8], u64, u64, Exit, u64)] = &[
        (&[0x0F, 0xA2], code::CPUID, 0, Exit::Cpuid, 2),
        (&[0xF4], code::HLT, 0, Exit::Hlt, 1),
        (&[0x0F, 0x32], code::MSR, 0, Exit::MsrRead, 2),
        (&[0x0F, 0x30], code::MSR, 1, Exit::MsrWrite, 2),
        (&[0x0F, 0x01, 0xD9], code::VMMCALL, 0, Exit::Hypercall, 3),
        (&[0x0F, 0x01, 0xD1], code::XSETBV, 0, Exit::Xsetbv, 3),
        (&[0x0F, 0x08], code::INVD, 0, Exit::CacheFlush, 2),
        (&[0xF3, 0x0F, 0x09], code::WBINVD, 0, Exit::CacheFlush, 3),
        (&[0x66, 0x0F, 0xA2], code::CPUID, 0, Exit::Cpuid, 3),
    ];
    for &(bytes, code, info1, exit, len) in cases {
        let mut g = Guest::new(bytes);
        g.exit(code, info1, 0);
        assert_eq!(g.decode(false), exit, "{bytes:02x?}");
        assert_eq!(g.soft.next_rip, Some(RIP + len), "{bytes:02x?}");
        g.vcpu().skip_instruction().unwrap();
        assert_eq!(g.vmcb.rip(), RIP + len);
        assert_eq!(g.soft.next_rip, None, "used once");
    }
}

#[test]
fn nrip_save_is_used_where_the_cpu_has_it() {
    // The bytes at RIP do not matter then.
    let mut g = Guest::new(&[0x90]);
    g.soft.nrip_save = true;
    g.vmcb.set_next_rip(RIP + 2);
    g.exit(code::CPUID, 0, 0);
    assert_eq!(g.decode(false), Exit::Cpuid);
    assert_eq!(g.soft.next_rip, Some(RIP + 2));
}

#[test]
fn bytes_that_are_not_the_instruction_stop_the_guest() {
    // The guest rewrote its code: a NOP where CPUID exited.
    let mut g = Guest::new(&[0x90, 0x90]);
    g.exit(code::CPUID, 0, 0);
    assert_eq!(g.decode(false), unknown(code::CPUID, 0));
    assert_eq!(g.soft.next_rip, None);
    assert_eq!(
        g.vcpu().skip_instruction(),
        Err(SvmError::NoNextRip { rip: RIP })
    );
    // Code outside RAM.
    let mut g = Guest::new(&[]);
    g.vmcb.set_rip(RAM as u64 + 0x1000);
    g.exit(code::HLT, 0, 0);
    assert_eq!(g.decode(false), unknown(code::HLT, 0));
    // An MSR exit whose EXITINFO1 is neither read nor write.
    let mut g = Guest::new(&[0x0F, 0x32]);
    g.exit(code::MSR, 2, 0);
    assert_eq!(g.decode(false), unknown(code::MSR, 2));
}

#[test]
fn sixty_four_bit_code_is_fetched_through_the_guests_paging() {
    // REX.W WRMSR in 64-bit mode; the RIP past 4 GiB is kept.
    let mut g = Guest::new(&[0x48, 0x0F, 0x30]).long_mode();
    g.exit(code::MSR, 1, 0);
    assert_eq!(g.decode(false), Exit::MsrWrite);
    assert_eq!(g.soft.next_rip, Some(RIP + 3));
    // In 32-bit code the next RIP wraps at 4 GiB.
    let mut g = Guest::new(&[]);
    g.ram[0..2].copy_from_slice(&[0x0F, 0xA2]);
    let cs = g.vmcb.segment(SaveSegment::Cs);
    g.vmcb.set_segment(
        SaveSegment::Cs,
        VmcbSegment {
            base: 0xFFFF_F000,
            ..cs
        },
    );
    g.vmcb.set_rip(0x1000);
    g.exit(code::CPUID, 0, 0);
    assert_eq!(g.decode(false), Exit::Cpuid);
    assert_eq!(g.soft.next_rip, Some(0x1002));
}

#[test]
fn port_io_takes_everything_from_exitinfo() {
    // IN AL, 0x60: type IN, SZ8; EXITINFO2 is the next RIP.
    let mut g = Guest::new(&[]);
    g.exit(code::IOIO, (0x60 << 16) | 1 | (1 << 4), RIP + 2);
    assert_eq!(
        g.decode(false),
        Exit::Io(IoAccess::port(0x60, 1, IoDirection::In))
    );
    assert_eq!(g.soft.next_rip, Some(RIP + 2));
    // OUT DX, EAX to 0xCF8.
    g.exit(code::IOIO, (0xCF8 << 16) | (1 << 6), RIP + 1);
    assert_eq!(
        g.decode(false),
        Exit::Io(IoAccess::port(0xCF8, 4, IoDirection::Out))
    );
    // REP INSW, 32-bit addresses: through ES, whatever the prefixes.
    g.exit(
        code::IOIO,
        (0x1F0 << 16) | 1 | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8),
        RIP + 3,
    );
    let mut ins = IoAccess::port(0x1F0, 2, IoDirection::In);
    (ins.string, ins.rep, ins.address_size, ins.segment) =
        (true, true, AddressSize::Bits32, Segment::Es);
    assert_eq!(g.decode(false), Exit::Io(ins));
    // No size bit: not decodable.
    g.exit(code::IOIO, 0x60 << 16, RIP + 1);
    assert_eq!(g.decode(false), unknown(code::IOIO, 0x60 << 16));
}

#[test]
fn outs_finds_its_segment_in_its_prefixes_or_in_exitinfo() {
    let info1 = (0x3F8 << 16) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 7);
    let outs = |segment| {
        let mut a = IoAccess::port(0x3F8, 1, IoDirection::Out);
        (a.string, a.rep, a.address_size, a.segment) = (true, true, AddressSize::Bits16, segment);
        Exit::Io(a)
    };
    // REP OUTSB: DS.
    let mut g = Guest::new(&[0xF3, 0x6E]);
    g.exit(code::IOIO, info1, RIP + 2);
    assert_eq!(g.decode(false), outs(Segment::Ds));
    // FS: REP OUTSB.
    let mut g = Guest::new(&[0x64, 0xF3, 0x6E]);
    g.exit(code::IOIO, info1, RIP + 3);
    assert_eq!(g.decode(false), outs(Segment::Fs));
    assert_eq!(g.soft.next_rip, Some(RIP + 3));
    // Not an OUTS at RIP.
    let mut g = Guest::new(&[0x90]);
    g.exit(code::IOIO, info1, RIP + 1);
    assert_eq!(g.decode(false), unknown(code::IOIO, info1));
    // With decode assists EXITINFO1 bits 12:10 say it (GS = 5).
    let mut g = Guest::new(&[0x90]);
    g.soft.decode_assists = true;
    g.exit(code::IOIO, info1 | (5 << 10), RIP + 2);
    assert_eq!(g.decode(false), outs(Segment::Gs));
    g.exit(code::IOIO, info1 | (6 << 10), RIP + 2);
    assert_eq!(g.decode(false), unknown(code::IOIO, info1 | (6 << 10)));
}

#[test]
fn cr8_accesses_name_their_register() {
    let mov = |cr, kind| Exit::ControlRegister(CrAccess { cr, kind });
    // MOV CR8, R10 (45 0F 22 C2) in 64-bit code.
    let mut g = Guest::new(&[0x45, 0x0F, 0x22, 0xC2]).long_mode();
    g.exit(code::CR8_WRITE, 0, 0);
    assert_eq!(g.decode(false), mov(8, CrAccessKind::MovTo(Gpr::R10)));
    assert_eq!(g.soft.next_rip, Some(RIP + 4));
    // MOV RAX, CR8 (44 0F 20 C0).
    let mut g = Guest::new(&[0x44, 0x0F, 0x20, 0xC0]).long_mode();
    g.exit(code::CR8_READ, 0, 0);
    assert_eq!(g.decode(false), mov(8, CrAccessKind::MovFrom(Gpr::Rax)));
    // A read exit at a write, or at another CR: refused.
    let mut g = Guest::new(&[0x44, 0x0F, 0x22, 0xC0]).long_mode();
    g.exit(code::CR8_READ, 0, 0);
    assert_eq!(g.decode(false), unknown(code::CR8_READ, 0));
    let mut g = Guest::new(&[0x0F, 0x22, 0xD8]).long_mode();
    g.exit(code::CR8_WRITE, 0, 0);
    assert_eq!(g.decode(false), unknown(code::CR8_WRITE, 0));
    // Decode assists and NRIP save: EXITINFO1 bit 63 and GPR 3:0.
    let mut g = Guest::new(&[0x90]);
    (g.soft.decode_assists, g.soft.nrip_save) = (true, true);
    g.vmcb.set_next_rip(RIP + 4);
    g.exit(code::CR8_WRITE, (1 << 63) | 11, 0);
    assert_eq!(g.decode(false), mov(8, CrAccessKind::MovTo(Gpr::R11)));
    assert_eq!(g.soft.next_rip, Some(RIP + 4));
}

#[test]
fn nested_page_faults_carry_the_address_and_the_access() {
    let mut g = Guest::new(&[]);
    for (info1, read, write, fetch) in [
        (0b0_0100, true, false, false),
        (0b0_0111, false, true, false),
        (0b1_0101, false, false, true),
        ((1 << 32) | 0b10, false, true, false),
    ] {
        g.exit(code::NPF, info1, 0xFEE0_0030);
        assert_eq!(
            g.decode(false),
            Exit::nested(NestedFault {
                gpa: GuestPhysAddr::new(0xFEE0_0030),
                read,
                write,
                fetch,
                allowed: None,
            }),
            "{info1:#x}"
        );
    }
}

#[test]
fn interrupts_windows_and_refused_instructions() {
    let mut g = Guest::new(&[]);
    g.exit(code::INTR, 0, 0);
    assert_eq!(g.decode(false), Exit::ExternalInterrupt);
    assert_eq!(g.decode(true), Exit::SliceEnd);
    g.exit(code::NMI, 0, 0);
    assert_eq!(g.decode(false), Exit::Nmi);
    g.vcpu().request_interrupt_window(true).unwrap();
    g.exit(code::VINTR, 0, 0);
    assert_eq!(g.decode(false), Exit::InterruptWindow);
    assert!(!g.vmcb.v_irq());
    for (code, exit) in [
        (code::SHUTDOWN, Exit::TripleFault),
        (code::TASK_SWITCH, Exit::TaskSwitch),
        (code::RDPMC, Exit::Rdpmc),
        (code::PAUSE, Exit::Pause),
        (code::VMRUN, Exit::VirtualizationInstruction),
        (code::VMLOAD, Exit::VirtualizationInstruction),
        (code::VMSAVE, Exit::VirtualizationInstruction),
        (code::STGI, Exit::VirtualizationInstruction),
        (code::CLGI, Exit::VirtualizationInstruction),
        (code::SKINIT, Exit::VirtualizationInstruction),
        (code::INVLPGA, Exit::VirtualizationInstruction),
        (code::MONITOR, Exit::VirtualizationInstruction),
        (code::MWAIT, Exit::VirtualizationInstruction),
        (code::INIT, unknown(code::INIT, 0)),
        (0x6E, unknown(0x6E, 0)),
    ] {
        g.exit(code, 0, 0);
        assert_eq!(g.decode(false), exit, "{}", exit_name(code));
        assert_eq!(g.soft.next_rip, None);
    }
}

#[test]
fn an_invalid_vmcb_is_an_entry_failure_named_by_its_checks() {
    let mut g = Guest::new(&[]);
    g.vmcb.set_efer(0);
    g.vmcb.set_cr0(1 << 29);
    g.exit(code::INVALID, 0, 0);
    let exit = g.decode(false);
    assert_eq!(
        exit,
        Exit::EntryFailed {
            reason: u32::MAX,
            qualification: 0
        }
    );
    assert_eq!(widen(u32::MAX), code::INVALID);
    assert_eq!(widen(0x400), code::NPF);
    let v = g.vcpu();
    assert_eq!(v.exit_name(u32::MAX), "VMEXIT_INVALID");
    assert_eq!(v.exit_name(0x7B), "IOIO");
    let words = v.entry_failure(u32::MAX, 0);
    assert!(words.contains("VMEXIT_INVALID"), "{words}");
    assert!(words.contains("EFER.SVME is clear"), "{words}");
    assert!(words.contains("CR0.NW is set without CR0.CD"), "{words}");
    assert!(!words.contains("ASID"), "{words}");
    // A VMCB that passes every check it can be checked for.
    let g = Guest::new(&[]);
    let words = entry_failure(&g.vmcb, code::INVALID, 0);
    assert!(words.contains("none of the checks"), "{words}");
}

#[test]
fn an_event_cut_short_is_injected_again() {
    // An external interrupt whose delivery hit a nested page fault.
    let mut g = Guest::new(&[]);
    g.vmcb.set_exit_int_info(0x8000_0030);
    g.exit(code::NPF, 0b100, 0x1000);
    g.decode(false);
    assert_eq!(g.vmcb.event_injection_raw(), 0x8000_0030);
    assert!(g.vcpu().event_pending().unwrap());
    // #PF with its error code.
    g.vmcb.set_exit_int_info(0x2_8000_0B0E);
    g.decode(false);
    assert_eq!(g.vmcb.event_injection_raw(), 0x2_8000_0B0E);
    // An NMI keeps NMIs blocked through the handler's IRET.
    g.vmcb.set_exit_int_info(0x8000_0202);
    g.decode(false);
    assert_eq!(g.vmcb.event_injection_raw(), 0x8000_0202);
    assert!(g.vmcb.intercepted(Intercept::Iret));
    // INTn, INT3 and INTO run again from RIP instead.
    for raw in [0x8000_0480u64, 0x8000_0303, 0x8000_0304] {
        g.vmcb.set_exit_int_info(raw);
        g.decode(false);
        assert_eq!(g.vmcb.event_injection_raw(), 0, "{raw:#x}");
    }
    // Nothing cut short: what the last VMRUN injected is gone.
    g.vmcb.set_exit_int_info(0);
    g.vmcb.set_event_injection_raw(0x8000_0030);
    g.decode(false);
    assert!(!g.vcpu().event_pending().unwrap());
    // A VMRUN that failed leaves the event where it was.
    g.vmcb.set_event_injection_raw(0x8000_0030);
    g.vmcb.set_exit_int_info(0x8000_0031);
    g.exit(code::INVALID, 0, 0);
    g.decode(false);
    assert_eq!(g.vmcb.event_injection_raw(), 0x8000_0030);
}

#[test]
fn an_injected_nmi_is_blocked_until_its_iret_has_run() {
    let mut g = Guest::new(&[]);
    assert!(!g.vcpu().nmi_blocked().unwrap());
    g.vcpu().inject(Event::Nmi).unwrap();
    assert_eq!(g.vmcb.event_injection_raw(), 0x8000_0202);
    assert!(g.vmcb.intercepted(Intercept::Iret));
    assert!(g.vcpu().nmi_blocked().unwrap());
    // The handler's IRET at 0x2000 exits.
    g.vmcb.set_rip(0x2000);
    g.exit(code::IRET, 0, 0);
    assert_eq!(g.decode(false), Exit::NmiWindow);
    assert!(!g.vmcb.intercepted(Intercept::Iret));
    assert!(g.vcpu().nmi_blocked().unwrap(), "the IRET has not run");
    // An exit before the IRET ran (RIP still on it): still blocked.
    g.exit(code::INTR, 0, 0);
    g.decode(false);
    assert!(g.vcpu().nmi_blocked().unwrap());
    // Once RIP has moved, it has.
    g.vmcb.set_rip(0x5000);
    g.decode(false);
    assert_eq!(g.soft.iret_rip, None);
    assert!(!g.vcpu().nmi_blocked().unwrap());
}

#[test]
fn injection_and_window_encodings() {
    let mut g = Guest::new(&[]);
    let mut v = g.vcpu();
    v.inject(Event::ExternalInterrupt { vector: 0x30 }).unwrap();
    assert_eq!(v.vmcb.event_injection_raw(), 0x8000_0030);
    v.inject(Event::Exception {
        vector: 13,
        error_code: Some(0),
    })
    .unwrap();
    assert_eq!(v.vmcb.event_injection_raw(), 0x8000_0B0D);
    assert_ne!(v.vmcb.rflags() & (1 << 16), 0, "a fault pushes RF = 1");
    v.vmcb.set_rflags(2);
    v.inject(Event::Exception {
        vector: 1,
        error_code: None,
    })
    .unwrap();
    assert_eq!(v.vmcb.event_injection_raw(), 0x8000_0301);
    assert_eq!(v.vmcb.rflags(), 2, "#DB is not a fault here");
    v.set_cr2(0xDEAD_0000).unwrap();
    assert_eq!(v.vmcb.cr2(), 0xDEAD_0000);
    // The window: V_IRQ at priority 15, ignoring V_TPR, and VINTR.
    v.request_interrupt_window(true).unwrap();
    assert!(v.vmcb.v_irq() && v.vmcb.v_ign_tpr());
    assert_eq!(v.vmcb.v_intr_prio(), 0xF);
    assert!(v.vmcb.intercepted(Intercept::Vintr));
    assert!(v.vmcb.v_intr_masking(), "left as set up");
    v.request_interrupt_window(false).unwrap();
    assert!(!v.vmcb.v_irq());
    assert!(!v.vmcb.intercepted(Intercept::Vintr));
    v.vmcb.set_interrupt_shadow(true);
    assert!(v.interrupt_shadow().unwrap());
    v.clear_interrupt_shadow().unwrap();
    assert!(!v.interrupt_shadow().unwrap());
}

#[test]
fn registers_efer_and_segments_as_the_guest_sees_them() {
    let mut g = Guest::new(&[]);
    let mut v = g.vcpu();
    v.set_gpr(Gpr::Rax, 1).unwrap();
    v.set_gpr(Gpr::Rsp, 2).unwrap();
    v.set_gpr(Gpr::R15, 3).unwrap();
    assert_eq!((v.vmcb.rax(), v.vmcb.rsp()), (1, 2));
    assert_eq!(v.gpr(Gpr::R15).unwrap(), 3);
    assert_eq!(v.gpr(Gpr::Rsp).unwrap(), 2);
    // SVME is the hardware's.
    assert_eq!(v.vmcb.efer(), EFER_SVME);
    assert_eq!(v.efer().unwrap(), 0);
    // LME with paging off (no LMA): the guest sees it, the VMCB holds it
    // back until LMA comes with paging; LME and LMA together go in.
    v.set_efer(1 << 8).unwrap();
    assert_eq!(v.vmcb.efer(), EFER_SVME);
    assert_eq!(v.efer().unwrap(), 1 << 8);
    v.set_efer((1 << 8) | (1 << 10)).unwrap();
    assert_eq!(v.vmcb.efer(), (1 << 8) | (1 << 10) | EFER_SVME);
    assert_eq!(v.efer().unwrap(), (1 << 8) | (1 << 10));
    v.set_efer(1 << 8).unwrap();
    assert_eq!(v.vmcb.efer(), EFER_SVME);
    v.set_efer(0).unwrap();
    assert_eq!(v.efer().unwrap(), 0);
    // Attributes in the VMX layout; SS's DPL is the CPL.
    let cs = v.segment(Segment::Cs).unwrap();
    assert_eq!((cs.selector, cs.attributes), (0x10, 0xC09B));
    v.vmcb.set_cpl(3);
    assert_eq!(v.segment_attributes(Segment::Ss).unwrap(), 0xC0F3);
    assert_eq!(v.segment(Segment::Ss).unwrap().dpl(), 3);
    assert_eq!(v.segment_attributes(Segment::Ldtr).unwrap(), 1 << 16);
    assert_ne!(v.cr4_forbidden() & (1 << 13), 0);
    v.set_tsc_offset(42).unwrap();
    assert_eq!(v.tsc_offset().unwrap(), 42);
    v.set_pdptes([1, 2, 3, 4]).unwrap();
}

#[test]
fn exits_go_through_the_neutral_handlers() {
    let mut g = Guest::new(&[0x0F, 0x32, 0x0F, 0xA2]);
    let mut model = VcpuModel::new(0, 1, 0);
    let mut devices = VmDevices::new(1_000_000_000, WallClock::default());
    let mut platform = FakePlatform {
        ram: vec![0; 0x1000],
        ..FakePlatform::default()
    };
    // RDMSR of EFER exits under SVM and reads the guest's view.
    g.vmcb.set_efer((1 << 8) | EFER_SVME);
    g.gprs.set(Gpr::Rcx, 0xC000_0080);
    g.exit(code::MSR, 0, 0);
    let exit = g.decode(false);
    let outcome = handle_exit(
        &exit,
        &mut g.vcpu(),
        &mut model,
        &mut devices,
        &mut platform,
    );
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!((g.vmcb.rax(), g.gprs.get(Gpr::Rdx)), (1 << 8, Some(0)));
    assert_eq!(g.vmcb.rip(), RIP + 2);
    // CPUID: the policy answers and RIP moves past it.
    g.vmcb.set_rax(0x4000_0000);
    g.exit(code::CPUID, 0, 0);
    let exit = g.decode(false);
    let outcome = handle_exit(
        &exit,
        &mut g.vcpu(),
        &mut model,
        &mut devices,
        &mut platform,
    );
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(g.vmcb.rip(), RIP + 4);
    assert_eq!(
        g.gprs.get(Gpr::Rbx),
        Some(u64::from(u32::from_le_bytes(*b"Ferr")))
    );
}

#[test]
fn a_vmcall_raising_ud_is_a_hypercall_and_other_uds_go_back() {
    // VMCALL (0F 01 C1): a hypercall, RIP moves past it.
    let mut g = Guest::new(&[0x0F, 0x01, 0xC1]);
    g.exit(code::EXCP_UD, 0, 0);
    assert_eq!(g.decode(false), Exit::Hypercall);
    assert_eq!(g.soft.next_rip, Some(RIP + 3));
    assert_eq!(g.vmcb.event_injection(), None);
    // UD2 (0F 0B): the guest gets its #UD back, RIP stays.
    let mut g = Guest::new(&[0x0F, 0x0B]);
    g.exit(code::EXCP_UD, 0, 0);
    assert_eq!(g.decode(false), Exit::Reflected);
    assert_eq!(g.soft.next_rip, None);
    assert_eq!(
        g.vmcb.event_injection(),
        Some(EventInjection {
            vector: 6,
            kind: EventType::Exception,
            error_code: None,
        })
    );
}

#[test]
fn cr4_writes_name_their_register() {
    // MOV CR4, RAX (0F 22 E0) in 64-bit code.
    let mut g = Guest::new(&[0x0F, 0x22, 0xE0]).long_mode();
    g.exit(code::CR4_WRITE, 0, 0);
    assert_eq!(
        g.decode(false),
        Exit::ControlRegister(CrAccess {
            cr: 4,
            kind: CrAccessKind::MovTo(Gpr::Rax)
        })
    );
    assert_eq!(g.soft.next_rip, Some(RIP + 3));
    // A CR4 write exit at a MOV to CR3: refused.
    let mut g = Guest::new(&[0x0F, 0x22, 0xD8]).long_mode();
    g.exit(code::CR4_WRITE, 0, 0);
    assert_eq!(g.decode(false), unknown(code::CR4_WRITE, 0));
}

#[test]
fn string_io_without_address_size_bits_takes_it_from_the_instruction() {
    // What QEMU 7.2 reports for REP OUTSB: no A16/A32/A64 bit.
    let info1 = (0x3F8 << 16) | (1 << 2) | (1 << 3) | (1 << 4);
    let mut g = Guest::new(&[0xF3, 0x6E]);
    g.exit(code::IOIO, info1, RIP + 2);
    let mut a = IoAccess::port(0x3F8, 1, IoDirection::Out);
    (a.string, a.rep, a.address_size, a.segment) = (true, true, AddressSize::Bits32, Segment::Ds);
    assert_eq!(g.decode(false), Exit::Io(a));
    // 67: the other size.
    let mut g = Guest::new(&[0x67, 0xF3, 0x6E]);
    g.exit(code::IOIO, info1, RIP + 3);
    a.address_size = AddressSize::Bits16;
    assert_eq!(g.decode(false), Exit::Io(a));
}

#[test]
fn cr0_writes_are_mov_clts_or_lmsw() {
    let cr0 = |kind| Exit::ControlRegister(CrAccess { cr: 0, kind });
    // MOV CR0, EAX (0F 22 C0).
    let mut g = Guest::new(&[0x0F, 0x22, 0xC0]);
    g.exit(code::CR0_WRITE, 0, 0);
    assert_eq!(g.decode(false), cr0(CrAccessKind::MovTo(Gpr::Rax)));
    assert_eq!(g.soft.next_rip, Some(RIP + 3));
    // CLTS.
    let mut g = Guest::new(&[0x0F, 0x06]);
    g.exit(code::CR0_WRITE, 0, 0);
    assert_eq!(g.decode(false), cr0(CrAccessKind::Clts));
    assert_eq!(g.soft.next_rip, Some(RIP + 2));
    // LMSW DX, with DX = 0x11.
    let mut g = Guest::new(&[0x0F, 0x01, 0xF2]);
    g.gprs.set(Gpr::Rdx, 0x1_0011);
    g.exit(code::CR0_WRITE, 0, 0);
    assert_eq!(g.decode(false), cr0(CrAccessKind::Lmsw(0x11)));
    // LMSW from memory is not decoded.
    let mut g = Guest::new(&[0x0F, 0x01, 0x30]);
    g.exit(code::CR0_WRITE, 0, 0);
    assert_eq!(g.decode(false), unknown(code::CR0_WRITE, 0));
}
