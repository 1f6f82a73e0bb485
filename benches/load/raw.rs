//! Raw readers: after its `welcome`, a connection can leave its tokio task for one of a few
//! plain threads that each wait on all their sockets with one epoll (mio) and read the
//! WebSocket frames by hand: no task wake-up, no per-connection future, one clock read per
//! `read`. A task per connection with tungstenite costs this generator about 4 µs of CPU a
//! received frame, half the server's; on the same 2 cores that is time the server does not
//! get, and it shows in the delivery latency the generator measures. `fanout --readers N`
//! uses them.
//!
//! They answer pings, record every text frame through the same [`Seen`] as the tasks (so the
//! figures are counted alike), record a server's close, and on [`RawReaders::close_all`]
//! close every socket with 1000 and wait (bounded) for the server's reply. Resumes, order
//! logs and close timers stay with the tasks: a connection that needs one is not handed
//! over.

use crate::conn::{Seen, Stats};
use crate::util::now_ns;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKE: Token = Token(usize::MAX);
/// How long a clean close waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Shared {
    stats: Arc<Stats>,
    /// Connections handed over and not yet taken by their thread, one list per thread.
    inbox: Vec<Mutex<Vec<(usize, std::net::TcpStream)>>>,
    wakers: Vec<Waker>,
    next: AtomicUsize,
    /// Connections a reader holds (taken or waiting in an inbox).
    held: AtomicUsize,
    closing: AtomicBool,
    stop: AtomicBool,
}

pub struct RawReaders {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RawReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawReaders({} threads)", self.threads.len())
    }
}

impl RawReaders {
    /// Starts `threads` reader threads recording into `stats`.
    pub fn start(threads: usize, stats: Arc<Stats>) -> std::io::Result<RawReaders> {
        let mut polls = Vec::new();
        let mut wakers = Vec::new();
        for _ in 0..threads.max(1) {
            let poll = Poll::new()?;
            wakers.push(Waker::new(poll.registry(), WAKE)?);
            polls.push(poll);
        }
        let shared = Arc::new(Shared {
            stats,
            inbox: polls.iter().map(|_| Mutex::new(Vec::new())).collect(),
            wakers,
            next: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for (me, poll) in polls.into_iter().enumerate() {
            let sh = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("raw-reader-{me}"))
                    .spawn(move || Reader::new(sh, me, poll).run())?,
            );
        }
        Ok(RawReaders {
            shared,
            threads: handles,
        })
    }

    /// Takes over connection `idx`, whose `welcome` has been read and nothing after it.
    /// Its thread now owns the `open_now` and `finished` counts of it.
    pub fn adopt(&self, idx: usize, sock: std::net::TcpStream) {
        let sh = &self.shared;
        let t = sh.next.fetch_add(1, Relaxed) % sh.inbox.len();
        sh.held.fetch_add(1, Relaxed);
        sh.inbox[t].lock().unwrap().push((idx, sock));
        let _ = sh.wakers[t].wake();
    }

    /// Closes every connection cleanly; returns once all are closed or `within` has passed.
    pub async fn close_all(&self, within: Duration) {
        self.shared.closing.store(true, Relaxed);
        for w in &self.shared.wakers {
            let _ = w.wake();
        }
        let deadline = tokio::time::Instant::now() + within;
        while self.shared.held.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RawReaders {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for w in &self.shared.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct RawConn {
    sock: TcpStream,
    idx: usize,
    /// A frame's bytes that arrived without the rest of it.
    partial: Vec<u8>,
    /// Our close frame is sent; the server's reply ends it.
    closing: bool,
}

/// What one frame asks of its connection.
enum After {
    Keep,
    /// The connection is over: closed by the server (with its code) or answering our close.
    End(Option<u16>),
}

struct Reader {
    sh: Arc<Shared>,
    me: usize,
    poll: Poll,
    conns: Vec<Option<RawConn>>,
    free: Vec<usize>,
    live: usize,
    close_deadline: Option<Instant>,
}

impl Reader {
    fn new(sh: Arc<Shared>, me: usize, poll: Poll) -> Reader {
        Reader {
            sh,
            me,
            poll,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            close_deadline: None,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut ready = Vec::new();
        loop {
            if self.sh.stop.load(Relaxed) {
                self.sh.held.fetch_sub(self.live, Relaxed);
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(50))) {
                if e.kind() != ErrorKind::Interrupted {
                    self.sh.stats.error(format!("raw:poll_{:?}", e.kind()));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            ready.clear();
            ready.extend(
                events
                    .iter()
                    .filter(|e| e.token() != WAKE)
                    .map(|e| (e.token().0, e.is_read_closed() || e.is_error())),
            );
            for &(k, closed) in &ready {
                self.readable(k, closed, &mut scratch);
            }
            self.take_inbox(&mut scratch);
            if self.sh.closing.load(Relaxed) {
                self.closing();
            }
        }
    }

    fn take_inbox(&mut self, scratch: &mut [u8]) {
        let new = std::mem::take(&mut *self.sh.inbox[self.me].lock().unwrap());
        for (idx, sock) in new {
            if let Err(e) = sock.set_nonblocking(true) {
                self.sh
                    .stats
                    .error(format!("raw:nonblocking_{:?}", e.kind()));
            }
            let mut sock = TcpStream::from_std(sock);
            let k = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut sock, Token(k), Interest::READABLE)
            {
                self.sh.stats.error(format!("raw:register_{:?}", e.kind()));
                self.free.push(k);
                self.ended(idx);
                continue;
            }
            self.conns[k] = Some(RawConn {
                sock,
                idx,
                partial: Vec::new(),
                closing: false,
            });
            self.live += 1;
            // A frame may have come before the registration.
            self.readable(k, true, scratch);
        }
    }

    /// Reads connection `k` until the socket has nothing more (epoll is edge-triggered);
    /// to its end when `closed` (the peer's FIN came with the event, which no later edge
    /// will announce again).
    fn readable(&mut self, k: usize, closed: bool, scratch: &mut [u8]) {
        let Some(Some(c)) = self.conns.get_mut(k) else {
            return;
        };
        let end = loop {
            match c.sock.read(scratch) {
                Ok(0) => break Some(Err("eof".to_string())),
                Ok(n) => {
                    let at = now_ns();
                    let next = if c.partial.is_empty() {
                        let (used, next) = frames(&self.sh.stats, c, &scratch[..n], at);
                        c.partial.extend_from_slice(&scratch[used..n]);
                        next
                    } else {
                        let mut buf = std::mem::take(&mut c.partial);
                        buf.extend_from_slice(&scratch[..n]);
                        let (used, next) = frames(&self.sh.stats, c, &buf, at);
                        buf.drain(..used);
                        c.partial = buf;
                        next
                    };
                    if let After::End(code) = next {
                        break Some(Ok(code));
                    }
                    // A short read emptied the socket: what comes next raises a new edge,
                    // so the `recv` that would only say EAGAIN is saved.
                    if n < scratch.len() && !closed {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => break Some(Err(format!("{:?}", e.kind()))),
            }
        };
        let Some(end) = end else { return };
        let c = self.conns[k].take().expect("the connection read above");
        self.free.push(k);
        self.live -= 1;
        let stats = &self.sh.stats;
        match end {
            Ok(_) if c.closing => {
                stats.clean_closed.fetch_add(1, Relaxed);
            }
            Ok(code) => {
                stats.server_closed.fetch_add(1, Relaxed);
                stats.error(format!("closed:{}", code.unwrap_or(1005)));
            }
            Err(_) if c.closing => {
                stats.unclean_closed.fetch_add(1, Relaxed);
                stats.error("close:no_reply");
            }
            Err(why) => {
                stats.server_closed.fetch_add(1, Relaxed);
                stats.error(format!("closed:{why}"));
            }
        }
        self.ended(c.idx);
    }

    fn ended(&self, _idx: usize) {
        let stats = &self.sh.stats;
        stats.open_now.fetch_sub(1, Relaxed);
        stats.finished.fetch_add(1, Relaxed);
        self.sh.held.fetch_sub(1, Relaxed);
    }

    /// Sends our close to every connection once, then ends those that have not answered
    /// by the deadline.
    fn closing(&mut self) {
        let deadline = *self.close_deadline.get_or_insert_with(|| {
            for c in self.conns.iter_mut().flatten() {
                if !c.closing {
                    c.closing = true;
                    let _ = c.sock.write_all(&close_frame(1000));
                }
            }
            Instant::now() + CLOSE_WAIT
        });
        // Connections adopted after the close began.
        for c in self.conns.iter_mut().flatten() {
            if !c.closing {
                c.closing = true;
                let _ = c.sock.write_all(&close_frame(1000));
            }
        }
        if Instant::now() < deadline {
            return;
        }
        for k in 0..self.conns.len() {
            if let Some(c) = self.conns[k].take() {
                self.free.push(k);
                self.live -= 1;
                self.sh.stats.unclean_closed.fetch_add(1, Relaxed);
                self.sh.stats.error("close:no_reply");
                self.ended(c.idx);
            }
        }
    }
}

/// Handles every whole frame at the start of `data`: (bytes used, what the connection does
/// next). A frame cut short is left for the next read.
fn frames(stats: &Stats, c: &mut RawConn, data: &[u8], at: u64) -> (usize, After) {
    let mut pos = 0;
    while let Some((op, fin, payload, len)) = frame_at(&data[pos..]) {
        pos += len;
        match op {
            0x1 if fin => match std::str::from_utf8(payload) {
                Ok(text) => Seen {
                    stats,
                    tap: None,
                    idx: c.idx,
                }
                .frame(text, at, None, None, None),
                Err(_) => stats.error("frame:bad_utf8"),
            },
            0x9 => {
                let _ = c.sock.write_all(&client_frame(0xA, payload));
            }
            0x8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                if !c.closing {
                    // Answer the server's close, as the protocol asks.
                    let _ = c.sock.write_all(&close_frame(code.unwrap_or(1000)));
                }
                return (pos, After::End(code));
            }
            0xA | 0x2 => {}
            _ => stats.error("frame:fragmented"),
        }
    }
    (pos, After::Keep)
}

/// The frame at the start of `d`, if it is all there: (opcode, FIN, payload, frame length).
/// Server frames are not masked.
fn frame_at(d: &[u8]) -> Option<(u8, bool, &[u8], usize)> {
    if d.len() < 2 {
        return None;
    }
    let fin = d[0] & 0x80 != 0;
    let op = d[0] & 0x0F;
    let (len, head) = match d[1] & 0x7F {
        126 => {
            if d.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([d[2], d[3]]) as usize, 4)
        }
        127 => {
            if d.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if d[1] & 0x80 != 0 { 4 } else { 0 };
    let total = head + mask + len;
    if d.len() < total {
        return None;
    }
    Some((op, fin, &d[head + mask..total], total))
}

/// A client frame (masked, as RFC 6455 asks of clients; the key is zero, so the payload
/// goes as it is).
fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.push(0x80 | op);
    f.push(0x80 | payload.len().min(125) as u8);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&payload[..payload.len().min(125)]);
    f
}

fn close_frame(code: u16) -> Vec<u8> {
    client_frame(0x8, &code.to_be_bytes())
}

/// Checks the frame reader on frames cut at every length (selftest).
pub fn self_check() -> Result<(), String> {
    let mut f = vec![0x81, 5];
    f.extend_from_slice(b"hello");
    let mut long = vec![0x81, 126, 0x01, 0x00];
    long.extend(std::iter::repeat_n(b'a', 256));
    let mut huge = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
    huge.extend(std::iter::repeat_n(b'b', 65536));
    for (frame, payload) in [(&f, 5), (&long, 256), (&huge, 65536)] {
        match frame_at(frame) {
            Some((_, true, p, n)) if p.len() == payload && n == frame.len() => {}
            other => return Err(format!("whole frame read as {:?}", other.map(|o| o.3))),
        }
        if let Some(cut) = (0..frame.len()).find(|&k| frame_at(&frame[..k]).is_some()) {
            return Err(format!("a frame cut at {cut} bytes was read"));
        }
    }
    let pong = client_frame(0xA, b"xy");
    if pong != [0x8A, 0x82, 0, 0, 0, 0, b'x', b'y'] {
        return Err(format!("pong frame {pong:?}"));
    }
    Ok(())
}
