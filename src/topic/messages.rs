//! Messages a topic actor answers: from sessions (through the registry) and
//! from the HTTP API.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::changes::{Change, Filter};
use crate::protocol::ProtocolError;
use crate::session::messages::{ConnId, Disconnect};
use crate::session::outbound::Outbox;

/// Where a topic sends one subscriber's frames.
#[derive(Clone)]
pub struct SubscriberHandle {
    /// Frames go straight into the session's outbox, and through it the
    /// session is told when it must end.
    pub outbox: Arc<Outbox>,
}

impl SubscriberHandle {
    /// Writes an answer to one of the client's requests, from outside the
    /// client's session (a topic, the registry).
    pub fn reply(&self, frame: &bytestring::ByteString) {
        if self.outbox.send_own(frame) == crate::session::outbound::Reserve::BecameSlow {
            self.outbox.disconnect(Disconnect::TooSlow);
        }
    }
}

/// Add or replace a connection's subscription. The topic answers on the
/// subscriber's own channel: `subscribed`, then any replayed events, so the
/// client sees them in that order before live events.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub conn: ConnId,
    pub sub_id: u64,
    /// The topic as this client spelled it; every frame to it uses this.
    pub spelling: Arc<str>,
    pub reference: Option<Value>,
    pub echo: bool,
    /// Resume after this seq, when `epoch` is the topic's.
    pub since: Option<u64>,
    pub epoch: Option<String>,
    /// Table topics: the rows this subscriber sees (the token's forced filter included).
    pub filter: Filter,
    /// Pub/sub topics: deliver the last N stored messages first.
    pub history: Option<u32>,
    pub handle: SubscriberHandle,
}

/// End a connection's subscription. With `reply`, the topic answers the
/// client's `unsubscribe` itself, so that the answer follows the
/// `subscribed` of any subscribe still in flight before it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub conn: ConnId,
    pub reply: Option<UnsubscribeReply>,
}

/// Where and how to answer an `unsubscribe`.
#[derive(Clone)]
pub struct UnsubscribeReply {
    pub reference: Option<Value>,
    /// The topic as the client spelled it in its `unsubscribe`.
    pub spelling: Arc<str>,
    pub handle: SubscriberHandle,
}

impl UnsubscribeReply {
    /// Writes the `unsubscribed` frame to the client.
    pub fn send(&self) {
        let frame =
            crate::protocol::server::unsubscribed(self.reference.as_ref(), &self.spelling, None);
        self.handle.reply(&frame);
    }
}

impl std::fmt::Debug for UnsubscribeReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsubscribeReply")
            .field("reference", &self.reference)
            .finish()
    }
}

/// Publish an event to every subscriber. Sent with `do_send` all the way
/// (a `send` to a full mailbox is held back and can be overtaken), so events
/// keep the order their publisher sent them in; the outcome comes back on
/// `reply`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Publish {
    pub event: String,
    pub data: Value,
    /// The publisher's identity (`userId` in the event); none for server emits.
    pub user_id: Option<Arc<str>>,
    /// The publishing connection, so `echo: false` subscribers can skip their own.
    pub publisher: Option<ConnId>,
    /// Store the message (history) before acking and delivering it.
    pub persist: bool,
    /// Part of a token stream: kept for late joiners while the stream runs.
    pub stream: Option<StreamPart>,
    /// Where to send the `ack`, ahead of the publisher's own echo.
    pub ack: Option<AckTo>,
    /// Where the outcome goes; dropped unanswered if the topic is gone.
    pub reply: Option<tokio::sync::oneshot::Sender<Result<Published, ProtocolError>>>,
}

/// A client's ack, sent by the topic through the client's own channel so
/// that it always precedes the event its request causes (a publish's echo,
/// a track's `presence:join`), and every later request of the client
/// reaches the topic after this one.
#[derive(Clone)]
pub struct AckTo {
    pub reference: Option<Value>,
    /// The client's own `id` for a published message, echoed back.
    pub id: Option<Value>,
    pub handle: SubscriberHandle,
}

impl AckTo {
    /// Writes `frame`, an answer to the client's request, to the client.
    pub fn send(&self, frame: &bytestring::ByteString) {
        self.handle.reply(frame);
    }
}

impl std::fmt::Debug for AckTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTo")
            .field("reference", &self.reference)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The stored message's id, when persisted.
    pub message_id: Option<String>,
}

/// One topic's figures, for `GET /admin/topics`.
#[derive(Message)]
#[rtype(result = "TopicInfo")]
pub struct GetTopicInfo;

#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    pub topic: String,
    pub kind: &'static str,
    pub subscribers: usize,
    pub presence: usize,
    pub seq: u64,
}

/// Asked by the registry: stop if no one is subscribed and the replay window
/// has passed. Answers whether the topic stopped.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct StopIfIdle;

/// A table's committed changes, in seq order, from the change tracker.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TableChanged {
    pub changes: Vec<Change>,
}

/// Add or replace a subscribed connection's presence entry.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Track {
    pub conn: ConnId,
    /// The identity, or the wire connection id when anonymous.
    pub key: String,
    pub wire_conn: String,
    pub state: serde_json::Map<String, Value>,
    pub ack: AckTo,
}

/// End a connection's presence entry.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Untrack {
    pub conn: ConnId,
    pub ack: AckTo,
}

/// The presence snapshot, `{"<key>":[{"conn","state"}]}`.
#[derive(Message, Debug)]
#[rtype(result = "Value")]
pub struct GetPresence;

/// A publish's place in a token stream (`POST /api/realtime/stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPart {
    /// A token: kept so that a subscriber joining mid-stream gets it first.
    Token { stream: Arc<str> },
    /// The stream's end: its tokens are no longer kept.
    Done { stream: Arc<str> },
}

/// Replace a table subscriber's filter (its token changed).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Refilter {
    pub conn: ConnId,
    pub filter: Filter,
}
