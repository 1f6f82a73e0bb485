//! The HTTP API's connection, user and registry routes (SPEC §5), the per-user limit, API key
//! permissions, error shapes, restart and the data-directory lock, all against the real
//! server.

mod common;

use std::time::Duration;

use common::{http, Server, Ws, WAIT};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ----- helpers ---------------------------------------------------------------------------

/// Sends a request and returns its status and body (JSON, or the raw text as a JSON string
/// so that a non-JSON body fails the shape checks visibly).
async fn call(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// A request with the admin key and a raw (possibly malformed) body.
async fn raw(server: &Server, method: Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    call(
        server
            .admin(method, path)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// Asserts `status` and that the body is `{"error": {"code": str, "message": str}}`.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, what: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{what}: status, body {body}");
    let e = &body["error"];
    assert!(
        e["code"].as_str().is_some_and(|c| !c.is_empty())
            && e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error body must be {{\"error\": {{\"code\", \"message\"}}}}, got {body}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "{what}: only `error` at the top level, got {body}"
    );
}

/// `2026-11-21T23:59:01.123Z`: RFC 3339, UTC, millisecond precision.
#[track_caller]
fn assert_time(v: &Value, what: &str) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    let shape_ok = s.len() == 24
        && s.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == '.',
            23 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "{what}: `{s}` is not like 2026-11-21T23:59:01.123Z"
    );
    tether::time::parse_rfc3339(s).unwrap_or_else(|| panic!("{what}: `{s}` does not parse"))
}

fn now_ms() -> i64 {
    tether::time::now_ms()
}

fn id_of(welcome: &Value) -> String {
    welcome["connectionId"]
        .as_str()
        .expect("connectionId")
        .to_string()
}

/// Connects `sub` with extra request headers; returns the socket and its welcome.
async fn connect_with(
    server: &Server,
    sub: &str,
    extra: Value,
    headers: &[(&str, &str)],
) -> (Ws, Value) {
    let token = server.token(sub, extra);
    let mut ws = server
        .ws_with_headers(&format!("token={token}"), headers)
        .await;
    let welcome = ws.recv_type("welcome").await;
    (ws, welcome)
}

async fn info(server: &Server, id: &str) -> (u16, Value) {
    server.get_json(&format!("/v1/connections/{id}")).await
}

/// Polls until `GET /v1/connections/{id}` answers `status` (state changes after a socket
/// event are asynchronous).
async fn wait_status(server: &Server, id: &str, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, body) = info(server, id).await;
        if s == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection {id}: still {s} {body}, wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(server: &Server, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, body) = info(server, id).await;
        if s == 200 && body["state"] == state {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection {id}: {s} {body}, wanted state {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events(server: &Server, query: &str) -> Vec<Value> {
    let (s, body) = server.get_json(&format!("/v1/events?{query}")).await;
    assert_eq!(s, 200, "events?{query}: {body}");
    body.as_array().expect("events is an array").clone()
}

fn types(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect()
}

/// Sends a raw HTTP/1.1 request and returns the response head and body, failing if the
/// server does not answer within a few seconds.
async fn raw_http(server: &Server, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&out);
                    // Enough once the head and a JSON body are in.
                    if let Some(i) = text.find("\r\n\r\n") {
                        if text[i..].contains('}') {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server hung on:\n{request}");
    String::from_utf8_lossy(&out).into_owned()
}

// ----- single-connection routes ----------------------------------------------------------

/// A message to a user with hundreds of connections (a fan-out large enough to be spread
/// over threads) reaches every socket once, in order, each with its own next `seq`; a
/// detached one gets it on resume.
#[tokio::test]
async fn a_large_fan_out_reaches_every_connection_once_in_order() {
    const N: usize = 600;
    let server = Server::start(&["--max-per-user", "700"]).await;
    let mut crowd: Vec<(Ws, Value)> = Vec::new();
    for chunk in 0..N / 100 {
        let opened =
            futures_util::future::join_all((0..100).map(|_| server.connect("crowd"))).await;
        assert_eq!(opened.len(), 100, "chunk {chunk}");
        crowd.extend(opened);
    }
    for j in 0..3 {
        let (s, r) = server
            .send_json(
                Method::POST,
                "/v1/users/crowd/messages",
                json!({"data": {"j": j}}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(
            (r["delivered"].as_u64(), r["stored"].as_u64()),
            (Some(N as u64), Some(N as u64)),
            "{r}"
        );
    }
    for (ws, _) in crowd.iter_mut() {
        for j in 0..3u64 {
            let m = ws.recv_type("message").await;
            assert_eq!(
                (m["seq"].as_u64(), m["data"]["j"].as_u64()),
                (Some(j + 1), Some(j)),
                "{m}"
            );
        }
        assert!(
            ws.try_recv(Duration::from_millis(1)).await.is_none(),
            "one frame per message"
        );
    }

    // One socket goes away without a close; the next message is kept for it.
    let (gone, welcome) = crowd.pop().unwrap();
    drop(gone);
    let id = welcome["connectionId"].as_str().unwrap();
    wait_state(&server, id, "detached").await;
    let (s, r) = server
        .send_json(
            Method::POST,
            "/v1/users/crowd/messages",
            json!({"data": {"j": 3}}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["delivered"].as_u64(), r["stored"].as_u64()),
        (Some(N as u64 - 1), Some(N as u64)),
        "{r}"
    );
    let mut back = server
        .ws(&common::resume_query(&server, "crowd", &welcome, Some(3)))
        .await;
    let w = back.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    let m = back.recv_type("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["data"]["j"].as_u64()),
        (Some(4), Some(3)),
        "{m}"
    );
    for (ws, _) in crowd.iter_mut() {
        assert_eq!(ws.recv_type("message").await["seq"], 4);
    }
}

#[tokio::test]
async fn lookup_user_and_valid() {
    let server = Server::start(&[]).await;
    let before = now_ms();
    let (_ws, welcome) = connect_with(
        &server,
        "alice",
        json!({"permissions": ["chat:write"], "roles": ["mod"], "name": "Alice", "tenant": "acme"}),
        &[
            ("user-agent", "api-test/1.0"),
            ("x-client-version", "3.2.1"),
        ],
    )
    .await;
    let id = id_of(&welcome);

    let (s, c) = info(&server, &id).await;
    assert_eq!(s, 200, "{c}");
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "connectionId",
        "userId",
        "sessionId",
        "state",
        "connectedAt",
        "expiresAt",
        "metadata",
    ] {
        assert!(keys.contains(&k), "ConnectionInfo lacks `{k}`: {c}");
    }
    assert!(
        keys.iter().all(|k| !k.contains('_')),
        "ConnectionInfo fields are camelCase: {keys:?}"
    );
    assert_eq!(c["connectionId"], id.as_str());
    assert_eq!(c["userId"], "alice");
    assert_eq!(c["sessionId"], Value::Null);
    assert_eq!(c["state"], "active");
    let connected = assert_time(&c["connectedAt"], "connectedAt");
    let expires = assert_time(&c["expiresAt"], "expiresAt");
    assert!(
        connected >= before - 1000 && connected <= now_ms() + 1000,
        "connectedAt {connected} is not about now"
    );
    assert!(
        (expires - connected - 3_600_000).abs() < 5_000,
        "expiresAt is connectedAt + ttl_seconds (3600 s): {c}"
    );
    assert_eq!(c["expiresAt"], welcome["expiresAt"]);

    let m = &c["metadata"];
    let mkeys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "ip",
        "userAgent",
        "connectedAt",
        "lastActivity",
        "clientVersion",
        "connectionType",
        "permissions",
        "rateLimit",
    ];
    let mut got = mkeys.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "ConnectionMetadata fields: {m}");
    assert_eq!(m["ip"], "127.0.0.1");
    assert_eq!(m["userAgent"], "api-test/1.0");
    assert_eq!(m["clientVersion"], "3.2.1");
    assert_eq!(m["connectionType"], "websocket");
    assert_eq!(m["permissions"], json!(["chat:write"]));
    assert_eq!(m["connectedAt"], c["connectedAt"]);
    assert_time(&m["lastActivity"], "metadata.lastActivity");
    assert_eq!(m["rateLimit"]["messagesPerMinute"], 120);
    assert_time(&m["rateLimit"]["lastReset"], "rateLimit.lastReset");
    assert_eq!(
        m["rateLimit"].as_object().unwrap().len(),
        2,
        "rateLimit is {{messagesPerMinute, lastReset}}: {m}"
    );

    let (s, u) = server.get_json(&format!("/v1/connections/{id}/user")).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["id"], "alice");
    assert_eq!(u["permissions"], json!(["chat:write"]));
    assert_eq!(u["roles"], json!(["mod"]));
    assert_eq!(u["name"], "Alice");
    assert_eq!(
        u["claims"]["tenant"], "acme",
        "unknown claims are kept: {u}"
    );

    let (s, v) = server
        .get_json(&format!("/v1/connections/{id}/valid"))
        .await;
    assert_eq!((s, v), (200, json!({"valid": true})));

    let unknown = uuid::Uuid::new_v4();
    let (s, v) = server
        .get_json(&format!("/v1/connections/{unknown}/valid"))
        .await;
    assert_eq!((s, v), (200, json!({"valid": false})));
    let (s, v) = server.get_json("/v1/connections/not-a-uuid/valid").await;
    assert_eq!((s, v), (200, json!({"valid": false})));

    assert_error(
        &info(&server, &unknown.to_string()).await,
        404,
        "unknown id",
    );
    assert_error(&info(&server, "not-a-uuid").await, 404, "non-UUID id");
    assert_error(
        &server
            .get_json(&format!("/v1/connections/{unknown}/user"))
            .await,
        404,
        "user of an unknown id",
    );
}

#[tokio::test]
async fn patch_metadata() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("pat").await;
    let id = id_of(&welcome);
    let path = format!("/v1/connections/{id}/metadata");
    let before = info(&server, &id).await.1;

    let (s, c) = server
        .send_json(
            Method::PATCH,
            &path,
            json!({
                "ip": "10.1.2.3",
                "userAgent": "patched/2",
                "clientVersion": "9.9.9",
                "permissions": ["a", "b"],
                "rateLimit": {"messagesPerMinute": 2},
            }),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        c["connectionId"],
        id.as_str(),
        "returns ConnectionInfo: {c}"
    );
    let (_, got) = info(&server, &id).await;
    assert_eq!(got["metadata"], c["metadata"], "GET shows the patch");
    let m = &got["metadata"];
    assert_eq!(m["ip"], "10.1.2.3");
    assert_eq!(m["userAgent"], "patched/2");
    assert_eq!(m["clientVersion"], "9.9.9");
    assert_eq!(m["permissions"], json!(["a", "b"]));
    assert_eq!(m["rateLimit"]["messagesPerMinute"], 2);
    assert_eq!(got["userId"], "pat");
    assert_eq!(got["connectedAt"], before["connectedAt"]);
    assert_eq!(
        got["metadata"]["connectedAt"],
        before["metadata"]["connectedAt"]
    );
    assert_eq!(got["metadata"]["connectionType"], "websocket");

    // The new rate limit is the one the socket lives under.
    for i in 0..3 {
        ws.send(json!({"type": "ping", "id": i})).await;
    }
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": 0}));
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": 1}));
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");

    // clientVersion may be cleared.
    let (s, c) = server
        .send_json(Method::PATCH, &path, json!({"clientVersion": null}))
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["metadata"]["clientVersion"], Value::Null);

    // Read-only fields: 422, and nothing changes.
    for body in [
        json!({"userId": "mallory"}),
        json!({"connectedAt": "2020-01-01T00:00:00.000Z"}),
        json!({"connectionType": "sse"}),
        json!({"ip": "10.9.9.9", "state": "detached"}),
        json!({"rateLimit": {"lastReset": "2020-01-01T00:00:00.000Z"}}),
        json!({"rateLimit": {"messagesPerMinute": 0}}),
    ] {
        let r = server.send_json(Method::PATCH, &path, body.clone()).await;
        assert_error(&r, 422, &format!("PATCH {body}"));
    }
    // Wrong types and bad JSON: 400.
    for body in [
        json!({"ip": 5}),
        json!({"permissions": "admin"}),
        json!({"permissions": [1, 2]}),
        json!({"rateLimit": 10}),
        json!({"clientVersion": 3}),
        json!([]),
    ] {
        let r = server.send_json(Method::PATCH, &path, body.clone()).await;
        assert_error(&r, 400, &format!("PATCH {body}"));
    }
    for body in ["{\"ip\":", "", "not json"] {
        let r = raw(&server, Method::PATCH, &path, body.into()).await;
        assert_error(&r, 400, &format!("PATCH {body:?}"));
    }
    let (_, after) = info(&server, &id).await;
    assert_eq!(after["userId"], "pat");
    assert_eq!(
        after["metadata"]["ip"], "10.1.2.3",
        "a refused PATCH changes nothing"
    );
    assert_eq!(after["metadata"]["connectionType"], "websocket");
    assert_eq!(after["state"], "active");

    let unknown = uuid::Uuid::new_v4();
    let r = server
        .send_json(
            Method::PATCH,
            &format!("/v1/connections/{unknown}/metadata"),
            json!({"ip": "1.1.1.1"}),
        )
        .await;
    assert_error(&r, 404, "PATCH unknown id");
}

#[tokio::test]
async fn ttl_extends_and_expiry_closes_4004() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("ttl").await;
    let id = id_of(&welcome);
    let path = format!("/v1/connections/{id}/ttl");
    let old = assert_time(&info(&server, &id).await.1["expiresAt"], "expiresAt");

    let (s, c) = server
        .send_json(Method::POST, &path, json!({"ttlSeconds": 7200}))
        .await;
    assert_eq!(s, 200, "{c}");
    let moved = assert_time(&c["expiresAt"], "expiresAt");
    assert!(
        (moved - now_ms() - 7_200_000).abs() < 5_000,
        "expiresAt is now + 7200 s: {c}"
    );
    assert!(moved > old + 3_000_000, "expiresAt moved later");
    assert_eq!(info(&server, &id).await.1["expiresAt"], c["expiresAt"]);

    let r = server
        .send_json(Method::POST, &path, json!({"ttlSeconds": 0}))
        .await;
    assert_error(&r, 422, "ttlSeconds 0");
    for body in [
        json!({"ttlSeconds": -5}),
        json!({"ttlSeconds": 1.5}),
        json!({"ttlSeconds": 60, "extra": 1}),
    ] {
        let r = server.send_json(Method::POST, &path, body.clone()).await;
        assert_error(&r, 422, &format!("ttl {body}"));
    }
    for body in [
        json!({}),
        json!({"ttlSeconds": "60"}),
        json!({"ttlSeconds": null}),
    ] {
        let r = server.send_json(Method::POST, &path, body.clone()).await;
        assert_error(&r, 400, &format!("ttl {body}"));
    }
    assert_error(
        &raw(&server, Method::POST, &path, b"{ttlSeconds: 5}".to_vec()).await,
        400,
        "ttl bad JSON",
    );
    let unknown = uuid::Uuid::new_v4();
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{unknown}/ttl"),
                json!({"ttlSeconds": 60}),
            )
            .await,
        404,
        "ttl unknown id",
    );

    // TTLs are bounded like `ttl_seconds` in the config (10 years); beyond that they are
    // refused, never wrapped into the past.
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    for ttl in [u64::MAX, i64::MAX as u64 + 1, TEN_YEARS + 1] {
        let r = server
            .send_json(Method::POST, &path, json!({"ttlSeconds": ttl}))
            .await;
        assert_error(&r, 422, &format!("ttlSeconds {ttl}"));
    }
    let (s, c) = server
        .send_json(Method::POST, &path, json!({"ttlSeconds": TEN_YEARS}))
        .await;
    assert_eq!(s, 200, "{c}");
    let far = assert_time(&c["expiresAt"], "expiresAt");
    assert!(
        (far - now_ms() - TEN_YEARS as i64 * 1000).abs() < 5_000,
        "{c}"
    );
    let (_, c) = info(&server, &id).await;
    assert!(
        assert_time(&c["expiresAt"], "expiresAt") > now_ms() + 3_000_000,
        "a huge ttl must not put expiresAt in the past: {c}"
    );
    assert_eq!(
        server
            .get_json(&format!("/v1/connections/{id}/valid"))
            .await
            .1,
        json!({"valid": true})
    );

    // A short TTL: the sweeper closes the socket with 4004 (reconnect), and it is no longer
    // valid.
    let (s, c) = server
        .send_json(Method::POST, &path, json!({"ttlSeconds": 1}))
        .await;
    assert_eq!(s, 200, "{c}");
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(4004), "{closed:?}");
    let d = closed
        .disconnect
        .expect("a disconnect frame before the close");
    assert_eq!(d["code"], 4004);
    assert_eq!(d["reconnect"], true);
    assert_eq!(
        server
            .get_json(&format!("/v1/connections/{id}/valid"))
            .await
            .1,
        json!({"valid": false})
    );
    let c = wait_state(&server, &id, "detached").await;
    assert_eq!(c["userId"], "ttl", "an expired connection stays resumable");
}

#[tokio::test]
async fn migrate_moves_a_live_socket() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("mig").await;
    let (_other, other_welcome) = server.connect("mig-other").await;
    let old = id_of(&welcome);
    let other = id_of(&other_welcome);
    let before = info(&server, &old).await.1;

    // One message before the move, so the seq must carry over.
    let (s, m) = server
        .send_json(
            Method::POST,
            &format!("/v1/connections/{old}/messages"),
            json!({"data": "before"}),
        )
        .await;
    assert_eq!((s, m["seq"].clone()), (200, json!(1)), "{m}");
    assert_eq!(ws.recv_type("message").await["data"], "before");

    let new = uuid::Uuid::new_v4().to_string();
    let (s, c) = server
        .send_json(
            Method::POST,
            &format!("/v1/connections/{old}/migrate"),
            json!({"newConnectionId": new}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["connectionId"], new.as_str());
    assert_eq!(c["userId"], "mig");
    assert_eq!(c["connectedAt"], before["connectedAt"]);
    assert_eq!(c["metadata"], before["metadata"]);

    assert_error(&info(&server, &old).await, 404, "old id after migrate");
    let (s, now) = info(&server, &new).await;
    assert_eq!(s, 200, "{now}");
    assert_eq!(now["state"], "active");
    assert_eq!(
        server
            .get_json(&format!("/v1/connections/{new}/valid"))
            .await
            .1,
        json!({"valid": true})
    );

    // The socket works under the new id.
    let (s, m) = server
        .send_json(
            Method::POST,
            &format!("/v1/connections/{new}/messages"),
            json!({"data": {"after": true}}),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["delivered"], 1);
    assert_eq!(m["seq"], 2, "seq carries over a migrate");
    let frame = ws.recv_type("message").await;
    assert_eq!(frame["data"], json!({"after": true}));
    assert_eq!(frame["seq"], 2);
    ws.send(json!({"type": "ping", "id": "still-here"})).await;
    assert_eq!(ws.recv_type("pong").await["id"], "still-here");

    // The old id is gone for every route; a taken id is a conflict.
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{old}/migrate"),
                json!({"newConnectionId": uuid::Uuid::new_v4()}),
            )
            .await,
        404,
        "migrate the old id",
    );
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{new}/migrate"),
                json!({"newConnectionId": other}),
            )
            .await,
        409,
        "migrate onto an existing id",
    );
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{new}/migrate"),
                json!({"newConnectionId": new}),
            )
            .await,
        409,
        "migrate onto itself",
    );
    assert_eq!(info(&server, &other).await.1["userId"], "mig-other");
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{new}/migrate"),
                json!({"newConnectionId": "nope"}),
            )
            .await,
        422,
        "migrate to a non-UUID",
    );
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{new}/migrate"),
                json!({}),
            )
            .await,
        400,
        "migrate without newConnectionId",
    );

    let evs = events(&server, &format!("connectionId={new}&type=migrated")).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["details"]["from"], old.as_str());
    assert_eq!(evs[0]["details"]["to"], new.as_str());

    // An operator close reaches the socket under its new id.
    let r = call(server.admin(
        Method::DELETE,
        &format!("/v1/connections/{new}?reason=moved"),
    ))
    .await;
    assert_eq!(r.0, 204, "{r:?}");
    let closed = ws.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (Some(4506), "moved"));
}

#[tokio::test]
async fn force_disconnect_with_reason_and_reconnect() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("force").await;
    let id = id_of(&welcome);
    let r = call(server.admin(
        Method::DELETE,
        &format!("/v1/connections/{id}?reason=maintenance%20window"),
    ))
    .await;
    assert_eq!(r.0, 204, "{r:?}");
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(4506), "{closed:?}");
    assert_eq!(closed.reason, "maintenance window");
    let d = closed.disconnect.expect("disconnect frame");
    assert_eq!(
        d,
        json!({"type": "disconnect", "code": 4506, "reason": "maintenance window", "reconnect": false})
    );
    assert_error(&info(&server, &id).await, 404, "after forceDisconnect");
    assert_error(
        &call(server.admin(Method::DELETE, &format!("/v1/connections/{id}"))).await,
        404,
        "DELETE twice",
    );

    let (mut ws, welcome) = server.connect("force").await;
    let id = id_of(&welcome);
    let r = call(server.admin(
        Method::DELETE,
        &format!("/v1/connections/{id}?reason=deploy&reconnect=true"),
    ))
    .await;
    assert_eq!(r.0, 204, "{r:?}");
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(4006), "{closed:?}");
    assert_eq!(closed.reason, "deploy");
    let d = closed.disconnect.expect("disconnect frame");
    assert_eq!(d["code"], 4006);
    assert_eq!(d["reconnect"], true);
    assert_error(&info(&server, &id).await, 404, "after forceDisconnect");

    // A long reason is cut to fit a close frame (123 bytes), on a character boundary.
    let (mut ws, welcome) = server.connect("force").await;
    let id = id_of(&welcome);
    let long = "é".repeat(200);
    let encoded = "%C3%A9".repeat(200);
    let r = call(server.admin(
        Method::DELETE,
        &format!("/v1/connections/{id}?reason={encoded}"),
    ))
    .await;
    assert_eq!(r.0, 204, "{r:?}");
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(4506), "{closed:?}");
    assert!(
        !closed.reason.is_empty() && closed.reason.len() <= 123 && long.starts_with(&closed.reason),
        "{closed:?}"
    );
}

#[tokio::test]
async fn send_assigns_consecutive_seqs() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("seq").await;
    let id = id_of(&welcome);
    let path = format!("/v1/connections/{id}/messages");
    let start = welcome["seq"].as_u64().unwrap();
    let payloads = [
        json!({"n": 1}),
        json!("two"),
        json!([3]),
        json!(null),
        json!(5.5),
    ];
    let mut seqs = Vec::new();
    for p in &payloads {
        let (s, r) = server
            .send_json(Method::POST, &path, json!({"data": p}))
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["delivered"], 1, "{r}");
        seqs.push(r["seq"].as_u64().expect("seq"));
    }
    let expected: Vec<u64> = (start + 1..=start + payloads.len() as u64).collect();
    assert_eq!(seqs, expected, "seq goes up by one per message");
    for (p, seq) in payloads.iter().zip(&seqs) {
        let f = ws.recv_type("message").await;
        assert_eq!(&f["data"], p);
        assert_eq!(f["seq"], *seq, "frame seq matches the reply: {f}");
        assert_time(&f["ts"], "message.ts");
    }
    assert_error(
        &server.send_json(Method::POST, &path, json!({})).await,
        400,
        "message without data",
    );
    assert_error(
        &server
            .send_json(
                Method::POST,
                &format!("/v1/connections/{}/messages", uuid::Uuid::new_v4()),
                json!({"data": 1}),
            )
            .await,
        404,
        "message to an unknown id",
    );
    // Nothing refused was delivered.
    assert!(ws.try_recv(Duration::from_millis(200)).await.is_none());
}

// ----- users -----------------------------------------------------------------------------

#[tokio::test]
async fn user_routes_list_message_and_disconnect_every_device() {
    let server = Server::start(&[]).await;
    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (ws, w) = server.connect("dev").await;
        ids.push(id_of(&w));
        sockets.push(ws);
    }
    let (mut bystander, bw) = server.connect("not-dev").await;

    let (s, list) = server.get_json("/v1/users/dev/connections").await;
    assert_eq!(s, 200, "{list}");
    let list = list.as_array().unwrap();
    let listed: Vec<&str> = list
        .iter()
        .map(|c| c["connectionId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "oldest first");
    let times: Vec<i64> = list
        .iter()
        .map(|c| assert_time(&c["connectedAt"], "connectedAt"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(list
        .iter()
        .all(|c| c["userId"] == "dev" && c["state"] == "active"));
    assert_eq!(
        server.get_json("/v1/users/nobody/connections").await,
        (200, json!([]))
    );

    let (s, r) = server
        .send_json(
            Method::POST,
            "/v1/users/dev/messages",
            json!({"data": {"to": "all"}}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["delivered"], 3, "{r}");
    for ws in sockets.iter_mut() {
        let m = ws.recv_type("message").await;
        assert_eq!(m["data"], json!({"to": "all"}));
        assert_eq!(m["seq"], 1);
    }
    assert!(
        bystander
            .try_recv(Duration::from_millis(200))
            .await
            .is_none(),
        "another user's socket gets nothing"
    );
    let (s, r) = server
        .send_json(
            Method::POST,
            "/v1/users/nobody/messages",
            json!({"data": 1}),
        )
        .await;
    assert_eq!((s, r["delivered"].clone()), (200, json!(0)), "{r}");
    assert_error(
        &server
            .send_json(Method::POST, "/v1/users/dev/messages", json!({}))
            .await,
        400,
        "user message without data",
    );
    assert_error(
        &server
            .send_json(Method::POST, "/v1/users/dev/messages", json!({"date": 1}))
            .await,
        422,
        "user message with a misspelt field",
    );

    let (s, r) = call(server.admin(Method::DELETE, "/v1/users/dev/connections")).await;
    assert_eq!((s, r), (200, json!({"disconnected": 3})));
    for ws in sockets.iter_mut() {
        let c = ws.closed().await;
        assert_eq!(c.code, Some(4506), "{c:?}");
        assert_eq!(c.disconnect.as_ref().unwrap()["reconnect"], false);
    }
    assert_eq!(
        server.get_json("/v1/users/dev/connections").await,
        (200, json!([]))
    );
    for id in &ids {
        assert_error(
            &info(&server, id).await,
            404,
            "after disconnecting every device",
        );
    }
    assert_eq!(
        call(server.admin(Method::DELETE, "/v1/users/dev/connections")).await,
        (200, json!({"disconnected": 0}))
    );
    assert_eq!(info(&server, &id_of(&bw)).await.1["state"], "active");

    // User ids are path segments: `+` is a plain character there, `%2F` a slash.
    for (user, segment) in [
        ("bob+1@example.com", "bob+1@example.com"),
        ("team/ops", "team%2Fops"),
        ("r&d", "r&d"),
        ("zoë x", "zo%C3%AB%20x"),
    ] {
        let (mut ws, w) = server.connect(user).await;
        let (s, list) = server
            .get_json(&format!("/v1/users/{segment}/connections"))
            .await;
        assert_eq!(s, 200, "{list}");
        assert_eq!(
            list.as_array().map(|l| l.len()),
            Some(1),
            "{user} via /v1/users/{segment}/connections: {list}"
        );
        assert_eq!(list[0]["connectionId"], id_of(&w).as_str());
        let (s, r) = server
            .send_json(
                Method::POST,
                &format!("/v1/users/{segment}/messages"),
                json!({"data": user}),
            )
            .await;
        assert_eq!((s, r["delivered"].clone()), (200, json!(1)), "{user}: {r}");
        assert_eq!(ws.recv_type("message").await["data"], user);
        let r =
            call(server.admin(Method::DELETE, &format!("/v1/users/{segment}/connections"))).await;
        assert_eq!(r, (200, json!({"disconnected": 1})), "{user}");
        assert_eq!(ws.closed().await.code, Some(4506));
    }
}

#[tokio::test]
async fn per_user_limit_evicts_the_oldest() {
    let server = Server::start(&["--max-per-user", "2"]).await;
    let (mut first, w1) = server.connect("lim").await;
    let (mut second, w2) = server.connect("lim").await;
    let (mut third, w3) = server.connect("lim").await;

    let closed = first.closed().await;
    assert_eq!(closed.code, Some(4505), "{closed:?}");
    let d = closed.disconnect.expect("disconnect frame");
    assert_eq!(d["code"], 4505);
    assert_eq!(d["reconnect"], false);

    let (_, list) = server.get_json("/v1/users/lim/connections").await;
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connectionId"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![id_of(&w2), id_of(&w3)],
        "the two newest, oldest first"
    );
    assert_error(&info(&server, &id_of(&w1)).await, 404, "evicted connection");

    let evs = events(&server, "userId=lim&type=evicted").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["connectionId"], id_of(&w1).as_str());

    // The survivors still work.
    for ws in [&mut second, &mut third] {
        ws.send(json!({"type": "ping", "id": 1})).await;
        assert_eq!(ws.recv_type("pong").await["id"], 1);
    }
    // Another user is not affected by this user's limit.
    let (_o, _) = server.connect("lim-other").await;
    assert_eq!(
        server
            .get_json("/v1/users/lim/connections")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

// ----- registry-wide routes --------------------------------------------------------------

#[tokio::test]
async fn limits_health_stats_and_cleanup() {
    let server = Server::start(&[
        "--max-per-user",
        "3",
        "--max-total",
        "50",
        "--ttl-seconds",
        "600",
        "--resume-grace-seconds",
        "1",
    ])
    .await;
    assert_eq!(
        server.get_json("/v1/limits").await,
        (
            200,
            json!({"maxPerUser": 3, "maxTotal": 50, "ttlSeconds": 600})
        )
    );

    let (_a, wa) = connect_with(&server, "h-a", json!({}), &[("x-client-version", "1.2.3")]).await;
    let (_b1, _) = connect_with(&server, "h-b", json!({}), &[("x-client-version", "2.0.0")]).await;
    let (_b2, _) = server.connect("h-b").await;
    let (dropped, wd) = server.connect("h-c").await;
    // A socket that dies without a close frame becomes Detached.
    drop(dropped);
    wait_state(&server, &id_of(&wd), "detached").await;

    let (s, h) = server.get_json("/v1/health").await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["activeConnections"], 3, "{h}");
    assert_eq!(h["detachedConnections"], 1, "{h}");
    assert_eq!(h["usersWithConnections"], 2, "{h}");
    assert_eq!(h["byState"], json!({"active": 3, "detached": 1}), "{h}");
    assert_eq!(h["byConnectionType"], json!({"websocket": 3}), "{h}");
    assert_eq!(
        h["byClientVersion"],
        json!({"1.2.3": 1, "2.0.0": 1, "unknown": 1}),
        "{h}"
    );
    assert!(h["memoryUsage"].as_u64().is_some_and(|m| m > 0), "{h}");

    let (s, st) = server.get_json("/v1/stats").await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["totalConnections"], 4, "{st}");
    assert_eq!(st["activeUsers"], 2, "{st}");
    assert!(
        st["messagesPerSecond"].as_f64().is_some_and(|v| v >= 0.0),
        "{st}"
    );
    let avg = st["avgConnectionDuration"]
        .as_f64()
        .expect("avgConnectionDuration");
    assert!((0.0..60.0).contains(&avg), "seconds, not ms: {st}");

    // Cleanup removes the Detached connection once its grace period is over, and nothing
    // else.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, r) = server
        .send_json(Method::POST, "/v1/cleanup", json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(r["cleaned"].as_u64().is_some(), "{r}");
    assert_error(
        &info(&server, &id_of(&wd)).await,
        404,
        "detached past grace",
    );
    assert_eq!(
        server
            .send_json(Method::POST, "/v1/cleanup", json!({}))
            .await,
        (200, json!({"cleaned": 0})),
        "nothing left to clean"
    );
    assert_eq!(
        server
            .get_json(&format!("/v1/connections/{}/valid", id_of(&wa)))
            .await
            .1,
        json!({"valid": true})
    );
    assert_eq!(
        server.get_json("/v1/health").await.1["activeConnections"],
        3
    );
    let expired = events(
        &server,
        &format!("connectionId={}&type=expired", id_of(&wd)),
    )
    .await;
    assert_eq!(expired.len(), 1, "{expired:?}");
}

#[tokio::test]
async fn event_log_and_its_filters() {
    let server = Server::start(&[]).await;
    let (mut ws1, w1) = server.connect("evt").await;
    let id1 = id_of(&w1);
    ws1.close().await;
    wait_status(&server, &id1, 404).await;
    let (mut ws2, w2) = server.connect("evt").await;
    let id2 = id_of(&w2);
    let r = call(server.admin(Method::DELETE, &format!("/v1/connections/{id2}?reason=bye"))).await;
    assert_eq!(r.0, 204);
    ws2.closed().await;
    let (_ws3, _) = server.connect("evt-other").await;

    let all = events(&server, "userId=evt").await;
    let t = types(&all);
    for want in ["authenticated", "connected", "disconnected", "forced"] {
        assert!(t.contains(&want), "`{want}` missing from {t:?}");
    }
    for e in &all {
        assert_eq!(e["userId"], "evt", "{e}");
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "connectionId",
                "details",
                "eventType",
                "seq",
                "timestamp",
                "userId"
            ],
            "{e}"
        );
        assert_time(&e["timestamp"], "event timestamp");
    }
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "newest last: {seqs:?}"
    );
    assert_eq!(t.last(), Some(&"forced"), "the newest event is last: {t:?}");

    let first = events(&server, &format!("connectionId={id1}")).await;
    assert!(first.iter().all(|e| e["connectionId"] == id1.as_str()));
    let ft = types(&first);
    assert!(
        ft.contains(&"authenticated") && ft.contains(&"connected") && ft.contains(&"disconnected"),
        "{ft:?}"
    );
    assert!(!ft.contains(&"forced"), "{ft:?}");

    let forced = events(&server, "userId=evt&type=forced").await;
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert_eq!(forced[0]["connectionId"], id2.as_str());
    assert_eq!(forced[0]["details"]["reason"], "bye");
    assert_eq!(forced[0]["details"]["code"], 4506);

    let last = events(&server, "userId=evt&limit=1").await;
    assert_eq!(
        last,
        vec![all.last().unwrap().clone()],
        "limit keeps the newest"
    );
    let two = events(&server, "userId=evt&limit=2").await;
    assert_eq!(two, all[all.len() - 2..].to_vec());

    // `since` keeps events at or after it.
    let since = forced[0]["timestamp"].as_str().unwrap();
    let recent = events(&server, &format!("userId=evt&since={since}")).await;
    assert!(!recent.is_empty() && recent.len() < all.len(), "{recent:?}");
    assert!(recent
        .iter()
        .all(|e| e["timestamp"].as_str().unwrap() >= since));
    assert!(types(&recent).contains(&"forced"));
    assert_eq!(
        events(&server, "since=2999-01-01T00:00:00.000Z").await,
        Vec::<Value>::new()
    );
    assert!(
        events(&server, "userId=evt&since=2000-01-01T00:00:00Z")
            .await
            .len()
            == all.len()
    );
    assert!(
        events(&server, "userId=evt-other&type=connected")
            .await
            .len()
            == 1
    );

    for bad in [
        "since=yesterday",
        "since=2026-13-01T00:00:00Z",
        "since=",
        "type=exploded",
        "limit=0",
        "limit=many",
        "connectionId=not-a-uuid",
    ] {
        let r = server.get_json(&format!("/v1/events?{bad}")).await;
        assert_error(&r, 400, bad);
    }
}

// ----- API keys, errors, unauthenticated routes --------------------------------------------

const READ_KEY: &str = "tk_reader_0123456789abcdef";

#[tokio::test]
async fn api_keys_and_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            "[[api_keys]]\nkey = \"{READ_KEY}\"\nname = \"reader\"\npermissions = [\"read\"]\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]).await;
    let (mut ws, w) = server.connect("keyed").await;
    let id = id_of(&w);
    let client = http();

    // No key, a wrong key, a malformed header: 401.
    let no_key = call(client.get(server.url("/v1/limits"))).await;
    assert_error(&no_key, 401, "no key");
    let wrong = call(
        client
            .get(server.url("/v1/limits"))
            .bearer_auth("tk_wrong_wrong_wrong_wrong"),
    )
    .await;
    assert_error(&wrong, 401, "wrong key");
    let wrong_header = call(
        client
            .get(server.url("/v1/limits"))
            .header("x-api-key", "tk_wrong_wrong_wrong_wrong"),
    )
    .await;
    assert_error(&wrong_header, 401, "wrong X-Api-Key");
    let basic = call(
        client
            .get(server.url("/v1/limits"))
            .header("authorization", format!("Basic {READ_KEY}")),
    )
    .await;
    assert_error(&basic, 401, "not a bearer key");
    let (s, _) = call(client.delete(server.url(&format!("/v1/connections/{id}")))).await;
    assert_eq!(s, 401, "a DELETE without a key");

    // The read key can GET, by either header.
    let read = |m: Method, p: &str| client.request(m, server.url(p)).bearer_auth(READ_KEY);
    for p in [
        format!("/v1/connections/{id}"),
        format!("/v1/connections/{id}/user"),
        format!("/v1/connections/{id}/valid"),
        "/v1/users/keyed/connections".to_string(),
        "/v1/limits".to_string(),
        "/v1/health".to_string(),
        "/v1/stats".to_string(),
        "/v1/events".to_string(),
    ] {
        let (s, body) = call(read(Method::GET, &p)).await;
        assert_eq!(s, 200, "read key GET {p}: {body}");
    }
    let (s, c) = call(
        client
            .get(server.url(&format!("/v1/connections/{id}")))
            .header("x-api-key", READ_KEY),
    )
    .await;
    assert_eq!((s, c["userId"].clone()), (200, json!("keyed")), "X-Api-Key");

    // ... and nothing else.
    let writes = [
        (Method::DELETE, format!("/v1/connections/{id}"), None),
        (
            Method::POST,
            format!("/v1/connections/{id}/messages"),
            Some(json!({"data": "no"})),
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}/metadata"),
            Some(json!({"ip": "6.6.6.6"})),
        ),
        (
            Method::POST,
            format!("/v1/connections/{id}/ttl"),
            Some(json!({"ttlSeconds": 1})),
        ),
        (
            Method::POST,
            format!("/v1/connections/{id}/migrate"),
            Some(json!({"newConnectionId": uuid::Uuid::new_v4()})),
        ),
        (Method::DELETE, "/v1/users/keyed/connections".into(), None),
        (
            Method::POST,
            "/v1/users/keyed/messages".into(),
            Some(json!({"data": "no"})),
        ),
        (Method::POST, "/v1/cleanup".into(), Some(json!({}))),
    ];
    for (m, p, body) in writes {
        let mut rb = read(m.clone(), &p);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        assert_error(&call(rb).await, 403, &format!("read key {m} {p}"));
    }
    assert!(
        ws.try_recv(Duration::from_millis(200)).await.is_none(),
        "nothing refused reached the socket"
    );
    let (_, c) = info(&server, &id).await;
    assert_eq!(c["state"], "active");
    assert_eq!(c["metadata"]["ip"], "127.0.0.1");

    // The admin key by X-Api-Key may do it.
    let (s, _) = call(
        client
            .delete(server.url(&format!("/v1/connections/{id}")))
            .header("x-api-key", &server.admin_key),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(ws.closed().await.code, Some(4506));
}

#[tokio::test]
async fn errors_are_json_and_bad_input_is_never_a_500() {
    let server = Server::start(&["--max-body-bytes", "1024"]).await;
    let (mut ws, w) = server.connect("err").await;
    let id = id_of(&w);

    // Over max_body_bytes: 413, with a length or streamed.
    let big = json!({"data": "x".repeat(2000)}).to_string().into_bytes();
    let path = format!("/v1/connections/{id}/messages");
    assert_error(
        &raw(&server, Method::POST, &path, big.clone()).await,
        413,
        "body over max_body_bytes",
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let streamed = call(
        server
            .admin(Method::POST, &path)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    assert_error(&streamed, 413, "chunked body over max_body_bytes");
    let ok = json!({"data": "x".repeat(900)}).to_string().into_bytes();
    assert_eq!(
        raw(&server, Method::POST, &path, ok).await.0,
        200,
        "under the limit"
    );
    assert_eq!(
        ws.recv_type("message").await["seq"],
        1,
        "only the small one arrived"
    );

    // Unknown routes and methods.
    for p in [
        "/v1/nope",
        "/nope",
        "/",
        "/v1",
        "/v1/connections",
        "/v1/users/x",
    ] {
        assert_error(&server.get_json(p).await, 404, p);
    }
    assert_error(
        &call(server.admin(Method::PUT, "/v1/limits")).await,
        405,
        "PUT /v1/limits",
    );

    // Malformed bodies at every route that reads one.
    let deep = format!("{{\"data\":{}{}}}", "[".repeat(500), "]".repeat(500));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"   ".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"text\"".to_vec(),
        b"{\"data\":}".to_vec(),
        b"{\"ttlSeconds\":1e400}".to_vec(),
        b"{\"ttlSeconds\":18446744073709551616}".to_vec(),
        b"{\"newConnectionId\":[1]}".to_vec(),
        b"{\"rateLimit\":{\"messagesPerMinute\":-1}}".to_vec(),
        b"{\"permissions\":[null]}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        b"{\"data\":\"\xff\"}".to_vec(),
        deep.into_bytes(),
    ];
    let routes = [
        (Method::PATCH, format!("/v1/connections/{id}/metadata")),
        (Method::POST, format!("/v1/connections/{id}/ttl")),
        (Method::POST, format!("/v1/connections/{id}/migrate")),
        (Method::POST, format!("/v1/connections/{id}/messages")),
        (Method::POST, "/v1/users/err/messages".to_string()),
    ];
    for (m, p) in &routes {
        for b in &bodies {
            let r = raw(&server, m.clone(), p, b.clone()).await;
            let what = format!("{m} {p} {:?}", String::from_utf8_lossy(b));
            assert!(
                [400, 413, 422].contains(&r.0),
                "{what}: want 400/413/422, got {r:?}"
            );
            assert_error(&r, r.0, &what);
        }
    }
    // Odd ids and paths.
    for p in [
        "/v1/connections/%ZZ".to_string(),
        "/v1/connections/%00".to_string(),
        format!("/v1/connections/{}", "a".repeat(5000)),
        "/v1/connections//user".to_string(),
    ] {
        let r = server.get_json(&p).await;
        assert!(r.0 < 500, "{p}: {r:?}");
        assert_error(&r, r.0, &p);
    }
    let r = server.get_json("/v1/users/%00%ff/connections").await;
    assert_eq!(r, (200, json!([])));

    // The connection survived all of it, and nothing else was delivered.
    assert!(ws.try_recv(Duration::from_millis(200)).await.is_none());
    let (_, c) = info(&server, &id).await;
    assert_eq!(c["state"], "active", "{c}");
    assert_eq!(c["metadata"]["permissions"], json!([]), "{c}");
    assert!(!server.logs().contains("panicked"), "{}", server.logs());
}

#[tokio::test]
async fn health_ready_and_metrics_need_no_key() {
    let server = Server::start(&[]).await;
    let client = http();
    assert_eq!(
        call(client.get(server.url("/health"))).await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(call(client.get(server.url("/ready"))).await.0, 200);

    let (mut ws, w) = server.connect("met").await;
    let (_ws2, _) = server.connect("met").await;
    let r = call(server.admin(Method::DELETE, &format!("/v1/connections/{}", id_of(&w)))).await;
    assert_eq!(r.0, 204);
    ws.closed().await;

    // The close is counted once the socket's task has finished; poll for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let r = client.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        let text = r.text().await.unwrap();
        if text.contains("tether_disconnects_total{") || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.lines()
            .any(|l| l == "tether_connections{state=\"active\"} 1"),
        "one active connection:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "tether_disconnects_total{code=\"4506\"} 1"),
        "one operator disconnect:\n{text}"
    );
    assert!(
        text.contains("# TYPE tether_disconnects_total counter"),
        "{text}"
    );
}

// ----- /ws misuse ------------------------------------------------------------------------

#[tokio::test]
async fn ws_without_an_upgrade_gets_a_plain_http_error() {
    let server = Server::start(&[]).await;
    let host = server.addr;
    let post = raw_http(
        &server,
        &format!("POST /ws HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let put = raw_http(
        &server,
        &format!("PUT /ws HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"),
    )
    .await;
    assert!(put.starts_with("HTTP/1.1 405"), "{put}");
    let get = raw_http(
        &server,
        &format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert!(get.starts_with("HTTP/1.1 400"), "{get}");
    assert!(get.contains("\"error\""), "{get}");
    let no_key = raw_http(
        &server,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    .await;
    assert!(no_key.starts_with("HTTP/1.1 400"), "{no_key}");
    let (s, _) = call(http().get(server.url("/ws"))).await;
    assert_eq!(s, 400);
    // Still serving.
    server.connect("after-misuse").await;
}

// ----- restart and the data-directory lock --------------------------------------------------

#[tokio::test]
async fn restart_keeps_connections_as_detached() {
    let mut server = Server::start(&[]).await;
    let (a, wa) = server.connect("rs-a").await;
    let (b, wb) = server.connect("rs-b").await;
    let before_a = info(&server, &id_of(&wa)).await.1;
    let before_b = info(&server, &id_of(&wb)).await.1;

    let closing: Vec<_> = [a, b]
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { ws.closed().await }))
        .collect();
    assert_eq!(server.stop().await, Some(0), "a clean exit on SIGTERM");
    for c in closing {
        let c = c.await.unwrap();
        assert_eq!(c.code, Some(1001), "{c:?}");
        assert_eq!(c.disconnect.as_ref().unwrap()["reconnect"], true, "{c:?}");
    }

    server.restart().await;
    for before in [before_a, before_b] {
        let id = before["connectionId"].as_str().unwrap();
        let (s, after) = info(&server, id).await;
        assert_eq!(s, 200, "{id} after restart: {after}");
        assert_eq!(after["state"], "detached");
        assert_eq!(after["userId"], before["userId"]);
        assert_eq!(after["connectedAt"], before["connectedAt"]);
        assert_eq!(
            after["metadata"]["connectedAt"],
            before["metadata"]["connectedAt"]
        );
        assert_eq!(
            server
                .get_json(&format!("/v1/connections/{id}/valid"))
                .await
                .1,
            json!({"valid": false}),
            "a detached connection is not valid"
        );
    }
    let (_, h) = server.get_json("/v1/health").await;
    assert_eq!(h["detachedConnections"], 2, "{h}");
    assert_eq!(h["activeConnections"], 0, "{h}");
    let (_, list) = server.get_json("/v1/users/rs-a/connections").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let detached = events(
        &server,
        &format!("connectionId={}&type=detached", id_of(&wa)),
    )
    .await;
    assert_eq!(detached.len(), 1, "{detached:?}");
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_fails_at_once() {
    let server = Server::start(&[]).await;
    let secrets = std::fs::read(server.dir.join("secrets.toml")).unwrap();
    let lock = std::fs::read_to_string(server.dir.join("tether.lock")).unwrap();

    let started = std::time::Instant::now();
    let second = common::spawn(&server.dir, &[]).await;
    assert!(second.is_err(), "a second server must not start");
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&server.dir)
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second server must fail at once, not wait")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!out.status.success(), "non-zero exit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("in use"),
        "the message says the directory is in use: {text}"
    );
    assert!(
        text.contains(&server.dir.display().to_string()),
        "and names it: {text}"
    );

    // It touched nothing, and the first one still serves.
    assert_eq!(
        std::fs::read(server.dir.join("secrets.toml")).unwrap(),
        secrets
    );
    assert_eq!(
        std::fs::read_to_string(server.dir.join("tether.lock")).unwrap(),
        lock
    );
    assert_eq!(call(http().get(server.url("/health"))).await.0, 200);
    let (_ws, w) = server.connect("still-first").await;
    assert_eq!(info(&server, &id_of(&w)).await.1["state"], "active");
}

#[tokio::test]
async fn metrics_can_be_put_behind_a_key() {
    let server = Server::start(&["--metrics-require-key"]).await;
    let open = common::http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 401);
    let keyed = server
        .admin(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    assert!(keyed
        .text()
        .await
        .unwrap()
        .contains("tether_connects_total"));
    // Liveness and readiness stay open.
    let health = common::http()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
