//! The privileged instructions of the `vmx` crate, and the only place with
//! `asm!`: RDMSR/WRMSR and the read of the VT-x capability MSRs, CR0/CR4,
//! VMXON/VMXOFF, VMCLEAR/VMPTRLD/VMPTRST, VMREAD/VMWRITE (and
//! [`HardwareVmcs`], the current VMCS as a [`VmcsAccess`]), INVEPT and
//! INVVPID, and VMLAUNCH/VMRESUME with the VM-exit path ([`vm_run`]).
//!
//! Every VMX instruction reads CF and ZF in the same `asm!` block that runs
//! it (SDM Vol. 3C, 31.2 "Conventions"), so nothing the compiler emits in
//! between can change them; VMfailValid is completed by reading the
//! VM-instruction error field into an [`InstructionError`].
//!
//! Everything here runs only on the target; host tests exercise the pure
//! decisions these functions feed ([`crate::caps`]), never the functions.

use core::arch::asm;
use core::marker::PhantomData;

use addr::HostPhysAddr;

use crate::caps::{RawVmxMsrs, TrueControlMsrs};
use crate::error::{InstructionError, VmFail, VmxStatus};
use crate::fast::RunFrame;
use crate::msr::{self, Msr};
use crate::vmcs::{FieldEncoding, ReadOnly32, VmcsAccess};

/// Reads a model-specific register with RDMSR.
///
/// # Safety
///
/// The caller must run at CPL 0, and `msr` must exist on this CPU: RDMSR of
/// an MSR the CPU does not implement raises #GP(0). For the VT-x MSRs the
/// existence rules are those of [`RawVmxMsrs`] (SDM Vol. 3D, Appendix A).
pub unsafe fn rdmsr(msr: Msr) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and that the MSR exists, so RDMSR
    // does not fault. It reads no memory, does not touch the stack and
    // leaves the flags alone (SDM Vol. 2B, RDMSR).
    unsafe {
        asm!(
            "rdmsr",
            in("ecx") msr.index(),
            out("eax") low,
            out("edx") high,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// Reads the VT-x capability MSRs of the calling CPU, only those that exist:
/// the TRUE control MSRs iff IA32_VMX_BASIC bit 55 is 1;
/// IA32_VMX_PROCBASED_CTLS2 iff "activate secondary controls" may be 1;
/// IA32_VMX_EPT_VPID_CAP iff "enable EPT" or "enable VPID" may be 1;
/// IA32_VMX_VMFUNC iff "enable VM functions" may be 1.
///
/// # Safety
///
/// The caller must run at CPL 0 on a CPU with CPUID.1:ECX.VMX = 1: the
/// capability MSRs do not exist otherwise (SDM Vol. 3D, Appendix A: RDMSR of
/// them raises #GP(0)). VMX need not be enabled in IA32_FEATURE_CONTROL.
pub unsafe fn read_vmx_msrs() -> RawVmxMsrs {
    // SAFETY: CPL 0 and CPUID.1:ECX.VMX = 1 by the caller's promise;
    // 480H-48AH exist on every CPU with VMX (SDM Vol. 4, Table 2-2).
    let mut raw = unsafe {
        RawVmxMsrs {
            basic: rdmsr(msr::IA32_VMX_BASIC),
            pinbased_ctls: rdmsr(msr::IA32_VMX_PINBASED_CTLS),
            procbased_ctls: rdmsr(msr::IA32_VMX_PROCBASED_CTLS),
            exit_ctls: rdmsr(msr::IA32_VMX_EXIT_CTLS),
            entry_ctls: rdmsr(msr::IA32_VMX_ENTRY_CTLS),
            misc: rdmsr(msr::IA32_VMX_MISC),
            cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
            vmcs_enum: rdmsr(msr::IA32_VMX_VMCS_ENUM),
            procbased_ctls2: None,
            ept_vpid_cap: None,
            true_ctls: None,
            vmfunc: None,
        }
    };
    if RawVmxMsrs::true_controls_exist(raw.basic) {
        // SAFETY: IA32_VMX_BASIC bit 55 is 1, so 48DH-490H exist (SDM
        // Vol. 3D, A.1).
        raw.true_ctls = Some(unsafe {
            TrueControlMsrs {
                pinbased: rdmsr(msr::IA32_VMX_TRUE_PINBASED_CTLS),
                procbased: rdmsr(msr::IA32_VMX_TRUE_PROCBASED_CTLS),
                exit: rdmsr(msr::IA32_VMX_TRUE_EXIT_CTLS),
                entry: rdmsr(msr::IA32_VMX_TRUE_ENTRY_CTLS),
            }
        });
    }
    if RawVmxMsrs::procbased_ctls2_exists(raw.procbased_ctls) {
        // SAFETY: IA32_VMX_PROCBASED_CTLS bit 63 is 1, so 48BH exists (SDM
        // Vol. 3D, A.3.3).
        let ctls2 = unsafe { rdmsr(msr::IA32_VMX_PROCBASED_CTLS2) };
        raw.procbased_ctls2 = Some(ctls2);
        if RawVmxMsrs::ept_vpid_cap_exists(ctls2) {
            // SAFETY: IA32_VMX_PROCBASED_CTLS2 bit 33 or 37 is 1, so 48CH
            // exists (SDM Vol. 3D, A.10).
            raw.ept_vpid_cap = Some(unsafe { rdmsr(msr::IA32_VMX_EPT_VPID_CAP) });
        }
        if RawVmxMsrs::vmfunc_exists(ctls2) {
            // SAFETY: IA32_VMX_PROCBASED_CTLS2 bit 45 is 1, so 491H exists
            // (SDM Vol. 3D, A.11).
            raw.vmfunc = Some(unsafe { rdmsr(msr::IA32_VMX_VMFUNC) });
        }
    }
    raw
}

/// Writes a model-specific register with WRMSR.
///
/// # Safety
///
/// The caller must run at CPL 0, `msr` must exist on this CPU and accept
/// `value` (WRMSR raises #GP(0) otherwise: the VT-x capability MSRs are
/// read-only, and IA32_FEATURE_CONTROL faults once locked), and the write
/// must not break an invariant the rest of the system relies on (for
/// IA32_FEATURE_CONTROL: write it only while unlocked, with the lock bit, as
/// [`crate::feature_control`] decides).
pub unsafe fn wrmsr(msr: Msr, value: u64) {
    // SAFETY: CPL 0, an existing writable MSR and an acceptable value by the
    // caller's promise, so WRMSR does not fault. It touches no memory or
    // stack and leaves the flags alone (SDM Vol. 2B, WRMSR).
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr.index(),
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags),
        );
    }
}

/// Reads CR0.
///
/// # Safety
///
/// The caller must run at CPL 0 (MOV from CR0 raises #GP(0) otherwise).
pub unsafe fn read_cr0() -> u64 {
    let value: u64;
    // SAFETY: CPL 0 by the caller's promise; reading CR0 has no side
    // effect (SDM Vol. 2B, MOV—Move to/from Control Registers).
    unsafe {
        asm!("mov {}, cr0", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Writes CR0.
///
/// # Safety
///
/// The caller must run at CPL 0 and `value` must be a valid CR0 for the
/// running system: it must keep PE and PG set (the kernel runs in long
/// mode), keep the caches and write protection as the rest of the kernel
/// expects, and set no reserved bit (#GP(0) otherwise). Meant for the value
/// [`crate::vmxon::vmxon_prerequisites`] computes from the current one.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: CPL 0 and a valid CR0 that keeps paging and protection as
    // they are, by the caller's promise. Memory clobber (no `nomem`): CR0
    // changes how memory is accessed.
    unsafe {
        asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags));
    }
}

/// Reads CR4.
///
/// # Safety
///
/// The caller must run at CPL 0 (MOV from CR4 raises #GP(0) otherwise).
pub unsafe fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: CPL 0 by the caller's promise; reading CR4 has no side
    // effect.
    unsafe {
        asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Writes CR4.
///
/// # Safety
///
/// The caller must run at CPL 0 and `value` must be a valid CR4 for the
/// running system: no reserved or unsupported bit (#GP(0)), PAE kept set in
/// long mode, and paging-related bits (PGE, PCIDE, LA57, SMEP, SMAP) changed
/// only as the kernel's page tables allow. Clearing VMXE in VMX operation
/// raises #GP. Meant for the value
/// [`crate::vmxon::vmxon_prerequisites`] computes from the current one.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: CPL 0 and a CR4 valid for the running system, by the caller's
    // promise. Memory clobber: CR4 changes paging and TLB behaviour.
    unsafe {
        asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags));
    }
}

/// Completes the outcome of a VMX instruction, `status` being what its CF
/// and ZF said (read in the instruction's own `asm!` block): for
/// VMfailValid it reads the VM-instruction error field of the current VMCS.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0 (this may execute
/// VMREAD).
#[inline]
unsafe fn complete(status: VmxStatus) -> Result<(), VmFail> {
    match status {
        VmxStatus::Succeed => Ok(()),
        VmxStatus::FailInvalid => Err(VmFail::Invalid),
        VmxStatus::FailValid => {
            // SAFETY: VMX root operation at CPL 0, by the caller's promise.
            // VMfailValid means there is a current VMCS, so the VMREAD can
            // succeed.
            let error = unsafe { vmread_raw(ReadOnly32::VmInstructionError.encoding()) };
            Err(VmFail::Valid(match error {
                (value, VmxStatus::Succeed) => InstructionError::from_number(value as u32),
                _ => InstructionError::Unreadable,
            }))
        }
    }
}

/// The outcome from the bytes `setc` and `setz` stored.
#[inline]
fn status(cf: u8, zf: u8) -> VmxStatus {
    VmxStatus::from_flags(cf != 0, zf != 0)
}

/// VMREAD of `field`, returning the value and the instruction's outcome
/// without interpreting a failure (so [`complete`] can use it without
/// recursing).
///
/// # Safety
///
/// As [`vmread`].
#[inline]
unsafe fn vmread_raw(field: FieldEncoding) -> (u64, VmxStatus) {
    let value: u64;
    let cf: u8;
    let zf: u8;
    // SAFETY: VMX root operation at CPL 0 by the caller's promise, so VMREAD
    // does not fault (#UD outside VMX operation, #GP(0) at CPL > 0; SDM
    // Vol. 3C, 31.3 "VMREAD"). The register form reads only the current
    // VMCS; no `nomem`, so it stays ordered with VMWRITEs and VMPTRLDs. The
    // flags are read in the same block.
    unsafe {
        asm!(
            "vmread {value}, {field}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(field.bits()),
            value = out(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    (value, status(cf, zf))
}

/// Runs the VMX instruction `$insn` (VMXON, VMCLEAR, VMPTRLD) on a 64-bit
/// memory operand holding the host-physical address `$addr`, reads CF and
/// ZF in the same `asm!` block and turns them into the result. Expands to
/// an unsafe operation: the caller's `unsafe` block and its SAFETY comment
/// say why the instruction is allowed; the operand is a local that lives
/// for the block.
macro_rules! pointer_instruction {
    ($insn:literal, $addr:expr) => {{
        let pointer: u64 = $addr.as_u64();
        let cf: u8;
        let zf: u8;
        asm!(
            concat!($insn, " qword ptr [{pointer}]"),
            "setc {cf}",
            "setz {zf}",
            pointer = in(reg) &pointer,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
        if cf | zf == 0 {
            Ok(())
        } else {
            failed(cf, zf)
        }
    }};
}

/// Enters VMX root operation with VMXON.
///
/// # Safety
///
/// The caller must run at CPL 0 on a CPU with VMX enabled in
/// IA32_FEATURE_CONTROL (#GP otherwise), with CR0 and CR4 as
/// [`crate::vmxon::vmxon_prerequisites`] says (CR4.VMXE = 1, else #UD; fixed
/// bits, else #GP), not in VMX operation already on this CPU in a way the
/// caller has not accounted for, and in long mode (Ferrovisor's case).
/// `region` must be the 4 KiB-aligned host-physical address of a VMXON
/// region of the size IA32_VMX_BASIC gives, holding the VMCS revision
/// identifier in bits 30:0 of its first word and bit 31 clear, within the
/// CPU's physical-address width; it must stay allocated and untouched by
/// software until VMXOFF (SDM Vol. 3C, 24.11.5 "VMXON Region"; 31.3
/// "VMXON").
pub unsafe fn vmxon(region: HostPhysAddr) -> Result<(), VmFail> {
    // SAFETY: the CPU and region preconditions hold by the caller's
    // promise, so VMXON does not fault and the processor takes the region
    // over.
    unsafe { pointer_instruction!("vmxon", region) }
}

/// Leaves VMX operation with VMXOFF.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0 (#UD outside VMX
/// operation). Every VMCS this CPU used must have been VMCLEARed first if
/// it is to be used again (possibly on another CPU), since VMXOFF does not
/// write cached VMCS data back (SDM Vol. 3C, 25.11.1). Afterwards no VMX
/// instruction but VMXON may run on this CPU, and the VMXON region may be
/// reused.
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let cf: u8;
    let zf: u8;
    // SAFETY: VMX root operation at CPL 0 by the caller's promise, so VMXOFF
    // does not fault. It may release the VMXON region, hence no `nomem`.
    // Flags read in the same block.
    unsafe {
        asm!(
            "vmxoff",
            "setc {cf}",
            "setz {zf}",
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
        // On VMfailValid (error 23, dual-monitor treatment) the CPU is still
        // in VMX root operation, so the error field can be read.
        complete(status(cf, zf))
    }
}

/// Flushes a VMCS to memory and makes it clear (and not current) with
/// VMCLEAR.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0. `vmcs` must be the
/// 4 KiB-aligned host-physical address of a VMCS region (not the VMXON
/// region) that stays allocated; the processor writes to it (SDM Vol. 3C,
/// 31.3 "VMCLEAR").
pub unsafe fn vmclear(vmcs: HostPhysAddr) -> Result<(), VmFail> {
    // SAFETY: VMX root operation at CPL 0 and a VMCS region at `vmcs`, by
    // the caller's promise.
    unsafe { pointer_instruction!("vmclear", vmcs) }
}

/// Makes a VMCS current (and active) on this CPU with VMPTRLD.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0. `vmcs` must be the
/// 4 KiB-aligned host-physical address of a VMCS region (not the VMXON
/// region) whose first word holds the revision identifier from
/// IA32_VMX_BASIC, that is not current on another CPU (VMCLEAR it there
/// first), and that stays allocated and untouched by software while it is
/// active (SDM Vol. 3C, 25.11.1 "Software Use of the VMCS and Related
/// Structures"; 31.3 "VMPTRLD").
pub unsafe fn vmptrld(vmcs: HostPhysAddr) -> Result<(), VmFail> {
    // SAFETY: VMX root operation at CPL 0 and a VMCS region at `vmcs` not
    // active elsewhere, by the caller's promise.
    unsafe { pointer_instruction!("vmptrld", vmcs) }
}

/// The current-VMCS pointer of this CPU, from VMPTRST; `None` when there is
/// no current VMCS (the pointer reads as all ones, SDM Vol. 3C, 31.3
/// "VMPTRST").
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0.
pub unsafe fn vmptrst() -> Result<Option<HostPhysAddr>, VmFail> {
    let mut pointer: u64 = 0;
    let cf: u8;
    let zf: u8;
    // SAFETY: VMX root operation at CPL 0 by the caller's promise. VMPTRST
    // writes 8 bytes to `pointer`, a live local this block borrows mutably.
    // Flags read in the same block.
    unsafe {
        asm!(
            "vmptrst qword ptr [{pointer}]",
            "setc {cf}",
            "setz {zf}",
            pointer = in(reg) &mut pointer,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
        complete(status(cf, zf))?;
    }
    Ok((pointer != u64::MAX).then_some(HostPhysAddr::new(pointer)))
}

/// VMREAD of `field` from the current VMCS.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0 (#UD outside VMX
/// operation, #GP(0) at CPL > 0). Without a current VMCS the result is
/// [`VmFail::Invalid`], not a fault.
#[inline(always)]
pub unsafe fn vmread(field: FieldEncoding) -> Result<u64, VmFail> {
    let value: u64;
    let cf: u8;
    let zf: u8;
    // SAFETY: as in `vmread_raw`, which this repeats so that the success
    // test below is one OR and one branch on the exit path.
    unsafe {
        asm!(
            "vmread {value}, {field}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(field.bits()),
            value = lateout(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    if cf | zf == 0 {
        return Ok(value);
    }
    // SAFETY: VMX root operation at CPL 0, by the caller's promise.
    unsafe { failed(cf, zf) }.map(|()| value)
}

/// The slow path of a VMX instruction that did not succeed.
///
/// # Safety
///
/// VMX root operation at CPL 0.
#[cold]
#[inline(never)]
unsafe fn failed(cf: u8, zf: u8) -> Result<(), VmFail> {
    // SAFETY: the caller's promise.
    unsafe { complete(status(cf, zf)) }
}

/// VMWRITE of `value` to `field` of the current VMCS.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0. VMWRITE itself only
/// changes the current VMCS, but what it writes takes effect at the next
/// VM entry and VM exit: host-state fields decide where the CPU goes on an
/// exit, and address fields (EPTP, bitmaps, MSR areas) what memory the CPU
/// reads for the guest. Whoever runs VMLAUNCH/VMRESUME vouches for them.
#[inline(always)]
pub unsafe fn vmwrite(field: FieldEncoding, value: u64) -> Result<(), VmFail> {
    let cf: u8;
    let zf: u8;
    // SAFETY: VMX root operation at CPL 0 by the caller's promise, so
    // VMWRITE does not fault; the register form touches only the current
    // VMCS (no `nomem`, to stay ordered with VMREAD and VMPTRLD). Flags read
    // in the same block.
    unsafe {
        asm!(
            "vmwrite {field}, {value}",
            "setc {cf}",
            "setz {zf}",
            field = in(reg) u64::from(field.bits()),
            value = in(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
        if cf | zf == 0 {
            return Ok(());
        }
        failed(cf, zf)
    }
}

/// The INVEPT types (SDM Vol. 3C, 29.4.3.1 "Operations that Invalidate
/// Cached Mappings"; 31.3 "INVEPT").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InveptType {
    /// 1: mappings tagged with one EPTP's EP4TA.
    SingleContext = 1,
    /// 2: mappings of every EPTP.
    AllContext = 2,
}

/// The INVVPID types (SDM Vol. 3C, 31.3 "INVVPID").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvvpidType {
    /// 0: one linear address of one VPID.
    IndividualAddress = 0,
    /// 1: every mapping of one VPID.
    SingleContext = 1,
    /// 2: every mapping of every VPID but 0.
    AllContext = 2,
    /// 3: every mapping of one VPID except global translations.
    SingleContextRetainingGlobals = 3,
}

/// Invalidates EPT-derived cached mappings with INVEPT.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0 on a CPU that supports
/// INVEPT of type `kind` (IA32_VMX_EPT_VPID_CAP bits 20, 25, 26;
/// [`crate::caps::EptVpidCap`]), else #UD or VMfail. For single-context,
/// `eptp` must be a valid EPTP (else VMfailValid, error 28). It does not
/// touch memory other than reading the descriptor.
pub unsafe fn invept(kind: InveptType, eptp: u64) -> Result<(), VmFail> {
    // The 128-bit INVEPT descriptor: EPTP, then 64 reserved bits that must
    // be 0 (SDM Vol. 3C, 31.3 "INVEPT", figure "INVEPT Descriptor").
    let descriptor: [u64; 2] = [eptp, 0];
    let cf: u8;
    let zf: u8;
    // SAFETY: VMX root operation at CPL 0 and INVEPT support, by the
    // caller's promise. The descriptor is a live 16-byte local. Flags read
    // in the same block.
    unsafe {
        asm!(
            "invept {kind}, xmmword ptr [{descriptor}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind as u64,
            descriptor = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
        complete(status(cf, zf))
    }
}

/// Invalidates VPID-tagged cached mappings with INVVPID. `linear` is the
/// guest-linear address for [`InvvpidType::IndividualAddress`] and ignored
/// by the other types.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0 on a CPU that supports
/// INVVPID of type `kind` (IA32_VMX_EPT_VPID_CAP bits 32, 40-43), else #UD
/// or VMfail. `vpid` 0 is allowed only with [`InvvpidType::AllContext`]
/// and `linear` must be canonical for an individual address (else
/// VMfailValid, error 28).
pub unsafe fn invvpid(kind: InvvpidType, vpid: u16, linear: u64) -> Result<(), VmFail> {
    // The 128-bit INVVPID descriptor: VPID in bits 15:0, bits 63:16
    // reserved (0), the linear address in bits 127:64 (SDM Vol. 3C, 31.3
    // "INVVPID", figure "INVVPID Descriptor").
    let descriptor: [u64; 2] = [u64::from(vpid), linear];
    let cf: u8;
    let zf: u8;
    // SAFETY: VMX root operation at CPL 0 and INVVPID support, by the
    // caller's promise. The descriptor is a live 16-byte local. Flags read
    // in the same block.
    unsafe {
        asm!(
            "invvpid {kind}, xmmword ptr [{descriptor}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind as u64,
            descriptor = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
        complete(status(cf, zf))
    }
}

/// The current VMCS of the calling CPU, accessed with VMREAD and VMWRITE.
///
/// Zero-sized: it names "whatever VMCS is current here", so with no current
/// VMCS every access is [`VmFail::Invalid`] rather than undefined. It is
/// neither `Send` nor `Sync`: another CPU has another current VMCS.
#[derive(Debug)]
pub struct HardwareVmcs {
    /// Keeps the type on the CPU that made it.
    _not_send: PhantomData<*const ()>,
}

impl HardwareVmcs {
    /// Access to this CPU's current VMCS.
    ///
    /// # Safety
    ///
    /// The caller must be in VMX root operation at CPL 0 and stay so, on
    /// this CPU, for as long as the value lives (VMREAD and VMWRITE fault
    /// otherwise). The safety of what gets written is the business of
    /// whoever later runs VMLAUNCH/VMRESUME (see [`vmwrite`]).
    pub unsafe fn current() -> Self {
        Self {
            _not_send: PhantomData,
        }
    }
}

impl VmcsAccess for HardwareVmcs {
    #[inline(always)]
    fn vmread(&self, field: FieldEncoding) -> Result<u64, VmFail> {
        // SAFETY: a `HardwareVmcs` exists only in VMX root operation at CPL 0
        // on this CPU (the promise of `current`).
        unsafe { vmread(field) }
    }

    #[inline(always)]
    fn vmwrite(&mut self, field: FieldEncoding, value: u64) -> Result<(), VmFail> {
        // SAFETY: as in `vmread`; the effect of the value at the next VM
        // entry is vouched for by whoever runs VMLAUNCH/VMRESUME.
        unsafe { vmwrite(field, value) }
    }
}

// The VM-entry and VM-exit path. `ferrovisor_vm_run(frame, launched)`
// saves the host's callee-saved registers and the pointer to the vCPU's
// `RunFrame` on the stack, points HOST_RSP at that stack slot, loads every
// guest GPR but RSP (the VMCS holds it) and runs VMLAUNCH or VMRESUME. A
// failed instruction falls through with the VMX status in CF/ZF, turned
// into a return value of 1 (VMfailInvalid) or 2 (VMfailValid) before any
// other instruction can change the flags. A VM exit lands at
// `ferrovisor_vm_exit` (HOST_RIP) with RSP = HOST_RSP and RFLAGS = 0x2
// (SDM Vol. 3C, 28.5.3). It stores the four GPRs CPUID writes and reads
// the exit reason; a CPUID exit whose answer the frame holds (see
// `crate::fast`) is answered there and the guest resumed. Every other exit
// stores the rest of the GPRs, restores the host's registers and returns 0
// to the caller of `ferrovisor_vm_run`.
//
// Frame offsets follow `RunFrame` (asserted in `crate::fast`): the GPRs in
// the exit qualifications' numbering, 8 bytes each (RAX 0, RCX 8, RDX 16,
// RBX 24, RSP 32 (unused), RBP 40, RSI 48, RDI 56, R8..R15 64..120); the 16
// CPUID answers of 32 bytes from 128 (leaf +0, subleaf +4, CR4 bits +8,
// EAX, EBX, ECX, EDX +12..+24); the fast-exit count at 640 and the TSC
// deadline of the fast path at 648. VMCS encodings:
// HOST_RSP 0x6C14 and, set once per VMCS by the caller, HOST_RIP 0x6C16;
// the exit reason 0x4402, the instruction length 0x440C, the guest's
// interruptibility state 0x4824, CR4 0x6804 and RIP 0x681E. Exit reason 10
// is CPUID (SDM Vol. 3C, appendix C).
core::arch::global_asm!(
    ".global ferrovisor_vm_run",
    ".global ferrovisor_vm_exit",
    "ferrovisor_vm_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "mov rax, 0x6C14",
    "vmwrite rax, rsp",
    "jbe 3f",
    "test rsi, rsi",
    "mov rax, [rdi]",
    "mov rcx, [rdi + 8]",
    "mov rdx, [rdi + 16]",
    "mov rbx, [rdi + 24]",
    "mov rbp, [rdi + 40]",
    "mov rsi, [rdi + 48]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rdi, [rdi + 56]",
    // MOV leaves the flags of `test rsi, rsi` alone.
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    // Only a failed VMLAUNCH/VMRESUME (or HOST_RSP VMWRITE) gets here, from
    // above or from the fast path's VMRESUME, with the stack as it was
    // before the entry.
    "3:",
    "mov eax, 1",
    "jc 4f",
    "mov eax, 2",
    "jz 4f",
    "mov eax, 3",
    "4:",
    "pop rdi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    "ferrovisor_vm_exit:",
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi], rax",
    "mov [rdi + 8], rcx",
    "mov [rdi + 16], rdx",
    "mov [rdi + 24], rbx",
    // The fast path: only VMREADs of fields that exist and a VMWRITE of
    // guest RIP, all with the VMCS current, so they do not fail.
    "mov eax, 0x4402",
    "vmread rax, rax",
    "cmp eax, 10",
    "jne 5f",
    // Past the run's deadline every exit goes to Rust, whose clock check
    // ends the slice (crate::fast).
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "cmp rax, [rdi + 648]",
    "jae 5f",
    // The answer's slot: (leaf ^ leaf >> 28) % 16, 32 bytes each.
    "mov eax, [rdi]",
    "mov edx, eax",
    "shr edx, 28",
    "xor edx, eax",
    "and edx, 15",
    "shl edx, 5",
    "lea rbx, [rdi + rdx + 128]",
    "cmp eax, [rbx]",
    "jne 5f",
    "mov eax, [rdi + 8]",
    "cmp eax, [rbx + 4]",
    "jne 5f",
    "mov eax, 0x6804",
    "vmread rax, rax",
    "and eax, 0x440000",
    "cmp eax, [rbx + 8]",
    "jne 5f",
    // Blocking by STI or MOV SS, which skipping the instruction must
    // clear (SDM Vol. 3C, 27.3.1.5): Rust does that.
    "mov eax, 0x4824",
    "vmread rax, rax",
    "test eax, 3",
    "jnz 5f",
    "mov eax, 0x440C",
    "vmread rax, rax",
    "mov edx, 0x681E",
    "vmread rcx, rdx",
    "add rax, rcx",
    // The low half wrapped: outside 64-bit mode EIP wraps at 4 GiB, which
    // Rust handles.
    "cmp eax, ecx",
    "jb 5f",
    "vmwrite rdx, rax",
    "mov eax, [rbx + 12]",
    "mov ecx, [rbx + 20]",
    "mov edx, [rbx + 24]",
    "mov ebx, [rbx + 16]",
    "inc qword ptr [rdi + 640]",
    "pop rdi",
    "vmresume",
    "jmp 3b",
    // The way back to Rust; RAX, RCX, RDX and RBX are already stored.
    "5:",
    "mov [rdi + 40], rbp",
    "mov [rdi + 48], rsi",
    "mov [rdi + 64], r8",
    "mov [rdi + 72], r9",
    "mov [rdi + 80], r10",
    "mov [rdi + 88], r11",
    "mov [rdi + 96], r12",
    "mov [rdi + 104], r13",
    "mov [rdi + 112], r14",
    "mov [rdi + 120], r15",
    "pop rax",
    "mov [rdi + 56], rax",
    "pop rdi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "xor eax, eax",
    "ret",
);

extern "sysv64" {
    fn ferrovisor_vm_run(frame: *mut RunFrame, launched: u64) -> u64;
    fn ferrovisor_vm_exit();
}

/// The address VM exits continue at: the value for the VMCS's HOST_RIP
/// field of every VMCS that [`vm_run`] runs.
pub fn vm_exit_address() -> u64 {
    ferrovisor_vm_exit as *const () as usize as u64
}

/// Runs the guest of the current VMCS until its next VM exit: VMLAUNCH if
/// `launched` is false (the VMCS is clear), else VMRESUME. Loads the guest's
/// GPRs from `frame` and, on a VM exit, stores them back; `Ok(())` means a VM
/// exit happened (or a VM-entry failure of the kind that looks like one:
/// the exit reason field says which). CPUID exits that `frame.cpuid`
/// answers are handled without returning (see [`crate::fast`]) and counted
/// in `frame.fast_cpuid_exits`.
///
/// # Errors
///
/// [`VmFail`] when VMLAUNCH/VMRESUME itself fails (invalid control or host
/// state, wrong launch state, ...): the guest did not run and `frame.regs`
/// is unchanged, or, when a VMRESUME after a fast CPUID exit failed, holds
/// the registers as they were before that exit.
///
/// # Safety
///
/// The caller must be in VMX root operation at CPL 0 with a current VMCS
/// whose host-state area describes this CPU's running state (CR0, CR3,
/// CR4, segments, GDT/IDT/TR, EFER and PAT as the exit controls load them)
/// with HOST_RIP = [`vm_exit_address`], and whose guest-state and control
/// fields give the guest only memory and devices it may have. `launched`
/// must match the VMCS's launch state. Interrupts must be disabled.
#[inline]
pub unsafe fn vm_run(frame: &mut RunFrame, launched: bool) -> Result<(), VmFail> {
    // SAFETY: the caller's promise covers the VMCS; the trampoline saves
    // and restores every register the System V ABI has the callee keep, and
    // touches memory only on this stack and in `frame`, which it borrows
    // and whose layout `crate::fast` asserts. Its fast path only reads the
    // current VMCS and moves guest RIP past a CPUID the guest executed.
    let status = unsafe { ferrovisor_vm_run(frame, u64::from(launched)) };
    match status {
        0 => Ok(()),
        1 => Err(VmFail::Invalid),
        // SAFETY: VMX root operation at CPL 0 with a current VMCS, so the
        // error field can be read.
        _ => unsafe { complete(VmxStatus::FailValid) },
    }
}
