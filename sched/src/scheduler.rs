//! The run queues and the per-CPU entry points: placement, picking the next
//! vCPU, stops, wake-ups, stealing and kicks, and the figures. The policy
//! is described in the crate documentation.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::affinity::Affinity;
use crate::{CpuId, CpuStats, SchedError, StateCounts, VcpuId, VcpuState, VcpuStats};

/// The most CPUs one scheduler handles.
pub const MAX_CPUS: u32 = 4096;

/// The longest slice, in ticks (2^40: about 4.6 minutes of a 4 GHz TSC).
/// The bound keeps every credit sum far inside `i64`.
pub const MAX_SLICE: u64 = 1 << 40;

/// How many slices of debt a vCPU can owe at most. Overruns are charged in
/// full up to this; beyond it the time still counts in
/// [`VcpuStats::run_time`] but is not charged, so one bogus clock reading
/// costs a vCPU at most this many turns.
pub const MAX_DEBT_SLICES: i64 = 8;

/// What a CPU does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run `vcpu` for at most `slice` ticks, then report
    /// [`Scheduler::stopped`].
    Run {
        /// The vCPU to run.
        vcpu: VcpuId,
        /// How long it may run, in ticks of the caller's clock: its credit,
        /// at least a slice / 8 and less than 1.125 slices. A new turn gets
        /// one slice, less an overrun it owes or plus a small remainder it
        /// carries; a continued turn gets what is left of it.
        slice: u64,
        /// The CPU it last ran on, when that is another CPU: its VMCS must
        /// be VMCLEARed there (if it still is active there) and the vCPU
        /// VMLAUNCHed here. `None` when it last ran here or never ran.
        migrated_from: Option<CpuId>,
    },
    /// Nothing can run here: halt until kicked (see [`Scheduler::wake`]).
    Idle,
}

/// Why a vCPU came off its CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// Its slice ran out (preemption timer or TSC check), or the kernel
    /// ended the run early for its own reasons. Unused credit is kept: the
    /// vCPU's turn continues at the next `pick` if enough is left.
    SliceEnd,
    /// It executed HLT with nothing pending: it blocks until
    /// [`Scheduler::wake`].
    Blocked,
    /// Its guest is gone: it never runs again; its figures stay until
    /// [`Scheduler::remove`].
    Stopped,
    /// It gave up the CPU voluntarily (e.g. a PAUSE-loop exit or a yield
    /// hypercall): it goes to the back of the queue and gives up the rest
    /// of its turn.
    Yield,
}

/// Where [`Scheduler::add`] put a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The CPU whose queue it joined.
    pub cpu: CpuId,
    /// A CPU to kick: it was idle and now has work.
    pub kick: Option<CpuId>,
}

/// One vCPU's scheduling state.
#[derive(Debug)]
struct Entry {
    /// Figures, state, CPU and credit.
    stats: VcpuStats,
    affinity: Affinity,
    /// Its turn has been credited and not yet ended: true while it runs and
    /// while it waits at the head of its queue to continue the turn.
    in_turn: bool,
    /// A wake-up came while it ran: a HLT that raced with the event must
    /// not block.
    wake_pending: bool,
    /// When the current run began (valid while running).
    started: u64,
}

/// One physical CPU.
#[derive(Debug)]
struct Cpu {
    /// Runnable vCPUs waiting here, in round-robin order. Its capacity is
    /// kept at least `allowed`, so pushing never allocates.
    queue: VecDeque<VcpuId>,
    running: Option<VcpuId>,
    /// Its last pick said idle and no kick was asked for since.
    idle: bool,
    /// Non-stopped vCPUs whose CPU this is.
    assigned: usize,
    /// Known vCPUs whose affinity allows this CPU (the most that can ever
    /// wait here at once).
    allowed: usize,
    idle_picks: u64,
}

impl Cpu {
    /// vCPUs here that wait while this CPU is busy: all of the queue when
    /// it runs a vCPU, all but the head (which it is about to pick)
    /// otherwise.
    fn waiting(&self) -> usize {
        if self.running.is_some() {
            self.queue.len()
        } else {
            self.queue.len().saturating_sub(1)
        }
    }
}

/// Every CPU's run queue and every vCPU's state. No internal locking: the
/// kernel holds it in a spin lock and calls the entry points from each CPU.
#[derive(Debug)]
pub struct Scheduler {
    cpus: Vec<Cpu>,
    vcpus: BTreeMap<VcpuId, Entry>,
    /// The quantum credited per turn, in ticks (1..=MAX_SLICE).
    slice: i64,
    /// The least credit worth a run: slice / 8, at least 1 tick. A turn
    /// ends when less than this is left.
    min_run: i64,
}

impl Scheduler {
    /// A scheduler for CPUs `0..cpus` crediting `slice` ticks per turn.
    pub fn new(cpus: u32, slice: u64) -> Result<Self, SchedError> {
        if cpus == 0 {
            return Err(SchedError::NoCpus);
        }
        if cpus > MAX_CPUS {
            return Err(SchedError::TooManyCpus { cpus });
        }
        let slice_ticks = match i64::try_from(slice) {
            Ok(s) if s > 0 && slice <= MAX_SLICE => s,
            _ => return Err(SchedError::BadSlice { slice }),
        };
        let cpus = (0..cpus)
            .map(|_| Cpu {
                queue: VecDeque::new(),
                running: None,
                idle: false,
                assigned: 0,
                allowed: 0,
                idle_picks: 0,
            })
            .collect();
        Ok(Scheduler {
            cpus,
            vcpus: BTreeMap::new(),
            slice: slice_ticks,
            min_run: (slice_ticks / 8).max(1),
        })
    }

    /// The quantum credited per turn, in ticks.
    pub fn slice(&self) -> u64 {
        self.slice.unsigned_abs()
    }

    /// How many CPUs there are.
    pub fn cpu_count(&self) -> u32 {
        u32::try_from(self.cpus.len()).unwrap_or(u32::MAX)
    }

    /// Adds `vcpu`, runnable, to the least-loaded CPU that `affinity`
    /// allows (`None`: any CPU; ties go to the lowest index), reserving the
    /// queue room it may ever need so that later calls do not allocate.
    ///
    /// Errors: the id is already known (stopped ones included), the
    /// affinity is empty or names a CPU that does not exist, or no memory.
    pub fn add(
        &mut self,
        vcpu: VcpuId,
        affinity: Option<&[CpuId]>,
    ) -> Result<Placement, SchedError> {
        if self.vcpus.contains_key(&vcpu) {
            return Err(SchedError::DuplicateVcpu(vcpu));
        }
        let affinity = Affinity::new(vcpu, affinity, self.cpus.len())?;
        for (i, cpu) in self.cpus.iter_mut().enumerate() {
            if affinity.allows(i) {
                let more = (cpu.allowed.saturating_add(1)).saturating_sub(cpu.queue.len());
                cpu.queue
                    .try_reserve(more)
                    .map_err(|_| SchedError::OutOfMemory(vcpu))?;
            }
        }
        let target = self
            .cpus
            .iter()
            .enumerate()
            .filter(|&(i, _)| affinity.allows(i))
            .min_by_key(|&(i, cpu)| (cpu.assigned, i))
            .map(|(i, _)| i)
            .ok_or(SchedError::EmptyAffinity(vcpu))?;
        for (i, cpu) in self.cpus.iter_mut().enumerate() {
            if affinity.allows(i) {
                cpu.allowed = cpu.allowed.saturating_add(1);
            }
        }
        let cpu = CpuId::from_index(target);
        if let Some(c) = self.cpus.get_mut(target) {
            c.assigned = c.assigned.saturating_add(1);
            c.queue.push_back(vcpu);
        }
        let pinned = affinity.is_pinned();
        self.vcpus.insert(
            vcpu,
            Entry {
                stats: VcpuStats::new(cpu, pinned),
                affinity,
                in_turn: false,
                wake_pending: false,
                started: 0,
            },
        );
        Ok(Placement {
            cpu,
            kick: self.kick_for(target),
        })
    }

    /// Forgets `vcpu` and returns its last figures; `None` if unknown.
    ///
    /// A running vCPU is taken off its CPU without being charged (the
    /// caller must stop running it; a later `stopped` for it is ignored).
    pub fn remove(&mut self, vcpu: VcpuId) -> Option<VcpuStats> {
        let entry = self.vcpus.remove(&vcpu)?;
        for (i, cpu) in self.cpus.iter_mut().enumerate() {
            if entry.affinity.allows(i) {
                cpu.allowed = cpu.allowed.saturating_sub(1);
            }
        }
        if let Some(home) = self.cpus.get_mut(entry.stats.cpu.index()) {
            match entry.stats.state {
                VcpuState::Runnable => home.queue.retain(|&v| v != vcpu),
                VcpuState::Running => {
                    if home.running == Some(vcpu) {
                        home.running = None;
                    }
                }
                VcpuState::Blocked | VcpuState::Stopped => {}
            }
            if entry.stats.state != VcpuState::Stopped {
                home.assigned = home.assigned.saturating_sub(1);
            }
        }
        Some(entry.stats)
    }

    /// What `cpu` runs next, at time `now`.
    ///
    /// Continues the turn of a vCPU left at the head by an early
    /// [`StopCause::SliceEnd`]; otherwise starts the next turn in
    /// round-robin order, crediting a slice to each vCPU it passes over for
    /// debt. With its own queue empty, the CPU steals the waiting vCPU at
    /// the back of the busiest queue it may run; with nothing to steal it
    /// is idle until kicked.
    ///
    /// If the caller did not report the previous run, it is ended here as a
    /// [`StopCause::SliceEnd`] at `now`. An unknown CPU gets `Idle`.
    pub fn pick(&mut self, cpu: CpuId, now: u64) -> Decision {
        let ci = cpu.index();
        let Some(current) = self.cpus.get(ci).map(|c| c.running) else {
            return Decision::Idle;
        };
        if let Some(current) = current {
            // Any kick this asks for is moot: this CPU picks right now.
            self.stopped(cpu, current, StopCause::SliceEnd, now);
        }
        let mut chosen = self.choose(ci);
        if chosen.is_none() && self.steal(ci) {
            chosen = self.choose(ci);
        }
        if let Some(decision) = chosen.and_then(|id| self.start(cpu, id, now)) {
            return decision;
        }
        if let Some(c) = self.cpus.get_mut(ci) {
            c.idle = true;
            c.idle_picks = c.idle_picks.saturating_add(1);
        }
        Decision::Idle
    }

    /// `vcpu` came off `cpu` at `now` because of `cause`: it is charged the
    /// time since its `pick` and queued, blocked or retired accordingly.
    /// Returns a CPU to kick: an idle one that can now take a vCPU waiting
    /// here.
    ///
    /// Ignored (returning `None`) unless `vcpu` is what `cpu` is running.
    pub fn stopped(
        &mut self,
        cpu: CpuId,
        vcpu: VcpuId,
        cause: StopCause,
        now: u64,
    ) -> Option<CpuId> {
        let ci = cpu.index();
        let (slice, min_run) = (self.slice, self.min_run);
        let c = self.cpus.get_mut(ci)?;
        if c.running != Some(vcpu) {
            return None;
        }
        c.running = None;
        let e = self.vcpus.get_mut(&vcpu)?;
        let ran = now.saturating_sub(e.started);
        e.stats.run_time = e.stats.run_time.saturating_add(ran);
        e.stats.credit = charge(e.stats.credit, ran, slice);
        let pending = core::mem::take(&mut e.wake_pending);
        match cause {
            StopCause::SliceEnd => {
                bump(&mut e.stats.slice_ends);
                e.stats.state = VcpuState::Runnable;
                if e.in_turn && e.stats.credit >= min_run {
                    // Ended early: the turn goes on at the next pick.
                    c.queue.push_front(vcpu);
                } else {
                    // Used up: the remainder (< min_run) or the debt
                    // carries over to the next turn.
                    e.in_turn = false;
                    c.queue.push_back(vcpu);
                }
            }
            StopCause::Yield => {
                bump(&mut e.stats.yields);
                give_up_turn(e);
                e.stats.state = VcpuState::Runnable;
                c.queue.push_back(vcpu);
            }
            StopCause::Blocked => {
                bump(&mut e.stats.blocks);
                give_up_turn(e);
                if pending {
                    // The event that would wake it came while it ran.
                    bump(&mut e.stats.wakeups);
                    e.stats.state = VcpuState::Runnable;
                    c.queue.push_back(vcpu);
                } else {
                    e.stats.state = VcpuState::Blocked;
                }
            }
            StopCause::Stopped => {
                e.in_turn = false;
                e.stats.state = VcpuState::Stopped;
                c.assigned = c.assigned.saturating_sub(1);
            }
        }
        self.kick_for(ci)
    }

    /// Counts one VM exit of `vcpu` with reason number `reason` (reasons of
    /// [`EXIT_REASONS`](crate::EXIT_REASONS) or more count as "other").
    /// Unknown vCPUs are ignored.
    pub fn record_exit(&mut self, vcpu: VcpuId, reason: u16) {
        let Some(e) = self.vcpus.get_mut(&vcpu) else {
            return;
        };
        match e.stats.exits.get_mut(usize::from(reason)) {
            Some(n) => bump(n),
            None => bump(&mut e.stats.exits_other),
        }
    }

    /// An event for `vcpu` (its timer, console input) arrived.
    ///
    /// A blocked vCPU becomes runnable at the tail of a queue: its own
    /// CPU's, unless that CPU is busy and another CPU it may run on is idle.
    /// Returns the CPU to kick when that CPU was idle (or can take a vCPU
    /// now waiting). Waking a runnable or stopped vCPU, or an unknown one,
    /// does nothing and is not counted. Waking a running vCPU is remembered
    /// (not counted yet): if that run ends in [`StopCause::Blocked`] the
    /// vCPU stays runnable and the wake-up counts then, so an event racing
    /// with HLT is not slept through.
    pub fn wake(&mut self, vcpu: VcpuId) -> Option<CpuId> {
        let e = self.vcpus.get_mut(&vcpu)?;
        match e.stats.state {
            VcpuState::Blocked => {}
            VcpuState::Running => {
                e.wake_pending = true;
                return None;
            }
            VcpuState::Runnable | VcpuState::Stopped => return None,
        }
        let home = e.stats.cpu.index();
        let home_free = self
            .cpus
            .get(home)
            .is_some_and(|c| c.running.is_none() && c.queue.is_empty());
        let target = if home_free {
            home
        } else {
            self.cpus
                .iter()
                .enumerate()
                .position(|(i, c)| c.idle && e.affinity.allows(i))
                .unwrap_or(home)
        };
        bump(&mut e.stats.wakeups);
        e.stats.state = VcpuState::Runnable;
        e.stats.cpu = CpuId::from_index(target);
        if target != home {
            if let Some(c) = self.cpus.get_mut(home) {
                c.assigned = c.assigned.saturating_sub(1);
            }
        }
        let c = self.cpus.get_mut(target)?;
        if target != home {
            c.assigned = c.assigned.saturating_add(1);
        }
        c.queue.push_back(vcpu);
        self.kick_for(target)
    }

    /// `vcpu`'s figures; `None` if unknown.
    pub fn stats(&self, vcpu: VcpuId) -> Option<VcpuStats> {
        self.vcpus.get(&vcpu).map(|e| e.stats)
    }

    /// Every vCPU's figures, in id order (the monitor's list).
    pub fn vcpus(&self) -> impl Iterator<Item = (VcpuId, VcpuStats)> + '_ {
        self.vcpus.iter().map(|(&id, e)| (id, e.stats))
    }

    /// `cpu`'s state; `None` if unknown.
    pub fn cpu_stats(&self, cpu: CpuId) -> Option<CpuStats> {
        self.cpus.get(cpu.index()).map(|c| CpuStats {
            running: c.running,
            queued: c.queue.len(),
            assigned: c.assigned,
            idle: c.idle,
            idle_picks: c.idle_picks,
        })
    }

    /// How many vCPUs are in each state. With none runnable or running,
    /// only a wake-up can give any CPU work again.
    pub fn counts(&self) -> StateCounts {
        let mut counts = StateCounts::default();
        for e in self.vcpus.values() {
            let n = match e.stats.state {
                VcpuState::Runnable => &mut counts.runnable,
                VcpuState::Running => &mut counts.running,
                VcpuState::Blocked => &mut counts.blocked,
                VcpuState::Stopped => &mut counts.stopped,
            };
            *n = n.saturating_add(1);
        }
        counts
    }

    /// Takes the next vCPU off CPU `ci`'s queue, crediting turns (deficit
    /// round robin); `None` when the queue is empty.
    fn choose(&mut self, ci: usize) -> Option<VcpuId> {
        let (slice, min_run) = (self.slice, self.min_run);
        let cpu = self.cpus.get_mut(ci)?;
        let vcpus = &mut self.vcpus;
        let head = *cpu.queue.front()?;
        if vcpus
            .get(&head)
            .is_some_and(|e| e.in_turn && e.stats.credit >= min_run)
        {
            cpu.queue.pop_front();
            return Some(head);
        }
        // Going round the queue, each vCPU reached is credited a slice and
        // runs if that brings it to `min_run`, else goes to the tail. The
        // first to run is the one needing the fewest credits (`rounds`),
        // the earliest in order among equals; instead of looping, credit
        // everyone for the passes at once: those up to it were reached
        // `rounds` times, those after it `rounds - 1` times.
        let mut best: Option<(i64, usize)> = None;
        for (pos, id) in cpu.queue.iter().enumerate() {
            let credit = vcpus.get(id).map_or(0, |e| e.stats.credit);
            let rounds = rounds_needed(credit, slice, min_run);
            if best.is_none_or(|(fewest, _)| rounds < fewest) {
                best = Some((rounds, pos));
            }
        }
        let (rounds, chosen) = best?;
        for (pos, id) in cpu.queue.iter().enumerate() {
            if let Some(e) = vcpus.get_mut(id) {
                let passes = if pos <= chosen {
                    rounds
                } else {
                    rounds.saturating_sub(1)
                };
                e.stats.credit = e.stats.credit.saturating_add(passes.saturating_mul(slice));
                e.in_turn = false;
            }
        }
        // Those passed over go behind the rest, in their order.
        cpu.queue.rotate_left(chosen);
        let id = cpu.queue.pop_front()?;
        if let Some(e) = vcpus.get_mut(&id) {
            e.in_turn = true;
        }
        Some(id)
    }

    /// Moves one vCPU that may run on CPU `ci` from the CPU with the most
    /// waiting vCPUs into `ci`'s (empty) queue. Takes the last such vCPU in
    /// queue order (the longest wait ahead of it), and leaves a CPU that is
    /// not running anything at least one vCPU to pick. The vCPU keeps its
    /// credit, and a turn in progress goes on at the new CPU.
    fn steal(&mut self, ci: usize) -> bool {
        let mut best: Option<(usize, usize, usize)> = None;
        for (j, victim) in self.cpus.iter().enumerate() {
            let waiting = victim.waiting();
            if j == ci || waiting == 0 || best.is_some_and(|(most, _, _)| waiting <= most) {
                continue;
            }
            let found = victim
                .queue
                .iter()
                .enumerate()
                .rev()
                .find(|&(_, id)| self.vcpus.get(id).is_some_and(|e| e.affinity.allows(ci)));
            if let Some((pos, _)) = found {
                best = Some((waiting, j, pos));
            }
        }
        let Some((_, j, pos)) = best else {
            return false;
        };
        let Some(victim) = self.cpus.get_mut(j) else {
            return false;
        };
        let Some(id) = victim.queue.remove(pos) else {
            return false;
        };
        victim.assigned = victim.assigned.saturating_sub(1);
        if let Some(e) = self.vcpus.get_mut(&id) {
            e.stats.cpu = CpuId::from_index(ci);
        }
        let Some(me) = self.cpus.get_mut(ci) else {
            return false;
        };
        me.assigned = me.assigned.saturating_add(1);
        me.queue.push_back(id);
        true
    }

    /// After work was queued on CPU `ci`: the CPU to kick, if any. That is
    /// `ci` itself when idle, else, when a vCPU has to wait on `ci`, the
    /// first idle CPU that may run one of `ci`'s queued vCPUs (it will
    /// steal it). The kicked CPU counts as busy from now on, so one idle
    /// CPU is not kicked twice for the same work.
    fn kick_for(&mut self, ci: usize) -> Option<CpuId> {
        let cpu = self.cpus.get(ci)?;
        let target = if cpu.idle {
            (!cpu.queue.is_empty()).then_some(ci)
        } else if cpu.waiting() == 0 {
            None
        } else {
            let vcpus = &self.vcpus;
            self.cpus
                .iter()
                .enumerate()
                .find(|&(j, other)| {
                    j != ci
                        && other.idle
                        && cpu
                            .queue
                            .iter()
                            .any(|id| vcpus.get(id).is_some_and(|e| e.affinity.allows(j)))
                })
                .map(|(j, _)| j)
        }?;
        let t = self.cpus.get_mut(target)?;
        t.idle = false;
        Some(CpuId::from_index(target))
    }

    /// Puts `id`, just chosen from CPU `cpu`'s queue, on that CPU at `now`.
    fn start(&mut self, cpu: CpuId, id: VcpuId, now: u64) -> Option<Decision> {
        let c = self.cpus.get_mut(cpu.index())?;
        let e = self.vcpus.get_mut(&id)?;
        let migrated_from = e.stats.last_cpu.filter(|&last| last != cpu);
        if migrated_from.is_some() {
            bump(&mut e.stats.migrations);
        }
        e.stats.last_cpu = Some(cpu);
        e.stats.cpu = cpu;
        e.stats.state = VcpuState::Running;
        bump(&mut e.stats.slices);
        e.started = now;
        c.running = Some(id);
        c.idle = false;
        Some(Decision::Run {
            vcpu: id,
            slice: u64::try_from(e.stats.credit).unwrap_or(1).max(1),
            migrated_from,
        })
    }
}

/// `credit` less `ran` ticks, with the debt capped at
/// [`MAX_DEBT_SLICES`] slices.
fn charge(credit: i64, ran: u64, slice: i64) -> i64 {
    let ran = i64::try_from(ran).unwrap_or(i64::MAX);
    credit
        .saturating_sub(ran)
        .max(MAX_DEBT_SLICES.saturating_mul(slice).saturating_neg())
}

/// How many slices must be credited to `credit` to reach `min_run`
/// (at least 1: every turn starts with a credit).
fn rounds_needed(credit: i64, slice: i64, min_run: i64) -> i64 {
    let short = min_run.saturating_sub(credit);
    if short <= slice {
        return 1;
    }
    let (Ok(short), Ok(slice)) = (u64::try_from(short), u64::try_from(slice)) else {
        return 1;
    };
    i64::try_from(short.div_ceil(slice.max(1))).unwrap_or(i64::MAX)
}

/// Ends `e`'s turn early: unused credit is given up, debt stays.
fn give_up_turn(e: &mut Entry) {
    e.in_turn = false;
    e.stats.credit = e.stats.credit.min(0);
}

/// Adds one to a counter (saturating: a counter never wraps or panics).
fn bump(n: &mut u64) {
    *n = n.saturating_add(1);
}

#[cfg(test)]
mod tests;
