//! The replay ring: a pub/sub topic's latest events, kept so that a client
//! that reconnects with `since` gets exactly what it missed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::server::TopicFrame;

#[derive(Debug)]
struct Kept {
    seq: u64,
    at: Instant,
    frame: TopicFrame,
}

/// The last `capacity` events, none older than `ttl`, in `seq` order.
#[derive(Debug)]
pub struct ReplayRing {
    capacity: usize,
    ttl: Duration,
    kept: VecDeque<Kept>,
}

impl ReplayRing {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ReplayRing {
            capacity,
            ttl,
            // Grown on the first event: most topics (one per user, say)
            // sit idle, and 64 kept frames cost several KiB each.
            kept: VecDeque::new(),
        }
    }

    /// How long an event stays replayable.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keeps an event; `seq` must be above every kept one.
    pub fn push(&mut self, seq: u64, frame: TopicFrame, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.kept.len() == self.capacity {
            self.kept.pop_front();
        }
        self.kept.push_back(Kept {
            seq,
            at: now,
            frame,
        });
    }

    /// Forgets every event (the topic lost continuity).
    pub fn clear(&mut self) {
        self.kept.clear();
    }

    /// Forgets events older than the ttl.
    pub fn prune(&mut self, now: Instant) {
        while let Some(oldest) = self.kept.front() {
            if now.saturating_duration_since(oldest.at) < self.ttl {
                break;
            }
            self.kept.pop_front();
        }
    }

    /// Every event after `since` when all of them are still kept (the topic's
    /// latest seq is `latest`), or `None` when some are gone.
    pub fn after(&mut self, since: u64, latest: u64, now: Instant) -> Option<Vec<TopicFrame>> {
        self.prune(now);
        if since > latest {
            return None;
        }
        if since == latest {
            return Some(Vec::new());
        }
        let first_kept = self.kept.front()?.seq;
        if first_kept > since + 1 {
            return None;
        }
        Some(
            self.kept
                .iter()
                .filter(|k| k.seq > since)
                .map(|k| k.frame.clone())
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(seq: u64) -> TopicFrame {
        TopicFrame::event("e", &json!(seq), None, 0, seq, None)
    }

    fn seqs(frames: Vec<TopicFrame>) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(&f.for_spelling("a/b")).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn returns_exactly_the_missed_events() {
        let now = Instant::now();
        let mut ring = ReplayRing::new(10, Duration::from_secs(60));
        for seq in 1..=5 {
            ring.push(seq, frame(seq), now);
        }
        assert_eq!(seqs(ring.after(2, 5, now).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(ring.after(0, 5, now).unwrap()), vec![1, 2, 3, 4, 5]);
        assert!(ring.after(5, 5, now).unwrap().is_empty());
        assert!(
            ring.after(6, 5, now).is_none(),
            "a seq from the future cannot resume"
        );
    }

    #[test]
    fn cannot_resume_past_what_the_capacity_kept() {
        let now = Instant::now();
        let mut ring = ReplayRing::new(3, Duration::from_secs(60));
        for seq in 1..=5 {
            ring.push(seq, frame(seq), now);
        }
        assert_eq!(ring.len(), 3);
        assert!(ring.after(1, 5, now).is_none(), "seq 2 is gone");
        assert_eq!(seqs(ring.after(2, 5, now).unwrap()), vec![3, 4, 5]);
    }

    #[test]
    fn forgets_events_past_the_ttl() {
        let start = Instant::now();
        let mut ring = ReplayRing::new(10, Duration::from_secs(60));
        ring.push(1, frame(1), start);
        ring.push(2, frame(2), start + Duration::from_secs(30));
        let later = start + Duration::from_secs(61);
        assert!(ring.after(0, 2, later).is_none());
        assert_eq!(seqs(ring.after(1, 2, later).unwrap()), vec![2]);
        assert_eq!(ring.len(), 1);
    }
}
