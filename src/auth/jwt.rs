//! JSON Web Tokens: the validation rules of SPEC §2, the header read before
//! jsonwebtoken reads it, its errors mapped to [`AuthError`], claims turned into an
//! [`AuthUser`], and minting for `tether token`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::api_keys::API_KEY_USER_PREFIX;
use super::JwtAlgorithm;
use super::{AuthError, AuthMethod, AuthUser, Settings, Verified};

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

pub(super) fn alg_name(alg: JwtAlgorithm) -> &'static str {
    match alg {
        JwtAlgorithm::HS256 => "HS256",
        JwtAlgorithm::HS384 => "HS384",
        JwtAlgorithm::HS512 => "HS512",
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::EdDSA => "EdDSA",
    }
}

pub(super) fn to_jwt_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Splits `header.payload.signature`; header and payload must be non-empty.
pub(super) fn jwt_segments(raw: &str) -> Option<(&str, &str, &str)> {
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

/// The checks jsonwebtoken runs: the one configured algorithm, `exp` always, `nbf`, and
/// `iss`/`aud` when configured, in which case a token without them is refused too.
pub(super) fn validation(s: &Settings) -> Result<Validation, AuthError> {
    if s.leeway_seconds > MAX_LEEWAY_SECONDS {
        return Err(AuthError::Config(format!(
            "jwt_leeway_seconds = {}: must be at most {MAX_LEEWAY_SECONDS}",
            s.leeway_seconds
        )));
    }
    let mut validation = Validation::new(to_jwt_algorithm(s.algorithm));
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
    Ok(validation)
}

/// Reads the header ourselves before jsonwebtoken does: its `Header`
/// type cannot even represent `alg: none`, and a parse failure there
/// would hide that the real problem is the algorithm.
pub(super) fn check_header(algorithm: JwtAlgorithm, segment: &str) -> Result<(), AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AuthError::Malformed)?;
    if alg != alg_name(algorithm) {
        return Err(AuthError::WrongAlgorithm);
    }
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood;
    // we understand none.
    if header.contains_key("crit") {
        return Err(AuthError::Invalid("unsupported crit header".to_owned()));
    }
    Ok(())
}

pub(super) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
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
pub(super) fn verified_from_claims(mut claims: Map<String, Value>) -> Result<Verified, AuthError> {
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
