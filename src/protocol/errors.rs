//! The one error body of the API, the WebSocket `error` frame and SSE refusals.

use serde::Serialize;
use serde_json::value::RawValue;

/// The `code` of an error: a word a client can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    InvalidValue,
    Unavailable,
    /// The disk holding the data directory is nearly full (507).
    InsufficientStorage,
    /// A store flush ran past `flush_timeout_ms` (503).
    StoreStalled,
    /// The store failed a write and refuses further ones until restarted (503).
    StoreFailed,
    Internal,
    // Frame errors (WebSocket `error` frames).
    BadFrame,
    RateLimited,
    NoSession,
    SessionEnded,
    AlreadyAuthenticated,
    // Session limits (a `session.update` frame and the session routes).
    SessionTooLarge,
    TooManySessions,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::StoreStalled => "store_stalled",
            ErrorCode::StoreFailed => "store_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NoSession => "no_session",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::SessionTooLarge => "session_too_large",
            ErrorCode::TooManySessions => "too_many_sessions",
        }
    }

    /// The HTTP status an API answer with this code has.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadFrame => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::NoSession | ErrorCode::SessionEnded => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::AlreadyAuthenticated | ErrorCode::TooManySessions => {
                409
            }
            ErrorCode::PayloadTooLarge | ErrorCode::SessionTooLarge => 413,
            ErrorCode::InvalidValue => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable | ErrorCode::StoreStalled | ErrorCode::StoreFailed => 503,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::Internal => 500,
        }
    }
}

/// The one error body: `{"code", "message"}` in the API (inside `{"error": …}`), and with
/// `id` (and `retryAfterMs`) in a WebSocket `error` frame; an SSE refusal adds `closeCode`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody<'a> {
    pub code: ErrorCode,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Skip::skip")]
    pub id: Skip<Option<&'a RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
}

/// A field that is left out of the JSON when `None` is "absent" rather than `null`: an
/// `error` frame always carries `id` (null when the client frame had none), the API body
/// never does.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct Skip<T>(pub T, #[serde(skip)] pub bool);

impl<T> Skip<T> {
    fn skip(&self) -> bool {
        self.1
    }
}

impl<'a> ErrorBody<'a> {
    /// The body of an API error (no `id`).
    pub fn api(code: ErrorCode, message: &'a str) -> Self {
        ErrorBody {
            code,
            message,
            id: Skip(None, true),
            retry_after_ms: None,
            close_code: None,
        }
    }

    /// The body of a WebSocket `error` frame, echoing the client frame's `id`.
    pub fn frame(code: ErrorCode, message: &'a str, id: Option<&'a RawValue>) -> Self {
        ErrorBody {
            code,
            message,
            id: Skip(id, false),
            retry_after_ms: None,
            close_code: None,
        }
    }
}
