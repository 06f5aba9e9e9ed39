//! [`RedisBroker`]: the cluster's shared state in Redis (docs/scaling.md).
//!
//! Two connections, both redis-rs `ConnectionManager`s that reconnect by
//! themselves: one multiplexed for commands and scripts, one RESP3 for
//! pub/sub, whose pushes are routed straight to the joined topics' actors.
//! Their I/O runs on a thread of its own (`realtide-redis`), so a slow Redis
//! never holds up an actor thread.
//!
//! Keys (prefix `--redis-prefix`, by default `rt:<project-id>:`; `{T}` is the canonical topic, a hash
//! tag, so one topic's keys share a Cluster slot):
//! - `{T}:meta` HASH `e` epoch, `s` last seq; `{T}:log` STREAM, entry id
//!   `<seq>-0`, at most about `--replay-size` entries for `--replay-ttl-s`;
//! - `{T}:pres` HASH conn -> presence entry; `node:<id>:pres` SET of the
//!   node's entries (`<topic>\n<conn>`), for reaping;
//! - `{T}:streams` SET of running token streams, `{T}:tok:<stream>` LIST
//!   of their events so far;
//! - `nodes` ZSET node -> last beat (ms), `node:<id>` HASH of its figures.
//!
//! Channel `{T}` carries `e|<epoch>|<seq>|<event>`, `j|<entry>` and
//! `l|<entry>`. Event streams' keys and channel: [`streams`]. Every write is one Lua script (`lua/`), so each is atomic.
//!
//! The supervisor task ([`liveness`]) beats every quarter of
//! `--node-timeout-ms` (at most every 2 s): it records this node in `nodes`,
//! reaps nodes silent longer than the timeout, and keeps [`Broker::is_up`]
//! current ([`link`]). When the pub/sub link drops, or a beat finds this node
//! was reaped, every joined topic is told to resync once the link is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use prometheus::{IntCounter, IntGauge};
use redis::{AsyncCommands, Value};
use tokio::sync::mpsc;

mod link;
mod liveness;
mod master;
mod occupancy;
mod presence;
mod scripts;
mod streams;
mod wire;

use self::link::Link;
pub use self::master::RedisTarget;
use self::master::{Connections, Current, PushTarget};
use self::scripts::Scripts;
use self::wire::{array, bulk, decode_kept, text};
use super::{
    Broker, BrokerError, BrokerFuture, FromBroker, KeyEdges, NodeInfo, PresenceEntry, PresenceOp,
    RequestSink, Sequenced, SharedEvent, ToldSink, TopicState,
};
use crate::clock::now_ms;

/// How long a command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between beats.
const MAX_BEAT: Duration = Duration::from_secs(2);

/// What the cluster is configured with.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub node: Arc<str>,
    /// Of every key and channel.
    pub prefix: String,
    pub replay_size: usize,
    pub replay_ttl: Duration,
    pub node_timeout: Duration,
    /// This node's open connections, reported in its beats.
    pub connections: IntGauge,
    /// Whether Redis answers, exported as a gauge.
    pub up_gauge: IntGauge,
    /// Failed Redis calls.
    pub errors: IntCounter,
    /// Every Redis call.
    pub calls: IntCounter,
}

/// Channel name -> the joined topic's actor. Shared with the push handler,
/// which runs on the connection's task.
#[derive(Default)]
struct Routes {
    topics: Mutex<HashMap<String, Recipient<FromBroker>>>,
    /// This node's channel for its event streams, and what reads it.
    streams: std::sync::OnceLock<(String, streams::NodeChannel)>,
}

impl Routes {
    fn set_streams(&self, channel: String, reader: streams::NodeChannel) {
        let _ = self.streams.set((channel, reader));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Recipient<FromBroker>>> {
        // Each critical section is one insert, remove, lookup or clone.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tell_all(&self, message: FromBroker) {
        for topic in self.lock().values() {
            topic.do_send(message.clone());
        }
    }
}

struct Inner {
    settings: RedisSettings,
    prefix: String,
    /// The connections to the master in use.
    current: Current,
    /// Where a new pub/sub connection's pushes go.
    pushes: PushTarget,
    routes: Arc<Routes>,
    /// Whether Redis answers, as the gauge and the logs say.
    link: Link,
    runtime: tokio::runtime::Handle,
    scripts: Scripts,
    started_at: i64,
    /// Forwards to other nodes' streams waiting to hear they were queued.
    forwards: streams::Forwards,
    /// Where what this node's calls and reaping decide is told.
    told: std::sync::OnceLock<ToldSink>,
}

/// The Redis broker; cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// A fresh epoch: random, short, opaque.
fn fresh_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

impl RedisBroker {
    /// Starts the Redis thread, connects, and beats once. A Redis that does
    /// not answer yet is not an error: the node starts, reports it, and
    /// keeps trying.
    pub fn start(settings: RedisSettings) -> Result<RedisBroker, BrokerError> {
        settings.target.check().map_err(unavailable)?;
        let described = settings.target.describe();
        let up_gauge = settings.up_gauge.clone();
        let (runtime_tx, runtime_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("realtide-redis".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = runtime_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = runtime_tx.send(Err(e));
                    }
                }
            })
            .map_err(unavailable)?;
        let runtime = runtime_rx
            .recv()
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let _entered = runtime.enter();
        let routes = Arc::new(Routes::default());
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let pushes = PushTarget {
            routes: routes.clone(),
            lost: lost_tx,
        };
        // A fixed URL is connected to now; Sentinel is asked by the first beat.
        let connections = match &settings.target {
            RedisTarget::Url(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| unavailable(format!("--redis-url: {e}")))?;
                Some(Connections::open(client, pushes.clone()).map_err(unavailable)?)
            }
            RedisTarget::Sentinel { .. } => None,
        };
        let prefix = settings.prefix.clone();
        let broker = RedisBroker {
            inner: Arc::new(Inner {
                settings,
                prefix,
                current: Current::new(connections),
                pushes,
                routes,
                link: Link::new(&described, up_gauge),
                runtime: runtime.clone(),
                scripts: Scripts::new(),
                started_at: now_ms(),
                forwards: streams::Forwards::default(),
                told: std::sync::OnceLock::new(),
            }),
        };
        // The first beat, waited for here (the caller may itself be inside
        // a runtime, so not with block_on).
        let (beaten_tx, beaten_rx) = std::sync::mpsc::channel();
        let first = broker.clone();
        runtime.spawn(async move {
            first.follow_master().await;
            let beaten = first.beat().await;
            let loaded = beaten.is_ok() && first.load_scripts().await;
            let _ = beaten_tx.send(beaten.map(|_| loaded));
        });
        match beaten_rx.recv_timeout(CONNECT_TIMEOUT * 6) {
            Ok(Ok(true)) => broker.inner.link.set_up(true),
            // Scripts not loaded: the supervisor's next beat tries again.
            Ok(Ok(false)) => broker.inner.link.still_down(None),
            Ok(Err(e)) => broker.inner.link.still_down(Some(&e)),
            Err(_) => broker.inner.link.still_down(None),
        }
        let (switched_tx, switched_rx) = mpsc::unbounded_channel();
        runtime.spawn(broker.clone().watch_sentinels(switched_tx));
        runtime.spawn(broker.clone().supervise(lost_rx, switched_rx));
        Ok(broker)
    }

    fn key(&self, topic: &str, part: &str) -> String {
        format!("{}{{{topic}}}:{part}", self.inner.prefix)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{{{topic}}}", self.inner.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.inner.prefix)
    }

    /// What the presence scripts touch for `conn` of `node` on `topic`:
    /// the topic's entries, the node's index of its entries, the topic's
    /// channel; and the connection's member in that index.
    fn presence_keys(&self, topic: &str, node: &str, conn: &str) -> ([String; 4], String) {
        let keys = [
            self.key(topic, "pres"),
            format!("{}:pres", self.node_key(node)),
            self.channel(topic),
            self.key(topic, "keys"),
        ];
        (keys, format!("{topic}\n{conn}"))
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}node:{node}", self.inner.prefix)
    }

    /// Runs `call` on the Redis thread; a failure marks Redis down.
    fn run<T, F>(&self, call: F) -> BrokerFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let broker = self.clone();
        if !self.is_up() {
            return Box::pin(async { Err(unavailable("Redis is unreachable")) });
        }
        self.inner.settings.calls.inc();
        let task = self.inner.runtime.spawn(call);
        Box::pin(async move {
            match task.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => {
                    broker.inner.settings.errors.inc();
                    if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
                        broker.inner.link.set_up(false);
                    }
                    Err(unavailable(e))
                }
                Err(e) => Err(unavailable(e)),
            }
        })
    }
}

impl Broker for RedisBroker {
    fn join(
        &self,
        topic: &str,
        sink: Recipient<FromBroker>,
        seen: Option<(&str, u64)>,
    ) -> BrokerFuture<TopicState> {
        let channel = self.channel(topic);
        self.inner.routes.lock().insert(channel.clone(), sink);
        let broker = self.clone();
        let (meta, presence, streams, log) = (
            self.key(topic, "meta"),
            self.key(topic, "pres"),
            self.key(topic, "streams"),
            self.key(topic, "log"),
        );
        let (seen_epoch, seen_seq) = seen.map_or((String::new(), 0), |(e, s)| (e.to_string(), s));
        let tokens = self.key(topic, "tok:");
        self.run(async move {
            let mut pubsub = broker.inner.current.pubsub()?;
            pubsub.subscribe(&channel).await?;
            let mut conn = broker.inner.current.commands()?;
            let answer: Value = broker
                .inner
                .scripts
                .join
                .key(meta)
                .key(presence)
                .key(streams)
                .key(log)
                .arg(fresh_epoch())
                .arg(tokens)
                .arg(broker.inner.settings.replay_ttl.as_millis() as u64)
                .arg(seen_epoch)
                .arg(seen_seq)
                .invoke_async(&mut conn)
                .await?;
            let parts = array(&answer);
            let malformed = || redis::RedisError::from((redis::ErrorKind::Parse, "join answer"));
            let epoch = parts.first().and_then(text).ok_or_else(malformed)?;
            let seq = parts
                .get(1)
                .and_then(text)
                .and_then(|s| s.parse().ok())
                .ok_or_else(malformed)?;
            let presence = parts
                .get(2)
                .map(array)
                .unwrap_or_default()
                .iter()
                .filter_map(|v| serde_json::from_slice(bulk(v)?).ok())
                .collect();
            let mut stream_tokens: Vec<Sequenced> = parts
                .get(3)
                .map(array)
                .unwrap_or_default()
                .iter()
                .filter_map(|v| decode_kept(bulk(v)?))
                .collect();
            stream_tokens.sort_by_key(|t| t.seq);
            Ok(TopicState {
                epoch,
                seq,
                presence,
                stream_tokens,
            })
        })
    }

    fn leave(&self, topic: &str) {
        let channel = self.channel(topic);
        self.inner.routes.lock().remove(&channel);
        let broker = self.clone();
        self.inner.runtime.spawn(async move {
            if let Ok(mut pubsub) = broker.inner.current.pubsub() {
                let _ = pubsub.unsubscribe(&channel).await;
            }
        });
    }

    fn publish(
        &self,
        topic: &str,
        seen: (&str, u64),
        events: Vec<SharedEvent>,
    ) -> BrokerFuture<(String, u64)> {
        let (seen_epoch, seen_seq) = (seen.0.to_string(), seen.1);
        let keys = [
            self.key(topic, "meta"),
            self.key(topic, "log"),
            self.channel(topic),
            self.key(topic, "streams"),
        ];
        let tokens = self.key(topic, "tok:");
        let mut per_event = Vec::with_capacity(events.len());
        for event in &events {
            let (stream, ends) = match &event.stream {
                Some(mark) => (mark.id.clone(), if mark.done { "1" } else { "0" }),
                None => (String::new(), "0"),
            };
            match serde_json::to_string(event) {
                Ok(payload) => per_event.push((stream, ends, payload)),
                Err(e) => return Box::pin(async move { Err(unavailable(e)) }),
            }
        }
        let broker = self.clone();
        self.run(async move {
            let settings = &broker.inner.settings;
            let mut invocation = broker.inner.scripts.publish.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation
                .arg(settings.replay_size.max(1))
                .arg(settings.replay_ttl.as_millis().max(1) as u64)
                .arg(fresh_epoch())
                .arg(tokens)
                .arg(seen_epoch)
                .arg(seen_seq);
            for (stream, ends, payload) in per_event {
                invocation.arg(stream).arg(ends).arg(payload);
            }
            let mut conn = broker.inner.current.commands()?;
            let (epoch, first): (String, u64) = invocation.invoke_async(&mut conn).await?;
            Ok((epoch, first))
        })
    }

    fn replay(
        &self,
        topic: &str,
        epoch: &str,
        since: u64,
        up_to: u64,
    ) -> BrokerFuture<Option<Vec<Sequenced>>> {
        let (meta, log) = (self.key(topic, "meta"), self.key(topic, "log"));
        let epoch = epoch.to_string();
        let broker = self.clone();
        self.run(async move {
            let mut conn = broker.inner.current.commands()?;
            if up_to <= since {
                return Ok(Some(Vec::new()));
            }
            let (current, entries): (Option<String>, Value) = redis::pipe()
                .hget(&meta, "e")
                .cmd("XRANGE")
                .arg(&log)
                .arg(format!("{}-0", since + 1))
                .arg(format!("{up_to}-0"))
                .query_async(&mut conn)
                .await?;
            if current.as_deref() != Some(epoch.as_str()) {
                return Ok(None);
            }
            let mut events = Vec::new();
            for entry in array(&entries) {
                let parts = array(entry);
                let seq = parts
                    .first()
                    .and_then(text)
                    .and_then(|id| id.split('-').next()?.parse::<u64>().ok());
                let payload = parts
                    .get(1)
                    .map(array)
                    .and_then(|fields| fields.get(1))
                    .and_then(bulk);
                let (Some(seq), Some(payload)) = (seq, payload) else {
                    continue;
                };
                let Ok(event) = serde_json::from_slice(payload) else {
                    continue;
                };
                events.push(Sequenced { seq, event });
            }
            // Complete only if every seq in the range is there.
            let complete = events.len() as u64 == up_to - since
                && events
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.seq == since + 1 + i as u64);
            Ok(complete.then_some(events))
        })
    }

    fn track(
        &self,
        topic: &str,
        entry: PresenceEntry,
        op: Option<PresenceOp>,
    ) -> BrokerFuture<KeyEdges> {
        self.track_entry(topic, entry, op)
    }

    fn untrack(
        &self,
        topic: &str,
        conn: &str,
        op: Option<PresenceOp>,
    ) -> BrokerFuture<(bool, KeyEdges)> {
        self.untrack_entry(topic, conn, op)
    }

    fn presence(&self, topic: &str) -> BrokerFuture<Vec<PresenceEntry>> {
        let key = self.key(topic, "pres");
        let broker = self.clone();
        self.run(async move {
            let mut conn = broker.inner.current.commands()?;
            let entries: Vec<String> = conn.hvals(key).await?;
            Ok(entries
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect())
        })
    }

    fn nodes(&self) -> BrokerFuture<Vec<NodeInfo>> {
        let broker = self.clone();
        self.run(async move {
            let mut conn = broker.inner.current.commands()?;
            let beats: Vec<(String, i64)> =
                conn.zrange_withscores(broker.nodes_key(), 0, -1).await?;
            let now = now_ms();
            let mut nodes = Vec::new();
            for (node, beat) in beats {
                let info: HashMap<String, i64> = conn.hgetall(broker.node_key(&node)).await?;
                nodes.push(NodeInfo {
                    connections: info.get("connections").copied().unwrap_or(0).max(0) as u64,
                    started_at: info.get("started_at").copied().unwrap_or(0),
                    last_seen_ms: (now - beat).max(0),
                    node,
                });
            }
            Ok(nodes)
        })
    }

    fn is_up(&self) -> bool {
        self.inner.link.is_up()
    }

    fn open_stream(&self, conn: &str, secret: &str) -> BrokerFuture<()> {
        self.open_stream_key(conn, secret)
    }

    fn close_stream(&self, conn: &str) {
        self.close_stream_key(conn);
    }

    fn forward(&self, conn: &str, secret: &str, requests: Vec<String>) -> BrokerFuture<bool> {
        self.forward_to_holder(conn, secret, requests)
    }

    fn receive_forwarded(&self, sink: RequestSink) {
        self.listen_for_forwarded(sink);
    }

    fn occupancy(&self, topic: &str, occupied: bool) {
        self.record_occupancy(topic, occupied);
    }

    fn on_told(&self, sink: ToldSink) {
        let _ = self.inner.told.set(sink);
    }
}
