//! VM exits decoded once: the exit reason field ([`ExitInfo`],
//! [`ExitReason`]), the exit qualifications Ferrovisor acts on
//! ([`IoQualification`], [`CrAccess`], [`EptViolation`]), what a VM-entry
//! failure's qualification says ([`EntryFailure`]), and the
//! interruption-information format shared by exits, IDT vectoring and event
//! injection ([`InterruptionInfo`]). Pure: values come from VMREAD through
//! [`crate::vmcs::VmcsAccess`], and from constructed numbers in tests.
//!
//! Guests choose what most of these fields hold, so nothing here panics on
//! a value: undefined encodings become `Unknown` variants or a
//! [`BadQualification`].
//!
//! Section and table numbers follow the SDM editions in which VM entries are
//! Vol. 3C, Chapter 27 and VM exits Chapter 28 (older editions: 26 and 27);
//! table titles are quoted so they can be found in any edition.

use core::fmt;

use addr::GuestPhysAddr;

macro_rules! exit_reasons {
    ($( $number:literal => $variant:ident: $words:literal, )+) => {
        /// A basic exit reason, bits 15:0 of the exit reason field (SDM
        /// Vol. 3D, Appendix C "VMX Basic Exit Reasons", Table C-1).
        /// Numbers the SDM does not define decode as [`Self::Unknown`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ExitReason {
            $( #[doc = concat!(stringify!($number), ": ", $words, ".")] $variant, )+
            /// A basic exit reason the SDM (as of this crate) does not
            /// define.
            Unknown(u16),
        }

        impl ExitReason {
            /// Every defined reason, in number order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Decodes a basic exit reason.
            pub const fn from_basic(basic: u16) -> Self {
                match basic {
                    $( $number => Self::$variant, )+
                    other => Self::Unknown(other),
                }
            }

            /// The basic exit reason number.
            pub const fn number(self) -> u16 {
                match self {
                    $( Self::$variant => $number, )+
                    Self::Unknown(n) => n,
                }
            }

            /// The SDM's name of the reason, e.g. `EPT violation`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $words, )+
                    Self::Unknown(_) => "unknown exit reason",
                }
            }
        }
    };
}

exit_reasons! {
    0 => ExceptionOrNmi: "exception or non-maskable interrupt (NMI)",
    1 => ExternalInterrupt: "external interrupt",
    2 => TripleFault: "triple fault",
    3 => InitSignal: "INIT signal",
    4 => StartupIpi: "start-up IPI (SIPI)",
    5 => IoSmi: "I/O system-management interrupt (SMI)",
    6 => OtherSmi: "other SMI",
    7 => InterruptWindow: "interrupt window",
    8 => NmiWindow: "NMI window",
    9 => TaskSwitch: "task switch",
    10 => Cpuid: "CPUID",
    11 => Getsec: "GETSEC",
    12 => Hlt: "HLT",
    13 => Invd: "INVD",
    14 => Invlpg: "INVLPG",
    15 => Rdpmc: "RDPMC",
    16 => Rdtsc: "RDTSC",
    17 => Rsm: "RSM",
    18 => Vmcall: "VMCALL",
    19 => Vmclear: "VMCLEAR",
    20 => Vmlaunch: "VMLAUNCH",
    21 => Vmptrld: "VMPTRLD",
    22 => Vmptrst: "VMPTRST",
    23 => Vmread: "VMREAD",
    24 => Vmresume: "VMRESUME",
    25 => Vmwrite: "VMWRITE",
    26 => Vmxoff: "VMXOFF",
    27 => Vmxon: "VMXON",
    28 => ControlRegisterAccess: "control-register access",
    29 => MovDr: "MOV DR",
    30 => IoInstruction: "I/O instruction",
    31 => Rdmsr: "RDMSR",
    32 => Wrmsr: "WRMSR",
    33 => InvalidGuestState: "VM-entry failure due to invalid guest state",
    34 => MsrLoading: "VM-entry failure due to MSR loading",
    36 => Mwait: "MWAIT",
    37 => MonitorTrapFlag: "monitor trap flag",
    39 => Monitor: "MONITOR",
    40 => Pause: "PAUSE",
    41 => MachineCheckDuringEntry: "VM-entry failure due to machine-check event",
    43 => TprBelowThreshold: "TPR below threshold",
    44 => ApicAccess: "APIC access",
    45 => VirtualizedEoi: "virtualized EOI",
    46 => GdtrIdtrAccess: "access to GDTR or IDTR",
    47 => LdtrTrAccess: "access to LDTR or TR",
    48 => EptViolation: "EPT violation",
    49 => EptMisconfiguration: "EPT misconfiguration",
    50 => Invept: "INVEPT",
    51 => Rdtscp: "RDTSCP",
    52 => PreemptionTimerExpired: "VMX-preemption timer expired",
    53 => Invvpid: "INVVPID",
    54 => Wbinvd: "WBINVD or WBNOINVD",
    55 => Xsetbv: "XSETBV",
    56 => ApicWrite: "APIC write",
    57 => Rdrand: "RDRAND",
    58 => Invpcid: "INVPCID",
    59 => Vmfunc: "VMFUNC",
    60 => Encls: "ENCLS",
    61 => Rdseed: "RDSEED",
    62 => PmlFull: "page-modification log full",
    63 => Xsaves: "XSAVES",
    64 => Xrstors: "XRSTORS",
    65 => Pconfig: "PCONFIG",
    66 => SppEvent: "SPP-related event",
    67 => Umwait: "UMWAIT",
    68 => Tpause: "TPAUSE",
    69 => Loadiwkey: "LOADIWKEY",
    70 => Enclv: "ENCLV",
    72 => EnqcmdPasidFailure: "ENQCMD PASID translation failure",
    73 => EnqcmdsPasidFailure: "ENQCMDS PASID translation failure",
    74 => BusLock: "bus lock",
    75 => InstructionTimeout: "instruction timeout",
    76 => Seamcall: "SEAMCALL",
    77 => Tdcall: "TDCALL",
    78 => Rdmsrlist: "RDMSRLIST",
    79 => Wrmsrlist: "WRMSRLIST",
}

impl ExitReason {
    /// Whether this basic reason reports a VM entry that failed while or
    /// after loading guest state (SDM Vol. 3C, 27.8 "VM-Entry Failures
    /// During or After Loading Guest State").
    pub const fn is_entry_failure(self) -> bool {
        matches!(
            self,
            Self::InvalidGuestState | Self::MsrLoading | Self::MachineCheckDuringEntry
        )
    }
}

impl fmt::Display for ExitReason {
    /// `48 (EPT violation)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// The exit reason field decoded (SDM Vol. 3C, 25.9.1 "Basic VM-Exit
/// Information", table "Format of Exit Reason").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitInfo {
    /// Bits 15:0: the basic exit reason.
    pub reason: ExitReason,
    /// Bit 27: the exit was incident to enclave mode.
    pub enclave_mode: bool,
    /// Bit 28: a monitor-trap-flag VM exit is pending.
    pub pending_mtf: bool,
    /// Bit 29: the exit came from VMX root operation (SMM monitor only).
    pub from_vmx_root: bool,
    /// Bit 31: 1 for a VM-entry failure (the guest never ran), 0 for a true
    /// VM exit.
    pub entry_failure: bool,
}

impl ExitInfo {
    /// Decodes the 32-bit exit reason field.
    pub const fn from_exit_reason(raw: u32) -> Self {
        Self {
            reason: ExitReason::from_basic(raw as u16),
            enclave_mode: raw & (1 << 27) != 0,
            pending_mtf: raw & (1 << 28) != 0,
            from_vmx_root: raw & (1 << 29) != 0,
            entry_failure: raw & (1 << 31) != 0,
        }
    }
}

impl fmt::Display for ExitInfo {
    /// `VM exit 48 (EPT violation)` or `VM-entry failure 33 (VM-entry
    /// failure due to invalid guest state)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.entry_failure {
            "VM-entry failure"
        } else {
            "VM exit"
        };
        write!(f, "{what} {}", self.reason)
    }
}

/// An exit qualification with a value its format leaves undefined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BadQualification {
    /// The exit reason whose qualification it is.
    pub reason: ExitReason,
    /// The qualification as read.
    pub qualification: u64,
    /// What is undefined.
    pub problem: &'static str,
}

impl fmt::Display for BadQualification {
    /// `exit qualification 0x2 of exit 30 (I/O instruction): access-size
    /// code 2 is undefined`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit qualification {:#x} of exit {}: {}",
            self.qualification, self.reason, self.problem
        )
    }
}

/// The size of an I/O access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoSize {
    /// 1 byte (encoded 0).
    Byte,
    /// 2 bytes (encoded 1).
    Word,
    /// 4 bytes (encoded 3).
    Dword,
}

impl IoSize {
    /// The size in bytes: 1, 2 or 4.
    pub const fn bytes(self) -> u8 {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
        }
    }
}

/// Which way an I/O instruction moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// OUT/OUTS: guest to port (encoded 0).
    Out,
    /// IN/INS: port to guest (encoded 1).
    In,
}

/// The exit qualification of an I/O instruction exit, reason 30 (SDM
/// Vol. 3C, 28.2.1, Table 28-5 "Exit Qualification for I/O Instructions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoQualification {
    /// Bits 2:0: size of the access.
    pub size: IoSize,
    /// Bit 3: direction.
    pub direction: IoDirection,
    /// Bit 4: a string instruction (INS/OUTS).
    pub string: bool,
    /// Bit 5: REP-prefixed.
    pub rep: bool,
    /// Bit 6: the port was an immediate operand (else DX).
    pub immediate: bool,
    /// Bits 31:16: the port number.
    pub port: u16,
}

impl IoQualification {
    /// Decodes the qualification; access-size code 2 (undefined) is an
    /// error.
    pub const fn from_qualification(q: u64) -> Result<Self, BadQualification> {
        let size = match q & 0b111 {
            0 => IoSize::Byte,
            1 => IoSize::Word,
            3 => IoSize::Dword,
            _ => {
                return Err(BadQualification {
                    reason: ExitReason::IoInstruction,
                    qualification: q,
                    problem: "access-size code (bits 2:0) is not 0, 1 or 3",
                })
            }
        };
        Ok(Self {
            size,
            direction: if q & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        })
    }
}

impl fmt::Display for IoQualification {
    /// `REP OUTS 1 byte to port 0x3f8 (DX)` or `IN 4 bytes from port 0xcfc
    /// (DX)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rep {
            f.write_str("REP ")?;
        }
        let (insn, prep) = match self.direction {
            IoDirection::In => ("IN", "from"),
            IoDirection::Out => ("OUT", "to"),
        };
        let string = if self.string { "S" } else { "" };
        let bytes = self.size.bytes();
        let unit = if bytes == 1 { "byte" } else { "bytes" };
        let operand = if self.immediate { "immediate" } else { "DX" };
        write!(
            f,
            "{insn}{string} {bytes} {unit} {prep} port {:#x} ({operand})",
            self.port
        )
    }
}

/// A general-purpose register as the exit qualifications number them (SDM
/// Vol. 3C, 28.2.1, Table 28-3: 0 = RAX ... 15 = R15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gpr {
    /// 0: RAX.
    Rax,
    /// 1: RCX.
    Rcx,
    /// 2: RDX.
    Rdx,
    /// 3: RBX.
    Rbx,
    /// 4: RSP.
    Rsp,
    /// 5: RBP.
    Rbp,
    /// 6: RSI.
    Rsi,
    /// 7: RDI.
    Rdi,
    /// 8: R8.
    R8,
    /// 9: R9.
    R9,
    /// 10: R10.
    R10,
    /// 11: R11.
    R11,
    /// 12: R12.
    R12,
    /// 13: R13.
    R13,
    /// 14: R14.
    R14,
    /// 15: R15.
    R15,
}

impl Gpr {
    /// Every register, in encoding order.
    pub const ALL: [Self; 16] = [
        Self::Rax,
        Self::Rcx,
        Self::Rdx,
        Self::Rbx,
        Self::Rsp,
        Self::Rbp,
        Self::Rsi,
        Self::Rdi,
        Self::R8,
        Self::R9,
        Self::R10,
        Self::R11,
        Self::R12,
        Self::R13,
        Self::R14,
        Self::R15,
    ];

    /// The register numbered by the low four bits of `n`.
    pub const fn from_number(n: u8) -> Self {
        Self::ALL[(n & 0xF) as usize]
    }

    /// The register's number, 0..=15 (the index into a saved-register
    /// array in this order).
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The register's name, e.g. `RAX`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rax => "RAX",
            Self::Rcx => "RCX",
            Self::Rdx => "RDX",
            Self::Rbx => "RBX",
            Self::Rsp => "RSP",
            Self::Rbp => "RBP",
            Self::Rsi => "RSI",
            Self::Rdi => "RDI",
            Self::R8 => "R8",
            Self::R9 => "R9",
            Self::R10 => "R10",
            Self::R11 => "R11",
            Self::R12 => "R12",
            Self::R13 => "R13",
            Self::R14 => "R14",
            Self::R15 => "R15",
        }
    }
}

impl fmt::Display for Gpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where LMSW took its operand from (bit 6 of the qualification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LmswOperand {
    /// A register.
    Register,
    /// Memory; the guest-linear address field holds its address.
    Memory,
}

/// What a control-register access did, bits 5:4 of its qualification, with
/// the operands that access type has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrAccessType {
    /// 0: MOV to CR from `gpr`.
    MovTo {
        /// The source register.
        gpr: Gpr,
    },
    /// 1: MOV from CR to `gpr`.
    MovFrom {
        /// The destination register.
        gpr: Gpr,
    },
    /// 2: CLTS.
    Clts,
    /// 3: LMSW.
    Lmsw {
        /// Register or memory operand.
        operand: LmswOperand,
        /// Bits 31:16: the LMSW source data (only its low 4 bits matter to
        /// CR0).
        source: u16,
    },
}

/// The exit qualification of a control-register access, reason 28 (SDM
/// Vol. 3C, 28.2.1, Table 28-3 "Exit Qualification for Control-Register
/// Accesses").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrAccess {
    /// Bits 3:0: the control register (0 for CLTS and LMSW, which act on
    /// CR0).
    pub cr: u8,
    /// Bits 5:4 with their operands.
    pub access: CrAccessType,
}

impl CrAccess {
    /// Decodes the qualification. Every value decodes (bits the format
    /// leaves undefined are ignored).
    pub const fn from_qualification(q: u64) -> Self {
        let gpr = Gpr::from_number((q >> 8) as u8);
        let access = match (q >> 4) & 0b11 {
            0 => CrAccessType::MovTo { gpr },
            1 => CrAccessType::MovFrom { gpr },
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw {
                operand: if q & (1 << 6) != 0 {
                    LmswOperand::Memory
                } else {
                    LmswOperand::Register
                },
                source: (q >> 16) as u16,
            },
        };
        Self {
            cr: (q & 0xF) as u8,
            access,
        }
    }
}

impl fmt::Display for CrAccess {
    /// `MOV to CR3 from RAX`, `MOV from CR8 to R9`, `CLTS`, `LMSW 0x1
    /// (register)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.access {
            CrAccessType::MovTo { gpr } => write!(f, "MOV to CR{} from {gpr}", self.cr),
            CrAccessType::MovFrom { gpr } => write!(f, "MOV from CR{} to {gpr}", self.cr),
            CrAccessType::Clts => f.write_str("CLTS"),
            CrAccessType::Lmsw { operand, source } => {
                let operand = match operand {
                    LmswOperand::Register => "register",
                    LmswOperand::Memory => "memory",
                };
                write!(f, "LMSW {source:#x} ({operand})")
            }
        }
    }
}

/// An EPT violation, reason 48: its exit qualification (SDM Vol. 3C,
/// 28.2.1, Table 28-7 "Exit Qualification for EPT Violations") with the
/// guest-physical address from its own VMCS field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EptViolation {
    /// The guest-physical address accessed (the guest-physical address
    /// field, [`crate::vmcs::ReadOnly64::GuestPhysicalAddress`]).
    pub gpa: GuestPhysAddr,
    /// Bit 0: the access was a data read.
    pub read: bool,
    /// Bit 1: the access was a data write.
    pub write: bool,
    /// Bit 2: the access was an instruction fetch.
    pub fetch: bool,
    /// Bit 3: the EPT entries allowed reads (AND of their bit 0).
    pub readable: bool,
    /// Bit 4: the EPT entries allowed writes.
    pub writable: bool,
    /// Bit 5: the EPT entries allowed execution (supervisor-mode execution
    /// under mode-based execute control).
    pub executable: bool,
    /// Bit 7: the guest-linear address field is valid.
    pub gla_valid: bool,
    /// Bit 8, meaningful only with `gla_valid`: the access was to the
    /// linear address's final translation (else to a guest paging-structure
    /// entry during the walk).
    pub final_translation: bool,
    /// Bit 12: NMI unblocking due to IRET; the guest's NMI blocking must be
    /// set again before resuming it (SDM Vol. 3C, 28.2.3).
    pub nmi_unblocking: bool,
}

impl EptViolation {
    /// Decodes the qualification `q` of an EPT violation at `gpa`. Every
    /// value decodes.
    pub const fn from_qualification(q: u64, gpa: GuestPhysAddr) -> Self {
        const fn bit(q: u64, n: u32) -> bool {
            q & (1 << n) != 0
        }
        Self {
            gpa,
            read: bit(q, 0),
            write: bit(q, 1),
            fetch: bit(q, 2),
            readable: bit(q, 3),
            writable: bit(q, 4),
            executable: bit(q, 5),
            gla_valid: bit(q, 7),
            final_translation: bit(q, 7) && bit(q, 8),
            nmi_unblocking: bit(q, 12),
        }
    }
}

impl fmt::Display for EptViolation {
    /// `EPT violation at guest-physical 0xfee00000: write, EPT allows r-x,
    /// guest-linear address valid (final translation)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EPT violation at guest-physical {}: ", self.gpa)?;
        let accesses = [
            (self.read, "read"),
            (self.write, "write"),
            (self.fetch, "fetch"),
        ];
        let mut first = true;
        for (_, name) in accesses.iter().filter(|(on, _)| *on) {
            if !first {
                f.write_str("+")?;
            }
            f.write_str(name)?;
            first = false;
        }
        if first {
            f.write_str("no access bits")?;
        }
        let flag = |on: bool, c: &'static str| if on { c } else { "-" };
        write!(
            f,
            ", EPT allows {}{}{}",
            flag(self.readable, "r"),
            flag(self.writable, "w"),
            flag(self.executable, "x")
        )?;
        if self.gla_valid {
            let what = if self.final_translation {
                "final translation"
            } else {
                "paging-structure walk"
            };
            write!(f, ", guest-linear address valid ({what})")?;
        } else {
            f.write_str(", no guest-linear address")?;
        }
        if self.nmi_unblocking {
            f.write_str(", NMI unblocked by IRET")?;
        }
        Ok(())
    }
}

/// What the exit qualification of a VM entry that failed with basic reason
/// 33 says (SDM Vol. 3C, 27.8 "VM-Entry Failures During or After Loading
/// Guest State").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidGuestState {
    /// 0: a check on the guest-state area failed (SDM Vol. 3C, 27.3.1
    /// "Checks on the Guest State Area").
    GuestStateCheck,
    /// 2: loading the guest's PDPTEs failed.
    PdpteLoading,
    /// 3: NMI injection into a guest blocking events with STI.
    NmiInjectionBlockedBySti,
    /// 4: the VMCS link pointer is invalid.
    VmcsLinkPointer,
    /// Any other value (1 is "not used").
    Unknown(u64),
}

impl InvalidGuestState {
    /// Decodes the qualification.
    pub const fn from_qualification(q: u64) -> Self {
        match q {
            0 => Self::GuestStateCheck,
            2 => Self::PdpteLoading,
            3 => Self::NmiInjectionBlockedBySti,
            4 => Self::VmcsLinkPointer,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for InvalidGuestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GuestStateCheck => f.write_str(
                "a guest-state field failed a check of SDM 27.3.1 (segment registers, \
                 CR0/CR4/EFER, RFLAGS, activity or interruptibility state)",
            ),
            Self::PdpteLoading => f.write_str("loading the guest's PAE PDPTEs failed"),
            Self::NmiInjectionBlockedBySti => {
                f.write_str("NMI injection while the guest blocks events by STI")
            }
            Self::VmcsLinkPointer => {
                f.write_str("invalid VMCS link pointer (must be all ones without VMCS shadowing)")
            }
            Self::Unknown(q) => write!(f, "undocumented qualification {q:#x}"),
        }
    }
}

/// A VM entry that failed while or after loading guest state: the guest
/// never ran, and the exit reason field has bit 31 set (SDM Vol. 3C, 27.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryFailure {
    /// Basic reason 33: invalid guest state, with the qualification's
    /// detail.
    InvalidGuestState(InvalidGuestState),
    /// Basic reason 34: an entry of the VM-entry MSR-load area could not be
    /// loaded.
    MsrLoading {
        /// The qualification: which entry failed, counting from 1.
        entry: u64,
    },
    /// Basic reason 41: a machine-check event during VM entry (the
    /// qualification carries nothing).
    MachineCheck,
}

impl EntryFailure {
    /// Decodes the failure from the exit reason and the exit
    /// qualification; `None` for reasons that are not VM-entry failures.
    pub const fn decode(reason: ExitReason, qualification: u64) -> Option<Self> {
        match reason {
            ExitReason::InvalidGuestState => Some(Self::InvalidGuestState(
                InvalidGuestState::from_qualification(qualification),
            )),
            ExitReason::MsrLoading => Some(Self::MsrLoading {
                entry: qualification,
            }),
            ExitReason::MachineCheckDuringEntry => Some(Self::MachineCheck),
            _ => None,
        }
    }
}

impl fmt::Display for EntryFailure {
    /// `VM entry failed: invalid guest state: loading the guest's PAE PDPTEs
    /// failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VM entry failed: ")?;
        match self {
            Self::InvalidGuestState(detail) => write!(f, "invalid guest state: {detail}"),
            Self::MsrLoading { entry } => write!(
                f,
                "MSR loading failed at entry {entry} of the VM-entry MSR-load area"
            ),
            Self::MachineCheck => f.write_str("a machine-check event occurred during VM entry"),
        }
    }
}

/// The type of an event in an interruption-information field, bits 10:8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptionType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 1: reserved.
    Reserved,
    /// 2: non-maskable interrupt.
    Nmi,
    /// 3: hardware exception (#PF, #GP, ...).
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (MTF injection on entry).
    Other,
}

impl InterruptionType {
    /// The type from its 3-bit code.
    pub const fn from_code(code: u8) -> Self {
        match code & 0b111 {
            0 => Self::ExternalInterrupt,
            1 => Self::Reserved,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => Self::Other,
        }
    }

    /// The 3-bit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Reserved => 1,
            Self::Nmi => 2,
            Self::HardwareException => 3,
            Self::SoftwareInterrupt => 4,
            Self::PrivilegedSoftwareException => 5,
            Self::SoftwareException => 6,
            Self::Other => 7,
        }
    }
}

/// An interruption-information field: VM-exit interruption information,
/// IDT-vectoring information and VM-entry interruption information share
/// this format (SDM Vol. 3C, 25.9.2, 25.9.3 and 25.8.3, tables "Format of the
/// VM-Exit Interruption-Information Field", "Format of the IDT-Vectoring
/// Information Field" and "Format of the VM-Entry
/// Interruption-Information Field").
///
/// `None` from [`Self::decode`] means bit 31 (valid) is clear: no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterruptionInfo {
    /// Bits 7:0: the vector.
    pub vector: u8,
    /// Bits 10:8: the event type.
    pub kind: InterruptionType,
    /// Bit 11: an error code is delivered (its own field holds it).
    pub error_code: bool,
    /// Bit 12 (VM-exit interruption information only): NMI unblocking due
    /// to IRET.
    pub nmi_unblocking: bool,
}

impl InterruptionInfo {
    /// Decodes a field; `None` when its valid bit (31) is clear.
    pub const fn decode(raw: u32) -> Option<Self> {
        if raw & (1 << 31) == 0 {
            return None;
        }
        Some(Self {
            vector: raw as u8,
            kind: InterruptionType::from_code((raw >> 8) as u8),
            error_code: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
        })
    }

    /// The value to write to the VM-entry interruption-information field to
    /// inject this event (valid bit set; bit 12 is reserved there and left
    /// clear).
    pub const fn to_entry_field(self) -> u32 {
        (1 << 31)
            | ((self.error_code as u32) << 11)
            | ((self.kind.code() as u32) << 8)
            | self.vector as u32
    }

    /// A hardware exception, e.g. #GP (vector 13) with an error code.
    pub const fn hardware_exception(vector: u8, error_code: bool) -> Self {
        Self {
            vector,
            kind: InterruptionType::HardwareException,
            error_code,
            nmi_unblocking: false,
        }
    }
}

impl fmt::Display for InterruptionInfo {
    /// `hardware exception, vector 14, with error code`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            InterruptionType::ExternalInterrupt => "external interrupt",
            InterruptionType::Reserved => "reserved event type 1",
            InterruptionType::Nmi => "NMI",
            InterruptionType::HardwareException => "hardware exception",
            InterruptionType::SoftwareInterrupt => "software interrupt",
            InterruptionType::PrivilegedSoftwareException => "privileged software exception",
            InterruptionType::SoftwareException => "software exception",
            InterruptionType::Other => "other event",
        };
        write!(f, "{kind}, vector {}", self.vector)?;
        if self.error_code {
            f.write_str(", with error code")?;
        }
        if self.nmi_unblocking {
            f.write_str(", NMI unblocked by IRET")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_reason_round_trips_and_gaps_are_unknown() {
        assert_eq!(ExitReason::ALL.len(), 76);
        for &r in ExitReason::ALL {
            assert_eq!(ExitReason::from_basic(r.number()), r);
            assert_ne!(r.name(), "unknown exit reason");
        }
        for gap in [35, 38, 42, 71, 80, 0xFFFF] {
            assert_eq!(ExitReason::from_basic(gap), ExitReason::Unknown(gap));
        }
        assert_eq!(ExitReason::from_basic(48), ExitReason::EptViolation);
        assert_eq!(
            ExitReason::from_basic(52),
            ExitReason::PreemptionTimerExpired
        );
        assert_eq!(ExitReason::from_basic(55), ExitReason::Xsetbv);
        assert_eq!(ExitReason::Cpuid.to_string(), "10 (CPUID)");
        assert_eq!(
            ExitReason::Unknown(200).to_string(),
            "200 (unknown exit reason)"
        );
    }

    #[test]
    fn exit_reason_field_flags() {
        let io = ExitInfo::from_exit_reason(30);
        assert_eq!(io.reason, ExitReason::IoInstruction);
        assert!(!io.entry_failure && !io.pending_mtf && !io.enclave_mode && !io.from_vmx_root);
        assert_eq!(io.to_string(), "VM exit 30 (I/O instruction)");

        let failed = ExitInfo::from_exit_reason(0x8000_0021);
        assert_eq!(failed.reason, ExitReason::InvalidGuestState);
        assert!(failed.entry_failure);
        assert!(failed.reason.is_entry_failure());
        assert_eq!(
            failed.to_string(),
            "VM-entry failure 33 (VM-entry failure due to invalid guest state)"
        );

        let flags = ExitInfo::from_exit_reason((1 << 27) | (1 << 28) | (1 << 29) | 12);
        assert!(flags.enclave_mode && flags.pending_mtf && flags.from_vmx_root);
        assert!(!flags.entry_failure);
        assert_eq!(flags.reason, ExitReason::Hlt);
        // Bit 16 and the undefined bits do not change the basic reason.
        assert_eq!(
            ExitInfo::from_exit_reason(0x0401_0030).reason,
            ExitReason::EptViolation
        );
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL to COM1.
        let q = IoQualification::from_qualification(0x03F8_0000).unwrap();
        assert_eq!(q.size, IoSize::Byte);
        assert_eq!(q.direction, IoDirection::Out);
        assert!(!q.string && !q.rep && !q.immediate);
        assert_eq!(q.port, 0x3F8);
        assert_eq!(q.to_string(), "OUT 1 byte to port 0x3f8 (DX)");

        // IN EAX, DX from PCI config data.
        let q = IoQualification::from_qualification(0x0CFC_0000 | 0b1011).unwrap();
        assert_eq!(q.size.bytes(), 4);
        assert_eq!(q.direction, IoDirection::In);
        assert_eq!(q.to_string(), "IN 4 bytes from port 0xcfc (DX)");

        // REP OUTSW.
        let q = IoQualification::from_qualification(0x01F0_0000 | 0b11_0001).unwrap();
        assert!(q.string && q.rep);
        assert_eq!(q.size, IoSize::Word);
        assert_eq!(q.to_string(), "REP OUTS 2 bytes to port 0x1f0 (DX)");

        // OUT 0x80, AL (immediate); bits 63:32 are ignored.
        let q = IoQualification::from_qualification(0xFFFF_FFFF_0080_0040).unwrap();
        assert!(q.immediate);
        assert_eq!(q.port, 0x80);
        assert_eq!(q.to_string(), "OUT 1 byte to port 0x80 (immediate)");

        let err = IoQualification::from_qualification(0x0060_0002).unwrap_err();
        assert_eq!(err.qualification, 0x0060_0002);
        assert_eq!(
            err.to_string(),
            "exit qualification 0x600002 of exit 30 (I/O instruction): \
             access-size code (bits 2:0) is not 0, 1 or 3"
        );
    }

    #[test]
    fn cr_access_qualification() {
        // MOV CR3, RAX: cr 3, type 0, register 0.
        let c = CrAccess::from_qualification(0x3);
        assert_eq!(c.cr, 3);
        assert_eq!(c.access, CrAccessType::MovTo { gpr: Gpr::Rax });
        assert_eq!(c.to_string(), "MOV to CR3 from RAX");

        // MOV R9, CR8: cr 8, type 1, register 9.
        let c = CrAccess::from_qualification(0x0918);
        assert_eq!(c.cr, 8);
        assert_eq!(c.access, CrAccessType::MovFrom { gpr: Gpr::R9 });
        assert_eq!(c.to_string(), "MOV from CR8 to R9");

        // MOV CR4, R15.
        assert_eq!(
            CrAccess::from_qualification(0x0F04).to_string(),
            "MOV to CR4 from R15"
        );

        let c = CrAccess::from_qualification(0x20);
        assert_eq!(c.access, CrAccessType::Clts);
        assert_eq!(c.to_string(), "CLTS");

        // LMSW from memory with source 0x000B.
        let c = CrAccess::from_qualification(0x000B_0070);
        assert_eq!(
            c.access,
            CrAccessType::Lmsw {
                operand: LmswOperand::Memory,
                source: 0xB
            }
        );
        assert_eq!(c.to_string(), "LMSW 0xb (memory)");
        let c = CrAccess::from_qualification(0x0001_0030);
        assert_eq!(c.to_string(), "LMSW 0x1 (register)");
    }

    #[test]
    fn gpr_numbers() {
        for (n, gpr) in Gpr::ALL.iter().enumerate() {
            assert_eq!(gpr.number() as usize, n);
            assert_eq!(Gpr::from_number(n as u8), *gpr);
        }
        assert_eq!(Gpr::from_number(4).name(), "RSP");
        assert_eq!(Gpr::from_number(0x1C), Gpr::R12);
    }

    #[test]
    fn ept_violation_qualification() {
        let gpa = GuestPhysAddr::new(0xFEE0_0000);
        // Write to a read/execute page through a linear address's final
        // translation.
        let v = EptViolation::from_qualification(0x1AA, gpa);
        assert_eq!(v.gpa, gpa);
        assert!(v.write && !v.read && !v.fetch);
        assert!(v.readable && !v.writable && v.executable);
        assert!(v.gla_valid && v.final_translation && !v.nmi_unblocking);
        assert_eq!(
            v.to_string(),
            "EPT violation at guest-physical 0xfee00000: write, EPT allows r-x, \
             guest-linear address valid (final translation)"
        );

        // Fetch from an unmapped page during a guest page walk, after IRET
        // unblocked NMIs.
        let v = EptViolation::from_qualification(
            (1 << 12) | (1 << 7) | 0b101,
            GuestPhysAddr::new(0x1000),
        );
        assert!(v.read && v.fetch && !v.write);
        assert!(!v.readable && !v.writable && !v.executable);
        assert!(v.gla_valid && !v.final_translation && v.nmi_unblocking);
        assert_eq!(
            v.to_string(),
            "EPT violation at guest-physical 0x1000: read+fetch, EPT allows ---, \
             guest-linear address valid (paging-structure walk), NMI unblocked by IRET"
        );

        // Bit 8 means nothing without bit 7.
        let v = EptViolation::from_qualification(0x101, GuestPhysAddr::new(0));
        assert!(!v.gla_valid && !v.final_translation);
        assert!(v
            .to_string()
            .ends_with("read, EPT allows ---, no guest-linear address"));
    }

    #[test]
    fn entry_failure_qualifications() {
        let f = |reason, q| EntryFailure::decode(reason, q).unwrap().to_string();
        assert_eq!(
            f(ExitReason::InvalidGuestState, 0),
            "VM entry failed: invalid guest state: a guest-state field failed a check of \
             SDM 27.3.1 (segment registers, CR0/CR4/EFER, RFLAGS, activity or \
             interruptibility state)"
        );
        assert_eq!(
            f(ExitReason::InvalidGuestState, 2),
            "VM entry failed: invalid guest state: loading the guest's PAE PDPTEs failed"
        );
        assert_eq!(
            f(ExitReason::InvalidGuestState, 3),
            "VM entry failed: invalid guest state: NMI injection while the guest blocks \
             events by STI"
        );
        assert_eq!(
            f(ExitReason::InvalidGuestState, 4),
            "VM entry failed: invalid guest state: invalid VMCS link pointer (must be all \
             ones without VMCS shadowing)"
        );
        assert_eq!(
            EntryFailure::decode(ExitReason::InvalidGuestState, 1),
            Some(EntryFailure::InvalidGuestState(InvalidGuestState::Unknown(
                1
            )))
        );
        assert_eq!(
            f(ExitReason::InvalidGuestState, 9),
            "VM entry failed: invalid guest state: undocumented qualification 0x9"
        );
        assert_eq!(
            f(ExitReason::MsrLoading, 3),
            "VM entry failed: MSR loading failed at entry 3 of the VM-entry MSR-load area"
        );
        assert_eq!(
            f(ExitReason::MachineCheckDuringEntry, 0),
            "VM entry failed: a machine-check event occurred during VM entry"
        );
        assert_eq!(EntryFailure::decode(ExitReason::EptViolation, 0), None);
        assert_eq!(
            EntryFailure::decode(ExitReason::Unknown(33 + 0x100), 0),
            None
        );
    }

    #[test]
    fn interruption_information() {
        assert_eq!(InterruptionInfo::decode(0x0000_0B0E), None);
        // #PF with an error code.
        let i = InterruptionInfo::decode(0x8000_0B0E).unwrap();
        assert_eq!(i.vector, 14);
        assert_eq!(i.kind, InterruptionType::HardwareException);
        assert!(i.error_code && !i.nmi_unblocking);
        assert_eq!(
            i.to_string(),
            "hardware exception, vector 14, with error code"
        );
        // NMI with IRET unblocking.
        let i = InterruptionInfo::decode(0x8000_1202).unwrap();
        assert_eq!(i.kind, InterruptionType::Nmi);
        assert!(i.nmi_unblocking);
        assert_eq!(i.to_string(), "NMI, vector 2, NMI unblocked by IRET");
        // Injecting #GP(0) and #UD.
        assert_eq!(
            InterruptionInfo::hardware_exception(13, true).to_entry_field(),
            0x8000_0B0D
        );
        assert_eq!(
            InterruptionInfo::hardware_exception(6, false).to_entry_field(),
            0x8000_0306
        );
        // Bit 12 is not carried into the entry field.
        assert_eq!(
            InterruptionInfo::decode(0x8000_1202)
                .unwrap()
                .to_entry_field(),
            0x8000_0202
        );
        for code in 0..8 {
            assert_eq!(InterruptionType::from_code(code).code(), code);
        }
    }
}
