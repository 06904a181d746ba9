//! Host stand-ins for the binary's `memory` (physical memory and frames),
//! so the drivers' unit tests compile into the library's tests; the tests
//! use fake DMA memory and never call these.
#![allow(dead_code)]

use mm::addr::HostPhysAddr;

#[derive(Clone, Copy)]
pub struct PhysMap;

impl PhysMap {
    pub fn ptr(self, _: HostPhysAddr) -> *mut u8 {
        unreachable!("physical memory in a host test")
    }
    pub fn covers(self, _: HostPhysAddr, _: u64) -> bool {
        unreachable!("physical memory in a host test")
    }
}

pub fn phys() -> PhysMap {
    unreachable!("physical memory in a host test")
}
pub fn alloc_zeroed_frame() -> Result<HostPhysAddr, mm::MmError> {
    unreachable!("frames in a host test")
}
pub fn free_frame(_: HostPhysAddr) -> Result<(), mm::MmError> {
    unreachable!("frames in a host test")
}
pub fn alloc_block(_: u8) -> Result<HostPhysAddr, mm::MmError> {
    unreachable!("frames in a host test")
}
pub fn free_block(_: HostPhysAddr, _: u8) -> Result<(), mm::MmError> {
    unreachable!("frames in a host test")
}
