//! The PostgreSQL change source with triggers. One function serves every
//! table (`row_to_json` follows schema changes by itself): AFTER statement
//! triggers hand it each statement's rows as transition tables, and it
//! writes them all with one INSERT ... SELECT. The triggers do not NOTIFY:
//! a notifying transaction holds a database-wide lock through its commit, so
//! the app's capturing writers would commit one at a time. The tracker asks
//! instead, each poll period, whether committed changes wait for a seq or
//! the log grew (one query over two small partial indexes).
//!
//! Change ids come from a sequence and can commit out of order, so the log is
//! read through a sequencer: changes are numbered in id order, and only as
//! the longest prefix (in id order) of visible unnumbered changes whose
//! transactions can no longer be overtaken (xid below the xmin of a fresh
//! snapshot). A change whose xid is not yet below xmin holds back every later
//! id, even ones whose own xid is: for one row, a later change always has a
//! larger id (its writer waited for the row lock and so for the first one's
//! commit), but may have the older xid. So `seq` order is commit order per
//! row; within a transaction it is statement order. Numbering continues from the highest seq ever given out,
//! pruned ones included, so a seq is never reused. xmin is cluster-wide: a
//! transaction left open anywhere delays delivery until it ends.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};

use super::fresh::Fresh;
use super::tables::TableRef;
use super::{Change, ChangeSource, LogRow, Probe, RowDecoder, TableShape};
use crate::db::{DatabaseUrl, DbConnection, DbError};

/// Key of the advisory lock that lets one sequencer run at a time per database.
pub(super) const SEQUENCER_LOCK: i64 = 0x7265_616c_7469_6465; // "realtide"
/// Changes numbered per sequencer transaction, at most: each is a commit
/// (a WAL flush), so a bulk statement's changes take few of them, however
/// few the tracker reads at a time.
const SEQUENCE_STEP: i64 = 10_000;
/// How often watched tables' columns are re-read (PostgreSQL has no cheap
/// schema version to watch): new bytea columns must decode as base64.
pub(super) const SHAPE_REFRESH: Duration = Duration::from_secs(2);

/// The watched tables' decoders (their bytea columns), re-read every
/// [`SHAPE_REFRESH`], and the log read through them: what both PostgreSQL
/// sources share.
pub(super) struct WatchedTables {
    /// By topic (the log's table name).
    decoders: HashMap<String, (TableRef, RowDecoder)>,
    /// For a table no longer watched: no bytea columns known.
    plain: RowDecoder,
    read_at: Instant,
}

impl WatchedTables {
    pub(super) fn new() -> Self {
        WatchedTables {
            decoders: HashMap::new(),
            plain: RowDecoder::Postgres {
                binary: HashSet::new(),
            },
            read_at: Instant::now(),
        }
    }

    /// How `topic`'s rows are decoded.
    pub(super) fn decoder(&self, topic: &str) -> &RowDecoder {
        self.decoders
            .get(topic)
            .map_or(&self.plain, |(_, decoder)| decoder)
    }

    pub(super) fn insert(&mut self, table: &TableRef, decoder: RowDecoder) {
        self.decoders
            .insert(table.topic.clone(), (table.clone(), decoder));
    }

    /// Re-reads the tables' shapes when due; true when it did.
    pub(super) fn refresh_if_due(&mut self, conn: &mut DbConnection) -> Result<bool, DbError> {
        if self.read_at.elapsed() < SHAPE_REFRESH {
            return Ok(false);
        }
        self.read_at = Instant::now();
        let tables: Vec<TableRef> = self.decoders.values().map(|(t, _)| t.clone()).collect();
        for table in tables {
            match table_shape(conn, &table)? {
                Some(shape) => self.insert(&table, shape.decoder),
                None => {
                    self.decoders.remove(&table.topic);
                }
            };
        }
        Ok(true)
    }

    /// The log's changes after `cursor`, decoded by their table's shape.
    pub(super) fn read_after(
        &self,
        conn: &mut DbConnection,
        cursor: u64,
        limit: i64,
    ) -> Result<Vec<Change>, DbError> {
        Ok(self.decode(super::read_after(conn, cursor, limit)?))
    }

    /// Log rows as changes, each by its table's decoder.
    pub(super) fn decode(&self, rows: Vec<LogRow>) -> Vec<Change> {
        rows.into_iter()
            .filter_map(|row| {
                let decoder = self.decoder(&row.table_name);
                row.decode(decoder)
            })
            .collect()
    }
}

pub struct PostgresSource {
    conn: DbConnection,
    url: DatabaseUrl,
    watched: WatchedTables,
    /// The highest seq the log held at the last probe: another node's
    /// numbering shows as a higher one.
    top_seen: i64,
    /// What this node numbered last, until polled.
    fresh: Fresh,
    /// Tables that refused statement triggers and carry the row trigger.
    row_triggers_only: HashSet<String>,
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
}

/// What a probe reads of the log.
#[derive(QueryableByName)]
struct LogState {
    /// Committed changes wait for their seq.
    #[diesel(sql_type = Bool)]
    waiting: bool,
    #[diesel(sql_type = BigInt)]
    top: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    value: bool,
}

impl PostgresSource {
    /// `conn` must be a PostgreSQL connection of its own (the poller's) to `url`.
    pub fn new(conn: DbConnection, url: DatabaseUrl) -> Self {
        PostgresSource {
            conn,
            url,
            watched: WatchedTables::new(),
            top_seen: -1,
            fresh: Fresh::default(),
            row_triggers_only: HashSet::new(),
        }
    }

    fn shape(&mut self, table: &TableRef) -> Result<Option<TableShape>, DbError> {
        table_shape(&mut self.conn, table)
    }

    /// Installs the statement triggers on `table` unless they are there,
    /// replacing the row trigger of earlier versions in the same
    /// transaction. A table that cannot have transition tables (one with
    /// inheritance children) gets the row trigger. A table read under
    /// another name than its own (another schema, another topic name) tells
    /// its triggers the log's name as their argument.
    fn install(&mut self, table: &TableRef) -> Result<(), DbError> {
        #[derive(QueryableByName)]
        struct Installed {
            #[diesel(sql_type = BigInt)]
            statement: i64,
            #[diesel(sql_type = BigInt)]
            row: i64,
        }
        let (argument, stored) = if table.renamed() {
            // Validated as an identifier: no quote to escape.
            (
                format!("'{}'", table.topic),
                format!("{}\\000", table.topic),
            )
        } else {
            (String::new(), String::new())
        };
        let installed: Installed = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE tgname IN ('_realtide_capture_insert', '_realtide_capture_update', '_realtide_capture_delete')) AS statement, \
             count(*) FILTER (WHERE tgname = '_realtide_capture') AS row \
             FROM pg_trigger WHERE tgrelid = to_regclass($1) AND encode(tgargs, 'escape') = $2",
        )
        .bind::<Text, _>(table.sql())
        .bind::<Text, _>(&stored)
        .get_result(&mut self.conn)?;
        if installed.statement == 3 && installed.row == 0 {
            return Ok(());
        }
        if installed.statement == 0
            && installed.row == 1
            && self.row_triggers_only.contains(&table.topic)
        {
            return Ok(());
        }
        let t = table.sql();
        let statement = format!(
            "BEGIN; DROP TRIGGER IF EXISTS _realtide_capture ON {t}; \
             CREATE OR REPLACE TRIGGER _realtide_capture_insert AFTER INSERT ON {t} \
               REFERENCING NEW TABLE AS _realtide_new \
               FOR EACH STATEMENT EXECUTE FUNCTION _realtide_capture_statement({argument}); \
             CREATE OR REPLACE TRIGGER _realtide_capture_update AFTER UPDATE ON {t} \
               REFERENCING OLD TABLE AS _realtide_old NEW TABLE AS _realtide_new \
               FOR EACH STATEMENT EXECUTE FUNCTION _realtide_capture_statement({argument}); \
             CREATE OR REPLACE TRIGGER _realtide_capture_delete AFTER DELETE ON {t} \
               REFERENCING OLD TABLE AS _realtide_old \
               FOR EACH STATEMENT EXECUTE FUNCTION _realtide_capture_statement({argument}); \
             COMMIT;"
        );
        match self.conn.batch_execute(&statement) {
            Ok(()) => {
                tracing::info!(table = %t, "change capture installed (statement triggers)");
                Ok(())
            }
            Err(error) => {
                let _ = self.conn.batch_execute("ROLLBACK");
                tracing::info!(table = %t, %error, "statement triggers refused; capturing with a row trigger");
                self.conn.batch_execute(&format!(
                    "CREATE OR REPLACE TRIGGER _realtide_capture AFTER INSERT OR UPDATE OR DELETE ON {t} \
                     FOR EACH ROW EXECUTE FUNCTION _realtide_capture({argument})"
                ))?;
                self.row_triggers_only.insert(table.topic.clone());
                Ok(())
            }
        }
    }

    /// Numbers every change whose transaction can no longer be overtaken.
    fn sequence(&mut self, limit: i64) -> Result<(), DbError> {
        let numbered = self.conn.transaction::<_, DbError, _>(|conn| {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<BigInt, _>(SEQUENCER_LOCK)
                .execute(conn)?;
            number_ready_changes(conn, limit)
        })?;
        self.fresh.hold(self.watched.decode(numbered));
        Ok(())
    }
}

/// A table's columns and decoder, or `None` when there is no such table.
pub(super) fn table_shape(
    conn: &mut DbConnection,
    table: &TableRef,
) -> Result<Option<TableShape>, DbError> {
    // An unqualified name is resolved through the search path: realtide's
    // schema holds only its own (reserved) names, so it finds the app's table.
    let is_table: Flag = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_class \
         WHERE oid = to_regclass($1) AND relkind IN ('r', 'p')) AS value",
    )
    .bind::<Text, _>(table.sql())
    .get_result(conn)?;
    if !is_table.value {
        return Ok(None);
    }
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT a.attname::text AS name, t.typname::text AS data_type \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind::<Text, _>(table.sql())
    .load(conn)?;
    let binary: HashSet<String> = columns
        .iter()
        .filter(|c| c.data_type == "bytea")
        .map(|c| c.name.clone())
        .collect();
    Ok(Some(TableShape {
        columns: columns.into_iter().map(|c| c.name).collect(),
        decoder: RowDecoder::Postgres { binary },
    }))
}

/// Under the sequencer's lock: gives a `seq` to the longest ready prefix,
/// in id order, of the trigger-written changes that have none.
///
/// Returns the changes it numbered, in no particular order.
pub(super) fn number_ready_changes(
    conn: &mut DbConnection,
    limit: i64,
) -> Result<Vec<LogRow>, DbError> {
    // Only the longest ready prefix in id order: a change whose
    // transaction could still be overtaken (xid at or past xmin) holds back
    // every later id, since for one row a later id is a later commit even
    // when its xid is older.
    Ok(diesel::sql_query(
        "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin), \
         blocker AS ( \
           SELECT min(c.id) AS id FROM _realtide_changes AS c, horizon \
           WHERE c.seq IS NULL AND c.xid >= horizon.xmin), \
         ready AS ( \
           SELECT c.id FROM _realtide_changes AS c, horizon, blocker \
           WHERE c.seq IS NULL AND c.xid < horizon.xmin \
             AND (blocker.id IS NULL OR c.id < blocker.id) \
           ORDER BY c.id LIMIT $1), \
         top AS (SELECT GREATEST( \
           (SELECT COALESCE(max(seq), 0) FROM _realtide_changes), \
           (SELECT COALESCE(max(value::bigint), 0) FROM _realtide_meta WHERE key = 'pruned_through') \
         ) AS seq), \
         numbered AS ( \
           SELECT ready.id, top.seq + row_number() OVER (ORDER BY ready.id) AS seq FROM ready, top) \
         UPDATE _realtide_changes AS c SET seq = numbered.seq FROM numbered WHERE c.id = numbered.id \
         RETURNING c.seq, c.table_name, c.op, c.new_row, c.old_row, c.changed_at",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// Whether trigger-written changes are still waiting for their `seq`.
pub(super) fn unnumbered_changes(conn: &mut DbConnection) -> Result<bool, DbError> {
    let waiting: Flag = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM _realtide_changes WHERE seq IS NULL) AS value",
    )
    .get_result(conn)?;
    Ok(waiting.value)
}

impl ChangeSource for PostgresSource {
    fn watch(&mut self, table: &TableRef) -> Result<Option<TableShape>, DbError> {
        let Some(shape) = self.shape(table)? else {
            return Ok(None);
        };
        self.install(table)?;
        self.watched.insert(table, shape.decoder.clone());
        Ok(Some(shape))
    }

    fn probe(&mut self) -> Result<Probe, DbError> {
        let log: LogState = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM _realtide_changes WHERE seq IS NULL) AS waiting, \
             COALESCE((SELECT max(seq) FROM _realtide_changes), 0) AS top",
        )
        .get_result(&mut self.conn)?;
        let grown = log.top > self.top_seen;
        self.top_seen = log.top;
        let schema_changed = self.watched.refresh_if_due(&mut self.conn)?;
        Ok(Probe {
            committed: log.waiting || grown,
            schema_changed,
        })
    }

    fn poll(&mut self, cursor: u64, limit: i64) -> Result<Vec<Change>, DbError> {
        if let Some(fresh) = self.fresh.take(cursor, limit) {
            return Ok(fresh);
        }
        self.sequence(limit.max(SEQUENCE_STEP))?;
        if let Some(fresh) = self.fresh.take(cursor, limit) {
            return Ok(fresh);
        }
        self.watched.read_after(&mut self.conn, cursor, limit)
    }

    fn wait(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
    }

    fn connection(&mut self) -> &mut DbConnection {
        &mut self.conn
    }

    fn reconnect(&mut self) -> Result<(), DbError> {
        self.conn = crate::db::connect_to(&self.url)?;
        // Read the log once whatever the next probe finds.
        self.top_seen = -1;
        Ok(())
    }
}
