//! Handing a vCPU from one CPU to another: the mailbox through which a CPU
//! asks the CPU where a vCPU is active to give it up, the give-up itself,
//! and the waits, each of which serves the waiting CPU's own mailbox.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use sched::CpuId;
use spin::MutexGuard;

use super::{Backend, ConfiguredGuest, GuestRun, Vcpu, VcpuSlot};

/// A request from one CPU to another: "make this vCPU inactive, and save
/// its switched state if you hold it, so I can run it". The requester
/// holds the vCPU's slot lock and waits until `vm` is null again.
pub struct Mailbox<B: Backend> {
    /// Taken (true) by one requester at a time.
    busy: AtomicBool,
    /// The vCPU's slot (valid while `vm` is set).
    slot: AtomicUsize,
    /// The vCPU, while a request is open.
    vm: AtomicPtr<Vcpu<B>>,
}

impl<B: Backend> Mailbox<B> {
    /// An empty mailbox.
    pub fn new() -> Self {
        Self {
            busy: AtomicBool::new(false),
            slot: AtomicUsize::new(0),
            vm: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

/// What one CPU keeps while it runs guests.
pub struct ThisCpu {
    /// Its scheduler index.
    pub cpu: CpuId,
    /// Its CPU number.
    pub index: usize,
    /// The vCPU (by slot) whose switched state is in the CPU.
    pub owner: Option<usize>,
    /// The vCPU (by slot) that is current.
    pub current: Option<usize>,
    /// When the last slice ended, and whose it was: the next slice of
    /// another vCPU measures the switch from there.
    pub last_exit: Option<(usize, u64)>,
}

impl ThisCpu {
    /// A CPU that holds no guest's state yet: scheduler index `cpu`, CPU
    /// number `index`.
    pub fn new(cpu: CpuId, index: usize) -> Self {
        ThisCpu {
            cpu,
            index,
            owner: None,
            current: None,
            last_exit: None,
        }
    }
}

impl<B: Backend> GuestRun<B> {
    /// Locks vCPU slot `i`, doing what other CPUs ask of this one
    /// meanwhile.
    pub(super) fn lock_vcpu(
        &self,
        local: &mut ThisCpu,
        i: usize,
    ) -> Option<MutexGuard<'_, Option<VcpuSlot<B>>>> {
        let slot = self.vcpus.get(i)?;
        loop {
            if let Some(guard) = slot.try_lock() {
                return Some(guard);
            }
            self.service(local);
            core::hint::spin_loop();
        }
    }

    /// Locks guest slot `i`, doing what other CPUs ask of this one
    /// meanwhile (a CPU that holds the lock may be waiting for this one).
    pub(super) fn lock_slot(
        &self,
        local: &mut ThisCpu,
        i: usize,
    ) -> Option<MutexGuard<'_, ConfiguredGuest<B>>> {
        let slot = self.slots.get(i)?;
        loop {
            if let Some(guard) = slot.try_lock() {
                return Some(guard);
            }
            self.service(local);
            core::hint::spin_loop();
        }
    }

    /// Does what another CPU asked of this one: gives up a vCPU active
    /// here (whose switched state may be here).
    pub(super) fn service(&self, local: &mut ThisCpu) {
        let Some(mailbox) = self.mailboxes.get(local.index) else {
            return;
        };
        let ptr = mailbox.vm.load(Ordering::Acquire);
        if ptr.is_null() {
            return;
        }
        let i = mailbox.slot.load(Ordering::Acquire);
        // SAFETY: the requesting CPU holds vCPU slot `i`'s lock, which
        // guards this vCPU, and does nothing with it until `vm` is null
        // again: this CPU has the only access meanwhile. The vCPU is not
        // running (it was picked for the requester, or is being stopped).
        let vcpu = unsafe { &mut *ptr };
        self.give_up(local, vcpu, i);
        mailbox.vm.store(core::ptr::null_mut(), Ordering::Release);
    }

    /// Gives up vCPU `i` (its slot locked here) if it is active on this
    /// CPU, so any CPU may take it without asking.
    pub(super) fn release(&self, local: &mut ThisCpu, slot: &mut Option<VcpuSlot<B>>, i: usize) {
        if let Some(s) = slot.as_mut() {
            if s.vcpu.active_on == Some(local.index) {
                self.give_up(local, &mut s.vcpu, i);
            }
        }
    }

    /// What giving up vCPU `i`, active on this CPU, takes: its switched
    /// state back to its save area if this CPU holds it, and making it
    /// inactive.
    pub(super) fn give_up(&self, local: &mut ThisCpu, vcpu: &mut Vcpu<B>, i: usize) {
        if local.owner == Some(i) {
            self.backend.save_switched(vcpu);
            local.owner = None;
        }
        if local.current == Some(i) {
            local.current = None;
        }
        self.backend.clear(&mut vcpu.hw);
        vcpu.active_on = None;
    }

    /// Makes sure vCPU `i` is active on no CPU but this one: asks the CPU
    /// it is on to give it up and waits until it has.
    pub(super) fn take_over(&self, local: &mut ThisCpu, i: usize, vcpu: &mut Vcpu<B>) {
        let Some(other) = vcpu.active_on.filter(|&c| c != local.index) else {
            return;
        };
        let Some(mailbox) = self.mailboxes.get(other) else {
            return;
        };
        while mailbox
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.service(local);
            core::hint::spin_loop();
        }
        mailbox.slot.store(i, Ordering::Release);
        let ptr: *mut Vcpu<B> = vcpu;
        mailbox.vm.store(ptr, Ordering::Release);
        self.backend.kick(other);
        while mailbox.vm.load(Ordering::Acquire) == ptr {
            self.service(local);
            core::hint::spin_loop();
        }
        mailbox.busy.store(false, Ordering::Release);
    }
}
