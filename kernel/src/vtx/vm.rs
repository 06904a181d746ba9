//! A guest under VT-x: its RAM and EPT from the frame allocator, its
//! bitmaps and VMCS, its one vCPU with the state a vCPU switch moves, entry
//! and exit (decoded into the neutral `Exit` and handled by the neutral
//! handlers), and its destruction, which gives every frame back.
//!
//! The decisions (controls, guest state, exit decoding) come from
//! the `vtx` crate and `vmx`, the exit handling from `vcpu`; this
//! module owns the frames and runs the VMX instructions.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ::vtx::setup::{self, VmcsLinks};
use ::vtx::{CrPolicy, VmxVcpu};
use addr::{GuestPhysAddr, HostPhysAddr};
use loader::entry::EntryState;
use loader::{GuestMemory, LoadError, LoadedImage};
use log::debug;
use mm::MmError;
use vcpu::com_out::ComOut;
use vcpu::exit::{handle_cpuid, handle_exit, handle_local_exit, Exit, Outcome, VcpuModel};
use vcpu::stop::StopReason;
use vcpu::vm::{self as vm_devices, VmDevices};
use vmx::bitmaps::{IoBitmaps, MsrBitmap};
use vmx::caps::VmxCapabilities;
use vmx::controls::ExitControls;
use vmx::ept::{Ept, EptError, EptMemoryType, EptPerms, EptTable, TableFrames};
use vmx::error::VmFail;
use vmx::execution::GuestControls;
use vmx::fast::RunFrame;
use vmx::instructions::{self as hw, HardwareVmcs, InveptType, InvvpidType};
use vmx::regs::GuestRegisters;
use vmx::vmcs::{
    Guest32, GuestNatural, Host16, Host32, Host64, HostNatural, ReadOnly32, ReadOnlyNatural,
    VmcsAccess,
};

use crate::guest_ram::{fill_frame, GuestRam, RamPlatform};
use crate::switched::SwitchedState;
use crate::{arch, gdt, memory};

/// What every guest shares on every CPU: the capabilities, the computed
/// controls, the XSAVE layout and the preemption-timer rate.
pub struct VmxSettings {
    /// The VT-x capabilities.
    pub caps: VmxCapabilities,
    /// The controls every VMCS gets.
    pub controls: GuestControls,
    /// The extended-state save area size, and the XCR0 bits supported;
    /// `None` without XSAVE (FXSAVE is used).
    pub xsave: Option<(usize, u64)>,
    /// The VMX-preemption timer counts once every 2^this TSC ticks.
    pub timer_shift: u8,
    /// I/O bitmaps A and B and the MSR bitmap, one frame each: the same
    /// for every guest (every port exits, the MSR policy is the same), so
    /// every VMCS points at these. Kept until power-off.
    bitmaps: [HostPhysAddr; 3],
    /// The APIC-access page and the EPT tables that map the local APIC's
    /// page to it, shared by every guest's EPT; `None` where "virtualize
    /// APIC accesses" is not offered (the page is then left unmapped and
    /// its accesses are EPT violations). Kept until power-off.
    apic_access: Option<ApicAccess>,
}

/// The APIC-access page (SDM Vol. 3C, 30.4) and the EPT template that maps
/// the local APIC's reset page, [`vcpu::exit::LAPIC_BASE`], to it. With
/// "use TPR shadow" off, every access the guest makes there exits as an
/// APIC access naming the register (reason 44): an EOI write is then
/// known without fetching and decoding the instruction, the costliest
/// part of the EPT-violation path it took before. Nothing is ever read
/// from or written to the page itself.
struct ApicAccess {
    page: HostPhysAddr,
    /// Maps only that page; every guest's EPT shares its page directory
    /// for the gigabyte at 3 GiB ([`Ept::share`]), which holds no RAM.
    template: Ept,
}

/// The gigabyte of guest-physical space the local APIC's page lies in.
const APIC_GIB: u64 = vcpu::exit::LAPIC_BASE & !(addr::SIZE_1G - 1);

impl ApicAccess {
    /// The page and its template, or `None` (logged) where a frame is
    /// missing or the EPT refuses.
    fn new(caps: vmx::caps::EptVpidCap) -> Option<Self> {
        let page = match memory::alloc_zeroed_frame() {
            Ok(page) => page,
            Err(e) => {
                log::warn!("vmx: no frame for the APIC-access page ({e}); APIC accesses fault");
                return None;
            }
        };
        let built = Ept::new(&mut KernelFrames, caps).and_then(|mut template| {
            match template.map(
                &mut KernelFrames,
                GuestPhysAddr::new(vcpu::exit::LAPIC_BASE),
                page,
                addr::PAGE_SIZE,
                EptPerms::READ | EptPerms::WRITE | EptPerms::EXECUTE,
                EptMemoryType::Uncacheable,
            ) {
                Ok(()) => Ok(template),
                Err(e) => {
                    template.destroy(&mut KernelFrames);
                    Err(e)
                }
            }
        });
        match built {
            Ok(template) => Some(Self { page, template }),
            Err(e) => {
                log::warn!("vmx: the APIC-access page's EPT: {e}; APIC accesses fault");
                let _ = memory::free_frame(page);
                None
            }
        }
    }
}

impl VmxSettings {
    /// Computes the shared settings and turns on CR4.OSXSAVE/OSFXSR, so the
    /// host can switch guests' extended state.
    pub fn new(caps: VmxCapabilities) -> Result<Self, String> {
        let controls = GuestControls::compute(&caps).map_err(|e| alloc::format!("{e}"))?;
        let xsave = crate::switched::xsave_layout();
        let mut bitmaps = [HostPhysAddr::new(0); 3];
        for slot in &mut bitmaps {
            *slot = memory::alloc_zeroed_frame()
                .map_err(|e| alloc::format!("no frame for the I/O and MSR bitmaps: {e}"))?;
        }
        let io = IoBitmaps::exit_all();
        fill_frame(bitmaps[0], io.a());
        fill_frame(bitmaps[1], io.b());
        let mut msr = MsrBitmap::exit_all();
        ::vtx::fill_msr_bitmap(&mut msr);
        fill_frame(bitmaps[2], msr.as_bytes());
        log::debug!("vmx: the I/O and MSR bitmaps (12 KiB) serve every guest");
        let apic_access = if controls.apic_access {
            ApicAccess::new(caps.ept_caps().unwrap_or(vmx::caps::EptVpidCap::empty()))
        } else {
            None
        };
        if let Some(a) = &apic_access {
            log::debug!(
                "vmx: the APIC-access page and its EPT tables ({} KiB) serve every guest",
                (a.template.table_frames() + 1) * 4
            );
        }
        let hw = Self {
            caps,
            controls,
            xsave,
            timer_shift: caps.misc.preemption_timer_rate,
            bitmaps,
            apic_access,
        };
        hw.prepare_this_cpu();
        Ok(hw)
    }

    /// Turns on CR4.OSXSAVE/OSFXSR on the calling CPU, so it can switch
    /// guests' extended state. Every CPU that runs guests calls it once.
    pub fn prepare_this_cpu(&self) {
        crate::switched::prepare_this_cpu(self.xsave);
    }

    /// The XCR0 bits guests may set.
    pub fn xcr0_supported(&self) -> u64 {
        self.xsave.map_or(0, |(_, bits)| bits)
    }
}

/// Why a guest could not be created.
pub enum CreateError {
    /// Not enough free frames.
    Memory(MmError),
    /// The EPT could not be built.
    Ept(EptError),
    /// The image did not load.
    Load(LoadError),
    /// A VMX instruction failed while setting up the VMCS.
    Vmcs(VmFail),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(e) => write!(f, "out of memory: {e}"),
            Self::Ept(e) => write!(f, "EPT: {e}"),
            Self::Load(e) => write!(f, "{e}"),
            Self::Vmcs(e) => write!(f, "VMCS setup: {e}"),
        }
    }
}

/// The kernel's frames as EPT table frames.
struct KernelFrames;

impl TableFrames for KernelFrames {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        memory::alloc_zeroed_frame().ok()
    }

    fn free_table(&mut self, at: HostPhysAddr) {
        if let Err(e) = memory::free_frame(at) {
            log::error!("EPT: giving back table frame {at} failed: {e}");
        }
    }

    fn table(&mut self, at: HostPhysAddr) -> &mut EptTable {
        // SAFETY: `at` is a frame `alloc_table` handed out and `Ept` has not
        // given back (the trait's contract), mapped at `phys().ptr`, 4 KiB
        // aligned and 4 KiB long like an `EptTable`, and only the one `Ept`
        // that owns it reaches it, through this `&mut self`.
        unsafe { &mut *memory::phys().ptr(at).cast::<EptTable>() }
    }
}

/// A VM under VT-x: its RAM and EPT, and the I/O and MSR bitmaps its
/// vCPUs share.
pub struct VmxVm {
    /// The name from the config.
    pub name: String,
    ram: GuestRam,
    ept: Option<Ept>,
    eptp: u64,
    /// Frames holding I/O bitmap A, B and the MSR bitmap.
    bitmaps: [HostPhysAddr; 3],
}

/// A vCPU under VT-x: its VMCS, registers and switched state.
pub struct VmxVcpuState {
    /// Its guest's name, for reports.
    name: String,
    vmcs: HostPhysAddr,
    /// The vCPU's registers while it is not running, and the CPUID
    /// answers the exit trampoline gives by itself.
    frame: RunFrame,
    /// Byte-sized COM1 writes queued and LSR reads answered by
    /// [`VmxVcpuState::enter`] since its last exit through the handlers.
    fast_com1: u64,
    /// Whether CPUID answers go into `frame` (see [`vmx::fast`]), and COM1
    /// writes into the VM's queue: only
    /// where VM exits save the preemption timer's count, so the fast path
    /// cannot keep the guest from being preempted.
    fast_paths: bool,
    /// Whether the VMCS has been launched on the CPU it is active on
    /// (VMRESUME next).
    launched: bool,
    /// The CPU's fixed CR0/CR4 bits, which the guest's CRs must keep.
    cr: CrPolicy,
    switched: SwitchedState<{ vcpu::msr::SWITCHED_MSRS.len() }>,
    /// The VPID, where enabled.
    vpid: Option<u16>,
    /// Its VM's EPTP, for invalidations.
    eptp: u64,
}

// SAFETY: a `VmxVm` and a `VmxVcpuState` are frames (by physical address)
// and plain data; nothing in them is tied to the CPU that made them except
// the VMCS's active state, which the run's `active_on` tracks and hands over
// with VMCLEAR before another CPU touches the VMCS.
unsafe impl Send for VmxVm {}
// SAFETY: as above.
unsafe impl Send for VmxVcpuState {}
// SAFETY: after `Guest::create` a `VmxVm` is only read through `&self`
// (its frame addresses); the guest RAM behind them is written by exit
// handlers through physical pointers, as the guest's own vCPUs write it,
// and never holds host data structures. Destruction takes `&mut`.
unsafe impl Sync for VmxVm {}

/// A VM and its vCPUs, as [`Guest::create`] makes them.
pub struct Guest {
    /// The VM.
    pub vm: VmxVm,
    /// Its vCPUs, the boot vCPU first.
    pub vcpus: Vec<VmxVcpuState>,
}

/// The VPIDs of one guest's vCPUs are `base + k`; guests are `MAX_VCPUS`
/// apart, so no two vCPUs share one (a shared VPID would let one vCPU use
/// translations another cached on the same CPU).
pub fn vpid_base(guest_index: usize) -> u16 {
    u16::try_from(guest_index.saturating_mul(vcpu::apic_bus::MAX_VCPUS) + 1).unwrap_or(u16::MAX)
}

impl Guest {
    /// Creates a guest named `name` with `ram_size` bytes of RAM, loads its
    /// image with `load`, and prepares the VMCSs of its `vcpus` vCPUs
    /// (VPIDs from `vpid`): the first at the image's entry, the others
    /// waiting for a start-up IPI. Each is active on this CPU when this
    /// returns, the last one current. On failure every frame taken is
    /// given back.
    pub fn create(
        hw: &VmxSettings,
        name: &str,
        ram_size: u64,
        vcpus: u32,
        vpid: u16,
        load: impl FnOnce(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
    ) -> Result<Guest, CreateError> {
        let layout =
            addr::RamLayout::new(ram_size).ok_or(CreateError::Load(LoadError::GuestTooLarge {
                ram: ram_size,
            }))?;
        let ram = GuestRam::alloc(layout).map_err(CreateError::Memory)?;
        let mut guest = Guest {
            vm: VmxVm {
                name: String::from(name),
                ram,
                ept: None,
                eptp: 0,
                bitmaps: [HostPhysAddr::new(0); 3],
            },
            vcpus: Vec::new(),
        };
        match guest.build(hw, vcpus.max(1), vpid, load) {
            Ok(()) => Ok(guest),
            Err(e) => {
                for vcpu in &mut guest.vcpus {
                    destroy_vcpu(&guest.vm, vcpu);
                }
                destroy_vm(&mut guest.vm);
                Err(e)
            }
        }
    }

    fn build(
        &mut self,
        hw: &VmxSettings,
        vcpus: u32,
        vpid: u16,
        load: impl FnOnce(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
    ) -> Result<(), CreateError> {
        let Guest { vm, vcpus: parts } = self;
        let loaded = load(&mut vm.ram).map_err(CreateError::Load)?;
        for w in loaded.warnings.iter() {
            log::warn!("guest {}: {w}", vm.name);
        }
        let ept_caps = hw.caps.ept_caps().unwrap_or(vmx::caps::EptVpidCap::empty());
        let mut ept = Ept::new(&mut KernelFrames, ept_caps).map_err(CreateError::Ept)?;
        let mapped = vm.ram.chunks.iter().try_for_each(|c| {
            ept.map(
                &mut KernelFrames,
                GuestPhysAddr::new(c.gpa),
                c.hpa,
                c.len(),
                EptPerms::all(),
                EptMemoryType::WriteBack,
            )
        });
        // The local APIC's page, to the APIC-access page: the template's
        // tables, no frame of this guest's.
        let mapped = mapped.and_then(|()| match &hw.apic_access {
            Some(a) => ept.share(&mut KernelFrames, &a.template, GuestPhysAddr::new(APIC_GIB)),
            None => Ok(()),
        });
        let eptp = ept.eptp(false);
        vm.ept = Some(ept);
        mapped.map_err(CreateError::Ept)?;
        vm.eptp = eptp.map_err(CreateError::Ept)?;
        debug!("guest {}: EPT maps {} MiB", vm.name, vm.ram.size >> 20);
        vm.bitmaps = hw.bitmaps;

        // Every vCPU's TSC counts from 0 here: guest = host + offset, one
        // offset for all, so the guest sees one TSC on every vCPU. The
        // host value is logged so that a guest's TSC readings can be put
        // on the host's time line (`cargo xtask bench` adds it to the
        // guest's reading at its ready marker to get ticks since power-on).
        let created = crate::guests::rdtsc();
        log::debug!("guest {}: guest TSC 0 at host TSC {created}", vm.name);
        // Application processors wait for their start-up IPI, which
        // rewrites this state.
        let waiting = EntryState::real(0, 0);
        for k in 0..vcpus {
            let entry = if k == 0 { &loaded.entry } else { &waiting };
            let vpid = vpid.saturating_add(u16::try_from(k).unwrap_or(u16::MAX));
            parts.push(VmxVcpuState::new(vm, hw, vpid));
            let Some(vcpu) = parts.last_mut() else {
                break;
            };
            vcpu.build(vm, hw, entry, 0u64.wrapping_sub(created))?;
        }
        Ok(())
    }
}

/// [`deliver_interrupt`] when the devices need nothing and the vCPU would
/// not take the 8259's interrupt ([`vm_devices::lapic_only`]): the
/// interrupts posted to the vCPU are folded into its local APIC and its
/// highest deliverable one injected, no lock taken.
fn deliver_from_lapic(
    vcpu: &mut VmxVcpuState,
    model: &mut VcpuModel,
    apics: &vcpu::apic_bus::ApicBus,
    now: u64,
    pic_output: bool,
) -> Result<(), StopReason> {
    // SAFETY: VMX root operation with this vCPU's VMCS current (the
    // caller is about to enter it here).
    let mut vmcs = unsafe { HardwareVmcs::current() };
    let mut access = VmxVcpu {
        vmcs: &mut vmcs,
        regs: &mut vcpu.frame.regs,
        cr: &vcpu.cr,
        cr2: None,
    };
    apics.collect(model.index, &mut model.lapic);
    vm_devices::pic_output_for_boot_vcpu(model.index, pic_output, apics);
    let delivered = vm_devices::deliver_from_lapic(
        &mut access,
        model.index,
        &mut model.lapic,
        now,
        pic_output,
        || None,
    )
    .map(|_| ())
    .map_err(|e| StopReason::Backend(alloc::format!("{e}")));
    model.attention_at = vm_devices::attention_with(model.index, &model.lapic, pic_output);
    delivered
}

impl VmxVcpuState {
    /// A vCPU of `vm` with nothing allocated yet.
    fn new(vm: &VmxVm, hw: &VmxSettings, vpid: u16) -> Self {
        VmxVcpuState {
            name: vm.name.clone(),
            vmcs: HostPhysAddr::new(0),
            frame: RunFrame::new(),
            fast_com1: 0,
            fast_paths: hw
                .controls
                .exit
                .contains(ExitControls::SAVE_PREEMPTION_TIMER_VALUE),
            launched: false,
            cr: CrPolicy {
                cr0_fixed: hw.caps.cr0_fixed,
                cr4_fixed: hw.caps.cr4_fixed,
            },
            switched: SwitchedState::new(vcpu::msr::SWITCHED_MSRS),
            vpid: hw.controls.vpid.then_some(vpid),
            eptp: 0,
        }
    }

    /// Allocates the vCPU's save area and VMCS and writes the VMCS for
    /// `entry`, with TSC offset `tsc_offset`; the VMCS is current on this
    /// CPU after.
    fn build(
        &mut self,
        vm: &VmxVm,
        hw: &VmxSettings,
        entry: &EntryState,
        tsc_offset: u64,
    ) -> Result<(), CreateError> {
        let vcpu = self;
        vcpu.switched.alloc(hw.xsave).map_err(CreateError::Memory)?;

        vcpu.vmcs = memory::alloc_zeroed_frame().map_err(CreateError::Memory)?;
        let revision = hw.caps.basic.revision_id & 0x7FFF_FFFF;
        // SAFETY: the VMCS frame is ours, mapped and zeroed; the revision
        // identifier goes in its first 4 bytes (SDM Vol. 3C, 25.2).
        unsafe { memory::phys().ptr(vcpu.vmcs).cast::<u32>().write(revision) };
        // SAFETY: VMX root operation (VT-x is on before guests are made);
        // the frame holds the revision identifier and no other use.
        unsafe {
            hw::vmclear(vcpu.vmcs).map_err(CreateError::Vmcs)?;
            hw::vmptrld(vcpu.vmcs).map_err(CreateError::Vmcs)?;
        }
        // SAFETY: VMX root operation at CPL 0 on this CPU, for as long as
        // this value lives (this function).
        let mut vmcs = unsafe { HardwareVmcs::current() };
        let links = VmcsLinks {
            io_bitmap_a: vm.bitmaps[0],
            io_bitmap_b: vm.bitmaps[1],
            msr_bitmap: vm.bitmaps[2],
            eptp: vm.eptp,
            vpid: vcpu.vpid,
            tsc_offset,
            apic_access: hw.apic_access.as_ref().map(|a| a.page),
        };
        setup::write_controls(&mut vmcs, &hw.controls, &links, &vcpu.cr, entry)
            .map_err(CreateError::Vmcs)?;
        setup::write_guest_state(&mut vmcs, &vcpu.cr, entry).map_err(CreateError::Vmcs)?;
        write_host_state(&mut vmcs).map_err(CreateError::Vmcs)?;
        // A guest destroyed earlier may have had this EPTP and VPID, and
        // this CPU may still cache its translations.
        vcpu.eptp = vm.eptp;
        vcpu.flush_translations();
        let r = entry.regs;
        for (reg, value) in [
            (vmx::exit::Gpr::Rax, r.rax),
            (vmx::exit::Gpr::Rbx, r.rbx),
            (vmx::exit::Gpr::Rcx, r.rcx),
            (vmx::exit::Gpr::Rdx, r.rdx),
            (vmx::exit::Gpr::Rsi, r.rsi),
            (vmx::exit::Gpr::Rdi, r.rdi),
            (vmx::exit::Gpr::Rbp, r.rbp),
        ] {
            vcpu.frame.regs.set(reg, value);
        }
        Ok(())
    }
}

impl VmxVcpuState {
    /// Starts the vCPU (its VMCS current on this CPU) as a start-up IPI
    /// with start page `vector` does after INIT (SDM Vol. 3A, 9.4.4 and
    /// Table 9-1): real mode with CS selector `vector << 8` and base
    /// `vector << 12`, IP 0, the general-purpose registers 0, caching off,
    /// EFER 0. Its extended state and debug registers stay as they were.
    pub fn start_up(&mut self, hw: &VmxSettings, vector: u8) -> Result<(), VmFail> {
        use vmx::vmcs::{Control32, ControlNatural};
        let entry = EntryState::real(u16::from(vector) << 8, 0);
        // SAFETY: VMX root operation with this vCPU's VMCS current (the
        // run made it so before asking).
        let mut vmcs = unsafe { HardwareVmcs::current() };
        setup::write_guest_state(&mut vmcs, &self.cr, &entry)?;
        vmcs.write(
            Control32::EntryControls,
            hw.controls.entry_for(false).bits(),
        )?;
        vmcs.write(
            Control32::PrimaryProcBasedControls,
            hw.controls.primary.bits(),
        )?;
        vmcs.write(Control32::EntryInterruptionInfo, 0)?;
        vmcs.write(ControlNatural::Cr0ReadShadow, entry.control.cr0)?;
        vmcs.write(ControlNatural::Cr4ReadShadow, entry.control.cr4)?;
        self.frame.regs = GuestRegisters::new();
        Ok(())
    }

    /// Makes this guest's VMCS current on this CPU, where it is active
    /// (`active_on` is this CPU).
    pub fn make_current(&self) -> Result<(), VmFail> {
        // SAFETY: VMX root operation; the VMCS was initialised by `create`
        // and is active on this CPU only (the caller checked `active_on`).
        unsafe { hw::vmptrld(self.vmcs) }
    }

    /// Takes this vCPU onto the calling CPU: its VMCS must be active
    /// nowhere (VMCLEARed by [`VmxVcpuState::clear`] on the CPU it was
    /// on). Loads it, points its host state at this CPU's tables,
    /// and drops whatever this CPU cached of the guest's translations
    /// from an earlier stay. The next entry is a VMLAUNCH.
    pub fn arrive(&mut self) -> Result<(), VmFail> {
        // SAFETY: VMX root operation; the VMCS is initialised and, as the
        // caller guarantees, active on no CPU.
        unsafe { hw::vmptrld(self.vmcs)? };
        self.launched = false;
        // SAFETY: VMX root operation at CPL 0 with this VMCS current.
        let mut vmcs = unsafe { HardwareVmcs::current() };
        write_host_state(&mut vmcs)?;
        self.flush_translations();
        Ok(())
    }

    /// Makes the VMCS inactive on the calling CPU (where it is active), so
    /// that another CPU may take it: VMCLEAR writes its state to memory and
    /// clears its launch state.
    pub fn clear(&mut self) {
        // SAFETY: VMX root operation; the VMCS is active on this CPU (the
        // caller checked `active_on`) and not running.
        if let Err(e) = unsafe { hw::vmclear(self.vmcs) } {
            log::error!("guest {}: VMCLEAR failed: {e}", self.name);
        }
        self.launched = false;
    }

    /// Drops this CPU's cached guest-physical (EPT) and, with VPID, linear
    /// translations of this guest.
    fn flush_translations(&self) {
        // SAFETY: VMX root operation; invalidation only drops cached
        // translations.
        unsafe {
            let _ = hw::invept(InveptType::SingleContext, self.eptp)
                .or_else(|_| hw::invept(InveptType::AllContext, 0));
            if let Some(vpid) = self.vpid {
                let _ = hw::invvpid(InvvpidType::SingleContext, vpid, 0);
            }
        }
    }

    /// Sets the VMX-preemption timer for the next slice of `ticks` TSC
    /// ticks, and the exit trampoline's fast path to end with it.
    pub fn set_slice(&mut self, hw: &VmxSettings, ticks: u64) -> Result<(), VmFail> {
        let count = u32::try_from(ticks >> hw.timer_shift).unwrap_or(u32::MAX);
        if self.fast_paths {
            self.frame.fast_until = crate::guests::rdtsc().saturating_add(ticks);
        }
        // SAFETY: VMX root operation with this guest's VMCS current.
        let mut vmcs = unsafe { HardwareVmcs::current() };
        vmcs.write(Guest32::PreemptionTimerValue, count)
    }

    /// Saves this guest's switched state (it is leaving the CPU).
    ///
    /// XSAVE saves only the components enabled in XCR0, but a guest uses
    /// SSE with XCR0 = 1 (legacy SSE needs only CR4.OSFXSR), so the save and
    /// the restore run with every supported component enabled and the
    /// incoming guest's XCR0 is loaded afterwards.
    pub fn save_switched(&mut self, hw: &VmxSettings) {
        self.switched.save(hw.xsave);
    }

    /// Loads this guest's switched state (it is coming onto the CPU).
    pub fn load_switched(&self, hw: &VmxSettings, xcr0: u64) {
        self.switched.load(hw.xsave, xcr0);
    }
}

/// Gives back a vCPU's frames: save area and VMCS. The VMCS is active on
/// this CPU or on none.
pub fn destroy_vcpu(vm: &VmxVm, vcpu: &mut VmxVcpuState) {
    if vcpu.vmcs.as_u64() != 0 {
        // SAFETY: VMX root operation; the VMCS is active on this CPU or
        // on none (the run hands it over before a stop), and VMCLEAR makes
        // it inactive so its frame can be reused.
        if let Err(e) = unsafe { hw::vmclear(vcpu.vmcs) } {
            log::error!("guest {}: VMCLEAR failed: {e}", vm.name);
        }
        let _ = memory::free_frame(vcpu.vmcs);
        vcpu.vmcs = HostPhysAddr::new(0);
    }
    if let Some(vpid) = vcpu.vpid {
        // SAFETY: VMX root operation; the vCPU no longer runs, and
        // INVVPID drops this CPU's cached linear mappings of it before the
        // VPID is reused.
        let _ = unsafe { hw::invvpid(InvvpidType::SingleContext, vpid, 0) };
    }
    vcpu.switched.free();
}

/// Gives back a VM's frames once its vCPUs are destroyed: RAM, EPT
/// tables, bitmaps.
pub fn destroy_vm(vm: &mut VmxVm) {
    if let Some(ept) = vm.ept.take() {
        // SAFETY: VMX root operation; the guest no longer runs, and
        // INVEPT drops what this CPU cached from its EPT before the frames
        // are reused.
        unsafe {
            let _ = hw::invept(InveptType::SingleContext, vm.eptp)
                .or_else(|_| hw::invept(InveptType::AllContext, 0));
        }
        ept.destroy(&mut KernelFrames);
    }
    // The bitmaps are the host's (`VmxSettings`), shared.
    vm.bitmaps = [HostPhysAddr::new(0); 3];
    vm.ram.free();
}

/// The host-state area: this CPU as it runs now (SDM Vol. 3C, 25.5 and
/// 27.2.2-27.2.4 for what VM entry checks).
fn write_host_state(vmcs: &mut HardwareVmcs) -> Result<(), VmFail> {
    use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
    use x86_64::instructions::tables::{sgdt, sidt};
    // SAFETY: reading control registers has no side effects.
    let (cr0, cr4) = unsafe { (hw::read_cr0(), hw::read_cr4()) };
    let (cr3, _) = x86_64::registers::control::Cr3::read_raw();
    vmcs.write(HostNatural::Cr0, cr0)?;
    vmcs.write(HostNatural::Cr3, cr3.start_address().as_u64())?;
    vmcs.write(HostNatural::Cr4, cr4)?;
    vmcs.write(Host16::CsSelector, CS::get_reg().0)?;
    vmcs.write(Host16::SsSelector, SS::get_reg().0)?;
    vmcs.write(Host16::DsSelector, DS::get_reg().0)?;
    vmcs.write(Host16::EsSelector, ES::get_reg().0)?;
    vmcs.write(Host16::FsSelector, FS::get_reg().0)?;
    vmcs.write(Host16::GsSelector, GS::get_reg().0)?;
    vmcs.write(Host16::TrSelector, gdt::tss_selector())?;
    // SAFETY: FS_BASE, GS_BASE, EFER and PAT exist on every x86-64 CPU.
    let (fs, gs, efer, pat) = unsafe {
        (
            arch::rdmsr(0xC000_0100),
            arch::rdmsr(0xC000_0101),
            arch::rdmsr(0xC000_0080),
            arch::rdmsr(0x277),
        )
    };
    vmcs.write(HostNatural::FsBase, fs)?;
    vmcs.write(HostNatural::GsBase, gs)?;
    vmcs.write(HostNatural::TrBase, gdt::tss_base())?;
    vmcs.write(HostNatural::GdtrBase, sgdt().base.as_u64())?;
    vmcs.write(HostNatural::IdtrBase, sidt().base.as_u64())?;
    vmcs.write(Host32::SysenterCs, 0)?;
    vmcs.write(HostNatural::SysenterEsp, 0)?;
    vmcs.write(HostNatural::SysenterEip, 0)?;
    vmcs.write(Host64::Efer, efer)?;
    vmcs.write(Host64::Pat, pat)?;
    vmcs.write(HostNatural::Rip, hw::vm_exit_address())?;
    Ok(())
}

impl VmxVcpuState {
    /// Enters the vCPU (VMLAUNCH the first time on this CPU, VMRESUME
    /// after) and returns when it exits, with the exit decoded; `Err` when
    /// the entry itself failed or the exit could not be read.
    ///
    /// The caller runs this on the CPU where the VMCS is active and
    /// current, with interrupts off.
    ///
    /// A byte-sized OUT to COM1's transmit register that `com1_out`
    /// takes, and a read of COM1's line status that `com1_out` can
    /// answer, are finished here and the guest entered again (see
    /// [`vcpu::com_out`]), before the run's deadline as for the
    /// trampoline's CPUID answers.
    #[inline]
    pub fn enter(&mut self, com1_out: &ComOut) -> Result<Exit, Box<StopReason>> {
        loop {
            // SAFETY: VMX root operation at CPL 0 with interrupts off (the
            // host runs with them off); the current VMCS is this vCPU's,
            // active on this CPU, with this CPU's host state and HOST_RIP
            // at the exit path (`create`/`arrive`), and `launched` tracks
            // its launch state.
            let result = unsafe { hw::vm_run(&mut self.frame, self.launched) };
            if let Err(e) = result {
                return Err(Box::new(StopReason::LaunchFailed(alloc::format!("{e}"))));
            }
            self.launched = true;
            // SAFETY: VMX root operation with this vCPU's VMCS current.
            let mut vmcs = unsafe { HardwareVmcs::current() };
            if self.fast_paths && self.com1_fast_io(&mut vmcs, com1_out) {
                continue;
            }
            return ::vtx::decode_exit(&mut vmcs)
                .map_err(|e| Box::new(StopReason::Backend(alloc::format!("{e}"))));
        }
    }

    /// Finishes the exit if it is `OUT 0x3F8, AL` that the queue takes, or
    /// `IN AL, 0x3FD` (COM1's line status) while that read changes
    /// nothing (exit reason 30, I/O; qualification: size 1, not string,
    /// not REP, the port, and the direction: SDM Vol. 3C, table "Exit
    /// Qualification for I/O Instructions"): RIP moves past it. False,
    /// with nothing changed, for anything else, an interrupt shadow to
    /// clear, a RIP that wraps at 4 GiB, or past the run's deadline.
    #[inline]
    fn com1_fast_io(&mut self, vmcs: &mut HardwareVmcs, com1_out: &ComOut) -> bool {
        const IO_INSTRUCTION: u32 = 30;
        const COM1_THR_BYTE_OUT: u64 = 0x03F8_0000;
        const COM1_LSR_BYTE_IN: u64 = 0x03FD_0008;
        if vmcs.read(ReadOnly32::ExitReason) != Ok(IO_INSTRUCTION) {
            return false;
        }
        let Ok(qualification) = vmcs.read(ReadOnlyNatural::ExitQualification) else {
            return false;
        };
        let access = qualification & 0xFFFF_003F;
        let lsr = match access {
            COM1_THR_BYTE_OUT => None,
            COM1_LSR_BYTE_IN => match com1_out.lsr() {
                Some(lsr) => Some(lsr),
                None => return false,
            },
            _ => return false,
        };
        if crate::guests::rdtsc() >= self.frame.fast_until {
            return false;
        }
        let (Ok(shadow), Ok(len), Ok(rip)) = (
            vmcs.read(Guest32::InterruptibilityState),
            vmcs.read(ReadOnly32::ExitInstructionLength),
            vmcs.read(GuestNatural::Rip),
        ) else {
            return false;
        };
        let next = rip.wrapping_add(u64::from(len));
        if shadow & 3 != 0 || (next as u32) < (rip as u32) {
            return false;
        }
        if vmcs.write(GuestNatural::Rip, next).is_err() {
            return false;
        }
        match lsr {
            // IN AL sets AL and leaves the rest of RAX.
            Some(lsr) => {
                let rax = self.frame.regs.rax();
                self.frame.regs.set_rax((rax & !0xFF) | u64::from(lsr));
            }
            None => {
                if !com1_out.push(self.frame.regs.rax() as u8) {
                    // Full, or the UART changed mode: the device bus takes
                    // it, from the OUT again. (Were RIP not to go back,
                    // which VMWRITE to a current VMCS cannot fail to do,
                    // the OUT is done.)
                    return vmcs.write(GuestNatural::Rip, rip).is_err();
                }
            }
        }
        self.fast_com1 = self.fast_com1.wrapping_add(1);
        true
    }

    /// Where the vCPU resumes (its RIP), read from its VMCS, current on
    /// this CPU; 0 if it cannot be read.
    pub fn rip(&self) -> u64 {
        // SAFETY: VMX root operation with this vCPU's VMCS current.
        let vmcs = unsafe { HardwareVmcs::current() };
        vmcs.read(GuestNatural::Rip).unwrap_or(0)
    }
}

/// Handles a CPUID exit of the vCPU (current on this CPU): the one exit
/// that needs neither the VM nor its devices.
#[inline(always)]
pub fn cpuid(vcpu: &mut VmxVcpuState, model: &mut VcpuModel) -> Outcome {
    // SAFETY: VMX root operation with this vCPU's VMCS current (it just
    // exited here).
    let mut vmcs = unsafe { HardwareVmcs::current() };
    let (leaf, subleaf) = (vcpu.frame.regs.rax() as u32, vcpu.frame.regs.rcx() as u32);
    let mut access = VmxVcpu {
        vmcs: &mut vmcs,
        regs: &mut vcpu.frame.regs,
        cr: &vcpu.cr,
        cr2: None,
    };
    let outcome = handle_cpuid(&mut access, model, arch::cpuid);
    // An answer the policy's cache keeps is the vCPU's every time it asks
    // the same with the same CR4 bits: the trampoline gives it from now on.
    if vcpu.fast_paths {
        if let Some((cr4, r)) = model.cpuid_cache.cached(leaf, subleaf) {
            vcpu.frame
                .cpuid
                .remember(leaf, subleaf, cr4, [r.eax, r.ebx, r.ecx, r.edx]);
        }
    }
    outcome
}

/// Handles `exit`, which the vCPU (current on this CPU) of VM `vm` just
/// took, with the neutral handlers; `devices` locks the VM's devices, and
/// is called only for an exit that [needs them](vcpu::exit::needs_devices_now)
/// (one test decides: `handle_local_exit` declines those).
/// Always inlined: as a call of its own it added about 50 instructions to
/// every exit that reaches it (a Bochs trace of a VMCALL exit).
#[inline(always)]
pub fn handle<D: core::ops::DerefMut<Target = VmDevices>>(
    hw: &VmxSettings,
    vm: &VmxVm,
    vcpu: &mut VmxVcpuState,
    model: &mut VcpuModel,
    devices: impl FnOnce() -> D,
    exit: &Exit,
) -> Outcome {
    // SAFETY: VMX root operation with this vCPU's VMCS current (it just
    // exited here).
    let mut vmcs = unsafe { HardwareVmcs::current() };
    let mut access = VmxVcpu {
        vmcs: &mut vmcs,
        regs: &mut vcpu.frame.regs,
        cr: &vcpu.cr,
        cr2: None,
    };
    // The hottest exit needs no more of the machine than host CPUID.
    if let Exit::Cpuid = exit {
        return handle_cpuid(&mut access, model, arch::cpuid);
    }
    let vpid = vcpu.vpid;
    let mut platform = RamPlatform {
        name: &vm.name,
        ram: &vm.ram,
        xcr0_supported: hw.xcr0_supported(),
        flush: || {
            if let Some(vpid) = vpid {
                // SAFETY: VMX root operation. Without VPID every VM entry
                // flushes already; with it, INVVPID single-context drops
                // this vCPU's cached translations.
                let _ = unsafe { hw::invvpid(InvvpidType::SingleContext, vpid, 0) };
            }
        },
    };
    let outcome = match handle_local_exit(exit, &mut access, model, &mut platform) {
        Some(outcome) => outcome,
        None => handle_exit(exit, &mut access, model, &mut devices(), &mut platform),
    };
    if let Some(cr2) = access.cr2 {
        // SAFETY: this vCPU's switched state, CR2 among it, is in this
        // CPU while the vCPU runs here (the run loop loads it before the
        // first entry and saves it, reading CR2, before another vCPU's
        // comes in); the host takes no page faults, so CR2 keeps the
        // value for the guest's #PF handler.
        unsafe { arch::write_cr2(cr2) }
    }
    outcome
}

/// Before an entry, at TSC `now`: delivers the interrupt VM `name`'s
/// controller holds if the vCPU (current on this CPU) can take it, else
/// asks for an interrupt window.
pub fn deliver_interrupt(
    name: &str,
    vcpu: &mut VmxVcpuState,
    model: &mut VcpuModel,
    devices: &mut VmDevices,
    now: u64,
) -> Result<(), StopReason> {
    // SAFETY: VMX root operation with this vCPU's VMCS current (the
    // caller is about to enter it here).
    let mut vmcs = unsafe { HardwareVmcs::current() };
    let mut access = VmxVcpu {
        vmcs: &mut vmcs,
        regs: &mut vcpu.frame.regs,
        cr: &vcpu.cr,
        cr2: None,
    };
    let delivered = vm_devices::deliver_interrupt(
        &mut access,
        model.index,
        &mut model.lapic,
        devices,
        now,
        &mut |line| crate::serial_console::guest_line(name, line),
    )
    .map(|_| ())
    .map_err(|e| StopReason::Backend(alloc::format!("{e}")));
    model.attention_at = vm_devices::attention_at(model.index, &model.lapic, devices);
    delivered
}

impl VmxVcpuState {
    /// The vCPU's registers for the monitor, read from its VMCS (current
    /// on this CPU, the vCPU not running) and its saved GPRs. CR2 is the
    /// value last saved with the switched state.
    pub fn snapshot(&mut self) -> console::RegisterSnapshot {
        // SAFETY: VMX root operation with this vCPU's VMCS current (the
        // caller made it so).
        let mut vmcs = unsafe { HardwareVmcs::current() };
        let table = |vmcs: &HardwareVmcs, base, limit| {
            let limit: u32 = vmcs.read(limit).unwrap_or(0);
            (vmcs.read(base).unwrap_or(0), limit)
        };
        let gdtr = table(&vmcs, GuestNatural::GdtrBase, Guest32::GdtrLimit);
        let idtr = table(&vmcs, GuestNatural::IdtrBase, Guest32::IdtrLimit);
        let access = VmxVcpu {
            vmcs: &mut vmcs,
            regs: &mut self.frame.regs,
            cr: &self.cr,
            cr2: None,
        };
        crate::guest_ram::register_snapshot(&access, self.switched.cr2, gdtr, idtr)
    }
}

impl VmxVm {
    /// Reads the guest's RAM at `gpa` for the monitor: all of `buf`, or
    /// an error naming where RAM ends.
    pub fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), console::MemError> {
        self.ram.read_memory(gpa, buf)
    }
}

impl crate::guests::Hardware for VmxSettings {
    type Vm = VmxVm;
    type Vcpu = VmxVcpuState;

    fn prepare_this_cpu(&self) {
        VmxSettings::prepare_this_cpu(self);
    }

    fn end_host_interrupt(&self) {
        // The exit acknowledged the interrupt ("acknowledge interrupt on
        // exit"): it is in service. COM1's comes to the boot CPU: serve
        // the port first.
        if crate::cpu::current_index() == 0 {
            crate::serial_console::on_interrupt();
        }
        crate::lapic::eoi();
    }

    fn create_guest(
        &self,
        index: usize,
        name: &str,
        ram: u64,
        vcpus: u32,
        load: &mut dyn FnMut(&mut dyn GuestMemory) -> Result<LoadedImage, LoadError>,
    ) -> Result<(VmxVm, Vec<VmxVcpuState>), String> {
        Guest::create(self, name, ram, vcpus, vpid_base(index), load)
            .map(|g| (g.vm, g.vcpus))
            .map_err(|e| alloc::format!("{e}"))
    }

    fn destroy_vcpu(&self, vm: &VmxVm, vcpu: &mut VmxVcpuState) {
        destroy_vcpu(vm, vcpu);
    }

    fn destroy_vm(&self, vm: &mut VmxVm) {
        destroy_vm(vm);
    }

    fn start_up(&self, vcpu: &mut VmxVcpuState, vector: u8) -> Result<(), String> {
        vcpu.start_up(self, vector)
            .map_err(|e| alloc::format!("VMCS access failed at a start-up IPI: {e}"))
    }

    fn arrive(&self, _vm: &VmxVm, vcpu: &mut VmxVcpuState, _cpu: usize) -> Result<(), String> {
        vcpu.arrive().map_err(|e| alloc::format!("{e}"))
    }

    fn make_current(&self, vcpu: &mut VmxVcpuState) -> Result<(), String> {
        VmxVcpuState::make_current(vcpu).map_err(|e| alloc::format!("{e}"))
    }

    fn clear(&self, vcpu: &mut VmxVcpuState) {
        VmxVcpuState::clear(vcpu);
    }

    fn save_switched(&self, vcpu: &mut run::Vcpu<crate::guests::HostBackend<Self>>) {
        vcpu.hw.save_switched(self);
    }

    fn load_switched(&self, vcpu: &mut VmxVcpuState, xcr0: u64) {
        VmxVcpuState::load_switched(vcpu, self, xcr0);
    }

    fn set_slice(&self, vcpu: &mut VmxVcpuState, ticks: u64) -> Result<(), String> {
        VmxVcpuState::set_slice(vcpu, self, ticks)
            .map_err(|e| alloc::format!("VMCS access failed: {e}"))
    }

    #[inline]
    fn enter(
        &self,
        vcpu: &mut VmxVcpuState,
        com1_out: &vcpu::com_out::ComOut,
    ) -> Result<Exit, Box<StopReason>> {
        VmxVcpuState::enter(vcpu, com1_out)
    }

    #[inline]
    fn handle(
        &self,
        vm: &run::Vm<crate::guests::HostBackend<Self>>,
        vcpu: &mut run::Vcpu<crate::guests::HostBackend<Self>>,
        exit: &Exit,
    ) -> Outcome {
        // The CPUID exits the trampoline answered since the last exit
        // that came here count as handled ones.
        let fast = vcpu.hw.frame.take_fast_cpuid_exits();
        if fast != 0 {
            vcpu::exit::count_answered_cpuid(&mut vcpu.model, fast);
        }
        let queued = core::mem::take(&mut vcpu.hw.fast_com1);
        if queued != 0 {
            vcpu::exit::count_queued_com1_writes(&mut vcpu.model, queued);
        }
        // The hottest exit takes no lock.
        if let Exit::Cpuid = exit {
            return cpuid(&mut vcpu.hw, &mut vcpu.model);
        }
        // Only the exits that need the devices lock them (an EOI only when
        // it ends a level-triggered interrupt).
        handle(
            self,
            &vm.hw,
            &mut vcpu.hw,
            &mut vcpu.model,
            || vm.devices(),
            exit,
        )
    }

    fn deliver_interrupt(
        &self,
        vm: &run::Vm<crate::guests::HostBackend<Self>>,
        vcpu: &mut run::Vcpu<crate::guests::HostBackend<Self>>,
        now: u64,
    ) -> Result<(), StopReason> {
        // From the vCPU's own local APIC, without the devices' lock,
        // whenever they need nothing (what another vCPU changes there
        // after this look reaches this one by its APIC bus and a kick).
        // Quiet first, then the 8259's output (the order the devices'
        // unlock publishes them in reverse), so a stale output never
        // passes for the one that goes with a quiet look.
        let quiet = vm.devices_quiet(now);
        let pic_output = vm.pic_output();
        if vm_devices::lapic_only(vcpu.model.index, &vcpu.model.lapic, quiet, pic_output) {
            return deliver_from_lapic(&mut vcpu.hw, &mut vcpu.model, &vm.apics, now, pic_output);
        }
        deliver_interrupt(
            &vm.name,
            &mut vcpu.hw,
            &mut vcpu.model,
            &mut vm.devices(),
            now,
        )
    }

    fn rip(&self, vcpu: &VmxVcpuState) -> u64 {
        VmxVcpuState::rip(vcpu)
    }

    fn registers(&self, vcpu: &mut VmxVcpuState) -> console::RegisterSnapshot {
        vcpu.snapshot()
    }

    fn read_memory(&self, vm: &VmxVm, gpa: u64, buf: &mut [u8]) -> Result<(), console::MemError> {
        VmxVm::read_memory(vm, gpa, buf)
    }
}
