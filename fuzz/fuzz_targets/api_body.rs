//! API bodies: `api::body` (`object`, `only`, the `opt_*` readers, `message_data`,
//! `conn_id`, `limit`) and `api::metadata_patch`, read the way the routes read them.
//!
//! The input is a request body. What must hold:
//! - every reader returns, never panics, and every refusal is a 400 (wrong type, not JSON) or
//!   a 422 (a value out of its range, a field the route does not take), never a 5xx;
//! - `object` takes exactly the JSON objects;
//! - each reader gives back what the body says: a whole number (`60`, or `60.0`, the same
//!   number in JSON) as that number and only within its bounds, a refusal naming the field
//!   by its whole path; a string as that string, absent or null as nothing where the route
//!   allows;
//! - `message_data` is the `data` member as JSON that reads back as the same value, and a
//!   `message` frame spliced from it is JSON carrying that value;
//! - the metadata patch holds exactly the fields the body set;
//! - path segments decode `%XX` as RFC 3986 does, and name a connection only as a UUID.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tether::api::body::{
    conn_id, limit, message_data, object, only, only_in, opt_object, opt_range, opt_string,
    opt_strings, opt_ttl,
};
use tether::api::metadata_patch;
use tether::error::ApiError;
use tether::protocol::FrameTemplate;
use tether_fuzz::percent_decode;

const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;

/// Every key the routes read, for the readers to be tried on.
const KEYS: &[&str] = &[
    "data",
    "ttlSeconds",
    "userId",
    "permissions",
    "device",
    "ip",
    "userAgent",
    "clientVersion",
    "rateLimit",
    "messagesPerMinute",
    "newConnectionId",
];

fn refused(e: &ApiError) -> u16 {
    let status = e.status.as_u16();
    assert!(matches!(status, 400 | 422), "{status}: {}", e.message);
    status
}

/// The whole number a JSON number is (RFC 8259 §6 has no integer type: `60.0` is `60`),
/// if it is one from 0 to `u64::MAX`.
fn whole(n: &serde_json::Number) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)).then_some(f as u64)
}

fn check_range(m: &Map<String, Value>, key: &str, min: u64, max: u64) {
    let shown = format!("outer.{key}");
    match (opt_range(m, key, &shown, min, max), m.get(key)) {
        (Ok(None), None | Some(Value::Null)) => {}
        (Ok(Some(v)), Some(Value::Number(n))) => {
            assert_eq!(whole(n), Some(v), "{n}");
            assert!((min..=max).contains(&v));
        }
        (Err(e), Some(Value::Number(n))) => {
            assert_eq!(refused(&e), 422);
            assert!(
                whole(n).is_none_or(|v| !(min..=max).contains(&v)),
                "{n} refused"
            );
            assert!(e.message.contains(&format!("`{shown}`")), "{}", e.message);
        }
        (Err(e), Some(_)) => {
            assert_eq!(refused(&e), 400);
            assert!(e.message.contains(&format!("`{shown}`")), "{}", e.message);
        }
        (got, v) => panic!("{key}: {v:?} read as {got:?}"),
    }
    match opt_ttl(m, key) {
        Ok(Some(v)) => assert!((1..=TEN_YEARS).contains(&v)),
        Ok(None) => assert!(matches!(m.get(key), None | Some(Value::Null))),
        Err(e) => {
            refused(&e);
        }
    }
}

fn check_readers(m: &Map<String, Value>) {
    for key in KEYS {
        check_range(m, key, 0, u64::MAX);
        check_range(m, key, 1, u64::MAX);
        check_range(m, key, 1, u32::MAX.into());
        match (opt_string(m, key), m.get(*key)) {
            (Ok(None), None) => {}
            (Ok(Some(s)), Some(Value::String(t))) => assert_eq!(&s, t),
            (Err(e), Some(v)) => {
                assert_eq!(refused(&e), 400);
                assert!(!v.is_string());
            }
            (got, v) => panic!("{key}: {v:?} read as {got:?}"),
        }
        match (opt_strings(m, key), m.get(*key)) {
            (Ok(None), None) => {}
            (Ok(Some(s)), Some(Value::Array(a))) => {
                let want: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                assert_eq!(s, want);
                assert_eq!(s.len(), a.len());
            }
            (Err(e), Some(v)) => {
                assert_eq!(refused(&e), 400);
                assert!(v
                    .as_array()
                    .is_none_or(|a| a.iter().any(|s| !s.is_string())));
            }
            (got, v) => panic!("{key}: {v:?} read as {got:?}"),
        }
        match (opt_object(m, key), m.get(*key)) {
            (Ok(None), None | Some(Value::Null)) => {}
            (Ok(Some(o)), Some(Value::Object(p))) => assert_eq!(o, p),
            (Err(e), Some(v)) => {
                assert_eq!(refused(&e), 400);
                assert!(!v.is_object() && !v.is_null());
            }
            (got, v) => panic!("{key}: {v:?} read as {got:?}"),
        }
    }
    let allowed = ["data", "ttlSeconds"];
    match only(m, &allowed) {
        Ok(()) => assert!(m.keys().all(|k| allowed.contains(&k.as_str()))),
        Err(e) => {
            assert_eq!(refused(&e), 422);
            assert!(m.keys().any(|k| !allowed.contains(&k.as_str())));
        }
    }
    match only_in(m, "outer.", &allowed) {
        Ok(()) => assert!(m.keys().all(|k| allowed.contains(&k.as_str()))),
        Err(e) => {
            assert_eq!(refused(&e), 422);
            let k = m.keys().find(|k| !allowed.contains(&k.as_str())).unwrap();
            assert!(e.message.contains(&format!("`outer.{k}`")), "{}", e.message);
        }
    }
}

fn check_message(m: &Map<String, Value>) {
    match message_data(m) {
        Ok(data) => {
            assert!(m.keys().all(|k| k == "data"));
            let want = &m["data"];
            let back: Value = serde_json::from_str(&data).expect("message data is JSON");
            assert_eq!(&back, want, "data {data}");
            let frame = FrameTemplate::message(&data, "2026-01-01T00:00:00.000Z").render(9);
            let v: Value = serde_json::from_str(&frame).expect("a message frame is JSON");
            assert_eq!(&v["data"], want);
            assert_eq!(v["seq"], 9);
        }
        Err(e) => {
            refused(&e);
            assert!(m.keys().any(|k| k != "data") || !m.contains_key("data"));
        }
    }
}

fn check_metadata(m: &Map<String, Value>) {
    let Ok(p) = metadata_patch(m).map_err(|e| refused(&e)) else {
        return;
    };
    let string = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(p.ip, string("ip"));
    assert_eq!(p.user_agent, string("userAgent"));
    match m.get("clientVersion") {
        None => assert_eq!(p.client_version, None),
        Some(Value::Null) => assert_eq!(p.client_version, Some(None)),
        Some(v) => assert_eq!(p.client_version, Some(v.as_str().map(str::to_owned))),
    }
    let strings = m.get("permissions").and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    });
    assert_eq!(p.permissions, strings);
    let rate_limit = m.get("rateLimit").and_then(Value::as_object);
    if let Some(rl) = rate_limit {
        assert!(rl.keys().all(|k| k == "messagesPerMinute"), "{rl:?}");
    }
    let mpm = rate_limit
        .and_then(|r| r.get("messagesPerMinute"))
        .and_then(Value::as_number)
        .and_then(whole);
    assert_eq!(p.messages_per_minute.map(u64::from), mpm);
    if let Some(n) = p.messages_per_minute {
        assert!(n >= 1);
    }
}

/// Strings of the body as path segments and query values.
fn check_segments(v: &Value) {
    match v {
        Value::String(s) => {
            assert_eq!(
                tether::transport::path_segment(s),
                percent_decode(s, false),
                "segment {s:?}"
            );
            match conn_id(s) {
                Ok(id) => assert_eq!(uuid::Uuid::parse_str(s).unwrap(), id),
                Err(e) => {
                    assert_eq!(e.status.as_u16(), 404);
                    assert!(uuid::Uuid::parse_str(s).is_err());
                }
            }
            match limit(s, 1000) {
                Ok(n) => {
                    assert!((1..=1000).contains(&n));
                    assert_eq!(s.parse::<usize>().ok(), Some(n));
                }
                Err(e) => {
                    assert_eq!(refused(&e), 400);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(check_segments),
        Value::Object(o) => o.values().for_each(check_segments),
        _ => {}
    }
}

fuzz_target!(|body: &[u8]| {
    let parsed = serde_json::from_slice::<Value>(body);
    let m = match object(body) {
        Ok(m) => {
            assert_eq!(parsed.ok(), Some(Value::Object(m.clone())));
            m
        }
        Err(e) => {
            assert_eq!(refused(&e), 400);
            assert!(!matches!(parsed, Ok(Value::Object(_))));
            return;
        }
    };
    check_readers(&m);
    check_message(&m);
    check_metadata(&m);
    if let Some(Value::Object(rl)) = m.get("rateLimit") {
        check_readers(rl);
    }
    check_segments(&Value::Object(m));
});
