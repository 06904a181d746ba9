//! Host stand-ins for the binary's `arch` (port I/O), so the drivers'
//! unit tests compile into the library's tests. The tests reach hardware
//! only through the drivers' traits, with fakes; these panic if called.
#![allow(dead_code)]

pub unsafe fn inb(_: u16) -> u8 {
    unreachable!("port I/O in a host test")
}
pub unsafe fn outb(_: u16, _: u8) {
    unreachable!("port I/O in a host test")
}
pub unsafe fn inw(_: u16) -> u16 {
    unreachable!("port I/O in a host test")
}
pub unsafe fn outw(_: u16, _: u16) {
    unreachable!("port I/O in a host test")
}
pub unsafe fn inl(_: u16) -> u32 {
    unreachable!("port I/O in a host test")
}
pub unsafe fn outl(_: u16, _: u32) {
    unreachable!("port I/O in a host test")
}
