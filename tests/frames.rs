//! The wire frames (SPEC §3) and the closes (SPEC §4) a client sees: ping/pong, bad frames,
//! rate limits, size limits, refresh, ack, heartbeats, TTL expiry and a full server. Every
//! server-initiated close is checked to carry a `disconnect` frame first, with the close's
//! code.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{conn_id, wait_for_state, Closed, Server, Ws};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Reads to the end and asserts the server closed with `code`, sending a matching
/// `disconnect` frame as its last frame. Returns the frames before the `disconnect`.
async fn expect_close(ws: &mut Ws, code: u16, reconnect: bool, what: &str) -> Vec<Value> {
    let (mut frames, closed) = ws.frames_until_close().await;
    assert_close(&mut frames, &closed, code, reconnect, what);
    frames
}

fn assert_close(frames: &mut Vec<Value>, closed: &Closed, code: u16, reconnect: bool, what: &str) {
    let last = frames.pop();
    let d =
        last.unwrap_or_else(|| panic!("{what}: no disconnect frame before the close: {closed:?}"));
    assert_eq!(d["type"], "disconnect", "{what}: last frame {d}");
    assert_eq!(d["code"], code, "{what}: {d}");
    assert_eq!(d["reconnect"], reconnect, "{what}: {d}");
    assert!(
        d["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: {d}"
    );
    assert_eq!(closed.code, Some(code), "{what}: close frame, after {d}");
}

async fn events(server: &Server, id: &str, kind: &str) -> Vec<Value> {
    let (status, body) = server
        .get_json(&format!("/v1/events?connectionId={id}&type={kind}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test]
async fn ping_gets_pong_with_the_id_echoed() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = server.connect("pinger").await;
    for id in [json!(1), json!("abc"), json!({"nested": [1, 2]})] {
        ws.send(json!({"type": "ping", "id": id})).await;
        let pong = ws.recv().await;
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["id"], id, "{pong}");
    }
    ws.send(json!({"type": "ping"})).await;
    let pong = ws.recv().await;
    assert_eq!(pong, json!({"type": "pong", "id": null}));
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("clumsy").await;
    // (what, frame, the `id` the error should carry)
    let bad = [
        (
            "unknown type",
            Message::text(r#"{"type":"bogus","id":1}"#),
            json!(1),
        ),
        ("invalid JSON", Message::text("{not json"), Value::Null),
        ("binary", Message::binary(vec![0u8, 1, 2, 3]), Value::Null),
        ("JSON array", Message::text("[1, 2]"), Value::Null),
        ("no type", Message::text(r#"{"id": 2}"#), Value::Null),
    ];
    for (what, m, id) in bad {
        ws.send_raw(m).await;
        let e = ws.recv().await;
        assert_eq!(e["type"], "error", "{what}: {e}");
        assert_eq!(e["code"], "bad_frame", "{what}: {e}");
        assert_eq!(e["id"], id, "{what}: the request id is echoed: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(json!({"type": "ping", "id": "still-here"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "still-here"}));
    let info = wait_for_state(&server, &conn_id(&welcome), "active").await;
    assert_eq!(info["userId"], "clumsy");
}

#[tokio::test]
async fn the_eleventh_bad_frame_in_a_minute_closes_4509() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("abuser").await;
    for i in 0..10 {
        let m = if i % 2 == 0 {
            Message::text(r#"{"type":"nope"}"#)
        } else {
            Message::binary(vec![7u8])
        };
        ws.send_raw(m).await;
        let e = ws.recv().await;
        assert_eq!(e["code"], "bad_frame", "bad frame {}: {e}", i + 1);
    }
    ws.send_raw(Message::text("not json either")).await;
    let before = expect_close(&mut ws, 4509, false, "11th bad frame").await;
    assert!(before.is_empty(), "no error frame for the 11th: {before:?}");
    wait_for_state(&server, &conn_id(&welcome), "gone").await;
}

#[tokio::test]
async fn rate_limit_refuses_past_the_limit_and_closes_past_twice_it() {
    let server = Server::start(&["--messages-per-minute", "5"]).await;
    let (mut ws, welcome) = server.connect("chatty").await;
    assert_eq!(welcome["limits"]["messagesPerMinute"], 5);
    for i in 1..=5 {
        ws.send(json!({"type": "ping", "id": i})).await;
        assert_eq!(ws.recv().await, json!({"type": "pong", "id": i}));
    }
    for i in 6..=10 {
        ws.send(json!({"type": "ping", "id": i})).await;
        let e = ws.recv().await;
        assert_eq!(e["type"], "error", "frame {i}: {e}");
        assert_eq!(e["code"], "rate_limited", "frame {i}: {e}");
        assert_eq!(e["id"], i, "frame {i}: {e}");
        let retry = e["retryAfterMs"].as_i64().unwrap_or(0);
        assert!(retry > 0 && retry <= 60_000, "frame {i}: {e}");
    }
    let id = conn_id(&welcome);
    assert_eq!(
        events(&server, &id, "rate_limited").await.len(),
        1,
        "one rate_limited event when the limit is first passed"
    );
    ws.send(json!({"type": "ping", "id": 11})).await;
    let before = expect_close(&mut ws, 4508, false, "11th frame at 5/min").await;
    assert!(before.is_empty(), "{before:?}");
    wait_for_state(&server, &id, "gone").await;
}

#[tokio::test]
async fn a_frame_over_max_message_bytes_closes_1009() {
    let server = Server::start(&["--max-message-bytes", "1024"]).await;
    let (mut ws, welcome) = server.connect("bulky").await;
    assert_eq!(welcome["limits"]["maxMessageBytes"], 1024);

    let under = json!({"type": "ping", "id": 1, "pad": "x".repeat(900)});
    assert!(under.to_string().len() < 1024);
    ws.send(under).await;
    assert_eq!(ws.recv().await["type"], "pong", "a frame under the limit");

    let over = json!({"type": "ping", "id": 2, "pad": "x".repeat(2000)});
    ws.send(over).await;
    let before = expect_close(&mut ws, 1009, false, "2 KB frame at 1 KiB limit").await;
    assert!(before.is_empty(), "{before:?}");
    wait_for_state(&server, &conn_id(&welcome), "gone").await;

    // The limit holds before authentication too: an oversized auth frame.
    let mut ws = server.ws("").await;
    let token = server.token("bulky", json!({"pad": "x".repeat(2000)}));
    ws.send(json!({"type": "auth", "token": token})).await;
    let before = expect_close(&mut ws, 1009, false, "2 KB auth frame").await;
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn refresh_extends_expiry_for_the_same_user_only() {
    let server = Server::start(&["--ttl-seconds", "60"]).await;
    let (mut ws, welcome) = server.connect("refresher").await;
    let id = conn_id(&welcome);
    let first = welcome["expiresAt"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;

    ws.send(json!({"type": "refresh", "token": server.token("refresher", json!({})), "id": "r1"}))
        .await;
    let r = ws.recv().await;
    assert_eq!(r["type"], "refreshed", "{r}");
    assert_eq!(ws.recv().await, json!({"type": "ack", "id": "r1"}));
    let second = r["expiresAt"].as_str().unwrap().to_string();
    // RFC 3339 UTC with milliseconds sorts as text.
    assert!(second > first, "refreshed {second} not after {first}");
    let (_, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(info["expiresAt"], second.as_str());

    for (what, token) in [
        (
            "another user's token",
            server.token("someone-else", json!({})),
        ),
        ("a forged token", "abc.def.ghi".to_string()),
    ] {
        ws.send(json!({"type": "refresh", "token": token, "id": what}))
            .await;
        let e = ws.recv().await;
        assert_eq!(e["type"], "error", "{what}: {e}");
        assert_eq!(e["id"], what, "{what}: {e}");
    }
    let (_, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(
        info["expiresAt"],
        second.as_str(),
        "a refused refresh changes nothing"
    );
    assert_eq!(info["userId"], "refresher");
    ws.send(json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "alive"}));
}

#[tokio::test]
async fn refresh_keeps_a_connection_past_its_first_expiry() {
    let server = Server::start(&["--ttl-seconds", "2"]).await;
    let started = Instant::now();
    let (mut ws, _) = server.connect("keeper").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ws.send(json!({"type": "refresh", "token": server.token("keeper", json!({}))}))
        .await;
    ws.recv_type("refreshed").await;
    // Past the first expiry (2 s) and the sweeper's 1 s tick, still open.
    let until = Duration::from_millis(3000).saturating_sub(started.elapsed());
    assert_eq!(
        ws.try_recv(until).await,
        None,
        "closed before its new expiry"
    );
    ws.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    expect_close(&mut ws, 4004, true, "after the refreshed TTL").await;
}

#[tokio::test]
async fn ack_with_an_id_is_acknowledged() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("acker").await;
    let id = conn_id(&welcome);
    let (status, sent) = server
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/connections/{id}/messages"),
            json!({"data": "hello"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let m = ws.recv_type("message").await;
    ws.send(json!({"type": "ack", "seq": m["seq"], "id": "k1"}))
        .await;
    assert_eq!(ws.recv().await, json!({"type": "ack", "id": "k1"}));

    // Without an id nothing is sent back: the next frame is the pong.
    ws.send(json!({"type": "ack", "seq": m["seq"]})).await;
    ws.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": 2}));

    // An ack without a seq is a bad frame.
    ws.send(json!({"type": "ack", "id": "k2"})).await;
    let e = ws.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "bad_frame", "{e}");
    assert_eq!(e["id"], "k2", "{e}");
}

/// A TCP relay to `server` that, once `lose` is set, drops everything the client sends,
/// as a network that loses the client's pongs would, while still passing on what the
/// server sends.
async fn lossy_relay(server: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lose = Arc::new(AtomicBool::new(false));
    let losing = lose.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(server).await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = upstream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            let _ = to_client.shutdown().await;
        });
        let mut buf = [0u8; 4096];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !losing.load(Ordering::Relaxed) && to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (addr, lose)
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_4012_and_detached() {
    let server = Server::start(&["--heartbeat-interval-ms", "200"]).await;

    // `dead` is held without being polled, so tungstenite never answers the server's pings.
    let (_dead, welcome) = server.connect("dead").await;
    assert_eq!(welcome["heartbeatIntervalMs"], 200);
    // `lossy` reads (and answers pings) but its pongs are lost on the way.
    let (relay, lose) = lossy_relay(server.addr).await;
    let token = server.token("lossy", json!({}));
    let mut lossy = Ws::connect(format!("ws://{relay}/ws?token={token}"), &[]).await;
    let lossy_welcome = lossy.recv_type("welcome").await;
    lose.store(true, Ordering::Relaxed);
    let silent_since = Instant::now();
    // `alive` is silent but read the whole time, so its pongs reach the server.
    let (mut alive, alive_welcome) = server.connect("alive").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let got = tokio::select! {
            got = alive.try_recv(Duration::from_secs(30)) => got,
            _ = stopped => None,
        };
        (alive, got)
    });

    // The lossy client sees why it was closed.
    let before = expect_close(&mut lossy, 4012, true, "pongs lost").await;
    assert!(before.is_empty(), "{before:?}");
    let took = silent_since.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "closed {took:?} after its last sign of life; the limit is two 200 ms intervals"
    );

    for (w, user) in [(&welcome, "dead"), (&lossy_welcome, "lossy")] {
        let id = conn_id(w);
        let info = wait_for_state(&server, &id, "detached").await;
        assert_eq!(info["userId"], user);
        let detached = events(&server, &id, "detached").await;
        assert_eq!(detached.len(), 1, "{user}: {detached:?}");
        assert_eq!(detached[0]["details"]["code"], 4012, "{user}: {detached:?}");
    }

    // The live one, silent but answering pings, is untouched.
    let _ = stop.send(());
    let (mut alive, got) = reader.await.unwrap();
    assert_eq!(got, None, "the live client was sent something");
    wait_for_state(&server, &conn_id(&alive_welcome), "active").await;
    alive.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(alive.recv().await["type"], "pong");
}

#[tokio::test]
async fn ttl_expiry_closes_4004_and_detaches() {
    let server = Server::start(&["--ttl-seconds", "1"]).await;
    let started = Instant::now();
    let (mut ws, welcome) = server.connect("mayfly").await;
    let before = expect_close(&mut ws, 4004, true, "TTL 1 s").await;
    assert!(before.is_empty(), "{before:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "expired after {took:?}"
    );
    let id = conn_id(&welcome);
    wait_for_state(&server, &id, "detached").await;
    let detached = events(&server, &id, "detached").await;
    assert_eq!(detached[0]["details"]["code"], 4004, "{detached:?}");
}

#[tokio::test]
async fn max_total_refuses_the_connection_past_it_with_1013() {
    let server = Server::start(&["--max-total", "2"]).await;
    let (mut a, wa) = server.connect("u1").await;
    let (_b, _) = server.connect("u2").await;

    let mut c = server
        .ws(&format!("token={}", server.token("u3", json!({}))))
        .await;
    let before = expect_close(&mut c, 1013, true, "third connection").await;
    assert!(
        before.is_empty(),
        "no welcome for a refused client: {before:?}"
    );
    let (_, conns) = server.get_json("/v1/users/u3/connections").await;
    assert_eq!(conns, json!([]));

    // A freed slot can be used again.
    a.close().await;
    wait_for_state(&server, &conn_id(&wa), "gone").await;
    let (_d, wd) = server.connect("u4").await;
    assert_eq!(wd["userId"], "u4");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_4010_and_slows_nobody() {
    let server = Server::start(&[
        "--outbound-queue-bytes",
        "65536",
        "--replay-buffer-messages",
        "1000",
    ])
    .await;
    let (stuck, welcome) = server.connect("quinn").await;
    let stuck_id = welcome["connectionId"].as_str().unwrap().to_string();
    let (mut other, _) = server.connect("rosa").await;

    // Never read `stuck` again; fill its socket buffers and then its queue.
    let chunk = "x".repeat(60_000);
    let mut closed = false;
    let mut served_during = false;
    for i in 0..2000 {
        let (status, _) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/v1/connections/{stuck_id}/messages"),
                json!({"data": {"i": i, "pad": chunk}}),
            )
            .await;
        assert_eq!(status, 200);
        if i == 30 {
            // Well into the flood: the other connection is served as usual.
            let (status, _) = server
                .send_json(
                    reqwest::Method::POST,
                    "/v1/users/rosa/messages",
                    json!({"data": i}),
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(other.recv_type("message").await["data"], i);
            served_during = true;
        }
        if i % 20 == 19 {
            let (_, info) = server
                .get_json(&format!("/v1/connections/{stuck_id}"))
                .await;
            if info["state"] == "detached" {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the stuck client was never closed");
    assert!(
        served_during,
        "the stuck client was closed before the check of the other"
    );
    let (_, events) = server
        .get_json(&format!("/v1/events?connectionId={stuck_id}&type=detached"))
        .await;
    assert_eq!(events[0]["details"]["code"], 4010, "{events}");
    let (status, _) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/users/rosa/messages",
            json!({"data": "after"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(other.recv_type("message").await["data"], "after");
    drop(stuck);
}
