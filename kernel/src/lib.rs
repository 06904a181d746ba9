//! Host-testable parts of the Ferrovisor kernel.
#![cfg_attr(not(test), no_std)]
extern crate alloc;
pub mod acpi;
pub mod archive;
pub mod config;
pub mod devices;
pub mod disk;
pub mod loader;
pub mod vcpu;
