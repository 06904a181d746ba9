//! Guest images from arbitrary bytes: the Linux, Multiboot and flat loaders
//! return an image or an error, never panic, and never write outside the
//! guest's RAM (the memory refuses such writes, which would then surface as
//! errors, not panics).
#![no_main]

use addr::GuestPhysAddr;
use libfuzzer_sys::fuzz_target;
use loader::{FlatImage, FlatMode, LinuxImage, Module, MultibootImage, SliceMemory};

/// Guest RAM for each run: small, so an iteration stays fast.
const RAM: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mut ram = vec![0u8; RAM];
    let (selector, image) = data.split_first().map_or((0, data), |(s, rest)| (*s, rest));
    let mut mem = SliceMemory::new(&mut ram);
    let _ = loader::detect_format(image);
    match selector % 4 {
        0 => {
            let _ = loader::load_linux(
                &mut mem,
                &LinuxImage {
                    kernel: image,
                    initrd: Some(&b"initrd"[..]),
                    cmdline: "console=ttyS0",
                    platform: None,
                },
            );
        }
        1 => {
            let modules = [Module {
                data: &b"module"[..],
                cmdline: "m",
            }];
            let _ = loader::load_multiboot(
                &mut mem,
                &MultibootImage {
                    kernel: image,
                    cmdline: "x",
                    modules: &modules,
                },
            );
        }
        mode => {
            let address = u64::from(u16::from_le_bytes([selector, selector.wrapping_mul(7)])) << 4;
            let flat = FlatImage {
                data: image,
                load_address: GuestPhysAddr::new(address),
                entry: GuestPhysAddr::new(address),
                mode: match mode {
                    2 => FlatMode::Real,
                    _ => FlatMode::LONG,
                },
            };
            let _ = loader::load_flat(&mut mem, &flat);
        }
    }
});
