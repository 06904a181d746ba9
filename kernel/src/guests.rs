//! From the configuration to running guests and back: reads
//! `hypervisor.toml` and the images through [`ConfigFiles`] (the boot
//! ramdisk or the config partition), creates each guest, and runs them on
//! every CPU that is up with VT-x: each CPU runs what the `sched` run
//! queues pick for it, for the slice they give (ended by the
//! VMX-preemption timer or the TSC), reports each stop, and gives every
//! frame back.
//!
//! A guest's VMCS is active on one CPU at a time (`Guest::hot_on`), which
//! also holds its lazily switched state (XSAVE area, CR2, debug registers,
//! MSRs). On the same CPU a switch is VMPTRLD + VMRESUME; a guest the
//! scheduler moved to another CPU is given up by its old CPU on request
//! (a mailbox and a kick IPI: save the switched state, VMCLEAR) and
//! VMLAUNCHed on the new one. CPUs that wait for work halt with interrupts
//! on until kicked.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use addr::{GuestPhysAddr, PAGE_SIZE};
use kernel::config::files::{ConfigFiles, CONFIG_FILE};
use kernel::config::{self, CpuMode, GuestConfig, GuestStopAction, ImageFormat, ParseOutcome};
use kernel::loader::{
    self, FlatImage, FlatMode, Format, GuestMemory, LinuxImage, LoadError, LoadedImage,
    MultibootImage,
};
use kernel::vcpu::exit::{ExitKind, Outcome};
use kernel::vcpu::stop::StopReason;
use log::{debug, error, info, warn};

use crate::{cpu, lapic, memory};
use sched::{CpuId, Decision, StopCause, VcpuId, VcpuState};
use spin::{Mutex, MutexGuard};

use crate::vtx::vm::{Guest, Hardware};
use crate::vtx::Capabilities;

/// One configured guest and, while it exists, the guest.
struct Slot {
    config: GuestConfig,
    guest: Option<Guest>,
    /// The VPID its vCPU gets (1-based; 0 is the host's).
    vpid: u16,
}

/// What happens after every guest has stopped.
pub enum AllStopped {
    /// Power the machine off.
    PowerOff,
    /// Stay up (`power_off_when_all_stopped = false`).
    StayUp,
}

/// The most a `hypervisor.toml` may be (it is read into the heap).
const CONFIG_LIMIT: u64 = 1 << 20;

/// Reads and checks `hypervisor.toml` from `files` and prints every error,
/// the summary line and each guest's plan. `None` when there is no file to
/// read.
pub fn load_config(files: &mut dyn ConfigFiles<'_>) -> Option<ParseOutcome> {
    let source = String::from(files.source());
    let text = match files.read(CONFIG_FILE, CONFIG_LIMIT) {
        Ok(Some(text)) => text,
        Ok(None) => {
            error!("config: error: {source} has no {CONFIG_FILE}");
            return None;
        }
        Err(e) => {
            error!("config: error: {e}");
            return None;
        }
    };
    let mut outcome = config::parse_bytes(CONFIG_FILE, &text);
    drop(text);
    config::check_images(&mut outcome, |path| files.exists(path));
    config::check_memory(&mut outcome, memory::free_frames() * PAGE_SIZE);
    for e in &outcome.errors {
        error!("{e}");
    }
    crate::logger::apply_config(outcome.config.hypervisor.log_level);
    info!(
        "config: loaded {} guests from {source}",
        outcome.config.guests.len()
    );
    for g in &outcome.config.guests {
        let format = g.format.map_or("detected from the image", format_name);
        info!(
            "config: guest {}: kernel \"{}\"{}, {format}, {} MiB, {} vCPU{}, cmdline \"{}\"",
            g.name,
            g.kernel,
            g.initrd
                .as_ref()
                .map_or(String::new(), |i| alloc::format!(", initrd \"{i}\"")),
            g.memory >> 20,
            g.vcpus,
            if g.vcpus == 1 { "" } else { "s" },
            g.cmdline
        );
    }
    Some(outcome)
}

/// Starts the guests `outcome` lists, with their images from `files`, and
/// runs them until all have stopped; `tsc_hz` turns the slice length into
/// TSC ticks.
pub fn run_all(
    caps: Capabilities,
    tsc_hz: u64,
    files: &mut dyn ConfigFiles<'_>,
    outcome: ParseOutcome,
) -> AllStopped {
    let settings = outcome.config.hypervisor;
    let hw = match Hardware::new(caps) {
        Ok(hw) => hw,
        Err(e) => {
            error!("vmx: cannot run guests: {e}");
            return AllStopped::PowerOff;
        }
    };
    let slice_ticks = tsc_hz / 1000 * u64::from(settings.slice_ms);
    debug!(
        "sched: slice {} ms = {slice_ticks} TSC ticks",
        settings.slice_ms
    );

    let frames_before = memory::free_frames();
    let mut slots: Vec<Slot> = Vec::new();
    for (k, config) in outcome.config.guests.into_iter().enumerate() {
        let vpid = u16::try_from(k + 1).unwrap_or(u16::MAX);
        let guest = start(&hw, files, &config, vpid);
        slots.push(Slot {
            config,
            guest,
            vpid,
        });
    }

    let cpus = CpuSet {
        numbers: crate::smp::ready_cpus(),
    };
    let queue = match sched::Scheduler::new(cpus.numbers.len() as u32, slice_ticks.max(1)) {
        Ok(queue) => queue,
        Err(e) => {
            error!("sched: cannot run guests: {e}");
            for mut guest in slots.into_iter().filter_map(|s| s.guest) {
                guest.destroy();
            }
            return AllStopped::PowerOff;
        }
    };
    info!("sched: guests run on {}", cpus.names());
    let figures = cpus.numbers.iter().map(|_| CpuFigures::default()).collect();
    let mailboxes = (0..crate::smp::MAX_CPUS)
        .map(|_| Mailbox {
            busy: AtomicBool::new(false),
            slot: AtomicUsize::new(0),
            guest: AtomicPtr::new(core::ptr::null_mut()),
        })
        .collect();
    let files: *mut (dyn ConfigFiles<'_> + '_) = files;
    // SAFETY: only the lifetime is erased: `run` below uses the files only
    // while this function runs (`run_everywhere` returns after every CPU
    // has left the run).
    let files: *mut (dyn ConfigFiles<'static> + 'static) = unsafe { core::mem::transmute(files) };
    let names = slots.iter().map(|s| s.config.name.clone()).collect();
    let run = Run {
        hw,
        names,
        shares_reported: AtomicBool::new(false),
        slots: slots.into_iter().map(Mutex::new).collect(),
        queue: Mutex::new(queue),
        files: Mutex::new(FilesPtr(files)),
        on_stop: settings.on_guest_stop,
        cpus,
        mailboxes,
        figures,
        finished: AtomicBool::new(false),
        left: AtomicUsize::new(0),
    };
    let started = rdtsc();
    run.run_everywhere();
    run.report(rdtsc().wrapping_sub(started));

    let frames_after = memory::free_frames();
    info!(
        "memory: {frames_before} frames free before the guests, {frames_after} after they stopped"
    );
    if frames_after != frames_before {
        warn!(
            "memory: {} frames were not given back",
            frames_before.saturating_sub(frames_after)
        );
    }
    if settings.power_off_when_all_stopped {
        info!("all guests stopped, powering off");
        AllStopped::PowerOff
    } else {
        info!("all guests stopped; staying up (power_off_when_all_stopped = false)");
        AllStopped::StayUp
    }
}

/// Creates and loads one guest; `None` (reported) when it cannot start.
fn start(
    hw: &Hardware,
    files: &mut dyn ConfigFiles<'_>,
    config: &GuestConfig,
    vpid: u16,
) -> Option<Guest> {
    let name = config.name.as_str();
    let source = String::from(files.source());
    // Neither file can be larger than the guest's RAM.
    let mut read = |what: &str, path: &str| match files.read(path, config.memory) {
        Ok(Some(data)) => Some(data),
        Ok(None) => {
            error!("guest {name}: not started: {what} \"{path}\" is not in {source}");
            None
        }
        Err(e) => {
            error!("guest {name}: not started: {e}");
            None
        }
    };
    let kernel = read("kernel", &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(read("initrd", path)?),
        None => None,
    };
    let kernel: &[u8] = &kernel;
    let initrd: Option<&[u8]> = initrd.as_deref();
    let format = match config.format {
        Some(f) => f,
        None => match loader::detect_format(kernel) {
            Some(Format::Linux) => ImageFormat::Linux,
            Some(Format::Multiboot) => ImageFormat::Multiboot,
            _ => {
                error!(
                    "guest {name}: not started: kernel \"{}\" is neither a Linux bzImage nor a Multiboot image; \
                     for a raw image set format = \"flat\" with load_address, entry and mode",
                    config.kernel
                );
                return None;
            }
        },
    };
    let cmdline = config.cmdline.as_str();
    let load = |mem: &mut dyn GuestMemory| -> Result<LoadedImage, LoadError> {
        match format {
            ImageFormat::Flat(flat) => loader::load_flat(
                mem,
                &FlatImage {
                    data: kernel,
                    load_address: GuestPhysAddr::new(flat.load_address),
                    entry: GuestPhysAddr::new(flat.entry),
                    mode: match flat.mode {
                        CpuMode::Real => FlatMode::Real,
                        CpuMode::Protected => FlatMode::Protected,
                        CpuMode::Long => FlatMode::LONG,
                    },
                },
            ),
            ImageFormat::Linux => loader::load_linux(
                mem,
                &LinuxImage {
                    kernel,
                    initrd,
                    cmdline,
                },
            ),
            ImageFormat::Multiboot => {
                let module = initrd.map(|data| loader::Module { data, cmdline: "" });
                let modules = module.as_slice();
                loader::load_multiboot(
                    mem,
                    &MultibootImage {
                        kernel,
                        cmdline,
                        modules,
                    },
                )
            }
        }
    };
    match Guest::create(hw, name, config.memory, vpid, load) {
        Ok(guest) => {
            info!(
                "guest {name}: started ({} MiB, {format_name})",
                config.memory >> 20,
                format_name = format_name(format)
            );
            Some(guest)
        }
        Err(e) => {
            error!("guest {name}: not started: {e}");
            None
        }
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Linux => "linux",
        ImageFormat::Multiboot => "multiboot",
        ImageFormat::Flat(f) => match f.mode {
            CpuMode::Real => "flat, real mode",
            CpuMode::Protected => "flat, protected mode",
            CpuMode::Long => "flat, long mode",
        },
    }
}

/// The CPUs guests run on, by scheduler index: `cpus[j]` is the CPU
/// number of `sched::CpuId(j)`.
struct CpuSet {
    numbers: Vec<usize>,
}

impl CpuSet {
    /// The scheduler index of CPU number `cpu`.
    fn sched_id(&self, cpu: usize) -> Option<CpuId> {
        self.numbers
            .iter()
            .position(|&c| c == cpu)
            .map(|j| CpuId(j as u32))
    }

    /// The CPU number behind scheduler index `id`.
    fn number(&self, id: CpuId) -> Option<usize> {
        self.numbers.get(id.0 as usize).copied()
    }

    /// `cpu0, cpu1`, for messages.
    fn names(&self) -> String {
        let names: Vec<String> = self
            .numbers
            .iter()
            .map(|c| alloc::format!("cpu{c}"))
            .collect();
        names.join(", ")
    }
}

/// A request from one CPU to another: "VMCLEAR this guest's VMCS, and
/// save its switched state if you hold it, so I can run it". The
/// requester holds the guest's slot lock and waits until `guest` is null
/// again.
struct Mailbox {
    /// Taken (true) by one requester at a time.
    busy: AtomicBool,
    /// The slot of the guest to give up (valid while `guest` is set).
    slot: AtomicUsize,
    /// The guest, while a request is open.
    guest: AtomicPtr<Guest>,
}

/// One CPU's figures for the run, kept by that CPU alone.
#[derive(Default)]
struct CpuFigures {
    /// Slices it ran, and the TSC ticks they took (exit handling included).
    slices: AtomicU64,
    busy: AtomicU64,
    /// Switches to another guest on this CPU, and their TSC ticks.
    switches: AtomicU64,
    switch_ticks: AtomicU64,
    /// Switches to a guest that came from another CPU, and their ticks.
    migrations: AtomicU64,
    migration_ticks: AtomicU64,
    /// Times it halted for want of work.
    idle_waits: AtomicU64,
}

/// The guests' shared state while they run: every CPU that runs guests
/// works on one `Run`, which the boot CPU owns and publishes to the others
/// for the duration of [`Run::run_everywhere`].
struct Run {
    hw: Hardware,
    slots: Vec<Mutex<Slot>>,
    /// The run queues: `sched` decides which guest runs where next and for
    /// how long; a slot's index is its vCPU id.
    queue: Mutex<sched::Scheduler>,
    files: Mutex<FilesPtr>,
    on_stop: GuestStopAction,
    cpus: CpuSet,
    /// By CPU number.
    mailboxes: Vec<Mailbox>,
    figures: Vec<CpuFigures>,
    /// Every guest has stopped: the CPUs leave the loop.
    finished: AtomicBool,
    /// Application processors that have left the loop.
    left: AtomicUsize,
    /// Each slot's guest name, for reports that must not lock slots.
    names: Vec<String>,
    /// The first stop has reported how the guests shared the CPUs.
    shares_reported: AtomicBool,
}

/// The configuration partition, reached from every CPU (one at a time,
/// under `Run::files`).
struct FilesPtr(*mut (dyn ConfigFiles<'static> + 'static));

// SAFETY: the pointer is used only under `Run::files`' lock, and the disk
// drivers behind it keep no per-CPU state, so any CPU may use them in
// turn; `run_all` keeps the referent alive until every CPU has left.
unsafe impl Send for FilesPtr {}

/// The run the application processors join, while one is in progress.
static RUN: AtomicPtr<Run> = AtomicPtr::new(core::ptr::null_mut());
/// Bumped for each run, so an AP joins each run once.
static RUN_GENERATION: AtomicUsize = AtomicUsize::new(0);

/// What one CPU keeps while it runs guests.
struct Local {
    /// Its scheduler index and CPU number.
    cpu: CpuId,
    index: usize,
    /// The guest whose switched state (XSAVE, CR2, DRs, MSRs) is in the CPU.
    owner: Option<usize>,
    /// The guest whose VMCS is current.
    current: Option<usize>,
    /// When the last slice ended, and whose it was: the next slice of
    /// another guest measures the switch from there.
    last_exit: Option<(usize, u64)>,
}

impl Local {
    /// A CPU that holds no guest's state yet: scheduler index `cpu`, CPU
    /// number `index`.
    fn new(cpu: CpuId, index: usize) -> Self {
        Local {
            cpu,
            index,
            owner: None,
            current: None,
            last_exit: None,
        }
    }
}

/// The vCPU id of slot `i`.
fn vcpu_id(i: usize) -> VcpuId {
    VcpuId(u32::try_from(i).unwrap_or(u32::MAX))
}

/// How a slice ended.
enum SliceEnd {
    /// Its time was up (preemption timer or TSC).
    TimeUp,
    /// HLT with interrupts on, until a device's timer is due at this TSC
    /// value (or until woken, with none).
    Halted { until: Option<u64> },
    /// The guest stopped.
    Stopped(StopReason),
}

impl Run {
    /// Runs the guests on this CPU and on every application processor that
    /// is ready, until all have stopped.
    fn run_everywhere(&self) {
        let aps = self.cpus.numbers.len() - 1;
        let mut boot = Local::new(CpuId(0), 0);
        for i in 0..self.slots.len() {
            let Some(mut slot) = self.lock_slot(&mut boot, i) else {
                continue;
            };
            if slot.guest.is_none() {
                continue;
            }
            let placed = self.enqueue(&mut self.queue.lock(), &slot, i);
            if let Err(reason) = placed {
                self.retire(&mut boot, &mut slot, i, reason, false);
            }
        }
        RUN.store(core::ptr::from_ref(self).cast_mut(), Ordering::Release);
        RUN_GENERATION.fetch_add(1, Ordering::AcqRel);
        let clock = crate::smp::clock();
        for &c in self.cpus.numbers.iter().skip(1) {
            lapic::kick(cpu::apic_id(c), clock);
        }
        self.cpu_loop(0);
        // The others may still be finishing a stop report: wait for them
        // before the run is taken down.
        while self.left.load(Ordering::Acquire) < aps {
            core::hint::spin_loop();
        }
        RUN.store(core::ptr::null_mut(), Ordering::Release);
    }

    /// Puts slot `i`'s guest on a run queue and kicks the CPU that gets
    /// it if that one is idle; `Err` when its `cpus` name a CPU that runs
    /// no guests.
    fn enqueue(
        &self,
        queue: &mut sched::Scheduler,
        slot: &Slot,
        i: usize,
    ) -> Result<(), StopReason> {
        let affinity: Option<Vec<CpuId>> = match &slot.config.cpus {
            None => None,
            Some(list) => {
                let mut ids = Vec::new();
                for &c in list {
                    match self.cpus.sched_id(c as usize) {
                        Some(id) => ids.push(id),
                        None => {
                            return Err(StopReason::NotSchedulable(alloc::format!(
                            "its cpus list names cpu{c}, which does not run guests (these do: {})",
                            self.cpus.names()
                        )))
                        }
                    }
                }
                Some(ids)
            }
        };
        match queue.add(vcpu_id(i), affinity.as_deref()) {
            Ok(placement) => {
                self.kick(placement.kick);
                Ok(())
            }
            Err(e) => Err(StopReason::NotSchedulable(alloc::format!("{e}"))),
        }
    }

    /// Kicks the CPU the scheduler named, if any and not this one.
    fn kick(&self, target: Option<CpuId>) {
        let Some(number) = target.and_then(|t| self.cpus.number(t)) else {
            return;
        };
        if number != usize::from(cpu::current_index()) {
            lapic::kick(cpu::apic_id(number), crate::smp::clock());
        }
    }

    /// The loop every CPU runs: pick, run a slice, report, until every
    /// guest has stopped. `index` is this CPU's number.
    fn cpu_loop(&self, index: usize) {
        let Some(cpu) = self.cpus.sched_id(index) else {
            return;
        };
        self.hw.prepare_this_cpu();
        let mut local = Local::new(cpu, index);
        loop {
            self.service(&mut local);
            if self.finished.load(Ordering::Acquire) {
                break;
            }
            let decision = self.queue.lock().pick(cpu, rdtsc());
            match decision {
                Decision::Run {
                    vcpu,
                    slice,
                    migrated_from,
                    kick,
                } => {
                    self.kick(kick);
                    self.run_vcpu(&mut local, vcpu, slice, migrated_from.is_some())
                }
                Decision::Idle { until } => {
                    if self.nothing_can_run(&mut local) {
                        continue;
                    }
                    // A vCPU on this CPU sleeps until a device timer: the
                    // APIC timer wakes the CPU then. Without TSC-deadline
                    // mode the CPU keeps looking instead of halting.
                    if until.is_some() && !lapic::arm_wakeup(until) {
                        core::hint::spin_loop();
                        continue;
                    }
                    if let Some(f) = self.figures.get(cpu.0 as usize) {
                        f.idle_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    // A kick that came since the pick is pending and ends
                    // the HLT at once (STI's shadow covers the HLT).
                    x86_64::instructions::interrupts::enable_and_hlt();
                    x86_64::instructions::interrupts::disable();
                    if until.is_some() {
                        lapic::arm_wakeup(None);
                    }
                }
            }
        }
    }

    /// This CPU found nothing to run. When no CPU can run anything, the
    /// guests halted with no device timer armed have nothing that could
    /// wake them (no device interrupts without a timer yet): they are
    /// stopped, and once every guest is gone, the run ends. Guests waiting
    /// for a timer are left to it. True when it did something, so the
    /// caller looks again rather than halting.
    fn nothing_can_run(&self, local: &mut Local) -> bool {
        let (counts, blocked) = {
            let queue = self.queue.lock();
            let counts = queue.counts();
            let blocked: Vec<usize> = queue
                .vcpus_ref()
                .filter(|(_, s)| s.state == VcpuState::Blocked && s.deadline.is_none())
                .map(|(v, _)| v.0 as usize)
                .collect();
            (counts, blocked)
        };
        if counts.runnable + counts.running > 0 {
            return false;
        }
        if !blocked.is_empty() {
            for i in blocked {
                let Some(mut slot) = self.lock_slot(local, i) else {
                    continue;
                };
                let state = self
                    .queue
                    .lock()
                    .stats_ref(vcpu_id(i))
                    .map(|s| (s.state, s.deadline));
                if state != Some((VcpuState::Blocked, None)) {
                    continue;
                }
                let rip = slot.guest.as_ref().map_or(0, |g| g.halt_rip);
                self.stop(
                    local,
                    &mut slot,
                    i,
                    StopReason::HaltedWithNoWakeSource { rip },
                );
            }
            return true;
        }
        if counts.stopped == 0 {
            self.finish();
            return true;
        }
        false
    }

    /// Every guest has stopped: all CPUs leave the loop.
    fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            let clock = crate::smp::clock();
            let me = usize::from(cpu::current_index());
            for &c in &self.cpus.numbers {
                if c != me {
                    lapic::kick(cpu::apic_id(c), clock);
                }
            }
        }
    }

    /// Locks slot `i`, doing what other CPUs ask of this one meanwhile (a
    /// CPU that holds the lock may be waiting for this one).
    fn lock_slot(&self, local: &mut Local, i: usize) -> Option<MutexGuard<'_, Slot>> {
        let slot = self.slots.get(i)?;
        loop {
            if let Some(guard) = slot.try_lock() {
                return Some(guard);
            }
            self.service(local);
            core::hint::spin_loop();
        }
    }

    /// Does what another CPU asked of this one: gives up a guest whose
    /// VMCS is active here (and whose switched state may be here).
    fn service(&self, local: &mut Local) {
        let Some(mailbox) = self.mailboxes.get(local.index) else {
            return;
        };
        let ptr = mailbox.guest.load(Ordering::Acquire);
        if ptr.is_null() {
            return;
        }
        let i = mailbox.slot.load(Ordering::Acquire);
        // SAFETY: the requesting CPU holds slot `i`'s lock, which guards
        // this guest, and does nothing with it until `guest` is null again:
        // this CPU has the only access meanwhile. The guest is not running
        // (its vCPU was picked for the requester).
        let guest = unsafe { &mut *ptr };
        self.give_up(local, guest, i);
        mailbox
            .guest
            .store(core::ptr::null_mut(), Ordering::Release);
    }

    /// Gives up guest `i` (its slot locked here), which is hot on this CPU:
    /// its switched state goes back to its save area and its VMCS is
    /// cleared, so any CPU may take it without asking.
    fn release(&self, local: &mut Local, slot: &mut Slot, i: usize) {
        if let Some(guest) = slot.guest.as_mut() {
            if guest.hot_on == Some(local.index) {
                self.give_up(local, guest, i);
            }
        }
    }

    /// What giving up guest `i`, hot on this CPU, takes: its switched state
    /// back to its save area if this CPU holds it, and VMCLEAR.
    fn give_up(&self, local: &mut Local, guest: &mut Guest, i: usize) {
        if local.owner == Some(i) {
            guest.save_switched(&self.hw);
            local.owner = None;
        }
        if local.current == Some(i) {
            local.current = None;
        }
        guest.clear();
    }

    /// Makes sure `guest` (slot `i`) is active on no CPU but this one:
    /// asks the CPU it is on to give it up and waits until it has.
    fn take_over(&self, local: &mut Local, i: usize, guest: &mut Guest) {
        let Some(other) = guest.hot_on.filter(|&c| c != local.index) else {
            return;
        };
        let Some(mailbox) = self.mailboxes.get(other) else {
            return;
        };
        while mailbox
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.service(local);
            core::hint::spin_loop();
        }
        mailbox.slot.store(i, Ordering::Release);
        let ptr: *mut Guest = guest;
        mailbox.guest.store(ptr, Ordering::Release);
        lapic::kick(cpu::apic_id(other), crate::smp::clock());
        while mailbox.guest.load(Ordering::Acquire) == ptr {
            self.service(local);
            core::hint::spin_loop();
        }
        mailbox.busy.store(false, Ordering::Release);
    }

    /// Runs `vcpu` for one slice of `slice` TSC ticks on this CPU and
    /// reports how it ended.
    fn run_vcpu(&self, local: &mut Local, vcpu: VcpuId, slice: u64, migrated: bool) {
        let i = vcpu.0 as usize;
        let Some(mut slot) = self.lock_slot(local, i) else {
            return;
        };
        let end = self.run_slice(local, &mut slot, i, slice, migrated);
        let now = rdtsc();
        // A switch is measured from a slice that ended by time or HLT;
        // after a stop, the stop's report (console lines) would be counted
        // too.
        local.last_exit = match end {
            SliceEnd::Stopped(_) => None,
            _ => Some((i, now)),
        };
        let cause = match &end {
            SliceEnd::TimeUp => StopCause::SliceEnd,
            SliceEnd::Halted { until } => StopCause::Blocked { until: *until },
            SliceEnd::Stopped(_) => StopCause::Stopped,
        };
        let stopped = {
            let tally = slot.guest.as_mut().map(|g| &mut g.model.tally);
            self.queue
                .lock()
                .stopped_with(local.cpu, vcpu, cause, now, |table, other| {
                    if let Some(tally) = tally {
                        tally.drain_into(table, other);
                    }
                })
        };
        if stopped.moved_to.is_some() {
            // `sched` moved it to another CPU's queue: give it up now,
            // while this CPU holds its slot, so that CPU finds it free
            // rather than asking for it and waiting.
            self.release(local, &mut slot, i);
        }
        self.kick(stopped.kick);
        if let SliceEnd::Stopped(reason) = end {
            self.stop(local, &mut slot, i, reason);
        }
    }

    /// Switches guest `i` in and runs it for `slice` TSC ticks, until it
    /// halts, or until it stops. `migrated`: it last ran on another CPU.
    fn run_slice(
        &self,
        local: &mut Local,
        slot: &mut Slot,
        i: usize,
        slice: u64,
        migrated: bool,
    ) -> SliceEnd {
        let hw = &self.hw;
        let switch_from = local
            .last_exit
            .filter(|(prev, _)| *prev != i)
            .map(|(_, at)| at);
        let Some(guest) = slot.guest.as_mut() else {
            return SliceEnd::Stopped(StopReason::NotSchedulable(String::from(
                "the scheduler picked a guest that no longer exists",
            )));
        };
        if guest.hot_on != Some(local.index) {
            self.take_over(local, i, guest);
            if let Err(e) = guest.arrive(local.index) {
                return SliceEnd::Stopped(StopReason::LaunchFailed(alloc::format!("{e}")));
            }
            local.current = Some(i);
        }
        if local.owner != Some(i) {
            // The switched state in the CPU is another guest's: save it
            // there first (unless that guest's CPU took it meanwhile).
            while let Some(o) = local.owner {
                if let Some(mut other) = self.slots.get(o).and_then(|s| s.try_lock()) {
                    if let Some(g) = other.guest.as_mut() {
                        g.save_switched(hw);
                    }
                    local.owner = None;
                } else {
                    self.service(local);
                    core::hint::spin_loop();
                }
            }
            guest.load_switched(hw);
            local.owner = Some(i);
        }
        if local.current != Some(i) {
            if let Err(e) = guest.make_current() {
                return SliceEnd::Stopped(StopReason::LaunchFailed(alloc::format!("{e}")));
            }
            local.current = Some(i);
        }
        if let Err(e) = guest.set_slice(hw, slice) {
            return SliceEnd::Stopped(StopReason::Backend(alloc::format!(
                "VMCS access failed: {e}"
            )));
        }
        guest.slices += 1;
        let slice_start = rdtsc();
        // By scheduler index, the order of `cpus.numbers`.
        let figures = self.figures.get(local.cpu.0 as usize);
        if let (Some(from), Some(f)) = (switch_from, figures) {
            let (count, ticks) = if migrated {
                (&f.migrations, &f.migration_ticks)
            } else {
                (&f.switches, &f.switch_ticks)
            };
            count.fetch_add(1, Ordering::Relaxed);
            ticks.fetch_add(slice_start.wrapping_sub(from), Ordering::Relaxed);
        }
        let mut last = slice_start;
        let end = loop {
            // Timers due and interrupts raised since the last exit go in
            // before the entry (a few compares when nothing is pending).
            if guest.devices.needs_attention(last) {
                if let Err(reason) = guest.deliver_interrupt(last) {
                    break SliceEnd::Stopped(reason);
                }
            }
            let exit = guest.enter();
            // One TSC read an exit: the guest is charged from one exit to
            // the next, its exit handling included.
            let now = rdtsc();
            guest.ticks += now.wrapping_sub(last);
            last = now;
            let exit = match exit {
                Ok(exit) => exit,
                Err(reason) => break SliceEnd::Stopped(reason),
            };
            match guest.handle(hw, &exit) {
                Outcome::Resume => {}
                Outcome::HostInterrupt => {
                    // A kick: end it at the APIC and do what it asks; a
                    // request never concerns the guest running here.
                    lapic::eoi();
                    self.service(local);
                }
                Outcome::Preempted => {
                    guest.preemptions += 1;
                    break SliceEnd::TimeUp;
                }
                Outcome::Halted => {
                    // An interrupt already due wakes it at once.
                    if guest.devices.needs_attention(now) {
                        continue;
                    }
                    // The HLT exit already moved RIP past the instruction:
                    // this is where the guest would resume.
                    guest.halt_rip = guest.rip();
                    break SliceEnd::Halted {
                        until: guest.devices.next_deadline(),
                    };
                }
                Outcome::Stop(reason) => break SliceEnd::Stopped(*reason),
            }
            // The slice also ends by the TSC: where VM entry restarts the
            // preemption timer from the value written at the slice's start
            // (exits that do not save its count, or emulators that do not),
            // a guest that exits more often than the timer runs out would
            // otherwise never be preempted.
            if now.wrapping_sub(slice_start) >= slice {
                guest.preemptions += 1;
                break SliceEnd::TimeUp;
            }
        };
        if let Some(f) = figures {
            f.slices.fetch_add(1, Ordering::Relaxed);
            f.busy
                .fetch_add(last.wrapping_sub(slice_start), Ordering::Relaxed);
        }
        end
    }

    /// Reports the stop of guest `i` (its slot locked by this CPU),
    /// destroys it, and restarts it if the configuration says so.
    fn stop(&self, local: &mut Local, slot: &mut Slot, i: usize, reason: StopReason) {
        self.retire(local, slot, i, reason, true);
    }

    /// [`Run::stop`], restarting only when `may_restart` (a guest whose
    /// restart cannot be scheduled is not restarted again).
    fn retire(
        &self,
        local: &mut Local,
        slot: &mut Slot,
        i: usize,
        reason: StopReason,
        may_restart: bool,
    ) {
        let Some(mut guest) = slot.guest.take() else {
            return;
        };
        let name = guest.name.clone();
        guest
            .devices
            .flush(&mut |line| crate::serial::guest_line(&name, line));
        info!("guest {name}: stopped: {reason}");
        info!(
            "guest {name}: ran {} TSC ticks in {} slices ({} ended by the timer or the TSC)",
            guest.ticks, guest.slices, guest.preemptions
        );
        let s = &guest.model.stats;
        debug!(
            "guest {name}: {} exits ({} CPUID, {} I/O, {} MSR, {} hypercalls, {} host interrupts), {} exceptions injected, \
             {} port writes ignored, {} port reads unclaimed",
            s.exits,
            s.cpuid,
            s.io,
            s.msr,
            s.hypercalls,
            s.host_events,
            s.injected,
            s.io_writes_ignored,
            s.io_reads_unclaimed
        );
        // Its VMCS must be inactive everywhere but here before VMCLEAR and
        // the frames go back.
        self.take_over(local, i, &mut guest);
        if local.owner == Some(i) {
            local.owner = None;
        }
        if local.current == Some(i) {
            local.current = None;
        }
        guest.destroy();
        let restarted = if may_restart && self.on_stop == GuestStopAction::Restart {
            info!("guest {name}: restarting");
            let guest = {
                let mut files = self.files.lock();
                // SAFETY: `run_all` keeps the files alive until every CPU
                // has left the run, and the lock gives this CPU the only
                // access.
                let files = unsafe { &mut *files.0 };
                start(&self.hw, files, &slot.config, slot.vpid)
            };
            // `create` left the new VMCS current here.
            if guest.is_some() {
                local.current = Some(i);
            }
            guest
        } else {
            None
        };
        slot.guest = restarted;
        // The old vCPU goes and the new one (if any) comes in one step, so
        // no CPU sees "every guest gone" in between.
        // What is printed is gathered under the scheduler lock and printed
        // after it: the serial port is slow, and every CPU's next pick waits
        // for that lock.
        let (outcome, shares, figures) = {
            let mut queue = self.queue.lock();
            let shares = self.shares_until_now(&queue);
            let figures = queue.remove(vcpu_id(i));
            let outcome = if slot.guest.is_some() {
                self.enqueue(&mut queue, slot, i)
            } else {
                Ok(())
            };
            ((outcome, queue.counts()), shares, figures)
        };
        if let Some(shares) = shares {
            self.report_shares(&shares);
        }
        if let Some(figures) = figures {
            let last = figures.last_cpu.and_then(|c| self.cpus.number(c));
            report_vcpu(&name, &figures, last);
        }
        match outcome {
            (Err(reason), _) => self.retire(local, slot, i, reason, false),
            (Ok(()), counts) => {
                if counts.runnable + counts.running + counts.blocked + counts.stopped == 0 {
                    self.finish();
                }
            }
        }
    }

    /// Each guest's time on a CPU so far, by slot, the first time a stop
    /// asks after guests have run (later calls give `None`): how the guests
    /// shared the CPUs while every one still competed.
    fn shares_until_now(&self, queue: &sched::Scheduler) -> Option<Vec<(usize, u64)>> {
        if self.shares_reported.load(Ordering::Relaxed) {
            return None;
        }
        let now = rdtsc();
        let times: Vec<(usize, u64)> = queue
            .vcpus_ref()
            .map(|(v, _)| (v.0 as usize, queue.run_time_at(v, now).unwrap_or(0)))
            .collect();
        let total: u64 = times.iter().map(|&(_, t)| t).sum();
        if total == 0 || times.len() < 2 {
            return None;
        }
        self.shares_reported.store(true, Ordering::Relaxed);
        Some(times)
    }

    /// `sched: shares until the first stop: a 33.33%, b 33.33%, ...`: each
    /// guest's part of all guest time in `times` (from
    /// [`Run::shares_until_now`]).
    fn report_shares(&self, times: &[(usize, u64)]) {
        let total: u64 = times.iter().map(|&(_, t)| t).sum();
        let parts: Vec<String> = times
            .iter()
            .map(|&(i, t)| {
                let hundredths = (u128::from(t) * 10_000)
                    .checked_div(u128::from(total))
                    .unwrap_or(0);
                alloc::format!(
                    "{} {}.{:02}%",
                    self.names.get(i).map_or("?", String::as_str),
                    hundredths / 100,
                    hundredths % 100
                )
            })
            .collect();
        info!("sched: shares until the first stop: {}", parts.join(", "));
    }

    /// The figures of the run: per CPU, and the switch costs.
    fn report(&self, run_ticks: u64) {
        let mut busy_total = 0u64;
        let (mut switches, mut switch_ticks, mut migrations, mut migration_ticks) = (0, 0, 0, 0);
        for (&c, f) in self.cpus.numbers.iter().zip(&self.figures) {
            let busy = f.busy.load(Ordering::Relaxed);
            busy_total += busy;
            switches += f.switches.load(Ordering::Relaxed);
            switch_ticks += f.switch_ticks.load(Ordering::Relaxed);
            migrations += f.migrations.load(Ordering::Relaxed);
            migration_ticks += f.migration_ticks.load(Ordering::Relaxed);
            info!(
                "sched: cpu{c}: {} slices, guests ran {busy} TSC ticks ({}% of the run), {} idle waits",
                f.slices.load(Ordering::Relaxed),
                percent(busy, run_ticks),
                f.idle_waits.load(Ordering::Relaxed)
            );
        }
        if self.cpus.numbers.len() > 1 {
            let hundredths = (u128::from(busy_total) * 100)
                .checked_div(u128::from(run_ticks))
                .unwrap_or(0);
            info!(
                "sched: the run took {run_ticks} TSC ticks; guests kept {}.{:02} CPUs busy on average",
                hundredths / 100,
                hundredths % 100
            );
        }
        if let Some(average) = switch_ticks.checked_div(switches) {
            info!(
                "sched: {switches} vCPU switches, on average {average} TSC ticks from one guest's last exit to the next guest's first entry"
            );
        }
        if let Some(average) = migration_ticks.checked_div(migrations) {
            info!(
                "sched: {migrations} vCPU switches across CPUs, on average {average} TSC ticks from one guest's last exit to the next guest's first entry on the CPU it moved to"
            );
        }
    }
}

/// `guest <name>: vcpu0: ...`: the scheduler's figures for the vCPU of a
/// guest that stopped (the ones the console monitor will show).
fn report_vcpu(name: &str, s: &sched::VcpuStats, last_cpu: Option<usize>) {
    let mut exits = String::new();
    for (kind, &n) in s.exits.iter().enumerate() {
        if n > 0 {
            let name = ExitKind::from_index(kind).map_or("other", ExitKind::name);
            let sep = if exits.is_empty() { "" } else { ", " };
            exits.push_str(&alloc::format!("{sep}{n} {name}"));
        }
    }
    if s.exits_other > 0 {
        let sep = if exits.is_empty() { "" } else { ", " };
        exits.push_str(&alloc::format!("{sep}{} other", s.exits_other));
    }
    debug!(
        "guest {name}: vcpu0: {} TSC ticks on a CPU in {} slices ({} moved between CPUs, {} blocked, {} woken), last on {}; exits: {}",
        s.run_time,
        s.slices,
        s.migrations,
        s.blocks,
        s.wakeups,
        last_cpu.map_or(String::from("no CPU"), |c| alloc::format!("cpu{c}")),
        if exits.is_empty() { "none" } else { &exits }
    );
}

/// `part` as a whole percentage of `whole`.
fn percent(part: u64, whole: u64) -> u64 {
    u64::try_from(
        (u128::from(part) * 100)
            .checked_div(u128::from(whole))
            .unwrap_or(0),
    )
    .unwrap_or(u64::MAX)
}

/// An application processor's life once it is up with VT-x on: it waits,
/// halted, for a run of guests to join, runs its share, and at power-off
/// leaves VMX operation and halts for good.
pub fn ap_main(index: usize) -> ! {
    let mut joined = 0;
    loop {
        if crate::smp::shutting_down() {
            crate::vtx::disable();
            crate::smp::parked(index);
        }
        let generation = RUN_GENERATION.load(Ordering::Acquire);
        let run = RUN.load(Ordering::Acquire);
        if generation != joined && !run.is_null() {
            joined = generation;
            // SAFETY: the boot CPU publishes the run before bumping the
            // generation and takes it down only after every AP in its CPU
            // set has counted itself out in `left`, which this one does
            // last.
            let run = unsafe { &*run };
            if run.cpus.sched_id(index).is_some() {
                run.cpu_loop(index);
                run.left.fetch_add(1, Ordering::AcqRel);
            }
            continue;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear
    // at CPL 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}
