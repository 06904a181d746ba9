//! `cargo xtask bench --peer kvm`: the benchmark guest under Linux KVM on
//! the same Bochs, for the KVM columns beside Ferrovisor's.
//!
//! Debian's stock kernel boots natively under Bochs (`corei7_skylake_x`,
//! whose VT-x with EPT the kernel sees; 1 CPU and the memory of the stock
//! kernel's native boot in [`linux_boot`](super::linux_boot)) from the
//! SYSLINUX disk of [`xtask::native`]. Its initrd is the Linux guests'
//! busybox initramfs with a second archive appended, which the kernel
//! unpacks over the first: `xtask/peer/init` as `/init`, the package's own
//! `irqbypass`, `kvm` and `kvm-intel` modules (from the same package
//! version as the kernel, [`linux::stock_kernel_with_kvm`]),
//! `xtask/peer/kvm-bench.c` built here with `gcc -static -O2`, the
//! benchmark guest and kvm-bench's arguments. `/init` loads the modules,
//! prints the CPU vulnerabilities' mitigations and kvm-intel's parameters
//! (`kvm-peer: ...` lines), runs kvm-bench and powers off.
//!
//! kvm-bench gives the guest the start state Ferrovisor's loader gives a
//! long-mode flat guest and copies its COM1 lines to the console with the
//! prefix Ferrovisor's console gives them (`[cpuid] ...`), so the bench
//! reads KVM's figures with the code that reads Ferrovisor's, whatever
//! lines the guest prints (see the program's header comment for how the
//! guest's end is found).
//!
//! The kernel boots twice ([`BOOTS`]): with its default mitigations, and
//! with `mitigations=off kvm-intel.vmentry_l1d_flush=never` (which
//! `/init` hands to insmod, as modprobe would), because the issue asks for
//! both figures where the mitigations change them.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use xtask::cpio::Archive;
use xtask::linux::{self, Artifact, KVM_MODULES};
use xtask::setup::Found;
use xtask::{guests, native, out_dir, workspace_root};

use super::linux_boot;

/// The guest both Ferrovisor and KVM run: the one guest of
/// `guest-images/bench/hypervisor.toml` (a test checks that they agree).
pub struct PeerGuest {
    /// Its name there, which prefixes its console lines.
    pub name: &'static str,
    /// The flat image `xtask::guests` builds.
    pub image: &'static str,
    /// Its RAM (`memory = "2M"`).
    pub memory: &'static str,
    /// Where it is loaded and where it starts.
    pub load_address: u64,
    pub entry: u64,
}

/// The benchmark guest.
pub const GUEST: PeerGuest = PeerGuest {
    name: "cpuid",
    image: "cpuid_loop.bin",
    memory: "2M",
    load_address: 0x10_0000,
    entry: 0x10_0000,
};

/// One boot of the KVM peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerBoot {
    /// The column's heading.
    pub label: &'static str,
    /// What the kernel's command line adds to [`CMDLINE`].
    pub extra: &'static str,
}

/// The command line of every peer boot: the console on COM1 at the baud
/// rate Bochs times, as in the native Linux boots.
pub const CMDLINE: &str = "console=ttyS0,115200";

/// The two boots: the kernel's default mitigations, and none.
pub const BOOTS: [PeerBoot; 2] = [
    PeerBoot {
        label: "KVM, default mitigations",
        extra: "",
    },
    PeerBoot {
        label: "KVM, `mitigations=off kvm-intel.vmentry_l1d_flush=never`",
        extra: "mitigations=off kvm-intel.vmentry_l1d_flush=never",
    },
];

impl PeerBoot {
    /// The kernel's whole command line.
    pub fn cmdline(self) -> String {
        if self.extra.is_empty() {
            CMDLINE.to_string()
        } else {
            format!("{CMDLINE} {}", self.extra)
        }
    }
}

/// The console of one peer boot.
pub struct PeerRun {
    pub boot: PeerBoot,
    pub serial: String,
}

/// What `/init` prints before a vulnerability's state.
const VULNERABILITY: &str = "kvm-peer: vulnerability ";
/// What `/init` prints before its measure of the host's timer interrupts.
const BUSY: &str = "kvm-peer: busy for ";
/// What `/init` prints before one of kvm-intel's parameters.
const KVM_INTEL_PARAMETER: &str = "kvm-peer: kvm_intel.";

impl PeerRun {
    /// The CPU vulnerabilities and what the kernel does about each, from
    /// `kvm-peer: vulnerability <name>: <state>`.
    pub fn vulnerabilities(&self) -> Vec<(String, String)> {
        self.serial
            .lines()
            .filter_map(|l| l.split(VULNERABILITY).nth(1)?.split_once(": "))
            .map(|(name, state)| (name.to_string(), state.trim().to_string()))
            .collect()
    }

    /// How often the host took its timer interrupt while busy, from
    /// `kvm-peer: busy for <t> TSC ticks, the host took <n> local timer
    /// interrupts`: `(t, n)`.
    pub fn host_timer(&self) -> Option<(u64, u64)> {
        self.serial.lines().find_map(|l| {
            let rest = l.split(BUSY).nth(1)?;
            let (ticks, rest) = rest.split_once(" TSC ticks, the host took ")?;
            let interrupts = rest.strip_suffix(" local timer interrupts")?;
            Some((ticks.parse().ok()?, interrupts.trim().parse().ok()?))
        })
    }

    /// kvm-intel's parameters, from `kvm-peer: kvm_intel.<name> = <value>`.
    pub fn kvm_intel_parameters(&self) -> Vec<(String, String)> {
        self.serial
            .lines()
            .filter_map(|l| l.split(KVM_INTEL_PARAMETER).nth(1)?.split_once(" = "))
            .map(|(name, value)| (name.to_string(), value.trim().to_string()))
            .collect()
    }
}

/// Builds everything and boots the peer once per [`BOOTS`] entry.
pub fn measure(tools: &Found) -> Result<Vec<PeerRun>, String> {
    let work = out_dir().join("bench").join("kvm-peer");
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let (kernel, modules) = linux::stock_kernel_with_kvm()?;
    let base = linux::artifact(Artifact::Initramfs)?;
    let program = build_program(&work)?;
    let guest = guests::build_guests(&work.join("guests"))?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == GUEST.image))
        .ok_or_else(|| format!("the guests' build made no {}", GUEST.image))?;
    let read = |p: &Path| fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let init_path = peer_dir().join("init");
    let mut module_files = Vec::new();
    for (name, _) in KVM_MODULES {
        module_files.push((name, read(&modules.join(format!("{name}.ko")))?));
    }
    let overlay = overlay_bytes(
        &read(&init_path)?,
        &read(&program)?,
        &read(&guest)?,
        &module_files,
    )?;
    let mut initrd = read(&base)?;
    initrd.extend_from_slice(&overlay);
    let initrd_path = work.join("initrd.cpio");
    fs::write(&initrd_path, &initrd)
        .map_err(|e| format!("cannot write {}: {e}", initrd_path.display()))?;

    let syslinux = tools.syslinux.as_ref().ok_or("SYSLINUX was not found")?;
    let memory_mib = linux_boot::KERNELS
        .iter()
        .find(|k| k.artifact == Artifact::StockKernel)
        .map_or(256, |k| k.memory_mib);
    let mut runs = Vec::new();
    for (i, boot) in BOOTS.into_iter().enumerate() {
        let disk = work.join(format!("native-{i}.img"));
        native::syslinux_disk(syslinux, &kernel, &initrd_path, &boot.cmdline(), &disk)?;
        println!(
            "xtask: booting the stock kernel natively (Bochs, {memory_mib} MiB, SYSLINUX) to run \
             the benchmark guest under KVM: {}",
            boot.cmdline()
        );
        let outcome = linux_boot::boot(
            &disk,
            1,
            memory_mib,
            &work.join(format!("native-{i}")),
            tools,
        )?;
        let stopped = format!(
            "kvm-bench: guest {}: stopped: exited with code 0",
            GUEST.name
        );
        if !outcome.saw(&stopped) {
            return Err(linux_boot::failed(
                &format!(
                    "under KVM ({}) the benchmark guest did not finish (no `{stopped}`)",
                    boot.cmdline()
                ),
                &outcome,
            ));
        }
        let run = PeerRun {
            boot,
            serial: outcome.serial,
        };
        check_counting(&run)?;
        runs.push(run);
    }
    Ok(runs)
}

/// `xtask/peer`: the KVM program's source and the peer's `/init`.
fn peer_dir() -> PathBuf {
    workspace_root().join("xtask").join("peer")
}

/// Builds `xtask/peer/kvm-bench.c` into `work/kvm-bench`, statically (the
/// initramfs has no C library).
fn build_program(work: &Path) -> Result<PathBuf, String> {
    let out = work.join("kvm-bench");
    xtask::run_tool(
        "kvm-bench",
        std::process::Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&out)
            .arg(peer_dir().join("kvm-bench.c")),
        "gcc libc6-dev",
    )?;
    Ok(out)
}

/// The arguments `/init` gives kvm-bench, one a line: the guest as
/// Ferrovisor's bench config has it.
pub fn program_args() -> String {
    format!(
        "--name\n{}\n--memory\n{}\n--load\n{:#x}\n--entry\n{:#x}\n/guest/{}\n",
        GUEST.name, GUEST.memory, GUEST.load_address, GUEST.entry, GUEST.image
    )
}

/// The archive appended to the busybox initramfs (see the module's
/// documentation); `modules` in load order, as `(name, bytes)`.
pub fn overlay_bytes(
    init: &[u8],
    program: &[u8],
    guest: &[u8],
    modules: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>, String> {
    let mut archive = Archive::new();
    for dir in ["etc", "guest", "lib", "lib/kvm"] {
        archive.dir(dir, 0o755)?;
    }
    archive.file("init", 0o755, init)?;
    archive.file("bin/kvm-bench", 0o755, program)?;
    archive.file(&format!("guest/{}", GUEST.image), 0o644, guest)?;
    archive.file("etc/kvm-bench.args", 0o644, program_args().as_bytes())?;
    for (name, bytes) in modules {
        archive.file(&format!("lib/kvm/{name}.ko"), 0o644, bytes)?;
    }
    Ok(archive.finish())
}

/// Fails unless the guest's empty loop took 2 ticks an iteration under
/// KVM too: only then are its figures instructions, as Ferrovisor's are.
fn check_counting(run: &PeerRun) -> Result<(), String> {
    let empty = super::figure(&run.serial, "empty loop")
        .map_err(|e| format!("under KVM ({}): {e}", run.boot.cmdline()))?;
    if empty.average != 2 {
        return Err(format!(
            "under KVM ({}) the empty loop (2 instructions) took {} ticks an iteration, not 2: the \
             guest's TSC under KVM does not count one tick per instruction, so its figures cannot \
             stand beside Ferrovisor's",
            run.boot.cmdline(),
            empty.average
        ));
    }
    Ok(())
}

/// Every figure the guest printed (`[<guest>] <what>: <n> ..., average
/// <t> ticks`, read by [`super::figure`]), in the order printed: the
/// median where the line gives one (`..., median <m> ticks, average <t>
/// ticks`, the vmexit set's), else the average. Medians are compared
/// because an average also carries the host's own interrupts that land
/// in the timed loop, which KVM's host kernel takes far more often than
/// Ferrovisor's slice ends.
pub fn figures(serial: &str) -> Vec<(String, u64)> {
    let prefix = format!("[{}] ", GUEST.name);
    let mut found: Vec<(String, u64)> = Vec::new();
    for line in serial.lines() {
        let Some((what, _)) = line.strip_prefix(&prefix).and_then(|l| l.split_once(": ")) else {
            continue;
        };
        if found.iter().any(|(w, _)| w == what) {
            continue;
        }
        // A vmexit line is read as the bench reads it; the others (the
        // empty loop) give their average.
        let median =
            what.strip_prefix("vmexit ")
                .and_then(|key| match super::exit_figure(serial, key) {
                    Ok(super::ExitFigure::Measured { median, .. }) => Some(median),
                    _ => None,
                });
        if let Ok(figure) = super::figure(serial, what) {
            found.push((what.to_string(), median.unwrap_or(figure.average)));
        }
    }
    found
}

/// KVM's figures beside Ferrovisor's (`ferrovisor`: the console of its
/// Bochs run): one row per figure the guest printed under Ferrovisor, one
/// column per peer boot with its ratio to Ferrovisor's, then which
/// mitigations each boot had.
pub fn table(ferrovisor: &str, runs: &[PeerRun]) -> String {
    let mut t = String::new();
    let _ = write!(
        t,
        "| figure, TSC ticks (median where the guest gives one) | Ferrovisor (VT-x) |"
    );
    for run in runs {
        let _ = write!(t, " {} | ratio |", run.boot.label);
    }
    let _ = write!(t, "\n| --- | ---: |");
    for _ in runs {
        let _ = write!(t, " ---: | ---: |");
    }
    t.push('\n');
    let peer: Vec<Vec<(String, u64)>> = runs.iter().map(|r| figures(&r.serial)).collect();
    for (what, ours) in figures(ferrovisor) {
        let _ = write!(t, "| {what} | {ours} |");
        for theirs in &peer {
            match theirs.iter().find(|(w, _)| *w == what) {
                Some((_, f)) => {
                    let _ = write!(t, " {f} | {} |", ratio(*f, ours));
                }
                None => t.push_str(" n/a | n/a |"),
            }
        }
        t.push('\n');
    }
    let _ = writeln!(
        t,
        "\nratio: KVM's figure over Ferrovisor's. n/a: the guest printed no such line under KVM.\n"
    );
    t.push_str(&mitigations(runs));
    t
}

/// `a / b` with two decimals, or n/a where `b` is 0.
fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "n/a".to_string()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}

/// What each boot's kernel did about the CPU's vulnerabilities, and
/// kvm-intel's parameters that bear on the exit path, as a table with a
/// column per boot; "—" where a boot printed no such line.
fn mitigations(runs: &[PeerRun]) -> String {
    let mut rows: Vec<String> = Vec::new();
    let mut cells: Vec<Vec<(String, String)>> = Vec::new();
    for run in runs {
        let mut of_run = run.vulnerabilities();
        of_run.extend(
            run.kvm_intel_parameters()
                .into_iter()
                .filter(|(name, _)| KVM_INTEL_SHOWN.contains(&name.as_str()))
                .map(|(name, value)| (format!("kvm-intel `{name}`"), value)),
        );
        of_run.push((
            "the host's timer interrupt while busy (each an exit under KVM)".to_string(),
            match run.host_timer() {
                Some((ticks, 0)) => format!("none in {ticks} TSC ticks"),
                Some((ticks, n)) => format!("one every {} TSC ticks", ticks / n),
                None => "not measured".to_string(),
            },
        ));
        for (name, _) in &of_run {
            if !rows.contains(name) {
                rows.push(name.clone());
            }
        }
        cells.push(of_run);
    }
    let mut t = String::new();
    let _ = write!(t, "| what the kernel reported |");
    for run in runs {
        let _ = write!(t, " {} |", run.boot.label);
    }
    let _ = write!(t, "\n| --- |");
    for _ in runs {
        t.push_str(" --- |");
    }
    t.push('\n');
    for row in rows {
        let _ = write!(t, "| {row} |");
        for of_run in &cells {
            let value = of_run
                .iter()
                .find(|(name, _)| *name == row)
                .map_or("—", |(_, v)| v.as_str());
            let _ = write!(t, " {value} |");
        }
        t.push('\n');
    }
    t
}

/// The kvm-intel parameters that change the exit path's cost, shown with
/// the mitigations.
const KVM_INTEL_SHOWN: &[&str] = &[
    "vmentry_l1d_flush",
    "ept",
    "vpid",
    "enable_apicv",
    "preemption_timer",
    "ple_gap",
];

#[cfg(test)]
mod tests {
    use super::*;

    const FERROVISOR: &str = "\
[cpu0] INFO  kernel::guests: config: guest cpuid: kernel \"cpuid_loop.bin\"
[cpuid] ........
[cpuid] empty loop: 1000 iterations, average 2 ticks
[cpuid] cpuid exit: 1000 round trips, average 233 ticks
[cpuid] com1 write exit: 1000 round trips, average 1700 ticks
[cpuid] vmexit hlt: 64 samples, median 900 ticks, average 950 ticks
[cpuid] raw: empty 2000 cpuid 235000 com1 1702000
";

    fn peer(boot: usize, serial: &str) -> PeerRun {
        PeerRun {
            boot: BOOTS[boot],
            serial: serial.to_string(),
        }
    }

    #[test]
    fn every_figure_line_is_read_in_order_and_nothing_else() {
        let found = figures(FERROVISOR);
        let names: Vec<&str> = found.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            names,
            ["empty loop", "cpuid exit", "com1 write exit", "vmexit hlt"]
        );
        assert_eq!(found[1].1, 233);
        // The vmexit set's lines give their median.
        assert_eq!(found[3].1, 900);
        // Other guests' lines and unprefixed ones are not the guest's.
        assert!(figures("[other] cpuid exit: 1000 round trips, average 5 ticks\n").is_empty());
        assert!(figures("cpuid exit: 1000 round trips, average 5 ticks\n").is_empty());
    }

    #[test]
    fn the_table_puts_each_boot_beside_ferrovisor_with_its_ratio() {
        let default = peer(
            0,
            "kvm-peer: vulnerability spectre_v2: Mitigation: Retpolines\n\
             kvm-peer: vulnerability l1tf: Not affected\n\
             kvm-peer: kvm_intel.vmentry_l1d_flush = cond\n\
             kvm-peer: kvm_intel.ept = Y\n\
             kvm-peer: kvm_intel.nested = N\n\
             kvm-peer: busy for 2600000 TSC ticks, the host took 65 local timer interrupts\n\
             [cpuid] empty loop: 1000 iterations, average 2 ticks\n\
             [cpuid] cpuid exit: 1000 round trips, average 1035 ticks\n\
             [cpuid] com1 write exit: 1000 round trips, average 7222 ticks\n",
        );
        let off = peer(
            1,
            "kvm-peer: vulnerability spectre_v2: Vulnerable\n\
             kvm-peer: kvm_intel.vmentry_l1d_flush = never\n\
             [cpuid] empty loop: 1000 iterations, average 2 ticks\n\
             [cpuid] cpuid exit: 1000 round trips, average 939 ticks\n",
        );
        let t = table(FERROVISOR, &[default, off]);
        assert!(
            t.contains("| cpuid exit | 233 | 1035 | 4.44 | 939 | 4.03 |"),
            "{t}"
        );
        assert!(
            t.contains("| com1 write exit | 1700 | 7222 | 4.25 | n/a | n/a |"),
            "{t}"
        );
        assert!(
            t.contains("| empty loop | 2 | 2 | 1.00 | 2 | 1.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| vmexit hlt | 900 | n/a | n/a | n/a | n/a |"),
            "{t}"
        );
        assert!(
            t.contains("| spectre_v2 | Mitigation: Retpolines | Vulnerable |\n"),
            "{t}"
        );
        assert!(t.contains("| l1tf | Not affected | — |\n"), "{t}");
        assert!(
            t.contains("| kvm-intel `vmentry_l1d_flush` | cond | never |\n"),
            "{t}"
        );
        assert!(t.contains("| kvm-intel `ept` | Y | — |\n"), "{t}");
        assert!(
            t.contains(
                "while busy (each an exit under KVM) | one every 40000 TSC ticks | not measured |"
            ),
            "{t}"
        );
        assert!(!t.contains("nested"), "{t}");
        // The header has two columns per boot.
        let header = t.lines().next().unwrap();
        assert_eq!(header.matches("| ratio |").count(), 2, "{header}");
    }

    #[test]
    fn a_boot_whose_empty_loop_is_not_two_ticks_is_refused() {
        let good = peer(0, "[cpuid] empty loop: 1000 iterations, average 2 ticks\n");
        assert!(check_counting(&good).is_ok());
        let bad = peer(1, "[cpuid] empty loop: 1000 iterations, average 7 ticks\n");
        let err = check_counting(&bad).unwrap_err();
        assert!(err.contains("took 7 ticks an iteration, not 2"), "{err}");
        assert!(err.contains("mitigations=off"), "{err}");
        assert!(check_counting(&peer(0, "kvm-peer: powering off\n")).is_err());
        assert_eq!(ratio(7, 0), "n/a");
    }

    #[test]
    fn the_peer_runs_the_guest_the_bench_config_runs() {
        let path = guests::config_dir("bench").join("hypervisor.toml");
        let text = fs::read_to_string(&path).unwrap();
        let guests: Vec<&str> = text.lines().filter(|l| l.trim() == "[[guest]]").collect();
        assert_eq!(guests.len(), 1, "the peer runs one guest");
        for line in [
            format!("name = \"{}\"", GUEST.name),
            format!("kernel = \"{}\"", GUEST.image),
            format!("memory = \"{}\"", GUEST.memory),
            "format = \"flat\"".to_string(),
            format!("load_address = {:#x}", GUEST.load_address),
            format!("entry = {:#x}", GUEST.entry),
            "mode = \"long\"".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "{}: no `{line}`",
                path.display()
            );
        }
        assert_eq!(
            program_args(),
            "--name\ncpuid\n--memory\n2M\n--load\n0x100000\n--entry\n0x100000\n/guest/cpuid_loop.bin\n"
        );
    }

    #[test]
    fn the_overlay_replaces_init_and_brings_the_program_guest_and_modules() {
        let modules = vec![
            ("irqbypass", b"irq".to_vec()),
            ("kvm", b"kvm".to_vec()),
            ("kvm-intel", b"intel".to_vec()),
        ];
        let bytes = overlay_bytes(b"#!/bin/sh\n", b"\x7fELF", b"guest", &modules).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "init",
            "bin/kvm-bench",
            "guest/cpuid_loop.bin",
            "etc/kvm-bench.args",
            "lib/kvm/irqbypass.ko",
            "lib/kvm/kvm.ko",
            "lib/kvm/kvm-intel.ko",
            "TRAILER!!!",
        ] {
            assert!(text.contains(&format!("{name}\0")), "{name}");
        }
        // Appended to another archive, it must start on a 4-byte boundary
        // and keep the next one there.
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
    }

    #[test]
    fn the_peer_init_loads_the_modules_in_order_and_passes_their_parameters() {
        let init = fs::read_to_string(peer_dir().join("init")).unwrap();
        let order: Vec<&str> = KVM_MODULES.iter().map(|(n, _)| *n).collect();
        assert!(
            init.contains(&format!("for module in {}; do", order.join(" "))),
            "xtask/peer/init must insmod {order:?} in that order"
        );
        for needed in [
            "kvm-intel.* | kvm_intel.*)",
            "insmod \"/lib/kvm/$module.ko\" $params",
            VULNERABILITY.trim_end(),
            BUSY,
            "TSC ticks, the host took $((now - timer)) local timer interrupts\"",
            "/sys/module/kvm_intel/parameters/*",
            "/bin/kvm-bench $(cat /etc/kvm-bench.args)",
            "poweroff -f",
        ] {
            assert!(init.contains(needed), "xtask/peer/init lacks `{needed}`");
        }
    }
}
