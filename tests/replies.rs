//! Every request with a `ref` gets exactly one reply, whatever follows it
//! and however fast: a client awaiting a reply never hangs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Client, Incoming, TestApp, TestDb};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

/// Sends every frame in one write.
async fn send_at_once(client: &mut Client, frames: &[Value]) {
    use futures_util::SinkExt;
    for frame in frames {
        client
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    client.ws.flush().await.unwrap();
}

/// Sends every frame in one write, then reads until each `ref` has its
/// reply; returns the replies in arrival order (other frames skipped).
async fn replies_to(client: &mut Client, frames: &[Value]) -> Vec<Value> {
    send_at_once(client, frames).await;
    let mut replies = Vec::new();
    while replies.len() < frames.len() {
        let frame = client.recv().await;
        if frame.get("ref").is_some() {
            replies.push(frame);
        }
    }
    replies
}

#[tokio::test]
async fn a_subscribe_followed_at_once_by_an_unsubscribe_gets_both_replies_in_order() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let replies = replies_to(
        &mut client,
        &[
            json!({"type": "subscribe", "topic": "chat/a", "ref": 1}),
            json!({"type": "unsubscribe", "topic": "chat/a", "ref": 2}),
        ],
    )
    .await;
    assert_eq!(
        (&replies[0]["type"], &replies[0]["ref"]),
        (&json!("subscribed"), &json!(1))
    );
    assert_eq!(
        (&replies[1]["type"], &replies[1]["ref"]),
        (&json!("unsubscribed"), &json!(2))
    );
    app.emit(json!({"topic": "chat/a", "event": "e", "data": 1}))
        .await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn two_subscribes_in_a_row_each_get_their_subscribed() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)");
    let app = TestApp::spawn_on(db, |_| {}).await;
    // A pub/sub topic, and a table nobody watched yet.
    for topic in ["chat/b", "orders"] {
        let mut client = app.client().await;
        let replies = replies_to(
            &mut client,
            &[
                json!({"type": "subscribe", "topic": topic, "ref": "first"}),
                json!({"type": "subscribe", "topic": topic, "ref": "second"}),
            ],
        )
        .await;
        let refs: Vec<_> = replies.iter().map(|r| (&r["type"], &r["ref"])).collect();
        assert_eq!(
            refs,
            [
                (&json!("subscribed"), &json!("first")),
                (&json!("subscribed"), &json!("second"))
            ],
            "{topic}"
        );
        if topic == "orders" {
            app.db.execute("INSERT INTO orders VALUES (1, 'new')");
        } else {
            app.emit(json!({"topic": topic, "event": "e", "data": 1}))
                .await;
        }
        let event = client.recv().await;
        assert!(event["seq"].as_u64().is_some(), "{event}");
        client.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn an_untrack_where_nothing_runs_is_acknowledged() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let reply = client
        .request(json!({"type": "untrack", "topic": "never/started"}))
        .await;
    assert_eq!(reply["type"], "ack");
}

#[tokio::test]
async fn a_refused_resubscribe_keeps_the_earlier_subscription_on_both_sides() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)");
    let app = TestApp::spawn_on(db, |_| {}).await;
    for _ in 0..20 {
        let mut client = app.client().await;
        client.subscribe("orders").await;
        let refused = client
            .request(json!({"type": "subscribe", "topic": "orders", "filter": {"nope": 1}}))
            .await;
        assert_eq!(refused["code"], "bad_request", "{refused}");
        client.close().await;
    }
    let mut client = app.client().await;
    client.subscribe("orders").await;
    let refused = client
        .request(json!({"type": "subscribe", "topic": "orders", "filter": {"nope": 1}}))
        .await;
    assert_eq!(refused["code"], "bad_request");
    app.db.execute("INSERT INTO orders VALUES (1, 'new')");
    let change = client.recv().await;
    assert_eq!(
        change["data"]["status"], "new",
        "the earlier subscription still delivers"
    );
    // The 20 closed connections left nothing behind in the topic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, topics) = app.get_json("/admin/topics").await;
        if topics[0]["subscribers"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phantom subscribers: {topics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = client
        .request(json!({"type": "unsubscribe", "topic": "orders"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn many_clients_firing_mixed_requests_get_exactly_one_reply_each() {
    const CLIENTS: u64 = 8;
    const REQUESTS: usize = 300;
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)");
    let app = TestApp::spawn_on(db, |c| c.max_publish_rate = 10_000).await;
    let topics = ["mix/a", "mix/b", "orders", "mix/c"];
    let mut tasks = Vec::new();
    for seed in 0..CLIENTS {
        let mut client = app.client().await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed + 1);
            let mut sent = Vec::new();
            for n in 0..REQUESTS {
                let topic = topics[rng.below(topics.len() as u64) as usize];
                let reference = format!("{seed}-{n}");
                let frame = match rng.below(8) {
                    0 | 1 => json!({"type": "subscribe", "topic": topic}),
                    2 => json!({"type": "subscribe", "topic": topic, "filter": {"nope": 1}}),
                    3 => json!({"type": "unsubscribe", "topic": topic}),
                    4 => json!({"type": "track", "topic": topic, "state": {"n": n}}),
                    5 => json!({"type": "untrack", "topic": topic}),
                    6 => json!({"type": "publish", "topic": topic, "event": "e", "data": n}),
                    _ => json!({"type": "ping"}),
                };
                let mut frame = frame;
                frame["ref"] = json!(reference);
                sent.push((reference, frame.to_string()));
                client.send(frame).await;
            }
            let mut answered: HashMap<String, usize> = HashMap::new();
            while answered.len() < sent.len() {
                match client.next_within(Duration::from_secs(10)).await {
                    Some(Incoming::Frame(frame)) => {
                        if let Some(reference) = frame["ref"].as_str() {
                            *answered.entry(reference.to_string()).or_default() += 1;
                        }
                    }
                    other => {
                        let unanswered: Vec<_> = sent
                            .iter()
                            .filter(|(reference, _)| !answered.contains_key(reference))
                            .map(|(_, frame)| frame)
                            .collect();
                        panic!(
                            "client {seed}: {} of {} answered, then {other:?}; unanswered: {unanswered:?}",
                            answered.len(),
                            sent.len()
                        )
                    }
                }
            }
            // Late duplicates would arrive now.
            while let Some(Incoming::Frame(frame)) =
                client.next_within(Duration::from_millis(300)).await
            {
                if let Some(reference) = frame["ref"].as_str() {
                    *answered.entry(reference.to_string()).or_default() += 1;
                }
            }
            let twice: Vec<_> = answered.iter().filter(|(_, n)| **n != 1).collect();
            assert!(twice.is_empty(), "client {seed}: answered twice: {twice:?}");
            answered.len()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), REQUESTS);
    }
}

/// A topic acks a turn's publishes together, one write per connection:
/// each publisher still gets every ack once, in its own send order, and
/// ahead of the echo of that publish.
#[tokio::test]
async fn publishers_in_a_burst_get_each_ack_once_in_order_and_before_its_echo() {
    const EACH: usize = 200;
    for db in TestDb::all() {
        let backend = db.backend();
        let app = TestApp::spawn_on(db, |c| c.max_publish_rate = 10_000).await;
        let mut publishers = Vec::new();
        for name in ["ann", "bob", "cy"] {
            let mut client = app.client_as(name).await;
            client.subscribe("burst/acks").await;
            publishers.push(client);
        }
        let frames = |who: usize| -> Vec<Value> {
            (0..EACH)
                .map(|n| {
                    json!({"type": "publish", "topic": "burst/acks", "event": "e",
                           "data": {"who": who, "n": n}, "persist": n % 3 != 0,
                           "ref": format!("{who}-{n}")})
                })
                .collect()
        };
        let sends = publishers.iter_mut().enumerate().map(|(who, client)| {
            let frames = frames(who);
            async move {
                send_at_once(client, &frames).await;
                // Every publisher's frames, in arrival order, until its own
                // acks and all three publishers' events are in.
                let (mut acks, mut events, mut own_echo_before_ack) = (Vec::new(), 0, None);
                while acks.len() < EACH || events < 3 * EACH {
                    let frame = client.recv().await;
                    match frame["type"].as_str() {
                        Some("ack") => acks.push(frame["ref"].as_str().unwrap().to_string()),
                        Some("event") => {
                            events += 1;
                            let data = &frame["data"];
                            if data["who"] == who
                                && data["n"].as_u64().unwrap() as usize >= acks.len()
                            {
                                own_echo_before_ack.get_or_insert(frame.clone());
                            }
                        }
                        _ => panic!("unexpected {frame}"),
                    }
                }
                (acks, own_echo_before_ack)
            }
        });
        for (who, (acks, echo_first)) in futures_util::future::join_all(sends)
            .await
            .into_iter()
            .enumerate()
        {
            let wanted: Vec<String> = (0..EACH).map(|n| format!("{who}-{n}")).collect();
            assert_eq!(
                acks, wanted,
                "{backend}: publisher {who}'s acks, once each, in order"
            );
            assert!(
                echo_first.is_none(),
                "{backend}: an echo came before its ack: {echo_first:?}"
            );
        }
        let stored = app.metric("realtide_messages_stored_total").await;
        assert_eq!(stored, (3 * (EACH - EACH.div_ceil(3))) as f64, "{backend}");
    }
}
