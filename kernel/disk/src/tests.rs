//! The boot path's view: a GPT disk with the bootloader's partition and a
//! FAT32 `FERROCFG` partition made by mtools, found and read through
//! [`find_config_partition`] and [`ConfigFs`].

use super::gpt::{BASIC_DATA_PARTITION, CONFIG_PARTITION_TYPE, EFI_SYSTEM_PARTITION};
use super::testutil::{mtools_image, part, pattern, write_gpt, Layout, Op};
use super::*;
use config::files::CONFIG_FILE;
use std::sync::OnceLock;

const CONFIG: &[u8] =
    b"[[guest]]\nname = \"a\"\nkernel = \"guests/kernel.elf\"\nmemory = \"1M\"\n\n\
[[guest]]\nname = \"b\"\nkernel = \"guests/missing.bin\"\nmemory = \"1M\"\n";

/// The FAT32 image of the config partition.
fn config_image() -> &'static Vec<u8> {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let kernel = pattern(20, 70_000);
        mtools_image(
            &[
                "-F", "-c", "1", "-t", "70", "-h", "16", "-s", "63", "-v", "FERROCFG",
            ],
            &[
                Op::File("hypervisor.toml", CONFIG),
                Op::Dir("guests"),
                Op::File("guests/kernel.elf", &kernel),
            ],
        )
    })
}

const START: u64 = 2048;

/// A boot disk: an EFI system partition, a basic-data one, and the config
/// partition at LBA 2048 holding [`config_image`].
fn boot_disk(config_type: Guid) -> Vec<u8> {
    let fat = config_image();
    let fat_sectors = fat.len() as u64 / 512;
    let end = START + fat_sectors - 1;
    let layout = Layout::new(
        end + 1 + 33 + 100,
        vec![
            part(0, EFI_SYSTEM_PARTITION, 34, 1023, "EFI system partition"),
            part(1, BASIC_DATA_PARTITION, 1024, 2047, "boot"),
            part(2, config_type, START, end, "FERROCFG"),
        ],
    );
    let mut disk = write_gpt(&layout);
    let at = START as usize * 512;
    disk[at..at + fat.len()].copy_from_slice(fat);
    disk
}

#[test]
fn the_boot_path_finds_and_reads_the_config_partition() {
    let disk = boot_disk(CONFIG_PARTITION_TYPE);
    let mut dev = MemDisk::new(&disk);
    let partition = find_config_partition(&mut dev).unwrap().unwrap();
    assert_eq!(partition.index, 2);
    assert_eq!(partition.first_lba, START);
    assert_eq!(partition.sectors(), config_image().len() as u64 / 512);

    let fs = ConfigFs::open(&mut dev, &partition).unwrap();
    assert_eq!(fs.fat_type(), FatType::Fat32);
    assert_eq!(fs.label(), Some("FERROCFG"));
    assert_eq!(fs.read_file("hypervisor.toml", 64 * 1024).unwrap(), CONFIG);
    assert_eq!(
        fs.read_file("/guests/kernel.elf", 1 << 20).unwrap(),
        pattern(20, 70_000)
    );
    assert!(fs.exists("guests/kernel.elf"));
    assert!(fs.exists("/GUESTS/Kernel.ELF"));
    assert!(!fs.exists("guests"), "a directory is not a file");
    assert!(!fs.exists("guests/missing.bin"));
    let names: Vec<String> = fs
        .read_dir("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["hypervisor.toml", "guests"]);
    assert_eq!(
        fs.read_file("guests/kernel.elf", 1000).unwrap_err(),
        FsError::TooLarge {
            path: "guests/kernel.elf".into(),
            size: 70_000,
            limit: 1000
        }
    );
}

#[test]
fn the_config_checks_use_exists_on_the_partition() {
    let disk = boot_disk(CONFIG_PARTITION_TYPE);
    let mut dev = MemDisk::new(&disk);
    let partition = find_config_partition(&mut dev).unwrap().unwrap();
    let fs = ConfigFs::open(&mut dev, &partition).unwrap();
    let text = fs.read_file("hypervisor.toml", 64 * 1024).unwrap();
    let mut outcome = config::parse_bytes("hypervisor.toml", &text);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    config::check_images(&mut outcome, |path| fs.exists(path));
    let names: Vec<&str> = outcome
        .config
        .guests
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(outcome.errors.len(), 1);
    assert!(
        outcome.errors[0].to_string().contains("guests/missing.bin"),
        "{}",
        outcome.errors[0]
    );
}

#[test]
fn a_partition_named_ferrocfg_of_the_fat_type_is_found_too() {
    let disk = boot_disk(BASIC_DATA_PARTITION);
    let mut dev = MemDisk::new(&disk);
    let partition = find_config_partition(&mut dev).unwrap().unwrap();
    assert_eq!(partition.index, 2);
    let fs = ConfigFs::open(&mut dev, &partition).unwrap();
    assert!(fs.exists("hypervisor.toml"));
}

#[test]
fn a_damaged_primary_gpt_still_finds_the_partition() {
    let mut disk = boot_disk(CONFIG_PARTITION_TYPE);
    disk[512 + 60] ^= 0xFF;
    let mut dev = MemDisk::new(&disk);
    let gpt = Gpt::read(&mut dev).unwrap();
    assert!(gpt.primary_problem().is_some());
    let partition = find_config_partition(&mut dev).unwrap().unwrap();
    let fs = ConfigFs::open(&mut dev, &partition).unwrap();
    assert_eq!(fs.read_file("hypervisor.toml", 4096).unwrap(), CONFIG);
}

#[test]
fn no_gpt_means_no_config_partition() {
    // The bare FAT image as a disk: its boot sector is no protective MBR
    // and LBA 1 (FAT32's FSInfo) holds no GPT header.
    let image = config_image();
    let mut dev = MemDisk::new(image);
    assert_eq!(find_config_partition(&mut dev), Ok(None));
    // ... but as a ramdisk it is served whole.
    let sectors = dev.sectors();
    let fs = ConfigFs::new(FatVolume::open(&mut dev, 0, sectors).unwrap());
    assert_eq!(fs.read_file("hypervisor.toml", 4096).unwrap(), CONFIG);
}

#[test]
fn a_config_partition_without_fat_says_so() {
    let mut disk = boot_disk(CONFIG_PARTITION_TYPE);
    let at = START as usize * 512;
    disk[at + 510] = 0;
    let mut dev = MemDisk::new(&disk);
    let partition = find_config_partition(&mut dev).unwrap().unwrap();
    let e = ConfigFs::open(&mut dev, &partition).unwrap_err();
    assert_eq!(
        e.to_string(),
        "FAT: boot sector at LBA 2048: no 0x55 0xAA signature at bytes 510 and 511"
    );
}

#[test]
fn the_partition_is_a_config_files_source() {
    let disk = boot_disk(CONFIG_PARTITION_TYPE);
    let mut dev = MemDisk::new(&disk);
    let partition = find_config_partition(&mut dev).unwrap().unwrap();
    let mut fs = ConfigFs::open(&mut dev, &partition).unwrap();
    let files: &mut dyn ConfigFiles<'_> = &mut fs;
    assert_eq!(files.source(), "partition FERROCFG");
    assert_eq!(
        files.read(CONFIG_FILE, 1 << 20).unwrap().as_deref(),
        Some(CONFIG)
    );
    assert_eq!(files.read("guests/missing.bin", 1 << 20), Ok(None));
    assert_eq!(files.read("nowhere/missing.bin", 1 << 20), Ok(None));
    assert_eq!(files.read("hypervisor.toml/x", 1 << 20), Ok(None));
    assert!(files.exists("guests/kernel.elf"));
    assert!(!files.exists("guests"));
    assert_eq!(
        files.read("guests/kernel.elf", 1000),
        Err(
            "partition FERROCFG: FAT: \"guests/kernel.elf\" is 70000 bytes, more than \
             the 1000 allowed"
                .to_string()
        )
    );
    assert_eq!(
        files.read("guests", 1000),
        Err("partition FERROCFG: FAT: \"guests\" is a directory, not a file".to_string())
    );

    // In pieces: the size, then reads at offsets, the file kept open
    // across them; a missing file is None, then an error to read.
    let whole = files.read("guests/kernel.elf", 1 << 20).unwrap().unwrap();
    assert_eq!(files.size("guests/kernel.elf"), Ok(Some(70_000)));
    assert_eq!(files.size("/guests/missing.bin"), Ok(None));
    assert_eq!(files.size("hypervisor.toml"), Ok(Some(CONFIG.len() as u64)));
    let mut buf = vec![0; 30_000];
    for at in [0, 29_999, 60_000] {
        let n = files.read_at("/guests/kernel.elf", at, &mut buf).unwrap();
        assert_eq!(n, 30_000.min(70_000 - at as usize));
        assert_eq!(buf[..n], whole[at as usize..at as usize + n]);
    }
    assert_eq!(files.read_at("guests/kernel.elf", 70_000, &mut buf), Ok(0));
    assert_eq!(
        files.read_at("guests/missing.bin", 0, &mut buf),
        Err("partition FERROCFG: FAT: \"guests/missing.bin\" does not exist".to_string())
    );
    assert_eq!(
        files.size("guests"),
        Err("partition FERROCFG: FAT: \"guests\" is a directory, not a file".to_string())
    );

    let mut fs = fs.with_source("disk ata0-master partition FERROCFG".into());
    let files: &mut dyn ConfigFiles<'_> = &mut fs;
    assert_eq!(files.source(), "disk ata0-master partition FERROCFG");
}
