//! What the device models' tests share: a bus with the device under test
//! on it, driven the way a VM's exit handlers drive it (port and MMIO
//! accesses at a clock value, interrupt lines, console lines collected).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut, RangeInclusive};

use addr::GuestPhysAddr;

use crate::bus::{Bus, Device, DeviceId, MmioRange};
use crate::irq::{InterruptController, IrqLines, SimpleIrqChip};

/// A bus, its interrupt lines, the clock accesses happen at, and the
/// console lines devices printed.
pub(crate) struct TestBus {
    pub bus: Bus,
    pub irqs: IrqLines,
    pub now: u64,
    pub lines: Vec<String>,
    /// Where the lines go: line L is vector 0x20 + L.
    pub chip: SimpleIrqChip,
}

impl TestBus {
    /// An empty bus at TSC 0.
    pub fn new() -> Self {
        Self {
            bus: Bus::new(),
            irqs: IrqLines::new(),
            now: 0,
            lines: Vec::new(),
            chip: SimpleIrqChip::new(),
        }
    }

    /// Runs the timers due at `now` (the clock moves there), hands the
    /// changed lines to the chip and takes every vector it then holds.
    pub fn run(&mut self, now: u64) -> Vec<u8> {
        self.now = now;
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        self.bus.run_timers(now, &mut self.irqs, &mut sink);
        self.irqs.forward_to(&mut self.chip);
        core::iter::from_fn(|| self.chip.acknowledge()).collect()
    }

    /// Adds `device` with its ranges (which must not overlap others).
    pub fn add(
        &mut self,
        device: impl Device,
        ports: &[RangeInclusive<u16>],
        mmio: &[MmioRange],
    ) -> DeviceId {
        self.bus.add(Box::new(device), ports, mmio).unwrap()
    }

    /// The device `id` as its own type.
    pub fn device<T: Device>(&mut self, id: DeviceId) -> &mut T {
        self.bus.get_mut::<T>(id).unwrap()
    }

    /// OUT of `size` bytes; a device must claim it.
    pub fn out(&mut self, port: u16, size: u8, value: u32) {
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        assert!(
            self.bus
                .port_write(port, size, value, self.now, &mut self.irqs, &mut sink),
            "nothing claimed OUT to {port:#x}"
        );
    }

    /// OUT of one byte.
    pub fn outb(&mut self, port: u16, value: u8) {
        self.out(port, 1, u32::from(value));
    }

    /// IN of `size` bytes; a device must claim it.
    pub fn inp(&mut self, port: u16, size: u8) -> u32 {
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        self.bus
            .port_read(port, size, self.now, &mut self.irqs, &mut sink)
            .unwrap_or_else(|| panic!("nothing claimed IN from {port:#x}"))
    }

    /// IN of one byte.
    pub fn inb(&mut self, port: u16) -> u8 {
        self.inp(port, 1) as u8
    }

    /// OUT at TSC `now`, which nothing need claim: whether something did.
    pub fn port_write_at(&mut self, now: u64, port: u16, size: u8, value: u32) -> bool {
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        self.bus
            .port_write(port, size, value, now, &mut self.irqs, &mut sink)
    }

    /// IN at TSC `now`, which nothing need claim.
    pub fn port_read_at(&mut self, now: u64, port: u16, size: u8) -> Option<u32> {
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        self.bus
            .port_read(port, size, now, &mut self.irqs, &mut sink)
    }

    /// An MMIO read; a device must claim it.
    pub fn mmio_read(&mut self, gpa: u64, size: u8) -> u64 {
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        self.bus
            .mmio_read(
                GuestPhysAddr::new(gpa),
                size,
                self.now,
                &mut self.irqs,
                &mut sink,
            )
            .unwrap_or_else(|| panic!("nothing claimed the read at {gpa:#x}"))
    }

    /// An MMIO write; a device must claim it.
    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) {
        let lines = &mut self.lines;
        let mut sink = |line: &str| lines.push(line.to_string());
        assert!(
            self.bus.mmio_write(
                GuestPhysAddr::new(gpa),
                size,
                value,
                self.now,
                &mut self.irqs,
                &mut sink
            ),
            "nothing claimed the write at {gpa:#x}"
        );
    }
}

/// A [`TestBus`] with one device of type `D` on it, reached as `D` with
/// [`Rig::dev`]; each device's tests add their own helpers to
/// `Rig<TheirDevice>`.
pub(crate) struct Rig<D> {
    pub t: TestBus,
    pub id: DeviceId,
    device: PhantomData<D>,
}

impl<D: Device> Rig<D> {
    /// `device` on its own bus with its ranges.
    pub fn with(device: D, ports: &[RangeInclusive<u16>], mmio: &[MmioRange]) -> Self {
        let mut t = TestBus::new();
        let id = t.add(device, ports, mmio);
        Self {
            t,
            id,
            device: PhantomData,
        }
    }

    /// The device under test.
    pub fn dev(&mut self) -> &mut D {
        self.t.device::<D>(self.id)
    }
}

impl<D> Deref for Rig<D> {
    type Target = TestBus;

    fn deref(&self) -> &TestBus {
        &self.t
    }
}

impl<D> DerefMut for Rig<D> {
    fn deref_mut(&mut self) -> &mut TestBus {
        &mut self.t
    }
}
