//! One task per WebSocket connection, and a `Pool` of them in this process.
//!
//! Every held connection has a task that keeps reading (so that tungstenite
//! answers the server's pings), records what it sees into the pool's shared
//! `Stats`, and obeys the pool's command (hold / close / resume).

use crate::raw::RawReaders;
use crate::util::{self, now_ns, pct, R};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How a connection authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    Token(String),
    Session(String),
}

/// What the pool asks its connections to do.
#[derive(Clone, Debug)]
pub enum Cmd {
    Hold,
    /// Clean close (1000) of every connection; tasks end.
    Close,
    /// Connections whose socket is gone reconnect with resume parameters, connection i
    /// to `addrs[i % len]`; those named in `skip` stay away.
    Resume {
        gen: u32,
        addrs: Arc<Vec<SocketAddr>>,
        skip: Arc<Vec<usize>>,
        at_ns: u64,
    },
}

/// One connection to open.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    pub idx: usize,
    pub auth: Auth,
    /// Close cleanly by itself this long after the welcome (churn).
    pub close_after: Option<Duration>,
}

/// Settings shared by every connection of a pool.
#[derive(Clone, Debug)]
pub struct ConnParams {
    /// Connection i goes to `addrs[i % len]` (the nodes of a cluster, round-robin).
    pub addrs: Vec<SocketAddr>,
    /// Source address to bind before connecting (workers use 127.0.0.2, ...).
    pub bind_ip: Option<IpAddr>,
    /// Deadline for TCP connect + upgrade + welcome.
    pub connect_timeout: Duration,
    /// On resume, send the highest seq received as last_seq (else the welcome's).
    pub resume_from_received: bool,
    /// Keep each connection's [`OrderLog`] (node-kill checks every message it was sent).
    pub track_order: bool,
    /// At most this many first connects waiting for their welcome at once (0: no limit):
    /// opening then goes as fast as the server admits, whatever the rate.
    pub max_connecting: usize,
    /// Hand each connection after its welcome to this many raw reader threads (0: every
    /// connection keeps its task). See `raw.rs`; a connection with a close timer, a tap or
    /// an order log keeps its task.
    pub raw_readers: usize,
}

impl ConnParams {
    /// One server, no order logs.
    pub fn to(addr: SocketAddr, connect_timeout: Duration) -> ConnParams {
        ConnParams {
            addrs: vec![addr],
            bind_ip: None,
            connect_timeout,
            resume_from_received: false,
            track_order: false,
            max_connecting: 0,
            raw_readers: 0,
        }
    }

    pub fn addr_of(&self, idx: usize) -> SocketAddr {
        self.addrs[idx % self.addrs.len().max(1)]
    }
}

/// What one connection received of the messages that carry a number `data.n`, in order of
/// arrival, across its resumes; and whether the `seq` of its frames ever skipped or went back.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct OrderLog {
    pub idx: usize,
    pub ns: Vec<u32>,
    /// Frames whose seq was more than one past the last (sum of the seqs skipped).
    pub seq_skipped: u64,
    /// Frames whose seq was not above the last.
    pub seq_repeated: u64,
    /// Whether the connection was resumed (at least once).
    pub resumed: bool,
    last_seq: u64,
}

impl OrderLog {
    fn seq(&mut self, seq: u64) {
        if seq <= self.last_seq {
            self.seq_repeated += 1;
        } else {
            self.seq_skipped += seq - self.last_seq - 1;
            self.last_seq = seq;
        }
    }
}

/// Hands a connection's log to the pool when its task ends, however it ends.
struct OrderSink {
    stats: Arc<Stats>,
    log: Option<OrderLog>,
}

impl Drop for OrderSink {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            self.stats.orders.lock().unwrap().push(l);
        }
    }
}

/// A frame handed to a scenario that watches frames itself (session-sync).
pub struct Tap {
    pub idx: usize,
    pub frame: Value,
    pub at_ns: u64,
}

/// Counters of a pool (or, merged, of a whole fleet). Serialized by workers.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Counts {
    pub attempts: u64,
    pub opened: u64,
    pub failed: u64,
    pub open_now: i64,
    pub finished: u64,
    pub messages: u64,
    pub session_updates: u64,
    pub server_closed: u64,
    pub clean_closed: u64,
    pub unclean_closed: u64,
    pub resume_attempts: u64,
    pub resumed: u64,
    pub fresh: u64,
    pub resume_failed: u64,
    pub recovered: u64,
    pub expected_recovered: u64,
    pub first_attempt_ns: u64,
    pub last_open_ns: u64,
    pub first_frame_ns: u64,
    pub last_frame_ns: u64,
    pub last_reconnect_ns: u64,
    pub last_resumed_ns: u64,
}

impl Counts {
    pub fn merge(&mut self, o: &Counts) {
        self.attempts += o.attempts;
        self.opened += o.opened;
        self.failed += o.failed;
        self.open_now += o.open_now;
        self.finished += o.finished;
        self.messages += o.messages;
        self.session_updates += o.session_updates;
        self.server_closed += o.server_closed;
        self.clean_closed += o.clean_closed;
        self.unclean_closed += o.unclean_closed;
        self.resume_attempts += o.resume_attempts;
        self.resumed += o.resumed;
        self.fresh += o.fresh;
        self.resume_failed += o.resume_failed;
        self.recovered += o.recovered;
        self.expected_recovered += o.expected_recovered;
        self.first_attempt_ns = min_set(self.first_attempt_ns, o.first_attempt_ns);
        self.first_frame_ns = min_set(self.first_frame_ns, o.first_frame_ns);
        self.last_open_ns = self.last_open_ns.max(o.last_open_ns);
        self.last_frame_ns = self.last_frame_ns.max(o.last_frame_ns);
        self.last_reconnect_ns = self.last_reconnect_ns.max(o.last_reconnect_ns);
        self.last_resumed_ns = self.last_resumed_ns.max(o.last_resumed_ns);
    }

    /// Initial connection attempts that have an outcome.
    pub fn open_done(&self) -> u64 {
        self.opened + self.failed
    }

    /// Reconnections after a resume command that have an outcome.
    pub fn resume_done(&self) -> u64 {
        self.resumed + self.fresh + self.resume_failed
    }
}

/// 0 means "not set" for the *_ns minimums.
fn min_set(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    }
}

/// Everything a pool measured, in the form a worker sends it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WireReport {
    pub counts: Counts,
    pub welcome: String,
    pub tcp: String,
    pub delivery: String,
    pub resume: String,
    pub resume_tcp: String,
    pub errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub orders: Vec<OrderLog>,
}

/// Merged measurements.
pub struct Report {
    pub counts: Counts,
    /// Connect start to welcome, microseconds.
    pub welcome: Histogram<u64>,
    /// TCP connect alone (SYN to established), microseconds.
    pub tcp: Histogram<u64>,
    /// `message` frames carrying `data.t`: now - t, microseconds.
    pub delivery: Histogram<u64>,
    /// Resume command to resumed welcome, microseconds.
    pub resume: Histogram<u64>,
    /// TCP connect alone of the resuming connections, microseconds.
    pub resume_tcp: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// The logs of connections whose task has ended (with `track_order`).
    pub orders: Vec<OrderLog>,
}

impl Report {
    pub fn empty() -> Report {
        Report {
            counts: Counts::default(),
            welcome: util::new_hist(),
            tcp: util::new_hist(),
            delivery: util::new_hist(),
            resume: util::new_hist(),
            resume_tcp: util::new_hist(),
            errors: BTreeMap::new(),
            orders: Vec::new(),
        }
    }

    pub fn merge_wire(&mut self, w: &WireReport) -> R<()> {
        self.counts.merge(&w.counts);
        for (h, s) in [
            (&mut self.welcome, &w.welcome),
            (&mut self.tcp, &w.tcp),
            (&mut self.delivery, &w.delivery),
            (&mut self.resume, &w.resume),
            (&mut self.resume_tcp, &w.resume_tcp),
        ] {
            h.add(util::hist_from_b64(s)?)
                .map_err(|e| format!("merging histograms: {e:?}"))?;
        }
        for (k, v) in &w.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.orders.extend(w.orders.iter().cloned());
        Ok(())
    }
}

/// Shared, lock-light measurement state of one pool.
pub struct Stats {
    attempts: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    pub(crate) open_now: AtomicI64,
    pub(crate) finished: AtomicU64,
    /// What every received frame updates, one stripe per worker thread: the two threads of
    /// a load process must not fight over one cache line per frame.
    hot: Box<[Hot]>,
    pub(crate) server_closed: AtomicU64,
    pub(crate) clean_closed: AtomicU64,
    pub(crate) unclean_closed: AtomicU64,
    resume_attempts: AtomicU64,
    resumed: AtomicU64,
    fresh: AtomicU64,
    resume_failed: AtomicU64,
    recovered: AtomicU64,
    expected_recovered: AtomicU64,
    first_attempt_ns: AtomicU64,
    last_open_ns: AtomicU64,
    last_reconnect_ns: AtomicU64,
    last_resumed_ns: AtomicU64,
    welcome: Mutex<Histogram<u64>>,
    tcp: Mutex<Histogram<u64>>,
    resume: Mutex<Histogram<u64>>,
    resume_tcp: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    orders: Mutex<Vec<OrderLog>>,
}

const STRIPES: usize = 8;

#[repr(align(128))]
struct Hot {
    messages: AtomicU64,
    session_updates: AtomicU64,
    first_frame_ns: AtomicU64,
    last_frame_ns: AtomicU64,
    delivery: Mutex<Histogram<u64>>,
}

impl Hot {
    fn new() -> Hot {
        Hot {
            messages: AtomicU64::new(0),
            session_updates: AtomicU64::new(0),
            first_frame_ns: AtomicU64::new(u64::MAX),
            last_frame_ns: AtomicU64::new(0),
            delivery: Mutex::new(util::new_hist()),
        }
    }
}

/// This thread's stripe of `Stats::hot`.
fn stripe() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static MINE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES);
    MINE.with(|m| *m)
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            attempts: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            open_now: AtomicI64::new(0),
            finished: AtomicU64::new(0),
            hot: (0..STRIPES).map(|_| Hot::new()).collect(),
            server_closed: AtomicU64::new(0),
            clean_closed: AtomicU64::new(0),
            unclean_closed: AtomicU64::new(0),
            resume_attempts: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            fresh: AtomicU64::new(0),
            resume_failed: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            expected_recovered: AtomicU64::new(0),
            first_attempt_ns: AtomicU64::new(u64::MAX),
            last_open_ns: AtomicU64::new(0),
            last_reconnect_ns: AtomicU64::new(0),
            last_resumed_ns: AtomicU64::new(0),
            welcome: Mutex::new(util::new_hist()),
            tcp: Mutex::new(util::new_hist()),
            resume: Mutex::new(util::new_hist()),
            resume_tcp: Mutex::new(util::new_hist()),
            errors: Mutex::new(BTreeMap::new()),
            orders: Mutex::new(Vec::new()),
        }
    }

    pub fn error(&self, key: impl Into<String>) {
        *self.errors.lock().unwrap().entry(key.into()).or_default() += 1;
    }

    /// A received `message` frame, sent at `sent_ns` if it says so.
    fn on_message(&self, at: u64, sent_ns: Option<u64>) {
        let h = &self.hot[stripe()];
        h.messages.fetch_add(1, Relaxed);
        if h.first_frame_ns.load(Relaxed) == u64::MAX {
            h.first_frame_ns.fetch_min(at.max(1), Relaxed);
        }
        h.last_frame_ns.fetch_max(at, Relaxed);
        if let Some(sent) = sent_ns {
            util::record_us(
                &mut h.delivery.lock().unwrap(),
                at.saturating_sub(sent) / 1000,
            );
        }
    }

    fn on_session_update(&self, at: u64) {
        let h = &self.hot[stripe()];
        h.session_updates.fetch_add(1, Relaxed);
        h.last_frame_ns.fetch_max(at, Relaxed);
    }

    fn delivery(&self) -> Histogram<u64> {
        let mut all = util::new_hist();
        for h in self.hot.iter() {
            all.add(&*h.delivery.lock().unwrap())
                .expect("same histogram bounds");
        }
        all
    }

    pub fn counts(&self) -> Counts {
        let unset = |v: u64| if v == u64::MAX { 0 } else { v };
        let sum = |f: fn(&Hot) -> &AtomicU64| self.hot.iter().map(|h| f(h).load(Relaxed)).sum();
        Counts {
            attempts: self.attempts.load(Relaxed),
            opened: self.opened.load(Relaxed),
            failed: self.failed.load(Relaxed),
            open_now: self.open_now.load(Relaxed),
            finished: self.finished.load(Relaxed),
            messages: sum(|h| &h.messages),
            session_updates: sum(|h| &h.session_updates),
            server_closed: self.server_closed.load(Relaxed),
            clean_closed: self.clean_closed.load(Relaxed),
            unclean_closed: self.unclean_closed.load(Relaxed),
            resume_attempts: self.resume_attempts.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            fresh: self.fresh.load(Relaxed),
            resume_failed: self.resume_failed.load(Relaxed),
            recovered: self.recovered.load(Relaxed),
            expected_recovered: self.expected_recovered.load(Relaxed),
            first_attempt_ns: unset(self.first_attempt_ns.load(Relaxed)),
            last_open_ns: self.last_open_ns.load(Relaxed),
            first_frame_ns: unset(
                self.hot
                    .iter()
                    .map(|h| h.first_frame_ns.load(Relaxed))
                    .min()
                    .unwrap_or(u64::MAX),
            ),
            last_frame_ns: self
                .hot
                .iter()
                .map(|h| h.last_frame_ns.load(Relaxed))
                .max()
                .unwrap_or(0),
            last_reconnect_ns: self.last_reconnect_ns.load(Relaxed),
            last_resumed_ns: self.last_resumed_ns.load(Relaxed),
        }
    }

    pub fn wire(&self) -> WireReport {
        WireReport {
            counts: self.counts(),
            welcome: util::hist_to_b64(&self.welcome.lock().unwrap()),
            tcp: util::hist_to_b64(&self.tcp.lock().unwrap()),
            delivery: util::hist_to_b64(&self.delivery()),
            resume: util::hist_to_b64(&self.resume.lock().unwrap()),
            resume_tcp: util::hist_to_b64(&self.resume_tcp.lock().unwrap()),
            errors: self.errors.lock().unwrap().clone(),
            orders: self.orders.lock().unwrap().clone(),
        }
    }

    pub fn report(&self) -> Report {
        Report {
            counts: self.counts(),
            welcome: self.welcome.lock().unwrap().clone(),
            tcp: self.tcp.lock().unwrap().clone(),
            delivery: self.delivery(),
            resume: self.resume.lock().unwrap().clone(),
            resume_tcp: self.resume_tcp.lock().unwrap().clone(),
            errors: self.errors.lock().unwrap().clone(),
            orders: self.orders.lock().unwrap().clone(),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

// ---------------------------------------------------------------- one connection

fn ws_config() -> WebSocketConfig {
    // Small buffers: the default 128 KiB read buffer per connection would need
    // 2.3 GiB for 18,000 idle connections.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        AddrNotAvailable => "addr_not_available".into(),
        AddrInUse => "addr_in_use".into(),
        TimedOut => "timeout".into(),
        UnexpectedEof => "eof".into(),
        BrokenPipe => "broken_pipe".into(),
        _ => match e.raw_os_error() {
            Some(24) => "too_many_open_files".into(),
            Some(n) => format!("os_{n}"),
            None => format!("{:?}", e.kind()).to_lowercase(),
        },
    }
}

fn ws_err(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Io(e) => io_kind(e),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(p) => format!("protocol_{p:?}"),
        other => {
            let s = other.to_string();
            s.chars().take(40).collect()
        }
    }
}

/// Opens one connection and waits for its `welcome`. On failure returns an
/// error key such as `connect:refused`, `handshake:http_401`, `close:4501`.
pub async fn connect_once(
    params: &ConnParams,
    addr: SocketAddr,
    query: &str,
) -> Result<(Ws, Value, u64), String> {
    let deadline = Instant::now() + params.connect_timeout;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket:{}", io_kind(&e)))?;
    if let Some(ip) = params.bind_ip {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind:{}", io_kind(&e)))?;
    }
    let tcp_start = Instant::now();
    let stream = match timeout(params.connect_timeout, sock.connect(addr)).await {
        Err(_) => return Err("connect:timeout".into()),
        Ok(Err(e)) => return Err(format!("connect:{}", io_kind(&e))),
        Ok(Ok(s)) => s,
    };
    let tcp_us = tcp_start.elapsed().as_micros() as u64;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{addr}/ws?{query}");
    let hs = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()));
    let mut ws = match tokio::time::timeout_at(deadline, hs).await {
        Err(_) => return Err("handshake:timeout".into()),
        Ok(Err(e)) => return Err(format!("handshake:{}", ws_err(&e))),
        Ok(Ok((ws, _resp))) => ws,
    };
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("welcome:timeout".into()),
            Ok(None) => return Err("welcome:eof".into()),
            Ok(Some(Err(e))) => return Err(format!("welcome:{}", ws_err(&e))),
            Ok(Some(Ok(Message::Close(f)))) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(format!("close:{code}"));
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = match serde_json::from_str(t.as_str()) {
                    Ok(v) => v,
                    Err(_) => return Err("welcome:bad_json".into()),
                };
                match v["type"].as_str() {
                    Some("welcome") => return Ok((ws, v, tcp_us)),
                    // The close frame with its code follows; record that.
                    Some("disconnect") => continue,
                    Some(other) => return Err(format!("welcome:unexpected_{other}")),
                    None => return Err("welcome:no_type".into()),
                }
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Close 1000 and wait (bounded) for the server's close frame.
async fn clean_close(ws: &mut Ws, stats: &Stats) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let sent = timeout(Duration::from_secs(5), ws.close(Some(frame)))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let mut replied = false;
    if sent {
        let _ = timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Close(_)) => replied = true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    }
    if replied {
        stats.clean_closed.fetch_add(1, Relaxed);
    } else {
        stats.unclean_closed.fetch_add(1, Relaxed);
        stats.error("close:no_reply");
    }
}

/// State carried across a server restart.
pub(crate) struct Identity {
    connection_id: String,
    resume_token: String,
    welcome_seq: u64,
    seen_seq: u64,
}

fn token_query(auth: &Auth) -> String {
    match auth {
        Auth::Token(t) => format!("token={}", pct(t)),
        Auth::Session(s) => format!("session_id={}", pct(s)),
    }
}

/// Why a connection's read loop stopped.
enum Event {
    Command { gone: bool },
    Timer,
    ServerClosed(u16),
    Lost(String),
}

/// The fields of a server frame the figures need, read without building a JSON tree.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    code: Option<u64>,
    data: Option<SentAt>,
}

#[derive(Deserialize)]
struct SentAt {
    t: Option<u64>,
    n: Option<u32>,
}

/// Where a connection records the frames it receives.
pub(crate) struct Seen<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) tap: Option<&'a mpsc::UnboundedSender<Tap>>,
    pub(crate) idx: usize,
}

impl Seen<'_> {
    pub(crate) fn frame(
        &self,
        text: &str,
        at: u64,
        ident: Option<&mut Identity>,
        replay: Option<(u64, u64)>,
        order: Option<&mut OrderLog>,
    ) {
        let mut number = None;
        let head = match serde_json::from_str::<Head>(text) {
            Ok(h) => {
                number = h.data.as_ref().and_then(|d| d.n);
                (h.kind, h.seq, h.code, h.data.and_then(|d| d.t))
            }
            // Valid JSON of another shape (a message whose data is not an object).
            Err(_) => match serde_json::from_str::<Value>(text) {
                Ok(v) => (
                    Cow::Owned(v["type"].as_str().unwrap_or("").to_string()),
                    v["seq"].as_u64(),
                    v["code"].as_u64(),
                    None,
                ),
                Err(_) => {
                    self.stats.error("frame:bad_json");
                    return;
                }
            },
        };
        let (kind, seq, code, sent) = head;
        if let Some(log) = order {
            if matches!(&*kind, "message" | "session.updated") {
                if let Some(s) = seq {
                    log.seq(s);
                }
            }
            if let (Some(n), "message") = (number, &*kind) {
                log.ns.push(n);
            }
        }
        match &*kind {
            "message" => self.stats.on_message(at, sent),
            "session.updated" => self.stats.on_session_update(at),
            "disconnect" => {
                let code = code.map_or("null".to_string(), |c| c.to_string());
                self.stats.error(format!("disconnect:{code}"));
            }
            _ => {}
        }
        if let (Some(seq), Some(id)) = (seq, ident) {
            if let Some((last, upto)) = replay {
                if seq > last && seq <= upto {
                    self.stats.recovered.fetch_add(1, Relaxed);
                }
            }
            id.seen_seq = id.seen_seq.max(seq);
        }
        if let Some(tx) = self.tap {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                let _ = tx.send(Tap {
                    idx: self.idx,
                    frame: v,
                    at_ns: at,
                });
            }
        }
    }
}

/// The life of one connection. Ends on `Cmd::Close`, on its own close timer, or
/// when a lost connection has nothing to resume.
pub async fn run_conn(
    spec: ConnSpec,
    params: Arc<ConnParams>,
    stats: Arc<Stats>,
    mut cmd: watch::Receiver<Cmd>,
    tap: Option<mpsc::UnboundedSender<Tap>>,
    gate: Option<Arc<Semaphore>>,
    raw: Option<Arc<RawReaders>>,
) {
    // Held until the first connect has its outcome.
    let mut permit = match gate {
        Some(g) => g.acquire_owned().await.ok(),
        None => None,
    };
    let mut addr = params.addr_of(spec.idx);
    let mut ident: Option<Identity> = None;
    let mut order = OrderSink {
        stats: stats.clone(),
        log: params.track_order.then(|| OrderLog {
            idx: spec.idx,
            ..OrderLog::default()
        }),
    };
    let mut gen = 0u32;
    // Set while reconnecting after a resume command: (last_seq sent, seq seen before, at_ns).
    let mut resuming: Option<(u64, u64, u64)> = None;
    loop {
        let base = token_query(&spec.auth);
        let query = match (&ident, resuming) {
            (Some(id), Some((last, _, _))) => format!(
                "{base}&resume={}&resume_token={}&last_seq={last}",
                pct(&id.connection_id),
                pct(&id.resume_token)
            ),
            _ => base,
        };
        let started = now_ns();
        if resuming.is_some() {
            stats.resume_attempts.fetch_add(1, Relaxed);
        } else {
            stats.attempts.fetch_add(1, Relaxed);
            stats.first_attempt_ns.fetch_min(started.max(1), Relaxed);
        }
        let outcome = connect_once(&params, addr, &query).await;
        let done = now_ns();
        permit.take();
        let (mut ws, welcome, tcp_us) = match outcome {
            Ok(ok) => ok,
            Err(key) => {
                if resuming.is_some() {
                    stats.resume_failed.fetch_add(1, Relaxed);
                    stats.last_reconnect_ns.fetch_max(done, Relaxed);
                    stats.error(format!("resume:{key}"));
                } else {
                    stats.failed.fetch_add(1, Relaxed);
                    stats.last_open_ns.fetch_max(done, Relaxed);
                    stats.error(key);
                }
                stats.finished.fetch_add(1, Relaxed);
                return;
            }
        };
        let welcome_seq = welcome["seq"].as_u64().unwrap_or(0);
        let mut replay: Option<(u64, u64)> = None;
        if let Some((last, seen_before, at_ns)) = resuming.take() {
            stats.last_reconnect_ns.fetch_max(done, Relaxed);
            if welcome["resumed"].as_bool() == Some(true) {
                if let Some(l) = order.log.as_mut() {
                    l.resumed = true;
                }
                stats.resumed.fetch_add(1, Relaxed);
                stats.last_resumed_ns.fetch_max(done, Relaxed);
                stats
                    .expected_recovered
                    .fetch_add(seen_before.saturating_sub(last), Relaxed);
                replay = Some((last, seen_before));
            } else {
                stats.fresh.fetch_add(1, Relaxed);
                let why = match &welcome["resumeError"] {
                    Value::String(s) => s.chars().take(60).collect(),
                    Value::Null => "none".to_string(),
                    other => other.to_string().chars().take(60).collect(),
                };
                stats.error(format!("resumeError:{why}"));
            }
            util::record_us(
                &mut stats.resume.lock().unwrap(),
                done.saturating_sub(at_ns) / 1000,
            );
            util::record_us(&mut stats.resume_tcp.lock().unwrap(), tcp_us);
        } else {
            stats.opened.fetch_add(1, Relaxed);
            stats.last_open_ns.fetch_max(done, Relaxed);
            util::record_us(
                &mut stats.welcome.lock().unwrap(),
                done.saturating_sub(started) / 1000,
            );
            util::record_us(&mut stats.tcp.lock().unwrap(), tcp_us);
        }
        stats.open_now.fetch_add(1, Relaxed);
        ident = Some(Identity {
            connection_id: welcome["connectionId"].as_str().unwrap_or("").to_string(),
            resume_token: welcome["resumeToken"].as_str().unwrap_or("").to_string(),
            welcome_seq,
            seen_seq: welcome_seq,
        });
        if let Some(t) = &tap {
            let _ = t.send(Tap {
                idx: spec.idx,
                frame: welcome,
                at_ns: done,
            });
        }

        // ---- read loop, here or in a raw reader
        if let Some(raw) = &raw {
            if spec.close_after.is_none() && tap.is_none() && order.log.is_none() {
                match ws.into_inner().into_std() {
                    Ok(sock) => raw.adopt(spec.idx, sock),
                    Err(e) => {
                        stats.error(format!("raw:into_std_{}", io_kind(&e)));
                        stats.open_now.fetch_sub(1, Relaxed);
                        stats.finished.fetch_add(1, Relaxed);
                    }
                }
                return;
            }
        }
        let close_at = spec.close_after.map(|d| Instant::now() + d);
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let timer = sleep_until(close_at.unwrap_or(far));
        tokio::pin!(timer);
        let ended_by_us = loop {
            // The command future lives across frames: one made per frame would register
            // with the channel every connection shares, once per frame.
            let event = {
                let changed = cmd.changed();
                tokio::pin!(changed);
                loop {
                    tokio::select! {
                        r = &mut changed => break Event::Command { gone: r.is_err() },
                        _ = &mut timer, if close_at.is_some() => break Event::Timer,
                        m = ws.next() => match m {
                            Some(Ok(Message::Text(t))) => {
                                let seen = Seen { stats: &stats, tap: tap.as_ref(), idx: spec.idx };
                                seen.frame(t.as_str(), now_ns(), ident.as_mut(), replay, order.log.as_mut());
                            }
                            Some(Ok(Message::Close(f))) => {
                                break Event::ServerClosed(f.map(|f| u16::from(f.code)).unwrap_or(1005))
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break Event::Lost(ws_err(&e)),
                            None => break Event::Lost("eof".into()),
                        }
                    }
                }
            };
            match event {
                Event::Command { gone } => {
                    let c = if gone {
                        Cmd::Close
                    } else {
                        cmd.borrow_and_update().clone()
                    };
                    if let Cmd::Close = c {
                        clean_close(&mut ws, &stats).await;
                        break true;
                    }
                }
                Event::Timer => {
                    clean_close(&mut ws, &stats).await;
                    break true;
                }
                Event::ServerClosed(code) => {
                    stats.server_closed.fetch_add(1, Relaxed);
                    stats.error(format!("closed:{code}"));
                    // Let tungstenite finish the closing handshake.
                    let _ = timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    break false;
                }
                Event::Lost(why) => {
                    stats.server_closed.fetch_add(1, Relaxed);
                    stats.error(format!("closed:{why}"));
                    break false;
                }
            }
        };
        drop(ws);
        stats.open_now.fetch_sub(1, Relaxed);
        if ended_by_us {
            stats.finished.fetch_add(1, Relaxed);
            return;
        }

        // ---- the server went away: wait for a resume (or close) command
        loop {
            if cmd.changed().await.is_err() {
                stats.finished.fetch_add(1, Relaxed);
                return;
            }
            let c = cmd.borrow_and_update().clone();
            match c {
                Cmd::Close => {
                    stats.finished.fetch_add(1, Relaxed);
                    return;
                }
                Cmd::Resume {
                    gen: g,
                    addrs,
                    skip,
                    at_ns,
                } if g > gen => {
                    gen = g;
                    if skip.binary_search(&spec.idx).is_ok() || addrs.is_empty() {
                        continue;
                    }
                    addr = addrs[spec.idx % addrs.len()];
                    let id = ident.as_ref().expect("identity after a welcome");
                    let last = if params.resume_from_received {
                        id.seen_seq
                    } else {
                        id.welcome_seq
                    };
                    resuming = Some((last, id.seen_seq, at_ns));
                    break;
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------- pool

/// Where a pool gets its connections from: `count` connections numbered from
/// `start`, connection i belonging to user `{prefix}{i / per_user}`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct OpenPlan {
    pub start: usize,
    pub count: usize,
    pub per_user: usize,
    pub user_prefix: String,
    pub rate: f64,
    pub jwt_secret: String,
    pub token_ttl_secs: u64,
}

impl OpenPlan {
    pub fn user_of(&self, i: usize) -> String {
        format!("{}{}", self.user_prefix, i / self.per_user.max(1))
    }
}

/// Connections held by this process.
pub struct Pool {
    pub stats: Arc<Stats>,
    params: Arc<ConnParams>,
    cmd_tx: watch::Sender<Cmd>,
    handles: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pacer: Option<JoinHandle<()>>,
    resume_gen: u32,
    gate: Option<Arc<Semaphore>>,
    raw: Option<Arc<RawReaders>>,
}

impl Pool {
    pub fn new(params: ConnParams) -> Pool {
        let (cmd_tx, _) = watch::channel(Cmd::Hold);
        let gate =
            (params.max_connecting > 0).then(|| Arc::new(Semaphore::new(params.max_connecting)));
        let stats = Arc::new(Stats::new());
        let raw = (params.raw_readers > 0).then(|| {
            match RawReaders::start(params.raw_readers, stats.clone()) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    // The connections keep their tasks; the figures say why.
                    stats.error(format!("raw:start_{}", io_kind(&e)));
                    None
                }
            }
        });
        Pool {
            gate,
            raw: raw.flatten(),
            stats,
            params: Arc::new(params),
            cmd_tx,
            handles: Arc::new(Mutex::new(Vec::new())),
            pacer: None,
            resume_gen: 0,
        }
    }

    /// Starts one connection now.
    pub fn spawn(&self, spec: ConnSpec, tap: Option<mpsc::UnboundedSender<Tap>>) {
        let h = tokio::spawn(run_conn(
            spec,
            self.params.clone(),
            self.stats.clone(),
            self.cmd_tx.subscribe(),
            tap,
            self.gate.clone(),
            self.raw.clone(),
        ));
        self.handles.lock().unwrap().push(h);
    }

    /// Starts opening `plan.count` connections at `plan.rate` per second in the
    /// background; returns at once.
    pub fn start_opening(&mut self, plan: OpenPlan) {
        let params = self.params.clone();
        let stats = self.stats.clone();
        let cmd_tx = self.cmd_tx.clone();
        let handles = self.handles.clone();
        let gate = self.gate.clone();
        let raw = self.raw.clone();
        self.pacer = Some(tokio::spawn(async move {
            let mut tokens: BTreeMap<String, String> = BTreeMap::new();
            let specs = (plan.start..plan.start + plan.count).map(|i| {
                let user = plan.user_of(i);
                let tok = match tokens.get(&user) {
                    Some(t) => t.clone(),
                    None => {
                        let t = util::mint_jwt(&plan.jwt_secret, &user, plan.token_ttl_secs)?;
                        // Only the current user's token is needed again (connections
                        // of a user are consecutive).
                        tokens.clear();
                        tokens.insert(user, t.clone());
                        t
                    }
                };
                Ok::<_, String>(ConnSpec {
                    idx: i,
                    auth: Auth::Token(tok),
                    close_after: None,
                })
            });
            let mut specs = specs;
            let mut spawned = 0usize;
            let r = pace(plan.count, plan.rate, |_| {
                let spec = specs.next().expect("count specs")?;
                let h = tokio::spawn(run_conn(
                    spec,
                    params.clone(),
                    stats.clone(),
                    cmd_tx.subscribe(),
                    None,
                    gate.clone(),
                    raw.clone(),
                ));
                handles.lock().unwrap().push(h);
                spawned += 1;
                Ok(())
            })
            .await;
            if let Err(e) = r {
                // Count what was never tried as failed, so that waits end.
                let rest = (plan.count - spawned) as u64;
                stats.failed.fetch_add(rest, Relaxed);
                stats.finished.fetch_add(rest, Relaxed);
                *stats
                    .errors
                    .lock()
                    .unwrap()
                    .entry(format!("opener:{e}"))
                    .or_default() += rest;
            }
        }));
    }

    /// Every connection whose socket is gone resumes, connection i on `addrs[i % len]`,
    /// except those in `skip` (sorted).
    pub fn resume(&mut self, addrs: Vec<SocketAddr>, skip: Vec<usize>) {
        self.resume_gen += 1;
        let _ = self.cmd_tx.send(Cmd::Resume {
            gen: self.resume_gen,
            addrs: Arc::new(addrs),
            skip: Arc::new(skip),
            at_ns: now_ns(),
        });
    }

    /// Closes every connection cleanly and waits (bounded) for their tasks.
    pub async fn close_all(&mut self, within: Duration) {
        if let Some(p) = self.pacer.take() {
            p.abort();
        }
        let _ = self.cmd_tx.send(Cmd::Close);
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.handles.lock().unwrap());
        let deadline = Instant::now() + within;
        for h in handles {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(deadline, h).await.is_err() {
                abort.abort();
                self.stats.error("close:task_timeout");
            }
        }
        if let Some(raw) = &self.raw {
            raw.close_all(within).await;
        }
    }

    /// Waits (bounded) for every task to end by itself (churn).
    pub async fn join_all(&mut self, within: Duration) -> usize {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.handles.lock().unwrap());
        let deadline = Instant::now() + within;
        let mut stuck = 0;
        for h in handles {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(deadline, h).await.is_err() {
                abort.abort();
                stuck += 1;
            }
        }
        stuck
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(p) = self.pacer.take() {
            p.abort();
        }
        for h in self.handles.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// Calls `f(k)` for k in 0..n, paced at `rate` per second (0 = no pacing).
pub async fn pace<F>(n: usize, rate: f64, mut f: F) -> R<()>
where
    F: FnMut(usize) -> R<()>,
{
    let start = Instant::now();
    let mut k = 0usize;
    while k < n {
        let due = if rate > 0.0 {
            ((start.elapsed().as_secs_f64() * rate).floor() as usize + 1).min(n)
        } else {
            n
        };
        while k < due {
            f(k)?;
            k += 1;
            if k.is_multiple_of(256) {
                tokio::task::yield_now().await;
            }
        }
        if k < n {
            let next = start + Duration::from_secs_f64(k as f64 / rate);
            let now = Instant::now();
            if next > now {
                sleep_until(next).await;
            } else {
                sleep(Duration::from_micros(200)).await;
            }
        }
    }
    Ok(())
}
