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

/// Old events removed per append, at most: one in the steady state; a log that must shrink
/// by more (a smaller `event_log_max`, numbers that jumped) catches up a few at a time, so
/// an append never does work its data decides.
const TRIM_PER_APPEND: usize = 8;

pub struct EventLog {
    tree: sled::Tree,
    /// The next seq. Taken with the timestamp under one lock, so seq order is time order
    /// (`query` relies on it to stop at `since`).
    next: std::sync::Mutex<u64>,
    /// No stored event is older than this (a lower bound: trimming raises it).
    oldest: AtomicU64,
    max: u64,
    bus: Arc<dyn Bus>,
    /// Events go to the bus from one task, in log order: `log` is called under the
    /// connection store's locks and must not wait.
    outgoing: tokio::sync::mpsc::UnboundedSender<Value>,
}

impl EventLog {
    /// Opens the log over `tree`; starts its publisher task on the current runtime.
    ///
    /// Events stored under a seq past 2^53 cannot be tether's (see [`MAX_SEQ`]): they are
    /// reported, left in the store untouched, and neither numbered from nor served.
    pub fn open(tree: sled::Tree, max: usize, bus: Arc<dyn Bus>) -> EventLog {
        let seq_of = |kv: Option<(sled::IVec, sled::IVec)>| {
            kv.and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
        };
        let damaged: Vec<u64> = tree
            .range(Self::past_max()..)
            .keys()
            .flatten()
            .take(10)
            .filter_map(|k| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .collect();
        if !damaged.is_empty() {
            tracing::error!(
                seqs = ?damaged,
                "the event log holds events numbered past 2^53, which tether never writes; \
                 they are left in the store untouched and are not served"
            );
        }
        let last = seq_of(
            tree.range(..Self::past_max())
                .next_back()
                .and_then(Result::ok),
        )
        .unwrap_or(0);
        let first =
            seq_of(tree.range(..Self::past_max()).next().and_then(Result::ok)).unwrap_or(last + 1);
        let (outgoing, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let publisher = bus.clone();
        tokio::spawn(async move {
            while let Some(v) = rx.recv().await {
                if let Err(e) = publisher.publish(BusEvent::Connection(v)).await {
                    tracing::warn!(error = %e, "a connection event was not published");
                }
            }
        });
        EventLog {
            tree,
            next: std::sync::Mutex::new(last + 1),
            oldest: AtomicU64::new(first),
            max: max as u64,
            bus,
            outgoing,
        }
    }

    /// Appends an event, trims the oldest past `event_log_max`, and publishes it on
    /// `connection:events`. A store failure is logged, never returned: losing a log line must
    /// not fail a connection.
    /// The first key past the seqs tether writes.
    fn past_max() -> [u8; 8] {
        (MAX_SEQ + 1).to_be_bytes()
    }

    pub fn log(&self, connection_id: Uuid, user_id: &str, event_type: EventType, details: Value) {
        let (seq, timestamp) = {
            let mut next = lock(&self.next);
            let seq = *next;
            *next = next.saturating_add(1);
            (seq, now_ms())
        };
        let ev = StoredEvent {
            seq,
            connection_id,
            user_id: user_id.to_string(),
            event_type,
            timestamp,
            details_json: details.to_string(),
        };
        match codec::encode(&ev) {
            Ok(bytes) => {
                if let Err(e) = self.tree.insert(seq.to_be_bytes(), bytes) {
                    tracing::warn!(error = %e, "cannot store a connection event");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a connection event"),
        }
        self.trim(seq);
        if self.bus.has_subscribers(Channel::ConnectionEvents) {
            let _ = self.outgoing.send(ev.to_json());
        }
    }

    /// Keeps the newest `max` events up to `seq`. It walks the keys that exist, never the
    /// numbers between them: seqs are not dense (a restore, a crash between a seq and its
    /// write), and a gap, however wide, must cost nothing. This runs under the connection
    /// store's locks.
    fn trim(&self, seq: u64) {
        let cutoff = seq.saturating_add(1).saturating_sub(self.max);
        if self.oldest.load(Ordering::SeqCst) >= cutoff {
            return;
        }
        let old: Vec<sled::IVec> = self
            .tree
            .range(..cutoff.to_be_bytes())
            .keys()
            .take(TRIM_PER_APPEND)
            .flatten()
            .collect();
        for k in &old {
            let _ = self.tree.remove(k);
        }
        if old.len() < TRIM_PER_APPEND {
            // Nothing older is left.
            self.oldest.fetch_max(cutoff, Ordering::SeqCst);
        }
    }

    fn query_sync(&self, q: &EventQuery) -> Vec<Value> {
        let mut out = Vec::new();
        for item in self.tree.range(..Self::past_max()).rev() {
            let Ok((_, v)) = item else { continue };
            let Ok(ev) = codec::decode::<StoredEvent>(&v) else {
                continue;
            };
            if q.since.is_some_and(|s| ev.timestamp < s) {
                break;
            }
            if q.connection_id.is_some_and(|c| c != ev.connection_id)
                || q.user_id.as_deref().is_some_and(|u| u != ev.user_id)
                || q.event_type.is_some_and(|t| t != ev.event_type)
            {
                continue;
            }
            out.push(ev.to_json());
            if out.len() >= q.limit {
                break;
            }
        }
        out.reverse();
        out
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
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
        EventLog::len(self)
    }
}
