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
            return Ok(DatabaseUrl::Postgres(url.to_string()));
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

    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
