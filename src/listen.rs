//! `tether listen`: a terminal client of the WebSocket protocol (docs/protocol.md).
//!
//! It connects, prints every frame the server sends as one JSON line on stdout, acks what
//! it printed, and sends each line of stdin as a frame. When the connection is lost in a
//! way the close code says to come back from (1001, 1006, 1013, 4000–4499, …), it
//! reconnects with full-jitter backoff and resumes with its connection id, resume token
//! and `lastSeq`, as the JavaScript client does, so a server restart loses nothing and
//! prints nothing twice. 1000, 1009 and 4500–4999 are final. Status lines go to stderr,
//! so stdout is only frames (`tether listen … | jq`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

/// Makes a new JWT each time it is called (a fresh one for every reconnect and refresh).
pub type Mint = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the client presents.
#[derive(Clone)]
pub enum Credential {
    /// A JWT or `tk_` API key, as given.
    Token(String),
    /// A session id.
    Session(String),
    /// Tokens minted as needed.
    Mint(Mint),
}

pub struct ListenArgs {
    /// `ws://host:port/ws`.
    pub url: String,
    pub credential: Credential,
    /// Read stdin lines and send them as frames.
    pub stdin: bool,
}

/// Reconnect delays: full jitter, from 500 ms up to 20 s, reset after a stable connection.
const BACKOFF_BASE_MS: u64 = 500;
const BACKOFF_CAP_MS: u64 = 20_000;
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Acks are batched: each client frame counts against the connection's rate limit.
const ACK_INTERVAL: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Stdin lines kept while there is no connection; past that the oldest are dropped.
const MAX_QUEUED_LINES: usize = 1000;

/// The delay before reconnect number `attempt` (from 0): uniform in
/// `[0, min(cap, base · 2^attempt))`.
pub fn backoff(attempt: u32, random: u64) -> Duration {
    let ceiling = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempt.min(20))
        .min(BACKOFF_CAP_MS);
    Duration::from_millis(random % ceiling.max(1))
}

/// Whether a close code says "reconnect and resume" (SPEC §4), the JavaScript client's rule.
pub fn should_reconnect(code: u16) -> bool {
    (4000..=4499).contains(&code) || [1001, 1005, 1006, 1011, 1012, 1013, 1014].contains(&code)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// What the client keeps across connections.
#[derive(Default)]
struct Resume {
    connection_id: Option<String>,
    token: Option<String>,
    /// The highest seq printed.
    last_seq: u64,
    acked: u64,
}

/// How one connection ended.
enum End {
    /// The socket closed (or was given up on) with this code and reason.
    Closed(u16, String),
    /// Refused before the upgrade: HTTP status and the server's message.
    Refused(u16, String),
    /// Could not connect at all (nobody listening, timeout).
    Unreachable(String),
    /// Ctrl-C or SIGTERM: we closed with 1000.
    Interrupted,
}

fn status(line: impl std::fmt::Display) {
    eprintln!("tether listen: {line}");
}

/// Runs until a final close or an interrupt; the exit status is 0 for 1000 and an
/// interrupt, 1 otherwise.
pub async fn run(args: ListenArgs) -> Result<(), String> {
    let url = ws_url(&args.url)?;
    let (lines_tx, mut lines) = mpsc::channel::<String>(64);
    if args.stdin {
        read_stdin(lines_tx);
    } else {
        drop(lines_tx);
    }
    let mut stop = Box::pin(interrupted());
    let mut resume = Resume::default();
    let mut queued: std::collections::VecDeque<String> = Default::default();
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let end = session(
            &url,
            &args.credential,
            &mut resume,
            &mut lines,
            &mut queued,
            &mut stop,
        )
        .await;
        if started.elapsed() >= STABLE_AFTER {
            attempt = 0;
        }
        let why = match end {
            End::Interrupted => return Ok(()),
            End::Closed(1000, reason) => {
                status(format!("closed by the server: 1000 {reason}"));
                return Ok(());
            }
            End::Closed(code, reason) if !should_reconnect(code) => {
                return Err(format!("closed by the server: {code} {reason}"));
            }
            End::Refused(code, message) if !(code == 408 || code == 429 || code >= 500) => {
                return Err(format!("refused by the server: HTTP {code}: {message}"));
            }
            End::Closed(code, reason) => format!("connection closed: {code} {reason}"),
            End::Refused(code, message) => format!("refused: HTTP {code}: {message}"),
            End::Unreachable(e) => e,
        };
        let delay = backoff(attempt, random_u64());
        attempt = attempt.saturating_add(1);
        status(format!("{why}; reconnecting in {} ms", delay.as_millis()));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// `ws://…/ws` from what was given: an `http://` base or a `ws://` URL without a path
/// gets `/ws`.
fn ws_url(given: &str) -> Result<String, String> {
    let (scheme, rest) = given
        .split_once("://")
        .ok_or_else(|| format!("--url {given:?}: expected ws://HOST:PORT/ws"))?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => {
            return Err(format!(
                "--url {given:?}: tether listen speaks plain ws:// only (run it where the \
                 server listens, or behind a local TLS tunnel)"
            ))
        }
        other => return Err(format!("--url {given:?}: unknown scheme {other}")),
    };
    let rest = if rest.contains('/') {
        rest.to_string()
    } else {
        format!("{rest}/ws")
    };
    Ok(format!("{scheme}://{rest}"))
}

/// Reads stdin on a thread of its own (std's stdin blocks), a line at a time.
fn read_stdin(tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A stdin line as a frame to send, or why not.
fn frame_of_line(line: &str) -> Result<Option<String>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(line) {
        Ok(v) if v.get("type").is_some_and(Value::is_string) => Ok(Some(line.to_string())),
        Ok(_) => Err(format!(
            "not sent: a frame is a JSON object with a \"type\": {line}"
        )),
        Err(e) => Err(format!("not sent: not JSON ({e}): {line}")),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, credential: &Credential, resume: &Resume) -> Result<Socket, End> {
    let mut target = url.to_string();
    if let (Some(id), Some(token)) = (&resume.connection_id, &resume.token) {
        let sep = if target.contains('?') { '&' } else { '?' };
        target.push_str(&format!(
            "{sep}resume={}&resume_token={}&last_seq={}",
            encode(id),
            encode(token),
            resume.last_seq
        ));
    }
    let mut req = target
        .into_client_request()
        .map_err(|e| End::Unreachable(format!("bad URL {url}: {e}")))?;
    let (name, value) = match credential {
        Credential::Token(t) => ("authorization", format!("Bearer {t}")),
        Credential::Session(s) => ("x-session-id", s.clone()),
        Credential::Mint(mint) => (
            "authorization",
            format!("Bearer {}", mint().map_err(End::Unreachable)?),
        ),
    };
    let headers = req.headers_mut();
    for (name, value) in [
        (name, value),
        (
            "x-client-version",
            format!("tether-listen/{}", env!("CARGO_PKG_VERSION")),
        ),
    ] {
        let value = value
            .parse()
            .map_err(|_| End::Unreachable(format!("{name} is not a valid header value")))?;
        headers.insert(name, value);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => Err(End::Unreachable(format!(
            "no answer from {url} within {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(res))) => {
            let code = res.status().as_u16();
            let body = res.body().as_deref().unwrap_or_default();
            let message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            Err(End::Refused(code, message))
        }
        Ok(Err(e)) => Err(End::Unreachable(format!("cannot connect to {url}: {e}"))),
    }
}

/// Percent-encodes a query value (ids and tokens are URL-safe already; this is belt and
/// braces).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes one frame as a line on stdout, flushed (so a pipe sees it at once).
fn print_line(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// One connection, from the handshake to its end.
async fn session(
    url: &str,
    credential: &Credential,
    resume: &mut Resume,
    lines: &mut mpsc::Receiver<String>,
    queued: &mut std::collections::VecDeque<String>,
    stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
) -> End {
    let mut ws = tokio::select! {
        r = open(url, credential, resume) => match r {
            Ok(ws) => ws,
            Err(end) => return end,
        },
        _ = stop.as_mut() => return End::Interrupted,
    };
    let mut welcomed = false;
    let mut disconnect: Option<(u16, String)> = None;
    let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until the welcome says otherwise: the server's default heartbeat.
    let mut silence_limit = Duration::from_millis(2 * 25_000 + 5_000);
    let mut last_heard = Instant::now();
    let far = Duration::from_secs(86_400 * 365);
    let mut refresh_at = tokio::time::Instant::now() + far;
    let mut stdin_open = !lines.is_closed();
    loop {
        let silence = tokio::time::sleep_until((last_heard + silence_limit).into());
        tokio::select! {
            msg = ws.next() => {
                last_heard = Instant::now();
                let text = match msg {
                    None => return lost(disconnect, 1006, ""),
                    Some(Err(e)) => return lost(disconnect, 1006, &e.to_string()),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return lost(disconnect, code, &reason);
                    }
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(_)) => continue,
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("welcome") => {
                        let seq = frame["seq"].as_u64().unwrap_or(0);
                        let resumed = frame["resumed"].as_bool() == Some(true);
                        // A fresh connection counts from its own seq; a resumed one never
                        // above the server's.
                        resume.last_seq = if resumed { resume.last_seq.min(seq) } else { seq };
                        resume.acked = 0;
                        resume.connection_id = frame["connectionId"].as_str().map(str::to_string);
                        resume.token = frame["resumeToken"].as_str().map(str::to_string);
                        if let Some(ms) = frame["heartbeatIntervalMs"].as_u64() {
                            silence_limit = Duration::from_millis(2 * ms + 5_000);
                        }
                        if let Credential::Mint(_) = credential {
                            refresh_at = refresh_time(&frame).unwrap_or(refresh_at);
                        }
                        status(match (resumed, frame["resumeError"].as_str()) {
                            (true, _) => format!(
                                "resumed as connection {} (from {}, after seq {})",
                                frame["connectionId"].as_str().unwrap_or("?"),
                                frame["previousConnectionId"].as_str().unwrap_or("?"),
                                resume.last_seq
                            ),
                            (false, Some(why)) => format!(
                                "connected as a new connection {} (not resumed: {why})",
                                frame["connectionId"].as_str().unwrap_or("?")
                            ),
                            (false, None) => format!(
                                "connected: connection {} of user {}",
                                frame["connectionId"].as_str().unwrap_or("?"),
                                frame["userId"].as_str().unwrap_or("?")
                            ),
                        });
                        welcomed = true;
                        if let Err(e) = print_line(&text) {
                            status(e);
                        }
                        while let Some(f) = queued.pop_front() {
                            if ws.send(Message::text(f)).await.is_err() {
                                return lost(disconnect, 1006, "");
                            }
                        }
                        continue;
                    }
                    Some("disconnect") => {
                        disconnect = Some((
                            frame["code"].as_u64().unwrap_or(1005) as u16,
                            frame["reason"].as_str().unwrap_or("").to_string(),
                        ));
                    }
                    Some("refreshed") => {
                        refresh_at = refresh_time(&frame).unwrap_or(refresh_at);
                    }
                    _ => {}
                }
                if let Some(seq) = frame["seq"].as_u64() {
                    if seq <= resume.last_seq {
                        continue; // printed already, before a resume
                    }
                    if let Err(e) = print_line(&text) {
                        status(e);
                        continue;
                    }
                    resume.last_seq = seq;
                } else if let Err(e) = print_line(&text) {
                    status(e);
                }
            }
            line = lines.recv(), if stdin_open => {
                let Some(line) = line else {
                    stdin_open = false;
                    continue;
                };
                match frame_of_line(&line) {
                    Ok(None) => {}
                    Ok(Some(f)) if welcomed => {
                        if ws.send(Message::text(f)).await.is_err() {
                            return lost(disconnect, 1006, "");
                        }
                    }
                    Ok(Some(f)) => {
                        if queued.len() == MAX_QUEUED_LINES {
                            queued.pop_front();
                        }
                        queued.push_back(f);
                    }
                    Err(e) => status(e),
                }
            }
            _ = ack_tick.tick() => {
                if welcomed && resume.last_seq > resume.acked {
                    let ack = serde_json::json!({"type": "ack", "seq": resume.last_seq});
                    if ws.send(Message::text(ack.to_string())).await.is_err() {
                        return lost(disconnect, 1006, "");
                    }
                    resume.acked = resume.last_seq;
                }
            }
            _ = tokio::time::sleep_until(refresh_at) => {
                refresh_at = tokio::time::Instant::now() + far;
                if let Credential::Mint(mint) = credential {
                    match mint() {
                        Ok(token) => {
                            let f = serde_json::json!({"type": "refresh", "token": token});
                            if ws.send(Message::text(f.to_string())).await.is_err() {
                                return lost(disconnect, 1006, "");
                            }
                        }
                        Err(e) => status(format!("cannot mint a token to refresh with: {e}")),
                    }
                }
            }
            _ = silence => {
                status(format!("nothing heard for {} ms: the socket is lost", silence_limit.as_millis()));
                return lost(disconnect, 1006, "no heartbeat");
            }
            _ = stop.as_mut() => {
                if welcomed && resume.last_seq > resume.acked {
                    let ack = serde_json::json!({"type": "ack", "seq": resume.last_seq});
                    let _ = ws.send(Message::text(ack.to_string())).await;
                }
                let close = CloseFrame { code: WsCloseCode::Normal, reason: "client closed".into() };
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(close))).await;
                status("closed (1000)");
                return End::Interrupted;
            }
        }
    }
}

/// The end of a socket: a `disconnect` frame says why when the close frame was lost.
fn lost(disconnect: Option<(u16, String)>, code: u16, reason: &str) -> End {
    match disconnect {
        Some((c, r)) if code == 1005 || code == 1006 => End::Closed(c, r),
        _ => End::Closed(code, reason.to_string()),
    }
}

/// When to refresh a token that expires at the frame's `expiresAt`: a fifth of the time
/// left before it, between 1 s and 60 s ahead.
fn refresh_time(frame: &Value) -> Option<tokio::time::Instant> {
    let expires = crate::time::parse_rfc3339(frame["expiresAt"].as_str()?)?;
    let now = crate::time::now_ms();
    let remaining = expires.saturating_sub(now).max(0) as u64;
    let lead = (remaining / 5).clamp(1_000, 60_000);
    Some(tokio::time::Instant::now() + Duration::from_millis(remaining.saturating_sub(lead)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_growing_capped_ceiling() {
        assert_eq!(backoff(0, 0), Duration::ZERO);
        assert_eq!(backoff(0, 499), Duration::from_millis(499));
        assert_eq!(
            backoff(0, 500),
            Duration::ZERO,
            "below the ceiling of 500 ms"
        );
        assert_eq!(backoff(1, 999), Duration::from_millis(999));
        assert_eq!(backoff(3, u64::MAX), Duration::from_millis(u64::MAX % 4000));
        for attempt in [6, 10, 40, u32::MAX] {
            assert!(backoff(attempt, u64::MAX) < Duration::from_millis(20_000));
        }
    }

    #[test]
    fn close_codes_say_whether_to_come_back() {
        for code in [1001, 1006, 1013, 4000, 4004, 4010, 4012, 4499] {
            assert!(should_reconnect(code), "{code}");
        }
        for code in [1000, 1009, 4500, 4501, 4503, 4506, 4507, 4509, 4999] {
            assert!(!should_reconnect(code), "{code}");
        }
    }

    #[test]
    fn urls_and_lines() {
        assert_eq!(
            ws_url("ws://127.0.0.1:8080/ws").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(
            ws_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert!(ws_url("wss://example.org/ws").is_err());
        assert!(ws_url("127.0.0.1:8080").is_err());
        assert_eq!(
            frame_of_line(r#" {"type":"ping","id":1} "#)
                .unwrap()
                .as_deref(),
            Some(r#"{"type":"ping","id":1}"#)
        );
        assert_eq!(frame_of_line("   ").unwrap(), None);
        assert!(frame_of_line("ping").is_err());
        assert!(frame_of_line(r#"{"id":1}"#).is_err());
    }
}
