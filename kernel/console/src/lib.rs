//! Ferrovisor's serial console, the part that can be decided without
//! touching hardware: it owns nothing but bytes and is tested on the host.
//! The kernel feeds it what COM1 receives and what guests and the log
//! print, and sends what it gives back to COM1.
//!
//! - Output: [`OutputRing`] (one per source: bounded, drops counted,
//!   replay tail) and [`Mux`] (whole lines, round-robin between sources,
//!   `[name]` prefixes, partial lines after a pause, a per-call byte
//!   budget, and what the screen shows in each [`Focus`]).
//! - Input: [`InputBuffer`] (filled by the receive interrupt) and
//!   [`InputRouter`] (the hot key pressed three times moves the focus
//!   monitor → guests → monitor; input goes to the guest in focus or to
//!   the monitor).
//! - Monitor: [`LineEditor`], [`parse`] into [`Command`], [`execute`]
//!   against a [`MonitorTarget`], tied together by [`Monitor`].
//!
//! # How the kernel drives it
//!
//! ```
//! use console::*;
//! # struct Nothing;
//! # impl MonitorTarget for Nothing {
//! #     fn guests(&self) -> Vec<GuestSummary> { Vec::new() }
//! #     fn info(&self, _: &str) -> Option<GuestInfo> { None }
//! #     fn regs(&mut self, _: &str, _: u32) -> Result<RegisterSnapshot, String> { Err("none".into()) }
//! #     fn read_memory(&mut self, _: &str, _: u64, _: &mut [u8]) -> Result<(), MemError> { Err(MemError::NoMemory) }
//! #     fn exits(&self, _: &str) -> Option<ExitCounts> { None }
//! #     fn log(&self, _: &str) -> Option<Vec<u8>> { None }
//! #     fn pause(&mut self, _: &str) -> Result<(), String> { Ok(()) }
//! #     fn resume(&mut self, _: &str) -> Result<(), String> { Ok(()) }
//! #     fn stop(&mut self, _: &str) -> Result<(), String> { Ok(()) }
//! #     fn restart(&mut self, _: &str) -> Result<(), String> { Ok(()) }
//! #     fn stats(&self) -> HostStats { HostStats::default() }
//! #     fn set_log_level(&mut self, _: LogLevel) -> Result<(), String> { Ok(()) }
//! #     fn poweroff(&mut self) {}
//! # }
//! # let mut target = Nothing;
//! let pause = 50_000_000; // TSC ticks: ~20 ms at 2.5 GHz
//! let mut mux = Mux::new(pause);
//! let log = mux.add_source("log", SourceKind::Host, OutputRing::new(16 * 1024, 0));
//! let lines = mux.add_source("console", SourceKind::Host, OutputRing::new(64 * 1024, 0));
//! let linux = mux.add_source("linux", SourceKind::Guest, OutputRing::new(4096, 4096));
//! let mut router = InputRouter::new(0x01); // config's console_hotkey.byte()
//! router.add_guest(linux, "linux");
//! let mut monitor = Monitor::new();
//! mux.set_prompt(monitor.prompt().as_bytes());
//!
//! // The guest's UART transmits (exit handler): never waits.
//! mux.write(linux, b"login: ", 1_000);
//! mux.write(log, b"[cpu0] INFO run: started\n", 1_000);
//!
//! // COM1's receive interrupt pushes into an InputBuffer; the drain side:
//! let mut input = InputBuffer::new();
//! for &b in b"\x01\x01\x01ls\r" { input.push(b); }
//! let mut bytes = [0u8; 64];
//! let n = input.drain(&mut bytes);
//! let mut to_monitor = Vec::new();
//! router.feed(&bytes[..n], &mut |routed| match routed {
//!     Routed::Guest(_guest, bytes) => { /* the guest's UartDevice::receive */ let _ = bytes; }
//!     Routed::Monitor(bytes) => to_monitor.extend_from_slice(bytes),
//!     Routed::FocusChanged { focus, announcement } => {
//!         mux.set_focus(focus);
//!         mux.write(lines, announcement.as_bytes(), 2_000);
//!         mux.write(lines, b"\n", 2_000);
//!     }
//! });
//! monitor.feed(&to_monitor, &mut target, &mut |line| {
//!     mux.write(lines, line.as_bytes(), 2_000);
//!     mux.write(lines, b"\n", 2_000);
//! });
//! mux.set_prompt(monitor.prompt().as_bytes());
//!
//! // The drain: at most a FIFO's worth whenever the transmitter is empty.
//! let mut screen = Vec::new();
//! while mux.next_chunk(2_000 + pause, 16, &mut |b| screen.extend_from_slice(b)) > 0 {}
//! let screen = String::from_utf8(screen).unwrap();
//! assert!(screen.contains("[cpu0] INFO run: started\r\n"));
//! assert!(screen.contains("console: input goes to linux"));
//! assert!(screen.contains("login: ")); // raw: linux has the focus
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

extern crate alloc;

pub mod command;
pub mod editor;
pub mod exec;
pub mod input;
pub mod monitor;
pub mod mux;
pub mod ring;
pub mod target;
pub mod text;

#[cfg(test)]
mod tests;

pub use command::{parse, Command, LogLevel, ParseError, HELP, MEM_DEFAULT_LEN, MEM_MAX_LEN};
pub use editor::{Edit, LineEditor, MONITOR_LINE_MAX};
pub use exec::execute;
pub use input::{InputBuffer, InputRouter, Routed, INPUT_CAPACITY};
pub use monitor::{Monitor, PROMPT};
pub use mux::{Focus, Mux, SourceId, SourceKind, LINE_MAX};
pub use ring::OutputRing;
pub use target::{
    CpuStats, ExitCounts, GuestInfo, GuestState, GuestSummary, HostStats, MemError, MonitorTarget,
    RegisterSnapshot, Segment, GPR_NAMES,
};
