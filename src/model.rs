//! The records tether stores and the JSON shapes its API returns.
//!
//! Stored records go through [`crate::codec`] (bincode), which cannot carry free-form JSON,
//! so JSON fields (claims, session data, message payloads) are stored as JSON text.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::time::{rfc3339, Millis};

/// A connection's lifecycle state (SPEC §1). A record is `Authenticated` while it is being
/// registered, `Active` once its `welcome` is sent, `Detached` while it has no socket; the
/// other states belong to a socket that has no record (yet, or any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnState {
    Connecting,
    Authenticating,
    Authenticated,
    Active,
    Disconnecting,
    Disconnected,
    Detached,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Authenticating => "authenticating",
            ConnState::Authenticated => "authenticated",
            ConnState::Active => "active",
            ConnState::Disconnecting => "disconnecting",
            ConnState::Disconnected => "disconnected",
            ConnState::Detached => "detached",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnType {
    WebSocket,
    Sse,
}

impl ConnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnType::WebSocket => "websocket",
            ConnType::Sse => "sse",
        }
    }
}

/// `AuthUser` in a form bincode can store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredUser {
    pub id: String,
    pub permissions: Vec<String>,
    pub roles: Vec<String>,
    pub name: Option<String>,
    pub claims_json: String,
}

impl From<&AuthUser> for StoredUser {
    fn from(u: &AuthUser) -> Self {
        StoredUser {
            id: u.id.clone(),
            permissions: u.permissions.clone(),
            roles: u.roles.clone(),
            name: u.name.clone(),
            claims_json: if u.claims.is_empty() {
                String::new()
            } else {
                Value::Object(u.claims.clone()).to_string()
            },
        }
    }
}

impl StoredUser {
    pub fn to_auth_user(&self) -> AuthUser {
        let claims = match serde_json::from_str::<Value>(&self.claims_json) {
            Ok(Value::Object(m)) => m,
            _ => Default::default(),
        };
        AuthUser {
            id: self.id.clone(),
            permissions: self.permissions.clone(),
            roles: self.roles.clone(),
            name: self.name.clone(),
            claims,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RateLimit {
    pub messages_per_minute: u32,
    pub last_reset: Millis,
    pub count: u32,
}

/// The seed's `ConnectionMetadata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub ip: String,
    pub user_agent: String,
    pub connected_at: Millis,
    pub last_activity: Millis,
    pub client_version: Option<String>,
    pub connection_type: ConnType,
    pub permissions: Vec<String>,
    pub rate_limit: RateLimit,
}

impl Metadata {
    pub fn to_json(&self) -> Value {
        json!({
            "ip": self.ip,
            "userAgent": self.user_agent,
            "connectedAt": rfc3339(self.connected_at),
            "lastActivity": rfc3339(self.last_activity),
            "clientVersion": self.client_version,
            "connectionType": self.connection_type.as_str(),
            "permissions": self.permissions,
            "rateLimit": {
                "messagesPerMinute": self.rate_limit.messages_per_minute,
                "lastReset": rfc3339(self.rate_limit.last_reset),
            },
        })
    }
}

/// One connection as stored in the `conns` tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnRecord {
    pub id: Uuid,
    pub user: StoredUser,
    pub session_id: Option<String>,
    pub state: ConnState,
    pub connected_at: Millis,
    pub expires_at: Millis,
    pub detached_at: Option<Millis>,
    pub meta: Metadata,
    /// SHA-256 of the resume token; the token itself is never stored.
    pub resume_hash: [u8; 32],
    /// Last `seq` assigned to a frame for this connection.
    pub seq: u64,
    /// Highest `seq` the client acknowledged.
    pub acked: u64,
    /// The connection's first id. Deliveries name their targets by it, so a resumed or
    /// migrated connection keeps its replay buffer across a restart without rewriting them.
    pub replay_key: Uuid,
}

impl ConnRecord {
    /// `ConnectionInfo` of the API; `node` holds its socket (None while Detached).
    pub fn info_json(&self, node: Option<&str>) -> Value {
        json!({
            "connectionId": self.id,
            "userId": self.user.id,
            "sessionId": self.session_id,
            "state": self.state.as_str(),
            "node": node,
            "connectedAt": rfc3339(self.connected_at),
            "expiresAt": rfc3339(self.expires_at),
            "metadata": self.meta.to_json(),
        })
    }
}

/// One delivery as stored in the `deliveries` tree: the frame's shape and every
/// (connection replay key, seq) it was given to. The frame each connection got is
/// `{"type":"<kind>","seq":<seq>,<rest>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDelivery {
    pub kind: String,
    pub rest: String,
    pub targets: Vec<([u8; 16], u64)>,
}

/// One frame's target in a delivery: a connection and the seq it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub id: Uuid,
    pub seq: u64,
}

/// Where a session change came from (`source` of `session:updates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Connection lifecycle events (SPEC §5 `ConnectionEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Connected,
    Authenticated,
    Disconnected,
    Detached,
    Resumed,
    Migrated,
    Evicted,
    Expired,
    Forced,
    RateLimited,
    Error,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::Connected,
        EventType::Authenticated,
        EventType::Disconnected,
        EventType::Detached,
        EventType::Resumed,
        EventType::Migrated,
        EventType::Evicted,
        EventType::Expired,
        EventType::Forced,
        EventType::RateLimited,
        EventType::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Connected => "connected",
            EventType::Authenticated => "authenticated",
            EventType::Disconnected => "disconnected",
            EventType::Detached => "detached",
            EventType::Resumed => "resumed",
            EventType::Migrated => "migrated",
            EventType::Evicted => "evicted",
            EventType::Expired => "expired",
            EventType::Forced => "forced",
            EventType::RateLimited => "rate_limited",
            EventType::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub connection_id: Uuid,
    pub user_id: String,
    pub event_type: EventType,
    pub timestamp: Millis,
    pub details_json: String,
}

impl StoredEvent {
    pub fn to_json(&self) -> Value {
        let details = serde_json::from_str::<Value>(&self.details_json).unwrap_or(Value::Null);
        Self::json(
            self.seq,
            self.connection_id,
            &self.user_id,
            self.event_type,
            self.timestamp,
            details,
        )
    }

    /// An event's JSON from its parts, `details` as given (not parsed back from a string).
    pub fn json(
        seq: u64,
        connection_id: Uuid,
        user_id: &str,
        event_type: EventType,
        timestamp: Millis,
        details: Value,
    ) -> Value {
        json!({
            "seq": seq,
            "connectionId": connection_id,
            "userId": user_id,
            "eventType": event_type.as_str(),
            "timestamp": rfc3339(timestamp),
            "details": details,
        })
    }
}

/// A server-side session as stored in the `sessions` tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub last_seen: Millis,
    pub data_json: String,
    pub permissions: Vec<String>,
    pub device_json: String,
}

// ----- what a stored record may hold ---------------------------------------------------

/// The largest seq, event seq or delivery id a record may carry: 2^53, the largest whole
/// number a JSON client (JavaScript) reads exactly. Counters start at 1 and grow by one, so
/// nothing real comes near it; a record past it is damage, and taking it for real would
/// have every counter after it jump there.
pub const MAX_SEQ: u64 = 1 << 53;

/// The latest instant a record may carry: the end of year 9999, the last an RFC 3339 time
/// can write.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

fn check_time(what: &str, t: Millis) -> Result<(), String> {
    if (0..=MAX_MILLIS).contains(&t) {
        Ok(())
    } else {
        Err(format!("{what} {t} is not a time between 1970 and 9999"))
    }
}

fn check_seq(what: &str, n: u64) -> Result<(), String> {
    if n <= MAX_SEQ {
        Ok(())
    } else {
        Err(format!("{what} {n} is past 2^53"))
    }
}

fn check_user(id: &str) -> Result<(), String> {
    if id.is_empty() || id.contains('\0') {
        Err(format!("user id {id:?} is empty or holds a NUL"))
    } else {
        Ok(())
    }
}

fn check_json(what: &str, text: &str, object: bool) -> Result<(), String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => Ok(()),
        Ok(_) if !object => Ok(()),
        Ok(_) => Err(format!("{what} is not a JSON object")),
        Err(e) => Err(format!("{what} is not JSON: {e}")),
    }
}

impl ConnRecord {
    /// Whether the record holds only what tether could have written: the checks a restore
    /// makes, and start-up's before it takes a record in.
    pub fn check(&self) -> Result<(), String> {
        check_user(&self.user.id)?;
        if !self.user.claims_json.is_empty() {
            check_json("the claims", &self.user.claims_json, true)?;
        }
        check_seq("seq", self.seq)?;
        if self.acked > self.seq {
            return Err(format!("acked {} is past its seq {}", self.acked, self.seq));
        }
        check_time("connectedAt", self.connected_at)?;
        check_time("expiresAt", self.expires_at)?;
        check_time("metadata.connectedAt", self.meta.connected_at)?;
        check_time("lastActivity", self.meta.last_activity)?;
        check_time("rateLimit.lastReset", self.meta.rate_limit.last_reset)?;
        if let Some(t) = self.detached_at {
            check_time("detachedAt", t)?;
        }
        Ok(())
    }
}

impl StoredEvent {
    /// See [`ConnRecord::check`].
    pub fn check(&self) -> Result<(), String> {
        check_seq("seq", self.seq)?;
        check_time("timestamp", self.timestamp)?;
        check_json("details", &self.details_json, false)
    }
}

impl SessionRecord {
    /// See [`ConnRecord::check`].
    pub fn check(&self) -> Result<(), String> {
        check_user(&self.user_id)?;
        check_time("createdAt", self.created_at)?;
        check_time("expiresAt", self.expires_at)?;
        check_time("lastSeen", self.last_seen)?;
        check_json("data", &self.data_json, true)?;
        check_json("device", &self.device_json, false)
    }
}

impl StoredDelivery {
    /// See [`ConnRecord::check`]. The frame it renders must be one JSON object.
    pub fn check(&self) -> Result<(), String> {
        let kind = crate::protocol::FrameKind::parse(&self.kind)
            .ok_or_else(|| format!("frame kind {:?} is not one tether sends", self.kind))?;
        let frame = crate::protocol::FrameTemplate {
            kind,
            rest: self.rest.clone(),
        };
        check_json("the frame", &frame.render(1), true)?;
        for (_, seq) in &self.targets {
            check_seq("a target's seq", *seq)?;
            if *seq == 0 {
                return Err("a target's seq is 0".into());
            }
        }
        Ok(())
    }
}
