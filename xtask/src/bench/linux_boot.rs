//! The Linux boot benchmark: Bochs ticks from power-on to the Linux
//! guest's ready marker under Ferrovisor and booted natively on the same
//! Bochs, for the small and the stock kernel, and the VM exits of each boot
//! under Ferrovisor by kind.
//!
//! How a boot is timed: the initramfs's `/init` prints `ferrovisor-linux:
//! ready tsc <N>` (`guest-images/linux/init`, `/bin/rdtsc`). Under Bochs
//! one TSC tick is one emulated instruction, counted from 0 at power-on.
//! Natively N is therefore the ticks since power-on. Under Ferrovisor the
//! guest's TSC is offset to read 0 when the guest is created, and the
//! hypervisor logs the host TSC at that moment (`guest linux: guest TSC 0
//! at host TSC <C>`, at the debug level), so power-on to the marker is C +
//! N. Both boots run the same kernel, initramfs and command line, with the
//! Bochs machine's memory equal to the guest's under Ferrovisor.
//!
//! The small kernel with several vCPUs ([`SMP_BOOTS`]): the same guest
//! with 1, 2 and 4 vCPUs (on one, one and two physical CPUs), under
//! Ferrovisor only, each timed to its ready marker and to the end of its
//! self-check, which runs the same parallel workload in every row
//! ([`SMP_CMDLINE`]) and prints the TSC at its end (`selfcheck: done tsc
//! <N>`), read as the marker's is.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xtask::build::{self, Firmware, Variant};
use xtask::linux::{self, Artifact};
use xtask::runner::{self, BootOptions, BootOutcome, Console, Engine, Exit, Machine};
use xtask::setup::Found;
use xtask::{native, out_dir};

/// The ratio target: a boot under Ferrovisor takes at most this many times
/// the ticks of the native boot.
pub const RATIO_TARGET: f64 = 1.10;

/// The command line of every boot, native and under Ferrovisor: the
/// console on COM1 (the baud rate matters natively, where Bochs times the
/// UART), no self-check after the marker, so the exits counted are the
/// boot's and the power-off's, then power off.
pub const CMDLINE: &str = "console=ttyS0,115200 fv.selfcheck=off fv.after=poweroff";

/// The marker `/init` prints, followed by the guest's TSC.
const MARKER: &str = "ferrovisor-linux: ready tsc ";

/// Bochs's memory under Ferrovisor: the hypervisor, the boot ramdisk
/// (every guest image again) and the largest guest's 256 MiB.
const FERROVISOR_MACHINE_MIB: u32 = 512;

/// A boot may take this long in wall-clock time (the stock kernel takes
/// about two minutes either way).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// One kernel the benchmark boots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kernel {
    /// `small` or `stock`.
    pub name: &'static str,
    pub artifact: Artifact,
    /// The guest's memory, and the native machine's.
    pub memory_mib: u32,
}

/// The kernels, small first.
pub const KERNELS: [Kernel; 2] = [
    Kernel {
        name: "small",
        artifact: Artifact::SmallKernel,
        memory_mib: 64,
    },
    Kernel {
        name: "stock",
        artifact: Artifact::StockKernel,
        memory_mib: 256,
    },
];

/// What one kernel's two boots measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub kernel: Kernel,
    /// Host TSC when Ferrovisor created the guest.
    pub created: u64,
    /// The guest's TSC at the marker under Ferrovisor.
    pub guest: u64,
    /// The TSC at the marker natively.
    pub native: u64,
    /// The VM exits by kind, most frequent first.
    pub exits: Vec<(u64, String)>,
    /// Ticks the vCPU spent on a CPU (exit handling included).
    pub on_cpu: u64,
}

impl Figures {
    /// Power-on to the marker under Ferrovisor.
    pub fn ferrovisor(&self) -> u64 {
        self.created + self.guest
    }

    /// Ferrovisor's ticks over the native ones.
    pub fn ratio(&self) -> f64 {
        self.ferrovisor() as f64 / self.native as f64
    }
}

/// Boots `kernel` under Ferrovisor and natively and reads the figures.
pub fn measure(kernel: Kernel, tools: &Found) -> Result<Figures, String> {
    let image = linux::artifact(kernel.artifact)?;
    let initrd = linux::artifact(Artifact::Initramfs)?;
    let work = out_dir()
        .join("bench")
        .join(format!("linux-{}", kernel.name));

    // Under Ferrovisor: a config of this one guest, in a folder named after
    // the kernel so that each gets its own build folder.
    let variant = generated_variant(
        &work.join(format!("linux-{}", kernel.name)),
        &hypervisor_toml(kernel),
    )?;
    println!(
        "xtask: booting the {} kernel under Ferrovisor (Bochs, {} MiB guest)",
        kernel.name, kernel.memory_mib
    );
    let ferrovisor = boot(
        &variant.image(Firmware::Bios),
        1,
        FERROVISOR_MACHINE_MIB,
        &work.join("ferrovisor"),
        tools,
    )?;
    if !ferrovisor.saw("guest linux: stopped: powered off") {
        return Err(failed(
            "under Ferrovisor the guest did not power off",
            &ferrovisor,
        ));
    }

    // Natively: SYSLINUX boots the same kernel, initramfs and command line.
    let disk = work.join("native.img");
    let syslinux = tools.syslinux.as_ref().ok_or("SYSLINUX was not found")?;
    native::syslinux_disk(syslinux, &image, &initrd, CMDLINE, &disk)?;
    println!(
        "xtask: booting the {} kernel natively (Bochs, {} MiB, SYSLINUX)",
        kernel.name, kernel.memory_mib
    );
    let bare = boot(&disk, 1, kernel.memory_mib, &work.join("native"), tools)?;
    if !bare.saw("ferrovisor-linux: powering off") {
        return Err(failed("natively Linux did not reach its power-off", &bare));
    }

    let read = |what: &str, found: Option<u64>, outcome: &BootOutcome| {
        found.ok_or_else(|| failed(&format!("no {what}"), outcome))
    };
    let (exits, on_cpu) = read_exits(&ferrovisor.serial)
        .ok_or_else(|| failed("no `guest linux: vcpu0: ... exits:` line", &ferrovisor))?;
    Ok(Figures {
        kernel,
        created: read(
            "`guest TSC 0 at host TSC` line",
            created_at(&ferrovisor.serial),
            &ferrovisor,
        )?,
        guest: read("ready marker", marker(&ferrovisor.serial), &ferrovisor)?,
        native: read("ready marker", marker(&bare.serial), &bare)?,
        exits,
        on_cpu,
    })
}

/// The command line of the boots with several vCPUs: the self-check with
/// the same workload in every row, four busy loops and a burst of forks
/// (`fv.parallel=4`, see `guest-images/linux/init`), ending with the TSC
/// (`fv.selfcheck=tsc`), then power off.
pub const SMP_CMDLINE: &str =
    "console=ttyS0,115200 fv.selfcheck=tsc fv.parallel=4 fv.after=poweroff";

/// The self-check's last line with `fv.selfcheck=tsc`, followed by the
/// guest's TSC.
const SELFCHECK_END: &str = "selfcheck: done tsc ";

/// One boot of the small kernel with `vcpus` vCPUs on a Bochs machine with
/// `cpus` CPUs, all of them in the guest's `cpus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Smp {
    pub vcpus: u32,
    pub cpus: u32,
}

/// The boots with several vCPUs: 1 as the baseline, 2 taking turns on one
/// CPU, 4 on two CPUs (the boot tests' `linux-smp2` and `linux-smp4`).
pub const SMP_BOOTS: [Smp; 3] = [
    Smp { vcpus: 1, cpus: 1 },
    Smp { vcpus: 2, cpus: 1 },
    Smp { vcpus: 4, cpus: 2 },
];

/// What one boot with several vCPUs measured, in Bochs ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmpFigures {
    pub boot: Smp,
    /// Host TSC when Ferrovisor created the guest.
    pub created: u64,
    /// The guest's TSC at the ready marker.
    pub ready: u64,
    /// The guest's TSC at the self-check's end.
    pub end: u64,
    /// The parallel workload's guest time, in milliseconds (from
    /// `selfcheck: parallel 4 done in <ms> ms`).
    pub parallel_ms: u64,
}

/// Boots the small kernel with `boot.vcpus` vCPUs under Ferrovisor and
/// reads the figures.
pub fn measure_smp(boot_with: Smp, tools: &Found) -> Result<SmpFigures, String> {
    let kernel = KERNELS[0];
    let name = format!("linux-small-{}vcpus", boot_with.vcpus);
    let work = out_dir().join("bench").join(&name);
    // A folder per row, so that each gets its own build folder.
    let variant = generated_variant(&work.join(&name), &smp_toml(boot_with))?;
    println!(
        "xtask: booting the {} kernel with {} vCPU(s) under Ferrovisor (Bochs, {} CPU(s))",
        kernel.name, boot_with.vcpus, boot_with.cpus
    );
    let out = boot(
        &variant.image(Firmware::Bios),
        boot_with.cpus,
        FERROVISOR_MACHINE_MIB,
        &work.join("ferrovisor"),
        tools,
    )?;
    if !out.saw("guest linux: stopped: powered off") {
        return Err(failed("under Ferrovisor the guest did not power off", &out));
    }
    let read =
        |what: &str, found: Option<u64>| found.ok_or_else(|| failed(&format!("no {what}"), &out));
    Ok(SmpFigures {
        boot: boot_with,
        created: read("`guest TSC 0 at host TSC` line", created_at(&out.serial))?,
        ready: read("ready marker", marker(&out.serial))?,
        end: read("`selfcheck: done tsc <N>` line", selfcheck_end(&out.serial))?,
        parallel_ms: read(
            "`selfcheck: parallel <n> done in <ms> ms` line",
            parallel_ms(&out.serial),
        )?,
    })
}

/// Writes `toml` as the `hypervisor.toml` of config folder `config` and
/// builds its image, logging at debug level (the stop reports the bench
/// reads).
fn generated_variant(config: &std::path::Path, toml: &str) -> Result<Variant, String> {
    fs::create_dir_all(config).map_err(|e| format!("cannot create {}: {e}", config.display()))?;
    fs::write(config.join("hypervisor.toml"), toml)
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let variant = Variant {
        log_level: "debug".into(),
        selftest: None,
        config: Some(config.to_path_buf()),
    };
    build::all(&variant).map_err(|e| e.to_string())?;
    Ok(variant)
}

/// The config that boots the small kernel as the one guest `linux` with
/// `boot.vcpus` vCPUs on CPUs 0 to `boot.cpus - 1`.
fn smp_toml(boot: Smp) -> String {
    let kernel = KERNELS[0];
    let cpus: Vec<String> = (0..boot.cpus).map(|c| c.to_string()).collect();
    format!(
        "# Written by `cargo xtask bench` (xtask/src/bench/linux_boot.rs).\n\
         [hypervisor]\n\
         power_off_when_all_stopped = true\n\n\
         [[guest]]\n\
         name = \"linux\"\n\
         kernel = \"{kernel}\"\n\
         initrd = \"{initrd}\"\n\
         cmdline = \"{SMP_CMDLINE}\"\n\
         memory = \"{memory}M\"\n\
         vcpus = {vcpus}\n\
         cpus = [{cpus}]\n\
         format = \"linux\"\n",
        kernel = kernel.artifact.file_name(),
        initrd = Artifact::Initramfs.file_name(),
        memory = kernel.memory_mib,
        vcpus = boot.vcpus,
        cpus = cpus.join(", "),
    )
}

/// N of the first `selfcheck: done tsc <N>` line.
pub fn selfcheck_end(serial: &str) -> Option<u64> {
    serial
        .lines()
        .find_map(|l| l.split(SELFCHECK_END).nth(1))
        .and_then(|n| n.trim().parse().ok())
}

/// The milliseconds of `selfcheck: parallel <n> done in <ms> ms (...)`.
pub fn parallel_ms(serial: &str) -> Option<u64> {
    serial.lines().find_map(|l| {
        let rest = l.split("selfcheck: parallel ").nth(1)?;
        let (_, rest) = rest.split_once(" done in ")?;
        let (ms, _) = rest.split_once(" ms")?;
        ms.parse().ok()
    })
}

/// The boots with several vCPUs as a table, one row per boot.
pub fn smp_table(figures: &[SmpFigures]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| small kernel | to the guest's start + guest TSC at the marker = power-on to the marker | the same to the self-check's end | parallel workload, guest time |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: |");
    for f in figures {
        let plural = |n: u32| if n == 1 { "" } else { "s" };
        let _ = writeln!(
            t,
            "| {} vCPU{} on {} CPU{} | {} + {} = {} | {} + {} = {} | {} ms |",
            f.boot.vcpus,
            plural(f.boot.vcpus),
            f.boot.cpus,
            plural(f.boot.cpus),
            millions(f.created),
            millions(f.ready),
            millions(f.created + f.ready),
            millions(f.created),
            millions(f.end),
            millions(f.created + f.end),
            f.parallel_ms,
        );
    }
    t
}

/// The config that boots `kernel` as the one guest `linux`.
fn hypervisor_toml(kernel: Kernel) -> String {
    format!(
        "# Written by `cargo xtask bench` (xtask/src/bench/linux_boot.rs).\n\
         [hypervisor]\n\
         power_off_when_all_stopped = true\n\n\
         [[guest]]\n\
         name = \"linux\"\n\
         kernel = \"{kernel}\"\n\
         initrd = \"{initrd}\"\n\
         cmdline = \"{CMDLINE}\"\n\
         memory = \"{memory}M\"\n\
         format = \"linux\"\n",
        kernel = kernel.artifact.file_name(),
        initrd = Artifact::Initramfs.file_name(),
        memory = kernel.memory_mib,
    )
}

/// One Bochs boot of `image` on `cpus` CPUs with `memory_mib`, which must
/// end by itself.
pub(super) fn boot(
    image: &Path,
    cpus: u32,
    memory_mib: u32,
    work_dir: &Path,
    tools: &Found,
) -> Result<BootOutcome, String> {
    let opts = BootOptions {
        machine: Machine::Q35,
        engine: Engine::Bochs,
        firmware: Firmware::Bios,
        image: PathBuf::from(image),
        cpus,
        memory_mib,
        timeout: BOOT_TIMEOUT,
        serial_log: Some(work_dir.with_extension("console.txt")),
        echo: false,
        work_dir: work_dir.to_path_buf(),
        console: Console::Output,
    };
    let outcome = runner::boot(&opts, tools).map_err(|e| e.to_string())?;
    if outcome.exit == Exit::TimedOut {
        return Err(failed(
            &format!("Bochs still ran after {}s", BOOT_TIMEOUT.as_secs()),
            &outcome,
        ));
    }
    Ok(outcome)
}

/// An error with the end of the console.
pub(super) fn failed(what: &str, outcome: &BootOutcome) -> String {
    let lines: Vec<&str> = outcome.serial.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("{what}; the console ended:\n{tail}")
}

/// N of the first `ferrovisor-linux: ready tsc <N>` line.
pub fn marker(serial: &str) -> Option<u64> {
    serial
        .lines()
        .find_map(|l| l.split(MARKER).nth(1))
        .and_then(|n| n.trim().parse().ok())
}

/// C of `guest linux: guest TSC 0 at host TSC <C>`.
pub fn created_at(serial: &str) -> Option<u64> {
    serial
        .lines()
        .find_map(|l| l.split("guest linux: guest TSC 0 at host TSC ").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

/// The exits by kind, most frequent first, and the ticks on a CPU, from
/// `guest linux: vcpu0: <t> TSC ticks on a CPU ...; exits: 805 CPUID, ...`.
pub fn read_exits(serial: &str) -> Option<(Vec<(u64, String)>, u64)> {
    let line = serial
        .lines()
        .find_map(|l| l.split("guest linux: vcpu0: ").nth(1))?;
    let on_cpu = line.split(' ').next()?.parse().ok()?;
    let list = line.split("; exits: ").nth(1)?;
    let mut exits = Vec::new();
    if list.trim() != "none" {
        for part in list.split(", ") {
            let (n, kind) = part.trim().split_once(' ')?;
            exits.push((n.parse::<u64>().ok()?, kind.to_string()));
        }
    }
    // Most frequent first; equal counts by name, so the order is stable.
    exits.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Some((exits, on_cpu))
}

/// Why a Linux boot makes exits of `kind` (the name `ExitKind::name`
/// prints), in a sentence, for the most frequent kinds.
pub fn why(kind: &str) -> &'static str {
    match kind {
        "I/O" => {
            "Port I/O: the 8250 driver writes the console byte by byte to the emulated 16550 at \
             0x3F8, reading its line status register around each byte; the kernel programs and \
             reads the PIT, the 8259s and the RTC while it sets up its clocks, and probes PCI \
             configuration space (ports 0xCF8/0xCFC), which has no devices."
        }
        "slice end" => {
            "Slice ends: VMX-preemption-timer exits. Every 10 ms slice (100,000 ticks) ends with \
             one even when the guest runs alone (the scheduler picks it again at once), and the \
             timer is also set for the guest's next device deadline (its local APIC timer, the \
             PIT), which ends a run early so the interrupt can be injected."
        }
        "nested page fault" => {
            "Nested page faults: the local APIC and I/O APIC are emulated as MMIO pages the EPT \
             leaves unmapped, so every APIC register access (EOI after each interrupt, timer \
             programming, the I/O APIC's redirection entries) faults and is decoded and emulated."
        }
        "WRMSR" => {
            "WRMSR: the guest arms its local APIC timer in TSC-deadline mode with a write to \
             IA32_TSC_DEADLINE for every timer interrupt, and writes a few MSRs (EFER, the SYSCALL \
             MSRs, PAT) once while it starts."
        }
        "RDMSR" => "RDMSR: the kernel reads model-specific registers while it probes the CPU.",
        "CPUID" => {
            "CPUID: the kernel identifies the CPU and its features at start-up and again for \
             each feature check and in `/proc/cpuinfo`; every CPUID exits under VT-x."
        }
        "interrupt window" => {
            "Interrupt windows: an interrupt became due while the guest had interrupts off, so the \
             entry asked to exit as soon as it turns them on, to inject it then."
        }
        "HLT" => "HLT: the idle guest halts until its next timer or device interrupt.",
        "PAUSE loop" => {
            "PAUSE loops: a vCPU spun on a lock (a spinlock, a TLB shootdown's wait for the other \
             CPUs) past the PAUSE-loop window, so it gave its CPU to another vCPU, most likely the \
             lock holder."
        }
        _ => "An exit kind a Linux boot rarely makes.",
    }
}

/// The figures as a table, one row per kernel.
pub fn ticks_table(figures: &[Figures]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| kernel | under Ferrovisor: to the guest's start + guest TSC at the marker = power-on to the marker | natively (SYSLINUX) | ratio | target |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | --- |");
    for f in figures {
        let verdict = if f.ratio() <= RATIO_TARGET {
            "met"
        } else {
            "missed"
        };
        let _ = writeln!(
            t,
            "| {} ({} MiB) | {} + {} = {} | {} | {:.2}x | at most {RATIO_TARGET:.2}x ({verdict}) |",
            f.kernel.name,
            f.kernel.memory_mib,
            millions(f.created),
            millions(f.guest),
            millions(f.ferrovisor()),
            millions(f.native),
            f.ratio()
        );
    }
    t
}

/// The exits of each boot by kind, with the three most frequent explained.
pub fn exits_section(figures: &[Figures]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| kernel | VM exits, power-on to power-off, by kind (most frequent first) | total |"
    );
    let _ = writeln!(t, "| --- | --- | ---: |");
    for f in figures {
        let list: Vec<String> = f.exits.iter().map(|(n, k)| format!("{n} {k}")).collect();
        let total: u64 = f.exits.iter().map(|(n, _)| n).sum();
        let _ = writeln!(t, "| {} | {} | {total} |", f.kernel.name, list.join(", "));
    }
    let mut top: Vec<&str> = Vec::new();
    for f in figures {
        for (_, kind) in f.exits.iter().take(3) {
            if !top.contains(&kind.as_str()) {
                top.push(kind);
            }
        }
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "The three most frequent kinds of each boot:");
    let _ = writeln!(t);
    for kind in top {
        let _ = writeln!(t, "- {}", why(kind));
    }
    t
}

/// `n` in millions of ticks, with one decimal.
fn millions(n: u64) -> String {
    format!("{:.1} M", n as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FERROVISOR: &str = "\
[cpu0] DEBUG kernel::vtx::vm: guest linux: guest TSC 0 at host TSC 309969633
[cpu0] INFO  kernel::guests: guest linux: started (64 MiB, linux)
[linux] ferrovisor-linux: ready tsc 130145743
[cpu0] DEBUG run::figures: guest linux: vcpu0: 145956234 TSC ticks on a CPU in 1458 slices (0 moved between CPUs, 4 blocked, 4 woken), last on cpu0; exits: 805 CPUID, 23759 I/O, 13 RDMSR, 1356 WRMSR, 4 HLT, 2318 nested page fault, 361 interrupt window, 15544 slice end, 1 XSETBV
";

    #[test]
    fn the_boot_figures_are_read_from_the_console() {
        assert_eq!(created_at(FERROVISOR), Some(309_969_633));
        assert_eq!(marker(FERROVISOR), Some(130_145_743));
        assert_eq!(
            marker("ferrovisor-linux: ready tsc 6300000000\n"),
            Some(6_300_000_000)
        );
        assert_eq!(marker("ferrovisor-linux: ready\n"), None);
        let (exits, on_cpu) = read_exits(FERROVISOR).unwrap();
        assert_eq!(on_cpu, 145_956_234);
        assert_eq!(exits[0], (23759, "I/O".to_string()));
        assert_eq!(exits[1], (15544, "slice end".to_string()));
        assert_eq!(exits[2], (2318, "nested page fault".to_string()));
        assert_eq!(exits.len(), 9);
        assert_eq!(exits[8], (1, "XSETBV".to_string()));
    }

    #[test]
    fn the_tables_add_the_offset_and_judge_the_ratio() {
        let (exits, on_cpu) = read_exits(FERROVISOR).unwrap();
        let f = Figures {
            kernel: KERNELS[0],
            created: 300_000_000,
            guest: 130_000_000,
            native: 100_000_000,
            exits,
            on_cpu,
        };
        assert_eq!(f.ferrovisor(), 430_000_000);
        let t = ticks_table(std::slice::from_ref(&f));
        assert!(t.contains("| small (64 MiB) | 300.0 M + 130.0 M = 430.0 M | 100.0 M | 4.30x | at most 1.10x (missed) |"), "{t}");
        let e = exits_section(&[f]);
        assert!(
            e.contains("| small | 23759 I/O, 15544 slice end, 2318 nested page fault,"),
            "{e}"
        );
        assert!(e.contains("| 44161 |"), "{e}");
        assert!(
            e.contains("- Port I/O:")
                && e.contains("- Slice ends:")
                && e.contains("- Nested page faults:"),
            "{e}"
        );
    }

    const SMP: &str = "\
[cpu0] DEBUG kernel::vtx::vm: guest linux: guest TSC 0 at host TSC 96000000
[linux] ferrovisor-linux: ready tsc 150000000
[linux] selfcheck: cpus 4
[linux] selfcheck: parallel 4 done in 2950 ms (4 loops of 1000 rounds and 50 forks; the loops ended on 4 CPUs)
[linux] selfcheck: done tsc 210000000
";

    #[test]
    fn the_smp_figures_are_read_from_the_console() {
        assert_eq!(created_at(SMP), Some(96_000_000));
        assert_eq!(marker(SMP), Some(150_000_000));
        assert_eq!(selfcheck_end(SMP), Some(210_000_000));
        assert_eq!(parallel_ms(SMP), Some(2950));
        // The default self-check's end carries no TSC.
        assert_eq!(selfcheck_end("[linux] selfcheck: done\n"), None);
        assert_eq!(
            parallel_ms("[linux] selfcheck: parallel 4 failed: 3 of 4 loops finished\n"),
            None
        );
        assert_eq!(
            parallel_ms("[linux] selfcheck: parallel ignored: fv.parallel=x is not 1 to 64\n"),
            None
        );
    }

    #[test]
    fn the_smp_table_adds_the_offset_to_both_times() {
        let f = SmpFigures {
            boot: SMP_BOOTS[2],
            created: 96_000_000,
            ready: 150_000_000,
            end: 210_000_000,
            parallel_ms: 2950,
        };
        let one = SmpFigures {
            boot: SMP_BOOTS[0],
            ..f.clone()
        };
        let t = smp_table(&[one, f]);
        assert!(
            t.contains("| 4 vCPUs on 2 CPUs | 96.0 M + 150.0 M = 246.0 M | 96.0 M + 210.0 M = 306.0 M | 2950 ms |"),
            "{t}"
        );
        assert!(t.contains("| 1 vCPU on 1 CPU | "), "{t}");
    }

    #[test]
    fn the_smp_configs_give_the_guest_its_vcpus_and_cpus() {
        let text = smp_toml(SMP_BOOTS[2]);
        assert_eq!(
            linux::referenced(&text),
            [Artifact::SmallKernel, Artifact::Initramfs]
        );
        assert!(text.contains("\nvcpus = 4\ncpus = [0, 1]\n"), "{text}");
        assert!(text.contains(&format!("cmdline = \"{SMP_CMDLINE}\"")));
        assert!(smp_toml(SMP_BOOTS[1]).contains("\nvcpus = 2\ncpus = [0]\n"));
        // Every row runs the same workload, whatever its vCPUs.
        assert!(
            SMP_CMDLINE.contains(" fv.parallel=4 ") && SMP_CMDLINE.contains(" fv.selfcheck=tsc ")
        );
    }

    #[test]
    fn the_config_boots_the_kernel_with_the_native_command_line() {
        let text = hypervisor_toml(KERNELS[1]);
        assert_eq!(
            linux::referenced(&text),
            [Artifact::StockKernel, Artifact::Initramfs]
        );
        assert!(text.contains(&format!("cmdline = \"{CMDLINE}\"")));
        assert!(text.contains("memory = \"256M\""));
    }
}
