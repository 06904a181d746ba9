//! Memory management for Ferrovisor: address newtypes ([`addr`]), the
//! physical frame allocator ([`frame`]) and the kernel heap ([`heap`]).
//!
//! The crate is pure bookkeeping: it never maps memory, never touches a
//! control register and never reads or writes the frames it hands out, so
//! everything but the heap's final pointer use is tested on the host.
#![cfg_attr(not(test), no_std)]

pub use addr;
mod error;
pub mod frame;
pub mod heap;

pub use error::MmError;
