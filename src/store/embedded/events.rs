//! The connection event log (`logConnectionEvent`): a bounded sled tree, mirrored on the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::bus::{Bus, BusEvent, Channel};
use crate::codec;
use crate::model::{EventType, StoredEvent, MAX_SEQ};
use crate::store::{EventQuery, EventStore, StoreError};
use crate::sync::lock;
use crate::time::now_ms;

/// Old keys removed per event written, at most: a log that must shrink by more than it
/// grows (a smaller `event_log_max`, numbers that jumped) catches up a few at a time, so a
/// write never does work its data decides.
const TRIM_PER_EVENT: usize = 8;

/// How often events logged with no flush coming (a dropped socket's `detached`) are written
/// to sled anyway.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The seqs a key of the `events` tree holds: an 8-byte key one event (`seq`), a 16-byte key
/// a batch (`first`, `last`, every seq between them). Big-endian, so the tree's order is
/// seq order either way. `None` for a key of another length.
pub fn key_span(k: &[u8]) -> Option<(u64, u64)> {
    let be = |b: &[u8]| b.try_into().ok().map(u64::from_be_bytes);
    match k.len() {
        8 => be(k).map(|s| (s, s)),
        16 => Some((be(&k[..8])?, be(&k[8..])?)),
        _ => None,
    }
}

/// The events a stored value holds: one for an 8-byte key, a batch for a 16-byte one.
pub fn decode_value(k: &[u8], v: &[u8]) -> Result<Vec<StoredEvent>, codec::CodecError> {
    if k.len() == 16 {
        codec::decode::<Vec<StoredEvent>>(v)
    } else {
        codec::decode::<StoredEvent>(v).map(|e| vec![e])
    }
}

/// The key and value that store `events` (consecutive seqs, oldest first): an event alone
/// under its 8-byte seq, more as one batch under a 16-byte key.
fn entry(events: &[StoredEvent]) -> Result<(Vec<u8>, Vec<u8>), codec::CodecError> {
    let (first, last) = match (events.first(), events.last()) {
        (Some(f), Some(l)) => (f.seq, l.seq),
        _ => return Err(codec::CodecError::Encode("no events".into())),
    };
    let mut key = first.to_be_bytes().to_vec();
    if events.len() == 1 {
        return Ok((key, codec::encode(&events[0])?));
    }
    key.extend_from_slice(&last.to_be_bytes());
    Ok((key, codec::encode(&events)?))
}

/// The newest seq `tree` holds below 2^53 (0 when none).
pub fn high_water(tree: &sled::Tree) -> u64 {
    tree.range(..EventLog::past_max())
        .keys()
        .next_back()
        .and_then(Result::ok)
        .and_then(|k| key_span(&k))
        .map_or(0, |(_, last)| last)
}

/// How many events the keys of `tree` below 2^53 hold (`tether inspect`, start-up).
pub fn count_in(tree: &sled::Tree) -> u64 {
    tree.range(..EventLog::past_max())
        .keys()
        .flatten()
        .filter_map(|k| key_span(&k))
        .map(|(first, last)| last.saturating_sub(first) + 1)
        .sum()
}

/// Events logged and not yet in sled, with the next seq: taken together under one lock,
/// so the pending events' seqs are consecutive and in time order.
struct Pending {
    next: u64,
    events: Vec<StoredEvent>,
}

/// The connection event log.
///
/// An event costs a push into memory, not a sled insert: the events logged since the last
/// write go to sled as one batch (one key, `key_span`) just before every flush of the store
/// (see [`EventLog::drain`]), so an event is as durable as the write it was logged with,
/// and at the latest [`DRAIN_EVERY`] after it was logged otherwise. A query or a count
/// writes the pending ones first. Appending 10,000 connects' events one insert each was
/// about a tenth of the server's CPU per connect (sled's leaf at the log's end is rewritten
/// at every insert and split at every eighth).
pub struct EventLog {
    tree: sled::Tree,
    pending: std::sync::Mutex<Pending>,
    /// One drain at a time: batches go in in seq order, and trimming sees a settled tree.
    draining: std::sync::Mutex<()>,
    /// Events in the tree (pending ones are not).
    stored: AtomicU64,
    /// No stored event is older than this (a lower bound: trimming raises it).
    oldest: AtomicU64,
    max: u64,
    bus: Arc<dyn Bus>,
    /// Events go to the bus from one task, in log order: `log` is called under the
    /// connection store's locks and must not wait.
    outgoing: tokio::sync::mpsc::UnboundedSender<Value>,
}

impl EventLog {
    /// Opens the log over `tree`; starts its publisher and drain tasks on the current
    /// runtime.
    ///
    /// Events stored under a seq past 2^53 cannot be tether's (see [`MAX_SEQ`]): they are
    /// reported, left in the store untouched, and neither numbered from nor served.
    pub fn open(tree: sled::Tree, max: usize, bus: Arc<dyn Bus>) -> Arc<EventLog> {
        let damaged: Vec<u64> = tree
            .range(Self::past_max()..)
            .keys()
            .flatten()
            .take(10)
            .filter_map(|k| key_span(&k).map(|(first, _)| first))
            .collect();
        if !damaged.is_empty() {
            tracing::error!(
                seqs = ?damaged,
                "the event log holds events numbered past 2^53, which tether never writes; \
                 they are left in the store untouched and are not served"
            );
        }
        let last = high_water(&tree);
        let first = tree
            .range(..Self::past_max())
            .keys()
            .next()
            .and_then(Result::ok)
            .and_then(|k| key_span(&k))
            .map_or(last + 1, |(first, _)| first);
        let stored = count_in(&tree);
        let (outgoing, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let publisher = bus.clone();
        tokio::spawn(async move {
            while let Some(v) = rx.recv().await {
                if let Err(e) = publisher.publish(BusEvent::Connection(v)).await {
                    tracing::warn!(error = %e, "a connection event was not published");
                }
            }
        });
        let log = Arc::new(EventLog {
            tree,
            pending: std::sync::Mutex::new(Pending {
                next: last + 1,
                events: Vec::new(),
            }),
            draining: std::sync::Mutex::new(()),
            stored: AtomicU64::new(stored),
            oldest: AtomicU64::new(first),
            max: max as u64,
            bus,
            outgoing,
        });
        let weak = Arc::downgrade(&log);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DRAIN_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(log) = weak.upgrade() else { return };
                if lock(&log.pending).events.is_empty() {
                    continue;
                }
                // A sled insert can wait on its IO buffers: not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || log.drain()).await;
            }
        });
        log
    }

    /// The first key past the seqs tether writes.
    fn past_max() -> [u8; 8] {
        (MAX_SEQ + 1).to_be_bytes()
    }

    /// Appends an event and publishes it on `connection:events`. It reaches sled with the
    /// next [`EventLog::drain`]; a store failure then is logged, never returned: losing a
    /// log line must not fail a connection.
    pub fn log(&self, connection_id: Uuid, user_id: &str, event_type: EventType, details: Value) {
        let mut ev = StoredEvent {
            seq: 0,
            connection_id,
            user_id: user_id.to_string(),
            event_type,
            timestamp: 0,
            details_json: details.to_string(),
        };
        // Only the numbering and the push under the lock; the bus's copy is made after it.
        let (seq, timestamp) = {
            let mut pending = lock(&self.pending);
            ev.seq = pending.next;
            ev.timestamp = now_ms();
            pending.next = pending.next.saturating_add(1);
            let numbered = (ev.seq, ev.timestamp);
            pending.events.push(ev);
            numbered
        };
        if self.bus.has_subscribers(Channel::ConnectionEvents) {
            let shown =
                StoredEvent::json(seq, connection_id, user_id, event_type, timestamp, details);
            let _ = self.outgoing.send(shown);
        }
    }

    /// Has `flusher` drain this log just before each of its flushes (see
    /// [`crate::durability::Flusher::before_flush`]): how the store wires it.
    pub fn drain_before_flushes(self: &Arc<Self>, flusher: &crate::durability::Flusher) {
        let log = Arc::downgrade(self);
        flusher.before_flush(move || {
            if let Some(log) = log.upgrade() {
                log.drain();
            }
        });
    }

    /// Writes the pending events to sled as one key, then trims the oldest past
    /// `event_log_max`. The store's flusher calls it just before each flush, so everything
    /// logged before a write's ticket is in that write's flush. Blocking (sled).
    pub fn drain(&self) {
        let _one = lock(&self.draining);
        let events = std::mem::take(&mut lock(&self.pending).events);
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let n = events.len() as u64;
        match entry(&events) {
            Ok((key, value)) => match self.tree.insert(key, value) {
                Ok(_) => {
                    self.stored.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!(error = %e, events = n, "cannot store connection events"),
            },
            Err(e) => tracing::warn!(error = %e, events = n, "cannot encode connection events"),
        }
        self.trim(last, TRIM_PER_EVENT.saturating_mul(events.len()));
    }

    /// Keeps the newest `max` events up to `seq`, removing at most `budget` keys. It walks
    /// the keys that exist, never the numbers between them: seqs are not dense (a restore,
    /// a crash between a seq and its write), and a gap, however wide, must cost nothing. A
    /// batch that straddles the cutoff is written again without its older events.
    fn trim(&self, seq: u64, budget: usize) {
        let cutoff = seq.saturating_add(1).saturating_sub(self.max);
        if self.oldest.load(Ordering::SeqCst) >= cutoff {
            return;
        }
        let mut removed = 0;
        for item in self.tree.range(..cutoff.to_be_bytes()) {
            if removed >= budget {
                return;
            }
            let Ok((k, v)) = item else { return };
            let Some((first, last)) = key_span(&k) else {
                continue;
            };
            if last >= cutoff {
                // A batch from before the cutoff to after it: keep its newer part.
                let kept: Vec<StoredEvent> = match decode_value(&k, &v) {
                    Ok(evs) => evs.into_iter().filter(|e| e.seq >= cutoff).collect(),
                    Err(e) => {
                        // Its older part would go now anyway, and none of it can be served:
                        // left in place, it would stop the trimming for good.
                        tracing::error!(error = %e, first, last, "removing a batch of connection events that does not decode");
                        if self.tree.remove(&k).is_ok() {
                            self.stored
                                .fetch_sub(last.saturating_sub(first) + 1, Ordering::SeqCst);
                        }
                        break;
                    }
                };
                let Ok((key, value)) = entry(&kept) else {
                    return;
                };
                if self.tree.insert(key, value).is_ok() && self.tree.remove(&k).is_ok() {
                    self.stored.fetch_sub(cutoff - first, Ordering::SeqCst);
                }
                break;
            }
            if self.tree.remove(&k).is_ok() {
                self.stored
                    .fetch_sub(last.saturating_sub(first) + 1, Ordering::SeqCst);
            }
            removed += 1;
        }
        // Nothing older is left.
        self.oldest.fetch_max(cutoff, Ordering::SeqCst);
    }

    fn query_sync(&self, q: &EventQuery) -> Vec<Value> {
        self.drain();
        let mut out = Vec::new();
        'keys: for item in self.tree.range(..Self::past_max()).rev() {
            let Ok((k, v)) = item else { continue };
            let Ok(events) = decode_value(&k, &v) else {
                continue;
            };
            for ev in events.iter().rev() {
                if q.since.is_some_and(|s| ev.timestamp < s) {
                    break 'keys;
                }
                if q.connection_id.is_some_and(|c| c != ev.connection_id)
                    || q.user_id.as_deref().is_some_and(|u| u != ev.user_id)
                    || q.event_type.is_some_and(|t| t != ev.event_type)
                {
                    continue;
                }
                out.push(ev.to_json());
                if out.len() >= q.limit {
                    break 'keys;
                }
            }
        }
        out.reverse();
        out
    }

    /// Events kept, once the pending ones are written. Blocking (sled).
    pub fn len(&self) -> usize {
        self.drain();
        self.stored.load(Ordering::SeqCst) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl EventStore for Arc<EventLog> {
    fn log(&self, connection_id: Uuid, user_id: &str, event_type: EventType, details: Value) {
        EventLog::log(self, connection_id, user_id, event_type, details)
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Value>, StoreError> {
        let me = self.clone();
        let q = q.clone();
        tokio::task::spawn_blocking(move || me.query_sync(&q))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))
    }

    async fn count(&self) -> usize {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.len())
            .await
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MemoryBus;
    use serde_json::json;

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("events").unwrap();
        (dir, tree)
    }

    fn seqs(log: &EventLog) -> Vec<u64> {
        log.query_sync(&EventQuery {
            limit: 10_000,
            ..Default::default()
        })
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
    }

    fn keys(tree: &sled::Tree) -> Vec<(u64, u64)> {
        tree.iter()
            .keys()
            .map(|k| key_span(&k.unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn events_go_to_sled_as_one_batch_per_drain_and_read_back_in_order() {
        let (_dir, tree) = tree();
        let log = EventLog::open(tree.clone(), 100, Arc::new(MemoryBus::new(4)));
        let id = Uuid::new_v4();
        for n in 0..5 {
            log.log(id, "ann", EventType::Connected, json!({ "n": n }));
        }
        assert!(tree.is_empty(), "nothing is written before a drain");
        log.drain();
        assert_eq!(keys(&tree), vec![(1, 5)], "one key for the five");
        log.log(id, "ann", EventType::Detached, json!({}));
        log.drain();
        assert_eq!(
            keys(&tree),
            vec![(1, 5), (6, 6)],
            "one event alone: an 8-byte key"
        );
        assert_eq!(seqs(&log), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(log.len(), 6);
        // A query writes what is pending first.
        log.log(id, "ann", EventType::Expired, json!({}));
        assert_eq!(seqs(&log), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(count_in(&tree), 7);
    }

    #[tokio::test]
    async fn the_bound_holds_exactly_across_batches_and_numbering_goes_on_after_a_reopen() {
        let (_dir, tree) = tree();
        // A log written one event per key, as earlier releases did.
        for seq in 1..=4u64 {
            let ev = StoredEvent {
                seq,
                connection_id: Uuid::nil(),
                user_id: "old".into(),
                event_type: EventType::Connected,
                timestamp: 1,
                details_json: "{}".into(),
            };
            tree.insert(seq.to_be_bytes(), codec::encode(&ev).unwrap())
                .unwrap();
        }
        let log = EventLog::open(tree.clone(), 6, Arc::new(MemoryBus::new(4)));
        assert_eq!(log.len(), 4);
        for _ in 0..3 {
            log.log(Uuid::nil(), "new", EventType::Connected, json!({}));
        }
        log.drain();
        // 7 events, 6 kept: the oldest single key goes.
        assert_eq!(seqs(&log), vec![2, 3, 4, 5, 6, 7]);
        for _ in 0..4 {
            log.log(Uuid::nil(), "new", EventType::Connected, json!({}));
        }
        log.drain();
        // 11 events, 6 kept: the singles go, and the batch 5..7 keeps 6 and 7.
        assert_eq!(seqs(&log), vec![6, 7, 8, 9, 10, 11]);
        assert_eq!(keys(&tree), vec![(6, 7), (8, 11)]);
        assert_eq!(log.len(), 6);
        drop(log);
        let log = EventLog::open(tree.clone(), 6, Arc::new(MemoryBus::new(4)));
        assert_eq!(log.len(), 6);
        log.log(Uuid::nil(), "new", EventType::Connected, json!({}));
        assert_eq!(
            seqs(&log),
            vec![7, 8, 9, 10, 11, 12],
            "numbered on from the last"
        );
    }

    #[tokio::test]
    async fn a_damaged_batch_across_the_cutoff_does_not_stop_the_trimming() {
        let (_dir, tree) = tree();
        let log = EventLog::open(tree.clone(), 4, Arc::new(MemoryBus::new(4)));
        for _ in 0..3 {
            log.log(Uuid::nil(), "u", EventType::Connected, json!({}));
        }
        log.drain();
        // The batch 1..3 is damaged on disk.
        let key: Vec<u8> = [1u64.to_be_bytes(), 3u64.to_be_bytes()].concat();
        tree.insert(&key, vec![codec::FORMAT_VERSION, 0xff, 0xff])
            .unwrap();
        for _ in 0..3 {
            log.log(Uuid::nil(), "u", EventType::Connected, json!({}));
        }
        log.drain();
        // 6 events, 4 kept: the damaged batch straddles the cutoff (3) and goes.
        assert_eq!(keys(&tree), vec![(4, 6)]);
        assert_eq!(seqs(&log), vec![4, 5, 6]);
        for _ in 0..2 {
            log.log(Uuid::nil(), "u", EventType::Connected, json!({}));
        }
        assert_eq!(seqs(&log), vec![5, 6, 7, 8], "trimming goes on");
    }
}
