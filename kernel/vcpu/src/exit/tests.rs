//! The neutral handlers on the fake backend: what the guest sees, whatever
//! backend delivers the exit. (The VT-x backend's decoding and VMCS
//! effects are tested end to end in the `vtx` crate.)

use std::vec;

use proptest::prelude::*;

use super::*;
use crate::fake::{FakePlatform, FakeVcpu};
use crate::vm::VmDevices;

mod facts;

const RIP: u64 = 0x10_0000;

type Exited = (FakeVcpu, VcpuModel, FakePlatform, VmDevices);

fn setup(len: u64) -> Exited {
    let platform = FakePlatform {
        ram: vec![0; 0x10_0000],
        ..FakePlatform::default()
    };
    (
        FakeVcpu::long_mode(RIP, len),
        VcpuModel::new(0, 1, 0),
        platform,
        VmDevices::new(1_000_000_000, crate::vm::WallClock::default()),
    )
}

fn run(exit: Exit, v: &mut Exited) -> Outcome {
    handle_exit(&exit, &mut v.0, &mut v.1, &mut v.3, &mut v.2)
}

#[test]
fn cpuid_answers_from_the_policy_and_skips() {
    let mut v = setup(2);
    v.0.gprs[0] = 0x4000_0000;
    assert_eq!(run(Exit::Cpuid, &mut v), Outcome::Resume);
    let sig: Vec<u8> = [v.0.gprs[3], v.0.gprs[1], v.0.gprs[2]]
        .iter()
        .flat_map(|r| (*r as u32).to_le_bytes())
        .collect();
    assert_eq!(sig, b"FerrovisorVM");
    assert_eq!(v.0.rip, RIP + 2);
    assert_eq!(v.1.tally, {
        let mut t = ExitTally::default();
        t.count_cpuid();
        t
    });
}

#[test]
fn osxsave_follows_the_guests_cr4() {
    let mut v = setup(2);
    v.0.gprs[0] = 1;
    run(Exit::Cpuid, &mut v);
    assert_eq!(v.0.gprs[1] & (1 << 27), 0);
    v.0.cr4 = 1 << 18;
    v.0.gprs[0] = 1;
    run(Exit::Cpuid, &mut v);
    assert_ne!(
        v.0.gprs[1] & (1 << 27),
        0,
        "CPUID.1:ECX.OSXSAVE = CR4.OSXSAVE"
    );
}

#[test]
fn a_cached_answer_is_what_the_handler_gave_for_those_cr4_bits() {
    let mut v = setup(2);
    for (cr4, leaf, subleaf) in [
        (0, 1, 0),
        (1 << 18, 1, 0),
        (1 << 22, 7, 0),
        (0, 0x8000_0001, 3),
    ] {
        v.0.cr4 = cr4;
        v.0.gprs[0] = leaf;
        v.0.gprs[1] = subleaf;
        run(Exit::Cpuid, &mut v);
        let given = CpuidResult {
            eax: v.0.gprs[0] as u32,
            ebx: v.0.gprs[3] as u32,
            ecx: v.0.gprs[1] as u32,
            edx: v.0.gprs[2] as u32,
        };
        assert_eq!(
            v.1.cpuid_cache.cached(leaf as u32, subleaf as u32),
            Some((cr4, given)),
            "leaf {leaf:#x}.{subleaf} with CR4 {cr4:#x}"
        );
        assert_eq!(
            v.1.cpuid_cache.cached(leaf as u32, subleaf as u32 + 1),
            None
        );
    }
    // Leaf 0DH depends on XCR0 and is never cached.
    v.0.gprs[0] = 0xD;
    v.0.gprs[1] = 0;
    run(Exit::Cpuid, &mut v);
    assert_eq!(v.1.cpuid_cache.cached(0xD, 0), None);
}

/// The exits handled without the devices give what `handle_exit` gives:
/// the same outcome, registers and counts.
#[test]
fn local_exits_are_handled_as_with_the_devices() {
    let exits = [
        Exit::Hlt,
        Exit::MsrRead,
        Exit::Cpuid,
        Exit::InterruptWindow,
        Exit::SliceEnd,
        Exit::ExternalInterrupt,
        Exit::Nmi,
        Exit::Pause,
        Exit::CacheFlush,
        Exit::Rdpmc,
        Exit::VirtualizationInstruction,
        Exit::TripleFault,
    ];
    for exit in exits {
        for (rflags, rcx) in [(0x2u64, 0x1Bu64), (0x202, 0x10), (0x202, 0xDEAD_BEEF)] {
            let mut with = setup(2);
            with.0.rflags = rflags;
            with.0.gprs[1] = rcx;
            let mut without = setup(2);
            without.0.rflags = rflags;
            without.0.gprs[1] = rcx;
            assert!(!needs_devices(&exit), "{exit:?}");
            let a = run(exit, &mut with);
            let b = handle_local_exit(&exit, &mut without.0, &mut without.1, &mut without.2);
            assert_eq!(Some(a), b, "{exit:?}");
            assert_eq!(with.0, without.0, "{exit:?}");
            assert_eq!(with.1.stats, without.1.stats, "{exit:?}");
            assert_eq!(with.1.tally, without.1.tally, "{exit:?}");
        }
    }
    for exit in [
        Exit::Io(IoAccess::port(0x3F8, 1, IoDirection::Out)),
        Exit::Hypercall,
        Exit::MsrWrite,
    ] {
        let mut v = setup(2);
        // A WRMSR needs them for IA32_APIC_BASE (see below for the rest).
        v.0.gprs[Gpr::Rcx as usize] = 0x1B;
        assert!(needs_devices(&exit));
        assert_eq!(handle_local_exit(&exit, &mut v.0, &mut v.1, &mut v.2), None);
        assert_eq!(v.1.stats, ExitStats::default(), "nothing counted: {exit:?}");
    }
}

/// Every WRMSR but IA32_APIC_BASE's is handled without the devices, as
/// with them: the same outcome, registers, counts, timer and interrupt
/// path's next look.
#[test]
fn wrmsrs_of_the_vcpus_own_state_are_handled_as_with_the_devices() {
    const DEADLINE: u32 = 0x6E0;
    for (msr, value, armed) in [
        (DEADLINE, 0x4000_0000_0000_0000u64, true),
        (DEADLINE, 0, false),
        (0x3B, 700, false),                    // TSC_ADJUST
        (0xC000_0080, 0xD01, false),           // EFER
        (0x277, 0x0007_0406_0007_0406, false), // PAT
        (0xC000_0081, 1 << 48, false),         // STAR, denied: #GP
        (0x10, 5, false),                      // the TSC, denied: #GP
    ] {
        let prepare = |v: &mut Exited| {
            v.0.gprs[Gpr::Rcx as usize] = u64::from(msr);
            v.0.gprs[Gpr::Rax as usize] = value & 0xFFFF_FFFF;
            v.0.gprs[Gpr::Rdx as usize] = value >> 32;
            // The APIC on, its timer in TSC-deadline mode (LVT bits 18:17
            // = 10b), armed before, far away: the write moves it.
            let _ = v.1.lapic.write(0xF0, 0x1FF, 0);
            let _ = v.1.lapic.write(0x320, 0x4_0030, 0);
            v.1.lapic.set_tsc_deadline(1 << 50, 0);
            assert_eq!(v.1.lapic.timer_deadline(), Some(1 << 50));
            v.1.attention_at = 1 << 50;
        };
        let mut with = apic_guest(0);
        prepare(&mut with);
        let mut without = apic_guest(0);
        prepare(&mut without);
        let a = run(Exit::MsrWrite, &mut with);
        let b = handle_local_exit(
            &Exit::MsrWrite,
            &mut without.0,
            &mut without.1,
            &mut without.2,
        );
        assert_eq!(Some(a), b, "{msr:#x}");
        assert_eq!(with.0, without.0, "{msr:#x}");
        assert_eq!(with.1.stats, without.1.stats, "{msr:#x}");
        assert_eq!(with.1.tally, without.1.tally, "{msr:#x}");
        assert_eq!(with.1.attention_at, without.1.attention_at, "{msr:#x}");
        assert_eq!(
            with.1.lapic.timer_deadline(),
            without.1.lapic.timer_deadline(),
            "{msr:#x}"
        );
        if msr == DEADLINE {
            assert_eq!(without.1.lapic.timer_deadline().is_some(), armed);
            assert_ne!(without.1.attention_at, 1 << 50, "moved with the timer");
        }
    }
}

#[test]
fn queued_com1_writes_are_counted_as_handled_io_exits() {
    let mut v = setup(1);
    let mut handled = setup(1);
    for _ in 0..3 {
        handled.0.gprs[0] = u64::from(b'x');
        run(
            Exit::Io(IoAccess::port(0x3F8, 1, IoDirection::Out)),
            &mut handled,
        );
    }
    count_queued_com1_writes(&mut v.1, 3);
    assert_eq!(
        (v.1.stats.exits, v.1.stats.io),
        (handled.1.stats.exits, handled.1.stats.io)
    );
    assert_eq!(v.1.tally, handled.1.tally);
}

#[test]
fn answered_cpuids_are_counted_as_handled_ones() {
    let mut v = setup(2);
    run(Exit::Cpuid, &mut v);
    count_answered_cpuid(&mut v.1, 4);
    assert_eq!((v.1.stats.exits, v.1.stats.cpuid), (5, 5));
    let mut t = ExitTally::default();
    t.count_cpuids(5);
    assert_eq!(v.1.tally, t);
}

#[test]
fn paging_on_with_lme_sets_lma_and_paging_off_clears_it() {
    let mut v = setup(3);
    v.0.cr0 = 0x11;
    v.0.cr4 = 1 << 5;
    v.0.efer = 1 << 8;
    v.0.segments[1].attributes = 0xC09B;
    v.0.gprs[0] = 0x8000_0011;
    let mov_to_cr0 = Exit::ControlRegister(CrAccess {
        cr: 0,
        kind: CrAccessKind::MovTo(Gpr::Rax),
    });
    assert_eq!(run(mov_to_cr0, &mut v), Outcome::Resume);
    assert_eq!(v.0.efer, (1 << 8) | (1 << 10));
    assert_eq!(v.0.cr0, 0x8000_0011);
    v.0.gprs[0] = 0x11;
    run(mov_to_cr0, &mut v);
    assert_eq!(v.0.efer, 1 << 8);
}

#[test]
fn refused_cr4_bits_and_msrs_inject_gp_with_an_error_code() {
    let mut v = setup(3);
    v.0.cr4_forbidden = 1 << 13;
    v.0.gprs[0] = 1 << 13;
    let exit = Exit::ControlRegister(CrAccess {
        cr: 4,
        kind: CrAccessKind::MovTo(Gpr::Rax),
    });
    assert_eq!(run(exit, &mut v), Outcome::Resume);
    assert_eq!(
        v.0.injected,
        [Event::Exception {
            vector: 13,
            error_code: Some(0)
        }]
    );
    assert_eq!(v.0.rip, RIP, "a fault does not skip");
    // In real mode no error code is pushed.
    let mut v = setup(2);
    v.0.cr0 = 0;
    v.0.gprs[1] = 0x3A;
    run(Exit::MsrRead, &mut v);
    assert_eq!(
        v.0.injected,
        [Event::Exception {
            vector: 13,
            error_code: None
        }]
    );
}

#[test]
fn hlt_blocks_with_interrupts_on_and_stops_without() {
    let mut v = setup(1);
    v.0.rflags = 0x202;
    assert_eq!(run(Exit::Hlt, &mut v), Outcome::Halted);
    assert_eq!(v.0.rip, RIP + 1);
    let mut v = setup(1);
    assert_eq!(
        run(Exit::Hlt, &mut v),
        Outcome::stop(StopReason::HaltedWithInterruptsOff { rip: RIP })
    );
}

#[test]
fn a_pause_loop_yields_and_leaves_rip_on_the_pause() {
    // PAUSE is F3 90: two bytes, which the handler must not skip.
    let mut v = setup(2);
    v.0.rflags = 0x202;
    let before = (v.0.gprs, v.0.rflags, v.0.cr0, v.0.cr4, v.0.efer);
    assert_eq!(run(Exit::Pause, &mut v), Outcome::Yield);
    assert_eq!(v.0.rip, RIP, "the guest resumes at the PAUSE");
    assert_eq!((v.0.gprs, v.0.rflags, v.0.cr0, v.0.cr4, v.0.efer), before);
    assert!(v.0.injected.is_empty());
    assert_eq!(v.1.stats.exits, 1);
    // Counted under its own kind, which the figures name.
    let mut table = [0u64; ExitKind::COUNT];
    let mut other = 0;
    v.1.tally.drain_into(&mut table, &mut other);
    assert_eq!(table[ExitKind::Pause.index()], 1);
    assert_eq!((table.iter().sum::<u64>(), other), (1, 0));
    assert_eq!(Exit::Pause.kind().name(), "PAUSE loop");
    // Every kind's index is its place in ALL, and names are distinct.
    for (i, kind) in ExitKind::ALL.iter().enumerate() {
        assert_eq!((kind.index(), ExitKind::from_index(i)), (i, Some(*kind)));
        let same = ExitKind::ALL.iter().filter(|k| k.name() == kind.name());
        assert_eq!(same.count(), 1, "{}", kind.name());
    }
    // Interrupts off or on, it is the same: the guest only waits.
    let mut v = setup(2);
    v.0.rflags = 0x2;
    assert_eq!(run(Exit::Pause, &mut v), Outcome::Yield);
    assert_eq!(v.0.rip, RIP);
}

#[test]
fn an_interrupt_window_exit_stops_asking_for_it() {
    let mut v = setup(0);
    v.0.window = true;
    assert_eq!(run(Exit::InterruptWindow, &mut v), Outcome::Resume);
    assert!(!v.0.window);
    assert_eq!(v.0.rip, RIP);
}

#[test]
fn an_nmi_window_exit_resumes_at_the_iret() {
    let mut v = setup(1);
    v.0.window = true;
    let before = (v.0.gprs, v.0.rflags, v.0.window);
    assert_eq!(run(Exit::NmiWindow, &mut v), Outcome::Resume);
    assert_eq!(v.0.rip, RIP, "the IRET has not run yet");
    assert_eq!((v.0.gprs, v.0.rflags, v.0.window), before);
    assert!(v.0.injected.is_empty());
    assert_eq!(Exit::NmiWindow.kind(), ExitKind::InterruptWindow);
}

#[test]
fn an_efer_read_that_exits_answers_the_guests_view() {
    // VT-x passes EFER reads through; SVM makes them exit.
    let mut v = setup(2);
    v.0.efer = (1 << 8) | (1 << 10) | (1 << 11);
    v.0.gprs[1] = u64::from(IA32_EFER);
    v.0.gprs[0] = u64::MAX;
    v.0.gprs[2] = u64::MAX;
    assert_eq!(run(Exit::MsrRead, &mut v), Outcome::Resume);
    assert_eq!((v.0.gprs[0], v.0.gprs[2]), (0xD00, 0));
    assert_eq!(v.0.rip, RIP + 2);
    assert!(v.0.injected.is_empty());
}

#[test]
fn a_backend_failure_stops_the_guest_with_its_words() {
    let mut v = setup(2);
    v.0.fail = true;
    match run(Exit::Cpuid, &mut v) {
        Outcome::Stop(reason) => assert_eq!(
            reason.to_string(),
            "hypervisor error: the fake backend was told to fail"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fault_in_the_device_window_of_a_large_guest_is_outside_its_ram() {
    let fault = NestedFault {
        gpa: GuestPhysAddr::new(0xD000_0000),
        read: true,
        write: false,
        fetch: false,
        allowed: None,
    };
    let ram = addr::RamLayout::new(4 << 30).unwrap();
    let text = StopReason::MemoryFault {
        fault,
        ram,
        rip: 0x10_0000,
    }
    .to_string();
    assert!(
        text.starts_with(
            "read at guest-physical 0xd0000000 outside its RAM (0x100000000 bytes: \
             [0, 0xc0000000) and [0x100000000, 0x140000000)) at RIP 0x100000"
        ),
        "{text}"
    );
    let high = NestedFault {
        gpa: GuestPhysAddr::new(0x1_0000_0000),
        ..fault
    };
    let text = StopReason::MemoryFault {
        fault: high,
        ram,
        rip: 0,
    }
    .to_string();
    assert!(
        text.contains("inside RAM that its page tables do not allow"),
        "{text}"
    );
}

#[test]
fn nested_page_faults_and_unknown_exits_stop_with_their_details() {
    let mut v = setup(0);
    let fault = NestedFault {
        gpa: GuestPhysAddr::new(0x1000_0000),
        read: false,
        write: true,
        fetch: false,
        allowed: Some([false, false, false]),
    };
    let text = match run(Exit::nested(fault), &mut v) {
        Outcome::Stop(reason) => reason.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text,
        "write at guest-physical 0x10000000 outside its RAM (0x100000 bytes) at RIP 0x100000 \
         (nested page fault at guest-physical 0x10000000: write, allowed ---)"
    );
    let exit = Exit::Unknown {
        reason: 77,
        qualification: 5,
    };
    let text = match run(exit, &mut v) {
        Outcome::Stop(reason) => reason.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text,
        "unhandled VM exit 77 (unknown), qualification 0x5, at RIP 0x100000"
    );
}

/// One arbitrary exit of every kind the handlers see.
fn any_exit() -> impl Strategy<Value = Exit> {
    let gpr = (0u8..16).prop_map(|n| Gpr::from_number(n).unwrap_or(Gpr::Rax));
    prop_oneof![
        Just(Exit::Cpuid),
        (
            any::<u16>(),
            prop::sample::select(vec![1u8, 2, 4]),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![
                AddressSize::Bits16,
                AddressSize::Bits32,
                AddressSize::Bits64
            ]),
            prop::sample::select(vec![
                Segment::Es,
                Segment::Cs,
                Segment::Ss,
                Segment::Ds,
                Segment::Fs,
                Segment::Gs
            ]),
        )
            .prop_map(
                |(port, size, out, string, rep, address_size, segment)| Exit::Io(IoAccess {
                    port,
                    size,
                    direction: if out {
                        IoDirection::Out
                    } else {
                        IoDirection::In
                    },
                    string,
                    rep,
                    address_size,
                    segment,
                })
            ),
        Just(Exit::MsrRead),
        Just(Exit::MsrWrite),
        Just(Exit::Hypercall),
        Just(Exit::Hlt),
        Just(Exit::InterruptWindow),
        Just(Exit::NmiWindow),
        Just(Exit::ExternalInterrupt),
        Just(Exit::Nmi),
        Just(Exit::SliceEnd),
        Just(Exit::TripleFault),
        Just(Exit::Xsetbv),
        Just(Exit::CacheFlush),
        Just(Exit::VirtualizationInstruction),
        Just(Exit::Rdpmc),
        Just(Exit::TaskSwitch),
        Just(Exit::Pause),
        (any::<u8>(), gpr.clone(), 0u8..4, any::<u16>()).prop_map(|(cr, gpr, k, src)| {
            Exit::ControlRegister(CrAccess {
                cr: cr % 10,
                kind: match k {
                    0 => CrAccessKind::MovTo(gpr),
                    1 => CrAccessKind::MovFrom(gpr),
                    2 => CrAccessKind::Lmsw(src),
                    _ => CrAccessKind::Clts,
                },
            })
        }),
        (any::<u64>(), any::<[bool; 3]>()).prop_map(|(gpa, [r, w, x])| {
            Exit::nested(NestedFault {
                gpa: GuestPhysAddr::new(gpa),
                read: r,
                write: w,
                fetch: x,
                allowed: None,
            })
        }),
        any::<u32>().prop_map(|reason| Exit::Unknown {
            reason,
            qualification: 0
        }),
    ]
}

proptest! {
    /// Whatever the exit and whatever the guest's registers, the handlers
    /// end in an outcome (no panic), and a stop comes with a reason that
    /// prints.
    #[test]
    fn every_exit_with_any_registers_ends_in_an_outcome(
        exit in any_exit(),
        gprs in any::<[u64; 16]>(),
        rip in any::<u64>(),
        rflags in any::<u64>(),
        cr0 in any::<u64>(),
        cr4 in any::<u64>(),
        efer in any::<u64>(),
        cs in any::<u32>(),
        ss in any::<u32>(),
        len in 0u64..16,
    ) {
        let mut v = setup(len);
        v.0.gprs = gprs;
        v.0.rip = rip;
        v.0.rflags = rflags;
        v.0.cr0 = cr0;
        v.0.cr4 = cr4;
        v.0.efer = efer;
        v.0.segments[1].attributes = cs;
        v.0.segments[2].attributes = ss;
        if let Outcome::Stop(reason) = run(exit, &mut v) {
            prop_assert!(!reason.to_string().is_empty());
        }
        prop_assert_eq!(v.1.stats.exits, 1);
    }
}

/// Runs WRMSR `msr` with `value` (EDX:EAX).
fn wrmsr_exit(v: &mut Exited, msr: u32, value: u64) -> Outcome {
    v.0.gprs[Gpr::Rcx as usize] = u64::from(msr);
    v.0.gprs[Gpr::Rax as usize] = value & 0xFFFF_FFFF;
    v.0.gprs[Gpr::Rdx as usize] = value >> 32;
    run(Exit::MsrWrite, v)
}

/// Runs RDMSR `msr`: EDX:EAX.
fn rdmsr_exit(v: &mut Exited, msr: u32) -> u64 {
    v.0.gprs[Gpr::Rcx as usize] = u64::from(msr);
    assert_eq!(run(Exit::MsrRead, v), Outcome::Resume);
    (v.0.gprs[Gpr::Rdx as usize] << 32) | v.0.gprs[Gpr::Rax as usize]
}

#[test]
fn tsc_adjust_moves_the_guests_tsc_by_the_change() {
    let mut v = setup(2);
    v.0.tsc_offset = 0u64.wrapping_sub(5_000);
    assert_eq!(rdmsr_exit(&mut v, 0x3B), 0);
    assert_eq!(wrmsr_exit(&mut v, 0x3B, 700), Outcome::Resume);
    assert_eq!(v.0.tsc_offset, 0u64.wrapping_sub(4_300));
    assert_eq!(rdmsr_exit(&mut v, 0x3B), 700);
    assert_eq!(wrmsr_exit(&mut v, 0x3B, 0), Outcome::Resume);
    assert_eq!(
        v.0.tsc_offset,
        0u64.wrapping_sub(5_000),
        "back where it was"
    );
}

#[test]
fn tsc_deadline_is_kept_in_host_time_and_read_back_in_guest_time() {
    let mut v = setup(2);
    // Guest TSC = host TSC - 1_000_000.
    v.0.tsc_offset = 0u64.wrapping_sub(1_000_000);
    // LVT timer in TSC-deadline mode, vector 0xEC.
    let _ = v.1.lapic.write(0x320, (2 << 17) | 0xEC, 0);
    assert_eq!(wrmsr_exit(&mut v, 0x6E0, 50_000), Outcome::Resume);
    assert_eq!(v.1.lapic.tsc_deadline(), 1_050_000, "host time");
    assert_eq!(
        v.1.attention_at, 1_050_000,
        "the run loop wakes the vCPU then"
    );
    assert_eq!(rdmsr_exit(&mut v, 0x6E0), 50_000, "guest time");
    // 0 disarms.
    assert_eq!(wrmsr_exit(&mut v, 0x6E0, 0), Outcome::Resume);
    assert_eq!(rdmsr_exit(&mut v, 0x6E0), 0);
    assert_eq!(v.1.attention_at, u64::MAX);
}

/// A 64-bit guest, vCPU `index` of two, whose first 2 MiB are
/// identity-mapped by one 2 MiB page (PML4 0x1000, PDPT 0x2000, PD 0x3000),
/// with `mov eax, [rbx]` at [`RIP`] for [`apic_read`].
fn apic_guest(index: u32) -> Exited {
    let mut v = setup(2);
    v.1 = VcpuModel::new(index, 2, 0);
    v.2.ram = vec![0; 0x20_0000];
    for (at, entry) in [(0x1000, 0x2003u64), (0x2000, 0x3003), (0x3000, 0x83)] {
        v.2.ram[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    }
    let rip = RIP as usize;
    v.2.ram[rip..rip + 2].copy_from_slice(&[0x8B, 0x03]);
    v.0.cr3 = 0x1000;
    v.0.cr4 = 1 << 5;
    v
}

/// The guest's 32-bit load from guest-physical `gpa` (the EPT violation it
/// takes there): the value loaded, or the stop it ends in.
fn apic_read(v: &mut Exited, gpa: u64) -> Result<u32, StopReason> {
    v.0.rip = RIP;
    v.0.gprs[Gpr::Rbx as usize] = gpa;
    v.0.gprs[Gpr::Rax as usize] = u64::MAX;
    let fault = NestedFault {
        gpa: GuestPhysAddr::new(gpa),
        read: true,
        write: false,
        fetch: false,
        allowed: Some([false, false, false]),
    };
    match run(Exit::nested(fault), v) {
        Outcome::Resume => {
            assert_eq!(v.0.rip, RIP + 2);
            Ok(v.0.gprs[Gpr::Rax as usize] as u32)
        }
        Outcome::Stop(reason) => Err(*reason),
        other => panic!("{other:?}"),
    }
}

/// The #GP(0) a refused WRMSR injects, RIP left on the WRMSR.
fn assert_gp(v: &mut Exited, outcome: Outcome) {
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(
        v.0.injected,
        [Event::Exception {
            vector: 13,
            error_code: Some(0)
        }]
    );
    assert_eq!(v.0.rip, RIP, "a fault does not skip");
    v.0.injected.clear();
}

#[test]
fn after_reset_the_apic_answers_at_0xfee00000() {
    // What every program that starts the way a PC starts reads first.
    let mut ap = apic_guest(1);
    assert_eq!(
        rdmsr_exit(&mut ap, 0x1B),
        0xFEE0_0800,
        "enabled, not the BSP"
    );
    assert_eq!(apic_read(&mut ap, 0xFEE0_0020), Ok(1 << 24), "APIC ID 1");
    assert_eq!(apic_read(&mut ap, 0xFEE0_0030), Ok(0x0005_0014), "version");
    let mut bsp = apic_guest(0);
    assert_eq!(rdmsr_exit(&mut bsp, 0x1B), 0xFEE0_0900, "the BSP");
    assert_eq!(apic_read(&mut bsp, 0xFEE0_0020), Ok(0));
}

#[test]
fn clearing_the_apic_base_enable_bit_disables_the_page_and_setting_it_resets() {
    let mut v = apic_guest(1);
    // Something to lose: a raised TPR.
    let _ = v.1.lapic.write(0x80, 0x40, 0);
    v.0.rip = RIP;
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEE0_0000), Outcome::Resume);
    assert_eq!(rdmsr_exit(&mut v, 0x1B), 0xFEE0_0000);
    // The page no longer decodes: nothing else claims it, so the access
    // stops the guest with the memory-fault report.
    match apic_read(&mut v, 0xFEE0_0020) {
        Err(StopReason::MemoryFault { fault, .. }) => {
            assert_eq!(fault.gpa, GuestPhysAddr::new(0xFEE0_0020));
        }
        other => panic!("{other:?}"),
    }
    // Enabled again: the reset state (TPR 0, SVR 0xFF: software-disabled).
    let mut v = apic_guest(1);
    let _ = v.1.lapic.write(0x80, 0x40, 0);
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEE0_0000), Outcome::Resume);
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEE0_0800), Outcome::Resume);
    assert_eq!(rdmsr_exit(&mut v, 0x1B), 0xFEE0_0800);
    assert_eq!(apic_read(&mut v, 0xFEE0_0080), Ok(0));
    assert_eq!(apic_read(&mut v, 0xFEE0_00F0), Ok(0xFF));
    assert_eq!(apic_read(&mut v, 0xFEE0_0020), Ok(1 << 24));
}

#[test]
fn the_apic_base_moves_the_page_for_this_vcpu() {
    let mut v = apic_guest(1);
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEA0_0800), Outcome::Resume);
    assert_eq!(rdmsr_exit(&mut v, 0x1B), 0xFEA0_0800);
    assert_eq!(apic_read(&mut v, 0xFEA0_0020), Ok(1 << 24));
    assert_eq!(apic_read(&mut v, 0xFEA0_0030), Ok(0x0005_0014));
    assert!(
        matches!(
            apic_read(&mut v, 0xFEE0_0020),
            Err(StopReason::MemoryFault { .. })
        ),
        "the old page is left"
    );
    // Another vCPU's APIC stays where it was.
    let mut other = apic_guest(0);
    assert_eq!(apic_read(&mut other, 0xFEE0_0020), Ok(0));
    // Moving it onto the I/O APIC's page: the local APIC is in front.
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEC0_0800), Outcome::Resume);
    assert_eq!(apic_read(&mut v, 0xFEC0_0030), Ok(0x0005_0014));
}

#[test]
fn apic_base_writes_of_reserved_bits_or_x2apic_inject_gp_and_the_bsp_bit_is_read_only() {
    let mut v = apic_guest(0);
    // Bit 9 and bit 0 are reserved; the fake host's leaf 0x80000008 gives
    // MAXPHYADDR 39, so bit 39 is reserved too (and bit 38 is not).
    for value in [0xFEE0_0B00, 0xFEE0_0901, 0x80_FEE0_0900] {
        v.0.rip = RIP;
        let outcome = wrmsr_exit(&mut v, 0x1B, value);
        assert_gp(&mut v, outcome);
    }
    // x2APIC mode: CPUID does not offer it.
    v.0.rip = RIP;
    let outcome = wrmsr_exit(&mut v, 0x1B, 0xFEE0_0D00);
    assert_gp(&mut v, outcome);
    assert_eq!(rdmsr_exit(&mut v, 0x1B), 0xFEE0_0900, "nothing changed");
    // Clearing the BSP bit on the BSP, or setting it on an AP, is ignored.
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEE0_0800), Outcome::Resume);
    assert_eq!(rdmsr_exit(&mut v, 0x1B), 0xFEE0_0900);
    let mut ap = apic_guest(1);
    assert_eq!(wrmsr_exit(&mut ap, 0x1B, 0xFEE0_0900), Outcome::Resume);
    assert_eq!(rdmsr_exit(&mut ap, 0x1B), 0xFEE0_0800);
    assert!(ap.0.injected.is_empty());
}

fn mov_to(cr: u8) -> Exit {
    Exit::ControlRegister(CrAccess {
        cr,
        kind: CrAccessKind::MovTo(Gpr::Rax),
    })
}

const GP_0: Event = Event::Exception {
    vector: 13,
    error_code: Some(0),
};

/// What the guest sees of a control-register or EFER write that exited:
/// #GP(0) (RIP stays), or the write done (RIP moves on).
#[derive(Debug, PartialEq)]
enum Seen {
    Gp,
    Done,
}

fn seen(v: &Exited) -> Seen {
    match (v.0.injected.as_slice(), v.0.rip) {
        ([GP_0], RIP) => Seen::Gp,
        ([], rip) if rip != RIP => Seen::Done,
        other => panic!("{other:?}"),
    }
}

/// A 32-bit protected-mode guest, paging off: CR0 = PE|ET.
fn protected(len: u64) -> Exited {
    let mut v = setup(len);
    v.0.cr0 = 0x11;
    v.0.efer = 0;
    v.0.segments[1].attributes = 0xC09B;
    v
}

#[test]
fn control_register_and_efer_writes_are_checked_through_the_handlers() {
    const PG_PE: u64 = 0x8000_0001;
    // (what, prepare, exit, value in RAX (RDX for EFER's high half), seen)
    type Prepare = fn(&mut Exited);
    let rows: &[(&str, Prepare, Exit, u64, Seen)] = &[
        (
            "cr0 pg without pe",
            |_| {},
            mov_to(0),
            0x8000_0000,
            Seen::Gp,
        ),
        (
            "cr0 nw without cd",
            |_| {},
            mov_to(0),
            0x2000_0001,
            Seen::Gp,
        ),
        (
            "cr0 pg with lme and no pae",
            |v| v.0.efer = 1 << 8,
            mov_to(0),
            PG_PE,
            Seen::Gp,
        ),
        (
            "cr0 pg with lme and pae",
            |v| {
                v.0.efer = 1 << 8;
                v.0.cr4 = 1 << 5;
            },
            mov_to(0),
            PG_PE,
            Seen::Done,
        ),
        ("cr4 reserved bit 15", |_| {}, mov_to(4), 1 << 15, Seen::Gp),
        ("cr4 vmxe", |_| {}, mov_to(4), 1 << 13, Seen::Gp),
        ("cr4 smxe", |_| {}, mov_to(4), 1 << 14, Seen::Gp),
        ("cr4 pke without pku", |_| {}, mov_to(4), 1 << 22, Seen::Gp),
        (
            "cr4 pcide outside ia-32e",
            |_| {},
            mov_to(4),
            1 << 17,
            Seen::Gp,
        ),
        ("cr4 pae", |_| {}, mov_to(4), 1 << 5, Seen::Done),
        ("cr8 16", |_| {}, mov_to(8), 16, Seen::Gp),
        (
            "efer lme",
            |v| v.0.gprs[1] = 0xC000_0080,
            Exit::MsrWrite,
            1 << 8,
            Seen::Done,
        ),
        (
            "efer lme with paging on",
            |v| {
                v.0.gprs[1] = 0xC000_0080;
                v.0.cr0 |= 1 << 31;
            },
            Exit::MsrWrite,
            1 << 8,
            Seen::Gp,
        ),
        (
            "efer reserved bit 2",
            |v| v.0.gprs[1] = 0xC000_0080,
            Exit::MsrWrite,
            1 << 2,
            Seen::Gp,
        ),
        (
            "efer nxe and sce",
            |v| v.0.gprs[1] = 0xC000_0080,
            Exit::MsrWrite,
            0x801,
            Seen::Done,
        ),
    ];
    for (what, prepare, exit, value, want) in rows {
        let mut v = protected(3);
        v.0.gprs[0] = *value;
        prepare(&mut v);
        let before = v.0.clone();
        assert_eq!(run(*exit, &mut v), Outcome::Resume, "{what}");
        assert_eq!(&seen(&v), want, "{what}");
        if *want == Seen::Gp {
            let mut after = v.0.clone();
            after.injected.clear();
            assert_eq!(after, before, "{what}: a refused write changes nothing");
        }
    }
}

#[test]
fn long_mode_rules_hold_through_the_handlers() {
    // Paging off in 64-bit mode, PAE off in IA-32e mode, LME off with
    // paging on: #GP, and the vCPU stays in long mode.
    for (exit, value) in [(mov_to(0), 0x11), (mov_to(4), 0)] {
        let mut v = setup(3);
        v.0.cr4 = 1 << 5;
        v.0.gprs[0] = value;
        run(exit, &mut v);
        assert_eq!(seen(&v), Seen::Gp, "{exit:?}");
        assert_eq!(v.0.efer, (1 << 8) | (1 << 10));
    }
    let mut v = setup(2);
    v.0.gprs[1] = 0xC000_0080;
    v.0.gprs[0] = 0;
    run(Exit::MsrWrite, &mut v);
    assert_eq!(seen(&v), Seen::Gp);
    // From compatibility mode paging goes off and IA-32e mode ends.
    let mut v = setup(3);
    v.0.cr4 = 1 << 5;
    v.0.segments[1].attributes = 0xC09B;
    v.0.gprs[0] = 0x11;
    run(mov_to(0), &mut v);
    assert_eq!(seen(&v), Seen::Done);
    assert_eq!((v.0.cr0, v.0.efer), (0x11, 1 << 8));
    assert_eq!(v.2.flushes, 1);
}

#[test]
fn entering_pae_paging_loads_the_pdptes_and_refuses_reserved_bits() {
    let pdpt = 0x3000usize;
    let mut v = protected(3);
    v.0.cr4 = 1 << 5;
    v.0.cr3 = pdpt as u64 | 0x1F; // bits 4:0 are ignored
    for (i, e) in [0x5001u64, 0, 0x6001, 0x7001].iter().enumerate() {
        v.2.ram[pdpt + 8 * i..pdpt + 8 * i + 8].copy_from_slice(&e.to_le_bytes());
    }
    v.0.gprs[0] = 0x8000_0011;
    run(mov_to(0), &mut v);
    assert_eq!(seen(&v), Seen::Done);
    assert_eq!(v.0.pdptes, Some([0x5001, 0, 0x6001, 0x7001]));
    assert_eq!(v.0.cr0, 0x8000_0011);
    // A present PDPTE with a reserved bit: #GP, paging stays off.
    let mut v = protected(3);
    v.0.cr4 = 1 << 5;
    v.0.cr3 = pdpt as u64;
    v.2.ram[pdpt + 8..pdpt + 16].copy_from_slice(&0x5003u64.to_le_bytes());
    v.0.gprs[0] = 0x8000_0011;
    run(mov_to(0), &mut v);
    assert_eq!(seen(&v), Seen::Gp);
    assert_eq!((v.0.cr0, v.0.pdptes), (0x11, None));
    // PDPTEs outside RAM read as all ones: #GP.
    let mut v = protected(3);
    v.0.cr4 = 1 << 5;
    v.0.cr3 = 0xFFFF_F000;
    v.0.gprs[0] = 0x8000_0011;
    run(mov_to(0), &mut v);
    assert_eq!(seen(&v), Seen::Gp);
}

#[test]
fn mov_to_and_from_cr3_that_exit_are_emulated() {
    let mut v = setup(3);
    v.0.cr4 = 1 << 5;
    v.0.gprs[0] = 1 << 45;
    run(mov_to(3), &mut v);
    assert_eq!(seen(&v), Seen::Gp, "above MAXPHYADDR (39 bits)");
    let mut v = setup(3);
    v.0.cr4 = 1 << 5;
    v.0.gprs[0] = 0x8000;
    run(mov_to(3), &mut v);
    assert_eq!((seen(&v), v.0.cr3, v.2.flushes), (Seen::Done, 0x8000, 1));
    let from = Exit::ControlRegister(CrAccess {
        cr: 3,
        kind: CrAccessKind::MovFrom(Gpr::Rbx),
    });
    run(from, &mut v);
    assert_eq!(v.0.gprs[3], 0x8000);
}

/// A vCPU whose local APIC has `level`-triggered vector 0x60 in service
/// and vector 0x40 waiting behind it, 3-byte instruction at RIP.
fn eoi_guest(level: bool) -> Exited {
    let mut v = apic_guest(0);
    v.0.instruction_len = 3;
    // Software-enabled (SVR bit 8), so it takes interrupts.
    let _ = v.1.lapic.write(0xF0, 0x1FF, 0);
    v.1.lapic.accept(0x60, level);
    assert_eq!(v.1.lapic.acknowledge(), Some(0x60));
    v.1.lapic.accept(0x40, false);
    assert_eq!(v.1.lapic.pending_vector(), None, "held behind 0x60");
    v.1.attention_at = u64::MAX;
    v
}

#[test]
fn an_edge_triggered_eoi_exit_is_ended_by_the_local_apic_alone() {
    let mut v = eoi_guest(false);
    assert!(!needs_devices_now(&Exit::ApicEoi, &v.1));
    let outcome = handle_local_exit(&Exit::ApicEoi, &mut v.0, &mut v.1, &mut v.2);
    assert_eq!(outcome, Some(Outcome::Resume));
    assert_eq!(v.0.rip, RIP + 3, "past the write, by the exit's length");
    assert_eq!(v.1.lapic.pending_vector(), Some(0x40), "0x60 ended");
    assert_eq!(v.1.attention_at, 0, "the interrupt path looks again");
    let mut table = [0u64; ExitKind::COUNT];
    let mut other = 0;
    v.1.tally.drain_into(&mut table, &mut other);
    assert_eq!(table[ExitKind::ApicEoi.index()], 1);
    assert_eq!(ExitKind::ApicEoi.name(), "APIC EOI");
    // With the devices at hand it is the same.
    let mut w = eoi_guest(false);
    assert_eq!(run(Exit::ApicEoi, &mut w), Outcome::Resume);
    assert_eq!((w.0.rip, w.1.lapic.pending_vector()), (RIP + 3, Some(0x40)));
}

#[test]
fn a_level_triggered_or_moved_eoi_exit_needs_the_devices() {
    // Level-triggered: the I/O APIC must hear of it.
    let mut v = eoi_guest(true);
    assert!(needs_devices_now(&Exit::ApicEoi, &v.1));
    assert!(!needs_devices(&Exit::ApicEoi));
    assert_eq!(
        handle_local_exit(&Exit::ApicEoi, &mut v.0, &mut v.1, &mut v.2),
        None
    );
    assert_eq!(v.1.stats, ExitStats::default(), "nothing counted");
    assert_eq!(run(Exit::ApicEoi, &mut v), Outcome::Resume);
    assert_eq!(v.0.rip, RIP + 3);
    assert_eq!(v.1.lapic.pending_vector(), Some(0x40));
    // Moved away: the reset page is nobody's, as an EPT violation there
    // would find.
    let mut v = eoi_guest(false);
    assert_eq!(wrmsr_exit(&mut v, 0x1B, 0xFEA0_0900), Outcome::Resume);
    v.0.rip = RIP;
    assert!(needs_devices_now(&Exit::ApicEoi, &v.1));
    match run(Exit::ApicEoi, &mut v) {
        Outcome::Stop(reason) => match *reason {
            StopReason::MemoryFault { fault, .. } => {
                assert_eq!(fault.gpa, GuestPhysAddr::new(0xFEE0_00B0));
                assert!(fault.write);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(v.1.lapic.eoi_at(0xFEA0_0000).is_some(), "still there");
}
