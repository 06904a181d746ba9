//! Bytes a guest wrote to COM1's transmit register, taken on the exit
//! path without the VM's device lock.
//!
//! A guest printing on COM1 exits once a byte (OUT to 0x3F8). Through the
//! device bus that exit cost about 2000 host instructions: the exit
//! decoded, the device lock, the bus lookup, the 16550 model, the console
//! line, the output forwarded under the lock again. Yet while the UART
//! transmits plainly (LCR.DLAB clear, no loopback, no THR-empty interrupt
//! enabled: how a kernel's console and every polling driver send), such a
//! write does nothing the guest can see but send its byte. So a backend
//! may push the byte here instead and resume the guest at once; the run
//! hands the bytes to the UART model in order the next time anything
//! locks the VM's devices ([`ComOut::drain`]), which is before any other
//! access of the guest's to them, so the model sees every byte in its
//! place.
//!
//! [`ComOut::set_open`] says whether the UART transmits plainly, as of
//! the last unlock of the devices; a write that races with a vCPU
//! changing the UART's mode was concurrent with it, and landing after it
//! is one order the hardware could have given them too.
//!
//! The queue is lock-free: several vCPUs of a guest push (each claims a
//! slot by compare-and-swap, in the order their writes took place), and
//! the one holder of the device lock drains. Nothing on the push path
//! waits for another CPU.

use core::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

/// [`ComOut::lsr`]'s mark of a value that may be given: the value is in
/// bits 7:0.
const LSR_VALID: u16 = 0x100;

/// How many bytes wait at most; a write that finds the queue full goes
/// through the device bus, which drains it first.
pub const COM_OUT_CAPACITY: usize = 256;

/// A slot holding a byte: the byte in bits 7:0 with this bit set.
const FULL: u16 = 0x100;

/// The queue of a VM's COM1 transmit-register writes.
#[derive(Debug)]
pub struct ComOut {
    /// Whether a write may be queued (the UART transmits plainly).
    open: AtomicBool,
    /// Slots claimed so far (the next byte's position).
    head: AtomicUsize,
    /// Slots drained so far.
    tail: AtomicUsize,
    slots: [AtomicU16; COM_OUT_CAPACITY],
    /// What a read of the UART's line status register returns while that
    /// read changes nothing, with [`LSR_VALID`]; 0 when a read must go
    /// through the device bus. A polling driver reads LSR before every
    /// byte it sends.
    lsr: AtomicU16,
}

impl Default for ComOut {
    fn default() -> Self {
        Self::new()
    }
}

impl ComOut {
    /// An empty queue, closed.
    pub const fn new() -> Self {
        Self {
            open: AtomicBool::new(false),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            slots: [const { AtomicU16::new(0) }; COM_OUT_CAPACITY],
            lsr: AtomicU16::new(0),
        }
    }

    /// Says what a read of LSR returns while it changes nothing (`None`:
    /// a read has an effect, such as clearing an overrun).
    pub fn set_lsr(&self, lsr: Option<u8>) {
        self.lsr.store(
            lsr.map_or(0, |v| LSR_VALID | u16::from(v)),
            Ordering::Release,
        );
    }

    /// What a read of LSR may be answered with on the exit path, if
    /// anything (as of the devices' last unlock).
    #[inline]
    pub fn lsr(&self) -> Option<u8> {
        let v = self.lsr.load(Ordering::Acquire);
        (v & LSR_VALID != 0).then_some(v as u8)
    }

    /// Says whether the UART transmits plainly (so a write may be queued).
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
    }

    /// Queues `byte`, written to the transmit register; false when the
    /// UART does not transmit plainly or the queue is full, and the write
    /// must go through the device bus.
    #[inline]
    pub fn push(&self, byte: u8) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return false;
        }
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // The drainer empties a slot before it moves the tail past it,
            // so a slot behind a tail seen here is free.
            let tail = self.tail.load(Ordering::Acquire);
            if head.wrapping_sub(tail) >= COM_OUT_CAPACITY {
                return false;
            }
            match self.head.compare_exchange_weak(
                head,
                head.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        if let Some(slot) = self.slots.get(head % COM_OUT_CAPACITY) {
            slot.store(FULL | u16::from(byte), Ordering::Release);
        }
        true
    }

    /// Whether bytes wait (or are being written).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire) == self.tail.load(Ordering::Acquire)
    }

    /// Hands the waiting bytes, oldest first, to `out`, a chunk at a
    /// time. A slot claimed but not yet written ends the drain there; its
    /// byte and the ones after it go at the next. Only one caller may
    /// drain at a time: the holder of the VM's device lock.
    pub fn drain(&self, out: &mut dyn FnMut(&[u8])) {
        let mut chunk = [0u8; 64];
        let mut tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        while tail != head {
            let mut n = 0;
            while tail != head && n < chunk.len() {
                let Some(slot) = self.slots.get(tail % COM_OUT_CAPACITY) else {
                    break;
                };
                let value = slot.load(Ordering::Acquire);
                if value & FULL == 0 {
                    break;
                }
                slot.store(0, Ordering::Relaxed);
                if let Some(c) = chunk.get_mut(n) {
                    *c = value as u8;
                }
                n = n.wrapping_add(1);
                tail = tail.wrapping_add(1);
                self.tail.store(tail, Ordering::Release);
            }
            if let Some(bytes) = chunk.get(..n).filter(|b| !b.is_empty()) {
                out(bytes);
            }
            if n < chunk.len() {
                break;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    fn drained(q: &ComOut) -> Vec<u8> {
        let mut all = Vec::new();
        q.drain(&mut |b| all.extend_from_slice(b));
        all
    }

    #[test]
    fn the_line_status_is_given_only_while_a_read_changes_nothing() {
        let q = ComOut::new();
        assert_eq!(q.lsr(), None);
        q.set_lsr(Some(0x60));
        assert_eq!(q.lsr(), Some(0x60));
        q.set_lsr(Some(0));
        assert_eq!(q.lsr(), Some(0));
        q.set_lsr(None);
        assert_eq!(q.lsr(), None);
    }

    #[test]
    fn a_closed_queue_takes_nothing() {
        let q = ComOut::new();
        assert!(!q.push(b'a'));
        assert!(q.is_empty());
        q.set_open(true);
        assert!(q.push(b'a'));
        q.set_open(false);
        assert!(!q.push(b'b'));
        assert_eq!(drained(&q), b"a");
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let q = ComOut::new();
        q.set_open(true);
        let mut expect = Vec::new();
        for round in 0..5u32 {
            for i in 0..200u32 {
                let b = (round * 200 + i) as u8;
                assert!(q.push(b));
                expect.push(b);
            }
            assert!(!q.is_empty());
            assert_eq!(drained(&q), expect);
            expect.clear();
            assert!(q.is_empty());
        }
    }

    #[test]
    fn a_full_queue_refuses_until_drained() {
        let q = ComOut::new();
        q.set_open(true);
        for i in 0..COM_OUT_CAPACITY {
            assert!(q.push(i as u8));
        }
        assert!(!q.push(0));
        assert_eq!(drained(&q).len(), COM_OUT_CAPACITY);
        assert!(q.push(7));
        assert_eq!(drained(&q), [7]);
    }

    #[test]
    fn a_claimed_slot_not_yet_written_waits_for_the_next_drain() {
        let q = ComOut::new();
        q.set_open(true);
        assert!(q.push(1));
        // A writer between its claim and its store.
        q.head.fetch_add(1, Ordering::AcqRel);
        assert!(q.push(3));
        assert_eq!(drained(&q), [1]);
        assert!(!q.is_empty());
        q.slots[1].store(FULL | 2, Ordering::Release);
        assert_eq!(drained(&q), [2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn concurrent_writers_lose_nothing_and_keep_their_own_order() {
        let q = Arc::new(ComOut::new());
        q.set_open(true);
        let writers: Vec<_> = (0..3u8)
            .map(|w| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    let mut sent = 0u32;
                    while sent < 2000 {
                        // Writer w sends w*80 + (sent % 80): its own bytes
                        // in a recognisable order.
                        if q.push(w * 80 + (sent % 80) as u8) {
                            sent += 1;
                        } else {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 6000 {
            q.drain(&mut |b| got.extend_from_slice(b));
            std::thread::yield_now();
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(got.len(), 6000);
        for w in 0..3u8 {
            let mine: Vec<u8> = got.iter().copied().filter(|&b| b / 80 == w).collect();
            assert_eq!(mine.len(), 2000);
            for (i, &b) in mine.iter().enumerate() {
                assert_eq!(b, w * 80 + (i % 80) as u8);
            }
        }
    }
}
