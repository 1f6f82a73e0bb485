//! Configuration: built-in defaults, then a TOML file, then `TETHER_<KEY>` environment
//! variables, then `--<key>` flags, later layers winning; validated in one place.
//!
//! - `keys.rs`: the one table of keys. Each row is a field of [`Config`] with its help
//!   text, type, default and bounds; the struct, the flags, the environment variables and
//!   the range checks are generated from it.
//! - `values.rs`: the value types ([`JwtAlgorithm`], [`Durability`], ...) and how each is
//!   read from text, the same way whichever layer the text came from.
//! - `load.rs`: the layers. `validate.rs`: the rules beyond each key's type; `cluster.rs`
//!   those of cluster mode's keys (`redis_url` and the node's).
//! - `cli.rs`: [`ConfigArgs`], the flags and variables as clap sees them, and the
//!   arguments of the other subcommands.
//!
//! An empty environment variable or flag (`TETHER_JWT_ISSUER=`) counts as unset, so a
//! deployment can blank a variable without deleting it. Relative paths (`data_dir`,
//! `jwt_public_key_file`) are relative to the working directory, not to the config file.
//!
//! Two fields are filled after loading, when the server starts: `jwt_secret` (HS*
//! algorithms) and `admin_api_key` come from `<data_dir>/secrets.toml` when the
//! configuration leaves them unset (see `secrets::apply`).

use std::path::PathBuf;
use std::time::Duration;

mod cli;
mod cluster;
mod keys;
mod load;
mod validate;
mod values;

pub use cli::{BackupArgs, ConfigArgs, InspectArgs, RestoreArgs};
pub use keys::{Config, KEYS};
pub use load::{suggest, unknown_env_vars, UnknownVar};
pub use validate::log_filter;
pub use values::{ApiKeyConfig, Durability, JwtAlgorithm, Key, LogFormat, Show};

/// The permissions an API key may carry (`admin` allows everything, `sessions` the
/// session routes, `read` the GET routes) and what a key looks like: the rules are auth's.
pub use crate::auth::{API_KEY_MIN_LEN, API_KEY_PREFIX, PERMISSIONS};

/// Upper bound for durations in seconds (ten years). Larger values would overflow
/// `Instant + Duration` arithmetic elsewhere; nobody needs them.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;
const MAX_MILLIS: u64 = MAX_SECONDS * 1000;

impl Config {
    /// Effective flush window: `flush_interval_ms`, or 5 ms (batched, sync) / 500 ms (relaxed).
    pub fn flush_interval(&self) -> Duration {
        let default = match self.durability {
            Durability::Relaxed => 500,
            Durability::Sync | Durability::Batched => 5,
        };
        Duration::from_millis(self.flush_interval_ms.unwrap_or(default))
    }

    /// Longest wait for a store flush (`flush_timeout_ms`).
    pub fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.flush_timeout_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("unknown key {key:?} in config file {}{}", path.display(),
            suggestion.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        path: PathBuf,
        suggestion: Option<&'static str>,
    },
    /// `value` is already quoted (or hidden, for secrets).
    #[error("invalid value for {key}: {value} ({expected})")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    #[error("missing value for {key} ({reason})")]
    Missing { key: &'static str, reason: String },
    /// More than one of the above, in the order found: the file, then the environment
    /// and flags, then the rules. Never nested, never fewer than two.
    #[error("{} configuration errors:{}", .0.len(),
            .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Missing { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::Several(_) => None,
        }
    }

    /// Each error on its own: the list of [`ConfigError::Several`], or this one.
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            ConfigError::Several(all) => all,
            one => std::slice::from_ref(one),
        }
    }
}

/// The errors found so far, and the keys they are about.
#[derive(Default)]
struct Report {
    errors: Vec<ConfigError>,
    failed: std::collections::HashSet<String>,
}

impl Report {
    fn push(&mut self, e: ConfigError) {
        if let Some(key) = e.key() {
            // `api_keys[1].name` is about `api_keys`.
            let base = key.split(['[', '.']).next().unwrap_or(key);
            self.failed.insert(base.to_string());
        }
        self.errors.push(e);
    }

    /// Whether an error about `key` was reported.
    fn failed(&self, key: &str) -> bool {
        self.failed.contains(key)
    }

    fn failed_any(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.failed(k))
    }

    /// `value` if nothing was reported; else the one error, or all of them.
    fn finish<T>(mut self, value: T) -> Result<T, ConfigError> {
        match self.errors.len() {
            0 => Ok(value),
            1 => Err(self.errors.remove(0)),
            _ => Err(ConfigError::Several(self.errors)),
        }
    }
}

#[cfg(test)]
mod tests;

impl Config {
    /// What the authenticator is built from.
    pub fn auth_settings(&self) -> crate::auth::Settings {
        crate::auth::Settings {
            secret: self.jwt_secret.clone(),
            algorithm: self.jwt_algorithm,
            public_key_file: self.jwt_public_key_file.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_seconds: self.jwt_leeway_seconds,
            admin_api_key: self.admin_api_key.clone(),
            api_keys: self
                .api_keys
                .iter()
                .map(|k| (k.key.clone(), k.name.clone(), k.permissions.clone()))
                .collect(),
        }
    }
}
