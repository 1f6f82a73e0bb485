//! Configuration: built-in defaults, then a TOML file, then `TETHER_<KEY>` environment
//! variables, then `--<key>` flags, later layers winning; validated in one place.
//!
//! clap resolves the last two layers itself (each flag carries its `env = "TETHER_..."`),
//! so [`ConfigArgs`] holds "what the environment and the command line said" and
//! [`Config::load`] lays it over the file. The flags are strings rather than typed values on
//! purpose: a value from the file, the environment or a flag is then parsed by the same code
//! and a bad one gets the same message, naming the key and the value, whichever layer it
//! came from.
//!
//! An empty environment variable or flag (`TETHER_JWT_ISSUER=`) counts as unset, so a
//! deployment can blank a variable without deleting it. Relative paths (`data_dir`,
//! `jwt_public_key_file`) are relative to the working directory, not to the config file.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Every configuration key, in the order of the documentation.
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "jwt_secret",
    "jwt_algorithm",
    "jwt_public_key_file",
    "jwt_issuer",
    "jwt_audience",
    "jwt_leeway_seconds",
    "admin_api_key",
    "api_keys",
    "max_per_user",
    "max_total",
    "ttl_seconds",
    "messages_per_minute",
    "max_message_bytes",
    "auth_timeout_ms",
    "heartbeat_interval_ms",
    "resume_grace_seconds",
    "replay_buffer_messages",
    "replay_buffer_bytes",
    "outbound_queue_bytes",
    "max_body_bytes",
    "session_ttl_seconds",
    "session_cookie",
    "session_max_bytes",
    "max_sessions_per_user",
    "event_log_max",
    "durability",
    "flush_interval_ms",
    "cache_capacity_bytes",
    "trust_proxy",
    "log_format",
    "log_level",
    "metrics_require_key",
];

/// The permissions an API key may carry: `admin` allows everything, `sessions` the session
/// routes, `read` the GET routes.
pub const PERMISSIONS: &[&str] = &["admin", "sessions", "read"];

/// Prefix of every API key; a credential with this prefix is treated as an API key.
pub const API_KEY_PREFIX: &str = "tk_";

/// Shortest API key accepted, prefix included.
pub const API_KEY_MIN_LEN: usize = 20;

/// Upper bound for durations in seconds (ten years). Larger values would overflow
/// `Instant + Duration` arithmetic elsewhere; nobody needs them.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;
const MAX_MILLIS: u64 = MAX_SECONDS * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 6] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// True for the shared-secret (HMAC) algorithms; the others verify with a public key.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

impl FromStr for JwtAlgorithm {
    type Err = ();
    /// Case-insensitive: `hs256` is `HS256`.
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a write is on disk relative to its acknowledgement (see the store's flusher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed before it is acknowledged.
    Sync,
    /// Flushed before it is acknowledged, one flush shared by all writers in a short window.
    Batched,
    /// Flushed in the background; up to `flush_interval_ms` may be lost on power loss.
    Relaxed,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Batched => "batched",
            Durability::Relaxed => "relaxed",
        }
    }
}

impl FromStr for Durability {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [Durability::Sync, Durability::Batched, Durability::Relaxed]
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [LogFormat::Pretty, LogFormat::Json]
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured API key. `key` is the secret itself, so `Debug` hides it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub key: String,
    pub name: String,
    pub permissions: Vec<String>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("key", &Hidden(&self.key))
            .field("name", &self.name)
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// The server's whole configuration, validated. `Debug` hides the secrets, so the config can
/// be logged.
#[derive(Clone)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds.
    pub listen: SocketAddr,
    /// Directory of the sled store, the lock file and `secrets.toml`.
    pub data_dir: PathBuf,
    /// HMAC secret for HS* tokens; `None` until secrets are resolved (see `secrets::apply`).
    pub jwt_secret: Option<String>,
    pub jwt_algorithm: JwtAlgorithm,
    /// PEM public key, required for RS256/ES256/EdDSA.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub jwt_leeway_seconds: u64,
    /// Key with permission `admin`; `None` until secrets are resolved.
    pub admin_api_key: Option<String>,
    pub api_keys: Vec<ApiKeyConfig>,
    pub max_per_user: usize,
    pub max_total: usize,
    /// Lifetime of a connection record.
    pub ttl_seconds: u64,
    pub messages_per_minute: u32,
    pub max_message_bytes: usize,
    pub auth_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub resume_grace_seconds: u64,
    /// Per connection.
    pub replay_buffer_messages: usize,
    /// Per connection: the size of the frames its replay buffer keeps.
    pub replay_buffer_bytes: usize,
    /// Per connection.
    pub outbound_queue_bytes: usize,
    /// Largest HTTP API request body.
    pub max_body_bytes: u64,
    pub session_ttl_seconds: u64,
    pub session_cookie: String,
    /// Largest session `data`, as JSON, after a merge.
    pub session_max_bytes: usize,
    /// Live sessions one user may have.
    pub max_sessions_per_user: usize,
    pub event_log_max: usize,
    pub durability: Durability,
    /// `None`: the mode's default, see [`Config::flush_interval`].
    pub flush_interval_ms: Option<u64>,
    /// sled's page cache.
    pub cache_capacity_bytes: u64,
    /// Take the client address from the first `X-Forwarded-For` hop.
    pub trust_proxy: bool,
    pub log_format: LogFormat,
    /// Used when `RUST_LOG` is unset; `None` means `info`.
    pub log_level: Option<String>,
    /// When true, `/metrics` needs an API key with `read` or `admin`.
    pub metrics_require_key: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            data_dir: PathBuf::from("./data"),
            jwt_secret: None,
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_seconds: 30,
            admin_api_key: None,
            api_keys: Vec::new(),
            max_per_user: 10,
            max_total: 100_000,
            ttl_seconds: 3600,
            messages_per_minute: 120,
            max_message_bytes: 65_536,
            auth_timeout_ms: 10_000,
            heartbeat_interval_ms: 25_000,
            resume_grace_seconds: 120,
            replay_buffer_messages: 256,
            replay_buffer_bytes: 1_048_576,
            outbound_queue_bytes: 1_048_576,
            max_body_bytes: 1_048_576,
            session_ttl_seconds: 86_400,
            session_cookie: "tether_sid".to_string(),
            session_max_bytes: 65_536,
            max_sessions_per_user: 100,
            event_log_max: 100_000,
            durability: Durability::Batched,
            flush_interval_ms: None,
            cache_capacity_bytes: 67_108_864,
            trust_proxy: false,
            log_format: LogFormat::Pretty,
            log_level: None,
            metrics_require_key: false,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("jwt_secret", &self.jwt_secret.as_deref().map(Hidden))
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway_seconds", &self.jwt_leeway_seconds)
            .field("admin_api_key", &self.admin_api_key.as_deref().map(Hidden))
            .field("api_keys", &self.api_keys)
            .field("max_per_user", &self.max_per_user)
            .field("max_total", &self.max_total)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("messages_per_minute", &self.messages_per_minute)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("auth_timeout_ms", &self.auth_timeout_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("resume_grace_seconds", &self.resume_grace_seconds)
            .field("replay_buffer_messages", &self.replay_buffer_messages)
            .field("replay_buffer_bytes", &self.replay_buffer_bytes)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("session_ttl_seconds", &self.session_ttl_seconds)
            .field("session_cookie", &self.session_cookie)
            .field("session_max_bytes", &self.session_max_bytes)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .field("event_log_max", &self.event_log_max)
            .field("durability", &self.durability)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("cache_capacity_bytes", &self.cache_capacity_bytes)
            .field("trust_proxy", &self.trust_proxy)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("metrics_require_key", &self.metrics_require_key)
            .finish()
    }
}

/// Debug-formats as `<hidden>` so secrets never reach a log line.
struct Hidden<'a>(&'a str);

impl fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<hidden, {} chars>", self.0.chars().count())
    }
}

/// Configuration from the environment and the command line, one optional flag per key.
/// `None` means "not given": the file's value (or the default) stays.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file; keys as in the flags below, in snake_case
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address and port to listen on [default: 127.0.0.1:8080]
    #[arg(
        long,
        env = "TETHER_LISTEN",
        value_name = "ADDR",
        help_heading = "Server"
    )]
    pub listen: Option<String>,
    /// Directory of the store and secrets.toml; one server per directory [default: ./data]
    #[arg(
        long,
        env = "TETHER_DATA_DIR",
        value_name = "DIR",
        help_heading = "Server"
    )]
    pub data_dir: Option<PathBuf>,
    /// Take the client address from the first X-Forwarded-For hop (behind a proxy only) [default: false]
    #[arg(long, env = "TETHER_TRUST_PROXY", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", help_heading = "Server")]
    pub trust_proxy: Option<String>,
    /// Largest HTTP API request body, in bytes [default: 1048576]
    #[arg(
        long,
        env = "TETHER_MAX_BODY_BYTES",
        value_name = "N",
        help_heading = "Server"
    )]
    pub max_body_bytes: Option<String>,
    /// Require an API key with read or admin permission for /metrics [default: false]
    #[arg(long, env = "TETHER_METRICS_REQUIRE_KEY", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", help_heading = "Server")]
    pub metrics_require_key: Option<String>,

    /// HMAC secret for HS* tokens; prefer the environment to a flag [default: generated into <data-dir>/secrets.toml]
    #[arg(
        long,
        env = "TETHER_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "Authentication"
    )]
    pub jwt_secret: Option<String>,
    /// JWT algorithm: HS256, HS384, HS512, RS256, ES256 or EdDSA [default: HS256]
    #[arg(
        long,
        env = "TETHER_JWT_ALGORITHM",
        value_name = "ALG",
        help_heading = "Authentication"
    )]
    pub jwt_algorithm: Option<String>,
    /// PEM public key file, required for RS256, ES256 and EdDSA [default: none]
    #[arg(
        long,
        env = "TETHER_JWT_PUBLIC_KEY_FILE",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim [default: none, not checked]
    #[arg(
        long,
        env = "TETHER_JWT_ISSUER",
        value_name = "ISS",
        help_heading = "Authentication"
    )]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim [default: none, not checked]
    #[arg(
        long,
        env = "TETHER_JWT_AUDIENCE",
        value_name = "AUD",
        help_heading = "Authentication"
    )]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed when checking exp and nbf, in seconds [default: 30]
    #[arg(
        long,
        env = "TETHER_JWT_LEEWAY_SECONDS",
        value_name = "N",
        help_heading = "Authentication"
    )]
    pub jwt_leeway_seconds: Option<String>,
    /// API key with admin permission ("tk_..."); prefer the environment to a flag [default: generated into <data-dir>/secrets.toml]
    #[arg(
        long,
        env = "TETHER_ADMIN_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        help_heading = "Authentication"
    )]
    pub admin_api_key: Option<String>,
    /// More API keys, as a TOML inline array: '[{key = "tk_...", name = "app", permissions = ["read"]}]'; replaces the file's list [default: none]
    #[arg(
        long,
        env = "TETHER_API_KEYS",
        hide_env_values = true,
        value_name = "TOML",
        help_heading = "Authentication"
    )]
    pub api_keys: Option<String>,
    /// Milliseconds a connection without credentials has to send its auth frame [default: 10000]
    #[arg(
        long,
        env = "TETHER_AUTH_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Authentication"
    )]
    pub auth_timeout_ms: Option<String>,

    /// Most connections per user; a new one evicts the oldest (4505) [default: 10]
    #[arg(
        long,
        env = "TETHER_MAX_PER_USER",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub max_per_user: Option<String>,
    /// Most live connections in total [default: 100000]
    #[arg(
        long,
        env = "TETHER_MAX_TOTAL",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub max_total: Option<String>,
    /// Lifetime of a connection record, in seconds [default: 3600]
    #[arg(
        long,
        env = "TETHER_TTL_SECONDS",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub ttl_seconds: Option<String>,
    /// Messages a connection may send per minute [default: 120]
    #[arg(
        long,
        env = "TETHER_MESSAGES_PER_MINUTE",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub messages_per_minute: Option<String>,
    /// Largest message a client may send, in bytes, at least 256 [default: 65536]
    #[arg(
        long,
        env = "TETHER_MAX_MESSAGE_BYTES",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub max_message_bytes: Option<String>,
    /// Interval between server pings, in milliseconds [default: 25000]
    #[arg(
        long,
        env = "TETHER_HEARTBEAT_INTERVAL_MS",
        value_name = "MS",
        help_heading = "Connections"
    )]
    pub heartbeat_interval_ms: Option<String>,
    /// Seconds a detached connection can still be resumed [default: 120]
    #[arg(
        long,
        env = "TETHER_RESUME_GRACE_SECONDS",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub resume_grace_seconds: Option<String>,
    /// Messages kept per connection for replay on resume [default: 256]
    #[arg(
        long,
        env = "TETHER_REPLAY_BUFFER_MESSAGES",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub replay_buffer_messages: Option<String>,
    /// Bytes of frames kept per connection for replay, oldest dropped first, at least 1024 [default: 1048576]
    #[arg(
        long,
        env = "TETHER_REPLAY_BUFFER_BYTES",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub replay_buffer_bytes: Option<String>,
    /// Bytes queued per connection before it is closed as a slow consumer, at least 1024 [default: 1048576]
    #[arg(
        long,
        env = "TETHER_OUTBOUND_QUEUE_BYTES",
        value_name = "N",
        help_heading = "Connections"
    )]
    pub outbound_queue_bytes: Option<String>,

    /// Default session lifetime, in seconds [default: 86400]
    #[arg(
        long,
        env = "TETHER_SESSION_TTL_SECONDS",
        value_name = "N",
        help_heading = "Sessions"
    )]
    pub session_ttl_seconds: Option<String>,
    /// Name of the session cookie [default: tether_sid]
    #[arg(
        long,
        env = "TETHER_SESSION_COOKIE",
        value_name = "NAME",
        help_heading = "Sessions"
    )]
    pub session_cookie: Option<String>,
    /// Largest session data, as JSON, at least 2 (`{}`) [default: 65536]
    #[arg(
        long,
        env = "TETHER_SESSION_MAX_BYTES",
        value_name = "N",
        help_heading = "Sessions"
    )]
    pub session_max_bytes: Option<String>,
    /// Live sessions one user may have [default: 100]
    #[arg(
        long,
        env = "TETHER_MAX_SESSIONS_PER_USER",
        value_name = "N",
        help_heading = "Sessions"
    )]
    pub max_sessions_per_user: Option<String>,

    /// sync, batched or relaxed: when a write is flushed relative to its acknowledgement [default: batched]
    #[arg(
        long,
        env = "TETHER_DURABILITY",
        value_name = "MODE",
        help_heading = "Storage"
    )]
    pub durability: Option<String>,
    /// Flush window in milliseconds [default: 5 for sync and batched, 500 for relaxed]
    #[arg(
        long,
        env = "TETHER_FLUSH_INTERVAL_MS",
        value_name = "MS",
        help_heading = "Storage"
    )]
    pub flush_interval_ms: Option<String>,
    /// Events kept in the event log [default: 100000]
    #[arg(
        long,
        env = "TETHER_EVENT_LOG_MAX",
        value_name = "N",
        help_heading = "Storage"
    )]
    pub event_log_max: Option<String>,
    /// sled's page cache, in bytes [default: 67108864]
    #[arg(
        long,
        env = "TETHER_CACHE_CAPACITY_BYTES",
        value_name = "N",
        help_heading = "Storage"
    )]
    pub cache_capacity_bytes: Option<String>,

    /// pretty or json [default: pretty]
    #[arg(
        long,
        env = "TETHER_LOG_FORMAT",
        value_name = "FORMAT",
        help_heading = "Logging"
    )]
    pub log_format: Option<String>,
    /// Log filter when RUST_LOG is unset, e.g. "debug" or "info,tether=trace" [default: info]
    #[arg(
        long,
        env = "TETHER_LOG_LEVEL",
        value_name = "FILTER",
        help_heading = "Logging"
    )]
    pub log_level: Option<String>,
}

impl ConfigArgs {
    /// The `TETHER_*` environment alone, resolved by the same clap definitions as the flags.
    /// For subcommands that take only a few flags but should honour the whole environment.
    pub fn from_env() -> Result<ConfigArgs, clap::Error> {
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        struct EnvOnly {
            #[command(flatten)]
            args: ConfigArgs,
        }
        <EnvOnly as clap::Parser>::try_parse_from(std::iter::empty::<String>()).map(|e| e.args)
    }

    /// The text-valued keys that were given, as (key, value).
    fn given(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("listen", &self.listen),
            ("trust_proxy", &self.trust_proxy),
            ("max_body_bytes", &self.max_body_bytes),
            ("metrics_require_key", &self.metrics_require_key),
            ("jwt_secret", &self.jwt_secret),
            ("jwt_algorithm", &self.jwt_algorithm),
            ("jwt_issuer", &self.jwt_issuer),
            ("jwt_audience", &self.jwt_audience),
            ("jwt_leeway_seconds", &self.jwt_leeway_seconds),
            ("admin_api_key", &self.admin_api_key),
            ("api_keys", &self.api_keys),
            ("auth_timeout_ms", &self.auth_timeout_ms),
            ("max_per_user", &self.max_per_user),
            ("max_total", &self.max_total),
            ("ttl_seconds", &self.ttl_seconds),
            ("messages_per_minute", &self.messages_per_minute),
            ("max_message_bytes", &self.max_message_bytes),
            ("heartbeat_interval_ms", &self.heartbeat_interval_ms),
            ("resume_grace_seconds", &self.resume_grace_seconds),
            ("replay_buffer_messages", &self.replay_buffer_messages),
            ("replay_buffer_bytes", &self.replay_buffer_bytes),
            ("outbound_queue_bytes", &self.outbound_queue_bytes),
            ("session_ttl_seconds", &self.session_ttl_seconds),
            ("session_cookie", &self.session_cookie),
            ("session_max_bytes", &self.session_max_bytes),
            ("max_sessions_per_user", &self.max_sessions_per_user),
            ("durability", &self.durability),
            ("flush_interval_ms", &self.flush_interval_ms),
            ("event_log_max", &self.event_log_max),
            ("cache_capacity_bytes", &self.cache_capacity_bytes),
            ("log_format", &self.log_format),
            ("log_level", &self.log_level),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|s| !s.is_empty()).map(|s| (k, s)))
    }
}

/// Arguments of `tether backup`, resolved by the CLI.
#[derive(Debug, Clone)]
pub struct BackupArgs {
    /// File the snapshot is written to.
    pub out: PathBuf,
    /// Base URL of a running server (`http://127.0.0.1:8080`): snapshot through its admin
    /// API. `None`: read the (stopped) data directory directly.
    pub server: Option<String>,
    /// Admin API key for `server`: the flag, else config's `admin_api_key`, else the one in
    /// `<data_dir>/secrets.toml` if that file exists.
    pub api_key: Option<String>,
    pub data_dir: PathBuf,
}

/// Arguments of `tether restore`.
#[derive(Debug, Clone)]
pub struct RestoreArgs {
    pub from: PathBuf,
    /// Must be empty or absent.
    pub data_dir: PathBuf,
}

/// Arguments of `tether inspect`.
#[derive(Debug, Clone)]
pub struct InspectArgs {
    pub data_dir: PathBuf,
    pub json: bool,
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
}

impl ConfigError {
    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Missing { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }
}

fn is_secret(key: &str) -> bool {
    matches!(key, "jwt_secret" | "admin_api_key") || key.starts_with("api_keys")
}

fn invalid(key: &str, value: &str, expected: impl Into<String>) -> ConfigError {
    let value = if is_secret(key) {
        format!("{:?}", Hidden(value))
    } else {
        format!("{value:?}")
    };
    ConfigError::Invalid {
        key: key.to_string(),
        value,
        expected: expected.into(),
    }
}

/// Inclusive bounds of the numeric keys.
fn bounds(key: &str) -> (u64, u64) {
    match key {
        "jwt_leeway_seconds" | "resume_grace_seconds" => (0, MAX_SECONDS),
        "ttl_seconds" | "session_ttl_seconds" => (1, MAX_SECONDS),
        "auth_timeout_ms" | "flush_interval_ms" => (1, MAX_MILLIS),
        "heartbeat_interval_ms" => (10, MAX_MILLIS),
        "messages_per_minute" => (1, u64::from(u32::MAX)),
        "max_message_bytes" => (256, u64::MAX),
        "outbound_queue_bytes" | "replay_buffer_bytes" => (1024, u64::MAX),
        "session_max_bytes" => (2, u64::MAX),
        "cache_capacity_bytes" => (0, u64::MAX),
        _ => (1, u64::MAX),
    }
}

fn expected_number(key: &str) -> String {
    match bounds(key) {
        (min, u64::MAX) => format!("expected a whole number >= {min}"),
        (min, max) => format!("expected a whole number from {min} to {max}"),
    }
}

fn check_range(key: &str, value: u64) -> Result<u64, ConfigError> {
    let (min, max) = bounds(key);
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(key, &value.to_string(), expected_number(key)))
    }
}

fn number(key: &str, text: &str) -> Result<u64, ConfigError> {
    let n = text
        .trim()
        .replace('_', "")
        .parse::<u64>()
        .map_err(|_| invalid(key, text, expected_number(key)))?;
    check_range(key, n).map_err(|_| invalid(key, text, expected_number(key)))
}

fn count(key: &str, text: &str) -> Result<usize, ConfigError> {
    usize::try_from(number(key, text)?).map_err(|_| invalid(key, text, expected_number(key)))
}

fn boolean(key: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, text, "expected true or false")),
    }
}

fn choice<T: FromStr>(key: &str, text: &str, choices: &str) -> Result<T, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(key, text, format!("expected one of {choices}")))
}

/// Optional text: empty means "not set".
fn optional(text: &str) -> Option<String> {
    Some(text.to_string()).filter(|s| !s.is_empty())
}

fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .ok(),
        None => t.parse().ok(),
    };
    parsed.ok_or_else(|| {
        invalid(
            "listen",
            text,
            "expected an IP address and port, like 127.0.0.1:8080 or [::]:8080",
        )
    })
}

const API_KEYS_SHAPE: &str =
    "expected an array of tables {key = \"tk_...\", name = \"...\", permissions = [...]}";

fn api_keys_from_toml(value: &toml::Value) -> Result<Vec<ApiKeyConfig>, ConfigError> {
    if let toml::Value::String(text) = value {
        return api_keys_from_text(text);
    }
    value
        .clone()
        .try_into::<Vec<ApiKeyConfig>>()
        .map_err(|e| ConfigError::Invalid {
            key: "api_keys".into(),
            value: "<hidden>".into(),
            expected: format!("{API_KEYS_SHAPE}: {}", e.message()),
        })
}

/// `TETHER_API_KEYS` / `--api-keys`: the same array written as a TOML inline array.
fn api_keys_from_text(text: &str) -> Result<Vec<ApiKeyConfig>, ConfigError> {
    let bad = |detail: String| ConfigError::Invalid {
        key: "api_keys".into(),
        value: "<hidden>".into(),
        expected: format!("{API_KEYS_SHAPE} as a TOML inline array: {detail}"),
    };
    let mut table: toml::Table =
        toml::from_str(&format!("api_keys = {text}")).map_err(|e| bad(e.message().to_string()))?;
    let value = table
        .remove("api_keys")
        .ok_or_else(|| bad("empty".into()))?;
    if !table.is_empty() || !value.is_array() {
        return Err(bad("not a single array".into()));
    }
    api_keys_from_toml(&value)
}

/// The text a TOML scalar would have in the environment, so both parse alike.
fn toml_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Closest known key, for "did you mean" (edit distance <= 3).
fn suggest(unknown: &str) -> Option<&'static str> {
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
        .map(|k| (distance(&normal, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// RFC 6265 cookie-name: an RFC 7230 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_api_key(key: &str) -> bool {
    key.starts_with(API_KEY_PREFIX)
        && key.len() >= API_KEY_MIN_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
}

const API_KEY_SHAPE: &str =
    "expected \"tk_\" and at least 17 more printable characters; `tether apikey` makes one";

impl Config {
    /// Effective flush window: `flush_interval_ms`, or 5 ms (batched, sync) / 500 ms (relaxed).
    pub fn flush_interval(&self) -> Duration {
        let default = match self.durability {
            Durability::Relaxed => 500,
            Durability::Sync | Durability::Batched => 5,
        };
        Duration::from_millis(self.flush_interval_ms.unwrap_or(default))
    }

    /// Layered load: defaults < TOML `file` (if given) < `overrides` (environment and flags,
    /// already merged by clap). `overrides.config` is not consulted; see [`Config::from_args`].
    /// Validates everything, so an `Ok` config can be served.
    pub fn load(file: Option<&Path>, overrides: &ConfigArgs) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            config.apply_file(path)?;
        }
        config.apply_args(overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] with the file named by `--config` / `TETHER_CONFIG`.
    pub fn from_args(args: &ConfigArgs) -> Result<Config, ConfigError> {
        Config::load(args.config.as_deref(), args)
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for (key, value) in &table {
            let known = if key == "api_keys" {
                self.api_keys = api_keys_from_toml(value)?;
                true
            } else {
                self.set(key, &toml_text(value))?
            };
            if !known {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    path: path.to_path_buf(),
                    suggestion: suggest(key),
                });
            }
        }
        Ok(())
    }

    fn apply_args(&mut self, args: &ConfigArgs) -> Result<(), ConfigError> {
        if let Some(dir) = args.data_dir.as_ref().filter(|d| !d.as_os_str().is_empty()) {
            self.data_dir = dir.clone();
        }
        if let Some(file) = &args.jwt_public_key_file {
            self.jwt_public_key_file = Some(file.clone()).filter(|f| !f.as_os_str().is_empty());
        }
        for (key, text) in args.given() {
            let known = self.set(key, text)?;
            debug_assert!(known, "ConfigArgs key {key} not handled by Config::set");
        }
        Ok(())
    }

    /// Sets one key from its text form. `Ok(false)`: no such key.
    fn set(&mut self, key: &str, text: &str) -> Result<bool, ConfigError> {
        const ALGORITHMS: &str = "HS256, HS384, HS512, RS256, ES256, EdDSA";
        match key {
            "listen" => self.listen = parse_listen(text)?,
            "data_dir" => self.data_dir = PathBuf::from(text),
            "jwt_secret" => self.jwt_secret = optional(text),
            "jwt_algorithm" => self.jwt_algorithm = choice(key, text, ALGORITHMS)?,
            "jwt_public_key_file" => self.jwt_public_key_file = optional(text).map(PathBuf::from),
            "jwt_issuer" => self.jwt_issuer = optional(text),
            "jwt_audience" => self.jwt_audience = optional(text),
            "jwt_leeway_seconds" => self.jwt_leeway_seconds = number(key, text)?,
            "admin_api_key" => self.admin_api_key = optional(text),
            "api_keys" => self.api_keys = api_keys_from_text(text)?,
            "max_per_user" => self.max_per_user = count(key, text)?,
            "max_total" => self.max_total = count(key, text)?,
            "ttl_seconds" => self.ttl_seconds = number(key, text)?,
            "messages_per_minute" => {
                self.messages_per_minute = u32::try_from(number(key, text)?)
                    .map_err(|_| invalid(key, text, expected_number(key)))?
            }
            "max_message_bytes" => self.max_message_bytes = count(key, text)?,
            "auth_timeout_ms" => self.auth_timeout_ms = number(key, text)?,
            "heartbeat_interval_ms" => self.heartbeat_interval_ms = number(key, text)?,
            "resume_grace_seconds" => self.resume_grace_seconds = number(key, text)?,
            "replay_buffer_messages" => self.replay_buffer_messages = count(key, text)?,
            "replay_buffer_bytes" => self.replay_buffer_bytes = count(key, text)?,
            "outbound_queue_bytes" => self.outbound_queue_bytes = count(key, text)?,
            "max_body_bytes" => self.max_body_bytes = number(key, text)?,
            "session_ttl_seconds" => self.session_ttl_seconds = number(key, text)?,
            "session_cookie" => self.session_cookie = text.trim().to_string(),
            "session_max_bytes" => self.session_max_bytes = count(key, text)?,
            "max_sessions_per_user" => self.max_sessions_per_user = count(key, text)?,
            "event_log_max" => self.event_log_max = count(key, text)?,
            "durability" => self.durability = choice(key, text, "sync, batched, relaxed")?,
            "flush_interval_ms" => {
                self.flush_interval_ms = match text.trim() {
                    "" => None,
                    t => Some(number(key, t)?),
                }
            }
            "cache_capacity_bytes" => self.cache_capacity_bytes = number(key, text)?,
            "trust_proxy" => self.trust_proxy = boolean(key, text)?,
            "log_format" => self.log_format = choice(key, text, "pretty, json")?,
            "log_level" => self.log_level = optional(text.trim()),
            "metrics_require_key" => self.metrics_require_key = boolean(key, text)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks every rule, so a `Config` built in code gets the same checks as a loaded one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "", "expected a directory path"));
        }
        if self.jwt_secret.as_deref() == Some("") {
            return Err(invalid("jwt_secret", "", "expected a non-empty secret"));
        }
        self.validate_jwt_key_file()?;
        for (key, value) in [
            ("jwt_issuer", &self.jwt_issuer),
            ("jwt_audience", &self.jwt_audience),
        ] {
            if value.as_deref() == Some("") {
                return Err(invalid(
                    key,
                    "",
                    "expected a non-empty string, or leave it out",
                ));
            }
        }
        if let Some(key) = &self.admin_api_key {
            if !is_api_key(key) {
                return Err(invalid("admin_api_key", key, API_KEY_SHAPE));
            }
        }
        self.validate_api_keys()?;

        let numbers: [(&str, u64); 19] = [
            ("jwt_leeway_seconds", self.jwt_leeway_seconds),
            ("max_per_user", self.max_per_user as u64),
            ("max_total", self.max_total as u64),
            ("ttl_seconds", self.ttl_seconds),
            ("messages_per_minute", u64::from(self.messages_per_minute)),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("resume_grace_seconds", self.resume_grace_seconds),
            ("replay_buffer_messages", self.replay_buffer_messages as u64),
            ("replay_buffer_bytes", self.replay_buffer_bytes as u64),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("max_body_bytes", self.max_body_bytes),
            ("session_ttl_seconds", self.session_ttl_seconds),
            ("session_max_bytes", self.session_max_bytes as u64),
            ("max_sessions_per_user", self.max_sessions_per_user as u64),
            ("event_log_max", self.event_log_max as u64),
            ("cache_capacity_bytes", self.cache_capacity_bytes),
            ("flush_interval_ms", self.flush_interval_ms.unwrap_or(1)),
        ];
        for (key, value) in numbers {
            check_range(key, value)?;
        }

        if !is_cookie_name(&self.session_cookie) {
            return Err(invalid(
                "session_cookie",
                &self.session_cookie,
                "expected a cookie name: letters, digits and !#$%&'*+-.^_`|~",
            ));
        }
        if let Some(level) = &self.log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                return Err(invalid(
                    "log_level",
                    level,
                    format!(
                        "expected a level or filter like \"info\" or \"warn,tether=debug\": {e}"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_jwt_key_file(&self) -> Result<(), ConfigError> {
        let alg = self.jwt_algorithm;
        match (&self.jwt_public_key_file, alg.is_hmac()) {
            (None, true) => Ok(()),
            (None, false) => Err(ConfigError::Missing {
                key: "jwt_public_key_file",
                reason: format!("a PEM public key file is required when jwt_algorithm is {alg}"),
            }),
            (Some(file), true) => Err(invalid(
                "jwt_public_key_file",
                &file.display().to_string(),
                format!(
                    "only used with RS256, ES256 or EdDSA, but jwt_algorithm is {alg}; \
                     set jwt_algorithm or remove the key file"
                ),
            )),
            (Some(file), false) => match std::fs::metadata(file) {
                Ok(m) if m.is_file() => Ok(()),
                Ok(_) => Err(invalid(
                    "jwt_public_key_file",
                    &file.display().to_string(),
                    "expected a PEM file, found a directory",
                )),
                Err(e) => Err(invalid(
                    "jwt_public_key_file",
                    &file.display().to_string(),
                    format!("expected a readable PEM file: {e}"),
                )),
            },
        }
    }

    fn validate_api_keys(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for (i, entry) in self.api_keys.iter().enumerate() {
            if !is_api_key(&entry.key) {
                return Err(invalid(
                    &format!("api_keys[{i}].key"),
                    &entry.key,
                    API_KEY_SHAPE,
                ));
            }
            if !keys.insert(entry.key.as_str()) {
                return Err(invalid(
                    &format!("api_keys[{i}].key"),
                    &entry.key,
                    "the same key is listed twice",
                ));
            }
            let name_key = format!("api_keys[{i}].name");
            if entry.name.trim().is_empty() || entry.name.chars().any(char::is_control) {
                return Err(ConfigError::Invalid {
                    key: name_key,
                    value: format!("{:?}", entry.name),
                    expected: "expected a non-empty name".into(),
                });
            }
            if !names.insert(entry.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: name_key,
                    value: format!("{:?}", entry.name),
                    expected: "each name must be unique".into(),
                });
            }
            if let Some(p) = entry
                .permissions
                .iter()
                .find(|p| !PERMISSIONS.contains(&p.as_str()))
            {
                return Err(ConfigError::Invalid {
                    key: format!("api_keys[{i}].permissions"),
                    value: format!("{p:?}"),
                    expected: "expected admin, sessions or read".into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::io::Write;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let f = toml_file(text);
        Config::load(Some(f.path()), &ConfigArgs::default())
    }

    fn err_toml(text: &str) -> String {
        load_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_spec_table() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.jwt_algorithm, JwtAlgorithm::HS256);
        assert_eq!(c.jwt_public_key_file, None);
        assert_eq!(c.jwt_issuer, None);
        assert_eq!(c.jwt_audience, None);
        assert_eq!(c.jwt_leeway_seconds, 30);
        assert_eq!(c.admin_api_key, None);
        assert!(c.api_keys.is_empty());
        assert_eq!(c.max_per_user, 10);
        assert_eq!(c.max_total, 100_000);
        assert_eq!(c.ttl_seconds, 3600);
        assert_eq!(c.messages_per_minute, 120);
        assert_eq!(c.max_message_bytes, 65_536);
        assert_eq!(c.auth_timeout_ms, 10_000);
        assert_eq!(c.heartbeat_interval_ms, 25_000);
        assert_eq!(c.resume_grace_seconds, 120);
        assert_eq!(c.replay_buffer_messages, 256);
        assert_eq!(c.outbound_queue_bytes, 1_048_576);
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.session_ttl_seconds, 86_400);
        assert_eq!(c.session_cookie, "tether_sid");
        assert_eq!(c.event_log_max, 100_000);
        assert_eq!(c.durability, Durability::Batched);
        assert_eq!(c.flush_interval_ms, None);
        assert_eq!(c.cache_capacity_bytes, 67_108_864);
        assert!(!c.trust_proxy);
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.log_level, None);
        assert!(!c.metrics_require_key);
        c.validate().unwrap();
        // No file and no overrides is the default.
        let loaded = Config::load(None, &ConfigArgs::default()).unwrap();
        assert_eq!(format!("{loaded:?}"), format!("{c:?}"));
    }

    #[test]
    fn flush_interval_defaults_per_mode() {
        let mut c = Config::default();
        assert_eq!(c.flush_interval(), Duration::from_millis(5));
        c.durability = Durability::Sync;
        assert_eq!(c.flush_interval(), Duration::from_millis(5));
        c.durability = Durability::Relaxed;
        assert_eq!(c.flush_interval(), Duration::from_millis(500));
        c.flush_interval_ms = Some(42);
        assert_eq!(c.flush_interval(), Duration::from_millis(42));
    }

    #[test]
    fn every_key_has_a_flag_and_env_var_named_after_it() {
        TestCli::command().debug_assert();
        let cmd = TestCli::command();
        let mut seen = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let key = long.replace('-', "_");
            let env = arg.get_env().expect("every flag has an env var");
            assert_eq!(
                env.to_str().unwrap(),
                format!("TETHER_{}", key.to_uppercase())
            );
            assert!(arg.get_help().is_some(), "--{long} has no help");
            if key != "config" {
                assert!(KEYS.contains(&key.as_str()), "--{long} is not a key");
                let help = arg.get_help().unwrap().to_string();
                assert!(
                    help.contains("[default: "),
                    "--{long} help lacks its default"
                );
                seen.push(key);
            }
        }
        seen.sort();
        let mut keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(seen, keys);
    }

    #[test]
    fn toml_file_overrides_every_default() {
        let key_file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"
listen = "0.0.0.0:9000"
data_dir = "/var/lib/tether"
jwt_secret = "file-secret"
jwt_algorithm = "RS256"
jwt_public_key_file = {key_file:?}
jwt_issuer = "https://issuer"
jwt_audience = "tether"
jwt_leeway_seconds = 5
admin_api_key = "tk_0123456789abcdefghij"
max_per_user = 3
max_total = 50
ttl_seconds = 60
messages_per_minute = 30
max_message_bytes = 1024
auth_timeout_ms = 500
heartbeat_interval_ms = 1000
resume_grace_seconds = 0
replay_buffer_messages = 16
outbound_queue_bytes = 4096
max_body_bytes = 2048
session_ttl_seconds = 600
session_cookie = "sid"
event_log_max = 10
durability = "relaxed"
flush_interval_ms = 100
cache_capacity_bytes = 1_000_000
trust_proxy = true
log_format = "json"
log_level = "debug"
metrics_require_key = true

[[api_keys]]
key = "tk_aaaaaaaaaaaaaaaaaaaa"
name = "app"
permissions = ["read", "sessions"]
"#,
            key_file = key_file.path()
        );
        let c = load_toml(&text).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/tether"));
        assert_eq!(c.jwt_secret.as_deref(), Some("file-secret"));
        assert_eq!(c.jwt_algorithm, JwtAlgorithm::RS256);
        assert_eq!(c.jwt_public_key_file.as_deref(), Some(key_file.path()));
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://issuer"));
        assert_eq!(c.jwt_audience.as_deref(), Some("tether"));
        assert_eq!(c.jwt_leeway_seconds, 5);
        assert_eq!(c.admin_api_key.as_deref(), Some("tk_0123456789abcdefghij"));
        assert_eq!(
            c.api_keys,
            vec![ApiKeyConfig {
                key: "tk_aaaaaaaaaaaaaaaaaaaa".into(),
                name: "app".into(),
                permissions: vec!["read".into(), "sessions".into()],
            }]
        );
        assert_eq!(c.max_per_user, 3);
        assert_eq!(c.max_total, 50);
        assert_eq!(c.ttl_seconds, 60);
        assert_eq!(c.messages_per_minute, 30);
        assert_eq!(c.max_message_bytes, 1024);
        assert_eq!(c.auth_timeout_ms, 500);
        assert_eq!(c.heartbeat_interval_ms, 1000);
        assert_eq!(c.resume_grace_seconds, 0);
        assert_eq!(c.replay_buffer_messages, 16);
        assert_eq!(c.outbound_queue_bytes, 4096);
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.session_ttl_seconds, 600);
        assert_eq!(c.session_cookie, "sid");
        assert_eq!(c.event_log_max, 10);
        assert_eq!(c.durability, Durability::Relaxed);
        assert_eq!(c.flush_interval_ms, Some(100));
        assert_eq!(c.cache_capacity_bytes, 1_000_000);
        assert!(c.trust_proxy);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert!(c.metrics_require_key);
        // Secrets never show in Debug.
        let debug = format!("{c:?}");
        assert!(!debug.contains("file-secret") && !debug.contains("tk_0123"));
        assert!(!debug.contains("tk_aaaa"));
    }

    /// The only test that touches the process environment; it uses keys no other test
    /// reads through clap, so tests running in parallel do not see each other.
    #[test]
    fn layers_file_then_env_then_flags() {
        let file = toml_file("max_total = 11\nttl_seconds = 12\nevent_log_max = 13\n");
        std::env::set_var("TETHER_TTL_SECONDS", "22");
        std::env::set_var("TETHER_EVENT_LOG_MAX", "23");
        std::env::set_var("TETHER_SESSION_COOKIE", "");
        std::env::set_var("TETHER_CONFIG", file.path());
        let cli = TestCli::try_parse_from(["tether", "--event-log-max", "33"]).unwrap();
        let from_env = ConfigArgs::from_env().unwrap();
        for var in [
            "TETHER_TTL_SECONDS",
            "TETHER_EVENT_LOG_MAX",
            "TETHER_SESSION_COOKIE",
            "TETHER_CONFIG",
        ] {
            std::env::remove_var(var);
        }

        assert_eq!(cli.args.config.as_deref(), Some(file.path()));
        let c = Config::from_args(&cli.args).unwrap();
        assert_eq!(c.max_total, 11, "file over default");
        assert_eq!(c.ttl_seconds, 22, "env over file");
        assert_eq!(c.event_log_max, 33, "flag over env");
        assert_eq!(c.session_cookie, "tether_sid", "empty env var is unset");
        assert_eq!(c.max_per_user, 10, "default stays");

        assert_eq!(from_env.ttl_seconds.as_deref(), Some("22"));
        assert_eq!(from_env.event_log_max.as_deref(), Some("23"));

        // Without the file, env still applies.
        let c = Config::load(None, &from_env).unwrap();
        assert_eq!((c.max_total, c.ttl_seconds), (100_000, 22));
    }

    #[test]
    fn flags_parse_and_bool_flags_take_an_optional_value() {
        let cli = TestCli::try_parse_from([
            "tether",
            "--trust-proxy",
            "--metrics-require-key=false",
            "--durability",
            "SYNC",
            "--jwt-algorithm",
            "hs512",
            "--listen",
            "localhost:9999",
            "--api-keys",
            r#"[{key = "tk_bbbbbbbbbbbbbbbbbbbb", name = "ci", permissions = ["read"]}]"#,
        ])
        .unwrap();
        let c = Config::load(None, &cli.args).unwrap();
        assert!(c.trust_proxy);
        assert!(!c.metrics_require_key);
        assert_eq!(c.durability, Durability::Sync);
        assert_eq!(c.jwt_algorithm, JwtAlgorithm::HS512);
        assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.api_keys.len(), 1);
        assert_eq!(c.api_keys[0].name, "ci");
    }

    #[test]
    fn invalid_values_name_the_key_and_the_value() {
        assert_eq!(
            err_toml("max_per_user = 0"),
            "invalid value for max_per_user: \"0\" (expected a whole number >= 1)"
        );
        let args = ConfigArgs {
            max_per_user: Some("abc".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::load(None, &args).unwrap_err().to_string(),
            "invalid value for max_per_user: \"abc\" (expected a whole number >= 1)"
        );
        assert_eq!(
            err_toml("max_per_user = -3"),
            "invalid value for max_per_user: \"-3\" (expected a whole number >= 1)"
        );
        let e = err_toml("durability = \"fast\"");
        assert!(e.contains("durability") && e.contains("\"fast\""), "{e}");
        let e = err_toml("listen = \"nowhere:80\"");
        assert!(e.contains("listen") && e.contains("\"nowhere:80\""), "{e}");
        let e = err_toml("listen = 8080");
        assert!(e.contains("listen") && e.contains("\"8080\""), "{e}");
        let e = err_toml("heartbeat_interval_ms = 5");
        assert!(
            e.contains("heartbeat_interval_ms") && e.contains("\"5\""),
            "{e}"
        );
        let e = err_toml("max_message_bytes = 100");
        assert!(
            e.contains("max_message_bytes") && e.contains(">= 256"),
            "{e}"
        );
        let e = err_toml("trust_proxy = \"maybe\"");
        assert!(e.contains("trust_proxy") && e.contains("\"maybe\""), "{e}");
        let e = err_toml("ttl_seconds = 99999999999999");
        assert!(e.contains("ttl_seconds") && e.contains("from 1 to"), "{e}");
        let e = err_toml("session_cookie = \"a b\"");
        assert!(e.contains("session_cookie") && e.contains("\"a b\""), "{e}");
        let e = err_toml("log_level = \"info,[[[\"");
        assert!(e.contains("log_level"), "{e}");
        let e = err_toml("jwt_algorithm = \"none\"");
        assert!(e.contains("jwt_algorithm") && e.contains("\"none\""), "{e}");
    }

    #[test]
    fn unknown_key_and_unreadable_file() {
        let e = err_toml("max_per_users = 3");
        assert!(e.contains("unknown key \"max_per_users\""), "{e}");
        assert!(e.contains("did you mean \"max_per_user\""), "{e}");
        let e = err_toml("[server]\nlisten = \"127.0.0.1:1\"");
        assert!(e.contains("unknown key \"server\""), "{e}");

        let missing = Path::new("/nonexistent/tether.toml");
        let e = Config::load(Some(missing), &ConfigArgs::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/tether.toml"), "{e}");

        let e = err_toml("max_per_user = ");
        assert!(e.starts_with("cannot parse config file"), "{e}");
    }

    #[test]
    fn asymmetric_algorithms_need_a_public_key_file() {
        let e = err_toml("jwt_algorithm = \"RS256\"");
        assert_eq!(
            e,
            "missing value for jwt_public_key_file (a PEM public key file is required when \
             jwt_algorithm is RS256)"
        );
        let e = err_toml("jwt_algorithm = \"EdDSA\"\njwt_public_key_file = \"/nonexistent.pem\"");
        assert!(
            e.contains("jwt_public_key_file") && e.contains("/nonexistent.pem"),
            "{e}"
        );
        let e = err_toml("jwt_public_key_file = \"/nonexistent.pem\"");
        assert!(e.contains("only used with"), "{e}");
    }

    #[test]
    fn api_key_rules() {
        let e = err_toml("[[api_keys]]\nkey = \"short\"\nname = \"a\"\npermissions = []");
        assert!(e.contains("api_keys[0].key"), "{e}");
        assert!(!e.contains("short"), "secret echoed: {e}");
        let e = err_toml(
            "[[api_keys]]\nkey = \"tk_aaaaaaaaaaaaaaaaaaaa\"\nname = \"a\"\npermissions = []\n\
             [[api_keys]]\nkey = \"tk_bbbbbbbbbbbbbbbbbbbb\"\nname = \"a\"\npermissions = []",
        );
        assert!(
            e.contains("api_keys[1].name") && e.contains("unique"),
            "{e}"
        );
        let e = err_toml(
            "[[api_keys]]\nkey = \"tk_aaaaaaaaaaaaaaaaaaaa\"\nname = \"a\"\npermissions = [\"root\"]",
        );
        assert!(
            e.contains("api_keys[0].permissions") && e.contains("\"root\""),
            "{e}"
        );
        let e =
            err_toml("[[api_keys]]\nkey = \"tk_aaaaaaaaaaaaaaaaaaaa\"\nname = \"a\"\nperms = []");
        assert!(e.contains("api_keys") && e.contains("perms"), "{e}");
        let e = err_toml("admin_api_key = \"secret\"");
        assert!(
            e.contains("admin_api_key") && !e.contains("secret\""),
            "{e}"
        );
    }
}
