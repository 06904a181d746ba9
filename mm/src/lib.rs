//! Memory management for Ferrovisor: address newtypes ([`addr`]), the
//! physical frame allocator ([`frame`]), the kernel heap ([`heap`]) and the
//! W^X policy for the host's own page tables ([`wx`]).
//!
//! The crate is pure bookkeeping: it never maps memory itself (the W^X walk
//! in [`wx`] edits page tables only through a trait its caller implements),
//! never touches a control register and never reads or writes the frames
//! it hands out, so everything but the heap's final pointer use is tested
//! on the host.
#![cfg_attr(not(test), no_std)]

pub use addr;
mod error;
pub mod frame;
pub mod heap;
pub mod wx;

pub use error::MmError;
