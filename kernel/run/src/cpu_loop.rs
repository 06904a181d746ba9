//! The loop every CPU runs: pick, run a slice, report, halt when there is
//! nothing to do, until every guest has stopped (or, when the run stays
//! up, until the monitor powers off). The run's first CPU also serves the
//! console on every pass.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use sched::{Decision, StopCause, VcpuId, VcpuState};

use super::console_service::ConsoleService;
use super::handover::ThisCpu;
use super::{vcpu_id, Backend, ConfiguredGuest, GuestRun};
use vcpu::exit::{Exit, Outcome};
use vcpu::stop::StopReason;

/// How a slice ended.
pub(super) enum SliceEnd {
    /// Its time was up (preemption timer or TSC).
    TimeUp,
    /// HLT with interrupts on, until a device's timer is due at this TSC
    /// value (or until woken, with none).
    Halted { until: Option<u64> },
    /// The guest stopped.
    Stopped(StopReason),
}

impl<B: Backend> GuestRun<B> {
    /// Puts every guest on a run queue (the CPU calling it is the first of
    /// the run's CPUs): before the other CPUs join.
    pub fn enqueue_all(&self) {
        let Some(first) = self.cpus.numbers.first().copied() else {
            return;
        };
        let mut local = ThisCpu::new(sched::CpuId(0), first);
        // Every guest that can be placed is queued before any that cannot
        // is retired: a retirement that leaves the queues empty ends the
        // run.
        let mut refused = Vec::new();
        for i in 0..self.slots.len() {
            let Some(slot) = self.lock_slot(&mut local, i) else {
                continue;
            };
            if slot.vm.is_none() {
                continue;
            }
            if let Err(reason) = self.enqueue(&mut self.queue.lock(), &slot, i) {
                refused.push((i, reason));
            }
        }
        for (i, reason) in refused {
            if let Some(mut slot) = self.lock_slot(&mut local, i) {
                self.retire(&mut local, &mut slot, i, reason, false);
            }
        }
    }

    /// Puts slot `i`'s guest on a run queue and kicks the CPU that gets
    /// it if that one is idle; `Err` when its `cpus` name a CPU that runs
    /// no guests.
    pub(super) fn enqueue(
        &self,
        queue: &mut sched::Scheduler,
        slot: &ConfiguredGuest<B>,
        i: usize,
    ) -> Result<(), StopReason> {
        let affinity: Option<Vec<sched::CpuId>> = match &slot.config.cpus {
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
    pub(super) fn kick(&self, target: Option<sched::CpuId>) {
        let Some(number) = target.and_then(|t| self.cpus.number(t)) else {
            return;
        };
        if number != self.backend.this_cpu() {
            self.backend.kick(number);
        }
    }

    /// Kicks every CPU of the run but this one (to join, or to leave).
    pub fn kick_others(&self) {
        let me = self.backend.this_cpu();
        for &c in &self.cpus.numbers {
            if c != me {
                self.backend.kick(c);
            }
        }
    }

    /// The loop every CPU of the run runs: pick, run a slice, report,
    /// until the run ends. `index` is this CPU's number. The run's first
    /// CPU also serves the console (input, the monitor, output) on every
    /// pass, and idles no longer than the console asks.
    pub fn cpu_loop(&self, index: usize) {
        let Some(cpu) = self.cpus.sched_id(index) else {
            return;
        };
        self.backend.prepare_this_cpu();
        let mut local = ThisCpu::new(cpu, index);
        let mut console = (cpu.0 == 0).then(|| ConsoleService::new(self));
        loop {
            self.service(&mut local);
            let console_by = console
                .as_mut()
                .and_then(|c| self.serve_console(&mut local, c));
            if self.finished.load(Ordering::Acquire) {
                break;
            }
            let decision = self.queue.lock().pick(cpu, self.backend.now());
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
                    let until = match (until, console_by) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if let Some(f) = self.figures.get(cpu.0 as usize) {
                        f.idle_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    // A vCPU on this CPU sleeps until a device timer: the
                    // backend wakes the CPU then, or, where it cannot, the
                    // CPU looks again.
                    if !self.backend.idle(until) {
                        core::hint::spin_loop();
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
    fn nothing_can_run(&self, local: &mut ThisCpu) -> bool {
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
            let mut stopped = false;
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
                // A guest whose console input would wake it (a shell
                // reading its serial line) waits for that.
                if slot
                    .vm
                    .as_mut()
                    .is_some_and(|vm| vm.devices.waits_for_console())
                {
                    continue;
                }
                let rip = slot.vm.as_ref().map_or(0, |vm| vm.vcpu.halt_rip);
                self.stop(
                    local,
                    &mut slot,
                    i,
                    StopReason::HaltedWithNoWakeSource { rip },
                );
                stopped = true;
            }
            if stopped {
                return true;
            }
        }
        // Guests asleep until a timer, or paused, are still there; with
        // none, the run ends unless it stays up.
        if counts.stopped == 0
            && counts.blocked == 0
            && counts.paused == 0
            && !self.stay_up.load(Ordering::Acquire)
        {
            self.finish();
            return true;
        }
        false
    }

    /// Every guest has stopped: the run ends, unless it stays up.
    pub(super) fn all_stopped(&self) {
        if !self.stay_up.load(Ordering::Acquire) {
            self.finish();
        }
    }

    /// The run ends: all CPUs leave the loop.
    pub(super) fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.kick_others();
        }
    }

    /// Whether every guest has stopped.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Runs `vcpu` for one slice of `slice` ticks on this CPU and reports
    /// how it ended.
    fn run_vcpu(&self, local: &mut ThisCpu, vcpu: VcpuId, slice: u64, migrated: bool) {
        let i = vcpu.0 as usize;
        let Some(mut slot) = self.lock_slot(local, i) else {
            return;
        };
        let end = self.run_slice(local, &mut slot, i, slice, migrated);
        if let (SliceEnd::TimeUp, Some(vm)) = (&end, slot.vm.as_mut()) {
            // Cut off mid-line perhaps: its console waits for it.
            vm.vcpu.console_held = true;
            self.backend.console_hold(i, true);
        }
        let now = self.backend.now();
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
            let tally = slot.vm.as_mut().map(|vm| &mut vm.vcpu.model.tally);
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

    /// Switches guest `i` in and runs it for `slice` ticks, until it
    /// halts, or until it stops. `migrated`: it last ran on another CPU.
    fn run_slice(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        i: usize,
        slice: u64,
        migrated: bool,
    ) -> SliceEnd {
        let backend = &self.backend;
        let switch_from = local
            .last_exit
            .filter(|(prev, _)| *prev != i)
            .map(|(_, at)| at);
        let Some(vm) = slot.vm.as_mut() else {
            return SliceEnd::Stopped(StopReason::NotSchedulable(String::from(
                "the scheduler picked a guest that no longer exists",
            )));
        };
        if core::mem::take(&mut vm.vcpu.console_held) {
            backend.console_hold(i, false);
        }
        if vm.vcpu.active_on != Some(local.index) {
            self.take_over(local, i, vm);
            if let Err(e) = backend.arrive(&vm.hw, &mut vm.vcpu.hw, local.index) {
                return SliceEnd::Stopped(StopReason::LaunchFailed(e));
            }
            vm.vcpu.active_on = Some(local.index);
            local.current = Some(i);
        }
        if local.owner != Some(i) {
            // The switched state in the CPU is another guest's: save it
            // there first (unless that guest's CPU took it meanwhile).
            while let Some(o) = local.owner {
                if let Some(mut other) = self.slots.get(o).and_then(|s| s.try_lock()) {
                    if let Some(other) = other.vm.as_mut() {
                        backend.save_switched(&mut other.vcpu);
                    }
                    local.owner = None;
                } else {
                    self.service(local);
                    core::hint::spin_loop();
                }
            }
            backend.load_switched(&mut vm.vcpu);
            local.owner = Some(i);
        }
        if local.current != Some(i) {
            if let Err(e) = backend.make_current(&mut vm.vcpu.hw) {
                return SliceEnd::Stopped(StopReason::LaunchFailed(e));
            }
            local.current = Some(i);
        }
        vm.vcpu.slices += 1;
        let slice_start = backend.now();
        let slice_end = slice_start.saturating_add(slice);
        // The slice's timer also ends the guest's run when one of its own
        // device timers is due, so the interrupt goes in on time even if
        // the guest does not exit by itself meanwhile.
        let mut timer_at = timer_deadline(slice_end, vm.next_deadline());
        if let Err(reason) = arm_timer(backend, &mut vm.vcpu.hw, timer_at, slice_start) {
            return SliceEnd::Stopped(reason);
        }
        // By scheduler index, the order of `cpus.numbers`.
        let figures = self.figures.get(local.cpu.0 as usize);
        if let (Some(from), Some(f)) = (switch_from, figures) {
            f.switched(migrated, slice_start.wrapping_sub(from));
        }
        let mut last = slice_start;
        let end = loop {
            // Timers due and interrupts raised since the last exit go in
            // before the entry (a few compares when nothing is pending).
            if vm.needs_attention(last) {
                if let Err(reason) = backend.deliver_interrupt(vm, last) {
                    break SliceEnd::Stopped(reason);
                }
                // Running the due timers re-armed the periodic ones (the
                // PIT, the APIC timer): the slice timer must end this run
                // at their next deadline, or their ticks wait for the
                // slice's end and are lost. One already due is the
                // interrupt window's to deliver, not the timer's.
                let wanted = timer_deadline(slice_end, vm.next_deadline().filter(|&d| d > last));
                if wanted != timer_at {
                    timer_at = wanted;
                    if let Err(reason) = arm_timer(backend, &mut vm.vcpu.hw, timer_at, last) {
                        break SliceEnd::Stopped(reason);
                    }
                }
            }
            let exit = backend.enter(&mut vm.vcpu.hw);
            // One clock read an exit: the guest is charged from one exit
            // to the next, its exit handling included.
            let now = backend.now();
            vm.vcpu.ticks += now.wrapping_sub(last);
            last = now;
            let exit = match exit {
                Ok(exit) => exit,
                Err(reason) => break SliceEnd::Stopped(*reason),
            };
            let outcome = backend.handle(vm, &exit);
            // Only a device access can arm or move a device timer, or
            // write to COM1.
            if matches!(
                exit,
                Exit::Io(_) | Exit::NestedPageFault { .. } | Exit::MsrWrite
            ) {
                vm.forward_output(i, backend);
                let wanted = timer_deadline(slice_end, vm.next_deadline());
                if wanted != timer_at {
                    timer_at = wanted;
                    if let Err(reason) = arm_timer(backend, &mut vm.vcpu.hw, timer_at, now) {
                        break SliceEnd::Stopped(reason);
                    }
                }
            }
            match outcome {
                Outcome::Resume => {}
                Outcome::HostInterrupt => {
                    // A kick: end it and do what it asks; a request never
                    // concerns the guest running here.
                    backend.end_host_interrupt();
                    self.service(local);
                }
                Outcome::Preempted if now < slice_end => {
                    // A device timer of the guest's is due: its interrupt
                    // goes in before the next entry; the slice goes on.
                    timer_at = timer_deadline(slice_end, vm.next_deadline().filter(|&d| d > now));
                    if let Err(reason) = arm_timer(backend, &mut vm.vcpu.hw, timer_at, now) {
                        break SliceEnd::Stopped(reason);
                    }
                }
                Outcome::Preempted => {
                    vm.vcpu.preemptions += 1;
                    break SliceEnd::TimeUp;
                }
                Outcome::Halted => {
                    // An interrupt already due wakes it at once.
                    if vm.needs_attention(now) {
                        continue;
                    }
                    // The HLT exit already moved RIP past the instruction:
                    // this is where the guest would resume.
                    vm.vcpu.halt_rip = backend.rip(&vm.vcpu.hw);
                    // A guest that idles has said what it had to say: a
                    // partial line (a shell's prompt) is shown now rather
                    // than when a line end comes.
                    vm.forward_output(i, backend);
                    let name = &vm.name;
                    vm.devices.flush(&mut |line| backend.guest_line(name, line));
                    break SliceEnd::Halted {
                        until: vm.next_deadline(),
                    };
                }
                Outcome::Stop(reason) => break SliceEnd::Stopped(*reason),
            }
            // The slice also ends by the clock: where VM entry restarts the
            // preemption timer from the value written at the slice's start
            // (exits that do not save its count, or emulators that do not),
            // a guest that exits more often than the timer runs out would
            // otherwise never be preempted.
            if now.wrapping_sub(slice_start) >= slice {
                vm.vcpu.preemptions += 1;
                break SliceEnd::TimeUp;
            }
        };
        if let Some(f) = figures {
            f.slice(last.wrapping_sub(slice_start));
        }
        end
    }
}

/// When the slice's timer should end the guest's run: at the slice's end,
/// or earlier at the guest's own next device deadline.
fn timer_deadline(slice_end: u64, device: Option<u64>) -> u64 {
    device.map_or(slice_end, |d| d.min(slice_end))
}

/// Sets `vcpu`'s slice timer to end its run at clock value `at`, counted
/// from `now` (at least one tick, so a past `at` ends the run at once).
#[inline]
fn arm_timer<B: Backend>(
    backend: &B,
    vcpu: &mut B::Vcpu,
    at: u64,
    now: u64,
) -> Result<(), StopReason> {
    backend
        .set_slice(vcpu, at.saturating_sub(now).max(1))
        .map_err(StopReason::Backend)
}
