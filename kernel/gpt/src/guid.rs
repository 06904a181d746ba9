//! GUIDs as a GPT stores them, their text form, and the partition types
//! Ferrovisor writes or looks for.

use core::fmt;

/// A GUID as it lies on disk: the first three fields little-endian, the
/// last eight bytes in order (UEFI 2.10 appendix A, "EFI_GUID").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

/// Where each on-disk byte's two hex digits start in the text form.
const TEXT_AT: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];

impl Guid {
    /// The all-zero GUID, the type of an unused partition entry.
    pub const ZERO: Self = Self([0; 16]);

    /// The GUID written `d1-d2-d3-d4[0..2]-d4[2..8]` in text.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The GUID whose on-disk bytes are `bytes`.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The on-disk bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// Whether this is the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Parses the registry form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    /// (either case); `None` for anything else.
    pub const fn parse(text: &str) -> Option<Self> {
        let s = text.as_bytes();
        if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
            return None;
        }
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let (hi, lo) = match (hex_digit(s[TEXT_AT[i]]), hex_digit(s[TEXT_AT[i] + 1])) {
                (Some(hi), Some(lo)) => (hi, lo),
                _ => return None,
            };
            out[i] = hi << 4 | lo;
            i += 1;
        }
        Some(Self(out))
    }

    /// A GUID literal, for constants: a malformed one stops the build.
    pub const fn literal(text: &str) -> Self {
        match Self::parse(text) {
            Some(guid) => guid,
            None => panic!("malformed GUID literal"),
        }
    }
}

/// One hexadecimal digit's value.
const fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Guid {
    /// The registry form, lower case: `c12a7328-f81f-11d2-ba4b-00a0c93ec93b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

/// The partition type of Ferrovisor's config partition,
/// `43512ee0-5019-4c06-ace2-4e748860ee00`: a random GUID generated for
/// Ferrovisor alone (`/proc/sys/kernel/random/uuid`), which xtask writes
/// for the shipped disk and the kernel looks for. The partition holds a
/// FAT file system with `hypervisor.toml` and the guest images; its GPT
/// *name* is [`CONFIG_PARTITION_NAME`], and the kernel finds it by this
/// type first and by that name only when no partition has the type.
///
/// With `sgdisk`: `--typecode=N:43512ee0-5019-4c06-ace2-4e748860ee00
/// --change-name=N:FERROCFG`.
pub const CONFIG_PARTITION_TYPE: Guid = Guid::from_fields(
    0x4351_2ee0,
    0x5019,
    0x4c06,
    [0xac, 0xe2, 0x4e, 0x74, 0x88, 0x60, 0xee, 0x00],
);

/// The GPT partition name of Ferrovisor's config partition (and its FAT
/// volume label); its type is [`CONFIG_PARTITION_TYPE`].
pub const CONFIG_PARTITION_NAME: &str = "FERROCFG";

/// EFI system partition, `c12a7328-f81f-11d2-ba4b-00a0c93ec93b` (UEFI 2.10
/// table 5.7).
pub const EFI_SYSTEM_PARTITION: Guid = Guid::from_fields(
    0xc12a_7328,
    0xf81f,
    0x11d2,
    [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b],
);

/// Microsoft basic data, `ebd0a0a2-b9e5-4433-87c0-68b6b72699c7`: the type
/// most tools give a FAT partition.
pub const BASIC_DATA_PARTITION: Guid = Guid::from_fields(
    0xebd0_a0a2,
    0xb9e5,
    0x4433,
    [0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7],
);

/// "BIOS boot partition", `21686148-6449-6e6f-744e-656564454649`: GRUB's
/// type for a boot loader's own sectors.
pub const BIOS_BOOT_PARTITION: Guid = Guid::literal("21686148-6449-6e6f-744e-656564454649");
