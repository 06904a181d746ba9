//! The interrupt message that travels between APICs: what an I/O APIC
//! redirection entry or a local APIC's interrupt command register sends,
//! and the fields it is made of (SDM Vol. 3A, 11.6.1 and 11.6.2; 82093AA
//! datasheet, 3.2.4).
//!
//! Both [`IoApic`](crate::ioapic::IoApic) and
//! [`LocalApic`](crate::lapic::LocalApic) only *produce* these messages;
//! the VM's interrupt path routes them to the local APICs they name (with
//! [`LocalApic::matches`](crate::lapic::LocalApic::matches)), so routing
//! lives in one place.

/// How the receiving local APIC treats a message: the 3-bit delivery mode
/// field of the ICR (SDM Vol. 3A, 11.6.1, Figure 11-12), an LVT entry
/// (11.5.1) or an I/O APIC redirection entry (82093AA, 3.2.4).
///
/// Encoding 011b is reserved everywhere and has no variant; each register
/// additionally reserves one of the others ([`StartUp`](Self::StartUp) in an
/// I/O APIC entry, [`ExtInt`](Self::ExtInt) in the ICR), which its model
/// checks itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// 000b: the vector, to every destination.
    Fixed,
    /// 001b: the vector, to the destination with the lowest priority.
    LowestPriority,
    /// 010b: a system-management interrupt (the vector must be 0).
    Smi,
    /// 100b: a non-maskable interrupt (the vector is ignored).
    Nmi,
    /// 101b: INIT.
    Init,
    /// 110b: a start-up IPI; the vector is the start page (ICR only).
    StartUp,
    /// 111b: the vector comes from an external 8259 with an INTA cycle
    /// (LVT LINT0 and I/O APIC entries only).
    ExtInt,
}

impl DeliveryMode {
    /// Decodes the low three bits of `bits`; `None` for the reserved 011b.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        match bits & 0b111 {
            0b000 => Some(Self::Fixed),
            0b001 => Some(Self::LowestPriority),
            0b010 => Some(Self::Smi),
            0b100 => Some(Self::Nmi),
            0b101 => Some(Self::Init),
            0b110 => Some(Self::StartUp),
            0b111 => Some(Self::ExtInt),
            _ => None,
        }
    }

    /// The 3-bit encoding.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0b000,
            Self::LowestPriority => 0b001,
            Self::Smi => 0b010,
            Self::Nmi => 0b100,
            Self::Init => 0b101,
            Self::StartUp => 0b110,
            Self::ExtInt => 0b111,
        }
    }

    /// Whether the message carries a vector the receiver puts in its IRR
    /// (fixed and lowest priority): only those vectors must be 16 or more
    /// (SDM Vol. 3A, 11.5.2).
    pub const fn uses_vector(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// How an interrupt is signalled (SDM Vol. 3A, 11.5.1; 82093AA, 3.2.4
/// bit 15): edge-triggered interrupts are forgotten once accepted,
/// level-triggered ones are remembered in the receiver's TMR and their EOI
/// goes back to the I/O APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TriggerMode {
    /// Edge-triggered.
    Edge,
    /// Level-triggered.
    Level,
}

impl TriggerMode {
    /// `Level` when the trigger-mode bit is set.
    pub const fn from_bit(level: bool) -> Self {
        if level {
            Self::Level
        } else {
            Self::Edge
        }
    }
}

/// Whom a message is for (SDM Vol. 3A, 11.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The local APIC whose ID is this (0xFF: all of them).
    Physical(u8),
    /// Every local APIC whose logical destination register matches this
    /// mask, under its destination format (flat or cluster).
    Logical(u8),
}

/// One interrupt message: an I/O APIC redirection entry or an IPI, as the
/// receiving local APICs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterruptMessage {
    /// The vector (ignored for NMI, INIT and SMI; the start page for
    /// a start-up IPI).
    pub vector: u8,
    /// The delivery mode.
    pub mode: DeliveryMode,
    /// The destination field: an APIC ID, or a logical mask when
    /// `logical`.
    pub dest: u8,
    /// Logical (true) or physical (false) destination mode.
    pub logical: bool,
    /// Level-triggered (true) or edge-triggered (false).
    pub level_triggered: bool,
}

impl InterruptMessage {
    /// The destination as a typed value.
    pub const fn destination(&self) -> Destination {
        if self.logical {
            Destination::Logical(self.dest)
        } else {
            Destination::Physical(self.dest)
        }
    }

    /// The trigger mode as a typed value.
    pub const fn trigger(&self) -> TriggerMode {
        TriggerMode::from_bit(self.level_triggered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_modes_round_trip_and_011b_is_reserved() {
        for bits in 0..8u32 {
            match DeliveryMode::from_bits(bits) {
                Some(mode) => assert_eq!(mode.bits(), bits),
                None => assert_eq!(bits, 0b011),
            }
        }
        // Only the low three bits count.
        assert_eq!(
            DeliveryMode::from_bits(0xFFFF_FFF8),
            Some(DeliveryMode::Fixed)
        );
        assert_eq!(DeliveryMode::from_bits(0x0C), Some(DeliveryMode::Nmi));
        assert!(DeliveryMode::LowestPriority.uses_vector());
        assert!(!DeliveryMode::StartUp.uses_vector());
    }

    #[test]
    fn message_destination_and_trigger() {
        let msg = InterruptMessage {
            vector: 0x30,
            mode: DeliveryMode::Fixed,
            dest: 3,
            logical: true,
            level_triggered: true,
        };
        assert_eq!(msg.destination(), Destination::Logical(3));
        assert_eq!(msg.trigger(), TriggerMode::Level);
        let msg = InterruptMessage {
            logical: false,
            level_triggered: false,
            ..msg
        };
        assert_eq!(msg.destination(), Destination::Physical(3));
        assert_eq!(msg.trigger(), TriggerMode::Edge);
    }
}
