//! A new vCPU's VMCB: the intercepts the neutral exits need, the
//! permission maps, nested paging, and the guest state an image loader
//! asked for ([`write_initial`]); the state INIT and a start-up IPI leave
//! ([`start_up`]); the PAUSE filter where the CPU has one
//! ([`set_pause_filter`]). Pure: it writes a [`Vmcb`] in memory, so the
//! host tests check every field. The host save area and VMRUN are the
//! kernel's.
//!
//! What is intercepted, and why (APM Vol. 2, 15.9 to 15.14):
//! - Physical INTR and NMI end the run (the host's slice timer, kicks and
//!   its own NMIs); INIT too (a host never sends one to a CPU running a
//!   guest, and the guest stops if it happens). SMIs are not: as under
//!   VT-x, firmware's SMM handles them wherever the CPU is.
//! - CPUID (the guest's policy), HLT (the scheduler blocks the vCPU),
//!   I/O and MSRs through the permission maps, VMMCALL (hypercalls),
//!   XSETBV (XCR0 is shared with the host), INVD and WBINVD (the guest
//!   does not flush caches the host and other guests use), RDPMC (no
//!   counters are offered), MONITOR and MWAIT (hidden from its CPUID),
//!   task switches (not emulated) and shutdown (a triple fault).
//! - Every SVM instruction: VMRUN (which VMRUN requires of every VMCB),
//!   VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA. The hardware runs the
//!   guest with EFER.SVME set (VMRUN refuses a VMCB without it), so none
//!   of them would raise #UD by itself: VMLOAD and VMSAVE would reach host
//!   physical memory and CLGI would block the host's interrupts.
//! - CR8 reads and writes: the guest's task priority lives in its local
//!   APIC model, as VT-x's CR8 exiting keeps it there; with V_INTR_MASKING
//!   a CR8 write that did not exit would only change V_TPR.
//! - Not intercepted: CR0, CR3 and CR4 reads and writes, INVLPG, RDTSC(P)
//!   and exceptions. With nested paging the guest owns its paging and
//!   VMRUN checks what it runs. The price: the checks of `vcpu::cr` do
//!   not apply to CR0 and CR4, so the guest can set any CR4 bit the CPU
//!   implements even where its CPUID hides the feature (PKE, UMIP,
//!   FSGSBASE, OSXSAVE on a CPU with XSAVE, ...), and CR0.CD/NW are its
//!   own (a guest that runs with caching off runs uncached, where VT-x
//!   keeps them the host's). Only the CPU's reserved-bit checks (#GP)
//!   refuse anything. EFER goes through the MSR map, so its writes are
//!   still checked and SVME stays hidden.
//! - IRET only while an injected NMI is being handled, and VINTR only
//!   while an interrupt window is asked for (`crate::access`).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use loader::entry::{AccessRights, EntryState, Segment};
use vcpu::access::Gpr;

use crate::regs::Gprs;
use crate::vmcb::{
    attrib_from_access_rights, Intercept, SaveSegment, TlbControl, Vmcb, VmcbSegment,
};

/// EFER.SVME (APM Vol. 2, 3.1.7): must be set in the VMCB for VMRUN.
pub const EFER_SVME: u64 = 1 << 12;
/// The PAT's power-on value (APM Vol. 2, 7.8.2: WB, WT, UC-, UC, twice),
/// the guest's G_PAT.
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;
/// DR7's reset value (APM Vol. 2, 14.1.3, Table 14-1; SDM Vol. 3A,
/// Table 9-1).
pub const DR7_INIT: u64 = 0x400;
/// DR6's reset value (the same tables): every reserved bit reads 1, no
/// debug condition recorded.
pub const DR6_INIT: u64 = 0xFFFF_0FF0;
/// The CR register whose accesses are intercepted: CR8, the task priority.
const CR8: u8 = 8;
/// CR0.
const CR0: u8 = 0;
/// CR4.
const CR4: u8 = 4;
/// The #UD vector.
const UD: u8 = 6;

/// The intercepts every vCPU runs with (the module documentation says
/// why).
pub const INTERCEPTS: &[Intercept] = &[
    Intercept::Intr,
    Intercept::Nmi,
    Intercept::Init,
    Intercept::Rdpmc,
    Intercept::Cpuid,
    Intercept::Invd,
    Intercept::Hlt,
    Intercept::Invlpga,
    Intercept::IoioProt,
    Intercept::MsrProt,
    Intercept::TaskSwitch,
    Intercept::Shutdown,
    Intercept::Vmrun,
    Intercept::Vmmcall,
    Intercept::Vmload,
    Intercept::Vmsave,
    Intercept::Stgi,
    Intercept::Clgi,
    Intercept::Skinit,
    Intercept::Wbinvd,
    Intercept::Monitor,
    Intercept::Mwait,
    Intercept::MwaitArmed,
    Intercept::Xsetbv,
];

/// Where a vCPU's VMCB points: frames and numbers the kernel chose for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcbLinks {
    /// Physical address of the I/O permission map (12 KiB, 4 KiB aligned).
    pub iopm: u64,
    /// Physical address of the MSR permission map (8 KiB, 4 KiB aligned).
    pub msrpm: u64,
    /// N_CR3: the nested page tables' root.
    pub ncr3: u64,
    /// The guest's ASID (not 0, the host's).
    pub asid: u32,
    /// What the guest's TSC adds to the host's: minus the host TSC when
    /// its VM was made, the same for every vCPU of the VM.
    pub tsc_offset: u64,
}

/// The PAUSE filter (APM Vol. 2, 15.14.4): where the CPU has one (CPUID
/// 8000_000AH EDX bit 10, the threshold bit 12), a guest spinning in a
/// PAUSE loop exits ([`vcpu::exit::Exit::Pause`]) instead of burning its
/// slice while the lock's holder waits for a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PauseFilter {
    /// PAUSEs before the exit.
    pub count: u16,
    /// With the threshold feature: the longest gap in cycles between two
    /// PAUSEs of one loop (a longer one starts the count again).
    pub threshold: Option<u16>,
}

impl PauseFilter {
    /// A loop of some 3000 PAUSEs, at most 128 cycles apart (the gap the
    /// VT-x backend's PAUSE-loop exiting uses): a few microseconds of
    /// spinning, long against an exit, short against a slice.
    pub const DEFAULT: Self = Self {
        count: 3000,
        threshold: Some(128),
    };
}

/// Turns the PAUSE intercept on with `filter`, or off (`None`: without a
/// filter every PAUSE would exit, spinning or not).
pub fn set_pause_filter(vmcb: &mut Vmcb, filter: Option<PauseFilter>) {
    match filter {
        Some(f) => {
            vmcb.set_pause_filter_count(f.count);
            vmcb.set_pause_filter_threshold(f.threshold.unwrap_or(0));
            vmcb.set_intercept(Intercept::Pause, true);
        }
        None => {
            vmcb.set_intercept(Intercept::Pause, false);
            vmcb.set_pause_filter_count(0);
            vmcb.set_pause_filter_threshold(0);
        }
    }
}

/// Writes a new vCPU's VMCB (zeroed by the caller) and GPRs: the
/// intercepts, the permission maps, the ASID, the TSC offset, nested
/// paging, virtual interrupt masking, and the guest state `entry` asks
/// for.
///
/// The first VMRUN flushes the TLB of every ASID (`TLB_CONTROL` 1: the
/// ASID may have served a guest before); the kernel sets it back to
/// [`TlbControl::DoNothing`] after the first #VMEXIT. The PAUSE filter is
/// [`set_pause_filter`]'s, where the CPU has one.
pub fn write_initial(vmcb: &mut Vmcb, gprs: &mut Gprs, links: &VmcbLinks, entry: &EntryState) {
    for &intercept in INTERCEPTS {
        vmcb.set_intercept(intercept, true);
    }
    vmcb.set_cr_intercept(CR8, false, true);
    vmcb.set_cr_intercept(CR8, true, true);
    // CR0 and CR4 writes go through the neutral CR rules, so a guest
    // cannot set a bit the CPU does not offer it (CR4.VMXE on an AMD CPU)
    // or a combination the CPU refuses (CR0.PG without PE): it gets the
    // #GP the SDM and APM give. An emulator that lets such a write
    // through (QEMU 7.2) would fail the next VMRUN instead.
    vmcb.set_cr_intercept(CR0, true, true);
    vmcb.set_cr_intercept(CR4, true, true);
    // #UD: the hypercall ABI's VMCALL (VT-x's instruction) raises it on
    // AMD CPUs; the exit handles it as VMMCALL and reflects every other
    // #UD.
    vmcb.set_exception_intercept(UD, true);
    vmcb.set_iopm_base_pa(links.iopm);
    vmcb.set_msrpm_base_pa(links.msrpm);
    vmcb.set_tsc_offset(links.tsc_offset);
    vmcb.set_guest_asid(links.asid);
    vmcb.set_tlb_control(TlbControl::FlushAll);
    vmcb.set_np_enable(true);
    vmcb.set_n_cr3(links.ncr3);
    // The guest's RFLAGS.IF masks only virtual interrupts: physical ones
    // reach the host's INTR intercept whatever the guest does.
    vmcb.set_v_intr_masking(true);
    vmcb.set_g_pat(PAT_POWER_ON);
    write_guest_state(vmcb, gprs, entry);
    vmcb.mark_all_dirty();
}

/// Puts the vCPU in the state INIT and then a start-up IPI with start page
/// `vector` leave it (SDM Vol. 3A, 9.4.4 and Table 9-1; APM Vol. 2, 14.1):
/// real mode at CS selector `vector << 8`, base `vector << 12`, IP 0, the
/// GPRs 0, caching off, EFER 0 (as the guest sees it), DR6/DR7 and CR2 at
/// their reset values, no pending event, no interrupt shadow, no window
/// asked for, NMIs not blocked. Its TSC offset, intercepts, maps and the
/// SYSCALL MSRs stay as they were.
pub fn start_up(vmcb: &mut Vmcb, gprs: &mut Gprs, vector: u8) {
    let entry = EntryState::real(u16::from(vector) << 8, 0);
    write_guest_state(vmcb, gprs, &entry);
    vmcb.set_event_injection(None);
    vmcb.set_interrupt_shadow(false);
    vmcb.set_v_irq(false);
    vmcb.set_intercept(Intercept::Vintr, false);
    vmcb.set_intercept(Intercept::Iret, false);
}

/// The guest-state part: registers, segments, control and debug
/// registers, EFER (with SVME for the hardware).
fn write_guest_state(vmcb: &mut Vmcb, gprs: &mut Gprs, entry: &EntryState) {
    *gprs = Gprs::new();
    let r = &entry.regs;
    for (reg, value) in [
        (Gpr::Rbx, r.rbx),
        (Gpr::Rcx, r.rcx),
        (Gpr::Rdx, r.rdx),
        (Gpr::Rsi, r.rsi),
        (Gpr::Rdi, r.rdi),
        (Gpr::Rbp, r.rbp),
    ] {
        gprs.set(reg, value);
    }
    vmcb.set_rax(r.rax);
    vmcb.set_rsp(r.rsp);
    vmcb.set_rip(entry.rip);
    vmcb.set_rflags(entry.rflags);
    vmcb.set_cr0(entry.control.cr0);
    vmcb.set_cr3(entry.control.cr3);
    vmcb.set_cr4(entry.control.cr4);
    vmcb.set_cr2(0);
    vmcb.set_efer(entry.control.efer | EFER_SVME);
    vmcb.set_dr6(DR6_INIT);
    vmcb.set_dr7(DR7_INIT);
    let s = &entry.segments;
    for (seg, state) in [
        (SaveSegment::Es, &s.es),
        (SaveSegment::Cs, &s.cs),
        (SaveSegment::Ss, &s.ss),
        (SaveSegment::Ds, &s.ds),
        (SaveSegment::Fs, &s.fs),
        (SaveSegment::Gs, &s.gs),
        (SaveSegment::Ldtr, &s.ldtr),
        (SaveSegment::Tr, &s.tr),
    ] {
        vmcb.set_segment(seg, segment(state));
    }
    for (seg, table) in [
        (SaveSegment::Gdtr, &entry.gdtr),
        (SaveSegment::Idtr, &entry.idtr),
    ] {
        vmcb.set_segment(
            seg,
            VmcbSegment {
                selector: 0,
                attrib: 0,
                limit: u32::from(table.limit),
                base: table.base.as_u64(),
            },
        );
    }
    // VMRUN takes the CPL from the VMCB, not from SS (APM 15.5.1).
    vmcb.set_cpl(dpl(s.ss.access));
    vmcb.set_sysenter_cs(0);
    vmcb.set_sysenter_esp(0);
    vmcb.set_sysenter_eip(0);
}

/// A loader segment in the VMCB's form.
fn segment(seg: &Segment) -> VmcbSegment {
    VmcbSegment {
        selector: seg.selector,
        attrib: attrib_from_access_rights(seg.access.bits()),
        limit: seg.limit,
        base: seg.base,
    }
}

/// The DPL in access rights `access`.
fn dpl(access: AccessRights) -> u8 {
    ((access.bits() >> 5) & 3) as u8
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use crate::vmcb::CleanGroup;
    use loader::entry::{BOOT_CS, BOOT_DS, GDT_LEN};
    use loader::layout::{GDT_ADDR, PML4_ADDR};

    const LINKS: VmcbLinks = VmcbLinks {
        iopm: 0x10_0000,
        msrpm: 0x10_3000,
        ncr3: 0x20_0000,
        asid: 7,
        tsc_offset: 0u64.wrapping_sub(1_000_000),
    };

    fn initial(entry: &EntryState) -> (Box<Vmcb>, Gprs) {
        let mut vmcb = Box::new(Vmcb::new());
        let mut gprs = Gprs::new();
        vmcb.mark_all_clean();
        write_initial(&mut vmcb, &mut gprs, &LINKS, entry);
        (vmcb, gprs)
    }

    /// The reset values, against the manuals' tables: what a test that
    /// recomputed them from this module's constants would not catch.
    #[test]
    fn reset_values_match_the_manuals() {
        let facts: [(&str, u64, u64); 5] = [
            (
                "PAT (APM 7.8.2; SDM 13.12.4)",
                PAT_POWER_ON,
                0x0007_0406_0007_0406,
            ),
            ("DR7 (APM Table 14-1; SDM Table 9-1)", DR7_INIT, 0x0000_0400),
            ("DR6 (APM Table 14-1; SDM Table 9-1)", DR6_INIT, 0xFFFF_0FF0),
            ("EFER.SVME (APM 3.1.7)", EFER_SVME, 1 << 12),
            ("RFLAGS at reset", EntryState::real(0, 0).rflags, 0x2),
        ];
        for (what, value, manual) in facts {
            assert_eq!(value, manual, "{what}");
        }
        let (vmcb, _) = initial(&EntryState::long64(0x100_0000));
        assert_eq!(vmcb.g_pat(), 0x0007_0406_0007_0406);
        assert_eq!((vmcb.dr6(), vmcb.dr7()), (0xFFFF_0FF0, 0x400));
        assert_eq!(vmcb.cr2(), 0);
    }

    #[test]
    fn the_neutral_exits_are_intercepted_and_nothing_else() {
        let (vmcb, _) = initial(&EntryState::long64(0x100_0000));
        // Vector at 0x0C: INTR 0, NMI 1, INIT 3, RDPMC 15, CPUID 18,
        // INVD 22, HLT 24, INVLPGA 26, IOIO 27, MSR 28, task switch 29,
        // shutdown 31.
        let v0 = [0, 1, 3, 15, 18, 22, 24, 26, 27, 28, 29, 31]
            .iter()
            .fold(0u32, |a, b| a | (1 << b));
        assert_eq!(vmcb.intercept_vector(0), v0);
        // At 0x10: VMRUN 0, VMMCALL 1, VMLOAD 2, VMSAVE 3, STGI 4, CLGI 5,
        // SKINIT 6, WBINVD 9, MONITOR 10, MWAIT 11 and 12, XSETBV 13.
        let v1 = [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13]
            .iter()
            .fold(0u32, |a, b| a | (1 << b));
        assert_eq!(vmcb.intercept_vector(1), v1);
        assert_eq!(vmcb.intercept_vector(2), 0);
        // CR8 both ways and CR0 and CR4 writes; no DR; #UD alone of the
        // exceptions; no IRET, VINTR or PAUSE.
        assert_eq!(
            vmcb.cr_intercepts(),
            (1 << 8) | (1 << 24) | (1 << 16) | (1 << 20)
        );
        assert_eq!(vmcb.dr_intercepts(), 0);
        assert_eq!(vmcb.exception_intercepts(), 1 << 6);
        assert!(!vmcb.intercepted(Intercept::Iret));
        assert!(!vmcb.intercepted(Intercept::Vintr));
        assert!(!vmcb.intercepted(Intercept::Pause));
        assert!(!vmcb.intercepted(Intercept::Smi));
    }

    #[test]
    fn links_nested_paging_and_interrupt_masking() {
        let (vmcb, _) = initial(&EntryState::long64(0x100_0000));
        assert_eq!(vmcb.iopm_base_pa(), 0x10_0000);
        assert_eq!(vmcb.msrpm_base_pa(), 0x10_3000);
        assert_eq!(vmcb.guest_asid(), 7);
        assert_eq!(vmcb.tsc_offset(), 0u64.wrapping_sub(1_000_000));
        assert!(vmcb.np_enable());
        assert_eq!(vmcb.n_cr3(), 0x20_0000);
        assert!(vmcb.v_intr_masking());
        assert!(!vmcb.v_irq());
        assert_eq!(vmcb.tlb_control(), Some(TlbControl::FlushAll));
        assert_eq!(vmcb.event_injection(), None);
        assert_eq!(vmcb.clean_bits(), 0, "the first VMRUN loads everything");
        assert!(!vmcb.is_clean(CleanGroup::NestedPaging));
    }

    #[test]
    fn long_mode_entry_state() {
        let mut entry = EntryState::long64(0x100_0000);
        entry.regs.rsi = 0x7000;
        entry.regs.rax = 0x2BAD_B002;
        entry.regs.rbx = 0x9000;
        let (vmcb, gprs) = initial(&entry);
        assert_eq!(vmcb.rip(), 0x100_0000);
        assert_eq!(vmcb.rflags(), 2);
        assert_eq!(vmcb.rax(), 0x2BAD_B002);
        assert_eq!(gprs.get(Gpr::Rsi), Some(0x7000));
        assert_eq!(gprs.get(Gpr::Rbx), Some(0x9000));
        assert_eq!(gprs.get(Gpr::R8), Some(0));
        assert_eq!(vmcb.cr0(), 0x8000_0031);
        assert_eq!(vmcb.cr3(), PML4_ADDR.as_u64());
        assert_eq!(vmcb.cr4(), 1 << 5);
        assert_eq!(vmcb.efer(), (1 << 8) | (1 << 10) | (1 << 12));
        assert_eq!(vmcb.cpl(), 0);
        let cs = vmcb.segment(SaveSegment::Cs);
        assert_eq!(
            cs,
            VmcbSegment {
                selector: BOOT_CS,
                attrib: 0xA9B,
                limit: 0xFFFF_FFFF,
                base: 0
            }
        );
        let ss = vmcb.segment(SaveSegment::Ss);
        assert_eq!((ss.selector, ss.attrib), (BOOT_DS, 0xC93));
        let tr = vmcb.segment(SaveSegment::Tr);
        assert_eq!((tr.attrib, tr.limit), (0x8B, 0xFFFF));
        assert_eq!(vmcb.segment(SaveSegment::Ldtr).attrib, 0);
        let gdtr = vmcb.segment(SaveSegment::Gdtr);
        assert_eq!(
            (gdtr.base, gdtr.limit),
            (GDT_ADDR.as_u64(), GDT_LEN as u32 - 1)
        );
        assert_eq!(vmcb.segment(SaveSegment::Idtr).limit, 0);
    }

    #[test]
    fn protected_and_real_mode_entry_states() {
        let (vmcb, _) = initial(&EntryState::protected32(0x10_0000));
        assert_eq!(vmcb.cr0(), 0x31);
        assert_eq!(vmcb.efer(), 1 << 12);
        assert_eq!(vmcb.segment(SaveSegment::Cs).attrib, 0xC9B);
        assert_eq!(vmcb.segment(SaveSegment::Ds).attrib, 0xC93);
        let (vmcb, _) = initial(&EntryState::real(0xF000, 0xFFF0));
        assert_eq!(vmcb.cr0(), 0x6000_0010);
        assert_eq!(vmcb.efer(), 1 << 12);
        let cs = vmcb.segment(SaveSegment::Cs);
        assert_eq!((cs.selector, cs.base, cs.limit), (0xF000, 0xF_0000, 0xFFFF));
        assert_eq!(cs.attrib, 0x9B);
        assert_eq!(vmcb.rip(), 0xFFF0);
        let idtr = vmcb.segment(SaveSegment::Idtr);
        assert_eq!((idtr.base, idtr.limit), (0, 0xFFFF));
    }

    #[test]
    fn start_up_is_real_mode_at_the_vector_page_with_nothing_pending() {
        let (mut vmcb, mut gprs) = initial(&EntryState::long64(0x100_0000));
        gprs.set(Gpr::R12, 5);
        vmcb.set_rax(9);
        vmcb.set_cr2(0xDEAD);
        vmcb.set_dr7(0x4FF);
        vmcb.set_star(0x1234);
        vmcb.set_interrupt_shadow(true);
        vmcb.set_v_irq(true);
        vmcb.set_intercept(Intercept::Vintr, true);
        vmcb.set_intercept(Intercept::Iret, true);
        vmcb.set_event_injection(crate::vmcb::EventInjection::decode(0x8000_0030));
        start_up(&mut vmcb, &mut gprs, 0x9A);
        let cs = vmcb.segment(SaveSegment::Cs);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x9A00, 0x9_A000, 0xFFFF));
        assert_eq!(vmcb.segment(SaveSegment::Ds).base, 0x9_A000);
        assert_eq!((vmcb.rip(), vmcb.rax(), vmcb.rflags()), (0, 0, 2));
        assert_eq!(gprs, Gprs::new());
        assert_eq!(vmcb.cr0(), 0x6000_0010);
        assert_eq!((vmcb.cr3(), vmcb.cr4(), vmcb.cr2()), (0, 0, 0));
        assert_eq!(vmcb.efer(), EFER_SVME);
        assert_eq!((vmcb.dr6(), vmcb.dr7()), (DR6_INIT, DR7_INIT));
        assert_eq!(vmcb.cpl(), 0);
        assert!(!vmcb.interrupt_shadow() && !vmcb.v_irq());
        assert!(!vmcb.intercepted(Intercept::Vintr));
        assert!(!vmcb.intercepted(Intercept::Iret));
        assert_eq!(vmcb.event_injection(), None);
        // What INIT keeps.
        assert_eq!(vmcb.star(), 0x1234);
        assert_eq!(vmcb.tsc_offset(), LINKS.tsc_offset);
        assert!(vmcb.intercepted(Intercept::Vmrun));
        assert_eq!(vmcb.segment(SaveSegment::Gdtr).base, 0);
    }

    #[test]
    fn the_pause_filter_goes_on_and_off() {
        let (mut vmcb, _) = initial(&EntryState::long64(0x100_0000));
        set_pause_filter(&mut vmcb, Some(PauseFilter::DEFAULT));
        assert!(vmcb.intercepted(Intercept::Pause));
        assert_eq!(
            (vmcb.pause_filter_count(), vmcb.pause_filter_threshold()),
            (3000, 128)
        );
        set_pause_filter(
            &mut vmcb,
            Some(PauseFilter {
                count: 10,
                threshold: None,
            }),
        );
        assert_eq!(
            (vmcb.pause_filter_count(), vmcb.pause_filter_threshold()),
            (10, 0)
        );
        set_pause_filter(&mut vmcb, None);
        assert!(!vmcb.intercepted(Intercept::Pause));
        assert_eq!(vmcb.pause_filter_count(), 0);
    }
}
