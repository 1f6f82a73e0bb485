//! One connection's bounded outbound queue.
//!
//! Producers (the API, the session reactor, the connection's own reader) push frames without
//! ever waiting: a push that would take the queue past `outbound_queue_bytes` marks the
//! connection a slow consumer instead, and its writer closes it with 4010. So one client that
//! stops reading costs at most its own queue and never slows anyone else. What it missed is
//! in its replay buffer for the resume.
//!
//! A WebSocket's outbox owns the write half of its TCP stream ([`Outbox::wired`]). A push
//! frames the message and writes it to the socket at once, in the pusher's own thread, as
//! long as nothing is waiting to go out before it: one non-blocking `sendmsg`, no task woken.
//! Only what the socket does not take is queued, and the connection's writer task sends it
//! when the socket is writable again. This is what makes a fan-out to thousands of sockets
//! cheap: it is one system call per socket, not a wake-up, a poll and a system call.
//!
//! An SSE connection's outbox queues [`Message`]s for its response stream to take
//! ([`Outbox::next`]).
//!
//! The state is a std `Mutex`: every critical section is a push, a non-blocking write or a
//! drain, never held across an `.await`. Writes to one socket happen under it, so frames go
//! out whole and in the order they were pushed.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use socket2::SockRef;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Message;

use crate::error::Disconnect;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Queued bytes kept allocated once a backlog has gone out; a larger buffer is released.
const KEEP_CAPACITY: usize = 4096;

pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the one writer (something to send or a close). `notify_one` keeps a permit
    /// when the writer is busy, so no wake-up is lost, and a push wakes nobody else.
    ready: Notify,
    /// Wakes whoever waits for a close ([`Outbox::closed`]).
    closing: Notify,
    limit: usize,
}

struct Inner {
    queue: Queue,
    close: Option<Disconnect>,
}

enum Queue {
    /// SSE: frames for the response stream, and their size.
    Frames {
        frames: VecDeque<Message>,
        bytes: usize,
    },
    Wire(Wire),
}

/// A WebSocket's write side.
struct Wire {
    /// None once the connection task has ended (the socket is closed).
    half: Option<OwnedWriteHalf>,
    /// Framed bytes the socket has not taken yet; they go out before anything new.
    pending: Vec<u8>,
    /// The `disconnect` and close frames of `Inner::close` are in `pending`.
    close_framed: bool,
    /// The socket failed: the writer ends the connection as dropped.
    failed: bool,
    metrics: Arc<Metrics>,
}

/// What a push hands the outbox.
enum Frame<'a> {
    Message(Message),
    /// Already framed (by tungstenite).
    Raw(&'a [u8]),
}

/// What an SSE stream should do next.
pub enum Next {
    Send(VecDeque<Message>),
    Close(Disconnect),
}

impl Outbox {
    /// An outbox whose frames a response stream takes with [`Outbox::next`] (SSE).
    pub fn new(limit: usize) -> Outbox {
        Outbox::with(
            limit,
            Queue::Frames {
                frames: VecDeque::new(),
                bytes: 0,
            },
        )
    }

    /// An outbox that writes WebSocket frames to `half` itself.
    pub fn wired(limit: usize, half: OwnedWriteHalf, metrics: Arc<Metrics>) -> Outbox {
        Outbox::with(
            limit,
            Queue::Wire(Wire {
                half: Some(half),
                pending: Vec::new(),
                close_framed: false,
                failed: false,
                metrics,
            }),
        )
    }

    fn with(limit: usize, queue: Queue) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner { queue, close: None }),
            ready: Notify::new(),
            closing: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Queues a text frame. Returns false if the connection is closing (the frame is dropped:
    /// anything that must survive is in the replay buffer).
    pub fn push_text(&self, text: String) -> bool {
        self.push(Message::text(text))
    }

    pub fn push(&self, msg: Message) -> bool {
        self.enqueue(Frame::Message(msg))
    }

    /// Bytes tungstenite itself writes on a WebSocket (the pong to a client's ping, the reply
    /// to a client's close): already framed, sent in turn with everything else. Dropped once
    /// the connection is closing: our own close frame is, or will be, on the wire.
    pub fn push_raw(&self, bytes: &[u8]) {
        self.enqueue(Frame::Raw(bytes));
    }

    fn enqueue(&self, frame: Frame<'_>) -> bool {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return false;
        }
        let Inner { queue, close } = &mut *inner;
        let fits = match (&mut *queue, frame) {
            (Queue::Frames { frames, bytes }, Frame::Message(msg)) => {
                let len = msg.len();
                let fits = *bytes + len <= self.limit;
                if fits {
                    *bytes += len;
                    frames.push_back(msg);
                    if frames.len() == 1 {
                        self.ready.notify_one();
                    }
                }
                fits
            }
            // Only a WebSocket has a tungstenite writing into it.
            (Queue::Frames { .. }, Frame::Raw(_)) => return false,
            (Queue::Wire(wire), frame) => {
                if wire.half.is_none() {
                    // The connection task has ended; nothing is sent on this socket again.
                    return false;
                }
                let was_idle = wire.pending.is_empty();
                let fits = match &frame {
                    Frame::Message(msg) => match wire_parts(msg) {
                        Some((opcode, payload)) => wire.send(opcode, payload, self.limit),
                        None => return true,
                    },
                    Frame::Raw(bytes) => wire.send_raw(bytes, self.limit),
                };
                if fits && was_idle && !wire.pending.is_empty() {
                    self.ready.notify_one();
                }
                fits
            }
        };
        if !fits {
            self.overflow(close, queue);
        }
        fits
    }

    /// The client stopped reading: close with 4010. An SSE queue is dropped; a WebSocket's
    /// backlog stays (a frame may be half written), and the writer tries briefly to get the
    /// close out after it.
    fn overflow(&self, close: &mut Option<Disconnect>, queue: &mut Queue) {
        *close = Some(Disconnect::slow_consumer());
        if let Queue::Frames { frames, bytes } = queue {
            frames.clear();
            *bytes = 0;
        }
        self.ready.notify_one();
        self.closing.notify_waiters();
    }

    /// Asks the writer to send `disconnect` and close. The first close wins.
    pub fn close(&self, d: Disconnect) {
        let mut inner = self.lock();
        if inner.close.is_none() {
            inner.close = Some(d);
        }
        drop(inner);
        self.ready.notify_one();
        self.closing.notify_waiters();
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

    /// SSE: waits for frames or a close. Queued frames go out before a close, except after
    /// an overflow (the queue was dropped then).
    ///
    /// There is one reader per outbox: it is the only one to wait here.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut inner = self.lock();
                let Inner { queue, close } = &mut *inner;
                if let Queue::Frames { frames, bytes } = queue {
                    if !frames.is_empty() {
                        *bytes = 0;
                        return Next::Send(std::mem::take(frames));
                    }
                }
                if let Some(d) = close {
                    return Next::Close(d.clone());
                }
            }
            self.ready.notified().await;
        }
    }

    /// A WebSocket's writer: sends what the socket did not take when it was pushed, waiting
    /// for the socket as long as it takes, until a close is asked for; then sends the
    /// `disconnect` frame and the close frame and returns the close. An error means the
    /// socket is gone.
    ///
    /// There is one writer per outbox: the connection's task.
    pub async fn write_out(&self) -> io::Result<Disconnect> {
        loop {
            let blocked = {
                let mut inner = self.lock();
                let Inner { queue, close } = &mut *inner;
                let Queue::Wire(wire) = queue else {
                    return Err(io::ErrorKind::Unsupported.into());
                };
                if let (Some(d), false) = (&close, wire.close_framed) {
                    wire.close_framed = true;
                    wire.frame_close(d);
                }
                wire.write_pending();
                if wire.failed || wire.half.is_none() {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                match (close, wire.pending.is_empty()) {
                    (Some(d), true) => return Ok(d.clone()),
                    (_, empty) => !empty,
                }
            };
            if blocked {
                // The socket is full: wait for room. The lock is taken per poll, never held
                // across the wait.
                std::future::poll_fn(|cx| match &self.lock().queue {
                    Queue::Wire(Wire {
                        half: Some(half), ..
                    }) => half.as_ref().poll_write_ready(cx),
                    _ => Poll::Ready(Ok(())),
                })
                .await?;
            } else {
                self.ready.notified().await;
            }
        }
    }

    /// The connection task has ended: closes the write side now rather than whenever the
    /// last reference to the connection goes.
    pub fn shut(&self) {
        if let Queue::Wire(wire) = &mut self.lock().queue {
            wire.half = None;
            wire.pending = Vec::new();
        }
    }
}

impl Wire {
    /// Frames one message and writes it, or queues what the socket does not take. Returns
    /// false (the frame is dropped whole) if the backlog would pass `limit`.
    fn send(&mut self, opcode: OpCode, payload: &[u8], limit: usize) -> bool {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let mut head = [0u8; 14];
        let head_len = header.len(payload.len() as u64);
        header
            .format(payload.len() as u64, &mut &mut head[..])
            .expect("a frame header fits in 14 bytes");
        self.send_parts(&head[..head_len], payload, limit)
    }

    fn send_raw(&mut self, bytes: &[u8], limit: usize) -> bool {
        self.send_parts(bytes, &[], limit)
    }

    fn send_parts(&mut self, head: &[u8], body: &[u8], limit: usize) -> bool {
        let len = head.len() + body.len();
        let mut written = 0;
        if self.pending.is_empty() && !self.failed {
            if let Some(half) = &self.half {
                let parts = [IoSlice::new(head), IoSlice::new(body)];
                // Straight to the socket: tokio's readiness bookkeeping is one more cache
                // miss per socket in a fan-out. Only a full socket goes through tokio, so
                // that it knows to wake the writer when there is room again.
                let sent = match SockRef::from(half.as_ref()).send_vectored(&parts) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        half.try_write_vectored(&parts)
                    }
                    r => r,
                };
                match sent {
                    Ok(n) => written = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.failed = true,
                }
            }
        }
        if written < len {
            // A frame the socket took part of must be finished, whatever the limit (the
            // backlog then passes it by at most this frame, and the next push overflows).
            if written == 0 && self.pending.len() + len > limit {
                return false;
            }
            let cut = written.min(head.len());
            self.pending.extend_from_slice(&head[cut..]);
            self.pending
                .extend_from_slice(&body[written.saturating_sub(head.len())..]);
        }
        self.metrics.frames_out.fetch_add(1, Relaxed);
        true
    }

    /// Appends `disconnect` and the close frame after whatever is still pending.
    fn frame_close(&mut self, d: &Disconnect) {
        let text = d.frame();
        let mut close = Vec::with_capacity(2 + d.reason.len());
        close.extend_from_slice(&d.code.to_be_bytes());
        close.extend_from_slice(d.reason.as_bytes());
        // The close goes out even past the limit: it is bounded and it is the last.
        self.send(OpCode::Data(Data::Text), text.as_bytes(), usize::MAX);
        self.send(OpCode::Control(Control::Close), &close, usize::MAX);
    }

    /// Writes the backlog as far as the socket takes it.
    fn write_pending(&mut self) {
        let Some(half) = &self.half else { return };
        while !self.pending.is_empty() && !self.failed {
            match half.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
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

/// The opcode and payload of a message we send; None for what we never send.
fn wire_parts(msg: &Message) -> Option<(OpCode, &[u8])> {
    Some(match msg {
        Message::Text(t) => (OpCode::Data(Data::Text), t.as_bytes()),
        Message::Binary(b) => (OpCode::Data(Data::Binary), &b[..]),
        Message::Ping(p) => (OpCode::Control(Control::Ping), &p[..]),
        Message::Pong(p) => (OpCode::Control(Control::Pong), &p[..]),
        Message::Close(_) | Message::Frame(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    /// A real loopback TCP pair: the server side's write half in a wired outbox, the client
    /// side returned unread.
    async fn wired_pair(limit: usize) -> (Outbox, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let outbox = Outbox::wired(limit, write, Arc::new(Metrics::default()));
        (outbox, client)
    }

    fn pending_len(outbox: &Outbox) -> usize {
        match &outbox.lock().queue {
            Queue::Wire(w) => w.pending.len(),
            Queue::Frames { .. } => unreachable!(),
        }
    }

    /// A client that stops reading: frames larger than the queue limit fill the socket until
    /// one is taken only in part. That one must still go out whole, then the overflow
    /// closes with 4010, and a client reading again finds every frame intact, in order,
    /// followed by `disconnect` and the close frame.
    #[tokio::test]
    async fn a_frame_the_socket_took_in_part_is_finished_before_the_4010_close() {
        let limit = 4096;
        let (outbox, client) = wired_pair(limit).await;
        let pad = "x".repeat(16 * 1024);
        let mut pushed = 0;
        while pending_len(&outbox) == 0 {
            assert!(outbox.push_text(format!(r#"{{"i":{pushed},"pad":"{pad}"}}"#)));
            pushed += 1;
            assert!(pushed < 100_000, "the socket never filled");
        }
        // The last frame was cut by a full socket: what is left of it passes the limit but
        // stays queued; the next push is the overflow.
        assert!(pending_len(&outbox) > 0);
        assert!(!outbox.push_text(format!(r#"{{"i":{pushed},"pad":"{pad}"}}"#)));
        assert_eq!(outbox.closing().map(|d| d.code), Some(4010));

        let reader = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut frames = Vec::new();
            while let Some(m) = ws.next().await {
                match m.expect("every frame intact") {
                    Message::Close(f) => return (frames, f.map(|f| u16::from(f.code))),
                    Message::Text(t) => {
                        frames.push(serde_json::from_str::<serde_json::Value>(&t).unwrap())
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            (frames, None)
        });
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), outbox.write_out())
            .await
            .expect("the backlog and the close went out")
            .expect("the socket is fine");
        assert_eq!(closed.code, 4010);
        let (frames, close) = reader.await.unwrap();
        assert_eq!(close, Some(4010));
        let (messages, last) = frames.split_at(frames.len() - 1);
        assert_eq!(last[0]["type"], "disconnect");
        assert_eq!(last[0]["code"], 4010);
        let seen: Vec<u64> = messages.iter().map(|m| m["i"].as_u64().unwrap()).collect();
        assert_eq!(seen, (0..pushed as u64).collect::<Vec<_>>());
    }
}
