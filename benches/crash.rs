//! Crash test: start the server, drive connects, session writes and messages, `kill -9` it
//! at a random moment, restart it, and check that everything acknowledged before the kill is
//! there. Repeats for `--cycles` cycles per durability mode.
//!
//!     cargo bench --bench crash -- [--cycles 20] [--modes batched,sync,relaxed] [--json]
//!
//! `batched` and `sync` must lose nothing; for `relaxed` the losses are reported, not failed.
//! Talks only to 127.0.0.1 and stops by itself (every wait has a deadline).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Acked {
    /// connection id → (user, resume token)
    conns: HashMap<String, (String, String)>,
    /// session id → highest `n` acknowledged
    sessions: HashMap<String, u64>,
    /// connection id → seqs acknowledged by the messages API
    messages: HashMap<String, Vec<u64>>,
}

struct Server {
    child: Child,
    addr: String,
}

async fn start(dir: &Path, mode: &str) -> Result<Server, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--durability",
            mode,
            "--max-per-user",
            "1000",
            "--log-level",
            "warn,tether::server=info",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + 20..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                return Some(rest[..end].to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("the server did not start listening")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = reqwest::Client::new();
    let ready = Instant::now();
    while client
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if ready.elapsed() > DEADLINE {
            return Err("the server did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Server { child, addr })
}

fn secrets(dir: &Path) -> (String, String) {
    let t: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("secrets.toml")).unwrap()).unwrap();
    (
        t["jwt_secret"].as_str().unwrap().into(),
        t["admin_api_key"].as_str().unwrap().into(),
    )
}

fn token(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tether::auth::mint(
        secret.as_bytes(),
        tether::config::JwtAlgorithm::HS256,
        &json!({"sub": sub, "iat": now, "exp": now + 3600}),
    )
    .unwrap()
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n.max(1)
}

/// Drives load until killed; records every acknowledgement in `acked`.
async fn drive(addr: String, secret: String, key: String, acked: Arc<Mutex<Acked>>, worker: usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut sockets = Vec::new();
    let mut my_session: Option<String> = None;
    let mut n = 0u64;
    let mut my_conns: Vec<String> = Vec::new();
    for i in 0.. {
        let user = format!("w{worker}u{}", i % 50);
        match i % 4 {
            // connect
            0 | 1 => {
                let url = format!("ws://{addr}/ws?token={}", token(&secret, &user));
                let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_tungstenite::connect_async(url),
                )
                .await
                else {
                    return;
                };
                let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                else {
                    return;
                };
                let Ok(w) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) else {
                    return;
                };
                let id = w["connectionId"].as_str().unwrap_or_default().to_string();
                acked.lock().unwrap().conns.insert(
                    id.clone(),
                    (
                        user.clone(),
                        w["resumeToken"].as_str().unwrap_or_default().into(),
                    ),
                );
                my_conns.push(id);
                sockets.push(ws);
            }
            // session write
            2 => {
                let r = match &my_session {
                    None => {
                        client
                            .post(format!("http://{addr}/v1/sessions"))
                            .bearer_auth(&key)
                            .json(&json!({"userId": user}))
                            .send()
                            .await
                    }
                    Some(sid) => {
                        client
                            .patch(format!("http://{addr}/v1/sessions/{sid}"))
                            .bearer_auth(&key)
                            .json(&json!({"data": {"n": n + 1}}))
                            .send()
                            .await
                    }
                };
                let Ok(r) = r else { return };
                let ok = r.status().is_success();
                let Ok(body) = r.json::<Value>().await else {
                    return;
                };
                if ok {
                    match &my_session {
                        None => {
                            let sid = body["sessionId"].as_str().unwrap().to_string();
                            acked.lock().unwrap().sessions.insert(sid.clone(), 0);
                            my_session = Some(sid);
                        }
                        Some(sid) => {
                            n += 1;
                            acked.lock().unwrap().sessions.insert(sid.clone(), n);
                        }
                    }
                }
            }
            // message to one of my connections
            _ => {
                let Some(id) = my_conns
                    .get(random_below(my_conns.len() as u64) as usize)
                    .cloned()
                else {
                    continue;
                };
                let Ok(r) = client
                    .post(format!("http://{addr}/v1/connections/{id}/messages"))
                    .bearer_auth(&key)
                    .json(&json!({"data": {"i": i}}))
                    .send()
                    .await
                else {
                    return;
                };
                if r.status().is_success() {
                    let Ok(body) = r.json::<Value>().await else {
                        return;
                    };
                    let seq = body["seq"].as_u64().unwrap_or(0);
                    acked
                        .lock()
                        .unwrap()
                        .messages
                        .entry(id)
                        .or_default()
                        .push(seq);
                }
            }
        }
        // Keep the client's own fd use bounded.
        if sockets.len() > 400 {
            sockets.remove(0);
        }
    }
}

struct Losses {
    conns: usize,
    sessions: usize,
    messages: usize,
    checked: (usize, usize, usize),
}

async fn check(addr: &str, secret: &str, key: &str, acked: &Acked) -> Losses {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut lost = Losses {
        conns: 0,
        sessions: 0,
        messages: 0,
        checked: (acked.conns.len(), acked.sessions.len(), 0),
    };
    for id in acked.conns.keys() {
        let r = client
            .get(format!("http://{addr}/v1/connections/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            lost.conns += 1;
        }
    }
    for (sid, n) in &acked.sessions {
        let r = client
            .get(format!("http://{addr}/v1/sessions/{sid}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            lost.sessions += 1;
            continue;
        }
        let s: Value = r.json().await.unwrap();
        if s["data"]["n"].as_u64().unwrap_or(0) < *n {
            lost.sessions += 1;
        }
    }
    // Resume connections that got messages and check every acknowledged seq is replayed.
    for (id, seqs) in &acked.messages {
        let Some((user, rt)) = acked.conns.get(id) else {
            continue;
        };
        lost.checked.2 += seqs.len();
        let url = format!(
            "ws://{addr}/ws?token={}&resume={id}&resume_token={rt}&last_seq=0",
            token(secret, user)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut got = Vec::new();
        let welcome_seq;
        loop {
            let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            else {
                panic!("no welcome on resume")
            };
            let v: Value = serde_json::from_str(m.to_text().unwrap_or("{}")).unwrap_or_default();
            if v["type"] == "welcome" {
                welcome_seq = v["seq"].as_u64().unwrap_or(0);
                break;
            }
        }
        while got.len() < welcome_seq as usize {
            let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await
            else {
                break;
            };
            let v: Value = serde_json::from_str(m.to_text().unwrap_or("{}")).unwrap_or_default();
            if v["type"] == "message" {
                got.push(v["seq"].as_u64().unwrap_or(0));
            }
        }
        lost.messages += seqs.iter().filter(|s| !got.contains(s)).count();
    }
    lost
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let cycles: usize = arg("--cycles").and_then(|s| s.parse().ok()).unwrap_or(20);
    let modes = arg("--modes").unwrap_or_else(|| "batched,sync,relaxed".into());
    let as_json = args.iter().any(|a| a == "--json");
    let mut report = serde_json::Map::new();
    let mut failed = false;
    for mode in modes.split(',') {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().join("data");
        let mut totals = (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
        for cycle in 1..=cycles {
            let server = match start(&dir, mode).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{mode} cycle {cycle}: {e}");
                    std::process::exit(2);
                }
            };
            let (secret, key) = secrets(&dir);
            let acked = Arc::new(Mutex::new(Acked::default()));
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    tokio::spawn(drive(
                        server.addr.clone(),
                        secret.clone(),
                        key.clone(),
                        acked.clone(),
                        w + cycle * 100,
                    ))
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300 + random_below(1200))).await;
            let mut child = server.child;
            child.kill().await.unwrap();
            for w in workers {
                w.abort();
            }
            let acked = std::mem::take(&mut *acked.lock().unwrap());
            let server = start(&dir, mode).await.expect("restart");
            let lost = check(&server.addr, &secret, &key, &acked).await;
            let mut child = server.child;
            child.kill().await.unwrap();
            totals.0 += lost.checked.0;
            totals.1 += lost.conns;
            totals.2 += lost.checked.1;
            totals.3 += lost.sessions;
            totals.4 += lost.checked.2;
            totals.5 += lost.messages;
            eprintln!(
                "{mode} cycle {cycle}/{cycles}: acknowledged {} connections, {} sessions, {} messages; lost {}, {}, {}",
                lost.checked.0, lost.checked.1, lost.checked.2, lost.conns, lost.sessions, lost.messages
            );
        }
        let lost_any = totals.1 + totals.3 + totals.5 > 0;
        if lost_any && mode != "relaxed" {
            failed = true;
        }
        println!(
            "{mode:8} {cycles} cycles: connections {} acknowledged / {} lost; sessions {} / {} lost; messages {} / {} lost",
            totals.0, totals.1, totals.2, totals.3, totals.4, totals.5
        );
        report.insert(
            mode.to_string(),
            json!({
                "cycles": cycles,
                "connections": {"acknowledged": totals.0, "lost": totals.1},
                "sessions": {"acknowledged": totals.2, "lost": totals.3},
                "messages": {"acknowledged": totals.4, "lost": totals.5},
            }),
        );
    }
    if as_json {
        println!("{}", Value::Object(report));
    }
    if failed {
        eprintln!("FAIL: a durable mode lost acknowledged writes");
        std::process::exit(1);
    }
}
