//! The kernel heap: a first-fit linked-list allocator behind a spin lock,
//! usable as the kernel's `#[global_allocator]`.
//!
//! `mm` declares no global allocator itself; the kernel writes
//! `#[global_allocator] static HEAP: mm::heap::KernelHeap = KernelHeap::empty();`
//! and calls [`KernelHeap::init`] once it has memory for it. Until then, and
//! whenever the heap is exhausted, allocation returns null, which the
//! kernel's allocation-error handler reports.
//!
//! The lock is not interrupt-safe: interrupt and exception handlers must not
//! allocate, or one arriving while the heap is locked on the same CPU
//! deadlocks.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::mem::size_of;

use linked_list_allocator::LockedHeap;

/// The kernel heap. See the [module documentation](self).
pub struct KernelHeap(LockedHeap);

impl KernelHeap {
    /// The fewest bytes [`init`](Self::init) accepts: the allocator keeps a
    /// free-list node of up to three words inside the heap.
    pub const MIN_SIZE: usize = 3 * size_of::<usize>();

    /// A heap with no memory yet; every allocation fails until
    /// [`init`](Self::init).
    pub const fn empty() -> Self {
        Self(LockedHeap::empty())
    }

    /// Gives the heap the `size` bytes at `start`. A `size` below
    /// [`MIN_SIZE`](Self::MIN_SIZE) is ignored and the heap stays empty.
    ///
    /// # Safety
    ///
    /// `[start, start + size)` must be valid, writable memory that nothing
    /// else uses, for the rest of the program (`'static`). `init` must be
    /// called at most once per heap.
    pub unsafe fn init(&self, start: *mut u8, size: usize) {
        if size < Self::MIN_SIZE {
            return;
        }
        // SAFETY: the caller guarantees the memory is valid, exclusively the
        // heap's and 'static, and that this is the heap's only `init`;
        // `size` covers the allocator's node, checked above.
        unsafe { self.0.lock().init(start, size) };
    }

    /// Bytes managed, in use and free now.
    pub fn stats(&self) -> HeapStats {
        let heap = self.0.lock();
        HeapStats {
            size: heap.size(),
            used: heap.used(),
            free: heap.free(),
        }
    }
}

// SAFETY: `LockedHeap` implements `GlobalAlloc` soundly over memory given to
// it by `init`, whose contract makes that memory exclusively the heap's; we
// forward every call unchanged.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which
        // we pass on unchanged.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator with
        // `layout`, which is what `LockedHeap::dealloc` requires.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// Byte counts of the kernel heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the heap manages.
    pub size: usize,
    /// Bytes handed out (including alignment padding).
    pub used: usize,
    /// Bytes not handed out.
    pub free: usize,
}

impl fmt::Display for HeapStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heap: {} KiB, {} KiB used, {} KiB free",
            self.size >> 10,
            self.used >> 10,
            self.free >> 10
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap over `words` leaked 8-byte words, so the test never frees
    /// memory the heap may still point into.
    fn heap(words: usize) -> KernelHeap {
        let memory = vec![0u64; words].leak();
        let heap = KernelHeap::empty();
        // SAFETY: the leaked buffer is valid, writable, 'static and used by
        // nothing else; this is the heap's only `init`.
        unsafe { heap.init(memory.as_mut_ptr().cast(), words * 8) };
        heap
    }

    #[test]
    fn allocations_are_counted_and_returned() {
        let heap = heap(8192);
        assert_eq!(
            heap.stats(),
            HeapStats {
                size: 65536,
                used: 0,
                free: 65536
            }
        );
        let layout = Layout::from_size_align(1024, 64).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { heap.alloc(layout) };
        assert!(!ptr.is_null());
        assert_eq!(ptr as usize % 64, 0);
        let stats = heap.stats();
        assert!(stats.used >= 1024);
        assert_eq!(stats.used + stats.free, stats.size);
        // SAFETY: `ptr` came from this heap with `layout`.
        unsafe { heap.dealloc(ptr, layout) };
        assert_eq!(heap.stats().used, 0);
    }

    #[test]
    fn exhaustion_returns_null() {
        let heap = heap(512);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { heap.alloc(Layout::from_size_align(8192, 8).unwrap()) };
        assert!(ptr.is_null());
        assert_eq!(heap.stats().used, 0);
    }

    #[test]
    fn uninitialised_or_undersized_heap_allocates_nothing() {
        let layout = Layout::from_size_align(8, 8).unwrap();
        let empty = KernelHeap::empty();
        // SAFETY: the layout has a non-zero size.
        assert!(unsafe { empty.alloc(layout) }.is_null());
        let mut word = [0usize; 1];
        // SAFETY: the buffer is valid and writable; `init` ignores it because
        // it is below MIN_SIZE, so it is never used after this frame.
        unsafe { empty.init(word.as_mut_ptr().cast(), size_of::<usize>()) };
        assert_eq!(empty.stats().size, 0);
        // SAFETY: the layout has a non-zero size.
        assert!(unsafe { empty.alloc(layout) }.is_null());
    }

    #[test]
    fn stats_print_in_kib() {
        let stats = HeapStats {
            size: 8 << 20,
            used: 3 << 10,
            free: (8 << 20) - (3 << 10),
        };
        assert_eq!(
            stats.to_string(),
            "heap: 8192 KiB, 3 KiB used, 8189 KiB free"
        );
    }
}
