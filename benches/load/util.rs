//! Small helpers: errors, the shared clock, JWT minting, URL encoding, /proc
//! readings, HDR histogram (de)serialization and the progress line.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors are plain messages: every failure ends the run with a sentence.
pub type R<T> = Result<T, String>;

pub trait Ctx<T> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

// ---------------------------------------------------------------- clock

static EPOCH_UNIX_NS: OnceLock<u64> = OnceLock::new();

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Sets the shared epoch (the parent's start; workers get the parent's value so
/// that timestamps carried in messages mean the same in every process).
pub fn set_epoch(ns: u64) {
    let _ = EPOCH_UNIX_NS.set(ns);
}

pub fn epoch_unix_ns() -> u64 {
    *EPOCH_UNIX_NS.get_or_init(unix_ns)
}

/// Nanoseconds since the shared epoch (wall clock, so comparable across the
/// generator's processes on this machine).
pub fn now_ns() -> u64 {
    unix_ns().saturating_sub(epoch_unix_ns())
}

/// Milliseconds since the Unix epoch of an RFC 3339 time in UTC as the server writes them
/// (`2026-11-21T23:59:01.123Z`; fewer or no fraction digits, and `+00:00`, also read).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let body = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = body.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let ms: i64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse().ok()?
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Nanoseconds since the shared epoch of a Unix time in milliseconds (negative before it).
pub fn unix_ms_to_epoch_ns(ms: i64) -> i64 {
    ms * 1_000_000 - epoch_unix_ns() as i64
}

// ---------------------------------------------------------------- JWT

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

pub fn mint_jwt(secret: &str, sub: &str, ttl_secs: u64) -> R<String> {
    let now = unix_ns() / 1_000_000_000;
    let claims = Claims {
        sub,
        iat: now,
        exp: now + ttl_secs,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .ctx("minting a JWT")
}

// ---------------------------------------------------------------- URLs

/// Percent-encodes a query value (everything but RFC 3986 unreserved bytes).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------- /proc

/// Resident set size of a process in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&text)
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14, 15).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text)
}

pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11, stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that fails).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(100)
    })
}

/// (soft, hard) limits on open files of this process, from /proc/self/limits.
pub fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |s: &str| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    };
    Some((parse(it.next()?)?, parse(it.next()?)?))
}

// ---------------------------------------------------------------- histograms

/// Latency histogram in microseconds, 1 us .. 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing a histogram into memory");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn hist_from_b64(s: &str) -> R<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .ctx("decoding a worker's histogram")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("reading a worker's histogram: {e:?}"))?;
    Ok(h)
}

/// Percentiles of a latency histogram as JSON (microseconds).
pub fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// "p50 1.2 ms, p99 3.4 ms, max 9.9 ms (n=1000)"
pub fn hist_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_string();
    }
    format!(
        "p50 {}, p90 {}, p99 {}, max {} (n={})",
        fmt_us(h.value_at_quantile(0.5)),
        fmt_us(h.value_at_quantile(0.9)),
        fmt_us(h.value_at_quantile(0.99)),
        fmt_us(h.max()),
        h.len()
    )
}

pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} us")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

pub fn fmt_bytes(b: f64) -> String {
    let a = b.abs();
    if a < 1024.0 {
        format!("{b:.0} B")
    } else if a < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if a < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

// ---------------------------------------------------------------- progress

/// A progress reporter on stderr: a one-line bar redrawn with `\r` on a
/// terminal, else one plain line per second. Runs on its own thread so it keeps
/// going whatever the runtime does; stops when dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start<F>(enabled: bool, label: &str, total: u64, f: F) -> Progress
    where
        F: Fn() -> (u64, String) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled {
            return Progress { stop, handle: None };
        }
        let tty = std::io::stderr().is_terminal();
        let label = label.to_string();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let tick = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            let mut next = started + tick;
            loop {
                // Sleep in small steps so that finishing is quick.
                while std::time::Instant::now() < next {
                    if stop2.load(Ordering::Relaxed) {
                        if tty {
                            eprint!("\r\x1b[K");
                            let _ = std::io::stderr().flush();
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                next += tick;
                let (done, extra) = f();
                let secs = started.elapsed().as_secs_f64();
                if tty {
                    let width = 30usize;
                    let frac = if total > 0 {
                        (done as f64 / total as f64).min(1.0)
                    } else {
                        0.0
                    };
                    let filled = (frac * width as f64).round() as usize;
                    eprint!(
                        "\r\x1b[K{label} [{}{}] {done}/{total} {extra} {secs:.0}s",
                        "#".repeat(filled),
                        "-".repeat(width - filled)
                    );
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{label}: {done}/{total} {extra} ({secs:.0}s)");
                }
            }
        });
        Progress {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Checks of the pure helpers, run by the `selftest` scenario (a bench
/// target with `harness = false` has no `#[test]`s).
pub fn self_check() -> R<()> {
    let stat = "1234 (te st) (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
    check(parse_stat_ticks(stat) == Some(300), "parse_stat_ticks")?;
    check(
        parse_vmrss("Name: x\nVmRSS:\t  2048 kB\n") == Some(2048 * 1024),
        "parse_vmrss",
    )?;
    let mut h = new_hist();
    for v in 1..1000 {
        record_us(&mut h, v);
    }
    let back = hist_from_b64(&hist_to_b64(&h))?;
    check(
        back.len() == h.len() && back.max() == h.max(),
        "histogram roundtrip",
    )?;
    check(pct("a b/c=d") == "a%20b%2Fc%3Dd", "pct")?;
    check(pct("abc-_.~") == "abc-_.~", "pct unreserved")?;
    check(
        parse_rfc3339_ms("1970-01-01T00:00:01.5Z") == Some(1500),
        "rfc3339 epoch",
    )?;
    check(
        parse_rfc3339_ms("2026-11-21T23:59:01.123Z") == Some(1_795_305_541_123),
        "rfc3339",
    )?;
    check(
        parse_rfc3339_ms("2000-03-01T00:00:00+00:00") == Some(951_868_800_000),
        "rfc3339 leap year",
    )?;
    let tok = mint_jwt("s3cret", "u1", 60)?;
    check(tok.split('.').count() == 3, "jwt shape")?;
    Ok(())
}

pub fn check(ok: bool, what: &str) -> R<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("self-check failed: {what}"))
    }
}
