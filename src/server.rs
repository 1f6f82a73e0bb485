//! Wiring: open the store, recover, listen, run the background tasks, and shut down cleanly.
//!
//! The listener is ours rather than warp's: we set `TCP_NODELAY` (small frames must not wait
//! for Nagle), record each peer address, send `/ws` to our own upgrade (so we choose the
//! WebSocket buffers), and everything else to warp's routes. Each accepted connection is
//! served by [`crate::listener`], which holds its timeouts and limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;
use crate::auth::Authenticator;
use crate::bus::{Bus, MemoryBus};
use crate::config::Config;
use crate::error::Disconnect;
use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::registry::{Limits, Registry};
use crate::sessions::Sessions;
use crate::store::{lock_data_dir, Store, StoreError};

/// Events kept per bus channel for a subscriber that falls behind.
const BUS_CAPACITY: usize = 65_536;
/// How long shutdown waits for sockets to finish their close handshake.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("secrets: {0}")]
    Secrets(String),
    #[error("configuration: {0}")]
    Auth(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("start-up recovery failed: {0}")]
    Recovery(String),
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), ServeError> {
    run_until(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the server until `stop` completes.
pub async fn run_until(
    mut config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    // The address comes first: a server that cannot listen must not create or change anything
    // in the data directory. Then the lock: a second server on it must touch nothing.
    let socket = bind(config.listen).map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let lock = lock_data_dir(&config.data_dir)?;
    let (secrets, created) = crate::secrets::load_or_create(&config.data_dir)
        .map_err(|e| ServeError::Secrets(e.to_string()))?;
    crate::secrets::apply(&mut config, &secrets);
    let secrets_path = crate::secrets::path(&config.data_dir);
    if created {
        tracing::info!(path = %secrets_path.display(), "generated a JWT secret and an admin API key");
    } else {
        tracing::info!(path = %secrets_path.display(), "secrets file");
    }
    let auth = Authenticator::new(&config).map_err(|e| ServeError::Auth(e.to_string()))?;
    let store = Store::open(&config, lock)?;

    let listener = socket.listen(4096).map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;

    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(BUS_CAPACITY));
    let metrics = Arc::new(Metrics::default());
    let events = EventLog::open(
        store.trees.events.clone(),
        config.event_log_max,
        bus.clone(),
    );
    let limits = Limits {
        max_per_user: config.max_per_user,
        max_total: config.max_total,
        ttl_seconds: config.ttl_seconds,
        resume_grace_seconds: config.resume_grace_seconds,
        replay_buffer_messages: config.replay_buffer_messages as u64,
        messages_per_minute: config.messages_per_minute,
    };
    let registry = Arc::new(Registry::new(
        store.trees.clone(),
        events,
        metrics.clone(),
        limits,
    ));
    let sessions = Sessions::new(
        store.trees.clone(),
        bus.clone(),
        store.flusher.clone(),
        config.session_ttl_seconds,
    );
    let app = Arc::new(App::new(
        config,
        auth,
        store,
        registry.clone(),
        sessions,
        bus.clone(),
        metrics,
    ));

    // Listen first, so /health and /ready answer (503) while recovery runs.
    let (stop_accepting_tx, stop_accepting) = tokio::sync::watch::channel(false);
    let acceptor = tokio::spawn(accept_loop(listener, app.clone(), stop_accepting));
    tracing::info!("listening on http://{addr}");

    let report = tokio::task::spawn_blocking({
        let registry = registry.clone();
        move || registry.recover()
    })
    .await
    .map_err(|e| ServeError::Recovery(e.to_string()))?
    .map_err(|e| ServeError::Recovery(e.to_string()))?;
    app.store
        .flusher
        .flush_now()
        .await
        .map_err(|e| ServeError::Recovery(e.to_string()))?;
    tracing::info!(
        detached = report.detached,
        unreadable = report.unreadable,
        "recovered stored connections"
    );

    tokio::spawn(crate::sessions::run_reactor(bus.clone(), registry.clone()));
    let sweeper = tokio::spawn(sweep_loop(app.clone()));
    app.set_ready(true);
    tracing::info!(durability = ?app.config.durability, data_dir = %app.config.data_dir.display(), "ready");

    stop.await;
    tracing::info!("shutting down: closing sockets with 1001");
    app.set_ready(false);
    let _ = stop_accepting_tx.send(true);
    let _ = app.stopping.send(true);
    sweeper.abort();
    let closing = app.registry.close_all(&Disconnect::shutdown());
    if tokio::time::timeout(SHUTDOWN_WAIT, app.tasks.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.tasks.running(),
            "some sockets did not finish closing in time"
        );
    }
    let _ = acceptor.await;
    app.registry.persist_all();
    if let Err(e) = app.store.flusher.flush_now().await {
        tracing::error!(error = %e, "final flush failed");
    }
    tracing::info!(closed = closing, "stopped");
    Ok(())
}

/// Binds the listening address; `listen` follows once the store is open. The accept queue is
/// deep (4096): after a restart every client reconnects at once, and the default backlog
/// (128) would make most of them wait a SYN retry (about a second).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let routes = warp::service(crate::api::routes(app.clone()));
    // Timeouts, the pending cap and the file reserve: see `crate::listener`.
    let admission = crate::listener::Admission::new(&app.config);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    admission.accept_failed(&e).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let conn = admission.admit(tcp, peer);
        tokio::spawn(conn.serve(app.clone(), routes.clone(), stop.clone()));
    }
}

/// Once a second: TTL expiry and detached clean-up, session expiry, the message-rate figure.
async fn sweep_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = app
        .metrics
        .messages_delivered
        .load(std::sync::atomic::Ordering::Relaxed);
    loop {
        tick.tick().await;
        let app2 = app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            app2.registry.sweep();
            app2.registry.collect_garbage();
            app2.sessions.sweep();
        })
        .await;
        let now = app
            .metrics
            .messages_delivered
            .load(std::sync::atomic::Ordering::Relaxed);
        app.registry.set_messages_per_second((now - last) as f64);
        last = now;
        let _: Result<(), Infallible> = Ok(());
    }
}
