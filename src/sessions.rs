//! Server-side sessions: created by an app backend over HTTP, presented by clients when they
//! connect, changed from either side, and kept in sync on every connection linked to them.
//!
//! Sessions live in sled (the `sessions` tree is the truth; `sessions_by_user` is an index).
//! Every change is published on the bus; [`run_reactor`] is the only thing that turns those
//! events into `session.updated` frames and 4503 closes, so a networked bus can replace the
//! in-process one without touching either side.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};

use crate::auth::AuthUser;
use crate::bus::{Bus, Channel};
use crate::codec;
use crate::error::Disconnect;
use crate::model::SessionRecord;
use crate::registry::Registry;
use crate::store::{keys, Trees};
use crate::sync::{hash_str, lock};
use crate::time::{now_ms, rfc3339};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unknown session")]
    Unknown,
    #[error("store error: {0}")]
    Store(#[from] sled::Error),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// Where a change came from (`source` of `session:updates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    WebSocket,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::WebSocket => "websocket",
        }
    }
}

pub struct Sessions {
    /// Taken by every write, and by a backup to hold writes off while it copies.
    write: std::sync::Mutex<()>,
    trees: Trees,
    /// Events wait here until the write they describe is durable (see [`publisher`]).
    outgoing: tokio::sync::mpsc::UnboundedSender<(Channel, Value, u64)>,
    flusher: crate::durability::Flusher,
    default_ttl_seconds: u64,
    /// Writers of one session take its stripe (before `write`). An update is
    /// read-merge-write, so two at once (a PATCH and a `session.update`, say) would lose
    /// one of them, and an update racing a delete or the sweeper could put a removed
    /// session back. Publishing under the stripe also puts a session's bus events in the
    /// order of its writes. Std mutexes: nothing awaits inside.
    stripes: Box<[Mutex<()>]>,
}

const STRIPES: usize = 64;

/// A new session id; made in `auth::crypto` with tether's other random values.
pub use crate::auth::new_session_id;

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything
/// else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl Sessions {
    /// Starts the publisher task on the current runtime.
    pub fn new(
        trees: Trees,
        bus: Arc<dyn Bus>,
        flusher: crate::durability::Flusher,
        default_ttl_seconds: u64,
    ) -> Sessions {
        let (outgoing, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(publisher(rx, bus, flusher.clone()));
        Sessions {
            flusher,
            write: Default::default(),
            trees,
            outgoing,
            default_ttl_seconds,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Publishes once the write before it is durable, in the order of the calls.
    fn publish(&self, channel: Channel, payload: Value) {
        // The receiver lives as long as the runtime; a send after shutdown has no reader.
        let _ = self
            .outgoing
            .send((channel, payload, self.flusher.ticket()));
    }

    fn stripe(&self, id: &str) -> MutexGuard<'_, ()> {
        lock(&self.stripes[hash_str(id) % STRIPES])
    }

    /// Holds session writes off until the guard drops.
    pub fn freeze(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.write)
    }

    fn put(&self, s: &SessionRecord) -> Result<(), SessionError> {
        let _w = self.freeze();
        self.trees
            .sessions
            .insert(s.id.as_bytes(), codec::encode(s)?)?;
        Ok(())
    }

    fn event(
        &self,
        s: &SessionRecord,
        source: Source,
        connection: Option<String>,
        updates: Option<&Value>,
    ) -> Value {
        let mut e = json!({
            "sessionId": s.id,
            "userId": s.user_id,
            "source": source.as_str(),
            "timestamp": rfc3339(now_ms()),
            "connectionId": connection,
        });
        if let Some(u) = updates {
            e["updates"] = u.clone();
        }
        e
    }

    pub fn create(
        &self,
        user_id: &str,
        ttl_seconds: Option<u64>,
        data: Value,
        permissions: Vec<String>,
        device: Value,
    ) -> Result<SessionRecord, SessionError> {
        let now = now_ms();
        let ttl = ttl_seconds.unwrap_or(self.default_ttl_seconds);
        let s = SessionRecord {
            id: new_session_id(),
            user_id: user_id.to_string(),
            created_at: now,
            expires_at: now.saturating_add((ttl as i64).saturating_mul(1000)),
            last_seen: now,
            data_json: data.to_string(),
            permissions,
            device_json: device.to_string(),
        };
        self.put(&s)?;
        self.trees
            .sessions_by_user
            .insert(keys::pair(&s.user_id, &s.id), &[])?;
        self.publish(
            Channel::SessionCreated,
            self.event(&s, Source::Http, None, None),
        );
        Ok(s)
    }

    /// The live session `id` (an expired one is as good as gone).
    pub fn get(&self, id: &str) -> Option<SessionRecord> {
        let v = self.trees.sessions.get(id.as_bytes()).ok()??;
        let s: SessionRecord = codec::decode(&v).ok()?;
        (s.expires_at > now_ms()).then_some(s)
    }

    /// Authenticates a connection by session id: the session's user, with its permissions.
    pub fn authenticate(&self, id: &str) -> Option<(AuthUser, SessionRecord)> {
        let s = self.get(id)?;
        let user = AuthUser {
            id: s.user_id.clone(),
            permissions: s.permissions.clone(),
            roles: Vec::new(),
            name: None,
            claims: Map::new(),
        };
        Some((user, s))
    }

    /// Merges `data` into the session (RFC 7386), sets a new TTL if given, persists it and
    /// publishes `session:updates`.
    pub fn update(
        &self,
        id: &str,
        data: Option<&Value>,
        ttl_seconds: Option<u64>,
        source: Source,
        connection: Option<String>,
    ) -> Result<SessionRecord, SessionError> {
        let _write = self.stripe(id);
        let mut s = self.get(id).ok_or(SessionError::Unknown)?;
        let now = now_ms();
        if let Some(patch) = data {
            let mut current: Value = serde_json::from_str(&s.data_json).unwrap_or(json!({}));
            merge_patch(&mut current, patch);
            s.data_json = current.to_string();
        }
        if let Some(ttl) = ttl_seconds {
            s.expires_at = now.saturating_add((ttl as i64).saturating_mul(1000));
        }
        s.last_seen = now;
        self.put(&s)?;
        let updates = data.cloned().unwrap_or_else(|| json!({}));
        self.publish(
            Channel::SessionUpdates,
            self.event(&s, source, connection, Some(&updates)),
        );
        Ok(s)
    }

    fn remove(&self, s: &SessionRecord) -> Result<(), SessionError> {
        let _w = self.freeze();
        self.trees.sessions.remove(s.id.as_bytes())?;
        self.trees
            .sessions_by_user
            .remove(keys::pair(&s.user_id, &s.id))?;
        Ok(())
    }

    /// Deletes the session and publishes `session:deleted`.
    pub fn delete(&self, id: &str) -> Result<SessionRecord, SessionError> {
        let _write = self.stripe(id);
        let s = self.get(id).ok_or(SessionError::Unknown)?;
        self.remove(&s)?;
        self.publish(
            Channel::SessionDeleted,
            self.event(&s, Source::Http, None, None),
        );
        Ok(s)
    }

    /// The user's live sessions.
    pub fn list_user(&self, user: &str) -> Vec<SessionRecord> {
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

    /// Deletes every session of `user`; returns how many.
    pub fn delete_user(&self, user: &str) -> Result<usize, SessionError> {
        let mut n = 0;
        for s in self.list_user(user) {
            let _write = self.stripe(&s.id);
            // Gone meanwhile (deleted or swept): that one has been published already.
            let Some(s) = self.get(&s.id) else { continue };
            self.remove(&s)?;
            self.publish(
                Channel::SessionDeleted,
                self.event(&s, Source::Http, None, None),
            );
            n += 1;
        }
        Ok(n)
    }

    /// Removes sessions past their expiry and publishes `session:expired` for each.
    pub fn sweep(&self) -> usize {
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
                self.publish(
                    Channel::SessionExpired,
                    self.event(&s, Source::Http, None, None),
                );
                n += 1;
            }
        }
        n
    }

    pub fn count(&self) -> usize {
        self.trees.sessions.len()
    }

    /// The API's `Session` shape.
    pub fn to_json(s: &SessionRecord, connections: Option<Vec<uuid::Uuid>>) -> Value {
        let mut v = json!({
            "sessionId": s.id,
            "userId": s.user_id,
            "createdAt": rfc3339(s.created_at),
            "expiresAt": rfc3339(s.expires_at),
            "lastSeen": rfc3339(s.last_seen),
            "data": serde_json::from_str::<Value>(&s.data_json).unwrap_or(json!({})),
            "permissions": s.permissions,
            "device": serde_json::from_str::<Value>(&s.device_json).unwrap_or(Value::Null),
        });
        if let Some(c) = connections {
            v["connections"] = json!(c);
        }
        v
    }
}

/// Publishes session events only after the writes they describe are on disk (per the
/// durability mode), so no connection is told of a change that a crash could still undo.
/// Whatever is queued when a flush starts is published together after it, in order.
async fn publisher(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Channel, Value, u64)>,
    bus: Arc<dyn Bus>,
    flusher: crate::durability::Flusher,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        // The newest write's flush covers the older ones.
        let ticket = batch.iter().map(|(_, _, t)| *t).max().unwrap_or(0);
        if let Err(e) = flusher.wait(ticket).await {
            tracing::error!(error = %e, "session events held back: the store refused a flush");
            continue;
        }
        for (channel, payload, _) in batch.drain(..) {
            bus.publish(channel, payload);
        }
    }
}

/// The session reactor: turns bus events into frames and closes. Runs until the bus closes.
pub async fn run_reactor(bus: Arc<dyn Bus>, registry: Arc<Registry>) {
    let mut updates = bus.subscribe(Channel::SessionUpdates);
    let mut deleted = bus.subscribe(Channel::SessionDeleted);
    let mut expired = bus.subscribe(Channel::SessionExpired);
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let (event, why) = tokio::select! {
            r = updates.recv() => (r, None),
            r = deleted.recv() => (r, Some("session deleted")),
            r = expired.recv() => (r, Some("session expired")),
        };
        let event = match event {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "session reactor fell behind the bus");
                bus.record_lag(n);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let p = &event.payload;
        let Some(sid) = p["sessionId"].as_str() else {
            continue;
        };
        match why {
            Some(reason) => {
                registry.disconnect_session(sid, Disconnect::session_ended(reason));
            }
            None => {
                let origin = p["connectionId"]
                    .as_str()
                    .and_then(|c| uuid::Uuid::parse_str(c).ok());
                let body = json!({
                    "sessionId": sid,
                    "updates": p["updates"],
                    "source": p["source"],
                    "connectionId": p["connectionId"],
                    "ts": p["timestamp"],
                })
                .to_string();
                // body is `{...}`: type and seq go in front of the rest, per connection.
                let template = crate::registry::FrameTemplate {
                    kind: "session.updated",
                    rest: body[1..].to_string(),
                };
                registry.deliver_to_session(sid, origin.as_ref(), template);
            }
        }
    }
}
