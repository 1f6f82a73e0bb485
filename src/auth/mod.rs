//! Credentials: who is on the other end of a socket or an API call.
//!
//! Three kinds of credential reach tether (SPEC §2): a JWT issued by the
//! application, a server-side session id, and an API key (`tk_…`). This
//! module knows the first and the last; session ids are looked up in the
//! store by the sessions module, which builds its own [`Verified`] with
//! [`AuthMethod::Session`].
//!
//! Everything here is synchronous and allocation-light, so an
//! [`Authenticator`] is built once at start-up, put in an `Arc`, and called
//! from every connection task without locking.
//!
//! Rules that are easy to get wrong and are therefore enforced here rather
//! than left to callers:
//!
//! - The JWT algorithm is fixed by config. The header is checked against it
//!   before any key is touched, so an HS256 token "signed" with our RSA public
//!   key (the key-confusion attack) or an `alg: none` token is refused as
//!   [`AuthError::WrongAlgorithm`].
//! - When an issuer or audience is configured, a token *without* `iss`/`aud`
//!   is refused too (jsonwebtoken on its own only checks them when present).
//! - API keys are compared as SHA-256 digests, in constant time, against every
//!   configured key without stopping at the first match.
//!
//! This file holds the [`Authenticator`] and the credential types; the rest is split by
//! concern:
//!
//! - `jwt.rs`: the JWT rules, claims, and minting.
//! - `keys.rs`: the key a JWT is verified with, checked at start-up.
//! - `api_keys.rs`: API keys: the one set of rules for them, their permissions, the
//!   key table.
//! - `crypto.rs`: hashing, constant-time comparison, random tokens and ids.

use std::fmt;
use std::path::PathBuf;

use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod api_keys;
mod crypto;
mod jwt;
mod keys;

pub use api_keys::{
    api_key_shape, check_key_name, check_keys, check_permissions, is_valid_api_key, new_api_key,
    ApiKey, KeyProblem, Permission, ADMIN_KEY_NAME, API_KEY_MIN_LEN, API_KEY_PREFIX, PERMISSIONS,
};
pub use crypto::{ct_eq, new_session_id, new_token, new_uuid, random_token, sha256};
pub use jwt::{mint, MAX_LEEWAY_SECONDS};
pub use keys::MIN_HMAC_SECRET_BYTES;

/// The authenticated principal, as returned by `GET /v1/connections/{id}/user`.
///
/// `claims` holds the token's non-registered claims. `serde_json::Value`
/// cannot go through bincode, so the store keeps them as
/// [`AuthUser::claims_json`] and restores them with
/// [`AuthUser::claims_from_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthUser {
    pub id: String,
    pub permissions: Vec<String>,
    pub roles: Vec<String>,
    pub name: Option<String>,
    pub claims: Map<String, Value>,
}

impl AuthUser {
    /// The extra claims as a JSON object string (`{}` when there are none).
    pub fn claims_json(&self) -> String {
        // Serializing a map of JSON values cannot fail: keys are strings.
        serde_json::to_string(&self.claims).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Inverse of [`AuthUser::claims_json`]; fails on anything but an object.
    pub fn claims_from_json(json: &str) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// A bare credential, sorted by shape (SPEC §2) before anything is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
}

/// Sorts a credential by its shape: an API key when it starts with `tk_`,
/// a JWT when it has three dot-separated segments, else
/// [`AuthError::Malformed`].
///
/// The signature segment may be empty: that is an unsecured (`alg: none`)
/// JWT, and it is better reported as [`AuthError::WrongAlgorithm`] by
/// [`Authenticator::verify_jwt`] than as a malformed credential.
pub fn classify(raw: &str) -> Result<Credential<'_>, AuthError> {
    if raw.len() > API_KEY_PREFIX.len() && raw.starts_with(API_KEY_PREFIX) {
        return Ok(Credential::ApiKey(raw));
    }
    if jwt::jwt_segments(raw).is_some() {
        return Ok(Credential::Jwt(raw));
    }
    Err(AuthError::Malformed)
}

/// How a connection proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    Session,
}

/// The outcome of a successful credential check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: AuthUser,
    /// The JWT's `sid` claim: a tether session the token asks to be linked
    /// to. The caller links it only if that session exists and belongs to
    /// `user.id`.
    pub session_hint: Option<String>,
    /// `exp` in Unix milliseconds, for JWTs.
    pub token_expires_at_ms: Option<i64>,
    pub method: AuthMethod,
}

/// Why a credential was refused, or why the authenticator could not be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum AuthError {
    #[error("malformed credential")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token algorithm not allowed")]
    WrongAlgorithm,
    #[error("wrong token issuer")]
    WrongIssuer,
    #[error("wrong token audience")]
    WrongAudience,
    #[error("token has no subject")]
    MissingSubject,
    #[error("unknown api key")]
    UnknownApiKey,
    /// Any other defect of an otherwise well-formed token; the text is for
    /// logs, never for the client (see [`AuthError::reason`]).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Bad auth configuration; the text names the config key.
    #[error("{0}")]
    Config(String),
}

impl AuthError {
    /// A short reason for a close frame or an HTTP error body: fixed text,
    /// well under the 123-byte close-frame limit, never internals.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed credential",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::WrongAlgorithm => "algorithm not allowed",
            AuthError::WrongIssuer => "wrong issuer",
            AuthError::WrongAudience => "wrong audience",
            AuthError::MissingSubject => "missing subject",
            AuthError::UnknownApiKey => "unknown api key",
            AuthError::Invalid(_) => "invalid token",
            AuthError::Config(_) => "authentication unavailable",
        }
    }
}

/// The JWT algorithm, fixed by configuration (`jwt_algorithm`).
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

/// The slice of the config this module reads. Kept separate from `Config`
/// so the unit tests below do not depend on every other config field.
#[derive(Clone)]
pub struct Settings {
    pub secret: Option<String>,
    pub algorithm: JwtAlgorithm,
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_seconds: u64,
    pub admin_api_key: Option<String>,
    /// (key, name, permissions), in config order.
    pub api_keys: Vec<(String, String, Vec<String>)>,
}

/// Verifies JWTs and API keys. Built once from config; immutable after that,
/// so it is shared as an `Arc<Authenticator>` with no lock.
pub struct Authenticator {
    algorithm: JwtAlgorithm,
    decoding_key: DecodingKey,
    validation: Validation,
    api_keys: Vec<api_keys::KeyEntry>,
}

impl fmt::Debug for Authenticator {
    // Hand-written so that neither key material nor key digests reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("leeway_seconds", &self.validation.leeway)
            .field(
                "api_keys",
                &self
                    .api_keys
                    .iter()
                    .map(|e| &e.key.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier from config. Fails with [`AuthError::Config`]
    /// naming the offending key: a missing secret or public key file, a key
    /// file that cannot be read, holds a private key or a key of the wrong
    /// type, an API key without the `tk_` prefix, an unknown permission, a
    /// duplicate key or name.
    pub fn new(settings: Settings) -> Result<Self, AuthError> {
        Self::from_settings(settings)
    }

    fn from_settings(s: Settings) -> Result<Self, AuthError> {
        let validation = jwt::validation(&s)?;
        let decoding_key = keys::decoding_key(&s)?;
        keys::probe_key(s.algorithm, &decoding_key, &validation)?;
        Ok(Authenticator {
            algorithm: s.algorithm,
            decoding_key,
            validation,
            api_keys: api_keys::table(&s)?,
        })
    }

    /// The configured JWT algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Full check of a bare credential (header, query or auth frame):
    /// classify it, then verify it as a JWT or look it up as an API key.
    pub fn verify(&self, raw: &str) -> Result<Verified, AuthError> {
        match classify(raw)? {
            Credential::Jwt(token) => self.verify_jwt(token),
            Credential::ApiKey(key) => {
                let key = self.api_key(key).ok_or(AuthError::UnknownApiKey)?;
                Ok(Verified {
                    user: key.user(),
                    session_hint: None,
                    token_expires_at_ms: None,
                    method: AuthMethod::ApiKey,
                })
            }
        }
    }

    /// Verifies a JWT under SPEC §2's rules and builds its [`AuthUser`].
    pub fn verify_jwt(&self, token: &str) -> Result<Verified, AuthError> {
        let (header, _, signature) = jwt::jwt_segments(token).ok_or(AuthError::Malformed)?;
        jwt::check_header(self.algorithm, header)?;
        if signature.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding_key, &self.validation)
                .map_err(jwt::map_jwt_error)?;
        jwt::verified_from_claims(data.claims)
    }

    /// Looks an API key up. Compares SHA-256 digests with [`ct_eq`] against
    /// every configured key without stopping early, so neither the position
    /// of a match nor a shared prefix shows in the timing.
    pub fn api_key(&self, key: &str) -> Option<ApiKey> {
        let digest = sha256(key.as_bytes());
        let mut found = None;
        for entry in &self.api_keys {
            if ct_eq(&digest, &entry.digest) {
                found = Some(&entry.key);
            }
        }
        found.cloned()
    }
}

#[cfg(test)]
mod tests;
