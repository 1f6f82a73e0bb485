//! The `tether` command line: parses arguments and hands over to the library.
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad arguments or configuration (nothing
//! was opened).
//!
//! It is over 600 lines because it is the whole command line in one place: the clap
//! definition of every subcommand and the few lines each takes to hand over to the library
//! (`serve`, `listen`, `token`, `apikey`, `backup`, `restore`, `inspect`), with its tests.

// One `unsafe` call, in `limit_malloc_arenas`; the library forbids it outright.
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use tether::config::{
    BackupArgs, Config, ConfigArgs, ConfigError, InspectArgs, LogFormat, RestoreArgs,
};
use tether::secrets;

/// Keeps WebSocket and SSE connections tied to their users and sessions, and keeps them
/// across restarts.
///
/// Configuration comes from a TOML file (--config), then TETHER_* environment variables,
/// then flags, later ones winning. See `tether serve --help` for every key.
#[derive(Parser, Debug)]
#[command(name = "tether", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server
    ///
    /// With no configuration it listens on 127.0.0.1:8080, keeps its store in ./data, and on
    /// first start generates a JWT secret and an admin API key into <data-dir>/secrets.toml.
    Serve(Box<ConfigArgs>),
    /// Mint a JWT for a user, signed with the configured or generated secret (HS* only)
    ///
    /// Prints only the token, so `TOKEN=$(tether token --user alice)` works. Reads the
    /// secret from jwt_secret if configured, else from <data-dir>/secrets.toml (creating it
    /// if it does not exist yet).
    Token(TokenCmd),
    /// Print a new random API key and the config lines that enable it
    ///
    /// Prints only the key on stdout, so `KEY=$(tether apikey --permissions read)` works;
    /// the lines that enable it go to stderr, as TOML for the config file (`2>> tether.toml`
    /// appends them) with the TETHER_API_KEYS form in a comment. --permissions is required:
    /// a key's power is always chosen, never a default.
    Apikey(ApikeyCmd),
    /// Write a consistent snapshot of a running server or of a stopped data directory
    Backup(BackupCmd),
    /// Restore a snapshot written by `tether backup` into an empty data directory
    Restore(RestoreCmd),
    /// Connect as a client: print every frame as a JSON line, send stdin lines as frames
    ///
    /// Connects with --token, --session-id, or a token it mints for --user with the data
    /// directory's secret (as `tether token` does; a fresh one for every reconnect and
    /// refresh). Each frame the server sends is one JSON line on stdout, each seq once;
    /// what was printed is acked. A line typed on stdin, such as {"type":"ping","id":1},
    /// is sent as a frame. Lost connections are resumed by themselves (full-jitter backoff,
    /// the connection id, resume token and lastSeq), across server restarts; 1000, 1009 and
    /// 45xx closes are final. Status lines go to stderr. Ctrl-C closes with 1000.
    Listen(ListenCmd),
    /// Show what a data directory holds: counts, sizes, schema version
    ///
    /// A stopped data directory is read directly. Beside a running server (it holds
    /// <data-dir>/tether.lock), the figures come from that server's API instead, and say so.
    Inspect(InspectCmd),
}

#[derive(Args, Debug)]
struct TokenCmd {
    /// User id, the token's `sub` claim
    #[arg(long, value_name = "ID")]
    user: String,
    /// Lifetime of the token in seconds
    #[arg(long, value_name = "N", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=315_360_000))]
    ttl_seconds: u64,
    /// Comma-separated permissions claim, e.g. read,write [default: none]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    permissions: Option<Vec<String>>,
    /// Comma-separated roles claim [default: none]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    roles: Option<Vec<String>>,
    /// Display name claim [default: none]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Session id claim: the connection is linked to this session [default: none]
    #[arg(long, value_name = "SESSION")]
    sid: Option<String>,
    #[command(flatten)]
    source: ConfigSource,
}

/// Where a subcommand finds the server's configuration (TETHER_* variables apply too).
#[derive(Args, Debug)]
struct ConfigSource {
    /// TOML configuration file of the server
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: data_dir from the configuration, else ./data]
    #[arg(long, env = "TETHER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// The server's configuration as `serve` would see it, with `--data-dir` on top.
    fn load(&self) -> Result<Config, String> {
        for var in tether::config::unknown_env_vars() {
            eprintln!("warning: {var}");
        }
        let mut args = ConfigArgs::from_env().map_err(|e| e.to_string())?;
        if let Some(dir) = &self.data_dir {
            args.set("data_dir", dir);
        }
        Config::load(self.config.as_deref(), &args).map_err(|e| e.to_string())
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("credential").required(true).args(["token", "session_id", "user"])))]
struct ListenCmd {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws [default: the server running on the data
    /// directory, else ws://<listen>/ws from the configuration]
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// JWT (or tk_ API key) to connect with
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Session id to connect with
    #[arg(long, value_name = "SESSION")]
    session_id: Option<String>,
    /// Mint tokens for this user with the configured or generated secret (HS* only)
    #[arg(long, value_name = "ID")]
    user: Option<String>,
    /// Comma-separated permissions claim of minted tokens [default: none]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "user")]
    permissions: Option<Vec<String>>,
    /// Lifetime of each minted token in seconds (it is refreshed before it ends)
    #[arg(long, value_name = "N", default_value_t = 3600, requires = "user",
          value_parser = clap::value_parser!(u64).range(10..=315_360_000))]
    ttl_seconds: u64,
    /// Do not read stdin (by default each line is sent as a frame)
    #[arg(long)]
    no_stdin: bool,
    #[command(flatten)]
    source: ConfigSource,
}

#[derive(Args, Debug)]
struct ApikeyCmd {
    /// Name of the key; connections using it get user id apikey:<name>
    #[arg(long, value_name = "NAME", default_value = "app")]
    name: String,
    /// Comma-separated permissions, among admin (everything), sessions (the session routes)
    /// and read (the GET routes); required
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true)]
    permissions: Vec<String>,
}

#[derive(Args, Debug)]
struct BackupCmd {
    /// File to write the snapshot to
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Base URL of a running server to snapshot through its admin API, e.g.
    /// http://127.0.0.1:8080 [default: the server running on the data directory, found by
    /// its lock file; else read the stopped data directory]
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Admin API key for --server [default: admin_api_key from the configuration, else
    /// the one in <data-dir>/secrets.toml]
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    #[command(flatten)]
    source: ConfigSource,
}

#[derive(Args, Debug)]
struct RestoreCmd {
    /// Snapshot file written by `tether backup`
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Data directory to restore into; must be empty or not exist
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Args, Debug)]
struct InspectCmd {
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// API key (read is enough) for a server running on the data directory [default:
    /// admin_api_key from the configuration, else the one in <data-dir>/secrets.toml]
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    #[command(flatten)]
    source: ConfigSource,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::Token(cmd) => token(&cmd),
        Command::Apikey(cmd) => apikey(&cmd),
        Command::Backup(cmd) => backup(cmd),
        Command::Restore(cmd) => finish(tether::backup::restore(RestoreArgs {
            from: cmd.from,
            data_dir: cmd.data_dir,
        })),
        Command::Inspect(cmd) => inspect(cmd),
        Command::Listen(cmd) => listen(cmd),
    }
}

fn listen(cmd: ListenCmd) -> ExitCode {
    use tether::listen::{Credential, ListenArgs};
    let config = match cmd.source.load() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let credential = match (cmd.token, cmd.session_id, &cmd.user) {
        (Some(t), _, _) => Credential::Token(t),
        (_, Some(s), _) => Credential::Session(s),
        (_, _, Some(user)) => {
            if user.trim().is_empty() {
                return usage_error("--user must not be empty");
            }
            let secret = match signing_secret(&config) {
                Ok(secret) => secret,
                Err(code) => return code,
            };
            let (user, permissions, ttl) = (user.clone(), cmd.permissions, cmd.ttl_seconds);
            let (alg, iss, aud) = (
                config.jwt_algorithm,
                config.jwt_issuer.clone(),
                config.jwt_audience.clone(),
            );
            Credential::Mint(std::sync::Arc::new(move || {
                let now = unix_now();
                let mut claims = serde_json::json!({"sub": user, "iat": now, "exp": now + ttl});
                for (claim, value) in [("iss", &iss), ("aud", &aud)] {
                    if let Some(v) = value {
                        claims[claim] = v.clone().into();
                    }
                }
                if let Some(p) = &permissions {
                    claims["permissions"] = p.clone().into();
                }
                tether::auth::mint(secret.as_bytes(), alg, &claims).map_err(|e| e.to_string())
            }))
        }
        _ => return usage_error("one of --token, --session-id or --user is required"),
    };
    let url = match cmd.url {
        Some(url) => url,
        None => match tether::running::find(&config.data_dir, config.listen) {
            Ok(Some(running)) => format!("ws://{}/ws", running.addr),
            _ => format!("ws://{}/ws", tether::running::reachable(config.listen)),
        },
    };
    let args = ListenArgs {
        url,
        credential,
        stdin: !cmd.no_stdin,
    };
    let result = match runtime() {
        Ok(rt) => {
            let result = rt.block_on(tether::listen::run(args));
            // The stdin thread may sit in a read: do not wait for it.
            rt.shutdown_background();
            result
        }
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    finish(result)
}

/// The HS* secret that signs tokens: configured, else generated into the data directory
/// (created if it does not exist yet, as the server would).
fn signing_secret(config: &Config) -> Result<String, ExitCode> {
    let alg = config.jwt_algorithm;
    if !alg.is_hmac() {
        return Err(usage_error(format!(
            "jwt_algorithm is {alg}: tether holds only the public key, so it cannot sign \
             tokens; mint them where the private key is (tether token works with HS256, \
             HS384 and HS512)"
        )));
    }
    if let Some(secret) = config.jwt_secret.clone() {
        return Ok(secret);
    }
    match secrets::load_or_create(&config.data_dir) {
        Ok((s, created)) => {
            if created {
                eprintln!(
                    "generated {} (the server will use the same secret)",
                    secrets::path(&config.data_dir).display()
                );
            }
            Ok(s.jwt_secret)
        }
        Err(e) => Err(finish(Err(e))),
    }
}

/// `inspect`: a stopped data directory is read directly; a running server is asked
/// through its API, and the report says so.
fn inspect(cmd: InspectCmd) -> ExitCode {
    let config = match cmd.source.load() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    if config.is_cluster() {
        return finish(Err(CLUSTER_STATE));
    }
    let running = match tether::running::find(&config.data_dir, config.listen) {
        Ok(running) => running,
        Err(e) => return finish(Err(e)),
    };
    let Some(server) = running else {
        return finish(tether::backup::inspect(InspectArgs {
            data_dir: config.data_dir,
            json: cmd.json,
        }));
    };
    let Some(key) = cmd.api_key.clone().or_else(|| admin_key(&config)) else {
        return finish(Err(no_key(&config.data_dir, &server)));
    };
    match runtime() {
        Ok(rt) => finish(rt.block_on(tether::running::inspect(
            &config.data_dir,
            &server,
            &key,
            cmd.json,
        ))),
        Err(e) => finish(Err(format!("cannot start the async runtime: {e}"))),
    }
}

/// The admin key of the configuration, else the generated one; never creates the file.
fn admin_key(config: &Config) -> Option<String> {
    config
        .admin_api_key
        .clone()
        .or_else(|| stored_admin_key(&config.data_dir))
}

fn no_key(data_dir: &Path, server: &tether::running::Running) -> String {
    format!(
        "data directory {} is in use by a running tether ({}, {}), and no API key was found \
         to ask it (admin_api_key is not configured and {} is not readable): pass --api-key",
        data_dir.display(),
        server.pid_text(),
        server.base_url(),
        secrets::path(data_dir).display()
    )
}

/// What `backup` and `inspect` say in cluster mode, where no data directory holds the state.
const CLUSTER_STATE: &str =
    "cluster mode (redis_url is set): the state is in Redis, not in a data \
     directory. Back it up with Redis's own persistence: an RDB snapshot (BGSAVE, then copy \
     dump.rdb) or the AOF files; inspect it with redis-cli (keys start with redis_prefix)";

/// Configuration errors: reported before anything is opened, exit 2.
fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn finish(result: Result<(), impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// glibc's malloc gives allocating threads arenas of their own, up to 8 per core, and a
/// chunk freed in one arena is reused only by the threads on it. Over an hour of churn that
/// spread crept the server's RSS up while its live heap stayed flat; two arenas held about
/// 14 % less RSS all through, at the same speed (README, "Two malloc arenas"). A
/// `GLIBC_TUNABLES` that sets `glibc.malloc.arena_max` wins. Called first, before the server
/// starts any thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    const ARENAS: libc::c_int = 2;
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if !tuned {
        // SAFETY: mallopt sets one malloc parameter and touches no Rust state; it runs
        // before any other thread of this process exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn serve(args: &ConfigArgs) -> ExitCode {
    limit_malloc_arenas();
    let unknown = tether::config::unknown_env_vars();
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            // A misspelt variable may be why a value is not what was meant.
            for var in &unknown {
                eprintln!("warning: {var}");
            }
            return usage_error(e);
        }
    };
    if let Err(e) = init_tracing(&config) {
        return usage_error(e);
    }
    tether::panics::install();
    for var in &unknown {
        tracing::warn!("{var}");
    }
    // The data directory and the secrets are created by server::run, after it holds the
    // directory lock, so that a second server on the same directory touches nothing.
    match runtime() {
        Ok(rt) => {
            let result = rt.block_on(tether::server::run(config));
            // Dropping the runtime would wait for every blocking task, and a store flush stuck
            // in sled never ends (see tether::durability): give them a moment, then go.
            rt.shutdown_timeout(RUNTIME_SHUTDOWN_WAIT);
            finish(result)
        }
        Err(e) => finish(Err(format!("cannot start the async runtime: {e}"))),
    }
}

/// How long `serve` waits for the runtime's tasks after the server stopped.
const RUNTIME_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Log filter: `RUST_LOG` if set, else `log_level`, else `info`.
fn init_tracing(config: &Config) -> Result<(), ConfigError> {
    use tether::config::log_filter;
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match &rust_log {
        Some(v) => log_filter(v).map_err(|e| ConfigError::Invalid {
            key: "RUST_LOG".into(),
            value: format!("{v:?}"),
            expected: format!("expected a log filter like \"info\": {e}"),
        })?,
        // Validated with the rest of the config.
        None => log_filter(config.log_level.as_deref().unwrap_or("info"))
            .expect("log_level is validated with the rest of the config"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    // try_init: a subscriber already set (embedding, tests) is not worth failing over.
    let _ = match config.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

fn token(cmd: &TokenCmd) -> ExitCode {
    let config = match cmd.source.load() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    if cmd.user.trim().is_empty() {
        return usage_error("--user must not be empty");
    }
    let secret = match signing_secret(&config) {
        Ok(secret) => secret,
        Err(code) => return code,
    };
    let alg = config.jwt_algorithm;
    let claims = token_claims(cmd, &config, unix_now());
    match tether::auth::mint(secret.as_bytes(), alg, &claims) {
        Ok(jwt) => {
            println!("{jwt}");
            ExitCode::SUCCESS
        }
        Err(e) => finish(Err(e)),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token_claims(cmd: &TokenCmd, config: &Config, now: u64) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "sub": cmd.user,
        "iat": now,
        "exp": now + cmd.ttl_seconds,
    });
    let obj = claims.as_object_mut().expect("a JSON object");
    if let Some(p) = &cmd.permissions {
        obj.insert("permissions".into(), p.clone().into());
    }
    if let Some(r) = &cmd.roles {
        obj.insert("roles".into(), r.clone().into());
    }
    for (claim, value) in [
        ("name", &cmd.name),
        ("sid", &cmd.sid),
        ("iss", &config.jwt_issuer),
        ("aud", &config.jwt_audience),
    ] {
        if let Some(v) = value {
            obj.insert(claim.into(), v.clone().into());
        }
    }
    claims
}

fn apikey(cmd: &ApikeyCmd) -> ExitCode {
    let key = tether::auth::new_api_key();
    // The rules the server will apply to these lines, so a key printed is a key accepted.
    let entry = (key.as_str(), cmd.name.as_str(), cmd.permissions.as_slice());
    if let Some(p) = tether::auth::check_keys(None, [entry]).first() {
        let flag = if p.field.ends_with(".name") {
            "--name"
        } else {
            "--permissions"
        };
        return usage_error(format!("invalid {flag} {:?} ({})", p.text, p.expected));
    }
    println!("{key}");
    eprint!("{}", apikey_config(&key, cmd));
    ExitCode::SUCCESS
}

/// The lines that enable `key`: valid TOML for the config file, the environment form in
/// a comment.
fn apikey_config(key: &str, cmd: &ApikeyCmd) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let permissions: Vec<String> = cmd.permissions.iter().map(|p| quote(p)).collect();
    let (key, name, permissions) = (quote(key), quote(&cmd.name), permissions.join(", "));
    let inline = format!("[{{key = {key}, name = {name}, permissions = [{permissions}]}}]");
    // Single-quoted for a POSIX shell; a quote inside is closed, escaped and reopened.
    let shell = format!("'{}'", inline.replace('\'', r"'\''"));
    format!(
        "# Add to the config file (--config) to enable the key:\n\
         [[api_keys]]\nkey = {key}\nname = {name}\npermissions = [{permissions}]\n\
         # or set in the environment (this replaces the config file's api_keys):\n\
         # TETHER_API_KEYS={shell}\n"
    )
}

fn backup(cmd: BackupCmd) -> ExitCode {
    let config = match cmd.source.load() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    if config.is_cluster() {
        return finish(Err(CLUSTER_STATE));
    }
    let mut server = cmd.server;
    if server.is_none() {
        // A server running on the directory holds its lock: back it up through its API.
        match tether::running::find(&config.data_dir, config.listen) {
            Ok(None) => {}
            Ok(Some(running)) => {
                eprintln!(
                    "tether is running on {} ({}): backing up through its admin API at {} \
                     (address from {})",
                    config.data_dir.display(),
                    running.pid_text(),
                    running.base_url(),
                    running.found_by
                );
                if cmd.api_key.is_none() && admin_key(&config).is_none() {
                    return finish(Err(no_key(&config.data_dir, &running)));
                }
                server = Some(running.base_url());
            }
            Err(e) => return finish(Err(e)),
        }
    }
    let api_key = match (&server, cmd.api_key) {
        (_, Some(key)) => Some(key),
        (None, None) => None,
        (Some(_), None) => admin_key(&config),
    };
    let args = BackupArgs {
        out: cmd.out,
        server,
        api_key,
        data_dir: config.data_dir,
    };
    match runtime() {
        Ok(rt) => finish(rt.block_on(tether::backup::backup(args))),
        Err(e) => finish(Err(format!("cannot start the async runtime: {e}"))),
    }
}

/// The generated admin key, if the data directory has one; never creates the file.
fn stored_admin_key(data_dir: &Path) -> Option<String> {
    secrets::read(data_dir)
        .ok()
        .flatten()
        .map(|s| s.admin_api_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent_and_every_flag_has_help() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_long().is_some() && !["help", "version"].contains(&arg.get_id().as_str())
                {
                    assert!(
                        arg.get_help().is_some(),
                        "{} --{} has no help",
                        sub.get_name(),
                        arg.get_id()
                    );
                }
            }
        }
    }

    #[test]
    fn token_claims_carry_what_was_asked() {
        let cli = Cli::try_parse_from([
            "tether",
            "token",
            "--user",
            "alice",
            "--ttl-seconds",
            "60",
            "--permissions",
            "read,write",
            "--sid",
            "s1",
        ])
        .unwrap();
        let Command::Token(cmd) = cli.command else {
            panic!("not token")
        };
        let config = Config {
            jwt_issuer: Some("iss".into()),
            ..Config::default()
        };
        let claims = token_claims(&cmd, &config, 1000);
        assert_eq!(
            claims,
            serde_json::json!({"sub": "alice", "iat": 1000, "exp": 1060,
                               "permissions": ["read", "write"], "sid": "s1", "iss": "iss"})
        );
    }

    #[test]
    fn apikey_prints_key_and_toml() {
        let cli =
            Cli::try_parse_from(["tether", "apikey", "--permissions", "read,sessions"]).unwrap();
        let Command::Apikey(cmd) = cli.command else {
            panic!("not apikey")
        };
        let key = "tk_0123456789abcdefghij";
        // The key alone goes to stdout (see tests/config.rs); these lines to stderr, and
        // all of them are TOML, so they can be appended to a config file as they are.
        let text = apikey_config(key, &cmd);
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let entry = &parsed["api_keys"][0];
        assert_eq!(entry["key"].as_str(), Some(key));
        assert_eq!(entry["name"].as_str(), Some("app"));
        assert_eq!(
            entry["permissions"],
            toml::Value::Array(vec!["read".into(), "sessions".into()])
        );
    }
}
