//! The VM-execution, VM-exit and VM-entry control values Ferrovisor runs
//! every guest with, computed from the CPU's capability MSRs by one pure
//! function ([`GuestControls::compute`]) that the host tests drive with
//! real and made-up MSR values.
//!
//! The choice, and why (SDM Vol. 3C, 25.6 "VM-Execution Control Fields",
//! 25.7 "VM-Exit Control Fields", 25.8 "VM-Entry Control Fields"):
//! - External interrupts and NMIs exit, so the host keeps its CPU; the
//!   VMX-preemption timer ends each slice.
//! - HLT exits (the scheduler blocks the vCPU); MWAIT, MONITOR and RDPMC
//!   exit (the guest's CPUID does not offer them, so they inject #UD/#GP).
//! - Port I/O and MSR accesses go through bitmaps, so each port and MSR is
//!   decided one by one (`bitmaps`).
//! - EPT, unrestricted guest (real-mode and unpaged guests run natively),
//!   WBINVD exiting, RDTSCP and INVPCID (so guests that find them in CPUID
//!   can use them), XSAVES/XRSTORS left off (the guest's CPUID may offer them
//!   only where the host lets XSS through: not yet), VPID where offered.
//! - PAUSE-loop exiting where offered (never required): a vCPU spinning
//!   on a lock whose holder is descheduled exits instead of burning its
//!   slice, with the PLE_Gap and PLE_Window of [`PauseLoop::DEFAULT`]
//!   ([`GuestControls::pause_loop`]). Plain PAUSE exiting stays off: every
//!   PAUSE would exit, spinning or not.
//! - CR3 accesses, INVLPG and RDTSC do not exit: with EPT the guest owns
//!   its paging, and nothing is gained by trapping them. CR8 accesses exit:
//!   without a TPR shadow a guest's MOV to CR8 would set the physical
//!   LAPIC's task priority, which is the host's.
//! - VM exits return to a 64-bit host, acknowledge the interrupt that
//!   caused them, save and load IA32_EFER and IA32_PAT; VM entries load the
//!   guest's EFER and PAT, so both can pass straight through to the guest.
//!   Exits save and entries load the debug controls (DR7 and
//!   IA32_DEBUGCTL): the guest's breakpoints are its own, while every VM
//!   exit leaves the host DR7 = 400H and DEBUGCTL = 0 (SDM Vol. 3C,
//!   28.5.1). The TRUE capability MSRs let both be 0, and with them 0 the
//!   guest's DR7 was the host's 400H after every exit.
//!   Where offered, exits save the preemption timer's count, so a slice
//!   spans the exits inside it.
//!   "IA-32e mode guest" is not part of the fixed set: it follows the
//!   guest's EFER.LMA ([`GuestControls::entry_for`]).

use core::fmt;

use crate::caps::VmxCapabilities;
use crate::controls::{
    AllowedSettings, EntryControls, ExitControls, PinBasedControls, PrimaryControls,
    SecondaryControls,
};

/// The five control fields of a guest's VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestControls {
    /// Pin-based VM-execution controls.
    pub pin: PinBasedControls,
    /// Primary processor-based VM-execution controls.
    pub primary: PrimaryControls,
    /// Secondary processor-based VM-execution controls.
    pub secondary: SecondaryControls,
    /// VM-exit controls.
    pub exit: ExitControls,
    /// VM-entry controls for a guest outside IA-32e mode (see
    /// [`GuestControls::entry_for`]).
    pub entry: EntryControls,
    /// Whether VPID is enabled (the secondary control "enable VPID").
    pub vpid: bool,
    /// Whether "virtualize APIC accesses" is on (SDM Vol. 3C, 30.4): the
    /// guests' accesses to the page their EPT maps to the APIC-access
    /// address exit as APIC accesses (reason 44), with the register's
    /// offset and the kind of access in the qualification, rather than as
    /// EPT violations. With "use TPR shadow" off every access exits; none
    /// is virtualized.
    pub apic_access: bool,
}

/// The two VM-execution fields that tune PAUSE-loop exiting (SDM Vol.
/// 3C, 25.6.13 "Controls for PAUSE-Loop Exiting"), both in TSC ticks: at
/// CPL 0, a PAUSE less than `gap` after the previous one continues a
/// loop, and a loop that has lasted more than `window` since its first
/// PAUSE exits (reason 40). The count starts again at the first PAUSE
/// after VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PauseLoop {
    /// PLE_Gap: the longest time between two PAUSEs of one loop.
    pub gap: u32,
    /// PLE_Window: how long a loop spins before it exits.
    pub window: u32,
}

impl PauseLoop {
    /// KVM's defaults (`ple_gap` 128, `ple_window` 4096): a gap well above
    /// one pass of a spin-wait loop and well below the time between two
    /// unrelated PAUSEs, and a window of one or two microseconds at a few GHz,
    /// short against a lock holder's critical section being preempted for
    /// a whole slice, long against an exit's cost.
    pub const DEFAULT: Self = Self {
        gap: 128,
        window: 4096,
    };
}

/// Which control field a [`ControlError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlField {
    /// Pin-based VM-execution controls.
    PinBased,
    /// Primary processor-based VM-execution controls.
    Primary,
    /// Secondary processor-based VM-execution controls.
    Secondary,
    /// VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

impl fmt::Display for ControlField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PinBased => "pin-based VM-execution",
            Self::Primary => "primary processor-based VM-execution",
            Self::Secondary => "secondary processor-based VM-execution",
            Self::Exit => "VM-exit",
            Self::Entry => "VM-entry",
        })
    }
}

/// Why the controls Ferrovisor needs cannot be set on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Controls Ferrovisor needs at 1 may not be 1 (`bits` are the
    /// offending controls of `field`, named by [`ControlError`]'s Display).
    Unsupported {
        /// The control field.
        field: ControlField,
        /// The controls that may not be 1.
        bits: u32,
    },
    /// Controls Ferrovisor needs at 0 must be 1 on this CPU.
    ForcedOn {
        /// The control field.
        field: ControlField,
        /// The controls that may not be 0.
        bits: u32,
    },
}

/// The names of the set bits of `bits` in the bitflags type `F`.
fn write_names<F: bitflags::Flags<Bits = u32>>(
    f: &mut fmt::Formatter<'_>,
    bits: u32,
) -> fmt::Result {
    let mut first = true;
    for bit in 0..32 {
        if bits & (1 << bit) == 0 {
            continue;
        }
        if !first {
            f.write_str(", ")?;
        }
        first = false;
        let flag = F::from_bits_retain(1 << bit);
        match F::FLAGS
            .iter()
            .find(|named| named.value().bits() == flag.bits())
        {
            Some(named) => write!(f, "{} (bit {bit})", named.name())?,
            None => write!(f, "bit {bit}")?,
        }
    }
    Ok(())
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, bits, what) = match *self {
            Self::Unsupported { field, bits } => (field, bits, "may not be 1"),
            Self::ForcedOn { field, bits } => (field, bits, "may not be 0"),
        };
        write!(f, "{field} control ")?;
        match field {
            ControlField::PinBased => write_names::<PinBasedControls>(f, bits)?,
            ControlField::Primary => write_names::<PrimaryControls>(f, bits)?,
            ControlField::Secondary => write_names::<SecondaryControls>(f, bits)?,
            ControlField::Exit => write_names::<ExitControls>(f, bits)?,
            ControlField::Entry => write_names::<EntryControls>(f, bits)?,
        }
        write!(
            f,
            " {what} on this CPU, and Ferrovisor needs it the other way"
        )
    }
}

/// Applies `settings` to `need | optional_if_allowed`, checking that none of
/// `must_stay_off` is forced on.
fn choose<F: bitflags::Flags<Bits = u32> + Copy>(
    settings: &AllowedSettings<F>,
    field: ControlField,
    need: F,
    optional: F,
    must_stay_off: F,
) -> Result<F, ControlError> {
    let wanted = need.union(optional.intersection(settings.may_be_one));
    let value = settings
        .apply(wanted)
        .map_err(|refused| ControlError::Unsupported {
            field,
            bits: refused.bits(),
        })?;
    let forced = value.intersection(must_stay_off);
    if forced.is_empty() {
        Ok(value)
    } else {
        Err(ControlError::ForcedOn {
            field,
            bits: forced.bits(),
        })
    }
}

impl GuestControls {
    /// The controls for this CPU.
    ///
    /// # Errors
    ///
    /// [`ControlError`] naming the first field and controls that cannot be
    /// set the way Ferrovisor needs ([`VmxCapabilities::check_required`]
    /// has normally ruled this out already).
    pub fn compute(caps: &VmxCapabilities) -> Result<Self, ControlError> {
        let pin = choose(
            &caps.pin_based,
            ControlField::PinBased,
            PinBasedControls::EXTERNAL_INTERRUPT_EXITING
                | PinBasedControls::NMI_EXITING
                | PinBasedControls::ACTIVATE_PREEMPTION_TIMER,
            PinBasedControls::empty(),
            PinBasedControls::PROCESS_POSTED_INTERRUPTS,
        )?;
        let primary = choose(
            &caps.primary,
            ControlField::Primary,
            PrimaryControls::HLT_EXITING
                | PrimaryControls::MWAIT_EXITING
                | PrimaryControls::MONITOR_EXITING
                | PrimaryControls::RDPMC_EXITING
                | PrimaryControls::CR8_LOAD_EXITING
                | PrimaryControls::CR8_STORE_EXITING
                | PrimaryControls::USE_IO_BITMAPS
                | PrimaryControls::USE_MSR_BITMAPS
                | PrimaryControls::USE_TSC_OFFSETTING
                | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS,
            PrimaryControls::empty(),
            PrimaryControls::CR3_LOAD_EXITING
                | PrimaryControls::CR3_STORE_EXITING
                | PrimaryControls::USE_TPR_SHADOW
                | PrimaryControls::UNCONDITIONAL_IO_EXITING
                | PrimaryControls::RDTSC_EXITING
                | PrimaryControls::INTERRUPT_WINDOW_EXITING
                | PrimaryControls::NMI_WINDOW_EXITING
                | PrimaryControls::MONITOR_TRAP_FLAG
                | PrimaryControls::PAUSE_EXITING,
        )?;
        let secondary = choose(
            &caps.secondary,
            ControlField::Secondary,
            SecondaryControls::ENABLE_EPT
                | SecondaryControls::UNRESTRICTED_GUEST
                | SecondaryControls::WBINVD_EXITING,
            SecondaryControls::ENABLE_VPID
                | SecondaryControls::ENABLE_RDTSCP
                | SecondaryControls::ENABLE_INVPCID
                | SecondaryControls::PAUSE_LOOP_EXITING
                | SecondaryControls::VIRTUALIZE_APIC_ACCESSES,
            SecondaryControls::VIRTUALIZE_X2APIC_MODE
                | SecondaryControls::APIC_REGISTER_VIRTUALIZATION
                | SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY
                | SecondaryControls::DESCRIPTOR_TABLE_EXITING,
        )?;
        let exit = choose(
            &caps.exit,
            ControlField::Exit,
            ExitControls::HOST_ADDRESS_SPACE_SIZE
                | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT
                | ExitControls::SAVE_IA32_EFER
                | ExitControls::LOAD_IA32_EFER
                | ExitControls::SAVE_IA32_PAT
                | ExitControls::LOAD_IA32_PAT
                | ExitControls::SAVE_DEBUG_CONTROLS,
            ExitControls::SAVE_PREEMPTION_TIMER_VALUE,
            ExitControls::LOAD_IA32_PERF_GLOBAL_CTRL,
        )?;
        let entry = choose(
            &caps.entry,
            ControlField::Entry,
            EntryControls::LOAD_IA32_EFER
                | EntryControls::LOAD_IA32_PAT
                | EntryControls::LOAD_DEBUG_CONTROLS,
            EntryControls::empty(),
            EntryControls::IA32E_MODE_GUEST
                | EntryControls::ENTRY_TO_SMM
                | EntryControls::DEACTIVATE_DUAL_MONITOR_TREATMENT
                | EntryControls::LOAD_IA32_PERF_GLOBAL_CTRL,
        )?;
        Ok(Self {
            pin,
            primary,
            secondary,
            exit,
            entry,
            vpid: secondary.contains(SecondaryControls::ENABLE_VPID),
            apic_access: secondary.contains(SecondaryControls::VIRTUALIZE_APIC_ACCESSES),
        })
    }

    /// PLE_Gap and PLE_Window to write, where PAUSE-loop exiting is on
    /// (the fields exist only on CPUs that offer it: `None` elsewhere).
    pub fn pause_loop(&self) -> Option<PauseLoop> {
        self.secondary
            .contains(SecondaryControls::PAUSE_LOOP_EXITING)
            .then_some(PauseLoop::DEFAULT)
    }

    /// The VM-entry controls for a guest whose IA32_EFER.LMA is `long_mode`
    /// ("IA-32e mode guest" must equal it, SDM Vol. 3C, 27.3.1.1).
    pub fn entry_for(&self, long_mode: bool) -> EntryControls {
        let mut entry = self.entry;
        entry.set(EntryControls::IA32E_MODE_GUEST, long_mode);
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{RawVmxMsrs, TrueControlMsrs};

    /// The capability MSRs Bochs 2.7 reports for `corei7_skylake_x`,
    /// trimmed to what decoding needs; values follow the SDM's layout.
    fn skylake() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x00DA_0400_0000_002B | (1 << 55),
            pinbased_ctls: 0x0000_007F_0000_0016,
            procbased_ctls: 0xFFF9_FFFE_0401_E172,
            exit_ctls: 0x01FF_FFFF_0003_6DFF,
            entry_ctls: 0x0003_FFFF_0000_11FF,
            misc: 0x0000_0000_0000_0000,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_27FF,
            vmcs_enum: 0x2E,
            procbased_ctls2: Some(0x0055_FFFF_0000_0000),
            ept_vpid_cap: Some(0x0000_0F01_0673_4141),
            vmfunc: None,
            true_ctls: Some(TrueControlMsrs {
                pinbased: 0x0000_007F_0000_0016,
                procbased: 0xFFF9_FFFE_0400_6172,
                exit: 0x01FF_FFFF_0003_6DFB,
                entry: 0x0003_FFFF_0000_11FB,
            }),
        }
    }

    #[test]
    fn skylake_gets_the_full_set() {
        let caps = VmxCapabilities::decode(&skylake());
        let c = GuestControls::compute(&caps).unwrap();
        assert!(c.pin.contains(
            PinBasedControls::EXTERNAL_INTERRUPT_EXITING
                | PinBasedControls::NMI_EXITING
                | PinBasedControls::ACTIVATE_PREEMPTION_TIMER
        ));
        // The must-be-one bits of the TRUE MSR (1, 2, 4) are kept.
        assert_eq!(c.pin.bits() & 0x16, 0x16);
        assert!(c.primary.contains(
            PrimaryControls::HLT_EXITING
                | PrimaryControls::USE_IO_BITMAPS
                | PrimaryControls::USE_MSR_BITMAPS
                | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS
        ));
        // The TRUE MSR lets CR3 exiting go; the plain one would not.
        assert!(!c.primary.contains(PrimaryControls::CR3_LOAD_EXITING));
        assert!(c
            .secondary
            .contains(SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST));
        assert!(c.vpid);
        assert!(c
            .exit
            .contains(ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::LOAD_IA32_EFER));
        assert!(!c.entry.contains(EntryControls::IA32E_MODE_GUEST));
        assert!(c
            .entry_for(true)
            .contains(EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_IA32_EFER));
        assert_eq!(c.entry_for(false), c.entry);
        // The TRUE MSRs let the debug controls be 0 (allowed-0 bit 2 clear
        // in both); the guest's DR7 and DEBUGCTL need them.
        assert_eq!(skylake().true_ctls.unwrap().exit & 0x4, 0);
        assert!(c.exit.contains(ExitControls::SAVE_DEBUG_CONTROLS));
        assert!(c.entry.contains(EntryControls::LOAD_DEBUG_CONTROLS));
    }

    #[test]
    fn pause_loop_exiting_where_offered() {
        let c = GuestControls::compute(&VmxCapabilities::decode(&skylake())).unwrap();
        assert!(c.secondary.contains(SecondaryControls::PAUSE_LOOP_EXITING));
        assert_eq!(
            c.pause_loop(),
            Some(PauseLoop {
                gap: 128,
                window: 4096
            })
        );
        // Plain PAUSE exiting (primary bit 30) is offered too, and off.
        assert_ne!(skylake().procbased_ctls & (1 << (32 + 30)), 0);
        assert!(!c.primary.contains(PrimaryControls::PAUSE_EXITING));
    }

    #[test]
    fn pause_loop_exiting_is_optional() {
        let mut raw = skylake();
        // Clear "PAUSE-loop exiting" (bit 10) from the allowed 1-settings.
        raw.procbased_ctls2 = raw.procbased_ctls2.map(|v| v & !(1 << (32 + 10)));
        let caps = VmxCapabilities::decode(&raw);
        assert!(!caps.pause_loop_exiting());
        let c = GuestControls::compute(&caps).unwrap();
        assert!(!c.secondary.contains(SecondaryControls::PAUSE_LOOP_EXITING));
        assert_eq!(c.pause_loop(), None);
        // Everything else is as with it.
        let with = GuestControls::compute(&VmxCapabilities::decode(&skylake())).unwrap();
        assert_eq!(
            c.secondary | SecondaryControls::PAUSE_LOOP_EXITING,
            with.secondary
        );
        assert_eq!(
            (c.pin, c.primary, c.exit, c.entry),
            (with.pin, with.primary, with.exit, with.entry)
        );
    }

    #[test]
    fn apic_accesses_are_virtualized_where_offered_without_the_tpr_shadow() {
        let c = GuestControls::compute(&VmxCapabilities::decode(&skylake())).unwrap();
        assert!(c.apic_access);
        assert!(c
            .secondary
            .contains(SecondaryControls::VIRTUALIZE_APIC_ACCESSES));
        // Every access exits: nothing is virtualized in a virtual-APIC page.
        assert!(!c.primary.contains(PrimaryControls::USE_TPR_SHADOW));
        assert!(!c.secondary.intersects(
            SecondaryControls::APIC_REGISTER_VIRTUALIZATION
                | SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY
                | SecondaryControls::VIRTUALIZE_X2APIC_MODE
        ));
        // Optional: without it the APIC's page is left unmapped (EPT
        // violations), as before.
        let mut raw = skylake();
        raw.procbased_ctls2 = raw.procbased_ctls2.map(|v| v & !(1 << 32));
        let without = GuestControls::compute(&VmxCapabilities::decode(&raw)).unwrap();
        assert!(!without.apic_access);
        assert_eq!(
            without.secondary | SecondaryControls::VIRTUALIZE_APIC_ACCESSES,
            c.secondary
        );
    }

    #[test]
    fn vpid_is_optional() {
        let mut raw = skylake();
        // Clear "enable VPID" (bit 5) from the allowed 1-settings.
        raw.procbased_ctls2 = raw.procbased_ctls2.map(|v| v & !(1 << (32 + 5)));
        let c = GuestControls::compute(&VmxCapabilities::decode(&raw)).unwrap();
        assert!(!c.vpid);
        assert!(!c.secondary.contains(SecondaryControls::ENABLE_VPID));
    }

    #[test]
    fn a_missing_needed_control_is_named() {
        let mut raw = skylake();
        // No "unrestricted guest" (secondary bit 7).
        raw.procbased_ctls2 = raw.procbased_ctls2.map(|v| v & !(1 << (32 + 7)));
        let err = GuestControls::compute(&VmxCapabilities::decode(&raw)).unwrap_err();
        assert_eq!(
            err,
            ControlError::Unsupported {
                field: ControlField::Secondary,
                bits: 1 << 7
            }
        );
        assert_eq!(
            err.to_string(),
            "secondary processor-based VM-execution control UNRESTRICTED_GUEST (bit 7) \
             may not be 1 on this CPU, and Ferrovisor needs it the other way"
        );
    }

    #[test]
    fn a_control_forced_on_is_named() {
        let mut raw = skylake();
        // Without TRUE controls the plain MSR forces CR3-load/store exiting.
        raw.basic &= !(1 << 55);
        raw.true_ctls = None;
        let err = GuestControls::compute(&VmxCapabilities::decode(&raw)).unwrap_err();
        assert_eq!(
            err,
            ControlError::ForcedOn {
                field: ControlField::Primary,
                bits: (1 << 15) | (1 << 16)
            }
        );
        assert!(err
            .to_string()
            .contains("CR3_LOAD_EXITING (bit 15), CR3_STORE_EXITING (bit 16)"));
    }
}
