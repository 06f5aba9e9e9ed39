//! A mailbox turn's publish acks, written once per connection: a group of
//! persisted publishes from a few connections is acked together after its
//! commit, and one `send` per connection (instead of one per ack) is most
//! of what the group's acks cost the server. They leave before the turn's
//! events, as each ack left ahead of its own echo when it was written at
//! once, and before anything a handler writes after flushing the turn.

use bytes::BytesMut;
use bytestring::ByteString;

use super::TopicActor;
use crate::outbox::Reserve;
use crate::socket::put_text_frame;
use crate::topic::messages::SubscriberHandle;

/// How many of the latest connections an ack looks among for its own; past
/// them it starts another write, so a turn of many publishers stays linear.
const LOOK_BACK: usize = 8;

/// One connection's acks of this turn, as whole frames.
pub(super) struct TurnAcks {
    handle: SubscriberHandle,
    frames: BytesMut,
    count: u64,
}

impl TopicActor {
    /// Queues `frame`, an ack, for the end of the turn.
    pub(super) fn queue_ack(&mut self, handle: &SubscriberHandle, frame: ByteString) {
        let recent = self.acks.len().saturating_sub(LOOK_BACK);
        let found = self.acks[recent..]
            .iter_mut()
            .rev()
            .find(|acks| std::sync::Arc::ptr_eq(&acks.handle.outbox, &handle.outbox));
        let acks = match found {
            Some(acks) => acks,
            None => {
                self.acks.push(TurnAcks {
                    handle: handle.clone(),
                    frames: BytesMut::new(),
                    count: 0,
                });
                self.acks.last_mut().expect("just pushed")
            }
        };
        put_text_frame(&mut acks.frames, frame.as_bytes());
        acks.count += 1;
    }

    /// Writes the turn's acks, one write per connection, in the order the
    /// connections were first acked.
    pub(super) fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        for acks in std::mem::take(&mut self.acks) {
            let reserve = acks
                .handle
                .outbox
                .deliver_replies(self.name.as_arc(), &acks.frames);
            if reserve == Reserve::Ok {
                self.metrics.messages_out.inc_by(acks.count);
            }
            self.settle(&acks.handle, reserve);
        }
    }
}
