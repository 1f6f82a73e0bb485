//! The scenarios (node-kill has its own file). Each returns its figures as one JSON
//! object and prints a human summary (to stdout, or to stderr when `--json` owns stdout).
//! With `--cluster N` connect, churn, fanout and session-sync run against N nodes over one
//! Redis: connections spread over the nodes round-robin, and so are API calls.

use crate::cli::{ChurnArgs, ConnectArgs, FanoutArgs, Global, ReattachArgs, SessionSyncArgs};
use crate::conn::{Auth, ConnParams, ConnSpec, Counts, Pool, Tap};
use crate::fleet::{Fleet, FleetPlan};
use crate::server::ServerOpts;
use crate::target::Target;
use crate::util::{self, fmt_bytes, hist_json, hist_line, now_ns, Progress, R};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::sleep;

/// Human output: stdout, or stderr when `--json` prints the figures on stdout.
pub struct Out {
    pub json: bool,
    pub progress: bool,
}

impl Out {
    pub fn say(&self, s: impl std::fmt::Display) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

// ---------------------------------------------------------------- shared steps

pub fn server_opts(g: &Global, auto: &[(&str, String)]) -> ServerOpts {
    let mut args: Vec<String> = vec!["--log-level".into(), g.server_log_level.clone()];
    let mut flag = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            args.push(format!("--{name}"));
            args.push(v);
        }
    };
    flag("durability", g.durability.clone());
    flag("max-per-user", g.max_per_user.map(|v| v.to_string()));
    flag("max-total", g.max_total.map(|v| v.to_string()));
    flag(
        "messages-per-minute",
        g.messages_per_minute.map(|v| v.to_string()),
    );
    flag(
        "heartbeat-interval-ms",
        g.heartbeat_interval_ms.map(|v| v.to_string()),
    );
    flag(
        "resume-grace-seconds",
        g.resume_grace_seconds.map(|v| v.to_string()),
    );
    for (k, v) in auto {
        let name = k.trim_start_matches('-');
        if !args.iter().any(|a| a == &format!("--{name}")) {
            args.push(format!("--{name}"));
            args.push(v.clone());
        }
    }
    args.extend(g.server_args.iter().cloned());
    ServerOpts {
        url: g.url.clone(),
        data_dir: g.data_dir.clone(),
        bin: g
            .server_bin
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tether").into()),
        args,
        ready_timeout: Duration::from_secs(g.ready_timeout_secs),
        keep_data: g.keep_data,
        secrets: None,
        label: "server".into(),
    }
}

/// Flags for cluster nodes only: heartbeat and lease, when given.
pub fn cluster_flags(g: &Global, heartbeat_ms: Option<u64>, lease_ms: Option<u64>) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(h) = g.node_heartbeat_ms.or(heartbeat_ms) {
        v.extend(["--node-heartbeat-ms".to_string(), h.to_string()]);
    }
    if let Some(l) = g.node_lease_ms.or(lease_ms) {
        v.extend(["--node-lease-ms".to_string(), l.to_string()]);
    }
    v
}

pub async fn start_target(g: &Global, out: &Out, auto: &[(&str, String)]) -> R<Target> {
    start_target_with(g, out, auto, &cluster_flags(g, None, None)).await
}

pub async fn start_target_with(
    g: &Global,
    out: &Out,
    auto: &[(&str, String)],
    cluster_extra: &[String],
) -> R<Target> {
    if g.url.is_some() {
        let given = g.durability.is_some()
            || g.max_per_user.is_some()
            || g.max_total.is_some()
            || g.messages_per_minute.is_some()
            || g.heartbeat_interval_ms.is_some()
            || g.resume_grace_seconds.is_some()
            || !g.server_args.is_empty();
        if given {
            eprintln!(
                "warning: server flags are ignored with --url (the server is already running)"
            );
        }
    }
    let t = Target::start(g, server_opts(g, auto), cluster_extra).await?;
    out.say(t.summary());
    Ok(t)
}

/// With an attached server, warn when its per-user limit would evict.
async fn check_per_user(server: &Target, per_user: usize) {
    if let Ok(l) = server.api.get("/v1/limits").await {
        if let Some(max) = l["maxPerUser"].as_u64() {
            if per_user as u64 > max {
                eprintln!(
                    "warning: {per_user} connections per user but the server allows {max}: expect evictions (4505)"
                );
            }
        }
    }
}

pub fn fleet_plan(
    g: &Global,
    s: &Target,
    n: usize,
    per_user: usize,
    rate: f64,
    prefix: &str,
) -> FleetPlan {
    FleetPlan {
        n,
        per_user: per_user.max(1),
        user_prefix: prefix.to_string(),
        rate,
        jwt_secret: s.jwt_secret.clone(),
        token_ttl_secs: g.token_ttl_secs,
        addrs: s.addrs(),
        connect_timeout: Duration::from_millis(g.connect_timeout_ms),
        resume_from_received: false,
        track_order: false,
        max_connecting: g.max_connecting,
        raw_readers: 0,
        per_process: g.per_process.max(1),
        first_src_octet: g.first_src_octet,
    }
}

/// A shared view of the fleet's counters for the progress thread.
pub type CountsCell = Arc<Mutex<Counts>>;

/// Waits until `expected` connections have finished resuming (back, fresh or refused), or
/// until `deadline`, showing progress. True when all came back in time.
pub async fn wait_resumed(
    fleet: &mut Fleet,
    out: &Out,
    expected: u64,
    deadline: Instant,
    poll: Duration,
) -> R<bool> {
    let cell: CountsCell = Arc::default();
    let _p = counts_progress(out, "resume", expected, &cell, |c| {
        (
            c.resume_done(),
            format!(
                "resumed {} fresh {} failed {}",
                c.resumed, c.fresh, c.resume_failed
            ),
        )
    });
    loop {
        fleet.check_alive()?;
        let c = fleet.counts();
        *cell.lock().unwrap() = c.clone();
        if c.resume_done() >= expected {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        sleep(poll).await;
    }
}

pub fn counts_progress(
    out: &Out,
    label: &str,
    total: u64,
    cell: &CountsCell,
    f: fn(&Counts) -> (u64, String),
) -> Progress {
    let cell = cell.clone();
    Progress::start(out.progress, label, total, move || f(&cell.lock().unwrap()))
}

/// Waits until every connection attempt of the fleet has an outcome. Returns false when
/// `within` has passed and no attempt has had an outcome for `STALLED` (a server that
/// admits slowly, as under `--max-connecting`, is waited for while it makes progress).
async fn wait_opened(
    fleet: &mut Fleet,
    n: usize,
    within: Duration,
    cell: &CountsCell,
    mut on_tick: impl FnMut(&Counts),
) -> R<bool> {
    const STALLED: Duration = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    let mut last_done = 0;
    let mut last_progress = Instant::now();
    loop {
        fleet.check_alive()?;
        let c = fleet.counts();
        *cell.lock().unwrap() = c.clone();
        on_tick(&c);
        if c.open_done() as usize >= n {
            return Ok(true);
        }
        if c.open_done() > last_done {
            last_done = c.open_done();
            last_progress = Instant::now();
        }
        if Instant::now() > deadline && last_progress.elapsed() > STALLED {
            return Ok(false);
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Waits, with a progress line named `label`, until the fleet's `n` connections (opened at
/// `rate` per second) all have an outcome. Returns false when the deadline passed first.
pub async fn open_all(
    g: &Global,
    out: &Out,
    fleet: &mut Fleet,
    label: &str,
    n: usize,
    rate: f64,
) -> R<bool> {
    let cell: CountsCell = Arc::default();
    let _p = counts_progress(out, label, n as u64, &cell, open_line);
    wait_opened(fleet, n, open_deadline(n, rate, g), &cell, |_| {}).await
}

fn open_deadline(n: usize, rate: f64, g: &Global) -> Duration {
    let pacing = if rate > 0.0 { n as f64 / rate } else { 0.0 };
    Duration::from_secs_f64(pacing * 1.5 + 30.0) + Duration::from_millis(g.connect_timeout_ms)
}

pub fn open_line(c: &Counts) -> (u64, String) {
    (
        c.open_done(),
        format!("open {} failed {}", c.opened, c.failed),
    )
}

pub fn errors_json(e: &BTreeMap<String, u64>) -> Value {
    json!(e)
}

pub fn errors_line(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        "none".into()
    } else {
        e.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// CPU of the nodes and of Redis (clock ticks) at one moment, for figures per operation.
struct CpuMark {
    nodes: Option<u64>,
    redis: Option<u64>,
}

impl CpuMark {
    fn now(t: &Target) -> CpuMark {
        CpuMark {
            nodes: t.cpu_ticks(),
            redis: t.redis_cpu_ticks(),
        }
    }

    /// Microseconds of CPU per operation since `self`: (nodes, Redis).
    fn per_op(&self, t: &Target, ops: u64) -> (Option<f64>, Option<f64>) {
        let now = CpuMark::now(t);
        let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if ops > 0 => {
                Some(b.saturating_sub(a) as f64 * 1e6 / util::clk_tck() as f64 / ops as f64)
            }
            _ => None,
        };
        (per(self.nodes, now.nodes), per(self.redis, now.redis))
    }
}

fn us_or_q(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} us")).unwrap_or("?".into())
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

// ---------------------------------------------------------------- connect

pub async fn connect(g: &Global, a: &ConnectArgs, out: &Out) -> R<Value> {
    if !a.vs_embedded {
        return connect_run(g, a, out).await;
    }
    if g.cluster.unwrap_or(0) == 0 {
        return Err(
            "--vs-embedded compares a cluster with one embedded server: add --cluster N".into(),
        );
    }
    if a.plot.is_some() {
        return Err("--vs-embedded draws no plot: drop --plot".into());
    }
    let mut embedded_g = g.clone();
    embedded_g.cluster = None;
    out.say("== embedded (one server, sled)");
    let embedded = connect_run(&embedded_g, a, out).await?;
    out.say(format!(
        "== cluster ({} nodes over one Redis)",
        g.cluster.unwrap_or(0)
    ));
    let cluster = connect_run(g, a, out).await?;
    let ratio = |k: &str| match (cluster[k].as_f64(), embedded[k].as_f64()) {
        (Some(c), Some(e)) if e > 0.0 => json!(c / e),
        _ => Value::Null,
    };
    let ratios = json!({
        "connectsPerSec": ratio("connectsPerSec"),
        "cpuPerConnectUs": ratio("cpuPerConnectUs"),
        "cpuPerConnectWithRedisUs": match (cluster["cpuPerConnectWithRedisUs"].as_f64(), embedded["cpuPerConnectUs"].as_f64()) {
            (Some(c), Some(e)) if e > 0.0 => json!(c / e),
            _ => Value::Null,
        },
        "rssPerConnBytes": ratio("rssPerConnBytes"),
        "welcomeP50": match (cluster["welcomeLatencyUs"]["p50"].as_f64(), embedded["welcomeLatencyUs"]["p50"].as_f64()) {
            (Some(c), Some(e)) if e > 0.0 => json!(c / e),
            _ => Value::Null,
        },
    });
    let f = |v: &Value| v.as_f64().map(|x| format!("{x:.2}x")).unwrap_or("?".into());
    out.say(format!(
        "cluster / embedded: connects/s {}, nodes' CPU per connect {}, with Redis's {}, RSS per connection {}, welcome p50 {}",
        f(&ratios["connectsPerSec"]),
        f(&ratios["cpuPerConnectUs"]),
        f(&ratios["cpuPerConnectWithRedisUs"]),
        f(&ratios["rssPerConnBytes"]),
        f(&ratios["welcomeP50"]),
    ));
    Ok(json!({
        "scenario": "connect",
        "vsEmbedded": true,
        "embedded": embedded,
        "cluster": cluster,
        "clusterOverEmbedded": ratios,
    }))
}

async fn connect_run(g: &Global, a: &ConnectArgs, out: &Out) -> R<Value> {
    let mut auto = Vec::new();
    if a.per_user > 10 {
        auto.push(("--max-per-user", a.per_user.to_string()));
    }
    if a.n > 100_000 {
        auto.push(("--max-total", (a.n + 1000).to_string()));
    }
    let mut server = start_target(g, out, &auto).await?;
    check_per_user(&server, a.per_user).await;
    let rss0 = server.rss_any().await;
    let cpu0 = server.cpu_ticks();
    let redis_cpu0 = server.redis_cpu_ticks();
    let redis_rss0 = server.redis_rss();
    let active0 = server.active_connections().await.ok();
    let plan = fleet_plan(g, &server, a.n, a.per_user, a.rate, &a.user_prefix);
    let mut fleet = Fleet::start(&plan)?;
    let t0 = now_ns();
    out.say(format!(
        "connect: {} connections, {} per user, target {}/s{}",
        a.n,
        a.per_user,
        a.rate,
        match fleet.workers() {
            0 => String::new(),
            w => format!(", {w} worker processes"),
        }
    ));
    let cell: CountsCell = Arc::default();
    let step = (a.n / 20).max(1) as u64;
    let mut next_sample = step;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let all_done = {
        let _p = counts_progress(out, "connect", a.n as u64, &cell, open_line);
        let srv = &server;
        wait_opened(&mut fleet, a.n, open_deadline(a.n, a.rate, g), &cell, |c| {
            while c.opened >= next_sample {
                if let Some(r) = srv.rss() {
                    samples.push((c.opened, r));
                }
                next_sample += step;
            }
        })
        .await?
    };
    let cpu1 = server.cpu_ticks();
    let redis_cpu1 = server.redis_cpu_ticks();
    let c = fleet.counts();
    let phase_ns = if c.last_open_ns > 0 {
        c.last_open_ns
            .saturating_sub(c.first_attempt_ns.max(t0).min(c.last_open_ns))
    } else {
        now_ns() - t0
    };
    sleep(Duration::from_millis(a.settle_ms)).await;
    let rss1 = server.rss_any().await;
    let redis_rss1 = server.redis_rss();
    if let Some(r) = rss1 {
        samples.push((c.opened, r));
    }
    let active1 = server.active_connections().await.ok();
    if a.hold_secs > 0 {
        out.say(format!(
            "holding {} connections for {} s",
            c.opened, a.hold_secs
        ));
        let _p = counts_progress(out, "hold", c.opened, &cell, |c| {
            (
                c.open_now.max(0) as u64,
                format!("server-closed {}", c.server_closed),
            )
        });
        let end = Instant::now() + Duration::from_secs(a.hold_secs);
        while Instant::now() < end {
            fleet.check_alive()?;
            *cell.lock().unwrap() = fleet.counts();
            sleep(Duration::from_millis(100)).await;
        }
    }
    let rep = fleet.close(Duration::from_secs(30)).await?;
    // Every clean close must be stored: the count comes back to where it started.
    let (active_closed, close_settle) = match active0 {
        Some(start) => {
            let t = Instant::now();
            let mut now = server.active_connections().await.ok();
            while now != Some(start) && t.elapsed() < Duration::from_secs(a.close_settle_secs) {
                sleep(Duration::from_millis(100)).await;
                now = server.active_connections().await.ok();
            }
            (now, (now == Some(start)).then(|| t.elapsed().as_secs_f64()))
        }
        None => (None, None),
    };
    let opened = c.opened.max(1) as f64;
    let per_conn = match (rss0, rss1) {
        (Some(b), Some(a2)) => Some((a2 as f64 - b as f64) / opened),
        _ => None,
    };
    let per_connect = |t0: Option<u64>, t1: Option<u64>| match (t0, t1) {
        (Some(b), Some(a2)) => {
            Some(a2.saturating_sub(b) as f64 * 1e6 / util::clk_tck() as f64 / opened)
        }
        _ => None,
    };
    let cpu_per = per_connect(cpu0, cpu1);
    let redis_cpu_per = per_connect(redis_cpu0, redis_cpu1);
    let redis_rss_per = match (redis_rss0, redis_rss1) {
        (Some(b), Some(a2)) => Some((a2 as f64 - b as f64) / opened),
        _ => None,
    };
    let with_redis = match (cpu_per, redis_cpu_per) {
        (Some(x), Some(y)) => Some(x + y),
        _ => None,
    };
    let rate = c.opened as f64 / secs(phase_ns).max(1e-9);
    if let Some(path) = &a.plot {
        let svg = crate::svg::connect_plot(
            &format!("connect n={}", a.n),
            &rep.welcome,
            rss0.unwrap_or(0),
            &samples,
        );
        std::fs::write(path, svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
        out.say(format!("plot written to {}", path.display()));
    }
    server.stop_quietly().await;
    let cluster = server.is_cluster();
    let nodes = if cluster {
        " (summed over the nodes)"
    } else {
        ""
    };
    out.say(format!(
        "opened {}/{} ({} failed) in {:.2} s = {:.0} connects/s{}",
        c.opened,
        a.n,
        c.failed,
        secs(phase_ns),
        rate,
        if all_done {
            ""
        } else {
            " (TIMED OUT waiting for the rest)"
        }
    ));
    out.say(format!("handshake-to-welcome: {}", hist_line(&rep.welcome)));
    out.say(format!("  of which TCP connect: {}", hist_line(&rep.tcp)));
    out.say(format!(
        "server RSS{nodes}: {} -> {} = {} per connection",
        rss0.map(|v| fmt_bytes(v as f64)).unwrap_or("?".into()),
        rss1.map(|v| fmt_bytes(v as f64)).unwrap_or("?".into()),
        per_conn.map(fmt_bytes).unwrap_or("?".into())
    ));
    out.say(format!(
        "server CPU per connect{nodes}: {}",
        cpu_per.map(|v| format!("{v:.1} us")).unwrap_or("?".into())
    ));
    if cluster {
        out.say(format!(
            "Redis: CPU per connect {}, RSS {} per connection; nodes + Redis: {} per connect",
            redis_cpu_per
                .map(|v| format!("{v:.1} us"))
                .unwrap_or("?".into()),
            redis_rss_per.map(fmt_bytes).unwrap_or("?".into()),
            with_redis
                .map(|v| format!("{v:.1} us"))
                .unwrap_or("?".into()),
        ));
    }
    out.say(format!(
        "activeConnections: before {} after {}, after the clean closes {} ({})",
        active0.map(|v| v.to_string()).unwrap_or("?".into()),
        active1.map(|v| v.to_string()).unwrap_or("?".into()),
        active_closed.map(|v| v.to_string()).unwrap_or("?".into()),
        match close_settle {
            Some(s) => format!("back in {s:.1} s"),
            None => format!("NOT back after {} s", a.close_settle_secs),
        }
    ));
    out.say(format!("errors: {}", errors_line(&rep.errors)));
    Ok(json!({
        "scenario": "connect",
        "nodes": server.nodes.len(),
        "cluster": cluster,
        "n": a.n,
        "perUser": a.per_user,
        "targetRate": a.rate,
        "workers": fleet.workers(),
        "opened": c.opened,
        "failed": c.failed,
        "complete": all_done,
        "connectPhaseSecs": secs(phase_ns),
        "connectsPerSec": rate,
        "welcomeLatencyUs": hist_json(&rep.welcome),
        "tcpConnectUs": hist_json(&rep.tcp),
        "rssBeforeBytes": rss0,
        "rssAfterBytes": rss1,
        "rssPerConnBytes": per_conn,
        "cpuPerConnectUs": cpu_per,
        "redisCpuPerConnectUs": redis_cpu_per,
        "redisRssPerConnBytes": redis_rss_per,
        "cpuPerConnectWithRedisUs": with_redis,
        "cpuTicks": {
            "nodes": [cpu0, cpu1],
            "redis": [redis_cpu0, redis_cpu1],
            "perSecond": util::clk_tck(),
        },
        "activeConnectionsBefore": active0,
        "activeConnectionsAfter": active1,
        "activeConnectionsAfterClose": active_closed,
        "closeSettleSecs": close_settle,
        "serverClosed": rep.counts.server_closed,
        "errors": errors_json(&rep.errors),
        "rssSamples": samples,
        "server": server.describe(),
    }))
}

// ---------------------------------------------------------------- churn

pub async fn churn(g: &Global, a: &ChurnArgs, out: &Out) -> R<Value> {
    let mut server = start_target(g, out, &[]).await?;
    let active0 = server.active_connections().await?;
    let concurrent = a.rate * a.hold_ms as f64 / 1000.0;
    if concurrent > g.per_process as f64 {
        return Err(format!(
            "churn holds about {concurrent:.0} connections at once (rate x hold): over --per-process {}; lower --hold-ms",
            g.per_process
        ));
    }
    // Warm-up: the same churn, unmeasured, so that caches and the bounded event log reach
    // their working size before the RSS baseline is taken. Growth after that is a leak.
    let mut rss_start = None;
    if a.warmup_secs > 0 {
        rss_start = server.rss_any().await;
        out.say(format!("churn: warm-up for {} s", a.warmup_secs));
        let warm = churn_phase(g, a, out, &server, a.warmup_secs, "warm-up").await?;
        drop(warm);
        let t = Instant::now();
        while server.active_connections().await? != active0
            && t.elapsed() < Duration::from_secs(a.settle_secs)
        {
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_millis(a.settle_extra_ms)).await;
    }
    let rss0 = server.rss_any().await;
    let total = (a.rate * a.duration_secs as f64).round() as usize;
    out.say(format!(
        "churn: {total} connections at {}/s for {} s, each held {} ms then closed (1000)",
        a.rate, a.duration_secs, a.hold_ms
    ));
    let t0 = Instant::now();
    let pool = churn_phase(g, a, out, &server, a.duration_secs, "churn").await?;
    let wall = t0.elapsed();
    let rep = pool.stats.report();
    let c = &rep.counts;
    // Settle: the server's count must come back to where it started.
    let settle_t0 = Instant::now();
    let mut active1 = server.active_connections().await?;
    while active1 != active0 && settle_t0.elapsed() < Duration::from_secs(a.settle_secs) {
        sleep(Duration::from_millis(200)).await;
        active1 = server.active_connections().await?;
    }
    let settled = active1 == active0;
    let settle_secs = settle_t0.elapsed().as_secs_f64();
    sleep(Duration::from_millis(a.settle_extra_ms)).await;
    let rss1 = server.rss_any().await;
    let growth = match (rss0, rss1) {
        (Some(b), Some(a2)) if b > 0 => Some((a2 as f64 - b as f64) * 100.0 / b as f64),
        _ => None,
    };
    server.stop_quietly().await;
    let open_rate = c.opened as f64 / wall.as_secs_f64();
    out.say(format!(
        "attempted {} opened {} failed {} clean-closed {} unclean {} in {:.1} s ({:.0} opens/s)",
        c.attempts,
        c.opened,
        c.failed,
        c.clean_closed,
        c.unclean_closed,
        wall.as_secs_f64(),
        open_rate
    ));
    out.say(format!("handshake-to-welcome: {}", hist_line(&rep.welcome)));
    out.say(format!(
        "activeConnections: before {active0}, after {active1} ({} after {settle_secs:.1} s)",
        if settled { "settled" } else { "NOT settled" }
    ));
    out.say(format!(
        "server RSS: {} -> {} ({})",
        rss0.map(|v| fmt_bytes(v as f64)).unwrap_or("?".into()),
        rss1.map(|v| fmt_bytes(v as f64)).unwrap_or("?".into()),
        growth.map(|g| format!("{g:+.1} %")).unwrap_or("?".into())
    ));
    out.say(format!("errors: {}", errors_line(&rep.errors)));
    Ok(json!({
        "scenario": "churn",
        "nodes": server.nodes.len(),
        "targetRate": a.rate,
        "durationSecs": a.duration_secs,
        "holdMs": a.hold_ms,
        "attempted": c.attempts,
        "opened": c.opened,
        "failed": c.failed,
        "cleanClosed": c.clean_closed,
        "uncleanClosed": c.unclean_closed,
        "serverClosed": c.server_closed,
        "wallSecs": wall.as_secs_f64(),
        "opensPerSec": open_rate,
        "welcomeLatencyUs": hist_json(&rep.welcome),
        "activeConnectionsBefore": active0,
        "activeConnectionsAfter": active1,
        "settled": settled,
        "settleSecs": settle_secs,
        "warmupSecs": a.warmup_secs,
        "rssStartBytes": rss_start,
        "warmupSecs": a.warmup_secs,
        "rssStartBytes": rss_start,
        "rssBeforeBytes": rss0,
        "rssAfterBytes": rss1,
        "rssGrowthPercent": growth,
        "errors": errors_json(&rep.errors),
        "server": server.describe(),
    }))
}

/// Opens connections at `a.rate` for `secs`, each closed cleanly after `a.hold_ms`.
async fn churn_phase(
    g: &Global,
    a: &ChurnArgs,
    out: &Out,
    server: &Target,
    secs: u64,
    label: &'static str,
) -> R<Pool> {
    let total = (a.rate * secs as f64).round() as usize;
    let mut pool = Pool::new(ConnParams {
        addrs: server.addrs(),
        ..ConnParams::to(
            server.addrs()[0],
            Duration::from_millis(g.connect_timeout_ms),
        )
    });
    let stats = pool.stats.clone();
    let _p = Progress::start(out.progress, label, total as u64, move || {
        let c = stats.counts();
        (
            c.finished,
            format!(
                "open now {} failed {} clean {}",
                c.open_now, c.failed, c.clean_closed
            ),
        )
    });
    let hold = Duration::from_millis(a.hold_ms);
    let secret = server.jwt_secret.clone();
    let prefix = a.user_prefix.clone();
    let users = a.users.max(1);
    let ttl = g.token_ttl_secs;
    crate::conn::pace(total, a.rate, |k| {
        let tok = util::mint_jwt(&secret, &format!("{prefix}{}", k % users), ttl)?;
        pool.spawn(
            ConnSpec {
                idx: k,
                auth: Auth::Token(tok),
                close_after: Some(hold),
            },
            None,
        );
        Ok(())
    })
    .await?;
    let stuck = pool
        .join_all(hold + Duration::from_millis(g.connect_timeout_ms) + Duration::from_secs(15))
        .await;
    if stuck > 0 {
        eprintln!("warning: {stuck} connection tasks did not finish in time");
    }
    Ok(pool)
}

// ---------------------------------------------------------------- fanout

pub async fn fanout(g: &Global, a: &FanoutArgs, out: &Out) -> R<Value> {
    let n = a.users * a.per_user;
    let mut auto = Vec::new();
    if a.per_user > 10 {
        auto.push(("--max-per-user", a.per_user.to_string()));
    }
    if n > 100_000 {
        auto.push(("--max-total", (n + 1000).to_string()));
    }
    let mut server = start_target(g, out, &auto).await?;
    check_per_user(&server, a.per_user).await;
    let plan = FleetPlan {
        raw_readers: a.readers,
        ..fleet_plan(g, &server, n, a.per_user, a.rate, &a.user_prefix)
    };
    let mut fleet = Fleet::start(&plan)?;
    out.say(format!(
        "fanout: {} users x {} connections, {} messages per user{}; {}",
        a.users,
        a.per_user,
        a.messages,
        match fleet.workers() {
            0 => String::new(),
            w => format!(", {w} worker processes"),
        },
        match a.readers {
            0 => "a task per connection reads it".to_string(),
            r => format!("{r} raw reader threads per process read them"),
        }
    ));
    let complete = open_all(g, out, &mut fleet, "connect", n, a.rate).await?;
    let c0 = fleet.counts();
    if c0.opened == 0 {
        let rep = fleet.close(Duration::from_secs(10)).await?;
        return Err(format!(
            "no connection opened; errors: {}",
            errors_line(&rep.errors)
        ));
    }
    out.say(format!(
        "{} connections open ({} failed)",
        c0.opened, c0.failed
    ));
    if c0.failed > 0 {
        let rep = fleet.report(Duration::from_secs(30)).await?;
        out.say(format!("connect errors: {}", errors_line(&rep.errors)));
    }

    // Warm-up rounds (not measured), then the measured ones.
    let mut post_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut warm_delivered = 0u64;
    if a.warmup_messages > 0 {
        let mut ignored = util::new_hist();
        warm_delivered = send_rounds(
            &server,
            &plan,
            a,
            a.warmup_messages,
            false,
            out,
            &mut ignored,
            &mut post_errors,
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(a.deliver_timeout_secs);
        while fleet.counts().messages < warm_delivered {
            fleet.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "warm-up: {} of {warm_delivered} messages arrived before the deadline",
                    fleet.counts().messages
                ));
            }
            sleep(Duration::from_millis(10)).await;
        }
        out.say(format!(
            "warm-up: {} messages per user delivered ({warm_delivered} frames), not measured",
            a.warmup_messages
        ));
    }
    let cpu0 = server.cpu_ticks();
    let mut send_hist = util::new_hist();
    let first_send = now_ns();
    let cpu_mark = CpuMark::now(&server);
    let client_cpu0 = fleet.cpu_ticks();
    let delivered_total = warm_delivered
        + send_rounds(
            &server,
            &plan,
            a,
            a.messages,
            true,
            out,
            &mut send_hist,
            &mut post_errors,
        )
        .await?;
    let sent_done = now_ns();
    // Wait for the deliveries the server acknowledged.
    let deadline = Instant::now() + Duration::from_secs(a.deliver_timeout_secs);
    let all_received = {
        let cell: CountsCell = Arc::default();
        let _p = counts_progress(out, "receive", delivered_total, &cell, |c| {
            (c.messages, String::new())
        });
        loop {
            fleet.check_alive()?;
            let c = fleet.counts();
            *cell.lock().unwrap() = c.clone();
            if c.messages >= delivered_total {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            sleep(Duration::from_millis(10)).await;
        }
    };
    let measured_now = fleet.counts().messages.saturating_sub(warm_delivered);
    let (cpu_per_frame, redis_cpu_per_frame) = cpu_mark.per_op(&server, measured_now);
    let client_cpu_per_frame = match (client_cpu0, fleet.cpu_ticks()) {
        (Some(a0), Some(a1)) if measured_now > 0 => {
            Some(a1.saturating_sub(a0) as f64 * 1e6 / util::clk_tck() as f64 / measured_now as f64)
        }
        _ => None,
    };
    // Server CPU from the first measured send until the last frame arrived.
    let cpu1 = server.cpu_ticks();
    let rep = fleet.report(Duration::from_secs(30)).await?;
    let cfinal = fleet.close(Duration::from_secs(30)).await?;
    server.stop_quietly().await;
    let c = &rep.counts;
    let measured = c.messages.saturating_sub(warm_delivered);
    let cpu_secs = match (cpu0, cpu1) {
        (Some(b), Some(a2)) => Some((a2 - b) as f64 / util::clk_tck() as f64),
        _ => None,
    };
    let wall_ns = c.last_frame_ns.saturating_sub(first_send).max(1);
    let per_sec = measured as f64 / secs(wall_ns);
    out.say(format!(
        "sent {} POSTs in {:.2} s (server said delivered {}); POST latency {}",
        a.messages * a.users,
        secs(sent_done - first_send),
        delivered_total - warm_delivered,
        hist_line(&send_hist)
    ));
    out.say(format!(
        "received {} message frames{} in {:.2} s = {:.0} messages/s delivered",
        measured,
        if all_received {
            ""
        } else {
            " (INCOMPLETE: timed out)"
        },
        secs(wall_ns),
        per_sec
    ));
    out.say(format!("delivery latency: {}", hist_line(&rep.delivery)));
    out.say(format!(
        "CPU per frame delivered: server{} {}{}, load generator {}",
        if server.is_cluster() { " (nodes)" } else { "" },
        us_or_q(cpu_per_frame),
        if server.is_cluster() {
            format!(", Redis {}", us_or_q(redis_cpu_per_frame))
        } else {
            String::new()
        },
        us_or_q(client_cpu_per_frame)
    ));
    out.say(format!("errors: {}", errors_line(&cfinal.errors)));
    if !post_errors.is_empty() {
        out.say(format!("POST errors: {}", errors_line(&post_errors)));
    }
    Ok(json!({
        "scenario": "fanout",
        "nodes": server.nodes.len(),
        "users": a.users,
        "perUser": a.per_user,
        "messages": a.messages,
        "workers": fleet.workers(),
        "readers": a.readers,
        "opened": c0.opened,
        "failedConnects": c0.failed,
        "connectComplete": complete,
        "posts": a.messages * a.users,
        "postLatencyUs": hist_json(&send_hist),
        "postErrors": post_errors,
        "warmupMessages": a.warmup_messages,
        "serverDelivered": delivered_total - warm_delivered,
        "framesReceived": measured,
        "allReceived": all_received,
        "wallSecs": secs(wall_ns),
        "messagesPerSec": per_sec,
        "deliveryLatencyUs": hist_json(&rep.delivery),
        "cpuPerFrameUs": cpu_per_frame,
        "redisCpuPerFrameUs": redis_cpu_per_frame,
        "clientCpuPerFrameUs": client_cpu_per_frame,
        "serverCpuSecs": cpu_secs,
        "errors": errors_json(&cfinal.errors),
        "server": server.describe(),
    }))
}

/// Sends `rounds` messages to every user of the plan, one POST at a time (each carries its
/// send time when `timed`, so the receivers can measure it). Returns the deliveries the
/// server reported.
#[allow(clippy::too_many_arguments)]
async fn send_rounds(
    server: &Target,
    plan: &FleetPlan,
    a: &FanoutArgs,
    rounds: usize,
    timed: bool,
    out: &Out,
    send_hist: &mut hdrhistogram::Histogram<u64>,
    post_errors: &mut BTreeMap<String, u64>,
) -> R<u64> {
    let mut delivered = 0u64;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = sent.clone();
    let _p = Progress::start(
        out.progress,
        if timed { "send" } else { "warm-up" },
        (rounds * a.users) as u64,
        move || (s2.load(std::sync::atomic::Ordering::Relaxed), String::new()),
    );
    let mut consecutive_failures = 0;
    for j in 0..rounds {
        for u in 0..a.users {
            let path = format!(
                "/v1/users/{}/messages",
                util::pct(&plan.user_of(u * a.per_user))
            );
            let t = now_ns();
            let data = if timed {
                json!({"t": t, "j": j})
            } else {
                json!({"warmup": j})
            };
            let r = server
                .api
                .send_json(reqwest::Method::POST, &path, &json!({ "data": data }))
                .await;
            util::record_us(send_hist, (now_ns() - t) / 1000);
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok((st, body)) if (200..300).contains(&st) => {
                    delivered += body["delivered"].as_u64().unwrap_or(0);
                    consecutive_failures = 0;
                }
                Ok((st, body)) => {
                    *post_errors.entry(format!("http_{st}")).or_default() += 1;
                    consecutive_failures += 1;
                    if consecutive_failures >= 5 {
                        return Err(format!("POST {path} keeps failing: HTTP {st} {body}"));
                    }
                }
                Err(e) => {
                    *post_errors.entry("request".into()).or_default() += 1;
                    consecutive_failures += 1;
                    if consecutive_failures >= 5 {
                        return Err(e);
                    }
                }
            }
        }
        if a.interval_ms > 0 {
            sleep(Duration::from_millis(a.interval_ms)).await;
        }
    }
    Ok(delivered)
}

// ---------------------------------------------------------------- session-sync

pub async fn session_sync(g: &Global, a: &SessionSyncArgs, out: &Out) -> R<Value> {
    let mut auto = Vec::new();
    if a.per_session > 10 {
        auto.push(("--max-per-user", a.per_session.to_string()));
    }
    let mut server = start_target(g, out, &auto).await?;
    // The PATCHes go to the first node, the session's sockets are on the last: in a
    // cluster every update crosses from one node to another through Redis.
    let patch_node = 0;
    let socket_node = server.nodes.len() - 1;
    // Idle others.
    let mut others = if a.others > 0 {
        let plan = fleet_plan(g, &server, a.others, 1, a.rate, &a.user_prefix);
        let mut f = Fleet::start(&plan)?;
        open_all(g, out, &mut f, "others", a.others, a.rate).await?;
        Some(f)
    } else {
        None
    };
    let others_open = others.as_ref().map(|f| f.counts().opened).unwrap_or(0);
    // The session and its connections.
    let (st, body) = server
        .api
        .send_json_to(
            patch_node,
            reqwest::Method::POST,
            "/v1/sessions",
            &json!({"userId": a.session_user}),
        )
        .await?;
    if !(200..300).contains(&st) {
        return Err(format!("POST /v1/sessions: HTTP {st}: {body}"));
    }
    let sid = body["sessionId"]
        .as_str()
        .ok_or_else(|| format!("POST /v1/sessions: no sessionId in {body}"))?
        .to_string();
    let mut pool = Pool::new(ConnParams::to(
        server.nodes[socket_node].addr,
        Duration::from_millis(g.connect_timeout_ms),
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<Tap>();
    for i in 0..a.per_session {
        pool.spawn(
            ConnSpec {
                idx: i,
                auth: Auth::Session(sid.clone()),
                close_after: None,
            },
            Some(tx.clone()),
        );
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_millis(g.connect_timeout_ms + 1000);
    loop {
        let c = pool.stats.counts();
        if c.open_done() as usize >= a.per_session {
            if c.failed > 0 {
                let errs = pool.stats.report().errors;
                return Err(format!(
                    "{} of {} session connections failed: {}",
                    c.failed,
                    a.per_session,
                    errors_line(&errs)
                ));
            }
            break;
        }
        if Instant::now() > deadline {
            return Err("session connections did not get their welcome in time".into());
        }
        sleep(Duration::from_millis(5)).await;
    }
    while rx.try_recv().is_ok() {}
    out.say(format!(
        "session-sync: {others_open} other connections idle, session {sid} with {} connections, {} PATCHes{}",
        a.per_session,
        a.updates,
        if server.is_cluster() {
            format!(" to node {patch_node}, its sockets on node {socket_node}")
        } else {
            String::new()
        }
    ));
    let mut hist = util::new_hist();
    let mut timeouts = 0u64;
    let mut patch_errors: BTreeMap<String, u64> = BTreeMap::new();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t_all = Instant::now();
    let cpu_mark = CpuMark::now(&server);
    {
        let d2 = done.clone();
        let _p = Progress::start(out.progress, "patch", a.updates as u64, move || {
            (d2.load(std::sync::atomic::Ordering::Relaxed), String::new())
        });
        let path = format!("/v1/sessions/{}", util::pct(&sid));
        for i in 0..a.updates as u64 {
            let t0 = now_ns();
            let body = json!({"data": {"n": i}});
            let patch = server
                .api
                .send_json_to(patch_node, reqwest::Method::PATCH, &path, &body);
            let per_session = a.per_session;
            let within = Duration::from_millis(a.update_timeout_ms);
            let wait = async {
                let deadline = tokio::time::Instant::now() + within;
                let mut got: HashSet<usize> = HashSet::new();
                let mut last = 0u64;
                while got.len() < per_session {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(tap)) => {
                            let f = &tap.frame;
                            if f["type"] == "session.updated"
                                && f["updates"]["n"].as_u64() == Some(i)
                                && got.insert(tap.idx)
                            {
                                last = last.max(tap.at_ns);
                            }
                        }
                        Ok(None) | Err(_) => return None,
                    }
                }
                Some(last)
            };
            let (p, w) = tokio::join!(patch, wait);
            match p {
                Ok((st, _)) if (200..300).contains(&st) => {}
                Ok((st, _)) => *patch_errors.entry(format!("http_{st}")).or_default() += 1,
                Err(_) => *patch_errors.entry("request".into()).or_default() += 1,
            }
            match w {
                Some(last) => util::record_us(&mut hist, last.saturating_sub(t0) / 1000),
                None => timeouts += 1,
            }
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if timeouts >= 10 && hist.is_empty() {
                break;
            }
        }
    }
    let wall = t_all.elapsed();
    let (cpu_per_update, redis_cpu_per_update) = cpu_mark.per_op(&server, a.updates as u64);
    pool.close_all(Duration::from_secs(10)).await;
    let srep = pool.stats.report();
    let orep = match others.as_mut() {
        Some(f) => Some(f.close(Duration::from_secs(30)).await?),
        None => None,
    };
    server.stop_quietly().await;
    out.say(format!(
        "PATCH -> session.updated on all {} connections: {}",
        a.per_session,
        hist_line(&hist)
    ));
    out.say(format!(
        "{} updates in {:.2} s, {timeouts} timed out (> {} ms), PATCH errors: {}",
        hist.len() + timeouts,
        wall.as_secs_f64(),
        a.update_timeout_ms,
        errors_line(&patch_errors)
    ));
    out.say(format!(
        "CPU per update: server{} {}{}",
        if server.is_cluster() { " (nodes)" } else { "" },
        us_or_q(cpu_per_update),
        if server.is_cluster() {
            format!(", Redis {}", us_or_q(redis_cpu_per_update))
        } else {
            String::new()
        }
    ));
    let mut errors = srep.errors.clone();
    if let Some(o) = &orep {
        for (k, v) in &o.errors {
            *errors.entry(format!("others:{k}")).or_default() += v;
        }
    }
    out.say(format!("connection errors: {}", errors_line(&errors)));
    Ok(json!({
        "scenario": "session-sync",
        "nodes": server.nodes.len(),
        "patchNode": patch_node,
        "socketNode": socket_node,
        "others": a.others,
        "othersOpened": others_open,
        "perSession": a.per_session,
        "updates": a.updates,
        "latencyUs": hist_json(&hist),
        "timeouts": timeouts,
        "patchErrors": patch_errors,
        "wallSecs": wall.as_secs_f64(),
        "cpuPerUpdateUs": cpu_per_update,
        "redisCpuPerUpdateUs": redis_cpu_per_update,
        "errors": errors_json(&errors),
        "server": server.describe(),
    }))
}

// ---------------------------------------------------------------- reattach

pub async fn reattach(g: &Global, a: &ReattachArgs, out: &Out) -> R<Value> {
    if g.url.is_some() {
        return Err("reattach stops and restarts the server: it needs a server spawned by the generator (drop --url)".into());
    }
    if g.cluster.unwrap_or(0) > 0 {
        return Err("reattach restarts one embedded server; in cluster mode see node-kill".into());
    }
    let mut auto = Vec::new();
    if a.per_user > 10 {
        auto.push(("--max-per-user", a.per_user.to_string()));
    }
    if a.n > 100_000 {
        auto.push(("--max-total", (a.n + 1000).to_string()));
    }
    let mut target = start_target(g, out, &auto).await?;
    let mut plan = fleet_plan(g, &target, a.n, a.per_user, a.rate, &a.user_prefix);
    let server = &mut target.nodes[0];
    plan.resume_from_received = a.resume_from_received;
    let mut fleet = Fleet::start(&plan)?;
    open_all(g, out, &mut fleet, "connect", a.n, a.rate).await?;
    let c0 = fleet.counts();
    out.say(format!(
        "reattach: {} connections open ({} failed)",
        c0.opened, c0.failed
    ));
    if c0.opened == 0 {
        return Err("no connection opened".into());
    }

    // One message per user.
    let users = a.n.div_ceil(a.per_user.max(1));
    let srv = &server;
    let results: Vec<R<(u16, Value)>> = futures_util::stream::iter(0..users)
        .map(|u| {
            let path = format!(
                "/v1/users/{}/messages",
                util::pct(&plan.user_of(u * a.per_user.max(1)))
            );
            async move {
                srv.send_json(
                    reqwest::Method::POST,
                    &path,
                    &json!({"data": {"t": now_ns(), "k": "before-restart"}}),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut delivered = 0u64;
    let mut post_errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        match r {
            Ok((st, body)) if (200..300).contains(&st) => {
                delivered += body["delivered"].as_u64().unwrap_or(0)
            }
            Ok((st, _)) => *post_errors.entry(format!("http_{st}")).or_default() += 1,
            Err(_) => *post_errors.entry("request".into()).or_default() += 1,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.counts().messages < delivered && Instant::now() < deadline {
        fleet.check_alive()?;
        sleep(Duration::from_millis(10)).await;
    }
    let live = fleet.counts().messages;
    out.say(format!(
        "sent {users} messages (server delivered {delivered}, received live {live})"
    ));

    // Stop.
    let rss_before = server.rss();
    let stop_took = server
        .stop(a.kill9, Duration::from_secs(a.stop_timeout_secs))
        .await?;
    out.say(format!(
        "server stopped with {} in {:.0} ms",
        if a.kill9 { "SIGKILL" } else { "SIGTERM" },
        stop_took.as_secs_f64() * 1e3
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.counts().open_now > 0 && Instant::now() < deadline {
        fleet.check_alive()?;
        sleep(Duration::from_millis(10)).await;
    }
    let still_open = fleet.counts().open_now;
    if still_open > 0 {
        eprintln!(
            "warning: {still_open} client sockets still look open 15 s after the server stopped"
        );
    }

    // Restart and resume all at once.
    let restart_t0 = Instant::now();
    let ready_took = server.restart().await?;
    let ready_ns = now_ns();
    out.say(format!(
        "server restarted: /ready after {:.0} ms",
        restart_t0.elapsed().as_secs_f64() * 1e3
    ));
    fleet.resume(&[server.addr], &[])?;
    let expected = c0.opened;
    let deadline = Instant::now() + Duration::from_secs(a.resume_timeout_secs);
    let all_back = wait_resumed(
        &mut fleet,
        out,
        expected,
        deadline,
        Duration::from_millis(10),
    )
    .await?;
    // Replays follow the welcome; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(a.replay_timeout_secs);
    loop {
        let c = fleet.counts();
        if c.recovered >= c.expected_recovered || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let rep = fleet.report(Duration::from_secs(30)).await?;
    let c = rep.counts.clone();
    let fin = fleet.close(Duration::from_secs(30)).await?;
    let rss_after = server.rss();
    server.stop_quietly().await;
    let to_all_back_ms = (c.last_reconnect_ns > 0)
        .then(|| (c.last_reconnect_ns.saturating_sub(ready_ns)) as f64 / 1e6);
    let to_all_resumed_ms =
        (c.resumed > 0).then(|| (c.last_resumed_ns.saturating_sub(ready_ns)) as f64 / 1e6);
    out.say(format!(
        "from /ready: all {} clients back in {} (last resumed at {}){}",
        expected,
        to_all_back_ms
            .map(|v| format!("{v:.0} ms"))
            .unwrap_or("?".into()),
        to_all_resumed_ms
            .map(|v| format!("{v:.0} ms"))
            .unwrap_or("?".into()),
        if all_back {
            ""
        } else {
            " (TIMED OUT waiting for some)"
        }
    ));
    out.say(format!(
        "resumed {} fresh {} failed {}; missed messages recovered {}/{}",
        c.resumed, c.fresh, c.resume_failed, c.recovered, c.expected_recovered
    ));
    out.say(format!(
        "resume command -> welcome: {}",
        hist_line(&rep.resume)
    ));
    out.say(format!(
        "  of which TCP connect: {}",
        hist_line(&rep.resume_tcp)
    ));
    out.say(format!("errors: {}", errors_line(&fin.errors)));
    Ok(json!({
        "scenario": "reattach",
        "n": a.n,
        "perUser": a.per_user,
        "kill9": a.kill9,
        "workers": fleet.workers(),
        "opened": c0.opened,
        "messagesSent": users,
        "messagesDelivered": delivered,
        "messagesReceivedLive": live,
        "postErrors": post_errors,
        "stopMs": stop_took.as_secs_f64() * 1e3,
        "restartToReadyMs": ready_took.as_secs_f64() * 1e3,
        "readyToAllReconnectedMs": to_all_back_ms,
        "readyToLastResumedMs": to_all_resumed_ms,
        "allBack": all_back,
        "resumed": c.resumed,
        "fresh": c.fresh,
        "resumeFailed": c.resume_failed,
        "recovered": c.recovered,
        "expectedRecovered": c.expected_recovered,
        "resumeLatencyUs": hist_json(&rep.resume),
        "resumeTcpConnectUs": hist_json(&rep.resume_tcp),
        "rssBeforeStopBytes": rss_before,
        "rssAfterResumeBytes": rss_after,
        "errors": errors_json(&fin.errors),
        "server": server.describe(),
    }))
}
