#!/usr/bin/env python3
"""The README's benchmark tables, rerun: every command of "Results", "Cluster" and "Floor"
(all but the hour-long soak), as many runs as the tables give, alternated where they are;
then each figure, and how far a rerun is from the table.

    cargo build --release && cargo bench --bench load --bench crash --no-run
    python3 benches/tables.py run --out /tmp/rerun            # about 20 minutes
    python3 benches/tables.py figures /tmp/rerun              # the figures, medians of the runs
    python3 benches/tables.py compare benches/results/table.json /tmp/rerun

`run` writes one JSON file per run (the load generator's `--json`), `log.txt` (each command
with the date and `/proc/loadavg` before it) and `figures.json`. `compare A B` takes two
runs (a directory or its `figures.json`) and prints every figure of A with B's, B ÷ A, and
whether B is within the tolerance (25 % unless `--tolerance` says otherwise) of A; counts
that must be exact (messages lost, missed, duplicated) must be equal, and the churn's RSS
growth must meet its goal. It exits 1 when a figure is outside. This machine's speed
swings by half from one hour to the next, so it also prints the host's speed (the floor's
own CPU per frame, B ÷ A) and, for each figure of time or rate outside, its ratio with the
host's speed taken out. `benches/results/table.json` holds the figures of the README's last
table run, so `compare benches/results/table.json DIR` checks a rerun against the README.
Everything runs on loopback and stops by itself (each command has a deadline of 15 minutes).
"""

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import loadavg  # noqa: E402  (the same /proc/loadavg reading as the A/B script's)

FANOUT300 = ["fanout", "--users", "1", "--per-user", "10000", "--messages", "30", "--interval-ms", "300"]
CONNECT10K = ["connect", "--n", "10000", "--rate", "10000"]

# Groups of jobs: (job name, load generator arguments, runs). Jobs of one group listed in one
# inner list run alternated (a, b, a, b, ...), as the tables' runs were.
GROUPS = {
    "results": [
        [("idle15k", ["connect", "--n", "15000", "--rate", "5000"], 2)],
        [("burst5k", ["connect", "--n", "5000", "--rate", "0", "--max-connecting", "200"], 5)],
        [
            ("relaxed", CONNECT10K + ["--durability", "relaxed"], 5),
            ("batched", CONNECT10K + ["--durability", "batched"], 5),
            ("sync", CONNECT10K + ["--durability", "sync"], 5),
        ],
        [("fanout300", FANOUT300, 3), ("fanout300-r1", FANOUT300 + ["--readers", "1"], 3)],
        [
            ("fanout-b2b", ["fanout", "--users", "1", "--per-user", "10000", "--messages", "50"], 3),
        ],
        [("fanout-b2b-r1", ["fanout", "--users", "1", "--per-user", "10000", "--messages", "50", "--readers", "1"], 1)],
        [
            ("fanout10x100", ["fanout", "--users", "10", "--per-user", "100", "--messages", "50"], 1),
            ("fanout10x100-r1", ["fanout", "--users", "10", "--per-user", "100", "--messages", "50", "--readers", "1"], 1),
        ],
        [("session-sync", ["session-sync", "--others", "10000", "--updates", "1000", "--per-session", "3"], 1)],
        [("reattach", ["reattach", "--n", "10000"], 1)],
        [("reattach-kill9", ["reattach", "--n", "10000", "--kill9"], 1)],
    ],
    "floor": [
        [
            ("floor-fanout-r1", FANOUT300 + ["--vs-floor", "--readers", "1"], 3),
            ("floor-fanout", FANOUT300 + ["--vs-floor"], 3),
        ],
        [("floor-connect", CONNECT10K + ["--vs-floor"], 5)],
    ],
    "cluster": [
        [("cl-connect", CONNECT10K + ["--cluster", "2", "--vs-embedded"], 1)],
        [("cl-connect-1x2000", ["connect", "--n", "2000", "--per-user", "2000", "--rate", "2000", "--cluster", "2"], 1)],
        [("cl-connect-1x10000", ["connect", "--n", "10000", "--per-user", "10000", "--rate", "10000", "--cluster", "2"], 1)],
        [
            ("cl-fanout-r1", FANOUT300 + ["--cluster", "2", "--readers", "1"], 3),
            ("cl-fanout", FANOUT300 + ["--cluster", "2"], 3),
        ],
        [("cl-session-sync", ["session-sync", "--others", "10000", "--updates", "1000", "--per-session", "3", "--cluster", "2"], 1)],
        [("cl-kill-lease", ["node-kill", "--cluster", "2", "--n", "10000"], 1)],
        [("cl-kill-drop", ["node-kill", "--cluster", "2", "--n", "10000", "--resume-at", "drop"], 1)],
        [("cl-kill-detached", ["node-kill", "--cluster", "2", "--n", "10000", "--resume-at", "detached"], 1)],
    ],
    "churn": [[("churn", ["churn", "--rate", "500", "--duration-secs", "30", "--warmup-secs", "90"], 1)]],
    # Not the load generator: `crash` and `registry` are their own benches (see run_one()).
    "crash": [[("crash", None, 1)]],
    "registry": [[("registry", None, 1)]],
}

KIB = 1024


def dig(*path, scale=1.0):
    def get(d):
        for k in path:
            d = d[k]
        return None if d is None else d * scale
    return get


def connect_figures(prefix, job, *at):
    """Connects/s, CPU per connect and welcome p50 and p99 of a connect run (under `at` in
    its JSON), each labelled `prefix` and the figure's name."""
    return [
        (f"{prefix}connects/s", job, dig(*at, "connectsPerSec"), "/s", False),
        (f"{prefix}CPU per connect", job, dig(*at, "cpuPerConnectUs"), "µs", False),
        (f"{prefix}welcome p50", job, dig(*at, "welcomeLatencyUs", "p50", scale=1e-3), "ms", False),
        (f"{prefix}welcome p99", job, dig(*at, "welcomeLatencyUs", "p99", scale=1e-3), "ms", False),
    ]


# (figure, job, how to read it from one run's JSON, unit, how to compare). The figure is the
# median of the job's runs. Compared by their ratio (False), for equality (True: counts that
# must not move), or against a goal (("≤", bound): a growth near 0 %, whose ratio means
# nothing).
FIGURES = [
    ("idle RSS per connection at 15,000", "idle15k", dig("rssPerConnBytes", scale=1 / KIB), "KiB", False),
    ("connect at 5,000/s: welcome p50", "idle15k", dig("welcomeLatencyUs", "p50", scale=1e-3), "ms", False),
    ("connect at 5,000/s: welcome p99", "idle15k", dig("welcomeLatencyUs", "p99", scale=1e-3), "ms", False),
    ("connect at 5,000/s: connects/s", "idle15k", dig("connectsPerSec"), "/s", False),
    ("burst of 5,000, 200 in flight: RSS per connection", "burst5k", dig("rssPerConnBytes", scale=1 / KIB), "KiB", False),
]
for mode in ("relaxed", "batched", "sync"):
    FIGURES += connect_figures(f"connects {mode}: ", mode)
for job, label in (
    ("fanout300", "fan-out 1 × 10,000, 300 ms apart"),
    ("fanout300-r1", "fan-out 1 × 10,000, 300 ms apart, --readers 1"),
    ("fanout-b2b", "fan-out 1 × 10,000, back to back"),
    ("fanout-b2b-r1", "fan-out 1 × 10,000, back to back, --readers 1"),
    ("fanout10x100", "fan-out 10 × 100"),
    ("fanout10x100-r1", "fan-out 10 × 100, --readers 1"),
):
    unit, scale = ("µs", 1.0) if job.startswith("fanout10x100") else ("ms", 1e-3)
    FIGURES += [
        (f"{label}: delivery p50", job, dig("deliveryLatencyUs", "p50", scale=scale), unit, False),
        (f"{label}: delivery p99", job, dig("deliveryLatencyUs", "p99", scale=scale), unit, False),
    ]
    if not job.startswith("fanout300"):
        FIGURES.append((f"{label}: messages/s", job, dig("messagesPerSec"), "/s", False))
FIGURES += [
    ("session sync: p50", "session-sync", dig("latencyUs", "p50"), "µs", False),
    ("session sync: p99", "session-sync", dig("latencyUs", "p99"), "µs", False),
    ("churn: opened", "churn", dig("opened"), "", True),
    ("churn: clean closes", "churn", dig("cleanClosed"), "", True),
    ("churn: registry after", "churn", dig("activeConnectionsAfter"), "", True),
    ("churn: RSS growth", "churn", dig("rssGrowthPercent"), "%", ("≤", 5.0)),
]
for job, label in (("reattach", "reattach after SIGTERM"), ("reattach-kill9", "reattach after kill -9")):
    FIGURES += [
        (f"{label}: /ready to all resumed", job, dig("readyToLastResumedMs", scale=1e-3), "s", False),
        (f"{label}: start to /ready", job, dig("restartToReadyMs"), "ms", False),
        (f"{label}: missed messages replayed", job, dig("recovered"), "", True),
    ]
for mode in ("batched", "sync", "relaxed"):
    for what in ("connections", "sessions", "messages"):
        FIGURES.append((f"crash {mode}: {what} acknowledged", "crash", dig(mode, what, "acknowledged"), "", False))
        FIGURES.append((f"crash {mode}: {what} lost", "crash", dig(mode, what, "lost"), "", mode != "relaxed"))
for key, label in (
    ("registry@100k/info", "registry: lookup"),
    ("registry@100k/user_connections", "registry: a user's 10 connections"),
    ("registry@100k/register", "registry: register"),
    ("registry@100k/unregister", "registry: unregister"),
    ("registry@100k/migrate", "registry: migrate"),
):
    FIGURES.append((label, "registry", dig(key, scale=1e-3), "µs", False))
for key, label in (
    ("codec/encode ConnRecord", "codec: encode a connection record"),
    ("codec/decode ConnRecord", "codec: decode a connection record"),
    ("codec/encode SessionRecord", "codec: encode a session"),
    ("codec/decode SessionRecord", "codec: decode a session"),
):
    FIGURES.append((label, "registry", dig(key), "ns", False))
for job, label in (("floor-fanout-r1", "floor fan-out, --readers 1"), ("floor-fanout", "floor fan-out")):
    for side in ("tether", "floor"):
        FIGURES += [
            (f"{label}: {side} CPU per frame", job, dig(side, "cpuPerFrameUs"), "µs", False),
            (f"{label}: {side} delivery p50", job, dig(side, "deliveryLatencyUs", "p50", scale=1e-3), "ms", False),
            (f"{label}: {side} delivery p99", job, dig(side, "deliveryLatencyUs", "p99", scale=1e-3), "ms", False),
        ]
    FIGURES += [
        (f"{label}: CPU per frame ÷ floor", job, dig("ratioToFloor", "cpuPerFrameUs"), "×", False),
        (f"{label}: delivery p50 ÷ floor", job, dig("ratioToFloor", "deliveryLatencyUs.p50"), "×", False),
        (f"{label}: delivery p99 ÷ floor", job, dig("ratioToFloor", "deliveryLatencyUs.p99"), "×", False),
    ]
for side in ("tether", "floor"):
    FIGURES += connect_figures(f"floor connect: {side} ", "floor-connect", side)
FIGURES += [
    ("floor connect: connects/s ÷ floor", "floor-connect", dig("ratioToFloor", "connectsPerSec"), "×", False),
    ("floor connect: CPU per connect ÷ floor", "floor-connect", dig("ratioToFloor", "cpuPerConnectUs"), "×", False),
]
for side in ("cluster", "embedded"):
    FIGURES += connect_figures(f"cluster connect 10,000 × 1: {side} ", "cl-connect", side)
    FIGURES.append(
        (f"cluster connect 10,000 × 1: {side} RSS per connection", "cl-connect", dig(side, "rssPerConnBytes", scale=1 / KIB), "KiB", False)
    )
FIGURES += [
    ("cluster connect 10,000 × 1: Redis CPU per connect", "cl-connect", dig("cluster", "redisCpuPerConnectUs"), "µs", False),
    ("cluster connect 10,000 × 1: Redis RSS per connection", "cl-connect", dig("cluster", "redisRssPerConnBytes", scale=1 / KIB), "KiB", False),
]
for job, label in (("cl-connect-1x2000", "cluster connect 1 × 2,000"), ("cl-connect-1x10000", "cluster connect 1 × 10,000")):
    FIGURES += [
        (f"{label}: opened", job, dig("opened"), "", True),
        (f"{label}: connects/s", job, dig("connectsPerSec"), "/s", False),
        (f"{label}: welcome p50", job, dig("welcomeLatencyUs", "p50", scale=1e-3), "ms", False),
        (f"{label}: welcome p99", job, dig("welcomeLatencyUs", "p99", scale=1e-3), "ms", False),
        (f"{label}: Redis CPU per connect", job, dig("redisCpuPerConnectUs"), "µs", False),
    ]
for job, label in (("cl-fanout-r1", "cluster fan-out, --readers 1"), ("cl-fanout", "cluster fan-out")):
    FIGURES += [
        (f"{label}: delivery p50", job, dig("deliveryLatencyUs", "p50", scale=1e-3), "ms", False),
        (f"{label}: delivery p99", job, dig("deliveryLatencyUs", "p99", scale=1e-3), "ms", False),
        (f"{label}: POST p50", job, dig("postLatencyUs", "p50", scale=1e-3), "ms", False),
        (f"{label}: POST p99", job, dig("postLatencyUs", "p99", scale=1e-3), "ms", False),
        (f"{label}: nodes' CPU per frame", job, dig("cpuPerFrameUs"), "µs", False),
        (f"{label}: Redis CPU per frame", job, dig("redisCpuPerFrameUs"), "µs", False),
    ]
FIGURES += [
    ("cluster session sync: p50", "cl-session-sync", dig("latencyUs", "p50"), "µs", False),
    ("cluster session sync: p99", "cl-session-sync", dig("latencyUs", "p99"), "µs", False),
    ("cluster session sync: nodes' CPU per update", "cl-session-sync", dig("cpuPerUpdateUs"), "µs", False),
    ("cluster session sync: Redis CPU per update", "cl-session-sync", dig("redisCpuPerUpdateUs"), "µs", False),
]
for job, label, timing, tkey in (
    ("cl-kill-lease", "node kill, resume at the lease end", "lease end to all resumed", "leaseEndToAllResumedMs"),
    ("cl-kill-drop", "node kill, resume on the drop", "kill to all resumed", "killToAllResumedMs"),
    ("cl-kill-detached", "node kill, resume once detached", "first detached to all resumed", "firstDetachedToAllResumedMs"),
):
    FIGURES += [
        (f"{label}: {timing}", job, dig(tkey, scale=1e-3), "s", False),
        (f"{label}: messages owed", job, dig("messagesOwed"), "", False),
        (f"{label}: missed", job, dig("missed"), "", True),
        (f"{label}: duplicates", job, dig("duplicates"), "", True),
        (f"{label}: out of order", job, dig("outOfOrder"), "", True),
    ]
FIGURES += [
    ("node kill, resume at the lease end: kill to lease end", "cl-kill-lease", dig("killToLeaseEndMs"), "ms", False),
    ("node kill, resume on the drop: kill to sockets dropped", "cl-kill-drop", dig("killToSocketsDroppedMs"), "ms", False),
]


def bench_binary(name):
    """The newest release build of bench `name` (`load` is the load generator)."""
    found = [f for f in glob.glob(f"target/release/deps/{name}-*") if os.access(f, os.X_OK) and not f.endswith(".d")]
    if not found:
        sys.exit(f"no {name} bench: run `cargo bench --bench load --bench crash --no-run` first")
    return max(found, key=os.path.getmtime)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def run_one(job, args):
    """One run of a job: its JSON figures."""
    if job == "crash":
        cmd = [bench_binary("crash"), "--cycles", "20", "--json"]
    elif job == "registry":
        cmd = ["cargo", "bench", "--bench", "registry"]
    else:
        cmd = [bench_binary("load"), *args, "--json", "--quiet"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    if job == "registry":
        return criterion_medians()
    return json.loads(out.stdout.strip().splitlines()[-1])


def criterion_medians():
    """Criterion's median estimate (ns) of every benchmark of the registry bench, by
    `<group>/<function>` as the bench names them (the directories' names replace some
    characters; the `benchmark.json` beside each estimate has the real ones)."""
    got = {}
    for f in glob.glob("target/criterion/*/*/new/benchmark.json"):
        with open(f) as fh:
            b = json.load(fh)
        with open(os.path.join(os.path.dirname(f), "estimates.json")) as fh:
            got[f"{b['group_id']}/{b['function_id']}"] = json.load(fh)["median"]["point_estimate"]
    return got


def cmd_run(o):
    os.makedirs(o.out, exist_ok=True)
    groups = o.only or list(GROUPS)
    log = open(os.path.join(o.out, "log.txt"), "a")

    def say(line):
        print(line, file=sys.stderr)
        log.write(line + "\n")
        log.flush()

    say(f"start {now():%Y-%m-%d %H:%M:%S} UTC, commit {git_head()}, load {loadavg()}")
    failures = 0
    for group in groups:
        for alternated in GROUPS[group]:
            rounds = max(r for _, _, r in alternated)
            for i in range(rounds):
                for job, args, runs in alternated:
                    if i >= runs:
                        continue
                    name = os.path.join(o.out, f"{job}-{i + 1}.json")
                    say(f"{now():%H:%M:%S} load {loadavg()}: {job} {i + 1}/{runs}: {' '.join(args or [job])}")
                    try:
                        d = run_one(job, args)
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                        failures += 1
                        say(f"  FAILED: {e}")
                        continue
                    with open(name, "w") as f:
                        json.dump(d, f)
    say(f"end {now():%Y-%m-%d %H:%M:%S} UTC, load {loadavg()}")
    figs = figures_of_dir(o.out)
    with open(os.path.join(o.out, "figures.json"), "w") as f:
        json.dump(figs, f, indent=1, ensure_ascii=False)
    print_figures(figs)
    return 1 if failures else 0


def git_head():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def figures_of_dir(d):
    runs = {}
    for f in sorted(glob.glob(os.path.join(d, "*-[0-9]*.json"))):
        job = os.path.basename(f).rsplit("-", 1)[0]
        with open(f) as fh:
            runs.setdefault(job, []).append(json.load(fh))
    figs = {}
    for label, job, get, unit, exact in FIGURES:
        vals = []
        for r in runs.get(job, []):
            try:
                v = get(r)
            except (KeyError, TypeError):
                v = None
            if v is not None:
                vals.append(v)
        if vals:
            figs[label] = {"value": statistics.median(vals), "runs": vals, "unit": unit}
    return figs


def load_figures(path):
    if os.path.isdir(path):
        f = os.path.join(path, "figures.json")
        if os.path.exists(f):
            with open(f) as fh:
                return json.load(fh)
        return figures_of_dir(path)
    with open(path) as fh:
        d = json.load(fh)
    return d.get("figures", d)


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_figures(figs):
    print("| figure | median | runs |")
    print("| --- | --- | --- |")
    for label, *_ in FIGURES:
        if label in figs:
            f = figs[label]
            print(f"| {label} | {fmt(f['value'])} {f['unit']} | {', '.join(fmt(v) for v in f['runs'])} |")


def cmd_figures(o):
    print_figures(load_figures(o.dir))
    return 0


HOST_FIGURE = "floor fan-out, --readers 1: floor CPU per frame"
TIMES = {"ns": -1, "µs": -1, "ms": -1, "s": -1, "/s": 1}


def cmd_compare(o):
    a, b = load_figures(o.a), load_figures(o.b)
    how = {label: h for label, *_, h in FIGURES}
    # The host's speed: the floor's own CPU per frame, the same work in both runs. A figure of
    # time or rate divided by it (in the last column) shows what the host's speed explains.
    host = None
    if HOST_FIGURE in a and HOST_FIGURE in b and a[HOST_FIGURE]["value"] > 0:
        host = b[HOST_FIGURE]["value"] / a[HOST_FIGURE]["value"]
    within = outside = within_host = 0
    print(f"| figure | A | B | B ÷ A | within {o.tolerance:.0%} | B ÷ A over the host's speed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, *_ in FIGURES:
        if label not in a:
            continue
        va = a[label]["value"]
        unit = a[label].get("unit", "")
        vb = b[label]["value"] if label in b else None
        h = how[label]
        scaled = ""
        if vb is None:
            ok, ratio = False, "–"
        elif isinstance(h, tuple):
            ok, ratio = vb <= h[1], f"goal {h[0]} {fmt(h[1])} {unit}"
        elif h:
            ok, ratio = vb == va, ("=" if vb == va else "≠")
        elif va == 0:
            ok, ratio = vb == 0, ("=" if vb == 0 else "≠")
        else:
            r = vb / va
            ok, ratio = abs(r - 1) <= o.tolerance, f"{r:.2f}"
            if host and unit in TIMES and not ok:
                rs = r * host ** TIMES[unit]
                scaled = f"{rs:.2f}" + (" (within)" if abs(rs - 1) <= o.tolerance else "")
                within_host += abs(rs - 1) <= o.tolerance
        within += ok
        outside += not ok
        print(f"| {label} | {fmt(va)} {unit} | {fmt(vb)} {unit} | {ratio} | {'yes' if ok else '**no**'} | {scaled} |")
    print(f"\n{within} of {within + outside} figures within {o.tolerance:.0%}; {outside} outside")
    if host:
        print(f"the host's speed: the floor's CPU per frame is {host:.2f} times the table's; of the"
              f" {outside} outside, {within_host} are within {o.tolerance:.0%} once that is taken out"
              f" (time × {1 / host:.2f}, rates × {host:.2f})")
    return 1 if outside else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the tables' commands")
    r.add_argument("--out", required=True, help="directory for the runs' JSON and log")
    r.add_argument("--only", choices=list(GROUPS), action="append", help="only these groups")
    f = sub.add_parser("figures", help="print the figures of a run")
    f.add_argument("dir")
    c = sub.add_parser("compare", help="B against A, figure by figure")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tolerance", type=float, default=0.25)
    o = ap.parse_args()
    sys.exit({"run": cmd_run, "figures": cmd_figures, "compare": cmd_compare}[o.cmd](o))


if __name__ == "__main__":
    main()
