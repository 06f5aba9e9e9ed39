//! How a topic's events reach its subscribers: each event is queued for the
//! mailbox turn, and the turn's queue leaves as one batch (one `send` per
//! subscriber, encoded once per spelling), from one thread or, for a big or
//! busy topic, two ([`super::super::fanout`]). A subscriber whose reader is
//! too slow is dropped and its session told.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::prelude::*;
use bytestring::ByteString;

use crate::cache::prefetch;
use crate::clock::now_ms;
use crate::outbox::Reserve;
use crate::outbox::messages::{ConnId, Disconnect, FrameKind};
use crate::protocol::server::TopicFrame;
use crate::topic::fanout::{Audience, Batch, Claims, End, MAX_BATCH, PendingEvent};
use crate::topic::messages::SubscriberHandle;

use super::{Subscriber, TopicActor};

impl TopicActor {
    /// Sends `frame` to one client unless it reads too slowly; a client that
    /// crosses its pending-bytes limit is told to close, and `false` returned.
    pub(super) fn send_to(
        &self,
        handle: &SubscriberHandle,
        kind: FrameKind,
        frame: ByteString,
    ) -> bool {
        let sent = self.offer(handle, kind, &frame);
        if sent {
            self.metrics.messages_out.inc();
        }
        sent
    }

    /// [`Self::send_to`] without counting the frame.
    pub(super) fn offer(
        &self,
        handle: &SubscriberHandle,
        kind: FrameKind,
        frame: &ByteString,
    ) -> bool {
        let reserve = handle.outbox.deliver(self.name.as_arc(), kind, frame);
        self.settle(handle, reserve)
    }

    /// Whether a frame went; a client it found too slow is told to close.
    pub(super) fn settle(&self, handle: &SubscriberHandle, reserve: Reserve) -> bool {
        match reserve {
            Reserve::Ok => true,
            Reserve::BecameSlow => {
                tracing::info!(topic = %self.name, "closing a slow consumer");
                handle.outbox.disconnect(Disconnect::TooSlow);
                false
            }
            Reserve::AlreadySlow => false,
        }
    }

    /// Queues an event for the end of this mailbox turn (see [`fanout`]).
    pub(super) fn fan_out(&mut self, frame: TopicFrame, audience: Audience) {
        self.pending.push(PendingEvent {
            frame,
            audience,
            accepted: Instant::now(),
        });
    }

    /// Sends the turn's acks, then every queued event. Runs after each mailbox turn, and before
    /// anything that must come after them (a new subscriber's `subscribed`
    /// carries a seq that counts them).
    pub(super) fn flush_fan_out(&mut self) {
        self.flush_acks();
        // Taken whole (draining batch by batch from the front would move the
        // rest each time), and not kept: an idle topic holds no buffer.
        while !self.pending.is_empty() {
            let events = std::mem::take(&mut self.pending);
            for batch in events.chunks(MAX_BATCH) {
                self.send_batch(batch);
            }
        }
    }

    pub(super) fn send_batch(&mut self, events: &[PendingEvent]) {
        let topic = self.name.as_arc();
        let started = Instant::now();
        let ((delivered, refused), threads) = if self.split.splits(self.subscribers.len()) {
            let all: Vec<(ConnId, &Subscriber)> =
                self.subscribers.iter().map(|(c, s)| (*c, s)).collect();
            let claims = Claims::new(all.len());
            let spellings = self.spellings.of(topic);
            let share =
                |end| deliver_claimed(&all, &claims, end, Batch::new(events, spellings), topic);
            std::thread::scope(|scope| {
                let spawned = std::thread::Builder::new()
                    .name("realtide-fanout".into())
                    .spawn_scoped(scope, || share(End::Back));
                // Without a second thread (a process limit), this one takes
                // every claim itself; said once, as it may recur every batch.
                if let Err(error) = &spawned {
                    static SAID: AtomicBool = AtomicBool::new(false);
                    if !SAID.swap(true, Ordering::Relaxed) {
                        tracing::warn!(topic = %self.name, %error, "fan-out on one thread");
                    }
                }
                let (mut delivered, mut refused) = share(End::Front);
                let Ok(other) = spawned else {
                    return ((delivered, refused), 1);
                };
                let (theirs, their_refused) = other.join().expect("the other end's sends");
                delivered += theirs;
                refused.extend(their_refused);
                ((delivered, refused), 2)
            })
        } else {
            let all = self.subscribers.iter().map(|(c, s)| (*c, s));
            let mut batch = Batch::new(events, self.spellings.of(topic));
            (deliver_each(all, &mut batch, topic), 1)
        };
        self.split.record(started, started.elapsed(), threads);
        if !self.subscribers.is_empty() {
            self.observe_lags(events);
        }
        self.metrics.deliveries.inc_by(delivered);
        self.metrics.messages_out.inc_by(delivered);
        for (conn, reserve) in refused {
            if let Some(sub) = self.subscribers.get(&conn) {
                self.settle(&sub.handle, reserve);
            }
            self.remove(conn);
        }
    }

    /// How long the batch's events took to reach the sockets: from their
    /// acceptance, and for table changes from the change log.
    pub(super) fn observe_lags(&self, events: &[PendingEvent]) {
        let (sent, sent_ms) = (Instant::now(), now_ms());
        for event in events {
            let lag = sent.saturating_duration_since(event.accepted);
            self.metrics.delivery_lag.observe(lag.as_secs_f64());
            if let Audience::Change(change) = &event.audience {
                let lag_ms = (sent_ms - change.at_ms).max(0);
                self.metrics.change_lag.observe(lag_ms as f64 / 1000.0);
            }
        }
    }
}

/// Sends a batch to the runs of `all` this thread claims from `end`.
fn deliver_claimed(
    all: &[(ConnId, &Subscriber)],
    claims: &Claims,
    end: End,
    mut batch: Batch,
    topic: &Arc<str>,
) -> (u64, Vec<(ConnId, Reserve)>) {
    let mut delivered = 0;
    let mut refused = Vec::new();
    while let Some(run) = claims.take(end) {
        let (sent, their_refused) = deliver_each(all[run].iter().copied(), &mut batch, topic);
        delivered += sent;
        refused.extend(their_refused);
    }
    (delivered, refused)
}

/// Sends `batch` to `subscribers`; answers the events delivered and the
/// subscribers refused (too slow, or gone), for the topic to settle.
fn deliver_each<'a>(
    subscribers: impl Iterator<Item = (ConnId, &'a Subscriber)>,
    batch: &mut Batch,
    topic: &Arc<str>,
) -> (u64, Vec<(ConnId, Reserve)>) {
    let mut refused = Vec::new();
    let mut delivered = 0;
    // Each delivery is a `send`, whose kernel work evicts the next
    // subscribers from the CPU's cache: waiting on those misses one by one
    // cost more than the rest of the delivery. So the loop fetches ahead, one
    // pointer hop a step: the subscriber three ahead, the outbox of the one
    // two ahead, the socket of the next.
    let mut all = subscribers;
    let mut ahead = [all.next(), all.next(), all.next()];
    while let Some((conn, sub)) = ahead[0] {
        let incoming = all.next();
        if let Some((_, sub)) = incoming {
            let entry = sub as *const Subscriber as *const u8;
            prefetch(entry);
            prefetch(entry.wrapping_add(64));
        }
        if let Some((_, sub)) = ahead[2] {
            sub.handle.outbox.prefetch();
        }
        if let Some((_, sub)) = ahead[1] {
            sub.handle.outbox.prefetch_socket();
        }
        ahead = [ahead[1], ahead[2], incoming];
        let wanted = batch.wanted_by(conn, sub.echo, &sub.filter);
        if wanted == 0 {
            continue;
        }
        let wire = batch.wire(sub.spelling, wanted);
        match sub.handle.outbox.deliver_wire(topic, sub.sub_id, wire) {
            Reserve::Ok => delivered += u64::from(wanted.count_ones()),
            other => refused.push((conn, other)),
        }
    }
    (delivered, refused)
}

/// Sends what a mailbox turn queued. actix polls an actor's spawned items
/// after each turn of its mailbox, so this item, spawned once and never
/// done, runs at the end of every turn. A `ctx.wait` callback is followed
/// by another turn; the callback of another spawned item or of a timer may
/// run after this one in the same pass, so such a callback that acks or
/// delivers calls [`TopicActor::flush_fan_out`] itself.
pub(super) struct FlushAfterEachTurn;

impl ActorFuture<TopicActor> for FlushAfterEachTurn {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        topic: &mut TopicActor,
        ctx: &mut Context<TopicActor>,
        _task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        topic.flush_fan_out();
        topic.send_outgoing(ctx);
        topic.store_unstored(ctx);
        std::task::Poll::Pending
    }
}
