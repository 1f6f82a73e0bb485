//! What a key is ([`Key`]), the types of the values, and how each type is read from text.
//!
//! Every value arrives as text (an environment variable, a flag, a TOML scalar written out)
//! and goes through [`Setting::parse`] for its type, so a bad value gets the same message
//! whichever layer it came from. The per-key facts the parsers need (bounds, whether the
//! value is a secret) are in the key's [`Key`], which the table in `keys.rs` fills.

use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use super::ConfigError;

/// How a key's value may appear in an error message or in `Debug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// As it is, quoted.
    Plain,
    /// Never: only its length. Its environment value is hidden in `--help` too.
    Hidden,
    /// A URL with its password replaced (`redis://:<hidden>@host`); hidden in `--help`.
    Url,
}

/// One configuration key: everything about it except its field in [`super::Config`].
#[derive(Debug)]
pub struct Key {
    /// snake_case, as in TOML; the flag is its kebab-case, the variable `TETHER_` + upper case.
    pub name: &'static str,
    /// The doc comment of the field, one line per doc line.
    pub help: &'static str,
    /// The `--help` section the flag is listed in.
    pub heading: &'static str,
    /// Placeholder of the value in `--help`.
    pub value_name: &'static str,
    /// Inclusive bounds, for numbers.
    pub min: u64,
    pub max: u64,
    /// The default as documented, when it is not simply the default value written out
    /// (`generated`, `info`); empty otherwise.
    pub shown: &'static str,
    pub show: Show,
    /// Set by the value's type: a number (bounds apply), a boolean (the flag's value is
    /// optional).
    pub numeric: bool,
    pub flag: bool,
}

impl Key {
    /// The facts a key's type decides; the table overrides the rest.
    pub const fn base<T: Setting>() -> Key {
        Key {
            name: "",
            help: "",
            heading: "",
            value_name: "",
            min: T::MIN,
            max: T::MAX,
            shown: "",
            show: Show::Plain,
            numeric: T::NUMERIC,
            flag: T::FLAG,
        }
    }

    /// `TETHER_` and the name in upper case.
    pub fn env_var(&self) -> String {
        format!("TETHER_{}", self.name.to_ascii_uppercase())
    }

    /// `--` and the name in kebab-case, without the dashes.
    pub fn flag_name(&self) -> String {
        self.name.replace('_', "-")
    }

    /// The help text on one line.
    pub fn summary(&self) -> String {
        self.help
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What the bounds add to the help text: `at least 256`, `at most 86400`. The generic
    /// caps (ten years of seconds or milliseconds, the type's range) go unsaid.
    pub fn range_note(&self) -> Option<String> {
        if !self.numeric {
            return None;
        }
        let at_least = (self.min > 1).then(|| format!("at least {}", self.min));
        let at_most = (self.max < super::MAX_SECONDS).then(|| format!("at most {}", self.max));
        match (at_least, at_most) {
            (Some(a), Some(b)) => Some(format!("{a}, {b}")),
            (a, b) => a.or(b),
        }
    }

    /// A value as it may appear in a message: quoted, hidden, or with its password hidden.
    pub fn show_value(&self, text: &str) -> String {
        match self.show {
            Show::Plain => format!("{text:?}"),
            Show::Hidden => format!("{:?}", Hidden(text)),
            Show::Url => format!("{:?}", redact_url(text)),
        }
    }

    /// An [`ConfigError::Invalid`] for this key.
    pub fn invalid(&self, text: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.name.to_string(),
            value: self.show_value(text),
            expected: expected.into(),
        }
    }

    /// What a number of this key must be, for messages.
    pub fn expected_number(&self) -> String {
        if self.max == u64::MAX {
            format!("expected a whole number >= {}", self.min)
        } else {
            format!("expected a whole number from {} to {}", self.min, self.max)
        }
    }
}

/// A type a configuration value can have. The associated constants go into the key's
/// [`Key`] through [`Key::base`].
pub trait Setting: Sized + fmt::Debug {
    const NUMERIC: bool = false;
    const FLAG: bool = false;
    /// Default bounds of a number: at least 1, as large as the type holds.
    const MIN: u64 = 1;
    const MAX: u64 = u64::MAX;

    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError>;

    /// From the environment or a flag, which may not be UTF-8 (only paths may be).
    fn parse_os(key: &Key, text: &OsStr) -> Result<Self, ConfigError> {
        match text.to_str() {
            Some(t) => Self::parse(key, t),
            None => Err(key.invalid(&text.to_string_lossy(), "expected UTF-8 text")),
        }
    }

    /// From the TOML file: a scalar is read as the text it would have in the environment.
    fn from_toml(key: &Key, value: &toml::Value) -> Result<Self, ConfigError> {
        Self::parse(key, &toml_text(value))
    }

    /// The value for the range checks, if this is a number and set.
    fn number(&self) -> Option<u64> {
        None
    }

    /// The value as the documentation writes a default.
    fn show(&self) -> String;

    /// `Debug`, honouring the key's [`Show`].
    fn debug(&self, _key: &Key, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The text a TOML scalar would have in the environment, so both parse alike.
pub fn toml_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number(key: &Key, text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|n| (key.min..=key.max).contains(n))
        .ok_or_else(|| key.invalid(text, key.expected_number()))
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            const NUMERIC: bool = true;
            const MAX: u64 = <$t>::MAX as u64;
            fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
                <$t>::try_from(number(key, text)?)
                    .map_err(|_| key.invalid(text, key.expected_number()))
            }
            fn number(&self) -> Option<u64> {
                Some(*self as u64)
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
numbers!(u64, usize, u32);

/// An optional number: unset (empty) means the key's documented default applies.
impl Setting for Option<u64> {
    const NUMERIC: bool = true;
    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "" => Ok(None),
            _ => u64::parse(key, text).map(Some),
        }
    }
    fn number(&self) -> Option<u64> {
        *self
    }
    fn show(&self) -> String {
        self.map_or_else(|| "none".into(), |n| n.to_string())
    }
}

/// The words a boolean accepts, for the parser and for its message alike.
pub const TRUE_WORDS: [&str; 4] = ["true", "yes", "on", "1"];
pub const FALSE_WORDS: [&str; 4] = ["false", "no", "off", "0"];

/// `expected true/false, yes/no, on/off or 1/0 (any letter case)`: every word the parser
/// takes, from the same lists.
pub fn expected_boolean() -> String {
    let pairs: Vec<String> = TRUE_WORDS
        .iter()
        .zip(FALSE_WORDS)
        .map(|(t, f)| format!("{t}/{f}"))
        .collect();
    let (last, rest) = pairs.split_last().expect("at least one pair");
    format!("expected {} or {last} (any letter case)", rest.join(", "))
}

impl Setting for bool {
    const FLAG: bool = true;
    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
        let word = text.trim().to_ascii_lowercase();
        if TRUE_WORDS.contains(&word.as_str()) {
            Ok(true)
        } else if FALSE_WORDS.contains(&word.as_str()) {
            Ok(false)
        } else {
            Err(key.invalid(text, expected_boolean()))
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Required text, trimmed (cookie name, Redis prefix); its rules are in `validate.rs`.
impl Setting for String {
    fn parse(_key: &Key, text: &str) -> Result<Self, ConfigError> {
        Ok(text.trim().to_string())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

/// Optional text: empty means not set. Trimmed, except secrets, which are taken as given.
impl Setting for Option<String> {
    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
        let text = if key.show == Show::Hidden {
            text
        } else {
            text.trim()
        };
        Ok(Some(text.to_string()).filter(|s| !s.is_empty()))
    }
    fn show(&self) -> String {
        self.clone().unwrap_or_else(|| "none".into())
    }
    fn debug(&self, key: &Key, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, key.show) {
            (None, _) | (Some(_), Show::Plain) => fmt::Debug::fmt(self, f),
            (Some(s), Show::Hidden) => f.debug_tuple("Some").field(&Hidden(s)).finish(),
            (Some(s), Show::Url) => f.debug_tuple("Some").field(&redact_url(s)).finish(),
        }
    }
}

impl Setting for PathBuf {
    fn parse(_key: &Key, text: &str) -> Result<Self, ConfigError> {
        Ok(PathBuf::from(text))
    }
    fn parse_os(_key: &Key, text: &OsStr) -> Result<Self, ConfigError> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Setting for Option<PathBuf> {
    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
        Self::parse_os(key, OsStr::new(text))
    }
    fn parse_os(_key: &Key, text: &OsStr) -> Result<Self, ConfigError> {
        Ok(Some(PathBuf::from(text)).filter(|p| !p.as_os_str().is_empty()))
    }
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".into(), |p| p.display().to_string())
    }
}

/// An IP address and port; `localhost:PORT` is 127.0.0.1.
impl Setting for SocketAddr {
    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
        let t = text.trim();
        let parsed = match t.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
                .ok(),
            None => t.parse().ok(),
        };
        parsed.ok_or_else(|| {
            key.invalid(
                text,
                "expected an IP address and port, like 127.0.0.1:8080 or [::]:8080",
            )
        })
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A value from a fixed list of names, matched case-insensitively.
pub trait Choice: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;

    fn choices() -> String {
        Self::ALL
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

macro_rules! choices {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
                text.trim()
                    .parse()
                    .map_err(|_| key.invalid(text, format!("expected one of {}", <$t>::choices())))
            }
            fn show(&self) -> String {
                self.as_str().to_string()
            }
        }

        impl FromStr for $t {
            type Err = ();
            /// Case-insensitive: `hs256` is `HS256`.
            fn from_str(s: &str) -> Result<Self, ()> {
                <$t as Choice>::ALL
                    .iter()
                    .copied()
                    .find(|c| c.as_str().eq_ignore_ascii_case(s))
                    .ok_or(())
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
pub use crate::auth::JwtAlgorithm;

choices!(JwtAlgorithm, Durability, LogFormat);

impl Choice for JwtAlgorithm {
    const ALL: &'static [Self] = &JwtAlgorithm::ALL;
    fn as_str(self) -> &'static str {
        JwtAlgorithm::as_str(self)
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

impl Choice for Durability {
    const ALL: &'static [Self] = &[Durability::Sync, Durability::Batched, Durability::Relaxed];
    fn as_str(self) -> &'static str {
        Durability::as_str(self)
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

impl Choice for LogFormat {
    const ALL: &'static [Self] = &[LogFormat::Pretty, LogFormat::Json];
    fn as_str(self) -> &'static str {
        LogFormat::as_str(self)
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

const API_KEYS_SHAPE: &str =
    "expected an array of tables {key = \"tk_...\", name = \"...\", permissions = [...]}";

/// In TOML an array of tables; in the environment or a flag the same array written as a
/// TOML inline array. The entries' rules are in `validate.rs`.
impl Setting for Vec<ApiKeyConfig> {
    fn parse(key: &Key, text: &str) -> Result<Self, ConfigError> {
        let bad = |detail: String| ConfigError::Invalid {
            key: key.name.into(),
            value: "<hidden>".into(),
            expected: format!("{API_KEYS_SHAPE} as a TOML inline array: {detail}"),
        };
        let mut table: toml::Table = toml::from_str(&format!("api_keys = {text}"))
            .map_err(|e| bad(e.message().to_string()))?;
        let value = table
            .remove("api_keys")
            .ok_or_else(|| bad("empty".into()))?;
        if !table.is_empty() || !value.is_array() {
            return Err(bad("not a single array".into()));
        }
        Self::from_toml(key, &value)
    }
    fn from_toml(key: &Key, value: &toml::Value) -> Result<Self, ConfigError> {
        if let toml::Value::String(text) = value {
            return Self::parse(key, text);
        }
        value
            .clone()
            .try_into::<Vec<ApiKeyConfig>>()
            .map_err(|e| ConfigError::Invalid {
                key: key.name.into(),
                value: "<hidden>".into(),
                expected: format!("{API_KEYS_SHAPE}: {}", e.message()),
            })
    }
    fn show(&self) -> String {
        if self.is_empty() {
            "none".into()
        } else {
            format!("{} keys", self.len())
        }
    }
}

/// Debug-formats as `<hidden, N chars>` so secrets never reach a log line.
pub struct Hidden<'a>(pub &'a str);

impl fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<hidden, {} chars>", self.0.chars().count())
    }
}

/// `scheme://user:password@host/...` with the password replaced by `<hidden>`. The password
/// ends at the last `@`, not at the first `/`: one generated with an unescaped `/`, `?` or
/// `#` in it is still a password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    // Without a colon the one part may be a password too (some clients read it so).
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<hidden>{}", &rest[at..]),
        None => format!("{scheme}://<hidden>{}", &rest[at..]),
    }
}
