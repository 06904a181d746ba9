//! The VMCS as types: every field's encoding (in the private `fields`
//! module, the one table of them), its width and access decoded from that
//! encoding, and [`VmcsAccess`], the typed `read`/`write` over the two raw
//! entry points VMREAD and VMWRITE.
//!
//! Fields come in groups by width and access (`Guest64`, `ReadOnly32`, ...).
//! A group's value type follows its width (`u16`, `u32`, `u64`; natural
//! width is `u64` on this 64-bit host), and only groups whose fields
//! software may write implement [`WritableField`], so writing a read-only
//! field does not compile:
//!
//! ```
//! use vmx::vmcs::{Guest64, GuestNatural, ReadOnly32, VmcsAccess};
//! use vmx::error::VmFail;
//!
//! fn enter_long_mode(vmcs: &mut impl VmcsAccess, efer: u64) -> Result<u32, VmFail> {
//!     vmcs.write(Guest64::Efer, efer)?;
//!     vmcs.write(GuestNatural::Rip, 0x10_0000)?;
//!     vmcs.read(ReadOnly32::ExitReason)
//! }
//! ```
//!
//! ```compile_fail,E0277
//! use vmx::vmcs::{ReadOnly32, VmcsAccess};
//!
//! fn forge_exit(vmcs: &mut impl VmcsAccess) {
//!     let _ = vmcs.write(ReadOnly32::ExitReason, 0);
//! }
//! ```
//!
//! The encoding format is SDM Vol. 3C, 25.11.2 "VMREAD, VMWRITE, and
//! Encodings of VMCS Fields" (table "Structure of VMCS Component
//! Encoding"); the encodings are SDM Vol. 3D, Appendix B "Field Encoding in
//! VMCS". Section numbers follow the editions whose VMCS chapter is Vol. 3C,
//! Chapter 25 (older editions: Chapter 24).

mod fields;

use core::fmt;

pub use fields::{
    Control16, Control32, Control64, ControlNatural, Guest16, Guest32, Guest64, GuestNatural,
    Host16, Host32, Host64, HostNatural, ReadOnly32, ReadOnly64, ReadOnlyNatural,
};

use crate::error::{InstructionError, VmFail};
use crate::exit::ExitInfo;

/// The width of a VMCS field, bits 14:13 of its encoding (SDM Vol. 3C,
/// 25.11.2, table "Structure of VMCS Component Encoding").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldWidth {
    /// 0: 16 bits.
    Bits16,
    /// 1: 64 bits (bit 0 of the encoding selects the full field or its high
    /// 32 bits; this crate only uses the full field).
    Bits64,
    /// 2: 32 bits.
    Bits32,
    /// 3: natural width, 64 bits on a processor that supports Intel 64.
    Natural,
}

impl FieldWidth {
    /// The value of bits 14:13 of an encoding of this width.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Bits16 => 0,
            Self::Bits64 => 1,
            Self::Bits32 => 2,
            Self::Natural => 3,
        }
    }
}

/// The type of a VMCS field, bits 11:10 of its encoding (same table): what
/// part of the VMCS it belongs to, which decides whether software writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// 0: a control field (VM-execution, VM-exit or VM-entry control).
    Control,
    /// 1: read-only data, the VM-exit information fields and the
    /// VM-instruction error field. VMWRITE fails on them unless
    /// IA32_VMX_MISC bit 29 says otherwise; this crate never writes them.
    ReadOnly,
    /// 2: guest-state area.
    Guest,
    /// 3: host-state area.
    Host,
}

impl FieldType {
    /// The value of bits 11:10 of an encoding of this type.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Control => 0,
            Self::ReadOnly => 1,
            Self::Guest => 2,
            Self::Host => 3,
        }
    }
}

/// The encoding of one VMCS field, the operand VMREAD and VMWRITE take.
///
/// Only the field groups ([`Guest64`] and its siblings) make these (through
/// [`Field::encoding`]), so no bare number reaches
/// [`crate::instructions::vmread`] or [`VmcsAccess`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldEncoding(u32);

impl FieldEncoding {
    /// Only the field tables call this.
    const fn new(bits: u32) -> Self {
        Self(bits)
    }

    /// The 32-bit encoding, as VMREAD and VMWRITE take it in a register.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The field's width, from bits 14:13.
    pub const fn width(self) -> FieldWidth {
        match (self.0 >> 13) & 0b11 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }

    /// The field's type, from bits 11:10.
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 0b11 {
            0 => FieldType::Control,
            1 => FieldType::ReadOnly,
            2 => FieldType::Guest,
            _ => FieldType::Host,
        }
    }

    /// The field's index, bits 9:1.
    pub const fn index(self) -> u16 {
        ((self.0 >> 1) & 0x1FF) as u16
    }

    /// The group and variant name, e.g. `("Guest64", "Efer")`.
    pub fn name(self) -> (&'static str, &'static str) {
        fields::name_of(self).unwrap_or(("unknown", "field"))
    }
}

impl fmt::Display for FieldEncoding {
    /// `Guest64::Efer (0x2806)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (group, variant) = self.name();
        write!(f, "{group}::{variant} ({:#06x})", self.0)
    }
}

mod sealed {
    /// Keeps the field traits to this crate's tables.
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// The value type of a field of one width.
pub trait FieldValue: Copy + sealed::Sealed {
    /// The value from what VMREAD returns. VMREAD zero-extends a narrower
    /// field into the 64-bit register, so the dropped bits are 0.
    fn from_vmread(raw: u64) -> Self;
    /// The 64-bit operand VMWRITE takes (zero-extended).
    fn to_vmwrite(self) -> u64;
}

impl FieldValue for u16 {
    fn from_vmread(raw: u64) -> Self {
        raw as u16
    }
    fn to_vmwrite(self) -> u64 {
        u64::from(self)
    }
}

impl FieldValue for u32 {
    fn from_vmread(raw: u64) -> Self {
        raw as u32
    }
    fn to_vmwrite(self) -> u64 {
        u64::from(self)
    }
}

impl FieldValue for u64 {
    fn from_vmread(raw: u64) -> Self {
        raw
    }
    fn to_vmwrite(self) -> u64 {
        self
    }
}

/// A VMCS field of one of the groups ([`Guest64`] and its siblings); sealed,
/// so no other type can pose as one.
pub trait Field: Copy + sealed::Sealed {
    /// `u16`, `u32` or `u64`, by the group's width.
    type Value: FieldValue;
    /// The field's encoding.
    fn encoding(self) -> FieldEncoding;
}

/// A field software may write: control, guest-state and host-state fields.
/// The read-only groups do not implement it.
pub trait WritableField: Field {}

/// Access to one VMCS: the raw VMREAD and VMWRITE (the only two methods to
/// implement) and the typed reads and writes built on them.
///
/// [`crate::instructions::HardwareVmcs`] implements it for the current VMCS
/// of the calling CPU; host tests implement it over plain memory.
pub trait VmcsAccess {
    /// VMREAD of `field`.
    fn vmread(&self, field: FieldEncoding) -> Result<u64, VmFail>;

    /// VMWRITE of `value` to `field`.
    fn vmwrite(&mut self, field: FieldEncoding, value: u64) -> Result<(), VmFail>;

    /// Reads `field` as its width's value type. Always inlined: the exit
    /// path makes a dozen of these, and as calls they cost more than the
    /// VMREADs (a Bochs trace of a VMCALL exit: about 135 of its 700
    /// instructions when the compiler stopped inlining them).
    #[inline(always)]
    fn read<F: Field>(&self, field: F) -> Result<F::Value, VmFail> {
        self.vmread(field.encoding()).map(F::Value::from_vmread)
    }

    /// Writes `value` to `field`; read-only fields do not compile.
    #[inline(always)]
    fn write<F: WritableField>(&mut self, field: F, value: F::Value) -> Result<(), VmFail> {
        self.vmwrite(field.encoding(), value.to_vmwrite())
    }

    /// The exit reason field decoded (valid after a VM exit or a VM-entry
    /// failure of the kind that looks like one, SDM Vol. 3C, 27.8).
    fn exit_info(&self) -> Result<ExitInfo, VmFail> {
        self.read(ReadOnly32::ExitReason)
            .map(ExitInfo::from_exit_reason)
    }

    /// The VM-instruction error field decoded (meaningful after VMfailValid).
    fn instruction_error(&self) -> Result<InstructionError, VmFail> {
        self.read(ReadOnly32::VmInstructionError)
            .map(InstructionError::from_number)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::exit::ExitReason;

    /// Every encoding of every group, with the group's declared width and
    /// type.
    fn every_field() -> Vec<(FieldEncoding, FieldWidth, FieldType, &'static str)> {
        fn group<F: Field>(
            all: &'static [F],
            width: FieldWidth,
            ty: FieldType,
            name: &'static str,
        ) -> impl Iterator<Item = (FieldEncoding, FieldWidth, FieldType, &'static str)> {
            all.iter().map(move |f| (f.encoding(), width, ty, name))
        }
        let mut v = Vec::new();
        v.extend(group(
            Control16::ALL,
            Control16::WIDTH,
            Control16::TYPE,
            "Control16",
        ));
        v.extend(group(
            Guest16::ALL,
            Guest16::WIDTH,
            Guest16::TYPE,
            "Guest16",
        ));
        v.extend(group(Host16::ALL, Host16::WIDTH, Host16::TYPE, "Host16"));
        v.extend(group(
            Control64::ALL,
            Control64::WIDTH,
            Control64::TYPE,
            "Control64",
        ));
        v.extend(group(
            ReadOnly64::ALL,
            ReadOnly64::WIDTH,
            ReadOnly64::TYPE,
            "ReadOnly64",
        ));
        v.extend(group(
            Guest64::ALL,
            Guest64::WIDTH,
            Guest64::TYPE,
            "Guest64",
        ));
        v.extend(group(Host64::ALL, Host64::WIDTH, Host64::TYPE, "Host64"));
        v.extend(group(
            Control32::ALL,
            Control32::WIDTH,
            Control32::TYPE,
            "Control32",
        ));
        v.extend(group(
            ReadOnly32::ALL,
            ReadOnly32::WIDTH,
            ReadOnly32::TYPE,
            "ReadOnly32",
        ));
        v.extend(group(
            Guest32::ALL,
            Guest32::WIDTH,
            Guest32::TYPE,
            "Guest32",
        ));
        v.extend(group(Host32::ALL, Host32::WIDTH, Host32::TYPE, "Host32"));
        v.extend(group(
            ControlNatural::ALL,
            ControlNatural::WIDTH,
            ControlNatural::TYPE,
            "ControlNatural",
        ));
        v.extend(group(
            ReadOnlyNatural::ALL,
            ReadOnlyNatural::WIDTH,
            ReadOnlyNatural::TYPE,
            "ReadOnlyNatural",
        ));
        v.extend(group(
            GuestNatural::ALL,
            GuestNatural::WIDTH,
            GuestNatural::TYPE,
            "GuestNatural",
        ));
        v.extend(group(
            HostNatural::ALL,
            HostNatural::WIDTH,
            HostNatural::TYPE,
            "HostNatural",
        ));
        v
    }

    /// Each field's width and type bits match the group it is in, the
    /// reserved bits are 0, and the encoding is the "full" one (table
    /// "Structure of VMCS Component Encoding").
    #[test]
    fn encodings_agree_with_their_group() {
        let all = every_field();
        // All 15 groups are in `every_field`: 166 fields in all.
        assert_eq!(all.len(), 166);
        for (enc, width, ty, group) in all {
            assert_eq!(enc.width(), width, "{group}: {enc}");
            assert_eq!(enc.field_type(), ty, "{group}: {enc}");
            assert_eq!((enc.bits() >> 13) & 3, width.bits(), "{group}: {enc}");
            assert_eq!((enc.bits() >> 10) & 3, ty.bits(), "{group}: {enc}");
            assert_eq!(enc.bits() & 1, 0, "{group}: {enc} is not a full access");
            assert_eq!(enc.bits() & !0x6FFF, 0, "{group}: {enc} sets reserved bits");
            assert_eq!(enc.name().0, group);
        }
    }

    #[test]
    fn no_encoding_repeats() {
        let mut encodings: Vec<u32> = every_field().iter().map(|f| f.0.bits()).collect();
        let n = encodings.len();
        encodings.sort_unstable();
        encodings.dedup();
        assert_eq!(encodings.len(), n);
    }

    /// Spot checks against SDM Vol. 3D, Appendix B.
    #[test]
    fn known_encodings() {
        assert_eq!(Control16::Vpid.encoding().bits(), 0x0000);
        assert_eq!(Guest16::CsSelector.encoding().bits(), 0x0802);
        assert_eq!(Host16::TrSelector.encoding().bits(), 0x0C0C);
        assert_eq!(Control64::IoBitmapA.encoding().bits(), 0x2000);
        assert_eq!(Control64::MsrBitmaps.encoding().bits(), 0x2004);
        assert_eq!(Control64::Eptp.encoding().bits(), 0x201A);
        assert_eq!(ReadOnly64::GuestPhysicalAddress.encoding().bits(), 0x2400);
        assert_eq!(Guest64::VmcsLinkPointer.encoding().bits(), 0x2800);
        assert_eq!(Guest64::Efer.encoding().bits(), 0x2806);
        assert_eq!(Host64::Efer.encoding().bits(), 0x2C02);
        assert_eq!(Control32::PinBasedControls.encoding().bits(), 0x4000);
        assert_eq!(
            Control32::SecondaryProcBasedControls.encoding().bits(),
            0x401E
        );
        assert_eq!(ReadOnly32::VmInstructionError.encoding().bits(), 0x4400);
        assert_eq!(ReadOnly32::ExitReason.encoding().bits(), 0x4402);
        assert_eq!(Guest32::PreemptionTimerValue.encoding().bits(), 0x482E);
        assert_eq!(Host32::SysenterCs.encoding().bits(), 0x4C00);
        assert_eq!(ControlNatural::Cr0ReadShadow.encoding().bits(), 0x6004);
        assert_eq!(ReadOnlyNatural::ExitQualification.encoding().bits(), 0x6400);
        assert_eq!(GuestNatural::Rip.encoding().bits(), 0x681E);
        assert_eq!(HostNatural::Rip.encoding().bits(), 0x6C16);
    }

    #[test]
    fn display_names_the_field() {
        assert_eq!(
            Guest64::Efer.encoding().to_string(),
            "Guest64::Efer (0x2806)"
        );
        assert_eq!(
            Control16::Vpid.encoding().to_string(),
            "Control16::Vpid (0x0000)"
        );
        assert_eq!(
            ReadOnlyNatural::ExitQualification.encoding().to_string(),
            "ReadOnlyNatural::ExitQualification (0x6400)"
        );
        assert_eq!(GuestNatural::Rflags.encoding().index(), 0x10);
    }

    /// A VMCS in a hash map that fails the way the hardware does: VMREAD or
    /// VMWRITE of a field this CPU lacks gives error 12, VMWRITE of a
    /// read-only field error 13, and without a current VMCS every access is
    /// VMfailInvalid.
    struct FakeVmcs {
        current: bool,
        unsupported: Vec<FieldEncoding>,
        values: HashMap<u32, u64>,
    }

    impl FakeVmcs {
        fn new() -> Self {
            Self {
                current: true,
                unsupported: vec![Control64::PmlAddress.encoding()],
                values: HashMap::new(),
            }
        }

        fn check(&self, field: FieldEncoding) -> Result<(), VmFail> {
            if !self.current {
                Err(VmFail::Invalid)
            } else if self.unsupported.contains(&field) {
                Err(VmFail::Valid(InstructionError::UnsupportedComponent))
            } else {
                Ok(())
            }
        }
    }

    impl VmcsAccess for FakeVmcs {
        fn vmread(&self, field: FieldEncoding) -> Result<u64, VmFail> {
            self.check(field)?;
            Ok(self.values.get(&field.bits()).copied().unwrap_or(0))
        }

        fn vmwrite(&mut self, field: FieldEncoding, value: u64) -> Result<(), VmFail> {
            self.check(field)?;
            if field.field_type() == FieldType::ReadOnly {
                return Err(VmFail::Valid(InstructionError::VmwriteReadOnlyComponent));
            }
            // The hardware keeps only the field's width.
            let value = match field.width() {
                FieldWidth::Bits16 => value & 0xFFFF,
                FieldWidth::Bits32 => value & 0xFFFF_FFFF,
                FieldWidth::Bits64 | FieldWidth::Natural => value,
            };
            self.values.insert(field.bits(), value);
            Ok(())
        }
    }

    #[test]
    fn typed_reads_and_writes_round_trip() {
        let mut vmcs = FakeVmcs::new();
        vmcs.write(Guest64::Efer, 0xD01).unwrap();
        vmcs.write(Guest16::CsSelector, 0x08).unwrap();
        vmcs.write(Guest32::CsAccessRights, 0xA09B).unwrap();
        vmcs.write(GuestNatural::Rip, 0xFFFF_FFF0).unwrap();
        vmcs.write(Control16::Vpid, 1).unwrap();
        assert_eq!(vmcs.read(Guest64::Efer), Ok(0xD01));
        assert_eq!(vmcs.read(Guest16::CsSelector), Ok(0x08u16));
        assert_eq!(vmcs.read(Guest32::CsAccessRights), Ok(0xA09Bu32));
        assert_eq!(vmcs.read(GuestNatural::Rip), Ok(0xFFFF_FFF0));
        assert_eq!(vmcs.read(Control16::Vpid), Ok(1));
        // Distinct fields with the same index in another group stay apart.
        assert_eq!(vmcs.read(Host64::Efer), Ok(0));
    }

    #[test]
    fn failures_come_back_as_vmfail() {
        let mut vmcs = FakeVmcs::new();
        assert_eq!(
            vmcs.write(Control64::PmlAddress, 0x1000),
            Err(VmFail::Valid(InstructionError::UnsupportedComponent))
        );
        // The raw entry point still refuses a read-only field, as the CPU
        // does; the typed `write` does not even compile for one.
        assert_eq!(
            vmcs.vmwrite(ReadOnly32::ExitReason.encoding(), 1),
            Err(VmFail::Valid(InstructionError::VmwriteReadOnlyComponent))
        );
        vmcs.current = false;
        assert_eq!(vmcs.read(GuestNatural::Rsp), Err(VmFail::Invalid));
        assert_eq!(vmcs.exit_info(), Err(VmFail::Invalid));
    }

    #[test]
    fn exit_info_and_instruction_error_decode_their_fields() {
        let mut vmcs = FakeVmcs::new();
        vmcs.values
            .insert(ReadOnly32::ExitReason.encoding().bits(), 0x8000_0021);
        vmcs.values
            .insert(ReadOnly32::VmInstructionError.encoding().bits(), 7);
        let info = vmcs.exit_info().unwrap();
        assert_eq!(info.reason, ExitReason::InvalidGuestState);
        assert!(info.entry_failure);
        assert_eq!(
            vmcs.instruction_error(),
            Ok(InstructionError::EntryInvalidControlFields)
        );
    }
}
