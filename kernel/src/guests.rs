//! From the configuration to running guests and back: reads
//! `hypervisor.toml` and the images through [`ConfigFiles`] (the boot
//! ramdisk or the config partition), creates each guest, runs what the
//! `sched` run queue picks on this CPU for the slice it gives (ended by the
//! VMX-preemption timer or the TSC), reports each stop, and gives every
//! frame back. Only the boot CPU runs guests so far; the application
//! processors join with the scheduler issue.

use alloc::string::String;
use alloc::vec::Vec;

use addr::{GuestPhysAddr, PAGE_SIZE};
use kernel::config::files::{ConfigFiles, CONFIG_FILE};
use kernel::config::{self, CpuMode, GuestConfig, GuestStopAction, ImageFormat, ParseOutcome};
use kernel::loader::{
    self, FlatImage, FlatMode, Format, GuestMemory, LinuxImage, LoadError, LoadedImage,
    MultibootImage,
};
use kernel::vcpu::exit::{handle_exit, Outcome};
use kernel::vcpu::stop::StopReason;
use log::{debug, error, info, warn};
use vmx::caps::VmxCapabilities;
use vmx::instructions::{self as hw, HardwareVmcs};

use crate::memory;
use sched::{CpuId, Decision, StopCause, VcpuId};

use crate::vm::{Guest, Hardware};

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
    caps: VmxCapabilities,
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

    let queue = match sched::Scheduler::new(1, slice_ticks.max(1)) {
        Ok(queue) => queue,
        Err(e) => {
            error!("sched: cannot run guests: {e}");
            for mut guest in slots.into_iter().filter_map(|s| s.guest) {
                guest.destroy();
            }
            return AllStopped::PowerOff;
        }
    };
    let mut sched = Scheduler {
        hw: &hw,
        slots,
        queue,
        owner: None,
        current: None,
        last_exit: None,
        switches: 0,
        switch_ticks: 0,
    };
    sched.run(files, settings.on_guest_stop);
    sched.report_switches();

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

/// The round-robin loop over this CPU's guests.
struct Scheduler<'a> {
    hw: &'a Hardware,
    slots: Vec<Slot>,
    /// The run queue: `sched` decides which guest runs next and for how
    /// long; a slot's index is its vCPU id.
    queue: sched::Scheduler,
    /// The guest whose switched state (XSAVE, CR2, DRs, MSRs) is in the CPU.
    owner: Option<usize>,
    /// The guest whose VMCS is current.
    current: Option<usize>,
    /// When the last slice ended, and whose it was: the next slice of
    /// another guest measures the switch from there.
    last_exit: Option<(usize, u64)>,
    /// vCPU switches (one guest's slice end to another's first entry) and
    /// their total TSC ticks.
    switches: u64,
    switch_ticks: u64,
}

/// The boot CPU, the one CPU guests run on so far.
const BOOT_CPU: CpuId = CpuId(0);

/// The vCPU id of slot `i`.
fn vcpu_id(i: usize) -> VcpuId {
    VcpuId(u32::try_from(i).unwrap_or(u32::MAX))
}

/// How a slice ended.
enum SliceEnd {
    /// Its time was up (preemption timer or TSC).
    TimeUp,
    /// HLT with interrupts on.
    Halted,
    /// The guest stopped.
    Stopped(StopReason),
}

impl Scheduler<'_> {
    /// Puts slot `i`'s guest on the run queue; a guest whose `cpus` leave
    /// out the boot CPU is stopped with the reason.
    fn enqueue(&mut self, i: usize) -> Result<(), StopReason> {
        let Some(slot) = self.slots.get(i) else {
            return Ok(());
        };
        let affinity: Option<Vec<CpuId>> = slot
            .config
            .cpus
            .as_ref()
            .map(|cpus| cpus.iter().map(|&c| CpuId(c)).collect());
        match self.queue.add(vcpu_id(i), affinity.as_deref()) {
            Ok(_) => Ok(()),
            Err(e) => Err(StopReason::NotSchedulable(alloc::format!("{e}"))),
        }
    }

    fn run(&mut self, files: &mut dyn ConfigFiles<'_>, on_stop: GuestStopAction) {
        for i in 0..self.slots.len() {
            if self.slots.get(i).is_some_and(|s| s.guest.is_some()) {
                if let Err(reason) = self.enqueue(i) {
                    self.stop(i, reason, files, on_stop);
                }
            }
        }
        loop {
            match self.queue.pick(BOOT_CPU, rdtsc()) {
                Decision::Run { vcpu, slice, .. } => {
                    let i = vcpu.0 as usize;
                    let end = self.run_slice(i, slice);
                    let now = rdtsc();
                    // A switch is measured from a slice that ended by time
                    // or HLT; after a stop, the stop's report (console
                    // lines) would be counted too.
                    self.last_exit = match end {
                        SliceEnd::Stopped(_) => None,
                        _ => Some((i, now)),
                    };
                    let cause = match &end {
                        SliceEnd::TimeUp => StopCause::SliceEnd,
                        SliceEnd::Halted => StopCause::Blocked,
                        SliceEnd::Stopped(_) => StopCause::Stopped,
                    };
                    self.queue.stopped(BOOT_CPU, vcpu, cause, now);
                    if let SliceEnd::Stopped(reason) = end {
                        self.stop(i, reason, files, on_stop);
                    }
                }
                Decision::Idle => {
                    // Nothing can run. A halted guest has no device that
                    // could wake it yet, so it never will.
                    let halted: Vec<usize> = (0..self.slots.len())
                        .filter(|&i| self.slots.get(i).is_some_and(|s| s.guest.is_some()))
                        .collect();
                    if halted.is_empty() {
                        return;
                    }
                    for i in halted {
                        let rip = self.halted_rip(i);
                        self.stop(
                            i,
                            StopReason::HaltedWithNoWakeSource { rip },
                            files,
                            on_stop,
                        );
                    }
                }
            }
        }
    }

    /// `sched: <n> vCPU switches, ...`: what switching between guests cost.
    fn report_switches(&self) {
        if let Some(average) = self.switch_ticks.checked_div(self.switches) {
            info!(
                "sched: {} vCPU switches, on average {average} TSC ticks from one guest's last exit to the next guest's first entry",
                self.switches
            );
        }
    }

    fn halted_rip(&mut self, i: usize) -> u64 {
        use vmx::vmcs::{GuestNatural, VmcsAccess};
        let Some(guest) = self.slots.get(i).and_then(|s| s.guest.as_ref()) else {
            return 0;
        };
        if guest.make_current().is_err() {
            return 0;
        }
        self.current = Some(i);
        // SAFETY: VMX root operation with this guest's VMCS current.
        let vmcs = unsafe { HardwareVmcs::current() };
        // The HLT exit already moved RIP past the instruction: this is
        // where the guest would have resumed.
        vmcs.read(GuestNatural::Rip).unwrap_or(0)
    }

    /// Switches guest `i` in and runs it for `slice` TSC ticks, until it
    /// halts, or until it stops.
    fn run_slice(&mut self, i: usize, slice: u64) -> SliceEnd {
        let hw = self.hw;
        let switch_from = self
            .last_exit
            .filter(|(prev, _)| *prev != i)
            .map(|(_, at)| at);
        if self.owner != Some(i) {
            if let Some(prev) = self
                .owner
                .and_then(|o| self.slots.get_mut(o))
                .and_then(|s| s.guest.as_mut())
            {
                prev.save_switched(hw);
            }
            if let Some(guest) = self.slots.get(i).and_then(|s| s.guest.as_ref()) {
                guest.load_switched(hw);
            }
            self.owner = Some(i);
        }
        let Some(guest) = self.slots.get_mut(i).and_then(|s| s.guest.as_mut()) else {
            return SliceEnd::Stopped(StopReason::NotSchedulable(String::from(
                "the scheduler picked a guest that no longer exists",
            )));
        };
        if self.current != Some(i) {
            if let Err(e) = guest.make_current() {
                return SliceEnd::Stopped(StopReason::LaunchFailed(e));
            }
            self.current = Some(i);
        }
        if let Err(e) = guest.set_slice(hw, slice) {
            return SliceEnd::Stopped(StopReason::VmcsAccess(e));
        }
        guest.slices += 1;
        let slice_start = rdtsc();
        if let Some(from) = switch_from {
            self.switches += 1;
            self.switch_ticks += slice_start.wrapping_sub(from);
        }
        let mut last = slice_start;
        loop {
            // SAFETY: VMX root operation at CPL 0 with interrupts off; the
            // current VMCS is this guest's, built by `Guest::create` with
            // the host state of this CPU and HOST_RIP at the exit path, and
            // `launched` tracks its launch state.
            let result = unsafe { hw::vm_run(&mut guest.regs, guest.launched) };
            // One TSC read an exit: the guest is charged from one exit to
            // the next, its exit handling included.
            let now = rdtsc();
            guest.ticks += now.wrapping_sub(last);
            last = now;
            if let Err(e) = result {
                return SliceEnd::Stopped(StopReason::LaunchFailed(e));
            }
            guest.launched = true;
            let (mut platform, regs, model) = guest.exit_parts(hw);
            // SAFETY: VMX root operation with this guest's VMCS current.
            let mut vmcs = unsafe { HardwareVmcs::current() };
            let outcome = handle_exit(&mut vmcs, regs, model, &mut platform);
            match outcome {
                Outcome::Resume => {
                    // The slice also ends by the TSC: where VM entry
                    // restarts the preemption timer from the value written
                    // at the slice's start (exits that do not save its
                    // count, or emulators that do not), a guest that exits
                    // more often than the timer runs out would otherwise
                    // never be preempted.
                    if now.wrapping_sub(slice_start) >= slice {
                        guest.preemptions += 1;
                        return SliceEnd::TimeUp;
                    }
                }
                Outcome::Preempted => {
                    guest.preemptions += 1;
                    return SliceEnd::TimeUp;
                }
                Outcome::Halted => return SliceEnd::Halted,
                Outcome::Stop(reason) => return SliceEnd::Stopped(*reason),
            }
        }
    }

    /// Reports the stop of guest `i`, destroys it, and restarts it if the
    /// configuration says so.
    fn stop(
        &mut self,
        i: usize,
        reason: StopReason,
        files: &mut dyn ConfigFiles<'_>,
        on_stop: GuestStopAction,
    ) {
        let hw = self.hw;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let Some(mut guest) = slot.guest.take() else {
            return;
        };
        let name = guest.name.clone();
        guest
            .model
            .console
            .flush(|line| crate::serial::guest_line(&name, line));
        info!("guest {name}: stopped: {reason}");
        info!(
            "guest {name}: ran {} TSC ticks in {} slices ({} ended by the timer or the TSC)",
            guest.ticks, guest.slices, guest.preemptions
        );
        let s = &guest.model.stats;
        debug!(
            "guest {name}: {} exits ({} CPUID, {} I/O, {} MSR, {} hypercalls), {} exceptions injected, \
             {} port writes ignored, {} port reads unclaimed",
            s.exits,
            s.cpuid,
            s.io,
            s.msr,
            s.hypercalls,
            s.injected,
            s.io_writes_ignored,
            s.io_reads_unclaimed
        );
        if self.owner == Some(i) {
            self.owner = None;
        }
        if self.current == Some(i) {
            self.current = None;
        }
        guest.destroy();
        self.queue.remove(vcpu_id(i));
        if on_stop == GuestStopAction::Restart {
            info!("guest {name}: restarting");
            let vpid = slot.vpid;
            slot.guest = start(hw, files, &slot.config, vpid);
            if slot.guest.is_some() {
                if let Err(reason) = self.enqueue(i) {
                    self.stop(i, reason, files, on_stop);
                }
            }
        }
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear
    // at CPL 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}
