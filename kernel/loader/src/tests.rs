//! Cross-loader tests: format detection, and property tests that feed
//! random and randomly damaged images to every loader. Each load must end
//! in `Ok` or a `LoadError`, never a panic, never a write outside RAM
//! (the [`NullMemory`] fixture asserts that), and a successful load must
//! leave its placements inside RAM and apart, with the entry point in RAM.

use proptest::prelude::*;

use super::fixtures::{multiboot_elf32, multiboot_header, Aout, BzImage, NullMemory, Ram};
use super::layout::{MAX_GUEST_RAM, RAM_LIMIT};
use super::*;

#[test]
fn formats_are_detected_by_their_marks() {
    assert_eq!(
        detect_format(&BzImage::default().build()),
        Some(Format::Linux)
    );
    assert_eq!(
        detect_format(&multiboot_elf32(0b11)),
        Some(Format::Multiboot)
    );
    assert_eq!(
        detect_format(&Aout::default().build()),
        Some(Format::Multiboot)
    );
    assert_eq!(detect_format(&[0x90; 0x4000]), None);
    assert_eq!(detect_format(&[]), None);
    // A Multiboot magic with a bad checksum is no Multiboot image.
    let mut broken = multiboot_elf32(0b11);
    broken[0x1008] ^= 1;
    assert_eq!(detect_format(&broken), None);
    assert_eq!(Format::Multiboot.to_string(), "multiboot");
}

#[test]
fn slice_memory_refuses_writes_outside_ram() {
    let mut backing = vec![0u8; 0x2000];
    let mut mem = SliceMemory::new(&mut backing);
    mem.write(GuestPhysAddr::new(0x1FFE), &[1, 2]).unwrap();
    let e = mem.write(GuestPhysAddr::new(0x1FFF), &[1, 2]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "write of 0x2 bytes at 0x1fff is outside the guest's 8 KiB of RAM"
    );
    assert!(mem.write(GuestPhysAddr::new(u64::MAX), &[1]).is_err());
    assert!(mem.zero(GuestPhysAddr::new(0x1000), 0x1001).is_err());
    mem.zero(GuestPhysAddr::new(0x1000), 0x1000).unwrap();
    assert_eq!(mem.read(GuestPhysAddr::new(0x1FFE), 2), Some(&[0u8, 0][..]));
    assert_eq!(mem.read(GuestPhysAddr::new(0x1FFF), 2), None);
}

#[test]
fn slice_memory_keeps_ram_past_3_gib_at_4_gib() {
    // Lazily backed by the host: only the pages written are touched.
    let mut backing = vec![0u8; RAM_LIMIT as usize + 0x2000];
    let mut mem = SliceMemory::new(&mut backing);
    mem.write(GuestPhysAddr::new(1 << 32), &[0xA5; 4]).unwrap();
    mem.write(GuestPhysAddr::new(RAM_LIMIT - 2), &[7, 7])
        .unwrap();
    // The device window is not RAM, nor is a write that runs into it.
    for at in [RAM_LIMIT, 0xFEE0_0000, (1 << 32) - 1, RAM_LIMIT - 1] {
        assert!(
            mem.write(GuestPhysAddr::new(at), &[1, 2]).is_err(),
            "{at:#x}"
        );
        assert_eq!(mem.read(GuestPhysAddr::new(at), 2), None, "{at:#x}");
    }
    assert!(mem
        .zero(GuestPhysAddr::new(RAM_LIMIT - 0x1000), 0x2000)
        .is_err());
    assert!(mem
        .write(GuestPhysAddr::new((1 << 32) + 0x1FFF), &[1, 2])
        .is_err());
    assert_eq!(
        mem.read(GuestPhysAddr::new(1 << 32), 4),
        Some(&[0xA5; 4][..])
    );
    // In the backing, the high range follows the low one.
    assert_eq!(
        &backing[RAM_LIMIT as usize - 2..][..6],
        &[7, 7, 0xA5, 0xA5, 0xA5, 0xA5]
    );
}

/// A memory using the trait's default `zero`, to test it.
struct DefaultZero(Vec<u8>);

impl GuestMemory for DefaultZero {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn write(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), LoadError> {
        SliceMemory::new(&mut self.0).write(gpa, bytes)
    }
}

#[test]
fn the_default_zero_clears_in_chunks_and_checks_bounds() {
    let mut mem = DefaultZero(vec![0xFF; 0x3000]);
    mem.zero(GuestPhysAddr::new(0x10), 0x2FE0).unwrap();
    assert_eq!(mem.0[0xF], 0xFF);
    assert!(mem.0[0x10..0x2FF0].iter().all(|&b| b == 0));
    assert_eq!(mem.0[0x2FF0], 0xFF);
    assert!(matches!(
        mem.zero(GuestPhysAddr::new(0x10), 0x3000),
        Err(LoadError::OutsideRam { .. })
    ));
    assert!(mem.zero(GuestPhysAddr::new(u64::MAX), 2).is_err());
}

#[test]
fn every_loader_works_through_a_trait_object() {
    let mut ram = Ram::new(64 << 20);
    let mut mem = ram.memory();
    let mem: &mut dyn GuestMemory = &mut mem;
    let image = BzImage::default().build();
    load_linux(
        mem,
        &LinuxImage {
            kernel: &image,
            initrd: None,
            cmdline: "",
            platform: None,
        },
    )
    .unwrap();
}

/// Checks what every successful load promises.
fn check_loaded(loaded: &LoadedImage, ram: u64) {
    let layout = RamLayout::new(ram).unwrap();
    let placed = loaded.placements.as_slice();
    for (i, a) in placed.iter().enumerate() {
        assert!(layout.contains(a.start, a.len), "{a} outside RAM {layout}");
        for b in &placed[i + 1..] {
            let apart = a.len == 0
                || b.len == 0
                || a.end() <= b.start.as_u64()
                || b.end() <= a.start.as_u64();
            assert!(apart, "{a} overlaps {b}");
        }
    }
    let e = &loaded.entry;
    let linear = match e.mode {
        CpuMode::Real => e.segments.cs.base + e.rip,
        _ => e.rip,
    };
    assert!(
        layout.contains(GuestPhysAddr::new(linear), 1),
        "entry {linear:#x} outside RAM {layout}"
    );
    if e.mode != CpuMode::Real {
        assert!(e.gdtr.base.as_u64() + u64::from(e.gdtr.limit) < layout.low_len());
    }
    // The memory map's RAM is exactly the guest's RAM.
    let reported: u64 = loaded
        .memory_map
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Ram)
        .inspect(|r| {
            assert!(
                layout.contains(r.start, r.len),
                "{r:?} outside RAM {layout}"
            )
        })
        .map(|r| r.len)
        .sum();
    // All of it but what the legacy hole at 640 KiB..1 MiB covers.
    let hole = layout.low_len().min(0x10_0000).saturating_sub(0xA_0000);
    assert_eq!(reported, ram - hole);
    if ram > 0x10_0000 {
        assert_eq!(
            loaded.memory_map.regions().last().map(MemoryRegion::end),
            Some(layout.end())
        );
    }
}

fn ram_sizes() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(0x8_0000),
        Just(1 << 20),
        Just(2 << 20),
        Just(16 << 20),
        Just(64 << 20),
        Just(RAM_LIMIT),
        Just(RAM_LIMIT + 1),
        Just(4 << 30),
        Just(MAX_GUEST_RAM),
        Just(MAX_GUEST_RAM + 1),
        0..=RAM_LIMIT,
        RAM_LIMIT..=MAX_GUEST_RAM,
    ]
}

/// Up to `n` (position, byte) changes, positions as fractions of the
/// image.
fn damage(n: usize) -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..n)
}

fn apply(image: &mut [u8], damage: &[(prop::sample::Index, u8)], window: usize) {
    let window = window.min(image.len()).max(1);
    for (at, value) in damage {
        image[at.index(window)] = *value;
    }
}

fn no_panic_ok_or_err(result: Result<LoadedImage, LoadError>, ram: u64) {
    match result {
        Ok(loaded) => check_loaded(&loaded, ram),
        Err(e) => {
            assert!(
                !matches!(e, LoadError::OutsideRam { .. }),
                "unchecked write: {e}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_any_loader(
        bytes in prop::collection::vec(any::<u8>(), 0..0x3000),
        ram in ram_sizes(),
        cmdline in "[ -~]{0,32}",
        load in 0u64..(4 << 20),
        entry_offset in 0u64..0x4000,
        mode in 0u8..4,
    ) {
        let mut mem = NullMemory::new(ram);
        no_panic_ok_or_err(load_linux(&mut mem, &LinuxImage { kernel: &bytes, initrd: Some(&bytes), cmdline: &cmdline, platform: None }), ram);
        let module = [Module { data: &bytes, cmdline: &cmdline }];
        no_panic_ok_or_err(load_multiboot(&mut mem, &MultibootImage { kernel: &bytes, cmdline: &cmdline, modules: &module }), ram);
        let mode = match mode {
            0 => FlatMode::Real,
            1 => FlatMode::Protected,
            2 => FlatMode::LONG,
            _ => FlatMode::Long { identity_map_gib: u32::from(bytes.first().copied().unwrap_or(1)) },
        };
        let image = FlatImage {
            data: &bytes,
            load_address: GuestPhysAddr::new(load),
            entry: GuestPhysAddr::new(load + entry_offset),
            mode,
        };
        no_panic_ok_or_err(load_flat(&mut mem, &image), ram);
        let _ = detect_format(&bytes);
    }

    #[test]
    fn damaged_bzimages_never_panic(
        damage in damage(12),
        whole_file in any::<bool>(),
        ram in ram_sizes(),
        initrd_len in 0usize..0x2000,
        cmdline in "[ -~]{0,64}",
        truncate in any::<prop::sample::Index>(),
        do_truncate in any::<bool>(),
    ) {
        let mut image = BzImage::default().build();
        // Mostly the header, sometimes anywhere.
        apply(&mut image, &damage, if whole_file { usize::MAX } else { 0x270 });
        if do_truncate {
            let len = truncate.index(image.len() + 1);
            image.truncate(len);
        }
        let initrd = vec![0x5A; initrd_len];
        let mut mem = NullMemory::new(ram);
        no_panic_ok_or_err(load_linux(&mut mem, &LinuxImage { kernel: &image, initrd: Some(&initrd), cmdline: &cmdline, platform: None }), ram);
    }

    #[test]
    fn bzimage_header_fields_take_any_value(
        version in any::<u16>(),
        jump in any::<u8>(),
        setup_sects in any::<u8>(),
        loadflags in any::<u8>(),
        xloadflags in any::<u16>(),
        relocatable in any::<u8>(),
        kernel_alignment in any::<u32>(),
        pref_address in prop_oneof![any::<u64>(), 0u64..(1 << 32)],
        init_size in any::<u32>(),
        cmdline_size in any::<u32>(),
        initrd_addr_max in any::<u32>(),
        payload_len in 0usize..0x1000,
        ram in ram_sizes(),
        initrd_len in 0usize..0x2000,
    ) {
        let image = BzImage {
            setup_sects, header_jump: jump, version, loadflags, xloadflags, relocatable,
            kernel_alignment, pref_address, init_size, cmdline_size, initrd_addr_max, payload_len,
        }.build();
        let initrd = vec![0x5A; initrd_len];
        let mut mem = NullMemory::new(ram);
        no_panic_ok_or_err(load_linux(&mut mem, &LinuxImage { kernel: &image, initrd: Some(&initrd), cmdline: "console=ttyS0", platform: None }), ram);
    }

    #[test]
    fn damaged_multiboot_images_never_panic(
        damage in damage(12),
        whole_file in any::<bool>(),
        aout in any::<bool>(),
        ram in ram_sizes(),
        modules in prop::collection::vec((0usize..0x3000, "[ -~]{0,16}"), 0..4),
        truncate in any::<prop::sample::Index>(),
        do_truncate in any::<bool>(),
    ) {
        let mut image = if aout { Aout::default().build() } else { multiboot_elf32(0b11) };
        // The ELF and program headers, or the a.out header, or anywhere.
        let window = match (whole_file, aout) {
            (true, _) => usize::MAX,
            (false, true) => 0x60,
            (false, false) => 0xC0,
        };
        apply(&mut image, &damage, window);
        if do_truncate {
            let len = truncate.index(image.len() + 1);
            image.truncate(len);
        }
        let datas: Vec<Vec<u8>> = modules.iter().map(|(len, _)| vec![7; *len]).collect();
        let modules: Vec<Module<'_>> = datas.iter().zip(&modules).map(|(d, (_, s))| Module { data: d.as_slice(), cmdline: s }).collect();
        let mut mem = NullMemory::new(ram);
        no_panic_ok_or_err(load_multiboot(&mut mem, &MultibootImage { kernel: &image[..], cmdline: "x", modules: &modules }), ram);
    }

    #[test]
    fn multiboot_headers_with_any_fields_never_panic(
        flags in any::<u32>(),
        fields in prop::array::uniform5(prop_oneof![any::<u32>(), 0x10_0000u32..0x10_4000]),
        offset in 0usize..2100,
        file_len in 0usize..0x6000,
        ram in ram_sizes(),
    ) {
        let offset = offset * 4;
        let mut image = vec![0x33; file_len.max(offset + 32)];
        image[offset..offset + 12].copy_from_slice(&multiboot_header(flags));
        for (i, v) in fields.iter().enumerate() {
            image[offset + 12 + 4 * i..offset + 16 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let mut mem = NullMemory::new(ram);
        no_panic_ok_or_err(load_multiboot(&mut mem, &MultibootImage { kernel: &image, cmdline: "", modules: &[] }), ram);
    }

    #[test]
    fn elf_program_headers_with_any_fields_never_panic(
        class64 in any::<bool>(),
        phdrs in prop::collection::vec(
            (0u32..3, any::<u64>(), any::<u64>(), prop_oneof![any::<u64>(), 0x10_0000u64..0x20_0000], 0u64..0x3000, prop_oneof![any::<u64>(), 0u64..0x10_0000]),
            0..6),
        entry in prop_oneof![any::<u64>(), 0x10_0000u64..0x11_0000],
        ram in ram_sizes(),
    ) {
        let mut text = vec![0u8; 0x40];
        text[..12].copy_from_slice(&multiboot_header(0));
        let image = super::fixtures::Elf {
            class64,
            machine: if class64 { 62 } else { 3 },
            entry,
            phdrs: phdrs.iter().map(|&(p_type, offset, vaddr, paddr, filesz, memsz)| super::fixtures::Phdr {
                p_type, offset: offset % 0x2000, vaddr, paddr, filesz, memsz,
            }).collect(),
            contents: vec![(0x200, text)],
        }.build();
        let mut mem = NullMemory::new(ram);
        no_panic_ok_or_err(load_multiboot(&mut mem, &MultibootImage { kernel: &image, cmdline: "", modules: &[] }), ram);
    }
}
