//! Message history: persisted publishes and emits, read back newest first,
//! paged without gaps or repeats, on SQLite and (with
//! REALTIDE_TEST_POSTGRES_URL) PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestApp, TestDb};
use serde_json::{Value, json};

#[tokio::test]
async fn a_persisted_publish_is_acked_with_its_id_and_read_back() {
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut ann = app.client_as("ann").await;
        let mut bob = app.client_as("bob").await;
        bob.subscribe("chat/general").await;
        let ack = ann
            .request(
                json!({"type": "publish", "topic": "chat/general", "event": "message",
                            "data": {"text": "hi"}, "persist": true}),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let id = ack["message_id"].as_str().expect("message_id").to_string();
        let event = bob.recv().await;
        assert_eq!(event["message_id"], id.as_str(), "{}", app.db.backend());
        assert_eq!(event["seq"], ack["seq"]);

        let history = ann
            .request(json!({"type": "history", "topic": "chat/general"}))
            .await;
        assert_eq!(history["type"], "history");
        assert_eq!(history["topic"], "chat/general");
        let messages = history["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["room_id"], "chat/general");
        assert_eq!(m["user_id"], "ann");
        assert_eq!(m["event"], "message");
        assert_eq!(m["data"], json!({"text": "hi"}));
        assert_eq!(m["seq"], ack["seq"]);
        assert_eq!(m["created_at"], event["timestamp"]);
    }
}

#[tokio::test]
async fn messages_not_persisted_are_not_in_history() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .request(json!({"type": "publish", "topic": "a/b", "event": "e", "data": 1}))
        .await;
    let ack = client
        .request(
            json!({"type": "publish", "topic": "a/b", "event": "e", "data": 2, "persist": true}),
        )
        .await;
    assert!(ack["message_id"].is_string());
    let history = client
        .request(json!({"type": "history", "topic": "a/b"}))
        .await;
    let data: Vec<&Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, vec![&json!(2)]);
}

#[tokio::test]
async fn emitted_messages_are_persisted_with_a_null_user() {
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |_| {}).await;
        let (status, one) = app
            .emit(json!({"topic": "news/x", "event": "e", "data": 1, "persist": true}))
            .await;
        assert_eq!(status, 200);
        assert!(one["message_id"].is_string(), "{one}");
        let (_, batch) = app
            .emit(json!({"messages": [
                {"topic": "news/x", "event": "e", "data": 2, "persist": true},
                {"topic": "news/x", "event": "e", "data": 3},
            ]}))
            .await;
        assert!(batch["results"][0]["message_id"].is_string());
        assert!(batch["results"][1].get("message_id").is_none());
        let (_, page) = app
            .get_json("/api/v1/public/realtime/history?room=news/x")
            .await;
        let messages = page["messages"].as_array().unwrap();
        assert_eq!(
            messages
                .iter()
                .map(|m| m["data"].clone())
                .collect::<Vec<_>>(),
            vec![json!(2), json!(1)]
        );
        assert_eq!(messages[0]["user_id"], Value::Null);
    }
}

#[tokio::test]
async fn subscribe_with_history_delivers_the_last_n_oldest_first_before_live_events() {
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut writer = app.client().await;
        for n in 1..=5 {
            writer
                .request(json!({"type": "publish", "topic": "room/h", "event": "m", "data": n, "persist": true}))
                .await;
        }
        let mut reader = app.client().await;
        let subscribed = reader
            .request(json!({"type": "subscribe", "topic": "room/h", "history": 3}))
            .await;
        assert_eq!(subscribed["type"], "subscribed");
        for n in 3..=5 {
            let event = reader.recv().await;
            assert_eq!(event["data"], n, "{}", app.db.backend());
            assert!(event["message_id"].is_string());
        }
        writer
            .request(json!({"type": "publish", "topic": "room/h", "event": "m", "data": 6}))
            .await;
        assert_eq!(reader.recv().await["data"], 6);
    }
}

/// Pages through a room `limit` at a time with `before_id`, newest first.
async fn page_all(app: &TestApp, room: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/public/realtime/history?room={room}&limit={limit}");
        if let Some(id) = &before {
            path.push_str(&format!("&before_id={id}"));
        }
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return all;
        }
        before = Some(messages.last().unwrap()["id"].as_str().unwrap().to_string());
        all.extend(messages);
    }
}

#[tokio::test]
async fn paging_a_thousand_messages_sharing_milliseconds_returns_each_once_in_order() {
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |_| {}).await;
        let messages: Vec<Value> = (0..1000)
            .map(|n| json!({"topic": "burst/x", "event": "e", "data": n, "persist": true}))
            .collect();
        let (status, body) = app.emit(json!({"messages": messages})).await;
        assert_eq!(status, 200, "{body}");

        let all = page_all(&app, "burst/x", 100).await;
        assert_eq!(all.len(), 1000, "{}", app.db.backend());
        let data: Vec<i64> = all.iter().map(|m| m["data"].as_i64().unwrap()).collect();
        let expected: Vec<i64> = (0..1000).rev().collect();
        assert_eq!(data, expected, "newest first, none missing, none twice");
        let distinct_ms: BTreeSet<i64> = all
            .iter()
            .map(|m| m["created_at"].as_i64().unwrap())
            .collect();
        assert!(
            distinct_ms.len() < 1000,
            "the test needs messages that share a millisecond"
        );

        // `before` (ms) is strict.
        let newest_ms = all[0]["created_at"].as_i64().unwrap();
        let (_, older) = app
            .get_json(&format!(
                "/api/v1/public/realtime/history?room=burst/x&limit=100&before={newest_ms}"
            ))
            .await;
        assert!(
            older["messages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["created_at"].as_i64().unwrap() < newest_ms)
        );
    }
}

#[tokio::test]
async fn limits_are_clamped_and_bad_ids_refused() {
    let app = TestApp::spawn().await;
    let messages: Vec<Value> = (0..120)
        .map(|n| json!({"topic": "c/x", "event": "e", "data": n, "persist": true}))
        .collect();
    app.emit(json!({"messages": messages})).await;
    let mut client = app.client().await;
    let reply = client
        .request(json!({"type": "history", "topic": "c/x", "limit": 1000}))
        .await;
    assert_eq!(reply["messages"].as_array().unwrap().len(), 100);
    let reply = client
        .request(json!({"type": "history", "topic": "c/x"}))
        .await;
    assert_eq!(
        reply["messages"].as_array().unwrap().len(),
        50,
        "default 50"
    );
    let reply = client
        .request(json!({"type": "history", "topic": "c/x", "limit": 0}))
        .await;
    assert_eq!(reply["messages"].as_array().unwrap().len(), 1);
    let reply = client
        .request(json!({"type": "history", "topic": "c/x", "before_id": "nope"}))
        .await;
    assert_eq!(reply["code"], "bad_request");
    let reply = client
        .request(json!({"type": "history", "topic": "orders"}))
        .await;
    assert_eq!(reply["code"], "bad_request", "tables have no history");
    let (status, _) = app
        .get_json("/api/v1/public/realtime/history?room=c/x&before_id=x1")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn history_is_readable_only_under_the_subscribe_patterns() {
    let app = TestApp::spawn_with(|c| c.jwt_secret = Some(common::SECRET.into())).await;
    app.emit(json!({"topic": "team/a", "event": "e", "data": 1, "persist": true}))
        .await;
    let claims = json!({"realtime": {"subscribe": ["team/b"]}});
    let token = common::token_for(common::SECRET, "ann", claims);
    let mut client = app.client_with_token(&token).await;
    let reply = client
        .request(json!({"type": "history", "topic": "team/a"}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    let (status, body) = app
        .get_json(&format!(
            "/api/v1/public/realtime/history?room=team/a&token={token}"
        ))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let (status, _) = app
        .get_json("/api/v1/public/realtime/history?room=team/a")
        .await;
    assert_eq!(status, 401, "a token is required when a secret is set");
    let response = app
        .http()
        .get(app.url("/api/v1/public/realtime/history?room=team/b"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn admins_read_and_delete_history() {
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |c| c.admin_key = Some("ops".into())).await;
        for n in 0..3 {
            app.emit(json!({"topic": "ops/log", "event": "e", "data": n, "persist": true}))
                .await;
        }
        let get = async |path: String| app.keyed_json(reqwest::Method::GET, &path, "ops").await;
        let page = get("/admin/history?topic=ops/log&limit=2".into()).await;
        assert_eq!(page["topic"], "ops/log");
        let ids: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2);
        let rest = get(format!("/admin/history?topic=ops/log&before_id={}", ids[1])).await;
        assert_eq!(rest["messages"].as_array().unwrap().len(), 1);

        let (status, _) = app.get_json("/admin/history?topic=ops/log").await;
        assert_eq!(status, 401, "the admin key is required");
        let deleted = app
            .keyed_json(
                reqwest::Method::DELETE,
                "/admin/history?topic=ops/log",
                "ops",
            )
            .await;
        assert_eq!(deleted, json!({"ok": true, "deleted": 3}));
        let (_, empty) = app
            .get_json("/api/v1/public/realtime/history?room=ops/log")
            .await;
        assert_eq!(empty["messages"], json!([]));
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_messages_per_topic_and_drops_old_ones() {
    for db in TestDb::all() {
        let app = TestApp::spawn_on(db, |c| {
            c.history_max_messages = 5;
            c.history_max_age_s = 3;
        })
        .await;
        for n in 0..8 {
            app.emit(json!({"topic": "keep/x", "event": "e", "data": n, "persist": true}))
                .await;
        }
        app.emit(json!({"topic": "keep/y", "event": "e", "data": 0, "persist": true}))
            .await;
        // The retention job runs every half maximum age (1.5 s here): wait
        // for it rather than for a fixed time, so a loaded machine is no matter.
        let mut data: Vec<i64> = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (_, page) = app
                .get_json("/api/v1/public/realtime/history?room=keep/x")
                .await;
            data = page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["data"].as_i64().unwrap())
                .collect();
            if data.len() <= 5 {
                break;
            }
        }
        assert_eq!(
            data,
            vec![7, 6, 5, 4, 3],
            "{}: the newest five",
            app.db.backend()
        );
        let (_, other) = app
            .get_json("/api/v1/public/realtime/history?room=keep/y")
            .await;
        assert_eq!(
            other["messages"].as_array().unwrap().len(),
            1,
            "other topics keep theirs"
        );
        let mut aged = Value::Null;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (_, aged) = app
                .get_json("/api/v1/public/realtime/history?room=keep/x")
                .await;
            if aged["messages"] == json!([]) {
                break;
            }
        }
        assert_eq!(aged["messages"], json!([]), "older than the maximum age");
    }
}

#[tokio::test]
async fn before_may_be_a_message_id_on_the_socket_and_over_http() {
    let app = TestApp::spawn().await;
    let messages: Vec<Value> = (0..30)
        .map(|n| json!({"topic": "cursor/x", "event": "e", "data": n, "persist": true}))
        .collect();
    let (status, body) = app.emit(json!({"messages": messages})).await;
    assert_eq!(status, 200, "{body}");
    // Many of these share a millisecond: only an id cursor pages them exactly.
    let mut client = app.client().await;
    let first = client
        .request(json!({"type": "history", "topic": "cursor/x", "limit": 10}))
        .await;
    let last_id = first["messages"][9]["id"].as_str().unwrap().to_string();
    let next = client
        .request(json!({"type": "history", "topic": "cursor/x", "limit": 10, "before": last_id}))
        .await;
    let data: Vec<i64> = next["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_i64().unwrap())
        .collect();
    assert_eq!(
        data,
        (10..20).rev().collect::<Vec<_>>(),
        "the socket's `before` as an id"
    );
    let (status, page) = app
        .get_json(&format!(
            "/api/v1/public/realtime/history?room=cursor/x&limit=10&before={last_id}"
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], next["messages"], "the same over HTTP");
    // A short number is still milliseconds: nothing is older than 1.
    let (_, none) = app
        .get_json("/api/v1/public/realtime/history?room=cursor/x&before=1")
        .await;
    assert_eq!(none["messages"], json!([]));
    let bad = client
        .request(json!({"type": "history", "topic": "cursor/x", "before": "not-an-id"}))
        .await;
    assert_eq!(bad["code"], "bad_request");
}

/// A burst of persisted publishes is stored in groups (fewer commits than
/// messages), each acked once after its commit, in seq order; a subscriber
/// who joins in the middle of the burst gets every event after its
/// `subscribed` seq, once and in order; history holds every acked message.
#[tokio::test]
async fn a_burst_of_persisted_publishes_is_stored_in_groups_acked_in_order_and_kept() {
    const SENT: u64 = 600;
    for db in TestDb::all() {
        let backend = db.backend();
        let app = TestApp::spawn_on(db, |c| c.max_publish_rate = 10_000).await;
        let mut publisher = app.client_as("ann").await;
        let mut late = app.client_as("bob").await;
        for n in 0..SENT {
            let persist = n % 5 != 4;
            publisher
                .send(json!({"type": "publish", "topic": "burst/x", "event": "e",
                             "data": {"n": n}, "persist": persist, "ref": n.to_string()}))
                .await;
            if n == SENT / 2 {
                late.send(json!({"type": "subscribe", "topic": "burst/x", "ref": "s"}))
                    .await;
            }
        }
        let mut acks = Vec::new();
        while acks.len() < SENT as usize {
            let frame = publisher.recv().await;
            if frame["type"] == "ack" {
                acks.push(frame);
            }
        }
        let refs: Vec<u64> = acks
            .iter()
            .map(|a| a["ref"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            refs,
            (0..SENT).collect::<Vec<_>>(),
            "{backend}: acks in send order"
        );
        let seqs: Vec<u64> = acks.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=SENT).collect::<Vec<_>>(),
            "{backend}: seq in send order"
        );

        let subscribed = late.recv().await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        let from = subscribed["seq"].as_u64().unwrap();
        for seq in from + 1..=SENT {
            let event = late.recv().await;
            assert_eq!(
                event["seq"], seq,
                "{backend}: the late subscriber misses nothing"
            );
        }

        let stored = app.metric("realtide_messages_stored_total").await;
        let commits = app.metric("realtide_history_commits_total").await;
        assert_eq!(stored, (SENT - SENT / 5) as f64, "{backend}");
        assert!(
            commits < stored,
            "{backend}: {stored} messages in {commits} commits"
        );
        let mut kept = BTreeSet::new();
        let mut before: Option<String> = None;
        loop {
            let mut query = "room=burst/x&limit=100".to_string();
            if let Some(id) = &before {
                query.push_str(&format!("&before_id={id}"));
            }
            let (status, body) = app
                .get_json(&format!("/api/v1/public/realtime/history?{query}"))
                .await;
            assert_eq!(status, 200, "{body}");
            let page = body["messages"].as_array().unwrap().clone();
            if page.is_empty() {
                break;
            }
            for message in &page {
                kept.insert(message["seq"].as_u64().unwrap());
            }
            before = page.last().unwrap()["id"].as_str().map(str::to_owned);
        }
        let persisted: BTreeSet<u64> = (1..=SENT).filter(|seq| (seq - 1) % 5 != 4).collect();
        assert_eq!(
            kept, persisted,
            "{backend}: every acked persisted message is kept"
        );
    }
}

/// A group larger than one statement holds is stored whole, in one
/// transaction, and every message gets its own id, in order.
#[tokio::test]
async fn storing_a_large_group_answers_every_id_in_order() {
    for db in TestDb::all() {
        let backend = db.backend();
        let app = TestApp::spawn_on(db, |_| {}).await;
        // A connection as realtide's own: its tables first in the search path.
        let mut conn = realtide::db::connect_in(&app.db.url, realtide::db::DEFAULT_SCHEMA).unwrap();
        let messages: Vec<realtide::history::NewMessage> = (1..=1234)
            .map(|seq| realtide::history::NewMessage {
                room_id: "big/group".into(),
                user_id: (seq % 2 == 0).then(|| "ann".to_string()),
                event: "e".into(),
                data: json!({"seq": seq}).to_string(),
                created_at: 1_000 + seq,
                seq,
            })
            .collect();
        let ids = realtide::history::insert_all(&mut conn, &messages).unwrap();
        assert_eq!(ids.len(), messages.len(), "{backend}");
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "{backend}: ids rise with seq");
        let (_, body) = app
            .get_json("/api/v1/public/realtime/history?room=big/group&limit=1")
            .await;
        assert_eq!(
            body["messages"][0]["id"],
            ids.last().unwrap().as_str(),
            "{backend}"
        );
        assert_eq!(body["messages"][0]["seq"], 1234, "{backend}");
    }
}

/// When the database refuses a group, its persisted publishes are answered
/// `unavailable` and never delivered; the others of the group are delivered
/// with seqs that leave no gap (on a cluster node too: the group is refused
/// before the broker numbers anything).
#[tokio::test]
async fn a_group_the_database_refuses_is_refused_and_leaves_no_gap() {
    let app = TestApp::spawn_on(TestDb::sqlite(), |c| c.max_publish_rate = 10_000).await;
    let mut ann = app.client_as("ann").await;
    let mut bob = app.client_as("bob").await;
    bob.subscribe("fail/x").await;
    let first = ann
        .request(json!({"type": "publish", "topic": "fail/x", "event": "e", "data": 0}))
        .await;
    assert_eq!(first["seq"], 1);
    // Someone breaks the history table under the server.
    let messages = app.db.own_table("_realtide_messages");
    app.db
        .execute(&format!("ALTER TABLE {messages} RENAME TO broken_messages"));
    for (n, persist) in [(1, true), (2, false), (3, true), (4, false)] {
        ann.send(
            json!({"type": "publish", "topic": "fail/x", "event": "e", "data": n,
                        "persist": persist, "ref": n.to_string()}),
        )
        .await;
    }
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 4 {
        let frame = ann.recv().await;
        if let Some(reference) = frame["ref"].as_str() {
            answers.insert(reference.to_string(), frame);
        }
    }
    for refused in ["1", "3"] {
        assert_eq!(answers[refused]["type"], "error", "{}", answers[refused]);
        assert_eq!(answers[refused]["code"], "unavailable");
    }
    assert_eq!(answers["2"]["seq"], 2, "{}", answers["2"]);
    assert_eq!(answers["4"]["seq"], 3, "{}", answers["4"]);
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        let event = bob.recv().await;
        delivered.push((event["seq"].clone(), event["data"].clone()));
    }
    assert_eq!(
        delivered,
        vec![
            (json!(1), json!(0)),
            (json!(2), json!(2)),
            (json!(3), json!(4))
        ]
    );
}

/// Many rooms' persisted publishes that wait on the database at once (here
/// behind another program's write lock) are stored together: a few commits
/// for all of them, not one each, and each room keeps its own message.
#[tokio::test]
async fn persisted_publishes_of_many_rooms_waiting_on_the_database_share_commits() {
    use diesel::connection::SimpleConnection;
    const ROOMS: usize = 40;
    for db in TestDb::all() {
        let backend = db.backend();
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut clients = Vec::new();
        for i in 0..ROOMS {
            clients.push(app.client_as(&format!("u{i}")).await);
        }
        let commits_before = app.metric("realtide_history_commits_total").await;

        let mut blocker = realtide::db::connect(&app.db.url).expect("connect");
        let lock = if app.db.is_postgres() {
            format!(
                "BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE",
                app.db.own_table("_realtide_messages")
            )
        } else {
            "BEGIN IMMEDIATE".to_string()
        };
        blocker.batch_execute(&lock).unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            blocker.batch_execute("COMMIT").unwrap();
        });
        for (i, client) in clients.iter_mut().enumerate() {
            client
                .send(
                    json!({"type": "publish", "topic": format!("room/{i}"), "event": "said",
                             "data": {"i": i}, "persist": true, "ref": "p"}),
                )
                .await;
        }
        for client in &mut clients {
            let ack = client.recv().await;
            assert_eq!(ack["type"], "ack", "{backend}: {ack}");
            assert!(ack["message_id"].is_string(), "{backend}: {ack}");
        }
        released.join().unwrap();

        let commits = app.metric("realtide_history_commits_total").await - commits_before;
        assert!(
            commits <= 3.0,
            "{backend}: {ROOMS} rooms' messages took {commits} commits"
        );
        for i in 0..ROOMS {
            let (status, body) = app
                .get_json(&format!("/api/v1/public/realtime/history?room=room/{i}"))
                .await;
            assert_eq!(status, 200, "{body}");
            let data: Vec<Value> = body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["data"].clone())
                .collect();
            assert_eq!(data, vec![json!({"i": i})], "{backend}: room/{i}");
        }
    }
}
