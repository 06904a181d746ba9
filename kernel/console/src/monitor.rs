//! [`Monitor`]: the monitor as the console drives it: bytes in (those the
//! router sends to the monitor), lines out, a prompt to keep on the last
//! line. It ties the [`LineEditor`], [`parse`] and [`execute`] together.

use alloc::format;
use alloc::string::String;

use crate::command::parse;
use crate::editor::{Edit, LineEditor, MONITOR_LINE_MAX};
use crate::exec::execute;
use crate::target::MonitorTarget;

/// The prompt before the monitor's input line.
pub const PROMPT: &str = "(ferrovisor) ";

/// The monitor: its line editor, and the commands it runs.
#[derive(Clone, Debug, Default)]
pub struct Monitor {
    editor: LineEditor,
}

impl Monitor {
    /// A monitor with an empty line of at most [`MONITOR_LINE_MAX`]
    /// characters.
    pub fn new() -> Self {
        Self {
            editor: LineEditor::new(MONITOR_LINE_MAX),
        }
    }

    /// The prompt line as it should be drawn now (for `Mux::set_prompt`).
    pub fn prompt(&self) -> String {
        format!("{PROMPT}{}", self.editor.line())
    }

    /// Takes `bytes` typed at the monitor; for each finished line, `out`
    /// gets the line as typed (after the prompt, so it stays on the
    /// screen), then the command's answer, one call per line. Returns
    /// whether the prompt changed.
    pub fn feed<T: MonitorTarget + ?Sized>(
        &mut self,
        bytes: &[u8],
        target: &mut T,
        out: &mut impl FnMut(&str),
    ) -> bool {
        let mut changed = false;
        for &byte in bytes {
            match self.editor.feed(byte) {
                Edit::Nothing => {}
                Edit::Changed => changed = true,
                Edit::TooLong => {
                    changed = true;
                    out(&format!(
                        "monitor: line longer than {} characters discarded; press Enter",
                        self.editor.max()
                    ));
                }
                Edit::Line(line) => {
                    changed = true;
                    out(&format!("{PROMPT}{line}"));
                    match parse(&line) {
                        Ok(None) => {}
                        Ok(Some(command)) => {
                            for answer in execute(&command, target) {
                                out(&answer);
                            }
                        }
                        Err(error) => out(&error.0),
                    }
                }
            }
        }
        changed
    }
}
