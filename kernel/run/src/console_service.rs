//! The console as the run's first CPU serves it on every pass of its
//! loop: input routed to a guest goes to that guest's COM1 receiver (what
//! the receiver cannot take yet waits, bounded, and is offered again),
//! input for the monitor goes to the run's [`console::Monitor`], whose
//! answers and prompt go back to the console, and the console's output is
//! pumped.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use super::handover::ThisCpu;
use super::monitor::RunTarget;
use super::{vcpu_id, Backend, ConsoleInput, GuestRun};

/// The most input kept for one guest that has not read it yet; more is
/// dropped.
pub const GUEST_INPUT_MAX: usize = 4096;

/// How long input waits for a guest that takes none of it before it is
/// dropped (the guest does not read its COM1), in seconds.
const STALL_SECONDS: u64 = 1;

/// What the console service keeps between passes (on the first CPU only).
pub(super) struct ConsoleService {
    monitor: console::Monitor,
    /// Input for each configured guest that its receiver has not taken.
    pending: Vec<VecDeque<u8>>,
    /// Since when each guest's pending input has found no room (TSC).
    stalled_since: Vec<Option<u64>>,
    /// The monitor's input of this pass (emptied after it, kept for its
    /// capacity).
    monitor_in: Vec<u8>,
    /// The prompt has been drawn once.
    prompt_shown: bool,
    /// Some guest's input waits in `pending` (the pass skips the guests
    /// otherwise).
    any_pending: bool,
}

impl ConsoleService {
    /// The service for `run`'s guests.
    pub(super) fn new<B: Backend>(run: &GuestRun<B>) -> Self {
        let guests = run.slots.len();
        Self {
            monitor: console::Monitor::new(),
            pending: (0..guests).map(|_| VecDeque::new()).collect(),
            stalled_since: alloc::vec![None; guests],
            monitor_in: Vec::new(),
            prompt_shown: false,
            any_pending: false,
        }
    }
}

/// How a guest's pending input fared this pass.
enum Fed {
    /// Nothing is left (all taken, or dropped).
    Done,
    /// Some is left for the next pass.
    Waiting,
}

impl<B: Backend> GuestRun<B> {
    /// One pass of the console: input, the monitor, guest input, output.
    /// Returns when the console wants to be served again at the latest
    /// (TSC), if it does.
    pub(super) fn serve_console(&self, local: &mut ThisCpu, c: &mut ConsoleService) -> Option<u64> {
        let backend = &self.backend;
        // The common pass, between two slices: nothing waits anywhere.
        if c.prompt_shown && !c.any_pending {
            if let Some(by) = backend.console_quiet(backend.now()) {
                return by;
            }
        }
        if !c.prompt_shown {
            backend.console_prompt(&c.monitor.prompt());
            c.prompt_shown = true;
        }
        {
            let monitor_in = &mut c.monitor_in;
            let pending = &mut c.pending;
            let any_pending = &mut c.any_pending;
            backend.console_input(&mut |piece| match piece {
                ConsoleInput::Guest(i, bytes) => {
                    if let Some(queue) = pending.get_mut(i) {
                        let room = GUEST_INPUT_MAX.saturating_sub(queue.len());
                        queue.extend(bytes.iter().take(room));
                        *any_pending |= !queue.is_empty();
                    }
                }
                ConsoleInput::Monitor(bytes) => monitor_in.extend_from_slice(bytes),
            });
        }
        if !c.monitor_in.is_empty() {
            let mut target = RunTarget::new(self, local);
            let changed = c.monitor.feed(&c.monitor_in, &mut target, &mut |line| {
                let mut text = String::with_capacity(line.len().saturating_add(1));
                text.push_str(line);
                text.push('\n');
                backend.console_write(&text);
            });
            if changed {
                backend.console_prompt(&c.monitor.prompt());
            }
            c.monitor_in.clear();
        }
        let mut waiting = false;
        if c.any_pending {
            for (i, (queue, stalled)) in c.pending.iter_mut().zip(&mut c.stalled_since).enumerate()
            {
                if queue.is_empty() {
                    continue;
                }
                if let Fed::Waiting = self.feed_guest(i, queue, stalled) {
                    waiting = true;
                }
            }
            c.any_pending = waiting;
        }
        let pump = backend.console_pump();
        // Input a guest could not take yet is offered again soon.
        let retry = waiting.then(|| {
            backend
                .now()
                .saturating_add(backend.tsc_hz().checked_div(1000).unwrap_or(1))
        });
        match (pump, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Offers guest `i`'s pending input to its COM1 receiver and wakes its
    /// vCPU if the receiver took any. Input for a guest that is stopped,
    /// or that has taken none for [`STALL_SECONDS`], is dropped.
    fn feed_guest(&self, i: usize, queue: &mut VecDeque<u8>, stalled: &mut Option<u64>) -> Fed {
        let backend = &self.backend;
        let Some(slot) = self.slots.get(i) else {
            queue.clear();
            return Fed::Done;
        };
        // A guest being stopped or restarted holds its slot: offer the
        // input again rather than wait here.
        let Some(slot) = slot.try_lock() else {
            return Fed::Waiting;
        };
        let Some(vm) = slot.vm.clone() else {
            queue.clear();
            *stalled = None;
            return Fed::Done;
        };
        drop(slot);
        let now = backend.now();
        let name = &vm.name;
        let mut sink = |line: &str| backend.guest_line(name, line);
        let mut devices = vm.devices();
        let (front, back) = queue.as_slices();
        let mut taken = devices.feed_com1(front, now, &mut sink);
        if taken == front.len() && !back.is_empty() {
            taken = taken.saturating_add(devices.feed_com1(back, now, &mut sink));
        }
        drop(devices);
        queue.drain(..taken.min(queue.len()));
        if taken > 0 {
            *stalled = None;
            // A vCPU halted until its console has input now: the boot
            // vCPU routes the receiver's interrupt to whichever the guest
            // programmed.
            let kick = self.queue.lock().wake(vcpu_id(vm.first_vcpu));
            self.kick(kick);
        } else {
            let since = *stalled.get_or_insert(now);
            let limit = backend.tsc_hz().saturating_mul(STALL_SECONDS);
            if now.saturating_sub(since) >= limit {
                queue.clear();
                *stalled = None;
            }
        }
        if queue.is_empty() {
            Fed::Done
        } else {
            Fed::Waiting
        }
    }
}
