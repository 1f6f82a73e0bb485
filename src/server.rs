//! Wiring: open the store, recover, listen, run the background tasks, and shut down cleanly.
//!
//! The listener is ours rather than warp's: we set `TCP_NODELAY` (small frames must not wait
//! for Nagle), record each peer address, send `/ws` to our own upgrade (so we choose the
//! WebSocket buffers), and everything else to warp's routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use warp::http::{Method, Request, Response};

use crate::auth::Authenticator;
use crate::bus::{Bus, MemoryBus};
use crate::config::Config;
use crate::listener::{boxed, ConnAbort, Inner, PeerAddr, RequestBody};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::{lock_data_dir, EmbeddedStore, StoreError};

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
    #[error("cluster mode: cannot use Redis: {0}")]
    Redis(String),
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
    tokio::pin!(stop);
    // The address comes first: a server that cannot listen must not create or change anything
    // in the data directory. Then the lock: a second server on it must touch nothing.
    let socket = bind(config.listen).map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    let node_id = config.resolve_node_id().to_string();
    let (stores, bus, embedded) = if config.is_cluster() {
        let (stores, bus) = open_cluster(&config, &node_id).await?;
        (stores, bus, None)
    } else {
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
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(BUS_CAPACITY));
        let store =
            EmbeddedStore::open(&config, lock, bus.clone(), metrics.clone(), node_id.clone())?;
        (store.stores(), bus, Some(store))
    };
    let auth =
        Authenticator::new(config.auth_settings()).map_err(|e| ServeError::Auth(e.to_string()))?;

    let listener = socket.listen(4096).map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;

    let node = Arc::new(Node::new(config, auth, stores, bus, metrics, node_id));
    node.set_listen(addr);

    // Listen first, so /health and /ready answer (503) while recovery runs.
    let (stop_accepting_tx, stop_accepting) = tokio::sync::watch::channel(false);
    let acceptor = tokio::spawn(accept_loop(listener, node.clone(), stop_accepting));
    tracing::info!("listening on http://{addr}");

    // Recovery writes (every stored connection becomes Detached): on a disk under its reserve
    // they could be the writes that fill it, so wait for room, not ready, still stoppable.
    let writable = async {
        if let Some(store) = &embedded {
            store.writable().await;
        }
    };
    tokio::select! {
        () = writable => {}
        () = &mut stop => {
            let _ = stop_accepting_tx.send(true);
            let _ = node.stopping.send(true);
            let _ = acceptor.await;
            tracing::info!("stopped before recovery");
            return Ok(());
        }
    }
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
    node.start_cluster();
    node.set_ready(true);
    if node.config.is_cluster() {
        tracing::info!(node = node.id(), "ready, in cluster mode");
    } else {
        tracing::info!(node = node.id(), durability = ?node.config.durability, data_dir = %node.config.data_dir.display(), "ready");
    }

    (&mut stop).await;
    tracing::info!("shutting down: closing sockets with 1001");
    let _ = stop_accepting_tx.send(true);
    let closing = node.shutdown(SHUTDOWN_WAIT).await;
    let _ = acceptor.await;
    tracing::info!(closed = closing, "stopped");
    Ok(())
}

/// The longest any Redis call may take in cluster mode before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Cluster mode: the state of record and the bus in Redis (no data directory, no generated
/// secrets: every node holds the configured ones).
async fn open_cluster(
    config: &Config,
    node_id: &str,
) -> Result<(crate::store::Stores, Arc<dyn Bus>), ServeError> {
    let url = config.redis_url.clone().unwrap_or_default();
    let settings = crate::store::redis::RedisSettings {
        url: url.clone(),
        prefix: config.redis_prefix.clone(),
        node_id: node_id.to_string(),
        limits: crate::store::Limits::from(config),
        event_log_max: config.event_log_max,
        session_ttl_seconds: config.session_ttl_seconds,
        session_max_bytes: config.session_max_bytes,
        max_sessions_per_user: config.max_sessions_per_user,
        command_timeout: REDIS_TIMEOUT,
    };
    let store = crate::store::redis::RedisStore::connect(settings)
        .await
        .map_err(|e| ServeError::Redis(e.to_string()))?;
    let bus = crate::bus::redis::RedisBus::connect(
        &url,
        &config.redis_prefix,
        REDIS_TIMEOUT,
        BUS_CAPACITY,
    )
    .await
    .map_err(|e| ServeError::Redis(e.to_string()))?;
    tracing::info!(redis = %crate::bus::redis::redacted(&url), prefix = %config.redis_prefix, node = node_id, "cluster mode");
    Ok((store.stores(), Arc::new(bus)))
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

/// What every request reaches once the listener has let it through: `/ws` and `/sse` open
/// connections (their transports answer them), everything else is a warp route.
#[derive(Clone)]
struct App<R> {
    node: Arc<Node>,
    routes: R,
}

impl<R> tower_service::Service<Request<RequestBody>> for App<R>
where
    R: tower_service::Service<
            Request<RequestBody>,
            Response = warp::reply::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    R::Future: Send,
{
    type Response = Response<Inner>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Inner>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let node = self.node.clone();
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let path = req.uri().path();
            Ok(if path == "/ws" {
                let Ok(r) = crate::transport::ws::handle(node, req).await;
                boxed(r)
            } else if path == "/sse" && req.method() == Method::GET {
                // An event stream is served here rather than by a warp route: its body is
                // the connection's own pipe.
                let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
                let abort = req
                    .extensions()
                    .get::<ConnAbort>()
                    .cloned()
                    .unwrap_or_default();
                crate::transport::sse::handle(node, req.headers(), req.uri().query(), peer, abort)
                    .await
                    .into_response(|b| match b {
                        Ok(stream) => stream.map_err(|e| match e {}).boxed(),
                        Err(json) => Full::new(json).map_err(|e| match e {}).boxed(),
                    })
            } else {
                let Ok(r) = routes.call(req).await;
                boxed(r)
            })
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let routes = App {
        node: node.clone(),
        routes: warp::service(crate::api::routes(node.clone())),
    };
    // Timeouts, the pending cap and the file reserve: see `crate::listener`.
    let admission = crate::listener::Admission::new(&node.config);
    let mut stopped = stop.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    admission.accept_failed(&e).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let conn = admission.admit(tcp, peer);
        tokio::spawn(conn.serve(routes.clone(), stop.clone()));
    }
}
