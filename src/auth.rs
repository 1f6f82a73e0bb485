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

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::JwtAlgorithm;

/// Every API key starts with this, which is how a bare credential is told
/// apart from a JWT (a JWT's first segment is base64url JSON, which can never
/// start with `tk_`).
pub const API_KEY_PREFIX: &str = "tk_";

/// User ids of API-key callers are `apikey:<name>`; JWT subjects may not use
/// the prefix, so a token can never pose as an API key's identity.
const API_KEY_USER_PREFIX: &str = "apikey:";

/// Name of the key built from `admin_api_key`.
const ADMIN_KEY_NAME: &str = "admin";

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as long as the
/// hash (32 bytes for HS256), and anything shorter is within reach of offline guessing
/// from a single token.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Larger leeways make `exp` meaningless, and jsonwebtoken subtracts the
/// leeway from "now" in `u64`, so absurd values would overflow.
pub const MAX_LEEWAY_SECONDS: u64 = 86_400;

/// Claims that have a meaning of their own and are therefore not copied into
/// [`AuthUser::claims`].
const REGISTERED_CLAIMS: [&str; 11] = [
    "sub",
    "exp",
    "nbf",
    "iat",
    "iss",
    "aud",
    "jti",
    "sid",
    "permissions",
    "roles",
    "name",
];

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
    if jwt_segments(raw).is_some() {
        return Ok(Credential::Jwt(raw));
    }
    Err(AuthError::Malformed)
}

/// Splits `header.payload.signature`; header and payload must be non-empty.
fn jwt_segments(raw: &str) -> Option<(&str, &str, &str)> {
    let mut parts = raw.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None)
            if !header.is_empty() && !payload.is_empty() =>
        {
            Some((header, payload, signature))
        }
        _ => None,
    }
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

/// Constant-time equality of two byte strings. Only the length may leak.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// SHA-256 of `data` (API keys, resume tokens).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Signs `claims` (a JSON object) with a shared secret. HS* only: for the
/// asymmetric algorithms tether holds just the public key.
pub fn mint(secret: &[u8], alg: JwtAlgorithm, claims: &Value) -> Result<String, AuthError> {
    let algorithm = match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        other => {
            return Err(AuthError::Config(format!(
                "jwt_algorithm = {}: tether can only mint HS256/HS384/HS512 tokens",
                alg_name(other)
            )))
        }
    };
    if secret.is_empty() {
        return Err(AuthError::Config("jwt_secret is empty".to_owned()));
    }
    if !claims.is_object() {
        return Err(AuthError::Invalid(
            "claims must be a JSON object".to_owned(),
        ));
    }
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(format!("signing failed: {e}")))
}

fn alg_name(alg: JwtAlgorithm) -> &'static str {
    match alg {
        JwtAlgorithm::HS256 => "HS256",
        JwtAlgorithm::HS384 => "HS384",
        JwtAlgorithm::HS512 => "HS512",
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::EdDSA => "EdDSA",
    }
}

fn to_jwt_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The slice of the config this module reads. Kept separate from `Config`
/// so the unit tests below do not depend on every other config field.
#[derive(Clone)]
struct Settings {
    secret: Option<String>,
    algorithm: JwtAlgorithm,
    public_key_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_seconds: u64,
    admin_api_key: Option<String>,
    /// (key, name, permissions), in config order.
    api_keys: Vec<(String, String, Vec<String>)>,
}

impl Settings {
    fn from_config(cfg: &crate::config::Config) -> Self {
        Settings {
            secret: cfg.jwt_secret.clone(),
            algorithm: cfg.jwt_algorithm,
            public_key_file: cfg.jwt_public_key_file.clone(),
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
            leeway_seconds: cfg.jwt_leeway_seconds,
            admin_api_key: cfg.admin_api_key.clone(),
            api_keys: cfg
                .api_keys
                .iter()
                .map(|k| (k.key.clone(), k.name.clone(), k.permissions.clone()))
                .collect(),
        }
    }
}

struct KeyEntry {
    digest: [u8; 32],
    key: ApiKey,
}

/// Verifies JWTs and API keys. Built once from config; immutable after that,
/// so it is shared as an `Arc<Authenticator>` with no lock.
pub struct Authenticator {
    algorithm: JwtAlgorithm,
    decoding_key: DecodingKey,
    validation: Validation,
    api_keys: Vec<KeyEntry>,
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
    pub fn new(cfg: &crate::config::Config) -> Result<Self, AuthError> {
        Self::from_settings(Settings::from_config(cfg))
    }

    fn from_settings(s: Settings) -> Result<Self, AuthError> {
        if s.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(AuthError::Config(format!(
                "jwt_leeway_seconds = {}: must be at most {MAX_LEEWAY_SECONDS}",
                s.leeway_seconds
            )));
        }
        let algorithm = to_jwt_algorithm(s.algorithm);
        let decoding_key = decoding_key(&s)?;

        let mut validation = Validation::new(algorithm);
        validation.leeway = s.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &s.issuer {
            if issuer.is_empty() {
                return Err(AuthError::Config("jwt_issuer is empty".to_owned()));
            }
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &s.audience {
            Some(audience) if audience.is_empty() => {
                return Err(AuthError::Config("jwt_audience is empty".to_owned()));
            }
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.validate_aud = true;
                required.push("aud");
            }
            // jsonwebtoken rejects any token carrying `aud` when no audience
            // is set; SPEC says aud is only checked when configured.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        probe_key(s.algorithm, &decoding_key, &validation)?;

        Ok(Authenticator {
            algorithm: s.algorithm,
            decoding_key,
            validation,
            api_keys: api_key_table(&s)?,
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
        let (header, _, signature) = jwt_segments(token).ok_or(AuthError::Malformed)?;
        self.check_header(header)?;
        if signature.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding_key, &self.validation)
                .map_err(map_jwt_error)?;
        verified_from_claims(data.claims)
    }

    /// Reads the header ourselves before jsonwebtoken does: its `Header`
    /// type cannot even represent `alg: none`, and a parse failure there
    /// would hide that the real problem is the algorithm.
    fn check_header(&self, segment: &str) -> Result<(), AuthError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| AuthError::Malformed)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::Malformed)?;
        if alg != alg_name(self.algorithm) {
            return Err(AuthError::WrongAlgorithm);
        }
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood;
        // we understand none.
        if header.contains_key("crit") {
            return Err(AuthError::Invalid("unsupported crit header".to_owned()));
        }
        Ok(())
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

/// Loads the key named by config: the secret for HS*, the public key file
/// for the others.
fn decoding_key(s: &Settings) -> Result<DecodingKey, AuthError> {
    let name = alg_name(s.algorithm);
    match s.algorithm {
        JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
            let secret = s.secret.as_deref().unwrap_or_default();
            if secret.is_empty() {
                return Err(AuthError::Config(format!(
                    "jwt_secret is required when jwt_algorithm = {name}"
                )));
            }
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(AuthError::Config(format!(
                    "jwt_secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
                    secret.len()
                )));
            }
            Ok(DecodingKey::from_secret(secret.as_bytes()))
        }
        JwtAlgorithm::RS256 | JwtAlgorithm::ES256 | JwtAlgorithm::EdDSA => {
            let path = s.public_key_file.as_deref().ok_or_else(|| {
                AuthError::Config(format!(
                    "jwt_public_key_file is required when jwt_algorithm = {name}"
                ))
            })?;
            load_public_key(path, s.algorithm)
        }
    }
}

fn load_public_key(path: &Path, alg: JwtAlgorithm) -> Result<DecodingKey, AuthError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        AuthError::Config(format!("jwt_public_key_file = {shown}: cannot read: {e}"))
    })?;
    if pem
        .windows(b"PRIVATE KEY".len())
        .any(|w| w == b"PRIVATE KEY")
    {
        return Err(AuthError::Config(format!(
            "jwt_public_key_file = {shown}: holds a private key; give tether only the public key"
        )));
    }
    let (parsed, kind) = match alg {
        JwtAlgorithm::RS256 => (DecodingKey::from_rsa_pem(&pem), "RSA"),
        JwtAlgorithm::ES256 => (DecodingKey::from_ec_pem(&pem), "P-256 EC"),
        JwtAlgorithm::EdDSA => (DecodingKey::from_ed_pem(&pem), "Ed25519"),
        JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
            unreachable!("HS* algorithms use jwt_secret")
        }
    };
    let key = parsed.map_err(|_| {
        AuthError::Config(format!(
            "jwt_public_key_file = {shown}: not a PEM {kind} public key (jwt_algorithm = {})",
            alg_name(alg)
        ))
    })?;
    if alg == JwtAlgorithm::RS256 {
        check_rsa_public_key(key.as_bytes())
            .map_err(|why| AuthError::Config(format!("jwt_public_key_file = {shown}: {why}")))?;
    }
    Ok(key)
}

/// Verifies a dummy token once at start-up so that an unusable key fails
/// here, naming the config key, instead of on every connection. The EC and
/// Ed verifiers parse the key before looking at the signature, so a key
/// error here means the key is bad. (The RSA verifier reports a bad key as
/// a bad signature; [`check_rsa_public_key`] covers it instead.)
fn probe_key(
    alg: JwtAlgorithm,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<(), AuthError> {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}"}}"#, alg_name(alg)));
    let token = format!("{header}.e30.AAAA");
    match jsonwebtoken::decode::<Map<String, Value>>(&token, key, validation) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat
            ) =>
        {
            Err(AuthError::Config(format!(
                "jwt_public_key_file: the key cannot verify {} tokens",
                alg_name(alg)
            )))
        }
        _ => Ok(()),
    }
}

/// Reads one DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, tail) = rest.split_at(count);
        rest = tail;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Checks a PKCS#1 `RSAPublicKey { n, e }` the way the RSA verifier will
/// (it refuses moduli over 4096 bits, even `n`, even or tiny `e`), plus the
/// RFC 7518 minimum of 2048 bits.
fn check_rsa_public_key(der: &[u8]) -> Result<(), String> {
    const NOT_RSA: &str = "not an RSA public key";
    let (tag, body, rest) = der_element(der).ok_or(NOT_RSA)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(NOT_RSA.to_owned());
    }
    let (n_tag, n, rest) = der_element(body).ok_or(NOT_RSA)?;
    let (e_tag, e, rest) = der_element(rest).ok_or(NOT_RSA)?;
    if n_tag != 0x02 || e_tag != 0x02 || !rest.is_empty() {
        return Err(NOT_RSA.to_owned());
    }
    let strip = |x: &[u8]| -> Vec<u8> { x.iter().copied().skip_while(|b| *b == 0).collect() };
    let (n, e) = (strip(n), strip(e));
    let bits = match n.first() {
        Some(top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if bits < 2048 {
        return Err(format!(
            "RSA key is {bits} bits; at least 2048 are required"
        ));
    }
    if bits > 4096 {
        return Err(format!(
            "RSA key is {bits} bits; at most 4096 are supported"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even".to_owned());
    }
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    } else {
        u64::MAX
    };
    if !(3..(1 << 33)).contains(&exponent) || exponent & 1 == 0 {
        return Err("RSA public exponent is out of range".to_owned());
    }
    Ok(())
}

/// Builds the API key table: `admin_api_key` as the key named "admin" with
/// permission `admin`, then `api_keys` in order.
fn api_key_table(s: &Settings) -> Result<Vec<KeyEntry>, AuthError> {
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

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::MissingSubject,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            "sub" => AuthError::MissingSubject,
            other => AuthError::Invalid(format!("missing or non-numeric {other} claim")),
        },
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Invalid(format!("malformed {claim} claim"))
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            // probe_key should have caught this at start-up.
            tracing::error!(error = %e, "configured JWT key cannot verify tokens");
            AuthError::Config("jwt key cannot verify tokens".to_owned())
        }
        _ => AuthError::Invalid(e.to_string()),
    }
}

/// Turns verified claims into the principal; the registered claims are
/// consumed and the rest land in [`AuthUser::claims`].
fn verified_from_claims(mut claims: Map<String, Value>) -> Result<Verified, AuthError> {
    let id = match claims.remove("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub,
        _ => return Err(AuthError::MissingSubject),
    };
    if id.starts_with(API_KEY_USER_PREFIX) {
        return Err(AuthError::Invalid(format!(
            "sub may not start with \"{API_KEY_USER_PREFIX}\""
        )));
    }
    let permissions = string_list(claims.remove("permissions"), "permissions")?;
    let roles = string_list(claims.remove("roles"), "roles")?;
    let name = optional_string(claims.remove("name"), "name")?;
    let session_hint = optional_string(claims.remove("sid"), "sid")?.filter(|s| !s.is_empty());
    // exp was validated as present and numeric by jsonwebtoken.
    let token_expires_at_ms = claims.remove("exp").and_then(|exp| {
        exp.as_u64()
            .map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
            // `as` saturates, which is what an absurd float deserves.
            .or_else(|| exp.as_f64().map(|secs| (secs * 1000.0) as i64))
    });
    for registered in REGISTERED_CLAIMS {
        claims.remove(registered);
    }
    Ok(Verified {
        user: AuthUser {
            id,
            permissions,
            roles,
            name,
            claims,
        },
        session_hint,
        token_expires_at_ms,
        method: AuthMethod::Jwt,
    })
}

/// An array of strings; absent or null is empty.
fn string_list(value: Option<Value>, claim: &str) -> Result<Vec<String>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(AuthError::Invalid(format!(
                    "{claim} must be an array of strings"
                ))),
            })
            .collect(),
        Some(_) => Err(AuthError::Invalid(format!(
            "{claim} must be an array of strings"
        ))),
    }
}

/// A string; absent or null is `None`.
fn optional_string(value: Option<Value>, claim: &str) -> Result<Option<String>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AuthError::Invalid(format!("{claim} must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789";
    const ADMIN_KEY: &str = "tk_admin_0123456789abcdefghij";
    const SESSIONS_KEY: &str = "tk_sessions_0123456789abcdefghij";
    const READ_KEY: &str = "tk_read_0123456789abcdefghijklm";

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn hs_settings() -> Settings {
        Settings {
            secret: Some(SECRET.to_owned()),
            algorithm: JwtAlgorithm::HS256,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            admin_api_key: Some(ADMIN_KEY.to_owned()),
            api_keys: vec![
                (
                    SESSIONS_KEY.to_owned(),
                    "backend".to_owned(),
                    vec!["sessions".to_owned()],
                ),
                (
                    READ_KEY.to_owned(),
                    "dashboard".to_owned(),
                    vec!["read".to_owned()],
                ),
            ],
        }
    }

    fn hs_auth() -> Authenticator {
        Authenticator::from_settings(hs_settings()).expect("valid settings")
    }

    fn sign(claims: Value) -> String {
        mint(SECRET.as_bytes(), JwtAlgorithm::HS256, &claims).expect("mint")
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    fn config_error(settings: Settings) -> String {
        match Authenticator::from_settings(settings) {
            Err(AuthError::Config(msg)) => msg,
            Err(other) => panic!("expected a config error, got {other:?}"),
            Ok(_) => panic!("expected a config error, got an authenticator"),
        }
    }

    #[test]
    fn valid_token_yields_user() {
        let exp = now() + 600;
        let token = sign(json!({
            "sub": "user-1",
            "exp": exp,
            "iat": now(),
            "jti": "abc",
            "sid": "sess-1",
            "permissions": ["chat", "files"],
            "roles": ["member"],
            "name": "Ada",
            "tenant": "acme",
            "flags": {"beta": true},
        }));
        let v = hs_auth().verify(&token).expect("valid token");
        assert_eq!(v.method, AuthMethod::Jwt);
        assert_eq!(v.user.id, "user-1");
        assert_eq!(v.user.permissions, ["chat", "files"]);
        assert_eq!(v.user.roles, ["member"]);
        assert_eq!(v.user.name.as_deref(), Some("Ada"));
        assert_eq!(v.session_hint.as_deref(), Some("sess-1"));
        assert_eq!(v.token_expires_at_ms, Some(exp * 1000));
        let mut expected = Map::new();
        expected.insert("tenant".into(), json!("acme"));
        expected.insert("flags".into(), json!({"beta": true}));
        assert_eq!(v.user.claims, expected, "only unknown claims are kept");
    }

    #[test]
    fn minimal_token_has_empty_lists() {
        let v = hs_auth()
            .verify_jwt(&sign(json!({"sub": "u", "exp": now() + 60})))
            .unwrap();
        assert!(v.user.permissions.is_empty() && v.user.roles.is_empty());
        assert_eq!(v.user.name, None);
        assert_eq!(v.session_hint, None);
        assert!(v.user.claims.is_empty());
    }

    #[test]
    fn bad_signature_is_rejected() {
        let claims = json!({"sub": "u", "exp": now() + 600});
        let forged = mint(
            b"another-secret-entirely-0123456789",
            JwtAlgorithm::HS256,
            &claims,
        )
        .unwrap();
        assert_eq!(
            hs_auth().verify(&forged).unwrap_err(),
            AuthError::BadSignature
        );

        // A valid signature over a different payload.
        let token = sign(claims);
        let (header, _, signature) = jwt_segments(&token).unwrap();
        let payload = b64(&json!({"sub": "admin", "exp": now() + 600}));
        let tampered = format!("{header}.{payload}.{signature}");
        assert_eq!(
            hs_auth().verify(&tampered).unwrap_err(),
            AuthError::BadSignature
        );

        // The right algorithm but no signature at all.
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(
            hs_auth().verify(&unsigned).unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn alg_none_is_wrong_algorithm() {
        let claims = b64(&json!({"sub": "u", "exp": now() + 600}));
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let token = format!("{header}.{claims}.");
        let auth = hs_auth();
        assert_eq!(
            auth.verify_jwt(&token).unwrap_err(),
            AuthError::WrongAlgorithm
        );
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::WrongAlgorithm);
        // Same with some signature bytes appended.
        let token = format!("{header}.{claims}.c2ln");
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::WrongAlgorithm);
        // Case variants are not our algorithm either.
        let header = b64(&json!({"alg": "hs256"}));
        let token = format!("{header}.{claims}.c2ln");
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::WrongAlgorithm);
    }

    #[test]
    fn other_hmac_algorithm_is_wrong_algorithm() {
        let claims = json!({"sub": "u", "exp": now() + 600});
        for alg in [JwtAlgorithm::HS384, JwtAlgorithm::HS512] {
            let token = mint(SECRET.as_bytes(), alg, &claims).unwrap();
            assert_eq!(
                hs_auth().verify(&token).unwrap_err(),
                AuthError::WrongAlgorithm,
                "{alg:?} token against HS256 config"
            );
        }
    }

    #[test]
    fn header_defects_are_malformed() {
        let claims = b64(&json!({"sub": "u", "exp": now() + 600}));
        let auth = hs_auth();
        for header in [
            "!!!".to_owned(),
            URL_SAFE_NO_PAD.encode("not json"),
            b64(&json!(["alg", "HS256"])),
            b64(&json!({"typ": "JWT"})),
            b64(&json!({"alg": 256})),
        ] {
            let token = format!("{header}.{claims}.c2ln");
            assert_eq!(
                auth.verify_jwt(&token).unwrap_err(),
                AuthError::Malformed,
                "{header}"
            );
        }
        let header = b64(&json!({"alg": "HS256", "crit": ["b64"]}));
        assert!(matches!(
            auth.verify_jwt(&format!("{header}.{claims}.c2ln")),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expiry_respects_leeway() {
        let auth = hs_auth(); // leeway 30 s
        let expired = sign(json!({"sub": "u", "exp": now() - 120}));
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
        let within = sign(json!({"sub": "u", "exp": now() - 10}));
        assert!(
            auth.verify(&within).is_ok(),
            "10 s past exp is within 30 s leeway"
        );

        let strict = Authenticator::from_settings(Settings {
            leeway_seconds: 0,
            ..hs_settings()
        })
        .unwrap();
        assert_eq!(strict.verify(&within).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn exp_is_required_and_numeric() {
        let auth = hs_auth();
        for claims in [json!({"sub": "u"}), json!({"sub": "u", "exp": "tomorrow"})] {
            assert!(
                matches!(
                    auth.verify(&sign(claims.clone())),
                    Err(AuthError::Invalid(_))
                ),
                "{claims}"
            );
        }
    }

    #[test]
    fn future_nbf_is_not_yet_valid() {
        let auth = hs_auth();
        let future = sign(json!({"sub": "u", "exp": now() + 3600, "nbf": now() + 600}));
        assert_eq!(auth.verify(&future).unwrap_err(), AuthError::NotYetValid);
        let skewed = sign(json!({"sub": "u", "exp": now() + 3600, "nbf": now() + 10}));
        assert!(auth.verify(&skewed).is_ok(), "nbf within leeway");
        let past = sign(json!({"sub": "u", "exp": now() + 3600, "nbf": now() - 10}));
        assert!(auth.verify(&past).is_ok());
    }

    #[test]
    fn subject_is_required() {
        let auth = hs_auth();
        for claims in [
            json!({"exp": now() + 600}),
            json!({"sub": "", "exp": now() + 600}),
            json!({"sub": 42, "exp": now() + 600}),
            json!({"sub": null, "exp": now() + 600}),
        ] {
            assert_eq!(
                auth.verify(&sign(claims.clone())).unwrap_err(),
                AuthError::MissingSubject,
                "{claims}"
            );
        }
        let reserved = sign(json!({"sub": "apikey:admin", "exp": now() + 600}));
        assert!(matches!(auth.verify(&reserved), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn claim_types_are_checked() {
        let auth = hs_auth();
        for extra in [
            json!({"permissions": "admin"}),
            json!({"permissions": ["read", 1]}),
            json!({"roles": {"a": 1}}),
            json!({"name": 7}),
            json!({"sid": ["x"]}),
        ] {
            let mut claims = json!({"sub": "u", "exp": now() + 600});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            assert!(
                matches!(auth.verify(&sign(claims)), Err(AuthError::Invalid(_))),
                "{extra}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let auth = hs_auth();
        for raw in [
            "", "abc", "a.b", "a..c", ".b.c", "a.b.c.d", "tk_", "Bearer x", "....",
        ] {
            assert_eq!(
                auth.verify(raw).unwrap_err(),
                AuthError::Malformed,
                "{raw:?}"
            );
        }
        // JWT-shaped garbage.
        for raw in ["a.b.c", "eyJ.eyJ.eyJ", "%%%.%%%.%%%"] {
            assert_eq!(
                auth.verify(raw).unwrap_err(),
                AuthError::Malformed,
                "{raw:?}"
            );
        }
        // Correctly signed, but the payload is not a JSON object.
        let raw = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!([1, 2]),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify(&raw).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn authenticator_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
    }

    #[test]
    fn classify_sorts_by_shape() {
        assert_eq!(classify("a.b.c"), Ok(Credential::Jwt("a.b.c")));
        assert_eq!(classify("a.b."), Ok(Credential::Jwt("a.b.")));
        assert_eq!(classify("tk_abc"), Ok(Credential::ApiKey("tk_abc")));
        assert_eq!(classify("tk_a.b.c"), Ok(Credential::ApiKey("tk_a.b.c")));
        for raw in ["", "tk_", "abc", "a.b", "a..c", "a.b.c.d", "TK_abc"] {
            assert_eq!(classify(raw), Err(AuthError::Malformed), "{raw:?}");
        }
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let auth = Authenticator::from_settings(Settings {
            issuer: Some("https://id.example".to_owned()),
            ..hs_settings()
        })
        .unwrap();
        let good = sign(json!({"sub": "u", "exp": now() + 600, "iss": "https://id.example"}));
        assert!(auth.verify(&good).is_ok());
        let wrong = sign(json!({"sub": "u", "exp": now() + 600, "iss": "https://evil.example"}));
        assert_eq!(auth.verify(&wrong).unwrap_err(), AuthError::WrongIssuer);
        let missing = sign(json!({"sub": "u", "exp": now() + 600}));
        assert_eq!(auth.verify(&missing).unwrap_err(), AuthError::WrongIssuer);
        // Not configured: any issuer passes.
        assert!(hs_auth().verify(&wrong).is_ok());
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let auth = Authenticator::from_settings(Settings {
            audience: Some("tether".to_owned()),
            ..hs_settings()
        })
        .unwrap();
        let good = sign(json!({"sub": "u", "exp": now() + 600, "aud": "tether"}));
        assert!(auth.verify(&good).is_ok());
        let listed = sign(json!({"sub": "u", "exp": now() + 600, "aud": ["other", "tether"]}));
        assert!(auth.verify(&listed).is_ok());
        let wrong = sign(json!({"sub": "u", "exp": now() + 600, "aud": "other"}));
        assert_eq!(auth.verify(&wrong).unwrap_err(), AuthError::WrongAudience);
        let missing = sign(json!({"sub": "u", "exp": now() + 600}));
        assert_eq!(auth.verify(&missing).unwrap_err(), AuthError::WrongAudience);
        // Not configured: tokens carrying aud still pass, and aud is not a
        // custom claim.
        let v = hs_auth()
            .verify(&wrong)
            .expect("aud ignored when unconfigured");
        assert!(v.user.claims.is_empty());
    }

    #[test]
    fn api_keys_resolve_to_users() {
        let auth = hs_auth();

        let admin = auth.verify(ADMIN_KEY).expect("admin key");
        assert_eq!(admin.method, AuthMethod::ApiKey);
        assert_eq!(admin.user.id, "apikey:admin");
        assert_eq!(admin.user.permissions, ["admin"]);
        assert_eq!(admin.user.name.as_deref(), Some("admin"));
        assert!(admin.user.roles.is_empty() && admin.user.claims.is_empty());
        assert_eq!(admin.session_hint, None);
        assert_eq!(admin.token_expires_at_ms, None);

        let backend = auth.verify(SESSIONS_KEY).expect("configured key");
        assert_eq!(backend.user.id, "apikey:backend");
        assert_eq!(backend.user.permissions, ["sessions"]);

        assert_eq!(
            auth.verify("tk_not_a_configured_key_000000").unwrap_err(),
            AuthError::UnknownApiKey
        );
        assert_eq!(auth.api_key("tk_nope"), None);
        // A prefix or extension of a real key is not that key.
        assert_eq!(auth.api_key(&ADMIN_KEY[..ADMIN_KEY.len() - 1]), None);
        assert_eq!(auth.api_key(&format!("{ADMIN_KEY}x")), None);
    }

    #[test]
    fn api_key_permissions() {
        let auth = hs_auth();
        let admin = auth.api_key(ADMIN_KEY).unwrap();
        assert!(Permission::ALL.iter().all(|p| admin.allows(*p)));

        let sessions = auth.api_key(SESSIONS_KEY).unwrap();
        assert!(sessions.allows(Permission::Sessions));
        assert!(!sessions.allows(Permission::Read));
        assert!(!sessions.allows(Permission::Admin));

        let read = auth.api_key(READ_KEY).unwrap();
        assert!(read.allows(Permission::Read));
        assert!(!read.allows(Permission::Sessions));
        assert!(!read.allows(Permission::Admin));

        let none = ApiKey {
            name: "n".into(),
            permissions: vec![],
        };
        assert!(!Permission::ALL.iter().any(|p| none.allows(*p)));
    }

    #[test]
    fn bad_settings_name_the_config_key() {
        assert!(config_error(Settings {
            secret: None,
            ..hs_settings()
        })
        .contains("jwt_secret"));
        assert!(config_error(Settings {
            secret: Some(String::new()),
            ..hs_settings()
        })
        .contains("jwt_secret"));
        assert!(config_error(Settings {
            admin_api_key: Some("admin-without-prefix".into()),
            ..hs_settings()
        })
        .contains("admin_api_key"));

        let mut s = hs_settings();
        s.api_keys[1].2 = vec!["write".into()];
        let msg = config_error(s);
        assert!(
            msg.contains("api_keys[1]") && msg.contains("write"),
            "{msg}"
        );

        let mut s = hs_settings();
        s.api_keys[1].0 = SESSIONS_KEY.into();
        assert!(config_error(s).contains("api_keys[1]"));

        let mut s = hs_settings();
        s.api_keys[0].1 = "admin".into();
        assert!(config_error(s).contains("api_keys[0]"));

        assert!(config_error(Settings {
            leeway_seconds: u64::MAX,
            ..hs_settings()
        })
        .contains("jwt_leeway_seconds"));
        assert!(config_error(Settings {
            algorithm: JwtAlgorithm::RS256,
            ..hs_settings()
        })
        .contains("jwt_public_key_file"));
        assert!(config_error(Settings {
            algorithm: JwtAlgorithm::EdDSA,
            public_key_file: Some("/nonexistent/tether/key.pem".into()),
            ..hs_settings()
        })
        .contains("/nonexistent/tether/key.pem"));
        assert!(config_error(Settings {
            issuer: Some(String::new()),
            ..hs_settings()
        })
        .contains("jwt_issuer"));
    }

    #[test]
    fn a_short_secret_is_refused() {
        // A secret can reach the authenticator without the config's checks: from a
        // secrets.toml written by hand, or a Config built in code.
        let msg = config_error(Settings {
            secret: Some("0123456789abcdef0123456789abcde".into()),
            ..hs_settings()
        });
        assert!(
            msg.contains("jwt_secret") && msg.contains("31 bytes") && !msg.contains("0123"),
            "{msg}"
        );
        assert!(Authenticator::from_settings(Settings {
            secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..hs_settings()
        })
        .is_ok());
    }

    #[test]
    fn debug_does_not_leak_keys() {
        let shown = format!("{:?}", hs_auth());
        assert!(
            !shown.contains(SECRET) && !shown.contains(ADMIN_KEY),
            "{shown}"
        );
        assert!(shown.contains("backend"));
    }

    #[test]
    fn mint_round_trips_every_hmac_algorithm() {
        for alg in [
            JwtAlgorithm::HS256,
            JwtAlgorithm::HS384,
            JwtAlgorithm::HS512,
        ] {
            let auth = Authenticator::from_settings(Settings {
                algorithm: alg,
                ..hs_settings()
            })
            .unwrap();
            let token = mint(
                SECRET.as_bytes(),
                alg,
                &json!({"sub": "u", "exp": now() + 60}),
            )
            .unwrap();
            assert_eq!(auth.verify(&token).unwrap().user.id, "u", "{alg:?}");
        }
        let claims = json!({"sub": "u", "exp": now() + 60});
        assert!(matches!(
            mint(SECRET.as_bytes(), JwtAlgorithm::RS256, &claims),
            Err(AuthError::Config(_))
        ));
        assert!(mint(b"", JwtAlgorithm::HS256, &claims).is_err());
        assert!(mint(SECRET.as_bytes(), JwtAlgorithm::HS256, &json!([1])).is_err());
    }

    #[test]
    fn reasons_are_short_and_fixed() {
        let all = [
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongAlgorithm,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingSubject,
            AuthError::UnknownApiKey,
            AuthError::Invalid("secret internal detail".into()),
            AuthError::Config("/etc/secret/path".into()),
        ];
        for e in all {
            let reason = e.reason();
            assert!(!reason.is_empty() && reason.len() < 64, "{reason}");
            assert!(!reason.contains("secret"), "{reason}");
        }
        assert_eq!(AuthError::Expired.reason(), "token expired");
        assert_eq!(AuthError::BadSignature.reason(), "bad signature");
    }

    #[test]
    fn ct_eq_and_sha256() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn auth_user_serializes_camel_case_and_claims_round_trip() {
        let mut claims = Map::new();
        claims.insert("tenant".into(), json!("acme"));
        let user = AuthUser {
            id: "u".into(),
            permissions: vec!["p".into()],
            roles: vec![],
            name: None,
            claims,
        };
        assert_eq!(
            serde_json::to_value(&user).unwrap(),
            json!({"id": "u", "permissions": ["p"], "roles": [], "name": null,
                   "claims": {"tenant": "acme"}})
        );
        let json = user.claims_json();
        assert_eq!(AuthUser::claims_from_json(&json).unwrap(), user.claims);
        assert_eq!(
            AuthUser::claims_from_json("{}").unwrap(),
            Map::<String, Value>::new()
        );
        assert!(AuthUser::claims_from_json("[]").is_err());
    }

    #[test]
    fn rsa_modulus_checks() {
        assert!(check_rsa_public_key(b"").is_err());
        assert!(check_rsa_public_key(&[0x30, 0x00]).is_err());
        // SEQUENCE { INTEGER 0x00ff.. (1024 bits), INTEGER 65537 }.
        let mut n = vec![0x00];
        n.extend(std::iter::repeat_n(0xff, 128));
        let mut body = vec![0x02, 0x81, n.len() as u8];
        body.extend(&n);
        body.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut der = vec![0x30, 0x81, body.len() as u8];
        der.extend(&body);
        let err = check_rsa_public_key(&der).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
    }

    /// Asymmetric keys come from the `openssl` CLI, so these tests exercise
    /// real PEM files as an operator would write them.
    mod asymmetric {
        use super::*;
        use std::process::Command;

        fn openssl_available() -> bool {
            let found = Command::new("openssl")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                eprintln!("note: openssl CLI not found; skipping asymmetric JWT tests");
            }
            found
        }

        /// Generates a key pair; returns (private PEM bytes, public PEM path).
        fn keypair(dir: &Path, stem: &str, genpkey_args: &[&str]) -> (Vec<u8>, PathBuf) {
            let private = dir.join(format!("{stem}.key.pem"));
            let public = dir.join(format!("{stem}.pub.pem"));
            // `output()` rather than `status()`: genpkey prints progress dots.
            let run = |cmd: &mut Command| {
                let out = cmd.output().expect("run openssl");
                assert!(
                    out.status.success(),
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(Command::new("openssl")
                .arg("genpkey")
                .args(genpkey_args)
                .arg("-out")
                .arg(&private));
            run(Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public));
            (std::fs::read(&private).unwrap(), public)
        }

        fn rsa_args(bits: &'static str) -> Vec<&'static str> {
            vec!["-algorithm", "RSA", "-pkeyopt", bits]
        }

        const EC_P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        const EC_P384: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
        const ED25519: &[&str] = &["-algorithm", "ED25519"];

        fn settings(alg: JwtAlgorithm, public: &Path) -> Settings {
            Settings {
                secret: None,
                algorithm: alg,
                public_key_file: Some(public.to_owned()),
                ..hs_settings()
            }
        }

        fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
            jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
        }

        /// Round trip, wrong key, and the HMAC-with-public-key confusion.
        fn exercise(alg: JwtAlgorithm, private: &[u8], other_private: &[u8], public: &Path) {
            let jwt_alg = to_jwt_algorithm(alg);
            let encoding = |pem: &[u8]| {
                match alg {
                    JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
                    JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
                    JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                    _ => unreachable!(),
                }
                .expect("private key PEM")
            };
            let auth = Authenticator::from_settings(settings(alg, public)).expect("authenticator");
            let claims = json!({"sub": "u-42", "exp": now() + 600, "org": "acme"});

            let token = sign_with(jwt_alg, &encoding(private), &claims);
            let v = auth.verify(&token).expect("token signed with matching key");
            assert_eq!(v.user.id, "u-42");
            assert_eq!(v.user.claims.get("org"), Some(&json!("acme")));

            let forged = sign_with(jwt_alg, &encoding(other_private), &claims);
            assert_eq!(
                auth.verify(&forged).unwrap_err(),
                AuthError::BadSignature,
                "{alg:?}"
            );

            let expired = sign_with(
                jwt_alg,
                &encoding(private),
                &json!({"sub": "u", "exp": now() - 600}),
            );
            assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);

            // Key confusion: HMAC keyed with the public key the server holds.
            let public_pem = std::fs::read(public).unwrap();
            for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let confused = sign_with(hs, &EncodingKey::from_secret(&public_pem), &claims);
                assert_eq!(
                    auth.verify(&confused).unwrap_err(),
                    AuthError::WrongAlgorithm,
                    "{hs:?} token against {alg:?}"
                );
            }
        }

        #[test]
        fn rs256() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = keypair(dir.path(), "a", &rsa_args("rsa_keygen_bits:2048"));
            let (other, _) = keypair(dir.path(), "b", &rsa_args("rsa_keygen_bits:2048"));
            exercise(JwtAlgorithm::RS256, &private, &other, &public);

            // Operator mistakes fail at start-up, naming the key.
            let (_, small) = keypair(dir.path(), "small", &rsa_args("rsa_keygen_bits:1024"));
            let msg = config_error(settings(JwtAlgorithm::RS256, &small));
            assert!(
                msg.contains("jwt_public_key_file") && msg.contains("1024"),
                "{msg}"
            );
            let msg = config_error(settings(JwtAlgorithm::RS256, &dir.path().join("a.key.pem")));
            assert!(msg.contains("private key"), "{msg}");
            let (_, ec_public) = keypair(dir.path(), "ec", EC_P256);
            let msg = config_error(settings(JwtAlgorithm::RS256, &ec_public));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
            let garbage = dir.path().join("garbage.pem");
            std::fs::write(&garbage, "hello").unwrap();
            let msg = config_error(settings(JwtAlgorithm::RS256, &garbage));
            assert!(msg.contains("garbage.pem"), "{msg}");
        }

        #[test]
        fn es256() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = keypair(dir.path(), "a", EC_P256);
            let (other, _) = keypair(dir.path(), "b", EC_P256);
            exercise(JwtAlgorithm::ES256, &private, &other, &public);

            // A P-384 key parses as "EC" but cannot verify ES256.
            let (_, p384) = keypair(dir.path(), "p384", EC_P384);
            let msg = config_error(settings(JwtAlgorithm::ES256, &p384));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
            let (_, rsa_public) = keypair(dir.path(), "rsa", &rsa_args("rsa_keygen_bits:2048"));
            let msg = config_error(settings(JwtAlgorithm::ES256, &rsa_public));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
        }

        #[test]
        fn eddsa() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = keypair(dir.path(), "a", ED25519);
            let (other, _) = keypair(dir.path(), "b", ED25519);
            exercise(JwtAlgorithm::EdDSA, &private, &other, &public);

            let (_, ec_public) = keypair(dir.path(), "ec", EC_P256);
            let msg = config_error(settings(JwtAlgorithm::EdDSA, &ec_public));
            assert!(msg.contains("jwt_public_key_file"), "{msg}");
        }

        #[test]
        fn asymmetric_config_rejects_other_asymmetric_algorithms() {
            if !openssl_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (_, rsa_public) = keypair(dir.path(), "rsa", &rsa_args("rsa_keygen_bits:2048"));
            let (ec_private, _) = keypair(dir.path(), "ec", EC_P256);
            let auth =
                Authenticator::from_settings(settings(JwtAlgorithm::RS256, &rsa_public)).unwrap();
            let token = sign_with(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&ec_private).unwrap(),
                &json!({"sub": "u", "exp": now() + 600}),
            );
            assert_eq!(auth.verify(&token).unwrap_err(), AuthError::WrongAlgorithm);
        }
    }
}
