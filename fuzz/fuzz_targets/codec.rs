//! Stored values: `codec::decode` of every type tether keeps in sled, and encode → decode.
//!
//! The bytes are what a damaged or foreign data directory may hold. What must hold:
//! - decoding returns, never panics, never allocates far beyond the value's own size (the
//!   run's `-rss_limit_mb` and `-malloc_limit_mb` catch that), and refuses other format
//!   versions and trailing bytes;
//! - a value that decodes encodes again, and that encoding decodes to the same value (the
//!   same bytes once more), so a record rewritten at start-up is the record that was read;
//! - what start-up and the API do with a decoded record (its JSON, its user, the frame of a
//!   delivery) does not panic either;
//! - a value built from the input (every field drawn from it) round-trips exactly.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use tether::codec::{decode, encode, CodecError, FORMAT_VERSION};
use tether::model::{
    ConnRecord, ConnState, ConnType, EventType, Metadata, RateLimit, SessionRecord, StoredDelivery,
    StoredEvent, StoredUser,
};
use tether::protocol::{FrameKind, FrameTemplate};
use uuid::Uuid;

/// Decodes `bytes` as a `T`; when that works, encodes it again and checks the fixpoint.
fn decoded<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) -> Option<T> {
    let value = match decode::<T>(bytes) {
        Ok(v) => v,
        Err(CodecError::Empty) => {
            assert!(bytes.is_empty());
            return None;
        }
        Err(CodecError::UnknownVersion(v)) => {
            assert_eq!(v, bytes[0]);
            assert_ne!(v, FORMAT_VERSION);
            return None;
        }
        Err(CodecError::Decode(_)) => return None,
        Err(e @ CodecError::Encode(_)) => panic!("decoding failed to encode: {e}"),
    };
    assert_eq!(bytes[0], FORMAT_VERSION);
    let again = encode(&value).expect("a decoded value encodes");
    let back: T = decode(&again).expect("a re-encoded value decodes");
    assert_eq!(encode(&back).unwrap(), again, "{value:?}");
    assert_eq!(format!("{back:?}"), format!("{value:?}"));
    // A longer encoding of the same value is the one that was read; never a shorter one.
    assert!(again.len() <= bytes.len());
    Some(value)
}

fn used(rec: &ConnRecord) {
    let _ = rec.info_json(Some("node")).to_string();
    let _ = rec.user.to_auth_user();
    let _ = rec.state.as_str();
}

fn delivered(d: &StoredDelivery) {
    if let Some(kind) = FrameKind::parse(&d.kind) {
        let t = FrameTemplate {
            kind,
            rest: d.rest.clone(),
        };
        for (_, seq) in &d.targets {
            let frame = t.render(*seq);
            assert!(frame.starts_with("{\"type\":\""));
        }
    }
}

fn user(u: &mut Unstructured) -> Result<StoredUser> {
    Ok(StoredUser {
        id: u.arbitrary()?,
        permissions: u.arbitrary()?,
        roles: u.arbitrary()?,
        name: u.arbitrary()?,
        claims_json: u.arbitrary()?,
    })
}

fn uuid(u: &mut Unstructured) -> Result<Uuid> {
    Ok(Uuid::from_bytes(u.arbitrary()?))
}

fn conn(u: &mut Unstructured) -> Result<ConnRecord> {
    let states = [
        ConnState::Connecting,
        ConnState::Authenticating,
        ConnState::Authenticated,
        ConnState::Active,
        ConnState::Disconnecting,
        ConnState::Disconnected,
        ConnState::Detached,
    ];
    Ok(ConnRecord {
        id: uuid(u)?,
        user: user(u)?,
        session_id: u.arbitrary()?,
        state: *u.choose(&states)?,
        connected_at: u.arbitrary()?,
        expires_at: u.arbitrary()?,
        detached_at: u.arbitrary()?,
        meta: Metadata {
            ip: u.arbitrary()?,
            user_agent: u.arbitrary()?,
            connected_at: u.arbitrary()?,
            last_activity: u.arbitrary()?,
            client_version: u.arbitrary()?,
            connection_type: *u.choose(&[ConnType::WebSocket, ConnType::Sse])?,
            permissions: u.arbitrary()?,
            rate_limit: RateLimit {
                messages_per_minute: u.arbitrary()?,
                last_reset: u.arbitrary()?,
                count: u.arbitrary()?,
            },
        },
        resume_hash: u.arbitrary()?,
        seq: u.arbitrary()?,
        acked: u.arbitrary()?,
        replay_key: uuid(u)?,
    })
}

fn session(u: &mut Unstructured) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id: u.arbitrary()?,
        user_id: u.arbitrary()?,
        created_at: u.arbitrary()?,
        expires_at: u.arbitrary()?,
        last_seen: u.arbitrary()?,
        data_json: u.arbitrary()?,
        permissions: u.arbitrary()?,
        device_json: u.arbitrary()?,
    })
}

fn event(u: &mut Unstructured) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: u.arbitrary()?,
        connection_id: uuid(u)?,
        user_id: u.arbitrary()?,
        event_type: *u.choose(&EventType::ALL)?,
        timestamp: u.arbitrary()?,
        details_json: u.arbitrary()?,
    })
}

fn delivery(u: &mut Unstructured) -> Result<StoredDelivery> {
    Ok(StoredDelivery {
        kind: u.arbitrary()?,
        rest: u.arbitrary()?,
        targets: u.arbitrary()?,
    })
}

/// `value` encodes, and decodes to itself.
fn round_trip<T: Serialize + DeserializeOwned + Debug>(value: &T) {
    let bytes = encode(value).expect("a record encodes");
    assert_eq!(bytes[0], FORMAT_VERSION);
    let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{e}: {value:?}"));
    assert_eq!(format!("{back:?}"), format!("{value:?}"));
    assert_eq!(encode(&back).unwrap(), bytes);
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(decode::<T>(&longer), Err(CodecError::Decode(_))));
    if bytes.len() > 1 {
        assert!(decode::<T>(&bytes[..bytes.len() - 1]).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    // Every stored type, read from the same bytes.
    if let Some(rec) = decoded::<ConnRecord>(data) {
        used(&rec);
    }
    if let Some(s) = decoded::<SessionRecord>(data) {
        let _ = serde_json::from_str::<serde_json::Value>(&s.data_json);
    }
    if let Some(ev) = decoded::<StoredEvent>(data) {
        let _ = ev.to_json().to_string();
    }
    if let Some(d) = decoded::<StoredDelivery>(data) {
        delivered(&d);
    }
    let _ = decoded::<u32>(data); // schema_version
    let _ = decoded::<String>(data); // store_id

    // Values drawn from the bytes: encode, decode, the same again.
    let mut u = Unstructured::new(data);
    let which = u8::arbitrary(&mut u).unwrap_or(0);
    let _ = match which % 4 {
        0 => conn(&mut u).map(|v| round_trip(&v)),
        1 => session(&mut u).map(|v| round_trip(&v)),
        2 => event(&mut u).map(|v| round_trip(&v)),
        _ => delivery(&mut u).map(|v| round_trip(&v)),
    };
});
