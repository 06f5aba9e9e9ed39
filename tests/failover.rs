//! A cluster whose Redis fails over (PROTOCOL.md §8): two nodes find the
//! master through three Sentinels; the master is killed while clients
//! publish 100 events a second. Publishing works again soon after Sentinel
//! promotes the replica, and no subscriber is left believing it has every
//! event when it does not: each one either received every acked event,
//! once and in order, or was closed with 1012 and resumed with
//! `recovered: false`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{SentinelGroup, sentinel_node, shared_database};
use common::{Client, Incoming, TestApp};
use serde_json::json;

const TOPIC: &str = "chat/failover";

/// What one subscriber saw.
#[derive(Default, Debug)]
struct Seen {
    /// Every event's `(publisher, n)`, in arrival order.
    events: Vec<(u64, u64)>,
    /// Seqs that did not follow on from the one before (one subscription).
    out_of_order: Vec<(u64, u64)>,
    /// Closed with 1012 and resumed; each resume's `recovered`.
    resumes: Vec<bool>,
    /// Closes with any other code.
    other_closes: Vec<Option<u16>>,
}

/// Subscribes on `app`; reads until `stop`, resuming after a 1012.
async fn subscriber(ws_url: String, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut client = Client::connect(&ws_url).await;
    let reply = client.subscribe(TOPIC).await;
    let mut epoch = reply["epoch"].clone();
    let mut last = reply["seq"].as_u64().unwrap();
    while !stop.load(Ordering::Acquire) {
        match client.next_within(Duration::from_millis(100)).await {
            None => continue,
            Some(Incoming::Frame(frame)) => {
                if frame["type"] != "event" {
                    continue;
                }
                let seq = frame["seq"].as_u64().unwrap();
                if seq != last + 1 {
                    seen.out_of_order.push((last, seq));
                }
                last = seq;
                let data = &frame["data"];
                seen.events
                    .push((data["p"].as_u64().unwrap(), data["n"].as_u64().unwrap()));
            }
            Some(Incoming::Closed(Some(1012))) => {
                client = Client::connect(&ws_url).await;
                let reply = client
                    .request(json!({"type": "subscribe", "topic": TOPIC,
                                    "since": last, "epoch": epoch}))
                    .await;
                assert_eq!(reply["type"], "subscribed", "{reply}");
                seen.resumes.push(reply["recovered"] == true);
                epoch = reply["epoch"].clone();
                last = reply["seq"].as_u64().unwrap();
            }
            Some(Incoming::Closed(code)) => {
                seen.other_closes.push(code);
                return seen;
            }
        }
    }
    seen
}

/// What one publisher sent and had acked, and when.
#[derive(Default)]
struct Sent {
    acked: Vec<u64>,
    /// When each publish was answered, and whether with an ack.
    answers: Vec<(Instant, bool)>,
}

/// Publishes `{"p": id, "n": …}` every 20 ms until `stop`.
async fn publisher(ws_url: String, id: u64, stop: Arc<AtomicBool>) -> Sent {
    let mut sent = Sent::default();
    let mut client = Client::connect(&ws_url).await;
    let mut n = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    while !stop.load(Ordering::Acquire) {
        ticks.tick().await;
        n += 1;
        let reply = client
            .ask(json!({"type": "publish", "topic": TOPIC, "event": "m",
                        "data": {"p": id, "n": n}}))
            .await;
        let acked = reply["type"] == "ack";
        if acked {
            sent.acked.push(n);
        } else {
            assert_eq!(reply["code"], "unavailable", "{reply}");
        }
        sent.answers.push((Instant::now(), acked));
    }
    sent
}

async fn wait_until_redis_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, ready) = app.get_json("/readyz").await;
        if ready["redis"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_publishes_leaves_no_subscriber_silently_short() {
    let Some(mut group) = SentinelGroup::start() else {
        return;
    };
    let db = shared_database();
    let nodes = [
        sentinel_node(&db, &group, "fo-a").await,
        sentinel_node(&db, &group, "fo-b").await,
    ];
    for node in &nodes {
        wait_until_redis_ready(node).await;
    }
    let stop_subscribers = Arc::new(AtomicBool::new(false));
    let stop_publishers = Arc::new(AtomicBool::new(false));
    let mut subscribers = Vec::new();
    for node in nodes.iter().chain(nodes.iter()) {
        let (url, stop) = (node.ws_url(""), stop_subscribers.clone());
        subscribers.push(tokio::spawn(subscriber(url, stop)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (url, stop) = (node.ws_url(""), stop_publishers.clone());
            tokio::spawn(publisher(url, i as u64, stop))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old_master = group.master.port;
    group.master.kill();
    let killed = Instant::now();
    let promoted = loop {
        if group.master_port().is_some_and(|port| port != old_master) {
            break Instant::now();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "Sentinel promoted no replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(group.master_port(), Some(group.replica.port));
    // Publishing through the new master for a while.
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop_publishers.store(true, Ordering::Release);
    let mut sent = Vec::new();
    for publisher in publishers {
        sent.push(publisher.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_subscribers.store(true, Ordering::Release);

    // Available again within 5 s of the promotion, on both nodes.
    for (i, sent) in sent.iter().enumerate() {
        let back = sent
            .answers
            .iter()
            .find(|(at, acked)| *acked && *at > promoted)
            .map(|(at, _)| at.duration_since(promoted))
            .expect("publishes succeed after the promotion");
        let failed = sent.answers.iter().filter(|(_, acked)| !acked).count();
        println!(
            "node {i}: {} acked, {failed} refused as unavailable; first ack {back:?} after the \
             promotion ({:?} after the kill)",
            sent.acked.len(),
            promoted.duration_since(killed)
        );
        assert!(back < Duration::from_secs(5), "node {i}: {back:?}");
        assert!(sent.acked.len() > 300, "node {i}: {}", sent.acked.len());
    }
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let seen = subscriber.await.unwrap();
        assert!(seen.other_closes.is_empty(), "subscriber {i}: {seen:?}");
        if !seen.resumes.is_empty() {
            // Told: every resume across the loss says so.
            println!(
                "subscriber {i}: closed with 1012, resumed {:?}",
                seen.resumes
            );
            assert!(seen.resumes.iter().all(|r| !r), "subscriber {i}: {seen:?}");
            continue;
        }
        assert!(seen.out_of_order.is_empty(), "subscriber {i}: {seen:?}");
        let received: BTreeSet<(u64, u64)> = seen.events.iter().copied().collect();
        assert_eq!(
            received.len(),
            seen.events.len(),
            "subscriber {i}: an event twice"
        );
        for (p, sent) in sent.iter().enumerate() {
            let missing: Vec<u64> = sent
                .acked
                .iter()
                .filter(|n| !received.contains(&(p as u64, **n)))
                .copied()
                .collect();
            assert!(
                missing.is_empty(),
                "subscriber {i} lacks acked {missing:?} of publisher {p}"
            );
            let order: Vec<u64> = seen
                .events
                .iter()
                .filter(|(q, _)| *q == p as u64)
                .map(|(_, n)| *n)
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "subscriber {i}: {order:?}"
            );
        }
    }
    for node in &nodes {
        let (_, ready) = node.get_json("/readyz").await;
        assert_eq!(ready["redis"], true, "{ready}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_replica_that_lacks_acked_events_closes_their_subscribers_with_1012() {
    let Some(mut group) = SentinelGroup::start() else {
        return;
    };
    let db = shared_database();
    let (a, b) = (
        sentinel_node(&db, &group, "lost-a").await,
        sentinel_node(&db, &group, "lost-b").await,
    );
    wait_until_redis_ready(&a).await;
    wait_until_redis_ready(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let before = on_a.subscribe(TOPIC).await;
    on_b.subscribe(TOPIC).await;
    let mut publisher = a.client().await;
    let mut publish = async |n: u64| {
        publisher
            .request(json!({"type": "publish", "topic": TOPIC, "event": "m", "data": {"n": n}}))
            .await
    };
    for n in 1..=5 {
        assert_eq!(publish(n).await["type"], "ack");
    }
    // The replica is cut off (and kept off: it cannot authenticate), so
    // what is acked from now on exists only on the master.
    group
        .master
        .cli(&["CONFIG", "SET", "requirepass", "cut-off-the-replica"]);
    let killed = std::process::Command::new("redis-cli")
        .args(["-p", &group.master.port.to_string()])
        .args(["--no-auth-warning", "-a", "cut-off-the-replica"])
        .args(["CLIENT", "KILL", "TYPE", "replica"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&killed.stdout).trim(), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group
        .replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:down")
    {
        assert!(Instant::now() < deadline, "the replica stayed linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = 0;
    for n in 6..=15 {
        let ack = publish(n).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        last = ack["seq"].as_u64().unwrap();
    }
    for subscriber in [&mut on_a, &mut on_b] {
        let mut got = 0;
        while got < 15 {
            if subscriber.recv().await["type"] == "event" {
                got += 1;
            }
        }
    }
    let old_master = group.master.port;
    group.master.kill();
    let killed = Instant::now();
    while group.master_port() == Some(old_master) {
        assert!(killed.elapsed() < Duration::from_secs(30), "no promotion");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The new master lacks seqs 6..15: the topic starts a new epoch, and
    // the subscribers on both nodes are told by a 1012.
    for subscriber in [&mut on_a, &mut on_b] {
        assert_eq!(
            subscriber.closed_code(Duration::from_secs(10)).await,
            Some(1012)
        );
    }
    for node in [&a, &b] {
        let mut back = node.client().await;
        let reply = back
            .request(json!({"type": "subscribe", "topic": TOPIC, "since": last,
                            "epoch": before["epoch"]}))
            .await;
        assert_eq!(reply["recovered"], false, "{reply}");
        assert_ne!(reply["epoch"], before["epoch"], "{reply}");
    }
    let mut publisher = b.client().await;
    let ack = loop {
        let ack = publisher
            .request(json!({"type": "publish", "topic": TOPIC, "event": "m", "data": {"n": 16}}))
            .await;
        if ack["type"] == "ack" {
            break ack;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "{ack}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ack["seq"].as_u64().unwrap() <= 5,
        "a new epoch numbers anew: {ack}"
    );
}
