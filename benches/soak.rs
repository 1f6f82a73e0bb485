//! Soak: a long run of connection churn with messages and session updates at a steady rate,
//! against a real `tether serve` on loopback. It answers two questions: does the registry
//! come back to where it started once the churn stops, and does the server's memory stay
//! where it settled?
//!
//! ```text
//! cargo bench --bench soak -- --minutes 60
//! cargo bench --bench soak -- --minutes 2 --steady 200      # a quick look
//! ```
//!
//! What runs, all the time, for `--minutes`:
//!
//! - `--steady` connections (two per user, both linked to the user's session) stay open the
//!   whole run. Each checks that every `message` and `session.updated` it gets has the next
//!   seq (a gap or a repeat is counted as an error), and acks every few seconds.
//! - `--churn` new connections a second, of their own users, each open for 1 to 10 s and
//!   then, in turn: closed cleanly (5 in 10), dropped and resumed 0.2 s later on a new socket,
//!   then closed (3 in 10), or dropped and left to the resume grace period (2 in 10).
//! - `--messages` messages a second to users (steady and churning), over the API.
//! - `--updates` session updates a second, half over the API (`PATCH /v1/sessions/{id}`),
//!   half as a `session.update` frame from one of the session's sockets.
//!
//! Every `--sample-secs` it reads the server's RSS from `/proc` and the registry's count from
//! `/v1/health`. The first sixth of the run (at least a minute, and at least the time the
//! event log takes to fill, at most half the run) is the warm-up: "settled" is
//! the mean RSS over its last minute. After the run the churn stops, what is still open of
//! it closes, the grace period passes, and the end is measured: the registry must be back to
//! the steady count it started from, and RSS within `--rss-tolerance` (5 %) of settled. The
//! exit status is 1 when either fails, or when a connection saw a seq out of order.
//!
//! The server runs with `--resume-grace-seconds 5`, so what churn leaves Detached is swept
//! within seconds rather than two minutes, and with `--event-log-max 20000` (the soak's
//! `--event-log-max`): the event log is bounded, and at about 60 events a second it fills
//! the default 100,000 only after some 28 minutes, so the RSS it settled at would not be
//! measured within the warm-up; 20,000 fills in under 6. Connections and sessions live the
//! run plus 15 minutes (`--ttl-seconds`, `ttlSeconds`), so that the steady ones do not all
//! expire together near the end of an hour. Everything else is the default configuration.

#[allow(dead_code)]
#[path = "load/util.rs"]
mod util;

#[allow(dead_code)]
#[path = "load/server.rs"]
mod server;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use server::{Server, ServerOpts};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use util::{Ctx, R};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const GRACE_SECONDS: u64 = 5;
const WAIT: Duration = Duration::from_secs(15);

struct Args {
    minutes: f64,
    steady: usize,
    churn: u64,
    messages: u64,
    updates: u64,
    sample_secs: u64,
    rss_tolerance: f64,
    event_log_max: u64,
    server_bin: PathBuf,
    json: bool,
}

fn usage() -> &'static str {
    "cargo bench --bench soak -- [--minutes 60] [--steady 1000] [--churn 20] [--messages 100] \
     [--updates 20] [--sample-secs 10] [--rss-tolerance 0.05] [--event-log-max 20000] [--server-bin PATH] [--json]"
}

fn parse_args() -> R<Args> {
    let mut a = Args {
        minutes: 60.0,
        steady: 1000,
        churn: 20,
        messages: 100,
        updates: 20,
        sample_secs: 10,
        rss_tolerance: 0.05,
        event_log_max: 20_000,
        server_bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tether"),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or(format!("{name} needs a value; {}", usage()))
        };
        match flag.as_str() {
            "--minutes" => a.minutes = value("--minutes")?.parse().ctx("--minutes")?,
            "--steady" => a.steady = value("--steady")?.parse().ctx("--steady")?,
            "--churn" => a.churn = value("--churn")?.parse().ctx("--churn")?,
            "--messages" => a.messages = value("--messages")?.parse().ctx("--messages")?,
            "--updates" => a.updates = value("--updates")?.parse().ctx("--updates")?,
            "--sample-secs" => {
                a.sample_secs = value("--sample-secs")?.parse().ctx("--sample-secs")?
            }
            "--rss-tolerance" => {
                a.rss_tolerance = value("--rss-tolerance")?.parse().ctx("--rss-tolerance")?
            }
            "--event-log-max" => {
                a.event_log_max = value("--event-log-max")?.parse().ctx("--event-log-max")?
            }
            "--server-bin" => a.server_bin = PathBuf::from(value("--server-bin")?),
            "--json" => a.json = true,
            // cargo bench passes this to every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; {}", usage())),
        }
    }
    if a.minutes <= 0.0 || a.steady < 2 || a.sample_secs == 0 {
        return Err(format!(
            "--minutes must be above 0, --steady at least 2, --sample-secs at least 1; {}",
            usage()
        ));
    }
    a.steady -= a.steady % 2;
    Ok(a)
}

/// What every task adds to.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    out_of_order: AtomicU64,
    churn_opened: AtomicU64,
    churn_failed: AtomicU64,
    resumed: AtomicU64,
    resume_failed: AtomicU64,
    messages_sent: AtomicU64,
    updates_sent: AtomicU64,
    api_errors: AtomicU64,
    churn_open_now: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A small deterministic generator, so that two runs make the same choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

async fn open(url: &str) -> R<(Ws, Value)> {
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .ctx("connecting")?
        .ctx("connecting")?;
    let welcome = tokio::time::timeout(WAIT, async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Text(t)) = m {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["type"] == "welcome" {
                    return Ok(v);
                }
                return Err(format!("first frame was not a welcome: {v}"));
            }
        }
        Err("closed before the welcome".to_string())
    })
    .await
    .ctx("waiting for the welcome")??;
    Ok((ws, welcome))
}

/// Tracks a connection's seqs: each delivery must be the next.
struct Seqs {
    last: u64,
}

impl Seqs {
    fn see(&mut self, frame: &Value, counters: &Counters) {
        let Some(seq) = frame["seq"].as_u64() else {
            return;
        };
        if frame["type"] != "message" && frame["type"] != "session.updated" {
            return;
        }
        if seq != self.last + 1 {
            bump(&counters.out_of_order);
        }
        self.last = self.last.max(seq);
        bump(&counters.delivered);
    }
}

/// One of the connections that stay for the whole run.
async fn steady(
    url: String,
    counters: Arc<Counters>,
    mut updates: mpsc::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> R<()> {
    let (mut ws, welcome) = open(&url).await?;
    let mut seqs = Seqs {
        last: welcome["seq"].as_u64().unwrap_or(0),
    };
    let mut ack = tokio::time::interval(Duration::from_secs(5));
    let mut acked = seqs.last;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] == "disconnect" {
                        return Err(format!("a steady connection was closed: {v}"));
                    }
                    seqs.see(&v, &counters);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("a steady connection failed: {e}")),
                None => return Err("a steady connection ended".into()),
            },
            Some(n) = updates.recv() => {
                let frame = json!({"type": "session.update", "updates": {"ws": n}, "id": n});
                ws.send(Message::text(frame.to_string())).await.ctx("sending session.update")?;
            }
            _ = ack.tick() => {
                if seqs.last > acked {
                    acked = seqs.last;
                    let frame = json!({"type": "ack", "seq": acked});
                    ws.send(Message::text(frame.to_string())).await.ctx("sending an ack")?;
                }
            }
            _ = stopped(&mut stop) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
        }
    }
}

/// Returns once `stop` holds true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now || stop.changed().await.is_err() {
            return;
        }
    }
}

/// Reads a socket for `life`, counting deliveries; false if it ended first.
async fn read_for(ws: &mut Ws, life: Duration, seqs: &mut Seqs, counters: &Counters) -> bool {
    let until = tokio::time::Instant::now() + life;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                seqs.see(&v, counters);
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return false,
        }
    }
}

/// One churning connection: open, live, and end in the way `kind` (0–9) says.
async fn churn_one(
    base: String,
    secret: String,
    user: String,
    life: Duration,
    kind: u64,
    counters: Arc<Counters>,
) {
    let token = match util::mint_jwt(&secret, &user, 3600) {
        Ok(t) => t,
        Err(_) => return bump(&counters.churn_failed),
    };
    let Ok((mut ws, welcome)) = open(&format!("{base}/ws?token={token}")).await else {
        return bump(&counters.churn_failed);
    };
    bump(&counters.churn_opened);
    counters.churn_open_now.fetch_add(1, Ordering::Relaxed);
    let mut seqs = Seqs { last: 0 };
    read_for(&mut ws, life, &mut seqs, &counters).await;
    match kind {
        0..=4 => {
            let _ = tokio::time::timeout(WAIT, ws.close(None)).await;
        }
        5..=7 => {
            drop(ws);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let url = format!(
                "{base}/ws?token={token}&resume={}&resume_token={}&last_seq={}",
                welcome["connectionId"].as_str().unwrap_or(""),
                util::pct(welcome["resumeToken"].as_str().unwrap_or("")),
                seqs.last
            );
            match open(&url).await {
                Ok((mut ws, w)) if w["resumed"] == true => {
                    bump(&counters.resumed);
                    read_for(&mut ws, Duration::from_secs(1), &mut seqs, &counters).await;
                    let _ = tokio::time::timeout(WAIT, ws.close(None)).await;
                }
                Ok((mut ws, _)) => {
                    bump(&counters.resume_failed);
                    let _ = tokio::time::timeout(WAIT, ws.close(None)).await;
                }
                Err(_) => bump(&counters.resume_failed),
            }
        }
        _ => drop(ws),
    }
    counters.churn_open_now.fetch_sub(1, Ordering::Relaxed);
}

/// The registry's count: every state the health report lists.
async fn registry(server: &Server) -> R<u64> {
    let h = server.get("/v1/health").await?;
    Ok(h["byState"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0))
}

struct Sample {
    secs: f64,
    rss: u64,
    registry: u64,
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

/// Runs `f` about `per_sec` times a second until `stop`.
async fn steady_rate<F, Fut>(per_sec: u64, mut stop: watch::Receiver<bool>, mut f: F)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if per_sec == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => { n += 1; f(n).await }
            _ = stopped(&mut stop) => return,
        }
    }
}

/// How long the steady connections and sessions must last: the run, its end, and a margin.
fn lifetime_secs(a: &Args) -> u64 {
    (a.minutes * 60.0) as u64 + 900
}

async fn run(a: Args) -> R<bool> {
    let server = Server::start(ServerOpts {
        url: None,
        data_dir: None,
        bin: a.server_bin.clone(),
        args: vec![
            "--log-level".into(),
            "warn".into(),
            "--resume-grace-seconds".into(),
            GRACE_SECONDS.to_string(),
            "--event-log-max".into(),
            a.event_log_max.to_string(),
            // The steady connections and their sessions outlive the run: at the default
            // hour, a 60-minute soak ended with all of them expiring (4004) at once.
            "--ttl-seconds".into(),
            lifetime_secs(&a).to_string(),
        ],
        ready_timeout: Duration::from_secs(30),
        keep_data: false,
        secrets: None,
        label: "server".into(),
    })
    .await?;
    let server = Arc::new(server);
    let pid = server.pid.ok_or("the spawned server has no pid")?;
    let base = format!("ws://{}", server.addr);
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);

    // The steady connections: a session per user, two sockets each.
    let users = a.steady / 2;
    let mut sessions = Vec::with_capacity(users);
    let mut update_tx = Vec::with_capacity(a.steady);
    let mut steady_tasks = Vec::with_capacity(a.steady);
    for u in 0..users {
        let user = format!("steady-{u}");
        let (st, s) = server
            .send_json(
                reqwest::Method::POST,
                "/v1/sessions",
                &json!({"userId": user, "data": {}, "ttlSeconds": lifetime_secs(&a)}),
            )
            .await?;
        let sid = s["sessionId"]
            .as_str()
            .filter(|_| st == 201)
            .ok_or(format!("creating a session: {st} {s}"))?;
        sessions.push(sid.to_string());
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel(4);
            update_tx.push(tx);
            let url = format!("{base}/ws?session_id={sid}");
            steady_tasks.push(tokio::spawn(steady(
                url,
                counters.clone(),
                rx,
                stop.clone(),
            )));
        }
    }
    let start_deadline = Instant::now() + Duration::from_secs(60);
    let start_count = loop {
        let n = registry(&server).await?;
        if n as usize >= a.steady {
            break n;
        }
        if Instant::now() > start_deadline {
            return Err(format!(
                "only {n} of {} steady connections came up",
                a.steady
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The load, at steady rates, until `stop`.
    let (churn_stop_tx, churn_stop) = watch::channel(false);
    let churners = {
        let (base, secret, counters) = (
            format!("http://{}", server.addr),
            server.jwt_secret.clone(),
            counters.clone(),
        );
        let base = base.replacen("http://", "ws://", 1);
        tokio::spawn(steady_rate(a.churn, churn_stop.clone(), move |n| {
            let mut rng = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let life = Duration::from_millis(1000 + rng.below(9000));
            let task = churn_one(
                base.clone(),
                secret.clone(),
                format!("churn-{}", n % 500),
                life,
                n % 10,
                counters.clone(),
            );
            tokio::spawn(task);
            async {}
        }))
    };
    let messengers = {
        let (server, counters) = (server.clone(), counters.clone());
        let steady_users = users as u64;
        tokio::spawn(steady_rate(a.messages, churn_stop.clone(), move |n| {
            let (server, counters) = (server.clone(), counters.clone());
            let mut rng = Rng(n.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
            let user = if n % 4 == 0 {
                format!("churn-{}", rng.below(500))
            } else {
                format!("steady-{}", rng.below(steady_users))
            };
            async move {
                let body = json!({"data": {"n": n}});
                match server
                    .send_json(
                        reqwest::Method::POST,
                        &format!("/v1/users/{user}/messages"),
                        &body,
                    )
                    .await
                {
                    Ok((200..=299, _)) => bump(&counters.messages_sent),
                    _ => bump(&counters.api_errors),
                }
            }
        }))
    };
    let updaters = {
        let (server, counters) = (server.clone(), counters.clone());
        let sessions = sessions.clone();
        tokio::spawn(steady_rate(a.updates, churn_stop.clone(), move |n| {
            let (server, counters) = (server.clone(), counters.clone());
            let mut rng = Rng(n.wrapping_mul(0xA24B_AED4_963E_E407) | 1);
            let k = rng.below(sessions.len() as u64) as usize;
            let sid = sessions[k].clone();
            let ws_tx = update_tx[2 * k + (n as usize % 2)].clone();
            async move {
                if n % 2 == 0 {
                    let body = json!({"data": {"http": n}});
                    match server
                        .send_json(
                            reqwest::Method::PATCH,
                            &format!("/v1/sessions/{sid}"),
                            &body,
                        )
                        .await
                    {
                        Ok((200..=299, _)) => bump(&counters.updates_sent),
                        _ => bump(&counters.api_errors),
                    }
                } else if ws_tx.try_send(n).is_ok() {
                    bump(&counters.updates_sent);
                }
            }
        }))
    };

    // Samples, until the end of the run.
    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    // The event log must be full before "settled" is read (about three events per churned
    // connection); a short run's sixth is not enough (10 minutes at the defaults measured
    // +14 % after 100 s, on the builds before and after the batched event log alike).
    let fill = Duration::from_secs_f64(a.event_log_max as f64 / (3.0 * a.churn.max(1) as f64));
    let warmup = (run_for / 6)
        .max(Duration::from_secs(60))
        .max(fill)
        .min(run_for / 2);
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(a.sample_secs));
    while started.elapsed() < run_for {
        tick.tick().await;
        let rss = util::rss_bytes(pid).ok_or("the server's RSS could not be read: did it exit?")?;
        let reg = registry(&server).await?;
        let secs = started.elapsed().as_secs_f64();
        let line = format!(
            "{:>6.0}s rss {:>7} registry {:>6} churn open {:>4} delivered {:>9} out of order {}",
            secs,
            util::fmt_bytes(rss as f64),
            reg,
            get(&counters.churn_open_now),
            get(&counters.delivered),
            get(&counters.out_of_order)
        );
        if !a.json {
            eprintln!("{line}");
        }

        samples.push(Sample {
            secs,
            rss,
            registry: reg,
        });
    }

    // The end: stop the churn, let what is open of it finish and the grace period pass.
    let _ = churn_stop_tx.send(true);
    for t in [churners, messengers, updaters] {
        let _ = t.await;
    }
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while get(&counters.churn_open_now) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 3)).await;
    let mut end_count = registry(&server).await?;
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    while end_count != start_count && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        end_count = registry(&server).await?;
    }
    let mut end_rss = Vec::new();
    for _ in 0..5 {
        end_rss.push(util::rss_bytes(pid).ok_or("the server's RSS could not be read")?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = stop_tx.send(true);
    let mut steady_errors = Vec::new();
    for t in steady_tasks {
        if let Ok(Err(e)) = t.await {
            steady_errors.push(e);
        }
    }

    let w = warmup.as_secs_f64();
    let settled: Vec<u64> = samples
        .iter()
        .filter(|s| s.secs <= w && s.secs > w - 60.0)
        .map(|s| s.rss)
        .collect();
    let settled = mean(&settled);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.secs > w).collect();
    let max_after = after.iter().map(|s| s.rss).max().unwrap_or(0);
    let end = mean(&end_rss);
    let drift = (end - settled) / settled;
    let max_registry = samples.iter().map(|s| s.registry).max().unwrap_or(0);
    let out_of_order = get(&counters.out_of_order);
    let registry_ok = end_count == start_count;
    let rss_ok = drift.abs() <= a.rss_tolerance;
    let ok = registry_ok && rss_ok && out_of_order == 0 && steady_errors.is_empty();
    let report = json!({
        "minutes": a.minutes,
        "steady": a.steady,
        "churnPerSecond": a.churn,
        "messagesPerSecond": a.messages,
        "updatesPerSecond": a.updates,
        "registry": {"start": start_count, "end": end_count, "maxDuringRun": max_registry},
        "rssBytes": {"settled": settled, "maxAfterWarmup": max_after, "end": end, "drift": drift},
        "churnOpened": get(&counters.churn_opened),
        "churnFailed": get(&counters.churn_failed),
        "resumed": get(&counters.resumed),
        "resumeFailed": get(&counters.resume_failed),
        "messagesSent": get(&counters.messages_sent),
        "updatesSent": get(&counters.updates_sent),
        "apiErrors": get(&counters.api_errors),
        "delivered": get(&counters.delivered),
        "outOfOrder": out_of_order,
        "steadyErrors": steady_errors,
        "ok": ok,
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "soak {} min: {} steady, {} churn/s, {} messages/s, {} updates/s",
            a.minutes, a.steady, a.churn, a.messages, a.updates
        );
        println!(
            "registry: {start_count} at the start, {end_count} at the end ({}), at most {max_registry} during the run",
            if registry_ok { "back to the start" } else { "NOT back to the start" }
        );
        println!(
            "RSS: {} settled (warm-up {:.0} s), {} at most after it, {} at the end: {:+.1} % ({} {:.0} %)",
            util::fmt_bytes(settled),
            w,
            util::fmt_bytes(max_after as f64),
            util::fmt_bytes(end),
            drift * 100.0,
            if rss_ok { "within" } else { "NOT within" },
            a.rss_tolerance * 100.0
        );
        println!(
            "churn: {} opened, {} failed, {} resumed, {} resumes refused; {} messages and {} session updates sent ({} API errors); {} deliveries, {} out of order",
            get(&counters.churn_opened),
            get(&counters.churn_failed),
            get(&counters.resumed),
            get(&counters.resume_failed),
            get(&counters.messages_sent),
            get(&counters.updates_sent),
            get(&counters.api_errors),
            get(&counters.delivered),
            out_of_order
        );
        for e in &steady_errors {
            println!("steady connection: {e}");
        }
        println!("{}", if ok { "ok" } else { "FAILED" });
    }
    Ok(ok)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}
