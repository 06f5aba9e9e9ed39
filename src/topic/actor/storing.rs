//! Persisted publishes in groups (group commit), for a pub/sub topic on one
//! node: every publish of a mailbox turn that asks `persist: true` waits for
//! the turn's end, when all of them are stored in one transaction (one
//! commit, which the server's `HistoryWriter` shares with other topics'
//! groups); then, in seq order, each is acked and delivered. Nothing is
//! acked before its commit. A publish that is not persisted but comes after
//! a persisted one of the same turn waits behind it, so that delivery order
//! stays seq order.

use actix::prelude::*;
use thin_vec::ThinVec;

use super::TopicActor;
use crate::clock::now_ms;
use crate::history::NewMessage;
use crate::protocol::ProtocolError;
use crate::topic::messages::Publish;

/// A publish with its seq, waiting for the turn's store.
pub(super) struct Unstored {
    msg: Publish,
    seq: u64,
    at_ms: i64,
    /// What is stored, for a persisted publish, until handed to the writer.
    message: Option<NewMessage>,
}

impl TopicActor {
    /// The seq of the last event subscribers will not get from the queue:
    /// one admitted while a turn's publishes wait for storage is told this
    /// seq, and then gets those publishes as they are delivered.
    pub(super) fn announced_seq(&self) -> u64 {
        if let Some(before_held) = self.held_from() {
            return before_held;
        }
        self.unstored
            .first()
            .map_or(self.seq, |first| first.seq - 1)
    }

    /// Numbers a publish; delivers it now, or queues it for the turn's store.
    pub(super) fn publish_local(&mut self, msg: Publish) {
        self.seq += 1;
        let (seq, at_ms) = (self.seq, now_ms());
        if !msg.persist && self.unstored.is_empty() {
            return self.complete_publish(msg, seq, at_ms, None);
        }
        let message = msg.persist.then(|| self.to_store(&msg, at_ms, seq as i64));
        self.unstored.push(Unstored {
            msg,
            seq,
            at_ms,
            message,
        });
    }

    /// At a turn's end: stores the queued publishes in one transaction,
    /// under `ctx.wait` (nothing else is handled meanwhile, so seq, storage
    /// and delivery order agree), then acks and delivers them.
    pub(super) fn store_unstored(&mut self, ctx: &mut Context<Self>) {
        if self.unstored.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.unstored);
        // Moved to the writer: what is stored is not needed again here.
        let messages: Vec<NewMessage> = batch.iter_mut().filter_map(|u| u.message.take()).collect();
        let writer = self.history.clone();
        let store = async move { writer.store(messages).await };
        ctx.wait(store.into_actor(self).map(move |stored, topic, _| {
            match stored {
                Ok(ids) => {
                    topic.metrics.messages_stored.inc_by(ids.len() as u64);
                    let mut ids = ids.into_iter();
                    for unstored in batch {
                        let id = unstored.msg.persist.then(|| ids.next()).flatten();
                        topic.complete_publish(unstored.msg, unstored.seq, unstored.at_ms, id);
                    }
                }
                Err(e) => topic.store_failed(batch, &e.to_string()),
            }
            topic.flush_fan_out();
        }));
    }

    /// Nothing of the batch was stored: its persisted publishes are
    /// refused, the others delivered under fresh seqs (nothing else was
    /// numbered meanwhile, so the batch's seqs are given back).
    fn store_failed(&mut self, batch: ThinVec<Unstored>, error: &str) {
        tracing::warn!(topic = %self.name, %error, "storing messages failed");
        self.seq = batch.first().map_or(self.seq, |first| first.seq - 1);
        for unstored in batch {
            if unstored.msg.persist {
                let error =
                    ProtocolError::unavailable(format!("the message was not stored: {error}"));
                unstored.msg.reply.failed(error, &self.metrics);
                continue;
            }
            self.seq += 1;
            let seq = self.seq;
            self.complete_publish(unstored.msg, seq, unstored.at_ms, None);
        }
    }
}
