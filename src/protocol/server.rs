//! Server frames (SPEC §3), and the template a fan-out renders per socket.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::ErrorBody;

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

    /// The length of [`FrameTemplate::render`]'s frame for `seq`, without rendering it.
    pub fn rendered_len(&self, seq: u64) -> usize {
        let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
        r#"{"type":"","seq":,"#.len() + self.kind.as_str().len() + digits + self.rest.len()
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
    fn rendered_len_is_the_length_of_the_rendered_frame() {
        let t = FrameTemplate::message(r#"{"a":"é"}"#, "2026-01-01T00:00:00.000Z");
        for seq in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(t.rendered_len(seq), t.render(seq).len(), "seq {seq}");
        }
    }
}
