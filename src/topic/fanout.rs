//! Fan-out in batches. A topic queues the events of one turn of its mailbox
//! and sends them together when the turn ends: each subscriber gets one
//! `send` carrying every event it wants, encoded once per spelling.
//!
//! Why: a delivery's cost is almost all the kernel's work for one `send`.
//! When a topic keeps up, a turn holds one event and nothing changes; when
//! it falls behind, publishes wait in its mailbox, the next turn takes them
//! all, and the cost per event falls just when the topic needs it to.
//!
//! [`SplitPolicy`] decides when a batch's sends take a second thread, and
//! [`Claims`] shares the subscribers out between the two.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::spellings::SpellingsOf;
use crate::changes::{Change, Filter};
use crate::outbox::messages::ConnId;
use crate::protocol::server::TopicFrame;
use crate::socket::put_text_frame;

/// Most events sent in one batch (a subscriber's share is a 64-bit mask).
pub const MAX_BATCH: usize = 64;

/// Who an event is for.
#[derive(Debug)]
pub enum Audience {
    Everyone,
    /// A publish: every subscriber, but its publisher only with `echo`.
    Publish {
        publisher: Option<ConnId>,
    },
    /// A table change: the subscribers whose filter lets it through.
    Change(Change),
}

impl Audience {
    fn includes(&self, conn: ConnId, echo: bool, filter: &Filter) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Publish { publisher } => echo || *publisher != Some(conn),
            Audience::Change(change) => change.visible_through(filter),
        }
    }
}

/// An event waiting for the end of the mailbox turn.
#[derive(Debug)]
pub struct PendingEvent {
    pub frame: TopicFrame,
    pub audience: Audience,
    /// When the topic accepted it, for the delivery lag.
    pub accepted: Instant,
}

/// One spelling's encoding of a batch.
struct Spelled {
    /// Its number among the topic's spellings.
    spelling: u8,
    /// Each event as a whole WebSocket frame.
    frames: Vec<Bytes>,
    /// All of them, for the (usual) subscriber who wants every event.
    whole: Option<Bytes>,
}

/// A batch of events being sent: encodes lazily, once per spelling.
pub struct Batch<'a> {
    events: &'a [PendingEvent],
    /// The topic's spellings, which subscribers name by number.
    spellings: SpellingsOf<'a>,
    spelled: Vec<Spelled>,
    /// A subscriber's own pick of events, when it wants some but not all.
    picked: BytesMut,
}

impl<'a> Batch<'a> {
    pub fn new(events: &'a [PendingEvent], spellings: SpellingsOf<'a>) -> Batch<'a> {
        debug_assert!(events.len() <= MAX_BATCH);
        Batch {
            events,
            spellings,
            spelled: Vec::with_capacity(1),
            picked: BytesMut::new(),
        }
    }

    fn all(&self) -> u64 {
        u64::MAX >> (64 - self.events.len())
    }

    /// Which events (bit i: event i) a subscriber wants.
    pub fn wanted_by(&self, conn: ConnId, echo: bool, filter: &Filter) -> u64 {
        self.events
            .iter()
            .enumerate()
            .filter(|(_, event)| event.audience.includes(conn, echo, filter))
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    /// The wire bytes of the events in `wanted`, for a subscriber who
    /// spelled the topic as the topic's spelling number `spelling`.
    pub fn wire(&mut self, spelling: u8, wanted: u64) -> &[u8] {
        let all = self.all();
        let at = match self.spelled.iter().position(|s| s.spelling == spelling) {
            Some(at) => at,
            None => {
                let spelled_as = self.spellings.get(spelling);
                let frames = self
                    .events
                    .iter()
                    .map(|event| wire_frame(&event.frame.for_spelling(spelled_as)))
                    .collect();
                self.spelled.push(Spelled {
                    spelling,
                    frames,
                    whole: None,
                });
                self.spelled.len() - 1
            }
        };
        let spelled = &mut self.spelled[at];
        if wanted == all {
            return spelled
                .whole
                .get_or_insert_with(|| concat(spelled.frames.iter()));
        }
        let mut picked = spelled
            .frames
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted & (1 << i) != 0)
            .map(|(_, frame)| frame);
        if wanted.count_ones() == 1 {
            return picked.next().map_or(&[], |frame| &frame[..]);
        }
        self.picked.clear();
        for frame in picked {
            self.picked.extend_from_slice(frame);
        }
        &self.picked
    }
}

/// Whether a batch's sends take a second thread.
///
/// A topic's sends run on its arbiter's thread. While they keep that thread
/// busy most of the time, each event waits behind the one before, and the
/// wait grows steeply as the thread fills (as busy / (1 - busy)): at 1,000
/// subscribers and 100 events/s one thread was ~90% busy and p99 was three
/// times what one event takes. A second thread halves the work in line. A
/// topic that is not that busy keeps to one thread and leaves the other
/// core to everything else, and a very large one always takes two (one event
/// to 10,000 subscribers is ~90 ms of `send`s).
#[derive(Debug)]
pub struct SplitPolicy {
    always_at: u32,
    when_busy_at: u32,
    /// When the previous batch started.
    last_start: Option<Instant>,
    /// A moving average of one thread's share of time spent sending.
    busy: f64,
    splitting: bool,
}

impl SplitPolicy {
    /// Busier than this, a topic splits its batches...
    const SPLIT_ABOVE: f64 = 0.6;
    /// ...until it is calmer than this (apart, so it does not flap).
    const JOIN_BELOW: f64 = 0.4;
    /// The weight of the latest batch in the average.
    const WEIGHT: f64 = 0.25;

    pub fn new(always_at: usize, when_busy_at: usize) -> SplitPolicy {
        let at_most = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        SplitPolicy {
            always_at: at_most(always_at),
            when_busy_at: at_most(when_busy_at),
            last_start: None,
            busy: 0.0,
            splitting: false,
        }
    }

    /// Whether the next batch, to this many subscribers, takes two threads.
    pub fn splits(&self, subscribers: usize) -> bool {
        let subscribers = u32::try_from(subscribers).unwrap_or(u32::MAX);
        subscribers >= self.always_at || (subscribers >= self.when_busy_at && self.splitting)
    }

    /// Counts a batch that started at `started` and took `took` on each of
    /// `threads` threads.
    pub fn record(&mut self, started: Instant, took: Duration, threads: u32) {
        if let Some(last) = self.last_start {
            let since = started.saturating_duration_since(last).as_secs_f64();
            let work = took.as_secs_f64() * f64::from(threads);
            // Batches back to back (a long queue) count as fully busy.
            let share = if since > 0.0 {
                (work / since).min(1.0)
            } else {
                1.0
            };
            self.busy += (share - self.busy) * Self::WEIGHT;
        }
        self.last_start = Some(started);
        if self.busy > Self::SPLIT_ABOVE {
            self.splitting = true;
        } else if self.busy < Self::JOIN_BELOW {
            self.splitting = false;
        }
    }
}

/// Which end of a batch's subscriber list a thread takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Front,
    Back,
}

/// Shares a batch's subscribers out between two threads in small runs: one
/// takes from the front, the other from the back, until they meet.
///
/// Why not two fixed halves: the second thread is new and its core may be
/// busy (on a shared machine, with the very clients it writes to), so it
/// can start late. With fixed halves its half waited for it; here the first
/// thread goes on into whatever the second has not taken, so a late start
/// costs nothing and an absent one only the split's benefit.
#[derive(Debug)]
pub struct Claims {
    /// The next unclaimed index from the front (low 32 bits) and one past
    /// the next from the back (high 32), in one word so a claim is one
    /// compare-and-swap.
    bounds: AtomicU64,
}

impl Claims {
    /// Subscribers per claim: ~30 `send`s, a fraction of a millisecond, so
    /// the two threads meet closely and rarely touch the shared word.
    const RUN: u64 = 32;

    pub fn new(len: usize) -> Claims {
        let len = u64::try_from(len)
            .unwrap_or(u64::MAX)
            .min(u64::from(u32::MAX));
        Claims {
            bounds: AtomicU64::new(len << 32),
        }
    }

    /// The next run of indexes from `end`, or `None` once every index is
    /// taken.
    pub fn take(&self, end: End) -> Option<Range<usize>> {
        let mut current = self.bounds.load(Ordering::Relaxed);
        loop {
            let (front, back) = (current & u64::from(u32::MAX), current >> 32);
            if front >= back {
                return None;
            }
            let run = Self::RUN.min(back - front);
            let (next, taken) = match end {
                End::Front => (current + run, front..front + run),
                End::Back => (current - (run << 32), back - run..back),
            };
            match self.bounds.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(taken.start as usize..taken.end as usize),
                Err(seen) => current = seen,
            }
        }
    }
}

fn wire_frame(payload: &ByteString) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_text_frame(&mut out, payload.as_bytes());
    out.freeze()
}

fn concat<'b>(frames: impl Iterator<Item = &'b Bytes>) -> Bytes {
    let mut frames = frames.peekable();
    let first = frames.next().cloned().unwrap_or_default();
    if frames.peek().is_none() {
        return first;
    }
    let mut out = BytesMut::from(&first[..]);
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::protocol::server::TopicFrame;
    use crate::topic::spellings::Spellings;
    use serde_json::json;

    fn event(seq: u64, audience: Audience) -> PendingEvent {
        PendingEvent {
            frame: TopicFrame::event("e", &json!(seq), None, 0, seq, None),
            audience,
            accepted: Instant::now(),
        }
    }

    fn payloads(mut wire: &[u8]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            assert_eq!(wire[0], 0x81, "a final text frame");
            let len = wire[1] as usize;
            out.push(serde_json::from_slice(&wire[2..2 + len]).unwrap());
            wire = &wire[2 + len..];
        }
        out
    }

    #[test]
    fn a_subscriber_gets_the_events_it_wants_in_order_and_spelled_its_way() {
        let (me, other) = (ConnId(1), ConnId(2));
        let events = [
            event(1, Audience::Everyone),
            event(
                2,
                Audience::Publish {
                    publisher: Some(me),
                },
            ),
            event(3, Audience::Everyone),
        ];
        let canonical: Arc<str> = "chat/a".into();
        let mut spellings = Spellings::default();
        let upper = spellings.number(&canonical, &"Chat/A".into());
        let lower = spellings.number(&canonical, &canonical);
        let mut batch = Batch::new(&events, spellings.of(&canonical));

        let everything = batch.wanted_by(other, false, &Filter::default());
        assert_eq!(everything, 0b111);
        let wire = payloads(batch.wire(upper, everything));
        assert_eq!(
            wire.iter().map(|f| f["seq"].clone()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(wire.iter().all(|f| f["topic"] == "Chat/A"));

        let no_echo = batch.wanted_by(me, false, &Filter::default());
        assert_eq!(no_echo, 0b101, "no echo of its own publish");
        let wire = payloads(batch.wire(lower, no_echo));
        assert_eq!(
            wire.iter().map(|f| f["seq"].clone()).collect::<Vec<_>>(),
            [1, 3]
        );
        assert!(wire.iter().all(|f| f["topic"] == "chat/a"));

        assert_eq!(batch.wanted_by(me, true, &Filter::default()), 0b111);
    }

    /// Feeds `policy` batches every `every`, each taking `one_thread` of
    /// sending on one thread (half that on each of two when split), and
    /// answers whether each batch was split.
    fn run(
        policy: &mut SplitPolicy,
        subscribers: usize,
        batches: usize,
        every: Duration,
        one_thread: Duration,
        start: Instant,
    ) -> Vec<bool> {
        (0..batches)
            .map(|i| {
                let split = policy.splits(subscribers);
                let threads = if split { 2 } else { 1 };
                policy.record(start + every * i as u32, one_thread / threads, threads);
                split
            })
            .collect()
    }

    #[test]
    fn a_topic_whose_sends_keep_a_thread_busy_takes_a_second_thread_and_keeps_it() {
        let mut policy = SplitPolicy::new(4096, 256);
        let ms = Duration::from_millis;
        let split = run(&mut policy, 1000, 20, ms(10), ms(9), Instant::now());
        assert!(!split[0], "one busy batch proves nothing");
        assert!(split[5..].iter().all(|s| *s), "{split:?}");
    }

    #[test]
    fn a_topic_with_room_to_spare_keeps_to_one_thread() {
        let mut policy = SplitPolicy::new(4096, 256);
        let ms = Duration::from_millis;
        let split = run(&mut policy, 1000, 50, ms(20), ms(7), Instant::now());
        assert!(split.iter().all(|s| !s), "{split:?}");
    }

    #[test]
    fn a_busy_topic_that_calms_down_goes_back_to_one_thread() {
        let mut policy = SplitPolicy::new(4096, 256);
        let ms = Duration::from_millis;
        let start = Instant::now();
        let busy = run(&mut policy, 1000, 20, ms(10), ms(9), start);
        assert!(busy[19]);
        let calm = run(&mut policy, 1000, 20, ms(100), ms(9), start + ms(200));
        assert!(!calm[19], "{calm:?}");
    }

    #[test]
    fn two_ends_share_every_subscriber_once_and_one_end_alone_takes_all() {
        let claims = Claims::new(100);
        let mut seen = Vec::new();
        let mut ends = [End::Front, End::Back, End::Back].into_iter().cycle();
        while let Some(run) = claims.take(ends.next().unwrap()) {
            seen.extend(run);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());

        let alone = Claims::new(70);
        let runs: Vec<_> = std::iter::from_fn(|| alone.take(End::Front)).collect();
        assert_eq!(runs, [0..32, 32..64, 64..70]);
        assert_eq!(Claims::new(0).take(End::Back), None);
    }

    #[test]
    fn two_threads_claiming_at_once_never_take_the_same_subscriber() {
        let claims = Claims::new(100_000);
        let take_all = |end| std::iter::from_fn(|| claims.take(end)).collect::<Vec<_>>();
        let (front, back) = std::thread::scope(|scope| {
            let back = scope.spawn(|| take_all(End::Back));
            (take_all(End::Front), back.join().unwrap())
        });
        let mut seen: Vec<usize> = front.into_iter().chain(back).flatten().collect();
        seen.sort_unstable();
        assert_eq!(seen.len(), 100_000);
        assert!(seen.iter().enumerate().all(|(i, s)| i == *s));
    }

    #[test]
    fn small_topics_never_split_and_very_large_ones_always_do() {
        let ms = Duration::from_millis;
        let mut small = SplitPolicy::new(4096, 256);
        let split = run(&mut small, 255, 20, ms(1), ms(1), Instant::now());
        assert!(split.iter().all(|s| !s), "{split:?}");
        let mut large = SplitPolicy::new(4096, 256);
        let split = run(&mut large, 4096, 3, ms(1000), ms(1), Instant::now());
        assert!(split.iter().all(|s| *s), "{split:?}");
    }
}
