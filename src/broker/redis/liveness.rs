//! How this node stays a member of the cluster: a beat every quarter of
//! `--node-timeout-ms` (records this node, reaps silent ones), the watch on
//! the pub/sub link, and the goodbye at a graceful stop.

use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::mpsc;

use super::wire::{array, text};
use super::{MAX_BEAT, RESPONSE_TIMEOUT, RedisBroker};
use crate::broker::{FromBroker, Told};
use crate::clock::now_ms;

impl RedisBroker {
    /// One beat: records this node, reaps dead ones. Answers whether this
    /// node was missing from `nodes` (reaped, or new).
    pub(super) async fn beat(&self) -> redis::RedisResult<bool> {
        let mut conn = self.inner.current.commands()?;
        let node = self.inner.settings.node.to_string();
        let now = now_ms();
        let added: i64 = conn.zadd(self.nodes_key(), &node, now).await?;
        let info = self.node_key(&node);
        let ttl = (self.inner.settings.node_timeout * 2).as_millis() as i64;
        redis::pipe()
            .hset_multiple(
                &info,
                &[
                    ("started_at", self.inner.started_at),
                    ("connections", self.inner.settings.connections.get()),
                ],
            )
            .pexpire(&info, ttl)
            .query_async::<()>(&mut conn)
            .await?;
        let deadline = now - self.inner.settings.node_timeout.as_millis() as i64;
        let answer: redis::Value = self
            .inner
            .scripts
            .reap
            .key(self.nodes_key())
            .arg(&self.inner.prefix)
            .arg(deadline)
            .arg("")
            .invoke_async(&mut conn)
            .await?;
        let entries = self.tell_reaped(&answer);
        if entries > 0 {
            tracing::info!(entries, "presence of silent nodes removed");
        }
        Ok(added == 1)
    }

    /// Beats, notices a lost pub/sub link, follows a master that moved,
    /// and resyncs topics once Redis is back.
    pub(super) async fn supervise(
        self,
        mut lost: mpsc::UnboundedReceiver<()>,
        mut switched: mpsc::UnboundedReceiver<()>,
    ) {
        let period =
            (self.inner.settings.node_timeout / 4).clamp(Duration::from_millis(100), MAX_BEAT);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = false;
        let mut first = true;
        loop {
            tokio::select! {
                Some(()) = lost.recv() => {
                    // Only the pub/sub link: commands may still work.
                    // Resync as soon as it is back.
                    resync |= !self.relink().await;
                    continue;
                }
                Some(()) = switched.recv() => {
                    // Sentinel switched a master: beat now if it was ours.
                    if !self.follow_master().await {
                        continue;
                    }
                    resync = true;
                }
                _ = ticks.tick() => {}
            }
            match tokio::time::timeout(RESPONSE_TIMEOUT, self.beat()).await {
                Ok(Ok(missing)) => {
                    if !self.inner.link.is_up() && !self.load_scripts().await {
                        continue;
                    }
                    self.inner.link.set_up(true);
                    if missing && !first {
                        tracing::warn!(
                            "this node was taken for dead; announcing its presence again"
                        );
                        resync = true;
                    }
                    first = false;
                }
                failed => {
                    if let Ok(Err(e)) = &failed {
                        self.inner.settings.errors.inc();
                        self.inner.link.still_down(Some(e));
                    } else {
                        self.inner.link.still_down(None);
                    }
                    self.inner.link.set_up(false);
                    resync = true;
                    // The master may have moved (or come back as a replica).
                    if self.follow_master().await {
                        ticks.reset_immediately();
                    }
                    continue;
                }
            }
            if resync && self.ping_pubsub().await {
                resync = false;
                self.inner.routes.tell_all(FromBroker::Resync);
            }
        }
    }

    /// Loads every script, before calls are let through again: after a
    /// restart Redis has none. Answers whether all loaded.
    pub(super) async fn load_scripts(&self) -> bool {
        let mut conn = match self.inner.current.commands() {
            Ok(conn) => conn,
            Err(e) => {
                self.inner.link.still_down(Some(&e));
                return false;
            }
        };
        for script in self.inner.scripts.all() {
            if let Err(e) = script.load_async(&mut conn).await {
                self.inner.link.still_down(Some(&e));
                return false;
            }
        }
        true
    }

    /// A PING through the pub/sub link: it resubscribes by itself once
    /// reconnected, so an answer proves it is back.
    async fn ping_pubsub(&self) -> bool {
        let Ok(mut pubsub) = self.inner.current.pubsub() else {
            return false;
        };
        let ping: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut pubsub).await;
        ping.is_ok()
    }

    /// The pub/sub link dropped: waits (briefly) for it to come back, then
    /// has every joined topic look for what it missed.
    /// Answers whether it came back.
    async fn relink(&self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if self.ping_pubsub().await {
                // A Redis that restarted has lost the scripts: they are
                // back before the topics resync.
                if !self.load_scripts().await {
                    break;
                }
                self.inner.routes.tell_all(FromBroker::Resync);
                return true;
            }
            let ping: redis::RedisResult<()> = match self.inner.current.commands() {
                Ok(mut commands) => redis::cmd("PING").query_async(&mut commands).await,
                Err(e) => Err(e),
            };
            if ping.is_err() {
                // Redis itself is gone, not just the link: say so now,
                // and leave finding it again to the beats.
                self.inner.link.set_up(false);
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Still down: the beats keep trying, and resync once it is back.
        self.inner.link.set_up(false);
        false
    }

    /// Hands the reap script's answer `{entries, vacated, keys_left}` to
    /// the told sink; answers how many presence entries were removed.
    fn tell_reaped(&self, answer: &redis::Value) -> i64 {
        let parts = array(answer);
        let entries = match parts.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        let vacated: Vec<String> = parts
            .get(1)
            .map(array)
            .unwrap_or_default()
            .iter()
            .filter_map(text)
            .collect();
        let keys_left: Vec<(String, String, serde_json::Map<String, serde_json::Value>)> = parts
            .get(2)
            .map(array)
            .unwrap_or_default()
            .iter()
            .filter_map(text)
            .filter_map(|line| {
                let mut fields = line.splitn(3, '\n');
                let (topic, key, state) = (fields.next()?, fields.next()?, fields.next()?);
                let state = serde_json::from_str(state).unwrap_or_default();
                Some((topic.to_string(), key.to_string(), state))
            })
            .collect();
        for topic in vacated {
            self.tell(Told::Occupancy {
                topic,
                occupied: false,
            });
        }
        for (topic, key, state) in keys_left {
            self.tell(Told::Presence {
                topic,
                key,
                state,
                joined: false,
            });
        }
        entries
    }

    /// Removes this node's presence entries (announcing their leaves) and
    /// its record: the end of a graceful stop.
    pub async fn retire(&self) {
        let broker = self.clone();
        let node = self.inner.settings.node.to_string();
        let retire = async move {
            let Ok(mut conn) = broker.inner.current.commands() else {
                return;
            };
            let answer: redis::RedisResult<redis::Value> = broker
                .inner
                .scripts
                .reap
                .key(broker.nodes_key())
                .arg(&broker.inner.prefix)
                .arg(0)
                .arg(&node)
                .invoke_async(&mut conn)
                .await;
            if let Ok(answer) = answer {
                broker.tell_reaped(&answer);
            }
        };
        let _ = tokio::time::timeout(RESPONSE_TIMEOUT, self.inner.runtime.spawn(retire)).await;
    }
}
