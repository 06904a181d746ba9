//! The figures the scheduler keeps per vCPU and per CPU, as the console
//! monitor reads them.

use crate::{CpuId, VcpuId};

/// How many exit kinds get their own counter. The table is indexed by the
/// kernel's vendor-neutral exit kind (its own numbering of why a vCPU
/// exited, the same for VT-x and SVM; the scheduler gives the numbers no
/// meaning): the caller reports kinds `0..EXIT_KINDS`, and anything larger
/// is counted in [`VcpuStats::exits_other`].
pub const EXIT_KINDS: usize = 32;

/// Where a vCPU stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Waiting in its CPU's run queue.
    Runnable,
    /// On its CPU now (between `pick` and `stopped`).
    Running,
    /// Halted (HLT with nothing pending) until [`wake`](crate::Scheduler::wake)
    /// or, when [`VcpuStats::deadline`] is set, until that deadline.
    Blocked,
    /// Paused ([`pause`](crate::Scheduler::pause)) and otherwise ready to
    /// run: on no queue until [`resume`](crate::Scheduler::resume).
    Paused,
    /// Its guest is gone; kept only for its figures until
    /// [`remove`](crate::Scheduler::remove).
    Stopped,
}

/// One vCPU's figures. Times are in ticks of the caller's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStats {
    /// Where it stands.
    pub state: VcpuState,
    /// Its CPU: where it runs, waits, or will be queued when woken.
    pub cpu: CpuId,
    /// The CPU it last ran on (`None` before its first run).
    pub last_cpu: Option<CpuId>,
    /// Whether its affinity was configured (pinned) rather than "any CPU".
    pub pinned: bool,
    /// Total time on a CPU, from `pick` to `stopped` (the run in progress
    /// is added when it stops).
    pub run_time: u64,
    /// How many times it was picked to run.
    pub slices: u64,
    /// Runs that ended by [`StopCause::SliceEnd`](crate::StopCause::SliceEnd).
    pub slice_ends: u64,
    /// Runs that ended by [`StopCause::Yield`](crate::StopCause::Yield).
    pub yields: u64,
    /// Runs that ended by [`StopCause::Blocked`](crate::StopCause::Blocked).
    pub blocks: u64,
    /// Times it went from blocked to runnable.
    pub wakeups: u64,
    /// Runs that started on a different CPU than the one before.
    pub migrations: u64,
    /// Its credit in the current round: ticks it may still run before its
    /// turn ends (negative: time it overran, still to be charged).
    pub credit: i64,
    /// While blocked: the deadline at which the scheduler wakes it (see
    /// [`StopCause::Blocked`](crate::StopCause::Blocked)); `None` when it
    /// sleeps until woken, and whenever it is not blocked.
    pub deadline: Option<u64>,
    /// Paused: never picked until resumed. A paused vCPU that is running
    /// or blocked keeps that state until it would next be queued, then
    /// becomes [`VcpuState::Paused`] instead.
    pub paused: bool,
    /// VM exits by the kernel's vendor-neutral exit kind, as reported by
    /// the caller.
    pub exits: [u64; EXIT_KINDS],
    /// VM exits whose kind is `EXIT_KINDS` or more.
    pub exits_other: u64,
}

impl VcpuStats {
    /// Fresh figures for a vCPU placed on `cpu`.
    pub(crate) fn new(cpu: CpuId, pinned: bool) -> Self {
        VcpuStats {
            state: VcpuState::Runnable,
            cpu,
            last_cpu: None,
            pinned,
            run_time: 0,
            slices: 0,
            slice_ends: 0,
            yields: 0,
            blocks: 0,
            wakeups: 0,
            migrations: 0,
            credit: 0,
            deadline: None,
            paused: false,
            exits: [0; EXIT_KINDS],
            exits_other: 0,
        }
    }

    /// Exits of kind `kind` (those past the table all count under
    /// [`exits_other`](Self::exits_other)).
    pub fn exit_count(&self, kind: u16) -> u64 {
        self.exits
            .get(usize::from(kind))
            .copied()
            .unwrap_or(self.exits_other)
    }

    /// All exits recorded.
    pub fn exits_total(&self) -> u64 {
        self.exits
            .iter()
            .fold(self.exits_other, |sum, &n| sum.saturating_add(n))
    }
}

/// One physical CPU's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuStats {
    /// The vCPU on it now.
    pub running: Option<VcpuId>,
    /// vCPUs waiting in its run queue.
    pub queued: usize,
    /// vCPUs whose CPU it is, blocked ones included (its load for
    /// placement).
    pub assigned: usize,
    /// Whether its last `pick` said idle and no kick has been asked for
    /// since.
    pub idle: bool,
    /// How many times `pick` said idle.
    pub idle_picks: u64,
}

/// How many vCPUs are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Waiting in a run queue.
    pub runnable: usize,
    /// On a CPU.
    pub running: usize,
    /// Halted until woken.
    pub blocked: usize,
    /// Guest gone, not yet removed.
    pub stopped: usize,
    /// Paused and ready to run once resumed (a paused vCPU that is blocked
    /// counts as blocked).
    pub paused: usize,
    /// Of the blocked, those with a deadline: the scheduler wakes them
    /// itself, so they will run again without any event.
    pub timed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_counts_split_table_and_overflow() {
        let mut s = VcpuStats::new(CpuId(0), false);
        s.exits[10] = 3;
        s.exits[EXIT_KINDS - 1] = 1;
        s.exits_other = 2;
        assert_eq!(s.exit_count(10), 3);
        assert_eq!(s.exit_count(31), 1);
        assert_eq!(s.exit_count(32), 2);
        assert_eq!(s.exit_count(u16::MAX), 2);
        assert_eq!(s.exits_total(), 6);
    }
}
