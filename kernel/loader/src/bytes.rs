//! Little-endian reads from untrusted image bytes (every read is bounds
//! checked and returns `None` past the end), and little-endian writes into
//! the loader's own fixed-layout buffers.

/// `N` bytes at `offset`, or `None` where the image is shorter.
fn array<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// The byte at `offset`.
pub(crate) fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

/// The little-endian `u16` at `offset`.
pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array(bytes, offset).map(u16::from_le_bytes)
}

/// The little-endian `u32` at `offset`.
pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array(bytes, offset).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `offset`.
pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    array(bytes, offset).map(u64::from_le_bytes)
}

/// Copies `src` into `buf` at `offset`.
///
/// Only used on the loader's own buffers, whose layouts are fixed by the
/// boot protocols; an offset past the end is a bug in the loader (the tests
/// catch it through the debug assertion), and is otherwise dropped rather
/// than panicking.
pub(crate) fn put(buf: &mut [u8], offset: usize, src: &[u8]) {
    match buf.get_mut(offset..offset.saturating_add(src.len())) {
        Some(dst) => dst.copy_from_slice(src),
        None => debug_assert!(false, "loader buffer write at {offset:#x} out of range"),
    }
}

/// Stores `value` at `offset` in `buf`.
pub(crate) fn put_u8(buf: &mut [u8], offset: usize, value: u8) {
    put(buf, offset, &[value]);
}

/// Stores `value` little-endian at `offset` in `buf`.
pub(crate) fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    put(buf, offset, &value.to_le_bytes());
}

/// Stores `value` little-endian at `offset` in `buf`.
pub(crate) fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    put(buf, offset, &value.to_le_bytes());
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_none() {
        let b = [1, 2, 3, 4, 5];
        assert_eq!(u8_at(&b, 4), Some(5));
        assert_eq!(u8_at(&b, 5), None);
        assert_eq!(u16_at(&b, 3), Some(0x0504));
        assert_eq!(u16_at(&b, 4), None);
        assert_eq!(u32_at(&b, 1), Some(0x0504_0302));
        assert_eq!(u32_at(&b, 2), None);
        assert_eq!(u64_at(&b, 0), None);
        assert_eq!(u64_at(&b, usize::MAX), None);
    }

    #[test]
    fn writes_are_little_endian() {
        let mut b = [0u8; 8];
        put_u8(&mut b, 1, 0x12);
        put_u32(&mut b, 2, 0xaabb_ccdd);
        assert_eq!(b, [0, 0x12, 0xdd, 0xcc, 0xbb, 0xaa, 0, 0]);
        put_u64(&mut b, 0, 0x0102_0304_0506_0708);
        assert_eq!(b, [8, 7, 6, 5, 4, 3, 2, 1]);
    }
}
