//! The console monitor's view of the run: [`console::MonitorTarget`] over
//! the [`GuestRun`], acting on the first CPU while it serves the console.
//! Each command locks the slot of the guest it concerns (serving this
//! CPU's mailbox meanwhile, as every wait of the run does), so it sees a
//! guest between two slices, never one that runs.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::Ordering;

use console::{
    CpuStats, ExitCounts, GuestInfo, GuestState, GuestSummary, HostStats, LogLevel, MemError,
    MonitorTarget, RegisterSnapshot,
};
use sched::VcpuState;
use vcpu::exit::ExitKind;
use vcpu::stop::StopReason;

use super::handover::ThisCpu;
use super::{vcpu_id, Backend, ConfiguredGuest, GuestRun};

/// The run as the monitor sees it, from the CPU that serves the console.
pub(super) struct RunTarget<'a, B: Backend> {
    run: &'a GuestRun<B>,
    /// This CPU, for the waits and the hand-over (`&self` methods of the
    /// trait wait too).
    local: RefCell<&'a mut ThisCpu>,
}

impl<'a, B: Backend> RunTarget<'a, B> {
    /// The monitor's target over `run`, on the CPU `local`.
    pub(super) fn new(run: &'a GuestRun<B>, local: &'a mut ThisCpu) -> Self {
        Self {
            run,
            local: RefCell::new(local),
        }
    }

    /// The slot of the guest named `name`.
    fn index(&self, name: &str) -> Option<usize> {
        self.run.names.iter().position(|n| n == name)
    }

    /// Runs `f` on guest `name`'s slot, locked.
    fn with_slot<R>(
        &self,
        name: &str,
        f: impl FnOnce(&GuestRun<B>, &mut ThisCpu, &mut ConfiguredGuest<B>, usize) -> R,
    ) -> Option<R> {
        let i = self.index(name)?;
        let mut local = self.local.borrow_mut();
        let mut slot = self.run.lock_slot(&mut local, i)?;
        Some(f(self.run, &mut local, &mut slot, i))
    }

    /// Guest `i`'s `list` row (its slot locked).
    fn summary(&self, slot: &ConfiguredGuest<B>, i: usize) -> GuestSummary {
        let run = self.run;
        let now = run.backend.now();
        let (paused, exits) = {
            let queue = run.queue.lock();
            let mut paused = false;
            let mut exits = 0u64;
            for v in run.guest_vcpus(i) {
                if let Some(s) = queue.stats_ref(vcpu_id(v)) {
                    paused |= s.paused;
                    exits = exits.saturating_add(s.exits_total());
                }
            }
            (paused, exits)
        };
        let state = match &slot.vm {
            None => GuestState::Stopped,
            Some(_) if paused => GuestState::Paused,
            Some(_) => GuestState::Running,
        };
        let uptime_ms = slot.vm.as_ref().map_or(0, |vm| {
            ticks_to_ms(now.saturating_sub(vm.started_at), run.backend.tsc_hz())
        });
        GuestSummary {
            name: slot.config.name.clone(),
            state,
            vcpus: slot.config.vcpus,
            cpus: slot.config.cpus.clone().unwrap_or_default(),
            memory: slot.config.memory,
            uptime_ms,
            exits,
        }
    }
}

/// `ticks` of a `hz` clock in milliseconds.
fn ticks_to_ms(ticks: u64, hz: u64) -> u64 {
    let ms = (u128::from(ticks) * 1000)
        .checked_div(u128::from(hz))
        .unwrap_or(0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl<B: Backend> MonitorTarget for RunTarget<'_, B> {
    fn guests(&self) -> Vec<GuestSummary> {
        (0..self.run.names.len())
            .filter_map(|i| {
                let name = self.run.names.get(i)?;
                self.with_slot(name, |_, _, slot, i| self.summary(slot, i))
            })
            .collect()
    }

    fn info(&self, guest: &str) -> Option<GuestInfo> {
        let summary = self.with_slot(guest, |_, _, slot, i| self.summary(slot, i))?;
        let i = self.index(guest)?;
        let console_dropped = self.run.backend.console_history(i).map_or(0, |h| h.1);
        self.with_slot(guest, |_, _, slot, _| {
            let c = &slot.config;
            GuestInfo {
                summary,
                format: String::from(match c.format {
                    None => "detected from the image",
                    Some(config::ImageFormat::Linux) => "linux",
                    Some(config::ImageFormat::Multiboot) => "multiboot",
                    Some(config::ImageFormat::Flat(_)) => "flat",
                }),
                kernel: c.kernel.clone(),
                initrd: c.initrd.clone(),
                cmdline: c.cmdline.clone(),
                last_stop: slot.last_stop.clone(),
                restarts: slot.restarts,
                console_dropped,
            }
        })
    }

    fn regs(&mut self, guest: &str, vcpu: u32) -> Result<RegisterSnapshot, String> {
        self.with_slot(guest, |run, local, slot, i| {
            if slot.vm.is_none() {
                return Err(String::from("the guest is stopped"));
            }
            let n = slot.config.vcpus.max(1);
            if vcpu >= n {
                return Err(if n == 1 {
                    alloc::format!("no vcpu {vcpu}: the guest has one, vcpu 0")
                } else {
                    alloc::format!("no vcpu {vcpu}: the guest has vcpu 0 to {}", n - 1)
                });
            }
            let v = run
                .guest_vcpus(i)
                .nth(vcpu as usize)
                .ok_or("no such vcpu")?;
            let mut vslot = run.lock_vcpu(local, v).ok_or("no such vcpu")?;
            let Some(s) = vslot.as_mut() else {
                return Err(String::from("the guest is stopped"));
            };
            let backend = &run.backend;
            // Its state is read where it is current: take it over as a
            // slice would (it runs nowhere while its slot is locked).
            if s.vcpu.active_on != Some(local.index) {
                run.take_over(local, v, &mut s.vcpu);
                backend.arrive(&s.vm.hw, &mut s.vcpu.hw, local.index)?;
                s.vcpu.active_on = Some(local.index);
                local.current = Some(v);
            }
            if local.current != Some(v) {
                backend.make_current(&mut s.vcpu.hw)?;
                local.current = Some(v);
            }
            Ok(backend.registers(&mut s.vcpu.hw))
        })
        .unwrap_or_else(|| Err(String::from("no such guest")))
    }

    fn read_memory(&mut self, guest: &str, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.with_slot(guest, |run, _, slot, _| match slot.vm.as_ref() {
            Some(vm) => run.backend.read_memory(&vm.hw, gpa, buf),
            None => Err(MemError::NoMemory),
        })
        .unwrap_or(Err(MemError::NoMemory))
    }

    fn exits(&self, guest: &str) -> Option<ExitCounts> {
        let i = self.index(guest)?;
        let queue = self.run.queue.lock();
        // A guest's counts are the sum of its vCPUs'; a stopped guest's
        // went with it.
        let mut table = [0u64; sched::EXIT_KINDS];
        let mut other = 0u64;
        let mut total = 0u64;
        for v in self.run.guest_vcpus(i) {
            let Some(s) = queue.stats_ref(vcpu_id(v)) else {
                continue;
            };
            for (t, &n) in table.iter_mut().zip(s.exits.iter()) {
                *t = t.saturating_add(n);
            }
            other = other.saturating_add(s.exits_other);
            total = total.saturating_add(s.exits_total());
        }
        let mut by_reason: Vec<(String, u64)> = table
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(kind, &n)| {
                let name = ExitKind::from_index(kind).map_or("other", ExitKind::name);
                (name.to_string(), n)
            })
            .collect();
        if other > 0 {
            by_reason.push((String::from("other"), other));
        }
        Some(ExitCounts { total, by_reason })
    }

    fn log(&self, guest: &str) -> Option<Vec<u8>> {
        let i = self.index(guest)?;
        Some(
            self.run
                .backend
                .console_history(i)
                .map(|h| h.0)
                .unwrap_or_default(),
        )
    }

    fn pause(&mut self, guest: &str) -> Result<(), String> {
        let i = self.index(guest).ok_or("no such guest")?;
        let mut queue = self.run.queue.lock();
        let first = self.run.guest_vcpus(i).next().map(vcpu_id);
        match first
            .and_then(|v| queue.stats_ref(v))
            .map(|s| (s.state, s.paused))
        {
            None | Some((VcpuState::Stopped, _)) => Err(String::from("it is stopped")),
            Some((_, true)) => Err(String::from("it is already paused")),
            Some(_) => {
                for v in self.run.guest_vcpus(i) {
                    queue.pause(vcpu_id(v));
                }
                Ok(())
            }
        }
    }

    fn resume(&mut self, guest: &str) -> Result<(), String> {
        let i = self.index(guest).ok_or("no such guest")?;
        let mut kicks = Vec::new();
        {
            let mut queue = self.run.queue.lock();
            let first = self.run.guest_vcpus(i).next().map(vcpu_id);
            match first.and_then(|v| queue.stats_ref(v)).map(|s| s.paused) {
                None => return Err(String::from("it is stopped")),
                Some(false) => return Err(String::from("it is not paused")),
                Some(true) => {
                    for v in self.run.guest_vcpus(i) {
                        kicks.push(queue.resume(vcpu_id(v)));
                    }
                }
            }
        }
        for kick in kicks {
            self.run.kick(kick);
        }
        Ok(())
    }

    fn stop(&mut self, guest: &str) -> Result<(), String> {
        self.with_slot(guest, |run, local, slot, i| {
            if slot.vm.is_none() {
                return Err(String::from("it is already stopped"));
            }
            run.retire(local, slot, i, None, StopReason::FromMonitor, false);
            Ok(())
        })
        .unwrap_or_else(|| Err(String::from("no such guest")))
    }

    fn restart(&mut self, guest: &str) -> Result<(), String> {
        self.with_slot(guest, |run, local, slot, i| {
            if slot.vm.is_some() {
                // The run stays up meanwhile: this guest comes back.
                let stay_up = run.stay_up.swap(true, Ordering::AcqRel);
                run.retire(local, slot, i, None, StopReason::FromMonitor, false);
                run.stay_up.store(stay_up, Ordering::Release);
            }
            run.start_again(local, slot, i)
        })
        .unwrap_or_else(|| Err(String::from("no such guest")))
    }

    fn stats(&self) -> HostStats {
        let run = self.run;
        let mut stats = run.backend.host_stats();
        let elapsed = run.backend.now().saturating_sub(run.started_at);
        stats.cpus = run
            .cpus
            .numbers
            .iter()
            .zip(&run.figures)
            .map(|(&cpu, f)| {
                let (busy, switches) = f.totals();
                let permille = (u128::from(busy) * 1000)
                    .checked_div(u128::from(elapsed))
                    .unwrap_or(0)
                    .min(1000);
                CpuStats {
                    cpu: u32::try_from(cpu).unwrap_or(u32::MAX),
                    guest_permille: u32::try_from(permille).unwrap_or(1000),
                    switches,
                }
            })
            .collect();
        stats
    }

    fn set_log_level(&mut self, level: LogLevel) -> Result<(), String> {
        self.run.backend.set_log_level(level);
        Ok(())
    }

    fn poweroff(&mut self) {
        let run = self.run;
        run.poweroff.store(true, Ordering::Release);
        let mut local = self.local.borrow_mut();
        for i in 0..run.slots.len() {
            if let Some(mut slot) = run.lock_slot(&mut local, i) {
                run.retire(
                    &mut local,
                    &mut slot,
                    i,
                    None,
                    StopReason::FromMonitor,
                    false,
                );
            }
        }
        run.finish();
    }
}
