//! Ferrovisor's guest device models: pure state machines the VM-exit
//! handlers drive, tested on the host. Nothing here executes a privileged
//! instruction, reads a VMCS or knows the scheduler: the crate depends on
//! neither `vmx`, `sched` nor `kernel`.
//!
//! Guests are untrusted: no guest-controlled value can make this crate
//! panic, which the lints below hold to.
#![cfg_attr(not(test), no_std)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

extern crate alloc;

pub mod console;
pub mod uart;
