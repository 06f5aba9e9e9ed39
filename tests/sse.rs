//! Server-sent events (PROTOCOL §11): a client behind a network that
//! refuses WebSocket upgrades, and `curl -N` listening to a table, get
//! everything a WebSocket client gets.

mod common;

use std::time::Duration;

use common::sse::SseClient;
use common::{TestApp, TestDb};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "test-secret-that-is-32-bytes-long";

#[tokio::test]
async fn a_stream_answers_its_posted_requests_on_itself() {
    let app = TestApp::spawn().await;
    let mut ann = SseClient::open(&app, "?userId=ann").await;
    assert_eq!(ann.welcome["userId"], "ann");

    let subscribed = ann
        .request(json!({"type": "subscribe", "topic": "chat/room"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let ack = ann
        .request(json!({"type": "publish", "topic": "chat/room", "event": "msg", "data": {"text": "hi"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = ann.event().await;
    assert!(event.id.is_some(), "an event carries an id to resume from");
    let event = event.json();
    assert_eq!(
        (&event["type"], &event["data"]["text"], &event["userId"]),
        (&json!("event"), &json!("hi"), &json!("ann"))
    );

    // An array is processed in order; each reply comes on the stream.
    let (status, answer) = ann
        .post(&json!([{"type": "ping", "ref": "a"}, {"type": "ping", "ref": "b"}, {"type": "nonsense", "ref": "c"}]))
        .await;
    assert_eq!((status, answer), (202, json!({"ok": true})));
    let refs: Vec<Value> = [ann.frame().await, ann.frame().await, ann.frame().await]
        .iter()
        .map(|f| json!([f["type"], f["ref"]]))
        .collect();
    assert_eq!(
        refs,
        vec![
            json!(["pong", "a"]),
            json!(["pong", "b"]),
            json!(["error", "c"])
        ]
    );

    // A WebSocket client on the same topic sees the stream's publishes.
    let mut bob = app.client_as("bob").await;
    bob.subscribe("chat/room").await;
    ann.request(json!({"type": "publish", "topic": "chat/room", "event": "msg", "data": 2}))
        .await;
    assert_eq!(bob.recv().await["data"], 2);
}

#[tokio::test]
async fn a_post_without_the_streams_secret_is_not_found() {
    let app = TestApp::spawn().await;
    let mut ann = SseClient::open(&app, "").await;
    let ping = json!({"type": "ping", "ref": 1});
    let (status, body) = ann.post_as(&ann.post_url, "wrong", &ping).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let elsewhere = ann
        .post_url
        .replace(ann.welcome["conn"].as_str().unwrap(), "0123");
    let (status, _) = ann.post_as(&elsewhere, &ann.session, &ping).await;
    assert_eq!(status, 404);
    let (status, body) = ann.post(&json!("not a request")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(ann.frame().await["type"], "error", "answered on the stream");
    let response = app
        .http()
        .post(&ann.post_url)
        .header("X-Realtide-Session", &ann.session)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let huge = format!("[{}]", vec![r#"{"type":"ping"}"#; 80_000].join(","));
    let response = app
        .http()
        .post(&ann.post_url)
        .header("X-Realtide-Session", &ann.session)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large", "a JSON error: {body}");
    // Nothing reached the session: the next reply is the next request's.
    assert_eq!(ann.request(ping).await["type"], "pong");
}

#[tokio::test]
async fn curl_listening_to_a_table_gets_each_change_as_it_commits() {
    for db in TestDb::all() {
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)");
        let app = TestApp::spawn_on(db, |_| {}).await;
        let mut curl = SseClient::open(&app, "?subscribe=orders").await;
        let subscribed = curl.frame().await;
        assert_eq!(
            (&subscribed["type"], &subscribed["topic"]),
            (&json!("subscribed"), &json!("orders"))
        );
        app.db
            .shell("INSERT INTO orders (id, status) VALUES (1, 'new')");
        app.db
            .shell("UPDATE orders SET status = 'paid' WHERE id = 1");
        for (operation, status) in [("INSERT", "new"), ("UPDATE", "paid")] {
            let change = curl.frame().await;
            assert_eq!(change["type"], "db_change", "{change}");
            assert_eq!(
                (&change["operation"], &change["data"]["status"]),
                (&json!(operation), &json!(status)),
                "on {}",
                app.db.backend()
            );
        }
    }
}

#[tokio::test]
async fn a_browser_reconnecting_with_last_event_id_resumes_every_subscription() {
    let app = TestApp::spawn().await;
    let query = "?subscribe=news/a&subscribe=news/b";
    let mut reader = SseClient::open(&app, query).await;
    for _ in 0..2 {
        assert_eq!(reader.frame().await["type"], "subscribed");
    }
    let emit = |topic: &str, n: u64| json!({"topic": topic, "event": "n", "data": n});
    for n in 1..=3 {
        app.emit(emit("news/a", n)).await;
        app.emit(emit("news/b", n)).await;
    }
    for _ in 0..6 {
        reader.frame().await;
    }
    let last_id = reader.last_id.clone().expect("events carry ids");
    drop(reader);

    for n in 4..=5 {
        app.emit(emit("news/a", n)).await;
        app.emit(emit("news/b", n)).await;
    }
    let mut again = SseClient::open_on(&app.url(""), query, &[("Last-Event-ID", &last_id)])
        .await
        .unwrap();
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut recovered = 0;
    while seen.len() < 4 {
        let frame = again.frame().await;
        match frame["type"].as_str().unwrap() {
            "subscribed" => {
                assert_eq!(frame["recovered"], true, "{frame}");
                recovered += 1;
            }
            "event" => seen.push((
                frame["topic"].as_str().unwrap().to_string(),
                frame["data"].as_u64().unwrap(),
            )),
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    assert_eq!(recovered, 2);
    seen.sort();
    let missed: Vec<(String, u64)> = ["news/a", "news/b"]
        .iter()
        .flat_map(|t| [(t.to_string(), 4), (t.to_string(), 5)])
        .collect();
    assert_eq!(seen, missed, "exactly the missed events, none twice");
}

#[tokio::test]
async fn refused_credentials_are_answered_as_the_socket_answers_them() {
    let app = TestApp::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let refused = SseClient::open_on(&app.url(""), "", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        (refused.status, &refused.body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let token = common::token_for(SECRET, "ann", json!({}));
    let other_project = format!("?token={token}&projectId=elsewhere");
    let refused = SseClient::open_on(&app.url(""), &other_project, &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 403);
    let ann = SseClient::open(&app, &format!("?token={token}")).await;
    assert_eq!(ann.welcome["userId"], "ann");
}

#[tokio::test]
async fn a_listening_stream_gets_keepalive_comments_and_is_never_idle() {
    let app = TestApp::spawn_with(|c| c.idle_timeout_ms = 300).await;
    let mut curl = SseClient::open(&app, "").await;
    let mut comments = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Some(event) = curl.next_within(until - tokio::time::Instant::now()).await {
        assert!(event.comment.is_some(), "only comments: {event:?}");
        comments += 1;
    }
    assert!(comments >= 2, "a comment every 100 ms, got {comments}");
    assert!(!curl.ended(Duration::from_millis(10)).await, "still open");
    assert_eq!(curl.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn stopping_the_server_ends_each_stream_with_1012() {
    let app = TestApp::spawn().await;
    let mut curl = SseClient::open(&app, "?subscribe=news/a").await;
    curl.frame().await;
    app.shutdown().await;
    let close = curl.event().await;
    assert_eq!(close.kind.as_deref(), Some("close"));
    assert_eq!(close.json()["code"], 1012);
    assert!(curl.ended(Duration::from_secs(5)).await, "the body ends");
}

#[tokio::test]
async fn a_stream_that_stops_reading_is_ended_and_the_others_get_everything() {
    // 16 MiB in all: far more than the kernel's buffers and the limit hold.
    const EVENTS: usize = 2000;
    let app = TestApp::spawn_with(|c| c.max_pending_bytes = 2 * 1024 * 1024).await;
    // A reader with a tiny receive buffer that never reads past its headers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/realtime/sse?subscribe=firehose/x HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        app.addr
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));

    let mut fast = SseClient::open(&app, "?subscribe=firehose/x").await;
    fast.frame().await;
    let reader = tokio::spawn(async move {
        for n in 1..=EVENTS {
            let event = fast.frame().await;
            assert_eq!(event["seq"], n as u64, "in order, none lost");
        }
    });
    let pad = "x".repeat(8 * 1024);
    for batch in 0..EVENTS / 20 {
        let messages: Vec<Value> = (0..20)
            .map(|i| json!({"topic": "firehose/x", "event": "e", "data": {"n": batch * 20 + i, "pad": pad}}))
            .collect();
        let (status, body) = app.emit(json!({"messages": messages})).await;
        assert_eq!(status, 200, "{body}");
    }
    reader.await.unwrap();
    let slow = app.metric("realtide_slow_consumer_closes_total").await;
    assert_eq!(slow, 1.0, "the stalled stream was ended as too slow");
    let (_, connections) = app.get_json("/admin/connections").await;
    let open = connections["connections"].as_array().map_or(0, Vec::len);
    assert_eq!(open, 1, "only the reader's stream is left: {connections}");
}

#[tokio::test]
async fn a_client_that_leaves_ends_its_session() {
    // Keepalive comments every 200 ms: the server writes, and finds out.
    let app = TestApp::spawn_with(|c| c.idle_timeout_ms = 600).await;
    let mut ann = SseClient::open(&app, "?userId=ann").await;
    ann.request(json!({"type": "subscribe", "topic": "room/1"}))
        .await;
    let (url, session) = (ann.post_url.clone(), ann.session.clone());
    let poster = SseClient::open(&app, "").await;
    drop(ann);
    // The server learns at its next write: the keepalive comment at the latest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = poster
            .post_as(&url, &session, &json!({"type": "ping"}))
            .await;
        if status == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the session ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_request_posted_to_another_node_is_answered_on_the_stream() {
    let Some(redis) = common::cluster::RedisServer::start() else {
        return;
    };
    let db = common::cluster::shared_database();
    let n1 = common::cluster::node(&db, &redis, "n1").await;
    let n2 = common::cluster::node(&db, &redis, "n2").await;
    let mut ann = SseClient::open(&n1, "?userId=ann").await;
    let conn = ann.welcome["conn"].as_str().unwrap().to_string();
    let through_n2 = n2.url(&format!("/api/realtime/sse/{conn}"));

    // A load balancer sends each POST anywhere (here: the other node, then
    // the stream's own, in turn): the replies come in order.
    let mut bob = n2.client_as("bob").await;
    bob.subscribe("chat/x").await;
    let requests: Vec<Value> = std::iter::once(
        json!({"type": "subscribe", "topic": "chat/x", "ref": 0}),
    )
    .chain(
        (1..=20).map(
            |n| json!({"type": "publish", "topic": "chat/x", "event": "m", "data": n, "ref": n}),
        ),
    )
    .collect();
    for (i, request) in requests.iter().enumerate() {
        let url = [&through_n2, &ann.post_url][i % 2];
        let (status, body) = ann.post_as(url, &ann.session, request).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut replies = Vec::new();
    while replies.len() < requests.len() {
        let frame = ann.frame().await;
        if frame.get("ref").is_some() {
            replies.push(frame["ref"].as_u64().unwrap());
        }
    }
    assert_eq!(
        replies,
        (0..=20).collect::<Vec<u64>>(),
        "one reply each, in order"
    );
    for n in 1..=20 {
        assert_eq!(bob.recv().await["data"], n);
    }

    let ping = json!({"type": "ping"});
    let (status, _) = ann.post_as(&through_n2, "wrong", &ping).await;
    assert_eq!(status, 404, "a wrong session is refused on every node");
    let unknown = n2.url("/api/realtime/sse/0123456789abcdef0123456789abcdef");
    assert_eq!(ann.post_as(&unknown, &ann.session, &ping).await.0, 404);

    let session = ann.session.clone();
    let poster = SseClient::open(&n2, "").await;
    n1.shutdown().await;
    assert!(ann.ended(Duration::from_secs(5)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while poster.post_as(&through_n2, &session, &ping).await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an ended stream is not found through another node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_streams_token_expires_as_a_sockets_does_unless_refreshed_by_a_post() {
    let app = TestApp::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let short = realtide::auth::token::sign(
        SECRET,
        "ann",
        Duration::from_secs(2),
        serde_json::Map::new(),
    )
    .unwrap();
    let mut expiring = SseClient::open(&app, &format!("?token={short}")).await;
    let mut refreshed = SseClient::open(&app, &format!("?token={short}")).await;
    let fresh = common::token_for(SECRET, "ann", json!({}));
    let ack = refreshed
        .request(json!({"type": "auth", "token": fresh}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let error = expiring.frame().await;
    assert_eq!(
        (&error["type"], &error["code"]),
        (&json!("error"), &json!("unauthorized"))
    );
    let close = expiring.event().await;
    assert_eq!(close.kind.as_deref(), Some("close"));
    assert_eq!(close.json()["code"], 4001);
    assert!(expiring.ended(Duration::from_secs(5)).await);

    assert_eq!(
        refreshed.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}
