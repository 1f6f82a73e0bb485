//! The values the store traits take and give.

use serde_json::Value;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::model::{Assignment, ConnRecord, EventType, Metadata, Source};
use crate::protocol::{Disconnect, FrameTemplate};
use crate::time::Millis;

use super::SessionError;

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
