//! [`I8042`]: the PC keyboard controller at ports 0x60 (data) and 0x64
//! (status and command), with no keyboard and no mouse behind it. It owns
//! the controller's status, output buffer, internal RAM (the command byte
//! first), output port and the command that waits for a data byte, and
//! turns the reset line into [`VmRequest::Reset`]: guests use it to reboot
//! (Linux's reboot=kbd, the default fallback) and probe it at boot.
//!
//! Sources: IBM PC/AT Technical Reference, "Keyboard Controller" (status
//! register bits, commands 0x20-0x3F / 0x60-0x7F read and write internal
//! RAM, 0xAA self test answering 0x55, 0xAB interface test, 0xAD / 0xAE
//! disable and enable the keyboard, 0xD0 / 0xD1 read and write the output
//! port whose bit 0 drives the CPU's reset line low to reset, 0xF0-0xFF
//! pulse output port bits 0-3 low for each mask bit that is clear, 0xFE
//! pulsing the reset line); the PS/2 additions 0xA7 / 0xA8 (disable and
//! enable the auxiliary device) and 0xD2 / 0xD3 (write the keyboard or
//! auxiliary output buffer).
//!
//! # Model
//!
//! - Status (read 0x64): bit 0 output buffer full, bit 1 input buffer
//!   full (never: commands run at once), bit 2 system flag (set: the
//!   self test passed at power-on), bit 3 the last write was to 0x64,
//!   bit 4 keyboard not inhibited; bits 5-7 (auxiliary data, timeout,
//!   parity) read 0.
//! - Data (read 0x60): the output buffer, clearing OBF; 0 when empty.
//!   Writes to 0x60 are the data byte of the command waiting for one
//!   (0x60-0x7F, 0xD1, 0xD2, 0xD3), else bytes for the keyboard, which is
//!   not there: they are dropped and nothing answers (a guest's keyboard
//!   probe times out, and finds no keyboard).
//! - Commands: 0x20-0x3F and 0x60-0x7F read and write the 32 bytes of
//!   RAM (byte 0 is the command byte, 0x45 at power-on: keyboard
//!   interrupt, system flag, translation); 0xAA answers 0x55; 0xAB
//!   answers 0x00; 0xA7, 0xA8, 0xAD and 0xAE set or clear the disable bits
//!   of the command byte; 0xD0 answers the output port; 0xD1 writes it,
//!   and a value with bit 0 clear (the reset line asserted) asks the VM to
//!   reset; 0xD2 and 0xD3 put their data byte in the output buffer; 0xF0-
//!   0xFF with bit 0 clear (0xFE above all) pulse the reset line: reset.
//!   Other commands (the auxiliary device's 0xA9 and 0xD4 among them) are
//!   ignored, so a probe for a mouse finds none.
//!
//! Left out: IRQ 1 and IRQ 12 (no keyboard or mouse ever sends a byte;
//! command replies are polled through OBF, and guests run these commands
//! with the controller's interrupts off), the A20 gate (output port bit
//! 1 is stored, guest memory does not wrap at 1 MiB), scan codes.

use core::ops::RangeInclusive;

use crate::bus::{Device, DeviceEnv, VmRequest};

/// The data port.
pub const I8042_DATA: u16 = 0x60;
/// The status (read) and command (write) port.
pub const I8042_COMMAND: u16 = 0x64;
/// Every port [`I8042`] decodes, to claim on the bus (0x61 between them
/// is the PIT's port B).
pub const I8042_PORTS: [RangeInclusive<u16>; 2] =
    [I8042_DATA..=I8042_DATA, I8042_COMMAND..=I8042_COMMAND];

// Status bits.
const STATUS_OBF: u8 = 1 << 0;
const STATUS_SYS: u8 = 1 << 2;
const STATUS_CMD: u8 = 1 << 3;
const STATUS_UNINHIBITED: u8 = 1 << 4;

// Command byte bits.
const CB_KBD_DISABLED: u8 = 1 << 4;
const CB_AUX_DISABLED: u8 = 1 << 5;
/// Keyboard interrupt, system flag, translation.
const CB_POWER_ON: u8 = 0x45;

/// Output port: bit 0 is the CPU reset line (active low), bit 1 A20.
const OUT_RESET_N: u8 = 1 << 0;
const OUT_POWER_ON: u8 = 0x03;

/// The keyboard controller (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte.
    ram: [u8; 32],
    output_port: u8,
    /// The output buffer.
    out: Option<u8>,
    /// The command waiting for its data byte.
    pending: Option<u8>,
    /// The last write was to the command port.
    last_was_command: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller after its power-on self test: command byte 0x45,
    /// output port 0x03 (not in reset, A20 on), buffers empty.
    pub const fn new() -> Self {
        let mut ram = [0; 32];
        ram[0] = CB_POWER_ON;
        Self {
            ram,
            output_port: OUT_POWER_ON,
            out: None,
            pending: None,
            last_was_command: false,
        }
    }

    /// The command byte (RAM byte 0).
    pub fn command_byte(&self) -> u8 {
        self.ram.first().copied().unwrap_or(0)
    }

    /// The output port as last written.
    pub const fn output_port(&self) -> u8 {
        self.output_port
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYS | STATUS_UNINHIBITED;
        if self.out.is_some() {
            status |= STATUS_OBF;
        }
        if self.last_was_command {
            status |= STATUS_CMD;
        }
        status
    }

    fn update_command_byte(&mut self, set: u8, clear: u8) {
        if let Some(cb) = self.ram.first_mut() {
            *cb = (*cb | set) & !clear;
        }
    }

    fn command(&mut self, command: u8, env: &mut DeviceEnv<'_>) {
        self.pending = None;
        match command {
            0x20..=0x3F => {
                self.out = self.ram.get(usize::from(command & 0x1F)).copied();
            }
            0x60..=0x7F | 0xD1..=0xD3 => self.pending = Some(command),
            0xA7 => self.update_command_byte(CB_AUX_DISABLED, 0),
            0xA8 => self.update_command_byte(0, CB_AUX_DISABLED),
            0xAA => self.out = Some(0x55),
            0xAB => self.out = Some(0x00),
            0xAD => self.update_command_byte(CB_KBD_DISABLED, 0),
            0xAE => self.update_command_byte(0, CB_KBD_DISABLED),
            0xD0 => self.out = Some(self.output_port),
            // Pulse output port bits 0-3 low where the mask bit is clear:
            // bit 0 is the reset line.
            0xF0..=0xFF if command & OUT_RESET_N == 0 => env.request(VmRequest::Reset),
            _ => {}
        }
    }

    fn data(&mut self, value: u8, env: &mut DeviceEnv<'_>) {
        match self.pending.take() {
            Some(command @ 0x60..=0x7F) => {
                if let Some(byte) = self.ram.get_mut(usize::from(command & 0x1F)) {
                    *byte = value;
                }
            }
            Some(0xD1) => {
                self.output_port = value;
                if value & OUT_RESET_N == 0 {
                    env.request(VmRequest::Reset);
                }
            }
            Some(0xD2 | 0xD3) => self.out = Some(value),
            // For the keyboard, which is not there.
            _ => {}
        }
    }
}

impl Device for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }

    /// Both ports are a byte wide; a wider access reads the port's byte
    /// then all ones (the bus gives the other bytes to their owners when
    /// the access crosses out of these one-port ranges).
    fn port_read(&mut self, port: u16, _size: u8, _env: &mut DeviceEnv<'_>) -> u32 {
        let byte = match port {
            I8042_DATA => self.out.take().unwrap_or(0),
            I8042_COMMAND => self.status(),
            _ => 0xFF,
        };
        let mut bytes = [0xFF; 4];
        if let Some(first) = bytes.first_mut() {
            *first = byte;
        }
        u32::from_le_bytes(bytes)
    }

    fn port_write(&mut self, port: u16, _size: u8, value: u32, env: &mut DeviceEnv<'_>) {
        // The low byte is the port's.
        let byte = value.to_le_bytes().first().copied().unwrap_or(0);
        match port {
            I8042_DATA => {
                self.last_was_command = false;
                self.data(byte, env);
            }
            I8042_COMMAND => {
                self.last_was_command = true;
                self.command(byte, env);
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

    type Vm = Rig<I8042>;

    impl Vm {
        fn new() -> Self {
            Rig::with(I8042::new(), &I8042_PORTS, &[])
        }
        /// A command, then its reply as a guest polls for it.
        fn ask(&mut self, command: u8) -> Option<u8> {
            self.outb(0x64, command);
            (self.inb(0x64) & STATUS_OBF != 0).then(|| self.inb(0x60))
        }
    }

    #[test]
    fn status_self_test_and_the_command_byte() {
        let mut vm = Vm::new();
        assert_eq!(vm.inb(0x64), STATUS_SYS | STATUS_UNINHIBITED);
        assert_eq!(vm.inb(0x60), 0, "empty");
        assert_eq!(vm.ask(0xAA), Some(0x55));
        assert_eq!(vm.inb(0x64) & STATUS_OBF, 0, "reading cleared OBF");
        assert_eq!(vm.inb(0x64) & STATUS_CMD, STATUS_CMD);
        assert_eq!(vm.ask(0xAB), Some(0x00));
        assert_eq!(vm.ask(0x20), Some(0x45));
        // Linux's i8042 init: disable both ports, write the command byte.
        for cmd in [0xAD, 0xA7] {
            assert_eq!(vm.ask(cmd), None);
        }
        assert_eq!(vm.ask(0x20), Some(0x45 | 0x30));
        vm.outb(0x64, 0x60);
        vm.outb(0x60, 0x44);
        assert_eq!(vm.inb(0x64) & STATUS_CMD, 0);
        assert_eq!(vm.ask(0x20), Some(0x44));
        for cmd in [0xAE, 0xA8] {
            assert_eq!(vm.ask(cmd), None);
        }
        assert_eq!(vm.ask(0x20), Some(0x44));
        // Other RAM bytes, and D2 echo.
        vm.outb(0x64, 0x65);
        vm.outb(0x60, 0x99);
        assert_eq!(vm.ask(0x25), Some(0x99));
        vm.outb(0x64, 0xD2);
        vm.outb(0x60, 0xAB);
        assert_eq!(vm.inb(0x60), 0xAB);
        assert_eq!(vm.bus.take_request(), None);
    }

    #[test]
    fn no_keyboard_and_no_mouse_answer() {
        let mut vm = Vm::new();
        // Keyboard reset and identify: dropped, nothing comes back.
        vm.outb(0x60, 0xFF);
        vm.outb(0x60, 0xF2);
        assert_eq!(vm.inb(0x64) & STATUS_OBF, 0);
        // The mouse probes: loopback through the aux port, aux test.
        vm.outb(0x64, 0xD4);
        vm.outb(0x60, 0xF2);
        assert_eq!(vm.ask(0xA9), None);
        assert_eq!(vm.inb(0x64) & STATUS_OBF, 0);
    }

    #[test]
    fn the_reset_line_resets_the_vm() {
        let mut vm = Vm::new();
        assert_eq!(vm.ask(0xD0), Some(0x03));
        vm.outb(0x64, 0xFE);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        vm.outb(0x64, 0xFF);
        assert_eq!(vm.bus.take_request(), None, "pulses nothing");
        vm.outb(0x64, 0xF0);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        // Writing the output port: A20 only, then the reset line.
        vm.outb(0x64, 0xD1);
        vm.outb(0x60, 0x01);
        assert_eq!(vm.bus.take_request(), None);
        vm.outb(0x64, 0xD1);
        vm.outb(0x60, 0x02);
        assert_eq!(vm.bus.take_request(), Some(VmRequest::Reset));
        let kbc = vm.dev();
        assert_eq!((kbc.output_port(), kbc.command_byte()), (0x02, 0x45));
    }

    proptest! {
        /// Random accesses never panic.
        #[test]
        fn random_port_accesses_never_panic(
            ops in prop::collection::vec((any::<bool>(), 0u16..6, 0u8..6, any::<u32>()), 0..300)
        ) {
            let mut vm = Vm::new();
            for (write, port, size, value) in ops {
                let port = 0x5F + port;
                if write {
                    let _ = vm.port_write_at(0, port, size, value);
                } else {
                    let _ = vm.port_read_at(0, port, size);
                }
                let _ = vm.bus.take_request();
            }
        }
    }
}
