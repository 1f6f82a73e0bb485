//! Configuration files: `Config::load_text`, everything `Config::load` does with a file's
//! text.
//!
//! What must hold, for any text in a config file:
//! - loading returns, never panics;
//! - a loaded config passes `Config::validate` again, and with an HMAC algorithm and its
//!   secret, the authenticator is built from it without complaint (the two sets of rules
//!   agree);
//! - errors are flat (a `Several` holds two or more, none of them `Several`), and name keys
//!   that exist, or the unknown key the file holds;
//! - secrets never show: an error about `jwt_secret`, `admin_api_key` or `api_keys` shows
//!   the value hidden, `Debug` of a config never holds a secret, and a `redis_url`'s
//!   password is in neither (unless another key or value of the file holds the same text,
//!   which is shown as that).

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether::auth::Authenticator;
use tether::config::{Config, ConfigArgs, ConfigError, KEYS};

const SECRET_KEYS: [&str; 3] = ["jwt_secret", "admin_api_key", "api_keys"];

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::load_text(text, Path::new("fuzz.toml"), &ConfigArgs::default())
}

/// Every fixed word the messages about `redis_url` use, to tell a leaked password from a
/// password that is a word of the message anyway.
fn url_words() -> &'static str {
    static WORDS: OnceLock<String> = OnceLock::new();
    WORDS.get_or_init(|| {
        let mut all = String::new();
        for url in [
            "x",
            "redis://",
            "redis://h:p",
            "redis://h/d",
            "unix://x",
            "redis://h:0",
        ] {
            if let Err(e) = load(&format!("redis_url = {url:?}")) {
                all.push_str(&e.to_string());
            }
        }
        all
    })
}

/// The password a `redis_url` may hold: what stands between its user name and the last
/// `@`, wherever a sloppy URL puts the `/`, `?` or `#` that should have been escaped.
fn url_password(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let at = rest.rfind('@')?;
    let userinfo = &rest[..at];
    let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
    // The same text in the scheme, the user name or after the `@` is shown, rightly.
    let shown = format!("{scheme}://{user}\u{1}{}", &rest[at..]);
    (password.chars().count() >= 8 && !url_words().contains(password) && !shown.contains(password))
        .then_some(password)
}

fn base_key(key: &str) -> &str {
    key.split(['[', '.']).next().unwrap_or(key)
}

fn check_error(e: &ConfigError, table: Option<&toml::Table>, redis_password: Option<&str>) {
    let all = e.errors();
    if let ConfigError::Several(list) = e {
        assert!(list.len() >= 2, "{e:?}");
    }
    let text = e.to_string();
    for one in all {
        assert!(!matches!(one, ConfigError::Several(_)), "nested: {e:?}");
        match one {
            ConfigError::UnknownKey { key, .. } => {
                assert!(KEYS.iter().all(|k| k.name != key), "{key} is a key");
                if let Some(t) = table {
                    assert!(t.contains_key(key), "{key} is not in the file");
                }
            }
            ConfigError::Invalid { key, value, .. } => {
                let base = base_key(key);
                assert!(KEYS.iter().any(|k| k.name == base), "no key {key}");
                // `api_keys[1].name` is no secret; `api_keys[1].key` is.
                if SECRET_KEYS.contains(&key.as_str())
                    || (base == "api_keys" && key.ends_with(".key"))
                {
                    assert!(value.starts_with("<hidden"), "{key} shown: {value}");
                }
            }
            ConfigError::Missing { key, .. } => {
                assert!(KEYS.iter().any(|k| k.name == *key), "no key {key}");
            }
            ConfigError::Parse { .. } => assert_eq!(all.len(), 1),
            ConfigError::Read { .. } => panic!("nothing was read: {e:?}"),
            ConfigError::Several(_) => unreachable!(),
        }
    }
    if let Some(pw) = redis_password {
        // A file that does not parse is shown as it is: it holds no value yet.
        if !matches!(e, ConfigError::Parse { .. }) {
            assert!(
                !text.contains(pw),
                "redis_url password {pw:?} shown: {text}"
            );
        }
    }
}

fn check_config(c: &Config, redis_password: Option<&str>) {
    c.validate()
        .unwrap_or_else(|e| panic!("loaded, yet invalid: {e}"));
    if c.jwt_algorithm.is_hmac() && c.jwt_secret.is_some() {
        if let Err(e) = Authenticator::new(c.auth_settings()) {
            panic!("the config takes what the authenticator refuses: {e}");
        }
    }
    let shown = format!("{c:?}");
    let bare = Config {
        jwt_secret: None,
        admin_api_key: None,
        api_keys: Vec::new(),
        redis_url: None,
        ..c.clone()
    };
    let bare = format!("{bare:?}");
    let mut secrets: Vec<&str> = c
        .jwt_secret
        .iter()
        .chain(&c.admin_api_key)
        .map(String::as_str)
        .collect();
    secrets.extend(c.api_keys.iter().map(|k| k.key.as_str()));
    secrets.extend(redis_password);
    for s in secrets {
        if s.chars().count() >= 8 && !bare.contains(s) {
            assert!(!shown.contains(s), "secret {s:?} in Debug: {shown}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let table = toml::from_str::<toml::Table>(text).ok();
    let redis_password = table.as_ref().and_then(|t| {
        let pw = t.get("redis_url")?.as_str().and_then(url_password)?;
        // The same text as (part of) another key or value is shown as that, rightly: a
        // `listen` that holds it is no leak of the password.
        let elsewhere = t
            .iter()
            .filter(|(k, _)| *k != "redis_url")
            .any(|(k, v)| k.contains(pw) || v.to_string().contains(pw));
        (!elsewhere).then_some(pw)
    });
    match load(text) {
        Ok(c) => {
            if let Some(t) = &table {
                for k in t.keys() {
                    assert!(KEYS.iter().any(|key| key.name == k), "unknown {k} taken");
                }
            }
            check_config(&c, redis_password);
        }
        Err(e) => check_error(&e, table.as_ref(), redis_password),
    }
});
