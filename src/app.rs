//! The shared state of a running server, handed to every handler as `Arc<App>`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sessions::Sessions;
use crate::store::Store;

pub struct App {
    pub config: Config,
    pub auth: Authenticator,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub sessions: Sessions,
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub tasks: Arc<Tasks>,
    ready: AtomicBool,
    /// Turns true when the server starts shutting down; long-lived streams watch it.
    pub stopping: watch::Sender<bool>,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        auth: Authenticator,
        store: Store,
        registry: Arc<Registry>,
        sessions: Sessions,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> App {
        App {
            config,
            auth,
            store,
            registry,
            sessions,
            bus,
            metrics,
            tasks: Arc::new(Tasks::default()),
            ready: AtomicBool::new(false),
            stopping: watch::channel(false).0,
        }
    }

    /// True once the store is open and start-up recovery is done, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
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
