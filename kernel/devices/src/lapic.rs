//! The local APIC of one vCPU, as the guest sees it in xAPIC mode (SDM
//! Vol. 3A, chapter 11): its registers at [`LAPIC_BASE`] (until the guest
//! moves them through IA32_APIC_BASE), interrupt
//! acceptance and priority, the APIC timer, and IPIs sent through the ICR.
//!
//! # How a VM uses it
//!
//! A [`LocalApic`] is not a bus device: every vCPU has its own, and the
//! exit handler that sees an access to the APIC page calls its vCPU's
//! [`read`](LocalApic::read) / [`write`](LocalApic::write) with the offset
//! in the page. A write may return an [`ApicEffect`] the caller acts on: a
//! level-triggered EOI goes to the I/O APIC, an IPI is routed to the local
//! APICs it names (the model never delivers an IPI itself, not even to
//! itself, so routing stays in one place). Interrupts reach the APIC
//! through [`accept`](LocalApic::accept), [`accept_nmi`](LocalApic::accept_nmi),
//! [`accept_init`](LocalApic::accept_init) and
//! [`accept_sipi`](LocalApic::accept_sipi); before entering the guest the
//! caller runs the timer ([`run_timer`](LocalApic::run_timer)), injects
//! [`acknowledge`](LocalApic::acknowledge)'s vector when the guest can take
//! it, and arms its own timer for [`timer_deadline`](LocalApic::timer_deadline).
//!
//! Time is the VM's TSC. The APIC timer's input clock (before the divide
//! configuration register) is `timer_hz`; the VM reports it as the crystal
//! clock in CPUID leaf 0x15, so a guest need not calibrate it.
//!
//! # Two starting states
//!
//! [`LocalApic::new`] gives the state after power-up or reset (SDM Vol. 3A,
//! 11.4.7.1): software-disabled, every LVT entry masked. Firmware would
//! then set up virtual-wire mode before the OS runs; Ferrovisor starts
//! kernels directly, so [`firmware_state`](LocalApic::firmware_state) sets
//! what a PC BIOS leaves instead.
//!
//! # Modelled, and left out
//!
//! Modelled: every register of Table 11-1 the xAPIC has (version 0x14, six
//! LVT entries), TPR/PPR/APR, IRR/ISR/TMR, EOI, the error status register,
//! logical destinations (flat and cluster), the timer in one-shot,
//! periodic and TSC-deadline modes, ICR IPIs with shorthands, hardware
//! enable and the page's base through IA32_APIC_BASE
//! ([`write_apic_base_msr`](LocalApic::write_apic_base_msr)), NMI/INIT/SIPI
//! latches.
//!
//! Left out: x2APIC (CPUID does not offer it, so IA32_APIC_BASE refuses
//! its enable bit),
//! writable APIC IDs (the ID register is read-only here, as it is on many
//! processors: 11.4.6), EOI-broadcast suppression and focus checking
//! (SVR bits 12 and 9 read 0), the remote read register (reads 0),
//! spurious-interrupt delivery, the thermal, performance-counter and CMCI
//! sources (their LVT entries are storage only; the version's max LVT
//! entry of 5 tells a guest CMCI is absent, so one that checks never
//! touches 0x2F0) and the LINT1 pin (its LVT entry is storage only; NMIs
//! come in through [`accept_nmi`](LocalApic::accept_nmi)).
//!
//! Accesses are 32-bit (SDM Vol. 3A, 11.4.1: narrower ones are model
//! specific): the exit handler passes only 4-byte accesses at 16-byte
//! aligned offsets on; for others it reads 0 and drops the write.

use crate::apic::{DeliveryMode, InterruptMessage};

/// The guest-physical address of the xAPIC register page (the reset value
/// of IA32_APIC_BASE's base field, SDM Vol. 3A, 11.4.4).
pub const LAPIC_BASE: u64 = 0xFEE0_0000;

/// The offset of the EOI register in the xAPIC page (SDM Vol. 3A, 11.4.1,
/// Table 11-1).
pub const EOI_OFFSET: u32 = reg::EOI;

/// The IA32_APIC_BASE MSR (SDM Vol. 3A, 11.4.4, Figure 11-5).
pub const IA32_APIC_BASE_MSR: u32 = 0x1B;

/// IA32_APIC_BASE bit 8: this processor is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;

/// IA32_APIC_BASE bit 11: the APIC is hardware-enabled (11.4.3).
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

/// IA32_APIC_BASE bit 10: x2APIC mode (11.12.1).
pub const APIC_BASE_EXTD: u64 = 1 << 10;

/// A write of IA32_APIC_BASE the processor refuses with #GP(0) (SDM Vol.
/// 3A, 11.4.4 and 11.12.5: reserved bits, and x2APIC mode, which this
/// APIC does not offer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicBaseError {
    /// A reserved bit (0-7, 9, or at or above MAXPHYADDR) is set.
    Reserved,
    /// The x2APIC enable bit is set; CPUID.1:ECX.x2APIC is 0.
    X2ApicUnsupported,
}

/// The IA32_TSC_DEADLINE MSR (SDM Vol. 3A, 11.5.4.1).
pub const IA32_TSC_DEADLINE_MSR: u32 = 0x6E0;

/// The version register (11.4.8, Figure 11-7): version 0x14 (an
/// integrated xAPIC), max LVT entry 5 (six entries: timer, thermal,
/// performance counters, LINT0, LINT1, error), no EOI-broadcast
/// suppression.
pub const LAPIC_VERSION: u32 = 0x0005_0014;

/// Register offsets in the APIC page (SDM Vol. 3A, Table 11-1). Every
/// register is 32 bits at a 16-byte-aligned offset.
mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0A0;
    pub const EOI: u32 = 0x0B0;
    pub const RRD: u32 = 0x0C0;
    pub const LDR: u32 = 0x0D0;
    pub const DFR: u32 = 0x0E0;
    pub const SVR: u32 = 0x0F0;
    pub const ISR: u32 = 0x100;
    pub const ISR_LAST: u32 = 0x170;
    pub const TMR: u32 = 0x180;
    pub const TMR_LAST: u32 = 0x1F0;
    pub const IRR: u32 = 0x200;
    pub const IRR_LAST: u32 = 0x270;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2F0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

/// The size of the APIC register page.
const PAGE_SIZE: u32 = 0x1000;
/// The offset bits of an address in the APIC register page.
const PAGE_OFFSET: u64 = 0xFFF;

/// LVT bits (SDM Vol. 3A, 11.5.1, Figure 11-8).
const LVT_VECTOR: u32 = 0xFF;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE_SHIFT: u32 = 17;
/// The bits software can write in each LVT entry (delivery status and
/// remote IRR are read-only, the rest reserved).
const LVT_TIMER_WRITABLE: u32 = 0x0007_00FF;
const LVT_FULL_WRITABLE: u32 = 0x0001_07FF;
const LVT_LINT_WRITABLE: u32 = 0x0001_A7FF;
const LVT_ERROR_WRITABLE: u32 = 0x0001_00FF;
const LVT_DELIVERY_SHIFT: u32 = 8;

/// SVR bits (11.9, Figure 11-23): the spurious vector and the software
/// enable bit are all this model implements.
const SVR_ENABLE: u32 = 1 << 8;
const SVR_WRITABLE: u32 = 0x1FF;
const SVR_RESET: u32 = 0xFF;

/// DFR (11.6.2.2, Figure 11-14): the model in bits 31:28, the rest reads
/// as ones.
const DFR_MODEL: u32 = 0xF000_0000;
const DFR_RESET: u32 = 0xFFFF_FFFF;
const DFR_FLAT: u32 = 0xF000_0000;

/// LDR (Figure 11-13): the logical ID in bits 31:24.
const LDR_WRITABLE: u32 = 0xFF00_0000;

/// ICR bits (11.6.1, Figure 11-12).
const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;
const ICR_HIGH_WRITABLE: u32 = 0xFF00_0000;
const ICR_DELIVERY_SHIFT: u32 = 8;
const ICR_LOGICAL: u32 = 1 << 11;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_LEVEL: u32 = 1 << 15;
const ICR_SHORTHAND_SHIFT: u32 = 18;

/// Divide configuration (11.5.4, Figure 11-10): bits 0, 1 and 3.
const DIVIDE_WRITABLE: u32 = 0xB;

/// ESR bits (11.5.3, Figure 11-9) this model sets.
/// Bit 5: the APIC was asked to send a fixed IPI with a vector below 16.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// Bit 6: the APIC received (or generated locally) a vector below 16.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// Bit 7: the guest accessed a reserved register.
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// Vectors 0..16 are reserved for exceptions and illegal in an interrupt
/// message or an LVT entry (11.5.2).
const FIRST_LEGAL_VECTOR: u8 = 16;

/// The 256 bits of the IRR, ISR or TMR: bit `v` of word `v / 32`, as the
/// eight 32-bit registers show them (11.8.4, Figure 11-20), and which of
/// the words are not zero, so that the highest vector is found without
/// looking at every word (the ISR's and IRR's are asked for at every
/// EOI and every interrupt check).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorSet {
    words: [u32; 8],
    /// Bit `w` set exactly when `words[w]` is not 0.
    nonzero: u8,
}

impl VectorSet {
    /// The word and bit of `vector`: always in range, since `vector >> 5`
    /// is at most 7.
    fn word_bit(vector: u8) -> (usize, u32) {
        (usize::from(vector >> 5), 1u32 << (vector & 31))
    }

    fn set(&mut self, vector: u8) {
        let (word, bit) = Self::word_bit(vector);
        if let Some(w) = self.words.get_mut(word) {
            *w |= bit;
            self.nonzero |= 1 << word;
        }
    }

    fn clear(&mut self, vector: u8) {
        let (word, bit) = Self::word_bit(vector);
        if let Some(w) = self.words.get_mut(word) {
            *w &= !bit;
            if *w == 0 {
                self.nonzero &= !(1 << word);
            }
        }
    }

    fn contains(&self, vector: u8) -> bool {
        let (word, bit) = Self::word_bit(vector);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The highest vector in the set.
    fn highest(&self) -> Option<u8> {
        if self.nonzero == 0 {
            return None;
        }
        // The highest word that is not zero: at most 7.
        let word = 7u32.wrapping_sub(self.nonzero.leading_zeros());
        let bits = *self.words.get(usize::try_from(word).ok()?)?;
        // word <= 7 and the bit index <= 31: the sum fits a byte.
        let top = 31u32.wrapping_sub(bits.leading_zeros());
        u8::try_from(word.wrapping_mul(32).wrapping_add(top)).ok()
    }

    /// The 32-bit register `index` (0..8); 0 past the end.
    fn word(&self, index: u32) -> u32 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.words.get(i))
            .copied()
            .unwrap_or(0)
    }
}

/// The priority class of a vector or priority value: its high nibble
/// (11.8.3).
const fn class(value: u8) -> u8 {
    value >> 4
}

/// The APIC timer's mode, LVT timer bits 18:17 (11.5.4, Figure 11-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// 00b: counts down once from the initial count.
    OneShot,
    /// 01b: reloads the initial count at every expiry.
    Periodic,
    /// 10b: fires when the TSC reaches IA32_TSC_DEADLINE (11.5.4.1).
    TscDeadline,
    /// 11b: reserved; the timer does not run in it.
    Reserved,
}

impl TimerMode {
    const fn from_lvt(lvt: u32) -> Self {
        match (lvt >> LVT_TIMER_MODE_SHIFT) & 0b11 {
            0b00 => Self::OneShot,
            0b01 => Self::Periodic,
            0b10 => Self::TscDeadline,
            _ => Self::Reserved,
        }
    }
}

/// Where the one-shot or periodic countdown stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Countdown {
    /// Not counting: the current count reads 0.
    Idle,
    /// The count was `count` at TSC `since`; it reaches 0 at `deadline`
    /// (`None` when a clock rate is 0, so it never does).
    Counting {
        count: u32,
        since: u64,
        deadline: Option<u64>,
    },
}

/// Which destinations an IPI goes to: the ICR's destination shorthand
/// (bits 19:18, SDM Vol. 3A, 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpiShorthand {
    /// 00b: the APICs the message's destination names.
    Destination,
    /// 01b: the sending APIC only.
    SelfOnly,
    /// 10b: every APIC, the sender included (the destination is ignored).
    AllIncludingSelf,
    /// 11b: every APIC but the sender.
    AllExcludingSelf,
}

impl IpiShorthand {
    const fn from_bits(bits: u32) -> Self {
        match bits & 0b11 {
            0b00 => Self::Destination,
            0b01 => Self::SelfOnly,
            0b10 => Self::AllIncludingSelf,
            _ => Self::AllExcludingSelf,
        }
    }
}

/// An interprocessor interrupt the guest sent by writing the ICR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipi {
    /// The message; its destination counts only with
    /// [`IpiShorthand::Destination`].
    pub message: InterruptMessage,
    /// Whom it goes to.
    pub shorthand: IpiShorthand,
}

/// What the caller must do after [`LocalApic::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApicEffect {
    /// Nothing.
    None,
    /// The guest ended the interrupt `vector`; when `level_triggered`, the
    /// caller sends the EOI on to the I/O APIC (11.8.5).
    Eoi {
        /// The vector whose in-service bit was cleared.
        vector: u8,
        /// Whether the TMR had it: a level-triggered interrupt.
        level_triggered: bool,
    },
    /// The caller routes this IPI (self-IPIs included).
    Ipi(Ipi),
}

/// What an INIT or start-up IPI asked of this vCPU (SDM Vol. 3A, 8.4.4),
/// for the caller's start-up state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartupEvent {
    /// An INIT arrived.
    Init,
    /// A start-up IPI arrived: start in real mode at `vector << 12`.
    StartUp {
        /// The start page.
        vector: u8,
    },
}

/// A local APIC's addressing as one word: its ID (bits 7:0), its logical
/// ID (LDR bits 31:24, in bits 15:8), whether its DFR selects the flat
/// model (bit 30) and whether it is hardware-enabled (bit 31). The vCPUs
/// of one VM publish theirs so that another vCPU sending an IPI can find
/// its destinations without taking their locks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ApicAddress(pub u32);

impl ApicAddress {
    const FLAT: u32 = 1 << 30;
    const ENABLED: u32 = 1 << 31;

    /// The APIC ID.
    pub const fn id(self) -> u8 {
        self.0 as u8
    }

    /// Whether the APIC with this address is a destination of a message
    /// with destination field `dest` (11.6.2): physical: its ID, or 0xFF
    /// for all; logical, flat model: its logical ID shares a bit with
    /// `dest`; cluster model: the clusters (high nibbles) are equal, or
    /// `dest`'s is 0xF for all clusters, and the low nibbles share a bit.
    /// A logical 0xFF reaches every APIC in both models. A
    /// hardware-disabled APIC matches nothing.
    pub const fn matches(self, dest: u8, logical: bool) -> bool {
        if self.0 & Self::ENABLED == 0 {
            return false;
        }
        if dest == 0xFF {
            return true;
        }
        if !logical {
            return dest == self.id();
        }
        let ldr = (self.0 >> 8) as u8;
        if self.0 & Self::FLAT != 0 {
            ldr & dest != 0
        } else {
            let cluster = dest >> 4;
            (cluster == 0xF || cluster == ldr >> 4) && ldr & dest & 0x0F != 0
        }
    }
}

/// One vCPU's local APIC (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalApic {
    id: u8,
    tsc_hz: u64,
    timer_hz: u64,
    /// IA32_APIC_BASE bit 11.
    hardware_enabled: bool,
    /// IA32_APIC_BASE's base field: the guest-physical address of the
    /// register page.
    base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    tmr: VectorSet,
    irr: VectorSet,
    /// What ESR reads: the errors latched by the last ESR write.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt_cmci: u32,
    lvt_timer: u32,
    lvt_thermal: u32,
    lvt_perf: u32,
    lvt_lint0: u32,
    lvt_lint1: u32,
    lvt_error: u32,
    timer_initial: u32,
    timer_divide: u32,
    countdown: Countdown,
    /// IA32_TSC_DEADLINE; 0 is disarmed.
    tsc_deadline: u64,
    nmi: bool,
    init: bool,
    sipi: Option<u8>,
}

impl LocalApic {
    /// The APIC with ID `apic_id`, hardware-enabled, in its power-up state
    /// (see [`reset`](Self::reset)). `tsc_hz` is the VM's TSC rate and
    /// `timer_hz` the timer's input clock before the divider; with either
    /// 0 the timer never expires.
    pub fn new(apic_id: u8, tsc_hz: u64, timer_hz: u64) -> Self {
        let mut apic = Self {
            id: apic_id,
            tsc_hz,
            timer_hz,
            hardware_enabled: true,
            base: LAPIC_BASE,
            tpr: 0,
            ldr: 0,
            dfr: DFR_RESET,
            svr: SVR_RESET,
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            irr: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt_cmci: LVT_MASKED,
            lvt_timer: LVT_MASKED,
            lvt_thermal: LVT_MASKED,
            lvt_perf: LVT_MASKED,
            lvt_lint0: LVT_MASKED,
            lvt_lint1: LVT_MASKED,
            lvt_error: LVT_MASKED,
            timer_initial: 0,
            timer_divide: 0,
            countdown: Countdown::Idle,
            tsc_deadline: 0,
            nmi: false,
            init: false,
            sipi: None,
        };
        apic.reset();
        apic
    }

    /// The state after power-up, reset or INIT (SDM Vol. 3A, 11.4.7.1 and
    /// 11.4.7.3): IRR, ISR, TMR, ICR, LDR and TPR 0; the timer's counts and
    /// divider 0; DFR all ones; every LVT entry masked and otherwise 0; SVR
    /// 0xFF, so the APIC is software-disabled; ESR 0; a pending NMI
    /// dropped. The ID, the version, the hardware enable and a latched
    /// INIT or start-up IPI (which the caller's start-up state machine
    /// handles, and which an INIT reset must not lose) are kept.
    pub fn reset(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = DFR_RESET;
        self.svr = SVR_RESET;
        self.isr = VectorSet::default();
        self.tmr = VectorSet::default();
        self.irr = VectorSet::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt_cmci = LVT_MASKED;
        self.lvt_timer = LVT_MASKED;
        self.lvt_thermal = LVT_MASKED;
        self.lvt_perf = LVT_MASKED;
        self.lvt_lint0 = LVT_MASKED;
        self.lvt_lint1 = LVT_MASKED;
        self.lvt_error = LVT_MASKED;
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.countdown = Countdown::Idle;
        self.tsc_deadline = 0;
        self.nmi = false;
    }

    /// What a PC BIOS leaves for the OS, set instead of running firmware
    /// (Ferrovisor starts kernels directly): the reset state, then
    /// software-enabled with spurious vector 0xFF (SVR 0x1FF), LINT0 as
    /// ExtINT and unmasked (virtual-wire mode, so the 8259's interrupts
    /// reach the CPU; MP specification 1.4, 3.6.2.2), LINT1 as NMI and
    /// unmasked, flat logical destinations; the timer, thermal,
    /// performance-counter, CMCI and error entries stay masked. Does
    /// nothing to a hardware-disabled APIC.
    pub fn firmware_state(&mut self) {
        if !self.hardware_enabled {
            return;
        }
        self.reset();
        self.svr = SVR_ENABLE | SVR_RESET;
        self.lvt_lint0 = DeliveryMode::ExtInt.bits() << LVT_DELIVERY_SHIFT;
        self.lvt_lint1 = DeliveryMode::Nmi.bits() << LVT_DELIVERY_SHIFT;
    }

    /// Sets IA32_APIC_BASE bit 11 (SDM Vol. 3A, 11.4.3). Clearing it
    /// resets the APIC and drops every pending NMI, INIT and start-up IPI:
    /// a hardware-disabled APIC reads as 0, ignores writes, accepts and
    /// delivers nothing, and lets the 8259's INTR through
    /// ([`wants_extint`](Self::wants_extint)). Setting it again leaves the
    /// power-up state.
    pub fn set_hardware_enabled(&mut self, on: bool) {
        if !on {
            self.reset();
            self.init = false;
            self.sipi = None;
        }
        self.hardware_enabled = on;
    }

    /// Whether IA32_APIC_BASE bit 11 is set.
    pub const fn is_hardware_enabled(&self) -> bool {
        self.hardware_enabled
    }

    /// Whether SVR bit 8 is set (and the APIC hardware-enabled).
    pub const fn is_software_enabled(&self) -> bool {
        self.hardware_enabled && self.svr & SVR_ENABLE != 0
    }

    /// What RDMSR IA32_APIC_BASE reads: the base, the enable bit, and the
    /// BSP bit when `bsp`.
    pub const fn apic_base_msr(&self, bsp: bool) -> u64 {
        let enable = if self.hardware_enabled {
            APIC_BASE_ENABLE
        } else {
            0
        };
        let bsp = if bsp { APIC_BASE_BSP } else { 0 };
        self.base | enable | bsp
    }

    /// WRMSR IA32_APIC_BASE (SDM Vol. 3A, 11.4.4, Figure 11-5, and the
    /// state transitions of 11.12.5): the base field (bits 12 up to
    /// `phys_bits`, the guest's MAXPHYADDR) moves the register page;
    /// clearing the enable bit disables the APIC and resets it (see
    /// [`set_hardware_enabled`](Self::set_hardware_enabled)), setting it
    /// again brings it back in its reset state. The BSP bit is read-only:
    /// what is written there is ignored. Reserved bits, and the x2APIC
    /// enable bit (no x2APIC is offered, so that mode cannot be entered),
    /// refuse the whole write and change nothing: the caller injects
    /// #GP(0).
    ///
    /// # Errors
    ///
    /// [`ApicBaseError`] as its variants say.
    pub fn write_apic_base_msr(&mut self, value: u64, phys_bits: u8) -> Result<(), ApicBaseError> {
        let phys_bits = u32::from(phys_bits.clamp(32, 52));
        let addressable = u64::MAX
            .checked_shr(64u32.saturating_sub(phys_bits))
            .unwrap_or(0);
        let base_mask = addressable & !PAGE_OFFSET;
        let allowed = base_mask | APIC_BASE_ENABLE | APIC_BASE_EXTD | APIC_BASE_BSP;
        if value & !allowed != 0 {
            return Err(ApicBaseError::Reserved);
        }
        if value & APIC_BASE_EXTD != 0 {
            return Err(ApicBaseError::X2ApicUnsupported);
        }
        self.base = value & base_mask;
        let on = value & APIC_BASE_ENABLE != 0;
        if on != self.hardware_enabled {
            self.set_hardware_enabled(on);
        }
        Ok(())
    }

    /// The guest-physical address of the register page (IA32_APIC_BASE's
    /// base field), whether or not the APIC is enabled.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Whether an access to guest-physical `gpa` reaches this APIC's
    /// registers: it is on the page at [`base`](Self::base) and the APIC
    /// is hardware-enabled. A disabled APIC decodes nothing; its page is
    /// then whatever else the platform has there.
    pub const fn decodes(&self, gpa: u64) -> bool {
        self.hardware_enabled && gpa & !PAGE_OFFSET == self.base
    }

    /// The APIC ID.
    pub const fn id(&self) -> u8 {
        self.id
    }

    /// The task-priority register (11.8.3.1).
    pub const fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the task-priority register.
    pub fn set_tpr(&mut self, value: u8) {
        self.tpr = value;
    }

    /// CR8: TPR bits 7:4 (SDM Vol. 3A, 11.8.6).
    pub const fn cr8(&self) -> u64 {
        // Widening a 4-bit value.
        class(self.tpr) as u64
    }

    /// Sets CR8: TPR bits 7:4 from `cr8` bits 3:0, TPR bits 3:0 cleared.
    /// (The caller raises #GP for reserved bits 63:4 before this.)
    pub fn set_cr8(&mut self, cr8: u64) {
        // Bits 3:0 only: the cast keeps all of them.
        self.tpr = ((cr8 & 0xF) as u8) << 4;
    }

    /// The processor-priority register (11.8.3.1): the TPR, or the class of
    /// the highest in-service vector when that is above the TPR's class.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if class(self.tpr) >= class(isrv) {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The arbitration-priority register (11.6.2.4, Figure 11-15), for
    /// the router's lowest-priority choice.
    pub fn apr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        let irrv = self.irr.highest().unwrap_or(0);
        if class(self.tpr) >= class(irrv) && class(self.tpr) > class(isrv) {
            self.tpr
        } else {
            (self.tpr & 0xF0).max(isrv & 0xF0).max(irrv & 0xF0)
        }
    }

    /// The guest reads the 32-bit register at `offset` in the APIC page
    /// at TSC `now`. Offsets that are not 16-byte aligned, outside the
    /// page, or of write-only and reserved registers read 0; a reserved
    /// register also sets ESR's illegal-register bit (11.5.3).
    pub fn read(&mut self, offset: u32, now: u64) -> u32 {
        if !self.hardware_enabled || offset >= PAGE_SIZE || offset & 0xF != 0 {
            return 0;
        }
        match offset {
            reg::ID => u32::from(self.id) << 24,
            reg::VERSION => LAPIC_VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::APR => u32::from(self.apr()),
            reg::PPR => u32::from(self.ppr()),
            // EOI is write-only; remote read is not supported (11.4.1).
            reg::EOI | reg::RRD => 0,
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            reg::ISR..=reg::ISR_LAST => self.isr.word(offset.wrapping_sub(reg::ISR) >> 4),
            reg::TMR..=reg::TMR_LAST => self.tmr.word(offset.wrapping_sub(reg::TMR) >> 4),
            reg::IRR..=reg::IRR_LAST => self.irr.word(offset.wrapping_sub(reg::IRR) >> 4),
            reg::ESR => self.esr,
            reg::LVT_CMCI => self.lvt_cmci,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            reg::LVT_TIMER => self.lvt_timer,
            reg::LVT_THERMAL => self.lvt_thermal,
            reg::LVT_PERF => self.lvt_perf,
            reg::LVT_LINT0 => self.lvt_lint0,
            reg::LVT_LINT1 => self.lvt_lint1,
            reg::LVT_ERROR => self.lvt_error,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => {
                self.error(ESR_ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// The guest writes `value` to the 32-bit register at `offset` at TSC
    /// `now`. Writes to read-only registers, to offsets that are not
    /// 16-byte aligned or are outside the page, are ignored; to reserved
    /// registers they also set ESR's illegal-register bit. Reserved bits
    /// of a register are dropped.
    pub fn write(&mut self, offset: u32, value: u32, now: u64) -> ApicEffect {
        if !self.hardware_enabled || offset >= PAGE_SIZE || offset & 0xF != 0 {
            return ApicEffect::None;
        }
        match offset {
            // Read-only here (the ID: see the module documentation).
            reg::ID
            | reg::VERSION
            | reg::APR
            | reg::PPR
            | reg::RRD
            | reg::ISR..=reg::IRR_LAST
            | reg::TIMER_CURRENT => {}
            // Bits 31:8 are reserved.
            reg::TPR => self.tpr = (value & 0xFF) as u8,
            reg::EOI => return self.eoi(),
            reg::LDR => self.ldr = value & LDR_WRITABLE,
            reg::DFR => self.dfr = (value & DFR_MODEL) | !DFR_MODEL,
            reg::SVR => self.write_svr(value, now),
            // 11.5.3: a write latches the errors seen since the last one.
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::LVT_CMCI => self.lvt_cmci = self.lvt_value(value, LVT_FULL_WRITABLE),
            reg::ICR_LOW => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                return self.send_ipi();
            }
            reg::ICR_HIGH => self.icr_high = value & ICR_HIGH_WRITABLE,
            reg::LVT_TIMER => self.write_lvt_timer(value, now),
            reg::LVT_THERMAL => self.lvt_thermal = self.lvt_value(value, LVT_FULL_WRITABLE),
            reg::LVT_PERF => self.lvt_perf = self.lvt_value(value, LVT_FULL_WRITABLE),
            reg::LVT_LINT0 => self.lvt_lint0 = self.lvt_value(value, LVT_LINT_WRITABLE),
            reg::LVT_LINT1 => self.lvt_lint1 = self.lvt_value(value, LVT_LINT_WRITABLE),
            reg::LVT_ERROR => self.lvt_error = self.lvt_value(value, LVT_ERROR_WRITABLE),
            reg::TIMER_INITIAL => self.write_initial_count(value, now),
            reg::TIMER_DIVIDE => self.write_divide(value, now),
            _ => self.error(ESR_ILLEGAL_REGISTER),
        }
        ApicEffect::None
    }

    /// An LVT value as written: reserved and read-only bits dropped, and
    /// masked while the APIC is software-disabled (11.4.7.2: the mask bits
    /// cannot be cleared then).
    fn lvt_value(&self, value: u32, writable: u32) -> u32 {
        let value = value & writable;
        if self.is_software_enabled() {
            value
        } else {
            value | LVT_MASKED
        }
    }

    fn write_svr(&mut self, value: u32, now: u64) {
        self.svr = value & SVR_WRITABLE;
        if self.svr & SVR_ENABLE == 0 {
            // 11.4.7.2: software-disabling sets every LVT mask bit; IRR and
            // ISR are kept. Due timer work is settled while unmasked.
            self.run_timer(now);
            for lvt in [
                &mut self.lvt_cmci,
                &mut self.lvt_timer,
                &mut self.lvt_thermal,
                &mut self.lvt_perf,
                &mut self.lvt_lint0,
                &mut self.lvt_lint1,
                &mut self.lvt_error,
            ] {
                *lvt |= LVT_MASKED;
            }
        }
    }

    /// Whether an EOI now would end a level-triggered interrupt, which the
    /// caller must pass on to the I/O APIC (see [`ApicEffect::Eoi`]).
    pub fn eoi_ends_level(&self) -> bool {
        self.isr.highest().is_some_and(|v| self.tmr.contains(v))
    }

    /// A write to the EOI register at `base` + [`EOI_OFFSET`], recognised
    /// by its address alone (a backend that reports the register and not
    /// the instruction): what [`Self::write`] does for it, with any value
    /// (11.8.5: the value is ignored) and any width. `None` when this APIC
    /// does not decode `base` (disabled, or moved elsewhere): the access is
    /// then not this APIC's.
    pub fn eoi_at(&mut self, base: u64) -> Option<ApicEffect> {
        self.decodes(base).then(|| self.eoi())
    }

    /// The EOI register was written (11.8.5): the highest in-service vector
    /// is done.
    fn eoi(&mut self) -> ApicEffect {
        let Some(vector) = self.isr.highest() else {
            return ApicEffect::None;
        };
        self.isr.clear(vector);
        ApicEffect::Eoi {
            vector,
            level_triggered: self.tmr.contains(vector),
        }
    }

    /// The ICR low half was written: the IPI it describes (11.6.1), or
    /// nothing for the combinations the processor does not send.
    fn send_ipi(&mut self) -> ApicEffect {
        let low = self.icr_low;
        // Bits 7:0: the cast keeps all of them.
        let vector = (low & 0xFF) as u8;
        let shorthand = IpiShorthand::from_bits(low >> ICR_SHORTHAND_SHIFT);
        let mode = match DeliveryMode::from_bits(low >> ICR_DELIVERY_SHIFT) {
            // 011b and 111b are reserved in the ICR.
            None | Some(DeliveryMode::ExtInt) => return ApicEffect::None,
            // INIT level de-assert (level-triggered INIT with the level bit
            // clear) only synchronised arbitration IDs on P6-family
            // processors; later ones ignore it (11.6.1).
            Some(DeliveryMode::Init) if low & ICR_LEVEL != 0 && low & ICR_ASSERT == 0 => {
                return ApicEffect::None
            }
            Some(mode) => mode,
        };
        if mode.uses_vector() && vector < FIRST_LEGAL_VECTOR {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return ApicEffect::None;
        }
        // Only fixed interrupts may be sent to self (11.6.1, Table 11-4).
        if shorthand == IpiShorthand::SelfOnly && mode != DeliveryMode::Fixed {
            return ApicEffect::None;
        }
        ApicEffect::Ipi(Ipi {
            message: InterruptMessage {
                vector,
                mode,
                // Bits 31:24: the cast keeps all of them.
                dest: (self.icr_high >> 24) as u8,
                logical: low & ICR_LOGICAL != 0,
                // The trigger mode matters only for INIT level de-assert;
                // IPIs are edge-triggered (11.6.1).
                level_triggered: false,
            },
            shorthand,
        })
    }

    /// Records the errors `bits` in the ESR (visible after the next ESR
    /// write) and raises the error interrupt if its LVT entry is unmasked
    /// (11.5.3).
    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        if self.lvt_error & LVT_MASKED == 0 {
            // Bits 7:0: the cast keeps all of them.
            let vector = (self.lvt_error & LVT_VECTOR) as u8;
            if vector < FIRST_LEGAL_VECTOR {
                self.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR;
            } else {
                self.irr.set(vector);
                self.tmr.clear(vector);
            }
        }
    }

    /// Puts `vector` in the IRR (and the TMR when level-triggered), or
    /// flags an illegal vector (11.5.2, 11.8.4).
    fn raise(&mut self, vector: u8, level_triggered: bool) {
        if vector < FIRST_LEGAL_VECTOR {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    /// A fixed or lowest-priority interrupt with vector `vector` arrives
    /// (from the I/O APIC or an IPI): it becomes pending in the IRR, and in
    /// the TMR when `level_triggered` (11.8.4). Vectors 0..16 are dropped
    /// and set ESR's received-illegal-vector bit. A software-disabled APIC
    /// takes only NMI, INIT and start-up messages (11.4.7.2) and a
    /// hardware-disabled one nothing, so they drop it.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) {
        if self.is_software_enabled() {
            self.raise(vector, level_triggered);
        }
    }

    /// An NMI arrives; it stays pending until [`take_nmi`](Self::take_nmi).
    pub fn accept_nmi(&mut self) {
        if self.hardware_enabled {
            self.nmi = true;
        }
    }

    /// Whether an NMI is pending.
    pub const fn nmi_pending(&self) -> bool {
        self.nmi
    }

    /// Takes the pending NMI, if any, for injection.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// An INIT arrives: latched for [`take_startup`](Self::take_startup).
    /// It supersedes a start-up IPI not taken yet.
    pub fn accept_init(&mut self) {
        if self.hardware_enabled {
            self.init = true;
            self.sipi = None;
        }
    }

    /// A start-up IPI with start page `vector` arrives: latched for
    /// [`take_startup`](Self::take_startup) unless one is already (the
    /// first of the usual two wins; whether to act on it is the caller's
    /// start-up state machine's business: SDM Vol. 3A, 8.4.4.1).
    pub fn accept_sipi(&mut self, vector: u8) {
        if self.hardware_enabled && self.sipi.is_none() {
            self.sipi = Some(vector);
        }
    }

    /// Takes the next latched INIT or start-up event: an INIT first, then
    /// a start-up IPI that came after it.
    pub fn take_startup(&mut self) -> Option<StartupEvent> {
        if core::mem::take(&mut self.init) {
            return Some(StartupEvent::Init);
        }
        self.sipi
            .take()
            .map(|vector| StartupEvent::StartUp { vector })
    }

    /// Whether the vCPU's INTR input should come from the 8259 (the caller
    /// then takes the vector with an INTA cycle): the APIC is
    /// hardware-disabled, so the pin bypasses it (11.4.3), or LINT0 is
    /// unmasked with ExtINT delivery (virtual-wire mode, 11.5.1).
    pub fn wants_extint(&self) -> bool {
        !self.hardware_enabled
            || (self.lvt_lint0 & LVT_MASKED == 0
                && DeliveryMode::from_bits(self.lvt_lint0 >> LVT_DELIVERY_SHIFT)
                    == Some(DeliveryMode::ExtInt))
    }

    /// The vector the APIC would deliver now (SDM Vol. 3A, 11.8.3.1 and
    /// 11.8.4): the highest in the IRR whose priority class is above the
    /// PPR's, when the APIC is software-enabled.
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.is_software_enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        (class(vector) > class(self.ppr())).then_some(vector)
    }

    /// Takes [`pending_vector`](Self::pending_vector) for injection: it
    /// moves from the IRR to the ISR until the guest's EOI.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.pending_vector()?;
        self.service(vector);
        Some(vector)
    }

    /// [`acknowledge`](Self::acknowledge) for a caller that has just asked
    /// [`pending_vector`](Self::pending_vector) and got `vector`, without
    /// working it out again: `vector` moves from the IRR to the ISR.
    pub fn service(&mut self, vector: u8) {
        self.irr.clear(vector);
        self.isr.set(vector);
    }

    /// Whether this APIC is a destination of a message with destination
    /// field `dest` (11.6.2): physical: its ID, or 0xFF for all; logical,
    /// flat model: its logical ID (LDR bits 31:24) shares a bit with `dest`;
    /// cluster model: the clusters (high nibbles) are equal, or `dest`'s is
    /// 0xF for all clusters, and the low nibbles share a bit. A logical
    /// 0xFF reaches every APIC in both models. A hardware-disabled APIC
    /// matches nothing.
    pub fn matches(&self, dest: u8, logical: bool) -> bool {
        self.address().matches(dest, logical)
    }

    /// What a sender needs to know of this APIC to decide whether a
    /// message is for it, packed for another vCPU to read without this
    /// one's lock (see [`ApicAddress`]).
    pub fn address(&self) -> ApicAddress {
        let mut word = u32::from(self.id) | ((self.ldr >> 24) << 8);
        if self.dfr & DFR_MODEL == DFR_FLAT {
            word |= ApicAddress::FLAT;
        }
        if self.hardware_enabled {
            word |= ApicAddress::ENABLED;
        }
        ApicAddress(word)
    }

    // ----- The timer (SDM Vol. 3A, 11.5.4) -----

    /// The timer's mode.
    pub const fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt_timer)
    }

    /// The divide configuration as a divisor: 1, 2, 4, ..., 128
    /// (Figure 11-10: bits 3, 1, 0 give log2 of the divisor minus one, 111b
    /// dividing by 1).
    fn divisor(&self) -> u64 {
        let code = ((self.timer_divide & 0b1000) >> 1) | (self.timer_divide & 0b11);
        if code == 0b111 {
            1
        } else {
            2u64.wrapping_shl(code)
        }
    }

    /// TSC ticks for `counts` timer counts at the current divisor, rounded
    /// up (so the count reads 0 exactly at the deadline); `None` when a
    /// rate is 0.
    fn ticks_for(&self, counts: u32) -> Option<u64> {
        if self.tsc_hz == 0 || self.timer_hz == 0 {
            return None;
        }
        let input_ticks = u128::from(counts).saturating_mul(u128::from(self.divisor()));
        let ticks = input_ticks
            .saturating_mul(u128::from(self.tsc_hz))
            .div_ceil(u128::from(self.timer_hz));
        Some(u64::try_from(ticks).unwrap_or(u64::MAX))
    }

    /// Whole timer counts in `ticks` TSC ticks at the current divisor
    /// (0 when the TSC rate is 0).
    fn counts_in(&self, ticks: u64) -> u64 {
        let input = u128::from(ticks).saturating_mul(u128::from(self.timer_hz));
        let per_count = u128::from(self.tsc_hz).saturating_mul(u128::from(self.divisor()));
        input
            .checked_div(per_count)
            .map_or(0, |counts| u64::try_from(counts).unwrap_or(u64::MAX))
    }

    /// The current-count register at `now` (11.5.4): 0 when idle or in
    /// TSC-deadline mode; a periodic count that passed a deadline not yet
    /// run reads where the reloaded count stands.
    fn current_count(&self, now: u64) -> u32 {
        let Countdown::Counting {
            count,
            since,
            deadline,
        } = self.countdown
        else {
            return 0;
        };
        let (count, since) = match (self.timer_mode(), deadline) {
            (TimerMode::OneShot, _) => (count, since),
            (TimerMode::Periodic, Some(deadline)) if now >= deadline => {
                let period = self.ticks_for(self.timer_initial).unwrap_or(0);
                let into = now.wrapping_sub(deadline).checked_rem(period).unwrap_or(0);
                (self.timer_initial, now.wrapping_sub(into))
            }
            (TimerMode::Periodic, _) => (count, since),
            (TimerMode::TscDeadline | TimerMode::Reserved, _) => return 0,
        };
        let elapsed = self.counts_in(now.saturating_sub(since));
        let left = u64::from(count).saturating_sub(elapsed);
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    /// Starts counting down from `count` at `now` (idle for 0: writing 0
    /// stops the timer, 11.5.4).
    fn start_countdown(&mut self, count: u32, now: u64) {
        self.countdown = if count == 0 {
            Countdown::Idle
        } else {
            Countdown::Counting {
                count,
                since: now,
                deadline: self.ticks_for(count).map(|ticks| now.saturating_add(ticks)),
            }
        };
    }

    fn write_lvt_timer(&mut self, value: u32, now: u64) {
        // Expiries due before the write happen under the old entry.
        self.run_timer(now);
        let old_mode = self.timer_mode();
        self.lvt_timer = self.lvt_value(value, LVT_TIMER_WRITABLE);
        if self.timer_mode() != old_mode {
            // 11.5.4.1: a write that changes the timer mode disarms it.
            self.countdown = Countdown::Idle;
            self.tsc_deadline = 0;
        }
    }

    fn write_initial_count(&mut self, value: u32, now: u64) {
        match self.timer_mode() {
            // 11.5.4.1: ignored in TSC-deadline mode.
            TimerMode::TscDeadline => {}
            TimerMode::OneShot | TimerMode::Periodic => {
                self.run_timer(now);
                self.timer_initial = value;
                self.start_countdown(value, now);
            }
            TimerMode::Reserved => self.timer_initial = value,
        }
    }

    fn write_divide(&mut self, value: u32, now: u64) {
        self.run_timer(now);
        // The count so far was at the old rate; the rest runs at the new.
        let current = self.current_count(now);
        self.timer_divide = value & DIVIDE_WRITABLE;
        if let Countdown::Counting { .. } = self.countdown {
            self.start_countdown(current, now);
        }
    }

    /// The TSC at which the timer next needs [`run_timer`](Self::run_timer):
    /// `None` when it is idle, cannot expire, or is masked (a masked timer
    /// keeps counting but delivers nothing; its state catches up when the
    /// entry is written). May be at or before now: then it is due.
    pub fn timer_deadline(&self) -> Option<u64> {
        if !self.hardware_enabled || self.lvt_timer & LVT_MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::OneShot | TimerMode::Periodic => match self.countdown {
                Countdown::Counting { deadline, .. } => deadline,
                Countdown::Idle => None,
            },
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            TimerMode::Reserved => None,
        }
    }

    /// Runs the timer at `now`: if it is due, its vector goes into the IRR
    /// (unless the entry is masked) and it re-arms (SDM Vol. 3A, 11.5.4). A
    /// one-shot count goes idle (the current count reads 0); a periodic one
    /// reloads from the deadline it passed, or, when more than a period
    /// behind, from the last period boundary before `now` (one interrupt,
    /// not one per missed period); a TSC deadline disarms and clears
    /// IA32_TSC_DEADLINE, masked or not (11.5.4.1).
    pub fn run_timer(&mut self, now: u64) {
        if !self.hardware_enabled {
            return;
        }
        match self.timer_mode() {
            TimerMode::OneShot | TimerMode::Periodic => {
                let Countdown::Counting {
                    deadline: Some(deadline),
                    ..
                } = self.countdown
                else {
                    return;
                };
                if now < deadline {
                    return;
                }
                self.fire_timer();
                let period = match self.timer_mode() {
                    TimerMode::Periodic => self.ticks_for(self.timer_initial),
                    _ => None,
                };
                self.countdown = match period {
                    Some(period) if period > 0 && self.timer_initial != 0 => {
                        let behind = now.wrapping_sub(deadline);
                        // Whole periods passed since the deadline: at least
                        // the next boundary, skipping any already past.
                        let periods = behind.checked_div(period).unwrap_or(0);
                        let start = deadline.saturating_add(periods.saturating_mul(period));
                        Countdown::Counting {
                            count: self.timer_initial,
                            since: start,
                            deadline: Some(start.saturating_add(period)),
                        }
                    }
                    _ => Countdown::Idle,
                };
            }
            TimerMode::TscDeadline => {
                if self.tsc_deadline != 0 && now >= self.tsc_deadline {
                    self.fire_timer();
                    self.tsc_deadline = 0;
                }
            }
            TimerMode::Reserved => {}
        }
    }

    fn fire_timer(&mut self) {
        if self.lvt_timer & LVT_MASKED == 0 {
            // Bits 7:0: the cast keeps all of them.
            self.raise((self.lvt_timer & LVT_VECTOR) as u8, false);
        }
    }

    /// What RDMSR IA32_TSC_DEADLINE reads: the armed deadline, 0 when
    /// disarmed or not in TSC-deadline mode (11.5.4.1).
    pub const fn tsc_deadline(&self) -> u64 {
        match self.timer_mode() {
            TimerMode::TscDeadline if self.hardware_enabled => self.tsc_deadline,
            _ => 0,
        }
    }

    /// WRMSR IA32_TSC_DEADLINE at TSC `now` (11.5.4.1): ignored unless the
    /// timer is in TSC-deadline mode; 0 disarms; a deadline at or before
    /// now is due at the next [`run_timer`](Self::run_timer). A deadline
    /// already due before the write fires first.
    pub fn set_tsc_deadline(&mut self, value: u64, now: u64) {
        if !self.hardware_enabled || self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.run_timer(now);
        self.tsc_deadline = value;
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 1 GHz TSC, 25 MHz timer clock: 40 TSC ticks per input tick.
    const TSC_HZ: u64 = 1_000_000_000;
    const TIMER_HZ: u64 = 25_000_000;

    const DIVIDE_BY_1: u32 = 0b1011;
    const DIVIDE_BY_4: u32 = 0b0001;
    const DIVIDE_BY_2: u32 = 0b0000;

    const PERIODIC: u32 = 1 << 17;
    const TSC_DEADLINE: u32 = 2 << 17;

    /// An APIC as firmware leaves it.
    fn apic() -> LocalApic {
        let mut apic = LocalApic::new(2, TSC_HZ, TIMER_HZ);
        apic.firmware_state();
        apic
    }

    /// Writes the ESR, then reads it (the way software reads it).
    fn esr(apic: &mut LocalApic) -> u32 {
        assert_eq!(apic.write(reg::ESR, 0, 0), ApicEffect::None);
        apic.read(reg::ESR, 0)
    }

    fn ipi(apic: &mut LocalApic, high: u32, low: u32) -> ApicEffect {
        apic.write(reg::ICR_HIGH, high, 0);
        apic.write(reg::ICR_LOW, low, 0)
    }

    /// The IPI an ICR write sent, if any.
    fn sent(effect: ApicEffect) -> Option<Ipi> {
        match effect {
            ApicEffect::Ipi(ipi) => Some(ipi),
            _ => None,
        }
    }

    #[test]
    fn reset_state_is_software_disabled_with_every_lvt_masked() {
        let mut apic = LocalApic::new(7, TSC_HZ, TIMER_HZ);
        assert_eq!(apic.read(reg::ID, 0), 7 << 24);
        assert_eq!(apic.id(), 7);
        assert_eq!(apic.read(reg::VERSION, 0), 0x0005_0014);
        assert_eq!(apic.read(reg::SVR, 0), 0xFF);
        assert!(apic.is_hardware_enabled() && !apic.is_software_enabled());
        assert_eq!(apic.read(reg::DFR, 0), 0xFFFF_FFFF);
        for offset in [
            reg::LVT_CMCI,
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PERF,
            reg::LVT_LINT0,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
        ] {
            assert_eq!(apic.read(offset, 0), LVT_MASKED, "{offset:#x}");
            // Software-disabled: the mask cannot be cleared (11.4.7.2).
            apic.write(offset, 0x30, 0);
            assert_eq!(apic.read(offset, 0), LVT_MASKED | 0x30, "{offset:#x}");
        }
        for offset in [reg::TPR, reg::LDR, reg::ICR_LOW, reg::ICR_HIGH, reg::ESR] {
            assert_eq!(apic.read(offset, 0), 0, "{offset:#x}");
        }
        assert!(!apic.wants_extint(), "LINT0 masked: no virtual wire");
        apic.accept(0x40, false);
        assert_eq!(apic.read(reg::IRR + 0x20, 0), 0, "fixed interrupts dropped");
        assert_eq!(apic.pending_vector(), None);
        assert_eq!(apic.apic_base_msr(true), 0xFEE0_0900);
        assert_eq!(apic.apic_base_msr(false), 0xFEE0_0800);
    }

    #[test]
    fn firmware_state_is_virtual_wire_and_software_enabled() {
        let mut apic = apic();
        assert_eq!(apic.read(reg::SVR, 0), 0x1FF);
        assert!(apic.is_software_enabled());
        assert_eq!(apic.read(reg::LVT_LINT0, 0), 0x700, "ExtINT, unmasked");
        assert_eq!(apic.read(reg::LVT_LINT1, 0), 0x400, "NMI, unmasked");
        for offset in [
            reg::LVT_TIMER,
            reg::LVT_ERROR,
            reg::LVT_PERF,
            reg::LVT_THERMAL,
        ] {
            assert_eq!(apic.read(offset, 0), LVT_MASKED, "{offset:#x}");
        }
        assert!(apic.wants_extint());
        apic.accept(0x40, false);
        assert_eq!(apic.pending_vector(), Some(0x40));
        // Masking LINT0 (an OS switching to symmetric I/O) stops ExtINT.
        apic.write(reg::LVT_LINT0, 0x700 | LVT_MASKED, 0);
        assert!(!apic.wants_extint());
        apic.write(reg::LVT_LINT0, 0x000, 0);
        assert!(!apic.wants_extint(), "unmasked but fixed");
    }

    #[test]
    fn software_disable_masks_lvts_and_holds_the_irr() {
        let mut apic = apic();
        apic.accept(0x50, false);
        apic.write(reg::SVR, 0xFF, 0);
        assert!(!apic.is_software_enabled());
        assert_eq!(apic.read(reg::LVT_LINT0, 0), 0x700 | LVT_MASKED);
        assert_eq!(apic.pending_vector(), None);
        assert_eq!(apic.read(reg::IRR + 0x20, 0), 1 << 16, "held");
        apic.write(reg::SVR, 0x1FF, 0);
        assert_eq!(apic.pending_vector(), Some(0x50));
        assert_eq!(
            apic.read(reg::LVT_LINT0, 0),
            0x700 | LVT_MASKED,
            "re-enabling does not unmask"
        );
        // Only SVR bits 8:0 are implemented.
        apic.write(reg::SVR, 0xFFFF_FFFF, 0);
        assert_eq!(apic.read(reg::SVR, 0), 0x1FF);
    }

    #[test]
    fn apic_base_writes_disable_enable_and_move_the_page() {
        let mut apic = apic();
        apic.firmware_state();
        apic.write(reg::TPR, 0x20, 0);
        assert!(apic.decodes(LAPIC_BASE + 0x20));
        // Rewriting the reset value (the BSP bit included) changes nothing.
        assert_eq!(apic.write_apic_base_msr(0xFEE0_0900, 36), Ok(()));
        assert_eq!(apic.read(reg::TPR, 0), 0x20);
        // The BSP bit is read-only: the model keeps none, the caller
        // says which vCPU is the BSP.
        assert_eq!(apic.write_apic_base_msr(0xFEE0_0800, 36), Ok(()));
        assert_eq!(apic.apic_base_msr(true), 0xFEE0_0900);
        assert_eq!(apic.apic_base_msr(false), 0xFEE0_0800);
        // Disable: reset, and the page no longer decodes.
        assert_eq!(apic.write_apic_base_msr(0xFEE0_0100, 36), Ok(()));
        assert_eq!(apic.apic_base_msr(true), 0xFEE0_0100);
        assert!(!apic.decodes(LAPIC_BASE + 0x20));
        // Enable at a new base: the reset state, decoded there only.
        assert_eq!(apic.write_apic_base_msr(0xFEA0_0900, 36), Ok(()));
        assert_eq!(apic.apic_base_msr(true), 0xFEA0_0900);
        assert!(apic.decodes(0xFEA0_0020) && !apic.decodes(LAPIC_BASE + 0x20));
        assert_eq!(apic.read(reg::TPR, 0), 0);
        assert_eq!(apic.read(reg::SVR, 0), 0xFF, "software-disabled again");
        assert_eq!(apic.read(reg::ID, 0), 2 << 24);
        // Moving an enabled APIC keeps its state.
        apic.write(reg::TPR, 0x30, 0);
        assert_eq!(apic.write_apic_base_msr(0xFEE0_0800, 36), Ok(()));
        assert_eq!(apic.read(reg::TPR, 0), 0x30);
        assert!(apic.decodes(LAPIC_BASE));
        // A base above 4 GiB, inside MAXPHYADDR.
        assert_eq!(apic.write_apic_base_msr(0xF_FEE0_0800, 36), Ok(()));
        assert_eq!(apic.base(), 0xF_FEE0_0000);
    }

    #[test]
    fn apic_base_writes_with_reserved_bits_or_x2apic_are_refused() {
        let mut apic = apic();
        let before = apic.clone();
        for value in [
            0xFEE0_0801,    // bit 0
            0xFEE0_0880,    // bit 7
            0xFEE0_0A00,    // bit 9
            0x10_FEE0_0800, // bit 36, MAXPHYADDR 36
            1 << 63,
        ] {
            assert_eq!(
                apic.write_apic_base_msr(value, 36),
                Err(ApicBaseError::Reserved),
                "{value:#x}"
            );
        }
        // x2APIC, enabled or not: not offered.
        for value in [0xFEE0_0C00, 0xFEE0_0400] {
            assert_eq!(
                apic.write_apic_base_msr(value, 36),
                Err(ApicBaseError::X2ApicUnsupported),
                "{value:#x}"
            );
        }
        assert_eq!(apic, before, "a refused write changes nothing");
        // With a wider MAXPHYADDR bit 36 is an address bit.
        assert_eq!(apic.write_apic_base_msr(0x10_FEE0_0800, 40), Ok(()));
    }

    #[test]
    fn hardware_disable_resets_and_passes_intr_through() {
        let mut apic = apic();
        apic.write(reg::TPR, 0x20, 0);
        apic.accept(0x50, false);
        apic.accept_nmi();
        apic.accept_init();
        apic.set_hardware_enabled(false);
        assert!(apic.wants_extint());
        assert_eq!(apic.read(reg::VERSION, 0), 0, "the page is not decoded");
        assert_eq!(apic.write(reg::EOI, 0, 0), ApicEffect::None);
        apic.accept(0x60, false);
        apic.accept_nmi();
        apic.accept_sipi(1);
        assert_eq!(apic.pending_vector(), None);
        assert!(!apic.take_nmi());
        assert_eq!(apic.take_startup(), None);
        assert!(!apic.matches(2, false) && !apic.matches(0xFF, false));
        assert_eq!(apic.apic_base_msr(true), 0xFEE0_0100);

        apic.set_hardware_enabled(true);
        assert!(!apic.wants_extint(), "back in the reset state");
        assert_eq!(apic.read(reg::SVR, 0), 0xFF);
        assert_eq!(apic.read(reg::TPR, 0), 0);
        assert_eq!(apic.read(reg::IRR + 0x20, 0), 0);
        assert_eq!(apic.read(reg::ID, 0), 2 << 24, "the ID survives");
    }

    #[test]
    fn tpr_and_cr8_mask_lower_priority_classes() {
        let mut apic = apic();
        apic.accept(0x45, false);
        apic.set_tpr(0x40);
        assert_eq!(apic.read(reg::PPR, 0), 0x40);
        assert_eq!(apic.pending_vector(), None, "class 4 is not above 4");
        assert_eq!(apic.acknowledge(), None);
        apic.write(reg::TPR, 0x3F, 0);
        assert_eq!(apic.tpr(), 0x3F);
        assert_eq!(apic.pending_vector(), Some(0x45));
        apic.set_cr8(5);
        assert_eq!((apic.tpr(), apic.cr8()), (0x50, 5));
        assert_eq!(apic.pending_vector(), None);
        apic.set_cr8(0xFFFF_FFF0);
        assert_eq!(apic.tpr(), 0);
        assert_eq!(apic.pending_vector(), Some(0x45));
        // TPR bits 31:8 are reserved.
        apic.write(reg::TPR, 0xFFFF_FF12, 0);
        assert_eq!(apic.read(reg::TPR, 0), 0x12);
    }

    #[test]
    fn nested_interrupts_go_by_priority_class_and_eoi_unwinds() {
        let mut apic = apic();
        apic.accept(0x31, false);
        assert_eq!(apic.acknowledge(), Some(0x31));
        assert_eq!(apic.read(reg::PPR, 0), 0x30);
        assert_eq!(apic.read(reg::ISR + 0x10, 0), 1 << 17);
        apic.accept(0x32, false);
        assert_eq!(apic.pending_vector(), None, "same class as in service");
        apic.accept(0x51, false);
        assert_eq!(apic.pending_vector(), Some(0x51), "higher class nests");
        assert_eq!(apic.read(reg::APR, 0), 0x50);
        assert_eq!(apic.acknowledge(), Some(0x51));
        assert_eq!(apic.read(reg::PPR, 0), 0x50);
        assert_eq!(apic.read(reg::IRR + 0x10, 0), 1 << 18, "0x32 waits");

        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            ApicEffect::Eoi {
                vector: 0x51,
                level_triggered: false
            }
        );
        assert_eq!(apic.pending_vector(), None, "0x31 still in service");
        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            ApicEffect::Eoi {
                vector: 0x31,
                level_triggered: false
            }
        );
        assert_eq!(apic.read(reg::PPR, 0), 0);
        assert_eq!(apic.acknowledge(), Some(0x32));
        apic.write(reg::EOI, 0, 0);
        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            ApicEffect::None,
            "nothing in service"
        );
        assert_eq!(apic.read(reg::EOI, 0), 0, "write-only");
    }

    #[test]
    fn highest_vector_in_the_irr_goes_first() {
        let mut apic = apic();
        for vector in [0x20, 0xFF, 0x80, 0x10] {
            apic.accept(vector, false);
        }
        assert_eq!(apic.acknowledge(), Some(0xFF));
        apic.write(reg::EOI, 0, 0);
        assert_eq!(apic.acknowledge(), Some(0x80));
        apic.write(reg::EOI, 0, 0);
        assert_eq!(apic.acknowledge(), Some(0x20));
        apic.write(reg::EOI, 0, 0);
        assert_eq!(
            apic.acknowledge(),
            Some(0x10),
            "16 is the first legal vector"
        );
    }

    #[test]
    fn level_triggered_interrupts_set_the_tmr_and_report_it_at_eoi() {
        let mut apic = apic();
        apic.accept(0x60, true);
        assert_eq!(apic.read(reg::TMR + 0x30, 0), 1);
        assert_eq!(apic.acknowledge(), Some(0x60));
        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            ApicEffect::Eoi {
                vector: 0x60,
                level_triggered: true
            }
        );
        // The same vector edge-triggered clears the TMR bit.
        apic.accept(0x60, false);
        assert_eq!(apic.read(reg::TMR + 0x30, 0), 0);
        apic.acknowledge();
        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            ApicEffect::Eoi {
                vector: 0x60,
                level_triggered: false
            }
        );
    }

    #[test]
    fn an_eoi_known_by_its_address_does_what_the_register_write_does() {
        let mut apic = apic();
        // Nothing in service: nothing ended, as with the write.
        assert!(!apic.eoi_ends_level());
        assert_eq!(apic.eoi_at(LAPIC_BASE), Some(ApicEffect::None));
        // Level, then edge: each reported as the write reports it.
        apic.accept(0x61, true);
        apic.accept(0x60, false);
        assert_eq!(apic.acknowledge(), Some(0x61));
        assert!(apic.eoi_ends_level());
        assert_eq!(
            apic.eoi_at(LAPIC_BASE),
            Some(ApicEffect::Eoi {
                vector: 0x61,
                level_triggered: true
            })
        );
        assert_eq!(apic.acknowledge(), Some(0x60));
        assert!(!apic.eoi_ends_level());
        // Another page is not this APIC's: nothing happens there.
        assert_eq!(apic.eoi_at(LAPIC_BASE + 0x1000), None);
        assert_eq!(apic.read(reg::ISR + 0x30, 0), 1, "0x60 still in service");
        assert_eq!(
            apic.eoi_at(LAPIC_BASE),
            Some(ApicEffect::Eoi {
                vector: 0x60,
                level_triggered: false
            })
        );
        assert_eq!(apic.read(reg::ISR + 0x30, 0), 0);
        assert_eq!(EOI_OFFSET, 0xB0);
    }

    #[test]
    fn illegal_vectors_and_registers_set_the_esr() {
        let mut apic = apic();
        apic.accept(5, false);
        assert_eq!(apic.read(reg::IRR, 0), 0, "dropped");
        assert_eq!(apic.read(reg::ESR, 0), 0, "not visible before a write");
        assert_eq!(esr(&mut apic), ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(esr(&mut apic), 0, "each write latches anew");

        // A fixed IPI with an illegal vector is not sent.
        assert_eq!(ipi(&mut apic, 0, 0x4003), ApicEffect::None);
        assert_eq!(esr(&mut apic), ESR_SEND_ILLEGAL_VECTOR);

        // Reserved registers read 0 and flag an illegal address; unaligned
        // and out-of-page offsets just read 0.
        assert_eq!(apic.read(0x290, 0), 0);
        apic.write(0x3F0, 1, 0);
        assert_eq!(esr(&mut apic), ESR_ILLEGAL_REGISTER);
        assert_eq!(apic.read(reg::SVR + 4, 0), 0);
        apic.write(reg::TPR + 1, 0xFF, 0);
        assert_eq!(apic.read(0x1000, 0), 0);
        assert_eq!(apic.tpr(), 0);
        assert_eq!(esr(&mut apic), 0);

        // With the error entry unmasked, an error raises its vector.
        apic.write(reg::LVT_ERROR, 0xFE, 0);
        apic.accept(15, true);
        assert_eq!(apic.acknowledge(), Some(0xFE));
        assert_eq!(esr(&mut apic), ESR_RECEIVE_ILLEGAL_VECTOR);
        // An illegal error vector flags itself instead of looping.
        apic.write(reg::LVT_ERROR, 0x01, 0);
        apic.accept(0, false);
        assert_eq!(esr(&mut apic), ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(apic.pending_vector(), None);
    }

    #[test]
    fn icr_writes_produce_ipis_for_each_shorthand() {
        let mut apic = apic();
        let fixed = |vector, dest, logical| InterruptMessage {
            vector,
            mode: DeliveryMode::Fixed,
            dest,
            logical,
            level_triggered: false,
        };
        assert_eq!(
            ipi(&mut apic, 3 << 24, 0x4031),
            ApicEffect::Ipi(Ipi {
                message: fixed(0x31, 3, false),
                shorthand: IpiShorthand::Destination
            })
        );
        assert_eq!(apic.read(reg::ICR_LOW, 0), 0x4031, "delivery status idle");
        assert_eq!(apic.read(reg::ICR_HIGH, 0), 3 << 24);
        assert_eq!(
            ipi(&mut apic, 0x0C << 24, 0x4841),
            ApicEffect::Ipi(Ipi {
                message: fixed(0x41, 0x0C, true),
                shorthand: IpiShorthand::Destination
            })
        );
        assert_eq!(
            apic.write(reg::ICR_LOW, 0x4_4042, 0),
            ApicEffect::Ipi(Ipi {
                message: fixed(0x42, 0x0C, false),
                shorthand: IpiShorthand::SelfOnly
            })
        );
        assert_eq!(
            apic.write(reg::ICR_LOW, 0x8_4043, 0),
            ApicEffect::Ipi(Ipi {
                message: fixed(0x43, 0x0C, false),
                shorthand: IpiShorthand::AllIncludingSelf
            })
        );
        let nmi = sent(apic.write(reg::ICR_LOW, 0xC_4400, 0)).unwrap();
        assert_eq!(nmi.shorthand, IpiShorthand::AllExcludingSelf);
        assert_eq!(nmi.message.mode, DeliveryMode::Nmi);

        // INIT assert, then the de-assert modern processors ignore, then
        // a start-up IPI for page 8.
        let init = sent(ipi(&mut apic, 1 << 24, 0xC500)).unwrap();
        assert_eq!(
            (init.message.mode, init.message.dest),
            (DeliveryMode::Init, 1)
        );
        assert!(!init.message.level_triggered, "IPIs are edge-triggered");
        assert_eq!(apic.write(reg::ICR_LOW, 0x8500, 0), ApicEffect::None);
        let sipi = sent(apic.write(reg::ICR_LOW, 0x4608, 0)).unwrap();
        assert_eq!(
            (sipi.message.mode, sipi.message.vector),
            (DeliveryMode::StartUp, 8),
            "any start page, even below 16"
        );

        // Reserved delivery modes, and non-fixed self-IPIs, send nothing.
        assert_eq!(apic.write(reg::ICR_LOW, 0x4340, 0), ApicEffect::None);
        assert_eq!(apic.write(reg::ICR_LOW, 0x4740, 0), ApicEffect::None);
        assert_eq!(apic.write(reg::ICR_LOW, 0x4_4400, 0), ApicEffect::None);
        // Reserved ICR bits are dropped.
        apic.write(reg::ICR_HIGH, 0xFFFF_FFFF, 0);
        assert_eq!(apic.read(reg::ICR_HIGH, 0), 0xFF00_0000);
        apic.write(reg::ICR_LOW, 0xFFFF_FFFF, 0);
        assert_eq!(apic.read(reg::ICR_LOW, 0), 0x000C_CFFF);
    }

    #[test]
    fn physical_and_logical_destinations_match() {
        let mut apic = apic();
        assert!(apic.matches(2, false));
        assert!(apic.matches(0xFF, false), "broadcast");
        assert!(!apic.matches(3, false));

        // Flat model: any shared bit.
        apic.write(reg::LDR, 0x0300_00FF, 0);
        assert_eq!(apic.read(reg::LDR, 0), 0x0300_0000);
        assert!(apic.matches(0x01, true) && apic.matches(0x06, true));
        assert!(!apic.matches(0x04, true) && !apic.matches(0x00, true));
        assert!(apic.matches(0xFF, true));

        // Cluster model: cluster 2, member bit 0.
        apic.write(reg::DFR, 0x0000_0000, 0);
        assert_eq!(apic.read(reg::DFR, 0), 0x0FFF_FFFF);
        apic.write(reg::LDR, 0x2100_0000, 0);
        assert!(apic.matches(0x21, true) && apic.matches(0x23, true));
        assert!(!apic.matches(0x22, true), "another member");
        assert!(!apic.matches(0x31, true), "another cluster");
        assert!(apic.matches(0xF1, true), "all clusters");
        assert!(!apic.matches(0xF2, true));
        assert!(apic.matches(0xFF, true));
        assert!(!apic.matches(0x21, false), "physical still needs the ID");
    }

    #[test]
    fn nmi_init_and_startup_are_latched_until_taken() {
        let mut apic = apic();
        assert!(!apic.take_nmi());
        apic.accept_nmi();
        assert!(apic.take_nmi());
        assert!(!apic.take_nmi());

        apic.accept_sipi(7);
        apic.accept_init();
        apic.accept_sipi(8);
        apic.accept_sipi(9);
        assert_eq!(apic.take_startup(), Some(StartupEvent::Init));
        // The INIT resets the APIC; the start-up IPI that followed stays.
        apic.reset();
        assert_eq!(
            apic.take_startup(),
            Some(StartupEvent::StartUp { vector: 8 }),
            "the INIT dropped 7; 9 came second"
        );
        assert_eq!(apic.take_startup(), None);
        // Software-disabled after the reset, it still takes these.
        apic.accept_nmi();
        apic.accept_sipi(3);
        assert!(apic.take_nmi());
        assert_eq!(
            apic.take_startup(),
            Some(StartupEvent::StartUp { vector: 3 })
        );
    }

    #[test]
    fn one_shot_fires_exactly_at_initial_times_divide_in_tsc_ticks() {
        let mut apic = apic();
        apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_4, 0);
        apic.write(reg::LVT_TIMER, 0x40, 0);
        assert_eq!(apic.timer_mode(), TimerMode::OneShot);
        assert_eq!(apic.timer_deadline(), None, "no count yet");
        // 1000 counts * 4 * 40 TSC ticks.
        apic.write(reg::TIMER_INITIAL, 1000, 1_000);
        assert_eq!(apic.timer_deadline(), Some(161_000));
        assert_eq!(apic.read(reg::TIMER_INITIAL, 0), 1000);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 1_000), 1000);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 1_159), 1000);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 1_160), 999);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 81_000), 500);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 160_999), 1);

        apic.run_timer(160_999);
        assert_eq!(apic.pending_vector(), None, "not yet");
        apic.run_timer(161_000);
        assert_eq!(apic.pending_vector(), Some(0x40));
        assert_eq!(apic.timer_deadline(), None, "one-shot goes idle");
        assert_eq!(apic.read(reg::TIMER_CURRENT, 161_000), 0);
        assert_eq!(apic.read(reg::TIMER_INITIAL, 0), 1000);
        apic.acknowledge();
        apic.run_timer(u64::MAX);
        assert_eq!(apic.pending_vector(), None, "fired once");

        // Writing 0 stops a running count.
        apic.write(reg::TIMER_INITIAL, 10, 200_000);
        apic.write(reg::TIMER_INITIAL, 0, 200_001);
        assert_eq!(apic.timer_deadline(), None);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 200_002), 0);
    }

    #[test]
    fn changing_the_divider_mid_count_keeps_the_count_so_far() {
        let mut apic = apic();
        apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_1, 0);
        apic.write(reg::LVT_TIMER, 0x40, 0);
        apic.write(reg::TIMER_INITIAL, 1000, 0);
        assert_eq!(apic.timer_deadline(), Some(40_000));
        apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_2 | 0xFFFF_FFF4, 20_000);
        assert_eq!(apic.read(reg::TIMER_DIVIDE, 0), 0, "bits 3, 1, 0 only");
        assert_eq!(apic.read(reg::TIMER_CURRENT, 20_000), 500);
        assert_eq!(apic.timer_deadline(), Some(20_000 + 500 * 80));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 40_000), 250);
    }

    #[test]
    fn periodic_rearms_from_the_deadline_and_skips_missed_periods() {
        let mut apic = apic();
        apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_1, 0);
        apic.write(reg::LVT_TIMER, PERIODIC | 0x41, 0);
        assert_eq!(apic.timer_mode(), TimerMode::Periodic);
        // 100 counts * 40 ticks: a 4000-tick period.
        apic.write(reg::TIMER_INITIAL, 100, 0);
        assert_eq!(apic.timer_deadline(), Some(4_000));

        apic.run_timer(4_000);
        assert_eq!(apic.acknowledge(), Some(0x41));
        apic.write(reg::EOI, 0, 4_000);
        assert_eq!(apic.timer_deadline(), Some(8_000));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 4_000), 100, "reloaded");

        // Run late: the next deadline keeps the original phase.
        apic.run_timer(8_500);
        assert_eq!(apic.acknowledge(), Some(0x41));
        apic.write(reg::EOI, 0, 8_500);
        assert_eq!(apic.timer_deadline(), Some(12_000));

        // Far behind: one interrupt, then the first boundary after now.
        apic.run_timer(50_100);
        assert_eq!(apic.acknowledge(), Some(0x41));
        assert_eq!(apic.pending_vector(), None, "no catch-up storm");
        assert_eq!(apic.timer_deadline(), Some(52_000));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 50_100), 100 - 2_100 / 40);

        // Without a run, the current count wraps around lazily.
        assert_eq!(apic.read(reg::TIMER_CURRENT, 52_000), 100);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 56_040), 99);
    }

    #[test]
    fn a_masked_timer_counts_but_delivers_nothing() {
        let mut apic = apic();
        apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_1, 0);
        apic.write(reg::LVT_TIMER, LVT_MASKED | 0x40, 0);
        apic.write(reg::TIMER_INITIAL, 100, 0);
        assert_eq!(apic.timer_deadline(), None, "masked: nothing to wake for");
        assert_eq!(apic.read(reg::TIMER_CURRENT, 2_000), 50, "still counting");
        apic.run_timer(4_000);
        assert_eq!(apic.pending_vector(), None);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 4_000), 0);

        // Periodic, masked through expiries, then unmasked: the missed
        // expiries are not delivered and the phase is kept.
        apic.write(reg::LVT_TIMER, LVT_MASKED | PERIODIC | 0x40, 4_000);
        apic.write(reg::TIMER_INITIAL, 100, 4_000);
        apic.write(reg::LVT_TIMER, PERIODIC | 0x40, 13_000);
        assert_eq!(apic.pending_vector(), None);
        assert_eq!(apic.timer_deadline(), Some(16_000));
    }

    #[test]
    fn tsc_deadline_mode_arms_disarms_and_fires_late_deadlines() {
        let mut apic = apic();
        // Not in TSC-deadline mode: the MSR reads 0 and ignores writes.
        apic.set_tsc_deadline(5_000, 0);
        assert_eq!(apic.tsc_deadline(), 0);
        assert_eq!(apic.timer_deadline(), None);

        apic.write(reg::LVT_TIMER, TSC_DEADLINE | 0x42, 0);
        assert_eq!(apic.timer_mode(), TimerMode::TscDeadline);
        apic.write(reg::TIMER_INITIAL, 1000, 0);
        assert_eq!(apic.read(reg::TIMER_INITIAL, 0), 0, "ignored");
        assert_eq!(apic.read(reg::TIMER_CURRENT, 0), 0);

        apic.set_tsc_deadline(5_000, 0);
        assert_eq!(apic.tsc_deadline(), 5_000);
        assert_eq!(apic.timer_deadline(), Some(5_000));
        apic.run_timer(4_999);
        assert_eq!(apic.pending_vector(), None);
        apic.run_timer(5_000);
        assert_eq!(apic.acknowledge(), Some(0x42));
        apic.write(reg::EOI, 0, 5_000);
        assert_eq!(apic.tsc_deadline(), 0, "fired: disarmed and cleared");
        assert_eq!(apic.timer_deadline(), None);

        // Writing 0 disarms.
        apic.set_tsc_deadline(9_000, 6_000);
        apic.set_tsc_deadline(0, 6_000);
        apic.run_timer(10_000);
        assert_eq!(apic.pending_vector(), None);

        // A deadline in the past fires at the next run.
        apic.set_tsc_deadline(100, 10_000);
        assert_eq!(apic.timer_deadline(), Some(100));
        assert_eq!(apic.pending_vector(), None);
        apic.run_timer(10_000);
        assert_eq!(apic.acknowledge(), Some(0x42));
        apic.write(reg::EOI, 0, 10_000);

        // Masked, it still disarms when due, without an interrupt.
        apic.write(reg::LVT_TIMER, LVT_MASKED | TSC_DEADLINE | 0x42, 10_000);
        apic.set_tsc_deadline(11_000, 10_000);
        assert_eq!(apic.timer_deadline(), None);
        apic.run_timer(11_000);
        assert_eq!((apic.tsc_deadline(), apic.pending_vector()), (0, None));

        // Changing the mode disarms.
        apic.write(reg::LVT_TIMER, TSC_DEADLINE | 0x42, 11_000);
        apic.set_tsc_deadline(20_000, 11_000);
        apic.write(reg::LVT_TIMER, 0x42, 11_000);
        apic.write(reg::LVT_TIMER, TSC_DEADLINE | 0x42, 11_000);
        assert_eq!(apic.tsc_deadline(), 0);
        assert_eq!(apic.timer_deadline(), None);
    }

    #[test]
    fn changing_between_one_shot_and_periodic_disarms() {
        let mut apic = apic();
        apic.write(reg::LVT_TIMER, 0x40, 0);
        apic.write(reg::TIMER_INITIAL, 100, 0);
        assert!(apic.timer_deadline().is_some());
        apic.write(reg::LVT_TIMER, PERIODIC | 0x40, 10);
        assert_eq!(apic.timer_deadline(), None);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 10), 0);
        // Rewriting the same mode (to unmask, change the vector) does not.
        apic.write(reg::TIMER_INITIAL, 100, 10);
        apic.write(reg::LVT_TIMER, PERIODIC | 0x50, 20);
        assert!(apic.timer_deadline().is_some());
    }

    #[test]
    fn zero_clock_rates_never_expire_and_never_panic() {
        for (tsc_hz, timer_hz) in [(0, TIMER_HZ), (TSC_HZ, 0), (0, 0)] {
            let mut apic = LocalApic::new(0, tsc_hz, timer_hz);
            apic.firmware_state();
            apic.write(reg::LVT_TIMER, PERIODIC | 0x40, 0);
            apic.write(reg::TIMER_INITIAL, 100, 0);
            assert_eq!(apic.timer_deadline(), None);
            apic.run_timer(u64::MAX);
            assert_eq!(apic.pending_vector(), None);
            let current = apic.read(reg::TIMER_CURRENT, u64::MAX);
            assert!(current <= 100);
            apic.write(reg::TIMER_DIVIDE, DIVIDE_BY_1, u64::MAX);
        }
        // Huge rates and counts saturate instead of overflowing.
        let mut apic = LocalApic::new(0, u64::MAX, 1);
        apic.firmware_state();
        apic.write(reg::LVT_TIMER, 0x40, 0);
        apic.write(reg::TIMER_INITIAL, u32::MAX, 5);
        assert_eq!(apic.timer_deadline(), Some(u64::MAX));
        assert_eq!(apic.read(reg::TIMER_CURRENT, u64::MAX), u32::MAX);
    }

    proptest! {
        /// The set's highest vector, kept through its word summary, is
        /// the highest of a plain model's after any sets and clears, and
        /// its registers read the same.
        #[test]
        fn vector_sets_find_their_highest_as_a_plain_scan_does(
            ops in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..200),
        ) {
            let mut set = VectorSet::default();
            let mut model = [false; 256];
            for (add, v) in ops {
                if add {
                    set.set(v);
                } else {
                    set.clear(v);
                }
                model[usize::from(v)] = add;
                let want = (0..=255u8).rev().find(|&v| model[usize::from(v)]);
                prop_assert_eq!(set.highest(), want);
                prop_assert_eq!(set.contains(v), add);
            }
            for w in 0..8u32 {
                let want = (0..32u32)
                    .filter(|b| model[(w * 32 + b) as usize])
                    .fold(0u32, |acc, b| acc | 1 << b);
                prop_assert_eq!(set.word(w), want);
            }
        }
    }

    proptest! {
        /// Any sequence of register accesses (any offset, value and time)
        /// and incoming events never panics, and keeps the model's
        /// invariants: unaligned offsets read 0, a pending vector is legal
        /// and above the PPR's class, the version never changes.
        #[test]
        fn random_register_accesses_never_panic(
            ops in prop::collection::vec(
                (0u8..10, any::<u32>(), any::<u32>(), any::<u64>()),
                0..300,
            ),
            rates in (any::<u64>(), any::<u64>()),
        ) {
            let mut apic = LocalApic::new(1, rates.0 % 4 * 1_000_000_000, rates.1 % 3 * 25_000_000);
            if rates.0 & 4 != 0 {
                apic.firmware_state();
            }
            let mut now = 0u64;
            for (kind, offset, value, time) in ops {
                // Mostly forward in time, sometimes anywhere.
                now = if time & 7 == 0 { time } else { now.saturating_add(time >> 40) };
                // Bias offsets towards the registers.
                let offset = if offset & 1 == 0 { offset >> 1 & 0x3F0 } else { offset >> 1 };
                match kind {
                    0 => {
                        let read = apic.read(offset, now);
                        if offset & 0xF != 0 {
                            prop_assert_eq!(read, 0);
                        }
                    }
                    1 | 2 => {
                        if let ApicEffect::Ipi(ipi) = apic.write(offset, value, now) {
                            prop_assert_eq!(offset, reg::ICR_LOW);
                            if ipi.message.mode.uses_vector() {
                                prop_assert!(ipi.message.vector >= 16);
                            }
                        }
                    }
                    3 => apic.accept((value & 0xFF) as u8, value & 0x100 != 0),
                    4 => {
                        if let Some(vector) = apic.acknowledge() {
                            prop_assert!(vector >= 16);
                        }
                    }
                    5 => apic.run_timer(now),
                    6 => apic.set_tsc_deadline(u64::from(value), now),
                    7 => apic.set_hardware_enabled(value & 0xF != 0),
                    8 => apic.set_tpr((value & 0xFF) as u8),
                    _ => {
                        apic.accept_nmi();
                        apic.accept_init();
                        apic.accept_sipi((value & 0xFF) as u8);
                        let _ = (apic.take_nmi(), apic.take_startup());
                    }
                }
                if let Some(vector) = apic.pending_vector() {
                    prop_assert!(vector >= 16);
                    prop_assert!(vector >> 4 > apic.ppr() >> 4);
                }
                if apic.is_hardware_enabled() {
                    prop_assert_eq!(apic.read(reg::VERSION, now), LAPIC_VERSION);
                }
                let _ = (apic.timer_deadline(), apic.tsc_deadline(), apic.wants_extint(), apic.apr());
            }
        }
    }
}
