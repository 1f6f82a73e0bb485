//! Restart, resume, replay, durability and backup: the server process is really killed and
//! restarted on the same data directory.
mod common;

use std::time::Duration;

use common::{resume_query, Server, Ws};
use serde_json::{json, Value};

async fn message_user(server: &Server, user: &str, data: Value) -> Value {
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/messages"),
            json!({"data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `GET /v1/connections/{id}` of the connection a welcome named.
async fn connection(server: &Server, welcome: &Value) -> (u16, Value) {
    let id = welcome["connectionId"].as_str().unwrap();
    server.get_json(&format!("/v1/connections/{id}")).await
}

async fn kill9_finds_every_acknowledged_connection(mode: &str) {
    let mut server = Server::start(&["--durability", mode, "--max-per-user", "1000"]).await;
    let mut ids = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..60 {
        let (ws, welcome) = server.connect(&format!("u{}", i % 7)).await;
        ids.push(welcome["connectionId"].as_str().unwrap().to_string());
        sockets.push(ws);
    }
    // The newest connection moves to a new id (an acknowledged write that logs an event).
    let migrated = uuid::Uuid::new_v4().to_string();
    let r = server
        .admin(
            reqwest::Method::POST,
            &format!("/v1/connections/{}/migrate", ids[59]),
        )
        .json(&json!({ "newConnectionId": migrated }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ids[59] = migrated.clone();
    // The last answer was just read: kill at once, before sled's own 500 ms flush.
    server.kill9().await;
    drop(sockets);
    server.restart().await;
    for id in &ids {
        let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
        assert_eq!(
            status, 200,
            "connection {id} acknowledged before kill -9 was lost in {mode} mode"
        );
        assert_eq!(info["state"], "detached");
    }
    // The event an acknowledged write logged is as durable as the write: the migrate's.
    let (status, events) = server
        .get_json(&format!("/v1/events?connectionId={migrated}&type=migrated"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        events.as_array().map(Vec::len),
        Some(1),
        "the migrate acknowledged before kill -9 lost its event in {mode} mode: {events}"
    );
    let (_, health) = server.get_json("/v1/health").await;
    assert_eq!(health["detachedConnections"], 60);
}

#[tokio::test]
async fn kill9_in_batched_mode_loses_no_acknowledged_connection() {
    kill9_finds_every_acknowledged_connection("batched").await;
}

#[tokio::test]
async fn kill9_in_sync_mode_loses_no_acknowledged_connection() {
    kill9_finds_every_acknowledged_connection("sync").await;
}

#[tokio::test]
async fn resume_after_kill9_replays_what_was_missed_in_order() {
    let mut server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("alice").await;
    let old_id = welcome["connectionId"].as_str().unwrap().to_string();
    let (_, before) = server.get_json(&format!("/v1/connections/{old_id}")).await;

    message_user(&server, "alice", json!({"n": 1})).await;
    let m1 = ws.recv_type("message").await;
    assert_eq!(m1["seq"], 1);

    server.kill9().await;
    drop(ws);
    server.restart().await;

    // Sent while the client is away: kept for the Detached connection.
    let sent = message_user(&server, "alice", json!({"n": 2})).await;
    assert_eq!(sent["delivered"], 0);
    message_user(&server, "alice", json!({"n": 3})).await;

    let mut ws = server
        .ws(&resume_query(&server, "alice", &welcome, Some(1)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["previousConnectionId"], old_id.as_str());
    assert!(w["resumeError"].is_null());
    let new_id = w["connectionId"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);

    let a = ws.recv_type("message").await;
    let b = ws.recv_type("message").await;
    assert_eq!(
        (a["data"]["n"].clone(), a["seq"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(
        (b["data"]["n"].clone(), b["seq"].clone()),
        (json!(3), json!(3))
    );
    // Nothing replayed twice.
    assert!(ws
        .try_recv(Duration::from_millis(300))
        .await
        .is_none_or(|v| v["type"] != "message"));

    // New messages continue the sequence.
    message_user(&server, "alice", json!({"n": 4})).await;
    assert_eq!(ws.recv_type("message").await["seq"], 4);

    let (status, _) = server.get_json(&format!("/v1/connections/{old_id}")).await;
    assert_eq!(status, 404, "the old id stops existing");
    let (status, after) = server.get_json(&format!("/v1/connections/{new_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        after["connectedAt"], before["connectedAt"],
        "connectedAt carries over"
    );
    assert_eq!(after["state"], "active");

    let (_, events) = server
        .get_json(&format!("/v1/events?connectionId={new_id}"))
        .await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"resumed") && kinds.contains(&"migrated"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn resume_with_wrong_token_connects_fresh_with_a_reason() {
    let mut server = Server::start(&[]).await;
    let (ws, welcome) = server.connect("bob").await;
    drop(ws);
    server.kill9().await;
    server.restart().await;
    let q = format!(
        "token={}&resume={}&resume_token=not-the-token",
        server.token("bob", json!({})),
        welcome["connectionId"].as_str().unwrap()
    );
    let mut ws = server.ws(&q).await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], false);
    assert!(w["resumeError"].as_str().unwrap().contains("token"), "{w}");
    assert_ne!(w["connectionId"], welcome["connectionId"]);
    // The old one is untouched, still resumable with the right token.
    let (status, _) = connection(&server, &welcome).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn resume_after_the_grace_period_connects_fresh_and_logs_expired() {
    let mut server = Server::start(&["--resume-grace-seconds", "1"]).await;
    let (ws, welcome) = server.connect("carol").await;
    let old = welcome["connectionId"].as_str().unwrap().to_string();
    drop(ws);
    server.kill9().await;
    server.restart().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = server.get_json(&format!("/v1/connections/{old}")).await;
    assert_eq!(
        status, 404,
        "a Detached connection is cleaned up after the grace period"
    );
    let (_, events) = server
        .get_json(&format!("/v1/events?connectionId={old}&type=expired"))
        .await;
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");

    let mut ws = server
        .ws(&resume_query(&server, "carol", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], false);
    assert!(w["resumeError"].is_string());
}

#[tokio::test]
async fn resume_of_another_users_connection_is_refused_and_leaves_it_alone() {
    let mut server = Server::start(&[]).await;
    let (ws, welcome) = server.connect("dave").await;
    drop(ws);
    server.kill9().await;
    server.restart().await;
    // eve knows dave's connection id and token, but her credential is hers.
    let mut ws = server
        .ws(&resume_query(&server, "eve", &welcome, None))
        .await;
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(4501));
    assert!(closed.disconnect.is_some());
    let (status, info) = connection(&server, &welcome).await;
    assert_eq!(status, 200);
    assert_eq!(info["userId"], "dave");
    // dave can still resume it.
    let mut ws = server
        .ws(&resume_query(&server, "dave", &welcome, None))
        .await;
    assert_eq!(ws.recv_type("welcome").await["resumed"], true);
}

#[tokio::test]
async fn graceful_stop_sends_1001_and_the_client_resumes() {
    let mut server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("frank").await;
    let stopping = tokio::spawn(async move {
        let c = ws.closed().await;
        c
    });
    assert_eq!(server.stop().await, Some(0), "a graceful stop exits 0");
    let closed = stopping.await.unwrap();
    assert_eq!(closed.code, Some(1001));
    assert_eq!(closed.disconnect.as_ref().unwrap()["reconnect"], true);

    server.restart().await;
    let mut ws = server
        .ws(&resume_query(&server, "frank", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
}

#[tokio::test]
async fn resuming_a_half_dead_socket_closes_the_old_one_with_4507() {
    let server = Server::start(&[]).await;
    let (mut old, welcome) = server.connect("gina").await;
    let mut new = server
        .ws(&resume_query(&server, "gina", &welcome, Some(0)))
        .await;
    let w = new.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    let closed = old.closed().await;
    assert_eq!(closed.code, Some(4507));
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    // The new socket works.
    message_user(&server, "gina", json!("hi")).await;
    assert_eq!(new.recv_type("message").await["data"], "hi");
}

#[tokio::test]
async fn last_seq_older_than_the_buffer_says_messages_were_lost() {
    let mut server = Server::start(&["--replay-buffer-messages", "2"]).await;
    let (ws, welcome) = server.connect("hank").await;
    drop(ws);
    server.kill9().await;
    server.restart().await;
    for n in 1..=5 {
        message_user(&server, "hank", json!({"n": n})).await;
    }
    let mut ws = server
        .ws(&resume_query(&server, "hank", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    assert!(w["resumeError"].as_str().unwrap().contains("lost"), "{w}");
    let a = ws.recv_type("message").await;
    let b = ws.recv_type("message").await;
    assert_eq!(
        (a["seq"].clone(), b["seq"].clone()),
        (json!(4), json!(5)),
        "what is kept is sent"
    );
}

#[tokio::test]
async fn ack_drops_the_replay_buffer_up_to_seq() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("ivy").await;
    for n in 1..=3 {
        message_user(&server, "ivy", json!({"n": n})).await;
        ws.recv_type("message").await;
    }
    ws.send(json!({"type": "ack", "seq": 2, "id": "a1"})).await;
    assert_eq!(ws.recv_type("ack").await["id"], "a1");
    // Resume without lastSeq replays what was not acknowledged: only seq 3.
    let mut again = server
        .ws(&resume_query(&server, "ivy", &welcome, None))
        .await;
    assert_eq!(again.recv_type("welcome").await["resumed"], true);
    assert_eq!(again.recv_type("message").await["seq"], 3);
}

#[tokio::test]
async fn backup_of_a_running_server_restores_into_a_new_directory() {
    let mut server = Server::start(&[]).await;
    let (ws, welcome) = server.connect("jill").await;
    let (status, session) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "jill", "data": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(status, 201);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("snap.tbk");
    let server_url = format!("http://{}", server.addr);
    common::cli_ok(&[
        "backup",
        "--out",
        common::arg(&file),
        "--server",
        &server_url,
        "--api-key",
        &server.admin_key,
    ]);
    drop(ws);
    server.kill9().await;

    let restored = tmp.path().join("restored");
    let restore = [
        "restore",
        "--from",
        common::arg(&file),
        "--data-dir",
        common::arg(&restored),
    ];
    common::cli_ok(&restore);
    // Restoring over a non-empty directory is refused.
    let again = common::cli(&restore);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let server2 = Server::start_in(&restored, &[]).await;
    assert_eq!(server2.admin_key, server.admin_key, "secrets come along");
    let sid = session["sessionId"].as_str().unwrap();
    let (status, s) = server2.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200);
    assert_eq!(s["data"]["theme"], "dark");
    let (status, c) = connection(&server2, &welcome).await;
    assert_eq!(status, 200);
    assert_eq!(c["state"], "detached");
    // And the client resumes on the restored server.
    let mut ws: Ws = server2
        .ws(&resume_query(&server2, "jill", &welcome, Some(0)))
        .await;
    assert_eq!(ws.recv_type("welcome").await["resumed"], true);
}

/// Beside a running server, `inspect` asks that server (found by its lock file and its
/// listening socket: it was started on port 0, which no configuration names) and says so;
/// once it is stopped, the data directory itself is read.
#[tokio::test]
async fn inspect_reports_a_running_server_through_its_api_and_a_stopped_directory_directly() {
    let mut server = Server::start(&[]).await;
    let (_ws, _) = server.connect("kim").await;
    let live = inspect(&server.dir).await;
    assert_eq!(live["source"], "running server", "{live}");
    assert_eq!(live["pid"], server.pid(), "{live}");
    assert_eq!(live["server"], format!("http://{}", server.addr), "{live}");
    assert_eq!(live["connections"], 1, "{live}");
    assert_eq!(live["connectionsByState"], json!({"active": 1}), "{live}");
    let text = common::cli_ok(&["inspect", "--data-dir", common::arg(&server.dir)]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("from the running server"), "{text}");
    assert!(
        text.contains("limits           10 per user, 100000 in all, connection TTL 3600 s"),
        "{text}"
    );
    inspect_into_a_closed_pipe(&server.dir);

    server.stop().await;
    let report = inspect(&server.dir).await;
    assert_eq!(report["connections"], 1);
    assert_eq!(report["schemaVersion"], 1);
    assert!(report.get("source").is_none(), "{report}");
    // The text form always shows the unreadable records, zero included.
    let text = common::cli_ok(&["inspect", "--data-dir", common::arg(&server.dir)]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("  unreadable     0"), "{text}");
    inspect_into_a_closed_pipe(&server.dir);
}

/// `tether inspect | head -1`: the reader closes the pipe before the report is written,
/// which ends the command quietly, with no panic.
fn inspect_into_a_closed_pipe(dir: &std::path::Path) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["inspect", "--data-dir", common::arg(dir)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tether inspect");
    // Closed before the command has opened anything, so its write meets a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("tether inspect ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `tether backup` without `--server` beside a running server backs it up through its admin
/// API (with the generated key) instead of refusing the locked directory.
#[tokio::test]
async fn backup_beside_a_running_server_goes_through_its_api() {
    let server = Server::start(&[]).await;
    let (status, session) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "lou", "data": {"n": 7}}),
        )
        .await;
    assert_eq!(status, 201);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("snap.tbk");
    let out = common::cli_ok(&[
        "backup",
        "--out",
        common::arg(&file),
        "--data-dir",
        common::arg(&server.dir),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("through its admin API"), "{err}");
    let restored = tmp.path().join("restored");
    common::cli_ok(&[
        "restore",
        "--from",
        common::arg(&file),
        "--data-dir",
        common::arg(&restored),
    ]);
    let again = Server::start_in(&restored, &[]).await;
    let sid = session["sessionId"].as_str().unwrap();
    let (status, s) = again.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200);
    assert_eq!(s["data"]["n"], 7);
}

#[tokio::test]
async fn a_store_with_an_unknown_schema_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    {
        let trees = tether::store::Trees::open(&dir, 1 << 20).unwrap();
        trees
            .meta
            .insert("schema_version", tether::codec::encode(&99u32).unwrap())
            .unwrap();
        trees.db.flush().unwrap();
    }
    let err = common::spawn(&dir, &[])
        .await
        .expect_err("the server must refuse the store");
    assert!(err.contains("schema version 99"), "{err}");
}

/// The stored record says what the API says: an Active connection is stored as active, not
/// as the `authenticated` it was while it was being registered.
#[tokio::test]
async fn an_active_connection_is_stored_as_active() {
    let mut server = Server::start(&[]).await;
    let (_ws, welcome) = server.connect("ari").await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    let (_, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(info["state"], "active");
    server.stop().await;
    let report = inspect(&server.dir).await;
    assert_eq!(
        report["connectionsByState"],
        json!({"active": 1}),
        "{report}"
    );
}

async fn inspect(dir: &std::path::Path) -> Value {
    let out = common::cli_ok(&["inspect", "--json", "--data-dir", common::arg(dir)]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn replay_buffers_are_trimmed_to_their_bound_and_removed_with_their_connection() {
    let mut server = Server::start(&["--replay-buffer-messages", "3"]).await;
    let (mut ws, welcome) = server.connect("lena").await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    for n in 1..=10 {
        let (status, _) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/v1/connections/{id}/messages"),
                json!({"data": n}),
            )
            .await;
        assert_eq!(status, 200);
    }
    for _ in 1..=10 {
        ws.recv_type("message").await;
    }
    // The sweeper trims once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.stop().await;
    assert_eq!(inspect(&server.dir).await["deliveries"], 3);

    server.restart().await;
    let mut ws = server
        .ws(&resume_query(&server, "lena", &welcome, Some(7)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    for seq in 8..=10 {
        assert_eq!(ws.recv_type("message").await["seq"], seq);
    }
    // A clean close removes the connection; its buffer follows within a sweep.
    ws.close().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.stop().await;
    let report = inspect(&server.dir).await;
    assert_eq!(report["connections"], 0, "{report}");
    assert_eq!(report["deliveries"], 0, "{report}");
}

#[tokio::test]
async fn a_store_whose_log_was_overwritten_is_refused_not_served_empty() {
    let mut server = Server::start(&[]).await;
    let (status, _) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "mona"}),
        )
        .await;
    assert_eq!(status, 201);
    server.stop().await;
    // Overwrite the head of sled's log: sled itself would open this as an empty store.
    let db = server.dir.join("store").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len().min(4096);
    bytes[..n]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 131 % 251) as u8);
    std::fs::write(&db, &bytes).unwrap();
    let manifest = std::fs::read_to_string(server.dir.join("store.manifest")).unwrap();

    let err = common::spawn(&server.dir, &[])
        .await
        .expect_err("a damaged store must be refused");
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(
        std::fs::read_to_string(server.dir.join("store.manifest")).unwrap(),
        manifest,
        "nothing is changed"
    );
}

#[tokio::test]
async fn an_unreadable_record_is_skipped_and_left_in_the_store() {
    let mut server = Server::start(&[]).await;
    let (a, wa) = server.connect("nina").await;
    let (b, wb) = server.connect("omar").await;
    drop((a, b));
    server.stop().await;
    let bad = uuid::Uuid::parse_str(wa["connectionId"].as_str().unwrap()).unwrap();
    {
        let trees = tether::store::Trees::open(&server.dir, 1 << 20).unwrap();
        trees
            .conns
            .insert(bad.as_bytes(), &[1u8, 0xff, 0xff, 0xff][..])
            .unwrap();
        trees.db.flush().unwrap();
    }
    server.restart().await;
    let (status, _) = server.get_json(&format!("/v1/connections/{bad}")).await;
    assert_eq!(status, 404);
    let (status, info) = server
        .get_json(&format!(
            "/v1/connections/{}",
            wb["connectionId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(info["state"], "detached");
    assert!(
        server.logs().contains("does not decode"),
        "{}",
        server.logs()
    );
    server.stop().await;
    let report = inspect(&server.dir).await;
    assert_eq!(report["connections"], 2, "the bad record is kept: {report}");
    assert_eq!(report["unreadableConnections"], 1, "{report}");
}

#[tokio::test]
async fn rate_limit_state_carries_over_a_resume() {
    let server = Server::start(&["--messages-per-minute", "5"]).await;
    let (mut ws, welcome) = server.connect("pia").await;
    let id = welcome["connectionId"].as_str().unwrap().to_string();
    for i in 0..4 {
        ws.send(json!({"type": "ping", "id": i})).await;
        ws.recv_type("pong").await;
    }
    // Lost without a close frame: the connection is kept, with what it used of its limit.
    drop(ws);
    let mut detached = false;
    for _ in 0..100 {
        let (_, info) = server.get_json(&format!("/v1/connections/{id}")).await;
        if info["state"] == "detached" {
            detached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        detached,
        "a socket lost without a close frame leaves its connection detached"
    );
    let mut ws = server
        .ws(&resume_query(&server, "pia", &welcome, Some(0)))
        .await;
    assert_eq!(ws.recv_type("welcome").await["resumed"], true);
    ws.send(json!({"type": "ping", "id": 5})).await;
    assert_eq!(
        ws.recv().await["type"],
        "pong",
        "the fifth frame of the minute is allowed"
    );
    ws.send(json!({"type": "ping", "id": 6})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["code"], "rate_limited",
        "the sixth is over the limit carried over"
    );
}

#[tokio::test]
async fn seq_keeps_counting_after_everything_was_acked_and_the_server_was_killed() {
    let mut server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("quin").await;
    for n in 1..=3 {
        message_user(&server, "quin", json!(n)).await;
        ws.recv_type("message").await;
    }
    ws.send(json!({"type": "ack", "seq": 3, "id": "a"})).await;
    ws.recv_type("ack").await;
    // Let the sweeper remove the acknowledged deliveries, then crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9().await;
    drop(ws);
    server.restart().await;
    let mut ws = server
        .ws(&resume_query(&server, "quin", &welcome, Some(3)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["seq"], 3, "{w}");
    message_user(&server, "quin", json!(4)).await;
    assert_eq!(
        ws.recv_type("message").await["seq"],
        4,
        "a seq is never handed out twice"
    );
}
