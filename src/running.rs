//! The server running on a data directory, as the other commands find it: `backup`,
//! `inspect` and `listen` beside a live `tether serve`.
//!
//! A running server holds the lock on `<data-dir>/tether.lock`, which names its pid. Its
//! address is read from the process itself (its listening TCP sockets, from `/proc`), since
//! it may have been started with a `--listen` the configuration does not show (or port 0);
//! where `/proc` cannot tell (another OS, another user's process), the configuration's
//! `listen` is used. Its admin API is then reached with plain HTTP/1.1 on that address: the
//! operator's own box, never TLS.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one call to the running server may take, connect to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A server holding a data directory's lock.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The pid written into `tether.lock` (absent if the file was empty or garbled).
    pub pid: Option<u32>,
}

/// The process that holds `<data_dir>/tether.lock`, if one does. Creates nothing: a
/// directory without the file has no server.
pub fn holder(data_dir: &Path) -> Option<Holder> {
    let path = data_dir.join("tether.lock");
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock() {
        // Nobody holds it (a `kill -9` left the file behind); dropping the file unlocks.
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Some(Holder { pid })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The TCP addresses `pid` listens on, from `/proc` (empty where that cannot be read).
pub fn listening(pid: u32) -> Vec<SocketAddr> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        out.extend(
            parse_proc_net_tcp(&text)
                .into_iter()
                .filter(|(_, inode)| inodes.contains(inode))
                .map(|(addr, _)| addr),
        );
    }
    out
}

/// The listening sockets of a `/proc/net/tcp` or `tcp6` table: (address, inode).
fn parse_proc_net_tcp(text: &str) -> Vec<(SocketAddr, u64)> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != LISTEN {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((SocketAddr::new(proc_ip(ip)?, port), inode))
        })
        .collect()
}

/// An address as `/proc/net/tcp*` writes it: 32-bit words in hex, each in host order.
fn proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Where to connect to reach a socket bound to `addr`: a wildcard address is reached on
/// loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// A running server found for a data directory.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: Option<u32>,
    /// The address its API answers on.
    pub addr: SocketAddr,
    /// How the address was found, for the operator: "its listening socket" or "the
    /// configuration's listen".
    pub found_by: &'static str,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// "pid N" or "pid unknown", for messages.
    pub fn pid_text(&self) -> String {
        self.pid
            .map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
    }
}

/// The server running on `data_dir`, and where its API answers. `Ok(None)`: no server
/// holds the directory. `Err`: one does, but its address cannot be told.
pub fn find(data_dir: &Path, configured: SocketAddr) -> Result<Option<Running>, String> {
    let Some(h) = holder(data_dir) else {
        return Ok(None);
    };
    let sockets = h.pid.map(listening).unwrap_or_default();
    // A server listens on one TCP socket; with several (socket activation), the configured
    // port picks one if it is among them.
    let own = sockets
        .iter()
        .find(|a| a.port() == configured.port())
        .or_else(|| sockets.first())
        .copied();
    let running = |addr, found_by| Running {
        pid: h.pid,
        addr: reachable(addr),
        found_by,
    };
    match own {
        Some(addr) => Ok(Some(running(addr, "its listening socket"))),
        None if configured.port() != 0 => {
            Ok(Some(running(configured, "the configuration's listen")))
        }
        None => Err(format!(
            "data directory {} is in use by a running tether ({}), and its address cannot be \
             told: pass --server http://HOST:PORT",
            data_dir.display(),
            h.pid
                .map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
        )),
    }
}

/// `GET path` on the server at `addr` with an API key: the status and the body.
pub async fn get(addr: SocketAddr, key: &str, path: &str) -> Result<(u16, Bytes), String> {
    tokio::time::timeout(CALL_TIMEOUT, get_inner(addr, key, path))
        .await
        .map_err(|_| format!("http://{addr}{path} did not answer within {CALL_TIMEOUT:?}"))?
}

async fn get_inner(addr: SocketAddr, key: &str, path: &str) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach the server at http://{addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http://{addr}: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = send
        .send_request(req)
        .await
        .map_err(|e| format!("http://{addr}{path}: {e}"))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("http://{addr}{path}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// `GET path` as JSON, failing on any status but 200 with the server's error message.
pub async fn get_json(
    addr: SocketAddr,
    key: &str,
    path: &str,
) -> Result<serde_json::Value, String> {
    let (status, body) = get(addr, key, path).await?;
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("GET {path} answered {status}: {message}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
}

/// Bytes under `dir`, counted without opening anything the server holds.
pub fn size_on_disk(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_on_disk(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `tether inspect` of a running server: what its API tells, labelled as such.
pub async fn inspect(
    data_dir: &Path,
    server: &Running,
    key: &str,
    json: bool,
) -> Result<(), String> {
    let health = get_json(server.addr, key, "/v1/health").await?;
    let stats = get_json(server.addr, key, "/v1/stats").await?;
    let limits = get_json(server.addr, key, "/v1/limits").await?;
    let by_state = health["byState"].clone();
    let connections: u64 = by_state
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
    let report = serde_json::json!({
        "source": "running server",
        "pid": server.pid,
        "server": server.base_url(),
        "dataDir": data_dir.display().to_string(),
        "connections": connections,
        "connectionsByState": by_state,
        "connectionsByType": health["byConnectionType"],
        "connectionsByClientVersion": health["byClientVersion"],
        "usersWithConnections": health["usersWithConnections"],
        "sessions": health["sessions"],
        "memoryUsageBytes": health["memoryUsage"],
        "messagesPerSecond": stats["messagesPerSecond"],
        "avgConnectionDurationSeconds": stats["avgConnectionDuration"],
        "limits": limits,
        "sizeOnDiskBytes": size_on_disk(data_dir),
    });
    if json {
        return crate::backup::print_report(&format!("{report:#}\n"));
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut out = format!(
        "from the running server ({}, {}), through its API; stop it to read the data \
         directory itself\n",
        server.pid_text(),
        server.base_url()
    );
    out += &format!("data directory   {}\n", data_dir.display());
    out += &format!("connections      {connections}\n");
    for (group, v) in [
        ("", &health["byState"]),
        ("type ", &health["byConnectionType"]),
        ("version ", &health["byClientVersion"]),
    ] {
        for (k, n) in v.as_object().into_iter().flatten() {
            out += &format!("  {:<14} {}\n", format!("{group}{k}"), text(n));
        }
    }
    out += &format!(
        "users            {}\n",
        text(&health["usersWithConnections"])
    );
    out += &format!("sessions         {}\n", text(&health["sessions"]));
    out += &format!("memory (RSS)     {} bytes\n", text(&health["memoryUsage"]));
    out += &format!("messages/s       {}\n", text(&stats["messagesPerSecond"]));
    out += &format!(
        "limits           {} per user, {} in all, connection TTL {} s\n",
        text(&limits["maxPerUser"]),
        text(&limits["maxTotal"]),
        text(&limits["ttlSeconds"])
    );
    out += &format!("size on disk     {} bytes\n", size_on_disk(data_dir));
    crate::backup::print_report(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listening_sockets_are_read() {
        // Two lines as Linux writes them on a little-endian host: 127.0.0.1:8080 listening,
        // and an established connection that is not.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_net_tcp(v4),
                vec![("127.0.0.1:8080".parse().unwrap(), 4242)]
            );
            let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
               0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n";
            assert_eq!(
                parse_proc_net_tcp(v6),
                vec![("[::1]:8081".parse().unwrap(), 77)]
            );
        }
    }

    #[test]
    fn a_wildcard_address_is_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9000".parse().unwrap()),
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:9000".parse().unwrap()),
            "[::1]:9000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("10.1.2.3:9000".parse().unwrap()),
            "10.1.2.3:9000".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn no_lock_file_means_no_server() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(holder(tmp.path()).is_none());
        assert!(!tmp.path().join("tether.lock").exists(), "nothing created");
        // A file left behind by a killed server, unlocked: no server either.
        std::fs::write(tmp.path().join("tether.lock"), "12345").unwrap();
        assert!(holder(tmp.path()).is_none());
    }

    #[test]
    fn a_held_lock_names_its_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = crate::store::lock_data_dir(tmp.path()).unwrap();
        let h = holder(tmp.path()).expect("held");
        assert_eq!(h.pid, Some(std::process::id()));
        drop(lock);
        assert!(holder(tmp.path()).is_none());
    }
}
