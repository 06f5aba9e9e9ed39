//! A table's rows as of a change number: what a `subscribe` with
//! `snapshot: true` sends before the changes after it (docs/adr/0007).
//!
//! The cut: the rows and `seq` come from one read of the database, so the
//! rows hold every change numbered up to `seq` and none numbered after it.
//! - SQLite: one read transaction sees the table and the change log at the
//!   same commit (its log is numbered at commit, one writer at a time).
//! - PostgreSQL: the sequencer's lock is held, so nothing is numbered
//!   meanwhile, and a repeatable-read transaction reads the rows and the
//!   highest numbered change. A change its snapshot sees that is not
//!   numbered yet (a trigger wrote it; the sequencer has not reached it)
//!   would be numbered after `seq` though the rows hold it: the read is
//!   tried again, briefly, until there is none. Should one stay (a
//!   transaction elsewhere holding the sequencer back), and with logical
//!   decoding (whose log is written after commit), such a change arrives
//!   after the rows too; applied again to rows that hold it, it changes
//!   nothing, so a client's rows still end equal to the table.
//!
//! Rows are read in key order and filtered as changes are; more matching
//! rows than the limit refuse the snapshot without holding them.

use std::time::Duration;

use diesel::connection::DefaultLoadingMode;
use diesel::pg::PgRowByRowLoadingMode;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::tables::TableRef;
use super::{Filter, Row, RowDecoder};
use crate::db::{DbConnection, DbError};
use crate::protocol::{ErrorCode, ProtocolError};

/// How often, and how long apart, a PostgreSQL read is tried again while
/// its snapshot sees changes the sequencer has not numbered yet.
const TRIES: u32 = 25;
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// A table's matching rows as of `seq`.
#[derive(Debug)]
pub struct Snapshot {
    /// The table's highest numbered change the rows hold (0: none yet).
    pub seq: u64,
    /// The primary key's columns, in key order.
    pub key: Vec<String>,
    pub rows: Vec<Row>,
}

/// Why there is no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("table `{0}` has no primary key, so its rows cannot be kept by key")]
    NoPrimaryKey(String),
    #[error("more than {0} rows match; narrow the filter (see --max-snapshot-rows)")]
    TooLarge(usize),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for SnapshotError {
    fn from(e: diesel::result::Error) -> Self {
        SnapshotError::Db(e.into())
    }
}

impl From<SnapshotError> for ProtocolError {
    fn from(e: SnapshotError) -> Self {
        let code = match e {
            SnapshotError::NoPrimaryKey(_) => ErrorCode::BadRequest,
            SnapshotError::TooLarge(_) => ErrorCode::TooLarge,
            SnapshotError::Db(_) => ErrorCode::Unavailable,
        };
        ProtocolError::new(code, e.to_string())
    }
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct JsonRow {
    #[diesel(sql_type = Text)]
    row: String,
}

#[derive(QueryableByName)]
struct MaxSeq {
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    value: bool,
}

/// What a read needs to know of the table.
pub struct SnapshotRequest<'a> {
    pub table: &'a TableRef,
    pub columns: &'a [String],
    pub decoder: &'a RowDecoder,
    pub filter: &'a Filter,
    pub max_rows: usize,
}

/// Reads the table's matching rows and the change number they stand at.
pub fn read(
    conn: &mut DbConnection,
    request: &SnapshotRequest<'_>,
) -> Result<Snapshot, SnapshotError> {
    match conn {
        DbConnection::Sqlite(c) => c.transaction(|c| read_sqlite(c, request)),
        DbConnection::Pg(c) => read_postgres(c, request),
    }
}

fn quoted(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's highest numbered change.
const LATEST_SEQ: &str =
    "SELECT max(seq) AS seq FROM _realtide_changes WHERE table_name = $1 AND seq IS NOT NULL";

fn seq_of(latest: MaxSeq) -> u64 {
    latest.seq.unwrap_or(0).max(0) as u64
}

/// Keeps the rows that match, refusing past the limit.
fn keep(
    rows: impl Iterator<Item = Result<JsonRow, diesel::result::Error>>,
    request: &SnapshotRequest<'_>,
) -> Result<Vec<Row>, SnapshotError> {
    let mut kept = Vec::new();
    for row in rows {
        let Some(row) = request.decoder.row(row?.row) else {
            continue;
        };
        if !request.filter.is_empty() && !request.filter.matches(row.values()) {
            continue;
        }
        if kept.len() == request.max_rows {
            return Err(SnapshotError::TooLarge(request.max_rows));
        }
        kept.push(row);
    }
    Ok(kept)
}

/// The primary key's columns, in key order; a table without one cannot
/// have its rows kept by key.
fn primary_key(table: &TableRef, columns: Vec<Name>) -> Result<Vec<String>, SnapshotError> {
    match columns.is_empty() {
        true => Err(SnapshotError::NoPrimaryKey(table.topic.clone())),
        false => Ok(columns.into_iter().map(|c| c.name).collect()),
    }
}

fn read_sqlite(
    conn: &mut diesel::SqliteConnection,
    request: &SnapshotRequest<'_>,
) -> Result<Snapshot, SnapshotError> {
    let table = request.table;
    let key = primary_key(
        table,
        diesel::sql_query("SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk")
            .bind::<Text, _>(&table.name)
            .load(conn)?,
    )?;
    let seq = seq_of(
        diesel::sql_query(LATEST_SEQ)
            .bind::<Text, _>(&table.topic)
            .get_result(conn)?,
    );
    let sql = format!(
        "SELECT {} AS row FROM {} AS t ORDER BY {}",
        super::sqlite::row_json("t", request.columns),
        table.sql(),
        quoted(&key)
    );
    let rows = keep(
        diesel::sql_query(sql).load_iter::<JsonRow, DefaultLoadingMode>(conn)?,
        request,
    )?;
    Ok(Snapshot { seq, key, rows })
}

fn read_postgres(
    conn: &mut diesel::PgConnection,
    request: &SnapshotRequest<'_>,
) -> Result<Snapshot, SnapshotError> {
    let table = request.table;
    let key = primary_key(
        table,
        diesel::sql_query(
            "SELECT a.attname AS name FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
        )
        .bind::<Text, _>(table.sql())
        .load(conn)?,
    )?;
    let sql = format!(
        "SELECT row_to_json(t)::text AS row FROM {} AS t ORDER BY {}",
        table.sql(),
        quoted(&key)
    );
    let lock = super::postgres::SEQUENCER_LOCK;
    for attempt in 1..=TRIES {
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(lock)
            .execute(conn)?;
        let read = conn
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(|c| {
                let pending: Flag = diesel::sql_query(
                    "SELECT EXISTS (SELECT 1 FROM _realtide_changes \
                     WHERE seq IS NULL AND table_name = $1) AS value",
                )
                .bind::<Text, _>(&table.topic)
                .get_result(c)?;
                if pending.value && attempt < TRIES {
                    return Ok(None);
                }
                let seq = seq_of(
                    diesel::sql_query(LATEST_SEQ)
                        .bind::<Text, _>(&table.topic)
                        .get_result(c)?,
                );
                let rows = keep(
                    diesel::sql_query(sql.as_str())
                        .load_iter::<JsonRow, PgRowByRowLoadingMode>(c)?,
                    request,
                )?;
                Ok::<_, SnapshotError>(Some(Snapshot {
                    seq,
                    key: key.clone(),
                    rows,
                }))
            });
        let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(lock)
            .execute(conn);
        let read = read?;
        unlocked?;
        if let Some(snapshot) = read {
            return Ok(snapshot);
        }
        std::thread::sleep(RETRY_AFTER);
    }
    // The last try reads whatever it finds, so this is not reached.
    Err(SnapshotError::Db(DbError::Task(
        "the snapshot was not read".into(),
    )))
}
