use super::*;
use crate::block::MemDisk;
use crate::testutil::{mtools_image, pattern, FailingDisk, Op, PatchedDisk};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// An image made by mtools and the files it holds.
struct Fixture {
    image: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
    dirs: Vec<&'static str>,
}

const LINUX: &str = "guests/Linux bzImage with a long name.bin";
const LONG: &str = "A very long name.Text";

/// The many-files directory's file names: 34 characters, three long-name
/// entries each, so the directory spans eleven 512-byte clusters.
fn many_name(n: usize) -> String {
    format!("many/file number {n:02} with a long name.dat")
}

/// FAT32 (36 MB, 512-byte clusters) with long names, nested folders,
/// multi-cluster, empty, exact-cluster and fragmented files.
fn fat32() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "hypervisor.toml".into(),
                b"[[guest]]\nname = \"hello\"\nkernel = \"guests/kernel.elf\"\n".to_vec(),
            ),
            (LONG.into(), pattern(1, 700)),
            (LINUX.into(), pattern(2, 100_000)),
            ("guests/kernel.elf".into(), pattern(3, 513)),
            ("guests/nested/deeper/file.txt".into(), b"deep".to_vec()),
            ("empty".into(), Vec::new()),
            ("Gäste λ.txt".into(), b"unicode".to_vec()),
            ("exact.bin".into(), pattern(5, 2048)),
        ];
        for n in 0..40 {
            files.push((many_name(n), pattern(100 + n as u64, n * 37)));
        }
        let dirs = vec!["guests", "guests/nested", "guests/nested/deeper", "many"];
        let mut ops: Vec<Op<'_>> = dirs.iter().map(|d| Op::Dir(d)).collect();
        ops.extend(files.iter().map(|(p, d)| Op::File(p, d)));
        // A deleted file leaves a free entry in the root.
        let a = pattern(6, 1500);
        let b = pattern(7, 1500);
        let frag = pattern(8, 6000);
        ops.push(Op::File("a.bin", &a));
        ops.push(Op::File("b.bin", &b));
        ops.push(Op::Delete("a.bin"));
        ops.push(Op::File("frag.bin", &frag));
        let mut image = mtools_image(
            &[
                "-F", "-c", "1", "-t", "70", "-h", "16", "-s", "63", "-v", "FERROCFG",
            ],
            &ops,
        );
        fragment(&mut image);
        files.push(("b.bin".into(), b.clone()));
        files.push(("frag.bin".into(), frag.clone()));
        Fixture { image, files, dirs }
    })
}

/// Moves clusters 4 to 7 of `frag.bin` (12 contiguous clusters as mtools
/// writes them) to free clusters 60003 down to 60000, so that its chain
/// jumps away, runs backwards and comes back.
fn fragment(image: &mut [u8]) {
    let entry = find(image, b"FRAG    BIN");
    let first = u32::from(u16::from_le_bytes([image[entry + 26], image[entry + 27]]))
        | (u32::from(u16::from_le_bytes([image[entry + 20], image[entry + 21]])) << 16);
    let cluster_at = |c: u32| (1118 + c as usize - 2) * 512;
    let moved = [60_003, 60_002, 60_001, 60_000];
    for (k, &to) in moved.iter().enumerate() {
        let from = cluster_at(first + 4 + k as u32);
        image.copy_within(from..from + 512, cluster_at(to));
    }
    let mut link = |c: u32, next: u32| {
        let at = FAT0 + c as usize * 4;
        image[at..at + 4].copy_from_slice(&next.to_le_bytes());
    };
    link(first + 3, moved[0]);
    for w in moved.windows(2) {
        link(w[0], w[1]);
    }
    link(moved[3], first + 8);
}

/// FAT12 (1.44 MB floppy): a file of 1172 one-sector clusters, whose
/// 12-bit entries straddle FAT sector boundaries.
fn fat12() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let files: Vec<(String, Vec<u8>)> = vec![
            ("config.toml".into(), b"# config\n".to_vec()),
            ("dir/sub/big file.bin".into(), pattern(9, 600_000)),
            ("dir/Long Name Here.txt".into(), pattern(10, 1025)),
        ];
        let dirs = vec!["dir", "dir/sub"];
        let mut ops: Vec<Op<'_>> = dirs.iter().map(|d| Op::Dir(d)).collect();
        ops.extend(files.iter().map(|(p, d)| Op::File(p, d)));
        let image = mtools_image(&["-f", "1440", "-v", "SMALL"], &ops);
        Fixture { image, files, dirs }
    })
}

/// FAT16 (20 MB, 2 KiB clusters) with a fixed root directory of more
/// entries than one sector holds.
fn fat16() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut files: Vec<(String, Vec<u8>)> = vec![("sub/big.bin".into(), pattern(11, 300_000))];
        for n in 0..30 {
            files.push((
                format!("root file {n}.txt"),
                pattern(200 + n, n as usize * 100),
            ));
        }
        let dirs = vec!["sub"];
        let mut ops: Vec<Op<'_>> = dirs.iter().map(|d| Op::Dir(d)).collect();
        ops.extend(files.iter().map(|(p, d)| Op::File(p, d)));
        let image = mtools_image(&["-t", "40", "-h", "16", "-s", "63", "-c", "4"], &ops);
        Fixture { image, files, dirs }
    })
}

/// Opens the whole of `dev` as a volume.
fn open(dev: &mut dyn BlockDevice) -> Result<FatVolume<'_>, FsError> {
    let sectors = dev.sectors();
    FatVolume::open(dev, 0, sectors)
}

/// `path` read through [`FatVolume::open_file`] and
/// [`FatVolume::read_at`], `piece` bytes at a time.
fn read_in_pieces(v: &mut FatVolume<'_>, path: &str, piece: usize) -> Result<Vec<u8>, FsError> {
    let file = v.open_file(path)?;
    let mut data = vec![0; file.size() as usize];
    let mut at = 0;
    while at < data.len() {
        let end = (at + piece).min(data.len());
        let n = v.read_at(&file, at as u64, &mut data[at..end])?;
        assert_eq!(n, end - at, "{path}: short read at {at}");
        at = end;
    }
    // At and past the end there is nothing more.
    assert_eq!(v.read_at(&file, file.size(), &mut [0; 4])?, 0);
    assert_eq!(v.read_at(&file, u64::MAX, &mut [0; 4])?, 0);
    Ok(data)
}

/// Every file reads back byte for byte, whole and in pieces of sizes that
/// cross sector and cluster boundaries, and every folder lists.
fn check_fixture(v: &mut FatVolume<'_>, fx: &Fixture) {
    for (path, data) in &fx.files {
        let read = v
            .read_file(path, usize::MAX)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(read == *data, "{path}: contents differ");
        for piece in [1, 511, 4096 + 3, 70_000] {
            let pieces = read_in_pieces(v, path, piece).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                pieces == *data,
                "{path}: contents differ read {piece} at a time"
            );
        }
        let meta = v.metadata(path).unwrap().unwrap();
        assert_eq!(meta.size as usize, data.len(), "{path}");
        assert!(!meta.is_dir);
        assert!(v.is_file(path));
    }
    for dir in &fx.dirs {
        assert!(v.metadata(dir).unwrap().unwrap().is_dir, "{dir}");
        assert!(!v.is_file(dir));
        v.read_dir(dir).unwrap();
    }
}

#[test]
fn fat32_files_read_back_exactly() {
    let fx = fat32();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    assert_eq!(v.fat_type(), FatType::Fat32);
    assert_eq!(v.label(), Some("FERROCFG"));
    assert_eq!(v.cluster_bytes(), 512);
    assert!(v.clusters() >= 65_525);
    check_fixture(&mut v, fx);
}

#[test]
fn fat12_files_read_back_exactly() {
    let fx = fat12();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    assert_eq!(v.fat_type(), FatType::Fat12);
    assert_eq!(v.label(), Some("SMALL"));
    check_fixture(&mut v, fx);
}

#[test]
fn fat16_files_read_back_exactly() {
    let fx = fat16();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    assert_eq!(v.fat_type(), FatType::Fat16);
    assert_eq!(v.label(), None, "no label was given");
    assert_eq!(v.cluster_bytes(), 2048);
    check_fixture(&mut v, fx);
    assert_eq!(v.read_dir("").unwrap().len(), 31);
}

#[test]
fn file_system_sectors_larger_than_the_disks() {
    // 4 KiB file system sectors on a 512-byte disk, then on a 4 KiB disk;
    // 1 KiB ones on a 512-byte disk.
    let data = pattern(12, 50_000);
    let ops = [Op::Dir("d"), Op::File("d/file with long name.bin", &data)];
    let big = mtools_image(&["-S", "5", "-t", "10", "-h", "16", "-s", "8"], &ops);
    let mid = mtools_image(&["-S", "3", "-f", "1440"], &ops);
    let mut disks = vec![
        MemDisk::new(&big),
        MemDisk::with_sector_size(&big, 4096).unwrap(),
        MemDisk::new(&mid),
    ];
    for dev in &mut disks {
        let mut v = open(dev).unwrap();
        assert_eq!(
            v.read_file("D/FILE WITH LONG NAME.BIN", usize::MAX)
                .unwrap(),
            data
        );
    }
    // The other way round cannot be read.
    let mut dev = MemDisk::with_sector_size(&mid, 4096).unwrap();
    assert_eq!(
        open(&mut dev).unwrap_err(),
        FsError::BootSector {
            lba: 0,
            problem: BootProblem::SmallerThanDisk {
                fs: 1024,
                disk: 4096
            }
        }
    );
}

#[test]
fn a_volume_inside_a_partition_is_read_at_its_offset() {
    let fx = fat12();
    let mut disk = vec![0xA5u8; 100 * 512];
    disk.extend_from_slice(&fx.image);
    disk.extend_from_slice(&[0x5A; 512 * 7]);
    let mut dev = MemDisk::new(&disk);
    let mut v = FatVolume::open(&mut dev, 100, fx.image.len() as u64 / 512).unwrap();
    check_fixture(&mut v, fx);
}

#[test]
fn directories_list_long_and_short_names() {
    let fx = fat32();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    let root = v.read_dir("/").unwrap();
    let mut names: Vec<&str> = root.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            LONG,
            "Gäste λ.txt",
            "b.bin",
            "empty",
            "exact.bin",
            "frag.bin",
            "guests",
            "hypervisor.toml",
            "many",
        ]
    );
    let long = root.iter().find(|e| e.name == LONG).unwrap();
    assert_eq!(long.short_name, "AVERYL~1.TEX");
    assert_eq!(long.size, 700);
    // An all-lower-case 8.3 name has no long name: the NT case bits
    // lower-case it.
    let empty = root.iter().find(|e| e.name == "empty").unwrap();
    assert_eq!(empty.short_name, "EMPTY");
    assert_eq!((empty.size, empty.first_cluster), (0, 0));
    let guests = root.iter().find(|e| e.name == "guests").unwrap();
    assert!(guests.is_dir);
    assert_eq!(guests.attributes & 0x10, 0x10);

    let sub = v.read_dir("guests").unwrap();
    let names: Vec<&str> = sub.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["nested", "Linux bzImage with a long name.bin", "kernel.elf"],
        "no . or .."
    );
    let kernel = sub.iter().find(|e| e.name == "kernel.elf").unwrap();
    assert_eq!(kernel.short_name, "KERNEL.ELF");

    let many = v.read_dir("many/").unwrap();
    assert_eq!(many.len(), 40);
    for (n, e) in many.iter().enumerate() {
        assert_eq!(format!("many/{}", e.name), many_name(n));
    }
}

#[test]
fn lookup_ignores_case_and_takes_short_names() {
    let fx = fat32();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    let linux = pattern(2, 100_000);
    for path in [
        "GUESTS/linux BZIMAGE WITH A LONG NAME.BIN",
        "/guests/Linux bzImage with a long name.bin",
        "Guests/LINUXB~1.BIN",
    ] {
        assert_eq!(v.read_file(path, usize::MAX).unwrap(), linux, "{path}");
    }
    assert_eq!(v.read_file("averyl~1.tex", 700).unwrap(), pattern(1, 700));
    assert_eq!(v.read_file("HYPERVISOR.TOML", 4096).unwrap().len(), 54);
    // Case folding beyond ASCII, as FAT's upper-case table does.
    assert_eq!(v.read_file("GÄSTE Λ.TXT", 100).unwrap(), b"unicode");
    assert_eq!(v.metadata("").unwrap(), None, "the root has no entry");
}

#[test]
fn lookup_errors_name_the_path() {
    let fx = fat32();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    let missing = |p: &str| FsError::NotFound { path: p.into() };
    assert_eq!(
        v.read_file("guests/nope/x.bin", 10).unwrap_err(),
        missing("guests/nope")
    );
    assert_eq!(v.read_file("nothing", 10).unwrap_err(), missing("nothing"));
    assert_eq!(
        v.read_file("hypervisor.toml/x", 10).unwrap_err(),
        FsError::NotADirectory {
            path: "hypervisor.toml".into()
        }
    );
    assert_eq!(
        v.read_dir("guests/kernel.elf").unwrap_err(),
        FsError::NotADirectory {
            path: "guests/kernel.elf".into()
        }
    );
    assert_eq!(
        v.read_file("guests", 10).unwrap_err(),
        FsError::IsADirectory {
            path: "guests".into()
        }
    );
    assert_eq!(
        v.read_file("", 10).unwrap_err(),
        FsError::IsADirectory { path: "".into() }
    );
    for (path, reason) in [
        ("a//b", "empty folder name"),
        ("guests/../hypervisor.toml", "'.' and '..' are not allowed"),
        ("./hypervisor.toml", "'.' and '..' are not allowed"),
        ("guests\\kernel.elf", "'\\' is not a separator; use '/'"),
    ] {
        assert_eq!(
            v.read_file(path, 10).unwrap_err(),
            FsError::BadPath {
                path: path.into(),
                reason
            }
        );
    }
    assert!(!v.is_file("nothing"));
}

#[test]
fn the_size_limit_is_checked_before_reading() {
    let fx = fat32();
    // Every data sector fails to read: only the size may be consulted.
    let data_lba = 32 + 2 * 543 + 300;
    let mut dev = FailingDisk {
        bytes: &fx.image,
        bad_lba: data_lba,
    };
    let mut v = open(&mut dev).unwrap();
    assert_eq!(
        v.read_file(LINUX, 99_999).unwrap_err(),
        FsError::TooLarge {
            path: LINUX.into(),
            size: 100_000,
            limit: 99_999
        }
    );
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    assert_eq!(v.read_file(LINUX, 100_000).unwrap().len(), 100_000);
    assert_eq!(v.read_file("empty", 0).unwrap(), b"");
}

#[test]
fn a_huge_size_is_an_error_not_an_allocation_failure() {
    // A directory entry claiming 4 GiB - 1 bytes, read with no limit.
    let fx = fat32();
    let at = find(&fx.image, b"EXACT   BIN") + 28;
    let patches = BTreeMap::from_iter((0..4).map(|k| (at + k, 0xFF)));
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    assert_eq!(
        v.read_file("exact.bin", usize::MAX).unwrap_err(),
        FsError::Chain {
            path: "exact.bin".into(),
            problem: ChainProblem::TooShort {
                clusters: 4,
                needed: 8_388_608
            }
        }
    );
}

#[test]
fn device_errors_are_passed_on() {
    let fx = fat32();
    let mut dev = FailingDisk {
        bytes: &fx.image,
        bad_lba: 0,
    };
    assert!(matches!(
        open(&mut dev).unwrap_err(),
        FsError::Disk(DiskError::Device { lba: 0, .. })
    ));
    let mut dev = MemDisk::new(&fx.image);
    let too_many = dev.sectors() + 1;
    assert_eq!(
        FatVolume::open(&mut dev, 0, too_many).unwrap_err(),
        FsError::Disk(DiskError::OutOfRange {
            lba: 0,
            count: too_many,
            sectors: too_many - 1
        })
    );
}

/// The first offset of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the image", needle.escape_ascii().to_string()))
}

/// The FAT32 fixture's first FAT starts at byte 32 * 512.
const FAT0: usize = 32 * 512;

fn fat32_entry(image: &[u8], cluster: u32) -> u32 {
    let at = FAT0 + cluster as usize * 4;
    u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) & 0x0FFF_FFFF
}

/// The chain from `first` as the fixture's FAT has it.
fn fat32_chain(image: &[u8], first: u32) -> Vec<u32> {
    let mut chain = vec![first];
    while fat32_entry(image, *chain.last().unwrap()) < 0x0FFF_FFF8 {
        chain.push(fat32_entry(image, *chain.last().unwrap()));
    }
    chain
}

fn set_entry(patches: &mut BTreeMap<usize, u8>, cluster: u32, value: u32) {
    for (k, b) in value.to_le_bytes().into_iter().enumerate() {
        patches.insert(FAT0 + cluster as usize * 4 + k, b);
    }
}

/// What reading `path` gives after `value` is written in the FAT entry of
/// `cluster`.
fn read_with_entry(path: &str, cluster: u32, value: u32) -> Result<Vec<u8>, FsError> {
    let fx = fat32();
    let mut patches = BTreeMap::new();
    set_entry(&mut patches, cluster, value);
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev)?;
    let whole = v.read_file(path, usize::MAX);
    // An open file checks its chain as a whole read does.
    assert_eq!(read_in_pieces(&mut v, path, 3000), whole, "{path}");
    whole
}

fn first_cluster(path: &str) -> u32 {
    let fx = fat32();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    v.metadata(path).unwrap().unwrap().first_cluster
}

#[test]
fn damaged_file_chains_are_errors() {
    let fx = fat32();
    let c = first_cluster(LINUX);
    assert_eq!(fat32_chain(&fx.image, c).len(), 196);
    let clusters = 70_560 - 32 - 2 * 543;
    let chain = |problem| {
        Err(FsError::Chain {
            path: LINUX.into(),
            problem,
        })
    };
    assert_eq!(
        read_with_entry(LINUX, c + 2, c),
        chain(ChainProblem::Cycle {
            cluster: c + 2,
            next: c
        })
    );
    assert_eq!(
        read_with_entry(LINUX, c + 100, c + 100),
        chain(ChainProblem::Cycle {
            cluster: c + 100,
            next: c + 100
        })
    );
    assert_eq!(
        read_with_entry(LINUX, c + 1, 0),
        chain(ChainProblem::Free(c + 1))
    );
    assert_eq!(
        read_with_entry(LINUX, c + 1, 1),
        chain(ChainProblem::Reserved(c + 1))
    );
    assert_eq!(
        read_with_entry(LINUX, c + 1, 0x0FFF_FFF7),
        chain(ChainProblem::Bad(c + 1))
    );
    for next in [clusters + 2, 0x0FFF_FFF0] {
        assert_eq!(
            read_with_entry(LINUX, c + 1, next),
            chain(ChainProblem::OutOfRange {
                cluster: c + 1,
                next
            })
        );
    }
    assert_eq!(
        read_with_entry(LINUX, c + 4, 0x0FFF_FFFF),
        chain(ChainProblem::TooShort {
            clusters: 5,
            needed: 196
        })
    );
    // The top four bits of a FAT32 entry are reserved and ignored.
    assert_eq!(
        read_with_entry(LINUX, c + 1, 0xF000_0000 | (c + 2)).unwrap(),
        pattern(2, 100_000)
    );
    // A chain longer than the file is read only as far as the size.
    let last = c + 195;
    assert_eq!(fat32_entry(&fx.image, last), 0x0FFF_FFFF);
    assert_eq!(
        read_with_entry(LINUX, last, c).unwrap(),
        pattern(2, 100_000)
    );
}

#[test]
fn a_bad_first_cluster_is_an_error() {
    let fx = fat32();
    let entry = find(&fx.image, b"KERNEL  ELF");
    for first in [0u32, 1, 70_560] {
        let mut patches = BTreeMap::new();
        for (k, b) in first.to_le_bytes().into_iter().enumerate() {
            // High word at 20, low word at 26.
            patches.insert(entry + [26, 27, 20, 21][k], b);
        }
        let mut dev = PatchedDisk {
            bytes: &fx.image,
            patches,
        };
        let mut v = open(&mut dev).unwrap();
        assert_eq!(
            v.read_file("guests/kernel.elf", 1000).unwrap_err(),
            FsError::Chain {
                path: "guests/kernel.elf".into(),
                problem: ChainProblem::Start(first)
            }
        );
    }
}

#[test]
fn fragmented_files_follow_their_chain() {
    let fx = fat32();
    let c = first_cluster("frag.bin");
    let chain = fat32_chain(&fx.image, c);
    assert_eq!(
        chain,
        [
            c,
            c + 1,
            c + 2,
            c + 3,
            60_003,
            60_002,
            60_001,
            60_000,
            c + 8,
            c + 9,
            c + 10,
            c + 11
        ]
    );
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    assert_eq!(v.read_file("frag.bin", 6000).unwrap(), pattern(8, 6000));
    // Open, it is kept as runs of consecutive clusters (the backwards
    // part is a run per cluster), and reads at any offset land in the
    // right one.
    let file = v.open_file("frag.bin").unwrap();
    assert_eq!(file.runs.len(), 6);
    let mut buf = [0; 1500];
    assert_eq!(v.read_at(&file, 1800, &mut buf).unwrap(), 1500);
    assert_eq!(buf[..], pattern(8, 6000)[1800..3300]);
    assert_eq!(v.read_at(&file, 5000, &mut buf).unwrap(), 1000);
    assert_eq!(buf[..1000], pattern(8, 6000)[5000..]);
    // A directory is not a file to open.
    assert_eq!(
        v.open_file("many").unwrap_err(),
        FsError::IsADirectory {
            path: "many".into()
        }
    );
}

#[test]
fn damaged_directory_chains_are_errors_not_hangs() {
    let fx = fat32();
    let d = first_cluster("many");
    let dir_chain = fat32_chain(&fx.image, d);
    // 40 files of four entries, plus "." and "..": 162 entries.
    assert_eq!(dir_chain.len(), 11);
    let second = dir_chain[1];

    // A cycle: the second cluster links back to the first.
    let mut patches = BTreeMap::new();
    set_entry(&mut patches, second, d);
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    let cycle = FsError::Chain {
        path: "many".into(),
        problem: ChainProblem::Cycle {
            cluster: second,
            next: d,
        },
    };
    assert_eq!(v.read_dir("many").unwrap_err(), cycle);
    assert_eq!(v.read_file(&many_name(3), usize::MAX).unwrap_err(), cycle);
    assert!(!v.is_file(&many_name(3)));

    // No cycle, but longer than 2 MiB: the last cluster goes on through
    // 5000 free clusters.
    let mut patches = BTreeMap::new();
    let free = 60_000;
    set_entry(&mut patches, *dir_chain.last().unwrap(), free);
    for k in 0..5000 {
        set_entry(&mut patches, free + k, free + k + 1);
    }
    set_entry(&mut patches, free + 5000, 0x0FFF_FFFF);
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    assert_eq!(
        v.read_dir("many").unwrap_err(),
        FsError::Chain {
            path: "many".into(),
            problem: ChainProblem::TooLong { max: 4096 }
        }
    );

    // The root's own chain: a cycle is named on "/".
    let mut patches = BTreeMap::new();
    set_entry(&mut patches, 2, 2);
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    let e = v.read_dir("").unwrap_err();
    assert_eq!(
        e.to_string(),
        "FAT: \"/\": damaged cluster chain: cluster 2 links back to cluster 2, earlier in \
         the chain (a cycle)"
    );
}

#[test]
fn a_fat12_cycle_is_an_error() {
    let fx = fat12();
    let mut dev = MemDisk::new(&fx.image);
    let mut v = open(&mut dev).unwrap();
    let path = "dir/sub/big file.bin";
    let c = v.metadata(path).unwrap().unwrap().first_cluster;
    // Point an odd cluster's 12-bit entry back at the first cluster.
    let target = (c + 341) | 1;
    let at = 512 + target as usize * 3 / 2;
    let pair = u16::from_le_bytes([fx.image[at], fx.image[at + 1]]);
    let pair = (pair & 0x000F) | ((c as u16) << 4);
    let patches = BTreeMap::from([(at, pair as u8), (at + 1, (pair >> 8) as u8)]);
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    assert_eq!(
        v.read_file(path, usize::MAX).unwrap_err(),
        FsError::Chain {
            path: path.into(),
            problem: ChainProblem::Cycle {
                cluster: target,
                next: c
            }
        }
    );
}

#[test]
fn the_active_fat_is_used_when_mirroring_is_off() {
    let fx = fat32();
    // ExtFlags 0x81: mirroring off, FAT 1 active. FAT 0 then zeroed.
    let mut patches = BTreeMap::from([(40, 0x81), (41, 0)]);
    for at in FAT0..FAT0 + 543 * 512 {
        patches.insert(at, 0);
    }
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches: patches.clone(),
    };
    let mut v = open(&mut dev).unwrap();
    assert_eq!(v.read_file(LINUX, usize::MAX).unwrap(), pattern(2, 100_000));
    // With mirroring on, FAT 0 is used, and its zeroed root chain shows.
    patches.insert(40, 0);
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    assert_eq!(
        v.read_dir("").unwrap_err(),
        FsError::Chain {
            path: "".into(),
            problem: ChainProblem::Free(2)
        }
    );
}

/// The offset of the 8.3 entry `name` in the image and the long-name
/// entries just before it.
fn long_entries(image: &[u8], name: &[u8; 11]) -> (usize, Vec<usize>) {
    let short = find(image, name);
    let mut lfn = Vec::new();
    let mut at = short - 32;
    while image[at + 11] == 0x0F {
        lfn.push(at);
        at -= 32;
    }
    (short, lfn)
}

#[test]
fn a_long_name_with_a_wrong_checksum_falls_back_to_the_short_name() {
    let fx = fat32();
    let (_, lfn) = long_entries(&fx.image, b"AVERYL~1TEX");
    assert_eq!(lfn.len(), 2);
    // The same wrong checksum in every long entry: the sequence holds
    // but does not belong to the 8.3 entry.
    let checksum = fx.image[lfn[0] + 13];
    let patches = lfn.iter().map(|&at| (at + 13, checksum ^ 0x55)).collect();
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches,
    };
    let mut v = open(&mut dev).unwrap();
    let root = v.read_dir("").unwrap();
    assert!(root.iter().any(|e| e.name == "AVERYL~1.TEX"));
    assert!(!root.iter().any(|e| e.name == LONG));
    assert_eq!(
        v.read_file(LONG, 1000).unwrap_err(),
        FsError::NotFound { path: LONG.into() }
    );
    assert_eq!(v.read_file("AVERYL~1.TEX", 1000).unwrap(), pattern(1, 700));
}

#[test]
fn broken_long_name_sequences_are_dropped() {
    let fx = fat32();
    let (short, lfn) = long_entries(&fx.image, b"AVERYL~1TEX");
    // A deleted part in the middle of the sequence.
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches: BTreeMap::from([(lfn[0], 0xE5)]),
    };
    let mut v = open(&mut dev).unwrap();
    let names: Vec<String> = v
        .read_dir("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"AVERYL~1.TEX".to_string()), "{names:?}");
    // Parts out of order: the last part's sequence number is wrong.
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches: BTreeMap::from([(lfn[1], 0x43)]),
    };
    let mut v = open(&mut dev).unwrap();
    assert!(v.metadata("AVERYL~1.TEX").unwrap().unwrap().name == "AVERYL~1.TEX");
    // A deleted 8.3 entry: its long name does not pass to the next entry.
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches: BTreeMap::from([(short, 0xE5)]),
    };
    let mut v = open(&mut dev).unwrap();
    let root = v.read_dir("").unwrap();
    assert!(!root
        .iter()
        .any(|e| e.name == LONG || e.short_name == "AVERYL~1.TEX"));
    assert_eq!(root.len(), 8);
}

#[test]
fn the_checksum_is_fatgen103s() {
    // The rotate-right-and-add sum over the 11 name bytes; mtools wrote
    // this one.
    let fx = fat32();
    let (short, lfn) = long_entries(&fx.image, b"AVERYL~1TEX");
    assert_eq!(
        short_name_checksum(&fx.image[short..short + 11]),
        fx.image[lfn[0] + 13]
    );
    // Worked by hand for eleven spaces.
    assert_eq!(short_name_checksum(b"           "), 0xF7);
}

/// A boot-sector damage: its name, the bytes written, the problem it
/// must give.
type BootCase = (&'static str, Vec<(usize, u8)>, BootProblem);

fn boot_cases() -> Vec<BootCase> {
    let le16 = |at: usize, v: u16| vec![(at, v as u8), (at + 1, (v >> 8) as u8)];
    let le32 = |at: usize, v: u32| (0..4).map(|k| (at + k, (v >> (8 * k)) as u8)).collect();
    vec![
        ("signature", vec![(510, 0)], BootProblem::Signature),
        ("jump", vec![(0, 0)], BootProblem::Jump(0)),
        (
            "bytes per sector",
            le16(11, 1000),
            BootProblem::BytesPerSector(1000),
        ),
        (
            "sectors per cluster",
            vec![(13, 3)],
            BootProblem::SectorsPerCluster(3),
        ),
        (
            "no sectors per cluster",
            vec![(13, 0)],
            BootProblem::SectorsPerCluster(0),
        ),
        (
            "reserved sectors",
            le16(14, 0),
            BootProblem::NoReservedSectors,
        ),
        ("FAT count", vec![(16, 0)], BootProblem::NoFats),
        ("total sectors", le32(32, 0), BootProblem::NoSectors),
        ("FAT size", le32(36, 0), BootProblem::NoFatSectors),
        (
            "root entries on FAT32",
            le16(17, 16),
            BootProblem::RootEntries {
                count: 16,
                fat32: true,
            },
        ),
        (
            "past the partition",
            le32(32, 70_561),
            BootProblem::BeyondPartition {
                volume: 70_561,
                partition: 70_560,
            },
        ),
        (
            "no data clusters",
            le32(36, 40_000),
            BootProblem::NoDataClusters {
                data_start: 32 + 2 * 40_000,
                sectors: 70_560,
            },
        ),
        (
            "FAT too small",
            le32(36, 100),
            BootProblem::FatTooSmall {
                fat_bytes: 51_200,
                needed: (70_560 - 32 - 200 + 2) * 4,
            },
        ),
        (
            "too many clusters for FAT16",
            [le16(17, 512), le16(22, 543)].concat(),
            BootProblem::TooManyClusters {
                clusters: 70_560 - 32 - 2 * 543 - 32,
                fat_type: FatType::Fat16,
            },
        ),
        ("version", le16(42, 1), BootProblem::Version(1)),
        ("root cluster", le32(44, 1), BootProblem::RootCluster(1)),
        (
            "root cluster past the end",
            le32(44, 70_000),
            BootProblem::RootCluster(70_000),
        ),
        (
            "active FAT",
            le16(40, 0x82),
            BootProblem::ActiveFat { active: 2, fats: 2 },
        ),
    ]
}

#[test]
fn each_boot_sector_check_fires() {
    let fx = fat32();
    for (name, writes, problem) in boot_cases() {
        let mut dev = PatchedDisk {
            bytes: &fx.image,
            patches: writes.into_iter().collect(),
        };
        assert_eq!(
            open(&mut dev).unwrap_err(),
            FsError::BootSector { lba: 0, problem },
            "{name}"
        );
    }
    // FAT12/16 need a fixed root directory.
    let fx = fat12();
    let mut dev = PatchedDisk {
        bytes: &fx.image,
        patches: BTreeMap::from([(17, 0), (18, 0)]),
    };
    assert_eq!(
        open(&mut dev).unwrap_err(),
        FsError::BootSector {
            lba: 0,
            problem: BootProblem::RootEntries {
                count: 0,
                fat32: false
            }
        }
    );
    let mut dev = MemDisk::new(&fx.image);
    assert_eq!(
        FatVolume::open(&mut dev, 0, 0).unwrap_err(),
        FsError::BootSector {
            lba: 0,
            problem: BootProblem::Empty
        }
    );
}

#[test]
fn messages_say_what_and_where() {
    let e = FsError::BootSector {
        lba: 2048,
        problem: BootProblem::BytesPerSector(1000),
    };
    assert_eq!(
        e.to_string(),
        "FAT: boot sector at LBA 2048: bytes per sector 1000 is not 512, 1024, 2048 or 4096"
    );
    let e = FsError::Chain {
        path: "guests/a.bin".into(),
        problem: ChainProblem::TooShort {
            clusters: 5,
            needed: 196,
        },
    };
    assert_eq!(
        e.to_string(),
        "FAT: \"guests/a.bin\": damaged cluster chain: the chain ends after 5 clusters but \
         the size needs 196"
    );
    let e = FsError::TooLarge {
        path: "guests/big.img".into(),
        size: 9_000_000,
        limit: 8_388_608,
    };
    assert_eq!(
        e.to_string(),
        "FAT: \"guests/big.img\" is 9000000 bytes, more than the 8388608 allowed"
    );
    assert_eq!(
        FsError::Disk(DiskError::Timeout { lba: 5 }).to_string(),
        "FAT: disk: read at LBA 5 timed out"
    );
}

/// Every operation on every path of `fx` on a damaged copy: none may
/// panic or hang; what they return does not matter.
fn exercise(dev: &mut dyn BlockDevice, fx: &Fixture) {
    let Ok(mut v) = open(dev) else {
        return;
    };
    let _ = v.read_dir("");
    for dir in &fx.dirs {
        let _ = v.read_dir(dir);
    }
    for (path, _) in &fx.files {
        let _ = v.read_file(path, 1 << 20);
        let _ = v.is_file(path);
        if let Ok(file) = v.open_file(path) {
            let mut buf = [0; 3000];
            for at in [0, file.size() / 2, file.size().saturating_sub(1)] {
                let n = v.read_at(&file, at, &mut buf);
                assert!(
                    n.is_err() || n.is_ok_and(|n| n as u64 <= file.size() - at.min(file.size()))
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16_384)) {
        let mut dev = MemDisk::new(&bytes);
        if let Ok(mut v) = open(&mut dev) {
            let _ = v.read_dir("");
            let _ = v.read_file("hypervisor.toml", 1 << 16);
            let _ = v.read_dir("a/b");
        }
    }

    /// Damage in the FAT12 image's boot sector, FATs and root directory
    /// (its first 33 sectors), and in the first data clusters.
    #[test]
    fn damaged_fat12_never_panics(
        writes in proptest::collection::vec((0usize..48 * 512, any::<u8>()), 1..16),
    ) {
        let fx = fat12();
        let mut dev = PatchedDisk { bytes: &fx.image, patches: writes.into_iter().collect() };
        exercise(&mut dev, fx);
    }

}

proptest! {
    // Fewer cases: each reads the whole 36 MB fixture.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same for FAT32: the FATs' first sectors (where the fixture's
    /// chains are), and the root and other directory clusters.
    #[test]
    fn damaged_fat32_never_panics(
        boot in proptest::collection::vec((0usize..512, any::<u8>()), 0..3),
        fat in proptest::collection::vec((FAT0..FAT0 + 4 * 512, any::<u8>()), 0..8),
        dirs in proptest::collection::vec((1118 * 512usize..1200 * 512, any::<u8>()), 0..8),
    ) {
        let fx = fat32();
        let patches = boot.into_iter().chain(fat).chain(dirs).collect();
        let mut dev = PatchedDisk { bytes: &fx.image, patches };
        exercise(&mut dev, fx);
    }
}
