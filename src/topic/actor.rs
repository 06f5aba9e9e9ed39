//! `TopicActor`: one per live topic. It owns the subscriber set (each with its
//! spelling, options and filter), the topic's `seq` and `epoch`, and, for a
//! pub/sub topic, the replay ring. A table topic gets its events from the
//! change tracker and resumes clients from the change log. Each event is
//! encoded once; subscribers that spelled the topic alike share its bytes.

mod cluster;
mod storing;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use compact_str::CompactString;
use thin_vec::ThinVec;

use super::fanout::{Audience, Batch, Claims, End, MAX_BATCH, PendingEvent, SplitPolicy};
use super::members::Members;
use super::messages::StreamPart;
use super::messages::{
    AckTo, GetPresence, GetTopicInfo, Publish, Published, Refilter, StopIfIdle, Subscribe,
    SubscriberHandle, TableChanged, TopicInfo, Track, Unsubscribe, Untrack,
};
use super::name::{TopicKind, TopicName};
use super::presence::Presence;
use super::replay::ReplayRing;
use super::spellings::Spellings;
use super::streams::RunningStreams;
use crate::broker::ClusterLink;
use crate::cache::prefetch;
use crate::changes::poller::Tracker;
use crate::changes::{self, Change, Filter, TableShape};
use crate::clock::now_ms;
use crate::db::Database;
use crate::history::HistoryWriter;
use crate::history::{self, NewMessage, StoredMessage};
use crate::metrics::Metrics;
use crate::outbox::Reserve;
use crate::outbox::messages::{ConnId, Disconnect, FrameKind};
use crate::protocol::server::{self, TopicFrame};
use crate::protocol::{ErrorCode, ProtocolError};
use serde_json::json;

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
    /// A pub/sub topic of a cluster: what it shares through the broker.
    shared: Option<Box<cluster::Shared>>,
    /// This turn's publishes waiting for their group's store (`storing`).
    unstored: ThinVec<storing::Unstored>,
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
        let shared = match name.kind() {
            TopicKind::PubSub => tracking
                .cluster
                .clone()
                .map(|link| Box::new(cluster::Shared::new(link))),
            TopicKind::Table => None,
        };
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
        }
    }

    /// Sends `frame` to one client unless it reads too slowly; a client that
    /// crosses its pending-bytes limit is told to close, and `false` returned.
    fn send_to(&self, handle: &SubscriberHandle, kind: FrameKind, frame: ByteString) -> bool {
        let sent = self.offer(handle, kind, &frame);
        if sent {
            self.metrics.messages_out.inc();
        }
        sent
    }

    /// [`Self::send_to`] without counting the frame.
    fn offer(&self, handle: &SubscriberHandle, kind: FrameKind, frame: &ByteString) -> bool {
        let reserve = handle.outbox.deliver(self.name.as_arc(), kind, frame);
        self.settle(handle, reserve)
    }

    /// Whether a frame went; a client it found too slow is told to close.
    fn settle(&self, handle: &SubscriberHandle, reserve: Reserve) -> bool {
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
    fn fan_out(&mut self, frame: TopicFrame, audience: Audience) {
        self.pending.push(PendingEvent {
            frame,
            audience,
            accepted: Instant::now(),
        });
    }

    /// Sends every queued event. Runs after each mailbox turn, and before
    /// anything that must come after them (a new subscriber's `subscribed`
    /// carries a seq that counts them).
    fn flush_fan_out(&mut self) {
        // Taken whole (draining batch by batch from the front would move the
        // rest each time), and not kept: an idle topic holds no buffer.
        while !self.pending.is_empty() {
            let events = std::mem::take(&mut self.pending);
            for batch in events.chunks(MAX_BATCH) {
                self.send_batch(batch);
            }
        }
    }

    fn send_batch(&mut self, events: &[PendingEvent]) {
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
    fn observe_lags(&self, events: &[PendingEvent]) {
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

    fn remove(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn).is_some() {
            self.metrics.subscriptions.dec();
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
            let frame = TopicFrame::presence("presence:leave", &left, now_ms());
            self.fan_out(frame, Audience::Everyone);
        }
    }

    /// Answers a subscription with `subscribed` and the events it missed, then
    /// adds it to the live set.
    fn admit(&mut self, msg: Subscribe, recovered: bool, missed: Vec<ByteString>) {
        let spelling = self.spellings.number(self.name.as_str(), &msg.spelling);
        let spelled_as = self.spellings.of(self.name.as_arc()).get(spelling).clone();
        let subscriber = Subscriber {
            sub_id: msg.sub_id,
            spelling,
            echo: msg.echo,
            filter: msg.filter,
            handle: msg.handle,
        };
        let reply = server::subscribed(
            msg.reference.as_ref(),
            &server::Subscribed {
                topic: &spelled_as,
                seq: self.announced_seq(),
                epoch: &self.epoch,
                recovered,
            },
        );
        let (handle, kind) = (
            &subscriber.handle,
            FrameKind::Stream {
                sub_id: subscriber.sub_id,
            },
        );
        let admitted = FrameKind::Admitted {
            sub_id: subscriber.sub_id,
        };
        let mut ok = self.send_to(handle, admitted, reply);
        for frame in missed {
            ok = ok && self.send_to(handle, kind, frame);
        }
        if ok && !self.presence.is_empty() {
            let sync = TopicFrame::presence(
                "presence:sync",
                &json!({"presences": self.presence.snapshot()}),
                now_ms(),
            );
            ok = self.send_to(handle, kind, sync.for_spelling(&spelled_as));
        }
        if ok && self.subscribers.insert(msg.conn, subscriber).is_none() {
            self.metrics.subscriptions.inc();
        }
    }

    fn refuse(&self, msg: &Subscribe, error: ProtocolError) {
        self.metrics.error(error.code);
        let frame = server::error(msg.reference.as_ref(), Some(&msg.spelling), &error);
        self.send_to(
            &msg.handle,
            FrameKind::Refusal { sub_id: msg.sub_id },
            frame,
        );
    }

    /// With `history: N`, the last N stored messages come first, read under
    /// `ctx.wait` so no event can slip between them and the live ones.
    fn subscribe_pubsub(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let wanted = i64::from(msg.history.unwrap_or(0)).min(history::MAX_PAGE);
        if wanted == 0 {
            return self.admit_pubsub(msg, Vec::new(), ctx);
        }
        let (db, room) = (self.db.clone(), self.name.to_string());
        let read = async move {
            db.run(move |conn| history::latest(conn, &room, wanted))
                .await
        };
        ctx.wait(read.into_actor(self).map(move |stored, topic, ctx| {
            let frames = match stored {
                Ok(stored) => stored
                    .iter()
                    .map(|m| stored_event(m).for_spelling(&msg.spelling))
                    .collect(),
                Err(e) => {
                    tracing::warn!(topic = %topic.name, error = %e, "history read failed");
                    Vec::new()
                }
            };
            topic.admit_pubsub(msg, frames, ctx);
        }));
    }

    fn admit_pubsub(
        &mut self,
        msg: Subscribe,
        mut earlier: Vec<ByteString>,
        ctx: &mut Context<Self>,
    ) {
        // Publishes waiting for their store are not out yet: they reach
        // this subscriber when they are delivered.
        let announced = self.announced_seq();
        let resumable = match (msg.since, &msg.epoch) {
            (Some(since), Some(epoch)) if **epoch == *self.epoch && since <= announced => {
                Some(since)
            }
            _ => None,
        };
        let replayed =
            resumable.and_then(|since| self.replay.after(since, announced, Instant::now()));
        if let (None, Some(since), true) = (&replayed, resumable, self.shared.is_some()) {
            // Older than this node's ring: the cluster's replay log has it.
            return self.resume_shared(msg, since, earlier, ctx);
        }
        let recovered = replayed.is_some();
        // A resumed client has every token up to `since` and gets the rest
        // replayed; any other joiner first gets the running streams' tokens.
        let running = match recovered {
            true => Vec::new(),
            false => self.streams.tokens(),
        };
        earlier.extend(
            replayed
                .unwrap_or_default()
                .iter()
                .chain(running.iter())
                .map(|frame| frame.for_spelling(&msg.spelling)),
        );
        self.admit(msg, recovered, earlier);
    }

    /// A table subscription waits (the topic handles nothing else meanwhile)
    /// until the tracker watches the table, so every change committed after
    /// `subscribed` is delivered.
    fn subscribe_table(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let Some(table) = &self.table else {
            return self.refuse(
                &msg,
                ProtocolError::unavailable("table topics are not tracked here"),
            );
        };
        if table.shape.is_some() {
            return self.admit_to_table(msg, ctx);
        }
        let watch = table
            .tracking
            .tracker
            .watch(self.name.as_str(), ctx.address().recipient());
        ctx.wait(
            watch
                .into_actor(self)
                .map(move |answer, topic, ctx| match answer {
                    Ok(Some(watched)) => {
                        topic.seq = topic.seq.max(watched.latest_seq);
                        if let Some(table) = &mut topic.table {
                            table.shape = Some(watched.shape);
                        }
                        topic.admit_to_table(msg, ctx);
                    }
                    Ok(None) => {
                        let name = topic.name.to_string();
                        topic.refuse(
                            &msg,
                            ProtocolError::new(
                                ErrorCode::NotFound,
                                format!("there is no table `{name}`"),
                            ),
                        );
                    }
                    Err(e) => topic.refuse(
                        &msg,
                        ProtocolError::unavailable(format!("change tracker: {e}")),
                    ),
                }),
        );
    }

    fn admit_to_table(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let Some(TableState {
            tracking,
            shape: Some(shape),
        }) = self.table.as_deref()
        else {
            return;
        };
        if let Some(column) = msg.filter.unknown_column(&shape.columns) {
            let error = ProtocolError::bad_request(format!(
                "table `{}` has no column `{column}`",
                self.name
            ));
            return self.refuse(&msg, error);
        }
        let since = match (msg.since, &msg.epoch) {
            (Some(since), Some(epoch)) if **epoch == *self.epoch && since <= self.seq => since,
            _ => return self.admit(msg, false, Vec::new()),
        };
        if since == self.seq {
            return self.admit(msg, true, Vec::new());
        }
        // Catch up from the log; nothing else is handled until it is done,
        // so live changes queue behind the missed ones.
        let (db, decoder, table, up_to) = (
            tracking.db.clone(),
            shape.decoder.clone(),
            self.name.to_string(),
            self.seq,
        );
        let read = async move {
            db.run(move |conn| {
                if since < changes::pruned_through(conn)? {
                    return Ok(None);
                }
                let rows = changes::read_range(conn, &table, since, up_to, MAX_TABLE_CATCH_UP + 1)?;
                Ok((rows.len() as i64 <= MAX_TABLE_CATCH_UP).then_some(rows))
            })
            .await
        };
        ctx.wait(
            read.into_actor(self)
                .map(move |rows, topic, _ctx| match rows {
                    Ok(Some(rows)) => {
                        let missed: Vec<ByteString> = rows
                            .into_iter()
                            .filter_map(|row| row.decode(&decoder))
                            .filter(|change| change.visible_through(&msg.filter))
                            .map(|change| {
                                TopicFrame::db_change(&change).for_spelling(&msg.spelling)
                            })
                            .collect();
                        topic.admit(msg, true, missed);
                    }
                    Ok(None) => topic.admit(msg, false, Vec::new()),
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, error = %e, "resume read failed");
                        topic.admit(msg, false, Vec::new());
                    }
                }),
        );
    }

    fn publish_change(&mut self, change: Change) {
        let frame = TopicFrame::db_change(&change);
        self.fan_out(frame, Audience::Change(change));
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
/// done, runs at the end of every turn.
struct FlushAfterEachTurn;

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
    fn to_store(&self, msg: &Publish, at_ms: i64, seq: u64) -> NewMessage {
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
        if let Some(ack) = msg.reply.client() {
            let reply = server::publish_ack(
                ack.reference.as_ref(),
                ack.id.as_ref(),
                seq,
                message_id.as_deref(),
            );
            self.send_to(&ack.handle, FrameKind::Reply, reply);
        }
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
        let joined = self
            .presence
            .track(&msg.key, msg.conn, &msg.wire_conn, msg.state);
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
