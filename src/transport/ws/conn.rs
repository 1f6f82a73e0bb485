//! One WebSocket connection's state machine, from the open socket to its end.
//!
//! It is generic over the socket: any `Stream` of tungstenite messages that is also a
//! `Sink` (the real `WebSocketStream`, or channels in a test) for what comes in, and the
//! connection's [`Handle`] for what goes out. [`establish`] authenticates (from the request,
//! or from a first `auth` frame within `auth_timeout_ms`) and hands the lifecycle to the
//! node; [`serve`] then runs three things side by side in one `select!`: the reader (client
//! frames), the writer (what the socket did not take at once, and the close) and the
//! heartbeat. Anyone who wants the connection closed asks the outbox; the writer sends
//! `disconnect` and the close frame, and the node applies the close's fate.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::{ErrorBody, ErrorCode};
use crate::hub::Handle;
use crate::listener::Pending;
use crate::metrics::Metrics;
use crate::node::{Activity, Attached, Handshake, Node, Presented, ResumeRequest};
use crate::protocol::{BadFrame, ClientFrame, CloseCode, Disconnect, Fate, ServerFrame};
use crate::time::{now_ms, Millis};

/// How long a closing socket waits for the client's close frame before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Bad frames allowed per minute before 4509.
const MAX_BAD_FRAMES: u32 = 10;
/// How often in-memory activity is handed to the store (never per frame).
const TOUCH_EVERY_MS: i64 = 5000;

type WsResult = Result<Message, tungstenite::Error>;

/// Sends `disconnect` and a close frame on a socket that has no writer task yet, then waits
/// briefly for the client's close so the socket ends cleanly.
pub async fn refuse<S>(node: &Node, ws: &mut S, handle: &Handle, d: Disconnect)
where
    S: Stream<Item = WsResult> + Unpin,
{
    node.metrics.disconnect(d.code.as_u16());
    handle.outbox.close(d);
    if let Ok(Ok(_)) = tokio::time::timeout(CLOSE_WAIT, handle.outbox.write_out()).await {
        drain(ws).await;
    }
    handle.outbox.shut();
}

/// The close a client's read error calls for: RFC 6455 §7.1.7 has a broken frame fail the
/// connection with 1002 (bad framing: an unmasked frame, reserved bits or opcodes, a control
/// frame over 125 bytes or fragmented, a continuation with nothing to continue) or 1007
/// (a text frame that is not UTF-8). None when the socket itself went away: that is a lost
/// socket, not a violation.
fn violation(e: &tungstenite::Error) -> Option<Disconnect> {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(p) => Some(Disconnect::new(
            CloseCode::ProtocolError,
            &format!("protocol error: {p}"),
        )),
        tungstenite::Error::Utf8(_) => Some(Disconnect::new(
            CloseCode::InvalidData,
            "a text frame that is not UTF-8",
        )),
        _ => None,
    }
}

/// Reads until the client's close frame (or the socket ends, or `CLOSE_WAIT` passes).
async fn drain<S>(stream: &mut S)
where
    S: Stream<Item = WsResult> + Unpin,
{
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
async fn first_frame_auth<S>(
    node: &Node,
    ws: &mut S,
) -> Result<(Presented, Option<ResumeRequest>), Disconnect>
where
    S: Stream<Item = WsResult> + Unpin,
{
    let timeout = Duration::from_millis(node.config.auth_timeout_ms);
    let frame = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(Some(t)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                // max_message_bytes holds before authentication too (SPEC §3: 1009).
                Some(Err(tungstenite::Error::Capacity(_))) => return Err(Disconnect::too_large()),
                Some(Err(e)) => return violation(&e).map_or(Ok(None), Err),
                _ => return Ok(None),
            }
        }
    })
    .await
    .map_err(|_| Disconnect::auth_timeout())??;
    let expected = || Disconnect::unauthorized("expected an auth frame");
    let text = frame.ok_or_else(expected)?;
    let Ok(parsed) = ClientFrame::parse(&text) else {
        return Err(expected());
    };
    let ClientFrame::Auth {
        token,
        session_id,
        resume,
    } = parsed.frame
    else {
        return Err(expected());
    };
    let cred = match (token, session_id) {
        (Some(t), _) => Presented::Token(t),
        (None, Some(s)) => Presented::Session(s),
        (None, None) => {
            return Err(Disconnect::unauthorized(
                "auth frame without token or sessionId",
            ))
        }
    };
    let resume = resume.map(|r| ResumeRequest {
        connection_id: r.connection_id,
        token: r.token,
        last_seq: r.last_seq,
    });
    Ok((cred, resume))
}

/// Authenticates and hands the connection to the node, which sends `welcome`. Returns who
/// it is, or None once it has refused and closed the socket.
///
/// It runs boxed inside the connection's task, which goes on to [`serve`]: a task's memory is
/// the largest state of its future, and the handshake's (credential, registration, timers
/// for the auth frame) would otherwise stay reserved for the connection's whole life. (Two
/// tasks, one for each, cost a spawn more per connection for the same memory.)
pub async fn establish<S>(
    node: &Node,
    ws: &mut S,
    handle: &Arc<Handle>,
    mut hs: Handshake,
    pending: Option<Pending>,
) -> Option<Attached>
where
    S: Stream<Item = WsResult> + Unpin,
{
    // Until it has authenticated, the connection counts against `max_pending_connections`,
    // and the listener may close it (1013) to make room.
    let (cred, resume) = match hs.credential.take() {
        Some(c) => (c, hs.resume.take()),
        None => match Pending::guard(&pending, first_frame_auth(node, ws)).await {
            Ok((c, r)) => (c, r.or(hs.resume.take())),
            Err(d) => {
                Metrics::inc(&node.metrics.auth_failures);
                refuse(node, ws, handle, d).await;
                return None;
            }
        },
    };
    let connected = node.connect(&hs, &cred, resume, false, handle).await;
    drop(pending);
    match connected {
        Ok(a) => Some(a),
        Err(d) => {
            refuse(node, ws, handle, d).await;
            None
        }
    }
}

/// The connection's working life: reader, writer and heartbeat, until it closes. `keep` is
/// held until the end (the node's count of running connection tasks).
///
/// A plain function around an `async move` block, so that its arguments are stored in the
/// task once: an `async fn` keeps each argument twice (as the argument and as the local it
/// becomes), and this future is what every idle connection keeps.
#[allow(clippy::manual_async_fn)]
pub fn serve<S, K>(
    node: Arc<Node>,
    mut ws: S,
    handle: Arc<Handle>,
    attached: Attached,
    keep: K,
) -> impl std::future::Future<Output = ()> + Send
where
    S: Stream<Item = WsResult> + Sink<Message> + Unpin + Send,
    K: Send,
{
    async move {
        let conn = ConnTask::new(&node, &handle, &attached);
        let end = tokio::select! {
            end = conn.read(&mut ws) => end,
            end = write(&handle) => end,
            end = conn.heartbeat() => end,
            () = overflowed(&handle) => End::Server(Disconnect::slow_consumer()),
        };
        let (fate, code) = match end {
            End::ClientClosed(code) => {
                // Sends the reply tungstenite queued when it read the client's close (a
                // `send` of our own close would be refused in that state).
                let _ = tokio::time::timeout(CLOSE_WAIT, SinkExt::close(&mut ws)).await;
                (Fate::Remove, code)
            }
            End::Dropped => (Fate::Detach, None),
            End::Server(d) => {
                if d.code == CloseCode::SlowConsumer {
                    // The backlog is stuck on a socket nobody reads: try once, briefly, to
                    // get the close out after it.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), handle.outbox.write_out())
                            .await;
                } else {
                    drain(&mut ws).await;
                }
                (d.fate(), Some(d.code.as_u16()))
            }
        };
        handle.outbox.shut();
        Box::pin(node.finish(&attached.user, &handle, fate, code, Some(conn.activity()))).await;
        drop(keep);
    }
}

enum End {
    /// The client sent a close frame (its code, if any).
    ClientClosed(Option<u16>),
    /// The socket ended or failed without a close frame.
    Dropped,
    /// We closed it: `disconnect` and the close frame were sent.
    Server(Disconnect),
}

async fn overflowed(handle: &Handle) {
    loop {
        if handle.outbox.closed().await.code == CloseCode::SlowConsumer {
            return;
        }
        // Another close is under way; the writer handles it.
        std::future::pending::<()>().await;
    }
}

/// Sends what the socket did not take at once, until a close has been sent.
async fn write(handle: &Handle) -> End {
    match handle.outbox.write_out().await {
        Ok(d) => End::Server(d),
        Err(_) => End::Dropped,
    }
}

/// The reader's and heartbeat's state. Both run inside one task; the fields are relaxed
/// atomics only because a task's future must be `Send`.
struct ConnTask<'a> {
    node: &'a Node,
    handle: &'a Arc<Handle>,
    conn: &'a Attached,
    last_seen: AtomicI64,
    window_start: AtomicI64,
    window_count: AtomicU32,
    bad_start: AtomicI64,
    bad_count: AtomicU32,
    last_touch: AtomicI64,
}

impl<'a> ConnTask<'a> {
    /// Starts from the rate-limit window the record carries: a resumed connection keeps
    /// what it had used.
    fn new(node: &'a Node, handle: &'a Arc<Handle>, conn: &'a Attached) -> Self {
        let now = now_ms();
        ConnTask {
            node,
            handle,
            conn,
            last_seen: AtomicI64::new(now),
            window_start: AtomicI64::new(conn.window_start),
            window_count: AtomicU32::new(conn.window_count),
            bad_start: AtomicI64::new(now),
            bad_count: AtomicU32::new(0),
            last_touch: AtomicI64::new(now),
        }
    }

    fn send(&self, kind: &str, f: &ServerFrame<'_>) {
        self.handle.outbox.push_text(kind, &f.to_text());
    }

    fn error(&self, code: ErrorCode, message: &str, id: Option<&RawValue>) {
        self.send(
            "error",
            &ServerFrame::Error(ErrorBody::frame(code, message, id)),
        );
    }

    fn ack(&self, id: Option<&RawValue>) {
        if let Some(id) = id {
            self.send("ack", &ServerFrame::Ack { id });
        }
    }

    fn close(&self, d: Disconnect) {
        self.handle.outbox.close(d);
    }

    fn activity(&self) -> Activity {
        Activity {
            last_seen: self.last_seen.load(Relaxed),
            window_start: self.window_start.load(Relaxed),
            window_count: self.window_count.load(Relaxed),
        }
    }

    async fn seen(&self, now: Millis) {
        self.last_seen.store(now, Relaxed);
        if now - self.last_touch.load(Relaxed) >= TOUCH_EVERY_MS {
            self.last_touch.store(now, Relaxed);
            // Boxed: awaited futures are part of the connection task's state for its whole
            // life, and a rare one should cost a pointer there, not its full size.
            Box::pin(self.node.touch(&self.handle.id(), self.activity())).await;
        }
    }

    /// Counts a client frame against the rate limit. Returns false if it is refused.
    fn admit(&self, now: Millis, id: Option<&RawValue>) -> bool {
        if now - self.window_start.load(Relaxed) >= 60_000 {
            self.window_start.store(now, Relaxed);
            self.window_count.store(0, Relaxed);
        }
        let n = self.window_count.load(Relaxed) + 1;
        self.window_count.store(n, Relaxed);
        let limit = self.handle.messages_per_minute();
        if n > limit.saturating_mul(2) {
            self.close(Disconnect::rate_abuse());
            return false;
        }
        if n > limit {
            Metrics::inc(&self.node.metrics.rate_limited);
            if n == limit + 1 {
                self.node
                    .rate_limited(&self.handle.id(), &self.conn.user, limit);
            }
            let retry = (self.window_start.load(Relaxed) + 60_000 - now).max(0);
            let mut body =
                ErrorBody::frame(ErrorCode::RateLimited, "too many messages; slow down", id);
            body.retry_after_ms = Some(retry);
            self.send("error", &ServerFrame::Error(body));
            return false;
        }
        true
    }

    /// Counts a bad frame and answers it with `bad_frame`, echoing the frame's `id` when it
    /// had one; the 11th in a minute closes with 4509.
    fn bad_frame(&self, now: Millis, message: &str, id: Option<&RawValue>) {
        Metrics::inc(&self.node.metrics.bad_frames);
        if now - self.bad_start.load(Relaxed) >= 60_000 {
            self.bad_start.store(now, Relaxed);
            self.bad_count.store(0, Relaxed);
        }
        let n = self.bad_count.load(Relaxed) + 1;
        self.bad_count.store(n, Relaxed);
        if n > MAX_BAD_FRAMES {
            self.close(Disconnect::protocol_abuse());
        } else {
            self.error(ErrorCode::BadFrame, message, id);
        }
    }

    async fn read<S>(&self, stream: &mut S) -> End
    where
        S: Stream<Item = WsResult> + Unpin,
    {
        loop {
            let msg = match stream.next().await {
                None => return End::Dropped,
                Some(Err(tungstenite::Error::Capacity(_))) => {
                    self.close(Disconnect::too_large());
                    return std::future::pending().await;
                }
                Some(Err(e)) => match violation(&e) {
                    // The writer sends the close; nothing more is read from a broken stream.
                    Some(d) => {
                        Metrics::inc(&self.node.metrics.bad_frames);
                        self.close(d);
                        return std::future::pending().await;
                    }
                    None => return End::Dropped,
                },
                Some(Ok(m)) => m,
            };
            let now = now_ms();
            self.seen(now).await;
            if self.handle.outbox.closing().is_some() {
                // Closing: only the client's close frame matters now.
                if let Message::Close(f) = msg {
                    return End::ClientClosed(f.map(|f| u16::from(f.code)));
                }
                continue;
            }
            match msg {
                Message::Text(text) => {
                    Metrics::inc(&self.node.metrics.frames_in);
                    // Boxed for the same reason as in `seen`: a frame's handling (a session
                    // update, a refresh) is the largest state the task would otherwise keep.
                    Box::pin(self.on_text(now, &text)).await;
                }
                Message::Binary(_) => {
                    Metrics::inc(&self.node.metrics.frames_in);
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

    async fn on_text(&self, now: Millis, text: &str) {
        let parsed = match ClientFrame::parse(text) {
            Ok(p) => p,
            Err(BadFrame { message, id }) => {
                if self.admit(now, id.as_deref()) {
                    self.bad_frame(now, message, id.as_deref());
                }
                return;
            }
        };
        let id = parsed.id.as_deref();
        if !self.admit(now, id) {
            return;
        }
        let conn = self.handle.id();
        match parsed.frame {
            ClientFrame::Ping => self.send("pong", &ServerFrame::Pong { id }),
            ClientFrame::Ack { seq } => {
                self.node.ack(&conn, seq).await;
                self.ack(id);
            }
            ClientFrame::Refresh { token } => {
                match self.node.refresh(self.conn, &conn, &token).await {
                    Ok(expires_at) => {
                        self.send("refreshed", &ServerFrame::Refreshed { expires_at, id });
                        self.ack(id);
                    }
                    Err((code, message)) => self.error(code, &message, id),
                }
            }
            ClientFrame::SessionUpdate { updates } => {
                // Durable before the ack.
                match self.node.session_update(self.conn, &conn, &updates).await {
                    Ok(()) => self.ack(id),
                    Err((code, message)) => self.error(code, &message, id),
                }
            }
            ClientFrame::Auth { .. } => self.error(
                ErrorCode::AlreadyAuthenticated,
                "this connection is already authenticated",
                id,
            ),
        }
    }

    /// Pings every interval; closes with 4012 after two intervals without a sign of life.
    async fn heartbeat(&self) -> End {
        let every = Duration::from_millis(self.node.config.heartbeat_interval_ms);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let silent = now_ms() - self.last_seen.load(Relaxed);
            if silent > 2 * self.node.config.heartbeat_interval_ms as i64 {
                self.close(Disconnect::no_heartbeat());
            } else {
                self.handle.outbox.ping();
            }
        }
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
