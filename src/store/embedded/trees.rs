//! The sled database under the data directory: its trees, its schema version, and the lock
//! that keeps a second server away from it.
//!
//! Trees (keys are big-endian so that sled's order is the useful order):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meta` | name | codec value (`schema_version`, `event_seq`) |
//! | `conns` | connection id (16 bytes) | [`crate::model::ConnRecord`] |
//! | `conns_by_user` | user id, 0, connectedAt (8), connection id | empty |
//! | `conns_by_expiry` | expiresAt (8), connection id | empty |
//! | `events` | event seq (8) | [`crate::model::StoredEvent`] |
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
    write!(file, "{}", std::process::id())?;
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
        trees.check_manifest(data_dir)?;
        Ok(trees)
    }

    /// The store's identity lives twice: in the `meta` tree and in `<data_dir>/store.manifest`.
    /// sled opens a store whose log was overwritten as an empty one, without an error; the
    /// manifest is how such a store is told from a new one, and refused instead of served
    /// empty.
    fn check_manifest(&self, data_dir: &Path) -> Result<(), StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            dir: data_dir.display().to_string(),
            detail,
        };
        let manifest = std::fs::read_to_string(manifest_path(data_dir)).ok();
        let recorded = manifest.as_deref().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("store_id = "))
                .map(|v| v.trim().trim_matches('"').to_string())
        });
        let stored = match self.meta.get("store_id")? {
            Some(v) => Some(codec::decode::<String>(&v)?),
            None => None,
        };
        match (recorded, stored) {
            (Some(r), Some(s)) if r == s => Ok(()),
            (Some(r), Some(s)) => Err(damaged(format!(
                "its id {s} is not the {r} recorded in store.manifest (was the store replaced?)"
            ))),
            (Some(_), None) => Err(damaged(
                "store.manifest records a store, but the store reads as empty".into(),
            )),
            (None, Some(_)) => self.write_manifest(data_dir),
            (None, None) => {
                let id = crate::auth::new_token();
                self.meta.insert("store_id", codec::encode(&id)?)?;
                self.db.flush()?;
                self.write_manifest(data_dir)
            }
        }
    }

    /// Writes `store.manifest` from the id in `meta` (after a restore, say).
    pub fn write_manifest(&self, data_dir: &Path) -> Result<(), StoreError> {
        let Some(v) = self.meta.get("store_id")? else {
            return Ok(());
        };
        let id: String = codec::decode(&v)?;
        let text = format!(
            "# Written by tether: the identity of the store beside it. Keep it with the store.\nschema_version = {SCHEMA_VERSION}\nstore_id = \"{id}\"\n"
        );
        crate::secrets::replace_file(&manifest_path(data_dir), text.as_bytes()).map_err(|source| {
            StoreError::Dir {
                dir: data_dir.display().to_string(),
                source,
            }
        })
    }

    /// Sizes and counts, for `inspect` and `/v1/health`.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Key helpers: big-endian so that sled's byte order is numeric order.
pub mod keys {
    use uuid::Uuid;

    pub fn conn(id: &Uuid) -> [u8; 16] {
        *id.as_bytes()
    }

    pub fn by_user(user: &str, connected_at: i64, id: &Uuid) -> Vec<u8> {
        let mut k = Vec::with_capacity(user.len() + 25);
        k.extend_from_slice(user.as_bytes());
        k.push(0);
        k.extend_from_slice(&connected_at.to_be_bytes());
        k.extend_from_slice(id.as_bytes());
        k
    }

    pub fn by_expiry(expires_at: i64, id: &Uuid) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&expires_at.to_be_bytes());
        k[8..].copy_from_slice(id.as_bytes());
        k
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
}
