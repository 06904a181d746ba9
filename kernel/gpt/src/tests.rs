//! The format's own tests; the reader's are in the `disk` crate and the
//! writer's in `xtask::disk`, each over whole disks.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use super::*;
use alloc::string::ToString;

#[test]
fn crc32_is_the_ieee_crc() {
    // The check value of CRC-32/ISO-HDLC, the CRC UEFI and zlib use.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    let mut pieces = Crc32::new();
    pieces.update(b"1234");
    pieces.update(b"56789");
    assert_eq!(pieces.finalize(), 0xCBF4_3926);
}

#[test]
fn guids_parse_from_and_print_to_the_registry_form() {
    let text = "43512ee0-5019-4c06-ace2-4e748860ee00";
    assert_eq!(Guid::parse(text), Some(CONFIG_PARTITION_TYPE));
    assert_eq!(
        Guid::parse("43512EE0-5019-4C06-ACE2-4E748860EE00"),
        Some(CONFIG_PARTITION_TYPE)
    );
    assert_eq!(CONFIG_PARTITION_TYPE.to_string(), text);
    assert_eq!(
        CONFIG_PARTITION_TYPE.to_bytes(),
        [
            0xe0, 0x2e, 0x51, 0x43, 0x19, 0x50, 0x06, 0x4c, 0xac, 0xe2, 0x4e, 0x74, 0x88, 0x60,
            0xee, 0x00
        ]
    );
    assert_eq!(
        BIOS_BOOT_PARTITION.to_string(),
        "21686148-6449-6e6f-744e-656564454649"
    );
    assert_eq!(Guid::parse("43512ee0-5019-4c06-ace2-4e748860ee0"), None);
    assert_eq!(Guid::parse("43512ee0-5019-4c06-ace2_4e748860ee00"), None);
    assert_eq!(Guid::parse("43512ee0-5019-4c06-ace2-4e748860ee0g"), None);
}

fn sample_header() -> Header {
    Header {
        my_lba: 1,
        alternate_lba: 9999,
        first_usable_lba: 34,
        last_usable_lba: 9966,
        disk_guid: Guid::from_bytes([5; 16]),
        entries_lba: 2,
        entry_count: 128,
        entry_size: 128,
        entries_crc: 0x1234_5678,
    }
}

#[test]
fn headers_read_back_as_written_and_pass_the_checks() {
    let mut sector = [0u8; 512];
    sector[..92].copy_from_slice(&sample_header().encode());
    assert_eq!(&sector[..8], b"EFI PART");
    let decoded = Header::decode(&sector).unwrap();
    assert_eq!(decoded, sample_header());
    assert_eq!(decoded.check(1, 512, 10_000), Ok(()));
    assert_eq!(
        decoded.check(9999, 512, 10_000),
        Err(TableProblem::MyLba { found: 1 })
    );
}

#[test]
fn damaged_headers_are_refused_with_the_problem() {
    let mut sector = [0u8; 512];
    sector[..92].copy_from_slice(&sample_header().encode());
    let mut flipped = sector;
    flipped[40] ^= 1;
    assert!(matches!(
        Header::decode(&flipped),
        Err(TableProblem::HeaderCrc { .. })
    ));
    let mut unsigned = sector;
    unsigned[0] = b'X';
    assert!(Header::decode(&unsigned)
        .unwrap_err()
        .to_string()
        .contains("EFI PART"));
    let mut huge = sector;
    huge[12..16].copy_from_slice(&600u32.to_le_bytes());
    assert_eq!(
        Header::decode(&huge),
        Err(TableProblem::HeaderSize {
            size: 600,
            sector_size: 512
        })
    );
    assert!(Header::decode(&sector[..50]).is_err());
}

#[test]
fn entries_read_back_as_written() {
    let p = Partition {
        index: 3,
        type_guid: CONFIG_PARTITION_TYPE,
        unique_guid: Guid::from_bytes([3; 16]),
        first_lba: 2048,
        last_lba: 4095,
        attributes: 1 << 60,
        name: "FERROCFG".into(),
    };
    let bytes = p.encode();
    // Name as UTF-16LE at byte 56 of the entry.
    assert_eq!(&bytes[56..60], &[b'F', 0, b'E', 0]);
    assert_eq!(Partition::decode(3, &bytes), Some(p));
    assert_eq!(Partition::decode(0, &[0; 128]), None);
}
