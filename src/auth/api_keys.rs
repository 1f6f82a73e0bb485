//! API keys (`tk_…`): their permissions, what a key may do, and the table an
//! [`super::Authenticator`] looks keys up in.

use std::collections::HashSet;

use serde_json::Map;

use super::crypto::sha256;
use super::{AuthError, AuthUser, Settings};

/// Every API key starts with this, which is how a bare credential is told
/// apart from a JWT (a JWT's first segment is base64url JSON, which can never
/// start with `tk_`).
pub const API_KEY_PREFIX: &str = "tk_";

/// User ids of API-key callers are `apikey:<name>`; JWT subjects may not use
/// the prefix, so a token can never pose as an API key's identity.
pub(super) const API_KEY_USER_PREFIX: &str = "apikey:";

/// Name of the key built from `admin_api_key`.
const ADMIN_KEY_NAME: &str = "admin";

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
    pub fn as_str(self) -> &'static str {
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

pub(super) struct KeyEntry {
    pub(super) digest: [u8; 32],
    pub(super) key: ApiKey,
}

/// Builds the API key table: `admin_api_key` as the key named "admin" with
/// permission `admin`, then `api_keys` in order.
pub(super) fn table(s: &Settings) -> Result<Vec<KeyEntry>, AuthError> {
    let mut entries = Vec::new();
    let mut names = HashSet::new();
    let mut add = |config_key: String,
                   raw: &str,
                   name: &str,
                   permissions: &[String]|
     -> Result<(), AuthError> {
        if !raw.starts_with(API_KEY_PREFIX) || raw.len() <= API_KEY_PREFIX.len() {
            return Err(AuthError::Config(format!(
                "{config_key}: an API key must start with \"{API_KEY_PREFIX}\""
            )));
        }
        if raw.len() < 20 {
            tracing::warn!(key = %config_key, "API key is short; use `tether apikey` to make one");
        }
        if name.is_empty() {
            return Err(AuthError::Config(format!("{config_key}: name is empty")));
        }
        if !names.insert(name.to_owned()) {
            return Err(AuthError::Config(format!(
                "{config_key}: the name \"{name}\" is used by another API key"
            )));
        }
        if let Some(bad) = permissions.iter().find(|p| Permission::parse(p).is_none()) {
            return Err(AuthError::Config(format!(
                "{config_key}: unknown permission \"{bad}\" (expected admin, sessions or read)"
            )));
        }
        let digest = sha256(raw.as_bytes());
        if entries.iter().any(|e: &KeyEntry| e.digest == digest) {
            return Err(AuthError::Config(format!(
                "{config_key}: the same key is configured twice"
            )));
        }
        entries.push(KeyEntry {
            digest,
            key: ApiKey {
                name: name.to_owned(),
                permissions: permissions.to_vec(),
            },
        });
        Ok(())
    };

    if let Some(admin) = &s.admin_api_key {
        add(
            "admin_api_key".to_owned(),
            admin,
            ADMIN_KEY_NAME,
            &[Permission::Admin.as_str().to_owned()],
        )?;
    }
    for (i, (key, name, permissions)) in s.api_keys.iter().enumerate() {
        add(format!("api_keys[{i}]"), key, name, permissions)?;
    }
    Ok(entries)
}
