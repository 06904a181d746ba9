//! Intel VT-x for Ferrovisor: the VT-x MSR table, capability decoding and
//! the "can this CPU run guests" verdict, the VMXON prerequisites, the VMCS
//! as typed fields, VMX instruction errors, decoded VM exits, and EPT.
//!
//! Decisions are pure and tested on the host ([`caps`], [`controls`],
//! [`feature_control`], [`availability`], [`vmxon`], [`vmcs`], [`error`],
//! [`exit`]); the privileged instructions that feed them live in
//! [`instructions`] alone.
#![cfg_attr(not(test), no_std)]

pub mod availability;
pub mod bitmaps;
pub mod caps;
pub mod controls;
pub mod ept;
pub mod error;
pub mod execution;
pub mod exit;
pub mod fast;
pub mod feature_control;
#[cfg(target_arch = "x86_64")]
pub mod instructions;
pub mod msr;
pub mod regs;
pub mod vmcs;
pub mod vmxon;
