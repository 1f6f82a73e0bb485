//! The SSE transport: `GET /sse`, one connection as a `text/event-stream`.
//!
//! Same credentials as `/ws` (never a first frame: an event stream has no client frames),
//! registered with connectionType `sse`. Every server frame becomes an event named for its
//! `type`, with `id: <connectionId>:<seq>` where it has a seq; heartbeats are SSE comments.
//! `Last-Event-ID` resumes like a WebSocket resume: the reconnecting browser cannot add a
//! resume token, so the credential's user owning that connection is what authorizes it.
//!
//! The connection's outbox writes into a small [`Pipe`] that the response body reads. When
//! the client stops reading, the body stops being polled, the pipe fills, the outbox's
//! backlog grows past `outbound_queue_bytes`, and the connection closes as a slow consumer
//! (4010, Detached) exactly as a WebSocket does; when the client goes away, the body is
//! dropped and the connection is Detached at once. A stream that ends while its client does
//! not read (the 4010 above, or any close) cannot end by itself: the body is read only as the
//! client reads. After [`CLOSE_WAIT`] the HTTP connection is dropped instead
//! ([`crate::transport::ConnAbort`]), so a client that stopped reading holds nothing.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use uuid::Uuid;
use warp::http::{header, HeaderMap, HeaderValue, Response};

use crate::error::ApiError;
use crate::hub::{Handle, Head, Out, Outbox, Transport};
use crate::model::ConnType;
use crate::node::{Attached, Node, ResumeRequest};
use crate::protocol::{CloseCode, Disconnect};
use crate::sync::lock;
use crate::transport::ConnAbort;

/// Bytes the pipe holds for the response body; past it, the outbox queues.
const PIPE_BYTES: usize = 64 * 1024;
/// How long a closing stream may take to get its last frames out.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The answer to `GET /sse`: an event stream, or a JSON refusal.
pub enum Reply {
    Stream(SseBody),
    Refused(ApiError),
}

impl Reply {
    /// The response, with `body` made from the stream or the refusal's JSON.
    pub fn into_response<B>(self, body: impl FnOnce(Result<SseBody, Bytes>) -> B) -> Response<B> {
        match self {
            Reply::Stream(s) => {
                let mut r = Response::new(body(Ok(s)));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            }
            Reply::Refused(e) => {
                let mut r = Response::new(body(Err(Bytes::from(e.body().to_string()))));
                *r.status_mut() = e.status;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
        }
    }
}

pub async fn handle(
    node: Arc<Node>,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<SocketAddr>,
    abort: ConnAbort,
) -> Reply {
    if !node.is_ready() {
        return Reply::Refused(ApiError::refused(&Disconnect::new(
            CloseCode::ServerFull,
            "starting up; retry shortly",
        )));
    }
    if let Err((code, _)) = node.admit_write() {
        return Reply::Refused(ApiError::store_refused_connect(code));
    }
    let mut hs = super::handshake(&node.config, headers, query, peer);
    let Some(cred) = hs.credential.take() else {
        return Reply::Refused(ApiError::refused(&Disconnect::unauthorized(
            "missing credential",
        )));
    };
    let resume = hs.resume.take().or_else(|| {
        let (conn, seq) = hs.last_event_id.as_deref()?.rsplit_once(':')?;
        Some(ResumeRequest {
            connection_id: conn.to_string(),
            token: String::new(),
            last_seq: seq.parse().ok(),
        })
    });
    let trusted_resume = resume.as_ref().is_some_and(|r| r.token.is_empty());
    let pipe = Arc::new(Pipe::default());
    let handle = Handle::new(
        Outbox::new(
            Box::new(SseTransport { pipe: pipe.clone() }),
            node.config.outbound_queue_bytes,
            node.metrics.clone(),
        ),
        node.config.messages_per_minute,
    );
    let attached = match node
        .connect(&hs, &cred, resume, trusted_resume, &handle)
        .await
    {
        Ok(a) => a,
        Err(d) => {
            handle.outbox.shut();
            return Reply::Refused(ApiError::refused(&d));
        }
    };
    let guard = node.tasks.enter();
    let body = SseBody { pipe: pipe.clone() };
    tokio::spawn(async move {
        run(&node, &handle, &attached, &pipe).await;
        drop(guard);
        // The response ends when the body has been read to its end; a client that does not
        // read would keep the connection open: it gets CLOSE_WAIT, then the connection goes.
        if tokio::time::timeout(CLOSE_WAIT, pipe.gone()).await.is_err() {
            tracing::debug!(connection = %attached.id, "dropping the connection of an SSE client that does not read");
            abort.abort();
        }
    });
    Reply::Stream(body)
}

/// The connection's life: the writer, the heartbeat, and the reader of the body going away.
async fn run(node: &Node, handle: &Arc<Handle>, attached: &Attached, pipe: &Pipe) {
    let every = Duration::from_millis(node.config.heartbeat_interval_ms);
    let heartbeat = async {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            handle.outbox.ping();
        }
    };
    let overflowed = async {
        loop {
            if handle.outbox.closed().await.code == CloseCode::SlowConsumer {
                return;
            }
            std::future::pending::<()>().await;
        }
    };
    let end: Option<Disconnect> = tokio::select! {
        r = handle.outbox.write_out() => r.ok(),
        () = pipe.gone() => None,
        () = heartbeat => None,
        () = overflowed => Some(Disconnect::slow_consumer()),
    };
    if end.is_some() {
        // The `disconnect` frame goes out after what was queued, if the reader takes it.
        let _ = tokio::time::timeout(CLOSE_WAIT, handle.outbox.write_out()).await;
    }
    handle.outbox.shut();
    let (fate, code) = match &end {
        // The client went away (the response stream was dropped): like a socket lost
        // without a close frame, the connection stays resumable.
        None => (crate::protocol::Fate::Detach, None),
        Some(d) => (d.fate(), Some(d.code.as_u16())),
    };
    node.finish(&attached.user, handle, fate, code, None).await;
}

/// Bytes between the outbox and the response body.
#[derive(Default)]
pub struct Pipe {
    state: Mutex<PipeState>,
    gone: Notify,
}

#[derive(Default)]
struct PipeState {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// The outbox is done: the body ends once it has read what is left.
    closed: bool,
    /// The body was dropped: the client went away.
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Pipe {
    /// Waits until the body is dropped: the client went away, or hyper read it to its end.
    async fn gone(&self) {
        loop {
            let notified = self.gone.notified();
            if lock(&self.state).reader_gone {
                return;
            }
            notified.await;
        }
    }
}

/// The response body of an SSE connection.
pub struct SseBody {
    pipe: Arc<Pipe>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut st = lock(&self.pipe.state);
        if let Some(chunk) = st.chunks.pop_front() {
            st.bytes -= chunk.len();
            if let Some(w) = st.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let mut st = lock(&self.pipe.state);
        st.reader_gone = true;
        if let Some(w) = st.writer.take() {
            w.wake();
        }
        drop(st);
        self.pipe.gone.notify_waiters();
    }
}

struct SseTransport {
    pipe: Arc<Pipe>,
}

impl Transport for SseTransport {
    fn kind(&self) -> ConnType {
        ConnType::Sse
    }

    fn frame(&self, out: &Out<'_>, connection: &Uuid, head: &mut Head) -> &'static [u8] {
        match *out {
            Out::Text { kind, seq, .. } => {
                let _ = writeln!(head, "event: {kind}");
                if let Some(seq) = seq {
                    let _ = writeln!(head, "id: {connection}:{seq}");
                }
                let _ = head.write_all(b"data: ");
                // Frames are compact JSON: one line.
                b"\n\n"
            }
            Out::Ping => {
                let _ = head.write_all(b":heartbeat\n\n");
                &[]
            }
            Out::Pong(_) | Out::Close { .. } | Out::Raw(_) => &[],
        }
    }

    fn try_write(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut st = lock(&self.pipe.state);
        if st.reader_gone || st.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = PIPE_BYTES.saturating_sub(st.bytes);
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut chunk = Vec::with_capacity(room.min(parts.iter().map(|p| p.len()).sum()));
        for p in parts {
            let n = p.len().min(room - chunk.len());
            chunk.extend_from_slice(&p[..n]);
            if chunk.len() == room {
                break;
            }
        }
        let n = chunk.len();
        if n > 0 {
            st.bytes += n;
            st.chunks.push_back(Bytes::from(chunk));
            if let Some(w) = st.reader.take() {
                w.wake();
            }
        }
        Ok(n)
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.pipe.state);
        if st.reader_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if st.bytes < PIPE_BYTES {
            return Poll::Ready(Ok(()));
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn shut(&mut self) {
        let mut st = lock(&self.pipe.state);
        st.closed = true;
        if let Some(w) = st.reader.take() {
            w.wake();
        }
    }
}
