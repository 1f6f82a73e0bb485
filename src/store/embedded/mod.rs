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

use async_trait::async_trait;

pub use trees::{db_path, keys, lock_data_dir, manifest_path, DirLock, Trees, SCHEMA_VERSION};

use crate::bus::Bus;
use crate::config::Config;
use crate::durability::Flusher;
use crate::metrics::Metrics;
use crate::store::{Limits, NodeInfo, NodeStore, SessionLimits, StoreAdmin, StoreError, Stores};

/// The open store of a running server: the trees, the group-commit flusher, the lock.
#[derive(Clone)]
pub struct EmbeddedStore {
    trees: Trees,
    flusher: Flusher,
    conns: conns::Conns,
    sessions: sessions::Sessions,
    events: Arc<events::EventLog>,
    data_dir: PathBuf,
    _lock: Arc<DirLock>,
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
        let trees = Trees::open(&config.data_dir, config.cache_capacity_bytes)?;
        let flusher = Flusher::start(trees.db.clone(), config.durability, config.flush_interval());
        let events = Arc::new(events::EventLog::open(
            trees.events.clone(),
            config.event_log_max,
            bus.clone(),
        ));
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
            _lock: Arc::new(lock),
        })
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

impl From<&Config> for Limits {
    fn from(config: &Config) -> Limits {
        Limits {
            max_per_user: config.max_per_user,
            max_total: config.max_total,
            ttl_seconds: config.ttl_seconds,
            resume_grace_seconds: config.resume_grace_seconds,
            replay_buffer_messages: config.replay_buffer_messages as u64,
            messages_per_minute: config.messages_per_minute,
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
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.conns.persist_all()).await;
        self.flusher.flush_now().await?;
        Ok(())
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
