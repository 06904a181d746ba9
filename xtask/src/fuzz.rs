//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the fuzz targets in
//! `fuzz/` with libFuzzer's coverage instrumentation and runs each for N
//! seconds (default 30), keeping the corpus in `fuzz/corpus/<target>` and
//! crashes in `fuzz/artifacts/<target>`.
//!
//! It passes the flags `cargo fuzz` would, so the targets need no
//! cargo-fuzz installed; where it is installed, `cargo fuzz run <target>` in
//! `fuzz/` runs the same code. `cargo xtask test` runs every target for a
//! few seconds, as a smoke test that the parsers survive fresh input.

use std::path::PathBuf;
use std::process::Command;

use xtask::workspace_root;

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["config", "loaders", "disk", "exits"];

/// The host triple the targets build for; naming it keeps the coverage
/// flags off build scripts and proc macros, as cargo-fuzz does.
const HOST: &str = "x86_64-unknown-linux-gnu";

/// libFuzzer's instrumentation, as cargo-fuzz sets it.
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
     -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
     -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Builds every target.
pub fn build() -> Result<(), String> {
    println!("xtask: building the fuzz targets");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--bins", "--target", HOST])
        .env("RUSTFLAGS", RUSTFLAGS)
        .current_dir(fuzz_dir())
        .status()
        .map_err(|e| format!("cannot run cargo for the fuzz targets: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building the fuzz targets failed ({status})"))
    }
}

/// Runs `target` for `seconds`; a crash fails with the path of the input
/// that caused it.
pub fn run(target: &str, seconds: u64) -> Result<(), String> {
    let dir = fuzz_dir();
    let binary = dir.join("target").join(HOST).join("release").join(target);
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    println!("xtask: fuzzing {target} for {seconds}s");
    let output = Command::new(&binary)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(&corpus)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let log = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        if let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.starts_with("stat::number_of_executed_units"))
        {
            println!("xtask: {target}: {line}");
        }
        Ok(())
    } else {
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "fuzz target {target} failed ({}); the crashing input is under {}:\n{}",
            output.status,
            artifacts.display(),
            tail.join("\n")
        ))
    }
}

/// Runs `cargo xtask fuzz`.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut seconds = 30;
    let mut targets: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = it.next().ok_or("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .map_err(|_| format!("--seconds takes a number, not {value:?}"))?;
            }
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(target) => targets.push(target),
                None => {
                    return Err(format!(
                        "unknown fuzz target or option {name:?}; targets: {}",
                        TARGETS.join(", ")
                    ))
                }
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    build()?;
    for target in targets {
        run(target, seconds)?;
    }
    Ok(())
}
