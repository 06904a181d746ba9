//! From the configuration to running guests and back: reads
//! `hypervisor.toml` and the images through [`ConfigFiles`] (the boot
//! ramdisk or the config partition), creates each guest, and runs them on
//! every CPU that is up with VT-x: each CPU runs what the `sched` run
//! queues pick for it, for the slice they give (ended by the
//! VMX-preemption timer or the TSC), reports each stop, and gives every
//! frame back.
//!
//! The run itself (the per-CPU loop, the stop and restart policy, the
//! hand-over of a vCPU between CPUs) is the `run` crate; this
//! module gives it its backend, [`HostBackend`]: a [`Hardware`] backend
//! for the guests (VT-x in `crate::vtx::vm`, AMD SVM in `crate::svm::vm`),
//! the local APIC for kicks and timed wake-ups, the TSC for the clock,
//! and the config partition for (re)starting guests.

use alloc::boxed::Box;
use alloc::string::String;
use core::sync::atomic::{AtomicUsize, Ordering};

use addr::PAGE_SIZE;
use config::files::{ConfigFiles, CONFIG_FILE};
use config::{self, CpuMode, GuestConfig, ImageFormat, ParseOutcome};
use image::GuestImages;
use loader::PcPlatform;
use loader::{GuestMemory, LoadError, LoadedImage};
use log::{debug, error, info, warn};
use run::{Backend, GuestRun, Vcpu, Vm};
use spin::Mutex;
use vcpu::com_out::ComOut;
use vcpu::exit::{Exit, Outcome};
use vcpu::stop::StopReason;

use crate::virt::Capabilities;
use crate::{cpu, lapic, memory};

/// What the run needs of a hardware virtualization backend (VT-x, SVM) in
/// the kernel: a guest's hardware half, made, run and taken down. Each
/// method is the same-named one of [`run::Backend`], which [`HostBackend`]
/// forwards here.
pub trait Hardware: Sync + Sized + 'static {
    /// A VM's hardware half.
    type Vm: Send + Sync;
    /// A vCPU's hardware half.
    type Vcpu: Send;
    /// Prepares the calling CPU to switch guests' state.
    fn prepare_this_cpu(&self);
    /// Ends a host interrupt a guest's run was cut short for.
    fn end_host_interrupt(&self);
    /// Creates guest number `index` with `ram` bytes and `vcpus` vCPUs,
    /// its image loaded by `load`; `Err` says why in words.
    fn create_guest(
        &self,
        index: usize,
        name: &str,
        ram: u64,
        vcpus: u32,
        load: &mut dyn FnMut(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
    ) -> Result<(Self::Vm, alloc::vec::Vec<Self::Vcpu>), String>;
    /// See [`run::Backend::destroy_vcpu`].
    fn destroy_vcpu(&self, vm: &Self::Vm, vcpu: &mut Self::Vcpu);
    /// See [`run::Backend::destroy_vm`].
    fn destroy_vm(&self, vm: &mut Self::Vm);
    /// See [`run::Backend::start_up`].
    fn start_up(&self, vcpu: &mut Self::Vcpu, vector: u8) -> Result<(), String>;
    /// See [`run::Backend::arrive`].
    fn arrive(&self, vm: &Self::Vm, vcpu: &mut Self::Vcpu, cpu: usize) -> Result<(), String>;
    /// See [`run::Backend::make_current`].
    fn make_current(&self, vcpu: &mut Self::Vcpu) -> Result<(), String>;
    /// See [`run::Backend::clear`].
    fn clear(&self, vcpu: &mut Self::Vcpu);
    /// See [`run::Backend::save_switched`]; the guest's XCR0 is in
    /// `vcpu.model`.
    fn save_switched(&self, vcpu: &mut Vcpu<HostBackend<Self>>);
    /// See [`run::Backend::load_switched`]; `xcr0` is the guest's.
    fn load_switched(&self, vcpu: &mut Self::Vcpu, xcr0: u64);
    /// See [`run::Backend::set_slice`].
    fn set_slice(&self, vcpu: &mut Self::Vcpu, ticks: u64) -> Result<(), String>;
    /// See [`run::Backend::enter`].
    fn enter(&self, vcpu: &mut Self::Vcpu, com1_out: &ComOut) -> Result<Exit, Box<StopReason>>;
    /// See [`run::Backend::handle`].
    fn handle(
        &self,
        vm: &Vm<HostBackend<Self>>,
        vcpu: &mut Vcpu<HostBackend<Self>>,
        exit: &Exit,
    ) -> Outcome;
    /// See [`run::Backend::deliver_interrupt`].
    fn deliver_interrupt(
        &self,
        vm: &Vm<HostBackend<Self>>,
        vcpu: &mut Vcpu<HostBackend<Self>>,
        now: u64,
    ) -> Result<(), StopReason>;
    /// See [`run::Backend::rip`].
    fn rip(&self, vcpu: &Self::Vcpu) -> u64;
    /// See [`run::Backend::registers`].
    fn registers(&self, vcpu: &mut Self::Vcpu) -> console::RegisterSnapshot;
    /// See [`run::Backend::read_memory`].
    fn read_memory(&self, vm: &Self::Vm, gpa: u64, buf: &mut [u8])
        -> Result<(), console::MemError>;
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
/// the summary line and each guest's plan, with the overhead of the
/// backend `caps` names (VT-x's without one). `None` when there is no file
/// to read.
pub fn load_config(
    files: &mut dyn ConfigFiles<'_>,
    caps: Option<&Capabilities>,
) -> Option<ParseOutcome> {
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
    // What the guests may take: the free frames, less what starting the
    // other CPUs will take for good; each guest needs its RAM and the
    // overhead running it costs (EPT, bitmaps, VMCS, save area).
    let free = memory::free_frames() * PAGE_SIZE;
    let cpus = crate::power::madt().map_or(1, |m| m.enabled_cpus().count());
    let for_cpus = crate::smp::frames_for_other_cpus(cpus) * PAGE_SIZE;
    let save_area = crate::switched::save_area_bytes();
    debug!(
        "memory: {} KiB free, {} KiB kept for starting {} other CPUs, {save_area}-byte save areas",
        free >> 10,
        for_cpus >> 10,
        cpus.saturating_sub(1)
    );
    config::check_memory(&mut outcome, free.saturating_sub(for_cpus), |g| {
        crate::virt::guest_overhead(caps, g.memory, g.vcpus, save_area)
    });
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
            "config: guest {}: kernel \"{}\"{}, {format}, {} MiB + {} KiB overhead, {} vCPU{}, cmdline \"{}\"",
            g.name,
            g.kernel,
            g.initrd
                .as_ref()
                .map_or(String::new(), |i| alloc::format!(", initrd \"{i}\"")),
            g.memory >> 20,
            crate::virt::guest_overhead(caps, g.memory, g.vcpus, save_area) >> 10,
            g.vcpus,
            if g.vcpus == 1 { "" } else { "s" },
            g.cmdline
        );
    }
    Some(outcome)
}

/// Starts the guests `outcome` lists, with their images from `files`, and
/// runs them until all have stopped, on the backend `caps` names;
/// `tsc_hz` turns the slice length into TSC ticks.
pub fn run_all(
    caps: Capabilities,
    tsc_hz: u64,
    files: &mut dyn ConfigFiles<'_>,
    outcome: ParseOutcome,
) -> AllStopped {
    match caps {
        Capabilities::Vmx(caps) => match crate::vtx::vm::VmxSettings::new(caps) {
            Ok(hw) => run_with(hw, tsc_hz, files, outcome),
            Err(e) => {
                error!("vmx: cannot run guests: {e}");
                AllStopped::PowerOff
            }
        },
        Capabilities::Svm(caps) => match crate::svm::vm::SvmSettings::new(caps, tsc_hz) {
            Ok(hw) => run_with(hw, tsc_hz, files, outcome),
            Err(e) => {
                error!("svm: cannot run guests: {e}");
                AllStopped::PowerOff
            }
        },
    }
}

/// [`run_all`] on the hardware backend `hw`.
fn run_with<H: Hardware>(
    hw: H,
    tsc_hz: u64,
    files: &mut dyn ConfigFiles<'_>,
    outcome: ParseOutcome,
) -> AllStopped {
    let settings = outcome.config.hypervisor;
    let slice_ticks = tsc_hz / 1000 * u64::from(settings.slice_ms);
    debug!(
        "sched: slice {} ms = {slice_ticks} TSC ticks",
        settings.slice_ms
    );

    let frames_before = memory::free_frames();
    let files: *mut (dyn ConfigFiles<'_> + '_) = files;
    // SAFETY: only the lifetime is erased: the run below uses the files
    // only while this function runs (`run_everywhere` returns after every
    // CPU has left the run, and the run is dropped before this returns).
    let files: *mut (dyn ConfigFiles<'static> + 'static) = unsafe { core::mem::transmute(files) };
    let backend = HostBackend {
        hw,
        files: Mutex::new(FilesPtr(files)),
        tsc_hz,
        clock: crate::rtc::wall_clock(),
    };
    let cpus = crate::smp::ready_cpus();
    crate::serial_console::start(settings.console_hotkey.byte(), tsc_hz);
    let run = match GuestRun::new(
        backend,
        outcome.config.guests,
        cpus,
        slice_ticks,
        settings.on_guest_stop,
        crate::smp::MAX_CPUS,
    ) {
        Ok(run) => run,
        Err(e) => {
            error!("sched: cannot run guests: {e}");
            crate::serial_console::finish();
            return AllStopped::PowerOff;
        }
    };
    info!("sched: guests run on {}", run.cpus().names());
    // Staying up, the run goes on with no guest (the console's monitor
    // can restart one) until its `poweroff`.
    run.set_end_when_all_stopped(settings.power_off_when_all_stopped);
    let started = rdtsc();
    run_everywhere(&run);
    run.report(rdtsc().wrapping_sub(started));
    let poweroff = run.poweroff_requested();
    drop(run);
    crate::serial_console::finish();

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
    if poweroff {
        info!("powering off (monitor)");
        AllStopped::PowerOff
    } else if settings.power_off_when_all_stopped {
        info!("all guests stopped, powering off");
        AllStopped::PowerOff
    } else {
        info!("all guests stopped; staying up (power_off_when_all_stopped = false)");
        AllStopped::StayUp
    }
}

/// Runs the guests on this CPU and on every application processor of the
/// run, until all have stopped.
fn run_everywhere<H: Hardware>(run: &GuestRun<HostBackend<H>>) {
    let aps = run.cpus().numbers.len().saturating_sub(1);
    run.enqueue_all();
    *RUN.lock() = Some(Joinable {
        run: core::ptr::from_ref(run) as usize,
        join: join::<H>,
    });
    RUN_GENERATION.fetch_add(1, Ordering::AcqRel);
    run.kick_others();
    run.cpu_loop(usize::from(cpu::current_index()));
    // The others may still be finishing a stop report: wait for them
    // before the run is taken down.
    while run.left() < aps {
        core::hint::spin_loop();
    }
    *RUN.lock() = None;
}

/// Application processor `index` joins the run at address `run` (a
/// `GuestRun<HostBackend<H>>`) if it is one of the run's CPUs, and
/// counts itself out when it is over.
fn join<H: Hardware>(run: usize, index: usize) {
    // SAFETY: `run_everywhere` publishes the address of a live
    // `GuestRun<HostBackend<H>>` together with this very instance of
    // `join`, and takes the run down only after every AP in its CPU set
    // has counted itself out in `left`, which this one does last.
    let run = unsafe { &*(run as *const GuestRun<HostBackend<H>>) };
    if run.cpus().sched_id(index).is_some() {
        run.cpu_loop(index);
        run.leave();
    }
}

/// Creates and loads guest number `index`; `None` (reported) when it
/// cannot start.
fn start<H: Hardware>(
    hw: &H,
    files: &mut dyn ConfigFiles<'_>,
    config: &GuestConfig,
    index: usize,
) -> Option<(H::Vm, alloc::vec::Vec<H::Vcpu>)> {
    let name = config.name.as_str();
    // The images stream from the config source into guest RAM.
    let images = match GuestImages::open(files, config) {
        Ok(images) => images,
        Err(e) => {
            error!("guest {name}: not started: {e}");
            return None;
        }
    };
    let platform = pc_platform(config.vcpus);
    match hw.create_guest(index, name, config.memory, config.vcpus, &mut |mem| {
        images.load(mem, &platform)
    }) {
        Ok(guest) => {
            info!(
                "guest {name}: started ({} MiB, {format_name})",
                config.memory >> 20,
                format_name = format_name(images.format())
            );
            Some(guest)
        }
        Err(e) => {
            if let Some(cause) = images.failure() {
                error!("guest {name}: {cause}");
            }
            error!("guest {name}: not started: {e}");
            None
        }
    }
}

/// The platform every VM's devices make, as the firmware tables describe
/// it to the guest.
fn pc_platform(vcpus: u32) -> PcPlatform {
    use devices::acpi_pm::{PM1A_CNT_BLK, PM1A_EVT_BLK, PM_TMR_BLK, SLP_TYP_S5};
    // The addresses fit 32 bits: both are in the device window below 4 GiB.
    PcPlatform {
        cpus: vcpus,
        lapic_addr: devices::lapic::LAPIC_BASE as u32,
        ioapic_id: 0,
        ioapic_addr: devices::ioapic::IOAPIC_BASE as u32,
        pm1a_evt: PM1A_EVT_BLK,
        pm1a_cnt: PM1A_CNT_BLK,
        pm_tmr: PM_TMR_BLK,
        reset_port: devices::pci_host::RESET_CONTROL,
        // RST_CPU with a hard reset (bits 2 and 1).
        reset_value: 0x06,
        sci_irq: 9,
        s5_sleep_type: SLP_TYP_S5,
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

/// The configuration partition, reached from every CPU (one at a time,
/// under `HostBackend::files`).
struct FilesPtr(*mut (dyn ConfigFiles<'static> + 'static));

// SAFETY: the pointer is used only under `HostBackend::files`' lock, and
// the disk drivers behind it keep no per-CPU state, so any CPU may use them
// in turn; `run_with` keeps the referent alive until every CPU has left.
unsafe impl Send for FilesPtr {}

/// A hardware backend and the host's devices (the local APIC, the TSC,
/// the serial console, the config partition) as the run's backend.
pub struct HostBackend<H> {
    hw: H,
    files: Mutex<FilesPtr>,
    /// The TSC rate measured at boot.
    tsc_hz: u64,
    /// The machine's time of day when the run began.
    clock: vcpu::vm::WallClock,
}

impl<H: Hardware> Backend for HostBackend<H> {
    type Vm = H::Vm;
    type Vcpu = H::Vcpu;

    fn now(&self) -> u64 {
        rdtsc()
    }

    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    fn wall_clock(&self) -> vcpu::vm::WallClock {
        self.clock
    }

    fn this_cpu(&self) -> usize {
        usize::from(cpu::current_index())
    }

    fn prepare_this_cpu(&self) {
        self.hw.prepare_this_cpu();
    }

    fn kick(&self, cpu: usize) {
        lapic::kick(cpu::apic_id(cpu), crate::smp::clock());
    }

    fn end_host_interrupt(&self) {
        self.hw.end_host_interrupt();
    }

    fn idle(&self, until: Option<u64>) -> bool {
        // Without TSC-deadline mode nothing would wake the CPU at `until`.
        if until.is_some() && !lapic::arm_wakeup(until) {
            return false;
        }
        // A kick that came since the pick is pending and ends the HLT at
        // once (STI's shadow covers the HLT).
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
        if until.is_some() {
            lapic::arm_wakeup(None);
        }
        true
    }

    fn create(
        &self,
        index: usize,
        config: &GuestConfig,
    ) -> Option<(H::Vm, alloc::vec::Vec<H::Vcpu>)> {
        let mut files = self.files.lock();
        // SAFETY: `run_with` keeps the files alive until every CPU has left
        // the run, and the lock gives this CPU the only access.
        let files = unsafe { &mut *files.0 };
        start(&self.hw, files, config, index)
    }

    fn destroy_vcpu(&self, vm: &H::Vm, vcpu: &mut H::Vcpu) {
        self.hw.destroy_vcpu(vm, vcpu);
    }

    fn destroy_vm(&self, vm: &mut H::Vm) {
        self.hw.destroy_vm(vm);
    }

    fn start_up(&self, vcpu: &mut H::Vcpu, vector: u8) -> Result<(), String> {
        self.hw.start_up(vcpu, vector)
    }

    fn arrive(&self, vm: &H::Vm, vcpu: &mut H::Vcpu, cpu: usize) -> Result<(), String> {
        self.hw.arrive(vm, vcpu, cpu)
    }

    fn make_current(&self, vcpu: &mut H::Vcpu) -> Result<(), String> {
        self.hw.make_current(vcpu)
    }

    fn clear(&self, vcpu: &mut H::Vcpu) {
        self.hw.clear(vcpu);
    }

    fn save_switched(&self, vcpu: &mut Vcpu<Self>) {
        self.hw.save_switched(vcpu);
    }

    fn load_switched(&self, vcpu: &mut Vcpu<Self>) {
        self.hw.load_switched(&mut vcpu.hw, vcpu.model.xcr0);
    }

    fn set_slice(&self, vcpu: &mut H::Vcpu, ticks: u64) -> Result<(), String> {
        self.hw.set_slice(vcpu, ticks)
    }

    #[inline]
    fn enter(&self, vcpu: &mut H::Vcpu, com1_out: &ComOut) -> Result<Exit, Box<StopReason>> {
        self.hw.enter(vcpu, com1_out)
    }

    #[inline]
    fn handle(&self, vm: &Vm<Self>, vcpu: &mut Vcpu<Self>, exit: &Exit) -> Outcome {
        self.hw.handle(vm, vcpu, exit)
    }

    fn deliver_interrupt(
        &self,
        vm: &Vm<Self>,
        vcpu: &mut Vcpu<Self>,
        now: u64,
    ) -> Result<(), StopReason> {
        self.hw.deliver_interrupt(vm, vcpu, now)
    }

    fn rip(&self, vcpu: &H::Vcpu) -> u64 {
        self.hw.rip(vcpu)
    }

    fn guest_line(&self, name: &str, line: &str) {
        crate::serial_console::guest_line(name, line);
    }

    fn console_add_guest(&self, index: usize, name: &str) {
        crate::serial_console::add_guest(index, name);
    }

    fn guest_output(&self, index: usize, bytes: &[u8]) {
        crate::serial_console::guest_output(index, bytes);
    }

    fn console_hold(&self, index: usize, held: bool) {
        crate::serial_console::hold(index, held);
    }

    fn console_write(&self, text: &str) {
        crate::serial_console::write_host(text);
    }

    fn console_prompt(&self, prompt: &str) {
        crate::serial_console::set_prompt(prompt);
    }

    fn console_input(&self, out: &mut dyn FnMut(run::ConsoleInput<'_>)) {
        crate::serial_console::route_input(&mut |input| match input {
            crate::serial_console::Input::Guest(index, bytes) => {
                out(run::ConsoleInput::Guest(index, &bytes))
            }
            crate::serial_console::Input::Monitor(bytes) => out(run::ConsoleInput::Monitor(&bytes)),
        });
    }

    fn console_pump(&self) -> Option<u64> {
        crate::serial_console::pump()
    }

    fn console_quiet(&self, now: u64) -> Option<Option<u64>> {
        crate::serial_console::quiet(now)
    }

    fn console_history(&self, index: usize) -> Option<(alloc::vec::Vec<u8>, u64)> {
        crate::serial_console::history(index)
    }

    fn registers(&self, vcpu: &mut H::Vcpu) -> console::RegisterSnapshot {
        self.hw.registers(vcpu)
    }

    fn read_memory(&self, vm: &H::Vm, gpa: u64, buf: &mut [u8]) -> Result<(), console::MemError> {
        self.hw.read_memory(vm, gpa, buf)
    }

    fn host_memory(&self) -> Option<(u64, u64)> {
        Some((memory::free_frames(), memory::heap_used()))
    }

    fn host_stats(&self) -> console::HostStats {
        let (console_dropped, input_dropped) = crate::serial_console::dropped();
        let frames = memory::frame_stats();
        console::HostStats {
            uptime_ms: crate::serial_console::uptime_ms(self.tsc_hz),
            cpus: alloc::vec::Vec::new(),
            free_memory: frames.free_frames * PAGE_SIZE,
            total_memory: frames.total_frames * PAGE_SIZE,
            largest_free: frames.largest_free_frames * PAGE_SIZE,
            console_dropped,
            input_dropped,
        }
    }

    fn set_log_level(&self, level: console::LogLevel) {
        crate::logger::set_level(level);
    }
}

/// The run in progress, for the application processors to join: its
/// address and the `join` made for its backend's type.
struct Joinable {
    run: usize,
    join: fn(usize, usize),
}

/// The run the application processors join, while one is in progress.
static RUN: Mutex<Option<Joinable>> = Mutex::new(None);
/// Bumped for each run, so an AP joins each run once.
static RUN_GENERATION: AtomicUsize = AtomicUsize::new(0);

/// An application processor's life once it is up with VT-x or AMD-V on:
/// it waits, halted, for a run of guests to join, runs its share, and at
/// power-off turns virtualization off and halts for good.
pub fn ap_main(index: usize) -> ! {
    let mut joined = 0;
    loop {
        if crate::smp::shutting_down() {
            crate::virt::disable();
            crate::smp::parked(index);
        }
        let generation = RUN_GENERATION.load(Ordering::Acquire);
        let run = RUN.lock().as_ref().map(|r| (r.run, r.join));
        if let Some((run, join)) = run.filter(|_| generation != joined) {
            joined = generation;
            // The boot CPU publishes the run before bumping the
            // generation and takes it down only after every AP in its CPU
            // set has counted itself out, which `join` does last.
            join(run, index);
            continue;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
}

pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear
    // at CPL 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}
