//! Connections in the embedded store: the seed's ConnectionManager as state of record.
//!
//! Who is connected, as whom, linked to which session, with what metadata, their `seq`,
//! replay buffers and resume tokens. Lookups answer from memory; every change is written
//! through to sled (see [`super::trees`]) and made durable by group commit before the write
//! returns.
//!
//! Memory is sharded by user id, so everything about one user (the per-user limit, "all
//! connections of user X", a delivery to a user) takes one shard lock. A small second map,
//! sharded by connection id, says which shard holds a connection. The shard locks are std
//! mutexes: no critical section awaits, and the work inside is a hash-map operation plus a
//! sled insert into its in-memory log. The durability wait happens after the lock is let go.
//!
//! A delivery hands its frames to the sockets while it holds the user's shard, so two
//! deliveries to the same connection reach its socket in seq order.
//!
//! Lock order: a shard lock may take the locator, session-map and user-set locks inside it
//! (and the hub's, through a delivery's `sockets`); nothing takes a shard lock while holding
//! them.
//!
//! The work is split by what it does: [`admission`] (register, resume, activate, finish),
//! [`delivery`] (seq, replay buffers, frames to sockets), [`upkeep`] (expiry, recovery,
//! figures), and [`store`], the [`ConnStore`] trait over them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use uuid::Uuid;

mod admission;
mod delivery;
mod store;
mod upkeep;

use super::events::EventLog;
use super::trees::{keys, Trees};
use crate::codec;
use crate::durability::Flusher;
use crate::metrics::Metrics;
use crate::model::{ConnRecord, ConnState, EventType};
use crate::protocol::{Disconnect, FrameTemplate};
use crate::store::{Closing, Limits, Removed, StoreError};
use crate::sync::{hash_str, lock};
use crate::time::now_ms;

const SHARDS: usize = 64;

struct Entry {
    rec: ConnRecord,
    ring: Ring,
}

impl Entry {
    fn live(&self) -> bool {
        self.rec.state != ConnState::Detached
    }
}

/// A connection's replay buffer: the frames kept for a resume, oldest first, at most
/// `replay_buffer_messages` of them and `replay_buffer_bytes` of frames as the resume would
/// send them (the newest is kept whatever its size, so a message just accepted survives
/// until the next one). Each frame is shared with every other connection the same delivery
/// went to; the store holds one record per delivery (see [`Delivered`]).
#[derive(Default)]
struct Ring {
    frames: VecDeque<(u64, Arc<Delivered>)>,
    /// The rendered length of `frames`.
    bytes: usize,
}

impl Ring {
    /// Keeps `delivered` as `seq`, dropping the oldest past the limits.
    fn keep(&mut self, seq: u64, delivered: Arc<Delivered>, limits: &Limits) {
        self.bytes += delivered.template.rendered_len(seq);
        self.frames.push_back((seq, delivered));
        while self.frames.len() > limits.replay_buffer_messages as usize
            || (self.bytes > limits.replay_buffer_bytes && self.frames.len() > 1)
        {
            self.pop_front();
        }
    }

    /// Drops the frames up to `seq` (the client has them).
    fn drop_through(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|(s, _)| *s <= seq) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((seq, d)) = self.frames.pop_front() {
            self.bytes -= d.template.rendered_len(seq);
        }
    }

    /// The oldest seq kept.
    fn first(&self) -> Option<u64> {
        self.frames.front().map(|(s, _)| *s)
    }

    /// The kept frames after `seq`, rendered, in order.
    fn after(&self, seq: u64) -> Vec<(u64, String)> {
        self.frames
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(s, d)| (*s, d.template.render(*s)))
            .collect()
    }
}

/// One delivery (a message to a connection, a user or a session's connections), kept in
/// the `deliveries` tree as one record with every (connection, seq) it went to, and in the
/// replay buffer of each of those connections. A fan-out to 10,000 sockets is one store
/// write, not 10,000. When the last buffer lets go of it, its id goes to the garbage list
/// and the sweeper removes the record.
struct Delivered {
    id: u64,
    template: FrameTemplate,
    garbage: Arc<Mutex<Vec<u64>>>,
}

impl Drop for Delivered {
    fn drop(&mut self) {
        lock(&self.garbage).push(self.id);
    }
}

#[derive(Default)]
struct Shard {
    /// Boxed: a map's slack (it grows by doubling) then costs a pointer, not a record.
    conns: HashMap<Uuid, Box<Entry>>,
    /// Connection ids of each user, oldest first.
    users: HashMap<String, Vec<Uuid>>,
}

/// The embedded connection store.
#[derive(Clone)]
pub struct Conns {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    locator: Box<[Mutex<HashMap<Uuid, u8>>]>,
    sessions: Mutex<HashMap<String, Vec<Uuid>>>,
    /// Every user with a connection here, in byte order: the order the connection listing
    /// pages through (see `Inner::list`). Kept beside the shards' `users` maps, under their
    /// locks, like `sessions`.
    users: Mutex<BTreeSet<String>>,
    trees: Trees,
    flusher: Flusher,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// This node: the one that holds every socket of this store.
    node: String,
    /// Connections that are not Detached (counted against `max_total`).
    attached: AtomicUsize,
    /// Deliveries no buffer holds any more, for [`Inner::collect_garbage`].
    garbage: Arc<Mutex<Vec<u64>>>,
    /// The id of the next delivery (ids only grow, so the tree is in delivery order).
    next_delivery: AtomicU64,
}

enum ResumeRefusal {
    ForeignUser,
    Cannot(&'static str),
}

impl Conns {
    pub fn new(
        trees: Trees,
        flusher: Flusher,
        events: Arc<EventLog>,
        metrics: Arc<Metrics>,
        limits: Limits,
        node: String,
    ) -> Conns {
        Conns {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                locator: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                sessions: Mutex::new(HashMap::new()),
                users: Mutex::new(BTreeSet::new()),
                trees,
                flusher,
                events,
                metrics,
                limits,
                node,
                attached: AtomicUsize::new(0),
                garbage: Arc::new(Mutex::new(Vec::new())),
                next_delivery: AtomicU64::new(1),
            }),
        }
    }

    /// Holds every shard lock: no connection changes until the guards drop (backups).
    pub(super) fn freeze(&self) -> Vec<MutexGuard<'_, impl Sized>> {
        self.inner.shards.iter().map(lock).collect()
    }

    /// Writes every record back (their lazy fields: lastActivity, rate-limit state).
    pub(super) fn persist_all(&self) {
        let inner = &self.inner;
        for shard in inner.shards.iter() {
            for entry in lock(shard).conns.values() {
                inner.persist(&entry.rec);
            }
        }
    }

    async fn commit(&self) -> Result<(), StoreError> {
        self.inner.flusher.commit().await.map_err(StoreError::from)
    }

    /// Asked before a write that will be acknowledged: refused while the store cannot take
    /// writes (a disk under its reserve, a stalled or failed flush), before anything is
    /// written.
    fn admit_write(&self) -> Result<(), StoreError> {
        self.inner.flusher.admit().map_err(StoreError::from)
    }

    /// Runs `f` on a blocking thread (work that scans every shard).
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))
    }
}

impl Inner {
    fn shard_of_user(&self, user: &str) -> usize {
        hash_str(user) % SHARDS
    }

    fn locate(&self, id: &Uuid) -> Option<usize> {
        let slot = id.as_bytes()[15] as usize % SHARDS;
        lock(&self.locator[slot]).get(id).map(|s| *s as usize)
    }

    fn set_location(&self, id: Uuid, shard: Option<usize>) {
        let slot = id.as_bytes()[15] as usize % SHARDS;
        let mut m = lock(&self.locator[slot]);
        match shard {
            Some(s) => {
                m.insert(id, s as u8);
            }
            None => {
                m.remove(&id);
            }
        }
    }

    /// Runs `f` on the shard holding `id`, if any.
    fn with_shard<R>(&self, id: &Uuid, f: impl FnOnce(&mut Shard) -> R) -> Option<R> {
        let s = self.locate(id)?;
        let mut shard = lock(&self.shards[s]);
        if !shard.conns.contains_key(id) {
            return None;
        }
        Some(f(&mut shard))
    }

    /// Runs `f` on the entry of `id`, if any.
    fn with_entry<R>(&self, id: &Uuid, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.with_shard(id, |shard| f(shard.conns.get_mut(id).expect("checked")))
    }

    /// The node holding the socket of a record, for the API and for closes.
    fn node_of(&self, rec: &ConnRecord) -> Option<&str> {
        (rec.state != ConnState::Detached).then_some(self.node.as_str())
    }

    fn info(&self, rec: &ConnRecord) -> Value {
        rec.info_json(self.node_of(rec))
    }

    fn closing(&self, rec: &ConnRecord, d: Disconnect) -> Option<Closing> {
        self.node_of(rec).map(|node| Closing {
            id: rec.id,
            user: rec.user.id.clone(),
            node: Some(node.to_string()),
            disconnect: d,
        })
    }

    // ----- write-through -------------------------------------------------------------

    /// Writes a record. A write an answer depends on propagates its error; see
    /// [`Inner::persist`] for the lazy ones. A record is one insert: expiry has no index in
    /// the store (the sweeper finds it in memory), and neither has the listing's order by
    /// user (`users`, rebuilt from the records at start-up).
    fn write(&self, rec: &ConnRecord) -> Result<(), StoreError> {
        self.trees
            .conns
            .insert(keys::conn(&rec.id), codec::encode(rec)?)?;
        Ok(())
    }

    /// Writes back what nothing was acknowledged on (activity, the Active state, a detach):
    /// a failure is logged; the record as last written stays the truth.
    fn persist(&self, rec: &ConnRecord) {
        if let Err(e) = self.write(rec) {
            tracing::error!(error = %e, connection = %rec.id, "cannot store a connection");
        }
    }

    fn unpersist(&self, rec: &ConnRecord) {
        let _ = self.trees.conns.remove(keys::conn(&rec.id));
    }

    /// Removes the delivery records no replay buffer holds any more (the sweeper calls it,
    /// outside every shard lock).
    fn collect_garbage(&self) {
        let ids = std::mem::take(&mut *lock(&self.garbage));
        if ids.is_empty() {
            return;
        }
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.to_be_bytes()[..]);
        }
        if let Err(e) = self.trees.deliveries.apply_batch(batch) {
            tracing::error!(error = %e, "cannot remove finished deliveries");
        }
    }

    // ----- shard bookkeeping ---------------------------------------------------------

    /// Adds `entry` to the shard and its indexes. A connection that is not Detached counts
    /// as attached, unless `reserved`: `admit` has counted it already, when it checked
    /// `max_total`.
    fn insert_locked(&self, shard_idx: usize, shard: &mut Shard, entry: Entry, reserved: bool) {
        let id = entry.rec.id;
        if let Some(sid) = &entry.rec.session_id {
            lock(&self.sessions)
                .entry(sid.clone())
                .or_default()
                .push(id);
        }
        if entry.live() && !reserved {
            self.attached.fetch_add(1, Ordering::Relaxed);
        }
        let list = match shard.users.entry(entry.rec.user.id.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                lock(&self.users).insert(v.key().clone());
                v.insert(Vec::new())
            }
        };
        // Oldest first: resumed records keep their old connectedAt. A new connection is
        // the newest, so the list is searched only when the last one is newer (a resume).
        let newer = |other: &Uuid| {
            shard
                .conns
                .get(other)
                .is_some_and(|e| e.rec.connected_at > entry.rec.connected_at)
        };
        let pos = match list.last() {
            Some(last) if newer(last) => list.iter().position(newer).unwrap_or(list.len()),
            _ => list.len(),
        };
        list.insert(pos, id);
        shard.conns.insert(id, Box::new(entry));
        self.set_location(id, Some(shard_idx));
    }

    fn remove_locked(&self, shard: &mut Shard, id: &Uuid) -> Option<Entry> {
        let entry = *shard.conns.remove(id)?;
        if let Some(list) = shard.users.get_mut(&entry.rec.user.id) {
            list.retain(|c| c != id);
            if list.is_empty() {
                shard.users.remove(&entry.rec.user.id);
                lock(&self.users).remove(&entry.rec.user.id);
            }
        }
        if let Some(sid) = &entry.rec.session_id {
            let mut sessions = lock(&self.sessions);
            if let Some(list) = sessions.get_mut(sid) {
                list.retain(|c| c != id);
                if list.is_empty() {
                    sessions.remove(sid);
                }
            }
        }
        if entry.live() {
            self.attached.fetch_sub(1, Ordering::Relaxed);
        }
        self.set_location(*id, None);
        Some(entry)
    }

    /// Removes a connection for good: memory, store, replay buffer; logs `event`.
    fn drop_locked(
        &self,
        shard: &mut Shard,
        id: &Uuid,
        event: EventType,
        details: Value,
    ) -> Option<Entry> {
        let entry = self.remove_locked(shard, id)?;
        self.unpersist(&entry.rec);
        self.metrics
            .connection_closed(now_ms() - entry.rec.connected_at);
        self.events
            .log(entry.rec.id, &entry.rec.user.id, event, details);
        Some(entry)
    }

    fn remove_now(&self, id: &Uuid, d: &Disconnect, event: EventType) -> Option<Removed> {
        self.with_shard(id, |shard| {
            let details = json!({"code": d.code.as_u16(), "reason": d.reason});
            let entry = self.drop_locked(shard, id, event, details)?;
            Some(Removed {
                closing: self.closing(&entry.rec, d.clone()),
            })
        })
        .flatten()
    }
}
