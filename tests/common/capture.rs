//! Helpers for the capture tests: a database that decodes logically,
//! one-off queries, and `realtide capture remove` run as an operator would.

use super::TestDb;

/// A fresh PostgreSQL database whose server can decode logically, or SKIP.
pub fn logical_db() -> Option<TestDb> {
    use diesel::RunQueryDsl;
    let db = TestDb::postgres()?;
    #[derive(diesel::QueryableByName)]
    struct Level {
        #[diesel(sql_type = diesel::sql_types::Text)]
        wal_level: String,
    }
    let mut conn = realtide::db::connect(&db.url).expect("connect");
    let level: Level = diesel::sql_query("SELECT current_setting('wal_level') AS wal_level")
        .get_result(&mut conn)
        .expect("wal_level");
    if level.wal_level != "logical" {
        super::skip(
            "PostgreSQL with wal_level = logical",
            &format!("wal_level is {}", level.wal_level),
        );
        return None;
    }
    Some(db)
}

/// One boolean answer (`... AS value`) from a connection of its own.
pub fn query_flag(url: &str, sql: &str) -> bool {
    query_number(
        url,
        &format!(
            "SELECT CAST(CASE WHEN value THEN 1 ELSE 0 END AS BIGINT) AS value FROM ({sql}) AS answer"
        ),
    ) != 0
}

/// One number (`... AS value`) from a connection of its own.
pub fn query_number(url: &str, sql: &str) -> i64 {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        value: i64,
    }
    let mut conn = realtide::db::connect(url).expect("connect");
    diesel::sql_query(sql)
        .get_result::<Number>(&mut conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .value
}

/// `realtide capture remove`, run as an operator would, with no server running.
pub fn remove_capture(url: &str, table: Option<&str>) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_realtide"));
    command.args(["capture", "remove", "--database-url", url]);
    if let Some(table) = table {
        command.args(["--table", table]);
    }
    let output = command.output().expect("run realtide capture remove");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
