//! Host-testable parts of the Ferrovisor kernel.
#![cfg_attr(not(test), no_std)]
extern crate alloc;
pub mod acpi;
pub mod config;
pub mod disk;
pub mod image;
pub mod loader;
pub mod run;
pub mod vcpu;
pub mod vtx;

// The guest device models are a crate of their own (`kernel/devices`);
// re-exported so `crate::devices::...` and `kernel::devices::...` paths stay.
pub use ::devices;

// The binary's disk drivers also run their unit tests here: they reach
// hardware only through traits the tests fake, and `arch`/`memory` are
// stand-ins that panic if called. (The binary itself has `test = false`.)
#[cfg(test)]
extern crate self as kernel;
#[cfg(test)]
#[path = "test_stubs/arch.rs"]
mod arch;
// The hardware paths are the binary's; this copy only runs the tests.
#[cfg(test)]
#[allow(dead_code)]
#[path = "drivers/mod.rs"]
mod drivers;
#[cfg(test)]
#[path = "test_stubs/memory.rs"]
mod memory;
