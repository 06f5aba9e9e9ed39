//! The PostgreSQL change source through logical decoding: no trigger on the
//! application's tables and no cost to its writes. Watched tables join the
//! `realtide` publication with REPLICA IDENTITY FULL (so `old` is the whole
//! row), and a persistent replication slot (`realtide_<epoch>`, plugin
//! `pgoutput`) is streamed over a replication connection ([`stream`]).
//!
//! Decoding yields whole transactions in commit order, so each change's
//! `seq` is given as it is read: `seq` order is commit order, and a
//! transaction left open elsewhere holds nothing back. One connection may
//! stream a slot, so one node of a cluster captures; the others fail to
//! open it and try again every [`STREAM_RETRY`]. One transaction writes a
//! batch of whole transactions into the change log and records the end of
//! the last commit written; only after it commits is the slot told it may
//! move. A crash between the two has the server send transactions the log
//! already has, and they are skipped by that record: each change is logged
//! once. A long transaction is logged in steps while the server is still
//! sending it ([`steps`]). Resume, `since` and retention read the log as
//! with triggers. The capturing node hands what it logged to topics once it
//! committed, without reading it back; the other nodes read the log when
//! the capturing node notifies them. The slot and publication are set up
//! in [`publication`].
//!
//! A slot nobody reads keeps WAL forever: the tracker also reads it when no
//! topic watches, exports its lag, and warns when it grows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

pub mod pgoutput;
pub mod pgtext;
mod publication;
mod rows;
mod steps;
mod stream;

use pgoutput::Relation;
use steps::{Logged, Partial};
use stream::ReplicationStream;

use super::fresh::Fresh;
use super::libpq::Listener;
use super::postgres::{self, PostgresSource, WatchedTables};
use super::tables::{TableList, TableRef};
use super::{CaptureStatus, Change, ChangeSource, Probe, TableShape};
use crate::db::{DatabaseUrl, DbConnection, DbError};
use crate::metrics::Metrics;

/// The publication watched tables join.
pub const PUBLICATION: &str = "realtide";
/// Key of the advisory lock under which the slot and publication are created.
const SETUP_LOCK: i64 = 0x7274_736c_6f74_7375; // "rtslotsu"
/// Pause before streaming the slot again after it failed or was in use.
const STREAM_RETRY: Duration = Duration::from_secs(2);
/// After a pass that logged a few changes, how long more commits may gather
/// before the next: under a stream of small commits, each log transaction
/// (statements planned and a commit flushed) then carries many of them.
const GATHER: Duration = Duration::from_millis(5);
/// Warn when the slot holds back more WAL than this.
const LAG_WARNING_BYTES: i64 = 1 << 30;
/// How long creating the slot may wait for transactions open at that moment.
const SLOT_CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this server can use logical decoding: `None` when it can, or why not.
pub fn unavailable_because(conn: &mut DbConnection) -> Result<Option<String>, DbError> {
    #[derive(QueryableByName)]
    struct Ability {
        #[diesel(sql_type = Text)]
        wal_level: String,
        #[diesel(sql_type = Bool)]
        may_replicate: bool,
    }
    let ability: Ability = diesel::sql_query(
        "SELECT current_setting('wal_level') AS wal_level, \
         (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) AS may_replicate",
    )
    .get_result(conn)?;
    Ok(if ability.wal_level != "logical" {
        Some(format!(
            "wal_level is {}, not logical (ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)",
            ability.wal_level
        ))
    } else if !ability.may_replicate {
        Some(
            "the database role has neither REPLICATION nor SUPERUSER (ALTER ROLE <role> REPLICATION)"
                .to_string(),
        )
    } else {
        None
    })
}

/// The slot of the database whose epoch is `epoch`.
pub fn slot_name(epoch: &str) -> String {
    format!("realtide_{epoch}")
}

pub struct LogicalSource {
    conn: DbConnection,
    url: DatabaseUrl,
    slot: String,
    /// In `--capture auto`, a failure to set up the slot falls back to triggers.
    may_fall_back: bool,
    /// Set once the slot could not be set up: every call goes there.
    triggers: Option<PostgresSource>,
    slot_ready: bool,
    watched: WatchedTables,
    /// Relations as the last decoding call described them, by oid.
    relations: HashMap<u32, Relation>,
    /// Each relation's topic (the log's table name), or `None` for a
    /// published table that `--tables` does not serve, by oid.
    relation_topics: HashMap<u32, Option<String>>,
    /// `--tables`: which topic reads which table.
    tables: Arc<TableList>,
    /// `format_type` of the types only the server can convert.
    type_names: HashMap<u32, String>,
    /// The url, for the replication connection.
    url_text: String,
    /// The slot's stream, while this node reads it.
    stream: Option<ReplicationStream>,
    /// When to try opening the stream again (another node may hold it).
    stream_retry: Option<Instant>,
    /// `pgoutput` messages received and not yet logged.
    received: Vec<Vec<u8>>,
    /// What the last pass logged, until polled.
    fresh: Fresh,
    /// Until when commits gather before the next pass (see [`GATHER`]).
    gather_until: Option<Instant>,
    /// The end of the last commit in the log, as last read or written.
    logged: Option<u64>,
    /// The transaction being logged in steps, as last read or written.
    partial: Option<Partial>,
    /// While another node streams the slot: its notifications wake this
    /// node's tracker and tell it to read the log.
    listener: Option<Listener>,
    /// Trigger-written changes from before logical capture still wait for their seq.
    trigger_backlog: bool,
    lag_warned: bool,
    status: CaptureStatus,
    metrics: Metrics,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    value: bool,
}

impl LogicalSource {
    /// `conn` must be a PostgreSQL connection of its own (the tracker's).
    pub fn new(
        conn: DbConnection,
        url: DatabaseUrl,
        epoch: &str,
        tables: Arc<TableList>,
        may_fall_back: bool,
        status: CaptureStatus,
        metrics: Metrics,
    ) -> Result<Self, DbError> {
        let url_text = match &url {
            DatabaseUrl::Postgres(text) => text.clone(),
            DatabaseUrl::Sqlite(_) => String::new(),
        };
        let mut source = LogicalSource {
            conn,
            url,
            slot: slot_name(epoch),
            may_fall_back,
            triggers: None,
            slot_ready: false,
            watched: WatchedTables::new(),
            relations: HashMap::new(),
            relation_topics: HashMap::new(),
            tables,
            type_names: HashMap::new(),
            url_text,
            stream: None,
            stream_retry: None,
            gather_until: None,
            received: Vec::new(),
            fresh: Fresh::default(),
            logged: None,
            partial: None,
            listener: None,
            trigger_backlog: true,
            lag_warned: false,
            status,
            metrics,
        };
        source.prepare_connection()?;
        Ok(source)
    }

    fn prepare_connection(&mut self) -> Result<(), DbError> {
        // pgtext reads dates in ISO style.
        self.conn.batch_execute("SET DateStyle = 'ISO, YMD'")?;
        Ok(())
    }

    /// `--capture auto`: triggers from now on, for the reason given.
    fn fall_back(&mut self, why: String) -> Result<&mut PostgresSource, DbError> {
        tracing::warn!(reason = %why, "change capture: logical decoding is not possible; using triggers");
        self.status.set("triggers", Some(why));
        self.metrics.capture_logical.set(0);
        let conn = crate::db::connect_to(&self.url)?;
        Ok(self
            .triggers
            .insert(PostgresSource::new(conn, self.url.clone())))
    }

    /// The connection as PostgreSQL's own, for array parameters.
    fn pg(&mut self) -> Result<&mut PgConnection, DbError> {
        match &mut self.conn {
            DbConnection::Pg(pg) => Ok(pg),
            DbConnection::Sqlite(_) => Err(DbError::Url(
                "logical decoding needs a PostgreSQL connection".into(),
            )),
        }
    }

    /// Moves what the slot streamed into the change log. Returns how many
    /// changes were written (0 too while another node streams the slot).
    fn capture(&mut self) -> Result<usize, DbError> {
        if self.stream.is_none() {
            if self.stream_retry.is_some_and(|at| Instant::now() < at) {
                return Ok(0);
            }
            match ReplicationStream::open(&self.url_text, &self.slot, PUBLICATION) {
                Ok(stream) => {
                    self.stream = Some(stream);
                    // This node writes the log now: no one else's notifications to hear.
                    self.listener = None;
                    self.logged = None;
                    self.stream_retry = None;
                    self.received.clear();
                }
                Err(error) => {
                    if !error.slot_in_use() {
                        tracing::warn!(%error, "change capture: cannot stream the replication slot yet");
                    } else if self.listener.is_none() {
                        // Another node streams: hear when it writes the log.
                        self.listener = Listener::open(&self.url_text, "_realtide_changes").ok();
                    }
                    self.stream_retry = Some(Instant::now() + STREAM_RETRY);
                    return Ok(0);
                }
            }
        }
        let Some(stream) = &mut self.stream else {
            return Ok(0);
        };
        if let Err(error) = stream.read_available(&mut self.received) {
            tracing::warn!(%error, "change capture: the replication stream broke; reopening");
            // What was received and not logged comes again from the slot.
            self.stream = None;
            self.received.clear();
            return Ok(0);
        }
        let wal_end = stream.wal_end();
        let upto = self.log_upto();
        // What is logged of transactions that committed can leave the buffer.
        let whole = self.received[..upto]
            .iter()
            .rposition(|m| m.first() == Some(&b'C'))
            .map_or(0, |last| last + 1);
        if upto == 0 && !self.trigger_backlog {
            if self.received.is_empty() {
                // Everything sent is logged: the slot may move to the WAL's end.
                self.confirm(wal_end)?;
            }
            return Ok(0);
        }
        self.conn.batch_execute("BEGIN")?;
        match self.log_received(upto) {
            Ok(Some(Logged {
                changes,
                last_end,
                partial,
            })) => {
                let written = changes.len();
                // One round trip: how far the log goes, the other nodes' wake-up, commit.
                let notify = if written > 0 {
                    "SELECT pg_notify('_realtide_changes', '');"
                } else {
                    ""
                };
                // 0: nothing was read from the slot (trigger-written changes only).
                let through = if last_end > 0 {
                    format!(
                        "INSERT INTO _realtide_meta (key, value) VALUES ('capture_lsn', '{last_end}') \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
                    )
                } else {
                    String::new()
                };
                let steps = match &partial {
                    Some(p) => format!(
                        "INSERT INTO _realtide_meta (key, value) VALUES ('capture_partial', '{p}') \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
                    ),
                    None => String::new(),
                };
                if let Err(error) = self
                    .conn
                    .batch_execute(&format!("{through} {steps} {notify} COMMIT;"))
                {
                    let _ = self.conn.batch_execute("ROLLBACK");
                    self.logged = None;
                    return Err(error.into());
                }
                if last_end > 0 {
                    self.logged = Some(last_end);
                }
                if partial.is_some() {
                    self.partial = partial;
                }
                self.fresh.hold(changes);
                // A pass that logged a step or more goes on at once.
                self.gather_until =
                    (written > 0 && written < rows::INSERT_ROWS).then(|| Instant::now() + GATHER);
                self.received.drain(..whole);
                let safe = if self.received.is_empty() {
                    last_end.max(wal_end)
                } else {
                    last_end
                };
                self.confirm(safe)?;
                Ok(written)
            }
            Ok(None) => {
                self.conn.batch_execute("ROLLBACK")?;
                Ok(0)
            }
            Err(error) => {
                let _ = self.conn.batch_execute("ROLLBACK");
                self.logged = None;
                Err(error)
            }
        }
    }

    fn confirm(&mut self, lsn: u64) -> Result<(), DbError> {
        let Some(stream) = &mut self.stream else {
            return Ok(());
        };
        if lsn > 0
            && let Err(error) = stream.confirm(lsn)
        {
            tracing::warn!(%error, "change capture: the replication stream broke; reopening");
            self.stream = None;
            self.received.clear();
        }
        Ok(())
    }
}

impl ChangeSource for LogicalSource {
    fn watch(&mut self, table: &TableRef) -> Result<Option<TableShape>, DbError> {
        if let Some(triggers) = &mut self.triggers {
            return triggers.watch(table);
        }
        if let Err(error) = self.set_up() {
            if !self.may_fall_back {
                return Err(error);
            }
            return self
                .fall_back(format!("setting up the replication slot failed: {error}"))?
                .watch(table);
        }
        let Some(shape) = postgres::table_shape(&mut self.conn, table)? else {
            return Ok(None);
        };
        self.publish(table)?;
        self.watched.insert(table, shape.decoder.clone());
        Ok(Some(shape))
    }

    fn probe(&mut self) -> Result<Probe, DbError> {
        if let Some(triggers) = &mut self.triggers {
            return triggers.probe();
        }
        // Another node's write into the log (only while this one does not stream).
        let notified = match self.listener.as_mut().map(Listener::notified) {
            Some(Ok(heard)) => heard,
            Some(Err(_)) => {
                self.listener = None;
                true
            }
            None => false,
        };
        let written = if self.slot_ready { self.capture()? } else { 0 };
        let schema_changed = self.watched.refresh_if_due(&mut self.conn)?;
        if schema_changed && self.slot_ready {
            self.measure_lag()?;
        }
        Ok(Probe {
            committed: written > 0 || notified,
            schema_changed,
        })
    }

    fn poll(&mut self, cursor: u64, limit: i64) -> Result<Vec<Change>, DbError> {
        if let Some(triggers) = &mut self.triggers {
            return triggers.poll(cursor, limit);
        }
        if let Some(fresh) = self.fresh.take(cursor, limit) {
            return Ok(fresh);
        }
        self.watched.read_after(&mut self.conn, cursor, limit)
    }

    fn reconnect(&mut self) -> Result<(), DbError> {
        if let Some(triggers) = &mut self.triggers {
            return triggers.reconnect();
        }
        self.conn = crate::db::connect_to(&self.url)?;
        self.prepare_connection()
    }

    fn wait(&mut self, timeout: Duration) {
        if let Some(triggers) = &mut self.triggers {
            return triggers.wait(timeout);
        }
        match (&self.stream, &mut self.listener) {
            // Wakes as soon as the server streams a commit, but lets a
            // busy stream's commits gather.
            (Some(stream), _) => {
                if stream.wait(timeout)
                    && let Some(left) = self
                        .gather_until
                        .and_then(|at| at.checked_duration_since(Instant::now()))
                {
                    std::thread::sleep(left);
                }
            }
            // Another node captures: wake at its notification.
            (None, Some(listener)) => listener.wait(timeout),
            (None, None) => std::thread::sleep(timeout),
        }
    }

    fn connection(&mut self) -> &mut DbConnection {
        match &mut self.triggers {
            Some(triggers) => triggers.connection(),
            None => &mut self.conn,
        }
    }
}
