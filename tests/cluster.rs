//! Several nodes through Redis (PROTOCOL.md §8), checked as clients see
//! them: one order and the same `seq` on every node, resume on any node,
//! presence that heals when a node dies, and what Redis failures do.
//! PostgreSQL is the shared database when configured.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{NODE_TIMEOUT_MS, NodeProcess, RedisServer, node, shared_database};
use common::{Client, Incoming, TestApp};
use serde_json::{Value, json};

/// Reads `n` events (skipping everything else); their seq -> (event, data).
async fn events(client: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = client.recv().await;
        if frame["type"] == "event" && frame.get("seq").is_some() {
            got.push(frame);
        }
    }
    got
}

#[tokio::test]
async fn publishers_on_two_nodes_and_an_emit_on_a_third_reach_everyone_in_one_order() {
    let Some(redis) = RedisServer::start() else { return };
    let db = shared_database();
    let nodes = [
        node(&db, &redis, "n1").await,
        node(&db, &redis, "n2").await,
        node(&db, &redis, "n3").await,
    ];
    let mut watchers = Vec::new();
    for app in &nodes {
        let mut watcher = app.client().await;
        let subscribed = watcher.subscribe("room/order").await;
        assert_eq!(subscribed["seq"], 0);
        watchers.push(watcher);
    }

    const EACH: usize = 100;
    let mut publishers = Vec::new();
    for (i, app) in nodes[..2].iter().enumerate() {
        let mut publisher = app.client().await;
        // The second publisher does not hear itself (echo: false).
        let echo = i == 0;
        let reply = publisher
            .request(json!({"type": "subscribe", "topic": "room/order", "echo": echo}))
            .await;
        assert_eq!(reply["type"], "subscribed");
        let expected = if echo { 3 * EACH } else { 2 * EACH };
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                publisher
                    .send(json!({"type": "publish", "topic": "room/order", "event": "m",
                                 "data": {"from": i, "n": n}, "ref": n}))
                    .await;
            }
            // Acks and own events, in the order they come.
            let mut acks = BTreeMap::new();
            let mut own = Vec::new();
            while acks.len() < EACH || own.len() < expected {
                let frame = publisher.recv().await;
                match frame["type"].as_str() {
                    Some("ack") => {
                        assert!(
                            own.iter().all(|e: &Value| e["seq"] != frame["seq"]),
                            "the ack comes before its own event"
                        );
                        acks.insert(frame["ref"].as_u64().unwrap(), frame["seq"].as_u64().unwrap());
                    }
                    Some("event") => own.push(frame),
                    _ => panic!("{frame}"),
                }
            }
            (acks, own)
        }));
    }
    let emits: Vec<_> = (0..EACH)
        .map(|n| json!({"topic": "room/order", "event": "m", "data": {"from": 2, "n": n}}))
        .collect();
    let (status, body) = nodes[2].emit(json!({"messages": emits})).await;
    assert_eq!(status, 200, "{body}");
    let total = 3 * EACH;

    let mut maps = Vec::new();
    for watcher in &mut watchers {
        let got = events(watcher, total).await;
        let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "every seq once, in order");
        let map: BTreeMap<u64, Value> = got
            .into_iter()
            .map(|e| (e["seq"].as_u64().unwrap(), e["data"].clone()))
            .collect();
        // Each source's own order holds.
        for from in 0..3 {
            let ns: Vec<u64> = map
                .values()
                .filter(|d| d["from"] == from)
                .map(|d| d["n"].as_u64().unwrap())
                .collect();
            assert_eq!(ns, (0..EACH as u64).collect::<Vec<_>>());
        }
        maps.push(map);
    }
    assert!(maps.windows(2).all(|w| w[0] == w[1]), "one seq -> event map on every node");
    for watcher in &mut watchers {
        watcher.expect_silence(Duration::from_millis(200)).await;
    }
    for (i, publisher) in publishers.into_iter().enumerate() {
        let (acks, own) = publisher.await.unwrap();
        // An ack's seq is its event's seq everywhere.
        for (n, seq) in acks {
            assert_eq!(maps[0][&seq], json!({"from": i, "n": n}));
        }
        let heard_itself = own.iter().any(|e| e["data"]["from"] == i);
        assert_eq!(heard_itself, i == 0, "echo: false holds across nodes");
    }
}
