//! The connection store's trait: each method one locked step on [`Inner`], then the
//! durability wait outside every lock.

use async_trait::async_trait;
use serde_json::{json, Value};
use uuid::Uuid;

use super::Conns;
use crate::auth::AuthUser;
use crate::model::{ConnRecord, ConnState, EventType};
use crate::protocol::{Disconnect, Fate, FrameTemplate};
use crate::store::{
    Activation, Activity, AdmitError, Admitted, ConnStore, Counts, Delivery, Limits, MetadataPatch,
    MigrateError, NewConn, RecoveryReport, Removed, Sockets, StoreError, Sweep, Target,
};
use crate::sync::lock;
use crate::time::now_ms;

pub(super) fn apply_activity(rec: &mut ConnRecord, a: Activity) {
    rec.meta.last_activity = a.last_seen;
    rec.meta.rate_limit.last_reset = a.window_start;
    rec.meta.rate_limit.count = a.window_count;
}

#[async_trait]
impl ConnStore for Conns {
    fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    async fn admit(&self, new: NewConn, _node: &str) -> Result<Admitted, AdmitError> {
        self.admit_write()?;
        let admitted = self.inner.admit_locked(new)?;
        if let Err(e) = self.commit().await {
            // Never half admitted: the record goes, and with it its `max_total` slot.
            tracing::error!(error = %e, "cannot make a connection durable");
            self.inner
                .remove_now(&admitted.id, &Disconnect::server_full(), EventType::Error);
            return Err(AdmitError::Store(e));
        }
        Ok(admitted)
    }

    async fn activate(
        &self,
        id: &Uuid,
        replay_after: u64,
    ) -> Result<Option<Activation>, StoreError> {
        Ok(self.inner.activate(id, replay_after))
    }

    async fn finish(&self, id: &Uuid, fate: Fate, code: Option<u16>, activity: Option<Activity>) {
        self.inner.finish(id, fate, code, activity);
    }

    async fn remove(
        &self,
        id: &Uuid,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Option<Removed>, StoreError> {
        self.admit_write()?;
        let removed = self.inner.remove_now(id, d, event);
        if removed.is_some() {
            self.commit().await?;
        }
        Ok(removed)
    }

    async fn remove_user(
        &self,
        user: &str,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Vec<Removed>, StoreError> {
        self.admit_write()?;
        let ids: Vec<Uuid> = {
            let shard = lock(&self.inner.shards[self.inner.shard_of_user(user)]);
            shard.users.get(user).cloned().unwrap_or_default()
        };
        let removed: Vec<Removed> = ids
            .iter()
            .filter_map(|id| self.inner.remove_now(id, d, event))
            .collect();
        if !removed.is_empty() {
            self.commit().await?;
        }
        Ok(removed)
    }

    async fn remove_session(
        &self,
        session: &str,
        d: &Disconnect,
    ) -> Result<Vec<Removed>, StoreError> {
        let ids = self.session_connections(session).await;
        let removed: Vec<Removed> = ids
            .iter()
            .filter_map(|id| self.inner.remove_now(id, d, EventType::Disconnected))
            .collect();
        if !removed.is_empty() {
            self.commit().await?;
        }
        Ok(removed)
    }

    async fn info(&self, id: &Uuid) -> Option<Value> {
        self.inner.with_entry(id, |e| self.inner.info(&e.rec))
    }

    async fn user(&self, id: &Uuid) -> Option<AuthUser> {
        self.inner.with_entry(id, |e| e.rec.user.to_auth_user())
    }

    async fn valid(&self, id: &Uuid) -> bool {
        let now = now_ms();
        self.inner
            .with_entry(id, |e| {
                e.rec.state == ConnState::Active && e.rec.expires_at > now
            })
            .unwrap_or(false)
    }

    async fn user_connections(&self, user: &str) -> Vec<Value> {
        let inner = &self.inner;
        let shard = lock(&inner.shards[inner.shard_of_user(user)]);
        shard
            .users
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| shard.conns.get(id))
                    .map(|e| inner.info(&e.rec))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn session_connections(&self, session: &str) -> Vec<Uuid> {
        lock(&self.inner.sessions)
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    async fn list(&self, user: Option<&str>, after: Option<&Uuid>, limit: usize) -> Vec<Value> {
        self.inner.list(user, after, limit)
    }

    async fn update_metadata(
        &self,
        id: &Uuid,
        patch: MetadataPatch,
    ) -> Result<Option<(String, Value)>, StoreError> {
        self.admit_write()?;
        let inner = &self.inner;
        let done = inner.with_entry(id, |e| {
            let mut rec = e.rec.clone();
            let m = &mut rec.meta;
            if let Some(v) = patch.ip {
                m.ip = v;
            }
            if let Some(v) = patch.user_agent {
                m.user_agent = v;
            }
            if let Some(v) = patch.client_version {
                m.client_version = v;
            }
            if let Some(v) = patch.permissions {
                m.permissions = v;
            }
            if let Some(v) = patch.messages_per_minute {
                m.rate_limit.messages_per_minute = v;
            }
            inner.write(&rec)?;
            e.rec = rec;
            Ok::<_, StoreError>((e.rec.user.id.clone(), inner.info(&e.rec)))
        });
        let done = done.transpose()?;
        if done.is_some() {
            self.commit().await?;
        }
        Ok(done)
    }

    async fn extend_ttl(&self, id: &Uuid, ttl_seconds: u64) -> Result<Option<Value>, StoreError> {
        self.admit_write()?;
        let inner = &self.inner;
        let done = inner.with_entry(id, |e| {
            let mut rec = e.rec.clone();
            rec.expires_at = now_ms().saturating_add((ttl_seconds as i64).saturating_mul(1000));
            rec.meta.last_activity = now_ms();
            inner.write(&rec)?;
            e.rec = rec;
            Ok::<_, StoreError>(inner.info(&e.rec))
        });
        let done = done.transpose()?;
        if done.is_some() {
            self.commit().await?;
        }
        Ok(done)
    }

    async fn migrate(
        &self,
        old_id: &Uuid,
        new_id: Uuid,
    ) -> Result<Result<(String, Value), MigrateError>, StoreError> {
        self.admit_write()?;
        let inner = &self.inner;
        if inner.locate(&new_id).is_some() {
            return Ok(Err(MigrateError::Exists));
        }
        let done = inner
            .with_shard(old_id, |shard| {
                if shard.conns.contains_key(&new_id) {
                    return Ok(Err(MigrateError::Exists));
                }
                let mut moved = shard.conns[old_id].rec.clone();
                moved.id = new_id;
                inner.write(&moved)?;
                let mut entry = inner.remove_locked(shard, old_id).expect("checked");
                inner.unpersist(&entry.rec);
                entry.rec = moved;
                inner.events.log(
                    new_id,
                    &entry.rec.user.id,
                    EventType::Migrated,
                    json!({"from": old_id, "to": new_id}),
                );
                let out = (entry.rec.user.id.clone(), inner.info(&entry.rec));
                let idx = inner.shard_of_user(&entry.rec.user.id);
                inner.insert_locked(idx, shard, entry, false);
                Ok::<_, StoreError>(Ok(out))
            })
            .unwrap_or(Ok(Err(MigrateError::Unknown)))?;
        if done.is_ok() {
            self.commit().await?;
        }
        Ok(done)
    }

    async fn deliver(
        &self,
        target: Target<'_>,
        template: FrameTemplate,
        sockets: Sockets<'_>,
        durable: bool,
    ) -> Result<Delivery, StoreError> {
        if durable {
            self.admit_write()?;
        }
        let d = self.inner.deliver(target, template, sockets)?;
        if durable && d.stored > 0 {
            self.commit().await?;
        }
        Ok(d)
    }

    async fn ack(&self, id: &Uuid, seq: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.with_entry(id, |entry| {
            let upto = seq.min(entry.rec.seq);
            if upto <= entry.rec.acked {
                return;
            }
            entry.rec.acked = upto;
            entry.ring.drop_through(upto);
            // The deliveries let go here are what recovery reads `seq` back from; the record
            // keeps it instead, so a restart never hands out a seq the client already has.
            inner.persist(&entry.rec);
        });
        Ok(())
    }

    async fn replay(&self, id: &Uuid, after: u64) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self
            .inner
            .with_entry(id, |e| e.ring.after(after))
            .unwrap_or_default())
    }

    async fn touch(&self, id: &Uuid, activity: Activity) {
        self.inner
            .with_entry(id, |e| apply_activity(&mut e.rec, activity));
    }

    async fn sweep(&self) -> Result<Sweep, StoreError> {
        let sweep = self.blocking(|inner| inner.sweep()).await?;
        if sweep.removed > 0 {
            self.commit().await?;
        }
        Ok(sweep)
    }

    async fn recover(&self) -> Result<RecoveryReport, StoreError> {
        self.blocking(|inner| inner.recover()).await?
    }

    async fn health(&self) -> Value {
        self.blocking(|inner| inner.health())
            .await
            .unwrap_or(Value::Null)
    }

    async fn stats(&self) -> Value {
        self.blocking(|inner| inner.stats())
            .await
            .unwrap_or(Value::Null)
    }

    async fn counts(&self) -> Counts {
        self.blocking(|inner| inner.counts())
            .await
            .unwrap_or_default()
    }
}
