//! Milliseconds since the listener started, in one `u64` per timestamp, so that a
//! connection's timestamps fit in atomics. 0 means "not yet".

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Now, never 0.
pub fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64 + 1
}

/// The instant of a [`now_ms`] timestamp.
pub fn instant(ms: u64) -> Instant {
    base() + Duration::from_millis(ms.saturating_sub(1))
}
