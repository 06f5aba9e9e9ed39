//! A pub/sub topic of a cluster (docs/scaling.md): the [`Broker`] assigns its
//! `seq` and `epoch`, keeps its replay log, presence and running streams,
//! and brings every node the same events in the same order.
//!
//! How this node's `TopicActor` takes part:
//! - It joins the topic when it starts (and again whenever a request finds
//!   it unjoined, say after Redis was down), under `ctx.wait`: nothing is
//!   handled until it knows the topic's epoch and latest seq.
//! - Publishes of one mailbox turn go to the broker as one batch at the end
//!   of the turn, under `ctx.wait`, so one node's publishes keep their
//!   order; the turn's persisted ones are stored first, in one transaction
//!   (group commit, as on one node), unnumbered until the broker answers. Nothing is delivered on the way out: every node, this one too,
//!   delivers only what comes back from the broker, in seq order. The
//!   publisher's ack (and an emit's answer) goes when its event is
//!   delivered here, just before it: never an ack for an undelivered event.
//!   A persisted publish is acked only once its seq is in history, so from
//!   its event on this node holds back every event (in seq order) until
//!   then: its publisher sees the ack before the echo, and every subscriber
//!   here sees seq order.
//! - A seq that jumps is held for [`GAP_WAIT`]; then the missing events are
//!   read from the replay log. If they are gone, or an event comes with an
//!   epoch not seen before, this node's subscribers are closed with 1012
//!   (their resume then says `recovered: false`).
//! - A table topic joins too, for its presence alone: its epoch and seq
//!   are the database's, and nothing is published through the broker.
//! - Presence: `track` and `untrack` go to the broker; the join or leave
//!   comes back to every node, and the client's ack goes just before its own
//!   join or leave. Each node mirrors the whole topic's entries, so
//!   `presence:sync` lists every node's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{StreamPart, TopicActor};
use crate::broker::{
    BrokerError, ClusterLink, PresenceEntry, PresenceOp, SharedEvent, StreamMark, TopicState,
};
use crate::clock::now_ms;
use crate::history::{self, NewMessage};
use crate::outbox::messages::ConnId;
use crate::protocol::ProtocolError;
use crate::protocol::server::TopicFrame;
use crate::topic::messages::{AckTo, Publish, PublishReply};

mod incoming;
mod presence;

/// How long a gap in seq may last before the replay log is asked.
const GAP_WAIT: Duration = Duration::from_millis(150);

/// A publish of this node, waiting for its event to come back.
struct Waiting {
    reply: PublishReply,
    /// Its seq, once the broker has answered.
    seq: Option<u64>,
    /// Stored, and its seq not yet written to history: its ack waits.
    numbering: bool,
}

/// An event held back, in seq order, behind an ack of this node whose seq
/// is not yet in history: delivered (its ack just before it) once that ack
/// and every one before it may go.
struct Held {
    seq: u64,
    /// None once continuity was lost meanwhile: only its ack is left to go.
    frame: Option<TopicFrame>,
    publisher: Option<ConnId>,
    stream: Option<StreamPart>,
    /// This node's publish, when the event is one.
    ack: Option<HeldAck>,
}

struct HeldAck {
    token: u64,
    waiting: Waiting,
    message_id: Option<String>,
}

/// A cluster topic's part of the actor's state.
pub struct Shared {
    pub(super) link: ClusterLink,
    joined: bool,
    /// Events that came ahead of a gap, by seq.
    ahead: BTreeMap<u64, SharedEvent>,
    gap_check: Option<SpawnHandle>,
    /// This node's publishes, by token, until delivered.
    waiting: HashMap<u64, Waiting>,
    /// Events held back behind an ack waiting for its seq in history.
    held: VecDeque<Held>,
    next_token: u64,
    /// This turn's publishes, sent as one batch at its end.
    outgoing: Vec<SharedEvent>,
    /// What of `outgoing` is stored first: its position there, the message.
    to_store: Vec<(usize, NewMessage)>,
    /// This node's presence entries on the topic.
    local: HashMap<ConnId, PresenceEntry>,
    /// Acks of this node's track and untrack requests, each sent just
    /// before the join or leave announced with its op.
    presence_acks: HashMap<PresenceOp, AckTo>,
}

impl Shared {
    pub fn new(link: ClusterLink) -> Self {
        Shared {
            link,
            joined: false,
            ahead: BTreeMap::new(),
            gap_check: None,
            waiting: HashMap::new(),
            held: VecDeque::new(),
            next_token: 1,
            outgoing: Vec::new(),
            to_store: Vec::new(),
            local: HashMap::new(),
            presence_acks: HashMap::new(),
        }
    }

    pub fn leave(&self, topic: &str) {
        self.link.broker.leave(topic);
    }
}

fn unavailable(e: BrokerError) -> ProtocolError {
    ProtocolError::unavailable(e.to_string())
}

fn stream_part(mark: &StreamMark) -> StreamPart {
    let stream: Arc<str> = mark.id.as_str().into();
    match mark.done {
        true => StreamPart::Done { stream },
        false => StreamPart::Token { stream },
    }
}

fn frame_of(topic: &str, seq: u64, event: &SharedEvent) -> TopicFrame {
    TopicFrame::published(
        topic,
        &event.event,
        &event.data,
        event.user_id.as_deref(),
        event.at_ms,
        seq,
        event.message_id.as_deref(),
    )
}

impl TopicActor {
    fn shared(&mut self) -> &mut Shared {
        // unwrap-free: only called on cluster topics, which always have one.
        self.shared
            .as_mut()
            .expect("cluster methods run on cluster topics")
    }

    fn broker(&self) -> Arc<dyn crate::broker::Broker> {
        // unwrap-free: only called on cluster topics, which always have one.
        self.shared
            .as_ref()
            .map(|shared| shared.link.broker.clone())
            .expect("cluster methods run on cluster topics")
    }

    /// Whether the broker numbers this topic's events: a pub/sub topic's;
    /// a table topic's come numbered from the database.
    pub(super) fn numbered_by_broker(&self) -> bool {
        self.name.kind() == crate::topic::name::TopicKind::PubSub
    }

    /// Joins the topic, then runs `then` (with whether it worked), holding
    /// back everything else until then.
    pub(super) fn when_joined(
        &mut self,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), ProtocolError>) + 'static,
    ) {
        if !self.broker().is_up() {
            // What needs Redis is refused while it is unreachable, even on
            // a topic this node already runs (its seq could be stale).
            let error = ProtocolError::unavailable("the cluster's Redis is unreachable");
            return then(self, ctx, Err(error));
        }
        if self.shared().joined {
            return then(self, ctx, Ok(()));
        }
        let join = self
            .broker()
            .join(self.name.as_str(), ctx.address().recipient(), None);
        ctx.wait(join.into_actor(self).map(move |joined, topic, ctx| {
            let result = match joined {
                Ok(state) => {
                    topic.adopt(state);
                    Ok(())
                }
                Err(e) => Err(unavailable(e)),
            };
            then(topic, ctx, result)
        }));
    }

    /// Takes the topic's state from the broker on joining.
    fn adopt(&mut self, state: TopicState) {
        self.shared().joined = true;
        self.presence = Default::default();
        for entry in state.presence {
            self.presence
                .track_wire(&entry.key, &entry.conn, entry.state);
        }
        if !self.numbered_by_broker() {
            return;
        }
        self.epoch = state.epoch.as_str().into();
        self.seq = state.seq;
        self.streams = Default::default();
        for token in state.stream_tokens {
            if let Some(mark) = &token.event.stream
                && let StreamPart::Token { stream } = stream_part(mark)
            {
                self.streams.keep(
                    &stream,
                    frame_of(self.name.as_str(), token.seq, &token.event),
                );
            }
        }
    }

    /// `publish`, `emit`, `stream`: queued for the turn's batch.
    pub(super) fn publish_shared(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        self.when_joined(ctx, move |topic, _, joined| match joined {
            Ok(()) => topic.queue_shared(msg, now_ms()),
            Err(error) => msg.reply.failed(error, &topic.metrics),
        });
    }

    fn queue_shared(&mut self, msg: Publish, at_ms: i64) {
        let node = self.shared().link.node.to_string();
        let token = self.shared().next_token;
        // Unnumbered until the broker answers: a placeholder unique in the
        // group, below zero.
        let store = msg.persist.then(|| {
            let placeholder = -(self.shared().to_store.len() as i64 + 1);
            self.to_store(&msg, at_ms, placeholder)
        });
        let shared = self.shared();
        shared.next_token += 1;
        if let Some(message) = store {
            shared.to_store.push((shared.outgoing.len(), message));
        }
        shared.outgoing.push(SharedEvent {
            origin: node,
            conn: msg.publisher.map(|c| c.0),
            token,
            event: msg.event,
            data: msg.data,
            user_id: msg.user_id.as_deref().map(str::to_owned),
            at_ms,
            message_id: None,
            stream: msg.stream.map(|part| match part {
                StreamPart::Token { stream } => StreamMark {
                    id: stream.to_string(),
                    done: false,
                },
                StreamPart::Done { stream } => StreamMark {
                    id: stream.to_string(),
                    done: true,
                },
            }),
        });
        shared.waiting.insert(
            token,
            Waiting {
                reply: msg.reply,
                seq: None,
                numbering: false,
            },
        );
    }

    /// At a turn's end: stores the turn's persisted publishes in one
    /// transaction (shared with other topics' groups by the history
    /// writer), then sends the whole batch to the broker in one call; the
    /// next turn waits behind both. A group that cannot be stored is
    /// refused whole, before the broker numbers anything, so it leaves no
    /// gap; the turn's other publishes still go.
    pub(super) fn send_outgoing(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if shared.outgoing.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut shared.outgoing);
        let (positions, messages): (Vec<usize>, Vec<NewMessage>) =
            std::mem::take(&mut shared.to_store).into_iter().unzip();
        if messages.is_empty() {
            return self.publish_batch(batch, ctx);
        }
        let writer = self.history.clone();
        let store = async move { writer.store(messages).await };
        ctx.wait(store.into_actor(self).map(move |stored, topic, ctx| {
            match stored {
                Ok(ids) => {
                    topic.metrics.messages_stored.inc_by(ids.len() as u64);
                    for (position, id) in positions.into_iter().zip(ids) {
                        batch[position].message_id = Some(id);
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic.name, error = %e, "storing messages failed");
                    let error =
                        ProtocolError::unavailable(format!("the message was not stored: {e}"));
                    let mut position = 0;
                    batch.retain(|event| {
                        let refused = positions.contains(&position);
                        position += 1;
                        if refused
                            && let Some(waiting) = topic.shared().waiting.remove(&event.token)
                        {
                            waiting.reply.failed(error.clone(), &topic.metrics);
                        }
                        !refused
                    });
                }
            }
            if !batch.is_empty() {
                topic.publish_batch(batch, ctx);
            }
        }));
    }

    /// Has the broker number and send `batch`, under `ctx.wait`.
    fn publish_batch(&mut self, batch: Vec<SharedEvent>, ctx: &mut Context<Self>) {
        let tokens: Vec<u64> = batch.iter().map(|e| e.token).collect();
        let stored: Vec<Option<String>> = batch.iter().map(|e| e.message_id.clone()).collect();
        let seen = (self.epoch.as_str(), self.seq);
        let publish = self.broker().publish(self.name.as_str(), seen, batch);
        ctx.wait(
            publish
                .into_actor(self)
                .map(move |published, topic, ctx| match published {
                    Ok((_epoch, first)) => {
                        let mut numbered = Vec::new();
                        let mut numbered_tokens = Vec::new();
                        for (i, (token, id)) in tokens.iter().zip(stored).enumerate() {
                            let seq = first + i as u64;
                            let stored = id.is_some();
                            if let Some(id) = id {
                                numbered.push((id, seq));
                                numbered_tokens.push(*token);
                            }
                            topic.numbered(*token, seq, stored);
                        }
                        if !numbered.is_empty() {
                            topic.store_seqs(numbered, numbered_tokens, ctx);
                        }
                        topic.expect_up_to(first + tokens.len() as u64 - 1, ctx);
                    }
                    Err(error) => {
                        for token in tokens {
                            if let Some(waiting) = topic.shared().waiting.remove(&token) {
                                waiting
                                    .reply
                                    .failed(unavailable(error.clone()), &topic.metrics);
                            }
                        }
                        // Not published: the stored messages must not show
                        // in history either.
                        let unpublished: Vec<String> = stored.into_iter().flatten().collect();
                        if !unpublished.is_empty() {
                            let db = topic.db.clone();
                            actix::spawn(async move {
                                let _ = db
                                    .run(move |conn| {
                                        history::forget_unpublished(conn, &unpublished)
                                    })
                                    .await;
                            });
                        }
                    }
                }),
        );
    }

    /// This node's own events up to `last` were published: should they not
    /// come back (the push lost, and nothing after it to show the gap), they
    /// are read from the replay log, so their publishers are answered.
    fn expect_up_to(&mut self, last: u64, ctx: &mut Context<Self>) {
        ctx.run_later(GAP_WAIT, move |topic, ctx| {
            if topic.seq < last && topic.shared().joined {
                topic.fill_up_to(last, ctx);
            }
            // A timer's callback may end the context's pass after the turn's
            // flush already ran: what it queued goes now.
            topic.flush_fan_out();
        });
    }

    /// Answers the publishers of events that were skipped as lost (their
    /// seq is behind the topic's now, and they were never delivered here).
    fn fail_skipped(&mut self) {
        let metrics = self.metrics.clone();
        let current = self.seq;
        let shared = self.shared();
        let skipped: Vec<u64> = shared
            .waiting
            .iter()
            .filter(|(_, w)| w.seq.is_some_and(|seq| seq <= current))
            .map(|(token, _)| *token)
            .collect();
        for token in skipped {
            if let Some(waiting) = shared.waiting.remove(&token) {
                waiting.reply.failed(
                    ProtocolError::unavailable("the event was lost between nodes"),
                    &metrics,
                );
            }
        }
    }

    /// The broker gave a waiting publish its seq; if that seq was skipped
    /// as lost, the publisher is told it was not delivered.
    fn numbered(&mut self, token: u64, seq: u64, stored: bool) {
        let current = self.seq;
        let shared = self.shared();
        let lost = seq <= current && shared.waiting.contains_key(&token);
        if lost {
            if let Some(waiting) = shared.waiting.remove(&token) {
                waiting.reply.failed(
                    ProtocolError::unavailable("the event was lost between nodes"),
                    &self.metrics,
                );
            }
        } else if let Some(waiting) = shared.waiting.get_mut(&token) {
            waiting.seq = Some(seq);
            waiting.numbering = stored;
        }
    }

    /// Writes the seqs of stored messages to history (in the history
    /// writer's shared transaction). Nothing waits for it but the acks of
    /// these publishes, so a `history` read after an ack sees them; the
    /// topic goes on with its next turn meanwhile.
    fn store_seqs(
        &mut self,
        numbered: Vec<(String, u64)>,
        tokens: Vec<u64>,
        ctx: &mut Context<Self>,
    ) {
        let writer = self.history.clone();
        let store = async move { writer.number(numbered).await };
        ctx.spawn(store.into_actor(self).map(move |stored, topic, _| {
            if let Err(e) = stored {
                tracing::warn!(topic = %topic.name, error = %e, "storing message seqs failed");
            }
            let shared = topic.shared();
            for token in tokens {
                if let Some(waiting) = shared.waiting.get_mut(&token) {
                    waiting.numbering = false;
                } else if let Some(ack) = shared
                    .held
                    .iter_mut()
                    .filter_map(|h| h.ack.as_mut())
                    .find(|ack| ack.token == token)
                {
                    ack.waiting.numbering = false;
                }
            }
            topic.ack_ready();
            // A spawned future may finish after the turn's flush ran in
            // this pass of the context: its acks go now, not at the next.
            topic.flush_fan_out();
        }));
    }

    /// Delivers the held events up to the first whose ack still waits for
    /// its seq in history, each of this node's just after its ack.
    fn ack_ready(&mut self) {
        while let Some(head) = self.shared().held.front()
            && !head.ack.as_ref().is_some_and(|ack| ack.waiting.numbering)
        {
            if let Some(held) = self.shared().held.pop_front() {
                self.release(held);
            }
        }
    }

    fn release(&mut self, held: Held) {
        if let Some(ack) = held.ack {
            self.ack(ack.waiting, held.seq, ack.message_id);
        }
        if let Some(frame) = held.frame {
            self.announce(held.seq, frame, held.publisher, held.stream.as_ref());
        }
    }

    /// The seq before the first held event: what subscribers have been sent.
    pub(super) fn held_from(&self) -> Option<u64> {
        self.shared.as_ref()?.held.front().map(|held| held.seq - 1)
    }
}

/// Tracking outcomes a test can check without a cluster.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_marks_become_stream_parts() {
        let token = stream_part(&StreamMark {
            id: "s".into(),
            done: false,
        });
        assert!(matches!(token, StreamPart::Token { .. }));
        let done = stream_part(&StreamMark {
            id: "s".into(),
            done: true,
        });
        assert!(matches!(done, StreamPart::Done { .. }));
    }
}
