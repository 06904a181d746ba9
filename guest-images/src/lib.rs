//! The guests Ferrovisor boots in its tests and its default configuration.
//!
//! Nothing lives here yet. The VT-x core issue adds the sources of the test
//! guests (real-, protected- and long-mode guests, a CPUID-loop guest and an
//! escape guest), which xtask builds from source; the config-partition issue
//! adds the default `hypervisor.toml` and the recipe for the Linux guest.
#![cfg_attr(not(test), no_std)]
