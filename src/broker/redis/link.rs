//! Whether Redis answers: the `realtide_redis_up` gauge and the log lines
//! an operator reads, each said once per change (and, while Redis stays
//! down, again every half minute, with its address).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use prometheus::IntGauge;

use crate::clock::now_ms;

/// How often a Redis that stays unreachable is reported again.
const REMIND_EVERY_MS: i64 = 30_000;

pub(super) struct Link {
    /// The Redis url, its password hidden.
    url: String,
    up: AtomicBool,
    /// Whether Redis has answered since the node started: before that,
    /// coming up is joining, not being "reachable again".
    ever_up: AtomicBool,
    /// When Redis was last said to be down (ms since the Unix epoch; 0: not yet).
    warned_at: AtomicI64,
    gauge: IntGauge,
}

impl Link {
    pub(super) fn new(url: &str, gauge: IntGauge) -> Link {
        Link {
            url: url.to_string(),
            up: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            warned_at: AtomicI64::new(0),
            gauge,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.gauge.set(i64::from(up));
        if was == up {
            return;
        }
        if !up {
            tracing::warn!(redis = %self.url, "Redis is unreachable");
            self.warned_at.store(now_ms(), Ordering::Relaxed);
        } else if self.ever_up.swap(true, Ordering::AcqRel) {
            tracing::info!(redis = %self.url, "Redis is reachable again");
        } else {
            tracing::info!(redis = %self.url, "joined the cluster through Redis");
        }
    }

    /// Redis did not answer (again): said at once the first time, then
    /// every [`REMIND_EVERY_MS`] while it stays so.
    pub(super) fn still_down(&self, error: Option<&redis::RedisError>) {
        let now = now_ms();
        let last = self.warned_at.load(Ordering::Relaxed);
        if last != 0 && now - last < REMIND_EVERY_MS {
            return;
        }
        self.warned_at.store(now, Ordering::Relaxed);
        let error = error.map_or_else(|| "no answer in time".to_string(), ToString::to_string);
        let joined = self.ever_up.load(Ordering::Acquire);
        match joined {
            true => {
                tracing::warn!(redis = %self.url, %error, "Redis still does not answer; retrying")
            }
            false => {
                tracing::warn!(redis = %self.url, %error, "Redis does not answer yet; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_answer_is_joining_and_the_gauge_follows() {
        let gauge = IntGauge::new("up", "up").unwrap();
        let link = Link::new("redis://h:6379", gauge.clone());
        assert!(!link.is_up());
        link.set_up(true);
        assert!(link.is_up() && link.ever_up.load(Ordering::Acquire));
        assert_eq!(gauge.get(), 1);
        link.set_up(false);
        assert_eq!(gauge.get(), 0);
        assert_ne!(link.warned_at.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_redis_that_stays_down_is_reported_again_only_after_a_while() {
        let link = Link::new("redis://h:6379", IntGauge::new("up", "up").unwrap());
        link.still_down(None);
        let first = link.warned_at.load(Ordering::Relaxed);
        assert_ne!(first, 0);
        link.still_down(None);
        assert_eq!(link.warned_at.load(Ordering::Relaxed), first);
        link.warned_at
            .store(first - REMIND_EVERY_MS, Ordering::Relaxed);
        link.still_down(None);
        assert!(link.warned_at.load(Ordering::Relaxed) >= first);
    }
}
