//! Table topics: every committed INSERT, UPDATE and DELETE arrives as a
//! `db_change`, whoever wrote it, on SQLite and (with
//! REALTIDE_TEST_POSTGRES_URL) PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, TestApp, TestDb};
use serde_json::{Value, json};

const ORDERS: &str = "CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    customer_name TEXT NOT NULL,
    amount DOUBLE PRECISION NOT NULL,
    status TEXT DEFAULT 'pending',
    created_at BIGINT NOT NULL
)";

async fn app_with_orders(db: TestDb) -> TestApp {
    db.execute(ORDERS);
    TestApp::spawn_on(db, |_| {}).await
}

/// Reads the next `db_change`, skipping nothing else.
async fn change(client: &mut Client) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["type"], "db_change", "{frame}");
    frame
}

#[tokio::test]
async fn inserts_updates_and_deletes_from_another_connection_arrive_with_whole_rows() {
    for db in TestDb::all() {
        let backend = db.backend();
        let app = app_with_orders(db).await;
        let mut client = app.client().await;
        let subscribed = client.subscribe("orders").await;
        let start = subscribed["seq"].as_u64().unwrap();

        app.db
            .execute("INSERT INTO orders VALUES ('123', 'Ann', 25.5, 'pending', 1763850000000)");
        let insert = change(&mut client).await;
        assert_eq!(insert["topic"], "orders");
        assert_eq!(insert["operation"], "INSERT");
        assert_eq!(
            insert["data"],
            json!({"id": "123", "customer_name": "Ann", "amount": 25.5, "status": "pending", "created_at": 1763850000000i64}),
            "{backend}"
        );
        assert!(
            insert.get("old").is_none(),
            "no old row on INSERT ({backend})"
        );
        assert!(insert["seq"].as_u64().unwrap() > start);
        assert_eq!(
            insert["epoch"],
            Value::Null,
            "epoch is in subscribed, not in events"
        );

        app.db
            .execute("UPDATE orders SET status = 'shipped' WHERE id = '123'");
        let update = change(&mut client).await;
        assert_eq!(update["operation"], "UPDATE");
        assert_eq!(update["data"]["status"], "shipped");
        assert_eq!(update["old"]["status"], "pending");
        assert_eq!(update["old"]["amount"], 25.5);
        assert!(update["seq"].as_u64() > insert["seq"].as_u64());

        app.db.execute("DELETE FROM orders WHERE id = '123'");
        let delete = change(&mut client).await;
        assert_eq!(delete["operation"], "DELETE");
        assert_eq!(
            delete["data"]["status"], "shipped",
            "data is the row as it was"
        );
        assert_eq!(delete["old"], delete["data"]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (now - delete["timestamp"].as_i64().unwrap()).abs() < 10_000,
            "{backend}"
        );
    }
}

#[tokio::test]
async fn a_shell_update_is_seen_like_any_other() {
    for db in TestDb::all() {
        let app = app_with_orders(db).await;
        app.db
            .execute("INSERT INTO orders VALUES ('1', 'Ann', 10, 'pending', 0)");
        let mut client = app.client().await;
        client.subscribe("table/orders/realtide").await;
        app.db
            .shell("UPDATE orders SET status = 'shipped' WHERE id = '1'");
        let update = change(&mut client).await;
        assert_eq!(
            update["topic"], "table/orders/realtide",
            "the client's spelling"
        );
        assert_eq!(update["data"]["status"], "shipped");
        assert_eq!(update["old"]["status"], "pending");
    }
}

#[tokio::test]
async fn column_types_survive_integers_reals_nulls_text_and_blobs() {
    for db in TestDb::all() {
        let (blob_type, blob) = if db.is_postgres() {
            ("BYTEA", "'\\x0102ff'::bytea")
        } else {
            ("BLOB", "x'0102ff'")
        };
        db.execute(&format!(
            "CREATE TABLE things (id BIGINT PRIMARY KEY, ratio DOUBLE PRECISION, note TEXT, raw {blob_type})"
        ));
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut client = app.client().await;
        client.subscribe("things").await;
        app.db.execute(&format!(
            "INSERT INTO things VALUES (9007199254740993, 0.25, NULL, {blob})"
        ));
        app.db
            .execute("INSERT INTO things VALUES (2, 3, '{\"not\":\"json\"}', NULL)");
        let first = change(&mut client).await;
        assert_eq!(
            first["data"],
            json!({"id": 9007199254740993i64, "ratio": 0.25, "note": null, "raw": "AQL/"}),
            "{}",
            app.db.backend()
        );
        let second = change(&mut client).await;
        assert_eq!(
            second["data"]["note"], "{\"not\":\"json\"}",
            "text stays a string"
        );
        assert_eq!(second["data"]["ratio"].as_f64(), Some(3.0));
        assert_eq!(second["data"]["raw"], Value::Null);
    }
}

#[tokio::test]
async fn five_quick_updates_of_one_row_are_five_events_each_with_its_old_row() {
    for db in TestDb::all() {
        let app = app_with_orders(db).await;
        app.db
            .execute("INSERT INTO orders VALUES ('r', 'Ann', 0, 'pending', 0)");
        let mut client = app.client().await;
        client.subscribe("orders").await;
        app.db.execute(
            "UPDATE orders SET amount = 1 WHERE id = 'r'; UPDATE orders SET amount = 2 WHERE id = 'r';
             UPDATE orders SET amount = 3 WHERE id = 'r'; UPDATE orders SET amount = 4 WHERE id = 'r';
             UPDATE orders SET amount = 5 WHERE id = 'r';",
        );
        for n in 1..=5 {
            let update = change(&mut client).await;
            assert_eq!(update["data"]["amount"].as_f64(), Some(n as f64));
            assert_eq!(update["old"]["amount"].as_f64(), Some((n - 1) as f64));
        }
    }
}

#[tokio::test]
async fn a_transactions_changes_arrive_in_statement_order() {
    for db in TestDb::all() {
        let app = app_with_orders(db).await;
        let mut client = app.client().await;
        client.subscribe("orders").await;
        app.db.execute(
            "BEGIN;
             INSERT INTO orders VALUES ('b', 'Bo', 1, 'pending', 0);
             INSERT INTO orders VALUES ('a', 'Al', 2, 'pending', 0);
             DELETE FROM orders WHERE id = 'b';
             COMMIT;",
        );
        let ops: Vec<(String, String)> = {
            let mut ops = Vec::new();
            for _ in 0..3 {
                let c = change(&mut client).await;
                let id = if c["operation"] == "DELETE" {
                    &c["old"]["id"]
                } else {
                    &c["data"]["id"]
                };
                ops.push((
                    c["operation"].as_str().unwrap().to_string(),
                    id.as_str().unwrap().to_string(),
                ));
            }
            ops
        };
        let expected = [("INSERT", "b"), ("INSERT", "a"), ("DELETE", "b")];
        assert_eq!(ops, expected.map(|(o, i)| (o.to_string(), i.to_string())));
    }
}

#[tokio::test]
async fn filters_select_rows_and_a_row_leaving_the_filter_is_seen_leaving() {
    for db in TestDb::all() {
        let app = app_with_orders(db).await;
        let mut client = app.client().await;
        let reply = client
            .request(json!({"type": "subscribe", "topic": "orders",
                            "filter": {"status": "shipped", "amount": {"gt": 100}}}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        app.db
            .execute("INSERT INTO orders VALUES ('small', 'Ann', 5, 'shipped', 0)");
        app.db
            .execute("INSERT INTO orders VALUES ('big', 'Bob', 500, 'pending', 0)");
        app.db
            .execute("UPDATE orders SET status = 'shipped' WHERE id = 'big'");
        let entering = change(&mut client).await;
        assert_eq!(
            (
                entering["operation"].clone(),
                entering["data"]["id"].clone()
            ),
            (json!("UPDATE"), json!("big"))
        );
        app.db
            .execute("UPDATE orders SET status = 'returned' WHERE id = 'big'");
        let leaving = change(&mut client).await;
        assert_eq!(leaving["data"]["status"], "returned");
        assert_eq!(leaving["old"]["status"], "shipped");
        app.db
            .execute("UPDATE orders SET amount = 600 WHERE id = 'big'");
        app.db.execute("DELETE FROM orders WHERE id = 'small'");
        client.expect_silence(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn bad_filters_and_bad_tables_are_refused() {
    let db = TestDb::sqlite();
    db.execute(ORDERS);
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY)");
    let app = TestApp::spawn_on(db, |c| c.tables = "orders,ghosts".into()).await;
    let mut client = app.client().await;
    for (request, code) in [
        (
            json!({"topic": "orders", "filter": {"nope": 1}}),
            "bad_request",
        ),
        (
            json!({"topic": "orders", "filter": {"amount": {"like": 1}}}),
            "bad_request",
        ),
        (
            json!({"topic": "orders", "filter": {"amount": {"in": 1}}}),
            "bad_request",
        ),
        (json!({"topic": "orders", "filter": [1]}), "bad_request"),
        (json!({"topic": "secrets"}), "forbidden"),
        (json!({"topic": "ghosts"}), "not_found"),
        (json!({"topic": "_realtide_changes"}), "forbidden"),
    ] {
        let mut frame = request.clone();
        frame["type"] = json!("subscribe");
        let reply = client.request(frame).await;
        assert_eq!(reply["type"], "error", "{request}");
        assert_eq!(reply["code"], code, "{request}: {reply}");
    }
    // A refused subscription is forgotten: a valid one afterwards works alone.
    client.subscribe("orders").await;
    app.db
        .execute("INSERT INTO orders VALUES ('1', 'Ann', 1, 'pending', 0)");
    assert_eq!(change(&mut client).await["data"]["id"], "1");
}

#[tokio::test]
async fn a_tokens_forced_filter_shows_a_user_only_their_rows() {
    let db = TestDb::sqlite();
    db.execute(ORDERS);
    let app = TestApp::spawn_on(db, |c| c.jwt_secret = Some(common::SECRET.into())).await;
    let claims = json!({"realtime": {"subscribe": ["orders"], "filters": {"orders": {"customer_name": "Ann"}}}});
    let token = common::token_for(common::SECRET, "ann", claims);
    let mut ann = app.client_with_token(&token).await;
    // Her own filter cannot widen the forced one.
    let reply = ann
        .request(json!({"type": "subscribe", "topic": "orders", "filter": {"customer_name": {"neq": "x"}}}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    app.db
        .execute("INSERT INTO orders VALUES ('1', 'Bob', 1, 'pending', 0)");
    app.db
        .execute("INSERT INTO orders VALUES ('2', 'Ann', 1, 'pending', 0)");
    let mine = change(&mut ann).await;
    assert_eq!(mine["data"]["id"], "2");
    ann.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_new_column_is_captured_after_a_schema_change() {
    for db in TestDb::all() {
        let app = app_with_orders(db).await;
        let mut client = app.client().await;
        client.subscribe("orders").await;
        app.db
            .execute("INSERT INTO orders VALUES ('1', 'Ann', 1, 'pending', 0)");
        change(&mut client).await;
        app.db.shell("ALTER TABLE orders ADD COLUMN note TEXT");
        // The tracker notices the schema change within a tick or two.
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.db
            .execute("UPDATE orders SET note = 'fragile' WHERE id = '1'");
        let update = change(&mut client).await;
        assert_eq!(update["data"]["note"], "fragile", "{}", app.db.backend());
        assert_eq!(update["data"]["customer_name"], "Ann");
    }
}

#[tokio::test]
async fn a_client_resuming_with_since_gets_the_changes_it_missed() {
    for db in TestDb::all() {
        let app = app_with_orders(db).await;
        let mut client = app.client().await;
        let subscribed = client.subscribe("orders").await;
        let epoch = subscribed["epoch"].clone();
        app.db
            .execute("INSERT INTO orders VALUES ('1', 'Ann', 1, 'pending', 0)");
        let seen = change(&mut client).await["seq"].clone();
        client.close().await;
        app.db
            .execute("UPDATE orders SET status = 'paid' WHERE id = '1'");
        app.db
            .execute("INSERT INTO orders VALUES ('2', 'Bob', 2, 'pending', 0)");
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut back = app.client().await;
        let reply = back
            .request(json!({"type": "subscribe", "topic": "orders", "since": seen, "epoch": epoch}))
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let first = change(&mut back).await;
        assert_eq!(
            (first["operation"].clone(), first["data"]["status"].clone()),
            (json!("UPDATE"), json!("paid"))
        );
        // On PostgreSQL another test's open transaction can hold these back
        // (xmin is cluster-wide), so they may come replayed or live: either
        // way once each, in order.
        let second = change(&mut back).await;
        assert_eq!(second["data"]["id"], "2");
        let seqs = [&seen, &first["seq"], &second["seq"]].map(|s| s.as_u64().unwrap());
        assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2], "{seqs:?}");
        back.expect_silence(Duration::from_millis(300)).await;

        let mut stranger = app.client().await;
        let reply = stranger
            .request(
                json!({"type": "subscribe", "topic": "orders", "since": seen, "epoch": "other"}),
            )
            .await;
        assert_eq!(reply["recovered"], false);
        stranger.expect_silence(Duration::from_millis(300)).await;
    }
}

/// Applies db_change events to a map of rows, as a dashboard would.
fn apply(rows: &mut BTreeMap<String, Value>, event: &Value) {
    let id = |row: &Value| row["id"].as_i64().unwrap().to_string();
    match event["operation"].as_str().unwrap() {
        "INSERT" | "UPDATE" => {
            rows.insert(id(&event["data"]), event["data"].clone());
        }
        _ => {
            rows.remove(&id(&event["old"]));
        }
    }
}

#[tokio::test]
async fn eight_concurrent_writers_lose_nothing_and_duplicate_nothing() {
    const WRITERS: i64 = 8;
    const MUTATIONS: i64 = 1000;
    for db in TestDb::all() {
        db.execute("CREATE TABLE counters (id BIGINT PRIMARY KEY, writer BIGINT NOT NULL, value BIGINT NOT NULL)");
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut client = app.client().await;
        client.subscribe("counters").await;

        let url = app.db.url.clone();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let url = url.clone();
                std::thread::spawn(move || {
                    use diesel::connection::SimpleConnection;
                    let mut conn = realtide::db::connect(&url).unwrap();
                    // Each writer owns ten rows: inserts them, updates them, deletes some.
                    let slot = |m: i64| w * 100 + m % 10;
                    for m in 0..MUTATIONS {
                        let sql = match m {
                            m if m < 10 => {
                                format!("INSERT INTO counters VALUES ({}, {w}, 0)", slot(m))
                            }
                            m if m % 97 == 0 => {
                                format!("DELETE FROM counters WHERE id = {}", slot(m))
                            }
                            // Put back the row deleted just before.
                            m if m % 97 == 1 => {
                                format!("INSERT INTO counters VALUES ({}, {w}, {m})", slot(m - 1))
                            }
                            m => format!("UPDATE counters SET value = {m} WHERE id = {}", slot(m)),
                        };
                        conn.batch_execute(&sql).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }

        let mut rows = BTreeMap::new();
        let mut last_seq = 0;
        let mut events = 0;
        while let Some(common::Incoming::Frame(event)) =
            client.next_within(Duration::from_secs(3)).await
        {
            let seq = event["seq"].as_u64().unwrap();
            assert!(
                seq > last_seq,
                "seq {seq} after {last_seq}: out of order or repeated"
            );
            last_seq = seq;
            apply(&mut rows, &event);
            events += 1;
        }
        let table: BTreeMap<String, Value> = {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                id: i64,
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                writer: i64,
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                value: i64,
            }
            let mut conn = realtide::db::connect(&url).unwrap();
            let found: Vec<Row> = diesel::sql_query("SELECT id, writer, value FROM counters")
                .load(&mut conn)
                .unwrap();
            found
                .into_iter()
                .map(|r| {
                    (
                        r.id.to_string(),
                        json!({"id": r.id, "writer": r.writer, "value": r.value}),
                    )
                })
                .collect()
        };
        assert_eq!(
            events,
            (WRITERS * MUTATIONS) as usize,
            "{}: every mutation is one event",
            app.db.backend()
        );
        assert_eq!(
            rows,
            table,
            "{}: the applied events equal the table",
            app.db.backend()
        );
    }
}

#[tokio::test]
async fn a_postgres_transaction_that_commits_late_is_still_delivered() {
    use diesel::connection::SimpleConnection;
    let Some(db) = TestDb::postgres() else { return };
    let app = app_with_orders(db).await;
    let mut client = app.client().await;
    client.subscribe("orders").await;

    let mut held = realtide::db::connect(&app.db.url).unwrap();
    held.batch_execute("BEGIN; INSERT INTO orders VALUES ('early', 'Ann', 1, 'pending', 0);")
        .unwrap();
    app.db
        .execute("INSERT INTO orders VALUES ('later', 'Bob', 2, 'pending', 0)");
    if capture_mode(&app).await == "logical" {
        // Logical decoding hands out each transaction at its commit: the
        // one left open holds nothing back, and arrives when it commits.
        let later = change(&mut client).await;
        assert_eq!(later["data"]["id"], "later");
        held.batch_execute("COMMIT;").unwrap();
        let early = change(&mut client).await;
        assert_eq!(early["data"]["id"], "early");
        assert!(early["seq"].as_u64() > later["seq"].as_u64());
        return;
    }
    // Triggers: the later commit waits for the held transaction; delivering
    // it first would let a reader skip past the held one for good.
    client.expect_silence(Duration::from_millis(400)).await;
    held.batch_execute("COMMIT;").unwrap();
    let first = change(&mut client).await;
    let second = change(&mut client).await;
    let mut ids = vec![first["data"]["id"].clone(), second["data"]["id"].clone()];
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, vec![json!("early"), json!("later")]);
    assert!(second["seq"].as_u64() > first["seq"].as_u64());
}

/// How the server captures table changes: `logical` or `triggers`.
async fn capture_mode(app: &TestApp) -> String {
    let (_, capture) = app.get_json("/admin/capture").await;
    capture["mode"]
        .as_str()
        .expect("/admin/capture reports the mode")
        .to_string()
}

#[tokio::test]
async fn changes_older_than_the_retention_are_pruned_and_cannot_be_resumed() {
    for db in TestDb::all() {
        db.execute(ORDERS);
        let app = TestApp::spawn_on(db, |c| c.changes_retention_s = 1).await;
        let mut client = app.client().await;
        let epoch = client.subscribe("orders").await["epoch"].clone();
        app.db
            .execute("INSERT INTO orders VALUES ('1', 'Ann', 1, 'pending', 0)");
        let old = change(&mut client).await["seq"].as_u64().unwrap();
        app.db
            .execute("INSERT INTO orders VALUES ('2', 'Ann', 1, 'pending', 0)");
        change(&mut client).await;
        tokio::time::sleep(Duration::from_millis(2600)).await;
        app.db
            .execute("UPDATE orders SET status = 'kept' WHERE id = '2'");
        assert_eq!(
            change(&mut client).await["data"]["status"],
            "kept",
            "live delivery goes on"
        );

        // Pruning runs every second here; a fresh client asks until it has.
        let (mut late, mut reply) = (app.client().await, Value::Null);
        for _ in 0..30 {
            late = app.client().await;
            reply = late
                .request(
                    json!({"type": "subscribe", "topic": "orders", "since": old, "epoch": epoch}),
                )
                .await;
            if reply["recovered"] == false {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            reply["recovered"],
            false,
            "{}: seq {} was pruned",
            app.db.backend(),
            old + 1
        );
        late.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn the_tracker_reconnects_after_postgres_drops_its_connection() {
    let Some(db) = TestDb::postgres() else { return };
    let app = app_with_orders(db).await;
    let mut client = app.client().await;
    client.subscribe("orders").await;
    app.db
        .execute("INSERT INTO orders VALUES ('1', 'Ann', 1, 'pending', 0)");
    change(&mut client).await;
    app.db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    app.db
        .execute("INSERT INTO orders VALUES ('2', 'Bob', 2, 'pending', 0)");
    let after = change(&mut client).await;
    assert_eq!(
        after["data"]["id"], "2",
        "delivered once the tracker is back"
    );
}

#[tokio::test]
async fn dropped_triggers_come_back_so_a_column_can_be_dropped_on_sqlite() {
    let db = TestDb::sqlite();
    let app = app_with_orders(db).await;
    let mut client = app.client().await;
    client.subscribe("orders").await;
    // SQLite refuses to drop a column a trigger names: drop ours first.
    app.db.shell(
        "DROP TRIGGER _realtide_orders_insert; DROP TRIGGER _realtide_orders_update; \
         DROP TRIGGER _realtide_orders_delete; ALTER TABLE orders DROP COLUMN created_at;",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.db
        .execute("INSERT INTO orders (id, customer_name, amount) VALUES ('1', 'Ann', 1)");
    let insert = change(&mut client).await;
    assert_eq!(insert["data"]["id"], "1");
    assert!(insert["data"].get("created_at").is_none());
}

#[tokio::test]
async fn a_new_tokens_forced_filter_applies_to_a_live_subscription() {
    let db = TestDb::sqlite();
    db.execute(ORDERS);
    let app = TestApp::spawn_on(db, |c| c.jwt_secret = Some(common::SECRET.into())).await;
    let token = |claims: Value| common::token_for(common::SECRET, "ann", claims);
    let mut ann = app.client_with_token(&token(json!({}))).await;
    ann.subscribe("orders").await;
    app.db
        .execute("INSERT INTO orders VALUES ('1', 'Bob', 1, 'pending', 0)");
    assert_eq!(
        change(&mut ann).await["data"]["customer_name"],
        "Bob",
        "no filter yet"
    );

    let narrowed = token(
        json!({"realtime": {"subscribe": ["orders"], "filters": {"orders": {"customer_name": "Ann"}}}}),
    );
    let ack = ann
        .request(json!({"type": "auth", "token": narrowed}))
        .await;
    assert_eq!(ack["type"], "ack");
    app.db
        .execute("INSERT INTO orders VALUES ('2', 'Bob', 1, 'pending', 0)");
    app.db
        .execute("INSERT INTO orders VALUES ('3', 'Ann', 1, 'pending', 0)");
    let next = change(&mut ann).await;
    assert_eq!(next["data"]["id"], "3", "Bob's new row is no longer shown");
    ann.expect_silence(Duration::from_millis(300)).await;
}

/// Runs `sql` on its own PostgreSQL connection, as another program would.
fn pg_session(url: &str) -> realtide::db::DbConnection {
    realtide::db::connect(url).expect("connect")
}

#[tokio::test]
async fn one_rows_changes_arrive_in_commit_order_when_an_older_transaction_commits_last() {
    use diesel::connection::SimpleConnection;
    let Some(db) = TestDb::postgres() else { return };
    db.execute("CREATE TABLE elsewhere (n INT); CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    db.execute("INSERT INTO items VALUES (1, 'first')");
    let app = TestApp::spawn_on(db, |_| {}).await;
    let mut client = app.client().await;
    client.subscribe("items").await;
    let (mut old, mut hold, mut new) = (
        pg_session(&app.db.url),
        pg_session(&app.db.url),
        pg_session(&app.db.url),
    );
    // T_old takes an xid first, T_hold the next; both stay open.
    old.batch_execute("BEGIN; INSERT INTO elsewhere VALUES (1);")
        .unwrap();
    hold.batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .unwrap();
    // T_new, the newest xid, changes the row and commits first; T_old
    // changes it after that commit, and commits last.
    new.batch_execute("BEGIN; UPDATE items SET v = 'by new' WHERE id = 1; COMMIT;")
        .unwrap();
    old.batch_execute("UPDATE items SET v = 'by old' WHERE id = 1; COMMIT;")
        .unwrap();
    let (first, second) = if capture_mode(&app).await == "logical" {
        // Decoded in commit order as they commit: T_hold holds nothing back.
        let first = change(&mut client).await;
        let second = change(&mut client).await;
        hold.batch_execute("COMMIT;").unwrap();
        (first, second)
    } else {
        // T_old's change is below xmin while T_hold runs, T_new's is not: it
        // must wait, or subscribers would apply 'by new' last.
        client.expect_silence(Duration::from_millis(600)).await;
        hold.batch_execute("COMMIT;").unwrap();
        (change(&mut client).await, change(&mut client).await)
    };
    assert_eq!(
        (&first["data"]["v"], &second["data"]["v"]),
        (&json!("by new"), &json!("by old")),
        "the row's changes in commit order"
    );
    assert_eq!(second["old"]["v"], "by new");
    assert!(second["seq"].as_u64() > first["seq"].as_u64());
}

#[tokio::test]
async fn a_row_holding_text_that_is_not_utf8_costs_only_itself() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)");
    let app = TestApp::spawn_on(db, |_| {}).await;
    let mut client = app.client().await;
    client.subscribe("notes").await;
    // SQLite stores the bytes as TEXT without checking them.
    app.db
        .execute("INSERT INTO notes VALUES (1, CAST(x'6869ff21' AS TEXT))");
    app.db.execute("INSERT INTO notes VALUES (2, 'fine')");
    let bad = change(&mut client).await;
    assert_eq!(bad["data"], json!({"id": 1, "body": "hi\u{fffd}!"}));
    let good = change(&mut client).await;
    assert_eq!(good["data"]["body"], "fine", "the feed goes on past it");
    assert_eq!(app.metric("realtide_change_rows_repaired_total").await, 1.0);
}

#[tokio::test]
async fn reals_round_trip_exactly_and_infinities_are_spelled_as_postgres_does() {
    for db in TestDb::all() {
        db.execute("CREATE TABLE readings (id INT PRIMARY KEY, x DOUBLE PRECISION)");
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut client = app.client().await;
        client.subscribe("readings").await;
        let (inf, neg_inf) = if app.db.is_postgres() {
            ("'Infinity'", "'-Infinity'")
        } else {
            ("9e999", "-9e999")
        };
        // Through the backend's own shell: its SQLite is the one whose
        // triggers write the log.
        app.db.shell(&format!(
            "INSERT INTO readings VALUES (1, 0.30000000000000004); \
             INSERT INTO readings VALUES (2, 1.7976931348623157e308); \
             INSERT INTO readings VALUES (3, {inf}); INSERT INTO readings VALUES (4, {neg_inf}); \
             INSERT INTO readings VALUES (5, 25.5); INSERT INTO readings VALUES (6, 5e-324)"
        ));
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(change(&mut client).await["data"]["x"].clone());
        }
        assert_eq!(
            got,
            vec![
                json!(0.30000000000000004),
                json!(1.7976931348623157e308),
                json!("Infinity"),
                json!("-Infinity"),
                json!(25.5),
                json!(5e-324),
            ],
            "{}",
            app.db.backend()
        );
    }
}

#[tokio::test]
async fn insert_or_replace_is_captured_when_the_writer_enables_recursive_triggers() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)");
    db.execute("INSERT INTO kv VALUES ('a', 'one')");
    let app = TestApp::spawn_on(db, |_| {}).await;
    let mut client = app.client().await;
    client.subscribe("kv").await;
    // As docs/protocol.md (Table topics) advises: the replaced row's DELETE is
    // captured only when the writing connection enables recursive triggers.
    app.db
        .shell("PRAGMA recursive_triggers = ON; INSERT OR REPLACE INTO kv VALUES ('a', 'two')");
    let deleted = change(&mut client).await;
    assert_eq!(deleted["operation"], "DELETE");
    assert_eq!(deleted["old"], json!({"k": "a", "v": "one"}));
    let inserted = change(&mut client).await;
    assert_eq!(inserted["operation"], "INSERT");
    assert_eq!(inserted["data"], json!({"k": "a", "v": "two"}));
    // An upsert is an UPDATE, with its old row, whatever the pragma.
    app.db
        .shell("INSERT INTO kv VALUES ('a', 'three') ON CONFLICT (k) DO UPDATE SET v = excluded.v");
    let updated = change(&mut client).await;
    assert_eq!(updated["operation"], "UPDATE");
    assert_eq!(
        (&updated["old"]["v"], &updated["data"]["v"]),
        (&json!("two"), &json!("three"))
    );
}

#[test]
fn a_postgres_test_without_a_server_says_skip_or_fails_when_one_is_required() {
    let run = |require: bool| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "a_postgres_transaction_that_commits_late_is_still_delivered",
            ])
            .env_remove("REALTIDE_TEST_POSTGRES_URL");
        if require {
            command.env("REALTIDE_TEST_REQUIRE_POSTGRESQL", "1");
        } else {
            command.env_remove("REALTIDE_TEST_REQUIRE_POSTGRESQL");
        }
        command.output().unwrap()
    };
    let skipped = run(false);
    assert!(skipped.status.success());
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(
        stderr.contains(
            "SKIP a_postgres_transaction_that_commits_late_is_still_delivered on PostgreSQL"
        ),
        "{stderr}"
    );
    assert!(
        !run(true).status.success(),
        "with a server required, the test fails instead"
    );
}

#[tokio::test]
async fn changes_that_outlived_the_retention_while_realtide_was_down_are_pruned_at_start() {
    for db in TestDb::all() {
        db.execute(ORDERS);
        let retention = |c: &mut realtide::config::Config| c.changes_retention_s = 4;
        let first = TestApp::spawn_on(db, retention).await;
        let mut client = first.client().await;
        let epoch = client.subscribe("orders").await["epoch"].clone();
        first
            .db
            .execute("INSERT INTO orders VALUES ('1', 'Ann', 1, 'pending', 0)");
        let seen = change(&mut client).await["seq"].clone();
        first
            .db
            .execute("INSERT INTO orders VALUES ('2', 'Bob', 2, 'pending', 0)");
        change(&mut client).await;
        client.close().await;
        first.shutdown().await;
        tokio::time::sleep(Duration::from_millis(4500)).await;

        // The first prune comes at start, not a period later: a client
        // resuming at once is told its missed change is gone.
        let second = TestApp::spawn_on(TestDb::shared(&first.db), retention).await;
        let mut back = second.client().await;
        let reply = back
            .request(json!({"type": "subscribe", "topic": "orders", "since": seen, "epoch": epoch}))
            .await;
        assert_eq!(
            reply["recovered"],
            false,
            "{}: {reply}",
            second.db.backend()
        );
    }
}
