//! A guest's end: its stop reported and its figures printed, everything it
//! holds given back, and a restart where the configuration asks for one.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use log::{debug, error, info};

use super::figures::report_vcpu;
use super::handover::ThisCpu;
use super::{vcpu_id, Backend, ConfiguredGuest, GuestRun, VcpuSlot, Vm};
use config::GuestStopAction;
use vcpu::exit::ExitStats;
use vcpu::stop::StopReason;

impl<B: Backend> GuestRun<B> {
    /// Stops guest `g` (its slot locked by this CPU), reports it, destroys
    /// it, and restarts it when `may_restart` and the configuration say so
    /// (a guest whose restart cannot be scheduled is not restarted again).
    /// `which`: the guest as the caller saw it (only its address, so the
    /// caller holds no reference that would keep it alive); a stop that
    /// raced with
    /// another stop or a restart finds another guest (or none) in the
    /// slot and does nothing.
    ///
    /// Its vCPUs leave the queues first; each is then taken out of its
    /// slot (a vCPU running elsewhere is kicked and leaves at its next
    /// exit), made inactive and destroyed; the VM goes last.
    pub(super) fn retire(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        g: usize,
        which: Option<*const Vm<B>>,
        reason: StopReason,
        may_restart: bool,
    ) {
        let Some(vm) = slot.vm.take() else {
            return;
        };
        if which.is_some_and(|w| !core::ptr::eq(w, Arc::as_ptr(&vm))) {
            slot.vm = Some(vm);
            return;
        }
        self.stops_in_progress.fetch_add(1, Ordering::AcqRel);
        vm.stopping.store(true, Ordering::Release);
        let name = vm.name.clone();
        let backend = &self.backend;
        // Off the queues (a running one keeps running until its next
        // exit: the kick makes that soon), with their figures.
        let mut figures = Vec::new();
        let mut kicks = Vec::new();
        let shares = {
            let mut queue = self.queue.lock();
            let shares = self.shares_until_now(&queue);
            for v in vm.vcpu_ids() {
                if let Some(s) = queue.remove(vcpu_id(v)) {
                    if s.state == sched::VcpuState::Running {
                        kicks.push(s.cpu);
                    }
                    figures.push((v, s));
                }
            }
            shares
        };
        for cpu in kicks {
            self.kick(Some(cpu));
        }
        if let Some(shares) = shares {
            self.report_shares(&shares);
        }
        let mut totals = (0u64, 0u64, 0u64);
        let mut stats = ExitStats::default();
        for v in vm.vcpu_ids() {
            let Some(mut vslot) = self.lock_vcpu(local, v) else {
                continue;
            };
            if !vslot.as_ref().is_some_and(|s| Arc::ptr_eq(&s.vm, &vm)) {
                continue;
            }
            // Inactive everywhere but here before it is destroyed, taken
            // over while this CPU still holds its slot, as the hand-over
            // requires: with the slot let go first, the CPU holding the
            // vCPU's switched state could find the slot empty, forget the
            // state without saving it and then give up the vCPU's VMCS,
            // so the vCPU was destroyed with its state still in that
            // CPU's registers (the host tests caught it once `sched`
            // moved vCPUs more often).
            if let Some(s) = vslot.as_mut() {
                self.take_over(local, v, &mut s.vcpu);
            }
            let Some(mut s) = vslot.take() else {
                continue;
            };
            drop(vslot);
            if core::mem::take(&mut s.vcpu.console_held) {
                backend.console_hold(vm.index, false);
            }
            if local.owner == Some(v) {
                local.owner = None;
            }
            if local.current == Some(v) {
                local.current = None;
            }
            totals.0 += s.vcpu.ticks;
            totals.1 += s.vcpu.slices;
            totals.2 += s.vcpu.preemptions;
            stats.add(&s.vcpu.model.stats);
            backend.destroy_vcpu(&vm.hw, &mut s.vcpu.hw);
        }
        // Its last output is queued before its stop is reported, and a
        // partial line of it is shown after the pause.
        vm.forward_output(backend);
        vm.devices()
            .flush(&mut |line| backend.guest_line(&name, line));
        info!("guest {name}: stopped: {reason}");
        slot.last_stop = Some(reason.to_string());
        backend.stopped(g, &name, &reason);
        report_stop(&name, totals, &stats);
        for (v, f) in &figures {
            let last = f.last_cpu.and_then(|c| self.cpus.number(c));
            report_vcpu(&name, v.saturating_sub(vm.first_vcpu), f, last);
        }
        match Arc::try_unwrap(vm) {
            Ok(mut vm) => backend.destroy_vm(&mut vm.hw),
            // Never: every vCPU slot let go of it above. Its frames are
            // kept rather than freed under a user.
            Err(_) => error!("guest {name}: still referenced after its stop; its memory is kept"),
        }
        // A guest that powered itself off stays off whatever the policy,
        // and so does one the operator stopped.
        let restart = may_restart
            && self.on_stop == GuestStopAction::Restart
            && reason != StopReason::PoweredOff
            && reason != StopReason::FromMonitor;
        if restart {
            self.recreate(local, slot, g);
        }
        let (outcome, counts) = {
            let mut queue = self.queue.lock();
            let outcome = if slot.vm.is_some() {
                self.enqueue(&mut queue, slot, g)
            } else {
                Ok(())
            };
            (outcome, queue.counts())
        };
        self.stops_in_progress.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Err(reason) => self.retire(local, slot, g, None, reason, false),
            Ok(()) => {
                if counts.runnable
                    + counts.running
                    + counts.blocked
                    + counts.paused
                    + counts.stopped
                    == 0
                    && self.stops_in_progress.load(Ordering::Acquire) == 0
                {
                    self.all_stopped();
                }
            }
        }
    }

    /// Creates stopped guest `g` (its slot locked by this CPU) again from
    /// its configuration, its vCPUs active on this CPU, not yet queued;
    /// false when the backend cannot (it has said why).
    pub(super) fn recreate(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        g: usize,
    ) -> bool {
        let backend = &self.backend;
        info!("guest {}: restarting", slot.config.name);
        let first = self.first_vcpu.get(g).copied().unwrap_or(usize::MAX);
        let Some((vm, vcpus)) = super::create_vm(backend, g, &slot.config, first, local.index)
        else {
            return false;
        };
        let count = vcpus.len();
        for (k, vcpu) in vcpus.into_iter().enumerate() {
            let v = first.saturating_add(k);
            if let Some(mut vslot) = self.lock_vcpu(local, v) {
                *vslot = Some(VcpuSlot {
                    vm: Arc::clone(&vm),
                    vcpu,
                });
            }
        }
        // `create` left the last vCPU current here.
        if count > 0 {
            local.current = Some(first.saturating_add(count - 1));
        }
        slot.restarts = slot.restarts.saturating_add(1);
        slot.vm = Some(vm);
        true
    }

    /// Starts stopped guest `g` (its slot locked by this CPU) again and
    /// queues it: the monitor's `restart`. An error in words when it
    /// cannot be created or scheduled (a guest that cannot be scheduled is
    /// stopped again and reported).
    pub(super) fn start_again(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        g: usize,
    ) -> Result<(), String> {
        if slot.vm.is_some() {
            return Err("it is running".to_string());
        }
        if !self.recreate(local, slot, g) {
            return Err("it could not be created again (the log says why)".to_string());
        }
        let outcome = self.enqueue(&mut self.queue.lock(), slot, g);
        match outcome {
            Ok(()) => Ok(()),
            Err(reason) => {
                let why = reason.to_string();
                self.retire(local, slot, g, None, reason, false);
                Err(why)
            }
        }
    }
}

/// `guest <name>: ran ...` and, at debug level, its exit counts.
fn report_stop(name: &str, (ticks, slices, preemptions): (u64, u64, u64), s: &ExitStats) {
    info!(
        "guest {name}: ran {ticks} TSC ticks in {slices} slices ({preemptions} ended by the timer or the TSC)"
    );
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
}
