//! Typed ways a connection ends and an API call fails, each mapped to the wire in one place.

use serde_json::json;
use warp::http::StatusCode;

/// What becomes of a connection's record once its socket is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Removed from the registry and the store.
    Remove,
    /// Kept as Detached, resumable until the grace period ends.
    Detach,
    /// Left as it is: it was migrated away, or the server is stopping (start-up detaches it).
    Keep,
}

/// A server-initiated close: the code, a short reason, and whether the client should
/// reconnect. It is sent as a `disconnect` frame and then as the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: String,
    pub fate: Fate,
}

impl Disconnect {
    fn new(code: u16, reason: &str, fate: Fate) -> Disconnect {
        Disconnect {
            code,
            reason: truncate_reason(reason),
            fate,
        }
    }

    pub fn normal() -> Self {
        Self::new(1000, "normal close", Fate::Remove)
    }
    pub fn shutdown() -> Self {
        Self::new(1001, "server shutting down", Fate::Keep)
    }
    pub fn too_large() -> Self {
        Self::new(1009, "frame too large", Fate::Remove)
    }
    pub fn server_full() -> Self {
        Self::new(1013, "server full", Fate::Remove)
    }
    pub fn auth_timeout() -> Self {
        Self::new(4002, "authentication timeout", Fate::Remove)
    }
    pub fn expired() -> Self {
        Self::new(4004, "connection expired", Fate::Detach)
    }
    pub fn operator_reconnect(reason: &str) -> Self {
        Self::new(4006, reason, Fate::Remove)
    }
    pub fn slow_consumer() -> Self {
        Self::new(4010, "slow consumer", Fate::Detach)
    }
    pub fn no_heartbeat() -> Self {
        Self::new(4012, "no heartbeat", Fate::Detach)
    }
    pub fn unauthorized(reason: &str) -> Self {
        Self::new(4501, reason, Fate::Remove)
    }
    pub fn session_ended(reason: &str) -> Self {
        Self::new(4503, reason, Fate::Remove)
    }
    pub fn evicted() -> Self {
        Self::new(
            4505,
            "evicted: too many connections for this user",
            Fate::Remove,
        )
    }
    pub fn operator(reason: &str) -> Self {
        Self::new(4506, reason, Fate::Remove)
    }
    pub fn replaced() -> Self {
        Self::new(4507, "replaced by a resumed connection", Fate::Keep)
    }
    pub fn rate_abuse() -> Self {
        Self::new(4508, "rate limit abuse", Fate::Remove)
    }
    pub fn protocol_abuse() -> Self {
        Self::new(4509, "too many bad frames", Fate::Remove)
    }

    /// 4000–4499 and the 1xxx codes that invite a retry mean "reconnect".
    pub fn reconnect(&self) -> bool {
        matches!(self.code, 1001 | 1013 | 4000..=4499)
    }

    pub fn frame(&self) -> String {
        json!({
            "type": "disconnect",
            "code": self.code,
            "reason": self.reason,
            "reconnect": self.reconnect(),
        })
        .to_string()
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

/// An HTTP API error: `{"error": {"code", "message"}}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// A failure of our own (the store refused a write). The detail goes to the log, not to
    /// the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error answering an API call");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<sled::Error> for ApiError {
    fn from(e: sled::Error) -> Self {
        ApiError::internal(e)
    }
}
