//! Sessions and the bus, from outside: session CRUD over HTTP, session-id authentication
//! every way a client can present one, sync in both directions (HTTP PATCH and the
//! `session.update` frame) across WebSocket and SSE connections, the 4503 closes (delete,
//! expiry, logout everywhere), and the `/v1/bus` event stream.

mod common;

use std::time::{Duration, Instant};

use common::{conn_id, Server, Sse, Ws, WAIT};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn sid_of(s: &Value) -> String {
    s["sessionId"].as_str().expect("sessionId").to_string()
}

/// A WebSocket authenticated by session id through the query (`session_id=`).
/// `PATCH /v1/sessions/{sid}` with the admin key.
async fn patch_session(server: &Server, sid: &str, body: Value) -> (u16, Value) {
    server
        .send_json(Method::PATCH, &format!("/v1/sessions/{sid}"), body)
        .await
}

async fn ws_session(server: &Server, sid: &str) -> (Ws, Value) {
    let mut ws = server.ws(&format!("session_id={sid}")).await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["sessionId"], sid, "{w}");
    (ws, w)
}

/// An SSE connection authenticated by session id (`X-Session-Id`).
async fn sse_session(server: &Server, sid: &str) -> (Sse, Value) {
    let mut sse = server
        .sse("", &[("x-session-id", sid)])
        .await
        .unwrap_or_else(|e| panic!("SSE refused: {e:?}"));
    let w = sse.event_named("welcome").await.json();
    assert_eq!(w["sessionId"], sid, "{w}");
    (sse, w)
}

/// Asserts that a socket is closed by the server with `disconnect` and close `code`.
async fn assert_closed_with(ws: &mut Ws, code: u16) {
    let c = ws.closed().await;
    assert_eq!(c.code, Some(code), "close frame: {c:?}");
    let d = c
        .disconnect
        .unwrap_or_else(|| panic!("no disconnect frame before the close {code}"));
    assert_eq!(d["code"], code, "{d}");
    assert_eq!(d["reconnect"], code < 4500, "{d}");
}

/// Asserts that `ws` gets nothing within [`QUIET`] (and is still open: it answers a ping).
async fn assert_quiet(ws: &mut Ws) {
    if let Some(f) = ws.try_recv(QUIET).await {
        panic!("expected nothing, got {f}");
    }
    ws.send(json!({"type": "ping", "id": "still-there"})).await;
    assert_eq!(ws.recv_type("pong").await["id"], "still-there");
}

/// The client's view of a refused connection: `disconnect` 4501 and close 4501.
async fn assert_refused(mut ws: Ws) {
    assert_closed_with(&mut ws, 4501).await;
}

#[tokio::test]
async fn session_crud_merge_list_and_ids() {
    let server = Server::start(&[]).await;

    let s = server
        .create_session(json!({
            "userId": "ann",
            "ttlSeconds": 600,
            "data": {"theme": "dark", "cart": {"items": 1, "coupon": "X"}},
            "permissions": ["chat"],
            "device": {"os": "linux"}
        }))
        .await;
    let sid = sid_of(&s);
    // At least 128 random bits, URL-safe: 22 base64url characters carry 132 bits.
    assert!(sid.len() >= 22, "session id too short: {sid}");
    assert!(
        sid.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "session id is not URL-safe: {sid}"
    );
    assert_eq!(s["userId"], "ann");
    assert_eq!(s["permissions"], json!(["chat"]));
    assert_eq!(s["device"]["os"], "linux");
    assert_eq!(s["connections"], json!([]));
    for k in ["createdAt", "expiresAt", "lastSeen"] {
        let t = s[k].as_str().unwrap_or_else(|| panic!("{k} missing: {s}"));
        assert!(
            t.ends_with('Z') && t.len() == 24,
            "{k} is not RFC 3339 ms UTC: {t}"
        );
    }

    let other = server.create_session(json!({"userId": "ann"})).await;
    assert_ne!(sid_of(&other), sid, "two sessions got the same id");
    server.create_session(json!({"userId": "bob"})).await;

    // Merge: objects merge key by key, null removes, anything else replaces.
    let (status, patched) = patch_session(
        &server,
        &sid,
        json!({"data": {"cart": {"items": 2, "coupon": null}, "lang": "fi"}}),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["data"],
        json!({"theme": "dark", "cart": {"items": 2}, "lang": "fi"})
    );
    let (status, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"], patched["data"], "the merge was not stored");

    // A new TTL moves expiresAt.
    let (status, short) = patch_session(&server, &sid, json!({"ttlSeconds": 30})).await;
    assert_eq!(status, 200, "{short}");
    assert!(short["expiresAt"].as_str() < got["expiresAt"].as_str());

    // Bad input is a 4xx, never a 500.
    for (body, want) in [
        (json!({"data": [1, 2]}), 400),
        (json!({"ttlSeconds": "soon"}), 400),
        (json!({"ttlSeconds": 0}), 422),
        (json!({"userId": "mallory"}), 422),
    ] {
        let (status, e) = server
            .send_json(Method::PATCH, &format!("/v1/sessions/{sid}"), body.clone())
            .await;
        assert_eq!(status, want, "PATCH {body}: {e}");
    }
    let (status, _) = server
        .send_json(Method::POST, "/v1/sessions", json!({"ttlSeconds": 5}))
        .await;
    assert_eq!(status, 400, "userId is required");

    let (status, list) = server.get_json("/v1/users/ann/sessions").await;
    assert_eq!(status, 200);
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![sid.as_str(), other["sessionId"].as_str().unwrap()];
    want.sort();
    assert_eq!(ids, want);

    let r = server
        .admin(Method::DELETE, &format!("/v1/sessions/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, e) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "not_found");
    let (status, _) = patch_session(&server, &sid, json!({"data": {}})).await;
    assert_eq!(status, 404);
    let r = server
        .admin(Method::DELETE, &format!("/v1/sessions/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "deleting twice");
    let (_, list) = server.get_json("/v1/users/ann/sessions").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Session routes need a key.
    let r = common::http()
        .get(server.url(&format!("/v1/sessions/{}", sid_of(&other))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn session_id_authenticates_every_way() {
    let server = Server::start(&[]).await;
    let s = server
        .create_session(json!({"userId": "carol", "permissions": ["chat", "upload"]}))
        .await;
    let sid = sid_of(&s);

    let mut conns = Vec::new();
    // Cookie.
    let mut ws = server
        .ws_with_headers("", &[("cookie", &format!("theme=dark; tether_sid={sid}"))])
        .await;
    conns.push((ws.recv_type("welcome").await, ws, "cookie"));
    // Header.
    let mut ws = server.ws_with_headers("", &[("x-session-id", &sid)]).await;
    conns.push((ws.recv_type("welcome").await, ws, "header"));
    // Query.
    let mut ws = server.ws(&format!("session_id={sid}")).await;
    conns.push((ws.recv_type("welcome").await, ws, "query"));
    // First frame.
    let mut ws = server.ws("").await;
    ws.send(json!({"type": "auth", "sessionId": sid})).await;
    conns.push((ws.recv_type("welcome").await, ws, "auth frame"));
    // A JWT whose `sid` names a live session of the same user links the connection.
    let mut ws = server
        .ws(&format!(
            "token={}",
            server.token("carol", json!({"sid": sid}))
        ))
        .await;
    conns.push((ws.recv_type("welcome").await, ws, "jwt sid"));

    for (w, _, how) in &conns {
        assert_eq!(w["userId"], "carol", "{how}: {w}");
        assert_eq!(w["sessionId"], sid, "{how}: {w}");
        let id = conn_id(w);
        let (status, user) = server.get_json(&format!("/v1/connections/{id}/user")).await;
        assert_eq!(status, 200, "{how}");
        assert_eq!(user["id"], "carol", "{how}");
        if *how != "jwt sid" {
            assert_eq!(
                user["permissions"],
                json!(["chat", "upload"]),
                "{how}: a session id carries the session's permissions"
            );
        }
        let (_, info) = server.get_json(&format!("/v1/connections/{id}")).await;
        assert_eq!(info["sessionId"], sid, "{how}: {info}");
    }

    // The session lists exactly these connections.
    let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    let mut listed: Vec<String> = got["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = conns.iter().map(|(w, _, _)| conn_id(w)).collect();
    want.sort();
    assert_eq!(listed, want);

    // A `sid` naming another user's session, or no session, does not link.
    let dave = sid_of(&server.create_session(json!({"userId": "dave"})).await);
    for sid_claim in [dave.as_str(), "no-such-session"] {
        let (mut ws, w) = {
            let mut ws = server
                .ws(&format!(
                    "token={}",
                    server.token("carol", json!({"sid": sid_claim}))
                ))
                .await;
            let w = ws.recv_type("welcome").await;
            (ws, w)
        };
        assert_eq!(w["userId"], "carol");
        assert_eq!(w["sessionId"], Value::Null, "sid {sid_claim} must not link");
        ws.close().await;
    }
    let (_, got) = server.get_json(&format!("/v1/sessions/{dave}")).await;
    assert_eq!(got["connections"], json!([]));

    // A clean close unlinks a connection from its session.
    let (_, mut ws, _) = conns.pop().unwrap();
    ws.close().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
        if got["connections"].as_array().unwrap().len() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still linked after a close: {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_session_cookie_name_is_configurable() {
    let server = Server::start(&["--session-cookie", "app_sid"]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "uri"})).await);
    let mut ws = server
        .ws_with_headers("", &[("cookie", &format!("app_sid={sid}"))])
        .await;
    assert_eq!(ws.recv_type("welcome").await["sessionId"], sid);
    // The default name is not a credential any more: the socket waits for an auth frame.
    let mut ws = server
        .ws_with_headers("", &[("cookie", &format!("tether_sid={sid}"))])
        .await;
    ws.send(json!({"type": "ping"})).await;
    assert_closed_with(&mut ws, 4501).await;
}

#[tokio::test]
async fn unknown_deleted_and_expired_session_ids_are_refused() {
    let server = Server::start(&[]).await;
    let deleted = sid_of(&server.create_session(json!({"userId": "erin"})).await);
    let r = server
        .admin(Method::DELETE, &format!("/v1/sessions/{deleted}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let expired = sid_of(
        &server
            .create_session(json!({"userId": "erin", "ttlSeconds": 1}))
            .await,
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for sid in ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &deleted, &expired] {
        assert_refused(server.ws(&format!("session_id={sid}")).await).await;
        assert_refused(server.ws_with_headers("", &[("x-session-id", sid)]).await).await;
        assert_refused(
            server
                .ws_with_headers("", &[("cookie", &format!("tether_sid={sid}"))])
                .await,
        )
        .await;
        let mut ws = server.ws("").await;
        ws.send(json!({"type": "auth", "sessionId": sid})).await;
        assert_refused(ws).await;
    }
    let (_, health) = server.get_json("/v1/health").await;
    assert_eq!(health["activeConnections"], 0, "{health}");
}

#[tokio::test]
async fn http_update_reaches_every_connection_of_the_session() {
    let server = Server::start(&[]).await;
    let sid = sid_of(
        &server
            .create_session(json!({"userId": "fay", "data": {"n": 0}}))
            .await,
    );
    let other_sid = sid_of(&server.create_session(json!({"userId": "fay"})).await);

    let (mut a, _) = ws_session(&server, &sid).await;
    let (mut b, _) = ws_session(&server, &sid).await;
    let (mut sse, wsse) = sse_session(&server, &sid).await;
    // The same user without the session, and the user's other session: not addressed.
    let (mut plain, _) = server.connect("fay").await;
    let (mut elsewhere, _) = ws_session(&server, &other_sid).await;

    for n in 1..=3u64 {
        let (status, body) = patch_session(&server, &sid, json!({"data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
        for ws in [&mut a, &mut b] {
            let f = ws.recv().await;
            assert_eq!(f["type"], "session.updated", "{f}");
            assert_eq!(f["seq"], n, "the next seq: {f}");
            assert_eq!(f["sessionId"], sid);
            assert_eq!(f["updates"], json!({"n": n}));
            assert_eq!(f["source"], "http");
            assert_eq!(f["connectionId"], Value::Null);
            assert!(f["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{f}");
        }
        let e = sse.event().await;
        assert_eq!(e.event, "session.updated", "{e:?}");
        assert_eq!(
            e.id.as_deref(),
            Some(format!("{}:{n}", conn_id(&wsse)).as_str()),
            "{e:?}"
        );
        let f = e.json();
        assert_eq!(f["seq"], n);
        assert_eq!(f["updates"], json!({"n": n}));
        assert_eq!(f["source"], "http");
    }
    assert_quiet(&mut plain).await;
    assert_quiet(&mut elsewhere).await;

    let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(got["data"], json!({"n": 3}));
}

#[tokio::test]
async fn websocket_update_reaches_the_others_and_is_acknowledged() {
    let server = Server::start(&[]).await;
    let sid = sid_of(
        &server
            .create_session(json!({"userId": "gus", "data": {"keep": true, "cart": {"a": 1}}}))
            .await,
    );
    let (mut a, wa) = ws_session(&server, &sid).await;
    let (mut b, wb) = ws_session(&server, &sid).await;
    let (mut sse, _) = sse_session(&server, &sid).await;
    let a_id = conn_id(&wa);

    a.send(json!({"type": "session.update", "id": "u1", "updates": {"cart": {"b": 2}}}))
        .await;
    let ack = a.recv().await;
    assert_eq!(ack, json!({"type": "ack", "id": "u1"}));
    assert_quiet(&mut a).await;

    let f = b.recv().await;
    assert_eq!(f["type"], "session.updated", "{f}");
    assert_eq!(f["seq"], 1);
    assert_eq!(f["sessionId"], sid);
    assert_eq!(f["updates"], json!({"cart": {"b": 2}}));
    assert_eq!(f["source"], "websocket");
    assert_eq!(f["connectionId"], a_id.as_str());
    let e = sse.event().await;
    assert_eq!(e.event, "session.updated");
    assert_eq!(e.json()["connectionId"], a_id.as_str());
    assert_eq!(e.json()["source"], "websocket");

    let (status, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"], json!({"keep": true, "cart": {"a": 1, "b": 2}}));

    // Without an id there is no ack, but the others still hear of it.
    b.send(json!({"type": "session.update", "updates": {"keep": null}}))
        .await;
    let f = a.recv().await;
    assert_eq!(f["type"], "session.updated", "{f}");
    assert_eq!(f["seq"], 1, "a's first delivery");
    assert_eq!(f["updates"], json!({"keep": null}));
    assert_eq!(f["connectionId"], conn_id(&wb).as_str());
    assert_quiet(&mut b).await;
    let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(got["data"], json!({"cart": {"a": 1, "b": 2}}));

    // Refusals: not an object, or no session linked.
    a.send(json!({"type": "session.update", "id": 9, "updates": [1]}))
        .await;
    assert_eq!(a.recv().await["code"], "bad_frame");
    let (mut plain, _) = server.connect("gus").await;
    plain
        .send(json!({"type": "session.update", "id": 3, "updates": {"x": 1}}))
        .await;
    let e = plain.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "no_session");
    assert_eq!(e["id"], 3);
    assert_quiet(&mut b).await;
}

#[tokio::test]
async fn delete_closes_the_session_connections_with_4503() {
    let server = Server::start(&[]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "hal"})).await);
    let keep = sid_of(&server.create_session(json!({"userId": "hal"})).await);
    let (mut a, wa) = ws_session(&server, &sid).await;
    let (mut b, _) = ws_session(&server, &sid).await;
    let (mut sse, _) = sse_session(&server, &sid).await;
    let (mut other, _) = ws_session(&server, &keep).await;

    let r = server
        .admin(Method::DELETE, &format!("/v1/sessions/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_closed_with(&mut a, 4503).await;
    assert_closed_with(&mut b, 4503).await;
    let seen = sse.ended().await;
    let d = seen
        .iter()
        .find(|e| e.event == "disconnect")
        .unwrap_or_else(|| panic!("no disconnect event on SSE: {seen:?}"))
        .json();
    assert_eq!(d["code"], 4503);
    assert_eq!(d["reconnect"], false);

    assert_quiet(&mut other).await;
    let (status, _) = server
        .get_json(&format!("/v1/connections/{}", conn_id(&wa)))
        .await;
    assert_eq!(status, 404, "a 4503 close removes the connection");
    assert_refused(server.ws(&format!("session_id={sid}")).await).await;
}

#[tokio::test]
async fn expiry_closes_the_session_connections_with_4503() {
    let server = Server::start(&["--session-ttl-seconds", "1"]).await;
    let mut bus = server.bus("session:expired").await;

    // The configured default TTL applies when none is given.
    let short = server.create_session(json!({"userId": "ivy"})).await;
    let created = short["createdAt"].as_str().unwrap().to_string();
    let expires = short["expiresAt"].as_str().unwrap().to_string();
    assert_eq!(
        ms_of(&expires) - ms_of(&created),
        1000,
        "default TTL: {short}"
    );

    // A long session, connected at leisure, then cut to one second.
    let sid = sid_of(
        &server
            .create_session(json!({"userId": "ivy", "ttlSeconds": 3600}))
            .await,
    );
    let (mut a, _) = ws_session(&server, &sid).await;
    let (mut b, _) = ws_session(&server, &sid).await;
    let (status, body) = patch_session(&server, &sid, json!({"ttlSeconds": 1})).await;
    assert_eq!(status, 200, "{body}");
    let t0 = Instant::now();
    // The TTL-only PATCH is an (empty) update.
    assert_eq!(a.recv().await["type"], "session.updated");
    assert_eq!(b.recv().await["type"], "session.updated");
    assert_closed_with(&mut a, 4503).await;
    let took = t0.elapsed();
    assert_closed_with(&mut b, 4503).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed before the session expired ({took:?})"
    );
    assert!(
        took < Duration::from_millis(3500),
        "the sweeper took {took:?}"
    );

    let mut expired = Vec::new();
    while expired.len() < 2 {
        let e = bus.event().await;
        assert_eq!(e.event, "session:expired");
        let p = e.json();
        assert_eq!(p["userId"], "ivy");
        expired.push(p["sessionId"].as_str().unwrap().to_string());
    }
    expired.sort();
    let mut want = vec![sid.clone(), sid_of(&short)];
    want.sort();
    assert_eq!(expired, want);

    let (status, _) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 404);
    let (_, list) = server.get_json("/v1/users/ivy/sessions").await;
    assert_eq!(list, json!([]));
    let (_, health) = server.get_json("/v1/health").await;
    assert_eq!(health["sessions"], 0, "the sweeper removes them: {health}");
}

fn ms_of(t: &str) -> i64 {
    tether::time::parse_rfc3339(t).unwrap_or_else(|| panic!("not RFC 3339: {t}"))
}

#[tokio::test]
async fn logout_everywhere_closes_jwt_and_session_connections() {
    let server = Server::start(&[]).await;
    let s1 = sid_of(&server.create_session(json!({"userId": "jay"})).await);
    let s2 = sid_of(&server.create_session(json!({"userId": "jay"})).await);
    let kim = sid_of(&server.create_session(json!({"userId": "kim"})).await);

    let mut jay = Vec::new();
    jay.push(ws_session(&server, &s1).await.0);
    jay.push(
        server
            .ws_with_headers("", &[("cookie", &format!("tether_sid={s2}"))])
            .await,
    );
    jay.push(server.connect("jay").await.0);
    jay.push(
        server
            .ws(&format!(
                "token={}",
                server.token("jay", json!({"sid": s1}))
            ))
            .await,
    );
    let (mut sse, _) = sse_session(&server, &s2).await;
    let mut jwt_sse = server
        .sse(&format!("token={}", server.token("jay", json!({}))), &[])
        .await
        .unwrap();
    jwt_sse.event_named("welcome").await;
    let (mut kim_ws, _) = ws_session(&server, &kim).await;
    let (mut kim_jwt, _) = server.connect("kim").await;

    let (status, body) = server
        .send_json(Method::DELETE, "/v1/users/jay/sessions", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"sessions": 2, "connections": 6}));

    for ws in jay.iter_mut() {
        assert_closed_with(ws, 4503).await;
    }
    for s in [&mut sse, &mut jwt_sse] {
        let seen = s.ended().await;
        assert!(
            seen.iter()
                .any(|e| e.event == "disconnect" && e.json()["code"] == 4503),
            "{seen:?}"
        );
    }
    assert_quiet(&mut kim_ws).await;
    assert_quiet(&mut kim_jwt).await;

    let (_, list) = server.get_json("/v1/users/jay/sessions").await;
    assert_eq!(list, json!([]));
    let (_, conns) = server.get_json("/v1/users/jay/connections").await;
    assert_eq!(conns, json!([]));
    let (_, list) = server.get_json("/v1/users/kim/sessions").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_refused(server.ws(&format!("session_id={s1}")).await).await;
}

#[tokio::test]
async fn bus_stream_carries_session_and_connection_events() {
    let server = Server::start(&[]).await;
    let mut all = server
        .bus("session:created,session:updates,session:deleted,connection:events")
        .await;
    let mut deleted_only = server.bus("session:deleted").await;
    assert!(all
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));

    let sid = sid_of(&server.create_session(json!({"userId": "lee"})).await);
    let e = all.event().await;
    assert_eq!(e.event, "session:created", "{e:?}");
    let p = e.json();
    assert_eq!(p["sessionId"], sid);
    assert_eq!(p["userId"], "lee");
    assert!(p["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));

    patch_session(&server, &sid, json!({"data": {"x": 1}})).await;
    let p = all.event_named("session:updates").await.json();
    assert_eq!(p["sessionId"], sid);
    assert_eq!(p["updates"], json!({"x": 1}));
    assert_eq!(p["source"], "http");
    assert_eq!(p["connectionId"], Value::Null);

    let (mut ws, w) = ws_session(&server, &sid).await;
    let id = conn_id(&w);
    let p = all.event_named("connection:events").await.json();
    assert_eq!(p["connectionId"], id.as_str(), "{p}");
    assert_eq!(p["userId"], "lee");
    assert!(p["eventType"].is_string() && p["seq"].is_number(), "{p}");

    ws.send(json!({"type": "session.update", "id": 1, "updates": {"y": 2}}))
        .await;
    ws.recv_type("ack").await;
    let p = all.event_named("session:updates").await.json();
    assert_eq!(p["source"], "websocket");
    assert_eq!(p["connectionId"], id.as_str());
    assert_eq!(p["updates"], json!({"y": 2}));

    let r = server
        .admin(Method::DELETE, &format!("/v1/sessions/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let p = all.event_named("session:deleted").await.json();
    assert_eq!(p["sessionId"], sid);
    let e = deleted_only.event().await;
    assert_eq!(
        e.event, "session:deleted",
        "only the channel asked for: {e:?}"
    );
    assert_eq!(e.json()["sessionId"], sid);
    assert!(deleted_only.try_event(QUIET).await.is_none());

    // Refusals.
    let r = common::streaming_http()
        .get(server.url("/v1/bus?channels=session:nope"))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = common::http()
        .get(server.url("/v1/bus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn slow_bus_subscriber_does_not_stop_delivery() {
    const UPDATES: u64 = 3000;
    const IN_FLIGHT: usize = 16;
    let server = Server::start(&[]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "max"})).await);

    // A bus subscriber that never reads a byte: its socket buffers fill, then its stream
    // stops being polled, and the bus keeps going without it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(server.addr).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET /v1/bus HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
                server.addr, server.admin_key
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // `stuck` stays open, and unread, until the end of the test.

    let mut readers = Vec::new();
    for _ in 0..2 {
        let (ws, _) = ws_session(&server, &sid).await;
        readers.push(tokio::spawn(count_updates(ws, UPDATES)));
    }

    // Big updates fill the stuck subscriber's socket quickly.
    let pad = "x".repeat(2048);
    let t0 = Instant::now();
    let client = common::http();
    let patches = futures_util::stream::iter(1..=UPDATES)
        .map(|n| {
            let req = client
                .patch(server.url(&format!("/v1/sessions/{sid}")))
                .bearer_auth(&server.admin_key)
                .json(&json!({"data": {"n": n, "pad": pad}}));
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<u16>>();
    let results = tokio::time::timeout(Duration::from_secs(30), patches)
        .await
        .expect("publishers were held up: the PATCHes did not finish in 30 s");
    assert!(
        results.iter().all(|s| *s == 200),
        "some PATCHes failed: {:?}",
        results
            .iter()
            .filter(|s| **s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    let patched = t0.elapsed();
    for r in readers {
        let got = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("WebSocket connections stopped receiving updates")
            .unwrap();
        assert_eq!(
            got, UPDATES,
            "every update reached every connection, in seq order"
        );
    }
    eprintln!(
        "{UPDATES} PATCHes in {patched:?}, all delivered in {:?}",
        t0.elapsed()
    );

    // The bus still works for a new subscriber, and the figures show it.
    let mut fresh = server.bus("session:updates").await;
    patch_session(&server, &sid, json!({"data": {"last": true}})).await;
    assert_eq!(fresh.event().await.json()["updates"], json!({"last": true}));
    let (_, health) = server.get_json("/v1/health").await;
    assert!(
        health["bus"]["published"]["session:updates"].as_u64() >= Some(UPDATES + 1),
        "{health}"
    );
    drop(stuck);
}

/// Reads `session.updated` frames until `want` have arrived with seq 1..=want in order;
/// returns how many arrived.
async fn count_updates(mut ws: Ws, want: u64) -> u64 {
    let mut seen = 0;
    while seen < want {
        match tokio::time::timeout(WAIT, ws.inner.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "session.updated" {
                    seen += 1;
                    assert_eq!(v["seq"], seen, "out of order or lost");
                } else {
                    panic!("unexpected frame {v}");
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => return seen,
        }
    }
    seen
}

#[tokio::test]
async fn health_and_metrics_show_sessions_and_bus() {
    let server = Server::start(&[]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "ned"})).await);
    server.create_session(json!({"userId": "ned"})).await;
    for n in 0..3 {
        patch_session(&server, &sid, json!({"data": {"n": n}})).await;
    }
    // Bus events follow the flush that makes their write durable: give the last one a moment.
    let mut h = Value::Null;
    for _ in 0..100 {
        let (status, body) = server.get_json("/v1/health").await;
        assert_eq!(status, 200);
        h = body;
        if h["bus"]["published"]["session:updates"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h["sessions"], 2, "{h}");
    assert_eq!(h["bus"]["published"]["session:created"], 2, "{h}");
    assert_eq!(h["bus"]["published"]["session:updates"], 3, "{h}");
    assert_eq!(h["bus"]["lagged"], 0, "{h}");

    let text = server.metrics_text().await;
    for line in [
        "tether_sessions 2",
        "tether_bus_published{channel=\"session:updates\"} 3",
        "tether_bus_published{channel=\"session:created\"} 2",
        "tether_bus_lagged 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn concurrent_updates_from_both_sides_all_merge() {
    const HTTP: usize = 150;
    const PER_SOCKET: usize = 50;
    let server = Server::start(&[]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "ora"})).await);
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(ws_session(&server, &sid).await.0);
    }

    let client = common::http();
    let http = futures_util::stream::iter(0..HTTP)
        .map(|i| {
            let req = client
                .patch(server.url(&format!("/v1/sessions/{sid}")))
                .bearer_auth(&server.admin_key)
                .json(&json!({"data": {format!("h{i}"): i}}));
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(16)
        .collect::<Vec<u16>>();
    let sockets_done =
        futures_util::future::join_all(sockets.iter_mut().enumerate().map(|(c, ws)| async move {
            for i in 0..PER_SOCKET {
                ws.send(
                    json!({"type": "session.update", "id": i, "updates": {format!("w{c}_{i}"): i}}),
                )
                .await;
            }
            // Every ack, and every update from the other side, arrives.
            let mut acks = 0;
            while acks < PER_SOCKET {
                let f = ws.recv().await;
                match f["type"].as_str() {
                    Some("ack") => acks += 1,
                    Some("session.updated") => {}
                    _ => panic!("unexpected frame {f}"),
                }
            }
        }));
    let (statuses, _) = tokio::join!(http, sockets_done);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    let data = got["data"].as_object().unwrap();
    let missing: Vec<String> = (0..HTTP)
        .map(|i| format!("h{i}"))
        .chain((0..2).flat_map(|c| (0..PER_SOCKET).map(move |i| format!("w{c}_{i}"))))
        .filter(|k| !data.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} concurrent updates were lost: {:?}",
        missing.len(),
        HTTP + 2 * PER_SOCKET,
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test]
async fn a_resumed_connection_stays_linked_to_its_session() {
    let server = Server::start(&[]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "vic"})).await);
    let path = format!("/v1/sessions/{sid}");
    let patch = |n: u64| server.send_json(Method::PATCH, &path, json!({"data": {"n": n}}));
    let (mut ws, w) = ws_session(&server, &sid).await;
    let old = conn_id(&w);
    patch(1).await;
    assert_eq!(ws.recv().await["seq"], 1);
    // The socket dies without a close frame: Detached, still linked, still addressed.
    drop(ws);
    let deadline = Instant::now() + WAIT;
    while server.get_json(&format!("/v1/connections/{old}")).await.1["state"] != "detached" {
        assert!(Instant::now() < deadline, "never detached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    patch(2).await;

    let token = w["resumeToken"].as_str().unwrap();
    let mut ws = server
        .ws(&format!(
            "session_id={sid}&resume={old}&resume_token={token}&last_seq=1"
        ))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["sessionId"], sid);
    let new = conn_id(&w);
    let f = ws.recv().await;
    assert_eq!(
        (&f["type"], &f["seq"]),
        (&json!("session.updated"), &json!(2))
    );
    assert_eq!(f["updates"], json!({"n": 2}));
    let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(got["connections"], json!([new]));
    patch(3).await;
    assert_eq!(ws.recv().await["seq"], 3);
}

/// In `sync` mode a session update is flushed once: the PATCH's own commit covers the
/// write, and the `session.updated` published after it does not flush again.
#[tokio::test]
async fn a_sync_session_update_costs_one_flush() {
    // No background flush during the test.
    let server = Server::start(&["--durability", "sync", "--flush-interval-ms", "600000"]).await;
    let sid = sid_of(&server.create_session(json!({"userId": "fay"})).await);
    let (mut ws, _) = ws_session(&server, &sid).await;
    let flushes = || async {
        let text = server.metrics_text().await;
        common::metric(&text, "tether_store_flushes")
            .unwrap_or_else(|| panic!("no tether_store_flushes in {text}")) as u64
    };
    let before = flushes().await;
    for n in 0..10 {
        let (status, body) = patch_session(&server, &sid, json!({"data": {"n": n}})).await;
        assert_eq!(status, 200, "{body}");
        // Published only after its flush: seeing it means the publisher is done with it.
        assert_eq!(ws.recv_type("session.updated").await["updates"]["n"], n);
    }
    assert_eq!(flushes().await - before, 10, "one flush per update");
}
