//! `cargo xtask bench`: the benchmarks that write BENCHMARKS.md.
//!
//! The first one (the round-trip cost of a CPUID exit and of a COM1 output
//! exit, measured by a guest under Bochs) needs guests, which arrive with
//! the VT-x core. Until then this says so and fails, rather than print
//! figures that measure nothing.

/// Runs the benchmarks.
pub fn main(_args: &[String]) -> Result<(), String> {
    Err("no benchmarks yet: the first ones (VM-exit round trips under Bochs) need the \
         test guests of the VT-x core"
        .into())
}
