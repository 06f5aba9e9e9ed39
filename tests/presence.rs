//! Presence: who is on a topic, with their state, as joins and leaves.

mod common;

use std::time::Duration;

use common::{Client, Incoming, TestApp};
use serde_json::{Value, json};

async fn next_event(client: &mut Client, name: &str) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["type"], "event", "{frame}");
    assert_eq!(frame["event"], name, "{frame}");
    assert!(
        frame.get("seq").is_none(),
        "presence events carry no seq: {frame}"
    );
    frame
}

/// Tracks and waits for the ack, passing over presence events that arrive
/// first (a tracker sees every join, its own included).
async fn track(client: &mut Client, topic: &str, state: Value) {
    client
        .send(json!({"type": "track", "topic": topic, "state": state, "ref": "t"}))
        .await;
    loop {
        let frame = client.recv().await;
        if frame["ref"] == "t" {
            assert_eq!(frame["type"], "ack", "{frame}");
            return;
        }
        assert!(
            frame["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("presence:")),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn a_track_is_announced_to_everyone_and_a_newcomer_gets_the_sync() {
    let app = TestApp::spawn().await;
    let mut ann = app.client_as("ann").await;
    let mut bob = app.client_as("bob").await;
    ann.subscribe("room/1").await;
    bob.subscribe("room/1").await;
    track(&mut ann, "room/1", json!({"typing": false})).await;
    let ann_conn = ann.welcome["conn"].clone();
    for client in [&mut ann, &mut bob] {
        let join = next_event(client, "presence:join").await;
        assert_eq!(join["topic"], "room/1");
        assert_eq!(
            join["data"],
            json!({"key": "ann", "conn": ann_conn, "state": {"typing": false}})
        );
    }

    let mut carol = app.client_as("carol").await;
    let subscribed = carol.subscribe("room/1").await;
    assert_eq!(subscribed["type"], "subscribed");
    let sync = next_event(&mut carol, "presence:sync").await;
    assert_eq!(
        sync["data"],
        json!({"presences": {"ann": [{"conn": ann_conn, "state": {"typing": false}}]}})
    );
}

#[tokio::test]
async fn no_sync_is_sent_when_nobody_is_present() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.subscribe("quiet/room").await;
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn tracking_again_replaces_the_state() {
    let app = TestApp::spawn().await;
    let mut ann = app.client_as("ann").await;
    ann.subscribe("room/2").await;
    track(&mut ann, "room/2", json!({"typing": false})).await;
    next_event(&mut ann, "presence:join").await;
    track(&mut ann, "room/2", json!({"typing": true})).await;
    let join = next_event(&mut ann, "presence:join").await;
    assert_eq!(join["data"]["state"], json!({"typing": true}));
    let (_, presence) = app.get_json("/admin/presence?topic=room/2").await;
    assert_eq!(presence["presences"]["ann"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn two_tabs_of_one_user_are_two_entries_under_one_key() {
    let app = TestApp::spawn().await;
    let mut tab1 = app.client_as("ann").await;
    let mut tab2 = app.client_as("ann").await;
    let mut watcher = app.client_as("bob").await;
    watcher.subscribe("doc/7").await;
    for tab in [&mut tab1, &mut tab2] {
        tab.subscribe("doc/7").await;
    }
    track(&mut tab1, "doc/7", json!({"cursor": 1})).await;
    next_event(&mut tab1, "presence:join").await;
    track(&mut tab2, "doc/7", json!({"cursor": 2})).await;
    next_event(&mut watcher, "presence:join").await;
    next_event(&mut watcher, "presence:join").await;
    let (_, presence) = app.get_json("/admin/presence?topic=doc/7").await;
    assert_eq!(presence["topic"], "doc/7");
    assert_eq!(presence["presences"]["ann"].as_array().unwrap().len(), 2);
    let (_, topics) = app.get_json("/admin/topics").await;
    assert_eq!(topics[0]["presence"], 2);

    let tab2_conn = tab2.welcome["conn"].clone();
    tab2.close().await;
    let leave = next_event(&mut watcher, "presence:leave").await;
    assert_eq!(
        leave["data"],
        json!({"key": "ann", "conn": tab2_conn, "state": {"cursor": 2}})
    );
    let (_, presence) = app.get_json("/admin/presence?topic=doc/7").await;
    assert_eq!(
        presence["presences"],
        json!({"ann": [{"conn": tab1.welcome["conn"], "state": {"cursor": 1}}]})
    );
}

#[tokio::test]
async fn untrack_and_unsubscribe_both_leave() {
    let app = TestApp::spawn().await;
    let mut ann = app.client_as("ann").await;
    let mut bob = app.client_as("bob").await;
    bob.subscribe("room/3").await;
    ann.subscribe("room/3").await;
    track(&mut ann, "room/3", json!({})).await;
    next_event(&mut bob, "presence:join").await;
    next_event(&mut ann, "presence:join").await;
    let reply = ann
        .request(json!({"type": "untrack", "topic": "room/3"}))
        .await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(
        next_event(&mut bob, "presence:leave").await["data"]["key"],
        "ann"
    );
    next_event(&mut ann, "presence:leave").await;

    track(&mut ann, "room/3", json!({"back": true})).await;
    next_event(&mut bob, "presence:join").await;
    next_event(&mut ann, "presence:join").await;
    ann.request(json!({"type": "unsubscribe", "topic": "room/3"}))
        .await;
    assert_eq!(
        next_event(&mut bob, "presence:leave").await["data"]["state"],
        json!({"back": true})
    );
}

#[tokio::test]
async fn anonymous_connections_are_keyed_by_their_connection_id() {
    let app = TestApp::spawn().await;
    let mut anon = app.client().await;
    anon.subscribe("room/4").await;
    track(&mut anon, "room/4", json!({})).await;
    let join = next_event(&mut anon, "presence:join").await;
    assert_eq!(join["data"]["key"], anon.welcome["conn"]);
}

#[tokio::test]
async fn bad_tracks_are_refused() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let reply = client
        .request(json!({"type": "track", "topic": "room/5", "state": {}}))
        .await;
    assert_eq!(reply["code"], "bad_request", "not subscribed");
    client.subscribe("room/5").await;
    let big = "x".repeat(4100);
    let reply = client
        .request(json!({"type": "track", "topic": "room/5", "state": {"s": big}}))
        .await;
    assert_eq!(reply["code"], "too_large");
    let fits = "x".repeat(4096 - r#"{"s":""}"#.len());
    let reply = client
        .request(json!({"type": "track", "topic": "room/5", "state": {"s": fits}}))
        .await;
    assert_eq!(reply["type"], "ack", "exactly 4096 bytes fits");
    next_event(&mut client, "presence:join").await;
    let reply = client
        .request(json!({"type": "track", "topic": "room/5", "state": "busy"}))
        .await;
    assert_eq!(reply["code"], "bad_request");
}

#[tokio::test]
async fn a_silent_connection_leaves_when_the_idle_timeout_ends_it() {
    let app = TestApp::spawn_with(|c| c.idle_timeout_ms = 600).await;
    let mut silent = app.client_as("ghost").await;
    let mut watcher = app.client_as("bob").await;
    silent.subscribe("room/6").await;
    track(&mut silent, "room/6", json!({})).await;
    watcher.subscribe("room/6").await;
    next_event(&mut watcher, "presence:sync").await;
    // `silent` is never read again, so it answers no pings; `watcher` keeps talking.
    let started = std::time::Instant::now();
    let mut left = None;
    while left.is_none() && started.elapsed() < Duration::from_secs(5) {
        watcher.send(json!({"type": "ping"})).await;
        while let Some(Incoming::Frame(frame)) =
            watcher.next_within(Duration::from_millis(100)).await
        {
            if frame["event"] == "presence:leave" {
                left = Some(frame);
                break;
            }
        }
    }
    assert_eq!(left.expect("a leave")["data"]["key"], "ghost");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "left at the idle timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn many_killed_connections_leave_no_presence_behind() {
    let app = TestApp::spawn().await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut client = app.client_as(&format!("user{}", i % 10)).await;
        client.subscribe("crowd/x").await;
        track(&mut client, "crowd/x", json!({"i": i})).await;
        clients.push(client);
    }
    let (_, presence) = app.get_json("/admin/presence?topic=crowd/x").await;
    let entries: usize = presence["presences"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert_eq!(entries, 40);
    // Dropped without a close frame: the server sees the TCP connections end.
    drop(clients);
    let mut remaining = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, presence) = app.get_json("/admin/presence?topic=crowd/x").await;
        remaining = presence["presences"].as_object().unwrap().len();
        if remaining == 0 {
            break;
        }
    }
    assert_eq!(remaining, 0, "no presence entry outlives its connection");
}

/// Every request is answered, and the last one wins: a client that tracks,
/// untracks, leaves and comes back in one breath ends present with its last
/// state (with several nodes, the requests reach Redis in the order sent).
#[tokio::test]
async fn a_burst_of_presence_requests_is_answered_once_each_and_the_last_wins() {
    let app = TestApp::spawn().await;
    let mut ann = app.client_as("ann").await;
    let mut observer = app.client_as("olga").await;
    for round in 0..20 {
        let topic = format!("flip/{round}");
        let burst = [
            json!({"type": "subscribe", "topic": topic}),
            json!({"type": "track", "topic": topic, "state": {"n": 1}}),
            json!({"type": "untrack", "topic": topic}),
            json!({"type": "track", "topic": topic, "state": {"n": 2}}),
            json!({"type": "unsubscribe", "topic": topic}),
            json!({"type": "subscribe", "topic": topic}),
            json!({"type": "track", "topic": topic, "state": {"n": 3}}),
        ];
        for (n, mut frame) in burst.into_iter().enumerate() {
            frame["ref"] = json!(format!("{round}-{n}"));
            ann.send(frame).await;
        }
        let mut answered = std::collections::BTreeMap::new();
        while answered.len() < 7 {
            let frame = ann.recv().await;
            if let Some(reference) = frame["ref"].as_str() {
                assert_ne!(frame["type"], "error", "{frame}");
                *answered.entry(reference.to_string()).or_insert(0) += 1;
            }
        }
        assert!(answered.values().all(|n| *n == 1), "{answered:?}");
        // Whatever arrives late has to be looked at: a second answer, or the
        // removal of ann's last entry.
        tokio::time::sleep(Duration::from_millis(100)).await;
        observer.subscribe(&topic).await;
        let sync = next_event(&mut observer, "presence:sync").await;
        assert_eq!(
            sync["data"]["presences"]["ann"][0]["state"],
            json!({"n": 3}),
            "round {round}: {sync}"
        );
        while let Some(Incoming::Frame(frame)) = ann.next_within(Duration::from_millis(20)).await {
            assert!(frame.get("ref").is_none(), "answered twice: {frame}");
        }
    }
}
