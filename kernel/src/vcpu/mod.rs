//! What a virtual CPU sees and does, decided without touching hardware:
//! CPUID values, the MSR allow-list, the hypercall ABI, the initial VMCS
//! contents and the exit dispatch. The kernel binary carries the decisions
//! out; the host tests check them.

pub mod cpuid;
pub mod exit;
pub mod hypercall;
pub mod msr;
pub mod setup;
pub mod stop;
