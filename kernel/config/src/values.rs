//! The value syntaxes of the schema that TOML itself does not define:
//! memory sizes, guest names, paths in the partition and console hot keys,
//! plus the "did you mean" suggestion for misspelt keys. Pure string
//! functions; the messages that use them are built in `schema`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// 1 KiB; the size units are binary.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// Why a memory size string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SizeError {
    /// Not a number followed by a unit at all.
    NotASize,
    /// A plain number in a string: the unit is missing.
    NoUnit,
    /// More than `u64::MAX` bytes.
    TooLarge,
}

/// Reads a size string: decimal digits, then `K`, `M` or `G` (binary units,
/// either case), optionally followed by `B` or `iB` (either case): `512K`,
/// `128M`, `128MiB`, `1GB`. Nothing else is accepted: no spaces, no
/// fractions, no sign.
pub(super) fn parse_size(s: &str) -> Result<u64, SizeError> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotASize);
    }
    let mut chars = unit.chars();
    let scale = match chars.next().map(|c| c.to_ascii_uppercase()) {
        None => return Err(SizeError::NoUnit),
        Some('K') => KIB,
        Some('M') => MIB,
        Some('G') => GIB,
        Some(_) => return Err(SizeError::NotASize),
    };
    let suffix = chars.as_str();
    if !(suffix.is_empty() || suffix.eq_ignore_ascii_case("b") || suffix.eq_ignore_ascii_case("ib"))
    {
        return Err(SizeError::NotASize);
    }
    // Digits only, so the only possible parse failure is overflow.
    let n: u64 = digits.parse().map_err(|_| SizeError::TooLarge)?;
    n.checked_mul(scale).ok_or(SizeError::TooLarge)
}

/// A byte count written the way sizes are written in the file: the largest
/// of `G`, `M` and `K` that divides it exactly, else plain bytes.
pub(super) struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            write!(f, "0 bytes")
        } else if n.is_multiple_of(GIB) {
            write!(f, "{}G", n / GIB)
        } else if n.is_multiple_of(MIB) {
            write!(f, "{}M", n / MIB)
        } else if n.is_multiple_of(KIB) {
            write!(f, "{}K", n / KIB)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

/// The longest guest name.
pub const MAX_NAME_LEN: usize = 32;

/// Whether `name` is a valid guest name: 1 to [`MAX_NAME_LEN`] characters,
/// each an ASCII letter, digit, `_` or `-`. Names appear in console lines
/// and monitor commands, so they have no spaces or punctuation.
pub(super) fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a path inside the config partition and returns it normalised
/// (without a leading `/`), or says what is wrong with it.
///
/// Folders are separated by `/` and the path is relative to the partition's
/// root; a leading `/` means the same. Empty components, `.`, `..`,
/// backslashes and control characters are refused.
pub(super) fn check_path(path: &str) -> Result<&str, &'static str> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Err("is empty; give the file's path in the config partition, like \"bzImage\"");
    }
    if path.contains('\\') {
        return Err("contains '\\'; separate folders with '/'");
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character; give a plain path");
    }
    for part in relative.split('/') {
        match part {
            "" => {
                return Err("has an empty folder name ('//' or a trailing '/'); give a file's path")
            }
            "." | ".." => {
                return Err("contains '.' or '..'; give the path from the partition's root")
            }
            _ => {}
        }
    }
    Ok(relative)
}

/// A console hot key: Ctrl and a letter, written `ctrl-<letter>`.
///
/// The serial console multiplexer watches for the byte this key sends
/// ([`ConsoleHotkey::byte`]) to switch between guests and the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleHotkey {
    /// Lower-case ASCII letter.
    letter: u8,
}

impl ConsoleHotkey {
    /// Ctrl-A, the default (as in QEMU's and screen's consoles).
    pub const CTRL_A: Self = Self { letter: b'a' };

    /// The letter, lower case.
    pub fn letter(self) -> char {
        char::from(self.letter)
    }

    /// The control byte a terminal sends for this key: the letter's code
    /// with the upper three bits cleared (Ctrl-A is 0x01, Ctrl-Z 0x1a).
    pub fn byte(self) -> u8 {
        self.letter & 0x1f
    }
}

impl Default for ConsoleHotkey {
    fn default() -> Self {
        Self::CTRL_A
    }
}

impl fmt::Display for ConsoleHotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ctrl-{}", self.letter())
    }
}

/// Reads `ctrl-<letter>` (either case). Letters whose control byte a
/// terminal also sends for an ordinary key, or uses for flow control, are
/// refused with the reason, since the console could not tell them apart.
pub(super) fn parse_hotkey(s: &str) -> Result<ConsoleHotkey, String> {
    let letter = s
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("ctrl-"))
        .and_then(|_| s.get(5..))
        .filter(|l| l.len() == 1)
        .map(|l| l.as_bytes()[0].to_ascii_lowercase())
        .filter(u8::is_ascii_lowercase)
        .ok_or_else(|| {
            String::from("is not a hot key like \"ctrl-a\"; write ctrl- and a letter")
        })?;
    let clash = match letter {
        b'h' => Some("Backspace"),
        b'i' => Some("Tab"),
        b'j' | b'm' => Some("Enter"),
        b'q' | b's' => Some("flow control (XON/XOFF)"),
        _ => None,
    };
    match clash {
        Some(what) => Err(format!(
            "is also sent by {what}, so the console could not tell them apart; pick another letter"
        )),
        None => Ok(ConsoleHotkey { letter }),
    }
}

/// The known key closest to a misspelt `key`, if one is close enough to be
/// a likely typo: at most one edit for short keys, two for longer ones (an
/// edit being an insertion, deletion, substitution or swap of neighbours,
/// ignoring case), or `key` being the start of a known key ("slice" for
/// "slice_ms"). `aliases` maps names other tools use (Xen's `ramdisk`,
/// `extra`) to ours.
pub(super) fn suggest(
    key: &str,
    known: &[&'static str],
    aliases: &[(&str, &'static str)],
) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    if let Some(&(_, ours)) = aliases.iter().find(|(theirs, _)| *theirs == lower) {
        return Some(ours);
    }
    let limit = if key.len() <= 4 { 1 } else { 2 };
    let closest = known
        .iter()
        .map(|&k| (edit_distance(&lower, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k);
    closest.or_else(|| {
        known
            .iter()
            .copied()
            .find(|k| lower.len() >= 3 && k.starts_with(lower.as_str()))
    })
}

/// Optimal-string-alignment distance over bytes: Levenshtein plus the swap
/// of two neighbouring characters ("memroy" is one edit from "memory").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let width = b.len() + 1;
    // Rows i-2, i-1 and i of the (a.len()+1) x (b.len()+1) table.
    let mut rows: [Vec<usize>; 3] = [Vec::new(), (0..width).collect(), Vec::new()];
    for i in 1..=a.len() {
        let mut row = Vec::with_capacity(width);
        row.push(i);
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[1][j] + 1)
                .min(row[j - 1] + 1)
                .min(rows[1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[0][j - 2] + 1);
            }
            row.push(d);
        }
        rows = [core::mem::take(&mut rows[1]), row, Vec::new()];
    }
    rows[1][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_accepted_spelling() {
        assert_eq!(parse_size("512K"), Ok(512 * KIB));
        assert_eq!(parse_size("128M"), Ok(128 * MIB));
        assert_eq!(parse_size("128m"), Ok(128 * MIB));
        assert_eq!(parse_size("128MiB"), Ok(128 * MIB));
        assert_eq!(parse_size("128MB"), Ok(128 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1gib"), Ok(GIB));
    }

    #[test]
    fn sizes_refused_with_the_reason() {
        for bad in [
            "12Q", "", "M", "1.5G", "128 M", "-1M", "128MiBs", "128Mi", "0x10M", "1T",
        ] {
            assert_eq!(parse_size(bad), Err(SizeError::NotASize), "{bad:?}");
        }
        assert_eq!(parse_size("512"), Err(SizeError::NoUnit));
        assert_eq!(parse_size("99999999999G"), Err(SizeError::TooLarge));
        assert_eq!(
            parse_size("99999999999999999999999M"),
            Err(SizeError::TooLarge)
        );
    }

    #[test]
    fn sizes_are_shown_in_the_largest_exact_unit() {
        assert_eq!(format!("{}", Size(2 * GIB)), "2G");
        assert_eq!(format!("{}", Size(1536 * MIB)), "1536M");
        assert_eq!(format!("{}", Size(4 * KIB)), "4K");
        assert_eq!(format!("{}", Size(1000)), "1000 bytes");
    }

    #[test]
    fn names() {
        assert!(is_valid_name("web-1_A"));
        assert!(is_valid_name(&"a".repeat(32)));
        assert!(!is_valid_name(&"a".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("my web"));
        assert!(!is_valid_name("wéb"));
    }

    #[test]
    fn paths() {
        assert_eq!(check_path("bzImage"), Ok("bzImage"));
        assert_eq!(check_path("/linux/bzImage"), Ok("linux/bzImage"));
        for bad in ["", "/", "a//b", "a/", "../x", "a/./b", "a\\b", "a\nb"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hotkeys() {
        let k = parse_hotkey("Ctrl-B").unwrap();
        assert_eq!((k.letter(), k.byte()), ('b', 0x02));
        assert_eq!(format!("{k}"), "ctrl-b");
        assert_eq!(ConsoleHotkey::default().byte(), 0x01);
        for bad in ["ctrl-", "ctrl-ab", "alt-a", "ctrl-1", "a", "ctrl-é"] {
            assert!(parse_hotkey(bad).is_err(), "{bad:?}");
        }
        assert!(parse_hotkey("ctrl-m").unwrap_err().contains("Enter"));
    }

    #[test]
    fn suggestions() {
        let known = [
            "name",
            "memory",
            "vcpus",
            "cpus",
            "slice_ms",
            "load_address",
        ];
        let aliases = [("ramdisk", "initrd")];
        assert_eq!(suggest("memroy", &known, &aliases), Some("memory"));
        assert_eq!(suggest("Memory", &known, &aliases), Some("memory"));
        assert_eq!(suggest("vcpu", &known, &aliases), Some("vcpus"));
        assert_eq!(suggest("slice", &known, &aliases), Some("slice_ms"));
        assert_eq!(
            suggest("load_adress", &known, &aliases),
            Some("load_address")
        );
        assert_eq!(suggest("ramdisk", &known, &aliases), Some("initrd"));
        assert_eq!(suggest("colour", &known, &aliases), None);
        assert_eq!(suggest("x", &known, &aliases), None);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
