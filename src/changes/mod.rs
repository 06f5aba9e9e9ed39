//! The change tracker: triggers append every committed row change of a
//! watched table to the `_realtide_changes` log; the [`PollerActor`] reads the
//! log and sends each table topic its changes in `seq` order. One
//! [`ChangeSource`] per database backend knows how to install the triggers,
//! notice commits cheaply and read the log.

pub mod filter;
pub mod fresh;
pub mod libpq;
pub mod logical;
pub mod poller;
pub mod postgres;
pub mod remove;
pub mod row;
pub mod snapshot;
pub mod sqlite;
pub mod tables;

use std::sync::{Arc, RwLock};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use serde_json::Value;

pub use filter::Filter;
pub use poller::{PollerActor, Tracker};
pub use row::Row;

use crate::db::{DbConnection, DbError};
use tables::TableRef;

/// Name of the change log table (reserved: no client can subscribe to it).
pub const LOG_TABLE: &str = "_realtide_changes";

/// How this node captures table changes, as the start line and `/readyz`
/// report it. Shared between the tracker's thread and the HTTP handlers.
#[derive(Clone)]
pub struct CaptureStatus(Arc<RwLock<CaptureReport>>);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaptureReport {
    /// `logical` (PostgreSQL's logical decoding) or `triggers`.
    pub mode: &'static str,
    /// Why triggers are used where logical decoding was asked for or possible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CaptureStatus {
    pub fn new(mode: &'static str, reason: Option<String>) -> Self {
        CaptureStatus(Arc::new(RwLock::new(CaptureReport { mode, reason })))
    }

    pub fn set(&self, mode: &'static str, reason: Option<String>) {
        if let Ok(mut report) = self.0.write() {
            *report = CaptureReport { mode, reason };
        }
    }

    pub fn report(&self) -> CaptureReport {
        match self.0.read() {
            Ok(report) => report.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }

    fn parse(op: &str) -> Option<Operation> {
        match op {
            "INSERT" => Some(Operation::Insert),
            "UPDATE" => Some(Operation::Update),
            "DELETE" => Some(Operation::Delete),
            _ => None,
        }
    }
}

/// One committed row change, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The change's position in the log: rises in commit order, never reused.
    pub seq: u64,
    pub table: String,
    pub operation: Operation,
    /// The row after the change (INSERT, UPDATE).
    pub new: Option<Row>,
    /// The row before the change (UPDATE, DELETE).
    pub old: Option<Row>,
    /// When the change was written, in ms since the Unix epoch.
    pub at_ms: i64,
    /// Some stored text was not valid UTF-8 (SQLite allows it) and was
    /// decoded with U+FFFD in place of the invalid bytes.
    pub repaired: bool,
}

impl Change {
    /// Whether a subscriber with `filter` sees this change: an INSERT when the
    /// new row matches, a DELETE when the old one did, an UPDATE when either.
    pub fn visible_through(&self, filter: &Filter) -> bool {
        let matches = |row: &Option<Row>| row.as_ref().is_some_and(|r| filter.matches(r.values()));
        filter.is_empty() || matches(&self.new) || matches(&self.old)
    }
}

/// A log row as stored. The rows' JSON is read as bytes: SQLite lets a
/// program store TEXT that is not valid UTF-8, and such a row must cost only
/// itself (decoded leniently), never stop the feed at its position.
#[derive(Debug, QueryableByName)]
pub struct LogRow {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub table_name: String,
    #[diesel(sql_type = Text)]
    pub op: String,
    #[diesel(sql_type = Nullable<Binary>)]
    pub new_row: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub old_row: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    pub changed_at: i64,
}

/// How one table's stored values become protocol values. SQLite's triggers
/// mark BLOBs as `{"$blob": "<hex>"}`; PostgreSQL's `row_to_json` writes bytea
/// as a `\x<hex>` string. Both leave as standard padded base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowDecoder {
    Sqlite,
    /// The table's bytea columns.
    Postgres {
        binary: std::collections::HashSet<String>,
    },
}

impl RowDecoder {
    /// Whether a row's JSON text may hold a value [`Self::decode_value`]
    /// changes; a row that cannot is passed on as it is.
    fn may_change(&self, json: &str) -> bool {
        match self {
            RowDecoder::Sqlite => json.contains(r#""$blob""#) || json.contains(r#""$real""#),
            RowDecoder::Postgres { binary } => !binary.is_empty() && json.contains(r#""\\x"#),
        }
    }

    /// A row from the log's JSON text, its stored values as protocol
    /// values; `None` unless the text is one JSON object.
    pub fn row(&self, json: String) -> Option<Row> {
        if !self.may_change(&json) {
            return Row::from_json(json);
        }
        let row::Columns(columns) = serde_json::from_str(&json).ok()?;
        Some(Row::from_columns(
            columns
                .into_iter()
                .map(|(column, raw)| {
                    // Only a value that may change is parsed, so every other
                    // keeps its spelling (a numeric's `1.50`, say).
                    let marked = match self {
                        RowDecoder::Sqlite => raw.get().starts_with('{'),
                        RowDecoder::Postgres { binary } => binary.contains(&column),
                    };
                    let decoded = marked
                        .then(|| serde_json::from_str::<Value>(raw.get()).ok())
                        .flatten()
                        .and_then(|value| {
                            serde_json::value::to_raw_value(&self.decode_value(&column, value)).ok()
                        });
                    (column, decoded.unwrap_or(raw))
                })
                .collect(),
        ))
    }

    pub fn decode_value(&self, column: &str, value: Value) -> Value {
        match (self, value) {
            (RowDecoder::Sqlite, Value::Object(marked)) if marked.len() == 1 => {
                if let Some(hex) = marked.get("$blob").and_then(Value::as_str) {
                    if let Some(b64) = hex_to_base64(hex) {
                        return Value::String(b64);
                    }
                } else if let Some(real) = marked.get("$real").and_then(Value::as_str)
                    && let Some(value) = real_value(real)
                {
                    return value;
                }
                Value::Object(marked)
            }
            (RowDecoder::Postgres { binary }, Value::String(text)) if binary.contains(column) => {
                match text.strip_prefix("\\x").and_then(hex_to_base64) {
                    Some(b64) => Value::String(b64),
                    None => Value::String(text),
                }
            }
            (_, value) => value,
        }
    }
}

/// A REAL as SQLite's trigger spelled it (`printf('%!.17g')`: 17
/// significant digits, so every double round-trips) as a JSON value:
/// a number, or PostgreSQL's spelling of the infinities.
fn real_value(text: &str) -> Option<Value> {
    let real: f64 = text.trim().parse().ok()?;
    Some(match serde_json::Number::from_f64(real) {
        Some(number) => Value::Number(number),
        None if real == f64::INFINITY => Value::String("Infinity".into()),
        None if real == f64::NEG_INFINITY => Value::String("-Infinity".into()),
        None => Value::String("NaN".into()),
    })
}

impl LogRow {
    pub fn decode(self, decoder: &RowDecoder) -> Option<Change> {
        let table = self.table_name;
        let mut repaired = false;
        let mut parse = |bytes: Option<Vec<u8>>| -> Option<Row> {
            let text = match String::from_utf8(bytes?) {
                Ok(text) => text,
                Err(invalid) => {
                    repaired = true;
                    String::from_utf8_lossy(invalid.as_bytes()).into_owned()
                }
            };
            decoder.row(text)
        };
        let new = parse(self.new_row);
        let old = parse(self.old_row);
        if repaired {
            tracing::warn!(
                seq = self.seq,
                table,
                "a changed row holds text that is not UTF-8; invalid bytes became U+FFFD"
            );
        }
        Some(Change {
            seq: u64::try_from(self.seq).ok()?,
            operation: Operation::parse(&self.op)?,
            new,
            old,
            at_ms: self.changed_at,
            table,
            repaired,
        })
    }
}

/// Hex digits to standard padded base64.
pub fn hex_to_base64(hex: &str) -> Option<String> {
    use base64::Engine;
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A backend's side of the tracker. Implementations run on the poller's own
/// thread with a dedicated connection; every method may block.
///
/// Guarantee: `poll` returns each committed change exactly once over the
/// source's life, in `seq` order, and `seq` order agrees with commit order
/// for any one row; a transaction's changes keep their statement order.
pub trait ChangeSource: Send {
    /// Installs capture on `table` (idempotent) and returns its columns and
    /// decoder, or `None` when there is no such table. Its changes go into
    /// the log under `table.topic`.
    fn watch(&mut self, table: &TableRef) -> Result<Option<TableShape>, DbError>;
    /// Cheaply tells whether anything may have committed since the last call.
    fn probe(&mut self) -> Result<Probe, DbError>;
    /// Changes after `cursor`, oldest first, at most `limit`.
    fn poll(&mut self, cursor: u64, limit: i64) -> Result<Vec<Change>, DbError>;
    /// Replaces a connection that failed, keeping what is watched.
    fn reconnect(&mut self) -> Result<(), DbError>;
    /// The source's own connection, for the queries both backends share.
    fn connection(&mut self) -> &mut DbConnection;

    /// Waits until the next probe: `timeout`, or less when the source can
    /// tell that something was committed.
    fn wait(&mut self, timeout: std::time::Duration) {
        std::thread::sleep(timeout);
    }

    /// The highest `seq` the log holds, for one table or all (0 when none).
    fn latest_seq(&mut self, table: Option<&str>) -> Result<u64, DbError> {
        match table {
            Some(table) => latest_seq_of(self.connection(), table),
            None => latest_seq(self.connection()),
        }
    }

    /// Deletes changes written before `before_ms`; returns the highest seq deleted.
    fn prune(&mut self, before_ms: i64) -> Result<Option<u64>, DbError> {
        prune_before(self.connection(), before_ms)
    }
}

/// What the tracker knows of a watched table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub columns: Vec<String>,
    pub decoder: RowDecoder,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Probe {
    /// Something may have committed: read the log.
    pub committed: bool,
    /// The schema may have changed: re-check watched tables.
    pub schema_changed: bool,
}

#[derive(QueryableByName)]
struct MaxSeq {
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
}

/// The highest seq the log holds (0 when empty).
pub fn latest_seq(conn: &mut DbConnection) -> Result<u64, DbError> {
    let row: MaxSeq =
        diesel::sql_query("SELECT max(seq) AS seq FROM _realtide_changes").get_result(conn)?;
    Ok(row.seq.unwrap_or(0).max(0) as u64)
}

/// Deletes the changes, in seq order, that come before the first one
/// written at or after `before_ms` (so what is left is always a suffix of
/// the log, found by walking the seq index from its start), and remembers
/// how far pruning went. Returns that seq, if anything was deleted.
pub fn prune_before(conn: &mut DbConnection, before_ms: i64) -> Result<Option<u64>, DbError> {
    let kept: Vec<MaxSeq> = diesel::sql_query(
        "SELECT seq FROM _realtide_changes WHERE seq IS NOT NULL AND changed_at >= $1 \
         ORDER BY seq LIMIT 1",
    )
    .bind::<BigInt, _>(before_ms)
    .load(conn)?;
    let through = match kept.first().and_then(|k| k.seq) {
        Some(first_kept) => first_kept - 1,
        None => latest_seq(conn)? as i64,
    };
    if through <= 0 {
        return Ok(None);
    }
    let deleted = diesel::sql_query("DELETE FROM _realtide_changes WHERE seq <= $1")
        .bind::<BigInt, _>(through)
        .execute(conn)?;
    if deleted == 0 {
        return Ok(None);
    }
    record_pruned_through(conn, through as u64)?;
    Ok(Some(through as u64))
}

/// The highest seq the log holds for `table` (0 when none).
pub fn latest_seq_of(conn: &mut DbConnection, table: &str) -> Result<u64, DbError> {
    let row: MaxSeq =
        diesel::sql_query("SELECT max(seq) AS seq FROM _realtide_changes WHERE table_name = $1")
            .bind::<Text, _>(table)
            .get_result(conn)?;
    Ok(row.seq.unwrap_or(0).max(0) as u64)
}

/// Every table's changes after `cursor`, oldest first, at most `limit`: the
/// tracker's read, the same on both backends.
pub fn read_after(
    conn: &mut DbConnection,
    cursor: u64,
    limit: i64,
) -> Result<Vec<LogRow>, DbError> {
    Ok(diesel::sql_query(
        "SELECT seq, table_name, op, new_row, old_row, changed_at FROM _realtide_changes \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind::<BigInt, _>(cursor as i64)
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// A table's changes with `since < seq <= up_to`, oldest first, at most `limit`.
pub fn read_range(
    conn: &mut DbConnection,
    table: &str,
    since: u64,
    up_to: u64,
    limit: i64,
) -> Result<Vec<LogRow>, DbError> {
    Ok(diesel::sql_query(
        "SELECT seq, table_name, op, new_row, old_row, changed_at FROM _realtide_changes \
         WHERE table_name = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
    )
    .bind::<Text, _>(table)
    .bind::<BigInt, _>(since as i64)
    .bind::<BigInt, _>(up_to as i64)
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// The highest seq pruning has deleted (0 when none): a resume from below it
/// cannot be complete.
pub fn pruned_through(conn: &mut DbConnection) -> Result<u64, DbError> {
    #[derive(QueryableByName)]
    struct Meta {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let rows: Vec<Meta> =
        diesel::sql_query("SELECT value FROM _realtide_meta WHERE key = 'pruned_through'")
            .load(conn)?;
    Ok(rows.first().and_then(|m| m.value.parse().ok()).unwrap_or(0))
}

fn record_pruned_through(conn: &mut DbConnection, seq: u64) -> Result<(), DbError> {
    diesel::sql_query(
        "INSERT INTO _realtide_meta (key, value) VALUES ('pruned_through', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind::<Text, _>(seq.to_string())
    .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hex_becomes_padded_base64() {
        assert_eq!(hex_to_base64("0102FF").as_deref(), Some("AQL/"));
        assert_eq!(hex_to_base64("01").as_deref(), Some("AQ=="));
        assert_eq!(hex_to_base64("").as_deref(), Some(""));
        assert_eq!(hex_to_base64("0"), None);
        assert_eq!(hex_to_base64("zz"), None);
    }

    #[test]
    fn blobs_are_decoded_by_each_backends_convention() {
        let sqlite = RowDecoder::Sqlite;
        assert_eq!(
            sqlite.decode_value("b", json!({"$blob": "01"})),
            json!("AQ==")
        );
        assert_eq!(
            sqlite.decode_value("b", json!({"$blob": "01", "x": 1})),
            json!({"$blob": "01", "x": 1})
        );
        assert_eq!(sqlite.decode_value("b", json!("\\x01")), json!("\\x01"));
        assert_eq!(
            sqlite.decode_value("r", json!({"$real": "0.30000000000000004"})),
            json!(0.30000000000000004)
        );
        assert_eq!(
            sqlite.decode_value("r", json!({"$real": "-Inf"})),
            json!("-Infinity")
        );
        let pg = RowDecoder::Postgres {
            binary: ["b".to_string()].into_iter().collect(),
        };
        assert_eq!(pg.decode_value("b", json!("\\x01ff")), json!("Af8="));
        assert_eq!(
            pg.decode_value("t", json!("\\x01ff")),
            json!("\\x01ff"),
            "text stays text"
        );
    }

    #[test]
    fn a_row_decodes_only_its_marked_values_and_keeps_the_rest_as_spelled() {
        let pg = RowDecoder::Postgres {
            binary: ["b".to_string()].into_iter().collect(),
        };
        let row = pg.row(r#"{"n":1.50,"b":"\\x01ff","t":"\\x01"}"#.into());
        assert_eq!(row.unwrap().json(), r#"{"n":1.50,"b":"Af8=","t":"\\x01"}"#);
        let row =
            RowDecoder::Sqlite.row(r#"{"r":{"$real":"0.5"},"n":2.0,"x":{"$blob":"01"}}"#.into());
        assert_eq!(row.unwrap().json(), r#"{"r":0.5,"n":2.0,"x":"AQ=="}"#);
        assert_eq!(
            RowDecoder::Sqlite
                .row(r#"{"n":1.50}"#.into())
                .unwrap()
                .json(),
            r#"{"n":1.50}"#
        );
    }

    #[test]
    fn an_update_is_visible_when_either_row_matches() {
        let filter = Filter::parse(json!({"status": "open"}).as_object().unwrap()).unwrap();
        let row = |s: &str| Row::from_json(json!({"status": s}).to_string());
        let change = |operation, new, old| Change {
            seq: 1,
            table: "t".into(),
            operation,
            new,
            old,
            at_ms: 0,
            repaired: false,
        };
        assert!(change(Operation::Update, row("closed"), row("open")).visible_through(&filter));
        assert!(change(Operation::Update, row("open"), row("new")).visible_through(&filter));
        assert!(!change(Operation::Update, row("closed"), row("new")).visible_through(&filter));
        assert!(change(Operation::Insert, row("open"), None).visible_through(&filter));
        assert!(!change(Operation::Delete, None, row("closed")).visible_through(&filter));
    }
}
