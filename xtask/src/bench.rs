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
        work_dir: out_dir().join("bench").join("bochs"),
    };
    println!("xtask: running the benchmark guest under Bochs");
    let outcome = runner::boot(&opts, &tools).map_err(|e| e.to_string())?;
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
    let path = workspace_root().join("BENCHMARKS.md");
    std::fs::write(&path, document(&table))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("xtask: wrote {}", path.display());
    Ok(())
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

fn document(table: &str) -> String {
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
         times.\n"
    )
}
