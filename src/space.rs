//! The free-space guard: the store takes writes only while the data directory's filesystem
//! has more than `disk_reserve_bytes` free.
//!
//! sled 0.34 does not survive a full disk (see [`crate::durability`]): once one of its writes
//! gets ENOSPC it refuses every later write until the store is reopened, or it never
//! finishes a flush again. So tether must stop writing *before* the disk is full, not after
//! a write failed. The reserve is the margin that keeps sled clear of ENOSPC: writes already
//! accepted when the guard trips, and the little the server still writes while it refuses
//! (a socket that closes, the sweeper), land in it.
//!
//! Another process can take the reserve too, all of it and at once (a runaway log, a `dd`).
//! For that the guard keeps a ballast: a file of incompressible bytes, `tether.reserve` in
//! the data directory, half the reserve and at most [`BALLAST_MAX_BYTES`]. When the guard
//! trips it deletes the ballast, so sled has that much room left even on a disk someone
//! else filled to the last block, and it writes the ballast again once space is back.
//!
//! A sampler thread measures free space (`statvfs`, the blocks an unprivileged process may
//! use) every [`SAMPLE_EVERY`]; admission only reads the last measurement, so a write never
//! waits on the filesystem to be let in. The thread is not a tokio task for the same
//! reason: a filesystem that hangs in `statvfs` stalls the sampler, never the runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// Why the store refuses a write. Each has its own `code` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUnwritable {
    /// Less than `disk_reserve_bytes` is free on the data directory's filesystem. Passes by
    /// itself once space is freed.
    #[error("the disk holding the data directory is nearly full ({free} bytes free, {reserve} bytes kept in reserve); writes resume once space is freed")]
    DiskFull { free: u64, reserve: u64 },
    /// A flush ran past `flush_timeout_ms` and has not returned. Passes if it does.
    #[error(
        "a store flush has not finished within {timeout_ms} ms; writes are refused until it does"
    )]
    FlushStalled { timeout_ms: u64 },
    /// sled failed a flush; it refuses every write until the store is opened again.
    /// `detail` is for the log, not for clients.
    #[error(
        "the store failed a write and refuses further ones; restart tether once the disk is fixed"
    )]
    Failed { detail: String },
}

impl StoreUnwritable {
    /// The `code` of the HTTP error body, the `error` frame and `/ready`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreUnwritable::DiskFull { .. } => "insufficient_storage",
            StoreUnwritable::FlushStalled { .. } => "store_stalled",
            StoreUnwritable::Failed { .. } => "store_failed",
        }
    }

    /// A short message for end users (WebSocket and SSE clients), without the details an
    /// operator finds in `/ready` and the log.
    pub fn client_message(&self) -> &'static str {
        match self {
            StoreUnwritable::DiskFull { .. } => {
                "the server cannot store changes right now (disk full); retry later"
            }
            _ => "the server cannot store changes right now; retry later",
        }
    }
}

/// How often free space is measured.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The reserve when `disk_reserve_bytes` is not set: 64 MiB, but never more than an eighth
/// of the filesystem, so that a small disk (a small VM's, a test's tmpfs) stays usable.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_RESERVE_FRACTION: u64 = 8;

/// Largest ballast file: enough for sled to finish a burst of accepted writes and roll a
/// log segment (512 KiB) a few times over.
pub const BALLAST_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// The ballast's file name in the data directory.
pub const BALLAST_FILE: &str = "tether.reserve";

/// One measurement of the filesystem under the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Bytes an unprivileged process may still allocate.
    pub free: u64,
    /// Size of the filesystem in bytes.
    pub total: u64,
}

/// What the sampler does with the ballast after a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ballast {
    Keep,
    /// Delete it: the guard tripped.
    Release,
    /// Write one of this many bytes: there is room for it and the reserve.
    Create(u64),
}

/// Free space on the data directory's filesystem, as last measured. Cheap to clone.
#[derive(Clone)]
pub struct Space {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// `disk_reserve_bytes` as configured; `None`: [`DEFAULT_RESERVE_BYTES`] capped at an
    /// eighth of the filesystem.
    configured: Option<u64>,
    reserve: AtomicU64,
    free: AtomicU64,
    /// Size of the ballast on disk (0: none).
    ballast: AtomicU64,
    /// True while free space is under the reserve. Published on `room` too, for whoever
    /// waits for space to come back.
    full: AtomicBool,
    room: watch::Sender<bool>,
    /// A failed measurement is logged once, not ten times a second.
    measure_failed: AtomicBool,
}

impl Space {
    /// Measures once, then keeps measuring (and keeps the ballast) on a thread of its own
    /// until the last clone of the returned value is dropped.
    pub fn start(dir: &Path, reserve_bytes: Option<u64>) -> Space {
        let space = Space::unsampled(dir, reserve_bytes);
        // A ballast left by an earlier run may be of another size: start from none.
        let _ = std::fs::remove_file(space.ballast_path());
        if let Ok(s) = measure(dir) {
            space.apply(s);
        }
        let weak = Arc::downgrade(&space.inner);
        let spawned = std::thread::Builder::new()
            .name("tether-space".into())
            .spawn(move || sampler(weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the free-space sampler; the disk guard only knows the first measurement");
        }
        space
    }

    /// A guard that has measured nothing yet (writable) and samples only when told to.
    fn unsampled(dir: &Path, reserve_bytes: Option<u64>) -> Space {
        Space {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                configured: reserve_bytes,
                reserve: AtomicU64::new(reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES)),
                free: AtomicU64::new(u64::MAX),
                ballast: AtomicU64::new(0),
                full: AtomicBool::new(false),
                room: watch::channel(true).0,
                measure_failed: AtomicBool::new(false),
            }),
        }
    }

    /// `Ok` while more than the reserve is free (or free space cannot be measured).
    pub fn check(&self) -> Result<(), StoreUnwritable> {
        let inner = &self.inner;
        if inner.full.load(Ordering::SeqCst) {
            return Err(StoreUnwritable::DiskFull {
                free: inner.free.load(Ordering::Relaxed),
                reserve: inner.reserve.load(Ordering::Relaxed),
            });
        }
        Ok(())
    }

    /// Bytes free at the last measurement (`u64::MAX` if none succeeded).
    pub fn free_bytes(&self) -> u64 {
        self.inner.free.load(Ordering::Relaxed)
    }

    /// The reserve in force (the configured one, or the default for this filesystem).
    pub fn reserve_bytes(&self) -> u64 {
        self.inner.reserve.load(Ordering::Relaxed)
    }

    /// Size of the ballast file on disk (0 while there is none).
    pub fn ballast_bytes(&self) -> u64 {
        self.inner.ballast.load(Ordering::Relaxed)
    }

    /// Waits until more than the reserve is free.
    pub async fn room(&self) {
        let mut rx = self.inner.room.subscribe();
        let _ = rx.wait_for(|room| *room).await;
    }

    fn ballast_path(&self) -> PathBuf {
        self.inner.dir.join(BALLAST_FILE)
    }

    /// Measures now, updates the state and looks after the ballast.
    fn sample(&self) {
        let s = match measure(&self.inner.dir) {
            Ok(s) => s,
            Err(e) => {
                if !self.inner.measure_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.inner.dir.display(), error = %e,
                        "cannot measure free space; the disk guard keeps its last state until it can");
                }
                return;
            }
        };
        self.inner.measure_failed.store(false, Ordering::Relaxed);
        match self.apply(s) {
            Ballast::Keep => {}
            Ballast::Release => self.release_ballast(),
            Ballast::Create(size) => self.create_ballast(size),
        }
    }

    /// Takes a measurement into the state (logging when writes stop or resume) and says
    /// what to do with the ballast.
    fn apply(&self, s: Sample) -> Ballast {
        let inner = &self.inner;
        let reserve = inner
            .configured
            .unwrap_or_else(|| DEFAULT_RESERVE_BYTES.min(s.total / DEFAULT_RESERVE_FRACTION));
        let target = (reserve / 2).min(BALLAST_MAX_BYTES);
        let ballast = inner.ballast.load(Ordering::Relaxed);
        inner.reserve.store(reserve, Ordering::Relaxed);
        inner.free.store(s.free, Ordering::Relaxed);
        // Resume only with a little more than the reserve free, and room for the ballast
        // that will then be written, so that a disk at the line does not flip the store on
        // and off.
        let resume_at = reserve
            .saturating_add(reserve / 16)
            .saturating_add(if ballast == 0 { target } else { 0 });
        let was_full = inner.full.load(Ordering::SeqCst);
        let full = if was_full {
            s.free < resume_at
        } else {
            s.free < reserve
        };
        if full != was_full {
            inner.full.store(full, Ordering::SeqCst);
            inner.room.send_replace(!full);
            if full {
                tracing::error!(
                    dir = %inner.dir.display(),
                    free_bytes = s.free,
                    reserve_bytes = reserve,
                    "the data directory's disk is nearly full: refusing writes until space is freed (disk_reserve_bytes)"
                );
            } else {
                tracing::info!(
                    dir = %inner.dir.display(),
                    free_bytes = s.free,
                    reserve_bytes = reserve,
                    "disk space is back: accepting writes again"
                );
            }
        }
        if full {
            if ballast > 0 {
                return Ballast::Release;
            }
        } else if ballast == 0 && target > 0 && s.free >= resume_at {
            return Ballast::Create(target);
        }
        Ballast::Keep
    }

    fn release_ballast(&self) {
        let path = self.ballast_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let size = self.inner.ballast.swap(0, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), bytes = size,
                    "released the disk ballast: the store has that much room to finish what it accepted");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.inner.ballast.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot delete the disk ballast")
            }
        }
    }

    fn create_ballast(&self, size: u64) {
        let path = self.ballast_path();
        match write_ballast(&path, size) {
            Ok(()) => {
                self.inner.ballast.store(size, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), bytes = size, "wrote the disk ballast");
            }
            Err(e) => {
                // Someone else took the space first; the next measurements will tell.
                let _ = std::fs::remove_file(&path);
                tracing::warn!(path = %path.display(), error = %e, "cannot write the disk ballast");
            }
        }
    }
}

/// Random bytes, so that a compressing filesystem really sets the space aside, synced so
/// that the blocks are allocated before it counts.
fn write_ballast(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        getrandom::fill(&mut chunk[..n]).map_err(std::io::Error::other)?;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn sampler(space: Weak<Inner>) {
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let Some(inner) = space.upgrade() else { return };
        Space { inner }.sample();
    }
}

/// Free and total bytes of the filesystem holding `dir`.
#[cfg(unix)]
pub fn measure(dir: &Path) -> std::io::Result<Sample> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(Sample {
        free: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
    })
}

/// Free space is only measured on Unix; elsewhere the guard never trips.
#[cfg(not(unix))]
pub fn measure(_dir: &Path) -> std::io::Result<Sample> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "free space is measured on Unix only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn sample(free_mib: u64) -> Sample {
        Sample {
            free: free_mib * MIB,
            total: 1024 * MIB,
        }
    }

    #[test]
    fn writes_stop_under_the_reserve_and_resume_with_room_for_the_ballast() {
        let space = Space::unsampled(Path::new("."), Some(16 * MIB));
        assert!(space.check().is_ok(), "nothing measured yet: writable");
        // Room for the reserve and the ballast (half the reserve): write the ballast.
        assert_eq!(space.apply(sample(40)), Ballast::Create(8 * MIB));
        space.inner.ballast.store(8 * MIB, Ordering::Relaxed);
        assert_eq!(space.apply(sample(17)), Ballast::Keep);
        assert!(space.check().is_ok());
        // Under the reserve: refuse, and give the ballast back to the disk.
        assert_eq!(space.apply(sample(15)), Ballast::Release);
        assert_eq!(
            space.check(),
            Err(StoreUnwritable::DiskFull {
                free: 15 * MIB,
                reserve: 16 * MIB
            })
        );
        space.inner.ballast.store(0, Ordering::Relaxed);
        assert_eq!(space.apply(sample(15 + 8)), Ballast::Keep);
        assert!(space.check().is_err(), "the freed ballast does not count");
        // Back above reserve + a sixteenth + the ballast to rewrite: writable again.
        assert_eq!(space.apply(sample(16 + 1 + 8)), Ballast::Create(8 * MIB));
        assert!(space.check().is_ok());
    }

    #[test]
    fn the_ballast_is_half_the_reserve_and_at_most_8_mib() {
        let space = Space::unsampled(Path::new("."), Some(2 * MIB));
        assert_eq!(space.apply(sample(100)), Ballast::Create(MIB));
        let space = Space::unsampled(Path::new("."), Some(100 * MIB));
        assert_eq!(space.apply(sample(500)), Ballast::Create(BALLAST_MAX_BYTES));
        // Free space over the reserve but short of room for the ballast: run without one.
        let space = Space::unsampled(Path::new("."), Some(16 * MIB));
        assert_eq!(space.apply(sample(20)), Ballast::Keep);
        assert!(space.check().is_ok());
    }

    #[test]
    fn the_default_reserve_is_64_mib_or_an_eighth_of_a_small_disk() {
        let space = Space::unsampled(Path::new("."), None);
        space.apply(Sample {
            free: 10_000 * MIB,
            total: 20_000 * MIB,
        });
        assert_eq!(space.reserve_bytes(), 64 * MIB);
        space.apply(Sample {
            free: 100 * MIB,
            total: 128 * MIB,
        });
        assert_eq!(space.reserve_bytes(), 16 * MIB);
        assert!(space.check().is_ok());
    }

    #[test]
    fn a_zero_reserve_turns_the_guard_off() {
        let space = Space::unsampled(Path::new("."), Some(0));
        assert_eq!(
            space.apply(Sample {
                free: 0,
                total: 8 * MIB
            }),
            Ballast::Keep
        );
        assert!(space.check().is_ok());
    }

    #[tokio::test]
    async fn room_returns_once_space_is_back() {
        let space = Space::unsampled(Path::new("."), Some(MIB));
        space.apply(sample(0));
        let waiter = tokio::spawn({
            let space = space.clone();
            async move { space.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        space.apply(sample(4));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("room() did not return")
            .unwrap();
    }

    /// The sampler writes the ballast into the directory, and removes it when the guard
    /// trips.
    #[cfg(unix)]
    #[test]
    fn measures_a_real_directory_and_keeps_its_ballast() {
        let dir = tempfile::tempdir().unwrap();
        let s = measure(dir.path()).unwrap();
        assert!(s.total > 0 && s.free <= s.total, "{s:?}");
        let space = Space::unsampled(dir.path(), Some(2 * MIB));
        space.sample();
        let path = dir.path().join(BALLAST_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB);
        assert_eq!(space.ballast_bytes(), MIB);
        // A full disk trips the guard, which gives the ballast back.
        let full = Sample {
            free: 0,
            total: s.total,
        };
        assert_eq!(space.apply(full), Ballast::Release);
        space.release_ballast();
        assert!(!path.exists());
        assert_eq!(space.ballast_bytes(), 0);
    }
}
