//! Hand-written SVG for `connect --plot`: the welcome latency percentile
//! curve and the server's RSS per connection as the count grows.

use hdrhistogram::Histogram;
use std::fmt::Write as _;

const W: f64 = 640.0;
const H: f64 = 300.0;
const ML: f64 = 70.0; // margins
const MR: f64 = 20.0;
const MT: f64 = 36.0;
const MB: f64 = 44.0;

struct Chart {
    out: String,
    y0: f64, // top of this chart in the document
}

impl Chart {
    fn new(y0: f64, title: &str, xlabel: &str, ylabel: &str) -> Chart {
        let mut out = String::new();
        let _ = writeln!(out, r##"<g transform="translate(0,{y0})">"##);
        let _ = writeln!(
            out,
            r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>"##
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"##,
            W / 2.0,
            esc(title)
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"##,
            ML + (W - ML - MR) / 2.0,
            H - 8.0,
            esc(xlabel)
        );
        let _ = writeln!(
            out,
            r##"<text x="16" y="{}" text-anchor="middle" font-size="12" transform="rotate(-90 16 {})">{}</text>"##,
            MT + (H - MT - MB) / 2.0,
            MT + (H - MT - MB) / 2.0,
            esc(ylabel)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{ML}" y="{MT}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            W - ML - MR,
            H - MT - MB
        );
        Chart { out, y0 }
    }

    fn px(&self, fx: f64) -> f64 {
        ML + fx * (W - ML - MR)
    }

    fn py(&self, fy: f64) -> f64 {
        H - MB - fy * (H - MT - MB)
    }

    fn xtick(&mut self, fx: f64, label: &str) {
        let x = self.px(fx);
        let _ = writeln!(
            self.out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            MT,
            H - MB,
            H - MB + 14.0,
            esc(label)
        );
    }

    fn ytick(&mut self, fy: f64, label: &str) {
        let y = self.py(fy);
        let _ = writeln!(
            self.out,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            W - MR,
            ML - 4.0,
            y + 4.0,
            esc(label)
        );
    }

    fn polyline(&mut self, pts: &[(f64, f64)], color: &str) {
        let mut p = String::new();
        for (fx, fy) in pts {
            let _ = write!(p, "{:.1},{:.1} ", self.px(*fx), self.py(*fy));
        }
        let _ = writeln!(
            self.out,
            r##"<polyline points="{p}" fill="none" stroke="{color}" stroke-width="2"/>"##
        );
        for (fx, fy) in pts.iter().filter(|_| pts.len() <= 40) {
            let _ = writeln!(
                self.out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##,
                self.px(*fx),
                self.py(*fy)
            );
        }
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(
            self.out,
            r##"<text x="{}" y="{}" font-size="11" fill="#555">{}</text>"##,
            ML + 8.0,
            MT + 16.0,
            esc(text)
        );
    }

    fn finish(mut self) -> String {
        let _ = self.y0;
        self.out.push_str("</g>\n");
        self.out
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound and tick step for 0..max.
fn nice(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= max {
            let top = m * mag;
            return (top, top / 5.0);
        }
    }
    (10.0 * mag, 2.0 * mag)
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Two charts in one SVG document.
/// `rss_samples`: (connections open, server RSS bytes), with the baseline RSS.
pub fn connect_plot(
    title: &str,
    latency_us: &Histogram<u64>,
    rss_base: u64,
    rss_samples: &[(u64, u64)],
) -> String {
    let mut doc = String::new();
    let _ = writeln!(
        doc,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" viewBox="0 0 {W} {}" font-family="sans-serif">"##,
        2.0 * H + 10.0,
        2.0 * H + 10.0
    );
    let _ = writeln!(doc, "<title>{}</title>", esc(title));

    // -- chart 1: latency by percentile; x = log10(1/(1-q)), 0 .. 5 (99.999%).
    let mut c = Chart::new(
        0.0,
        &format!("{title}: handshake-to-welcome latency"),
        "percentile",
        "latency (ms)",
    );
    const XMAX: f64 = 5.0;
    let mut pts: Vec<(f64, f64)> = Vec::new();
    if !latency_us.is_empty() {
        let mut max_ms: f64 = latency_us.max() as f64 / 1000.0;
        if max_ms <= 0.0 {
            max_ms = 0.001;
        }
        let (top, step) = nice(max_ms);
        let steps = 240;
        for i in 0..=steps {
            let x = XMAX * i as f64 / steps as f64;
            let q = (1.0 - 10f64.powf(-x)).min(1.0);
            let v = latency_us.value_at_quantile(q) as f64 / 1000.0;
            pts.push((x / XMAX, v / top));
            if q >= 1.0 - 1.0 / latency_us.len() as f64 {
                break; // beyond the data
            }
        }
        let mut t = 0.0;
        while t <= top + 1e-9 {
            c.ytick(t / top, &fmt_num(t));
            t += step;
        }
        c.note(&format!(
            "n={}  p50={:.2} ms  p99={:.2} ms  max={:.2} ms",
            latency_us.len(),
            latency_us.value_at_quantile(0.5) as f64 / 1000.0,
            latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            latency_us.max() as f64 / 1000.0
        ));
    } else {
        c.note("no samples");
    }
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        c.xtick(i as f64 / XMAX, label);
    }
    c.polyline(&pts, "#1f77b4");
    doc.push_str(&c.finish());

    // -- chart 2: RSS per connection vs connections open.
    let _ = writeln!(doc, r##"<g transform="translate(0,{})">"##, H + 10.0);
    let mut c = Chart::new(
        0.0,
        &format!("{title}: server RSS per connection"),
        "connections open",
        "(RSS - RSS before) / connections (KiB)",
    );
    let per: Vec<(f64, f64)> = rss_samples
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, rss)| {
            (
                *n as f64,
                (*rss as f64 - rss_base as f64) / *n as f64 / 1024.0,
            )
        })
        .collect();
    if per.is_empty() {
        c.note("no RSS samples (server pid unknown?)");
    } else {
        let xmax = per.iter().map(|p| p.0).fold(1.0, f64::max);
        let ymax = per.iter().map(|p| p.1).fold(0.0, f64::max);
        let ymin = per.iter().map(|p| p.1).fold(0.0, f64::min);
        let (xtop, xstep) = nice(xmax);
        let (ytop, ystep) = nice(ymax.max(ymin.abs()).max(0.001));
        let ybot = if ymin < 0.0 { -ytop } else { 0.0 };
        let span = ytop - ybot;
        let mut t = 0.0;
        while t <= xtop + 1e-9 {
            c.xtick(t / xtop, &fmt_num(t));
            t += xstep;
        }
        let mut t = ybot;
        while t <= ytop + 1e-9 {
            c.ytick((t - ybot) / span, &fmt_num(t));
            t += ystep;
        }
        let pts: Vec<(f64, f64)> = per
            .iter()
            .map(|(x, y)| (x / xtop, (y - ybot) / span))
            .collect();
        c.polyline(&pts, "#d62728");
        let last = per.last().expect("non-empty");
        c.note(&format!(
            "RSS before: {:.1} MiB; at {} connections: {:.2} KiB per connection",
            rss_base as f64 / 1048576.0,
            last.0,
            last.1
        ));
    }
    doc.push_str(&c.finish());
    doc.push_str("</g>\n</svg>\n");
    doc
}
