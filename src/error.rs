//! Errors of the HTTP API: the one JSON body of [`crate::protocol::ErrorBody`] with its
//! status, and every domain error mapped to its HTTP status here and nowhere else.

use warp::http::StatusCode;

use crate::protocol::{CloseCode, Disconnect};
use crate::store::StoreError;

pub use crate::protocol::{ErrorBody, ErrorCode};

/// An HTTP API error: `{"error": {"code", "message"}}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Set on an SSE refusal: the close code a WebSocket would have seen.
    pub close_code: Option<u16>,
    /// Set on a 405: the methods the path takes (the `Allow` header).
    pub allow: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(code.status()).expect("a valid status"),
            code,
            message: message.into(),
            close_code: None,
            allow: String::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::MethodNotAllowed, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// A failure of our own (the store refused a write). The detail goes to the log, not to
    /// the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error answering an API call");
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// A connection refused before it was upgraded (SSE): 401 for a credential, 503
    /// otherwise, with the close code a WebSocket would have seen.
    pub fn refused(d: &Disconnect) -> Self {
        let code = if d.code == CloseCode::Unauthorized {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::Unavailable
        };
        ApiError {
            close_code: Some(d.code.as_u16()),
            ..Self::new(code, d.reason.clone())
        }
    }

    /// A connection the store cannot register now (`/ws` before the upgrade, `/sse`):
    /// always 503, the status a client retries, with the store's code.
    pub fn store_refused_connect(code: ErrorCode) -> Self {
        let message = if code == ErrorCode::InsufficientStorage {
            "the server cannot store changes right now (disk full); retry later"
        } else {
            "the server cannot store changes right now; retry later"
        };
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..Self::new(code, message)
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = ErrorBody::api(self.code, &self.message);
        body.close_code = self.close_code;
        serde_json::json!({ "error": body })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => ApiError::unavailable(why),
            StoreError::Refused { code, message, .. } => ApiError::new(code, message),
            // The disk filled under sled (the free-space guard was off or outrun): say so,
            // rather than "internal".
            StoreError::Sled(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::StorageFull =>
            {
                tracing::error!(error = %io, "the store ran out of disk space");
                ApiError::new(
                    ErrorCode::InsufficientStorage,
                    "the disk holding the data directory is full",
                )
            }
            e => ApiError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_body_for_the_api_and_for_frames() {
        let api = ApiError::not_found("unknown connection x").body();
        assert_eq!(
            api,
            serde_json::json!({"error": {"code": "not_found", "message": "unknown connection x"}})
        );
        let frame = serde_json::to_value(ErrorBody::frame(ErrorCode::BadFrame, "m", None)).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"code": "bad_frame", "message": "m", "id": null})
        );
        let sse = ApiError::refused(&Disconnect::unauthorized("bad token")).body();
        assert_eq!(sse["error"]["closeCode"], 4501);
        assert_eq!(ApiError::refused(&Disconnect::server_full()).status, 503);
    }
}
