//! Command line of the load generator.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "load",
    // cargo runs the bench as target/release/deps/load-<hash>; name it as it is typed.
    bin_name = "cargo bench --bench load --",
    about = "Load generator for tether: cargo bench --bench load -- <SCENARIO> [OPTIONS]",
    long_about = "Load generator for tether.\n\n\
        By default it starts the release server itself (on a temp data dir and a free \
        loopback port) and stops it at the end; with --url http://127.0.0.1:PORT \
        --data-dir DIR it drives an already running server (reading DIR/secrets.toml \
        and the pid in DIR/tether.lock).\n\n\
        Figures: a human summary, or with --json one JSON object on stdout (the summary \
        then goes to stderr). Latencies are in microseconds in the JSON.",
    after_help = "Examples:\n  \
        cargo bench --bench load -- connect --n 1000 --rate 500 --plot connect.svg\n  \
        cargo bench --bench load -- churn --rate 200 --duration-secs 30\n  \
        cargo bench --bench load -- fanout --users 1 --per-user 10000 --messages 50\n  \
        cargo bench --bench load -- session-sync --others 1000 --updates 1000\n  \
        cargo bench --bench load -- reattach --n 5000 --kill9\n  \
        cargo bench --bench load -- connect --n 1000 --durability sync --json\n  \
        cargo bench --bench load -- connect --n 10000 --rate 10000 --cluster 2 --vs-embedded\n  \
        cargo bench --bench load -- node-kill --cluster 2 --n 10000"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,

    #[command(flatten)]
    pub global: Global,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    pub bench: bool,

    /// Internal: run as a worker process holding a share of the connections.
    #[arg(long, hide = true)]
    pub worker: bool,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// Open N connections at a target rate and hold them: connects/s, welcome
    /// latency, server RSS and CPU per connection.
    Connect(ConnectArgs),
    /// Open and cleanly close connections at a steady rate; then check that the
    /// server's active count and memory come back.
    Churn(ChurnArgs),
    /// K users x M connections; X messages per user through the HTTP API:
    /// delivery latency and messages/s delivered.
    Fanout(FanoutArgs),
    /// PATCH a session U times; latency until every connection of the session
    /// has its `session.updated`.
    SessionSync(SessionSyncArgs),
    /// Restart the server under N connections; time until all are resumed and
    /// missed messages recovered.
    Reattach(ReattachArgs),
    /// Cluster mode: kill -9 one node under its connections while messages flow;
    /// time from its lease's end until its clients have resumed on the others, and
    /// every message each client was sent checked (missed, duplicated, out of order).
    NodeKill(NodeKillArgs),
    /// Check the generator itself against a tiny in-process WebSocket server
    /// (no tether needed).
    Selftest(SelftestArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Print one JSON object of figures on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Use this running server (loopback only) instead of spawning one.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// With --url: the server's data dir (secrets.toml, tether.lock).
    /// Without: spawn the server on this dir instead of a temp dir.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Server binary to spawn [default: the crate's release `tether`].
    #[arg(long, global = true, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Spawned server: durability mode (batched, sync, relaxed).
    #[arg(long, global = true)]
    pub durability: Option<String>,
    /// Spawned server: max connections per user (raised automatically when a
    /// scenario needs more than 10 per user).
    #[arg(long, global = true)]
    pub max_per_user: Option<u64>,
    /// Spawned server: max connections in total.
    #[arg(long, global = true)]
    pub max_total: Option<u64>,
    /// Spawned server: client frames per minute per connection.
    #[arg(long, global = true)]
    pub messages_per_minute: Option<u64>,
    /// Spawned server: heartbeat interval.
    #[arg(long, global = true)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Spawned server: resume grace period.
    #[arg(long, global = true)]
    pub resume_grace_seconds: Option<u64>,
    /// Spawned server: --log-level.
    #[arg(long, global = true, default_value = "warn")]
    pub server_log_level: String,
    /// Spawned server: one more raw argument (repeat for more), e.g.
    /// --server-arg=--outbound-queue-bytes --server-arg=65536
    #[arg(
        long = "server-arg",
        global = true,
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub server_args: Vec<String>,
    /// Keep the spawned server's temp dir (data and server.log).
    #[arg(long, global = true)]
    pub keep_data: bool,
    /// Deadline for the server's /ready.
    #[arg(long, global = true, default_value_t = 30)]
    pub ready_timeout_secs: u64,
    /// Deadline for one connection's TCP connect + upgrade + welcome.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Most connections held by one process; past that, worker processes
    /// (each with its own source address) hold them.
    #[arg(long, global = true, default_value_t = 18_000)]
    pub per_process: usize,
    /// Worker w binds source address 127.0.0.(N + w).
    #[arg(long, global = true, default_value_t = 2)]
    pub first_src_octet: u8,
    /// At most this many connects waiting for their welcome at once, per load process
    /// (0: no limit): opening goes as fast as the server admits, up to the rate.
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub max_connecting: usize,
    /// Lifetime (exp - iat) of the JWTs the generator mints.
    #[arg(long, global = true, default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Deadline for the whole run.
    #[arg(long, global = true, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Cluster mode: start one redis-server on a free port and N tether nodes over it
    /// (shared secrets); connections are spread over the nodes round-robin, and so are
    /// API calls.
    #[arg(long, global = true, value_name = "N")]
    pub cluster: Option<usize>,
    /// Cluster mode: the Redis server binary.
    #[arg(
        long,
        global = true,
        default_value = "redis-server",
        value_name = "PATH"
    )]
    pub redis_server: PathBuf,
    /// Cluster mode: Redis persistence: `everysec`, `always` or `no` (appendonly yes with
    /// that appendfsync), or `off` (no AOF, no snapshots).
    #[arg(long, global = true, default_value = "everysec", value_name = "MODE")]
    pub redis_aof: String,
    /// Cluster mode: one more raw argument for redis-server (repeat for more).
    #[arg(
        long = "redis-arg",
        global = true,
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub redis_args: Vec<String>,
    /// Cluster mode: the nodes' --node-heartbeat-ms (node-kill: 200 unless given).
    #[arg(long, global = true, value_name = "MS")]
    pub node_heartbeat_ms: Option<u64>,
    /// Cluster mode: the nodes' --node-lease-ms (node-kill: 1000 unless given).
    #[arg(long, global = true, value_name = "MS")]
    pub node_lease_ms: Option<u64>,
    /// connect, fanout: drive the floor server (benches/floor) instead of tether: spawned
    /// (this generator re-executed as `serve`), or the one at --url.
    #[arg(long, global = true)]
    pub floor: bool,
    /// connect, fanout: run against tether, then against a spawned floor server with the
    /// same parameters; print both and each figure's ratio tether / floor.
    #[arg(long, global = true, conflicts_with = "floor")]
    pub vs_floor: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Target connects per second (0 = all at once).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Connections per user (users u0, u1, ...).
    #[arg(long, default_value_t = 1)]
    pub per_user: usize,
    /// Write an SVG: latency percentile curve and RSS per connection.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Hold the connections idle this long after measuring.
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Wait after the connect phase before reading the server's RSS.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// After the clean closes, how long activeConnections may take to come back.
    #[arg(long, default_value_t = 15)]
    pub close_settle_secs: u64,
    /// With --cluster: first run the same connect against one embedded server, then
    /// against the cluster, and report both and their ratios.
    #[arg(long)]
    pub vs_embedded: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// New connections per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Unmeasured churn first, so caches reach their working size before the RSS
    /// baseline; growth measured after it is what a leak would show.
    #[arg(long, default_value_t = 0)]
    pub warmup_secs: u64,
    /// How long each connection stays open before its clean close (1000).
    #[arg(long, default_value_t = 200)]
    pub hold_ms: u64,
    /// Connection k belongs to user u{k % users}.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Deadline for activeConnections to return to the starting count.
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// Extra wait after settling before reading RSS.
    #[arg(long, default_value_t = 1000)]
    pub settle_extra_ms: u64,
    #[arg(long, default_value = "churn")]
    pub user_prefix: String,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// Connections per user (the spawned server gets --max-per-user this).
    #[arg(long, default_value_t = 10_000)]
    pub per_user: usize,
    /// Messages sent to each user.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Pause between rounds of messages.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Messages sent to each user first and not measured: the figures are then those of
    /// connections already receiving traffic. A receiving kernel ACKs the first 16 segments
    /// of a connection (and the first after 200 ms of quiet) at once; on loopback that ACK
    /// is sent and processed inside the server's write.
    #[arg(long, default_value_t = 0)]
    pub warmup_messages: usize,
    /// Target connects per second while opening.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Deadline for all deliveries after the last send.
    #[arg(long, default_value_t = 120)]
    pub deliver_timeout_secs: u64,
    #[arg(long, default_value = "fan")]
    pub user_prefix: String,
    /// Reader threads that take every connection after its welcome and read all of them
    /// with one epoll each, parsing frames by hand: about 2.6 µs of the generator's CPU a
    /// frame instead of 4 (0, the default: a tokio task per connection with tungstenite).
    /// Their latency is no better on a busy machine, and worse for small fan-outs: a
    /// sleeping reader is woken per frame, where tokio's workers spin before they park.
    #[arg(long, default_value_t = 0)]
    pub readers: usize,
}

#[derive(Args, Debug, Clone)]
pub struct SessionSyncArgs {
    /// Idle connections of other users.
    #[arg(long, default_value_t = 1000)]
    pub others: usize,
    /// Sequential PATCHes.
    #[arg(long, default_value_t = 1000)]
    pub updates: usize,
    /// WebSockets connected to the session.
    #[arg(long, default_value_t = 3)]
    pub per_session: usize,
    /// Connects per second for the others.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Deadline for one update to reach every session connection.
    #[arg(long, default_value_t = 5000)]
    pub update_timeout_ms: u64,
    #[arg(long, default_value = "sess-user")]
    pub session_user: String,
    #[arg(long, default_value = "other")]
    pub user_prefix: String,
}

#[derive(Args, Debug, Clone)]
pub struct ReattachArgs {
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 1)]
    pub per_user: usize,
    /// Connects per second while opening (the resume is all at once).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop the server with SIGKILL instead of SIGTERM.
    #[arg(long)]
    pub kill9: bool,
    /// Resume with last_seq = the highest seq received (expect nothing to
    /// replay) instead of the welcome's seq (expect the message sent before
    /// the restart to be replayed).
    #[arg(long)]
    pub resume_from_received: bool,
    /// Deadline for the SIGTERM stop (then SIGKILL).
    #[arg(long, default_value_t = 30)]
    pub stop_timeout_secs: u64,
    /// Deadline for every client to be back after /ready.
    #[arg(long, default_value_t = 60)]
    pub resume_timeout_secs: u64,
    /// Deadline for the replayed messages after the last welcome.
    #[arg(long, default_value_t = 10)]
    pub replay_timeout_secs: u64,
    #[arg(long, default_value = "re")]
    pub user_prefix: String,
}

#[derive(Args, Debug, Clone)]
pub struct NodeKillArgs {
    /// Connections in all, spread over the nodes round-robin.
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Connections per user (consecutive connections: a user's are on every node).
    #[arg(long, default_value_t = 10)]
    pub per_user: usize,
    /// Connects per second while opening.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// The node killed (0-based).
    #[arg(long, default_value_t = 0)]
    pub kill_node: usize,
    /// Pause between rounds of messages (a round is one message to every user).
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// API calls in flight at once while sending a round.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Rounds of messages before the kill.
    #[arg(long, default_value_t = 3)]
    pub rounds_before: usize,
    /// Rounds of messages after every client is back.
    #[arg(long, default_value_t = 3)]
    pub rounds_after: usize,
    /// When the clients of the killed node resume: `lease` (at the end of its lease),
    /// `detached` (once another node has detached its connections), or `drop` (as soon
    /// as their sockets drop, as clients of a crashed process would).
    #[arg(long, default_value = "lease", value_parser = ["lease", "detached", "drop"])]
    pub resume_at: String,
    /// Resume with last_seq = the welcome's seq instead of the highest seq received
    /// (every message since the connect is then replayed, and counted as a duplicate).
    #[arg(long)]
    pub resume_from_welcome: bool,
    /// Leave this many of the killed node's clients away (they never resume), to see
    /// that what they miss is reported.
    #[arg(long, default_value_t = 0)]
    pub leave_away: usize,
    /// Deadline for every client of the killed node to be back.
    #[arg(long, default_value_t = 60)]
    pub resume_timeout_secs: u64,
    /// Deadline for the last messages to arrive.
    #[arg(long, default_value_t = 30)]
    pub deliver_timeout_secs: u64,
    #[arg(long, default_value = "kill")]
    pub user_prefix: String,
}

#[derive(Args, Debug, Clone)]
pub struct SelftestArgs {
    /// Connections for the pool checks.
    #[arg(long, default_value_t = 60)]
    pub n: usize,
}
