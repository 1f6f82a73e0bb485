//! The store traits' conformance suites: one suite per trait, written once against the
//! trait, run against every implementation.
//!
//! A backend is a way to open fresh stores (and, where state survives, to open them again
//! over the same state). Each suite is a list of cases, each an async fn over an opened
//! backend; [`suites!`] makes one `#[tokio::test]` per (backend, case).
//!
//! Backends: `embedded` (sled in a temporary data directory) and `redis` (a real
//! `redis-server` per case, started on a free port and killed when the case ends). A cluster
//! backend can open a second node's stores over the same state ([`Opened::peer`]); the cases
//! of [`nodes`] need it, and [`cluster`] holds the cases only Redis has.

mod cluster;
mod conns;
mod events;
mod nodes;
#[path = "../common/redis.rs"]
mod redis_server;
mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tether::bus::{Bus, BusEvent, MemoryBus, NodeCommand, Received, RedisBus, Subscription, Topic};
use tether::config::Config;
use tether::metrics::Metrics;
use tether::store::redis::{RedisSettings, RedisStore};
use tether::store::{lock_data_dir, EmbeddedStore, Limits, Stores};

pub use redis_server::RedisServer;

/// The node id the stores are opened for.
pub const NODE: &str = "node-a";

/// Limits the cases rely on.
pub const MAX_PER_USER: usize = 3;
pub const MAX_TOTAL: usize = 8;
pub const REPLAY: usize = 4;
pub const REPLAY_BYTES: usize = 1024;
pub const GRACE_SECONDS: u64 = 1;
pub const SESSION_MAX_BYTES: usize = 1024;
pub const SESSIONS_PER_USER: usize = 4;

/// Opens the stores of another node (named by the argument) over the same state.
pub type Peer = Arc<dyn Fn(&str) -> BoxFuture<'static, Stores> + Send + Sync>;

/// Stores opened for one case, with the bus they publish on.
pub struct Opened {
    pub stores: Stores,
    pub bus: Arc<dyn Bus>,
    /// Another node over the same state, for a backend that has several.
    pub peer: Option<Peer>,
    /// The Redis behind the stores, for a Redis backend.
    pub url: Option<String>,
    /// Keeps what the stores live in (a temporary directory) until the case ends.
    _keep: Box<dyn std::any::Any + Send>,
}

impl Opened {
    /// The stores of node `node` over the same state (cluster backends only).
    pub async fn peer(&self, node: &str) -> Stores {
        let peer = self.peer.as_ref().expect("a backend with several nodes");
        peer(node).await
    }
}

/// Subscribes to `topics` and returns once the subscription is live (a probe published on a
/// topic of its own has come back), so that nothing published after this is missed.
pub async fn subscribe(o: &Opened, topics: &[Topic]) -> Subscription {
    subscribe_on(&o.bus, topics).await
}

pub async fn subscribe_on(bus: &Arc<dyn Bus>, topics: &[Topic]) -> Subscription {
    let probe = format!("probe-{}", uuid::Uuid::new_v4());
    let mut all = topics.to_vec();
    all.push(Topic::Node(probe.clone()));
    let mut sub = bus.subscribe(&all);
    let deadline = Instant::now() + Duration::from_secs(10);
    'probing: for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "the bus subscription did not come up in 10 s"
        );
        bus.publish(BusEvent::Command {
            node: probe.clone(),
            command: NodeCommand::Probe { n },
        })
        .await
        .expect("publish a probe");
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        loop {
            match tokio::time::timeout_at(until, sub.next()).await {
                Ok(Some(Received::Event(BusEvent::Command {
                    command: NodeCommand::Probe { .. },
                    ..
                }))) => break 'probing,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the bus closed"),
                Err(_) => break,
            }
        }
    }
    Box::pin(sub.filter(|r| {
        std::future::ready(!matches!(
            r,
            Received::Event(BusEvent::Command {
                command: NodeCommand::Probe { .. },
                ..
            })
        ))
    }))
}

fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        max_per_user: MAX_PER_USER,
        max_total: MAX_TOTAL,
        replay_buffer_messages: REPLAY,
        replay_buffer_bytes: REPLAY_BYTES,
        resume_grace_seconds: GRACE_SECONDS,
        event_log_max: 50,
        session_ttl_seconds: 3600,
        session_max_bytes: SESSION_MAX_BYTES,
        max_sessions_per_user: SESSIONS_PER_USER,
        ..Config::default()
    }
}

/// The embedded store over a new temporary data directory.
pub async fn embedded() -> Opened {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (stores, bus) = open_embedded(&dir);
    Opened {
        stores,
        bus,
        peer: None,
        url: None,
        _keep: Box::new(tmp),
    }
}

fn open_embedded(dir: &std::path::Path) -> (Stores, Arc<dyn Bus>) {
    try_open_embedded(dir).expect("open the store")
}

fn try_open_embedded(dir: &std::path::Path) -> Result<(Stores, Arc<dyn Bus>), String> {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(1024));
    let lock = lock_data_dir(dir).map_err(|e| e.to_string())?;
    let store = EmbeddedStore::open(
        &config(dir),
        lock,
        bus.clone(),
        Arc::new(Metrics::default()),
        NODE.into(),
    )
    .map_err(|e| e.to_string())?;
    Ok((store.stores(), bus))
}

/// Runs `case` on the embedded store, then reopens it over the same data directory (the
/// first one's lock and tasks gone) and runs `after` on that.
pub async fn embedded_reopened<F, G>(case: F, after: G)
where
    F: AsyncFnOnce(&Opened) -> serde_json::Value,
    G: AsyncFnOnce(&Opened, serde_json::Value),
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let carried = {
        let (stores, bus) = open_embedded(&dir);
        let first = Opened {
            stores,
            bus,
            peer: None,
            url: None,
            _keep: Box::new(()),
        };
        let v = case(&first).await;
        first.stores.admin.shutdown().await.expect("shutdown");
        v
    };
    // The first store lets go of its directory once its background tasks have seen it go.
    let mut tries = 0;
    let second = loop {
        match try_open_embedded(&dir) {
            Ok(opened) => break opened,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the first store never let go of its directory: {e}"),
        }
    };
    let second = Opened {
        stores: second.0,
        bus: second.1,
        peer: None,
        url: None,
        _keep: Box::new(tmp),
    };
    after(&second, carried).await;
}

/// The prefix of every Redis case: the default, so that channel names are the documented ones.
pub const PREFIX: &str = "tether";
/// Short, so that a case about an unreachable Redis is quick.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

pub fn redis_settings(url: &str, node: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        prefix: PREFIX.into(),
        node_id: node.into(),
        limits: Limits::from(&config(std::path::Path::new("unused"))),
        event_log_max: 50,
        session_ttl_seconds: 3600,
        session_max_bytes: SESSION_MAX_BYTES,
        max_sessions_per_user: SESSIONS_PER_USER,
        command_timeout: COMMAND_TIMEOUT,
    }
}

pub async fn open_redis(url: &str, node: &str) -> RedisStore {
    RedisStore::connect(redis_settings(url, node))
        .await
        .expect("connect to Redis")
}

pub async fn redis_bus(url: &str) -> Arc<dyn Bus> {
    Arc::new(
        RedisBus::connect(url, PREFIX, COMMAND_TIMEOUT, 1024)
            .await
            .expect("connect the bus"),
    )
}

/// The Redis store of node [`NODE`] over a new `redis-server`, with a bus over it and peers.
pub async fn redis() -> Opened {
    let server = RedisServer::start(false);
    let url = server.url();
    let store = open_redis(&url, NODE).await;
    let bus = redis_bus(&url).await;
    let peer: Peer = Arc::new(move |node: &str| {
        let (url, node) = (url.clone(), node.to_string());
        Box::pin(async move { open_redis(&url, &node).await.stores() })
    });
    Opened {
        stores: store.stores(),
        bus,
        peer: Some(peer),
        url: Some(server.url()),
        _keep: Box::new(server),
    }
}

/// Runs `case` on a Redis store, lets that store go (shut down, dropped), opens a new one
/// for the same node over the same Redis (a node restarted with a fixed id), and runs
/// `after` on it.
pub async fn redis_reopened<F, G>(case: F, after: G)
where
    F: AsyncFnOnce(&Opened) -> serde_json::Value,
    G: AsyncFnOnce(&Opened, serde_json::Value),
{
    let server = RedisServer::start(false);
    let url = server.url();
    let carried = {
        let first = Opened {
            stores: open_redis(&url, NODE).await.stores(),
            bus: redis_bus(&url).await,
            peer: None,
            url: None,
            _keep: Box::new(()),
        };
        let v = case(&first).await;
        first.stores.admin.shutdown().await.expect("shutdown");
        v
    };
    let second = Opened {
        stores: open_redis(&url, NODE).await.stores(),
        bus: redis_bus(&url).await,
        peer: None,
        url: None,
        _keep: Box::new(server),
    };
    after(&second, carried).await;
}

/// One `#[tokio::test]` per case, for a backend.
#[macro_export]
macro_rules! cases {
    ($backend:path; $suite:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let opened = $backend().await;
                $crate::$suite::$case(&opened).await;
            }
        )*
    };
}

mod embedded {
    cases!(crate::embedded; conns:
        admits_activates_and_answers_lookups,
        evicts_the_oldest_past_max_per_user,
        refuses_past_max_total_and_frees_the_slot_on_removal,
        resumes_with_the_token_and_refuses_another_users,
        delivers_each_connection_its_own_seq_and_keeps_it_for_replay,
        an_ack_trims_what_a_resume_replays,
        a_resume_with_an_old_last_seq_says_what_was_lost,
        the_replay_buffer_is_bounded_in_bytes_too,
        the_replay_buffer_keeps_exactly_its_bounds_after_every_message,
        mixed_deliveries_keep_each_connections_seq_and_bounds,
        removes_by_id_by_user_and_by_session,
        lists_every_connection_in_pages,
        migrates_to_a_new_id,
        detached_connections_go_after_the_grace_period,
        updates_metadata_and_ttl,
        replays_what_came_after_a_seq,
        limits_hold_when_admits_race,
    );
    cases!(crate::embedded; sessions:
        creates_reads_and_lists,
        merges_updates_and_publishes_them_in_order,
        deletes_one_and_all_of_a_user,
        expired_sessions_are_gone_and_swept_once,
        holds_the_size_and_count_limits_and_pages_a_users_list,
    );
    cases!(crate::embedded; events:
        logs_filters_and_bounds_the_log,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_detached_after_a_restart() {
        crate::embedded_reopened(crate::conns::before_restart, crate::conns::after_restart).await;
    }
}

mod redis {
    cases!(crate::redis; conns:
        admits_activates_and_answers_lookups,
        evicts_the_oldest_past_max_per_user,
        refuses_past_max_total_and_frees_the_slot_on_removal,
        resumes_with_the_token_and_refuses_another_users,
        delivers_each_connection_its_own_seq_and_keeps_it_for_replay,
        an_ack_trims_what_a_resume_replays,
        a_resume_with_an_old_last_seq_says_what_was_lost,
        the_replay_buffer_is_bounded_in_bytes_too,
        the_replay_buffer_keeps_exactly_its_bounds_after_every_message,
        mixed_deliveries_keep_each_connections_seq_and_bounds,
        removes_by_id_by_user_and_by_session,
        lists_every_connection_in_pages,
        migrates_to_a_new_id,
        detached_connections_go_after_the_grace_period,
        updates_metadata_and_ttl,
        replays_what_came_after_a_seq,
        limits_hold_when_admits_race,
    );
    cases!(crate::redis; sessions:
        creates_reads_and_lists,
        merges_updates_and_publishes_them_in_order,
        deletes_one_and_all_of_a_user,
        expired_sessions_are_gone_and_swept_once,
        holds_the_size_and_count_limits_and_pages_a_users_list,
    );
    cases!(crate::redis; events:
        logs_filters_and_bounds_the_log,
    );
    cases!(crate::redis; nodes:
        leases_list_live_nodes_and_expire_dead_ones,
        a_dead_nodes_connections_are_detached_once,
        a_node_that_leaves_detaches_its_connections_at_once,
        a_resume_on_another_node_gets_what_it_missed,
        deliveries_and_session_changes_reach_every_node_that_holds_a_socket,
        concurrent_session_updates_from_two_nodes_all_land,
        expiry_happens_once_however_many_nodes_sweep,
    );
    cases!(crate::redis; cluster:
        a_client_ahead_of_the_store_resumes_and_no_seq_is_reused,
        events_are_the_section_5_json_on_prefixed_channels,
        a_record_that_does_not_decode_is_an_error_naming_its_key,
        a_slow_subscriber_is_told_what_it_missed,
        a_record_from_before_the_delivery_rows_carries_on,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_detached_after_a_restart() {
        crate::redis_reopened(
            crate::conns::before_restart,
            crate::conns::after_a_node_restart,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_comes_back_after_its_connection_is_lost() {
        crate::cluster::a_subscription_comes_back_after_its_connection_is_lost().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_says_when_redis_is_down_and_when_it_lost_its_data() {
        crate::cluster::the_store_says_when_redis_is_down_and_when_it_lost_its_data().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_survive_a_redis_crash_with_aof() {
        crate::cluster::acknowledged_writes_survive_a_redis_crash_with_aof().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_behind_a_busy_queue_is_not_an_outage() {
        crate::cluster::a_probe_behind_a_busy_queue_is_not_an_outage().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_to_more_connections_than_a_chunk_reaches_each_once() {
        crate::cluster::a_delivery_to_more_connections_than_a_chunk_reaches_each_once().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_does_not_read_every_record_of_the_user() {
        crate::cluster::admission_does_not_read_every_record_of_the_user().await;
    }
}
