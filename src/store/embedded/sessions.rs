//! Server-side sessions in the embedded store.
//!
//! The `sessions` tree is the truth; `sessions_by_user` is an index. Every change is
//! published on the bus once the write is durable ([`publisher`]), in the order of the
//! session's writes.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::trees::{keys, Trees};
use crate::auth::new_session_id;
use crate::bus::{Bus, BusEvent, SessionEvent};
use crate::codec;
use crate::durability::Flusher;
use crate::model::{SessionRecord, Source};
use crate::store::{
    merge_patch, NewSession, SessionError, SessionLimits, SessionPatch, SessionStore, StoreError,
};
use crate::sync::{hash_str, lock};
use crate::time::{now_ms, rfc3339};

const STRIPES: usize = 64;

#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken by every write, and by a backup to hold writes off while it copies.
    write: Mutex<()>,
    trees: Trees,
    /// Events wait here until the write they describe is durable (see [`publisher`]).
    outgoing: tokio::sync::mpsc::UnboundedSender<(BusEvent, u64)>,
    flusher: Flusher,
    limits: SessionLimits,
    /// Writers of one session take its stripe (before `write`). An update is
    /// read-merge-write, so two at once (a PATCH and a `session.update`, say) would lose
    /// one of them, and an update racing a delete or the sweeper could put a removed
    /// session back. Publishing under the stripe also puts a session's bus events in the
    /// order of its writes. Std mutexes: nothing awaits inside.
    stripes: Box<[Mutex<()>]>,
    /// A create takes its user's stripe (before `write`), so that two at once cannot both
    /// take the last of `max_sessions_per_user`. Nothing else takes these.
    user_stripes: Box<[Mutex<()>]>,
}

impl Sessions {
    /// Starts the publisher task on the current runtime.
    pub fn new(
        trees: Trees,
        bus: Arc<dyn Bus>,
        flusher: Flusher,
        limits: SessionLimits,
    ) -> Sessions {
        let (outgoing, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(publisher(rx, bus, flusher.clone()));
        Sessions {
            inner: Arc::new(Inner {
                flusher,
                write: Default::default(),
                trees,
                outgoing,
                limits,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                user_stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            }),
        }
    }

    /// Holds session writes off until the guard drops.
    pub(super) fn freeze(&self) -> MutexGuard<'_, ()> {
        lock(&self.inner.write)
    }

    async fn commit(&self) -> Result<(), StoreError> {
        self.inner.flusher.commit().await.map_err(StoreError::from)
    }

    /// Refused before anything is written while the store cannot take writes.
    fn admit_write(&self) -> Result<(), StoreError> {
        self.inner.flusher.admit().map_err(StoreError::from)
    }
}

fn event(s: &SessionRecord, source: Source, connection: Option<uuid::Uuid>) -> SessionEvent {
    SessionEvent {
        session_id: s.id.clone(),
        user_id: s.user_id.clone(),
        updates: None,
        source,
        timestamp: rfc3339(now_ms()),
        connection_id: connection,
    }
}

impl Inner {
    /// Publishes once the write before it is durable, in the order of the calls.
    fn publish(&self, event: BusEvent) {
        // The receiver lives as long as the runtime; a send after shutdown has no reader.
        let _ = self.outgoing.send((event, self.flusher.ticket()));
    }

    fn stripe(&self, id: &str) -> MutexGuard<'_, ()> {
        lock(&self.stripes[hash_str(id) % STRIPES])
    }

    fn put(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let _w = lock(&self.write);
        self.trees
            .sessions
            .insert(s.id.as_bytes(), codec::encode(s)?)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Option<SessionRecord> {
        let v = self.trees.sessions.get(id.as_bytes()).ok()??;
        let s: SessionRecord = codec::decode(&v).ok()?;
        (s.expires_at > now_ms()).then_some(s)
    }

    fn remove(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let _w = lock(&self.write);
        self.trees.sessions.remove(s.id.as_bytes())?;
        self.trees
            .sessions_by_user
            .remove(keys::pair(&s.user_id, &s.id))?;
        Ok(())
    }

    /// How many live sessions `user` has, counting no further than `max_per_user`: the
    /// index alone while it is under the cap; past it, expired ones the sweeper has not
    /// removed yet do not count.
    fn live_sessions(&self, user: &str) -> usize {
        let ids = || {
            self.trees
                .sessions_by_user
                .scan_prefix(keys::user_prefix(user))
                .keys()
                .flatten()
        };
        let max = self.limits.max_per_user;
        let indexed = ids().take(max).count();
        if indexed < max {
            return indexed;
        }
        ids()
            .filter(|k| {
                std::str::from_utf8(&k[user.len() + 1..]).is_ok_and(|sid| self.get(sid).is_some())
            })
            .take(max)
            .count()
    }

    fn create(&self, new: NewSession) -> Result<SessionRecord, SessionError> {
        let data_json = self.limits.check_data(&new.data)?;
        let _user = lock(&self.user_stripes[hash_str(&new.user_id) % STRIPES]);
        let max = self.limits.max_per_user;
        if self.live_sessions(&new.user_id) >= max {
            return Err(SessionError::TooMany { max });
        }
        let now = now_ms();
        let ttl = new.ttl_seconds.unwrap_or(self.limits.ttl_seconds);
        let s = SessionRecord {
            id: new_session_id(),
            user_id: new.user_id,
            created_at: now,
            expires_at: now.saturating_add((ttl as i64).saturating_mul(1000)),
            last_seen: now,
            data_json,
            permissions: new.permissions,
            device_json: new.device.to_string(),
        };
        self.put(&s)?;
        self.trees
            .sessions_by_user
            .insert(keys::pair(&s.user_id, &s.id), &[])?;
        self.publish(BusEvent::SessionCreated(event(&s, Source::Http, None)));
        Ok(s)
    }

    fn update(&self, id: &str, patch: SessionPatch<'_>) -> Result<SessionRecord, SessionError> {
        let _write = self.stripe(id);
        let mut s = self.get(id).ok_or(SessionError::Unknown)?;
        let now = now_ms();
        let updates = match patch.data {
            Some(p) => Value::Object(p.clone()),
            None => json!({}),
        };
        if patch.data.is_some() {
            let mut current: Value = serde_json::from_str(&s.data_json).unwrap_or(json!({}));
            merge_patch(&mut current, &updates);
            // Checked on the merged data: a patch that removes keys makes room.
            s.data_json = self.limits.check_data(&current)?;
        }
        if let Some(ttl) = patch.ttl_seconds {
            s.expires_at = now.saturating_add((ttl as i64).saturating_mul(1000));
        }
        s.last_seen = now;
        self.put(&s)?;
        let mut e = event(&s, patch.source, patch.connection);
        e.updates = Some(updates);
        self.publish(BusEvent::SessionUpdated(e));
        Ok(s)
    }

    fn delete(&self, id: &str) -> Result<SessionRecord, SessionError> {
        let _write = self.stripe(id);
        let s = self.get(id).ok_or(SessionError::Unknown)?;
        self.remove(&s)?;
        self.publish(BusEvent::SessionDeleted(event(&s, Source::Http, None)));
        Ok(s)
    }

    fn list_user(&self, user: &str) -> Vec<SessionRecord> {
        self.trees
            .sessions_by_user
            .scan_prefix(keys::user_prefix(user))
            .keys()
            .flatten()
            .filter_map(|k| {
                let sid = std::str::from_utf8(&k[user.len() + 1..]).ok()?.to_string();
                self.get(&sid)
            })
            .collect()
    }

    fn list_user_page(&self, user: &str, after: Option<&str>, limit: usize) -> Vec<SessionRecord> {
        let prefix = keys::user_prefix(user);
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(keys::pair(user, a)),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        self.trees
            .sessions_by_user
            .range((start, std::ops::Bound::Unbounded))
            .keys()
            .flatten()
            .take_while(|k| k.starts_with(&prefix))
            .filter_map(|k| {
                let sid = std::str::from_utf8(&k[prefix.len()..]).ok()?.to_string();
                self.get(&sid)
            })
            .take(limit)
            .collect()
    }

    fn delete_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for s in self.list_user(user) {
            let _write = self.stripe(&s.id);
            // Gone meanwhile (deleted or swept): that one has been published already.
            let Some(s) = self.get(&s.id) else { continue };
            self.remove(&s)?;
            self.publish(BusEvent::SessionDeleted(event(&s, Source::Http, None)));
            n += 1;
        }
        Ok(n)
    }

    fn sweep(&self) -> usize {
        let now = now_ms();
        let mut n = 0;
        for item in self.trees.sessions.iter() {
            let Ok((_, v)) = item else { continue };
            let Ok(s) = codec::decode::<SessionRecord>(&v) else {
                continue;
            };
            if s.expires_at > now {
                continue;
            }
            // Read again under the stripe: an update may have extended it, or a delete
            // removed it, since the scan saw it.
            let _write = self.stripe(&s.id);
            let Some(s) = self
                .trees
                .sessions
                .get(s.id.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| codec::decode::<SessionRecord>(&v).ok())
            else {
                continue;
            };
            if s.expires_at <= now && self.remove(&s).is_ok() {
                self.publish(BusEvent::SessionExpired(event(&s, Source::Http, None)));
                n += 1;
            }
        }
        n
    }
}

#[async_trait]
impl SessionStore for Sessions {
    async fn create(&self, new: NewSession) -> Result<SessionRecord, SessionError> {
        self.admit_write()?;
        let s = self.inner.create(new)?;
        self.commit().await?;
        Ok(s)
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.inner.get(id))
    }

    async fn update(
        &self,
        id: &str,
        patch: SessionPatch<'_>,
    ) -> Result<SessionRecord, SessionError> {
        self.admit_write()?;
        let s = self.inner.update(id, patch)?;
        self.commit().await?;
        Ok(s)
    }

    async fn delete(&self, id: &str) -> Result<SessionRecord, SessionError> {
        self.admit_write()?;
        let s = self.inner.delete(id)?;
        self.commit().await?;
        Ok(s)
    }

    async fn list_user(&self, user: &str) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.inner.list_user(user))
    }

    async fn list_user_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.inner.list_user_page(user, after, limit))
    }

    async fn delete_user(&self, user: &str) -> Result<usize, StoreError> {
        self.admit_write()?;
        let n = self.inner.delete_user(user)?;
        self.commit().await?;
        Ok(n)
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        let n = tokio::task::spawn_blocking(move || inner.sweep())
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?;
        if n > 0 {
            self.commit().await?;
        }
        Ok(n)
    }

    async fn count(&self) -> usize {
        self.inner.trees.sessions.len()
    }
}

/// Publishes session events only after the writes they describe are on disk (per the
/// durability mode), so no connection is told of a change that a crash could still undo.
/// Whatever is queued when a flush starts is published together after it, in order.
async fn publisher(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(BusEvent, u64)>,
    bus: Arc<dyn Bus>,
    flusher: Flusher,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        // The newest write's flush covers the older ones.
        let ticket = batch.iter().map(|(_, t)| *t).max().unwrap_or(0);
        if let Err(e) = flusher.wait(ticket).await {
            // Held back, not dropped: the next flush that succeeds covers these writes too.
            tracing::error!(error = %e, "session events held back: the store refused a flush");
            continue;
        }
        for (event, _) in batch.drain(..) {
            if let Err(e) = bus.publish(event).await {
                tracing::error!(error = %e, "a session event was not published");
            }
        }
    }
}
