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

/// Checks every record of every tree of a verified backup, as a store of this schema holds
/// them: each key of its tree's shape, each value decoding as its tree's record and holding
/// only what tether writes ([`crate::model::ConnRecord::check`] and the like). The checksum
/// says the file is what was written; this says what was written is a store. Returns the
/// number of records, or the first bad one, named by its tree and key.
pub fn check_records(snap: &Snapshot) -> Result<usize, String> {
    let mut records = 0;
    for (name, items) in &snap.trees {
        if !TREES.contains(&name.as_str()) {
            return Err(format!(
                "the backup holds a tree `{name}` that this tether does not have (key {})",
                items.first().map_or("none".into(), |(k, _)| show_key(k))
            ));
        }
        for (k, v) in items {
            check_record(name, k, v).map_err(|why| {
                format!(
                    "the backup's record in tree `{name}` under key {} is not one tether writes: {why}",
                    show_key(k)
                )
            })?;
            records += 1;
        }
    }
    Ok(records)
}

fn check_record(tree: &str, k: &[u8], v: &[u8]) -> Result<(), String> {
    use crate::codec::decode;
    use crate::model::{ConnRecord, SessionRecord, StoredDelivery, StoredEvent, MAX_SEQ};
    let be_u64 = |k: &[u8]| -> Result<u64, String> {
        let n = k
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| format!("a key of {} bytes, not 8", k.len()))?;
        if n > MAX_SEQ {
            return Err(format!("key {n} is past 2^53"));
        }
        Ok(n)
    };
    let empty = |v: &[u8]| {
        if v.is_empty() {
            Ok(())
        } else {
            Err(format!("an index entry holds {} bytes, not none", v.len()))
        }
    };
    let undecodable = |e: crate::codec::CodecError| e.to_string();
    match tree {
        "meta" => match k {
            b"schema_version" => decode::<u32>(v).map(|_| ()).map_err(undecodable),
            b"store_id" => decode::<String>(v).map(|_| ()).map_err(undecodable),
            // Other names are kept as they are: a newer release of this schema may add some.
            _ => Ok(()),
        },
        "conns" => {
            let rec: ConnRecord = decode(v).map_err(undecodable)?;
            if k != rec.id.as_bytes() {
                return Err(format!("it holds connection {}", rec.id));
            }
            rec.check()
        }
        "conns_by_user" => {
            if k.len() < 25 || k[k.len() - 25] != 0 {
                return Err("not a user id, 0, connectedAt and a connection id".into());
            }
            empty(v)
        }
        "conns_by_expiry" => {
            if k.len() != 24 {
                return Err(format!("a key of {} bytes, not 24", k.len()));
            }
            empty(v)
        }
        "events" => {
            let Some((first, last)) = crate::store::embedded::events::key_span(k) else {
                return Err(format!(
                    "a key of {} bytes, not 8 (an event) or 16 (a batch)",
                    k.len()
                ));
            };
            let evs: Vec<StoredEvent> =
                crate::store::embedded::events::decode_value(k, v).map_err(undecodable)?;
            let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
            let dense = seqs.iter().copied().eq(first..=last);
            if !dense {
                return Err(if k.len() == 8 {
                    format!("it holds event {}", seqs.first().copied().unwrap_or(0))
                } else {
                    format!("it holds events {seqs:?}, not {first} to {last}")
                });
            }
            evs.iter().try_for_each(StoredEvent::check)
        }
        "sessions" => {
            let s: SessionRecord = decode(v).map_err(undecodable)?;
            if k != s.id.as_bytes() {
                return Err(format!("it holds session {}", s.id));
            }
            s.check()
        }
        "sessions_by_user" => {
            if !k.contains(&0) {
                return Err("not a user id, 0 and a session id".into());
            }
            empty(v)
        }
        "deliveries" => {
            be_u64(k)?;
            let d: StoredDelivery = decode(v).map_err(undecodable)?;
            d.check()
        }
        other => Err(format!("no tree `{other}`")),
    }
}

/// A key as text when it is printable, else in hex (at most 64 bytes of it).
fn show_key(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()) => format!("{s:?}"),
        _ => {
            let hex: String = k.iter().take(64).map(|b| format!("{b:02x}")).collect();
            let more = if k.len() > 64 { "…" } else { "" };
            format!("0x{hex}{more}")
        }
    }
}
