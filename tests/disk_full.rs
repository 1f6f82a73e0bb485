//! A full disk, from outside: the real server on a small tmpfs data directory that a second
//! file fills to the last block. Writes must be refused quickly and clearly (507 over HTTP,
//! an `error` frame for `session.update`, a refused connect), reads and `/health` must keep
//! answering, `/ready` must say why it is not ready, writes must come back by themselves
//! once space is freed, SIGTERM must end the server promptly, and a restart must find every
//! acknowledged write.
//!
//! Mounting a tmpfs needs root; as anyone else these tests say why they skip, and pass.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{resume_query, Server, Ws, WAIT};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The tests mount filesystems and set the environment the server inherits: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped (also when the
/// test fails).
struct Tmpfs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it), or says on stderr why not.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let uid = run("id", &["-u"]).map(|o| o.trim().to_string());
        if uid.as_deref() != Ok("0") {
            skip(
                test,
                &format!(
                    "mounting a tmpfs needs root, and this runs as uid {}",
                    uid.unwrap_or_else(|e| e)
                ),
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().to_path_buf();
        let opts = format!("size={size}");
        if let Err(e) = run(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", common::arg(&mount)],
        ) {
            skip(test, &format!("cannot mount a tmpfs: {e}"));
            return None;
        }
        Some(Tmpfs { mount, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let m = common::arg(&self.mount).to_string();
        for _ in 0..50 {
            if run("umount", &[&m]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy (a server that would not die): detach it rather than leave it mounted.
        if let Err(e) = run("umount", &["-l", &m]) {
            let _ = writeln!(std::io::stderr(), "cannot unmount {m}: {e}");
        }
    }
}

/// Written straight to stderr, past the test harness's capture, so a skip is always seen.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED disk_full::{test}: {why}");
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes `path` until the filesystem has no block left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut wrote = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => wrote += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    assert!(wrote > 0, "the disk was full before the filler");
}

fn free_bytes(dir: &Path) -> u64 {
    let out = run("df", &["-B1", "--output=avail", common::arg(dir)]).expect("df");
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

/// Starts the server on `dir` with `env` set for it (the configuration layer every tether
/// reads; one without these keys ignores them, and shows what it does on a full disk).
async fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Server {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let server = Server::start_in(dir, &[]).await;
    for (k, _) in env {
        std::env::remove_var(k);
    }
    server
}

async fn restart_with_env(server: &mut Server, env: &[(&str, &str)]) {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    server.restart().await;
    for (k, _) in env {
        std::env::remove_var(k);
    }
}

/// A request that must answer within [`WAIT`] rather than hang: its status and JSON body.
async fn answer(req: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn write(server: &Server, method: Method, path: &str, body: Value) -> (u16, Value) {
    let what = format!("{method} {path}");
    answer(server.admin(method, path).json(&body), &what).await
}

async fn read(server: &Server, path: &str) -> (u16, Value) {
    answer(server.admin(Method::GET, path), &format!("GET {path}")).await
}

async fn ready(server: &Server) -> (u16, Value) {
    answer(common::http().get(server.url("/ready")), "GET /ready").await
}

/// Polls `/ready` until it answers `status`; fails after [`WAIT`].
async fn ready_becomes(server: &Server, status: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, body) = ready(server).await;
        if s == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready still answers {s} {body} after {WAIT:?}; expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reply to a `session.update` with `id`: `ack` or `error`, within [`WAIT`].
async fn session_update(ws: &mut Ws, id: &str, updates: Value) -> Value {
    ws.send(json!({"type": "session.update", "id": id, "updates": updates}))
        .await;
    loop {
        let f = ws
            .try_recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("no reply to session.update {id} within {WAIT:?}"));
        if (f["type"] == "ack" || f["type"] == "error") && f["id"] == id {
            return f;
        }
    }
}

/// How a WebSocket connect that the server should refuse went: `Err((status, body))` for an
/// HTTP refusal before the upgrade, `Ok(frames, close)` for a socket closed after it.
async fn ws_connect_outcome(
    server: &Server,
    query: &str,
) -> Result<(Vec<Value>, common::Closed), (u16, Value)> {
    let req = server.ws_url(query).into_client_request().unwrap();
    let r = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket connect: no answer in time");
    match r {
        Ok((inner, _)) => {
            let mut ws = Ws {
                inner,
                disconnect: None,
            };
            Ok(ws.frames_until_close().await)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("WebSocket connect failed: {e}"),
    }
}

/// A connect while the store refuses writes: HTTP 503 with `code` before the upgrade, or a
/// close 1013 (reconnect) after it; never a `welcome`.
fn assert_connect_refused(outcome: Result<(Vec<Value>, common::Closed), (u16, Value)>, code: &str) {
    match outcome {
        Err((status, body)) => {
            assert_eq!(status, 503, "connect refused with {status} {body}");
            assert_eq!(body["error"]["code"], code, "{body}");
        }
        Ok((frames, closed)) => {
            assert!(
                frames.iter().all(|f| f["type"] != "welcome"),
                "a connect got a welcome while the store refused writes: {frames:?}"
            );
            assert_eq!(closed.code, Some(1013), "{closed:?}");
            let d = closed
                .disconnect
                .expect("a disconnect frame before the close");
            assert_eq!(d["reconnect"], true, "{d}");
        }
    }
}

/// SIGTERM, and the exit within a bounded wait: the server's exit code.
async fn sigterm(server: &mut Server) -> Option<i32> {
    let started = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(12), server.stop())
        .await
        .expect("the server did not exit within 12 s of SIGTERM");
    let _ = writeln!(
        std::io::stderr(),
        "disk_full: exited {:?} after SIGTERM in {:?}",
        code,
        started.elapsed()
    );
    code
}

fn metric(text: &str, name: &str) -> Option<f64> {
    common::metric(text, name)
}

const RESERVE_ENV: [(&str, &str); 1] = [("TETHER_DISK_RESERVE_BYTES", "2097152")];

#[tokio::test]
async fn a_full_disk_refuses_writes_and_they_come_back_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let Some(fs) = Tmpfs::mount(
        "a_full_disk_refuses_writes_and_they_come_back_without_a_restart",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("data");
    let mut server = start_with_env(&dir, &RESERVE_ENV).await;

    // ----- acknowledged writes, while there is room -----
    let (status, s) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "alice", "data": {"step": "created"}}),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    let sid = s["sessionId"].as_str().unwrap().to_string();
    let mut ws = server.ws(&format!("session_id={sid}")).await;
    let welcome = ws.recv_type("welcome").await;
    let conn = welcome["connectionId"].as_str().unwrap().to_string();
    let ack = session_update(&mut ws, "u1", json!({"before": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (status, sent) = write(
        &server,
        Method::POST,
        &format!("/v1/connections/{conn}/messages"),
        json!({"data": {"n": 1}}),
    )
    .await;
    assert_eq!(
        (status, sent["delivered"].clone()),
        (200, json!(1)),
        "{sent}"
    );
    assert_eq!(ws.recv_type("message").await["data"]["n"], 1);
    // A second client, to close while the disk is full.
    let (mut bob, _) = server.connect("bob").await;

    // The guard keeps its ballast on a disk with room.
    let ballast = dir.join("tether.reserve");
    let deadline = Instant::now() + WAIT;
    while !ballast.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ----- fill the disk to the last block -----
    fill(&fs.path().join("filler"));
    let full_at = Instant::now();
    let body = ready_becomes(&server, 503).await;
    let _ = writeln!(
        std::io::stderr(),
        "disk_full: /ready turned 503 {:?} after the disk filled: {body}",
        full_at.elapsed()
    );
    assert_eq!(body["code"], "insufficient_storage", "{body}");
    assert!(
        body["reason"].as_str().unwrap_or("").contains("full"),
        "{body}"
    );

    // Writes: refused at once, with their own code.
    let (status, e) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "refused"}),
    )
    .await;
    assert_eq!(status, 507, "POST /v1/sessions on a full disk: {e}");
    assert_eq!(e["error"]["code"], "insufficient_storage", "{e}");
    let (status, e) = write(
        &server,
        Method::PATCH,
        &format!("/v1/sessions/{sid}"),
        json!({"data": {"refused": true}}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (507, json!("insufficient_storage")),
        "{e}"
    );
    let (status, e) = write(
        &server,
        Method::POST,
        &format!("/v1/connections/{conn}/messages"),
        json!({"data": {"n": 2}}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (507, json!("insufficient_storage")),
        "{e}"
    );
    let refused = session_update(&mut ws, "u2", json!({"refused": true})).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "insufficient_storage", "{refused}");
    assert_connect_refused(
        ws_connect_outcome(
            &server,
            &format!("token={}", server.token("carol", json!({}))),
        )
        .await,
        "insufficient_storage",
    );
    match server
        .sse(&format!("token={}", server.token("carol", json!({}))), &[])
        .await
    {
        Err((status, body)) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
        }
        Ok(_) => panic!("an SSE stream opened while the store refused writes"),
    }

    // Reads, /health and /metrics keep answering.
    let (status, got) = read(&server, &format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["data"], json!({"step": "created", "before": 1}));
    let (status, got) = read(&server, &format!("/v1/connections/{conn}")).await;
    assert_eq!(status, 200, "{got}");
    let (status, _) = read(&server, "/v1/health").await;
    assert_eq!(status, 200);
    let (status, health) = answer(common::http().get(server.url("/health")), "GET /health").await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let metrics = server.metrics_text().await;
    assert_eq!(
        metric(&metrics, "tether_store_writable"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "tether_store_writes_refused_total").unwrap_or(0.0) >= 5.0,
        "{metrics}"
    );
    // A client that leaves while the disk is full: its record is still written (into the
    // room the guard keeps), and nothing breaks.
    bob.close().await;

    // ----- free the space: writes come back by themselves -----
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let freed_at = Instant::now();
    ready_becomes(&server, 200).await;
    let _ = writeln!(
        std::io::stderr(),
        "disk_full: /ready turned 200 {:?} after space was freed ({} bytes free)",
        freed_at.elapsed(),
        free_bytes(fs.path())
    );
    let (status, after) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "dave", "data": {"step": "after"}}),
    )
    .await;
    assert_eq!(status, 201, "a write after space was freed: {after}");
    let after_sid = after["sessionId"].as_str().unwrap().to_string();
    let ack = session_update(&mut ws, "u3", json!({"after": 3})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (status, sent) = write(
        &server,
        Method::POST,
        &format!("/v1/connections/{conn}/messages"),
        json!({"data": {"n": 3}}),
    )
    .await;
    assert_eq!(
        (status, sent["delivered"].clone()),
        (200, json!(1)),
        "{sent}"
    );
    assert_eq!(ws.recv_type("message").await["data"]["n"], 3);
    let (mut erin, _) = server.connect("erin").await;
    erin.close().await;
    let metrics = server.metrics_text().await;
    assert_eq!(
        metric(&metrics, "tether_store_writable"),
        Some(1.0),
        "{metrics}"
    );

    // ----- SIGTERM ends it promptly; a restart finds every acknowledged write -----
    assert_eq!(sigterm(&mut server).await, Some(0), "{}", server.logs());
    drop(ws);
    restart_with_env(&mut server, &RESERVE_ENV).await;
    let (status, got) = read(&server, &format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got["data"],
        json!({"step": "created", "before": 1, "after": 3}),
        "the acknowledged updates, and not the refused ones"
    );
    let (status, got) = read(&server, &format!("/v1/sessions/{after_sid}")).await;
    assert_eq!(
        (status, got["data"].clone()),
        (200, json!({"step": "after"}))
    );
    let (status, refused) = read(&server, "/v1/users/refused/sessions").await;
    assert_eq!(
        (status, refused),
        (200, json!([])),
        "a refused write was kept"
    );
    // The connection resumes and is replayed exactly the acknowledged messages.
    let mut ws = server
        .ws(&resume_query(&server, "alice", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    let mut replayed = Vec::new();
    while let Some(f) = ws.try_recv(Duration::from_millis(500)).await {
        if f["type"] == "message" {
            replayed.push(f["data"]["n"].clone());
        }
    }
    assert_eq!(replayed, vec![json!(1), json!(3)]);
    assert_eq!(sigterm(&mut server).await, Some(0));
}

/// With the guard off, the disk fills under sled itself: a large write fails inside sled
/// and leaves its log waiting for good (see `durability`). The server must still answer
/// (503, its own code), say so on `/ready`, stop on SIGTERM, and lose nothing acknowledged.
#[tokio::test]
async fn a_flush_that_never_returns_fails_writes_and_shutdown_still_ends() {
    let _serial = SERIAL.lock().await;
    let Some(fs) = Tmpfs::mount(
        "a_flush_that_never_returns_fails_writes_and_shutdown_still_ends",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("data");
    // The big session below must pass session_max_bytes to reach sled.
    let env = [
        ("TETHER_DISK_RESERVE_BYTES", "0"),
        ("TETHER_FLUSH_TIMEOUT_MS", "1000"),
        ("TETHER_SESSION_MAX_BYTES", "1048576"),
    ];
    let mut server = start_with_env(&dir, &env).await;
    let (status, s) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "alice", "data": {"kept": true}}),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    let sid = s["sessionId"].as_str().unwrap().to_string();

    fill(&fs.path().join("filler"));
    // Over a quarter of a sled segment: stored as a blob, whose write gets ENOSPC.
    let big = "x".repeat(200_000);
    let (status, e) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "big", "data": {"big": big}}),
    )
    .await;
    assert!(
        status == 507 || status == 503,
        "a write the disk cannot hold: {status} {e}"
    );
    // The next write's flush never returns inside sled: refused after flush_timeout_ms.
    let (status, e) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "small"}),
    )
    .await;
    assert!(
        status == 503 || status == 507,
        "a write after sled lost its log: {status} {e}"
    );
    let code = e["error"]["code"].as_str().unwrap_or("").to_string();
    assert!(
        ["store_stalled", "store_failed", "insufficient_storage"].contains(&code.as_str()),
        "{e}"
    );
    let body = ready_becomes(&server, 503).await;
    assert!(
        ["store_stalled", "store_failed"].contains(&body["code"].as_str().unwrap_or("")),
        "{body}"
    );
    let (status, got) = read(&server, &format!("/v1/sessions/{sid}")).await;
    assert_eq!((status, got["data"].clone()), (200, json!({"kept": true})));
    let (status, _) = answer(common::http().get(server.url("/health")), "GET /health").await;
    assert_eq!(status, 200);

    // SIGTERM: the server ends although a flush is stuck inside sled.
    sigterm(&mut server).await;
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    restart_with_env(&mut server, &env).await;
    let (status, got) = read(&server, &format!("/v1/sessions/{sid}")).await;
    assert_eq!(
        (status, got["data"].clone()),
        (200, json!({"kept": true})),
        "an acknowledged write was lost"
    );
    let (status, gone) = read(&server, "/v1/users/small/sessions").await;
    assert_eq!((status, gone), (200, json!([])), "a refused write was kept");
    let (status, s) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "again"}),
    )
    .await;
    assert_eq!(status, 201, "writes after the restart: {s}");
    assert_eq!(sigterm(&mut server).await, Some(0));
}

/// A server (re)started on a full disk: it listens and answers `/health`, `/ready` says why
/// it is not ready, and it recovers its store only once there is room again, with every
/// acknowledged write.
#[tokio::test]
async fn a_server_started_on_a_full_disk_recovers_once_there_is_room() {
    let _serial = SERIAL.lock().await;
    let Some(fs) = Tmpfs::mount(
        "a_server_started_on_a_full_disk_recovers_once_there_is_room",
        "16m",
    ) else {
        return;
    };
    let dir = fs.path().join("data");
    let mut server = start_with_env(&dir, &RESERVE_ENV).await;
    let (status, s) = write(
        &server,
        Method::POST,
        "/v1/sessions",
        json!({"userId": "alice", "data": {"kept": true}}),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    let sid = s["sessionId"].as_str().unwrap().to_string();
    let (ws, welcome) = server.connect("alice").await;
    let conn = welcome["connectionId"].as_str().unwrap().to_string();
    assert_eq!(sigterm(&mut server).await, Some(0));
    drop(ws);

    fill(&fs.path().join("filler"));
    for (k, v) in RESERVE_ENV {
        std::env::set_var(k, v);
    }
    let spawned = common::spawn(&dir, &[]).await;
    for (k, _) in RESERVE_ENV {
        std::env::remove_var(k);
    }
    let (mut child, addr, log) = spawned.expect("the server did not start on a full disk");
    let url = |p: &str| format!("http://{addr}{p}");
    let (status, health) = answer(common::http().get(url("/health")), "GET /health").await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let (status, body) = answer(common::http().get(url("/ready")), "GET /ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "insufficient_storage", "{body}");
    let (status, e) = answer(
        common::http()
            .post(url("/v1/sessions"))
            .bearer_auth(&server.admin_key)
            .json(&json!({"userId": "refused"})),
        "POST /v1/sessions",
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (507, json!("insufficient_storage")),
        "{e}"
    );

    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = answer(common::http().get(url("/ready")), "GET /ready").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready {WAIT:?} after space was freed: {body}\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = |p: String| {
        answer(
            common::http().get(url(&p)).bearer_auth(&server.admin_key),
            "GET",
        )
    };
    let (status, got) = get(format!("/v1/sessions/{sid}")).await;
    assert_eq!((status, got["data"].clone()), (200, json!({"kept": true})));
    let (status, got) = get(format!("/v1/connections/{conn}")).await;
    assert_eq!(
        (status, got["state"].clone()),
        (200, json!("detached")),
        "{got}"
    );
    let (status, gone) = get("/v1/users/refused/sessions".to_string()).await;
    assert_eq!((status, gone), (200, json!([])));

    let pid = child.id().expect("running").to_string();
    run("kill", &["-TERM", &pid]).unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("the server did not exit within 12 s of SIGTERM")
        .unwrap();
    assert_eq!(exited.code(), Some(0));
}

/// A connect whose record cannot be made durable (the flush it waits for never returns) is
/// refused after its upgrade (1013) or before its stream (SSE 503), gets no `welcome`, and
/// leaves nothing behind: no record, and its `max_total` slot free.
#[tokio::test]
async fn a_connect_whose_commit_fails_releases_its_slot_and_gets_no_welcome() {
    for transport in ["ws", "sse"] {
        let _serial = SERIAL.lock().await;
        let name = format!("a_connect_whose_commit_fails_{transport}");
        let Some(fs) = Tmpfs::mount(&name, "16m") else {
            return;
        };
        let dir = fs.path().join("data");
        // The guard off, so that writes reach sled; a big value on a full disk then leaves
        // sled's flush waiting for good (see tether::durability), and every write waiting
        // for a flush fails after flush_timeout_ms.
        let env = [
            ("TETHER_DISK_RESERVE_BYTES", "0"),
            ("TETHER_FLUSH_TIMEOUT_MS", "2000"),
            ("TETHER_MAX_TOTAL", "1"),
            ("TETHER_SESSION_MAX_BYTES", "1048576"),
        ];
        let mut server = start_with_env(&dir, &env).await;
        fill(&fs.path().join("filler"));
        let big = server
            .admin(Method::POST, "/v1/sessions")
            .json(&json!({"userId": "big", "data": {"big": "x".repeat(200_000)}}));
        let stuck = tokio::spawn(async move { big.send().await.map(|r| r.status().as_u16()) });
        // The connect's record is written while that flush hangs, and waits for the next.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let query = format!("token={}", server.token("ivy", json!({})));
        if transport == "ws" {
            match ws_connect_outcome(&server, &query).await {
                Ok((frames, closed)) => {
                    assert!(
                        frames.iter().all(|f| f["type"] != "welcome"),
                        "{transport}: a welcome for a record that was not made durable: {frames:?}"
                    );
                    assert_eq!(closed.code, Some(1013), "{closed:?}");
                }
                Err((status, body)) => panic!("refused before the upgrade: {status} {body}"),
            }
        } else {
            match server.sse(&query, &[]).await {
                Ok(mut sse) => {
                    let e = sse.try_event(Duration::from_secs(2)).await;
                    panic!("{transport}: a stream opened: {e:?}");
                }
                Err((status, body)) => {
                    assert_eq!(status, 503, "{body}");
                    assert_eq!(body["error"]["closeCode"], 1013, "{body}");
                }
            }
        }
        let status = stuck.await.unwrap().unwrap();
        assert!(status == 503 || status == 507, "the big write: {status}");
        // Nothing left behind: no record, no slot taken (reads still answer).
        let (status, list) = read(&server, "/v1/users/ivy/connections").await;
        assert_eq!(
            (status, list.clone()),
            (200, json!([])),
            "{transport}: {list}"
        );
        let (_, health) = read(&server, "/v1/health").await;
        assert_eq!(health["activeConnections"], 0, "{transport}: {health}");
        assert_eq!(
            health["byState"].get("authenticated"),
            None,
            "{transport}: {health}"
        );
        sigterm(&mut server).await;
        // Once the disk has room and the store is opened again, the one slot is there.
        std::fs::remove_file(fs.path().join("filler")).unwrap();
        restart_with_env(&mut server, &env).await;
        let (mut ws, welcome) = server.connect("ivy").await;
        assert_eq!(welcome["type"], "welcome");
        ws.close().await;
        sigterm(&mut server).await;
    }
}
