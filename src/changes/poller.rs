//! `PollerActor`: the change tracker's loop, on a `SyncArbiter` thread of its
//! own with a dedicated database connection, so its blocking reads never hold
//! up an actor thread.
//!
//! The loop. While at least one table topic watches, the actor's `Tick`
//! handler loops: every `--poll-interval-ms` it asks its [`ChangeSource`]
//! whether anything may have committed (SQLite: `PRAGMA data_version` and
//! `schema_version`; PostgreSQL with triggers: two lookups in small partial
//! indexes; logical decoding: the replication stream), which costs no read
//! of the log, and reads the log after its cursor when
//! so, or when [`FULL_READ_EVERY`] has passed without a read. It leaves the
//! loop (and lets its mailbox run) only when a [`Tracker`] call knocks, so an
//! idle tracker costs one timed sleep per period and no message traffic. Changes go to each table's topic as one `TableChanged` per table per
//! read, in `seq` order. On a database error it logs, waits
//! [`ERROR_BACKOFF`] and carries on from the same cursor, so nothing is
//! skipped. With no topic watching it stops ticking, and a `Watch` starts it
//! again. Cost per tick depends on the number of new changes, never on table
//! sizes. `PruneChanges`, sent every minute by the registry, deletes changes
//! older than `--changes-retention-s`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::tables::{TableList, TableRef};
use super::{Change, ChangeSource, TableShape};
use crate::db::DbError;
use crate::metrics::Metrics;
use crate::topic::messages::TableChanged;

/// Read the log at least this often even without a sign of a commit.
pub const FULL_READ_EVERY: Duration = Duration::from_millis(200);
/// Pause after a database error before the next try.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Changes read per query.
const BATCH: i64 = 1000;

/// The handle everyone else holds: it sends the poller a message and then
/// knocks, so the poller's loop yields to its mailbox.
#[derive(Clone)]
pub struct Tracker {
    addr: Addr<PollerActor>,
    /// Set after a message is queued; the loop checks it every period.
    knock: Arc<AtomicBool>,
    /// Which table each table topic reads.
    tables: Arc<TableList>,
}

impl Tracker {
    /// Starts the poller on a thread of its own.
    pub fn start(
        source: Box<dyn ChangeSource>,
        tables: Arc<TableList>,
        probe_every: Duration,
        retention: Duration,
        metrics: Metrics,
    ) -> Tracker {
        let knock = Arc::new(AtomicBool::new(false));
        let source = Mutex::new(Some(source));
        let loop_knock = knock.clone();
        let addr = SyncArbiter::start(1, move || {
            // unwrap: a SyncArbiter of one thread calls this factory once.
            let source = source
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .expect("one tracker thread");
            PollerActor::new(
                source,
                probe_every,
                retention,
                loop_knock.clone(),
                metrics.clone(),
            )
        });
        Tracker {
            addr,
            knock,
            tables,
        }
    }

    fn knock(&self) {
        self.knock.store(true, Ordering::Release);
    }

    /// Start delivering the changes of the table that the table topic
    /// `name` reads to `topic`: see [`Watch`]. `None` when `--tables` does
    /// not list it or there is no such table.
    pub fn watch(
        &self,
        name: &str,
        topic: Recipient<TableChanged>,
    ) -> impl Future<Output = Result<Option<Watched>, DbError>> + 'static {
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.tables.resolve(name) {
            Some(table) => {
                // do_send, then knock: the message is queued before the loop yields.
                self.addr.do_send(Watch {
                    table,
                    topic,
                    reply,
                });
                self.knock();
            }
            None => {
                let _ = reply.send(Ok(None));
            }
        }
        async move {
            answer
                .await
                .unwrap_or_else(|_| Err(DbError::Task("the change tracker stopped".into())))
        }
    }

    /// The table topic `name` reads, when `--tables` serves it.
    pub fn table(&self, name: &str) -> Option<TableRef> {
        self.tables.resolve(name)
    }

    pub fn prune(&self) {
        self.addr.do_send(PruneChanges);
        self.knock();
    }

    pub fn stop(&self) {
        self.addr.do_send(StopTracking);
        self.knock();
    }
}

pub struct PollerActor {
    source: Box<dyn ChangeSource>,
    knock: Arc<AtomicBool>,
    /// The seq of the last change read; the next read starts after it.
    cursor: u64,
    /// Each watched table's topic. A topic that stopped is dropped at the next dispatch.
    topics: HashMap<String, Recipient<TableChanged>>,
    probe_every: Duration,
    retention: Duration,
    last_read: Instant,
    ticking: bool,
    metrics: Metrics,
}

impl PollerActor {
    fn new(
        source: Box<dyn ChangeSource>,
        probe_every: Duration,
        retention: Duration,
        knock: Arc<AtomicBool>,
        metrics: Metrics,
    ) -> Self {
        PollerActor {
            source,
            knock,
            cursor: 0,
            topics: HashMap::new(),
            probe_every,
            retention,
            last_read: Instant::now(),
            ticking: false,
            metrics,
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
            if change.repaired {
                self.metrics.change_rows_repaired.inc();
            }
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
        loop {
            self.topics.retain(|_, topic| topic.connected());
            if self.topics.is_empty() {
                self.ticking = false;
                return;
            }
            if let Err(error) = self.read() {
                tracing::warn!(%error, "change tracker: reading the log failed; reconnecting");
                std::thread::sleep(ERROR_BACKOFF);
                if let Err(error) = self.source.reconnect() {
                    tracing::warn!(%error, "change tracker: cannot reconnect yet");
                }
            }
            self.source.wait(self.probe_every);
            if self.knock.swap(false, Ordering::AcqRel) {
                // Let the queued messages run; this Tick comes after them.
                ctx.address().do_send(Tick);
                return;
            }
        }
    }
}

/// Start delivering `table`'s changes to `topic`, installing capture if
/// needed. Answers the table's shape and its latest seq, or `None` when
/// there is no such table.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub table: TableRef,
    pub topic: Recipient<TableChanged>,
    pub reply: tokio::sync::oneshot::Sender<Result<Option<Watched>, DbError>>,
}

#[derive(Debug, Clone)]
pub struct Watched {
    pub shape: TableShape,
    /// The table's newest change in the log: the topic's starting seq.
    pub latest_seq: u64,
}

impl Handler<Watch> for PollerActor {
    type Result = ();

    fn handle(&mut self, msg: Watch, ctx: &mut Self::Context) {
        let answer = self.watch(msg.table, msg.topic, ctx);
        let _ = msg.reply.send(answer);
    }
}

impl PollerActor {
    fn watch(
        &mut self,
        table: TableRef,
        topic: Recipient<TableChanged>,
        ctx: &mut SyncContext<Self>,
    ) -> Result<Option<Watched>, DbError> {
        let Some(shape) = self.source.watch(&table)? else {
            return Ok(None);
        };
        if !self.ticking {
            // Nothing was being read: start from now. Older changes stay in
            // the log for clients resuming with `since`.
            self.cursor = self.source.latest_seq(None)?;
            self.ticking = true;
            ctx.address().do_send(Tick);
        }
        let latest_seq = self.source.latest_seq(Some(&table.topic))?;
        self.topics.insert(table.topic, topic);
        Ok(Some(Watched { shape, latest_seq }))
    }
}

/// Delete changes older than the retention window (and, when idle, keep
/// logical capture's slot read).
#[derive(Message)]
#[rtype(result = "()")]
struct PruneChanges;

impl Handler<PruneChanges> for PollerActor {
    type Result = ();

    fn handle(&mut self, _msg: PruneChanges, _ctx: &mut Self::Context) {
        if !self.ticking {
            // Logical capture: a slot nobody reads keeps WAL, so it is read
            // (into the log) even while no topic watches.
            if let Err(error) = self.source.probe() {
                tracing::warn!(%error, "change tracker: reading capture while idle failed");
            }
        }
        let cutoff = crate::clock::now_ms() - self.retention.as_millis() as i64;
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
struct StopTracking;

impl Handler<StopTracking> for PollerActor {
    type Result = ();

    fn handle(&mut self, _msg: StopTracking, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
