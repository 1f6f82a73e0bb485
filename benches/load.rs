//! Load generator for tether (a bench target with `harness = false`).
//!
//! ```text
//! cargo bench --bench load -- <connect|churn|fanout|session-sync|reattach|node-kill|selftest> [OPTIONS]
//! cargo bench --bench load -- --help
//! ```
//!
//! By default it spawns the release server (`CARGO_BIN_EXE_tether`) on a temp
//! data dir and a free loopback port, drives it, and stops it; `--url` +
//! `--data-dir` drive a running one. Past `--per-process` (18,000)
//! connections it re-executes itself as worker processes, each binding its own
//! source address (127.0.0.2, 127.0.0.3, ...), and merges their HDR
//! histograms. Everything talks to loopback only and every wait has a
//! deadline. With `--cluster N` it starts one `redis-server` and N tether nodes over it
//! instead, spreads the connections and API calls over the nodes round-robin, and stops
//! them all at the end. Modules live in `benches/load/`.
//!
//! `--floor` drives the floor server of `benches/floor/` instead (the cheapest this machine
//! can do the same work), and `--vs-floor` runs tether and then the floor and reports their
//! ratio: the generator carries the floor's code and starts it by re-executing itself as
//! `load serve ...`, the command line it gives tether.
//!
//! Cargo.toml declares it with `harness = false`; should it ever be built
//! with the test harness (auto-discovered without that entry), `main` is
//! unused, which must not fail `clippy -D warnings`.
#![cfg_attr(test, allow(dead_code, unused_imports))]
// node-kill's figures are one `json!` object of some 50 fields.
#![recursion_limit = "256"]

#[path = "load/cli.rs"]
mod cli;
#[path = "load/conn.rs"]
mod conn;
#[path = "load/fleet.rs"]
mod fleet;
#[path = "floor/mod.rs"]
mod floor;
#[path = "load/kill.rs"]
mod kill;
#[path = "load/raw.rs"]
mod raw;
#[path = "load/redis_server.rs"]
mod redis_server;
#[path = "load/scenarios.rs"]
mod scenarios;
#[path = "load/selftest.rs"]
mod selftest;
#[path = "load/server.rs"]
mod server;
#[path = "load/svg.rs"]
mod svg;
#[path = "load/target.rs"]
mod target;
#[path = "load/util.rs"]
mod util;
#[path = "load/versus.rs"]
mod versus;

use clap::{CommandFactory, Parser};
use cli::{Cli, Scenario};
use scenarios::Out;
use std::io::IsTerminal;
use std::time::Duration;

/// Raises the soft open-file limit to the hard one by re-executing through
/// `sh -c 'ulimit -n ...; exec ...'` (no libc needed); the spawned server and
/// the worker processes inherit it.
fn raise_nofile_limit() {
    const MARK: &str = "TETHER_LOAD_NOFILE_RAISED";
    let Some((soft, hard)) = util::nofile_limits() else {
        return;
    };
    if soft >= hard || std::env::var_os(MARK).is_some() {
        if soft < 20_000 && std::env::var_os(MARK).is_none() {
            eprintln!(
                "note: open-file limit is {soft} (hard {hard}); runs above ~{} connections need `ulimit -n 20000` first",
                soft.saturating_sub(200)
            );
        }
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(MARK, "1")
        .exec();
    eprintln!("note: could not raise the open-file limit ({err}); run `ulimit -n 20000` first for big runs");
}

async fn run(cli: Cli, out: &Out) -> util::R<serde_json::Value> {
    let g = &cli.global;
    let scenario = cli.scenario.as_ref().expect("checked");
    if (g.floor || g.vs_floor) && !matches!(scenario, Scenario::Connect(_) | Scenario::Fanout(_)) {
        return Err("--floor and --vs-floor are for connect and fanout".into());
    }
    match scenario {
        Scenario::Connect(a) => {
            versus::run(g, out, versus::CONNECT, |g| async move {
                scenarios::connect(&g, a, out).await
            })
            .await
        }
        Scenario::Churn(a) => scenarios::churn(g, a, out).await,
        Scenario::Fanout(a) => {
            versus::run(g, out, versus::FANOUT, |g| async move {
                scenarios::fanout(&g, a, out).await
            })
            .await
        }
        Scenario::SessionSync(a) => scenarios::session_sync(g, a, out).await,
        Scenario::Reattach(a) => scenarios::reattach(g, a, out).await,
        Scenario::NodeKill(a) => kill::node_kill(g, a, out).await,
        Scenario::Selftest(a) => selftest::run(a.n).await,
    }
}

fn main() {
    // The floor server, as `--floor` starts it (with tether's command line).
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(floor::main(&args));
    }
    let cli = Cli::parse();
    if cli.worker {
        std::process::exit(fleet::worker_main());
    }
    if cli.scenario.is_none() {
        // `cargo bench` without arguments (or `cargo test --benches`) lands
        // here: explain and succeed.
        let _ = Cli::command().print_help();
        println!("\n(no scenario given: nothing to do)");
        return;
    }
    raise_nofile_limit();
    util::epoch_unix_ns();
    let out = Out {
        json: cli.global.json,
        progress: !cli.global.quiet,
    };
    let limit = Duration::from_secs(cli.global.timeout_secs);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(cli, &out) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
            _ = tokio::time::sleep(limit) => Err(format!("the run took longer than --timeout-secs {}", limit.as_secs())),
        }
    });
    // Dropping the runtime ends every connection task; the server and the
    // workers were stopped when the scenario's future was dropped.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(v) => {
            if out.json {
                println!("{v}");
            }
        }
        Err(e) => {
            if std::io::stderr().is_terminal() {
                eprintln!("\x1b[1merror:\x1b[0m {e}");
            } else {
                eprintln!("error: {e}");
            }
            std::process::exit(1);
        }
    }
}
