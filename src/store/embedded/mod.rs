//! The embedded store: sled under the data directory, one node.
//!
//! [`trees`] is the database (its trees, schema version, manifest and directory lock);
//! [`conns`], [`sessions`] and [`events`] implement the store traits over it, with records
//! kept in memory and written through; [`crate::durability`] makes writes durable with one
//! shared flush per burst (group commit); values are encoded by [`crate::codec`] (bincode
//! behind a version byte); [`snapshot`] is the backup format.

pub mod conns;
pub mod events;
pub mod sessions;
pub mod snapshot;
mod trees;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use trees::{db_path, keys, lock_data_dir, manifest_path, DirLock, Trees, SCHEMA_VERSION};

use crate::bus::Bus;
use crate::config::Config;
use crate::durability::Flusher;
use crate::metrics::Metrics;
use crate::store::{Limits, NodeInfo, NodeStore, SessionLimits, StoreAdmin, StoreError, Stores};

/// How often a running server records in `store.manifest` the newest event seq it has
/// made durable.
const RECORD_EVERY: Duration = Duration::from_secs(10);

/// The open store of a running server: the trees, the group-commit flusher, the lock.
#[derive(Clone)]
pub struct EmbeddedStore {
    trees: Trees,
    flusher: Flusher,
    conns: conns::Conns,
    sessions: sessions::Sessions,
    events: Arc<events::EventLog>,
    data_dir: PathBuf,
    manifest: Arc<ManifestWriter>,
    _lock: Arc<DirLock>,
}

/// Keeps `store.manifest` up to date while the server runs (see [`Trees::check_manifest`]):
/// the newest durable event seq every [`RECORD_EVERY`], so that after a crash the next
/// start still knows a lower bound of what the store must hold; the store's files at the
/// clean stop.
struct ManifestWriter {
    trees: Trees,
    flusher: Flusher,
    data_dir: PathBuf,
    /// (the event seq last recorded, whether the clean stop is recorded). One writer at a
    /// time; after the clean stop nothing else is recorded.
    state: std::sync::Mutex<(u64, bool)>,
}

impl ManifestWriter {
    /// Records `event_seq`, read before the flush that made it durable.
    fn record(&self, event_seq: u64, clean: bool) -> Result<(), StoreError> {
        let mut state = crate::sync::lock(&self.state);
        if state.1 || (!clean && event_seq <= state.0) {
            return Ok(());
        }
        self.trees.record(&self.data_dir, event_seq, clean)?;
        *state = (event_seq, clean);
        Ok(())
    }

    /// Every [`RECORD_EVERY`] while the store is open: the newest event seq, once durable.
    async fn run(me: std::sync::Weak<ManifestWriter>) {
        let mut tick = tokio::time::interval(RECORD_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(me) = me.upgrade() else { return };
            let seq = me.trees.event_high_water();
            if me.flusher.flush_now().await.is_ok() {
                if let Err(e) = me.record(seq, false) {
                    tracing::warn!(error = %e, "cannot update store.manifest");
                }
            }
        }
    }
}

impl EmbeddedStore {
    /// Opens the store of a locked data directory (the caller holds `lock`). Starts the
    /// flusher and publisher tasks on the current runtime.
    pub fn open(
        config: &Config,
        lock: DirLock,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        node: String,
    ) -> Result<EmbeddedStore, StoreError> {
        // First: it deletes the ballast an earlier run left, which gives sled the room it
        // needs to open a store on a disk that filled up meanwhile.
        let space = crate::space::Space::start(&config.data_dir, config.disk_reserve_bytes);
        let trees = Trees::open(&config.data_dir, config.cache_capacity_bytes)?;
        // The store is checked and about to change: a clean stop's record no longer holds.
        let event_seq = trees.event_high_water();
        trees.record(&config.data_dir, event_seq, false)?;
        let flusher = Flusher::start(
            trees.db.clone(),
            config.durability,
            config.flush_interval(),
            config.flush_timeout(),
            space,
        );
        let manifest = Arc::new(ManifestWriter {
            trees: trees.clone(),
            flusher: flusher.clone(),
            data_dir: config.data_dir.clone(),
            state: std::sync::Mutex::new((event_seq, false)),
        });
        tokio::spawn(ManifestWriter::run(Arc::downgrade(&manifest)));
        let events =
            events::EventLog::open(trees.events.clone(), config.event_log_max, bus.clone());
        events.drain_before_flushes(&flusher);
        let conns = conns::Conns::new(
            trees.clone(),
            flusher.clone(),
            events.clone(),
            metrics,
            Limits::from(config),
            node,
        );
        let sessions = sessions::Sessions::new(
            trees.clone(),
            bus,
            flusher.clone(),
            SessionLimits::from(config),
        );
        Ok(EmbeddedStore {
            trees,
            flusher,
            conns,
            sessions,
            events,
            data_dir: config.data_dir.clone(),
            manifest,
            _lock: Arc::new(lock),
        })
    }

    /// Waits until the store takes writes (start-up recovery writes every record: on a disk
    /// under its reserve those could be the writes that fill it).
    pub async fn writable(&self) {
        if self.flusher.writable().is_err() {
            tracing::error!(
                data_dir = %self.data_dir.display(),
                "the store cannot take writes; start-up recovery waits until it can"
            );
            self.flusher.space().room().await;
        }
    }

    /// The store's four faces, for the node.
    pub fn stores(&self) -> Stores {
        Stores {
            conns: Arc::new(self.conns.clone()),
            sessions: Arc::new(self.sessions.clone()),
            events: Arc::new(self.events.clone()),
            nodes: Arc::new(OneNode),
            admin: Arc::new(self.clone()),
        }
    }
}

#[async_trait]
impl StoreAdmin for EmbeddedStore {
    async fn snapshot(&self, secrets: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.flusher.flush_now().await?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            // Hold every connection shard and the session write lock: nothing changes
            // mid-copy.
            let _frozen = me.conns.freeze();
            let _sessions = me.sessions.freeze();
            me.events.drain();
            snapshot::write_snapshot(&me.trees, &secrets, Vec::new())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("backup task failed: {e}")))?
        .map_err(|e| StoreError::Dir {
            dir: self.data_dir.display().to_string(),
            source: e,
        })
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        // Lazy fields (last activity, rate-limit windows) and the manifest's record only; on
        // a disk under its reserve they could be the writes that fill it.
        let writable = self.flusher.writable().is_ok();
        if !writable {
            tracing::warn!("the store refuses writes: last-activity times are not written back");
        }
        if writable {
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                me.conns.persist_all();
                // As every flush does: the manifest's event seq below must count them.
                // (Refusing writes, the flush below drains them, under its timeout.)
                me.events.drain();
            })
            .await;
        }
        let event_seq = self.trees.event_high_water();
        self.flusher.flush_now().await?;
        // What a copy of the stopped directory must hold, checked at its next start.
        if !writable {
            return Ok(());
        }
        self.manifest.record(event_seq, true)
    }

    fn healthy(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        self.flusher.writable().map_err(refusal)
    }

    fn admit_write(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        self.flusher.admit().map_err(refusal)
    }

    fn render_metrics(&self, out: &mut String) {
        self.flusher.render_metrics(out);
    }

    fn figures(&self) -> Vec<(&'static str, &'static str, f64)> {
        vec![
            (
                "tether_store_flushes",
                "Store flushes since start",
                self.flusher.flushes() as f64,
            ),
            (
                "tether_store_bytes",
                "Size of the store on disk",
                self.trees.size_on_disk() as f64,
            ),
        ]
    }
}

/// The code and the operator's reason of a write the store refuses.
fn refusal(e: crate::durability::StoreUnwritable) -> (crate::protocol::ErrorCode, String) {
    let reason = e.to_string();
    let code = match StoreError::from(e) {
        StoreError::Refused { code, .. } => code,
        _ => crate::protocol::ErrorCode::Unavailable,
    };
    (code, reason)
}

/// The embedded store's cluster: one node, alive while it runs.
struct OneNode;

#[async_trait]
impl NodeStore for OneNode {
    async fn heartbeat(&self, _: &NodeInfo, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(Vec::new())
    }
    async fn expired(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn detach_node(&self, _: &str, _: &str) -> Result<Option<usize>, StoreError> {
        Ok(Some(0))
    }
    async fn leave(&self, _: &str) -> Result<usize, StoreError> {
        // Records stay as they are; the next start detaches them.
        Ok(0)
    }
}
