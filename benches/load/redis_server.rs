//! The Redis of a cluster run: one `redis-server` started by the generator on a free
//! loopback port and a temp dir, stopped (and its files removed) at the end.

use crate::server::free_port;
use crate::util::{self, Ctx, R};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub url: String,
    pub pid: u32,
    /// How persistence was set: `appendonly yes, appendfsync everysec`, ...
    pub persistence: String,
    child: Option<Child>,
    args: Vec<String>,
    dir: Option<tempfile::TempDir>,
    keep: bool,
    client: redis::Client,
}

impl RedisServer {
    /// Starts `bin` and waits until it answers PING. `aof` is `everysec`, `always`, `no`
    /// (appendonly with that appendfsync) or `off` (no AOF and no snapshots).
    pub async fn start(
        bin: &std::path::Path,
        aof: &str,
        extra: &[String],
        within: Duration,
        keep: bool,
    ) -> R<RedisServer> {
        let persistence: Vec<&str> = match aof {
            "everysec" | "always" | "no" => vec!["--appendonly", "yes", "--appendfsync", aof],
            "off" => vec!["--appendonly", "no"],
            other => {
                return Err(format!(
                    "--redis-aof {other}: expected everysec, always, no or off"
                ))
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("tether-load-redis-")
            .tempdir()
            .ctx("creating a temp dir for Redis")?;
        let port = free_port()?;
        let log = dir.path().join("redis.log");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--save",
            "",
            "--dir",
            &dir.path().display().to_string(),
            "--logfile",
            &log.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(persistence.iter().map(|s| s.to_string()));
        args.extend(extra.iter().cloned());
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .ctx(format!(
                "starting {} (install Redis 7, or pass --redis-server PATH)",
                bin.display()
            ))?;
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str()).ctx("the Redis URL")?;
        let mut r = RedisServer {
            url,
            pid: child.id(),
            persistence: if aof == "off" {
                "no AOF, no snapshots".into()
            } else {
                format!("appendonly yes, appendfsync {aof}")
            },
            child: Some(child),
            args,
            dir: Some(dir),
            keep,
            client,
        };
        let t0 = Instant::now();
        loop {
            if let Some(c) = r.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!(
                        "redis-server exited during start-up ({st}){}",
                        r.log_tail()
                    ));
                }
            }
            match r.query::<String>(&redis::cmd("PING")).await {
                Ok(p) if p == "PONG" => break,
                _ if t0.elapsed() > within => {
                    return Err(format!(
                        "redis-server at {} does not answer PING after {within:?}{}",
                        r.url,
                        r.log_tail()
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Ok(r)
    }

    fn log_tail(&self) -> String {
        let Some(d) = &self.dir else {
            return String::new();
        };
        let text = std::fs::read_to_string(d.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "\n--- last lines of redis.log ---\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n")
        )
    }

    /// One command on a fresh connection (the generator asks Redis little, and rarely).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> R<T> {
        let mut con = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "connecting to Redis: timed out".to_string())?
        .ctx("connecting to Redis")?;
        tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut con))
            .await
            .map_err(|_| "a Redis command timed out".to_string())?
            .ctx("a Redis command")
    }

    pub fn cpu_ticks(&self) -> Option<u64> {
        util::cpu_ticks(self.pid)
    }

    pub fn rss(&self) -> Option<u64> {
        util::rss_bytes(self.pid)
    }

    pub fn describe(&self) -> Value {
        json!({
            "url": self.url,
            "pid": self.pid,
            "persistence": self.persistence,
            "args": self.args,
        })
    }

    /// SHUTDOWN NOSAVE (no final AOF rewrite or snapshot to wait for), then a bounded wait;
    /// SIGKILL past it.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self
            .query::<redis::Value>(redis::cmd("SHUTDOWN").arg("NOSAVE"))
            .await;
        let t0 = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t0.elapsed() > Duration::from_secs(5) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        if self.keep {
            if let Some(d) = self.dir.take() {
                eprintln!("kept Redis's files and log in {}", d.keep().display());
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.finish();
    }
}
