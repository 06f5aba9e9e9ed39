//! The database: one diesel `MultiConnection` over SQLite (bundled, the
//! default) and PostgreSQL, an r2d2 pool, and the migrations of each backend,
//! embedded and run at start. Every call runs on the blocking thread pool
//! through [`Database::run`], never on an actor's or worker's thread.

pub mod schema;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use r2d2::ManageConnection;

pub use schema::{DEFAULT_SCHEMA, connect_in};
pub use url::DatabaseUrl;

pub(crate) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub(crate) const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long a SQLite connection waits for another writer's lock. Every
/// connection needs it: other programs write the same file.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// How long a caller waits for a pooled connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(5);

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Pg(PgConnection),
    // SQLite last: diesel's MultiConnection needs it so (see FACTS.md).
    Sqlite(SqliteConnection),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("bad database url: {0}")]
    Url(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] ConnectionError),
    #[error("cannot open the SQLite database {path}: {error}{hint}")]
    OpenSqlite {
        path: String,
        error: ConnectionError,
        /// What to do, when the cause is plain (a folder that does not exist).
        hint: &'static str,
    },
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("no database connection available: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("the database task did not finish: {0}")]
    Task(String),
}

/// Opens connections for r2d2, choosing the backend by the url's scheme so a
/// bad password is reported at once rather than after a pool timeout.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = DbError;

    fn connect(&self) -> Result<DbConnection, DbError> {
        match &self.url {
            DatabaseUrl::Postgres(url) => Ok(DbConnection::Pg(PgConnection::establish(url)?)),
            DatabaseUrl::Sqlite(path) => {
                let path = path
                    .to_str()
                    .ok_or_else(|| DbError::Url("path is not UTF-8".into()))?;
                let mut conn =
                    SqliteConnection::establish(path).map_err(|error| DbError::OpenSqlite {
                        path: path.to_string(),
                        hint: match std::path::Path::new(path).parent() {
                            Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => {
                                " (its folder does not exist: create it first)"
                            }
                            _ => "",
                        },
                        error,
                    })?;
                // WAL is a property of the file, set once by `Database::open`.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
                     PRAGMA synchronous = NORMAL;"
                ))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        conn.batch_execute("SELECT 1")?;
        Ok(())
    }

    fn has_broken(&self, _conn: &mut DbConnection) -> bool {
        false
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// The pool and what was learnt opening it; a clone is one pointer (every
/// topic holds one).
#[derive(Clone)]
pub struct Database(Arc<Opened>);

struct Opened {
    pool: Pool,
    url: DatabaseUrl,
    backend: &'static str,
    epoch: String,
}

#[derive(QueryableByName)]
struct MetaValue {
    #[diesel(sql_type = Text)]
    value: String,
}

impl Database {
    /// Connects, runs pending migrations and reads the database's epoch,
    /// with realtide's own tables in the schema `realtide` on PostgreSQL.
    /// Blocking: call it before the server starts or from the blocking pool.
    pub fn open(url: &str) -> Result<Database, DbError> {
        Self::open_in(url, DEFAULT_SCHEMA)
    }

    /// [`Database::open`] with realtide's tables in `schema` (PostgreSQL;
    /// ignored on SQLite). Tables an earlier version made in the app's
    /// schema move there first.
    pub fn open_in(url: &str, schema: &str) -> Result<Database, DbError> {
        let url = match DatabaseUrl::parse(url)? {
            DatabaseUrl::Postgres(plain) => schema::prepare(&plain, schema)?,
            sqlite => sqlite,
        };
        let backend = url.backend();
        let manager = Manager { url: url.clone() };
        if let DbConnection::Sqlite(conn) = &mut manager.connect()? {
            // WAL lets readers run while another process writes the file.
            conn.batch_execute("PRAGMA journal_mode = WAL;")?;
        }
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(POOL_WAIT)
            .build(manager)?;
        let mut conn = pool.get()?;
        migrate(&mut conn, schema)?;
        let epoch = ensure_epoch(&mut conn)?;
        drop(conn);
        Ok(Database(Arc::new(Opened {
            pool,
            url,
            backend,
            epoch,
        })))
    }

    /// A connection outside the pool, for the change tracker's own thread.
    /// Blocking.
    pub fn dedicated_connection(&self) -> Result<DbConnection, DbError> {
        connect_to(&self.0.url)
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.0.url
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.0.backend
    }

    /// The id of this database's change history; stable across restarts.
    pub fn epoch(&self) -> &str {
        &self.0.epoch
    }

    /// Runs `work` with a pooled connection on the blocking thread pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        let pool = self.0.pool.clone();
        tokio::task::spawn_blocking(move || work(&mut *pool.get()?))
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs blocking `work` on a pooled connection, on the calling thread
    /// (one of realtide's own, never an actor's).
    pub fn blocking<T>(
        &self,
        work: impl FnOnce(&mut DbConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        work(&mut *self.0.pool.get()?)
    }

    /// Whether the database answers a query now.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| Ok(conn.batch_execute("SELECT 1")?)).await
    }
}

/// One connection outside any pool (SQLite with its busy timeout), e.g. for
/// tools and tests that write the database as another program would.
pub fn connect(url: &str) -> Result<DbConnection, DbError> {
    connect_to(&DatabaseUrl::parse(url)?)
}

/// One connection outside any pool, to a parsed url.
pub fn connect_to(url: &DatabaseUrl) -> Result<DbConnection, DbError> {
    Manager { url: url.clone() }.connect()
}

/// Key of the advisory lock under which PostgreSQL migrations run.
pub(crate) const MIGRATION_LOCK: i64 = 0x7274_6d69_6772_6174; // "rtmigrat"

/// Runs pending migrations. Several nodes may start at once on one
/// database: on PostgreSQL they take turns under an advisory lock; on
/// SQLite the one that loses the race finds the migrations done on retry.
/// The capture functions' search path is set under the same lock: two
/// nodes altering one function at once fail with "tuple concurrently
/// updated".
fn migrate(conn: &mut DbConnection, schema: &str) -> Result<(), DbError> {
    match conn {
        DbConnection::Pg(c) => {
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
                .execute(c)?;
            let result = c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(drop)
                .map_err(|e| DbError::Migration(e.to_string()))
                .and_then(|()| schema::pin_functions(c, schema));
            let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
                .execute(c);
            result?;
            unlocked?;
            Ok(())
        }
        DbConnection::Sqlite(c) => {
            let mut tries = 0;
            loop {
                match c.run_pending_migrations(SQLITE_MIGRATIONS) {
                    Ok(_) => return Ok(()),
                    Err(_) if tries < 5 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                    Err(e) => return Err(DbError::Migration(e.to_string())),
                }
            }
        }
    }
}

fn ensure_epoch(conn: &mut DbConnection) -> Result<String, DbError> {
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    diesel::sql_query(
        "INSERT INTO _realtide_meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind::<Text, _>(&fresh)
    .execute(conn)?;
    let row: MetaValue = diesel::sql_query("SELECT value FROM _realtide_meta WHERE key = 'epoch'")
        .get_result(conn)?;
    Ok(row.value)
}
