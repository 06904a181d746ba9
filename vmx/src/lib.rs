//! Intel VT-x for Ferrovisor: the VT-x MSR table, capability decoding and
//! the "can this CPU run guests" verdict (VMXON, VMCS, exits and EPT follow).
//!
//! Decisions are pure and tested on the host ([`caps`], [`controls`],
//! [`feature_control`], [`availability`]); the privileged instructions that
//! feed them live in [`instructions`] alone.
#![cfg_attr(not(test), no_std)]

pub mod availability;
pub mod caps;
pub mod controls;
pub mod feature_control;
#[cfg(target_arch = "x86_64")]
pub mod instructions;
pub mod msr;
