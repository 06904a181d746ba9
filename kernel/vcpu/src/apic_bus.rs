//! The wires between the local APICs of one VM's vCPUs.
//!
//! Each vCPU owns its [`LocalApic`] and only the CPU running that vCPU
//! touches it. An interrupt for another vCPU (an IPI, an I/O APIC message)
//! is therefore *posted*: the sender sets its vector in the target's
//! [`Inbox`] with atomic operations, and the target folds its inbox into
//! its local APIC ([`ApicBus::collect`]) before its next entry. The sender
//! then reports the target in its notification mask, and the run wakes the
//! target if it is halted, or kicks the CPU it runs on so that it exits
//! and looks (as posted interrupts and their notification vector do on
//! hardware).
//!
//! To find destinations without the targets' locks, each vCPU publishes
//! its APIC's addressing ([`ApicAddress`]) after every change that can move
//! it ([`ApicBus::publish`]). A message racing with such a change may see
//! the old address, as a message on the APIC bus may reach an APIC whose
//! LDR is being written.
//!
//! Lowest-priority messages go to the first vCPU they match, counting from
//! the one after the last chosen, so they spread over the destinations.
//!
//! A guest reaches only its own VM's bus: nothing here names another VM
//! or the host's APICs.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use devices::apic::{DeliveryMode, InterruptMessage};
/// What an INIT or start-up IPI asked of a vCPU, for the run's start-up
/// state machine.
pub use devices::lapic::StartupEvent;
use devices::lapic::{ApicAddress, IpiShorthand, LocalApic};

/// The most vCPUs one VM has (the configuration's limit): notification
/// masks are one bit a vCPU.
pub const MAX_VCPUS: usize = 64;

/// What was posted to one vCPU and not yet folded into its APIC.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Fixed and lowest-priority vectors, one bit each.
    irr: [AtomicU32; 8],
    /// Of those, the level-triggered ones.
    level: [AtomicU32; 8],
    /// An NMI, an INIT, a start-up IPI (0x100 | its vector).
    nmi: AtomicBool,
    init: AtomicBool,
    sipi: AtomicU32,
    /// Something above is set.
    pending: AtomicBool,
    /// The owner's published [`ApicAddress`].
    address: AtomicU32,
}

/// The inboxes of a VM's vCPUs, by vCPU index.
#[derive(Debug)]
pub struct ApicBus {
    inboxes: Box<[Inbox]>,
    /// Where the last lowest-priority message went.
    next_lowest: AtomicU32,
    /// The vCPUs sent something since the run last looked.
    notify: PendingNotify,
}

/// The vCPUs (by index, one bit each) that were sent something: the run
/// wakes or kicks each of them.
pub type Notify = u64;

impl ApicBus {
    /// The bus of a VM with `vcpus` vCPUs (1 to [`MAX_VCPUS`]; more are
    /// cut to that), each APIC at the address it has after power-up: ID =
    /// vCPU index, hardware-enabled, no logical ID.
    pub fn new(vcpus: usize) -> Self {
        let n = vcpus.clamp(1, MAX_VCPUS);
        let inboxes: Box<[Inbox]> = (0..n)
            .map(|k| {
                let inbox = Inbox::default();
                let id = u8::try_from(k).unwrap_or(u8::MAX);
                let address = LocalApic::new(id, 1, 1).address();
                inbox.address.store(address.0, Ordering::Relaxed);
                inbox
            })
            .collect();
        Self {
            inboxes,
            next_lowest: AtomicU32::new(0),
            notify: PendingNotify::default(),
        }
    }

    /// How many vCPUs the bus connects.
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    /// Whether the bus connects no vCPU (never: a VM has one at least).
    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    /// vCPU `k`'s APIC has a new address: what senders match against.
    #[inline]
    pub fn publish(&self, k: u32, apic: &LocalApic) {
        if let Some(inbox) = self.inboxes.get(k as usize) {
            let word = apic.address().0;
            if inbox.address.load(Ordering::Relaxed) != word {
                inbox.address.store(word, Ordering::Release);
            }
        }
    }

    /// Whether something was posted to vCPU `k` and not collected yet.
    #[inline]
    pub fn pending(&self, k: u32) -> bool {
        self.inboxes
            .get(k as usize)
            .is_some_and(|i| i.pending.load(Ordering::Acquire))
    }

    /// Folds what was posted to vCPU `k` into its APIC `apic`. True when
    /// anything was.
    pub fn collect(&self, k: u32, apic: &mut LocalApic) -> bool {
        let Some(inbox) = self.inboxes.get(k as usize) else {
            return false;
        };
        if !inbox.pending.swap(false, Ordering::AcqRel) {
            return false;
        }
        for (w, (irr, level)) in inbox.irr.iter().zip(inbox.level.iter()).enumerate() {
            let bits = irr.swap(0, Ordering::AcqRel);
            if bits == 0 {
                continue;
            }
            let levels = level.fetch_and(!bits, Ordering::AcqRel);
            for b in 0..32u32 {
                if bits & (1 << b) != 0 {
                    let vector = u8::try_from(w.wrapping_mul(32))
                        .unwrap_or(0)
                        .wrapping_add(b as u8);
                    apic.accept(vector, levels & (1 << b) != 0);
                }
            }
        }
        if inbox.nmi.swap(false, Ordering::AcqRel) {
            apic.accept_nmi();
        }
        if inbox.init.swap(false, Ordering::AcqRel) {
            apic.accept_init();
        }
        let sipi = inbox.sipi.swap(0, Ordering::AcqRel);
        if sipi & 0x100 != 0 {
            apic.accept_sipi(sipi as u8);
        }
        true
    }

    /// Posts `msg` to vCPU `k`.
    fn post(&self, k: usize, msg: &InterruptMessage) {
        let Some(inbox) = self.inboxes.get(k) else {
            return;
        };
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                let w = usize::from(msg.vector / 32);
                let bit = 1u32 << (msg.vector % 32);
                if let (Some(irr), Some(level)) = (inbox.irr.get(w), inbox.level.get(w)) {
                    if msg.level_triggered {
                        level.fetch_or(bit, Ordering::AcqRel);
                    }
                    irr.fetch_or(bit, Ordering::AcqRel);
                }
            }
            DeliveryMode::Nmi => inbox.nmi.store(true, Ordering::Release),
            DeliveryMode::Init => {
                inbox.sipi.store(0, Ordering::Release);
                inbox.init.store(true, Ordering::Release);
            }
            DeliveryMode::StartUp => {
                // The first of the usual two wins until it is collected.
                let _ = inbox.sipi.compare_exchange(
                    0,
                    0x100 | u32::from(msg.vector),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            // No meaning in a guest, or not a message (ExtINT comes from
            // the 8259 through LINT0).
            DeliveryMode::Smi | DeliveryMode::ExtInt => return,
        }
        inbox.pending.store(true, Ordering::Release);
    }

    /// Sends `msg` from vCPU `from` (`None`: from the I/O APIC) with
    /// `shorthand`. What is for `from` itself goes straight into `own`
    /// (its APIC, which the caller holds); the rest is posted. Returns the
    /// other vCPUs posted to.
    pub fn send(
        &self,
        from: Option<u32>,
        own: Option<&mut LocalApic>,
        shorthand: IpiShorthand,
        msg: &InterruptMessage,
    ) -> Notify {
        let me = from.map(|k| k as usize);
        let mut targets: Notify = 0;
        let mut to_self = false;
        let n = self.inboxes.len();
        match shorthand {
            IpiShorthand::SelfOnly => to_self = true,
            IpiShorthand::AllIncludingSelf | IpiShorthand::AllExcludingSelf => {
                to_self = shorthand == IpiShorthand::AllIncludingSelf;
                for k in 0..n {
                    if Some(k) != me && self.address(k).0 & (1 << 31) != 0 {
                        targets |= 1 << k;
                    }
                }
            }
            IpiShorthand::Destination => {
                let lowest = msg.mode == DeliveryMode::LowestPriority;
                let start = if lowest {
                    self.next_lowest.load(Ordering::Relaxed) as usize
                } else {
                    0
                };
                for j in 0..n {
                    let k = start.wrapping_add(j).checked_rem(n).unwrap_or(0);
                    if !self.address(k).matches(msg.dest, msg.logical) {
                        continue;
                    }
                    if Some(k) == me {
                        to_self = true;
                    } else {
                        targets |= 1 << k;
                    }
                    if lowest {
                        let next = u32::try_from(k.wrapping_add(1).checked_rem(n).unwrap_or(0))
                            .unwrap_or(0);
                        self.next_lowest.store(next, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        if to_self {
            match (own, me) {
                (Some(apic), _) => accept(apic, msg),
                (None, Some(k)) => {
                    self.post(k, msg);
                    targets |= 1 << k;
                }
                (None, None) => {}
            }
        }
        let mut rest = targets;
        while rest != 0 {
            let k = rest.trailing_zeros() as usize;
            rest &= rest.wrapping_sub(1);
            if Some(k) == me && to_self {
                continue;
            }
            self.post(k, msg);
        }
        self.notify.add(targets);
        targets
    }

    /// Asks the run to wake or kick the vCPUs in `mask` (one bit each)
    /// for something that did not come through the bus (the 8259's
    /// output, which only the boot vCPU takes).
    #[inline]
    pub fn notify(&self, mask: Notify) {
        self.notify.add(mask);
    }

    /// The vCPUs sent something (one bit each) since the last call: the
    /// run wakes or kicks them.
    #[inline]
    pub fn take_notify(&self) -> Notify {
        self.notify.take()
    }

    /// vCPU `k`'s published address.
    fn address(&self, k: usize) -> ApicAddress {
        self.inboxes.get(k).map_or(ApicAddress(0), |i| {
            ApicAddress(i.address.load(Ordering::Acquire))
        })
    }
}

/// Hands `msg` straight to `apic`.
pub fn accept(apic: &mut LocalApic, msg: &InterruptMessage) {
    match msg.mode {
        DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
            apic.accept(msg.vector, msg.level_triggered)
        }
        DeliveryMode::Nmi => apic.accept_nmi(),
        DeliveryMode::Init => apic.accept_init(),
        DeliveryMode::StartUp => apic.accept_sipi(msg.vector),
        DeliveryMode::Smi | DeliveryMode::ExtInt => {}
    }
}

/// A wake-up bit for each vCPU set in a notification mask but `me`.
pub fn others(mask: Notify, me: u32) -> Notify {
    mask & !(1u64.checked_shl(me).unwrap_or(0))
}

/// An atomic notification mask a VM collects its sends in, for the run to
/// act on after the exit.
#[derive(Debug, Default)]
pub struct PendingNotify(AtomicU64);

impl PendingNotify {
    /// Adds `mask`.
    #[inline]
    pub fn add(&self, mask: Notify) {
        if mask != 0 {
            self.0.fetch_or(mask, Ordering::AcqRel);
        }
    }

    /// Takes what was added since the last call.
    #[inline]
    pub fn take(&self) -> Notify {
        if self.0.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.0.swap(0, Ordering::AcqRel)
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
mod tests {
    use super::*;

    fn msg(mode: DeliveryMode, vector: u8, dest: u8, logical: bool) -> InterruptMessage {
        InterruptMessage {
            mode,
            vector,
            dest,
            logical,
            level_triggered: false,
        }
    }

    fn apics(n: usize) -> Vec<LocalApic> {
        (0..n)
            .map(|k| {
                let mut a = LocalApic::new(k as u8, 1_000_000_000, 25_000_000);
                a.firmware_state();
                a
            })
            .collect()
    }

    #[test]
    fn a_fixed_ipi_reaches_only_its_physical_destination() {
        let bus = ApicBus::new(4);
        let mut a = apics(4);
        let (own, rest) = a.split_at_mut(1);
        let sent = bus.send(
            Some(0),
            Some(&mut own[0]),
            IpiShorthand::Destination,
            &msg(DeliveryMode::Fixed, 0x40, 2, false),
        );
        assert_eq!(sent, 1 << 2);
        assert!(!bus.pending(1) && bus.pending(2) && !bus.pending(3));
        assert!(bus.collect(2, &mut rest[1]));
        assert_eq!(rest[1].pending_vector(), Some(0x40));
        assert!(!bus.pending(2));
        assert!(!bus.collect(2, &mut rest[1]), "collected once");
        assert_eq!(own[0].pending_vector(), None);
    }

    #[test]
    fn shorthands_pick_self_all_and_all_but_self() {
        let bus = ApicBus::new(3);
        let mut a = apics(3);
        let m = msg(DeliveryMode::Fixed, 0x50, 0, false);
        let sent = bus.send(Some(1), Some(&mut a[1]), IpiShorthand::SelfOnly, &m);
        assert_eq!(sent, 0);
        assert_eq!(a[1].pending_vector(), Some(0x50));
        let sent = bus.send(Some(1), Some(&mut a[1]), IpiShorthand::AllExcludingSelf, &m);
        assert_eq!(sent, 0b101);
        let sent = bus.send(Some(1), Some(&mut a[1]), IpiShorthand::AllIncludingSelf, &m);
        assert_eq!(sent, 0b101);
        assert!(!bus.pending(1), "self goes straight to its own APIC");
    }

    #[test]
    fn logical_destinations_follow_the_published_ldr() {
        let bus = ApicBus::new(3);
        let mut a = apics(3);
        // Flat model, logical IDs 1, 2, 4.
        for (k, apic) in a.iter_mut().enumerate() {
            let _ = apic.write(0xE0, 0xFFFF_FFFF, 0);
            let _ = apic.write(0xD0, (1u32 << k) << 24, 0);
            bus.publish(k as u32, apic);
        }
        let sent = bus.send(
            None,
            None,
            IpiShorthand::Destination,
            &msg(DeliveryMode::Fixed, 0x60, 0b110, true),
        );
        assert_eq!(sent, 0b110);
    }

    #[test]
    fn init_then_sipi_arrive_in_order_and_the_first_sipi_wins() {
        let bus = ApicBus::new(2);
        let mut a = apics(2);
        let (own, rest) = a.split_at_mut(1);
        for m in [
            msg(DeliveryMode::Init, 0, 1, false),
            msg(DeliveryMode::StartUp, 0x08, 1, false),
            msg(DeliveryMode::StartUp, 0x09, 1, false),
        ] {
            assert_eq!(
                bus.send(Some(0), Some(&mut own[0]), IpiShorthand::Destination, &m),
                0b10
            );
        }
        assert!(bus.collect(1, &mut rest[0]));
        assert_eq!(rest[0].take_startup(), Some(StartupEvent::Init));
        assert_eq!(
            rest[0].take_startup(),
            Some(StartupEvent::StartUp { vector: 0x08 })
        );
        assert_eq!(rest[0].take_startup(), None);
    }

    #[test]
    fn lowest_priority_goes_to_one_destination_in_turn() {
        let bus = ApicBus::new(3);
        let m = msg(DeliveryMode::LowestPriority, 0x70, 0xFF, false);
        let firsts: Vec<Notify> = (0..3)
            .map(|_| bus.send(None, None, IpiShorthand::Destination, &m))
            .collect();
        assert_eq!(firsts, [0b001, 0b010, 0b100]);
    }

    #[test]
    fn a_disabled_apic_is_nobodys_destination() {
        let bus = ApicBus::new(2);
        let mut a = apics(2);
        a[1].set_hardware_enabled(false);
        bus.publish(1, &a[1]);
        let sent = bus.send(
            None,
            None,
            IpiShorthand::Destination,
            &msg(DeliveryMode::Fixed, 0x40, 1, false),
        );
        assert_eq!(sent, 0);
        assert_eq!(others(0b111, 1), 0b101);
    }
}
