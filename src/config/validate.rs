//! The rules a configuration must satisfy beyond its keys' types: bounds, the rules of one
//! key's text (a cookie name, a log filter), and those that tie keys together (an algorithm
//! and its key file). [`Config::validate`] runs them on a config built in code too.

use super::keys::key;
use super::values::Hidden;
use super::{Config, ConfigError, Report};
use crate::auth::check_keys;
use crate::auth::MIN_HMAC_SECRET_BYTES;
use tracing_subscriber::filter::{EnvFilter, ParseError};

/// A log filter (`log_level`, `RUST_LOG`) as tracing-subscriber reads one, except that a
/// field's value is matched as text, never as a regular expression: the DFA of a pattern
/// such as `.*a.{20}` has millions of states, and a log_level of a few hundred bytes asked
/// for gigabytes when it was checked, and again when the logger was built.
///
/// A directive for the same target, span and field as an earlier one replaces it, as
/// tracing-subscriber has it, but the earlier one is dropped here, before the filter is
/// built: tracing-subscriber 0.3 never finds two text-matched field values equal, so two
/// such directives (`tether[{path=/x}]=debug,tether[{path=/x}]=trace`) broke an invariant
/// it asserts in a debug build, and the check of a config panicked.
pub fn log_filter(text: &str) -> Result<EnvFilter, ParseError> {
    let builder = || EnvFilter::builder().with_regex(false);
    // Split as the builder splits; each directive keyed by what it applies to, which is
    // how tracing-subscriber shows it without its `=level`.
    let mut kept: Vec<(String, &str)> = Vec::new();
    for directive in text.split(',').filter(|d| !d.is_empty()) {
        let shown = builder().parse(directive)?.to_string();
        let applies_to = shown.rsplit_once('=').map_or(&*shown, |(to, _)| to);
        kept.retain(|(k, _)| k != applies_to);
        kept.push((applies_to.to_owned(), directive));
    }
    let text: Vec<&str> = kept.into_iter().map(|(_, d)| d).collect();
    builder().parse(text.join(","))
}

/// RFC 6265 cookie-name: an RFC 7230 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An [`ConfigError::Invalid`] for the key named `name`, its value shown as the key allows.
fn invalid(name: &str, text: &str, expected: impl Into<String>) -> ConfigError {
    match key(name) {
        Some(key) => key.invalid(text, expected),
        None => ConfigError::Invalid {
            key: name.to_string(),
            value: format!("{text:?}"),
            expected: expected.into(),
        },
    }
}

impl Config {
    /// Checks every rule, so a `Config` built in code gets the same checks as a loaded one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut report = Report::default();
        self.check(&mut report);
        report.finish(())
    }

    /// Every rule, each reported to `report`. A rule about a key that already failed to
    /// parse is skipped: it would only judge the default left in its place.
    pub(super) fn check(&self, report: &mut Report) {
        if self.data_dir.as_os_str().is_empty() {
            report.push(invalid("data_dir", "", "expected a directory path"));
        }
        match &self.jwt_secret {
            Some(s) if s.is_empty() => {
                report.push(invalid("jwt_secret", "", "expected a non-empty secret"))
            }
            Some(s)
                if s.len() < MIN_HMAC_SECRET_BYTES
                    && self.jwt_algorithm.is_hmac()
                    && !report.failed("jwt_algorithm") =>
            {
                report.push(invalid(
                    "jwt_secret",
                    s,
                    format!(
                        "expected at least {MIN_HMAC_SECRET_BYTES} bytes for {}; a random \
                         one, such as `openssl rand -base64 32` prints",
                        self.jwt_algorithm
                    ),
                ))
            }
            _ => {}
        }
        if !report.failed_any(&["jwt_algorithm", "jwt_public_key_file"]) {
            if let Err(e) = self.check_jwt_key_file() {
                report.push(e);
            }
        }
        for (name, value) in [
            ("jwt_issuer", &self.jwt_issuer),
            ("jwt_audience", &self.jwt_audience),
        ] {
            if value.as_deref() == Some("") {
                report.push(invalid(
                    name,
                    "",
                    "expected a non-empty string, or leave it out",
                ));
            }
        }
        self.check_api_keys(report);

        for (key, value) in self.numbers() {
            if !report.failed(key.name) && !(key.min..=key.max).contains(&value) {
                report.push(key.invalid(&value.to_string(), key.expected_number()));
            }
        }

        if !is_cookie_name(&self.session_cookie) {
            report.push(invalid(
                "session_cookie",
                &self.session_cookie,
                "expected a cookie name: letters, digits and !#$%&'*+-.^_`|~",
            ));
        }
        if let Some(level) = &self.log_level {
            if let Err(e) = log_filter(level) {
                report.push(invalid(
                    "log_level",
                    level,
                    format!(
                        "expected a level or filter like \"info\" or \"warn,tether=debug\": {e}"
                    ),
                ));
            }
        }
        self.check_cluster(report);
    }

    fn check_jwt_key_file(&self) -> Result<(), ConfigError> {
        let alg = self.jwt_algorithm;
        let shown = |file: &std::path::Path| file.display().to_string();
        match (&self.jwt_public_key_file, alg.is_hmac()) {
            (None, true) => Ok(()),
            (None, false) => Err(ConfigError::Missing {
                key: "jwt_public_key_file",
                reason: format!("a PEM public key file is required when jwt_algorithm is {alg}"),
            }),
            (Some(file), true) => Err(invalid(
                "jwt_public_key_file",
                &shown(file),
                format!(
                    "only used with RS256, ES256 or EdDSA, but jwt_algorithm is {alg}; \
                     set jwt_algorithm or remove the key file"
                ),
            )),
            (Some(file), false) => match std::fs::metadata(file) {
                Ok(m) if m.is_file() => Ok(()),
                Ok(_) => Err(invalid(
                    "jwt_public_key_file",
                    &shown(file),
                    "expected a PEM file, found a directory",
                )),
                Err(e) => Err(invalid(
                    "jwt_public_key_file",
                    &shown(file),
                    format!("expected a readable PEM file: {e}"),
                )),
            },
        }
    }

    /// The API-key rules are auth's ([`crate::auth::check_keys`]); here they become
    /// configuration errors, secrets hidden.
    fn check_api_keys(&self, report: &mut Report) {
        let keys = self
            .api_keys
            .iter()
            .map(|k| (k.key.as_str(), k.name.as_str(), k.permissions.as_slice()));
        for p in check_keys(self.admin_api_key.as_deref(), keys) {
            report.push(ConfigError::Invalid {
                key: p.field,
                value: if p.secret {
                    format!("{:?}", Hidden(&p.text))
                } else {
                    format!("{:?}", p.text)
                },
                expected: p.expected,
            });
        }
    }
}
