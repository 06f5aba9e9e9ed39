//! How table changes are captured on PostgreSQL: logical decoding where the
//! server allows it (no trigger on the app's tables, nothing held back by a
//! transaction left open), triggers where it does not, and a move from one
//! to the other that loses and repeats nothing. Needs a PostgreSQL with
//! `wal_level = logical` (CI sets it); says SKIP otherwise.

mod common;

use std::time::Duration;

use common::capture::{logical_db, query_flag, query_number, remove_capture};
use common::{Client, TestApp, TestDb, WAIT};
use realtide::config::CaptureMode;
use serde_json::{Value, json};

async fn change(client: &mut Client) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["type"], "db_change", "{frame}");
    frame
}

async fn spawn(db: TestDb, capture: CaptureMode) -> TestApp {
    TestApp::spawn_on(db, |c| c.capture = capture).await
}

/// Where a client was when its server stopped: `items`' epoch and the seq
/// of the one change it saw.
struct Seen {
    epoch: Value,
    seq: Value,
}

/// A client subscribed to `items` sees `(1, value)` inserted; then the
/// server stops.
async fn see_one_change_then_stop(app: &TestApp, value: &str) -> Seen {
    let mut client = app.client().await;
    let epoch = client.subscribe("items").await["epoch"].clone();
    app.db
        .execute(&format!("INSERT INTO items VALUES (1, '{value}')"));
    let seq = change(&mut client).await["seq"].clone();
    client.close().await;
    app.shutdown().await;
    Seen { epoch, seq }
}

/// A client of `app` resuming `items` from `seen`; with the subscribe's reply.
async fn resume(app: &TestApp, seen: &Seen) -> (Client, Value) {
    let mut client = app.client().await;
    let reply = client
        .request(
            json!({"type": "subscribe", "topic": "items", "since": seen.seq, "epoch": seen.epoch}),
        )
        .await;
    (client, reply)
}

#[tokio::test]
async fn with_logical_decoding_the_apps_table_carries_no_trigger_and_a_held_transaction_holds_nothing_back()
 {
    use diesel::connection::SimpleConnection;
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    let app = spawn(db, CaptureMode::Auto).await;
    let (_, capture) = app.get_json("/admin/capture").await;
    assert_eq!(capture["mode"], "logical", "{capture}");
    let slot = capture["slot"].as_str().expect("slot named").to_string();
    let ready = app.http().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.headers()["realtide-capture"], "logical");
    assert_eq!(app.metric("realtide_capture_logical").await, 1.0);

    let mut client = app.client().await;
    client.subscribe("items").await;
    assert!(!query_flag(
        &app.db.url,
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'items'::regclass AND NOT tgisinternal) AS value"
    ));
    assert!(query_flag(
        &app.db.url,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}') AS value"
        )
    ));

    // A transaction left open (in this database or another) delays nothing.
    let mut held = realtide::db::connect(&app.db.url).unwrap();
    held.batch_execute("BEGIN; INSERT INTO items VALUES (1, 'held');")
        .unwrap();
    app.db.execute("INSERT INTO items VALUES (2, 'quick')");
    let quick = change(&mut client).await;
    assert_eq!(quick["data"], json!({"id": 2, "v": "quick"}));
    app.db
        .execute("UPDATE items SET v = 'quicker' WHERE id = 2");
    let update = change(&mut client).await;
    assert_eq!(
        update["old"],
        json!({"id": 2, "v": "quick"}),
        "the whole old row"
    );
    held.batch_execute("COMMIT").unwrap();
    let late = change(&mut client).await;
    assert_eq!(late["data"]["v"], "held");
    assert!(late["seq"].as_u64() > update["seq"].as_u64());
}

/// Every kind of value reads the same whichever way it was captured.
#[tokio::test]
async fn values_of_every_common_type_read_alike_through_triggers_and_logical_decoding() {
    let table = "CREATE TABLE wide (
        id INT PRIMARY KEY, flag BOOLEAN, small SMALLINT, big BIGINT, price NUMERIC(10,2),
        ratio DOUBLE PRECISION, inf REAL, label VARCHAR(20), code CHAR(3), doc JSONB, raw JSON,
        blob BYTEA, day DATE, at TIMESTAMP, at_tz TIMESTAMPTZ, clock TIME, span INTERVAL,
        tags INT[], names TEXT[], uid UUID, cash MONEY, nothing TEXT
    )";
    let row = "INSERT INTO wide VALUES (1, true, -3, 9007199254740993, 12.50, 0.30000000000000004,
        '-Infinity', 'héllo \"q\"', 'ab', '{\"a\": [1, {\"b\": null}]}', '{\"x\" : 1}', '\\x00ff',
        '2026-11-30', '2026-11-30 12:34:56.789', '2026-11-30 12:34:56+05:30', '23:59:59',
        '1 day 02:00:00', '{1,2,3}', '{\"a b\",NULL}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        '12.34', NULL)";
    let mut seen = Vec::new();
    for capture in [CaptureMode::Triggers, CaptureMode::Logical] {
        let Some(db) = logical_db() else { return };
        db.execute(table);
        let app = spawn(db, capture).await;
        let mut client = app.client().await;
        client.subscribe("wide").await;
        app.db.execute(row);
        app.db.execute("UPDATE wide SET flag = false");
        let insert = change(&mut client).await;
        let update = change(&mut client).await;
        seen.push((
            insert["data"].clone(),
            update["old"].clone(),
            update["data"]["flag"].clone(),
        ));
    }
    assert_eq!(
        seen[0], seen[1],
        "triggers (left) and logical decoding (right) agree"
    );
    assert_eq!(seen[1].0["price"], json!(12.5));
    assert_eq!(seen[1].0["tags"], json!([1, 2, 3]));
    assert_eq!(seen[1].0["at_tz"], "2026-11-30T07:04:56+00:00");
}

#[tokio::test]
async fn a_large_value_the_update_did_not_touch_is_still_in_the_new_row() {
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE docs (id INT PRIMARY KEY, status TEXT, body TEXT)");
    // Random text does not compress: it is stored out of line (TOAST), and
    // an UPDATE of another column does not write it to the WAL again.
    db.execute(
        "INSERT INTO docs SELECT 1, 'draft', string_agg(md5(random()::text), '') FROM generate_series(1, 400)",
    );
    let app = spawn(db, CaptureMode::Logical).await;
    let mut client = app.client().await;
    client.subscribe("docs").await;
    app.db.execute("UPDATE docs SET status = 'published'");
    let update = change(&mut client).await;
    let body = update["data"]["body"]
        .as_str()
        .expect("body in the new row");
    assert_eq!(body.len(), 400 * 32);
    assert_eq!(update["old"]["body"], body);
    assert_eq!(update["data"]["status"], "published");
}

#[tokio::test]
async fn moving_from_triggers_to_logical_decoding_loses_and_repeats_nothing() {
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    let first = spawn(db, CaptureMode::Triggers).await;
    let seen = see_one_change_then_stop(&first, "by trigger").await;
    // While no server runs, the trigger still captures.
    first
        .db
        .execute("INSERT INTO items VALUES (2, 'while down')");

    let second = spawn(TestDb::shared(&first.db), CaptureMode::Logical).await;
    let (mut back, reply) = resume(&second, &seen).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(change(&mut back).await["data"]["v"], "while down");
    assert!(!query_flag(
        &second.db.url,
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'items'::regclass AND NOT tgisinternal) AS value"
    ));
    for i in 3..=5 {
        second
            .db
            .execute(&format!("INSERT INTO items VALUES ({i}, 'by slot')"));
    }
    let mut seqs = vec![seen.seq.as_u64().unwrap()];
    for i in 3..=5 {
        let event = change(&mut back).await;
        assert_eq!(event["data"]["id"], i);
        seqs.push(event["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    back.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_restart_reads_the_slot_on_from_where_it_was_and_repeats_nothing() {
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    let first = spawn(db, CaptureMode::Logical).await;
    let seen = see_one_change_then_stop(&first, "a").await;
    first.db.execute("INSERT INTO items VALUES (2, 'b')");
    first.db.execute("UPDATE items SET v = 'c' WHERE id = 1");

    let second = spawn(TestDb::shared(&first.db), CaptureMode::Logical).await;
    let (mut back, _) = resume(&second, &seen).await;
    assert_eq!(change(&mut back).await["data"]["id"], 2);
    assert_eq!(change(&mut back).await["data"]["v"], "c");
    back.expect_silence(Duration::from_millis(500)).await;
}

/// A long transaction reaches clients while the server is still sending
/// it: it is logged in steps. A crash half-way loses and repeats none of it,
/// early in the transaction, after more of it was logged than realtide
/// reads from the slot at once (50,000 changes) when it starts again, or
/// once all of it was logged (PostgreSQL may send it again, whole: here
/// two long transactions), and capture goes on after it.
#[tokio::test]
async fn a_crash_half_way_through_a_long_transaction_loses_and_repeats_none_of_it() {
    crash_during_long_transaction(100_000, None).await;
    crash_during_long_transaction(120_000, Some(55_000)).await;
    crash_during_long_transaction(60_000, Some(60_000)).await;
}

/// A server process, killed when dropped (by a failed assertion too).
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rows` rows updated in one transaction; the server is killed (SIGKILL)
/// once the log holds `kill_at` of its changes (or once a client has the
/// first), then started again, and one more row is inserted. The log ends
/// with every change once.
async fn crash_during_long_transaction(rows: i64, kill_at: Option<i64>) {
    const LOGGED: &str = "SELECT count(*) AS value FROM realtide._realtide_changes";
    const ROWS_LOGGED: &str =
        "SELECT count(DISTINCT new_row::jsonb->>'id') AS value FROM realtide._realtide_changes";
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    db.execute(&format!(
        "INSERT INTO items SELECT i, 'before' FROM generate_series(1, {rows}) i"
    ));
    let addr = format!("127.0.0.1:{}", common::free_port());
    let args = ["--database-url", db.url.as_str(), "--capture", "logical"];
    let mut server = Process(common::serve_binary(&addr, &args).await);
    let mut client = Client::connect(&format!("ws://{addr}/api/realtime")).await;
    client.subscribe("items").await;

    // Two transactions when the crash comes after all of it was logged:
    // both come again, whole, the first no longer the one last stepped.
    if kill_at == Some(rows) {
        db.execute(&format!(
            "UPDATE items SET v = 'after' WHERE id <= {}",
            rows / 2
        ));
        db.execute(&format!(
            "UPDATE items SET v = 'after' WHERE id > {}",
            rows / 2
        ));
    } else {
        db.execute("UPDATE items SET v = 'after'");
    }
    match kill_at {
        None => {
            let first = change(&mut client).await;
            assert_eq!(first["data"]["v"], "after");
        }
        Some(at) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while query_number(&db.url, LOGGED) < at {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{at} changes logged in time"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    server.0.kill().expect("SIGKILL");
    server.0.wait().expect("reaped");
    let logged = query_number(&db.url, LOGGED);
    if kill_at != Some(rows) {
        assert!(
            logged < rows,
            "changes went out before the transaction was logged whole: {logged} of {rows} in the log"
        );
    }

    let _server = Process(common::serve_binary(&addr, &args).await);
    let mut back = Client::connect(&format!("ws://{addr}/api/realtime")).await;
    back.subscribe("items").await;
    // One more commit after the long one: capture goes on past it.
    db.execute("INSERT INTO items VALUES (0, 'after')");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while query_number(&db.url, LOGGED) <= rows && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (
            query_number(&db.url, LOGGED),
            query_number(&db.url, ROWS_LOGGED)
        ),
        (rows + 1, rows + 1),
        "every row's change in the log once ({logged} were at the crash)"
    );
}

#[tokio::test]
async fn the_slot_is_read_while_no_topic_watches_so_it_keeps_no_wal() {
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    // Retention 2 s: the idle read comes with pruning, every second.
    let app = TestApp::spawn_on(db, |c| {
        c.capture = CaptureMode::Logical;
        c.changes_retention_s = 2;
    })
    .await;
    let mut client = app.client().await;
    client.subscribe("items").await;
    client.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.db
        .execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 100) g");
    // Where the WAL was once the rows were in (other tests write WAL too).
    let written = query_number(
        &app.db.url,
        "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint AS value",
    );
    let (_, capture) = app.get_json("/admin/capture").await;
    let slot = capture["slot"].as_str().unwrap().to_string();
    let caught_up = format!(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn >= {written} AND \
         EXISTS (SELECT 1 FROM realtide._realtide_changes WHERE new_row LIKE '%\"id\":100,%') AS value \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !query_flag(&app.db.url, &caught_up) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle slot was not read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn without_the_right_to_replicate_auto_falls_back_to_triggers_and_logical_refuses() {
    let Some(db) = logical_db() else { return };
    let role = format!(
        "rt_plain_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let name = db.url.rsplit('/').next().unwrap().to_string();
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; GRANT ALL ON DATABASE {name} TO {role}; \
         GRANT ALL ON SCHEMA public TO {role}; CREATE TABLE items (id INT PRIMARY KEY); \
         ALTER TABLE items OWNER TO {role}"
    ));
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let config = |capture| realtide::config::Config {
        database_url: url.clone(),
        capture,
        ..realtide::config::Config::default()
    };
    let refused = std::thread::spawn({
        let config = config(CaptureMode::Logical);
        move || {
            actix_rt::System::new().block_on(async move {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                realtide::server::start(listener, config)
                    .err()
                    .map(|e| e.to_string())
            })
        }
    })
    .join()
    .unwrap();
    let refused = refused.expect("--capture logical refuses to start");
    assert!(refused.contains("REPLICATION"), "{refused}");

    let app = TestApp::spawn_on(TestDb::shared(&db), |c| {
        c.database_url = url.clone();
        c.capture = CaptureMode::Auto;
    })
    .await;
    let (_, capture) = app.get_json("/admin/capture").await;
    assert_eq!(capture["mode"], "triggers", "{capture}");
    assert!(capture["reason"].as_str().unwrap().contains("REPLICATION"));
    let mut client = app.client().await;
    client.subscribe("items").await;
    app.db.execute("INSERT INTO items VALUES (7)");
    assert_eq!(change(&mut client).await["data"]["id"], 7);
    drop(app);
    drop(db);
    let _ = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
        .arg(format!("DROP ROLE IF EXISTS {role}"))
        .output();
}

#[tokio::test]
async fn capture_remove_takes_triggers_slot_and_log_out_of_the_database() {
    let mut dbs = vec![(TestDb::sqlite(), CaptureMode::Triggers)];
    dbs.extend(TestDb::postgres().map(|db| (db, CaptureMode::Triggers)));
    dbs.extend(logical_db().map(|db| (db, CaptureMode::Logical)));
    for (db, capture) in dbs {
        let backend = db.backend();
        db.execute(
            "CREATE TABLE items (id INT PRIMARY KEY); CREATE TABLE other (id INT PRIMARY KEY)",
        );
        let app = spawn(db, capture).await;
        let mut client = app.client().await;
        client.subscribe("items").await;
        client.subscribe("other").await;
        app.db
            .execute("INSERT INTO items VALUES (1); INSERT INTO other VALUES (1)");
        change(&mut client).await;
        change(&mut client).await;
        let (_, report) = app.get_json("/admin/capture").await;
        client.close().await;
        app.shutdown().await;
        let url = app.db.url.clone();
        let what = format!("{backend} {capture:?}");

        let one = remove_capture(&url, Some("items"));
        assert!(
            one.contains("items") && !one.contains("other"),
            "{what}: {one}"
        );
        let captured = |table: &str| match (app.db.is_postgres(), capture) {
            (false, _) => format!(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '{table}') AS value"
            ),
            (true, CaptureMode::Logical) => format!(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'realtide' AND tablename = '{table}') AS value"
            ),
            (true, _) => format!(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname LIKE '\\_realtide\\_capture%' AND tgrelid = '{table}'::regclass) AS value"
            ),
        };
        assert!(!query_flag(&url, &captured("items")), "{what}");
        assert!(query_flag(&url, &captured("other")), "{what}");

        let all = remove_capture(&url, None);
        assert!(
            all.contains("change log emptied (2 changes)"),
            "{what}: {all}"
        );
        assert!(!query_flag(&url, &captured("other")), "{what}");
        assert!(!query_flag(
            &url,
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {}) AS value",
                app.db.own_table("_realtide_changes")
            )
        ));
        if capture == CaptureMode::Logical {
            let slot = report["slot"].as_str().unwrap();
            assert!(all.contains(slot), "{all}");
            assert!(!query_flag(
                &url,
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}') AS value"
                )
            ));
        }
        assert_eq!(
            remove_capture(&url, None).trim(),
            "nothing to remove",
            "{what}"
        );
    }
}

/// Triggers on PostgreSQL run once per statement, reading its rows from
/// transition tables; an UPDATE's old and new rows stay paired.
#[tokio::test]
async fn postgres_triggers_capture_a_statement_at_once_and_replace_an_earlier_row_trigger() {
    let Some(db) = TestDb::postgres() else { return };
    db.execute("CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL)");
    db.execute("INSERT INTO items SELECT g, g * 10 FROM generate_series(1, 2000) g");
    let app = spawn(db, CaptureMode::Triggers).await;
    // The row trigger an earlier version installed.
    app.db.execute(
        "CREATE TRIGGER _realtide_capture AFTER INSERT OR UPDATE OR DELETE ON items \
         FOR EACH ROW EXECUTE FUNCTION realtide._realtide_capture()",
    );
    let mut client = app.client().await;
    client.subscribe("items").await;
    assert!(
        query_flag(
            &app.db.url,
            "SELECT count(*) = 3 AND bool_and(tgtype & 1 = 0) AS value FROM pg_trigger \
         WHERE tgrelid = 'items'::regclass AND tgname LIKE '\\_realtide\\_capture%'"
        ),
        "three statement-level triggers, no row trigger"
    );

    app.db
        .execute("UPDATE items SET v = v + 1 WHERE id % 2 = 0; DELETE FROM items WHERE id > 1990");
    let mut last_seq = 0;
    for n in 0..1000 {
        let update = change(&mut client).await;
        assert_eq!(update["operation"], "UPDATE", "{n}: {update}");
        let id = update["data"]["id"].as_i64().unwrap();
        assert_eq!(update["old"]["id"], id, "old and new are one row");
        assert_eq!(update["old"]["v"], id * 10);
        assert_eq!(update["data"]["v"], id * 10 + 1);
        let seq = update["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
    }
    for _ in 0..10 {
        assert_eq!(change(&mut client).await["operation"], "DELETE");
    }
    app.db.execute("INSERT INTO items VALUES (5000, 1)");
    assert_eq!(change(&mut client).await["data"]["id"], 5000);
    client.expect_silence(Duration::from_millis(300)).await;
}

/// realtide keeps its tables (and its migrations record) in a schema of its
/// own, beside an app that uses diesel itself, and moves an earlier
/// version's tables there.
#[tokio::test]
async fn realtides_tables_live_in_their_own_schema_and_an_earlier_layout_moves_there() {
    let Some(db) = TestDb::postgres() else { return };
    // The app's own diesel migrations, in its schema.
    db.execute(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO __diesel_schema_migrations (version) VALUES ('20200101000000'); \
         CREATE TABLE items (id INT PRIMARY KEY, v TEXT)",
    );
    let app = spawn(db, CaptureMode::Triggers).await;
    let url = app.db.url.clone();
    assert!(query_flag(
        &url,
        "SELECT to_regclass('realtide._realtide_changes') IS NOT NULL AS value"
    ));
    assert!(query_flag(
        &url,
        "SELECT to_regclass('public._realtide_changes') IS NULL AS value"
    ));
    assert!(
        query_flag(
            &url,
            "SELECT array_agg(version) = ARRAY['20200101000000']::varchar[] AS value FROM public.__diesel_schema_migrations"
        ),
        "the app's migrations record holds only the app's"
    );
    assert!(query_flag(
        &url,
        "SELECT count(*) >= 4 AS value FROM realtide.__diesel_schema_migrations"
    ));
    let mut client = app.client().await;
    client.subscribe("items").await;
    app.db.execute("INSERT INTO items VALUES (1, 'a')");
    assert_eq!(change(&mut client).await["data"]["id"], 1);

    // An earlier version's layout: everything in the app's schema.
    let Some(old) = TestDb::postgres() else {
        return;
    };
    old.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)");
    let first = TestApp::spawn_on(old, |c| {
        c.capture = CaptureMode::Triggers;
        c.schema = "public".into();
    })
    .await;
    let seen = see_one_change_then_stop(&first, "before").await;
    first
        .db
        .execute("INSERT INTO items VALUES (2, 'while down')");

    let second = spawn(TestDb::shared(&first.db), CaptureMode::Triggers).await;
    let url = second.db.url.clone();
    for table in [
        "_realtide_meta",
        "_realtide_changes",
        "_realtide_messages",
        "__diesel_schema_migrations",
    ] {
        assert!(
            query_flag(
                &url,
                &format!("SELECT to_regclass('public.{table}') IS NULL AS value")
            ),
            "{table} left public"
        );
        assert!(
            query_flag(
                &url,
                &format!("SELECT to_regclass('realtide.{table}') IS NOT NULL AS value")
            ),
            "{table} moved"
        );
    }
    let (mut back, reply) = resume(&second, &seen).await;
    assert_eq!(
        reply["recovered"], true,
        "same epoch, history kept: {reply}"
    );
    assert_eq!(change(&mut back).await["data"]["v"], "while down");
    second.db.execute("INSERT INTO items VALUES (3, 'after')");
    assert_eq!(change(&mut back).await["data"]["v"], "after");
}

/// A table written without pause while its first subscriber arrives: the
/// replication slot is made then, in the middle of the writes, and every
/// change after `subscribed` still arrives, in order.
#[tokio::test]
async fn a_table_busy_while_logical_capture_starts_streams_every_later_change() {
    let Some(db) = logical_db() else { return };
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)");
    db.execute("INSERT INTO items VALUES (1, 0)");
    let app = spawn(db, CaptureMode::Logical).await;
    let url = app.db.url.clone();
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = writing.clone();
    let writer = std::thread::spawn(move || {
        use diesel::connection::SimpleConnection;
        let mut conn = realtide::db::connect(&url).unwrap();
        let mut n = 0;
        while still.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            conn.batch_execute(&format!("UPDATE items SET qty = {n} WHERE id = 1"))
                .unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = app.client().await;
    client.subscribe("items").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let last = writer.join().unwrap();
    // The changes arrive in order, up to the writer's last value.
    let mut previous = 0;
    loop {
        let frame = change(&mut client).await;
        let qty = frame["data"]["qty"].as_i64().unwrap();
        assert!(qty > previous, "{qty} after {previous}");
        previous = qty;
        if qty == last {
            break;
        }
    }
}
