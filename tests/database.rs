//! The database foundation, on SQLite and (with REALTIDE_TEST_POSTGRES_URL)
//! PostgreSQL: migrations run at start, the database's epoch survives a
//! restart, and readiness reports the backend.

mod common;

use common::{TestApp, TestDb};
use realtide::db::Database;

async fn open(url: String) -> Database {
    tokio::task::spawn_blocking(move || Database::open(&url))
        .await
        .unwrap()
        .expect("database opens")
}

#[tokio::test]
async fn the_epoch_is_created_once_and_survives_reopening() {
    for db in TestDb::all() {
        let first = open(db.url.clone()).await;
        let second = open(db.url.clone()).await;
        assert_eq!(first.backend(), db.backend());
        assert!(!first.epoch().is_empty());
        assert_eq!(first.epoch(), second.epoch(), "{}", db.backend());
        let other = TestDb::sqlite();
        assert_ne!(
            open(other.url.clone()).await.epoch(),
            first.epoch(),
            "another database, another epoch"
        );
    }
}

#[tokio::test]
async fn readiness_says_the_database_answers_on_each_backend() {
    for db in TestDb::all() {
        let backend = db.backend();
        let app = TestApp::spawn_on(db, |_| {}).await;
        let (status, body) = app.get_json("/readyz").await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(body, serde_json::json!({"database": true}), "{backend}");
    }
}

#[tokio::test]
async fn the_servers_own_tables_cannot_be_subscribed() {
    use serde_json::json;
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut client = app.client().await;
        let reply = client
            .request(json!({"type": "subscribe", "topic": "_realtide_meta"}))
            .await;
        assert_eq!(reply["code"], "forbidden");
    }
}

#[tokio::test]
async fn a_bad_postgres_password_fails_at_once_with_the_real_error() {
    let Some(db) = TestDb::postgres() else { return };
    let url = db
        .url
        .replacen("postgres://", "postgres://nobody_here:wrong@", 1);
    let started = std::time::Instant::now();
    let error = tokio::task::spawn_blocking(move || Database::open(&url).err())
        .await
        .unwrap();
    let message = error.expect("refused").to_string();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("connect"), "{message}");
}
