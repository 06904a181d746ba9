//! The serial console while guests run: the physical COM1 in both
//! directions, driven by interrupts, over the `console` crate's pure core.
//!
//! Before the guests start and after they have stopped, everything is
//! printed straight to the port (`serial`). While they run ([`start`] ..
//! [`finish`]), nothing that prints waits on the port:
//!
//! - Output: the log, each guest's COM1 and the monitor's answers go into
//!   bounded rings in a [`Mux`] (one source each), which decides what the
//!   port sends next; whoever adds output tops up the port's 16-byte
//!   transmit FIFO if it is empty, and the port's transmitter-empty
//!   interrupt (routed through the I/O APIC to the boot CPU) sends the
//!   rest. A guest's bytes that do not fit its ring are dropped and
//!   counted; the log, which the hypervisor writes itself, is never
//!   dropped: a log line that does not fit waits (bounded) for the port.
//! - Input: the receive interrupt moves every byte the port holds into an
//!   [`InputBuffer`]; the run's first CPU takes them with [`route_input`],
//!   which applies the hot key (focus changes) and hands the rest to the
//!   guest in focus or to the monitor.
//!
//! Without an I/O APIC the port is polled instead, by the run's first CPU
//! between slices.
//!
//! The state sits behind one spin lock taken with interrupts off (the host
//! runs with them off; the boot CPU takes the port's interrupt only while
//! it halts, holding no lock). The fatal path takes it by force.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use console::{Focus, InputBuffer, InputRouter, Mux, OutputRing, Routed, SourceId, SourceKind};
use log::{info, warn};
use mm::addr::HostPhysAddr;
use spin::Mutex;

use crate::arch;

/// COM1's I/O base and registers.
const COM1: u16 = 0x3F8;
const THR: u16 = COM1;
const IER: u16 = COM1 + 1;
const IIR_FCR: u16 = COM1 + 2;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const MSR: u16 = COM1 + 6;
/// LSR: a received byte waits; the transmit FIFO is empty.
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// IER: received data, transmitter empty.
const IER_RX: u8 = 1 << 0;
const IER_TX: u8 = 1 << 1;
/// MCR: DTR, RTS and OUT2 (which gates the port's interrupt line on PCs).
const MCR_DTR_RTS_OUT2: u8 = 0x0B;
/// FCR: FIFOs on and cleared, receive trigger at one byte (every byte
/// interrupts at once: typing feels immediate).
const FCR_ON_TRIGGER_1: u8 = 0x07;
/// The 16550A's transmit FIFO.
const TX_FIFO: usize = 16;
/// COM1's ISA interrupt line.
const COM1_IRQ: u32 = 4;
/// The host vector COM1's interrupt arrives on.
pub const CONSOLE_VECTOR: u8 = 0xE0;

/// Ring sizes: a guest's pending output and its replay tail; the log's
/// and the monitor's pending output.
const GUEST_RING: usize = 64 * 1024;
const GUEST_HISTORY: usize = 16 * 1024;
const HOST_RING: usize = 64 * 1024;
/// How long a source's partial line waits before it is shown.
const PAUSE_MS: u64 = 20;

struct State {
    mux: Mux,
    router: InputRouter,
    input: InputBuffer,
    log: SourceId,
    lines: SourceId,
    /// Configured guest index and its source.
    guests: Vec<(usize, SourceId)>,
    pause_ticks: u64,
    /// The monitor's prompt, drawn once the operator has used the
    /// console (a key for the monitor, or the hot key): a machine
    /// nobody types at shows only its output.
    prompt: String,
    engaged: bool,
    /// [`HELD`] as last applied to the multiplexer.
    held: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Output goes through [`STATE`] rather than straight to the port.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The port's interrupt is routed (else the run's first CPU polls it).
static ROUTED: AtomicBool = AtomicBool::new(false);
/// The input buffer may hold bytes: [`route_input`] looks (a flag, so
/// the run's pass over the console costs a load when nothing came).
static INPUT_WAITING: AtomicBool = AtomicBool::new(false);
/// The input buffer was full with bytes still in the port: the port's
/// receive condition stays raised (no new edge, so no interrupt) until
/// the run's passes have taken them.
static RX_BACKLOG: AtomicBool = AtomicBool::new(false);
/// When [`pump`] next has something to do: the earliest a queued
/// partial line may show, or `u64::MAX` with nothing queued. Writers
/// lower it; only `pump` raises it.
static PUMP_AT: AtomicU64 = AtomicU64::new(u64::MAX);
/// Guests (by configured index, the first 64) whose vCPU waits for a CPU
/// after a preemption: the multiplexer keeps their partial lines. Set
/// without the lock by the run; applied under it ([`apply_holds`]).
static HELD: AtomicU64 = AtomicU64::new(0);
/// The port's interrupts served, for the report at the end.
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// TSC at boot, for `stats`' uptime.
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    crate::guests::rdtsc()
}

fn inb(port: u16) -> u8 {
    // SAFETY: COM1's registers, owned by the console while it runs (the
    // serial module's lock is not used meanwhile); reading LSR, IIR, MSR
    // or RBR only acknowledges the port's own conditions.
    unsafe { arch::inb(port) }
}

fn outb(port: u16, value: u8) {
    // SAFETY: as for `inb`: COM1's registers, owned by the console.
    unsafe { arch::outb(port, value) }
}

/// Records the TSC at boot (the first thing `kernel_main` measures from).
pub fn record_boot(tsc: u64) {
    BOOT_TSC.store(tsc, Ordering::Relaxed);
}

/// Milliseconds since boot.
pub fn uptime_ms(tsc_hz: u64) -> u64 {
    let ticks = now().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ticks / (tsc_hz / 1000).max(1)
}

/// Takes the port over for the run: output through the rings, input by
/// interrupt. `hotkey` is the byte that, three times in a row, moves the
/// focus.
pub fn start(hotkey: u8, tsc_hz: u64) {
    crate::serial::drain();
    let pause_ticks = tsc_hz / 1000 * PAUSE_MS;
    let mut mux = Mux::new(pause_ticks);
    let log = mux.add_source("log", SourceKind::Host, OutputRing::new(HOST_RING, 0));
    let lines = mux.add_source("console", SourceKind::Host, OutputRing::new(HOST_RING, 0));
    let router = InputRouter::new(hotkey);
    let key = router.hotkey_name();
    *STATE.lock() = Some(State {
        mux,
        router,
        input: InputBuffer::new(),
        log,
        lines,
        guests: Vec::new(),
        pause_ticks,
        prompt: String::new(),
        engaged: false,
        held: 0,
    });
    outb(IIR_FCR, FCR_ON_TRIGGER_1);
    outb(MCR, MCR_DTR_RTS_OUT2);
    let routed = route_irq();
    ROUTED.store(routed, Ordering::Release);
    // Clear whatever the port held, then let it interrupt.
    for _ in 0..64 {
        if inb(LSR) & LSR_DATA_READY == 0 {
            break;
        }
        let _ = inb(THR);
    }
    let _ = inb(IIR_FCR);
    let _ = inb(MSR);
    outb(IER, IER_RX | IER_TX);
    ACTIVE.store(true, Ordering::Release);
    info!(
        "console: COM1 carries the guests' output and the log; Enter brings up the monitor, {key} three times moves the input focus ({})",
        if routed {
            "port interrupt on the I/O APIC"
        } else {
            "no I/O APIC: the port is polled"
        }
    );
}

/// Gives the port back to direct printing: sends everything still queued
/// (waiting for the port), then turns its interrupts off.
pub fn finish() {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let (out, input) = dropped();
    log::debug!(
        "console: {} port interrupts; {out} output bytes and {input} input bytes dropped",
        INTERRUPTS.load(Ordering::Relaxed)
    );
    ACTIVE.store(false, Ordering::Release);
    let mut guard = STATE.lock();
    if let Some(state) = guard.as_mut() {
        state.mux.set_focus(Focus::Monitor);
        state.mux.set_prompt(b"");
        HELD.store(0, Ordering::Release);
        apply_holds(state, 0);
        drain_all(state);
    }
    *guard = None;
    outb(IER, 0);
}

/// The fatal path: whatever is queued goes out (bounded) before the
/// failure report, taking the lock by force.
pub fn fatal_flush() {
    if !ACTIVE.swap(false, Ordering::AcqRel) {
        return;
    }
    if STATE.is_locked() {
        // SAFETY: only on the fatal path, after which the machine powers
        // off; a holder that died mid-update leaves at worst a garbled
        // line.
        unsafe { STATE.force_unlock() };
    }
    if let Some(state) = STATE.lock().as_mut() {
        state.mux.set_prompt(b"");
        drain_all(state);
    }
    outb(IER, 0);
}

/// Sends everything queued, partial lines included, waiting for the port.
fn drain_all(state: &mut State) {
    // Far more rounds than the rings hold bytes: bounded even if the port
    // never becomes ready.
    for _ in 0..200_000 {
        if !wait_tx_empty() {
            return;
        }
        // `u64::MAX`: every partial line counts as quiet.
        if state.mux.next_chunk(u64::MAX, TX_FIFO, &mut send) == 0 && !state.mux.has_output() {
            return;
        }
    }
}

/// Waits (bounded) until the transmit FIFO is empty.
fn wait_tx_empty() -> bool {
    for _ in 0..1_000_000 {
        if inb(LSR) & LSR_THR_EMPTY != 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn send(bytes: &[u8]) {
    for &b in bytes {
        outb(THR, b);
    }
}

/// Guest `index`'s vCPU waits for a CPU (`held`) or runs again: two
/// atomic operations, no lock (the run calls it at slice boundaries).
pub fn hold(index: usize, held: bool) {
    let Some(bit) = held_bit(index) else {
        return;
    };
    if held {
        HELD.fetch_or(bit, Ordering::AcqRel);
    } else {
        HELD.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Guest `index`'s bit in [`HELD`]; `None` past the first 64 guests
/// (theirs are never held).
fn held_bit(index: usize) -> Option<u64> {
    u32::try_from(index).ok().and_then(|i| 1u64.checked_shl(i))
}

/// Tells the multiplexer which guests are held now.
fn apply_holds(state: &mut State, now: u64) {
    let held = HELD.load(Ordering::Acquire);
    let changed = held ^ state.held;
    if changed == 0 {
        return;
    }
    for &(index, id) in &state.guests {
        let Some(bit) = held_bit(index) else {
            continue;
        };
        if changed & bit != 0 {
            state.mux.hold(id, held & bit != 0, now);
        }
    }
    state.held = held;
}

/// Fills the transmit FIFO if it is empty (never waits), and has
/// [`pump`] look again once a partial line left queued may show.
fn top_up(state: &mut State, now: u64) {
    apply_holds(state, now);
    if inb(LSR) & LSR_THR_EMPTY != 0 {
        state.mux.next_chunk(now, TX_FIFO, &mut send);
    }
    if state.mux.has_output() {
        PUMP_AT.fetch_min(now.saturating_add(state.pause_ticks), Ordering::AcqRel);
    } else {
        // All sent (by the port's interrupt, usually): the pass that would
        // have looked for a partial line has nothing to do. Every writer
        // of `PUMP_AT` holds the lock, so no later deadline is lost.
        PUMP_AT.store(u64::MAX, Ordering::Release);
    }
}

/// Moves received bytes into the input buffer while it has room. What
/// does not fit stays in the port (whose own flow control, or FIFO,
/// holds it) until [`route_input`] has made room: a paste is delivered
/// late rather than lost.
fn take_received(state: &mut State) {
    // At most a FIFO's worth and then some: a port that claims data
    // forever cannot hold the CPU.
    for _ in 0..64 {
        if state.input.len() >= console::INPUT_CAPACITY {
            RX_BACKLOG.store(true, Ordering::Release);
            return;
        }
        if inb(LSR) & LSR_DATA_READY == 0 {
            break;
        }
        state.input.push(inb(THR));
        INPUT_WAITING.store(true, Ordering::Release);
    }
    RX_BACKLOG.store(false, Ordering::Release);
}

/// Serves the port: received bytes in, the next output out, every
/// interrupt condition cleared (the line is edge-triggered: one left set
/// would keep it high and silence it). Called by the port's interrupt on
/// the boot CPU, halted or in a guest.
pub fn on_interrupt() {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return;
    };
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    for _ in 0..8 {
        let iir = inb(IIR_FCR);
        if iir & 1 != 0 {
            break;
        }
        match (iir >> 1) & 0b111 {
            // Line status: reading LSR clears it.
            0b011 => {
                let _ = inb(LSR);
            }
            // Modem status: reading MSR clears it.
            0b000 => {
                let _ = inb(MSR);
            }
            // Received data, or a character timeout; transmitter empty is
            // cleared by the IIR read itself.
            _ => {}
        }
        take_received(state);
    }
    take_received(state);
    top_up(state, now());
}

/// Registers configured guest `index` as a source and a focus target.
pub fn add_guest(index: usize, name: &str) {
    if let Some(state) = STATE.lock().as_mut() {
        let id = state.mux.add_source(
            name,
            SourceKind::Guest,
            OutputRing::new(GUEST_RING, GUEST_HISTORY),
        );
        state.router.add_guest(id, name);
        state.guests.push((index, id));
    }
}

fn guest_source(state: &State, index: usize) -> Option<SourceId> {
    state
        .guests
        .iter()
        .find(|(i, _)| *i == index)
        .map(|&(_, id)| id)
}

/// Guest `index`'s raw COM1 output.
pub fn guest_output(index: usize, bytes: &[u8]) {
    let now = now();
    if let Some(state) = STATE.lock().as_mut() {
        if let Some(id) = guest_source(state, index) {
            state.mux.write(id, bytes, now);
            top_up(state, now);
        }
    }
}

/// One line a guest printed other than on its COM1 (the print
/// hypercall): queued as a line of that guest's, or printed straight
/// when the console is not running.
pub fn guest_line(name: &str, line: &str) {
    if ACTIVE.load(Ordering::Acquire) {
        let now = now();
        if let Some(state) = STATE.lock().as_mut() {
            match state.mux.find(name) {
                Some(id) => {
                    state.mux.write(id, line.as_bytes(), now);
                    state.mux.write(id, b"\n", now);
                }
                // Not a source (yet): still in order, as a host line; the
                // line buffer that made it escaped it already.
                None => {
                    let lines = state.lines;
                    let text = alloc::format!("[{name}] {line}\n");
                    state.mux.write(lines, text.as_bytes(), now);
                }
            }
            top_up(state, now);
            return;
        }
    }
    crate::serial::guest_line(name, line);
}

/// A log line; false when the console is not running (the caller prints
/// it straight).
pub fn log_line(args: fmt::Arguments<'_>) -> bool {
    if !ACTIVE.load(Ordering::Acquire) {
        return false;
    }
    let mut text = String::new();
    let _ = text.write_fmt(args);
    let mut guard = STATE.lock();
    let Some(state) = guard.as_mut() else {
        return false;
    };
    let log = state.log;
    // The log is never dropped: make room by sending what is queued,
    // waiting for the port (bounded).
    for _ in 0..100_000 {
        let room = state
            .mux
            .ring(log)
            .map_or(0, |r| r.capacity().saturating_sub(r.pending_len()));
        if room >= text.len() || !wait_tx_empty() {
            break;
        }
        state.mux.next_chunk(u64::MAX, TX_FIFO, &mut send);
    }
    let now = now();
    state.mux.write(log, text.as_bytes(), now);
    top_up(state, now);
    true
}

/// Host text (monitor answers), whole lines.
pub fn write_host(text: &str) {
    let now = now();
    if let Some(state) = STATE.lock().as_mut() {
        let lines = state.lines;
        state.mux.write(lines, text.as_bytes(), now);
        top_up(state, now);
    }
}

/// The monitor's prompt.
pub fn set_prompt(prompt: &str) {
    let now = now();
    if let Some(state) = STATE.lock().as_mut() {
        state.prompt.clear();
        state.prompt.push_str(prompt);
        if state.engaged {
            state.mux.set_prompt(prompt.as_bytes());
            top_up(state, now);
        }
    }
}

/// Where a routed piece of input goes.
pub enum Input {
    /// Configured guest `.0`.
    Guest(usize, Vec<u8>),
    /// The monitor.
    Monitor(Vec<u8>),
}

/// Takes the received bytes and routes them by focus; focus changes are
/// applied and announced here. The pieces are handed out after the lock
/// is released.
///
/// With nothing received this is three loads (the run's first CPU calls
/// it between every two slices, on the vCPU switch's path).
#[inline]
pub fn route_input(out: &mut dyn FnMut(Input)) {
    if ROUTED.load(Ordering::Acquire)
        && !INPUT_WAITING.load(Ordering::Acquire)
        && !RX_BACKLOG.load(Ordering::Acquire)
    {
        return;
    }
    route_received(out);
}

/// Whether [`route_input`] and [`pump`] at clock value `now` would both
/// return at once, having done nothing: nothing received, nothing held
/// back in the port, no output due before the pump's deadline. `Some` of
/// what [`pump`] would return then.
#[inline]
pub fn quiet(now: u64) -> Option<Option<u64>> {
    let at = PUMP_AT.load(Ordering::Acquire);
    let quiet = ROUTED.load(Ordering::Acquire)
        && !INPUT_WAITING.load(Ordering::Acquire)
        && !RX_BACKLOG.load(Ordering::Acquire)
        && now < at;
    quiet.then_some((at != u64::MAX).then_some(at))
}

/// [`route_input`] with something to route.
#[inline(never)]
fn route_received(out: &mut dyn FnMut(Input)) {
    let mut pieces: Vec<Input> = Vec::new();
    {
        let now = now();
        let mut guard = STATE.lock();
        let Some(state) = guard.as_mut() else {
            return;
        };
        if !ROUTED.load(Ordering::Acquire) || RX_BACKLOG.load(Ordering::Acquire) {
            take_received(state);
        }
        let mut bytes = [0u8; console::INPUT_CAPACITY];
        INPUT_WAITING.store(false, Ordering::Release);
        let n = state.input.drain(&mut bytes);
        // Room again for what the port still holds.
        if RX_BACKLOG.load(Ordering::Acquire) {
            take_received(state);
        }
        if n > 0 {
            let was_engaged = state.engaged;
            let State {
                mux,
                router,
                guests,
                lines,
                engaged,
                ..
            } = state;
            router.feed(bytes.get(..n).unwrap_or(&[]), &mut |routed| match routed {
                Routed::Guest(id, b) => {
                    if let Some(&(index, _)) = guests.iter().find(|(_, g)| *g == id) {
                        pieces.push(Input::Guest(index, b.to_vec()));
                    }
                }
                Routed::Monitor(b) => {
                    *engaged = true;
                    pieces.push(Input::Monitor(b.to_vec()));
                }
                Routed::FocusChanged {
                    focus,
                    announcement,
                } => {
                    *engaged = true;
                    mux.set_focus(focus);
                    mux.write(*lines, announcement.as_bytes(), now);
                    mux.write(*lines, b"\n", now);
                }
            });
            if state.engaged && !was_engaged {
                state.mux.set_prompt(state.prompt.as_bytes());
            }
            top_up(state, now);
        }
    }
    for piece in pieces {
        out(piece);
    }
}

/// Sends what the port can take now; `Some(tsc)` when output is still
/// queued: serve the console again by then.
///
/// Nothing due is a clock read and three loads (as [`route_input`], on
/// the vCPU switch's path).
#[inline]
pub fn pump() -> Option<u64> {
    let now = now();
    let at = PUMP_AT.load(Ordering::Acquire);
    // With the port's interrupt doing the sending, there is nothing to do
    // before a queued partial line may show.
    if now < at && ROUTED.load(Ordering::Acquire) && !RX_BACKLOG.load(Ordering::Acquire) {
        return (at != u64::MAX).then_some(at);
    }
    pump_now(now)
}

/// [`pump`] with something due.
#[inline(never)]
fn pump_now(now: u64) -> Option<u64> {
    let routed = ROUTED.load(Ordering::Acquire);
    let mut guard = STATE.lock();
    let state = guard.as_mut()?;
    if !routed {
        take_received(state);
    }
    PUMP_AT.store(u64::MAX, Ordering::Release);
    top_up(state, now);
    // Output still queued (a port that is slower than the guests, or a
    // CPU that takes no interrupt exits): look again a little later.
    let mut again = None;
    if state.mux.has_output() {
        let at = now.saturating_add(state.pause_ticks / 2);
        PUMP_AT.store(at, Ordering::Release);
        again = Some(at);
    }
    // Bytes held back in the port need the next pass within a
    // millisecond.
    if RX_BACKLOG.load(Ordering::Acquire) {
        let soon = now.saturating_add(state.pause_ticks / PAUSE_MS);
        again = Some(again.map_or(soon, |at| at.min(soon)));
    }
    again
}

/// Guest `index`'s replay tail and the bytes of its output dropped.
pub fn history(index: usize) -> Option<(Vec<u8>, u64)> {
    let guard = STATE.lock();
    let state = guard.as_ref()?;
    let id = guest_source(state, index)?;
    state.mux.ring(id).map(|r| (r.history(), r.dropped()))
}

/// Output bytes dropped (all sources) and input bytes dropped.
pub fn dropped() -> (u64, u64) {
    STATE
        .lock()
        .as_ref()
        .map_or((0, 0), |s| (s.mux.dropped(), s.input.dropped()))
}

/// The I/O APIC pin COM1's interrupt arrives on, once mapped.
static IOAPIC_REGS: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static IOAPIC_PIN: AtomicU32 = AtomicU32::new(0);

/// Finds and maps the I/O APIC that serves COM1's interrupt line. Run on
/// the boot CPU before the other CPUs start (the mapping changes the
/// shared page tables); the pin is programmed when the console starts.
pub fn prepare_irq() {
    let madt = match crate::power::madt() {
        Ok(madt) => madt,
        Err(e) => {
            warn!("console: no MADT ({e}): COM1 will be polled");
            return;
        }
    };
    // ISA IRQ 4 is GSI 4 on the machines we run on (no interrupt source
    // override names it).
    let gsi = COM1_IRQ;
    let Some(&(_, address, base)) = madt
        .io_apics
        .iter()
        .find(|&&(_, _, base)| base <= gsi && gsi - base < 24)
    else {
        warn!("console: no I/O APIC serves IRQ {gsi}: COM1 will be polled");
        return;
    };
    match crate::drivers::mmio::map_uncached(HostPhysAddr::new(u64::from(address)), 0x1000) {
        Ok(regs) => {
            IOAPIC_PIN.store(gsi - base, Ordering::Release);
            IOAPIC_REGS.store(regs, Ordering::Release);
        }
        Err(e) => {
            warn!(
                "console: the I/O APIC at {address:#x} cannot be mapped ({e}): COM1 will be polled"
            );
        }
    }
}

/// Routes COM1's interrupt line to this (the boot) CPU through the I/O
/// APIC [`prepare_irq`] found; false where there is none.
fn route_irq() -> bool {
    let regs = IOAPIC_REGS.load(Ordering::Acquire);
    if regs.is_null() {
        return false;
    }
    let pin = IOAPIC_PIN.load(Ordering::Acquire);
    let dest = crate::lapic::id();
    // Redirection entry: fixed delivery, physical destination, active
    // high, edge-triggered, unmasked.
    let low = u32::from(CONSOLE_VECTOR);
    let high = dest << 24;
    // SAFETY: `regs` maps the I/O APIC's register page (IOREGSEL at 0,
    // IOWIN at 0x10, 32-bit accesses); the host uses no other pin of it,
    // and this runs on the boot CPU while no other CPU touches it.
    unsafe {
        let select = regs.cast::<u32>();
        let window = regs.add(0x10).cast::<u32>();
        select.write_volatile(0x10 + 2 * pin + 1);
        window.write_volatile(high);
        select.write_volatile(0x10 + 2 * pin);
        window.write_volatile(low);
    }
    true
}
