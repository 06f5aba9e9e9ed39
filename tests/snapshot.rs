//! Live tables: `subscribe` with `snapshot: true` sends a table's rows as of
//! the `subscribed` seq, then exactly the changes after it, so a client that
//! keeps the rows by key holds the table, whatever commits meanwhile. On
//! SQLite and (with REALTIDE_TEST_POSTGRES_URL) PostgreSQL, in whichever
//! capture mode the server chose (CI runs these again with triggers).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, TestApp, TestDb};
use serde_json::{Value, json};

const ITEMS: &str =
    "CREATE TABLE items (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, qty INTEGER NOT NULL)";

/// The rows a client holds: the snapshot's, then every change applied by key.
#[derive(Default)]
struct LiveRows {
    rows: BTreeMap<i64, Value>,
    seq: u64,
    seen: Vec<u64>,
}

impl LiveRows {
    /// Reads `subscribed` and every snapshot frame; answers the subscribed frame.
    async fn subscribe(client: &mut Client, request: Value) -> (LiveRows, Value) {
        let subscribed = client.request(request).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        let seq = subscribed["seq"].as_u64().unwrap();
        let mut live = LiveRows {
            seq,
            ..LiveRows::default()
        };
        loop {
            let frame = client.recv().await;
            assert_eq!(frame["type"], "snapshot", "{frame}");
            assert_eq!(frame["seq"], seq, "every page names subscribed's seq");
            assert_eq!(
                frame["ref"], subscribed["ref"],
                "pages carry the subscribe's ref"
            );
            assert_eq!(frame["key"], json!(["id"]));
            for row in frame["rows"].as_array().unwrap() {
                let id = row["id"].as_i64().unwrap();
                assert!(
                    live.rows.keys().next_back().is_none_or(|last| *last < id),
                    "rows come in key order"
                );
                live.rows.insert(id, row.clone());
            }
            if frame["last"] == true {
                return (live, subscribed);
            }
        }
    }

    fn apply(&mut self, change: &Value, filter: impl Fn(&Value) -> bool) {
        let seq = change["seq"].as_u64().unwrap();
        assert!(
            seq > self.seq,
            "a change after the cut: {seq} > {}",
            self.seq
        );
        assert!(!self.seen.contains(&seq), "seq {seq} twice");
        self.seen.push(seq);
        let data = &change["data"];
        let id = data["id"].as_i64().unwrap();
        match change["operation"].as_str().unwrap() {
            "DELETE" => {
                self.rows.remove(&id);
            }
            _ if filter(data) => {
                self.rows.insert(id, data.clone());
            }
            _ => {
                self.rows.remove(&id);
            }
        }
    }
}

/// The table's rows as `SELECT … ORDER BY id` gives them, as JSON.
fn table_rows(db: &TestDb, filter: impl Fn(&Value) -> bool) -> BTreeMap<i64, Value> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Item {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        owner: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        qty: i64,
    }
    let mut conn = realtide::db::connect(&db.url).unwrap();
    diesel::sql_query(
        "SELECT CAST(id AS BIGINT) AS id, owner, CAST(qty AS BIGINT) AS qty FROM items ORDER BY id",
    )
    .load::<Item>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|i| (i.id, json!({"id": i.id, "owner": i.owner, "qty": i.qty})))
    .filter(|(_, row)| filter(row))
    .collect()
}

#[tokio::test]
async fn the_rows_come_in_pages_in_key_order_then_only_later_changes() {
    for db in TestDb::all() {
        let backend = db.backend();
        db.execute(ITEMS);
        for id in 1..=7 {
            db.execute(&format!(
                "INSERT INTO items VALUES ({id}, 'ann', {})",
                id * 10
            ));
        }
        let app = TestApp::spawn_on(db, |c| c.snapshot_page_rows = 3).await;
        let mut client = app.client().await;
        let subscribed = client
            .request(json!({"type": "subscribe", "topic": "items", "snapshot": true, "ref": "s"}))
            .await;
        assert_eq!(subscribed["type"], "subscribed", "{backend}");
        assert_eq!(subscribed["recovered"], false);
        let mut pages = Vec::new();
        for _ in 0..3 {
            pages.push(client.recv().await);
        }
        let sizes: Vec<usize> = pages
            .iter()
            .map(|p| p["rows"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [3, 3, 1], "{backend}: {pages:?}");
        let lasts: Vec<&Value> = pages.iter().map(|p| &p["last"]).collect();
        assert_eq!(lasts, [&json!(false), &json!(false), &json!(true)]);
        assert_eq!(
            pages[0]["rows"][0],
            json!({"id": 1, "owner": "ann", "qty": 10})
        );
        assert_eq!(pages[2]["rows"][0]["id"], 7);
        assert_eq!(pages[0]["topic"], "items");

        app.db.execute("UPDATE items SET qty = 71 WHERE id = 7");
        let change = client.recv().await;
        assert_eq!(change["type"], "db_change", "{backend}: {change}");
        assert_eq!(change["data"]["qty"], 71);
        assert!(change["seq"].as_u64() > subscribed["seq"].as_u64());
    }
}

#[tokio::test]
async fn an_empty_table_gives_one_last_page_and_filters_apply_to_the_rows() {
    for db in TestDb::all() {
        let backend = db.backend();
        db.execute(ITEMS);
        db.execute("CREATE TABLE empty_items (id INTEGER PRIMARY KEY, owner TEXT)");
        db.execute("INSERT INTO items VALUES (1, 'ann', 5), (2, 'bob', 50), (3, 'ann', 500)");
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut client = app.client().await;
        client
            .request(json!({"type": "subscribe", "topic": "empty_items", "snapshot": true}))
            .await;
        let page = client.recv().await;
        assert_eq!(
            (
                page["type"].clone(),
                page["rows"].clone(),
                page["last"].clone()
            ),
            (json!("snapshot"), json!([]), json!(true)),
            "{backend}"
        );
        let (live, _) = LiveRows::subscribe(
            &mut client,
            json!({"type": "subscribe", "topic": "items", "snapshot": true, "ref": 1,
                   "filter": {"owner": "ann", "qty": {"gt": 10}}}),
        )
        .await;
        assert_eq!(
            live.rows.keys().copied().collect::<Vec<_>>(),
            [3],
            "{backend}"
        );
    }
}

#[tokio::test]
async fn what_a_snapshot_cannot_be_is_refused_with_its_reason() {
    for db in TestDb::all() {
        let backend = db.backend();
        db.execute(ITEMS);
        db.execute("CREATE TABLE keyless (owner TEXT, qty INTEGER)");
        db.execute("INSERT INTO items VALUES (1, 'ann', 1), (2, 'ann', 2), (3, 'ann', 3)");
        let app = TestApp::spawn_on(db, |c| c.max_snapshot_rows = 2).await;
        let mut client = app.client().await;
        let too_many = client
            .request(json!({"type": "subscribe", "topic": "items", "snapshot": true, "ref": 1}))
            .await;
        assert_eq!(too_many["code"], "too_large", "{backend}: {too_many}");
        // No subscription was made: a change does not arrive.
        app.db.execute("UPDATE items SET qty = 9 WHERE id = 1");
        client.expect_silence(Duration::from_millis(300)).await;
        // Narrowed, it fits.
        let (live, _) = LiveRows::subscribe(
            &mut client,
            json!({"type": "subscribe", "topic": "items", "snapshot": true, "ref": 2,
                   "filter": {"id": {"lte": 2}}}),
        )
        .await;
        assert_eq!(live.rows.len(), 2);
        let keyless = client
            .request(json!({"type": "subscribe", "topic": "keyless", "snapshot": true, "ref": 3}))
            .await;
        assert_eq!(keyless["code"], "bad_request", "{backend}: {keyless}");
        let pubsub = client
            .request(json!({"type": "subscribe", "topic": "chat/x", "snapshot": true, "ref": 4}))
            .await;
        assert_eq!(pubsub["code"], "bad_request", "{pubsub}");
    }
}

#[tokio::test]
async fn a_resumable_subscribe_gets_the_missed_changes_and_no_snapshot() {
    for db in TestDb::all() {
        let backend = db.backend();
        db.execute(ITEMS);
        db.execute("INSERT INTO items VALUES (1, 'ann', 1)");
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut client = app.client().await;
        let (_, subscribed) = LiveRows::subscribe(
            &mut client,
            json!({"type": "subscribe", "topic": "items", "snapshot": true, "ref": 1}),
        )
        .await;
        let (seq, epoch) = (subscribed["seq"].clone(), subscribed["epoch"].clone());
        client.close().await;
        app.db.execute("UPDATE items SET qty = 2 WHERE id = 1");
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut again = app.client().await;
        let resumed = again
            .request(
                json!({"type": "subscribe", "topic": "items", "snapshot": true,
                            "since": seq, "epoch": epoch, "ref": 2}),
            )
            .await;
        assert_eq!(resumed["recovered"], true, "{backend}: {resumed}");
        let missed = again.recv().await;
        assert_eq!(
            missed["type"], "db_change",
            "no snapshot when resuming works"
        );
        assert_eq!(missed["data"]["qty"], 2);

        // An epoch that is not the topic's cannot resume: the rows come instead.
        let mut stale = app.client().await;
        let (live, subscribed) = LiveRows::subscribe(
            &mut stale,
            json!({"type": "subscribe", "topic": "items", "snapshot": true,
                   "since": seq, "epoch": "another", "ref": 3}),
        )
        .await;
        assert_eq!(subscribed["recovered"], false);
        assert_eq!(live.rows[&1]["qty"], 2, "{backend}");
    }
}

/// Writers change the table at random in single- and multi-row
/// transactions while clients subscribe with `snapshot: true` at random
/// moments, some filtered: when the writers stop, every client's rows equal
/// the table's (its filter applied), no change at or below a client's cut
/// arrived, and no seq twice.
#[tokio::test]
async fn clients_that_subscribe_during_writes_end_equal_to_the_table() {
    for db in TestDb::all() {
        let backend = db.backend();
        db.execute(ITEMS);
        for id in 1..=40 {
            db.execute(&format!("INSERT INTO items VALUES ({id}, 'ann', {id})"));
        }
        let app = TestApp::spawn_on(db, |_| {}).await;
        clients_end_equal_to_the_table(&[&app], &app.db, backend).await;
    }
}

/// The same through a cluster of two nodes sharing the database and Redis:
/// clients alternate between the nodes, and each node makes its own cut.
#[tokio::test]
async fn clients_of_two_nodes_that_subscribe_during_writes_end_equal_to_the_table() {
    let Some(redis) = common::cluster::RedisServer::start() else {
        return;
    };
    let db = common::cluster::shared_database();
    let backend = db.backend();
    db.execute(ITEMS);
    for id in 1..=40 {
        db.execute(&format!("INSERT INTO items VALUES ({id}, 'ann', {id})"));
    }
    let one = common::cluster::node(&db, &redis, "one").await;
    let two = common::cluster::node(&db, &redis, "two").await;
    clients_end_equal_to_the_table(&[&one, &two], &db, backend).await;
}

/// Four writers run while twenty clients (one in three filtered to bob's
/// rows) subscribe with `snapshot: true` on `nodes` in turn; then each
/// client's rows are compared with the table.
async fn clients_end_equal_to_the_table(nodes: &[&TestApp], db: &TestDb, backend: &str) {
    {
        let url = db.url.clone();
        let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let (url, writing) = (url.clone(), writing.clone());
                std::thread::spawn(move || {
                    use diesel::connection::SimpleConnection;
                    let mut conn = realtide::db::connect(&url).unwrap();
                    let mut n = w;
                    while writing.load(std::sync::atomic::Ordering::Relaxed) {
                        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let id = (n >> 33) % 60 + 1;
                        let other = (n >> 40) % 60 + 1;
                        let owner = if n % 3 == 0 { "bob" } else { "ann" };
                        let sql = match n % 5 {
                            0 => format!("DELETE FROM items WHERE id = {id}"),
                            1 => format!(
                                "INSERT INTO items VALUES ({id}, '{owner}', {}) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty", n % 1000
                            ),
                            2 => format!(
                                "BEGIN; UPDATE items SET qty = qty + 1, owner = '{owner}' WHERE id = {id}; \
                                 UPDATE items SET qty = qty + 2 WHERE id = {other}; COMMIT"
                            ),
                            _ => format!("UPDATE items SET qty = qty + 1 WHERE id = {id}"),
                        };
                        // A busy or conflicting write is the writers' own affair.
                        let _ = conn.batch_execute(&sql);
                        if sql.starts_with("BEGIN") {
                            let _ = conn.batch_execute("ROLLBACK");
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();

        let bob = |row: &Value| row["owner"] == "bob";
        let mut clients = Vec::new();
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(15 + (i * 7) % 20)).await;
            let mut client = nodes[i as usize % nodes.len()].client().await;
            let filtered = i % 3 == 0;
            let mut request =
                json!({"type": "subscribe", "topic": "items", "snapshot": true, "ref": i});
            if filtered {
                request["filter"] = json!({"owner": "bob"});
            }
            let (live, _) = LiveRows::subscribe(&mut client, request).await;
            clients.push((client, live, filtered));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        let everything = table_rows(db, |_| true);
        let bobs = table_rows(db, bob);
        // Every change up to the writers' last arrives, then silence; the
        // clients drain side by side.
        let drained = clients
            .into_iter()
            .map(|(mut client, mut live, filtered)| async move {
                while let Some(incoming) = client.next_within(Duration::from_millis(1500)).await {
                    let common::Incoming::Frame(frame) = incoming else {
                        panic!("a client was closed: {incoming:?}");
                    };
                    assert_eq!(frame["type"], "db_change", "{frame}");
                    match filtered {
                        true => live.apply(&frame, bob),
                        false => live.apply(&frame, |_| true),
                    }
                }
                (live, filtered)
            });
        let results = futures_util::future::join_all(drained).await;
        for (n, (live, filtered)) in results.into_iter().enumerate() {
            let expected = if filtered { &bobs } else { &everything };
            assert_eq!(
                &live.rows, expected,
                "{backend}: client {n} (filtered: {filtered})"
            );
        }
    }
}

#[tokio::test]
async fn a_page_rendered_from_the_http_rows_resumes_with_exactly_the_later_changes() {
    for db in TestDb::all() {
        let backend = db.backend();
        db.execute(ITEMS);
        db.execute("INSERT INTO items VALUES (1, 'ann', 1), (2, 'bob', 2), (3, 'ann', 3)");
        let app = TestApp::spawn_on(db, |c| c.max_snapshot_rows = 2).await;
        let filter = urlencode(r#"{"owner":"ann"}"#);
        let (status, answer) = app
            .get_json(&format!("/api/realtime/tables/items?filter={filter}"))
            .await;
        assert_eq!(status, 200, "{backend}: {answer}");
        assert_eq!(answer["topic"], "items");
        assert_eq!(answer["key"], json!(["id"]));
        assert_eq!(
            answer["rows"],
            json!([{"id": 1, "owner": "ann", "qty": 1}, {"id": 3, "owner": "ann", "qty": 3}])
        );
        // Between the page's read and its subscribe, a change commits.
        app.db.execute("UPDATE items SET qty = 30 WHERE id = 3");
        let mut page = app.client().await;
        let resumed = page
            .request(
                json!({"type": "subscribe", "topic": "items", "filter": {"owner": "ann"},
                            "since": answer["seq"], "epoch": answer["epoch"]}),
            )
            .await;
        assert_eq!(resumed["recovered"], true, "{backend}: {resumed}");
        let change = page.recv().await;
        assert_eq!(change["type"], "db_change", "{backend}: {change}");
        assert_eq!(change["data"]["qty"], 30);

        // The socket's limits and rules hold here too.
        let (status, answer) = app.get_json("/api/realtime/tables/items").await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (413, json!("too_large"))
        );
        let (status, _) = app
            .get_json(&format!(
                "/api/realtime/tables/items?filter={}",
                urlencode("[1]")
            ))
            .await;
        assert_eq!(status, 400);
        let (status, _) = app
            .get_json(&format!(
                "/api/realtime/tables/items?filter={}",
                urlencode(r#"{"colour":"red"}"#)
            ))
            .await;
        assert_eq!(status, 400, "an unknown column");
        let (status, _) = app.get_json("/api/realtime/tables/_realtide_changes").await;
        assert_eq!(status, 403);
    }
}

#[tokio::test]
async fn the_http_rows_need_the_sockets_credentials_and_keep_its_forced_filters() {
    let db = TestDb::sqlite();
    db.execute(ITEMS);
    db.execute("INSERT INTO items VALUES (1, 'ann', 1), (2, 'bob', 2)");
    let app = TestApp::spawn_on(db, |c| c.jwt_secret = Some(common::SECRET.into())).await;
    let (status, _) = app.get_json("/api/realtime/tables/items").await;
    assert_eq!(status, 401, "a secret set means a credential is required");
    let bob = common::token_for(
        common::SECRET,
        "bob",
        json!({"realtime": {"subscribe": ["items"], "filters": {"items": {"owner": "bob"}}}}),
    );
    let (status, answer) = app
        .get_json(&format!("/api/realtime/tables/items?token={bob}"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], json!([{"id": 2, "owner": "bob", "qty": 2}]));
    let chat_only = common::token_for(
        common::SECRET,
        "cy",
        json!({"realtime": {"subscribe": ["chat/*"]}}),
    );
    let (status, _) = app
        .get_json(&format!("/api/realtime/tables/items?token={chat_only}"))
        .await;
    assert_eq!(status, 403);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
