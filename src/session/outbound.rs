//! The way out to one socket: the [`Outbox`] that topics write frames into
//! directly, and the [`OutboxStream`] that turns them into the socket's bytes.
//!
//! Why topics do not message the session actor per frame: a fan-out to
//! thousands of sessions would cost an actor message (an allocation, a
//! mailbox, a wake-up of the actor) per delivery. Instead a topic pushes the
//! shared frame into the outbox and wakes the socket's writer; the writer
//! drains every waiting frame into one buffer, so frames that pile up for one
//! socket leave in one write.
//!
//! The outbox also owns the connection's subscriptions (canonical topic ->
//! current subscription id and spelling), so the writer can drop frames of a
//! subscription that ended or was replaced before they leave.
//!
//! Backpressure: when a client stops reading, actix-http stops polling the
//! response stream, so neither the writer nor the session actor runs. The
//! topics notice instead: they reserve bytes before each frame and, past
//! `--max-pending-bytes` unsent, mark the outbox slow and stop sending. The
//! writer then sends a close frame (4008) ahead of everything still queued,
//! which it discards.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use futures_util::task::{ArcWake, AtomicWaker, waker_ref};
use prometheus::IntCounter;

use super::messages::FrameKind;
use crate::changes::Filter;

/// Bytes a WebSocket frame of `payload` bytes takes on the wire (server frames are unmasked).
pub fn frame_len(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as u64
}

/// Appends a text frame (FIN, unmasked) to `out`.
fn encode_text(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.put_u8(0x81);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=65_535 => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(4 + reason.len());
    frame.put_u8(0x88); // FIN + close opcode
    frame.put_u8((2 + reason.len()) as u8);
    frame.put_u16(code);
    frame.put_slice(reason.as_bytes());
    frame.freeze()
}

/// One of the connection's subscriptions.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Frames carry the id of the subscription they belong to; older ones are dropped.
    pub id: u64,
    /// The topic as the client spelled it last.
    pub spelling: Arc<str>,
    /// Table topics: the client's own filter, to combine with a new token's.
    pub own_filter: Filter,
}

/// A frame waiting for the socket.
#[derive(Debug)]
struct Queued {
    topic: Arc<str>,
    kind: FrameKind,
    frame: ByteString,
}

#[derive(Debug, Default)]
struct Shared {
    frames: Vec<Queued>,
    subscriptions: HashMap<Arc<str>, Subscription>,
    /// Bumped on every change to `subscriptions`, so the writer may remember
    /// its last lookup across frames and polls.
    version: u64,
}

/// The writer's last subscription lookup: most frames in a row belong to the
/// same topic (the same `Arc`), so one comparison replaces a hash lookup.
#[derive(Debug, Default, Clone, Copy)]
struct LastLookup {
    topic: usize,
    sub_id: u64,
    version: u64,
    current: bool,
}

/// Shared by a session, the topics delivering to it, and its output stream.
#[derive(Debug)]
pub struct Outbox {
    limit: u64,
    queued: AtomicU64,
    flushed: AtomicU64,
    slow: AtomicBool,
    /// Set when the session sends its close frame: nothing may follow it.
    closing: AtomicBool,
    shared: Mutex<Shared>,
    /// The writer's waker: whoever queues a frame wakes it.
    writer: AtomicWaker,
    frames_out: IntCounter,
}

impl Outbox {
    pub fn new(limit: u64, frames_out: IntCounter) -> Arc<Self> {
        Arc::new(Outbox {
            limit,
            queued: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            slow: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            shared: Mutex::new(Shared::default()),
            writer: AtomicWaker::new(),
            frames_out,
        })
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock cannot leave it inconsistent: each
        // critical section is a single push, insert, remove or swap.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a frame of `payload` bytes as queued. Past the limit the
    /// outbox turns slow; the first caller to cross it gets `BecameSlow`.
    pub fn reserve(&self, payload: usize) -> Reserve {
        if self.slow.load(Ordering::Relaxed) {
            return Reserve::AlreadySlow;
        }
        let size = frame_len(payload);
        let queued = self.queued.fetch_add(size, Ordering::Relaxed) + size;
        let pending = queued.saturating_sub(self.flushed.load(Ordering::Relaxed));
        if pending <= self.limit {
            Reserve::Ok
        } else if self.slow.swap(true, Ordering::Relaxed) {
            Reserve::AlreadySlow
        } else {
            // Wake the writer so the 4008 close goes out as soon as it can.
            self.writer.wake();
            Reserve::BecameSlow
        }
    }

    /// Queues a frame from a topic, unless the client reads too slowly.
    pub fn deliver(&self, topic: Arc<str>, kind: FrameKind, frame: ByteString) -> Reserve {
        let reserved = self.reserve(frame.len());
        if reserved == Reserve::Ok {
            self.shared().frames.push(Queued { topic, kind, frame });
            self.writer.wake();
        }
        reserved
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Whether the session sent its close frame: nothing more goes out, and
    /// it stops when the client answers the close or after a linger.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.writer.wake();
    }

    /// Bytes accepted for the client and not yet handed to the HTTP layer.
    #[cfg(test)]
    fn pending(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.flushed.load(Ordering::Relaxed))
    }

    /// Gives back a reservation for a frame of `payload` bytes that was not sent.
    fn release(&self, payload: usize) {
        self.flushed
            .fetch_add(frame_len(payload), Ordering::Relaxed);
    }

    fn flushed(&self, bytes: usize) {
        self.flushed.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records a (new or replacing) subscription.
    pub fn subscribe(&self, topic: Arc<str>, subscription: Subscription) {
        let mut shared = self.shared();
        shared.version += 1;
        shared.subscriptions.insert(topic, subscription);
    }

    /// Ends a subscription; answers whether there was one.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        let mut shared = self.shared();
        shared.version += 1;
        shared.subscriptions.remove(topic).is_some()
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.shared().subscriptions.contains_key(topic)
    }

    /// Every subscription: canonical topic and spelling.
    pub fn subscriptions(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.shared()
            .subscriptions
            .iter()
            .map(|(topic, s)| (topic.clone(), s.spelling.clone()))
            .collect()
    }

    /// Every table subscription: topic, spelling and the client's own filter.
    pub fn table_filters(&self) -> Vec<(Arc<str>, Arc<str>, Filter)> {
        self.shared()
            .subscriptions
            .iter()
            .filter(|(topic, _)| !topic.contains('/'))
            .map(|(topic, s)| (topic.clone(), s.spelling.clone(), s.own_filter.clone()))
            .collect()
    }

    /// Ends every subscription; returns their topics.
    pub fn unsubscribe_all(&self) -> Vec<Arc<str>> {
        let mut shared = self.shared();
        shared.version += 1;
        shared
            .subscriptions
            .drain()
            .map(|(topic, _)| topic)
            .collect()
    }

    /// Moves every waiting frame that may still go out into `out`, encoded.
    /// `batch` is the writer's spare queue, swapped in so that no allocation
    /// is made per drain; `last` remembers the last subscription lookup.
    fn drain_into(&self, out: &mut BytesMut, batch: &mut Vec<Queued>, last: &mut LastLookup) {
        let mut shared = self.shared();
        std::mem::swap(&mut shared.frames, batch);
        let closing = self.closing.load(Ordering::Relaxed);
        let mut written = 0;
        for queued in batch.drain(..) {
            let mut current = |shared: &Shared, sub_id: u64| {
                let topic = Arc::as_ptr(&queued.topic) as *const u8 as usize;
                if last.topic == topic && last.sub_id == sub_id && last.version == shared.version {
                    return last.current;
                }
                let current = shared
                    .subscriptions
                    .get(&queued.topic)
                    .is_some_and(|s| s.id == sub_id);
                *last = LastLookup {
                    topic,
                    sub_id,
                    version: shared.version,
                    current,
                };
                current
            };
            let send = !closing
                && match queued.kind {
                    FrameKind::Reply => true,
                    FrameKind::Stream { sub_id } => current(&shared, sub_id),
                    FrameKind::Refusal { sub_id } => {
                        if current(&shared, sub_id) {
                            shared.version += 1;
                            shared.subscriptions.remove(&queued.topic);
                        }
                        true
                    }
                };
            if send {
                encode_text(out, queued.frame.as_bytes());
                written += 1;
            } else {
                self.release(queued.frame.len());
            }
        }
        // One update of the shared counter per drain, not per frame.
        self.frames_out.inc_by(written);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Ok,
    BecameSlow,
    AlreadySlow,
}

/// The socket's output: the session actor's own frames (`inner`: replies,
/// pings, close), then whatever the topics queued, in one chunk per poll.
/// Once the client is slow: a close frame with `close_code`, then the end.
pub struct OutboxStream<S> {
    inner: S,
    inner_done: bool,
    /// The waker `inner` is polled with: it notes that the session has work,
    /// so a wake-up for queued frames alone does not poll the session actor
    /// (its mailbox and timers) again.
    inner_wake: Arc<InnerWake>,
    outbox: Arc<Outbox>,
    close_code: u16,
    close_sent: bool,
    batch: Vec<Queued>,
    last: LastLookup,
}

impl<S> OutboxStream<S> {
    pub fn new(inner: S, outbox: Arc<Outbox>, close_code: u16) -> Self {
        OutboxStream {
            inner,
            inner_done: false,
            outbox,
            close_code,
            close_sent: false,
            batch: Vec::new(),
            last: LastLookup::default(),
            inner_wake: Arc::new(InnerWake {
                pending: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

struct InnerWake {
    pending: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for InnerWake {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.pending.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl<S, E> Stream for OutboxStream<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.outbox.writer.register(cx.waker());
        if this.outbox.is_slow() {
            if !this.close_sent {
                this.close_sent = true;
                return Poll::Ready(Some(Ok(close_frame(this.close_code, "slow consumer"))));
            }
            // Run the session to its end (it is stopping), sending nothing more.
            this.outbox.shared().frames.clear();
            loop {
                match Pin::new(&mut this.inner).poll_next(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    other => return other.map(|o| o.filter(|r| r.is_err())),
                }
            }
        }
        let mut out = BytesMut::new();
        // The session's own frames first: it runs while its stream is polled,
        // and an ack it writes must not trail the frames queued after it.
        this.inner_wake.task.register(cx.waker());
        if this.inner_wake.pending.swap(false, Ordering::AcqRel) {
            let waker = waker_ref(&this.inner_wake);
            let mut inner_cx = Context::from_waker(&waker);
            while !this.inner_done {
                match Pin::new(&mut this.inner).poll_next(&mut inner_cx) {
                    Poll::Ready(Some(Ok(bytes))) => out.extend_from_slice(&bytes),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.inner_done = true,
                    Poll::Pending => break,
                }
            }
        }
        if !this.inner_done {
            this.outbox
                .drain_into(&mut out, &mut this.batch, &mut this.last);
        }
        if !out.is_empty() {
            this.outbox.flushed(out.len());
            return Poll::Ready(Some(Ok(out.freeze())));
        }
        if this.inner_done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(limit: u64) -> Arc<Outbox> {
        Outbox::new(limit, IntCounter::new("t", "t").unwrap())
    }

    #[test]
    fn a_client_becomes_slow_once_past_the_limit_and_only_once() {
        let outbox = outbox(1000);
        assert_eq!(outbox.reserve(496), Reserve::Ok); // 500 on the wire
        assert_eq!(outbox.reserve(496), Reserve::Ok); // 1000: at the limit
        assert_eq!(outbox.pending(), 1000);
        assert_eq!(outbox.reserve(0), Reserve::BecameSlow);
        assert_eq!(outbox.reserve(0), Reserve::AlreadySlow);
        assert!(outbox.is_slow());
    }

    #[test]
    fn flushed_bytes_make_room() {
        let outbox = outbox(1000);
        assert_eq!(outbox.reserve(898), Reserve::Ok);
        outbox.flushed(902);
        assert_eq!(outbox.pending(), 0);
        assert_eq!(outbox.reserve(898), Reserve::Ok);
    }

    #[test]
    fn frame_lengths_include_the_header() {
        assert_eq!(frame_len(125), 127);
        assert_eq!(frame_len(126), 130);
        assert_eq!(frame_len(70_000), 70_010);
        for n in [0, 125, 126, 65_535, 65_536] {
            let mut out = BytesMut::new();
            encode_text(&mut out, &vec![b'x'; n]);
            assert_eq!(out.len() as u64, frame_len(n), "{n}");
        }
    }

    #[test]
    fn only_frames_of_current_subscriptions_go_out() {
        let outbox = outbox(1 << 20);
        let topic: Arc<str> = "a/b".into();
        let subscription = |id| Subscription {
            id,
            spelling: topic.clone(),
            own_filter: Filter::default(),
        };
        outbox.subscribe(topic.clone(), subscription(2));
        for (kind, text) in [
            (FrameKind::Stream { sub_id: 1 }, "old"),
            (FrameKind::Stream { sub_id: 2 }, "current"),
            (FrameKind::Reply, "ack"),
        ] {
            outbox.deliver(topic.clone(), kind, ByteString::from(text));
        }
        let (mut out, mut batch, mut last) = (BytesMut::new(), Vec::new(), LastLookup::default());
        outbox.drain_into(&mut out, &mut batch, &mut last);
        assert_eq!(&out[..], b"\x81\x07current\x81\x03ack");
        assert_eq!(
            outbox.pending(),
            14,
            "the dropped frame's bytes are given back; the rest await the writer"
        );

        outbox.deliver(
            topic.clone(),
            FrameKind::Refusal { sub_id: 2 },
            ByteString::from("no"),
        );
        let mut out = BytesMut::new();
        outbox.drain_into(&mut out, &mut batch, &mut last);
        assert_eq!(&out[..], b"\x81\x02no");
        assert!(
            !outbox.is_subscribed("a/b"),
            "a refusal ends the subscription"
        );
    }

    #[test]
    fn the_remembered_lookup_never_outlives_an_unsubscribe() {
        let outbox = outbox(1 << 20);
        let topic: Arc<str> = "a/b".into();
        let (mut out, mut batch, mut last) = (BytesMut::new(), Vec::new(), LastLookup::default());
        outbox.subscribe(
            topic.clone(),
            Subscription {
                id: 1,
                spelling: topic.clone(),
                own_filter: Filter::default(),
            },
        );
        outbox.deliver(
            topic.clone(),
            FrameKind::Stream { sub_id: 1 },
            ByteString::from("one"),
        );
        outbox.drain_into(&mut out, &mut batch, &mut last);
        assert_eq!(&out[..], b"\x81\x03one");
        outbox.unsubscribe("a/b");
        outbox.deliver(
            topic.clone(),
            FrameKind::Stream { sub_id: 1 },
            ByteString::from("two"),
        );
        let mut out = BytesMut::new();
        outbox.drain_into(&mut out, &mut batch, &mut last);
        assert!(
            out.is_empty(),
            "a frame of an ended subscription is dropped"
        );
    }
}
