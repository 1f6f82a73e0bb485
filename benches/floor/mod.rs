//! The floor: the cheapest this machine can do tether's fan-out and connect work, served to
//! the same load generator client so that tether's figures can be read as a ratio to it.
//!
//! - [`ws`]: the bare upgrade (`101` and a small `welcome` in one write; no auth, no store)
//!   and the held connection, read by tungstenite with tether's 128-byte buffer.
//! - [`fanout`]: the sockets of each user, and `POST /v1/users/{id}/messages` as one frame
//!   per socket, each its own `sendmsg`, spread over the cores as tether spreads it.
//! - [`http`]: just enough HTTP/1.1 for the generator's requests.
//!
//! It answers the routes the generator uses (`/ready`, `/v1/health`, the messages POST and
//! `/ws`) and takes `serve --data-dir DIR --listen ADDR` like tether, ignoring tether's other
//! flags, so that the generator can spawn it as it spawns tether. In DIR it writes a
//! `secrets.toml` (whose keys it does not check) and a `tether.lock` with its pid, so that
//! `--url` can attach to it and read its CPU from `/proc`.

pub mod fanout;
pub mod http;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use fanout::Sockets;
use tokio::net::TcpStream;

pub const USAGE: &str = "\
floor serve [--listen ADDR] [--data-dir DIR] [--threads N]

The floor server for the load generator: WebSocket upgrade and welcome, and fan-outs of
`POST /v1/users/{id}/messages`, with nothing else. Other flags (tether's) are ignored.

  --listen ADDR    address to listen on [default: 127.0.0.1:8090]
  --data-dir DIR   write DIR/secrets.toml and DIR/tether.lock (for the generator's --url)
  --threads N      threads one fan-out writes from [default: the cores]";

pub struct Options {
    pub listen: SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub threads: usize,
}

impl Options {
    /// Reads `serve [--listen ADDR] [--data-dir DIR] [--threads N] [ignored...]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            listen: "127.0.0.1:8090".parse().expect("a socket address"),
            data_dir: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut it = args.iter();
        match it.next().map(String::as_str) {
            Some("serve") => {}
            other => return Err(format!("expected `serve`, got {other:?}")),
        }
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--listen" => {
                    let v = value(a)?;
                    o.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
                }
                "--data-dir" => o.data_dir = Some(value(a)?.into()),
                "--threads" => {
                    let v = value(a)?;
                    o.threads = v.parse().map_err(|e| format!("--threads {v}: {e}"))?;
                }
                // tether's flags, and cargo's `--bench`.
                _ => {}
            }
        }
        Ok(o)
    }
}

/// The floor as a program: `args` are those after the program name. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return 2;
        }
    };
    if let Some(dir) = &opts.data_dir {
        if let Err(e) = write_data_dir(dir) {
            eprintln!("error: {}: {e}", dir.display());
            return 1;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return 1;
        }
    };
    let r = rt.block_on(async {
        let listener = bind(opts.listen)?;
        eprintln!("floor listening on {}", listener.local_addr()?);
        run(listener, opts.threads).await;
        Ok::<_, std::io::Error>(())
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}: {e}", opts.listen);
            1
        }
    }
}

/// What the generator reads from a data dir: the secrets (any will do: nothing is checked)
/// and the pid.
fn write_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("secrets.toml"),
        "# The floor server checks neither.\njwt_secret = \"floor\"\nadmin_api_key = \"floor\"\n",
    )?;
    std::fs::write(
        dir.join("tether.lock"),
        format!("pid = {}\n", std::process::id()),
    )
}

/// tether's listening socket: address reuse and a 4096-deep accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts forever; each connection is served by a task of its own.
pub async fn run(listener: tokio::net::TcpListener, threads: usize) {
    let sockets = Arc::new(Sockets::new(threads));
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                // As tether: small frames must not wait for Nagle.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, sockets.clone()));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// One connection: HTTP requests until it asks for a WebSocket.
async fn serve(mut tcp: TcpStream, sockets: Arc<Sockets>) {
    let mut reader = http::Reader::default();
    loop {
        let req = match reader.next(&mut tcp).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        if ws::is_upgrade(&req) {
            return ws::serve(tcp, req, reader.into_rest(), sockets).await;
        }
        let (status, body) = route(&req, &sockets);
        if http::respond(&mut tcp, status, &body).await.is_err() {
            return;
        }
    }
}

fn route(req: &http::Request, sockets: &Sockets) -> (u16, String) {
    let path = req.path();
    match (req.method.as_str(), path) {
        ("GET", "/ready") => (200, r#"{"ready":true}"#.into()),
        ("GET", "/v1/health") => (
            200,
            format!(r#"{{"status":"ok","activeConnections":{}}}"#, sockets.len()),
        ),
        ("POST", _) if path.starts_with("/v1/users/") && path.ends_with("/messages") => {
            let user = pct_decode(&path["/v1/users/".len()..path.len() - "/messages".len()]);
            #[derive(serde::Deserialize)]
            struct Post<'a> {
                #[serde(borrow)]
                data: &'a serde_json::value::RawValue,
            }
            match serde_json::from_slice::<Post>(&req.body) {
                Ok(p) => {
                    let delivered = sockets.deliver(&user, p.data.get());
                    (200, format!(r#"{{"delivered":{delivered}}}"#))
                }
                Err(_) => (400, r#"{"error":"expected {\"data\": ...}"}"#.into()),
            }
        }
        _ => (404, r#"{"error":"not found"}"#.into()),
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
