//! API keys (`tk_…`): what a key must look like, its permissions, what a key may do,
//! and the table an [`super::Authenticator`] looks keys up in.
//!
//! The rules for a configured key (its text, its name, its permissions, no key or name
//! twice) are [`check_keys`], and the rule for a key's text alone is
//! [`is_valid_api_key`]. The config's validation, the authenticator, the reader of
//! `secrets.toml` and `tether apikey` all ask these, so they cannot disagree.

use std::collections::HashSet;

use serde_json::Map;

use super::crypto::{random_token, sha256};
use super::{AuthError, AuthUser, Settings};

/// Every API key starts with this, which is how a bare credential is told
/// apart from a JWT (a JWT's first segment is base64url JSON, which can never
/// start with `tk_`).
pub const API_KEY_PREFIX: &str = "tk_";

/// Shortest API key accepted, prefix included: 17 characters after it are still about
/// 100 bits of base64url. Generated keys are much longer ([`new_api_key`]).
pub const API_KEY_MIN_LEN: usize = 20;

/// Random bytes in a generated key.
const GENERATED_KEY_BYTES: usize = 32;

/// User ids of API-key callers are `apikey:<name>`; JWT subjects may not use
/// the prefix, so a token can never pose as an API key's identity.
pub(super) const API_KEY_USER_PREFIX: &str = "apikey:";

/// Name of the key built from `admin_api_key`; no configured key may take it.
pub const ADMIN_KEY_NAME: &str = "admin";

/// What an HTTP route needs (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Admin,
    Sessions,
    Read,
}

impl Permission {
    pub const ALL: [Permission; 3] = [Permission::Admin, Permission::Sessions, Permission::Read];

    /// The name used in config and in `AuthUser.permissions`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Admin => "admin",
            Permission::Sessions => "sessions",
            Permission::Read => "read",
        }
    }

    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The permission names, in the order of [`Permission::ALL`].
pub const PERMISSIONS: &[&str] = &[
    Permission::Admin.as_str(),
    Permission::Sessions.as_str(),
    Permission::Read.as_str(),
];

/// A configured API key, without the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub permissions: Vec<String>,
}

impl ApiKey {
    /// `admin` allows everything; otherwise the key needs that very permission.
    pub fn allows(&self, needed: Permission) -> bool {
        self.permissions
            .iter()
            .any(|p| p == Permission::Admin.as_str() || p == needed.as_str())
    }

    /// The principal of a connection authenticated with this key.
    pub fn user(&self) -> AuthUser {
        AuthUser {
            id: format!("{API_KEY_USER_PREFIX}{}", self.name),
            permissions: self.permissions.clone(),
            roles: Vec::new(),
            name: Some(self.name.clone()),
            claims: Map::new(),
        }
    }
}

/// The rule for an API key's text: the prefix, at least [`API_KEY_MIN_LEN`] characters in
/// all, and printable ASCII only (no spaces: a key travels in headers and query strings).
pub fn is_valid_api_key(key: &str) -> bool {
    key.starts_with(API_KEY_PREFIX)
        && key.len() >= API_KEY_MIN_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
}

/// What [`is_valid_api_key`] asks for, for messages.
pub fn api_key_shape() -> String {
    format!(
        "expected \"{API_KEY_PREFIX}\" and at least {} more printable characters, no spaces; \
         `tether apikey` makes one",
        API_KEY_MIN_LEN - API_KEY_PREFIX.len()
    )
}

/// A new API key: the prefix and 32 random bytes, base64url (46 characters).
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_token(GENERATED_KEY_BYTES))
}

/// The rule for a key's name, which becomes the user id `apikey:<name>`: not blank, no
/// control characters.
pub fn check_key_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err("expected a non-empty name without control characters".into());
    }
    Ok(())
}

/// The rule for a key's permissions: each one of [`PERMISSIONS`]; `Err` names the first
/// that is not.
pub fn check_permissions(permissions: &[String]) -> Result<(), (String, String)> {
    match permissions.iter().find(|p| Permission::parse(p).is_none()) {
        Some(bad) => Err((bad.clone(), format!("expected {}", one_of(PERMISSIONS)))),
        None => Ok(()),
    }
}

/// `a, b or c`.
fn one_of(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// One way the configured keys break the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    /// The config key: `admin_api_key`, `api_keys[1].name`.
    pub field: String,
    /// The offending text; a secret (`secret` true) must never be shown.
    pub text: String,
    pub secret: bool,
    /// `expected ...`.
    pub expected: String,
}

/// Every rule for the configured keys at once: `admin_api_key` (if set), then each of
/// `keys` as (key, name, permissions), in order. Empty when all is well.
pub fn check_keys<'a>(
    admin: Option<&str>,
    keys: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
) -> Vec<KeyProblem> {
    let mut problems = Vec::new();
    let mut seen_keys = HashSet::new();
    let mut seen_names = HashSet::from([ADMIN_KEY_NAME]);
    let mut problem = |field: String, text: &str, secret: bool, expected: String| {
        problems.push(KeyProblem {
            field,
            text: text.to_string(),
            secret,
            expected,
        })
    };
    if let Some(admin) = admin {
        if !is_valid_api_key(admin) {
            problem("admin_api_key".into(), admin, true, api_key_shape());
        }
        seen_keys.insert(admin);
    }
    for (i, (key, name, permissions)) in keys.into_iter().enumerate() {
        let field = |part: &str| format!("api_keys[{i}].{part}");
        if !is_valid_api_key(key) {
            problem(field("key"), key, true, api_key_shape());
        } else if !seen_keys.insert(key) {
            problem(
                field("key"),
                key,
                true,
                "the same key is configured twice".into(),
            );
        }
        if let Err(why) = check_key_name(name) {
            problem(field("name"), name, false, why);
        } else if name == ADMIN_KEY_NAME {
            problem(
                field("name"),
                name,
                false,
                format!("expected another name: \"{ADMIN_KEY_NAME}\" is admin_api_key's"),
            );
        } else if !seen_names.insert(name) {
            problem(
                field("name"),
                name,
                false,
                "each name must be unique".into(),
            );
        }
        if let Err((bad, why)) = check_permissions(permissions) {
            problem(field("permissions"), &bad, false, why);
        }
    }
    problems
}

pub(super) struct KeyEntry {
    pub(super) digest: [u8; 32],
    pub(super) key: ApiKey,
}

/// Builds the API key table: `admin_api_key` as the key named "admin" with
/// permission `admin`, then `api_keys` in order. Fails on the first broken rule of
/// [`check_keys`], naming its config key.
pub(super) fn table(s: &Settings) -> Result<Vec<KeyEntry>, AuthError> {
    let configured = s
        .api_keys
        .iter()
        .map(|(key, name, permissions)| (key.as_str(), name.as_str(), permissions.as_slice()));
    if let Some(p) = check_keys(s.admin_api_key.as_deref(), configured).first() {
        return Err(AuthError::Config(if p.secret {
            format!("{}: {}", p.field, p.expected)
        } else {
            format!("{} = {:?}: {}", p.field, p.text, p.expected)
        }));
    }
    let admin = s.admin_api_key.as_deref().map(|key| {
        let permissions = vec![Permission::Admin.as_str().to_owned()];
        (key, ADMIN_KEY_NAME, permissions)
    });
    let configured = s
        .api_keys
        .iter()
        .map(|(key, name, permissions)| (key.as_str(), name.as_str(), permissions.clone()));
    Ok(admin
        .into_iter()
        .chain(configured)
        .map(|(key, name, permissions)| KeyEntry {
            digest: sha256(key.as_bytes()),
            key: ApiKey {
                name: name.to_owned(),
                permissions,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_rule_for_a_key() {
        assert!(is_valid_api_key("tk_0123456789abcdefg"));
        assert_eq!("tk_0123456789abcdefg".len(), API_KEY_MIN_LEN);
        for bad in [
            "tk_0123456789abcdef",
            "0123456789abcdefghijklmn",
            "TK_0123456789abcdefghij",
            "tk_0123456789 abcdefghij",
            "tk_0123456789abcdéfghij",
        ] {
            assert!(!is_valid_api_key(bad), "{bad}");
        }
        let generated = new_api_key();
        assert!(is_valid_api_key(&generated) && generated.len() == 46);
        assert_ne!(generated, new_api_key());
        assert_eq!(
            api_key_shape(),
            "expected \"tk_\" and at least 17 more printable characters, no spaces; \
             `tether apikey` makes one"
        );
    }

    #[test]
    fn every_problem_of_the_configured_keys_is_found() {
        let good = "tk_0123456789abcdefghij";
        let read = vec!["read".to_string()];
        let root = vec!["root".to_string()];
        let problems = check_keys(
            Some("short"),
            [
                (good, "app", read.as_slice()),
                (good, "app", root.as_slice()),
                ("tk_other_0123456789abc", ADMIN_KEY_NAME, read.as_slice()),
                ("tk_third_0123456789abc", " ", read.as_slice()),
            ],
        );
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.expected.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("admin_api_key", api_key_shape().as_str()),
                ("api_keys[1].key", "the same key is configured twice"),
                ("api_keys[1].name", "each name must be unique"),
                (
                    "api_keys[1].permissions",
                    "expected admin, sessions or read"
                ),
                (
                    "api_keys[2].name",
                    "expected another name: \"admin\" is admin_api_key's"
                ),
                (
                    "api_keys[3].name",
                    "expected a non-empty name without control characters"
                ),
            ]
        );
        assert!(problems[0].secret && problems[1].secret && !problems[3].secret);
        assert_eq!(problems[3].text, "root");
        assert!(check_keys(Some(good), [("tk_x_0123456789abcdefg", "a", &read[..])]).is_empty());
    }
}
