//! The WebSocket transport: `GET /ws`, one connection's state machine.
//!
//! The upgrade is done here rather than by warp's `ws()` filter so that we choose the
//! `WebSocketConfig`: warp's filter gives every socket tungstenite's 128 KiB read buffer,
//! eagerly allocated, which is most of an idle connection's memory. We use a few KiB.
//!
//! The socket is split at the upgrade. Its write half belongs to the connection's
//! [`Outbox`](super::outbox::Outbox): whoever sends a frame (a fan-out, the session reactor,
//! the reader answering a ping) writes it to the socket directly. tungstenite reads and parses
//! the client's frames from the read half, and what it writes itself (pongs, the reply to a
//! client's close) goes through the outbox too, so frames never interleave.
//!
//! One task per connection. After authentication it runs three things side by side in one
//! `select!`: the reader (client frames), the writer (what the socket did not take at once,
//! and the close), and the heartbeat. Anyone who wants the connection closed (an operator,
//! the sweeper, eviction, a session ending, the reader itself) asks the outbox; the writer
//! sends `disconnect` and the close frame, and the registry applies the close's [`Fate`].

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use warp::http::{header, Request, Response, StatusCode};
use warp::reply::Reply;

use super::outbox::Outbox;
use super::{authenticate, new_conn, welcome, Handshake, PeerAddr, Presented};
use crate::app::App;
use crate::error::{Disconnect, Fate};
use crate::listener::Pending;
use crate::metrics::Metrics;
use crate::model::{ConnType, EventType};
use crate::registry::{Live, ResumeRequest};
use crate::sessions::Source;
use crate::time::{now_ms, Millis};

type Socket = WebSocketStream<Duplex>;

/// What tungstenite sees as its stream: reads from the socket's read half, writes into the
/// connection's outbox (which owns the write half).
struct Duplex {
    read: OwnedReadHalf,
    live: Arc<Live>,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.live.outbox.push_raw(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Read buffer per socket, allocated up front by tungstenite. Client frames are small
/// (ping, ack, refresh, session.update); a larger one is still read whole, the buffer
/// growing for it. 1 KiB instead of 4 KiB measured 3 KiB less RSS per idle connection.
const READ_BUFFER: usize = 1024;
/// How long a closing socket waits for the client's close frame before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Bad frames allowed per minute before 4509.
const MAX_BAD_FRAMES: u32 = 10;
/// How often in-memory activity is handed to the registry (never per frame).
const TOUCH_EVERY_MS: i64 = 5000;

/// Answers `GET /ws`: validates the upgrade request, replies 101 and spawns the connection
/// task; anything else gets a plain JSON error, never a hang.
pub async fn handle(
    app: Arc<App>,
    mut req: Request<Incoming>,
) -> Result<warp::reply::Response, Infallible> {
    let error = |status: StatusCode, message: &str| {
        let body = json!({"error": {"code": if status == StatusCode::METHOD_NOT_ALLOWED { "method_not_allowed" } else { "bad_request" }, "message": message}});
        Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
    };
    if req.method() != warp::http::Method::GET {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET with a WebSocket upgrade",
        )?;
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(r);
    }
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return error(
            StatusCode::BAD_REQUEST,
            "this endpoint needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = error(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version; use 13",
        )?;
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return Ok(r);
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if !app.is_ready() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting up; retry shortly",
        );
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let hs = Handshake::from_request(&app, req.headers(), req.uri().query(), peer);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let pending = Pending::take(&mut req);

    let guard = app.tasks.enter();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(app.config.max_message_bytes))
            .max_frame_size(Some(app.config.max_message_bytes));
        // The listener serves plain TCP streams, so the downcast holds; the bytes hyper read
        // past the request (a client that did not wait for the 101) are tungstenite's first.
        let Ok(parts) = upgraded.downcast::<TokioIo<crate::listener::Watched>>() else {
            tracing::error!("WebSocket upgrade on a stream that is not TCP");
            return;
        };
        let (read, write) = parts.io.into_inner().into_inner().into_split();
        let live = Live::wired(Outbox::wired(
            app.config.outbound_queue_bytes,
            write,
            app.metrics.clone(),
        ));
        let duplex = Duplex {
            read,
            live: live.clone(),
        };
        let ws = WebSocketStream::from_partially_read(
            duplex,
            parts.read_buf.to_vec(),
            Role::Server,
            Some(config),
        )
        .await;
        if let Some(ws) = establish(&app, ws, &live, hs, pending).await {
            tokio::spawn(async move {
                serve(app, ws, live).await;
                drop(guard);
            });
        }
    });

    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    Ok(res)
}

#[derive(Deserialize)]
struct AuthFrame {
    #[serde(rename = "type")]
    kind: String,
    token: Option<String>,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
    resume: Option<ResumeField>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeField {
    connection_id: String,
    token: String,
    last_seq: Option<u64>,
}

/// Sends `disconnect` and a close frame on a socket that has no writer task yet, then waits
/// briefly for the client's close so the socket ends cleanly.
async fn refuse(app: &App, mut ws: Socket, live: &Live, d: Disconnect) {
    app.metrics.disconnect(d.code);
    live.outbox.close(d);
    if let Ok(Ok(_)) = tokio::time::timeout(CLOSE_WAIT, live.outbox.write_out()).await {
        drain(&mut ws).await;
    }
    live.outbox.shut();
}

/// Reads until the client's close frame (or the socket ends, or `CLOSE_WAIT` passes).
async fn drain(stream: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Waits for the first-frame `auth` within `auth_timeout_ms`.
async fn first_frame_auth(
    app: &App,
    ws: &mut Socket,
) -> Result<(Presented, Option<ResumeRequest>), Disconnect> {
    let timeout = Duration::from_millis(app.config.auth_timeout_ms);
    let frame = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(Some(t)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                // max_message_bytes holds before authentication too (SPEC §3: 1009).
                Some(Err(tungstenite::Error::Capacity(_))) => return Err(Disconnect::too_large()),
                _ => return Ok(None),
            }
        }
    })
    .await
    .map_err(|_| Disconnect::auth_timeout())??;
    let Some(text) = frame else {
        return Err(Disconnect::unauthorized("expected an auth frame"));
    };
    let auth: AuthFrame = serde_json::from_str(&text)
        .map_err(|_| Disconnect::unauthorized("expected an auth frame"))?;
    if auth.kind != "auth" {
        return Err(Disconnect::unauthorized("expected an auth frame"));
    }
    let cred = match (auth.token, auth.session_id) {
        (Some(t), _) => Presented::Token(t),
        (None, Some(s)) => Presented::Session(s),
        (None, None) => {
            return Err(Disconnect::unauthorized(
                "auth frame without token or sessionId",
            ))
        }
    };
    let resume = auth.resume.map(|r| ResumeRequest {
        connection_id: r.connection_id,
        token: r.token,
        last_seq: r.last_seq,
    });
    Ok((cred, resume))
}

/// One connection, from the open socket to its end.
/// Authenticates, registers, waits for durability and sends `welcome`. Returns the socket,
/// or None once it has refused and closed it.
///
/// This runs in its own short task; [`serve`] is spawned as a second one. A task's memory is
/// the largest state of its future, and the handshake's (credential, registration, timers
/// for the auth frame) would otherwise stay reserved for the connection's whole life.
async fn establish(
    app: &Arc<App>,
    mut ws: Socket,
    live: &Arc<Live>,
    mut hs: Handshake,
    pending: Option<Pending>,
) -> Option<Socket> {
    let (cred, resume) = match hs.credential.take() {
        Some(c) => (c, hs.resume.take()),
        None => match Pending::guard(&pending, first_frame_auth(app, &mut ws)).await {
            Ok((c, r)) => (c, r.or(hs.resume.take())),
            Err(d) => {
                Metrics::inc(&app.metrics.auth_failures);
                refuse(app, ws, live, d).await;
                return None;
            }
        },
    };
    let identity = match authenticate(app, &cred) {
        Ok(i) => i,
        Err(d) => {
            refuse(app, ws, live, d).await;
            return None;
        }
    };
    drop(pending);
    let new = new_conn(app, &hs, identity, ConnType::WebSocket, resume);
    let (id, linked_session) = (new.id, new.session_id.clone());
    let reg = match app.registry.register(new) {
        Ok(r) => r,
        Err(d) => {
            refuse(app, ws, live, d).await;
            return None;
        }
    };
    live.set_id(id);
    if let Err(e) = app.store.commit().await {
        tracing::error!(error = %e, "cannot make a connection durable");
        app.registry
            .force_disconnect(&id, Disconnect::server_full(), EventType::Error);
        refuse(app, ws, live, Disconnect::server_full()).await;
        return None;
    }
    let activated = app
        .registry
        .activate(&id, live, reg.replay_after, |rec| welcome(app, &reg, rec));
    if !activated {
        // Evicted or removed between registration and now.
        refuse(app, ws, live, Disconnect::evicted()).await;
        return None;
    }
    // `welcome` is sent; a session that ended meanwhile closes the connection (4503).
    super::session_still_live(app, &id, linked_session.as_deref());

    Some(ws)
}

/// The connection's working life: reader, writer and heartbeat, until it closes.
async fn serve(app: Arc<App>, mut ws: Socket, live: Arc<Live>) {
    let conn = ConnTask::new(&app, &live);
    let end = tokio::select! {
        end = conn.read(&mut ws) => end,
        end = write(&live) => end,
        end = conn.heartbeat() => end,
        () = overflowed(&live) => End::Server(Disconnect::slow_consumer()),
    };
    conn.flush_touch();
    let (fate, code) = match end {
        End::ClientClosed(code) => {
            // Sends the reply tungstenite queued when it read the client's close (a `send`
            // of our own close would be refused in that state).
            let _ = tokio::time::timeout(CLOSE_WAIT, SinkExt::close(&mut ws)).await;
            (Fate::Remove, code)
        }
        End::Dropped => (Fate::Detach, None),
        End::Server(d) => {
            if d.code == 4010 {
                // The backlog is stuck on a socket nobody reads: try once, briefly, to get the
                // close out after it.
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), live.outbox.write_out()).await;
            } else {
                drain(&mut ws).await;
            }
            (d.fate, Some(d.code))
        }
    };
    live.outbox.shut();
    app.registry.finish(&live, fate, code);
}

enum End {
    /// The client sent a close frame (its code, if any).
    ClientClosed(Option<u16>),
    /// The socket ended or failed without a close frame.
    Dropped,
    /// We closed it: `disconnect` and the close frame were sent.
    Server(Disconnect),
}

async fn overflowed(live: &Live) {
    loop {
        if live.outbox.closed().await.code == 4010 {
            return;
        }
        // Another close is under way; the writer handles it.
        std::future::pending::<()>().await;
    }
}

/// Sends what the socket did not take at once, until a close has been sent.
async fn write(live: &Live) -> End {
    match live.outbox.write_out().await {
        Ok(d) => End::Server(d),
        Err(_) => End::Dropped,
    }
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    token: Option<String>,
    updates: Option<Value>,
    seq: Option<u64>,
}

/// The reader's and heartbeat's state. Both run inside one task; the fields are relaxed
/// atomics only because a task's future must be `Send`.
struct ConnTask<'a> {
    app: &'a App,
    live: &'a Arc<Live>,
    last_seen: Cell<Millis>,
    window_start: Cell<Millis>,
    window_count: Cell<u32>,
    bad_start: Cell<Millis>,
    bad_count: Cell<u32>,
    last_touch: Cell<Millis>,
}

/// A `Cell`-like value that is `Sync`.
#[derive(Default)]
struct Cell<T: CellValue>(T::Atomic);

trait CellValue: Copy {
    type Atomic: Default;
    fn get(a: &Self::Atomic) -> Self;
    fn set(a: &Self::Atomic, v: Self);
}

impl CellValue for i64 {
    type Atomic = AtomicI64;
    fn get(a: &AtomicI64) -> i64 {
        a.load(Relaxed)
    }
    fn set(a: &AtomicI64, v: i64) {
        a.store(v, Relaxed)
    }
}

impl CellValue for u32 {
    type Atomic = AtomicU32;
    fn get(a: &AtomicU32) -> u32 {
        a.load(Relaxed)
    }
    fn set(a: &AtomicU32, v: u32) {
        a.store(v, Relaxed)
    }
}

impl<T: CellValue> Cell<T> {
    fn new(v: T) -> Self {
        let c = Cell(T::Atomic::default());
        c.set(v);
        c
    }
    fn get(&self) -> T {
        T::get(&self.0)
    }
    fn set(&self, v: T) {
        T::set(&self.0, v)
    }
}

impl<'a> ConnTask<'a> {
    /// Starts from the rate-limit window the record carries: a resumed connection keeps
    /// what it had used.
    fn new(app: &'a App, live: &'a Arc<Live>) -> Self {
        let now = now_ms();
        let (window_start, window_count) = app
            .registry
            .rate_limit(&live.id())
            .map(|r| (r.last_reset, r.count))
            .unwrap_or((now, 0));
        ConnTask {
            app,
            live,
            last_seen: Cell::new(now),
            window_start: Cell::new(window_start),
            window_count: Cell::new(window_count),
            bad_start: Cell::new(now),
            bad_count: Cell::new(0),
            last_touch: Cell::new(now),
        }
    }

    fn send(&self, v: Value) {
        self.live.outbox.push_text(v.to_string());
    }

    fn error(&self, code: &str, message: &str, id: Option<&Value>) {
        self.send(json!({"type": "error", "code": code, "message": message, "id": id}));
    }

    fn close(&self, d: Disconnect) {
        self.live.outbox.close(d);
    }

    fn flush_touch(&self) {
        self.app.registry.touch(
            &self.live.id(),
            self.last_seen.get(),
            self.window_start.get(),
            self.window_count.get(),
        );
    }

    fn seen(&self, now: Millis) {
        self.last_seen.set(now);
        if now - self.last_touch.get() >= TOUCH_EVERY_MS {
            self.last_touch.set(now);
            self.flush_touch();
        }
    }

    /// Counts a client frame against the rate limit. Returns false if it is refused.
    fn admit(&self, now: Millis, id: Option<&Value>) -> bool {
        if now - self.window_start.get() >= 60_000 {
            self.window_start.set(now);
            self.window_count.set(0);
        }
        let n = self.window_count.get() + 1;
        self.window_count.set(n);
        let limit = self
            .app
            .registry
            .rate_limit(&self.live.id())
            .map(|r| r.messages_per_minute)
            .unwrap_or(self.app.config.messages_per_minute);
        if n > limit.saturating_mul(2) {
            self.close(Disconnect::rate_abuse());
            return false;
        }
        if n > limit {
            Metrics::inc(&self.app.metrics.rate_limited);
            if n == limit + 1 {
                let id = self.live.id();
                if let Some((user, _)) = self.app.registry.identity(&id) {
                    self.app.registry.events.log(
                        id,
                        &user,
                        EventType::RateLimited,
                        json!({"limit": limit}),
                    );
                }
            }
            let retry = (self.window_start.get() + 60_000 - now).max(0);
            self.send(json!({"type": "error", "code": "rate_limited", "message": "too many messages; slow down", "id": id, "retryAfterMs": retry}));
            return false;
        }
        true
    }

    /// Counts a bad frame and answers it with `bad_frame`, echoing the frame's `id` when it
    /// had one; the 11th in a minute closes with 4509.
    fn bad_frame(&self, now: Millis, message: &str, id: Option<&Value>) {
        Metrics::inc(&self.app.metrics.bad_frames);
        if now - self.bad_start.get() >= 60_000 {
            self.bad_start.set(now);
            self.bad_count.set(0);
        }
        let n = self.bad_count.get() + 1;
        self.bad_count.set(n);
        if n > MAX_BAD_FRAMES {
            self.close(Disconnect::protocol_abuse());
        } else {
            self.error("bad_frame", message, id);
        }
    }

    async fn read(&self, stream: &mut Socket) -> End {
        loop {
            let msg = match stream.next().await {
                None => return End::Dropped,
                Some(Err(tungstenite::Error::Capacity(_))) => {
                    self.close(Disconnect::too_large());
                    return std::future::pending().await;
                }
                Some(Err(_)) => return End::Dropped,
                Some(Ok(m)) => m,
            };
            let now = now_ms();
            self.seen(now);
            if self.live.outbox.closing().is_some() {
                // Closing: only the client's close frame matters now.
                if let Message::Close(f) = msg {
                    return End::ClientClosed(f.map(|f| u16::from(f.code)));
                }
                continue;
            }
            match msg {
                Message::Text(text) => {
                    Metrics::inc(&self.app.metrics.frames_in);
                    self.on_text(now, &text);
                }
                Message::Binary(_) => {
                    Metrics::inc(&self.app.metrics.frames_in);
                    if self.admit(now, None) {
                        self.bad_frame(
                            now,
                            "binary frames are not part of the protocol; send JSON text",
                            None,
                        );
                    }
                }
                Message::Close(f) => return End::ClientClosed(f.map(|f| u16::from(f.code))),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn on_text(&self, now: Millis, text: &str) {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(_) => {
                if self.admit(now, None) {
                    self.bad_frame(now, "not a JSON object with a string `type`", None);
                }
                return;
            }
        };
        let id = frame.id.as_ref();
        if !self.admit(now, id) {
            return;
        }
        let ack = |id: Option<&Value>| {
            if let Some(id) = id {
                self.send(json!({"type": "ack", "id": id}));
            }
        };
        match frame.kind.as_str() {
            "ping" => self.send(json!({"type": "pong", "id": id})),
            "ack" => match frame.seq {
                Some(seq) => {
                    self.app.registry.ack(&self.live.id(), seq);
                    ack(id);
                }
                None => self.bad_frame(now, "ack needs a numeric `seq`", id),
            },
            "refresh" => self.refresh(frame.token.as_deref(), id),
            "session.update" => match frame.updates {
                Some(updates @ Value::Object(_)) => self.session_update(&updates, id),
                _ => self.bad_frame(now, "session.update needs an `updates` object", id),
            },
            "auth" => self.error(
                "already_authenticated",
                "this connection is already authenticated",
                id,
            ),
            _ => self.bad_frame(now, "unknown frame type", id),
        }
    }

    fn refresh(&self, token: Option<&str>, id: Option<&Value>) {
        let Some(token) = token else {
            return self.error("bad_frame", "refresh needs a `token`", id);
        };
        let conn = self.live.id();
        let Some((user, _)) = self.app.registry.identity(&conn) else {
            return;
        };
        match self.app.auth.verify_jwt(token) {
            Ok(v) if v.user.id == user => {
                if let Some(info) = self
                    .app
                    .registry
                    .extend_ttl(&conn, self.app.config.ttl_seconds)
                {
                    self.send(
                        json!({"type": "refreshed", "expiresAt": info["expiresAt"], "id": id}),
                    );
                    if let Some(id) = id {
                        self.send(json!({"type": "ack", "id": id}));
                    }
                }
            }
            Ok(_) => self.error("unauthorized", "the new token is for another user", id),
            Err(e) => self.error("unauthorized", e.reason(), id),
        }
    }

    fn session_update(&self, updates: &Value, id: Option<&Value>) {
        let conn = self.live.id();
        let Some((_, session)) = self.app.registry.identity(&conn) else {
            return;
        };
        let Some(sid) = session else {
            return self.error(
                "no_session",
                "this connection is not linked to a session",
                id,
            );
        };
        match self.app.sessions.update(
            &sid,
            Some(updates),
            None,
            Source::WebSocket,
            Some(conn.to_string()),
        ) {
            Ok(_) => {
                // Durable before the ack; the ack is queued after the commit.
                let live = self.live.clone();
                let store = self.app.store.flusher.clone();
                let id = id.cloned();
                tokio::spawn(async move {
                    let ok = store.commit().await.is_ok();
                    if let Some(id) = id {
                        let frame = if ok {
                            json!({"type": "ack", "id": id})
                        } else {
                            json!({"type": "error", "code": "internal", "message": "the store refused the write", "id": id})
                        };
                        live.outbox.push_text(frame.to_string());
                    }
                });
            }
            Err(crate::sessions::SessionError::Unknown) => {
                self.error("session_ended", "the session no longer exists", id)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store a session update");
                self.error("internal", "the store refused the write", id)
            }
        }
    }

    /// Pings every interval; closes with 4012 after two intervals without a sign of life.
    async fn heartbeat(&self) -> End {
        let every = Duration::from_millis(self.app.config.heartbeat_interval_ms);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let silent = now_ms() - self.last_seen.get();
            if silent > 2 * self.app.config.heartbeat_interval_ms as i64 {
                self.close(Disconnect::no_heartbeat());
            } else {
                self.live.outbox.push(Message::Ping(Default::default()));
            }
        }
    }
}
