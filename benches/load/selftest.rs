//! `selftest`: checks the generator without tether, against a tiny in-process
//! WebSocket server that speaks just enough of the protocol (welcome, message
//! frames with `data.t`, resume with replay, close codes).

use crate::cli::Cli;
use crate::conn::{Auth, ConnParams, ConnSpec, Pool};
use crate::fleet::{Fleet, FleetPlan};
use crate::util::{self, check, now_ns, R};
use clap::{CommandFactory, Parser};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

struct Tiny {
    addr: SocketAddr,
    /// Bump to make every connection drop its socket without a close frame.
    kill: watch::Sender<u32>,
}

/// connection id -> last seq sent
type Seqs = Arc<Mutex<HashMap<String, u64>>>;

async fn tiny_server() -> R<Tiny> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("tiny server bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let (kill, kill_rx) = watch::channel(0u32);
    let seqs: Seqs = Arc::default();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(tiny_conn(s, seqs.clone(), kill_rx.clone()));
        }
    });
    Ok(Tiny { addr, kill })
}

fn frame(v: Value) -> Message {
    Message::text(v.to_string())
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn tiny_conn(s: tokio::net::TcpStream, seqs: Seqs, mut kill: watch::Receiver<u32>) {
    let query = Arc::new(Mutex::new(String::new()));
    let q2 = query.clone();
    let cb = move |req: &Request, resp: Response| {
        *q2.lock().unwrap() = req.uri().query().unwrap_or("").to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
        return;
    };
    let q: HashMap<String, String> = query
        .lock()
        .unwrap()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !q.contains_key("token") && !q.contains_key("session_id") {
        let _ = ws
            .send(frame(
                json!({"type":"disconnect","code":4501,"reason":"unauthorized","reconnect":false}),
            ))
            .await;
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4501),
                reason: "unauthorized".into(),
            })))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        return;
    }
    let id = uuid_like();
    let mut seq = 0u64;
    let mut resumed = false;
    let mut replay = Vec::new();
    if let Some(old) = q.get("resume") {
        if let Some(old_seq) = seqs.lock().unwrap().remove(old) {
            resumed = true;
            seq = old_seq;
            let last: u64 = q.get("last_seq").and_then(|v| v.parse().ok()).unwrap_or(0);
            for s in last + 1..=old_seq {
                replay.push(
                    json!({"type":"message","seq":s,"data":{"replayed":true,"n":s},"ts":"x"}),
                );
            }
        }
    }
    seqs.lock().unwrap().insert(id.clone(), seq);
    let welcome = json!({"type":"welcome","connectionId":id,"userId":"x","resumeToken":"tok/+=","seq":seq,
        "resumed":resumed,"resumeError": if resumed || !q.contains_key("resume") { Value::Null } else { json!("unknown") }});
    if ws.send(frame(welcome)).await.is_err() {
        return;
    }
    for f in replay {
        let _ = ws.send(frame(f)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    kill.borrow_and_update();
    loop {
        tokio::select! {
            _ = kill.changed() => return, // drop the socket: no close frame
            _ = tick.tick() => {
                seq += 1;
                seqs.lock().unwrap().insert(id.clone(), seq);
                let m = json!({"type":"message","seq":seq,"data":{"t":now_ns(),"n":seq},"ts":"x"});
                if ws.send(frame(m)).await.is_err() { return; }
                let _ = ws.send(Message::Ping(Default::default())).await;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Close(_))) => {
                    seqs.lock().unwrap().remove(&id);
                    // tungstenite has queued the close reply; flush it.
                    let _ = ws.flush().await;
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "c{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Opens, receives, loses the server, resumes with replay, closes cleanly.
async fn fleet_cycle(tiny: &Tiny, n: usize, per_process: usize) -> R<String> {
    let plan = FleetPlan {
        n,
        per_user: 3,
        user_prefix: "st".into(),
        rate: 2000.0,
        jwt_secret: "secret".into(),
        token_ttl_secs: 60,
        addrs: vec![tiny.addr],
        connect_timeout: Duration::from_secs(5),
        resume_from_received: false,
        track_order: true,
        max_connecting: 0,
        raw_readers: 0,
        per_process,
        first_src_octet: 2,
    };
    let mut fleet = Fleet::start(&plan)?;
    let workers = fleet.workers();
    let ok = until(Duration::from_secs(15), || {
        fleet.counts().opened as usize >= n
    })
    .await;
    fleet.check_alive()?;
    check(
        ok,
        &format!("all {n} opened (workers {workers}): {:?}", fleet.counts()),
    )?;
    let ok = until(Duration::from_secs(5), || {
        fleet.counts().messages as usize >= 3 * n
    })
    .await;
    check(ok, "message frames arrive")?;
    let rep = fleet.report(Duration::from_secs(5)).await?;
    check(
        rep.welcome.len() as usize == n,
        "welcome histogram has n samples",
    )?;
    check(!rep.delivery.is_empty(), "delivery histogram filled")?;
    check(
        rep.delivery.max() < 5_000_000,
        "delivery latency sane (shared epoch)",
    )?;
    // Lose the server's sockets, then resume everything.
    tiny.kill.send_modify(|v| *v += 1);
    let ok = until(Duration::from_secs(5), || fleet.counts().open_now == 0).await;
    check(ok, &format!("sockets dropped: {:?}", fleet.counts()))?;
    fleet.resume(&[tiny.addr], &[])?;
    let ok = until(Duration::from_secs(10), || {
        fleet.counts().resume_done() as usize >= n
    })
    .await;
    check(ok, &format!("all resumed: {:?}", fleet.counts()))?;
    let ok = until(Duration::from_secs(5), || {
        let c = fleet.counts();
        c.recovered >= c.expected_recovered
    })
    .await;
    let c = fleet.counts();
    check(
        ok && c.expected_recovered >= 3 * n as u64,
        &format!("replays recovered: {c:?}"),
    )?;
    check(
        c.resumed as usize == n && c.fresh == 0,
        "resumed, none fresh",
    )?;
    let fin = fleet.close(Duration::from_secs(10)).await?;
    check(
        fin.counts.clean_closed as usize == n,
        &format!("clean closes: {:?} {:?}", fin.counts, fin.errors),
    )?;
    check(
        fin.resume.len() as usize == n,
        "resume histogram has n samples",
    )?;
    // Resumed from the welcome's seq, every connection was sent again what it had: the
    // order logs must show each of those as a repeat.
    check(
        fin.orders.len() == n,
        &format!("{} order logs for {n} connections", fin.orders.len()),
    )?;
    for log in &fin.orders {
        let max = log.ns.iter().copied().max().unwrap_or(0);
        // The tiny server's messages count from 1: n = 0 is never sent.
        let mut acked = vec![true; max as usize + 1];
        acked[0] = false;
        let c = crate::kill::check_order(&log.ns, &acked);
        check(
            log.resumed && log.seq_repeated >= 3 && c.duplicates >= 3 && c.missed == 0,
            &format!("repeats seen in the order log: {log:?} {c:?}"),
        )?;
    }
    Ok(format!(
        "{n} connections, {workers} workers: welcome {}, delivery {}, recovered {}/{}",
        util::hist_line(&fin.welcome),
        util::hist_line(&fin.delivery),
        fin.counts.recovered,
        fin.counts.expected_recovered
    ))
}

/// node-kill's verdict on one connection's arrivals: each kind of fault is counted.
fn order_checks() -> R<()> {
    use crate::kill::{check_order, OrderCheck};
    let all = [true; 4];
    let c = |received: &[u32], acked: &[bool]| check_order(received, acked);
    check(
        c(&[0, 1, 2, 3], &all)
            == OrderCheck {
                expected: 4,
                received: 4,
                ..OrderCheck::default()
            },
        "in order",
    )?;
    check(c(&[0, 1, 3], &all).missed == 1, "a gap is a miss")?;
    check(c(&[0, 1], &all).missed == 2, "a missing tail is missed")?;
    check(c(&[], &all).missed == 4, "nothing received")?;
    let d = c(&[0, 1, 1, 2, 3, 0], &all);
    check(d.duplicates == 2 && d.missed == 0, "duplicates")?;
    let o = c(&[0, 2, 1, 3], &all);
    check(
        o.out_of_order == 1 && o.missed == 0 && o.duplicates == 0,
        "out of order",
    )?;
    let acked = [true, false, true];
    let u = c(&[0, 2], &acked);
    check(
        u.missed == 0 && u.expected == 2,
        "a failed POST is not owed",
    )?;
    let u = c(&[0, 1, 2, 7], &acked);
    check(
        u.unacknowledged == 2 && u.missed == 0,
        "arrivals nobody was owed",
    )?;
    Ok(())
}

/// Opens connections 0..n with a token each.
fn spawn_tokens(pool: &Pool, n: usize) {
    for i in 0..n {
        pool.spawn(
            ConnSpec {
                idx: i,
                auth: Auth::Token("t".into()),
                close_after: None,
            },
            None,
        );
    }
}

/// Clients told to stay away after a lost socket do not resume, and their logs show what
/// they missed.
async fn left_away(tiny: &Tiny) -> R<String> {
    let mut pool = Pool::new(ConnParams {
        track_order: true,
        resume_from_received: true,
        ..ConnParams::to(tiny.addr, Duration::from_secs(5))
    });
    let n = 6;
    spawn_tokens(&pool, n);
    let ok = until(Duration::from_secs(5), || {
        pool.stats.counts().messages >= 2 * n as u64
    })
    .await;
    check(ok, "messages arrive")?;
    tiny.kill.send_modify(|v| *v += 1);
    let ok = until(Duration::from_secs(5), || pool.stats.counts().open_now == 0).await;
    check(ok, "sockets dropped")?;
    // The tiny server keeps counting seqs of connections it forgot; resumed ones are
    // replayed everything after their last seq.
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool.resume(vec![tiny.addr], vec![1, 4]);
    let ok = until(Duration::from_secs(5), || pool.stats.counts().resumed == 4).await;
    check(ok, &format!("four resumed: {:?}", pool.stats.counts()))?;
    tokio::time::sleep(Duration::from_millis(350)).await;
    pool.close_all(Duration::from_secs(5)).await;
    let rep = pool.stats.report();
    check(rep.orders.len() == n, "a log per connection")?;
    // Each connection has its own seqs (n = seq): a resumed one is owed everything up to
    // its last, an away one what the resumed ones got after it left.
    let owed = |top: u32| {
        let mut v = vec![true; top as usize + 1];
        v[0] = false;
        v
    };
    let top = |l: &crate::conn::OrderLog| l.ns.iter().copied().max().unwrap_or(0);
    let reached = rep
        .orders
        .iter()
        .filter(|l| l.resumed)
        .map(top)
        .min()
        .unwrap_or(0);
    for l in &rep.orders {
        let away = l.idx == 1 || l.idx == 4;
        let c = crate::kill::check_order(&l.ns, &owed(if away { reached } else { top(l) }));
        check(
            away != l.resumed && (c.missed > 0) == away && c.duplicates == 0 && l.seq_repeated == 0,
            &format!("connection {}: resumed {} {c:?}", l.idx, l.resumed),
        )?;
    }
    Ok("2 of 6 left away: their misses counted, the others' none".into())
}

/// Connections handed to raw readers keep receiving (the tiny server pings them as well) and
/// close cleanly; those the server drops are seen ending.
async fn raw_readers(tiny: &Tiny) -> R<String> {
    let mut pool = Pool::new(ConnParams {
        raw_readers: 2,
        ..ConnParams::to(tiny.addr, Duration::from_secs(5))
    });
    let n = 20;
    spawn_tokens(&pool, n);
    // The tiny server sends a message and a ping every 100 ms.
    let ok = until(Duration::from_secs(10), || {
        pool.stats.counts().messages >= 5 * n as u64
    })
    .await;
    let before = pool.stats.report();
    check(
        ok && before.counts.opened == n as u64 && before.delivery.len() >= 5 * n as u64,
        &format!("{:?}", before.counts),
    )?;
    pool.close_all(Duration::from_secs(5)).await;
    let c = pool.stats.counts();
    check(
        c.clean_closed == n as u64 && c.finished == n as u64 && c.open_now == 0,
        &format!("after close: {c:?}"),
    )?;
    let errs = pool.stats.report().errors;
    check(errs.is_empty(), &format!("errors {errs:?}"))?;
    // A server that drops its sockets: every one is seen ending.
    let lost = Pool::new(ConnParams {
        raw_readers: 2,
        ..ConnParams::to(tiny.addr, Duration::from_secs(5))
    });
    spawn_tokens(&lost, n);
    let got = until(Duration::from_secs(10), || {
        lost.stats.counts().messages >= n as u64
    })
    .await;
    tiny.kill.send_modify(|k| *k += 1);
    let ended = until(Duration::from_secs(10), || {
        lost.stats.counts().finished == n as u64
    })
    .await;
    let l = lost.stats.counts();
    let errs = lost.stats.report().errors;
    check(
        got && ended && l.server_closed == n as u64 && l.open_now == 0,
        &format!("dropped by the server: {l:?} {errs:?}"),
    )?;
    Ok(format!(
        "{n} read by 2 threads, {} frames, all closed cleanly; {n} dropped by the server, all seen ending",
        c.messages
    ))
}

pub async fn run(n: usize) -> R<serde_json::Value> {
    let mut passed = 0;
    let mut step = |name: &str, r: R<String>| -> R<()> {
        match r {
            Ok(msg) => {
                passed += 1;
                eprintln!("ok   {name} {msg}");
                Ok(())
            }
            Err(e) => Err(format!("selftest {name}: {e}")),
        }
    };
    step("helpers", util::self_check().map(|_| String::new()))?;
    step(
        "lock-pid",
        (|| {
            use crate::server::parse_lock_pid;
            check(parse_lock_pid("1234\n") == Some(1234), "bare")?;
            check(
                parse_lock_pid("pid = 77\nstarted = 5\n") == Some(77),
                "toml",
            )?;
            check(
                parse_lock_pid("{\"started\":9,\"pid\":88}") == Some(88),
                "json",
            )?;
            Ok(String::new())
        })(),
    )?;
    step(
        "cli",
        (|| {
            let c = Cli::try_parse_from([
                "load",
                "connect",
                "--n",
                "5",
                "--json",
                "--durability",
                "sync",
                "--bench",
            ])
            .map_err(|e| e.to_string())?;
            check(
                c.global.json && c.global.durability.as_deref() == Some("sync"),
                "globals after scenario",
            )?;
            let c = Cli::try_parse_from(["load", "--bench"]).map_err(|e| e.to_string())?;
            check(c.scenario.is_none(), "no scenario")?;
            let c = Cli::try_parse_from(["load", "--worker"]).map_err(|e| e.to_string())?;
            check(c.worker, "worker flag")?;
            let c = Cli::try_parse_from([
                "load",
                "session-sync",
                "--others",
                "0",
                "--server-arg=--x",
                "--server-arg",
                "-1",
            ])
            .map_err(|e| e.to_string())?;
            check(c.global.server_args == ["--x", "-1"], "raw server args")?;
            // The help names the command as it is typed, not cargo's hashed file name.
            let usage = Cli::command().render_usage().to_string();
            check(
                usage.contains("Usage: cargo bench --bench load -- "),
                "usage names the bench",
            )?;
            Ok(String::new())
        })(),
    )?;
    let svg = crate::svg::connect_plot(
        "t",
        &{
            let mut h = util::new_hist();
            for v in 1..5000 {
                util::record_us(&mut h, v * 3);
            }
            h
        },
        10 << 20,
        &[(100, 11 << 20), (200, 12 << 20)],
    );
    step(
        "svg",
        check(
            svg.starts_with("<svg")
                && svg.matches("<polyline").count() == 2
                && svg.trim_end().ends_with("</svg>"),
            "two curves",
        )
        .map(|_| String::new()),
    )?;

    step("order-check", order_checks().map(|_| String::new()))?;

    let tiny = tiny_server().await?;
    // Refused port and close-code errors.
    let pool = Pool::new(ConnParams::to(
        "127.0.0.1:1".parse().expect("addr"),
        Duration::from_secs(2),
    ));
    pool.spawn(
        ConnSpec {
            idx: 0,
            auth: Auth::Token("x".into()),
            close_after: None,
        },
        None,
    );
    let ok = until(Duration::from_secs(3), || pool.stats.counts().failed == 1).await;
    let errs = pool.stats.report().errors;
    step(
        "refused",
        check(
            ok && errs.contains_key("connect:refused"),
            &format!("{errs:?}"),
        )
        .map(|_| String::new()),
    )?;
    // No credential at all: the tiny server closes with 4501.
    let r = crate::conn::connect_once(
        &ConnParams::to(tiny.addr, Duration::from_secs(2)),
        tiny.addr,
        "nothing=1",
    )
    .await;
    step(
        "close-code",
        check(
            matches!(&r, Err(e) if e == "close:4501"),
            &format!("{:?}", r.as_ref().map(|_| ())),
        )
        .map(|_| String::new()),
    )?;
    // Churn-style self-closing connection.
    let mut churn = Pool::new(ConnParams::to(tiny.addr, Duration::from_secs(2)));
    for i in 0..20 {
        churn.spawn(
            ConnSpec {
                idx: i,
                auth: Auth::Token("t".into()),
                close_after: Some(Duration::from_millis(150)),
            },
            None,
        );
    }
    let stuck = churn.join_all(Duration::from_secs(5)).await;
    let c = churn.stats.counts();
    step(
        "churn",
        check(
            stuck == 0 && c.clean_closed == 20 && c.finished == 20,
            &format!("{c:?}"),
        )
        .map(|_| String::new()),
    )?;
    step("left-away", left_away(&tiny).await)?;
    step(
        "raw-frames",
        crate::raw::self_check().map(|_| String::new()),
    )?;
    step("raw-readers", raw_readers(&tiny).await)?;
    step("floor", crate::versus::self_check().await)?;
    step("local-fleet", fleet_cycle(&tiny, n, 100_000).await)?;
    step("worker-fleet", fleet_cycle(&tiny, n, n.div_ceil(3)).await)?;
    eprintln!("selftest: {passed} passed, 0 failed");
    Ok(json!({"scenario": "selftest", "passed": passed, "failed": 0}))
}
