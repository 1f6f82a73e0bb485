//! Group commit: many writers, one `fsync`.
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
//! publishes the id of each finished flush on a watch channel.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::Durability;

/// Waiters that trigger an early flush in `batched` mode.
const BATCH_TRIGGER: usize = 256;

#[derive(Clone)]
pub struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    mode: Durability,
    window: Duration,
    next: AtomicU64,
    waiting: AtomicUsize,
    wake: Notify,
    done_tx: watch::Sender<u64>,
    flushes: AtomicU64,
    failed: std::sync::atomic::AtomicBool,
}

impl Flusher {
    /// Starts the flusher task on the current runtime.
    pub fn start(db: sled::Db, mode: Durability, window: Duration) -> Flusher {
        let (done_tx, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            db,
            mode,
            window,
            next: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            done_tx,
            flushes: AtomicU64::new(0),
            failed: Default::default(),
        });
        let task = Arc::downgrade(&inner);
        tokio::spawn(async move { run(task).await });
        Flusher { inner }
    }

    /// Returns once every write made before this call is on disk (in `sync` and `batched`
    /// mode). Fails only if the disk refuses the flush.
    pub async fn commit(&self) -> Result<(), sled::Error> {
        self.wait(self.ticket()).await
    }

    /// The flush that will cover every write made before this call. Taken right after a
    /// write, it lets someone else wait for exactly that flush later ([`Flusher::wait`]):
    /// the session publisher waits for the flush its HTTP writer waits for, not a later one.
    pub fn ticket(&self) -> u64 {
        self.inner.next.load(Ordering::SeqCst)
    }

    /// Waits until the flush of `ticket` is done (per the durability mode).
    pub async fn wait(&self, ticket: u64) -> Result<(), sled::Error> {
        let inner = &self.inner;
        match inner.mode {
            Durability::Relaxed => Ok(()),
            // One flush per write, shared with nobody: the plainest guarantee, and the
            // baseline group commit is measured against. A ticket a started flush already
            // covers (the session publisher's, after its writer's commit) waits for that
            // flush instead of running another.
            Durability::Sync if inner.next.load(Ordering::SeqCst) <= ticket => {
                self.flush_now().await
            }
            Durability::Sync => self.flushed(ticket).await,
            Durability::Batched => {
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

    /// Waits until a flush numbered `ticket` or later is done.
    async fn flushed(&self, ticket: u64) -> Result<(), sled::Error> {
        let inner = &self.inner;
        let mut rx = inner.done_tx.subscribe();
        let result = rx.wait_for(|done| *done >= ticket).await.map(|_| ());
        if result.is_err() || inner.failed.load(Ordering::SeqCst) {
            return Err(sled::Error::ReportableBug("store flush failed".into()));
        }
        Ok(())
    }

    /// Flushes now and waits for it (`sync` writers, shutdown, backups).
    pub async fn flush_now(&self) -> Result<(), sled::Error> {
        flush(&self.inner).await
    }

    /// How many flushes have run (for metrics).
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }
}

async fn run(inner: std::sync::Weak<Inner>) {
    let mut last_start = tokio::time::Instant::now();
    loop {
        let Some(me) = inner.upgrade() else { return };
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
/// their own), so the published id only grows.
async fn flush(me: &Inner) -> Result<(), sled::Error> {
    let id = me.next.fetch_add(1, Ordering::SeqCst);
    let db = me.db.clone();
    let result = tokio::task::spawn_blocking(move || db.flush().map(|_| ()))
        .await
        .map_err(|e| sled::Error::ReportableBug(e.to_string()))
        .and_then(|r| r);
    if result.is_err() {
        tracing::error!("store flush failed; durable writes are being refused");
        me.failed.store(true, Ordering::SeqCst);
    }
    me.flushes.fetch_add(1, Ordering::Relaxed);
    me.done_tx.send_modify(|done| *done = (*done).max(id));
    result
}

/// Waits for a wake-up, but re-checks now and then so a missed notify never strands a writer.
async fn drop_and_wait(me: &Arc<Inner>, notified: tokio::sync::futures::Notified<'_>) {
    if me.waiting.load(Ordering::SeqCst) > 0 {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
}
