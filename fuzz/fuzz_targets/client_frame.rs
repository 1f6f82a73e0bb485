//! Client frames: `ClientFrame::parse` against a reading of the same text that knows only
//! what `docs/protocol.md` §3.2 says a frame is, and the server frames that answer it.
//!
//! What must hold, for any text a client can send:
//! - `parse` returns, never panics;
//! - a frame is accepted only if it is a JSON object whose `type` is one of the five and
//!   whose fields have the types §3.2 gives them, and then it carries exactly those values;
//!   anything else is a `BadFrame` with the message for what was wrong;
//! - the `id` is kept as the very text the client sent (`null` is no id), in a good frame
//!   and a bad one, and every answer that echoes it (`pong`, `ack`, `refreshed`, `error`)
//!   carries that text unchanged;
//! - a `session.update`'s `updates` come back in `session.updated` as the same JSON.

#![no_main]

use std::collections::HashMap;
use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tether::protocol::{
    ClientFrame, ErrorBody, ErrorCode, FrameTemplate, ServerFrame, WelcomeLimits,
};

const NOT_A_FRAME: &str = "not a JSON object with a string `type`";
const ACK: &str = "ack needs a numeric `seq`";
const REFRESH: &str = "refresh needs a `token`";
const UPDATE: &str = "session.update needs an `updates` object";
const AUTH: &str =
    "auth needs a `token` or `sessionId` string, and `resume` as {connectionId, token, lastSeq}";
const UNKNOWN: &str = "unknown frame type";

/// The members of a JSON object in order, duplicates kept, each value as its JSON text.
/// Anything but an object does not deserialize.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn members(text: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    serde_json::from_str::<Members>(text).ok().map(|m| m.0)
}

/// An object's fields by name; `Err` when a name is there twice.
struct Fields<'a>(HashMap<&'a str, Vec<&'a str>>);

impl<'a> Fields<'a> {
    fn new(m: &'a [(String, Box<RawValue>)]) -> Self {
        let mut f: HashMap<&str, Vec<&str>> = HashMap::new();
        for (k, v) in m {
            f.entry(k.as_str()).or_default().push(v.get());
        }
        Fields(f)
    }

    /// The field's text: `Ok(None)` when absent, `Err` when given twice.
    fn one(&self, name: &str) -> Result<Option<&'a str>, ()> {
        match self.0.get(name).map(Vec::as_slice) {
            None => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(_) => Err(()),
        }
    }

    fn required<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Option<T> {
        serde_json::from_str(self.one(name).ok()??).ok()
    }

    /// Absent or null is `None`; anything but a `T` is `Err`.
    fn optional<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, ()> {
        match self.one(name)? {
            None | Some("null") => Ok(None),
            Some(text) => serde_json::from_str(text).map(Some).map_err(|_| ()),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    Bad(&'static str, Option<String>),
    Ping(Option<String>),
    Ack(u64, Option<String>),
    Refresh(String, Option<String>),
    Update(Map<String, Value>, Option<String>),
    Auth {
        token: Option<String>,
        session_id: Option<String>,
        resume: Option<(String, String, Option<u64>)>,
        id: Option<String>,
    },
}

/// What §3.2 says `text` is.
fn expect(text: &str) -> Expect {
    let Some(m) = members(text) else {
        return Expect::Bad(NOT_A_FRAME, None);
    };
    let f = Fields::new(&m);
    let Some(kind) = f.required::<String>("type") else {
        return Expect::Bad(NOT_A_FRAME, None);
    };
    let id = match f.one("id") {
        Err(()) => return Expect::Bad(NOT_A_FRAME, None),
        Ok(None) | Ok(Some("null")) => None,
        Ok(Some(raw)) => Some(raw.to_string()),
    };
    let bad = |message| Expect::Bad(message, id.clone());
    match kind.as_str() {
        "ping" => Expect::Ping(id),
        "ack" => match f.required("seq") {
            Some(seq) => Expect::Ack(seq, id),
            None => bad(ACK),
        },
        "refresh" => match f.required("token") {
            Some(token) => Expect::Refresh(token, id),
            None => bad(REFRESH),
        },
        "session.update" => match f.required("updates") {
            Some(updates) => Expect::Update(updates, id),
            None => bad(UPDATE),
        },
        "auth" => {
            let resume = match f.one("resume") {
                Err(()) => return bad(AUTH),
                Ok(None) | Ok(Some("null")) => None,
                Ok(Some(raw)) => {
                    let Some(rm) = members(raw) else {
                        return bad(AUTH);
                    };
                    let rf = Fields::new(&rm);
                    match (
                        rf.required::<String>("connectionId"),
                        rf.required::<String>("token"),
                        rf.optional::<u64>("lastSeq"),
                    ) {
                        (Some(c), Some(t), Ok(l)) => Some((c, t, l)),
                        _ => return bad(AUTH),
                    }
                }
            };
            match (f.optional("token"), f.optional("sessionId")) {
                (Ok(token), Ok(session_id)) => Expect::Auth {
                    token,
                    session_id,
                    resume,
                    id,
                },
                _ => bad(AUTH),
            }
        }
        _ => bad(UNKNOWN),
    }
}

/// The `id` member of a server frame, as text (`None` when absent).
fn echoed_id(frame: &str) -> Option<String> {
    let m = members(frame).unwrap_or_else(|| panic!("server frame is not an object: {frame}"));
    m.into_iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.get().to_string())
}

fn check_answers(id: Option<&RawValue>) {
    let want = id.map_or("null", RawValue::get);
    let pong = ServerFrame::Pong { id }.to_text();
    assert_eq!(pong, format!(r#"{{"type":"pong","id":{want}}}"#));
    let refreshed = ServerFrame::Refreshed {
        expires_at: "2026-01-01T00:00:00.000Z".into(),
        id,
    }
    .to_text();
    assert_eq!(echoed_id(&refreshed).as_deref(), Some(want), "{refreshed}");
    if let Some(id) = id {
        let ack = ServerFrame::Ack { id }.to_text();
        assert_eq!(ack, format!(r#"{{"type":"ack","id":{want}}}"#));
    }
}

fn check_error(message: &str, id: Option<&RawValue>) {
    let text = ServerFrame::Error(ErrorBody::frame(ErrorCode::BadFrame, message, id)).to_text();
    let v: Value = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str::<Members>(&text).map(|_| Value::Null))
        .unwrap_or_else(|e| panic!("error frame is not JSON ({e}): {text}"));
    if v.is_object() {
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "bad_frame");
        assert_eq!(v["message"], message);
    }
    assert_eq!(
        echoed_id(&text).as_deref(),
        Some(id.map_or("null", RawValue::get)),
        "{text}"
    );
}

fn check_update(updates: &Map<String, Value>) {
    let updates = Value::Object(updates.clone());
    let frame = FrameTemplate::session_updated("s1", &updates, "websocket", Some("c"), "t");
    let text = frame.render(u64::MAX);
    let back: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: session.updated {text}"));
    assert_eq!(back["type"], "session.updated");
    assert_eq!(back["seq"], u64::MAX);
    assert_eq!(back["updates"], updates, "{text}");
}

fn check_welcome(user: &str, session_id: Option<&str>) {
    let text = ServerFrame::Welcome {
        connection_id: uuid::Uuid::nil(),
        user_id: user,
        session_id,
        resume_token: "r",
        resumed: false,
        previous_connection_id: None,
        resume_error: None,
        expires_at: "t".into(),
        heartbeat_interval_ms: 1,
        limits: WelcomeLimits {
            messages_per_minute: 1,
            max_message_bytes: 1,
        },
        seq: 0,
    }
    .to_text();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["userId"], user);
    assert_eq!(v["sessionId"].as_str(), session_id);
}

fuzz_target!(|data: &[u8]| {
    // A WebSocket text frame is UTF-8 by the time it is parsed.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let got = ClientFrame::parse(text);
    let want = expect(text);
    let raw = |id: &Option<Box<RawValue>>| id.as_ref().map(|r| r.get().to_string());
    let got_as_expect = match &got {
        Err(bad) => Expect::Bad(bad.message, raw(&bad.id)),
        Ok(p) => {
            let id = raw(&p.id);
            match &p.frame {
                ClientFrame::Ping => Expect::Ping(id),
                ClientFrame::Ack { seq } => Expect::Ack(*seq, id),
                ClientFrame::Refresh { token } => Expect::Refresh(token.clone(), id),
                ClientFrame::SessionUpdate { updates } => Expect::Update(updates.clone(), id),
                ClientFrame::Auth {
                    token,
                    session_id,
                    resume,
                } => Expect::Auth {
                    token: token.clone(),
                    session_id: session_id.clone(),
                    resume: resume
                        .as_ref()
                        .map(|r| (r.connection_id.clone(), r.token.clone(), r.last_seq)),
                    id,
                },
            }
        }
    };
    assert_eq!(got_as_expect, want, "frame: {text:?}");

    match &got {
        Err(bad) => check_error(bad.message, bad.id.as_deref()),
        Ok(p) => {
            check_answers(p.id.as_deref());
            check_error("x", p.id.as_deref());
            match &p.frame {
                ClientFrame::SessionUpdate { updates } => check_update(updates),
                ClientFrame::Auth {
                    token, session_id, ..
                } => check_welcome(token.as_deref().unwrap_or(""), session_id.as_deref()),
                _ => {}
            }
        }
    }
});
