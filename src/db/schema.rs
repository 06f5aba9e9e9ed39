//! Where realtide's own tables live on PostgreSQL: a schema of their own
//! (`--schema`, default `realtide`), beside the application's tables rather
//! than among them, with diesel's migrations table there too (an app that
//! uses diesel keeps its own). Every realtide connection resolves names
//! through `search_path = <schema>, <the app's schema>`: its own tables
//! first, the app's tables (the ones topics watch) after. The capture
//! trigger functions carry the same path, since they run in the app's
//! sessions. Deployments whose tables are still in the app's schema (as
//! earlier versions made them) are moved on start.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

use super::{DatabaseUrl, DbConnection, DbError, MIGRATION_LOCK, POSTGRES_MIGRATIONS};

/// The schema of realtide's tables unless `--schema` says another.
pub const DEFAULT_SCHEMA: &str = "realtide";

/// realtide's own tables and functions, as earlier versions placed them.
const TABLES: [&str; 3] = ["_realtide_meta", "_realtide_changes", "_realtide_messages"];
const FUNCTIONS: [&str; 2] = ["_realtide_capture()", "_realtide_capture_statement()"];

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    value: bool,
}

/// The app's schema: the first of the role's own search path that exists.
fn app_schema(conn: &mut PgConnection) -> Result<String, DbError> {
    let name: Name = diesel::sql_query("SELECT COALESCE(current_schema(), 'public')::text AS name")
        .get_result(conn)?;
    Ok(name.name)
}

/// Creates `schema`, moves tables an earlier version left in the app's
/// schema into it, and returns the url every realtide connection uses.
pub fn prepare(url: &str, schema: &str) -> Result<DatabaseUrl, DbError> {
    let plain = DatabaseUrl::Postgres(url.to_string());
    let mut conn = PgConnection::establish(url)?;
    let app = app_schema(&mut conn)?;
    if app != schema {
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
            .execute(&mut conn)?;
        let moved = move_from(&mut conn, &app, schema);
        diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
            .execute(&mut conn)?;
        moved?;
    }
    Ok(plain.with_search_path(&[schema, &app]))
}

fn exists(conn: &mut PgConnection, qualified: &str) -> Result<bool, DbError> {
    let flag: Flag = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS value")
        .bind::<Text, _>(qualified)
        .get_result(conn)?;
    Ok(flag.value)
}

/// In one transaction: the schema, and an earlier version's tables,
/// functions and migration records moved from `app` into it.
fn move_from(conn: &mut PgConnection, app: &str, schema: &str) -> Result<(), DbError> {
    let (app_q, schema_q) = (ident(app), ident(schema));
    conn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema_q}"))?;
    let legacy = exists(conn, &format!("{app_q}._realtide_meta"))?;
    let already = exists(conn, &format!("{schema_q}._realtide_meta"))?;
    if !legacy || already {
        return Ok(());
    }
    let mut script = String::from("BEGIN;");
    for table in TABLES {
        if exists(conn, &format!("{app_q}.{table}"))? {
            script.push_str(&format!(
                "ALTER TABLE {app_q}.{table} SET SCHEMA {schema_q};"
            ));
        }
    }
    for function in FUNCTIONS {
        let found: Flag = diesel::sql_query("SELECT to_regprocedure($1) IS NOT NULL AS value")
            .bind::<Text, _>(format!("{app}.{function}"))
            .get_result(conn)?;
        if found.value {
            script.push_str(&format!(
                "ALTER FUNCTION {app_q}.{function} SET SCHEMA {schema_q};"
            ));
        }
    }
    if exists(conn, &format!("{app_q}.__diesel_schema_migrations"))? {
        let versions: Vec<String> =
            MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES_MIGRATIONS)
                .map_err(|e| DbError::Migration(e.to_string()))?
                .iter()
                .map(|m| format!("'{}'", m.name().version()))
                .collect();
        let ours = versions.join(",");
        script.push_str(&format!(
            "CREATE TABLE {schema_q}.__diesel_schema_migrations \
               (LIKE {app_q}.__diesel_schema_migrations INCLUDING ALL); \
             INSERT INTO {schema_q}.__diesel_schema_migrations \
               SELECT * FROM {app_q}.__diesel_schema_migrations WHERE version IN ({ours}); \
             DELETE FROM {app_q}.__diesel_schema_migrations WHERE version IN ({ours}); \
             DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM {app_q}.__diesel_schema_migrations) \
               THEN DROP TABLE {app_q}.__diesel_schema_migrations; END IF; END $$;"
        ));
    }
    script.push_str("COMMIT;");
    if let Err(e) = conn.batch_execute(&script) {
        let _ = conn.batch_execute("ROLLBACK");
        return Err(e.into());
    }
    tracing::info!(
        from = app,
        to = schema,
        "realtide's tables moved into their own schema"
    );
    Ok(())
}

/// The capture functions run in the writing app's session: they find the
/// change log through a search path of their own.
pub fn pin_functions(conn: &mut PgConnection, schema: &str) -> Result<(), DbError> {
    for function in FUNCTIONS {
        // Only where it is missing: an ALTER on every start would have
        // nodes starting together queue on the function's catalog row.
        let unpinned: Flag = diesel::sql_query(
            "SELECT COALESCE(NOT ($2 = ANY (proconfig)), true) AS value FROM pg_proc \
             WHERE oid = to_regprocedure($1) \
             UNION ALL SELECT false AS value LIMIT 1",
        )
        .bind::<Text, _>(format!("{}.{function}", ident(schema)))
        // As PostgreSQL stores it: a plain name (as `--schema` allows) unquoted.
        .bind::<Text, _>(format!("search_path={schema}"))
        .get_result(conn)?;
        if unpinned.value {
            conn.batch_execute(&format!(
                "ALTER FUNCTION {}.{function} SET search_path = {}",
                ident(schema),
                ident(schema)
            ))?;
        }
    }
    Ok(())
}

/// One connection with realtide's search path, for tools (`capture remove`).
pub fn connect_in(url: &str, schema: &str) -> Result<DbConnection, DbError> {
    match DatabaseUrl::parse(url)? {
        DatabaseUrl::Postgres(plain) => {
            let app = app_schema(&mut PgConnection::establish(&plain)?)?;
            super::connect_to(&DatabaseUrl::Postgres(plain).with_search_path(&[schema, &app]))
        }
        sqlite => super::connect_to(&sqlite),
    }
}
