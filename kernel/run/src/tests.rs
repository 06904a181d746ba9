//! The run on a fake backend whose CPUs are threads: guests are small
//! programs of exits handled by the real neutral handlers, and the fake
//! checks the hand-over rules on every step (a vCPU is active on one CPU
//! at a time, entered only where it is current, its switched state loaded
//! on one CPU at a time), so a broken hand-over fails the test.

use std::boxed::Box;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;
use std::vec::Vec;

use super::*;
use config::GuestStopAction;
use vcpu::access::Event;
use vcpu::exit::{handle_exit, IoAccess, IoDirection};
use vcpu::fake::{FakePlatform, FakeVcpu};
use vcpu::hypercall;

std::thread_local! {
    /// The CPU number of the calling thread.
    static CPU: Cell<usize> = const { Cell::new(0) };
    /// The vCPU (by guest id) current on this CPU.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn this_cpu() -> usize {
    CPU.with(Cell::get)
}

/// What a fake guest does.
#[derive(Clone, Copy, Debug)]
enum Program {
    /// `exits` CPUID exits, then FV_EXIT with `code`.
    Spin { exits: u64, code: u32 },
    /// HLT with interrupts on, forever.
    Idle,
    /// Arms the test timer for `units`, halts until its interrupt, exits 0.
    Timer { units: u32 },
    /// CPUID exits until `others` guests have stopped, then FV_EXIT 0:
    /// pinned to a CPU, it keeps that CPU from ever going idle (and
    /// stealing) while the others run.
    Holder { others: usize },
    /// Arms the test timer for `units`, then CPUID exits (no HLT) until
    /// its interrupt arrives, then FV_EXIT 0.
    TimerSpin { units: u32 },
    /// `exits` CPUID exits, then a byte `value` to port `port` (0xCF9 with
    /// 6 resets, 0x604 with 0x3400 is ACPI S5), then FV_EXIT 9 if that did
    /// not end it.
    Out {
        exits: u64,
        port: u16,
        size: u8,
        value: u32,
    },
    /// Writes `text` to COM1's THR a byte an exit, then FV_EXIT 0.
    Print { text: &'static str },
    /// The same, with the backend queueing the bytes at even positions
    /// in the VM's `com1_out` without returning (as VT-x does), the odd
    /// ones through the device bus; after the first `mode_at` bytes the
    /// guest turns on the THR-empty interrupt (IER = 2), so the queue is
    /// closed from then on.
    PrintQueued { text: &'static str, mode_at: usize },
    /// A shell on COM1: puts [`SHELL_MARK`] in RBX, enables the receive
    /// interrupt (MCR.OUT2, IER), prints [`SHELL_PROMPT`], then polls LSR, halting while
    /// nothing came, and echoes every byte it reads from RBR; `q` ends
    /// it with FV_EXIT 0.
    Shell,
    /// CPUID exits forever (until stopped from outside).
    Forever,
    /// A guest with several vCPUs starting its application processors as
    /// an OS does, through its local APIC's ICR (the fake's port 0xF0
    /// stands for an ICR write: RAX the low half, RBX the destination;
    /// port 0xF1 software-enables the APIC). vCPU 0 sends INIT and a
    /// start-up IPI (vector 8) to all but itself, waits (CPUID exits)
    /// until every AP has checked in, pings APIC 1 with vector 0x40 and
    /// halts until AP 1 answers with 0x41, then exits with the number of
    /// APs that arrived. Each AP checks it started at 0x8000, checks in,
    /// and parks with HLT and interrupts off; AP 1 first halts (IF on)
    /// for the ping and answers it.
    Smp,
}

/// What the shell program leaves in RBX, for `regs`.
const SHELL_MARK: u64 = 0x5EED_F00D;
/// The shell program's prompt.
const SHELL_PROMPT: &[u8] = b"ready> ";
/// The fake RAM's size; each guest's name is at [`NAME_AT`] in it.
const FAKE_RAM: usize = 0x1_0000;
const NAME_AT: usize = 0x100;

struct FakeVmHw {
    id: usize,
    ram: Vec<u8>,
}

struct FakeVcpuHw {
    id: usize,
    vm_id: usize,
    /// Its index in its guest, the guest's vCPU count, and the APs of its
    /// guest that checked in so far (`Program::Smp`).
    index: u32,
    vcpus: u32,
    arrived: std::sync::Arc<AtomicUsize>,
    program: Program,
    step: u64,
    vcpu: FakeVcpu,
    platform: FakePlatform,
    /// Where the "VMCS" is active, and the slice's end.
    active_on: Option<usize>,
    switched_on: Option<usize>,
    slice_end: u64,
    /// Where a `Print` or `Shell` program is.
    phase: u8,
    wrote: usize,
}

/// Console input a test typed, as the fake's `console_input` hands it.
enum Typed {
    Guest(usize, Vec<u8>),
    Monitor(Vec<u8>),
}

/// A machine of `cpus` threads with a shared fake clock.
struct FakeBackend {
    clock: AtomicU64,
    kicks: Vec<AtomicBool>,
    programs: Vec<Program>,
    /// How often each guest may still be created.
    creations_left: Vec<AtomicUsize>,
    next_id: AtomicUsize,
    live: AtomicUsize,
    created: AtomicUsize,
    destroyed: AtomicUsize,
    arrivals: AtomicUsize,
    stops: StdMutex<Vec<(String, String)>>,
    lines: StdMutex<Vec<String>>,
    /// The CPU each guest id last entered on, to see vCPUs move.
    entered_on: StdMutex<HashMap<usize, Vec<usize>>>,
    /// Every slice timer set, in ticks.
    timers: StdMutex<Vec<u64>>,
    /// `console_add_guest` calls.
    console_guests: StdMutex<Vec<(usize, String)>>,
    /// What each guest sent to its COM1, by index.
    outputs: StdMutex<HashMap<usize, Vec<u8>>>,
    /// Output and stops in the order they came: `out g<i>`, `stop g<i>`.
    events: StdMutex<Vec<String>>,
    /// The monitor's answers, and every prompt drawn.
    console_text: StdMutex<String>,
    prompts: StdMutex<Vec<String>>,
    /// Input typed and not yet taken.
    typed: StdMutex<VecDeque<Typed>>,
    /// Log levels set.
    log_levels: StdMutex<Vec<console::LogLevel>>,
}

/// Ticks the clock advances per exit.
const TICKS_PER_EXIT: u64 = 50;

impl FakeBackend {
    fn new(cpus: usize, programs: Vec<Program>, creations: usize) -> Self {
        Self {
            clock: AtomicU64::new(1),
            kicks: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            creations_left: programs
                .iter()
                .map(|_| AtomicUsize::new(creations))
                .collect(),
            programs,
            next_id: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            destroyed: AtomicUsize::new(0),
            arrivals: AtomicUsize::new(0),
            stops: StdMutex::new(Vec::new()),
            lines: StdMutex::new(Vec::new()),
            entered_on: StdMutex::new(HashMap::new()),
            timers: StdMutex::new(Vec::new()),
            console_guests: StdMutex::new(Vec::new()),
            outputs: StdMutex::new(HashMap::new()),
            events: StdMutex::new(Vec::new()),
            console_text: StdMutex::new(String::new()),
            prompts: StdMutex::new(Vec::new()),
            typed: StdMutex::new(VecDeque::new()),
            log_levels: StdMutex::new(Vec::new()),
        }
    }

    /// What guest `index` sent to its COM1 so far.
    fn output(&self, index: usize) -> Vec<u8> {
        self.outputs
            .lock()
            .unwrap()
            .get(&index)
            .cloned()
            .unwrap_or_default()
    }

    /// Types `typed` at the console: the receive interrupt wakes the first
    /// CPU.
    fn type_in(&self, typed: Typed) {
        self.typed.lock().unwrap().push_back(typed);
        self.kick(0);
    }

    fn stops(&self) -> Vec<(String, String)> {
        let mut stops = self.stops.lock().unwrap().clone();
        stops.sort();
        stops
    }
}

/// The 8259 pair set up as a PC BIOS does (master vectors from 0x20),
/// every input masked but IRQ 5 (the test timer's line).
const PIC_SETUP: [(u16, u8); 10] = [
    (0x20, 0x11),
    (0xA0, 0x11),
    (0x21, 0x20),
    (0xA1, 0x28),
    (0x21, 0x04),
    (0xA1, 0x02),
    (0x21, 0x01),
    (0xA1, 0x01),
    (0x21, 0xDF),
    (0xA1, 0xFF),
];

/// A timer program's first exits: the 8259 set-up, then arming the test
/// timer for `units`; `None` once both are done.
fn timer_setup(v: &mut FakeVcpu, step: u64, units: u32) -> Option<Exit> {
    let out = |port, size| Exit::Io(IoAccess::port(port, size, IoDirection::Out));
    let step = step as usize;
    if let Some(&(port, value)) = PIC_SETUP.get(step.wrapping_sub(1)) {
        v.gprs[0] = u64::from(value);
        return Some(out(port, 1));
    }
    if step == PIC_SETUP.len() + 1 {
        v.gprs[0] = u64::from(units);
        return Some(out(0xE0, 4));
    }
    None
}

impl Backend for FakeBackend {
    type Vm = FakeVmHw;
    type Vcpu = FakeVcpuHw;

    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn tsc_hz(&self) -> u64 {
        1_000_000_000
    }

    fn wall_clock(&self) -> vcpu::vm::WallClock {
        vcpu::vm::WallClock::default()
    }

    fn this_cpu(&self) -> usize {
        this_cpu()
    }

    fn prepare_this_cpu(&self) {}

    fn kick(&self, cpu: usize) {
        self.kicks[cpu].store(true, Ordering::SeqCst);
    }

    fn end_host_interrupt(&self) {}

    fn idle(&self, until: Option<u64>) -> bool {
        // Time passes while a CPU idles: a deadline comes at once.
        if let Some(until) = until {
            self.clock.fetch_max(until, Ordering::SeqCst);
            return true;
        }
        let kick = &self.kicks[this_cpu()];
        while !kick.swap(false, Ordering::SeqCst) {
            std::thread::yield_now();
        }
        true
    }

    fn create(&self, index: usize, config: &GuestConfig) -> Option<(FakeVmHw, Vec<FakeVcpuHw>)> {
        let left = &self.creations_left[index];
        if left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return None;
        }
        assert_eq!(config.name, format!("g{index}"));
        // The VM's id is its first vCPU's: with one vCPU a guest's ids are
        // 0, 1, 2, ... in the order created.
        let vm_id = self.next_id.load(Ordering::SeqCst);
        self.created.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        let mut ram = vec![0u8; FAKE_RAM];
        ram[NAME_AT..NAME_AT + config.name.len()].copy_from_slice(config.name.as_bytes());
        let arrived = std::sync::Arc::new(AtomicUsize::new(0));
        let n = config.vcpus.max(1);
        let vcpus = (0..n)
            .map(|k| {
                let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                CURRENT.with(|c| c.set(Some(id)));
                let mut vcpu = FakeVcpu::long_mode(0x1000, 2);
                vcpu.rflags = 0x202;
                FakeVcpuHw {
                    id,
                    vm_id,
                    index: k,
                    vcpus: n,
                    arrived: std::sync::Arc::clone(&arrived),
                    program: self.programs[index],
                    step: 0,
                    vcpu,
                    platform: FakePlatform::default(),
                    active_on: Some(this_cpu()),
                    switched_on: None,
                    slice_end: 0,
                    phase: 0,
                    wrote: 0,
                }
            })
            .collect();
        Some((FakeVmHw { id: vm_id, ram }, vcpus))
    }

    fn destroy_vcpu(&self, vm: &FakeVmHw, vcpu: &mut FakeVcpuHw) {
        assert_eq!(vm.id, vcpu.vm_id);
        assert!(
            vcpu.active_on.is_none() || vcpu.active_on == Some(this_cpu()),
            "destroyed on cpu{} while active on {:?}",
            this_cpu(),
            vcpu.active_on
        );
        // Its switched state may still be in this CPU's registers (it is
        // dropped, not saved), never in another CPU's.
        assert!(
            vcpu.switched_on.is_none() || vcpu.switched_on == Some(this_cpu()),
            "destroyed with its state loaded on cpu{:?}",
            vcpu.switched_on
        );
    }

    fn destroy_vm(&self, _vm: &mut FakeVmHw) {
        self.destroyed.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn start_up(&self, vcpu: &mut FakeVcpuHw, vector: u8) -> Result<(), String> {
        assert_eq!(vcpu.active_on, Some(this_cpu()), "started where not active");
        vcpu.vcpu.rip = u64::from(vector) << 12;
        Ok(())
    }

    fn arrive(&self, vm: &FakeVmHw, vcpu: &mut FakeVcpuHw, cpu: usize) -> Result<(), String> {
        assert_eq!(vm.id, vcpu.vm_id);
        assert_eq!(cpu, this_cpu());
        assert_eq!(vcpu.active_on, None, "arrived while active elsewhere");
        vcpu.active_on = Some(cpu);
        CURRENT.with(|c| c.set(Some(vcpu.id)));
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn make_current(&self, vcpu: &mut FakeVcpuHw) -> Result<(), String> {
        assert_eq!(
            vcpu.active_on,
            Some(this_cpu()),
            "made current where not active"
        );
        CURRENT.with(|c| c.set(Some(vcpu.id)));
        Ok(())
    }

    fn clear(&self, vcpu: &mut FakeVcpuHw) {
        assert_eq!(vcpu.active_on, Some(this_cpu()), "cleared where not active");
        vcpu.active_on = None;
        CURRENT.with(|c| {
            if c.get() == Some(vcpu.id) {
                c.set(None);
            }
        });
    }

    fn save_switched(&self, vcpu: &mut Vcpu<Self>) {
        assert_eq!(
            vcpu.hw.switched_on,
            Some(this_cpu()),
            "saved from the wrong CPU"
        );
        vcpu.hw.switched_on = None;
    }

    fn load_switched(&self, vcpu: &mut Vcpu<Self>) {
        assert_eq!(vcpu.hw.switched_on, None, "loaded while loaded elsewhere");
        vcpu.hw.switched_on = Some(this_cpu());
    }

    fn set_slice(&self, vcpu: &mut FakeVcpuHw, ticks: u64) -> Result<(), String> {
        vcpu.slice_end = self.now().saturating_add(ticks);
        self.timers.lock().unwrap().push(ticks);
        Ok(())
    }

    fn enter(
        &self,
        vcpu: &mut FakeVcpuHw,
        com1_out: &vcpu::com_out::ComOut,
    ) -> Result<Exit, Box<StopReason>> {
        let cpu = this_cpu();
        assert_eq!(vcpu.active_on, Some(cpu), "entered where not active");
        assert_eq!(
            CURRENT.with(Cell::get),
            Some(vcpu.id),
            "entered while not current"
        );
        assert_eq!(vcpu.switched_on, Some(cpu), "entered without its state");
        {
            let mut seen = self.entered_on.lock().unwrap();
            let cpus = seen.entry(vcpu.id).or_default();
            if cpus.last() != Some(&cpu) {
                cpus.push(cpu);
            }
        }
        let now = self.clock.fetch_add(TICKS_PER_EXIT, Ordering::SeqCst) + TICKS_PER_EXIT;
        if self.kicks[cpu].swap(false, Ordering::SeqCst) {
            return Ok(Exit::ExternalInterrupt);
        }
        if now >= vcpu.slice_end {
            return Ok(Exit::SliceEnd);
        }
        vcpu.step += 1;
        if let Program::PrintQueued { text, mode_at } = vcpu.program {
            let v = &mut vcpu.vcpu;
            if vcpu.wrote == mode_at && vcpu.phase == 0 {
                vcpu.phase = 1;
                v.gprs[0] = 2;
                return Ok(Exit::Io(IoAccess::port(0x3F9, 1, IoDirection::Out)));
            }
            while let Some(&b) = text.as_bytes().get(vcpu.wrote) {
                vcpu.wrote += 1;
                if vcpu.wrote % 2 == 1 && com1_out.push(b) {
                    if vcpu.wrote == mode_at {
                        break;
                    }
                    continue;
                }
                v.gprs[0] = u64::from(b);
                return Ok(Exit::Io(IoAccess::port(0x3F8, 1, IoDirection::Out)));
            }
            if vcpu.wrote == mode_at && vcpu.phase == 0 {
                vcpu.phase = 1;
                v.gprs[0] = 2;
                return Ok(Exit::Io(IoAccess::port(0x3F9, 1, IoDirection::Out)));
            }
            v.gprs[0] = hypercall::EXIT;
            v.gprs[3] = 0;
            return Ok(Exit::Hypercall);
        }
        let v = &mut vcpu.vcpu;
        Ok(match vcpu.program {
            Program::Spin { exits, code } => {
                if vcpu.step <= exits {
                    v.gprs[0] = 0;
                    Exit::Cpuid
                } else {
                    v.gprs[0] = hypercall::EXIT;
                    v.gprs[3] = u64::from(code);
                    Exit::Hypercall
                }
            }
            Program::Idle | Program::PrintQueued { .. } => Exit::Hlt,
            Program::Forever => {
                v.gprs[0] = 0;
                Exit::Cpuid
            }
            Program::Smp => {
                let icr = |v: &mut FakeVcpu, low: u64, dest: u64| {
                    v.gprs[0] = low;
                    v.gprs[3] = dest;
                    Exit::Io(IoAccess::port(0xF0, 4, IoDirection::Out))
                };
                let got = |v: &FakeVcpu, vector| {
                    v.injected.contains(&Event::ExternalInterrupt { vector })
                };
                let aps = vcpu.vcpus as usize - 1;
                match (vcpu.index, vcpu.phase) {
                    // INIT, then a start-up IPI with vector 8, to all
                    // but self.
                    (0, 0) => {
                        vcpu.phase = 1;
                        icr(v, 0x000C_4500, 0)
                    }
                    (0, 1) => {
                        vcpu.phase = 2;
                        icr(v, 0x000C_4608, 0)
                    }
                    (0, 2) if vcpu.arrived.load(Ordering::SeqCst) < aps => {
                        v.gprs[0] = 0;
                        Exit::Cpuid
                    }
                    (0, 2) => {
                        vcpu.phase = 3;
                        icr(v, 0x4040, 1)
                    }
                    (0, _) if got(v, 0x41) => {
                        v.gprs[0] = hypercall::EXIT;
                        v.gprs[3] = vcpu.arrived.load(Ordering::SeqCst) as u64;
                        Exit::Hypercall
                    }
                    (0, _) => Exit::Hlt,
                    (_, 0) => {
                        assert_eq!(v.rip, 0x8000, "an AP starts at its SIPI's page");
                        vcpu.phase = 1;
                        vcpu.arrived.fetch_add(1, Ordering::SeqCst);
                        Exit::Io(IoAccess::port(0xF1, 4, IoDirection::Out))
                    }
                    (1, 1) if got(v, 0x40) => {
                        vcpu.phase = 2;
                        icr(v, 0x4041, 0)
                    }
                    (1, 1) => Exit::Hlt,
                    _ => {
                        v.rflags = 0x2;
                        Exit::Hlt
                    }
                }
            }
            Program::Print { text } => {
                let out = Exit::Io(IoAccess::port(0x3F8, 1, IoDirection::Out));
                if let Some(&b) = text.as_bytes().get(vcpu.wrote) {
                    vcpu.wrote += 1;
                    v.gprs[0] = u64::from(b);
                    out
                } else {
                    v.gprs[0] = hypercall::EXIT;
                    v.gprs[3] = 0;
                    Exit::Hypercall
                }
            }
            Program::Shell => {
                let io = |port, dir| Exit::Io(IoAccess::port(port, 1, dir));
                match vcpu.phase {
                    0 => {
                        v.gprs[3] = SHELL_MARK;
                        // MCR.OUT2: COM1's interrupt reaches its line.
                        v.gprs[0] = 0x08;
                        vcpu.phase = 5;
                        io(0x3FC, IoDirection::Out)
                    }
                    5 => {
                        // IER: the received-data interrupt.
                        v.gprs[0] = 1;
                        vcpu.phase = 1;
                        io(0x3F9, IoDirection::Out)
                    }
                    1 => {
                        v.gprs[0] = u64::from(SHELL_PROMPT[vcpu.wrote]);
                        vcpu.wrote += 1;
                        if vcpu.wrote == SHELL_PROMPT.len() {
                            vcpu.phase = 2;
                        }
                        io(0x3F8, IoDirection::Out)
                    }
                    2 => {
                        vcpu.phase = 3;
                        io(0x3FD, IoDirection::In)
                    }
                    3 if v.gprs[0] & 1 != 0 => {
                        vcpu.phase = 4;
                        io(0x3F8, IoDirection::In)
                    }
                    3 => {
                        vcpu.phase = 2;
                        Exit::Hlt
                    }
                    4 if v.gprs[0] as u8 == b'q' => {
                        v.gprs[0] = hypercall::EXIT;
                        v.gprs[3] = 0;
                        Exit::Hypercall
                    }
                    _ => {
                        vcpu.phase = 2;
                        io(0x3F8, IoDirection::Out)
                    }
                }
            }
            Program::TimerSpin { units } => {
                if let Some(exit) = timer_setup(v, vcpu.step, units) {
                    exit
                } else if v
                    .injected
                    .contains(&Event::ExternalInterrupt { vector: 0x25 })
                {
                    v.gprs[0] = hypercall::EXIT;
                    v.gprs[3] = 0;
                    Exit::Hypercall
                } else {
                    v.gprs[0] = 0;
                    Exit::Cpuid
                }
            }
            Program::Out {
                exits,
                port,
                size,
                value,
            } => {
                if vcpu.step <= exits {
                    v.gprs[0] = 0;
                    Exit::Cpuid
                } else if vcpu.step == exits + 1 {
                    v.gprs[0] = u64::from(value);
                    Exit::Io(IoAccess::port(port, size, IoDirection::Out))
                } else {
                    v.gprs[0] = hypercall::EXIT;
                    v.gprs[3] = 9;
                    Exit::Hypercall
                }
            }
            Program::Holder { others } => {
                if self.stops.lock().unwrap().len() >= others {
                    v.gprs[0] = hypercall::EXIT;
                    v.gprs[3] = 0;
                    Exit::Hypercall
                } else {
                    v.gprs[0] = 0;
                    Exit::Cpuid
                }
            }
            Program::Timer { units } => {
                if let Some(exit) = timer_setup(v, vcpu.step, units) {
                    exit
                } else if v
                    .injected
                    .contains(&Event::ExternalInterrupt { vector: 0x25 })
                {
                    v.gprs[0] = hypercall::EXIT;
                    v.gprs[3] = 0;
                    Exit::Hypercall
                } else {
                    Exit::Hlt
                }
            }
        })
    }

    fn handle(&self, vm: &Vm<Self>, vcpu: &mut Vcpu<Self>, exit: &Exit) -> Outcome {
        if let Exit::Io(io) = exit {
            // The fake's stand-ins for the local APIC's registers
            // (`Program::Smp`).
            let now = self.now();
            let lapic = &mut vcpu.model.lapic;
            let k = vcpu.model.index;
            let (low, dest) = (vcpu.hw.vcpu.gprs[0] as u32, vcpu.hw.vcpu.gprs[3] as u32);
            match io.port {
                0xF0 => {
                    let _ = lapic.write(0x310, dest << 24, now);
                    if let devices::lapic::ApicEffect::Ipi(ipi) = lapic.write(0x300, low, now) {
                        vm.apics
                            .send(Some(k), Some(lapic), ipi.shorthand, &ipi.message);
                    }
                }
                0xF1 => {
                    let _ = lapic.write(0xF0, 0x1FF, now);
                    vm.apics.publish(k, lapic);
                }
                _ => {}
            }
        }
        let hw = &mut vcpu.hw;
        hw.platform.now = self.now();
        handle_exit(
            exit,
            &mut hw.vcpu,
            &mut vcpu.model,
            &mut vm.devices(),
            &mut hw.platform,
        )
    }

    fn deliver_interrupt(
        &self,
        vm: &Vm<Self>,
        vcpu: &mut Vcpu<Self>,
        now: u64,
    ) -> Result<(), StopReason> {
        let lines = &self.lines;
        let mut devices = vm.devices();
        let index = vcpu.model.index;
        let delivered = vcpu::vm::deliver_interrupt(
            &mut vcpu.hw.vcpu,
            index,
            &mut vcpu.model.lapic,
            &mut devices,
            now,
            &mut |l| lines.lock().unwrap().push(l.to_string()),
        )
        .map(|_| ())
        .map_err(|e| StopReason::Backend(e.to_string()));
        vcpu.model.attention_at = vcpu::vm::attention_at(index, &vcpu.model.lapic, &devices);
        delivered
    }

    fn rip(&self, vcpu: &FakeVcpuHw) -> u64 {
        vcpu.vcpu.rip
    }

    fn guest_line(&self, name: &str, line: &str) {
        self.lines.lock().unwrap().push(format!("[{name}] {line}"));
    }

    fn stopped(&self, index: usize, name: &str, reason: &StopReason) {
        self.events.lock().unwrap().push(format!("stop g{index}"));
        self.stops
            .lock()
            .unwrap()
            .push((name.to_string(), reason.to_string()));
    }

    fn console_add_guest(&self, index: usize, name: &str) {
        self.console_guests
            .lock()
            .unwrap()
            .push((index, name.to_string()));
    }

    fn guest_output(&self, index: usize, bytes: &[u8]) {
        assert!(!bytes.is_empty(), "empty output forwarded");
        self.outputs
            .lock()
            .unwrap()
            .entry(index)
            .or_default()
            .extend_from_slice(bytes);
        self.events.lock().unwrap().push(format!("out g{index}"));
    }

    fn console_hold(&self, _index: usize, _held: bool) {}

    fn console_write(&self, text: &str) {
        assert!(text.ends_with('\n'), "whole lines: {text:?}");
        self.console_text.lock().unwrap().push_str(text);
    }

    fn console_prompt(&self, prompt: &str) {
        self.prompts.lock().unwrap().push(prompt.to_string());
    }

    fn console_input(&self, out: &mut dyn FnMut(crate::ConsoleInput<'_>)) {
        let typed: Vec<Typed> = self.typed.lock().unwrap().drain(..).collect();
        for t in &typed {
            out(match t {
                Typed::Guest(i, bytes) => crate::ConsoleInput::Guest(*i, bytes),
                Typed::Monitor(bytes) => crate::ConsoleInput::Monitor(bytes),
            });
        }
    }

    fn console_pump(&self) -> Option<u64> {
        None
    }

    fn console_history(&self, _index: usize) -> Option<(Vec<u8>, u64)> {
        None
    }

    fn registers(&self, vcpu: &mut FakeVcpuHw) -> console::RegisterSnapshot {
        assert_eq!(vcpu.active_on, Some(this_cpu()), "read where not active");
        assert_eq!(
            CURRENT.with(Cell::get),
            Some(vcpu.id),
            "read while not current"
        );
        console::RegisterSnapshot {
            gprs: vcpu.vcpu.gprs,
            rip: vcpu.vcpu.rip,
            rflags: vcpu.vcpu.rflags,
            ..Default::default()
        }
    }

    fn read_memory(
        &self,
        vm: &FakeVmHw,
        gpa: u64,
        buf: &mut [u8],
    ) -> Result<(), console::MemError> {
        let start = usize::try_from(gpa).unwrap_or(usize::MAX);
        match vm.ram.get(start..start.saturating_add(buf.len())) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(console::MemError::OutOfRange {
                ram: addr::RamLayout::new(FAKE_RAM as u64).unwrap_or_default(),
            }),
        }
    }

    fn host_stats(&self) -> console::HostStats {
        console::HostStats::default()
    }

    fn set_log_level(&self, level: console::LogLevel) {
        self.log_levels.lock().unwrap().push(level);
    }
}

fn config(index: usize, cpus: Option<Vec<u32>>) -> GuestConfig {
    config_with(index, cpus, 1)
}

fn config_with(index: usize, cpus: Option<Vec<u32>>, vcpus: u32) -> GuestConfig {
    let mut text = format!(
        "[[guest]]\nname = \"g{index}\"\nkernel = \"k\"\nmemory = \"1M\"\nvcpus = {vcpus}\n"
    );
    if let Some(cpus) = &cpus {
        text.push_str(&format!("cpus = {cpus:?}\n"));
    }
    let outcome = config::parse_bytes("hypervisor.toml", text.as_bytes());
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    outcome.config.guests.into_iter().next().unwrap()
}

/// Runs `programs` on `cpus` threads until every guest has stopped; each
/// guest may be created `creations` times.
fn run_on(
    cpus: usize,
    programs: Vec<Program>,
    affinity: Vec<Option<Vec<u32>>>,
    on_stop: GuestStopAction,
    creations: usize,
    slice: u64,
) -> FakeBackend {
    let configs = affinity
        .into_iter()
        .enumerate()
        .map(|(i, a)| config(i, a))
        .collect();
    run_configs(cpus, programs, configs, on_stop, creations, slice)
}

fn run_configs(
    cpus: usize,
    programs: Vec<Program>,
    configs: Vec<GuestConfig>,
    on_stop: GuestStopAction,
    creations: usize,
    slice: u64,
) -> FakeBackend {
    let backend = FakeBackend::new(cpus, programs, creations);
    CPU.with(|c| c.set(0));
    let run = GuestRun::new(backend, configs, (0..cpus).collect(), slice, on_stop, cpus)
        .expect("the run starts");
    run.enqueue_all();
    std::thread::scope(|scope| {
        for cpu in 1..cpus {
            let run = &run;
            scope.spawn(move || {
                CPU.with(|c| c.set(cpu));
                run.cpu_loop(cpu);
                run.leave();
            });
        }
        run.cpu_loop(0);
    });
    assert_eq!(run.left(), cpus - 1);
    assert!(run.finished());
    let GuestRun { backend, .. } = run;
    assert_eq!(
        backend.created.load(Ordering::SeqCst),
        backend.destroyed.load(Ordering::SeqCst),
        "every guest created was destroyed"
    );
    assert_eq!(backend.live.load(Ordering::SeqCst), 0);
    backend
}

fn spin(exits: u64, code: u32) -> Program {
    Program::Spin { exits, code }
}

/// A guest with `vcpus` vCPUs running `Program::Smp` beside a spinning
/// guest, on `cpus` CPUs: the APs start by INIT and a start-up IPI, an
/// IPI goes from vCPU 0 to vCPU 1 and back, the APs park, and the guest
/// exits with the number of APs that arrived.
fn smp_guest_on(cpus: usize, vcpus: u32) {
    let configs = vec![config_with(0, None, vcpus), config_with(1, None, 1)];
    let b = run_configs(
        cpus,
        vec![Program::Smp, spin(3000, 7)],
        configs,
        GuestStopAction::Stop,
        1,
        400,
    );
    let stops = b.stops();
    assert_eq!(
        stops,
        [
            ("g0".to_string(), format!("exited with code {}", vcpus - 1)),
            ("g1".to_string(), "exited with code 7".to_string()),
        ]
    );
    // Every vCPU ran (ids 0..vcpus are g0's).
    let entered = b.entered_on.lock().unwrap();
    for id in 0..vcpus as usize {
        assert!(
            entered.contains_key(&id),
            "vCPU {id} never ran: {entered:?}"
        );
    }
}

#[test]
fn a_guest_starts_its_vcpus_by_init_and_sipi_and_they_exchange_ipis_on_one_cpu() {
    smp_guest_on(1, 2);
}

#[test]
fn four_vcpus_of_one_guest_run_on_two_cpus_and_park_when_done() {
    for _ in 0..20 {
        smp_guest_on(2, 4);
    }
}

#[test]
fn eight_vcpus_on_four_cpus_hand_over_under_contention() {
    for _ in 0..10 {
        smp_guest_on(4, 8);
    }
}

#[test]
fn a_guest_whose_boot_vcpu_halts_with_its_aps_never_started_is_stopped() {
    // The AP waits for a start-up IPI nobody sends, and the boot vCPU
    // halts with nothing to wake it: the guest as a whole can never run
    // again.
    let configs = vec![config_with(0, None, 2)];
    let b = run_configs(
        1,
        vec![Program::Idle],
        configs,
        GuestStopAction::Stop,
        1,
        400,
    );
    let stops = b.stops();
    assert_eq!(stops.len(), 1);
    assert!(
        stops[0].1.starts_with("halted forever (HLT at RIP"),
        "{stops:?}"
    );
}

#[test]
fn guests_on_one_cpu_run_to_their_exit_codes() {
    let programs = vec![spin(200, 1), spin(300, 2), spin(100, 3)];
    let b = run_on(1, programs, vec![None; 3], GuestStopAction::Stop, 1, 1000);
    assert_eq!(
        b.stops(),
        [
            ("g0".into(), "exited with code 1".into()),
            ("g1".into(), "exited with code 2".into()),
            ("g2".into(), "exited with code 3".into()),
        ]
    );
}

#[test]
fn vcpus_move_between_cpus_by_the_hand_over_rules() {
    // g0 is pinned to cpu0 and runs until the others have stopped, so
    // cpu0 never idles and never steals. g1..g4 are placed 2 on cpu0, 2 on
    // cpu1; `sched` rotates a vCPU whose turn ends on the busier CPU to
    // the other, and with cpu0 never taking it back, the other CPU must
    // take it over: vCPUs move whatever the threads' timing, and the fake
    // fails the test on any hand-over step out of order.
    // Long enough for many turns each: `sched` serves the longest wait
    // first, so a vCPU queued behind the holder may be pulled to cpu1 at
    // once and move only later.
    let mut programs = vec![Program::Holder { others: 4 }];
    programs.extend((1..5).map(|k| spin(20_000 + 1000 * k, k as u32)));
    let mut affinity = vec![Some(vec![0])];
    affinity.extend([None, None, None, None]);
    let b = run_on(2, programs, affinity, GuestStopAction::Stop, 1, 500);
    let stops = b.stops();
    assert_eq!(stops.len(), 5);
    for (k, (name, reason)) in stops.iter().enumerate() {
        assert_eq!(name, &format!("g{k}"));
        assert_eq!(reason, &format!("exited with code {k}"));
    }
    let entered = b.entered_on.lock().unwrap();
    assert_eq!(entered[&0], [0], "the pinned guest stayed on cpu0");
    let moved = entered.values().filter(|cpus| cpus.len() > 1).count();
    assert!(moved >= 1, "a vCPU ran on both CPUs: {entered:?}");
    assert!(b.arrivals.load(Ordering::SeqCst) >= 1);
}

#[test]
fn four_cpus_with_pinned_and_free_guests_hand_over_under_contention() {
    let programs: Vec<Program> = (0..9).map(|k| spin(1500 + 37 * k, 10 + k as u32)).collect();
    let affinity = (0..9)
        .map(|k| match k % 3 {
            0 => Some(vec![0, 1]),
            1 => Some(vec![2, 3, 1]),
            _ => None,
        })
        .collect();
    let b = run_on(4, programs, affinity, GuestStopAction::Stop, 1, 300);
    let stops = b.stops();
    assert_eq!(stops.len(), 9);
    for (k, (_, reason)) in stops.iter().enumerate() {
        assert_eq!(reason, &format!("exited with code {}", 10 + k));
    }
    // Pinned guests never ran outside their CPUs.
    let entered = b.entered_on.lock().unwrap();
    for k in (0..9).step_by(3) {
        assert!(
            entered[&k].iter().all(|c| [0, 1].contains(c)),
            "{:?}",
            entered[&k]
        );
    }
}

#[test]
fn a_halted_guest_with_nothing_to_wake_it_is_stopped_once_the_rest_are_done() {
    let programs = vec![spin(300, 0), Program::Idle, spin(400, 0)];
    let b = run_on(2, programs, vec![None; 3], GuestStopAction::Stop, 1, 1000);
    let stops = b.stops();
    assert!(
        stops[1].1.starts_with("halted forever (HLT at RIP "),
        "{stops:?}"
    );
    assert!(
        stops[1].1.ends_with("no device can interrupt it)"),
        "{stops:?}"
    );
}

#[test]
fn a_halted_guest_is_woken_by_its_timer_while_others_run() {
    let programs = vec![Program::Timer { units: 20 }, spin(3000, 7)];
    let b = run_on(1, programs, vec![None; 2], GuestStopAction::Stop, 1, 1000);
    assert_eq!(
        b.stops(),
        [
            ("g0".into(), "exited with code 0".into()),
            ("g1".into(), "exited with code 7".into())
        ]
    );
}

#[test]
fn a_timer_wakes_a_guest_alone_on_an_idle_cpu() {
    let programs = vec![Program::Timer { units: 50 }];
    let b = run_on(2, programs, vec![None], GuestStopAction::Stop, 1, 1000);
    assert_eq!(b.stops(), [("g0".into(), "exited with code 0".into())]);
}

#[test]
fn restart_starts_a_stopped_guest_again_until_it_cannot_be_created() {
    let programs = vec![spin(50, 4), spin(400, 5)];
    let b = run_on(
        2,
        programs,
        vec![None; 2],
        GuestStopAction::Restart,
        3,
        1000,
    );
    // Three creations each: every exit but the last restarts the guest.
    assert_eq!(b.created.load(Ordering::SeqCst), 6);
    let stops = b.stops();
    assert_eq!(stops.len(), 6);
    assert!(stops
        .iter()
        .all(|(_, r)| r.starts_with("exited with code ")));
}

#[test]
fn a_guest_pinned_to_a_cpu_that_runs_no_guests_is_stopped_and_the_rest_run() {
    let programs = vec![spin(100, 1), spin(100, 2)];
    let b = run_on(
        2,
        programs,
        vec![Some(vec![7]), None],
        GuestStopAction::Stop,
        1,
        1000,
    );
    assert_eq!(
        b.stops(),
        [
            (
                "g0".into(),
                "cannot be scheduled: its cpus list names cpu7, which does not run guests (these do: cpu0, cpu1)".into()
            ),
            ("g1".into(), "exited with code 2".into()),
        ]
    );
}

#[test]
fn a_running_guests_own_timer_shortens_its_slice() {
    // The slice is long; the guest's timer (10 * 1024 ticks) is due well
    // before its end, so the slice timer is set for the device deadline.
    let slice = 1_000_000;
    let b = run_on(
        1,
        vec![Program::TimerSpin { units: 10 }],
        vec![None],
        GuestStopAction::Stop,
        1,
        slice,
    );
    assert_eq!(b.stops(), [("g0".into(), "exited with code 0".into())]);
    let timers = b.timers.lock().unwrap();
    assert!(
        timers.iter().any(|&t| t <= 10 * 1024),
        "the slice timer followed the device deadline: {timers:?}"
    );
}

#[test]
fn a_guest_that_resets_itself_is_restarted_and_one_that_powers_off_is_not() {
    let reset = Program::Out {
        exits: 20,
        port: 0xCF9,
        size: 1,
        value: 0x06,
    };
    let poweroff = Program::Out {
        exits: 30,
        port: 0x604,
        size: 2,
        value: (5 << 10) | (1 << 13),
    };
    let b = run_on(
        1,
        vec![reset, poweroff],
        vec![None; 2],
        GuestStopAction::Restart,
        3,
        1000,
    );
    let stops = b.stops();
    // The resetting guest ends three times (created three times, the last
    // creation refused by the fake backend), the other once.
    let resets = stops.iter().filter(|(g, _)| g == "g0").count();
    let offs: Vec<_> = stops.iter().filter(|(g, _)| g == "g1").collect();
    assert_eq!(resets, 3, "{stops:?}");
    assert!(stops
        .iter()
        .filter(|(g, _)| g == "g0")
        .all(|(_, r)| r == "reset (the guest rebooted)"));
    assert_eq!(offs, [&("g1".to_string(), "powered off".to_string())]);
    // Nothing past the write ran.
    assert!(!stops.iter().any(|(_, r)| r.contains("code 9")));
}

// ---- the console ----

/// How long a console test waits for the run to do what it was asked: far
/// longer than it takes, so only a broken run reaches it.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits until `done` holds; fails the test with `what` if it never does.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Types `line` at the monitor and returns its answer: what it wrote
/// until it drew the prompt again.
fn command(b: &FakeBackend, line: &str) -> String {
    let text_before = b.console_text.lock().unwrap().len();
    let prompts_before = b.prompts.lock().unwrap().len();
    b.type_in(Typed::Monitor(format!("{line}\r").into_bytes()));
    wait_for(&format!("the answer to {line:?}"), || {
        b.prompts.lock().unwrap().len() > prompts_before
    });
    let text = b.console_text.lock().unwrap()[text_before..].to_string();
    assert!(
        text.starts_with(&format!("(ferrovisor) {line}\n")),
        "{text:?}"
    );
    text
}

/// Runs `programs` on `cpus` threads while `script` drives the console
/// from another thread, until the run ends; each guest may be created
/// `creations` times. `end_when_all_stopped: false` keeps the run up
/// until the monitor's `poweroff`.
fn interactive(
    cpus: usize,
    programs: Vec<Program>,
    on_stop: GuestStopAction,
    creations: usize,
    end_when_all_stopped: bool,
    script: impl FnOnce(&GuestRun<FakeBackend>) + Send,
) -> (FakeBackend, bool) {
    let configs = (0..programs.len()).map(|i| config(i, None)).collect();
    let backend = FakeBackend::new(cpus, programs, creations);
    CPU.with(|c| c.set(0));
    let run = GuestRun::new(backend, configs, (0..cpus).collect(), 1000, on_stop, cpus)
        .expect("the run starts");
    run.set_end_when_all_stopped(end_when_all_stopped);
    run.enqueue_all();
    std::thread::scope(|scope| {
        for cpu in 1..cpus {
            let run = &run;
            scope.spawn(move || {
                CPU.with(|c| c.set(cpu));
                run.cpu_loop(cpu);
                run.leave();
            });
        }
        let driver = &run;
        // Not a CPU of the run: it only types and looks.
        scope.spawn(move || script(driver));
        run.cpu_loop(0);
    });
    assert!(run.finished());
    let poweroff = run.poweroff_requested();
    let GuestRun { backend, .. } = run;
    assert_eq!(
        backend.created.load(Ordering::SeqCst),
        backend.destroyed.load(Ordering::SeqCst),
        "every guest created was destroyed"
    );
    (backend, poweroff)
}

/// Guest `i`'s scheduler figures, if it is scheduled.
fn sched_stats(run: &GuestRun<FakeBackend>, i: usize) -> Option<sched::VcpuStats> {
    run.queue.lock().stats(vcpu_id(i))
}

#[test]
fn com1_output_reaches_the_console_raw_and_before_the_stop() {
    let programs = vec![
        Program::Print {
            text: "hello\r\n$ \x1b[1m",
        },
        Program::Print { text: "bye" },
    ];
    let b = run_on(2, programs, vec![None; 2], GuestStopAction::Stop, 1, 1000);
    assert_eq!(
        *b.console_guests.lock().unwrap(),
        [(0, "g0".to_string()), (1, "g1".to_string())],
        "every configured guest is a console source, in order"
    );
    assert_eq!(b.output(0), b"hello\r\n$ \x1b[1m");
    assert_eq!(b.output(1), b"bye");
    assert!(
        b.lines.lock().unwrap().iter().all(|l| !l.starts_with("[g")),
        "COM1 no longer makes lines: {:?}",
        b.lines.lock().unwrap()
    );
    let events = b.events.lock().unwrap();
    for g in ["g0", "g1"] {
        let last_out = events.iter().rposition(|e| *e == format!("out {g}"));
        let stop = events.iter().position(|e| *e == format!("stop {g}"));
        assert!(last_out < stop, "{g}'s output comes first: {events:?}");
    }
}

/// Bytes a backend queues on the exit path come out in the guest's
/// order with those that went through the device bus, before its stop,
/// also when the guest changes the UART's mode on the way (the queue is
/// drained before that write reaches the UART; that it then takes no
/// more is the devices' `transmits_plainly` tests' and `send_plain`'s).
#[test]
fn queued_com1_bytes_keep_their_place_and_stop_when_the_uart_mode_changes() {
    let text = "queued and written bytes, in the guest's order\r\n";
    let programs = vec![
        Program::PrintQueued { text, mode_at: 21 },
        Program::PrintQueued {
            text,
            mode_at: usize::MAX,
        },
    ];
    let b = run_on(2, programs, vec![None; 2], GuestStopAction::Stop, 1, 1000);
    assert_eq!(b.output(0), text.as_bytes());
    assert_eq!(b.output(1), text.as_bytes());
    let events = b.events.lock().unwrap();
    for g in ["g0", "g1"] {
        let last_out = events.iter().rposition(|e| *e == format!("out {g}"));
        let stop = events.iter().position(|e| *e == format!("stop {g}"));
        assert!(last_out < stop, "{g}'s output comes first: {events:?}");
    }
}

#[test]
fn console_input_reaches_a_guest_reading_com1_and_wakes_it() {
    let (b, _) = interactive(
        2,
        vec![Program::Shell],
        GuestStopAction::Stop,
        1,
        true,
        |run| {
            let b = run.backend();
            wait_for("the prompt", || b.output(0).ends_with(SHELL_PROMPT));
            // Halted with nothing to read, it waits for its console.
            wait_for("the shell to halt", || {
                sched_stats(run, 0).is_some_and(|s| s.state == sched::VcpuState::Blocked)
            });
            b.type_in(Typed::Guest(0, b"ls -l\r".to_vec()));
            wait_for("the echo", || b.output(0).ends_with(b"ls -l\r"));
            b.type_in(Typed::Guest(0, b"q".to_vec()));
        },
    );
    assert_eq!(b.stops(), [("g0".into(), "exited with code 0".into())]);
    let mut expected = SHELL_PROMPT.to_vec();
    expected.extend_from_slice(b"ls -l\r");
    assert_eq!(b.output(0), expected);
}

#[test]
fn monitor_pause_holds_a_guest_while_the_other_runs_then_resume_and_poweroff() {
    let (b, poweroff) = interactive(
        1,
        vec![Program::Forever, Program::Forever],
        GuestStopAction::Stop,
        1,
        true,
        |run| {
            let b = run.backend();
            let list = command(b, "list");
            assert!(list.contains("NAME"), "{list}");
            assert_eq!(list.matches("running").count(), 2, "{list}");
            assert_eq!(
                command(b, "pause g0"),
                "(ferrovisor) pause g0\ng0: paused\n"
            );
            let held = sched_stats(run, 0).unwrap();
            assert!(held.paused);
            let other = sched_stats(run, 1).unwrap().slices;
            wait_for("g1 to run on", || {
                sched_stats(run, 1).unwrap().slices > other + 20
            });
            let now = sched_stats(run, 0).unwrap();
            assert_eq!(now.state, sched::VcpuState::Paused);
            assert_eq!(now.slices, held.slices, "a paused guest gets no slices");
            let list = command(b, "list");
            assert!(list.contains("paused"), "{list}");
            assert!(command(b, "pause g0").contains("pause g0: it is already paused"));
            assert_eq!(
                command(b, "resume g0"),
                "(ferrovisor) resume g0\ng0: resumed\n"
            );
            wait_for("g0 to run again", || {
                sched_stats(run, 0).unwrap().slices > held.slices
            });
            assert!(command(b, "resume g0").contains("resume g0: it is not paused"));
            assert!(command(b, "loglevel debug").contains("log level is now debug"));
            assert!(command(b, "exits g0").contains("CPUID"));
            assert!(command(b, "poweroff").ends_with("powering off\n"));
        },
    );
    assert!(poweroff);
    assert_eq!(
        b.stops(),
        [
            ("g0".into(), "stopped from the monitor".into()),
            ("g1".into(), "stopped from the monitor".into()),
        ]
    );
    assert_eq!(*b.log_levels.lock().unwrap(), [console::LogLevel::Debug]);
}

#[test]
fn monitor_stop_is_not_undone_by_the_policy_and_restart_creates_the_guest_again() {
    let (b, _) = interactive(
        2,
        vec![Program::Forever, Program::Forever],
        GuestStopAction::Restart,
        3,
        true,
        |run| {
            let b = run.backend();
            assert_eq!(command(b, "stop g0"), "(ferrovisor) stop g0\ng0: stopped\n");
            assert_eq!(b.created.load(Ordering::SeqCst), 2, "not restarted");
            let list = command(b, "list");
            assert!(
                list.contains("stopped") && list.contains("running"),
                "{list}"
            );
            assert!(command(b, "stop g0").contains("stop g0: it is already stopped"));
            assert!(command(b, "mem g0 0x100").contains("the guest has no memory now"));
            assert_eq!(
                command(b, "restart g0"),
                "(ferrovisor) restart g0\ng0: restarting\n"
            );
            assert_eq!(b.created.load(Ordering::SeqCst), 3);
            wait_for("the new g0 to run", || {
                sched_stats(run, 0).is_some_and(|s| s.slices > 0)
            });
            let info = command(b, "info g0");
            assert!(info.contains("g0: running"), "{info}");
            assert!(info.contains("1 restarts"), "{info}");
            assert!(
                info.contains("last stop: stopped from the monitor"),
                "{info}"
            );
            // A running guest is stopped, then created again.
            command(b, "restart g1");
            assert_eq!(b.created.load(Ordering::SeqCst), 4);
            assert_eq!(b.stops().len(), 2);
            command(b, "poweroff");
        },
    );
    assert_eq!(b.stops().len(), 4);
    assert!(b
        .stops()
        .iter()
        .all(|(_, r)| r == "stopped from the monitor"));
}

#[test]
fn monitor_regs_and_mem_read_a_guest_that_ran_on_another_cpu() {
    let (b, _) = interactive(
        2,
        vec![Program::Shell],
        GuestStopAction::Stop,
        1,
        true,
        |run| {
            let b = run.backend();
            wait_for("the shell to halt", || {
                sched_stats(run, 0).is_some_and(|s| s.state == sched::VcpuState::Blocked)
            });
            let regs = command(b, "regs g0");
            assert!(regs.contains(&format!("rbx {SHELL_MARK:016x}")), "{regs}");
            assert!(command(b, "regs g0 1").contains("regs g0: no vcpu 1"));
            let mem = command(b, &format!("mem g0 {NAME_AT:#x} 16"));
            assert!(mem.contains("67 30 00"), "{mem}");
            assert!(mem.contains("|g0.............."), "{mem}");
            let past = command(b, "mem g0 0xfff8 16");
            assert!(
                past.contains(
                    "mem g0: 0xfff8..=0x10007 is past the guest's RAM, which ends at 0x10000"
                ),
                "{past}"
            );
            // The shell still answers after being read from the other CPU.
            b.type_in(Typed::Guest(0, b"q".to_vec()));
        },
    );
    assert_eq!(b.stops(), [("g0".into(), "exited with code 0".into())]);
}

#[test]
fn a_run_that_stays_up_waits_with_no_guests_until_poweroff() {
    let (b, poweroff) = interactive(
        2,
        vec![spin(100, 1)],
        GuestStopAction::Stop,
        2,
        false,
        |run| {
            let b = run.backend();
            wait_for("g0 to exit", || b.stops().len() == 1);
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!run.finished(), "it stays up");
            assert!(command(b, "list").contains("stopped"));
            command(b, "restart g0");
            wait_for("g0 to exit again", || b.stops().len() == 2);
            assert!(!run.finished());
            assert!(command(b, "restart g0").contains("could not be created again"));
            command(b, "poweroff");
        },
    );
    assert!(poweroff);
    assert_eq!(
        b.stops(),
        [
            ("g0".into(), "exited with code 1".into()),
            ("g0".into(), "exited with code 1".into())
        ]
    );
}
