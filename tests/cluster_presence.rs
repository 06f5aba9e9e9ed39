//! Presence across several nodes (PROTOCOL.md §8): entries of every node on
//! pub/sub and table topics, a killed node's entries leaving once, and a
//! node cut off from Redis leaving and coming back.

mod common;

use std::time::Duration;

use common::Client;
use common::cluster::{NODE_TIMEOUT_MS, NodeProcess, RedisServer, node, shared_database};
use serde_json::{Value, json};

#[tokio::test]
async fn presence_spans_nodes_and_a_killed_nodes_entries_leave_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    presence_across_nodes(shared_database(), &redis, "room/who").await;
}

#[tokio::test]
async fn presence_on_a_table_topic_spans_nodes_too() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    db.execute("CREATE TABLE dashboard (id BIGINT PRIMARY KEY)");
    presence_across_nodes(db, &redis, "dashboard").await;
}

/// Alice on a node that is killed and on another, bob on a third: bob
/// sees both of alice's entries, then the killed node's leave once.
async fn presence_across_nodes(db: common::TestDb, redis: &RedisServer, topic: &str) {
    let doomed = NodeProcess::start(&db, redis, "doomed").await;
    let (b, c) = (node(&db, redis, "b").await, node(&db, redis, "c").await);
    let track = json!({"type": "track", "topic": topic, "state": {"here": true}});
    let mut alice_1 = Client::connect(&format!("{}?userId=alice", doomed.ws_url())).await;
    alice_1.subscribe(topic).await;
    alice_1.send(track.clone()).await;
    let mut alice_2 = b.client_as("alice").await;
    alice_2.subscribe(topic).await;
    alice_2.send(track.clone()).await;
    let mut bob = c.client_as("bob").await;
    // Both of alice's entries reach bob's node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let admin = format!("/admin/presence?topic={topic}");
    loop {
        let (_, presence) = c.get_json(&admin).await;
        if presence["presences"]["alice"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{presence}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob.subscribe(topic).await;
    let sync = bob.recv().await;
    assert_eq!(sync["event"], "presence:sync", "{sync}");
    assert_eq!(
        sync["data"]["presences"]["alice"].as_array().unwrap().len(),
        2
    );
    let doomed_conn = alice_1.welcome["conn"].clone();

    let mut doomed = doomed;
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    let within = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(5);
    let leave = tokio::time::timeout(within, async {
        loop {
            let frame = bob.recv().await;
            if frame["event"] == "presence:leave" {
                return frame;
            }
        }
    })
    .await
    .expect("a leave within the node timeout plus 5 s");
    assert_eq!(leave["data"]["key"], "alice");
    assert_eq!(leave["data"]["conn"], doomed_conn);
    bob.expect_silence(Duration::from_millis(NODE_TIMEOUT_MS + 500))
        .await;
    let (_, presence) = b.get_json(&admin).await;
    let alice = presence["presences"]["alice"].as_array().unwrap().clone();
    assert_eq!(alice.len(), 1, "alice is still here through node b");
    assert_eq!(alice[0]["conn"], alice_2.welcome["conn"]);
    let (_, nodes) = b.get_json("/admin/nodes").await;
    let names: Vec<_> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].clone())
        .collect();
    assert!(!names.contains(&json!("doomed")), "{nodes}");
    assert!(
        names.contains(&json!("b")) && names.contains(&json!("c")),
        "{nodes}"
    );
}

#[tokio::test]
async fn a_node_cut_off_past_the_timeout_leaves_and_comes_back_when_it_returns() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let frozen = NodeProcess::start(&db, &redis, "frozen").await;
    let watcher_node = node(&db, &redis, "watcher").await;
    let mut ann = Client::connect(&format!("{}?userId=ann", frozen.ws_url())).await;
    ann.subscribe("room/freeze").await;
    ann.request(json!({"type": "track", "topic": "room/freeze", "state": {"s": 1}}))
        .await;
    let mut watcher = watcher_node.client_as("bob").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, presence) = watcher_node
            .get_json("/admin/presence?topic=room/freeze")
            .await;
        if presence["presences"]["ann"].is_array() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{presence}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.subscribe("room/freeze").await;
    assert_eq!(watcher.recv().await["event"], "presence:sync");
    // Frozen: no beats, its connections open.
    frozen.signal(libc::SIGSTOP);
    let within = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(5);
    let leave = tokio::time::timeout(within, next_presence(&mut watcher))
        .await
        .expect("a leave within the node timeout plus 5 s");
    assert_eq!(
        (&leave["event"], &leave["data"]["key"]),
        (&json!("presence:leave"), &json!("ann"))
    );
    frozen.signal(libc::SIGCONT);
    let join = tokio::time::timeout(within, next_presence(&mut watcher))
        .await
        .expect("a join once the node is back");
    assert_eq!(
        (&join["event"], &join["data"]["key"], &join["data"]["state"]),
        (&json!("presence:join"), &json!("ann"), &json!({"s": 1}))
    );
}

/// The next presence event, skipping anything else.
async fn next_presence(client: &mut Client) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("presence:"))
        {
            return frame;
        }
    }
}
