//! What the VM-exit trampoline answers by itself, without returning to
//! Rust: a CPUID exit whose answer the vCPU was already given once.
//!
//! A CPUID exit that goes through the run loop costs about 250 host
//! instructions: the whole register file saved and loaded, the exit
//! decoded, the handler, the loop's clock read and checks. Its answer,
//! though, is a pure function of the leaf, the subleaf and the guest's
//! CR4.OSXSAVE and CR4.PKE for a given vCPU (see the CPUID policy's cache
//! in the `vcpu` crate). So once Rust has answered a leaf, the backend
//! copies the answer here, into [`RunFrame::cpuid`], and the trampoline
//! (`ferrovisor_vm_exit` in [`crate::instructions`]) answers the same
//! question again in about 50 instructions: it saves the four registers
//! CPUID writes, reads the exit reason and the TSC, finds the answer by the same
//! index as Rust's own cache, checks the leaf, the subleaf and the two CR4 bits,
//! moves RIP past the instruction and resumes the guest. Anything
//! unusual (another exit, a different question, an interrupt shadow to
//! clear, RIP wrapping at 4 GiB) leaves the fast path before it has
//! changed anything, and Rust handles the exit as before.
//!
//! What the fast path leaves out, and why that is sound:
//! - Time: the guest is charged from one exit Rust sees to the next, so
//!   the fast exits in between are charged to it as well. The run ends by
//!   the VMX-preemption timer, whose count VM exit saves; the backend
//!   fills the table only where that exit control is on, since without it
//!   every entry would restart the timer and a guest asking CPUID in a
//!   loop would never be preempted. The timer counts only while the guest
//!   runs, though, not while the host answers its exits, so a guest that
//!   spends most of its time in fast exits would stretch its slice; the
//!   fast path therefore also reads the TSC and leaves every exit to Rust
//!   once [`RunFrame::fast_until`] (the timer's deadline) has passed, and
//!   the run loop's clock check ends the slice there as for any exit.
//! - Figures: each fast exit is counted in [`RunFrame::fast_cpuid_exits`],
//!   which the backend adds to the vCPU's CPUID counts at its next exit
//!   through Rust.
//! - Interrupts: nothing the guest can be given changes on a CPUID exit.
//!   A device timer due ends the run with the preemption timer, and
//!   another CPU's IPI or kick with an external-interrupt exit; neither
//!   takes the fast path.

use crate::regs::GuestRegisters;

/// How many answers the trampoline keeps: direct-mapped by
/// [`CpuidAnswers::index`].
pub const CPUID_ANSWERS: usize = 16;

/// The guest CR4 bits a CPUID answer depends on: OSXSAVE (bit 18, CPUID
/// leaf 1 ECX.OSXSAVE) and PKE (bit 22, leaf 7 ECX.OSPKE).
pub const CPUID_CR4_BITS: u32 = (1 << 18) | (1 << 22);

/// Marks an empty slot: no CR4 value masked with [`CPUID_CR4_BITS`]
/// equals it.
const EMPTY: u32 = u32::MAX;

/// One answer: the question (leaf, subleaf, the guest's CR4 bits) and
/// what CPUID returns. 32 bytes, at the offsets the trampoline uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CpuidAnswer {
    leaf: u32,
    subleaf: u32,
    /// Guest CR4 & [`CPUID_CR4_BITS`] when it was answered; [`EMPTY`] for
    /// an empty slot.
    cr4: u32,
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
    _pad: u32,
}

impl CpuidAnswer {
    const EMPTY: Self = Self {
        leaf: 0,
        subleaf: 0,
        cr4: EMPTY,
        eax: 0,
        ebx: 0,
        ecx: 0,
        edx: 0,
        _pad: 0,
    };
}

/// The answers the trampoline gives by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CpuidAnswers {
    slots: [CpuidAnswer; CPUID_ANSWERS],
}

impl Default for CpuidAnswers {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuidAnswers {
    /// No answers.
    pub const fn new() -> Self {
        Self {
            slots: [CpuidAnswer::EMPTY; CPUID_ANSWERS],
        }
    }

    /// The slot of `leaf`: its low four bits, with bit 31 (the extended
    /// range) and bit 30 (the hypervisor range) folded into bits 3 and 2,
    /// as `(leaf ^ leaf >> 28) % 16`. The trampoline computes the same.
    pub const fn index(leaf: u32) -> usize {
        ((leaf ^ (leaf >> 28)) as usize) % CPUID_ANSWERS
    }

    /// Remembers that CPUID `leaf`/`subleaf`, asked with guest CR4 `cr4`,
    /// returns `[eax, ebx, ecx, edx]`; it replaces whatever its slot held.
    /// The caller promises the answer is the one the vCPU gets for that
    /// question every time.
    pub fn remember(&mut self, leaf: u32, subleaf: u32, cr4: u64, answer: [u32; 4]) {
        let [eax, ebx, ecx, edx] = answer;
        if let Some(slot) = self.slots.get_mut(Self::index(leaf)) {
            *slot = CpuidAnswer {
                leaf,
                subleaf,
                cr4: cr4 as u32 & CPUID_CR4_BITS,
                eax,
                ebx,
                ecx,
                edx,
                _pad: 0,
            };
        }
    }

    /// Forgets every answer.
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// What the trampoline answers for `leaf`/`subleaf` with guest CR4
    /// `cr4`, or `None` when it leaves the exit to Rust: the model of
    /// its lookup, for the tests.
    pub fn answer(&self, leaf: u32, subleaf: u32, cr4: u64) -> Option<[u32; 4]> {
        let slot = self.slots.get(Self::index(leaf))?;
        (slot.leaf == leaf && slot.subleaf == subleaf && slot.cr4 == cr4 as u32 & CPUID_CR4_BITS)
            .then_some([slot.eax, slot.ebx, slot.ecx, slot.edx])
    }
}

/// What the trampoline works on while a vCPU runs: its registers, the
/// CPUID answers it gives by itself, and how many it gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RunFrame {
    /// The guest's GPRs while it does not run.
    pub regs: GuestRegisters,
    /// The answers the fast path gives.
    pub cpuid: CpuidAnswers,
    /// CPUID exits the fast path answered since the count was last taken.
    pub fast_cpuid_exits: u64,
    /// The TSC value from which the fast path answers nothing: when the
    /// current run's timer (the slice's end, or a device deadline) is due.
    /// 0 (the start) turns the fast path off.
    pub fast_until: u64,
}

impl RunFrame {
    /// Zeroed registers, no answers.
    pub const fn new() -> Self {
        Self {
            regs: GuestRegisters::new(),
            cpuid: CpuidAnswers::new(),
            fast_cpuid_exits: 0,
            fast_until: 0,
        }
    }

    /// The fast path's count since the last call, and starts over.
    pub fn take_fast_cpuid_exits(&mut self) -> u64 {
        core::mem::take(&mut self.fast_cpuid_exits)
    }
}

// The offsets `ferrovisor_vm_exit` uses (crate::instructions).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(RunFrame, regs) == 0);
    assert!(offset_of!(RunFrame, cpuid) == 128);
    assert!(offset_of!(RunFrame, fast_cpuid_exits) == 128 + 32 * CPUID_ANSWERS);
    assert!(offset_of!(RunFrame, fast_until) == 648);
    assert!(size_of::<CpuidAnswer>() == 32);
    assert!(offset_of!(CpuidAnswer, leaf) == 0);
    assert!(offset_of!(CpuidAnswer, subleaf) == 4);
    assert!(offset_of!(CpuidAnswer, cr4) == 8);
    assert!(offset_of!(CpuidAnswer, eax) == 12);
    assert!(offset_of!(CpuidAnswer, ebx) == 16);
    assert!(offset_of!(CpuidAnswer, ecx) == 20);
    assert!(offset_of!(CpuidAnswer, edx) == 24);
    assert!(CPUID_ANSWERS == 16);
    assert!(CPUID_CR4_BITS == 0x0044_0000);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_answers_nothing() {
        let t = CpuidAnswers::new();
        for leaf in [0, 1, 0xD, 0x4000_0000, 0x8000_0000, u32::MAX] {
            for cr4 in [0, 1 << 18, 1 << 22, u64::MAX] {
                assert_eq!(t.answer(leaf, 0, cr4), None);
                assert_eq!(t.answer(leaf, u32::MAX, cr4), None);
            }
        }
    }

    #[test]
    fn an_answer_needs_the_same_leaf_subleaf_and_cr4_bits() {
        let mut t = CpuidAnswers::new();
        let cr4 = (1 << 18) | (1 << 5);
        t.remember(1, 0, cr4, [1, 2, 3, 4]);
        assert_eq!(t.answer(1, 0, cr4), Some([1, 2, 3, 4]));
        // Other CR4 bits do not matter; OSXSAVE and PKE do.
        assert_eq!(t.answer(1, 0, 1 << 18), Some([1, 2, 3, 4]));
        assert_eq!(t.answer(1, 0, 0), None);
        assert_eq!(t.answer(1, 0, cr4 | (1 << 22)), None);
        assert_eq!(t.answer(1, 1, cr4), None);
        // Leaf 0x11 shares the slot and is a different question.
        assert_eq!(t.answer(0x11, 0, cr4), None);
    }

    #[test]
    fn ranges_fold_into_different_slots() {
        assert_eq!(CpuidAnswers::index(0), 0);
        assert_eq!(CpuidAnswers::index(1), 1);
        assert_eq!(CpuidAnswers::index(0x8000_0000), 8);
        assert_eq!(CpuidAnswers::index(0x4000_0000), 4);
        assert_ne!(CpuidAnswers::index(0x8000_0001), CpuidAnswers::index(1));
        assert_ne!(CpuidAnswers::index(0x4000_0000), CpuidAnswers::index(0));
        let mut t = CpuidAnswers::new();
        t.remember(0x8000_0001, 0, 0, [5, 6, 7, 8]);
        t.remember(1, 0, 0, [1, 2, 3, 4]);
        assert_eq!(t.answer(0x8000_0001, 0, 0), Some([5, 6, 7, 8]));
        assert_eq!(t.answer(1, 0, 0), Some([1, 2, 3, 4]));
    }

    #[test]
    fn a_new_answer_replaces_its_slot_and_clear_forgets_all() {
        let mut t = CpuidAnswers::new();
        t.remember(2, 0, 0, [1, 1, 1, 1]);
        t.remember(0x12, 0, 0, [2, 2, 2, 2]);
        assert_eq!(t.answer(2, 0, 0), None);
        assert_eq!(t.answer(0x12, 0, 0), Some([2, 2, 2, 2]));
        t.clear();
        assert_eq!(t, CpuidAnswers::new());
    }

    #[test]
    fn the_fast_count_is_taken_once() {
        let mut f = RunFrame::new();
        f.fast_cpuid_exits = 7;
        assert_eq!(f.take_fast_cpuid_exits(), 7);
        assert_eq!(f.take_fast_cpuid_exits(), 0);
    }
}
