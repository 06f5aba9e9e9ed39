//! `PollerActor`: the change tracker's loop, on a `SyncArbiter` thread of its
//! own with a dedicated database connection, so its blocking reads never hold
//! up an actor thread.
//!
//! The loop. While at least one table topic watches, the actor handles a
//! `Tick` every `--poll-interval-ms`: it asks its [`ChangeSource`] whether
//! anything may have committed (SQLite: `PRAGMA data_version`; PostgreSQL:
//! pending notifications), which costs no read of the log, and reads the log
//! after its cursor when so, or when [`FULL_READ_EVERY`] has passed without a
//! read. Changes go to each table's topic as one `TableChanged` per table per
//! read, in `seq` order. On a database error it logs, waits
//! [`ERROR_BACKOFF`] and carries on from the same cursor, so nothing is
//! skipped. With no topic watching it stops ticking, and a `Watch` starts it
//! again. Cost per tick depends on the number of new changes, never on table
//! sizes. `PruneChanges`, sent every minute by the registry, deletes changes
//! older than `--changes-retention-s`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{Change, ChangeSource, TableShape};
use crate::db::DbError;
use crate::topic::messages::TableChanged;

/// Read the log at least this often even without a sign of a commit.
pub const FULL_READ_EVERY: Duration = Duration::from_millis(200);
/// Pause after a database error before the next try.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Changes read per query.
const BATCH: i64 = 1000;

pub struct PollerActor {
    source: Box<dyn ChangeSource>,
    /// The seq of the last change read; the next read starts after it.
    cursor: u64,
    /// Each watched table's topic. A topic that stopped is dropped at the next dispatch.
    topics: HashMap<String, Recipient<TableChanged>>,
    probe_every: Duration,
    retention: Duration,
    last_read: Instant,
    ticking: bool,
}

impl PollerActor {
    pub fn new(source: Box<dyn ChangeSource>, probe_every: Duration, retention: Duration) -> Self {
        PollerActor {
            source,
            cursor: 0,
            topics: HashMap::new(),
            probe_every,
            retention,
            last_read: Instant::now(),
            ticking: false,
        }
    }

    fn read(&mut self) -> Result<(), DbError> {
        let probe = self.source.probe()?;
        if !probe.committed && self.last_read.elapsed() < FULL_READ_EVERY {
            return Ok(());
        }
        self.last_read = Instant::now();
        loop {
            let changes = self.source.poll(self.cursor, BATCH)?;
            let full = changes.len() as i64 == BATCH;
            if let Some(last) = changes.last() {
                self.cursor = last.seq;
            }
            self.dispatch(changes);
            if !full {
                return Ok(());
            }
        }
    }

    fn dispatch(&mut self, changes: Vec<Change>) {
        let mut by_table: HashMap<String, Vec<Change>> = HashMap::new();
        for change in changes {
            if self.topics.contains_key(&change.table) {
                by_table
                    .entry(change.table.clone())
                    .or_default()
                    .push(change);
            }
        }
        for (table, changes) in by_table {
            if let Some(topic) = self.topics.get(&table) {
                if topic.connected() {
                    topic.do_send(TableChanged { changes });
                } else {
                    self.topics.remove(&table);
                }
            }
        }
    }
}

impl Actor for PollerActor {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

impl Handler<Tick> for PollerActor {
    type Result = ();

    fn handle(&mut self, _msg: Tick, ctx: &mut Self::Context) {
        self.topics.retain(|_, topic| topic.connected());
        if self.topics.is_empty() {
            self.ticking = false;
            return;
        }
        if let Err(error) = self.read() {
            tracing::warn!(%error, "change tracker: reading the log failed; retrying");
            std::thread::sleep(ERROR_BACKOFF);
        }
        std::thread::sleep(self.probe_every);
        ctx.address().do_send(Tick);
    }
}

/// Start delivering `table`'s changes to `topic`, installing capture if
/// needed. Answers the table's shape and its latest seq, or `None` when
/// there is no such table.
#[derive(Message)]
#[rtype(result = "Result<Option<Watched>, DbError>")]
pub struct Watch {
    pub table: String,
    pub topic: Recipient<TableChanged>,
}

#[derive(Debug, Clone)]
pub struct Watched {
    pub shape: TableShape,
    /// The table's newest change in the log: the topic's starting seq.
    pub latest_seq: u64,
}

impl Handler<Watch> for PollerActor {
    type Result = Result<Option<Watched>, DbError>;

    fn handle(&mut self, msg: Watch, ctx: &mut Self::Context) -> Self::Result {
        let Some(shape) = self.source.watch(&msg.table)? else {
            return Ok(None);
        };
        if !self.ticking {
            // Nothing was being read: start from now. Older changes stay in
            // the log for clients resuming with `since`.
            self.cursor = self.source.latest_seq(None)?;
            self.ticking = true;
            ctx.address().do_send(Tick);
        }
        let latest_seq = self.source.latest_seq(Some(&msg.table))?;
        self.topics.insert(msg.table, msg.topic);
        Ok(Some(Watched { shape, latest_seq }))
    }
}

/// Delete changes older than the retention window.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PruneChanges;

impl Handler<PruneChanges> for PollerActor {
    type Result = ();

    fn handle(&mut self, _msg: PruneChanges, _ctx: &mut Self::Context) {
        let cutoff = crate::topic::actor::now_ms() - self.retention.as_millis() as i64;
        match self.source.prune(cutoff) {
            Ok(Some(through)) => tracing::debug!(through, "change log pruned"),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "change tracker: pruning failed"),
        }
    }
}

/// Stop the tracker (server shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopTracking;

impl Handler<StopTracking> for PollerActor {
    type Result = ();

    fn handle(&mut self, _msg: StopTracking, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
