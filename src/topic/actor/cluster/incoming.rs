//! What reaches a cluster topic through the broker: every node's events, in
//! seq order. A seq that jumps is held for [`GAP_WAIT`], then the missing
//! events are read from the replay log; if they are gone, or an event comes
//! with an epoch not seen before, this node's subscribers are closed with
//! 1012 so their resume says `recovered: false`. A resume on this node
//! reads the replay log the same way.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use compact_str::CompactString;

use super::super::TopicActor;
use super::{GAP_WAIT, Held, HeldAck, Waiting, frame_of, stream_part};
use crate::broker::{FromBroker, Sequenced, SharedEvent};
use crate::outbox::messages::{ConnId, Disconnect};
use crate::protocol::ProtocolError;
use crate::topic::messages::{Published, Subscribe};

impl TopicActor {
    /// Something from the broker.
    pub(in crate::topic::actor) fn heard_from_broker(
        &mut self,
        msg: FromBroker,
        ctx: &mut Context<Self>,
    ) {
        if !self.shared().joined {
            // Before the join answered nothing is handled (ctx.wait); after
            // a failed join, the next join's state covers this.
            return;
        }
        match msg {
            FromBroker::Event { epoch, event } => self.arrived(epoch, event, ctx),
            FromBroker::Presence { joined, entry, op } => self.presence_changed(joined, entry, op),
            FromBroker::Resync => self.resync(ctx),
        }
    }

    pub(in crate::topic::actor) fn arrived(
        &mut self,
        epoch: Arc<str>,
        event: Sequenced,
        ctx: &mut Context<Self>,
    ) {
        if !self.numbered_by_broker() {
            return;
        }
        if *epoch != *self.epoch {
            self.restart(epoch, event.seq.saturating_sub(1));
        }
        if event.seq <= self.seq {
            return;
        }
        self.shared().ahead.insert(event.seq, event.event);
        self.deliver_ready();
        self.check_gap_later(ctx);
    }

    /// With events held behind a gap, looks again after [`GAP_WAIT`].
    pub(in crate::topic::actor) fn check_gap_later(&mut self, ctx: &mut Context<Self>) {
        if self.shared().ahead.is_empty() || self.shared().gap_check.is_some() {
            return;
        }
        let check = ctx.run_later(GAP_WAIT, |topic, ctx| {
            topic.shared().gap_check = None;
            if let Some((&first, _)) = topic.shared().ahead.first_key_value() {
                topic.fill_up_to(first - 1, ctx);
            }
            // As in `expect_up_to`: a timer may run after the turn's flush.
            topic.flush_fan_out();
        });
        self.shared().gap_check = Some(check);
    }

    /// Delivers the held events that follow on from `seq`.
    pub(in crate::topic::actor) fn deliver_ready(&mut self) {
        loop {
            let next = self.seq + 1;
            let shared = self.shared();
            while shared
                .ahead
                .first_key_value()
                .is_some_and(|(s, _)| *s < next)
            {
                shared.ahead.pop_first();
            }
            let Some(event) = shared.ahead.remove(&next) else {
                return;
            };
            self.deliver_shared(next, event);
        }
    }

    /// Reads the events after `seq` up to `up_to` from the replay log and
    /// delivers them, or, when they are gone, gives them up.
    pub(in crate::topic::actor) fn fill_up_to(&mut self, up_to: u64, ctx: &mut Context<Self>) {
        let since = self.seq;
        if up_to <= since {
            return self.deliver_ready();
        }
        let replay = self
            .broker()
            .replay(self.name.as_str(), &self.epoch, since, up_to);
        ctx.wait(replay.into_actor(self).map(move |missed, topic, ctx| {
            match missed {
                Ok(Some(events)) => {
                    topic.metrics.gaps_filled.inc();
                    for event in events {
                        topic.shared().ahead.insert(event.seq, event.event);
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(topic = %topic.name, since, up_to, "events lost between nodes");
                    topic.metrics.gaps_lost.inc();
                    topic.lose_continuity();
                    topic.seq = topic.seq.max(up_to);
                    topic.fail_skipped();
                }
            }
            topic.deliver_ready();
            topic.check_gap_later(ctx);
        }));
    }

    /// An event in seq order: ack it if it is this node's, then deliver it.
    pub(in crate::topic::actor) fn deliver_shared(&mut self, seq: u64, event: SharedEvent) {
        self.seq = seq;
        let frame = frame_of(self.name.as_str(), seq, &event);
        let local = event.origin == *self.shared().link.node;
        let ack = match local {
            true => self
                .shared()
                .waiting
                .remove(&event.token)
                .map(|waiting| HeldAck {
                    token: event.token,
                    waiting,
                    message_id: event.message_id.clone(),
                }),
            false => None,
        };
        let held = Held {
            seq,
            frame: Some(frame),
            publisher: if local { event.conn.map(ConnId) } else { None },
            stream: event.stream.as_ref().map(stream_part),
            ack,
        };
        // In seq order, behind any ack whose seq is not yet in history.
        let waits = held.ack.as_ref().is_some_and(|ack| ack.waiting.numbering);
        if waits || !self.shared().held.is_empty() {
            self.shared().held.push_back(held);
        } else {
            self.release(held);
        }
    }

    /// Answers a delivered publish of this node.
    pub(super) fn ack(&mut self, waiting: Waiting, seq: u64, message_id: Option<String>) {
        self.send_publish_ack(&waiting.reply, seq, message_id.as_deref());
        waiting.reply.published(Published { seq, message_id });
        self.metrics.events_published.inc();
    }

    /// Closes this node's subscribers with 1012: they missed events that
    /// cannot be replayed, and must resume to learn it.
    pub(in crate::topic::actor) fn lose_continuity(&mut self) {
        let conns: Vec<ConnId> = self.subscribers.iter().map(|(conn, _)| *conn).collect();
        for conn in conns {
            if let Some(subscriber) = self.subscribers.get(&conn) {
                subscriber.handle.outbox.disconnect(Disconnect::Restart);
            }
            self.remove(conn);
        }
        self.replay.clear();
        // Held events would go to no one, and must not fill the cleared
        // replay ring ahead of the gap: only their acks are left to send.
        if let Some(shared) = self.shared.as_mut() {
            for held in shared.held.iter_mut() {
                held.frame = None;
            }
        }
    }

    /// The topic has a new epoch: what came before is gone.
    pub(in crate::topic::actor) fn restart(&mut self, epoch: Arc<str>, seq: u64) {
        tracing::info!(topic = %self.name, %epoch, "the topic's epoch changed");
        self.lose_continuity();
        // Held events of the old epoch go nowhere (every subscriber was
        // just closed); their publishers are told, as below.
        for held in std::mem::take(&mut self.shared().held) {
            if let Some(ack) = held.ack {
                ack.waiting.reply.failed(
                    ProtocolError::unavailable("the event was lost: the topic's epoch changed"),
                    &self.metrics,
                );
            }
        }
        // Publishes numbered in the old epoch and not delivered are lost.
        let old_epoch: Vec<u64> = self
            .shared()
            .waiting
            .iter()
            .filter(|(_, w)| w.seq.is_some())
            .map(|(token, _)| *token)
            .collect();
        for token in old_epoch {
            if let Some(waiting) = self.shared().waiting.remove(&token) {
                waiting.reply.failed(
                    ProtocolError::unavailable("the event was lost: the topic's epoch changed"),
                    &self.metrics,
                );
            }
        }
        self.epoch = CompactString::from(&*epoch);
        self.seq = seq;
        self.streams = Default::default();
        self.shared().ahead.retain(|s, _| *s > seq);
    }

    /// After the link dropped, or this node was taken for dead: catch up on
    /// events, and make presence right again.
    pub(in crate::topic::actor) fn resync(&mut self, ctx: &mut Context<Self>) {
        let numbered = self.numbered_by_broker();
        let seen = numbered.then_some((self.epoch.as_str(), self.seq));
        let join = self
            .broker()
            .join(self.name.as_str(), ctx.address().recipient(), seen);
        ctx.wait(join.into_actor(self).map(move |joined, topic, ctx| {
            // Still unreachable: the next resync tries again.
            let Ok(state) = joined else { return };
            if numbered && *state.epoch != *topic.epoch {
                topic.restart(state.epoch.as_str().into(), state.seq);
            } else if numbered && state.seq > topic.seq {
                // Published while the link was down.
                topic.fill_up_to(state.seq, ctx);
            }
            topic.reconcile_presence(state.presence);
        }));
    }

    /// A resume that this node's ring cannot serve: the replay log can.
    pub(in crate::topic::actor) fn resume_shared(
        &mut self,
        msg: Subscribe,
        since: u64,
        earlier: Vec<ByteString>,
        ctx: &mut Context<Self>,
    ) {
        let replay = self
            .broker()
            .replay(self.name.as_str(), &self.epoch, since, self.seq);
        ctx.wait(replay.into_actor(self).map(move |missed, topic, _| {
            let mut earlier = earlier;
            let recovered = match missed {
                Ok(Some(events)) => {
                    earlier.extend(events.iter().map(|e| {
                        frame_of(topic.name.as_str(), e.seq, &e.event).for_spelling(&msg.spelling)
                    }));
                    true
                }
                Ok(None) | Err(_) => {
                    earlier.extend(
                        topic
                            .streams
                            .tokens()
                            .iter()
                            .map(|f| f.for_spelling(&msg.spelling)),
                    );
                    false
                }
            };
            topic.admit(msg, recovered, earlier);
        }));
    }
}

impl Handler<FromBroker> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: FromBroker, ctx: &mut Self::Context) {
        self.heard_from_broker(msg, ctx);
    }
}
