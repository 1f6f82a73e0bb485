//! The SSE transport (`GET /sse`) from outside: the same credentials as `/ws`, a `welcome`
//! event first, every server frame as an event named for its type with
//! `id: <connectionId>:<seq>`, heartbeats as comments, connectionType `sse`, closes as a
//! `disconnect` event and the end of the stream, and `Last-Event-ID` resume.

mod common;

use std::time::Duration;

use common::{conn_id, Server, Sse, SseEvent, SseItem, WAIT};
use reqwest::Method;
use serde_json::{json, Value};

type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Opens `/sse?token=` for `sub` and returns the stream and its welcome event.
async fn open(server: &Server, sub: &str, headers: &[(&str, &str)]) -> (Sse, SseEvent) {
    let mut sse = server
        .sse(&format!("token={}", server.token(sub, json!({}))), headers)
        .await
        .unwrap_or_else(|e| panic!("SSE refused: {e:?}"));
    let w = sse.event().await;
    assert_eq!(w.event, "welcome", "the first event is welcome: {w:?}");
    (sse, w)
}

async fn send_message(server: &Server, id: &str, data: Value) -> Value {
    let (status, body) = server
        .send_json(
            Method::POST,
            &format!("/v1/connections/{id}/messages"),
            json!({ "data": data }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `GET /v1/connections/{id}` until `check` holds (or panics after [`WAIT`]).
async fn wait_for_conn(server: &Server, id: &str, what: &str, check: impl Fn(u16, &Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
        if check(status, &info) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection {id} never became {what}: {status} {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn welcome_then_frames_as_events_with_ids() {
    let server = Server::start(&[]).await;
    let (mut sse, w) = open(&server, "olga", &[("x-client-version", "web-3")]).await;
    let ct = sse
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let welcome = w.json();
    let id = conn_id(&welcome);
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["userId"], "olga");
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["sessionId"], Value::Null);
    assert!(welcome["resumeToken"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(w.id.as_deref(), Some(format!("{id}:0").as_str()), "{w:?}");

    let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(info["state"], "active");
    assert_eq!(info["metadata"]["connectionType"], "sse");
    assert_eq!(info["metadata"]["clientVersion"], "web-3");
    let (_, health) = server.get_json("/v1/health").await;
    assert_eq!(health["byConnectionType"]["sse"], 1, "{health}");

    for n in 1..=3u64 {
        let sent = send_message(&server, &id, json!({"n": n})).await;
        assert_eq!(sent["delivered"], 1);
        assert_eq!(sent["seq"], n);
        let e = sse.event().await;
        assert_eq!(e.event, "message", "{e:?}");
        assert_eq!(e.id.as_deref(), Some(format!("{id}:{n}").as_str()));
        let m = e.json();
        assert_eq!(m["type"], "message");
        assert_eq!(m["seq"], n);
        assert_eq!(m["data"], json!({"n": n}));
    }
    // Fan-out to the user reaches the SSE connection too.
    let (status, body) = server
        .send_json(
            Method::POST,
            "/v1/users/olga/messages",
            json!({"data": "to all"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1);
    let e = sse.event().await;
    assert_eq!(e.id.as_deref(), Some(format!("{id}:4").as_str()));
    assert_eq!(e.json()["data"], "to all");
}

#[tokio::test]
async fn same_credentials_as_websocket() {
    let server = Server::start(&[]).await;
    let s = server
        .create_session(json!({"userId": "pia", "permissions": ["p"]}))
        .await;
    let sid = s["sessionId"].as_str().unwrap().to_string();
    let jwt = server.token("pia", json!({}));

    let bearer = format!("Bearer {jwt}");
    let cookie = format!("tether_sid={sid}");
    // (how, query, headers, whether it links the session)
    let ways: Vec<(&str, String, Headers, bool)> = vec![
        (
            "bearer header",
            String::new(),
            vec![("authorization", &bearer)],
            false,
        ),
        ("token query", format!("token={jwt}"), vec![], false),
        ("cookie", String::new(), vec![("cookie", &cookie)], true),
        (
            "session header",
            String::new(),
            vec![("x-session-id", &sid)],
            true,
        ),
        ("session query", format!("session_id={sid}"), vec![], true),
    ];
    let mut open_streams = Vec::new();
    for (how, query, headers, by_session) in ways {
        let mut sse = server
            .sse(&query, &headers)
            .await
            .unwrap_or_else(|e| panic!("{how}: refused {e:?}"));
        let w = sse.event().await;
        assert_eq!(w.event, "welcome", "{how}");
        let w = w.json();
        assert_eq!(w["userId"], "pia", "{how}");
        let want_sid = if by_session { json!(sid) } else { Value::Null };
        assert_eq!(w["sessionId"], want_sid, "{how}");
        let (_, info) = server
            .get_json(&format!("/v1/connections/{}", conn_id(&w)))
            .await;
        assert_eq!(info["metadata"]["connectionType"], "sse", "{how}");
        open_streams.push(sse);
    }
    let (_, got) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(got["connections"].as_array().unwrap().len(), 3, "{got}");

    // Refused: nothing, a bad JWT, an API key that is not configured, unknown, deleted and
    // expired session ids. A refusal is a 401 with a JSON error, never a stream.
    let deleted = server.create_session(json!({"userId": "pia"})).await;
    let deleted = deleted["sessionId"].as_str().unwrap().to_string();
    server
        .admin(Method::DELETE, &format!("/v1/sessions/{deleted}"))
        .send()
        .await
        .unwrap();
    let expired = server
        .create_session(json!({"userId": "pia", "ttlSeconds": 1}))
        .await;
    let expired = expired["sessionId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut forged = server.token("pia", json!({}));
    forged.push('x');
    let refusals: Vec<(&str, String, Headers)> = vec![
        ("no credential", String::new(), vec![]),
        ("bad signature", format!("token={forged}"), vec![]),
        ("unknown api key", "token=tk_nope".into(), vec![]),
        ("unknown session", "session_id=nope".into(), vec![]),
        (
            "deleted session",
            String::new(),
            vec![("x-session-id", &deleted)],
        ),
        ("expired session", format!("session_id={expired}"), vec![]),
    ];
    for (how, query, headers) in refusals {
        match server.sse(&query, &headers).await {
            Ok(_) => panic!("{how}: an SSE stream was opened"),
            Err((status, body)) => {
                assert_eq!(status, 401, "{how}: {body}");
                assert_eq!(body["error"]["code"], "unauthorized", "{how}: {body}");
            }
        }
    }
    let r = common::http()
        .post(server.url("/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn heartbeats_are_comments() {
    let server = Server::start(&["--heartbeat-interval-ms", "200"]).await;
    let (mut sse, w) = open(&server, "quinn", &[]).await;
    assert_eq!(w.json()["heartbeatIntervalMs"], 200);
    let mut comments = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        match sse.next_item(Duration::from_millis(100)).await {
            Some(SseItem::Comment(_)) => comments += 1,
            Some(SseItem::Event(e)) => panic!("a heartbeat must not be an event: {e:?}"),
            None => {}
        }
    }
    assert!(comments >= 3, "only {comments} heartbeat comments in 1.5 s");
    // The stream is still live after them.
    send_message(&server, &conn_id(&w.json()), json!(1)).await;
    assert_eq!(sse.event().await.event, "message");
}

#[tokio::test]
async fn server_close_is_a_disconnect_event_then_the_end() {
    let server = Server::start(&[]).await;
    let (mut sse, w) = open(&server, "rita", &[]).await;
    let id = conn_id(&w.json());
    send_message(&server, &id, json!("before")).await;
    let r = server
        .admin(Method::DELETE, &format!("/v1/connections/{id}?reason=bye"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let seen = sse.ended().await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["message", "disconnect"], "queued frames go first");
    let d = seen[1].json();
    assert_eq!(d["code"], 4506);
    assert_eq!(d["reason"], "bye");
    assert_eq!(d["reconnect"], false);
    assert_eq!(seen[1].id, None, "a disconnect has no seq");
    let (status, _) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, 404);

    // Counted once in the close-code figures.
    let text = server.metrics_text().await;
    assert_eq!(
        common::metric(&text, "tether_disconnects_total{code=\"4506\"}"),
        Some(1.0),
        "{text}"
    );

    // A session delete ends a session's SSE stream with 4503.
    let s = server.create_session(json!({"userId": "rita"})).await;
    let sid = s["sessionId"].as_str().unwrap();
    let mut sse = server.sse(&format!("session_id={sid}"), &[]).await.unwrap();
    assert_eq!(sse.event().await.event, "welcome");
    server
        .admin(Method::DELETE, &format!("/v1/sessions/{sid}"))
        .send()
        .await
        .unwrap();
    let seen = sse.ended().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].event, "disconnect");
    assert_eq!(seen[0].json()["code"], 4503);
}

#[tokio::test]
async fn a_client_that_goes_away_is_detached() {
    let server = Server::start(&["--heartbeat-interval-ms", "100"]).await;
    let (sse, w) = open(&server, "sam", &[]).await;
    let id = conn_id(&w.json());
    drop(sse);
    wait_for_conn(&server, &id, "detached", |status, info| {
        status == 200 && info["state"] == "detached"
    })
    .await;
}

#[tokio::test]
async fn last_event_id_resumes() {
    let server = Server::start(&["--heartbeat-interval-ms", "100"]).await;
    let (mut sse, w) = open(&server, "tess", &[]).await;
    let old = conn_id(&w.json());
    for n in 1..=2 {
        send_message(&server, &old, json!(n)).await;
        assert_eq!(sse.event().await.id, Some(format!("{old}:{n}")));
    }
    drop(sse);
    wait_for_conn(&server, &old, "detached", |_, info| {
        info["state"] == "detached"
    })
    .await;
    // Addressed to the user while away: kept for the resume.
    let (_, body) = server
        .send_json(Method::POST, "/v1/users/tess/messages", json!({"data": 3}))
        .await;
    assert_eq!(body["stored"], 1, "{body}");

    // Another user may not take it over.
    let last = format!("{old}:1");
    match server
        .sse(
            &format!("token={}", server.token("uma", json!({}))),
            &[("last-event-id", &last)],
        )
        .await
    {
        Ok(_) => panic!("a resume of another user's connection was accepted"),
        Err((status, _)) => assert_eq!(status, 401),
    }
    let (status, info) = server.get_json(&format!("/v1/connections/{old}")).await;
    assert_eq!((status, &info["state"]), (200, &json!("detached")));

    // The browser reconnects with what it saw last: 2 and 3 are replayed, in order.
    let (mut sse, w) = open(&server, "tess", &[("last-event-id", &last)]).await;
    let welcome = w.json();
    let new = conn_id(&welcome);
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["previousConnectionId"], old.as_str());
    assert_eq!(welcome["resumeError"], Value::Null);
    for n in 2..=3u64 {
        let e = sse.event().await;
        assert_eq!(e.event, "message");
        assert_eq!(e.id, Some(format!("{new}:{n}")));
        assert_eq!(e.json()["data"], n);
    }
    let (status, _) = server.get_json(&format!("/v1/connections/{old}")).await;
    assert_eq!(status, 404, "the old id stops existing");
    let (_, info) = server.get_json(&format!("/v1/connections/{new}")).await;
    assert_eq!(info["metadata"]["connectionType"], "sse");

    // An id that names nothing: a fresh connection, with the reason.
    let (_, w) = open(
        &server,
        "tess",
        &[("last-event-id", "00000000-0000-4000-8000-000000000000:5")],
    )
    .await;
    let w = w.json();
    assert_eq!(w["resumed"], false);
    assert!(w["resumeError"].is_string(), "{w}");
}

/// A resumed stream's welcome carries the id of what the client has, not the newest seq: a
/// browser that loses the stream right after the welcome reconnects with that id and is
/// still sent the frames that followed it.
#[tokio::test]
async fn a_resumed_welcome_does_not_skip_the_replay_that_follows_it() {
    let server = Server::start(&["--heartbeat-interval-ms", "100"]).await;
    let (sse, w) = open(&server, "una", &[]).await;
    let old = conn_id(&w.json());
    drop(sse);
    wait_for_conn(&server, &old, "detached", |_, info| {
        info["state"] == "detached"
    })
    .await;
    for n in 1..=2 {
        let (_, body) = server
            .send_json(Method::POST, "/v1/users/una/messages", json!({"data": n}))
            .await;
        assert_eq!(body["stored"], 1, "{body}");
    }
    let (sse, w) = open(&server, "una", &[("last-event-id", &format!("{old}:0"))]).await;
    let new = conn_id(&w.json());
    assert_eq!(
        w.id,
        Some(format!("{new}:0")),
        "the welcome says what the client has"
    );
    drop(sse);
    wait_for_conn(&server, &new, "detached", |_, info| {
        info["state"] == "detached"
    })
    .await;
    // The stream was lost right after the welcome: reconnecting with its id replays both.
    let last = w.id.unwrap();
    let (mut sse, w) = open(&server, "una", &[("last-event-id", &last)]).await;
    assert_eq!(w.json()["resumed"], true);
    for n in 1..=2u64 {
        let e = sse.event().await;
        assert_eq!(e.event, "message");
        assert_eq!(e.json()["data"], n);
    }
}
