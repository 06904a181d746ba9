//! VM-exit handling, vendor-neutral: one decoded [`Exit`] in, one
//! [`Outcome`] out.
//!
//! A backend runs the vCPU, decodes why it came back into an [`Exit`] and
//! hands it to [`handle_exit`] together with the vCPU's state behind
//! [`VcpuAccess`]. The handlers act on the vCPU's device models and
//! registers and tell the caller whether to resume the guest, switch to
//! another vCPU, or stop the guest and why. They never panic on anything
//! the guest controls: whatever the guest does ends in an outcome, at worst
//! [`Outcome::Stop`]. The few things that need the machine (host CPUID,
//! XCR0, reading guest RAM, printing) come through [`Platform`], so the
//! host tests drive every path with a fake backend and a fake platform.
//! Nothing here names VT-x or SVM: a second backend reuses every handler.

use alloc::boxed::Box;
use alloc::string::ToString;
use core::fmt;

use addr::GuestPhysAddr;

use super::access::{Event, Gpr, Segment, VcpuAccess, SEGMENT_L};
use super::cpuid::{guest_cpuid, CpuidResult, GuestCpuidContext, CRYSTAL_HZ};
use super::cr;
use super::hypercall::{self, Hypercall};
use super::mmio::{self, MmioError, MmioOutcome};
use super::msr::VirtualMsrs;
use super::msr::{IA32_APIC_BASE, IA32_EFER, IA32_TSC_ADJUST};
use super::stop::{RegisterDump, StopReason};
use super::string_io::{self, GuestFault, StringIoOutcome};
use super::vm::{attention_at, is_lapic_page, VcpuMmio, VmDevices};
use devices::bus::VmRequest;
use devices::lapic::{ApicEffect, LocalApic, IA32_TSC_DEADLINE_MSR};
pub use devices::lapic::{EOI_OFFSET, LAPIC_BASE};

/// The direction of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// IN/INS: the guest reads the port.
    In,
    /// OUT/OUTS: the guest writes the port.
    Out,
}

/// The address size of an instruction: the width of the registers a
/// string instruction counts and indexes with (CX/ECX/RCX, SI/ESI/RSI,
/// DI/EDI/RDI), SDM Vol. 1, 3.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressSize {
    /// 16-bit addressing.
    Bits16,
    /// 32-bit addressing.
    Bits32,
    /// 64-bit addressing (64-bit mode only).
    Bits64,
}

impl AddressSize {
    /// The bits of a register this address size uses.
    pub const fn mask(self) -> u64 {
        match self {
            Self::Bits16 => 0xFFFF,
            Self::Bits32 => 0xFFFF_FFFF,
            Self::Bits64 => u64::MAX,
        }
    }
}

/// A port access that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoAccess {
    /// The first port.
    pub port: u16,
    /// Bytes per access: 1, 2 or 4.
    pub size: u8,
    /// IN or OUT.
    pub direction: IoDirection,
    /// A string instruction (INS/OUTS).
    pub string: bool,
    /// REP-prefixed.
    pub rep: bool,
    /// INS/OUTS: the instruction's address size (VT-x: the VM-exit
    /// instruction information; SVM: EXITINFO1 A16/A32/A64). Not used for
    /// IN/OUT.
    pub address_size: AddressSize,
    /// OUTS: the segment of the source operand (DS unless a prefix
    /// overrides it). INS always writes ES:(E/R)DI, whatever this says; not
    /// used for IN/OUT.
    pub segment: Segment,
}

impl IoAccess {
    /// IN or OUT of `size` bytes at `port` (not a string instruction).
    pub const fn port(port: u16, size: u8, direction: IoDirection) -> Self {
        Self {
            port,
            size,
            direction,
            string: false,
            rep: false,
            address_size: AddressSize::Bits64,
            segment: Segment::Ds,
        }
    }
}

impl fmt::Display for IoAccess {
    /// `REP OUTS 1 byte to port 0x3f8` or `IN 4 bytes from port 0xcfc`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rep {
            f.write_str("REP ")?;
        }
        let (insn, prep) = match self.direction {
            IoDirection::In => ("IN", "from"),
            IoDirection::Out => ("OUT", "to"),
        };
        let string = if self.string { "S" } else { "" };
        let unit = if self.size == 1 { "byte" } else { "bytes" };
        write!(
            f,
            "{insn}{string} {} {unit} {prep} port {:#x}",
            self.size, self.port
        )
    }
}

/// An access to guest-physical memory that second-level translation (EPT,
/// NPT) did not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NestedFault {
    /// The guest-physical address.
    pub gpa: GuestPhysAddr,
    /// The access was a read.
    pub read: bool,
    /// The access was a write.
    pub write: bool,
    /// The access was an instruction fetch.
    pub fetch: bool,
    /// What the translation allowed (read, write, execute), where the
    /// backend reports it.
    pub allowed: Option<[bool; 3]>,
}

impl fmt::Display for NestedFault {
    /// `nested page fault at guest-physical 0x10000000: write, allowed ---`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nested page fault at guest-physical {}: ", self.gpa)?;
        f.write_str(self.access())?;
        if let Some([r, w, x]) = self.allowed {
            let flag = |on: bool, c: &'static str| if on { c } else { "-" };
            write!(
                f,
                ", allowed {}{}{}",
                flag(r, "r"),
                flag(w, "w"),
                flag(x, "x")
            )?;
        }
        Ok(())
    }
}

impl NestedFault {
    /// `instruction fetch`, `write` or `read`.
    pub fn access(&self) -> &'static str {
        if self.fetch {
            "instruction fetch"
        } else if self.write {
            "write"
        } else {
            "read"
        }
    }
}

/// What a control-register access that exited did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrAccessKind {
    /// MOV to the register from a GPR.
    MovTo(Gpr),
    /// MOV from the register into a GPR.
    MovFrom(Gpr),
    /// LMSW with this 16-bit source (CR0 only).
    Lmsw(u16),
    /// CLTS (CR0 only).
    Clts,
}

/// A control-register access that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrAccess {
    /// The control register: 0, 3, 4 or 8.
    pub cr: u8,
    /// What the instruction did.
    pub kind: CrAccessKind,
}

/// Why a vCPU came back to the hypervisor, whatever the backend. Small
/// and `Copy` (16 bytes, two registers): it is made and matched on every
/// exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// CPUID (leaf in EAX, subleaf in ECX).
    Cpuid,
    /// IN, OUT, INS or OUTS.
    Io(IoAccess),
    /// RDMSR (the MSR in ECX).
    MsrRead,
    /// WRMSR (the MSR in ECX, the value in EDX:EAX).
    MsrWrite,
    /// A hypercall (VMCALL, VMMCALL).
    Hypercall,
    /// HLT.
    Hlt,
    /// A write to the local APIC's EOI register at its reset address
    /// ([`LAPIC_BASE`] + [`EOI_OFFSET`]), known from the exit without the
    /// instruction (VT-x's APIC-access exit names the register and the
    /// kind of access): the written value does not matter to an EOI
    /// (SDM Vol. 3A, 11.8.5), and the backend's instruction length is
    /// valid ([`VcpuAccess::skip_instruction`]). Any other access to that
    /// page comes as an [`Exit::NestedPageFault`].
    ApicEoi,
    /// A guest-physical access second-level translation refused (the
    /// fields of a [`NestedFault`], laid out flat so that `Exit` stays 16
    /// bytes and travels in registers; [`Exit::nested_fault`] gives the
    /// struct).
    NestedPageFault {
        /// The guest-physical address.
        gpa: GuestPhysAddr,
        /// The access was a read.
        read: bool,
        /// The access was a write.
        write: bool,
        /// The access was an instruction fetch.
        fetch: bool,
        /// What the translation allowed (read, write, execute), where the
        /// backend reports it.
        allowed: Option<[bool; 3]>,
    },
    /// Second-level tables the hardware cannot walk (a hypervisor bug).
    NestedPagingMisconfigured {
        /// The guest-physical address whose walk found it.
        gpa: u64,
    },
    /// The guest can take an external interrupt now (requested with
    /// [`VcpuAccess::request_interrupt_window`]).
    InterruptWindow,
    /// The guest's NMI handler returns (its IRET, after an NMI the backend
    /// injected): NMIs may be injected again once it has completed. For a
    /// backend whose hardware does not track the guest's NMI blocking
    /// (SVM without virtual NMIs), which intercepts that IRET; the vCPU
    /// resumes at it.
    NmiWindow,
    /// An interrupt for the host arrived while the guest ran.
    ExternalInterrupt,
    /// An NMI arrived while the guest ran.
    Nmi,
    /// The slice's timer ran out.
    SliceEnd,
    /// The guest's exception handling failed completely.
    TripleFault,
    /// MOV to/from CR0, CR3, CR4 or CR8, LMSW or CLTS.
    ControlRegister(CrAccess),
    /// XSETBV (XCR number in ECX, value in EDX:EAX).
    Xsetbv,
    /// INVD or WBINVD.
    CacheFlush,
    /// An instruction of a virtualization extension, or one whose CPUID
    /// bit the guest does not see (GETSEC, MONITOR, MWAIT): #UD.
    VirtualizationInstruction,
    /// RDPMC.
    Rdpmc,
    /// A hardware task switch.
    TaskSwitch,
    /// The guest spun in a PAUSE loop at CPL 0 for longer than the
    /// backend's window (VT-x PAUSE-loop exiting, SVM's PAUSE filter): most
    /// likely waiting for a lock whose holder is not running. RIP is still
    /// on the PAUSE.
    Pause,
    /// The guest raised an exception that the backend intercepts only to
    /// look at it (SVM's #UD, for a VMCALL written for VT-x) and that was
    /// not for the hypervisor: the backend has set it up for delivery to
    /// the guest again, and the vCPU resumes.
    Reflected,
    /// VM entry failed on the guest's state
    /// ([`VcpuAccess::entry_failure`] says why in words).
    EntryFailed {
        /// The backend's raw exit reason.
        reason: u32,
        /// The backend's qualification or exit information.
        qualification: u64,
    },
    /// An exit the backend does not decode into any of the above
    /// ([`VcpuAccess::exit_name`] names it).
    Unknown {
        /// The backend's raw reason number.
        reason: u32,
        /// The backend's qualification or exit information.
        qualification: u64,
    },
}

/// The kinds of exit, for counting: [`Exit::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitKind {
    /// [`Exit::Cpuid`].
    Cpuid,
    /// [`Exit::Io`].
    Io,
    /// [`Exit::MsrRead`].
    MsrRead,
    /// [`Exit::MsrWrite`].
    MsrWrite,
    /// [`Exit::Hypercall`].
    Hypercall,
    /// [`Exit::Hlt`].
    Hlt,
    /// [`Exit::NestedPageFault`] and [`Exit::NestedPagingMisconfigured`].
    NestedPageFault,
    /// [`Exit::InterruptWindow`] and [`Exit::NmiWindow`].
    InterruptWindow,
    /// [`Exit::ExternalInterrupt`].
    ExternalInterrupt,
    /// [`Exit::Nmi`].
    Nmi,
    /// [`Exit::SliceEnd`].
    SliceEnd,
    /// [`Exit::TripleFault`].
    TripleFault,
    /// [`Exit::ControlRegister`].
    ControlRegister,
    /// [`Exit::Xsetbv`].
    Xsetbv,
    /// [`Exit::CacheFlush`].
    CacheFlush,
    /// [`Exit::VirtualizationInstruction`] and [`Exit::Rdpmc`].
    RefusedInstruction,
    /// [`Exit::TaskSwitch`].
    TaskSwitch,
    /// [`Exit::Pause`].
    Pause,
    /// [`Exit::Reflected`].
    Reflected,
    /// [`Exit::ApicEoi`].
    ApicEoi,
    /// [`Exit::EntryFailed`].
    EntryFailed,
    /// [`Exit::Unknown`].
    Unknown,
}

impl ExitKind {
    /// How many kinds there are (indices `0..COUNT`).
    pub const COUNT: usize = 22;

    /// Every kind, by index.
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::Cpuid,
        ExitKind::Io,
        ExitKind::MsrRead,
        ExitKind::MsrWrite,
        ExitKind::Hypercall,
        ExitKind::Hlt,
        ExitKind::NestedPageFault,
        ExitKind::InterruptWindow,
        ExitKind::ExternalInterrupt,
        ExitKind::Nmi,
        ExitKind::SliceEnd,
        ExitKind::TripleFault,
        ExitKind::ControlRegister,
        ExitKind::Xsetbv,
        ExitKind::CacheFlush,
        ExitKind::RefusedInstruction,
        ExitKind::TaskSwitch,
        ExitKind::Pause,
        ExitKind::Reflected,
        ExitKind::ApicEoi,
        ExitKind::EntryFailed,
        ExitKind::Unknown,
    ];

    /// The kind with index `i`.
    pub fn from_index(i: usize) -> Option<ExitKind> {
        Self::ALL.get(i).copied()
    }

    /// Its index in a table of counts.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// `CPUID`, `I/O`, ... as the figures print it.
    pub const fn name(self) -> &'static str {
        match self {
            ExitKind::Cpuid => "CPUID",
            ExitKind::Io => "I/O",
            ExitKind::MsrRead => "RDMSR",
            ExitKind::MsrWrite => "WRMSR",
            ExitKind::Hypercall => "hypercall",
            ExitKind::Hlt => "HLT",
            ExitKind::NestedPageFault => "nested page fault",
            ExitKind::InterruptWindow => "interrupt window",
            ExitKind::ExternalInterrupt => "external interrupt",
            ExitKind::Nmi => "NMI",
            ExitKind::SliceEnd => "slice end",
            ExitKind::TripleFault => "triple fault",
            ExitKind::ControlRegister => "control register",
            ExitKind::Xsetbv => "XSETBV",
            ExitKind::CacheFlush => "INVD/WBINVD",
            ExitKind::RefusedInstruction => "refused instruction",
            ExitKind::TaskSwitch => "task switch",
            ExitKind::Pause => "PAUSE loop",
            ExitKind::Reflected => "reflected exception",
            ExitKind::ApicEoi => "APIC EOI",
            ExitKind::EntryFailed => "entry failure",
            ExitKind::Unknown => "unknown",
        }
    }
}

const _: () = assert!(ExitKind::Unknown as usize + 1 == ExitKind::COUNT);

impl Exit {
    /// A nested page fault with the fields of `fault`.
    pub fn nested(fault: NestedFault) -> Exit {
        Exit::NestedPageFault {
            gpa: fault.gpa,
            read: fault.read,
            write: fault.write,
            fetch: fault.fetch,
            allowed: fault.allowed,
        }
    }

    /// The fault, for an [`Exit::NestedPageFault`].
    pub fn nested_fault(&self) -> Option<NestedFault> {
        match *self {
            Exit::NestedPageFault {
                gpa,
                read,
                write,
                fetch,
                allowed,
            } => Some(NestedFault {
                gpa,
                read,
                write,
                fetch,
                allowed,
            }),
            _ => None,
        }
    }

    /// The exit's kind, for counting.
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::Cpuid => ExitKind::Cpuid,
            Exit::Io(_) => ExitKind::Io,
            Exit::MsrRead => ExitKind::MsrRead,
            Exit::MsrWrite => ExitKind::MsrWrite,
            Exit::Hypercall => ExitKind::Hypercall,
            Exit::Hlt => ExitKind::Hlt,
            Exit::NestedPageFault { .. } | Exit::NestedPagingMisconfigured { .. } => {
                ExitKind::NestedPageFault
            }
            Exit::InterruptWindow | Exit::NmiWindow => ExitKind::InterruptWindow,
            Exit::ExternalInterrupt => ExitKind::ExternalInterrupt,
            Exit::Nmi => ExitKind::Nmi,
            Exit::SliceEnd => ExitKind::SliceEnd,
            Exit::TripleFault => ExitKind::TripleFault,
            Exit::ControlRegister(_) => ExitKind::ControlRegister,
            Exit::Xsetbv => ExitKind::Xsetbv,
            Exit::CacheFlush => ExitKind::CacheFlush,
            Exit::VirtualizationInstruction | Exit::Rdpmc => ExitKind::RefusedInstruction,
            Exit::TaskSwitch => ExitKind::TaskSwitch,
            Exit::Pause => ExitKind::Pause,
            Exit::Reflected => ExitKind::Reflected,
            Exit::ApicEoi => ExitKind::ApicEoi,
            Exit::EntryFailed { .. } => ExitKind::EntryFailed,
            Exit::Unknown { .. } => ExitKind::Unknown,
        }
    }
}

/// What the caller does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume this vCPU.
    Resume,
    /// Its slice is over: run the next vCPU.
    Preempted,
    /// It executed HLT with interrupts enabled: block it until an event
    /// for it arrives.
    Halted,
    /// An interrupt for the host (a kick from another CPU) arrived while
    /// it ran, acknowledged on exit: the caller ends it at the local APIC,
    /// does what the kick asks, and resumes the vCPU.
    HostInterrupt,
    /// It spins waiting for something another vCPU holds (a PAUSE loop):
    /// give the physical CPU to another runnable vCPU, if there is one,
    /// and run this one again after it; its RIP is unchanged, so it
    /// resumes at the PAUSE and goes on spinning until the lock is free.
    Yield,
    /// It executed HLT with interrupts disabled, in a guest with several
    /// vCPUs (an application processor parking itself, as operating
    /// systems do with CPUs they take offline or at shutdown): only an
    /// NMI, INIT or start-up IPI can wake it, and the other vCPUs go on.
    /// RIP is past the HLT. (In a guest with one vCPU this is a stop.)
    Parked,
    /// Stop the guest (boxed: a stop happens once a guest, and a small
    /// `Outcome` comes back in registers on every other exit).
    Stop(Box<StopReason>),
}

impl Outcome {
    /// Stop the guest for `reason`.
    pub fn stop(reason: StopReason) -> Self {
        Self::Stop(Box::new(reason))
    }
}

/// What the exit handler needs from the machine.
pub trait Platform {
    /// CPUID on the host CPU.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;
    /// The XCR0 bits the host supports (CPUID.(EAX=0DH,ECX=0):EDX:EAX), 0
    /// without XSAVE.
    fn xcr0_supported(&self) -> u64;
    /// Loads XCR0 with a value already checked against
    /// [`Platform::xcr0_supported`].
    fn load_xcr0(&mut self, value: u64);
    /// Copies guest RAM at `gpa` into `buf`; false (and `buf` unspecified)
    /// when any byte is outside RAM.
    fn read_guest(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> bool;
    /// Copies `bytes` into guest RAM at `gpa`; false (and nothing written)
    /// when any byte is outside RAM.
    fn write_guest(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> bool;
    /// Where the guest's RAM lies (from 0, and past 3 GiB from 4 GiB up).
    fn ram(&self) -> addr::RamLayout;
    /// Prints one line of guest console output.
    fn guest_line(&mut self, line: &str);
    /// The guest's clock now, in TSC ticks (device timers run on it).
    fn now(&self) -> u64;
    /// Drops the guest's cached linear translations (after an emulated
    /// control-register write that changes paging).
    fn flush_guest_tlb(&mut self);
}

/// A vCPU's exits by kind since they were last handed to the scheduler's
/// figures (once a slice): counting here costs the exit path an add, and
/// the hand-over visits only the kinds seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitTally {
    /// CPUID exits, counted apart so the hottest exit pays one add.
    cpuid: u32,
    counts: [u32; ExitKind::COUNT],
    /// Bit k: `counts[k]` is not zero.
    seen: u32,
}

const _: () = assert!(ExitKind::COUNT <= 32);

impl ExitTally {
    /// Counts one exit of kind `kind`.
    #[inline]
    pub fn count(&mut self, kind: ExitKind) {
        let k = kind.index();
        if let Some(n) = self.counts.get_mut(k) {
            *n = n.saturating_add(1);
            self.seen |= 1 << k;
        }
    }

    /// Counts `n` exits of kind `kind`.
    pub fn count_many(&mut self, kind: ExitKind, n: u64) {
        let k = kind.index();
        if let Some(c) = self.counts.get_mut(k) {
            *c = c.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            self.seen |= 1 << k;
        }
    }

    /// Counts one CPUID exit.
    #[inline(always)]
    pub fn count_cpuid(&mut self) {
        self.cpuid = self.cpuid.wrapping_add(1);
    }

    /// Counts `n` CPUID exits.
    pub fn count_cpuids(&mut self, n: u64) {
        self.cpuid = self
            .cpuid
            .wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Adds every non-zero count to `table` (by kind index; a kind past
    /// the table's end goes to `other`) and starts over.
    pub fn drain_into(&mut self, table: &mut [u64], other: &mut u64) {
        let cpuid = core::mem::take(&mut self.cpuid);
        if cpuid != 0 {
            let slot = match table.get_mut(ExitKind::Cpuid.index()) {
                Some(t) => t,
                None => &mut *other,
            };
            *slot = slot.saturating_add(u64::from(cpuid));
        }
        let mut seen = core::mem::take(&mut self.seen);
        while seen != 0 {
            let k = seen.trailing_zeros() as usize;
            seen &= seen.wrapping_sub(1);
            let n = self.counts.get_mut(k).map_or(0, core::mem::take);
            let slot = match table.get_mut(k) {
                Some(t) => t,
                None => &mut *other,
            };
            *slot = slot.saturating_add(u64::from(n));
        }
    }
}

/// Counts of what a vCPU did, for the log and later the monitor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// Every VM exit.
    pub exits: u64,
    /// CPUID exits.
    pub cpuid: u64,
    /// I/O instruction exits.
    pub io: u64,
    /// Writes to ports with no device (ignored).
    pub io_writes_ignored: u64,
    /// Reads from ports with no device (all ones).
    pub io_reads_unclaimed: u64,
    /// MSR exits.
    pub msr: u64,
    /// Exceptions injected into the guest (#UD, #GP).
    pub injected: u64,
    /// External interrupts and NMIs that arrived while the guest ran.
    pub host_events: u64,
    /// Hypercalls.
    pub hypercalls: u64,
}

impl ExitStats {
    /// Adds `other`'s counts (a guest's are the sum of its vCPUs').
    pub fn add(&mut self, other: &ExitStats) {
        for (a, b) in [
            (&mut self.exits, other.exits),
            (&mut self.cpuid, other.cpuid),
            (&mut self.io, other.io),
            (&mut self.io_writes_ignored, other.io_writes_ignored),
            (&mut self.io_reads_unclaimed, other.io_reads_unclaimed),
            (&mut self.msr, other.msr),
            (&mut self.injected, other.injected),
            (&mut self.host_events, other.host_events),
            (&mut self.hypercalls, other.hypercalls),
        ] {
            *a = a.saturating_add(b);
        }
    }
}

/// The per-vCPU state the exit handlers work on besides the backend's.
#[derive(Debug)]
pub struct VcpuModel {
    /// Index of this vCPU in its guest.
    pub index: u32,
    /// How many vCPUs the guest has.
    pub vcpus: u32,
    /// Emulated MSRs.
    pub msrs: VirtualMsrs,
    /// The guest's XCR0.
    pub xcr0: u64,
    /// The vCPU's local APIC (CR8 is its task priority).
    pub lapic: LocalApic,
    /// The guest's IA32_TSC_ADJUST: what its writes added to its TSC.
    pub tsc_adjust: u64,
    /// When the vCPU next needs the interrupt path
    /// ([`attention_at`](super::vm::attention_at)), as of its last exit.
    pub attention_at: u64,
    /// What the vCPU did.
    pub stats: ExitStats,
    /// Its exits by kind, not yet handed to the scheduler.
    pub tally: ExitTally,
    /// The guest's CPUID answers already worked out.
    pub cpuid_cache: CpuidCache,
    /// The TSC rate (Hz) the guest is told through CPUID; 0 where unknown.
    pub tsc_hz: u64,
}

/// The answers [`guest_cpuid`] gave this vCPU, so a guest that asks the
/// same leaf again (a CPUID loop, a kernel serialising with CPUID) costs a
/// lookup instead of the policy and two host CPUIDs.
///
/// The guest's answer is a pure function of the leaf, the subleaf, the
/// vCPU's place in its guest, the TSC rate and CR4.OSXSAVE/PKE, given the
/// host's answers, which do not change while Ferrovisor runs. A cache
/// belongs to one vCPU, so only the CR4 bits are kept with an answer;
/// leaf 0DH describes the XSAVE area for the current XCR0, so it is never
/// cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidCache {
    slots: [Option<CachedCpuid>; CPUID_CACHE_SLOTS],
}

/// One cached answer with what it was answered for.
#[derive(Clone, Copy, Debug)]
struct CachedCpuid {
    leaf: u32,
    subleaf: u32,
    /// CR4.OSXSAVE and CR4.PKE when it was answered: the only parts of the
    /// context that change while the vCPU lives (the cache is the vCPU's).
    cr4: u64,
    result: CpuidResult,
}

/// Direct-mapped by the leaf's low bits (with the extended and hypervisor
/// range bits folded in).
const CPUID_CACHE_SLOTS: usize = 16;

impl CpuidCache {
    /// The slot of `leaf`: its low four bits, with the extended and
    /// hypervisor range bits (31, 30) folded into bits 3 and 2.
    fn slot(leaf: u32) -> usize {
        ((leaf as usize) ^ ((leaf >> 28) as usize)) % CPUID_CACHE_SLOTS
    }

    /// The guest's answer for `leaf`/`subleaf` in context `ctx`, from the
    /// cache or worked out by [`guest_cpuid`] with `host`.
    pub fn lookup(
        &mut self,
        leaf: u32,
        subleaf: u32,
        ctx: &GuestCpuidContext,
        host: impl Fn(u32, u32) -> CpuidResult,
    ) -> CpuidResult {
        let index = Self::slot(leaf);
        let cr4 = u64::from(ctx.cr4_osxsave) | (u64::from(ctx.cr4_pke) << 1);
        if let Some(Some(hit)) = self.slots.get(index) {
            if hit.leaf == leaf && hit.subleaf == subleaf && hit.cr4 == cr4 {
                return hit.result;
            }
        }
        let result = guest_cpuid(leaf, subleaf, ctx, host);
        if leaf != 0xD {
            if let Some(slot) = self.slots.get_mut(index) {
                *slot = Some(CachedCpuid {
                    leaf,
                    subleaf,
                    cr4,
                    result,
                });
            }
        }
        result
    }
}

impl CpuidCache {
    /// The cached answer for `leaf`/`subleaf`, with the guest CR4 it holds
    /// for (CR4.OSXSAVE and CR4.PKE, the rest clear), if the cache has it:
    /// an answer the vCPU gets every time it asks that with those CR4 bits,
    /// which a backend may give without asking the policy again.
    pub fn cached(&self, leaf: u32, subleaf: u32) -> Option<(u64, CpuidResult)> {
        let index = Self::slot(leaf);
        let hit = self.slots.get(index).copied().flatten()?;
        (hit.leaf == leaf && hit.subleaf == subleaf).then(|| {
            let cr4 = if hit.cr4 & 1 != 0 { CR4_OSXSAVE } else { 0 }
                | if hit.cr4 & 2 != 0 { CR4_PKE } else { 0 };
            (cr4, hit.result)
        })
    }
}

/// Counts `n` byte-sized COM1 accesses a backend finished without the
/// handlers (OUTs to the transmit register it queued in a
/// [`crate::com_out::ComOut`], INs from the line status register it
/// answered from there), as [`handle_exit`] counts an I/O exit.
pub fn count_queued_com1_writes(model: &mut VcpuModel, n: u64) {
    model.stats.exits = model.stats.exits.wrapping_add(n);
    model.stats.io = model.stats.io.saturating_add(n);
    model.tally.count_many(ExitKind::Io, n);
}

/// Counts `n` CPUID exits a backend answered without the handlers (from
/// what [`CpuidCache::cached`] gave it), as [`handle_cpuid`] counts one.
pub fn count_answered_cpuid(model: &mut VcpuModel, n: u64) {
    model.stats.exits = model.stats.exits.wrapping_add(n);
    model.stats.cpuid = model.stats.cpuid.wrapping_add(n);
    model.tally.count_cpuids(n);
}

/// The port of the PC reset-control register (Intel chipsets' CF9h).
pub const RESET_CONTROL_PORT: u16 = 0xCF9;

/// Hardware exception vectors the handlers inject.
const UD: u8 = 6;
const SS: u8 = 12;
const GP: u8 = 13;
const PF: u8 = 14;

/// CR0.PE, CR0.PG and other control-register bits (SDM Vol. 3A, 2.5).
const CR0_PE: u64 = 1 << 0;
const CR4_PKE: u64 = 1 << 22;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_IF: u64 = 1 << 9;

impl VcpuModel {
    /// vCPU `index` of a guest with `vcpus`, on a host whose TSC runs at
    /// `tsc_hz`.
    pub fn new(index: u32, vcpus: u32, tsc_hz: u64) -> Self {
        Self {
            index,
            vcpus,
            msrs: VirtualMsrs::new(index),
            xcr0: 1,
            lapic: {
                let id = u8::try_from(index).unwrap_or(u8::MAX);
                let mut lapic = LocalApic::new(id, tsc_hz, u64::from(CRYSTAL_HZ));
                // Kernels start where firmware would leave them: the boot
                // vCPU's APIC in virtual-wire mode; the others as INIT
                // leaves them, waiting for their start-up IPI.
                if index == 0 {
                    lapic.firmware_state();
                }
                lapic
            },
            attention_at: u64::MAX,
            tsc_adjust: 0,
            stats: ExitStats::default(),
            tally: ExitTally::default(),
            cpuid_cache: CpuidCache::default(),
            tsc_hz,
        }
    }
}

/// Handles `exit`, which the vCPU behind `vcpu` just took; `vm` is its
/// VM's devices.
#[inline]
pub fn handle_exit<B: VcpuAccess, P: Platform>(
    exit: &Exit,
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
) -> Outcome {
    // CPUID, the most frequent exit, is handled here, so it does not pay
    // for the general dispatch's stack frame.
    if let Exit::Cpuid = exit {
        return handle_cpuid(vcpu, model, |l, s| platform.host_cpuid(l, s));
    }
    model.stats.exits = model.stats.exits.wrapping_add(1);
    model.tally.count(exit.kind());
    let outcome = match dispatch(exit, vcpu, model, vm, platform) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::stop(StopReason::Backend(e.to_string())),
    };
    // The exit may have changed what the vCPU can be given (an EOI, a
    // TPR, an unmasked 8259 input, an armed APIC timer).
    model.attention_at = attention_at(model.index, &model.lapic, vm);
    outcome
}

/// Handles a CPUID exit, the one exit a guest takes most: what
/// [`handle_exit`] does for [`Exit::Cpuid`], for a backend whose hot path
/// wants to skip building the rest of the [`Platform`]. `host` is CPUID
/// on the host CPU.
#[inline(always)]
pub fn handle_cpuid<B: VcpuAccess>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    host: impl Fn(u32, u32) -> CpuidResult,
) -> Outcome {
    model.stats.exits = model.stats.exits.wrapping_add(1);
    model.tally.count_cpuid();
    match cpuid(vcpu, model, host) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::stop(StopReason::Backend(e.to_string())),
    }
}

/// Every exit but CPUID.
#[inline(never)]
fn dispatch<B: VcpuAccess, P: Platform>(
    exit: &Exit,
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
) -> Result<Outcome, B::Error> {
    if let Some(result) = dispatch_local(exit, vcpu, model, platform) {
        return result;
    }
    match exit {
        Exit::Io(io) => port_io(vcpu, model, vm, platform, io),
        Exit::Hypercall => vmcall(vcpu, model, vm, platform),
        Exit::MsrWrite => wrmsr(vcpu, model, vm, platform),
        Exit::ControlRegister(access) => cr_access(vcpu, model, platform, *access),
        Exit::NestedPageFault { .. } => match exit.nested_fault() {
            Some(fault) => nested_page_fault(vcpu, model, vm, platform, &fault),
            None => Ok(Outcome::Resume),
        },
        Exit::ApicEoi => apic_eoi_with_devices(vcpu, model, vm, platform),
        // `dispatch_local` took every other exit.
        _ => Ok(Outcome::Resume),
    }
}

/// Whether handling `exit` may touch the VM's devices or change what the
/// vCPU can be given (its local APIC's priority, the lines, the timers):
/// port I/O, hypercalls (the print goes to COM1's console), MSR writes
/// (IA32_APIC_BASE moves what the APIC bus matches; [`handle_local_exit`]
/// takes every other WRMSR itself, the timer's among them),
/// control-register accesses (CR8 is the task priority) and nested page
/// faults (the APICs' MMIO). The others need neither the devices' lock nor
/// a new [`attention_at`](super::vm::attention_at) after them.
#[inline]
pub fn needs_devices(exit: &Exit) -> bool {
    matches!(
        exit,
        Exit::Io(_)
            | Exit::Hypercall
            | Exit::MsrWrite
            | Exit::ControlRegister(_)
            | Exit::NestedPageFault { .. }
    )
}

/// [`needs_devices`] for this vCPU now: also an [`Exit::ApicEoi`] that
/// its local APIC cannot end alone, because the vector is
/// level-triggered (the I/O APIC hears of it) or the page is not the
/// APIC's any more (the guest moved or disabled it: the access is then
/// the MMIO path's). An edge-triggered EOI, the usual one, takes no lock.
#[inline]
pub fn needs_devices_now(exit: &Exit, model: &VcpuModel) -> bool {
    match exit {
        Exit::ApicEoi => !local_eoi(&model.lapic),
        _ => needs_devices(exit),
    }
}

/// Whether an EOI at the APIC's reset page is this APIC's alone.
#[inline]
fn local_eoi(lapic: &LocalApic) -> bool {
    lapic.decodes(LAPIC_BASE) && !lapic.eoi_ends_level()
}

/// Handles `exit` when it does not [need the devices](needs_devices), as
/// [`handle_exit`] would (the same counts, the same outcome) but without
/// them; `None` for an exit that needs them, which the caller passes to
/// [`handle_exit`] with the devices locked.
#[inline]
pub fn handle_local_exit<B: VcpuAccess, P: Platform>(
    exit: &Exit,
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
) -> Option<Outcome> {
    // A WRMSR needs the devices only for IA32_APIC_BASE (the APIC bus
    // hears of the move): which MSR it is, is in RCX.
    if let Exit::MsrWrite = exit {
        return local_wrmsr(vcpu, model, platform);
    }
    if needs_devices_now(exit, model) {
        return None;
    }
    if let Exit::Cpuid = exit {
        return Some(handle_cpuid(vcpu, model, |l, s| platform.host_cpuid(l, s)));
    }
    model.stats.exits = model.stats.exits.wrapping_add(1);
    model.tally.count(exit.kind());
    // Checked above: `local` takes it.
    match local(exit, vcpu, model, platform) {
        Ok(outcome) => Some(outcome),
        Err(e) => Some(Outcome::stop(StopReason::Backend(e.to_string()))),
    }
}

/// The exits that need no devices ([`needs_devices`]); `None` for the
/// others.
fn dispatch_local<B: VcpuAccess, P: Platform>(
    exit: &Exit,
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
) -> Option<Result<Outcome, B::Error>> {
    if needs_devices_now(exit, model) {
        return None;
    }
    Some(local(exit, vcpu, model, platform))
}

/// [`dispatch_local`]'s exits.
fn local<B: VcpuAccess, P: Platform>(
    exit: &Exit,
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
) -> Result<Outcome, B::Error> {
    match exit {
        Exit::Cpuid => cpuid(vcpu, model, |l, s| platform.host_cpuid(l, s)),
        // [`dispatch`]'s.
        Exit::Io(_)
        | Exit::Hypercall
        | Exit::MsrWrite
        | Exit::ControlRegister(_)
        | Exit::NestedPageFault { .. } => Ok(Outcome::Resume),
        Exit::Hlt => hlt(vcpu, model),
        Exit::MsrRead => rdmsr(vcpu, model),
        Exit::Xsetbv => xsetbv(vcpu, model, platform),
        Exit::SliceEnd => Ok(Outcome::Preempted),
        Exit::ExternalInterrupt => {
            // The host's (a kick); the guest goes on once the caller has
            // handled it.
            model.stats.host_events = model.stats.host_events.saturating_add(1);
            Ok(Outcome::HostInterrupt)
        }
        Exit::Nmi => {
            // The host has no use for NMIs yet; the guest just goes on.
            model.stats.host_events = model.stats.host_events.saturating_add(1);
            Ok(Outcome::Resume)
        }
        // Nothing is pending for the guest yet when the window opens: the
        // interrupt path asks for the window only with an interrupt in
        // hand, and injects it before the next entry.
        Exit::InterruptWindow => {
            vcpu.request_interrupt_window(false)?;
            Ok(Outcome::Resume)
        }
        // The caches are coherent and guest RAM is write-back: nothing to
        // write back or throw away on the guest's behalf.
        Exit::CacheFlush => skip(vcpu),
        // The backend has let NMIs through again (its `nmi_blocked`
        // says when); the IRET runs when the guest resumes, and a pending
        // NMI goes in at the next delivery.
        Exit::NmiWindow | Exit::Reflected => Ok(Outcome::Resume),
        Exit::ApicEoi => local_apic_eoi(vcpu, model),
        Exit::VirtualizationInstruction => inject(vcpu, model, UD, None),
        // No performance counters are offered (CPUID leaf 0xA is empty).
        Exit::Rdpmc => inject(vcpu, model, GP, Some(0)),
        Exit::TripleFault => Ok(Outcome::stop(StopReason::TripleFault(Box::new(dump(
            vcpu,
        )?)))),
        Exit::NestedPagingMisconfigured { gpa } => {
            Ok(Outcome::stop(StopReason::NestedPagingMisconfigured {
                gpa: *gpa,
            }))
        }
        Exit::TaskSwitch => Ok(Outcome::stop(StopReason::TaskSwitch { rip: vcpu.rip()? })),
        // PAUSE is only a hint, so running it again is harmless: RIP stays
        // on it, which is where both VT-x and SVM leave it, and the next
        // PAUSE after the entry starts a new loop count.
        Exit::Pause => Ok(Outcome::Yield),
        Exit::EntryFailed {
            reason,
            qualification,
        } => Ok(Outcome::stop(StopReason::EntryFailed(
            vcpu.entry_failure(*reason, *qualification),
        ))),
        Exit::Unknown {
            reason,
            qualification,
        } => Ok(Outcome::stop(StopReason::UnhandledExit {
            reason: *reason,
            name: vcpu.exit_name(*reason),
            qualification: *qualification,
            rip: vcpu.rip()?,
        })),
    }
}

/// An [`Exit::ApicEoi`] the vCPU's local APIC ends alone
/// ([`needs_devices_now`] said so): the in-service vector is cleared and
/// the guest goes on past its write. A lower-priority interrupt the
/// APIC held back may be deliverable now; nothing else changed (the
/// 8259's output and the timer are as they were), so the interrupt path
/// is asked to look only then.
fn local_apic_eoi<B: VcpuAccess>(vcpu: &mut B, model: &mut VcpuModel) -> Result<Outcome, B::Error> {
    model.lapic.eoi_at(LAPIC_BASE);
    if model.lapic.pending_vector().is_some() {
        model.attention_at = 0;
    }
    skip(vcpu)
}

/// An [`Exit::ApicEoi`] with the devices at hand: a level-triggered EOI
/// goes on to the I/O APIC; where the APIC no longer decodes its reset
/// page, the write is what an EPT violation there would be.
fn apic_eoi_with_devices<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
) -> Result<Outcome, B::Error> {
    match model.lapic.eoi_at(LAPIC_BASE) {
        Some(effect) => {
            if let ApicEffect::Eoi {
                vector,
                level_triggered: true,
            } = effect
            {
                vm.ioapic_eoi(vector);
            }
            skip(vcpu)
        }
        None => {
            let fault = NestedFault {
                gpa: GuestPhysAddr::new(LAPIC_BASE + u64::from(EOI_OFFSET)),
                read: false,
                write: true,
                fetch: false,
                allowed: None,
            };
            nested_page_fault(vcpu, model, vm, platform, &fault)
        }
    }
}

/// A guest-physical access second-level translation refused: a read or
/// write of a page a device claims is emulated ([`mmio`]); anything else
/// (and an MMIO access no device takes) stops the guest.
fn nested_page_fault<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
    fault: &NestedFault,
) -> Result<Outcome, B::Error> {
    if !fault.fetch && (is_lapic_page(&model.lapic, fault.gpa) || vm.is_mmio(fault.gpa)) {
        let mut space = VcpuMmio {
            index: model.index,
            lapic: &mut model.lapic,
            devices: vm,
        };
        match mmio::emulate_mmio(vcpu, &mut space, platform, fault) {
            Ok(MmioOutcome::Emulated) => return Ok(Outcome::Resume),
            Ok(MmioOutcome::Unclaimed) => {}
            Err(MmioError::Backend(e)) => return Err(e),
            Err(MmioError::NotEmulated(refused)) => {
                return Ok(Outcome::stop(StopReason::MmioNotEmulated(Box::new(
                    refused,
                ))))
            }
        }
    }
    Ok(Outcome::stop(StopReason::MemoryFault {
        fault: *fault,
        ram: platform.ram(),
        rip: vcpu.rip()?,
    }))
}

/// Moves RIP past the instruction that exited; the guest resumes.
#[inline]
fn skip<B: VcpuAccess>(vcpu: &mut B) -> Result<Outcome, B::Error> {
    vcpu.skip_instruction()?;
    Ok(Outcome::Resume)
}

/// Injects hardware exception `vector` at the instruction that exited (it
/// faults, so RIP stays). Outside protected mode no error code is pushed
/// (real-mode delivery has none; VT-x fails the entry if one is given).
fn inject<B: VcpuAccess>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vector: u8,
    error_code: Option<u32>,
) -> Result<Outcome, B::Error> {
    let protected = vcpu.cr0()? & CR0_PE != 0;
    let error_code = error_code.filter(|_| protected);
    vcpu.inject(Event::Exception { vector, error_code })?;
    model.stats.injected = model.stats.injected.saturating_add(1);
    Ok(Outcome::Resume)
}

/// Whether the guest runs 64-bit code (IA32_EFER.LMA and CS.L).
fn is_long_mode<B: VcpuAccess>(vcpu: &B) -> Result<bool, B::Error> {
    Ok(vcpu.efer()? & EFER_LMA != 0 && vcpu.segment_attributes(Segment::Cs)? & SEGMENT_L != 0)
}

/// The guest's CPL (SS.DPL, SDM Vol. 3A, 5.5).
fn cpl<B: VcpuAccess>(vcpu: &B) -> Result<u32, B::Error> {
    Ok((vcpu.segment_attributes(Segment::Ss)? >> 5) & 3)
}

fn dump<B: VcpuAccess>(vcpu: &B) -> Result<RegisterDump, B::Error> {
    let mut gprs = [0u64; 7];
    for (slot, reg) in gprs.iter_mut().zip([
        Gpr::Rax,
        Gpr::Rbx,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::Rbp,
    ]) {
        *slot = vcpu.gpr(reg)?;
    }
    Ok(RegisterDump {
        rip: vcpu.rip()?,
        rsp: vcpu.gpr(Gpr::Rsp)?,
        rflags: vcpu.rflags()?,
        cr0: vcpu.cr0()?,
        cr3: vcpu.cr3()?,
        cr4: vcpu.cr4()?,
        efer: vcpu.efer()?,
        cs: vcpu.segment(Segment::Cs)?.selector,
        gprs,
    })
}

#[inline(always)]
fn cpuid<B: VcpuAccess>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    host: impl Fn(u32, u32) -> CpuidResult,
) -> Result<Outcome, B::Error> {
    model.stats.cpuid = model.stats.cpuid.wrapping_add(1);
    let cr4 = vcpu.cr4_bits(CR4_OSXSAVE | CR4_PKE)?;
    let ctx = GuestCpuidContext {
        vcpu_index: model.index,
        vcpus: model.vcpus,
        cr4_osxsave: cr4 & CR4_OSXSAVE != 0,
        cr4_pke: cr4 & CR4_PKE != 0,
        tsc_hz: model.tsc_hz,
    };
    let (leaf, subleaf) = (vcpu.gpr(Gpr::Rax)? as u32, vcpu.gpr(Gpr::Rcx)? as u32);
    let r = model.cpuid_cache.lookup(leaf, subleaf, &ctx, host);
    // CPUID writes all four registers zero-extended, in every mode.
    vcpu.set_gpr(Gpr::Rax, u64::from(r.eax))?;
    vcpu.set_gpr(Gpr::Rbx, u64::from(r.ebx))?;
    vcpu.set_gpr(Gpr::Rcx, u64::from(r.ecx))?;
    vcpu.set_gpr(Gpr::Rdx, u64::from(r.edx))?;
    skip(vcpu)
}

/// IN and OUT through the VM's device bus. A port no device claims
/// reads all ones and drops writes (counted); port 0xCF9 (reset) is one of
/// those: a guest does not reset the machine.
fn port_io<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
    io: &IoAccess,
) -> Result<Outcome, B::Error> {
    model.stats.io = model.stats.io.saturating_add(1);
    if io.string {
        return ins_outs(vcpu, model, vm, platform, io);
    }
    let size = io.size;
    let now = platform.now();
    let mut sink = |line: &str| platform.guest_line(line);
    match io.direction {
        IoDirection::Out => {
            let value = vcpu.gpr(Gpr::Rax)? as u32;
            if !vm.port_write(io.port, size, value, now, &mut sink) {
                model.stats.io_writes_ignored = model.stats.io_writes_ignored.saturating_add(1);
            }
            // The reset control register, the keyboard controller's reset
            // line or the ACPI sleep control: the guest's own reset or
            // power-off, which ends this guest only.
            match vm.take_request() {
                Some(VmRequest::PowerOff) => return Ok(Outcome::stop(StopReason::PoweredOff)),
                Some(VmRequest::Reset) => return Ok(Outcome::stop(StopReason::Reset)),
                None => {}
            }
        }
        IoDirection::In => {
            let value = match vm.port_read(io.port, size, now, &mut sink) {
                Some(value) => u64::from(value),
                None => {
                    model.stats.io_reads_unclaimed =
                        model.stats.io_reads_unclaimed.saturating_add(1);
                    0xFFFF_FFFF
                }
            };
            // IN AL/AX leaves the rest of RAX; IN EAX zero-extends.
            let rax = vcpu.gpr(Gpr::Rax)?;
            let rax = match size {
                1 => (rax & !0xFF) | (value & 0xFF),
                2 => (rax & !0xFFFF) | (value & 0xFFFF),
                _ => value,
            };
            vcpu.set_gpr(Gpr::Rax, rax)?;
        }
    }
    skip(vcpu)
}

/// INS and OUTS ([`string_io`]): a chunk of iterations, then RIP past
/// the instruction when it is done, left on it when a REP has more to do,
/// or the guest's fault injected at it.
fn ins_outs<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
    io: &IoAccess,
) -> Result<Outcome, B::Error> {
    match string_io::string_io(vcpu, &mut model.stats, vm, platform, io)? {
        StringIoOutcome::Done => skip(vcpu),
        StringIoOutcome::Partial => {
            // The guest executes the instruction again for the rest; an
            // interrupt may come in between, as on hardware.
            vcpu.clear_interrupt_shadow()?;
            Ok(Outcome::Resume)
        }
        StringIoOutcome::Fault(GuestFault::GeneralProtection) => inject(vcpu, model, GP, Some(0)),
        StringIoOutcome::Fault(GuestFault::StackFault) => inject(vcpu, model, SS, Some(0)),
        StringIoOutcome::Fault(GuestFault::PageFault { linear, error_code }) => {
            vcpu.set_cr2(linear)?;
            inject(vcpu, model, PF, Some(error_code))
        }
        StringIoOutcome::Request(VmRequest::PowerOff) => Ok(Outcome::stop(StopReason::PoweredOff)),
        StringIoOutcome::Request(VmRequest::Reset) => Ok(Outcome::stop(StopReason::Reset)),
        StringIoOutcome::Refused(why) => Ok(Outcome::stop(StopReason::StringIo {
            io: *io,
            rip: vcpu.rip()?,
            why,
        })),
    }
}

fn vmcall<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
) -> Result<Outcome, B::Error> {
    if cpl(vcpu)? != 0 {
        return inject(vcpu, model, UD, None);
    }
    model.stats.hypercalls = model.stats.hypercalls.saturating_add(1);
    let long = is_long_mode(vcpu)?;
    let call = Hypercall::decode(
        vcpu.gpr(Gpr::Rax)?,
        vcpu.gpr(Gpr::Rbx)?,
        vcpu.gpr(Gpr::Rcx)?,
        long,
    );
    let result = match call {
        Hypercall::Exit { code } => {
            vm.flush(&mut |line| platform.guest_line(line));
            return Ok(Outcome::stop(StopReason::Exited { code }));
        }
        Hypercall::Print { gpa, len } => print(vm, platform, gpa, len),
        Hypercall::Unknown { .. } => hypercall::UNKNOWN_CALL,
    };
    vcpu.set_gpr(Gpr::Rax, Hypercall::result(result, long))?;
    skip(vcpu)
}

fn print<P: Platform>(vm: &mut VmDevices, platform: &mut P, gpa: GuestPhysAddr, len: u64) -> u64 {
    let in_ram = platform.ram().contains(gpa, len);
    if len > hypercall::PRINT_MAX || !in_ram {
        return hypercall::BAD_ARGUMENT;
    }
    let mut buf = [0u8; 256];
    let mut done = 0u64;
    while done < len {
        let chunk = len.saturating_sub(done).min(buf.len() as u64) as usize;
        let Some(part) = buf.get_mut(..chunk) else {
            return hypercall::BAD_ARGUMENT;
        };
        let Some(at) = gpa.checked_add(done) else {
            return hypercall::BAD_ARGUMENT;
        };
        if !platform.read_guest(at, part) {
            return hypercall::BAD_ARGUMENT;
        }
        vm.print(part, &mut |line| platform.guest_line(line));
        done = done.saturating_add(chunk as u64);
    }
    0
}

fn hlt<B: VcpuAccess>(vcpu: &mut B, model: &VcpuModel) -> Result<Outcome, B::Error> {
    let rip = vcpu.rip()?;
    if vcpu.rflags()? & RFLAGS_IF == 0 {
        if model.vcpus > 1 {
            vcpu.skip_instruction()?;
            return Ok(Outcome::Parked);
        }
        return Ok(Outcome::stop(StopReason::HaltedWithInterruptsOff { rip }));
    }
    vcpu.skip_instruction()?;
    Ok(Outcome::Halted)
}

fn rdmsr<B: VcpuAccess>(vcpu: &mut B, model: &mut VcpuModel) -> Result<Outcome, B::Error> {
    model.stats.msr = model.stats.msr.saturating_add(1);
    let msr = vcpu.gpr(Gpr::Rcx)? as u32;
    let value = if msr == IA32_TSC_DEADLINE_MSR {
        // The APIC keeps host TSC values; the guest's TSC is offset.
        match model.lapic.tsc_deadline() {
            0 => Ok(0),
            host => Ok(host.wrapping_add(vcpu.tsc_offset()?)),
        }
    } else if msr == IA32_TSC_ADJUST {
        Ok(model.tsc_adjust)
    } else if msr == IA32_EFER {
        // Reads pass through on VT-x; SVM makes them exit to hide
        // EFER.SVME, which the guest's view leaves out.
        Ok(vcpu.efer()?)
    } else if msr == IA32_APIC_BASE {
        // vCPU 0 is the bootstrap processor.
        Ok(model.lapic.apic_base_msr(model.index == 0))
    } else {
        model.msrs.read(msr)
    };
    match value {
        Ok(value) => {
            vcpu.set_gpr(Gpr::Rax, value & 0xFFFF_FFFF)?;
            vcpu.set_gpr(Gpr::Rdx, value >> 32)?;
            skip(vcpu)
        }
        Err(_) => inject(vcpu, model, GP, Some(0)),
    }
}

/// The guest's MAXPHYADDR: CPUID.80000008H:EAX[7:0], which the guest sees
/// as the host has it, or 36 where that leaf is missing (SDM Vol. 3A,
/// 4.1.4 "Enumeration of Paging Features by CPUID").
fn guest_phys_bits(host: impl Fn(u32, u32) -> CpuidResult) -> u8 {
    if host(0x8000_0000, 0).eax < 0x8000_0008 {
        return 36;
    }
    match host(0x8000_0008, 0).eax as u8 {
        0 => 36,
        bits => bits,
    }
}

/// WRMSR. EFER is checked by the SDM's rules ([`cr::wrmsr_efer`]);
/// IA32_APIC_BASE goes to the local APIC (SDM Vol. 3A, 11.4.4): disable,
/// enable and moving its page take effect, reserved bits (past the guest's
/// MAXPHYADDR among them) and x2APIC mode are #GP(0).
fn wrmsr<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    vm: &mut VmDevices,
    platform: &mut P,
) -> Result<Outcome, B::Error> {
    let msr = vcpu.gpr(Gpr::Rcx)? as u32;
    if msr == IA32_APIC_BASE {
        model.stats.msr = model.stats.msr.saturating_add(1);
        let value = (vcpu.gpr(Gpr::Rdx)? << 32) | (vcpu.gpr(Gpr::Rax)? & 0xFFFF_FFFF);
        let phys_bits = guest_phys_bits(|l, s| platform.host_cpuid(l, s));
        return match model.lapic.write_apic_base_msr(value, phys_bits) {
            Ok(()) => {
                // Enabling or disabling the APIC moves what senders match.
                vm.apic_bus().publish(model.index, &model.lapic);
                skip(vcpu)
            }
            Err(_) => inject(vcpu, model, GP, Some(0)),
        };
    }
    wrmsr_own(vcpu, model, platform, msr)
}

/// A WRMSR handled without the devices ([`handle_local_exit`]), counted
/// as [`handle_exit`] counts it; `None` for IA32_APIC_BASE, which needs
/// them. A TSC-deadline write moves only the vCPU's own timer, so the
/// interrupt path's next look is worked out from its local APIC alone.
fn local_wrmsr<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
) -> Option<Outcome> {
    let msr = match vcpu.gpr(Gpr::Rcx) {
        Ok(rcx) => rcx as u32,
        Err(e) => return Some(Outcome::stop(StopReason::Backend(e.to_string()))),
    };
    if msr == IA32_APIC_BASE {
        return None;
    }
    model.stats.exits = model.stats.exits.wrapping_add(1);
    model.tally.count(ExitKind::MsrWrite);
    let outcome = match wrmsr_own(vcpu, model, platform, msr) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::stop(StopReason::Backend(e.to_string())),
    };
    if msr == IA32_TSC_DEADLINE_MSR && model.attention_at != 0 {
        // What `attention_at` gives when nothing was deliverable before:
        // the 8259's part, which only device exits change, is as it was
        // (and the VM's device attention covers it).
        model.attention_at = if model.lapic.pending_vector().is_some() {
            0
        } else {
            model.lapic.timer_deadline().unwrap_or(u64::MAX)
        };
    }
    Some(outcome)
}

/// Every WRMSR but IA32_APIC_BASE's: what the vCPU itself holds.
fn wrmsr_own<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
    msr: u32,
) -> Result<Outcome, B::Error> {
    model.stats.msr = model.stats.msr.saturating_add(1);
    let now = platform.now();
    let value = (vcpu.gpr(Gpr::Rdx)? << 32) | (vcpu.gpr(Gpr::Rax)? & 0xFFFF_FFFF);
    if msr == IA32_EFER {
        return write_efer(vcpu, model, platform, value);
    }
    if msr == IA32_TSC_DEADLINE_MSR {
        // 0 disarms; anything else is a guest TSC value, made a host one.
        let host = match value {
            0 => 0,
            guest => guest.wrapping_sub(vcpu.tsc_offset()?).max(1),
        };
        model.lapic.set_tsc_deadline(host, now);
        return skip(vcpu);
    }
    if msr == IA32_TSC_ADJUST {
        // The TSC moves by what the adjustment changes (SDM Vol. 3B,
        // 17.17.3): the offset takes the difference.
        let delta = value.wrapping_sub(model.tsc_adjust);
        let offset = vcpu.tsc_offset()?.wrapping_add(delta);
        vcpu.set_tsc_offset(offset)?;
        model.tsc_adjust = value;
        return skip(vcpu);
    }
    match model.msrs.write(msr, value) {
        Ok(()) => skip(vcpu),
        Err(_) => inject(vcpu, model, GP, Some(0)),
    }
}

/// XSETBV (SDM Vol. 2C "XSETBV"): ECX must be 0, bit 0 (x87) set, only
/// bits the host supports, AVX only with SSE, the AVX-512 bits all or none
/// and only with AVX, the MPX bits together. Anything else is #GP(0), as
/// on hardware.
fn xsetbv<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
) -> Result<Outcome, B::Error> {
    let value = (vcpu.gpr(Gpr::Rdx)? << 32) | (vcpu.gpr(Gpr::Rax)? & 0xFFFF_FFFF);
    if vcpu.gpr(Gpr::Rcx)? as u32 != 0 || !xcr0_valid(value, platform.xcr0_supported()) {
        return inject(vcpu, model, GP, Some(0));
    }
    platform.load_xcr0(value);
    model.xcr0 = value;
    skip(vcpu)
}

/// Whether `value` is an XCR0 a guest may set on a host supporting
/// `supported`.
pub fn xcr0_valid(value: u64, supported: u64) -> bool {
    const X87: u64 = 1;
    const SSE: u64 = 1 << 1;
    const AVX: u64 = 1 << 2;
    const MPX: u64 = (1 << 3) | (1 << 4);
    const AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);
    let has = |bits: u64| value & bits == bits;
    let any = |bits: u64| value & bits != 0;
    value & !supported == 0
        && has(X87)
        && (!any(AVX) || has(SSE))
        && (!any(MPX) || has(MPX))
        && (!any(AVX512) || (has(AVX512) && has(AVX)))
}

/// A control-register access that exited: a MOV to CR0/CR4 that changes a
/// host-owned bit, LMSW, CLTS, any CR8 access, and a MOV to or from CR3
/// where the backend makes those exit. Every write is checked by
/// [`cr`]'s rules and applied or answered with their #GP.
fn cr_access<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
    access: CrAccess,
) -> Result<Outcome, B::Error> {
    let long = is_long_mode(vcpu)?;
    let width = |v: u64| if long { v } else { v & 0xFFFF_FFFF };
    match (access.cr, access.kind) {
        (0, CrAccessKind::MovTo(gpr)) => {
            let value = width(vcpu.gpr(gpr)?);
            write_cr0(vcpu, model, platform, value)
        }
        (3, CrAccessKind::MovTo(gpr)) => {
            let value = width(vcpu.gpr(gpr)?);
            let state = cr_state(vcpu)?;
            let bits = max_phys_bits(vcpu, model, platform)?;
            let applied = cr::mov_to_cr3(&state, value, bits);
            apply_cr(vcpu, model, platform, applied)
        }
        (3, CrAccessKind::MovFrom(gpr)) => {
            let value = vcpu.cr3()?;
            vcpu.set_gpr(gpr, value)?;
            skip(vcpu)
        }
        (4, CrAccessKind::MovTo(gpr)) => {
            let value = width(vcpu.gpr(gpr)?);
            write_cr4(vcpu, model, platform, value)
        }
        (8, CrAccessKind::MovTo(gpr)) => {
            let value = vcpu.gpr(gpr)?;
            if value > 15 {
                return inject(vcpu, model, GP, Some(0));
            }
            model.lapic.set_cr8(value);
            skip(vcpu)
        }
        (8, CrAccessKind::MovFrom(gpr)) => {
            vcpu.set_gpr(gpr, model.lapic.cr8())?;
            skip(vcpu)
        }
        (0, CrAccessKind::Lmsw(source)) => {
            // LMSW sets PE, MP, EM and TS and cannot clear PE.
            let old = vcpu.cr0()?;
            let low = u64::from(source) & 0xF;
            let value = (old & !0xE) | low | (old & CR0_PE);
            write_cr0(vcpu, model, platform, value)
        }
        (0, CrAccessKind::Clts) => {
            let old = vcpu.cr0()?;
            write_cr0(vcpu, model, platform, old & !(1 << 3))
        }
        (cr, _) => Ok(Outcome::stop(StopReason::UnhandledExit {
            reason: u32::from(cr),
            name: "control-register access",
            qualification: 0,
            rip: vcpu.rip()?,
        })),
    }
}

/// The registers the control-register rules read, as the guest sees them.
fn cr_state<B: VcpuAccess>(vcpu: &B) -> Result<cr::CrState, B::Error> {
    Ok(cr::CrState {
        cr0: vcpu.cr0()?,
        cr3: vcpu.cr3()?,
        cr4: vcpu.cr4()?,
        efer: vcpu.efer()?,
        cs_l: vcpu.segment_attributes(Segment::Cs)? & SEGMENT_L != 0,
    })
}

/// The guest's own CPUID answer for `leaf` (subleaf 0): the features its
/// control registers may enable are the ones it is told it has.
fn guest_leaf<B: VcpuAccess, P: Platform>(
    vcpu: &B,
    model: &mut VcpuModel,
    platform: &P,
    leaf: u32,
) -> Result<CpuidResult, B::Error> {
    let cr4 = vcpu.cr4_bits(CR4_OSXSAVE | CR4_PKE)?;
    let ctx = GuestCpuidContext {
        vcpu_index: model.index,
        vcpus: model.vcpus,
        cr4_osxsave: cr4 & CR4_OSXSAVE != 0,
        cr4_pke: cr4 & CR4_PKE != 0,
        tsc_hz: model.tsc_hz,
    };
    Ok(model
        .cpuid_cache
        .lookup(leaf, 0, &ctx, |l, s| platform.host_cpuid(l, s)))
}

/// The guest's MAXPHYADDR (CPUID.8000_0008H:EAX[7:0], 36 where the leaf
/// is absent, SDM Vol. 3A, 4.1.4).
fn max_phys_bits<B: VcpuAccess, P: Platform>(
    vcpu: &B,
    model: &mut VcpuModel,
    platform: &P,
) -> Result<u32, B::Error> {
    let max = guest_leaf(vcpu, model, platform, 0x8000_0000)?.eax;
    if max < 0x8000_0008 {
        return Ok(36);
    }
    match guest_leaf(vcpu, model, platform, 0x8000_0008)?.eax & 0xFF {
        0 => Ok(36),
        bits => Ok(bits),
    }
}

/// Emulates a MOV to CR0 of `value` (the guest's view), by
/// [`cr::mov_to_cr0`].
fn write_cr0<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
    value: u64,
) -> Result<Outcome, B::Error> {
    let state = cr_state(vcpu)?;
    let applied = cr::mov_to_cr0(&state, value);
    apply_cr(vcpu, model, platform, applied)
}

/// Emulates a MOV to CR4 of `value`, by [`cr::mov_to_cr4`]: the bits the
/// guest may set are those of the features its CPUID reports, less those
/// the backend cannot run a guest with (VMXE while VT-x is hidden).
fn write_cr4<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
    value: u64,
) -> Result<Outcome, B::Error> {
    let leaf1 = guest_leaf(vcpu, model, platform, 1)?;
    let leaf7 = guest_leaf(vcpu, model, platform, 7)?;
    let supported = cr::cr4_supported(&leaf1, &leaf7) & !vcpu.cr4_forbidden();
    let state = cr_state(vcpu)?;
    let applied = cr::mov_to_cr4(&state, value, supported);
    apply_cr(vcpu, model, platform, applied)
}

/// Emulates a WRMSR to IA32_EFER, by [`cr::wrmsr_efer`]: the bits the guest
/// may set are those its CPUID leaf 8000_0001H offers.
fn write_efer<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
    value: u64,
) -> Result<Outcome, B::Error> {
    let max = guest_leaf(vcpu, model, platform, 0x8000_0000)?.eax;
    let supported = if max >= 0x8000_0001 {
        cr::efer_supported(&guest_leaf(vcpu, model, platform, 0x8000_0001)?)
    } else {
        0
    };
    let state = cr_state(vcpu)?;
    let applied = cr::wrmsr_efer(&state, value, supported);
    apply_cr(vcpu, model, platform, applied)
}

/// Carries out a checked control-register or EFER write: #GP(0) for a
/// refused one; otherwise the PDPTEs a PAE-paging guest loads now (a #GP
/// if they have reserved bits set, with nothing changed), the changed
/// registers, the TLB flush, and RIP past the instruction.
fn apply_cr<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    model: &mut VcpuModel,
    platform: &mut P,
    applied: Result<cr::Applied, cr::GpFault>,
) -> Result<Outcome, B::Error> {
    let Ok(applied) = applied else {
        return inject(vcpu, model, GP, Some(0));
    };
    let next = applied.state;
    let pdptes = if applied.load_pdptes {
        let mut bytes = [0u8; 32];
        let at = GuestPhysAddr::new(cr::pdpt_address(next.cr3));
        let mut pdptes = [0u64; 4];
        // Memory that is not RAM reads as all ones: reserved bits set.
        let read = platform.read_guest(at, &mut bytes);
        let (chunks, _) = bytes.as_chunks::<8>();
        for (entry, raw) in pdptes.iter_mut().zip(chunks) {
            *entry = if read {
                u64::from_le_bytes(*raw)
            } else {
                u64::MAX
            };
        }
        if !cr::pdptes_valid(&pdptes, max_phys_bits(vcpu, model, platform)?) {
            return inject(vcpu, model, GP, Some(0));
        }
        Some(pdptes)
    } else {
        None
    };
    let old = cr_state(vcpu)?;
    if next.efer != old.efer {
        vcpu.set_efer(next.efer)?;
    }
    if next.cr4 != old.cr4 {
        vcpu.set_cr4(next.cr4)?;
    }
    if next.cr3 != old.cr3 {
        vcpu.set_cr3(next.cr3)?;
    }
    if next.cr0 != old.cr0 {
        vcpu.set_cr0(next.cr0)?;
    }
    if let Some(pdptes) = pdptes {
        vcpu.set_pdptes(pdptes)?;
    }
    if applied.flush_tlb {
        platform.flush_guest_tlb();
    }
    skip(vcpu)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests;

const _: () = assert!(core::mem::size_of::<Exit>() <= 16);
