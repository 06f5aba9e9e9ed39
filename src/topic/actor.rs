//! `TopicActor`: one per live topic. It owns the subscriber set (each with its
//! spelling, options and filter), the topic's `seq` and `epoch`, and, for a
//! pub/sub topic, the replay ring. A table topic gets its events from the
//! change tracker and resumes clients from the change log. Each event is
//! encoded once; subscribers that spelled the topic alike share its bytes.

mod acks;
mod cluster;
mod delivery;
mod storing;
mod subscribing;

use self::delivery::FlushAfterEachTurn;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use compact_str::CompactString;
use thin_vec::ThinVec;

use super::fanout::{Audience, PendingEvent, SplitPolicy};
use super::members::Members;
use super::messages::StreamPart;
use super::messages::{
    AckTo, GetPresence, GetTopicInfo, Publish, Published, ReadTable, Refilter, StopIfIdle,
    Subscribe, SubscriberHandle, TableChanged, TableRows, TopicInfo, Track, Unsubscribe, Untrack,
};
use super::name::{TopicKind, TopicName};
use super::presence::Presence;
use super::replay::ReplayRing;
use super::spellings::Spellings;
use super::streams::RunningStreams;
use crate::backend::webhooks::{Happening, Webhooks};
use crate::broker::ClusterLink;
use crate::changes::poller::Tracker;
use crate::changes::{Change, Filter, TableShape};
use crate::clock::now_ms;
use crate::db::Database;
use crate::history::HistoryWriter;
use crate::history::{NewMessage, StoredMessage};
use crate::metrics::Metrics;
use crate::outbox::messages::{ConnId, FrameKind};
use crate::protocol::ProtocolError;
use crate::protocol::server::{self, TopicFrame};

/// Most changes a resuming table subscriber is sent from the log; further
/// behind, it is told `recovered: false` and should reload.
pub const MAX_TABLE_CATCH_UP: i64 = 10_000;

/// One subscription, as the topic keeps it: 32 bytes, as a topic with
/// thousands of subscribers holds thousands.
struct Subscriber {
    sub_id: u64,
    filter: Filter,
    handle: SubscriberHandle,
    /// How the client spelled the topic (see [`Spellings`]).
    spelling: u8,
    echo: bool,
}

/// What every topic is configured with.
#[derive(Debug, Clone, Copy)]
pub struct TopicSettings {
    /// Events a pub/sub topic keeps for resuming clients, and for how long.
    pub replay_size: usize,
    pub replay_ttl: Duration,
    /// From this many subscribers on, a batch is sent from two threads.
    pub fanout_split_at: usize,
    /// From this many on, it is while the topic's sends keep a thread busy.
    pub fanout_busy_split_at: usize,
}

/// What a table topic needs from the change tracker and the database.
#[derive(Clone)]
pub struct Tracking {
    pub tracker: Tracker,
    pub db: Database,
    /// Stores persisted publishes, every topic's in shared commits.
    pub history: HistoryWriter,
    /// How often the registry asks the tracker to prune the change log.
    pub prune_every: Duration,
    /// The cluster, with `--redis-url`: pub/sub topics go through it.
    pub cluster: Option<ClusterLink>,
    /// `--snapshot-page-rows` and `--max-snapshot-rows`.
    pub snapshot_page_rows: usize,
    pub max_snapshot_rows: usize,
    /// What the app's backend is told of (occupancy, presence).
    pub webhooks: Webhooks,
}

struct TableState {
    tracking: Tracking,
    /// Known once the tracker watches the table.
    shape: Option<TableShape>,
}

pub struct TopicActor {
    name: TopicName,
    /// A pub/sub topic's epoch changes whenever its seq starts again (a new
    /// actor); a table topic's is the database's, stable across restarts.
    /// Inline (a pub/sub topic's is 16 characters): no allocation of its own.
    epoch: CompactString,
    seq: u64,
    subscribers: Members<Subscriber>,
    /// Events of this mailbox turn, not sent yet. The lists here are
    /// `ThinVec`s (one pointer while empty): a topic is idle most of its life.
    pending: ThinVec<PendingEvent>,
    /// Whether a batch is sent from two threads.
    split: SplitPolicy,
    replay: ReplayRing,
    /// Boxed, like `shared`: most topics are pub/sub topics of one node,
    /// and an idle topic should cost little (one per user is common).
    table: Option<Box<TableState>>,
    presence: Presence,
    /// How subscribers spelled the topic, beyond its canonical name.
    spellings: Spellings,
    /// Token streams in progress, for subscribers who join mid-stream.
    streams: RunningStreams,
    /// Where history is read from (and table changes).
    db: Database,
    /// Where persisted publishes are stored.
    history: HistoryWriter,
    /// Last subscribe, unsubscribe or event: the idle clock starts here.
    last_active: Instant,
    /// Shared by every topic (one pointer each, not a copy of every handle).
    metrics: Arc<Metrics>,
    /// A topic of a cluster: what it shares through the broker (a table
    /// topic, only its presence).
    shared: Option<Box<cluster::Shared>>,
    /// This turn's publishes waiting for their group's store (`storing`).
    unstored: ThinVec<storing::Unstored>,
    /// This turn's acks, per connection (`acks`).
    acks: ThinVec<acks::TurnAcks>,
    /// Where occupancy and presence are told to the app's backend.
    webhooks: Webhooks,
}

impl TopicActor {
    pub fn new(
        name: TopicName,
        settings: TopicSettings,
        tracking: Tracking,
        metrics: Arc<Metrics>,
    ) -> Self {
        let db = tracking.db.clone();
        let history = tracking.history.clone();
        let webhooks = tracking.webhooks.clone();
        // A table topic shares only its presence: its changes come from
        // the shared database, numbered there.
        let shared = tracking
            .cluster
            .clone()
            .map(|link| Box::new(cluster::Shared::new(link)));
        let table = match name.kind() {
            TopicKind::Table => Some(Box::new(TableState {
                tracking,
                shape: None,
            })),
            TopicKind::PubSub => None,
        };
        let epoch = match &table {
            Some(t) => CompactString::from(t.tracking.db.epoch()),
            None => {
                let mut id = uuid::Uuid::encode_buffer();
                let id = uuid::Uuid::new_v4().simple().encode_lower(&mut id);
                CompactString::from(&id[..16])
            }
        };
        TopicActor {
            name,
            epoch,
            seq: 0,
            subscribers: Members::default(),
            pending: ThinVec::new(),
            replay: ReplayRing::new(settings.replay_size, settings.replay_ttl),
            split: SplitPolicy::new(settings.fanout_split_at, settings.fanout_busy_split_at),
            table,
            presence: Presence::default(),
            spellings: Spellings::default(),
            streams: RunningStreams::default(),
            db,
            history,
            last_active: Instant::now(),
            metrics,
            shared,
            unstored: ThinVec::new(),
            acks: ThinVec::new(),
            webhooks,
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn).is_some() {
            self.metrics.subscriptions.dec();
            if self.subscribers.is_empty() {
                self.tell_occupancy(false);
            }
        }
        self.forget_shared(conn);
        self.untrack(conn);
        self.last_active = Instant::now();
    }

    /// Acks a track or untrack; the presence event it causes follows.
    fn ack_presence(&self, ack: &AckTo) {
        let frame = server::ack(ack.reference.as_ref());
        self.send_to(&ack.handle, FrameKind::Reply, frame);
    }

    /// Ends a connection's presence, telling every subscriber.
    fn untrack(&mut self, conn: ConnId) {
        if let Some(left) = self.presence.remove(conn) {
            self.tell_presence_left(&left);
            let frame = TopicFrame::presence("presence:leave", &left, now_ms());
            self.fan_out(frame, Audience::Everyone);
        }
    }

    /// Tells the app's backend the topic got its first subscriber, or lost
    /// its last.
    ///
    /// In a cluster the broker records this node's change and tells it only
    /// if it made the topic occupied (or vacant) cluster-wide.
    fn tell_occupancy(&self, occupied: bool) {
        if !self.webhooks.is_on() {
            return;
        }
        let link = match (&self.shared, &self.table) {
            (Some(shared), _) => Some(&shared.link),
            (None, Some(table)) => table.tracking.cluster.as_ref(),
            (None, None) => None,
        };
        match link {
            // The broker tells it, as Redis decides (see `Broker::on_told`).
            Some(link) => link.broker.occupancy(self.name.as_str(), occupied),
            None => self.webhooks.record(Happening::Occupancy {
                topic: self.name.to_string(),
                occupied,
            }),
        }
    }

    /// Tells the app's backend a key got its first entry (`joined`, with
    /// the change's data `{key, conn, state}`).
    fn tell_presence_joined(&self, joined: &serde_json::Value) {
        self.tell_presence(joined, true);
    }

    /// Tells the app's backend if the entry that `left` (`{key, conn,
    /// state}`) was its key's last.
    fn tell_presence_left(&self, left: &serde_json::Value) {
        let key = left["key"].as_str().unwrap_or_default();
        if !self.presence.has_key(key) {
            self.tell_presence(left, false);
        }
    }

    fn tell_presence(&self, change: &serde_json::Value, joined: bool) {
        if !self.webhooks.is_on() {
            return;
        }
        self.webhooks.record(Happening::Presence {
            topic: self.name.to_string(),
            key: change["key"].as_str().unwrap_or_default().to_string(),
            state: change["state"].as_object().cloned().unwrap_or_default(),
            joined,
        });
    }

    fn publish_change(&mut self, change: Change) {
        let frame = TopicFrame::db_change(&change);
        self.fan_out(frame, Audience::Change(change));
    }
}

impl Actor for TopicActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(FlushAfterEachTurn);
        if self.shared.is_some() {
            // Nothing is handled before the topic knows where it stands.
            self.when_joined(ctx, |topic, _, joined| {
                if let Err(error) = joined {
                    tracing::warn!(topic = %topic.name, %error, "cannot join the topic yet");
                }
            });
        }
        self.metrics.topics.inc();
        tracing::debug!(topic = %self.name, epoch = %self.epoch, "topic started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.flush_fan_out();
        if let Some(shared) = &self.shared {
            shared.leave(self.name.as_str());
        }
        self.metrics.topics.dec();
        self.metrics
            .subscriptions
            .sub(self.subscribers.len() as i64);
        tracing::debug!(topic = %self.name, "topic stopped");
    }
}

impl Handler<Subscribe> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) {
        self.flush_fan_out();
        self.last_active = Instant::now();
        match self.name.kind() {
            TopicKind::PubSub if self.shared.is_some() => {
                self.when_joined(ctx, |topic, ctx, joined| match joined {
                    Ok(()) => topic.subscribe_pubsub(msg, ctx),
                    Err(error) => topic.refuse(&msg, error),
                })
            }
            TopicKind::PubSub => self.subscribe_pubsub(msg, ctx),
            TopicKind::Table => self.subscribe_table(msg, ctx),
        }
    }
}

impl Handler<Unsubscribe> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        self.flush_fan_out();
        self.remove(msg.conn);
        if let Some(reply) = msg.reply {
            reply.send();
        }
    }
}

impl Handler<Publish> for TopicActor {
    type Result = ();

    /// A persisted publish is stored, with the others of its turn, before
    /// it is acked or delivered (`storing`); in a cluster the broker numbers
    /// it (`cluster`).
    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        if self.name.kind() == TopicKind::Table {
            msg.reply.failed(
                ProtocolError::forbidden("table topics receive database changes only"),
                &self.metrics,
            );
            return;
        }
        if self.shared.is_some() {
            return self.publish_shared(msg, ctx);
        }
        self.publish_local(msg);
    }
}

impl TopicActor {
    /// A publish as the message history stores it.
    fn to_store(&self, msg: &Publish, at_ms: i64, seq: i64) -> NewMessage {
        NewMessage {
            room_id: self.name.to_string(),
            user_id: msg.user_id.as_deref().map(str::to_owned),
            event: msg.event.clone(),
            data: msg.data.to_string(),
            created_at: at_ms,
            seq,
        }
    }

    /// Acks the publisher, delivers the event, keeps it for resuming clients.
    fn complete_publish(&mut self, msg: Publish, seq: u64, at_ms: i64, message_id: Option<String>) {
        self.send_publish_ack(&msg.reply, seq, message_id.as_deref());
        let frame = TopicFrame::published(
            self.name.as_str(),
            &msg.event,
            &msg.data,
            msg.user_id.as_deref(),
            at_ms,
            seq,
            message_id.as_deref(),
        );
        self.announce(seq, frame, msg.publisher, msg.stream.as_ref());
        self.metrics.events_published.inc();
        msg.reply.published(Published { seq, message_id });
    }

    /// Sends a publisher's `ack` (when it asked with a `ref`).
    fn send_publish_ack(
        &mut self,
        reply: &crate::topic::messages::PublishReply,
        seq: u64,
        message_id: Option<&str>,
    ) {
        if let Some(ack) = reply.client() {
            let frame =
                server::publish_ack(ack.reference.as_ref(), ack.id.as_ref(), seq, message_id);
            self.queue_ack(&ack.handle, frame);
        }
    }

    /// Delivers event `seq` to the subscribers, keeps it for resuming
    /// clients (and, in a stream, for late joiners).
    fn announce(
        &mut self,
        seq: u64,
        frame: TopicFrame,
        publisher: Option<ConnId>,
        stream: Option<&StreamPart>,
    ) {
        self.fan_out(frame.clone(), Audience::Publish { publisher });
        match stream {
            Some(StreamPart::Token { stream }) => self.streams.keep(stream, frame.clone()),
            Some(StreamPart::Done { stream }) => self.streams.end(stream),
            None => {}
        }
        self.replay.push(seq, frame, Instant::now());
        self.last_active = Instant::now();
    }
}

/// A stored message as an `event` frame (history on subscribe).
fn stored_event(message: &StoredMessage) -> TopicFrame {
    TopicFrame::published(
        &message.room_id,
        &message.event,
        &message.data_value(),
        message.user_id.as_deref(),
        message.created_at,
        message.seq as u64,
        Some(&message.id()),
    )
}

impl Handler<Track> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Track, ctx: &mut Self::Context) {
        if !self.subscribers.contains_key(&msg.conn) {
            // The subscription was refused (or ended) after the session
            // checked it.
            let error = ProtocolError::bad_request(format!(
                "subscribe to `{}` before tracking presence there",
                self.name
            ));
            self.metrics.error(error.code);
            msg.ack
                .send(&server::error(msg.ack.reference.as_ref(), None, &error));
            return;
        }
        if self.shared.is_some() {
            return self.track_shared(msg, ctx);
        }
        self.ack_presence(&msg.ack);
        // What the backend is told: the key's first entry joins; a key this
        // connection moves away from may have lost its last.
        let replaced = self.presence.remove(msg.conn);
        let key_was_here = self.presence.has_key(&msg.key);
        let joined = self
            .presence
            .track(&msg.key, msg.conn, &msg.wire_conn, msg.state);
        if let Some(replaced) = replaced.filter(|r| r["key"] != msg.key.as_str()) {
            self.tell_presence_left(&replaced);
        }
        if !key_was_here {
            self.tell_presence_joined(&joined);
        }
        let frame = TopicFrame::presence("presence:join", &joined, now_ms());
        self.fan_out(frame, Audience::Everyone);
    }
}

impl Handler<Refilter> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Refilter, _ctx: &mut Self::Context) {
        // Events queued before the new filter go out under the old one.
        self.flush_fan_out();
        if let Some(subscriber) = self.subscribers.get_mut(&msg.conn) {
            subscriber.filter = msg.filter;
        }
    }
}

impl Handler<Untrack> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Untrack, ctx: &mut Self::Context) {
        if self.shared.is_some() {
            return self.untrack_shared(msg, ctx);
        }
        self.ack_presence(&msg.ack);
        self.untrack(msg.conn);
    }
}

impl Handler<GetPresence> for TopicActor {
    type Result = MessageResult<GetPresence>;

    fn handle(&mut self, _msg: GetPresence, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.presence.snapshot())
    }
}

impl Handler<TableChanged> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: TableChanged, _ctx: &mut Self::Context) {
        for change in msg.changes {
            // Changes up to the seq reported at subscription were committed
            // before it; the tracker may still be behind that point.
            if change.seq <= self.seq {
                continue;
            }
            self.seq = change.seq;
            self.last_active = Instant::now();
            self.publish_change(change);
        }
    }
}

impl Handler<ReadTable> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: ReadTable, ctx: &mut Self::Context) {
        self.flush_fan_out();
        self.last_active = Instant::now();
        let ReadTable { filter, reply } = msg;
        self.when_watched(ctx, move |topic, ctx, watched| {
            if let Err(error) = watched {
                let _ = reply.send(Err(error));
                return;
            }
            let whole = |snapshot: crate::changes::snapshot::Snapshot| snapshot;
            topic.take_snapshot(filter, ctx, whole, move |topic, taken| {
                let rows = taken.map(|(seq, snapshot, _)| TableRows {
                    seq,
                    epoch: topic.epoch.to_string(),
                    key: snapshot.key,
                    rows: snapshot.rows,
                });
                let _ = reply.send(rows);
            });
        });
    }
}

impl Handler<GetTopicInfo> for TopicActor {
    type Result = MessageResult<GetTopicInfo>;

    fn handle(&mut self, _msg: GetTopicInfo, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(TopicInfo {
            topic: self.name.to_string(),
            kind: self.name.kind().as_str(),
            subscribers: self.subscribers.len(),
            presence: self.presence.entries(),
            seq: self.seq,
        })
    }
}

impl Handler<StopIfIdle> for TopicActor {
    type Result = bool;

    fn handle(&mut self, _msg: StopIfIdle, ctx: &mut Self::Context) -> bool {
        let idle = self.subscribers.is_empty() && self.last_active.elapsed() >= self.replay.ttl();
        if idle {
            ctx.stop();
        }
        idle
    }
}
