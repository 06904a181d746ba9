//! The hypercall ABI: what a guest asks of Ferrovisor with VMCALL.
//!
//! - `VMCALL` (0F 01 C1) at CPL 0. RAX holds the call number, RBX, RCX and
//!   RDX the arguments; the result comes back in RAX. Outside 64-bit mode
//!   only the low 32 bits of each register count (EAX, EBX, ECX, EDX), and
//!   the result is written zero-extended.
//! - A VMCALL at CPL 1 to 3 gets #UD, so a guest kernel's user programs
//!   cannot reach the hypervisor behind its back.
//!
//! | RAX | name | arguments | result |
//! | --- | --- | --- | --- |
//! | 0 | [`Hypercall::Exit`] | RBX: exit code (32 bits) | does not return: the guest stops with `exited with code <n>` |
//! | 1 | [`Hypercall::Print`] | RBX: guest-physical address, RCX: length, at most [`PRINT_MAX`] | 0; [`BAD_ARGUMENT`] when the range is not in RAM or too long. The bytes reach the guest's console as if written to COM1 one by one |
//! | other | — | — | [`UNKNOWN_CALL`] |

use addr::GuestPhysAddr;

/// `FV_EXIT`.
pub const EXIT: u64 = 0;
/// `FV_PRINT`.
pub const PRINT: u64 = 1;
/// The longest [`Hypercall::Print`].
pub const PRINT_MAX: u64 = 4096;
/// The result of an unknown call number (-1).
pub const UNKNOWN_CALL: u64 = u64::MAX;
/// The result of a call with a bad argument (-2).
pub const BAD_ARGUMENT: u64 = u64::MAX - 1;

/// A decoded hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Stop the guest with an exit code.
    Exit {
        /// The code, printed in the stop line.
        code: u32,
    },
    /// Print guest memory to the guest's console.
    Print {
        /// Where the bytes start.
        gpa: GuestPhysAddr,
        /// How many bytes.
        len: u64,
    },
    /// A call number this ABI does not define.
    Unknown {
        /// The number from RAX.
        number: u64,
    },
}

impl Hypercall {
    /// Decodes the call from RAX, RBX and RCX; `long_mode` says whether the
    /// guest runs 64-bit code (else only the low 32 bits count).
    pub fn decode(rax: u64, rbx: u64, rcx: u64, long_mode: bool) -> Self {
        let width = |v: u64| if long_mode { v } else { v & 0xFFFF_FFFF };
        match width(rax) {
            EXIT => Self::Exit { code: rbx as u32 },
            PRINT => Self::Print {
                gpa: GuestPhysAddr::new(width(rbx)),
                len: width(rcx),
            },
            number => Self::Unknown { number },
        }
    }

    /// The RAX value a result leaves, as the guest's mode sees it.
    pub fn result(value: u64, long_mode: bool) -> u64 {
        if long_mode {
            value
        } else {
            value & 0xFFFF_FFFF
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_call() {
        assert_eq!(
            Hypercall::decode(0, 7, 0, true),
            Hypercall::Exit { code: 7 }
        );
        assert_eq!(
            Hypercall::decode(1, 0x10_0000, 12, true),
            Hypercall::Print {
                gpa: GuestPhysAddr::new(0x10_0000),
                len: 12
            }
        );
        assert_eq!(
            Hypercall::decode(9, 0, 0, true),
            Hypercall::Unknown { number: 9 }
        );
    }

    #[test]
    fn outside_long_mode_only_the_low_half_counts() {
        // Stale upper halves left by 64-bit code do not change the call.
        assert_eq!(
            Hypercall::decode(
                0xFFFF_0000_0000_0001,
                0xAAAA_0000_0000_8000,
                0x5555_0000_0000_0004,
                false
            ),
            Hypercall::Print {
                gpa: GuestPhysAddr::new(0x8000),
                len: 4
            }
        );
        // In 64-bit mode the same RAX is an unknown call.
        assert!(matches!(
            Hypercall::decode(0xFFFF_0000_0000_0001, 0, 0, true),
            Hypercall::Unknown { .. }
        ));
        assert_eq!(Hypercall::result(UNKNOWN_CALL, false), 0xFFFF_FFFF);
        assert_eq!(Hypercall::result(BAD_ARGUMENT, true), u64::MAX - 1);
    }
}
