//! Client frames (SPEC §3): parsed in one place.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// An `id` a client put on a frame, kept as the JSON text it sent.
pub type FrameId = Box<RawValue>;

/// `resume` of an `auth` frame. Read only from a JSON object (see [`Object`]).
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

/// A `T` read only from a JSON object. serde's derived `Deserialize` also reads a struct from
/// an array of its fields in order, so without this `["ping"]` would be a ping and
/// `["refresh"]` a refresh whose token is "refresh"; a frame is an object (SPEC §3).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Members<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Members(PhantomData)).map(Object)
    }
}

/// Reads an optional `T` only from an object (or null).
fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// Reads a frame's fields as a `T`, from an object only.
fn fields<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str::<Object<T>>(text).map(|o| o.0)
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
    #[serde(default, deserialize_with = "optional_object")]
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
        let env: Envelope = fields(text).map_err(|_| BadFrame {
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
                let f: AckFields = fields(text).map_err(|_| bad("ack needs a numeric `seq`"))?;
                ClientFrame::Ack { seq: f.seq }
            }
            "refresh" => {
                let f: RefreshFields = fields(text).map_err(|_| bad("refresh needs a `token`"))?;
                ClientFrame::Refresh { token: f.token }
            }
            "session.update" => {
                let f: UpdateFields =
                    fields(text).map_err(|_| bad("session.update needs an `updates` object"))?;
                ClientFrame::SessionUpdate { updates: f.updates }
            }
            "auth" => {
                let f: AuthFields = fields(text).map_err(|_| {
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
