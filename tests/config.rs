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
