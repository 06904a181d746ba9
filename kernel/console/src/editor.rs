//! [`LineEditor`]: the monitor's input line. It takes the bytes routed to
//! the monitor one at a time and yields a command line on Enter.
//!
//! - Printable ASCII (0x20..=0x7E) is added to the line.
//! - Backspace (0x08) and DEL (0x7F) remove the last character; Ctrl-U
//!   and Ctrl-C empty the line.
//! - Enter is `\r` or `\n`; `\r\n` counts once.
//! - ESC sequences are swallowed whole: `ESC [` (CSI) up to its final byte
//!   (0x40..=0x7E), `ESC O` and the byte after it (SS3, sent by some
//!   terminals for arrow and function keys), `ESC` and any other byte
//!   (Alt-key).
//! - Every other byte (controls, bytes >= 0x80) is ignored.
//! - A line that would grow past the limit is refused: one
//!   [`Edit::TooLong`], the line is emptied and input is ignored until the
//!   next Enter (so the rest of an over-long paste is not run as a
//!   command).
//!
//! Memory is bounded by the limit whatever arrives.

use alloc::string::String;

/// The longest monitor line, in characters.
pub const MONITOR_LINE_MAX: usize = 120;

/// What one byte did to the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Nothing visible changed.
    Nothing,
    /// The line changed: redraw the prompt with [`LineEditor::line`].
    Changed,
    /// Enter: the finished line (possibly empty); the editor is empty again.
    Line(String),
    /// The line passed the limit and was discarded; input is ignored until
    /// Enter.
    TooLong,
}

/// Where the editor is within an escape sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Started,
    /// Inside `ESC [`, until a final byte.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// The monitor's line editor; see the module documentation.
#[derive(Clone, Debug)]
pub struct LineEditor {
    line: String,
    max: usize,
    escape: Escape,
    /// The line passed the limit; ignore input until Enter.
    refused: bool,
    /// The last byte was `\r`, so a `\n` now is the same Enter.
    after_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new(MONITOR_LINE_MAX)
    }
}

impl LineEditor {
    /// An empty editor taking lines of at most `max` characters.
    pub fn new(max: usize) -> Self {
        Self {
            line: String::new(),
            max,
            escape: Escape::None,
            refused: false,
            after_cr: false,
        }
    }

    /// The line typed so far.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The longest line taken.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Whether input is being ignored until Enter after a refused line.
    pub const fn is_refusing(&self) -> bool {
        self.refused
    }

    /// Takes one byte.
    pub fn feed(&mut self, byte: u8) -> Edit {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        match self.escape {
            Escape::Started => {
                self.escape = match byte {
                    b'[' => Escape::Csi,
                    b'O' => Escape::Ss3,
                    _ => Escape::None,
                };
                return Edit::Nothing;
            }
            Escape::Csi => {
                // Parameter and intermediate bytes are 0x20..=0x3F; a final
                // byte, or anything that cannot be in a CSI, ends it.
                if !(0x20..=0x3F).contains(&byte) {
                    self.escape = Escape::None;
                }
                return Edit::Nothing;
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                return Edit::Nothing;
            }
            Escape::None => {}
        }
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\n' && after_cr {
                    return Edit::Nothing;
                }
                self.after_cr = byte == b'\r';
                if core::mem::replace(&mut self.refused, false) {
                    self.line.clear();
                    return Edit::Changed;
                }
                Edit::Line(core::mem::take(&mut self.line))
            }
            0x1B => {
                self.escape = Escape::Started;
                Edit::Nothing
            }
            _ if self.refused => Edit::Nothing,
            0x08 | 0x7F => match self.line.pop() {
                Some(_) => Edit::Changed,
                None => Edit::Nothing,
            },
            0x03 | 0x15 => {
                if self.line.is_empty() {
                    Edit::Nothing
                } else {
                    self.line.clear();
                    Edit::Changed
                }
            }
            0x20..=0x7E => {
                if self.line.len() >= self.max {
                    self.line.clear();
                    self.refused = true;
                    Edit::TooLong
                } else {
                    self.line.push(char::from(byte));
                    Edit::Changed
                }
            }
            _ => Edit::Nothing,
        }
    }
}
