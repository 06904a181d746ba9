//! [`Mux`]: the output side of the console. It owns one [`OutputRing`]
//! per source (each guest, the hypervisor's log, the console's own lines)
//! and decides what goes to the physical port next, a bounded number of
//! bytes per call, so the CPU that drains the port never waits on it for
//! long and no exit handler ever waits on it at all.
//!
//! # What the screen shows
//!
//! - **Monitor in focus** (the default): every source, by whole lines.
//!   A guest's line is shown as `[name] text` (the form the kernel has
//!   always printed), made safe to print (see [`crate::text`]); a host
//!   source's line (the log, monitor answers, focus announcements) is
//!   shown as it is. The monitor's prompt (set with [`Mux::set_prompt`])
//!   stays on the last line: a line from any source first erases it
//!   (`\r` and `ESC [ K`), and it is drawn again once nothing else waits.
//! - **A guest in focus**: that guest's output goes out raw, byte for
//!   byte and without a prefix, as soon as it arrives (the operator is
//!   attached to its terminal: a shell's line editing and a full-screen
//!   program work, as in Xen's console switching). The other guests'
//!   output is not shown: it is taken from their queues (so they do not
//!   fill up and count drops) and stays in their replay tails for the
//!   monitor's `log`. Host sources are still shown, by whole lines, but
//!   only where they cannot cut the guest's line: when the guest's output
//!   last ended a line, or after the guest has been quiet for the pause.
//!
//! # Lines
//!
//! A line ends at `\n`; `\r\n`, `\r\r\n` and `\n\r` end one line; a `\r`
//! followed by text ends the line too (a redrawn progress line shows as
//! successive lines); a `\r` at the start of a line does nothing. A line
//! longer than [`LINE_MAX`] bytes is shown in pieces of [`LINE_MAX`]. A
//! partial line (a shell prompt) is shown once its source has written
//! nothing for the pause given to [`Mux::new`] (in TSC ticks, measured
//! from the source's last write to the `now` passed in); what the source
//! writes after that starts a new line. Every line sent ends with `\r\n`.
//!
//! # Fairness
//!
//! Sources take turns, one line (or, for the guest in focus, one
//! [`RAW_TURN`]-byte piece) per turn, so a guest that prints without pause
//! delays another's line by at most one of its own lines per round. A
//! line, once started, is finished before anything else goes out, so
//! lines never interleave mid-line, however small the per-call budget.
//!
//! One order is kept across the turns, with the monitor in focus: a host
//! line goes out only after every guest byte written before it, and a
//! guest's bytes only after every host line written before them, so the
//! log's "guest g started" comes before g's first words and "guest g:
//! stopped" after its last; and host lines of different sources (the
//! log, the monitor) go out in the order written. Guests among
//! themselves take turns.
//! A guest's partial line holds host lines back only until the pause.
//!
//! A guest's line is cut into pieces of [`LINE_MAX`]; a host line, the
//! hypervisor's own trusted text, into pieces of [`HOST_LINE_MAX`].

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use crate::ring::OutputRing;
use crate::text::escape_into;

/// The longest piece of a line shown at once, in bytes of source output
/// (before escaping and the prefix).
pub const LINE_MAX: usize = 160;

/// The longest piece of a host line (the log, the monitor) shown at once:
/// the hypervisor's own lines are trusted and kept whole.
pub const HOST_LINE_MAX: usize = 1024;

/// The most bytes of the focused guest's raw output sent in one turn.
pub const RAW_TURN: usize = 64;

/// Erases the terminal's current line: carriage return, then CSI K
/// (erase to the end of the line, ECMA-48).
const ERASE_LINE: &[u8] = b"\r\x1b[K";

/// A source of output, as [`Mux::add_source`] numbered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(u32);

impl SourceId {
    /// The number, for logs and tables.
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// What a source is, which decides how its lines are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A guest: untrusted bytes, shown escaped and prefixed with the
    /// guest's name, or raw while it has the focus.
    Guest,
    /// The hypervisor itself (its log, the console's own lines): trusted
    /// text, shown as it is, by whole lines, in every focus.
    Host,
}

/// Where the console's input goes, and so what the screen shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// The monitor: all sources are shown, by lines.
    Monitor,
    /// One guest: its output is shown raw.
    Guest(SourceId),
}

/// One source: its ring and how to show it.
#[derive(Clone, Debug)]
struct Source {
    id: SourceId,
    name: String,
    kind: SourceKind,
    ring: OutputRing,
    /// `now` of the last write, for the partial-line pause.
    last_write: u64,
    /// Bytes queued in all (the ring's `pending` holds the newest).
    queued: u64,
    /// Its writer is ready to run but not running (a preempted vCPU):
    /// its silence is not a pause, so its partial line waits.
    held: bool,
    /// A partial line of its was shown after the pause: a line end that
    /// comes next ends that line rather than making an empty one.
    shown_partial: bool,
    /// Where the order marks change: (stream position, epoch). For a
    /// guest, the epoch its bytes from that position on were written in;
    /// for a host source, the tag of the line written at that position.
    marks: VecDeque<(u64, u64)>,
}

impl Source {
    /// Stream position of the oldest pending byte.
    fn taken(&self) -> u64 {
        self.queued.saturating_sub(self.ring.pending_len() as u64)
    }

    /// Forgets the marks of bytes already taken.
    fn forget_taken(&mut self) {
        let taken = self.taken();
        while self.marks.get(1).is_some_and(|&(start, _)| start <= taken) {
            self.marks.pop_front();
        }
    }

    /// The epoch (guest) or tag (host) of the oldest pending byte.
    fn front_mark(&self) -> Option<u64> {
        if self.ring.is_empty() {
            return None;
        }
        self.marks.front().map(|&(_, epoch)| epoch)
    }
}

/// The multiplexer; see the module documentation.
#[derive(Clone, Debug)]
pub struct Mux {
    sources: Vec<Source>,
    next_id: u32,
    /// Index into `sources` of the source whose turn is next.
    cursor: usize,
    focus: Focus,
    /// TSC ticks a source must be quiet before its partial line is shown.
    pause_ticks: u64,
    /// Bytes committed to the port, of which `staged_sent` went out.
    staged: Vec<u8>,
    staged_sent: usize,
    /// The last byte committed to the port ended a line.
    at_line_start: bool,
    /// The prompt the monitor wants on the last line.
    prompt: Vec<u8>,
    /// What of the prompt is on the screen now, if it is drawn.
    shown_prompt: Option<Vec<u8>>,
    /// Host lines written so far: a guest's bytes written before host
    /// line `k` have an epoch of at most `k`, so that line waits for them.
    epoch: u64,
}

impl Mux {
    /// A multiplexer with no sources and the monitor in focus; a partial
    /// line is shown after its source is quiet for `pause_ticks`.
    pub fn new(pause_ticks: u64) -> Self {
        Self {
            sources: Vec::new(),
            next_id: 0,
            cursor: 0,
            focus: Focus::Monitor,
            pause_ticks,
            staged: Vec::new(),
            staged_sent: 0,
            at_line_start: true,
            prompt: Vec::new(),
            shown_prompt: None,
            epoch: 0,
        }
    }

    /// Adds a source named `name` (a guest's name is its line prefix)
    /// with its ring; it takes its turn after the existing ones.
    pub fn add_source(&mut self, name: &str, kind: SourceKind, ring: OutputRing) -> SourceId {
        let id = SourceId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.sources.push(Source {
            id,
            name: String::from(name),
            kind,
            ring,
            last_write: 0,
            queued: 0,
            held: false,
            shown_partial: false,
            marks: VecDeque::new(),
        });
        id
    }

    /// Removes a source, returning its ring (pending output and replay
    /// tail); if it had the focus, the monitor gets it.
    pub fn remove_source(&mut self, id: SourceId) -> Option<OutputRing> {
        let index = self.sources.iter().position(|s| s.id == id)?;
        let source = self.sources.remove(index);
        if index < self.cursor {
            self.cursor = self.cursor.saturating_sub(1);
        }
        if self.focus == Focus::Guest(id) {
            self.focus = Focus::Monitor;
        }
        Some(source.ring)
    }

    /// Queues `bytes` from source `id` at time `now`; returns how many fit
    /// (the rest are dropped and counted by the ring). Never blocks.
    pub fn write(&mut self, id: SourceId, bytes: &[u8], now: u64) -> usize {
        let epoch = self.epoch;
        let Some(source) = self.source_mut(id) else {
            return 0;
        };
        source.last_write = now;
        let host = source.kind == SourceKind::Host;
        if host || source.marks.back().map(|&(_, e)| e) != Some(epoch) {
            source.marks.push_back((source.queued, epoch));
        }
        let taken = source.ring.write(bytes);
        source.queued = source.queued.saturating_add(taken as u64);
        if host {
            self.epoch = self.epoch.wrapping_add(1);
        }
        taken
    }

    /// Marks source `id`'s writer as waiting for a CPU (`held`: a guest
    /// preempted at the end of its slice) or running again. While held,
    /// its partial line is not shown however long it is quiet: a guest
    /// cut off mid-line by the scheduler has not paused. Released at
    /// `now`, its pause counts from then.
    pub fn hold(&mut self, id: SourceId, held: bool, now: u64) {
        if let Some(source) = self.source_mut(id) {
            if source.held && !held {
                source.last_write = now;
            }
            source.held = held;
        }
    }

    /// Source `id`'s ring (drop count, replay tail).
    pub fn ring(&self, id: SourceId) -> Option<&OutputRing> {
        self.sources.iter().find(|s| s.id == id).map(|s| &s.ring)
    }

    /// Source `id`'s name.
    pub fn name(&self, id: SourceId) -> Option<&str> {
        self.sources
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.name.as_str())
    }

    /// The source named `name`, if any.
    pub fn find(&self, name: &str) -> Option<SourceId> {
        self.sources.iter().find(|s| s.name == name).map(|s| s.id)
    }

    /// Bytes dropped by all sources together.
    pub fn dropped(&self) -> u64 {
        self.sources
            .iter()
            .fold(0u64, |sum, s| sum.saturating_add(s.ring.dropped()))
    }

    /// The focus: what the screen shows (see the module documentation).
    pub fn focus(&self) -> Focus {
        self.focus
    }

    /// Changes what the screen shows. The monitor's prompt, if drawn, is
    /// erased first. A focus on a source that is not a guest of this
    /// multiplexer is taken as the monitor.
    pub fn set_focus(&mut self, focus: Focus) {
        let focus = match focus {
            Focus::Guest(id)
                if self
                    .sources
                    .iter()
                    .any(|s| s.id == id && s.kind == SourceKind::Guest) =>
            {
                focus
            }
            _ => Focus::Monitor,
        };
        if focus != self.focus {
            self.erase_prompt();
        }
        self.focus = focus;
    }

    /// Sets the monitor's prompt line (the prompt and what is typed so
    /// far), drawn on the last line while the monitor has the focus. It is
    /// shown escaped, like a guest's line.
    pub fn set_prompt(&mut self, prompt: &[u8]) {
        self.prompt.clear();
        escape_into(prompt, &mut self.prompt);
    }

    /// Whether anything waits to go out: a line in progress, a source's
    /// bytes, or a prompt to draw.
    pub fn has_output(&self) -> bool {
        self.staged_sent < self.staged.len()
            || self.sources.iter().any(|s| !s.ring.is_empty())
            || self.prompt_pending()
    }

    /// Sends at most `max_bytes` to the port through `out` (which may be
    /// called several times): the rest of the line in progress, then
    /// whole lines in turn (see the module documentation). Returns the
    /// bytes sent; 0 when nothing is ready at `now`.
    pub fn next_chunk(&mut self, now: u64, max_bytes: usize, out: &mut impl FnMut(&[u8])) -> usize {
        let mut sent = 0usize;
        while sent < max_bytes {
            if self.staged_sent >= self.staged.len() {
                self.staged.clear();
                self.staged_sent = 0;
                if !self.stage_next(now) {
                    break;
                }
                continue;
            }
            let room = max_bytes.saturating_sub(sent);
            let end = self.staged.len().min(self.staged_sent.saturating_add(room));
            if let Some(piece) = self.staged.get(self.staged_sent..end) {
                out(piece);
                sent = sent.saturating_add(piece.len());
            }
            self.staged_sent = end;
        }
        sent
    }

    fn source_mut(&mut self, id: SourceId) -> Option<&mut Source> {
        self.sources.iter_mut().find(|s| s.id == id)
    }

    /// Commits the erasure of the drawn prompt, if any.
    fn erase_prompt(&mut self) {
        if self.shown_prompt.take().is_some() {
            self.staged.extend_from_slice(ERASE_LINE);
            self.at_line_start = true;
        }
    }

    /// Commits the next thing to send to `staged`; false if nothing is
    /// ready.
    fn stage_next(&mut self, now: u64) -> bool {
        // Nothing queued anywhere, the usual state once a burst is out:
        // no source's turn to look at.
        if self.sources.iter().all(|s| s.ring.is_empty()) && !self.prompt_pending() {
            return false;
        }
        let focused = match self.focus {
            Focus::Guest(id) => Some(id),
            Focus::Monitor => None,
        };
        // Other guests' output is not shown while one has the focus; it
        // stays in their replay tails.
        if let Some(focused) = focused {
            for source in &mut self.sources {
                if source.kind == SourceKind::Guest && source.id != focused {
                    let all = source.ring.pending_len();
                    source.ring.discard(all);
                }
            }
        }
        // May host lines go out now without cutting the focused guest's
        // line?
        let host_allowed = self.at_line_start
            || focused
                .and_then(|id| self.sources.iter().find(|s| s.id == id))
                .is_none_or(|g| g.ring.is_empty() && self.quiet(g.last_write, now));
        // A host line (the log saying a guest stopped) goes out after every
        // guest byte written before it, whatever the turns.
        for source in &mut self.sources {
            source.forget_taken();
        }
        let oldest_guest = if focused.is_none() {
            self.sources
                .iter()
                .filter(|s| s.kind == SourceKind::Guest)
                .filter_map(Source::front_mark)
                .min()
        } else {
            None
        };
        // Host lines of different sources go out in the order written.
        let oldest_host = self
            .sources
            .iter()
            .filter(|s| s.kind == SourceKind::Host)
            .filter_map(Source::front_mark)
            .min();
        let count = self.sources.len();
        for step in 0..count {
            let index = self
                .cursor
                .wrapping_add(step)
                .checked_rem(count)
                .unwrap_or(0);
            let Some(source) = self.sources.get_mut(index) else {
                continue;
            };
            let is_focused = Some(source.id) == focused;
            let mut piece = Vec::new();
            let ended = if is_focused {
                let n = source.ring.pending_len().min(RAW_TURN);
                source.ring.take_into(n, &mut piece);
                None
            } else if source.kind == SourceKind::Host
                && (!host_allowed
                    || source.front_mark().is_some_and(|tag| {
                        oldest_guest.is_some_and(|guest| guest <= tag)
                            || oldest_host.is_some_and(|host| host < tag)
                    }))
            {
                continue;
            } else if source.kind == SourceKind::Guest
                && source
                    .front_mark()
                    .zip(oldest_host)
                    .is_some_and(|(epoch, host)| host < epoch)
            {
                // A host line written before this guest's bytes goes first.
                continue;
            } else {
                let paused =
                    !source.held && now.saturating_sub(source.last_write) >= self.pause_ticks;
                if core::mem::take(&mut source.shown_partial) {
                    // The line shown early ends here, not again.
                    match (source.ring.peek(0), source.ring.peek(1)) {
                        (Some(b'\n'), _) => source.ring.discard(1),
                        (Some(b'\r'), Some(b'\n')) => source.ring.discard(2),
                        // Undecided: look again with the next byte.
                        (Some(b'\r'), None) | (None, _) => source.shown_partial = true,
                        _ => {}
                    }
                }
                let max = match source.kind {
                    SourceKind::Guest => LINE_MAX,
                    SourceKind::Host => HOST_LINE_MAX,
                };
                match take_line(&mut source.ring, paused, max, &mut piece) {
                    Some(ended) => {
                        // A partial line let out by the pause (not a full
                        // piece of a long line).
                        source.shown_partial = !ended && piece.len() < max;
                        Some(ended)
                    }
                    None => continue,
                }
            };
            if piece.is_empty() && ended.is_none() {
                continue;
            }
            self.cursor = index.wrapping_add(1);
            let (kind, name_prefix) = (source.kind, source.name.clone());
            self.stage_piece(kind, &name_prefix, &piece, ended.is_some());
            return true;
        }
        // Nothing else: draw the monitor's prompt.
        if self.prompt_pending() {
            if self.prompt.is_empty() {
                self.erase_prompt();
                return !self.staged.is_empty();
            }
            match self.shown_prompt.take() {
                Some(shown) if self.prompt.starts_with(&shown) => {
                    let new = self.prompt.get(shown.len()..).unwrap_or_default();
                    self.staged.extend_from_slice(new);
                }
                shown => {
                    if shown.is_none() && !self.at_line_start {
                        self.staged.extend_from_slice(b"\r\n");
                    }
                    self.staged.extend_from_slice(ERASE_LINE);
                    self.staged.extend_from_slice(&self.prompt);
                }
            }
            self.shown_prompt = Some(self.prompt.clone());
            self.at_line_start = self.prompt.is_empty();
            return !self.staged.is_empty();
        }
        false
    }

    /// Whether the prompt on the screen differs from the one wanted (no
    /// prompt drawn counts as an empty one); only the monitor has one.
    fn prompt_pending(&self) -> bool {
        self.focus == Focus::Monitor
            && match &self.shown_prompt {
                Some(shown) => *shown != self.prompt,
                None => !self.prompt.is_empty(),
            }
    }

    /// Whether a source last written at `last_write` has been quiet for
    /// the pause at `now`.
    fn quiet(&self, last_write: u64, now: u64) -> bool {
        now.saturating_sub(last_write) >= self.pause_ticks
    }

    /// Commits one piece: a line (`Some` line end) or the focused guest's
    /// raw bytes.
    fn stage_piece(&mut self, kind: SourceKind, name: &str, piece: &[u8], line: bool) {
        if !line {
            // Raw output of the guest in focus.
            self.staged.extend_from_slice(piece);
            if let Some(&last) = piece.last() {
                self.at_line_start = last == b'\n';
            }
            return;
        }
        if self.shown_prompt.is_some() {
            self.erase_prompt();
        } else if !self.at_line_start {
            self.staged.extend_from_slice(b"\r\n");
        }
        match kind {
            SourceKind::Guest => {
                self.staged.push(b'[');
                self.staged.extend_from_slice(name.as_bytes());
                self.staged.extend_from_slice(b"] ");
                escape_into(piece, &mut self.staged);
            }
            SourceKind::Host => self.staged.extend_from_slice(piece),
        }
        self.staged.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }
}

/// Takes the next line from `ring` into `out`, without its line end.
/// Returns `Some(true)` for a line that ended, `Some(false)` for a piece
/// of [`LINE_MAX`] or a partial line released because the source is
/// `paused`, `None` if no line is ready (line ends that start a line and
/// end nothing are consumed on the way).
fn take_line(ring: &mut OutputRing, paused: bool, max: usize, out: &mut Vec<u8>) -> Option<bool> {
    loop {
        let mut index = 0usize;
        let found = loop {
            if index >= max {
                // A full piece with no end in sight.
                break Some((max, max, false));
            }
            match ring.peek(index) {
                None => break None,
                Some(b'\n') => break Some((index, index.saturating_add(1), true)),
                Some(b'\r') => {
                    // A run of `\r`: what follows decides.
                    let mut after = index.saturating_add(1);
                    while ring.peek(after) == Some(b'\r') {
                        after = after.saturating_add(1);
                    }
                    match ring.peek(after) {
                        Some(b'\n') => break Some((index, after.saturating_add(1), true)),
                        Some(_) => break Some((index, after, true)),
                        // Undecided until the next byte or the pause.
                        None if paused => break Some((index, after, true)),
                        None => break None,
                    }
                }
                Some(_) => index = index.saturating_add(1),
            }
        };
        match found {
            Some((0, consumed, true)) if ring.peek(0) == Some(b'\r') => {
                // `\r` at the start of a line does nothing.
                ring.discard(consumed);
                continue;
            }
            Some((len, consumed, ended)) => {
                ring.take_into(len, out);
                ring.discard(consumed.saturating_sub(len));
                return Some(ended);
            }
            None if paused && !ring.is_empty() => {
                let len = ring.pending_len();
                ring.take_into(len, out);
                return Some(false);
            }
            None => return None,
        }
    }
}

/// Splits a replay tail into lines by the live console's rules (a
/// trailing partial line included), calling `line` with each.
pub(crate) fn take_line_for_replay(bytes: &[u8], line: &mut impl FnMut(&[u8])) {
    let mut ring = OutputRing::new(bytes.len(), 0);
    ring.write(bytes);
    let mut out = Vec::new();
    while take_line(&mut ring, true, LINE_MAX, &mut out).is_some() {
        line(&out);
        out.clear();
    }
}
