//! The monitor's commands: [`Command`] with typed arguments, [`parse`]
//! from a command line, and the [`HELP`] text.
//!
//! Words are separated by spaces or tabs; the command word is taken in
//! either case, guest names exactly as configured (the executor checks
//! they exist). Numbers are decimal or `0x`-hex (`_` allowed between
//! digits), checked against each argument's range. Every mistake is one
//! [`ParseError`] line saying what was expected.

use alloc::format;
use alloc::string::String;
use core::fmt;

/// The `mem` length when none is given, in bytes.
pub const MEM_DEFAULT_LEN: u64 = 0x100;
/// The longest `mem` dump, in bytes.
pub const MEM_MAX_LEN: u64 = 0x1000;
/// The highest vCPU number `regs` takes (the config allows 64 vCPUs).
pub const VCPU_MAX: u32 = 63;

/// The monitor's help text, one entry a line.
pub const HELP: &[&str] = &[
    "commands:",
    "  help                        this list",
    "  list                        the guests: state, vCPUs, CPUs, memory, uptime, exits",
    "  info <guest>                one guest's configuration and state",
    "  regs <guest> [vcpu]         a vCPU's registers (vcpu 0 by default)",
    "  mem <guest> <gpa> [len]     hex dump of guest memory (len 256 by default, at most 4096)",
    "  exits <guest>               a guest's VM exits by reason",
    "  log <guest>                 replay a guest's recent console output",
    "  pause <guest>               stop running a guest's vCPUs, keeping its state",
    "  resume <guest>              run a paused guest again",
    "  stop <guest>                stop a guest for good, freeing its memory",
    "  restart <guest>             stop a guest and boot it again",
    "  stats                       host figures: CPUs, memory, console",
    "  loglevel <level>            error, warn, info, debug or trace",
    "  poweroff                    stop every guest and power the machine off",
    "numbers are decimal or 0x-hex; the hot key pressed 3 times switches the console",
];

/// A log level, from least to most detailed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The normal level.
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Every level, least detailed first.
    pub const ALL: [Self; 5] = [
        Self::Error,
        Self::Warn,
        Self::Info,
        Self::Debug,
        Self::Trace,
    ];

    /// The level's name as typed.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// A monitor command with its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `help`
    Help,
    /// `list`
    List,
    /// `info <guest>`
    Info(String),
    /// `regs <guest> [vcpu]`
    Regs {
        /// The guest's name.
        guest: String,
        /// The vCPU, 0 if not given.
        vcpu: u32,
    },
    /// `mem <guest> <gpa> [len]`: `gpa + len` does not overflow and `len`
    /// is 1..=[`MEM_MAX_LEN`].
    Mem {
        /// The guest's name.
        guest: String,
        /// The first guest-physical address.
        gpa: u64,
        /// Bytes to dump.
        len: u64,
    },
    /// `exits <guest>`
    Exits(String),
    /// `log <guest>`
    Log(String),
    /// `pause <guest>`
    Pause(String),
    /// `resume <guest>`
    Resume(String),
    /// `stop <guest>`
    Stop(String),
    /// `restart <guest>`
    Restart(String),
    /// `stats`
    Stats,
    /// `loglevel <level>`
    LogLevel(LogLevel),
    /// `poweroff`
    Poweroff,
}

/// Why a line is not a command: one line for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The usage line of each command that takes arguments.
fn usage(command: &str) -> &'static str {
    match command {
        "info" => "info <guest>",
        "regs" => "regs <guest> [vcpu]",
        "mem" => "mem <guest> <gpa> [len]",
        "exits" => "exits <guest>",
        "log" => "log <guest>",
        "pause" => "pause <guest>",
        "resume" => "resume <guest>",
        "stop" => "stop <guest>",
        "restart" => "restart <guest>",
        "loglevel" => "loglevel <error|warn|info|debug|trace>",
        _ => "",
    }
}

/// Reads a command line: `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let mut words = line.split_ascii_whitespace();
    let Some(word) = words.next() else {
        return Ok(None);
    };
    let command = word.to_ascii_lowercase();
    let args: [Option<&str>; 4] = [words.next(), words.next(), words.next(), words.next()];
    let bad_usage = || ParseError(format!("usage: {}", usage(&command)));
    let no_args = |c: Command| match args {
        [None, ..] => Ok(Some(c)),
        _ => Err(ParseError(format!("{command} takes no arguments"))),
    };
    let guest_only = |make: fn(String) -> Command| match args {
        [Some(guest), None, ..] => Ok(Some(make(String::from(guest)))),
        _ => Err(bad_usage()),
    };
    match command.as_str() {
        "help" | "?" => no_args(Command::Help),
        "list" => no_args(Command::List),
        "stats" => no_args(Command::Stats),
        "poweroff" => no_args(Command::Poweroff),
        "info" => guest_only(Command::Info),
        "exits" => guest_only(Command::Exits),
        "log" => guest_only(Command::Log),
        "pause" => guest_only(Command::Pause),
        "resume" => guest_only(Command::Resume),
        "stop" => guest_only(Command::Stop),
        "restart" => guest_only(Command::Restart),
        "regs" => match args {
            [Some(guest), vcpu, None, _] => {
                let vcpu = match vcpu {
                    None => 0,
                    Some(text) => {
                        let n = number("regs", "vcpu", text, 0, u64::from(VCPU_MAX))?;
                        u32::try_from(n).unwrap_or(VCPU_MAX)
                    }
                };
                Ok(Some(Command::Regs {
                    guest: String::from(guest),
                    vcpu,
                }))
            }
            _ => Err(bad_usage()),
        },
        "mem" => match args {
            [Some(guest), Some(gpa), len, None] => {
                let gpa = number("mem", "gpa", gpa, 0, u64::MAX)?;
                let len = match len {
                    None => MEM_DEFAULT_LEN,
                    Some(text) => number("mem", "len", text, 1, MEM_MAX_LEN)?,
                };
                if gpa.checked_add(len.saturating_sub(1)).is_none() {
                    return Err(ParseError(format!(
                        "mem: gpa {gpa:#x} + len {len:#x} runs past the end of the address space"
                    )));
                }
                Ok(Some(Command::Mem {
                    guest: String::from(guest),
                    gpa,
                    len,
                }))
            }
            _ => Err(bad_usage()),
        },
        "loglevel" => match args {
            [Some(level), None, ..] => LogLevel::ALL
                .into_iter()
                .find(|l| l.name().eq_ignore_ascii_case(level))
                .map(|l| Some(Command::LogLevel(l)))
                .ok_or_else(|| {
                    ParseError(format!(
                        "loglevel: {level:?} is not one of error, warn, info, debug or trace"
                    ))
                }),
            _ => Err(bad_usage()),
        },
        _ => Err(ParseError(format!(
            "unknown command {:?}; type help for the list",
            word
        ))),
    }
}

/// Reads argument `what` of `command`: decimal or `0x`-hex, in
/// `min..=max`.
fn number(command: &str, what: &str, text: &str, min: u64, max: u64) -> Result<u64, ParseError> {
    let (digits, radix) = match text.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("0x") => (text.get(2..).unwrap_or_default(), 16),
        _ => (text, 10),
    };
    let well_formed = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && digits.chars().all(|c| c == '_' || c.is_digit(radix));
    if !well_formed {
        return Err(ParseError(format!(
            "{command}: {what} {text:?} is not a number; write decimal or 0x-hex"
        )));
    }
    let mut value: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let digit = u64::from(c.to_digit(radix).unwrap_or(0));
        value = match value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(digit))
        {
            Some(v) => v,
            None => {
                return Err(ParseError(format!(
                    "{command}: {what} {text} is too large; use {min} to {max:#x}"
                )))
            }
        };
    }
    if !(min..=max).contains(&value) {
        return Err(ParseError(format!(
            "{command}: {what} {text} is out of range; use {min} to {max} ({max:#x})"
        )));
    }
    Ok(value)
}
