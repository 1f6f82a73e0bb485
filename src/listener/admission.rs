//! Which connections are let in, and which are closed to make room.
//!
//! Every accepted connection gets a [`Slot`] and is listed as pending. It leaves that list
//! when it has completed a request (or, for `/ws`, when its [`Pending`] token is dropped:
//! once the upgraded socket has authenticated). Between requests a kept-alive connection is
//! listed as idle. Both lists are ordered by accept, so "the oldest" is the first entry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::connection::Slot;
use super::fds::FdBudget;
use super::Timeouts;
use crate::config::Config;
use crate::protocol::Disconnect;

/// At most one warning per this, with the count of what happened meanwhile.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Pause after an accept error, so a persistent one (no descriptors, no memory) does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Shorter pause when connections were just closed to free descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(5);

/// The listener's admission state, shared by the accept loop and every connection.
pub struct Admission {
    pub(super) timeouts: Timeouts,
    pub(super) max_body_bytes: u64,
    max_pending: usize,
    next_id: AtomicU64,
    lists: Mutex<Lists>,
    fds: FdBudget,
    accept_errors: Every,
    pending_full: Every,
    files_low: Every,
}

#[derive(Default)]
struct Lists {
    pending: BTreeMap<u64, Arc<Slot>>,
    idle: BTreeMap<u64, Arc<Slot>>,
}

/// An accepted connection, admitted, ready to be served ([`Admitted::serve`]).
pub struct Admitted {
    pub(super) tcp: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) slot: Arc<Slot>,
    pub(super) admission: Arc<Admission>,
}

impl Admission {
    pub fn new(config: &Config) -> Arc<Admission> {
        Arc::new(Admission {
            timeouts: Timeouts::from_config(config),
            max_body_bytes: config.max_body_bytes,
            max_pending: config.max_pending_connections.max(1),
            next_id: AtomicU64::new(1),
            lists: Mutex::default(),
            fds: FdBudget::new(),
            accept_errors: Every::default(),
            pending_full: Every::default(),
            files_low: Every::default(),
        })
    }

    fn lists(&self) -> MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a new connection in: closes idle or pending ones when descriptors run low, and
    /// the oldest pending one when `max_pending_connections` are pending already.
    pub fn admit(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) -> Admitted {
        // Small frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if let Some(excess) = self.fds.opened() {
            self.free_files(excess);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(id));
        let mut shed = 0;
        {
            let mut lists = self.lists();
            while lists.pending.len() >= self.max_pending {
                let Some((_, oldest)) = lists.pending.pop_first() else {
                    break;
                };
                oldest.pending.store(false, Ordering::Relaxed);
                self.shed(&oldest);
                shed += 1;
            }
            lists.pending.insert(id, slot.clone());
        }
        if shed > 0 {
            if let Some(n) = self.pending_full.hit(shed) {
                tracing::warn!(
                    closed = n,
                    max_pending_connections = self.max_pending,
                    "too many connections without a completed request or authentication: \
                     closed the oldest"
                );
            }
        }
        Admitted {
            tcp,
            peer,
            slot,
            admission: self.clone(),
        }
    }

    /// What the accept loop does when `accept` fails: log (at most every few seconds, with
    /// a count), free descriptors when they are what ran out, and pause briefly.
    pub async fn accept_failed(&self, e: &std::io::Error) {
        use std::io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        ) {
            // One client's trouble, not ours.
            tracing::debug!(error = %e, "accept: connection lost before it was accepted");
            return;
        }
        // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
        let out_of_files = matches!(e.raw_os_error(), Some(23 | 24));
        let mut freed = 0;
        if out_of_files {
            self.fds.sample();
            freed = self.shed_oldest(self.fds.shed_step());
        }
        if let Some(n) = self.accept_errors.hit(1) {
            tracing::warn!(
                error = %e,
                failures = n,
                closed_to_free_descriptors = freed,
                open_files = self.fds.open(),
                open_files_limit = self.fds.limit(),
                "accept failed"
            );
        }
        tokio::time::sleep(if freed > 0 {
            ACCEPT_RETRY
        } else {
            ACCEPT_BACKOFF
        })
        .await;
    }

    fn free_files(&self, excess: usize) {
        let closed = self.shed_oldest(excess);
        if let Some(n) = self.files_low.hit(closed.max(1)) {
            tracing::warn!(
                closed = n,
                open_files = self.fds.open(),
                open_files_limit = self.fds.limit(),
                "near the open-file limit: closing idle and unauthenticated connections, oldest first"
            );
        }
    }

    /// Closes up to `n` connections: idle kept-alive ones first, then pending ones, oldest
    /// first in each. Returns how many.
    fn shed_oldest(&self, n: usize) -> usize {
        let mut lists = self.lists();
        let mut shed = 0;
        while shed < n {
            let Some((_, slot)) = lists.idle.pop_first() else {
                break;
            };
            slot.idle.store(false, Ordering::Relaxed);
            self.shed(&slot);
            shed += 1;
        }
        while shed < n {
            let Some((_, slot)) = lists.pending.pop_first() else {
                break;
            };
            slot.pending.store(false, Ordering::Relaxed);
            self.shed(&slot);
            shed += 1;
        }
        shed
    }

    /// Closes one connection. Its descriptor counts as free at once: the connection's task
    /// closes it soon, and a burst of accepts meanwhile must not shed again for the same
    /// shortage.
    fn shed(&self, slot: &Slot) {
        slot.shed();
        self.give_back(&slot.counted);
    }

    /// Takes a socket out of the open-file estimate, once: whichever of its shed and its
    /// [`FdHold`] comes first.
    fn give_back(&self, counted: &AtomicBool) {
        if counted.swap(false, Ordering::Relaxed) {
            self.fds.closed();
        }
    }

    /// The connection has completed a request (or its WebSocket authenticated): no longer
    /// pending.
    pub(super) fn settle(&self, slot: &Slot) {
        if slot.pending.swap(false, Ordering::Relaxed) {
            self.lists().pending.remove(&slot.id);
        }
    }

    pub(super) fn enter_idle(&self, slot: &Arc<Slot>) {
        let mut lists = self.lists();
        if !slot.is_shed() {
            slot.idle.store(true, Ordering::Relaxed);
            lists.idle.insert(slot.id, slot.clone());
        }
    }

    pub(super) fn leave_idle(&self, slot: &Slot) {
        if slot.idle.swap(false, Ordering::Relaxed) {
            self.lists().idle.remove(&slot.id);
        }
    }

    /// The HTTP connection is over (closed, or handed to the WebSocket transport). Its
    /// descriptor leaves the estimate with its [`FdHold`].
    pub(super) fn forget(&self, slot: &Slot) {
        let mut lists = self.lists();
        if slot.idle.swap(false, Ordering::Relaxed) {
            lists.idle.remove(&slot.id);
        }
        // A `/ws` upgrade took the pending state along in its token.
        if !slot.handed.load(Ordering::Relaxed) && slot.pending.swap(false, Ordering::Relaxed) {
            lists.pending.remove(&slot.id);
        }
    }
}

/// An accepted socket's place in the open-file estimate, given back when this is dropped:
/// with the HTTP connection, or, after an upgrade, with the transport that took the socket
/// ([`super::Watched::into_parts`]). A connection shed near the limit gives its place back
/// at once; this then gives back nothing.
pub struct FdHold {
    counted: Arc<AtomicBool>,
    admission: Arc<Admission>,
}

impl FdHold {
    pub(super) fn new(slot: &Slot, admission: &Arc<Admission>) -> FdHold {
        FdHold {
            counted: slot.counted.clone(),
            admission: admission.clone(),
        }
    }
}

impl Drop for FdHold {
    fn drop(&mut self) {
        self.admission.give_back(&self.counted);
    }
}

/// A `/ws` connection's pending state, carried past the upgrade: the connection counts as
/// pending (against `max_pending_connections`, and first to be closed near the file limit)
/// until this is dropped, which the WebSocket transport does once the socket has
/// authenticated.
pub struct Pending {
    slot: Arc<Slot>,
    admission: Arc<Admission>,
}

/// How a [`Pending`] rides in request extensions (which must be `Clone`).
#[derive(Clone)]
pub(super) struct PendingCell(Arc<Mutex<Option<Pending>>>);

impl Pending {
    pub(super) fn cell(slot: &Arc<Slot>, admission: &Arc<Admission>) -> PendingCell {
        slot.handed.store(true, Ordering::Relaxed);
        PendingCell(Arc::new(Mutex::new(Some(Pending {
            slot: slot.clone(),
            admission: admission.clone(),
        }))))
    }

    /// Takes the token the listener put on a `/ws` request, if the connection is pending.
    pub fn take<B>(req: &mut warp::http::Request<B>) -> Option<Pending> {
        let cell = req.extensions_mut().remove::<PendingCell>()?;
        let mut token = cell.0.lock().unwrap_or_else(|e| e.into_inner());
        token.take()
    }

    /// Waits for `auth` (a WebSocket's first frame), unless the listener closes this pending
    /// connection first, near the file limit or when `max_pending_connections` newer ones
    /// arrived: then it is refused with 1013 (server full, reconnect).
    pub async fn guard<T>(
        token: &Option<Pending>,
        auth: impl std::future::Future<Output = Result<T, Disconnect>>,
    ) -> Result<T, Disconnect> {
        match token {
            None => auth.await,
            Some(p) => tokio::select! {
                biased;
                out = auth => out,
                () = p.slot.shed_signal() => Err(Disconnect::server_full()),
            },
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.settle(&self.slot);
    }
}

/// A rate-limited log: [`Every::hit`] says when to write, with how many events since the last
/// line.
#[derive(Default)]
struct Every {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    fn hit(&self, n: usize) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 += n as u64;
        if s.0.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        s.0 = Some(Instant::now());
        Some(std::mem::take(&mut s.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_leaves_the_file_estimate_once_with_its_hold() {
        let admission = Admission::new(&Config::default());
        let base = admission.fds.open();
        let slots: Vec<_> = (0..3).map(|i| Arc::new(Slot::new(i))).collect();
        let holds: Vec<_> = slots
            .iter()
            .map(|s| {
                admission.fds.opened();
                FdHold::new(s, &admission)
            })
            .collect();
        assert_eq!(admission.fds.open(), base + 3);
        // Shed: given back at once, and not again when its hold goes.
        admission.shed(&slots[0]);
        assert_eq!(admission.fds.open(), base + 2);
        let mut holds = holds.into_iter();
        drop(holds.next());
        assert_eq!(admission.fds.open(), base + 2);
        // The others when their holds go, whoever holds them (the slot may be long gone).
        drop(slots);
        drop(holds.next());
        assert_eq!(admission.fds.open(), base + 1);
        drop(holds);
        assert_eq!(admission.fds.open(), base);
    }

    #[test]
    fn every_logs_the_first_then_counts() {
        let every = Every::default();
        assert_eq!(every.hit(1), Some(1));
        assert_eq!(every.hit(1), None);
        assert_eq!(every.hit(3), None);
        every.state.lock().unwrap().0 = Some(Instant::now() - LOG_EVERY);
        assert_eq!(every.hit(1), Some(5));
    }
}
