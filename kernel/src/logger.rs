//! The `log` backend: `[cpuN] LEVEL target: message` lines on the serial
//! console.
//!
//! The level comes from `FERROVISOR_LOG` (error, warn, info, debug, trace)
//! when the kernel is built, which `cargo xtask run --log LEVEL` sets, so it
//! changes without editing code; once guests come from the config partition
//! its `hypervisor.toml` will set it at run time instead.

use log::{LevelFilter, Log, Metadata, Record};

use crate::{cpu, serial, serial_console};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let (cpu, level, target) = (cpu::current_index(), record.level(), record.target());
            // While guests run, the console queues it; else straight out.
            if !serial_console::log_line(format_args!(
                "[cpu{cpu}] {level:<5} {target}: {}\n",
                record.args()
            )) {
                serial::write_fmt(format_args!(
                    "[cpu{cpu}] {level:<5} {target}: {}\n",
                    record.args()
                ));
            }
        }
    }

    fn flush(&self) {}
}

/// The level chosen at build time; `info` when unset or unknown.
fn build_time_level() -> LevelFilter {
    match option_env!("FERROVISOR_LOG") {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    }
}

/// Installs the logger. Called once, right after the serial port is up.
pub fn init() {
    // Only fails if a logger is already set, which `init` running once rules out.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(build_time_level());
}

/// Applies `hypervisor.toml`'s `log_level`: the log becomes the more
/// verbose of it and the level the kernel was built with (`--log`), so a
/// debug build stays verbose and a config can turn detail on without a
/// rebuild.
pub fn apply_config(level: config::LogLevel) {
    use config::LogLevel;
    let wanted = match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    };
    log::set_max_level(wanted.max(build_time_level()));
}

/// Sets the log level from the monitor's `loglevel`.
pub fn set_level(level: console::LogLevel) {
    use console::LogLevel;
    log::set_max_level(match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    });
}
