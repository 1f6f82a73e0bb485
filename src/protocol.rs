//! The wire protocol of `/ws` and `/sse` (SPEC §2–§4, `docs/protocol.md`): client frames,
//! server frames and close codes, as types.
//!
//! - [`ClientFrame::parse`] is the one place a client's text frame becomes a value. It reads
//!   the frame's `type` and `id` first, then the fields of that type, so a frame that is
//!   wrong gets an answer that says what was wrong with it, and its `id` echoed exactly as
//!   sent: ids are kept as raw JSON text, so `2^70` comes back as `2^70`, not as a float.
//! - [`ServerFrame`] is every frame the server sends but the two that carry a per-connection
//!   `seq` (`message`, `session.updated`): a fan-out renders those once per socket from a
//!   [`FrameTemplate`], which splices the `seq` into text made once.
//! - [`CloseCode`] is every code of SPEC §4 with its `reconnect` flag and what becomes of the
//!   connection's record ([`Fate`]); [`Disconnect`] is a close with its reason, sent as a
//!   `disconnect` frame and then as the close frame.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// An `id` a client put on a frame, kept as the JSON text it sent.
pub type FrameId = Box<RawValue>;

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

    /// What becomes of the record. A connection that can come back (expired, slow, silent)
    /// is kept Detached for its resume; one that was moved (resumed elsewhere) or is waiting
    /// for the server to start again is left as it is; every other close removes it.
    pub fn fate(self) -> Fate {
        match self {
            CloseCode::Expired | CloseCode::SlowConsumer | CloseCode::NoHeartbeat => Fate::Detach,
            CloseCode::ShuttingDown | CloseCode::Replaced => Fate::Keep,
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

// ----- errors -------------------------------------------------------------------------

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
    Internal,
    // Frame errors (WebSocket `error` frames).
    BadFrame,
    RateLimited,
    NoSession,
    SessionEnded,
    AlreadyAuthenticated,
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
            ErrorCode::Internal => "internal",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NoSession => "no_session",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
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
            ErrorCode::Conflict | ErrorCode::AlreadyAuthenticated => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InvalidValue => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
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

// ----- client frames ------------------------------------------------------------------

/// `resume` of an `auth` frame.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeField {
    pub connection_id: String,
    pub token: String,
    pub last_seq: Option<u64>,
}

/// A client frame (SPEC §3), parsed.
#[derive(Debug)]
pub enum ClientFrame {
    Auth {
        token: Option<String>,
        session_id: Option<String>,
        resume: Option<ResumeField>,
    },
    Ping,
    Refresh {
        token: String,
    },
    SessionUpdate {
        updates: serde_json::Map<String, Value>,
    },
    Ack {
        seq: u64,
    },
}

/// A client frame with the `id` it carried.
#[derive(Debug)]
pub struct Parsed {
    pub frame: ClientFrame,
    pub id: Option<FrameId>,
}

/// A frame that is not one of the protocol's: why, and its `id` if one could be read.
#[derive(Debug)]
pub struct BadFrame {
    pub message: &'static str,
    pub id: Option<FrameId>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFields {
    token: Option<String>,
    session_id: Option<String>,
    resume: Option<ResumeField>,
}

#[derive(Deserialize)]
struct RefreshFields {
    token: String,
}

#[derive(Deserialize)]
struct UpdateFields {
    updates: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct AckFields {
    seq: u64,
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Parsed, BadFrame> {
        let env: Envelope = serde_json::from_str(text).map_err(|_| BadFrame {
            message: "not a JSON object with a string `type`",
            id: None,
        })?;
        // `null` is no id.
        let id = env
            .id
            .filter(|raw| raw.get() != "null")
            .map(|raw| raw.to_owned());
        let bad = |message| BadFrame {
            message,
            id: id.clone(),
        };
        let frame = match &*env.kind {
            "ping" => ClientFrame::Ping,
            "ack" => {
                let f: AckFields =
                    serde_json::from_str(text).map_err(|_| bad("ack needs a numeric `seq`"))?;
                ClientFrame::Ack { seq: f.seq }
            }
            "refresh" => {
                let f: RefreshFields =
                    serde_json::from_str(text).map_err(|_| bad("refresh needs a `token`"))?;
                ClientFrame::Refresh { token: f.token }
            }
            "session.update" => {
                let f: UpdateFields = serde_json::from_str(text)
                    .map_err(|_| bad("session.update needs an `updates` object"))?;
                ClientFrame::SessionUpdate { updates: f.updates }
            }
            "auth" => {
                let f: AuthFields = serde_json::from_str(text).map_err(|_| {
                    bad("auth needs a `token` or `sessionId` string, and `resume` as {connectionId, token, lastSeq}")
                })?;
                ClientFrame::Auth {
                    token: f.token,
                    session_id: f.session_id,
                    resume: f.resume,
                }
            }
            _ => return Err(bad("unknown frame type")),
        };
        Ok(Parsed { frame, id })
    }
}

// ----- server frames ------------------------------------------------------------------

/// `limits` of a `welcome`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WelcomeLimits {
    pub messages_per_minute: u32,
    pub max_message_bytes: usize,
}

/// Every server frame but `message` and `session.updated` (see [`FrameTemplate`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ServerFrame<'a> {
    #[serde(rename = "welcome")]
    Welcome {
        connection_id: uuid::Uuid,
        user_id: &'a str,
        session_id: Option<&'a str>,
        resume_token: &'a str,
        resumed: bool,
        previous_connection_id: Option<uuid::Uuid>,
        resume_error: Option<&'a str>,
        expires_at: String,
        heartbeat_interval_ms: u64,
        limits: WelcomeLimits,
        seq: u64,
    },
    #[serde(rename = "pong")]
    Pong { id: Option<&'a RawValue> },
    #[serde(rename = "refreshed")]
    Refreshed {
        expires_at: String,
        id: Option<&'a RawValue>,
    },
    #[serde(rename = "ack")]
    Ack { id: &'a RawValue },
    #[serde(rename = "error")]
    Error(ErrorBody<'a>),
    #[serde(rename = "disconnect")]
    Disconnect {
        code: u16,
        reason: &'a str,
        reconnect: bool,
    },
}

impl ServerFrame<'_> {
    /// The frame as the JSON text that goes on the wire.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// What kind of seq-carrying frame a template renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameKind {
    Message,
    SessionUpdated,
}

impl FrameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Message => "message",
            FrameKind::SessionUpdated => "session.updated",
        }
    }

    pub fn parse(s: &str) -> Option<FrameKind> {
        match s {
            "message" => Some(FrameKind::Message),
            "session.updated" => Some(FrameKind::SessionUpdated),
            _ => None,
        }
    }
}

/// A `message` or `session.updated` frame without its `seq`:
/// `{"type":"<kind>","seq":<seq>,<rest>` where `rest` is the remaining fields and the
/// closing brace. A delivery to many connections renders it once per socket.
#[derive(Debug, Clone)]
pub struct FrameTemplate {
    pub kind: FrameKind,
    pub rest: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionUpdatedRest<'a> {
    session_id: &'a str,
    updates: &'a Value,
    source: &'a str,
    connection_id: Option<&'a str>,
    ts: &'a str,
}

impl FrameTemplate {
    /// A `message` frame; `data` is JSON text already, spliced in rather than re-encoded.
    pub fn message(data: &str, ts: &str) -> FrameTemplate {
        let ts = serde_json::to_string(ts).expect("a string serializes");
        FrameTemplate {
            kind: FrameKind::Message,
            rest: format!("\"data\":{data},\"ts\":{ts}}}"),
        }
    }

    /// A `session.updated` frame.
    pub fn session_updated(
        session_id: &str,
        updates: &Value,
        source: &str,
        connection_id: Option<&str>,
        ts: &str,
    ) -> FrameTemplate {
        let body = serde_json::to_string(&SessionUpdatedRest {
            session_id,
            updates,
            source,
            connection_id,
            ts,
        })
        .expect("a session update serializes");
        FrameTemplate {
            kind: FrameKind::SessionUpdated,
            // `{...}`: type and seq go in front of the rest, per connection.
            rest: body[1..].to_string(),
        }
    }

    /// The frame for `seq`, built in one allocation of the right size.
    pub fn render(&self, seq: u64) -> String {
        use std::fmt::Write;
        let kind = self.kind.as_str();
        let mut s = String::with_capacity(kind.len() + self.rest.len() + 40);
        s.push_str("{\"type\":\"");
        s.push_str(kind);
        s.push_str("\",\"seq\":");
        let _ = write!(s, "{seq}");
        s.push(',');
        s.push_str(&self.rest);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_echoed_exactly_as_sent() {
        let big = r#"{"type":"ping","id":1180591620717411303424}"#;
        let p = ClientFrame::parse(big).unwrap();
        let id = p.id.unwrap();
        let pong = ServerFrame::Pong { id: Some(&id) }.to_text();
        assert_eq!(pong, r#"{"type":"pong","id":1180591620717411303424}"#);
        let p = ClientFrame::parse(r#"{"type":"ping","id":{"a":[1,"x"]}}"#).unwrap();
        let ack = ServerFrame::Ack {
            id: p.id.as_deref().unwrap(),
        }
        .to_text();
        assert_eq!(ack, r#"{"type":"ack","id":{"a":[1,"x"]}}"#);
        assert!(ClientFrame::parse(r#"{"type":"ping","id":null}"#)
            .unwrap()
            .id
            .is_none());
    }

    #[test]
    fn a_bad_frame_says_what_is_wrong_and_keeps_its_id() {
        let e = ClientFrame::parse(r#"{"type":"ack","id":"a1","seq":"x"}"#).unwrap_err();
        assert_eq!(e.message, "ack needs a numeric `seq`");
        assert_eq!(e.id.unwrap().get(), r#""a1""#);
        let e = ClientFrame::parse(r#"{"type":"nope","id":7}"#).unwrap_err();
        assert_eq!(e.message, "unknown frame type");
        assert_eq!(e.id.unwrap().get(), "7");
        for text in ["[1]", "{}", r#"{"type":3}"#, "not json"] {
            let e = ClientFrame::parse(text).unwrap_err();
            assert_eq!(
                e.message, "not a JSON object with a string `type`",
                "{text}"
            );
        }
        let e = ClientFrame::parse(r#"{"type":"session.update","updates":[1]}"#).unwrap_err();
        assert_eq!(e.message, "session.update needs an `updates` object");
    }

    #[test]
    fn frames_render_as_the_contract_says() {
        let t = FrameTemplate::message(r#"{"a":1}"#, "2026-01-01T00:00:00.000Z");
        let v: Value = serde_json::from_str(&t.render(7)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","seq":7,"data":{"a":1},"ts":"2026-01-01T00:00:00.000Z"})
        );
        let t = FrameTemplate::session_updated(
            "s1",
            &serde_json::json!({"k":null}),
            "websocket",
            None,
            "t",
        );
        let v: Value = serde_json::from_str(&t.render(2)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"session.updated","seq":2,"sessionId":"s1","updates":{"k":null},"source":"websocket","connectionId":null,"ts":"t"})
        );
        let d: Value = serde_json::from_str(&Disconnect::slow_consumer().frame()).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"type":"disconnect","code":4010,"reason":"slow consumer","reconnect":true})
        );
    }

    #[test]
    fn close_codes_say_reconnect_by_range() {
        for c in [
            CloseCode::ShuttingDown,
            CloseCode::ServerFull,
            CloseCode::AuthTimeout,
            CloseCode::SlowConsumer,
        ] {
            assert!(c.reconnect(), "{c:?}");
        }
        for c in [
            CloseCode::Normal,
            CloseCode::TooLarge,
            CloseCode::Unauthorized,
            CloseCode::Evicted,
        ] {
            assert!(!c.reconnect(), "{c:?}");
        }
        assert_eq!(Disconnect::operator(&"x".repeat(300)).reason.len(), 100);
    }
}
