//! Layering: built-in defaults, then the TOML file, then the environment and the flags
//! (already merged by clap into a [`ConfigArgs`]), later layers winning; then validation.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use super::cli::{ConfigArgs, CONFIG_ENV};
use super::keys::{key, KEYS};
use super::{Config, ConfigError, Report};

impl Config {
    /// Layered load: defaults < TOML `file` (if given) < `overrides` (environment and flags,
    /// already merged by clap). `overrides.config` is not consulted; see [`Config::from_args`].
    /// Validates everything, so an `Ok` config can be served.
    pub fn load(file: Option<&Path>, overrides: &ConfigArgs) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::layered(Some((&text, path)), overrides)
            }
            None => Config::layered(None, overrides),
        }
    }

    /// [`Config::load`] with the file's text already read: `origin` is the path its
    /// messages name. This is all of the loader but the read itself, so what a file says is
    /// judged the same whether it came from disk or not.
    pub fn load_text(
        text: &str,
        origin: &Path,
        overrides: &ConfigArgs,
    ) -> Result<Config, ConfigError> {
        Config::layered(Some((text, origin)), overrides)
    }

    fn layered(file: Option<(&str, &Path)>, overrides: &ConfigArgs) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut report = Report::default();
        if let Some((text, path)) = file {
            config.apply_file(text, path, &mut report)?;
        }
        config.apply_args(overrides, &mut report);
        config.check(&mut report);
        report.finish(config)
    }

    /// [`Config::load`] with the file named by `--config` / `TETHER_CONFIG`.
    pub fn from_args(args: &ConfigArgs) -> Result<Config, ConfigError> {
        Config::load(args.config.as_deref(), args)
    }

    /// Reads the file's keys from its text. A file that cannot be parsed ends the load at
    /// once (nothing in it can be trusted); a bad or unknown key is reported and the rest
    /// read.
    fn apply_file(
        &mut self,
        text: &str,
        path: &Path,
        report: &mut Report,
    ) -> Result<(), ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for (name, value) in &table {
            match key(name) {
                Some(key) => {
                    if let Err(e) = self.set_toml(key, value) {
                        report.push(e);
                    }
                }
                None => report.push(ConfigError::UnknownKey {
                    key: name.clone(),
                    path: path.to_path_buf(),
                    suggestion: suggest(name),
                }),
            }
        }
        Ok(())
    }

    fn apply_args(&mut self, args: &ConfigArgs, report: &mut Report) {
        for (key, text) in args.given() {
            if let Err(e) = self.set_os(key, text) {
                report.push(e);
            }
        }
    }
}

/// Closest known key, for "did you mean" (edit distance <= 3).
pub fn suggest(unknown: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let normal = unknown.replace('-', "_").to_ascii_lowercase();
    KEYS.iter()
        .map(|k| (distance(&normal, k.name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// `TETHER_*` variables that are not configuration keys but are set on purpose, so they
/// are not reported as unknown.
const NOT_KEYS: &[&str] = &[
    CONFIG_ENV,
    // Set by the load generator (benches/load.rs) on itself; the server it starts inherits it.
    "TETHER_LOAD_NOFILE_RAISED",
];

/// A `TETHER_*` environment variable that no key reads: most likely a typo, which would
/// otherwise be silently ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVar {
    pub name: String,
    /// The variable of the closest key.
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown environment variable {} is ignored", self.name)?;
        match &self.suggestion {
            Some(s) => write!(f, " (did you mean {s}?)"),
            None => Ok(()),
        }
    }
}

/// The process environment's unknown `TETHER_*` variables, sorted by name.
pub fn unknown_env_vars() -> Vec<UnknownVar> {
    unknown_vars(std::env::vars_os().map(|(name, _)| name))
}

fn unknown_vars(names: impl Iterator<Item = OsString>) -> Vec<UnknownVar> {
    let mut unknown: Vec<UnknownVar> = names
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("TETHER_"))
        .filter(|n| !NOT_KEYS.contains(&n.as_str()) && !KEYS.iter().any(|k| k.env_var() == *n))
        .map(|name| {
            let suggestion = suggest(&name["TETHER_".len()..])
                .and_then(key)
                .map(|k| k.env_var());
            UnknownVar { name, suggestion }
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tether_variables_are_found_with_a_suggestion() {
        let names = [
            "PATH",
            "TETHER_MAX_PER_USERS",
            "TETHER_MAX_PER_USER",
            "TETHER_CONFIG",
            "TETHER_LOAD_NOFILE_RAISED",
            "TETHER_ZZZ",
            "tether_listen",
        ];
        let found = unknown_vars(names.iter().map(OsString::from));
        assert_eq!(
            found,
            [
                UnknownVar {
                    name: "TETHER_MAX_PER_USERS".into(),
                    suggestion: Some("TETHER_MAX_PER_USER".into()),
                },
                UnknownVar {
                    name: "TETHER_ZZZ".into(),
                    suggestion: None,
                },
            ]
        );
        assert_eq!(
            found[0].to_string(),
            "unknown environment variable TETHER_MAX_PER_USERS is ignored \
             (did you mean TETHER_MAX_PER_USER?)"
        );
    }
}
