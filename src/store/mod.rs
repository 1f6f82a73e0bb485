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
mod errors;
pub mod redis;
mod types;

pub use errors::{AdmitError, SessionError, StoreError};
pub use types::*;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::model::{EventType, SessionRecord};

pub use crate::model::{Assignment, Source};
use crate::protocol::{Disconnect, Fate, FrameTemplate};

pub use embedded::{
    db_path, lock_data_dir, manifest_path, DirLock, EmbeddedStore, Trees, SCHEMA_VERSION,
};

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
