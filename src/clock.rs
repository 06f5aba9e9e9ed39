//! The server's clocks: the process's monotonic uptime (keepalive counts in
//! it), and the wall clock, in milliseconds (what frames and rows carry) or
//! in seconds (as tokens count expiry).

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since this process first asked (monotonic, unlike the wall
/// clock).
pub fn uptime_ms() -> u64 {
    STARTED.elapsed().as_millis() as u64
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The wall clock in Unix seconds.
pub fn unix_now() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or_default()
}
