use super::*;
use crate::block::MemDisk;
use crate::find_config_partition;
use crate::testutil::{
    entry_offset, part, seal_array, seal_header, write_gpt, FailingDisk, Layout,
};
use proptest::prelude::*;

const SECTORS: u64 = 4096;

fn layout() -> Layout {
    Layout::new(
        SECTORS,
        vec![
            part(0, EFI_SYSTEM_PARTITION, 2048, 2559, "EFI system"),
            part(3, CONFIG_PARTITION_TYPE, 2560, 3999, "FERROCFG"),
            part(5, BASIC_DATA_PARTITION, 40, 2047, "Gäste-λ 𝄞"),
            part(
                7,
                BASIC_DATA_PARTITION,
                4000,
                4062,
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
            ),
        ],
    )
}

fn read(disk: &[u8]) -> Result<Gpt, DiskError> {
    Gpt::read(&mut MemDisk::new(disk))
}

fn put(disk: &mut [u8], at: usize, bytes: &[u8]) {
    disk[at..at + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn crc32_is_the_zlib_one() {
    // The check value of CRC-32/ISO-HDLC, the CRC UEFI and zlib use.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn guids_are_mixed_endian_on_disk_and_print_in_registry_form() {
    assert_eq!(
        EFI_SYSTEM_PARTITION.to_bytes(),
        [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B
        ]
    );
    assert_eq!(
        EFI_SYSTEM_PARTITION.to_string(),
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    assert_eq!(
        BASIC_DATA_PARTITION.to_string(),
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
    );
    assert_eq!(
        CONFIG_PARTITION_TYPE.to_string(),
        "43512ee0-5019-4c06-ace2-4e748860ee00"
    );
    // The bytes in the shipped disk's entry (xtask::disk writes it with
    // the same `gpt` crate).
    assert_eq!(
        CONFIG_PARTITION_TYPE.to_bytes(),
        [
            0xe0, 0x2e, 0x51, 0x43, 0x19, 0x50, 0x06, 0x4c, 0xac, 0xe2, 0x4e, 0x74, 0x88, 0x60,
            0xee, 0x00
        ]
    );
    assert_eq!(
        Guid::from_bytes(CONFIG_PARTITION_TYPE.to_bytes()),
        CONFIG_PARTITION_TYPE
    );
    assert!(Guid::ZERO.is_zero());
    assert!(!CONFIG_PARTITION_TYPE.is_zero());
}

#[test]
fn a_valid_table_lists_its_partitions() {
    let l = layout();
    let disk = write_gpt(&l);
    let gpt = read(&disk).unwrap();
    assert_eq!(gpt.header_lba, 1);
    assert_eq!(gpt.primary_problem(), None);
    assert_eq!(gpt.disk_guid, l.disk_guid);
    assert_eq!(gpt.first_usable_lba, 34);
    assert_eq!(gpt.last_usable_lba, SECTORS - 34);
    let expected: Vec<Partition> = l
        .parts
        .iter()
        .map(|p| Partition {
            index: p.index,
            type_guid: p.type_guid,
            unique_guid: p.unique_guid,
            first_lba: p.first,
            last_lba: p.last,
            attributes: p.attributes,
            name: p.name.clone(),
        })
        .collect();
    assert_eq!(gpt.partitions, expected, "unused entries are skipped");
    // A name of all 36 units has no NUL; one with a pair of surrogates
    // decodes to the supplementary character.
    assert_eq!(
        gpt.partitions[3].name,
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    );
    assert_eq!(gpt.partitions[2].name, "Gäste-λ 𝄞");
    assert_eq!(gpt.partitions[1].sectors(), 1440);
}

#[test]
fn unpaired_surrogates_in_a_name_become_replacement_characters() {
    let l = layout();
    let mut disk = write_gpt(&l);
    let at = entry_offset(&disk, 512, 1, 0) + 56;
    put(&mut disk, at, &[b'A', 0, 0x00, 0xD8, b'B', 0, 0, 0]);
    seal_array(&mut disk, 512, 1);
    let gpt = read(&disk).unwrap();
    assert_eq!(gpt.partitions[0].name, "A\u{FFFD}B");
}

#[test]
fn four_kib_sectors_work() {
    let mut l = Layout::new(
        1024,
        vec![part(0, CONFIG_PARTITION_TYPE, 10, 900, "FERROCFG")],
    );
    l.sector_size = 4096;
    let disk = write_gpt(&l);
    // 128 entries of 128 bytes fill four 4 KiB sectors.
    assert_eq!(l.first_usable(), 6);
    let mut dev = MemDisk::with_sector_size(&disk, 4096).unwrap();
    let gpt = Gpt::read(&mut dev).unwrap();
    assert_eq!(gpt.partitions.len(), 1);
    assert_eq!(gpt.first_usable_lba, 6);
    let found = find_config_partition(&mut dev).unwrap().unwrap();
    assert_eq!((found.first_lba, found.last_lba), (10, 900));
}

#[test]
fn large_entries_and_an_array_spanning_reads_are_read() {
    // 256 entries of 512 bytes: 256 sectors, more than one read.
    let mut l = Layout::new(SECTORS, vec![]);
    l.entries = 256;
    l.entry_size = 512;
    l.parts = vec![
        part(0, BASIC_DATA_PARTITION, 300, 400, "first"),
        part(255, CONFIG_PARTITION_TYPE, 401, 3000, "FERROCFG"),
    ];
    let disk = write_gpt(&l);
    let gpt = read(&disk).unwrap();
    assert_eq!(gpt.first_usable_lba, 258);
    let names: Vec<&str> = gpt.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["first", "FERROCFG"]);
    assert_eq!(gpt.partitions[1].index, 255);
}

/// A way to damage one copy of the table: it damages the header at `lba`
/// (or its array) and returns the problem the reader must report.
type Damage = fn(&mut [u8], u64) -> TableProblem;

fn set_u32(disk: &mut [u8], lba: u64, at: usize, v: u32) {
    put(disk, lba as usize * 512 + at, &v.to_le_bytes());
}

fn set_u64(disk: &mut [u8], lba: u64, at: usize, v: u64) {
    put(disk, lba as usize * 512 + at, &v.to_le_bytes());
}

fn damages() -> Vec<(&'static str, Damage)> {
    vec![
        ("signature", |d, lba| {
            d[lba as usize * 512] = b'X';
            TableProblem::Signature(*b"XFI PART")
        }),
        ("revision", |d, lba| {
            set_u32(d, lba, 8, 0x0002_0000);
            seal_header(d, 512, lba);
            TableProblem::Revision(0x0002_0000)
        }),
        ("header size too small", |d, lba| {
            set_u32(d, lba, 12, 91);
            seal_header(d, 512, lba);
            TableProblem::HeaderSize {
                size: 91,
                sector_size: 512,
            }
        }),
        ("header size past the sector", |d, lba| {
            set_u32(d, lba, 12, 513);
            seal_header(d, 512, lba);
            TableProblem::HeaderSize {
                size: 513,
                sector_size: 512,
            }
        }),
        ("header CRC", |d, lba| {
            let h = lba as usize * 512;
            d[h + 60] ^= 1;
            let stored = u32::from_le_bytes(d[h + 16..h + 20].try_into().unwrap());
            let mut copy = d[h..h + 92].to_vec();
            copy[16..20].fill(0);
            TableProblem::HeaderCrc {
                stored,
                computed: crc32(&copy),
            }
        }),
        ("own LBA", |d, lba| {
            set_u64(d, lba, 24, 7);
            seal_header(d, 512, lba);
            TableProblem::MyLba { found: 7 }
        }),
        ("usable range over the MBR", |d, lba| {
            set_u64(d, lba, 40, 1);
            seal_header(d, 512, lba);
            TableProblem::UsableRange {
                first: 1,
                last: SECTORS - 34,
                sectors: SECTORS,
            }
        }),
        ("usable range over the backup header", |d, lba| {
            set_u64(d, lba, 48, SECTORS - 1);
            seal_header(d, 512, lba);
            TableProblem::UsableRange {
                first: 34,
                last: SECTORS - 1,
                sectors: SECTORS,
            }
        }),
        ("usable range backwards", |d, lba| {
            set_u64(d, lba, 40, 100);
            set_u64(d, lba, 48, 99);
            seal_header(d, 512, lba);
            TableProblem::UsableRange {
                first: 100,
                last: 99,
                sectors: SECTORS,
            }
        }),
        ("entry size not a multiple of 128", |d, lba| {
            set_u32(d, lba, 84, 100);
            seal_header(d, 512, lba);
            TableProblem::EntrySize(100)
        }),
        ("entry size not 128 times a power of two", |d, lba| {
            set_u32(d, lba, 84, 384);
            seal_header(d, 512, lba);
            TableProblem::EntrySize(384)
        }),
        ("entry count", |d, lba| {
            set_u32(d, lba, 80, 2000);
            seal_header(d, 512, lba);
            TableProblem::EntryCount(2000)
        }),
        ("entry array inside the usable range", |d, lba| {
            set_u64(d, lba, 72, 100);
            seal_header(d, 512, lba);
            TableProblem::EntryArray {
                lba: 100,
                sectors: 32,
            }
        }),
        ("entry array past the disk", |d, lba| {
            set_u64(d, lba, 72, SECTORS - 10);
            seal_header(d, 512, lba);
            TableProblem::EntryArray {
                lba: SECTORS - 10,
                sectors: 32,
            }
        }),
        ("entry array CRC", |d, lba| {
            let h = lba as usize * 512;
            let stored = u32::from_le_bytes(d[h + 88..h + 92].try_into().unwrap());
            let at = entry_offset(d, 512, lba, 3) + 56;
            d[at] = b'f';
            let start = entry_offset(d, 512, lba, 0);
            TableProblem::EntryArrayCrc {
                stored,
                computed: crc32(&d[start..start + 128 * 128]),
            }
        }),
        ("partition ends before it starts", |d, lba| {
            let at = entry_offset(d, 512, lba, 0);
            put(d, at + 40, &2000u64.to_le_bytes());
            seal_array(d, 512, lba);
            TableProblem::EntryBackwards {
                index: 0,
                first: 2048,
                last: 2000,
            }
        }),
        ("partition outside the usable range", |d, lba| {
            let at = entry_offset(d, 512, lba, 7);
            put(d, at + 40, &(SECTORS - 1).to_le_bytes());
            seal_array(d, 512, lba);
            TableProblem::EntryOutsideUsable {
                index: 7,
                first: 4000,
                last: SECTORS - 1,
            }
        }),
        ("partitions overlap", |d, lba| {
            let at = entry_offset(d, 512, lba, 3);
            put(d, at + 32, &2559u64.to_le_bytes());
            seal_array(d, 512, lba);
            TableProblem::EntriesOverlap { index: 0, other: 3 }
        }),
    ]
}

#[test]
fn each_check_on_the_primary_falls_back_to_the_backup() {
    let good = write_gpt(&layout());
    let expected = read(&good).unwrap().partitions;
    for (name, damage) in damages() {
        let mut disk = good.clone();
        let problem = damage(&mut disk, 1);
        let gpt = read(&disk).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            gpt.primary_problem(),
            Some(&TableError { lba: 1, problem }),
            "{name}"
        );
        assert_eq!(gpt.header_lba, SECTORS - 1, "{name}");
        assert_eq!(gpt.partitions, expected, "{name}");
    }
}

#[test]
fn each_check_on_both_copies_is_an_error_naming_both() {
    let good = write_gpt(&layout());
    let last = SECTORS - 1;
    for (name, damage) in damages() {
        let mut disk = good.clone();
        let primary = damage(&mut disk, 1);
        let backup = damage(&mut disk, last);
        assert_eq!(
            read(&disk),
            Err(DiskError::Gpt(GptError::Corrupt {
                primary: TableError {
                    lba: 1,
                    problem: primary
                },
                backup: TableError {
                    lba: last,
                    problem: backup
                },
            })),
            "{name}"
        );
    }
}

#[test]
fn a_damaged_backup_alone_goes_unnoticed() {
    // The backup is read only when the primary is bad.
    let mut disk = write_gpt(&layout());
    disk[(SECTORS as usize - 1) * 512] = 0;
    let gpt = read(&disk).unwrap();
    assert_eq!(gpt.header_lba, 1);
}

#[test]
fn disks_without_gpt() {
    // Blank, and an MBR-partitioned disk (signature, no 0xEE record).
    let blank = vec![0u8; 64 * 512];
    assert_eq!(read(&blank), Err(DiskError::Gpt(GptError::NotGpt)));
    assert_eq!(find_config_partition(&mut MemDisk::new(&blank)), Ok(None));
    let mut mbr = blank.clone();
    mbr[446 + 4] = 0x0C;
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    assert_eq!(read(&mbr), Err(DiskError::Gpt(GptError::NotGpt)));
    assert_eq!(read(&[0u8; 512]), Err(DiskError::Gpt(GptError::NotGpt)));
    assert_eq!(read(&[]), Err(DiskError::Gpt(GptError::NotGpt)));
}

#[test]
fn a_gpt_needs_a_protective_mbr() {
    let good = write_gpt(&layout());
    let mut disk = good.clone();
    disk[510] = 0;
    assert_eq!(
        read(&disk),
        Err(DiskError::Gpt(GptError::ProtectiveMbr {
            problem: "no 0x55 0xAA boot signature"
        }))
    );
    let mut disk = good.clone();
    disk[446 + 4] = 0x83;
    assert_eq!(
        read(&disk),
        Err(DiskError::Gpt(GptError::ProtectiveMbr {
            problem: "no partition of type 0xEE"
        }))
    );
    // A hybrid MBR: the 0xEE record in the second slot, a FAT one first.
    let mut disk = good.clone();
    let first: Vec<u8> = disk[446..462].to_vec();
    disk.copy_within(446..462, 462);
    disk[446..462].fill(0);
    disk[446 + 4] = 0x0C;
    assert_eq!(&disk[462..478], &first[..]);
    assert!(read(&disk).is_ok());
}

#[test]
fn a_tiny_disk_is_too_small() {
    let mut disk = vec![0u8; 4 * 512];
    disk[446 + 4] = 0xEE;
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[512..520].copy_from_slice(b"EFI PART");
    assert_eq!(
        read(&disk),
        Err(DiskError::Gpt(GptError::TooSmall { sectors: 4 }))
    );
}

#[test]
fn device_errors_are_passed_on_not_taken_for_damage() {
    let disk = write_gpt(&layout());
    for bad_lba in [0, 1, 2, 20] {
        let mut dev = FailingDisk {
            bytes: &disk,
            bad_lba,
        };
        assert!(
            matches!(Gpt::read(&mut dev), Err(DiskError::Device { .. })),
            "LBA {bad_lba}"
        );
    }
    // The backup is only read when needed.
    let mut dev = FailingDisk {
        bytes: &disk,
        bad_lba: SECTORS - 1,
    };
    assert!(Gpt::read(&mut dev).is_ok());
}

#[test]
fn find_by_type_and_name() {
    let gpt = read(&write_gpt(&layout())).unwrap();
    let by_type = gpt.find(Some(EFI_SYSTEM_PARTITION), None).unwrap();
    assert_eq!(by_type.index, 0);
    let by_name = gpt.find(None, Some("FERROCFG")).unwrap();
    assert_eq!(by_name.index, 3);
    let both = gpt
        .find(
            Some(BASIC_DATA_PARTITION),
            Some("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
        )
        .unwrap();
    assert_eq!(both.index, 7);
    assert_eq!(gpt.find(Some(EFI_SYSTEM_PARTITION), Some("FERROCFG")), None);
    assert_eq!(gpt.find(None, Some("ferrocfg")), None, "names are exact");
    assert_eq!(gpt.find(None, None).map(|p| p.index), Some(0));
}

fn config_of(parts: Vec<super::super::testutil::Part>) -> Result<Option<u32>, GptError> {
    let gpt = read(&write_gpt(&Layout::new(SECTORS, parts))).unwrap();
    gpt.config_partition().map(|p| p.map(|p| p.index))
}

#[test]
fn the_config_partition_is_found_by_type_then_by_name() {
    // The type wins over a partition that only has the name.
    assert_eq!(
        config_of(vec![
            part(0, BASIC_DATA_PARTITION, 100, 199, "FERROCFG"),
            part(1, CONFIG_PARTITION_TYPE, 200, 299, "other"),
        ]),
        Ok(Some(1))
    );
    // No partition has the type: the name finds it.
    assert_eq!(
        config_of(vec![
            part(0, EFI_SYSTEM_PARTITION, 100, 199, "EFI"),
            part(2, BASIC_DATA_PARTITION, 200, 299, "FERROCFG"),
        ]),
        Ok(Some(2))
    );
    assert_eq!(
        config_of(vec![part(0, BASIC_DATA_PARTITION, 100, 199, "data")]),
        Ok(None)
    );
    assert_eq!(
        config_of(vec![
            part(0, CONFIG_PARTITION_TYPE, 100, 199, "a"),
            part(4, CONFIG_PARTITION_TYPE, 200, 299, "b"),
        ]),
        Err(GptError::AmbiguousConfig {
            first: 0,
            second: 4,
            by: "type"
        })
    );
    assert_eq!(
        config_of(vec![
            part(1, BASIC_DATA_PARTITION, 100, 199, "FERROCFG"),
            part(2, BASIC_DATA_PARTITION, 200, 299, "FERROCFG"),
        ]),
        Err(GptError::AmbiguousConfig {
            first: 1,
            second: 2,
            by: "name"
        })
    );
}

#[test]
fn find_config_partition_uses_the_backup_when_it_must() {
    let mut disk = write_gpt(&layout());
    disk[512] = 0;
    let found = find_config_partition(&mut MemDisk::new(&disk))
        .unwrap()
        .unwrap();
    assert_eq!(found.index, 3);
    assert_eq!(found.name, "FERROCFG");
}

#[test]
fn messages_say_what_and_where() {
    let e = DiskError::Gpt(GptError::Corrupt {
        primary: TableError {
            lba: 1,
            problem: TableProblem::HeaderCrc {
                stored: 0x1234,
                computed: 0xabcd,
            },
        },
        backup: TableError {
            lba: 4095,
            problem: TableProblem::Signature([0; 8]),
        },
    });
    assert_eq!(
        e.to_string(),
        "disk: both GPT copies are damaged: primary: GPT header at LBA 1: header CRC32 \
         0x00001234 does not match 0x0000abcd, the CRC of the header; backup: GPT header at \
         LBA 4095: signature \"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\" is not \"EFI PART\""
    );
    let e = GptError::AmbiguousConfig {
        first: 0,
        second: 4,
        by: "type",
    };
    assert_eq!(
        e.to_string(),
        "partitions 0 and 4 both have the config partition's type (FERROCFG, \
         43512ee0-5019-4c06-ace2-4e748860ee00); keep one"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8192)) {
        let _ = read(&bytes);
        let _ = find_config_partition(&mut MemDisk::new(&bytes));
    }

    /// Damage anywhere in the tables, resealed so that the CRCs pass and
    /// the later checks see it: the reader never panics, and whatever it
    /// accepts is a table whose partitions lie in the usable range,
    /// apart and on the disk.
    #[test]
    fn damaged_tables_never_panic_and_accepted_ones_are_sane(
        writes in proptest::collection::vec((0usize..67 * 512, any::<u8>()), 1..8),
        reseal in any::<bool>(),
    ) {
        let mut disk = write_gpt(&layout());
        let tail = (SECTORS as usize - 33) * 512;
        for (at, value) in writes {
            let at = if at < 34 * 512 { at } else { tail + at - 34 * 512 };
            disk[at] = value;
        }
        if reseal {
            seal_array(&mut disk, 512, 1);
            seal_array(&mut disk, 512, SECTORS - 1);
        }
        if let Ok(gpt) = read(&disk) {
            prop_assert!(gpt.first_usable_lba >= 2);
            prop_assert!(gpt.last_usable_lba < SECTORS - 1);
            let mut spans: Vec<(u64, u64)> = gpt
                .partitions
                .iter()
                .map(|p| (p.first_lba, p.last_lba))
                .collect();
            spans.sort_unstable();
            for &(first, last) in &spans {
                prop_assert!(first <= last);
                prop_assert!(first >= gpt.first_usable_lba && last <= gpt.last_usable_lba);
            }
            for w in spans.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
        }
    }
}
