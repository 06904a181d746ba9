//! A writer of uncompressed `newc` cpio archives, the format the Linux
//! kernel unpacks as its initramfs (Documentation/driver-api/early-userspace/
//! buffer-format.rst in the kernel tree).
//!
//! Each member is a 110-byte ASCII header (the magic `070701`, then thirteen
//! 8-digit hexadecimal fields), its NUL-terminated name padded with NULs to
//! a multiple of 4 bytes counted from the header's start, then its data
//! padded the same way. The archive ends with a member named `TRAILER!!!`.
//! Everything here is in memory and pure, so xtask writes an initramfs with
//! device nodes without being root, and the tests read the bytes back.

use std::collections::BTreeSet;

/// The magic of a `newc` header (no checksum).
const MAGIC: &[u8; 6] = b"070701";
/// A header's size: the magic and thirteen 8-digit fields.
const HEADER_LEN: usize = 6 + 13 * 8;
/// The name of the member that ends an archive.
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode` (POSIX `<sys/stat.h>`).
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being written: members in the order they were added, then
/// the trailer that [`Archive::finish`] appends.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
    names: BTreeSet<String>,
}

/// One member's header fields (those the writer does not fill itself).
struct Member<'a> {
    name: &'a str,
    kind: u32,
    permissions: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// A folder (`name` without a leading `/`, such as `proc` or `usr/bin`).
    ///
    /// # Errors
    ///
    /// See [`Archive::file`].
    pub fn dir(&mut self, name: &str, permissions: u32) -> Result<(), String> {
        self.add(Member {
            name,
            kind: S_IFDIR,
            permissions,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        })
    }

    /// A regular file with its contents.
    ///
    /// # Errors
    ///
    /// A message when the name is empty, absolute, has an empty, `.` or `..`
    /// component or a NUL, was already added, or the permissions have bits
    /// beyond `0o7777`, or the data exceeds the format's 4 GiB.
    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> Result<(), String> {
        self.add(Member {
            name,
            kind: S_IFREG,
            permissions,
            nlink: 1,
            rdev: (0, 0),
            data,
        })
    }

    /// A symbolic link to `target` (stored as the member's data).
    ///
    /// # Errors
    ///
    /// See [`Archive::file`]; also an empty target.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), String> {
        if target.is_empty() {
            return Err(format!("cpio: symbolic link {name} has an empty target"));
        }
        self.add(Member {
            name,
            kind: S_IFLNK,
            permissions: 0o777,
            nlink: 1,
            rdev: (0, 0),
            data: target.as_bytes(),
        })
    }

    /// A character device node with its major and minor numbers.
    ///
    /// # Errors
    ///
    /// See [`Archive::file`].
    pub fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), String> {
        self.add(Member {
            name,
            kind: S_IFCHR,
            permissions,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        })
    }

    /// Appends the trailer and returns the archive's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.push(TRAILER, 0, 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn add(&mut self, member: Member) -> Result<(), String> {
        let name = member.name;
        let bad = |why: &str| Err(format!("cpio: member name {name:?} {why}"));
        if name.is_empty() {
            return bad("is empty");
        }
        if name.starts_with('/') {
            return bad("is absolute; names are relative to the archive's root");
        }
        if name.contains('\0') {
            return bad("contains a NUL");
        }
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return bad("has an empty, `.` or `..` component");
        }
        if name == TRAILER {
            return bad("is the trailer's");
        }
        if member.permissions & !0o7777 != 0 {
            return bad("has permission bits beyond 0o7777");
        }
        if u32::try_from(member.data.len()).is_err() {
            return bad("has more data than the format's 4 GiB");
        }
        if !self.names.insert(name.to_string()) {
            return bad("was added twice");
        }
        // Inode 0 is left unused; the kernel links members by (inode,
        // device) only for regular files with more than one link, and every
        // member here has its own inode anyway.
        self.next_inode += 1;
        let inode = self.next_inode;
        let mode = member.kind | member.permissions;
        self.push(name, inode, mode, member.nlink, member.rdev, member.data);
        Ok(())
    }

    fn push(
        &mut self,
        name: &str,
        inode: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) {
        let start = self.bytes.len();
        let name_len = name.len() + 1;
        let fields: [u32; 13] = [
            inode,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            data.len() as u32,
            0, // devmajor, devminor: the device the file came from
            0,
            rdev.0,
            rdev.1,
            name_len as u32,
            0, // check: only the `070702` format sums the data
        ];
        self.bytes.extend_from_slice(MAGIC);
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        debug_assert_eq!(self.bytes.len() - start, HEADER_LEN);
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// NULs up to the next multiple of 4 bytes. Every header starts on such
    /// a boundary, so padding relative to the archive's start is padding
    /// relative to the header's.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One member read back: name, the thirteen fields, data.
    #[derive(Debug)]
    struct Read {
        name: String,
        fields: [u32; 13],
        data: Vec<u8>,
    }

    /// A reader written from the format's description, independent of the
    /// writer: it checks the magic, the alignment and the NUL terminator.
    fn read(bytes: &[u8]) -> Vec<Read> {
        let mut members = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "header at {at} is not aligned");
            assert_eq!(&bytes[at..at + 6], MAGIC, "magic at {at}");
            let mut fields = [0u32; 13];
            for (i, f) in fields.iter_mut().enumerate() {
                let text = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                *f = u32::from_str_radix(text, 16).unwrap();
            }
            let name_len = fields[11] as usize;
            let name_at = at + HEADER_LEN;
            assert_eq!(bytes[name_at + name_len - 1], 0, "name is NUL-terminated");
            let name = String::from_utf8(bytes[name_at..name_at + name_len - 1].to_vec()).unwrap();
            let data_at = (name_at + name_len).next_multiple_of(4);
            assert!(bytes[name_at + name_len..data_at].iter().all(|&b| b == 0));
            let size = fields[6] as usize;
            let data = bytes[data_at..data_at + size].to_vec();
            at = (data_at + size).next_multiple_of(4);
            assert!(bytes[data_at + size..at].iter().all(|&b| b == 0));
            let done = name == TRAILER;
            members.push(Read { name, fields, data });
            if done {
                assert_eq!(at, bytes.len(), "nothing after the trailer");
                return members;
            }
        }
    }

    #[test]
    fn an_empty_archive_is_the_trailer() {
        let bytes = Archive::new().finish();
        // 110 + 11 = 121 bytes, padded to 124.
        assert_eq!(bytes.len(), 124);
        let header = [
            "070701", "00000000", "00000000", "00000000", "00000000", "00000001", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000000", "0000000B", "00000000",
        ]
        .concat();
        assert_eq!(&bytes[..HEADER_LEN], header.as_bytes());
        let members = read(&bytes);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name, TRAILER);
        assert_eq!(members[0].fields[4], 1, "the trailer has one link");
    }

    #[test]
    fn members_keep_their_type_mode_data_and_device_numbers() {
        let mut a = Archive::new();
        a.dir("dev", 0o755).unwrap();
        a.char_device("dev/console", 0o600, 5, 1).unwrap();
        a.dir("bin", 0o755).unwrap();
        a.file("bin/busybox", 0o755, b"\x7fELF....").unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        a.file("empty", 0o644, b"").unwrap();
        let members = read(&a.finish());
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "bin/busybox",
                "bin/sh",
                "init",
                "empty",
                TRAILER
            ]
        );
        let by = |name: &str| members.iter().find(|m| m.name == name).unwrap();
        assert_eq!(by("dev").fields[1], 0o040_755);
        assert_eq!(by("dev").fields[4], 2);
        let console = by("dev/console");
        assert_eq!(console.fields[1], 0o020_600);
        assert_eq!((console.fields[9], console.fields[10]), (5, 1));
        assert!(console.data.is_empty());
        assert_eq!(by("bin/busybox").fields[1], 0o100_755);
        assert_eq!(by("bin/busybox").data, b"\x7fELF....");
        assert_eq!(by("bin/sh").fields[1], 0o120_777);
        assert_eq!(by("bin/sh").data, b"busybox");
        assert_eq!(by("init").data, b"#!/bin/sh\n");
        assert_eq!(by("empty").fields[6], 0);
        // Distinct inodes, root-owned, a fixed mtime.
        let mut inodes: Vec<u32> = members[..members.len() - 1]
            .iter()
            .map(|m| m.fields[0])
            .collect();
        inodes.sort();
        inodes.dedup();
        assert_eq!(inodes.len(), members.len() - 1);
        assert!(inodes.iter().all(|&i| i != 0));
        for m in &members {
            assert_eq!(
                (m.fields[2], m.fields[3], m.fields[5]),
                (0, 0, 0),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn names_and_data_of_every_length_are_padded_to_four_bytes() {
        // Name lengths 1..=8 with their NUL cover every padding amount, and
        // so do data lengths 0..=7.
        let mut a = Archive::new();
        let mut expected = Vec::new();
        for len in 1..=8 {
            let name = "n".repeat(len);
            let data = vec![b'x'; len - 1];
            a.file(&name, 0o644, &data).unwrap();
            expected.push((name, data));
        }
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        let members = read(&bytes);
        for ((name, data), m) in expected.iter().zip(&members) {
            assert_eq!(&m.name, name);
            assert_eq!(&m.data, data);
        }
    }

    #[test]
    fn the_same_members_give_the_same_bytes() {
        let build = || {
            let mut a = Archive::new();
            a.dir("tmp", 0o1777).unwrap();
            a.file("init", 0o755, b"x").unwrap();
            a.finish()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn bad_names_and_modes_are_refused() {
        let mut a = Archive::new();
        for (name, why) in [
            ("", "is empty"),
            ("/init", "is absolute"),
            ("a//b", "empty"),
            ("a/./b", "`.`"),
            ("../x", "`..`"),
            ("a\0b", "NUL"),
            ("TRAILER!!!", "trailer"),
        ] {
            let e = a.file(name, 0o644, b"").unwrap_err();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        a.file("init", 0o755, b"").unwrap();
        assert!(a.file("init", 0o755, b"").unwrap_err().contains("twice"));
        assert!(a
            .dir("d", 0o40_755)
            .unwrap_err()
            .contains("permission bits"));
        assert!(a.symlink("l", "").unwrap_err().contains("empty target"));
    }
}
