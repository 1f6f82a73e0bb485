//! The node: the coordinator every transport and route talks to.
//!
//! A node owns the configuration, the authenticator, the [`Hub`] of its live sockets, the
//! state of record ([`Stores`]) and the [`Bus`]. It is the only thing that sees both the
//! sockets and the store, so everything that needs both goes through it:
//!
//! - [`Node::connect`] is the one connection lifecycle (authenticate, admit, activate,
//!   `welcome`, replay), shared by WebSocket and SSE; [`Node::finish`] ends it.
//! - Every API mutation is a node method ([`ops`]) that returns once its write is durable.
//! - A socket that must close (eviction, an operator, a session ending, expiry) is reached
//!   through [`Node::close`]: the hub when it is here, the bus when another node holds it.
//! - [`background`] runs what reacts to the bus (session changes become frames and closes;
//!   commands addressed to this node reach its sockets) and the sweeper.

pub mod background;
pub mod cluster;
pub mod connect;
pub mod ops;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::auth::Authenticator;
use crate::bus::{Bus, BusEvent, NodeCommand};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{Closing, Stores};

pub use crate::model::Source;
pub use crate::store::{
    Activity, Delivery, EventQuery, MetadataPatch, MigrateError, NewSession, ResumeRequest,
    SessionError,
};
pub use connect::{Attached, Handshake, Presented};

pub struct Node {
    pub config: Config,
    pub auth: Authenticator,
    pub hub: Hub,
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub tasks: Arc<Tasks>,
    stores: Stores,
    id: String,
    ready: AtomicBool,
    /// Turns true when the node starts shutting down; long-lived streams watch it.
    pub stopping: watch::Sender<bool>,
    messages_per_second: AtomicU64,
    /// The newest of this node's bus probes it has seen come back.
    probe_seen: AtomicU64,
    /// False while this node's subscription delivers nothing (see [`cluster`]).
    bus_ok: AtomicBool,
    /// Tells the reactor to subscribe again.
    resubscribe: Notify,
    /// The address this node listens on, once it does (`GET /v1/nodes`).
    listen: std::sync::OnceLock<String>,
    /// When this node was made (`startedAt` of `GET /v1/nodes`).
    started_at: crate::time::Millis,
}

impl Node {
    pub fn new(
        config: Config,
        auth: Authenticator,
        stores: Stores,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        id: String,
    ) -> Node {
        Node {
            config,
            auth,
            hub: Hub::new(),
            bus,
            metrics,
            tasks: Arc::new(Tasks::default()),
            stores,
            id,
            ready: AtomicBool::new(false),
            stopping: watch::channel(false).0,
            messages_per_second: AtomicU64::new(0),
            probe_seen: AtomicU64::new(0),
            bus_ok: AtomicBool::new(true),
            resubscribe: Notify::new(),
            listen: std::sync::OnceLock::new(),
            started_at: crate::time::now_ms(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True once the store is open and start-up recovery is done, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The address this node listens on.
    pub fn set_listen(&self, addr: std::net::SocketAddr) {
        let _ = self.listen.set(addr.to_string());
    }

    /// Whether the node can take traffic that writes: the store takes writes and (in a
    /// cluster) the bus delivers. The code and the operator's reason when not.
    pub fn writable(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        self.stores.admin.healthy()?;
        if !self.bus_ok.load(Ordering::SeqCst) {
            return Err((
                crate::protocol::ErrorCode::Unavailable,
                "this node's bus subscription delivers nothing; subscribing again".into(),
            ));
        }
        Ok(())
    }

    /// [`Node::writable`], asked before a connection is upgraded: a refusal is counted.
    pub fn admit_write(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        self.stores.admin.admit_write()?;
        self.writable()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// A probe of this node's own bus subscription came back.
    fn probed(&self, n: u64) {
        self.probe_seen.fetch_max(n, Ordering::SeqCst);
    }

    /// Tells the socket of a connection to close, wherever it is. Returns whether a close
    /// was started here (a socket elsewhere is told over the bus).
    pub fn close(&self, c: Closing) -> bool {
        match c.node {
            Some(node) if node == self.id => self.hub.close(&c.user, &c.id, c.disconnect),
            Some(node) => {
                self.command(
                    node,
                    NodeCommand::Close {
                        user: c.user,
                        id: c.id,
                        disconnect: c.disconnect,
                    },
                );
                false
            }
            None => false,
        }
    }

    /// Sends `command` to node `node` in the background.
    fn command(&self, node: String, command: NodeCommand) {
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(e) = bus.publish(BusEvent::Command { node, command }).await {
                tracing::warn!(error = %e, "a command to another node was not published");
            }
        });
    }

    /// Closes every socket with 1001 (resumable), waits for them to finish closing (at most
    /// `wait`), and makes the store durable.
    pub async fn shutdown(&self, wait: std::time::Duration) -> usize {
        self.set_ready(false);
        let _ = self.stopping.send(true);
        let closing = self.hub.close_all(&crate::protocol::Disconnect::shutdown());
        if tokio::time::timeout(wait, self.tasks.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.running(),
                "some sockets did not finish closing in time"
            );
        }
        // In a cluster the connections are detached at once, so that another node can
        // take their resumes now (a single node detaches them when it starts again).
        match self.stores.nodes.leave(&self.id).await {
            Ok(n) if n > 0 => tracing::info!(connections = n, "detached this node's connections"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "this node's connections were not detached"),
        }
        if let Err(e) = self.stores.admin.shutdown().await {
            tracing::error!(error = %e, "final flush failed");
        }
        closing
    }
}

/// Counts connection tasks so that shutdown can wait for every socket to finish closing.
/// (warp's graceful shutdown does not wait for upgraded sockets; this does.)
#[derive(Default)]
pub struct Tasks {
    running: AtomicUsize,
    idle: Notify,
}

pub struct TaskGuard(Arc<Tasks>);

impl Tasks {
    pub fn enter(self: &Arc<Self>) -> TaskGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Waits until no task is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
