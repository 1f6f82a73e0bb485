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
    let (value, used) = decode_limited(body).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

/// bincode makes room for a string or a vector from its length prefix before it reads a
/// byte of it, so unlimited, a damaged prefix (a flipped bit on disk) in a value of a few
/// bytes asks for terabytes, and the failed allocation aborts the process: start-up's
/// "skip what does not decode" never gets to skip it. bincode's limit bounds what a decode
/// may claim. A decode claims each primitive at its width in memory (a varint of one byte
/// as the 8 of its `u64`; no stored type holds a wider one) and each string at its length,
/// so a value that `encode` wrote claims at most 8 bytes for every byte it has; the limit is
/// the first of a few rungs (bincode takes it as a constant) at or above that.
fn decode_limited<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    let claim = body.len().saturating_mul(8);
    macro_rules! rungs {
        ($($limit:expr),*) => {$(
            if claim <= $limit {
                return bincode::serde::decode_from_slice(body, config().with_limit::<{ $limit }>());
            }
        )*};
    }
    rungs!(1 << 16, 1 << 20, 1 << 24, 1 << 28);
    // A value over 32 MiB is read without a limit, as every value was before.
    bincode::serde::decode_from_slice(body, config())
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
    fn a_damaged_length_is_an_error_not_an_allocation() {
        // A string whose length prefix (varint, u64 form) says 2^40 bytes, in 13 bytes.
        let mut bytes = vec![FORMAT_VERSION, 253];
        bytes.extend((1u64 << 40).to_le_bytes());
        bytes.extend(b"abc");
        assert!(matches!(
            decode::<String>(&bytes),
            Err(CodecError::Decode(_))
        ));
        // A session record with a damaged length (found by the codec fuzzer).
        let record = b"\x01\x05alice\xfd\x00c\xf3aD\x03\x00\x00\xfd\x01\x00\x07\xa4b\xe3\xc6\x00e\xfd\x00c\xf3aD\x03\x00\x00\xfd\x01)\x10\xa4b\xe3\xc6\x00\x1b@lDaD\x03\x00\x00\xfd\x01)\x10\xa4b\xe3\xc6\x00\x1b@lD";
        assert!(decode::<crate::model::SessionRecord>(record).is_err());
    }

    #[test]
    fn the_limit_never_refuses_what_encode_wrote() {
        // Small integers and empty strings: each byte is claimed as up to 8.
        let empties = vec![String::new(); 100_000];
        assert_eq!(
            decode::<Vec<String>>(&encode(&empties).unwrap()).unwrap(),
            empties
        );
        let small: Vec<u64> = (0..200_000).map(|i| i % 200).collect();
        assert_eq!(decode::<Vec<u64>>(&encode(&small).unwrap()).unwrap(), small);
        let big = "x".repeat(3 << 20);
        assert_eq!(decode::<String>(&encode(&big).unwrap()).unwrap(), big);
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
