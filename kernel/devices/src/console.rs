//! The guest-console line buffer: turns the bytes a guest transmits on its
//! UART into whole, printable lines for the operator's console, so that
//! output from several guests interleaves by line rather than by byte and
//! no guest can send control or escape sequences to the operator's
//! terminal.
//!
//! Rules, in the order they apply to each byte:
//!
//! - `\n` ends the line (an empty one too: guests print blank lines).
//! - `\r` ends the line only if text follows it; a `\r` at the start of a
//!   line does nothing. So `\r\n`, `\n\r`, `\r\r\n` (a tty's ONLCR applied
//!   to `\r\n`) all end exactly one line, and `abc\rdef` (a redrawn progress
//!   line) shows as two lines, `abc` and `def`, rather than being lost.
//! - Tab and printable ASCII (0x20..=0x7E) are kept as they are; every other
//!   byte (controls, ESC, DEL, bytes >= 0x80) is shown as `\xNN` with two
//!   lowercase hex digits. A backslash is printable and kept, so a guest can
//!   print text that looks like an escape, but never an escape itself.
//! - A line longer than [`LINE_MAX`] characters (after escaping) is emitted
//!   in pieces of at most [`LINE_MAX`], split only between characters, never
//!   inside a `\xNN`.
//! - [`LineBuffer::flush`] emits a partial line; a line end that then
//!   arrives before any more text ends that line without emitting an empty
//!   one.

/// The longest line [`LineBuffer`] emits, in characters (all ASCII, so
/// also bytes).
pub const LINE_MAX: usize = 160;

/// Collects a guest's output bytes into lines; fixed capacity, no
/// allocation.
#[derive(Clone, Debug)]
pub struct LineBuffer {
    /// The line so far, already escaped: ASCII only.
    buf: [u8; LINE_MAX],
    /// Bytes used in `buf`.
    len: usize,
    /// A `\r` arrived and no byte since: the next text starts a new line.
    pending_cr: bool,
    /// [`flush`](Self::flush) emitted the line and nothing was added since:
    /// the line end that may follow belongs to that line.
    flushed: bool,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_MAX],
            len: 0,
            pending_cr: false,
            flushed: false,
        }
    }

    /// Adds one byte the guest transmitted; calls `emit` with each line
    /// this byte completes, without its line end (see the module
    /// documentation for the rules).
    pub fn push(&mut self, byte: u8, mut emit: impl FnMut(&str)) {
        match byte {
            b'\n' => {
                self.pending_cr = false;
                if self.flushed && self.len == 0 {
                    // The line was already emitted by `flush`.
                    self.flushed = false;
                } else {
                    self.emit_line(&mut emit);
                }
            }
            b'\r' => self.pending_cr = true,
            _ => {
                if self.pending_cr {
                    self.pending_cr = false;
                    if self.len > 0 {
                        self.emit_line(&mut emit);
                    }
                }
                self.flushed = false;
                self.append(byte, &mut emit);
            }
        }
    }

    /// Emits what is buffered as a line, if anything: the guest stopped
    /// mid-line (the caller decides when, for example after a quiet spell
    /// or before the guest is stopped).
    pub fn flush(&mut self, mut emit: impl FnMut(&str)) {
        self.pending_cr = false;
        if self.len > 0 {
            self.emit_line(&mut emit);
            self.flushed = true;
        }
    }

    /// Whether no text is buffered, so that [`flush`](Self::flush) would
    /// emit nothing.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `byte`, escaped if it is not safe to print, first emitting
    /// the line so far if the result would not fit.
    fn append(&mut self, byte: u8, emit: &mut impl FnMut(&str)) {
        let escaped;
        let text: &[u8] = if byte == b'\t' || (0x20..=0x7E).contains(&byte) {
            core::slice::from_ref(&byte)
        } else {
            escaped = [b'\\', b'x', hex_digit(byte >> 4), hex_digit(byte & 0xF)];
            &escaped
        };
        // `len` <= LINE_MAX and `text` is at most 4 bytes: no overflow.
        if self.len.saturating_add(text.len()) > LINE_MAX {
            self.emit_line(emit);
        }
        let end = self.len.saturating_add(text.len());
        if let Some(slot) = self.buf.get_mut(self.len..end) {
            slot.copy_from_slice(text);
            self.len = end;
        }
    }

    /// Emits the buffered line (possibly empty) and empties the buffer.
    fn emit_line(&mut self, emit: &mut impl FnMut(&str)) {
        let line = self.buf.get(..self.len).unwrap_or_default();
        // Only ASCII is ever stored, so this is always valid UTF-8.
        if let Ok(line) = core::str::from_utf8(line) {
            emit(line);
        }
        self.len = 0;
    }
}

/// The lowercase hex digit for the low four bits of `nibble`.
const fn hex_digit(nibble: u8) -> u8 {
    match nibble & 0xF {
        n @ 0..=9 => b'0'.wrapping_add(n),
        // 10..=15 here: the result is b'a'..=b'f'.
        n => b'a'.wrapping_add(n).wrapping_sub(10),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    /// Feeds `bytes` then, if `flush`, flushes; returns every emitted line.
    fn lines_of(bytes: &[u8], flush: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buffer = LineBuffer::new();
        for &byte in bytes {
            buffer.push(byte, |line| lines.push(line.to_string()));
        }
        if flush {
            buffer.flush(|line| lines.push(line.to_string()));
        }
        lines
    }

    #[test]
    fn newline_ends_a_line_and_nothing_is_emitted_before_it() {
        let mut buffer = LineBuffer::new();
        let mut lines = Vec::new();
        for &byte in b"hello" {
            buffer.push(byte, |line| lines.push(line.to_string()));
        }
        assert!(lines.is_empty());
        assert!(!buffer.is_empty());
        buffer.push(b'\n', |line| lines.push(line.to_string()));
        assert_eq!(lines, ["hello"]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn blank_lines_are_kept() {
        assert_eq!(lines_of(b"a\n\nb\n", false), ["a", "", "b"]);
    }

    #[test]
    fn crlf_and_lfcr_end_one_line_each() {
        assert_eq!(lines_of(b"one\r\ntwo\r\n", false), ["one", "two"]);
        assert_eq!(lines_of(b"one\n\rtwo\n\r", false), ["one", "two"]);
        assert_eq!(lines_of(b"one\n\rtwo\n\r", true), ["one", "two"]);
    }

    #[test]
    fn crlf_blank_lines_stay_single() {
        assert_eq!(lines_of(b"a\r\n\r\nb\r\n", false), ["a", "", "b"]);
        assert_eq!(lines_of(b"a\n\r\n\rb\n\r", false), ["a", "", "b"]);
    }

    #[test]
    fn cr_cr_lf_from_onlcr_ends_one_line() {
        assert_eq!(lines_of(b"boot\r\r\nok\r\r\n", false), ["boot", "ok"]);
    }

    #[test]
    fn lone_cr_followed_by_text_ends_the_line() {
        assert_eq!(lines_of(b"10%\r20%\r30%\n", false), ["10%", "20%", "30%"]);
    }

    #[test]
    fn cr_at_line_start_does_nothing() {
        assert_eq!(lines_of(b"\rx\n", false), ["x"]);
        assert_eq!(lines_of(b"\r", true), Vec::<String>::new());
    }

    #[test]
    fn tab_and_printable_ascii_are_kept() {
        let printable: Vec<u8> = (0x20..=0x7E).collect();
        let mut input = b"\tcol\t".to_vec();
        input.extend_from_slice(&printable);
        input.push(b'\n');
        let want = format!("\tcol\t{}", String::from_utf8(printable).unwrap());
        assert_eq!(lines_of(&input, false), [want]);
    }

    #[test]
    fn control_escape_and_high_bytes_are_shown_as_hex() {
        assert_eq!(
            lines_of(b"\x1b[2Jred\x07\x00\x08\x7f\x80\xff\n", false),
            ["\\x1b[2Jred\\x07\\x00\\x08\\x7f\\x80\\xff"]
        );
        // UTF-8 is not trusted either: each byte is escaped.
        assert_eq!(lines_of("é\n".as_bytes(), false), ["\\xc3\\xa9"]);
    }

    #[test]
    fn a_line_of_exactly_line_max_is_one_line() {
        let mut input = [b'a'; LINE_MAX].to_vec();
        input.extend_from_slice(b"\r\n");
        let lines = lines_of(&input, false);
        assert_eq!(lines, ["a".repeat(LINE_MAX)]);
    }

    #[test]
    fn long_lines_are_split_into_line_max_pieces() {
        let mut input = [b'b'; 2 * LINE_MAX + 5].to_vec();
        input.push(b'\n');
        let lines = lines_of(&input, false);
        assert_eq!(
            lines,
            ["b".repeat(LINE_MAX), "b".repeat(LINE_MAX), "b".repeat(5)]
        );
    }

    #[test]
    fn splitting_never_cuts_an_escape() {
        // 158 printable characters leave room for 2, not for a 4-character
        // escape: the escape starts the next piece.
        let mut input = [b'c'; LINE_MAX - 2].to_vec();
        input.extend_from_slice(b"\x1bz\n");
        let lines = lines_of(&input, false);
        assert_eq!(lines, ["c".repeat(LINE_MAX - 2), "\\x1bz".to_string()]);
        // Escapes only: 40 fit exactly in one piece.
        let lines = lines_of(&[0x01; LINE_MAX / 4 + 1], true);
        assert_eq!(lines, ["\\x01".repeat(LINE_MAX / 4), "\\x01".to_string()]);
        assert!(lines.iter().all(|line| line.len() <= LINE_MAX));
    }

    #[test]
    fn flush_emits_a_partial_line_once() {
        let mut buffer = LineBuffer::new();
        let mut lines = Vec::new();
        for &byte in b"login: " {
            buffer.push(byte, |line| lines.push(line.to_string()));
        }
        buffer.flush(|line| lines.push(line.to_string()));
        buffer.flush(|line| lines.push(line.to_string()));
        assert_eq!(lines, ["login: "]);
    }

    #[test]
    fn line_end_after_a_flush_does_not_add_an_empty_line() {
        let mut buffer = LineBuffer::new();
        let mut lines = Vec::new();
        let feed = |buffer: &mut LineBuffer, bytes: &[u8], lines: &mut Vec<String>| {
            for &byte in bytes {
                buffer.push(byte, |line| lines.push(line.to_string()));
            }
        };
        feed(&mut buffer, b"abc\r", &mut lines);
        buffer.flush(|line| lines.push(line.to_string()));
        feed(&mut buffer, b"\n\n", &mut lines);
        assert_eq!(lines, ["abc", ""], "the second newline is a blank line");

        lines.clear();
        feed(&mut buffer, b"part", &mut lines);
        buffer.flush(|line| lines.push(line.to_string()));
        feed(&mut buffer, b"rest\n", &mut lines);
        assert_eq!(lines, ["part", "rest"]);
    }

    #[test]
    fn flush_of_an_empty_buffer_emits_nothing() {
        assert_eq!(lines_of(b"", true), Vec::<String>::new());
        assert_eq!(lines_of(b"x\n", true), ["x"]);
    }

    proptest! {
        /// Whatever a guest sends, every emitted line fits [`LINE_MAX`] and
        /// holds only tab and printable ASCII, and no text is lost: the
        /// lines hold every non-line-end byte, escaped.
        #[test]
        fn any_output_gives_safe_bounded_lines(
            bytes in prop::collection::vec(any::<u8>(), 0..600)
        ) {
            let lines = lines_of(&bytes, true);
            for line in &lines {
                prop_assert!(line.len() <= LINE_MAX);
                prop_assert!(line.bytes().all(|b| b == b'\t' || (0x20..=0x7E).contains(&b)));
            }
            let shown: usize = lines.iter().map(String::len).sum();
            let expected: usize = bytes
                .iter()
                .map(|&b| match b {
                    b'\r' | b'\n' => 0,
                    b'\t' | 0x20..=0x7E => 1,
                    _ => 4,
                })
                .sum();
            prop_assert_eq!(shown, expected);
        }
    }
}
