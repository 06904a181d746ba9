//! The firmware tables a PC operating system reads to find its platform,
//! written into guest memory for guests started without firmware: an ACPI
//! RSDP, RSDT and XSDT, a FADT with its FACS and a DSDT, and a MADT.
//!
//! Ferrovisor starts kernels directly, so nothing else would tell a guest
//! where its local APICs, I/O APIC and power-management registers are.
//! ACPI rather than an MP table, because one set of tables serves both:
//! the MADT lists the processors and the I/O APIC (what an MP table would
//! say), and only the FADT with a DSDT `\_S5` object gives a kernel a way to
//! power off (`poweroff -f` writes `SLP_TYP | SLP_EN` to the PM1 control
//! register). A stock distribution kernel finds the tables without any
//! command-line option: Linux scans `0xE0000..0x100000` for the RSDP on
//! 16-byte boundaries (and also takes `boot_params.acpi_rsdp_addr`).
//!
//! What the tables say, and what they leave out:
//! - MADT (ACPI 6.x 5.2.12): the local APIC address, PCAT_COMPAT (an 8259
//!   pair is present), one processor local APIC per vCPU (APIC ID = index),
//!   one I/O APIC with GSI base 0, the local APIC NMI on LINT1 for every
//!   processor, and no interrupt source overrides: ISA IRQ n is I/O APIC
//!   input n, IRQ 0 (the PIT) included, which the VM's routing matches.
//! - FADT (5.2.9), revision 4 layout (244 bytes): SCI on IRQ 9, no SMI
//!   command port (the machine is always in ACPI mode), the PM1a event and
//!   control blocks and the 24-bit PM timer at the ports the caller names,
//!   no GPE blocks, C2/C3 unsupported, the reset register (an I/O port and
//!   value, 0xCF9 and 6 on a PC), `IAPC_BOOT_ARCH` with legacy devices and
//!   no VGA, and no 8042 (the VM's keyboard controller only resets). The
//!   extended (`X_`) address fields are left zero: ACPI lets an OS take the
//!   32-bit ones, and two copies that could disagree help nobody.
//! - DSDT: just `Name (\_S5, Package () { S5, S5, 0, 0 })`. No processor
//!   objects, no PCI root bridge, no devices: the MADT enumerates the CPUs
//!   and the guest has no PCI devices.
//!
//! Layout: everything within one page at [`ACPI_TABLES_ADDR`], which the
//! memory map already reports as reserved (the legacy ROM hole).

// Offsets here are sums of constants within one page, the largest (the
// MADT's end) bounded by `MAX_ACPI_CPUS`; nothing a guest or an image
// controls enters them, and `put` checks every write against the buffer.
#![allow(clippy::arithmetic_side_effects)]

use addr::GuestPhysAddr;

use super::bytes::{put, put_u32, put_u64, put_u8};
use super::error::{Item, LoadError};
use super::GuestMemory;

/// Where the tables go: the start of the BIOS area Linux scans for the RSDP.
pub const ACPI_TABLES_ADDR: GuestPhysAddr = GuestPhysAddr::new(0xE_0000);

/// The most processors the MADT lists (one page holds the tables).
pub const MAX_ACPI_CPUS: u32 = 64;

/// The guest platform the tables describe: what the VM's device models
/// decode, passed in by whoever builds the VM so the two cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcPlatform {
    /// How many vCPUs (APIC IDs 0 to `cpus - 1`), 1 to [`MAX_ACPI_CPUS`].
    pub cpus: u32,
    /// The local APIC's guest-physical address.
    pub lapic_addr: u32,
    /// The I/O APIC's ID and guest-physical address.
    pub ioapic_id: u8,
    /// The I/O APIC's address.
    pub ioapic_addr: u32,
    /// The PM1a event block (4 bytes: status, enable).
    pub pm1a_evt: u16,
    /// The PM1a control block (2 bytes).
    pub pm1a_cnt: u16,
    /// The PM timer (4 bytes, 24-bit counter).
    pub pm_tmr: u16,
    /// The reset register's I/O port and the value that resets.
    pub reset_port: u16,
    /// The value written to `reset_port` to reset.
    pub reset_value: u8,
    /// The ISA IRQ of the SCI.
    pub sci_irq: u16,
    /// `SLP_TYP` of the soft-off state, the value `\_S5` carries.
    pub s5_sleep_type: u8,
}

// Offsets of each table within the page at `ACPI_TABLES_ADDR`.
const RSDP_OFF: u64 = 0x000;
const RSDT_OFF: u64 = 0x040;
const XSDT_OFF: u64 = 0x080;
const FADT_OFF: u64 = 0x100;
const FACS_OFF: u64 = 0x200; // 64-byte aligned (5.2.10)
const DSDT_OFF: u64 = 0x240;
const MADT_OFF: u64 = 0x300;
const PAGE: usize = 4096;

const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const FADT_LEN: usize = 244;
const FACS_LEN: usize = 64;
const OEM_ID: &[u8; 6] = b"FERRO ";
const OEM_TABLE_ID: &[u8; 8] = b"FERROVSR";
const CREATOR_ID: &[u8; 4] = b"FRVS";

/// MADT flags: PCAT_COMPAT, a dual 8259 is present (5.2.12, Table 5.20).
const MADT_PCAT_COMPAT: u32 = 1;
/// FADT flags (5.2.9, Table 5.10): WBINVD works, C1 is supported, the
/// power and sleep buttons are not fixed-feature ones, the RTC cannot wake
/// from a fixed event, and the reset register is supported.
const FADT_FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 10);
/// IAPC_BOOT_ARCH (Table 5.11): legacy devices present (bit 0), no VGA
/// (bit 2); bit 1 (8042) clear.
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 2);

/// Sets byte 9 of the table in `buf` (its checksum) so all `len` bytes sum
/// to zero.
fn checksum(buf: &mut [u8], at: usize, len: usize) {
    let sum = buf
        .get(at..at.saturating_add(len))
        .unwrap_or_default()
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b));
    if let Some(byte) = buf.get_mut(at.saturating_add(9)) {
        *byte = byte.wrapping_sub(sum);
    }
}

/// Writes a table header (5.2.6) at `at`; the checksum is set later.
fn header(buf: &mut [u8], at: usize, signature: &[u8; 4], len: usize, revision: u8) {
    put(buf, at, signature);
    put_u32(buf, at + 4, len as u32);
    put_u8(buf, at + 8, revision);
    put(buf, at + 10, OEM_ID);
    put(buf, at + 16, OEM_TABLE_ID);
    put_u32(buf, at + 24, 1);
    put(buf, at + 28, CREATOR_ID);
    put_u32(buf, at + 32, 1);
}

/// The AML of the DSDT's body: `Name (\_S5, Package (4) { s5, s5, 0, 0 })`
/// (NameOp, NameString, PackageOp, PkgLength, NumElements, two
/// BytePrefix constants and two ZeroOps: ACPI 6.x 20.2.5.1 and 20.2.5.4).
fn s5_aml(s5: u8) -> [u8; 14] {
    [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, s5, 0x0A, s5, 0x00, 0x00,
    ]
}

/// Builds the page of tables for `platform` located at `base`.
fn build(platform: &PcPlatform, base: u64) -> Result<[u8; PAGE], LoadError> {
    let too_many = LoadError::TooManyCpus {
        cpus: platform.cpus,
        max: MAX_ACPI_CPUS,
    };
    if platform.cpus == 0 || platform.cpus > MAX_ACPI_CPUS {
        return Err(too_many);
    }
    let mut buf = [0u8; PAGE];
    let addr = |off: u64| base.saturating_add(off);
    let at = |off: u64| off as usize;

    // DSDT.
    let aml = s5_aml(platform.s5_sleep_type);
    let dsdt_len = HEADER_LEN + aml.len();
    header(&mut buf, at(DSDT_OFF), b"DSDT", dsdt_len, 2);
    put(&mut buf, at(DSDT_OFF) + HEADER_LEN, &aml);
    checksum(&mut buf, at(DSDT_OFF), dsdt_len);

    // FACS (5.2.10): signature, length, hardware signature 0, no waking
    // vector, version 2. It has no checksum.
    put(&mut buf, at(FACS_OFF), b"FACS");
    put_u32(&mut buf, at(FACS_OFF) + 4, FACS_LEN as u32);
    put_u8(&mut buf, at(FACS_OFF) + 32, 2);

    // FADT.
    let f = at(FADT_OFF);
    header(&mut buf, f, b"FACP", FADT_LEN, 4);
    put_u32(&mut buf, f + 36, addr(FACS_OFF) as u32);
    put_u32(&mut buf, f + 40, addr(DSDT_OFF) as u32);
    put(&mut buf, f + 46, &platform.sci_irq.to_le_bytes());
    put_u32(&mut buf, f + 56, u32::from(platform.pm1a_evt));
    put_u32(&mut buf, f + 64, u32::from(platform.pm1a_cnt));
    put_u32(&mut buf, f + 76, u32::from(platform.pm_tmr));
    put_u8(&mut buf, f + 88, 4); // PM1_EVT_LEN
    put_u8(&mut buf, f + 89, 2); // PM1_CNT_LEN
    put_u8(&mut buf, f + 91, 4); // PM_TMR_LEN
    put(&mut buf, f + 96, &101u16.to_le_bytes()); // P_LVL2_LAT > 100: no C2
    put(&mut buf, f + 98, &1001u16.to_le_bytes()); // P_LVL3_LAT > 1000: no C3
    put_u8(&mut buf, f + 108, 0x32); // CENTURY: the CMOS index
    put(&mut buf, f + 109, &IAPC_BOOT_ARCH.to_le_bytes());
    put_u32(&mut buf, f + 112, FADT_FLAGS);
    // RESET_REG: a Generic Address Structure in system I/O space, 8 bits
    // wide, byte access.
    put(&mut buf, f + 116, &[1, 8, 0, 1]);
    put_u64(&mut buf, f + 120, u64::from(platform.reset_port));
    put_u8(&mut buf, f + 128, platform.reset_value);
    checksum(&mut buf, f, FADT_LEN);

    // MADT.
    let m = at(MADT_OFF);
    put_u32(&mut buf, m + 36, platform.lapic_addr);
    put_u32(&mut buf, m + 40, MADT_PCAT_COMPAT);
    let mut e = m + 44;
    for cpu in 0..platform.cpus {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, enabled.
        let id = u8::try_from(cpu).map_err(|_| too_many)?;
        put(&mut buf, e, &[0, 8, id, id]);
        put_u32(&mut buf, e + 4, 1);
        e += 8;
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base 0.
    put(&mut buf, e, &[1, 12, platform.ioapic_id, 0]);
    put_u32(&mut buf, e + 4, platform.ioapic_addr);
    put_u32(&mut buf, e + 8, 0);
    e += 12;
    // Local APIC NMI: type 4, length 6, all processors (UID 0xFF), flags
    // 0 (bus-conforming), LINT1.
    put(&mut buf, e, &[4, 6, 0xFF, 0, 0, 1]);
    e += 6;
    let madt_len = e - m;
    header(&mut buf, m, b"APIC", madt_len, 4);
    checksum(&mut buf, m, madt_len);

    // RSDT and XSDT: the FADT and the MADT.
    let tables = [addr(FADT_OFF), addr(MADT_OFF)];
    let r = at(RSDT_OFF);
    let rsdt_len = HEADER_LEN + 4 * tables.len();
    header(&mut buf, r, b"RSDT", rsdt_len, 1);
    let x = at(XSDT_OFF);
    let xsdt_len = HEADER_LEN + 8 * tables.len();
    header(&mut buf, x, b"XSDT", xsdt_len, 1);
    for (i, table) in tables.iter().enumerate() {
        put_u32(&mut buf, r + HEADER_LEN + 4 * i, *table as u32);
        put_u64(&mut buf, x + HEADER_LEN + 8 * i, *table);
    }
    checksum(&mut buf, r, rsdt_len);
    checksum(&mut buf, x, xsdt_len);

    // RSDP (5.2.5.3), revision 2: the first 20 bytes and all 36 each sum
    // to zero.
    let p = at(RSDP_OFF);
    put(&mut buf, p, b"RSD PTR ");
    put(&mut buf, p + 9, OEM_ID);
    put_u8(&mut buf, p + 15, 2);
    put_u32(&mut buf, p + 16, addr(RSDT_OFF) as u32);
    put_u32(&mut buf, p + 20, RSDP_LEN as u32);
    put_u64(&mut buf, p + 24, addr(XSDT_OFF));
    let sum = |buf: &[u8], len: usize| {
        buf.get(p..p + len)
            .unwrap_or_default()
            .iter()
            .fold(0u8, |s, b| s.wrapping_add(*b))
    };
    let first = 0u8.wrapping_sub(sum(&buf, 20));
    put_u8(&mut buf, p + 8, first);
    let extended = 0u8.wrapping_sub(sum(&buf, RSDP_LEN));
    put_u8(&mut buf, p + 32, extended);
    Ok(buf)
}

/// Writes the tables for `platform` at [`ACPI_TABLES_ADDR`]; returns the
/// RSDP's address.
///
/// # Errors
///
/// [`LoadError::TooManyCpus`] for 0 or more than [`MAX_ACPI_CPUS`] vCPUs;
/// [`LoadError::OutsideRam`] for a guest whose RAM does not reach past the
/// tables' page (under 1 MiB).
pub fn write_acpi_tables<M: GuestMemory + ?Sized>(
    mem: &mut M,
    platform: &PcPlatform,
) -> Result<GuestPhysAddr, LoadError> {
    let page = build(platform, ACPI_TABLES_ADDR.as_u64())?;
    mem.write(ACPI_TABLES_ADDR, &page)
        .map_err(|_| LoadError::DoesNotFit {
            item: Item::FirmwareTables,
            at: ACPI_TABLES_ADDR,
            len: PAGE as u64,
            ram: mem.size(),
        })?;
    Ok(ACPI_TABLES_ADDR)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    /// The platform the VM builds (the values devices decode).
    pub(crate) fn pc(cpus: u32) -> PcPlatform {
        PcPlatform {
            cpus,
            lapic_addr: 0xFEE0_0000,
            ioapic_id: 0,
            ioapic_addr: 0xFEC0_0000,
            pm1a_evt: 0x600,
            pm1a_cnt: 0x604,
            pm_tmr: 0x608,
            reset_port: 0xCF9,
            reset_value: 6,
            sci_irq: 9,
            s5_sleep_type: 5,
        }
    }

    /// Guest memory for the `acpi` crate's reader: the page at its address.
    struct Page(Vec<u8>);

    impl acpi::PhysMemory for Page {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), acpi::AcpiError> {
            let unreadable = acpi::AcpiError::Unreadable {
                phys,
                len: buf.len(),
            };
            let off = phys
                .checked_sub(ACPI_TABLES_ADDR.as_u64())
                .ok_or(unreadable)? as usize;
            let src = self.0.get(off..off + buf.len()).ok_or(unreadable)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn page(cpus: u32) -> Page {
        Page(
            build(&pc(cpus), ACPI_TABLES_ADDR.as_u64())
                .unwrap()
                .to_vec(),
        )
    }

    #[test]
    fn the_hypervisors_own_acpi_reader_finds_power_off() {
        let mem = page(1);
        let off = acpi::power_off_info(&mem, ACPI_TABLES_ADDR.as_u64()).unwrap();
        assert_eq!(off.pm1a_cnt, 0x604);
        assert_eq!(off.pm1b_cnt, None);
        assert_eq!(off.sleep.slp_typ_a, 5);
        assert_eq!(off.smi_cmd, 0, "always in ACPI mode");
        let root = acpi::Rsdp::read(&mem, ACPI_TABLES_ADDR.as_u64()).unwrap();
        let root = root.root_table(&mem).unwrap();
        assert_eq!(root.entry_count(), 2);
    }

    #[test]
    fn the_madt_lists_every_cpu_and_the_io_apic() {
        let mem = page(4);
        let root = acpi::Rsdp::read(&mem, ACPI_TABLES_ADDR.as_u64()).unwrap();
        let table = root
            .root_table(&mem)
            .unwrap()
            .find(&mem, acpi::Signature(*b"APIC"))
            .unwrap();
        let madt = acpi::Madt::from_table(&mem, &table).unwrap();
        assert_eq!(madt.local_apic, 0xFEE0_0000);
        assert!(madt.pcat_compat);
        let ids: Vec<u32> = madt.cpus.iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert!(madt.cpus.iter().all(|c| c.enabled));
        assert_eq!(madt.io_apics, [(0, 0xFEC0_0000, 0)]);
    }

    #[test]
    fn every_checksum_holds() {
        let mem = page(2);
        let sum = |from: u64, len: usize| {
            mem.0[from as usize..from as usize + len]
                .iter()
                .fold(0u8, |s, b| s.wrapping_add(*b))
        };
        assert_eq!(sum(RSDP_OFF, 20), 0);
        assert_eq!(sum(RSDP_OFF, RSDP_LEN), 0);
        for off in [RSDT_OFF, XSDT_OFF, FADT_OFF, DSDT_OFF, MADT_OFF] {
            let len = u32::from_le_bytes(
                mem.0[off as usize + 4..off as usize + 8]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(sum(off, len as usize), 0, "table at {off:#x}");
        }
    }

    #[test]
    fn the_dsdt_carries_s5() {
        let mem = page(1);
        let dsdt = &mem.0[DSDT_OFF as usize + HEADER_LEN..];
        let s5 = acpi::find_s5(dsdt).unwrap();
        assert_eq!((s5.slp_typ_a, s5.slp_typ_b), (5, 5));
    }

    #[test]
    fn cpu_counts_outside_the_table_are_refused() {
        assert!(build(&pc(0), 0xE0000).is_err());
        assert!(build(&pc(MAX_ACPI_CPUS + 1), 0xE0000).is_err());
        assert!(build(&pc(MAX_ACPI_CPUS), 0xE0000).is_ok());
    }
}
