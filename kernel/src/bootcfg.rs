//! Where the configuration comes from: the FERROCFG partition on a disk the
//! kernel's own drivers found, or, for machines whose disk controller has
//! no driver yet, the boot ramdisk the bootloader loaded (a FAT image with
//! the same files). The log says which was used and why.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use config::files::ConfigFiles;
use disk::block::{BlockDevice, MemDisk};
use disk::fat::FatVolume;
use disk::{find_config_partition, ConfigFs};
use log::{error, info, warn};

use crate::drivers::Disk;

/// The configuration source: the first disk with a config partition, else
/// the ramdisk; `None` (reported) when there is neither.
pub fn open<'d>(
    disks: &'d mut [Disk],
    ramdisk: Option<&'static [u8]>,
) -> Option<Box<dyn ConfigFiles<'static> + 'd>> {
    let mut found = None;
    for (i, disk) in disks.iter_mut().enumerate() {
        match find_config_partition(&mut *disk.device) {
            Ok(Some(partition)) => {
                if found.is_none() {
                    found = Some((i, partition));
                } else {
                    warn!(
                        "config: {} also has a config partition ({}); using the first one found",
                        disk.name, partition.name
                    );
                }
            }
            Ok(None) => {}
            Err(e) => warn!("config: {}: {e}", disk.name),
        }
    }
    if let Some((i, partition)) = found {
        let disk = disks.get_mut(i)?;
        let source = format!("disk {} partition {}", disk.name, partition.name);
        return match ConfigFs::open(&mut *disk.device, &partition) {
            Ok(fs) => Some(Box::new(fs.with_source(source))),
            Err(e) => {
                error!("config: error: {source}: {e}");
                None
            }
        };
    }
    let Some(bytes) = ramdisk else {
        error!(
            "config: error: no disk holds a {} partition and there is no boot ramdisk: no guests to run",
            disk::gpt::CONFIG_PARTITION_NAME
        );
        return None;
    };
    info!(
        "config: no disk holds a {} partition; using the boot ramdisk",
        disk::gpt::CONFIG_PARTITION_NAME
    );
    ramdisk_files(bytes)
}

/// The boot ramdisk as a config source: the FAT image of the config
/// partition's files that xtask writes.
fn ramdisk_files(bytes: &'static [u8]) -> Option<Box<dyn ConfigFiles<'static>>> {
    // The in-memory disk lives as long as the kernel: the configuration is
    // read from it until the last guest stops.
    let disk: &'static mut MemDisk<'static> = Box::leak(Box::new(MemDisk::new(bytes)));
    let sectors = disk.sectors();
    match FatVolume::open(disk, 0, sectors) {
        Ok(volume) => Some(Box::new(
            ConfigFs::new(volume).with_source(String::from("the boot ramdisk")),
        )),
        Err(e) => {
            error!("config: error: the boot ramdisk is not a FAT image: {e}");
            None
        }
    }
}
