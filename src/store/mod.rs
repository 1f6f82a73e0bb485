//! The state of record, behind traits: connections ([`ConnStore`]), sessions
//! ([`SessionStore`]) and the event log ([`EventStore`]).
//!
//! A node keeps its live sockets in the [`crate::hub`]; everything the API can return about
//! a connection, and everything a resume needs, is here: records with their user and session
//! indexes, `seq` counters, replay buffers, hashed resume tokens, and the limits
//! (`max_per_user`, `max_total`). Every write returns a `Result` and is durable when it
//! returns, per the durability mode, so the node acknowledges nothing a crash could undo.
//!
//! [`embedded`] is the implementation over sled in the data directory: records in memory,
//! sharded by user, written through to sled, made durable by group commit. [`redis`] is
//! cluster mode's: every node over one Redis, each write one Lua script. Each trait has one
//! conformance suite (`tests/conformance/`) that every implementation passes.
//!
//! Stores publish the bus events of their own writes (`session:*`, `connection:events`), so
//! each event is published once, by the write that caused it.

pub mod embedded;
pub mod redis;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::model::{ConnRecord, EventType, Metadata, SessionRecord};

pub use crate::model::{Assignment, Source};
use crate::protocol::{Disconnect, Fate, FrameTemplate};
use crate::time::Millis;

pub use embedded::{
    db_path, lock_data_dir, manifest_path, DirLock, EmbeddedStore, Trees, SCHEMA_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {dir} is in use by another tether{pid} (lock file {lock}); stop it first or choose another --data-dir")]
    Locked {
        dir: String,
        lock: String,
        pid: String,
    },
    #[error("cannot use data directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error("cannot open the store in {dir}: {detail}")]
    Open { dir: String, detail: String },
    #[error("the store in {dir} has schema version {found}; this tether reads version {SCHEMA_VERSION}. Use the tether release that wrote it, or restore a backup")]
    Schema { dir: String, found: u32 },
    #[error("the store in {dir} is damaged: {detail}. Nothing was changed; restore a backup (tether restore) or move the directory aside")]
    Damaged { dir: String, detail: String },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// The store cannot take writes now (it may later): refused, never half done.
    #[error("{0}")]
    Unavailable(String),
    /// A stored record (a Redis key) that does not decode.
    #[error("the stored record {key} does not decode: {detail}")]
    BadRecord { key: String, detail: String },
    /// The store refuses writes for a reason with its own code (a full disk: 507; a stalled
    /// or failed flush: 503); the message is for the operator.
    #[error("{message}")]
    Refused {
        code: crate::protocol::ErrorCode,
        message: String,
        /// Said to end users (sockets), without an operator's details.
        client_message: &'static str,
    },
}

impl From<crate::durability::StoreUnwritable> for StoreError {
    fn from(e: crate::durability::StoreUnwritable) -> Self {
        use crate::durability::StoreUnwritable as U;
        use crate::protocol::ErrorCode;
        let code = match e {
            U::DiskFull { .. } => ErrorCode::InsufficientStorage,
            U::FlushStalled { .. } => ErrorCode::StoreStalled,
            U::Failed { .. } => ErrorCode::StoreFailed,
        };
        StoreError::Refused {
            code,
            message: e.to_string(),
            client_message: e.client_message(),
        }
    }
}

impl StoreError {
    /// The code and message of a refused write, as a socket's `error` frame says it.
    pub fn for_client(&self) -> (crate::protocol::ErrorCode, String) {
        use crate::protocol::ErrorCode;
        match self {
            StoreError::Refused {
                code,
                client_message,
                ..
            } => (*code, client_message.to_string()),
            StoreError::Unavailable(why) => (ErrorCode::Unavailable, why.clone()),
            _ => (ErrorCode::Internal, "the store refused the write".into()),
        }
    }
}

/// Limits the connection store enforces, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_per_user: usize,
    pub max_total: usize,
    pub ttl_seconds: u64,
    pub resume_grace_seconds: u64,
    pub replay_buffer_messages: u64,
    /// Per connection, the rendered size of its replay buffer.
    pub replay_buffer_bytes: usize,
    pub messages_per_minute: u32,
}

impl From<&crate::config::Config> for Limits {
    fn from(config: &crate::config::Config) -> Limits {
        Limits {
            max_per_user: config.max_per_user,
            max_total: config.max_total,
            ttl_seconds: config.ttl_seconds,
            resume_grace_seconds: config.resume_grace_seconds,
            replay_buffer_messages: config.replay_buffer_messages as u64,
            replay_buffer_bytes: config.replay_buffer_bytes,
            messages_per_minute: config.messages_per_minute,
        }
    }
}

/// An authenticated connection asking to be registered.
pub struct NewConn {
    pub id: Uuid,
    pub user: AuthUser,
    pub session_id: Option<String>,
    pub meta: Metadata,
    pub resume: Option<ResumeRequest>,
    /// Waives the resume token (SSE's `Last-Event-ID`, which a browser sends without one);
    /// the user must still match.
    pub trusted_resume: bool,
}

#[derive(Debug, Clone)]
pub struct ResumeRequest {
    pub connection_id: String,
    pub token: String,
    pub last_seq: Option<u64>,
}

/// What [`ConnStore::admit`] decided.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub id: Uuid,
    pub resume_token: String,
    pub resumed: bool,
    pub previous: Option<Uuid>,
    pub resume_error: Option<String>,
    /// Replay kept frames with a seq above this at activation.
    pub replay_after: u64,
    /// Sockets that must close because of this admission: the user's oldest past
    /// `max_per_user` (4505), the old socket of a resumed connection (4507).
    pub closing: Vec<Closing>,
}

/// A connection whose socket must be told to close, wherever it is.
#[derive(Debug, Clone)]
pub struct Closing {
    pub id: Uuid,
    pub user: String,
    /// The node that holds its socket, if any.
    pub node: Option<String>,
    pub disconnect: Disconnect,
}

/// A connection that was removed, and its socket to close if it had one.
#[derive(Debug, Clone)]
pub struct Removed {
    pub closing: Option<Closing>,
}

/// Why an admission failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Refused by the rules (a resume of another user's connection, the server full).
    #[error("{}", .0.reason)]
    Refused(Disconnect),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Disconnect> for AdmitError {
    fn from(d: Disconnect) -> Self {
        AdmitError::Refused(d)
    }
}

/// A connection made Active: its record as it is now, and what its client is owed.
#[derive(Debug, Clone)]
pub struct Activation {
    pub record: ConnRecord,
    /// Kept frames after the admission's `replay_after`, in seq order, rendered.
    pub replay: Vec<(u64, String)>,
}

/// Activity a connection's task keeps in memory and hands over now and then.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    pub last_seen: Millis,
    pub window_start: Millis,
    pub window_count: u32,
}

/// Fields an operator may change (`PATCH /v1/connections/{id}/metadata`).
#[derive(Debug, Default, Clone)]
pub struct MetadataPatch {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub client_version: Option<Option<String>>,
    pub permissions: Option<Vec<String>>,
    pub messages_per_minute: Option<u32>,
}

/// Who a delivery is for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Connection(&'a Uuid),
    User(&'a str),
    /// Every connection linked to the session but `except` (the update's origin).
    Session {
        id: &'a str,
        except: Option<&'a Uuid>,
    },
}

/// Hands a delivery's frames to live sockets: (user, assignments, frame) → how many took it.
pub type Sockets<'a> = &'a (dyn Fn(&str, &[Assignment], &FrameTemplate) -> usize + Sync);

/// Outcome of a delivery.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delivery {
    /// Sockets that took the frame.
    pub delivered: usize,
    /// Connections the frame was assigned to (live or kept for their resume).
    pub stored: usize,
    /// The seq of the last assignment (for a single connection, its seq).
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateError {
    Unknown,
    Exists,
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Active connections past their expiry: their sockets close with 4004 (they stay
    /// resumable).
    pub expired: Vec<Closing>,
    /// Detached connections past the resume grace period, removed.
    pub removed: usize,
}

/// Connections by state and by transport: (label, count) pairs.
pub type Counts = (Vec<(String, u64)>, Vec<(String, u64)>);

#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryReport {
    pub detached: usize,
    pub unreadable: usize,
    pub deliveries: usize,
}

/// Connections: the seed's ConnectionManager, as state of record.
#[async_trait]
pub trait ConnStore: Send + Sync {
    fn limits(&self) -> &Limits;

    /// Registers an authenticated connection (`registerConnection`), resuming an old one
    /// when asked and allowed, and enforcing `max_total` and `max_per_user` (the user's
    /// oldest is evicted; Detached ones go first). The record is durable when this
    /// returns; if it cannot be made durable it is taken back and its slot freed.
    async fn admit(&self, new: NewConn, node: &str) -> Result<Admitted, AdmitError>;

    /// Makes an admitted connection Active and returns what its client is owed. None if it
    /// was removed meanwhile (evicted by a newer one, say). Every delivery assigned after
    /// this reads the record goes to its socket, every one before is in the replay.
    async fn activate(
        &self,
        id: &Uuid,
        replay_after: u64,
    ) -> Result<Option<Activation>, StoreError>;

    /// The socket of `id` is gone: applies `fate` (removed, Detached, or left as it is).
    async fn finish(&self, id: &Uuid, fate: Fate, code: Option<u16>, activity: Option<Activity>);

    /// Removes a connection now (an operator, a session ending, a failed admission); logs
    /// `event`. Returns the socket to close, if it existed.
    async fn remove(
        &self,
        id: &Uuid,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Option<Removed>, StoreError>;

    /// Removes every connection of `user`.
    async fn remove_user(
        &self,
        user: &str,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Vec<Removed>, StoreError>;

    /// Removes every connection linked to `session`.
    async fn remove_session(
        &self,
        session: &str,
        d: &Disconnect,
    ) -> Result<Vec<Removed>, StoreError>;

    /// `lookup`: the `ConnectionInfo` of `id`.
    async fn info(&self, id: &Uuid) -> Option<Value>;
    /// `getConnectionUser`.
    async fn user(&self, id: &Uuid) -> Option<AuthUser>;
    /// `validateConnection`: exists, Active, not expired.
    async fn valid(&self, id: &Uuid) -> bool;
    /// `getUserConnections`, oldest first.
    async fn user_connections(&self, user: &str) -> Vec<Value>;
    /// Connection ids linked to `session` now.
    async fn session_connections(&self, session: &str) -> Vec<Uuid>;
    /// Every connection, ordered by (user id, connectedAt), after `after` (a connection id),
    /// at most `limit`, optionally only one user's.
    async fn list(&self, user: Option<&str>, after: Option<&Uuid>, limit: usize) -> Vec<Value>;

    /// `updateConnectionMetadata`; durable.
    async fn update_metadata(
        &self,
        id: &Uuid,
        patch: MetadataPatch,
    ) -> Result<Option<(String, Value)>, StoreError>;
    /// `extendConnectionTTL`: expires `ttl_seconds` from now; durable.
    async fn extend_ttl(&self, id: &Uuid, ttl_seconds: u64) -> Result<Option<Value>, StoreError>;
    /// `migrateConnection`: the record moves to `new`; the old id stops existing. Returns
    /// the user (whose socket, if any, must follow) and the new `ConnectionInfo`.
    async fn migrate(
        &self,
        old: &Uuid,
        new: Uuid,
    ) -> Result<Result<(String, Value), MigrateError>, StoreError>;

    /// Gives each target connection its next seq for `template`, keeps the frame in its
    /// replay buffer, and hands the assignments to `sockets` before any later delivery to
    /// the same connections. Durable when it returns if `durable` (an API message); the
    /// frames of a session update need not be, since the session write they follow is.
    async fn deliver(
        &self,
        target: Target<'_>,
        template: FrameTemplate,
        sockets: Sockets<'_>,
        durable: bool,
    ) -> Result<Delivery, StoreError>;

    /// The client has everything up to `seq`: its replay buffer may drop it.
    async fn ack(&self, id: &Uuid, seq: u64) -> Result<(), StoreError>;

    /// The kept frames of `id` with a seq above `after`, in order (a node catching its
    /// sockets up after its subscription was down).
    async fn replay(&self, id: &Uuid, after: u64) -> Result<Vec<(u64, String)>, StoreError>;

    /// Activity and rate-limit state, kept lazily (never per frame).
    async fn touch(&self, id: &Uuid, activity: Activity);

    /// TTL expiry and detached clean-up.
    async fn sweep(&self) -> Result<Sweep, StoreError>;

    /// Start-up: every stored connection becomes Detached.
    async fn recover(&self) -> Result<RecoveryReport, StoreError>;

    /// `getConnectionHealth` (without the node's own figures).
    async fn health(&self) -> Value;
    /// `getConnectionStats` (without `messagesPerSecond`).
    async fn stats(&self) -> Value;
    /// Counts by state and by transport, for metrics.
    async fn counts(&self) -> Counts;
}

/// A new session.
pub struct NewSession {
    pub user_id: String,
    pub ttl_seconds: Option<u64>,
    pub data: Value,
    pub permissions: Vec<String>,
    pub device: Value,
}

/// A change to a session.
pub struct SessionPatch<'a> {
    pub data: Option<&'a serde_json::Map<String, Value>>,
    pub ttl_seconds: Option<u64>,
    pub source: Source,
    pub connection: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unknown session")]
    Unknown,
    /// The session's data, merged, would pass `session_max_bytes`: nothing was written.
    #[error("the session data would be {bytes} bytes of JSON, over session_max_bytes ({max})")]
    TooLarge { bytes: usize, max: usize },
    /// The user has `max_sessions_per_user` live sessions already: nothing was written.
    #[error(
        "the user has {max} live sessions, the most max_sessions_per_user allows; delete one first"
    )]
    TooMany { max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for SessionError {
    fn from(e: sled::Error) -> Self {
        SessionError::Store(e.into())
    }
}

impl From<crate::codec::CodecError> for SessionError {
    fn from(e: crate::codec::CodecError) -> Self {
        SessionError::Store(e.into())
    }
}

/// What the session store enforces, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// The lifetime of a session created without `ttlSeconds`.
    pub ttl_seconds: u64,
    /// The largest `data` a session may hold, as JSON, after a merge.
    pub max_bytes: usize,
    /// Live sessions one user may have.
    pub max_per_user: usize,
}

impl From<&crate::config::Config> for SessionLimits {
    fn from(c: &crate::config::Config) -> Self {
        SessionLimits {
            ttl_seconds: c.session_ttl_seconds,
            max_bytes: c.session_max_bytes,
            max_per_user: c.max_sessions_per_user,
        }
    }
}

impl SessionLimits {
    /// Refuses `data` (the whole of a session's data, after any merge) past `max_bytes`.
    pub fn check_data(&self, data: &Value) -> Result<String, SessionError> {
        let text = data.to_string();
        if text.len() > self.max_bytes {
            return Err(SessionError::TooLarge {
                bytes: text.len(),
                max: self.max_bytes,
            });
        }
        Ok(text)
    }
}

/// Server-side sessions. Each write publishes its bus event once it is durable, in the
/// order of the session's writes. Every write holds [`SessionLimits`]: a session's data
/// stays within `max_bytes` (checked on the merged data, under the session's write lock),
/// and a user has at most `max_per_user` live sessions (checked under the user's); a
/// refused write changes nothing.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates a session; publishes `session:created`.
    async fn create(&self, new: NewSession) -> Result<SessionRecord, SessionError>;
    /// The live session `id` (an expired one is as good as gone).
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Merges `data` (RFC 7386), sets a new TTL if given; publishes `session:updates`.
    async fn update(
        &self,
        id: &str,
        patch: SessionPatch<'_>,
    ) -> Result<SessionRecord, SessionError>;
    /// Deletes it; publishes `session:deleted`.
    async fn delete(&self, id: &str) -> Result<SessionRecord, SessionError>;
    /// The user's live sessions.
    async fn list_user(&self, user: &str) -> Result<Vec<SessionRecord>, StoreError>;
    /// At most `limit` of the user's live sessions, in session id order, those after
    /// `after` (a session id) when given.
    async fn list_user_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut all = self.list_user(user).await?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all
            .into_iter()
            .filter(|s| after.is_none_or(|a| s.id.as_str() > a))
            .take(limit)
            .collect())
    }
    /// Deletes every session of `user`; returns how many.
    async fn delete_user(&self, user: &str) -> Result<usize, StoreError>;
    /// Removes sessions past their expiry; publishes `session:expired` for each.
    async fn sweep(&self) -> Result<usize, StoreError>;
    async fn count(&self) -> usize;

    /// Whether this store's writes reach the session's connections themselves (deliver
    /// `session.updated`, close with 4503). When false, the node does it on the bus event.
    fn reaches_connections(&self) -> bool {
        false
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything
/// else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
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

/// Filters of `GET /v1/events`.
#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    pub connection_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub event_type: Option<EventType>,
    pub since: Option<Millis>,
    pub limit: usize,
}

/// The connection event log (`logConnectionEvent`), bounded.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends an event and publishes it on `connection:events`. Losing a log line must
    /// not fail a connection, so this never fails; a store error is logged.
    fn log(&self, connection_id: Uuid, user_id: &str, event_type: EventType, details: Value);
    /// Events matching `q`, oldest first, the newest `q.limit` of them.
    async fn query(&self, q: &EventQuery) -> Result<Vec<Value>, StoreError>;
    /// Events kept.
    async fn count(&self) -> usize;
}

/// A node as the cluster knows it (`GET /v1/nodes`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub node_id: String,
    pub listen: String,
    pub started_at: String,
    pub last_seen: String,
    pub connections: u64,
}

/// Cluster membership: each node holds a lease it renews; a node whose lease ran out is
/// dead, and its connections become Detached, once. The embedded store has one node.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Renews this node's lease for `lease_ms`, with its figures.
    async fn heartbeat(&self, node: &NodeInfo, lease_ms: u64) -> Result<(), StoreError>;
    /// The live nodes.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
    /// Nodes whose lease has run out and whose connections are still held.
    async fn expired(&self) -> Result<Vec<String>, StoreError>;
    /// Claims the clean-up of a dead node for `claimer` (one claim wins, and it expires if
    /// its holder dies too) and detaches every connection the dead node held, each logged
    /// once. Returns how many, or None if another node holds the claim.
    async fn detach_node(&self, node: &str, claimer: &str) -> Result<Option<usize>, StoreError>;
    /// A node stopping gracefully: its connections are Detached at once, its lease gone.
    async fn leave(&self, node: &str) -> Result<usize, StoreError>;
}

/// The store as a whole: what the node needs besides the three kinds of state.
#[async_trait]
pub trait StoreAdmin: Send + Sync {
    /// A consistent snapshot in the backup format (`tether backup`), with `secrets`.
    async fn snapshot(&self, secrets: Vec<u8>) -> Result<Vec<u8>, StoreError>;
    /// Writes back lazy fields and flushes (shutdown).
    async fn shutdown(&self) -> Result<(), StoreError>;
    /// Figures for `/metrics`: (name, help, value).
    fn figures(&self) -> Vec<(&'static str, &'static str, f64)>;
    /// Whether the store takes writes now; the code and reason when it does not (`/ready`,
    /// and connects refused before the upgrade).
    fn healthy(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        Ok(())
    }
    /// [`StoreAdmin::healthy`], asked before a write that will be acknowledged (a connect
    /// refused before its upgrade): a refusal is counted.
    fn admit_write(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        self.healthy()
    }
    /// The store's own lines for `/metrics`.
    fn render_metrics(&self, _out: &mut String) {}
    /// Whether this store is shared by several nodes (cluster mode).
    fn shared(&self) -> bool {
        false
    }
    /// Whether the store found that what it holds was lost (Redis restarted empty): every
    /// live socket names a record that no longer exists.
    fn data_lost(&self) -> bool {
        false
    }
    /// The node has closed its sockets after a loss of data: the store carries on.
    async fn adopt_data_loss(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The faces of one store.
#[derive(Clone)]
pub struct Stores {
    pub conns: std::sync::Arc<dyn ConnStore>,
    pub sessions: std::sync::Arc<dyn SessionStore>,
    pub events: std::sync::Arc<dyn EventStore>,
    pub nodes: std::sync::Arc<dyn NodeStore>,
    pub admin: std::sync::Arc<dyn StoreAdmin>,
}
