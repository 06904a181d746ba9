//! A guest's RAM, shared by the hardware backends: its guest-physical
//! ranges ([`RamLayout`]: from 0, and past 3 GiB from 4 GiB up) in
//! naturally aligned blocks from the frame allocator (so the second-level
//! tables can use large pages), copies in and out of it, and the exit
//! handlers' [`vcpu::exit::Platform`] over it. Every translation of a
//! guest address to host memory goes through [`pieces`], which refuses any
//! range that is not all RAM (the device window between the two ranges
//! included).

use alloc::vec::Vec;

use addr::{GuestPhysAddr, HostPhysAddr, RamLayout, PAGE_SIZE};
use loader::{GuestMemory, LoadError};
use mm::MmError;
use vcpu::exit::Platform;

use crate::{arch, memory};

/// The largest block guest RAM is taken in: 2^18 frames (1 GiB).
const MAX_RAM_ORDER: u8 = 18;

/// Guest RAM is zeroed in pieces of this many bytes, each with interrupts
/// off ([`arch::zero_and_refresh_stack`]): tens of microseconds on
/// hardware, so a timer or the console's port waits no longer than that.
const ZERO_PIECE: u64 = 256 << 10;

/// One naturally aligned block of guest RAM.
#[derive(Clone, Copy)]
pub struct Chunk {
    /// Where the block starts in the guest.
    pub gpa: u64,
    /// Where it is in the host.
    pub hpa: HostPhysAddr,
    /// Its size: 2^order frames.
    pub order: u8,
}

impl Chunk {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        PAGE_SIZE << self.order
    }
}

/// A guest's RAM: its guest-physical ranges in naturally aligned blocks,
/// the largest the allocator has, so EPT can use large pages.
pub struct GuestRam {
    /// The blocks, by guest address.
    pub chunks: Vec<Chunk>,
    /// The RAM's size in bytes.
    pub size: u64,
    /// Where it lies.
    pub layout: RamLayout,
}

impl GuestRam {
    /// Takes zeroed RAM for `layout` from the frame allocator.
    pub fn alloc(layout: RamLayout) -> Result<Self, MmError> {
        let mut ram = GuestRam {
            chunks: Vec::new(),
            size: 0,
            layout,
        };
        for (start, len) in layout.ranges() {
            if let Err(e) = ram.alloc_range(start.as_u64(), len) {
                ram.free();
                return Err(e);
            }
        }
        ram.size = layout.size();
        Ok(ram)
    }

    /// Takes the blocks for guest-physical `start..start + len`.
    fn alloc_range(&mut self, start: u64, len: u64) -> Result<(), MmError> {
        let end = start + len;
        let mut gpa = start;
        while gpa < end {
            let remaining = end - gpa;
            // The largest block that fits the rest and keeps guest and host
            // addresses equally aligned.
            let mut order = MAX_RAM_ORDER;
            while order > 0
                && ((PAGE_SIZE << order) > remaining || !gpa.is_multiple_of(PAGE_SIZE << order))
            {
                order -= 1;
            }
            let hpa = loop {
                match memory::alloc_block(order) {
                    Ok(hpa) => break hpa,
                    Err(_) if order > 0 => order -= 1,
                    Err(e) => return Err(e),
                }
            };
            let chunk = Chunk { gpa, hpa, order };
            zero(&chunk);
            self.chunks.push(chunk);
            gpa += chunk.len();
        }
        Ok(())
    }

    fn pieces(&self, gpa: u64, len: u64, f: impl FnMut(*mut u8, usize, usize)) -> bool {
        pieces(&self.chunks, self.layout, gpa, len, f)
    }

    /// Copies guest RAM at `gpa` into `buf`; false if any byte is
    /// outside RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let dst = buf.as_mut_ptr();
        let len = buf.len();
        self.pieces(gpa, len as u64, |src, off, n| {
            // SAFETY: `src..src+n` is guest RAM inside one block this guest
            // owns, mapped at `phys().ptr`; `off + n <= len`, so the
            // destination is inside `buf`. Guest RAM may change under a
            // running guest, but this CPU runs it, and it is not running.
            unsafe { core::ptr::copy_nonoverlapping(src, dst.add(off), n) }
        })
    }

    /// Copies `bytes` into guest RAM at `gpa`; false, and nothing
    /// written, if any byte is outside RAM. Guest RAM is reached through
    /// the physical-memory window, not through `self`, so a shared
    /// reference is enough (the exit handlers hold one).
    pub fn write_from(&self, gpa: u64, bytes: &[u8]) -> bool {
        let src = bytes.as_ptr();
        self.pieces(gpa, bytes.len() as u64, |dst, off, n| {
            // SAFETY: as in `read`, the other way round: `dst..dst+n` is
            // guest RAM this guest owns, `off + n <= bytes.len()`, and the
            // guest, whose RAM it is, is not running on any CPU (this one
            // runs its only vCPU's exit).
            unsafe { core::ptr::copy_nonoverlapping(src.add(off), dst, n) }
        })
    }

    /// Reads guest RAM at `gpa` for the monitor: all of `buf`, or an
    /// error naming where RAM ends.
    pub fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), console::MemError> {
        if self.read(gpa, buf) {
            Ok(())
        } else {
            Err(console::MemError::OutOfRange { ram: self.layout })
        }
    }

    /// Gives every block back.
    pub fn free(&mut self) {
        for chunk in self.chunks.drain(..) {
            if let Err(e) = memory::free_block(chunk.hpa, chunk.order) {
                log::error!("guest RAM: giving back {} failed: {e}", chunk.hpa);
            }
        }
    }
}

/// Zeroes a block just taken from the allocator, in [`ZERO_PIECE`]s.
fn zero(chunk: &Chunk) {
    let base = memory::phys().ptr(chunk.hpa);
    let mut at = 0;
    while at < chunk.len() {
        let n = ZERO_PIECE.min(chunk.len() - at);
        // SAFETY: the block was just taken from the allocator, so nothing
        // else uses it; it is mapped writable at `phys().ptr` and is
        // `chunk.len()` bytes long, and `at + n` is at most that.
        unsafe { arch::zero_and_refresh_stack(base.wrapping_add(at as usize), n as usize) };
        at += n;
    }
}

/// The chunk holding `gpa` and the offset in it.
fn find(chunks: &[Chunk], gpa: u64) -> Option<(&Chunk, u64)> {
    chunks
        .iter()
        .find(|c| (c.gpa..c.gpa + c.len()).contains(&gpa))
        .map(|c| (c, gpa - c.gpa))
}

/// Copies between guest RAM at `gpa` and the host, `len` bytes, calling
/// `f(host pointer, offset in the copy, length)` per piece; false, with no
/// call, if any byte is outside RAM (past its end or in the device window
/// between its ranges).
fn pieces(
    chunks: &[Chunk],
    layout: RamLayout,
    gpa: u64,
    len: u64,
    mut f: impl FnMut(*mut u8, usize, usize),
) -> bool {
    if !layout.contains(GuestPhysAddr::new(gpa), len) {
        return false;
    }
    // `contains` checked the sum.
    let end = gpa + len;
    let mut at = gpa;
    while at < end {
        let Some((chunk, offset)) = find(chunks, at) else {
            return false;
        };
        let n = (chunk.len() - offset).min(end - at);
        let ptr = memory::phys().ptr(chunk.hpa).wrapping_add(offset as usize);
        f(ptr, (at - gpa) as usize, n as usize);
        at += n;
    }
    true
}

impl GuestMemory for GuestRam {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), LoadError> {
        if self.write_from(gpa.as_u64(), bytes) {
            Ok(())
        } else {
            Err(LoadError::OutsideRam {
                at: gpa,
                len: bytes.len() as u64,
                ram: self.size,
            })
        }
    }
}

/// Copies `bytes` into frame `frame`.
pub fn fill_frame(frame: HostPhysAddr, bytes: &[u8; 4096]) {
    // SAFETY: the frame is one this module allocated and owns, mapped
    // writable at `phys().ptr`, 4096 bytes long.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), memory::phys().ptr(frame), bytes.len())
    }
}

/// What the exit handlers reach of the machine, for one guest.
pub struct RamPlatform<'a, F: FnMut()> {
    /// The guest's name, for its lines.
    pub name: &'a str,
    /// Its RAM.
    pub ram: &'a GuestRam,
    /// The XCR0 bits guests may set.
    pub xcr0_supported: u64,
    /// Drops the vCPU's cached translations (the backend's way).
    pub flush: F,
}

impl<F: FnMut()> Platform for RamPlatform<'_, F> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> vcpu::cpuid::CpuidResult {
        arch::cpuid(leaf, subleaf)
    }

    fn xcr0_supported(&self) -> u64 {
        self.xcr0_supported
    }

    fn load_xcr0(&mut self, value: u64) {
        // SAFETY: the exit handler checked `value` against the supported
        // bits and the architectural rules; OSXSAVE is on where XSAVE is
        // (and without XSAVE nothing is supported, so nothing gets here).
        unsafe { arch::xsetbv(value) }
    }

    fn read_guest(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> bool {
        self.ram.read(gpa.as_u64(), buf)
    }

    fn write_guest(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> bool {
        self.ram.write_from(gpa.as_u64(), bytes)
    }

    fn ram(&self) -> RamLayout {
        self.ram.layout
    }

    fn guest_line(&mut self, line: &str) {
        crate::serial_console::guest_line(self.name, line);
    }

    fn now(&self) -> u64 {
        // SAFETY: RDTSC only reads the time-stamp counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn flush_guest_tlb(&mut self) {
        (self.flush)();
    }
}

/// The registers the monitor's `regs` shows, read through `access`, with
/// CR2 `cr2` and the descriptor tables `gdtr` and `idtr` (base, limit),
/// which the access trait does not cover.
pub fn register_snapshot<A: vcpu::access::VcpuAccess>(
    access: &A,
    cr2: u64,
    gdtr: (u64, u32),
    idtr: (u64, u32),
) -> console::RegisterSnapshot {
    use vcpu::access::{Gpr, Segment as Seg};
    let segment = |seg| {
        access
            .segment(seg)
            .map_or(console::Segment::default(), |s| console::Segment {
                selector: s.selector,
                base: s.base,
                limit: s.limit,
                access: s.attributes,
            })
    };
    let mut gprs = [0u64; 16];
    for (slot, reg) in gprs.iter_mut().zip(Gpr::ALL) {
        *slot = access.gpr(reg).unwrap_or(0);
    }
    console::RegisterSnapshot {
        gprs,
        rip: access.rip().unwrap_or(0),
        rflags: access.rflags().unwrap_or(0),
        cr0: access.cr0().unwrap_or(0),
        cr2,
        cr3: access.cr3().unwrap_or(0),
        cr4: access.cr4().unwrap_or(0),
        efer: access.efer().unwrap_or(0),
        cs: segment(Seg::Cs),
        ds: segment(Seg::Ds),
        es: segment(Seg::Es),
        fs: segment(Seg::Fs),
        gs: segment(Seg::Gs),
        ss: segment(Seg::Ss),
        tr: segment(Seg::Tr),
        ldtr: segment(Seg::Ldtr),
        gdtr,
        idtr,
    }
}

/// A copy of a guest's RAM map for a vCPU, which reads guest RAM without
/// its VM (the instruction bytes an exit's decoding needs). It owns
/// nothing: the VM's [`GuestRam`] gives the blocks back, after its vCPUs
/// are gone.
#[derive(Clone)]
pub struct RamReader {
    chunks: Vec<Chunk>,
    layout: RamLayout,
}

impl GuestRam {
    /// A reader of this RAM for a vCPU.
    pub fn reader(&self) -> RamReader {
        RamReader {
            chunks: self.chunks.clone(),
            layout: self.layout,
        }
    }
}

impl RamReader {
    /// Copies guest RAM at `gpa` into `buf`; false if any byte is outside
    /// RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let dst = buf.as_mut_ptr();
        let len = buf.len();
        pieces(&self.chunks, self.layout, gpa, len as u64, |src, off, n| {
            // SAFETY: as in `GuestRam::read`: `src..src+n` is guest RAM of
            // a VM that outlives this reader's vCPU, and `off + n <= len`.
            unsafe { core::ptr::copy_nonoverlapping(src, dst.add(off), n) }
        })
    }
}
