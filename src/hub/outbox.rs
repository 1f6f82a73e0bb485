//! One connection's bounded outbound queue, over its [`Transport`].
//!
//! Producers (a fan-out, the session reactor, the connection's own reader) push frames
//! without ever waiting. A push frames the message for its wire and writes it to the socket
//! at once, in the pusher's own thread, as long as nothing is waiting to go out before it:
//! one non-blocking write, no task woken. Only what the socket does not take is queued, and
//! the connection's writer task ([`Outbox::write_out`]) sends it when the socket has room.
//! This is what makes a fan-out to thousands of sockets cheap: one system call per socket,
//! not a wake-up, a poll and a system call.
//!
//! A push that would take the backlog past `outbound_queue_bytes` marks the connection a slow
//! consumer instead, and its writer closes it with 4010. So one client that stops reading
//! costs at most its own queue and never slows anyone else; what it missed is in its replay
//! buffer for the resume.
//!
//! Frames that carry a `seq` go through a gate: until the connection is opened (its
//! `welcome` and replay sent, [`Outbox::open`]) they are parked, and once open a frame whose
//! seq was already sent is dropped. So a delivery that races the connection's activation,
//! or a replay after a lost subscription, never reaches the client twice or out of order.
//!
//! The state is a std `Mutex`: every critical section is a push, a non-blocking write or a
//! drain, never held across an `.await`. Writes to one socket happen under it, so frames go
//! out whole and in the order they were pushed.

use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::ConnType;
use crate::protocol::{Disconnect, FrameTemplate};
use crate::sync::lock;

/// Queued bytes kept allocated once a backlog has gone out; a larger buffer is released.
const KEEP_CAPACITY: usize = 4096;

/// One frame as the outbox hands it to a transport for framing.
#[derive(Debug, Clone, Copy)]
pub enum Out<'a> {
    /// A JSON text frame: its `type` (the SSE event name) and its `seq`, if it has one.
    Text {
        kind: &'a str,
        seq: Option<u64>,
        text: &'a str,
    },
    /// A keep-alive (a WebSocket ping, an SSE comment).
    Ping,
    Pong(&'a [u8]),
    /// The close after the `disconnect` frame.
    Close {
        code: u16,
        reason: &'a str,
    },
    /// Bytes already framed for the wire (what tungstenite writes itself on a WebSocket).
    Raw(&'a [u8]),
}

/// The bytes a transport puts around a frame's payload.
pub struct Head {
    buf: [u8; 128],
    len: usize,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl Head {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl io::Write for Head {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        if n < b.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How one connection's frames reach its peer: one implementation per wire (WebSocket over
/// TCP, an SSE response body). The outbox calls it under its lock, one caller at a time.
pub trait Transport: Send + 'static {
    fn kind(&self) -> ConnType;

    /// Frames `out` for the wire: what goes before its payload into `head`; returns what
    /// goes after it. The payload is `text` for a text frame, the bytes of a pong, the
    /// raw bytes, or nothing.
    fn frame(&self, out: &Out<'_>, connection: &Uuid, head: &mut Head) -> &'static [u8];

    /// Writes as much of `parts` as the peer takes now, without waiting
    /// (`WouldBlock` when it takes nothing).
    fn try_write(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Ready when the peer takes bytes again.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The connection is over: close the write side now.
    fn shut(&mut self);
}

pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the one writer (something to send or a close). `notify_one` keeps a permit
    /// when the writer is busy, so no wake-up is lost, and a push wakes nobody else.
    ready: Notify,
    /// Wakes whoever waits for a close ([`Outbox::closed`]).
    closing: Notify,
    limit: usize,
    kind: ConnType,
    metrics: Arc<Metrics>,
}

struct Inner {
    /// The connection's current id (an operator's migrate may change it under a live socket).
    id: Uuid,
    /// None once the connection task has ended (the socket is closed).
    transport: Option<Box<dyn Transport>>,
    /// Framed bytes the socket has not taken yet; they go out before anything new.
    pending: Vec<u8>,
    close: Option<Disconnect>,
    /// The `disconnect` and close frames of `close` are in `pending`.
    close_framed: bool,
    /// The socket failed: the writer ends the connection as dropped.
    failed: bool,
    /// Bytes at the front of `pending` that the replay put there: they do not count
    /// against the queue limit, so a resume whose backlog is larger than the queue is paced
    /// by the socket instead of closed as a slow consumer.
    credit: usize,
    gate: Gate,
}

/// The seq gate (see the module docs).
enum Gate {
    /// Not opened yet: seq frames wait here, in the order pushed.
    Parked(Vec<(u64, String)>, usize),
    /// Opened: the highest seq sent.
    Open(u64),
}

impl Outbox {
    pub fn new(transport: Box<dyn Transport>, limit: usize, metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            kind: transport.kind(),
            inner: Mutex::new(Inner {
                id: Uuid::nil(),
                transport: Some(transport),
                pending: Vec::new(),
                close: None,
                close_framed: false,
                failed: false,
                credit: 0,
                gate: Gate::Parked(Vec::new(), 0),
            }),
            ready: Notify::new(),
            closing: Notify::new(),
            limit,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub fn kind(&self) -> ConnType {
        self.kind
    }

    pub fn id(&self) -> Uuid {
        self.lock().id
    }

    pub fn set_id(&self, id: Uuid) {
        self.lock().id = id;
    }

    /// Sends a frame without a seq (`pong`, `ack`, `error`, …). Returns false if the
    /// connection is closing (the frame is dropped: anything that must survive is in the
    /// replay buffer) or the queue overflowed.
    pub fn push_text(&self, kind: &str, text: &str) -> bool {
        self.send(Out::Text {
            kind,
            seq: None,
            text,
        })
    }

    /// A keep-alive ping.
    pub fn ping(&self) -> bool {
        self.send(Out::Ping)
    }

    /// Bytes tungstenite itself writes on a WebSocket (the pong to a client's ping, the reply
    /// to a client's close): already framed, sent in turn with everything else.
    pub fn push_raw(&self, bytes: &[u8]) {
        self.send(Out::Raw(bytes));
    }

    fn send(&self, out: Out<'_>) -> bool {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return false;
        }
        let was_idle = inner.pending.is_empty();
        let fits = inner.send(&out, self.limit, &self.metrics);
        self.after_send(&mut inner, was_idle, fits)
    }

    /// Wakes the writer when a push left bytes the socket did not take, and turns a push
    /// that did not fit into the 4010 close.
    fn after_send(&self, inner: &mut Inner, was_idle: bool, fits: bool) -> bool {
        if !fits {
            self.overflow(inner);
        } else if was_idle && !inner.pending.is_empty() {
            self.ready.notify_one();
        }
        fits
    }

    /// Sends frame `seq` of a delivery through the gate. Returns whether the client has (or
    /// will have, once opened) the frame: false if it was closing or overflowed.
    pub fn push_seq(&self, template: &FrameTemplate, seq: u64) -> bool {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return false;
        }
        let was_idle = inner.pending.is_empty();
        let fits = match &mut inner.gate {
            Gate::Open(last) if seq <= *last => return true,
            Gate::Open(last) => {
                *last = seq;
                let text = template.render(seq);
                inner.send(
                    &Out::Text {
                        kind: template.kind.as_str(),
                        seq: Some(seq),
                        text: &text,
                    },
                    self.limit,
                    &self.metrics,
                )
            }
            Gate::Parked(frames, bytes) => {
                let text = template.render(seq);
                *bytes += text.len();
                let fits = *bytes <= self.limit;
                if fits {
                    frames.push((seq, text));
                }
                fits
            }
        };
        self.after_send(&mut inner, was_idle, fits)
    }

    /// Sends a kept frame (rendered already) through the gate: dropped if the client has
    /// it, in order otherwise.
    pub fn push_rendered(&self, seq: u64, text: &str) -> bool {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return false;
        }
        let was_idle = inner.pending.is_empty();
        let fits = match &mut inner.gate {
            Gate::Open(last) if seq <= *last => return true,
            Gate::Open(last) => {
                *last = seq;
                inner.send(
                    &Out::Text {
                        kind: kind_of_frame(text).unwrap_or("message"),
                        seq: Some(seq),
                        text,
                    },
                    self.limit,
                    &self.metrics,
                )
            }
            Gate::Parked(frames, bytes) => {
                *bytes += text.len();
                frames.push((seq, text.to_string()));
                *bytes <= self.limit
            }
        };
        self.after_send(&mut inner, was_idle, fits)
    }

    /// The highest seq sent, once the connection is open.
    pub fn last_seq(&self) -> Option<u64> {
        match self.lock().gate {
            Gate::Open(last) => Some(last),
            Gate::Parked(..) => None,
        }
    }

    /// Opens the gate: sends `welcome`, then `replay` (the kept frames the client is
    /// owed, in seq order), then whatever was parked meanwhile that is newer than
    /// `last_seq` (the connection's seq when the replay was read). Returns false if the
    /// connection is closing.
    pub fn open(&self, welcome: &str, replay: &[(u64, String)], last_seq: u64) -> bool {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return false;
        }
        let was_idle = inner.pending.is_empty();
        let parked = match std::mem::replace(&mut inner.gate, Gate::Open(last_seq)) {
            Gate::Parked(frames, _) => frames,
            Gate::Open(_) => Vec::new(),
        };
        // The welcome carries the seq the client has everything up to: the one before the
        // first replayed frame (an SSE client resumes from its last event id, and must not
        // skip the replay that follows the welcome).
        let upto = replay.first().map_or(last_seq, |(seq, _)| seq - 1);
        let mut fits = inner.send(
            &Out::Text {
                kind: "welcome",
                seq: Some(upto),
                text: welcome,
            },
            usize::MAX,
            &self.metrics,
        );
        // The replay goes out whatever the queue limit: it is bounded by the replay buffer,
        // and the writer paces it to the socket.
        for (seq, text) in replay {
            fits &= inner.send(
                &Out::Text {
                    kind: kind_of_frame(text).unwrap_or("message"),
                    seq: Some(*seq),
                    text,
                },
                usize::MAX,
                &self.metrics,
            );
        }
        inner.credit = inner.pending.len();
        let mut last = last_seq;
        for (seq, text) in parked {
            if seq <= last {
                continue;
            }
            last = seq;
            fits &= inner.send(
                &Out::Text {
                    kind: kind_of_frame(&text).unwrap_or("message"),
                    seq: Some(seq),
                    text: &text,
                },
                self.limit,
                &self.metrics,
            );
        }
        inner.gate = Gate::Open(last);
        self.after_send(&mut inner, was_idle, fits)
    }

    /// The client stopped reading: close with 4010. The backlog stays (a frame may be half
    /// written), and the writer tries briefly to get the close out after it.
    fn overflow(&self, inner: &mut Inner) {
        if inner.close.is_none() {
            inner.close = Some(Disconnect::slow_consumer());
        }
        self.ready.notify_one();
        self.closing.notify_waiters();
    }

    /// Asks the writer to send `disconnect` and close. The first close wins; returns
    /// whether this one did.
    pub fn close(&self, d: Disconnect) -> bool {
        let mut inner = self.lock();
        let first = inner.close.is_none();
        if first {
            inner.close = Some(d);
        }
        drop(inner);
        self.ready.notify_one();
        self.closing.notify_waiters();
        first
    }

    /// The close asked for, if any.
    pub fn closing(&self) -> Option<Disconnect> {
        self.lock().close.clone()
    }

    /// Waits until a close is asked for.
    pub async fn closed(&self) -> Disconnect {
        loop {
            let notified = self.closing.notified();
            if let Some(d) = self.closing() {
                return d;
            }
            notified.await;
        }
    }

    /// The writer: sends what the socket did not take when it was pushed, waiting for the
    /// socket as long as it takes, until a close is asked for; then sends the `disconnect`
    /// frame and the close and returns the close. An error means the socket is gone.
    ///
    /// There is one writer per outbox: the connection's task.
    pub async fn write_out(&self) -> io::Result<Disconnect> {
        loop {
            let blocked = {
                let mut inner = self.lock();
                if let (Some(d), false) = (inner.close.clone(), inner.close_framed) {
                    inner.close_framed = true;
                    inner.frame_close(&d, &self.metrics);
                }
                inner.write_pending();
                if inner.failed || inner.transport.is_none() {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                match (&inner.close, inner.pending.is_empty()) {
                    (Some(d), true) => return Ok(d.clone()),
                    (_, empty) => !empty,
                }
            };
            if blocked {
                // The socket is full: wait for room. The lock is taken per poll, never held
                // across the wait.
                std::future::poll_fn(|cx| match &mut self.lock().transport {
                    Some(t) => t.poll_write_ready(cx),
                    None => Poll::Ready(Ok(())),
                })
                .await?;
            } else {
                self.ready.notified().await;
            }
        }
    }

    /// Bytes waiting for the socket.
    pub fn backlog(&self) -> usize {
        self.lock().pending.len()
    }

    /// The connection task has ended: closes the write side now rather than whenever the
    /// last reference to the connection goes.
    pub fn shut(&self) {
        let mut inner = self.lock();
        if let Some(mut t) = inner.transport.take() {
            t.shut();
        }
        inner.pending = Vec::new();
        inner.gate = Gate::Open(u64::MAX);
    }
}

/// The `type` of a rendered seq frame (`{"type":"<kind>",…`).
fn kind_of_frame(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("{\"type\":\"")?;
    rest.split_once('"').map(|(k, _)| k)
}

impl Inner {
    /// Frames one message and writes it, or queues what the socket does not take. Returns
    /// false (the frame is dropped whole) if the backlog would pass `limit`.
    fn send(&mut self, out: &Out<'_>, limit: usize, metrics: &Metrics) -> bool {
        let Some(t) = &mut self.transport else {
            // The connection task has ended; nothing is sent on this socket again.
            return false;
        };
        let mut head = Head::default();
        let tail = t.frame(out, &self.id, &mut head);
        let body: &[u8] = match out {
            Out::Text { text, .. } => text.as_bytes(),
            Out::Pong(b) | Out::Raw(b) => b,
            Out::Ping | Out::Close { .. } => &[],
        };
        let parts = [
            IoSlice::new(head.bytes()),
            IoSlice::new(body),
            IoSlice::new(tail),
        ];
        let len = head.len + body.len() + tail.len();
        if len == 0 {
            return true;
        }
        let mut written = 0;
        if self.pending.is_empty() && !self.failed {
            match t.try_write(&parts) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.failed = true,
            }
        }
        if written < len {
            // A frame the socket took part of must be finished, whatever the limit (the
            // backlog then passes it by at most this frame, and the next push overflows).
            if written == 0 && self.pending.len().saturating_sub(self.credit) + len > limit {
                return false;
            }
            let mut skip = written;
            for part in parts.iter() {
                let n = skip.min(part.len());
                self.pending.extend_from_slice(&part[n..]);
                skip -= n;
            }
        }
        metrics.frames_out.fetch_add(1, Relaxed);
        true
    }

    /// Appends `disconnect` and the close frame after whatever is still pending.
    fn frame_close(&mut self, d: &Disconnect, metrics: &Metrics) {
        let text = d.frame();
        // The close goes out even past the limit: it is bounded and it is the last.
        self.send(
            &Out::Text {
                kind: "disconnect",
                seq: None,
                text: &text,
            },
            usize::MAX,
            metrics,
        );
        self.send(
            &Out::Close {
                code: d.code.as_u16(),
                reason: &d.reason,
            },
            usize::MAX,
            metrics,
        );
    }

    /// Writes the backlog as far as the socket takes it.
    fn write_pending(&mut self) {
        let Some(t) = &mut self.transport else { return };
        while !self.pending.is_empty() && !self.failed {
            match t.try_write(&[IoSlice::new(&self.pending)]) {
                Ok(0) => return,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.credit = self.credit.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.failed = true,
            }
        }
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        }
    }
}
