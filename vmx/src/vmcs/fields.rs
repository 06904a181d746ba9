//! The one table of VMCS field encodings (SDM Vol. 3D, Appendix B "Field
//! Encoding in VMCS"), one enum per width and access. Each encoding is
//! written once, as its variant's discriminant; a compile-time check below
//! and a host test in the parent module check that it has its group's width
//! and type bits.
//!
//! The groups hold the fields a hypervisor with EPT, unrestricted guest,
//! VPID, MSR and I/O bitmaps, the preemption timer and XSAVE uses, plus
//! their close neighbours in Appendix B; fields for features Ferrovisor does
//! not use (SGX, HLAT, PASID translation, ...) are left out.

use super::{sealed, Field, FieldEncoding, FieldType, FieldWidth, WritableField};

macro_rules! field_group {
    (
        $(#[$doc:meta])*
        $name:ident: $value:ty, $width:ident, $ty:ident, $access:ident {
            $( $(#[$vdoc:meta])* $variant:ident = $enc:literal, )+
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $( $(#[$vdoc])* $variant = $enc, )+
        }

        impl $name {
            /// Every field of this group, in encoding order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            /// The width of every field of this group.
            pub const WIDTH: FieldWidth = FieldWidth::$width;
            /// The type of every field of this group.
            pub const TYPE: FieldType = FieldType::$ty;

            /// The field's encoding.
            pub const fn encoding(self) -> FieldEncoding {
                FieldEncoding::new(self as u32)
            }

            /// The variant's name, e.g. `Efer`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($variant), )+
                }
            }
        }

        // A wrong width or type in the table does not compile.
        const _: () = {
            let all = $name::ALL;
            let mut i = 0;
            while i < all.len() {
                let enc = all[i] as u32;
                assert!((enc >> 13) & 0b11 == FieldWidth::$width.bits());
                assert!((enc >> 10) & 0b11 == FieldType::$ty.bits());
                i += 1;
            }
        };

        impl sealed::Sealed for $name {}

        impl Field for $name {
            type Value = $value;
            fn encoding(self) -> FieldEncoding {
                $name::encoding(self)
            }
        }

        field_group!(@access $name $access);
    };
    (@access $name:ident writable) => {
        impl WritableField for $name {}
    };
    (@access $name:ident read_only) => {};
}

field_group! {
    /// 16-bit control fields (Appendix B.1.1).
    Control16: u16, Bits16, Control, writable {
        /// Virtual-processor identifier (VPID); 0 is the host's.
        Vpid = 0x0000,
        /// Posted-interrupt notification vector.
        PostedInterruptNotificationVector = 0x0002,
        /// EPTP index (EPT-violation #VE).
        EptpIndex = 0x0004,
    }
}

field_group! {
    /// 16-bit guest-state fields (Appendix B.1.2).
    Guest16: u16, Bits16, Guest, writable {
        /// Guest ES selector.
        EsSelector = 0x0800,
        /// Guest CS selector.
        CsSelector = 0x0802,
        /// Guest SS selector.
        SsSelector = 0x0804,
        /// Guest DS selector.
        DsSelector = 0x0806,
        /// Guest FS selector.
        FsSelector = 0x0808,
        /// Guest GS selector.
        GsSelector = 0x080A,
        /// Guest LDTR selector.
        LdtrSelector = 0x080C,
        /// Guest TR selector.
        TrSelector = 0x080E,
        /// Guest interrupt status (virtual-interrupt delivery).
        InterruptStatus = 0x0810,
        /// PML index.
        PmlIndex = 0x0812,
    }
}

field_group! {
    /// 16-bit host-state fields (Appendix B.1.3).
    Host16: u16, Bits16, Host, writable {
        /// Host ES selector.
        EsSelector = 0x0C00,
        /// Host CS selector.
        CsSelector = 0x0C02,
        /// Host SS selector.
        SsSelector = 0x0C04,
        /// Host DS selector.
        DsSelector = 0x0C06,
        /// Host FS selector.
        FsSelector = 0x0C08,
        /// Host GS selector.
        GsSelector = 0x0C0A,
        /// Host TR selector.
        TrSelector = 0x0C0C,
    }
}

field_group! {
    /// 64-bit control fields (Appendix B.2.1). Addresses are host-physical.
    Control64: u64, Bits64, Control, writable {
        /// Address of I/O bitmap A (ports 0000H-7FFFH).
        IoBitmapA = 0x2000,
        /// Address of I/O bitmap B (ports 8000H-FFFFH).
        IoBitmapB = 0x2002,
        /// Address of the MSR bitmaps.
        MsrBitmaps = 0x2004,
        /// VM-exit MSR-store address.
        ExitMsrStoreAddress = 0x2006,
        /// VM-exit MSR-load address.
        ExitMsrLoadAddress = 0x2008,
        /// VM-entry MSR-load address.
        EntryMsrLoadAddress = 0x200A,
        /// Executive-VMCS pointer.
        ExecutiveVmcsPointer = 0x200C,
        /// PML address.
        PmlAddress = 0x200E,
        /// TSC offset.
        TscOffset = 0x2010,
        /// Virtual-APIC address.
        VirtualApicAddress = 0x2012,
        /// APIC-access address.
        ApicAccessAddress = 0x2014,
        /// Posted-interrupt descriptor address.
        PostedInterruptDescriptorAddress = 0x2016,
        /// VM-function controls.
        VmFunctionControls = 0x2018,
        /// EPT pointer (EPTP).
        Eptp = 0x201A,
        /// EOI-exit bitmap 0.
        EoiExitBitmap0 = 0x201C,
        /// EOI-exit bitmap 1.
        EoiExitBitmap1 = 0x201E,
        /// EOI-exit bitmap 2.
        EoiExitBitmap2 = 0x2020,
        /// EOI-exit bitmap 3.
        EoiExitBitmap3 = 0x2022,
        /// EPTP-list address.
        EptpListAddress = 0x2024,
        /// VMREAD-bitmap address.
        VmreadBitmapAddress = 0x2026,
        /// VMWRITE-bitmap address.
        VmwriteBitmapAddress = 0x2028,
        /// Virtualization-exception information address.
        VirtualizationExceptionInfoAddress = 0x202A,
        /// XSS-exiting bitmap (XSAVES/XRSTORS).
        XssExitingBitmap = 0x202C,
        /// ENCLS-exiting bitmap.
        EnclsExitingBitmap = 0x202E,
        /// TSC multiplier.
        TscMultiplier = 0x2032,
        /// Tertiary processor-based VM-execution controls.
        TertiaryProcBasedControls = 0x2034,
    }
}

field_group! {
    /// 64-bit read-only data fields (Appendix B.2.2).
    ReadOnly64: u64, Bits64, ReadOnly, read_only {
        /// Guest-physical address of an EPT violation or misconfiguration.
        GuestPhysicalAddress = 0x2400,
    }
}

field_group! {
    /// 64-bit guest-state fields (Appendix B.2.3).
    Guest64: u64, Bits64, Guest, writable {
        /// VMCS link pointer (all ones unless VMCS shadowing is used).
        VmcsLinkPointer = 0x2800,
        /// Guest IA32_DEBUGCTL.
        Debugctl = 0x2802,
        /// Guest IA32_PAT.
        Pat = 0x2804,
        /// Guest IA32_EFER.
        Efer = 0x2806,
        /// Guest IA32_PERF_GLOBAL_CTRL.
        PerfGlobalCtrl = 0x2808,
        /// Guest PDPTE0 (PAE paging with EPT).
        Pdpte0 = 0x280A,
        /// Guest PDPTE1.
        Pdpte1 = 0x280C,
        /// Guest PDPTE2.
        Pdpte2 = 0x280E,
        /// Guest PDPTE3.
        Pdpte3 = 0x2810,
        /// Guest IA32_BNDCFGS.
        Bndcfgs = 0x2812,
        /// Guest IA32_RTIT_CTL.
        RtitCtl = 0x2814,
        /// Guest IA32_LBR_CTL.
        LbrCtl = 0x2816,
        /// Guest IA32_PKRS.
        Pkrs = 0x2818,
    }
}

field_group! {
    /// 64-bit host-state fields (Appendix B.2.4).
    Host64: u64, Bits64, Host, writable {
        /// Host IA32_PAT.
        Pat = 0x2C00,
        /// Host IA32_EFER.
        Efer = 0x2C02,
        /// Host IA32_PERF_GLOBAL_CTRL.
        PerfGlobalCtrl = 0x2C04,
        /// Host IA32_PKRS.
        Pkrs = 0x2C06,
    }
}

field_group! {
    /// 32-bit control fields (Appendix B.3.1).
    Control32: u32, Bits32, Control, writable {
        /// Pin-based VM-execution controls ([`crate::controls::PinBasedControls`]).
        PinBasedControls = 0x4000,
        /// Primary processor-based VM-execution controls
        /// ([`crate::controls::PrimaryControls`]).
        PrimaryProcBasedControls = 0x4002,
        /// Exception bitmap: bit n set makes exception vector n exit.
        ExceptionBitmap = 0x4004,
        /// Page-fault error-code mask.
        PageFaultErrorCodeMask = 0x4006,
        /// Page-fault error-code match.
        PageFaultErrorCodeMatch = 0x4008,
        /// CR3-target count.
        Cr3TargetCount = 0x400A,
        /// Primary VM-exit controls ([`crate::controls::ExitControls`]).
        ExitControls = 0x400C,
        /// VM-exit MSR-store count.
        ExitMsrStoreCount = 0x400E,
        /// VM-exit MSR-load count.
        ExitMsrLoadCount = 0x4010,
        /// VM-entry controls ([`crate::controls::EntryControls`]).
        EntryControls = 0x4012,
        /// VM-entry MSR-load count.
        EntryMsrLoadCount = 0x4014,
        /// VM-entry interruption-information field (event injection, see
        /// [`crate::exit::InterruptionInfo`]).
        EntryInterruptionInfo = 0x4016,
        /// VM-entry exception error code.
        EntryExceptionErrorCode = 0x4018,
        /// VM-entry instruction length.
        EntryInstructionLength = 0x401A,
        /// TPR threshold.
        TprThreshold = 0x401C,
        /// Secondary processor-based VM-execution controls
        /// ([`crate::controls::SecondaryControls`]).
        SecondaryProcBasedControls = 0x401E,
        /// PLE_Gap (PAUSE-loop exiting).
        PleGap = 0x4020,
        /// PLE_Window (PAUSE-loop exiting).
        PleWindow = 0x4022,
    }
}

field_group! {
    /// 32-bit read-only data fields (Appendix B.3.2).
    ReadOnly32: u32, Bits32, ReadOnly, read_only {
        /// VM-instruction error ([`crate::error::InstructionError`]).
        VmInstructionError = 0x4400,
        /// Exit reason ([`crate::exit::ExitInfo`]).
        ExitReason = 0x4402,
        /// VM-exit interruption information
        /// ([`crate::exit::InterruptionInfo`]).
        ExitInterruptionInfo = 0x4404,
        /// VM-exit interruption error code.
        ExitInterruptionErrorCode = 0x4406,
        /// IDT-vectoring information field ([`crate::exit::InterruptionInfo`]).
        IdtVectoringInfo = 0x4408,
        /// IDT-vectoring error code.
        IdtVectoringErrorCode = 0x440A,
        /// VM-exit instruction length.
        ExitInstructionLength = 0x440C,
        /// VM-exit instruction information.
        ExitInstructionInfo = 0x440E,
    }
}

field_group! {
    /// 32-bit guest-state fields (Appendix B.3.3).
    Guest32: u32, Bits32, Guest, writable {
        /// Guest ES limit.
        EsLimit = 0x4800,
        /// Guest CS limit.
        CsLimit = 0x4802,
        /// Guest SS limit.
        SsLimit = 0x4804,
        /// Guest DS limit.
        DsLimit = 0x4806,
        /// Guest FS limit.
        FsLimit = 0x4808,
        /// Guest GS limit.
        GsLimit = 0x480A,
        /// Guest LDTR limit.
        LdtrLimit = 0x480C,
        /// Guest TR limit.
        TrLimit = 0x480E,
        /// Guest GDTR limit.
        GdtrLimit = 0x4810,
        /// Guest IDTR limit.
        IdtrLimit = 0x4812,
        /// Guest ES access rights.
        EsAccessRights = 0x4814,
        /// Guest CS access rights.
        CsAccessRights = 0x4816,
        /// Guest SS access rights.
        SsAccessRights = 0x4818,
        /// Guest DS access rights.
        DsAccessRights = 0x481A,
        /// Guest FS access rights.
        FsAccessRights = 0x481C,
        /// Guest GS access rights.
        GsAccessRights = 0x481E,
        /// Guest LDTR access rights.
        LdtrAccessRights = 0x4820,
        /// Guest TR access rights.
        TrAccessRights = 0x4822,
        /// Guest interruptibility state.
        InterruptibilityState = 0x4824,
        /// Guest activity state (0 active, 1 HLT, 2 shutdown, 3
        /// wait-for-SIPI).
        ActivityState = 0x4826,
        /// Guest SMBASE.
        Smbase = 0x4828,
        /// Guest IA32_SYSENTER_CS.
        SysenterCs = 0x482A,
        /// VMX-preemption timer value.
        PreemptionTimerValue = 0x482E,
    }
}

field_group! {
    /// 32-bit host-state fields (Appendix B.3.4).
    Host32: u32, Bits32, Host, writable {
        /// Host IA32_SYSENTER_CS.
        SysenterCs = 0x4C00,
    }
}

field_group! {
    /// Natural-width control fields (Appendix B.4.1).
    ControlNatural: u64, Natural, Control, writable {
        /// CR0 guest/host mask: set bits are owned by the host.
        Cr0GuestHostMask = 0x6000,
        /// CR4 guest/host mask: set bits are owned by the host.
        Cr4GuestHostMask = 0x6002,
        /// CR0 read shadow: what the guest reads in host-owned CR0 bits.
        Cr0ReadShadow = 0x6004,
        /// CR4 read shadow: what the guest reads in host-owned CR4 bits.
        Cr4ReadShadow = 0x6006,
        /// CR3-target value 0.
        Cr3Target0 = 0x6008,
        /// CR3-target value 1.
        Cr3Target1 = 0x600A,
        /// CR3-target value 2.
        Cr3Target2 = 0x600C,
        /// CR3-target value 3.
        Cr3Target3 = 0x600E,
    }
}

field_group! {
    /// Natural-width read-only data fields (Appendix B.4.2).
    ReadOnlyNatural: u64, Natural, ReadOnly, read_only {
        /// Exit qualification ([`crate::exit`] decodes it per exit reason).
        ExitQualification = 0x6400,
        /// I/O RCX (SMIs arriving after I/O instructions).
        IoRcx = 0x6402,
        /// I/O RSI.
        IoRsi = 0x6404,
        /// I/O RDI.
        IoRdi = 0x6406,
        /// I/O RIP.
        IoRip = 0x6408,
        /// Guest-linear address.
        GuestLinearAddress = 0x640A,
    }
}

field_group! {
    /// Natural-width guest-state fields (Appendix B.4.3).
    GuestNatural: u64, Natural, Guest, writable {
        /// Guest CR0.
        Cr0 = 0x6800,
        /// Guest CR3.
        Cr3 = 0x6802,
        /// Guest CR4.
        Cr4 = 0x6804,
        /// Guest ES base.
        EsBase = 0x6806,
        /// Guest CS base.
        CsBase = 0x6808,
        /// Guest SS base.
        SsBase = 0x680A,
        /// Guest DS base.
        DsBase = 0x680C,
        /// Guest FS base.
        FsBase = 0x680E,
        /// Guest GS base.
        GsBase = 0x6810,
        /// Guest LDTR base.
        LdtrBase = 0x6812,
        /// Guest TR base.
        TrBase = 0x6814,
        /// Guest GDTR base.
        GdtrBase = 0x6816,
        /// Guest IDTR base.
        IdtrBase = 0x6818,
        /// Guest DR7.
        Dr7 = 0x681A,
        /// Guest RSP.
        Rsp = 0x681C,
        /// Guest RIP.
        Rip = 0x681E,
        /// Guest RFLAGS.
        Rflags = 0x6820,
        /// Guest pending debug exceptions.
        PendingDebugExceptions = 0x6822,
        /// Guest IA32_SYSENTER_ESP.
        SysenterEsp = 0x6824,
        /// Guest IA32_SYSENTER_EIP.
        SysenterEip = 0x6826,
        /// Guest IA32_S_CET.
        SCet = 0x6828,
        /// Guest SSP.
        Ssp = 0x682A,
        /// Guest IA32_INTERRUPT_SSP_TABLE_ADDR.
        InterruptSspTableAddr = 0x682C,
    }
}

field_group! {
    /// Natural-width host-state fields (Appendix B.4.4).
    HostNatural: u64, Natural, Host, writable {
        /// Host CR0.
        Cr0 = 0x6C00,
        /// Host CR3.
        Cr3 = 0x6C02,
        /// Host CR4.
        Cr4 = 0x6C04,
        /// Host FS base.
        FsBase = 0x6C06,
        /// Host GS base.
        GsBase = 0x6C08,
        /// Host TR base.
        TrBase = 0x6C0A,
        /// Host GDTR base.
        GdtrBase = 0x6C0C,
        /// Host IDTR base.
        IdtrBase = 0x6C0E,
        /// Host IA32_SYSENTER_ESP.
        SysenterEsp = 0x6C10,
        /// Host IA32_SYSENTER_EIP.
        SysenterEip = 0x6C12,
        /// Host RSP, loaded on every VM exit.
        Rsp = 0x6C14,
        /// Host RIP, where every VM exit lands.
        Rip = 0x6C16,
        /// Host IA32_S_CET.
        SCet = 0x6C18,
        /// Host SSP.
        Ssp = 0x6C1A,
        /// Host IA32_INTERRUPT_SSP_TABLE_ADDR.
        InterruptSspTableAddr = 0x6C1C,
    }
}

/// The group and variant name of `enc`, found through the group its width
/// and type bits name.
pub(super) fn name_of(enc: FieldEncoding) -> Option<(&'static str, &'static str)> {
    fn find<F: Copy>(
        group: &'static str,
        all: &[F],
        encoding: impl Fn(F) -> FieldEncoding,
        name: impl Fn(F) -> &'static str,
        enc: FieldEncoding,
    ) -> Option<(&'static str, &'static str)> {
        all.iter()
            .find(|f| encoding(**f) == enc)
            .map(|f| (group, name(*f)))
    }
    macro_rules! lookup {
        ($group:ident) => {
            find(
                stringify!($group),
                $group::ALL,
                $group::encoding,
                $group::name,
                enc,
            )
        };
    }
    use FieldType as T;
    use FieldWidth as W;
    match (enc.width(), enc.field_type()) {
        (W::Bits16, T::Control) => lookup!(Control16),
        (W::Bits16, T::Guest) => lookup!(Guest16),
        (W::Bits16, T::Host) => lookup!(Host16),
        (W::Bits16, T::ReadOnly) => None,
        (W::Bits64, T::Control) => lookup!(Control64),
        (W::Bits64, T::ReadOnly) => lookup!(ReadOnly64),
        (W::Bits64, T::Guest) => lookup!(Guest64),
        (W::Bits64, T::Host) => lookup!(Host64),
        (W::Bits32, T::Control) => lookup!(Control32),
        (W::Bits32, T::ReadOnly) => lookup!(ReadOnly32),
        (W::Bits32, T::Guest) => lookup!(Guest32),
        (W::Bits32, T::Host) => lookup!(Host32),
        (W::Natural, T::Control) => lookup!(ControlNatural),
        (W::Natural, T::ReadOnly) => lookup!(ReadOnlyNatural),
        (W::Natural, T::Guest) => lookup!(GuestNatural),
        (W::Natural, T::Host) => lookup!(HostNatural),
    }
}
