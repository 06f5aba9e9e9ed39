//! Table topics reading tables of other PostgreSQL schemas: `--tables
//! app.items` serves `app.items` as topic `items`, `stock=items` serves the
//! app's own `items` as topic `stock`, each topic gets its own table's
//! changes whoever writes them, in both capture modes; `capture remove
//! --table app.items` takes that table's capture out. SQLite, which has no
//! schemas, refuses such a list at start.

mod common;

use common::capture::{logical_db, query_flag, remove_capture};
use common::{Client, TestApp, TestDb};
use realtide::config::CaptureMode;
use serde_json::{Value, json};

async fn change(client: &mut Client) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["type"], "db_change", "{frame}");
    frame
}

/// Whether `table` (as SQL names it) still has capture: a trigger, or (logical
/// decoding) a place in the publication.
fn captured(url: &str, capture: CaptureMode, table: &str) -> bool {
    let sql = match capture {
        CaptureMode::Logical => format!(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = 'realtide' AND pr.prrelid = '{table}'::regclass) AS value"
        ),
        _ => format!(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname LIKE '\\_realtide\\_capture%' \
             AND tgrelid = '{table}'::regclass) AS value"
        ),
    };
    query_flag(url, &sql)
}

#[tokio::test]
async fn a_table_of_another_schema_is_served_under_the_configured_topic_name() {
    let mut dbs: Vec<(TestDb, CaptureMode)> = Vec::new();
    dbs.extend(TestDb::postgres().map(|db| (db, CaptureMode::Triggers)));
    dbs.extend(logical_db().map(|db| (db, CaptureMode::Logical)));
    for (db, capture) in dbs {
        // Two tables of one name: the app's own, and one in schema `app`.
        db.execute(
            "CREATE SCHEMA app; \
             CREATE TABLE app.items (id INT PRIMARY KEY, name TEXT); \
             CREATE TABLE items (id INT PRIMARY KEY, name TEXT); \
             CREATE TABLE orders (id INT PRIMARY KEY)",
        );
        let app = TestApp::spawn_on(db, |c| {
            c.capture = capture;
            c.tables = "app.items, stock=items".into();
        })
        .await;
        let (_, report) = app.get_json("/admin/capture").await;
        assert_eq!(
            report["mode"],
            json!(format!("{capture:?}").to_lowercase()),
            "{report}"
        );
        let mut client = app.client().await;
        client.subscribe("items").await;
        client.subscribe("stock").await;
        for unlisted in ["orders", "app"] {
            let refused = client
                .request(json!({"type": "subscribe", "topic": unlisted}))
                .await;
            assert_eq!(refused["code"], "forbidden", "{capture:?}: {refused}");
        }

        // Written by another connection, as the app's backend would.
        app.db.execute(
            "INSERT INTO app.items VALUES (1, 'in app'); \
             INSERT INTO items VALUES (2, 'in public'); \
             UPDATE app.items SET name = 'renamed' WHERE id = 1; \
             DELETE FROM items WHERE id = 2",
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            let frame = change(&mut client).await;
            let row = &frame["data"];
            seen.push((
                frame["topic"].as_str().unwrap().to_string(),
                frame["operation"].as_str().unwrap().to_string(),
                row["id"].as_i64().unwrap(),
                row["name"].as_str().unwrap().to_string(),
            ));
        }
        seen.sort();
        let expected = [
            ("items", "INSERT", 1, "in app"),
            ("items", "UPDATE", 1, "renamed"),
            ("stock", "DELETE", 2, "in public"),
            ("stock", "INSERT", 2, "in public"),
        ]
        .map(|(t, e, id, n)| (t.to_string(), e.to_string(), id, n.to_string()));
        assert_eq!(seen, expected, "{capture:?}");
        client
            .expect_silence(std::time::Duration::from_millis(200))
            .await;
        client.close().await;
        app.shutdown().await;

        let url = app.db.url.clone();
        assert!(captured(&url, capture, "app.items"), "{capture:?}");
        let removed = remove_capture(&url, Some("app.items"));
        assert!(removed.contains("app.items"), "{capture:?}: {removed}");
        assert!(!captured(&url, capture, "app.items"), "{capture:?}");
        assert!(captured(&url, capture, "public.items"), "{capture:?}");
    }
}

#[test]
fn sqlite_refuses_a_table_list_with_schemas_or_other_topic_names() {
    for tables in ["app.items", "stock=items"] {
        let db = TestDb::sqlite();
        let config = realtide::config::Config {
            database_url: db.url.clone(),
            tables: tables.into(),
            ..realtide::config::Config::default()
        };
        let refused = actix_rt::System::new().block_on(async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            realtide::server::start(listener, config)
                .err()
                .map(|e| e.to_string())
        });
        let refused = refused.expect("SQLite refuses to start");
        assert!(refused.contains("SQLite"), "{tables}: {refused}");
    }
}
