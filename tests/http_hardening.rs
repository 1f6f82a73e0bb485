//! The listener under hostile clients: silent and slow sockets, idle keep-alives, partial
//! bodies, floods of unauthenticated connections, a process out of file descriptors,
//! request targets that are not paths, oversized bodies, HEAD; and the process around it:
//! a bind that fails, the lock file after a clean stop. All against the real binary, with
//! short configured timeouts and a low open-file limit, so nothing here needs thousands of
//! sockets or long waits.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tcp(server: &Server) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(server.addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads until the server closes the socket (end of stream or reset). Returns what arrived
/// meanwhile, or None if the socket was still open after `WAIT`.
async fn read_until_closed(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed
        .ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

/// Reads one response: its head, and its body by Content-Length (none for a HEAD).
async fn read_response(s: &mut TcpStream, head_only: bool) -> (String, String) {
    tokio::time::timeout(WAIT, async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.expect("read");
            assert!(n > 0, "closed mid-head: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("an ASCII head");
        let len = head
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().expect("a length"))
            })
            .unwrap_or(0);
        let mut body = vec![0; if head_only { 0 } else { len }];
        s.read_exact(&mut body).await.expect("the body");
        (head, String::from_utf8(body).expect("a UTF-8 body"))
    })
    .await
    .expect("a response in time")
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn health(server: &Server) -> u16 {
    http()
        .get(server.url("/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

// ----- timeouts ------------------------------------------------------------------------------

#[tokio::test]
async fn silent_and_half_sent_requests_are_closed_after_the_header_timeout() {
    let server = Server::start(&[
        "--http-header-timeout-ms",
        "300",
        "--http-idle-timeout-ms",
        "600000",
    ])
    .await;
    let mut silent = tcp(&server).await;
    let mut half = tcp(&server).await;
    half.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut dribble = tcp(&server).await;
    dribble.write_all(b"GET /hea").await.unwrap();

    assert_eq!(read_until_closed(&mut silent).await.as_deref(), Some(""));
    assert_eq!(read_until_closed(&mut half).await.as_deref(), Some(""));
    assert_eq!(read_until_closed(&mut dribble).await.as_deref(), Some(""));
    assert_eq!(health(&server).await, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_is_closed_and_the_next_request_gets_its_own_header_time() {
    // Idle and header timeouts are separate: a kept-alive connection may stay silent for
    // longer than the header timeout, and its next request then has the full header time.
    let server = Server::start(&[
        "--http-header-timeout-ms",
        "300",
        "--http-idle-timeout-ms",
        "4000",
    ])
    .await;
    let mut s = tcp(&server).await;
    s.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(status_of(&read_response(&mut s, false).await.0), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(GET_HEALTH).await.unwrap();
    let (head, body) = read_response(&mut s, false).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, r#"{"status":"ok"}"#);

    // Then silence: closed by the idle timeout.
    assert_eq!(read_until_closed(&mut s).await.as_deref(), Some(""));

    // Half a request after a response: closed by the header timeout, not kept for the idle one.
    let mut s = tcp(&server).await;
    s.write_all(GET_HEALTH).await.unwrap();
    read_response(&mut s, false).await;
    s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_until_closed(&mut s).await.as_deref(), Some(""));
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "closed by the header timeout, before the idle one: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_partial_body_gets_408() {
    let server = Server::start(&["--http-body-timeout-ms", "300"]).await;
    let mut s = tcp(&server).await;
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"userId\":",
        server.admin_key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s, false).await;
    assert_eq!(status_of(&head), 408, "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert_eq!(read_until_closed(&mut s).await.as_deref(), Some(""));
    // Nothing was created from the half body.
    let (_, sessions) = server.get_json("/v1/users/u/sessions").await;
    assert_eq!(sessions, json!([]));
}

// ----- limits --------------------------------------------------------------------------------

#[tokio::test]
async fn pending_connections_are_capped_oldest_first() {
    let server = Server::start(&["--max-pending-connections", "8"]).await;
    // The oldest pending connection: upgraded, waiting for its first-frame auth.
    let mut unauthenticated = server.ws("").await;
    let (mut active, _) = server.connect("capped").await;

    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(tcp(&server).await);
    }
    let closed = unauthenticated.closed().await;
    assert_eq!(closed.code, Some(1013), "{closed:?}");
    assert_eq!(health(&server).await, 200);

    // The 32 oldest silent sockets were closed; authenticated connections never are.
    let mut shut = 0;
    for s in silent.iter_mut().take(32) {
        if read_until_closed(s).await.is_some() {
            shut += 1;
        }
    }
    assert_eq!(shut, 32);
    active.send(json!({"type": "ping", "id": "still"})).await;
    assert_eq!(active.recv_type("pong").await["id"], "still");

    let warnings = server.logs().matches("closed the oldest").count();
    assert!(
        (1..=2).contains(&warnings),
        "one warning per few seconds, with a count: {}",
        server.logs()
    );
}

#[tokio::test]
async fn near_the_file_limit_health_and_authenticated_clients_are_still_served() {
    // 256 descriptors; no pending cap and no timeouts to speak of, so only the file reserve
    // is left to keep the server reachable.
    let server = Server::start_with_nofile(
        256,
        &[
            "--max-pending-connections",
            "100000",
            "--http-header-timeout-ms",
            "600000",
            "--http-idle-timeout-ms",
            "600000",
        ],
    )
    .await;
    let (mut ws, _) = server.connect("near-limit").await;
    // Kept-alive connections, idle after a request...
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = tcp(&server).await;
        s.write_all(GET_HEALTH).await.unwrap();
        read_response(&mut s, false).await;
        idle.push(s);
    }
    // ... and more silent sockets than the process has descriptors.
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(tcp(&server).await);
    }

    assert_eq!(health(&server).await, 200);
    ws.send(json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(ws.recv_type("pong").await["id"], "alive");
    // Idle connections went first.
    assert!(read_until_closed(&mut idle[0]).await.is_some());
    let (s, _) = server.get_json("/v1/health").await;
    assert_eq!(s, 200);

    let logs = server.logs();
    assert!(
        logs.matches("accept failed").count() <= 2,
        "accept errors are logged at most once per few seconds: {logs}"
    );
    assert!(
        logs.matches("near the open-file limit").count() <= 2,
        "{logs}"
    );
}

#[tokio::test]
async fn an_oversized_declared_body_gets_413_before_it_is_sent() {
    let server = Server::start(&[]).await;
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut s = tcp(&server).await;
        let head = format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 5000000\r\n{expect}\r\n",
            server.admin_key
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s, false).await;
        assert_eq!(status_of(&head), 413, "no 100 Continue first: {head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
        assert_eq!(read_until_closed(&mut s).await.as_deref(), Some(""));
    }
    // A body within the limit still gets its 100 Continue and is read.
    let r = server
        .admin(reqwest::Method::POST, "/v1/sessions")
        .header("expect", "100-continue")
        .json(&json!({"userId": "small"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

// ----- request targets, HEAD -----------------------------------------------------------------

#[tokio::test]
async fn request_targets_that_are_not_paths_get_a_json_400_and_nothing_panics() {
    let server = Server::start(&["--log-format", "json"]).await;
    for target in ["GET 127.0.0.1:1", "CONNECT x:1", "GET x:80", "OPTIONS x:1"] {
        let mut s = tcp(&server).await;
        s.write_all(format!("{target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut s, false).await;
        assert_eq!(status_of(&head), 400, "{target}: {head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{target}: {v}");
    }
    // Absolute form is served as its path (RFC 9112 §3.2.2).
    for target in ["http://x/health", "http://127.0.0.1:1/health?a=b"] {
        let mut s = tcp(&server).await;
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut s, false).await;
        assert_eq!(status_of(&head), 200, "{target}: {head}");
        assert_eq!(body, r#"{"status":"ok"}"#);
    }
    let mut s = tcp(&server).await;
    s.write_all(b"GET http://x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut s, false).await.0), 404);
    assert_eq!(health(&server).await, 200);

    let logs = server.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "every log line is JSON: {line}"
        );
    }
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let server = Server::start(&[]).await;
    let get = http().get(server.url("/health")).send().await.unwrap();
    let head = http().head(server.url("/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers().get("content-type"),
        get.headers().get("content-type")
    );
    assert_eq!(
        head.headers().get("content-length").unwrap(),
        &get.text().await.unwrap().len().to_string()
    );

    let limits = server
        .admin(reqwest::Method::HEAD, "/v1/limits")
        .send()
        .await
        .unwrap();
    assert_eq!(limits.status(), 200);
    let no_key = http().head(server.url("/v1/limits")).send().await.unwrap();
    assert_eq!(no_key.status(), 401);

    // On one connection: the HEAD's answer carries no body, so the GET after it reads clean.
    let mut s = tcp(&server).await;
    s.write_all(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    s.write_all(GET_HEALTH).await.unwrap();
    let (head, body) = read_response(&mut s, true).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, "");
    let (head, body) = read_response(&mut s, false).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, r#"{"status":"ok"}"#);
}

// ----- the process ---------------------------------------------------------------------------

#[tokio::test]
async fn a_failed_bind_leaves_a_fresh_data_directory_untouched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--listen", &addr, "--data-dir", arg(&dir)])
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a failed bind fails at once")
    .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("cannot listen") && text.contains(&addr),
        "{text}"
    );
    assert!(!dir.exists(), "nothing was created in {}", dir.display());
}

#[tokio::test]
async fn a_clean_stop_removes_the_lock_file_and_keeps_the_store() {
    let mut server = Server::start(&[]).await;
    let lock = server.dir.join("tether.lock");
    assert!(lock.exists());
    let (s, session) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "kept"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(server.stop().await, Some(0));
    assert!(!lock.exists(), "tether.lock is removed on a clean stop");

    server.restart().await;
    assert!(lock.exists());
    let id = session["sessionId"].as_str().unwrap();
    let (s, again) = server.get_json(&format!("/v1/sessions/{id}")).await;
    assert_eq!(s, 200, "{again}");
    // The lock still works: a second server on the directory fails.
    assert!(common::spawn(&server.dir, &[]).await.is_err());
}
