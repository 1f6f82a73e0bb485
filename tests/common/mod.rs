//! Test harness: the real `tether` binary on 127.0.0.1:0 with a temporary data directory,
//! driven by real WebSocket and HTTP clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod redis;

pub const WAIT: Duration = Duration::from_secs(10);

/// The secrets every node of a test cluster shares (cluster mode generates none).
pub const CLUSTER_JWT_SECRET: &str = "a cluster's shared secret, 32 bytes or more";
pub const CLUSTER_ADMIN_KEY: &str = "tk_cluster_admin_key_for_the_tests_0001";

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub args: Vec<String>,
    pub jwt_secret: String,
    pub admin_key: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts a server on a new temporary data directory with extra flags.
    pub async fn start(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, args).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server whose process may hold at most `nofile` open files, so that running
    /// it out of descriptors takes a few hundred sockets, not twenty thousand.
    pub async fn start_with_nofile(nofile: u32, args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Server::start_in_with(&dir, args, Some(nofile)).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `dir` (which may hold an earlier server's store).
    pub async fn start_in(dir: &Path, args: &[&str]) -> Server {
        Server::start_in_with(dir, args, None).await
    }

    async fn start_in_with(dir: &Path, args: &[&str], nofile: Option<u32>) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr, log) = spawn_with_nofile(dir, &args, nofile)
            .await
            .unwrap_or_else(|e| panic!("server did not start: {e}"));
        let secrets: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("secrets.toml")).unwrap()).unwrap();
        let s = Server {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
            _tmp: None,
            args,
            jwt_secret: secrets["jwt_secret"].as_str().unwrap().to_string(),
            admin_key: secrets["admin_api_key"].as_str().unwrap().to_string(),
            log,
        };
        s.wait_ready().await;
        s
    }

    /// Starts a node of a cluster over the Redis at `redis_url`, with the shared secrets,
    /// on its own temporary directory (which cluster mode does not use).
    pub async fn start_node(redis_url: &str, args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut all: Vec<String> = vec![
            "--redis-url".into(),
            redis_url.into(),
            "--jwt-secret".into(),
            CLUSTER_JWT_SECRET.into(),
            "--admin-api-key".into(),
            CLUSTER_ADMIN_KEY.into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let (child, addr, log) = spawn(&dir, &all)
            .await
            .unwrap_or_else(|e| panic!("node did not start: {e}"));
        let s = Server {
            child: Some(child),
            addr,
            dir,
            _tmp: Some(tmp),
            args: all,
            jwt_secret: CLUSTER_JWT_SECRET.into(),
            admin_key: CLUSTER_ADMIN_KEY.into(),
            log,
        };
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = reqwest::get(self.url("/ready")).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/ws", self.addr)
        } else {
            format!("ws://{}/ws?{}", self.addr, query)
        }
    }

    /// An HS256 JWT for `sub`, valid for an hour, with `extra` claims merged in.
    pub fn token(&self, sub: &str, extra: Value) -> String {
        let now = now_secs();
        let mut claims = json!({"sub": sub, "iat": now, "exp": now + 3600});
        if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
            c.extend(e);
        }
        tether::auth::mint(
            self.jwt_secret.as_bytes(),
            tether::config::JwtAlgorithm::HS256,
            &claims,
        )
        .unwrap()
    }

    /// Connects with `?token=` for `sub` and returns the socket and its welcome.
    pub async fn connect(&self, sub: &str) -> (Ws, Value) {
        let mut ws = self
            .ws(&format!("token={}", self.token(sub, json!({}))))
            .await;
        let welcome = ws.recv_type("welcome").await;
        (ws, welcome)
    }

    pub async fn ws(&self, query: &str) -> Ws {
        Ws::connect(self.ws_url(query), &[]).await
    }

    pub async fn ws_with_headers(&self, query: &str, headers: &[(&str, &str)]) -> Ws {
        Ws::connect(self.ws_url(query), headers).await
    }

    /// An HTTP request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, self.url(path))
            .bearer_auth(&self.admin_key)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self.admin(method, path).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The `/metrics` text (open unless the server requires a key for it).
    pub async fn metrics_text(&self) -> String {
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running")
    }

    /// SIGKILL: nothing is flushed, nothing is closed.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = c.id()?;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let status = tokio::time::timeout(Duration::from_secs(15), c.wait())
            .await
            .expect("server did not stop")
            .ok()?;
        status.code()
    }

    /// Restarts on the same data directory with the same flags.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        let (child, addr, log) = spawn(&self.dir, &self.args).await.expect("restart");
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
        self.wait_ready().await;
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// The value of the metric line `name` (with its labels) in a `/metrics` text.
/// A welcome's `connectionId`.
pub fn conn_id(welcome: &Value) -> String {
    welcome["connectionId"]
        .as_str()
        .expect("connectionId")
        .to_string()
}

/// Polls `GET /v1/connections/{id}` until its state is `state` (`"gone"` for a 404), and
/// returns the last body.
pub async fn wait_for_state(server: &Server, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
        let now = match status {
            404 => "gone",
            200 => info["state"].as_str().unwrap_or("?"),
            other => panic!("GET /v1/connections/{id}: {other} {info}"),
        };
        if now == state {
            return info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connection {id} is {now}, expected {state}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The query that resumes the connection `welcome` named, as `user`, after `last_seq`.
pub fn resume_query(server: &Server, user: &str, welcome: &Value, last_seq: Option<u64>) -> String {
    let mut q = format!(
        "token={}&resume={}&resume_token={}",
        server.token(user, json!({})),
        welcome["connectionId"].as_str().unwrap(),
        welcome["resumeToken"].as_str().unwrap()
    );
    if let Some(s) = last_seq {
        q.push_str(&format!("&last_seq={s}"));
    }
    q
}

/// Runs the `tether` command with `args` and waits for it.
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .expect("run tether")
}

/// [`cli`], failing the test with the command's stderr unless it succeeded.
pub fn cli_ok(args: &[&str]) -> std::process::Output {
    let out = cli(args);
    assert!(
        out.status.success(),
        "tether {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path as a command-line argument (temporary paths are UTF-8).
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// Spawns `tether serve` on port 0 and reads the bound address from its log.
pub async fn spawn(
    dir: &Path,
    args: &[String],
) -> Result<(Child, SocketAddr, std::sync::Arc<std::sync::Mutex<String>>), String> {
    spawn_with_nofile(dir, args, None).await
}

/// [`spawn`], with the open-file limit (soft and hard) set to `nofile` when given.
pub async fn spawn_with_nofile(
    dir: &Path,
    args: &[String],
    nofile: Option<u32>,
) -> Result<(Child, SocketAddr, std::sync::Arc<std::sync::Mutex<String>>), String> {
    let bin = env!("CARGO_BIN_EXE_tether");
    let mut cmd = match nofile {
        None => Command::new(bin),
        Some(n) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin);
            sh
        }
    };
    cmd.arg("serve");
    // A port of its own unless the test chose one (to restart on the same port).
    if !args
        .iter()
        .any(|a| a == "--listen" || a.starts_with("--listen="))
    {
        cmd.arg("--listen").arg("127.0.0.1:0");
    }
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                l = lines.next_line() => match l {
                    Ok(Some(line)) => {
                        log.lock().unwrap().push_str(&line);
                        log.lock().unwrap().push('\n');
                        if let Some(i) = line.find("listening on http://") {
                            let rest = &line[i + "listening on http://".len()..];
                            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).unwrap_or(rest.len());
                            return rest[..end].parse::<SocketAddr>().map_err(|e| e.to_string());
                        }
                    }
                    _ => {
                        // It is exiting: its last words (the reason) may still be on stderr.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Ok(Some(line)) = err_lines.next_line().await {
                                log.lock().unwrap().push_str(&line);
                                log.lock().unwrap().push('\n');
                            }
                        })
                        .await;
                        return Err(format!("server exited before listening:\n{}", log.lock().unwrap()));
                    }
                },
                l = err_lines.next_line() => if let Ok(Some(line)) = l {
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                },
            }
        }
    })
    .await
    .map_err(|_| "timed out waiting for the listen line".to_string())??;
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                l = lines.next_line() => match l { Ok(Some(line)) => { let mut g = log2.lock().unwrap(); g.push_str(&line); g.push('\n'); } _ => break },
                l = err_lines.next_line() => match l { Ok(Some(line)) => { let mut g = log2.lock().unwrap(); g.push_str(&line); g.push('\n'); } _ => break },
            }
        }
    });
    Ok((child, addr, log))
}

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    /// The `disconnect` frame, once seen.
    pub disconnect: Option<Value>,
}

/// How a socket ended, as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
    pub disconnect: Option<Value>,
}

impl Closed {
    fn from_frame(
        f: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
        disconnect: &Option<Value>,
    ) -> Closed {
        Closed {
            code: f.as_ref().map(|f| u16::from(f.code)),
            reason: f.map(|f| f.reason.to_string()).unwrap_or_default(),
            disconnect: disconnect.clone(),
        }
    }
}

impl Ws {
    pub async fn connect(url: String, headers: &[(&str, &str)]) -> Ws {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (inner, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
            .expect("connect");
        Ws {
            inner,
            disconnect: None,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.inner.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.inner.send(m).await.unwrap();
    }

    /// The next JSON frame (pings are answered by tungstenite and skipped). Panics on close.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .expect("expected a frame, got none in time or a close")
    }

    /// The next JSON frame within `wait`, or None on timeout or close.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, async {
            loop {
                match self.inner.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                        if v["type"] == "disconnect" {
                            self.disconnect = Some(v.clone());
                        }
                        return Some(v);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next frame of `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code and the `disconnect` frame.
    pub async fn closed(&mut self) -> Closed {
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match self.inner.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        if v["type"] == "disconnect" {
                            self.disconnect = Some(v);
                        }
                    }
                    Some(Ok(Message::Close(f))) => return Closed::from_frame(f, &self.disconnect),
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => return Closed::from_frame(None, &self.disconnect),
                }
            }
        })
        .await;
        r.expect("server did not close the socket in time")
    }

    /// Closes cleanly: sends a close frame and expects the server's close frame in reply
    /// (RFC 6455 §5.5.1), as a client that waits for it would.
    pub async fn close(&mut self) {
        self.inner.close(None).await.expect("send close frame");
        let replied = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = self.inner.next().await {
                if m.is_close() {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            replied,
            Ok(true),
            "the server did not answer the client's close frame with its own"
        );
    }
}

impl Ws {
    /// Every JSON frame until the server closes, and how it closed. For asserting what a
    /// refused or closed client saw, in order (e.g. `disconnect` first and no `welcome`).
    pub async fn frames_until_close(&mut self) -> (Vec<Value>, Closed) {
        let mut frames = Vec::new();
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match self.inner.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                        if v["type"] == "disconnect" {
                            self.disconnect = Some(v.clone());
                        }
                        frames.push(v);
                    }
                    Some(Ok(Message::Close(f))) => {
                        // Read on once, as a real client does: that sends tungstenite's
                        // close reply, so the server can finish at once.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), self.inner.next()).await;
                        break Closed::from_frame(f, &self.disconnect);
                    }
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => break Closed::from_frame(None, &self.disconnect),
                }
            }
        })
        .await
        .expect("server did not close the socket in time");
        (frames, closed)
    }
}

// ----- SSE (added for tests/sse.rs and tests/sessions.rs) ------------------------------

/// One Server-Sent Event as parsed from the wire.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The `data:` as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// What the next read of an SSE stream found.
#[derive(Debug, Clone)]
pub enum SseItem {
    Event(SseEvent),
    /// A `:` comment line (the text after the colon).
    Comment(String),
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A `text/event-stream` read through reqwest's streaming body, parsed line by line.
pub struct Sse {
    stream: ByteStream,
    buf: Vec<u8>,
    pending: SseEvent,
    has_field: bool,
    pub headers: reqwest::header::HeaderMap,
}

/// A client without an overall timeout (an event stream outlives [`WAIT`]); reads time out
/// one by one instead.
pub fn streaming_http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(WAIT)
        .build()
        .unwrap()
}

impl Sse {
    /// Sends `req` and returns the stream, or the status and body if it is not a 200.
    pub async fn open(req: reqwest::RequestBuilder) -> Result<Sse, (u16, Value)> {
        let r = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE request timed out")
            .expect("SSE request failed");
        let status = r.status().as_u16();
        if status != 200 {
            return Err((status, r.json().await.unwrap_or(Value::Null)));
        }
        let headers = r.headers().clone();
        Ok(Sse {
            stream: Box::pin(r.bytes_stream()),
            buf: Vec::new(),
            pending: SseEvent::default(),
            has_field: false,
            headers,
        })
    }

    /// The next event or comment within `wait`; None on timeout or end of stream.
    pub async fn next_item(&mut self, wait: Duration) -> Option<SseItem> {
        tokio::time::timeout(wait, async {
            loop {
                while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=nl).collect();
                    let line = String::from_utf8(line).expect("SSE is UTF-8");
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if self.has_field {
                            self.has_field = false;
                            return Some(SseItem::Event(std::mem::take(&mut self.pending)));
                        }
                        continue;
                    }
                    if let Some(c) = line.strip_prefix(':') {
                        return Some(SseItem::Comment(c.trim_start().to_string()));
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    self.has_field = true;
                    match field {
                        "event" => self.pending.event = value.to_string(),
                        "id" => self.pending.id = Some(value.to_string()),
                        "data" => {
                            if !self.pending.data.is_empty() {
                                self.pending.data.push('\n');
                            }
                            self.pending.data.push_str(value);
                        }
                        _ => {}
                    }
                }
                match self.stream.next().await {
                    Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                    _ => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next event (comments skipped) within `wait`; None on timeout or end of stream.
    pub async fn try_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                SseItem::Event(e) => return Some(e),
                SseItem::Comment(_) => continue,
            }
        }
    }

    /// The next event; panics if none comes within [`WAIT`].
    pub async fn event(&mut self) -> SseEvent {
        self.try_event(WAIT)
            .await
            .expect("expected an SSE event, got none in time or the stream ended")
    }

    /// The next event named `kind`, skipping others.
    pub async fn event_named(&mut self, kind: &str) -> SseEvent {
        loop {
            let e = self.event().await;
            if e.event == kind {
                return e;
            }
        }
    }

    /// Reads until the stream ends; returns the events seen on the way.
    pub async fn ended(&mut self) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        let r = tokio::time::timeout(WAIT, async {
            while let Some(item) = self.next_item(WAIT).await {
                if let SseItem::Event(e) = item {
                    seen.push(e);
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "the SSE stream did not end in time; saw {seen:?}"
        );
        seen
    }
}

impl Server {
    /// `GET /sse?{query}` with extra headers (no API key).
    pub async fn sse(&self, query: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, Value)> {
        let url = if query.is_empty() {
            self.url("/sse")
        } else {
            self.url(&format!("/sse?{query}"))
        };
        let mut req = streaming_http().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Sse::open(req).await
    }

    /// `GET /v1/bus?channels=…` with the admin key.
    pub async fn bus(&self, channels: &str) -> Sse {
        let path = if channels.is_empty() {
            "/v1/bus".to_string()
        } else {
            format!("/v1/bus?channels={channels}")
        };
        let req = streaming_http()
            .get(self.url(&path))
            .bearer_auth(&self.admin_key);
        match Sse::open(req).await {
            Ok(s) => s,
            Err((status, body)) => panic!("GET {path}: {status} {body}"),
        }
    }

    /// `POST /v1/sessions` with `body`; returns the created session.
    pub async fn create_session(&self, body: Value) -> Value {
        let (status, s) = self
            .send_json(reqwest::Method::POST, "/v1/sessions", body)
            .await;
        assert_eq!(status, 201, "create session: {s}");
        s
    }
}
