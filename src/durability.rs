//! Group commit: many writers, one `fsync`; and the store's refusal to write when it cannot
//! do so safely.
//!
//! sled acknowledges a write once it is in its in-memory log buffer and flushes that buffer
//! in the background; a `kill -9` inside that window loses acknowledged writes. So before
//! tether acknowledges anything durable (a `welcome`, a session write, an accepted message)
//! it calls [`Flusher::commit`], which returns only after a flush that started *after* the
//! caller's writes has finished.
//!
//! - `sync`: every writer runs its own flush and waits for it.
//! - `batched`: flushes start at most once per `flush_interval_ms` (sooner when 256 writers
//!   wait). An idle server flushes as soon as someone waits; under load, everyone who wrote
//!   during a window shares the next flush, so a burst of connects pays for one `fsync`.
//! - `relaxed`: `commit` returns at once; a background tick flushes every `flush_interval_ms`.
//!
//! Flush ids: `next` is the id the next flush will get. A writer reads `next` after its
//! writes; the flush with that id starts after the read, so it covers them. The flusher
//! publishes the ids of finished and of failed flushes on a watch channel.
//!
//! # When the store cannot write
//!
//! sled 0.34 does not come back from a failed write inside a running process, and one way
//! of failing never returns at all:
//!
//! - A log buffer whose `pwrite` gets ENOSPC (`IoBufs::write_to_log`) sets sled's global
//!   error (`Config::set_global_error`), which only opening the store again clears
//!   (`PageCache::start` calls `reset_global_error`). Every later write and flush fails, even
//!   once space is freed; writes sled had taken into memory before the failure stay readable
//!   although they never reach the disk.
//! - A page too large for the log (over a quarter segment, ~128 KiB: a big session, a full
//!   replay-buffer node) goes to a blob file, written *inside* the log reservation
//!   (`Log::reserve_inner` → `IoBufs::encapsulate` → `write_blob`). On ENOSPC that `?`
//!   returns after the log buffer's writer count was raised and before the `Reservation`
//!   that would lower it exists, so that buffer is never written, the stable LSN never
//!   passes it, and every later flush waits on a condition variable without a timeout
//!   (`make_stable_inner`) for good, global error unset. Dropping the last tree handle
//!   flushes as well (`Drop for TreeInner`), so a clean shutdown hangs the same way.
//!
//! So the store refuses writes *before* the disk is full ([`crate::space`]: nothing new is
//! written while less than `disk_reserve_bytes` is free; writing resumes by itself when space
//! is back), and no one waits on a flush longer than `flush_timeout_ms`: a flush that does
//! not finish in time fails its waiters and the store refuses writes until it returns; one
//! that sled fails makes the store refuse writes until tether is restarted. Either way
//! [`Flusher::admit`] says so to whoever is about to write, with a [`StoreUnwritable`] that
//! the HTTP API turns into 507/503 and a WebSocket into an `error` frame or a 1013 close.
//!
//! "Nothing acknowledged is lost" holds through all of this: a write is acknowledged only
//! after a flush that covers it succeeded; a write refused at admission was never made; a
//! write whose flush failed or ran out of time was refused, not acknowledged (if a late
//! flush does carry it to disk, it is there after a restart although its client was told
//! it failed, as with any timeout).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::Durability;
use crate::space::Space;
use crate::sync::lock;

/// Waiters that trigger an early flush in `batched` mode.
const BATCH_TRIGGER: usize = 256;

/// How often the background flusher looks again while the store refuses writes.
const UNWRITABLE_RECHECK: Duration = Duration::from_millis(100);

pub use crate::space::StoreUnwritable;

#[derive(Clone)]
pub struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    mode: Durability,
    window: Duration,
    timeout: Duration,
    space: Space,
    next: AtomicU64,
    waiting: AtomicUsize,
    wake: Notify,
    done_tx: watch::Sender<Done>,
    flushes: AtomicU64,
    /// Flushes that ran past the timeout and have not returned yet.
    stuck: AtomicUsize,
    /// Set once sled failed a flush (see the module docs: it keeps failing). Read on every
    /// admission, so an atomic; the error itself is in `failure`.
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    refused: AtomicU64,
    timeouts: AtomicU64,
    /// Runs on the flush's thread just before each flush (the event log writes what it
    /// holds in memory): see [`Flusher::before_flush`].
    before: Mutex<Option<BeforeFlush>>,
}

type BeforeFlush = Arc<dyn Fn() + Send + Sync>;

/// What the flusher publishes to waiters.
#[derive(Debug, Clone, Copy, Default)]
struct Done {
    /// Highest id of a flush that finished.
    ok: u64,
    /// Highest id of a flush that failed or ran out of time.
    failed: u64,
}

impl Flusher {
    /// Starts the flusher task on the current runtime. No flush is waited for longer than
    /// `timeout`; `space` is the free-space guard that [`Flusher::admit`] consults.
    pub fn start(
        db: sled::Db,
        mode: Durability,
        window: Duration,
        timeout: Duration,
        space: Space,
    ) -> Flusher {
        let (done_tx, _) = watch::channel(Done::default());
        let inner = Arc::new(Inner {
            db,
            mode,
            window,
            timeout,
            space,
            next: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            done_tx,
            flushes: AtomicU64::new(0),
            stuck: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            refused: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            before: Mutex::new(None),
        });
        let task = Arc::downgrade(&inner);
        tokio::spawn(async move { run(task).await });
        Flusher { inner }
    }

    /// Sets what runs just before every flush, on the flush's blocking thread, after the
    /// flush took its id: whatever was handed to `f`'s owner before a writer took its
    /// ticket is in sled when the flush that covers the ticket starts.
    pub fn before_flush(&self, f: impl Fn() + Send + Sync + 'static) {
        *lock(&self.inner.before) = Some(Arc::new(f));
    }

    /// Asked before a write that will be acknowledged (an API write, a connect, a
    /// `session.update`): `Err` says why the store cannot take it now, and counts the
    /// refusal. Nothing has been written when this refuses.
    pub fn admit(&self) -> Result<(), StoreUnwritable> {
        let r = self.writable();
        if r.is_err() {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Whether the store takes writes now (for `/ready` and metrics; counts nothing).
    pub fn writable(&self) -> Result<(), StoreUnwritable> {
        self.inner.flush_health()?;
        self.inner.space.check()
    }

    /// The free-space guard.
    pub fn space(&self) -> &Space {
        &self.inner.space
    }

    /// Returns once every write made before this call is on disk (in `sync` and `batched`
    /// mode). Fails when a flush fails or runs out of time, and at once while the store
    /// refuses writes for either reason.
    pub async fn commit(&self) -> Result<(), StoreUnwritable> {
        self.wait(self.ticket()).await
    }

    /// The flush that will cover every write made before this call. Taken right after a
    /// write, it lets someone else wait for exactly that flush later ([`Flusher::wait`]):
    /// the session publisher waits for the flush its HTTP writer waits for, not a later one.
    pub fn ticket(&self) -> u64 {
        self.inner.next.load(Ordering::SeqCst)
    }

    /// Waits until the flush of `ticket` is done (per the durability mode).
    pub async fn wait(&self, ticket: u64) -> Result<(), StoreUnwritable> {
        let inner = &self.inner;
        match inner.mode {
            // Nothing is waited for, but a store that cannot flush at all must not
            // acknowledge writes it will never keep.
            Durability::Relaxed => inner.flush_health(),
            // One flush per write, shared with nobody: the plainest guarantee, and the
            // baseline group commit is measured against. A ticket a started flush already
            // covers (the session publisher's, after its writer's commit) waits for that
            // flush instead of running another.
            Durability::Sync if inner.next.load(Ordering::SeqCst) <= ticket => {
                self.flush_now().await
            }
            Durability::Sync => self.flushed(ticket).await,
            Durability::Batched => {
                inner.flush_health()?;
                let waiting = inner.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                if waiting == 1 || waiting >= BATCH_TRIGGER {
                    inner.wake.notify_one();
                }
                let result = self.flushed(ticket).await;
                inner.waiting.fetch_sub(1, Ordering::SeqCst);
                result
            }
        }
    }

    /// Waits until a flush numbered `ticket` or later is done, or the store gives up on it.
    async fn flushed(&self, ticket: u64) -> Result<(), StoreUnwritable> {
        let inner = &self.inner;
        let mut rx = inner.done_tx.subscribe();
        loop {
            let done = *rx.borrow_and_update();
            if done.ok >= ticket {
                return Ok(());
            }
            // A stalled or failed store starts no flush that could cover this ticket.
            inner.flush_health()?;
            if done.failed >= ticket {
                return Err(StoreUnwritable::FlushStalled {
                    timeout_ms: inner.timeout_ms(),
                });
            }
            if rx.changed().await.is_err() {
                return Err(StoreUnwritable::Failed {
                    detail: "the flusher stopped".into(),
                });
            }
        }
    }

    /// Flushes now and waits for it, at most `flush_timeout_ms` (`sync` writers, shutdown,
    /// backups).
    pub async fn flush_now(&self) -> Result<(), StoreUnwritable> {
        flush(&self.inner).await
    }

    /// How many flushes have run (for metrics).
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// The store's lines for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let inner = &self.inner;
        let writable = u8::from(self.writable().is_ok());
        let _ = writeln!(out, "# HELP tether_store_writable 1 while the store takes writes, 0 while it refuses them (the reason is in /ready)\n# TYPE tether_store_writable gauge\ntether_store_writable {writable}");
        let free = inner.space.free_bytes();
        if free != u64::MAX {
            let _ = writeln!(out, "# HELP tether_disk_free_bytes Free bytes on the data directory's filesystem at the last measurement\n# TYPE tether_disk_free_bytes gauge\ntether_disk_free_bytes {free}");
        }
        let _ = writeln!(out, "# HELP tether_disk_reserve_bytes Free space under which the store refuses writes (disk_reserve_bytes)\n# TYPE tether_disk_reserve_bytes gauge\ntether_disk_reserve_bytes {}", inner.space.reserve_bytes());
        let _ = writeln!(out, "# HELP tether_store_writes_refused_total Writes refused because the store could not take them\n# TYPE tether_store_writes_refused_total counter\ntether_store_writes_refused_total {}", inner.refused.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP tether_store_flush_timeouts_total Store flushes that ran past flush_timeout_ms\n# TYPE tether_store_flush_timeouts_total counter\ntether_store_flush_timeouts_total {}", inner.timeouts.load(Ordering::Relaxed));
    }
}

impl Inner {
    /// `Err` while sled failed a flush (for good) or a flush is overdue.
    fn flush_health(&self) -> Result<(), StoreUnwritable> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(StoreUnwritable::Failed {
                detail: lock(&self.failure).clone().unwrap_or_default(),
            });
        }
        if self.stuck.load(Ordering::SeqCst) > 0 {
            return Err(StoreUnwritable::FlushStalled {
                timeout_ms: self.timeout_ms(),
            });
        }
        Ok(())
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis().try_into().unwrap_or(u64::MAX)
    }

    /// Records how flush `id` ended and tells the waiters.
    fn settle(&self, id: u64, result: Result<(), String>) -> Result<(), StoreUnwritable> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.done_tx.send_modify(|d| d.ok = d.ok.max(id));
                Ok(())
            }
            Err(detail) => {
                tracing::error!(error = %detail, "store flush failed; writes are refused until tether is restarted");
                lock(&self.failure).get_or_insert(detail.clone());
                self.failed.store(true, Ordering::SeqCst);
                self.done_tx.send_modify(|d| d.failed = d.failed.max(id));
                Err(StoreUnwritable::Failed { detail })
            }
        }
    }
}

async fn run(inner: std::sync::Weak<Inner>) {
    let mut last_start = tokio::time::Instant::now();
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.flush_health().is_err() {
            // No flush can start; waiters were told. Look again later (a stalled flush may
            // still return).
            drop(me);
            tokio::time::sleep(UNWRITABLE_RECHECK).await;
            continue;
        }
        match me.mode {
            // Nobody waits on the flusher in these modes: it is the background flush that
            // bounds what a crash can take (relaxed) or writes back lazy fields (sync).
            Durability::Relaxed => tokio::time::sleep(me.window).await,
            Durability::Sync => tokio::time::sleep(me.window.max(Duration::from_millis(500))).await,
            Durability::Batched => {
                if me.waiting.load(Ordering::SeqCst) == 0 {
                    let notified = me.wake.notified();
                    drop_and_wait(&me, notified).await;
                }
                // Pace: one flush per window at most, unless enough writers already wait.
                let since = last_start.elapsed();
                if since < me.window && me.waiting.load(Ordering::SeqCst) < BATCH_TRIGGER {
                    let notified = me.wake.notified();
                    let _ = tokio::time::timeout(me.window - since, notified).await;
                }
            }
        }
        last_start = tokio::time::Instant::now();
        let _ = flush(&me).await;
    }
}

/// One numbered flush: it takes the next id before it starts, so it covers every ticket up
/// to that id, and publishes the id when done. Flushes may overlap (`sync` writers run
/// their own), so the published ids only grow.
///
/// sled's flush runs on a blocking thread and is waited for at most `timeout`. One that
/// takes longer is left to finish on its own (a blocked thread cannot be cancelled): its
/// waiters get [`StoreUnwritable::FlushStalled`], no other flush starts meanwhile, and when
/// it does return, the store takes writes again (or is failed, if sled failed it).
async fn flush(me: &Arc<Inner>) -> Result<(), StoreUnwritable> {
    me.flush_health()?;
    let id = me.next.fetch_add(1, Ordering::SeqCst);
    let db = me.db.clone();
    let before = lock(&me.before).clone();
    let mut task = tokio::task::spawn_blocking(move || {
        if let Some(f) = before {
            f();
        }
        db.flush().map(|_| ())
    });
    match tokio::time::timeout(me.timeout, &mut task).await {
        Ok(joined) => me.settle(id, outcome(joined)),
        Err(_) => {
            me.stuck.fetch_add(1, Ordering::SeqCst);
            me.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                timeout_ms = me.timeout_ms(),
                "a store flush has not finished in time; writes are refused until it does"
            );
            me.done_tx.send_modify(|d| d.failed = d.failed.max(id));
            let late = me.clone();
            tokio::spawn(async move {
                let result = outcome(task.await);
                late.stuck.fetch_sub(1, Ordering::SeqCst);
                if late.settle(id, result).is_ok() && late.flush_health().is_ok() {
                    tracing::warn!("the overdue store flush finished; writes are taken again");
                }
            });
            Err(StoreUnwritable::FlushStalled {
                timeout_ms: me.timeout_ms(),
            })
        }
    }
}

fn outcome(joined: Result<sled::Result<()>, tokio::task::JoinError>) -> Result<(), String> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the flush task ended: {e}")),
    }
}

/// Waits for a wake-up, but re-checks now and then so a missed notify never strands a writer.
async fn drop_and_wait(me: &Arc<Inner>, notified: tokio::sync::futures::Notified<'_>) {
    if me.waiting.load(Ordering::SeqCst) > 0 {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        (dir, db)
    }

    fn flusher(db: &sled::Db, dir: &std::path::Path, mode: Durability) -> Flusher {
        Flusher::start(
            db.clone(),
            mode,
            Duration::from_millis(5),
            Duration::from_secs(5),
            Space::start(dir, Some(0)),
        )
    }

    #[tokio::test]
    async fn commits_in_every_mode() {
        for mode in [Durability::Sync, Durability::Batched, Durability::Relaxed] {
            let (dir, db) = store();
            let f = flusher(&db, dir.path(), mode);
            db.insert("k", "v").unwrap();
            f.commit().await.unwrap();
            assert!(f.writable().is_ok());
            f.flush_now().await.unwrap();
        }
    }

    /// A flush sled fails makes the store refuse every later write, fast, in every mode.
    #[tokio::test]
    async fn a_failed_flush_refuses_writes_until_restart() {
        for mode in [Durability::Sync, Durability::Batched, Durability::Relaxed] {
            let (dir, db) = store();
            let f = flusher(&db, dir.path(), mode);
            let r = f.inner.settle(
                f.inner.next.fetch_add(1, Ordering::SeqCst),
                Err("disk on fire".into()),
            );
            assert!(matches!(r, Err(StoreUnwritable::Failed { .. })));
            let refused = tokio::time::timeout(Duration::from_secs(2), f.commit())
                .await
                .expect("commit waited on a failed store");
            assert_eq!(refused.unwrap_err().code(), "store_failed");
            assert_eq!(f.admit().unwrap_err().code(), "store_failed");
            assert!(f.flush_now().await.is_err());
        }
    }

    /// Waiters of an overdue flush are let go with an error; the store refuses writes until
    /// it returns, then takes them again.
    #[tokio::test]
    async fn an_overdue_flush_fails_its_waiters_and_the_store_recovers_when_it_returns() {
        let (dir, db) = store();
        let f = flusher(&db, dir.path(), Durability::Batched);
        let ticket = f.ticket();
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.flushed(ticket).await }
        });
        // Stand in for `flush` timing out on flush `ticket`.
        let id = f.inner.next.fetch_add(1, Ordering::SeqCst);
        assert_eq!(id, ticket);
        f.inner.stuck.fetch_add(1, Ordering::SeqCst);
        f.inner.done_tx.send_modify(|d| d.failed = d.failed.max(id));
        let r = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the waiter was not let go")
            .unwrap();
        assert_eq!(r.unwrap_err().code(), "store_stalled");
        assert_eq!(f.admit().unwrap_err().code(), "store_stalled");
        assert!(tokio::time::timeout(Duration::from_secs(2), f.commit())
            .await
            .expect("commit waited on a stalled store")
            .is_err());
        // The late flush returns.
        f.inner.stuck.fetch_sub(1, Ordering::SeqCst);
        f.inner.settle(id, Ok(())).unwrap();
        assert!(f.admit().is_ok());
        db.insert("k", "v").unwrap();
        tokio::time::timeout(Duration::from_secs(2), f.commit())
            .await
            .expect("commit after recovery hung")
            .unwrap();
    }

    #[test]
    fn codes() {
        let full = StoreUnwritable::DiskFull {
            free: 1,
            reserve: 2,
        };
        assert_eq!(full.code(), "insufficient_storage");
        assert!(full.to_string().contains("1 bytes free"), "{full}");
        let failed = StoreUnwritable::Failed {
            detail: "secret".into(),
        };
        assert!(!failed.to_string().contains("secret"), "{failed}");
    }
}
