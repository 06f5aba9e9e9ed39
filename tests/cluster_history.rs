//! Persisted publishes on a cluster node (PROTOCOL.md §8): stored in
//! groups, numbered by the cluster, and never acked before both. A node is
//! killed (SIGKILL) while eight connections keep publishes in flight; every
//! message it acked is in history, under the seq its ack named, read
//! through another node.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Client;
use common::cluster::{NodeProcess, RedisServer, node, shared_database};
use futures_util::SinkExt;
use serde_json::json;

const CONNECTIONS: usize = 8;
const IN_FLIGHT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_a_cluster_node_acked_survives_its_sigkill_with_its_seq() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let doomed =
        NodeProcess::start_with(&db, &redis, "ledger-a", &["--max-publish-rate", "100000"]).await;
    let reader = node(&db, &redis, "ledger-b").await;
    let mut writers = Vec::new();
    for w in 0..CONNECTIONS {
        let url = doomed.ws_url();
        writers.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let mut acked = BTreeMap::new();
            let mut sent = 0;
            // Keeps IN_FLIGHT publishes outstanding until the node dies.
            loop {
                while sent < acked.len() + IN_FLIGHT {
                    let frame = json!({"type": "publish", "topic": "ledger/cluster",
                                       "event": "e", "data": {"w": w, "n": sent},
                                       "persist": true, "ref": sent.to_string()});
                    if client
                        .ws
                        .send(tokio_tungstenite::tungstenite::Message::text(
                            frame.to_string(),
                        ))
                        .await
                        .is_err()
                    {
                        return acked;
                    }
                    sent += 1;
                }
                match client.next_within(Duration::from_secs(5)).await {
                    Some(common::Incoming::Frame(frame)) if frame["type"] == "ack" => {
                        let id = frame["message_id"].as_str().unwrap().to_string();
                        acked.insert(id, frame["seq"].as_u64().unwrap());
                    }
                    Some(common::Incoming::Frame(frame)) => {
                        assert_eq!(frame["code"], "unavailable", "{frame}");
                    }
                    _ => return acked,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.signal(libc::SIGKILL);
    let mut acked = BTreeMap::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() > 100, "only {} acked", acked.len());

    let mut kept = BTreeMap::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = "/api/v1/public/realtime/history?room=ledger/cluster&limit=100".to_string();
        if let Some(id) = &before {
            path.push_str(&format!("&before_id={id}"));
        }
        let (_, body) = reader.get_json(&path).await;
        let page = body["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        for message in &page {
            kept.insert(
                message["id"].as_str().unwrap().to_string(),
                message["seq"].as_u64().unwrap(),
            );
        }
        before = page.last().unwrap()["id"].as_str().map(str::to_owned);
    }
    let wrong: Vec<_> = acked
        .iter()
        .filter(|(id, seq)| kept.get(*id) != Some(seq))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "acked messages lost or under another seq (of {}): {wrong:?}",
        acked.len()
    );
    // No seq twice in history.
    let mut seqs: Vec<u64> = kept.values().copied().collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), kept.len());
    println!("{} acked, {} in history", acked.len(), kept.len());
}
