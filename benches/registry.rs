//! Micro-benchmarks of the connection store and the codec with 100,000 connections already
//! present.
//!
//!     cargo bench --bench registry
//!
//! The store is the embedded one as the server wires it: the real sled store (in a temporary
//! directory), a real `EventLog` over a `MemoryBus`, `Metrics`, and `Limits` roomy enough that
//! nothing is evicted or refused, in `relaxed` durability so that no flush is timed. It is
//! preloaded once with 100,000 connections spread over 10,000 users (10 each, every user with
//! one session), and every benchmark leaves it at that size: what one iteration adds, it or
//! its untimed other half takes away again. Each call runs on a current-thread runtime
//! (`block_on`), as the store's methods are async.
//!
//! `admit` writes through to sled (its in-memory log, no flush) and logs an event, so it is
//! the real write path; activation is not part of it. Unregistering is `remove`, the same
//! removal `finish` does with `Fate::Remove`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Map};
use uuid::Uuid;

use tether::auth::AuthUser;
use tether::bus::{Bus, MemoryBus};
use tether::codec;
use tether::config::Durability;
use tether::durability::Flusher;
use tether::metrics::Metrics;
use tether::model::{
    ConnRecord, ConnState, ConnType, EventType, Metadata, RateLimit, SessionRecord, StoredUser,
};
use tether::protocol::Disconnect;
use tether::store::embedded::conns::Conns;
use tether::store::embedded::events::EventLog;
use tether::store::{ConnStore, Limits, NewConn, Trees};
use tether::time::now_ms;

const CONNECTIONS: usize = 100_000;
const USERS: usize = 10_000;
/// `Config`'s defaults.
const CACHE_BYTES: u64 = 64 << 20;
const EVENT_LOG_MAX: usize = 100_000;
const BUS_CAPACITY: usize = 65_536;
/// Register and remove benchmarks work in chunks of this many, so the registry never holds
/// more than 100,000 + CHUNK connections however many iterations criterion asks for.
const CHUNK: u64 = 1_000;

/// A fixed-seed xorshift: which connection or user an iteration picks, reproducibly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn user_id(n: usize) -> String {
    format!("user-{n:05}")
}

fn session_id(n: usize) -> String {
    // The length of `sessions::new_session_id` (24 random bytes, base64): 32 characters.
    format!("sess-{n:027}")
}

fn auth_user(n: usize) -> AuthUser {
    let mut claims = Map::new();
    claims.insert("tenant".into(), json!("acme-corp"));
    claims.insert("plan".into(), json!("pro"));
    AuthUser {
        id: user_id(n),
        permissions: vec!["read".into(), "write".into(), "presence".into()],
        roles: vec!["member".into()],
        name: Some(format!("User Number {n}")),
        claims,
    }
}

fn metadata(user: &AuthUser, n: usize) -> Metadata {
    let now = now_ms();
    Metadata {
        ip: format!("203.0.{}.{}", (n / 256) % 256, n % 256),
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
            .into(),
        connected_at: now,
        last_activity: now,
        client_version: Some("2.14.1".into()),
        connection_type: if n.is_multiple_of(4) {
            ConnType::Sse
        } else {
            ConnType::WebSocket
        },
        permissions: user.permissions.clone(),
        rate_limit: RateLimit {
            messages_per_minute: 120,
            last_reset: now,
            count: 0,
        },
    }
}

fn new_conn(n: usize) -> NewConn {
    let u = n % USERS;
    let user = auth_user(u);
    let meta = metadata(&user, n);
    NewConn {
        id: Uuid::new_v4(),
        user,
        session_id: Some(session_id(u)),
        meta,
        resume: None,
        trusted_resume: false,
    }
}

/// The connection store as the server wires it, over a fresh store in `dir`.
fn store(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Conns {
    let _guard = rt.enter();
    let trees = Trees::open(dir, CACHE_BYTES).expect("open the store");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(BUS_CAPACITY));
    let metrics = Arc::new(Metrics::default());
    let events = EventLog::open(trees.events.clone(), EVENT_LOG_MAX, bus);
    let flusher = Flusher::start(
        trees.db.clone(),
        Durability::Relaxed,
        Duration::from_millis(500),
        Duration::from_secs(5),
        tether::space::Space::start(dir, Some(0)),
    );
    // As the store wires it: the events logged go to sled before each flush.
    events.drain_before_flushes(&flusher);
    let limits = Limits {
        max_per_user: 1_000,
        max_total: 10 * CONNECTIONS,
        ttl_seconds: 3600,
        resume_grace_seconds: 120,
        replay_buffer_messages: 256,
        replay_buffer_bytes: 1 << 20,
        messages_per_minute: 120,
    };
    Conns::new(trees, flusher, events, metrics, limits, "bench".into())
}

/// The store and the runtime its calls run on.
struct Reg {
    rt: tokio::runtime::Runtime,
    conns: Conns,
}

impl Reg {
    fn register(&self, nc: NewConn) -> Uuid {
        self.rt
            .block_on(self.conns.admit(nc, "bench"))
            .expect("register")
            .id
    }

    fn remove(&self, id: &Uuid) {
        let gone = self
            .rt
            .block_on(
                self.conns
                    .remove(id, &Disconnect::normal(), EventType::Disconnected),
            )
            .expect("remove");
        assert!(gone.is_some(), "{id} was registered");
    }
}

fn bench_registry(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conns = store(&rt, dir.path());
    let reg = Reg { rt, conns };
    let started = Instant::now();
    let mut ids: Vec<Uuid> = (0..CONNECTIONS)
        .map(|n| reg.register(new_conn(n)))
        .collect();
    eprintln!(
        "preloaded {CONNECTIONS} connections over {USERS} users in {:.1?}",
        started.elapsed()
    );

    let mut g = c.benchmark_group("registry@100k");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // `lookup`: one connection's ConnectionInfo JSON (locator, shard lock, JSON building).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    g.bench_function("info", |b| {
        b.iter(|| black_box(reg.rt.block_on(reg.conns.info(&ids[rng.below(ids.len())]))))
    });

    // `getUserConnections`: the ConnectionInfo of each of a user's 10 connections.
    let users: Vec<String> = (0..USERS).map(user_id).collect();
    g.bench_function("user_connections", |b| {
        b.iter(|| {
            let list = reg
                .rt
                .block_on(reg.conns.user_connections(&users[rng.below(USERS)]));
            debug_assert_eq!(list.len(), 10);
            black_box(list)
        })
    });

    // Operator migrate of a random connection to a fresh id: memory move, store rewrite of
    // the record and its two index keys, replay-prefix scan, one event. The fresh id is
    // made outside the timing; the count stays at 100,000.
    let count = ids.len();
    g.bench_function("migrate", |b| {
        b.iter_batched(
            || (rng.below(count), Uuid::new_v4()),
            |(k, to)| {
                reg.rt
                    .block_on(reg.conns.migrate(&ids[k], to))
                    .expect("store")
                    .expect("migrate");
                ids[k] = to;
            },
            BatchSize::SmallInput,
        )
    });

    // `admit` of a new connection for an existing user (its 11th): token, record, three
    // sled inserts, one event. Timed in chunks; each chunk is removed again, untimed.
    let mut next = CONNECTIONS;
    g.bench_function("register", |b| {
        b.iter_custom(|iters| {
            in_chunks(iters, |n| {
                let batch: Vec<NewConn> = (next..next + n).map(new_conn).collect();
                next += n;
                let t = Instant::now();
                let made: Vec<Uuid> = batch.into_iter().map(|nc| reg.register(nc)).collect();
                let timed = t.elapsed();
                for id in &made {
                    reg.remove(id);
                }
                timed
            })
        })
    });

    // Unregister (`force_disconnect`, what `finish` does with `Fate::Remove`): memory, three
    // sled removes, replay-prefix scan, one event. Timed in chunks of connections registered
    // just before, untimed.
    g.bench_function("unregister", |b| {
        b.iter_custom(|iters| {
            in_chunks(iters, |n| {
                let made: Vec<Uuid> = (next..next + n)
                    .map(|k| reg.register(new_conn(k)))
                    .collect();
                next += n;
                let t = Instant::now();
                for id in &made {
                    reg.remove(id);
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    let total: usize = reg
        .rt
        .block_on(reg.conns.counts())
        .0
        .iter()
        .map(|(_, n)| *n)
        .sum::<u64>() as usize;
    assert_eq!(
        total, CONNECTIONS,
        "every benchmark left the registry as it found it"
    );
}

/// Runs `iters` operations in chunks of at most `CHUNK`: `chunk(n)` does `n` of them and
/// returns the time of its measured part.
fn in_chunks(iters: u64, mut chunk: impl FnMut(usize) -> Duration) -> Duration {
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK) as usize;
        left -= n as u64;
        timed += chunk(n);
    }
    timed
}

/// A connection record as `register` makes it, for the user of connection `n`.
fn conn_record(n: usize) -> ConnRecord {
    let nc = new_conn(n);
    let now = now_ms();
    ConnRecord {
        id: nc.id,
        user: StoredUser::from(&nc.user),
        session_id: nc.session_id,
        state: ConnState::Active,
        connected_at: now,
        expires_at: now + 3_600_000,
        detached_at: None,
        meta: nc.meta,
        resume_hash: [0xa5; 32],
        seq: 1_234,
        acked: 1_230,
        replay_key: nc.id,
    }
}

/// A session as `Sessions::create` stores it, with some data and a device description.
fn session_record(n: usize) -> SessionRecord {
    let now = now_ms();
    SessionRecord {
        id: session_id(n),
        user_id: user_id(n),
        created_at: now,
        expires_at: now + 86_400_000,
        last_seen: now,
        data_json: json!({
            "theme": "dark",
            "locale": "en-GB",
            "cart": {"items": [{"sku": "A-1001", "qty": 2}, {"sku": "B-2002", "qty": 1}]},
            "lastPage": "/orders/48213",
        })
        .to_string(),
        permissions: vec!["read".into(), "write".into()],
        device_json: json!({
            "os": "macOS 14.4", "browser": "Chrome 124", "type": "desktop",
        })
        .to_string(),
    }
}

/// The codec alone: pure CPU, so the 100,000 stored records do not change these figures.
fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let conn = conn_record(7);
    let conn_bytes = codec::encode(&conn).expect("encode");
    let session = session_record(7);
    let session_bytes = codec::encode(&session).expect("encode");
    eprintln!(
        "encoded sizes: ConnRecord {} bytes, SessionRecord {} bytes",
        conn_bytes.len(),
        session_bytes.len()
    );

    g.bench_function("encode ConnRecord", |b| {
        b.iter(|| codec::encode(black_box(&conn)).expect("encode"))
    });
    g.bench_function("decode ConnRecord", |b| {
        b.iter(|| codec::decode::<ConnRecord>(black_box(&conn_bytes)).expect("decode"))
    });
    g.bench_function("encode SessionRecord", |b| {
        b.iter(|| codec::encode(black_box(&session)).expect("encode"))
    });
    g.bench_function("decode SessionRecord", |b| {
        b.iter(|| codec::decode::<SessionRecord>(black_box(&session_bytes)).expect("decode"))
    });
    g.finish();
}

criterion_group!(benches, bench_registry, bench_codec);
criterion_main!(benches);
