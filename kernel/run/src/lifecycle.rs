//! A guest's end: its stop reported and its figures printed, everything it
//! holds given back, and a restart where the configuration asks for one.

use alloc::string::ToString;

use log::{debug, info};

use super::figures::report_vcpu;
use super::handover::ThisCpu;
use super::{vcpu_id, Backend, ConfiguredGuest, GuestRun, Vm};
use config::GuestStopAction;
use vcpu::stop::StopReason;

impl<B: Backend> GuestRun<B> {
    /// Reports the stop of guest `i` (its slot locked by this CPU),
    /// destroys it, and restarts it if the configuration says so.
    pub(super) fn stop(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        i: usize,
        reason: StopReason,
    ) {
        self.retire(local, slot, i, reason, true);
    }

    /// [`GuestRun::stop`], restarting only when `may_restart` (a guest whose
    /// restart cannot be scheduled is not restarted again).
    pub(super) fn retire(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        i: usize,
        reason: StopReason,
        may_restart: bool,
    ) {
        let Some(mut vm) = slot.vm.take() else {
            return;
        };
        let name = vm.name.clone();
        let backend = &self.backend;
        // Its last output is queued before its stop is reported, and a
        // partial line of it is shown after the pause.
        vm.forward_output(i, backend);
        if core::mem::take(&mut vm.vcpu.console_held) {
            backend.console_hold(i, false);
        }
        vm.devices
            .flush(&mut |line| backend.guest_line(&name, line));
        info!("guest {name}: stopped: {reason}");
        slot.last_stop = Some(reason.to_string());
        backend.stopped(i, &name, &reason);
        report_stop(&vm);
        // Its vCPU must be inactive everywhere but here before it is
        // destroyed.
        self.take_over(local, i, &mut vm);
        if local.owner == Some(i) {
            local.owner = None;
        }
        if local.current == Some(i) {
            local.current = None;
        }
        backend.destroy(&mut vm.hw, &mut vm.vcpu.hw);
        // A guest that powered itself off stays off whatever the policy,
        // and so does one the operator stopped.
        let restart = may_restart
            && self.on_stop == GuestStopAction::Restart
            && reason != StopReason::PoweredOff
            && reason != StopReason::FromMonitor;
        slot.vm = if restart {
            self.recreate(local, slot, i)
        } else {
            None
        };
        // The old vCPU goes and the new one (if any) comes in one step, so
        // no CPU sees "every guest gone" in between.
        // What is printed is gathered under the scheduler lock and printed
        // after it: the serial port is slow, and every CPU's next pick waits
        // for that lock.
        let (outcome, shares, figures) = {
            let mut queue = self.queue.lock();
            let shares = self.shares_until_now(&queue);
            let figures = queue.remove(vcpu_id(i));
            let outcome = if slot.vm.is_some() {
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
                if counts.runnable
                    + counts.running
                    + counts.blocked
                    + counts.paused
                    + counts.stopped
                    == 0
                {
                    self.all_stopped();
                }
            }
        }
    }

    /// Creates stopped guest `i` (its slot locked by this CPU) again from
    /// its configuration, current on this CPU, not yet queued; `None` when
    /// the backend cannot (it has said why).
    pub(super) fn recreate(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        i: usize,
    ) -> Option<Vm<B>> {
        let backend = &self.backend;
        info!("guest {}: restarting", slot.config.name);
        let (hw, vcpu) = backend.create(i, &slot.config)?;
        // `create` left the new vCPU current here.
        local.current = Some(i);
        slot.restarts = slot.restarts.saturating_add(1);
        Some(Vm::new(&slot.config.name, hw, vcpu, local.index, backend))
    }

    /// Starts stopped guest `i` (its slot locked by this CPU) again and
    /// queues it: the monitor's `restart`. An error in words when it
    /// cannot be created or scheduled (a guest that cannot be scheduled is
    /// stopped again and reported).
    pub(super) fn start_again(
        &self,
        local: &mut ThisCpu,
        slot: &mut ConfiguredGuest<B>,
        i: usize,
    ) -> Result<(), alloc::string::String> {
        if slot.vm.is_some() {
            return Err("it is running".to_string());
        }
        slot.vm = self.recreate(local, slot, i);
        if slot.vm.is_none() {
            return Err("it could not be created again (the log says why)".to_string());
        }
        let outcome = self.enqueue(&mut self.queue.lock(), slot, i);
        match outcome {
            Ok(()) => Ok(()),
            Err(reason) => {
                let why = reason.to_string();
                self.retire(local, slot, i, reason, false);
                Err(why)
            }
        }
    }
}

/// `guest <name>: ran ...` and, at debug level, its exit counts.
fn report_stop<B: Backend>(vm: &Vm<B>) {
    let name = &vm.name;
    let v = &vm.vcpu;
    info!(
        "guest {name}: ran {} TSC ticks in {} slices ({} ended by the timer or the TSC)",
        v.ticks, v.slices, v.preemptions
    );
    let s = vm.stats();
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
