//! The AMD SVM (AMD-V) backend's decisions, host-tested: the VMCB's
//! layout ([`vmcb`]), exits decoded from it into the vendor-neutral
//! [`vcpu::exit::Exit`], the vCPU's state behind
//! [`vcpu::access::VcpuAccess`] over a VMCB and the saved GPRs, the
//! initial VMCB contents and intercepts, the I/O and MSR permission maps,
//! the nested page tables ([`npt`]) and what the CPU offers ([`caps`]).
//! Together with the kernel binary's `svm` module (EFER.SVME, the host
//! save area, VMRUN), this is the only code that names SVM; it sits
//! beside the VT-x backend (`vtx`, `vmx`) behind the same boundary.
//!
//! References are to the AMD64 Architecture Programmer's Manual, Volume 2
//! ("APM"), chapter 15 (Secure Virtual Machine) and appendix B (the VMCB
//! layout).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod access;
pub mod capacity;
pub mod caps;
pub mod exit;
pub mod insn;
pub mod maps;
pub mod npt;
pub mod regs;
pub mod setup;
pub mod vmcb;
