//! Cases only a shared store has: a Redis that loses writes, goes away, or comes back, the
//! bus as an app backend sees it, and data in Redis that does not decode.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use tether::bus::{BusEvent, Channel, Received, SessionEvent, Topic};
use tether::model::{EventType, Source};
use tether::protocol::{Fate, FrameTemplate};
use tether::store::redis::RedisStore;
use tether::store::{AdmitError, NewSession, SessionPatch, StoreAdmin, StoreError, Target};
use tether::time::parse_rfc3339;

use crate::conns::{admit, connect, new_conn, resume, send, seqs_of, Sockets};
use crate::{open_redis, redis_bus, subscribe_on, Opened, RedisServer, NODE};

async fn raw(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a raw Redis connection")
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn new_session(user: &str) -> NewSession {
    NewSession {
        user_id: user.into(),
        ttl_seconds: None,
        data: json!({"a": 1}),
        permissions: vec!["chat".into()],
        device: json!({"os": "test"}),
    }
}

/// The store lost writes (a failover to a replica that was behind, say) and the client has
/// seqs the store never kept: the resume goes on from the client's seq and says so.
pub async fn a_client_ahead_of_the_store_resumes_and_no_seq_is_reused(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "tia", None).await;
    let sockets = Sockets::new(o).await;
    for n in 1..=2 {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    c.finish(&a.id, Fate::Detach, None, None).await;
    let r = resume(c, &a, "tia", Some(5)).await;
    assert!(r.resumed);
    let why = r.resume_error.expect("says the store lost messages");
    assert!(why.contains("lost"), "{why}");
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert!(act.replay.is_empty(), "nothing it has not seen");
    assert_eq!(act.record.seq, 5, "the welcome carries the client's seq");
    let d = send(c, Target::Connection(&r.id), 9, &sockets).await;
    assert_eq!(d.seq, 6, "the next seq is new to the client");
}

/// What `redis-cli SUBSCRIBE tether:session:updates` shows: one message per change, exactly
/// the event's JSON of SPEC §5.
pub async fn events_are_the_section_5_json_on_prefixed_channels(o: &Opened) {
    let url = o.url.as_deref().expect("a Redis backend");
    let mut ps = ::redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    ps.subscribe(&[
        "tether:session:created",
        "tether:session:updates",
        "tether:session:deleted",
        "tether:connection:events",
    ])
    .await
    .unwrap();
    let s = o.stores.sessions.create(new_session("uma")).await.unwrap();
    let updates = json!({"b": 2});
    o.stores
        .sessions
        .update(
            &s.id,
            SessionPatch {
                data: updates.as_object(),
                ttl_seconds: None,
                source: Source::Http,
                connection: None,
            },
        )
        .await
        .unwrap();
    o.stores.sessions.delete(&s.id).await.unwrap();
    let conn = Uuid::new_v4();
    o.stores
        .events
        .log(conn, "uma", EventType::Connected, json!({"n": 1}));

    let mut stream = ps.on_message();
    let mut got = Vec::new();
    let mut wait = Duration::from_secs(5);
    while let Ok(Some(m)) = tokio::time::timeout(wait, stream.next()).await {
        let v: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap();
        got.push((m.get_channel_name().to_string(), v));
        wait = Duration::from_millis(300);
    }
    let channels: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        channels,
        vec![
            "tether:session:created",
            "tether:session:updates",
            "tether:session:deleted",
            "tether:connection:events"
        ],
        "one message per change"
    );
    for (i, (_, v)) in got[..3].iter().enumerate() {
        let e: SessionEvent = serde_json::from_value(v.clone()).unwrap();
        let again = match i {
            0 => BusEvent::SessionCreated(e.clone()),
            1 => BusEvent::SessionUpdated(e.clone()),
            _ => BusEvent::SessionDeleted(e.clone()),
        };
        assert_eq!(&again.payload(), v, "exactly the event's JSON");
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        let mut want = vec!["connectionId", "sessionId", "source", "timestamp", "userId"];
        if i == 1 {
            want.push("updates");
            want.sort();
        }
        assert_eq!(keys, want);
        assert_eq!(e.session_id, s.id);
        assert_eq!(e.user_id, "uma");
        assert_eq!(e.source, Source::Http);
        assert!(parse_rfc3339(&e.timestamp).is_some());
    }
    assert_eq!(got[1].1["updates"], updates);
    let ev = &got[3].1;
    assert_eq!(ev["eventType"], "connected");
    assert_eq!(ev["connectionId"], conn.to_string());
    assert_eq!(ev["details"], json!({"n": 1}));
    assert!(ev["seq"].as_u64().is_some());
}

pub async fn a_record_that_does_not_decode_is_an_error_naming_its_key(o: &Opened) {
    let c = &*o.stores.conns;
    let a = admit(c, "zed", None).await;
    let key = format!("tether:{{u:zed}}:c:{}", a.id);
    let mut r = raw(o.url.as_deref().unwrap()).await;
    // The seq is in the user's delivery rows, not in the record's HASH.
    ::redis::cmd("HSET")
        .arg("tether:{u:zed}:d")
        .arg(a.id.to_string())
        .arg("many")
        .exec_async(&mut r)
        .await
        .unwrap();
    match c.activate(&a.id, 0).await {
        Err(StoreError::BadRecord { key: k, detail }) => {
            assert_eq!(k, key);
            assert!(detail.contains("seq"), "{detail}");
        }
        other => panic!(
            "expected an error naming {key}, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(
        c.info(&a.id).await.is_none(),
        "a lookup logs it and finds nothing"
    );
    // The rest of the store is untouched.
    connect(c, "amy", None).await;
}

pub async fn a_subscription_comes_back_after_its_connection_is_lost() {
    let mut server = RedisServer::start(false);
    let url = server.url();
    let bus = redis_bus(&url).await;
    let store = open_redis(&url, NODE).await;
    let stores = store.stores();
    let mut sub = subscribe_on(&bus, &[Topic::Channel(Channel::SessionCreated)]).await;
    let resubscribed = async |sub: &mut tether::bus::Subscription| loop {
        match tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
            Ok(Some(Received::Resubscribed)) => return,
            Ok(Some(_)) => continue,
            other => panic!("expected Resubscribed, got {other:?}"),
        }
    };
    let created = async |sub: &mut tether::bus::Subscription, id: &str| loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Received::Event(BusEvent::SessionCreated(e)))) if e.session_id == id => return,
            Ok(Some(_)) => continue,
            other => panic!("expected session {id} created, got {other:?}"),
        }
    };

    // The subscription's connection is killed: it comes back by itself and says so.
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    assert!(killed >= 1);
    resubscribed(&mut sub).await;
    let s = stores.sessions.create(new_session("vi")).await.unwrap();
    created(&mut sub, &s.id).await;

    // Redis itself goes away and comes back.
    server.restart();
    resubscribed(&mut sub).await;
    let mut tries = 0;
    let s = loop {
        match stores.sessions.create(new_session("vi")).await {
            Ok(s) => break s,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not come back: {e}"),
        }
    };
    created(&mut sub, &s.id).await;
}

pub async fn the_store_says_when_redis_is_down_and_when_it_lost_its_data() {
    let mut server = RedisServer::start(false);
    let url = server.url();
    let store = open_redis(&url, NODE).await;
    let stores = store.stores();
    assert!(store.healthy().is_ok());
    let old = connect(&*stores.conns, "wes", None).await;

    server.kill();
    eventually(
        "unhealthy once Redis is gone",
        Duration::from_secs(5),
        || store.healthy().is_err(),
    )
    .await;
    let started = Instant::now();
    match stores.conns.admit(new_conn("wes", None, None), NODE).await {
        Err(AdmitError::Store(StoreError::Unavailable(why))) => {
            assert!(why.contains("redis"), "{why}")
        }
        other => panic!("expected the store to be unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused within the command timeout, not hung: {:?}",
        started.elapsed()
    );

    // Back, without persistence: everything it held is gone, and the store says so until the
    // node reacts.
    server.restart();
    eventually("the lost data noticed", Duration::from_secs(10), || {
        store.epoch_changed()
    })
    .await;
    let (_, why) = store.healthy().unwrap_err();
    assert!(why.contains("lost its data"), "{why}");
    match stores.conns.admit(new_conn("wes", None, None), NODE).await {
        Err(AdmitError::Store(StoreError::Unavailable(why))) => {
            assert!(why.contains("lost its data"), "{why}")
        }
        other => panic!("expected admissions refused until the node reacts, got {other:?}"),
    }
    store.adopt_epoch().await.unwrap();
    assert!(!store.epoch_changed());
    eventually("healthy again", Duration::from_secs(5), || {
        store.healthy().is_ok()
    })
    .await;
    assert!(
        stores.conns.info(&old.id).await.is_none(),
        "its records are gone"
    );
    connect(&*stores.conns, "wes", None).await;
}

/// With `appendfsync always`, what the store acknowledged is in Redis's log before Redis
/// answered: a crash of Redis loses none of it.
pub async fn acknowledged_writes_survive_a_redis_crash_with_aof() {
    let mut server = RedisServer::start(true);
    let url = server.url();
    let store = open_redis(&url, NODE).await;
    let o = Opened {
        stores: store.stores(),
        bus: redis_bus(&url).await,
        peer: None,
        url: Some(url.clone()),
        _keep: Box::new(()),
    };
    let c = &*o.stores.conns;
    let a = connect(c, "xan", None).await;
    let sockets = Sockets::new(&o).await;
    for n in 1..=2 {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    server.kill();
    server.restart();
    let mut tries = 0;
    while c.info(&a.id).await.is_none() {
        tries += 1;
        assert!(tries < 100, "the record did not come back with Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("healthy after the restart", Duration::from_secs(10), || {
        store.healthy().is_ok()
    })
    .await;
    assert!(!store.epoch_changed(), "the same data, the same epoch");
    let r = resume(c, &a, "xan", Some(0)).await;
    assert!(r.resumed);
    assert!(r.resume_error.is_none(), "{:?}", r.resume_error);
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), vec![1, 2]);
}

/// A subscriber that does not read loses the oldest of what it did not take, is told how
/// many, and goes on with what came after; publishers never wait for it.
pub async fn a_slow_subscriber_is_told_what_it_missed(o: &Opened) {
    let url = o.url.as_deref().expect("a Redis backend");
    let bus: std::sync::Arc<dyn tether::bus::Bus> = std::sync::Arc::new(
        tether::bus::RedisBus::connect(url, crate::PREFIX, crate::COMMAND_TIMEOUT, 4)
            .await
            .unwrap(),
    );
    let mut slow = subscribe_on(&bus, &[Topic::Channel(Channel::ConnectionEvents)]).await;
    let started = Instant::now();
    for n in 0..10 {
        bus.publish(BusEvent::Connection(json!({ "n": n })))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "publishing did not wait"
    );
    assert_eq!(bus.published(Channel::ConnectionEvents), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    let mut lagged = 0;
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), slow.next()).await {
        match r {
            Received::Event(BusEvent::Connection(v)) => got.push(v["n"].as_u64().unwrap()),
            Received::Lagged(n) => lagged += n,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(lagged > 0, "it was told it missed some");
    assert_eq!(
        got.len() as u64 + lagged,
        10,
        "each event either seen or counted"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(bus.lagged(), lagged);
}

/// A Redis store on a server of its own, with room for `per_user` connections of one user
/// and `total` in all. The server lives as long as the first value is kept.
async fn store_with_room(per_user: usize, total: usize) -> (RedisServer, String, RedisStore) {
    let server = RedisServer::start(false);
    let url = server.url();
    let mut settings = crate::redis_settings(&url, NODE);
    settings.limits.max_per_user = per_user;
    settings.limits.max_total = total;
    let store = RedisStore::connect(settings).await.expect("connect");
    (server, url, store)
}

/// How many times Redis ran `cmd` (scripts' calls included) since the last `CONFIG RESETSTAT`.
async fn calls_of(con: &mut ::redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let key = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

/// Admission reads no record of the user's but those it evicts, however many connections the
/// user has (it used to read them all: the k-th connection of one user cost O(k)); eviction
/// still takes the oldest Detached one first, else the oldest.
pub async fn admission_does_not_read_every_record_of_the_user() {
    const MANY: usize = 200;
    let (_server, url, store) = store_with_room(MANY, 10 * MANY).await;
    let stores = store.stores();
    let c = &*stores.conns;
    let base = tether::time::now_ms();
    let mut at = 0;
    let mut admit_one = async || {
        let mut n = new_conn("many", None, None);
        n.meta.connected_at = base + at;
        at += 1;
        let a = c.admit(n, NODE).await.expect("admitted");
        c.activate(&a.id, a.replay_after).await.unwrap().unwrap();
        a
    };
    let mut ids = Vec::new();
    for _ in 0..MANY {
        ids.push(admit_one().await.id);
    }
    c.finish(&ids[MANY / 2], Fate::Detach, None, None).await;
    let mut con = raw(&url).await;
    let _: () = ::redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let first = admit_one().await;
    let second = admit_one().await;
    let third = admit_one().await;
    let read = calls_of(&mut con, "hgetall").await;
    assert!(
        read <= 6,
        "three admissions read {read} records of a user with {MANY} connections"
    );
    assert!(first.closing.is_empty(), "the Detached one went: no socket");
    assert!(
        c.info(&ids[MANY / 2]).await.is_none(),
        "the Detached one went first"
    );
    let closed: Vec<_> = [&second, &third]
        .iter()
        .map(|a| {
            (
                a.closing.len(),
                a.closing[0].id,
                a.closing[0].disconnect.code,
            )
        })
        .collect();
    assert_eq!(
        closed,
        vec![
            (1, ids[0], tether::protocol::CloseCode::Evicted),
            (1, ids[1], tether::protocol::CloseCode::Evicted)
        ],
        "then the oldest"
    );
    assert_eq!(c.user_connections("many").await.len(), MANY);
}

/// A busy queue on the store's connection, every call of which Redis answers within the
/// command timeout, does not make the store unhealthy (under a resume storm a node's probe
/// timed out behind the resumes and the node answered 503 for a moment although Redis was
/// fine).
pub async fn a_probe_behind_a_busy_queue_is_not_an_outage() {
    const CONNS: usize = 500;
    let (_server, _, store) = store_with_room(CONNS, CONNS).await;
    let stores = store.stores();
    for _ in 0..CONNS {
        admit(&*stores.conns, "big", Some("all")).await;
    }
    let deliver = |c: std::sync::Arc<dyn tether::store::ConnStore>| async move {
        let t = FrameTemplate::message("{\"n\":1}", "t");
        let started = Instant::now();
        let all = Target::Session {
            id: "all",
            except: None,
        };
        let r = c.deliver(all, t, &|_, to, _| to.len(), true).await;
        r.ok().map(|_| started.elapsed())
    };
    // Messages to the session (each one script that writes the replay lists of its 500
    // connections), sent in a loop by more and more tasks until each waits about half a
    // command timeout in the queue: every call is answered in time, and so must the probe be.
    let until = Instant::now() + Duration::from_secs(6);
    let latest = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let spawn = |n: usize, tasks: &mut Vec<tokio::task::JoinHandle<(Duration, usize)>>| {
        for _ in 0..n {
            let (c, latest) = (stores.conns.clone(), latest.clone());
            tasks.push(tokio::spawn(async move {
                let (mut slowest, mut failed) = (Duration::ZERO, 0);
                while Instant::now() < until {
                    match deliver(c.clone()).await {
                        Some(took) => {
                            slowest = slowest.max(took);
                            let mut l = latest.lock().unwrap();
                            *l = (*l).max(took);
                        }
                        None => failed += 1,
                    }
                }
                (slowest, failed)
            }));
        }
    };
    let mut tasks = Vec::new();
    spawn(10, &mut tasks);
    let target = crate::COMMAND_TIMEOUT / 2;
    let mut unhealthy = Vec::new();
    let mut next_look = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Err((_, why)) = store.healthy() {
            unhealthy.push(why);
        }
        if Instant::now() >= next_look && until - Instant::now() > Duration::from_secs(3) {
            let seen = std::mem::take(&mut *latest.lock().unwrap());
            if seen < target * 9 / 10 {
                let grow = (target.as_secs_f64() / seen.as_secs_f64().max(0.001)).min(1.5);
                spawn(
                    (tasks.len() as f64 * (grow - 1.0)).ceil() as usize,
                    &mut tasks,
                );
            }
            next_look = Instant::now() + Duration::from_millis(300);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_flight = tasks.len();
    let (mut slowest, mut failed) = (Duration::ZERO, 0);
    for t in tasks {
        let (s, f) = t.await.unwrap();
        slowest = slowest.max(s);
        failed += f;
    }
    assert!(
        slowest > crate::COMMAND_TIMEOUT * 3 / 10,
        "{in_flight} in flight queued only {slowest:?}: the case shows nothing"
    );
    assert!(
        unhealthy.is_empty(),
        "unhealthy {} times while Redis answered calls ({in_flight} in flight, slowest {slowest:?}, {failed} failed): {:?}",
        unhealthy.len(),
        unhealthy.first()
    );
}

/// A delivery to more of a user's connections than one HMGET of their rows takes (the script
/// reads and writes them in chunks of 2,000): each gets its next seq once, and keeps it.
pub async fn a_delivery_to_more_connections_than_a_chunk_reaches_each_once() {
    const MANY: usize = 4100;
    let (_server, url, store) = store_with_room(MANY, MANY).await;
    let stores = store.stores();
    let o = Opened {
        stores: stores.clone(),
        bus: redis_bus(&url).await,
        peer: None,
        url: Some(url.clone()),
        _keep: Box::new(()),
    };
    let c = &*stores.conns;
    let mut ids = Vec::new();
    for _ in 0..MANY {
        let a = admit(c, "crowd", None).await;
        c.activate(&a.id, a.replay_after).await.unwrap().unwrap();
        ids.push(a.id);
    }
    let sockets = Sockets::new(&o).await;
    for n in 1..=2u64 {
        let d = send(c, Target::User("crowd"), n, &sockets).await;
        assert_eq!((d.stored, d.delivered, d.seq), (MANY, MANY, n));
        let mut got: Vec<(Uuid, u64)> = sockets
            .seen()
            .await
            .into_iter()
            .flat_map(|(_, to, _)| to.into_iter().map(|a| (a.id, a.seq)))
            .collect();
        got.sort();
        let mut want: Vec<(Uuid, u64)> = ids.iter().map(|id| (*id, n)).collect();
        want.sort();
        assert!(
            got == want,
            "message {n}: each connection once, with seq {n}"
        );
    }
    for id in [ids[0], ids[1999], ids[2000], ids[MANY - 1]] {
        assert_eq!(seqs_of(&c.replay(&id, 0).await.unwrap()), vec![1, 2]);
    }
}

/// A record stored before the delivery rows existed (its seq in its HASH, its replay bytes in
/// `<list>:b`) is delivered to, bounded, resumed and removed as one stored since.
pub async fn a_record_from_before_the_delivery_rows_carries_on(o: &Opened) {
    let c = &*o.stores.conns;
    let url = o.url.as_deref().expect("a Redis backend");
    let a = connect(c, "old", None).await;
    let sockets = Sockets::new(o).await;
    for n in 1..=2 {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    // Back to the layout of before: no row, seq in the record, bytes in their own key.
    let mut r = raw(url).await;
    let rows = "tether:{u:old}:d";
    let row: String = ::redis::cmd("HGET")
        .arg(rows)
        .arg(a.id.to_string())
        .query_async(&mut r)
        .await
        .unwrap();
    // `=<base>|<node>|<rb>|<rk>|<mu>`: the seq is base + mu.
    let parts: Vec<&str> = row.split('|').collect();
    let seq =
        parts[0].trim_start_matches('=').parse::<i64>().unwrap() + parts[4].parse::<i64>().unwrap();
    assert_eq!(seq, 2, "the row holds the seq: {row}");
    let seq = seq.to_string();
    let bytes = parts[2];
    let key = format!("tether:{{u:old}}:c:{}", a.id);
    let list = format!("tether:{{u:old}}:r:{}", a.id);
    let _: () = ::redis::pipe()
        .cmd("HDEL")
        .arg(rows)
        .arg(a.id.to_string())
        .cmd("HSET")
        .arg(&key)
        .arg("seq")
        .arg(&seq)
        .cmd("SET")
        .arg(format!("{list}:b"))
        .arg(bytes)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(c.replay(&a.id, 0).await.unwrap().len(), 2);
    let d = send(c, Target::User("old"), 3, &sockets).await;
    assert_eq!((d.stored, d.delivered, d.seq), (1, 1, 3));
    for n in 4..=(crate::REPLAY as u64 + 2) {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    let last = crate::REPLAY as u64 + 2;
    assert_eq!(
        seqs_of(&c.replay(&a.id, 0).await.unwrap()),
        (3..=last).collect::<Vec<_>>(),
        "bounded as ever"
    );
    c.finish(&a.id, Fate::Detach, None, None).await;
    let resumed = resume(c, &a, "old", Some(last - 1)).await;
    assert!(resumed.resumed && resumed.resume_error.is_none());
    let act = c
        .activate(&resumed.id, resumed.replay_after)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs_of(&act.replay), vec![last]);
    assert_eq!(act.record.seq, last);
    c.remove(
        &resumed.id,
        &tether::protocol::Disconnect::replaced(),
        EventType::Disconnected,
    )
    .await
    .unwrap();
    let left: Vec<String> = ::redis::cmd("KEYS")
        .arg("tether:{u:old}*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(left.is_empty(), "nothing of it is left: {left:?}");
}
