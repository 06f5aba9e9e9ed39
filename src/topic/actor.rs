//! `TopicActor`: one per live topic. It owns the subscriber set (each with its
//! spelling and options), the topic's `seq` and `epoch`, and the replay ring.
//! Each event is encoded once; subscribers that spelled the topic alike share
//! the same bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytestring::ByteString;

use super::messages::{
    GetTopicInfo, Publish, Published, StopIfIdle, Subscribe, SubscriberHandle, TopicInfo,
    Unsubscribe,
};
use super::name::TopicName;
use super::replay::ReplayRing;
use crate::metrics::Metrics;
use crate::protocol::ProtocolError;
use crate::protocol::server::{self, TopicFrame};
use crate::session::messages::{ClientTooSlow, ConnId, Deliver};
use crate::session::outbound::Reserve;

struct Subscriber {
    sub_id: u64,
    spelling: Arc<str>,
    echo: bool,
    handle: SubscriberHandle,
}

pub struct TopicActor {
    name: TopicName,
    /// Changes whenever this topic's seq starts again (a new actor), so a
    /// client resuming across it is told `recovered: false`.
    epoch: Arc<str>,
    seq: u64,
    subscribers: HashMap<ConnId, Subscriber>,
    replay: ReplayRing,
    replay_ttl: Duration,
    /// Last subscribe, unsubscribe or event: the idle clock starts here.
    last_active: Instant,
    metrics: Metrics,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl TopicActor {
    pub fn new(
        name: TopicName,
        replay_size: usize,
        replay_ttl: Duration,
        metrics: Metrics,
    ) -> Self {
        TopicActor {
            name,
            epoch: uuid::Uuid::new_v4().simple().to_string()[..16].into(),
            seq: 0,
            subscribers: HashMap::new(),
            replay: ReplayRing::new(replay_size, replay_ttl),
            replay_ttl,
            last_active: Instant::now(),
            metrics,
        }
    }

    /// Sends `frame` to one client unless it reads too slowly; a client that
    /// crosses its pending-bytes limit is told to close, and `false` returned.
    fn send_to(&self, handle: &SubscriberHandle, sub_id: Option<u64>, frame: ByteString) -> bool {
        match handle.gauge.reserve(frame.len()) {
            Reserve::Ok => {
                handle.deliver.do_send(Deliver {
                    topic: self.name.shared(),
                    sub_id,
                    frame,
                });
                true
            }
            Reserve::BecameSlow => {
                tracing::info!(topic = %self.name, "closing a slow consumer");
                self.metrics.slow_consumer_closes.inc();
                handle.too_slow.do_send(ClientTooSlow);
                false
            }
            Reserve::AlreadySlow => false,
        }
    }

    /// Delivers an encoded event to every subscriber (but the publisher when it
    /// asked for no echo), encoding the topic once per distinct spelling.
    fn fan_out(&mut self, frame: &TopicFrame, publisher: Option<ConnId>) {
        let mut by_spelling: Vec<(Arc<str>, ByteString)> = Vec::with_capacity(1);
        let mut slow = Vec::new();
        let mut delivered = 0;
        for (conn, sub) in &self.subscribers {
            if !sub.echo && publisher == Some(*conn) {
                continue;
            }
            let bytes = match by_spelling.iter().find(|(s, _)| *s == sub.spelling) {
                Some((_, bytes)) => bytes.clone(),
                None => {
                    let bytes = frame.for_spelling(&sub.spelling);
                    by_spelling.push((sub.spelling.clone(), bytes.clone()));
                    bytes
                }
            };
            if self.send_to(&sub.handle, Some(sub.sub_id), bytes) {
                delivered += 1;
            } else {
                slow.push(*conn);
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        for conn in slow {
            self.remove(conn);
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn).is_some() {
            self.metrics.subscriptions.dec();
        }
        self.last_active = Instant::now();
    }
}

impl Actor for TopicActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.metrics.topics.inc();
        tracing::debug!(topic = %self.name, epoch = %self.epoch, "topic started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics.topics.dec();
        self.metrics
            .subscriptions
            .sub(self.subscribers.len() as i64);
        tracing::debug!(topic = %self.name, "topic stopped");
    }
}

impl Handler<Subscribe> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        let now = Instant::now();
        self.last_active = now;
        let replayed = match (msg.since, &msg.epoch) {
            (Some(since), Some(epoch)) if **epoch == *self.epoch => {
                self.replay.after(since, self.seq, now)
            }
            _ => None,
        };
        let subscriber = Subscriber {
            sub_id: msg.sub_id,
            spelling: msg.spelling,
            echo: msg.echo,
            handle: msg.handle,
        };
        let reply = server::subscribed(
            msg.reference.as_ref(),
            &server::Subscribed {
                topic: &subscriber.spelling,
                seq: self.seq,
                epoch: &self.epoch,
                recovered: replayed.is_some(),
            },
        );
        let (handle, sub_id) = (&subscriber.handle, Some(subscriber.sub_id));
        let mut ok = self.send_to(handle, sub_id, reply);
        for frame in replayed.unwrap_or_default() {
            ok = ok && self.send_to(handle, sub_id, frame.for_spelling(&subscriber.spelling));
        }
        if ok && self.subscribers.insert(msg.conn, subscriber).is_none() {
            self.metrics.subscriptions.inc();
        }
    }
}

impl Handler<Unsubscribe> for TopicActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        self.remove(msg.conn);
    }
}

impl Handler<Publish> for TopicActor {
    type Result = Result<Published, ProtocolError>;

    fn handle(&mut self, msg: Publish, _ctx: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        self.last_active = now;
        self.seq += 1;
        if let Some(ack) = &msg.ack {
            let reply =
                server::publish_ack(ack.reference.as_ref(), ack.id.as_ref(), self.seq, None);
            self.send_to(&ack.handle, None, reply);
        }
        let frame = TopicFrame::event(
            &msg.event,
            &msg.data,
            msg.user_id.as_deref(),
            now_ms(),
            self.seq,
        );
        self.fan_out(&frame, msg.publisher);
        self.replay.push(self.seq, frame, now);
        self.metrics.events_published.inc();
        Ok(Published { seq: self.seq })
    }
}

impl Handler<GetTopicInfo> for TopicActor {
    type Result = MessageResult<GetTopicInfo>;

    fn handle(&mut self, _msg: GetTopicInfo, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(TopicInfo {
            topic: self.name.to_string(),
            kind: self.name.kind().as_str(),
            subscribers: self.subscribers.len(),
            presence: 0,
            seq: self.seq,
        })
    }
}

impl Handler<StopIfIdle> for TopicActor {
    type Result = bool;

    fn handle(&mut self, _msg: StopIfIdle, ctx: &mut Self::Context) -> bool {
        let idle = self.subscribers.is_empty() && self.last_active.elapsed() >= self.replay_ttl;
        if idle {
            ctx.stop();
        }
        idle
    }
}
