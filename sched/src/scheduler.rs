//! The run queues and the per-CPU entry points: placement, picking the next
//! vCPU, stops, wake-ups, stealing and kicks, and the figures. The policy
//! is described in the crate documentation.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::affinity::Affinity;
use crate::{CpuId, CpuStats, SchedError, StateCounts, VcpuId, VcpuState, VcpuStats, EXIT_KINDS};

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
        ///
        /// Cut short, when a blocked vCPU of this CPU has a deadline before
        /// the credit runs out, to end exactly at the earliest such
        /// deadline (`deadline - now`, at least 1 tick), so that the CPU
        /// picks again by then and queues the vCPU that became due. The
        /// run is charged what it actually ran, so a cut run loses nothing:
        /// stopped as [`StopCause::SliceEnd`], the vCPU continues its turn.
        slice: u64,
        /// The CPU it last ran on, when that is another CPU: its VMCS must
        /// be VMCLEARed there (if it still is active there) and the vCPU
        /// VMLAUNCHed here. `None` when it last ran here or never ran.
        migrated_from: Option<CpuId>,
        /// A CPU to kick, as [`Scheduler::stopped`] returns: an idle one
        /// that can take a vCPU left waiting here, e.g. when several
        /// vCPUs of this CPU became due at once (see
        /// [`StopCause::Blocked`]). Always `None` in the common case.
        kick: Option<CpuId>,
    },
    /// Nothing can run here: halt until kicked (see [`Scheduler::wake`])
    /// or until the clock reaches `until`.
    Idle {
        /// The earliest deadline of the blocked vCPUs whose CPU this is
        /// (always later than the `now` of this `pick`): the caller arms
        /// its timer (the local APIC in TSC-deadline mode) for it before
        /// halting, and picks again when it fires. `None`: no deadline,
        /// halt until kicked.
        until: Option<u64>,
    },
}

/// Why a vCPU came off its CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// Its slice ran out (preemption timer or TSC check), or the kernel
    /// ended the run early for its own reasons. Unused credit is kept: the
    /// vCPU's turn continues at the next `pick` if enough is left.
    SliceEnd,
    /// It executed HLT with nothing pending: it blocks until
    /// [`Scheduler::wake`] or, when `until` is `Some`, until the clock
    /// reaches that deadline (in the caller's ticks: the TSC deadline of
    /// the timer it waits for), whichever comes first.
    ///
    /// The scheduler wakes a vCPU whose deadline has passed itself: the
    /// first [`Scheduler::pick`] (or `stopped`) on its CPU at or after the
    /// deadline puts
    /// it at the tail of that CPU's queue, exactly like a `wake`, and
    /// slices and idle periods on that CPU end by the deadline so that
    /// this pick comes on time (see [`Decision`]). `wake` first wakes it
    /// at once and cancels the deadline; [`Scheduler::set_deadline`]
    /// arms, moves or clears it while it sleeps. Blocking with a deadline
    /// already passed (`until <= now`) does not sleep: the vCPU counts a
    /// block and a wake-up and goes to the tail of the queue at once.
    Blocked {
        /// The deadline, or `None` to sleep until `wake`.
        until: Option<u64>,
    },
    /// Its guest is gone: it never runs again; its figures stay until
    /// [`Scheduler::remove`].
    Stopped,
    /// It gave up the CPU voluntarily (e.g. a PAUSE-loop exit or a yield
    /// hypercall): it goes to the back of the queue and gives up the rest
    /// of its turn.
    Yield,
}

/// What [`Scheduler::stopped_with`] did with a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// A CPU to kick, as [`Scheduler::stopped`] returns.
    pub kick: Option<CpuId>,
    /// The CPU whose queue it was moved to, when its turn ended where
    /// others wait and another CPU had room (see the crate documentation on
    /// rotation).
    pub moved_to: Option<CpuId>,
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
    /// Its id. Where the entry sits in the table is its slot.
    id: VcpuId,
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
    /// When it last came off a CPU ready to run again (its turn over), or
    /// blocked: how long it has waited, for [`Scheduler::pull_waiter`].
    ready_since: u64,
}

/// A deadline of a blocked vCPU: when, and the vCPU's slot.
type Timer = (u64, usize);

/// One physical CPU.
#[derive(Debug)]
struct Cpu {
    /// Runnable vCPUs waiting here, in round-robin order, by slot. Its
    /// capacity is kept at least `allowed`, so pushing never allocates.
    queue: VecDeque<usize>,
    /// The slot of the vCPU it runs.
    running: Option<usize>,
    /// Its last pick said idle and no kick was asked for since.
    idle: bool,
    /// Non-stopped vCPUs whose CPU this is.
    assigned: usize,
    /// Known vCPUs whose affinity allows this CPU (the most that can ever
    /// wait here at once).
    allowed: usize,
    idle_picks: u64,
    /// The deadlines of the blocked vCPUs whose CPU this is, latest first
    /// (so the earliest is last; equal ones in the order they were set,
    /// the first set last). A handful at most in practice, so arming and
    /// disarming are a short search. Its capacity is kept at least
    /// `allowed`, so arming never allocates.
    timers: Vec<Timer>,
    /// The earliest deadline in `timers`, `u64::MAX` when none: all the
    /// fast path of `pick` looks at.
    next_due: u64,
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

    /// The earliest deadline of a blocked vCPU here.
    fn earliest(&self) -> Option<u64> {
        self.timers.last().map(|&(due, _)| due)
    }

    /// Arms the deadline `due` for the blocked vCPU in `slot`. Kept out
    /// of line so that `stop`, which calls it for a timed HLT, stays small
    /// enough to inline into the hot path.
    #[inline(never)]
    fn arm(&mut self, due: u64, slot: usize) {
        let at = self.timers.partition_point(|&(d, _)| d > due);
        self.timers.insert(at, (due, slot));
        self.next_due = self.next_due.min(due);
    }

    /// Disarms the deadline of the vCPU in `slot`, if it has one here.
    fn disarm(&mut self, slot: usize) {
        if let Some(at) = self.timers.iter().rposition(|&(_, s)| s == slot) {
            self.timers.remove(at);
            self.next_due = self.earliest().unwrap_or(u64::MAX);
        }
    }
}

/// The credit rules, in ticks.
#[derive(Clone, Copy, Debug)]
struct Quantum {
    /// The quantum credited per turn (1..=MAX_SLICE).
    slice: i64,
    /// The least credit worth a run: slice / 8, at least 1 tick. A turn
    /// ends when less than this is left.
    min_run: i64,
    /// The lowest credit: [`MAX_DEBT_SLICES`] slices of debt.
    max_debt: i64,
}

/// Every CPU's run queue and every vCPU's state. No internal locking: the
/// kernel holds it in a spin lock and calls the entry points from each CPU.
///
/// The vCPUs live in one table; a vCPU's index there, its *slot*, is what
/// the run queues and each CPU's running vCPU hold, so `pick` and `stopped`
/// never look an id up. Ids are looked up (by `wake`, `record_exit`,
/// `add`, `remove`, `stats`) through a sorted index, after trying the slot
/// equal to the id, which is where a vCPU numbered densely from 0 lives.
#[derive(Debug)]
pub struct Scheduler {
    cpus: Vec<Cpu>,
    /// Every known vCPU, by slot, in no particular order. Removing one
    /// moves the last into its slot, so the table stays dense.
    entries: Vec<Entry>,
    /// Every known vCPU's id and slot, sorted by id.
    ids: Vec<(VcpuId, usize)>,
    /// How many CPUs are idle, so that kicks and wake-ups need not look
    /// for an idle CPU when there is none.
    idle_cpus: usize,
    quantum: Quantum,
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
                timers: Vec::new(),
                next_due: u64::MAX,
            })
            .collect();
        Ok(Scheduler {
            cpus,
            entries: Vec::new(),
            ids: Vec::new(),
            idle_cpus: 0,
            quantum: Quantum {
                slice: slice_ticks,
                min_run: (slice_ticks / 8).max(1),
                max_debt: MAX_DEBT_SLICES.saturating_mul(slice_ticks).saturating_neg(),
            },
        })
    }

    /// The quantum credited per turn, in ticks.
    pub fn slice(&self) -> u64 {
        self.quantum.slice.unsigned_abs()
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
        let at = match self.ids.binary_search_by_key(&vcpu, |&(id, _)| id) {
            Ok(_) => return Err(SchedError::DuplicateVcpu(vcpu)),
            Err(at) => at,
        };
        let affinity = Affinity::new(vcpu, affinity, self.cpus.len())?;
        for (i, cpu) in self.cpus.iter_mut().enumerate() {
            if affinity.allows(i) {
                let room = cpu.allowed.saturating_add(1);
                cpu.queue
                    .try_reserve(room.saturating_sub(cpu.queue.len()))
                    .and_then(|()| {
                        cpu.timers
                            .try_reserve(room.saturating_sub(cpu.timers.len()))
                    })
                    .map_err(|_| SchedError::OutOfMemory(vcpu))?;
            }
        }
        self.entries
            .try_reserve(1)
            .and_then(|()| self.ids.try_reserve(1))
            .map_err(|_| SchedError::OutOfMemory(vcpu))?;
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
        let slot = self.entries.len();
        let cpu = CpuId::from_index(target);
        if let Some(c) = self.cpus.get_mut(target) {
            c.assigned = c.assigned.saturating_add(1);
            c.queue.push_back(slot);
        }
        let pinned = affinity.is_pinned();
        self.entries.push(Entry {
            id: vcpu,
            stats: VcpuStats::new(cpu, pinned),
            affinity,
            in_turn: false,
            wake_pending: false,
            ready_since: 0,
            started: 0,
        });
        self.ids.insert(at, (vcpu, slot));
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
        let at = self.ids.binary_search_by_key(&vcpu, |&(id, _)| id).ok()?;
        let (_, slot) = self.ids.remove(at);
        let entry = self.entries.get(slot)?;
        for (i, cpu) in self.cpus.iter_mut().enumerate() {
            if entry.affinity.allows(i) {
                cpu.allowed = cpu.allowed.saturating_sub(1);
            }
        }
        if let Some(home) = self.cpus.get_mut(entry.stats.cpu.index()) {
            if entry.stats.deadline.is_some() {
                home.disarm(slot);
            }
            match entry.stats.state {
                VcpuState::Runnable => home.queue.retain(|&s| s != slot),
                VcpuState::Running => {
                    if home.running == Some(slot) {
                        home.running = None;
                    }
                }
                VcpuState::Blocked | VcpuState::Paused | VcpuState::Stopped => {}
            }
            if entry.stats.state != VcpuState::Stopped {
                home.assigned = home.assigned.saturating_sub(1);
            }
        }
        // The last entry moves into the freed slot: repoint its index
        // entry and its place in a queue or on a CPU.
        let entry = self.entries.swap_remove(slot);
        let from = self.entries.len();
        if let Some(moved) = self.entries.get(slot) {
            if let Ok(at) = self.ids.binary_search_by_key(&moved.id, |&(id, _)| id) {
                if let Some(index) = self.ids.get_mut(at) {
                    index.1 = slot;
                }
            }
            if let Some(home) = self.cpus.get_mut(moved.stats.cpu.index()) {
                if moved.stats.deadline.is_some() {
                    for timer in home.timers.iter_mut().filter(|t| t.1 == from) {
                        timer.1 = slot;
                    }
                }
                match moved.stats.state {
                    VcpuState::Runnable => {
                        for s in home.queue.iter_mut().filter(|s| **s == from) {
                            *s = slot;
                        }
                    }
                    VcpuState::Running => {
                        if home.running == Some(from) {
                            home.running = Some(slot);
                        }
                    }
                    VcpuState::Blocked | VcpuState::Paused | VcpuState::Stopped => {}
                }
            }
        }
        Some(entry.stats)
    }

    /// What `cpu` runs next, at time `now`.
    ///
    /// First the blocked vCPUs of this CPU whose deadline is `now` or
    /// earlier wake, earliest deadline first, at the tail of this CPU's
    /// queue (see [`StopCause::Blocked`]). Then it continues the turn of a vCPU left at the head by an early
    /// [`StopCause::SliceEnd`]; otherwise starts the next turn in
    /// round-robin order, crediting a slice to each vCPU it passes over for
    /// debt. With its own queue empty, the CPU steals the waiting vCPU at
    /// the back of the busiest queue it may run; with nothing to steal it
    /// is idle until kicked.
    ///
    /// The slice of a `Run` ends by the earliest deadline still armed on
    /// this CPU, and `Idle` carries it (see [`Decision`]), so a vCPU's
    /// deadline is served within the run in progress when it was armed.
    /// The one exception is [`Scheduler::set_deadline`] moving a deadline
    /// earlier while this CPU runs a vCPU: it is served when that run ends.
    ///
    /// If the caller did not report the previous run, it is ended here as a
    /// [`StopCause::SliceEnd`] at `now`. An unknown CPU gets
    /// `Idle { until: None }`.
    pub fn pick(&mut self, cpu: CpuId, now: u64) -> Decision {
        let ci = cpu.index();
        if self.cpus.len() > 1 {
            self.pull_waiter(ci);
        }
        // The common case, kept short: the last run was reported, no
        // deadline is due, and the vCPU at the head of the queue runs,
        // continuing its turn or starting one with a single slice of
        // credit (see `choose`).
        if let Some(c) = self.cpus.get_mut(ci) {
            if c.running.is_none() && now < c.next_due {
                if let Some(&slot) = c.queue.front() {
                    if let Some(e) = self.entries.get_mut(slot) {
                        if e.head_runs(self.quantum) {
                            c.queue.pop_front();
                            return start(c, e, slot, ci, now, &mut self.idle_cpus);
                        }
                    }
                }
            }
        }
        self.pick_slow(ci, now)
    }

    /// `vcpu` came off `cpu` at `now` because of `cause`: it is charged the
    /// time since its `pick` and queued, blocked or retired accordingly.
    /// The blocked vCPUs of `cpu` whose deadline is `now` or earlier wake
    /// first, as at `pick`, so that they queue ahead of it.
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
        self.stopped_with(cpu, vcpu, cause, now, |_, _| {}).kick
    }

    /// [`Scheduler::stopped`] for the kernel's loop, in one lookup: `exits`
    /// adds the run's exit counts to the vCPU's counters (by exit kind,
    /// see [`EXIT_KINDS`], and "other"), and the answer also says whether the vCPU was moved to
    /// another CPU's queue, so its old CPU can give it up at once.
    pub fn stopped_with(
        &mut self,
        cpu: CpuId,
        vcpu: VcpuId,
        cause: StopCause,
        now: u64,
        exits: impl FnOnce(&mut [u64; EXIT_KINDS], &mut u64),
    ) -> Stopped {
        let none = Stopped {
            kick: None,
            moved_to: None,
        };
        let ci = cpu.index();
        let Some(c) = self.cpus.get_mut(ci) else {
            return none;
        };
        let Some(slot) = c.running else {
            return none;
        };
        if self.entries.get(slot).map(|e| e.id) != Some(vcpu) {
            return none;
        }
        if now >= c.next_due {
            // Those that became due during the run queue ahead of it.
            wake_due(c, &mut self.entries, now);
        }
        let Some(e) = self.entries.get_mut(slot) else {
            return none;
        };
        exits(&mut e.stats.exits, &mut e.stats.exits_other);
        stop(c, e, slot, cause, now, self.quantum);
        if matches!(cause, StopCause::SliceEnd) && !e.in_turn && self.cpus.len() > 1 {
            if let Some(target) = self.balance(ci, slot) {
                return Stopped {
                    kick: self.kick_for(target),
                    moved_to: Some(CpuId::from_index(target)),
                };
            }
        }
        Stopped {
            kick: self.kick_for(ci),
            moved_to: None,
        }
    }

    /// A vCPU (at `slot`) whose turn just ended on CPU `ci` went to the
    /// back of that queue. If another CPU it may run on has fewer vCPUs
    /// (queued or running) than `ci` now has waiting, it moves there
    /// instead: the back of that CPU's queue. Moving when the difference is
    /// one ("no worse") rotates vCPUs through the CPUs when they do not
    /// divide evenly, so that, say, three busy vCPUs on two CPUs each get
    /// two thirds of a CPU rather than one getting a whole CPU. A vCPU
    /// alone on its CPU never moves. Returns the CPU it moved to.
    fn balance(&mut self, ci: usize, slot: usize) -> Option<usize> {
        let here = self.cpus.get(ci)?;
        let load_here = here.queue.len() + usize::from(here.running.is_some());
        if load_here < 2 || here.queue.back() != Some(&slot) {
            return None;
        }
        let e = self.entries.get(slot)?;
        let (load_there, target) = self
            .cpus
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != ci && e.affinity.allows(j))
            .map(|(j, d)| (d.queue.len() + usize::from(d.running.is_some()), j))
            .min()?;
        if load_there + 1 > load_here {
            return None;
        }
        let here = self.cpus.get_mut(ci)?;
        here.queue.pop_back();
        here.assigned = here.assigned.saturating_sub(1);
        let there = self.cpus.get_mut(target)?;
        there.queue.push_back(slot);
        there.assigned = there.assigned.saturating_add(1);
        if let Some(e) = self.entries.get_mut(slot) {
            e.stats.cpu = CpuId::from_index(target);
        }
        Some(target)
    }

    /// Counts one VM exit of `vcpu` of the kernel's vendor-neutral exit
    /// kind `kind` (kinds of [`EXIT_KINDS`] or more count as "other").
    /// Unknown vCPUs are ignored.
    pub fn record_exit(&mut self, vcpu: VcpuId, kind: u16) {
        let Some(e) = self.entry_mut(vcpu) else {
            return;
        };
        match e.stats.exits.get_mut(usize::from(kind)) {
            Some(n) => bump(n),
            None => bump(&mut e.stats.exits_other),
        }
    }

    /// An event for `vcpu` (its timer, console input) arrived.
    ///
    /// A blocked vCPU becomes runnable at the tail of a queue: its own
    /// CPU's, unless that CPU is busy and another CPU it may run on is idle.
    /// Its deadline, if it had one, is cancelled.
    /// Returns the CPU to kick when that CPU was idle (or can take a vCPU
    /// now waiting). Waking a runnable or stopped vCPU, or an unknown one,
    /// does nothing and is not counted. Waking a running vCPU is remembered
    /// (not counted yet): if that run ends in [`StopCause::Blocked`] the
    /// vCPU stays runnable and the wake-up counts then, so an event racing
    /// with HLT is not slept through.
    pub fn wake(&mut self, vcpu: VcpuId) -> Option<CpuId> {
        let slot = self.slot(vcpu)?;
        let e = self.entries.get_mut(slot)?;
        match e.stats.state {
            VcpuState::Blocked => {}
            VcpuState::Running => {
                e.wake_pending = true;
                return None;
            }
            VcpuState::Runnable | VcpuState::Paused | VcpuState::Stopped => return None,
        }
        let home = e.stats.cpu.index();
        if e.stats.deadline.take().is_some() {
            if let Some(c) = self.cpus.get_mut(home) {
                c.disarm(slot);
            }
        }
        if e.stats.paused {
            // Woken, it would run: paused, it waits for `resume` instead.
            bump(&mut e.stats.wakeups);
            e.stats.state = VcpuState::Paused;
            return None;
        }
        let home_free = self
            .cpus
            .get(home)
            .is_some_and(|c| c.running.is_none() && c.queue.is_empty());
        let target = if home_free || self.idle_cpus == 0 {
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
        c.queue.push_back(slot);
        self.kick_for(target)
    }

    /// Pauses `vcpu`: it is not picked again, wherever it is queued, until
    /// [`Scheduler::resume`]. A queued vCPU leaves its queue at once (its
    /// turn ends as by a yield); a running one is paused when its run is
    /// reported, and a blocked one when it wakes (its deadline still
    /// passes or `wake` still comes, but it then waits for `resume`, in
    /// [`VcpuState::Paused`]). It keeps its CPU and counts in that CPU's
    /// load. False for an unknown or stopped vCPU; pausing a paused one
    /// changes nothing.
    pub fn pause(&mut self, vcpu: VcpuId) -> bool {
        let Some(slot) = self.slot(vcpu) else {
            return false;
        };
        let Some(e) = self.entries.get_mut(slot) else {
            return false;
        };
        if e.stats.state == VcpuState::Stopped {
            return false;
        }
        e.stats.paused = true;
        if e.stats.state == VcpuState::Runnable {
            if let Some(c) = self.cpus.get_mut(e.stats.cpu.index()) {
                c.queue.retain(|&s| s != slot);
            }
            hold(e);
        }
        true
    }

    /// Resumes a paused `vcpu`: one that became ready while paused joins
    /// the tail of its CPU's queue; one still running or blocked just
    /// goes on as if never paused. Returns the CPU to kick (as for
    /// [`Scheduler::wake`]). Unknown, stopped or unpaused vCPUs are left
    /// alone.
    pub fn resume(&mut self, vcpu: VcpuId) -> Option<CpuId> {
        let slot = self.slot(vcpu)?;
        let e = self.entries.get_mut(slot)?;
        e.stats.paused = false;
        if e.stats.state != VcpuState::Paused {
            return None;
        }
        e.stats.state = VcpuState::Runnable;
        let ci = e.stats.cpu.index();
        self.cpus.get_mut(ci)?.queue.push_back(slot);
        self.kick_for(ci)
    }

    /// Arms (`Some`), moves or clears (`None`) the deadline of a blocked
    /// `vcpu`, e.g. when a device timer is re-armed while it sleeps; it
    /// then wakes as if it had blocked with [`StopCause::Blocked`] and
    /// this deadline. Does nothing to a vCPU that is not blocked (a vCPU
    /// that halts gives its deadline in `Blocked`) or is unknown.
    ///
    /// Returns its CPU when that CPU is idle and its earliest deadline
    /// became earlier: it must be kicked to pick again and re-arm its
    /// timer (it counts as busy from then on, as for every kick). A CPU
    /// running a vCPU is not kicked: it serves the new deadline when that
    /// run ends, at most a slice late. A later or cleared deadline needs
    /// no kick: the CPU at worst comes back early and finds nothing due.
    pub fn set_deadline(&mut self, vcpu: VcpuId, deadline: Option<u64>) -> Option<CpuId> {
        let slot = self.slot(vcpu)?;
        let e = self.entries.get_mut(slot)?;
        if e.stats.state != VcpuState::Blocked {
            return None;
        }
        let home = e.stats.cpu.index();
        let c = self.cpus.get_mut(home)?;
        let before = c.earliest();
        if e.stats.deadline.take().is_some() {
            c.disarm(slot);
        }
        if let Some(due) = deadline {
            c.arm(due, slot);
            e.stats.deadline = Some(due);
        }
        let earlier = match (c.earliest(), before) {
            (Some(new), Some(was)) => new < was,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !(earlier && c.idle) {
            return None;
        }
        c.idle = false;
        self.idle_cpus = self.idle_cpus.saturating_sub(1);
        Some(CpuId::from_index(home))
    }

    /// `vcpu`'s figures; `None` if unknown.
    pub fn stats(&self, vcpu: VcpuId) -> Option<VcpuStats> {
        self.entry(vcpu).map(|e| e.stats)
    }

    /// Every vCPU's figures, in id order (the monitor's list).
    pub fn vcpus(&self) -> impl Iterator<Item = (VcpuId, VcpuStats)> + '_ {
        self.ids
            .iter()
            .filter_map(|&(id, slot)| self.entries.get(slot).map(|e| (id, e.stats)))
    }

    /// `vcpu`'s total time on a CPU up to `now`: [`VcpuStats::run_time`]
    /// plus, while it runs, the run in progress. `None` if unknown.
    pub fn run_time_at(&self, vcpu: VcpuId, now: u64) -> Option<u64> {
        let e = self.entry(vcpu)?;
        let current = if e.stats.state == VcpuState::Running {
            now.saturating_sub(e.started)
        } else {
            0
        };
        Some(e.stats.run_time.saturating_add(current))
    }

    /// `vcpu`'s figures, borrowed: like [`Scheduler::stats`] without
    /// copying them (the exit table alone is 256 bytes), for a caller that
    /// reads a field or two under the lock.
    pub fn stats_ref(&self, vcpu: VcpuId) -> Option<&VcpuStats> {
        self.entry(vcpu).map(|e| &e.stats)
    }

    /// Every vCPU's figures, borrowed, in id order: like
    /// [`Scheduler::vcpus`] without copying them.
    pub fn vcpus_ref(&self) -> impl Iterator<Item = (VcpuId, &VcpuStats)> + '_ {
        self.ids
            .iter()
            .filter_map(|&(id, slot)| self.entries.get(slot).map(|e| (id, &e.stats)))
    }

    /// `cpu`'s state; `None` if unknown.
    pub fn cpu_stats(&self, cpu: CpuId) -> Option<CpuStats> {
        self.cpus.get(cpu.index()).map(|c| CpuStats {
            running: c
                .running
                .and_then(|slot| self.entries.get(slot))
                .map(|e| e.id),
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
        for e in &self.entries {
            let n = match e.stats.state {
                VcpuState::Runnable => &mut counts.runnable,
                VcpuState::Running => &mut counts.running,
                VcpuState::Blocked => &mut counts.blocked,
                VcpuState::Paused => &mut counts.paused,
                VcpuState::Stopped => &mut counts.stopped,
            };
            *n = n.saturating_add(1);
            if e.stats.deadline.is_some() {
                counts.timed = counts.timed.saturating_add(1);
            }
        }
        counts
    }

    /// The slot of `vcpu`; `None` if unknown.
    fn slot(&self, vcpu: VcpuId) -> Option<usize> {
        // A vCPU numbered densely from 0 and never moved sits at its id.
        let guess = usize::try_from(vcpu.0).unwrap_or(usize::MAX);
        if self.entries.get(guess).is_some_and(|e| e.id == vcpu) {
            return Some(guess);
        }
        let at = self.ids.binary_search_by_key(&vcpu, |&(id, _)| id).ok()?;
        self.ids.get(at).map(|&(_, slot)| slot)
    }

    fn entry(&self, vcpu: VcpuId) -> Option<&Entry> {
        self.entries.get(self.slot(vcpu)?)
    }

    fn entry_mut(&mut self, vcpu: VcpuId) -> Option<&mut Entry> {
        let slot = self.slot(vcpu)?;
        self.entries.get_mut(slot)
    }

    /// [`Scheduler::pick`] in full: a run left unreported, deadlines due,
    /// a turn that needs debt paid off first, stealing, or nothing to run.
    #[inline(never)]
    fn pick_slow(&mut self, ci: usize, now: u64) -> Decision {
        let Some(current) = self.cpus.get(ci).map(|c| c.running) else {
            return Decision::Idle { until: None };
        };
        // Due ones first, so they queue ahead of a run ended here (as in
        // `stopped`).
        if let Some(c) = self.cpus.get_mut(ci) {
            wake_due(c, &mut self.entries, now);
        }
        if let Some(slot) = current {
            if let (Some(c), Some(e)) = (self.cpus.get_mut(ci), self.entries.get_mut(slot)) {
                stop(c, e, slot, StopCause::SliceEnd, now, self.quantum);
            }
        }
        let mut chosen = self.choose(ci);
        if chosen.is_none() && self.steal(ci) {
            chosen = self.choose(ci);
        }
        if let Some(slot) = chosen {
            if let (Some(c), Some(e)) = (self.cpus.get_mut(ci), self.entries.get_mut(slot)) {
                let mut decision = start(c, e, slot, ci, now, &mut self.idle_cpus);
                // The stop above or the wake-ups may have left vCPUs
                // waiting here that an idle CPU can take.
                if let Decision::Run { kick, .. } = &mut decision {
                    *kick = self.kick_for(ci);
                }
                return decision;
            }
        }
        let Some(c) = self.cpus.get_mut(ci) else {
            return Decision::Idle { until: None };
        };
        if !c.idle {
            c.idle = true;
            self.idle_cpus = self.idle_cpus.saturating_add(1);
        }
        c.idle_picks = c.idle_picks.saturating_add(1);
        Decision::Idle {
            until: c.earliest(),
        }
    }

    /// Before CPU `ci` picks: if a vCPU queued behind the running one of
    /// another CPU, allowed here and not in the middle of a turn, has
    /// waited more than half a slice longer than the vCPU at the head of
    /// `ci`'s queue, it moves to the head of `ci`'s queue and runs next.
    ///
    /// Each CPU's queue is round robin, and vCPUs rotate between CPUs when
    /// they do not divide evenly (`balance`), but the CPUs' slice ends
    /// drift against each other (overruns, host work in a run), and then a
    /// vCPU can be left alone at its turn's end and run again at once
    /// while another waits behind the other CPU's run; the drift hands
    /// such double turns to some vCPUs more than to others, and their
    /// shares drift apart (three busy guests on two CPUs got 35% and 31%
    /// of their time). Serving the longest wait first keeps every vCPU's
    /// turns coming at one rate. A CPU with an empty queue steals instead
    /// (`steal`).
    fn pull_waiter(&mut self, ci: usize) {
        let Some(here) = self.cpus.get(ci) else {
            return;
        };
        if here.running.is_some() {
            return;
        }
        let Some(head) = here.queue.front().and_then(|&h| self.entries.get(h)) else {
            return;
        };
        if head.in_turn {
            return;
        }
        let head_since = head.ready_since;
        let margin = u64::try_from(self.quantum.slice / 2).unwrap_or(0);
        let entries = &self.entries;
        let mut best: Option<(u64, usize, usize)> = None;
        for (j, other) in self.cpus.iter().enumerate() {
            if j == ci || other.running.is_none() {
                continue;
            }
            for (pos, &slot) in other.queue.iter().enumerate() {
                let Some(e) = entries.get(slot) else {
                    continue;
                };
                // One that last ran there may still be active there (the
                // kernel's VMCS, its switched registers): the kernel takes
                // it over as after a steal (`Decision::Run::migrated_from`).
                if e.in_turn || !e.affinity.allows(ci) {
                    continue;
                }
                if best.is_none_or(|(since, _, _)| e.ready_since < since) {
                    best = Some((e.ready_since, j, pos));
                }
            }
        }
        let Some((since, j, pos)) = best else {
            return;
        };
        if since.saturating_add(margin) >= head_since {
            return;
        }
        let Some(slot) = self.cpus.get_mut(j).and_then(|o| o.queue.remove(pos)) else {
            return;
        };
        if let Some(o) = self.cpus.get_mut(j) {
            o.assigned = o.assigned.saturating_sub(1);
        }
        if let Some(me) = self.cpus.get_mut(ci) {
            me.assigned = me.assigned.saturating_add(1);
            me.queue.push_front(slot);
        }
        if let Some(e) = self.entries.get_mut(slot) {
            e.stats.cpu = CpuId::from_index(ci);
        }
    }

    /// Takes the next vCPU off CPU `ci`'s queue, crediting turns (deficit
    /// round robin); its slot, or `None` when the queue is empty.
    fn choose(&mut self, ci: usize) -> Option<usize> {
        let Quantum { slice, min_run, .. } = self.quantum;
        let cpu = self.cpus.get_mut(ci)?;
        let entries = &mut self.entries;
        let head = *cpu.queue.front()?;
        if entries
            .get_mut(head)
            .is_some_and(|e| e.head_runs(self.quantum))
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
        for (pos, &slot) in cpu.queue.iter().enumerate() {
            let credit = entries.get(slot).map_or(0, |e| e.stats.credit);
            let rounds = rounds_needed(credit, slice, min_run);
            if best.is_none_or(|(fewest, _)| rounds < fewest) {
                best = Some((rounds, pos));
            }
        }
        let (rounds, chosen) = best?;
        for (pos, &slot) in cpu.queue.iter().enumerate() {
            if let Some(e) = entries.get_mut(slot) {
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
        let slot = cpu.queue.pop_front()?;
        if let Some(e) = entries.get_mut(slot) {
            e.in_turn = true;
        }
        Some(slot)
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
            let found = victim.queue.iter().enumerate().rev().find(|&(_, &slot)| {
                self.entries
                    .get(slot)
                    .is_some_and(|e| e.affinity.allows(ci))
            });
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
        let Some(slot) = victim.queue.remove(pos) else {
            return false;
        };
        victim.assigned = victim.assigned.saturating_sub(1);
        if let Some(e) = self.entries.get_mut(slot) {
            e.stats.cpu = CpuId::from_index(ci);
        }
        let Some(me) = self.cpus.get_mut(ci) else {
            return false;
        };
        me.assigned = me.assigned.saturating_add(1);
        me.queue.push_back(slot);
        true
    }

    /// After work was queued on CPU `ci`: the CPU to kick, if any. That is
    /// `ci` itself when idle, else, when a vCPU has to wait on `ci`, the
    /// first idle CPU that may run one of `ci`'s queued vCPUs (it will
    /// steal it). The kicked CPU counts as busy from now on, so one idle
    /// CPU is not kicked twice for the same work.
    fn kick_for(&mut self, ci: usize) -> Option<CpuId> {
        // Only an idle CPU is ever kicked, `ci` included.
        if self.idle_cpus == 0 {
            return None;
        }
        self.kick_idle(ci)
    }

    /// [`Scheduler::kick_for`] when some CPU is idle.
    #[inline(never)]
    fn kick_idle(&mut self, ci: usize) -> Option<CpuId> {
        let cpu = self.cpus.get(ci)?;
        let target = if cpu.idle {
            (!cpu.queue.is_empty()).then_some(ci)
        } else if cpu.waiting() == 0 {
            None
        } else {
            let entries = &self.entries;
            self.cpus
                .iter()
                .enumerate()
                .find(|&(j, other)| {
                    j != ci
                        && other.idle
                        && cpu
                            .queue
                            .iter()
                            .any(|&slot| entries.get(slot).is_some_and(|e| e.affinity.allows(j)))
                })
                .map(|(j, _)| j)
        }?;
        let t = self.cpus.get_mut(target)?;
        if t.idle {
            t.idle = false;
            self.idle_cpus = self.idle_cpus.saturating_sub(1);
        }
        Some(CpuId::from_index(target))
    }
}

impl Entry {
    /// Whether this vCPU, at the head of its queue, runs next: it is in a
    /// turn with at least `min_run` left, or it owes less than a slice, so
    /// that one slice of credit (which this adds, starting its turn) brings
    /// it to `min_run`. Changes nothing when it does not run.
    ///
    /// This is `choose` for the head in the nearly universal case: a vCPU
    /// one slice from running needs the fewest credits there can be and is
    /// the earliest in order, so it runs, and nobody else is credited
    /// anything (only the head can be in a turn, so nothing else changes).
    #[inline]
    fn head_runs(&mut self, q: Quantum) -> bool {
        if self.in_turn && self.stats.credit >= q.min_run {
            return true;
        }
        // `rounds_needed(credit) == 1`; credit never goes below
        // `max_debt`, so the difference cannot overflow.
        if self.stats.credit < q.min_run - q.slice {
            return false;
        }
        self.stats.credit = self.stats.credit.saturating_add(q.slice);
        self.in_turn = true;
        true
    }
}

/// Puts the vCPU `e` in `slot`, just taken off CPU `c`'s (index `ci`)
/// queue, on that CPU at `now`; `idle_cpus` is the scheduler's count.
#[inline]
fn start(
    c: &mut Cpu,
    e: &mut Entry,
    slot: usize,
    ci: usize,
    now: u64,
    idle_cpus: &mut usize,
) -> Decision {
    let cpu = CpuId::from_index(ci);
    let migrated_from = e.stats.last_cpu.filter(|&last| last != cpu);
    if migrated_from.is_some() {
        bump(&mut e.stats.migrations);
    }
    e.stats.last_cpu = Some(cpu);
    e.stats.cpu = cpu;
    e.stats.state = VcpuState::Running;
    bump(&mut e.stats.slices);
    e.started = now;
    c.running = Some(slot);
    if c.idle {
        c.idle = false;
        *idle_cpus = idle_cpus.saturating_sub(1);
    }
    // Back by the earliest deadline here (due ones were woken: it is
    // later than `now`).
    let credit = u64::try_from(e.stats.credit).unwrap_or(1);
    let slice = credit.min(c.next_due.saturating_sub(now)).max(1);
    Decision::Run {
        vcpu: e.id,
        slice,
        migrated_from,
        kick: None,
    }
}

/// Ends the run of the vCPU `e` in `slot` on CPU `c` at `now` because of
/// `cause` (see [`Scheduler::stopped`]).
#[inline]
fn stop(c: &mut Cpu, e: &mut Entry, slot: usize, cause: StopCause, now: u64, q: Quantum) {
    c.running = None;
    let ran = now.saturating_sub(e.started);
    e.stats.run_time = e.stats.run_time.saturating_add(ran);
    e.stats.credit = charge(e.stats.credit, ran, q.max_debt);
    let pending = core::mem::take(&mut e.wake_pending);
    match cause {
        StopCause::SliceEnd if e.stats.paused => {
            bump(&mut e.stats.slice_ends);
            hold(e);
        }
        StopCause::Yield if e.stats.paused => {
            bump(&mut e.stats.yields);
            hold(e);
        }
        StopCause::SliceEnd => {
            bump(&mut e.stats.slice_ends);
            e.stats.state = VcpuState::Runnable;
            if e.in_turn && e.stats.credit >= q.min_run {
                // Ended early: the turn goes on at the next pick.
                c.queue.push_front(slot);
            } else {
                // Used up: the remainder (< min_run) or the debt carries
                // over to the next turn.
                e.in_turn = false;
                e.ready_since = now;
                c.queue.push_back(slot);
            }
        }
        StopCause::Yield => {
            bump(&mut e.stats.yields);
            give_up_turn(e);
            e.ready_since = now;
            e.stats.state = VcpuState::Runnable;
            c.queue.push_back(slot);
        }
        StopCause::Blocked { until } => {
            bump(&mut e.stats.blocks);
            give_up_turn(e);
            e.ready_since = now;
            if pending || until.is_some_and(|due| due <= now) {
                // The event that would wake it came while it ran, or its
                // deadline has already passed.
                bump(&mut e.stats.wakeups);
                if e.stats.paused {
                    e.stats.state = VcpuState::Paused;
                } else {
                    e.stats.state = VcpuState::Runnable;
                    c.queue.push_back(slot);
                }
            } else {
                e.stats.state = VcpuState::Blocked;
                if let Some(due) = until {
                    e.stats.deadline = Some(due);
                    c.arm(due, slot);
                }
            }
        }
        StopCause::Stopped => {
            e.in_turn = false;
            e.stats.state = VcpuState::Stopped;
            c.assigned = c.assigned.saturating_sub(1);
        }
    }
}

/// Wakes the blocked vCPUs of CPU `c` whose deadline is `now` or earlier,
/// earliest first, to the tail of its queue. They stay on this CPU: it is
/// about to pick (or stopping a vCPU, then picking); an idle CPU may then be
/// kicked to steal one. Their places in the queue are reserved.
#[inline(never)]
fn wake_due(c: &mut Cpu, entries: &mut [Entry], now: u64) {
    while let Some(&(due, slot)) = c.timers.last() {
        if due > now {
            break;
        }
        c.timers.pop();
        if let Some(e) = entries.get_mut(slot) {
            e.stats.deadline = None;
            bump(&mut e.stats.wakeups);
            if e.stats.paused {
                e.stats.state = VcpuState::Paused;
            } else {
                e.stats.state = VcpuState::Runnable;
                c.queue.push_back(slot);
            }
        }
    }
    c.next_due = c.earliest().unwrap_or(u64::MAX);
}

/// `credit` less `ran` ticks, with the debt capped at `max_debt`
/// ([`MAX_DEBT_SLICES`] slices, negative).
fn charge(credit: i64, ran: u64, max_debt: i64) -> i64 {
    let ran = i64::try_from(ran).unwrap_or(i64::MAX);
    credit.saturating_sub(ran).max(max_debt)
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

/// A paused vCPU that would be queued: it waits off every queue, its
/// turn ended as by a yield.
fn hold(e: &mut Entry) {
    give_up_turn(e);
    e.stats.state = VcpuState::Paused;
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
