//! The broker: how a pub/sub topic's events and presence reach the other
//! nodes of a cluster (docs/scaling.md). [`Broker`] is the seam; the one
//! implementation, [`redis::RedisBroker`], keeps each topic's `seq`,
//! `epoch`, replay log, presence and running token streams in Redis.
//!
//! A single node (no `--redis-url`) has no broker: its topic actors sequence
//! and deliver in-process, as they always did, with no hop added to the
//! fan-out path (`docs/adr/0004-several-nodes-through-redis.md`).
//!
//! The contract, for one topic:
//! - Order: `publish` gives a batch contiguous seqs, and every node that
//!   joined the topic receives every event as `FromBroker::Event`, the
//!   publishing node too, in seq order except across a gap.
//! - Loss: delivery is at most once. A node notices a lost event as a gap
//!   in `seq` (or an epoch it did not expect) and fills it with `replay`;
//!   what `replay` no longer holds is lost for good (answered `None`), and
//!   the node closes the affected clients with 1012 so they resume.
//!   After the link to the broker drops and comes back, every joined topic
//!   gets `FromBroker::Resync`: look for what was missed.
//! - Duplicates: an event may arrive twice (by channel and by `replay`);
//!   the seq tells them apart. A `publish` whose answer is lost (a timeout)
//!   may still have happened: its event then arrives, once, unacknowledged.
//! - Epoch: a new epoch means the broker lost the topic's past (Redis
//!   restarted empty, or a promoted replica lacks the latest events, seen
//!   as a seq behind what a node has delivered): seqs start again and no
//!   seq repeats within an epoch.
//! - Presence: `track`/`untrack` store an entry cluster-wide and announce it
//!   to every joined node as `FromBroker::Presence`, carrying the caller's
//!   [`PresenceOp`] so the requesting node knows which request an
//!   announcement answers; a node that stops beating has its entries
//!   removed, each announced once (with no op).
//! - Told once: `occupancy` records which nodes have subscribers on a
//!   topic, and track/untrack count each presence key's entries; the one
//!   call that made a topic occupied (or vacant) or a key join (or leave)
//!   cluster-wide tells it to its node's [`ToldSink`], in the order Redis
//!   decided; so does the node that reaps a dead one.
//! - Event streams (PROTOCOL §11): a stream's requests may reach any node.
//!   `open_stream` makes a stream of this node findable (with its secret),
//!   `forward` passes requests to the node holding it, which hands them to
//!   the [`RequestSink`] it gave `receive_forwarded`; `forward` answers once
//!   they are queued there, so requests forwarded one after another keep
//!   their order. A node that dies takes its streams' keys with it (reaped
//!   with its presence).

pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a broker call answers, in time.
pub type BrokerFuture<T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached, or did not answer in time.
    #[error("the cluster's broker is unavailable: {0}")]
    Unavailable(String),
}

/// An event as it travels between nodes, before and after sequencing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedEvent {
    /// The publishing node.
    #[serde(rename = "o")]
    pub origin: String,
    /// The publishing connection on that node (for `echo: false`), if any.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    /// The origin's own number for this publish, to find its ack.
    #[serde(rename = "k")]
    pub token: u64,
    #[serde(rename = "e")]
    pub event: String,
    #[serde(rename = "d")]
    pub data: Value,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Accepted at, ms since the Unix epoch.
    #[serde(rename = "t")]
    pub at_ms: i64,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Part of a token stream: its id, and whether this ends it.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamMark>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMark {
    pub id: String,
    pub done: bool,
}

/// A sequenced event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequenced {
    pub seq: u64,
    pub event: SharedEvent,
}

/// One connection's presence entry, as every node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub key: String,
    pub conn: String,
    pub state: Map<String, Value>,
    /// The node the connection is on.
    pub node: String,
}

/// Where a topic stands when a node joins it.
#[derive(Debug, Clone, Default)]
pub struct TopicState {
    pub epoch: String,
    /// The latest seq (0 when none).
    pub seq: u64,
    pub presence: Vec<PresenceEntry>,
    /// The running token streams' events so far, stream by stream, in order.
    pub stream_tokens: Vec<Sequenced>,
}

/// A node of the cluster, for `GET /admin/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub connections: u64,
    pub started_at: i64,
    pub last_seen_ms: i64,
}

/// A presence request's number, unique within its node, announced with the
/// join or leave it causes: announcements of several requests for one
/// connection may come in another order than the requests were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PresenceOp(pub u64);

/// Requests for one of this node's event streams, passed on by another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedRequests {
    pub conn: String,
    /// Each one request's JSON text, in order.
    pub requests: Vec<String>,
}

/// Where this node takes requests forwarded to its event streams: the
/// future ends once they are queued for the stream's session (or dropped,
/// the stream having ended), and only then is the forwarding node told.
pub type RequestSink =
    Arc<dyn Fn(ForwardedRequests) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a `track` or `untrack` did to presence keys, cluster-wide: the
/// broker counts each key's entries, so exactly one call sees a key get its
/// first entry or lose its last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyEdges {
    /// The tracked entry's key got its first entry.
    pub joined: bool,
    /// The entry that went (untracked, or replaced by one of another key),
    /// when its key now has none.
    pub left: Option<PresenceEntry>,
}

/// What the cluster decided, once, that the app's backend is told of: a
/// topic occupied or vacant on every node, a presence key's first entry
/// or its last gone (by a track or untrack, or a dead node reaped).
#[derive(Debug, Clone, PartialEq)]
pub enum Told {
    Occupancy {
        topic: String,
        occupied: bool,
    },
    Presence {
        topic: String,
        key: String,
        state: Map<String, Value>,
        joined: bool,
    },
}

/// Where a node hears what it told, in the order Redis decided it (so a
/// topic's occupied and vacated, say, come in the order they happened).
pub type ToldSink = Arc<dyn Fn(Told) + Send + Sync>;

/// What a topic of a cluster needs to reach it: the broker, and this node's id.
#[derive(Clone)]
pub struct ClusterLink {
    pub broker: Arc<dyn Broker>,
    pub node: Arc<str>,
}

/// What the broker tells a topic that joined.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum FromBroker {
    Event {
        epoch: Arc<str>,
        event: Sequenced,
    },
    Presence {
        joined: bool,
        entry: PresenceEntry,
        /// The `track`/`untrack` that caused it, if one passed an op.
        op: Option<PresenceOp>,
    },
    /// The link to the broker dropped and is back, or this node was taken
    /// for dead: look for missed events and re-announce local presence.
    Resync,
}

/// The seam between topics and the rest of the cluster: see the module doc
/// for what it guarantees.
pub trait Broker: Send + Sync + 'static {
    /// Starts sending `topic`'s events and presence changes to `sink`, then
    /// answers where the topic stands (creating its epoch if it has none).
    /// `seen`, on a resync, is the epoch and latest seq this node has
    /// delivered: a broker that is behind it lost events, and the topic
    /// starts a new epoch.
    fn join(
        &self,
        topic: &str,
        sink: Recipient<FromBroker>,
        seen: Option<(&str, u64)>,
    ) -> BrokerFuture<TopicState>;
    /// Stops sending `topic`'s traffic to this node.
    fn leave(&self, topic: &str);
    /// Sequences `events` (contiguous seqs, in order) and sends them to
    /// every node that joined `topic`; answers the epoch and the first seq.
    /// `seen` is as for `join`: behind it, the events go to a new epoch.
    fn publish(
        &self,
        topic: &str,
        seen: (&str, u64),
        events: Vec<SharedEvent>,
    ) -> BrokerFuture<(String, u64)>;
    /// The events with `since < seq <= up_to` of `epoch`, or `None` when
    /// they are not all kept any more (or the epoch is not the current one).
    fn replay(
        &self,
        topic: &str,
        epoch: &str,
        since: u64,
        up_to: u64,
    ) -> BrokerFuture<Option<Vec<Sequenced>>>;
    /// Adds or replaces a presence entry and announces it (with `op`);
    /// answers what that did to its keys.
    fn track(
        &self,
        topic: &str,
        entry: PresenceEntry,
        op: Option<PresenceOp>,
    ) -> BrokerFuture<KeyEdges>;
    /// Removes a connection's entry; answers whether there was one (then
    /// announced, with `op`) and what that did to its key.
    fn untrack(
        &self,
        topic: &str,
        conn: &str,
        op: Option<PresenceOp>,
    ) -> BrokerFuture<(bool, KeyEdges)>;
    /// The topic's presence entries, cluster-wide.
    fn presence(&self, topic: &str) -> BrokerFuture<Vec<PresenceEntry>>;
    /// The live nodes.
    fn nodes(&self) -> BrokerFuture<Vec<NodeInfo>>;
    /// Whether the broker answered lately.
    fn is_up(&self) -> bool;
    /// Makes this node's event stream `conn` reachable from every node, for
    /// requests that come with `secret`.
    fn open_stream(&self, conn: &str, secret: &str) -> BrokerFuture<()>;
    /// Stream `conn` of this node has ended.
    fn close_stream(&self, conn: &str);
    /// Passes `requests` to the node holding stream `conn`, if `secret` is
    /// its secret; answers whether a node took them, once it has queued
    /// them (an error when it does not say so in time).
    fn forward(&self, conn: &str, secret: &str, requests: Vec<String>) -> BrokerFuture<bool>;
    /// Hands requests forwarded to this node's streams to `sink` from now on.
    fn receive_forwarded(&self, sink: RequestSink);
    /// This node has subscribers on `topic` now (`occupied`), or none; when
    /// that made the topic occupied (or vacant) cluster-wide, or the broker
    /// cannot say, it is told.
    fn occupancy(&self, topic: &str, occupied: bool);
    /// Hands what this node's calls and reaping decide to `sink` from now
    /// on ([`Told`]): occupancy, and the key edges of track and untrack.
    fn on_told(&self, sink: ToldSink);
}
