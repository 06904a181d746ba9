//! [`PciHost`]: the host bridge's I/O ports 0xCF8-0xCFF as a VM with no
//! PCI devices shows them: PCI configuration mechanism #1's CONFIG_ADDRESS
//! and CONFIG_DATA, and the reset control register at 0xCF9 that sits
//! inside CONFIG_ADDRESS's dword. It owns the latched configuration
//! address and the reset control value, and turns a CPU reset request into
//! [`VmRequest::Reset`].
//!
//! The two share one device because they share ports: 0xCF9 is the second
//! byte of the CONFIG_ADDRESS dword, and the bridge tells them apart by the
//! access size alone.
//!
//! Sources: PCI Local Bus Specification 3.0, 3.2.2.3.2 "Software
//! Generation of Configuration Transactions" (configuration mechanism #1:
//! CONFIG_ADDRESS is only a 32-bit access at 0xCF8, other accesses there
//! are ordinary I/O; bits 1:0 read 0) and 6.2.5.1 (a read of a function
//! that does not exist returns all ones, so a vendor ID of 0xFFFF means
//! nothing is there); Intel I/O controller hub datasheets, "Reset Control
//! Register (RST_CNT), I/O port 0xCF9" (bit 1 SYS_RST: hard or soft
//! reset, bit 2 RST_CPU: a write with it set resets, bit 3 FULL_RST).
//!
//! # Model
//!
//! - A 4-byte write at 0xCF8 latches CONFIG_ADDRESS (bit 31 enable, bus,
//!   device, function, register; the reserved bits 30:24 and 1:0 read 0);
//!   a 4-byte read returns it.
//! - A 1-byte write at 0xCF9 is reset control: with RST_CPU (bit 2) set
//!   the VM is asked to reset, hard or soft alike (SYS_RST does not
//!   matter: a VM has no power planes). A 1-byte read returns the last
//!   value written, bits 1-3.
//! - 0xCFC-0xCFF, any size: configuration data. No device exists at any
//!   bus, device or function, so reads are all ones and writes are
//!   dropped, whatever CONFIG_ADDRESS says.
//! - Any other access in 0xCF8-0xCFB (a byte or word at 0xCF8, 0xCFA or
//!   0xCFB, a word at 0xCF9) is ordinary I/O nothing answers: all ones,
//!   writes dropped, as on an Intel host bridge.
//!
//! Left out: configuration mechanism #2, PCI devices, and the chipset's
//! other uses of the dword.

use core::ops::RangeInclusive;

use crate::bus::{all_ones, Device, DeviceEnv, VmRequest};

/// CONFIG_ADDRESS (a dword).
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// The reset control register (a byte inside CONFIG_ADDRESS's dword).
pub const RESET_CONTROL: u16 = 0xCF9;
/// CONFIG_DATA (a dword window).
pub const CONFIG_DATA: u16 = 0xCFC;
/// Every port [`PciHost`] decodes, to claim on the bus.
pub const PCI_HOST_PORTS: RangeInclusive<u16> = 0xCF8..=0xCFF;

/// CONFIG_ADDRESS bits that are kept: enable (31), bus, device,
/// function and dword register (23:2).
const ADDRESS_WRITABLE: u32 = 0x80FF_FFFC;
/// Reset control bits kept for reads: SYS_RST, RST_CPU, FULL_RST.
const RESET_READABLE: u8 = 0x0E;
/// RST_CPU: a write with it set resets.
const RST_CPU: u8 = 1 << 2;

/// The host bridge's 0xCF8-0xCFF (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciHost {
    address: u32,
    reset_control: u8,
}

impl PciHost {
    /// The bridge at power-on: CONFIG_ADDRESS 0, reset control 0.
    pub const fn new() -> Self {
        Self {
            address: 0,
            reset_control: 0,
        }
    }

    /// CONFIG_ADDRESS as latched.
    pub const fn config_address(&self) -> u32 {
        self.address
    }
}

impl Device for PciHost {
    fn name(&self) -> &'static str {
        "pci-host"
    }

    fn port_read(&mut self, port: u16, size: u8, _env: &mut DeviceEnv<'_>) -> u32 {
        match (port, size) {
            (CONFIG_ADDRESS, 4) => self.address,
            (RESET_CONTROL, 1) => u32::from(self.reset_control),
            // Nothing at any bus/device/function, and ordinary I/O
            // nothing answers: all ones (at most 4 bytes: the cast drops
            // only zeros).
            _ => all_ones(size.min(4)) as u32,
        }
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32, env: &mut DeviceEnv<'_>) {
        match (port, size) {
            (CONFIG_ADDRESS, 4) => self.address = value & ADDRESS_WRITABLE,
            (RESET_CONTROL, 1) => {
                // A 1-byte write: the value fits in a byte.
                let value = value as u8;
                self.reset_control = value & RESET_READABLE;
                if value & RST_CPU != 0 {
                    env.request(VmRequest::Reset);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use crate::testbus::Rig;

    use proptest::prelude::*;

    type Vm = Rig<PciHost>;

    impl Vm {
        fn new() -> Self {
            Rig::with(PciHost::new(), &[PCI_HOST_PORTS], &[])
        }
    }

    #[test]
    fn config_address_latches_and_every_function_is_absent() {
        let mut vm = Vm::new();
        assert_eq!(vm.inp(0xCF8, 4), 0);
        // Bus 0, device 0, function 0, register 0: the vendor ID.
        vm.out(0xCF8, 4, 0x8000_0000);
        assert_eq!(vm.inp(0xCF8, 4), 0x8000_0000);
        assert_eq!(vm.inp(0xCFC, 4), 0xFFFF_FFFF, "nothing here");
        assert_eq!(vm.inp(0xCFC, 2), 0xFFFF, "vendor ID 0xFFFF");
        assert_eq!(vm.inp(0xCFE, 2), 0xFFFF);
        assert_eq!(vm.inp(0xCFF, 1), 0xFF);
        vm.out(0xCFC, 4, 0x1234_5678);
        assert_eq!(vm.inp(0xCFC, 4), 0xFFFF_FFFF, "writes are dropped");
        // Reserved bits read 0; a scan of bus 3, device 31, function 7.
        vm.out(0xCF8, 4, 0xFFFF_FFFF);
        assert_eq!(vm.inp(0xCF8, 4), 0x80FF_FFFC);
        vm.out(0xCF8, 4, 0x8003_FF00);
        assert_eq!(vm.inp(0xCFC, 4), 0xFFFF_FFFF);
        // Byte and word accesses at 0xCF8 are not CONFIG_ADDRESS.
        vm.out(0xCF8, 1, 0);
        vm.out(0xCFA, 2, 0);
        assert_eq!(vm.inp(0xCF8, 4), 0x8003_FF00);
        assert_eq!(vm.inp(0xCF8, 1), 0xFF);
        assert_eq!(vm.inp(0xCF8, 2), 0xFFFF);
        assert_eq!(vm.inp(0xCFA, 2), 0xFFFF);
        assert_eq!(vm.bus.take_request(), None);
    }

    #[test]
    fn reset_control_resets_on_rst_cpu_only() {
        let mut vm = Vm::new();
        // Linux's reboot=pci: 0x02 (hard, no reset yet), then 0x06.
        vm.out(0xCF9, 1, 0x02);
        assert_eq!(vm.bus.take_request(), None);
        assert_eq!(vm.inp(0xCF9, 1), 0x02);
        vm.out(0xCF9, 1, 0x06);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        // Soft reset (SYS_RST clear) resets too; reads keep bits 1-3.
        vm.out(0xCF9, 1, 0xF4);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        assert_eq!(vm.inp(0xCF9, 1), 0x04);
        // A word at 0xCF9 is not reset control, nor is a dword at 0xCF8.
        vm.out(0xCF9, 2, 0x0606);
        vm.out(0xCF8, 4, 0x0000_0600);
        assert_eq!(vm.bus.take_request(), None);
        assert_eq!(vm.inp(0xCF9, 2), 0xFFFF);
    }

    proptest! {
        /// Random accesses never panic; only a byte write at 0xCF9 with
        /// bit 2 set asks for a reset.
        #[test]
        fn random_port_accesses_never_panic(
            ops in prop::collection::vec((any::<bool>(), 0u16..10, 0u8..6, any::<u32>()), 0..200)
        ) {
            let mut vm = Vm::new();
            for (write, port, size, value) in ops {
                let port = 0xCF7 + port;
                if write {
                    let _ = vm.port_write_at(0, port, size, value);
                    // An access that sticks out of the range is split
                    // into bytes by the bus: its byte at 0xCF9 counts.
                    let whole = port >= 0xCF8 && port + u16::from(size) <= 0xD00;
                    let reset = matches!(size, 1 | 2 | 4)
                        && if whole {
                            port == 0xCF9 && size == 1 && value & 4 != 0
                        } else {
                            (0..u16::from(size))
                                .any(|i| port + i == 0xCF9 && (value >> (8 * i)) & 4 != 0)
                        };
                    prop_assert_eq!(vm.bus.take_request().is_some(), reset);
                } else {
                    let _ = vm.port_read_at(0, port, size);
                }
            }
        }
    }
}
