//! The server under test: spawned by the generator on a temp data dir and a
//! free port (default), or an already running one (`--url` + `--data-dir`).

use crate::util::{self, Ctx, R};
use serde_json::Value;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// Attach to this running server instead of spawning one.
    pub url: Option<String>,
    /// Data dir: of the running server (attach), or to spawn on (else a temp dir).
    pub data_dir: Option<PathBuf>,
    pub bin: PathBuf,
    /// Flags passed to `tether serve` after --data-dir/--listen.
    pub args: Vec<String>,
    pub ready_timeout: Duration,
    pub keep_data: bool,
    /// Secrets given to the server (cluster mode: every node holds the same, in
    /// `TETHER_JWT_SECRET` and `TETHER_ADMIN_API_KEY`) instead of read from its
    /// `secrets.toml`.
    pub secrets: Option<(String, String)>,
    /// How messages name this server ("server", "node 1").
    pub label: String,
}

/// A request that failed without an HTTP answer.
#[derive(Debug)]
pub struct SendError {
    /// The connection was refused or never made: the server saw nothing.
    pub not_sent: bool,
    pub message: String,
}

pub struct Server {
    pub http_base: String,
    pub addr: SocketAddr,
    pub jwt_secret: String,
    pub admin_key: String,
    pub pid: Option<u32>,
    last_pid: Option<u32>,
    pub data_dir: PathBuf,
    pub spawned: bool,
    pub http: reqwest::Client,
    child: Option<Child>,
    tmp: Option<tempfile::TempDir>,
    log_path: Option<PathBuf>,
    opts: ServerOpts,
}

pub fn http_client() -> R<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .ctx("building the HTTP client")
}

pub fn free_port() -> R<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx("finding a free port")?;
    Ok(l.local_addr().ctx("finding a free port")?.port())
}

fn read_secrets(dir: &Path) -> R<(String, String)> {
    let path = dir.join("secrets.toml");
    let text = std::fs::read_to_string(&path).ctx(format!("reading {}", path.display()))?;
    let t: toml::Table = toml::from_str(&text).ctx(format!("parsing {}", path.display()))?;
    let get = |k: &str| {
        t.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{} has no string key `{k}`", path.display()))
    };
    Ok((get("jwt_secret")?, get("admin_api_key")?))
}

/// The pid in DIR/tether.lock: a bare number, or a `pid` key (TOML/JSON/k=v).
fn read_lock_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("tether.lock")).ok()?;
    parse_lock_pid(&text)
}

pub fn parse_lock_pid(text: &str) -> Option<u32> {
    let digits_after = |s: &str| -> Option<u32> {
        let s = s.trim_start_matches(|c: char| !c.is_ascii_digit());
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    match text.find("pid") {
        Some(i) => digits_after(&text[i + 3..]),
        None => digits_after(text),
    }
}

fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Server {
    pub async fn start(opts: ServerOpts) -> R<Server> {
        match opts.url.clone() {
            Some(url) => Self::attach(opts, &url).await,
            None => Self::spawn_new(opts).await,
        }
    }

    async fn attach(opts: ServerOpts, url: &str) -> R<Server> {
        let parsed = reqwest::Url::parse(url).ctx(format!("--url {url}"))?;
        if parsed.scheme() != "http" {
            return Err(format!("--url {url}: only http:// is supported"));
        }
        let host = parsed.host_str().unwrap_or("").to_string();
        if !is_loopback_host(&host) {
            return Err(format!(
                "--url {url}: the load generator only talks to loopback (127.0.0.1, ::1, localhost)"
            ));
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = (host.trim_matches(|c| c == '[' || c == ']'), port)
            .to_socket_addrs()
            .ctx(format!("resolving {host}"))?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| format!("{host} does not resolve to a loopback address"))?;
        let data_dir = opts.data_dir.clone().ok_or(
            "--url needs --data-dir DIR (the server's data dir, for secrets.toml and tether.lock)",
        )?;
        let (jwt_secret, admin_key) = read_secrets(&data_dir)?;
        let pid = read_lock_pid(&data_dir).filter(|p| Path::new(&format!("/proc/{p}")).exists());
        if pid.is_none() {
            eprintln!(
                "warning: no live pid in {}/tether.lock: server RSS and CPU figures come from /v1/health only",
                data_dir.display()
            );
        }
        let s = Server {
            http_base: format!("http://{addr}"),
            addr,
            jwt_secret,
            admin_key,
            pid,
            last_pid: pid,
            data_dir,
            spawned: false,
            http: http_client()?,
            child: None,
            tmp: None,
            log_path: None,
            opts,
        };
        s.wait_ready().await?;
        Ok(s)
    }

    async fn spawn_new(opts: ServerOpts) -> R<Server> {
        if !opts.bin.exists() {
            return Err(format!(
                "server binary {} does not exist (build it with `cargo build --release`, or pass --server-bin)",
                opts.bin.display()
            ));
        }
        let (tmp, data_dir, log_path) = match &opts.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d).ctx(format!("creating {}", d.display()))?;
                let log = d.with_extension("server.log");
                (None, d.clone(), log)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("tether-load-")
                    .tempdir()
                    .ctx("creating a temp dir")?;
                let data = t.path().join("data");
                let log = t.path().join("server.log");
                (Some(t), data, log)
            }
        };
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("addr");
        let mut s = Server {
            http_base: format!("http://{addr}"),
            addr,
            jwt_secret: String::new(),
            admin_key: String::new(),
            pid: None,
            last_pid: None,
            data_dir,
            spawned: true,
            http: http_client()?,
            child: None,
            tmp,
            log_path: Some(log_path),
            opts,
        };
        s.spawn_child()?;
        s.wait_ready().await?;
        let (j, a) = match s.opts.secrets.clone() {
            Some(given) => given,
            None => read_secrets(&s.data_dir)?,
        };
        s.jwt_secret = j;
        s.admin_key = a;
        Ok(s)
    }

    /// Starts `tether serve` under `sh -c 'ulimit -n <hard>; exec ...'` so that
    /// it may hold as many sockets as the machine allows.
    fn spawn_child(&mut self) -> R<()> {
        let log_path = self.log_path.clone().expect("spawned server has a log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ctx(format!("opening {}", log_path.display()))?;
        let log2 = log.try_clone().ctx("server log")?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#)
            .arg(&self.opts.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.opts.args)
            .envs(self.opts.secrets.iter().flat_map(|(jwt, admin)| {
                [
                    ("TETHER_JWT_SECRET", jwt.as_str()),
                    ("TETHER_ADMIN_API_KEY", admin.as_str()),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .ctx(format!("starting {}", self.opts.bin.display()))?;
        // `exec` keeps the pid: the shell's pid is the server's.
        self.pid = Some(child.id());
        self.last_pid = self.pid;
        self.child = Some(child);
        Ok(())
    }

    fn log_tail(&self) -> String {
        match &self.log_path {
            Some(p) => format!("\n--- last lines of {} ---\n{}", p.display(), tail(p, 20)),
            None => String::new(),
        }
    }

    /// Polls GET /ready until 200, with a deadline; fails at once if the
    /// spawned server exits.
    pub async fn wait_ready(&self) -> R<Duration> {
        let t0 = Instant::now();
        let deadline = t0 + self.opts.ready_timeout;
        let url = format!("{}/ready", self.http_base);
        let mut last;
        loop {
            if let Some(child) = &self.child {
                // try_wait needs &mut; use /proc instead to stay &self.
                let pid = child.id();
                let state =
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = state
                    .rfind(')')
                    .map(|i| state[i + 1..].trim_start().starts_with('Z'))
                    .unwrap_or(true);
                if zombie {
                    return Err(format!(
                        "the {} exited during start-up ({} serve --data-dir {} --listen {} {}){}",
                        self.opts.label,
                        self.opts.bin.display(),
                        self.data_dir.display(),
                        self.addr,
                        self.opts.args.join(" "),
                        self.log_tail()
                    ));
                }
            }
            let r = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => return Ok(t0.elapsed()),
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(e) => {
                    last = if e.is_connect() {
                        "connection refused".into()
                    } else {
                        e.to_string()
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} at {} not ready after {:?} (last: {last}){}",
                    self.opts.label,
                    self.http_base,
                    self.opts.ready_timeout,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(util::rss_bytes)
    }

    /// RSS from /proc, else the server's own `memoryUsage`.
    pub async fn rss_any(&self) -> Option<u64> {
        match self.rss() {
            Some(r) => Some(r),
            None => self
                .get("/v1/health")
                .await
                .ok()
                .and_then(|v| v["memoryUsage"].as_u64()),
        }
    }

    pub fn cpu_ticks(&self) -> Option<u64> {
        self.pid.and_then(util::cpu_ticks)
    }

    /// Stops the spawned server (SIGTERM, or SIGKILL with `kill9`) and waits
    /// for it to exit; SIGKILL after `within`. Returns how long it took.
    pub async fn stop(&mut self, kill9: bool, within: Duration) -> R<Duration> {
        let t0 = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return Err("only a server started by the generator can be stopped".into());
        };
        if kill9 {
            let _ = child.kill();
        } else {
            let st = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .ctx("running kill -TERM")?;
            if !st.success() {
                return Err(format!("kill -TERM {} failed", child.id()));
            }
        }
        let mut forced = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if t0.elapsed() > within && !forced => {
                    eprintln!(
                        "warning: server did not exit {within:?} after SIGTERM; sending SIGKILL"
                    );
                    let _ = child.kill();
                    forced = true;
                }
                Ok(None) if t0.elapsed() > within + Duration::from_secs(10) => {
                    return Err("server does not exit even after SIGKILL".into());
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(format!("waiting for the server: {e}")),
            }
        }
        self.child = None;
        self.pid = None;
        if forced {
            eprintln!("warning: the stop needed SIGKILL");
        }
        Ok(t0.elapsed())
    }

    /// Stops a spawned server at the end of a run (SIGTERM, bounded wait);
    /// an attached one is left running.
    pub async fn stop_quietly(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop(false, Duration::from_secs(10)).await {
                eprintln!("warning: stopping the server: {e}");
            }
        }
    }

    /// Starts the server again on the same data dir and port; waits for /ready.
    pub async fn restart(&mut self) -> R<Duration> {
        if !self.spawned {
            return Err("only a server started by the generator can be restarted".into());
        }
        self.spawn_child()?;
        self.wait_ready().await
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.header("Authorization", format!("Bearer {}", self.admin_key))
    }

    pub async fn get(&self, path: &str) -> R<Value> {
        let url = format!("{}{path}", self.http_base);
        let r = self
            .auth(self.http.get(&url))
            .send()
            .await
            .ctx(format!("GET {path}"))?;
        let st = r.status();
        let body = r.text().await.ctx(format!("GET {path}"))?;
        if !st.is_success() {
            return Err(format!(
                "GET {path}: HTTP {st}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        serde_json::from_str(&body).ctx(format!("GET {path}: body is not JSON"))
    }

    /// Sends JSON, returns (status, body as JSON or Null).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> R<(u16, Value)> {
        self.try_send_json(method, path, body)
            .await
            .map_err(|e| e.message)
    }

    /// Like `send_json`, but says whether a failed request never reached the server (so
    /// that sending it to another node cannot do it twice).
    pub async fn try_send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), SendError> {
        let url = format!("{}{path}", self.http_base);
        let failed = |e: reqwest::Error| SendError {
            not_sent: e.is_connect(),
            message: format!("{method} {path}: {e}"),
        };
        let r = self
            .auth(self.http.request(method.clone(), &url))
            .json(body)
            .send()
            .await
            .map_err(failed)?;
        let st = r.status().as_u16();
        let bytes = r.bytes().await.map_err(failed)?;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((st, v))
    }

    pub async fn active_connections(&self) -> R<u64> {
        let h = self.get("/v1/health").await?;
        h["activeConnections"]
            .as_u64()
            .ok_or_else(|| format!("/v1/health has no activeConnections: {h}"))
    }

    pub fn describe(&self) -> Value {
        serde_json::json!({
            "name": self.opts.label,
            "mode": if self.spawned { "spawned" } else { "attached" },
            "url": self.http_base,
            "pid": self.last_pid,
            "dataDir": self.data_dir,
            "args": self.opts.args,
        })
    }

    /// Keeps the temp dir (data + server.log) after the run.
    pub fn keep(&mut self) -> Option<PathBuf> {
        self.tmp.take().map(|t| t.keep())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.opts.keep_data {
            if let Some(p) = self.keep() {
                eprintln!("kept {} data and log in {}", self.opts.label, p.display());
            }
        }
    }
}
