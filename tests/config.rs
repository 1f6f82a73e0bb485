//! Configuration as an operator meets it: the real `tether` command, its messages on
//! stderr and its exit codes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `tether` with `args` and exactly the `TETHER_*` variables in `env` (the ones of
/// the test's own environment are removed, so a developer's shell cannot change results).
fn tether(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run tether")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn every_configuration_error_is_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = write(
        tmp.path(),
        "tether.toml",
        "session_cookie = \"a b\"\nmax_per_users = 3\n",
    );
    let out = tether(
        &[
            "serve",
            "--config",
            &file,
            "--data-dir",
            common::arg(&data),
            "--max-per-user",
            "0",
            "--durability",
            "fast",
        ],
        &[("TETHER_TTL_SECONDS", "soon")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for (key, value) in [
        ("session_cookie", "\"a b\""),
        ("max_per_users", "did you mean \"max_per_user\""),
        ("max_per_user:", "\"0\""),
        ("durability", "\"fast\""),
        ("ttl_seconds", "\"soon\""),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no line names {key}:\n{err}"));
        assert!(line.contains(value), "{key}: {line}");
    }
    assert!(err.starts_with("error: 5 configuration errors:"), "{err}");
    assert!(
        !data.exists(),
        "a refused configuration opened the data directory"
    );
}

/// Starts `tether serve` on port 0 with `env`, waits until it listens, stops it, and
/// returns what it logged up to then.
async fn serve_log(dir: &Path, env: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tether serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let listening = tokio::time::timeout(common::WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("listening on http://") {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(listening, Ok(true), "the server did not start:\n{log}");
    log
}

#[tokio::test]
async fn unknown_tether_variables_are_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let log = serve_log(
        &tmp.path().join("data"),
        &[
            ("TETHER_MAX_PER_USERS", "3"),
            ("TETHER_MAX_TOTAL", "50"),
            // Not keys, but set on purpose: the load generator's marker.
            ("TETHER_LOAD_NOFILE_RAISED", "1"),
        ],
    )
    .await;
    let warning = log
        .lines()
        .find(|l| l.contains("TETHER_MAX_PER_USERS"))
        .unwrap_or_else(|| panic!("no warning names the variable:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("did you mean TETHER_MAX_PER_USER?"),
        "{warning}"
    );
    assert!(
        !log.contains("TETHER_MAX_TOTAL"),
        "a known key was warned about:\n{log}"
    );
    assert!(!log.contains("TETHER_LOAD_NOFILE_RAISED"), "{log}");

    // Commands that print one value keep stdout for it; the warning goes to stderr.
    let out = tether(
        &[
            "token",
            "--user",
            "u",
            "--data-dir",
            common::arg(&tmp.path().join("data")),
        ],
        &[("TETHER_JWT_ISUER", "https://id.example")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8_lossy(&out.stdout);
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    assert!(
        stderr(&out).contains(
            "warning: unknown environment variable TETHER_JWT_ISUER is ignored \
             (did you mean TETHER_JWT_ISSUER?)"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_boolean_lists_every_accepted_word() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tether(
        &[
            "serve",
            "--data-dir",
            common::arg(tmp.path()),
            "--trust-proxy",
            "maybe",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        "error: invalid value for trust_proxy: \"maybe\" (expected true/false, yes/no, on/off \
         or 1/0 (any letter case))"
    );
}

#[test]
fn a_short_jwt_secret_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let short = "only-twenty-six-bytes-long";
    for args in [
        vec!["serve", "--data-dir", common::arg(&data)],
        vec!["token", "--user", "u", "--data-dir", common::arg(&data)],
    ] {
        let out = tether(&args, &[("TETHER_JWT_SECRET", short)]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("error: invalid value for jwt_secret: <hidden, 26 chars>"),
            "{err}"
        );
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains(short), "the secret was echoed: {err}");
    }
    assert!(
        !data.exists(),
        "a refused configuration created the data directory"
    );

    let long = "exactly-thirty-two-bytes-long-ok";
    let out = tether(
        &["token", "--user", "u", "--data-dir", common::arg(&data)],
        &[("TETHER_JWT_SECRET", long)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn cluster_mode_refuses_to_start_without_configured_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dir = common::arg(&data);
    for args in [
        vec!["serve", "--data-dir", dir],
        vec!["token", "--user", "u", "--data-dir", dir],
    ] {
        let out = tether(&args, &[("TETHER_REDIS_URL", "redis://127.0.0.1:6379")]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with("error: 2 configuration errors:"), "{err}");
        assert!(
            err.contains("missing value for jwt_secret (cluster mode"),
            "{err}"
        );
        assert!(
            err.contains("missing value for admin_api_key (cluster mode"),
            "{err}"
        );
    }
    assert!(!data.exists(), "secrets were generated in cluster mode");

    // With the secrets configured, a node that cannot reach its Redis says so, without the
    // password, and touches no data directory.
    let out = tether(
        &["serve", "--data-dir", dir],
        &[
            ("TETHER_REDIS_URL", "redis://:hunter2@127.0.0.1:1"),
            ("TETHER_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("TETHER_ADMIN_API_KEY", "tk_0123456789abcdefghij"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cluster mode: cannot use Redis"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!data.exists(), "cluster mode opened a data directory");
}

#[test]
fn cluster_keys_errors_name_key_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tether(
        &[
            "serve",
            "--data-dir",
            common::arg(tmp.path()),
            "--redis-url",
            "http://cache:6379",
            "--redis-prefix",
            "a b",
            "--node-id",
            "node/1",
            "--node-heartbeat-ms",
            "2000",
            "--node-lease-ms",
            "3000",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for (key, value) in [
        ("redis_url", "\"http://cache:6379\""),
        ("redis_prefix", "\"a b\""),
        ("node_id", "\"node/1\""),
        ("node_lease_ms", "\"3000\""),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("invalid value for {key}: {value}"))),
            "{key}: {err}"
        );
    }
}

#[tokio::test]
async fn apikey_prints_just_the_key_and_its_permissions_must_be_chosen() {
    // No default permission: the key's power is always chosen.
    let out = tether(&["apikey"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--permissions <LIST>"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    let out = tether(&["apikey", "--permissions", "read", "--name", "dash"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `KEY=$(tether apikey --permissions read)` gets the key and nothing else.
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let key = stdout.strip_suffix('\n').expect("one line");
    assert!(!key.contains('\n'), "{stdout:?}");
    assert!(key.starts_with("tk_") && key.len() == 46, "{key}");
    // The lines that enable it are TOML, ready for a config file.
    let err = stderr(&out);
    let lines: toml::Table = toml::from_str(&err).expect("stderr is TOML");
    let entry = &lines["api_keys"][0];
    assert_eq!(entry["key"].as_str(), Some(key));
    assert_eq!(entry["name"].as_str(), Some("dash"));
    assert_eq!(
        entry["permissions"],
        toml::Value::Array(vec!["read".into()])
    );

    // The environment form in the comment enables it on a real server, with read only.
    let inline = err
        .lines()
        .find_map(|l| l.strip_prefix("# TETHER_API_KEYS='"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no TETHER_API_KEYS line:\n{err}"));
    let server = common::Server::start(&["--api-keys", inline]).await;
    let http = common::http();
    let stats = http
        .get(server.url("/v1/stats"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    let cleanup = http
        .post(server.url("/v1/cleanup"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 403);

    // What the server would refuse is refused here, before a key is printed.
    for (args, says) in [
        (
            vec!["apikey", "--permissions", "read,root"],
            "invalid --permissions \"root\" (expected admin, sessions or read)",
        ),
        (
            vec!["apikey", "--permissions", "read", "--name", "admin"],
            "invalid --name \"admin\"",
        ),
        (
            vec!["apikey", "--permissions", "read", "--name", " "],
            "invalid --name",
        ),
    ] {
        let out = tether(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
