#!/usr/bin/env python3
"""Two tether binaries side by side: the same load scenarios run alternately (A, B, A, B…)
so that both see the same machine, and the median of each figure with its ratio B / A.

    cargo build --release && cargo bench --bench load --no-run
    git worktree add /tmp/base arch-base && (cd /tmp/base && cargo build --release)
    python3 benches/ab.py --a /tmp/base/target/release/tether --b target/release/tether

The scenarios are the architecture change's acceptance figures: RSS per idle connection
at 15,000 (`connect --n 15000 --rate 5000`; `--only idle15k-slow` opens them at 1,000/s, and
`--only burst5k` measures 5,000 opened 200 at a time), fan-out delivery p99 and CPU per frame
(`fanout --users 1 --per-user 10000 --messages 30 --interval-ms 300`), and batched
connects/s with CPU per connect (`connect --n 10000 --rate 10000 --durability batched`).
Prints a Markdown table, the date and the load average before and after; --json writes
every run's figures too.
"""

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys

SCENARIOS = {
    "idle15k": ["connect", "--n", "15000", "--rate", "5000"],
    "idle15k-slow": ["connect", "--n", "15000", "--rate", "1000"],
    "burst5k": ["connect", "--n", "5000", "--rate", "0", "--max-connecting", "200"],
    "fanout": [
        "fanout", "--users", "1", "--per-user", "10000",
        "--messages", "30", "--interval-ms", "300",
    ],
    "connect": ["connect", "--n", "10000", "--rate", "10000", "--durability", "batched"],
}

# (scenario, label, how to read it from the JSON, unit, better when)
FIGURES = [
    ("idle15k", "RSS per idle connection at 15,000", lambda d: d["rssPerConnBytes"] / 1024, "KiB", "lower"),
    ("idle15k-slow", "RSS per idle connection at 15,000 opened at 1,000/s", lambda d: d["rssPerConnBytes"] / 1024, "KiB", "lower"),
    ("burst5k", "RSS per idle connection at 5,000 opened 200 at a time", lambda d: d["rssPerConnBytes"] / 1024, "KiB", "lower"),
    ("fanout", "fan-out 1 × 10,000, delivery p99", lambda d: d["deliveryLatencyUs"]["p99"] / 1000, "ms", "lower"),
    ("fanout", "fan-out CPU per frame", lambda d: d["cpuPerFrameUs"], "µs", "lower"),
    ("connect", "batched connects/s (10,000 at 10,000/s)", lambda d: d["connectsPerSec"], "/s", "higher"),
    ("connect", "CPU per connect", lambda d: d["cpuPerConnectUs"], "µs", "lower"),
]


def load_generator():
    found = [p for p in glob.glob("target/release/deps/load-*") if os.access(p, os.X_OK) and not p.endswith(".d")]
    if not found:
        sys.exit("no load generator: run `cargo bench --bench load --no-run` first")
    return max(found, key=os.path.getmtime)


def run(gen, binary, args):
    out = subprocess.run(
        [gen, *args, "--server-bin", binary, "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900,
    )
    if out.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="the binary to compare against (column A)")
    p.add_argument("--b", required=True, help="the binary under test (column B)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    p.add_argument("--json", metavar="FILE", help="write every run's figures here")
    o = p.parse_args()
    gen = load_generator()
    # The slow variant is for a busy machine (fewer handshakes in flight at once); ask for it.
    scenarios = o.only or [s for s in SCENARIOS if s not in ("idle15k-slow", "burst5k")]
    start = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()
    runs = {s: {"a": [], "b": []} for s in scenarios}
    for i in range(o.runs):
        for s in scenarios:
            # Alternate which goes first, so neither always runs on a warmer machine.
            order = ("a", "b") if i % 2 == 0 else ("b", "a")
            for side in order:
                d = run(gen, getattr(o, side), SCENARIOS[s])
                runs[s][side].append(d)
                print(f"run {i + 1}/{o.runs} {s} {side}: done (load {loadavg()})", file=sys.stderr)
    end = datetime.datetime.now(datetime.timezone.utc)
    print(f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC, load average {load_before} before, {loadavg()} after,"
          f" {o.runs} alternated runs, medians")
    print(f"A = {o.a}\nB = {o.b}\n")
    print("| figure | A | B | B / A | runs A | runs B |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s, label, get, unit, _better in FIGURES:
        if s not in runs:
            continue
        va = [get(d) for d in runs[s]["a"]]
        vb = [get(d) for d in runs[s]["b"]]
        ma, mb = statistics.median(va), statistics.median(vb)
        fmt = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        print(f"| {label} | {fmt(ma)} {unit} | {fmt(mb)} {unit} | {mb / ma:.2f} |"
              f" {', '.join(fmt(v) for v in va)} | {', '.join(fmt(v) for v in vb)} |")
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"a": o.a, "b": o.b, "runs": runs}, f)


if __name__ == "__main__":
    main()
