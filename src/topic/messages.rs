//! Messages a topic actor answers: from sessions (through the registry) and
//! from the HTTP API.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::changes::{Change, Filter, Row};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::outbox::messages::{ConnId, Disconnect};
use crate::protocol::{ProtocolError, server};

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
        if self.outbox.send_own(frame) == crate::outbox::Reserve::BecameSlow {
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
    /// Table topics: send the matching rows as of `subscribed`'s seq first.
    pub snapshot: bool,
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
/// keep the order their publisher sent them in; the outcome goes to `reply`.
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
    /// Who hears how it ended.
    pub reply: PublishReply,
}

/// Who hears how a publish ended, once: the publishing client (its `ack`,
/// ahead of its own echo, or an `error`, through its outbox), or a caller
/// awaiting the outcome (HTTP emit and streams). A client's publish is
/// answered by the topic alone: nothing travels back to the session, so a
/// publish costs no wake-up of the session's thread. Dropped unanswered
/// (the topic stopped with the publish in its mailbox), it answers
/// `unavailable` itself.
pub struct PublishReply {
    client: Option<AckTo>,
    /// The topic as the client spelled it, for its `error` frame.
    spelling: Option<String>,
    waiter: Option<tokio::sync::oneshot::Sender<Result<Published, ProtocolError>>>,
}

impl PublishReply {
    /// The publishing client is answered (it spelled the topic `spelling`).
    pub fn to_client(ack: AckTo, spelling: String) -> Self {
        PublishReply {
            client: Some(ack),
            spelling: Some(spelling),
            waiter: None,
        }
    }

    /// The caller awaits the outcome on the receiver; if the publish is
    /// dropped unanswered, the receiver sees the sender gone.
    pub fn to_waiter() -> (
        Self,
        tokio::sync::oneshot::Receiver<Result<Published, ProtocolError>>,
    ) {
        let (waiter, outcome) = tokio::sync::oneshot::channel();
        let reply = PublishReply {
            client: None,
            spelling: None,
            waiter: Some(waiter),
        };
        (reply, outcome)
    }

    /// Nobody is told (a publish built before its caller decides).
    pub fn nobody() -> Self {
        PublishReply {
            client: None,
            spelling: None,
            waiter: None,
        }
    }

    /// Where the client's `ack` goes, if a client is waiting for one: the
    /// topic writes it itself (counted, a slow reader found out), then
    /// calls [`Self::published`].
    pub fn client(&self) -> Option<&AckTo> {
        self.client.as_ref()
    }

    /// The publish went out as `published`; the client's ack is already written.
    pub fn published(mut self, published: Published) {
        self.client = None;
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.send(Ok(published));
        }
    }

    /// The publish failed: the client gets an `error` (counted in
    /// `metrics`), a waiter the error.
    pub fn failed(mut self, error: ProtocolError, metrics: &Metrics) {
        if self.client.is_some() {
            metrics.error(error.code);
        }
        self.fail(error);
    }

    fn fail(&mut self, error: ProtocolError) {
        if let Some(ack) = self.client.take() {
            let frame = server::error(ack.reference.as_ref(), self.spelling.as_deref(), &error);
            ack.send(&frame);
        }
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.send(Err(error));
        }
    }
}

impl Drop for PublishReply {
    fn drop(&mut self) {
        if self.client.is_some() {
            self.fail(ProtocolError::unavailable(
                "the topic stopped before publishing",
            ));
        }
    }
}

impl std::fmt::Debug for PublishReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishReply")
            .field("client", &self.client)
            .field("waiter", &self.waiter.is_some())
            .finish()
    }
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

/// A table's rows matching `filter` as of one cut, for the HTTP API: read
/// as a `snapshot: true` subscribe reads them, with no subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadTable {
    pub filter: Filter,
    pub reply: tokio::sync::oneshot::Sender<Result<TableRows, ProtocolError>>,
}

/// A table's rows as of `seq`: resuming from `seq` and `epoch` gets
/// exactly the changes after them.
#[derive(Debug)]
pub struct TableRows {
    pub seq: u64,
    pub epoch: String,
    pub key: Vec<String>,
    pub rows: Vec<Row>,
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;
    use serde_json::json;

    use super::*;
    use crate::outbox::OutboxPolicy;
    use crate::socket::{Connection, test_pair, tests::RawClient};

    /// A client's publish reply, the client's end of its socket, and the
    /// server's end (kept open while the test runs).
    async fn client_reply() -> (PublishReply, RawClient, Connection) {
        let (connection, socket, client) = test_pair().await;
        let counter = IntCounter::new("t", "t").unwrap();
        let outbox = Outbox::new(socket, OutboxPolicy::new(1 << 20, 4008, counter));
        let ack = AckTo {
            reference: Some(json!("r1")),
            id: None,
            handle: SubscriberHandle {
                outbox: outbox.clone(),
            },
        };
        (
            PublishReply::to_client(ack, "Chat/Room".to_string()),
            client,
            connection,
        )
    }

    /// One text frame, short enough for a one-byte length.
    async fn frame(client: &mut RawClient) -> Value {
        let head = client.read_exactly(2).await;
        assert_eq!(head[0], 0x81);
        let body = client.read_exactly(usize::from(head[1])).await;
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn a_client_publish_the_topic_never_answered_gets_one_error_when_dropped() {
        let (reply, mut client, _connection) = client_reply().await;
        drop(reply);
        let error = frame(&mut client).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "unavailable");
        assert_eq!(error["ref"], "r1");
        assert_eq!(error["topic"], "Chat/Room", "as the client spelled it");
        client.assert_nothing_more().await;
    }

    #[tokio::test]
    async fn a_failed_publish_is_answered_once_and_an_answered_one_not_again() {
        let metrics = Metrics::new();
        let (reply, mut client, _connection) = client_reply().await;
        reply.failed(ProtocolError::forbidden("no"), &metrics);
        let error = frame(&mut client).await;
        assert_eq!(error["code"], "forbidden");
        assert_eq!(error["ref"], "r1");
        client.assert_nothing_more().await;

        let (reply, mut client, _connection) = client_reply().await;
        reply.published(Published {
            seq: 1,
            message_id: None,
        });
        client.assert_nothing_more().await;
    }

    #[tokio::test]
    async fn a_waiter_hears_the_outcome_or_that_nobody_will_answer() {
        let (reply, outcome) = PublishReply::to_waiter();
        reply.published(Published {
            seq: 7,
            message_id: None,
        });
        assert_eq!(outcome.await.unwrap().unwrap().seq, 7);
        let (reply, outcome) = PublishReply::to_waiter();
        drop(reply);
        assert!(outcome.await.is_err(), "the sender is gone");
    }
}
