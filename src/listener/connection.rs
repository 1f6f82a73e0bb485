//! One HTTP connection: its state ([`Slot`]), its socket ([`Watched`]) and the watchdog that
//! closes it when a phase outlives its timeout ([`Admitted::serve`]).
//!
//! The watchdog is ours rather than hyper's `header_read_timeout`: hyper starts that timer
//! when it begins reading a head, which for a kept-alive connection is the moment it goes
//! idle, so it cannot tell "silent between requests" (`http_idle_timeout_ms`) from "slow to
//! send headers" (`http_header_timeout_ms`), and it does not cover bodies. The socket
//! wrapper notes the first byte after each response; the service notes when a request
//! starts, when its body ends and when its response is written; from those the deadline of
//! the current phase follows ([`Slot::deadline`]).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use warp::http::{Request, Response};

use super::admission::{Admitted, FdHold};
use super::clock::{instant, now_ms};
use super::front::{ConnAbort, Front, Inner, RequestBody};
use super::Timeouts;

/// How long graceful shutdown lets a connection finish its request.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// The watchdog's margin over a body's own deadline: the body answers 408 at its deadline,
/// the watchdog closes a connection whose route stopped reading it.
const BODY_GRACE_MS: u64 = 1000;

/// The state of one connection, shared by its socket, its service and the admission lists.
pub(crate) struct Slot {
    pub(super) id: u64,
    accepted_at: u64,
    /// Listed as pending (see [`super::Admission`]).
    pub(super) pending: AtomicBool,
    /// A `/ws` request took the pending state along ([`super::Pending`]).
    pub(super) handed: AtomicBool,
    /// The response being written is a `101` that is to go out with the upgraded socket's
    /// first frame ([`super::WithFirstFrame`]): [`Watched`] keeps what hyper writes.
    pub(super) hold_head: AtomicBool,
    /// Its descriptor is in the open-file estimate (see [`super::fds`]); shared with its
    /// [`FdHold`], which outlives the slot once the socket is upgraded.
    pub(super) counted: Arc<AtomicBool>,
    /// Listed as idle.
    pub(super) idle: AtomicBool,
    shed: AtomicBool,
    shed_notify: Notify,
    /// Wakes the watchdog when the deadline may have moved earlier.
    wake: Notify,
    in_flight: AtomicU32,
    bodies_open: AtomicU32,
    request_at: AtomicU64,
    /// When the last response was written; 0 before the first.
    idle_since: AtomicU64,
    /// The first byte read since `idle_since`; 0 if none.
    first_byte: AtomicU64,
    pub(super) body_timed_out: AtomicBool,
}

/// Which bound a connection is under, for the log line when it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Headers,
    Body,
    Idle,
}

impl Slot {
    pub(super) fn new(id: u64) -> Slot {
        Slot {
            id,
            accepted_at: now_ms(),
            pending: AtomicBool::new(true),
            handed: AtomicBool::new(false),
            hold_head: AtomicBool::new(false),
            counted: Arc::new(AtomicBool::new(true)),
            idle: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            shed_notify: Notify::new(),
            wake: Notify::new(),
            in_flight: AtomicU32::new(0),
            bodies_open: AtomicU32::new(0),
            request_at: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
            body_timed_out: AtomicBool::new(false),
        }
    }

    /// Asks everyone serving this connection to close it.
    pub(super) fn shed(&self) {
        self.shed.store(true, Relaxed);
        self.shed_notify.notify_waiters();
    }

    pub(super) fn is_shed(&self) -> bool {
        self.shed.load(Relaxed)
    }

    /// Completes once [`Slot::shed`] was called.
    pub(super) async fn shed_signal(&self) {
        loop {
            let notified = self.shed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_shed() {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.request_at.store(now_ms(), Relaxed);
        self.wake.notify_one();
    }

    /// The response was handed to the socket. Returns true when no other request is in
    /// flight, that is when the connection is now idle.
    pub(super) fn response_written(&self) -> bool {
        if self.in_flight.fetch_sub(1, Relaxed) != 1 {
            return false;
        }
        self.first_byte.store(0, Relaxed);
        self.idle_since.store(now_ms(), Relaxed);
        self.wake.notify_one();
        true
    }

    pub(super) fn body_opened(&self) {
        self.bodies_open.fetch_add(1, Relaxed);
    }

    pub(super) fn body_closed(&self) {
        self.bodies_open.fetch_sub(1, Relaxed);
    }

    pub(super) fn request_at(&self) -> u64 {
        self.request_at.load(Relaxed)
    }

    fn bytes_arrived(&self) {
        if self.first_byte.load(Relaxed) == 0 {
            self.first_byte.store(now_ms(), Relaxed);
            self.wake.notify_one();
        }
    }

    /// When the current phase runs out (ms), or None while a request is being served with
    /// its body read.
    pub(super) fn deadline(&self, t: &Timeouts) -> Option<(u64, Phase)> {
        if self.in_flight.load(Relaxed) > 0 {
            return (self.bodies_open.load(Relaxed) > 0)
                .then(|| (self.request_at() + t.body_ms + BODY_GRACE_MS, Phase::Body));
        }
        let idle_since = self.idle_since.load(Relaxed);
        if idle_since == 0 {
            return Some((self.accepted_at + t.header_ms, Phase::Headers));
        }
        match self.first_byte.load(Relaxed) {
            0 => Some((idle_since + t.idle_ms, Phase::Idle)),
            first => Some((first + t.header_ms, Phase::Headers)),
        }
    }
}

/// The socket as hyper sees it: a TCP stream that tells the [`Slot`] when bytes arrive.
/// The WebSocket upgrade takes the stream back out with [`Watched::into_parts`].
pub struct Watched {
    tcp: TcpStream,
    slot: Arc<Slot>,
    hold: FdHold,
    /// A `101` hyper wrote that waits for the first frame (see [`Slot::hold_head`]).
    held: Vec<u8>,
}

impl Watched {
    /// The stream; its place in the open-file estimate, to keep as long as the stream; and
    /// the `101` response still to write before anything else, if it was held back (empty
    /// if it went out).
    pub fn into_parts(self) -> (TcpStream, FdHold, Vec<u8>) {
        (self.tcp, self.hold, self.held)
    }

    fn holding(&self) -> bool {
        self.slot.hold_head.load(Relaxed)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.holding() {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.holding() {
            let before = self.held.len();
            for b in bufs {
                self.held.extend_from_slice(b);
            }
            let n = self.held.len() - before;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Admitted {
    /// Serves the connection until it closes, is upgraded, runs out of time, is shed, or the
    /// server stops (then it may finish its request, for a while).
    pub async fn serve<S>(self, routes: S, mut stop: watch::Receiver<bool>)
    where
        S: tower_service::Service<
                Request<RequestBody>,
                Response = Response<Inner>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        let Admitted {
            tcp,
            peer,
            slot,
            admission,
        } = self;
        let timeouts = admission.timeouts;
        {
            let io = TokioIo::new(Watched {
                tcp,
                slot: slot.clone(),
                hold: FdHold::new(&slot, &admission),
                held: Vec::new(),
            });
            let abort = ConnAbort::default();
            let front = Front::new(routes, peer, slot.clone(), admission.clone(), abort.clone());
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, front)
                .with_upgrades();
            tokio::pin!(conn);
            loop {
                let deadline = slot.deadline(&timeouts);
                let timer = async move {
                    match deadline {
                        Some((ms, _)) => tokio::time::sleep_until(instant(ms)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                        break;
                    }
                    () = timer => {
                        if let Some((ms, phase)) = slot.deadline(&timeouts) {
                            if ms <= now_ms() {
                                tracing::debug!(%peer, ?phase, "closing an HTTP connection past its timeout");
                                break;
                            }
                        }
                    }
                    () = slot.wake.notified() => {}
                    () = slot.shed_signal() => break,
                    // A transport gave up on its client (dropping `conn` closes the socket).
                    () = abort.aborted() => break,
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(SHUTDOWN_WAIT, conn.as_mut()).await;
                        break;
                    }
                }
            }
        }
        admission.forget(&slot);
    }
}
