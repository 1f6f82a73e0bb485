//! Credentials (`docs/protocol.md` §2.1): bare credentials, JWTs under a fixed secret, API
//! keys and their rules, and where a connection request's credential comes from.
//!
//! The input is lines (`\n`), each with one role, so that seeds read like what they are:
//!
//! 0. a bare credential, verified by two authenticators (HS256 with nothing more; HS512 with
//!    an issuer, an audience and no leeway);
//! 1. JWT claims (JSON), minted with the authenticator's own secret and verified;
//! 2. options: byte 0 picks the authenticator for line 1 (bit 0), what becomes of `exp`
//!    (bits 1-2: as given, an hour ahead, an hour ago, removed) and `trust_proxy` for the
//!    handshake (bit 3); bytes 1-3 change one byte of the minted token (position, value);
//! 3. an API key, 4. its name, 5. its permissions (comma-separated);
//! 6. a query string, 7 and on: request headers (`name: value`, the value with its spaces)
//!    for `transport::handshake`.
//!
//! What must hold:
//! - a bare credential is sorted by its shape alone (`tk_…` an API key, three parts a JWT),
//!   and verifying it never panics and never fails as a configuration error; an API key is
//!   accepted exactly when it is configured;
//! - a minted token is accepted exactly when its claims follow the rules of §2.1 (a `sub`,
//!   an `exp` not past, no `nbf` ahead, the configured `iss` and `aud`, the claims' types),
//!   and then the user is what the claims say; a token changed in one byte is refused;
//! - the API key rules are the documented ones, the authenticator accepts a key table
//!   exactly when `check_keys` finds no problem in it, and never shows a key in a message;
//! - the credential of a request is the first of bearer header, `token`, session cookie,
//!   `X-Session-Id`, `session_id`, each `%XX`-decoded as RFC 3986 has it (two hex digits);
//!   one that is there but empty is presented as it is (to be refused at once), except an
//!   empty session cookie, which is none; the headers read as RFC 9110 (field values),
//!   RFC 6750 (`Bearer`) and RFC 6265 (cookies) have them, not as tether reads them.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tether::auth::{
    check_key_name, check_keys, classify, is_valid_api_key, mint, AuthError, AuthMethod,
    Authenticator, Credential, JwtAlgorithm, Permission, Settings, Verified, API_KEY_MIN_LEN,
    API_KEY_PREFIX,
};
use tether::config::Config;
use tether::node::Presented;
use tether_fuzz::percent_decode;

const SECRET_A: &str = "fuzz-secret-a-0123456789abcdef0123456789";
const SECRET_B: &str = "fuzz-secret-b-0123456789abcdef0123456789abcdef";
const ADMIN_KEY: &str = "tk_fuzz_admin_0123456789abcdef";
const READ_KEY: &str = "tk_fuzz_read_0123456789abcdef";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "tether";
/// Seconds either side of "now" where a check's outcome depends on the clock; not judged.
const MARGIN: u64 = 120;

const REGISTERED: [&str; 11] = [
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

struct Auth {
    auth: Authenticator,
    secret: &'static str,
    alg: JwtAlgorithm,
    issuer: Option<&'static str>,
    audience: Option<&'static str>,
    leeway: u64,
}

fn settings(secret: &str, alg: JwtAlgorithm) -> Settings {
    Settings {
        secret: Some(secret.to_owned()),
        algorithm: alg,
        public_key_file: None,
        issuer: None,
        audience: None,
        leeway_seconds: 30,
        admin_api_key: Some(ADMIN_KEY.to_owned()),
        api_keys: vec![(
            READ_KEY.to_owned(),
            "dash".to_owned(),
            vec!["read".to_owned()],
        )],
    }
}

fn authenticators() -> &'static [Auth; 2] {
    static AUTH: OnceLock<[Auth; 2]> = OnceLock::new();
    AUTH.get_or_init(|| {
        let a = settings(SECRET_A, JwtAlgorithm::HS256);
        let b = Settings {
            issuer: Some(ISSUER.to_owned()),
            audience: Some(AUDIENCE.to_owned()),
            leeway_seconds: 0,
            ..settings(SECRET_B, JwtAlgorithm::HS512)
        };
        [
            Auth {
                auth: Authenticator::new(a).unwrap(),
                secret: SECRET_A,
                alg: JwtAlgorithm::HS256,
                issuer: None,
                audience: None,
                leeway: 30,
            },
            Auth {
                auth: Authenticator::new(b).unwrap(),
                secret: SECRET_B,
                alg: JwtAlgorithm::HS512,
                issuer: Some(ISSUER),
                audience: Some(AUDIENCE),
                leeway: 0,
            },
        ]
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A refusal a client can cause: never the authenticator's own configuration, and a
/// reason that fits a close frame.
fn check_refusal(e: &AuthError) {
    assert!(!matches!(e, AuthError::Config(_)), "{e:?}");
    assert!(e.reason().len() <= 123);
}

fn check_bare(raw: &str) {
    let expected = if raw.len() > API_KEY_PREFIX.len() && raw.starts_with(API_KEY_PREFIX) {
        Some(Credential::ApiKey(raw))
    } else {
        let parts: Vec<&str> = raw.split('.').collect();
        (parts.len() == 3 && !parts[0].is_empty() && !parts[1].is_empty())
            .then_some(Credential::Jwt(raw))
    };
    assert_eq!(classify(raw).ok(), expected, "{raw:?}");
    for a in authenticators() {
        match a.auth.verify(raw) {
            Err(e) => {
                check_refusal(&e);
                if expected.is_none() {
                    assert_eq!(e, AuthError::Malformed);
                }
                if matches!(expected, Some(Credential::ApiKey(_))) {
                    assert_eq!(e, AuthError::UnknownApiKey);
                    assert!(raw != ADMIN_KEY && raw != READ_KEY);
                }
            }
            Ok(v) => match expected {
                Some(Credential::ApiKey(_)) => {
                    assert_eq!(v.method, AuthMethod::ApiKey);
                    let name = match raw {
                        ADMIN_KEY => "admin",
                        READ_KEY => "dash",
                        other => panic!("unknown key {other:?} accepted"),
                    };
                    assert_eq!(v.user.id, format!("apikey:{name}"));
                }
                Some(Credential::Jwt(_)) => {
                    // Only a token signed with the secret (a seed) can get here.
                    assert_eq!(v.method, AuthMethod::Jwt);
                    let payload = raw.split('.').nth(1).unwrap();
                    let claims: Map<String, Value> =
                        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
                    assert_eq!(claims.get("sub"), Some(&Value::String(v.user.id.clone())));
                    let ver = a.auth.verify_jwt(raw).unwrap();
                    assert_eq!(ver.user, v.user);
                }
                None => panic!("{raw:?} is no credential but was accepted"),
            },
        }
    }
}

/// `exp` or `nbf` as jsonwebtoken reads a NumericDate: `Some(Err)` when it is there but
/// not one.
fn numeric_date(v: Option<&Value>) -> Option<Result<u64, ()>> {
    let v = v?;
    Some(match (v.as_u64(), v.as_f64()) {
        (Some(n), _) => Ok(n),
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f.round() as u64),
        _ => Err(()),
    })
}

fn string_list(v: Option<&Value>) -> Result<Vec<String>, ()> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned).ok_or(()))
            .collect(),
        Some(_) => Err(()),
    }
}

fn opt_string(v: Option<&Value>) -> Result<Option<String>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// `iss` or `aud` naming `want`: the string, or an array holding it.
fn names(v: Option<&Value>, want: &str) -> bool {
    match v {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => {
            a.iter().all(Value::is_string) && a.iter().any(|s| s.as_str() == Some(want))
        }
        _ => false,
    }
}

/// What verifying a token with these claims must give: `Some(Ok)` the user, `Some(Err)` a
/// refusal, `None` when it depends on the clock.
fn judge(a: &Auth, c: &Map<String, Value>) -> Option<Result<Verified, ()>> {
    let now = now();
    let mut refused = false;
    match numeric_date(c.get("exp")) {
        None | Some(Err(())) => refused = true,
        Some(Ok(exp)) => {
            let limit = now - a.leeway;
            if exp < limit.saturating_sub(MARGIN) {
                refused = true;
            } else if exp < limit + MARGIN {
                return None;
            }
        }
    }
    match numeric_date(c.get("nbf")) {
        None => {}
        Some(Err(())) => refused = true,
        Some(Ok(nbf)) => {
            let limit = now + a.leeway;
            if nbf > limit + MARGIN {
                refused = true;
            } else if nbf > limit.saturating_sub(MARGIN) {
                return None;
            }
        }
    }
    if let Some(iss) = a.issuer {
        refused |= !names(c.get("iss"), iss);
    }
    if let Some(aud) = a.audience {
        refused |= !names(c.get("aud"), aud);
    }
    let id = match c.get("sub") {
        Some(Value::String(s)) if !s.is_empty() && !s.starts_with("apikey:") => s.clone(),
        _ => return Some(Err(())),
    };
    let (Ok(permissions), Ok(roles), Ok(name), Ok(sid)) = (
        string_list(c.get("permissions")),
        string_list(c.get("roles")),
        opt_string(c.get("name")),
        opt_string(c.get("sid")),
    ) else {
        return Some(Err(()));
    };
    if refused {
        return Some(Err(()));
    }
    let mut claims = c.clone();
    for r in REGISTERED {
        claims.remove(r);
    }
    let exp = &c["exp"];
    let expires = exp
        .as_u64()
        .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
        .or_else(|| exp.as_f64().map(|s| (s * 1000.0) as i64));
    Some(Ok(Verified {
        user: tether::auth::AuthUser {
            id,
            permissions,
            roles,
            name,
            claims,
        },
        session_hint: sid.filter(|s| !s.is_empty()),
        token_expires_at_ms: expires,
        method: AuthMethod::Jwt,
    }))
}

fn check_minted(claims_text: &str, options: &[u8]) {
    let Ok(value) = serde_json::from_str::<Value>(claims_text) else {
        return;
    };
    let flags = options.first().copied().unwrap_or(0);
    let a = &authenticators()[usize::from(flags & 1)];
    let Value::Object(mut claims) = value else {
        assert!(matches!(
            mint(a.secret.as_bytes(), a.alg, &value),
            Err(AuthError::Invalid(_))
        ));
        return;
    };
    match (flags >> 1) & 3 {
        1 => {
            claims.insert("exp".into(), (now() + 3600).into());
        }
        2 => {
            claims.insert("exp".into(), (now() - 3600).into());
        }
        3 => {
            claims.remove("exp");
        }
        _ => {}
    }
    let token = mint(a.secret.as_bytes(), a.alg, &Value::Object(claims.clone())).unwrap();
    let got = a.auth.verify(&token);
    match &got {
        Ok(v) => {
            let again = a.auth.verify_jwt(&token).unwrap();
            assert_eq!(again.user, v.user);
        }
        Err(e) => {
            check_refusal(e);
            assert_eq!(a.auth.verify_jwt(&token).unwrap_err(), *e);
        }
    }
    match judge(a, &claims) {
        None => {}
        Some(Err(())) => assert!(got.is_err(), "accepted {claims:?}: {got:?}"),
        Some(Ok(want)) => {
            let v = got.unwrap_or_else(|e| panic!("refused {claims:?}: {e:?}"));
            assert_eq!(v.user, want.user);
            assert_eq!(v.session_hint, want.session_hint);
            assert_eq!(v.token_expires_at_ms, want.token_expires_at_ms);
            assert_eq!(v.method, AuthMethod::Jwt);
        }
    }

    // One byte changed, as a client could change it in flight.
    if let [_, hi, lo, byte, ..] = *options {
        let mut bytes = token.clone().into_bytes();
        let at = usize::from(u16::from_be_bytes([hi, lo])) % bytes.len();
        bytes[at] = byte & 0x7f;
        let tampered = String::from_utf8(bytes).unwrap();
        if tampered != token {
            match a.auth.verify(&tampered) {
                Ok(v) => panic!("a changed token was accepted: {tampered:?} as {v:?}"),
                Err(e) => check_refusal(&e),
            }
        }
    }
}

fn check_api_keys(key: &str, name: &str, permissions: &str) {
    let reference = key.starts_with("tk_")
        && key.len() >= API_KEY_MIN_LEN
        && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
    assert_eq!(is_valid_api_key(key), reference, "{key:?}");
    let name_ok = !name.trim().is_empty() && !name.chars().any(char::is_control);
    assert_eq!(check_key_name(name).is_ok(), name_ok, "{name:?}");

    let permissions: Vec<String> = if permissions.is_empty() {
        Vec::new()
    } else {
        permissions.split(',').map(str::to_owned).collect()
    };
    let problems = check_keys(Some(ADMIN_KEY), [(key, name, permissions.as_slice())]);
    for p in &problems {
        assert_eq!(p.secret, p.field.ends_with(".key"), "{p:?}");
    }
    let built = Authenticator::new(Settings {
        api_keys: vec![(key.to_owned(), name.to_owned(), permissions.clone())],
        ..settings(SECRET_A, JwtAlgorithm::HS256)
    });
    assert_eq!(built.is_ok(), problems.is_empty(), "{problems:?}");
    match built {
        Err(e) => {
            let text = e.to_string();
            // A name or a permission is shown as given, so a key written there too is.
            let elsewhere = name.contains(key) || permissions.iter().any(|p| p.contains(key));
            if key.len() >= API_KEY_MIN_LEN && !elsewhere {
                assert!(!text.contains(key), "a key in a message: {text}");
            }
        }
        Ok(auth) => {
            let v = auth.verify(key).unwrap();
            assert_eq!(v.method, AuthMethod::ApiKey);
            assert_eq!(v.user.id, format!("apikey:{name}"));
            assert_eq!(v.user.permissions, permissions);
            let found = auth.api_key(key).unwrap();
            for p in Permission::ALL {
                let allowed = permissions.iter().any(|q| q == "admin" || q == p.as_str());
                assert_eq!(found.allows(p), allowed);
            }
            let other = format!("{key}x");
            assert_eq!(auth.verify(&other).unwrap_err(), AuthError::UnknownApiKey);
        }
    }
}

/// RFC 9110 §5.5: the whitespace around a field value (SP, HTAB) is no part of it.
fn field_value(raw: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = raw.iter().position(|b| !ows(b)).unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &raw[start..end]
}

/// The bytes of a header, as text. (A credential that is not ASCII is still there, and is
/// refused as a credential; it does not stand aside for the next source in the order.)
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `Authorization: Bearer <credential>`: RFC 9110 §11.4 `auth-scheme [ 1*SP token68 ]`, the
/// scheme in any letter case (§11.1). `Some` the credential of a Bearer header (empty for
/// `Bearer` alone, which is then refused at once, as the README says), `None` any other.
fn bearer_credential(value: &[u8]) -> Option<String> {
    let scheme = b"bearer";
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let after = &value[scheme.len()..];
    match after.first() {
        None => Some(String::new()),
        // `Bearer\tx`, `Bearerx`: another scheme, or none; not a bearer credential.
        Some(&b) if b != b' ' => None,
        Some(_) => Some(text(field_value(after))),
    }
}

/// The value of cookie `name` in the `Cookie` fields, taken in order as one list (RFC 9113
/// §8.2.3 splits one into several): RFC 6265 §4.2.1 `name=value` pairs split by `;` and
/// spaces, a value in one pair of double quotes stands for what is between them (§4.1.1).
/// The first pair with that name (case-sensitive, §5.4 orders the most specific first)
/// decides, even when it is empty.
fn cookie_value(cookie_fields: &[&[u8]], name: &[u8]) -> Option<String> {
    for field in cookie_fields {
        for pair in field.split(|&b| b == b';') {
            let pair = field_value(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name {
                continue;
            }
            let mut value = &pair[eq + 1..];
            if let [b'"', inner @ .., b'"'] = value {
                value = inner;
            }
            return Some(text(value));
        }
    }
    None
}

fn check_handshake(query: &str, header_lines: &[&str], trust_proxy: bool) {
    let mut headers = http::HeaderMap::new();
    // The same fields as the model reads them: (name, value bytes as sent), in order.
    let mut fields: Vec<(&str, &[u8])> = Vec::new();
    for line in header_lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            continue;
        };
        headers.append(n, v);
        fields.push((name, value.as_bytes()));
    }
    let config = Config {
        trust_proxy,
        ..Config::default()
    };
    let hs = tether::transport::handshake(&config, &headers, Some(query), None);

    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let given = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // Field names in any letter case (RFC 9110 §5.1). A field that is not a list (one
    // `Authorization`, one `X-Session-Id`) is its first line: a second one is not HTTP.
    let all = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| field_value(v))
            .collect()
    };
    let first = |name: &str| all(name).first().map(|v| text(v));

    // SPEC §2 (docs/protocol.md §2.1): the first source found wins, in this order. The
    // flag says whether an empty value is a credential: the README's "empty credential"
    // (refused at once with 4501, never a wait for a first frame), except the cookie,
    // where the README says "An empty session cookie counts as none".
    let sources: [(Option<String>, fn(String) -> Presented, bool); 5] = [
        (
            all("authorization")
                .first()
                .and_then(|v| bearer_credential(v)),
            Presented::Token,
            true,
        ),
        (given("token"), Presented::Token, true),
        (
            cookie_value(&all("cookie"), config.session_cookie.as_bytes()),
            Presented::Session,
            false,
        ),
        (first("x-session-id"), Presented::Session, true),
        (given("session_id"), Presented::Session, true),
    ];
    let want = sources.into_iter().find_map(|(value, kind, empty_counts)| {
        value.filter(|v| empty_counts || !v.is_empty()).map(kind)
    });
    assert_eq!(hs.credential, want, "query {query:?}, headers {headers:?}");
    match (&hs.resume, param("resume")) {
        (None, None) => {}
        (Some(r), Some(id)) => {
            assert_eq!(r.connection_id, id);
            assert_eq!(r.token, param("resume_token").unwrap_or_default());
            assert_eq!(
                r.last_seq,
                param("last_seq").and_then(|s| s.parse::<u64>().ok())
            );
        }
        (got, want) => panic!("resume {got:?}, expected {want:?}"),
    }
    // Device info (SPEC §2). The contract says nothing of an empty field; it counts as
    // none (no `User-Agent` is ""), which is the server's behaviour and what a user expects.
    let device = |name: &str| first(name).filter(|v| !v.is_empty());
    let ip = if trust_proxy {
        // The first hop: what comes before the first comma, without its spaces.
        device("x-forwarded-for")
            .map(|h| {
                text(field_value(
                    h.as_bytes().split(|&b| b == b',').next().unwrap(),
                ))
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    assert_eq!(hs.ip, ip);
    assert_eq!(hs.user_agent, device("user-agent").unwrap_or_default());
    assert_eq!(
        hs.client_version,
        device("x-client-version").or_else(|| param("client_version"))
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let line = |i: usize| lines.get(i).copied().unwrap_or("");
    check_bare(line(0));
    check_minted(line(1), line(2).as_bytes());
    check_api_keys(line(3), line(4), line(5));
    let trust_proxy = line(2).as_bytes().first().is_some_and(|b| b & 8 != 0);
    check_handshake(line(6), lines.get(7..).unwrap_or(&[]), trust_proxy);
});
