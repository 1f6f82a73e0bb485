//! The Redis store: the state of record of cluster mode, shared by every node over one Redis.
//!
//! Every write is one Lua script (`lua/*.lua`, each run behind the shared prelude
//! `lua/common.lua`), so it is atomic across nodes: admission with its limits, a delivery
//! with every target's seq and replay entry and the Deliver commands to the nodes holding the
//! sockets, a session update with its bus event and its `session.updated` frames. A message
//! to all of a user's connections is one entry of the user's log, whatever their number:
//! each one's seq for it is its row's base plus the entry's number, and its replay list takes
//! the entry when the list is next read or written (see `lua/common.lua`). Nothing is
//! acknowledged before Redis replied; every call has a timeout ([`RedisSettings::command_timeout`])
//! and every failure is [`StoreError::Unavailable`].
//!
//! Keys (prefix `P`, `tether` by default; `{u:U}` is user `U`'s hash tag, so everything about
//! one user shares a slot):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:{u:U}:conns` | ZSET | the user's connection ids by connectedAt |
//! | `P:{u:U}:dc` | ZSET | the user's Detached connection ids by connectedAt (eviction's pick) |
//! | `P:{u:U}:c:<id>` | HASH | a connection record (fields in `lua/common.lua`) but its seq |
//! | `P:{u:U}:d` | HASH | the user's delivery rows: field `<id>`, `=<seq − mu>\|<node>\|<replay bytes>\|<rk>\|<mu>` |
//! | `P:{u:U}:r:<rk>` | LIST | its replay buffer, `<seq>\|<kind>\|<rest>`, capped; it takes the user log's entries past `mu` when next read or written |
//! | `P:{u:U}:ul` | LIST | the user's log: messages to all of the user's connections, `\|<kind>\|<rest>`, the newest numbered `uo`, capped |
//! | `P:{u:U}:sc:<sid>` | SET | connection ids linked to session `sid` |
//! | `P:{u:U}:n` | HASH | the user's live and active counts; `uo` and `ub`, its log's newest number and weight |
//! | `P:{u:U}:sessions`, `P:{u:U}:s:<sid>` | SET, HASH | the user's sessions |
//! | `P:cid:<id>`, `P:sid:<sid>` | STRING | locators: the user of a connection, of a session |
//! | `P:fin:<id>` | STRING | a connection's end, `<token>\|<answer>`, for its retries (expires) |
//! | `P:sc:<sid>` | STRING | the user whose connections are linked to session `sid` |
//! | `P:users` | ZSET | users with connections (lexicographic, for paging) |
//! | `P:total` | STRING | attached connections (`max_total`) |
//! | `P:stats` | HASH | counts by state, transport and client version, users, for health |
//! | `P:expiry` | ZSET | `<user>\0<id>` by when the sweeper must look at it |
//! | `P:sessions:expiry` | ZSET | session ids by expiresAt |
//! | `P:events`, `P:events:seq` | STREAM, STRING | the event log and its seq |
//! | `P:nodes`, `P:node:<id>:info`, `P:node:<id>:conns` | ZSET, HASH, SET | leases, figures, held connections |
//! | `P:cleanup:<id>` | STRING | the claim on a dead node's clean-up |
//! | `P:epoch` | STRING | this Redis's data generation |
//!
//! The scripts reach keys they compute (an evicted connection's, a node's set), so the store
//! needs one Redis (a primary, with replicas or Sentinel as the operator likes), not Redis
//! Cluster.
//!
//! What survives a crash of Redis itself is what its persistence keeps: with `appendonly yes`
//! and `appendfsync always`, every acknowledged write (the `sync` guarantee); with
//! `appendfsync everysec`, all but about the last second (like `relaxed`); without
//! persistence, nothing, and the probe reports it (the epoch is gone). A client that comes
//! back with a `lastSeq` the store never kept is resumed with its seq carried on, so no seq
//! is handed out twice.
//!
//! `P:epoch` is a random id the first store writes. A background probe reads it every
//! [`PROBE_EVERY`] (one `GET`, one round trip): when Redis does not answer, [`StoreAdmin::healthy`] says so
//! (within a command timeout of its going: a probe that timed out while another call of
//! this store got its answer only waited behind a busy queue, and does not count);
//! when the epoch changed or vanished, Redis lost its data (a restart without persistence, a
//! flush), and the store stays unhealthy and refuses admissions until the node calls
//! [`RedisStore::adopt_epoch`].

mod conns;
mod events;
mod nodes;
mod record;
mod scripts;
mod sessions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;

use crate::store::{Limits, StoreAdmin, StoreError, Stores};
use crate::sync::lock;
use crate::time::now_ms;

pub use scripts::Scripts;

/// How often the store checks that Redis answers and still holds its data.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What a [`RedisStore`] needs, independent of the configuration file.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Every key and channel starts with this and a colon.
    pub prefix: String,
    /// This node: the holder of the sockets it admits.
    pub node_id: String,
    pub limits: Limits,
    pub event_log_max: usize,
    pub session_ttl_seconds: u64,
    /// Largest session data, as JSON, after a merge (`session_max_bytes`).
    pub session_max_bytes: usize,
    /// Live sessions one user may have (`max_sessions_per_user`).
    pub max_sessions_per_user: usize,
    /// The longest any Redis call may take before it counts as failed.
    pub command_timeout: Duration,
}

/// The Redis store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    con: ConnectionManager,
    settings: RedisSettings,
    scripts: Scripts,
    /// The epoch this store writes in.
    epoch: RwLock<String>,
    health: Mutex<Health>,
    events: events::Queue,
    /// Redis calls that failed or timed out, since start.
    errors: AtomicU64,
    /// When a Redis call last got its answer, in ms after `started`.
    answered: AtomicU64,
    started: std::time::Instant,
    /// Connections' ends that Redis did not take in time, retried by the sweep.
    ends: conns::Ends,
}

#[derive(Debug, Clone, Default)]
struct Health {
    /// Why Redis cannot be used now, if it cannot.
    down: Option<String>,
    /// Set when the probe found another epoch (or none): Redis lost its data.
    epoch_lost: Option<String>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {what} failed: {e}"))
}

impl RedisStore {
    /// Connects (within `command_timeout`), reads or creates the epoch, and starts the probe
    /// and the event writer on the current runtime.
    pub async fn connect(settings: RedisSettings) -> Result<RedisStore, StoreError> {
        let timeout = settings.command_timeout;
        let con = connection(&settings.url, timeout).await?;
        let scripts = Scripts::new();
        let epoch_key = format!("{}:epoch", settings.prefix);
        let fresh = crate::auth::new_token();
        let mut c = con.clone();
        let epoch: String = timed(timeout, "reading the epoch", async {
            redis::cmd("SET")
                .arg(&epoch_key)
                .arg(&fresh)
                .arg("NX")
                .exec_async(&mut c)
                .await?;
            redis::cmd("GET").arg(&epoch_key).query_async(&mut c).await
        })
        .await?;
        let events = events::Queue::start(con.clone(), &settings, scripts.events.clone());
        let inner = Arc::new(Inner {
            con,
            settings,
            scripts,
            epoch: RwLock::new(epoch),
            health: Mutex::new(Health::default()),
            events,
            errors: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            started: std::time::Instant::now(),
            ends: conns::Ends::default(),
        });
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }

    /// The store's five faces, for the node.
    pub fn stores(&self) -> Stores {
        Stores {
            conns: Arc::new(self.clone()),
            sessions: Arc::new(self.clone()),
            events: Arc::new(self.clone()),
            nodes: Arc::new(self.clone()),
            admin: Arc::new(self.clone()),
        }
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// Whether the probe found that Redis lost its data (its epoch changed or vanished). The
    /// store stays unhealthy, and refuses admissions, until [`RedisStore::adopt_epoch`].
    pub fn epoch_changed(&self) -> bool {
        lock(&self.inner.health).epoch_lost.is_some()
    }

    /// The node has reacted to lost data (its sockets' records are gone): the store takes the
    /// epoch Redis holds now (making one if there is none) and is healthy again.
    pub async fn adopt_epoch(&self) -> Result<String, StoreError> {
        let inner = &self.inner;
        let key = inner.key("epoch");
        let fresh = crate::auth::new_token();
        let mut c = inner.con.clone();
        let epoch: String = inner
            .timed("adopting the epoch", async {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .exec_async(&mut c)
                    .await?;
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        *inner.epoch.write().unwrap_or_else(|p| p.into_inner()) = epoch.clone();
        lock(&inner.health).epoch_lost = None;
        tracing::info!(epoch = %epoch, "the Redis store took the current epoch");
        Ok(epoch)
    }
}

pub use crate::bus::redis::redacted;

async fn connection(url: &str, timeout: Duration) -> Result<ConnectionManager, StoreError> {
    let open_err = |detail: String| StoreError::Open {
        dir: redacted(url),
        detail,
    };
    let client = redis::Client::open(url).map_err(|e| open_err(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    timed(
        timeout * 2,
        "connecting",
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|e| open_err(e.to_string()))
}

/// A script's own arguments, as strings.
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$($a.to_string()),*] };
}
pub(crate) use args;

/// Runs one Redis call within `timeout`.
async fn timed<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis: {what} got no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

impl Inner {
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.prefix)
    }

    fn epoch(&self) -> String {
        self.epoch.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = timed(self.settings.command_timeout, what, fut).await;
        match &r {
            Ok(_) => self
                .answered
                .fetch_max(self.since_start(), Ordering::Relaxed),
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    fn since_start(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `script` with the prelude's arguments and then `args`; the reply is the script's
    /// JSON text.
    async fn run(
        &self,
        what: &str,
        script: &redis::Script,
        args: &[String],
    ) -> Result<Value, StoreError> {
        let text: String = self.run_raw(what, script, args).await?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadRecord {
            key: format!("reply of {what}"),
            detail: e.to_string(),
        })
    }

    async fn run_raw<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: &redis::Script,
        args: &[String],
    ) -> Result<T, StoreError> {
        let l = self.limits();
        let mut inv = script.prepare_invoke();
        inv.arg(&self.settings.prefix)
            .arg(now_ms())
            .arg(l.resume_grace_seconds.saturating_mul(1000))
            .arg(format!(
                "{}:{}",
                l.replay_buffer_messages, l.replay_buffer_bytes
            ))
            .arg(&self.settings.node_id);
        for a in args {
            inv.arg(a.as_str());
        }
        let mut con = self.con.clone();
        self.timed(what, inv.invoke_async(&mut con)).await
    }

    /// One plain command.
    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut con = self.con.clone();
        self.timed(what, cmd.query_async(&mut con)).await
    }
}

/// Every [`PROBE_EVERY`]: a read of the epoch, within the command timeout. One command, so
/// that behind a busy queue it waits once, as long as any other call does (a `PING` before
/// it made it wait twice, and time out behind a queue every other call got through).
async fn probe(store: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = store.upgrade() else { return };
        let key = inner.key("epoch");
        let mut c = inner.con.clone();
        let asked = inner.since_start();
        let read = inner
            .timed(
                "the health probe",
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut c),
            )
            .await;
        let mine = inner.epoch();
        let mut h = lock(&inner.health);
        match read {
            // Another call got its answer while the probe waited: Redis answers, and the probe
            // only queued behind a burst of work (a resume storm, say). Redis that stopped
            // answering answers no call, so this hides no outage.
            Err(e) if inner.answered.load(Ordering::Relaxed) > asked && h.down.is_none() => {
                tracing::debug!(error = %e, "the Redis health probe was slow, but Redis answers");
            }
            Err(e) => {
                if h.down.is_none() {
                    tracing::error!(error = %e, "Redis does not answer");
                }
                h.down = Some(e.to_string());
            }
            Ok(found) => {
                if h.down.take().is_some() {
                    tracing::info!("Redis answers again");
                }
                if found.as_deref() != Some(mine.as_str()) && h.epoch_lost.is_none() {
                    let what = match &found {
                        Some(e) => format!("its epoch is {e}, not {mine}"),
                        None => format!("its epoch {mine} is gone"),
                    };
                    tracing::error!(%what, "Redis lost its data (restarted without persistence, or flushed): the connections and sessions it held are gone");
                    h.epoch_lost = Some(format!(
                        "Redis lost its data ({what}); the node must react before it takes connections again"
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl StoreAdmin for RedisStore {
    async fn snapshot(&self, _secrets: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Unavailable(
            "in cluster mode the state is in Redis, and backups are Redis's own: copy its RDB \
             snapshot (BGSAVE, then dump.rdb) or its AOF files"
                .into(),
        ))
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        // One more try for the ends still waiting; what is left is detached with the node.
        self.inner.retry_ends().await;
        self.inner.events.flush().await
    }

    fn figures(&self) -> Vec<(&'static str, &'static str, f64)> {
        let inner = &self.inner;
        vec![
            (
                "tether_store_redis_errors",
                "Redis calls that failed or timed out since start",
                inner.errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "tether_store_events_dropped",
                "Connection events not logged (queue full or Redis unavailable) since start",
                inner.events.dropped() as f64,
            ),
            (
                "tether_store_redis_up",
                "1 while Redis answers and holds this store's data",
                if self.healthy().is_ok() { 1.0 } else { 0.0 },
            ),
        ]
    }

    fn healthy(&self) -> Result<(), (crate::protocol::ErrorCode, String)> {
        let h = lock(&self.inner.health);
        if let Some(why) = &h.down {
            return Err((crate::protocol::ErrorCode::Unavailable, why.clone()));
        }
        if let Some(why) = &h.epoch_lost {
            return Err((crate::protocol::ErrorCode::Unavailable, why.clone()));
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn data_lost(&self) -> bool {
        self.epoch_changed()
    }

    async fn adopt_data_loss(&self) -> Result<(), StoreError> {
        self.adopt_epoch().await.map(|_| ())
    }
}
