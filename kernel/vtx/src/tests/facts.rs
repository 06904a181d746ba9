//! A new vCPU's state against the SDM's reset table and the boot
//! protocols, and the small CPU facts a guest OS reads: RF in injected
//! fault frames, CR4.OSXSAVE in CPUID.

use loader::entry::EntryState;
use vmx::controls::{
    EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls,
};
use vmx::execution::GuestControls;

use super::*;
use crate::setup::{
    init_save_area, initial_debug_registers, write_controls, write_guest_state, VmcsLinks,
    SAVE_AREA_INIT_LEN,
};

/// One segment register as the VMCS holds it: selector, base, limit, access rights.
type Seg = (u64, u64, u64, u64);

/// What the guest-state area and read shadows must hold at the first
/// instruction, written from SDM Vol. 3A, 9.1.1, Table 9-1 ("Processor
/// State After Reset") for real mode, and from the Multiboot v1 spec
/// ("Machine state") and Linux's Documentation/arch/x86/boot.rst (32- and
/// 64-bit boot protocols) for the others.
struct Expected {
    /// CR0 as the guest reads it.
    cr0: u64,
    cr3: u64,
    /// CR4 as the guest reads it.
    cr4: u64,
    efer: u64,
    rflags: u64,
    cs: Seg,
    data: Seg,
    gdtr: (u64, u64),
    idtr: (u64, u64),
    ia32e: bool,
}

const DATA16_AT_0X8000: Seg = (0x800, 0x8000, 0xFFFF, 0x93);

fn table() -> [(&'static str, EntryState, Expected); 3] {
    [
        (
            // Table 9-1: CR0 60000010H; RFLAGS 2; segments base =
            // selector * 16, limit FFFFH, present R/W accessed (code:
            // execute/read); GDTR/IDTR base 0 limit FFFFH; EFER 0. CS:IP
            // is where the image starts rather than F000:FFF0.
            "real mode at reset",
            EntryState::real(0x800, 0),
            Expected {
                cr0: 0x6000_0010,
                cr3: 0,
                cr4: 0,
                efer: 0,
                rflags: 2,
                cs: (0x800, 0x8000, 0xFFFF, 0x9B),
                data: DATA16_AT_0X8000,
                gdtr: (0, 0xFFFF),
                idtr: (0, 0xFFFF),
                ia32e: false,
            },
        ),
        (
            // Multiboot: CR0.PG clear, PE set; flat 4 GiB read/execute
            // code and read/write data; IF clear. Caching on (CD, NW
            // clear), as the firmware before a boot loader leaves it.
            "32-bit protected mode (Multiboot, Linux 32-bit)",
            EntryState::protected32(0x10_0000),
            Expected {
                cr0: 0x31,
                cr3: 0,
                cr4: 0,
                efer: 0,
                rflags: 2,
                cs: (0x10, 0, 0xFFFF_FFFF, 0xC09B),
                data: (0x18, 0, 0xFFFF_FFFF, 0xC093),
                gdtr: (0x1000, 31),
                idtr: (0, 0),
                ia32e: false,
            },
        ),
        (
            // Linux 64-bit: long mode, paging on through an identity map,
            // __BOOT_CS 64-bit, __BOOT_DS flat, interrupts off.
            "64-bit long mode (Linux 64-bit, flat long)",
            EntryState::long64(0x20_0000),
            Expected {
                cr0: 0x8000_0031,
                cr3: loader::layout::PML4_ADDR.as_u64(),
                cr4: 0x20,
                efer: 0x500,
                rflags: 2,
                cs: (0x10, 0, 0xFFFF_FFFF, 0xA09B),
                data: (0x18, 0, 0xFFFF_FFFF, 0xC093),
                gdtr: (0x1000, 31),
                idtr: (0, 0),
                ia32e: true,
            },
        ),
    ]
}

fn policy() -> CrPolicy {
    CrPolicy {
        cr0_fixed: FixedBits {
            fixed0: 0x8000_0021,
            fixed1: 0xFFFF_FFFF,
        },
        cr4_fixed: FixedBits {
            fixed0: 0x2000,
            fixed1: 0x0037_27FF,
        },
    }
}

fn seg(vmcs: &FakeVmcs, s: Segment) -> Seg {
    let (selector, base, limit, access) = segment_fields(s);
    (
        vmcs.get(selector.encoding()),
        vmcs.get(base.encoding()),
        vmcs.get(limit.encoding()),
        vmcs.get(access.encoding()),
    )
}

/// Frames for a VMCS to point at (made up: nothing reads them here).
fn links() -> VmcsLinks {
    VmcsLinks {
        io_bitmap_a: addr::HostPhysAddr::new(0x1000),
        io_bitmap_b: addr::HostPhysAddr::new(0x2000),
        msr_bitmap: addr::HostPhysAddr::new(0x3000),
        eptp: 0x405E,
        vpid: None,
        tsc_offset: 0,
        apic_access: None,
    }
}

#[test]
fn a_new_vcpu_starts_as_the_sdm_and_the_boot_protocols_say() {
    let cr = policy();
    let controls = GuestControls {
        pin: PinBasedControls::empty(),
        primary: PrimaryControls::empty(),
        secondary: SecondaryControls::empty(),
        exit: ExitControls::empty(),
        entry: EntryControls::empty(),
        vpid: false,
        apic_access: false,
    };
    let links = links();
    for (what, entry, want) in table() {
        let mut vmcs = FakeVmcs::default();
        write_controls(&mut vmcs, &controls, &links, &cr, &entry).unwrap();
        write_guest_state(&mut vmcs, &cr, &entry).unwrap();
        let mut regs = GuestRegisters::new();
        let vcpu = VmxVcpu {
            vmcs: &mut vmcs,
            regs: &mut regs,
            cr: &cr,
            cr2: None,
        };
        // The guest's view, through the backend a handler uses.
        assert_eq!(vcpu.cr0().unwrap(), want.cr0, "{what}: CR0");
        assert_eq!(vcpu.cr3().unwrap(), want.cr3, "{what}: CR3");
        assert_eq!(vcpu.cr4().unwrap(), want.cr4, "{what}: CR4");
        assert_eq!(vcpu.efer().unwrap(), want.efer, "{what}: EFER");
        assert_eq!(vcpu.rflags().unwrap(), want.rflags, "{what}: RFLAGS");
        assert_eq!(vcpu.gpr(vcpu::access::Gpr::Rsp).unwrap(), 0, "{what}: RSP");
        // CD and NW are the guest's: the hardware runs with what it reads,
        // plus only the bits VMX forces (NE; PE and PG are the guest's
        // under unrestricted guest).
        let hw_cr0 = vmcs.get(GuestNatural::Cr0.encoding());
        assert_eq!(hw_cr0, want.cr0 | 0x20, "{what}: hardware CR0");
        assert_eq!(
            vmcs.get(GuestNatural::Cr4.encoding()),
            want.cr4 | 0x2000,
            "{what}: hardware CR4 (VMXE, hidden)"
        );
        assert_eq!(seg(&vmcs, Segment::Cs), want.cs, "{what}: CS");
        for s in [
            Segment::Ds,
            Segment::Es,
            Segment::Fs,
            Segment::Gs,
            Segment::Ss,
        ] {
            assert_eq!(seg(&vmcs, s), want.data, "{what}: {s:?}");
        }
        // LDTR unusable, TR a busy TSS at 0 (what VM entry requires; the
        // guest loads its own before it needs one).
        assert_eq!(seg(&vmcs, Segment::Ldtr).3, 1 << 16, "{what}: LDTR");
        assert_eq!(seg(&vmcs, Segment::Tr), (0, 0, 0xFFFF, 0x8B), "{what}: TR");
        assert_eq!(
            (
                vmcs.get(GuestNatural::GdtrBase.encoding()),
                vmcs.get(Guest32::GdtrLimit.encoding())
            ),
            want.gdtr,
            "{what}: GDTR"
        );
        assert_eq!(
            (
                vmcs.get(GuestNatural::IdtrBase.encoding()),
                vmcs.get(Guest32::IdtrLimit.encoding())
            ),
            want.idtr,
            "{what}: IDTR"
        );
        // Table 9-1 for every mode: DR7 400H, PAT 0007040600070406H,
        // DEBUGCTL 0, SYSENTER MSRs 0, no pending debug exception, active.
        for (field, value) in [
            (GuestNatural::Dr7.encoding(), 0x400),
            (Guest64::Pat.encoding(), 0x0007_0406_0007_0406),
            (Guest64::Debugctl.encoding(), 0),
            (Guest32::SysenterCs.encoding(), 0),
            (GuestNatural::SysenterEsp.encoding(), 0),
            (GuestNatural::SysenterEip.encoding(), 0),
            (GuestNatural::PendingDebugExceptions.encoding(), 0),
            (Guest32::InterruptibilityState.encoding(), 0),
            (Guest32::ActivityState.encoding(), 0),
        ] {
            assert_eq!(vmcs.get(field), value, "{what}: {field}");
        }
        assert_eq!(
            vmcs.get(Control32::EntryControls.encoding()) & u64::from(ENTRY_IA32E) != 0,
            want.ia32e,
            "{what}: IA-32e mode guest = EFER.LMA"
        );
    }
}

#[test]
fn pause_loop_exiting_gets_its_gap_and_window_only_where_it_is_on() {
    let links = links();
    let entry = EntryState::long64(0x20_0000);
    let gap = Control32::PleGap.encoding();
    let window = Control32::PleWindow.encoding();
    assert_eq!((gap.bits(), window.bits()), (0x4020, 0x4022));
    let with = GuestControls {
        pin: PinBasedControls::empty(),
        primary: PrimaryControls::empty(),
        secondary: SecondaryControls::ENABLE_EPT | SecondaryControls::PAUSE_LOOP_EXITING,
        exit: ExitControls::empty(),
        entry: EntryControls::empty(),
        vpid: false,
        apic_access: false,
    };
    let mut vmcs = FakeVmcs::default();
    write_controls(&mut vmcs, &with, &links, &policy(), &entry).unwrap();
    assert_eq!(
        vmcs.get(Control32::SecondaryProcBasedControls.encoding()),
        u64::from(with.secondary.bits())
    );
    assert_eq!((vmcs.get(gap), vmcs.get(window)), (128, 4096));
    // Without the control the fields may not exist: they are not written.
    let without = GuestControls {
        secondary: SecondaryControls::ENABLE_EPT,
        ..with
    };
    let mut vmcs = FakeVmcs::default();
    write_controls(&mut vmcs, &without, &links, &policy(), &entry).unwrap();
    assert!(!vmcs.values.contains_key(&gap.bits()));
    assert!(!vmcs.values.contains_key(&window.bits()));
}

#[test]
fn the_apic_access_page_is_written_and_its_control_on_only_together() {
    let controls = GuestControls {
        pin: PinBasedControls::empty(),
        primary: PrimaryControls::empty(),
        secondary: SecondaryControls::ENABLE_EPT | SecondaryControls::VIRTUALIZE_APIC_ACCESSES,
        exit: ExitControls::empty(),
        entry: EntryControls::empty(),
        vpid: false,
        apic_access: true,
    };
    let links = VmcsLinks {
        apic_access: Some(addr::HostPhysAddr::new(0x7000)),
        ..links()
    };
    let entry = EntryState::long64(0x20_0000);
    let field = Control64::ApicAccessAddress.encoding();
    assert_eq!(field.bits(), 0x2014);
    let mut vmcs = FakeVmcs::default();
    write_controls(&mut vmcs, &controls, &links, &policy(), &entry).unwrap();
    assert_eq!(vmcs.get(field), 0x7000);
    assert_eq!(
        vmcs.get(Control32::SecondaryProcBasedControls.encoding()),
        u64::from(controls.secondary.bits())
    );
    // No page: the control stays off (VM entry would fail without one).
    let mut vmcs = FakeVmcs::default();
    let no_page = VmcsLinks {
        apic_access: None,
        ..links
    };
    write_controls(&mut vmcs, &controls, &no_page, &policy(), &entry).unwrap();
    assert!(!vmcs.values.contains_key(&field.bits()));
    assert_eq!(
        vmcs.get(Control32::SecondaryProcBasedControls.encoding()),
        u64::from(SecondaryControls::ENABLE_EPT.bits())
    );
}

#[test]
fn protected_and_long_entries_never_start_with_caching_off() {
    const CD_NW: u64 = (1 << 30) | (1 << 29);
    for entry in [
        EntryState::protected32(0x10_0000),
        EntryState::long64(0x20_0000),
    ] {
        let mut vmcs = FakeVmcs::default();
        write_guest_state(&mut vmcs, &policy(), &entry).unwrap();
        assert_eq!(vmcs.get(GuestNatural::Cr0.encoding()) & CD_NW, 0);
    }
    // CD and NW are never loaded by VM entry: the processor's are the
    // host's (Bochs's firmware leaves them set). The guest reads its own,
    // whatever the processor runs with.
    let cr = policy();
    assert_eq!(cr.cr0_host_mask() & CD_NW, CD_NW);
    for (entry, reads) in [
        (EntryState::protected32(0x10_0000), 0x31),
        (EntryState::real(0, 0x7C00), 0x6000_0010),
    ] {
        for processor in [0, CD_NW] {
            let mut vmcs = FakeVmcs::default();
            let mut regs = GuestRegisters::new();
            write_controls(
                &mut vmcs,
                &GuestControls {
                    pin: PinBasedControls::empty(),
                    primary: PrimaryControls::empty(),
                    secondary: SecondaryControls::empty(),
                    exit: ExitControls::empty(),
                    entry: EntryControls::empty(),
                    vpid: false,
                    apic_access: false,
                },
                &VmcsLinks {
                    io_bitmap_a: addr::HostPhysAddr::new(0),
                    io_bitmap_b: addr::HostPhysAddr::new(0),
                    msr_bitmap: addr::HostPhysAddr::new(0),
                    eptp: 0,
                    vpid: None,
                    tsc_offset: 0,
                    apic_access: None,
                },
                &cr,
                &entry,
            )
            .unwrap();
            write_guest_state(&mut vmcs, &cr, &entry).unwrap();
            let hw = vmcs.get(GuestNatural::Cr0.encoding());
            vmcs.set(GuestNatural::Cr0.encoding(), (hw & !CD_NW) | processor);
            let vcpu = VmxVcpu {
                vmcs: &mut vmcs,
                regs: &mut regs,
                cr: &cr,
                cr2: None,
            };
            assert_eq!(vcpu.cr0().unwrap(), reads, "processor CD/NW {processor:#x}");
        }
    }
    // A Multiboot guest that ORs PG | WP into what it reads gets what a
    // booted PC gives it: 0x80010011-style, not 0xE0010011, even where the
    // processor runs with CD and NW set.
    let mut v = setup(28, 0, 3);
    v.0.set(
        ControlNatural::Cr0GuestHostMask.encoding(),
        v.4.cr0_host_mask(),
    );
    v.0.set(
        GuestNatural::Cr0.encoding(),
        policy().cr0_for_hardware(0x31) | CD_NW,
    );
    v.0.set(ControlNatural::Cr0ReadShadow.encoding(), 0x31);
    v.0.set(Guest64::Efer.encoding(), 0);
    v.0.set(Guest32::CsAccessRights.encoding(), 0xC09B);
    v.1.set_rax(0x31 | (1 << 31) | (1 << 16));
    assert_eq!(run(&mut v), Outcome::Resume);
    let vcpu = VmxVcpu {
        vmcs: &mut v.0,
        regs: &mut v.1,
        cr: &v.4,
        cr2: None,
    };
    assert_eq!(vcpu.cr0().unwrap(), 0x8001_0031);
}

#[test]
fn the_first_save_image_has_the_power_on_fcw_and_mxcsr() {
    let mut area = vec![0xAAu8; 4096];
    assert!(init_save_area(&mut area));
    assert_eq!(u16::from_le_bytes([area[0], area[1]]), 0x37F, "FCW");
    assert_eq!(
        u32::from_le_bytes(area[24..28].try_into().unwrap()),
        0x1F80,
        "MXCSR"
    );
    // FSW, the abridged FTW (all empty), x87/XMM registers and the XSAVE
    // header (XSTATE_BV = XCOMP_BV = 0: every component in its initial
    // configuration, standard form) are zero.
    assert!(area[2..24].iter().all(|&b| b == 0));
    assert!(area[28..SAVE_AREA_INIT_LEN].iter().all(|&b| b == 0));
    // Beyond the header is the caller's (the kernel zeroes the block).
    assert_eq!(area[SAVE_AREA_INIT_LEN], 0xAA);
    assert!(!init_save_area(&mut [0u8; 512]), "too short for XRSTOR");
}

/// FXRSTOR and XRSTOR on this host CPU turn the image into MXCSR 0x1F80
/// and FCW 0x37F: XRSTOR's standard form loads MXCSR from the legacy
/// region even with XSTATE_BV[1] clear (SDM Vol. 1, 13.8.1). The test
/// saves the thread's own state first and puts it back.
#[test]
#[cfg(target_arch = "x86_64")]
fn the_host_cpu_restores_the_image_to_the_power_on_values() {
    #[repr(C, align(64))]
    struct Area([u8; 1024]);
    let mut image = Area([0; 1024]);
    assert!(init_save_area(&mut image.0));
    let mut saved = Area([0; 1024]);
    let (mut mxcsr, mut fcw) = (0u32, 0u16);
    // SAFETY: FXSAVE/FXRSTOR on 16-byte aligned 512-byte areas owned by
    // this function; the thread's x87/SSE state is saved first and
    // restored last, so the code around sees it unchanged.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fxrstor64 [{image}]",
            "stmxcsr [{mxcsr}]",
            "fnstcw [{fcw}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            image = in(reg) image.0.as_ptr(),
            mxcsr = in(reg) &mut mxcsr,
            fcw = in(reg) &mut fcw,
            options(nostack),
        );
    }
    assert_eq!((mxcsr, fcw), (0x1F80, 0x37F), "FXRSTOR");

    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 {
        // No OSXSAVE on this host: XRSTOR cannot run here.
        return;
    }
    // Dirty the image's MXCSR neighbours so a wrong load would show, and
    // poison this thread's MXCSR/FCW so "unchanged" cannot pass either.
    let mut saved = Area([0; 1024]);
    let (mut mxcsr, mut fcw) = (0u32, 0u16);
    let poison_mxcsr: u32 = 0x1F80 ^ (1 << 13); // round down instead
    let poison_fcw: u16 = 0x27F;
    // SAFETY: XSAVE/XRSTOR with RFBM = x87 | SSE (EDX:EAX = 3, both in
    // XCR0 wherever the OS enabled XSAVE) on 64-byte aligned areas of
    // 1 KiB, more than the 576 bytes these components take; the thread's
    // state is saved first and restored last.
    unsafe {
        core::arch::asm!(
            "xsave64 [{saved}]",
            "ldmxcsr [{pm}]",
            "fldcw [{pf}]",
            "xrstor64 [{image}]",
            "stmxcsr [{mxcsr}]",
            "fnstcw [{fcw}]",
            "xrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            image = in(reg) image.0.as_ptr(),
            pm = in(reg) &poison_mxcsr,
            pf = in(reg) &poison_fcw,
            mxcsr = in(reg) &mut mxcsr,
            fcw = in(reg) &mut fcw,
            in("eax") 3u32,
            in("edx") 0u32,
            options(nostack),
        );
    }
    assert_eq!((mxcsr, fcw), (0x1F80, 0x37F), "XRSTOR, XSTATE_BV = 0");
}

#[test]
fn the_switched_state_starts_with_dr6_at_its_reset_value_and_xcr0_x87() {
    assert_eq!(initial_debug_registers(), [0, 0, 0, 0, 0xFFFF_0FF0]);
    assert_eq!(VcpuModel::new(0, 1, 0).xcr0, 1);
}

#[test]
fn injected_faults_push_rf_and_traps_do_not() {
    // A refused MOV to CR4 (VMXE): #GP at the instruction, RF set in the
    // RFLAGS the frame gets; the other flags are kept.
    let mut v = setup(28, 4, 3);
    v.0.set(GuestNatural::Rflags.encoding(), 0x2 | (1 << 9));
    v.1.set_rax(1 << 13);
    assert_eq!(run(&mut v), Outcome::Resume);
    assert_eq!(injected(&v.0).0 & 0x7FF, (3 << 8) | 13);
    assert_eq!(
        v.0.get(GuestNatural::Rflags.encoding()),
        0x2 | (1 << 9) | (1 << 16)
    );
    assert_eq!(
        v.0.get(GuestNatural::Rip.encoding()),
        RIP,
        "faults do not skip"
    );
    // A VMX instruction: #UD, RF set too.
    let mut v = setup(19, 0, 3);
    run(&mut v);
    assert_eq!(injected(&v.0).0 & 0xFF, 6);
    assert_ne!(v.0.get(GuestNatural::Rflags.encoding()) & (1 << 16), 0);
    // Completed instructions leave RF alone.
    let mut v = setup(10, 0, 2);
    run(&mut v);
    assert_eq!(v.0.get(GuestNatural::Rflags.encoding()), 0x2);
    for vector in 0..32u8 {
        let fault = matches!(vector, 0 | 5 | 6 | 7 | 10..=14 | 16 | 17 | 19..=21);
        assert_eq!(is_fault(vector), fault, "vector {vector}");
    }
}

/// Makes the vCPU in `v` take another exit.
fn exit_again(v: &mut Exited, reason: u32, qualification: u64, len: u32) -> Outcome {
    v.0.set(ReadOnly32::ExitReason.encoding(), u64::from(reason));
    v.0.set(ReadOnlyNatural::ExitQualification.encoding(), qualification);
    v.0.set(ReadOnly32::ExitInstructionLength.encoding(), u64::from(len));
    run(v)
}

/// CPUID.1:ECX.OSXSAVE as the guest in `v` sees it now.
fn cpuid_osxsave(v: &mut Exited) -> bool {
    v.1.set_rax(1);
    v.1.set_rcx(0);
    assert_eq!(exit_again(v, 10, 0, 2), Outcome::Resume);
    v.1.rcx() & (1 << 27) != 0
}

#[test]
fn cpuid_osxsave_follows_every_way_the_guest_sets_cr4() {
    // A 64-bit guest: CR4.PAE (bit 5) stays set in every write (clearing
    // it in IA-32e mode is #GP).
    const PAE: u64 = 1 << 5;
    let mut v = setup(10, 0, 2);
    let mask = v.4.cr4_host_mask();
    v.0.set(ControlNatural::Cr4GuestHostMask.encoding(), mask);
    v.0.set(GuestNatural::Cr4.encoding(), 0x2000 | PAE);
    assert!(!cpuid_osxsave(&mut v), "CR4.OSXSAVE clear");
    // A MOV to CR4 that exits: the handler writes hardware and shadow.
    v.1.set_rax(PAE | (1 << 18));
    assert_eq!(exit_again(&mut v, 28, 4, 3), Outcome::Resume);
    assert_eq!(
        v.0.get(GuestNatural::Cr4.encoding()),
        0x2000 | PAE | (1 << 18)
    );
    assert!(cpuid_osxsave(&mut v), "set by a MOV that exited");
    // One that does not exit (OSXSAVE is the guest's bit) changes the
    // hardware CR4 only; CPUID must follow that too.
    v.0.set(GuestNatural::Cr4.encoding(), 0x2000 | PAE);
    assert!(!cpuid_osxsave(&mut v), "cleared without an exit");
    v.0.set(GuestNatural::Cr4.encoding(), 0x2000 | PAE | (1 << 18));
    assert!(cpuid_osxsave(&mut v), "set without an exit");
    // And by a MOV that exits again, to clear it.
    v.1.set_rax(PAE);
    assert_eq!(exit_again(&mut v, 28, 4, 3), Outcome::Resume);
    assert!(!cpuid_osxsave(&mut v), "cleared by a MOV that exited");
}
