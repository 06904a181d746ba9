//! The run's figures: per CPU (slices, busy time, idle waits, switch
//! costs), how the guests shared the CPUs until the first stop, and each
//! vCPU's scheduler figures when its guest stops.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info};

use super::{Backend, GuestRun};
use vcpu::exit::ExitKind;

/// The table `sched` keeps exit counts in must hold every kind.
const _: () = assert!(ExitKind::COUNT <= sched::EXIT_KINDS);

/// One CPU's figures for the run, kept by that CPU alone.
#[derive(Default)]
pub struct CpuFigures {
    /// Slices it ran, and the ticks they took (exit handling included).
    slices: AtomicU64,
    busy: AtomicU64,
    /// Switches to another guest on this CPU, and their ticks.
    switches: AtomicU64,
    switch_ticks: AtomicU64,
    /// Switches to a guest that came from another CPU, and their ticks.
    migrations: AtomicU64,
    migration_ticks: AtomicU64,
    /// Times it halted for want of work.
    pub(super) idle_waits: AtomicU64,
}

impl CpuFigures {
    /// Ticks its slices took, and its switches to another guest (across
    /// CPUs or not), so far.
    pub(super) fn totals(&self) -> (u64, u64) {
        (
            self.busy.load(Ordering::Relaxed),
            self.switches
                .load(Ordering::Relaxed)
                .saturating_add(self.migrations.load(Ordering::Relaxed)),
        )
    }

    /// A slice that kept the CPU busy for `ticks`.
    pub(super) fn slice(&self, ticks: u64) {
        self.slices.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(ticks, Ordering::Relaxed);
    }

    /// A switch to another guest that took `ticks`, from one that ran on
    /// another CPU when `migrated`.
    pub(super) fn switched(&self, migrated: bool, ticks: u64) {
        let (count, total) = if migrated {
            (&self.migrations, &self.migration_ticks)
        } else {
            (&self.switches, &self.switch_ticks)
        };
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(ticks, Ordering::Relaxed);
    }
}

impl<B: Backend> GuestRun<B> {
    /// Each guest's time on a CPU so far, by slot, the first time a stop
    /// asks after guests have run (later calls give `None`): how the guests
    /// shared the CPUs while every one still competed.
    pub(super) fn shares_until_now(&self, queue: &sched::Scheduler) -> Option<Vec<(usize, u64)>> {
        if self.shares_reported.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.backend.now();
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
    /// [`GuestRun::shares_until_now`]).
    pub(super) fn report_shares(&self, times: &[(usize, u64)]) {
        let total: u64 = times.iter().map(|&(_, t)| t).sum();
        let parts: Vec<String> = times
            .iter()
            .map(|&(i, t)| {
                let hundredths = (u128::from(t) * 10_000)
                    .checked_div(u128::from(total))
                    .unwrap_or(0);
                alloc::format!(
                    "{} {}.{:02}%",
                    self.vcpu_names.get(i).map_or("?", String::as_str),
                    hundredths / 100,
                    hundredths % 100
                )
            })
            .collect();
        info!("sched: shares until the first stop: {}", parts.join(", "));
    }

    /// The figures of the run, which took `run_ticks`: per CPU, and the
    /// switch costs.
    pub fn report(&self, run_ticks: u64) {
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

/// `guest <name>: vcpu<k>: ...`: the scheduler's figures for vCPU `k` of
/// a guest that stopped (the ones the console monitor will show).
pub(super) fn report_vcpu(name: &str, k: usize, s: &sched::VcpuStats, last_cpu: Option<usize>) {
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
        "guest {name}: vcpu{k}: {} TSC ticks on a CPU in {} slices ({} moved between CPUs, {} blocked, {} woken), last on {}; exits: {}",
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
