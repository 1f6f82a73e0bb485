//! Close codes (SPEC §4) and the typed close that carries one.

use serde::{Deserialize, Serialize};

use super::ServerFrame;

/// What becomes of a connection's record once its socket is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fate {
    /// Removed from the registry and the store.
    Remove,
    /// Kept as Detached, resumable until the grace period ends.
    Detach,
    /// Left as it is: it was migrated away, or the server is stopping (start-up detaches it).
    Keep,
}

/// The close codes of SPEC §4. 4000–4499 mean "reconnect and resume"; 4500–4999 mean "do
/// not reconnect without the user".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum CloseCode {
    Normal = 1000,
    ShuttingDown = 1001,
    ProtocolError = 1002,
    InvalidData = 1007,
    TooLarge = 1009,
    ServerFull = 1013,
    AuthTimeout = 4002,
    Expired = 4004,
    OperatorReconnect = 4006,
    SlowConsumer = 4010,
    NoHeartbeat = 4012,
    Unauthorized = 4501,
    SessionEnded = 4503,
    Evicted = 4505,
    Operator = 4506,
    Replaced = 4507,
    RateAbuse = 4508,
    ProtocolAbuse = 4509,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether a client should reconnect (and resume) after this close.
    pub fn reconnect(self) -> bool {
        matches!(self.as_u16(), 1001 | 1013 | 4000..=4499)
    }

    /// What becomes of the record. A connection that can come back (expired, slow, silent,
    /// or told to retry: 1013 after it was registered, when a cluster node lost its lease or
    /// Redis its data) is kept Detached for its resume; one that was moved (resumed
    /// elsewhere) or is waiting for the server to start again is left as it is; every other
    /// close removes it, a client that broke the protocol (1002, 1007) among them: its socket
    /// is not lost, and resuming it would only replay to a client that cannot frame.
    pub fn fate(self) -> Fate {
        match self {
            CloseCode::Expired
            | CloseCode::SlowConsumer
            | CloseCode::NoHeartbeat
            | CloseCode::ServerFull => Fate::Detach,
            CloseCode::ShuttingDown | CloseCode::Replaced => Fate::Keep,
            CloseCode::ProtocolError | CloseCode::InvalidData => Fate::Remove,
            _ => Fate::Remove,
        }
    }

    fn default_reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal close",
            CloseCode::ShuttingDown => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidData => "invalid frame payload",
            CloseCode::TooLarge => "frame too large",
            CloseCode::ServerFull => "server full",
            CloseCode::AuthTimeout => "authentication timeout",
            CloseCode::Expired => "connection expired",
            CloseCode::OperatorReconnect => "disconnected by an operator",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::NoHeartbeat => "no heartbeat",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::SessionEnded => "session ended",
            CloseCode::Evicted => "evicted: too many connections for this user",
            CloseCode::Operator => "disconnected by an operator",
            CloseCode::Replaced => "replaced by a resumed connection",
            CloseCode::RateAbuse => "rate limit abuse",
            CloseCode::ProtocolAbuse => "too many bad frames",
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> u16 {
        c.as_u16()
    }
}

impl PartialEq<u16> for CloseCode {
    fn eq(&self, other: &u16) -> bool {
        self.as_u16() == *other
    }
}

/// A server-initiated close: the code and a short reason. It is sent as a `disconnect`
/// frame and then as the close frame; the code says whether the client should reconnect
/// and what becomes of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: CloseCode,
    pub reason: String,
}

impl Disconnect {
    pub fn new(code: CloseCode, reason: &str) -> Self {
        Disconnect {
            code,
            reason: truncate_reason(reason),
        }
    }

    pub fn of(code: CloseCode) -> Self {
        Self::new(code, code.default_reason())
    }

    pub fn normal() -> Self {
        Self::of(CloseCode::Normal)
    }
    pub fn shutdown() -> Self {
        Self::of(CloseCode::ShuttingDown)
    }
    pub fn too_large() -> Self {
        Self::of(CloseCode::TooLarge)
    }
    pub fn server_full() -> Self {
        Self::of(CloseCode::ServerFull)
    }
    pub fn auth_timeout() -> Self {
        Self::of(CloseCode::AuthTimeout)
    }
    pub fn expired() -> Self {
        Self::of(CloseCode::Expired)
    }
    pub fn operator_reconnect(reason: &str) -> Self {
        Self::new(CloseCode::OperatorReconnect, reason)
    }
    pub fn slow_consumer() -> Self {
        Self::of(CloseCode::SlowConsumer)
    }
    pub fn no_heartbeat() -> Self {
        Self::of(CloseCode::NoHeartbeat)
    }
    pub fn unauthorized(reason: &str) -> Self {
        Self::new(CloseCode::Unauthorized, reason)
    }
    pub fn session_ended(reason: &str) -> Self {
        Self::new(CloseCode::SessionEnded, reason)
    }
    pub fn evicted() -> Self {
        Self::of(CloseCode::Evicted)
    }
    pub fn operator(reason: &str) -> Self {
        Self::new(CloseCode::Operator, reason)
    }
    pub fn replaced() -> Self {
        Self::of(CloseCode::Replaced)
    }
    pub fn rate_abuse() -> Self {
        Self::of(CloseCode::RateAbuse)
    }
    pub fn protocol_abuse() -> Self {
        Self::of(CloseCode::ProtocolAbuse)
    }

    pub fn reconnect(&self) -> bool {
        self.code.reconnect()
    }

    pub fn fate(&self) -> Fate {
        self.code.fate()
    }

    /// The `disconnect` frame's text.
    pub fn frame(&self) -> String {
        ServerFrame::Disconnect {
            code: self.code.as_u16(),
            reason: &self.reason,
            reconnect: self.reconnect(),
        }
        .to_text()
    }
}

/// Close reasons must fit the 123-byte limit of a close frame; we keep them well under.
fn truncate_reason(reason: &str) -> String {
    const MAX: usize = 100;
    if reason.len() <= MAX {
        return reason.to_string();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
