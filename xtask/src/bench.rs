//! `cargo xtask bench`: the benchmarks that write BENCHMARKS.md.
//!
//! The VM-exit round trips: the benchmark guest (`guest-images/asm/
//! cpuid_loop.S`, alone in `guest-images/bench`) reads the TSC around 1000
//! CPUID exits, 1000 COM1 writes and 1000 iterations of an empty loop, and
//! prints the averages. It runs under Bochs, where one TSC tick is one
//! emulated instruction (guest or host) and the figures are exact and the
//! same on every run; the empty loop, two instructions an iteration, checks
//! that on every run.
//!
//! Scheduling: fairness and switch costs of `guest-images/sched` on one and
//! two CPUs.
//!
//! IPIs: the SMP guest (`guest-images/asm/smp.S`, with 2 vCPUs in
//! `guest-images/smp-pair`) times fixed IPIs from vCPU 0 to vCPU 1 and
//! back, with its vCPUs on one CPU and on two, and self-IPIs; a figure it
//! did not print shows as "n/a".
//!
//! The Linux boots ([`linux_boot`]): ticks from power-on to the Linux
//! guest's ready marker under Ferrovisor and natively, for the small and
//! the stock kernel, and the VM exits of each boot by kind; and the small
//! kernel with 1, 2 and 4 vCPUs, to its marker and to its self-check's end.

mod linux_boot;

use std::fmt::Write as _;
use std::time::Duration;

use xtask::build::{self, Firmware, Variant};
use xtask::runner::{self, BootOptions, Console, Engine, Machine, TcgCpu};
use xtask::{out_dir, setup, workspace_root};

/// The exit-path target for a CPUID round trip (Bochs ticks).
const CPUID_TARGET: u64 = 100;

/// QEMU with SVM and time counted in instructions: the engine of the SVM
/// column.
const QEMU_SVM_COUNTED: Engine = Engine::Qemu(TcgCpu::SvmCounted);
/// TSC ticks per instruction under [`QEMU_SVM_COUNTED`] (`-icount
/// shift=7`: 128 ns an instruction, the TSC counting nanoseconds).
const ICOUNT_TICKS: u64 = 128;

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

/// Runs the benchmarks. `--quick` leaves out the stock kernel's boots
/// (about five minutes of the run) and then only prints the figures:
/// BENCHMARKS.md is written from a full run alone.
pub fn main(args: &[String]) -> Result<(), String> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => {
            return Err(format!(
                "`cargo xtask bench` takes only --quick (got {args:?})"
            ))
        }
    };
    setup::ensure_toolchain().map_err(|e| e.to_string())?;
    let mut needs = setup::needs(Engine::Bochs, Firmware::Bios);
    needs.push(setup::Tool::Syslinux);
    needs.extend(setup::needs(QEMU_SVM_COUNTED, Firmware::Bios));
    let tools = setup::ensure_tools(&needs).map_err(|e| e.to_string())?;
    let variant = Variant::with_guests("bench");
    build::all(&variant).map_err(|e| e.to_string())?;
    println!("xtask: running the benchmark guest under Bochs");
    let outcome = boot_bochs(&variant, &tools, 1)?;
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
    println!(
        "xtask: running the benchmark guest under QEMU TCG with SVM, time counted in instructions"
    );
    let svm = boot_on(&variant, &tools, 1, QEMU_SVM_COUNTED)?;
    if !svm.saw("guest cpuid: stopped: exited with code 0") {
        return Err(format!(
            "the benchmark guest did not finish under SVM; the console was:\n{}",
            svm.serial
        ));
    }
    let svm_empty = figure(&svm.serial, "empty loop")?;
    if svm_empty.average != 2 * ICOUNT_TICKS {
        return Err(format!(
            "under QEMU -icount the empty loop (2 instructions) took {} ticks an iteration, not {}: \
             QEMU does not count {ICOUNT_TICKS} ticks per instruction, so its figures mean something else",
            svm_empty.average,
            2 * ICOUNT_TICKS
        ));
    }
    let svm_figures = SvmFigures {
        cpuid: figure(&svm.serial, "cpuid exit")?,
        com1: figure(&svm.serial, "com1 write exit")?,
    };
    let table = table(&empty, &cpuid, &com1, &svm_figures);
    println!("{table}");

    let variant = Variant::with_guests("sched");
    build::all(&variant).map_err(|e| e.to_string())?;
    println!("xtask: running three busy guests and an idle one under Bochs, on one CPU");
    let one = boot_bochs(&variant, &tools, 1)?;
    println!("xtask: the same on two CPUs");
    let two = boot_bochs(&variant, &tools, 2)?;
    let sched_table = sched_table(&one.serial, &two.serial)?;
    println!("{sched_table}");

    // Debug level: the stop report names the CPU each vCPU ran on.
    let variant = Variant {
        log_level: "debug".into(),
        ..Variant::with_guests("smp-pair")
    };
    build::all(&variant).map_err(|e| e.to_string())?;
    println!("xtask: running the SMP guest with 2 vCPUs under Bochs, on one CPU");
    let pair_one = boot_bochs(&variant, &tools, 1)?;
    println!("xtask: the same on two CPUs");
    let pair_two = boot_bochs(&variant, &tools, 2)?;
    for line in [&pair_one, &pair_two]
        .iter()
        .flat_map(|o| o.serial.lines())
        .filter(|l| l.contains("] smp: FAILED"))
    {
        println!("xtask: the SMP guest reported: {line}");
    }
    let smp_table = smp_table(&pair_one.serial, &pair_two.serial);
    println!("{smp_table}");

    let mut boots = Vec::new();
    for kernel in linux_boot::KERNELS {
        if quick && kernel.name == "stock" {
            continue;
        }
        let figures = linux_boot::measure(kernel, &tools)?;
        println!(
            "{}",
            linux_boot::ticks_table(std::slice::from_ref(&figures))
        );
        boots.push(figures);
    }
    let boot_table = linux_boot::ticks_table(&boots);
    let exits = linux_boot::exits_section(&boots);
    println!("{boot_table}\n{exits}");

    let mut vcpu_boots = Vec::new();
    for boot in linux_boot::SMP_BOOTS {
        let figures = linux_boot::measure_smp(boot, &tools)?;
        println!("{}", linux_boot::smp_table(std::slice::from_ref(&figures)));
        vcpu_boots.push(figures);
    }
    let vcpu_boot_table = linux_boot::smp_table(&vcpu_boots);
    println!("{vcpu_boot_table}");
    if quick {
        println!("xtask: --quick: BENCHMARKS.md is left as it is");
        return Ok(());
    }

    let path = workspace_root().join("BENCHMARKS.md");
    let tables = Tables {
        exits: &table,
        sched: &sched_table,
        smp: &smp_table,
        boot: &boot_table,
        boot_exits: &exits,
        vcpu_boots: &vcpu_boot_table,
    };
    std::fs::write(&path, document(&tables))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("xtask: wrote {}", path.display());
    Ok(())
}

/// Boots `variant` under Bochs with `cpus` CPUs.
fn boot_bochs(
    variant: &Variant,
    tools: &xtask::setup::Found,
    cpus: u32,
) -> Result<runner::BootOutcome, String> {
    boot_on(variant, tools, cpus, Engine::Bochs)
}

/// Boots `variant` under `engine` with `cpus` CPUs.
fn boot_on(
    variant: &Variant,
    tools: &xtask::setup::Found,
    cpus: u32,
    engine: Engine,
) -> Result<runner::BootOutcome, String> {
    let opts = BootOptions {
        machine: Machine::Q35,
        engine,
        firmware: Firmware::Bios,
        image: variant.image(Firmware::Bios),
        cpus,
        memory_mib: 512,
        timeout: Duration::from_secs(600),
        serial_log: None,
        echo: false,
        work_dir: out_dir().join("bench").join(format!(
            "{}-{}-smp{cpus}",
            variant.dir_name(),
            engine.name()
        )),
        console: Console::Output,
    };
    runner::boot(&opts, tools).map_err(|e| e.to_string())
}

/// The fairness target: the largest deviation from 1/N, in percent of the
/// whole run.
const FAIRNESS_TARGET_PERCENT: f64 = 2.0;

/// The largest deviation, in percent, of a busy guest's part of the busy
/// guests' time from a third, read from `sched: shares until the first
/// stop: spin1 33.32%, idle 0.35%, ...`.
fn fairness(serial: &str) -> Result<f64, String> {
    let line = serial
        .lines()
        .find_map(|l| l.split("sched: shares until the first stop: ").nth(1))
        .ok_or_else(|| {
            format!("no `sched: shares until the first stop:` line; the console was:\n{serial}")
        })?;
    let mut busy = Vec::new();
    for part in line.split(", ") {
        let (name, percent) = part
            .trim()
            .rsplit_once(' ')
            .ok_or_else(|| format!("cannot read `{part}` in `{line}`"))?;
        let percent: f64 = percent
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("cannot read `{part}` in `{line}`"))?;
        if name.starts_with("spin") {
            busy.push(percent);
        }
    }
    if busy.len() != 3 {
        return Err(format!("expected three busy guests in `{line}`"));
    }
    let total: f64 = busy.iter().sum();
    Ok(busy
        .iter()
        .map(|p| (p / total - 1.0 / 3.0).abs() * 100.0)
        .fold(0.0, f64::max))
}

/// `(count, average)` from the line holding `<count><what><average> TSC
/// ticks ...`, e.g. `sched: 136 vCPU switches, on average 497 TSC ticks`.
fn switches(serial: &str, what: &str) -> Result<(u64, u64), String> {
    let line = serial
        .lines()
        .find(|l| l.contains(what))
        .ok_or_else(|| format!("no `<n>{what}<t> TSC ticks` line; the console was:\n{serial}"))?;
    let bad = || format!("cannot read `{line}`");
    let (before, after) = line.split_once(what).ok_or_else(bad)?;
    let count = before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    let average = after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    Ok((count, average))
}

/// `guests kept <n> CPUs busy on average`.
fn busy_cpus(serial: &str) -> Result<String, String> {
    serial
        .lines()
        .find_map(|l| l.split("guests kept ").nth(1))
        .and_then(|rest| rest.split_once(" CPUs busy"))
        .map(|(n, _)| n.to_string())
        .ok_or_else(|| format!("no `guests kept <n> CPUs busy` line; the console was:\n{serial}"))
}

/// Fairness and switch costs from the runs of `guest-images/sched` on one
/// CPU (`one`) and on two (`two`).
fn sched_table(one: &str, two: &str) -> Result<String, String> {
    let verdict = |worst: f64| {
        if worst <= FAIRNESS_TARGET_PERCENT {
            "met"
        } else {
            "missed"
        }
    };
    let fair_one = fairness(one)?;
    let fair_two = fairness(two)?;
    let (same, same_avg) = switches(one, " vCPU switches, on average ")?;
    let (cross, cross_avg) = switches(two, " vCPU switches across CPUs, on average ")?;
    let busy = busy_cpus(two)?;
    let mut t = String::new();
    let _ = writeln!(t, "| figure (Bochs, corei7_skylake_x) | value | target |");
    let _ = writeln!(t, "| --- | ---: | --- |");
    let _ = writeln!(
        t,
        "| 1 CPU: largest deviation of a busy guest's share from 1/3 | {fair_one:.2} % | at most {FAIRNESS_TARGET_PERCENT} % ({}) |",
        verdict(fair_one)
    );
    let _ = writeln!(
        t,
        "| 2 CPUs: largest deviation of a busy guest's share from 1/3 | {fair_two:.2} % | at most {FAIRNESS_TARGET_PERCENT} % ({}) |",
        verdict(fair_two)
    );
    let _ = writeln!(
        t,
        "| 2 CPUs: CPUs the guests kept busy, on average | {busy} | — |"
    );
    let _ = writeln!(
        t,
        "| vCPU switch, same CPU: last exit of one guest to first entry of the next ({same} switches, 1 CPU) | {same_avg} ticks | dominated by the VMCS switch (see below) |"
    );
    let _ = writeln!(
        t,
        "| vCPU switch, across CPUs: the same, when the next guest last ran on the other CPU ({cross} switches, 2 CPUs) | {cross_avg} ticks | dominated by the VMCS switch (see below) |"
    );
    Ok(t)
}

/// The SMP guest's rows: which boot (one CPU or two), which figure, and
/// what the row says.
const SMP_ROWS: [(usize, &str, &str); 4] = [
    (
        1,
        "ipi round trip",
        "IPI round trip vCPU 0 → vCPU 1 → vCPU 0, both on one CPU",
    ),
    (
        2,
        "ipi round trip",
        "IPI round trip vCPU 0 → vCPU 1 → vCPU 0 on two CPUs",
    ),
    (1, "self ipi", "self-IPI, vCPU 0 to itself, one CPU"),
    (2, "self ipi", "self-IPI, vCPU 0 to itself, two CPUs"),
];

/// Where vCPU `k` of guest `pair` ran, from its stop report (debug level):
/// `guest pair: vcpu<k>: ... (<m> moved between CPUs, ...), last on cpu<c>`
/// gives `(c, m)`.
fn placement(serial: &str, k: usize) -> Option<(u64, u64)> {
    let prefix = format!("guest pair: vcpu{k}: ");
    let line = serial.lines().find_map(|l| l.split(&prefix).nth(1))?;
    let moved = line
        .split(" moved between CPUs")
        .next()?
        .rsplit('(')
        .next()?;
    let cpu = line.split(", last on cpu").nth(1)?.split(';').next()?;
    Some((cpu.trim().parse().ok()?, moved.trim().parse().ok()?))
}

/// `(median, average)` from `[<guest>] smp: <what> median <m> ticks
/// average <a> ticks`, or `None` where the guest printed no such line.
fn ipi_figure(serial: &str, guest: &str, what: &str) -> Option<(u64, u64)> {
    let prefix = format!("[{guest}] smp: {what} median ");
    serial.lines().find_map(|l| {
        let rest = l.trim_end().split(&prefix).nth(1)?;
        let (median, rest) = rest.split_once(" ticks average ")?;
        let average = rest.strip_suffix(" ticks")?;
        Some((median.parse().ok()?, average.parse().ok()?))
    })
}

/// The IPI figures of the SMP guest's runs on one CPU (`one`) and on two
/// (`two`); "n/a" where it did not print one (it failed, or its vCPUs did
/// not all start), with a note; and where its vCPUs ran on two CPUs.
fn smp_table(one: &str, two: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure (Bochs, corei7_skylake_x, 64 rounds) | median, TSC ticks | average, TSC ticks |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: |");
    let mut missing = false;
    for (cpus, what, row) in SMP_ROWS {
        let serial = if cpus == 1 { one } else { two };
        let (median, average) = match ipi_figure(serial, "pair", what) {
            Some((m, a)) => (m.to_string(), a.to_string()),
            None => {
                missing = true;
                ("n/a".to_string(), "n/a".to_string())
            }
        };
        let _ = writeln!(t, "| {row} | {median} | {average} |");
    }
    if missing {
        let _ = writeln!(
            t,
            "\nn/a: the guest printed no `smp: <figure> median ...` line for it (its `smp: FAILED ...` \
             line, if any, says why)."
        );
    }
    let where_ = |k| match placement(two, k) {
        Some((cpu, moved)) => format!("vCPU {k} last on cpu{cpu}, moved {moved} times"),
        None => format!("vCPU {k}: no stop report"),
    };
    let _ = writeln!(t, "\nOn two CPUs: {}; {}.", where_(0), where_(1));
    t
}

/// The SVM column's figures (QEMU TCG, `-icount`), in TSC ticks.
struct SvmFigures {
    cpuid: Figure,
    com1: Figure,
}

fn table(empty: &Figure, cpuid: &Figure, com1: &Figure, svm: &SvmFigures) -> String {
    let verdict = if cpuid.average <= CPUID_TARGET {
        "met"
    } else {
        "missed"
    };
    let instructions = |f: &Figure| f.average.div_ceil(ICOUNT_TICKS);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure | rounds | VT-x (Bochs, corei7_skylake_x), TSC ticks = instructions | SVM (QEMU TCG `-cpu max -icount shift=7`), instructions | target (VT-x) |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | --- |");
    let _ = writeln!(
        t,
        "| CPUID exit round trip | {} | {} | {} | at most {CPUID_TARGET} ({verdict}) |",
        cpuid.rounds,
        cpuid.average,
        instructions(&svm.cpuid)
    );
    let _ = writeln!(
        t,
        "| COM1 write exit round trip (THR, console output included) | {} | {} | {} | — |",
        com1.rounds,
        com1.average,
        instructions(&svm.com1)
    );
    let _ = writeln!(
        t,
        "| empty loop iteration (2 instructions; checks the counting) | {} | {} | 2 | exactly 2 |",
        empty.rounds, empty.average
    );
    t
}

/// The tables BENCHMARKS.md is made of.
struct Tables<'a> {
    exits: &'a str,
    sched: &'a str,
    smp: &'a str,
    boot: &'a str,
    boot_exits: &'a str,
    vcpu_boots: &'a str,
}

fn document(tables: &Tables<'_>) -> String {
    let Tables {
        exits: table,
        sched: sched_table,
        smp: smp_table,
        boot: boot_table,
        boot_exits: exits,
        vcpu_boots: vcpu_boot_table,
    } = *tables;
    format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench`; do not edit by hand.\n\n\
         ## VM-exit round trips\n\n\
         The benchmark guest (`guest-images/asm/cpuid_loop.S`) runs alone under Bochs and reads the TSC \
         around 1000 CPUID instructions, 1000 writes to COM1's transmit register and 1000 iterations of an \
         empty loop; each exit figure has the empty loop's cost taken off. It runs once under Bochs (VT-x) \
         and once under QEMU TCG with SVM and `-icount shift=7,sleep=off` (`--engine qemu-icount`).\n\n\
         {table}\n\
         The SVM column: with `-icount` QEMU's clock follows the instruction count (128 ns an \
         instruction, and the TSC counts nanoseconds), so the guest's TSC differences divided by 128 \
         are instructions, guest and host, and the figures are the same on every run (the bench checks \
         the empty loop at 256 ticks). They are not comparable with real AMD hardware, where VMRUN and \
         #VMEXIT cost far more than an instruction, nor quite with Bochs: QEMU 7.2's SVM has no NRIP \
         save, so every CPUID, HLT and MSR exit fetches and measures its instruction through the \
         guest's page tables, and the slice timer is the local APIC's, armed before every entry. On \
         CPUs with NRIP save (every Zen) the first goes away. Without `-icount` QEMU's TSC follows the \
         host's clock and the figures change from run to run.\n\n\
         What a tick is: under Bochs the TSC advances by one for every emulated instruction, guest or host, \
         and VM exit and VM entry themselves add nothing. The empty loop checks this on every run (two \
         instructions, `dec` and `jnz`, take two ticks; the bench fails otherwise), and the figures are the \
         same on every run. A round trip is therefore the number of host instructions on the exit path, plus \
         the guest's CPUID or OUT itself: the trampoline that saves and restores every GPR, the exit \
         decoding and the handler.\n\n\
         What dominates the CPUID figure (a Bochs trace of one CPUID exit, `vmexitbp` then `trace on`, \
         226 host instructions): the trampoline out of and back into the guest, which saves and loads \
         15 GPRs, about 55; seven VMCS accesses (exit reason, CR4, instruction length, RIP read and \
         write, interruptibility) with their success checks, about 50; the vendor-neutral handler and \
         the guest CPUID policy's cache lookup, about 55; the VT-x backend's decoding and glue around \
         them, about 35; the run loop around the exit (the device-interrupt check before entry, the TSC \
         read and time accounting, the slice check), about 30. The COM1 figure adds the device bus, \
         the 16550 model, the console line buffer and, once every 160 characters, printing a line on \
         the physical serial port, which Bochs times.\n\n\
         ## Scheduling\n\n\
         `guest-images/sched` runs three CPU-bound guests (20 rounds of a register loop with no exits \
         but the progress lines, so only the VMX-preemption timer takes the CPU away) and one halted with \
         interrupts on, with 10 ms slices (100,000 ticks at Bochs's 10 MHz TSC, measured against the \
         PIT), once on one CPU and once on two (Bochs `cpu: count=2`). A guest's share is its part of all \
         guest time from the start until the first guest finishes, while all three compete (the kernel \
         prints it as `sched: shares until the first stop`); on two CPUs the three rotate through both, \
         so each should get two thirds of a CPU, a third of the guests' time. A switch is timed from \
         the outgoing guest's last exit to the incoming guest's first entry on the same CPU; \
         \"across CPUs\" are the switches whose incoming guest last ran on the other CPU.\n\n\
         {sched_table}\n\
         Where a same-CPU switch goes (a Bochs trace of one switch on one CPU, `lb` at `Scheduler::pick`, \
         `trace on`; about 790 instructions from the guest's last instruction to VMRESUME, of which the \
         kernel's figure is the part between its two TSC reads): the preemption-timer exit (trampoline, \
         decoding and dispatch) about 145; `sched` (`stopped_with` and `pick`) about 235; the loop \
         around them (slot and queue locks, figures, the slice check) about 220; moving the lazily \
         switched state (XSAVE of every supported component, CR2, DR0-3/DR6, six MSRs out; XRSTOR, \
         XSETBV, the same in) about 130; handing the slice's exits by reason to the scheduler's \
         figures about 20; VMPTRLD and the entry trampoline about 40. Under Bochs VMPTRLD, VMRESUME, \
         XSAVE and XRSTOR are one tick each, so these figures are the host's own instructions, and the \
         target \"dominated by the VMCS switch\" can be judged only on hardware, where the VMX \
         transitions and VMPTRLD cost far more than an instruction each; what Bochs shows is that \
         nothing on the path is wasteful (`sched` alone was 540 ticks of a 1191-tick switch before its \
         pick path was rewritten).\n\n\
         A switch across CPUs adds the hand-over: the old CPU saves the guest's switched state and \
         VMCLEARs its VMCS as soon as `sched` moves it (at the end of its turn), and the new CPU writes \
         its own host-state fields (about 220 instructions of VMWRITEs), drops its cached translations \
         of the guest (INVEPT, INVVPID), loads the switched state and VMLAUNCHes instead of \
         VMRESUMEs. Only a vCPU still active on its old CPU when it is needed (an idle CPU stealing \
         it) costs a request through that CPU's mailbox and a kick IPI, answered at its next exit.\n\n\
         ## IPIs between vCPUs\n\n\
         The SMP guest (`guest-images/asm/smp.S`) alone with 2 vCPUs (`guest-images/smp-pair`), \
         booted on one CPU (its vCPUs take turns) and on two (one vCPU on each: the stop report \
         says where they ran). Once its vCPUs are up and through a spin-lock test, vCPU 0 sends a \
         fixed IPI to APIC ID 1, whose handler sends one back, and waits in HLT; it reads the TSC \
         before the ICR write and after its handler ran, 64 times. The self-IPI is timed the same \
         way, from the ICR write to the end of vCPU 0's own handler. Every ICR write and EOI is an \
         MMIO exit that Ferrovisor emulates (no APIC virtualization), and on one CPU a round trip \
         also takes two vCPU switches.\n\n\
         {smp_table}\n\
         ## Linux boot\n\n\
         Bochs ticks (emulated instructions, guest and host, plus the ticks Bochs skips while the \
         CPU halts) from power-on to the Linux guest's ready marker, for the small kernel \
         (`guest-images/linux/small.config`, LZ4) and Debian's stock kernel (XZ), each with the \
         busybox initramfs and the command line `{cmdline}`: under Ferrovisor (BIOS, the \
         bootloader, Ferrovisor's start, the guest's creation and load, then the guest) and \
         natively on the same Bochs (BIOS, SYSLINUX from a FAT16 partition, the kernel), with the \
         native machine's memory equal to the guest's. `/init` prints the TSC at its marker \
         (`ferrovisor-linux: ready tsc <N>`, from `/bin/rdtsc`); natively that is the count since \
         power-on, and under Ferrovisor, whose guest TSC starts at 0 when it creates the guest, \
         the host TSC at that moment (logged as `guest linux: guest TSC 0 at host TSC <C>`) is \
         added. The figures are in millions of ticks.\n\n\
         {boot_table}\n\
         {LINUX_ANALYSIS}\n\n\
         The VM exits of each boot under Ferrovisor, counted by the scheduler until the guest \
         powers off (after its marker the guest only powers off: the self-check is left out with \
         `fv.selfcheck=off`):\n\n\
         {exits}\n\
         ## Linux with several vCPUs\n\n\
         The small kernel under Ferrovisor alone, with 1 vCPU on one CPU, 2 vCPUs taking turns on \
         one CPU and 4 vCPUs on two CPUs (Bochs `cpu: count=2`, the guest's `cpus = [0, 1]`), \
         with the command line `{smp_cmdline}`: every row runs the same self-check, which ends \
         with the same parallel workload (four shells counting to 1000 in shell arithmetic and \
         50 forks, see `guest-images/linux/init`) and prints the guest's TSC at its end \
         (`selfcheck: done tsc <N>`). Both times are power-on to there, read as above; the \
         workload's own time is the guest's clock (`/proc/uptime`), in milliseconds. The \
         figures are in millions of ticks.\n\n\
         {vcpu_boot_table}",
        cmdline = linux_boot::CMDLINE,
        smp_cmdline = linux_boot::SMP_CMDLINE,
    )
}

/// Where the Linux boots' ticks go, from the figures of the last full run
/// (BENCHMARKS.md) and the traces and experiments named in it.
const LINUX_ANALYSIS: &str = "\
The stock kernel meets the target and the small kernel misses it; what separates the two boots \
is mostly spent before the guest exists. Under Ferrovisor the machine first runs the BIOS, the \
bootloader (which reads the kernel ELF, stripped of its debug sections by the image builder, and \
a boot ramdisk with a copy of the config partition's small files: the Linux images stay on \
FERROCFG only) and Ferrovisor's own start (the PIT calibration, the disks, the config, \
allocating and clearing the guest's RAM and streaming the kernel and initramfs from FERROCFG: \
about 26 M ticks for the small kernel, measured once with TSC lines added to `kernel_main`); \
natively SYSLINUX reads only the files it boots. That fixed cost, the first figure under \
Ferrovisor, is large against the small kernel's short boot and small against the stock one's. \
The guests themselves run close to native: the small kernel reaches its marker in fewer guest \
ticks than the whole native boot (which includes the BIOS and SYSLINUX), and the stock kernel's \
extra ticks over native are about what its exits cost (the table below; a CPUID-like round trip \
is about 230 ticks and a COM1 write about 1,700, above). Before the timer fixes and the stripped \
kernel the ratios were 2.71x and 1.17x. The two boots do not run quite the same code: natively \
Linux takes a 3.5 GHz TSC from the CPU model and uses Bochs's HPET; under Ferrovisor CPUID 15H \
tells it the measured 10 MHz and there is no HPET. Where the rest can go: a vCPU alone on its \
CPU still ends every 10 ms slice with an exit (most of the stock boot's slice ends), and each \
port, MMIO and MSR exit costs several times a CPUID round trip.";

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CPUS: &str = "\
[cpu0] INFO  kernel::guests: sched: guests run on cpu0, cpu1
[cpu0] INFO  kernel::guests: sched: shares until the first stop: spin1 33.98%, idle 0.35%, spin2 32.73%, spin3 32.91%
[cpu0] INFO  kernel::guests: sched: cpu0: 69 slices, guests ran 6732025 TSC ticks (87% of the run), 0 idle waits
[cpu0] INFO  kernel::guests: sched: the run took 7714565 TSC ticks; guests kept 1.78 CPUs busy on average
[cpu0] INFO  kernel::guests: sched: 2 vCPU switches, on average 977 TSC ticks from one guest's last exit to the next guest's first entry
[cpu0] INFO  kernel::guests: sched: 113 vCPU switches across CPUs, on average 1770 TSC ticks from one guest's last exit to the next guest's first entry on the CPU it moved to
";

    #[test]
    fn fairness_is_the_worst_busy_share_off_a_third() {
        // Busy total 99.62: spin1 34.11% of it, the worst.
        let worst = fairness(TWO_CPUS).unwrap();
        assert!(
            (worst - (33.98 / 99.62 - 1.0 / 3.0) * 100.0).abs() < 1e-9,
            "{worst}"
        );
        assert!(
            fairness("sched: shares until the first stop: spin1 50.00%, spin2 50.00%").is_err()
        );
        assert!(fairness("no such line").is_err());
    }

    #[test]
    fn switch_lines_are_told_apart() {
        assert_eq!(
            switches(TWO_CPUS, " vCPU switches, on average ").unwrap(),
            (2, 977)
        );
        assert_eq!(
            switches(TWO_CPUS, " vCPU switches across CPUs, on average ").unwrap(),
            (113, 1770)
        );
        assert!(switches("sched: guests run on cpu0", " vCPU switches, on average ").is_err());
        assert_eq!(busy_cpus(TWO_CPUS).unwrap(), "1.78");
    }

    #[test]
    fn the_smp_rows_read_the_guests_lines_and_show_what_is_missing() {
        let one = "\
[cpu0] INFO  kernel::guests: config: guest pair: kernel \"smp.bin\", multiboot
[pair] smp: ipi round trip median 52000 ticks average 61234 ticks
[pair] smp: self ipi median 2100 ticks average 2200 ticks\r
";
        let two = "\
[pair] smp: ipi round trip median 31000 ticks average 33000 ticks
[pair] smp: FAILED self ipi: not delivered within 1 s
[cpu0] DEBUG run::figures: guest pair: vcpu0: 5 TSC ticks on a CPU in 3 slices (0 moved between CPUs, 1 blocked, 1 woken), last on cpu0; exits: none
[cpu1] DEBUG run::figures: guest pair: vcpu1: 5 TSC ticks on a CPU in 3 slices (2 moved between CPUs, 1 blocked, 1 woken), last on cpu1; exits: 1 HLT
";
        assert_eq!(
            ipi_figure(one, "pair", "ipi round trip"),
            Some((52000, 61234))
        );
        assert_eq!(ipi_figure(two, "pair", "self ipi"), None);
        assert_eq!(placement(two, 0), Some((0, 0)));
        assert_eq!(placement(two, 1), Some((1, 2)));
        assert_eq!(placement(one, 1), None);
        let t = smp_table(one, two);
        assert!(t.contains("both on one CPU | 52000 | 61234 |"), "{t}");
        assert!(t.contains("on two CPUs | 31000 | 33000 |"), "{t}");
        assert!(t.contains("itself, one CPU | 2100 | 2200 |"), "{t}");
        assert!(t.contains("itself, two CPUs | n/a | n/a |"), "{t}");
        assert!(t.contains("\nn/a: the guest printed no"), "{t}");
        assert!(
            t.contains("On two CPUs: vCPU 0 last on cpu0, moved 0 times; vCPU 1 last on cpu1, moved 2 times."),
            "{t}"
        );

        // Nothing printed (the guest never started its APs): every row n/a.
        let none = smp_table("[pair] smp: FAILED only 1 of 2 cpus arrived\n", "");
        assert_eq!(none.matches("| n/a | n/a |").count(), 4, "{none}");
        // Everything printed: no note.
        let all = two.replace(
            "[pair] smp: FAILED self ipi: not delivered within 1 s",
            "[pair] smp: self ipi median 1 ticks average 2 ticks",
        );
        assert!(!smp_table(one, &all).contains("n/a"));
    }

    #[test]
    fn the_table_names_both_switch_costs_and_verdicts() {
        let one = TWO_CPUS.replace(" across CPUs", " elsewhere");
        let t = sched_table(&one, TWO_CPUS).unwrap();
        assert!(
            t.contains("| 2 CPUs: CPUs the guests kept busy, on average | 1.78 |"),
            "{t}"
        );
        assert!(t.contains("(2 switches, 1 CPU) | 977 ticks"), "{t}");
        assert!(t.contains("(113 switches, 2 CPUs) | 1770 ticks"), "{t}");
        assert!(t.contains("at most 2 % (met)"), "{t}");
    }
}
