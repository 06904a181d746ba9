//! The guest general-purpose registers the VM-exit path saves and the
//! VM-entry path loads: every GPR but RSP, which the VMCS holds (SDM Vol.
//! 3C, 25.4.1 "Guest Register State").

use crate::exit::Gpr;

/// The guest's general-purpose registers while it is not running.
///
/// Laid out as sixteen 8-byte slots in the exit qualifications' register
/// order ([`Gpr`]: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15), so the
/// register an exit qualification names is one index away. The RSP slot is
/// unused: the VMCS holds the guest's RSP, and [`GuestRegisters::get`] and
/// [`GuestRegisters::set`] refuse it so no code reads a stale copy. The
/// entry/exit trampoline in [`crate::instructions`] reads and writes the slots at
/// the fixed offsets this layout gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestRegisters {
    slots: [u64; 16],
}

const _: () = assert!(core::mem::size_of::<GuestRegisters>() == 128);

impl GuestRegisters {
    /// All registers zero.
    pub const fn new() -> Self {
        Self { slots: [0; 16] }
    }

    /// The value of `reg`; `None` for RSP, which lives in the VMCS.
    pub fn get(&self, reg: Gpr) -> Option<u64> {
        match reg {
            Gpr::Rsp => None,
            _ => self.slots.get(usize::from(reg.number())).copied(),
        }
    }

    /// Sets `reg`; RSP (in the VMCS) is refused with `false`.
    pub fn set(&mut self, reg: Gpr, value: u64) -> bool {
        match (reg, self.slots.get_mut(usize::from(reg.number()))) {
            (Gpr::Rsp, _) | (_, None) => false,
            (_, Some(slot)) => {
                *slot = value;
                true
            }
        }
    }

    /// RAX.
    pub const fn rax(&self) -> u64 {
        self.slots[0]
    }
    /// RCX.
    pub const fn rcx(&self) -> u64 {
        self.slots[1]
    }
    /// RDX.
    pub const fn rdx(&self) -> u64 {
        self.slots[2]
    }
    /// RBX.
    pub const fn rbx(&self) -> u64 {
        self.slots[3]
    }
    /// Sets RAX.
    pub fn set_rax(&mut self, value: u64) {
        self.slots[0] = value;
    }
    /// Sets RCX.
    pub fn set_rcx(&mut self, value: u64) {
        self.slots[1] = value;
    }
    /// Sets RDX.
    pub fn set_rdx(&mut self, value: u64) {
        self.slots[2] = value;
    }
    /// Sets RBX.
    pub fn set_rbx(&mut self, value: u64) {
        self.slots[3] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_qualification_numbering() {
        let mut r = GuestRegisters::new();
        for reg in Gpr::ALL {
            if reg != Gpr::Rsp {
                assert!(r.set(reg, 0x100 + u64::from(reg.number())));
            }
        }
        assert_eq!(r.rax(), 0x100);
        assert_eq!(r.rcx(), 0x101);
        assert_eq!(r.rdx(), 0x102);
        assert_eq!(r.rbx(), 0x103);
        assert_eq!(r.get(Gpr::R15), Some(0x10F));
        assert_eq!(r.get(Gpr::Rdi), Some(0x107));
    }

    #[test]
    fn rsp_is_not_kept_here() {
        let mut r = GuestRegisters::new();
        assert!(!r.set(Gpr::Rsp, 5));
        assert_eq!(r.get(Gpr::Rsp), None);
        assert_eq!(r, GuestRegisters::new());
    }
}
