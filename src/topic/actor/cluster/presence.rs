//! A cluster topic's presence: this node's entries go to the broker, and
//! every node's joins and leaves come back to a mirror of the whole topic.
//! A client's ack goes just before its own join or leave.

use std::collections::{HashMap, HashSet, VecDeque};

use actix::prelude::*;

use super::{PresenceAck, unavailable};
use crate::broker::PresenceEntry;
use crate::protocol::ProtocolError;
use crate::protocol::server::{self, TopicFrame};
use crate::session::messages::ConnId;
use crate::topic::actor::{TopicActor, now_ms};
use crate::topic::fanout::Audience;
use crate::topic::messages::{AckTo, Track, Untrack};

/// How often, and how far apart, a gone connection's untrack is tried.
const UNTRACK_TRIES: usize = 60;
const UNTRACK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl TopicActor {
    /// Makes the mirror the broker's, telling subscribers what changed, and
    /// puts back this node's entries that the broker lost (or drops the ones
    /// it kept of connections gone).
    pub(super) fn reconcile_presence(&mut self, entries: Vec<PresenceEntry>) {
        let node = self.shared().link.node.clone();
        let now: HashMap<String, PresenceEntry> =
            entries.into_iter().map(|e| (e.conn.clone(), e)).collect();
        for (key, wire, state) in self.presence.all() {
            let same = now
                .get(&wire)
                .is_some_and(|e| e.key == key && e.state == state);
            if !same && let Some(left) = self.presence.remove_wire(&wire) {
                let frame = TopicFrame::presence("presence:leave", &left, now_ms());
                self.fan_out(frame, Audience::Everyone);
            }
        }
        let known: HashSet<String> = self.presence.all().into_iter().map(|(_, w, _)| w).collect();
        let mut stale = Vec::new();
        for (wire, entry) in &now {
            if *entry.node == *node && !self.shared().local.values().any(|l| l.conn == *wire) {
                stale.push(wire.clone());
                continue;
            }
            if !known.contains(wire) {
                let joined = self
                    .presence
                    .track_wire(&entry.key, wire, entry.state.clone());
                let frame = TopicFrame::presence("presence:join", &joined, now_ms());
                self.fan_out(frame, Audience::Everyone);
            }
        }
        let broker = self.broker();
        for wire in stale {
            let untrack = broker.untrack(self.name.as_str(), &wire);
            actix::spawn(async move { drop(untrack.await) });
        }
        let missing: Vec<PresenceEntry> = self
            .shared()
            .local
            .values()
            .filter(|l| !now.contains_key(&l.conn))
            .cloned()
            .collect();
        for entry in missing {
            let track = broker.track(self.name.as_str(), entry);
            actix::spawn(async move { drop(track.await) });
        }
    }

    /// A join or leave, from any node.
    pub(super) fn presence_changed(&mut self, joined: bool, entry: PresenceEntry) {
        let node = self.shared().link.node.clone();
        if *entry.node == *node {
            let acks = self.shared().presence_acks.get_mut(&entry.conn);
            if let Some(pending) = acks.and_then(|a| a.front())
                && pending.joined == joined
            {
                let ack = self
                    .shared()
                    .presence_acks
                    .get_mut(&entry.conn)
                    .and_then(VecDeque::pop_front);
                if let Some(PresenceAck { ack, .. }) = ack {
                    self.ack_presence(&ack);
                }
                if self
                    .shared()
                    .presence_acks
                    .get(&entry.conn)
                    .is_some_and(VecDeque::is_empty)
                {
                    self.shared().presence_acks.remove(&entry.conn);
                }
            }
        }
        let data = if joined {
            Some(
                self.presence
                    .track_wire(&entry.key, &entry.conn, entry.state),
            )
        } else {
            self.presence.remove_wire(&entry.conn)
        };
        if let Some(data) = data {
            let name = if joined {
                "presence:join"
            } else {
                "presence:leave"
            };
            let frame = TopicFrame::presence(name, &data, now_ms());
            self.fan_out(frame, Audience::Everyone);
        }
    }

    fn await_presence(&mut self, wire: &str, joined: bool, ack: AckTo) {
        self.shared()
            .presence_acks
            .entry(wire.to_string())
            .or_default()
            .push_back(PresenceAck { joined, ack });
    }

    /// Answers a presence request that failed, and forgets its ack.
    fn presence_failed(&mut self, wire: &str, joined: bool, error: ProtocolError) {
        let acks = self.shared().presence_acks.get_mut(wire);
        let Some(at) = acks
            .as_ref()
            .and_then(|a| a.iter().position(|p| p.joined == joined))
        else {
            return;
        };
        let failed = self
            .shared()
            .presence_acks
            .get_mut(wire)
            .and_then(|a| a.remove(at));
        if let Some(PresenceAck { ack, .. }) = failed {
            self.metrics.error(error.code);
            ack.send(&server::error(ack.reference.as_ref(), None, &error));
        }
    }

    pub(in crate::topic::actor) fn track_shared(&mut self, msg: Track, ctx: &mut Context<Self>) {
        let node = self.shared().link.node.to_string();
        let entry = PresenceEntry {
            key: msg.key,
            conn: msg.wire_conn.clone(),
            state: msg.state,
            node,
        };
        self.shared().local.insert(msg.conn, entry.clone());
        self.await_presence(&msg.wire_conn, true, msg.ack);
        let track = self.broker().track(self.name.as_str(), entry);
        let (wire, conn) = (msg.wire_conn, msg.conn);
        ctx.spawn(track.into_actor(self).map(move |tracked, topic, _| {
            if let Err(e) = tracked {
                topic.shared().local.remove(&conn);
                topic.presence_failed(&wire, true, unavailable(e));
            }
        }));
    }

    pub(in crate::topic::actor) fn untrack_shared(
        &mut self,
        msg: Untrack,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.shared().local.remove(&msg.conn) else {
            return self.ack_presence(&msg.ack);
        };
        let wire = entry.conn;
        self.await_presence(&wire, false, msg.ack);
        let untrack = self.broker().untrack(self.name.as_str(), &wire);
        ctx.spawn(
            untrack
                .into_actor(self)
                .map(move |removed, topic, _| match removed {
                    // Nothing to remove: no leave comes, so the ack goes now.
                    Ok(false) => {
                        let ack = topic.shared().presence_acks.get_mut(&wire).and_then(|a| {
                            let at = a.iter().position(|p| !p.joined)?;
                            a.remove(at)
                        });
                        if let Some(PresenceAck { ack, .. }) = ack {
                            topic.ack_presence(&ack);
                        }
                    }
                    Ok(true) => {}
                    Err(e) => topic.presence_failed(&wire, false, unavailable(e)),
                }),
        );
    }

    /// A connection left the topic: its entry goes from the cluster too.
    pub(in crate::topic::actor) fn forget_shared(&mut self, conn: ConnId) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if let Some(entry) = shared.local.remove(&conn) {
            let (broker, topic) = (shared.link.broker.clone(), self.name.to_string());
            // A live node's entries are never reaped: an untrack that fails
            // (Redis away for a moment) is tried again, or the entry would
            // outlive its connection.
            actix::spawn(async move {
                for _ in 0..UNTRACK_TRIES {
                    if broker.untrack(&topic, &entry.conn).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(UNTRACK_RETRY).await;
                }
                tracing::warn!(
                    topic,
                    conn = entry.conn,
                    "a presence entry could not be removed"
                );
            });
        }
    }
}
