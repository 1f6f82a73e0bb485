//! The process's open-file budget: how many descriptors it may hold (the soft
//! `RLIMIT_NOFILE`) and about how many it holds.
//!
//! Both come from `/proc/self` (Linux): the limit from `/proc/self/limits`, the count from
//! the entries of `/proc/self/fd`. That keeps the crate free of `unsafe` and of a new
//! dependency; elsewhere the budget is unknown and nothing is shed for it.
//!
//! Counting `/proc/self/fd` costs about 3 µs a descriptor here (30 ms at 10,000, on the
//! accept loop), so it is done only when the running estimate comes within the reserve, and
//! there at most every 250 ms. The estimate is the last count, plus every accept since,
//! minus every socket closed since: an HTTP connection when it ends, an upgraded one when its
//! transport drops it ([`super::FdHold`]). Only descriptors other than sockets (the store's
//! files) escape it, and the count near the limit takes them in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Count again at most this often when the estimate is within the reserve.
const SAMPLE_NEAR: Duration = Duration::from_millis(250);

/// The soft limit on open files, if the platform says.
pub fn soft_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_limit(&text)
}

fn parse_soft_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

/// Descriptors open now, if the platform says. Fails (None) when no descriptor is left to
/// read the directory with.
pub fn open_count() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory being read is one of the entries.
    Some(dir.count().saturating_sub(1))
}

/// Descriptors kept free for what must keep working near the limit: a tenth of the limit,
/// at least 16 and at most 1024.
pub fn reserve_for(limit: usize) -> usize {
    (limit / 10).clamp(16, 1024)
}

pub struct FdBudget {
    /// 0: unknown (nothing is shed for files).
    limit: AtomicUsize,
    open: AtomicUsize,
    sampled: Mutex<Option<Instant>>,
}

impl FdBudget {
    pub fn new() -> FdBudget {
        let budget = FdBudget {
            limit: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            sampled: Mutex::new(None),
        };
        budget.sample();
        budget
    }

    /// The limit, or None if unknown.
    pub fn limit(&self) -> Option<usize> {
        Some(self.limit.load(Ordering::Relaxed)).filter(|l| *l != 0)
    }

    /// The current estimate of open descriptors.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many connections to shed in one go once the reserve is entered.
    pub fn shed_step(&self) -> usize {
        self.limit().map_or(1, |l| (reserve_for(l) / 4).max(1))
    }

    /// Counts one more descriptor (an accepted socket). Returns how many descriptors to free
    /// when the process is within the reserve: enough to get back out of it, and a quarter
    /// of the reserve more so that the next accepts do not land in it again at once.
    pub fn opened(&self) -> Option<usize> {
        let estimate = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.limit()?;
        let threshold = limit.saturating_sub(reserve_for(limit));
        if estimate < threshold {
            return None;
        }
        let open = self.sample_if_older(SAMPLE_NEAR).unwrap_or(estimate);
        (open >= threshold).then(|| open - threshold + self.shed_step())
    }

    /// One descriptor fewer (a socket closed).
    pub fn closed(&self) {
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Counts now (after accept failed for want of descriptors, say).
    pub fn sample(&self) -> usize {
        let mut last = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
        self.sample_locked(&mut last)
    }

    fn sample_if_older(&self, every: Duration) -> Option<usize> {
        let mut last = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        Some(self.sample_locked(&mut last))
    }

    fn sample_locked(&self, last: &mut Option<Instant>) -> usize {
        *last = Some(Instant::now());
        // Reading the limit needs a descriptor too: when none is left, the last one read
        // stands.
        if let Some(limit) = soft_limit() {
            self.limit.store(limit, Ordering::Relaxed);
        }
        let Some(limit) = self.limit() else {
            return self.open();
        };
        // No descriptor left to count with: as good as at the limit.
        let open = open_count().unwrap_or(limit);
        self.open.store(open, Ordering::Relaxed);
        open
    }
}

impl Default for FdBudget {
    fn default() -> Self {
        FdBudget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            256                  4096                 files     \n";
        assert_eq!(parse_soft_limit(text), Some(256));
        let unlimited = text.replace("256   ", "unlimited");
        assert_eq!(parse_soft_limit(&unlimited), Some(usize::MAX));
        assert_eq!(parse_soft_limit("Max cpu time 1 1 s\n"), None);
    }

    #[test]
    fn the_reserve_is_a_tenth_within_bounds() {
        assert_eq!(reserve_for(64), 16);
        assert_eq!(reserve_for(256), 25);
        assert_eq!(reserve_for(1024), 102);
        assert_eq!(reserve_for(20_000), 1024);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn counts_this_process() {
        let before = open_count().unwrap();
        let f = std::fs::File::open("/proc/self/limits").unwrap();
        assert!(
            open_count().unwrap() > before.saturating_sub(8),
            "counts something"
        );
        drop(f);
        assert!(soft_limit().unwrap() > 0);
    }
}
