//! From the `toml` crate's spanned document to [`Config`]: every key is
//! looked at in file order, checked against the schema, and turned into a
//! value or a [`ConfigError`] at its position.
//!
//! The `toml` crate (`DeTable`, no_std with `alloc`) does the TOML itself
//! and gives the byte span of every key and value; [`LineIndex`] turns
//! spans into lines and columns. Its tables are sorted by key, not kept in
//! file order, so entries are re-sorted by span before they are checked.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::{Range, RangeInclusive};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::LineIndex;
use super::values::{self, Size, SizeError, GIB, MIB};
use super::{
    Config, ConfigError, CpuMode, FlatImage, GuestConfig, GuestSource, GuestStopAction,
    HypervisorSettings, ImageFormat, LogLevel, ParseOutcome, Position, GUEST_MEMORY_GRANULE,
    MAX_CMDLINE_LEN, MAX_GUEST_MEMORY, MAX_VCPUS, MIN_GUEST_MEMORY, SLICE_MS_RANGE,
};

type Key<'i> = Spanned<Cow<'i, str>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// The keys of `[hypervisor]`.
const HYPERVISOR_KEYS: &[&str] = &[
    "log_level",
    "slice_ms",
    "console_hotkey",
    "on_guest_stop",
    "power_off_when_all_stopped",
];

/// The keys of `[[guest]]`.
const GUEST_KEYS: &[&str] = &[
    "name",
    "kernel",
    "initrd",
    "cmdline",
    "memory",
    "vcpus",
    "cpus",
    "format",
    "load_address",
    "entry",
    "mode",
];

/// Names other hypervisors' configs use for our guest keys (Xen's
/// `ramdisk` and `extra`, and a few common ones), for suggestions.
const GUEST_KEY_ALIASES: &[(&str, &str)] = &[
    ("ramdisk", "initrd"),
    ("initramfs", "initrd"),
    ("extra", "cmdline"),
    ("append", "cmdline"),
    ("bootargs", "cmdline"),
    ("image", "kernel"),
    ("maxmem", "memory"),
    ("ram", "memory"),
    ("affinity", "cpus"),
    ("cpu_affinity", "cpus"),
];

/// The top-level tables.
const TOP_LEVEL_KEYS: &[&str] = &["hypervisor", "guest"];

const LOG_LEVELS: &[(&str, LogLevel)] = &[
    ("error", LogLevel::Error),
    ("warn", LogLevel::Warn),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
    ("trace", LogLevel::Trace),
];

const STOP_ACTIONS: &[(&str, GuestStopAction)] = &[
    ("stop", GuestStopAction::Stop),
    ("restart", GuestStopAction::Restart),
];

/// `format` values; `None` stands for "flat", whose parameters come later.
const FORMATS: &[(&str, Option<ImageFormat>)] = &[
    ("linux", Some(ImageFormat::Linux)),
    ("multiboot", Some(ImageFormat::Multiboot)),
    ("flat", None),
];

const MODES: &[(&str, CpuMode)] = &[
    ("real", CpuMode::Real),
    ("protected", CpuMode::Protected),
    ("long", CpuMode::Long),
];

pub(super) fn parse(file: &str, text: &str) -> ParseOutcome {
    let index = LineIndex::new(text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = syntax_message(e.message(), index.source(&span));
            return ParseOutcome {
                file: String::from(file),
                config: Config::default(),
                errors: alloc::vec![ConfigError::new(file, index.at(&span), message)],
            };
        }
    };
    let mut checker = Checker {
        index: &index,
        errors: Vec::new(),
        names: Vec::new(),
    };
    let mut config = Config::default();
    for (key, value) in in_file_order(root.get_ref()) {
        match key.get_ref().as_ref() {
            "hypervisor" => match value.get_ref() {
                DeValue::Table(table) => config.hypervisor = checker.hypervisor(table),
                DeValue::Array(_) => checker.error(
                    key,
                    String::from("write [hypervisor] once, not [[hypervisor]]"),
                ),
                other => checker.error(
                    key,
                    format!(
                        "hypervisor must be a [hypervisor] table, not {}",
                        kind(other)
                    ),
                ),
            },
            "guest" => match value.get_ref() {
                DeValue::Array(guests) => {
                    for (i, guest) in guests.iter().enumerate() {
                        match guest.get_ref() {
                            DeValue::Table(table) => {
                                if let Some(g) = checker.guest(i + 1, guest.span(), table) {
                                    config.guests.push(g);
                                }
                            }
                            other => checker.error(
                                guest,
                                format!(
                                    "guest #{}: each guest must be a table, not {}; \
                                     write [[guest]] followed by its keys",
                                    i + 1,
                                    kind(other)
                                ),
                            ),
                        }
                    }
                }
                DeValue::Table(_) => checker.error(
                    key,
                    String::from(
                        "write [[guest]] with two brackets: each guest is one table \
                         of the array \"guest\"",
                    ),
                ),
                other => checker.error(
                    key,
                    format!(
                        "guest must be [[guest]] tables, not {}; write [[guest]] \
                         followed by its keys",
                        kind(other)
                    ),
                ),
            },
            other => checker.unknown_top_level(key, other, value.get_ref()),
        }
    }
    let mut errors: Vec<ConfigError> = checker
        .errors
        .into_iter()
        .map(|(at, message)| ConfigError::new(file, at, message))
        .collect();
    errors.sort_by_key(ConfigError::position);
    ParseOutcome {
        file: String::from(file),
        config,
        errors,
    }
}

/// The message for a TOML syntax error. The `toml` crate's own words name
/// the problem ("invalid basic string, expected `\"`"); duplicate keys get
/// the key's name, which the crate leaves to its span.
fn syntax_message(message: &str, source: &str) -> String {
    if message == "duplicate key" && !source.is_empty() {
        format!(
            "syntax error: {source} is defined twice in the same table; \
             keep one (no guest is loaded until the file parses)"
        )
    } else {
        format!("syntax error: {message} (no guest is loaded until the file parses)")
    }
}

/// A table's entries in the order they appear in the file.
fn in_file_order<'t, 'i>(table: &'t DeTable<'i>) -> Vec<(&'t Key<'i>, &'t Value<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// The entry for `name` in `table`.
fn entry<'t, 'i>(table: &'t DeTable<'i>, name: &str) -> Option<(&'t Key<'i>, &'t Value<'i>)> {
    table.iter().find(|(key, _)| key.get_ref() == name)
}

/// A value's type, with its article, for "must be X, not Y" messages.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// `"a", "b" or "c"` for a list of choices.
fn one_of<T>(choices: &[(&str, T)]) -> String {
    let mut out = String::new();
    for (i, (name, _)) in choices.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == choices.len() { " or " } else { ", " });
        }
        out.push('"');
        out.push_str(name);
        out.push('"');
    }
    out
}

/// `a, b, c` for a list of key names.
fn key_list(keys: &[&str]) -> String {
    keys.join(", ")
}

struct Checker<'x> {
    index: &'x LineIndex<'x>,
    /// Errors found so far, with their position, in no particular order.
    errors: Vec<(Position, String)>,
    /// The valid guest names seen so far and where each was defined.
    names: Vec<(String, Position)>,
}

/// One guest's errors, each prefixed with the guest's label.
struct GuestErrors {
    label: String,
    list: Vec<(Position, String)>,
}

impl GuestErrors {
    fn push(&mut self, at: Position, message: String) {
        self.list.push((at, format!("{}: {message}", self.label)));
    }
}

impl<'x> Checker<'x> {
    fn at<T>(&self, spanned: &Spanned<T>) -> Position {
        self.index.at(&spanned.span())
    }

    /// The value as written in the file (quotes included).
    fn src(&self, value: &Value<'_>) -> &'x str {
        self.index.source(&value.span())
    }

    fn error<T>(&mut self, spanned: &Spanned<T>, message: String) {
        let at = self.at(spanned);
        self.errors.push((at, message));
    }

    fn unknown_top_level(&mut self, key: &Key<'_>, name: &str, value: &DeValue<'_>) {
        let is_table = matches!(value, DeValue::Table(_));
        let is_table_array = matches!(value, DeValue::Array(a)
            if !a.is_empty() && a.iter().all(|e| matches!(e.get_ref(), DeValue::Table(_))));
        let message = if is_table || is_table_array {
            let written = if is_table {
                format!("[{name}]")
            } else {
                format!("[[{name}]]")
            };
            match values::suggest(name, TOP_LEVEL_KEYS, &[]) {
                Some("guest") => format!("unknown table {written} (did you mean [[guest]]?)"),
                Some(_) => format!("unknown table {written} (did you mean [hypervisor]?)"),
                None => {
                    format!("unknown table {written}; the tables are [hypervisor] and [[guest]]")
                }
            }
        } else if HYPERVISOR_KEYS.contains(&name) {
            format!("{name} must be in the [hypervisor] table; put it after a [hypervisor] line")
        } else if GUEST_KEYS.contains(&name) {
            format!("{name} must be in a [[guest]] table; put it after a [[guest]] line")
        } else {
            format!(
                "unknown top-level key {name:?}; settings go in [hypervisor], \
                 guests in [[guest]] tables"
            )
        };
        self.error(key, message);
    }

    /// The message for an unknown key in a table with keys `known`.
    fn unknown_key(
        name: &str,
        table: &str,
        known: &[&'static str],
        aliases: &[(&str, &'static str)],
    ) -> String {
        match values::suggest(name, known, aliases) {
            Some(s) => format!("unknown key {name:?} (did you mean {s:?}?)"),
            None => format!(
                "unknown key {name:?}; the keys of {table} are {}",
                key_list(known)
            ),
        }
    }

    fn hypervisor(&mut self, table: &DeTable<'_>) -> HypervisorSettings {
        let mut settings = HypervisorSettings::default();
        for (key, value) in in_file_order(table) {
            let name = key.get_ref().as_ref();
            let src = self.src(value);
            let result = match name {
                "log_level" => choice(name, value, src, LOG_LEVELS).map(|v| settings.log_level = v),
                "slice_ms" => {
                    let range =
                        i128::from(*SLICE_MS_RANGE.start())..=i128::from(*SLICE_MS_RANGE.end());
                    int_in(name, value, src, range, " milliseconds")
                        .map(|v| settings.slice_ms = v as u32)
                }
                "console_hotkey" => string(name, value).and_then(|s| {
                    values::parse_hotkey(s)
                        .map(|key| settings.console_hotkey = key)
                        .map_err(|why| format!("{name} {src} {why}"))
                }),
                "on_guest_stop" => {
                    choice(name, value, src, STOP_ACTIONS).map(|v| settings.on_guest_stop = v)
                }
                "power_off_when_all_stopped" => {
                    boolean(name, value).map(|v| settings.power_off_when_all_stopped = v)
                }
                _ => Err(Self::unknown_key(
                    name,
                    "[hypervisor]",
                    HYPERVISOR_KEYS,
                    &[],
                )),
            };
            if let Err(message) = result {
                // Reported at the key, as for guests: it is what the
                // operator looks for, and a value starts on its line.
                self.error(key, format!("hypervisor: {message}"));
            }
        }
        settings
    }

    /// Checks the `number`th `[[guest]]` table (from 1), whose header is at
    /// `span`; `None` (with its errors recorded) if it is not valid.
    fn guest(
        &mut self,
        number: usize,
        span: Range<usize>,
        table: &DeTable<'_>,
    ) -> Option<GuestConfig> {
        let header = self.index.at(&span);
        let mut errors = GuestErrors {
            label: format!("guest #{number}"),
            list: Vec::new(),
        };

        // The name first: the other messages are labelled with it.
        let mut name = None;
        match entry(table, "name") {
            None => errors.push(
                header,
                String::from("missing required key \"name\"; add name = \"...\""),
            ),
            Some((key, value)) => match string("name", value) {
                Err(message) => errors.push(self.at(key), message),
                Ok(n) if !values::is_valid_name(n) => errors.push(
                    self.at(key),
                    format!(
                        "name {} is not a valid name; use 1 to {} letters, digits, '_' or '-'",
                        self.src(value),
                        values::MAX_NAME_LEN
                    ),
                ),
                Ok(n) => {
                    errors.label = format!("guest '{n}'");
                    let at = self.at(key);
                    if let Some((_, first)) = self.names.iter().find(|(seen, _)| seen == n) {
                        // Not labelled: the label would repeat the name.
                        errors.list.push((
                            at,
                            format!(
                                "duplicate guest name '{n}' (first defined at line {})",
                                first.line
                            ),
                        ));
                    } else {
                        self.names.push((String::from(n), at));
                    }
                    name = Some((String::from(n), at));
                }
            },
        }

        let mut kernel = None;
        let mut initrd = None;
        let mut cmdline = String::new();
        let mut memory = None;
        let mut vcpus = 1;
        let mut cpus = None;
        let mut format = None;
        let mut load_address = None;
        let mut entry_point = None;
        let mut mode = None;

        for (key, value) in in_file_order(table) {
            let key_name = key.get_ref().as_ref();
            let at = self.at(key);
            let src = self.src(value);
            let result: Result<(), String> = match key_name {
                "name" => Ok(()),
                "kernel" => path(key_name, value, src).map(|p| kernel = Some((p, at))),
                "initrd" => path(key_name, value, src).map(|p| initrd = Some((p, at))),
                "cmdline" => string(key_name, value).and_then(|s| {
                    if s.len() > MAX_CMDLINE_LEN {
                        Err(format!(
                            "cmdline is {} bytes long; shorten it to at most {MAX_CMDLINE_LEN}",
                            s.len()
                        ))
                    } else if s.contains('\0') {
                        Err(String::from("cmdline contains a NUL character; remove it"))
                    } else {
                        cmdline = String::from(s);
                        Ok(())
                    }
                }),
                "memory" => memory_size(value, src).map(|m| memory = Some((m, at))),
                "vcpus" => int_in(key_name, value, src, 1..=i128::from(MAX_VCPUS), "")
                    .map(|v| vcpus = v as u32),
                "cpus" => match self.cpu_list(value) {
                    Ok(list) => {
                        cpus = Some(list);
                        Ok(())
                    }
                    Err((span, message)) => {
                        // Point at the offending element, not the key.
                        errors.push(self.index.at(&span), message);
                        Ok(())
                    }
                },
                "format" => choice(key_name, value, src, FORMATS).map(|f| format = Some((f, at))),
                "load_address" => {
                    address(key_name, value, src).map(|a| load_address = Some((a, at, src)))
                }
                "entry" => address(key_name, value, src).map(|a| entry_point = Some((a, at, src))),
                "mode" => choice(key_name, value, src, MODES).map(|m| mode = Some((m, at))),
                _ => Err(Self::unknown_key(
                    key_name,
                    "[[guest]]",
                    GUEST_KEYS,
                    GUEST_KEY_ALIASES,
                )),
            };
            if let Err(message) = result {
                errors.push(at, message);
            }
        }

        if kernel.is_none() && entry(table, "kernel").is_none() {
            errors.push(
                header,
                String::from("missing required key \"kernel\"; add kernel = \"<path in the config partition>\""),
            );
        }
        if memory.is_none() && entry(table, "memory").is_none() {
            errors.push(
                header,
                String::from("missing required key \"memory\"; add memory = \"128M\""),
            );
        }

        // The flat-image keys: all three with format = "flat", none
        // otherwise.
        let flat = match format {
            Some((None, format_at)) => {
                let missing: Vec<&str> = [
                    ("load_address", load_address.is_some()),
                    ("entry", entry_point.is_some()),
                    ("mode", mode.is_some()),
                ]
                .iter()
                .filter(|(key, given)| !given && entry(table, key).is_none())
                .map(|(key, _)| *key)
                .collect();
                match (load_address, entry_point, mode) {
                    (Some(load), Some(entry), Some(mode)) => {
                        let memory = memory.map(|(m, _)| m);
                        self.check_flat_address(&mut errors, "load_address", load, mode, memory);
                        self.check_flat_address(&mut errors, "entry", entry, mode, memory);
                        Some(FlatImage {
                            load_address: load.0,
                            entry: entry.0,
                            mode: mode.0,
                        })
                    }
                    _ if missing.is_empty() => None, // present but invalid: already reported
                    _ if missing.len() == 3 => {
                        errors.push(
                            format_at,
                            String::from("format = \"flat\" needs load_address, entry and mode"),
                        );
                        None
                    }
                    _ => {
                        errors.push(
                            format_at,
                            format!(
                                "format = \"flat\" needs load_address, entry and mode; add {}",
                                missing.join(" and ")
                            ),
                        );
                        None
                    }
                }
            }
            // An invalid format is reported already; which keys it needs
            // is unknown.
            None if entry(table, "format").is_some() => None,
            _ => {
                for key in ["load_address", "entry", "mode"] {
                    if let Some((k, _)) = entry(table, key) {
                        errors.push(
                            self.at(k),
                            format!("{key} is only used with format = \"flat\"; set format = \"flat\" or remove {key}"),
                        );
                    }
                }
                None
            }
        };

        if !errors.list.is_empty() {
            self.errors.append(&mut errors.list);
            return None;
        }
        // No error, so every required value is present.
        let ((name, name_at), (kernel, kernel_at), (memory, memory_at)) = (name?, kernel?, memory?);
        let format = match format {
            Some((Some(f), _)) => Some(f),
            Some((None, _)) => Some(ImageFormat::Flat(flat?)),
            None => None,
        };
        Some(GuestConfig {
            name,
            kernel: String::from(kernel),
            initrd: initrd.map(|(p, _)| String::from(p)),
            cmdline,
            memory,
            vcpus,
            cpus,
            format,
            source: GuestSource {
                table: header,
                name: name_at,
                kernel: kernel_at,
                initrd: initrd.map(|(_, at)| at),
                memory: memory_at,
            },
        })
    }

    /// `cpus`: a non-empty array of distinct CPU indices. The error comes
    /// with the span of what is wrong.
    fn cpu_list(&self, value: &Value<'_>) -> Result<Vec<u32>, (Range<usize>, String)> {
        let DeValue::Array(items) = value.get_ref() else {
            return Err((
                value.span(),
                format!(
                    "cpus must be an array of CPU indices like [0, 1], not {}",
                    kind(value.get_ref())
                ),
            ));
        };
        if items.is_empty() {
            return Err((
                value.span(),
                String::from(
                    "cpus is empty; list CPU indices like [0, 1], or remove cpus to run on any CPU",
                ),
            ));
        }
        let mut list = Vec::with_capacity(items.len());
        for item in items.iter() {
            let src = self.src(item);
            let cpu = int_in("cpus", item, src, 0..=i128::from(u32::MAX), "")
                .map_err(|message| (item.span(), message))? as u32;
            if list.contains(&cpu) {
                return Err((
                    item.span(),
                    format!("cpus lists CPU {cpu} twice; list each CPU once"),
                ));
            }
            list.push(cpu);
        }
        Ok(list)
    }

    /// A flat image's `load_address` or `entry` must be reachable in its
    /// mode and inside the guest's memory.
    fn check_flat_address(
        &self,
        errors: &mut GuestErrors,
        key: &str,
        (address, at, src): (u64, Position, &str),
        (mode, _): (CpuMode, Position),
        memory: Option<u64>,
    ) {
        let (limit, limit_name, mode_name) = match mode {
            CpuMode::Real => (MIB, "1M", "real"),
            CpuMode::Protected => (4 * GIB, "4G", "protected"),
            CpuMode::Long => (u64::MAX, "", "long"),
        };
        if address >= limit {
            errors.push(
                at,
                format!(
                    "{key} {src} is not below {limit_name}, out of reach in {mode_name} mode; \
                     use a lower address or another mode"
                ),
            );
        } else if let Some(memory) = memory.filter(|&m| {
            addr::RamLayout::new(m)
                .is_some_and(|ram| ram.offset_of(addr::GuestPhysAddr::new(address)).is_none())
        }) {
            errors.push(
                at,
                format!(
                    "{key} {src} is outside the guest's {} of memory; use a lower address or more memory",
                    Size(memory)
                ),
            );
        }
    }
}

/// A string value.
fn string<'v>(key: &str, value: &'v Value<'_>) -> Result<&'v str, String> {
    match value.get_ref() {
        DeValue::String(s) => Ok(s.as_ref()),
        other => Err(format!(
            "{key} must be a string in quotes, not {}",
            kind(other)
        )),
    }
}

/// A boolean value.
fn boolean(key: &str, value: &Value<'_>) -> Result<bool, String> {
    match value.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(format!("{key} must be true or false, not {}", kind(other))),
    }
}

/// An integer within `range`; `unit` follows the range in the message.
fn int_in(
    key: &str,
    value: &Value<'_>,
    src: &str,
    range: RangeInclusive<i128>,
    unit: &str,
) -> Result<i128, String> {
    let n = match value.get_ref() {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        other => return Err(format!("{key} must be an integer, not {}", kind(other))),
    };
    match n {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{key} {src} is out of range; use {} to {}{unit}",
            range.start(),
            range.end()
        )),
    }
}

/// A guest-physical address: an integer from 0 to 2^64-1.
fn address(key: &str, value: &Value<'_>, src: &str) -> Result<u64, String> {
    match value.get_ref() {
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| format!("{key} {src} is not an address from 0 to 0xffff_ffff_ffff_ffff")),
        other => Err(format!(
            "{key} must be an integer address like 0x100000, not {}",
            kind(other)
        )),
    }
}

/// One of `choices`, by name.
fn choice<T: Copy>(
    key: &str,
    value: &Value<'_>,
    src: &str,
    choices: &[(&str, T)],
) -> Result<T, String> {
    let s = match value.get_ref() {
        DeValue::String(s) => s.as_ref(),
        other => {
            return Err(format!(
                "{key} must be one of {} (in quotes), not {}",
                one_of(choices),
                kind(other)
            ))
        }
    };
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("{key} {src} is not one of {}", one_of(choices)))
}

/// A path inside the config partition, normalised.
fn path<'v>(key: &str, value: &'v Value<'_>, src: &str) -> Result<&'v str, String> {
    let s = string(key, value)?;
    values::check_path(s).map_err(|why| format!("{key} {src} {why}"))
}

/// `memory`: a size string or a number of bytes, at least the minimum and
/// a whole number of pages.
fn memory_size(value: &Value<'_>, src: &str) -> Result<u64, String> {
    let bytes = match value.get_ref() {
        DeValue::String(s) => values::parse_size(s).map_err(|e| match e {
            SizeError::NotASize => format!("memory {src} is not a size like 128M"),
            SizeError::NoUnit => format!(
                "memory {src} has no unit; write \"{s}M\" for MiB, or an integer (no quotes) for bytes"
            ),
            SizeError::TooLarge => format!("memory {src} is too large"),
        })?,
        DeValue::Integer(i) => match u64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => n,
            Err(_) if i.as_str().starts_with('-') => {
                return Err(format!("memory {src} is negative; give a size like 128M"))
            }
            Err(_) => return Err(format!("memory {src} is too large")),
        },
        other => {
            return Err(format!(
                "memory must be a size like \"128M\" or an integer number of bytes, not {}",
                kind(other)
            ))
        }
    };
    if bytes < MIN_GUEST_MEMORY {
        return Err(format!(
            "memory {src} is below the minimum of {}; give the guest at least \"{}\"",
            Size(MIN_GUEST_MEMORY),
            Size(MIN_GUEST_MEMORY)
        ));
    }
    if bytes > MAX_GUEST_MEMORY {
        return Err(format!(
            "memory {src} is above the most a guest may have, {} (RAM past 3G lies from 4G up \
             and must end by 16G); give the guest at most \"{}\"",
            Size(MAX_GUEST_MEMORY),
            Size(MAX_GUEST_MEMORY)
        ));
    }
    if !bytes.is_multiple_of(GUEST_MEMORY_GRANULE) {
        return Err(format!(
            "memory {src} is not a multiple of {}; round it to whole {} pages",
            Size(GUEST_MEMORY_GRANULE),
            Size(GUEST_MEMORY_GRANULE)
        ));
    }
    Ok(bytes)
}
