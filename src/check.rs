//! `realtide check`: what `serve` needs, tried without serving: the
//! settings, the listening address, the database (without migrating it),
//! how table changes would be captured there, and Redis. Each finding is one [`Finding`]; the command fails if any does.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::prelude::*;
use diesel::sql_types::Text;

use crate::auth::api_keys::ApiKeys;
use crate::broker::redis::RedisTarget;
use crate::changes::logical;
use crate::config::{CaptureMode, Config};
use crate::db::{self, DatabaseUrl, DbConnection};

/// How long Redis may take to answer a `PING`.
const REDIS_WAIT: Duration = Duration::from_secs(3);

/// One thing checked, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Finding {
    fn of(what: &'static str, result: Result<String, String>) -> Finding {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail.trim_end().to_string()),
        };
        Finding { what, ok, detail }
    }
}

/// Checks everything `config` needs; blocking.
pub fn run(config: &Config) -> Vec<Finding> {
    let mut findings = vec![Finding::of("settings", settings(config))];
    findings.push(Finding::of("listen", listen(config)));
    let (database, conn) = database(&config.database_url, &config.schema);
    findings.push(Finding::of("database", database));
    if let Some(mut conn) = conn {
        findings.push(Finding::of("capture", capture(&mut conn, config.capture)));
    }
    if let Some(target) = config.redis_target() {
        findings.push(Finding::of("redis", redis_ping(&target)));
    }
    findings
}

fn settings(config: &Config) -> Result<String, String> {
    config.check()?;
    ApiKeys::new(config.api_keys.as_deref(), config.api_key_grants.as_deref())?;
    Ok(match config.jwt_secret {
        Some(_) => "valid; clients need a token or an API key".to_string(),
        None => "valid; open mode: no --jwt-secret, every client is accepted".to_string(),
    })
}

fn listen(config: &Config) -> Result<String, String> {
    let address = config.listen_address();
    crate::server::bind(&address)
        .map(|_| format!("{address} is free"))
        .map_err(|e| format!("cannot listen on {address}: {e}"))
}

/// What the database said, and its connection when it answered (read on
/// by the capture check).
fn database(url: &str, schema: &str) -> (Result<String, String>, Option<DbConnection>) {
    let parsed = match DatabaseUrl::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return (Err(e.to_string()), None),
    };
    let shown = parsed.redacted();
    if let DatabaseUrl::Sqlite(path) = &parsed
        && !path.exists()
    {
        return (
            Ok(format!("{shown} does not exist yet; serve creates it")),
            None,
        );
    }
    let mut conn = match db::connect_to(&parsed) {
        Ok(conn) => conn,
        Err(e) => return (Err(format!("{shown}: {e}")), None),
    };
    let answered = conn
        .batch_execute("SELECT 1")
        .map_err(|e| format!("{shown}: {e}"))
        .and_then(|()| {
            pending_migrations(&mut conn, schema)
                .map_err(|e| format!("{shown}: reading its migrations: {e}"))
        })
        .map(|pending| match pending {
            0 => format!("{shown} answers; its schema is current"),
            n => format!("{shown} answers; serve will run {n} migration(s) at start"),
        });
    let conn = answered.is_ok().then_some(conn);
    (answered, conn)
}

/// How `serve` would capture table changes, and on PostgreSQL whether
/// logical decoding is there to choose and how to enable it.
fn capture(conn: &mut DbConnection, mode: CaptureMode) -> Result<String, String> {
    if let DbConnection::Sqlite(_) = conn {
        return Ok("triggers (SQLite has no logical decoding)".to_string());
    }
    let unavailable = logical::unavailable_because(conn)
        .map_err(|e| format!("cannot tell whether logical decoding is available: {e}"))?;
    match (mode, unavailable) {
        (CaptureMode::Triggers, None) => Ok(
            "triggers (--capture triggers); logical decoding is available: \
             --capture auto would use it, and your writes would not run capture triggers"
                .to_string(),
        ),
        (_, None) => Ok("logical decoding (the server allows it)".to_string()),
        (CaptureMode::Logical, Some(why)) => Err(format!(
            "--capture logical, but logical decoding is not available: {why}"
        )),
        (CaptureMode::Triggers, Some(_)) => Ok("triggers (--capture triggers)".to_string()),
        (CaptureMode::Auto, Some(why)) => Ok(format!(
            "triggers: logical decoding is not available: {why}; \
             once it is, serve uses it and your writes no longer run capture triggers"
        )),
    }
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// How many of the embedded migrations the database has not run, read
/// without writing anything: diesel's own harness would create its
/// bookkeeping table (and, on PostgreSQL, in the connection's default
/// schema rather than realtide's).
fn pending_migrations(conn: &mut DbConnection, schema: &str) -> Result<usize, String> {
    let (source, table, exists) = match conn {
        DbConnection::Pg(_) => (
            db::POSTGRES_MIGRATIONS,
            format!("\"{schema}\".__diesel_schema_migrations"),
            format!(
                "SELECT version FROM (SELECT to_regclass('\"{schema}\".__diesel_schema_migrations')::text AS version) t WHERE version IS NOT NULL"
            ),
        ),
        DbConnection::Sqlite(_) => (
            db::SQLITE_MIGRATIONS,
            "__diesel_schema_migrations".to_string(),
            "SELECT name AS version FROM sqlite_master WHERE type = 'table' AND name = '__diesel_schema_migrations'".to_string(),
        ),
    };
    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&source)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect::<Vec<_>>();
    let found: Vec<Version> = run_query(conn, &exists)?;
    let applied: Vec<String> = match found.is_empty() {
        true => Vec::new(),
        false => run_query::<Version>(conn, &format!("SELECT version FROM {table}"))?
            .into_iter()
            .map(|v| v.version)
            .collect(),
    };
    Ok(embedded.iter().filter(|v| !applied.contains(v)).count())
}

fn run_query<T>(conn: &mut DbConnection, sql: &str) -> Result<Vec<T>, String>
where
    T: QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static,
{
    let result = match conn {
        DbConnection::Pg(c) => diesel::sql_query(sql).load::<T>(c),
        DbConnection::Sqlite(c) => diesel::sql_query(sql).load::<T>(c),
    };
    result.map_err(|e| e.to_string())
}

fn redis_ping(target: &RedisTarget) -> Result<String, String> {
    let client = match target {
        RedisTarget::Url(url) => {
            redis::Client::open(url.as_str()).map_err(|e| format!("--redis-url: {e}"))?
        }
        RedisTarget::Sentinel { master, .. } => {
            redis::sentinel::Sentinel::build(target.sentinel_urls())
                .and_then(|mut sentinel| sentinel.master_for(master, None))
                .map_err(|e| format!("no Sentinel names master `{master}`: {e}"))?
        }
    };
    let mut conn = client
        .get_connection_with_timeout(REDIS_WAIT)
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let pong: String = redis::cmd("PING")
        .query(&mut conn)
        .map_err(|e| format!("Redis does not answer: {e}"))?;
    Ok(format!(
        "{} answers ({pong})",
        client.get_connection_info().addr()
    ))
}
