//! A fleet of held connections: in this process (a `Pool`) up to the
//! per-process limit, else spread over worker processes (this same binary
//! re-executed with `--worker`), each with its own source address.
//!
//! Worker protocol (one JSON object per line):
//! - parent -> worker stdin: first a `WorkerConfig`, then commands
//!   `{"cmd":"resume","addrs":["127.0.0.1:P"],"skip":[]}`, `{"cmd":"report"}`,
//!   `{"cmd":"close"}`.
//!   End of stdin means close and exit (so a dead parent leaves no worker).
//! - worker -> parent stdout: `{"kind":"counts",..}` every 100 ms,
//!   `{"kind":"report",..}` after `report` and `close`, `{"kind":"fatal","message":..}`.

use crate::conn::{ConnParams, Counts, OpenPlan, Pool, Report, WireReport};
use crate::util::{self, Ctx, R};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WorkerConfig {
    pub epoch_unix_ns: u64,
    pub addrs: Vec<SocketAddr>,
    pub bind_ip: Option<IpAddr>,
    pub connect_timeout_ms: u64,
    pub resume_from_received: bool,
    pub track_order: bool,
    pub max_connecting: usize,
    #[serde(default)]
    pub raw_readers: usize,
    pub plan: OpenPlan,
}

/// What the parent wants from a fleet.
#[derive(Clone, Debug)]
pub struct FleetPlan {
    pub n: usize,
    pub per_user: usize,
    pub user_prefix: String,
    pub rate: f64,
    pub jwt_secret: String,
    pub token_ttl_secs: u64,
    /// Connection i goes to `addrs[i % len]`.
    pub addrs: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub resume_from_received: bool,
    /// Keep every connection's order log (node-kill).
    pub track_order: bool,
    /// At most this many connects waiting for their welcome at once, in each process
    /// (0: no limit).
    pub max_connecting: usize,
    /// Raw reader threads in each process (0: a task per connection reads it).
    pub raw_readers: usize,
    /// At most this many connections in one process.
    pub per_process: usize,
    /// Workers bind 127.0.0.{first_src_octet + w}.
    pub first_src_octet: u8,
}

impl FleetPlan {
    /// The user of connection i.
    pub fn user_of(&self, i: usize) -> String {
        format!("{}{}", self.user_prefix, i / self.per_user.max(1))
    }
}

pub struct WorkerProc {
    idx: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    counts: Arc<Mutex<Counts>>,
    reports: mpsc::UnboundedReceiver<R<WireReport>>,
}

pub enum Fleet {
    Local(Pool),
    Remote(Vec<WorkerProc>),
}

impl Fleet {
    pub fn workers_needed(plan: &FleetPlan) -> usize {
        if plan.n <= plan.per_process {
            0
        } else {
            plan.n.div_ceil(plan.per_process.max(1))
        }
    }

    /// Starts opening the connections (at the plan's rate, in the background).
    pub fn start(plan: &FleetPlan) -> R<Fleet> {
        let workers = Self::workers_needed(plan);
        if workers == 0 {
            let mut pool = Pool::new(ConnParams {
                addrs: plan.addrs.clone(),
                bind_ip: None,
                connect_timeout: plan.connect_timeout,
                resume_from_received: plan.resume_from_received,
                track_order: plan.track_order,
                max_connecting: plan.max_connecting,
                raw_readers: plan.raw_readers,
            });
            pool.start_opening(OpenPlan {
                start: 0,
                count: plan.n,
                per_user: plan.per_user,
                user_prefix: plan.user_prefix.clone(),
                rate: plan.rate,
                jwt_secret: plan.jwt_secret.clone(),
                token_ttl_secs: plan.token_ttl_secs,
            });
            return Ok(Fleet::Local(pool));
        }
        if plan.first_src_octet as usize + workers > 254 {
            return Err(format!(
                "{} connections need {workers} workers: too many for 127.0.0.x source addresses",
                plan.n
            ));
        }
        let exe = std::env::current_exe().ctx("finding the generator's own executable")?;
        // Split evenly, keeping each user's connections in one worker.
        let per_user = plan.per_user.max(1);
        let users = plan.n.div_ceil(per_user);
        let users_per_worker = users.div_ceil(workers);
        let mut procs = Vec::new();
        for w in 0..workers {
            let start = (w * users_per_worker * per_user).min(plan.n);
            let end = ((w + 1) * users_per_worker * per_user).min(plan.n);
            if start >= end {
                continue;
            }
            let cfg = WorkerConfig {
                epoch_unix_ns: util::epoch_unix_ns(),
                addrs: plan.addrs.clone(),
                bind_ip: Some(IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    plan.first_src_octet + w as u8,
                ))),
                connect_timeout_ms: plan.connect_timeout.as_millis() as u64,
                resume_from_received: plan.resume_from_received,
                track_order: plan.track_order,
                max_connecting: plan.max_connecting,
                raw_readers: plan.raw_readers,
                plan: OpenPlan {
                    start,
                    count: end - start,
                    per_user,
                    user_prefix: plan.user_prefix.clone(),
                    rate: plan.rate * (end - start) as f64 / plan.n as f64,
                    jwt_secret: plan.jwt_secret.clone(),
                    token_ttl_secs: plan.token_ttl_secs,
                },
            };
            procs.push(spawn_worker(&exe, w, &cfg)?);
        }
        Ok(Fleet::Remote(procs))
    }

    pub fn workers(&self) -> usize {
        match self {
            Fleet::Local(_) => 0,
            Fleet::Remote(w) => w.len(),
        }
    }

    /// CPU clock ticks the clients have used so far: this process, plus its workers.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let mut t = util::cpu_ticks(std::process::id())?;
        if let Fleet::Remote(ws) = self {
            for w in ws {
                t += util::cpu_ticks(w.child.id())?;
            }
        }
        Some(t)
    }

    /// Current counters (workers: as of their last line, at most ~100 ms old).
    pub fn counts(&self) -> Counts {
        match self {
            Fleet::Local(p) => p.stats.counts(),
            Fleet::Remote(ws) => {
                let mut c = Counts::default();
                for w in ws {
                    c.merge(&w.counts.lock().unwrap());
                }
                c
            }
        }
    }

    /// Fails when a worker died.
    pub fn check_alive(&mut self) -> R<()> {
        if let Fleet::Remote(ws) = self {
            for w in ws.iter_mut() {
                if let Ok(Some(st)) = w.child.try_wait() {
                    return Err(format!("load worker {} exited early ({st})", w.idx));
                }
            }
        }
        Ok(())
    }

    /// Every connection whose socket is gone resumes, connection i on `addrs[i % len]`,
    /// except those in `skip` (sorted).
    pub fn resume(&mut self, addrs: &[SocketAddr], skip: &[usize]) -> R<()> {
        match self {
            Fleet::Local(p) => {
                p.resume(addrs.to_vec(), skip.to_vec());
                Ok(())
            }
            Fleet::Remote(ws) => {
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                for w in ws.iter_mut() {
                    w.send(&json!({"cmd": "resume", "addrs": addrs, "skip": skip}))?;
                }
                Ok(())
            }
        }
    }

    /// Merged measurements so far.
    pub async fn report(&mut self, within: Duration) -> R<Report> {
        match self {
            Fleet::Local(p) => Ok(p.stats.report()),
            Fleet::Remote(ws) => {
                for w in ws.iter_mut() {
                    w.send(&json!({"cmd": "report"}))?;
                }
                collect(ws, within).await
            }
        }
    }

    /// Closes every connection cleanly; returns the final measurements.
    pub async fn close(&mut self, within: Duration) -> R<Report> {
        match self {
            Fleet::Local(p) => {
                p.close_all(within).await;
                Ok(p.stats.report())
            }
            Fleet::Remote(ws) => {
                for w in ws.iter_mut() {
                    w.send(&json!({"cmd": "close"}))?;
                }
                let r = collect(ws, within + Duration::from_secs(5)).await;
                for w in ws.iter_mut() {
                    w.stdin.take();
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    loop {
                        match w.child.try_wait() {
                            Ok(Some(_)) | Err(_) => break,
                            Ok(None) if std::time::Instant::now() > deadline => {
                                let _ = w.child.kill();
                                let _ = w.child.wait();
                                break;
                            }
                            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                }
                r
            }
        }
    }
}

async fn collect(ws: &mut [WorkerProc], within: Duration) -> R<Report> {
    let mut rep = Report::empty();
    let deadline = tokio::time::Instant::now() + within;
    for w in ws.iter_mut() {
        match tokio::time::timeout_at(deadline, w.reports.recv()).await {
            Err(_) => return Err(format!("load worker {} did not report in time", w.idx)),
            Ok(None) => return Err(format!("load worker {} ended without a report", w.idx)),
            Ok(Some(r)) => rep.merge_wire(&r?)?,
        }
    }
    Ok(rep)
}

impl WorkerProc {
    fn send(&mut self, v: &Value) -> R<()> {
        let idx = self.idx;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("load worker {idx} already closed"))?;
        writeln!(stdin, "{v}")
            .and_then(|_| stdin.flush())
            .ctx(format!("sending a command to load worker {idx}"))
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_worker(exe: &std::path::Path, idx: usize, cfg: &WorkerConfig) -> R<WorkerProc> {
    let mut child = Command::new(exe)
        .arg("--worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ctx(format!("starting load worker {idx} ({})", exe.display()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = serde_json::to_string(cfg).expect("worker config as JSON");
    writeln!(stdin, "{line}")
        .and_then(|_| stdin.flush())
        .ctx(format!("configuring load worker {idx}"))?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    let counts2 = counts.clone();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(stdout);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("load worker {idx}: {line}");
                continue;
            };
            match v["kind"].as_str() {
                Some("counts") => {
                    if let Ok(c) = serde_json::from_value::<Counts>(v["counts"].clone()) {
                        *counts2.lock().unwrap() = c;
                    }
                }
                Some("report") => {
                    let r = serde_json::from_value::<WireReport>(v["report"].clone())
                        .ctx(format!("reading load worker {idx}'s report"));
                    if let Ok(r) = &r {
                        *counts2.lock().unwrap() = r.counts.clone();
                    }
                    let _ = tx.send(r);
                }
                Some("fatal") => {
                    let _ = tx.send(Err(format!(
                        "load worker {idx} failed: {}",
                        v["message"].as_str().unwrap_or("?")
                    )));
                }
                _ => eprintln!("load worker {idx}: {line}"),
            }
        }
    });
    Ok(WorkerProc {
        idx,
        child,
        stdin: Some(stdin),
        counts,
        reports: rx,
    })
}

fn emit(v: &Value) {
    let out = std::io::stdout();
    let mut l = out.lock();
    let _ = writeln!(l, "{v}");
    let _ = l.flush();
}

/// The `--worker` mode: hold a share of the connections, obey the parent.
pub fn worker_main() -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&json!({"kind": "fatal", "message": format!("tokio runtime: {e}")}));
            return 1;
        }
    };
    match rt.block_on(worker_run()) {
        Ok(()) => 0,
        Err(e) => {
            emit(&json!({"kind": "fatal", "message": e}));
            1
        }
    }
}

async fn worker_run() -> R<()> {
    // Commands arrive on stdin, read by a plain thread.
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .map_err(|_| "no configuration on stdin within 30 s".to_string())?
        .ok_or("stdin closed before the configuration")?;
    let cfg: WorkerConfig = serde_json::from_str(&first).ctx("worker configuration")?;
    util::set_epoch(cfg.epoch_unix_ns);
    let mut pool = Pool::new(ConnParams {
        addrs: cfg.addrs.clone(),
        bind_ip: cfg.bind_ip,
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        resume_from_received: cfg.resume_from_received,
        track_order: cfg.track_order,
        max_connecting: cfg.max_connecting,
        raw_readers: cfg.raw_readers,
    });
    pool.start_opening(cfg.plan.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                emit(&json!({"kind": "counts", "counts": pool.stats.counts()}));
            }
            line = rx.recv() => {
                let Some(line) = line else {
                    pool.close_all(Duration::from_secs(10)).await;
                    return Ok(());
                };
                let v: Value = serde_json::from_str(&line).ctx("worker command")?;
                match v["cmd"].as_str() {
                    Some("resume") => {
                        let addrs = serde_json::from_value::<Vec<SocketAddr>>(v["addrs"].clone()).ctx("resume addresses")?;
                        let skip = serde_json::from_value::<Vec<usize>>(v["skip"].clone()).ctx("resume skip list")?;
                        pool.resume(addrs, skip);
                    }
                    Some("report") => {
                        emit(&json!({"kind": "report", "report": pool.stats.wire()}));
                    }
                    Some("close") => {
                        pool.close_all(Duration::from_secs(10)).await;
                        emit(&json!({"kind": "report", "report": pool.stats.wire()}));
                        return Ok(());
                    }
                    other => return Err(format!("unknown worker command {other:?}")),
                }
            }
        }
    }
}
