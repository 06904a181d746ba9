//! The input side: [`InputBuffer`], where the receive interrupt leaves
//! COM1's bytes, and [`InputRouter`], which decides where each byte goes:
//! to the guest in focus (its virtual 16550's receive side) or to the
//! monitor, watching for the hot key that moves the focus.
//!
//! # Hot-key rules
//!
//! The hot key is a control byte (`console_hotkey`, Ctrl-A = 0x01 by
//! default). Presses are counted while they come in a row:
//!
//! - the third press in a row moves the focus: monitor → first guest →
//!   next guest → … → last guest → monitor, and the change is announced
//!   on one line ([`Routed::FocusChanged`]); the three presses go nowhere;
//! - one or two presses followed by another byte pass through unchanged:
//!   the held hot key (once or twice) and then that byte go where input
//!   goes (so Ctrl-A `a` reaches the guest as 0x01 `a`, and Ctrl-A Ctrl-A
//!   `x` as 0x01 0x01 `x`). Nothing is swallowed unless the focus moves.
//!   As in Xen's console, held presses wait for the next byte however long
//!   it takes: a lone hot key reaches the guest with the key after it;
//! - counting goes on across [`InputRouter::feed`] calls, so a sequence
//!   split across receive interrupts works the same.
//!
//! The focus list is the guests in the order they were added; a guest
//! that goes away (stopped, being restarted) leaves it, and if it had the
//! focus the monitor gets it, announced.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::mux::{Focus, SourceId};

/// The bytes [`InputBuffer`] holds: more than a fast typist or a short
/// paste sends between two drains.
pub const INPUT_CAPACITY: usize = 256;

/// Received bytes waiting for the console; fixed size, no allocation, so
/// the receive interrupt handler can fill it (under the caller's lock).
#[derive(Clone, Debug)]
pub struct InputBuffer {
    bytes: [u8; INPUT_CAPACITY],
    /// Index of the oldest byte.
    head: usize,
    /// Bytes held.
    len: usize,
    /// Bytes refused because the buffer was full.
    dropped: u64,
}

impl Default for InputBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl InputBuffer {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            bytes: [0; INPUT_CAPACITY],
            head: 0,
            len: 0,
            dropped: 0,
        }
    }

    /// Stores a received byte; false (and counted) if the buffer is full:
    /// the newest input is lost, never the older.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len >= INPUT_CAPACITY {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        let tail = self
            .head
            .wrapping_add(self.len)
            .checked_rem(INPUT_CAPACITY)
            .unwrap_or(0);
        if let Some(slot) = self.bytes.get_mut(tail) {
            *slot = byte;
            self.len = self.len.saturating_add(1);
        }
        true
    }

    /// Moves up to `out.len()` bytes, oldest first, into `out`; returns
    /// how many.
    pub fn drain(&mut self, out: &mut [u8]) -> usize {
        let count = self.len.min(out.len());
        for slot in out.iter_mut().take(count) {
            *slot = self.bytes.get(self.head).copied().unwrap_or(0);
            self.head = self
                .head
                .wrapping_add(1)
                .checked_rem(INPUT_CAPACITY)
                .unwrap_or(0);
        }
        self.len = self.len.saturating_sub(count);
        count
    }

    /// Bytes held.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is held.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes refused because the buffer was full.
    pub const fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// What [`InputRouter`] makes of the input, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed<'a> {
    /// Bytes for this guest's receive side.
    Guest(SourceId, &'a [u8]),
    /// Bytes for the monitor's line editor.
    Monitor(&'a [u8]),
    /// The focus moved; print `announcement` (one line, no line end) and
    /// show the new focus (`Mux::set_focus`).
    FocusChanged {
        /// The new focus.
        focus: Focus,
        /// The line that says so.
        announcement: &'a str,
    },
}

/// A guest in the focus list.
#[derive(Clone, Debug)]
struct Entry {
    id: SourceId,
    name: String,
}

/// The hot-key state machine and the focus; see the module
/// documentation.
#[derive(Clone, Debug)]
pub struct InputRouter {
    hotkey: u8,
    /// Hot-key presses in a row so far (0..=2).
    presses: u8,
    guests: Vec<Entry>,
    focus: Focus,
}

impl InputRouter {
    /// A router for `hotkey` (the byte the key sends, e.g. 0x01 for
    /// Ctrl-A) with no guests and the monitor in focus.
    pub fn new(hotkey: u8) -> Self {
        Self {
            hotkey,
            presses: 0,
            guests: Vec::new(),
            focus: Focus::Monitor,
        }
    }

    /// The hot key's byte.
    pub const fn hotkey(&self) -> u8 {
        self.hotkey
    }

    /// The hot key as the operator types it: `ctrl-a` for 0x01.
    pub fn hotkey_name(&self) -> String {
        key_name(self.hotkey)
    }

    /// Where input goes now.
    pub const fn focus(&self) -> Focus {
        self.focus
    }

    /// The focus list: guests in the order they cycle.
    pub fn guests(&self) -> impl Iterator<Item = (SourceId, &str)> {
        self.guests.iter().map(|e| (e.id, e.name.as_str()))
    }

    /// Adds a guest at the end of the focus list (a known `id` is renamed
    /// in place).
    pub fn add_guest(&mut self, id: SourceId, name: &str) {
        match self.guests.iter_mut().find(|e| e.id == id) {
            Some(entry) => entry.name = String::from(name),
            None => self.guests.push(Entry {
                id,
                name: String::from(name),
            }),
        }
    }

    /// Removes a guest from the focus list; if it had the focus, the
    /// monitor gets it and `out` receives the announcement.
    pub fn remove_guest(&mut self, id: SourceId, out: &mut impl FnMut(Routed<'_>)) {
        self.guests.retain(|e| e.id != id);
        if self.focus == Focus::Guest(id) {
            self.change_focus(Focus::Monitor, out);
        }
    }

    /// Moves the focus directly (a monitor command may); a guest not in
    /// the list means the monitor. Announced if it changes.
    pub fn set_focus(&mut self, focus: Focus, out: &mut impl FnMut(Routed<'_>)) {
        let focus = match focus {
            Focus::Guest(id) if self.guests.iter().any(|e| e.id == id) => focus,
            _ => Focus::Monitor,
        };
        if focus != self.focus {
            self.change_focus(focus, out);
        }
    }

    /// Routes received `bytes`: `out` gets runs of bytes for the guest in
    /// focus or the monitor, and focus changes, in order.
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(Routed<'_>)) {
        let mut run_start = 0usize;
        for (index, &byte) in bytes.iter().enumerate() {
            if byte == self.hotkey {
                self.deliver(bytes.get(run_start..index).unwrap_or_default(), out);
                run_start = index.saturating_add(1);
                self.presses = self.presses.saturating_add(1);
                if self.presses >= 3 {
                    self.presses = 0;
                    let next = self.next_focus();
                    self.change_focus(next, out);
                }
            } else if self.presses > 0 {
                // Pass the held presses through, then this byte with the
                // run it starts.
                let held = [self.hotkey; 2];
                let count = usize::from(self.presses).min(held.len());
                self.presses = 0;
                self.deliver(held.get(..count).unwrap_or_default(), out);
                run_start = index;
            }
        }
        self.deliver(bytes.get(run_start..).unwrap_or_default(), out);
    }

    /// The focus after the current one in the cycle.
    fn next_focus(&self) -> Focus {
        let position = match self.focus {
            Focus::Monitor => None,
            Focus::Guest(id) => self.guests.iter().position(|e| e.id == id),
        };
        let next = match position {
            None => self.guests.first(),
            Some(i) => self.guests.get(i.saturating_add(1)),
        };
        next.map_or(Focus::Monitor, |e| Focus::Guest(e.id))
    }

    /// Sets the focus and announces it.
    fn change_focus(&mut self, focus: Focus, out: &mut impl FnMut(Routed<'_>)) {
        self.focus = focus;
        let key = self.hotkey_name();
        let announcement = match focus {
            Focus::Monitor => {
                format!("console: input goes to the monitor; type help ({key} 3 times switches)")
            }
            Focus::Guest(id) => {
                let name = self
                    .guests
                    .iter()
                    .find(|e| e.id == id)
                    .map_or("?", |e| e.name.as_str());
                format!("console: input goes to {name} ({key} 3 times switches)")
            }
        };
        out(Routed::FocusChanged {
            focus,
            announcement: &announcement,
        });
    }

    /// Sends `bytes` where input goes now.
    fn deliver(&self, bytes: &[u8], out: &mut impl FnMut(Routed<'_>)) {
        if bytes.is_empty() {
            return;
        }
        match self.focus {
            Focus::Monitor => out(Routed::Monitor(bytes)),
            Focus::Guest(id) => out(Routed::Guest(id, bytes)),
        }
    }
}

/// How the operator types control byte `byte`: `ctrl-a` for 0x01, `0xNN`
/// for a byte that is not Ctrl and a letter.
pub fn key_name(byte: u8) -> String {
    match byte {
        0x01..=0x1A => {
            let letter = char::from(b'a'.wrapping_add(byte).wrapping_sub(1));
            format!("ctrl-{letter}")
        }
        _ => format!("0x{byte:02x}"),
    }
}
