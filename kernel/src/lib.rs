//! Host-testable parts of the Ferrovisor kernel.
#![cfg_attr(not(test), no_std)]
pub mod acpi;
