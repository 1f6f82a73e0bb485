//! Records as the scripts keep them (HASHes of strings) and as the rest of tether knows them.
//! A record that does not decode is an error naming its key, never a panic.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::model::{
    ConnRecord, ConnState, ConnType, Metadata, RateLimit, SessionRecord, StoredUser,
};
use crate::protocol::FrameKind;
use crate::store::StoreError;

pub fn bad(key: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::BadRecord {
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

/// The items of a list in a script's reply (an empty Lua table encodes as `{}`).
pub fn items<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    match v.get(field) {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

pub fn str_of<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

/// The string fields of one stored HASH, with the key they came from for errors.
pub struct Fields<'a> {
    pub key: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(key: String, v: &'a Value) -> Result<Fields<'a>, StoreError> {
        match v.as_object() {
            Some(map) => Ok(Fields { key, map }),
            None => Err(bad(&key, "not a hash")),
        }
    }

    pub fn opt(&self, name: &str) -> Option<&'a str> {
        self.map.get(name).and_then(Value::as_str)
    }

    pub fn str(&self, name: &str) -> Result<&'a str, StoreError> {
        self.opt(name)
            .ok_or_else(|| bad(&self.key, format!("field `{name}` is missing")))
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.str(name)?;
        s.parse()
            .map_err(|e| bad(&self.key, format!("field `{name}` = {s:?}: {e}")))
    }

    pub fn uuid(&self, name: &str) -> Result<Uuid, StoreError> {
        let s = self.str(name)?;
        Uuid::parse_str(s).map_err(|e| bad(&self.key, format!("field `{name}` = {s:?}: {e}")))
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, StoreError> {
        let s = self.str(name)?;
        serde_json::from_str(s).map_err(|e| bad(&self.key, format!("field `{name}`: {e}")))
    }
}

pub fn conn_key(prefix: &str, user: &str, id: &str) -> String {
    format!("{prefix}:{{u:{user}}}:c:{id}")
}

pub fn session_key(prefix: &str, user: &str, sid: &str) -> String {
    format!("{prefix}:{{u:{user}}}:s:{sid}")
}

fn state_of(s: &str) -> Option<ConnState> {
    Some(match s {
        "authenticated" => ConnState::Authenticated,
        "active" => ConnState::Active,
        "detached" => ConnState::Detached,
        _ => return None,
    })
}

fn type_of(s: &str) -> Option<ConnType> {
    Some(match s {
        "websocket" => ConnType::WebSocket,
        "sse" => ConnType::Sse,
        _ => return None,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A stored connection and the node holding its socket (None while Detached).
pub struct Conn {
    pub rec: ConnRecord,
    pub node: Option<String>,
}

impl Conn {
    pub fn info(&self) -> Value {
        self.rec.info_json(self.node.as_deref())
    }
}

/// Decodes a connection record from a script's reply.
pub fn conn(prefix: &str, v: &Value) -> Result<Conn, StoreError> {
    let (user, id) = (
        str_of(v, "user").unwrap_or("?"),
        str_of(v, "id").unwrap_or("?"),
    );
    let f = Fields::new(conn_key(prefix, user, id), v)?;
    let state = f.str("state")?;
    let state = state_of(state).ok_or_else(|| bad(&f.key, format!("unknown state {state:?}")))?;
    let ctype = f.str("ctype")?;
    let ctype =
        type_of(ctype).ok_or_else(|| bad(&f.key, format!("unknown connection type {ctype:?}")))?;
    let user: StoredUser = f.json("uj")?;
    let connected_at = f.num("ca")?;
    let resume_hash =
        unhex32(f.str("rh")?).ok_or_else(|| bad(&f.key, "field `rh` is not a SHA-256 in hex"))?;
    let rec = ConnRecord {
        id: f.uuid("id")?,
        user,
        session_id: f.opt("sid").filter(|s| !s.is_empty()).map(str::to_string),
        state,
        connected_at,
        expires_at: f.num("exp")?,
        detached_at: match f.opt("da") {
            Some(_) => Some(f.num("da")?),
            None => None,
        },
        meta: Metadata {
            ip: f.str("ip")?.to_string(),
            user_agent: f.str("ua")?.to_string(),
            connected_at,
            last_activity: f.num("la")?,
            client_version: f.opt("cv").map(str::to_string),
            connection_type: ctype,
            permissions: f.json("perms")?,
            rate_limit: RateLimit {
                messages_per_minute: f.num("mpm")?,
                last_reset: f.num("rlr")?,
                count: f.num("rlc")?,
            },
        },
        resume_hash,
        seq: f.num("seq")?,
        acked: f.num("acked")?,
        replay_key: f.uuid("rk")?,
    };
    let node = f
        .opt("node")
        .filter(|n| !n.is_empty() && state != ConnState::Detached)
        .map(str::to_string);
    Ok(Conn { rec, node })
}

/// The fields of a new record that the admission script does not set itself.
pub fn new_conn_fields(
    id: &Uuid,
    user: &StoredUser,
    session_id: Option<&str>,
    meta: &Metadata,
) -> Result<String, StoreError> {
    let uj = serde_json::to_string(user).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut m = json!({
        "id": id.to_string(),
        "user": user.id,
        "uj": uj,
        "sid": session_id.unwrap_or(""),
        "ca": meta.connected_at.to_string(),
        "ip": meta.ip,
        "ua": meta.user_agent,
        "ctype": meta.connection_type.as_str(),
        "perms": serde_json::to_string(&meta.permissions).expect("strings serialize"),
        "mpm": meta.rate_limit.messages_per_minute.to_string(),
        "rlr": meta.rate_limit.last_reset.to_string(),
        "rlc": meta.rate_limit.count.to_string(),
        "la": meta.last_activity.to_string(),
    });
    if let Some(v) = &meta.client_version {
        m["cv"] = json!(v);
    }
    Ok(m.to_string())
}

/// A kept frame as the replay list holds it: `<seq>|<kind>|<rest>`, rendered.
pub fn replay_entry(list: &str, e: &Value) -> Result<(u64, String), StoreError> {
    let text = e
        .as_str()
        .ok_or_else(|| bad(list, "an entry is not a string"))?;
    let mut parts = text.splitn(3, '|');
    let (Some(seq), Some(kind), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(list, "an entry is not `<seq>|<kind>|<rest>`"));
    };
    let seq: u64 = seq
        .parse()
        .map_err(|e| bad(list, format!("an entry's seq {seq:?}: {e}")))?;
    let kind = FrameKind::parse(kind)
        .ok_or_else(|| bad(list, format!("an entry's kind {kind:?} is unknown")))?;
    let template = crate::protocol::FrameTemplate {
        kind,
        rest: rest.to_string(),
    };
    Ok((seq, template.render(seq)))
}

pub fn replay(prefix: &str, what: &str, v: &Value) -> Result<Vec<(u64, String)>, StoreError> {
    let list = format!("{prefix}: replay list of {what}");
    items(v, "replay")
        .iter()
        .map(|e| replay_entry(&list, e))
        .collect()
}

/// Decodes a session from a script's reply.
pub fn session(prefix: &str, v: &Value) -> Result<(SessionRecord, String), StoreError> {
    let (user, id) = (
        str_of(v, "user").unwrap_or("?"),
        str_of(v, "id").unwrap_or("?"),
    );
    let f = Fields::new(session_key(prefix, user, id), v)?;
    let s = SessionRecord {
        id: f.str("id")?.to_string(),
        user_id: f.str("user")?.to_string(),
        created_at: f.num("ca")?,
        expires_at: f.num("exp")?,
        last_seen: f.num("ls")?,
        data_json: f.str("data")?.to_string(),
        permissions: f.json("perms")?,
        device_json: f.str("dev")?.to_string(),
    };
    Ok((s, f.str("v")?.to_string()))
}

pub fn session_fields(s: &SessionRecord) -> String {
    json!({
        "ca": s.created_at.to_string(),
        "exp": s.expires_at.to_string(),
        "ls": s.last_seen.to_string(),
        "data": s.data_json,
        "perms": serde_json::to_string(&s.permissions).expect("strings serialize"),
        "dev": s.device_json,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_does_not_decode_names_its_key() {
        let v = json!({"id": "x", "user": "u", "state": "flying"});
        let e = conn("tether", &v).err().expect("refused");
        let text = e.to_string();
        assert!(text.contains("tether:{u:u}:c:x"), "{text}");
        assert!(items(&json!({"a": {}}), "a").is_empty());
        let e = replay_entry("L", &json!("12|nope|x}")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let (seq, text) = replay_entry("L", &json!("12|message|\"data\":1,\"ts\":\"t\"}")).unwrap();
        assert_eq!(seq, 12);
        assert_eq!(text, r#"{"type":"message","seq":12,"data":1,"ts":"t"}"#);
        assert_eq!(unhex32(&hex(&[7u8; 32])), Some([7u8; 32]));
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        use crate::store::redis::redacted;
        assert_eq!(
            redacted("redis://:s3cret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
    }
}
