//! A disk from arbitrary bytes: the GPT reader and the FAT reader (on the
//! config partition it finds, or on the whole disk as the ramdisk path
//! does) never panic or hang, and reads stay within their size limit.
#![no_main]

use disk::block::{BlockDevice, MemDisk};
use disk::fat::FatVolume;
use disk::find_config_partition;
use libfuzzer_sys::fuzz_target;

/// The largest file the target asks for.
const LIMIT: usize = 64 << 10;

fn walk(volume: &mut FatVolume<'_>, path: &str, depth: u32) {
    let Ok(entries) = volume.read_dir(path) else {
        return;
    };
    for entry in entries.iter().take(16) {
        let child = if path.is_empty() {
            entry.name.clone()
        } else {
            format!("{path}/{}", entry.name)
        };
        if entry.is_dir {
            if depth < 3 {
                walk(volume, &child, depth + 1);
            }
        } else if let Ok(data) = volume.read_file(&child, LIMIT) {
            assert!(data.len() <= LIMIT);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut disk = MemDisk::new(data);
    if let Ok(Some(partition)) = find_config_partition(&mut disk) {
        if let Ok(mut volume) = FatVolume::open(&mut disk, partition.first_lba, partition.sectors())
        {
            walk(&mut volume, "", 0);
        }
    }
    let sectors = disk.sectors();
    if let Ok(mut volume) = FatVolume::open(&mut disk, 0, sectors) {
        let _ = volume.is_file("hypervisor.toml");
        walk(&mut volume, "", 0);
    }
});
