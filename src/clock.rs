//! Clocks the keepalive sweep and the connections' outboxes share: the
//! process's monotonic uptime, and the wall clock as tokens count expiry.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since this process first asked (monotonic, unlike the wall
/// clock).
pub fn uptime_ms() -> u64 {
    STARTED.elapsed().as_millis() as u64
}

/// The wall clock in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
