//! The store traits' conformance suites: one suite per trait, written once against the
//! trait, run against every implementation.
//!
//! A backend is a way to open fresh stores (and, where state survives, to open them again
//! over the same state). Each suite is a list of cases, each an async fn over an opened
//! backend; [`suites!`] makes one `#[tokio::test]` per (backend, case).

mod conns;
mod events;
mod sessions;

use std::sync::Arc;

use tether::bus::{Bus, MemoryBus};
use tether::config::Config;
use tether::metrics::Metrics;
use tether::store::{lock_data_dir, EmbeddedStore, Stores};

/// The node id the stores are opened for.
pub const NODE: &str = "node-a";

/// Limits the cases rely on.
pub const MAX_PER_USER: usize = 3;
pub const MAX_TOTAL: usize = 8;
pub const REPLAY: usize = 4;
pub const REPLAY_BYTES: usize = 1024;
pub const GRACE_SECONDS: u64 = 1;
pub const SESSION_MAX_BYTES: usize = 64;
pub const SESSIONS_PER_USER: usize = 4;

/// Stores opened for one case, with the bus they publish on.
pub struct Opened {
    pub stores: Stores,
    pub bus: Arc<dyn Bus>,
    /// Keeps what the stores live in (a temporary directory) until the case ends.
    _keep: Box<dyn std::any::Any + Send>,
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
        _keep: Box::new(tmp),
    }
}

fn open_embedded(dir: &std::path::Path) -> (Stores, Arc<dyn Bus>) {
    try_open_embedded(dir).expect("open the store")
}

fn try_open_embedded(
    dir: &std::path::Path,
) -> Result<(Stores, Arc<dyn Bus>), tether::store::StoreError> {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(1024));
    let lock = lock_data_dir(dir)?;
    let store = EmbeddedStore::open(
        &config(dir),
        lock,
        bus.clone(),
        Arc::new(Metrics::default()),
        NODE.into(),
    )?;
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
            _keep: Box::new(()),
        };
        let v = case(&first).await;
        first.stores.admin.shutdown().await.expect("shutdown");
        v
    };
    // The directory lock is released when the last reference to the first store goes;
    // sled's own lock on its files goes with the last of the first store's tasks, which may
    // still be winding down (the session publisher ends when it sees its channel closed).
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
        _keep: Box::new(tmp),
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
        removes_by_id_by_user_and_by_session,
        migrates_to_a_new_id,
        detached_connections_go_after_the_grace_period,
        updates_metadata_and_ttl,
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
