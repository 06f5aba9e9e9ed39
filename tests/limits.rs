//! What one client may hold is bounded: subscriptions and presence entries
//! per connection, live topics per node, and a frame's size, refused from
//! its header before any of it is buffered.

mod common;

use std::time::Duration;

use common::{Incoming, TestApp};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;

#[tokio::test]
async fn a_connection_may_hold_only_so_many_subscriptions() {
    let app = TestApp::spawn_with(|c| c.max_subscriptions_per_connection = 3).await;
    let mut client = app.client().await;
    for topic in ["s/1", "s/2", "s/3"] {
        client.subscribe(topic).await;
    }
    let refused = client
        .request(json!({"type": "subscribe", "topic": "s/4"}))
        .await;
    assert_eq!(refused["code"], "too_large", "{refused}");
    client.subscribe("s/3").await;
    client
        .request(json!({"type": "unsubscribe", "topic": "s/1"}))
        .await;
    client.subscribe("s/4").await;
}

/// Reads past the presence events that follow an acknowledged track or untrack.
async fn skip_presence_events(client: &mut common::Client) {
    while let Some(Incoming::Frame(frame)) = client.next_within(Duration::from_millis(100)).await {
        assert!(
            frame["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("presence:")),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn a_connection_may_track_presence_on_only_so_many_topics() {
    let app = TestApp::spawn_with(|c| c.max_presence_per_connection = 2).await;
    let mut client = app.client().await;
    let mut acks = 0;
    for topic in ["p/1", "p/2", "p/3"] {
        client.subscribe(topic).await;
    }
    for topic in ["p/1", "p/2", "p/3", "p/1"] {
        let reply = client
            .request(json!({"type": "track", "topic": topic, "state": {}}))
            .await;
        match reply["type"].as_str() {
            Some("ack") => acks += 1,
            _ => assert_eq!((topic, &reply["code"]), ("p/3", &json!("too_large"))),
        }
        // Skip the presence:join that follows an ack.
        skip_presence_events(&mut client).await;
    }
    assert_eq!(acks, 3, "p/1 twice (a state change) and p/2");
    let untracked = client
        .request(json!({"type": "untrack", "topic": "p/2"}))
        .await;
    assert_eq!(untracked["type"], "ack");
    skip_presence_events(&mut client).await;
    let reply = client
        .request(json!({"type": "track", "topic": "p/3", "state": {}}))
        .await;
    assert_eq!(reply["type"], "ack");
}

#[tokio::test]
async fn a_node_runs_only_so_many_topics() {
    let app = TestApp::spawn_with(|c| c.max_topics = 2).await;
    let mut client = app.client().await;
    client.subscribe("t/1").await;
    client.subscribe("t/2").await;
    let refused = client
        .request(json!({"type": "subscribe", "topic": "t/3"}))
        .await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let published = client
        .request(json!({"type": "publish", "topic": "t/4", "event": "e", "data": 1}))
        .await;
    assert_eq!(published["code"], "unavailable", "{published}");
    let (status, body) = app
        .emit(json!({"topic": "t/5", "event": "e", "data": 1}))
        .await;
    assert_eq!(status, 503, "{body}");
    // Running topics still work.
    let ack = client.publish("t/1", "e", json!(1)).await;
    assert_eq!(ack["type"], "ack");
}

/// Writes a masked text frame header announcing `len` bytes, then `sent`
/// bytes of its payload, straight onto the socket.
async fn announce(client: &mut common::Client, len: u64, sent: usize) {
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend(std::iter::repeat_n(b' ', sent));
    let MaybeTlsStream::Plain(stream) = client.ws.get_mut() else {
        unreachable!("plain TCP in tests")
    };
    stream.write_all(&frame).await.unwrap();
}

#[tokio::test]
async fn a_frame_announced_too_large_closes_1009_before_its_payload_comes() {
    let app = TestApp::spawn().await;
    for announced in [256 * 1024 * 1024, 1 << 62] {
        let mut client = app.client().await;
        announce(&mut client, announced, 4096).await;
        assert_eq!(
            client.closed_code(Duration::from_secs(5)).await,
            Some(1009),
            "{announced} bytes announced, 4 KiB sent"
        );
    }
    // Frames of the limit's size still pass.
    let mut client = app.client().await;
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}
