//! `realtide check`: what `serve` needs, tried without serving: the
//! settings, the listening address, the database (without migrating it) and
//! Redis. Each finding is one [`Finding`]; the command fails if any does.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel_migrations::MigrationHarness;

use crate::auth::api_keys::ApiKeys;
use crate::config::Config;
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
    findings.push(Finding::of("database", database(&config.database_url)));
    if let Some(url) = &config.redis_url {
        findings.push(Finding::of("redis", redis_ping(url)));
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

fn database(url: &str) -> Result<String, String> {
    let parsed = DatabaseUrl::parse(url).map_err(|e| e.to_string())?;
    let shown = parsed.redacted();
    if let DatabaseUrl::Sqlite(path) = &parsed
        && !path.exists()
    {
        return Ok(format!("{shown} does not exist yet; serve creates it"));
    }
    let mut conn = db::connect_to(&parsed).map_err(|e| format!("{shown}: {e}"))?;
    conn.batch_execute("SELECT 1")
        .map_err(|e| format!("{shown}: {e}"))?;
    let pending = match &mut conn {
        DbConnection::Pg(c) => c
            .pending_migrations(db::POSTGRES_MIGRATIONS)
            .map(|m| m.len()),
        DbConnection::Sqlite(c) => c.pending_migrations(db::SQLITE_MIGRATIONS).map(|m| m.len()),
    }
    .map_err(|e| format!("{shown}: reading its migrations: {e}"))?;
    Ok(match pending {
        0 => format!("{shown} answers; its schema is current"),
        n => format!("{shown} answers; serve will run {n} migration(s) at start"),
    })
}

fn redis_ping(url: &str) -> Result<String, String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(REDIS_WAIT)
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let pong: String = redis::cmd("PING")
        .query(&mut conn)
        .map_err(|e| format!("Redis does not answer: {e}"))?;
    Ok(format!("answers ({pong})"))
}
