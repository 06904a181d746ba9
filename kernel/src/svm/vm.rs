//! A guest under AMD SVM: its RAM and nested page tables from the frame
//! allocator, its I/O and MSR permission maps, one VMCB per vCPU with the
//! state a vCPU switch moves, entry and exit (decoded into the neutral
//! `Exit` and handled by the neutral handlers), and its destruction, which
//! gives every frame back.
//!
//! A slice ends with the host's local APIC timer: armed for the slice's
//! end before each VMRUN, it interrupts the guest (#VMEXIT(INTR)); the
//! exit is a slice end once the TSC has passed it. SVM has no
//! VMX-preemption timer. A VMCB may run on any CPU: moving it costs a
//! fresh ASID on the new CPU and a VMRUN with every VMCB clean bit clear.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use ::svm::access::{SoftState, SvmVcpu};
use ::svm::caps::SvmCaps;
use ::svm::exit::decode_exit;
use ::svm::maps::{fill_io_map, fill_msr_map, IOPM_BYTES, MSRPM_BYTES};
use ::svm::npt::{Npt, NptFrames, NptTable};
use ::svm::regs::Gprs;
use ::svm::setup::{self, VmcbLinks};
use ::svm::vmcb::{Intercept, SaveSegment, TlbControl, Vmcb};
use addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use loader::entry::EntryState;
use loader::{GuestMemory, LoadError, LoadedImage};
use log::debug;
use vcpu::access::VcpuAccess;
use vcpu::exit::{handle_cpuid, handle_exit, handle_local_exit, Exit, Outcome};
use vcpu::stop::StopReason;
use vcpu::vm::{self as vm_devices, VmDevices};

use crate::guest_ram::{GuestRam, RamPlatform, RamReader};
use crate::guests::{Hardware, HostBackend};
use crate::switched::SwitchedState;
use crate::{arch, memory};

/// The MSRs the host switches for an SVM guest: VMLOAD and VMSAVE move
/// STAR, LSTAR, CSTAR, SFMASK and KernelGsBase with the VMCB, so only
/// TSC_AUX is left.
const SWITCHED_MSRS: &[u32; 1] = &[vcpu::msr::IA32_TSC_AUX];

/// #VMEXIT(INTR): a physical interrupt ended the run.
const EXIT_INTR: u64 = 0x60;

/// What every guest shares on every CPU.
pub struct SvmSettings {
    /// What SVM offers on these CPUs.
    pub caps: SvmCaps,
    /// The extended-state layout (see `crate::switched::xsave_layout`).
    pub xsave: Option<(usize, u64)>,
}

impl SvmSettings {
    /// The shared settings; prepares the calling CPU. `Err` when no timer
    /// can end a slice.
    pub fn new(caps: SvmCaps, _tsc_hz: u64) -> Result<Self, String> {
        // The slice timer is the host's local APIC timer.
        if !crate::lapic::arm_wakeup(None) {
            return Err(String::from(
                "the local APIC timer cannot end slices (no TSC-deadline mode and no calibrated rate)",
            ));
        }
        let hw = SvmSettings {
            caps,
            xsave: crate::switched::xsave_layout(),
        };
        crate::switched::prepare_this_cpu(hw.xsave);
        Ok(hw)
    }

    /// The XCR0 bits guests may set.
    pub fn xcr0_supported(&self) -> u64 {
        self.xsave.map_or(0, |(_, bits)| bits)
    }
}

/// The kernel's frames as nested page table frames.
struct KernelFrames;

impl NptFrames for KernelFrames {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        memory::alloc_zeroed_frame().ok()
    }

    fn free_table(&mut self, at: HostPhysAddr) {
        if let Err(e) = memory::free_frame(at) {
            log::error!("NPT: giving back table frame {at} failed: {e}");
        }
    }

    fn table(&mut self, at: HostPhysAddr) -> &mut NptTable {
        // SAFETY: `at` is a frame `alloc_table` handed out and `Npt` has not
        // given back (the trait's contract), mapped at `phys().ptr`, 4 KiB
        // aligned and 4 KiB long like an `NptTable`, and only the one `Npt`
        // that owns it reaches it, through this `&mut self`.
        unsafe { &mut *memory::phys().ptr(at).cast::<NptTable>() }
    }
}

/// A block of frames this module owns, by physical address and order.
#[derive(Clone, Copy)]
struct Block {
    at: HostPhysAddr,
    order: u8,
}

impl Block {
    const NONE: Block = Block {
        at: HostPhysAddr::new(0),
        order: 0,
    };

    /// A zeroed block of at least `bytes`.
    fn alloc(bytes: usize) -> Result<Block, mm::MmError> {
        let order = (bytes as u64)
            .div_ceil(PAGE_SIZE)
            .next_power_of_two()
            .trailing_zeros() as u8;
        let at = memory::alloc_block(order)?;
        // SAFETY: the block was just allocated, is mapped and 2^order
        // frames long.
        unsafe { core::ptr::write_bytes(memory::phys().ptr(at), 0, (PAGE_SIZE << order) as usize) };
        Ok(Block { at, order })
    }

    /// The block's first `N` bytes (N at most its length).
    fn bytes<const N: usize>(&mut self) -> &mut [u8; N] {
        debug_assert!(N as u64 <= PAGE_SIZE << self.order);
        // SAFETY: the block is this module's, mapped at `phys().ptr` and at
        // least N bytes long (the callers ask for the size they allocated);
        // `&mut self` makes the borrow unique.
        unsafe { &mut *memory::phys().ptr(self.at).cast::<[u8; N]>() }
    }

    fn free(&mut self) {
        if self.at.as_u64() != 0 {
            let _ = memory::free_block(self.at, self.order);
            *self = Block::NONE;
        }
    }
}

/// A VM under SVM: its RAM and nested page tables, and the permission
/// maps its vCPUs share.
pub struct SvmVm {
    /// The name from the config.
    pub name: String,
    ram: GuestRam,
    npt: Option<Npt>,
    iopm: Block,
    msrpm: Block,
}

/// A vCPU under SVM: its VMCB, registers and switched state.
pub struct SvmVcpuState {
    vmcb: HostPhysAddr,
    gprs: Gprs,
    soft: SoftState,
    switched: SwitchedState<{ SWITCHED_MSRS.len() }>,
    /// Its VM's RAM, for the instruction bytes an exit's decoding needs.
    ram: RamReader,
    /// The CPU and ASID generation its ASID was handed out in (`None`:
    /// it needs one on its next entry).
    asid_from: Option<(usize, u64)>,
    /// The number of ASIDs the CPU has.
    asids: u32,
    /// Whether the CPU flushes by ASID (else a fresh ASID stands in).
    flush_by_asid: bool,
    /// Whether the CPU has VMCB clean bits (else they stay 0).
    clean_bits: bool,
    /// Whether the guest's cached translations must go before its next
    /// entry (the exit handlers asked).
    flush: bool,
    /// The TSC value the current slice ends at.
    slice_end: u64,
}

// SAFETY: an `SvmVm` and an `SvmVcpuState` are frames (by physical address)
// and plain data; a VMCB is not tied to a CPU (only its ASID is, which
// `asid_from` tracks), and the run moves a vCPU between CPUs only with its
// slot locked.
unsafe impl Send for SvmVm {}
// SAFETY: as above.
unsafe impl Send for SvmVcpuState {}
// SAFETY: after creation an `SvmVm` is only read through `&self` (frame
// addresses); guest RAM is written by exit handlers through physical
// pointers, as the guest's vCPUs write it. Destruction takes `&mut`.
unsafe impl Sync for SvmVm {}

impl SvmVcpuState {
    /// The vCPU's VMCB.
    fn vmcb(&mut self) -> &mut Vmcb {
        // SAFETY: the frame was allocated and zeroed for this vCPU's VMCB
        // at creation and is given back only by `destroy_vcpu`; it is
        // mapped at `phys().ptr`, 4 KiB aligned and as long as a `Vmcb`;
        // `&mut self` makes the borrow unique, and the hardware touches
        // it only during VMRUN, which this vCPU's CPU runs.
        unsafe { &mut *memory::phys().ptr(self.vmcb).cast::<Vmcb>() }
    }

    /// Whether the instruction at the guest's RIP is HLT, with interrupts
    /// on.
    fn at_hlt(&mut self, ram: &GuestRam) -> bool {
        const HLT: u8 = 0xF4;
        const RFLAGS_IF: u64 = 1 << 9;
        let access = self.access();
        if !access.rflags().is_ok_and(|f| f & RFLAGS_IF != 0) {
            return false;
        }
        let platform = RamPlatform {
            name: "",
            ram,
            xcr0_supported: 0,
            flush: || {},
        };
        matches!(
            vcpu::mmio::fetch_at_rip(&access, &platform),
            Ok(Ok((fetched, _))) if fetched.as_slice().first() == Some(&HLT)
        )
    }

    /// Completes the HLT at RIP (see [`Hardware::deliver_interrupt`] for
    /// SVM): RIP past it, no interrupt shadow left.
    fn complete_hlt(&mut self) {
        let vmcb = self.vmcb();
        let rip = vmcb.rip();
        vmcb.set_rip(rip.wrapping_add(1));
        vmcb.set_interrupt_shadow(false);
    }

    /// The VMCB, the GPRs and the software state as the neutral handlers
    /// see them.
    fn access(&mut self) -> SvmVcpu<'_> {
        // SAFETY: as in `vmcb`.
        let vmcb = unsafe { &mut *memory::phys().ptr(self.vmcb).cast::<Vmcb>() };
        SvmVcpu {
            vmcb,
            gprs: &mut self.gprs,
            soft: &mut self.soft,
        }
    }
}

/// The ASIDs guests start from: guest `index`'s vCPUs are told apart by
/// the per-CPU allocator in `crate::svm`, not by number.
fn create(
    hw: &SvmSettings,
    name: &str,
    ram_size: u64,
    vcpus: u32,
    load: &mut dyn FnMut(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
) -> Result<(SvmVm, Vec<SvmVcpuState>), String> {
    let layout = addr::RamLayout::new(ram_size)
        .ok_or_else(|| alloc::format!("{}", LoadError::GuestTooLarge { ram: ram_size }))?;
    let ram = GuestRam::alloc(layout).map_err(|e| alloc::format!("out of memory: {e}"))?;
    let mut vm = SvmVm {
        name: String::from(name),
        ram,
        npt: None,
        iopm: Block::NONE,
        msrpm: Block::NONE,
    };
    let mut parts = Vec::new();
    match build(hw, &mut vm, &mut parts, vcpus.max(1), load) {
        Ok(()) => Ok((vm, parts)),
        Err(e) => {
            for vcpu in &mut parts {
                destroy_vcpu(&vm, vcpu);
            }
            destroy_vm(&mut vm);
            Err(e)
        }
    }
}

fn build(
    hw: &SvmSettings,
    vm: &mut SvmVm,
    parts: &mut Vec<SvmVcpuState>,
    vcpus: u32,
    load: &mut dyn FnMut(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
) -> Result<(), String> {
    let loaded = load(&mut vm.ram).map_err(|e| alloc::format!("{e}"))?;
    for w in loaded.warnings.iter() {
        log::warn!("guest {}: {w}", vm.name);
    }
    let gigabyte_pages = arch::cpuid(0x8000_0001, 0).edx & (1 << 26) != 0;
    let mut npt =
        Npt::new(&mut KernelFrames, gigabyte_pages).map_err(|e| alloc::format!("NPT: {e}"))?;
    let mapped =
        vm.ram.chunks.iter().try_for_each(|c| {
            npt.map(&mut KernelFrames, GuestPhysAddr::new(c.gpa), c.hpa, c.len())
        });
    let ncr3 = npt.ncr3();
    vm.npt = Some(npt);
    mapped.map_err(|e| alloc::format!("NPT: {e}"))?;
    debug!("guest {}: NPT maps {} MiB", vm.name, vm.ram.size >> 20);

    let oom = |e: mm::MmError| alloc::format!("out of memory: {e}");
    vm.iopm = Block::alloc(IOPM_BYTES).map_err(oom)?;
    fill_io_map(vm.iopm.bytes::<IOPM_BYTES>());
    vm.msrpm = Block::alloc(MSRPM_BYTES).map_err(oom)?;
    fill_msr_map(vm.msrpm.bytes::<MSRPM_BYTES>());

    // One TSC offset for every vCPU, counting from 0 here (see the VT-x
    // backend's `build`, which logs the same line for the bench).
    let created = crate::guests::rdtsc();
    log::debug!("guest {}: guest TSC 0 at host TSC {created}", vm.name);
    let waiting = EntryState::real(0, 0);
    for k in 0..vcpus {
        let entry = if k == 0 { &loaded.entry } else { &waiting };
        let mut vcpu = SvmVcpuState {
            vmcb: HostPhysAddr::new(0),
            gprs: Gprs::new(),
            soft: SoftState::new(hw.caps.nrip_save(), hw.caps.decode_assists()),
            switched: SwitchedState::new(SWITCHED_MSRS),
            ram: vm.ram.reader(),
            asid_from: None,
            asids: hw.caps.asids,
            flush_by_asid: hw.caps.flush_by_asid(),
            clean_bits: hw.caps.vmcb_clean(),
            flush: false,
            slice_end: 0,
        };
        let built = vcpu.switched.alloc(hw.xsave).map_err(oom).and_then(|()| {
            vcpu.vmcb = memory::alloc_zeroed_frame().map_err(oom)?;
            Ok(())
        });
        parts.push(vcpu);
        built?;
        let Some(vcpu) = parts.last_mut() else {
            break;
        };
        let links = VmcbLinks {
            iopm: vm.iopm.at.as_u64(),
            msrpm: vm.msrpm.at.as_u64(),
            ncr3,
            asid: 1,
            tsc_offset: 0u64.wrapping_sub(created),
        };
        let SvmVcpuState { vmcb, gprs, .. } = vcpu;
        // SAFETY: as in `SvmVcpuState::vmcb`: the frame was just allocated
        // and zeroed for this VMCB.
        let vmcb = unsafe { &mut *memory::phys().ptr(*vmcb).cast::<Vmcb>() };
        setup::write_initial(vmcb, gprs, &links, entry);
        // A spinning vCPU ends its turn (`Exit::Pause`), so a lock holder
        // of its guest waiting for a CPU gets one; where the CPU has the
        // filter (every Zen; QEMU's emulation has none).
        if hw.caps.pause_filter() {
            let threshold = hw
                .caps
                .has(::svm::caps::SvmFeatures::PAUSE_FILTER_THRESHOLD)
                .then_some(128);
            setup::set_pause_filter(
                vmcb,
                Some(setup::PauseFilter {
                    threshold,
                    ..setup::PauseFilter::DEFAULT
                }),
            );
        }
    }
    Ok(())
}

/// Gives back a vCPU's frames: VMCB and save area.
pub fn destroy_vcpu(_vm: &SvmVm, vcpu: &mut SvmVcpuState) {
    if vcpu.vmcb.as_u64() != 0 {
        let _ = memory::free_frame(vcpu.vmcb);
        vcpu.vmcb = HostPhysAddr::new(0);
    }
    vcpu.switched.free();
}

/// Gives back a VM's frames once its vCPUs are destroyed: RAM, nested page
/// tables, permission maps. Its vCPUs' ASIDs are never handed out again
/// before a CPU's generation changes, which flushes that CPU's TLB, so
/// nothing cached of the tables outlives them in use.
pub fn destroy_vm(vm: &mut SvmVm) {
    if let Some(npt) = vm.npt.take() {
        npt.destroy(&mut KernelFrames);
    }
    vm.iopm.free();
    vm.msrpm.free();
    vm.ram.free();
}

impl Hardware for SvmSettings {
    type Vm = SvmVm;
    type Vcpu = SvmVcpuState;

    fn prepare_this_cpu(&self) {
        crate::switched::prepare_this_cpu(self.xsave);
    }

    fn end_host_interrupt(&self) {
        // The interrupt went through the host's IDT right after the exit
        // (`enter`), whose handler ended it.
    }

    fn create_guest(
        &self,
        _index: usize,
        name: &str,
        ram: u64,
        vcpus: u32,
        load: &mut dyn FnMut(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
    ) -> Result<(SvmVm, Vec<SvmVcpuState>), String> {
        create(self, name, ram, vcpus, load)
    }

    fn destroy_vcpu(&self, vm: &SvmVm, vcpu: &mut SvmVcpuState) {
        destroy_vcpu(vm, vcpu);
    }

    fn destroy_vm(&self, vm: &mut SvmVm) {
        destroy_vm(vm);
    }

    fn start_up(&self, vcpu: &mut SvmVcpuState, vector: u8) -> Result<(), String> {
        let SvmVcpuState {
            vmcb, gprs, soft, ..
        } = vcpu;
        // SAFETY: as in `SvmVcpuState::vmcb`.
        let vmcb = unsafe { &mut *memory::phys().ptr(*vmcb).cast::<Vmcb>() };
        setup::start_up(vmcb, gprs, vector);
        *soft = SoftState::new(soft.nrip_save, soft.decode_assists);
        Ok(())
    }

    fn arrive(&self, _vm: &SvmVm, vcpu: &mut SvmVcpuState, _cpu: usize) -> Result<(), String> {
        // A new CPU: a fresh ASID there, and nothing of the VMCB cached.
        vcpu.asid_from = None;
        vcpu.vmcb().mark_all_dirty();
        Ok(())
    }

    fn make_current(&self, _vcpu: &mut SvmVcpuState) -> Result<(), String> {
        // SVM has no current VMCB: VMRUN names it.
        Ok(())
    }

    fn clear(&self, _vcpu: &mut SvmVcpuState) {
        // Nothing of a VMCB stays behind in a CPU but its ASID's
        // translations, which the next CPU does not use (`arrive`).
    }

    fn save_switched(&self, vcpu: &mut run::Vcpu<HostBackend<Self>>) {
        // The guest's XCR0 is the CPU's while it owns the CPU. A CPU that
        // honours the XSETBV intercept keeps the two equal; QEMU's
        // emulation (7.2) lets the guest's XSETBV through, so the value
        // the guest set is taken from the CPU here.
        if self.xsave.is_some() {
            vcpu.model.xcr0 = arch::xgetbv();
        }
        vcpu.hw.switched.save(self.xsave);
    }

    fn load_switched(&self, vcpu: &mut SvmVcpuState, xcr0: u64) {
        vcpu.switched.load(self.xsave, xcr0);
    }

    fn set_slice(&self, vcpu: &mut SvmVcpuState, ticks: u64) -> Result<(), String> {
        vcpu.slice_end = crate::guests::rdtsc().saturating_add(ticks);
        Ok(())
    }

    fn enter(
        &self,
        vcpu: &mut SvmVcpuState,
        _com1_out: &vcpu::com_out::ComOut,
    ) -> Result<Exit, Box<StopReason>> {
        let cpu = usize::from(crate::cpu::current_index());
        let generation = crate::svm::asid_generation();
        if vcpu.flush && !vcpu.flush_by_asid {
            // Without flush-by-ASID a fresh ASID drops the old one's
            // translations for this vCPU just as well.
            vcpu.asid_from = None;
        }
        let tlb = if vcpu.asid_from != Some((cpu, generation)) {
            let (asid, generation, flush_all) = crate::svm::new_asid(vcpu.asids);
            vcpu.asid_from = Some((cpu, generation));
            vcpu.vmcb().set_guest_asid(asid);
            if flush_all {
                TlbControl::FlushAll
            } else {
                TlbControl::DoNothing
            }
        } else if vcpu.flush {
            TlbControl::FlushGuest
        } else {
            TlbControl::DoNothing
        };
        vcpu.flush = false;
        vcpu.vmcb().set_tlb_control(tlb);
        crate::lapic::arm_wakeup(Some(vcpu.slice_end));
        let host = crate::svm::host_vmsave_area();
        // SAFETY: SVM is on on this CPU (the run runs only on CPUs that
        // reported `AMD-V ready`) with interrupts off; the VMCB was set up
        // by `setup::write_initial` with VMRUN intercepted and nested
        // paging over this guest's RAM only; `host` is this CPU's VMSAVE
        // frame.
        unsafe { crate::svm::svm_run(&mut vcpu.gprs, vcpu.vmcb, host) };
        if vcpu.clean_bits {
            vcpu.vmcb().mark_all_clean();
        }
        if vcpu.vmcb().exit_code() == EXIT_INTR {
            crate::svm::take_pending_interrupt();
        }
        let slice_over = crate::guests::rdtsc() >= vcpu.slice_end;
        let ram = &vcpu.ram;
        let SvmVcpuState {
            vmcb, gprs, soft, ..
        } = vcpu;
        // SAFETY: as in `SvmVcpuState::vmcb`.
        let vmcb = unsafe { &mut *memory::phys().ptr(*vmcb).cast::<Vmcb>() };
        let mut access = SvmVcpu { vmcb, gprs, soft };
        Ok(decode_exit(&mut access, slice_over, &mut |gpa, buf| {
            ram.read(gpa.as_u64(), buf)
        }))
    }

    fn handle(
        &self,
        vm: &run::Vm<HostBackend<Self>>,
        vcpu: &mut run::Vcpu<HostBackend<Self>>,
        exit: &Exit,
    ) -> Outcome {
        let run::Vcpu { hw, model, .. } = vcpu;
        if let Exit::Cpuid = exit {
            return handle_cpuid(&mut hw.access(), model, arch::cpuid);
        }
        let SvmVcpuState {
            vmcb,
            gprs,
            soft,
            flush,
            ..
        } = hw;
        // SAFETY: as in `SvmVcpuState::vmcb`.
        let vmcb = unsafe { &mut *memory::phys().ptr(*vmcb).cast::<Vmcb>() };
        let mut access = SvmVcpu { vmcb, gprs, soft };
        let mut platform = RamPlatform {
            name: &vm.hw.name,
            ram: &vm.hw.ram,
            xcr0_supported: self.xcr0_supported(),
            flush: || *flush = true,
        };
        // Only the exits that need the devices lock them.
        match handle_local_exit(exit, &mut access, model, &mut platform) {
            Some(outcome) => outcome,
            None => handle_exit(exit, &mut access, model, &mut vm.devices(), &mut platform),
        }
    }

    fn deliver_interrupt(
        &self,
        vm: &run::Vm<HostBackend<Self>>,
        vcpu: &mut run::Vcpu<HostBackend<Self>>,
        now: u64,
    ) -> Result<(), StopReason> {
        let run::Vcpu { hw, model, .. } = vcpu;
        let mut devices = vm.devices();
        let name = &vm.name;
        let mut deliver = |hw: &mut SvmVcpuState, devices: &mut VmDevices| {
            vm_devices::deliver_interrupt(
                &mut hw.access(),
                model.index,
                &mut model.lapic,
                devices,
                now,
                &mut |line| crate::serial_console::guest_line(name, line),
            )
        };
        // An interrupt that goes in with the guest on a HLT (interrupts
        // on) is taken after the HLT, as if it had come while the CPU was
        // halted: the HLT is completed first. Interrupts are asynchronous,
        // so that is one order hardware can give too; it is needed
        // because QEMU 7.2's SVM neither keeps the `sti; hlt` shadow
        // across an exit nor holds the interrupt window for it, so the
        // interrupt came before the HLT, its handler ran, and the HLT then
        // waited for nothing (the timer guest stopped as "halted forever"
        // in about one QEMU run in six on a loaded host).
        let mut delivered = deliver(hw, &mut devices);
        let waiting = matches!(delivered, Ok(false))
            && hw.vmcb().intercepted(Intercept::Vintr)
            && hw.vmcb().interrupt_shadow();
        if waiting && hw.at_hlt(&vm.hw.ram) {
            hw.complete_hlt();
            let _ = hw.access().request_interrupt_window(false);
            delivered = deliver(hw, &mut devices);
        } else if matches!(delivered, Ok(true)) && hw.at_hlt(&vm.hw.ram) {
            hw.complete_hlt();
        }
        let delivered = delivered
            .map(|_| ())
            .map_err(|e| StopReason::Backend(alloc::format!("{e}")));
        model.attention_at = vm_devices::attention_at(model.index, &model.lapic, &devices);
        delivered
    }

    fn rip(&self, vcpu: &SvmVcpuState) -> u64 {
        // SAFETY: as in `SvmVcpuState::vmcb`, read only.
        let vmcb = unsafe { &*memory::phys().ptr(vcpu.vmcb).cast::<Vmcb>() };
        vmcb.rip()
    }

    fn registers(&self, vcpu: &mut SvmVcpuState) -> console::RegisterSnapshot {
        let vmcb = vcpu.vmcb();
        let table = |s: ::svm::vmcb::VmcbSegment| (s.base, s.limit);
        let gdtr = table(vmcb.segment(SaveSegment::Gdtr));
        let idtr = table(vmcb.segment(SaveSegment::Idtr));
        let cr2 = vmcb.cr2();
        crate::guest_ram::register_snapshot(&vcpu.access(), cr2, gdtr, idtr)
    }

    fn read_memory(&self, vm: &SvmVm, gpa: u64, buf: &mut [u8]) -> Result<(), console::MemError> {
        vm.ram.read_memory(gpa, buf)
    }
}
