//! Why a guest stopped: the reason printed in `guest <name>: stopped:
//! <reason>`. Every way a guest can end, by its own wish or because it did
//! something the hypervisor will not do for it, is one variant here.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

use super::exit::{IoAccess, NestedFault};
use super::mmio::NotEmulated;
use super::string_io::StringIoRefusal;

/// The guest state printed with a triple fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterDump {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0 as the guest sees it (the read shadow for host-owned bits).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as the guest sees it.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// CS selector.
    pub cs: u16,
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP in that order.
    pub gprs: [u64; 7],
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RIP {:#x} RSP {:#x} RFLAGS {:#x} CS {:#x} CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
            self.rip, self.rsp, self.rflags, self.cs, self.cr0, self.cr3, self.cr4, self.efer
        )?;
        for (name, value) in ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP"]
            .iter()
            .zip(self.gprs)
        {
            write!(f, " {name} {value:#x}")?;
        }
        Ok(())
    }
}

/// Why a guest stopped.
///
/// Kept small (the register dump is boxed): it travels in every exit's
/// [`super::exit::Outcome`], which the hot path returns in registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered itself off (ACPI S5 through its PM1 control
    /// register). Never restarted: it asked to be off.
    PoweredOff,
    /// The guest reset itself (port 0xCF9, the keyboard controller's reset
    /// line, the ACPI reset register): restarted where the configuration
    /// says `on_guest_stop = "restart"`, stopped otherwise.
    Reset,
    /// The guest asked to stop (hypercall `FV_EXIT`).
    Exited {
        /// Its exit code.
        code: u32,
    },
    /// HLT with interrupts disabled: nothing can ever wake it.
    HaltedWithInterruptsOff {
        /// Where it halted.
        rip: u64,
    },
    /// HLT with interrupts enabled, but the guest has no device that can
    /// interrupt it.
    HaltedWithNoWakeSource {
        /// Where it halted.
        rip: u64,
    },
    /// An access to guest-physical memory that is not the guest's RAM.
    MemoryFault {
        /// The access.
        fault: NestedFault,
        /// The guest's RAM.
        ram: addr::RamLayout,
        /// The RIP of the access.
        rip: u64,
    },
    /// An access to a device's MMIO page by an instruction that could not
    /// be read or is not one Ferrovisor emulates.
    MmioNotEmulated(Box<NotEmulated>),
    /// A triple fault (the guest's exception handling failed completely).
    TripleFault(Box<RegisterDump>),
    /// VM entry failed while loading guest state (the backend's words): a
    /// Ferrovisor bug, contained to this guest.
    EntryFailed(String),
    /// Entering the guest failed before it ran (the backend's words).
    LaunchFailed(String),
    /// A string I/O instruction (INS/OUTS) whose memory operand
    /// Ferrovisor does not emulate (device memory, page tables outside
    /// RAM).
    StringIo {
        /// The access.
        io: IoAccess,
        /// Where.
        rip: u64,
        /// Why.
        why: StringIoRefusal,
    },
    /// A hardware task switch, which Ferrovisor does not emulate.
    TaskSwitch {
        /// Where.
        rip: u64,
    },
    /// A VM exit Ferrovisor does not handle.
    UnhandledExit {
        /// The backend's exit reason number.
        reason: u32,
        /// The backend's name for it.
        name: &'static str,
        /// Its qualification or exit information.
        qualification: u64,
        /// The guest's RIP.
        rip: u64,
    },
    /// The backend failed to read or change the vCPU's state (a VMREAD or
    /// VMWRITE failed, say): a Ferrovisor bug, contained to this guest.
    Backend(String),
    /// The operator stopped it from the console monitor (`stop`, or a
    /// `restart` or `poweroff`). Never restarted by `on_guest_stop`: the
    /// operator restarts it with `restart`.
    FromMonitor,
    /// The scheduler cannot place the guest (its `cpus` name no CPU it
    /// may use), or lost track of it.
    NotSchedulable(String),
    /// The guest's second-level page tables (EPT, NPT) are malformed: a
    /// Ferrovisor bug, contained to this guest.
    NestedPagingMisconfigured {
        /// The guest-physical address whose walk found it.
        gpa: u64,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PoweredOff => f.write_str("powered off"),
            Self::Reset => f.write_str("reset (the guest rebooted)"),
            Self::Exited { code } => write!(f, "exited with code {code}"),
            Self::HaltedWithInterruptsOff { rip } => {
                write!(f, "halted forever (HLT with interrupts off at RIP {rip:#x})")
            }
            Self::HaltedWithNoWakeSource { rip } => write!(
                f,
                "halted forever (HLT at RIP {rip:#x} with interrupts on, but no device can interrupt it)"
            ),
            Self::MemoryFault { fault, ram, rip } => {
                let place = if ram.offset_of(fault.gpa).is_none() {
                    "outside its RAM"
                } else {
                    "inside RAM that its page tables do not allow"
                };
                write!(
                    f,
                    "{} at guest-physical {} {place} ({ram}) at RIP {rip:#x} ({fault})",
                    fault.access(),
                    fault.gpa
                )
            }
            Self::MmioNotEmulated(refused) => refused.fmt(f),
            Self::TripleFault(dump) => write!(f, "triple fault: {dump}"),
            // The exit handlers answer every guest write VM entry would
            // refuse with the guest's own fault, so no guest reaches this.
            Self::EntryFailed(failure) => write!(
                f,
                "hypervisor bug: {failure} (no guest should be able to cause this; please report it)"
            ),
            Self::LaunchFailed(e) => write!(f, "VM entry failed: {e}"),
            Self::StringIo { io, rip, why } => {
                write!(f, "{io} at RIP {rip:#x} not emulated: {why}")
            }
            Self::TaskSwitch { rip } => {
                write!(f, "hardware task switch at RIP {rip:#x}: not supported")
            }
            Self::UnhandledExit {
                reason,
                name,
                qualification,
                rip,
            } => write!(
                f,
                "unhandled VM exit {reason} ({name}), qualification {qualification:#x}, at RIP {rip:#x}"
            ),
            Self::Backend(e) => write!(f, "hypervisor error: {e}"),
            Self::FromMonitor => f.write_str("stopped from the monitor"),
            Self::NotSchedulable(why) => write!(f, "cannot be scheduled: {why}"),
            Self::NestedPagingMisconfigured { gpa } => write!(
                f,
                "hypervisor error: second-level page tables misconfigured at guest-physical {gpa:#x}"
            ),
        }
    }
}
