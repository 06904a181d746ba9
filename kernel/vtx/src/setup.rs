//! A new vCPU's VMCS: the control fields and the guest-state area, written
//! from the computed controls, the frames of its bitmaps and EPT, and the
//! entry state an image loader produced. Pure: it writes through
//! [`VmcsAccess`], so the host tests check every field on a fake VMCS. The
//! host-state area depends on the running CPU and is the kernel's.

use addr::HostPhysAddr;
use vmx::controls::SecondaryControls;
use vmx::error::VmFail;
use vmx::execution::GuestControls;
use vmx::vmcs::{
    Control16, Control32, Control64, ControlNatural, Guest16, Guest32, Guest64, GuestNatural,
    VmcsAccess,
};

use super::CrPolicy;
use loader::entry::{EntryState, Segment};

/// IA32_EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// IA32_PAT's power-on value (SDM Vol. 3A, 13.12.4: WB, WT, UC-, UC, twice).
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;
/// DR7's power-on value (SDM Vol. 3A, 9.1.1, Table 9-1).
pub const DR7_INIT: u64 = 0x400;
/// DR6's power-on value (SDM Vol. 3A, 9.1.1, Table 9-1): every
/// reserved bit reads 1, no debug condition is recorded.
pub const DR6_INIT: u64 = 0xFFFF_0FF0;
/// The x87 control word a vCPU starts with: 0x37F, every exception masked,
/// 64-bit precision, round to nearest. It is what FNINIT leaves and what
/// XRSTOR's init optimisation loads (SDM Vol. 1, 13.6), and what firmware
/// leaves every OS; the bare power-on value of Table 9-1 (0x0040) is
/// never seen by software that runs after an FNINIT.
pub const FCW_INIT: u16 = 0x37F;
/// MXCSR's power-on value (SDM Vol. 3A, 9.1.1, Table 9-1): every SIMD
/// exception masked, round to nearest, no flags.
pub const MXCSR_INIT: u32 = 0x1F80;
/// The first bytes of an XSAVE area that [`init_save_area`] writes: the
/// 512-byte legacy region and the 64-byte XSAVE header (SDM Vol. 1, 13.4).
pub const SAVE_AREA_INIT_LEN: usize = 576;
/// Offsets in the legacy region (SDM Vol. 1, Table 13-1): FCW, MXCSR, and
/// in the XSAVE header XSTATE_BV and XCOMP_BV.
const FCW_OFFSET: usize = 0;
const MXCSR_OFFSET: usize = 24;
const XSTATE_BV_OFFSET: usize = 512;
const XCOMP_BV_OFFSET: usize = 520;

/// Writes a vCPU's first XSAVE/FXSAVE image into `area` (at least
/// [`SAVE_AREA_INIT_LEN`] bytes, which this zeroes first): the power-on x87
/// and SSE state, loadable by FXRSTOR and by the standard form of XRSTOR.
///
/// FXRSTOR loads the legacy region as it is, so FCW and MXCSR must hold
/// their initial values (a zeroed image would unmask every exception).
/// XRSTOR with XSTATE_BV = 0 and XCOMP_BV = 0 (the standard form, SDM
/// Vol. 1, 13.8.1) puts every component it restores in its initial
/// configuration (x87: FCW 0x37F, empty stack; XMM, YMM, ...: zero), except
/// MXCSR: the standard form loads MXCSR from the legacy region whenever it
/// restores SSE or AVX state, whatever XSTATE_BV says. So the one image
/// serves both: MXCSR is written, and FCW too for FXRSTOR.
///
/// Returns `false` (writing nothing) when `area` is too short.
pub fn init_save_area(area: &mut [u8]) -> bool {
    let Some(image) = area.get_mut(..SAVE_AREA_INIT_LEN) else {
        return false;
    };
    image.fill(0);
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = image.get_mut(at..at.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    };
    put(FCW_OFFSET, &FCW_INIT.to_le_bytes());
    put(MXCSR_OFFSET, &MXCSR_INIT.to_le_bytes());
    // Every component in its initial configuration, standard form.
    put(XSTATE_BV_OFFSET, &0u64.to_le_bytes());
    put(XCOMP_BV_OFFSET, &0u64.to_le_bytes());
    true
}

/// DR0-DR3 and DR6 of a new vCPU, in the order the switched state keeps
/// them: no breakpoint addresses, DR6 at its power-on value.
pub const fn initial_debug_registers() -> [u64; 5] {
    [0, 0, 0, 0, DR6_INIT]
}

/// Where a vCPU's VMCS points: frames the kernel allocated for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsLinks {
    /// I/O bitmap A (ports 0..=0x7FFF).
    pub io_bitmap_a: HostPhysAddr,
    /// I/O bitmap B (ports 0x8000..=0xFFFF).
    pub io_bitmap_b: HostPhysAddr,
    /// The MSR bitmap.
    pub msr_bitmap: HostPhysAddr,
    /// The EPTP of the guest's EPT.
    pub eptp: u64,
    /// The vCPU's VPID (non-zero) where VPID is enabled.
    pub vpid: Option<u16>,
    /// The APIC-access page (SDM Vol. 3C, 30.4), where "virtualize APIC
    /// accesses" is on: the frame the guest's EPT maps its local APIC's
    /// page to. Without one the control is left off.
    pub apic_access: Option<HostPhysAddr>,
    /// What the guest's TSC adds to the host's (SDM Vol. 3C, 26.6.5):
    /// minus the host TSC when its VM was made, so the guest's TSC starts
    /// near zero; the same on every CPU, whose TSCs agree, so it never runs
    /// backwards when the vCPU moves.
    pub tsc_offset: u64,
}

/// Writes the VM-execution, VM-exit and VM-entry control fields.
pub fn write_controls<V: VmcsAccess>(
    vmcs: &mut V,
    controls: &GuestControls,
    links: &VmcsLinks,
    cr: &CrPolicy,
    entry: &EntryState,
) -> Result<(), VmFail> {
    let long_mode = entry.control.efer & EFER_LMA != 0;
    vmcs.write(Control32::PinBasedControls, controls.pin.bits())?;
    vmcs.write(Control32::PrimaryProcBasedControls, controls.primary.bits())?;
    let mut secondary = controls.secondary;
    match links.apic_access {
        Some(page) if controls.apic_access => {
            vmcs.write(Control64::ApicAccessAddress, page.as_u64())?;
        }
        _ => secondary.remove(SecondaryControls::VIRTUALIZE_APIC_ACCESSES),
    }
    vmcs.write(Control32::SecondaryProcBasedControls, secondary.bits())?;
    vmcs.write(Control32::ExitControls, controls.exit.bits())?;
    vmcs.write(
        Control32::EntryControls,
        controls.entry_for(long_mode).bits(),
    )?;
    vmcs.write(Control32::ExceptionBitmap, 0)?;
    vmcs.write(Control32::PageFaultErrorCodeMask, 0)?;
    vmcs.write(Control32::PageFaultErrorCodeMatch, 0)?;
    vmcs.write(Control32::Cr3TargetCount, 0)?;
    vmcs.write(Control32::ExitMsrStoreCount, 0)?;
    vmcs.write(Control32::ExitMsrLoadCount, 0)?;
    vmcs.write(Control32::EntryMsrLoadCount, 0)?;
    vmcs.write(Control32::EntryInterruptionInfo, 0)?;
    vmcs.write(Control64::IoBitmapA, links.io_bitmap_a.as_u64())?;
    vmcs.write(Control64::IoBitmapB, links.io_bitmap_b.as_u64())?;
    vmcs.write(Control64::MsrBitmaps, links.msr_bitmap.as_u64())?;
    vmcs.write(Control64::Eptp, links.eptp)?;
    vmcs.write(Control64::TscOffset, links.tsc_offset)?;
    if let (true, Some(vpid)) = (controls.vpid, links.vpid) {
        vmcs.write(Control16::Vpid, vpid)?;
    }
    // The PLE fields exist only where the control may be 1.
    if let Some(ple) = controls.pause_loop() {
        vmcs.write(Control32::PleGap, ple.gap)?;
        vmcs.write(Control32::PleWindow, ple.window)?;
    }
    vmcs.write(ControlNatural::Cr0GuestHostMask, cr.cr0_host_mask())?;
    vmcs.write(ControlNatural::Cr4GuestHostMask, cr.cr4_host_mask())?;
    vmcs.write(ControlNatural::Cr0ReadShadow, entry.control.cr0)?;
    vmcs.write(ControlNatural::Cr4ReadShadow, entry.control.cr4)?;
    Ok(())
}

/// Writes the guest-state area for the vCPU's first instruction.
pub fn write_guest_state<V: VmcsAccess>(
    vmcs: &mut V,
    cr: &CrPolicy,
    entry: &EntryState,
) -> Result<(), VmFail> {
    vmcs.write(GuestNatural::Cr0, cr.cr0_for_hardware(entry.control.cr0))?;
    vmcs.write(GuestNatural::Cr3, entry.control.cr3)?;
    vmcs.write(GuestNatural::Cr4, cr.cr4_for_hardware(entry.control.cr4))?;
    vmcs.write(GuestNatural::Dr7, DR7_INIT)?;
    vmcs.write(GuestNatural::Rsp, entry.regs.rsp)?;
    vmcs.write(GuestNatural::Rip, entry.rip)?;
    vmcs.write(GuestNatural::Rflags, entry.rflags)?;
    let s = &entry.segments;
    segment(
        vmcs,
        &s.es,
        Guest16::EsSelector,
        GuestNatural::EsBase,
        Guest32::EsLimit,
        Guest32::EsAccessRights,
    )?;
    segment(
        vmcs,
        &s.cs,
        Guest16::CsSelector,
        GuestNatural::CsBase,
        Guest32::CsLimit,
        Guest32::CsAccessRights,
    )?;
    segment(
        vmcs,
        &s.ss,
        Guest16::SsSelector,
        GuestNatural::SsBase,
        Guest32::SsLimit,
        Guest32::SsAccessRights,
    )?;
    segment(
        vmcs,
        &s.ds,
        Guest16::DsSelector,
        GuestNatural::DsBase,
        Guest32::DsLimit,
        Guest32::DsAccessRights,
    )?;
    segment(
        vmcs,
        &s.fs,
        Guest16::FsSelector,
        GuestNatural::FsBase,
        Guest32::FsLimit,
        Guest32::FsAccessRights,
    )?;
    segment(
        vmcs,
        &s.gs,
        Guest16::GsSelector,
        GuestNatural::GsBase,
        Guest32::GsLimit,
        Guest32::GsAccessRights,
    )?;
    segment(
        vmcs,
        &s.ldtr,
        Guest16::LdtrSelector,
        GuestNatural::LdtrBase,
        Guest32::LdtrLimit,
        Guest32::LdtrAccessRights,
    )?;
    segment(
        vmcs,
        &s.tr,
        Guest16::TrSelector,
        GuestNatural::TrBase,
        Guest32::TrLimit,
        Guest32::TrAccessRights,
    )?;
    vmcs.write(GuestNatural::GdtrBase, entry.gdtr.base.as_u64())?;
    vmcs.write(Guest32::GdtrLimit, u32::from(entry.gdtr.limit))?;
    vmcs.write(GuestNatural::IdtrBase, entry.idtr.base.as_u64())?;
    vmcs.write(Guest32::IdtrLimit, u32::from(entry.idtr.limit))?;
    vmcs.write(Guest64::Efer, entry.control.efer)?;
    vmcs.write(Guest64::Pat, PAT_POWER_ON)?;
    vmcs.write(Guest64::Debugctl, 0)?;
    vmcs.write(Guest64::VmcsLinkPointer, u64::MAX)?;
    vmcs.write(Guest32::SysenterCs, 0)?;
    vmcs.write(GuestNatural::SysenterEsp, 0)?;
    vmcs.write(GuestNatural::SysenterEip, 0)?;
    vmcs.write(Guest32::InterruptibilityState, 0)?;
    vmcs.write(Guest32::ActivityState, 0)?;
    vmcs.write(GuestNatural::PendingDebugExceptions, 0)?;
    Ok(())
}

fn segment<V: VmcsAccess>(
    vmcs: &mut V,
    seg: &Segment,
    selector: Guest16,
    base: GuestNatural,
    limit: Guest32,
    access: Guest32,
) -> Result<(), VmFail> {
    vmcs.write(selector, seg.selector)?;
    vmcs.write(base, seg.base)?;
    vmcs.write(limit, seg.limit)?;
    vmcs.write(access, seg.access.bits())
}
