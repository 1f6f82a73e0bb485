//! The hub: this node's live connections, and nothing else.
//!
//! Each connection with a socket on this node has a [`Handle`]: its [`Outbox`] (frames to
//! its socket, through a [`Transport`]) and the few live settings its task reads per frame.
//! Handles are sharded by user id, so "every socket of user X" takes one shard lock. The
//! hub knows no storage and no socket type: who is connected as whom, their `seq` and their
//! replay buffers are the store's; the bytes on the wire are the transport's.
//!
//! A large delivery is spread over the cores ([`Hub::deliver`]): on loopback each socket
//! write also runs the receiver's kernel work, so one thread writing 10,000 sockets would be
//! the critical path while the other cores wait.

pub mod outbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::protocol::{Disconnect, FrameTemplate};
use crate::sync::{hash_str, lock};

pub use outbox::{Head, Out, Outbox, Transport};

const SHARDS: usize = 64;

/// A fan-out gets one more thread per this many sockets, up to one per core (a thread
/// costs tens of microseconds to start; 256 sockets take about a millisecond).
const PER_FAN_OUT_THREAD: usize = 256;
/// Helper threads running fan-outs at once, over all shards; past it a fan-out runs on
/// its own thread only.
const MAX_FAN_OUT_HELPERS: usize = 16;

pub use crate::model::Assignment;

/// A live connection on this node.
pub struct Handle {
    pub outbox: Outbox,
    /// `rateLimit.messagesPerMinute`, which an operator may change while it is connected.
    messages_per_minute: AtomicU32,
}

impl Handle {
    pub fn new(outbox: Outbox, messages_per_minute: u32) -> Arc<Handle> {
        Arc::new(Handle {
            outbox,
            messages_per_minute: AtomicU32::new(messages_per_minute),
        })
    }

    /// The connection's current id.
    pub fn id(&self) -> Uuid {
        self.outbox.id()
    }

    pub fn messages_per_minute(&self) -> u32 {
        self.messages_per_minute.load(Ordering::Relaxed)
    }

    pub fn set_messages_per_minute(&self, v: u32) {
        self.messages_per_minute.store(v, Ordering::Relaxed);
    }
}

type Shard = HashMap<Uuid, Arc<Handle>>;

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    live: AtomicUsize,
    /// Threads a large fan-out may use.
    cores: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

static FAN_OUT_HELPERS: AtomicUsize = AtomicUsize::new(0);

/// Helper threads reserved for one fan-out.
struct FanOutHelpers {
    count: usize,
}

impl FanOutHelpers {
    fn take(count: usize) -> Option<FanOutHelpers> {
        if count == 0 {
            return None;
        }
        FAN_OUT_HELPERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + count <= MAX_FAN_OUT_HELPERS).then_some(n + count)
            })
            .ok()
            .map(|_| FanOutHelpers { count })
    }
}

impl Drop for FanOutHelpers {
    fn drop(&mut self) {
        FAN_OUT_HELPERS.fetch_sub(self.count, Ordering::AcqRel);
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            live: AtomicUsize::new(0),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn shard(&self, user: &str) -> &Mutex<Shard> {
        &self.shards[hash_str(user) % SHARDS]
    }

    /// Adds `handle` (already given its id) as a socket of `user`.
    pub fn attach(&self, user: &str, handle: &Arc<Handle>) {
        if lock(self.shard(user))
            .insert(handle.id(), handle.clone())
            .is_none()
        {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes `handle` if it is still the socket of its connection (a resumed or migrated
    /// connection may have another by now).
    pub fn detach(&self, user: &str, handle: &Arc<Handle>) {
        let mut shard = lock(self.shard(user));
        let id = handle.id();
        if shard.get(&id).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            shard.remove(&id);
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, user: &str, id: &Uuid) -> Option<Arc<Handle>> {
        lock(self.shard(user)).get(id).cloned()
    }

    /// The connection `old` is now `new` (an operator's migrate): its socket goes with it.
    pub fn rekey(&self, user: &str, old: &Uuid, new: Uuid) {
        let mut shard = lock(self.shard(user));
        if let Some(h) = shard.remove(old) {
            h.outbox.set_id(new);
            shard.insert(new, h);
        }
    }

    /// Asks the socket of `id` to close with `d`. Returns whether this started a close (false
    /// if there is no socket here or it is closing already).
    pub fn close(&self, user: &str, id: &Uuid, d: Disconnect) -> bool {
        match self.get(user, id) {
            Some(h) => h.outbox.close(d),
            None => false,
        }
    }

    /// Asks every socket to close with `d` (graceful shutdown: 1001, resumable).
    pub fn close_all(&self, d: &Disconnect) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            for h in lock(shard).values() {
                h.outbox.close(d.clone());
                n += 1;
            }
        }
        n
    }

    /// Every socket here.
    pub fn all(&self) -> Vec<Arc<Handle>> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Sockets on this node.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends a delivery's frames to the sockets of `user` that are here: each its own `seq`
    /// of `template`. Returns how many sockets took their frame.
    ///
    /// Many sockets are written from several threads: scoped threads over disjoint shares of
    /// the handles, popped from one queue, so a thread that gets less of a core takes fewer;
    /// a helper that cannot be started leaves its shares to the others.
    ///
    /// The shard's lock is held only to find the handles, not while their frames are
    /// written: other users' sockets on the shard come and go meanwhile. Frames to one socket
    /// still go in seq order, since the callers deliver to a user one delivery at a time.
    pub fn deliver(&self, user: &str, to: &[Assignment], template: &FrameTemplate) -> usize {
        let found: Vec<(Arc<Handle>, u64)> = {
            let shard = lock(self.shard(user));
            to.iter()
                .filter_map(|a| shard.get(&a.id).map(|h| (h.clone(), a.seq)))
                .collect()
        };
        let targets: Vec<(&Handle, u64)> = found.iter().map(|(h, seq)| (&**h, *seq)).collect();
        let helpers = match targets.len() / PER_FAN_OUT_THREAD {
            0 | 1 => None,
            want => FanOutHelpers::take(want.min(self.cores) - 1),
        };
        let push = |share: &[(&Handle, u64)]| {
            share
                .iter()
                .filter(|(h, seq)| h.outbox.push_seq(template, *seq))
                .count()
        };
        let Some(helpers) = helpers else {
            return push(&targets);
        };
        let shares = Mutex::new(targets.chunks(PER_FAN_OUT_THREAD).collect::<Vec<_>>());
        let work = || {
            let mut n = 0;
            loop {
                // Popped in a statement of its own: the guard must not live through the share.
                let next = lock(&shares).pop();
                let Some(share) = next else { break n };
                n += push(share);
            }
        };
        let delivered = std::thread::scope(|s| {
            let started: Vec<_> = (0..helpers.count)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("tether-fan-out".into())
                        .spawn_scoped(s, work)
                        .ok()
                })
                .collect();
            let mut n = work();
            for h in started {
                n += h.join().expect("a fan-out thread panicked");
            }
            n
        });
        drop(helpers);
        delivered
    }
}
