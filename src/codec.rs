//! The one place stored values are encoded and decoded.
//!
//! Every value in sled is `[FORMAT_VERSION, bincode bytes…]`. bincode is frozen at 2.0.1, so it
//! is wrapped here and nowhere else: if the format ever has to change, a new version byte and a
//! decoder for the old one live side by side in this file, and nothing stored is ever misread:
//! an unknown version byte is an error that names it, never a garbled value.

use serde::{de::DeserializeOwned, Serialize};

/// Version byte written in front of every stored value.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has format version {0}, this tether reads version {FORMAT_VERSION}")]
    UnknownVersion(u8),
    #[error("stored value does not decode: {0}")]
    Decode(String),
    #[error("value does not encode: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a value written by [`encode`]; refuses other versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        id: String,
        n: u64,
        tags: Vec<String>,
        opt: Option<i64>,
    }

    #[test]
    fn round_trips_with_version_byte() {
        let r = Rec {
            id: "a".into(),
            n: 7,
            tags: vec!["x".into()],
            opt: None,
        };
        let bytes = encode(&r).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Rec>(&bytes).unwrap(), r);
    }

    #[test]
    fn a_delivery_round_trips() {
        use crate::model::StoredDelivery;
        let d = StoredDelivery {
            kind: "message".into(),
            rest: "\"data\":1,\"ts\":\"t\"}".into(),
            targets: vec![([7; 16], 3), ([9; 16], 12)],
        };
        let back: StoredDelivery = decode(&encode(&d).unwrap()).unwrap();
        assert_eq!(back.targets, d.targets);
        assert_eq!(back.rest, d.rest);
    }

    #[test]
    fn refuses_unknown_version_and_garbage() {
        let mut bytes = encode(&7u64).unwrap();
        bytes[0] = 9;
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::UnknownVersion(9))
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(decode::<Rec>(&[FORMAT_VERSION, 0xff, 0xff]).is_err());
        let mut long = encode(&7u64).unwrap();
        long.push(0);
        assert!(decode::<u64>(&long).is_err());
    }
}
