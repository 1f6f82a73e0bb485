//! Merge patches: `store::merge_patch`, how a session's data takes `session.update` and
//! `PATCH /v1/sessions/{id}` (RFC 7386).
//!
//! The input is two JSON texts one after the other: the session's data, then the patch
//! (when there is only one, it is the patch and the data is `{}`). What must hold:
//! - the result is what RFC 7386 §2's `MergePatch(Target, Patch)` computes, written here
//!   from the RFC's pseudo-code;
//! - merging the same patch twice is merging it once;
//! - against an object patch: a member whose patch value is null is gone, a member the
//!   patch does not name is untouched, an object in the patch leaves no null behind it;
//! - a patch that is not an object replaces the target.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tether::store::merge_patch;

/// RFC 7386 §2, line by line.
fn rfc7386(target: Option<&Value>, patch: &Value) -> Value {
    match patch {
        Value::Object(members) => {
            let mut target = match target {
                Some(Value::Object(t)) => t.clone(),
                _ => Map::new(),
            };
            for (name, value) in members {
                if value.is_null() {
                    target.remove(name);
                } else {
                    let merged = rfc7386(target.get(name), value);
                    target.insert(name.clone(), merged);
                }
            }
            Value::Object(target)
        }
        other => other.clone(),
    }
}

/// No member of an object that came from an object patch is null.
fn no_nulls_from(patch: &Value, result: &Value) {
    if let (Value::Object(p), Value::Object(r)) = (patch, result) {
        for (k, v) in p {
            match r.get(k) {
                None => assert!(v.is_null(), "{k} was dropped"),
                Some(got) => {
                    assert!(!v.is_null(), "{k} is null in the patch, yet still there");
                    if v.is_object() {
                        assert!(got.is_object());
                        no_nulls_from(v, got);
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let (target, patch) = match (values.next(), values.next()) {
        (Some(Ok(t)), Some(Ok(p))) => (t, p),
        (Some(Ok(p)), None) => (Value::Object(Map::new()), p),
        _ => return,
    };

    let mut once = target.clone();
    merge_patch(&mut once, &patch);
    assert_eq!(once, rfc7386(Some(&target), &patch), "{target} + {patch}");

    let mut twice = once.clone();
    merge_patch(&mut twice, &patch);
    assert_eq!(twice, once, "not idempotent: {target} + {patch}");

    match (&patch, &target) {
        (Value::Object(p), _) => {
            let r = once.as_object().expect("an object patch gives an object");
            if let Value::Object(t) = &target {
                for (k, v) in t {
                    if !p.contains_key(k) {
                        assert_eq!(r.get(k), Some(v), "{k} changed");
                    }
                }
            }
            no_nulls_from(&patch, &once);
        }
        (other, _) => assert_eq!(&once, other),
    }
});
