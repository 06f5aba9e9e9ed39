//! Database urls: `sqlite://relative.db`, `sqlite:///abs/path.db`, a bare
//! path, or `postgres://...` / `postgresql://...`.

use std::path::PathBuf;

use super::DbError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(plain_on_loopback(url)));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(DbError::Url(format!(
                "`{url}`: expected sqlite://file.db, sqlite:///abs/file.db, a path, or postgres://..."
            )));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }

    /// This PostgreSQL url with `search_path` set for every connection made
    /// from it (libpq's `options`), so realtide's tables in `schemas[0]`
    /// and the app's after it resolve unqualified. SQLite is unchanged.
    pub fn with_search_path(&self, schemas: &[&str]) -> DatabaseUrl {
        match self {
            DatabaseUrl::Sqlite(_) => self.clone(),
            DatabaseUrl::Postgres(url) => {
                let path: Vec<String> = schemas
                    .iter()
                    .map(|s| format!("\"{}\"", s.replace('"', "\"\"")))
                    .collect();
                let option = format!("-c search_path={}", path.join(","));
                let encoded: String = option
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                let separator = if url.contains('?') { '&' } else { '?' };
                DatabaseUrl::Postgres(format!("{url}{separator}options={encoded}"))
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }

    /// The url as logs may show it: a PostgreSQL password becomes `***`.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => crate::config::redact_url(url),
        }
    }
}

/// A PostgreSQL url whose server is on this machine and which names no
/// `sslmode` (nor does `PGSSLMODE`) connects without TLS: traffic that
/// never leaves the machine gains nothing from encryption, and decrypting
/// the replication stream held change delivery to 33,000 changes/s against
/// 53,000 without (docs/capture.md).
/// libpq's default (`prefer`) would use TLS wherever the server offers it.
/// An explicit `sslmode` is always kept.
fn plain_on_loopback(url: &str) -> String {
    let (before_query, query) = url.split_once('?').unwrap_or((url, ""));
    let names_it = |key: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    };
    if names_it("sslmode")
        || names_it("host")
        || names_it("hostaddr")
        || std::env::var_os("PGSSLMODE").is_some()
    {
        return url.to_string();
    }
    let rest = before_query.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    let loopback = |host: &str| {
        let name = match host.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
            None => host.split(':').next().unwrap_or(""),
        };
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    if hosts.is_empty() || !hosts.split(',').all(loopback) {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode=disable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_path_rides_in_the_url_as_a_libpq_option() {
        let url = DatabaseUrl::Postgres("postgres://u@h/db".into());
        assert_eq!(
            url.with_search_path(&["realtide", "public"]),
            DatabaseUrl::Postgres(
                "postgres://u@h/db?options=-c%20search_path%3D%22realtide%22%2C%22public%22".into()
            )
        );
        let sqlite = DatabaseUrl::Sqlite("a.db".into());
        assert_eq!(sqlite.with_search_path(&["x"]), sqlite);
    }

    #[test]
    fn a_server_on_this_machine_is_reached_without_tls_unless_the_url_asks_for_it() {
        let parsed = |url: &str| match DatabaseUrl::parse(url).unwrap() {
            DatabaseUrl::Postgres(url) => url,
            DatabaseUrl::Sqlite(_) => unreachable!(),
        };
        for local in [
            "postgres://u:p@127.0.0.1:5432/app",
            "postgres://localhost/app",
            "postgresql://[::1]:5433/app?application_name=x",
        ] {
            let sep = if local.contains('?') { '&' } else { '?' };
            assert_eq!(parsed(local), format!("{local}{sep}sslmode=disable"));
        }
        for kept in [
            "postgres://db.internal:5432/app",
            "postgres://127.0.0.1/app?sslmode=require",
            "postgres://127.0.0.1,db.internal/app",
            "postgres:///app?host=/var/run/postgresql",
        ] {
            assert_eq!(parsed(kept), kept);
        }
    }

    #[test]
    fn logs_never_show_a_postgres_password() {
        let url =
            DatabaseUrl::parse("postgres://app:s3cr%40t@db.internal:5432/app?sslmode=require")
                .unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db.internal:5432/app?sslmode=require"
        );
        let bare = DatabaseUrl::parse("postgresql://db/app").unwrap();
        assert_eq!(bare.redacted(), "postgresql://db/app");
        let sqlite = DatabaseUrl::parse("sqlite://data/rt.db").unwrap();
        assert_eq!(sqlite.redacted(), "sqlite://data/rt.db");
    }

    #[test]
    fn sqlite_urls_name_relative_and_absolute_paths() {
        let parse = |s| DatabaseUrl::parse(s).unwrap();
        assert_eq!(
            parse("sqlite://realtide.db"),
            DatabaseUrl::Sqlite("realtide.db".into())
        );
        assert_eq!(
            parse("sqlite:///tmp/x.db"),
            DatabaseUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(parse("data/x.db"), DatabaseUrl::Sqlite("data/x.db".into()));
        assert_eq!(parse("postgres://u@h/db").backend(), "postgres");
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert!(DatabaseUrl::parse("").is_err());
    }
}
