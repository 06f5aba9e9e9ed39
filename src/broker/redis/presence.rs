//! Presence entries in Redis (`{T}:pres` HASH, `{T}:keys` counts of each
//! key's entries, the node's `node:<id>:pres` index), and what the cluster
//! decides that the app's backend is told ([`Told`], through the sink a
//! node gives `Broker::on_told`, on the Redis thread as Redis answers).

use redis::Value;

use super::wire::{self, array};
use super::{RedisBroker, unavailable};
use crate::broker::{BrokerFuture, KeyEdges, PresenceEntry, PresenceOp, Told};

impl RedisBroker {
    /// Tells the told sink (on the Redis thread, in the order Redis answered).
    pub(super) fn tell(&self, told: Told) {
        if let Some(sink) = self.inner.told.get() {
            sink(told);
        }
    }

    /// Tells the key edges a track or untrack of `topic` caused.
    fn tell_edges(&self, topic: &str, edges: &KeyEdges, tracked: Option<&PresenceEntry>) {
        if edges.joined
            && let Some(entry) = tracked
        {
            self.tell(Told::Presence {
                topic: topic.to_string(),
                key: entry.key.clone(),
                state: entry.state.clone(),
                joined: true,
            });
        }
        if let Some(left) = &edges.left {
            self.tell(Told::Presence {
                topic: topic.to_string(),
                key: left.key.clone(),
                state: left.state.clone(),
                joined: false,
            });
        }
    }

    pub(super) fn track_entry(
        &self,
        topic: &str,
        entry: PresenceEntry,
        op: Option<PresenceOp>,
    ) -> BrokerFuture<KeyEdges> {
        let json = match serde_json::to_string(&entry) {
            Ok(json) => json,
            Err(e) => return Box::pin(async move { Err(unavailable(e)) }),
        };
        let (keys, member) = self.presence_keys(topic, &entry.node, &entry.conn);
        let broker = self.clone();
        let topic = topic.to_string();
        self.run(async move {
            let mut conn = broker.inner.current.commands()?;
            let answer: Value = with_keys(&broker.inner.scripts.track, &keys)
                .arg(&entry.conn)
                .arg(json)
                .arg(member)
                .arg(wire::op_text(op))
                .arg(&entry.key)
                .invoke_async(&mut conn)
                .await?;
            let edges = wire::key_edges(&answer);
            broker.tell_edges(&topic, &edges, Some(&entry));
            Ok(edges)
        })
    }

    pub(super) fn untrack_entry(
        &self,
        topic: &str,
        conn_id: &str,
        op: Option<PresenceOp>,
    ) -> BrokerFuture<(bool, KeyEdges)> {
        let (keys, member) = self.presence_keys(topic, &self.inner.settings.node, conn_id);
        let conn_id = conn_id.to_string();
        let broker = self.clone();
        let topic = topic.to_string();
        self.run(async move {
            let mut conn = broker.inner.current.commands()?;
            let answer: Value = with_keys(&broker.inner.scripts.untrack, &keys)
                .arg(conn_id)
                .arg(member)
                .arg(wire::op_text(op))
                .invoke_async(&mut conn)
                .await?;
            let removed = matches!(array(&answer).first(), Some(Value::Int(1)));
            let edges = wire::key_edges(&answer);
            broker.tell_edges(&topic, &edges, None);
            Ok((removed, edges))
        })
    }
}

/// A presence script's call with its four keys ([`RedisBroker::presence_keys`]).
fn with_keys<'a>(script: &'a redis::Script, keys: &[String; 4]) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    invocation
}
