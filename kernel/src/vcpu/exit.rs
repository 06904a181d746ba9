//! VM-exit handling: one decoded exit in, one [`Outcome`] out.
//!
//! [`handle_exit`] reads the exit from the VMCS through
//! [`VmcsAccess`], acts on the vCPU's device models and registers, and
//! tells the caller whether to resume the guest, switch to another vCPU, or
//! stop the guest and why. It never panics on anything the guest controls:
//! whatever the guest does ends in an outcome, at worst
//! [`Outcome::Stop`]. The few things that need the machine (host CPUID,
//! XCR0, reading guest RAM, printing) come through [`Platform`], so the
//! host tests drive every path with a fake VMCS and a fake platform.

use alloc::boxed::Box;

use addr::GuestPhysAddr;
use vmx::caps::FixedBits;
use vmx::error::VmFail;
use vmx::exit::{
    CrAccess, CrAccessType, EntryFailure, EptViolation, ExitReason, Gpr, IoDirection,
    IoQualification,
};
use vmx::regs::GuestRegisters;
use vmx::vmcs::{
    Control32, ControlNatural, Guest16, Guest32, Guest64, GuestNatural, ReadOnly32, ReadOnly64,
    ReadOnlyNatural, VmcsAccess,
};

use super::cpuid::{guest_cpuid, CpuidResult, GuestCpuidContext};
use super::hypercall::{self, Hypercall};
use super::msr::VirtualMsrs;
use super::stop::{RegisterDump, StopReason};
use crate::devices::uart::{LineBuffer, Uart16550, COM1_BASE};

/// What the caller does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume this vCPU.
    Resume,
    /// Its slice is over (VMX-preemption timer): run the next vCPU.
    Preempted,
    /// It executed HLT with interrupts enabled: block it until an event
    /// for it arrives.
    Halted,
    /// An interrupt for the host (a kick from another CPU) arrived while
    /// it ran, acknowledged on exit: the caller ends it at the local APIC,
    /// does what the kick asks, and resumes the vCPU.
    HostInterrupt,
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
    /// The guest's RAM size in bytes.
    fn ram_size(&self) -> u64;
    /// Prints one line of guest console output.
    fn guest_line(&mut self, line: &str);
    /// Drops the guest's cached linear translations (after an emulated
    /// control-register write that changes paging).
    fn flush_guest_tlb(&mut self);
}

/// How many basic exit reasons get a counter in [`ExitTally`] (the SDM's
/// reasons end below 80; the scheduler's table has the same size).
pub const TALLIED_REASONS: usize = sched::EXIT_KINDS;

/// A vCPU's exits by basic reason since they were last handed to the
/// scheduler's figures (once a slice): counting here costs the exit path
/// an add, and the hand-over visits only the reasons seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitTally {
    counts: [u32; TALLIED_REASONS],
    /// Bit r: `counts[r]` is not zero, for the reasons below 64 (every
    /// frequent one).
    seen: u64,
    /// Some count of reason 64 or more is not zero.
    seen_high: bool,
}

impl Default for ExitTally {
    fn default() -> Self {
        Self {
            counts: [0; TALLIED_REASONS],
            seen: 0,
            seen_high: false,
        }
    }
}

impl ExitTally {
    /// Counts one exit with basic reason `reason`; the last slot counts
    /// reason 79 and everything past it.
    pub fn count(&mut self, reason: u16) {
        let r = usize::from(reason).min(TALLIED_REASONS - 1);
        if let Some(n) = self.counts.get_mut(r) {
            *n = n.saturating_add(1);
            if r < 64 {
                self.seen |= 1 << r;
            } else {
                self.seen_high = true;
            }
        }
    }

    /// Adds every non-zero count to `table` (by reason; the last slot's
    /// count, reasons 79 and up, goes to `other`) and starts over.
    pub fn drain_into(&mut self, table: &mut [u64; TALLIED_REASONS], other: &mut u64) {
        let mut seen = core::mem::take(&mut self.seen);
        while seen != 0 {
            let r = seen.trailing_zeros() as usize % 64;
            seen &= seen - 1;
            let n = core::mem::take(&mut self.counts[r]);
            table[r] = table[r].saturating_add(u64::from(n));
        }
        if core::mem::take(&mut self.seen_high) {
            let high = self.counts.iter_mut().zip(table.iter_mut()).enumerate();
            for (r, (n, t)) in high.skip(64) {
                let n = u64::from(core::mem::take(n));
                let slot = if r == TALLIED_REASONS - 1 {
                    &mut *other
                } else {
                    t
                };
                *slot = slot.saturating_add(n);
            }
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

/// The per-vCPU state the exit handlers work on besides the VMCS and GPRs.
#[derive(Debug)]
pub struct VcpuModel {
    /// Index of this vCPU in its guest, and how many the guest has.
    pub index: u32,
    /// How many vCPUs the guest has.
    pub vcpus: u32,
    /// The guest's COM1 (one vCPU per guest so far, so it lives here).
    pub uart: Uart16550,
    /// Guest console output waiting for its line end.
    pub console: LineBuffer,
    /// Emulated MSRs.
    pub msrs: VirtualMsrs,
    /// The guest's XCR0.
    pub xcr0: u64,
    /// The guest's CR8 (task priority), kept here until a virtual LAPIC
    /// exists.
    pub cr8: u64,
    /// CR0 bits VMX operation fixes on this CPU.
    pub cr0_fixed: FixedBits,
    /// CR4 bits VMX operation fixes on this CPU.
    pub cr4_fixed: FixedBits,
    /// What the vCPU did.
    pub stats: ExitStats,
    /// Its exits by reason, not yet handed to the scheduler.
    pub tally: ExitTally,
    /// The guest's CPUID answers already worked out.
    pub cpuid_cache: CpuidCache,
}

/// The answers [`guest_cpuid`] gave this vCPU, so a guest that asks the
/// same leaf again (a CPUID loop, a kernel serialising with CPUID) costs a
/// lookup instead of the policy and two host CPUIDs.
///
/// The guest's answer is a pure function of the leaf, the subleaf, the
/// vCPU's place in its guest and CR4.OSXSAVE/PKE, given the host's answers,
/// which do not change while Ferrovisor runs, with one exception: leaf 0DH
/// describes the XSAVE area for the current XCR0, so it is never cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidCache {
    slots: [Option<CachedCpuid>; CPUID_CACHE_SLOTS],
}

/// One cached answer with what it was answered for.
#[derive(Clone, Copy, Debug)]
struct CachedCpuid {
    leaf: u32,
    subleaf: u32,
    ctx: GuestCpuidContext,
    result: CpuidResult,
}

/// Direct-mapped by the leaf's low bits (and the extended-range bit).
const CPUID_CACHE_SLOTS: usize = 16;

impl CpuidCache {
    /// The guest's answer for `leaf`/`subleaf` in context `ctx`, from the
    /// cache or worked out by [`guest_cpuid`] with `host`.
    pub fn lookup(
        &mut self,
        leaf: u32,
        subleaf: u32,
        ctx: &GuestCpuidContext,
        host: impl Fn(u32, u32) -> CpuidResult,
    ) -> CpuidResult {
        let index = ((leaf as usize) ^ ((leaf >> 27) as usize)) % CPUID_CACHE_SLOTS;
        if let Some(Some(hit)) = self.slots.get(index) {
            if hit.leaf == leaf && hit.subleaf == subleaf && hit.ctx == *ctx {
                return hit.result;
            }
        }
        let result = guest_cpuid(leaf, subleaf, ctx, host);
        if leaf != 0xD {
            if let Some(slot) = self.slots.get_mut(index) {
                *slot = Some(CachedCpuid {
                    leaf,
                    subleaf,
                    ctx: *ctx,
                    result,
                });
            }
        }
        result
    }
}

/// The port of the PC reset-control register (Intel chipsets' CF9h).
pub const RESET_CONTROL_PORT: u16 = 0xCF9;

/// Hardware exception vectors the handlers inject.
const UD: u8 = 6;
const GP: u8 = 13;

/// CR0.PE, CR0.PG and other control-register bits (SDM Vol. 3A, 2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PKE: u64 = 1 << 22;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_VMXE: u64 = 1 << 13;
/// CR4 bits whose change flushes the TLB when executed natively.
const CR4_PAGING_BITS: u64 = (1 << 4) | (1 << 5) | (1 << 7) | (1 << 17) | (1 << 20) | (1 << 21);
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_IF: u64 = 1 << 9;
/// "IA-32e mode guest" in the VM-entry controls.
const ENTRY_IA32E: u32 = 1 << 9;
/// The L bit in VMCS access rights (64-bit code segment).
const AR_L: u32 = 1 << 13;

impl VcpuModel {
    /// vCPU `index` of a guest with `vcpus`, on a CPU with these fixed bits.
    pub fn new(index: u32, vcpus: u32, cr0_fixed: FixedBits, cr4_fixed: FixedBits) -> Self {
        Self {
            index,
            vcpus,
            uart: Uart16550::new(),
            console: LineBuffer::new(),
            msrs: VirtualMsrs::new(index),
            xcr0: 1,
            cr8: 0,
            cr0_fixed,
            cr4_fixed,
            stats: ExitStats::default(),
            tally: ExitTally::default(),
            cpuid_cache: CpuidCache::default(),
        }
    }

    /// The CR0 bits the host owns: those VMX fixes, except PE and PG, which
    /// unrestricted guest leaves to the guest.
    pub fn cr0_host_mask(&self) -> u64 {
        (self.cr0_fixed.must_be_one() | self.cr0_fixed.must_be_zero())
            & !(CR0_PE | CR0_PG)
            & 0xFFFF_FFFF
    }

    /// The CR4 bits the host owns: those VMX fixes (VMXE among them).
    pub fn cr4_host_mask(&self) -> u64 {
        (self.cr4_fixed.must_be_one() | self.cr4_fixed.must_be_zero()) & 0xFFFF_FFFF
    }

    /// The CR0 value the hardware runs with for a guest value `guest`.
    pub fn cr0_for_hardware(&self, guest: u64) -> u64 {
        guest | (self.cr0_fixed.must_be_one() & !(CR0_PE | CR0_PG))
    }

    /// The CR4 value the hardware runs with for a guest value `guest`.
    pub fn cr4_for_hardware(&self, guest: u64) -> u64 {
        guest | self.cr4_fixed.must_be_one()
    }

    /// Passes bytes the guest transmitted to the console line buffer.
    fn console_bytes<P: Platform>(&mut self, bytes: &[u8], platform: &mut P) {
        for &b in bytes {
            self.console.push(b, |line| platform.guest_line(line));
        }
    }
}

/// Handles the exit that just happened on the current VMCS.
pub fn handle_exit<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &mut P,
) -> Outcome {
    // CPUID, the most frequent exit, needs nothing else decoded (basic
    // reason 10, no flag bits) and is handled here, so it does not pay for
    // the general dispatch's stack frame.
    const CPUID: u32 = ExitReason::Cpuid.number() as u32;
    let result = match vmcs.read(ReadOnly32::ExitReason) {
        Ok(CPUID) => {
            vcpu.stats.exits += 1;
            vcpu.tally.count(CPUID as u16);
            cpuid(vmcs, regs, vcpu, platform)
        }
        Ok(raw_reason) => dispatch(vmcs, regs, vcpu, platform, raw_reason),
        Err(e) => Err(e),
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => Outcome::stop(StopReason::VmcsAccess(e)),
    }
}

/// Every exit but CPUID.
#[inline(never)]
fn dispatch<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &mut P,
    raw_reason: u32,
) -> Result<Outcome, VmFail> {
    vcpu.stats.exits += 1;
    vcpu.tally.count((raw_reason & 0xFFFF) as u16);
    let info = vmx::exit::ExitInfo::from_exit_reason(raw_reason);
    let qualification = vmcs.read(ReadOnlyNatural::ExitQualification)?;
    if info.entry_failure {
        return Ok(match EntryFailure::decode(info.reason, qualification) {
            Some(failure) => Outcome::stop(StopReason::EntryFailed(failure)),
            None => unhandled(vmcs, info.reason, qualification)?,
        });
    }
    match info.reason {
        ExitReason::Cpuid => cpuid(vmcs, regs, vcpu, platform),
        ExitReason::IoInstruction => io(vmcs, regs, vcpu, platform, qualification),
        ExitReason::Vmcall => vmcall(vmcs, regs, vcpu, platform),
        ExitReason::Hlt => hlt(vmcs),
        ExitReason::Rdmsr => rdmsr(vmcs, regs, vcpu),
        ExitReason::Wrmsr => wrmsr(vmcs, regs, vcpu),
        ExitReason::ControlRegisterAccess => cr_access(
            vmcs,
            regs,
            vcpu,
            platform,
            CrAccess::from_qualification(qualification),
        ),
        ExitReason::Xsetbv => xsetbv(vmcs, regs, vcpu, platform),
        ExitReason::PreemptionTimerExpired => Ok(Outcome::Preempted),
        ExitReason::ExternalInterrupt => {
            // Acknowledged on exit: the host's (a kick); the guest goes on
            // once the caller has handled it.
            vcpu.stats.host_events += 1;
            Ok(Outcome::HostInterrupt)
        }
        ExitReason::ExceptionOrNmi => {
            // An NMI (no exception is intercepted): the host has no use for
            // it yet; the guest just goes on.
            vcpu.stats.host_events += 1;
            Ok(Outcome::Resume)
        }
        // The caches are coherent and guest RAM is write-back: nothing to
        // write back or throw away on the guest's behalf.
        ExitReason::Invd | ExitReason::Wbinvd => skip(vmcs),
        // Every VMX instruction, and GETSEC/MONITOR/MWAIT whose CPUID bits
        // the guest does not see: #UD, as on a CPU without them.
        ExitReason::Vmclear
        | ExitReason::Vmlaunch
        | ExitReason::Vmptrld
        | ExitReason::Vmptrst
        | ExitReason::Vmread
        | ExitReason::Vmresume
        | ExitReason::Vmwrite
        | ExitReason::Vmxoff
        | ExitReason::Vmxon
        | ExitReason::Invept
        | ExitReason::Invvpid
        | ExitReason::Vmfunc
        | ExitReason::Getsec
        | ExitReason::Monitor
        | ExitReason::Mwait => inject(vmcs, vcpu, UD, None),
        // No performance counters are offered (CPUID leaf 0xA is empty).
        ExitReason::Rdpmc => inject(vmcs, vcpu, GP, Some(0)),
        ExitReason::TripleFault => Ok(Outcome::stop(StopReason::TripleFault(Box::new(dump(
            vmcs, regs,
        )?)))),
        ExitReason::EptViolation => {
            let gpa = GuestPhysAddr::new(vmcs.read(ReadOnly64::GuestPhysicalAddress)?);
            Ok(Outcome::stop(StopReason::EptViolation {
                violation: EptViolation::from_qualification(qualification, gpa),
                ram: platform.ram_size(),
                rip: vmcs.read(GuestNatural::Rip)?,
            }))
        }
        ExitReason::EptMisconfiguration => Ok(Outcome::stop(StopReason::EptMisconfiguration {
            gpa: vmcs.read(ReadOnly64::GuestPhysicalAddress)?,
        })),
        ExitReason::TaskSwitch => Ok(Outcome::stop(StopReason::TaskSwitch {
            rip: vmcs.read(GuestNatural::Rip)?,
        })),
        reason => unhandled(vmcs, reason, qualification),
    }
}

fn unhandled<V: VmcsAccess>(
    vmcs: &V,
    reason: ExitReason,
    qualification: u64,
) -> Result<Outcome, VmFail> {
    Ok(Outcome::stop(StopReason::UnhandledExit {
        reason,
        qualification,
        rip: vmcs.read(GuestNatural::Rip)?,
    }))
}

/// Moves RIP past the instruction that exited and drops the one-instruction
/// interrupt shadow it may have had (SDM Vol. 3C, 27.3.1.5: "blocking by
/// STI" and "by MOV SS" must be clear when the instruction is skipped).
#[inline]
fn skip<V: VmcsAccess>(vmcs: &mut V) -> Result<Outcome, VmFail> {
    let len = vmcs.read(ReadOnly32::ExitInstructionLength)?;
    let rip = vmcs.read(GuestNatural::Rip)?;
    let mut next = rip.wrapping_add(u64::from(len));
    // Outside 64-bit mode EIP wraps at 4 GiB; asking the mode only when
    // that can matter keeps the common path to three VMCS accesses.
    if next > u64::from(u32::MAX) && !is_long_mode(vmcs)? {
        next &= 0xFFFF_FFFF;
    }
    vmcs.write(GuestNatural::Rip, next)?;
    let interruptibility = vmcs.read(Guest32::InterruptibilityState)?;
    if interruptibility & 0b11 != 0 {
        vmcs.write(Guest32::InterruptibilityState, interruptibility & !0b11)?;
    }
    Ok(Outcome::Resume)
}

/// Injects hardware exception `vector` at the instruction that exited (it
/// faults, so RIP stays). Outside protected mode no error code is pushed
/// (SDM Vol. 3C, 27.2.1.3: delivering one with CR0.PE = 0 fails VM entry).
fn inject<V: VmcsAccess>(
    vmcs: &mut V,
    vcpu: &mut VcpuModel,
    vector: u8,
    error_code: Option<u32>,
) -> Result<Outcome, VmFail> {
    let protected = vmcs.read(GuestNatural::Cr0)? & CR0_PE != 0;
    let mut info = (1u32 << 31) | (3 << 8) | u32::from(vector);
    if let (Some(code), true) = (error_code, protected) {
        info |= 1 << 11;
        vmcs.write(Control32::EntryExceptionErrorCode, code)?;
    }
    vmcs.write(Control32::EntryInterruptionInfo, info)?;
    vcpu.stats.injected += 1;
    Ok(Outcome::Resume)
}

/// Whether the guest runs 64-bit code (IA32_EFER.LMA and CS.L).
fn is_long_mode<V: VmcsAccess>(vmcs: &V) -> Result<bool, VmFail> {
    Ok(
        vmcs.read(Guest64::Efer)? & EFER_LMA != 0
            && vmcs.read(Guest32::CsAccessRights)? & AR_L != 0,
    )
}

/// The guest's CPL (SS.DPL, SDM Vol. 3A, 5.5).
fn cpl<V: VmcsAccess>(vmcs: &V) -> Result<u32, VmFail> {
    Ok((vmcs.read(Guest32::SsAccessRights)? >> 5) & 3)
}

fn dump<V: VmcsAccess>(vmcs: &V, regs: &GuestRegisters) -> Result<RegisterDump, VmFail> {
    let shadowed = |real: u64, shadow: u64, mask: u64| (real & !mask) | (shadow & mask);
    let gpr = |r: Gpr| regs.get(r).unwrap_or(0);
    Ok(RegisterDump {
        rip: vmcs.read(GuestNatural::Rip)?,
        rsp: vmcs.read(GuestNatural::Rsp)?,
        rflags: vmcs.read(GuestNatural::Rflags)?,
        cr0: shadowed(
            vmcs.read(GuestNatural::Cr0)?,
            vmcs.read(ControlNatural::Cr0ReadShadow)?,
            vmcs.read(ControlNatural::Cr0GuestHostMask)?,
        ),
        cr3: vmcs.read(GuestNatural::Cr3)?,
        cr4: shadowed(
            vmcs.read(GuestNatural::Cr4)?,
            vmcs.read(ControlNatural::Cr4ReadShadow)?,
            vmcs.read(ControlNatural::Cr4GuestHostMask)?,
        ),
        efer: vmcs.read(Guest64::Efer)?,
        cs: vmcs.read(Guest16::CsSelector)?,
        gprs: [
            Gpr::Rax,
            Gpr::Rbx,
            Gpr::Rcx,
            Gpr::Rdx,
            Gpr::Rsi,
            Gpr::Rdi,
            Gpr::Rbp,
        ]
        .map(gpr),
    })
}

#[inline(always)]
fn cpuid<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &P,
) -> Result<Outcome, VmFail> {
    vcpu.stats.cpuid += 1;
    let cr4 = vmcs.read(ControlNatural::Cr4ReadShadow)?;
    let ctx = GuestCpuidContext {
        vcpu_index: vcpu.index,
        vcpus: vcpu.vcpus,
        cr4_osxsave: cr4 & CR4_OSXSAVE != 0,
        cr4_pke: cr4 & CR4_PKE != 0,
    };
    let (leaf, subleaf) = (regs.rax() as u32, regs.rcx() as u32);
    let r = vcpu
        .cpuid_cache
        .lookup(leaf, subleaf, &ctx, |l, s| platform.host_cpuid(l, s));
    // CPUID writes all four registers zero-extended, in every mode.
    regs.set_rax(u64::from(r.eax));
    regs.set_rbx(u64::from(r.ebx));
    regs.set_rcx(u64::from(r.ecx));
    regs.set_rdx(u64::from(r.edx));
    skip(vmcs)
}

fn io<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &mut P,
    qualification: u64,
) -> Result<Outcome, VmFail> {
    vcpu.stats.io += 1;
    let Ok(io) = IoQualification::from_qualification(qualification) else {
        return unhandled(vmcs, ExitReason::IoInstruction, qualification);
    };
    if io.string {
        return Ok(Outcome::stop(StopReason::StringIo {
            io,
            rip: vmcs.read(GuestNatural::Rip)?,
        }));
    }
    let size = io.size.bytes();
    let com1 = COM1_BASE..COM1_BASE + 8;
    match io.direction {
        IoDirection::Out => {
            let value = regs.rax();
            for i in 0..size {
                let port = io.port.wrapping_add(u16::from(i));
                let byte = (value >> (8 * i)) as u8;
                if com1.contains(&port) {
                    if let Some(out) = vcpu.uart.write(port - COM1_BASE, byte) {
                        vcpu.console_bytes(&[out], platform);
                    }
                } else {
                    // Port 0xCF9 (reset) lands here too: a guest does not
                    // reset the machine.
                    vcpu.stats.io_writes_ignored += 1;
                }
            }
        }
        IoDirection::In => {
            let mut value = 0u64;
            for i in 0..size {
                let port = io.port.wrapping_add(u16::from(i));
                let byte = if com1.contains(&port) {
                    vcpu.uart.read(port - COM1_BASE)
                } else {
                    vcpu.stats.io_reads_unclaimed += 1;
                    0xFF
                };
                value |= u64::from(byte) << (8 * i);
            }
            // IN AL/AX leaves the rest of RAX; IN EAX zero-extends.
            let rax = match size {
                1 => (regs.rax() & !0xFF) | value,
                2 => (regs.rax() & !0xFFFF) | value,
                _ => value,
            };
            regs.set_rax(rax);
        }
    }
    skip(vmcs)
}

fn vmcall<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &mut P,
) -> Result<Outcome, VmFail> {
    if cpl(vmcs)? != 0 {
        return inject(vmcs, vcpu, UD, None);
    }
    vcpu.stats.hypercalls += 1;
    let long = is_long_mode(vmcs)?;
    let result = match Hypercall::decode(regs.rax(), regs.rbx(), regs.rcx(), long) {
        Hypercall::Exit { code } => {
            vcpu.console.flush(|line| platform.guest_line(line));
            return Ok(Outcome::stop(StopReason::Exited { code }));
        }
        Hypercall::Print { gpa, len } => print(vcpu, platform, gpa, len),
        Hypercall::Unknown { .. } => hypercall::UNKNOWN_CALL,
    };
    regs.set_rax(Hypercall::result(result, long));
    skip(vmcs)
}

fn print<P: Platform>(vcpu: &mut VcpuModel, platform: &mut P, gpa: GuestPhysAddr, len: u64) -> u64 {
    let in_ram = gpa
        .checked_add(len)
        .is_some_and(|end| end.as_u64() <= platform.ram_size());
    if len > hypercall::PRINT_MAX || !in_ram {
        return hypercall::BAD_ARGUMENT;
    }
    let mut buf = [0u8; 256];
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(buf.len() as u64) as usize;
        let Some(part) = buf.get_mut(..chunk) else {
            return hypercall::BAD_ARGUMENT;
        };
        let Some(at) = gpa.checked_add(done) else {
            return hypercall::BAD_ARGUMENT;
        };
        if !platform.read_guest(at, part) {
            return hypercall::BAD_ARGUMENT;
        }
        vcpu.console_bytes(part, platform);
        done += chunk as u64;
    }
    0
}

fn hlt<V: VmcsAccess>(vmcs: &mut V) -> Result<Outcome, VmFail> {
    let rip = vmcs.read(GuestNatural::Rip)?;
    if vmcs.read(GuestNatural::Rflags)? & RFLAGS_IF == 0 {
        return Ok(Outcome::stop(StopReason::HaltedWithInterruptsOff { rip }));
    }
    skip(vmcs)?;
    Ok(Outcome::Halted)
}

fn rdmsr<V: VmcsAccess>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
) -> Result<Outcome, VmFail> {
    vcpu.stats.msr += 1;
    match vcpu.msrs.read(regs.rcx() as u32) {
        Ok(value) => {
            regs.set_rax(value & 0xFFFF_FFFF);
            regs.set_rdx(value >> 32);
            skip(vmcs)
        }
        Err(_) => inject(vmcs, vcpu, GP, Some(0)),
    }
}

fn wrmsr<V: VmcsAccess>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
) -> Result<Outcome, VmFail> {
    vcpu.stats.msr += 1;
    let value = (regs.rdx() << 32) | (regs.rax() & 0xFFFF_FFFF);
    match vcpu.msrs.write(regs.rcx() as u32, value) {
        Ok(()) => skip(vmcs),
        Err(_) => inject(vmcs, vcpu, GP, Some(0)),
    }
}

/// XSETBV (SDM Vol. 2C "XSETBV"): ECX must be 0, bit 0 (x87) set, only
/// bits the host supports, AVX only with SSE, the AVX-512 bits all or none
/// and only with AVX, the MPX bits together. Anything else is #GP(0), as
/// on hardware.
fn xsetbv<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &mut P,
) -> Result<Outcome, VmFail> {
    let value = (regs.rdx() << 32) | (regs.rax() & 0xFFFF_FFFF);
    if regs.rcx() as u32 != 0 || !xcr0_valid(value, platform.xcr0_supported()) {
        return inject(vmcs, vcpu, GP, Some(0));
    }
    platform.load_xcr0(value);
    vcpu.xcr0 = value;
    skip(vmcs)
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
/// host-owned bit, or any CR8 access.
fn cr_access<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    regs: &mut GuestRegisters,
    vcpu: &mut VcpuModel,
    platform: &mut P,
    access: CrAccess,
) -> Result<Outcome, VmFail> {
    let long = is_long_mode(vmcs)?;
    let width = |v: u64| if long { v } else { v & 0xFFFF_FFFF };
    match (access.cr, access.access) {
        (0, CrAccessType::MovTo { gpr }) => {
            let value = width(regs.get(gpr).unwrap_or(vmcs.read(GuestNatural::Rsp)?));
            write_cr0(vmcs, vcpu, value)
        }
        (4, CrAccessType::MovTo { gpr }) => {
            let value = width(regs.get(gpr).unwrap_or(vmcs.read(GuestNatural::Rsp)?));
            write_cr4(vmcs, vcpu, platform, value)
        }
        (8, CrAccessType::MovTo { gpr }) => {
            let value = regs.get(gpr).unwrap_or(vmcs.read(GuestNatural::Rsp)?);
            if value > 15 {
                return inject(vmcs, vcpu, GP, Some(0));
            }
            vcpu.cr8 = value;
            skip(vmcs)
        }
        (8, CrAccessType::MovFrom { gpr }) => {
            if gpr == Gpr::Rsp {
                vmcs.write(GuestNatural::Rsp, vcpu.cr8)?;
            } else {
                regs.set(gpr, vcpu.cr8);
            }
            skip(vmcs)
        }
        (0, CrAccessType::Lmsw { source, .. }) => {
            // LMSW sets PE, MP, EM and TS and cannot clear PE.
            let shadow = vmcs.read(ControlNatural::Cr0ReadShadow)?;
            let low = u64::from(source) & 0xF;
            let value = (shadow & !0xE) | low | (shadow & CR0_PE);
            write_cr0(vmcs, vcpu, value)
        }
        (0, CrAccessType::Clts) => {
            let shadow = vmcs.read(ControlNatural::Cr0ReadShadow)?;
            write_cr0(vmcs, vcpu, shadow & !(1 << 3))
        }
        _ => {
            let q = vmcs.read(ReadOnlyNatural::ExitQualification)?;
            unhandled(vmcs, ExitReason::ControlRegisterAccess, q)
        }
    }
}

/// Emulates a MOV to CR0 of `value` (the guest's view), checking what the
/// hardware would (SDM Vol. 2B "MOV—Move to/from Control Registers").
fn write_cr0<V: VmcsAccess>(
    vmcs: &mut V,
    vcpu: &mut VcpuModel,
    value: u64,
) -> Result<Outcome, VmFail> {
    let old = vmcs.read(ControlNatural::Cr0ReadShadow)?;
    let reserved = value >> 32 != 0;
    let pg_without_pe = value & CR0_PG != 0 && value & CR0_PE == 0;
    let nw_without_cd = value & CR0_NW != 0 && value & CR0_CD == 0;
    if reserved || pg_without_pe || nw_without_cd {
        return inject(vmcs, vcpu, GP, Some(0));
    }
    let mut efer = vmcs.read(Guest64::Efer)?;
    let paging_on = value & CR0_PG != 0 && old & CR0_PG == 0;
    let paging_off = value & CR0_PG == 0 && vmcs.read(GuestNatural::Cr0)? & CR0_PG != 0;
    if efer & EFER_LME != 0 && (paging_on || paging_off) {
        // The mode switch the hardware would have made (SDM Vol. 3A,
        // 10.8.5): EFER.LMA follows CR0.PG, and VM entry's "IA-32e mode
        // guest" must follow EFER.LMA.
        let entry = vmcs.read(Control32::EntryControls)?;
        if paging_on {
            efer |= EFER_LMA;
            vmcs.write(Control32::EntryControls, entry | ENTRY_IA32E)?;
        } else {
            efer &= !EFER_LMA;
            vmcs.write(Control32::EntryControls, entry & !ENTRY_IA32E)?;
        }
        vmcs.write(Guest64::Efer, efer)?;
    }
    vmcs.write(ControlNatural::Cr0ReadShadow, value)?;
    vmcs.write(GuestNatural::Cr0, vcpu.cr0_for_hardware(value))?;
    skip(vmcs)
}

/// Emulates a MOV to CR4: VMXE (VMX is hidden) and bits VMX operation
/// does not allow are #GP(0).
fn write_cr4<V: VmcsAccess, P: Platform>(
    vmcs: &mut V,
    vcpu: &mut VcpuModel,
    platform: &mut P,
    value: u64,
) -> Result<Outcome, VmFail> {
    let forbidden = CR4_VMXE | vcpu.cr4_fixed.must_be_zero();
    if value & forbidden != 0 {
        return inject(vmcs, vcpu, GP, Some(0));
    }
    let old = vmcs.read(ControlNatural::Cr4ReadShadow)?;
    vmcs.write(ControlNatural::Cr4ReadShadow, value)?;
    vmcs.write(GuestNatural::Cr4, vcpu.cr4_for_hardware(value))?;
    if (old ^ value) & CR4_PAGING_BITS != 0 {
        platform.flush_guest_tlb();
    }
    skip(vmcs)
}

#[cfg(test)]
mod tests;
