//! The vCPU scheduler: one round-robin run queue per physical CPU, time
//! slices with exact run-time accounting, blocking on HLT and wake-up on
//! events, placement by affinity and load, and per-vCPU figures for the
//! console monitor.
//!
//! The crate is pure bookkeeping, tested on the host with a fake clock. It
//! knows vCPUs only by [`VcpuId`] and CPUs only by [`CpuId`]: the kernel
//! keeps the vCPU objects (VT-x today, SVM later) and acts on the
//! [`Decision`]s, so no backend reaches into this crate. All CPUs' queues
//! live in one [`Scheduler`] with no locking of its own; the kernel wraps it
//! in its spin lock and calls the per-CPU entry points from each CPU.
//!
//! # Driving it
//!
//! Each CPU loops: [`Scheduler::pick`] → run the vCPU for at most `slice`
//! ticks (the kernel converts them into VMX-preemption-timer counts) →
//! [`Scheduler::stopped`] with why it came off. `Idle { until }` means
//! halt until kicked or, when `until` is `Some`, until that time (the
//! kernel arms its local APIC timer in TSC-deadline mode). Events for a
//! halted vCPU call [`Scheduler::wake`]. `wake`, `stopped`, `pick` (in
//! `Run::kick`), [`Scheduler::set_deadline`] and [`Scheduler::add`] may
//! name a CPU to kick: that CPU was idle and now has work (possibly work
//! it should steal) or an earlier deadline, so the caller must send it a
//! wake-up interrupt; it counts as busy from then on.
//!
//! The per-vCPU exit counters ([`VcpuStats::exits`], [`EXIT_KINDS`] of
//! them) are indexed by the kernel's vendor-neutral exit kind, so they
//! mean the same under VT-x and SVM.
//!
//! Time is in *ticks* of the caller's [`Clock`] (the kernel: TSC ticks),
//! read on the CPU that runs the vCPU, so `pick` and `stopped` for one run
//! always use the same CPU's clock.
//!
//! # Policy: round-robin order, deficit accounting
//!
//! Each CPU serves its queue in round-robin order, but turns are paid for
//! by *credit* (deficit round robin):
//!
//! - When a vCPU's turn comes it gets one slice of credit, and runs with
//!   `slice` = its credit. What it actually ran (from `pick` to `stopped`)
//!   is charged against its credit, so a vCPU preempted late goes into debt
//!   and its next turn is shorter by that much; a vCPU whose debt exceeds a
//!   whole slice gets the slice credited and sits its turn out, as often as
//!   needed. Debt is capped at [`MAX_DEBT_SLICES`] slices so that one bogus
//!   clock reading cannot starve a vCPU for long.
//! - A run ended early ([`StopCause::SliceEnd`] before the credit is used,
//!   e.g. the kernel needed the CPU after an exit) leaves the vCPU at the
//!   head of the queue with the rest of its credit: its turn continues at
//!   the next `pick`. Once less than a minimum run (a slice / 8) is left, the
//!   turn ends and the remainder carries over to the next turn.
//! - [`StopCause::Yield`] and [`StopCause::Blocked`] end the turn at once:
//!   the vCPU goes to the tail (or off the queue) and gives up unused
//!   credit; debt stays. So nobody banks time by yielding or sleeping.
//!
//! Over a long run every always-runnable vCPU on a CPU is credited one slice
//! per round and consumes what it is credited, whatever its exits and
//! overruns: their shares are equal. A blocked vCPU is not in the queue,
//! so it costs nothing and holds nobody up; a woken one rejoins at the
//! tail.
//!
//! # Timed wake-ups
//!
//! A vCPU that halts waiting for a timer it armed blocks with
//! `Blocked { until: Some(deadline) }` ([`StopCause::Blocked`]; in ticks,
//! for the kernel the TSC deadline of the guest's timer). It then wakes at the first of:
//! [`Scheduler::wake`] (which cancels the deadline), or the deadline
//! passing, which the scheduler notices itself. While it sleeps,
//! [`Scheduler::set_deadline`] arms, moves or clears its deadline (a
//! device timer re-armed meanwhile).
//!
//! Each CPU keeps the deadlines of the blocked vCPUs whose CPU it is,
//! sorted, with the earliest cached, so the hot path compares one number
//! and nothing scans the vCPUs. The rule, exactly:
//!
//! - `pick(cpu, now)` first wakes this CPU's vCPUs whose deadline is `now`
//!   or earlier, earliest first: each joins the tail of this CPU's queue,
//!   as a `wake` would (this CPU is about to pick, so they stay here), and
//!   counts as a wake-up. It then picks as usual, so a vCPU woken by its
//!   deadline runs in its round-robin turn: after a turn in progress and
//!   the vCPUs queued ahead of it, never by preempting them. `stopped` on
//!   the CPU does the same before it queues the vCPU it stops, so a vCPU
//!   that became due during a run goes ahead of it when its turn ended.
//! - A `Run`'s slice ends no later than the earliest deadline still armed
//!   on this CPU, and `Idle` carries that deadline, so the CPU is back in
//!   `pick` when the vCPU becomes due and queues it on time. A cut run is
//!   charged only what it ran; stopped as `SliceEnd`, the vCPU continues
//!   its turn at the next pick.
//! - When the wake-ups leave vCPUs waiting here while another CPU that may
//!   run one is idle, `Run::kick` names that CPU: kicked, it steals one,
//!   just as `wake` would have placed a woken vCPU on an idle CPU when its
//!   own is busy.
//! - A deadline set earlier by `set_deadline` is served on time if its CPU
//!   is idle (the call returns the CPU to kick, so it re-arms its timer);
//!   if that CPU is running a vCPU, when that run ends.
//!
//! A timed-blocked vCPU is a blocked vCPU for everything else: it counts
//! in its CPU's load for placement, it is never stolen or moved while
//! blocked, and only when it wakes can it go elsewhere (by `wake`'s rule,
//! or stolen once queued).
//!
//! # Placement and migration
//!
//! [`Scheduler::add`] puts a vCPU on the least-loaded CPU its affinity
//! allows (fewest vCPUs assigned, blocked ones included; ties to the lowest
//! index). A vCPU moves only when it is not running: a CPU that would go
//! idle steals the waiting vCPU at the back of the busiest queue it may run,
//! `wake` places a woken vCPU on an idle CPU it may run on when its own
//! CPU is busy, and a vCPU whose turn ends on a CPU where others wait moves
//! to a CPU it may run on that has fewer vCPUs (queued or running) than
//! its own CPU now has, even by one. That last rule rotates vCPUs through
//! the CPUs when they do not divide evenly (three busy vCPUs on two CPUs
//! each get two thirds of a CPU); a vCPU alone on its CPU never moves, and
//! evenly loaded CPUs keep their vCPUs. And before a CPU picks, a vCPU
//! queued behind another CPU's run that has waited more than half a slice
//! longer than the head of this CPU's queue moves to the head of this
//! queue (taken over like a stolen one where it last ran there): the
//! longest wait is served first, so when the CPUs' slice ends drift
//! against each other no vCPU gets a second turn in a row while another
//! waits, and the rotation stays fair. [`Decision::Run::migrated_from`] is `Some` exactly when the
//! vCPU last ran on another CPU, so the kernel knows to VMCLEAR there and
//! VMLAUNCH here; when it is `None` nothing moved and nothing extra is owed.
//!
//! # Pausing
//!
//! [`Scheduler::pause`] holds a vCPU (the console monitor's `pause`): it
//! is never picked, stolen or moved until [`Scheduler::resume`]. One that
//! is queued leaves its queue at once; one that runs or sleeps carries on
//! until it would next be queued (its run reported, its deadline passed,
//! a `wake`) and then waits in [`VcpuState::Paused`], off every queue, so
//! a paused guest's timers simply wait. Resumed, it joins the tail of its
//! CPU's queue. It keeps its CPU and counts in that CPU's load meanwhile.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod affinity;
mod error;
mod ids;
mod scheduler;
mod stats;

pub use error::SchedError;
pub use ids::{Clock, CpuId, VcpuId};
pub use scheduler::{
    Decision, Placement, Scheduler, StopCause, Stopped, MAX_CPUS, MAX_DEBT_SLICES, MAX_SLICE,
};
pub use stats::{CpuStats, StateCounts, VcpuState, VcpuStats, EXIT_KINDS};
