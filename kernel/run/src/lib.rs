//! The guests' run, on every CPU that runs guests, whatever the
//! virtualization backend: each CPU asks `sched` what to run, runs that
//! vCPU for the slice it gives, handles its exits with the vendor-neutral
//! handlers, reports how the slice ended, and halts when there is nothing
//! to run; a guest that stops is reported, destroyed and, where the
//! configuration says so, started again.
//!
//! The run reaches hardware only through [`Backend`]: the kernel binary
//! implements it over VT-x and the local APIC, and the host tests over a
//! fake backend whose CPUs are threads, so the loop, the stop and restart
//! policy and the hand-over of a vCPU between CPUs run on the host.
//!
//! # Hand-over between CPUs
//!
//! A vCPU's hardware state (a VMCS) is *active* on at most one CPU at a
//! time, and that CPU may also hold the vCPU's lazily switched state
//! (extended state, CR2, debug registers, SYSCALL MSRs) in its registers:
//! [`Vcpu::active_on`] names it. A vCPU that runs again where it ran last
//! costs [`Backend::make_current`] at most, and its switched state moves
//! only if another vCPU ran there in between. When `sched` moves a vCPU at
//! the end of its turn, the CPU it ran on gives it up at once, while it
//! still holds the guest's slot lock. A vCPU still active elsewhere when a
//! CPU needs it (stolen by an idle CPU, or stopped) is taken over through
//! that CPU's [`handover::Mailbox`] and a kick. Every wait (a mailbox, a
//! slot lock) serves the waiting CPU's own mailbox, so two CPUs that wait
//! on each other both make progress; the scheduler lock is never held
//! across a wait.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use log::info;

use sched::CpuId;
use spin::{Mutex, MutexGuard};

use config::{GuestConfig, GuestStopAction};
use vcpu::apic_bus::ApicBus;
use vcpu::com_out::ComOut;
use vcpu::exit::{Exit, Outcome, VcpuModel};
use vcpu::stop::StopReason;
use vcpu::vm::{VmDevices, WallClock};

mod console_service;
mod cpu_loop;
mod figures;
mod handover;
mod lifecycle;
mod monitor;
#[cfg(test)]
mod tests;

pub use figures::CpuFigures;
use handover::Mailbox;

/// What the run needs from the machine and the virtualization extension.
///
/// The host half (clock, kicks, halting) is per CPU: each method acts on
/// the CPU that calls it. The guest half acts on one guest's hardware
/// state; the run calls it with that guest's slot locked, on a CPU where
/// the rules of [`Vcpu::active_on`] allow it.
pub trait Backend: Sync {
    /// A VM's hardware half: its RAM and second-level page tables, read
    /// by its vCPUs on several CPUs at once.
    type Vm: Send + Sync;
    /// A vCPU's hardware half: its VMCS (or VMCB), registers and switched
    /// state.
    type Vcpu: Send;

    /// The calling CPU's clock (TSC ticks); the scheduler's clock.
    fn now(&self) -> u64;
    /// The TSC's rate in Hz (every CPU's: they agree), which guests are
    /// told and their device timers run on.
    fn tsc_hz(&self) -> u64;
    /// The time of day now, for a new guest's RTC.
    fn wall_clock(&self) -> WallClock;
    /// The calling CPU's number.
    fn this_cpu(&self) -> usize;
    /// Readies the calling CPU to run guests (once per CPU per run).
    fn prepare_this_cpu(&self);
    /// Interrupts CPU `cpu` (a kick): it leaves its guest or its halt and
    /// looks at its mailbox and run queue.
    fn kick(&self, cpu: usize);
    /// Ends the host interrupt that made the guest exit
    /// ([`Outcome::HostInterrupt`]).
    fn end_host_interrupt(&self);
    /// Halts the calling CPU with interrupts on until a kick, or until
    /// `until` (TSC) when given. False when it cannot wait for `until`
    /// without polling: the caller looks again instead.
    fn idle(&self, until: Option<u64>) -> bool;

    /// Creates guest number `index` (0-based, as configured) from its
    /// configuration: memory, image, and its `config.vcpus` vCPUs (the
    /// first ready to run the image, the others waiting for a start-up
    /// IPI), each active on this CPU, the last one current. `None` when it
    /// cannot start; the backend has said why.
    fn create(&self, index: usize, config: &GuestConfig) -> Option<(Self::Vm, Vec<Self::Vcpu>)>;
    /// Gives back what one vCPU holds. It is active on this CPU or on
    /// none.
    fn destroy_vcpu(&self, vm: &Self::Vm, vcpu: &mut Self::Vcpu);
    /// Gives back what the VM holds, once its vCPUs are destroyed.
    fn destroy_vm(&self, vm: &mut Self::Vm);
    /// Starts the vCPU (current on this CPU) as a start-up IPI with start
    /// page `vector` does (SDM Vol. 3A, 9.4.4 and 11.6.1): real mode at
    /// `vector << 12`, the rest as INIT leaves it.
    fn start_up(&self, vcpu: &mut Self::Vcpu, vector: u8) -> Result<(), String>;
    /// Takes the vCPU, active on no CPU, onto this CPU (`cpu`): loads it
    /// and points its host state at this CPU; the next entry launches it.
    fn arrive(&self, vm: &Self::Vm, vcpu: &mut Self::Vcpu, cpu: usize) -> Result<(), String>;
    /// Makes the vCPU, active on this CPU, current here.
    fn make_current(&self, vcpu: &mut Self::Vcpu) -> Result<(), String>;
    /// Makes the vCPU, active on this CPU, inactive, so another CPU may
    /// take it.
    fn clear(&self, vcpu: &mut Self::Vcpu);
    /// Saves the vCPU's switched state from this CPU's registers.
    fn save_switched(&self, vcpu: &mut Vcpu<Self>)
    where
        Self: Sized;
    /// Loads the vCPU's switched state (its XCR0 among it) into this
    /// CPU's registers.
    fn load_switched(&self, vcpu: &mut Vcpu<Self>)
    where
        Self: Sized;
    /// Sets the timer that ends the vCPU's slice `ticks` from its entry.
    fn set_slice(&self, vcpu: &mut Self::Vcpu, ticks: u64) -> Result<(), String>;
    /// Enters the vCPU (current on this CPU) and returns its decoded exit
    /// (boxed error: the result travels in two registers on every exit).
    /// A backend may queue a byte-sized OUT to COM1's transmit register
    /// in `com1_out`, or answer a byte-sized IN from its line status
    /// register with [`ComOut::lsr`], and resume the guest without
    /// returning; it counts such exits as I/O exits at its next
    /// [`Backend::handle`].
    fn enter(&self, vcpu: &mut Self::Vcpu, com1_out: &ComOut) -> Result<Exit, Box<StopReason>>;
    /// Handles `exit` of `vcpu` with the neutral handlers (locking the
    /// VM's devices where the exit needs them).
    fn handle(&self, vm: &Vm<Self>, vcpu: &mut Vcpu<Self>, exit: &Exit) -> Outcome
    where
        Self: Sized;
    /// Delivers the interrupt the vCPU's local APIC or the VM's 8259
    /// holds, or asks for an interrupt window (before an entry, the vCPU
    /// current here).
    fn deliver_interrupt(
        &self,
        vm: &Vm<Self>,
        vcpu: &mut Vcpu<Self>,
        now: u64,
    ) -> Result<(), StopReason>
    where
        Self: Sized;
    /// Where the vCPU resumes (RIP), for reports.
    fn rip(&self, vcpu: &Self::Vcpu) -> u64;
    /// Prints one line of guest `name`'s console.
    fn guest_line(&self, name: &str, line: &str);
    /// Guest number `index`, named `name`, stopped for `reason` (after the
    /// run has printed it): for a backend that keeps its own record.
    fn stopped(&self, index: usize, name: &str, reason: &StopReason) {
        let _ = (index, name, reason);
    }

    // The serial console. The backend owns the physical port, the output
    // rings and the focus (`console::Mux`, `console::InputRouter`); the
    // run owns the monitor and the guests it acts on. Every method returns
    // without waiting on the port.

    /// Makes configured guest number `index`, named `name`, a console
    /// source and a focus target. Called once per configured guest, in
    /// order, when the run is set up (a guest keeps its source across
    /// restarts, so its replay tail survives them).
    fn console_add_guest(&self, index: usize, name: &str);
    /// Raw bytes guest `index` transmitted on its COM1.
    fn guest_output(&self, index: usize, bytes: &[u8]);
    /// Guest `index`'s vCPU was preempted (`held`) or runs again: while
    /// it waits for a CPU its silence is not a pause, so the console
    /// keeps its partial line rather than show it cut.
    fn console_hold(&self, index: usize, held: bool);
    /// Host text for the console (the monitor's answers): whole lines,
    /// each ending in `\n`.
    fn console_write(&self, text: &str);
    /// The monitor's prompt, kept on the console's last line.
    fn console_prompt(&self, prompt: &str);
    /// Takes what the console received since the last call, routes it
    /// (hot-key focus changes are handled and announced inside), and
    /// hands each piece for a guest or the monitor to `out`, with no lock
    /// of the backend's held.
    fn console_input(&self, out: &mut dyn FnMut(ConsoleInput<'_>));
    /// Sends pending output to the port as far as that needs no waiting.
    /// `Some(tsc)` when output is still pending: the console wants to be
    /// served again by then (a partial line's pause, or a port still busy).
    fn console_pump(&self) -> Option<u64>;
    /// Whether a pass of the console at clock value `now` would find
    /// nothing to do (no input received, nothing held back in the port,
    /// no output due before the pump's deadline): `Some` of what
    /// [`Backend::console_pump`] would then return. `None`, the safe
    /// answer, unless the backend can tell.
    fn console_quiet(&self, now: u64) -> Option<Option<u64>> {
        let _ = now;
        None
    }
    /// Guest `index`'s recent console output (its replay tail, oldest
    /// byte first) and the bytes of its output dropped so far.
    fn console_history(&self, index: usize) -> Option<(Vec<u8>, u64)>;
    /// A vCPU's registers; the vCPU is current on this CPU and not running.
    fn registers(&self, vcpu: &mut Self::Vcpu) -> console::RegisterSnapshot;
    /// Reads `buf.len()` bytes of the guest's RAM at guest-physical `gpa`:
    /// all of them, or an error (a range outside its RAM names where RAM
    /// ends).
    fn read_memory(&self, vm: &Self::Vm, gpa: u64, buf: &mut [u8])
        -> Result<(), console::MemError>;
    /// The host's figures the run does not keep: uptime, memory, console
    /// drops (the run fills in the per-CPU rows).
    fn host_stats(&self) -> console::HostStats;
    /// Free frames and heap bytes in use now, to report what creating a
    /// guest cost the host; `None` where the backend does not count.
    fn host_memory(&self) -> Option<(u64, u64)> {
        None
    }
    /// Sets the most detailed log level printed.
    fn set_log_level(&self, level: console::LogLevel);
}

/// A piece of console input, routed by the backend's focus.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleInput<'a> {
    /// Bytes for configured guest number `.0`'s COM1 receiver.
    Guest(usize, &'a [u8]),
    /// Bytes for the monitor's line editor.
    Monitor(&'a [u8]),
}

/// One vCPU of a guest.
pub struct Vcpu<B: Backend> {
    /// The backend's half.
    pub hw: B::Vcpu,
    /// The exit handlers' state and counters (its index in the guest
    /// among them).
    pub model: VcpuModel,
    /// The CPU (by number) on which its hardware state is active and its
    /// switched state may be held: only that CPU may run it or clear it.
    pub active_on: Option<usize>,
    /// TSC ticks charged to it: from one of its exits to the next, its
    /// exit handling included.
    pub ticks: u64,
    /// Slices it was given.
    pub slices: u64,
    /// Slices that ended by its timer or the TSC.
    pub preemptions: u64,
    /// Where it will resume after the HLT that blocked it.
    pub halt_rip: u64,
    /// Preempted with the console told so ([`Backend::console_hold`]).
    pub console_held: bool,
    /// It waits for a start-up IPI: an application processor before its
    /// first one, or after an INIT. It does not run meanwhile.
    pub wait_for_sipi: bool,
    /// It halted with interrupts off (an application processor parked):
    /// it runs again only for an NMI, an INIT or a start-up IPI.
    pub parked: bool,
}

impl<B: Backend> Vcpu<B> {
    /// Its index in its guest (0: the boot vCPU).
    #[inline]
    pub fn index(&self) -> u32 {
        self.model.index
    }
}

/// What the vCPUs of a running guest share. Each vCPU runs with its own
/// lock ([`VcpuSlot`]), so several run at once on different CPUs; what
/// they share is read-only (the backend's VM half), behind its own lock
/// (the devices, taken for the exits that need them), or atomic (the
/// APIC bus, the flags).
pub struct Vm<B: Backend> {
    /// The name from the configuration.
    pub name: String,
    /// Its configured guest number: its console source.
    pub index: usize,
    /// The backend's half: RAM and second-level tables.
    pub hw: B::Vm,
    /// Devices and interrupt routing; [`Vm::devices`] locks them.
    devices: Mutex<VmDevices>,
    /// The wires between its vCPUs' local APICs (also reachable through
    /// the devices; kept here to read without their lock).
    pub apics: Arc<ApicBus>,
    /// When the devices next need the interrupt path (TSC; 0: now), and
    /// their earliest timer (`u64::MAX`: none), as of the last time they
    /// were unlocked.
    device_attention: AtomicU64,
    device_deadline: AtomicU64,
    /// Whether the last COM1 byte forwarded ended a line: a vCPU
    /// preempted after a whole line has no partial line for the console
    /// to hold ([`Backend::console_hold`]).
    line_ended: AtomicBool,
    /// Whether the devices may hold COM1 output not yet forwarded, as of
    /// their last unlock ([`VmDevices::console_output_waiting`]).
    com1_waiting: AtomicBool,
    /// The 8259 pair's output, as of the devices' last unlock: what a
    /// backend that delivers an interrupt without them needs to know of
    /// the boot vCPU's LINT0.
    pic_output: AtomicBool,
    /// COM1 transmit-register writes a backend queued on the exit path
    /// without the device lock ([`Backend::enter`]); [`Vm::devices`]
    /// hands them to the UART before anything else touches the devices.
    pub com1_out: ComOut,
    /// When it was created (TSC): its uptime counts from here.
    pub started_at: u64,
    /// The scheduler id of its vCPU 0; vCPU `k` has `first_vcpu + k`.
    pub first_vcpu: usize,
    /// How many vCPUs it has.
    pub vcpus: u32,
    /// Its stop has begun: its vCPUs leave their slices at the next exit.
    pub stopping: AtomicBool,
}

/// A guest just created: the VM and its vCPUs.
pub(crate) type Created<B> = (Arc<Vm<B>>, Vec<Vcpu<B>>);

/// Creates guest `k` from `config` with its devices (its first vCPU is
/// scheduler id `first`, all active on CPU `cpu`), and reports what it
/// cost the host beyond its RAM: the frames (second-level tables, VMCSs
/// or VMCBs, save areas, whatever the backend keeps per guest) and the
/// heap (device models, vCPU state), measured around the creation.
pub(crate) fn create_vm<B: Backend>(
    backend: &B,
    k: usize,
    config: &GuestConfig,
    first: usize,
    cpu: usize,
) -> Option<Created<B>> {
    let before = backend.host_memory();
    let (hw, hws) = backend.create(k, config)?;
    let created = Vm::new(&config.name, k, first, hw, hws, cpu, backend);
    if let (Some((free0, heap0)), Some((free1, heap1))) = (before, backend.host_memory()) {
        let ram_frames = config.memory.div_ceil(4096);
        let frames = free0.saturating_sub(free1).saturating_sub(ram_frames);
        info!(
            "guest {}: host memory beyond its RAM: {} KiB in {frames} frames, {} KiB of heap",
            config.name,
            frames.saturating_mul(4),
            heap1.saturating_sub(heap0).div_ceil(1024),
        );
    }
    Some(created)
}

/// A VM's devices, locked; unlocking brings the VM's attention time up to
/// date.
pub struct DevicesGuard<'a> {
    guard: MutexGuard<'a, VmDevices>,
    attention: &'a AtomicU64,
    deadline: &'a AtomicU64,
    com1_out: &'a ComOut,
    com1_waiting: &'a AtomicBool,
    pic_output: &'a AtomicBool,
}

impl core::ops::Deref for DevicesGuard<'_> {
    type Target = VmDevices;
    fn deref(&self) -> &VmDevices {
        &self.guard
    }
}

impl core::ops::DerefMut for DevicesGuard<'_> {
    fn deref_mut(&mut self) -> &mut VmDevices {
        &mut self.guard
    }
}

impl DevicesGuard<'_> {
    /// Writes the queued COM1 bytes to the UART, as the guest's OUTs
    /// would have. COM1 is in raw mode in a run (see [`Vm::new`]): its
    /// bytes go to [`VmDevices::take_console_output`], not to console
    /// lines, so no line sink is needed; the UART does not read the
    /// clock.
    #[inline(never)]
    fn take_com1_out(&mut self) {
        let devices = &mut *self.guard;
        self.com1_out
            .drain(&mut |bytes| devices.com1_transmit(bytes, 0, &mut |_| {}));
    }
}

impl Drop for DevicesGuard<'_> {
    fn drop(&mut self) {
        // The 8259's output before the attention time: a backend that
        // reads the attention time (Acquire) and finds the devices quiet
        // reads an output at least as new (see `Vm::devices_quiet`).
        self.pic_output
            .store(self.guard.pic_output(), Ordering::Release);
        let at = self.guard.attention_tsc();
        self.attention.store(at, Ordering::Release);
        let deadline = self.guard.next_deadline().unwrap_or(u64::MAX);
        self.deadline.store(deadline, Ordering::Release);
        self.com1_out.set_open(self.guard.com1_transmits_plainly());
        self.com1_waiting
            .store(self.guard.console_output_waiting(), Ordering::Release);
        self.com1_out.set_lsr(self.guard.com1_quiet_lsr());
    }
}

impl<B: Backend> Vm<B> {
    /// A guest the backend created as configured guest number `index`,
    /// with its vCPUs (`vcpus`, the boot vCPU first) active on CPU `cpu`;
    /// the standard devices, COM1 in raw mode (what the guest transmits
    /// goes to [`Backend::guest_output`] byte for byte).
    pub fn new(
        name: &str,
        index: usize,
        first_vcpu: usize,
        hw: B::Vm,
        vcpus: Vec<B::Vcpu>,
        cpu: usize,
        backend: &B,
    ) -> (Arc<Self>, Vec<Vcpu<B>>) {
        let tsc_hz = backend.tsc_hz();
        let n = u32::try_from(vcpus.len()).unwrap_or(u32::MAX).max(1);
        let mut devices = VmDevices::with_vcpus(tsc_hz, backend.wall_clock(), n);
        devices.set_com1_raw(true);
        let apics = Arc::clone(devices.apic_bus());
        let attention = devices.attention_tsc();
        let plain = devices.com1_transmits_plainly();
        let lsr = devices.com1_quiet_lsr();
        let vm = Arc::new(Self {
            name: String::from(name),
            index,
            hw,
            devices: Mutex::new(devices),
            apics,
            device_attention: AtomicU64::new(attention),
            device_deadline: AtomicU64::new(u64::MAX),
            com1_waiting: AtomicBool::new(false),
            pic_output: AtomicBool::new(false),
            line_ended: AtomicBool::new(true),
            com1_out: {
                let out = ComOut::new();
                out.set_open(plain);
                out.set_lsr(lsr);
                out
            },
            started_at: backend.now(),
            first_vcpu,
            vcpus: n,
            stopping: AtomicBool::new(false),
        });
        let vcpus = vcpus
            .into_iter()
            .enumerate()
            .map(|(k, hw)| {
                let k = u32::try_from(k).unwrap_or(u32::MAX);
                Vcpu {
                    hw,
                    model: VcpuModel::new(k, n, tsc_hz),
                    active_on: Some(cpu),
                    ticks: 0,
                    slices: 0,
                    preemptions: 0,
                    halt_rip: 0,
                    console_held: false,
                    wait_for_sipi: k != 0,
                    parked: false,
                }
            })
            .collect();
        (vm, vcpus)
    }

    /// Locks the devices.
    #[inline]
    pub fn devices(&self) -> DevicesGuard<'_> {
        let mut guard = DevicesGuard {
            guard: self.devices.lock(),
            attention: &self.device_attention,
            deadline: &self.device_deadline,
            com1_out: &self.com1_out,
            com1_waiting: &self.com1_waiting,
            pic_output: &self.pic_output,
        };
        if !self.com1_out.is_empty() {
            guard.take_com1_out();
        }
        guard
    }

    /// Passes what the guest transmitted on COM1 since the last call to
    /// the backend's console.
    #[inline]
    pub fn forward_output(&self, backend: &B) {
        // Nothing written since the last time: no need to lock.
        if !self.com1_waiting.load(Ordering::Acquire) && self.com1_out.is_empty() {
            return;
        }
        let index = self.index;
        let line_ended = &self.line_ended;
        self.devices().take_console_output(&mut |bytes| {
            if let Some(&last) = bytes.last() {
                line_ended.store(last == b'\n', Ordering::Release);
            }
            backend.guest_output(index, bytes)
        });
    }

    /// Whether the guest's console output stopped mid-line (the last byte
    /// forwarded was not a line end).
    pub fn mid_line(&self) -> bool {
        !self.line_ended.load(Ordering::Acquire)
    }

    /// Whether the devices need nothing at `now`, as of their last unlock:
    /// no timer due, no line changed, no I/O APIC message queued. A
    /// backend may then deliver an interrupt from the vCPU's local APIC
    /// without locking them (with [`Vm::pic_output`], read after this:
    /// the unlock publishes the output first, so the pair of reads is
    /// never older for the output than for this).
    #[inline]
    pub fn devices_quiet(&self, now: u64) -> bool {
        self.device_attention.load(Ordering::Acquire) > now
    }

    /// The 8259 pair's output as of the devices' last unlock.
    #[inline]
    pub fn pic_output(&self) -> bool {
        self.pic_output.load(Ordering::Acquire)
    }

    /// Whether the interrupt path has something to do for `vcpu` at
    /// `now`: a device timer or line of the VM, something another vCPU or
    /// the I/O APIC sent it, or its own deliverable interrupt or APIC
    /// timer. Asked before every entry.
    #[inline]
    pub fn needs_attention(&self, vcpu: &Vcpu<B>, now: u64) -> bool {
        self.device_attention.load(Ordering::Acquire) <= now
            || vcpu.model.attention_at <= now
            || self.apics.pending(vcpu.index())
    }

    /// The earliest TSC at which `vcpu` is wanted back: its APIC timer,
    /// and for the boot vCPU also the VM's device timers (the devices'
    /// interrupts reach the others through it and the APIC bus).
    pub fn next_deadline(&self, vcpu: &Vcpu<B>) -> Option<u64> {
        let own = Some(vcpu.model.attention_at).filter(|&t| t != u64::MAX);
        let devices = if vcpu.index() == 0 {
            Some(self.device_deadline.load(Ordering::Acquire)).filter(|&t| t != u64::MAX)
        } else {
            None
        };
        match (devices, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The scheduler ids of its vCPUs.
    pub fn vcpu_ids(&self) -> core::ops::Range<usize> {
        self.first_vcpu..self.first_vcpu.saturating_add(self.vcpus as usize)
    }
}

/// A vCPU of a running guest with the guest it belongs to: what the run
/// locks to run it. Empty while the guest is stopped.
pub struct VcpuSlot<B: Backend> {
    /// Its guest.
    pub vm: Arc<Vm<B>>,
    /// The vCPU.
    pub vcpu: Vcpu<B>,
}

/// One configured guest and, while it exists, the guest.
pub struct ConfiguredGuest<B: Backend> {
    /// Its configuration.
    pub config: GuestConfig,
    /// The guest, while it exists (its vCPUs are in the run's vCPU
    /// slots).
    pub vm: Option<Arc<Vm<B>>>,
    /// Why it last stopped, once it has.
    pub last_stop: Option<String>,
    /// Times it was created again after its first start.
    pub restarts: u32,
}

/// The CPUs guests run on, by scheduler index: `numbers[j]` is the CPU
/// number of `sched::CpuId(j)`.
pub struct CpuSet {
    /// CPU numbers, the boot CPU first.
    pub numbers: Vec<usize>,
}

impl CpuSet {
    /// The scheduler index of CPU number `cpu`.
    pub fn sched_id(&self, cpu: usize) -> Option<CpuId> {
        self.numbers
            .iter()
            .position(|&c| c == cpu)
            .map(|j| CpuId(j as u32))
    }

    /// The CPU number behind scheduler index `id`.
    pub fn number(&self, id: CpuId) -> Option<usize> {
        self.numbers.get(id.0 as usize).copied()
    }

    /// `cpu0, cpu1`, for messages.
    pub fn names(&self) -> String {
        let names: Vec<String> = self
            .numbers
            .iter()
            .map(|c| alloc::format!("cpu{c}"))
            .collect();
        names.join(", ")
    }
}

/// The guests' shared state while they run: every CPU that runs guests
/// works on one `GuestRun` ([`GuestRun::cpu_loop`]).
pub struct GuestRun<B: Backend> {
    backend: B,
    /// By configured guest number. Lock order: a guest's slot before any
    /// vCPU slot, and a CPU that holds a vCPU slot never waits for a
    /// guest's slot.
    slots: Vec<Mutex<ConfiguredGuest<B>>>,
    /// By scheduler vCPU id: guest `g`'s vCPU `k` is `first_vcpu[g] + k`.
    vcpus: Vec<Mutex<Option<VcpuSlot<B>>>>,
    /// Each vCPU id's guest.
    guest_of: Vec<usize>,
    /// Each guest's first vCPU id.
    first_vcpu: Vec<usize>,
    /// Stops in progress: while a guest's vCPUs leave the queues one by
    /// one, no CPU may conclude that nothing is left to run.
    stops_in_progress: AtomicUsize,
    /// The run queues: `sched` decides which vCPU runs where next and for
    /// how long.
    queue: Mutex<sched::Scheduler>,
    on_stop: GuestStopAction,
    cpus: CpuSet,
    /// By CPU number.
    mailboxes: Vec<Mailbox<B>>,
    /// By scheduler index.
    figures: Vec<CpuFigures>,
    /// Every guest has stopped: the CPUs leave the loop.
    finished: AtomicBool,
    /// CPUs other than the first that have left the loop.
    left: AtomicUsize,
    /// Each guest's name, for reports that must not lock slots.
    names: Vec<String>,
    /// Each vCPU's name (its guest's, with `/k` for guests with several),
    /// by vCPU id.
    vcpu_names: Vec<String>,
    /// The first stop has reported how the guests shared the CPUs.
    shares_reported: AtomicBool,
    /// The run goes on with every guest stopped (the monitor may restart
    /// one); only a poweroff ends it.
    stay_up: AtomicBool,
    /// The monitor's `poweroff` ended the run.
    poweroff: AtomicBool,
    /// When the run was set up (TSC), for the CPUs' shares in `stats`.
    started_at: u64,
}

impl<B: Backend> GuestRun<B> {
    /// The vCPU ids of configured guest `g`.
    pub(crate) fn guest_vcpus(&self, g: usize) -> core::ops::Range<usize> {
        let first = self.first_vcpu.get(g).copied().unwrap_or(0);
        let end = self
            .first_vcpu
            .get(g + 1)
            .copied()
            .unwrap_or(self.guest_of.len());
        first..end.max(first)
    }
}

/// Why a run could not be set up.
#[derive(Debug)]
pub struct RunError(pub sched::SchedError);

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<B: Backend> GuestRun<B> {
    /// A run of the guests `configs` on the CPUs `cpus` (numbers, the
    /// calling CPU first) with slices of `slice` ticks. Creates every
    /// guest (one that cannot start is left out, reported by the
    /// backend); `Err` when the scheduler refuses the CPUs or the slice,
    /// with every guest destroyed again.
    pub fn new(
        backend: B,
        configs: Vec<GuestConfig>,
        cpus: Vec<usize>,
        slice: u64,
        on_stop: GuestStopAction,
        max_cpu_number: usize,
    ) -> Result<Self, RunError> {
        let cpu = backend.this_cpu();
        let mut slots = Vec::new();
        let mut vcpus = Vec::new();
        let mut guest_of = Vec::new();
        let mut first_vcpu = Vec::new();
        let mut vcpu_names = Vec::new();
        for (k, config) in configs.into_iter().enumerate() {
            let first = guest_of.len();
            let n = config.vcpus.max(1) as usize;
            first_vcpu.push(first);
            for v in 0..n {
                guest_of.push(k);
                vcpu_names.push(if n == 1 {
                    config.name.clone()
                } else {
                    alloc::format!("{}/{v}", config.name)
                });
            }
            let created = create_vm(&backend, k, &config, first, cpu);
            let vm = match created {
                Some((vm, parts)) => {
                    for vcpu in parts {
                        vcpus.push(Mutex::new(Some(VcpuSlot {
                            vm: Arc::clone(&vm),
                            vcpu,
                        })));
                    }
                    Some(vm)
                }
                None => None,
            };
            while vcpus.len() < guest_of.len() {
                vcpus.push(Mutex::new(None));
            }
            backend.console_add_guest(k, &config.name);
            slots.push(ConfiguredGuest {
                config,
                vm,
                last_stop: None,
                restarts: 0,
            });
        }
        let queue = match sched::Scheduler::new(cpus.len() as u32, slice.max(1)) {
            Ok(queue) => queue,
            Err(e) => {
                for slot in &vcpus {
                    if let Some(mut s) = slot.lock().take() {
                        backend.destroy_vcpu(&s.vm.hw, &mut s.vcpu.hw);
                    }
                }
                for vm in slots.into_iter().filter_map(|s| s.vm) {
                    if let Ok(mut vm) = Arc::try_unwrap(vm) {
                        backend.destroy_vm(&mut vm.hw);
                    }
                }
                return Err(RunError(e));
            }
        };
        let figures = cpus.iter().map(|_| CpuFigures::default()).collect();
        let mailboxes = (0..max_cpu_number.max(cpus.iter().max().map_or(0, |&c| c + 1)))
            .map(|_| Mailbox::new())
            .collect();
        let names = slots.iter().map(|s| s.config.name.clone()).collect();
        let started_at = backend.now();
        Ok(Self {
            backend,
            slots: slots.into_iter().map(Mutex::new).collect(),
            vcpus,
            guest_of,
            first_vcpu,
            stops_in_progress: AtomicUsize::new(0),
            vcpu_names,
            queue: Mutex::new(queue),
            on_stop,
            cpus: CpuSet { numbers: cpus },
            mailboxes,
            figures,
            finished: AtomicBool::new(false),
            left: AtomicUsize::new(0),
            names,
            shares_reported: AtomicBool::new(false),
            stay_up: AtomicBool::new(false),
            poweroff: AtomicBool::new(false),
            started_at,
        })
    }

    /// Whether the run ends once every guest has stopped (`true`, the
    /// default: `power_off_when_all_stopped`) or stays up with none, for
    /// the monitor to restart one, until the monitor's `poweroff`.
    pub fn set_end_when_all_stopped(&self, end: bool) {
        self.stay_up.store(!end, Ordering::Release);
    }

    /// Whether the monitor's `poweroff` ended the run: the machine powers
    /// off whatever the configuration says about staying up.
    pub fn poweroff_requested(&self) -> bool {
        self.poweroff.load(Ordering::Acquire)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The CPUs the run uses.
    pub fn cpus(&self) -> &CpuSet {
        &self.cpus
    }

    /// Marks that one CPU other than the first has left
    /// [`GuestRun::cpu_loop`] for good.
    pub fn leave(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    /// How many CPUs other than the first have left.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}

/// The scheduler's id of vCPU slot `i`.
fn vcpu_id(i: usize) -> sched::VcpuId {
    sched::VcpuId(u32::try_from(i).unwrap_or(u32::MAX))
}
