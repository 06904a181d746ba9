//! A VM's interrupt lines ([`IrqLines`]: what the devices drive) and the
//! interrupt controller that turns them into vectors to inject
//! ([`InterruptController`], with [`SimpleIrqChip`] as the trivial one).
//!
//! Devices never talk to a controller: during an access they set the level
//! of a line through [`DeviceEnv::set_irq`](crate::bus::DeviceEnv::set_irq),
//! which lands in the VM's [`IrqLines`]; after the exit the caller hands the
//! changes to the VM's controller with [`IrqLines::forward_to`] and asks it
//! for a vector to inject. So an 8259 pair, an I/O APIC or a local APIC
//! model can later sit behind the same trait without any device changing.

/// How many interrupt lines a VM has: 0..24, the inputs of an I/O APIC
/// (the first 16 are also the ISA IRQs of the 8259 pair).
pub const IRQ_LINES: u8 = 24;

/// The mask of every valid line.
const ALL_LINES: u32 = (1 << IRQ_LINES) - 1;

/// The bit for `line`, or `None` for a line that does not exist.
const fn bit(line: u8) -> Option<u32> {
    if line < IRQ_LINES {
        Some(1 << line)
    } else {
        None
    }
}

/// The level of each of a VM's interrupt lines, and what changed since the
/// controller last saw them.
///
/// Changes are kept so that a pulse is not lost: a line raised and lowered
/// again before [`forward_to`](Self::forward_to) still gives the controller
/// its rising edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqLines {
    /// Bit `n`: line `n` is high now.
    levels: u32,
    /// Bit `n`: line `n`'s level differs from what the controller last saw.
    changed: u32,
    /// Bit `n`: line `n` went from low to high since the controller last
    /// saw it (even if it is low again, or high as before).
    rose: u32,
}

impl IrqLines {
    /// Every line low, nothing changed.
    pub const fn new() -> Self {
        Self {
            levels: 0,
            changed: 0,
            rose: 0,
        }
    }

    /// Sets `line` to `level`. Returns false, changing nothing, for a line
    /// that does not exist (`line >= IRQ_LINES`); setting a line to the
    /// level it has is no change.
    pub fn set(&mut self, line: u8, level: bool) -> bool {
        let Some(bit) = bit(line) else {
            return false;
        };
        if (self.levels & bit != 0) != level {
            self.levels ^= bit;
            self.changed ^= bit;
            if level {
                self.rose |= bit;
            }
        }
        true
    }

    /// Whether `line` is high (false for a line that does not exist).
    pub const fn level(&self, line: u8) -> bool {
        match bit(line) {
            Some(bit) => self.levels & bit != 0,
            None => false,
        }
    }

    /// The levels of all lines, bit `n` for line `n`.
    pub const fn levels(&self) -> u32 {
        self.levels
    }

    /// Whether any line changed (or pulsed) since the last
    /// [`forward_to`](Self::forward_to).
    pub const fn has_changes(&self) -> bool {
        (self.changed | self.rose) != 0
    }

    /// Tells `chip` about every line that changed since the last call,
    /// lowest line first, and forgets the changes. A line that rose and
    /// fell again is passed on as a rise then a fall, and one that fell and
    /// rose again as a fall then a rise, so an edge-triggered controller
    /// sees every edge and a level-triggered one ends at the right level.
    pub fn forward_to(&mut self, chip: &mut (impl InterruptController + ?Sized)) {
        let mut lines = (self.changed | self.rose) & ALL_LINES;
        while lines != 0 {
            let line = lines.trailing_zeros();
            lines &= lines.wrapping_sub(1);
            let Ok(line) = u8::try_from(line) else {
                break;
            };
            let Some(bit) = bit(line) else {
                break;
            };
            let now = self.levels & bit != 0;
            if self.rose & bit != 0 {
                let before = now != (self.changed & bit != 0);
                if before {
                    chip.set_line(line, false);
                }
                chip.set_line(line, true);
                if !now {
                    chip.set_line(line, false);
                }
            } else {
                chip.set_line(line, now);
            }
        }
        self.changed = 0;
        self.rose = 0;
    }
}

/// A VM's interrupt controller as the vCPU sees it: it takes line levels
/// and offers the vector to inject next.
///
/// Line numbers are those of [`IrqLines`]; a controller ignores lines it
/// does not have.
pub trait InterruptController: Send {
    /// The level of input `line` is now `level`.
    fn set_line(&mut self, line: u8, level: bool);

    /// The vector the controller would deliver now, if any, without taking
    /// it.
    fn pending_vector(&self) -> Option<u8>;

    /// Takes the highest-priority pending vector for injection: the
    /// controller treats it as delivered (in service, or at once done for a
    /// controller with automatic end of interrupt).
    fn acknowledge(&mut self) -> Option<u8>;
}

/// The simplest controller: line `L` is vector `base + L`, a rising level
/// latches a request, the lowest latched line that is not masked goes
/// first, and [`acknowledge`](InterruptController::acknowledge) clears it
/// (automatic end of interrupt: there is no in-service state and no EOI
/// register).
///
/// A masked line still latches its rising edge, as the 8259's request
/// register does; the request is delivered once the line is unmasked.
/// Meant for test guests and host tests; the 8259, I/O APIC and local APIC
/// models come behind the same trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleIrqChip {
    /// The vector of line 0.
    base: u8,
    /// Bit `n`: the level of line `n` as last set.
    levels: u32,
    /// Bit `n`: line `n` rose and was not acknowledged yet.
    requests: u32,
    /// Bit `n`: line `n` is masked.
    masked: u32,
}

impl Default for SimpleIrqChip {
    fn default() -> Self {
        Self::new()
    }
}

impl SimpleIrqChip {
    /// The default vector of line 0: 0x20, the first vector above the ones
    /// the architecture reserves for exceptions (SDM Vol. 3A, 6.2).
    pub const DEFAULT_BASE: u8 = 0x20;

    /// A chip with base vector [`DEFAULT_BASE`](Self::DEFAULT_BASE),
    /// nothing latched, no line masked.
    pub const fn new() -> Self {
        Self {
            base: Self::DEFAULT_BASE,
            levels: 0,
            requests: 0,
            masked: 0,
        }
    }

    /// A chip whose line 0 is vector `base`; `None` if the vector of the
    /// last line (`base + 23`) would not fit in a byte.
    pub const fn with_base(base: u8) -> Option<Self> {
        if base.checked_add(IRQ_LINES - 1).is_none() {
            return None;
        }
        Some(Self {
            base,
            levels: 0,
            requests: 0,
            masked: 0,
        })
    }

    /// The vector of line 0.
    pub const fn base(&self) -> u8 {
        self.base
    }

    /// Masks or unmasks `line` (nothing for a line that does not exist).
    pub fn set_masked(&mut self, line: u8, masked: bool) {
        if let Some(bit) = bit(line) {
            if masked {
                self.masked |= bit;
            } else {
                self.masked &= !bit;
            }
        }
    }

    /// Whether `line` is masked.
    pub const fn is_masked(&self, line: u8) -> bool {
        match bit(line) {
            Some(bit) => self.masked & bit != 0,
            None => false,
        }
    }

    /// The lowest line with a request that is not masked.
    fn next_line(&self) -> Option<u8> {
        let ready = self.requests & !self.masked & ALL_LINES;
        if ready == 0 {
            return None;
        }
        u8::try_from(ready.trailing_zeros()).ok()
    }
}

impl InterruptController for SimpleIrqChip {
    fn set_line(&mut self, line: u8, level: bool) {
        let Some(bit) = bit(line) else {
            return;
        };
        if level && self.levels & bit == 0 {
            self.requests |= bit;
        }
        if level {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
    }

    fn pending_vector(&self) -> Option<u8> {
        self.base.checked_add(self.next_line()?)
    }

    fn acknowledge(&mut self) -> Option<u8> {
        let line = self.next_line()?;
        let vector = self.base.checked_add(line)?;
        if let Some(bit) = bit(line) {
            self.requests &= !bit;
        }
        Some(vector)
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

    /// Records every `set_line` call, for checking what `forward_to` says.
    #[derive(Default)]
    struct Recorder(Vec<(u8, bool)>);

    impl InterruptController for Recorder {
        fn set_line(&mut self, line: u8, level: bool) {
            self.0.push((line, level));
        }
        fn pending_vector(&self) -> Option<u8> {
            None
        }
        fn acknowledge(&mut self) -> Option<u8> {
            None
        }
    }

    #[test]
    fn lines_keep_their_level_and_invalid_lines_are_refused() {
        let mut lines = IrqLines::new();
        assert!(lines.set(4, true));
        assert!(lines.set(23, true));
        assert!(!lines.set(24, true));
        assert!(!lines.set(255, true));
        assert!(lines.level(4) && lines.level(23));
        assert!(!lines.level(24) && !lines.level(0));
        assert_eq!(lines.levels(), (1 << 4) | (1 << 23));
    }

    #[test]
    fn forward_passes_changes_lowest_first_and_only_once() {
        let mut lines = IrqLines::new();
        lines.set(7, true);
        lines.set(3, true);
        lines.set(5, false); // no change
        let mut chip = Recorder::default();
        lines.forward_to(&mut chip);
        assert_eq!(chip.0, [(3, true), (7, true)]);
        assert!(!lines.has_changes());
        chip.0.clear();
        lines.forward_to(&mut chip);
        assert!(chip.0.is_empty(), "nothing new");
        lines.set(3, false);
        lines.set(3, false);
        lines.forward_to(&mut chip);
        assert_eq!(chip.0, [(3, false)]);
    }

    #[test]
    fn a_pulse_between_forwards_is_not_lost() {
        let mut lines = IrqLines::new();
        lines.set(2, true);
        lines.set(2, false);
        assert!(lines.has_changes());
        let mut chip = Recorder::default();
        lines.forward_to(&mut chip);
        assert_eq!(chip.0, [(2, true), (2, false)]);

        // High, then a fall and a rise before the next forward: the chip
        // sees a fresh edge.
        lines.set(6, true);
        lines.forward_to(&mut chip);
        chip.0.clear();
        lines.set(6, false);
        lines.set(6, true);
        lines.forward_to(&mut chip);
        assert_eq!(chip.0, [(6, false), (6, true)]);

        // And a pulse through a simple chip latches a request.
        let mut simple = SimpleIrqChip::new();
        lines.set(9, true);
        lines.set(9, false);
        lines.forward_to(&mut simple);
        assert_eq!(simple.acknowledge(), Some(0x20 + 9));
    }

    #[test]
    fn simple_chip_maps_lines_to_base_plus_line_lowest_first() {
        let mut chip = SimpleIrqChip::new();
        assert_eq!(chip.pending_vector(), None);
        chip.set_line(5, true);
        chip.set_line(1, true);
        assert_eq!(chip.pending_vector(), Some(0x21));
        assert_eq!(chip.pending_vector(), Some(0x21), "peeking takes nothing");
        assert_eq!(chip.acknowledge(), Some(0x21));
        assert_eq!(chip.acknowledge(), Some(0x25));
        assert_eq!(chip.acknowledge(), None);
    }

    #[test]
    fn simple_chip_latches_edges_only() {
        let mut chip = SimpleIrqChip::new();
        chip.set_line(0, true);
        assert_eq!(chip.acknowledge(), Some(0x20));
        chip.set_line(0, true);
        assert_eq!(chip.acknowledge(), None, "still high: no new edge");
        chip.set_line(0, false);
        assert_eq!(chip.acknowledge(), None);
        chip.set_line(0, true);
        assert_eq!(chip.acknowledge(), Some(0x20), "a new rising edge");
        // A request stays latched when the line drops before the ack.
        chip.set_line(0, false);
        chip.set_line(0, true);
        chip.set_line(0, false);
        assert_eq!(chip.acknowledge(), Some(0x20));
    }

    #[test]
    fn simple_chip_masks_delivery_but_keeps_the_request() {
        let mut chip = SimpleIrqChip::new();
        chip.set_masked(2, true);
        assert!(chip.is_masked(2));
        chip.set_line(2, true);
        chip.set_line(8, true);
        assert_eq!(chip.acknowledge(), Some(0x28), "line 2 is masked");
        assert_eq!(chip.pending_vector(), None);
        chip.set_masked(2, false);
        assert_eq!(chip.acknowledge(), Some(0x22));
        // Lines that do not exist are ignored everywhere.
        chip.set_masked(30, true);
        assert!(!chip.is_masked(30));
        chip.set_line(24, true);
        assert_eq!(chip.pending_vector(), None);
    }

    #[test]
    fn simple_chip_base_is_configurable_and_must_fit() {
        let mut chip = SimpleIrqChip::with_base(0x40).unwrap();
        assert_eq!(chip.base(), 0x40);
        chip.set_line(23, true);
        assert_eq!(chip.acknowledge(), Some(0x57));
        assert!(SimpleIrqChip::with_base(0xFF - 23).is_some());
        assert!(SimpleIrqChip::with_base(0xFF - 22).is_none());
    }

    proptest! {
        /// Whatever lines are driven, forwarding then leaves the chip's
        /// view equal to the lines' levels, and every vector acknowledged
        /// is base + a line that rose.
        #[test]
        fn forwarding_keeps_the_chip_in_step(
            ops in prop::collection::vec((any::<u8>(), any::<bool>(), any::<bool>()), 0..100)
        ) {
            let mut lines = IrqLines::new();
            let mut chip = SimpleIrqChip::new();
            let mut rose = 0u32;
            for (line, level, forward) in ops {
                let before = lines.level(line);
                lines.set(line, level);
                if level && !before && line < IRQ_LINES {
                    rose |= 1 << line;
                }
                if forward {
                    lines.forward_to(&mut chip);
                    prop_assert_eq!(chip.levels, lines.levels());
                    while let Some(vector) = chip.acknowledge() {
                        let line = vector - 0x20;
                        prop_assert!(line < IRQ_LINES);
                        prop_assert!(rose & (1 << line) != 0);
                        rose &= !(1 << line);
                    }
                }
            }
        }
    }
}
