//! Small CPU facts a guest OS reads, through the neutral handlers: CPUID's
//! OSXSAVE after the guest's own MOV to CR4, IA32_MISC_ENABLE's writable
//! bits, and VMCALL numbers other hypervisors' guests use by habit.

use super::*;

fn mov_to_cr4() -> Exit {
    Exit::ControlRegister(CrAccess {
        cr: 4,
        kind: CrAccessKind::MovTo(Gpr::Rax),
    })
}

fn osxsave(v: &mut Exited) -> bool {
    v.0.gprs[0] = 1;
    v.0.instruction_len = 2;
    assert_eq!(run(Exit::Cpuid, v), Outcome::Resume);
    v.0.gprs[1] & (1 << 27) != 0
}

#[test]
fn osxsave_follows_the_cr4_the_guest_moved_in() {
    let mut v = setup(3);
    assert!(!osxsave(&mut v));
    // The guest's MOV to CR4 sets OSXSAVE (and OSFXSR), handled here: the
    // next CPUID says so, though leaf 1 was answered (and cached) before.
    v.0.gprs[0] = (1 << 18) | (1 << 9) | (1 << 5);
    v.0.instruction_len = 3;
    assert_eq!(run(mov_to_cr4(), &mut v), Outcome::Resume);
    assert_eq!(v.0.cr4, (1 << 18) | (1 << 9) | (1 << 5));
    assert!(osxsave(&mut v), "set by the guest's MOV to CR4");
    v.0.gprs[0] = 1 << 5;
    v.0.instruction_len = 3;
    run(mov_to_cr4(), &mut v);
    assert!(!osxsave(&mut v), "cleared by the guest's MOV to CR4");
}

#[test]
fn misc_enable_fast_strings_write_is_taken() {
    let mut v = setup(2);
    // RDMSR, clear fast strings, WRMSR, RDMSR: what an OS does.
    v.0.gprs[1] = 0x1A0;
    assert_eq!(run(Exit::MsrRead, &mut v), Outcome::Resume);
    assert_eq!(v.0.gprs[0], 0x1801);
    v.0.gprs[0] = 0x1800 | (1 << 16);
    v.0.gprs[2] = 0;
    assert_eq!(run(Exit::MsrWrite, &mut v), Outcome::Resume);
    assert!(v.0.injected.is_empty(), "{:?}", v.0.injected);
    v.0.gprs[0] = 0;
    run(Exit::MsrRead, &mut v);
    assert_eq!(v.0.gprs[0], 0x1800 | (1 << 16));
    // XD disable (bit 34, EDX bit 2) cannot be honoured: #GP.
    v.0.gprs[0] = 0x1800;
    v.0.gprs[2] = 1 << 2;
    run(Exit::MsrWrite, &mut v);
    assert_eq!(
        v.0.injected,
        [Event::Exception {
            vector: 13,
            error_code: Some(0)
        }]
    );
}

#[test]
fn vmcall_with_another_hypervisors_number_returns_unknown_and_goes_on() {
    for (number, long) in [(0u64, true), (0, false), (1, true), (0x4000_0000, false)] {
        let mut v = setup(3);
        if !long {
            v.0.efer = 0;
            v.0.segments[1].attributes = 0xC09B;
        }
        v.0.gprs[0] = number;
        v.0.gprs[3] = 5;
        assert_eq!(run(Exit::Hypercall, &mut v), Outcome::Resume, "{number:#x}");
        let expected = if long { u64::MAX } else { 0xFFFF_FFFF };
        assert_eq!(v.0.gprs[0], expected, "{number:#x}");
        assert_eq!(v.0.rip, RIP + 3, "the guest goes on after the VMCALL");
    }
    let mut v = setup(3);
    v.0.gprs[0] = crate::hypercall::EXIT;
    v.0.gprs[3] = 5;
    assert_eq!(
        run(Exit::Hypercall, &mut v),
        Outcome::stop(StopReason::Exited { code: 5 })
    );
}
