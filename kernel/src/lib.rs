//! The host tests of the Ferrovisor binary's own code. Everything that can
//! be decided without hardware is a crate of its own under `kernel/`
//! (`acpi`, `config`, `disk`, `loader`, `image`, `devices`, `vcpu`, `vtx`,
//! `run`); what is left here is the binary's hardware glue, and only its
//! disk drivers have unit tests, which this library runs.
#![cfg_attr(not(test), no_std)]
extern crate alloc;

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
