//! The monitor's executor: runs a [`Command`] against a [`MonitorTarget`]
//! and returns the lines to print. All the monitor's formatting is here,
//! pure: the `list` table, `info`, the register layout, the hex dump,
//! exit counts, the `log` replay and `stats`.
//!
//! A guest name that is not one of [`MonitorTarget::guests`] gets one
//! line naming it and the known guests; a target's refusal gets one line
//! starting with the command and the guest.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use crate::command::{Command, HELP};
use crate::mux::take_line_for_replay;
use crate::target::{
    GuestInfo, GuestSummary, HostStats, MemError, MonitorTarget, RegisterSnapshot, Segment,
    GPR_NAMES,
};
use crate::text::escape_into;

/// Bytes per hex dump line.
const DUMP_WIDTH: usize = 16;

/// Runs `command` against `target`; returns the lines to print (without
/// line ends).
pub fn execute<T: MonitorTarget + ?Sized>(command: &Command, target: &mut T) -> Vec<String> {
    let guest = match command {
        Command::Info(g)
        | Command::Exits(g)
        | Command::Log(g)
        | Command::Pause(g)
        | Command::Resume(g)
        | Command::Stop(g)
        | Command::Restart(g)
        | Command::Regs { guest: g, .. }
        | Command::Mem { guest: g, .. } => Some(g.as_str()),
        _ => None,
    };
    if let Some(name) = guest {
        let guests = target.guests();
        if !guests.iter().any(|g| g.name == name) {
            return alloc::vec![unknown_guest(name, &guests)];
        }
    }
    match command {
        Command::Help => HELP.iter().map(|l| l.to_string()).collect(),
        Command::List => list(&target.guests()),
        Command::Info(g) => match target.info(g) {
            Some(info) => format_info(&info),
            None => alloc::vec![unknown_guest(g, &target.guests())],
        },
        Command::Regs { guest, vcpu } => match target.regs(guest, *vcpu) {
            Ok(regs) => format_regs(guest, *vcpu, &regs),
            Err(why) => alloc::vec![format!("regs {guest}: {why}")],
        },
        Command::Mem { guest, gpa, len } => mem(target, guest, *gpa, *len),
        Command::Exits(g) => match target.exits(g) {
            Some(exits) => {
                let mut rows = exits.by_reason.clone();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let mut lines = alloc::vec![format!("{g}: {} exits", exits.total)];
                let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
                for (reason, count) in rows {
                    lines.push(format!(
                        "  {reason:<width$}  {count:>12}  {:>6}",
                        percent(count, exits.total)
                    ));
                }
                lines
            }
            None => alloc::vec![unknown_guest(g, &target.guests())],
        },
        Command::Log(g) => match target.log(g) {
            Some(bytes) => replay(g, &bytes),
            None => alloc::vec![unknown_guest(g, &target.guests())],
        },
        Command::Pause(g) => done("pause", g, target.pause(g), "paused"),
        Command::Resume(g) => done("resume", g, target.resume(g), "resumed"),
        Command::Stop(g) => done("stop", g, target.stop(g), "stopped"),
        Command::Restart(g) => done("restart", g, target.restart(g), "restarting"),
        Command::Stats => format_stats(&target.stats()),
        Command::LogLevel(level) => match target.set_log_level(*level) {
            Ok(()) => alloc::vec![format!("log level is now {}", level.name())],
            Err(why) => alloc::vec![format!("loglevel: {why}")],
        },
        Command::Poweroff => {
            target.poweroff();
            alloc::vec![String::from("powering off")]
        }
    }
}

/// The line for a guest name that is not known.
fn unknown_guest(name: &str, guests: &[GuestSummary]) -> String {
    if guests.is_empty() {
        return format!("no guest named {name:?}; there are no guests");
    }
    let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    format!(
        "no guest named {name:?}; the guests are {}",
        names.join(", ")
    )
}

/// The line for a guest action's result.
fn done(command: &str, guest: &str, result: Result<(), String>, what: &str) -> Vec<String> {
    alloc::vec![match result {
        Ok(()) => format!("{guest}: {what}"),
        Err(why) => format!("{command} {guest}: {why}"),
    }]
}

/// `bytes` as the operator reads a size: the largest of G, M, K that
/// divides it exactly, else bytes.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (unit, suffix) in UNITS {
        if bytes != 0 && bytes.checked_rem(unit) == Some(0) {
            return format!("{}{suffix}", bytes.checked_div(unit).unwrap_or(0));
        }
    }
    format!("{bytes}B")
}

/// Milliseconds as `h:mm:ss`.
pub fn format_uptime(ms: u64) -> String {
    let s = ms.checked_div(1000).unwrap_or(0);
    let (h, m, s) = (
        s.checked_div(3600).unwrap_or(0),
        s.checked_div(60).unwrap_or(0).checked_rem(60).unwrap_or(0),
        s.checked_rem(60).unwrap_or(0),
    );
    format!("{h}:{m:02}:{s:02}")
}

/// A CPU list: `any` when empty, else `0,2,3`.
fn format_cpus(cpus: &[u32]) -> String {
    if cpus.is_empty() {
        return String::from("any");
    }
    let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    list.join(",")
}

/// `part` of `whole` as a percentage with one decimal.
fn percent(part: u64, whole: u64) -> String {
    let tenths = u128::from(part)
        .saturating_mul(1000)
        .checked_div(u128::from(whole))
        .unwrap_or(0);
    format!(
        "{}.{}%",
        tenths.checked_div(10).unwrap_or(0),
        tenths.checked_rem(10).unwrap_or(0)
    )
}

/// The `list` table.
fn list(guests: &[GuestSummary]) -> Vec<String> {
    if guests.is_empty() {
        return alloc::vec![String::from("no guests")];
    }
    let name_w = guests
        .iter()
        .map(|g| g.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let cpus_w = guests
        .iter()
        .map(|g| format_cpus(&g.cpus).len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut lines = alloc::vec![format!(
        "{:<name_w$}  {:<8}  {:>5}  {:<cpus_w$}  {:>6}  {:>9}  {:>12}",
        "NAME", "STATE", "VCPUS", "CPUS", "MEMORY", "UPTIME", "EXITS"
    )];
    for g in guests {
        lines.push(format!(
            "{:<name_w$}  {:<8}  {:>5}  {:<cpus_w$}  {:>6}  {:>9}  {:>12}",
            g.name,
            g.state.name(),
            g.vcpus,
            format_cpus(&g.cpus),
            format_size(g.memory),
            format_uptime(g.uptime_ms),
            g.exits
        ));
    }
    lines
}

/// The `info` lines.
fn format_info(info: &GuestInfo) -> Vec<String> {
    let g = &info.summary;
    let mut lines = alloc::vec![
        format!(
            "{}: {}, up {}, {} restarts",
            g.name,
            g.state.name(),
            format_uptime(g.uptime_ms),
            info.restarts
        ),
        format!(
            "  vcpus {}, cpus {}, memory {}, exits {}",
            g.vcpus,
            format_cpus(&g.cpus),
            format_size(g.memory),
            g.exits
        ),
        format!("  kernel {} ({})", info.kernel, info.format),
    ];
    if let Some(initrd) = &info.initrd {
        lines.push(format!("  initrd {initrd}"));
    }
    let mut cmdline = Vec::new();
    escape_into(info.cmdline.as_bytes(), &mut cmdline);
    lines.push(format!(
        "  cmdline \"{}\"",
        String::from_utf8_lossy(&cmdline)
    ));
    if let Some(why) = &info.last_stop {
        lines.push(format!("  last stop: {why}"));
    }
    lines.push(format!(
        "  console output dropped: {} bytes",
        info.console_dropped
    ));
    lines
}

/// One segment register's line.
fn segment_line(name: &str, s: &Segment) -> String {
    format!(
        "{name:<4} {:04x}  base {:016x}  limit {:08x}  access {:05x}",
        s.selector, s.base, s.limit, s.access
    )
}

/// The `regs` layout: GPRs four to a line, then RIP and RFLAGS, control
/// registers and EFER, segments, descriptor tables.
fn format_regs(guest: &str, vcpu: u32, r: &RegisterSnapshot) -> Vec<String> {
    let mut lines = alloc::vec![format!("{guest} vcpu {vcpu}:")];
    for (names, values) in GPR_NAMES.chunks(4).zip(r.gprs.chunks(4)) {
        let mut line = String::new();
        for (name, value) in names.iter().zip(values) {
            if !line.is_empty() {
                line.push_str("  ");
            }
            let _ = write!(line, "{name:<3} {value:016x}");
        }
        lines.push(line);
    }
    lines.push(format!("rip {:016x}  rflags {:016x}", r.rip, r.rflags));
    lines.push(format!(
        "cr0 {:016x}  cr2 {:016x}  cr3 {:016x}  cr4 {:016x}",
        r.cr0, r.cr2, r.cr3, r.cr4
    ));
    lines.push(format!("efer {:016x}", r.efer));
    for (name, segment) in [
        ("cs", &r.cs),
        ("ds", &r.ds),
        ("es", &r.es),
        ("fs", &r.fs),
        ("gs", &r.gs),
        ("ss", &r.ss),
        ("tr", &r.tr),
        ("ldtr", &r.ldtr),
    ] {
        lines.push(segment_line(name, segment));
    }
    lines.push(format!(
        "gdtr base {:016x}  limit {:04x}   idtr base {:016x}  limit {:04x}",
        r.gdtr.0, r.gdtr.1, r.idtr.0, r.idtr.1
    ));
    lines
}

/// `mem`: reads the range and dumps it.
fn mem<T: MonitorTarget + ?Sized>(target: &mut T, guest: &str, gpa: u64, len: u64) -> Vec<String> {
    let size = usize::try_from(len).unwrap_or(0);
    let mut buf = alloc::vec![0u8; size];
    let last = gpa.saturating_add(len.saturating_sub(1));
    match target.read_memory(guest, gpa, &mut buf) {
        Ok(()) => hex_dump(gpa, &buf),
        Err(MemError::OutOfRange { ram }) if ram.high_len() == 0 => alloc::vec![format!(
            "mem {guest}: {gpa:#x}..={last:#x} is past the guest's RAM, which ends at {:#x}",
            ram.end()
        )],
        Err(MemError::OutOfRange { ram }) => alloc::vec![format!(
            "mem {guest}: {gpa:#x}..={last:#x} is not all the guest's RAM, which is [0, {:#x}) \
             and [{:#x}, {:#x})",
            ram.low_len(),
            addr::HIGH_RAM_BASE,
            ram.end()
        )],
        Err(MemError::NoMemory) => {
            alloc::vec![format!("mem {guest}: the guest has no memory now")]
        }
        Err(MemError::Other(why)) => alloc::vec![format!("mem {guest}: {why}")],
    }
}

/// A hex dump of `bytes` read at `address`: the address, 16 bytes in hex
/// in two groups of 8, and the printable ones as ASCII (`.` otherwise).
pub fn hex_dump(address: u64, bytes: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut offset = 0u64;
    for chunk in bytes.chunks(DUMP_WIDTH) {
        let mut line = format!("{:016x} ", address.wrapping_add(offset));
        for i in 0..DUMP_WIDTH {
            if i == DUMP_WIDTH / 2 {
                line.push(' ');
            }
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(line, " {b:02x}");
                }
                None => line.push_str("   "),
            }
        }
        line.push_str("  |");
        for &b in chunk {
            line.push(if (0x20..=0x7E).contains(&b) {
                char::from(b)
            } else {
                '.'
            });
        }
        line.push('|');
        lines.push(line);
        offset = offset.wrapping_add(DUMP_WIDTH as u64);
    }
    lines
}

/// `log`: the replay tail as `[guest] line` lines, by the same line rules
/// and escaping as the live console.
fn replay(guest: &str, bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return alloc::vec![format!("{guest} has printed nothing yet")];
    }
    let mut lines = alloc::vec![format!(
        "--- {guest}: the last {} bytes of output ---",
        bytes.len()
    )];
    take_line_for_replay(bytes, &mut |line| {
        let mut text = Vec::new();
        escape_into(line, &mut text);
        lines.push(format!("[{guest}] {}", String::from_utf8_lossy(&text)));
    });
    lines.push(format!("--- {guest}: end of output ---"));
    lines
}

/// The `stats` lines.
fn format_stats(s: &HostStats) -> Vec<String> {
    let mut lines = alloc::vec![
        format!(
            "up {}, memory {} free of {}, largest free block {} ({} of the free memory)",
            format_uptime(s.uptime_ms),
            format_size(s.free_memory),
            format_size(s.total_memory),
            format_size(s.largest_free),
            percent(s.largest_free, s.free_memory)
        ),
        format!(
            "console: {} output bytes dropped, {} input bytes dropped",
            s.console_dropped, s.input_dropped
        ),
    ];
    for cpu in &s.cpus {
        lines.push(format!(
            "cpu{:<3} in guests {:>3}.{}%  switches {}",
            cpu.cpu,
            cpu.guest_permille.checked_div(10).unwrap_or(0),
            cpu.guest_permille.checked_rem(10).unwrap_or(0),
            cpu.switches
        ));
    }
    lines
}
