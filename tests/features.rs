//! `cargo run --release` and `cargo bench` share one build: every crate of the release
//! build is built with the same features when the dev-dependencies join it. A dev-dependency
//! that turns on one more feature of a shared crate (mio's default `log`, say) makes cargo
//! build that crate and everything above it twice, minutes on 2 cores (see the
//! "Feature unification" note in Cargo.toml).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each package of the tree over `edges` with its features.
fn features(edges: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "-e", edges])
        .args(["--prefix", "none", "-f", "{p}|{f}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -e {edges}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = BTreeMap::<String, BTreeSet<String>>::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((package, feats)) = line.split_once('|') else {
            continue;
        };
        // `name v1.2.3 (path)` or `name v1.2.3`: the name and version name the build.
        let package: Vec<&str> = package.split_whitespace().take(2).collect();
        let entry = map.entry(package.join(" ")).or_default();
        entry.extend(
            feats
                .trim_end_matches("(*)")
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(String::from),
        );
    }
    map
}

#[test]
fn the_dev_dependencies_turn_on_no_feature_of_a_crate_the_release_build_has() {
    let release = features("normal");
    let with_dev = features("normal,dev");
    // A real tree was read: tokio and its features are in it.
    assert!(
        release
            .iter()
            .any(|(p, f)| p.starts_with("tokio v") && f.contains("net")),
        "{release:?}"
    );
    let differ: Vec<String> = release
        .iter()
        .filter_map(|(package, feats)| {
            let more: Vec<&String> = with_dev.get(package)?.difference(feats).collect();
            (!more.is_empty()).then(|| format!("{package}: {more:?}"))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "built twice, once for the benches with these features more: {differ:?}"
    );
}
