//! String I/O: INS and OUTS, with and without REP (SDM Vol. 2B
//! "INS/INSB/INSW/INSD", "OUTS/OUTSB/OUTSW/OUTSD" and "REP/REPE/REPZ/REPNE/
//! REPNZ"), carried out on the VM's device bus and in the guest's memory,
//! reached through the guest's own segmentation and paging.
//!
//! Each iteration moves one element (1, 2 or 4 bytes) between the port in
//! DX and memory: OUTS reads it at seg:(E/R)SI (DS unless a prefix
//! overrides it), INS writes it at ES:(E/R)DI, and the index moves by the
//! element's size, down when RFLAGS.DF is set. With REP, (E/R)CX counts
//! the iterations (CX, ECX or RCX by the address size). A port no device
//! claims reads all ones and drops writes, counted as for IN and OUT.
//!
//! A long REP runs at most [`CHUNK`] iterations an exit: the registers
//! then say what was done and RIP stays on the instruction, so the guest
//! executes it again (and exits again) for the rest, taking interrupts in
//! between as it would on hardware (REP string instructions are
//! interruptible and restartable, SDM Vol. 2B "REP"). No exit holds a CPU
//! for longer than a chunk.
//!
//! Faults are the guest's, raised where hardware raises them and with the
//! iterations before them done: a segment check that fails is #GP(0)
//! (#SS(0) for SS), a non-canonical address in 64-bit mode likewise, and
//! a linear address that does not translate, or whose entries deny the
//! access, is #PF with the architectural error code and CR2. INS checks
//! its destination before it reads the port, so a faulting INS does not
//! consume device data.
//!
//! Checked as the SDM describes: segment limits (expand-up and
//! expand-down), segment types (INS needs a writable data segment, OUTS a
//! readable one), unusable segments, canonical addresses, and the paging
//! rights R/W (with CR0.WP), U/S and SMAP (CR4.SMAP with RFLAGS.AC).
//! Not modelled: reserved bits in paging entries and protection keys (a
//! guest that sets them takes no #PF here), accessed and dirty bits (not
//! set by the emulated accesses), alignment checks (#AC), a single-step
//! trap after the instruction, RFLAGS.RF when the instruction is resumed.
//! Memory that is not RAM (a device's MMIO page, nothing at all) and page
//! tables outside RAM are refused: the guest stops with the reason.

use core::fmt;

use addr::GuestPhysAddr;
use devices::bus::VmRequest;

use super::access::{Gpr, Segment, SegmentState, VcpuAccess, SEGMENT_L};
use super::exit::{AddressSize, ExitStats, IoAccess, IoDirection, Platform};
use super::mmio::walk::{translate_with_rights, Paging, PagingMode, WalkError};
use super::vm::VmDevices;

/// The most iterations one exit carries out.
pub const CHUNK: u64 = 256;

/// CR0.PE.
const CR0_PE: u64 = 1;
/// CR0.WP: supervisor writes honour read-only pages.
const CR0_WP: u64 = 1 << 16;
/// CR4.SMAP.
const CR4_SMAP: u64 = 1 << 21;
/// IA32_EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS.DF: string instructions count down.
const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.VM: virtual-8086 mode.
const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS.AC: with SMAP, supervisor accesses to user pages are allowed.
const RFLAGS_AC: u64 = 1 << 18;
/// Segment attribute bits (SDM Vol. 3A, 3.4.5).
const SEG_TYPE_WRITABLE_OR_READABLE: u32 = 1 << 1;
const SEG_TYPE_EXPAND_DOWN: u32 = 1 << 2;
const SEG_TYPE_CODE: u32 = 1 << 3;
const SEG_S: u32 = 1 << 4;
const SEG_DB: u32 = 1 << 14;
/// VT-x's "segment unusable" bit; a backend that has none leaves it 0.
const SEG_UNUSABLE: u32 = 1 << 16;
/// #PF error-code bits (SDM Vol. 3A, 4.7).
const PF_PRESENT: u32 = 1;
const PF_WRITE: u32 = 1 << 1;
const PF_USER: u32 = 1 << 2;
/// The page size accesses are split at.
const PAGE: u64 = 4096;

/// A fault the guest takes at the string instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// #GP(0): a segment check failed, or a non-canonical address.
    GeneralProtection,
    /// #SS(0): the same, for an access through SS.
    StackFault,
    /// #PF: `linear` does not translate or its entries deny the access.
    PageFault {
        /// The linear address (CR2).
        linear: u64,
        /// The error code.
        error_code: u32,
    },
}

/// Why string I/O was not carried out: the guest stops with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringIoRefusal {
    /// The guest's page tables could not be walked (an entry outside RAM,
    /// 5-level paging).
    Walk(WalkError),
    /// The memory operand is at guest-physical memory that is not RAM (a
    /// device's MMIO page or nothing at all).
    NotRam {
        /// The linear address.
        linear: u64,
        /// Its translation.
        gpa: GuestPhysAddr,
    },
}

impl fmt::Display for StringIoRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Walk(e) => e.fmt(f),
            Self::NotRam { linear, gpa } => write!(
                f,
                "its memory operand at linear {linear:#x} is at guest-physical {gpa}, which is not RAM \
                 (string I/O to device memory is not emulated)"
            ),
        }
    }
}

/// What [`string_io`] did; the registers already show the iterations done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringIoOutcome {
    /// Every iteration is done: RIP moves past the instruction.
    Done,
    /// A REP with iterations left after this chunk: RIP stays on the
    /// instruction, which the guest executes again for the rest.
    Partial,
    /// An iteration faulted: the guest takes the fault at the
    /// instruction (RIP stays).
    Fault(GuestFault),
    /// A device asked for the VM's power-off or reset.
    Request(VmRequest),
    /// Not emulated: the guest stops.
    Refused(StringIoRefusal),
}

/// How the CPU forms and checks addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Real mode: base + offset, limit checks.
    Real,
    /// Virtual-8086 mode: as real mode, at CPL 3.
    Virtual8086,
    /// Protected mode and compatibility mode: descriptor checks.
    Protected,
    /// 64-bit mode: flat but for FS and GS, canonical checks.
    Long,
}

/// Why one iteration did not complete.
enum Stop {
    Fault(GuestFault),
    Refused(StringIoRefusal),
}

impl From<GuestFault> for Stop {
    fn from(f: GuestFault) -> Self {
        Self::Fault(f)
    }
}

impl From<StringIoRefusal> for Stop {
    fn from(r: StringIoRefusal) -> Self {
        Self::Refused(r)
    }
}

/// The state every iteration's memory access is checked against, read
/// once per exit.
struct Access {
    mode: Mode,
    paging: Paging,
    rflags: u64,
    /// The access is a user-mode one (CPL 3).
    user: bool,
    /// INS: memory is written.
    write: bool,
    segment: Segment,
    state: SegmentState,
}

/// Carries out the string I/O instruction `io` that exited, at most
/// [`CHUNK`] iterations of it, and updates the count and index registers
/// by what was done. The caller moves RIP, injects the fault or stops the
/// guest as the outcome says.
pub fn string_io<B: VcpuAccess, P: Platform>(
    vcpu: &mut B,
    stats: &mut ExitStats,
    vm: &mut VmDevices,
    platform: &mut P,
    io: &IoAccess,
) -> Result<StringIoOutcome, B::Error> {
    let cr0 = vcpu.cr0()?;
    let efer = vcpu.efer()?;
    let rflags = vcpu.rflags()?;
    let long = efer & EFER_LMA != 0 && vcpu.segment_attributes(Segment::Cs)? & SEGMENT_L != 0;
    let mode = if long {
        Mode::Long
    } else if cr0 & CR0_PE == 0 {
        Mode::Real
    } else if rflags & RFLAGS_VM != 0 {
        Mode::Virtual8086
    } else {
        Mode::Protected
    };
    // 64-bit addressing exists only in 64-bit mode.
    let address_size = match io.address_size {
        AddressSize::Bits64 if !long => AddressSize::Bits32,
        size => size,
    };
    let mask = address_size.mask();
    let (index_reg, segment) = match io.direction {
        IoDirection::Out => (Gpr::Rsi, io.segment),
        IoDirection::In => (Gpr::Rdi, Segment::Es),
    };
    let cpl = match mode {
        Mode::Real => 0,
        Mode::Virtual8086 => 3,
        Mode::Protected | Mode::Long => vcpu.segment(Segment::Ss)?.dpl(),
    };
    let access = Access {
        mode,
        paging: Paging {
            cr0,
            cr3: vcpu.cr3()?,
            cr4: vcpu.cr4()?,
            efer,
        },
        rflags,
        user: cpl == 3,
        write: io.direction == IoDirection::In,
        segment,
        state: vcpu.segment(segment)?,
    };
    let size: u8 = match io.size {
        1 => 1,
        2 => 2,
        _ => 4,
    };
    let step = u64::from(size);

    let rcx = vcpu.gpr(Gpr::Rcx)?;
    let count = if io.rep { rcx & mask } else { 1 };
    let mut index = vcpu.gpr(index_reg)?;
    let now = platform.now();
    let mut done = 0u64;
    let mut ended = None;
    while done < count.min(CHUNK) {
        let offset = index & mask;
        let result = match io.direction {
            IoDirection::Out => outs_one(&access, vm, platform, stats, io.port, size, offset, now),
            IoDirection::In => ins_one(&access, vm, platform, stats, io.port, size, offset, now),
        };
        match result {
            Ok(request) => {
                let next = if rflags & RFLAGS_DF != 0 {
                    offset.wrapping_sub(step)
                } else {
                    offset.wrapping_add(step)
                };
                index = merge(index, next, address_size);
                done = done.saturating_add(1);
                if let Some(request) = request {
                    ended = Some(StringIoOutcome::Request(request));
                    break;
                }
            }
            Err(Stop::Fault(fault)) => {
                ended = Some(StringIoOutcome::Fault(fault));
                break;
            }
            Err(Stop::Refused(why)) => {
                ended = Some(StringIoOutcome::Refused(why));
                break;
            }
        }
    }
    // Registers reflect exactly the iterations completed (none: untouched).
    if done != 0 {
        vcpu.set_gpr(index_reg, index)?;
        if io.rep {
            let left = count.saturating_sub(done);
            vcpu.set_gpr(Gpr::Rcx, merge(rcx, left, address_size))?;
        }
    }
    Ok(match ended {
        Some(outcome) => outcome,
        None if io.rep && done < count => StringIoOutcome::Partial,
        None => StringIoOutcome::Done,
    })
}

/// `old` with its address-size part replaced by `new`: a 16-bit update
/// keeps bits 63:16, a 32-bit one zero-extends (as 32-bit register writes
/// do in 64-bit mode).
fn merge(old: u64, new: u64, size: AddressSize) -> u64 {
    match size {
        AddressSize::Bits16 => (old & !0xFFFF) | (new & 0xFFFF),
        AddressSize::Bits32 => new & 0xFFFF_FFFF,
        AddressSize::Bits64 => new,
    }
}

/// One OUTS iteration: the element at `offset` to `port`. Returns the
/// request a device made (power-off, reset), if any.
#[allow(clippy::too_many_arguments)]
fn outs_one<P: Platform>(
    access: &Access,
    vm: &mut VmDevices,
    platform: &mut P,
    stats: &mut ExitStats,
    port: u16,
    size: u8,
    offset: u64,
    now: u64,
) -> Result<Option<VmRequest>, Stop> {
    let parts = locate(access, vm, platform, offset, size)?;
    let mut buf = [0u8; 4];
    let mut at = 0usize;
    for part in parts.iter().flatten() {
        let end = at.saturating_add(part.len);
        let ok = buf
            .get_mut(at..end)
            .is_some_and(|dst| platform.read_guest(part.gpa, dst));
        if !ok {
            return Err(not_ram(part).into());
        }
        at = end;
    }
    let value = u32::from_le_bytes(buf);
    if !vm.port_write(port, size, value, now, &mut |line| {
        platform.guest_line(line)
    }) {
        stats.io_writes_ignored = stats.io_writes_ignored.saturating_add(1);
    }
    Ok(vm.take_request())
}

/// One INS iteration: `port` to the element at `offset`. The destination
/// is checked before the port is read, so a faulting INS takes nothing
/// from the device.
#[allow(clippy::too_many_arguments)]
fn ins_one<P: Platform>(
    access: &Access,
    vm: &mut VmDevices,
    platform: &mut P,
    stats: &mut ExitStats,
    port: u16,
    size: u8,
    offset: u64,
    now: u64,
) -> Result<Option<VmRequest>, Stop> {
    let parts = locate(access, vm, platform, offset, size)?;
    let value = match vm.port_read(port, size, now, &mut |line| platform.guest_line(line)) {
        Some(value) => value,
        None => {
            stats.io_reads_unclaimed = stats.io_reads_unclaimed.saturating_add(1);
            u32::MAX
        }
    };
    let bytes = value.to_le_bytes();
    let mut at = 0usize;
    for part in parts.iter().flatten() {
        let end = at.saturating_add(part.len);
        let ok = bytes
            .get(at..end)
            .is_some_and(|src| platform.write_guest(part.gpa, src));
        if !ok {
            return Err(not_ram(part).into());
        }
        at = end;
    }
    Ok(None)
}

/// A piece of an element inside one page.
#[derive(Clone, Copy)]
struct Part {
    linear: u64,
    gpa: GuestPhysAddr,
    len: usize,
}

fn not_ram(part: &Part) -> StringIoRefusal {
    StringIoRefusal::NotRam {
        linear: part.linear,
        gpa: part.gpa,
    }
}

/// Where the element of `size` bytes at `offset` in the access's segment
/// is in guest RAM: one part, or two when it straddles a page boundary
/// (the pages need not be adjacent in guest-physical memory).
fn locate<P: Platform>(
    access: &Access,
    vm: &VmDevices,
    platform: &P,
    offset: u64,
    size: u8,
) -> Result<[Option<Part>; 2], Stop> {
    let linear = linear_address(access, offset, size)?;
    let wrap = |a: u64| {
        if access.mode == Mode::Long {
            a
        } else {
            a & 0xFFFF_FFFF
        }
    };
    let size = u64::from(size);
    let in_page = PAGE.wrapping_sub(linear & (PAGE.wrapping_sub(1)));
    let first_len = size.min(in_page);
    let second = wrap(linear.wrapping_add(first_len));
    let mut parts = [None, None];
    for (slot, (at, len)) in parts.iter_mut().zip([
        (linear, first_len),
        (second, size.saturating_sub(first_len)),
    ]) {
        if len == 0 {
            break;
        }
        let gpa = translate(access, platform, at)?;
        let part = Part {
            linear: at,
            gpa,
            len: usize::try_from(len).unwrap_or(0),
        };
        let in_ram = platform.ram().contains(gpa, len);
        // (A local APIC page is never RAM: outside RAM it is refused with
        // the rest; moved onto RAM, the RAM answers, as for any access.)
        if !in_ram || vm.is_mmio(gpa) {
            return Err(not_ram(&part).into());
        }
        *slot = Some(part);
    }
    Ok(parts)
}

/// The linear address of `size` bytes at `offset` in the access's
/// segment, after the checks the CPU makes in this mode (SDM Vol. 3A,
/// 5.3 "Limit Checking", 5.4 "Type Checking", 3.3.7.1 "Canonical
/// Addressing").
fn linear_address(access: &Access, offset: u64, size: u8) -> Result<u64, GuestFault> {
    let fault = if access.segment == Segment::Ss {
        GuestFault::StackFault
    } else {
        GuestFault::GeneralProtection
    };
    let state = &access.state;
    let last_offset = offset.wrapping_add(u64::from(size)).wrapping_sub(1);
    match access.mode {
        Mode::Long => {
            // Only FS and GS have a base in 64-bit mode; no limits.
            let base = match access.segment {
                Segment::Fs | Segment::Gs => state.base,
                _ => 0,
            };
            let linear = base.wrapping_add(offset);
            let last = linear.wrapping_add(u64::from(size)).wrapping_sub(1);
            if !canonical(linear) || !canonical(last) {
                return Err(fault);
            }
            Ok(linear)
        }
        Mode::Real | Mode::Virtual8086 => {
            // The cached limit holds (64 KiB unless the guest left
            // protected mode with a larger one, "unreal mode").
            if last_offset > u64::from(state.limit) || last_offset < offset {
                return Err(fault);
            }
            Ok(state.base.wrapping_add(offset) & 0xFFFF_FFFF)
        }
        Mode::Protected => {
            let attributes = state.attributes;
            if attributes & SEG_UNUSABLE != 0 || attributes & SEG_S == 0 {
                return Err(fault);
            }
            let code = attributes & SEG_TYPE_CODE != 0;
            let rw = attributes & SEG_TYPE_WRITABLE_OR_READABLE != 0;
            // Writes need a writable data segment; reads a data segment or
            // a readable code segment.
            let allowed = if access.write {
                !code && rw
            } else {
                !code || rw
            };
            if !allowed || last_offset < offset {
                return Err(fault);
            }
            let limit = u64::from(state.limit);
            let within = if !code && attributes & SEG_TYPE_EXPAND_DOWN != 0 {
                let upper = if attributes & SEG_DB != 0 {
                    0xFFFF_FFFF
                } else {
                    0xFFFF
                };
                offset > limit && last_offset <= upper
            } else {
                last_offset <= limit
            };
            if !within {
                return Err(fault);
            }
            Ok(state.base.wrapping_add(offset) & 0xFFFF_FFFF)
        }
    }
}

/// Whether bits 63:47 of `linear` are all equal (48-bit linear addresses;
/// 5-level paging is not walked).
fn canonical(linear: u64) -> bool {
    let top = linear >> 47;
    top == 0 || top == 0x1_FFFF
}

/// Translates `linear` for the access, checking the rights the CPU
/// checks (SDM Vol. 3A, 4.6 "Access Rights").
fn translate<P: Platform>(
    access: &Access,
    platform: &P,
    linear: u64,
) -> Result<GuestPhysAddr, Stop> {
    let write = if access.write { PF_WRITE } else { 0 };
    let user = if access.user { PF_USER } else { 0 };
    match translate_with_rights(platform, &access.paging, linear) {
        Ok(t) => {
            let paging = access.paging.mode() != PagingMode::None;
            let denied = if access.user {
                !t.user || (access.write && !t.writable)
            } else {
                let read_only = access.write && !t.writable && access.paging.cr0 & CR0_WP != 0;
                let smap = paging
                    && t.user
                    && access.paging.cr4 & CR4_SMAP != 0
                    && access.rflags & RFLAGS_AC == 0;
                read_only || smap
            };
            if denied {
                return Err(GuestFault::PageFault {
                    linear,
                    error_code: PF_PRESENT | write | user,
                }
                .into());
            }
            Ok(t.gpa)
        }
        Err(WalkError::NotPresent { .. }) => Err(GuestFault::PageFault {
            linear,
            error_code: write | user,
        }
        .into()),
        Err(WalkError::NonCanonical { .. }) => Err(GuestFault::GeneralProtection.into()),
        Err(e) => Err(StringIoRefusal::Walk(e).into()),
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
mod tests;
