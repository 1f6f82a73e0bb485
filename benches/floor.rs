//! The floor server, on its own (a bench target with `harness = false`).
//!
//! ```text
//! cargo bench --bench floor -- serve --listen 127.0.0.1:8090 --data-dir /tmp/floor
//! cargo bench --bench load -- fanout --url http://127.0.0.1:8090 --data-dir /tmp/floor ...
//! ```
//!
//! The load generator also carries it (`--floor`, `--vs-floor` start it by re-executing
//! themselves as `load serve ...`); this target is the same code, to run it alone, attach to
//! it or profile it. What it does and why it is the floor: `benches/floor/mod.rs`.
#![forbid(unsafe_code)]

#[path = "floor/mod.rs"]
mod floor;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args == ["--bench"] {
        // `cargo bench` without arguments lands here: explain and succeed.
        println!("{}\n\n(no `serve` given: nothing to do)", floor::USAGE);
        return;
    }
    std::process::exit(floor::main(&args));
}
