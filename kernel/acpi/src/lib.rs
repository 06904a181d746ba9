//! ACPI tables, read just far enough to power the machine off and to find
//! the processors: the RSDP, the RSDT/XSDT, the FADT, the DSDT's `\_S5`
//! object and the MADT.
//!
//! Hand-written on purpose instead of using the `acpi`/`aml` crates:
//! Ferrovisor needs four fixed-layout tables and one constant package, not
//! an AML interpreter, and a few hundred lines of checked parsing are easier
//! to audit than a general one. The price: a `\_S5` that is a method, sits
//! in an SSDT, or whose elements are expressions or references, is reported
//! as missing or malformed.
//!
//! Everything here is pure. Physical memory is reached only through
//! [`PhysMemory`], which the kernel implements over its physical-memory
//! mapping and the tests over a byte vector, and nothing allocates but the
//! [`Madt`]'s lists of processors and I/O APICs. Firmware tables are
//! untrusted input: every length, checksum and offset is checked, and a
//! malformed table is an [`AcpiError`], never a panic.
//!
//! How tables are read without allocation: a table's 36-byte header is read
//! first and its length bounded by [`MAX_TABLE_LEN`]; the checksum is summed
//! through a small stack buffer; root-table entries are read one at a time;
//! the FADT's known fields are copied into a fixed buffer; the DSDT is
//! scanned for `\_S5` through a fixed window that overlaps the next one by
//! the longest `\_S5` encoding decoded here, so an object that straddles two
//! windows is still seen whole; the MADT's entries are read one at a time.
//!
//! Section numbers are those of the ACPI Specification 6.x: RSDP 5.2.5,
//! table header 5.2.6, RSDT 5.2.7, XSDT 5.2.8, FADT 5.2.9, MADT 5.2.12,
//! Generic Address Structure 5.2.3.2, AML data objects 20.2.3, package
//! length 20.2.4. Soft
//! off writes `SLP_TYPa | SLP_EN` to PM1a_CNT (the `\_Sx` objects in chapter
//! 7 and the PM1 control register in chapter 4).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::cmp::min;
use core::fmt;

/// Reads physical memory on behalf of the parser.
pub trait PhysMemory {
    /// Fills `buf` with the bytes at physical addresses
    /// `phys..phys + buf.len()`.
    ///
    /// # Errors
    ///
    /// Where the range is not memory the implementation can read, an error
    /// (normally [`AcpiError::Unreadable`]) that the parser passes on.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), AcpiError>;
}

/// The longest table accepted. Real tables are far smaller (large server
/// DSDTs are a few hundred KiB); the cap only bounds the work done on a
/// corrupt length field.
pub const MAX_TABLE_LEN: u32 = 1 << 20;

/// The longest RSDP accepted (ACPI 2.0 and later define 36 bytes).
const MAX_RSDP_LEN: u32 = 1024;
/// The ACPI 1.0 RSDP, which the first checksum covers.
const RSDP_V1_LEN: usize = 20;
/// The ACPI 2.0 RSDP, with the length, the XSDT and the extended checksum.
const RSDP_V2_LEN: usize = 36;
/// The system description table header (5.2.6).
const HEADER_LEN: usize = 36;
/// The ACPI 1.0 FADT: everything up to and including `Flags`.
const FADT_MIN_LEN: u32 = 116;
/// The FADT fields this module knows, through ACPI 6.x (`Hypervisor Vendor
/// Identity` ends at 276).
const FADT_KNOWN_LEN: usize = 276;
/// The MADT's fixed part: the header, the local interrupt controller address
/// and the flags. Its entries follow.
const MADT_MIN_LEN: u32 = 44;

/// A four-character table signature, such as `FACP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    /// The Fixed ACPI Description Table.
    pub const FADT: Self = Self(*b"FACP");
    /// The Differentiated System Description Table (AML).
    pub const DSDT: Self = Self(*b"DSDT");
    /// The Multiple APIC Description Table.
    pub const MADT: Self = Self(*b"APIC");
    /// The Root System Description Table (32-bit entries).
    pub const RSDT: Self = Self(*b"RSDT");
    /// The Extended System Description Table (64-bit entries).
    pub const XSDT: Self = Self(*b"XSDT");

    /// The name people use for the table: `FADT` for `FACP`, `MADT` for
    /// `APIC`, else the signature itself.
    fn name(self) -> Named {
        Named(self)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_ascii(f, &self.0)
    }
}

struct Named(Signature);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Signature::FADT => f.write_str("FADT"),
            Signature::MADT => f.write_str("MADT"),
            other => other.fmt(f),
        }
    }
}

/// A six-character OEM id, space padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OemId(pub [u8; 6]);

impl fmt::Display for OemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .iter()
            .rposition(|&b| b != b' ' && b != 0)
            .map_or(0, |i| i + 1);
        write_ascii(f, self.0.get(..end).unwrap_or_default())
    }
}

/// Firmware strings are not trusted to be printable.
fn write_ascii(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for &b in bytes {
        let c = if b == b' ' || b.is_ascii_graphic() {
            char::from(b)
        } else {
            '?'
        };
        fmt::Write::write_char(f, c)?;
    }
    Ok(())
}

/// Everything that can be wrong with the firmware's tables, or with reaching
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The memory reader could not read `len` bytes at `phys`.
    Unreadable {
        /// Where the read started.
        phys: u64,
        /// How many bytes were asked for.
        len: usize,
    },
    /// A table's address plus an offset inside it overflowed 64 bits.
    AddressOverflow {
        /// The table's address.
        phys: u64,
        /// The offset inside it.
        offset: usize,
    },
    /// No `RSD PTR ` signature at the address the bootloader gave.
    RsdpSignature {
        /// The RSDP's address.
        phys: u64,
    },
    /// The ACPI 1.0 checksum (first 20 bytes) of the RSDP is not zero.
    RsdpChecksum {
        /// The RSDP's address.
        phys: u64,
    },
    /// An ACPI 2.0+ RSDP states a length outside 36..=1024.
    RsdpLength {
        /// The RSDP's address.
        phys: u64,
        /// The stated length.
        length: u32,
    },
    /// The extended checksum (whole ACPI 2.0+ RSDP) is not zero.
    RsdpExtendedChecksum {
        /// The RSDP's address.
        phys: u64,
    },
    /// The RSDP names neither an XSDT nor an RSDT.
    NoRootTable {
        /// The RSDP's address.
        rsdp: u64,
    },
    /// A table does not carry the signature it was looked up by.
    TableSignature {
        /// The table's address.
        phys: u64,
        /// The signature wanted.
        expected: Signature,
        /// The signature found.
        found: Signature,
    },
    /// A table's length is below the minimum for its kind or above
    /// [`MAX_TABLE_LEN`].
    TableLength {
        /// The table's address.
        phys: u64,
        /// The table's signature.
        signature: Signature,
        /// The length its header states.
        length: u32,
        /// The least length accepted for this kind of table.
        min: u32,
    },
    /// A table's bytes do not sum to zero.
    TableChecksum {
        /// The table's address.
        phys: u64,
        /// The table's signature.
        signature: Signature,
    },
    /// The root table has no entry with this signature.
    TableNotFound {
        /// The signature looked for.
        signature: Signature,
        /// Which root table was searched.
        root: RootKind,
        /// The root table's address.
        root_phys: u64,
    },
    /// The FADT gives no DSDT address.
    NoDsdt {
        /// The FADT's address.
        fadt: u64,
    },
    /// The FADT describes a hardware-reduced ACPI platform, which has no PM1
    /// control block; sleep goes through the sleep control register instead.
    HardwareReduced {
        /// The FADT's address.
        fadt: u64,
    },
    /// The FADT gives no PM1a control block.
    NoPm1aControl {
        /// The FADT's address.
        fadt: u64,
    },
    /// A register lives in an address space other than system I/O.
    UnsupportedAddressSpace {
        /// The register's name, such as `PM1a_CNT`.
        register: &'static str,
        /// Its address space.
        space: AddressSpace,
        /// Its address there.
        address: u64,
    },
    /// An I/O register's address does not fit the 16-bit port space.
    PortOutOfRange {
        /// The register's name.
        register: &'static str,
        /// Its address.
        address: u64,
    },
    /// The DSDT has no `Name (_S5, Package ...)`.
    NoS5,
    /// Something looked like the `\_S5` object but could not be decoded.
    MalformedS5 {
        /// Where the candidate's NameOp sits, from the start of the bytes
        /// searched (for the DSDT, from the start of its header).
        offset: usize,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// An SLP_TYP value does not fit the 3-bit SLP_TYP field.
    SleepTypeTooWide {
        /// `SLP_TYPa` or `SLP_TYPb`.
        which: &'static str,
        /// The value.
        value: u16,
    },
    /// A MADT entry states a length below 2 (its own type and length bytes)
    /// or below the fixed size of its type.
    MadtEntryLength {
        /// The MADT's address.
        phys: u64,
        /// The entry's offset from the start of the MADT's header.
        offset: usize,
        /// The entry's type.
        entry_type: u8,
        /// The length it states.
        length: u8,
        /// The least length accepted: 2, or the size its type defines.
        min: u8,
    },
    /// A MADT entry runs past the end of the table.
    MadtEntryOverrun {
        /// The MADT's address.
        phys: u64,
        /// The entry's offset from the start of the MADT's header.
        offset: usize,
        /// Where the entry would end: its offset plus the length it states,
        /// or plus 2 where not even its type and length bytes fit.
        end: usize,
        /// The table's length.
        table_len: u32,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unreadable { phys, len } => write!(f, "cannot read {len} bytes of physical memory at {phys:#x}"),
            Self::AddressOverflow { phys, offset } => {
                write!(f, "offset {offset:#x} into the table at {phys:#x} overflows the address space")
            }
            Self::RsdpSignature { phys } => {
                write!(f, "no RSDP at {phys:#x}: the \"RSD PTR \" signature is missing (wrong address from the bootloader?)")
            }
            Self::RsdpChecksum { phys } => write!(f, "RSDP checksum mismatch at {phys:#x}"),
            Self::RsdpLength { phys, length } => {
                write!(f, "RSDP at {phys:#x} states length {length}, outside {RSDP_V2_LEN}..={MAX_RSDP_LEN}")
            }
            Self::RsdpExtendedChecksum { phys } => write!(f, "RSDP extended checksum mismatch at {phys:#x}"),
            Self::NoRootTable { rsdp } => write!(f, "the RSDP at {rsdp:#x} names neither an XSDT nor an RSDT"),
            Self::TableSignature { phys, expected, found } => {
                write!(f, "expected the {} at {phys:#x} but found signature \"{found}\"", expected.name())
            }
            Self::TableLength { phys, signature, length, min } => write!(
                f,
                "{} at {phys:#x} states length {length}, outside {min}..={MAX_TABLE_LEN}",
                signature.name()
            ),
            Self::TableChecksum { phys, signature } => write!(f, "{} checksum mismatch at {phys:#x}", signature.name()),
            Self::TableNotFound { signature, root, root_phys } => {
                write!(f, "{} not found in the {root} at {root_phys:#x}", signature.name())
            }
            Self::NoDsdt { fadt } => write!(f, "the FADT at {fadt:#x} gives no DSDT address"),
            Self::HardwareReduced { fadt } => write!(
                f,
                "the FADT at {fadt:#x} describes a hardware-reduced ACPI platform (no PM1 control block); \
                 power off through the sleep control register is not supported"
            ),
            Self::NoPm1aControl { fadt } => write!(f, "the FADT at {fadt:#x} gives no PM1a control block"),
            Self::UnsupportedAddressSpace { register, space, address } => write!(
                f,
                "{register} is in {space} at {address:#x}; only system I/O PM1 control blocks are supported"
            ),
            Self::PortOutOfRange { register, address } => {
                write!(f, "{register} at I/O address {address:#x} is beyond the 16-bit port space")
            }
            Self::NoS5 => f.write_str("no \\_S5 object in the DSDT"),
            Self::MalformedS5 { offset, reason } => {
                write!(f, "malformed \\_S5 object at DSDT offset {offset:#x}: {reason}")
            }
            Self::SleepTypeTooWide { which, value } => {
                write!(f, "\\_S5 gives {which} = {value:#x}, which does not fit the 3-bit SLP_TYP field")
            }
            Self::MadtEntryLength { phys, offset, entry_type, length, min } => {
                write!(f, "MADT at {phys:#x}: the entry at offset {offset:#x} (type {entry_type}")?;
                match madt_entry_kind(entry_type) {
                    Some((size, name)) if min == size => {
                        write!(f, ", {name}) states length {length}; that type is {min} bytes")
                    }
                    _ => write!(
                        f,
                        ") states length {length}; an entry is at least {min} bytes (its type and length)"
                    ),
                }
            }
            Self::MadtEntryOverrun { phys, offset, end, table_len } => write!(
                f,
                "MADT at {phys:#x}: the entry at offset {offset:#x} runs to {end:#x}, \
                 past the table's end at {table_len:#x}"
            ),
        }
    }
}

/// `N` bytes at `offset`, or zeros where the bytes do not reach that far.
/// Used for fields whose absence the spec defines as zero ("not provided").
fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    bytes
        .get(offset..)
        .and_then(|rest| rest.get(..N))
        .and_then(|f| f.try_into().ok())
        .unwrap_or([0; N])
}

fn u8_at(bytes: &[u8], offset: usize) -> u8 {
    bytes.get(offset).copied().unwrap_or(0)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(field(bytes, offset))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(field(bytes, offset))
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |s, &b| s.wrapping_add(b))
}

/// `phys + offset`, checked.
fn at(phys: u64, offset: usize) -> Result<u64, AcpiError> {
    u64::try_from(offset)
        .ok()
        .and_then(|o| phys.checked_add(o))
        .ok_or(AcpiError::AddressOverflow { phys, offset })
}

fn read_array<const N: usize>(mem: &impl PhysMemory, phys: u64) -> Result<[u8; N], AcpiError> {
    let mut buf = [0; N];
    mem.read(phys, &mut buf)?;
    Ok(buf)
}

/// The byte sum of `len` bytes at `phys`, read through a stack buffer.
fn checksum(mem: &impl PhysMemory, phys: u64, len: usize) -> Result<u8, AcpiError> {
    let mut buf = [0u8; 256];
    let mut total = 0u8;
    let mut done = 0;
    while done < len {
        let chunk = &mut buf[..min(256, len - done)];
        mem.read(at(phys, done)?, chunk)?;
        total = total.wrapping_add(sum(chunk));
        done += chunk.len();
    }
    Ok(total)
}

/// The Root System Description Pointer (5.2.5), validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// Where it is.
    pub phys: u64,
    /// 0 for ACPI 1.0, 2 for ACPI 2.0 and later.
    pub revision: u8,
    /// The firmware vendor.
    pub oem_id: OemId,
    /// The RSDT's address (0 where absent).
    pub rsdt: u32,
    /// The XSDT's address, on ACPI 2.0+ where nonzero.
    pub xsdt: Option<u64>,
}

impl Rsdp {
    /// Reads and validates the RSDP at `phys`: the signature, the ACPI 1.0
    /// checksum, and on revision 2 or later the length and extended checksum.
    ///
    /// # Errors
    ///
    /// `RsdpSignature`, `RsdpChecksum`, `RsdpLength`, `RsdpExtendedChecksum`,
    /// or the reader's error.
    pub fn read(mem: &impl PhysMemory, phys: u64) -> Result<Self, AcpiError> {
        let v1: [u8; RSDP_V1_LEN] = read_array(mem, phys)?;
        if !v1.starts_with(b"RSD PTR ") {
            return Err(AcpiError::RsdpSignature { phys });
        }
        if sum(&v1) != 0 {
            return Err(AcpiError::RsdpChecksum { phys });
        }
        let mut rsdp = Rsdp {
            phys,
            revision: u8_at(&v1, 15),
            oem_id: OemId(field(&v1, 9)),
            rsdt: u32_at(&v1, 16),
            xsdt: None,
        };
        if rsdp.revision >= 2 {
            let v2: [u8; RSDP_V2_LEN] = read_array(mem, phys)?;
            let length = u32_at(&v2, 20);
            if !(RSDP_V2_LEN as u32..=MAX_RSDP_LEN).contains(&length) {
                return Err(AcpiError::RsdpLength { phys, length });
            }
            if checksum(mem, phys, length as usize)? != 0 {
                return Err(AcpiError::RsdpExtendedChecksum { phys });
            }
            rsdp.xsdt = Some(u64_at(&v2, 24)).filter(|&a| a != 0);
        }
        Ok(rsdp)
    }

    /// Reads and validates the root table: the XSDT where the RSDP gives
    /// one, else the RSDT. A broken XSDT is an error, not a reason to fall
    /// back to the RSDT: firmware that corrupts one table is not trusted
    /// with the other.
    ///
    /// # Errors
    ///
    /// `NoRootTable`, or any error of [`read_table`].
    pub fn root_table(&self, mem: &impl PhysMemory) -> Result<RootTable, AcpiError> {
        let (phys, kind) = match (self.xsdt, self.rsdt) {
            (Some(xsdt), _) => (xsdt, RootKind::Xsdt),
            (None, 0) => return Err(AcpiError::NoRootTable { rsdp: self.phys }),
            (None, rsdt) => (u64::from(rsdt), RootKind::Rsdt),
        };
        let table = read_table(mem, phys, kind.signature())?;
        Ok(RootTable { table, kind })
    }
}

/// The header every system description table starts with (5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdtHeader {
    /// The table's signature.
    pub signature: Signature,
    /// The whole table's length, header included.
    pub length: u32,
    /// The table's revision.
    pub revision: u8,
    /// The firmware vendor.
    pub oem_id: OemId,
}

impl SdtHeader {
    fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        SdtHeader {
            signature: Signature(field(bytes, 0)),
            length: u32_at(bytes, 4),
            revision: u8_at(bytes, 8),
            oem_id: OemId(field(bytes, 10)),
        }
    }
}

/// A table whose signature, length and checksum have been checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Where it is.
    pub phys: u64,
    /// Its header.
    pub header: SdtHeader,
}

/// The least length accepted for each kind of table.
fn min_len(signature: Signature) -> u32 {
    match signature {
        Signature::FADT => FADT_MIN_LEN,
        Signature::MADT => MADT_MIN_LEN,
        _ => HEADER_LEN as u32,
    }
}

/// Reads the table at `phys` and checks that it carries `expected`, that
/// its length is within bounds for its kind, and that it sums to zero.
///
/// # Errors
///
/// `TableSignature`, `TableLength`, `TableChecksum`, or the reader's error
/// (a table that runs past readable memory gives the reader's error).
pub fn read_table(
    mem: &impl PhysMemory,
    phys: u64,
    expected: Signature,
) -> Result<Table, AcpiError> {
    let header = SdtHeader::parse(&read_array(mem, phys)?);
    if header.signature != expected {
        return Err(AcpiError::TableSignature {
            phys,
            expected,
            found: header.signature,
        });
    }
    let min = min_len(expected);
    if !(min..=MAX_TABLE_LEN).contains(&header.length) {
        return Err(AcpiError::TableLength {
            phys,
            signature: expected,
            length: header.length,
            min,
        });
    }
    if checksum(mem, phys, header.length as usize)? != 0 {
        return Err(AcpiError::TableChecksum {
            phys,
            signature: expected,
        });
    }
    Ok(Table { phys, header })
}

/// Which root table the RSDP led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// ACPI 1.0's table of 32-bit addresses.
    Rsdt,
    /// ACPI 2.0's table of 64-bit addresses.
    Xsdt,
}

impl RootKind {
    fn signature(self) -> Signature {
        match self {
            Self::Rsdt => Signature::RSDT,
            Self::Xsdt => Signature::XSDT,
        }
    }

    fn entry_size(self) -> usize {
        match self {
            Self::Rsdt => 4,
            Self::Xsdt => 8,
        }
    }
}

impl fmt::Display for RootKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.signature().fmt(f)
    }
}

/// The validated RSDT or XSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootTable {
    /// The table itself.
    pub table: Table,
    /// RSDT or XSDT.
    pub kind: RootKind,
}

/// One entry of the root table: a table's address and signature, read from
/// its header but not yet validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// The table's address.
    pub phys: u64,
    /// The signature in its header.
    pub signature: Signature,
}

impl RootTable {
    /// The number of entries. Bytes after the last whole entry are ignored,
    /// as other operating systems do.
    pub fn entry_count(&self) -> usize {
        (self.table.header.length as usize).saturating_sub(HEADER_LEN) / self.kind.entry_size()
    }

    /// The address stored in entry `index` (which [`Self::entry_count`]
    /// bounds).
    ///
    /// # Errors
    ///
    /// The reader's error, or `AddressOverflow`.
    pub fn entry_phys(&self, mem: &impl PhysMemory, index: usize) -> Result<u64, AcpiError> {
        let size = self.kind.entry_size();
        let offset = index
            .checked_mul(size)
            .and_then(|o| o.checked_add(HEADER_LEN));
        let phys = at(self.table.phys, offset.unwrap_or(usize::MAX))?;
        let bytes: [u8; 8] = match self.kind {
            RootKind::Rsdt => u64::from(u32::from_le_bytes(read_array(mem, phys)?)).to_le_bytes(),
            RootKind::Xsdt => read_array(mem, phys)?,
        };
        Ok(u64::from_le_bytes(bytes))
    }

    /// The tables the root table lists, in order, skipping null entries.
    /// Each item reads the entry and the signature at its address.
    pub fn entries<'m, M: PhysMemory>(&self, mem: &'m M) -> Entries<'m, M> {
        Entries {
            mem,
            root: *self,
            next: 0,
        }
    }

    /// Finds the first table with `signature` and validates it.
    ///
    /// # Errors
    ///
    /// `TableNotFound`, the errors of [`read_table`] for the table found, or
    /// the reader's error on the way.
    pub fn find(&self, mem: &impl PhysMemory, signature: Signature) -> Result<Table, AcpiError> {
        for entry in self.entries(mem) {
            let entry = entry?;
            if entry.signature == signature {
                return read_table(mem, entry.phys, signature);
            }
        }
        Err(AcpiError::TableNotFound {
            signature,
            root: self.kind,
            root_phys: self.table.phys,
        })
    }
}

/// The iterator of [`RootTable::entries`].
pub struct Entries<'m, M> {
    mem: &'m M,
    root: RootTable,
    next: usize,
}

impl<M: PhysMemory> Iterator for Entries<'_, M> {
    type Item = Result<TableEntry, AcpiError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.root.entry_count() {
            let index = self.next;
            self.next += 1;
            let phys = match self.root.entry_phys(self.mem, index) {
                Ok(0) => continue,
                Ok(phys) => phys,
                Err(e) => return Some(Err(e)),
            };
            return Some(read_array(self.mem, phys).map(|sig| TableEntry {
                phys,
                signature: Signature(sig),
            }));
        }
        None
    }
}

/// An address space of a Generic Address Structure (5.2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    /// 0: memory-mapped.
    SystemMemory,
    /// 1: I/O ports.
    SystemIo,
    /// Any other space (PCI configuration, embedded controller, ...).
    Other(u8),
}

impl fmt::Display for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SystemMemory => f.write_str("system memory"),
            Self::SystemIo => f.write_str("system I/O"),
            Self::Other(id) => write!(f, "address space {id}"),
        }
    }
}

/// A register location (Generic Address Structure, 5.2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenericAddress {
    /// Where the register lives.
    pub space: AddressSpace,
    /// The register's width in bits.
    pub bit_width: u8,
    /// The register's offset in bits at the address.
    pub bit_offset: u8,
    /// 0 undefined, 1 byte, 2 word, 3 dword, 4 qword access.
    pub access_size: u8,
    /// The address within `space`.
    pub address: u64,
}

impl GenericAddress {
    /// Decodes the 12 bytes of a GAS; `None` where the address is zero,
    /// which the FADT uses for "not provided".
    fn parse(bytes: [u8; 12]) -> Option<Self> {
        let address = u64_at(&bytes, 4);
        let space = match u8_at(&bytes, 0) {
            0 => AddressSpace::SystemMemory,
            1 => AddressSpace::SystemIo,
            other => AddressSpace::Other(other),
        };
        (address != 0).then_some(GenericAddress {
            space,
            bit_width: u8_at(&bytes, 1),
            bit_offset: u8_at(&bytes, 2),
            access_size: u8_at(&bytes, 3),
            address,
        })
    }

    /// The register behind one of the FADT's 32-bit port fields, `len_bytes`
    /// wide; `None` where the port is zero.
    fn legacy_port(port: u32, len_bytes: u8) -> Option<Self> {
        (port != 0).then_some(GenericAddress {
            space: AddressSpace::SystemIo,
            bit_width: len_bytes.saturating_mul(8),
            bit_offset: 0,
            access_size: 0,
            address: u64::from(port),
        })
    }

    /// The register's I/O port, where it is one.
    fn io_port(self, register: &'static str) -> Result<u16, AcpiError> {
        match self.space {
            AddressSpace::SystemIo => {
                u16::try_from(self.address).map_err(|_| AcpiError::PortOutOfRange {
                    register,
                    address: self.address,
                })
            }
            space => Err(AcpiError::UnsupportedAddressSpace {
                register,
                space,
                address: self.address,
            }),
        }
    }
}

/// The FADT's `Flags` field (5.2.9, "Fixed ACPI Description Table Fixed
/// Feature Flags").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FadtFlags(pub u32);

impl FadtFlags {
    /// Bit 20, HW_REDUCED_ACPI: no fixed hardware (PM1 blocks, SMI_CMD);
    /// sleep goes through the sleep control and status registers.
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;

    /// Whether the platform is hardware-reduced ACPI.
    pub fn hw_reduced_acpi(self) -> bool {
        self.0 & Self::HW_REDUCED_ACPI != 0
    }
}

/// What the FADT says about power management (5.2.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fadt {
    /// The FADT's revision.
    pub revision: u8,
    /// The DSDT's address: X_DSDT where present and nonzero, else DSDT.
    pub dsdt: u64,
    /// The port that takes `acpi_enable` to switch to ACPI mode; 0 where
    /// the platform is always in ACPI mode.
    pub smi_cmd: u32,
    /// The value to write to `smi_cmd`.
    pub acpi_enable: u8,
    /// The PM1a control register: X_PM1a_CNT_BLK where present and nonzero,
    /// else PM1a_CNT_BLK as an I/O port; `None` where neither is given.
    pub pm1a_cnt: Option<GenericAddress>,
    /// The PM1b control register, chosen the same way; most machines have
    /// none.
    pub pm1b_cnt: Option<GenericAddress>,
    /// PM1_CNT_LEN: the PM1 control registers' width in bytes.
    pub pm1_cnt_len: u8,
    /// The fixed feature flags.
    pub flags: FadtFlags,
}

impl Fadt {
    /// Decodes a validated FADT (found with [`RootTable::find`]).
    ///
    /// # Errors
    ///
    /// `TableSignature` where `table` is not a FADT, `NoDsdt`, or the
    /// reader's error.
    pub fn from_table(mem: &impl PhysMemory, table: &Table) -> Result<Self, AcpiError> {
        let signature = table.header.signature;
        if signature != Signature::FADT {
            return Err(AcpiError::TableSignature {
                phys: table.phys,
                expected: Signature::FADT,
                found: signature,
            });
        }
        let mut buf = [0u8; FADT_KNOWN_LEN];
        // Fields past the table's length are absent; `field` reads them as
        // zero, which the FADT defines as "not provided".
        let bytes = &mut buf[..min(FADT_KNOWN_LEN, table.header.length as usize)];
        mem.read(table.phys, bytes)?;
        let bytes = &*bytes;

        let pm1_cnt_len = u8_at(bytes, 89);
        let register = |x_offset, legacy_offset| {
            GenericAddress::parse(field(bytes, x_offset))
                .or_else(|| GenericAddress::legacy_port(u32_at(bytes, legacy_offset), pm1_cnt_len))
        };
        let dsdt = match u64_at(bytes, 140) {
            0 => u64::from(u32_at(bytes, 40)),
            x_dsdt => x_dsdt,
        };
        if dsdt == 0 {
            return Err(AcpiError::NoDsdt { fadt: table.phys });
        }
        Ok(Fadt {
            revision: table.header.revision,
            dsdt,
            smi_cmd: u32_at(bytes, 48),
            acpi_enable: u8_at(bytes, 52),
            pm1a_cnt: register(172, 64),
            pm1b_cnt: register(184, 68),
            pm1_cnt_len,
            flags: FadtFlags(u32_at(bytes, 112)),
        })
    }
}

/// The `\_S5` values to write to SLP_TYP in PM1a_CNT and PM1b_CNT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SleepType {
    /// For PM1a_CNT.
    pub slp_typ_a: u16,
    /// For PM1b_CNT.
    pub slp_typ_b: u16,
}

// AML encodings (20.2).
const NAME_OP: u8 = 0x08;
const ROOT_CHAR: u8 = b'\\';
const PACKAGE_OP: u8 = 0x12;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const QWORD_PREFIX: u8 = 0x0e;

/// The longest `\_S5` object decoded: NameOp, `\`, `_S5_`, PackageOp, a
/// 4-byte PkgLength, NumElements and two QWord-prefixed elements.
const S5_MAX_LEN: usize = 1 + 1 + 4 + 1 + 4 + 1 + 9 + 9;

/// Reads AML from a slice; running off its end is an error, not a panic.
struct Aml<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Aml<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = self
            .bytes
            .get(self.pos)
            .copied()
            .ok_or("it is cut off by the end of the table")?;
        self.pos += 1;
        Ok(b)
    }

    fn le(&mut self, len: usize) -> Result<u64, &'static str> {
        (0..len).try_fold(0, |value, i| Ok(value | u64::from(self.byte()?) << (8 * i)))
    }

    /// PkgLength (20.2.4): bits 7:6 of the lead byte count the bytes that
    /// follow (0-3). Alone, the lead's bits 5:0 are the length; otherwise
    /// its bits 3:0 are the low nibble, bits 5:4 must be zero, and each
    /// following byte adds 8 more bits.
    fn pkg_length(&mut self) -> Result<usize, &'static str> {
        let lead = self.byte()?;
        let follow = usize::from(lead >> 6);
        if follow == 0 {
            return Ok(usize::from(lead & 0x3f));
        }
        if lead & 0x30 != 0 {
            return Err("its PkgLength has reserved bits set");
        }
        let length = u64::from(lead & 0x0f) | self.le(follow)? << 4;
        usize::try_from(length).map_err(|_| "its PkgLength does not fit in memory")
    }

    /// An integer constant (20.2.3): ZeroOp, OneOp, or a Byte/Word/DWord/
    /// QWord prefix and its value. A bare byte 2..=7 is taken as the value:
    /// it is not valid AML, but hand-assembled tables have used it, and no
    /// opcode in that range can start a package element.
    fn integer(&mut self) -> Result<u16, &'static str> {
        let value = match self.byte()? {
            ZERO_OP => 0,
            ONE_OP => 1,
            BYTE_PREFIX => self.le(1)?,
            WORD_PREFIX => self.le(2)?,
            DWORD_PREFIX => self.le(4)?,
            QWORD_PREFIX => self.le(8)?,
            plain @ 0x02..=0x07 => u64::from(plain),
            _ => return Err(
                "an SLP_TYP element is not an integer constant (it would need an AML interpreter)",
            ),
        };
        u16::try_from(value).map_err(|_| "an SLP_TYP value does not fit in 16 bits")
    }
}

/// Decodes the `\_S5` object if `aml` starts with one: `None` where it does
/// not start with `NameOp [\] _S5_`, `Some(Err)` where it does but what
/// follows is not a package of integer constants.
fn s5_at(aml: &[u8]) -> Option<Result<SleepType, &'static str>> {
    let ([NAME_OP, ROOT_CHAR, rest @ ..] | [NAME_OP, rest @ ..]) = aml else {
        return None;
    };
    let rest = rest.strip_prefix(b"_S5_")?;
    Some(s5_package(&mut Aml {
        bytes: rest,
        pos: 0,
    }))
}

/// `PackageOp PkgLength NumElements SLP_TYPa [SLP_TYPb ...]`; the PkgLength
/// counts itself and everything after it.
fn s5_package(aml: &mut Aml<'_>) -> Result<SleepType, &'static str> {
    if aml.byte()? != PACKAGE_OP {
        return Err("the name is not followed by a Package");
    }
    let start = aml.pos;
    let end = start.saturating_add(aml.pkg_length()?);
    let count = aml.byte()?;
    if count == 0 {
        return Err("it is an empty Package");
    }
    let slp_typ_a = aml.integer()?;
    let slp_typ_b = if count >= 2 && aml.pos < end {
        aml.integer()?
    } else {
        slp_typ_a
    };
    if aml.pos > end {
        return Err("its elements run past its PkgLength");
    }
    Ok(SleepType {
        slp_typ_a,
        slp_typ_b,
    })
}

/// The state of a search for `\_S5` that may span several windows.
#[derive(Default)]
struct S5Search {
    /// The first candidate that failed to decode. Searching goes on past
    /// it, since `NameOp _S5_` can occur by chance inside other data.
    malformed: Option<AcpiError>,
}

impl S5Search {
    /// Tries each candidate starting in `window[..starts]`. The window must
    /// hold at least [`S5_MAX_LEN`] bytes past each of those, or run to the
    /// end of the AML; `offset` is the window's offset, for errors.
    fn scan(&mut self, window: &[u8], starts: usize, offset: usize) -> Option<SleepType> {
        for i in 0..starts {
            match s5_at(window.get(i..)?) {
                None => {}
                Some(Ok(sleep)) => return Some(sleep),
                Some(Err(reason)) => {
                    self.malformed.get_or_insert(AcpiError::MalformedS5 {
                        offset: offset + i,
                        reason,
                    });
                }
            }
        }
        None
    }

    fn failure(self) -> AcpiError {
        self.malformed.unwrap_or(AcpiError::NoS5)
    }
}

/// Finds `Name (\_S5, Package () {SLP_TYPa, SLP_TYPb, ...})` in AML bytes
/// (such as a whole DSDT) and returns its first two elements; a one-element
/// package gives its value for both. `_S5_` counts only straight after a
/// NameOp or a NameOp and `\`, so the same bytes inside a string, a buffer or
/// a longer name path do not match.
///
/// # Errors
///
/// `MalformedS5` (offset from the start of `aml`) where the only candidates
/// did not decode, else `NoS5`.
pub fn find_s5(aml: &[u8]) -> Result<SleepType, AcpiError> {
    let mut search = S5Search::default();
    search
        .scan(aml, aml.len(), 0)
        .ok_or_else(|| search.failure())
}

/// [`find_s5`] over a validated DSDT in physical memory, through a stack
/// window. Offsets in errors are from the start of the DSDT's header.
///
/// # Errors
///
/// As [`find_s5`], or the reader's error.
pub fn dsdt_sleep_type(mem: &impl PhysMemory, dsdt: &Table) -> Result<SleepType, AcpiError> {
    const STEP: usize = 1024;
    let mut buf = [0u8; STEP + S5_MAX_LEN];
    let len = dsdt.header.length as usize;
    let mut search = S5Search::default();
    let mut offset = HEADER_LEN;
    while offset < len {
        let window = &mut buf[..min(STEP + S5_MAX_LEN, len - offset)];
        mem.read(at(dsdt.phys, offset)?, window)?;
        // Candidates from STEP on are tried again, whole, in the next window.
        if let Some(sleep) = search.scan(window, min(STEP, window.len()), offset) {
            return Ok(sleep);
        }
        offset += STEP;
    }
    Err(search.failure())
}

/// PM1 control register bits (chapter 4, "PM1 Control Registers").
const PM1_GBL_RLS: u16 = 1 << 2;
const PM1_SLP_TYP_SHIFT: u16 = 10;
const PM1_SLP_TYP: u16 = 0b111 << PM1_SLP_TYP_SHIFT;
const PM1_SLP_EN: u16 = 1 << 13;
/// PM1 control bit 0, SCI_EN: set when the platform is in ACPI mode. Where
/// it is clear, write `acpi_enable` to `smi_cmd` and wait for it.
pub const PM1_SCI_EN: u16 = 1 << 0;

/// The value to write to a PM1 control register to enter the sleep state
/// `slp_typ`: the bits read in `current` are kept (SCI_EN, BM_RLD, the
/// reserved and ignored bits), SLP_TYP (bits 12:10) set to the low three
/// bits of `slp_typ`, SLP_EN (bit 13) set, and GBL_RLS (bit 2, write-only;
/// writing 1 would raise an SMI) cleared.
pub const fn pm1_control_value(current: u16, slp_typ: u16) -> u16 {
    (current & !(PM1_GBL_RLS | PM1_SLP_TYP | PM1_SLP_EN))
        | ((slp_typ << PM1_SLP_TYP_SHIFT) & PM1_SLP_TYP)
        | PM1_SLP_EN
}

/// Everything the kernel needs to power off through ACPI S5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerOff {
    /// PM1a_CNT's I/O port.
    pub pm1a_cnt: u16,
    /// PM1b_CNT's I/O port, where the machine has one.
    pub pm1b_cnt: Option<u16>,
    /// The `\_S5` SLP_TYP values, each at most 7.
    pub sleep: SleepType,
    /// SMI_CMD: where to write `acpi_enable` while SCI_EN is clear; 0 where
    /// the platform is always in ACPI mode.
    pub smi_cmd: u32,
    /// ACPI_ENABLE.
    pub acpi_enable: u8,
}

impl fmt::Display for PowerOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "S5 is SLP_TYPa {} via PM1a_CNT port {:#x}",
            self.sleep.slp_typ_a, self.pm1a_cnt
        )?;
        if let Some(pm1b) = self.pm1b_cnt {
            write!(
                f,
                ", SLP_TYPb {} via PM1b_CNT port {pm1b:#x}",
                self.sleep.slp_typ_b
            )?;
        }
        match self.smi_cmd {
            0 => f.write_str("; no SMI_CMD (always in ACPI mode)"),
            smi_cmd => write!(
                f,
                "; ACPI enable: {:#x} to SMI_CMD port {smi_cmd:#x}",
                self.acpi_enable
            ),
        }
    }
}

/// Reads the RSDP at `rsdp_phys`, the root table, the FADT and the DSDT, and
/// returns how to power off.
///
/// # Errors
///
/// Any [`AcpiError`]: a bad or missing table, no usable PM1a control block
/// (hardware-reduced, memory-mapped or beyond the port space), or no
/// decodable `\_S5` with values that fit SLP_TYP.
pub fn power_off_info(mem: &impl PhysMemory, rsdp_phys: u64) -> Result<PowerOff, AcpiError> {
    let root = Rsdp::read(mem, rsdp_phys)?.root_table(mem)?;
    let fadt_table = root.find(mem, Signature::FADT)?;
    let fadt = Fadt::from_table(mem, &fadt_table)?;
    let pm1a_cnt = match fadt.pm1a_cnt {
        Some(register) => register.io_port("PM1a_CNT")?,
        None if fadt.flags.hw_reduced_acpi() => {
            return Err(AcpiError::HardwareReduced {
                fadt: fadt_table.phys,
            })
        }
        None => {
            return Err(AcpiError::NoPm1aControl {
                fadt: fadt_table.phys,
            })
        }
    };
    let pm1b_cnt = fadt
        .pm1b_cnt
        .map(|register| register.io_port("PM1b_CNT"))
        .transpose()?;
    let sleep = dsdt_sleep_type(mem, &read_table(mem, fadt.dsdt, Signature::DSDT)?)?;
    for (which, value) in [("SLP_TYPa", sleep.slp_typ_a), ("SLP_TYPb", sleep.slp_typ_b)] {
        if value > 7 {
            return Err(AcpiError::SleepTypeTooWide { which, value });
        }
    }
    Ok(PowerOff {
        pm1a_cnt,
        pm1b_cnt,
        sleep,
        smi_cmd: fadt.smi_cmd,
        acpi_enable: fadt.acpi_enable,
    })
}

// MADT entry types (5.2.12) decoded here.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_OVERRIDE: u8 = 5;
const MADT_LOCAL_X2APIC: u8 = 9;
/// The longest entry decoded (the x2APIC one). Longer entries of a known
/// type (a later revision's) are decoded from their first bytes.
const MADT_ENTRY_MAX: usize = 16;
/// Processor Local APIC and x2APIC flags.
const MADT_CPU_ENABLED: u32 = 1 << 0;
const MADT_CPU_ONLINE_CAPABLE: u32 = 1 << 1;

/// The fixed size and the name of each MADT entry type decoded here.
fn madt_entry_kind(entry_type: u8) -> Option<(u8, &'static str)> {
    match entry_type {
        MADT_LOCAL_APIC => Some((8, "Processor Local APIC")),
        MADT_IO_APIC => Some((12, "I/O APIC")),
        MADT_LOCAL_APIC_OVERRIDE => Some((12, "Local APIC Address Override")),
        MADT_LOCAL_X2APIC => Some((16, "Processor Local x2APIC")),
        _ => None,
    }
}

/// One processor the MADT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MadtCpu {
    /// Its local APIC ID (8-bit from a type-0 entry, 32-bit from a type-9
    /// x2APIC entry).
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
    /// Flags bit 0: enabled (usable now).
    pub enabled: bool,
    /// Flags bit 1: online capable (can be enabled later; not started at
    /// boot).
    pub online_capable: bool,
}

impl MadtCpu {
    fn new(apic_id: u32, uid: u32, flags: u32) -> Self {
        MadtCpu {
            apic_id,
            uid,
            enabled: flags & MADT_CPU_ENABLED != 0,
            online_capable: flags & MADT_CPU_ONLINE_CAPABLE != 0,
        }
    }
}

/// What the MADT says about CPUs and interrupt controllers (5.2.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of the local APIC registers: the header's 32-bit
    /// field, or the 64-bit type-5 Local APIC Address Override when present
    /// (the first one, where firmware gives several).
    pub local_apic: u64,
    /// Flags bit 0 PCAT_COMPAT: the machine also has dual 8259s.
    pub pcat_compat: bool,
    /// Processors in table order, without duplicates by APIC ID (keep the
    /// first; an x2APIC entry whose ID already appeared as a type-0 entry is
    /// a duplicate).
    pub cpus: Vec<MadtCpu>,
    /// I/O APICs (type 1): (id, physical address, GSI base), for the coming
    /// IO-APIC work.
    pub io_apics: Vec<(u8, u32, u32)>,
}

impl Madt {
    /// Decodes a validated MADT (found with [`RootTable::find`]): the fixed
    /// fields, then each entry in turn. Entries of types other than 0, 1, 5
    /// and 9 are skipped by their length; known types longer than their
    /// fixed size are decoded from their first bytes.
    ///
    /// # Errors
    ///
    /// `TableSignature` where `table` is not a MADT, `TableLength` where its
    /// length is outside `44..=MAX_TABLE_LEN`, `MadtEntryLength`,
    /// `MadtEntryOverrun`, or the reader's error.
    pub fn from_table(mem: &impl PhysMemory, table: &Table) -> Result<Self, AcpiError> {
        let phys = table.phys;
        let SdtHeader {
            signature, length, ..
        } = table.header;
        if signature != Signature::MADT {
            return Err(AcpiError::TableSignature {
                phys,
                expected: Signature::MADT,
                found: signature,
            });
        }
        if !(MADT_MIN_LEN..=MAX_TABLE_LEN).contains(&length) {
            return Err(AcpiError::TableLength {
                phys,
                signature,
                length,
                min: MADT_MIN_LEN,
            });
        }
        let fixed: [u8; 8] = read_array(mem, at(phys, HEADER_LEN)?)?;
        let mut madt = Madt {
            local_apic: u64::from(u32_at(&fixed, 0)),
            pcat_compat: u32_at(&fixed, 4) & 1 != 0,
            cpus: Vec::new(),
            io_apics: Vec::new(),
        };
        let mut local_apic_override = None;
        let mut apic_ids = BTreeSet::new();
        let table_len = length as usize;
        let mut offset = MADT_MIN_LEN as usize;
        let mut buf = [0u8; MADT_ENTRY_MAX];
        while offset < table_len {
            let entry = &mut buf[..min(MADT_ENTRY_MAX, table_len - offset)];
            mem.read(at(phys, offset)?, entry)?;
            let entry = &*entry;
            let overrun = |end| AcpiError::MadtEntryOverrun {
                phys,
                offset,
                end,
                table_len: length,
            };
            let &[entry_type, entry_len, ..] = entry else {
                return Err(overrun(offset + 2));
            };
            let too_short = |min| AcpiError::MadtEntryLength {
                phys,
                offset,
                entry_type,
                length: entry_len,
                min,
            };
            if entry_len < 2 {
                return Err(too_short(2));
            }
            let end = offset + usize::from(entry_len);
            if end > table_len {
                return Err(overrun(end));
            }
            if let Some((size, _)) = madt_entry_kind(entry_type) {
                if entry_len < size {
                    return Err(too_short(size));
                }
            }
            // Known entries are at least their fixed size and lie within the
            // table, so `entry` holds all the fields read below.
            let cpu = match entry_type {
                MADT_LOCAL_APIC => Some(MadtCpu::new(
                    u32::from(u8_at(entry, 3)),
                    u32::from(u8_at(entry, 2)),
                    u32_at(entry, 4),
                )),
                MADT_LOCAL_X2APIC => Some(MadtCpu::new(
                    u32_at(entry, 4),
                    u32_at(entry, 12),
                    u32_at(entry, 8),
                )),
                MADT_IO_APIC => {
                    madt.io_apics
                        .push((u8_at(entry, 2), u32_at(entry, 4), u32_at(entry, 8)));
                    None
                }
                MADT_LOCAL_APIC_OVERRIDE => {
                    local_apic_override.get_or_insert(u64_at(entry, 4));
                    None
                }
                _ => None,
            };
            if let Some(cpu) = cpu {
                if apic_ids.insert(cpu.apic_id) {
                    madt.cpus.push(cpu);
                }
            }
            offset = end;
        }
        if let Some(address) = local_apic_override {
            madt.local_apic = address;
        }
        Ok(madt)
    }

    /// The CPUs to start: enabled ones only.
    pub fn enabled_cpus(&self) -> impl Iterator<Item = &MadtCpu> {
        self.cpus.iter().filter(|cpu| cpu.enabled)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Writes `ids` comma-separated, with runs of three or more consecutive IDs
/// as `first-last`.
fn write_id_runs(f: &mut fmt::Formatter<'_>, ids: impl Iterator<Item = u32>) -> fmt::Result {
    let mut first_run = true;
    let mut write_run = |f: &mut fmt::Formatter<'_>, start: u32, last: u32| {
        let sep = if first_run { "" } else { ", " };
        first_run = false;
        match last - start {
            0 => write!(f, "{sep}{start}"),
            1 => write!(f, "{sep}{start}, {last}"),
            _ => write!(f, "{sep}{start}-{last}"),
        }
    };
    let mut run: Option<(u32, u32)> = None;
    for id in ids {
        run = match run {
            Some((start, last)) if last.checked_add(1) == Some(id) => Some((start, id)),
            Some((start, last)) => {
                write_run(f, start, last)?;
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }
    match run {
        Some((start, last)) => write_run(f, start, last),
        None => Ok(()),
    }
}

/// One line such as `MADT: 2 CPUs (APIC IDs 0, 1), local APIC at 0xfee00000,
/// 1 I/O APIC`, counting the CPUs listed but not enabled after the enabled
/// ones' IDs.
impl fmt::Display for Madt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enabled = self.enabled_cpus().count();
        write!(f, "MADT: {enabled} CPU{}", plural(enabled))?;
        if enabled > 0 {
            write!(f, " (APIC ID{} ", plural(enabled))?;
            write_id_runs(f, self.enabled_cpus().map(|cpu| cpu.apic_id))?;
            f.write_str(")")?;
        }
        let online_capable = self
            .cpus
            .iter()
            .filter(|cpu| !cpu.enabled && cpu.online_capable)
            .count();
        if online_capable > 0 {
            write!(f, ", {online_capable} more online-capable")?;
        }
        let disabled = self.cpus.len() - enabled - online_capable;
        if disabled > 0 {
            write!(f, ", {disabled} more disabled")?;
        }
        let io_apics = self.io_apics.len();
        write!(
            f,
            ", local APIC at {:#x}, {io_apics} I/O APIC{}",
            self.local_apic,
            plural(io_apics)
        )
    }
}

/// Reads the RSDP at `rsdp_phys`, the root table and the MADT, and returns
/// what the MADT says.
///
/// # Errors
///
/// Any [`AcpiError`] on the way: a bad RSDP or root table, no MADT
/// (`TableNotFound`), or a bad MADT (see [`Madt::from_table`]).
pub fn madt(mem: &impl PhysMemory, rsdp_phys: u64) -> Result<Madt, AcpiError> {
    let root = Rsdp::read(mem, rsdp_phys)?.root_table(mem)?;
    Madt::from_table(mem, &root.find(mem, Signature::MADT)?)
}

/// The boot log's line about ACPI, formatted on demand from memory.
struct TableList<'m, M> {
    mem: &'m M,
    rsdp: Rsdp,
    root: RootTable,
}

impl<M: PhysMemory> fmt::Display for TableList<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Rsdp {
            phys,
            revision,
            oem_id,
            ..
        } = self.rsdp;
        write!(
            f,
            "acpi: RSDP rev {revision} ({oem_id}) at {phys:#x}, {} at {:#x}, tables:",
            self.root.kind, self.root.table.phys
        )?;
        let mut none = true;
        for entry in self.root.entries(self.mem) {
            none = false;
            match entry {
                Ok(entry) => write!(f, " {}", entry.signature)?,
                Err(e) => return write!(f, " [{e}]"),
            }
        }
        if none {
            f.write_str(" none")?;
        }
        Ok(())
    }
}

/// Hands `log` one line naming the RSDP, the root table and the signatures
/// it lists, such as
/// `acpi: RSDP rev 2 (BOCHS) at 0xf52a0, XSDT at 0x7ffe1234, tables: FACP APIC HPET WAET`,
/// or the reason they cannot be listed.
pub fn log_tables<M: PhysMemory>(mem: &M, rsdp_phys: u64, log: impl FnOnce(&dyn fmt::Display)) {
    let found = Rsdp::read(mem, rsdp_phys).and_then(|rsdp| Ok((rsdp, rsdp.root_table(mem)?)));
    match found {
        Ok((rsdp, root)) => log(&TableList { mem, rsdp, root }),
        Err(e) => log(&format_args!("acpi: cannot list the tables: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xe_0000;
    const RSDP_AT: u64 = 0xf_52a0;
    const RSDT_AT: u64 = 0x10_0000;
    const XSDT_AT: u64 = 0x10_0100;
    const FADT_AT: u64 = 0x10_1000;
    const DSDT_AT: u64 = 0x10_2000;
    const APIC_AT: u64 = 0x10_3000;
    const HPET_AT: u64 = 0x10_3100;
    const WAET_AT: u64 = 0x10_3200;
    const END: u64 = 0x11_0000;

    /// QEMU's (SeaBIOS-era) `Name (_S5, Package (0x04) {Zero, Zero, Zero, Zero})`.
    const QEMU_S5: &[u8] = &[
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];

    /// Physical memory `BASE..END` as a vector; reads outside it fail.
    struct Mem(Vec<u8>);

    impl Mem {
        fn new() -> Self {
            Mem(vec![0; (END - BASE) as usize])
        }

        fn put(&mut self, phys: u64, data: &[u8]) {
            let at = (phys - BASE) as usize;
            self.0[at..at + data.len()].copy_from_slice(data);
        }

        fn byte(&mut self, phys: u64) -> &mut u8 {
            &mut self.0[(phys - BASE) as usize]
        }
    }

    impl PhysMemory for Mem {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), AcpiError> {
            let unreadable = AcpiError::Unreadable {
                phys,
                len: buf.len(),
            };
            let start = phys.checked_sub(BASE).ok_or(unreadable)? as usize;
            let src = self.0.get(start..start + buf.len()).ok_or(unreadable)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    /// Sets `bytes[at]` so that `bytes[..len]` sums to zero.
    fn fix_checksum(bytes: &mut [u8], at: usize, len: usize) {
        bytes[at] = 0;
        bytes[at] = 0u8.wrapping_sub(sum(&bytes[..len]));
    }

    fn rsdp(revision: u8, rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = Vec::from(*b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"BOCHS ");
        r.push(revision);
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8, 20);
        if revision >= 2 {
            r.extend_from_slice(&36u32.to_le_bytes());
            r.extend_from_slice(&xsdt.to_le_bytes());
            r.extend_from_slice(&[0; 4]);
            fix_checksum(&mut r, 32, 36);
        }
        r
    }

    fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = Vec::from(*signature);
        t.extend_from_slice(&(HEADER_LEN as u32 + body.len() as u32).to_le_bytes());
        t.push(revision);
        t.push(0);
        t.extend_from_slice(b"BOCHS BXPC    \x01\x00\x00\x00BXPC\x01\x00\x00\x00");
        assert_eq!(t.len(), HEADER_LEN);
        t.extend_from_slice(body);
        let len = t.len();
        fix_checksum(&mut t, 9, len);
        t
    }

    fn rsdt(entries: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = entries
            .iter()
            .flat_map(|&e| (e as u32).to_le_bytes())
            .collect();
        sdt(b"RSDT", 1, &body)
    }

    fn xsdt(entries: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = entries.iter().flat_map(|&e| e.to_le_bytes()).collect();
        sdt(b"XSDT", 1, &body)
    }

    /// The FADT fields the tests vary; `len` is the length the header states.
    #[derive(Clone, Copy)]
    struct FadtSpec {
        len: usize,
        dsdt: u32,
        x_dsdt: u64,
        smi_cmd: u32,
        acpi_enable: u8,
        pm1a: u32,
        pm1b: u32,
        pm1_cnt_len: u8,
        flags: u32,
        x_pm1a: Option<(u8, u64)>,
        x_pm1b: Option<(u8, u64)>,
    }

    impl FadtSpec {
        /// QEMU's ACPI 1.0 FADT (116 bytes, rev 1).
        fn qemu() -> Self {
            FadtSpec {
                len: 116,
                dsdt: DSDT_AT as u32,
                x_dsdt: 0,
                smi_cmd: 0xb2,
                acpi_enable: 0xf1,
                pm1a: 0x604,
                pm1b: 0,
                pm1_cnt_len: 2,
                flags: 0,
                x_pm1a: None,
                x_pm1b: None,
            }
        }

        /// An ACPI 2.0+ FADT (244 bytes) with the X_ fields given.
        fn v2(self) -> Self {
            FadtSpec { len: 244, ..self }
        }

        /// All known FADT fields; the header says `len` and the checksum
        /// covers `len` bytes, so bytes after that are junk past the table.
        fn bytes(&self) -> Vec<u8> {
            let mut b = sdt(b"FACP", 3, &[0; FADT_KNOWN_LEN - HEADER_LEN]);
            let mut put = |at: usize, data: &[u8]| b[at..at + data.len()].copy_from_slice(data);
            put(4, &(self.len as u32).to_le_bytes());
            put(40, &self.dsdt.to_le_bytes());
            put(48, &self.smi_cmd.to_le_bytes());
            put(52, &[self.acpi_enable]);
            put(64, &self.pm1a.to_le_bytes());
            put(68, &self.pm1b.to_le_bytes());
            put(89, &[self.pm1_cnt_len]);
            put(112, &self.flags.to_le_bytes());
            put(140, &self.x_dsdt.to_le_bytes());
            for (at, gas) in [(172, self.x_pm1a), (184, self.x_pm1b)] {
                if let Some((space, address)) = gas {
                    put(at, &[space, 16, 0, 2]);
                    put(at + 4, &address.to_le_bytes());
                }
            }
            fix_checksum(&mut b, 9, self.len);
            b
        }
    }

    fn dsdt(aml: &[u8]) -> Vec<u8> {
        sdt(b"DSDT", 1, aml)
    }

    /// A machine with an RSDT (FADT, APIC, HPET), and on revision 2 an XSDT
    /// that also lists WAET.
    fn machine(revision: u8, fadt: FadtSpec, aml: &[u8]) -> Mem {
        let mut mem = Mem::new();
        mem.put(RSDP_AT, &rsdp(revision, RSDT_AT as u32, XSDT_AT));
        mem.put(RSDT_AT, &rsdt(&[FADT_AT, APIC_AT, HPET_AT]));
        mem.put(XSDT_AT, &xsdt(&[FADT_AT, APIC_AT, HPET_AT, WAET_AT]));
        mem.put(FADT_AT, &fadt.bytes());
        mem.put(DSDT_AT, &dsdt(aml));
        mem.put(APIC_AT, &sdt(b"APIC", 1, &[0; 8]));
        mem.put(HPET_AT, &sdt(b"HPET", 1, &[0; 20]));
        mem.put(WAET_AT, &sdt(b"WAET", 1, &[0; 4]));
        mem
    }

    fn qemu() -> Mem {
        machine(0, FadtSpec::qemu(), QEMU_S5)
    }

    fn log_line(mem: &Mem) -> String {
        let mut line = String::new();
        log_tables(mem, RSDP_AT, |l| line = l.to_string());
        line
    }

    #[test]
    fn qemu_acpi_1_machine_powers_off_through_port_0x604() {
        let info = power_off_info(&qemu(), RSDP_AT).unwrap();
        assert_eq!(
            info,
            PowerOff {
                pm1a_cnt: 0x604,
                pm1b_cnt: None,
                sleep: SleepType {
                    slp_typ_a: 0,
                    slp_typ_b: 0
                },
                smi_cmd: 0xb2,
                acpi_enable: 0xf1,
            }
        );
        assert_eq!(
            info.to_string(),
            "S5 is SLP_TYPa 0 via PM1a_CNT port 0x604; ACPI enable: 0xf1 to SMI_CMD port 0xb2"
        );
    }

    #[test]
    fn acpi_1_machine_is_read_through_the_rsdt() {
        let mem = qemu();
        let rsdp = Rsdp::read(&mem, RSDP_AT).unwrap();
        assert_eq!(
            (rsdp.revision, rsdp.rsdt, rsdp.xsdt),
            (0, RSDT_AT as u32, None)
        );
        let root = rsdp.root_table(&mem).unwrap();
        assert_eq!(
            (root.kind, root.table.phys, root.entry_count()),
            (RootKind::Rsdt, RSDT_AT, 3)
        );
        assert_eq!(root.find(&mem, Signature::MADT).unwrap().phys, APIC_AT);
        assert_eq!(
            log_line(&mem),
            "acpi: RSDP rev 0 (BOCHS) at 0xf52a0, RSDT at 0x100000, tables: FACP APIC HPET"
        );
    }

    #[test]
    fn acpi_2_machine_prefers_the_xsdt() {
        let mut mem = machine(2, FadtSpec::qemu(), QEMU_S5);
        // Break the RSDT: only the XSDT may be used.
        *mem.byte(RSDT_AT + 9) ^= 0xff;
        let root = Rsdp::read(&mem, RSDP_AT).unwrap().root_table(&mem).unwrap();
        assert_eq!((root.kind, root.entry_count()), (RootKind::Xsdt, 4));
        assert_eq!(
            log_line(&mem),
            "acpi: RSDP rev 2 (BOCHS) at 0xf52a0, XSDT at 0x100100, tables: FACP APIC HPET WAET"
        );
        assert_eq!(power_off_info(&mem, RSDP_AT).unwrap().pm1a_cnt, 0x604);
    }

    #[test]
    fn acpi_2_rsdp_without_xsdt_falls_back_to_the_rsdt() {
        let mut mem = qemu();
        mem.put(RSDP_AT, &rsdp(2, RSDT_AT as u32, 0));
        let root = Rsdp::read(&mem, RSDP_AT).unwrap().root_table(&mem).unwrap();
        assert_eq!(root.kind, RootKind::Rsdt);
    }

    #[test]
    fn x_fields_are_preferred_when_present_and_nonzero() {
        let spec = FadtSpec {
            dsdt: 0xdead_0000, // unreadable: must not be used
            x_dsdt: DSDT_AT,
            x_pm1a: Some((1, 0x1804)),
            x_pm1b: Some((1, 0x1806)),
            pm1b: 0x606,
            ..FadtSpec::qemu()
        }
        .v2();
        let mem = machine(2, spec, QEMU_S5);
        let info = power_off_info(&mem, RSDP_AT).unwrap();
        assert_eq!((info.pm1a_cnt, info.pm1b_cnt), (0x1804, Some(0x1806)));
        assert_eq!(
            info.to_string(),
            "S5 is SLP_TYPa 0 via PM1a_CNT port 0x1804, SLP_TYPb 0 via PM1b_CNT port 0x1806; \
             ACPI enable: 0xf1 to SMI_CMD port 0xb2"
        );
    }

    #[test]
    fn zero_x_fields_fall_back_to_the_32_bit_ones() {
        let spec = FadtSpec {
            x_pm1a: Some((1, 0)),
            pm1b: 0x606,
            ..FadtSpec::qemu()
        }
        .v2();
        let mem = machine(2, spec, QEMU_S5);
        let fadt =
            Fadt::from_table(&mem, &read_table(&mem, FADT_AT, Signature::FADT).unwrap()).unwrap();
        assert_eq!(fadt.dsdt, DSDT_AT);
        let legacy = |address| GenericAddress {
            space: AddressSpace::SystemIo,
            bit_width: 16,
            bit_offset: 0,
            access_size: 0,
            address,
        };
        assert_eq!(
            (fadt.pm1a_cnt, fadt.pm1b_cnt),
            (Some(legacy(0x604)), Some(legacy(0x606)))
        );
    }

    #[test]
    fn x_fields_past_the_table_length_are_ignored() {
        // The bytes after a 116-byte FADT hold X_ values, but are not the table's.
        let spec = FadtSpec {
            x_dsdt: 0xdead_0000,
            x_pm1a: Some((1, 0x1804)),
            ..FadtSpec::qemu()
        };
        let mem = machine(0, spec, QEMU_S5);
        assert_eq!(power_off_info(&mem, RSDP_AT).unwrap().pm1a_cnt, 0x604);
    }

    #[test]
    fn memory_mapped_pm1_control_is_reported_and_rejected() {
        let spec = FadtSpec {
            x_pm1a: Some((0, 0xfed8_0804)),
            ..FadtSpec::qemu()
        }
        .v2();
        let mem = machine(2, spec, QEMU_S5);
        let fadt =
            Fadt::from_table(&mem, &read_table(&mem, FADT_AT, Signature::FADT).unwrap()).unwrap();
        assert_eq!(
            fadt.pm1a_cnt.map(|r| (r.space, r.address)),
            Some((AddressSpace::SystemMemory, 0xfed8_0804))
        );
        let err = power_off_info(&mem, RSDP_AT).unwrap_err();
        assert_eq!(
            err,
            AcpiError::UnsupportedAddressSpace {
                register: "PM1a_CNT",
                space: AddressSpace::SystemMemory,
                address: 0xfed8_0804
            }
        );
        assert_eq!(
            err.to_string(),
            "PM1a_CNT is in system memory at 0xfed80804; only system I/O PM1 control blocks are supported"
        );
    }

    #[test]
    fn io_address_beyond_the_port_space_is_rejected() {
        let spec = FadtSpec {
            x_pm1a: Some((1, 0x1_0000)),
            ..FadtSpec::qemu()
        }
        .v2();
        assert_eq!(
            power_off_info(&machine(2, spec, QEMU_S5), RSDP_AT),
            Err(AcpiError::PortOutOfRange {
                register: "PM1a_CNT",
                address: 0x1_0000
            })
        );
    }

    #[test]
    fn hardware_reduced_platform_is_reported() {
        let spec = FadtSpec {
            pm1a: 0,
            smi_cmd: 0,
            acpi_enable: 0,
            flags: 1 << 20,
            ..FadtSpec::qemu()
        }
        .v2();
        let mem = machine(2, spec, QEMU_S5);
        let fadt =
            Fadt::from_table(&mem, &read_table(&mem, FADT_AT, Signature::FADT).unwrap()).unwrap();
        assert!(fadt.flags.hw_reduced_acpi());
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::HardwareReduced { fadt: FADT_AT })
        );

        let spec = FadtSpec {
            pm1a: 0,
            ..FadtSpec::qemu()
        };
        assert_eq!(
            power_off_info(&machine(0, spec, QEMU_S5), RSDP_AT),
            Err(AcpiError::NoPm1aControl { fadt: FADT_AT })
        );
    }

    #[test]
    fn fadt_without_dsdt_is_an_error() {
        let spec = FadtSpec {
            dsdt: 0,
            ..FadtSpec::qemu()
        };
        assert_eq!(
            power_off_info(&machine(0, spec, QEMU_S5), RSDP_AT),
            Err(AcpiError::NoDsdt { fadt: FADT_AT })
        );
    }

    #[test]
    fn bad_rsdps_give_their_errors() {
        let mut mem = qemu();
        *mem.byte(RSDP_AT) = b'X';
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::RsdpSignature { phys: RSDP_AT })
        );

        let mut mem = qemu();
        *mem.byte(RSDP_AT + 16) ^= 1;
        let err = power_off_info(&mem, RSDP_AT).unwrap_err();
        assert_eq!(err, AcpiError::RsdpChecksum { phys: RSDP_AT });
        assert_eq!(err.to_string(), "RSDP checksum mismatch at 0xf52a0");
        assert_eq!(
            log_line(&mem),
            "acpi: cannot list the tables: RSDP checksum mismatch at 0xf52a0"
        );

        // Outside the 20 bytes the first checksum covers.
        let mut mem = machine(2, FadtSpec::qemu(), QEMU_S5);
        *mem.byte(RSDP_AT + 33) = 1;
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::RsdpExtendedChecksum { phys: RSDP_AT })
        );

        let mut mem = machine(2, FadtSpec::qemu(), QEMU_S5);
        *mem.byte(RSDP_AT + 20) = 20;
        *mem.byte(RSDP_AT + 32) += 16;
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::RsdpLength {
                phys: RSDP_AT,
                length: 20
            })
        );

        let mut mem = qemu();
        mem.put(RSDP_AT, &rsdp(0, 0, 0));
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::NoRootTable { rsdp: RSDP_AT })
        );

        assert_eq!(
            power_off_info(&qemu(), 0x1000),
            Err(AcpiError::Unreadable {
                phys: 0x1000,
                len: 20
            })
        );
    }

    #[test]
    fn corrupt_tables_give_their_errors() {
        let corrupt = |phys: u64| {
            let mut mem = qemu();
            *mem.byte(phys + 20) ^= 0x55;
            power_off_info(&mem, RSDP_AT)
        };
        assert_eq!(
            corrupt(RSDT_AT),
            Err(AcpiError::TableChecksum {
                phys: RSDT_AT,
                signature: Signature::RSDT
            })
        );
        assert_eq!(
            corrupt(FADT_AT),
            Err(AcpiError::TableChecksum {
                phys: FADT_AT,
                signature: Signature::FADT
            })
        );
        let err = corrupt(DSDT_AT).unwrap_err();
        assert_eq!(
            err,
            AcpiError::TableChecksum {
                phys: DSDT_AT,
                signature: Signature::DSDT
            }
        );
        assert_eq!(err.to_string(), "DSDT checksum mismatch at 0x102000");
    }

    #[test]
    fn bad_lengths_and_truncated_tables_give_their_errors() {
        let spec = FadtSpec {
            len: 100,
            ..FadtSpec::qemu()
        };
        let err = power_off_info(&machine(0, spec, QEMU_S5), RSDP_AT).unwrap_err();
        assert_eq!(
            err,
            AcpiError::TableLength {
                phys: FADT_AT,
                signature: Signature::FADT,
                length: 100,
                min: 116
            }
        );
        assert_eq!(
            err.to_string(),
            "FADT at 0x101000 states length 100, outside 116..=1048576"
        );

        let mut mem = qemu();
        mem.put(DSDT_AT + 4, &(MAX_TABLE_LEN + 1).to_le_bytes());
        assert!(matches!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::TableLength {
                length: 0x10_0001,
                ..
            })
        ));

        let mut mem = qemu();
        mem.put(RSDT_AT + 4, &10u32.to_le_bytes());
        assert!(matches!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::TableLength {
                length: 10,
                min: 36,
                ..
            })
        ));

        // A DSDT at the top of memory whose length runs past its end.
        let mut mem = qemu();
        let near_end = END - 40;
        mem.put(
            FADT_AT,
            &FadtSpec {
                dsdt: near_end as u32,
                ..FadtSpec::qemu()
            }
            .bytes(),
        );
        mem.put(near_end, &dsdt(QEMU_S5)[..40]);
        assert!(matches!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::Unreadable { .. })
        ));
    }

    #[test]
    fn missing_and_mislabelled_tables_give_their_errors() {
        let mut mem = machine(2, FadtSpec::qemu(), QEMU_S5);
        mem.put(XSDT_AT, &xsdt(&[APIC_AT, 0, HPET_AT]));
        let err = power_off_info(&mem, RSDP_AT).unwrap_err();
        assert_eq!(
            err,
            AcpiError::TableNotFound {
                signature: Signature::FADT,
                root: RootKind::Xsdt,
                root_phys: XSDT_AT
            }
        );
        assert_eq!(err.to_string(), "FADT not found in the XSDT at 0x100100");

        let mut mem = qemu();
        mem.put(DSDT_AT, &sdt(b"SSDT", 1, QEMU_S5));
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::TableSignature {
                phys: DSDT_AT,
                expected: Signature::DSDT,
                found: Signature(*b"SSDT")
            })
        );

        // An entry that points nowhere stops the listing with the reason.
        let mut mem = qemu();
        mem.put(RSDT_AT, &rsdt(&[APIC_AT, 0x10]));
        assert_eq!(
            log_line(&mem),
            "acpi: RSDP rev 0 (BOCHS) at 0xf52a0, RSDT at 0x100000, tables: APIC \
             [cannot read 4 bytes of physical memory at 0x10]"
        );
    }

    #[test]
    fn dsdt_without_s5_is_an_error() {
        let mem = machine(
            0,
            FadtSpec::qemu(),
            &[0x10, 0x05, b'_', b'S', b'B', b'_', 0xa5],
        );
        let err = power_off_info(&mem, RSDP_AT).unwrap_err();
        assert_eq!(err, AcpiError::NoS5);
        assert_eq!(err.to_string(), "no \\_S5 object in the DSDT");
    }

    #[test]
    fn slp_typ_values_wider_than_three_bits_are_rejected() {
        let aml = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x02, 0x0b, 0x00, 0x01, 0x00,
        ];
        assert_eq!(
            power_off_info(&machine(0, FadtSpec::qemu(), &aml), RSDP_AT),
            Err(AcpiError::SleepTypeTooWide {
                which: "SLP_TYPa",
                value: 0x100
            })
        );
    }

    fn s5(slp_typ_a: u16, slp_typ_b: u16) -> Result<SleepType, AcpiError> {
        Ok(SleepType {
            slp_typ_a,
            slp_typ_b,
        })
    }

    /// `Name (_S5, ...)` followed by `package`.
    fn named(package: &[u8]) -> Vec<u8> {
        [&[0x08, b'_', b'S', b'5', b'_'], package].concat()
    }

    #[test]
    fn s5_element_encodings() {
        // Zero / One.
        assert_eq!(find_s5(&named(&[0x12, 0x04, 0x02, 0x01, 0x00])), s5(1, 0));
        // BytePrefix.
        assert_eq!(
            find_s5(&named(&[0x12, 0x06, 0x02, 0x0a, 0x05, 0x0a, 0x07])),
            s5(5, 7)
        );
        // WordPrefix, DWordPrefix, QWordPrefix.
        assert_eq!(
            find_s5(&named(&[
                0x12, 0x0a, 0x02, 0x0b, 0x03, 0x00, 0x0c, 0x04, 0x00, 0x00, 0x00
            ])),
            s5(3, 4)
        );
        assert_eq!(
            find_s5(&named(&[
                0x12, 0x0c, 0x02, 0x0e, 6, 0, 0, 0, 0, 0, 0, 0, 0x00
            ])),
            s5(6, 0)
        );
        // A bare byte.
        assert_eq!(find_s5(&named(&[0x12, 0x04, 0x02, 0x05, 0x05])), s5(5, 5));
        // One element serves both registers, whether NumElements says 1 or
        // more than the initialisers given.
        assert_eq!(find_s5(&named(&[0x12, 0x04, 0x01, 0x0a, 0x07])), s5(7, 7));
        assert_eq!(
            find_s5(&named(&[0x12, 0x04, 0x04, 0x0a, 0x07, 0xa5])),
            s5(7, 7)
        );
    }

    #[test]
    fn s5_pkg_length_forms() {
        // Two-byte PkgLength: lead 0x40 | low nibble, then bits 11:4.
        assert_eq!(
            find_s5(&named(&[0x12, 0x47, 0x00, 0x02, 0x0a, 0x05, 0x0a, 0x06])),
            s5(5, 6)
        );
        // Four-byte PkgLength for a (padded) large package.
        assert_eq!(
            find_s5(&named(&[0x12, 0xc0, 0x01, 0x00, 0x00, 0x02, 0x01, 0x01])),
            s5(1, 1)
        );
        assert_eq!(
            find_s5(&named(&[0x12, 0x70, 0x00, 0x02, 0x00, 0x00])),
            Err(AcpiError::MalformedS5 {
                offset: 0,
                reason: "its PkgLength has reserved bits set"
            })
        );
    }

    #[test]
    fn s5_real_world_shapes() {
        // QEMU, after other objects in the DSDT (an _S3 and a Scope).
        let qemu = [
            &[
                0x08, b'_', b'S', b'3', b'_', 0x12, 0x06, 0x04, 0x01, 0x01, 0x00, 0x00,
            ][..],
            &[0x10, 0x06, b'_', b'S', b'B', b'_', 0xa5],
            QEMU_S5,
        ]
        .concat();
        assert_eq!(find_s5(&qemu), s5(0, 0));
        // Bochs BIOS style: root-prefixed name, `Package (0x02) {0x00, 0x00}`
        // compiled with explicit BytePrefix constants.
        let bochs = [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a, 0x00, 0x0a, 0x00,
        ];
        assert_eq!(find_s5(&bochs), s5(0, 0));
        // Coreboot style `Name (\_S5, Package (0x04) {0x07, 0x07, 0x00, 0x00})`.
        let coreboot = [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x07, 0x0a, 0x07, 0x00,
            0x00,
        ];
        assert_eq!(find_s5(&coreboot), s5(7, 7));
    }

    #[test]
    fn s5_bytes_inside_other_data_do_not_match() {
        // In a string, in a name path, after a non-NameOp byte.
        let aml = [
            &[
                0x0d, b'x', b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x01, 0x01, 0x00,
            ][..],
            &[
                0x5c, 0x2e, b'_', b'S', b'B', b'_', b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x01,
                0x01,
            ],
            &[0x09, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x01, 0x01],
        ]
        .concat();
        assert_eq!(find_s5(&aml), Err(AcpiError::NoS5));
        // A chance `NameOp _S5_` in a buffer is skipped; the real one is used.
        let aml = [
            &[0x11, 0x08, 0x0a, 0x06, 0x08, b'_', b'S', b'5', b'_', 0x33][..],
            QEMU_S5,
        ]
        .concat();
        assert_eq!(find_s5(&aml), s5(0, 0));
    }

    #[test]
    fn malformed_s5_objects_say_why() {
        let malformed =
            |package: &[u8]| match find_s5(&[&[0xa5, 0xa5][..], &named(package)].concat()) {
                Err(AcpiError::MalformedS5 { offset: 2, reason }) => reason,
                other => panic!("{other:?}"),
            };
        assert_eq!(
            malformed(&[0x0a, 0x05]),
            "the name is not followed by a Package"
        );
        assert_eq!(malformed(&[0x12, 0x02, 0x00]), "it is an empty Package");
        assert_eq!(
            malformed(&[0x12, 0x06, 0x02, 0x0a]),
            "it is cut off by the end of the table"
        );
        assert_eq!(
            malformed(&[0x12, 0x03, 0x02, 0x0a, 0x05, 0x0a, 0x05]),
            "its elements run past its PkgLength"
        );
        assert_eq!(
            malformed(&[0x12, 0x07, 0x02, 0x0c, 0x00, 0x00, 0x01, 0x00, 0x00]),
            "an SLP_TYP value does not fit in 16 bits"
        );
        assert_eq!(
            malformed(&[0x12, 0x07, 0x02, b'S', b'L', b'P', b'A', 0x00]),
            "an SLP_TYP element is not an integer constant (it would need an AML interpreter)"
        );
        assert_eq!(
            find_s5(&named(&[0x0a])).unwrap_err().to_string(),
            "malformed \\_S5 object at DSDT offset 0x0: the name is not followed by a Package"
        );
    }

    #[test]
    fn s5_is_found_wherever_it_sits_across_scan_windows() {
        // The DSDT is scanned in 1024-byte steps from offset 36; put the
        // object at every offset around the first few window boundaries.
        for pad in (0..40)
            .chain(1024 - 40..1024 + 40)
            .chain(2048 - 40..2048 + 40)
        {
            let aml = [
                &vec![0xa5; pad][..],
                &named(&[0x12, 0x06, 0x02, 0x0b, 0x05, 0x00, 0x00]),
            ]
            .concat();
            let mem = machine(0, FadtSpec::qemu(), &aml);
            assert_eq!(
                power_off_info(&mem, RSDP_AT).map(|i| i.sleep),
                s5(5, 0),
                "padding {pad}"
            );
        }
        // A cut-off object at the very end of a long DSDT is reported with its
        // offset from the DSDT's header.
        let aml = [&vec![0xa5; 3000][..], &named(&[0x12, 0x05, 0x02])].concat();
        let mem = machine(0, FadtSpec::qemu(), &aml);
        assert_eq!(
            power_off_info(&mem, RSDP_AT),
            Err(AcpiError::MalformedS5 {
                offset: 3036,
                reason: "it is cut off by the end of the table"
            })
        );
    }

    #[test]
    fn pm1_control_value_keeps_preserved_bits_and_sets_slp_typ_and_slp_en() {
        // SCI_EN kept, SLP_TYP 5, SLP_EN.
        assert_eq!(pm1_control_value(PM1_SCI_EN, 5), 0x0001 | 5 << 10 | 1 << 13);
        // Old SLP_TYP (12:10) and the write-only GBL_RLS (2) cleared, SLP_EN
        // (13) set; reserved and other bits kept.
        assert_eq!(pm1_control_value(0xffff, 0), 0b1110_0011_1111_1011);
        // Only SLP_TYP's three bits are written.
        assert_eq!(pm1_control_value(0, 0xff), 0b111 << 10 | 1 << 13);
    }

    // MADT (5.2.12).

    /// Where [`with_madt`] puts the MADT, with room for large ones.
    const MADT_AT: u64 = 0x10_4000;
    const LAPIC: u32 = 0xfee0_0000;
    const ENABLED: u32 = 1;
    const ONLINE_CAPABLE: u32 = 2;

    /// A type-0 Processor Local APIC entry.
    fn lapic(uid: u8, apic_id: u8, flags: u32) -> Vec<u8> {
        [&[0, 8, uid, apic_id][..], &flags.to_le_bytes()].concat()
    }

    /// A type-1 I/O APIC entry.
    fn io_apic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
        [
            &[1, 12, id, 0][..],
            &address.to_le_bytes(),
            &gsi_base.to_le_bytes(),
        ]
        .concat()
    }

    /// A type-5 Local APIC Address Override entry.
    fn lapic_override(address: u64) -> Vec<u8> {
        [&[5, 12, 0, 0][..], &address.to_le_bytes()].concat()
    }

    /// A type-9 Processor Local x2APIC entry.
    fn x2apic(x2apic_id: u32, flags: u32, uid: u32) -> Vec<u8> {
        [
            &[9, 16, 0, 0][..],
            &x2apic_id.to_le_bytes(),
            &flags.to_le_bytes(),
            &uid.to_le_bytes(),
        ]
        .concat()
    }

    /// A MADT with the local APIC at `LAPIC`, PCAT_COMPAT set, and `entries`.
    fn madt_table(entries: &[Vec<u8>]) -> Vec<u8> {
        let body = [
            &LAPIC.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &entries.concat(),
        ]
        .concat();
        sdt(b"APIC", 3, &body)
    }

    /// An ACPI 2.0 machine whose XSDT lists `table` at `MADT_AT`.
    fn with_madt(table: &[u8]) -> Mem {
        let mut mem = machine(2, FadtSpec::qemu(), QEMU_S5);
        mem.put(XSDT_AT, &xsdt(&[FADT_AT, MADT_AT, HPET_AT, WAET_AT]));
        mem.put(MADT_AT, table);
        mem
    }

    /// `entry` with its length byte set to `length`.
    fn with_length(mut entry: Vec<u8>, length: u8) -> Vec<u8> {
        entry[1] = length;
        entry
    }

    fn madt_of(entries: &[Vec<u8>]) -> Result<Madt, AcpiError> {
        madt(&with_madt(&madt_table(entries)), RSDP_AT)
    }

    fn cpu(apic_id: u32, uid: u32, enabled: bool, online_capable: bool) -> MadtCpu {
        MadtCpu {
            apic_id,
            uid,
            enabled,
            online_capable,
        }
    }

    /// QEMU's MADT for two CPUs: the local APICs, the I/O APIC, five
    /// Interrupt Source Overrides (type 2) and a Local APIC NMI (type 4).
    fn qemu_madt_entries() -> Vec<Vec<u8>> {
        let iso = |irq: u8, gsi: u8, flags: u8| vec![2, 10, 0, irq, gsi, 0, 0, 0, flags, 0];
        vec![
            lapic(0, 0, ENABLED),
            lapic(1, 1, ENABLED),
            io_apic(0, 0xfec0_0000, 0),
            iso(0, 2, 0),
            iso(5, 5, 0x0d),
            iso(9, 9, 0x0d),
            iso(10, 10, 0x0d),
            iso(11, 11, 0x0d),
            vec![4, 6, 0xff, 0, 0, 1],
        ]
    }

    #[test]
    fn qemu_madt_gives_two_cpus_and_the_io_apic() {
        let madt = madt_of(&qemu_madt_entries()).unwrap();
        assert_eq!(
            madt,
            Madt {
                local_apic: 0xfee0_0000,
                pcat_compat: true,
                cpus: vec![cpu(0, 0, true, false), cpu(1, 1, true, false)],
                io_apics: vec![(0, 0xfec0_0000, 0)],
            }
        );
        assert_eq!(
            madt.to_string(),
            "MADT: 2 CPUs (APIC IDs 0, 1), local APIC at 0xfee00000, 1 I/O APIC"
        );
    }

    #[test]
    fn madt_is_found_through_the_rsdt_too() {
        let mut mem = qemu();
        mem.put(APIC_AT, &madt_table(&[lapic(0, 0, ENABLED)]));
        let madt = madt(&mem, RSDP_AT).unwrap();
        assert_eq!(madt.cpus, [cpu(0, 0, true, false)]);
        assert_eq!(
            madt.to_string(),
            "MADT: 1 CPU (APIC ID 0), local APIC at 0xfee00000, 0 I/O APICs"
        );
    }

    #[test]
    fn madt_without_entries() {
        // `machine` puts a MADT of 44 zero-filled bytes.
        let madt = madt(&qemu(), RSDP_AT).unwrap();
        assert_eq!(
            madt,
            Madt {
                local_apic: 0,
                pcat_compat: false,
                cpus: vec![],
                io_apics: vec![],
            }
        );
        assert_eq!(madt.enabled_cpus().count(), 0);
        assert_eq!(
            madt.to_string(),
            "MADT: 0 CPUs, local APIC at 0x0, 0 I/O APICs"
        );
    }

    #[test]
    fn local_apic_address_override_replaces_the_header_address() {
        let madt = madt_of(&[
            lapic(0, 0, ENABLED),
            lapic_override(0x1_fee0_0000),
            io_apic(2, 0xfec0_0000, 0),
            io_apic(3, 0xfec0_1000, 24),
            lapic_override(0x2_fee0_0000),
        ])
        .unwrap();
        assert_eq!(madt.local_apic, 0x1_fee0_0000);
        assert_eq!(madt.io_apics, [(2, 0xfec0_0000, 0), (3, 0xfec0_1000, 24)]);
        assert_eq!(
            madt.to_string(),
            "MADT: 1 CPU (APIC ID 0), local APIC at 0x1fee00000, 2 I/O APICs"
        );
    }

    #[test]
    fn x2apic_entries_and_duplicates() {
        let madt = madt_of(&[
            lapic(0, 0, ENABLED),
            lapic(1, 1, ENABLED),
            // The same processors again as x2APIC entries: duplicates.
            x2apic(0, ENABLED, 0),
            x2apic(1, ENABLED, 1),
            x2apic(0x100, ENABLED, 0x1_0000),
            // Duplicates keep the first entry, whatever the later one says.
            x2apic(0x100, 0, 7),
            lapic(9, 1, 0),
        ])
        .unwrap();
        assert_eq!(
            madt.cpus,
            [
                cpu(0, 0, true, false),
                cpu(1, 1, true, false),
                cpu(0x100, 0x1_0000, true, false),
            ]
        );
        assert_eq!(
            madt.to_string(),
            "MADT: 3 CPUs (APIC IDs 0, 1, 256), local APIC at 0xfee00000, 0 I/O APICs"
        );
    }

    #[test]
    fn disabled_and_online_capable_cpus_are_listed_but_not_started() {
        let madt = madt_of(&[
            lapic(0, 0, ENABLED),
            lapic(1, 1, 0),
            lapic(2, 2, ONLINE_CAPABLE),
            x2apic(3, ENABLED, 3),
            x2apic(4, ONLINE_CAPABLE, 4),
            x2apic(5, 0, 5),
            // Reserved flag bits are ignored.
            lapic(6, 6, 0xffff_fffc),
        ])
        .unwrap();
        assert_eq!(
            madt.cpus,
            [
                cpu(0, 0, true, false),
                cpu(1, 1, false, false),
                cpu(2, 2, false, true),
                cpu(3, 3, true, false),
                cpu(4, 4, false, true),
                cpu(5, 5, false, false),
                cpu(6, 6, false, false),
            ]
        );
        assert_eq!(
            madt.enabled_cpus().copied().collect::<Vec<_>>(),
            [cpu(0, 0, true, false), cpu(3, 3, true, false)]
        );
        assert_eq!(
            madt.to_string(),
            "MADT: 2 CPUs (APIC IDs 0, 3), 2 more online-capable, 3 more disabled, \
             local APIC at 0xfee00000, 0 I/O APICs"
        );
    }

    #[test]
    fn madt_display_gives_runs_of_apic_ids_as_ranges() {
        let madt = |ids: &[u8]| {
            let entries: Vec<_> = ids.iter().map(|&id| lapic(id, id, ENABLED)).collect();
            madt_of(&entries).unwrap().to_string()
        };
        assert_eq!(
            madt(&[0, 1, 2, 3, 4, 5, 6, 7]),
            "MADT: 8 CPUs (APIC IDs 0-7), local APIC at 0xfee00000, 0 I/O APICs"
        );
        assert_eq!(
            madt(&[0, 1, 2, 4, 6, 7, 9, 10, 11, 3]),
            "MADT: 10 CPUs (APIC IDs 0-2, 4, 6, 7, 9-11, 3), local APIC at 0xfee00000, 0 I/O APICs"
        );
        let x2 = madt_of(&[
            x2apic(u32::MAX - 1, ENABLED, 0),
            x2apic(u32::MAX, ENABLED, 1),
        ]);
        assert_eq!(
            x2.map(|m| m.to_string()),
            Ok(
                "MADT: 2 CPUs (APIC IDs 4294967294, 4294967295), local APIC at 0xfee00000, \
                0 I/O APICs"
                    .to_string()
            )
        );
        // No run wraps around from the largest ID to 0.
        let x2 = madt_of(&[x2apic(u32::MAX, ENABLED, 0), x2apic(0, ENABLED, 1)]);
        assert_eq!(
            x2.map(|m| m.to_string()),
            Ok(
                "MADT: 2 CPUs (APIC IDs 4294967295, 0), local APIC at 0xfee00000, 0 I/O APICs"
                    .to_string()
            )
        );
    }

    #[test]
    fn unknown_and_longer_entries_are_skipped_by_their_length() {
        let madt = madt_of(&[
            // An unknown type, as long as an entry can be.
            [&[0x7f, 255][..], &[0xa5; 253]].concat(),
            // Known types with bytes after their fixed fields (a later
            // revision's): decoded from the first bytes.
            with_length([&lapic(3, 4, ENABLED)[..], &[0xff; 4]].concat(), 12),
            with_length([&x2apic(5, ENABLED, 6)[..], &[0xff; 2]].concat(), 18),
            // A GIC CPU interface entry (type 0xb) on an x86 table.
            [&[0x0b, 80][..], &[0; 78]].concat(),
        ])
        .unwrap();
        assert_eq!(madt.cpus, [cpu(4, 3, true, false), cpu(5, 6, true, false)]);
    }

    #[test]
    fn madt_entries_shorter_than_their_type_are_rejected() {
        // Each entry cut to the length it states.
        let short = |mut entry: Vec<u8>| {
            entry.truncate(usize::from(entry[1]));
            madt_of(&[lapic(0, 0, ENABLED), entry])
        };
        let expect = |entry_type, length, min| {
            Err(AcpiError::MadtEntryLength {
                phys: MADT_AT,
                offset: 52,
                entry_type,
                length,
                min,
            })
        };
        assert_eq!(short(with_length(lapic(0, 1, ENABLED), 6)), expect(0, 6, 8));
        assert_eq!(
            short(with_length(io_apic(0, 0xfec0_0000, 0), 10)),
            expect(1, 10, 12)
        );
        assert_eq!(
            short(with_length(lapic_override(0x1_0000_0000), 8)),
            expect(5, 8, 12)
        );
        let err = short(with_length(x2apic(1, ENABLED, 1), 12));
        assert_eq!(err, expect(9, 12, 16));
        assert_eq!(
            err.unwrap_err().to_string(),
            "MADT at 0x104000: the entry at offset 0x34 (type 9, Processor Local x2APIC) \
             states length 12; that type is 16 bytes"
        );
    }

    #[test]
    fn madt_entries_shorter_than_two_bytes_are_rejected() {
        // A zero length would make a naive walk loop forever on the entry.
        let err = madt_of(&[lapic(0, 0, ENABLED), vec![0, 0, 0, 0, 0, 0, 0, 0]]).unwrap_err();
        assert_eq!(
            err,
            AcpiError::MadtEntryLength {
                phys: MADT_AT,
                offset: 52,
                entry_type: 0,
                length: 0,
                min: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "MADT at 0x104000: the entry at offset 0x34 (type 0) states length 0; \
             an entry is at least 2 bytes (its type and length)"
        );
        assert_eq!(
            madt_of(&[vec![0x7f, 1, 0]]),
            Err(AcpiError::MadtEntryLength {
                phys: MADT_AT,
                offset: 44,
                entry_type: 0x7f,
                length: 1,
                min: 2
            })
        );
    }

    #[test]
    fn madt_entries_running_past_the_table_are_rejected() {
        // The last entry states 12 bytes, but only 8 are left.
        let err = madt_of(&[
            io_apic(0, 0xfec0_0000, 0),
            with_length(lapic(0, 0, ENABLED), 12),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            AcpiError::MadtEntryOverrun {
                phys: MADT_AT,
                offset: 56,
                end: 68,
                table_len: 64
            }
        );
        assert_eq!(
            err.to_string(),
            "MADT at 0x104000: the entry at offset 0x38 runs to 0x44, past the table's end at 0x40"
        );
        // A single byte after the last entry: not even a type and a length.
        assert_eq!(
            madt_of(&[lapic(0, 0, ENABLED), vec![0]]),
            Err(AcpiError::MadtEntryOverrun {
                phys: MADT_AT,
                offset: 52,
                end: 54,
                table_len: 53
            })
        );
    }

    #[test]
    fn truncated_and_corrupt_madts_give_their_errors() {
        // Shorter than the fixed fields.
        let mut mem = with_madt(&sdt(b"APIC", 3, &LAPIC.to_le_bytes()));
        assert_eq!(
            madt(&mem, RSDP_AT),
            Err(AcpiError::TableLength {
                phys: MADT_AT,
                signature: Signature::MADT,
                length: 40,
                min: 44
            })
        );
        // The same, for a table that did not come through `read_table`.
        *mem.byte(MADT_AT + 4) = 43;
        let table = Table {
            phys: MADT_AT,
            header: SdtHeader {
                signature: Signature::MADT,
                length: 43,
                revision: 3,
                oem_id: OemId(*b"BOCHS "),
            },
        };
        assert_eq!(
            Madt::from_table(&mem, &table),
            Err(AcpiError::TableLength {
                phys: MADT_AT,
                signature: Signature::MADT,
                length: 43,
                min: 44
            })
        );

        // A checksum that does not match.
        let mut mem = with_madt(&madt_table(&qemu_madt_entries()));
        *mem.byte(MADT_AT + 45) ^= 1;
        let err = madt(&mem, RSDP_AT).unwrap_err();
        assert_eq!(
            err,
            AcpiError::TableChecksum {
                phys: MADT_AT,
                signature: Signature::MADT
            }
        );
        assert_eq!(err.to_string(), "MADT checksum mismatch at 0x104000");

        // A MADT at the top of memory whose length runs past its end.
        let near_end = END - 50;
        let mut mem = qemu();
        mem.put(RSDT_AT, &rsdt(&[FADT_AT, near_end]));
        let table = madt_table(&[lapic(0, 0, ENABLED), lapic(1, 1, ENABLED)]);
        mem.put(near_end, &table[..50]);
        assert_eq!(
            madt(&mem, RSDP_AT),
            Err(AcpiError::Unreadable {
                phys: near_end,
                len: 60
            })
        );
    }

    #[test]
    fn missing_or_mislabelled_madt_gives_its_error() {
        let mut mem = qemu();
        mem.put(RSDT_AT, &rsdt(&[FADT_AT, HPET_AT]));
        let err = madt(&mem, RSDP_AT).unwrap_err();
        assert_eq!(
            err,
            AcpiError::TableNotFound {
                signature: Signature::MADT,
                root: RootKind::Rsdt,
                root_phys: RSDT_AT
            }
        );
        assert_eq!(err.to_string(), "MADT not found in the RSDT at 0x100000");

        let mem = qemu();
        let hpet = read_table(&mem, HPET_AT, Signature(*b"HPET")).unwrap();
        assert_eq!(
            Madt::from_table(&mem, &hpet),
            Err(AcpiError::TableSignature {
                phys: HPET_AT,
                expected: Signature::MADT,
                found: Signature(*b"HPET")
            })
        );
    }
}
