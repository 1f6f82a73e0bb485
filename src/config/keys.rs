//! The one table of configuration keys.
//!
//! Each row is a field of [`Config`]: its doc comment (the `--help` text), name, type,
//! default, `--help` section and value placeholder, then in braces whatever the row changes
//! in its [`Key`] (bounds, a documented default, secrecy). Everything else is generated
//! from the table: the struct, its `Default` and `Debug`, the flag and the environment
//! variable of each key (`cli.rs`), reading a key from the file or from text (`load.rs`),
//! and the range checks (`validate.rs`). Adding a key is one row here, plus its own rule in
//! `validate.rs` if bounds and the type's parser are not enough, plus its row in the
//! README's table (a test below holds the two to the same default and bounds). A number,
//! for example:
//!
//! ```text
//! /// Milliseconds a client has to send its request headers
//! http_header_timeout_ms: u64 = 10_000 => Server "MS" { max: MAX_MILLIS }
//! ```
//!
//! Rows are in the order of the README's table; `--help` groups them by section.

use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::values::{ApiKeyConfig, Durability, JwtAlgorithm, Key, LogFormat, Setting, Show};
use super::{ConfigError, MAX_MILLIS, MAX_SECONDS};
use crate::auth::MAX_LEEWAY_SECONDS;

macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr => $heading:ident $value:literal
            { $($opt:ident: $val:expr),* $(,)? }
    )*) => {
        /// The server's whole configuration, validated. `Debug` hides the secrets, so the
        /// config can be logged.
        #[derive(Clone)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        /// Every configuration key, in the order of the documentation.
        pub const KEYS: &[Key] = &[$(
            Key {
                name: stringify!($name),
                help: concat!($($doc, "\n"),+),
                heading: stringify!($heading),
                value_name: $value,
                $($opt: $val,)*
                ..Key::base::<$ty>()
            },
        )*];

        impl fmt::Debug for Config {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct("Config");
                let mut keys = KEYS.iter();
                $(
                    let key = keys.next().expect("one key per field");
                    d.field(key.name, &Shown(&self.$name, key));
                )*
                d.finish()
            }
        }

        impl Config {
            /// Sets `key` from the environment or a flag.
            pub(super) fn set_os(&mut self, key: &Key, text: &OsStr) -> Result<(), ConfigError> {
                match key.name {
                    $( stringify!($name) => self.$name = Setting::parse_os(key, text)?, )*
                    other => unreachable!("{other} is not in the table"),
                }
                Ok(())
            }

            /// Sets `key` from the TOML file.
            pub(super) fn set_toml(
                &mut self,
                key: &Key,
                value: &toml::Value,
            ) -> Result<(), ConfigError> {
                match key.name {
                    $( stringify!($name) => self.$name = Setting::from_toml(key, value)?, )*
                    other => unreachable!("{other} is not in the table"),
                }
                Ok(())
            }

            /// Every numeric key with its value (`None` when unset), for the range checks.
            pub(super) fn numbers(&self) -> Vec<(&'static Key, u64)> {
                let mut keys = KEYS.iter();
                let mut numbers = Vec::new();
                $(
                    let key = keys.next().expect("one key per field");
                    if let Some(n) = Setting::number(&self.$name) {
                        numbers.push((key, n));
                    }
                )*
                numbers
            }

            /// The default of `key` as the documentation writes it.
            pub fn documented_default(key: &Key) -> String {
                if !key.shown.is_empty() {
                    return key.shown.to_string();
                }
                let default = Config::default();
                match key.name {
                    $( stringify!($name) => Setting::show(&default.$name), )*
                    other => unreachable!("{other} is not in the table"),
                }
            }
        }
    };
}

/// A field's `Debug` as its key allows.
struct Shown<'a, T>(&'a T, &'a Key);

impl<T: Setting> fmt::Debug for Shown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.debug(self.1, f)
    }
}

config_keys! {
    /// Address and port to listen on
    listen: SocketAddr = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)) => Server "ADDR" {}
    /// Directory of the store and secrets.toml; one server per directory
    data_dir: PathBuf = PathBuf::from("./data") => Server "DIR" {}
    /// HMAC secret for HS* tokens, at least 32 bytes, generated into <data-dir>/secrets.toml
    /// when unset; prefer the environment to a flag
    jwt_secret: Option<String> = None => Authentication "SECRET" {
        show: Show::Hidden, shown: "generated",
    }
    /// JWT algorithm: HS256, HS384, HS512, RS256, ES256 or EdDSA
    jwt_algorithm: JwtAlgorithm = JwtAlgorithm::HS256 => Authentication "ALG" {}
    /// PEM public key file, required for RS256, ES256 and EdDSA
    jwt_public_key_file: Option<PathBuf> = None => Authentication "FILE" {}
    /// Required `iss` claim; not checked when unset
    jwt_issuer: Option<String> = None => Authentication "ISS" {}
    /// Required `aud` claim; not checked when unset
    jwt_audience: Option<String> = None => Authentication "AUD" {}
    /// Clock skew allowed when checking exp and nbf, in seconds
    jwt_leeway_seconds: u64 = 30 => Authentication "N" { min: 0, max: MAX_LEEWAY_SECONDS }
    /// API key with admin permission ("tk_..."), generated into <data-dir>/secrets.toml when
    /// unset; prefer the environment to a flag
    admin_api_key: Option<String> = None => Authentication "KEY" {
        show: Show::Hidden, shown: "generated",
    }
    /// More API keys, as a TOML inline array:
    /// '[{key = "tk_...", name = "app", permissions = ["read"]}]'; replaces the file's list
    api_keys: Vec<ApiKeyConfig> = Vec::new() => Authentication "TOML" { show: Show::Hidden }
    /// Most connections per user; a new one evicts the oldest (4505)
    max_per_user: usize = 10 => Connections "N" {}
    /// Most live connections in total
    max_total: usize = 100_000 => Connections "N" {}
    /// Lifetime of a connection record, in seconds
    ttl_seconds: u64 = 3600 => Connections "N" { max: MAX_SECONDS }
    /// Messages a connection may send per minute
    messages_per_minute: u32 = 120 => Connections "N" {}
    /// Largest message a client may send, in bytes
    max_message_bytes: usize = 65_536 => Connections "N" { min: 256 }
    /// Milliseconds a connection without credentials has to send its auth frame
    auth_timeout_ms: u64 = 10_000 => Authentication "MS" { max: MAX_MILLIS }
    /// Interval between server pings, in milliseconds
    heartbeat_interval_ms: u64 = 25_000 => Connections "MS" { min: 10, max: MAX_MILLIS }
    /// Seconds a detached connection can still be resumed
    resume_grace_seconds: u64 = 120 => Connections "N" { min: 0, max: MAX_SECONDS }
    /// Messages kept per connection for replay on resume
    replay_buffer_messages: usize = 256 => Connections "N" {}
    /// Bytes of frames kept per connection for replay, oldest dropped first
    replay_buffer_bytes: usize = 1_048_576 => Connections "N" { min: 1024 }
    /// Bytes queued per connection before it is closed as a slow consumer
    outbound_queue_bytes: usize = 1_048_576 => Connections "N" { min: 1024 }
    /// Largest HTTP API request body, in bytes
    max_body_bytes: u64 = 1_048_576 => Server "N" {}
    /// Default session lifetime, in seconds
    session_ttl_seconds: u64 = 86_400 => Sessions "N" { max: MAX_SECONDS }
    /// Name of the session cookie
    session_cookie: String = "tether_sid".to_string() => Sessions "NAME" {}
    /// Largest session data, as JSON, after a merge (413 / session_too_large)
    session_max_bytes: usize = 65_536 => Sessions "N" { min: 2 }
    /// Live sessions one user may have (409 / too_many_sessions)
    max_sessions_per_user: usize = 100 => Sessions "N" {}
    /// Events kept in the event log
    event_log_max: usize = 100_000 => Storage "N" {}
    /// sync, batched or relaxed: when a write is flushed relative to its acknowledgement
    durability: Durability = Durability::Batched => Storage "MODE" {}
    /// Milliseconds of the group-commit window (batched) or between background flushes
    /// (relaxed); unused with sync
    flush_interval_ms: Option<u64> = None => Storage "MS" {
        max: MAX_MILLIS, shown: "5 for batched, 500 for relaxed",
    }
    /// sled's page cache, in bytes
    cache_capacity_bytes: u64 = 67_108_864 => Storage "N" { min: 0 }
    /// Refuse writes while less than this many bytes are free on the data directory's disk;
    /// 0 never refuses
    disk_reserve_bytes: Option<u64> = None => Storage "N" { min: 0, shown: "67108864, or an eighth of the disk if less" }
    /// Longest wait for a store flush, in milliseconds; slower ones fail their writes
    flush_timeout_ms: u64 = 5_000 => Storage "MS" { max: MAX_MILLIS }
    /// Take the client address from the first X-Forwarded-For hop (behind a proxy only)
    trust_proxy: bool = false => Server "BOOL" {}
    /// pretty or json
    log_format: LogFormat = LogFormat::Pretty => Logging "FORMAT" {}
    /// Log filter when RUST_LOG is unset, e.g. "debug" or "info,tether=trace"
    log_level: Option<String> = None => Logging "FILTER" { shown: "info" }
    /// Require an API key with read or admin permission for /metrics
    metrics_require_key: bool = false => Server "BOOL" {}
    /// Milliseconds from accept (or a kept-alive connection's next request's first byte) to
    /// the request's complete headers
    http_header_timeout_ms: u64 = 10_000 => Server "MS" { max: MAX_MILLIS }
    /// Milliseconds a kept-alive connection may stay silent between requests
    http_idle_timeout_ms: u64 = 30_000 => Server "MS" { max: MAX_MILLIS }
    /// Milliseconds from a request's headers to the end of its body (408 past it)
    http_body_timeout_ms: u64 = 30_000 => Server "MS" { max: MAX_MILLIS }
    /// Connections without a completed request, upgrade or first-frame auth; one more
    /// closes the oldest
    max_pending_connections: usize = 8192 => Server "N" {}
    /// Redis for cluster mode: redis://, rediss:// or unix://. Cluster mode generates no
    /// secrets: jwt_secret (or jwt_public_key_file) and admin_api_key must be configured
    redis_url: Option<String> = None => Cluster "URL" { show: Show::Url }
    /// Prefix of the Redis keys and bus channels; no whitespace, '{' or '}'
    redis_prefix: String = "tether".to_string() => Cluster "PREFIX" {}
    /// This node's id in the cluster: letters, digits, '.', '_' and '-'
    node_id: Option<String> = None => Cluster "ID" { shown: "host name plus a random suffix" }
    /// Interval between renewals of the node's lease in Redis, in milliseconds
    node_heartbeat_ms: u64 = 1000 => Cluster "MS" { min: 50, max: MAX_MILLIS }
    /// Milliseconds after which a node that has not renewed its lease is dead; more than
    /// twice node_heartbeat_ms
    node_lease_ms: u64 = 5000 => Cluster "MS" { max: MAX_MILLIS }
}

/// Looks a key up by its snake_case name.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The table against what a reader sees: the README's rows and `--help`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::TestCli;
    use clap::CommandFactory;

    /// The README's configuration table, as (keys of the row, default, meaning).
    fn readme_rows() -> Vec<(Vec<String>, String, String)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Command line and configuration"))
            .expect("README has a configuration section");
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                assert_eq!(cells.len(), 3, "{l}");
                let keys = cells[0]
                    .split(", ")
                    .map(|k| k.trim_matches('`').to_string())
                    .collect();
                (keys, cells[1].replace('`', ""), cells[2].to_string())
            })
            .collect()
    }

    #[test]
    fn readme_rows_agree_with_the_table() {
        let rows = readme_rows();
        for key in KEYS {
            let matching: Vec<_> = rows
                .iter()
                .filter(|(keys, _, _)| keys.iter().any(|k| k == key.name))
                .collect();
            assert_eq!(matching.len(), 1, "README rows for {}", key.name);
            let (_, default, meaning) = matching[0];
            assert_eq!(
                *default,
                Config::documented_default(key),
                "README default of {}",
                key.name
            );
            if let Some(note) = key.range_note() {
                assert!(
                    meaning.contains(&note),
                    "README row of {} does not say {note:?}: {meaning}",
                    key.name
                );
            }
        }
        for (keys, _, _) in &rows {
            for k in keys {
                assert!(
                    KEYS.iter().any(|key| key.name == k),
                    "README lists {k}, which is not a key"
                );
            }
        }
    }

    #[test]
    fn help_shows_each_documented_default_and_bound() {
        let cmd = TestCli::command();
        for key in KEYS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == key.name)
                .unwrap();
            let help = arg.get_help().unwrap().to_string();
            let default = format!("[default: {}]", Config::documented_default(key));
            assert!(help.ends_with(&default), "--{}: {help}", key.flag_name());
            if let Some(note) = key.range_note() {
                assert!(help.contains(&note), "--{}: {help}", key.flag_name());
            }
        }
    }
}
