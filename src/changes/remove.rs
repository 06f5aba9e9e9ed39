//! `realtide capture remove [--table T]`: takes realtide's change capture
//! out of a database: the triggers on watched tables, (PostgreSQL) their
//! place in the `realtide` publication and the replication slot, and the
//! change log's rows. With `--table` (`orders`, or `app.items` in another
//! PostgreSQL schema), only that table's capture. Stop every
//! realtide server of the database first: a running one installs capture
//! again at the next subscription to a table.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

use super::logical::{PUBLICATION, slot_name};
use super::tables::TableRef;
use crate::db::{DbConnection, DbError};

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Removes capture from the database whose realtide tables are in
/// `schema` (PostgreSQL); returns one line per thing removed.
pub fn remove(url: &str, schema: &str, table: Option<&TableRef>) -> Result<Vec<String>, DbError> {
    let mut conn = crate::db::connect_in(url, schema)?;
    let mut done = match &mut conn {
        DbConnection::Sqlite(_) => remove_sqlite(&mut conn, table)?,
        DbConnection::Pg(_) => remove_postgres(&mut conn, table)?,
    };
    if table.is_none() && has_log(&mut conn)? {
        // Rows only: the table belongs to realtide's schema. The pruned
        // mark keeps a later resume from a removed seq honest (recovered: false).
        let through = super::latest_seq(&mut conn)?;
        if through > 0 {
            diesel::sql_query(
                "INSERT INTO _realtide_meta (key, value) VALUES ('pruned_through', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind::<Text, _>(through.to_string())
            .execute(&mut conn)?;
        }
        let deleted = diesel::sql_query("DELETE FROM _realtide_changes").execute(&mut conn)?;
        if deleted > 0 {
            done.push(format!("change log emptied ({deleted} changes)"));
        }
    }
    Ok(done)
}

fn has_log(conn: &mut DbConnection) -> Result<bool, DbError> {
    #[derive(QueryableByName)]
    struct Flag {
        #[diesel(sql_type = Bool)]
        value: bool,
    }
    let sql = match conn {
        DbConnection::Sqlite(_) => {
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_realtide_changes') AS value"
        }
        DbConnection::Pg(_) => "SELECT to_regclass('_realtide_changes') IS NOT NULL AS value",
    };
    Ok(diesel::sql_query(sql).get_result::<Flag>(conn)?.value)
}

fn remove_sqlite(
    conn: &mut DbConnection,
    table: Option<&TableRef>,
) -> Result<Vec<String>, DbError> {
    let triggers: Vec<Name> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_realtide\\_%' ESCAPE '\\' \
         AND ($1 IS NULL OR tbl_name = $1) ORDER BY name",
    )
    .bind::<diesel::sql_types::Nullable<Text>, _>(table.map(|t| &t.name))
    .load(conn)?;
    let mut done = Vec::new();
    for trigger in triggers {
        conn.batch_execute(&format!("DROP TRIGGER IF EXISTS {}", ident(&trigger.name)))?;
        done.push(format!("trigger {} dropped", trigger.name));
    }
    Ok(done)
}

/// Tables are named by `oid::regclass`: schema-qualified (and quoted)
/// where the search path would not find them.
fn remove_postgres(
    conn: &mut DbConnection,
    table: Option<&TableRef>,
) -> Result<Vec<String>, DbError> {
    let table = table.map(TableRef::sql);
    let mut done = Vec::new();
    #[derive(QueryableByName)]
    struct Trigger {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        table: String,
    }
    let triggered: Vec<Trigger> = diesel::sql_query(
        "SELECT t.tgname::text AS name, t.tgrelid::regclass::text AS table FROM pg_trigger t \
         WHERE t.tgname IN ('_realtide_capture', '_realtide_capture_insert', '_realtide_capture_update', '_realtide_capture_delete') \
         AND ($1::text IS NULL OR t.tgrelid = to_regclass($1)) ORDER BY 2, 1",
    )
    .bind::<diesel::sql_types::Nullable<Text>, _>(&table)
    .load(conn)?;
    for t in triggered {
        conn.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            ident(&t.name),
            t.table
        ))?;
        done.push(format!("trigger {} on {} dropped", t.name, t.table));
    }
    let published: Vec<Name> = diesel::sql_query(
        "SELECT pr.prrelid::regclass::text AS name FROM pg_publication_rel pr \
         JOIN pg_publication p ON p.oid = pr.prpubid \
         WHERE p.pubname = $1 AND ($2::text IS NULL OR pr.prrelid = to_regclass($2)) ORDER BY 1",
    )
    .bind::<Text, _>(PUBLICATION)
    .bind::<diesel::sql_types::Nullable<Text>, _>(&table)
    .load(conn)?;
    match table {
        Some(_) => {
            for t in published {
                conn.batch_execute(&format!(
                    "ALTER PUBLICATION {} DROP TABLE {}",
                    ident(PUBLICATION),
                    t.name
                ))?;
                done.push(format!("{} left publication {PUBLICATION}", t.name));
            }
        }
        None => {
            let exists: Vec<Name> = diesel::sql_query(
                "SELECT pubname::text AS name FROM pg_publication WHERE pubname = $1",
            )
            .bind::<Text, _>(PUBLICATION)
            .load(conn)?;
            if !exists.is_empty() {
                conn.batch_execute(&format!("DROP PUBLICATION {}", ident(PUBLICATION)))?;
                done.push(format!("publication {PUBLICATION} dropped"));
            }
            done.extend(drop_slot(conn)?);
        }
    }
    Ok(done)
}

/// Drops this database's slot; refuses while a server reads it.
fn drop_slot(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    #[derive(QueryableByName)]
    struct Meta {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let epoch: Vec<Meta> =
        diesel::sql_query("SELECT value FROM _realtide_meta WHERE key = 'epoch'").load(conn)?;
    let Some(epoch) = epoch.first() else {
        return Ok(Vec::new());
    };
    let slot = slot_name(&epoch.value);
    let slots: Vec<Name> = diesel::sql_query(
        "SELECT slot_name::text AS name FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind::<Text, _>(&slot)
    .load(conn)?;
    if slots.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query("SELECT pg_drop_replication_slot($1)")
        .bind::<Text, _>(&slot)
        .execute(conn)?;
    Ok(vec![format!("replication slot {slot} dropped")])
}
