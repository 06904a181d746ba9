//! The guest general-purpose registers the VMRUN trampoline saves and
//! loads: every GPR but RAX and RSP, which the VMCB's save area holds
//! (APM Vol. 2, 15.5.1: VMRUN loads RAX and RSP from the VMCB and #VMEXIT
//! stores them there).

use vcpu::access::Gpr;

/// The guest's general-purpose registers while it is not running.
///
/// Sixteen 8-byte slots in the instruction encoding's register order
/// ([`Gpr`]: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15), so the
/// trampoline in the kernel reads and writes register `n` at offset
/// `8 * n`. The RAX and RSP slots are unused (the VMCB holds both):
/// [`Gprs::get`] and [`Gprs::set`] refuse them so no code reads a stale
/// copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Gprs {
    slots: [u64; 16],
}

const _: () = assert!(core::mem::size_of::<Gprs>() == 128);

impl Gprs {
    /// All registers zero.
    pub const fn new() -> Self {
        Self { slots: [0; 16] }
    }

    /// The value of `reg`; `None` for RAX and RSP, which live in the VMCB.
    pub fn get(&self, reg: Gpr) -> Option<u64> {
        match reg {
            Gpr::Rax | Gpr::Rsp => None,
            _ => self.slots.get(reg as usize).copied(),
        }
    }

    /// Sets `reg`; RAX and RSP (in the VMCB) are refused with `false`.
    pub fn set(&mut self, reg: Gpr, value: u64) -> bool {
        match (reg, self.slots.get_mut(reg as usize)) {
            (Gpr::Rax | Gpr::Rsp, _) | (_, None) => false,
            (_, Some(slot)) => {
                *slot = value;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rax_and_rsp_live_in_the_vmcb() {
        let mut g = Gprs::new();
        assert!(!g.set(Gpr::Rax, 1));
        assert!(!g.set(Gpr::Rsp, 1));
        assert_eq!(g.get(Gpr::Rax), None);
        assert!(g.set(Gpr::R15, 7));
        assert_eq!(g.get(Gpr::R15), Some(7));
        assert!(g.set(Gpr::Rcx, 3));
        assert_eq!(g.get(Gpr::Rcx), Some(3));
    }
}
