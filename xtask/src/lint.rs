//! `cargo xtask lint`: rustfmt over every workspace (main, `boot/`,
//! `fuzz/`) and clippy over the main workspace's crates, each under the
//! toolchain that builds it, with warnings as errors. `cargo xtask test`
//! runs the same checks right after set-up, before any test, so a badly
//! formatted file or a clippy warning fails it (and CI) in seconds.
//!
//! The kernel is checked twice: its library on the host, as its unit tests
//! build, and its library and binary for `x86_64-unknown-none` under the
//! pinned bare-metal toolchain, with the release profile, as `cargo xtask
//! build` compiles it (that target's `core` and `alloc` come prebuilt with
//! the toolchain, so no `-Zbuild-std` is needed).

use std::path::PathBuf;
use std::process::Command;

use xtask::build::{self, KERNEL_TARGET};
use xtask::workspace_root;

/// The toolchain a check runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Toolchain {
    /// The workspace's own (`rust-toolchain.toml`): the cargo running xtask.
    Workspace,
    /// The dated nightly of `boot/rust-toolchain.toml`, which builds the
    /// kernel and the bootloader.
    BareMetal,
}

/// The cargo workspace a check runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// The main workspace.
    Root,
    /// `boot/`, the image builder.
    Boot,
    /// `fuzz/`, the fuzz targets.
    Fuzz,
}

impl Dir {
    fn path(self) -> PathBuf {
        match self {
            Dir::Root => workspace_root(),
            Dir::Boot => build::boot_dir(),
            Dir::Fuzz => workspace_root().join("fuzz"),
        }
    }

    /// The folder as the messages show it.
    fn shown(self) -> &'static str {
        match self {
            Dir::Root => ".",
            Dir::Boot => "boot",
            Dir::Fuzz => "fuzz",
        }
    }
}

/// One cargo command that must succeed.
struct Check {
    toolchain: Toolchain,
    dir: Dir,
    args: &'static [&'static str],
}

const FMT: &[&str] = &["fmt", "--all", "--", "--check"];

/// Every check, in order: formatting first (no compiling), then clippy.
const CHECKS: &[Check] = &[
    Check {
        toolchain: Toolchain::Workspace,
        dir: Dir::Root,
        args: FMT,
    },
    Check {
        toolchain: Toolchain::BareMetal,
        dir: Dir::Boot,
        args: FMT,
    },
    Check {
        toolchain: Toolchain::Workspace,
        dir: Dir::Fuzz,
        args: FMT,
    },
    // The host crates, as `cargo test` builds them.
    Check {
        toolchain: Toolchain::Workspace,
        dir: Dir::Root,
        args: &[
            "clippy",
            "--workspace",
            "--exclude",
            "kernel",
            "--exclude",
            "tests",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    // The boot tests (compiling them needs no image).
    Check {
        toolchain: Toolchain::Workspace,
        dir: Dir::Root,
        args: &[
            "clippy",
            "--package",
            "tests",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    // The kernel library and its unit tests, on the host.
    Check {
        toolchain: Toolchain::Workspace,
        dir: Dir::Root,
        args: &[
            "clippy",
            "--package",
            "kernel",
            "--lib",
            "--tests",
            "--",
            "-D",
            "warnings",
        ],
    },
    // The kernel as `build::kernel` compiles it: bare-metal toolchain,
    // release profile, its real target.
    Check {
        toolchain: Toolchain::BareMetal,
        dir: Dir::Root,
        args: &[
            "clippy",
            "--package",
            "kernel",
            "--release",
            "--target",
            KERNEL_TARGET,
            "--lib",
            "--bins",
            "--",
            "-D",
            "warnings",
        ],
    },
];

impl Check {
    fn command(&self) -> Result<Command, String> {
        let mut cmd = match self.toolchain {
            Toolchain::Workspace => {
                let mut cmd =
                    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                cmd.current_dir(self.dir.path());
                cmd
            }
            Toolchain::BareMetal => {
                let mut cmd =
                    build::bare_metal_cargo(self.dir.path()).map_err(|e| e.to_string())?;
                // The kernel's build-time settings: checked as the normal
                // build (log level `info`, no self-test) whatever this
                // shell has set.
                cmd.env_remove("FERROVISOR_LOG")
                    .env_remove("FERROVISOR_SELFTEST");
                cmd
            }
        };
        cmd.args(self.args);
        Ok(cmd)
    }

    /// The command as the user would type it in `dir`.
    fn shown(&self) -> Result<String, String> {
        let toolchain = match self.toolchain {
            Toolchain::Workspace => String::new(),
            Toolchain::BareMetal => {
                format!(
                    "+{} ",
                    build::bare_metal_channel().map_err(|e| e.to_string())?
                )
            }
        };
        Ok(format!(
            "(in {}) cargo {toolchain}{}",
            self.dir.shown(),
            self.args.join(" ")
        ))
    }

    fn run(&self) -> Result<(), String> {
        let shown = self.shown()?;
        println!("xtask: {shown}");
        let status = self
            .command()?
            .status()
            .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            let fix = if self.args[0] == "fmt" {
                " (`cargo fmt --all` in that folder formats it)"
            } else {
                ""
            };
            Err(format!("`{shown}` failed ({status}){fix}"))
        }
    }
}

/// Runs every check, stopping at the first that fails. The toolchains and
/// their clippy and rustfmt components must be installed
/// (`setup::ensure_toolchain`).
pub fn run() -> Result<(), String> {
    CHECKS.iter().try_for_each(Check::run)
}

/// Runs `cargo xtask lint`.
pub fn main(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "`cargo xtask lint` takes no options (got {extra:?})"
        ));
    }
    xtask::setup::ensure_toolchain().map_err(|e| e.to_string())?;
    run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_fails_on_a_finding() {
        for check in CHECKS {
            match check.args[0] {
                "fmt" => assert!(check.args.ends_with(&["--", "--check"])),
                "clippy" => assert!(check.args.ends_with(&["--", "-D", "warnings"])),
                other => panic!("unexpected check {other}"),
            }
        }
    }

    #[test]
    fn every_workspace_is_formatted_and_the_kernel_is_linted_for_its_target() {
        for dir in [Dir::Root, Dir::Boot, Dir::Fuzz] {
            assert!(CHECKS.iter().any(|c| c.dir == dir && c.args[0] == "fmt"));
        }
        assert!(CHECKS.iter().any(|c| c.toolchain == Toolchain::BareMetal
            && c.args.contains(&KERNEL_TARGET)
            && c.args.contains(&"--release")));
    }
}
