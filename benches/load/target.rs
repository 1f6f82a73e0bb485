//! The system under test: one tether (spawned, or attached with `--url`), or with
//! `--cluster N` one Redis and N tether nodes over it, holding the same secrets.
//!
//! Scenarios reach it through two things: the addresses connections go to (connection i
//! to node i mod N) and an [`Api`] that sends each HTTP call to the next live node in
//! turn. Figures read from `/proc` are summed over the nodes; Redis's are apart.

use crate::cli::Global;
use crate::redis_server::RedisServer;
use crate::server::{http_client, Server, ServerOpts};
use crate::util::R;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Heartbeat and lease of the nodes in node-kill unless given: short, so that a dead
/// node's lease ends soon after the kill, with five heartbeats of slack for a busy
/// machine.
pub const KILL_HEARTBEAT_MS: u64 = 200;
pub const KILL_LEASE_MS: u64 = 1000;

pub struct Target {
    pub nodes: Vec<Server>,
    pub redis: Option<RedisServer>,
    pub api: Api,
    pub jwt_secret: String,
    /// The nodes' `redis_prefix` (cluster mode).
    pub redis_prefix: String,
}

/// HTTP calls to the target, round-robin over the nodes not marked down. A call that
/// never reached its node (connection refused) goes to the next one: it cannot have been
/// done twice.
#[derive(Clone)]
pub struct Api {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    http: reqwest::Client,
    bases: Vec<String>,
    key: String,
    next: AtomicUsize,
    down: Vec<AtomicBool>,
    in_flight: Vec<AtomicUsize>,
}

/// Decrements a node's in-flight count when its call ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Api {
    fn new(bases: Vec<String>, key: String) -> R<Api> {
        let n = bases.len();
        Ok(Api {
            inner: Arc::new(ApiInner {
                http: http_client()?,
                bases,
                key,
                next: AtomicUsize::new(0),
                down: (0..n).map(|_| AtomicBool::new(false)).collect(),
                in_flight: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            }),
        })
    }

    fn live(&self, i: usize) -> bool {
        !self.inner.down[i].load(SeqCst)
    }

    /// The next live node in turn.
    fn pick(&self) -> R<usize> {
        let n = self.inner.bases.len();
        for _ in 0..n {
            let i = self.inner.next.fetch_add(1, SeqCst) % n;
            if self.live(i) {
                return Ok(i);
            }
        }
        Err("no live node to send the request to".into())
    }

    /// Sends JSON to the next live node; returns (status, body as JSON or Null).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> R<(u16, Value)> {
        let mut last = String::new();
        for _ in 0..self.inner.bases.len() {
            let i = self.pick()?;
            match self.try_send(i, method.clone(), path, Some(body)).await {
                Ok(r) => return Ok(r),
                Err((true, e)) => last = e,
                Err((false, e)) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sends JSON to node `i` (counted from 0), whether it is marked down or not.
    pub async fn send_json_to(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> R<(u16, Value)> {
        self.try_send(i, method, path, Some(body))
            .await
            .map_err(|(_, e)| e)
    }

    /// GET from the next live node; the body as JSON, an error unless 2xx.
    pub async fn get(&self, path: &str) -> R<Value> {
        let mut last = String::new();
        for _ in 0..self.inner.bases.len() {
            let i = self.pick()?;
            match self.try_send(i, reqwest::Method::GET, path, None).await {
                Ok((st, v)) if (200..300).contains(&st) => return Ok(v),
                Ok((st, v)) => {
                    let text = v.to_string();
                    return Err(format!(
                        "GET {path}: HTTP {st}: {}",
                        text.chars().take(300).collect::<String>()
                    ));
                }
                Err((true, e)) => last = e,
                Err((false, e)) => return Err(e),
            }
        }
        Err(last)
    }

    /// Err((not sent, message)).
    async fn try_send(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), (bool, String)> {
        let inner = &self.inner;
        inner.in_flight[i].fetch_add(1, SeqCst);
        let _done = InFlight(&inner.in_flight[i]);
        let url = format!("{}{path}", inner.bases[i]);
        let mut rb = inner
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("Bearer {}", inner.key));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let failed = |e: reqwest::Error| (e.is_connect(), format!("{method} {path}: {e}"));
        let r = rb.send().await.map_err(failed)?;
        let st = r.status().as_u16();
        let bytes = r.bytes().await.map_err(failed)?;
        Ok((st, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Sends no new call to node `i`, and waits (bounded) until its calls in flight have
    /// ended. Returns whether they did.
    pub async fn drain(&self, i: usize, within: Duration) -> bool {
        self.inner.down[i].store(true, SeqCst);
        let t0 = Instant::now();
        while self.inner.in_flight[i].load(SeqCst) > 0 {
            if t0.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

impl Target {
    /// Starts (or attaches to) what `g` describes. `args` are flags for every node
    /// (`server_opts` made them); `cluster_extra` more flags for cluster nodes only.
    pub async fn start(g: &Global, opts: ServerOpts, cluster_extra: &[String]) -> R<Target> {
        match g.cluster {
            None | Some(0) => Self::single(opts).await,
            Some(n) => Self::cluster(g, opts, n, cluster_extra).await,
        }
    }

    async fn single(opts: ServerOpts) -> R<Target> {
        let s = Server::start(opts).await?;
        let api = Api::new(vec![s.http_base.clone()], s.admin_key.clone())?;
        Ok(Target {
            jwt_secret: s.jwt_secret.clone(),
            nodes: vec![s],
            redis: None,
            api,
            redis_prefix: String::new(),
        })
    }

    async fn cluster(g: &Global, opts: ServerOpts, n: usize, extra: &[String]) -> R<Target> {
        if opts.url.is_some() {
            return Err("--cluster starts its own Redis and nodes: drop --url".into());
        }
        let redis = RedisServer::start(
            &g.redis_server,
            &g.redis_aof,
            &g.redis_args,
            opts.ready_timeout,
            g.keep_data,
        )
        .await?;
        let jwt_secret = format!("{}{}", random_hex(), random_hex());
        let admin_key = format!("tk_{}", random_hex());
        let prefix = "tether".to_string();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut o = opts.clone();
            o.label = format!("node {i}");
            o.secrets = Some((jwt_secret.clone(), admin_key.clone()));
            o.data_dir = opts.data_dir.as_ref().map(|d| d.join(format!("node{i}")));
            o.args.extend(
                [
                    "--redis-url",
                    &redis.url,
                    "--redis-prefix",
                    &prefix,
                    "--node-id",
                    &format!("node{i}"),
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            o.args.extend(extra.iter().cloned());
            nodes.push(Server::start(o).await?);
        }
        let api = Api::new(
            nodes.iter().map(|s| s.http_base.clone()).collect(),
            admin_key,
        )?;
        Ok(Target {
            nodes,
            redis: Some(redis),
            api,
            jwt_secret,
            redis_prefix: prefix,
        })
    }

    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// Every node's address, in node order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|s| s.addr).collect()
    }

    /// One line naming what runs.
    pub fn summary(&self) -> String {
        let node = |s: &Server| {
            format!(
                "{} (pid {})",
                s.http_base,
                s.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            )
        };
        match &self.redis {
            None => format!(
                "server: {} {}",
                if self.nodes[0].spawned {
                    "spawned"
                } else {
                    "attached"
                },
                node(&self.nodes[0])
            ),
            Some(r) => format!(
                "cluster: redis-server {} (pid {}, {}); {} nodes: {}",
                r.url,
                r.pid,
                r.persistence,
                self.nodes.len(),
                self.nodes.iter().map(node).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// RSS summed over the running nodes (None if one is unknown).
    pub fn rss(&self) -> Option<u64> {
        self.sum_running(Server::rss)
    }

    /// `f` summed over the nodes that run (None when none does, or `f` fails for one).
    fn sum_running(&self, f: fn(&Server) -> Option<u64>) -> Option<u64> {
        let running: Vec<&Server> = self.nodes.iter().filter(|s| s.pid.is_some()).collect();
        if running.is_empty() {
            return None;
        }
        running.into_iter().map(f).sum()
    }

    /// RSS from /proc, else (one attached server) its own `memoryUsage`.
    pub async fn rss_any(&self) -> Option<u64> {
        if self.nodes.len() == 1 {
            return self.nodes[0].rss_any().await;
        }
        self.rss()
    }

    /// CPU ticks summed over the running nodes (None if one is unknown).
    pub fn cpu_ticks(&self) -> Option<u64> {
        self.sum_running(Server::cpu_ticks)
    }

    pub fn redis_cpu_ticks(&self) -> Option<u64> {
        self.redis.as_ref().and_then(|r| r.cpu_ticks())
    }

    pub fn redis_rss(&self) -> Option<u64> {
        self.redis.as_ref().and_then(|r| r.rss())
    }

    /// `activeConnections` of `/v1/health` (cluster-wide in cluster mode).
    pub async fn active_connections(&self) -> R<u64> {
        let h = self.api.get("/v1/health").await?;
        h["activeConnections"]
            .as_u64()
            .ok_or_else(|| format!("/v1/health has no activeConnections: {h}"))
    }

    /// Stops every spawned node (SIGTERM, bounded), then Redis.
    pub async fn stop_quietly(&mut self) {
        for s in self.nodes.iter_mut() {
            s.stop_quietly().await;
        }
        if let Some(r) = self.redis.as_mut() {
            r.stop().await;
        }
    }

    pub fn describe(&self) -> Value {
        match &self.redis {
            None => self.nodes[0].describe(),
            Some(r) => json!({
                "mode": "cluster",
                "nodes": self.nodes.iter().map(|s| s.describe()).collect::<Vec<_>>(),
                "redis": r.describe(),
            }),
        }
    }
}
