//! What a virtual CPU sees and does, decided without touching hardware and
//! without naming a virtualization extension: the vendor-neutral exit and
//! vCPU access layer (`exit`, `access`), MMIO instruction emulation
//! (`mmio`), string I/O (`string_io`), the CPUID values, the MSR allow-list, the hypercall ABI and the stop reasons. A backend (VT-x in
//! the `vtx` crate) decodes its exits into [`exit::Exit`] and implements
//! [`access::VcpuAccess`]; the kernel binary carries the decisions out;
//! the host tests check them.
#![cfg_attr(not(test), no_std)]
// Guests (and their images) are untrusted: nothing here may panic on what
// they control, so the panicking forms are refused outright.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

extern crate alloc;

pub mod access;
pub mod apic_bus;
pub mod com_out;
pub mod cpuid;
pub mod cr;
pub mod exit;
pub mod fake;
pub mod hypercall;
pub mod mmio;
pub mod msr;
pub mod stop;
pub mod string_io;
pub mod vm;
