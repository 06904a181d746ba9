//! The loop every CPU runs: pick, run a slice, report, halt when there is
//! nothing to do, until every guest has stopped (or, when the run stays
//! up, until the monitor powers off). The run's first CPU also serves the
//! console on every pass.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use sched::{Decision, StopCause, VcpuId, VcpuState};

use alloc::sync::Arc;

use vcpu::apic_bus::StartupEvent;

use super::console_service::ConsoleService;
use super::handover::ThisCpu;
use super::{vcpu_id, Backend, ConfiguredGuest, GuestRun, Vcpu, Vm};
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
    /// Another CPU is stopping the guest: the vCPU just leaves.
    Gone,
    /// It spins on a lock (a PAUSE-loop exit): the rest of its turn goes
    /// to others.
    Yielded,
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
                self.retire(&mut local, &mut slot, i, None, reason, false);
            }
        }
    }

    /// Puts guest `i`'s vCPUs on the run queues and kicks the CPUs that
    /// get them if idle; `Err` when its `cpus` name a CPU that runs no
    /// guests (none of its vCPUs is queued then).
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
        let first = self.first_vcpu.get(i).copied().unwrap_or(usize::MAX);
        let n = slot.config.vcpus.max(1) as usize;
        for k in 0..n {
            match queue.add(vcpu_id(first.saturating_add(k)), affinity.as_deref()) {
                Ok(placement) => self.kick(placement.kick),
                Err(e) => {
                    for j in 0..k {
                        queue.remove(vcpu_id(first.saturating_add(j)));
                    }
                    return Err(StopReason::NotSchedulable(alloc::format!("{e}")));
                }
            }
        }
        Ok(())
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
        if counts.runnable + counts.running > 0
            || self.stops_in_progress.load(Ordering::Acquire) > 0
        {
            return false;
        }
        if !blocked.is_empty() {
            let mut stopped = false;
            // A guest is stuck when every vCPU of it is: the ones that
            // wait for a start-up IPI wait for the others.
            let mut guests: Vec<usize> = blocked
                .iter()
                .filter_map(|&v| self.guest_of.get(v).copied())
                .collect();
            guests.sort_unstable();
            guests.dedup();
            for g in guests {
                let Some(mut slot) = self.lock_slot(local, g) else {
                    continue;
                };
                let Some(vm) = slot.vm.clone() else {
                    continue;
                };
                let stuck = {
                    let queue = self.queue.lock();
                    vm.vcpu_ids().all(|v| {
                        queue.stats_ref(vcpu_id(v)).map(|s| (s.state, s.deadline))
                            == Some((VcpuState::Blocked, None))
                    })
                };
                // A guest whose console input would wake it (a shell
                // reading its serial line) waits for that.
                if !stuck || vm.devices().waits_for_console() {
                    continue;
                }
                // Reported as the boot vCPU halted.
                let (rip, parked) = self
                    .lock_vcpu(local, vm.first_vcpu)
                    .and_then(|s| s.as_ref().map(|s| (s.vcpu.halt_rip, s.vcpu.parked)))
                    .unwrap_or((0, false));
                let reason = if parked {
                    StopReason::HaltedWithInterruptsOff {
                        rip: rip.saturating_sub(1),
                    }
                } else {
                    StopReason::HaltedWithNoWakeSource { rip }
                };
                let which = Arc::as_ptr(&vm);
                drop(vm);
                self.retire(local, &mut slot, g, Some(which), reason, true);
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
        let Some(mut slot) = self.lock_vcpu(local, i) else {
            return;
        };
        let end = match slot.as_mut() {
            Some(s) => self.run_slice(local, &s.vm, &mut s.vcpu, i, slice, migrated),
            // Its guest was stopped after the pick.
            None => SliceEnd::Gone,
        };
        if let (SliceEnd::TimeUp | SliceEnd::Yielded, Some(s)) = (&end, slot.as_mut()) {
            // Cut off mid-line: its console waits for it. After a whole
            // line there is nothing to hold, and telling the console would
            // cost the next switch its work.
            if s.vm.mid_line() {
                s.vcpu.console_held = true;
                self.backend.console_hold(s.vm.index, true);
            }
        }
        let now = self.backend.now();
        // A switch is measured from a slice that ended by time or HLT;
        // after a stop, the stop's report (console lines) would be counted
        // too.
        local.last_exit = match end {
            SliceEnd::Stopped(_) | SliceEnd::Gone => None,
            _ => Some((i, now)),
        };
        let cause = match &end {
            SliceEnd::TimeUp => StopCause::SliceEnd,
            SliceEnd::Yielded => StopCause::Yield,
            SliceEnd::Halted { until } => StopCause::Blocked { until: *until },
            SliceEnd::Stopped(_) | SliceEnd::Gone => StopCause::Stopped,
        };
        let stopped = {
            let tally = slot.as_mut().map(|s| &mut s.vcpu.model.tally);
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
            // The guest's stop takes its slot and then each vCPU's: this
            // one's is let go first (lock order).
            let Some(vm) = slot.as_ref().map(|s| Arc::as_ptr(&s.vm)) else {
                return;
            };
            drop(slot);
            if let Some(g) = self.guest_of.get(i).copied() {
                if let Some(mut guest) = self.lock_slot(local, g) {
                    self.retire(local, &mut guest, g, Some(vm), reason, true);
                }
            }
        }
    }

    /// Acts on what an exit or a delivery sent to other vCPUs of `vm`:
    /// each is woken if it sleeps, or its CPU kicked if it runs elsewhere,
    /// so that it takes the interrupt promptly.
    #[inline]
    fn notify(&self, vm: &Vm<B>, me: u32) {
        let mask = vcpu::apic_bus::others(vm.apics.take_notify(), me);
        if mask != 0 {
            self.wake_vcpus(vm, mask);
        }
    }

    #[inline(never)]
    fn wake_vcpus(&self, vm: &Vm<B>, mut mask: u64) {
        let me = self.backend.this_cpu();
        let mut kicks: [Option<sched::CpuId>; 8] = [None; 8];
        let mut n = 0;
        {
            let mut queue = self.queue.lock();
            while mask != 0 {
                let k = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let id = vcpu_id(vm.first_vcpu.saturating_add(k));
                let running_on = queue
                    .stats_ref(id)
                    .filter(|s| s.state == VcpuState::Running)
                    .map(|s| s.cpu);
                let target = match running_on {
                    // Remembered if it is about to block.
                    Some(cpu) => {
                        queue.wake(id);
                        Some(cpu)
                    }
                    None => queue.wake(id),
                };
                if let Some(t) = target {
                    if !kicks[..n].contains(&Some(t)) && n < kicks.len() {
                        kicks[n] = Some(t);
                        n += 1;
                    } else if n == kicks.len() {
                        // More CPUs than fit: kick them as they come.
                        drop(queue);
                        self.kick(Some(t));
                        queue = self.queue.lock();
                    }
                }
            }
        }
        for t in kicks.into_iter().take(n) {
            if let Some(number) = t.and_then(|t| self.cpus.number(t)) {
                if number != me {
                    self.backend.kick(number);
                }
            }
        }
    }

    /// Acts on the INIT and start-up IPIs the vCPU's local APIC latched
    /// (SDM Vol. 3A, 9.4.4): an INIT puts an application processor back to
    /// waiting for a start-up IPI with its APIC reset; a start-up IPI
    /// starts a waiting one in real mode at its vector's page, and is
    /// ignored by one that runs. The boot vCPU ignores both (an INIT
    /// would reset the whole guest on a PC; guests reset through the
    /// reset register instead). `Ok(true)` while it still waits.
    fn start_up(&self, vcpu: &mut Vcpu<B>) -> Result<bool, StopReason> {
        while let Some(event) = vcpu.model.lapic.take_startup() {
            match event {
                StartupEvent::Init if vcpu.index() != 0 => {
                    vcpu.model.lapic.reset();
                    vcpu.wait_for_sipi = true;
                    vcpu.parked = false;
                }
                StartupEvent::StartUp { vector } if vcpu.wait_for_sipi => {
                    self.backend
                        .start_up(&mut vcpu.hw, vector)
                        .map_err(StopReason::LaunchFailed)?;
                    vcpu.wait_for_sipi = false;
                    vcpu.model.attention_at = u64::MAX;
                }
                StartupEvent::Init | StartupEvent::StartUp { .. } => {}
            }
        }
        Ok(vcpu.wait_for_sipi)
    }

    /// Switches vCPU `i` (of `vm`) in and runs it for `slice` ticks, until
    /// it halts, or until it stops. `migrated`: it last ran on another
    /// CPU.
    fn run_slice(
        &self,
        local: &mut ThisCpu,
        vm: &Vm<B>,
        vcpu: &mut Vcpu<B>,
        i: usize,
        slice: u64,
        migrated: bool,
    ) -> SliceEnd {
        let backend = &self.backend;
        let switch_from = local
            .last_exit
            .filter(|(prev, _)| *prev != i)
            .map(|(_, at)| at);
        if vm.stopping.load(Ordering::Acquire) {
            return SliceEnd::Gone;
        }
        if core::mem::take(&mut vcpu.console_held) {
            backend.console_hold(vm.index, false);
        }
        if vcpu.active_on != Some(local.index) {
            self.take_over(local, i, vcpu);
            if let Err(e) = backend.arrive(&vm.hw, &mut vcpu.hw, local.index) {
                return SliceEnd::Stopped(StopReason::LaunchFailed(e));
            }
            vcpu.active_on = Some(local.index);
            local.current = Some(i);
        }
        if local.owner != Some(i) {
            // The switched state in the CPU is another vCPU's: save it
            // there first (unless that vCPU's CPU took it meanwhile).
            while let Some(o) = local.owner {
                if let Some(mut other) = self.vcpus.get(o).and_then(|s| s.try_lock()) {
                    if let Some(other) = other.as_mut() {
                        backend.save_switched(&mut other.vcpu);
                    }
                    local.owner = None;
                } else {
                    self.service(local);
                    core::hint::spin_loop();
                }
            }
            backend.load_switched(vcpu);
            local.owner = Some(i);
        }
        if local.current != Some(i) {
            if let Err(e) = backend.make_current(&mut vcpu.hw) {
                return SliceEnd::Stopped(StopReason::LaunchFailed(e));
            }
            local.current = Some(i);
        }
        let me = vcpu.index();
        if vcpu.wait_for_sipi || vcpu.parked {
            // An application processor runs only once started; a parked
            // one only for an NMI, an INIT or a start-up IPI.
            vm.apics.collect(me, &mut vcpu.model.lapic);
            if vcpu.parked && vcpu.model.lapic.nmi_pending() {
                vcpu.parked = false;
            }
            let was_parked = vcpu.parked;
            match self.start_up(vcpu) {
                Ok(true) => return SliceEnd::Halted { until: None },
                Ok(false) if vcpu.parked && was_parked => return SliceEnd::Halted { until: None },
                Ok(false) => {}
                Err(reason) => return SliceEnd::Stopped(reason),
            }
        }
        vcpu.slices += 1;
        let slice_start = backend.now();
        let slice_end = slice_start.saturating_add(slice);
        // The slice's timer also ends the guest's run when one of its own
        // device timers is due, so the interrupt goes in on time even if
        // the guest does not exit by itself meanwhile.
        let mut timer_at = timer_deadline(slice_end, vm.next_deadline(vcpu));
        if let Err(reason) = arm_timer(backend, &mut vcpu.hw, timer_at, slice_start) {
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
            if vm.needs_attention(vcpu, last) {
                if let Err(reason) = backend.deliver_interrupt(vm, vcpu, last) {
                    break SliceEnd::Stopped(reason);
                }
                self.notify(vm, me);
                // An INIT or start-up IPI may have come with the rest.
                match self.start_up(vcpu) {
                    Ok(false) => {}
                    Ok(true) => break SliceEnd::Halted { until: None },
                    Err(reason) => break SliceEnd::Stopped(reason),
                }
                // Running the due timers re-armed the periodic ones (the
                // PIT, the APIC timer): the slice timer must end this run
                // at their next deadline, or their ticks wait for the
                // slice's end and are lost. One already due is the
                // interrupt window's to deliver, not the timer's.
                let wanted =
                    timer_deadline(slice_end, vm.next_deadline(vcpu).filter(|&d| d > last));
                if wanted != timer_at {
                    timer_at = wanted;
                    if let Err(reason) = arm_timer(backend, &mut vcpu.hw, timer_at, last) {
                        break SliceEnd::Stopped(reason);
                    }
                }
            }
            let exit = backend.enter(&mut vcpu.hw, &vm.com1_out);
            // One clock read an exit: the guest is charged from one exit
            // to the next, its exit handling included.
            let now = backend.now();
            vcpu.ticks += now.wrapping_sub(last);
            last = now;
            // COM1 bytes the backend queued since the last exit reach the
            // console before anything the handler prints (a print
            // hypercall's line, a stop report), as they came first.
            if !vm.com1_out.is_empty() {
                vm.forward_output(backend);
            }
            let exit = match exit {
                Ok(exit) => exit,
                Err(reason) => break SliceEnd::Stopped(*reason),
            };
            let outcome = backend.handle(vm, vcpu, &exit);
            // Only a device access can arm or move a device timer, write
            // to COM1, or send an IPI (an EOI can, through the I/O APIC,
            // when it ends a level-triggered interrupt whose line is still
            // raised).
            if matches!(
                exit,
                Exit::Io(_) | Exit::NestedPageFault { .. } | Exit::MsrWrite | Exit::ApicEoi
            ) {
                vm.forward_output(backend);
                self.notify(vm, me);
                let wanted = timer_deadline(slice_end, vm.next_deadline(vcpu));
                if wanted != timer_at {
                    timer_at = wanted;
                    if let Err(reason) = arm_timer(backend, &mut vcpu.hw, timer_at, now) {
                        break SliceEnd::Stopped(reason);
                    }
                }
            }
            match outcome {
                Outcome::Resume => {}
                // A vCPU spinning on a lock whose holder may be waiting
                // for a CPU: give this one up, so the holder (another
                // vCPU of the guest) can run. A guest with one vCPU waits
                // for nobody of its own: it spins on. RIP is still on its
                // PAUSE either way.
                Outcome::Yield if vm.vcpus > 1 => break SliceEnd::Yielded,
                Outcome::Yield => {}
                Outcome::HostInterrupt => {
                    // A kick: end it and do what it asks; a request never
                    // concerns the vCPU running here. A kick may also say
                    // another CPU stops this guest.
                    backend.end_host_interrupt();
                    self.service(local);
                    if vm.stopping.load(Ordering::Acquire) {
                        break SliceEnd::Gone;
                    }
                }
                Outcome::Preempted if now < slice_end => {
                    // A device timer of the guest's is due: its interrupt
                    // goes in before the next entry; the slice goes on.
                    timer_at =
                        timer_deadline(slice_end, vm.next_deadline(vcpu).filter(|&d| d > now));
                    if let Err(reason) = arm_timer(backend, &mut vcpu.hw, timer_at, now) {
                        break SliceEnd::Stopped(reason);
                    }
                }
                Outcome::Preempted => {
                    vcpu.preemptions += 1;
                    break SliceEnd::TimeUp;
                }
                Outcome::Halted => {
                    // An interrupt already due wakes it at once.
                    if vm.needs_attention(vcpu, now) {
                        continue;
                    }
                    // The HLT exit already moved RIP past the instruction:
                    // this is where the guest would resume.
                    vcpu.halt_rip = backend.rip(&vcpu.hw);
                    // A guest that idles has said what it had to say: a
                    // partial line (a shell's prompt) is shown now rather
                    // than when a line end comes.
                    vm.forward_output(backend);
                    let name = &vm.name;
                    vm.devices()
                        .flush(&mut |line| backend.guest_line(name, line));
                    break SliceEnd::Halted {
                        until: vm.next_deadline(vcpu),
                    };
                }
                Outcome::Parked => {
                    vcpu.halt_rip = backend.rip(&vcpu.hw);
                    vcpu.parked = true;
                    vm.forward_output(backend);
                    break SliceEnd::Halted { until: None };
                }
                Outcome::Stop(reason) => break SliceEnd::Stopped(*reason),
            }
            // The slice also ends by the clock: where VM entry restarts the
            // preemption timer from the value written at the slice's start
            // (exits that do not save its count, or emulators that do not),
            // a guest that exits more often than the timer runs out would
            // otherwise never be preempted.
            if now.wrapping_sub(slice_start) >= slice {
                vcpu.preemptions += 1;
                break SliceEnd::TimeUp;
            }
        };
        if let Some(f) = figures {
            f.slice(last.wrapping_sub(slice_start));
        }
        // COM1 bytes the backend queued since the guest last touched its
        // devices go out with the slice, before any stop report.
        if !vm.com1_out.is_empty() {
            vm.forward_output(backend);
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
