//! The boundary between vendor-neutral exit handling and a virtualization
//! backend: what the handlers may read and change of a vCPU that has just
//! exited, named the way the architecture names it, not the way VT-x or
//! SVM store it.
//!
//! A backend (VT-x in the `vtx` crate, AMD SVM next) implements
//! [`VcpuAccess`] over its own state (VMCS and GPR file, or VMCB and save
//! area) and decodes its exits into [`super::exit::Exit`]. The handlers in
//! [`super::exit`] are generic over the trait, so they are monomorphised
//! per backend and cost no indirect call on the exit path.

use core::fmt;

/// A general-purpose register, numbered as instructions encode it (SDM
/// Vol. 2A, Table 2-2; AMD uses the same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    /// RAX.
    Rax = 0,
    /// RCX.
    Rcx = 1,
    /// RDX.
    Rdx = 2,
    /// RBX.
    Rbx = 3,
    /// RSP.
    Rsp = 4,
    /// RBP.
    Rbp = 5,
    /// RSI.
    Rsi = 6,
    /// RDI.
    Rdi = 7,
    /// R8.
    R8 = 8,
    /// R9.
    R9 = 9,
    /// R10.
    R10 = 10,
    /// R11.
    R11 = 11,
    /// R12.
    R12 = 12,
    /// R13.
    R13 = 13,
    /// R14.
    R14 = 14,
    /// R15.
    R15 = 15,
}

impl Gpr {
    /// Every register, in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register with encoding `n` (0..=15).
    pub fn from_number(n: u8) -> Option<Gpr> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// `RAX`, `R8`, ...
    // The 16 names match the 16 variants, numbered 0..=15 by their
    // encodings: the index cannot be out of range.
    #[allow(clippy::indexing_slicing)]
    pub fn name(self) -> &'static str {
        [
            "RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11",
            "R12", "R13", "R14", "R15",
        ][self as usize]
    }
}

/// A segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// LDTR.
    Ldtr,
    /// TR.
    Tr,
}

/// A segment register's hidden part, in the descriptor's attribute layout
/// (SDM Vol. 3A, 3.4.5: type in bits 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13,
/// D/B 14, G 15; bit 16 "unusable" as VT-x reports it). A backend whose
/// hardware packs the attributes otherwise (SVM's 12-bit form) converts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentState {
    /// The selector.
    pub selector: u16,
    /// The base address.
    pub base: u64,
    /// The limit in bytes (already scaled by G).
    pub limit: u32,
    /// The attributes, as above.
    pub attributes: u32,
}

/// Attribute bit: a 64-bit code segment (CS.L).
pub const SEGMENT_L: u32 = 1 << 13;

impl SegmentState {
    /// The descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attributes >> 5) & 3) as u8
    }
}

/// An event the backend delivers at the next entry (SDM Vol. 3C, 27.6;
/// AMD APM Vol. 2, 15.20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A hardware exception, with its error code where it pushes one.
    Exception {
        /// The vector (0..=31).
        vector: u8,
        /// The error code, if one is delivered.
        error_code: Option<u32>,
    },
    /// An external (maskable) interrupt.
    ExternalInterrupt {
        /// The vector (32..=255).
        vector: u8,
    },
    /// A non-maskable interrupt.
    Nmi,
}

/// What the handlers may do to a vCPU that has exited. Registers are the
/// guest's view: CR0 and CR4 as the guest last wrote them, whatever bits
/// the hardware forces while it runs.
///
/// Every method may fail only where the backend itself can (a VMREAD on a
/// VMCS that is not current): such an error is a hypervisor bug, and the
/// handlers stop the guest with it.
pub trait VcpuAccess {
    /// The backend's error for an access that failed.
    type Error: fmt::Display;

    /// A general-purpose register.
    fn gpr(&self, reg: Gpr) -> Result<u64, Self::Error>;
    /// Sets a general-purpose register.
    fn set_gpr(&mut self, reg: Gpr, value: u64) -> Result<(), Self::Error>;
    /// RIP.
    fn rip(&self) -> Result<u64, Self::Error>;
    /// Sets RIP.
    fn set_rip(&mut self, value: u64) -> Result<(), Self::Error>;
    /// RFLAGS.
    fn rflags(&self) -> Result<u64, Self::Error>;
    /// Moves RIP past the instruction that exited and drops the
    /// one-instruction interrupt shadow (STI, MOV SS) it may have set: the
    /// instruction has completed. Outside 64-bit mode RIP wraps at 4 GiB.
    fn skip_instruction(&mut self) -> Result<(), Self::Error>;
    /// Drops the one-instruction interrupt shadow (STI, MOV SS) after a
    /// handler completed the instruction itself and moved RIP with
    /// [`VcpuAccess::set_rip`] (an emulated MMIO access).
    fn clear_interrupt_shadow(&mut self) -> Result<(), Self::Error>;
    /// CR0 as the guest sees it.
    fn cr0(&self) -> Result<u64, Self::Error>;
    /// CR3.
    fn cr3(&self) -> Result<u64, Self::Error>;
    /// CR4 as the guest sees it.
    fn cr4(&self) -> Result<u64, Self::Error>;
    /// The guest's view of just the CR4 bits in `bits`: what CPUID's
    /// answer depends on, on the hottest exit, so a backend that can read
    /// guest-owned bits in one access overrides it.
    #[inline]
    fn cr4_bits(&self, bits: u64) -> Result<u64, Self::Error> {
        Ok(self.cr4()? & bits)
    }
    /// IA32_EFER.
    fn efer(&self) -> Result<u64, Self::Error>;
    /// Installs CR0 `value` (already checked by the caller): the guest
    /// sees `value`, the hardware runs with whatever the backend must add.
    fn set_cr0(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Installs CR4 `value` (already checked by the caller).
    fn set_cr4(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Installs CR3 `value` (already checked by the caller).
    fn set_cr3(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Installs the four PDPTEs a PAE-paging guest's emulated MOV to CR0,
    /// CR3 or CR4 loaded (already checked by the caller): the processor
    /// holds them in registers (SDM Vol. 3A, 4.4.1), and a backend whose
    /// second-level translation keeps them in its state (VT-x with EPT:
    /// the guest PDPTE fields) loads them at the next entry.
    fn set_pdptes(&mut self, pdptes: [u64; 4]) -> Result<(), Self::Error>;
    /// Installs IA32_EFER `value`; the backend keeps whatever else follows
    /// EFER.LMA in step (VT-x: the "IA-32e mode guest" entry control).
    fn set_efer(&mut self, value: u64) -> Result<(), Self::Error>;
    /// CR4 bits the guest may never set on this backend (VMXE while VT-x
    /// is hidden, bits the CPU cannot run a guest with).
    fn cr4_forbidden(&self) -> u64;
    /// A segment register's attributes alone (cheaper than
    /// [`VcpuAccess::segment`] where only the mode or CPL is needed).
    fn segment_attributes(&self, seg: Segment) -> Result<u32, Self::Error>;
    /// A segment register.
    fn segment(&self, seg: Segment) -> Result<SegmentState, Self::Error>;
    /// Delivers `event` at the next entry.
    fn inject(&mut self, event: Event) -> Result<(), Self::Error>;
    /// Sets the guest's CR2, as the CPU does when it delivers a page
    /// fault: a handler that injects #PF ([`Event::Exception`] vector 14)
    /// sets it first. Injecting an exception does not write CR2 on either
    /// vendor's hardware, so the backend must have it in place before the
    /// entry: VT-x keeps CR2 outside the VMCS (SDM Vol. 3C, 25.4.1 lists
    /// the guest registers it holds), SVM in the VMCB's save area.
    fn set_cr2(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Whether an event is already set up for delivery at the next entry
    /// (injected by a handler, or re-injected after an exit cut its
    /// delivery short).
    fn event_pending(&self) -> Result<bool, Self::Error>;
    /// Asks for an exit as soon as the guest can take an external interrupt
    /// (`true`), or stops asking.
    fn request_interrupt_window(&mut self, on: bool) -> Result<(), Self::Error>;
    /// Whether the guest blocks external interrupts for one instruction
    /// (STI or MOV SS shadow) right now.
    fn interrupt_shadow(&self) -> Result<bool, Self::Error>;
    /// Whether the guest blocks NMIs now: it is inside an NMI handler, from
    /// the NMI's delivery until its IRET (SDM Vol. 3A, 6.7.1). An NMI
    /// injected then would fail the VM entry, so it waits.
    fn nmi_blocked(&self) -> Result<bool, Self::Error>;
    /// The backend's name for raw exit reason `reason`
    /// ([`super::exit::Exit::Unknown`]).
    fn exit_name(&self, reason: u32) -> &'static str {
        let _ = reason;
        "unknown"
    }
    /// Why VM entry failed, in words, for an
    /// [`super::exit::Exit::EntryFailed`] with these raw values.
    fn entry_failure(&self, reason: u32, qualification: u64) -> alloc::string::String {
        alloc::format!("VM entry failed: exit reason {reason:#x}, qualification {qualification:#x}")
    }
    /// Sets the offset the hardware adds to the host TSC for the guest's
    /// RDTSC (two's complement).
    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), Self::Error>;
    /// The offset the hardware adds to the host TSC: guest TSC values (a
    /// TSC-deadline write) minus it are host TSC values.
    fn tsc_offset(&self) -> Result<u64, Self::Error>;
}
