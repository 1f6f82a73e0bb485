//! A hostile client and a hostile operator against the real binary: what they send, how
//! big, in which shape, and what a damaged data directory or backup holds. Every case gets a
//! clear refusal and loses nothing, and nothing stops the server.

mod common;

use std::time::{Duration, Instant};

use common::{conn_id, wait_for_state, Server, WAIT};
use serde_json::{json, Value};

// ----- 1. sessions are bounded -----------------------------------------------------------

/// The next frame after the `welcome`.
async fn reply(ws: &mut common::Ws) -> Value {
    loop {
        let f = ws.recv().await;
        if f["type"] != "welcome" {
            return f;
        }
    }
}

#[tokio::test]
async fn a_session_is_capped_at_session_max_bytes_and_nothing_past_it_is_written() {
    let server = Server::start(&[]).await;
    let s = server
        .create_session(json!({"userId": "ana", "data": {"small": 1}}))
        .await;
    let sid = s["sessionId"].as_str().unwrap().to_string();
    let mut ws = server.ws(&format!("session_id={sid}")).await;
    ws.recv_type("welcome").await;

    // Two 30 KB keys fit the default 64 KiB; the third would take the session past it.
    let pad = "x".repeat(30_000);
    for (n, key) in ["a", "b"].iter().enumerate() {
        ws.send(json!({"type": "session.update", "id": n, "updates": {*key: pad}}))
            .await;
        let r = reply(&mut ws).await;
        assert_eq!(r["type"], "ack", "update {key}: {r}");
    }
    ws.send(json!({"type": "session.update", "id": "c", "updates": {"c": pad}}))
        .await;
    let r = reply(&mut ws).await;
    assert_eq!(r["type"], "error", "a third 30 KB key was accepted: {r}");
    assert_eq!(r["code"], "session_too_large", "{r}");
    assert_eq!(r["id"], "c", "{r}");
    let (_, now) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    let keys: Vec<&str> = now["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["a", "b", "small"],
        "nothing of the refused update is kept"
    );

    // The same cap over HTTP: a PATCH past it and a create past it are 413, nothing stored.
    let (status, body) = server
        .send_json(
            reqwest::Method::PATCH,
            &format!("/v1/sessions/{sid}"),
            json!({"data": {"c": pad}}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "session_too_large", "{body}");
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "ana", "data": {"big": "y".repeat(70_000)}}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "session_too_large", "{body}");
    let (_, list) = server.get_json("/v1/users/ana/sessions").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Removing a key makes room again: the cap is on the merged data, not on the update.
    ws.send(json!({"type": "session.update", "id": "d", "updates": {"a": null, "c": pad}}))
        .await;
    let r = reply(&mut ws).await;
    assert_eq!(r["type"], "ack", "{r}");
}

#[tokio::test]
async fn a_user_has_at_most_max_sessions_per_user_and_the_list_is_paged() {
    let server = Server::start(&[]).await;
    // The default cap is 100.
    let mut ids = Vec::new();
    for _ in 0..100 {
        let s = server.create_session(json!({"userId": "bo"})).await;
        ids.push(s["sessionId"].as_str().unwrap().to_string());
    }
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "bo"}),
        )
        .await;
    assert_eq!(status, 409, "the 101st session of one user: {body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    // Another user is not concerned, and a deleted session frees its place.
    server.create_session(json!({"userId": "cy"})).await;
    let r = server
        .admin(reqwest::Method::DELETE, &format!("/v1/sessions/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    server.create_session(json!({"userId": "bo"})).await;

    // Without paging parameters the answer is the whole list, a plain array.
    let (status, all) = server.get_json("/v1/users/bo/sessions").await;
    assert_eq!(status, 200);
    let all: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 100);

    // Pages of 30: each a plain array, ordered by session id; the next page starts after
    // the last id of this one, and `Link` names it until the last page.
    let mut paged = Vec::new();
    let mut path = "/v1/users/bo/sessions?limit=30".to_string();
    loop {
        let r = server
            .admin(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Value = r.json().await.unwrap();
        let page = page.as_array().expect("a page is a plain array").clone();
        assert!(page.len() <= 30, "{path}: {} sessions", page.len());
        paged.extend(
            page.iter()
                .map(|s| s["sessionId"].as_str().unwrap().to_string()),
        );
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(u, _)| u.to_string())
            .unwrap_or_else(|| panic!("Link: {link}"));
        assert!(
            next.contains(&format!("after={}", paged.last().unwrap())),
            "{next}"
        );
        path = next;
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(paged, sorted, "every session once, in id order");
    for bad in ["limit=0", "limit=1001", "limit=x", "page=2"] {
        let (status, body) = server
            .get_json(&format!("/v1/users/bo/sessions?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

// ----- 2. a backup's records are checked, and no record stops the server ----------------

/// A seq past 2^53 cannot even be told apart from its neighbours by a JSON client.
const ABSURD_SEQ: u64 = 36_000_000_000_000_000;

/// A server with a session, a connection and its events, stopped cleanly.
async fn stopped_with_data() -> Server {
    let mut server = Server::start(&[]).await;
    server.create_session(json!({"userId": "ana"})).await;
    let (mut ws, _) = server.connect("ana").await;
    ws.close().await;
    let (_ws, _) = server.connect("ana").await;
    server.stop().await;
    server
}

/// The backup format (see `store::embedded::snapshot`), written back after an edit.
fn encode_backup(snap: &tether::store::embedded::snapshot::Snapshot) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::new();
    out.extend_from_slice(b"TETHERBK");
    out.push(1);
    out.extend_from_slice(&snap.schema.to_le_bytes());
    out.extend_from_slice(&(snap.secrets.len() as u32).to_le_bytes());
    out.extend_from_slice(&snap.secrets);
    for (name, items) in &snap.trees {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for (k, v) in items {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(&0u16.to_le_bytes());
    let digest = sha2::Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

#[tokio::test]
async fn restore_checks_every_record_and_names_the_bad_one() {
    use tether::model::StoredEvent;
    let server = stopped_with_data().await;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.tbk");
    common::cli_ok(&[
        "backup",
        "--out",
        common::arg(&good),
        "--data-dir",
        common::arg(&server.dir),
    ]);
    let bytes = std::fs::read(&good).unwrap();
    let snap = tether::store::embedded::snapshot::verify(&bytes).unwrap();

    // Each edit keeps the checksum valid; each makes one record wrong.
    let edit = |tree: &str, f: &dyn Fn(&mut Vec<tether::store::embedded::snapshot::KeyValue>)| {
        let mut s = tether::store::embedded::snapshot::verify(&bytes).unwrap();
        let items = &mut s.trees.iter_mut().find(|(n, _)| n == tree).unwrap().1;
        f(items);
        encode_backup(&s)
    };
    let absurd_event = edit("events", &|items| {
        let (k, v) = items.last_mut().unwrap();
        let mut ev: StoredEvent = tether::codec::decode(v).unwrap();
        ev.seq = ABSURD_SEQ;
        *k = ABSURD_SEQ.to_be_bytes().to_vec();
        *v = tether::codec::encode(&ev).unwrap();
    });
    let garbage_session = edit("sessions", &|items| {
        items[0].1 = vec![1, 0xff, 0xfe, 0xfd];
    });
    let wrong_key = edit("conns", &|items| {
        items[0].0 = vec![7; 16];
    });
    let unknown_tree = {
        let mut s = tether::store::embedded::snapshot::verify(&bytes).unwrap();
        s.trees
            .push(("surprise".into(), vec![(b"k".to_vec(), b"v".to_vec())]));
        encode_backup(&s)
    };
    assert!(
        snap.trees
            .iter()
            .any(|(n, items)| n == "events" && !items.is_empty()),
        "the backup holds events"
    );
    for (what, file, tree) in [
        ("an event seq of 3.6e16", absurd_event, "events"),
        (
            "a session that does not decode",
            garbage_session,
            "sessions",
        ),
        ("a connection under another id's key", wrong_key, "conns"),
        ("a tree tether does not have", unknown_tree, "surprise"),
    ] {
        let path = tmp.path().join("bad.tbk");
        std::fs::write(&path, &file).unwrap();
        let target = tmp.path().join(format!("restored-{tree}"));
        let out = common::cli(&[
            "restore",
            "--from",
            common::arg(&path),
            "--data-dir",
            common::arg(&target),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: restored: {stderr}");
        assert!(
            stderr.contains(&format!("`{tree}`")) && stderr.contains("key"),
            "{what}: the message names the tree and the key: {stderr}"
        );
        assert!(
            !target.join("store").exists(),
            "{what}: nothing is written for a refused backup"
        );
    }
    // The good one still restores.
    let target = tmp.path().join("restored");
    common::cli_ok(&[
        "restore",
        "--from",
        common::arg(&good),
        "--data-dir",
        common::arg(&target),
    ]);
}

#[tokio::test]
async fn a_stored_event_with_an_absurd_seq_does_not_stop_the_server() {
    let mut server = stopped_with_data().await;
    {
        // What a damaged disk or a hand-edited store could hold: the event log's newest
        // record 3.6e16 past its oldest.
        let _lock = tether::store::lock_data_dir(&server.dir).unwrap();
        let trees = tether::store::Trees::open(&server.dir, 1 << 20).unwrap();
        let ev = tether::model::StoredEvent {
            seq: ABSURD_SEQ,
            connection_id: uuid::Uuid::new_v4(),
            user_id: "ana".into(),
            event_type: tether::model::EventType::Connected,
            timestamp: 0,
            details_json: "{}".into(),
        };
        trees
            .events
            .insert(
                ABSURD_SEQ.to_be_bytes(),
                tether::codec::encode(&ev).unwrap(),
            )
            .unwrap();
        trees.db.flush().unwrap();
    }
    // Start-up logs a `detached` event for the stored connection: that append must not walk
    // the 3.6e16 seqs between the oldest event and the newest.
    server.restart().await;
    let (status, _) = server.get_json("/health").await;
    assert_eq!(status, 200);
    let (_ws, welcome) = server.connect("ana").await;
    assert_eq!(welcome["type"], "welcome");
    let (status, events) = server.get_json("/v1/events?limit=10000").await;
    assert_eq!(status, 200, "{events}");
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.iter().all(|s| *s < 1 << 53),
        "the event log serves no absurd seq and numbers on from the good ones: {seqs:?}"
    );
    assert!(seqs.len() >= 3, "the earlier events are kept: {seqs:?}");
}

// ----- 3. a store that was cut short is refused, not served -----------------------------

/// Copies a directory tree (what an operator's `cp -r` of a stopped data directory does).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Starts a server on `dir`: Ok with its session count if it became ready, Err with its log
/// if it refused to start.
async fn start_and_count(dir: &std::path::Path, user: &str) -> Result<usize, String> {
    let (mut child, addr, log) = match common::spawn(dir, &[]).await {
        Ok(started) => started,
        Err(log) => return Err(log),
    };
    let deadline = Instant::now() + WAIT;
    let result = loop {
        if let Ok(Some(_)) = child.try_wait() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            break Err(log.lock().unwrap().clone());
        }
        let ready = reqwest::get(format!("http://{addr}/ready")).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            let secrets: toml::Table =
                toml::from_str(&std::fs::read_to_string(dir.join("secrets.toml")).unwrap())
                    .unwrap();
            let key = secrets["admin_api_key"].as_str().unwrap();
            let list: Value = common::http()
                .get(format!("http://{addr}/v1/users/{user}/sessions"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            break Ok(list.as_array().unwrap().len());
        }
        assert!(Instant::now() < deadline, "neither ready nor stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill().await;
    result
}

#[tokio::test]
async fn a_data_directory_copied_short_is_refused_as_damaged() {
    let mut server = Server::start(&[]).await;
    let sessions = 90;
    for n in 0..sessions {
        server
            .create_session(json!({"userId": "ana", "data": {"n": n, "pad": "p".repeat(2000)}}))
            .await;
    }
    server.stop().await;
    let db = server.dir.join("store").join("db");
    let full = std::fs::metadata(&db).unwrap().len();
    let tmp = tempfile::tempdir().unwrap();

    // A whole copy is a valid backup.
    let whole = tmp.path().join("whole");
    copy_dir(&server.dir, &whole);
    assert_eq!(start_and_count(&whole, "ana").await, Ok(sessions));

    // A copy whose store file was cut short at any point is refused, and says what is
    // missing; nothing is served from it.
    for percent in [99, 90, 70, 50, 30, 10, 1] {
        let copy = tmp.path().join(format!("cut-{percent}"));
        copy_dir(&server.dir, &copy);
        let len = full * percent / 100;
        std::fs::OpenOptions::new()
            .write(true)
            .open(copy.join("store").join("db"))
            .unwrap()
            .set_len(len)
            .unwrap();
        match start_and_count(&copy, "ana").await {
            Ok(n) => panic!(
                "store cut at {percent}% ({len} of {full} bytes) was served with {n} of \
                 {sessions} sessions"
            ),
            Err(log) => assert!(
                log.contains("damaged") && log.contains("store/db"),
                "cut at {percent}%: refused, naming what is short: {log}"
            ),
        }
    }

    // A copy that lost its store manifest cannot be checked: refused, naming the file,
    // whole or not; never served as it is.
    for cut in [false, true] {
        let unlisted = tmp.path().join(format!("no-manifest-{cut}"));
        copy_dir(&server.dir, &unlisted);
        std::fs::remove_file(unlisted.join("store.manifest")).unwrap();
        if cut {
            std::fs::OpenOptions::new()
                .write(true)
                .open(unlisted.join("store").join("db"))
                .unwrap()
                .set_len(full / 2)
                .unwrap();
        }
        match start_and_count(&unlisted, "ana").await {
            Ok(n) => {
                panic!("a store without its manifest (cut: {cut}) was served with {n} sessions")
            }
            Err(log) => assert!(cut || log.contains("store.manifest"), "{log}"),
        }
    }

    // After a crash there is no clean stop to compare with; the manifest still says which
    // event the store had made durable, and a store without it is missing records.
    let behind = tmp.path().join("behind");
    copy_dir(&server.dir, &behind);
    let text = std::fs::read_to_string(behind.join("store.manifest")).unwrap();
    let seq: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("event_seq = "))
        .expect("the manifest records the event seq")
        .parse()
        .unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.starts_with("event_seq")
                && !l.starts_with("bytes.")
                && !l.starts_with("clean_stop")
                && !l.starts_with("snapshots")
        })
        .collect();
    std::fs::write(
        behind.join("store.manifest"),
        format!("{}\nevent_seq = {}\n", kept.join("\n"), seq + 5),
    )
    .unwrap();
    match start_and_count(&behind, "ana").await {
        Ok(n) => panic!("a store short of its manifest's events was served with {n} sessions"),
        Err(log) => assert!(log.contains("records are missing"), "{log}"),
    }
}

// ----- 4. protocol violations close 1002 / 1007 and remove the connection ---------------

/// A WebSocket client written by hand over TCP, so that it can break the protocol.
struct RawWs {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// What a raw read found.
#[derive(Debug, PartialEq)]
enum RawFrame {
    Text(String),
    Close(Option<u16>),
    Other(u8),
    /// The TCP connection ended without a close frame.
    Eof,
}

impl RawWs {
    /// Sends `request` (an upgrade request without its final blank line) and returns the
    /// status line and headers of the answer.
    async fn request(server: &Server, request: &str) -> (RawWs, String) {
        RawWs::request_with(server, request, &[]).await
    }

    /// [`RawWs::request`], with `early` (WebSocket frames) in the same write, right after
    /// the request: a client that does not wait for the 101.
    async fn request_with(server: &Server, request: &str, early: &[u8]) -> (RawWs, String) {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut bytes = format!("{request}\r\n").into_bytes();
        bytes.extend_from_slice(early);
        tcp.write_all(&bytes).await.unwrap();
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let head = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
                    ws.buf.drain(..end + 4);
                    return head;
                }
                if !ws.fill().await {
                    return String::from_utf8_lossy(&ws.buf).to_string();
                }
            }
        })
        .await
        .expect("an answer to the upgrade request");
        (ws, head)
    }

    fn upgrade(server: &Server, query: &str, version: &str, key: &str) -> String {
        format!(
            "GET /ws?{query} {version}\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n",
            server.addr
        )
    }

    /// Upgrades with a token for `user` and reads the welcome.
    async fn connect(server: &Server, user: &str) -> (RawWs, Value) {
        let query = format!("token={}", server.token(user, json!({})));
        let req = RawWs::upgrade(server, &query, "HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ==");
        let (mut ws, head) = RawWs::request(server, &req).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        match ws.read().await {
            RawFrame::Text(t) => {
                let welcome: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(welcome["type"], "welcome");
                (ws, welcome)
            }
            other => panic!("expected the welcome, got {other:?}"),
        }
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    /// The next frame from the server (never masked), within [`WAIT`].
    async fn read(&mut self) -> RawFrame {
        tokio::time::timeout(WAIT, async {
            if !self.need(2).await {
                return RawFrame::Eof;
            }
            let opcode = self.buf[0] & 0x0f;
            let (len, at) = match self.buf[1] & 0x7f {
                126 => {
                    if !self.need(4).await {
                        return RawFrame::Eof;
                    }
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 => {
                    if !self.need(10).await {
                        return RawFrame::Eof;
                    }
                    let b: [u8; 8] = self.buf[2..10].try_into().unwrap();
                    (u64::from_be_bytes(b) as usize, 10)
                }
                n => (n as usize, 2),
            };
            if !self.need(at + len).await {
                return RawFrame::Eof;
            }
            let payload: Vec<u8> = self.buf.drain(..at + len).skip(at).collect();
            match opcode {
                1 => RawFrame::Text(String::from_utf8(payload).unwrap()),
                8 => RawFrame::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                ),
                op => RawFrame::Other(op),
            }
        })
        .await
        .expect("a frame or the end in time")
    }

    /// Reads until a close frame or the end; returns the `disconnect` frame and the close.
    async fn until_close(&mut self) -> (Option<Value>, RawFrame) {
        let mut disconnect = None;
        loop {
            match self.read().await {
                RawFrame::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                    }
                }
                RawFrame::Other(_) => continue,
                end => return (disconnect, end),
            }
        }
    }

    /// Writes one frame exactly as given: `first` is FIN, RSV and opcode; `mask` None sends
    /// it unmasked.
    async fn write(&mut self, first: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let f = RawWs::frame(first, mask, payload);
        self.tcp.write_all(&f).await.unwrap();
    }

    /// One frame's bytes, exactly as given (see [`RawWs::write`]).
    fn frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }
}

const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

/// A client may send its first frames right behind the upgrade request, before the 101:
/// what the HTTP server read past the request is the WebSocket's first bytes, answered after
/// the welcome.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_answered_after_the_welcome() {
    let server = Server::start(&[]).await;
    let query = format!("token={}", server.token("early", json!({})));
    let req = RawWs::upgrade(&server, &query, "HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ==");
    let ping = RawWs::frame(0x81, MASK, br#"{"type":"ping","id":7}"#);
    let (mut ws, head) = RawWs::request_with(&server, &req, &ping).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut frames = Vec::new();
    for _ in 0..2 {
        match ws.read().await {
            RawFrame::Text(t) => frames.push(serde_json::from_str::<Value>(&t).unwrap()),
            other => panic!("expected a text frame after {frames:?}, got {other:?}"),
        }
    }
    assert_eq!(frames[0]["type"], "welcome", "{frames:?}");
    assert_eq!(
        (frames[1]["type"].clone(), frames[1]["id"].clone()),
        (json!("pong"), json!(7)),
        "{frames:?}"
    );
}

/// A client whose token came with the upgrade request gets the 101 and its welcome in one
/// write, so its first read has both; one that authenticates with its first frame gets the
/// 101 at once, without sending anything first.
#[tokio::test]
async fn the_101_goes_out_with_the_welcome_unless_the_client_authenticates_by_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[]).await;
    for round in 0..3 {
        let query = format!(
            "token={}",
            server.token(&format!("one-write-{round}"), json!({}))
        );
        let req = RawWs::upgrade(&server, &query, "HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ==");
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(format!("{req}\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = vec![0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut first))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(&first[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        let end = text.find("\r\n\r\n").expect("the whole head") + 4;
        assert!(
            n > end + 2 && first[end] == 0x81 && text[end..].contains("\"type\":\"welcome\""),
            "the welcome in the same read as the 101: {text:?}"
        );
    }
    // First-frame auth: the 101 comes before the client says anything.
    let req = RawWs::upgrade(&server, "", "HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ==");
    let (mut ws, head) = RawWs::request(&server, &req).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let auth = json!({"type": "auth", "token": server.token("by-frame", json!({}))}).to_string();
    ws.tcp
        .write_all(&RawWs::frame(0x81, MASK, auth.as_bytes()))
        .await
        .unwrap();
    match ws.read().await {
        RawFrame::Text(t) => assert!(t.contains("\"type\":\"welcome\""), "{t}"),
        other => panic!("expected the welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn protocol_violations_close_1002_or_1007_and_remove_the_connection() {
    let server = Server::start(&[]).await;
    let ping = br#"{"type":"ping"}"#;
    // (what, FIN/RSV/opcode byte, mask, payload, the close it must get)
    let cases: [(&str, u8, _, Vec<u8>, u16); 9] = [
        ("an unmasked client frame", 0x81, None, ping.to_vec(), 1002),
        ("RSV1 set", 0x81 | 0x40, MASK, ping.to_vec(), 1002),
        ("RSV3 set", 0x81 | 0x10, MASK, ping.to_vec(), 1002),
        ("reserved data opcode 0x3", 0x83, MASK, ping.to_vec(), 1002),
        ("reserved control opcode 0xB", 0x8b, MASK, Vec::new(), 1002),
        ("a 126-byte ping", 0x89, MASK, vec![b'p'; 126], 1002),
        ("a fragmented ping", 0x09, MASK, b"p".to_vec(), 1002),
        (
            "a continuation without a start",
            0x80,
            MASK,
            ping.to_vec(),
            1002,
        ),
        (
            "invalid UTF-8 in a text frame",
            0x81,
            MASK,
            vec![b'{', 0xc3, 0x28, b'}'],
            1007,
        ),
    ];
    for (what, first, mask, payload, code) in cases {
        let (mut ws, welcome) = RawWs::connect(&server, "mallory").await;
        let id = conn_id(&welcome);
        ws.write(first, mask, &payload).await;
        let (disconnect, end) = ws.until_close().await;
        assert_eq!(
            end,
            RawFrame::Close(Some(code)),
            "{what}: how the socket ended"
        );
        let d = disconnect.unwrap_or_else(|| panic!("{what}: no disconnect frame"));
        assert_eq!(d["code"], code, "{what}: {d}");
        assert_eq!(d["reconnect"], false, "{what}: {d}");
        // Not resumable: the connection is gone, as after any close that removes it.
        wait_for_state(&server, &id, "gone").await;
    }
    // A violation before authentication is refused the same way.
    let req = RawWs::upgrade(&server, "", "HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ==");
    let (mut ws, head) = RawWs::request(&server, &req).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write(0x81, None, ping).await;
    let (_, end) = ws.until_close().await;
    assert_eq!(end, RawFrame::Close(Some(1002)), "before authentication");
}

// ----- 5. a resume larger than the outbound queue --------------------------------------

#[tokio::test]
async fn a_resume_larger_than_the_outbound_queue_gets_every_frame_in_order() {
    // The replay buffer keeps all 3.2 MB (its default is 1 MiB).
    let server = Server::start(&[
        "--outbound-queue-bytes",
        "65536",
        "--replay-buffer-bytes",
        "4194304",
    ])
    .await;
    let (ws, welcome) = server.connect("ana").await;
    let id = conn_id(&welcome);
    // Lost without a close frame: Detached, resumable.
    drop(ws);
    wait_for_state(&server, &id, "detached").await;

    let frames = 200u64;
    let pad = "z".repeat(16 * 1024);
    for n in 1..=frames {
        let (status, body) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/v1/connections/{id}/messages"),
                json!({"data": {"n": n, "pad": pad}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["seq"], n, "{body}");
    }

    // 3.2 MB owed, 64 KiB of queue: the replay is paced by the socket, not refused.
    let mut ws = server
        .ws(&common::resume_query(&server, "ana", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["resumeError"], Value::Null, "{w}");
    let mut seen = Vec::new();
    while seen.len() < frames as usize {
        match ws.try_recv(WAIT).await {
            Some(f) if f["type"] == "message" => {
                assert_eq!(f["data"]["pad"].as_str().map(str::len), Some(pad.len()));
                seen.push(f["seq"].as_u64().unwrap());
            }
            Some(f) => panic!("after {} of {frames} replayed frames: {f}", seen.len()),
            None => panic!(
                "the socket ended after {} of {frames} replayed frames",
                seen.len()
            ),
        }
    }
    assert_eq!(
        seen,
        (1..=frames).collect::<Vec<_>>(),
        "every frame, in order"
    );

    // It is an ordinary connection now: new messages arrive, with the next seq.
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/connections/{}/messages", conn_id(&w)),
            json!({"data": "after"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let f = ws.recv_type("message").await;
    assert_eq!(
        (f["seq"].as_u64(), &f["data"]),
        (Some(frames + 1), &json!("after"))
    );
}

// ----- 6. an SSE reader that stops reading ----------------------------------------------

/// The state and send queue of the server's side of a loopback TCP connection, from
/// `/proc/net/tcp`: None once the kernel has let go of it.
fn server_side(server_port: u16, client_port: u16) -> Option<(String, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str())).then(|| {
            let state = match f[3] {
                "01" => "ESTABLISHED".to_string(),
                other => format!("state {other}"),
            };
            let queued = f[4].split(':').next().unwrap();
            (state, u64::from_str_radix(queued, 16).unwrap())
        })
    })
}

#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_closed_4010_detached_and_let_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--outbound-queue-bytes", "65536"]).await;
    let token = server.token("ana", json!({}));
    // By hand, to know the connection's port: a client that reads the welcome and then
    // nothing more.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET /sse?token={token} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let id = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "the stream ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&seen);
            if let Some(data) = text
                .split("event: welcome\n")
                .nth(1)
                .and_then(|w| w.split("data: ").nth(1))
                .and_then(|d| d.split_once('\n'))
            {
                let welcome: Value = serde_json::from_str(data.0).unwrap();
                return conn_id(&welcome);
            }
        }
    })
    .await
    .expect("a welcome");
    let client_port = tcp.local_addr().unwrap().port();

    // Every buffer between the server and the client fills (the kernel's, the response
    // pipe, then the 64 KiB queue), and the next message past that closes the connection as
    // a slow consumer.
    let pad = "s".repeat(32 * 1024);
    let started = Instant::now();
    let mut sent = 0;
    loop {
        let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
        assert_eq!(status, 200, "{info}");
        if info["state"] == "detached" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30) && sent < 2000,
            "still {} after {sent} messages of 32 KiB in {:?}: {info}",
            info["state"],
            started.elapsed()
        );
        let (status, body) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/v1/connections/{id}/messages"),
                json!({"data": {"n": sent, "pad": pad}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sent += 1;
    }
    let (_, events) = server
        .get_json(&format!("/v1/events?connectionId={id}&type=detached"))
        .await;
    assert_eq!(
        events[0]["details"]["code"], 4010,
        "detached as a slow consumer: {events}"
    );

    // Detached, the connection is no longer the server's to keep: within a bounded time it
    // lets go of the socket, whatever the client does (here: still nothing).
    let detached = Instant::now();
    loop {
        let side = server_side(server.addr.port(), client_port);
        match &side {
            Some((state, _)) if state == "ESTABLISHED" => {}
            _ => break,
        }
        assert!(
            detached.elapsed() < Duration::from_secs(5),
            "{:?} after its 4010 the server still holds the connection: {side:?} (state, bytes \
             queued)",
            detached.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the client, reading again, finds the end of the connection.
    tokio::time::timeout(WAIT, async {
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(n) = tcp.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the connection ends");

    // What it missed is kept (as much as the replay buffer holds): a resume gets it, in
    // order, up to the last message sent.
    let mut sse = server
        .sse(
            &format!("token={token}"),
            &[("Last-Event-ID", &format!("{id}:0"))],
        )
        .await
        .expect("a resumed event stream");
    let w = sse.event_named("welcome").await.json();
    assert_eq!(w["resumed"], true, "{w}");
    let mut last = None;
    while last != Some(sent as u64) {
        let m = sse.event_named("message").await.json();
        let seq = m["seq"].as_u64().unwrap();
        if let Some(prev) = last {
            assert_eq!(seq, prev + 1, "in order, none missing: {m}");
        }
        last = Some(seq);
    }
}

// ----- 7. smaller things ----------------------------------------------------------------

#[tokio::test]
async fn an_upgrade_over_http_1_0_or_with_a_malformed_key_is_a_400() {
    let server = Server::start(&[]).await;
    let query = format!("token={}", server.token("ana", json!({})));
    let good_key = "dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        ("HTTP/1.0", good_key, "an HTTP/1.0 upgrade"),
        ("HTTP/1.1", "abc", "a key that is not base64"),
        ("HTTP/1.1", "AAAAAAAAAAAAAAAAAAAA", "base64 of 15 bytes"),
        ("HTTP/1.1", "AAAAAAAAAAAAAAAAAAAAAAAA", "base64 of 18 bytes"),
        ("HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ", "unpadded base64"),
        ("HTTP/1.1", "dGhlIHNhbXBsZSBub25jZQ==x", "trailing garbage"),
    ];
    for (version, key, what) in cases {
        let (_, head) =
            RawWs::request(&server, &RawWs::upgrade(&server, &query, version, key)).await;
        let status = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        assert_eq!(status, "400", "{what}: {head}");
    }
    let (_, head) = RawWs::request(
        &server,
        &RawWs::upgrade(&server, &query, "HTTP/1.1", good_key),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn an_explicitly_empty_credential_fails_at_once() {
    // A first-frame client would have 30 s; an empty credential must not wait for that.
    let server = Server::start(&["--auth-timeout-ms", "30000"]).await;
    for query in ["session_id=", "token=", "token=&session_id="] {
        let started = Instant::now();
        let mut ws = server.ws(query).await;
        let closed = ws.closed().await;
        assert_eq!(closed.code, Some(4501), "{query}: {closed:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{query}: closed after {:?}",
            started.elapsed()
        );
        let d = closed.disconnect.expect("a disconnect frame first");
        assert_eq!(d["reason"], "empty credential", "{query}: {d}");
    }
    for (query, headers) in [
        ("", &[("Authorization", "Bearer ")][..]),
        ("", &[("X-Session-Id", " ")][..]),
    ] {
        let mut ws = server.ws_with_headers(query, headers).await;
        let closed = ws.closed().await;
        assert_eq!(closed.code, Some(4501), "{headers:?}: {closed:?}");
    }
    // SSE refuses it the same way, with a 401.
    for query in ["session_id=", "token="] {
        match server.sse(query, &[]).await {
            Ok(_) => panic!("{query}: an event stream"),
            Err((status, body)) => {
                assert_eq!(status, 401, "{query}: {body}");
                assert_eq!(body["error"]["closeCode"], 4501, "{body}");
            }
        }
    }
    // A request without any credential still authenticates by its first frame.
    let mut ws = server.ws("").await;
    ws.send(json!({"type": "auth", "token": server.token("ana", json!({}))}))
        .await;
    assert_eq!(ws.recv_type("welcome").await["userId"], "ana");
}

/// A Cookie header is RFC 6265's list of pairs, whatever else it holds: a neighbour's value
/// past ASCII (a browser sends what another page on the site set) does not hide the session
/// cookie, and only one pair of double quotes around a value is quoting.
#[tokio::test]
async fn the_session_cookie_is_found_beside_any_other_cookie_and_quoted_only_by_a_pair() {
    let server = Server::start(&["--auth-timeout-ms", "30000"]).await;
    let s = server.create_session(json!({"userId": "ana"})).await;
    let sid = s["sessionId"].as_str().unwrap().to_string();
    for cookie in [
        format!("theme=café; tether_sid={sid}"),
        format!("tether_sid=\"{sid}\"; note=ü"),
    ] {
        let mut ws = server.ws_with_headers("", &[("cookie", &cookie)]).await;
        let w = ws.recv_type("welcome").await;
        assert_eq!(w["sessionId"], sid, "{cookie}: {w}");
    }
    // A stray quote is part of the value: that session id does not exist.
    for cookie in [format!("tether_sid=\"{sid}"), format!("tether_sid={sid}\"")] {
        let mut ws = server.ws_with_headers("", &[("cookie", &cookie)]).await;
        let closed = ws.closed().await;
        assert_eq!(closed.code, Some(4501), "{cookie}: {closed:?}");
    }
}

/// The first credential found wins (SPEC §2): a Bearer or `X-Session-Id` header that is not
/// ASCII is found, and refused; a valid query credential further down the order does not
/// stand in for it.
#[tokio::test]
async fn a_credential_header_past_ascii_is_refused_not_passed_over() {
    let server = Server::start(&["--auth-timeout-ms", "30000"]).await;
    let token = server.token("ana", json!({}));
    let s = server.create_session(json!({"userId": "ana"})).await;
    let sid = s["sessionId"].as_str().unwrap().to_string();
    for (query, header) in [
        (format!("token={token}"), ("Authorization", "Bearer café")),
        (format!("session_id={sid}"), ("X-Session-Id", "café")),
    ] {
        let mut ws = server.ws_with_headers(&query, &[header]).await;
        let closed = ws.closed().await;
        assert_eq!(closed.code, Some(4501), "{header:?}: {closed:?}");
    }
}

#[tokio::test]
async fn api_errors_name_the_rule_that_was_broken() {
    let server = Server::start(&[]).await;
    let (_ws, welcome) = server.connect("ana").await;
    let id = conn_id(&welcome);
    let max = tether::config::MAX_SECONDS;
    let cases = [
        (
            reqwest::Method::POST,
            "/v1/sessions".to_string(),
            json!({"userId": "a\u{0}b"}),
            422,
            "`userId` must be a non-empty string without NUL characters".to_string(),
        ),
        (
            reqwest::Method::POST,
            "/v1/sessions".to_string(),
            json!({"userId": "ana", "ttlSeconds": 0}),
            422,
            format!("`ttlSeconds` must be a whole number from 1 to {max}"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/connections/{id}/ttl"),
            json!({"ttlSeconds": -5}),
            422,
            format!("`ttlSeconds` must be a whole number from 1 to {max}"),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/connections/{id}/metadata"),
            json!({"rateLimit": {"messagesPerMinute": 0}}),
            422,
            format!(
                "`rateLimit.messagesPerMinute` must be a whole number from 1 to {}",
                u32::MAX
            ),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/connections/{id}/metadata"),
            json!({"rateLimit": {"messagesPerMinute": 1u64 << 40}}),
            422,
            format!(
                "`rateLimit.messagesPerMinute` must be a whole number from 1 to {}",
                u32::MAX
            ),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/connections/{id}/metadata"),
            json!({"rateLimit": {"burst": 1}}),
            422,
            "unknown or read-only field `rateLimit.burst` (allowed: rateLimit.messagesPerMinute)"
                .to_string(),
        ),
    ];
    for (method, path, body, status, message) in cases {
        let (got, answer) = server.send_json(method.clone(), &path, body.clone()).await;
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["message"], message,
            "{method} {path} {body}"
        );
    }
    // What was refused changed nothing.
    let (_, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(info["metadata"]["rateLimit"]["messagesPerMinute"], 120);
}

#[tokio::test]
async fn the_replay_buffer_is_capped_in_bytes_too_oldest_dropped_first() {
    let server = Server::start(&[]).await;
    let (ws, welcome) = server.connect("ana").await;
    let id = conn_id(&welcome);
    drop(ws);
    wait_for_state(&server, &id, "detached").await;
    // 100 frames of 16 KiB: under the 256-frame count, over the default 1 MiB.
    let pad = "b".repeat(16 * 1024);
    for n in 1..=100 {
        let (status, body) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/v1/connections/{id}/messages"),
                json!({"data": {"n": n, "pad": pad}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut ws = server
        .ws(&common::resume_query(&server, "ana", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert!(
        w["resumeError"]
            .as_str()
            .is_some_and(|e| e.contains("messages lost")),
        "the resume says what was lost: {w}"
    );
    let mut seqs = Vec::new();
    let mut bytes = 0;
    while seqs.last() != Some(&100) {
        let f = ws.recv_type("message").await;
        bytes += f.to_string().len();
        seqs.push(f["seq"].as_u64().unwrap());
    }
    assert!(
        bytes <= 1 << 20,
        "{} frames, {bytes} bytes kept",
        seqs.len()
    );
    assert!(seqs.len() >= 50, "as many as fit are kept: {}", seqs.len());
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..=100).collect::<Vec<_>>(),
        "the newest, in order"
    );
}
