//! What this CPU's SVM offers and whether Ferrovisor can use it: CPUID
//! 8000_000AH decoded into [`SvmCaps`], the capability report lines, and
//! [`assess`], the verdict with [`Unavailable`], the one-line reason given
//! to the user when SVM cannot be used. Pure: the caller executes CPUID
//! and reads VM_CR.
//!
//! Sources: APM Vol. 2, 15.4 "Enabling SVM" (CPUID 8000_0001H:ECX\[2\],
//! VM_CR.SVMDIS), 15.30.1 "VM_CR MSR", and APM Vol. 3, appendix E,
//! "CPUID Fn8000_000A" (revision, ASIDs, feature bits).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::fmt;

/// VM_CR (MSR C001_0114H), bit 3: LOCK. While set, writes to LOCK and
/// SVMDIS are ignored; only the firmware's key (SVM_KEY) clears it.
pub const VM_CR_LOCK: u64 = 1 << 3;
/// VM_CR bit 4: SVMDIS. While set, EFER.SVME cannot be set.
pub const VM_CR_SVMDIS: u64 = 1 << 4;
/// The VM_CR MSR's index.
pub const MSR_VM_CR: u32 = 0xC001_0114;

/// The fewest ASIDs Ferrovisor runs with: ASID 0 is the host's (VMRUN
/// refuses it for a guest), so one guest needs a second.
pub const MIN_ASIDS: u32 = 2;

/// The SVM feature bits of CPUID 8000_000AH:EDX. Bits this type does not
/// name are kept ([`Self::from_bits_retain`]) and ignored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SvmFeatures(u32);

impl SvmFeatures {
    /// Bit 0, NP: nested paging.
    pub const NESTED_PAGING: Self = Self(1 << 0);
    /// Bit 1, LbrVirt: LBR virtualization.
    pub const LBR_VIRT: Self = Self(1 << 1);
    /// Bit 2, SVML: SVM lock (VM_CR.LOCK can be unlocked with a key).
    pub const SVM_LOCK: Self = Self(1 << 2);
    /// Bit 3, NRIPS: #VMEXIT saves the next RIP in the VMCB (NRIP).
    pub const NRIP_SAVE: Self = Self(1 << 3);
    /// Bit 4, TscRateMsr: the TSC ratio MSR.
    pub const TSC_RATE_MSR: Self = Self(1 << 4);
    /// Bit 5, VmcbClean: the VMCB clean bits.
    pub const VMCB_CLEAN: Self = Self(1 << 5);
    /// Bit 6, FlushByAsid: TLB_CONTROL can flush one ASID's entries.
    pub const FLUSH_BY_ASID: Self = Self(1 << 6);
    /// Bit 7, DecodeAssists: instruction bytes and operands in the VMCB.
    pub const DECODE_ASSISTS: Self = Self(1 << 7);
    /// Bit 10, PauseFilter: the PAUSE intercept filter count.
    pub const PAUSE_FILTER: Self = Self(1 << 10);
    /// Bit 12, PauseFilterThreshold: the PAUSE filter cycle threshold.
    pub const PAUSE_FILTER_THRESHOLD: Self = Self(1 << 12);
    /// Bit 13, AVIC: the advanced virtual interrupt controller.
    pub const AVIC: Self = Self(1 << 13);
    /// Bit 15, VMSAVEvirt: virtualized VMSAVE and VMLOAD.
    pub const VMSAVE_VIRT: Self = Self(1 << 15);
    /// Bit 16, VGIF: the virtual global interrupt flag.
    pub const VGIF: Self = Self(1 << 16);

    /// The features with raw EDX value `bits`, unnamed bits kept.
    pub const fn from_bits_retain(bits: u32) -> Self {
        Self(bits)
    }

    /// The raw EDX value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The features of both.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Debug for SvmFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SvmFeatures({:#x})", self.0)
    }
}

/// What CPUID 8000_000AH says about this CPU's SVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvmCaps {
    /// EAX\[7:0\]: the SVM revision.
    pub revision: u8,
    /// EBX: the number of ASIDs, ASID 0 (the host's) included.
    pub asids: u32,
    /// EDX: the optional features.
    pub features: SvmFeatures,
}

impl SvmCaps {
    /// Decodes CPUID 8000_000AH as `[eax, ebx, ecx, edx]`.
    pub const fn decode(leaf_8000000a: [u32; 4]) -> Self {
        let [eax, ebx, _, edx] = leaf_8000000a;
        Self {
            revision: (eax & 0xFF) as u8,
            asids: ebx,
            features: SvmFeatures(edx),
        }
    }

    /// Whether every feature of `f` is offered.
    pub const fn has(&self, f: SvmFeatures) -> bool {
        self.features.contains(f)
    }

    /// Nested paging (required).
    pub const fn nested_paging(&self) -> bool {
        self.has(SvmFeatures::NESTED_PAGING)
    }

    /// #VMEXIT saves the next RIP: without it the exit handlers take the
    /// instruction length from their own decoding.
    pub const fn nrip_save(&self) -> bool {
        self.has(SvmFeatures::NRIP_SAVE)
    }

    /// VMCB clean bits: without them every VMRUN reloads the whole VMCB
    /// (clean bits must be written as 0).
    pub const fn vmcb_clean(&self) -> bool {
        self.has(SvmFeatures::VMCB_CLEAN)
    }

    /// Flush by ASID: without it a guest's TLB flush flushes every ASID.
    pub const fn flush_by_asid(&self) -> bool {
        self.has(SvmFeatures::FLUSH_BY_ASID)
    }

    /// Decode assists.
    pub const fn decode_assists(&self) -> bool {
        self.has(SvmFeatures::DECODE_ASSISTS)
    }

    /// The PAUSE filter: without it a spinning vCPU spins out its slice.
    pub const fn pause_filter(&self) -> bool {
        self.has(SvmFeatures::PAUSE_FILTER)
    }

    /// The virtual global interrupt flag.
    pub const fn vgif(&self) -> bool {
        self.has(SvmFeatures::VGIF)
    }

    /// The capability report, one [`ReportLine`] per line, in the order of
    /// [`ReportLineKind::ALL`].
    pub fn report_lines(&self) -> impl Iterator<Item = ReportLine> {
        let caps = *self;
        ReportLineKind::ALL
            .into_iter()
            .map(move |kind| ReportLine { caps, kind })
    }
}

/// Which line of the capability report a [`ReportLine`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportLineKind {
    /// `svm: revision 1, 16 ASIDs, nested paging: yes, NRIP save: no, ...`:
    /// what Ferrovisor needs or uses.
    Basic,
    /// `svm: also offered: LBR virtualization, VGIF` (or `none`): the
    /// features it only reports.
    Other,
}

impl ReportLineKind {
    /// Every line, in report order.
    pub const ALL: [Self; 2] = [Self::Basic, Self::Other];
}

/// One line of the capability report; its `Display` is the line, without
/// a trailing newline. Callers prefix it (the kernel adds `cpu<k>: `).
#[derive(Clone, Copy, Debug)]
pub struct ReportLine {
    caps: SvmCaps,
    kind: ReportLineKind,
}

impl ReportLine {
    /// Which line this is.
    pub fn kind(&self) -> ReportLineKind {
        self.kind
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The features only reported, with their names.
const OTHER_FEATURES: [(SvmFeatures, &str); 8] = [
    (SvmFeatures::LBR_VIRT, "LBR virtualization"),
    (SvmFeatures::SVM_LOCK, "SVM lock"),
    (SvmFeatures::TSC_RATE_MSR, "TSC ratio MSR"),
    (
        SvmFeatures::PAUSE_FILTER_THRESHOLD,
        "PAUSE filter threshold",
    ),
    (SvmFeatures::AVIC, "AVIC"),
    (SvmFeatures::VMSAVE_VIRT, "VMSAVE/VMLOAD virtualization"),
    (SvmFeatures::VGIF, "VGIF"),
    (SvmFeatures::DECODE_ASSISTS, "decode assists"),
];

impl fmt::Display for ReportLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.caps;
        match self.kind {
            ReportLineKind::Basic => write!(
                f,
                "svm: revision {}, {} ASIDs, nested paging: {}, NRIP save: {}, \
                 VMCB clean bits: {}, flush by ASID: {}, PAUSE filter: {}",
                c.revision,
                c.asids,
                yes_no(c.nested_paging()),
                yes_no(c.nrip_save()),
                yes_no(c.vmcb_clean()),
                yes_no(c.flush_by_asid()),
                yes_no(c.pause_filter()),
            ),
            ReportLineKind::Other => {
                f.write_str("svm: also offered:")?;
                let mut any = false;
                for (feature, name) in OTHER_FEATURES {
                    if c.has(feature) {
                        f.write_str(if any { ", " } else { " " })?;
                        f.write_str(name)?;
                        any = true;
                    }
                }
                if !any {
                    f.write_str(" none")?;
                }
                Ok(())
            }
        }
    }
}

/// Why this CPU cannot run Ferrovisor's guests under SVM. `Display` is one
/// line saying what is wrong and what to do; the kernel prints it as
/// `cpu<k>: AMD-V unavailable: <line>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// CPUID 8000_0001H:ECX\[2\] (SVM) = 0.
    NoSvm {
        /// The CPUID vendor string.
        vendor: CpuVendor,
    },
    /// VM_CR.SVMDIS is set: the firmware turned SVM off.
    ///
    /// With `locked` false, VM_CR.LOCK is clear and the kernel may clear
    /// SVMDIS itself (WRMSR to VM_CR) and assess again
    /// ([`Unavailable::kernel_may_enable`]); with `locked` true only the
    /// firmware settings can turn SVM back on.
    FirmwareDisabled {
        /// VM_CR.LOCK.
        locked: bool,
    },
    /// CPUID reports SVM but the caller did not read VM_CR (a bug in the
    /// caller: the MSR exists whenever SVM does).
    VmCrNotRead,
    /// CPUID reports SVM but the caller did not read leaf 8000_000AH (a bug
    /// in the caller, as above).
    LeafNotRead,
    /// SVM without nested paging (CPUID 8000_000AH:EDX\[0\] = 0).
    NoNestedPaging,
    /// Fewer than [`MIN_ASIDS`] ASIDs (CPUID 8000_000AH:EBX).
    TooFewAsids {
        /// The number the CPU reports.
        asids: u32,
    },
}

impl Unavailable {
    /// Whether the kernel can fix this itself: SVMDIS set in a VM_CR that
    /// is not locked, which a WRMSR clearing bit 4 turns back on.
    pub const fn kernel_may_enable(&self) -> bool {
        matches!(self, Self::FirmwareDisabled { locked: false })
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSvm { vendor } => write!(
                f,
                "this CPU ({vendor}) does not offer SVM (CPUID 8000_0001H:ECX[2] = 0); enable \
                 SVM (AMD-V) in the firmware settings, under QEMU use a CPU model with svm and \
                 npt (cargo xtask run --engine qemu) or KVM with nested SVM (kvm_amd nested=1)"
            ),
            Self::FirmwareDisabled { locked: true } => f.write_str(
                "SVM disabled by firmware (VM_CR.SVMDIS set, locked); enable SVM (AMD-V) in the \
                 firmware settings and boot again",
            ),
            Self::FirmwareDisabled { locked: false } => f.write_str(
                "SVM disabled by firmware (VM_CR.SVMDIS set, not locked); Ferrovisor could not \
                 clear it, enable SVM (AMD-V) in the firmware settings and boot again",
            ),
            Self::VmCrNotRead => f.write_str(
                "CPUID reports SVM but VM_CR (MSR 0xc0010114) was not read; this is a bug in \
                 Ferrovisor's CPU bring-up, please report it",
            ),
            Self::LeafNotRead => f.write_str(
                "CPUID reports SVM but leaf 8000_000AH was not read; this is a bug in \
                 Ferrovisor's CPU bring-up, please report it",
            ),
            Self::NoNestedPaging => f.write_str(
                "this CPU's SVM lacks nested paging (CPUID 8000_000AH:EDX[0] = 0), which \
                 Ferrovisor needs; run on a newer AMD CPU, or in a virtual machine enable nested \
                 SVM with NPT (KVM: kvm_amd nested=1 npt=1; QEMU: -cpu ...,+svm,+npt)",
            ),
            Self::TooFewAsids { asids } => write!(
                f,
                "this CPU's SVM offers {asids} ASIDs (CPUID 8000_000AH:EBX), and Ferrovisor \
                 needs at least {MIN_ASIDS} (ASID 0 is the host's); in a virtual machine give \
                 the virtual CPU more ASIDs"
            ),
        }
    }
}

/// Decides whether SVM can be used. `vendor` is the CPUID vendor string,
/// `has_svm` CPUID 8000_0001H:ECX\[2\]; `vm_cr` the VM_CR MSR and
/// `leaf_8000000a` CPUID 8000_000AH (`[eax, ebx, ecx, edx]`), both read
/// only when `has_svm` (they may not exist otherwise).
///
/// The checks run in that order: SVM at all, VM_CR.SVMDIS (see
/// [`Unavailable::FirmwareDisabled`]: when it is not locked the kernel may
/// clear it and call this again with the new value), nested paging, at
/// least [`MIN_ASIDS`] ASIDs. NRIP save, decode assists, VMCB clean bits,
/// flush by ASID and the PAUSE filter are optional: used where offered.
pub fn assess(
    vendor: &str,
    has_svm: bool,
    vm_cr: Option<u64>,
    leaf_8000000a: Option<[u32; 4]>,
) -> Result<SvmCaps, Unavailable> {
    if !has_svm {
        return Err(Unavailable::NoSvm {
            vendor: CpuVendor::new(vendor),
        });
    }
    let vm_cr = vm_cr.ok_or(Unavailable::VmCrNotRead)?;
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Err(Unavailable::FirmwareDisabled {
            locked: vm_cr & VM_CR_LOCK != 0,
        });
    }
    let caps = SvmCaps::decode(leaf_8000000a.ok_or(Unavailable::LeafNotRead)?);
    if !caps.nested_paging() {
        return Err(Unavailable::NoNestedPaging);
    }
    if caps.asids < MIN_ASIDS {
        return Err(Unavailable::TooFewAsids { asids: caps.asids });
    }
    Ok(caps)
}

/// A CPUID vendor string kept inline (12 bytes, e.g. `AuthenticAMD`), so
/// [`Unavailable`] needs neither a lifetime nor an allocator. Longer input
/// is cut at a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuVendor {
    bytes: [u8; 12],
    len: u8,
}

impl CpuVendor {
    /// Keeps up to 12 bytes of `vendor`.
    pub fn new(vendor: &str) -> Self {
        let mut len = vendor.len().min(12);
        while !vendor.is_char_boundary(len) {
            len = len.saturating_sub(1);
        }
        let mut bytes = [0; 12];
        if let (Some(to), Some(from)) = (bytes.get_mut(..len), vendor.as_bytes().get(..len)) {
            to.copy_from_slice(from);
        }
        Self {
            bytes,
            len: u8::try_from(len).unwrap_or(0),
        }
    }

    /// The vendor string.
    pub fn as_str(&self) -> &str {
        // Built from a `&str` cut at a character boundary, so this is
        // valid UTF-8; the fallbacks only keep this free of panics.
        core::str::from_utf8(self.bytes.get(..usize::from(self.len)).unwrap_or(&[])).unwrap_or("?")
    }
}

impl fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// QEMU 7.2 TCG with `-cpu max` or `EPYC`: revision 1, 16 ASIDs, NPT,
    /// VGIF and SVME_ADDR_CHK (bit 28, unnamed here) only.
    const QEMU_TCG: [u32; 4] = [1, 16, 0, (1 << 0) | (1 << 16) | (1 << 28)];
    /// A server part as recent EPYCs report it: revision 1, 32768 ASIDs,
    /// every feature named here.
    const EPYC: [u32; 4] = [1, 0x8000, 0, 0x1_B4FF];

    fn lines(caps: &SvmCaps) -> Vec<String> {
        caps.report_lines().map(|l| l.to_string()).collect()
    }

    #[test]
    fn decode_reads_revision_asids_and_feature_bits() {
        let c = SvmCaps::decode(QEMU_TCG);
        assert_eq!(c.revision, 1);
        assert_eq!(c.asids, 16);
        assert!(c.nested_paging() && c.vgif());
        assert!(!c.nrip_save() && !c.vmcb_clean() && !c.flush_by_asid());
        assert!(!c.decode_assists() && !c.pause_filter());
        // Only EAX[7:0] is the revision.
        assert_eq!(SvmCaps::decode([0xABCD_0102, 0, 0, 0]).revision, 2);
        // Each named bit at its place.
        for (bit, feature) in [
            (0, SvmFeatures::NESTED_PAGING),
            (1, SvmFeatures::LBR_VIRT),
            (2, SvmFeatures::SVM_LOCK),
            (3, SvmFeatures::NRIP_SAVE),
            (4, SvmFeatures::TSC_RATE_MSR),
            (5, SvmFeatures::VMCB_CLEAN),
            (6, SvmFeatures::FLUSH_BY_ASID),
            (7, SvmFeatures::DECODE_ASSISTS),
            (10, SvmFeatures::PAUSE_FILTER),
            (12, SvmFeatures::PAUSE_FILTER_THRESHOLD),
            (13, SvmFeatures::AVIC),
            (15, SvmFeatures::VMSAVE_VIRT),
            (16, SvmFeatures::VGIF),
        ] {
            let c = SvmCaps::decode([1, 2, 0, 1 << bit]);
            assert!(c.has(feature), "bit {bit}");
            assert_eq!(c.features.bits(), feature.bits());
        }
    }

    #[test]
    fn report_lines_under_qemu_tcg_and_on_epyc() {
        assert_eq!(
            lines(&SvmCaps::decode(QEMU_TCG)),
            [
                "svm: revision 1, 16 ASIDs, nested paging: yes, NRIP save: no, \
                 VMCB clean bits: no, flush by ASID: no, PAUSE filter: no",
                "svm: also offered: VGIF",
            ]
        );
        let epyc = SvmCaps::decode(EPYC);
        assert_eq!(
            lines(&epyc),
            [
                "svm: revision 1, 32768 ASIDs, nested paging: yes, NRIP save: yes, \
                 VMCB clean bits: yes, flush by ASID: yes, PAUSE filter: yes",
                "svm: also offered: LBR virtualization, SVM lock, TSC ratio MSR, \
                 PAUSE filter threshold, AVIC, VMSAVE/VMLOAD virtualization, VGIF, \
                 decode assists",
            ]
        );
        assert_eq!(
            lines(&SvmCaps::decode([1, 2, 0, 1]))[1],
            "svm: also offered: none"
        );
        let kinds: Vec<_> = epyc.report_lines().map(|l| l.kind()).collect();
        assert_eq!(kinds, ReportLineKind::ALL);
    }

    #[test]
    fn usable_under_qemu_tcg_and_on_epyc() {
        assert_eq!(
            assess("AuthenticAMD", true, Some(0), Some(QEMU_TCG)),
            Ok(SvmCaps::decode(QEMU_TCG))
        );
        // LOCK alone (SVM on, settings locked) is fine; so is Hygon.
        assert_eq!(
            assess("HygonGenuine", true, Some(VM_CR_LOCK), Some(EPYC)),
            Ok(SvmCaps::decode(EPYC))
        );
    }

    #[test]
    fn no_svm_names_the_vendor_and_the_fixes() {
        // QEMU TCG's qemu64 without svm; VM_CR and the leaf are ignored.
        let err = assess("AuthenticAMD", false, Some(VM_CR_SVMDIS), Some(QEMU_TCG)).unwrap_err();
        assert_eq!(
            err,
            Unavailable::NoSvm {
                vendor: CpuVendor::new("AuthenticAMD")
            }
        );
        assert_eq!(
            err.to_string(),
            "this CPU (AuthenticAMD) does not offer SVM (CPUID 8000_0001H:ECX[2] = 0); enable \
             SVM (AMD-V) in the firmware settings, under QEMU use a CPU model with svm and \
             npt (cargo xtask run --engine qemu) or KVM with nested SVM (kvm_amd nested=1)"
        );
        assert!(!err.kernel_may_enable());
    }

    #[test]
    fn firmware_disabled_says_whether_it_is_locked() {
        let locked = assess(
            "AuthenticAMD",
            true,
            Some(VM_CR_SVMDIS | VM_CR_LOCK),
            Some(EPYC),
        )
        .unwrap_err();
        assert_eq!(locked, Unavailable::FirmwareDisabled { locked: true });
        assert!(locked
            .to_string()
            .starts_with("SVM disabled by firmware (VM_CR.SVMDIS set, locked); "));
        assert!(!locked.kernel_may_enable());

        let unlocked = assess("AuthenticAMD", true, Some(VM_CR_SVMDIS), Some(EPYC)).unwrap_err();
        assert_eq!(unlocked, Unavailable::FirmwareDisabled { locked: false });
        assert!(unlocked
            .to_string()
            .starts_with("SVM disabled by firmware (VM_CR.SVMDIS set, not locked); "));
        assert!(unlocked.kernel_may_enable());
        // After the kernel clears SVMDIS, the same CPU passes.
        assert!(assess("AuthenticAMD", true, Some(0), Some(EPYC)).is_ok());
        // SVMDIS is checked before the leaf is looked at.
        assert_eq!(
            assess("AuthenticAMD", true, Some(VM_CR_SVMDIS), None),
            Err(Unavailable::FirmwareDisabled { locked: false })
        );
    }

    #[test]
    fn unread_values_are_reported_not_guessed() {
        let err = assess("AuthenticAMD", true, None, Some(EPYC)).unwrap_err();
        assert_eq!(err, Unavailable::VmCrNotRead);
        assert!(err
            .to_string()
            .contains("VM_CR (MSR 0xc0010114) was not read"));
        let err = assess("AuthenticAMD", true, Some(0), None).unwrap_err();
        assert_eq!(err, Unavailable::LeafNotRead);
        assert!(err.to_string().contains("leaf 8000_000AH was not read"));
    }

    #[test]
    fn nested_paging_is_required() {
        // SVM with everything but NP.
        let err = assess(
            "AuthenticAMD",
            true,
            Some(0),
            Some([1, 64, 0, EPYC[3] & !1]),
        )
        .unwrap_err();
        assert_eq!(err, Unavailable::NoNestedPaging);
        assert!(err
            .to_string()
            .starts_with("this CPU's SVM lacks nested paging (CPUID 8000_000AH:EDX[0] = 0), "));
    }

    #[test]
    fn at_least_two_asids() {
        for asids in [0, 1] {
            let err = assess("AuthenticAMD", true, Some(0), Some([1, asids, 0, 1])).unwrap_err();
            assert_eq!(err, Unavailable::TooFewAsids { asids });
            assert!(
                err.to_string()
                    .starts_with(&format!("this CPU's SVM offers {asids} ASIDs")),
                "{err}"
            );
        }
        assert!(assess("AuthenticAMD", true, Some(0), Some([1, 2, 0, 1])).is_ok());
    }

    #[test]
    fn every_reason_is_one_line() {
        let reasons = [
            Unavailable::NoSvm {
                vendor: CpuVendor::new("GenuineIntel"),
            },
            Unavailable::FirmwareDisabled { locked: true },
            Unavailable::FirmwareDisabled { locked: false },
            Unavailable::VmCrNotRead,
            Unavailable::LeafNotRead,
            Unavailable::NoNestedPaging,
            Unavailable::TooFewAsids { asids: 1 },
        ];
        for r in reasons {
            let s = r.to_string();
            assert!(!s.contains('\n') && !s.is_empty(), "{s}");
        }
    }

    #[test]
    fn vendor_is_kept_inline_and_cut_safely() {
        assert_eq!(CpuVendor::new("AuthenticAMD").as_str(), "AuthenticAMD");
        assert_eq!(CpuVendor::new("").as_str(), "");
        assert_eq!(CpuVendor::new("ABCDEFGHIJKLMNOP").as_str(), "ABCDEFGHIJKL");
        assert_eq!(CpuVendor::new("ABCDEFGHIJKé").as_str(), "ABCDEFGHIJK");
        assert_eq!(
            format!("{:?}", CpuVendor::new("AuthenticAMD")),
            "\"AuthenticAMD\""
        );
    }
}
