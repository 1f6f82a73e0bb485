//! Upkeep: expiry, start-up recovery, and the figures of `/v1/health`, `/v1/stats` and
//! `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{Delivered, Entry, Inner, Ring};
use crate::codec;
use crate::model::{ConnRecord, ConnState, EventType, StoredDelivery, MAX_SEQ};
use crate::protocol::{Disconnect, FrameKind, FrameTemplate};
use crate::store::{Counts, RecoveryReport, StoreError, Sweep};
use crate::sync::lock;
use crate::time::now_ms;
use std::ops::Bound;

impl Inner {
    // ----- expiry and recovery -------------------------------------------------------

    pub(super) fn sweep(&self) -> Sweep {
        let now = now_ms();
        let grace = self.limits.resume_grace_seconds as i64 * 1000;
        let mut out = Sweep::default();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let mut gone = Vec::new();
            for (id, e) in shard.conns.iter() {
                match e.rec.state {
                    ConnState::Active if e.rec.expires_at <= now => {
                        out.expired
                            .extend(self.closing(&e.rec, Disconnect::expired()));
                    }
                    ConnState::Detached
                        if e.rec.detached_at.is_some_and(|t| t + grace <= now)
                            || e.rec.expires_at + grace <= now =>
                    {
                        gone.push(*id);
                    }
                    _ => {}
                }
            }
            for id in gone {
                self.drop_locked(
                    &mut shard,
                    &id,
                    EventType::Expired,
                    json!({"reason": "resume grace period over"}),
                );
                out.removed += 1;
            }
        }
        self.collect_garbage();
        out
    }

    pub(super) fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let now = now_ms();
        let mut report = RecoveryReport::default();
        // Written by earlier releases only: the listing's order is kept in memory now.
        self.trees.conns_by_user.clear()?;
        // Written by earlier releases only; nothing reads it.
        self.trees.conns_by_expiry.clear()?;
        for item in self.trees.conns.iter() {
            let (k, v) = item?;
            let decoded = codec::decode::<ConnRecord>(&v)
                .map_err(|e| e.to_string())
                .and_then(|r| r.check().map(|()| r));
            let mut rec = match decoded {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(key = ?k, error = %e, "skipping a stored connection that does not decode or holds what tether never writes; it is left in the store untouched");
                    report.unreadable += 1;
                    continue;
                }
            };
            if rec.state != ConnState::Detached {
                rec.state = ConnState::Detached;
                rec.detached_at = Some(now);
                self.events.log(
                    rec.id,
                    &rec.user.id,
                    EventType::Detached,
                    json!({"reason": "server restarted"}),
                );
            }
            self.persist(&rec);
            let idx = self.shard_of_user(&rec.user.id);
            let mut shard = lock(&self.shards[idx]);
            self.insert_locked(
                idx,
                &mut shard,
                Entry {
                    rec,
                    ring: Ring::default(),
                },
                false,
            );
            report.detached += 1;
        }
        self.recover_deliveries(&mut report)?;
        Ok(report)
    }

    /// Rebuilds every replay buffer from the `deliveries` tree (in delivery order, which is
    /// each connection's seq order), trims them to their bound, and raises a record's `seq`
    /// to the highest it was given (the record may have been written before its last
    /// delivery). Deliveries no buffer takes go to the garbage list.
    pub(super) fn recover_deliveries(&self, report: &mut RecoveryReport) -> Result<(), StoreError> {
        let mut by_key: HashMap<Uuid, Uuid> = HashMap::new();
        for shard in self.shards.iter() {
            for (id, e) in lock(shard).conns.iter() {
                by_key.insert(e.rec.replay_key, *id);
            }
        }
        let mut last = 0;
        for item in self.trees.deliveries.iter() {
            let (k, v) = item?;
            let Some(id) = k.as_ref().try_into().ok().map(u64::from_be_bytes) else {
                continue;
            };
            if id > MAX_SEQ {
                // Ids are numbered on from the last one: a damaged one must not set them.
                tracing::error!(
                    delivery = id,
                    "skipping a stored delivery numbered past 2^53; it is left in the store"
                );
                continue;
            }
            last = id;
            let decoded = codec::decode::<StoredDelivery>(&v)
                .map_err(|e| e.to_string())
                .and_then(|d| d.check().map(|()| d));
            let stored = match decoded {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(delivery = id, error = %e, "skipping a stored delivery that does not decode or holds what tether never writes; it is left in the store");
                    continue;
                }
            };
            let Some(kind) = FrameKind::parse(&stored.kind) else {
                tracing::error!(
                    delivery = id,
                    kind = stored.kind,
                    "skipping a delivery of an unknown kind"
                );
                continue;
            };
            let delivered = Arc::new(Delivered {
                id,
                template: FrameTemplate {
                    kind,
                    rest: stored.rest,
                },
                garbage: self.garbage.clone(),
            });
            for (key, seq) in stored.targets {
                let Some(conn) = by_key.get(&Uuid::from_bytes(key)) else {
                    continue;
                };
                self.with_entry(conn, |e| {
                    e.rec.seq = e.rec.seq.max(seq);
                    if seq > e.rec.acked {
                        e.ring.keep(seq, delivered.clone(), &self.limits);
                    }
                });
            }
            report.deliveries += 1;
        }
        self.next_delivery.store(last + 1, Ordering::SeqCst);
        Ok(())
    }

    // ----- figures -------------------------------------------------------------------

    pub(super) fn health(&self) -> Value {
        let mut by_state: HashMap<&'static str, u64> = HashMap::new();
        let mut by_type: HashMap<&'static str, u64> = HashMap::new();
        let mut by_version: HashMap<String, u64> = HashMap::new();
        let (mut active, mut detached, mut users) = (0u64, 0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            users += shard
                .users
                .values()
                .filter(|ids| {
                    ids.iter()
                        .any(|id| shard.conns.get(id).is_some_and(|e| e.live()))
                })
                .count() as u64;
            for e in shard.conns.values() {
                *by_state.entry(e.rec.state.as_str()).or_default() += 1;
                match e.rec.state {
                    ConnState::Detached => detached += 1,
                    ConnState::Active => active += 1,
                    _ => {}
                }
                if e.live() {
                    *by_type
                        .entry(e.rec.meta.connection_type.as_str())
                        .or_default() += 1;
                    let v = e
                        .rec
                        .meta
                        .client_version
                        .clone()
                        .unwrap_or_else(|| "unknown".into());
                    *by_version.entry(v).or_default() += 1;
                }
            }
        }
        json!({
            "activeConnections": active,
            "usersWithConnections": users,
            "detachedConnections": detached,
            "byConnectionType": by_type,
            "byState": by_state,
            "byClientVersion": by_version,
        })
    }

    pub(super) fn stats(&self) -> Value {
        let now = now_ms();
        let (mut total, mut active_users, mut dur_sum, mut dur_n) = (0u64, 0u64, 0i64, 0i64);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            total += shard.conns.len() as u64;
            for ids in shard.users.values() {
                if ids.iter().any(|id| {
                    shard
                        .conns
                        .get(id)
                        .is_some_and(|e| e.rec.state == ConnState::Active)
                }) {
                    active_users += 1;
                }
            }
            for e in shard
                .conns
                .values()
                .filter(|e| e.rec.state == ConnState::Active)
            {
                dur_sum += now - e.rec.connected_at;
                dur_n += 1;
            }
        }
        json!({
            "totalConnections": total,
            "activeUsers": active_users,
            "avgConnectionDuration": if dur_n == 0 { 0.0 } else { dur_sum as f64 / dur_n as f64 / 1000.0 },
        })
    }

    pub(super) fn counts(&self) -> Counts {
        let mut by_state: HashMap<&'static str, u64> = HashMap::new();
        let mut by_type: HashMap<&'static str, u64> = HashMap::new();
        for shard in self.shards.iter() {
            for e in lock(shard).conns.values() {
                *by_state.entry(e.rec.state.as_str()).or_default() += 1;
                *by_type
                    .entry(e.rec.meta.connection_type.as_str())
                    .or_default() += 1;
            }
        }
        let list = |m: HashMap<&str, u64>| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        (list(by_state), list(by_type))
    }

    /// A page of the connection listing: by user id (bytes), then connectedAt, then
    /// connection id, from after the connection `after` (from the start when it is gone),
    /// at most `limit`. Only `users` is read in order; each user's connections are copied
    /// out of their shard and ordered outside its lock.
    pub(super) fn list(
        &self,
        user: Option<&str>,
        after: Option<&Uuid>,
        limit: usize,
    ) -> Vec<Value> {
        // Where the page starts: the cursor's (user, connectedAt, id), or a user's first.
        let cursor = after
            .and_then(|a| self.with_entry(a, |e| (e.rec.user.id.clone(), e.rec.connected_at, *a)));
        let mut out = Vec::new();
        // The users still to list from: the cursor's own (past its connection), or the one
        // asked for, or all; after each batch, those past its last.
        let mut from: Bound<String> = match (&cursor, user) {
            (Some((u, _, _)), _) => Bound::Included(u.clone()),
            (None, Some(u)) => Bound::Included(u.to_string()),
            (None, None) => Bound::Unbounded,
        };
        while out.len() < limit {
            // The next users in order, a page's worth at a time, not the whole set.
            let batch: Vec<String> = {
                let users = lock(&self.users);
                // A user's own listing needs only that user.
                let want = if user.is_some() { 1 } else { limit - out.len() };
                users
                    .range::<String, _>((from.clone(), Bound::Unbounded))
                    .take(want)
                    .cloned()
                    .collect()
            };
            let Some(last) = batch.last().cloned() else {
                break;
            };
            for u in &batch {
                if user.is_some_and(|want| want != u) {
                    return out;
                }
                let mut conns: Vec<(i64, Uuid)> = {
                    let shard = lock(&self.shards[self.shard_of_user(u)]);
                    shard
                        .users
                        .get(u)
                        .map(|ids| {
                            ids.iter()
                                .filter_map(|id| {
                                    shard.conns.get(id).map(|e| (e.rec.connected_at, *id))
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                // A Uuid orders by its bytes: the order the sled index kept.
                conns.sort_unstable();
                for (at, id) in conns {
                    if let Some((cu, cat, cid)) = &cursor {
                        if cu == u && (at, id) <= (*cat, *cid) {
                            continue;
                        }
                    }
                    if let Some(info) = self.with_entry(&id, |e| self.info(&e.rec)) {
                        out.push(info);
                        if out.len() >= limit {
                            return out;
                        }
                    }
                }
            }
            if user.is_some() {
                break;
            }
            from = Bound::Excluded(last);
        }
        out
    }
}
