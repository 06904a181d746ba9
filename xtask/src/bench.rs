//! `cargo xtask bench`: the benchmarks that write BENCHMARKS.md.
//!
//! The VM-exit round trips: the benchmark guest (`guest-images/asm/
//! cpuid_loop.S`, alone in `guest-images/bench`) reads the TSC around 1000
//! CPUID exits, 1000 COM1 writes and 1000 iterations of an empty loop, and
//! prints the averages. It runs under Bochs, where one TSC tick is one
//! emulated instruction (guest or host) and the figures are exact and the
//! same on every run; the empty loop, two instructions an iteration, checks
//! that on every run.

use std::fmt::Write as _;
use std::time::Duration;

use xtask::build::{self, Firmware, Variant};
use xtask::runner::{self, BootOptions, Engine, Machine};
use xtask::{out_dir, setup, workspace_root};

/// The exit-path target for a CPUID round trip (Bochs ticks).
const CPUID_TARGET: u64 = 100;

/// One figure the guest printed: the average of `what`.
struct Figure {
    rounds: u64,
    average: u64,
}

/// Finds `[cpuid] <what>: <n> <unit>, average <t> ticks` in the console.
fn figure(serial: &str, what: &str) -> Result<Figure, String> {
    let prefix = format!("[cpuid] {what}: ");
    let line = serial
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| format!("the benchmark guest did not print `{prefix}...`"))?;
    let bad = || format!("cannot read the figure in `{prefix}{line}`");
    let (rounds, rest) = line.split_once(' ').ok_or_else(bad)?;
    let average = rest
        .split(", average ")
        .nth(1)
        .and_then(|t| t.strip_suffix(" ticks"))
        .ok_or_else(bad)?;
    Ok(Figure {
        rounds: rounds.parse().map_err(|_| bad())?,
        average: average.parse().map_err(|_| bad())?,
    })
}

/// Runs the benchmarks.
pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "`cargo xtask bench` takes no options (got {extra:?})"
        ));
    }
    setup::ensure_toolchain().map_err(|e| e.to_string())?;
    let tools = setup::ensure_tools(&setup::needs(Engine::Bochs, Firmware::Bios))
        .map_err(|e| e.to_string())?;
    let variant = Variant::with_guests("bench");
    build::all(&variant).map_err(|e| e.to_string())?;
    println!("xtask: running the benchmark guest under Bochs");
    let outcome = boot_bochs(&variant, &tools)?;
    if !outcome.saw("guest cpuid: stopped: exited with code 0") {
        return Err(format!(
            "the benchmark guest did not finish; the console was:\n{}",
            outcome.serial
        ));
    }
    let empty = figure(&outcome.serial, "empty loop")?;
    let cpuid = figure(&outcome.serial, "cpuid exit")?;
    let com1 = figure(&outcome.serial, "com1 write exit")?;
    if empty.average != 2 {
        return Err(format!(
            "the empty loop (2 instructions) took {} ticks an iteration, not 2: this Bochs does not count one \
             TSC tick per instruction, so its figures mean something else",
            empty.average
        ));
    }
    let table = table(&empty, &cpuid, &com1);
    println!("{table}");

    let variant = Variant::with_guests("sched");
    build::all(&variant).map_err(|e| e.to_string())?;
    println!("xtask: running three busy guests and an idle one under Bochs");
    let outcome = boot_bochs(&variant, &tools)?;
    let sched_table = sched_table(&outcome.serial)?;
    println!("{sched_table}");

    let path = workspace_root().join("BENCHMARKS.md");
    std::fs::write(&path, document(&table, &sched_table))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("xtask: wrote {}", path.display());
    Ok(())
}

/// Boots `variant` under Bochs with one CPU.
fn boot_bochs(
    variant: &Variant,
    tools: &xtask::setup::Found,
) -> Result<runner::BootOutcome, String> {
    let opts = BootOptions {
        machine: Machine::Q35,
        engine: Engine::Bochs,
        firmware: Firmware::Bios,
        image: variant.image(Firmware::Bios),
        cpus: 1,
        memory_mib: 512,
        timeout: Duration::from_secs(600),
        serial_log: None,
        echo: false,
        work_dir: out_dir().join("bench").join(variant.dir_name()),
    };
    runner::boot(&opts, tools).map_err(|e| e.to_string())
}

/// The fairness target: the largest deviation from 1/N, in percent of the
/// whole run.
const FAIRNESS_TARGET_PERCENT: f64 = 2.0;

/// Fairness and switch cost from the run of `guest-images/sched`.
fn sched_table(serial: &str) -> Result<String, String> {
    let mut ticks = Vec::new();
    for name in ["spin1", "spin2", "spin3"] {
        let prefix = format!("guest {name}: ran ");
        let line = serial
            .lines()
            .find_map(|l| l.split(&prefix).nth(1))
            .ok_or_else(|| format!("no `{prefix}...` line; the console was:\n{serial}"))?;
        let value = line
            .split_once(" TSC ticks")
            .and_then(|(t, _)| t.parse::<u64>().ok())
            .ok_or_else(|| format!("cannot read `{prefix}{line}`"))?;
        ticks.push(value);
    }
    let total: u64 = ticks.iter().sum();
    let worst = ticks
        .iter()
        .map(|&t| (t as f64 / total as f64 - 1.0 / 3.0).abs() * 100.0)
        .fold(0.0, f64::max);
    let switch_line = serial
        .lines()
        .find_map(|l| l.split("sched: ").nth(1))
        .ok_or_else(|| format!("no `sched: ...` line; the console was:\n{serial}"))?;
    let bad = || format!("cannot read `sched: {switch_line}`");
    let (switches, rest) = switch_line
        .split_once(" vCPU switches, on average ")
        .ok_or_else(bad)?;
    let average = rest.split_once(' ').map(|(a, _)| a).ok_or_else(bad)?;
    let verdict = if worst <= FAIRNESS_TARGET_PERCENT {
        "met"
    } else {
        "missed"
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure (Bochs, corei7_skylake_x, 1 CPU) | value | target |"
    );
    let _ = writeln!(t, "| --- | ---: | --- |");
    let _ = writeln!(
        t,
        "| largest deviation from 1/3 of the CPU, three busy guests | {worst:.3} % | at most {FAIRNESS_TARGET_PERCENT} % ({verdict}) |"
    );
    let _ = writeln!(
        t,
        "| vCPU switch, same CPU: last exit of one guest to first entry of the next ({switches} switches) | {average} ticks | dominated by the VMCS switch (not yet: see below) |"
    );
    Ok(t)
}

fn table(empty: &Figure, cpuid: &Figure, com1: &Figure) -> String {
    let verdict = if cpuid.average <= CPUID_TARGET {
        "met"
    } else {
        "missed"
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure (Bochs, corei7_skylake_x) | rounds | average, TSC ticks | target |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | --- |");
    let _ = writeln!(
        t,
        "| CPUID exit round trip | {} | {} | at most {CPUID_TARGET} ({verdict}) |",
        cpuid.rounds, cpuid.average
    );
    let _ = writeln!(
        t,
        "| COM1 write exit round trip (THR, console output included) | {} | {} | — |",
        com1.rounds, com1.average
    );
    let _ = writeln!(t, "| empty loop iteration (2 instructions; checks 1 tick = 1 instruction) | {} | {} | exactly 2 |", empty.rounds, empty.average);
    t
}

fn document(table: &str, sched_table: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench`; do not edit by hand.\n\n\
         ## VM-exit round trips\n\n\
         The benchmark guest (`guest-images/asm/cpuid_loop.S`) runs alone under Bochs and reads the TSC \
         around 1000 CPUID instructions, 1000 writes to COM1's transmit register and 1000 iterations of an \
         empty loop; each exit figure has the empty loop's cost taken off.\n\n\
         {table}\n\
         What a tick is: under Bochs the TSC advances by one for every emulated instruction, guest or host, \
         and VM exit and VM entry themselves add nothing. The empty loop checks this on every run (two \
         instructions, `dec` and `jnz`, take two ticks; the bench fails otherwise), and the figures are the \
         same on every run. A round trip is therefore the number of host instructions on the exit path, plus \
         the guest's CPUID or OUT itself: the trampoline that saves and restores every GPR, the exit \
         decoding and the handler.\n\n\
         What dominates the CPUID figure: about 80 ticks lie between the host's TSC reads around `vm_run` \
         (the trampoline that loads and saves 15 GPRs, VMRESUME, and the guest's own loop instructions); the \
         rest is the Rust side: six VMCS accesses (exit reason, CR4 read shadow for OSXSAVE, instruction \
         length, RIP read and write, interruptibility), the guest CPUID policy (which asks the host CPU for the \
         leaf and for the highest basic leaf), the dispatch and the scheduler loop's slice check and time \
         accounting. The COM1 figure adds the 16550 model, the console line \
         buffer and, once every 160 characters, printing a line on the physical serial port, which Bochs \
         times.\n\n\
         ## Scheduling\n\n\
         `guest-images/sched` runs three CPU-bound guests (20 rounds of a register loop with no exits, \
         so only the VMX-preemption timer takes the CPU away) and one halted with interrupts on, on one \
         CPU with 10 ms slices (100,000 ticks at Bochs's 10 MHz TSC, measured against the PIT). Each \
         guest's time is what it was charged from slice start to slice end, exits included.\n\n\
         {sched_table}\n\
         What the switch costs: saving the outgoing guest's lazily switched state (XSAVE of every \
         supported component, CR2, DR0-3/DR6, six MSRs), the `sched` run-queue bookkeeping (charging the \
         slice, picking the next vCPU), loading the incoming guest's state (XRSTOR, XSETBV, MSRs, debug \
         registers), VMPTRLD and the preemption-timer write. Under Bochs each of XSAVE, XRSTOR and \
         VMPTRLD is one tick, so the figure is the Rust around them. A Bochs trace of one switch \
         (`vmexitbp`, `trace on`) put about 540 of its ticks in the `sched` run queue's `choose`, about \
         150 in moving the switched state and the VMCS, and the rest in handling the preemption-timer \
         exit and the loop: the run queue is where the next optimisation goes. Only the same-CPU switch \
         exists so far; the cross-CPU figure comes with the application processors.\n"
    )
}
