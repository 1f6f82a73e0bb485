//! Authentication over `/ws` (SPEC §2): every way in, every forged or stale credential kept
//! out with 4501 (and a `disconnect` frame first, never a `welcome`), the auth timeout, and
//! what the HTTP API then shows about the user and the device.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{now_secs, Server, Ws};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A JWT signed with `alg` and `key` (any claims, nothing added).
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// An unsecured JWT (`alg: none`, empty signature), as an attacker would send it.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Asserts that the server refused the socket: one `disconnect` frame with `code` and
/// `reconnect`, no `welcome`, then the close frame with the same code.
async fn assert_refused(ws: &mut Ws, code: u16, reconnect: bool, what: &str) -> Value {
    let (frames, closed) = ws.frames_until_close().await;
    assert!(
        frames.iter().all(|f| f["type"] != "welcome"),
        "{what}: a refused client got a welcome: {frames:?}"
    );
    assert_eq!(
        frames.len(),
        1,
        "{what}: expected exactly one disconnect frame, got {frames:?}"
    );
    let d = frames[0].clone();
    assert_eq!(d["type"], "disconnect", "{what}: {d}");
    assert_eq!(d["code"], code, "{what}: {d}");
    assert_eq!(d["reconnect"], reconnect, "{what}: {d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.is_empty() && reason.len() < 123,
        "{what}: reason {reason:?}"
    );
    assert_eq!(
        closed.code,
        Some(code),
        "{what}: close frame code (disconnect was {d})"
    );
    d
}

async fn welcome_of(ws: &mut Ws, what: &str) -> Value {
    let v = ws.recv().await;
    assert_eq!(v["type"], "welcome", "{what}: {v}");
    v
}

/// A connection's `AuthUser` and `ConnectionInfo` through the admin API.
async fn user_and_info(server: &Server, welcome: &Value) -> (Value, Value) {
    let id = welcome["connectionId"].as_str().unwrap();
    let (status, user) = server.get_json(&format!("/v1/connections/{id}/user")).await;
    assert_eq!(status, 200, "{user}");
    let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, 200, "{info}");
    (user, info)
}

#[tokio::test]
async fn bearer_header_token_query_and_auth_frame_each_authenticate() {
    let server = Server::start(&[]).await;

    let bearer = format!("Bearer {}", server.token("hdr-user", json!({})));
    let mut ws = server
        .ws_with_headers("", &[("Authorization", &bearer)])
        .await;
    let w = welcome_of(&mut ws, "bearer header").await;
    assert_eq!(w["userId"], "hdr-user");

    let mut ws = server
        .ws(&format!("token={}", server.token("query-user", json!({}))))
        .await;
    let w = welcome_of(&mut ws, "token query").await;
    assert_eq!(w["userId"], "query-user");

    // No credential on the request: the first frame authenticates.
    let mut ws = server.ws("").await;
    ws.send(json!({"type": "auth", "token": server.token("frame-user", json!({}))}))
        .await;
    let w = welcome_of(&mut ws, "auth frame").await;
    assert_eq!(w["userId"], "frame-user");
    assert_eq!(w["resumed"], false);
    assert_eq!(w["sessionId"], Value::Null);
    assert!(w["resumeToken"].as_str().is_some_and(|t| !t.is_empty()));
    let (user, info) = user_and_info(&server, &w).await;
    assert_eq!(user["id"], "frame-user");
    assert_eq!(info["state"], "active");
    assert_eq!(info["userId"], "frame-user");

    // The first credential found wins: the header over the query.
    let mut ws = server
        .ws_with_headers(
            &format!("token={}", server.token("query-loses", json!({}))),
            &[("Authorization", &bearer)],
        )
        .await;
    let w = welcome_of(&mut ws, "header and query").await;
    assert_eq!(w["userId"], "hdr-user");

    // Each successful connection is logged as authenticated.
    let id = w["connectionId"].as_str().unwrap();
    let (status, events) = server
        .get_json(&format!("/v1/events?connectionId={id}"))
        .await;
    assert_eq!(status, 200);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["eventType"] == "authenticated"),
        "{events}"
    );
}

#[tokio::test]
async fn api_keys_authenticate_as_apikey_users() {
    let billing = "tk_billing_0123456789abcdef0123";
    let keys = format!(r#"[{{key = "{billing}", name = "billing", permissions = ["read"]}}]"#);
    let server = Server::start(&["--api-keys", &keys]).await;

    let mut ws = server.ws(&format!("token={}", server.admin_key)).await;
    let w = welcome_of(&mut ws, "admin key in query").await;
    assert_eq!(w["userId"], "apikey:admin");
    let (user, info) = user_and_info(&server, &w).await;
    assert_eq!(user["id"], "apikey:admin");
    assert_eq!(user["permissions"], json!(["admin"]));
    assert_eq!(info["metadata"]["permissions"], json!(["admin"]));

    let mut ws = server.ws("").await;
    ws.send(json!({"type": "auth", "token": server.admin_key}))
        .await;
    let w = welcome_of(&mut ws, "admin key in auth frame").await;
    assert_eq!(w["userId"], "apikey:admin");

    let bearer = format!("Bearer {billing}");
    let mut ws = server
        .ws_with_headers("", &[("Authorization", &bearer)])
        .await;
    let w = welcome_of(&mut ws, "configured key in header").await;
    assert_eq!(w["userId"], "apikey:billing");
    let (user, _) = user_and_info(&server, &w).await;
    assert_eq!(user["permissions"], json!(["read"]));
}

#[tokio::test]
async fn forged_expired_and_malformed_credentials_close_4501_without_welcome() {
    let server = Server::start(&["--jwt-leeway-seconds", "0"]).await;
    let now = now_secs();
    let good = json!({"sub": "mallory", "iat": now, "exp": now + 600});
    // (what, credential, a word the close reason should carry)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad signature",
            hs256("not-the-server-secret-not-the-server-secret", &good),
            "signature",
        ),
        ("alg none", unsigned(&good), "algorithm"),
        (
            "HS512 against HS256",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(server.jwt_secret.as_bytes()),
                &good,
            ),
            "algorithm",
        ),
        (
            "expired (leeway 0)",
            hs256(
                &server.jwt_secret,
                &json!({"sub": "mallory", "iat": now - 600, "exp": now - 5}),
            ),
            "expired",
        ),
        (
            "future nbf",
            hs256(
                &server.jwt_secret,
                &json!({"sub": "mallory", "nbf": now + 600, "exp": now + 1200}),
            ),
            "not yet valid",
        ),
        (
            "missing sub",
            hs256(&server.jwt_secret, &json!({"iat": now, "exp": now + 600})),
            "subject",
        ),
        (
            "empty sub",
            hs256(
                &server.jwt_secret,
                &json!({"sub": "", "iat": now, "exp": now + 600}),
            ),
            "subject",
        ),
        (
            "missing exp",
            hs256(&server.jwt_secret, &json!({"sub": "mallory", "iat": now})),
            "invalid",
        ),
        (
            "sub posing as an API key user",
            hs256(
                &server.jwt_secret,
                &json!({"sub": "apikey:admin", "iat": now, "exp": now + 600}),
            ),
            "invalid",
        ),
        ("garbage", "garbage".to_string(), "malformed"),
        (
            "garbage in JWT shape",
            "abc.def.ghi".to_string(),
            "malformed",
        ),
        (
            "unknown api key",
            "tk_unknown_0123456789abcdef0123".to_string(),
            "api key",
        ),
    ];
    for (what, token, reason) in &cases {
        let mut ws = server.ws(&format!("token={token}")).await;
        let d = assert_refused(&mut ws, 4501, false, what).await;
        assert!(
            d["reason"].as_str().unwrap().contains(reason),
            "{what}: reason {} should say {reason:?}",
            d["reason"]
        );
    }

    // The same refusal when the credential comes in the header or the first frame.
    let (_, bad_sig, _) = &cases[0];
    let bearer = format!("Bearer {bad_sig}");
    let mut ws = server
        .ws_with_headers("", &[("Authorization", &bearer)])
        .await;
    assert_refused(&mut ws, 4501, false, "bad signature in header").await;
    let (_, none, _) = &cases[1];
    let mut ws = server.ws("").await;
    ws.send(json!({"type": "auth", "token": none})).await;
    assert_refused(&mut ws, 4501, false, "alg none in auth frame").await;

    // None of them got in.
    for user in ["mallory", "apikey:admin"] {
        let (status, conns) = server
            .get_json(&format!("/v1/users/{user}/connections"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(conns, json!([]), "{user}");
    }
    let (_, health) = server.get_json("/v1/health").await;
    assert_eq!(health["activeConnections"], 0, "{health}");
}

#[tokio::test]
async fn default_leeway_tolerates_small_clock_skew() {
    // The same shapes the leeway-0 test refuses, but within the default 30 s leeway.
    let server = Server::start(&[]).await;
    let now = now_secs();
    for (what, claims) in [
        ("expired 5 s ago", json!({"sub": "skew", "exp": now - 5})),
        (
            "nbf 5 s ahead",
            json!({"sub": "skew", "nbf": now + 5, "exp": now + 600}),
        ),
        (
            "iss and aud when none are configured",
            json!({"sub": "skew", "exp": now + 600, "iss": "anyone", "aud": "anything"}),
        ),
    ] {
        let mut ws = server
            .ws(&format!("token={}", hs256(&server.jwt_secret, &claims)))
            .await;
        let w = welcome_of(&mut ws, what).await;
        assert_eq!(w["userId"], "skew", "{what}");
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let server = Server::start(&[
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-audience",
        "tether-tests",
    ])
    .await;
    let now = now_secs();
    let token = |extra: Value| {
        let mut claims = json!({"sub": "iss-user", "iat": now, "exp": now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(&server.jwt_secret, &claims)
    };

    for (what, extra) in [
        (
            "right iss and aud",
            json!({"iss": "https://auth.example", "aud": "tether-tests"}),
        ),
        (
            "aud as a list holding ours",
            json!({"iss": "https://auth.example", "aud": ["other", "tether-tests"]}),
        ),
    ] {
        let mut ws = server.ws(&format!("token={}", token(extra))).await;
        let w = welcome_of(&mut ws, what).await;
        assert_eq!(w["userId"], "iss-user");
    }

    for (what, extra) in [
        (
            "wrong iss",
            json!({"iss": "https://evil.example", "aud": "tether-tests"}),
        ),
        ("missing iss", json!({"aud": "tether-tests"})),
        (
            "wrong aud",
            json!({"iss": "https://auth.example", "aud": "other-app"}),
        ),
        ("missing aud", json!({"iss": "https://auth.example"})),
    ] {
        let mut ws = server.ws(&format!("token={}", token(extra))).await;
        assert_refused(&mut ws, 4501, false, what).await;
    }
}

#[tokio::test]
async fn no_auth_frame_in_time_closes_4002() {
    let server = Server::start(&["--auth-timeout-ms", "300"]).await;
    let started = Instant::now();
    let mut ws = server.ws("").await;
    assert_refused(&mut ws, 4002, true, "silent client").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}, auth timeout is 300 ms"
    );

    // A client that authenticates within the timeout is not closed by it.
    let mut ws = server.ws("").await;
    ws.send(json!({"type": "auth", "token": server.token("prompt", json!({}))}))
        .await;
    welcome_of(&mut ws, "prompt auth frame").await;
    assert_eq!(
        ws.try_recv(Duration::from_millis(600)).await,
        None,
        "nothing (no disconnect) after the auth timeout has passed"
    );
    ws.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(ws.recv().await["type"], "pong");
}

#[tokio::test]
async fn a_first_frame_that_is_not_auth_closes_4501() {
    let server = Server::start(&[]).await;
    let cases = [
        (
            "ping",
            Message::text(json!({"type": "ping", "id": 1}).to_string()),
        ),
        ("invalid JSON", Message::text("{not json")),
        (
            "auth without credential",
            Message::text(r#"{"type":"auth"}"#),
        ),
        ("binary", Message::binary(vec![1u8, 2, 3])),
    ];
    for (what, first) in cases {
        let mut ws = server.ws("").await;
        ws.send_raw(first).await;
        assert_refused(&mut ws, 4501, false, what).await;
    }
}

#[tokio::test]
async fn token_claims_are_visible_as_the_connection_user() {
    let server = Server::start(&[]).await;
    let token = server.token(
        "carol",
        json!({
            "permissions": ["chat:write", "chat:read"],
            "roles": ["moderator"],
            "name": "Carol C.",
            "tenant": "acme",
            "plan": {"tier": "pro", "seats": 5},
        }),
    );
    let mut ws = server.ws(&format!("token={token}")).await;
    let w = welcome_of(&mut ws, "claims").await;
    let (user, info) = user_and_info(&server, &w).await;
    assert_eq!(
        user,
        json!({
            "id": "carol",
            "permissions": ["chat:write", "chat:read"],
            "roles": ["moderator"],
            "name": "Carol C.",
            "claims": {"tenant": "acme", "plan": {"tier": "pro", "seats": 5}},
        })
    );
    assert_eq!(
        info["metadata"]["permissions"],
        json!(["chat:write", "chat:read"])
    );

    // Without optional claims: empty lists, no name, no extra claims.
    let (mut ws2, w2) = server.connect("dave").await;
    let (user, _) = user_and_info(&server, &w2).await;
    assert_eq!(
        user,
        json!({"id": "dave", "permissions": [], "roles": [], "name": null, "claims": {}})
    );
    ws.close().await;
    ws2.close().await;
}

#[tokio::test]
async fn device_info_comes_from_the_request() {
    let server = Server::start(&[]).await;
    let token = server.token("erin", json!({}));
    let metadata = |w: Value| {
        let server = &server;
        async move { user_and_info(server, &w).await.1["metadata"].clone() }
    };

    let mut ws = server
        .ws_with_headers(
            &format!("token={token}&client_version=0.0.1"),
            &[
                ("User-Agent", "tether-tests/1.0 (linux)"),
                ("X-Client-Version", "2.3.4"),
                ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
            ],
        )
        .await;
    let m = metadata(welcome_of(&mut ws, "headers").await).await;
    assert_eq!(m["userAgent"], "tether-tests/1.0 (linux)", "{m}");
    assert_eq!(m["clientVersion"], "2.3.4", "header first: {m}");
    assert_eq!(
        m["ip"], "127.0.0.1",
        "X-Forwarded-For is ignored without trust_proxy: {m}"
    );
    assert_eq!(m["connectionType"], "websocket");

    let mut ws = server
        .ws(&format!("token={token}&client_version=9.9.9"))
        .await;
    let m = metadata(welcome_of(&mut ws, "query version").await).await;
    assert_eq!(m["clientVersion"], "9.9.9", "{m}");

    let mut ws = server.ws(&format!("token={token}")).await;
    let m = metadata(welcome_of(&mut ws, "no version").await).await;
    assert_eq!(m["clientVersion"], Value::Null, "{m}");

    let proxied = Server::start(&["--trust-proxy"]).await;
    let token = proxied.token("erin", json!({}));
    let mut ws = proxied
        .ws_with_headers(
            &format!("token={token}"),
            &[("X-Forwarded-For", "203.0.113.7, 10.0.0.1")],
        )
        .await;
    let w = welcome_of(&mut ws, "behind proxy").await;
    let m = user_and_info(&proxied, &w).await.1["metadata"].clone();
    assert_eq!(m["ip"], "203.0.113.7", "first X-Forwarded-For hop: {m}");

    let mut ws = proxied.ws(&format!("token={token}")).await;
    let w = welcome_of(&mut ws, "behind proxy, no header").await;
    let m = user_and_info(&proxied, &w).await.1["metadata"].clone();
    assert_eq!(m["ip"], "127.0.0.1", "{m}");
}

fn openssl(args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn rs256_with_a_pem_public_key() {
    if !openssl(&["version"]) {
        eprintln!("note: openssl not found; skipping the RS256 integration test");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let path = |name: &str| keys.path().join(name).to_str().unwrap().to_string();
    for stem in ["ours", "theirs"] {
        let private = path(&format!("{stem}.key.pem"));
        assert!(openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &private
        ]));
        assert!(openssl(&[
            "pkey",
            "-pubout",
            "-in",
            &private,
            "-out",
            &path(&format!("{stem}.pub.pem"))
        ]));
    }
    let public = path("ours.pub.pem");
    let server =
        Server::start(&["--jwt-algorithm", "RS256", "--jwt-public-key-file", &public]).await;
    let rsa = |stem: &str| {
        EncodingKey::from_rsa_pem(&std::fs::read(path(&format!("{stem}.key.pem"))).unwrap())
            .unwrap()
    };
    let now = now_secs();
    let claims = json!({"sub": "rsa-user", "iat": now, "exp": now + 600, "org": "acme"});

    let token = sign(Algorithm::RS256, &rsa("ours"), &claims);
    let mut ws = server.ws(&format!("token={token}")).await;
    let w = welcome_of(&mut ws, "RS256 token").await;
    assert_eq!(w["userId"], "rsa-user");
    let (user, _) = user_and_info(&server, &w).await;
    assert_eq!(user["claims"]["org"], "acme");

    let public_pem = std::fs::read(&public).unwrap();
    for (what, token) in [
        (
            "signed by another RSA key",
            sign(Algorithm::RS256, &rsa("theirs"), &claims),
        ),
        (
            "HS256 keyed with the public key (key confusion)",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public_pem),
                &claims,
            ),
        ),
        (
            "HS256 with the generated secret",
            hs256(&server.jwt_secret, &claims),
        ),
        (
            "expired RS256",
            sign(
                Algorithm::RS256,
                &rsa("ours"),
                &json!({"sub": "rsa-user", "exp": now - 600}),
            ),
        ),
    ] {
        let mut ws = server.ws(&format!("token={token}")).await;
        assert_refused(&mut ws, 4501, false, what).await;
    }
}
