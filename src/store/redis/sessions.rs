//! [`SessionStore`] over Redis. A write, its bus event and what it does to the session's
//! connections are one script: an update delivers `session.updated` to every connection of
//! the session but its origin; a delete or an expiry removes them and closes their sockets
//! (4503) through their nodes' channels. So this store reaches the connections itself
//! ([`SessionStore::reaches_connections`]), once per cluster.
//!
//! An update is merged here (RFC 7386) and written only if the session is still the version
//! it was read at; a concurrent writer makes it read again.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::conns::deliver_tail;
use super::record::{self, items, str_of};
use super::{args, Inner, RedisStore};
use crate::auth::new_session_id;
use crate::bus::{BusEvent, SessionEvent};
use crate::model::{EventType, SessionRecord, Source};
use crate::protocol::{Disconnect, FrameTemplate};
use crate::store::{merge_patch, NewSession, SessionError, SessionPatch, SessionStore, StoreError};
use crate::time::{now_ms, rfc3339};

/// Reads and writes an update tries before it gives up on a session written that often.
const UPDATE_TRIES: usize = 64;
/// Sessions the sweeper looks at per call, and calls per sweep.
const SWEEP_BATCH: usize = 100;
const SWEEP_ROUNDS: usize = 10;

fn event(
    s: &SessionRecord,
    source: Source,
    connection: Option<uuid::Uuid>,
    ts: &str,
) -> SessionEvent {
    SessionEvent {
        session_id: s.id.clone(),
        user_id: s.user_id.clone(),
        updates: None,
        source,
        timestamp: ts.to_string(),
        connection_id: connection,
    }
}

impl Inner {
    /// The session `id` and its version, expired or not.
    async fn read_session(&self, id: &str) -> Result<Option<(SessionRecord, String)>, StoreError> {
        let v = self
            .run(
                "reading a session",
                &self.scripts.session_read,
                &args!["one", id],
            )
            .await?;
        match v.get("session") {
            Some(s) => Ok(Some(record::session(&self.settings.prefix, s)?)),
            None => Ok(None),
        }
    }

    /// Removes a session (deleted or expired), with its connections; false if it was not
    /// there to remove (or, for an expiry, no longer expired).
    async fn remove_session(&self, s: &SessionRecord, expire: bool) -> Result<bool, StoreError> {
        let ts = rfc3339(now_ms());
        let (mode, channel, ev, why) = if expire {
            let e = BusEvent::SessionExpired(event(s, Source::Http, None, &ts));
            ("expire", "session:expired", e, "session expired")
        } else {
            let e = BusEvent::SessionDeleted(event(s, Source::Http, None, &ts));
            ("delete", "session:deleted", e, "session deleted")
        };
        let d = Disconnect::session_ended(why);
        let v = self
            .run(
                "removing a session",
                &self.scripts.session_remove,
                &args![
                    mode,
                    s.id,
                    s.user_id,
                    channel,
                    ev.payload(),
                    serde_json::to_string(&d).expect("a close serializes"),
                ],
            )
            .await?;
        if str_of(&v, "error").is_some() {
            return Ok(false);
        }
        let details = json!({"code": d.code.as_u16(), "reason": d.reason});
        for r in items(&v, "removed") {
            if let Some(id) = str_of(r, "id").and_then(|i| uuid::Uuid::parse_str(i).ok()) {
                self.events
                    .log(id, &s.user_id, EventType::Disconnected, details.clone());
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, new: NewSession) -> Result<SessionRecord, SessionError> {
        let inner = &self.inner;
        let now = now_ms();
        let data_json = new.data.to_string();
        let max = inner.settings.session_max_bytes;
        if data_json.len() > max {
            return Err(SessionError::TooLarge {
                bytes: data_json.len(),
                max,
            });
        }
        let ttl = new
            .ttl_seconds
            .unwrap_or(inner.settings.session_ttl_seconds);
        let s = SessionRecord {
            id: new_session_id(),
            user_id: new.user_id,
            created_at: now,
            expires_at: now.saturating_add((ttl.min(i64::MAX as u64) as i64).saturating_mul(1000)),
            last_seen: now,
            data_json,
            permissions: new.permissions,
            device_json: new.device.to_string(),
        };
        let ev = BusEvent::SessionCreated(event(&s, Source::Http, None, &rfc3339(now)));
        let per_user = inner.settings.max_sessions_per_user;
        let v = inner
            .run(
                "creating a session",
                &inner.scripts.session_write,
                &args![
                    "create",
                    s.id,
                    s.user_id,
                    record::session_fields(&s),
                    per_user,
                    "session:created",
                    ev.payload(),
                ],
            )
            .await?;
        match str_of(&v, "error") {
            None => Ok(s),
            Some(_) => Err(SessionError::TooMany { max: per_user }),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = now_ms();
        Ok(self
            .inner
            .read_session(id)
            .await?
            .map(|(s, _)| s)
            .filter(|s| s.expires_at > now))
    }

    async fn update(
        &self,
        id: &str,
        patch: SessionPatch<'_>,
    ) -> Result<SessionRecord, SessionError> {
        let inner = &self.inner;
        let updates = match patch.data {
            Some(p) => Value::Object(p.clone()),
            None => json!({}),
        };
        for _ in 0..UPDATE_TRIES {
            let now = now_ms();
            let Some((mut s, version)) = inner.read_session(id).await? else {
                return Err(SessionError::Unknown);
            };
            if s.expires_at <= now {
                return Err(SessionError::Unknown);
            }
            if patch.data.is_some() {
                let mut current: Value = serde_json::from_str(&s.data_json).unwrap_or(json!({}));
                merge_patch(&mut current, &updates);
                s.data_json = current.to_string();
                let max = inner.settings.session_max_bytes;
                if s.data_json.len() > max {
                    return Err(SessionError::TooLarge {
                        bytes: s.data_json.len(),
                        max,
                    });
                }
            }
            if let Some(ttl) = patch.ttl_seconds {
                s.expires_at =
                    now.saturating_add((ttl.min(i64::MAX as u64) as i64).saturating_mul(1000));
            }
            s.last_seen = now;
            let ts = rfc3339(now);
            let mut e = event(&s, patch.source, patch.connection, &ts);
            e.updates = Some(updates.clone());
            let connection = patch.connection.map(|c| c.to_string());
            let template = FrameTemplate::session_updated(
                &s.id,
                &updates,
                patch.source.as_str(),
                connection.as_deref(),
                &ts,
            );
            let v = inner
                .run(
                    "updating a session",
                    &inner.scripts.session_write,
                    &args![
                        "update",
                        s.id,
                        s.user_id,
                        record::session_fields(&s),
                        version,
                        "session:updates",
                        BusEvent::SessionUpdated(e).payload(),
                        connection.unwrap_or_default(),
                        template.kind.as_str(),
                        template.rest,
                        deliver_tail(&template),
                    ],
                )
                .await?;
            match str_of(&v, "error") {
                None => return Ok(s),
                Some("conflict") => continue,
                Some(_) => return Err(SessionError::Unknown),
            }
        }
        Err(SessionError::Store(StoreError::Unavailable(format!(
            "session {id} is written too often to update it now; try again"
        ))))
    }

    async fn delete(&self, id: &str) -> Result<SessionRecord, SessionError> {
        let Some(s) = self.get(id).await? else {
            return Err(SessionError::Unknown);
        };
        if self.inner.remove_session(&s, false).await? {
            Ok(s)
        } else {
            Err(SessionError::Unknown)
        }
    }

    async fn list_user(&self, user: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let inner = &self.inner;
        let v = inner
            .run(
                "reading a user's sessions",
                &inner.scripts.session_read,
                &args!["user", user],
            )
            .await?;
        let now = now_ms();
        let mut out = Vec::new();
        for s in items(&v, "sessions") {
            let (s, _) = record::session(&inner.settings.prefix, s)?;
            if s.expires_at > now {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn delete_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for s in self.list_user(user).await? {
            // Gone meanwhile (deleted or swept): that one was published already.
            if self.inner.remove_session(&s, false).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every node sweeps; the script removes a session only if it is still expired, so each
    /// expiry is published once.
    async fn sweep(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let key = inner.key("sessions:expiry");
        let mut n = 0;
        for _ in 0..SWEEP_ROUNDS {
            let now = now_ms();
            let cmd = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH)
                .clone();
            let due: Vec<String> = inner.query("reading session expiries", &cmd).await?;
            for sid in &due {
                match inner.read_session(sid).await? {
                    Some((s, _)) if s.expires_at <= now => {
                        if inner.remove_session(&s, true).await? {
                            n += 1;
                        }
                    }
                    Some(_) => {}
                    None => {
                        let zrem = redis::cmd("ZREM").arg(&key).arg(sid).clone();
                        inner
                            .query::<i64>("dropping a session expiry", &zrem)
                            .await?;
                    }
                }
            }
            if due.len() < SWEEP_BATCH {
                break;
            }
        }
        Ok(n)
    }

    async fn count(&self) -> usize {
        let inner = &self.inner;
        let cmd = redis::cmd("ZCARD")
            .arg(inner.key("sessions:expiry"))
            .clone();
        inner
            .query::<usize>("counting sessions", &cmd)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "sessions were not counted");
                0
            })
    }

    fn reaches_connections(&self) -> bool {
        true
    }
}
