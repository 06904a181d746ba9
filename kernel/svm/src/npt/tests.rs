//! Host tests of the nested page tables over heap frames.

use std::boxed::Box;
use std::collections::BTreeMap;
use std::string::ToString;
use std::vec::Vec;

use super::*;

/// Made-up physical addresses of the heap tables start here, far above
/// the guest memory the tests map, so a table taken for a guest page (or
/// the reverse) shows.
const FRAME_BASE: u64 = 0x8_0000_0000_0000;

/// What a new heap table is filled with: every entry present, large and
/// pointing somewhere, so a table the tree forgets to clear shows up as
/// stray translations.
const GARBAGE: NptEntry = NptEntry(0x800F_FFFF_FFFF_F0FF);

/// Table frames over the heap, counting what is out, with an optional cap
/// on how many may be out at once and an optional bad frame to hand out
/// next.
#[derive(Default)]
struct HeapFrames {
    slots: Vec<Option<Box<NptTable>>>,
    outstanding: usize,
    allocated: usize,
    freed: usize,
    limit: Option<usize>,
    bad_next: Option<HostPhysAddr>,
    bad_out: Option<HostPhysAddr>,
}

impl HeapFrames {
    fn limited(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    fn slot(&self, at: HostPhysAddr) -> usize {
        let a = at.as_u64();
        assert!(
            a >= FRAME_BASE && at.is_aligned(PAGE_SIZE),
            "{at} is not a table frame"
        );
        usize::try_from((a - FRAME_BASE) / PAGE_SIZE).unwrap()
    }
}

impl NptFrames for HeapFrames {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        if let Some(bad) = self.bad_next.take() {
            self.bad_out = Some(bad);
            return Some(bad);
        }
        if self.limit.is_some_and(|limit| self.outstanding >= limit) {
            return None;
        }
        let mut table = Box::new(NptTable::new());
        table.entries = [GARBAGE; ENTRIES];
        self.slots.push(Some(table));
        self.outstanding += 1;
        self.allocated += 1;
        Some(HostPhysAddr::new(
            FRAME_BASE + (self.slots.len() as u64 - 1) * PAGE_SIZE,
        ))
    }

    fn free_table(&mut self, at: HostPhysAddr) {
        if self.bad_out == Some(at) {
            self.bad_out = None;
            return;
        }
        let slot = self.slot(at);
        assert!(
            self.slots.get_mut(slot).and_then(Option::take).is_some(),
            "{at} freed twice or never allocated"
        );
        self.outstanding -= 1;
        self.freed += 1;
    }

    fn table(&mut self, at: HostPhysAddr) -> &mut NptTable {
        let slot = self.slot(at);
        self.slots
            .get_mut(slot)
            .and_then(|t| t.as_deref_mut())
            .unwrap_or_else(|| panic!("table {at} used while not allocated"))
    }
}

/// The host address and page size `gpa` translates to.
fn tr(npt: &Npt, frames: &mut HeapFrames, gpa: u64) -> Option<(u64, PageSize)> {
    npt.lookup(frames, GuestPhysAddr::new(gpa))
        .map(|t| (t.hpa.as_u64(), t.page_size))
}

fn map(
    npt: &mut Npt,
    frames: &mut HeapFrames,
    gpa: u64,
    hpa: u64,
    len: u64,
) -> Result<(), NptError> {
    npt.map(frames, GuestPhysAddr::new(gpa), HostPhysAddr::new(hpa), len)
}

/// Walks the whole tree the way the processor would and checks every
/// entry against the long-mode formats: every entry present is P, R/W and
/// U/S with PWT, PCD, NX and the accessed and dirty bits clear; PS only in
/// a PDPE or PDE that maps a page; no address bits below a large page's
/// size (so its PAT bit, 12, is clear too); no table but the root empty.
/// Returns the number of tables.
fn check_tree(npt: &Npt, frames: &mut HeapFrames) -> usize {
    fn walk(frames: &mut HeapFrames, table: HostPhysAddr, level: u8, root: bool) -> usize {
        let entries = *frames.table(table).entries();
        assert!(
            root || entries.iter().any(|e| e.is_present()),
            "empty table {table} left linked at level {level}"
        );
        let mut tables = 1;
        for (i, e) in entries.iter().enumerate() {
            if !e.is_present() {
                assert_eq!(e.bits(), 0, "level {level} entry {i} not cleared");
                continue;
            }
            let flags = e.bits() & !ADDR_MASK;
            let leaf = level == PT || e.is_large();
            if !leaf {
                assert_eq!(flags, PRESENT | WRITABLE | USER, "level {level} entry {i}");
                tables += walk(frames, e.addr(), level - 1, false);
                continue;
            }
            assert!(level != PML4, "PS set in a PML4E");
            let size = entry_span(level);
            assert_eq!(
                e.bits() & ADDR_MASK & (size - 1),
                0,
                "reserved address bits"
            );
            let ps = if level == PT { 0 } else { PAGE_SIZE_BIT };
            assert_eq!(
                flags,
                PRESENT | WRITABLE | USER | ps,
                "level {level} entry {i}"
            );
            assert_eq!(e.bits() & (NO_EXECUTE | PWT | PCD | ACCESSED | DIRTY), 0);
        }
        tables
    }
    let tables = walk(frames, npt.root(), PML4, true);
    assert_eq!(tables, npt.table_frames());
    assert_eq!(tables, frames.outstanding);
    tables
}

/// Checks the tree, destroys it and checks every table frame came back.
fn finish(npt: Npt, frames: &mut HeapFrames) {
    check_tree(&npt, frames);
    npt.destroy(frames);
    assert_eq!(frames.outstanding, 0);
    assert_eq!(frames.freed, frames.allocated);
}

#[test]
fn a_new_tree_is_one_cleared_root_and_ncr3_points_at_it() {
    let mut frames = HeapFrames::default();
    let npt = Npt::new(&mut frames, true).unwrap();
    assert_eq!(npt.table_frames(), 1);
    assert_eq!(npt.root(), HostPhysAddr::new(FRAME_BASE));
    // PWT and PCD clear: the PML4 is read write-back.
    assert_eq!(npt.ncr3(), FRAME_BASE);
    assert!(frames.table(npt.root()).is_empty());
    assert_eq!(tr(&npt, &mut frames, 0), None);
    finish(npt, &mut frames);
}

/// 6 MiB + 12 KiB starting one page below a 2 MiB boundary: one 4 KiB
/// page, three 2 MiB pages and two 4 KiB pages where the host address
/// allows, all 4 KiB pages where it does not.
#[test]
fn ragged_range_maps_every_page_with_the_largest_page_that_fits() {
    const GPA: u64 = SIZE_2M - PAGE_SIZE;
    const LEN: u64 = 3 * SIZE_2M + 3 * PAGE_SIZE;
    // (gigabyte pages, host start, expected tables, 2 MiB pages used)
    let cases = [
        // PML4 + PDPT + PD + PTs under PD entries 0 and 4.
        (false, 0x1_0000_0000 + GPA, 5, true),
        (true, 0x1_0000_0000 + GPA, 5, true),
        // Host address one page off the guest's 2 MiB phase: PTs under
        // PD entries 0 to 4.
        (true, 0x1_0000_0000 + GPA + PAGE_SIZE, 8, false),
    ];
    for (gig, hpa, tables, large) in cases {
        let mut frames = HeapFrames::default();
        let mut npt = Npt::new(&mut frames, gig).unwrap();
        map(&mut npt, &mut frames, GPA, hpa, LEN).unwrap();
        assert_eq!(npt.table_frames(), tables, "hpa {hpa:#x}");
        for gpa in (GPA..GPA + LEN).step_by(PAGE_SIZE as usize) {
            let in_2m = (SIZE_2M..4 * SIZE_2M).contains(&gpa);
            let size = if large && in_2m {
                PageSize::Size2M
            } else {
                PageSize::Size4K
            };
            assert_eq!(
                tr(&npt, &mut frames, gpa + 0x123),
                Some((hpa + (gpa - GPA) + 0x123, size)),
                "gpa {gpa:#x}"
            );
            assert_eq!(
                npt.translate(&mut frames, GuestPhysAddr::new(gpa)),
                Some(HostPhysAddr::new(hpa + (gpa - GPA)))
            );
        }
        assert_eq!(tr(&npt, &mut frames, GPA - PAGE_SIZE), None);
        assert_eq!(tr(&npt, &mut frames, GPA + LEN), None);
        finish(npt, &mut frames);
    }
}

#[test]
fn gigabyte_pages_only_where_the_cpu_has_them() {
    let host = 0x40_0000_0000;
    // 2 GiB + 2 MiB at 1 GiB: two 1 GiB pages and one 2 MiB page.
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, true).unwrap();
    map(&mut npt, &mut frames, SIZE_1G, host, 2 * SIZE_1G + SIZE_2M).unwrap();
    // PML4, PDPT, one PD for the last 2 MiB.
    assert_eq!(npt.table_frames(), 3);
    assert_eq!(
        tr(&npt, &mut frames, SIZE_1G + 5),
        Some((host + 5, PageSize::Size1G))
    );
    assert_eq!(
        tr(&npt, &mut frames, 3 * SIZE_1G - 1),
        Some((host + 2 * SIZE_1G - 1, PageSize::Size1G))
    );
    assert_eq!(
        tr(&npt, &mut frames, 3 * SIZE_1G),
        Some((host + 2 * SIZE_1G, PageSize::Size2M))
    );
    finish(npt, &mut frames);

    // Without them: a PD per gigabyte, full of 2 MiB pages.
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, false).unwrap();
    map(&mut npt, &mut frames, SIZE_1G, host, 2 * SIZE_1G + SIZE_2M).unwrap();
    assert_eq!(npt.table_frames(), 2 + 3);
    assert_eq!(
        tr(&npt, &mut frames, SIZE_1G + 5),
        Some((host + 5, PageSize::Size2M))
    );
    finish(npt, &mut frames);

    // The host's gigabyte phase differs from the guest's: 2 MiB pages.
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, true).unwrap();
    map(&mut npt, &mut frames, 0, host + SIZE_2M, SIZE_1G).unwrap();
    assert_eq!(
        tr(&npt, &mut frames, 0),
        Some((host + SIZE_2M, PageSize::Size2M))
    );
    finish(npt, &mut frames);
}

#[test]
fn overlaps_are_refused_with_the_lowest_mapped_address() {
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, true).unwrap();
    map(&mut npt, &mut frames, 0x5000, 0x9000, PAGE_SIZE).unwrap();
    map(
        &mut npt,
        &mut frames,
        2 * SIZE_2M,
        SIZE_1G + SIZE_2M,
        SIZE_2M,
    )
    .unwrap();
    let tables = npt.table_frames();
    for (gpa, len, first) in [
        (0x5000, PAGE_SIZE, 0x5000),
        (0, SIZE_2M, 0x5000),
        (0x4000, 2 * PAGE_SIZE, 0x5000),
        (0, SIZE_1G, 0x5000),
        (0x6000, SIZE_1G, 2 * SIZE_2M),
        (2 * SIZE_2M + 0x3000, PAGE_SIZE, 2 * SIZE_2M + 0x3000),
        (SIZE_2M, 2 * SIZE_2M, 2 * SIZE_2M),
    ] {
        assert_eq!(
            map(&mut npt, &mut frames, gpa, 0, len),
            Err(NptError::Overlap {
                gpa: GuestPhysAddr::new(first)
            }),
            "gpa {gpa:#x} len {len:#x}"
        );
        assert_eq!(npt.table_frames(), tables);
    }
    // Nothing new got mapped by a refused call.
    for gpa in [0, 0x4000, 0x6000, 0x1F_F000, 3 * SIZE_2M, SIZE_1G] {
        assert_eq!(tr(&npt, &mut frames, gpa), None, "gpa {gpa:#x}");
    }
    // Right next to existing mappings is fine.
    map(&mut npt, &mut frames, 0x4000, 0x2000, PAGE_SIZE).unwrap();
    map(&mut npt, &mut frames, 0x6000, 0x3000, SIZE_2M - 0x6000).unwrap();
    map(&mut npt, &mut frames, 3 * SIZE_2M, 0, SIZE_2M).unwrap();
    finish(npt, &mut frames);
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, true).unwrap();
    let g = GuestPhysAddr::new;
    let h = HostPhysAddr::new;
    let cases = [
        (
            (0x1800, 0x1000, PAGE_SIZE),
            NptError::MisalignedGuestAddr(g(0x1800)),
        ),
        (
            (0x1000, 0x1001, PAGE_SIZE),
            NptError::MisalignedHostAddr(h(0x1001)),
        ),
        ((0x1000, 0x1000, 0x1800), NptError::MisalignedLength(0x1800)),
        ((0x1000, 0x1000, 0), NptError::EmptyRange),
        (
            (GUEST_PHYS_LIMIT - PAGE_SIZE, 0, 2 * PAGE_SIZE),
            NptError::GuestRangeTooHigh {
                gpa: g(GUEST_PHYS_LIMIT - PAGE_SIZE),
                len: 2 * PAGE_SIZE,
            },
        ),
        (
            (u64::MAX - 0xFFF, 0, PAGE_SIZE),
            NptError::GuestRangeTooHigh {
                gpa: g(u64::MAX - 0xFFF),
                len: PAGE_SIZE,
            },
        ),
        (
            (0, HOST_PHYS_LIMIT - PAGE_SIZE, 2 * PAGE_SIZE),
            NptError::HostRangeTooHigh {
                hpa: h(HOST_PHYS_LIMIT - PAGE_SIZE),
                len: 2 * PAGE_SIZE,
            },
        ),
        (
            (0, u64::MAX - 0xFFF, SIZE_1G),
            NptError::HostRangeTooHigh {
                hpa: h(u64::MAX - 0xFFF),
                len: SIZE_1G,
            },
        ),
    ];
    for ((gpa, hpa, len), err) in cases {
        assert_eq!(
            npt.map(&mut frames, g(gpa), h(hpa), len),
            Err(err),
            "gpa {gpa:#x} hpa {hpa:#x} len {len:#x}"
        );
        assert_eq!(npt.table_frames(), 1);
    }
    // The last page below both limits is fine.
    map(
        &mut npt,
        &mut frames,
        GUEST_PHYS_LIMIT - PAGE_SIZE,
        HOST_PHYS_LIMIT - PAGE_SIZE,
        PAGE_SIZE,
    )
    .unwrap();
    assert_eq!(
        tr(&npt, &mut frames, GUEST_PHYS_LIMIT - 1),
        Some((HOST_PHYS_LIMIT - 1, PageSize::Size4K))
    );
    assert_eq!(tr(&npt, &mut frames, GUEST_PHYS_LIMIT), None);
    finish(npt, &mut frames);
}

/// Running out of frames at every possible point leaves the tree as it
/// was and every frame of the failed call given back.
#[test]
fn running_out_of_frames_undoes_the_partial_map() {
    const GPA: u64 = SIZE_2M - PAGE_SIZE;
    const LEN: u64 = 3 * SIZE_2M + 3 * PAGE_SIZE;
    for spare in 0..3 {
        // An existing 4 KiB page at 1 GiB: PML4, PDPT, PD, PT.
        let mut frames = HeapFrames::limited(4 + spare);
        let mut npt = Npt::new(&mut frames, true).unwrap();
        map(&mut npt, &mut frames, SIZE_1G, 0x5000, PAGE_SIZE).unwrap();
        // The new range needs a PD and two PTs.
        assert_eq!(
            map(&mut npt, &mut frames, GPA, GPA, LEN),
            Err(NptError::OutOfFrames),
            "{spare} spare frames"
        );
        assert_eq!(npt.table_frames(), 4);
        assert_eq!(frames.allocated - frames.freed, 4);
        for gpa in (GPA..GPA + LEN).step_by(PAGE_SIZE as usize) {
            assert_eq!(tr(&npt, &mut frames, gpa), None, "gpa {gpa:#x}");
        }
        assert_eq!(
            tr(&npt, &mut frames, SIZE_1G),
            Some((0x5000, PageSize::Size4K))
        );
        check_tree(&npt, &mut frames);
        // With the frame it lacked, the same call succeeds.
        frames.limit = Some(7);
        map(&mut npt, &mut frames, GPA, GPA, LEN).unwrap();
        assert_eq!(npt.table_frames(), 7);
        finish(npt, &mut frames);
    }

    // Half way through 3 GiB of 4 KiB-misaligned memory (PTs only).
    let mut frames = HeapFrames::limited(700);
    let mut npt = Npt::new(&mut frames, true).unwrap();
    assert_eq!(
        map(&mut npt, &mut frames, 0, PAGE_SIZE, 3 * SIZE_1G),
        Err(NptError::OutOfFrames)
    );
    assert_eq!(npt.table_frames(), 1);
    assert_eq!(tr(&npt, &mut frames, 0), None);
    assert_eq!(frames.allocated, 700);
    finish(npt, &mut frames);

    // Not even a root.
    let mut frames = HeapFrames::limited(0);
    assert_eq!(
        Npt::new(&mut frames, true).unwrap_err(),
        NptError::OutOfFrames
    );
}

#[test]
fn a_bad_frame_from_the_allocator_is_given_back() {
    for bad in [0x1234, HOST_PHYS_LIMIT] {
        let bad = HostPhysAddr::new(bad);
        let mut frames = HeapFrames {
            bad_next: Some(bad),
            ..HeapFrames::default()
        };
        assert_eq!(
            Npt::new(&mut frames, true).unwrap_err(),
            NptError::BadTableFrame(bad)
        );
        assert_eq!(frames.bad_out, None, "{bad} not given back");

        // Mid-map: the PDPT is fine, the PD is not.
        let mut npt = Npt::new(&mut frames, true).unwrap();
        map(&mut npt, &mut frames, 0, 0, PAGE_SIZE).unwrap();
        frames.bad_next = Some(bad);
        assert_eq!(
            map(&mut npt, &mut frames, SIZE_1G, 0, PAGE_SIZE),
            Err(NptError::BadTableFrame(bad))
        );
        assert_eq!(frames.bad_out, None);
        assert_eq!(npt.table_frames(), 4);
        assert_eq!(tr(&npt, &mut frames, SIZE_1G), None);
        finish(npt, &mut frames);
    }
}

#[test]
fn destroy_gives_back_tables_and_nothing_else() {
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, true).unwrap();
    // Guest memory deliberately placed among made-up table addresses:
    // `free_table` would panic on any of it, since it is not a table.
    let host = FRAME_BASE + 0x100_0000_0000;
    map(
        &mut npt,
        &mut frames,
        0,
        host,
        2 * SIZE_1G + SIZE_2M + PAGE_SIZE,
    )
    .unwrap();
    map(&mut npt, &mut frames, 0x80_0000_0000, host, PAGE_SIZE).unwrap();
    // PML4; PDPT, PD, PT for the ragged end; PDPT, PD, PT at 512 GiB.
    assert_eq!(npt.table_frames(), 1 + 3 + 3);
    finish(npt, &mut frames);
    assert_eq!(frames.allocated, 7);
}

#[test]
fn accessed_and_dirty_bits_set_by_the_cpu_do_not_change_the_walk() {
    let mut frames = HeapFrames::default();
    let mut npt = Npt::new(&mut frames, true).unwrap();
    map(&mut npt, &mut frames, SIZE_2M, 0x7000, PAGE_SIZE).unwrap();
    map(&mut npt, &mut frames, 2 * SIZE_2M, 4 * SIZE_2M, SIZE_2M).unwrap();
    // What a guest's accesses leave behind in every present entry.
    let mut pending = vec![(npt.root(), PML4)];
    while let Some((table, level)) = pending.pop() {
        let t = frames.table(table);
        for i in 0..ENTRIES {
            let e = t.get(i);
            if e.is_present() {
                t.set(i, NptEntry::from_bits(e.bits() | ACCESSED | DIRTY));
                if level != PT && !e.is_large() {
                    pending.push((e.addr(), level - 1));
                }
            }
        }
    }
    assert_eq!(
        tr(&npt, &mut frames, SIZE_2M + 8),
        Some((0x7008, PageSize::Size4K))
    );
    assert_eq!(
        tr(&npt, &mut frames, 2 * SIZE_2M + 8),
        Some((4 * SIZE_2M + 8, PageSize::Size2M))
    );
    // Still an overlap, and the tree still comes apart cleanly.
    assert_eq!(
        map(&mut npt, &mut frames, SIZE_2M, 0, PAGE_SIZE),
        Err(NptError::Overlap {
            gpa: GuestPhysAddr::new(SIZE_2M)
        })
    );
    npt.destroy(&mut frames);
    assert_eq!(frames.outstanding, 0);
}

#[test]
fn errors_say_what_was_wrong() {
    let e = NptError::Overlap {
        gpa: GuestPhysAddr::new(0x20_0000),
    };
    assert_eq!(
        e.to_string(),
        "NPT: guest-physical address 0x200000 is already mapped; \
         the new range overlaps an existing one"
    );
    let e = NptError::GuestRangeTooHigh {
        gpa: GuestPhysAddr::new(GUEST_PHYS_LIMIT),
        len: PAGE_SIZE,
    };
    assert!(e.to_string().contains("0x1000000000000 + 0x1000"), "{e}");
    assert_eq!(
        NptError::OutOfFrames.to_string(),
        "NPT: out of memory for page-table frames; nothing was mapped"
    );
}

/// A small deterministic generator (xorshift64*), so the model test needs
/// no extra crate and fails the same way every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An address or length built from a unit (4 KiB, 2 MiB, 1 GiB), so
    /// large pages come up often, plus a few pages of raggedness.
    fn amount(&mut self, max_units: u64) -> u64 {
        let unit = [PAGE_SIZE, SIZE_2M, SIZE_1G][self.below(3) as usize];
        unit * self.below(max_units) + self.below(3) * PAGE_SIZE
    }
}

/// A mapped range in the model: guest `[start, end)` to host `hpa`.
#[derive(Clone, Copy, Debug)]
struct Range {
    start: u64,
    end: u64,
    hpa: u64,
}

/// What the model says `gpa` translates to, with the largest page the
/// rules allow there.
fn model_translate(model: &BTreeMap<u64, Range>, gig: bool, gpa: u64) -> Option<(u64, PageSize)> {
    let (_, r) = model.range(..=gpa).next_back()?;
    if gpa >= r.end {
        return None;
    }
    let mut page_size = PageSize::Size4K;
    for (size, allowed) in [(PageSize::Size2M, true), (PageSize::Size1G, gig)] {
        let block = gpa & !(size.bytes() - 1);
        let fits = block >= r.start && block + size.bytes() <= r.end;
        if allowed && fits && (r.hpa + (block - r.start)).is_multiple_of(size.bytes()) {
            page_size = size;
        }
    }
    Some((r.hpa + (gpa - r.start), page_size))
}

/// Random map requests, overlapping or not, sometimes with too few
/// frames: the tree refuses exactly the overlapping ones, undoes the ones
/// that run out of frames, and translates like the model.
#[test]
fn translation_agrees_with_a_simple_model() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..96 {
        let gig = rng.below(2) == 0;
        let limit = (rng.below(3) == 0).then(|| 3 + rng.below(400) as usize);
        let mut frames = HeapFrames {
            limit,
            ..HeapFrames::default()
        };
        let mut npt = Npt::new(&mut frames, gig).unwrap();
        let mut model: BTreeMap<u64, Range> = BTreeMap::new();
        for _ in 0..1 + rng.below(11) {
            let gpa = rng.amount(12);
            let hpa = rng.amount(12) + 0x100_0000_0000;
            let len = rng.amount(3);
            let result = map(&mut npt, &mut frames, gpa, hpa, len);
            let first = model
                .values()
                .filter(|r| r.start < gpa + len && gpa < r.end)
                .map(|r| r.start.max(gpa))
                .min();
            let expected = if len == 0 {
                Err(NptError::EmptyRange)
            } else if let Some(first) = first {
                Err(NptError::Overlap {
                    gpa: GuestPhysAddr::new(first),
                })
            } else {
                Ok(())
            };
            if expected.is_ok() && result == Err(NptError::OutOfFrames) {
                assert!(limit.is_some(), "case {case}");
            } else {
                assert_eq!(result, expected, "case {case}");
            }
            if result.is_ok() {
                model.insert(
                    gpa,
                    Range {
                        start: gpa,
                        end: gpa + len,
                        hpa,
                    },
                );
            }
            check_tree(&npt, &mut frames);
        }
        let mut points: Vec<u64> = (0..64).map(|_| rng.below(14 * SIZE_1G)).collect();
        for r in model.values() {
            let step = ((r.end - r.start) / 16).max(PAGE_SIZE);
            points.extend((r.start..r.end).step_by(step as usize));
            points.extend([r.start.saturating_sub(1), r.end - 1, r.end]);
        }
        for gpa in points {
            assert_eq!(
                tr(&npt, &mut frames, gpa),
                model_translate(&model, gig, gpa),
                "case {case} gpa {gpa:#x}"
            );
        }
        finish(npt, &mut frames);
    }
}
