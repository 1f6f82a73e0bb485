//! The backup format: one self-checking stream.
//!
//! ```text
//! "TETHERBK" | format (u8) | schema version (u32 LE)
//! secrets.toml length (u32 LE) | its bytes
//! for each tree: name length (u16 LE, > 0) | name | count (u64 LE) | count × (key len u32, key, value len u32, value)
//! 0u16 (end of trees) | SHA-256 of everything before it (32 bytes)
//! ```
//!
//! The file holds the secrets, because a restored server must accept the tokens and API keys
//! its clients hold; treat it like `secrets.toml` (it is written with mode 0600).

use std::io::Write;

use sha2::{Digest, Sha256};

use super::trees::{Trees, SCHEMA_VERSION};

const MAGIC: &[u8; 8] = b"TETHERBK";
const FORMAT: u8 = 1;

/// Trees copied, in order. Index trees are copied too, and rebuilt at start-up anyway.
const TREES: &[&str] = &[
    "meta",
    "conns",
    "conns_by_user",
    "conns_by_expiry",
    "events",
    "sessions",
    "sessions_by_user",
    "deliveries",
];

/// Writes and hashes at once.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot of `trees` (and the secrets file's bytes) to `out`.
pub fn write_snapshot<W: Write>(trees: &Trees, secrets: &[u8], out: W) -> std::io::Result<W> {
    let mut w = Hashing {
        inner: out,
        hash: Sha256::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&[FORMAT])?;
    w.write_all(&SCHEMA_VERSION.to_le_bytes())?;
    w.write_all(&(secrets.len() as u32).to_le_bytes())?;
    w.write_all(secrets)?;
    for name in TREES {
        let tree = trees.db.open_tree(name).map_err(std::io::Error::other)?;
        let items: Vec<(sled::IVec, sled::IVec)> = tree
            .iter()
            .collect::<Result<_, _>>()
            .map_err(std::io::Error::other)?;
        w.write_all(&(name.len() as u16).to_le_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&(items.len() as u64).to_le_bytes())?;
        for (k, v) in items {
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_le_bytes())?;
            w.write_all(&v)?;
        }
    }
    w.write_all(&0u16.to_le_bytes())?;
    let digest = w.hash.finalize();
    let mut out = w.inner;
    out.write_all(&digest)?;
    Ok(out)
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The parsed content of a backup.
pub struct Snapshot {
    pub schema: u32,
    pub secrets: Vec<u8>,
    pub trees: Vec<(String, Vec<KeyValue>)>,
}

pub fn verify(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < MAGIC.len() + 32 || &bytes[..8] != MAGIC {
        return Err("not a tether backup file".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body)[..] != *digest {
        return Err("backup file is damaged (checksum mismatch)".into());
    }
    let mut r = body;
    let mut take = |n: usize| -> Result<Vec<u8>, String> {
        if r.len() < n {
            return Err("backup file is truncated".to_string());
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a.to_vec())
    };
    take(8)?;
    let format = take(1)?[0];
    if format != FORMAT {
        return Err(format!(
            "backup format {format} is not one this tether reads ({FORMAT})"
        ));
    }
    let schema = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    if schema != SCHEMA_VERSION {
        return Err(format!(
            "backup holds store schema {schema}; this tether reads schema {SCHEMA_VERSION}"
        ));
    }
    let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let secrets = take(n)?;
    let mut trees = Vec::new();
    loop {
        let len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        if len == 0 {
            break;
        }
        let name = String::from_utf8(take(len)?).map_err(|_| "bad tree name")?;
        let count = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let mut items = Vec::new();
        for _ in 0..count {
            let kl = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let k = take(kl)?;
            let vl = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let v = take(vl)?;
            items.push((k, v));
        }
        trees.push((name, items));
    }
    Ok(Snapshot {
        schema,
        secrets,
        trees,
    })
}
