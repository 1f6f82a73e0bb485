//! `node-kill`: cluster mode's failover. N nodes over one Redis hold the connections
//! (connection i on node i mod N, a user's consecutive connections so on every node);
//! rounds of messages go to every user throughout; one node is killed with SIGKILL; its
//! clients resume on the others by the protocol (a new socket with `resume`,
//! `resume_token` and `last_seq`). Measured: the time from the dead node's lease end (and
//! from its `detached` events) until all its clients are resumed, and, for every client,
//! whether each message its user was sent arrived once and in order.
//!
//! The timeline comes from Redis itself: a node's lease is its score in `<prefix>:nodes`
//! (when it ends, in ms by Redis's clock, the same machine's), and the entry goes when a
//! live node has detached the dead one's connections.

use crate::cli::{Global, NodeKillArgs};
use crate::conn::OrderLog;
use crate::fleet::{Fleet, FleetPlan};
use crate::scenarios::{
    cluster_flags, counts_progress, errors_json, errors_line, fleet_plan, open_all,
    start_target_with, wait_resumed, CountsCell, Out,
};
use crate::target::{Api, KILL_HEARTBEAT_MS, KILL_LEASE_MS};
use crate::util::{self, hist_json, hist_line, now_ns, R};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::sleep;

/// What one connection's log says against what its user was sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrderCheck {
    /// Messages the server acknowledged for this connection's user.
    pub expected: u64,
    pub received: u64,
    /// Acknowledged messages that never arrived.
    pub missed: u64,
    /// Arrivals of a message already received.
    pub duplicates: u64,
    /// First arrivals of a message after one sent later.
    pub out_of_order: u64,
    /// Arrivals of a message whose POST failed (allowed: the server may have stored it
    /// before the failure), or that was never sent.
    pub unacknowledged: u64,
}

impl OrderCheck {
    fn add(&mut self, o: &OrderCheck) {
        self.expected += o.expected;
        self.received += o.received;
        self.missed += o.missed;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.unacknowledged += o.unacknowledged;
    }
}

/// Checks the numbers a connection received, in order of arrival, against `acked[n]`:
/// whether message n was acknowledged (and so must arrive exactly once).
pub fn check_order(received: &[u32], acked: &[bool]) -> OrderCheck {
    let mut seen = vec![false; acked.len()];
    let mut c = OrderCheck {
        expected: acked.iter().filter(|a| **a).count() as u64,
        received: received.len() as u64,
        ..OrderCheck::default()
    };
    let mut highest: Option<u32> = None;
    let mut extra_seen = std::collections::HashSet::new();
    for &n in received {
        let i = n as usize;
        let first = if i < seen.len() {
            !std::mem::replace(&mut seen[i], true)
        } else {
            extra_seen.insert(n)
        };
        if !first {
            c.duplicates += 1;
            continue;
        }
        if i >= acked.len() || !acked[i] {
            c.unacknowledged += 1;
        }
        if highest.is_some_and(|h| n < h) {
            c.out_of_order += 1;
        }
        highest = Some(highest.map_or(n, |h| h.max(n)));
    }
    c.missed = acked.iter().zip(&seen).filter(|(a, s)| **a && !**s).count() as u64;
    c
}

/// One POST of a round: the user, its answer, its latency in microseconds.
type Posted = (usize, R<(u16, Value)>, u64);

/// The rounds of messages: round j sends `{"t": <now>, "n": j}` to every user, each POST
/// to the next live node; a round starts when the last has ended (so a user's messages
/// are sent in order), `interval` after it.
struct Sender {
    /// acked[user][round]
    acked: Mutex<Vec<Vec<bool>>>,
    rounds_done: AtomicUsize,
    stop: AtomicBool,
    post_errors: Mutex<BTreeMap<String, u64>>,
    post_latency: Mutex<hdrhistogram::Histogram<u64>>,
    posts: AtomicU64,
}

impl Sender {
    async fn run(
        self: Arc<Self>,
        api: Api,
        plan: FleetPlan,
        users: usize,
        interval: Duration,
        concurrency: usize,
    ) {
        let paths: Vec<String> = (0..users)
            .map(|u| {
                format!(
                    "/v1/users/{}/messages",
                    util::pct(&plan.user_of(u * plan.per_user))
                )
            })
            .collect();
        let mut j = 0u32;
        while !self.stop.load(SeqCst) {
            let results: Vec<Posted> = futures_util::stream::iter(0..users)
                .map(|u| {
                    let api = api.clone();
                    let path = &paths[u];
                    async move {
                        let t = now_ns();
                        let r = api
                            .send_json(
                                reqwest::Method::POST,
                                path,
                                &json!({"data": {"t": t, "n": j}}),
                            )
                            .await;
                        (u, r, (now_ns() - t) / 1000)
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            {
                let mut acked = self.acked.lock().unwrap();
                let mut errors = self.post_errors.lock().unwrap();
                let mut lat = self.post_latency.lock().unwrap();
                for (u, r, us) in results {
                    util::record_us(&mut lat, us);
                    let ok = match r {
                        Ok((st, _)) if (200..300).contains(&st) => true,
                        Ok((st, _)) => {
                            *errors.entry(format!("http_{st}")).or_default() += 1;
                            false
                        }
                        Err(_) => {
                            *errors.entry("request".into()).or_default() += 1;
                            false
                        }
                    };
                    acked[u].push(ok);
                }
            }
            self.posts.fetch_add(users as u64, SeqCst);
            j += 1;
            self.rounds_done.store(j as usize, SeqCst);
            sleep(interval).await;
        }
    }

    async fn wait_rounds(&self, k: usize, within: Duration) -> R<()> {
        let t0 = Instant::now();
        while self.rounds_done.load(SeqCst) < k {
            if t0.elapsed() > within {
                return Err(format!(
                    "only {} rounds of messages were sent in {within:?} (waiting for {k})",
                    self.rounds_done.load(SeqCst)
                ));
            }
            sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Watches the dead node's entry in `<prefix>:nodes`: its lease end (ms, Redis's clock) and
/// when it goes (a live node has detached its connections).
struct LeaseWatch {
    lease_end_ms: AtomicU64,
    gone_ns: AtomicU64,
}

async fn watch_lease(
    w: Arc<LeaseWatch>,
    url: String,
    key: String,
    node: String,
    within: Duration,
) -> R<()> {
    let client = redis::Client::open(url.as_str()).map_err(|e| format!("Redis URL: {e}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connecting to Redis: {e}"))?;
    let t0 = Instant::now();
    let mut last_error = None;
    loop {
        // A Redis busy with a storm of resumes may answer late: ask again.
        let asked: Result<Option<f64>, _> = redis::cmd("ZSCORE")
            .arg(&key)
            .arg(&node)
            .query_async(&mut con)
            .await;
        match asked {
            Ok(Some(ms)) => w.lease_end_ms.store(ms as u64, SeqCst),
            Ok(None) => {
                w.gone_ns.store(now_ns(), SeqCst);
                return Ok(());
            }
            Err(e) => last_error = Some(e.to_string()),
        }
        if t0.elapsed() > within {
            return Err(format!(
                "{node} is still in {key} {within:?} after the kill (last error: {})",
                last_error.as_deref().unwrap_or("none")
            ));
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// Milliseconds from `from` to `at` (nanoseconds since the shared epoch), when both are known.
fn span_ms(at: Option<i64>, from: Option<i64>) -> Option<f64> {
    Some((at? - from?) as f64 / 1e6)
}

fn known(ns: u64) -> Option<i64> {
    (ns > 0).then_some(ns as i64)
}

pub async fn node_kill(g: &Global, a: &NodeKillArgs, out: &Out) -> R<Value> {
    let nodes = g.cluster.unwrap_or(2);
    if nodes < 2 {
        return Err("node-kill needs a cluster of 2 nodes or more (--cluster 2)".into());
    }
    if a.kill_node >= nodes {
        return Err(format!(
            "--kill-node {}: the cluster has nodes 0 to {}",
            a.kill_node,
            nodes - 1
        ));
    }
    let mut g2 = g.clone();
    g2.cluster = Some(nodes);
    let g = &g2;
    let mut auto = Vec::new();
    if a.per_user > 10 {
        auto.push(("--max-per-user", a.per_user.to_string()));
    }
    if a.n > 100_000 {
        auto.push(("--max-total", (a.n + 1000).to_string()));
    }
    let heartbeat_ms = g.node_heartbeat_ms.unwrap_or(KILL_HEARTBEAT_MS);
    let lease_ms = g.node_lease_ms.unwrap_or(KILL_LEASE_MS);
    let extra = cluster_flags(g, Some(heartbeat_ms), Some(lease_ms));
    let mut target = start_target_with(g, out, &auto, &extra).await?;
    let per_user = a.per_user.max(1);
    let mut plan = fleet_plan(g, &target, a.n, per_user, a.rate, &a.user_prefix);
    plan.resume_from_received = !a.resume_from_welcome;
    plan.track_order = true;
    let mut fleet = Fleet::start(&plan)?;
    open_all(g, out, &mut fleet, "connect", a.n, a.rate).await?;
    let c0 = fleet.counts();
    if c0.failed > 0 {
        let rep = fleet.close(Duration::from_secs(10)).await?;
        return Err(format!(
            "{} of {} connections failed to open: {}",
            c0.failed,
            a.n,
            errors_line(&rep.errors)
        ));
    }
    let victims: Vec<usize> = (0..a.n).filter(|i| i % nodes == a.kill_node).collect();
    let mut skip: Vec<usize> = victims.iter().take(a.leave_away).copied().collect();
    skip.sort_unstable();
    let users = a.n.div_ceil(per_user);
    let node_id = format!("node{}", a.kill_node);
    out.say(format!(
        "node-kill: {} connections ({} users x {per_user}) over {nodes} nodes; node {} holds {}; heartbeat {heartbeat_ms} ms, lease {lease_ms} ms; clients resume at: {}{}",
        c0.opened,
        users,
        a.kill_node,
        victims.len(),
        a.resume_at,
        if skip.is_empty() {
            String::new()
        } else {
            format!("; {} of them are left away", skip.len())
        }
    ));

    // Messages throughout.
    let sender = Arc::new(Sender {
        acked: Mutex::new(vec![Vec::new(); users]),
        rounds_done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        post_errors: Mutex::new(BTreeMap::new()),
        post_latency: Mutex::new(util::new_hist()),
        posts: AtomicU64::new(0),
    });
    let sending = tokio::spawn(sender.clone().run(
        target.api.clone(),
        plan.clone(),
        users,
        Duration::from_millis(a.interval_ms),
        a.concurrency,
    ));
    let round_deadline = Duration::from_secs(60);
    sender.wait_rounds(a.rounds_before, round_deadline).await?;
    let rounds_at_kill = sender.rounds_done.load(SeqCst);

    // The kill. API calls stop going to the node first, and those in flight end, so that
    // no message is left half sent (its POST failed, its fate unknown).
    if !target.api.drain(a.kill_node, Duration::from_secs(10)).await {
        eprintln!(
            "warning: API calls to node {} still in flight at the kill",
            a.kill_node
        );
    }
    let redis_url = target
        .redis
        .as_ref()
        .map(|r| r.url.clone())
        .ok_or("node-kill runs in cluster mode")?;
    let watch = Arc::new(LeaseWatch {
        lease_end_ms: AtomicU64::new(0),
        gone_ns: AtomicU64::new(0),
    });
    let kill_ns = now_ns();
    target.nodes[a.kill_node]
        .stop(true, Duration::from_secs(5))
        .await?;
    let watching = tokio::spawn(watch_lease(
        watch.clone(),
        redis_url,
        format!("{}:nodes", target.redis_prefix),
        node_id.clone(),
        Duration::from_millis(lease_ms) + Duration::from_secs(60),
    ));
    out.say(format!(
        "killed node {} (SIGKILL) after {rounds_at_kill} rounds of messages",
        a.kill_node
    ));
    // Its clients see their sockets close.
    let others = (a.n - victims.len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.counts().open_now > others && Instant::now() < deadline {
        fleet.check_alive()?;
        sleep(Duration::from_millis(2)).await;
    }
    let dropped_ns = now_ns();
    let still_open = fleet.counts().open_now - others;
    if still_open > 0 {
        eprintln!("warning: {still_open} sockets of the killed node still look open after 15 s");
    }
    let lease_end_ns = || {
        let ms = watch.lease_end_ms.load(SeqCst);
        (ms > 0).then(|| util::unix_ms_to_epoch_ns(ms as i64))
    };
    // When the clients come back.
    let t_wait = Instant::now();
    match a.resume_at.as_str() {
        "drop" => {}
        "lease" => loop {
            match lease_end_ns() {
                Some(end) if (now_ns() as i64) >= end => break,
                _ if watch.gone_ns.load(SeqCst) > 0 => break,
                _ if t_wait.elapsed()
                    > Duration::from_millis(lease_ms) + Duration::from_secs(30) =>
                {
                    return Err("the killed node's lease was never seen ending".into())
                }
                _ => sleep(Duration::from_millis(1)).await,
            }
        },
        _ => loop {
            if watch.gone_ns.load(SeqCst) > 0 {
                break;
            }
            if watching.is_finished() {
                return Err("the killed node's lease was never seen going".into());
            }
            sleep(Duration::from_millis(1)).await;
        },
    }
    let survivors: Vec<std::net::SocketAddr> = target
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a.kill_node)
        .map(|(_, s)| s.addr)
        .collect();
    let resume_ns = now_ns();
    fleet.resume(&survivors, &skip)?;
    let expected_back = (victims.len() - skip.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(a.resume_timeout_secs);
    let all_back = wait_resumed(
        &mut fleet,
        out,
        expected_back,
        deadline,
        Duration::from_millis(5),
    )
    .await?;
    // Some rounds more, then every acknowledged message must arrive.
    let rounds_back = sender.rounds_done.load(SeqCst);
    sender
        .wait_rounds(rounds_back + a.rounds_after, round_deadline)
        .await?;
    sender.stop.store(true, SeqCst);
    let _ = sending.await;
    let acked = sender.acked.lock().unwrap().clone();
    let rounds = acked.iter().map(Vec::len).max().unwrap_or(0);
    let owed: u64 = (0..a.n)
        .filter(|i| skip.binary_search(i).is_err())
        .map(|i| acked[i / per_user].iter().filter(|x| **x).count() as u64)
        .sum();
    let deadline = Instant::now() + Duration::from_secs(a.deliver_timeout_secs);
    {
        let cell: CountsCell = Arc::default();
        let _p = counts_progress(out, "receive", owed, &cell, |c| (c.messages, String::new()));
        while fleet.counts().messages < owed && Instant::now() < deadline {
            fleet.check_alive()?;
            *cell.lock().unwrap() = fleet.counts();
            sleep(Duration::from_millis(10)).await;
        }
    }
    // Late duplicates would come now.
    sleep(Duration::from_millis(500)).await;
    let watched = match tokio::time::timeout(Duration::from_secs(1), watching).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("the lease watch failed: {e}")),
        Err(_) => Err("the killed node's lease did not go".to_string()),
    };
    if let Err(e) = &watched {
        eprintln!("warning: {e}");
    }
    // The detached events of the dead node's connections.
    let events = target
        .api
        .get("/v1/events?type=detached&limit=10000")
        .await
        .unwrap_or(Value::Null);
    let detached_ms: Vec<i64> = events
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|e| e["details"]["node"].as_str() == Some(node_id.as_str()))
                .filter_map(|e| e["timestamp"].as_str().and_then(util::parse_rfc3339_ms))
                .collect()
        })
        .unwrap_or_default();
    let rep = fleet.close(Duration::from_secs(30)).await?;
    // Every clean close must be stored: the cluster's count comes back to 0.
    let t = Instant::now();
    let mut active_after = target.active_connections().await.ok();
    while active_after != Some(0) && t.elapsed() < Duration::from_secs(15) {
        sleep(Duration::from_millis(200)).await;
        active_after = target.active_connections().await.ok();
    }
    target.stop_quietly().await;

    // Every connection's log against what its user was sent.
    let mut logs: Vec<Option<&OrderLog>> = vec![None; a.n];
    for l in &rep.orders {
        if l.idx < a.n {
            logs[l.idx] = Some(l);
        }
    }
    #[derive(Default)]
    struct Group {
        connections: u64,
        check: OrderCheck,
        with_misses: u64,
        with_duplicates: u64,
        with_out_of_order: u64,
        seq_skipped: u64,
        seq_repeated: u64,
        resumed: u64,
        no_log: u64,
    }
    let mut groups: [Group; 3] = Default::default(); // killed node, others, left away
    for (i, log) in logs.iter().enumerate() {
        let gi = if skip.binary_search(&i).is_ok() {
            2
        } else if i % nodes == a.kill_node {
            0
        } else {
            1
        };
        let grp = &mut groups[gi];
        grp.connections += 1;
        let acked_u = &acked[i / per_user];
        let Some(log) = log else {
            grp.no_log += 1;
            let c = check_order(&[], acked_u);
            grp.with_misses += u64::from(c.missed > 0);
            grp.check.add(&c);
            continue;
        };
        let c = check_order(&log.ns, acked_u);
        grp.with_misses += u64::from(c.missed > 0);
        grp.with_duplicates += u64::from(c.duplicates > 0);
        grp.with_out_of_order += u64::from(c.out_of_order > 0);
        grp.seq_skipped += log.seq_skipped;
        grp.seq_repeated += log.seq_repeated;
        grp.resumed += u64::from(log.resumed);
        grp.check.add(&c);
    }
    let group_json = |g: &Group| {
        json!({
            "connections": g.connections,
            "resumed": g.resumed,
            "expected": g.check.expected,
            "received": g.check.received,
            "missed": g.check.missed,
            "duplicates": g.check.duplicates,
            "outOfOrder": g.check.out_of_order,
            "unacknowledgedReceived": g.check.unacknowledged,
            "connectionsWithMisses": g.with_misses,
            "connectionsWithDuplicates": g.with_duplicates,
            "connectionsOutOfOrder": g.with_out_of_order,
            "seqSkipped": g.seq_skipped,
            "seqRepeated": g.seq_repeated,
            "noLog": g.no_log,
        })
    };
    let mut total = OrderCheck::default();
    for grp in &groups[..2] {
        total.add(&grp.check);
    }
    let seq_skipped = groups[0].seq_skipped + groups[1].seq_skipped;
    let seq_repeated = groups[0].seq_repeated + groups[1].seq_repeated;

    // The timeline, from the kill.
    let c = rep.counts.clone();
    let kill = known(kill_ns);
    let dropped = known(dropped_ns);
    let resume_start = known(resume_ns);
    let lease_end = lease_end_ns();
    let gone = known(watch.gone_ns.load(SeqCst));
    let last_resumed = known(c.last_resumed_ns);
    let first_detached = detached_ms
        .iter()
        .min()
        .map(|m| util::unix_ms_to_epoch_ns(*m));
    let last_detached = detached_ms
        .iter()
        .max()
        .map(|m| util::unix_ms_to_epoch_ns(*m));
    let lease_to_all = span_ms(last_resumed, lease_end);
    let detached_to_all = span_ms(last_resumed, first_detached);
    let post_errors = sender.post_errors.lock().unwrap().clone();
    let post_latency = sender.post_latency.lock().unwrap().clone();
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0} ms")).unwrap_or("?".into());

    out.say(format!(
        "from the kill: sockets dropped {}, lease end {}, resume started {}, dead node's entry gone {}, last client resumed {}",
        fmt(span_ms(dropped, kill)),
        fmt(span_ms(lease_end, kill)),
        fmt(span_ms(resume_start, kill)),
        fmt(span_ms(gone, kill)),
        fmt(span_ms(last_resumed, kill)),
    ));
    out.say(format!(
        "detached events of {node_id}: {} (first {} after the lease end, last {})",
        detached_ms.len(),
        fmt(span_ms(first_detached, lease_end)),
        fmt(span_ms(last_detached, lease_end)),
    ));
    out.say(format!(
        "lease end -> all {expected_back} resumed: {}; first detached event -> all resumed: {}{}",
        fmt(lease_to_all),
        fmt(detached_to_all),
        if all_back {
            ""
        } else {
            " (TIMED OUT waiting for some)"
        }
    ));
    out.say(format!(
        "resumed {} fresh {} failed {}; resume command -> welcome: {}",
        c.resumed,
        c.fresh,
        c.resume_failed,
        hist_line(&rep.resume)
    ));
    out.say(format!(
        "messages: {rounds} rounds x {users} users ({} POSTs, errors: {}); {} owed to the connections, {} received: missed {}, duplicates {}, out of order {}, of failed POSTs {}; seq skipped {}, repeated {}",
        sender.posts.load(SeqCst),
        errors_line(&post_errors),
        total.expected,
        total.received,
        total.missed,
        total.duplicates,
        total.out_of_order,
        total.unacknowledged,
        seq_skipped,
        seq_repeated,
    ));
    for (name, grp) in [("killed node's", &groups[0]), ("other nodes'", &groups[1])] {
        out.say(format!(
            "  {name} {} clients: missed {} (in {} clients), duplicates {} (in {}), out of order {} (in {})",
            grp.connections,
            grp.check.missed,
            grp.with_misses,
            grp.check.duplicates,
            grp.with_duplicates,
            grp.check.out_of_order,
            grp.with_out_of_order,
        ));
    }
    if !skip.is_empty() {
        out.say(format!(
            "  left away {} clients: missed {} (in {} clients)",
            groups[2].connections, groups[2].check.missed, groups[2].with_misses
        ));
    }
    out.say(format!(
        "delivery latency (replays included): {}",
        hist_line(&rep.delivery)
    ));
    out.say(format!("POST latency: {}", hist_line(&post_latency)));
    out.say(format!("connection errors: {}", errors_line(&rep.errors)));
    out.say(format!(
        "activeConnections after every client closed (1000): {}",
        active_after.map(|v| v.to_string()).unwrap_or("?".into())
    ));
    Ok(json!({
        "scenario": "node-kill",
        "nodes": nodes,
        "n": a.n,
        "perUser": per_user,
        "users": users,
        "killedNode": node_id,
        "killedNodeConnections": victims.len(),
        "leftAway": skip.len(),
        "resumeAt": a.resume_at,
        "resumeFromWelcome": a.resume_from_welcome,
        "heartbeatMs": heartbeat_ms,
        "leaseMs": lease_ms,
        "opened": c0.opened,
        "rounds": rounds,
        "roundsBeforeKill": rounds_at_kill,
        "posts": sender.posts.load(SeqCst),
        "postErrors": post_errors,
        "postLatencyUs": hist_json(&post_latency),
        "killToSocketsDroppedMs": span_ms(dropped, kill),
        "killToLeaseEndMs": span_ms(lease_end, kill),
        "killToResumeStartMs": span_ms(resume_start, kill),
        "killToEntryGoneMs": span_ms(gone, kill),
        "killToAllResumedMs": span_ms(last_resumed, kill),
        "leaseEndToAllResumedMs": lease_to_all,
        "detachedEvents": detached_ms.len(),
        "leaseEndToFirstDetachedMs": span_ms(first_detached, lease_end),
        "leaseEndToLastDetachedMs": span_ms(last_detached, lease_end),
        "firstDetachedToAllResumedMs": detached_to_all,
        "allBack": all_back,
        "expectedBack": expected_back,
        "resumed": c.resumed,
        "fresh": c.fresh,
        "resumeFailed": c.resume_failed,
        "resumeLatencyUs": hist_json(&rep.resume),
        "resumeTcpConnectUs": hist_json(&rep.resume_tcp),
        "messagesOwed": total.expected,
        "messagesReceived": total.received,
        "missed": total.missed,
        "duplicates": total.duplicates,
        "outOfOrder": total.out_of_order,
        "receivedOfFailedPosts": total.unacknowledged,
        "seqSkipped": seq_skipped,
        "seqRepeated": seq_repeated,
        "killedNodeClients": group_json(&groups[0]),
        "otherClients": group_json(&groups[1]),
        "leftAwayClients": group_json(&groups[2]),
        "deliveryLatencyUs": hist_json(&rep.delivery),
        "leaseWatch": watched.err(),
        "activeConnectionsAfterClose": active_after,
        "errors": errors_json(&rep.errors),
        "server": target.describe(),
    }))
}
