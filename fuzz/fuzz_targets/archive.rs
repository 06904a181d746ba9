//! The boot ramdisk archive from arbitrary bytes: validation never panics,
//! and every entry of an accepted archive lies inside the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(archive) = kernel::archive::Archive::new(data) {
        for entry in archive.entries() {
            let start = entry.data.as_ptr() as usize;
            let base = data.as_ptr() as usize;
            assert!(start >= base && start + entry.data.len() <= base + data.len());
            assert_eq!(archive.get(&entry.path).map(<[u8]>::len), Some(entry.data.len()));
        }
    }
});
