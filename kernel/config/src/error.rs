//! [`ConfigError`], the one error type of the configuration, and the
//! translation of byte offsets into the 1-based line and column an editor
//! shows.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// A place in `hypervisor.toml`: 1-based line and column.
///
/// Columns count characters (Unicode scalar values), not bytes, so they
/// match what an editor shows for non-ASCII text; a tab counts as one. A
/// byte-order mark at the start of the file and the `\r` of a CRLF line end
/// are not counted, so a file gives the same positions whatever its line
/// ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line number, from 1.
    pub line: u32,
    /// Column number, from 1.
    pub column: u32,
}

/// One problem found in the configuration.
///
/// Its [`Display`](fmt::Display) form is the stable console line
/// `config: error: <file>:<line>:<column>: <message>`, which boot tests
/// match. The message names the guest (`guest 'web': ...`) or the
/// `hypervisor` table, the key, what is wrong with it and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in, as the caller named it to [`super::parse`].
    pub file: String,
    /// Line number, from 1.
    pub line: u32,
    /// Column number, from 1.
    pub column: u32,
    /// What is wrong and what to do, without the file and position.
    pub message: String,
}

impl ConfigError {
    /// An error at `at` in `file`.
    pub fn new(file: &str, at: Position, message: String) -> Self {
        Self {
            file: String::from(file),
            line: at.line,
            column: at.column,
            message,
        }
    }

    /// Where the error is.
    pub fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config: error: {}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl core::error::Error for ConfigError {}

/// Byte offset to [`Position`] translation for one text.
pub(super) struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset of the start of each line; the first line starts after a
    /// byte-order mark, if there is one.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let first = if text.starts_with('\u{feff}') { 3 } else { 0 };
        let mut starts = Vec::new();
        starts.push(first);
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Self { text, starts }
    }

    /// The position of byte `offset`; offsets past the end give the
    /// position just after the last character.
    pub(super) fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.text.len());
        // The last line start at or before `offset` (there is always one
        // unless `offset` falls inside a byte-order mark).
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1].min(offset);
        let before = match self.text.get(start..offset) {
            Some(s) => s,
            // Not a character boundary (spans from the parser always are);
            // count bytes rather than fail.
            None => {
                return Position {
                    line: saturate(line),
                    column: saturate(offset - start + 1),
                }
            }
        };
        let mut column = before.chars().count();
        // A CRLF line end: an error "at the end of the line" lands after the
        // `\r`; place it where it would be in the same file with LF ends.
        if before.ends_with('\r') && self.text[offset..].starts_with('\n') {
            column -= 1;
        }
        Position {
            line: saturate(line),
            column: saturate(column + 1),
        }
    }

    /// The position of the start of `span`.
    pub(super) fn at(&self, span: &Range<usize>) -> Position {
        self.position(span.start)
    }

    /// The source text of `span`, as written (quotes included for strings).
    pub(super) fn source(&self, span: &Range<usize>) -> &'t str {
        self.text.get(span.clone()).unwrap_or("")
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
