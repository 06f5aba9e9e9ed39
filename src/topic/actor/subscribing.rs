//! How a topic admits a subscriber: a pub/sub topic replays what the client
//! missed from its ring (or says `recovered: false`), streams in progress
//! and history; a table topic waits until the tracker watches its table,
//! then resumes from the change log. Every subscribe gets exactly one
//! reply: `subscribed`, or an error.

use std::time::Instant;

use actix::prelude::*;
use bytestring::ByteString;

use crate::changes::snapshot::{self, Snapshot, SnapshotError, SnapshotRequest};
use crate::changes::{self, Change, Filter};
use crate::clock::now_ms;
use crate::history::{self};
use crate::outbox::messages::FrameKind;
use crate::protocol::server::{self, TopicFrame};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::topic::messages::Subscribe;
use serde_json::json;

use super::{MAX_TABLE_CATCH_UP, Subscriber, TableState, TopicActor, stored_event};

impl TopicActor {
    /// Answers a subscription with `subscribed` and the events it missed, then
    /// adds it to the live set.
    pub(super) fn admit(&mut self, msg: Subscribe, recovered: bool, missed: Vec<ByteString>) {
        let seq = self.announced_seq();
        self.admit_at(msg, recovered, seq, missed);
    }

    /// [`Self::admit`], with `subscribed` naming `seq`: what the frames
    /// that follow it start from.
    pub(super) fn admit_at(
        &mut self,
        msg: Subscribe,
        recovered: bool,
        seq: u64,
        missed: Vec<ByteString>,
    ) {
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
                seq,
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
            if self.subscribers.len() == 1 {
                self.tell_occupancy(true);
            }
        }
    }

    pub(super) fn refuse(&self, msg: &Subscribe, error: ProtocolError) {
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
    pub(super) fn subscribe_pubsub(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
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

    pub(super) fn admit_pubsub(
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
    pub(super) fn subscribe_table(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        self.when_watched(ctx, move |topic, ctx, watched| match watched {
            Ok(()) => topic.admit_to_table(msg, ctx),
            Err(error) => topic.refuse(&msg, error),
        });
    }

    /// Runs `then` once the tracker watches this topic's table: at once when
    /// it does, else after asking it (the topic handles nothing else
    /// meanwhile).
    pub(super) fn when_watched(
        &mut self,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), ProtocolError>) + 'static,
    ) {
        let Some(table) = &self.table else {
            let error = ProtocolError::unavailable("table topics are not tracked here");
            return then(self, ctx, Err(error));
        };
        if table.shape.is_some() {
            return then(self, ctx, Ok(()));
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
                        then(topic, ctx, Ok(()));
                    }
                    Ok(None) => {
                        let error = ProtocolError::new(
                            ErrorCode::NotFound,
                            format!("there is no table `{}`", topic.name),
                        );
                        then(topic, ctx, Err(error));
                    }
                    Err(e) => {
                        let error = ProtocolError::unavailable(format!("change tracker: {e}"));
                        then(topic, ctx, Err(error));
                    }
                }),
        );
    }

    pub(super) fn admit_to_table(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
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
        let resumable = match (msg.since, &msg.epoch) {
            (Some(since), Some(epoch)) if **epoch == *self.epoch && since <= self.seq => {
                Some(since)
            }
            _ => None,
        };
        let since = match (resumable, msg.snapshot) {
            (None, false) => return self.admit(msg, false, Vec::new()),
            (None, true) => return self.admit_with_snapshot(msg, ctx),
            (Some(since), _) => since,
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
                .map(move |rows, topic, ctx| match rows {
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
                    Ok(None) if msg.snapshot => topic.admit_with_snapshot(msg, ctx),
                    Ok(None) => topic.admit(msg, false, Vec::new()),
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, error = %e, "resume read failed");
                        match msg.snapshot {
                            true => topic.admit_with_snapshot(msg, ctx),
                            false => topic.admit(msg, false, Vec::new()),
                        }
                    }
                }),
        );
    }

    /// Admits a table subscriber with the table's matching rows first
    /// ([`Self::take_snapshot`]): `subscribed` names the cut's seq, the rows
    /// follow in pages, then the changes after the cut.
    pub(super) fn admit_with_snapshot(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        // Without a table, take_snapshot refuses the subscribe: every
        // request is answered.
        let page_rows = self
            .table
            .as_deref()
            .map_or(1, |t| t.tracking.snapshot_page_rows);
        let (reference, spelling) = (msg.reference.clone(), msg.spelling.clone());
        // The rows become frames off the actor's thread, so a large table
        // does not hold up the other topics and sessions sharing it.
        let frame_rows = move |snapshot: Snapshot| {
            let pages: Vec<&[crate::changes::Row]> = match snapshot.rows.is_empty() {
                true => vec![&[]],
                false => snapshot.rows.chunks(page_rows.max(1)).collect(),
            };
            let count = pages.len();
            pages
                .into_iter()
                .enumerate()
                .map(|(i, rows)| {
                    server::snapshot_page(
                        reference.as_ref(),
                        &spelling,
                        snapshot.seq,
                        &snapshot.key,
                        rows,
                        i + 1 == count,
                    )
                })
                .collect::<Vec<ByteString>>()
        };
        self.take_snapshot(msg.filter.clone(), ctx, frame_rows, move |topic, taken| {
            let (seq, mut frames, after) = match taken {
                Ok(taken) => taken,
                Err(error) => return topic.refuse(&msg, error),
            };
            frames.extend(
                after
                    .iter()
                    .filter(|change| change.visible_through(&msg.filter))
                    .map(|change| TopicFrame::db_change(change).for_spelling(&msg.spelling)),
            );
            topic.admit_at(msg, false, seq, frames);
        });
    }

    /// Reads the table's rows matching `filter` at one cut ([`snapshot`]),
    /// off the actor's thread, and the log between that cut and what this
    /// topic has delivered, in the same step. When the topic is behind the
    /// cut, those changes go to its subscribers now (the tracker's copies
    /// are skipped later, as older than the topic's seq); when it is ahead,
    /// they are handed to `then` with the rows: the changes after the cut
    /// that a new subscriber still needs. The topic handles nothing else
    /// meanwhile, so its seq is stable while the read runs.
    /// `prepare` turns the rows into what `then` needs, on the read's
    /// blocking thread.
    pub(super) fn take_snapshot<S: Send + 'static>(
        &mut self,
        filter: Filter,
        ctx: &mut Context<Self>,
        prepare: impl FnOnce(Snapshot) -> S + Send + 'static,
        then: impl FnOnce(&mut Self, Result<(u64, S, Vec<Change>), ProtocolError>) + 'static,
    ) {
        let Some(TableState {
            tracking,
            shape: Some(shape),
        }) = self.table.as_deref()
        else {
            let error = ProtocolError::unavailable("the table is not watched");
            return then(self, Err(error));
        };
        if let Some(column) = filter.unknown_column(&shape.columns) {
            let error = ProtocolError::bad_request(format!(
                "table `{}` has no column `{column}`",
                self.name
            ));
            return then(self, Err(error));
        }
        let Some(table) = tracking.tracker.table(self.name.as_str()) else {
            let error = ProtocolError::forbidden(format!("table `{}` is not served", self.name));
            return then(self, Err(error));
        };
        let (db, columns, decoder) = (
            tracking.db.clone(),
            shape.columns.clone(),
            shape.decoder.clone(),
        );
        let max_rows = tracking.max_snapshot_rows;
        let known = self.seq;
        // Read, framed and decoded on the pool's blocking thread: a large
        // table's rows never hold up the actor's thread.
        let read = async move {
            db.run(move |conn| {
                let request = SnapshotRequest {
                    table: &table,
                    columns: &columns,
                    decoder: &decoder,
                    filter: &filter,
                    max_rows,
                };
                let snapshot = match snapshot::read(conn, &request) {
                    Ok(snapshot) => snapshot,
                    Err(SnapshotError::Db(e)) => return Err(e),
                    Err(refused) => return Ok(Err(refused)),
                };
                let (from, to) = (known.min(snapshot.seq), known.max(snapshot.seq));
                let between: Vec<Change> = match from < to {
                    true => changes::read_range(conn, &table.topic, from, to, i64::MAX)?
                        .into_iter()
                        .filter_map(|row| row.decode(&decoder))
                        .collect(),
                    false => Vec::new(),
                };
                let seq = snapshot.seq;
                Ok(Ok((seq, prepare(snapshot), between)))
            })
            .await
        };
        ctx.wait(read.into_actor(self).map(move |result, topic, _ctx| {
            let (seq, shaped, between) = match result {
                Ok(Ok(read)) => read,
                Ok(Err(refused)) => return then(topic, Err(refused.into())),
                Err(e) => {
                    let error = ProtocolError::unavailable(format!("the snapshot failed: {e}"));
                    return then(topic, Err(error));
                }
            };
            if seq <= topic.seq {
                let after = between
                    .into_iter()
                    .filter(|change| change.seq > seq)
                    .collect();
                return then(topic, Ok((seq, shaped, after)));
            }
            for change in between {
                if change.seq > topic.seq {
                    topic.seq = change.seq;
                    topic.publish_change(change);
                }
            }
            topic.seq = topic.seq.max(seq);
            // Those went to the subscribers already here.
            topic.flush_fan_out();
            then(topic, Ok((seq, shaped, Vec::new())));
        }));
    }
}
