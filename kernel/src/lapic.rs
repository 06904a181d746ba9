//! The local APIC of each CPU: enabling it, its ID, end of interrupt, and
//! inter-processor interrupts (INIT and start-up IPIs to wake the
//! application processors, fixed IPIs to kick a CPU).
//!
//! Both register interfaces are driven (SDM Vol. 3A, chapter 11, "Advanced
//! Programmable Interrupt Controller (APIC)"): xAPIC, registers in a 4 KiB
//! MMIO page (uncached, mapped once by the boot CPU), and x2APIC, the same
//! registers as MSRs 0x800 + offset/16, where firmware left it on. Which
//! one is in use is read from IA32_APIC_BASE on the boot CPU; every CPU
//! uses the same.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};

use log::info;
use mm::addr::HostPhysAddr;

use crate::arch;
use crate::drivers::{self, Clock};

/// IA32_APIC_BASE: the APIC's physical base (bits 12+), global enable
/// (bit 11) and x2APIC mode (bit 10).
const IA32_APIC_BASE: u32 = 0x1B;
const BASE_ENABLE: u64 = 1 << 11;
const BASE_X2APIC: u64 = 1 << 10;

/// Register offsets in the xAPIC page.
const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xB0;
const REG_SVR: usize = 0xF0;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_ERROR: usize = 0x370;
const REG_ESR: usize = 0x280;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3E0;
/// The divide configuration "divide by 1" (SDM Vol. 3A, 11.5.4).
const DIVIDE_BY_1: u32 = 0b1011;

/// An LVT entry's mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// ICR: delivery modes (bits 8-10), level assert (bit 14), delivery status
/// (bit 12, xAPIC only).
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_PENDING: u32 = 1 << 12;

/// The vector of the spurious interrupt (low nibble all ones, as older
/// APICs require).
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// The vector of a kick: "look at your run queue and mailbox".
pub const KICK_VECTOR: u8 = 0xF0;

/// The register interface in use.
const MODE_NONE: u8 = 0;
const MODE_XAPIC: u8 = 1;
const MODE_X2APIC: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_NONE);
/// The xAPIC register page, mapped uncached (null in x2APIC mode).
static XAPIC: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Whether the APIC timer has TSC-deadline mode (CPUID.01H:ECX[24]), read
/// once by [`init_boot_cpu`] (the CPUs of one machine are one model), so
/// the idle path does not pay a CPUID (an exit of its own under nested
/// virtualization) each time it halts.
static TSC_DEADLINE: AtomicBool = AtomicBool::new(false);

/// Why the local APIC cannot be used.
#[derive(Debug)]
pub struct ApicError(pub &'static str);

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

/// Finds the boot CPU's local APIC, maps its registers if they are MMIO,
/// and enables it. Run once, on the boot CPU, before any other CPU starts
/// (the mapping changes the shared page tables).
pub fn init_boot_cpu() -> Result<(), ApicError> {
    if arch::cpuid(1, 0).edx & (1 << 9) == 0 {
        return Err(ApicError("CPUID reports no local APIC"));
    }
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC
    // (CPUID.1:EDX.APIC, checked above).
    let base = unsafe { arch::rdmsr(IA32_APIC_BASE) };
    if base & BASE_ENABLE == 0 {
        return Err(ApicError(
            "the firmware left the local APIC globally disabled",
        ));
    }
    TSC_DEADLINE.store(arch::cpuid(1, 0).ecx & (1 << 24) != 0, Ordering::Release);
    if base & BASE_X2APIC != 0 {
        MODE.store(MODE_X2APIC, Ordering::Release);
        info!("apic: x2APIC mode, this CPU's APIC ID {}", id());
    } else {
        let phys = base & 0x000F_FFFF_FFFF_F000;
        let regs = drivers::mmio::map_uncached(HostPhysAddr::new(phys), 0x1000)
            .map_err(|_| ApicError("its register page cannot be mapped"))?;
        XAPIC.store(regs, Ordering::Release);
        MODE.store(MODE_XAPIC, Ordering::Release);
        info!(
            "apic: xAPIC registers at {phys:#x}, this CPU's APIC ID {}",
            id()
        );
    }
    enable_this_cpu();
    Ok(())
}

/// Software-enables the calling CPU's APIC with the spurious vector, and
/// accepts every interrupt priority. Its timer and error interrupts are
/// masked: firmware may have left the timer running, and the host uses
/// neither.
pub fn enable_this_cpu() {
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_LVT_ERROR, LVT_MASKED);
    write(REG_TPR, 0);
    let svr = read(REG_SVR);
    write(REG_SVR, svr | SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
}

/// LVT timer mode "TSC-deadline" (SDM Vol. 3A, 11.5.4.1), bits 18:17.
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
/// IA32_TSC_DEADLINE.
const IA32_TSC_DEADLINE: u32 = 0x6E0;

/// Whether the APIC timer has TSC-deadline mode (as the boot CPU
/// reported it).
pub fn has_tsc_deadline() -> bool {
    TSC_DEADLINE.load(Ordering::Acquire)
}

/// APIC timer counts per TSC tick, as a 32.32 fixed-point number, measured
/// by [`calibrate`] where there is no TSC-deadline mode (AMD CPUs, QEMU's
/// emulation); 0 until then.
static COUNTS_PER_TSC: AtomicU64 = AtomicU64::new(0);

/// Measures the APIC timer's rate against the TSC (`tsc_hz`) on the boot
/// CPU, for [`arm_wakeup`] on CPUs without TSC-deadline mode (every CPU of
/// the machine counts at the same rate). Takes 10 ms.
pub fn calibrate(tsc_hz: u64) {
    if has_tsc_deadline() || MODE.load(Ordering::Acquire) == MODE_NONE {
        return;
    }
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
    let start = crate::guests::rdtsc();
    write(REG_TIMER_INITIAL, u32::MAX);
    let wait = (tsc_hz / 100).max(1);
    while crate::guests::rdtsc().wrapping_sub(start) < wait {
        core::hint::spin_loop();
    }
    let counted = u32::MAX - read(REG_TIMER_CURRENT);
    let elapsed = crate::guests::rdtsc().wrapping_sub(start).max(1);
    write(REG_TIMER_INITIAL, 0);
    let rate = ((u128::from(counted) << 32) / u128::from(elapsed)) as u64;
    COUNTS_PER_TSC.store(rate, Ordering::Release);
    info!(
        "apic: no TSC-deadline mode; timer counts {} times per 1000 TSC ticks",
        (u128::from(rate) * 1000) >> 32
    );
}

/// Arms the calling CPU's APIC timer to interrupt it (with the kick
/// vector, so a halted CPU wakes as if kicked) once the TSC reaches
/// `deadline`, or disarms it (`None`): in TSC-deadline mode, else in
/// one-shot mode counted from the rate [`calibrate`] measured (a wake-up
/// more than 2^32 counts away comes early, which a waiter must expect of
/// any kick). False when neither works: the caller must not halt past
/// `deadline` then.
pub fn arm_wakeup(deadline: Option<u64>) -> bool {
    if !has_tsc_deadline() {
        return arm_one_shot(deadline);
    }
    match deadline {
        Some(at) => {
            write(REG_LVT_TIMER, LVT_TSC_DEADLINE | u32::from(KICK_VECTOR));
            // SAFETY: the MSR exists with TSC-deadline mode (checked
            // above); a deadline in the past fires at once, which is what
            // the caller wants.
            unsafe { arch::wrmsr(IA32_TSC_DEADLINE, at.max(1)) };
        }
        None => {
            // SAFETY: as above; writing 0 disarms the timer.
            unsafe { arch::wrmsr(IA32_TSC_DEADLINE, 0) };
            write(REG_LVT_TIMER, LVT_MASKED);
        }
    }
    true
}

/// The deadline each CPU's one-shot timer is armed for (0: none, or it
/// may have fired), so that arming it again for the same deadline, as the
/// SVM backend does before every entry of a slice, costs no register
/// writes.
static ONE_SHOT_AT: [AtomicU64; crate::cpu::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::cpu::MAX_CPUS];

fn one_shot_slot() -> &'static AtomicU64 {
    &ONE_SHOT_AT[usize::from(crate::cpu::current_index()) % crate::cpu::MAX_CPUS]
}

/// The calling CPU took an interrupt on the kick vector, which may have
/// been its timer's: the next [`arm_wakeup`] writes the timer again.
pub fn kicked() {
    if !has_tsc_deadline() {
        one_shot_slot().store(0, Ordering::Relaxed);
    }
}

/// [`arm_wakeup`] in one-shot mode.
fn arm_one_shot(deadline: Option<u64>) -> bool {
    let rate = COUNTS_PER_TSC.load(Ordering::Acquire);
    if rate == 0 {
        return false;
    }
    let armed = one_shot_slot();
    if deadline.is_some_and(|at| at == armed.load(Ordering::Relaxed)) {
        return true;
    }
    armed.store(deadline.unwrap_or(0), Ordering::Relaxed);
    match deadline {
        Some(at) => {
            let ticks = at.saturating_sub(crate::guests::rdtsc());
            // Rounded up, so the interrupt never comes before `at`.
            let counts = ((u128::from(ticks) * u128::from(rate)) >> 32) + 1;
            write(REG_LVT_TIMER, u32::from(KICK_VECTOR));
            write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
            write(REG_TIMER_INITIAL, u32::try_from(counts).unwrap_or(u32::MAX));
        }
        None => {
            write(REG_TIMER_INITIAL, 0);
            write(REG_LVT_TIMER, LVT_MASKED);
        }
    }
    true
}

/// The calling CPU's APIC ID.
pub fn id() -> u32 {
    match MODE.load(Ordering::Acquire) {
        MODE_X2APIC => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

/// Signals the end of the interrupt being serviced.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Sends INIT, then two start-up IPIs with vector `page` (the start-up
/// code's physical address / 4096), to the CPU with APIC ID `apic_id`,
/// with the waits the SDM's MP initialization protocol prescribes (Vol.
/// 3A 9.4.4.1: 10 ms after INIT, 200 us between the SIPIs).
pub fn start_cpu(apic_id: u32, page: u8, clock: Clock) -> Result<(), ApicError> {
    // Clear stale errors: the ESR is written before it is read.
    write(REG_ESR, 0);
    send(apic_id, ICR_INIT | ICR_ASSERT, clock)?;
    wait(clock, 10_000);
    for _ in 0..2 {
        send(apic_id, ICR_STARTUP | ICR_ASSERT | u32::from(page), clock)?;
        wait(clock, 200);
    }
    Ok(())
}

/// Sends INIT alone: the CPU goes back to waiting for a start-up IPI
/// (used on a CPU that did not answer, so it cannot run the start-up code
/// late).
pub fn park(apic_id: u32, clock: Clock) -> Result<(), ApicError> {
    send(apic_id, ICR_INIT | ICR_ASSERT, clock)
}

/// Sends a kick (a fixed IPI with [`KICK_VECTOR`]) to APIC ID `apic_id`.
pub fn kick(apic_id: u32, clock: Clock) {
    // A kick that cannot be delivered only delays work: the target looks
    // at its queue at its next slice end or wake-up anyway.
    let _ = send(
        apic_id,
        ICR_FIXED | ICR_ASSERT | u32::from(KICK_VECTOR),
        clock,
    );
}

fn send(apic_id: u32, command: u32, clock: Clock) -> Result<(), ApicError> {
    match MODE.load(Ordering::Acquire) {
        MODE_X2APIC => {
            let icr = (u64::from(apic_id) << 32) | u64::from(command);
            // SAFETY: MSR 0x830 is the x2APIC ICR, present in x2APIC mode;
            // the command is one of the IPIs this module sends.
            unsafe { arch::wrmsr(0x830, icr) };
            Ok(())
        }
        MODE_XAPIC => {
            let deadline = clock.deadline_ms(10);
            drivers::poll(deadline, || {
                (read(REG_ICR_LOW) & ICR_PENDING == 0).then_some(())
            })
            .ok_or(ApicError("an earlier IPI was never delivered"))?;
            write(REG_ICR_HIGH, apic_id << 24);
            write(REG_ICR_LOW, command);
            Ok(())
        }
        _ => Err(ApicError("the local APIC was not set up")),
    }
}

/// Waits `us` microseconds on the TSC.
fn wait(clock: Clock, us: u64) {
    let deadline = clock.deadline_us(us);
    let _ = drivers::poll(deadline, || None::<()>);
}

fn read(reg: usize) -> u32 {
    match MODE.load(Ordering::Acquire) {
        // SAFETY: in x2APIC mode the APIC registers are MSRs 0x800 +
        // offset / 16, and reading ID, SVR and ICR has no side effects.
        MODE_X2APIC => unsafe { arch::rdmsr(0x800 + (reg as u32 >> 4)) as u32 },
        MODE_XAPIC => {
            let base = XAPIC.load(Ordering::Acquire);
            // SAFETY: `init_boot_cpu` mapped the 4 KiB register page
            // uncached at `base`; `reg` is one of this module's offsets,
            // aligned 16-byte registers inside it.
            unsafe { base.add(reg).cast::<u32>().read_volatile() }
        }
        _ => 0,
    }
}

fn write(reg: usize, value: u32) {
    match MODE.load(Ordering::Acquire) {
        // SAFETY: as in `read`; the values written are the ones the SDM
        // defines for these registers.
        MODE_X2APIC => unsafe { arch::wrmsr(0x800 + (reg as u32 >> 4), u64::from(value)) },
        MODE_XAPIC => {
            let base = XAPIC.load(Ordering::Acquire);
            // SAFETY: as in `read`.
            unsafe { base.add(reg).cast::<u32>().write_volatile(value) }
        }
        _ => {}
    }
}
