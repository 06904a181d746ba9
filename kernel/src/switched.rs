//! The guest state both hardware backends switch lazily: what is neither
//! in the VMCS or VMCB nor in the GPR file, and what the host never uses,
//! so it stays in the CPU across exits and moves only when another vCPU
//! comes onto the CPU. The extended state (XSAVE, or FXSAVE without it),
//! the debug registers DR0-DR3 and DR6, CR2 and a list of MSRs; each
//! backend says which of these its hardware does not switch itself.

use addr::{HostPhysAddr, PAGE_SIZE};
use mm::MmError;

use crate::{arch, memory};

/// The bytes of a vCPU's extended-state save area on this CPU: the XSAVE
/// area for every supported component (CPUID.(EAX=0DH,ECX=0):ECX), or the
/// 512-byte FXSAVE image without XSAVE.
pub fn save_area_bytes() -> u64 {
    if arch::cpuid(1, 0).ecx & (1 << 26) == 0 {
        return 512;
    }
    u64::from(arch::cpuid(0xD, 0).ecx).max(512)
}

/// This CPU's extended-state layout: the XSAVE area's size and the XCR0
/// bits supported; `None` without XSAVE (FXSAVE is used).
pub fn xsave_layout() -> Option<(usize, u64)> {
    let has_xsave = arch::cpuid(1, 0).ecx & (1 << 26) != 0;
    has_xsave.then(|| {
        let d = arch::cpuid(0xD, 0);
        (d.ecx as usize, u64::from(d.eax) | (u64::from(d.edx) << 32))
    })
}

/// Turns on CR4.OSXSAVE/OSFXSR on the calling CPU, so it can switch
/// guests' extended state; `xsave` is [`xsave_layout`]'s answer. Every CPU
/// that runs guests calls it once.
pub fn prepare_this_cpu(xsave: Option<(usize, u64)>) {
    use x86_64::registers::control::Cr4;
    let cr4 = Cr4::read_raw();
    let bits = (1 << 9) | if xsave.is_some() { 1 << 18 } else { 0 };
    // SAFETY: OSFXSR (bit 9) and, with XSAVE, OSXSAVE (bit 18) only allow
    // FXSAVE/XSAVE and the vector instructions; the host never executes
    // vector code (soft-float target), and both VT-x and SVM permit both
    // bits.
    unsafe { Cr4::write_raw(cr4 | bits) };
}

/// One vCPU's lazily switched state, with the `N` MSRs its backend's
/// hardware does not switch itself (a constant, so the loops over them
/// unroll: they run on every vCPU switch).
pub struct SwitchedState<const N: usize> {
    /// The XSAVE (or FXSAVE) area: at first the power-on image, which
    /// XRSTOR or FXRSTOR loads.
    area: HostPhysAddr,
    area_order: u8,
    /// Where the area is mapped (`memory::phys().ptr(area)`, kept rather
    /// than looked up at every switch).
    area_at: usize,
    /// CR2 as last saved (its current value only while the vCPU is off
    /// its CPU); unused where the backend's hardware switches CR2.
    pub cr2: u64,
    debug: [u64; 5],
    /// The MSRs switched here, by number, and their values.
    msrs: &'static [u32; N],
    values: [u64; N],
}

impl<const N: usize> SwitchedState<N> {
    /// A vCPU's state with nothing allocated, switching `msrs`.
    pub fn new(msrs: &'static [u32; N]) -> Self {
        SwitchedState {
            area: HostPhysAddr::new(0),
            area_order: 0,
            area_at: 0,
            cr2: 0,
            debug: ::vtx::setup::initial_debug_registers(),
            msrs,
            values: [0; N],
        }
    }

    /// Allocates the save area for a CPU whose layout is `xsave` and
    /// writes the power-on x87/SSE image into it.
    pub fn alloc(&mut self, xsave: Option<(usize, u64)>) -> Result<(), MmError> {
        let area_size = xsave.map_or(512, |(size, _)| size).max(512);
        let order = (area_size as u64)
            .div_ceil(PAGE_SIZE)
            .next_power_of_two()
            .trailing_zeros() as u8;
        let area = memory::alloc_block(order)?;
        // SAFETY: the block was just allocated, is mapped and 2^order frames
        // long.
        unsafe {
            core::ptr::write_bytes(memory::phys().ptr(area), 0, (PAGE_SIZE << order) as usize)
        };
        self.area = area;
        self.area_order = order;
        self.area_at = memory::phys().ptr(area) as usize;
        // The power-on x87/SSE image, for FXRSTOR and XRSTOR alike: with a
        // zeroed image XRSTOR would load MXCSR = 0 (every SIMD exception
        // unmasked), since its standard form loads MXCSR whatever
        // XSTATE_BV says.
        // SAFETY: the block was just allocated and zeroed, is mapped at
        // `phys().ptr` and at least 4 KiB long, more than the image.
        let image = unsafe {
            core::slice::from_raw_parts_mut(
                memory::phys().ptr(area),
                ::vtx::setup::SAVE_AREA_INIT_LEN,
            )
        };
        ::vtx::setup::init_save_area(image);
        Ok(())
    }

    /// Gives the save area back.
    pub fn free(&mut self) {
        if self.area.as_u64() != 0 {
            let _ = memory::free_block(self.area, self.area_order);
            self.area = HostPhysAddr::new(0);
            self.area_at = 0;
        }
    }

    /// Saves this vCPU's state from the CPU (it is leaving it).
    ///
    /// XSAVE saves only the components enabled in XCR0, but a guest uses
    /// SSE with XCR0 = 1 (legacy SSE needs only CR4.OSFXSR), so the save and
    /// the restore run with every supported component enabled and the
    /// incoming guest's XCR0 is loaded afterwards.
    #[inline]
    pub fn save(&mut self, xsave: Option<(usize, u64)>) {
        let area = self.area_at as *mut u8;
        // SAFETY: CR4.OSXSAVE/OSFXSR were set by `prepare_this_cpu`; the
        // area is this vCPU's block (mapped at `area_at`), large enough for every supported
        // component (CPUID.(EAX=0DH,ECX=0):ECX) and page aligned; XCR0 gets
        // only supported bits.
        unsafe {
            match xsave {
                Some((_, supported)) => {
                    arch::xsetbv(supported);
                    arch::xsave(area);
                }
                None => arch::fxsave(area),
            }
        }
        self.cr2 = arch::read_cr2();
        self.debug = arch::read_debug_registers();
        for (slot, &msr) in self.values.iter_mut().zip(self.msrs) {
            // SAFETY: the switched MSRs exist on every CPU with long mode
            // and hardware virtualization (TSC_AUX with RDTSCP, which
            // Bochs, QEMU and real CPUs with either have).
            *slot = unsafe { arch::rdmsr(msr) };
        }
    }

    /// Loads this vCPU's state into the CPU (it is coming onto it), the
    /// guest's XCR0 `xcr0` last.
    #[inline]
    pub fn load(&self, xsave: Option<(usize, u64)>, xcr0: u64) {
        let area = self.area_at as *const u8;
        // SAFETY: as in `save`; the area holds a power-on or saved image;
        // the guest's XCR0 was validated when it set it.
        unsafe {
            match xsave {
                Some((_, supported)) => {
                    arch::xsetbv(supported);
                    arch::xrstor(area);
                    arch::xsetbv(xcr0);
                }
                None => arch::fxrstor(area),
            }
            arch::write_cr2(self.cr2);
            arch::write_debug_registers(self.debug);
        }
        for (&value, &msr) in self.values.iter().zip(self.msrs) {
            // SAFETY: as in `save`; the host uses none of these (no
            // SYSCALL, SWAPGS or RDTSCP in the hypervisor). A value the
            // guest could write is one the CPU accepted from it.
            unsafe { arch::wrmsr(msr, value) };
        }
    }
}
