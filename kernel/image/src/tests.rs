//! The streaming path end to end: a Linux kernel and a 64 MiB initrd from a
//! config source that makes their bytes up as they are read, into a guest
//! memory that checks them as they arrive, with the heap the load uses
//! measured; and the errors of files that are missing, too large, shrink
//! or fail while loading.

use alloc::borrow::Cow;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use addr::GuestPhysAddr;

use super::GuestImages;
use config::files::ConfigFiles;
use config::{GuestConfig, GuestSource, ImageFormat, Position};
use loader::fixtures::BzImage;
use loader::layout::BOOT_INFO_ADDR;
use loader::{GuestMemory, Item, LoadError, ReadError, CHUNK_LEN};

const MIB: u64 = 1 << 20;
const INITRD_LEN: u64 = 64 * MIB;
const RAM: u64 = 128 * MIB;
/// Guest RAM below this is kept to be read back; above it, bytes are
/// checked as they are written and dropped.
const KEPT: u64 = 32 * MIB;

/// Counts this thread's heap use, so that a test can measure the peak of
/// what it allocates while other tests run on other threads.
struct Counting;

std::thread_local! {
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(grow: isize) {
    let _ = IN_USE.try_with(|used| {
        let now = used.get().saturating_add_signed(grow);
        used.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed to `System` unchanged; the counting only
// touches const-initialised thread-locals without destructors, which
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How much more than now this thread has in use at its peak, from now
/// until `f` returns.
fn peak_heap_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = IN_USE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    (r, PEAK.with(Cell::get) - start)
}

/// The initrd's byte at `offset`: varies within and across chunks, so a
/// chunk copied to the wrong place or twice shows.
fn initrd_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (offset >> 16) as u8
}

/// A config source with a real bzImage and an initrd it computes as it
/// is read. `end` cuts the initrd short after sizing (it shrinks);
/// `fail_at` makes reads from there fail.
struct Files {
    kernel: Vec<u8>,
    initrd_len: u64,
    end: u64,
    fail_at: Option<u64>,
    reads: usize,
    largest_read: usize,
}

impl Files {
    fn new() -> Self {
        Self {
            kernel: BzImage::default().build(),
            initrd_len: INITRD_LEN,
            end: INITRD_LEN,
            fail_at: None,
            reads: 0,
            largest_read: 0,
        }
    }
}

impl ConfigFiles<'static> for Files {
    fn source(&self) -> &str {
        "the test files"
    }

    fn read(&mut self, _: &str, _: u64) -> Result<Option<Cow<'static, [u8]>>, String> {
        panic!("images are read in pieces, never whole");
    }

    fn size(&mut self, path: &str) -> Result<Option<u64>, String> {
        Ok(match path {
            "bzImage" => Some(self.kernel.len() as u64),
            "initrd" => Some(self.initrd_len),
            _ => None,
        })
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        self.reads += 1;
        self.largest_read = self.largest_read.max(buf.len());
        match path {
            "bzImage" => {
                let rest = self.kernel.get(offset as usize..).unwrap_or_default();
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            }
            "initrd" => {
                if self
                    .fail_at
                    .is_some_and(|at| offset + buf.len() as u64 > at)
                {
                    return Err("the test files: FAT: disk error at LBA 1234".to_string());
                }
                let n = self.end.saturating_sub(offset).min(buf.len() as u64) as usize;
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = initrd_byte(offset + i as u64);
                }
                Ok(n)
            }
            _ => Err(format!("no file {path}")),
        }
    }

    fn exists(&mut self, path: &str) -> bool {
        matches!(path, "bzImage" | "initrd")
    }
}

/// Guest RAM that keeps its low [`KEPT`] bytes and checks every byte
/// written above them against the initrd, which must lie there.
struct Memory {
    low: Vec<u8>,
    initrd_at: u64,
    checked: u64,
    largest_write: usize,
}

impl GuestMemory for Memory {
    fn size(&self) -> u64 {
        RAM
    }

    fn write(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), LoadError> {
        self.largest_write = self.largest_write.max(bytes.len());
        let at = gpa.as_u64();
        assert!(at + bytes.len() as u64 <= RAM, "write outside RAM at {gpa}");
        if at < KEPT {
            assert!(at + bytes.len() as u64 <= KEPT, "write across {KEPT:#x}");
            self.low[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
            return Ok(());
        }
        assert!(at >= self.initrd_at, "write at {gpa} below the initrd");
        for (i, &b) in bytes.iter().enumerate() {
            let offset = at - self.initrd_at + i as u64;
            assert_eq!(b, initrd_byte(offset), "initrd byte {offset:#x}");
        }
        self.checked += bytes.len() as u64;
        Ok(())
    }
}

fn config(initrd: Option<&str>) -> GuestConfig {
    let at = Position { line: 1, column: 1 };
    GuestConfig {
        name: "big".into(),
        kernel: "bzImage".into(),
        initrd: initrd.map(String::from),
        cmdline: "console=ttyS0".into(),
        memory: RAM,
        vcpus: 1,
        cpus: None,
        format: None,
        source: GuestSource {
            table: at,
            name: at,
            kernel: at,
            initrd: initrd.map(|_| at),
            memory: at,
        },
    }
}

/// Where the Linux loader puts the initrd: the top of RAM, page aligned.
const INITRD_AT: u64 = (RAM - INITRD_LEN) & !0xFFF;

#[test]
fn a_kernel_and_a_64_mib_initrd_stream_into_guest_ram_with_bounded_heap() {
    let mut files = Files::new();
    let kernel = files.kernel.clone();
    let bz = BzImage::default();
    let config = config(Some("initrd"));
    let mut mem = Memory {
        low: vec![0; KEPT as usize],
        initrd_at: INITRD_AT,
        checked: 0,
        largest_write: 0,
    };
    let (loaded, peak) = peak_heap_of(|| {
        let images = GuestImages::open(&mut files, &config).unwrap();
        assert_eq!(images.format(), ImageFormat::Linux);
        images.load(&mut mem, &PLATFORM)
    });
    let loaded = loaded.unwrap();

    // Every initrd byte arrived, checked, where boot_params says it is.
    assert_eq!(mem.checked, INITRD_LEN);
    let initrd = loaded.placements.find(Item::Initrd).unwrap();
    assert_eq!((initrd.start.as_u64(), initrd.len), (INITRD_AT, INITRD_LEN));
    let bp = BOOT_INFO_ADDR.as_u64() as usize;
    let field = |at: usize| u32::from_le_bytes(mem.low[bp + at..bp + at + 4].try_into().unwrap());
    assert_eq!(u64::from(field(0x218)), INITRD_AT);
    assert_eq!(u64::from(field(0x21C)), INITRD_LEN);
    // The protected-mode kernel is at its load address.
    let payload = &kernel[bz.setup_len()..];
    let at = bz.pref_address as usize;
    assert_eq!(&mem.low[at..at + payload.len()], payload);

    // Streamed: no read or write was larger than a chunk, and the heap
    // grew by about one chunk, not by the 64 MiB of the initrd.
    assert!(files.largest_read <= CHUNK_LEN, "{}", files.largest_read);
    assert!(mem.largest_write <= CHUNK_LEN, "{}", mem.largest_write);
    assert!(files.reads >= (INITRD_LEN / CHUNK_LEN as u64) as usize);
    assert!(peak <= 2 * CHUNK_LEN, "the load used {peak} bytes of heap");
}

fn load_error(files: &mut Files) -> (LoadError, Option<String>) {
    let config = config(Some("initrd"));
    let images = GuestImages::open(files, &config).unwrap();
    let mut mem = Memory {
        low: vec![0; KEPT as usize],
        initrd_at: INITRD_AT,
        checked: 0,
        largest_write: 0,
    };
    let e = images.load(&mut mem, &PLATFORM).unwrap_err();
    (e, images.failure())
}

#[test]
fn an_initrd_that_shrinks_while_it_loads_is_an_error() {
    let mut files = Files::new();
    files.end = 3 * MIB + 100;
    let (e, failure) = load_error(&mut files);
    assert_eq!(
        e,
        LoadError::Read {
            item: Item::Initrd,
            offset: 3 * MIB,
            len: CHUNK_LEN as u64,
            error: ReadError::Ended { len: 3 * MIB + 100 },
        }
    );
    assert_eq!(
        e.to_string(),
        "initrd: the file ended at 0x300064 bytes, before the 0x10000 bytes at offset 0x300000 \
         could be read; it changed while it was loading"
    );
    assert_eq!(failure, None);
}

#[test]
fn an_initrd_read_that_fails_midway_is_an_error_with_its_cause() {
    let mut files = Files::new();
    files.fail_at = Some(5 * MIB);
    let (e, failure) = load_error(&mut files);
    assert_eq!(
        e.to_string(),
        "initrd: reading 0x10000 bytes at offset 0x500000 of its file failed"
    );
    assert_eq!(
        failure.as_deref(),
        Some("the test files: FAT: disk error at LBA 1234")
    );
}

#[test]
fn missing_too_large_and_unknown_images_are_refused_before_loading() {
    let error = |files: &mut Files, initrd: Option<&str>| {
        GuestImages::open(files, &config(initrd)).err().unwrap()
    };
    let mut files = Files::new();
    assert_eq!(
        error(&mut files, Some("missing")),
        "initrd \"missing\" is not in the test files"
    );
    files.initrd_len = RAM + 1;
    assert_eq!(
        error(&mut files, Some("initrd")),
        "the test files: initrd \"initrd\" is 134217729 bytes, more than the guest's \
         134217728 bytes of RAM"
    );
    files.kernel = vec![0x90; 0x4000];
    assert_eq!(
        error(&mut files, None),
        "kernel \"bzImage\" is neither a Linux bzImage nor a Multiboot image; for a raw \
         image set format = \"flat\" with load_address, entry and mode"
    );
    assert_eq!(files.reads, 1, "detection reads the first bytes once");
}

/// The platform the tests describe to Linux guests.
const PLATFORM: loader::PcPlatform = loader::PcPlatform {
    cpus: 1,
    lapic_addr: 0xFEE0_0000,
    ioapic_id: 0,
    ioapic_addr: 0xFEC0_0000,
    pm1a_evt: 0x600,
    pm1a_cnt: 0x604,
    pm_tmr: 0x608,
    reset_port: 0xCF9,
    reset_value: 6,
    sci_irq: 9,
    s5_sleep_type: 5,
};
