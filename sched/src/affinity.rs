//! The set of physical CPUs a vCPU may run on.

use alloc::vec::Vec;

use crate::{CpuId, SchedError, VcpuId};

/// Where a vCPU may run: anywhere, or only on the CPUs of a bit set
/// (bit `i % 64` of word `i / 64` is CPU `i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Affinity {
    /// Any CPU: the scheduler spreads and balances it.
    Any,
    /// Only these CPUs (never empty, every bit below the CPU count).
    Only(Vec<u64>),
}

impl Affinity {
    /// Checks `cpus` against a machine of `count` CPUs and builds the set;
    /// `None` is [`Affinity::Any`].
    pub(crate) fn new(
        vcpu: VcpuId,
        cpus: Option<&[CpuId]>,
        count: usize,
    ) -> Result<Self, SchedError> {
        let Some(cpus) = cpus else {
            return Ok(Affinity::Any);
        };
        if cpus.is_empty() {
            return Err(SchedError::EmptyAffinity(vcpu));
        }
        let mut words = Vec::new();
        words
            .try_reserve_exact(count.div_ceil(64))
            .map_err(|_| SchedError::OutOfMemory(vcpu))?;
        words.resize(count.div_ceil(64), 0);
        for &cpu in cpus {
            let i = cpu.index();
            let word = words.get_mut(i / 64).filter(|_| i < count);
            let Some(word) = word else {
                return Err(SchedError::NoSuchCpu {
                    vcpu,
                    cpu,
                    cpus: u32::try_from(count).unwrap_or(u32::MAX),
                });
            };
            *word |= 1 << (i % 64);
        }
        Ok(Affinity::Only(words))
    }

    /// Whether the vCPU may run on CPU `cpu` (an index).
    pub(crate) fn allows(&self, cpu: usize) -> bool {
        match self {
            Affinity::Any => true,
            Affinity::Only(words) => words
                .get(cpu / 64)
                .is_some_and(|w| w & (1 << (cpu % 64)) != 0),
        }
    }

    /// Whether the vCPU is pinned (has a configured set).
    pub(crate) fn is_pinned(&self) -> bool {
        matches!(self, Affinity::Only(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_allows_every_cpu() {
        let a = Affinity::new(VcpuId(0), None, 4).unwrap();
        assert!((0..4).all(|c| a.allows(c)));
        assert!(!a.is_pinned());
    }

    #[test]
    fn set_allows_exactly_its_cpus_across_words() {
        let a = Affinity::new(VcpuId(0), Some(&[CpuId(1), CpuId(64), CpuId(1)]), 70).unwrap();
        let allowed: Vec<usize> = (0..70).filter(|&c| a.allows(c)).collect();
        assert_eq!(allowed, [1, 64]);
        assert!(!a.allows(usize::MAX));
        assert!(a.is_pinned());
    }

    #[test]
    fn out_of_range_and_empty_sets_are_errors() {
        assert_eq!(
            Affinity::new(VcpuId(7), Some(&[CpuId(0), CpuId(4)]), 4),
            Err(SchedError::NoSuchCpu {
                vcpu: VcpuId(7),
                cpu: CpuId(4),
                cpus: 4
            })
        );
        // Inside the last bit-set word but past the CPU count.
        assert!(Affinity::new(VcpuId(7), Some(&[CpuId(5)]), 4).is_err());
        assert!(Affinity::new(VcpuId(7), Some(&[CpuId(u32::MAX)]), 4).is_err());
        assert_eq!(
            Affinity::new(VcpuId(7), Some(&[]), 4),
            Err(SchedError::EmptyAffinity(VcpuId(7)))
        );
    }
}
