//! Fan-out in batches. A topic queues the events of one turn of its mailbox
//! and sends them together when the turn ends: each subscriber gets one
//! `send` carrying every event it wants, encoded once per spelling.
//!
//! Why: a delivery's cost is almost all the kernel's work for one `send`.
//! When a topic keeps up, a turn holds one event and nothing changes; when
//! it falls behind, publishes wait in its mailbox, the next turn takes them
//! all, and the cost per event falls just when the topic needs it to.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::changes::{Change, Filter};
use crate::http::connection::put_text_frame;
use crate::protocol::server::TopicFrame;
use crate::session::messages::ConnId;

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
}

/// One spelling's encoding of a batch.
struct Spelled {
    spelling: Arc<str>,
    /// Each event as a whole WebSocket frame.
    frames: Vec<Bytes>,
    /// All of them, for the (usual) subscriber who wants every event.
    whole: Option<Bytes>,
}

/// A batch of events being sent: encodes lazily, once per spelling.
pub struct Batch<'a> {
    events: &'a [PendingEvent],
    spelled: Vec<Spelled>,
}

impl<'a> Batch<'a> {
    pub fn new(events: &'a [PendingEvent]) -> Batch<'a> {
        debug_assert!(events.len() <= MAX_BATCH);
        Batch {
            events,
            spelled: Vec::with_capacity(1),
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
    /// spelled the topic `spelling` (an interned `Arc`, compared by pointer).
    pub fn wire(&mut self, spelling: &Arc<str>, wanted: u64) -> Bytes {
        let all = self.all();
        let at = match self
            .spelled
            .iter()
            .position(|s| Arc::ptr_eq(&s.spelling, spelling))
        {
            Some(at) => at,
            None => {
                let frames = self
                    .events
                    .iter()
                    .map(|event| wire_frame(&event.frame.for_spelling(spelling)))
                    .collect();
                self.spelled.push(Spelled {
                    spelling: spelling.clone(),
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
                .get_or_insert_with(|| concat(spelled.frames.iter()))
                .clone();
        }
        let mut picked = spelled
            .frames
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted & (1 << i) != 0)
            .map(|(_, frame)| frame);
        match wanted.count_ones() {
            1 => picked.next().cloned().unwrap_or_default(),
            _ => concat(picked),
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
    use crate::protocol::server::TopicFrame;
    use serde_json::json;

    fn event(seq: u64, audience: Audience) -> PendingEvent {
        PendingEvent {
            frame: TopicFrame::event("e", &json!(seq), None, 0, seq, None),
            audience,
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
        let mut batch = Batch::new(&events);
        let (upper, lower): (Arc<str>, Arc<str>) = ("Chat/A".into(), "chat/a".into());

        let everything = batch.wanted_by(other, false, &Filter::default());
        assert_eq!(everything, 0b111);
        let wire = payloads(&batch.wire(&upper, everything));
        assert_eq!(
            wire.iter().map(|f| f["seq"].clone()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(wire.iter().all(|f| f["topic"] == "Chat/A"));

        let no_echo = batch.wanted_by(me, false, &Filter::default());
        assert_eq!(no_echo, 0b101, "no echo of its own publish");
        let wire = payloads(&batch.wire(&lower, no_echo));
        assert_eq!(
            wire.iter().map(|f| f["seq"].clone()).collect::<Vec<_>>(),
            [1, 3]
        );
        assert!(wire.iter().all(|f| f["topic"] == "chat/a"));

        assert_eq!(batch.wanted_by(me, true, &Filter::default()), 0b111);
    }
}
