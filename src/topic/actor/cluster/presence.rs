//! A cluster topic's presence: this node's entries go to the broker, and
//! every node's joins and leaves come back to a mirror of the whole topic.
//! A client's ack goes just before the join or leave its request caused,
//! found by the request's op (announcements of one connection's requests
//! may come in another order than the requests).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;

use super::unavailable;
use crate::broker::{BrokerError, PresenceEntry, PresenceOp};
use crate::clock::now_ms;
use crate::outbox::messages::ConnId;
use crate::protocol::server::{self, TopicFrame};
use crate::topic::actor::TopicActor;
use crate::topic::fanout::Audience;
use crate::topic::messages::{AckTo, Track, Untrack};

/// How often, and how far apart, a gone connection's untrack is tried.
const UNTRACK_TRIES: usize = 60;
const UNTRACK_RETRY: Duration = Duration::from_secs(1);
/// How long an answered request's ack waits for its announcement (lost
/// only if the pub/sub link dropped meanwhile) before it goes anyway.
const ANNOUNCEMENT_WAIT: Duration = Duration::from_secs(2);

/// Presence ops, unique within this process.
static NEXT_OP: AtomicU64 = AtomicU64::new(1);

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
            let untrack = broker.untrack(self.name.as_str(), &wire, None);
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
            let track = broker.track(self.name.as_str(), entry, None);
            actix::spawn(async move { drop(track.await) });
        }
    }

    /// A join or leave, from any node; one of this node's requests is
    /// acked just before it.
    pub(super) fn presence_changed(
        &mut self,
        joined: bool,
        entry: PresenceEntry,
        op: Option<PresenceOp>,
    ) {
        let node = self.shared().link.node.clone();
        if let Some(op) = op
            && *entry.node == *node
            && let Some(ack) = self.shared().presence_acks.remove(&op)
        {
            self.ack_presence(&ack);
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

    /// A new op whose ack waits for its announcement.
    fn await_presence(&mut self, ack: AckTo) -> PresenceOp {
        let op = PresenceOp(NEXT_OP.fetch_add(1, Ordering::Relaxed));
        self.shared().presence_acks.insert(op, ack);
        op
    }

    /// The broker answered op's request: acked already (its announcement
    /// came first), acked now (there is none), or acked when it comes, or
    /// after [`ANNOUNCEMENT_WAIT`] if it was lost on the way.
    fn presence_answered(
        &mut self,
        op: PresenceOp,
        outcome: Result<bool, BrokerError>,
        ctx: &mut Context<Self>,
    ) {
        match outcome {
            Ok(true) => {
                ctx.run_later(ANNOUNCEMENT_WAIT, move |topic, _| {
                    if let Some(ack) = topic.shared().presence_acks.remove(&op) {
                        topic.ack_presence(&ack);
                    }
                });
            }
            Ok(false) => {
                if let Some(ack) = self.shared().presence_acks.remove(&op) {
                    self.ack_presence(&ack);
                }
            }
            Err(e) => {
                if let Some(ack) = self.shared().presence_acks.remove(&op) {
                    let error = unavailable(e);
                    self.metrics.error(error.code);
                    ack.send(&server::error(ack.reference.as_ref(), None, &error));
                }
            }
        }
    }

    pub(in crate::topic::actor) fn track_shared(&mut self, msg: Track, ctx: &mut Context<Self>) {
        let node = self.shared().link.node.to_string();
        let entry = PresenceEntry {
            key: msg.key,
            conn: msg.wire_conn,
            state: msg.state,
            node,
        };
        self.shared().local.insert(msg.conn, entry.clone());
        let op = self.await_presence(msg.ack);
        let track = self.broker().track(self.name.as_str(), entry, Some(op));
        let conn = msg.conn;
        ctx.spawn(track.into_actor(self).map(move |tracked, topic, ctx| {
            // What the key did, the broker tells (`Broker::on_told`).
            let tracked = match tracked {
                Ok(_) => Ok(true),
                Err(e) => {
                    topic.shared().local.remove(&conn);
                    Err(e)
                }
            };
            topic.presence_answered(op, tracked, ctx);
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
        let op = self.await_presence(msg.ack);
        let untrack = self
            .broker()
            .untrack(self.name.as_str(), &entry.conn, Some(op));
        ctx.spawn(untrack.into_actor(self).map(move |untracked, topic, ctx| {
            topic.presence_answered(op, untracked.map(|(removed, _)| removed), ctx)
        }));
    }

    /// A connection left the topic: its entry goes from the cluster too.
    pub(in crate::topic::actor) fn forget_shared(&mut self, conn: ConnId) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if let Some(entry) = shared.local.remove(&conn) {
            let (broker, topic) = (shared.link.broker.clone(), self.name.to_string());
            // Sent now, so it reaches Redis ahead of any later track of the
            // same connection (it would remove that entry if it came after).
            let first = broker.untrack(&topic, &entry.conn, None);
            // A live node's entries are never reaped: an untrack that fails
            // (Redis away for a moment) is tried again, or the entry would
            // outlive its connection.
            actix::spawn(async move {
                if first.await.is_ok() {
                    return;
                }
                for _ in 1..UNTRACK_TRIES {
                    tokio::time::sleep(UNTRACK_RETRY).await;
                    if broker.untrack(&topic, &entry.conn, None).await.is_ok() {
                        return;
                    }
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
