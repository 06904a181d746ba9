//! Making untrusted bytes safe to print: tab and printable ASCII pass,
//! every other byte becomes `\xNN` (the same rule as the guest UART's
//! line buffer in `devices::console`), so nothing a guest prints can move
//! the operator's cursor, change colours or answer for the terminal.

use alloc::vec::Vec;

/// Appends `bytes` to `out`, escaping everything but tab and printable
/// ASCII as `\xNN` (lowercase hex).
pub fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        if byte == b'\t' || (0x20..=0x7E).contains(&byte) {
            out.push(byte);
        } else {
            out.extend_from_slice(&[b'\\', b'x', hex_digit(byte >> 4), hex_digit(byte)]);
        }
    }
}

/// The lowercase hex digit for the low four bits of `nibble`.
pub(crate) const fn hex_digit(nibble: u8) -> u8 {
    match nibble & 0xF {
        n @ 0..=9 => b'0'.wrapping_add(n),
        // 10..=15 here: the result is b'a'..=b'f'.
        n => b'a'.wrapping_add(n).wrapping_sub(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_high_bytes_are_escaped() {
        let mut out = Vec::new();
        escape_into(b"a\tb\x1b[2J\x7f\x80\xff\\", &mut out);
        assert_eq!(out, b"a\tb\\x1b[2J\\x7f\\x80\\xff\\");
    }
}
