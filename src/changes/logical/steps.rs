//! What the slot streamed, into the change log: whole transactions, and a
//! long one in steps while PostgreSQL is still sending it, each change once.
//!
//! PostgreSQL sends a transaction only once it has committed, change by
//! change. A pass logs at most [`STEP_CHANGES`] of them, cut anywhere, and
//! the tracker delivers each step before it logs the next, so a bulk
//! commit's first changes reach clients while the rest still arrives. With
//! a step, the log records how many of that transaction's changes it holds
//! (`capture_partial` = `<final_lsn>:<count>`), in the same transaction as
//! the changes; sent again after a crash, the transaction skips them.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::pgoutput::{self, Message};
use super::pgtext::ServerCast;
use super::postgres::{self, SEQUENCER_LOCK};
use super::rows::{self, Decoded};
use super::{Flag, LogicalSource};
use crate::changes::Change;
use crate::changes::Operation::{Delete, Insert, Update};
use crate::db::DbError;

/// Trigger-written changes numbered per step while they drain.
const BACKLOG_ROWS: i64 = 20_000;
/// Changes logged per pass, at most.
const STEP_CHANGES: usize = 5_000;

/// A transaction logged in steps while it arrives: the first `logged` of
/// its changes are in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Partial {
    /// Where the transaction commits (its `Begin`'s final LSN).
    final_lsn: u64,
    logged: usize,
}

/// What one pass wrote into the log.
#[derive(Default)]
pub(super) struct Logged {
    /// The changes, as the log holds them: trigger-written ones it numbered
    /// first, then those it logged from the slot.
    pub changes: Vec<Change>,
    /// The end of the last commit logged (0: nothing was read from the slot).
    pub last_end: u64,
    /// How far the transaction the messages end in is logged.
    pub partial: Option<Partial>,
}

/// What [`LogicalSource::read_messages`] found in the received messages.
struct Read {
    /// Changes the log does not hold yet, in commit order.
    decoded: Vec<Decoded>,
    /// Values only the server can turn into JSON.
    casts: ServerCast,
    /// The end of the last commit read.
    last_end: u64,
    /// How far the transaction still arriving is now logged.
    partial: Option<Partial>,
}

/// `<final_lsn>:<logged>`, as the log's meta table keeps it.
impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.final_lsn, self.logged)
    }
}

impl Partial {
    /// What [`Partial`]'s `Display` wrote.
    fn parse(text: &str) -> Option<Partial> {
        let (at, logged) = text.split_once(':')?;
        Some(Partial {
            final_lsn: at.parse().ok()?,
            logged: logged.parse().ok()?,
        })
    }
}

impl LogicalSource {
    /// How many received messages to log now: whole transactions, and the
    /// start of one still arriving once a log statement's worth of its
    /// changes is not yet logged; at most a step of changes, cut anywhere,
    /// even inside a transaction. Steps keep delivery close behind the
    /// server's sending: the tracker delivers each before it logs the next.
    pub(super) fn log_upto(&self) -> usize {
        let (mut unlogged, mut whole) = (0, 0);
        // The transaction being read: its changes so far, how many of them
        // the log already holds, and how many it does not.
        let (mut seen, mut skip, mut open) = (0, 0, 0);
        for (i, message) in self.received.iter().enumerate() {
            if pgoutput::is_change(message) {
                seen += 1;
                if seen > skip {
                    unlogged += 1;
                    open += 1;
                    if unlogged == STEP_CHANGES {
                        return i + 1;
                    }
                }
                continue;
            }
            // Only a transaction's ends matter here, and only a begin is decoded.
            match message.first() {
                Some(b'B') => {
                    if let Ok(Message::Begin { final_lsn, .. }) = pgoutput::decode(message) {
                        (seen, open) = (0, 0);
                        skip = self.logged_of(final_lsn, self.logged.unwrap_or(0));
                    }
                }
                Some(b'C') => {
                    whole = i + 1;
                    open = 0;
                }
                _ => {}
            }
        }
        if open >= rows::INSERT_ROWS {
            self.received.len()
        } else {
            whole
        }
    }

    /// How many changes of the transaction that commits at `final_lsn` the
    /// log holds: all of them when it committed before the end of the last
    /// commit logged, `logged_through` (sent again after a crash, before
    /// the slot was told), else those logged in steps.
    fn logged_of(&self, final_lsn: u64, logged_through: u64) -> usize {
        match &self.partial {
            _ if final_lsn < logged_through => usize::MAX,
            Some(p) if p.final_lsn == final_lsn => p.logged,
            _ => 0,
        }
    }

    /// In a transaction: the first `upto` received messages into the log,
    /// which may end inside a transaction. `None` when another node holds
    /// the sequencer's lock (try again).
    pub(super) fn log_received(&mut self, upto: usize) -> Result<Option<Logged>, DbError> {
        let mut backlog = Vec::new();
        if self.trigger_backlog {
            // Another node may number trigger-written changes too: take turns.
            let locked: Flag = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS value")
                .bind::<BigInt, _>(SEQUENCER_LOCK)
                .get_result(&mut self.conn)?;
            if !locked.value {
                return Ok(None);
            }
            // Changes written by triggers before this node read the slot
            // come first, in their own order.
            let numbered = postgres::number_ready_changes(&mut self.conn, BACKLOG_ROWS)?;
            backlog = self.watched.decode(numbered);
            self.trigger_backlog = postgres::unnumbered_changes(&mut self.conn)?;
            if self.trigger_backlog || upto == 0 {
                return Ok(Some(Logged {
                    changes: backlog,
                    ..Logged::default()
                }));
            }
        }
        // Only the node streaming the slot writes after it: what it read
        // once stays true while it streams.
        let logged_through = match self.logged {
            Some(through) => through,
            None => {
                let (through, partial) = self.logged_through()?;
                self.partial = partial;
                *self.logged.insert(through)
            }
        };
        // Taken out while they are read, put back whatever happens.
        let received = std::mem::take(&mut self.received);
        let read = self.read_messages(&received[..upto], logged_through);
        self.received = received;
        let read = read?;
        let mut changes = backlog;
        if !read.decoded.is_empty() {
            let converted = self.server_casts(read.casts)?;
            changes.extend(self.write_log(read.decoded, &converted)?);
        }
        Ok(Some(Logged {
            changes,
            last_end: read.last_end.max(logged_through),
            partial: read.partial,
        }))
    }

    /// Decodes `messages` into the changes the log does not hold yet (see
    /// [`Self::log_received`]).
    fn read_messages(
        &mut self,
        messages: &[Vec<u8>],
        logged_through: u64,
    ) -> Result<Read, DbError> {
        let mut casts = ServerCast::default();
        let mut decoded = Vec::new();
        let mut transaction: Vec<Decoded> = Vec::new();
        let mut commit_ms = 0;
        let mut last_end = 0;
        // The transaction being read: where it commits, its changes so far,
        // how many of them the log already holds, and whether its commit
        // is still to come.
        let (mut final_lsn, mut seen, mut skip) = (0, 0, 0);
        let mut open = false;
        for data in messages {
            if pgoutput::is_change(data) {
                seen += 1;
                if seen <= skip {
                    continue;
                }
            }
            match pgoutput::decode(data)
                .map_err(|e| DbError::Task(format!("logical decoding: {e}")))?
            {
                Message::Begin {
                    final_lsn: at,
                    commit_time,
                } => {
                    transaction.clear();
                    commit_ms = pgoutput::unix_ms(commit_time);
                    (final_lsn, seen, open) = (at, 0, true);
                    skip = self.logged_of(at, logged_through);
                }
                Message::Relation(relation) => {
                    let topic = self.topic_of(&relation)?;
                    self.relation_topics.insert(relation.id, topic);
                    self.relations.insert(relation.id, relation);
                }
                Message::Insert { relation, new } => {
                    let new = self.row(relation, &new, None, &mut casts);
                    transaction.extend(self.decoded(relation, Insert, new, None, commit_ms));
                }
                Message::Update { relation, old, new } => {
                    let new = self.row(relation, &new, old.as_deref(), &mut casts);
                    let old = old.and_then(|old| self.row(relation, &old, None, &mut casts));
                    transaction.extend(self.decoded(relation, Update, new, old, commit_ms));
                }
                Message::Delete { relation, old } => {
                    let old = self.row(relation, &old, None, &mut casts);
                    transaction.extend(self.decoded(relation, Delete, None, old, commit_ms));
                }
                Message::Commit { end_lsn, .. } => {
                    // Logged before a crash that left the slot behind: skip.
                    if end_lsn > logged_through {
                        decoded.append(&mut transaction);
                    }
                    transaction.clear();
                    last_end = end_lsn;
                    (skip, open) = (0, false);
                }
                Message::Other => {}
            }
        }
        // The start of a transaction the messages end in, unless it is one
        // the log holds whole (sent again after a crash).
        let mut partial = None;
        if open && final_lsn >= logged_through {
            decoded.append(&mut transaction);
            partial = Some(Partial {
                final_lsn,
                // Sent again after a crash, it may not have come as far as the log.
                logged: seen.max(skip),
            });
        }
        Ok(Read {
            decoded,
            casts,
            last_end,
            partial,
        })
    }

    /// The end of the last commit whose changes are in the log, and the
    /// transaction last logged in steps.
    fn logged_through(&mut self) -> Result<(u64, Option<Partial>), DbError> {
        #[derive(QueryableByName)]
        struct Meta {
            #[diesel(sql_type = Text)]
            key: String,
            #[diesel(sql_type = Text)]
            value: String,
        }
        let rows: Vec<Meta> = diesel::sql_query(
            "SELECT key, value FROM _realtide_meta WHERE key IN ('capture_lsn', 'capture_partial')",
        )
        .load(&mut self.conn)?;
        let value = |key: &str| rows.iter().find(|m| m.key == key).map(|m| m.value.as_str());
        let through = value("capture_lsn")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let partial = value("capture_partial").and_then(Partial::parse);
        Ok((through, partial))
    }
}
