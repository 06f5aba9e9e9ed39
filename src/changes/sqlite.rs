//! The SQLite change source. Triggers are generated per table, listing its
//! columns (SQLite has no row-to-JSON), with only functions the Debian
//! `sqlite3` 3.40 CLI has, since triggers run inside whichever program
//! writes. When `PRAGMA schema_version` moves, watched tables are re-read and
//! their triggers regenerated if their columns changed. Commits by any
//! connection are noticed through `PRAGMA data_version`, asked at every
//! probe, which costs no read of the log.
//!
//! `INSERT OR REPLACE` (and `REPLACE`): SQLite deletes the rows it replaces
//! without firing DELETE triggers unless the writing connection enabled
//! `PRAGMA recursive_triggers`, so those deletions are not captured; the
//! table-topics docs say what an application should do.

use std::collections::HashMap;
use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::tables::TableRef;
use super::{Change, ChangeSource, Probe, RowDecoder, TableShape};
use crate::db::{DatabaseUrl, DbConnection, DbError};

/// Column pairs per `json_object` / `json_set` call: SQLite allows 127 arguments.
const PAIRS_PER_CALL: usize = 60;

pub struct SqliteSource {
    conn: DbConnection,
    /// The database file, to reconnect to.
    path: PathBuf,
    data_version: i64,
    schema_version: i64,
    /// Watched tables and the columns their triggers list.
    watched: HashMap<String, Vec<String>>,
}

#[derive(QueryableByName)]
struct Versions {
    #[diesel(sql_type = BigInt)]
    data_version: i64,
    #[diesel(sql_type = BigInt)]
    schema_version: i64,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Sql {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    sql: Option<String>,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A JSON object of the row `alias` (`NEW` or `OLD`), BLOBs and REALs
/// marked for decoding.
pub(super) fn row_json(alias: &str, columns: &[String]) -> String {
    let value = |c: &String| {
        let v = format!("{alias}.{}", ident(c));
        // REALs as text of 20 significant digits: `json_object` writes only
        // 15 (0.30000000000000004 would arrive as 0.3) and infinities as
        // `Inf`, which is no JSON; the decoder turns the marker back.
        format!(
            "CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) \
             WHEN 'real' THEN json_object('$real', printf('%!.20g', {v})) ELSE {v} END"
        )
    };
    let mut chunks = columns.chunks(PAIRS_PER_CALL);
    let first = chunks.next().unwrap_or(&[]);
    let pairs: Vec<String> = first
        .iter()
        .map(|c| format!("{}, {}", literal(c), value(c)))
        .collect();
    let mut json = format!("json_object({})", pairs.join(", "));
    for chunk in chunks {
        // json_set, not json_patch: a merge patch would drop NULL columns.
        let pairs: Vec<String> = chunk
            .iter()
            .map(|c| format!("{}, {}", literal(&format!("$.\"{c}\"")), value(c)))
            .collect();
        json = format!("json_set({json}, {})", pairs.join(", "));
    }
    json
}

fn trigger_name(table: &str, op: &str) -> String {
    format!("_realtide_{table}_{}", op.to_ascii_lowercase())
}

/// The trigger capturing `op` on `table`.
pub fn trigger_sql(table: &str, columns: &[String], op: &str) -> String {
    let (new, old) = match op {
        "INSERT" => (row_json("NEW", columns), "NULL".to_string()),
        "UPDATE" => (row_json("NEW", columns), row_json("OLD", columns)),
        _ => ("NULL".to_string(), row_json("OLD", columns)),
    };
    format!(
        "CREATE TRIGGER {name} AFTER {op} ON {table_ident} FOR EACH ROW BEGIN \
         INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at) \
         VALUES ({table_literal}, '{op}', {new}, {old}, \
         CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)); END",
        name = ident(&trigger_name(table, op)),
        table_ident = ident(table),
        table_literal = literal(table),
    )
}

impl SqliteSource {
    /// `conn` must be a SQLite connection of its own (the poller's) to the file at `path`.
    pub fn new(conn: DbConnection, path: PathBuf) -> Self {
        SqliteSource {
            conn,
            path,
            data_version: -1,
            schema_version: -1,
            watched: HashMap::new(),
        }
    }

    fn columns(&mut self, table: &str) -> Result<Option<Vec<String>>, DbError> {
        let tables: Vec<Name> =
            diesel::sql_query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind::<Text, _>(table)
                .load(&mut self.conn)?;
        if tables.is_empty() {
            return Ok(None);
        }
        let columns: Vec<Name> =
            diesel::sql_query("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind::<Text, _>(table)
                .load(&mut self.conn)?;
        Ok(Some(columns.into_iter().map(|c| c.name).collect()))
    }

    /// Creates or replaces the three triggers unless they already say the same.
    fn install(&mut self, table: &str, columns: &[String]) -> Result<(), DbError> {
        let wanted: Vec<(String, String)> = ["INSERT", "UPDATE", "DELETE"]
            .iter()
            .map(|op| (trigger_name(table, op), trigger_sql(table, columns, op)))
            .collect();
        let mut current = Vec::new();
        for (name, _) in &wanted {
            let rows: Vec<Sql> = diesel::sql_query(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = $1",
            )
            .bind::<Text, _>(name)
            .load(&mut self.conn)?;
            current.push(rows.into_iter().next().and_then(|r| r.sql));
        }
        if wanted
            .iter()
            .zip(&current)
            .all(|((_, sql), now)| now.as_deref() == Some(sql.as_str()))
        {
            return Ok(());
        }
        let mut script = String::from("BEGIN IMMEDIATE;");
        for (name, sql) in &wanted {
            script.push_str(&format!("DROP TRIGGER IF EXISTS {}; {sql};", ident(name)));
        }
        script.push_str("COMMIT;");
        if let Err(e) = self.conn.batch_execute(&script) {
            let _ = self.conn.batch_execute("ROLLBACK;");
            return Err(e.into());
        }
        tracing::info!(table, columns = columns.len(), "change capture installed");
        Ok(())
    }

    fn refresh_watched(&mut self) -> Result<(), DbError> {
        let tables: Vec<String> = self.watched.keys().cloned().collect();
        for table in tables {
            match self.columns(&table)? {
                // `install` rewrites the triggers only if they differ or are
                // gone (someone dropped them, e.g. to drop a column).
                Some(columns) => {
                    self.install(&table, &columns)?;
                    self.watched.insert(table, columns);
                }
                None => {
                    self.watched.remove(&table);
                }
            }
        }
        Ok(())
    }
}

impl ChangeSource for SqliteSource {
    fn watch(&mut self, table: &TableRef) -> Result<Option<TableShape>, DbError> {
        // The server refuses schemas and other topic names on SQLite.
        let table = table.name.as_str();
        let Some(columns) = self.columns(table)? else {
            return Ok(None);
        };
        self.install(table, &columns)?;
        self.watched.insert(table.to_string(), columns.clone());
        Ok(Some(TableShape {
            columns,
            decoder: RowDecoder::Sqlite,
        }))
    }

    fn probe(&mut self) -> Result<Probe, DbError> {
        // SQLite itself, every time: a stat of the database and WAL files
        // misses a commit that lands between a writer's WAL append and its
        // making the commit visible (the stamp moves, the version not yet),
        // and then every later probe until another commit moves the files.
        let v: Versions = diesel::sql_query(
            "SELECT d.data_version AS data_version, s.schema_version AS schema_version \
             FROM pragma_data_version() AS d, pragma_schema_version() AS s",
        )
        .get_result(&mut self.conn)?;
        let probe = Probe {
            committed: v.data_version != self.data_version,
            schema_changed: v.schema_version != self.schema_version,
        };
        self.data_version = v.data_version;
        self.schema_version = v.schema_version;
        if probe.schema_changed {
            self.refresh_watched()?;
        }
        Ok(probe)
    }

    fn poll(&mut self, cursor: u64, limit: i64) -> Result<Vec<Change>, DbError> {
        let rows = super::read_after(&mut self.conn, cursor, limit)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.decode(&RowDecoder::Sqlite))
            .collect())
    }

    fn connection(&mut self) -> &mut DbConnection {
        &mut self.conn
    }

    fn reconnect(&mut self) -> Result<(), DbError> {
        self.conn = crate::db::connect_to(&DatabaseUrl::Sqlite(self.path.clone()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_tables_are_built_with_json_set_past_sixty_columns() {
        let columns: Vec<String> = (0..130).map(|i| format!("c{i}")).collect();
        let json = row_json("NEW", &columns);
        assert!(json.starts_with("json_set(json_set(json_object("));
        let sql = trigger_sql("t", &["a".into()], "DELETE");
        assert!(sql.contains("'DELETE', NULL, json_object('a'"), "{sql}");
    }
}
