//! The vCPU scheduler: per-CPU run queues of vCPUs, round-robin time slices
//! driven by the VMX-preemption timer, blocking on HLT and wake-up on events,
//! placement and affinity.
//!
//! Nothing is implemented yet: this crate is filled by the scheduler issue.
//! It will see vCPUs only through a small trait, so the VT-x backend in `vmx`
//! and a later AMD SVM backend plug in without changes here, and it will be
//! tested on the host with a fake clock.
#![cfg_attr(not(test), no_std)]
