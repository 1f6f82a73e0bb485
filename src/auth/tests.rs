//! The authenticator as its callers use it, and the fixtures the submodules' tests share.

use super::jwt::jwt_segments;
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

pub(super) const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789";
pub(super) const ADMIN_KEY: &str = "tk_admin_0123456789abcdefghij";
pub(super) const SESSIONS_KEY: &str = "tk_sessions_0123456789abcdefghij";
pub(super) const READ_KEY: &str = "tk_read_0123456789abcdefghijklm";

pub(super) fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

pub(super) fn hs_settings() -> Settings {
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

pub(super) fn hs_auth() -> Authenticator {
    Authenticator::from_settings(hs_settings()).expect("valid settings")
}

pub(super) fn sign(claims: Value) -> String {
    mint(SECRET.as_bytes(), JwtAlgorithm::HS256, &claims).expect("mint")
}

pub(super) fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

pub(super) fn config_error(settings: Settings) -> String {
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
