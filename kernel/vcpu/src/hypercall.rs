//! The hypercall ABI: what a guest asks of Ferrovisor with VMCALL.
//!
//! - `VMCALL` (0F 01 C1) at CPL 0. RAX holds the call number, RBX, RCX and
//!   RDX the arguments; the result comes back in RAX. Outside 64-bit mode
//!   only the low 32 bits of each register count (EAX, EBX, ECX, EDX), and
//!   the result is written zero-extended.
//! - Every Ferrovisor call number carries [`PREFIX`] in bits 31:16
//!   (0x4656, "FV"), so the numbers other hypervisors' guests pass by habit
//!   (0, small integers, KVM's and Hyper-V's) are never Ferrovisor calls:
//!   they, and every other number this table does not list, RAX = 0
//!   included, return [`UNKNOWN_CALL`] and the guest goes on after the
//!   VMCALL.
//! - A VMCALL at CPL 1 to 3 gets #UD, so a guest kernel's user programs
//!   cannot reach the hypervisor behind its back.
//! - CPUID.4000_0001H:EAX is the ABI's version
//!   ([`super::cpuid::HYPERCALL_ABI_VERSION`]): 2 for this table. Version 1
//!   numbered the calls 0 and 1, without the prefix.
//!
//! | RAX | name | arguments | result |
//! | --- | --- | --- | --- |
//! | 0x4656_0001 | [`Hypercall::Exit`] | RBX: exit code (32 bits) | does not return: the guest stops with `exited with code <n>` |
//! | 0x4656_0002 | [`Hypercall::Print`] | RBX: guest-physical address, RCX: length, at most [`PRINT_MAX`] | 0; [`BAD_ARGUMENT`] when the range is not in RAM or too long. The bytes reach the guest's console as if written to COM1 one by one |
//! | other | — | — | [`UNKNOWN_CALL`] (-1; 0xFFFF_FFFF outside 64-bit mode) |

use addr::GuestPhysAddr;

/// Bits 31:16 of every Ferrovisor call number: "FV".
pub const PREFIX: u64 = 0x4656_0000;
/// `FV_EXIT`.
pub const EXIT: u64 = PREFIX | 1;
/// `FV_PRINT`.
pub const PRINT: u64 = PREFIX | 2;
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
            Hypercall::decode(0x4656_0001, 7, 0, true),
            Hypercall::Exit { code: 7 }
        );
        assert_eq!(
            Hypercall::decode(0x4656_0002, 0x10_0000, 12, true),
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
    fn other_hypervisors_habits_are_unknown_calls() {
        // Version 1's numbers, KVM's (1..=12), Hyper-V's call codes, the
        // prefix alone and its neighbours: none ends or prints.
        for number in [
            0,
            1,
            2,
            5,
            9,
            12,
            0x10001,
            PREFIX,
            PREFIX | 3,
            0x4655_0001,
            0x4657_0001,
        ] {
            for long in [false, true] {
                assert_eq!(
                    Hypercall::decode(number, 0, 0, long),
                    Hypercall::Unknown { number },
                    "{number:#x}"
                );
            }
        }
        // In 64-bit mode the upper half counts too.
        assert!(matches!(
            Hypercall::decode(EXIT | 1 << 32, 0, 0, true),
            Hypercall::Unknown { .. }
        ));
        assert_eq!(EXIT, 0x4656_0001);
        assert_eq!(PRINT, 0x4656_0002);
        assert_eq!(&(EXIT as u32 >> 16).to_be_bytes(), &[0, 0, b'F', b'V']);
    }

    #[test]
    fn outside_long_mode_only_the_low_half_counts() {
        // Stale upper halves left by 64-bit code do not change the call.
        assert_eq!(
            Hypercall::decode(
                0xFFFF_0000_4656_0002,
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
            Hypercall::decode(0xFFFF_0000_4656_0002, 0, 0, true),
            Hypercall::Unknown { .. }
        ));
        assert_eq!(Hypercall::result(UNKNOWN_CALL, false), 0xFFFF_FFFF);
        assert_eq!(Hypercall::result(BAD_ARGUMENT, true), u64::MAX - 1);
    }
}
