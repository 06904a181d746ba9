//! Handing a vCPU from one CPU to another: the mailbox through which a CPU
//! asks the CPU where a vCPU is active to give it up, the give-up itself,
//! and the waits, each of which serves the waiting CPU's own mailbox.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use sched::CpuId;
use spin::MutexGuard;

use super::{Backend, ConfiguredGuest, GuestRun, Vm};

/// A request from one CPU to another: "make this guest's vCPU inactive,
/// and save its switched state if you hold it, so I can run it". The
/// requester holds the guest's slot lock and waits until `vm` is null
/// again.
pub struct Mailbox<B: Backend> {
    /// Taken (true) by one requester at a time.
    busy: AtomicBool,
    /// The slot of the guest to give up (valid while `vm` is set).
    slot: AtomicUsize,
    /// The guest, while a request is open.
    vm: AtomicPtr<Vm<B>>,
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
    /// The slot whose switched state is in the CPU.
    pub owner: Option<usize>,
    /// The slot whose vCPU is current.
    pub current: Option<usize>,
    /// When the last slice ended, and whose it was: the next slice of
    /// another guest measures the switch from there.
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
    /// Locks slot `i`, doing what other CPUs ask of this one meanwhile (a
    /// CPU that holds the lock may be waiting for this one).
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
        // SAFETY: the requesting CPU holds slot `i`'s lock, which guards
        // this guest, and does nothing with it until `vm` is null again:
        // this CPU has the only access meanwhile. The vCPU is not running
        // (it was picked for the requester, or is being stopped).
        let vm = unsafe { &mut *ptr };
        self.give_up(local, vm, i);
        mailbox.vm.store(core::ptr::null_mut(), Ordering::Release);
    }

    /// Gives up guest `i` (its slot locked here) if its vCPU is active on
    /// this CPU, so any CPU may take it without asking.
    pub(super) fn release(&self, local: &mut ThisCpu, slot: &mut ConfiguredGuest<B>, i: usize) {
        if let Some(vm) = slot.vm.as_mut() {
            if vm.vcpu.active_on == Some(local.index) {
                self.give_up(local, vm, i);
            }
        }
    }

    /// What giving up guest `i`'s vCPU, active on this CPU, takes: its
    /// switched state back to its save area if this CPU holds it, and
    /// making it inactive.
    pub(super) fn give_up(&self, local: &mut ThisCpu, vm: &mut Vm<B>, i: usize) {
        if local.owner == Some(i) {
            self.backend.save_switched(&mut vm.vcpu);
            local.owner = None;
        }
        if local.current == Some(i) {
            local.current = None;
        }
        self.backend.clear(&mut vm.vcpu.hw);
        vm.vcpu.active_on = None;
    }

    /// Makes sure guest `i`'s vCPU is active on no CPU but this one: asks
    /// the CPU it is on to give it up and waits until it has.
    pub(super) fn take_over(&self, local: &mut ThisCpu, i: usize, vm: &mut Vm<B>) {
        let Some(other) = vm.vcpu.active_on.filter(|&c| c != local.index) else {
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
        let ptr: *mut Vm<B> = vm;
        mailbox.vm.store(ptr, Ordering::Release);
        self.backend.kick(other);
        while mailbox.vm.load(Ordering::Acquire) == ptr {
            self.service(local);
            core::hint::spin_loop();
        }
        mailbox.busy.store(false, Ordering::Release);
    }
}
