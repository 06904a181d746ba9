//! [`OutputRing`]: one source's bounded output queue, with the drop count
//! and the replay tail that the monitor's `log` command shows.
//!
//! Writing never blocks and never allocates: a byte that does not fit the
//! pending queue is dropped and counted, so a guest that prints faster
//! than the 115200-baud port can send loses output, never time. The replay
//! tail is separate from the queue and records every byte written, dropped
//! ones included (it is the guest's recent output, whatever the port
//! managed to show), keeping the newest [`OutputRing::history_capacity`]
//! bytes.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// One source's output: bytes waiting for the port, and the replay tail.
#[derive(Clone, Debug)]
pub struct OutputRing {
    /// Written, not yet taken by the multiplexer; never longer than
    /// `capacity`.
    pending: VecDeque<u8>,
    /// The most bytes `pending` holds.
    capacity: usize,
    /// The newest bytes written, at most `history_capacity`.
    history: VecDeque<u8>,
    /// The most bytes `history` holds.
    history_capacity: usize,
    /// Bytes that did not fit `pending`.
    dropped: u64,
    /// Bytes written in all, dropped ones included.
    written: u64,
}

impl OutputRing {
    /// A ring that queues at most `capacity` bytes for the port and keeps
    /// the newest `history_capacity` bytes for replay. Both buffers are
    /// allocated here, once.
    pub fn new(capacity: usize, history_capacity: usize) -> Self {
        Self {
            pending: VecDeque::with_capacity(capacity),
            capacity,
            history: VecDeque::with_capacity(history_capacity),
            history_capacity,
            dropped: 0,
            written: 0,
        }
    }

    /// Queues `bytes` for the port; returns how many fit. The rest are
    /// dropped and counted (the oldest queued bytes are kept: a line that
    /// started is finished rather than cut at its start). Every byte goes
    /// into the replay tail.
    pub fn write(&mut self, bytes: &[u8]) -> usize {
        let room = self.capacity.saturating_sub(self.pending.len());
        let taken = bytes.get(..room).unwrap_or(bytes);
        self.pending.extend(taken);
        let lost = bytes.len().saturating_sub(taken.len());
        self.dropped = self.dropped.saturating_add(lost as u64);
        self.written = self.written.saturating_add(bytes.len() as u64);
        self.remember(bytes);
        taken.len()
    }

    /// Adds `bytes` to the replay tail, forgetting the oldest.
    fn remember(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.history_capacity);
        let newest = bytes
            .get(bytes.len().saturating_sub(keep)..)
            .unwrap_or_default();
        let overflow =
            (self.history.len().saturating_add(newest.len())).saturating_sub(self.history_capacity);
        self.history.drain(..overflow.min(self.history.len()));
        self.history.extend(newest);
    }

    /// Bytes waiting for the port.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no byte waits for the port.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The most bytes that wait for the port.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most bytes the replay tail keeps.
    pub fn history_capacity(&self) -> usize {
        self.history_capacity
    }

    /// Bytes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes written in all, dropped ones included.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The replay tail, oldest byte first: the newest bytes written,
    /// whether or not they were sent or dropped.
    pub fn history(&self) -> Vec<u8> {
        self.history.iter().copied().collect()
    }

    /// The pending byte at `index` (0 = oldest).
    pub(crate) fn peek(&self, index: usize) -> Option<u8> {
        self.pending.get(index).copied()
    }

    /// Removes the oldest `count` pending bytes, appending them to `out`.
    pub(crate) fn take_into(&mut self, count: usize, out: &mut Vec<u8>) {
        let count = count.min(self.pending.len());
        out.extend(self.pending.drain(..count));
    }

    /// Removes the oldest `count` pending bytes.
    pub(crate) fn discard(&mut self, count: usize) {
        let count = count.min(self.pending.len());
        self.pending.drain(..count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_past_capacity_are_dropped_and_counted() {
        let mut ring = OutputRing::new(8, 64);
        assert_eq!(ring.write(b"hello"), 5);
        assert_eq!(ring.write(b"world!"), 3);
        assert_eq!(ring.pending_len(), 8);
        assert_eq!(ring.dropped(), 3);
        assert_eq!(ring.written(), 11);
        assert_eq!(ring.write(b"x"), 0);
        assert_eq!(ring.dropped(), 4);
        // The queue keeps the oldest bytes; the tail has them all.
        let mut out = Vec::new();
        ring.take_into(100, &mut out);
        assert_eq!(out, b"hellowor");
        assert_eq!(ring.history(), b"helloworld!x");
        // Room again once drained.
        assert_eq!(ring.write(b"ok"), 2);
    }

    #[test]
    fn history_keeps_the_newest_bytes_after_draining() {
        let mut ring = OutputRing::new(4, 10);
        for chunk in [&b"0123"[..], b"4567", b"89ab"] {
            ring.write(chunk);
            ring.discard(4);
        }
        assert!(ring.is_empty());
        assert_eq!(
            ring.history(),
            b"2345678".iter().chain(b"9ab").copied().collect::<Vec<_>>()
        );
        // A write longer than the tail keeps its own newest bytes.
        ring.write(b"abcdefghijklmnop");
        assert_eq!(ring.history(), b"ghijklmnop");
    }

    #[test]
    fn zero_sized_ring_drops_everything_without_panicking() {
        let mut ring = OutputRing::new(0, 0);
        assert_eq!(ring.write(b"abc"), 0);
        assert_eq!(ring.dropped(), 3);
        assert!(ring.history().is_empty());
    }
}
