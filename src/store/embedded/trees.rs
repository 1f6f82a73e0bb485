//! The sled database under the data directory: its trees, its schema version, and the lock
//! that keeps a second server away from it.
//!
//! Trees (keys are big-endian so that sled's order is the useful order):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meta` | name | codec value (`schema_version`, `event_seq`) |
//! | `conns` | connection id (16 bytes) | [`crate::model::ConnRecord`] |
//! | `conns_by_user` | user id, 0, connectedAt (8), connection id | empty; no longer written (the listing's order by user is kept in memory), emptied at start-up |
//! | `conns_by_expiry` | expiresAt (8), connection id | empty; no longer written (expiry is found in memory), emptied at start-up |
//! | `events` | event seq (8), or a batch's first and last seq (16) | [`crate::model::StoredEvent`], or the batch's events in seq order (see [`super::events::EventLog`]) |
//! | `sessions` | session id | [`crate::model::SessionRecord`] |
//! | `sessions_by_user` | user id, 0, session id | empty |
//! | `deliveries` | delivery id (8) | [`crate::model::StoredDelivery`]: one per message sent, with every (connection, seq) it went to |
//!
//! `conns` and `sessions` are the truth; the index trees are rebuilt from them at start-up, so
//! a crash between two tree writes never leaves a wrong answer behind.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::store::StoreError;

/// Version of the tree layout above. A store with another version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Holds the exclusive lock on `<data_dir>/tether.lock` for as long as it lives.
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

/// Removes the lock file on the way out, while the lock is still held (the file is closed
/// after this), so a clean stop leaves no `tether.lock` behind.
impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the data directory if needed and takes its lock, writing our pid into the lock file.
/// Fails at once (never waits) when another process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DirLock, StoreError> {
    let dir_err = |source| StoreError::Dir {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    let path = dir.join("tether.lock");
    // A server that stops removes the file while it holds the lock. A process that opened the
    // file just before that may then win the lock of a file that no longer has a name, while a
    // third creates a new one: so the lock counts only if the path still names the locked file.
    for _ in 0..8 {
        let file = try_lock_file(dir, &path)?;
        if names_file(&path, &file) {
            return write_pid(file, path).map_err(dir_err);
        }
    }
    Err(dir_err(std::io::Error::other(
        "tether.lock kept being replaced while it was being locked",
    )))
}

fn write_pid(mut file: File, path: PathBuf) -> std::io::Result<DirLock> {
    file.set_len(0)?;
    match write!(file, "{}", std::process::id()) {
        // The pid is for people and tools; the lock is the file lock. A full disk (the
        // store's free-space guard deletes its ballast right after this) must not keep the
        // server from starting.
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {}
        r => r?,
    }
    Ok(DirLock { _file: file, path })
}

/// True if `path` is the file `file` has open.
fn names_file(path: &Path, file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, file);
        true
    }
}

fn try_lock_file(dir: &Path, path: &Path) -> Result<File, StoreError> {
    let dir_err = |source| StoreError::Dir {
        dir: dir.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(dir_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            return Err(StoreError::Locked {
                dir: dir.display().to_string(),
                lock: path.display().to_string(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(dir_err(e)),
    }
    Ok(file)
}

/// The file that records which store belongs in a data directory.
pub fn manifest_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store.manifest")
}

/// The path of the sled database inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

#[derive(Clone)]
pub struct Trees {
    pub db: sled::Db,
    pub meta: sled::Tree,
    pub conns: sled::Tree,
    pub conns_by_user: sled::Tree,
    pub conns_by_expiry: sled::Tree,
    pub events: sled::Tree,
    pub sessions: sled::Tree,
    pub sessions_by_user: sled::Tree,
    pub deliveries: sled::Tree,
}

impl Trees {
    /// Opens (or creates) the store in `data_dir` and checks its schema version. The caller
    /// holds the directory lock, or knows the directory is not served (inspect, backup).
    pub fn open(data_dir: &Path, cache_capacity_bytes: u64) -> Result<Trees, StoreError> {
        let path = db_path(data_dir);
        // Before sled sees the files: it would read a cut-short log as a shorter store.
        let manifest = Manifest::read(data_dir)?;
        if let Some(stop) = &manifest.clean_stop {
            stop.check_files(data_dir)?;
        }
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_capacity_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| StoreError::Open {
                dir: data_dir.display().to_string(),
                detail: e.to_string(),
            })?;
        let trees = Trees {
            meta: db.open_tree("meta")?,
            conns: db.open_tree("conns")?,
            conns_by_user: db.open_tree("conns_by_user")?,
            conns_by_expiry: db.open_tree("conns_by_expiry")?,
            events: db.open_tree("events")?,
            sessions: db.open_tree("sessions")?,
            sessions_by_user: db.open_tree("sessions_by_user")?,
            deliveries: db.open_tree("deliveries")?,
            db,
        };
        match trees.meta.get("schema_version")? {
            Some(v) => {
                let found: u32 = codec::decode(&v).map_err(|_| StoreError::Schema {
                    dir: data_dir.display().to_string(),
                    found: u32::MAX,
                })?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        dir: data_dir.display().to_string(),
                        found,
                    });
                }
            }
            None => {
                trees
                    .meta
                    .insert("schema_version", codec::encode(&SCHEMA_VERSION)?)?;
            }
        }
        trees.check_manifest(data_dir, &manifest)?;
        Ok(trees)
    }

    /// The store's identity lives twice: in the `meta` tree and in `<data_dir>/store.manifest`.
    /// sled opens a store whose log was overwritten as an empty one, and a log cut short as a
    /// shorter store, without an error; the manifest is how such a store is told from a
    /// whole one, and refused instead of served. It records the store's id, the newest event
    /// seq the store held when it was written (the event log only grows at the top, so a
    /// store must hold at least that one), and after a clean stop the length of sled's files.
    fn check_manifest(&self, data_dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            dir: data_dir.display().to_string(),
            detail,
        };
        let stored = match self.meta.get("store_id")? {
            Some(v) => Some(codec::decode::<String>(&v)?),
            None => None,
        };
        match (&manifest.store_id, stored) {
            (Some(r), Some(s)) if *r == s => {}
            (Some(r), Some(s)) => {
                return Err(damaged(format!(
                    "its id {s} is not the {r} recorded in store.manifest (was the store replaced?)"
                )))
            }
            (Some(_), None) => {
                return Err(damaged(
                    "store.manifest records a store, but the store reads as empty".into(),
                ))
            }
            (None, Some(s)) if self.meta.contains_key(MANIFEST_WRITTEN)? => {
                return Err(damaged(format!(
                    "store.manifest is missing, so nothing says whether the store is whole (a \
                     copy of the data directory must take it along). If the store is known to \
                     be whole, write a store.manifest holding the line store_id = \"{s}\""
                )))
            }
            // A store from before the manifest: it gets one now.
            (None, Some(_)) => return self.record(data_dir, self.event_high_water(), false),
            (None, None) => {
                let id = crate::auth::new_token();
                self.meta.insert("store_id", codec::encode(&id)?)?;
                self.db.flush()?;
                return self.record(data_dir, 0, false);
            }
        }
        let found = self.event_high_water();
        if found < manifest.event_seq {
            return Err(damaged(format!(
                "its event log ends at seq {found}, but it had reached seq {} when store.manifest \
                 was written: records are missing (was the store cut short?)",
                manifest.event_seq
            )));
        }
        Ok(())
    }

    /// The newest event seq stored (seqs past 2^53 are damage, see [`crate::model::MAX_SEQ`]).
    pub fn event_high_water(&self) -> u64 {
        super::events::high_water(&self.events)
    }

    /// Writes `store.manifest`: the store's id, `event_seq` (read with
    /// [`Trees::event_high_water`] before the flush that made it durable: the manifest may
    /// only promise what is on disk), and, when `clean` (a clean stop or a restore, just
    /// flushed), the length of sled's files, which a later open must find again.
    pub fn record(&self, data_dir: &Path, event_seq: u64, clean: bool) -> Result<(), StoreError> {
        let Some(v) = self.meta.get("store_id")? else {
            return Ok(());
        };
        let manifest = Manifest {
            store_id: Some(codec::decode(&v)?),
            event_seq,
            clean_stop: if clean {
                Some(CleanStop::now(data_dir).map_err(|source| StoreError::Dir {
                    dir: data_dir.display().to_string(),
                    source,
                })?)
            } else {
                None
            },
        };
        if !self.meta.contains_key(MANIFEST_WRITTEN)? {
            self.meta.insert(MANIFEST_WRITTEN, codec::encode(&true)?)?;
            self.db.flush()?;
        }
        crate::secrets::replace_file(&manifest_path(data_dir), manifest.text().as_bytes()).map_err(
            |source| StoreError::Dir {
                dir: data_dir.display().to_string(),
                source,
            },
        )
    }

    /// Sizes and counts, for `inspect` and `/v1/health`.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Set in `meta` once the store has had a manifest: from then on a missing one is damage.
const MANIFEST_WRITTEN: &str = "manifest_written";

/// What `<data_dir>/store.manifest` records (see [`Trees::check_manifest`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Manifest {
    pub store_id: Option<String>,
    /// The newest event seq the store held (and had flushed) when this was written.
    pub event_seq: u64,
    /// Written at a clean stop, cleared by the next server that opens the store.
    pub clean_stop: Option<CleanStop>,
}

/// The store's files at a clean stop: after it, they may only grow.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanStop {
    pub at: String,
    /// sled's log and config files under `store/`, and their lengths.
    pub files: Vec<(String, u64)>,
    /// How many sled snapshot files (`store/snap.*`) there were.
    pub snapshots: usize,
}

/// The files of sled's store whose length a clean stop records.
const RECORDED_FILES: &[&str] = &["db", "conf"];

impl Manifest {
    pub fn read(data_dir: &Path) -> Result<Manifest, StoreError> {
        let path = manifest_path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(source) => {
                return Err(StoreError::Dir {
                    dir: data_dir.display().to_string(),
                    source,
                })
            }
        };
        let bad = |line: &str| StoreError::Damaged {
            dir: data_dir.display().to_string(),
            detail: format!("store.manifest has a line tether does not write: {line:?}"),
        };
        let mut m = Manifest::default();
        let mut stop: Option<CleanStop> = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(" = ").ok_or_else(|| bad(line))?;
            // Keys of a later release are left to it; the ones below are checked.
            let value = value.trim();
            let number = || value.parse::<u64>().map_err(|_| bad(line));
            match key {
                "schema_version" => {}
                "store_id" => m.store_id = Some(value.trim_matches('"').to_string()),
                "event_seq" => m.event_seq = number()?,
                "clean_stop" => {
                    stop.get_or_insert_with(CleanStop::empty).at = value.trim_matches('"').into()
                }
                "snapshots" => {
                    stop.get_or_insert_with(CleanStop::empty).snapshots = number()? as usize
                }
                k => {
                    let plain = |f: &str| {
                        !f.starts_with('.')
                            && f.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    };
                    if let Some(file) = k.strip_prefix("bytes.").filter(|f| plain(f)) {
                        stop.get_or_insert_with(CleanStop::empty)
                            .files
                            .push((file.to_string(), number()?));
                    }
                }
            }
        }
        m.clean_stop = stop;
        Ok(m)
    }

    fn text(&self) -> String {
        let mut t = format!(
            "# Written by tether: the identity of the store beside it, and what the store must\n\
             # hold. Keep it with the store; a copy of the data directory takes it along.\n\
             schema_version = {SCHEMA_VERSION}\nstore_id = \"{}\"\nevent_seq = {}\n",
            self.store_id.as_deref().unwrap_or_default(),
            self.event_seq
        );
        if let Some(stop) = &self.clean_stop {
            t.push_str(&format!(
                "# Stopped cleanly: the next start checks that the store's files are whole.\n\
                 clean_stop = \"{}\"\nsnapshots = {}\n",
                stop.at, stop.snapshots
            ));
            for (file, len) in &stop.files {
                t.push_str(&format!("bytes.{file} = {len}\n"));
            }
        }
        t
    }
}

impl CleanStop {
    fn empty() -> CleanStop {
        CleanStop {
            at: String::new(),
            files: Vec::new(),
            snapshots: 0,
        }
    }

    fn now(data_dir: &Path) -> std::io::Result<CleanStop> {
        let store = db_path(data_dir);
        let mut files = Vec::new();
        for name in RECORDED_FILES {
            files.push((name.to_string(), std::fs::metadata(store.join(name))?.len()));
        }
        Ok(CleanStop {
            at: crate::time::rfc3339(crate::time::now_ms()),
            files,
            snapshots: snapshots(&store),
        })
    }

    /// A file shorter than at the clean stop, or gone, can only be a copy cut short (or a
    /// file damaged since): sled would read what is left as a smaller store.
    fn check_files(&self, data_dir: &Path) -> Result<(), StoreError> {
        let store = db_path(data_dir);
        let damaged = |detail: String| StoreError::Damaged {
            dir: data_dir.display().to_string(),
            detail: format!(
                "{detail} at the clean stop of {}: the directory was copied incompletely, or \
                 the file was cut short",
                self.at
            ),
        };
        for (name, len) in &self.files {
            match std::fs::metadata(store.join(name)) {
                Ok(m) if m.len() >= *len => {}
                Ok(m) => {
                    return Err(damaged(format!(
                        "store/{name} is {} bytes, but it was {len} bytes",
                        m.len()
                    )))
                }
                Err(_) => {
                    return Err(damaged(format!(
                        "store/{name} is missing, but it was {len} bytes"
                    )))
                }
            }
        }
        if self.snapshots > 0 && snapshots(&store) == 0 {
            return Err(damaged(format!(
                "store/ holds no snap.* file, but it held {}",
                self.snapshots
            )));
        }
        Ok(())
    }
}

/// sled's snapshot files in `store`.
fn snapshots(store: &Path) -> usize {
    std::fs::read_dir(store)
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("snap.") && !name.ends_with(".generating")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Key helpers: big-endian so that sled's byte order is numeric order.
pub mod keys {
    use uuid::Uuid;

    pub fn conn(id: &Uuid) -> [u8; 16] {
        *id.as_bytes()
    }

    pub fn user_prefix(user: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(user.len() + 1);
        k.extend_from_slice(user.as_bytes());
        k.push(0);
        k
    }

    pub fn pair(a: &str, b: &str) -> Vec<u8> {
        let mut k = user_prefix(a);
        k.extend_from_slice(b.as_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_exclusive_and_its_file_goes_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = lock_data_dir(tmp.path()).unwrap();
        let path = lock.path.clone();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        assert!(matches!(
            lock_data_dir(tmp.path()),
            Err(StoreError::Locked { .. })
        ));
        drop(lock);
        assert!(!path.exists(), "removed with the lock");
        let again = lock_data_dir(tmp.path()).unwrap();
        assert!(again.path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_lock_counts_only_on_the_file_the_path_names() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tether.lock");
        let old = File::create(&path).unwrap();
        assert!(names_file(&path, &old));
        std::fs::remove_file(&path).unwrap();
        assert!(!names_file(&path, &old), "removed");
        File::create(&path).unwrap();
        assert!(!names_file(&path, &old), "replaced");
    }

    #[test]
    fn a_manifest_reads_back_what_it_wrote_and_checks_the_files_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(db_path(dir)).unwrap();
        std::fs::write(db_path(dir).join("db"), vec![1; 1000]).unwrap();
        std::fs::write(db_path(dir).join("conf"), b"conf").unwrap();
        std::fs::write(db_path(dir).join("snap.0000000000000001"), b"s").unwrap();
        let m = Manifest {
            store_id: Some("abc".into()),
            event_seq: 42,
            clean_stop: Some(CleanStop::now(dir).unwrap()),
        };
        std::fs::write(manifest_path(dir), m.text()).unwrap();
        let back = Manifest::read(dir).unwrap();
        assert_eq!(back, m);
        let stop = back.clean_stop.unwrap();
        assert_eq!(stop.files, [("db".into(), 1000), ("conf".into(), 4)]);
        assert_eq!(stop.snapshots, 1);
        stop.check_files(dir).expect("whole");

        // Grown is fine (a write after the stop); shorter, gone or unsnapshotted is not.
        std::fs::write(db_path(dir).join("db"), vec![1; 2000]).unwrap();
        stop.check_files(dir).expect("grown");
        std::fs::write(db_path(dir).join("db"), vec![1; 999]).unwrap();
        let e = stop.check_files(dir).unwrap_err().to_string();
        assert!(
            e.contains("store/db is 999 bytes, but it was 1000 bytes"),
            "{e}"
        );
        std::fs::write(db_path(dir).join("db"), vec![1; 1000]).unwrap();
        std::fs::remove_file(db_path(dir).join("snap.0000000000000001")).unwrap();
        let e = stop.check_files(dir).unwrap_err().to_string();
        assert!(e.contains("no snap.* file"), "{e}");
        std::fs::remove_file(db_path(dir).join("conf")).unwrap();
        let e = stop.check_files(dir).unwrap_err().to_string();
        assert!(e.contains("store/conf is missing"), "{e}");

        // A line of a later release is left alone; a broken number is not read as zero.
        std::fs::write(manifest_path(dir), "store_id = \"x\"\nfuture = 1\n").unwrap();
        assert_eq!(Manifest::read(dir).unwrap().store_id.as_deref(), Some("x"));
        std::fs::write(manifest_path(dir), "store_id = \"x\"\nevent_seq = 4x\n").unwrap();
        assert!(Manifest::read(dir).is_err());
    }
}
