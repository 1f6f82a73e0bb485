//! Wiring: open the store, recover, listen, run the background tasks, and shut down cleanly.
//!
//! The listener is ours rather than warp's: we set `TCP_NODELAY` (small frames must not wait
//! for Nagle), record each peer address, send `/ws` to our own upgrade (so we choose the
//! WebSocket buffers), and everything else to warp's routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower_service::Service;
use warp::http::{Method, Request, Response};

use crate::auth::Authenticator;
use crate::bus::{Bus, MemoryBus};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::{lock_data_dir, EmbeddedStore, StoreError};
use crate::transport::{ConnAbort, PeerAddr};

/// The body of every response: warp's, an SSE stream's, or a small JSON refusal.
type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

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
    // The lock comes first: a second server on this directory must touch nothing.
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
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(BUS_CAPACITY));
    let metrics = Arc::new(Metrics::default());
    let node_id = node_id(&config);
    let store = EmbeddedStore::open(&config, lock, bus.clone(), metrics.clone(), node_id.clone())?;

    let listener = listen(config.listen).map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;

    let node = Arc::new(Node::new(
        config,
        auth,
        store.stores(),
        bus,
        metrics,
        node_id,
    ));

    // Listen first, so /health and /ready answer (503) while recovery runs.
    let (stop_accepting_tx, stop_accepting) = tokio::sync::watch::channel(false);
    let acceptor = tokio::spawn(accept_loop(listener, node.clone(), stop_accepting));
    tracing::info!("listening on http://{addr}");

    let report = node
        .recover()
        .await
        .map_err(|e| ServeError::Recovery(e.to_string()))?;
    tracing::info!(
        detached = report.detached,
        unreadable = report.unreadable,
        "recovered stored connections"
    );

    node.start_background();
    node.set_ready(true);
    tracing::info!(node = node.id(), durability = ?node.config.durability, data_dir = %node.config.data_dir.display(), "ready");

    stop.await;
    tracing::info!("shutting down: closing sockets with 1001");
    let _ = stop_accepting_tx.send(true);
    let closing = node.shutdown(SHUTDOWN_WAIT).await;
    let _ = acceptor.await;
    tracing::info!(closed = closing, "stopped");
    Ok(())
}

/// This node's id: configured, or the host name and a random suffix, new at every start.
fn node_id(_config: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tether".into());
    let suffix: String = crate::auth::new_token().chars().take(6).collect();
    format!("{host}-{suffix}")
}

/// Binds with a deep accept queue: after a restart every client reconnects at once, and
/// the default backlog (128) would make most of them wait a SYN retry (about a second).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let routes = warp::service(crate::api::routes(node.clone()));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let node = node.clone();
        let routes = routes.clone();
        let mut stop = stop.clone();
        let abort = ConnAbort::default();
        let aborted = abort.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                let abort = abort.clone();
                let node = node.clone();
                let mut routes = routes.clone();
                async move {
                    let path = req.uri().path();
                    let r: Response<Body> = if path == "/ws" {
                        let r = crate::transport::ws::handle(node, req).await?;
                        r.map(|b| b.map_err(Into::into).boxed())
                    } else if path == "/sse" && req.method() == Method::GET {
                        crate::transport::sse::handle(
                            node,
                            req.headers(),
                            req.uri().query(),
                            Some(peer),
                            abort,
                        )
                        .await
                        .into_response(|b| match b {
                            Ok(stream) => stream.map_err(|e| match e {}).boxed(),
                            Err(json) => Full::new(json).map_err(|e| match e {}).boxed(),
                        })
                    } else {
                        let r = routes.call(req).await?;
                        r.map(|b| b.map_err(Into::into).boxed())
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_WAIT, conn).await;
                }
                // A transport gave up on its client (dropping `conn` closes the socket).
                () = aborted.aborted() => {}
            }
        });
    }
}
