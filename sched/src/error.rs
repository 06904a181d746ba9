//! The scheduler's one error type.

use core::fmt;

use crate::{CpuId, VcpuId, MAX_CPUS, MAX_SLICE};

/// What went wrong when creating the scheduler or placing a vCPU.
///
/// Only set-up can fail: the per-CPU entry points (`pick`, `stopped`,
/// `wake`, `record_exit`) treat unknown ids as documented no-ops instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// [`Scheduler::new`](crate::Scheduler::new) was given no CPUs.
    NoCpus,
    /// More CPUs than [`MAX_CPUS`].
    TooManyCpus {
        /// The count that was asked for.
        cpus: u32,
    },
    /// The slice is 0 or longer than [`MAX_SLICE`] ticks.
    BadSlice {
        /// The slice that was asked for, in ticks.
        slice: u64,
    },
    /// The vCPU is already known (a stopped vCPU stays known until
    /// [`remove`](crate::Scheduler::remove)).
    DuplicateVcpu(VcpuId),
    /// The affinity names a CPU that does not exist.
    NoSuchCpu {
        /// The vCPU being placed.
        vcpu: VcpuId,
        /// The CPU its affinity names.
        cpu: CpuId,
        /// How many CPUs there are.
        cpus: u32,
    },
    /// The affinity is an empty set, so the vCPU could run nowhere.
    EmptyAffinity(VcpuId),
    /// The run queues could not reserve room for the vCPU.
    OutOfMemory(VcpuId),
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SchedError::NoCpus => {
                write!(f, "the scheduler was given 0 CPUs; it needs at least one")
            }
            SchedError::TooManyCpus { cpus } => write!(
                f,
                "the scheduler was given {cpus} CPUs; it handles at most {MAX_CPUS}"
            ),
            SchedError::BadSlice { slice } => write!(
                f,
                "a slice of {slice} ticks is out of range: it must be 1..={MAX_SLICE} ticks"
            ),
            SchedError::DuplicateVcpu(vcpu) => write!(
                f,
                "{vcpu} is already scheduled; remove it before adding it again"
            ),
            SchedError::NoSuchCpu { vcpu, cpu, cpus } => write!(
                f,
                "{vcpu}: its affinity names {cpu}, but the CPUs are 0..={}",
                cpus.saturating_sub(1)
            ),
            SchedError::EmptyAffinity(vcpu) => write!(
                f,
                "{vcpu}: its affinity is empty; name at least one CPU or leave it unpinned"
            ),
            SchedError::OutOfMemory(vcpu) => {
                write!(f, "{vcpu}: no memory for its place in the run queues")
            }
        }
    }
}
