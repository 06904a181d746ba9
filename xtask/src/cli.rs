//! The small option parser the subcommands share: `--name value` pairs,
//! checked against the names each subcommand accepts.

use std::collections::BTreeMap;

/// Parsed `--name value` options.
pub struct Options {
    values: BTreeMap<String, String>,
}

impl Options {
    /// Parses `args`, accepting only the option names in `allowed`.
    pub fn parse(args: &[String], allowed: &[&str]) -> Result<Options, String> {
        let mut values = BTreeMap::new();
        let mut it = args.iter();
        while let Some(name) = it.next() {
            if !allowed.contains(&name.as_str()) {
                return Err(format!(
                    "unknown option {name:?}; this command takes: {}",
                    allowed.join(" ")
                ));
            }
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            values.insert(name.clone(), value.clone());
        }
        Ok(Options { values })
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A numeric option, or `default` when absent.
    pub fn number(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name} takes a number, not {v:?}")),
        }
    }

    /// The kernel log level (`--log`, default `info`), checked.
    pub fn log_level(&self) -> Result<String, String> {
        match self.get("--log") {
            None => Ok("info".into()),
            Some(level @ ("off" | "error" | "warn" | "info" | "debug" | "trace")) => {
                Ok(level.into())
            }
            Some(other) => Err(format!(
                "--log takes off, error, warn, info, debug or trace, not {other:?}"
            )),
        }
    }
}
