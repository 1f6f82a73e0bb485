//! Counters for `/metrics` (Prometheus text format) and `/v1/stats`.
//!
//! Plain atomics: every hot-path update is one relaxed `fetch_add`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

/// A gauge to render: name, help, and (labels, value) series.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

#[derive(Default)]
pub struct Metrics {
    pub connects: AtomicU64,
    pub auth_failures: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub rate_limited: AtomicU64,
    pub bad_frames: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub resumes: AtomicU64,
    pub http_requests: AtomicU64,
    /// Sum and count of finished connection durations, for `avgConnectionDuration`.
    pub closed_duration_ms: AtomicU64,
    pub closed_count: AtomicU64,
    disconnects: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn disconnect(&self, code: u16) {
        *lock(&self.disconnects).entry(code).or_default() += 1;
    }

    pub fn connection_closed(&self, duration_ms: i64) {
        self.closed_duration_ms
            .fetch_add(duration_ms.max(0) as u64, Ordering::Relaxed);
        self.closed_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the counters plus the gauges the caller passes in.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "tether_connects_total",
                "WebSocket and SSE connections that became Active",
                &self.connects,
            ),
            (
                "tether_auth_failures_total",
                "Connections refused for their credential",
                &self.auth_failures,
            ),
            (
                "tether_frames_in_total",
                "Client frames received",
                &self.frames_in,
            ),
            (
                "tether_frames_out_total",
                "Frames sent to clients",
                &self.frames_out,
            ),
            (
                "tether_rate_limited_total",
                "Client frames refused by the rate limit",
                &self.rate_limited,
            ),
            (
                "tether_bad_frames_total",
                "Client frames refused as malformed",
                &self.bad_frames,
            ),
            (
                "tether_messages_delivered_total",
                "message and session.updated frames assigned to connections",
                &self.messages_delivered,
            ),
            (
                "tether_resumes_total",
                "Connections resumed from an earlier one",
                &self.resumes,
            ),
            (
                "tether_http_requests_total",
                "HTTP API requests",
                &self.http_requests,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP tether_disconnects_total Connections closed, by close code\n# TYPE tether_disconnects_total counter");
        for (code, n) in lock(&self.disconnects).iter() {
            let _ = writeln!(out, "tether_disconnects_total{{code=\"{code}\"}} {n}");
        }
        for (name, help, series) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

/// Resident set size of this process in bytes (Linux), 0 where unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
