//! The device bus: which device owns which I/O ports and guest-physical
//! MMIO pages, dispatch of the guest's accesses to them, and their timers.
//!
//! A [`Device`] is a pure state machine. During an access or a timer call
//! it gets a [`DeviceEnv`], through which it reads the VM's clock, drives
//! interrupt lines (into the VM's [`IrqLines`]), asks for a wake-up and
//! sends console lines; nothing in here allocates per access.
//!
//! Accesses that one device's range holds entirely go to that device whole,
//! so a device sees 16- and 32-bit registers as such. An access that
//! crosses out of a device's range (into another device's, or into ports
//! or pages no device claims) is split into single bytes, each dispatched
//! on its own as a 1-byte access (unclaimed bytes read all ones, writes to
//! them are dropped), as the exit handler did for COM1 before the bus.
//! Such an access counts as claimed when at least one byte was.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::ops::RangeInclusive;

pub use addr::GuestPhysAddr;

use crate::irq::IrqLines;

/// The size of an MMIO page: MMIO ranges are whole pages so that the EPT
/// can leave exactly them unmapped.
pub const PAGE_SIZE: u64 = 4096;

/// All ones in the low `size` bytes: what an unclaimed read returns.
/// Sizes past 8 give all 64 bits.
pub const fn all_ones(size: u8) -> u64 {
    match size {
        0 => 0,
        // Shift by 8 * (8 - size) bits: 8..=56, in range.
        1..=7 => u64::MAX.wrapping_shr(8u32.wrapping_sub(size as u32).wrapping_mul(8)),
        _ => u64::MAX,
    }
}

/// A device model on the bus.
///
/// Ports and addresses passed in are absolute (the port the guest used,
/// not an offset). `size` is 1, 2 or 4 for ports and 1, 2, 4 or 8 for
/// MMIO; values are in the low `size` bytes, little-endian, and a read's
/// result is cut to `size` bytes by the bus. Every method has a default
/// that behaves like nothing is there, so a device implements only what
/// it decodes. Devices are `'static` so that the owner can reach the
/// concrete type again ([`Bus::get_mut`]).
pub trait Device: Any + Send {
    /// A short name for reports and errors ("uart", "test-timer").
    fn name(&self) -> &'static str;

    /// The guest reads `size` bytes from `port`. Default: all ones.
    fn port_read(&mut self, port: u16, size: u8, env: &mut DeviceEnv<'_>) -> u32 {
        let _ = (port, env);
        // `all_ones` of at most 4 bytes fits: the cast drops only zeros.
        all_ones(size.min(4)) as u32
    }

    /// The guest writes `value` (`size` bytes) to `port`. Default: dropped.
    fn port_write(&mut self, port: u16, size: u8, value: u32, env: &mut DeviceEnv<'_>) {
        let _ = (port, size, value, env);
    }

    /// The guest reads `size` bytes at `gpa`. Default: all ones.
    fn mmio_read(&mut self, gpa: GuestPhysAddr, size: u8, env: &mut DeviceEnv<'_>) -> u64 {
        let _ = (gpa, env);
        all_ones(size)
    }

    /// The guest writes `value` (`size` bytes) at `gpa`. Default: dropped.
    fn mmio_write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64, env: &mut DeviceEnv<'_>) {
        let _ = (gpa, size, value, env);
    }

    /// A deadline the device asked for with [`DeviceEnv::wake_at`] is due:
    /// `now` is at or past it. The bus forgot the deadline before the
    /// call; the device asks again if it still needs one.
    fn timer(&mut self, now: u64, env: &mut DeviceEnv<'_>) {
        let _ = (now, env);
    }

    /// The guest is stopping: emit any output still buffered (a partial
    /// console line). Default: nothing.
    fn flush(&mut self, sink: &mut dyn FnMut(&str)) {
        let _ = sink;
    }
}

/// What a device asks of the VM as a whole, beyond its own state: the
/// platform's reset and power controls (the keyboard controller's reset
/// line, the reset control register at 0xCF9, ACPI's sleep-to-S5) end in
/// one of these. The owner of the [`Bus`] takes it with
/// [`Bus::take_request`] after an exit and acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmRequest {
    /// Reset the machine: every vCPU back to its power-on state, the
    /// devices too (what the guest sees as a reboot).
    Reset,
    /// Turn the machine off: the guest stops.
    PowerOff,
}

/// What a device may do during an access or a timer call.
pub struct DeviceEnv<'a> {
    now: u64,
    irqs: &'a mut IrqLines,
    wake: &'a mut Option<u64>,
    request: &'a mut Option<VmRequest>,
    sink: &'a mut dyn FnMut(&str),
}

impl<'a> DeviceEnv<'a> {
    /// An environment at time `now` that drives `irqs`, keeps the device's
    /// wake-up deadline in `wake`, the VM request in `request` and sends
    /// console lines to `sink`. The bus makes these; it is public so a
    /// device can be driven alone (in tests, or by a caller that owns it
    /// outside a bus).
    pub fn new(
        now: u64,
        irqs: &'a mut IrqLines,
        wake: &'a mut Option<u64>,
        request: &'a mut Option<VmRequest>,
        sink: &'a mut dyn FnMut(&str),
    ) -> Self {
        Self {
            now,
            irqs,
            wake,
            request,
            sink,
        }
    }

    /// The VM's clock, in TSC ticks.
    pub const fn now(&self) -> u64 {
        self.now
    }

    /// Sets interrupt line `line` to `level`. A line that does not exist
    /// (see [`IRQ_LINES`](crate::irq::IRQ_LINES)) is ignored: returns false.
    pub fn set_irq(&mut self, line: u8, level: bool) -> bool {
        self.irqs.set(line, level)
    }

    /// Asks for [`Device::timer`] at `deadline` (TSC ticks) or soon after.
    /// The earliest deadline asked for wins; a deadline not later than now
    /// is due at the next [`Bus::run_timers`].
    pub fn wake_at(&mut self, deadline: u64) {
        *self.wake = Some(match *self.wake {
            Some(earlier) => earlier.min(deadline),
            None => deadline,
        });
    }

    /// Forgets the wake-up asked for, if any (to move it later: cancel,
    /// then [`wake_at`](Self::wake_at)).
    pub fn cancel_wake(&mut self) {
        *self.wake = None;
    }

    /// The wake-up deadline asked for, if any.
    pub const fn wake(&self) -> Option<u64> {
        *self.wake
    }

    /// Asks the VM to reset or power off. The first request stands until
    /// the owner takes it ([`Bus::take_request`]): a later one is dropped,
    /// so a guest that writes "reset" and then "power off" before the exit
    /// is handled gets the reset it asked for first.
    pub fn request(&mut self, request: VmRequest) {
        if self.request.is_none() {
            *self.request = Some(request);
        }
    }

    /// The VM request made and not yet taken, if any.
    pub const fn pending_request(&self) -> Option<VmRequest> {
        *self.request
    }

    /// Sends one line of guest console output (without its line end).
    pub fn console_line(&mut self, line: &str) {
        (self.sink)(line);
    }

    /// The console line sink itself, for code that takes an `FnMut(&str)`
    /// (such as [`LineBuffer::push`](crate::console::LineBuffer::push)).
    pub fn sink(&mut self) -> &mut dyn FnMut(&str) {
        &mut *self.sink
    }
}

/// Identifies a device on its [`Bus`]: returned by [`Bus::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(usize);

/// A range of whole guest-physical pages a device claims for MMIO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRange {
    start: GuestPhysAddr,
    /// The last byte of the range (inclusive, so that a range may end at
    /// the top of the address space).
    last: GuestPhysAddr,
}

impl MmioRange {
    /// `pages` pages from `start`. Errors: `start` is not page-aligned,
    /// `pages` is 0, or the range runs past the top of the address space.
    pub fn new(start: GuestPhysAddr, pages: u64) -> Result<Self, BusError> {
        if !start.is_aligned(PAGE_SIZE) {
            return Err(BusError::MmioNotPageAligned { start });
        }
        let last = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| len.checked_sub(1))
            .and_then(|span| start.checked_add(span));
        match last {
            Some(last) => Ok(Self { start, last }),
            None if pages == 0 => Err(BusError::EmptyMmioRange { start }),
            None => Err(BusError::MmioRangeOverflow { start, pages }),
        }
    }

    /// The first address.
    pub const fn start(&self) -> GuestPhysAddr {
        self.start
    }

    /// The last address (inclusive).
    pub const fn last(&self) -> GuestPhysAddr {
        self.last
    }

    /// The number of pages.
    pub const fn pages(&self) -> u64 {
        // `last - start + 1` is a non-zero multiple of the page size.
        (self.last.as_u64().wrapping_sub(self.start.as_u64()) / PAGE_SIZE).wrapping_add(1)
    }

    /// Whether `gpa` lies in the range.
    pub fn contains(&self, gpa: GuestPhysAddr) -> bool {
        self.start <= gpa && gpa <= self.last
    }

    const fn overlaps(&self, other: &Self) -> bool {
        self.start.as_u64() <= other.last.as_u64() && other.start.as_u64() <= self.last.as_u64()
    }
}

/// Why [`Bus::add`] refused a device. Nothing was added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A port range is empty (its start is past its end).
    EmptyPortRange {
        /// The device being added.
        device: &'static str,
        /// The range.
        ports: RangeInclusive<u16>,
    },
    /// A port range overlaps one already claimed, by another device or by
    /// the same device's own list.
    PortOverlap {
        /// The device being added.
        device: &'static str,
        /// The range it asked for.
        ports: RangeInclusive<u16>,
        /// The device that holds the overlapping range.
        owner: &'static str,
        /// That range.
        owner_ports: RangeInclusive<u16>,
    },
    /// An MMIO range overlaps one already claimed.
    MmioOverlap {
        /// The device being added.
        device: &'static str,
        /// The range it asked for.
        range: MmioRange,
        /// The device that holds the overlapping range.
        owner: &'static str,
        /// That range.
        owner_range: MmioRange,
    },
    /// An MMIO range does not start on a page boundary.
    MmioNotPageAligned {
        /// Its start.
        start: GuestPhysAddr,
    },
    /// An MMIO range of no pages.
    EmptyMmioRange {
        /// Its start.
        start: GuestPhysAddr,
    },
    /// An MMIO range that runs past the top of the address space.
    MmioRangeOverflow {
        /// Its start.
        start: GuestPhysAddr,
        /// Its length in pages.
        pages: u64,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyPortRange { device, ports } => write!(
                f,
                "device {device}: port range {:#x}..={:#x} is empty: give the first port, then the last",
                ports.start(),
                ports.end()
            ),
            Self::PortOverlap {
                device,
                ports,
                owner,
                owner_ports,
            } => write!(
                f,
                "device {device}: ports {:#x}..={:#x} overlap {owner}'s {:#x}..={:#x}: move one of them",
                ports.start(),
                ports.end(),
                owner_ports.start(),
                owner_ports.end()
            ),
            Self::MmioOverlap {
                device,
                range,
                owner,
                owner_range,
            } => write!(
                f,
                "device {device}: MMIO {}..={} overlaps {owner}'s {}..={}: move one of them",
                range.start, range.last, owner_range.start, owner_range.last
            ),
            Self::MmioNotPageAligned { start } => write!(
                f,
                "MMIO range at {start} does not start on a 4 KiB page boundary: EPT can only leave whole pages unmapped"
            ),
            Self::EmptyMmioRange { start } => {
                write!(f, "MMIO range at {start} has no pages: give at least one")
            }
            Self::MmioRangeOverflow { start, pages } => write!(
                f,
                "MMIO range of {pages} pages at {start} runs past the top of the address space"
            ),
        }
    }
}

/// A device and its pending wake-up.
struct Slot {
    device: Box<dyn Device>,
    deadline: Option<u64>,
}

/// `Bus::port_hint` while it names no range.
const NO_PORT_HINT: (u16, u16, usize) = (u16::MAX, 0, 0);

/// The devices of one VM and the ports and MMIO pages each owns.
///
/// Lookup is a binary search over ranges kept sorted by start; no access
/// allocates.
pub struct Bus {
    slots: Vec<Slot>,
    /// Port ranges sorted by start, disjoint, each with its slot index.
    ports: Vec<(RangeInclusive<u16>, usize)>,
    /// The range (first port, last port, slot) of the last whole port
    /// access, tried before the search: a guest's driver mostly goes to
    /// one device several times in a row (a UART's registers, the PIT's
    /// ports while it polls). First port above last while none.
    port_hint: (u16, u16, usize),
    /// MMIO ranges sorted by start, disjoint, each with its slot index.
    mmio: Vec<(MmioRange, usize)>,
    /// The first reset or power-off request a device made, not yet taken.
    request: Option<VmRequest>,
    /// The earliest deadline of any slot, kept up to date as deadlines
    /// change so that [`Bus::next_deadline`], asked after every exit, does
    /// not walk every device.
    earliest: Option<u64>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field(
                "devices",
                &self
                    .slots
                    .iter()
                    .map(|s| s.device.name())
                    .collect::<Vec<_>>(),
            )
            .field("ports", &self.ports)
            .field("mmio", &self.mmio)
            .field("request", &self.request)
            .finish()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus with no devices: every access is unclaimed.
    pub const fn new() -> Self {
        Self {
            slots: Vec::new(),
            ports: Vec::new(),
            port_hint: NO_PORT_HINT,
            mmio: Vec::new(),
            request: None,
            earliest: None,
        }
    }

    /// Works out [`Bus::next_deadline`] again from every slot.
    fn recompute_earliest(&mut self) {
        self.earliest = self.slots.iter().filter_map(|slot| slot.deadline).min();
    }

    /// A slot's deadline went from `before` to `after`: keeps the
    /// earliest one right, walking the slots only when the earliest may
    /// have moved later.
    fn deadline_changed(&mut self, before: Option<u64>, after: Option<u64>) {
        if before == after {
            return;
        }
        match after {
            Some(new) if self.earliest.is_none_or(|earliest| new < earliest) => {
                self.earliest = Some(new);
            }
            // The earliest one moved later or went: find the next.
            _ if before.is_some() && before == self.earliest => self.recompute_earliest(),
            _ => {}
        }
    }

    /// Adds `device` owning the port ranges `ports` and the MMIO ranges
    /// `mmio` (either may be empty). Refuses, adding nothing, a range that
    /// is empty or overlaps one already on the bus or another in the same
    /// call.
    pub fn add(
        &mut self,
        device: Box<dyn Device>,
        ports: &[RangeInclusive<u16>],
        mmio: &[MmioRange],
    ) -> Result<DeviceId, BusError> {
        let name = device.name();
        for (i, range) in ports.iter().enumerate() {
            if range.is_empty() {
                return Err(BusError::EmptyPortRange {
                    device: name,
                    ports: range.clone(),
                });
            }
            let overlaps = |other: &RangeInclusive<u16>| {
                range.start() <= other.end() && other.start() <= range.end()
            };
            let taken = self
                .ports
                .iter()
                .find(|(other, _)| overlaps(other))
                .map(|(other, slot)| (other.clone(), self.name_of(*slot)))
                .or_else(|| {
                    ports
                        .iter()
                        .take(i)
                        .find(|other| overlaps(other))
                        .map(|other| (other.clone(), name))
                });
            if let Some((owner_ports, owner)) = taken {
                return Err(BusError::PortOverlap {
                    device: name,
                    ports: range.clone(),
                    owner,
                    owner_ports,
                });
            }
        }
        for (i, range) in mmio.iter().enumerate() {
            let taken = self
                .mmio
                .iter()
                .find(|(other, _)| range.overlaps(other))
                .map(|(other, slot)| (*other, self.name_of(*slot)))
                .or_else(|| {
                    mmio.iter()
                        .take(i)
                        .find(|other| range.overlaps(other))
                        .map(|other| (*other, name))
                });
            if let Some((owner_range, owner)) = taken {
                return Err(BusError::MmioOverlap {
                    device: name,
                    range: *range,
                    owner,
                    owner_range,
                });
            }
        }
        let index = self.slots.len();
        self.slots.push(Slot {
            device,
            deadline: None,
        });
        for range in ports {
            let at = self
                .ports
                .partition_point(|(r, _)| r.start() < range.start());
            self.ports.insert(at, (range.clone(), index));
        }
        for range in mmio {
            let at = self.mmio.partition_point(|(r, _)| r.start < range.start);
            self.mmio.insert(at, (*range, index));
        }
        Ok(DeviceId(index))
    }

    /// How many devices are on the bus.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no device is on the bus.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The device `id` as its concrete type `T`, to read; `None` if `id`
    /// is not on this bus or is another type.
    pub fn get<T: Device>(&self, id: DeviceId) -> Option<&T> {
        let device: &dyn Any = self.slots.get(id.0)?.device.as_ref();
        device.downcast_ref::<T>()
    }

    /// The device `id` as its concrete type `T`; `None` if `id` is not on
    /// this bus or is another type.
    pub fn get_mut<T: Device>(&mut self, id: DeviceId) -> Option<&mut T> {
        let device: &mut dyn Any = self.slots.get_mut(id.0)?.device.as_mut();
        device.downcast_mut::<T>()
    }

    /// Calls `f` with the device `id` as its concrete type `T` and an
    /// environment, as for an access: for what the VM does to a device
    /// outside the guest's accesses (console input to a UART). `None` if
    /// `id` is not on this bus or is another type.
    pub fn with_device<T: Device, R>(
        &mut self,
        id: DeviceId,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
        f: impl FnOnce(&mut T, &mut DeviceEnv<'_>) -> R,
    ) -> Option<R> {
        let slot = self.slots.get_mut(id.0)?;
        let before = slot.deadline;
        let device: &mut dyn Any = slot.device.as_mut();
        let device = device.downcast_mut::<T>()?;
        let mut env = DeviceEnv::new(now, irqs, &mut slot.deadline, &mut self.request, sink);
        let result = f(device, &mut env);
        let after = slot.deadline;
        self.deadline_changed(before, after);
        Some(result)
    }

    /// Calls `f` with the device in slot `slot` and an environment for one
    /// access at `now`; `None` if there is no such slot.
    fn access<R>(
        &mut self,
        slot: usize,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
        f: impl FnOnce(&mut dyn Device, &mut DeviceEnv<'_>) -> R,
    ) -> Option<R> {
        let Slot { device, deadline } = self.slots.get_mut(slot)?;
        let before = *deadline;
        let mut env = DeviceEnv::new(now, irqs, deadline, &mut self.request, sink);
        let result = f(device.as_mut(), &mut env);
        let after = *deadline;
        self.deadline_changed(before, after);
        Some(result)
    }

    /// The claimed port ranges, lowest first, with the name of the device
    /// that owns each.
    pub fn port_ranges(&self) -> impl Iterator<Item = (RangeInclusive<u16>, &'static str)> + '_ {
        self.ports
            .iter()
            .map(|(range, slot)| (range.clone(), self.name_of(*slot)))
    }

    /// The claimed MMIO ranges, lowest first: the pages the EPT must leave
    /// unmapped so that the guest's accesses to them exit.
    pub fn mmio_ranges(&self) -> impl Iterator<Item = MmioRange> + '_ {
        self.mmio.iter().map(|(range, _)| *range)
    }

    /// Whether a device claims the MMIO page holding `gpa`: a binary
    /// search of the ranges, cheap enough to ask on every nested page
    /// fault.
    pub fn is_mmio(&self, gpa: GuestPhysAddr) -> bool {
        self.mmio_entry(gpa).is_some()
    }

    /// The guest reads `size` (1, 2 or 4) bytes from `port`. `None` when
    /// no device claims any of the bytes, or `size` is not 1, 2 or 4; the
    /// caller then reads all ones.
    pub fn port_read(
        &mut self,
        port: u16,
        size: u8,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u32> {
        if !matches!(size, 1 | 2 | 4) {
            return None;
        }
        if let Some(slot) = self.port_owner_of_all(port, size) {
            let value =
                self.access(slot, now, irqs, sink, |d, env| d.port_read(port, size, env))?;
            // Cut to `size` bytes: `all_ones` of at most 4 fits in a u32.
            return Some(value & all_ones(size) as u32);
        }
        let mut bytes = [0xFF; 4];
        let mut claimed = false;
        for (i, byte) in bytes.iter_mut().take(usize::from(size)).enumerate() {
            let port = port.wrapping_add(i as u16);
            if let Some(slot) = self.port_owner(port) {
                if let Some(value) =
                    self.access(slot, now, irqs, sink, |d, env| d.port_read(port, 1, env))
                {
                    *byte = value as u8;
                    claimed = true;
                }
            }
        }
        claimed.then(|| u32::from_le_bytes(bytes) & all_ones(size) as u32)
    }

    /// The guest writes the low `size` (1, 2 or 4) bytes of `value` to
    /// `port`. False when no device claims any of the bytes, or `size` is
    /// not 1, 2 or 4; the caller then drops the write.
    pub fn port_write(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
    ) -> bool {
        if !matches!(size, 1 | 2 | 4) {
            return false;
        }
        let value = value & all_ones(size) as u32;
        if let Some(slot) = self.port_owner_of_all(port, size) {
            if let Some(()) = self.access(slot, now, irqs, sink, |d, env| {
                d.port_write(port, size, value, env)
            }) {
                return true;
            }
        }
        let mut claimed = false;
        for (i, &byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            let port = port.wrapping_add(i as u16);
            if let Some(slot) = self.port_owner(port) {
                let written = self.access(slot, now, irqs, sink, |d, env| {
                    d.port_write(port, 1, u32::from(byte), env)
                });
                claimed |= written.is_some();
            }
        }
        claimed
    }

    /// The guest reads `size` (1, 2, 4 or 8) bytes at `gpa`. `None` when
    /// no device claims any of the bytes, or `size` is another value.
    pub fn mmio_read(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
    ) -> Option<u64> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        if let Some(slot) = self.mmio_owner_of_all(gpa, size) {
            let value = self.access(slot, now, irqs, sink, |d, env| d.mmio_read(gpa, size, env))?;
            return Some(value & all_ones(size));
        }
        let mut bytes = [0xFF; 8];
        let mut claimed = false;
        for (i, byte) in bytes.iter_mut().take(usize::from(size)).enumerate() {
            let Some(gpa) = gpa.checked_add(i as u64) else {
                break;
            };
            if let Some(slot) = self.mmio_owner(gpa) {
                if let Some(value) =
                    self.access(slot, now, irqs, sink, |d, env| d.mmio_read(gpa, 1, env))
                {
                    *byte = value as u8;
                    claimed = true;
                }
            }
        }
        claimed.then(|| u64::from_le_bytes(bytes) & all_ones(size))
    }

    /// The guest writes the low `size` (1, 2, 4 or 8) bytes of `value` at
    /// `gpa`. False when no device claims any of the bytes, or `size` is
    /// another value.
    pub fn mmio_write(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        value: u64,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
    ) -> bool {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return false;
        }
        let value = value & all_ones(size);
        if let Some(slot) = self.mmio_owner_of_all(gpa, size) {
            if let Some(()) = self.access(slot, now, irqs, sink, |d, env| {
                d.mmio_write(gpa, size, value, env)
            }) {
                return true;
            }
        }
        let mut claimed = false;
        for (i, &byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            let Some(gpa) = gpa.checked_add(i as u64) else {
                break;
            };
            if let Some(slot) = self.mmio_owner(gpa) {
                let written = self.access(slot, now, irqs, sink, |d, env| {
                    d.mmio_write(gpa, 1, u64::from(byte), env)
                });
                claimed |= written.is_some();
            }
        }
        claimed
    }

    /// The earliest wake-up any device asked for: when the caller should
    /// next call [`run_timers`](Self::run_timers) (arm a preemption timer
    /// for it, or run a halted vCPU again).
    pub fn next_deadline(&self) -> Option<u64> {
        self.earliest
    }

    /// Calls [`Device::timer`] on every device whose deadline is at or
    /// before `now`, forgetting the deadline first (the device may ask for
    /// a new one). Returns how many devices were called.
    pub fn run_timers(
        &mut self,
        now: u64,
        irqs: &mut IrqLines,
        sink: &mut dyn FnMut(&str),
    ) -> usize {
        // Nothing due (the usual case: this runs before every injection):
        // the earliest deadline, kept up to date, says so without a walk.
        if self.earliest.is_none_or(|due| due > now) {
            return 0;
        }
        let mut called = 0usize;
        for Slot { device, deadline } in &mut self.slots {
            if deadline.is_some_and(|due| due <= now) {
                *deadline = None;
                let mut env = DeviceEnv::new(now, irqs, deadline, &mut self.request, sink);
                device.timer(now, &mut env);
                called = called.saturating_add(1);
            }
        }
        if called != 0 {
            self.recompute_earliest();
        }
        called
    }

    /// Takes the reset or power-off request a device made, if any: the
    /// caller checks after every exit that reached the bus and acts on it.
    /// Requests after the first one, until it is taken, were dropped.
    pub fn take_request(&mut self) -> Option<VmRequest> {
        self.request.take()
    }

    /// Calls [`Device::flush`] on every device, in the order they were
    /// added: the guest is stopping.
    pub fn flush(&mut self, sink: &mut dyn FnMut(&str)) {
        for slot in &mut self.slots {
            slot.device.flush(sink);
        }
    }

    fn name_of(&self, slot: usize) -> &'static str {
        self.slots.get(slot).map_or("?", |s| s.device.name())
    }

    /// The slot owning `port`.
    fn port_owner(&self, port: u16) -> Option<usize> {
        self.port_entry(port).map(|(_, slot)| slot)
    }

    fn port_entry(&self, port: u16) -> Option<(&RangeInclusive<u16>, usize)> {
        let after = self.ports.partition_point(|(r, _)| *r.start() <= port);
        let (range, slot) = self.ports.get(after.checked_sub(1)?)?;
        range.contains(&port).then_some((range, *slot))
    }

    /// The slot owning every byte of a `size`-byte access at `port`, if
    /// one range holds it all (an access wrapping past 0xFFFF never is).
    /// The range found is remembered for the next access.
    fn port_owner_of_all(&mut self, port: u16, size: u8) -> Option<usize> {
        let last = port.checked_add(u16::from(size).checked_sub(1)?)?;
        let (first, end, slot) = self.port_hint;
        if first <= port && last <= end {
            return Some(slot);
        }
        let (range, slot) = self.port_entry(port)?;
        if !range.contains(&last) {
            return None;
        }
        self.port_hint = (*range.start(), *range.end(), slot);
        Some(slot)
    }

    fn mmio_entry(&self, gpa: GuestPhysAddr) -> Option<(&MmioRange, usize)> {
        let after = self.mmio.partition_point(|(r, _)| r.start <= gpa);
        let (range, slot) = self.mmio.get(after.checked_sub(1)?)?;
        range.contains(gpa).then_some((range, *slot))
    }

    fn mmio_owner(&self, gpa: GuestPhysAddr) -> Option<usize> {
        self.mmio_entry(gpa).map(|(_, slot)| slot)
    }

    fn mmio_owner_of_all(&self, gpa: GuestPhysAddr, size: u8) -> Option<usize> {
        let last = gpa.checked_add(u64::from(size).checked_sub(1)?)?;
        let (range, slot) = self.mmio_entry(gpa)?;
        range.contains(last).then_some(slot)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};

    use proptest::prelude::*;

    /// One access a [`Probe`] saw: (kind, address, size, value).
    type Access = (&'static str, u64, u8, u64);

    /// A device that records its accesses, answers reads with `tag` in
    /// every byte, and on a write to its first port asks for a wake-up at
    /// the value written; its timer raises line `line` and prints a line.
    struct Probe {
        name: &'static str,
        tag: u8,
        line: u8,
        seen: Vec<Access>,
        timers: Vec<u64>,
    }

    impl Probe {
        fn new(name: &'static str, tag: u8) -> Self {
            Self {
                name,
                tag,
                line: 0,
                seen: Vec::new(),
                timers: Vec::new(),
            }
        }
        fn boxed(name: &'static str, tag: u8) -> Box<dyn Device> {
            Box::new(Self::new(name, tag))
        }
    }

    impl Device for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn port_read(&mut self, port: u16, size: u8, _env: &mut DeviceEnv<'_>) -> u32 {
            self.seen.push(("in", u64::from(port), size, 0));
            u32::from_le_bytes([self.tag; 4])
        }
        fn port_write(&mut self, port: u16, size: u8, value: u32, env: &mut DeviceEnv<'_>) {
            self.seen
                .push(("out", u64::from(port), size, u64::from(value)));
            if size == 4 {
                env.wake_at(u64::from(value));
            }
        }
        fn mmio_read(&mut self, gpa: GuestPhysAddr, size: u8, _env: &mut DeviceEnv<'_>) -> u64 {
            self.seen.push(("read", gpa.as_u64(), size, 0));
            u64::from_le_bytes([self.tag; 8])
        }
        fn mmio_write(
            &mut self,
            gpa: GuestPhysAddr,
            size: u8,
            value: u64,
            _env: &mut DeviceEnv<'_>,
        ) {
            self.seen.push(("write", gpa.as_u64(), size, value));
        }
        fn timer(&mut self, now: u64, env: &mut DeviceEnv<'_>) {
            self.timers.push(now);
            env.set_irq(self.line, true);
            env.console_line(self.name);
        }
    }

    /// A device that keeps every default.
    struct Inert;
    impl Device for Inert {
        fn name(&self) -> &'static str {
            "inert"
        }
    }

    fn mmio(start: u64, pages: u64) -> MmioRange {
        MmioRange::new(GuestPhysAddr::new(start), pages).unwrap()
    }

    /// A bus, its lines and console, and accessors that fill in the rest.
    struct Vm {
        bus: Bus,
        irqs: IrqLines,
        lines: Vec<String>,
        now: u64,
    }

    impl Vm {
        fn new(bus: Bus) -> Self {
            Self {
                bus,
                irqs: IrqLines::new(),
                lines: Vec::new(),
                now: 0,
            }
        }
        fn inp(&mut self, port: u16, size: u8) -> Option<u32> {
            let lines = &mut self.lines;
            let mut sink = |l: &str| lines.push(l.to_string());
            self.bus
                .port_read(port, size, self.now, &mut self.irqs, &mut sink)
        }
        fn out(&mut self, port: u16, size: u8, value: u32) -> bool {
            let lines = &mut self.lines;
            let mut sink = |l: &str| lines.push(l.to_string());
            self.bus
                .port_write(port, size, value, self.now, &mut self.irqs, &mut sink)
        }
        fn read(&mut self, gpa: u64, size: u8) -> Option<u64> {
            let lines = &mut self.lines;
            let mut sink = |l: &str| lines.push(l.to_string());
            self.bus.mmio_read(
                GuestPhysAddr::new(gpa),
                size,
                self.now,
                &mut self.irqs,
                &mut sink,
            )
        }
        fn write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
            let lines = &mut self.lines;
            let mut sink = |l: &str| lines.push(l.to_string());
            self.bus.mmio_write(
                GuestPhysAddr::new(gpa),
                size,
                value,
                self.now,
                &mut self.irqs,
                &mut sink,
            )
        }
        fn run(&mut self, now: u64) -> usize {
            let lines = &mut self.lines;
            let mut sink = |l: &str| lines.push(l.to_string());
            self.bus.run_timers(now, &mut self.irqs, &mut sink)
        }
        fn seen(&mut self, id: DeviceId) -> Vec<Access> {
            core::mem::take(&mut self.bus.get_mut::<Probe>(id).unwrap().seen)
        }
    }

    #[test]
    fn accesses_go_whole_to_the_owner_with_absolute_ports() {
        let mut bus = Bus::new();
        let a = bus
            .add(Probe::boxed("a", 0xAA), &[0x60..=0x67], &[])
            .unwrap();
        let b = bus
            .add(Probe::boxed("b", 0xBB), &[0x40..=0x43, 0x50..=0x50], &[])
            .unwrap();
        let mut vm = Vm::new(bus);
        assert_eq!(vm.inp(0x64, 4), Some(0xAAAA_AAAA));
        assert_eq!(vm.inp(0x66, 2), Some(0xAAAA));
        assert!(vm.out(0x61, 1, 0x1234), "value cut to the size");
        assert_eq!(vm.inp(0x50, 1), Some(0xBB));
        assert_eq!(vm.inp(0x40, 4), Some(0xBBBB_BBBB));
        assert_eq!(
            vm.seen(a),
            [
                ("in", 0x64, 4, 0),
                ("in", 0x66, 2, 0),
                ("out", 0x61, 1, 0x34)
            ]
        );
        assert_eq!(vm.seen(b), [("in", 0x50, 1, 0), ("in", 0x40, 4, 0)]);
    }

    #[test]
    fn unclaimed_ports_and_bad_sizes_are_not_claimed() {
        let mut bus = Bus::new();
        let a = bus
            .add(Probe::boxed("a", 0xAA), &[0x60..=0x67], &[])
            .unwrap();
        let mut vm = Vm::new(bus);
        assert_eq!(vm.inp(0x5F, 1), None);
        assert_eq!(vm.inp(0x68, 4), None);
        assert!(!vm.out(0xCF9, 1, 6), "reset port: nobody there");
        assert!(!vm.out(0xFFFF, 4, 0));
        assert_eq!(vm.inp(0x60, 3), None);
        assert_eq!(vm.inp(0x60, 0), None);
        assert!(!vm.out(0x60, 8, 0));
        assert_eq!(vm.read(0x1000, 4), None);
        assert!(!vm.write(0x1000, 8, 1));
        assert!(vm.seen(a).is_empty());
        assert!(Vm::new(Bus::new()).inp(0, 1).is_none(), "an empty bus");
    }

    #[test]
    fn an_access_crossing_a_range_is_split_per_byte() {
        let mut bus = Bus::new();
        let a = bus
            .add(Probe::boxed("a", 0xAA), &[0x60..=0x61], &[])
            .unwrap();
        let b = bus
            .add(Probe::boxed("b", 0xBB), &[0x62..=0x62], &[])
            .unwrap();
        let mut vm = Vm::new(bus);
        // 0x61 (a), 0x62 (b), 0x63 (nobody), 0x64 (nobody).
        assert_eq!(vm.inp(0x61, 4), Some(0xFFFF_BBAA));
        assert!(vm.out(0x61, 4, 0x4433_2211));
        assert_eq!(vm.seen(a), [("in", 0x61, 1, 0), ("out", 0x61, 1, 0x11)]);
        assert_eq!(vm.seen(b), [("in", 0x62, 1, 0), ("out", 0x62, 1, 0x22)]);
        // Half claimed from the other side: 0x5F nobody, 0x60 a.
        assert_eq!(vm.inp(0x5F, 2), Some(0xAAFF));
        assert_eq!(vm.seen(a), [("in", 0x60, 1, 0)]);
    }

    proptest! {
        /// Whatever the order of accesses (which leaves the bus's hint on
        /// the last range a whole access went to), and with a device added
        /// between them, every port read answers with the bytes of the
        /// device that owns each port: ranges side by side, gaps and
        /// accesses across them included.
        #[test]
        fn the_port_hint_never_changes_who_answers(
            accesses in proptest::collection::vec((0x3Cu16..0x5C, 1u8..=4), 1..60),
            late in 0usize..60,
        ) {
            // (range, tag): 0x40-0x43 and 0x44-0x47 side by side, a gap
            // at 0x48-0x4F, 0x50 alone; 0x58-0x5B comes late.
            let early = [(0x40u16..=0x43u16, 0xA1u8), (0x44..=0x47, 0xB2), (0x50..=0x50, 0xC3)];
            let added = (0x58u16..=0x5Bu16, 0xD4u8);
            let mut bus = Bus::new();
            for (range, tag) in &early {
                bus.add(Probe::boxed("probe", *tag), core::slice::from_ref(range), &[]).unwrap();
            }
            let mut owners: Vec<(RangeInclusive<u16>, u8)> = early.to_vec();
            let mut vm = Vm::new(bus);
            for (n, &(port, size)) in accesses.iter().enumerate() {
                if n == late {
                    vm.bus.add(Probe::boxed("late", added.1), core::slice::from_ref(&added.0), &[]).unwrap();
                    owners.push(added.clone());
                }
                let owner = |p: u16| owners.iter().find(|(r, _)| r.contains(&p)).map(|&(_, t)| t);
                let bytes: Vec<Option<u8>> = (0..size).map(|i| owner(port + u16::from(i))).collect();
                let expected = bytes.iter().any(Option::is_some).then(|| {
                    let mut v = [0xFFu8; 4];
                    for (b, o) in v.iter_mut().zip(&bytes) {
                        *b = o.unwrap_or(0xFF);
                    }
                    u32::from_le_bytes(v) & all_ones(size) as u32
                });
                let expected = if size == 3 { None } else { expected };
                prop_assert_eq!(vm.inp(port, size), expected, "in {:#x}, size {}", port, size);
            }
        }
    }

    #[test]
    fn an_access_wrapping_past_port_ffff_is_split_and_wraps() {
        let mut bus = Bus::new();
        let top = bus
            .add(Probe::boxed("top", 0x11), &[0xFFFE..=0xFFFF], &[])
            .unwrap();
        let low = bus
            .add(Probe::boxed("low", 0x22), &[0x0000..=0x0001], &[])
            .unwrap();
        let mut vm = Vm::new(bus);
        assert_eq!(vm.inp(0xFFFF, 2), Some(0x2211));
        assert_eq!(vm.inp(0xFFFE, 2), Some(0x1111), "whole within the range");
        assert_eq!(vm.seen(top), [("in", 0xFFFF, 1, 0), ("in", 0xFFFE, 2, 0)]);
        assert_eq!(vm.seen(low), [("in", 0x0000, 1, 0)]);
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused_and_nothing_is_added() {
        let mut bus = Bus::new();
        bus.add(
            Probe::boxed("uart", 1),
            &[0x3F8..=0x3FF],
            &[mmio(0xFEC0_0000, 1)],
        )
        .unwrap();
        let err = bus
            .add(Probe::boxed("other", 2), &[0x3F0..=0x3F8], &[])
            .unwrap_err();
        assert_eq!(
            err,
            BusError::PortOverlap {
                device: "other",
                ports: 0x3F0..=0x3F8,
                owner: "uart",
                owner_ports: 0x3F8..=0x3FF,
            }
        );
        assert_eq!(
            err.to_string(),
            "device other: ports 0x3f0..=0x3f8 overlap uart's 0x3f8..=0x3ff: move one of them"
        );
        assert!(matches!(
            bus.add(Probe::boxed("inside", 2), &[0x3FA..=0x3FA], &[]),
            Err(BusError::PortOverlap { .. })
        ));
        assert!(matches!(
            bus.add(Probe::boxed("self", 2), &[0x10..=0x14, 0x14..=0x20], &[]),
            Err(BusError::PortOverlap { owner: "self", .. })
        ));
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 0x20..=0x10;
        assert!(matches!(
            bus.add(Probe::boxed("empty", 2), &[empty], &[]),
            Err(BusError::EmptyPortRange { .. })
        ));
        let err = bus
            .add(
                Probe::boxed("ioapic", 2),
                &[0x100..=0x100],
                &[mmio(0xFEBF_F000, 2)],
            )
            .unwrap_err();
        assert!(
            matches!(err, BusError::MmioOverlap { owner: "uart", .. }),
            "{err}"
        );
        assert!(matches!(
            bus.add(
                Probe::boxed("self", 2),
                &[],
                &[mmio(0x1000, 4), mmio(0x4000, 1)]
            ),
            Err(BusError::MmioOverlap { owner: "self", .. })
        ));
        // Nothing of the refused devices was added: their ports are free.
        assert_eq!(bus.len(), 1);
        assert_eq!(bus.port_ranges().count(), 1);
        assert_eq!(bus.mmio_ranges().count(), 1);
        bus.add(
            Probe::boxed("after", 3),
            &[0x100..=0x100, 0x3F7..=0x3F7],
            &[mmio(0x1000, 1)],
        )
        .unwrap();
    }

    #[test]
    fn mmio_ranges_must_be_whole_pages() {
        let at = GuestPhysAddr::new;
        assert_eq!(
            MmioRange::new(at(0x1001), 1),
            Err(BusError::MmioNotPageAligned { start: at(0x1001) })
        );
        assert_eq!(
            MmioRange::new(at(0x1000), 0),
            Err(BusError::EmptyMmioRange { start: at(0x1000) })
        );
        assert!(matches!(
            MmioRange::new(at(0xFFFF_FFFF_FFFF_F000), 2),
            Err(BusError::MmioRangeOverflow { .. })
        ));
        assert!(matches!(
            MmioRange::new(at(0x1000), u64::MAX),
            Err(BusError::MmioRangeOverflow { .. })
        ));
        let top = MmioRange::new(at(0xFFFF_FFFF_FFFF_F000), 1).unwrap();
        assert_eq!(top.last(), at(u64::MAX));
        assert_eq!(top.pages(), 1);
        let r = mmio(0xFEE0_0000, 3);
        assert_eq!(
            (r.start(), r.last(), r.pages()),
            (at(0xFEE0_0000), at(0xFEE0_2FFF), 3)
        );
        assert!(r.contains(at(0xFEE0_2FFF)) && !r.contains(at(0xFEE0_3000)));
        assert!(!MmioRange::new(at(0x1000), 0)
            .unwrap_err()
            .to_string()
            .is_empty());
    }

    #[test]
    fn mmio_dispatch_and_ranges_for_the_ept() {
        let mut bus = Bus::new();
        let hi = bus
            .add(Probe::boxed("hi", 0x11), &[], &[mmio(0xFEE0_0000, 1)])
            .unwrap();
        let lo = bus
            .add(Probe::boxed("lo", 0x22), &[], &[mmio(0xFEC0_0000, 1)])
            .unwrap();
        assert_eq!(
            bus.mmio_ranges().collect::<Vec<_>>(),
            [mmio(0xFEC0_0000, 1), mmio(0xFEE0_0000, 1)],
            "sorted"
        );
        let mut vm = Vm::new(bus);
        assert_eq!(vm.read(0xFEE0_0030, 4), Some(0x1111_1111));
        assert_eq!(vm.read(0xFEC0_0010, 8), Some(0x2222_2222_2222_2222));
        assert!(
            vm.write(0xFEE0_00B0, 4, 0x1_0000_0000 | 7),
            "cut to 4 bytes"
        );
        assert_eq!(vm.read(0xFEC0_1000, 4), None, "past the page");
        // Crossing the end of the page: the last byte is the device's.
        assert_eq!(vm.read(0xFEE0_0FFF, 2), Some(0xFF11));
        assert_eq!(vm.read(u64::MAX, 8), None, "off the top: nothing, no panic");
        assert_eq!(
            vm.seen(hi),
            [
                ("read", 0xFEE0_0030, 4, 0),
                ("write", 0xFEE0_00B0, 4, 7),
                ("read", 0xFEE0_0FFF, 1, 0),
            ]
        );
        assert_eq!(vm.seen(lo), [("read", 0xFEC0_0010, 8, 0)]);
    }

    #[test]
    fn default_methods_read_all_ones_and_drop_writes() {
        let mut bus = Bus::new();
        bus.add(Box::new(Inert), &[0x80..=0x8F], &[mmio(0x10_0000, 1)])
            .unwrap();
        let mut vm = Vm::new(bus);
        assert_eq!(vm.inp(0x80, 1), Some(0xFF));
        assert_eq!(vm.inp(0x80, 2), Some(0xFFFF));
        assert_eq!(vm.inp(0x80, 4), Some(0xFFFF_FFFF));
        assert!(vm.out(0x80, 1, 0x55), "claimed even though dropped");
        assert_eq!(vm.read(0x10_0000, 8), Some(u64::MAX));
        assert_eq!(vm.read(0x10_0000, 2), Some(0xFFFF));
        assert!(vm.write(0x10_0000, 8, 0));
        assert_eq!(vm.run(u64::MAX), 0);
        vm.bus.flush(&mut |_| panic!("nothing buffered"));
        assert_eq!(all_ones(0), 0);
        assert_eq!(all_ones(3), 0xFF_FFFF);
        assert_eq!(all_ones(16), u64::MAX);
    }

    #[test]
    fn deadlines_earliest_wins_and_run_timers_calls_due_devices_once() {
        let mut bus = Bus::new();
        let a = bus.add(Probe::boxed("a", 0), &[0x10..=0x13], &[]).unwrap();
        let b = bus.add(Probe::boxed("b", 0), &[0x20..=0x23], &[]).unwrap();
        bus.get_mut::<Probe>(b).unwrap().line = 7;
        let mut vm = Vm::new(bus);
        assert_eq!(vm.bus.next_deadline(), None);
        vm.out(0x10, 4, 500);
        vm.out(0x10, 4, 300);
        vm.out(0x10, 4, 900);
        vm.out(0x20, 4, 400);
        assert_eq!(vm.bus.next_deadline(), Some(300), "a's earliest");

        assert_eq!(vm.run(299), 0, "nothing due");
        assert_eq!(vm.run(350), 1);
        assert_eq!(vm.bus.get_mut::<Probe>(a).unwrap().timers, [350]);
        assert!(vm.irqs.level(0) && !vm.irqs.level(7));
        assert_eq!(vm.lines, ["a"]);
        assert_eq!(vm.bus.next_deadline(), Some(400), "a's deadline cleared");

        assert_eq!(vm.run(1000), 1);
        assert_eq!(vm.bus.get_mut::<Probe>(b).unwrap().timers, [1000]);
        assert!(vm.irqs.level(7));
        assert_eq!(vm.bus.next_deadline(), None);
        assert_eq!(vm.run(u64::MAX), 0, "one call per deadline");

        // A deadline in the past is due at once; two due together both run.
        vm.now = 5000;
        vm.out(0x10, 4, 10);
        vm.out(0x20, 4, 4999);
        assert_eq!(vm.run(5000), 2);
    }

    #[test]
    fn a_device_reached_by_type_and_id() {
        let mut bus = Bus::new();
        let a = bus.add(Probe::boxed("a", 0), &[], &[]).unwrap();
        let inert = bus.add(Box::new(Inert), &[], &[]).unwrap();
        assert!(bus.get_mut::<Probe>(a).is_some());
        assert!(bus.get_mut::<Probe>(inert).is_none(), "wrong type");
        assert!(
            bus.get_mut::<Inert>(DeviceId(7)).is_none(),
            "not on the bus"
        );
        let mut irqs = IrqLines::new();
        let got = bus.with_device(a, 42, &mut irqs, &mut |_| {}, |probe: &mut Probe, env| {
            env.set_irq(3, true);
            env.wake_at(99);
            (probe.name, env.now())
        });
        assert_eq!(got, Some(("a", 42)));
        assert!(irqs.level(3));
        assert_eq!(bus.next_deadline(), Some(99));
        assert!(bus
            .with_device(inert, 0, &mut irqs, &mut |_| {}, |_: &mut Probe, _| ())
            .is_none());
        assert!(!format!("{bus:?}").is_empty());
        assert!(!bus.is_empty());
    }

    #[test]
    fn many_devices_each_get_their_own_ports() {
        let mut bus = Bus::new();
        let mut ids = Vec::new();
        // Added in a scrambled order so the sorted insert is exercised.
        for i in (0..64u16).map(|i| (i * 37) % 64) {
            let base = 0x1000 + i * 8;
            let range = base..=base + 7;
            let pages = mmio(0x1_0000_0000 + u64::from(i) * 0x2000, 1);
            let id = bus
                .add(Probe::boxed("probe", i as u8), &[range], &[pages])
                .unwrap();
            ids.push((i, id));
        }
        let starts: Vec<u16> = bus.port_ranges().map(|(r, _)| *r.start()).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "sorted");
        let mut vm = Vm::new(bus);
        for &(i, id) in &ids {
            let port = 0x1000 + i * 8 + 3;
            assert_eq!(vm.inp(port, 1), Some(u32::from(i as u8)));
            let gpa = 0x1_0000_0000 + u64::from(i) * 0x2000 + 0xFF8;
            assert_eq!(vm.read(gpa, 1), Some(u64::from(i as u8)));
            assert_eq!(
                vm.seen(id),
                [("in", u64::from(port), 1, 0), ("read", gpa, 1, 0)]
            );
        }
        assert_eq!(vm.inp(0x1000 + 64 * 8, 1), None);
        assert_eq!(vm.read(0x1_0000_1000, 1), None, "the gap between pages");
    }

    #[test]
    fn env_keeps_the_earliest_wake_and_can_cancel() {
        let mut irqs = IrqLines::new();
        let mut wake = None;
        let mut request = None;
        let mut lines = Vec::new();
        let mut sink = |l: &str| lines.push(l.to_string());
        let mut env = DeviceEnv::new(7, &mut irqs, &mut wake, &mut request, &mut sink);
        assert_eq!(env.now(), 7);
        env.wake_at(50);
        env.wake_at(60);
        assert_eq!(env.wake(), Some(50));
        env.cancel_wake();
        assert_eq!(env.wake(), None);
        env.wake_at(60);
        assert!(!env.set_irq(24, true), "no such line");
        (env.sink())("via sink");
        env.console_line("direct");
        assert_eq!(env.pending_request(), None);
        env.request(VmRequest::PowerOff);
        env.request(VmRequest::Reset);
        assert_eq!(env.pending_request(), Some(VmRequest::PowerOff));
        assert_eq!(wake, Some(60));
        assert_eq!(request, Some(VmRequest::PowerOff), "the first one stands");
        assert_eq!(lines, ["via sink", "direct"]);
    }

    /// A device that asks the VM to reset on a write of 1, to power off
    /// on a write of 2, and to power off from its timer.
    struct Requester;
    impl Device for Requester {
        fn name(&self) -> &'static str {
            "requester"
        }
        fn port_write(&mut self, _port: u16, _size: u8, value: u32, env: &mut DeviceEnv<'_>) {
            match value {
                1 => env.request(VmRequest::Reset),
                2 => env.request(VmRequest::PowerOff),
                _ => env.wake_at(u64::from(value)),
            }
        }
        fn timer(&mut self, _now: u64, env: &mut DeviceEnv<'_>) {
            env.request(VmRequest::PowerOff);
        }
    }

    #[test]
    fn the_first_vm_request_stands_until_taken() {
        let mut bus = Bus::new();
        let id = bus.add(Box::new(Requester), &[0x92..=0x92], &[]).unwrap();
        let mut vm = Vm::new(bus);
        assert_eq!(vm.bus.take_request(), None);
        assert!(vm.out(0x92, 1, 1));
        assert!(vm.out(0x92, 1, 2));
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        assert_eq!(vm.bus.take_request(), None, "taken once");
        assert!(vm.out(0x92, 1, 2));
        assert_eq!(vm.bus.take_request(), Some(VmRequest::PowerOff));

        // From a timer, and from the owner reaching the device directly.
        assert!(vm.out(0x92, 1, 100));
        assert_eq!(vm.run(100), 1);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::PowerOff));
        let mut irqs = IrqLines::new();
        vm.bus
            .with_device(id, 0, &mut irqs, &mut |_| {}, |_: &mut Requester, env| {
                env.request(VmRequest::Reset);
            })
            .unwrap();
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        assert!(format!("{:?}", vm.bus).contains("request"));
    }

    proptest! {
        /// Random port and MMIO accesses of any size, at any address, and
        /// timer runs at any time, never panic and are claimed exactly when
        /// some byte falls in a claimed range.
        #[test]
        fn random_accesses_never_panic(
            ops in prop::collection::vec(
                (0u8..5, any::<u16>(), any::<u64>(), 0u8..10, any::<u64>()),
                0..200,
            )
        ) {
            let mut bus = Bus::new();
            let top = mmio(0xFFFF_FFFF_FFFF_F000, 1);
            let uart = Box::new(crate::serial::UartDevice::com1());
            let timer = Box::new(crate::timer::TestTimer::new());
            bus.add(Probe::boxed("a", 1), &[0x0..=0x7, 0xFFF0..=0xFFFF], &[mmio(0, 1)])
                .unwrap();
            bus.add(uart, &[0x3F8..=0x3FF], &[]).unwrap();
            bus.add(timer, &[0xE0..=0xE7], &[top]).unwrap();
            let mut vm = Vm::new(bus);
            for (kind, port, gpa, size, value) in ops {
                // Bias addresses towards the edges of the claimed ranges.
                let near = port >> 2;
                let port = match port % 4 {
                    0 => 0x3F0 + (near & 0x1F),
                    1 => 0xDC + (near & 0xF),
                    2 => 0xFFF8u16.wrapping_add(near & 0xF),
                    _ => port,
                };
                let gpa = match gpa % 3 {
                    0 => gpa & 0x1FFF,
                    1 => gpa | 0xFFFF_FFFF_FFFF_E000,
                    _ => gpa,
                };
                let claims_port = |p: u16| {
                    !(8..0xFFF0).contains(&p)
                        || (0x3F8..=0x3FF).contains(&p)
                        || (0xE0..=0xE7).contains(&p)
                };
                let claims_gpa = |a: u64| !(0x1000..0xFFFF_FFFF_FFFF_F000).contains(&a);
                let port_claimed =
                    (0..u16::from(size)).any(|i| claims_port(port.wrapping_add(i)));
                let gpa_claimed =
                    (0..u64::from(size)).any(|i| gpa.checked_add(i).is_some_and(claims_gpa));
                vm.now = value >> 8;
                match kind {
                    0 => {
                        let got = vm.inp(port, size);
                        let valid = matches!(size, 1 | 2 | 4);
                        prop_assert_eq!(got.is_some(), valid && port_claimed);
                        if let Some(v) = got {
                            prop_assert!(u64::from(v) <= all_ones(size));
                        }
                    }
                    1 => {
                        let valid = matches!(size, 1 | 2 | 4);
                        prop_assert_eq!(vm.out(port, size, value as u32), valid && port_claimed);
                    }
                    2 => {
                        let got = vm.read(gpa, size);
                        let valid = matches!(size, 1 | 2 | 4 | 8);
                        prop_assert_eq!(got.is_some(), valid && gpa_claimed);
                    }
                    3 => {
                        let valid = matches!(size, 1 | 2 | 4 | 8);
                        prop_assert_eq!(vm.write(gpa, size, value), valid && gpa_claimed);
                    }
                    _ => {
                        vm.run(value);
                        prop_assert!(vm.bus.next_deadline().is_none_or(|d| d > value));
                    }
                }
            }
            let lines = &mut vm.lines;
            vm.bus.flush(&mut |l: &str| lines.push(l.to_string()));
        }
    }
}
