//! Pub/sub topics: subscribe, publish, echo, spellings, resume, limits.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_published_message_reaches_every_subscriber_with_its_seq() {
    let app = TestApp::spawn().await;
    let mut ann = app.client_as("ann").await;
    let mut bob = app.client_as("bob").await;
    let subscribed = ann.subscribe("chat/general").await;
    assert_eq!(subscribed["topic"], "chat/general");
    assert_eq!(subscribed["seq"], 0);
    assert_eq!(subscribed["recovered"], false);
    assert!(subscribed["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    bob.subscribe("chat/general").await;

    let ack = bob
        .request(
            json!({"type": "publish", "topic": "chat/general", "event": "message",
                        "data": {"text": "hi"}, "id": "m-1"}),
        )
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["id"], "m-1");
    assert!(ack.get("message_id").is_none(), "not persisted");

    let event = ann.recv().await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["topic"], "chat/general");
    assert_eq!(event["event"], "message");
    assert_eq!(event["data"], json!({"text": "hi"}));
    assert_eq!(event["userId"], "bob");
    assert_eq!(event["seq"], 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let timestamp = event["timestamp"].as_i64().unwrap();
    assert!(
        (now - timestamp).abs() < 5_000,
        "timestamp {timestamp} is ms since the epoch"
    );

    // Echo is on by default: the publisher receives its own event too.
    let own = bob.recv().await;
    assert_eq!(own["seq"], 1);
}

#[tokio::test]
async fn seq_rises_by_one_per_event_and_arrives_in_order() {
    let app = TestApp::spawn().await;
    let mut reader = app.client().await;
    let mut writer = app.client().await;
    reader.subscribe("feed/a").await;
    for i in 0..50 {
        writer
            .send(json!({"type": "publish", "topic": "feed/a", "event": "n", "data": i}))
            .await;
    }
    for i in 0..50u64 {
        let event = reader.recv().await;
        assert_eq!(event["seq"], i + 1);
        assert_eq!(event["data"], i);
    }
}

#[tokio::test]
async fn echo_false_keeps_a_publishers_own_messages_away() {
    let app = TestApp::spawn().await;
    let mut quiet = app.client().await;
    let mut other = app.client().await;
    let reply = quiet
        .request(json!({"type": "subscribe", "topic": "room/1", "echo": false}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    other.subscribe("room/1").await;
    let ack = quiet.publish("room/1", "said", json!("mine")).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(other.recv().await["data"], "mine");
    quiet.expect_silence(QUIET).await;

    // Someone else's message still reaches it.
    other.publish("room/1", "said", json!("theirs")).await;
    assert_eq!(quiet.recv().await["data"], "theirs");
}

/// Publishes sent without waiting for acks pile up in the topic and leave in
/// batches: each subscriber still gets each event once, in order, spelled its
/// own way, and a publisher without echo gets only its acks.
#[tokio::test]
async fn a_burst_of_publishes_reaches_everyone_once_in_order() {
    let app = TestApp::spawn().await;
    burst_reaches_everyone_once_in_order(&app, 2).await;
}

/// A topic with many subscribers sends each batch from two threads, taking
/// runs of 32 from either end of its list (enough subscribers here for
/// several runs); nobody may notice.
#[tokio::test]
async fn a_large_topic_sending_from_two_threads_still_delivers_once_in_order() {
    let app = TestApp::spawn_with(|c| c.fanout_split_at = 2).await;
    burst_reaches_everyone_once_in_order(&app, 40).await;
}

async fn burst_reaches_everyone_once_in_order(app: &TestApp, subscribers: usize) {
    const BURST: u64 = 40;
    let mut publisher = app.client().await;
    let reply = publisher
        .request(json!({"type": "subscribe", "topic": "burst/x", "echo": false}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let mut readers = Vec::new();
    for n in 0..subscribers {
        let spelling = if n % 2 == 0 {
            "burst/x/realtide"
        } else {
            "burst/x"
        };
        let mut reader = app.client().await;
        reader.subscribe(spelling).await;
        readers.push((reader, spelling));
    }
    for i in 0..BURST {
        publisher
            .send(json!({"type": "publish", "topic": "burst/x", "event": "n", "data": i, "ref": i}))
            .await;
    }
    for (reader, spelling) in &mut readers {
        for i in 0..BURST {
            let event = reader.recv().await;
            assert_eq!(event["type"], "event");
            assert_eq!(event["topic"], *spelling);
            assert_eq!(
                (event["seq"].clone(), event["data"].clone()),
                (json!(i + 1), json!(i))
            );
        }
    }
    // Nothing more, for anyone: one quiet spell for all readers at once.
    futures_util::future::join_all(
        readers
            .iter_mut()
            .map(|(reader, _)| reader.expect_silence(QUIET)),
    )
    .await;
    for i in 0..BURST {
        let ack = publisher.recv().await;
        assert_eq!(
            (ack["type"].clone(), ack["ref"].clone()),
            (json!("ack"), json!(i))
        );
    }
    publisher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn frames_use_the_spelling_the_client_subscribed_with() {
    let app = TestApp::spawn().await;
    let mut suffixed = app.client().await;
    let mut plain = app.client().await;
    let reply = suffixed.subscribe("chat/general/realtide").await;
    assert_eq!(reply["topic"], "chat/general/realtide");
    plain.subscribe("chat/general").await;
    plain.publish("chat/general", "m", json!(1)).await;
    assert_eq!(suffixed.recv().await["topic"], "chat/general/realtide");
    assert_eq!(plain.recv().await["topic"], "chat/general");
}

#[tokio::test]
async fn two_spellings_on_one_connection_are_one_subscription_using_the_latest() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let mut publisher = app.client().await;
    client.subscribe("chat/general").await;
    client.subscribe("chat/general/realtide").await;
    publisher.publish("chat/general", "m", json!(1)).await;
    let event = client.recv().await;
    assert_eq!(event["topic"], "chat/general/realtide");
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn subscribing_again_replaces_options_and_never_doubles() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.subscribe("a/b").await;
    let reply = client
        .request(json!({"type": "subscribe", "topic": "a/b", "echo": false}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let mut other = app.client().await;
    other.publish("a/b", "e", json!(1)).await;
    assert_eq!(client.recv().await["seq"], 1);
    client.expect_silence(QUIET).await;
    client.publish("a/b", "e", json!(2)).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn after_unsubscribe_nothing_more_arrives() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let mut publisher = app.client().await;
    client.subscribe("news/x").await;
    let reply = client
        .request(json!({"type": "unsubscribe", "topic": "news/x"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
    assert_eq!(reply["topic"], "news/x");
    publisher.publish("news/x", "e", json!(1)).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_client_resuming_with_since_and_epoch_gets_exactly_what_it_missed() {
    let app = TestApp::spawn().await;
    let mut publisher = app.client().await;
    let mut reader = app.client().await;
    let subscribed = reader.subscribe("live/score").await;
    let epoch = subscribed["epoch"].clone();
    publisher.publish("live/score", "goal", json!(1)).await;
    assert_eq!(reader.recv().await["seq"], 1);
    drop(reader);

    for n in 2..=4 {
        publisher.publish("live/score", "goal", json!(n)).await;
    }
    let mut back = app.client().await;
    let reply = back
        .request(json!({"type": "subscribe", "topic": "live/score", "since": 1, "epoch": epoch}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["seq"], 4);
    for n in 2..=4 {
        let event = back.recv().await;
        assert_eq!(event["seq"], n);
        assert_eq!(event["data"], n);
    }
    publisher.publish("live/score", "goal", json!(5)).await;
    assert_eq!(back.recv().await["seq"], 5, "live events follow the replay");
}

#[tokio::test]
async fn resuming_with_another_epoch_or_past_the_ring_is_not_recovered() {
    let app = TestApp::spawn_with(|c| c.replay_size = 3).await;
    let mut publisher = app.client().await;
    let epoch = publisher.subscribe("t/r").await["epoch"].clone();
    for n in 1..=6 {
        publisher.publish("t/r", "e", json!(n)).await;
    }
    let mut client = app.client().await;
    let wrong = client
        .request(json!({"type": "subscribe", "topic": "t/r", "since": 5, "epoch": "not-the-epoch"}))
        .await;
    assert_eq!(wrong["recovered"], false);
    client.expect_silence(QUIET).await;

    let too_old = client
        .request(json!({"type": "subscribe", "topic": "t/r", "since": 1, "epoch": epoch}))
        .await;
    assert_eq!(
        too_old["recovered"], false,
        "seqs 2 and 3 are no longer kept"
    );
    client.expect_silence(QUIET).await;

    let kept = client
        .request(json!({"type": "subscribe", "topic": "t/r", "since": 3, "epoch": epoch}))
        .await;
    assert_eq!(kept["recovered"], true);
    for n in 4..=6 {
        assert_eq!(client.recv().await["seq"], n);
    }
}

#[tokio::test]
async fn a_topic_forgets_its_events_after_the_replay_ttl() {
    let app = TestApp::spawn_with(|c| c.replay_ttl_s = 1).await;
    let mut publisher = app.client().await;
    let epoch = publisher.subscribe("t/ttl").await["epoch"].clone();
    publisher.publish("t/ttl", "e", json!(1)).await;
    publisher.publish("t/ttl", "e", json!(2)).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut client = app.client().await;
    let reply = client
        .request(json!({"type": "subscribe", "topic": "t/ttl", "since": 1, "epoch": epoch}))
        .await;
    assert_eq!(reply["recovered"], false);
}

#[tokio::test]
async fn invalid_and_reserved_topics_are_refused() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    for (topic, code) in [
        ("chat/has space", "bad_request"),
        ("chat//x", "bad_request"),
        ("$sys/x", "forbidden"),
        ("_internal/x", "forbidden"),
        ("_realtide_meta", "forbidden"),
        ("sqlite_master", "forbidden"),
        ("9lives", "bad_request"),
    ] {
        let reply = client
            .request(json!({"type": "subscribe", "topic": topic}))
            .await;
        assert_eq!(reply["type"], "error", "{topic}");
        assert_eq!(reply["code"], code, "{topic}");
        assert_eq!(reply["topic"], topic);
    }
    let long = format!("a/{}", "b".repeat(300));
    let reply = client
        .request(json!({"type": "subscribe", "topic": long}))
        .await;
    assert_eq!(reply["code"], "bad_request");
}

#[tokio::test]
async fn publishing_to_a_table_topic_is_forbidden_and_a_filter_on_pubsub_is_bad() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let reply = client
        .request(json!({"type": "publish", "topic": "orders", "event": "x", "data": 1}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    let reply = client
        .request(json!({"type": "subscribe", "topic": "chat/a", "filter": {"x": 1}}))
        .await;
    assert_eq!(reply["code"], "bad_request");
}

#[tokio::test]
async fn event_names_must_be_1_to_64_characters() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    for event in [String::new(), "e".repeat(65)] {
        let reply = client
            .request(json!({"type": "publish", "topic": "a/b", "event": event, "data": 1}))
            .await;
        assert_eq!(reply["code"], "bad_request");
    }
    let reply = client
        .request(json!({"type": "publish", "topic": "a/b", "event": "e".repeat(64), "data": null}))
        .await;
    assert_eq!(reply["type"], "ack");
}

#[tokio::test]
async fn publishing_past_the_rate_limit_is_refused_and_the_connection_stays() {
    let app = TestApp::spawn_with(|c| c.max_publish_rate = 10).await;
    let mut client = app.client().await;
    let mut reader = app.client().await;
    reader.subscribe("r/l").await;
    for i in 0..40 {
        client
            .send(json!({"type": "publish", "topic": "r/l", "event": "e", "data": i, "ref": i}))
            .await;
    }
    let (mut acks, mut limited) = (0, 0);
    for _ in 0..40 {
        let reply = client.recv().await;
        match reply["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(reply["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A burst of twice the rate goes through (a few more may refill meanwhile).
    assert!((20..=24).contains(&acks), "acks {acks}");
    assert_eq!(acks + limited, 40);
    for _ in 0..acks {
        assert_eq!(reader.recv().await["type"], "event");
    }
    reader.expect_silence(QUIET).await;
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}
