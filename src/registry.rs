//! The registry: canonical topic name -> `Addr<TopicActor>`. It starts topics
//! lazily on a small pool of arbiters, stops them once idle past their replay
//! window, and knows every open session so shutdown can reach them all.
//!
//! Every subscribe, unsubscribe and publish is routed through here. That keeps
//! the idle sweep race-free: a message forwarded to a topic always reaches it
//! before a later `StopIfIdle`, and while a sweep waits for its answers the
//! registry forwards nothing, so no message can reach a topic that stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::clock;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::outbox::keepalive::{Keepalive, Watched};
use crate::outbox::messages::{ConnId, Disconnect, FrameKind};
use crate::protocol::{ProtocolError, server};
use crate::topic::TopicActor;
use crate::topic::TopicName;
use crate::topic::actor::{TopicSettings, Tracking};
use crate::topic::messages::{
    Publish, PublishReply, Published, ReadTable, Refilter, StopIfIdle, Subscribe, Track,
    Unsubscribe, UnsubscribeReply, Untrack,
};

pub struct Registry {
    topics: HashMap<Arc<str>, Addr<TopicActor>>,
    /// Open sessions; each removes itself when it stops.
    sessions: HashMap<ConnId, Watched>,
    /// Pings every session, and ends the silent and the expired.
    keepalive: Keepalive,
    /// Topic actors are spread over these threads, round robin.
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    topic_settings: TopicSettings,
    /// The change tracker and database, handed to table topics.
    tracking: Tracking,
    history: HistoryRetention,
    /// Live topics this node runs at most; past it, new topics are refused
    /// (`unavailable`) until idle ones stop.
    max_topics: usize,
    /// One handle for every topic to share.
    metrics: Arc<Metrics>,
}

/// How much message history each topic keeps; enforced by a periodic job on
/// the blocking pool, never in the publish path.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRetention {
    pub max_messages: i64,
    pub max_age: Duration,
}

impl HistoryRetention {
    fn period(&self) -> Duration {
        (self.max_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Registry {
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        topic_settings: TopicSettings,
        tracking: Tracking,
        history: HistoryRetention,
        max_topics: usize,
        keepalive: Keepalive,
        metrics: Metrics,
    ) -> Self {
        Registry {
            topics: HashMap::new(),
            sessions: HashMap::new(),
            keepalive,
            arbiters,
            next_arbiter: 0,
            topic_settings,
            tracking,
            history,
            max_topics,
            metrics: Arc::new(metrics),
        }
    }

    fn keep_sessions_alive(&mut self) {
        let (now, unix_now) = (clock::uptime_ms(), clock::unix_now());
        for watched in self.sessions.values_mut() {
            self.keepalive.check(watched, now, unix_now);
        }
    }

    fn prune_history(&self) {
        let (db, retention) = (self.tracking.db.clone(), self.history);
        actix::spawn(async move {
            let cutoff = crate::clock::now_ms() - retention.max_age.as_millis() as i64;
            let pruned = db
                .run(move |conn| crate::history::prune(conn, cutoff, retention.max_messages))
                .await;
            match pruned {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "message history pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning message history failed"),
            }
        });
    }

    /// The running topic, started if needed and the node has room for it.
    /// Borrowed: cloning an actix `Addr` allocates twice, and this is on
    /// every publish's path.
    fn topic(&mut self, name: &TopicName) -> Result<&Addr<TopicActor>, ProtocolError> {
        if !self.topics.contains_key(name.as_str()) {
            self.start_topic(name)?;
        }
        Ok(&self.topics[name.as_str()])
    }

    fn start_topic(&mut self, name: &TopicName) -> Result<(), ProtocolError> {
        if self.topics.len() >= self.max_topics {
            let error = ProtocolError::unavailable(format!(
                "this node runs its limit of {} topics (--max-topics)",
                self.max_topics
            ));
            self.metrics.error(error.code);
            return Err(error);
        }
        let actor = TopicActor::new(
            name.clone(),
            self.topic_settings,
            self.tracking.clone(),
            self.metrics.clone(),
        );
        let addr = if self.arbiters.is_empty() {
            actor.start()
        } else {
            self.next_arbiter = (self.next_arbiter + 1) % self.arbiters.len();
            TopicActor::start_in_arbiter(&self.arbiters[self.next_arbiter], |_| actor)
        };
        self.topics.insert(name.shared(), addr);
        Ok(())
    }

    /// How often idle topics are looked for: often enough that a topic outlives
    /// its replay window by at most half of it, never more than every 30 s.
    fn sweep_period(&self) -> Duration {
        (self.topic_settings.replay_ttl / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let asks: Vec<_> = self
            .topics
            .iter()
            .map(|(name, addr)| {
                let name = name.clone();
                let answer = addr.send(StopIfIdle);
                async move { (name, answer.await.unwrap_or(true)) }
            })
            .collect();
        if asks.is_empty() {
            return;
        }
        // `wait`: forward nothing until the answers are in (see the module doc).
        ctx.wait(join_all(asks).into_actor(self).map(|answers, registry, _| {
            for (name, stopped) in answers {
                if stopped {
                    registry.topics.remove(&name);
                }
            }
        }));
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_period(), |registry, ctx| registry.sweep(ctx));
        ctx.run_interval(self.keepalive.period(), |registry, _| {
            registry.keep_sessions_alive()
        });
        self.tracking.tracker.prune();
        ctx.run_interval(self.history.period(), |registry, _| {
            registry.prune_history()
        });
        ctx.run_interval(self.tracking.prune_every, |registry, _| {
            registry.tracking.tracker.prune()
        });
    }
}

/// Subscribe a connection to a topic, starting the topic if needed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeTo {
    pub topic: TopicName,
    pub subscribe: Subscribe,
}

impl Handler<SubscribeTo> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SubscribeTo, _ctx: &mut Self::Context) {
        match self.topic(&msg.topic) {
            Ok(topic) => topic.do_send(msg.subscribe),
            Err(error) => {
                let refused = msg.subscribe;
                let frame =
                    server::error(refused.reference.as_ref(), Some(&refused.spelling), &error);
                let kind = FrameKind::Refusal {
                    sub_id: refused.sub_id,
                };
                refused
                    .handle
                    .outbox
                    .deliver(&msg.topic.shared(), kind, &frame);
            }
        }
    }
}

/// Read a table topic's rows at a cut (the HTTP API), starting the topic if
/// needed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadTableOf {
    pub topic: TopicName,
    pub read: ReadTable,
}

impl Handler<ReadTableOf> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ReadTableOf, _ctx: &mut Self::Context) {
        match self.topic(&msg.topic) {
            Ok(topic) => topic.do_send(msg.read),
            Err(error) => {
                let _ = msg.read.reply.send(Err(error));
            }
        }
    }
}

/// End a connection's subscription to a topic, if the topic runs; `reply`
/// answers the client's `unsubscribe` either way.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UnsubscribeFrom {
    pub topic: Arc<str>,
    pub conn: ConnId,
    pub reply: Option<UnsubscribeReply>,
}

impl Handler<UnsubscribeFrom> for Registry {
    type Result = ();

    fn handle(&mut self, msg: UnsubscribeFrom, _ctx: &mut Self::Context) {
        match self.topics.get(&msg.topic) {
            Some(addr) => addr.do_send(Unsubscribe {
                conn: msg.conn,
                reply: msg.reply,
            }),
            None => {
                if let Some(reply) = msg.reply {
                    reply.send();
                }
            }
        }
    }
}

/// Publish to a topic, starting it if needed. Forwarded with `do_send`, so
/// one sender's publishes reach the topic in the order sent.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct PublishTo {
    pub topic: TopicName,
    pub publish: Publish,
}

impl Handler<PublishTo> for Registry {
    type Result = ();

    fn handle(&mut self, msg: PublishTo, _ctx: &mut Self::Context) {
        match self.topic(&msg.topic) {
            Ok(topic) => topic.do_send(msg.publish),
            Err(error) => msg.publish.reply.failed(error, &self.metrics),
        }
    }
}

/// Publishes at once (so calls keep their order) and returns the outcome to await.
pub fn publish(
    registry: &Addr<Registry>,
    topic: TopicName,
    mut publish: Publish,
) -> impl Future<Output = Result<Published, ProtocolError>> + 'static {
    let (reply, outcome) = PublishReply::to_waiter();
    publish.reply = reply;
    registry.do_send(PublishTo { topic, publish });
    async move {
        outcome
            .await
            .map_err(|_| ProtocolError::unavailable("the topic stopped before publishing"))?
    }
}

/// A command for a running topic. If the topic does not run, a request
/// from a client is answered here: there is no presence to end, and none
/// to start without a subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForTopic {
    pub topic: Arc<str>,
    pub message: TopicCommand,
}

pub enum TopicCommand {
    Track(Track),
    Untrack(Untrack),
    Refilter(Refilter),
}

impl Handler<ForTopic> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ForTopic, _ctx: &mut Self::Context) {
        let Some(addr) = self.topics.get(&msg.topic) else {
            match msg.message {
                TopicCommand::Track(track) => {
                    let error = ProtocolError::bad_request(format!(
                        "subscribe to `{}` before tracking presence there",
                        msg.topic
                    ));
                    self.metrics.error(error.code);
                    let reference = track.ack.reference.as_ref();
                    track.ack.send(&server::error(reference, None, &error));
                }
                TopicCommand::Untrack(untrack) => {
                    untrack
                        .ack
                        .send(&server::ack(untrack.ack.reference.as_ref()));
                }
                TopicCommand::Refilter(_) => {}
            }
            return;
        };
        match msg.message {
            TopicCommand::Track(track) => addr.do_send(track),
            TopicCommand::Untrack(untrack) => addr.do_send(untrack),
            TopicCommand::Refilter(refilter) => addr.do_send(refilter),
        }
    }
}

/// The running topic of that name, if any.
#[derive(Message)]
#[rtype(result = "Option<Addr<TopicActor>>")]
pub struct FindTopic {
    pub topic: Arc<str>,
}

impl Handler<FindTopic> for Registry {
    type Result = Option<Addr<TopicActor>>;

    fn handle(&mut self, msg: FindTopic, _ctx: &mut Self::Context) -> Self::Result {
        self.topics.get(&msg.topic).cloned()
    }
}

/// Every running topic, for the admin API.
#[derive(Message)]
#[rtype(result = "Vec<Addr<TopicActor>>")]
pub struct ListTopics;

impl Handler<ListTopics> for Registry {
    type Result = MessageResult<ListTopics>;

    fn handle(&mut self, _msg: ListTopics, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.topics.values().cloned().collect())
    }
}

/// A session opened: the registry keeps it alive and can end it, through
/// its outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
}

impl Handler<SessionOpened> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionOpened, _ctx: &mut Self::Context) {
        let watched = self.keepalive.watch(msg.outbox);
        self.sessions.insert(msg.conn, watched);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub conn: ConnId,
}

impl Handler<SessionClosed> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionClosed, _ctx: &mut Self::Context) {
        self.sessions.remove(&msg.conn);
    }
}

/// Tell every session to close with 1012. Answers how many were told.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ShutdownSessions;

impl Handler<ShutdownSessions> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: ShutdownSessions, _ctx: &mut Self::Context) -> usize {
        for watched in self.sessions.values() {
            watched.outbox.disconnect(Disconnect::Shutdown);
        }
        self.sessions.len()
    }
}

/// How many sessions are still open.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSessions;

impl Handler<CountSessions> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: CountSessions, _ctx: &mut Self::Context) -> usize {
        self.sessions.len()
    }
}

/// Every open session, to describe for the admin API.
#[derive(Message)]
#[rtype(result = "Vec<Arc<Outbox>>")]
pub struct ListSessions;

impl Handler<ListSessions> for Registry {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, _msg: ListSessions, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.sessions.values().map(|s| s.outbox.clone()).collect())
    }
}

/// Close the session clients know as `wire_id` (4003); answers whether it was open.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct KickSession {
    pub wire_id: String,
}

impl Handler<KickSession> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: KickSession, _ctx: &mut Self::Context) -> bool {
        let Ok(wire_id) = uuid::Uuid::try_parse(&msg.wire_id) else {
            return false;
        };
        let found = self
            .sessions
            .iter()
            .find(|(_, s)| *s.outbox.wire_id().as_uuid() == wire_id)
            .map(|(conn, _)| *conn);
        // Gone from the list at once: it is closing, whatever its client does.
        match found.and_then(|conn| self.sessions.remove(&conn)) {
            Some(watched) => {
                watched.outbox.disconnect(Disconnect::Kicked);
                true
            }
            None => false,
        }
    }
}
