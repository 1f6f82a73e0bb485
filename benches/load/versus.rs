//! `--floor` and `--vs-floor`: the same scenario against the floor server (benches/floor),
//! the cheapest this machine can do the same work, so that a figure reads as a ratio to it.
//!
//! The floor is this generator re-executed as `serve` (main hands that to the floor's own
//! code), spawned like tether on a free port and a temp dir it writes its `secrets.toml` and
//! pid into. `--vs-floor` runs tether first and the floor right after it, with the same
//! parameters and the same client, and reports each figure of both and tether ÷ floor.

use crate::cli::Global;
use crate::scenarios::Out;
use crate::util::{fmt_bytes, fmt_us, Ctx, R};
use serde_json::{json, Map, Value};
use std::future::Future;
use std::time::Duration;

/// How a figure is printed.
#[derive(Clone, Copy)]
pub enum Unit {
    /// Microseconds, a latency.
    Us,
    /// Microseconds of CPU, with decimals.
    CpuUs,
    PerSec,
    Bytes,
}

/// One figure compared: where it is in a scenario's JSON, and how it reads.
pub struct Figure {
    pub label: &'static str,
    pub pointer: &'static str,
    pub unit: Unit,
}

const fn fig(label: &'static str, pointer: &'static str, unit: Unit) -> Figure {
    Figure {
        label,
        pointer,
        unit,
    }
}

pub const CONNECT: &[Figure] = &[
    fig("connects/s", "/connectsPerSec", Unit::PerSec),
    fig("server CPU per connect", "/cpuPerConnectUs", Unit::CpuUs),
    fig("welcome p50", "/welcomeLatencyUs/p50", Unit::Us),
    fig("welcome p99", "/welcomeLatencyUs/p99", Unit::Us),
    fig("RSS per connection", "/rssPerConnBytes", Unit::Bytes),
];

pub const FANOUT: &[Figure] = &[
    fig("server CPU per frame", "/cpuPerFrameUs", Unit::CpuUs),
    fig("delivery p50", "/deliveryLatencyUs/p50", Unit::Us),
    fig("delivery p99", "/deliveryLatencyUs/p99", Unit::Us),
    fig("messages/s delivered", "/messagesPerSec", Unit::PerSec),
    fig("POST p50", "/postLatencyUs/p50", Unit::Us),
];

/// The settings that drive the floor: this executable as the server binary. `spawn` drops
/// `--url` and `--data-dir` (they are tether's in a `--vs-floor` run).
fn floor_global(g: &Global, spawn: bool) -> R<Global> {
    let mut f = g.clone();
    f.floor = false;
    f.vs_floor = false;
    if spawn {
        f.url = None;
        f.data_dir = None;
    }
    f.server_bin = Some(std::env::current_exe().ctx("finding the generator's own executable")?);
    Ok(f)
}

/// Runs `scenario` as the flags say: against tether, the floor, or both in turn.
pub async fn run<F, Fut>(g: &Global, out: &Out, figures: &[Figure], scenario: F) -> R<Value>
where
    F: Fn(Global) -> Fut,
    Fut: Future<Output = R<Value>>,
{
    if g.floor {
        let mut v = scenario(floor_global(g, g.url.is_none())?).await?;
        v["server"]["floor"] = json!(true);
        return Ok(v);
    }
    if !g.vs_floor {
        return scenario(g.clone()).await;
    }
    out.say("=== tether");
    let tether = scenario(g.clone()).await?;
    // Let the last run's sockets finish closing before the floor's connects.
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.say("=== floor (same parameters)");
    let mut floor = scenario(floor_global(g, true)?).await?;
    floor["server"]["floor"] = json!(true);
    let ratios = compare(out, figures, &tether, &floor);
    Ok(json!({
        "scenario": tether["scenario"],
        "vsFloor": true,
        "tether": tether,
        "floor": floor,
        "ratioToFloor": ratios,
    }))
}

fn show(v: Option<f64>, unit: Unit) -> String {
    let Some(v) = v else { return "?".into() };
    match unit {
        Unit::Us => fmt_us(v.round() as u64),
        Unit::CpuUs => format!("{v:.2} us"),
        Unit::PerSec => format!("{v:.0}/s"),
        Unit::Bytes => fmt_bytes(v),
    }
}

/// `/a/b` -> `a.b`: the figure's key in `ratioToFloor`.
fn key(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Prints each figure of both runs and tether ÷ floor; returns the ratios by figure.
fn compare(out: &Out, figures: &[Figure], tether: &Value, floor: &Value) -> Value {
    let mut ratios = Map::new();
    out.say("=== tether vs floor (ratio = tether / floor, same run)");
    out.say(format!(
        "  {:<24} {:>12} {:>12} {:>8}",
        "", "tether", "floor", "ratio"
    ));
    for f in figures {
        let t = tether.pointer(f.pointer).and_then(Value::as_f64);
        let fl = floor.pointer(f.pointer).and_then(Value::as_f64);
        let ratio = match (t, fl) {
            (Some(t), Some(fl)) if fl > 0.0 => Some(t / fl),
            _ => None,
        };
        ratios.insert(key(f.pointer), json!(ratio));
        out.say(format!(
            "  {:<24} {:>12} {:>12} {:>8}",
            f.label,
            show(t, f.unit),
            show(fl, f.unit),
            ratio.map_or("?".into(), |r| format!("{r:.2}x"))
        ));
    }
    Value::Object(ratios)
}

/// The `selftest` step: spawns the floor as `--floor` does and checks what the scenarios
/// rely on: its data dir, the welcome, a fan-out to one user's sockets only, frames
/// byte-for-byte those tether renders, its connection count and clean closes.
pub async fn self_check() -> R<String> {
    use crate::conn::{connect_once, ConnParams};
    use crate::server::{Server, ServerOpts};
    use crate::util::{check, mint_jwt};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use clap::Parser;
    let c = crate::cli::Cli::try_parse_from(["load", "fanout", "--vs-floor", "--bench"])
        .map_err(|e| e.to_string())?;
    check(c.global.vs_floor && !c.global.floor, "--vs-floor")?;
    check(
        crate::cli::Cli::try_parse_from(["load", "connect", "--floor", "--vs-floor"]).is_err(),
        "--floor and --vs-floor exclude each other",
    )?;
    for ms in [0, 951_782_400_000, 1_709_208_000_999, 4_107_542_400_000, -1] {
        check(
            crate::floor::fanout::rfc3339(ms) == tether::time::rfc3339(ms),
            &format!("the floor's ts is tether's ({ms})"),
        )?;
    }
    let mut server = Server::start(ServerOpts {
        url: None,
        data_dir: None,
        bin: std::env::current_exe().ctx("finding the generator's own executable")?,
        args: vec!["--log-level".into(), "warn".into()],
        ready_timeout: Duration::from_secs(10),
        keep_data: false,
        secrets: None,
        label: "the floor".into(),
    })
    .await?;
    check(server.pid.is_some(), "the floor's pid")?;
    let params = ConnParams::to(server.addr, Duration::from_secs(5));
    let mut socks = Vec::new();
    for user in ["fl0", "fl0", "fl0", "fl1"] {
        let token = mint_jwt(&server.jwt_secret, user, 60)?;
        let (ws, welcome, _) = connect_once(&params, server.addr, &format!("token={token}"))
            .await
            .map_err(|e| format!("connecting to the floor: {e}"))?;
        check(
            welcome["userId"] == user && welcome["seq"] == 0,
            &format!("welcome {welcome}"),
        )?;
        socks.push(ws);
    }
    check(server.active_connections().await? == 4, "activeConnections")?;
    let data = json!({"t": 12345, "j": 0});
    let (st, body) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/users/fl0/messages",
            &json!({ "data": data }),
        )
        .await?;
    check(
        st == 200 && body["delivered"] == 3,
        &format!("POST: HTTP {st} {body}"),
    )?;
    let mut size = 0;
    for ws in &mut socks[..3] {
        let text = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
            other => return Err(format!("no message frame from the floor: {other:?}")),
        };
        let v: Value = serde_json::from_str(&text).ctx("the floor's frame")?;
        let ts = v["ts"].as_str().unwrap_or("");
        let tether = tether::protocol::FrameTemplate::message(&data.to_string(), ts).render(1);
        check(
            text == tether,
            &format!("frame {text} is tether's {tether}"),
        )?;
        size = text.len();
    }
    for ws in &mut socks {
        ws.close(None).await.ctx("closing")?;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                if let Ok(Message::Close(_)) = m {
                    return true;
                }
            }
            false
        })
        .await;
        check(closed == Ok(true), "the floor replies to a close")?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.active_connections().await? != 0 {
        check(std::time::Instant::now() < deadline, "connections gone")?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop_quietly().await;
    Ok(format!("frames of {size} bytes, as tether's"))
}
