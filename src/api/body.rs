//! Reading fields out of a JSON body: each a clear 400 (wrong type) or 422 (bad value).

use serde_json::{Map, Value};

use super::Result;
use crate::error::ApiError;

/// Parses a JSON object body (400 otherwise).
pub fn object(body: &[u8]) -> Result<Map<String, Value>> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("expected a JSON object body"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("expected a JSON object body")),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
    }
}

/// Rejects fields a route does not know (a typo should not be silently ignored).
pub fn only(m: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    only_in(m, "", allowed)
}

/// [`only`] for the object under `parent.` (`rateLimit.`): the message names the field by
/// its whole path.
pub fn only_in(m: &Map<String, Value>, parent: &str, allowed: &[&str]) -> Result<()> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => {
            let allowed: Vec<String> = allowed.iter().map(|a| format!("{parent}{a}")).collect();
            Err(ApiError::invalid(format!(
                "unknown or read-only field `{parent}{k}` (allowed: {})",
                allowed.join(", ")
            )))
        }
        None => Ok(()),
    }
}

/// A whole number: `60`, and also `60.0`, which JSON (and JSON Schema's `integer`) counts as
/// the same number; some clients write every number as a float.
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// An optional whole number from `min` to `max` under `key`, named `shown` in the message
/// (its whole path): 422 for any other number, 400 for what is not a number.
pub fn opt_range(
    m: &Map<String, Value>,
    key: &str,
    shown: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match whole(n) {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(format!(
                "`{shown}` must be a whole number from {min} to {max}"
            ))),
        },
        Some(_) => Err(ApiError::bad_request(format!("`{shown}` must be a number"))),
    }
}

/// The longest TTL an API call may set: the same bound `ttl_seconds` has in the config.
/// Larger values would overflow the millisecond clock and land in the past.
const MAX_TTL_SECONDS: u64 = crate::config::MAX_SECONDS;

/// A TTL in seconds: 1 to [`MAX_TTL_SECONDS`] (422 otherwise).
pub fn opt_ttl(m: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    opt_range(m, key, key, 1, MAX_TTL_SECONDS)
}

pub fn opt_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("`{key}` must be a string"))),
    }
}

pub fn opt_strings(m: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("`{key}` must be an array of strings"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "`{key}` must be an array of strings"
        ))),
    }
}

/// An optional object field (`data`); null is absent.
pub fn opt_object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ApiError::bad_request(format!("`{key}` must be an object"))),
    }
}

/// The `data` of a message body, as JSON text.
pub fn message_data(b: &Map<String, Value>) -> Result<String> {
    only(b, &["data"])?;
    let data = b
        .get("data")
        .ok_or_else(|| ApiError::bad_request("`data` is required"))?;
    Ok(data.to_string())
}

/// A connection id in a path: anything that is not a UUID names no connection (404).
pub fn conn_id(s: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| ApiError::not_found(format!("unknown connection {s}")))
}

pub fn unknown_conn(id: &uuid::Uuid) -> ApiError {
    ApiError::not_found(format!("unknown connection {id}"))
}

pub fn unknown_session(sid: &str) -> ApiError {
    ApiError::not_found(format!("unknown session {sid}"))
}

/// The `reason` of a disconnect, or the operator default.
pub fn reason(req: &super::Req) -> String {
    req.param("reason")
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "disconnected by an operator".into())
}

/// A `limit` query parameter: a whole number from 1 to `max`.
pub fn limit(v: &str, max: usize) -> Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!("`limit` must be a whole number from 1 to {max}"))
        })
}
