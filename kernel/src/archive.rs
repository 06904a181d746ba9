//! The ramdisk archive: a read-only reader of the POSIX ustar archive the
//! bootloader hands over as the ramdisk, which carries `hypervisor.toml`
//! and the guest images until the FAT config partition exists.
//!
//! The archive is built by xtask and trusted by the operator, but still
//! validated: [`Archive::new`] checks every header (magic, checksum, size,
//! names) before anything is read from it, and a bad archive is an
//! [`ArchiveError`] naming the header's offset and what was wrong, never a
//! panic. File data is borrowed from the ramdisk, not copied.
//!
//! Format: POSIX.1-2017, `pax` utility, "ustar Interchange Format": 512-byte
//! header blocks, each followed by the file's data padded to a multiple of
//! 512 bytes, and two zero blocks at the end. Only regular files and
//! directories are accepted; links, devices and pax or GNU extension
//! headers are refused rather than skipped, so that a file never silently
//! goes missing.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Size of a header block and the unit file data is padded to.
const BLOCK: usize = 512;

/// Header field offsets (POSIX.1-2017 `pax`, "ustar Header Block").
mod field {
    use core::ops::Range;

    /// File name, NUL-terminated unless it fills the field.
    pub const NAME: Range<usize> = 0..100;
    /// File size in octal.
    pub const SIZE: Range<usize> = 124..136;
    /// Header checksum in octal.
    pub const CHKSUM: Range<usize> = 148..156;
    /// Entry type.
    pub const TYPEFLAG: usize = 156;
    /// "ustar" and a NUL.
    pub const MAGIC: Range<usize> = 257..263;
    /// Path prefix, joined to the name with `/` when not empty.
    pub const PREFIX: Range<usize> = 345..500;
}

/// The POSIX ustar magic. GNU tar's own format writes `"ustar  \0"`, and
/// its prefix field holds other things, so it is refused.
const MAGIC: &[u8; 6] = b"ustar\0";

/// A numeric header field, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericField {
    /// The file size.
    Size,
    /// The header checksum.
    Checksum,
}

impl fmt::Display for NumericField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Size => "size",
            Self::Checksum => "checksum",
        })
    }
}

/// What is wrong with a numeric header field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberProblem {
    /// No digits at all.
    Empty,
    /// A byte that is neither an octal digit nor, after the digits, a NUL
    /// or space terminator.
    NotOctal(u8),
    /// The value does not fit in 64 bits.
    TooLarge,
    /// GNU's base-256 encoding (high bit of the first byte set), which
    /// ustar does not have.
    Base256,
}

/// A text header field, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameField {
    /// The `name` field.
    Name,
    /// The `prefix` field.
    Prefix,
}

impl fmt::Display for NameField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Name => "name",
            Self::Prefix => "prefix",
        })
    }
}

/// Why a ramdisk is not a usable archive. Every variant carries `offset`,
/// the byte offset of the header it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveError {
    /// Fewer than 512 bytes, not all zero, are left where a header belongs.
    Truncated {
        /// Where the header would start.
        offset: usize,
        /// How many bytes are left.
        remaining: usize,
    },
    /// The magic is not `"ustar\0"`: not a POSIX ustar archive.
    Magic {
        /// The header's offset.
        offset: usize,
        /// The six magic bytes found.
        found: [u8; 6],
    },
    /// The checksum field does not match the sum of the header's bytes.
    Checksum {
        /// The header's offset.
        offset: usize,
        /// The value in the checksum field.
        stored: u64,
        /// The sum of the header's bytes, the checksum field counted as
        /// spaces.
        computed: u64,
    },
    /// A numeric field is not a valid octal number.
    Number {
        /// The header's offset.
        offset: usize,
        /// Which field.
        field: NumericField,
        /// What is wrong with it.
        problem: NumberProblem,
    },
    /// The file's data would run past the end of the ramdisk.
    DataPastEnd {
        /// The header's offset.
        offset: usize,
        /// The size the header gives.
        size: u64,
        /// Bytes left after the header.
        available: usize,
    },
    /// A name field is not UTF-8.
    NotUtf8 {
        /// The header's offset.
        offset: usize,
        /// Which field.
        field: NameField,
    },
    /// A file whose path is empty (or only `/` and `./`).
    EmptyName {
        /// The header's offset.
        offset: usize,
    },
    /// An entry that is neither a regular file nor a directory.
    UnsupportedType {
        /// The header's offset.
        offset: usize,
        /// The type flag.
        typeflag: u8,
    },
    /// A zero block followed by a header: the end of an archive is two
    /// zero blocks, so this is a damaged archive.
    LoneZeroBlock {
        /// The zero block's offset.
        offset: usize,
    },
    /// Two files with the same path.
    Duplicate {
        /// The second header's offset.
        offset: usize,
        /// The path.
        path: String,
        /// The first header's offset.
        first: usize,
    },
}

impl ArchiveError {
    /// The byte offset of the header the error is about.
    pub const fn offset(&self) -> usize {
        match *self {
            Self::Truncated { offset, .. }
            | Self::Magic { offset, .. }
            | Self::Checksum { offset, .. }
            | Self::Number { offset, .. }
            | Self::DataPastEnd { offset, .. }
            | Self::NotUtf8 { offset, .. }
            | Self::EmptyName { offset }
            | Self::UnsupportedType { offset, .. }
            | Self::LoneZeroBlock { offset }
            | Self::Duplicate { offset, .. } => offset,
        }
    }
}

/// What a type flag means, for the unsupported-type message.
fn type_name(typeflag: u8) -> Option<&'static str> {
    Some(match typeflag {
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "FIFO",
        b'x' => "pax extended header",
        b'g' => "pax global header",
        b'L' | b'K' => "GNU long name",
        _ => return None,
    })
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ramdisk archive: header at offset {:#x}: ",
            self.offset()
        )?;
        match self {
            Self::Truncated { remaining, .. } => write!(
                f,
                "only {remaining} bytes left where a {BLOCK}-byte header belongs"
            ),
            Self::Magic { found, .. } => write!(
                f,
                "magic \"{}\" is not \"ustar\\0\": not a POSIX ustar archive \
                 (GNU tar needs --format=ustar)",
                found.escape_ascii()
            ),
            Self::Checksum {
                stored, computed, ..
            } => write!(
                f,
                "checksum {stored:#o} does not match {computed:#o}, the sum of the header"
            ),
            Self::Number { field, problem, .. } => match problem {
                NumberProblem::Empty => write!(f, "{field} field is empty"),
                NumberProblem::NotOctal(byte) => write!(
                    f,
                    "{field} field has '{}' where an octal digit belongs",
                    byte.escape_ascii()
                ),
                NumberProblem::TooLarge => write!(f, "{field} field is too large"),
                NumberProblem::Base256 => {
                    write!(f, "{field} field is base-256, which ustar does not have")
                }
            },
            Self::DataPastEnd {
                size, available, ..
            } => write!(
                f,
                "file of {size} bytes runs past the end of the ramdisk \
                 ({available} bytes left after the header)"
            ),
            Self::NotUtf8 { field, .. } => write!(f, "{field} is not UTF-8"),
            Self::EmptyName { .. } => f.write_str("file has an empty name"),
            Self::UnsupportedType { typeflag, .. } => {
                write!(f, "entry type '{}'", typeflag.escape_ascii())?;
                if let Some(name) = type_name(*typeflag) {
                    write!(f, " ({name})")?;
                }
                f.write_str(" is not supported: only regular files and directories")
            }
            Self::LoneZeroBlock { .. } => f.write_str(
                "zero block followed by another header; an archive ends with two zero blocks",
            ),
            Self::Duplicate { path, first, .. } => {
                write!(
                    f,
                    "\"{path}\" is already in the archive, at offset {first:#x}"
                )
            }
        }
    }
}

/// One regular file in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The path: the ustar prefix and name joined with `/`, leading `/`
    /// and `./` removed (`guests/a.bin`).
    pub path: String,
    /// The file's contents, borrowed from the ramdisk.
    pub data: &'a [u8],
}

/// A validated ustar archive over the ramdisk's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive<'a> {
    /// The regular files, in archive order.
    files: Vec<Entry<'a>>,
}

/// What a header describes.
enum Kind {
    File,
    Directory,
}

impl<'a> Archive<'a> {
    /// Reads and checks every header up to the end marker (two zero
    /// blocks) or the end of `bytes`, whichever comes first; bytes after
    /// the end marker are ignored (tar pads archives to whole records).
    ///
    /// # Errors
    ///
    /// An [`ArchiveError`] for the first header that is not valid ustar:
    /// wrong magic or checksum, a size that is not octal or runs past the
    /// end of `bytes`, a name that is not UTF-8 or is empty, an entry type
    /// other than a regular file or a directory, a path seen before, a
    /// lone zero block, or a partial block that is not all zero.
    pub fn new(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        let mut files: Vec<Entry<'a>> = Vec::new();
        let mut offsets: Vec<usize> = Vec::new();
        let mut offset = 0;
        while let Some(rest) = bytes.get(offset..).filter(|rest| !rest.is_empty()) {
            let Some(block) = rest.get(..BLOCK) else {
                if all_zero(rest) {
                    break;
                }
                return Err(ArchiveError::Truncated {
                    offset,
                    remaining: rest.len(),
                });
            };
            if all_zero(block) {
                let after = rest.get(BLOCK..).unwrap_or_default();
                if all_zero(after.get(..BLOCK).unwrap_or(after)) {
                    break;
                }
                return Err(ArchiveError::LoneZeroBlock { offset });
            }

            let (kind, path, size) = parse_header(block, offset)?;
            let data_start = offset.saturating_add(BLOCK);
            let available = bytes.len().saturating_sub(data_start);
            let past_end = ArchiveError::DataPastEnd {
                offset,
                size,
                available,
            };
            let len = usize::try_from(size)
                .ok()
                .filter(|&len| len <= available)
                .ok_or_else(|| past_end.clone())?;
            let data = bytes
                .get(data_start..)
                .and_then(|data| data.get(..len))
                .ok_or_else(|| past_end.clone())?;

            if let Kind::File = kind {
                if let Some(first) = files
                    .iter()
                    .zip(&offsets)
                    .find(|(file, _)| file.path == path)
                    .map(|(_, &first)| first)
                {
                    return Err(ArchiveError::Duplicate {
                        offset,
                        path,
                        first,
                    });
                }
                files.push(Entry { path, data });
                offsets.push(offset);
            }

            // The data is padded to whole blocks; `len` is at most the
            // ramdisk's length, so this only fails on a ramdisk within a
            // block of the address space's end.
            offset = len
                .checked_next_multiple_of(BLOCK)
                .and_then(|padded| data_start.checked_add(padded))
                .ok_or(past_end)?;
        }
        Ok(Self { files })
    }

    /// The regular files, in archive order; directories are not listed.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + '_ {
        self.files.iter().cloned()
    }

    /// The contents of the file at `path` (`"hypervisor.toml"`,
    /// `"guests/a.bin"`); leading `/` and `./` are ignored on both sides.
    pub fn get(&self, path: &str) -> Option<&'a [u8]> {
        let path = normalize(path);
        self.files
            .iter()
            .find(|file| file.path == path)
            .map(|file| file.data)
    }

    /// The number of regular files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the archive holds no regular file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Checks one header block and returns what it describes, its normalized
/// path and its size.
fn parse_header(block: &[u8], offset: usize) -> Result<(Kind, String, u64), ArchiveError> {
    let magic = field_bytes(block, field::MAGIC);
    if magic != MAGIC {
        let mut found = [0; 6];
        for (to, from) in found.iter_mut().zip(magic) {
            *to = *from;
        }
        return Err(ArchiveError::Magic { offset, found });
    }

    // The checksum is the sum of all header bytes as unsigned values, the
    // checksum field itself counted as eight spaces. Some historic tars
    // summed signed bytes; both are accepted, as GNU tar does.
    let chksum = field_bytes(block, field::CHKSUM);
    let stored = parse_octal(chksum).map_err(|problem| ArchiveError::Number {
        offset,
        field: NumericField::Checksum,
        problem,
    })?;
    let summed = || {
        block
            .iter()
            .enumerate()
            .map(|(i, &b)| if field::CHKSUM.contains(&i) { b' ' } else { b })
    };
    let unsigned: u64 = summed().map(u64::from).sum();
    let signed: i64 = summed().map(|b| i64::from(b as i8)).sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(ArchiveError::Checksum {
            offset,
            stored,
            computed: unsigned,
        });
    }

    let size =
        parse_octal(field_bytes(block, field::SIZE)).map_err(|problem| ArchiveError::Number {
            offset,
            field: NumericField::Size,
            problem,
        })?;

    let text = |range, which| {
        core::str::from_utf8(until_nul(field_bytes(block, range))).map_err(|_| {
            ArchiveError::NotUtf8 {
                offset,
                field: which,
            }
        })
    };
    let name = text(field::NAME, NameField::Name)?;
    let prefix = text(field::PREFIX, NameField::Prefix)?;
    let path = if prefix.is_empty() {
        normalize(name).to_string()
    } else {
        normalize(&format!("{prefix}/{name}")).to_string()
    };

    let typeflag = block.get(field::TYPEFLAG).copied().unwrap_or(0);
    let kind = match typeflag {
        // POSIX: '7' (contiguous file) is read as a regular file by
        // implementations without contiguous files.
        b'0' | b'\0' | b'7' => Kind::File,
        b'5' => Kind::Directory,
        _ => return Err(ArchiveError::UnsupportedType { offset, typeflag }),
    };
    if let Kind::File = kind {
        if path.is_empty() {
            return Err(ArchiveError::EmptyName { offset });
        }
    }
    Ok((kind, path, size))
}

/// The bytes of one field of a 512-byte header block.
fn field_bytes(block: &[u8], range: core::ops::Range<usize>) -> &[u8] {
    block.get(range).unwrap_or_default()
}

/// `field` up to its first NUL, or all of it when it has none.
fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => field.get(..end).unwrap_or_default(),
        None => field,
    }
}

/// Whether every byte is zero.
fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// `path` without its leading `/` and `./` parts, so that `/a`, `./a` and
/// `a` name the same file.
fn normalize(path: &str) -> &str {
    let mut path = path;
    loop {
        if let Some(rest) = path.strip_prefix('/') {
            path = rest;
        } else if let Some(rest) = path.strip_prefix("./") {
            path = rest;
        } else {
            return path;
        }
    }
}

/// Parses a ustar numeric field: optional leading spaces, octal digits,
/// then only NUL or space to the end of the field. A field full of digits
/// with no terminator is accepted, as writers fill the 12-byte size field
/// that way for files of 8 GiB and more.
fn parse_octal(field: &[u8]) -> Result<u64, NumberProblem> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        return Err(NumberProblem::Base256);
    }
    let mut bytes = field.iter().copied().skip_while(|&b| b == b' ');
    let mut value: u64 = 0;
    let mut digits = 0;
    for byte in bytes.by_ref() {
        match byte {
            b'0'..=b'7' => {
                value = value
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                    .ok_or(NumberProblem::TooLarge)?;
                digits += 1;
            }
            b'\0' | b' ' => break,
            other => return Err(NumberProblem::NotOctal(other)),
        }
    }
    if digits == 0 {
        return Err(NumberProblem::Empty);
    }
    match bytes.find(|&b| b != b'\0' && b != b' ') {
        Some(other) => Err(NumberProblem::NotOctal(other)),
        None => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    /// One member for the test writer.
    struct Member<'a> {
        name: &'a [u8],
        prefix: &'a [u8],
        typeflag: u8,
        data: &'a [u8],
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Member<'a> {
        Member {
            name: name.as_bytes(),
            prefix: b"",
            typeflag: b'0',
            data,
        }
    }

    fn dir(name: &str) -> Member<'_> {
        Member {
            name: name.as_bytes(),
            prefix: b"",
            typeflag: b'5',
            data: b"",
        }
    }

    fn put(block: &mut [u8; BLOCK], at: usize, bytes: &[u8]) {
        block[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a correct checksum into `block`, as POSIX tar writers do:
    /// six octal digits, NUL, space.
    fn set_checksum(block: &mut [u8; BLOCK]) {
        block[field::CHKSUM].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        put(
            block,
            field::CHKSUM.start,
            format!("{sum:06o}\0 ").as_bytes(),
        );
    }

    fn header(member: &Member<'_>) -> [u8; BLOCK] {
        let mut block = [0; BLOCK];
        put(&mut block, 0, member.name);
        put(&mut block, 100, b"0000644\0");
        put(&mut block, 108, b"0000000\0");
        put(&mut block, 116, b"0000000\0");
        let size = format!("{:011o}\0", member.data.len());
        put(&mut block, field::SIZE.start, size.as_bytes());
        put(&mut block, 136, b"14707000000\0");
        block[field::TYPEFLAG] = member.typeflag;
        put(&mut block, field::MAGIC.start, MAGIC);
        put(&mut block, 263, b"00");
        put(&mut block, 265, b"root");
        put(&mut block, 297, b"root");
        put(&mut block, field::PREFIX.start, member.prefix);
        set_checksum(&mut block);
        block
    }

    /// Appends `header` and `data` padded to whole blocks.
    fn append(out: &mut Vec<u8>, header: &[u8; BLOCK], data: &[u8]) {
        out.extend_from_slice(header);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }

    fn archive(members: &[Member<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for member in members {
            append(&mut out, &header(member), member.data);
        }
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    /// An archive of one file whose header `edit` changes; the checksum is
    /// recomputed afterwards.
    fn edited(edit: impl FnOnce(&mut [u8; BLOCK])) -> Vec<u8> {
        let mut block = header(&file("a", b"data"));
        edit(&mut block);
        set_checksum(&mut block);
        let mut out = Vec::new();
        append(&mut out, &block, b"data");
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    #[test]
    fn empty_ramdisk_and_bare_end_marker_hold_no_files() {
        for bytes in [&[][..], &[0; 2 * BLOCK][..], &[0; 100][..]] {
            let archive = Archive::new(bytes).unwrap();
            assert!(archive.is_empty());
            assert_eq!(archive.len(), 0);
            assert_eq!(archive.entries().count(), 0);
            assert_eq!(archive.get("hypervisor.toml"), None);
        }
    }

    #[test]
    fn files_are_listed_in_order_with_their_data() {
        let config = b"[[guest]]\nname = \"a\"\n";
        let image = [0xAB; 1000];
        let bytes = archive(&[
            file("hypervisor.toml", config),
            dir("guests/"),
            file("guests/a.bin", &image),
            file("empty", b""),
            file("exact", &[7; BLOCK]),
        ]);
        let archive = Archive::new(&bytes).unwrap();
        assert_eq!(archive.len(), 4, "the directory is not listed");
        let entries: Vec<Entry<'_>> = archive.entries().collect();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["hypervisor.toml", "guests/a.bin", "empty", "exact"]);
        assert_eq!(entries[0].data, config);
        assert_eq!(entries[1].data, image);
        assert_eq!(entries[2].data, b"");
        assert_eq!(entries[3].data, [7; BLOCK]);
        assert_eq!(archive.get("guests/a.bin"), Some(&image[..]));
        assert_eq!(archive.get("guests/"), None, "directories are not files");
        assert_eq!(archive.get("guests/b.bin"), None);
    }

    #[test]
    fn data_is_borrowed_from_the_ramdisk() {
        let bytes = archive(&[file("f", b"xyz")]);
        let data = Archive::new(&bytes).unwrap().get("f").unwrap();
        assert_eq!(data.as_ptr(), bytes[BLOCK..].as_ptr());
    }

    #[test]
    fn leading_slash_and_dot_slash_are_ignored_on_both_sides() {
        let bytes = archive(&[
            file("./hypervisor.toml", b"t"),
            file("/guests/a.bin", b"a"),
            file(".//./b", b"b"),
        ]);
        let archive = Archive::new(&bytes).unwrap();
        let paths: Vec<String> = archive.entries().map(|e| e.path).collect();
        assert_eq!(paths, ["hypervisor.toml", "guests/a.bin", "b"]);
        for query in ["hypervisor.toml", "/hypervisor.toml", "./hypervisor.toml"] {
            assert_eq!(archive.get(query), Some(&b"t"[..]), "{query}");
        }
        assert_eq!(archive.get("./guests/a.bin"), Some(&b"a"[..]));
        assert_eq!(archive.get("/b"), Some(&b"b"[..]));
        assert_eq!(archive.get("guests//a.bin"), None, "inner parts are kept");
    }

    #[test]
    fn prefix_is_joined_to_the_name() {
        let long_dir = "guests/".to_string() + &"d".repeat(120);
        let bytes = archive(&[Member {
            name: b"kernel.bin",
            prefix: long_dir.as_bytes(),
            typeflag: 0,
            data: b"k",
        }]);
        let archive = Archive::new(&bytes).unwrap();
        let path = format!("{long_dir}/kernel.bin");
        assert_eq!(archive.entries().next().unwrap().path, path);
        assert_eq!(archive.get(&path), Some(&b"k"[..]));
    }

    #[test]
    fn name_filling_its_field_needs_no_nul() {
        let name = "n".repeat(100);
        let bytes = archive(&[file(&name, b"z")]);
        assert_eq!(Archive::new(&bytes).unwrap().get(&name), Some(&b"z"[..]));
    }

    #[test]
    fn contiguous_file_type_reads_as_a_regular_file() {
        let mut member = file("c", b"c");
        member.typeflag = b'7';
        let bytes = archive(&[member]);
        assert_eq!(Archive::new(&bytes).unwrap().get("c"), Some(&b"c"[..]));
    }

    #[test]
    fn ends_at_the_end_of_the_bytes_without_an_end_marker() {
        let mut bytes = archive(&[file("a", b"1"), file("b", b"2")]);
        bytes.truncate(bytes.len() - 2 * BLOCK);
        let archive = Archive::new(&bytes).unwrap();
        assert_eq!(archive.len(), 2);
        // Also when the last file's padding is cut off.
        let mut bytes = self::archive(&[file("a", b"1")]);
        bytes.truncate(BLOCK + 1);
        assert_eq!(Archive::new(&bytes).unwrap().get("a"), Some(&b"1"[..]));
    }

    #[test]
    fn bytes_after_the_end_marker_are_ignored() {
        let mut bytes = archive(&[file("a", b"1")]);
        bytes.extend_from_slice(b"garbage that is no header");
        assert_eq!(Archive::new(&bytes).unwrap().len(), 1);
    }

    #[test]
    fn checksum_mismatch_names_both_values_and_the_offset() {
        let mut bytes = archive(&[file("a", b"1"), file("b", b"2")]);
        bytes[2 * BLOCK] = b'c'; // the second header's name: "b" -> "c"
        let err = Archive::new(&bytes).unwrap_err();
        let computed = {
            let mut block: [u8; BLOCK] = bytes[2 * BLOCK..3 * BLOCK].try_into().unwrap();
            block[field::CHKSUM].fill(b' ');
            block.iter().map(|&b| u64::from(b)).sum::<u64>()
        };
        assert_eq!(
            err,
            ArchiveError::Checksum {
                offset: 0x400,
                stored: computed - 1,
                computed,
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "ramdisk archive: header at offset 0x400: checksum {:#o} does not match \
                 {computed:#o}, the sum of the header",
                computed - 1
            )
        );
    }

    #[test]
    fn signed_byte_checksum_is_accepted() {
        // A name byte >= 0x80 makes signed and unsigned sums differ.
        let mut block = header(&file("a", b"1"));
        block[1] = 0xC3;
        block[2] = 0xA9; // "aé" in UTF-8
        block[field::CHKSUM].fill(b' ');
        let signed: i64 = block.iter().map(|&b| i64::from(b as i8)).sum();
        put(
            &mut block,
            field::CHKSUM.start,
            format!("{signed:06o}\0 ").as_bytes(),
        );
        let mut bytes = Vec::new();
        append(&mut bytes, &block, b"1");
        assert_eq!(Archive::new(&bytes).unwrap().get("aé"), Some(&b"1"[..]));
    }

    #[test]
    fn gnu_and_foreign_magic_are_refused() {
        let bytes = edited(|h| put(h, field::MAGIC.start, b"ustar  \0"));
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            ArchiveError::Magic {
                offset: 0,
                found: *b"ustar "
            }
        );
        assert_eq!(
            err.to_string(),
            "ramdisk archive: header at offset 0x0: magic \"ustar \" is not \"ustar\\0\": \
             not a POSIX ustar archive (GNU tar needs --format=ustar)"
        );
        let bytes = [0x7F; BLOCK];
        assert!(matches!(
            Archive::new(&bytes),
            Err(ArchiveError::Magic { offset: 0, .. })
        ));
    }

    #[test]
    fn bad_checksum_field_is_a_number_error() {
        let bytes = edited(|_| {});
        let mut bad = bytes.clone();
        bad[field::CHKSUM].copy_from_slice(b"0x1234\0 ");
        assert_eq!(
            Archive::new(&bad),
            Err(ArchiveError::Number {
                offset: 0,
                field: NumericField::Checksum,
                problem: NumberProblem::NotOctal(b'x'),
            })
        );
    }

    #[test]
    fn size_must_be_octal() {
        let cases: [(&[u8; 12], NumberProblem); 4] = [
            (b"00000000009\0", NumberProblem::NotOctal(b'9')),
            (b"\0\0\0\0\0\0\0\0\0\0\0\0", NumberProblem::Empty),
            (b"0000004 x\0\0\0", NumberProblem::NotOctal(b'x')),
            (b"\x80\0\0\0\0\0\0\0\0\0\0\x04", NumberProblem::Base256),
        ];
        for (raw, problem) in cases {
            let bytes = edited(|h| put(h, field::SIZE.start, raw));
            let err = Archive::new(&bytes).unwrap_err();
            assert_eq!(
                err,
                ArchiveError::Number {
                    offset: 0,
                    field: NumericField::Size,
                    problem,
                },
                "{}",
                raw.escape_ascii()
            );
        }
        let bytes = edited(|h| put(h, field::SIZE.start, b"0000000000z\0"));
        assert_eq!(
            Archive::new(&bytes).unwrap_err().to_string(),
            "ramdisk archive: header at offset 0x0: size field has 'z' where an octal digit belongs"
        );
    }

    #[test]
    fn size_field_forms_writers_use_are_accepted() {
        // Leading spaces, space terminator, and all twelve digits.
        for raw in [b"      4 \0\0\0\0", b"00000000004 ", b"000000000004"] {
            let bytes = edited(|h| put(h, field::SIZE.start, raw));
            let archive = Archive::new(&bytes).unwrap();
            assert_eq!(
                archive.get("a"),
                Some(&b"data"[..]),
                "{}",
                raw.escape_ascii()
            );
        }
    }

    #[test]
    fn octal_values_that_overflow_are_too_large() {
        assert_eq!(parse_octal(b"1777777777777777777777"), Ok(u64::MAX));
        assert_eq!(
            parse_octal(b"2000000000000000000000"),
            Err(NumberProblem::TooLarge)
        );
        assert_eq!(parse_octal(b"  17 "), Ok(15));
        assert_eq!(parse_octal(b""), Err(NumberProblem::Empty));
        assert_eq!(parse_octal(b"    "), Err(NumberProblem::Empty));
    }

    #[test]
    fn data_running_past_the_end_is_refused() {
        let mut bytes = archive(&[file("a", b"1"), file("big", &[1; 600])]);
        bytes.truncate(3 * BLOCK + 599);
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            ArchiveError::DataPastEnd {
                offset: 0x400,
                size: 600,
                available: 599,
            }
        );
        assert_eq!(
            err.to_string(),
            "ramdisk archive: header at offset 0x400: file of 600 bytes runs past the end \
             of the ramdisk (599 bytes left after the header)"
        );
        // The largest ustar size, far past any ramdisk.
        let bytes = edited(|h| put(h, field::SIZE.start, b"77777777777\0"));
        assert!(matches!(
            Archive::new(&bytes),
            Err(ArchiveError::DataPastEnd {
                size: 0o77777777777,
                ..
            })
        ));
    }

    #[test]
    fn truncated_header_is_refused() {
        let mut bytes = archive(&[file("a", b"1")]);
        bytes.truncate(2 * BLOCK);
        bytes.extend_from_slice(&header(&file("b", b""))[..300]);
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            ArchiveError::Truncated {
                offset: 0x400,
                remaining: 300,
            }
        );
        assert_eq!(
            err.to_string(),
            "ramdisk archive: header at offset 0x400: only 300 bytes left where a 512-byte \
             header belongs"
        );
    }

    #[test]
    fn names_must_be_utf8() {
        let bytes = edited(|h| h[0] = 0xFF);
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            ArchiveError::NotUtf8 {
                offset: 0,
                field: NameField::Name,
            }
        );
        assert_eq!(
            err.to_string(),
            "ramdisk archive: header at offset 0x0: name is not UTF-8"
        );
        let bytes = edited(|h| put(h, field::PREFIX.start, b"dir\xC0"));
        assert_eq!(
            Archive::new(&bytes),
            Err(ArchiveError::NotUtf8 {
                offset: 0,
                field: NameField::Prefix,
            })
        );
    }

    #[test]
    fn files_need_a_name() {
        for name in [&b""[..], b"./", b"/"] {
            let bytes = edited(|h| {
                h[field::NAME].fill(0);
                put(h, 0, name);
            });
            assert_eq!(
                Archive::new(&bytes),
                Err(ArchiveError::EmptyName { offset: 0 }),
                "{}",
                name.escape_ascii()
            );
        }
    }

    #[test]
    fn links_devices_and_extension_headers_are_refused() {
        for typeflag in *b"12346xgLZ" {
            let bytes = edited(|h| h[field::TYPEFLAG] = typeflag);
            assert_eq!(
                Archive::new(&bytes),
                Err(ArchiveError::UnsupportedType {
                    offset: 0,
                    typeflag
                })
            );
        }
        let bytes = edited(|h| h[field::TYPEFLAG] = b'2');
        assert_eq!(
            Archive::new(&bytes).unwrap_err().to_string(),
            "ramdisk archive: header at offset 0x0: entry type '2' (symbolic link) is not \
             supported: only regular files and directories"
        );
    }

    #[test]
    fn lone_zero_block_before_a_header_is_refused() {
        let first = archive(&[file("a", b"1")]);
        let mut bytes = first[..2 * BLOCK].to_vec();
        bytes.extend_from_slice(&[0; BLOCK]);
        bytes.extend_from_slice(&first);
        assert_eq!(
            Archive::new(&bytes),
            Err(ArchiveError::LoneZeroBlock { offset: 0x400 })
        );
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let bytes = archive(&[file("a", b"1"), file("b", b"2"), file("./a", b"3")]);
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            ArchiveError::Duplicate {
                offset: 0x800,
                path: "a".into(),
                first: 0,
            }
        );
        assert_eq!(
            err.to_string(),
            "ramdisk archive: header at offset 0x800: \"a\" is already in the archive, \
             at offset 0x0"
        );
    }

    #[test]
    fn every_error_reports_its_offset() {
        let err = ArchiveError::LoneZeroBlock { offset: 0x1200 };
        assert_eq!(err.offset(), 0x1200);
        assert!(err
            .to_string()
            .starts_with("ramdisk archive: header at offset 0x1200: "));
    }

    /// An archive made by the system's `tar --format=ustar` reads back
    /// whole. Fails if `tar` cannot be run: every machine that runs these
    /// tests (Linux hosts, CI) has one.
    #[test]
    fn reads_an_archive_made_by_system_tar() {
        use std::process::Command;

        let root =
            std::env::temp_dir().join(format!("ferrovisor-archive-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // A directory name long enough that the path needs the prefix field.
        let long_dir = format!("guests/{}", "l".repeat(90));
        let config = b"[[guest]]\nname = \"linux\"\n".to_vec();
        let image: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        std::fs::create_dir_all(root.join(&long_dir)).unwrap();
        std::fs::write(root.join("hypervisor.toml"), &config).unwrap();
        std::fs::write(root.join(&long_dir).join("linux-guest.bin"), &image).unwrap();
        std::fs::write(root.join("guests/empty"), b"").unwrap();

        let output = Command::new("tar")
            .args(["--format=ustar", "-cf", "-", "-C"])
            .arg(&root)
            .args(["hypervisor.toml", "guests"])
            .output()
            .expect("running tar");
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            output.status.success(),
            "tar failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let archive = Archive::new(&output.stdout).unwrap();
        let mut paths: Vec<String> = archive.entries().map(|e| e.path).collect();
        paths.sort();
        let image_path = format!("{long_dir}/linux-guest.bin");
        assert_eq!(
            paths,
            ["guests/empty", image_path.as_str(), "hypervisor.toml"]
        );
        assert_eq!(archive.get("hypervisor.toml"), Some(&config[..]));
        assert_eq!(archive.get(&image_path), Some(&image[..]));
        assert_eq!(archive.get("/guests/empty"), Some(&b""[..]));
    }

    proptest! {
        /// Arbitrary ramdisk bytes give an archive or an error, never a
        /// panic, and every file's data lies inside the ramdisk.
        #[test]
        fn random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..3 * BLOCK)
        ) {
            if let Ok(archive) = Archive::new(&bytes) {
                for entry in archive.entries() {
                    let start = entry.data.as_ptr() as usize - bytes.as_ptr() as usize;
                    prop_assert!(start + entry.data.len() <= bytes.len());
                }
            }
        }

        /// A valid archive with one byte changed anywhere still gives an
        /// archive or an error, never a panic; a change inside a header
        /// (other than to its checksum) is always caught.
        #[test]
        fn corrupted_archives_never_panic(at in 0usize..5 * BLOCK, value in any::<u8>()) {
            let mut bytes = archive(&[
                file("hypervisor.toml", b"x = 1"),
                file("g/a.bin", &[9; 700]),
            ]);
            let header = at < BLOCK || (2 * BLOCK..3 * BLOCK).contains(&at);
            let in_checksum = field::CHKSUM.contains(&(at % BLOCK));
            let changed = bytes[at] != value;
            bytes[at] = value;
            let result = Archive::new(&bytes);
            if header && changed && !in_checksum {
                prop_assert!(result.is_err());
            }
        }
    }
}
