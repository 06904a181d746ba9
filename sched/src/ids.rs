//! The names the scheduler and its caller share: vCPU and physical-CPU
//! identifiers and the clock that time is read from.

use core::fmt;

/// A vCPU, named by the caller (the kernel numbers its vCPUs; the scheduler
/// never looks inside one, so VT-x and SVM vCPUs are scheduled alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u32);

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vCPU {}", self.0)
    }
}

/// A physical CPU by its index, `0..cpus` as given to
/// [`Scheduler::new`](crate::Scheduler::new).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub u32);

impl CpuId {
    /// The index into per-CPU tables; an index that does not fit `usize`
    /// becomes `usize::MAX`, which no table has, so it reads as unknown.
    pub(crate) fn index(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The CPU at table index `index` (tables never exceed
    /// [`MAX_CPUS`](crate::MAX_CPUS) entries, so it always fits).
    pub(crate) fn from_index(index: usize) -> Self {
        CpuId(u32::try_from(index).unwrap_or(u32::MAX))
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}", self.0)
    }
}

/// The caller's clock. Every time the scheduler sees is in *ticks* of this
/// clock: the kernel reads the TSC (so slices come back in TSC ticks, which
/// it converts to VMX-preemption-timer counts); tests use a fake clock.
///
/// The scheduler itself takes `now` as an argument and never calls the
/// clock, so it stays pure; the trait names the contract: `now` never goes
/// backwards on one CPU. A reading earlier than the start of a run counts as
/// no time at all rather than as a huge one.
pub trait Clock {
    /// The current time in ticks.
    fn now(&self) -> u64;
}
