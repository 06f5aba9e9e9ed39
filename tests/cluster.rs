//! Several nodes through Redis (PROTOCOL.md §8), checked as clients see
//! them: one order and the same `seq` on every node, resume on any node,
//! token streams and table changes on every node, and what Redis failures
//! do (presence: `cluster_presence.rs`).
//! PostgreSQL is the shared database when configured.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{NodeProcess, RedisServer, node, shared_database};
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
    let Some(redis) = RedisServer::start() else {
        return;
    };
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
    let mut subscribed = Vec::new();
    for (i, app) in nodes[..2].iter().enumerate() {
        let mut publisher = app.client().await;
        // The second publisher does not hear itself (echo: false).
        let echo = i == 0;
        let reply = publisher
            .request(json!({"type": "subscribe", "topic": "room/order", "echo": echo}))
            .await;
        assert_eq!(reply["type"], "subscribed");
        subscribed.push((i, publisher, if echo { 3 * EACH } else { 2 * EACH }));
    }
    let mut publishers = Vec::new();
    for (i, mut publisher, expected) in subscribed {
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                publisher
                    .send(
                        json!({"type": "publish", "topic": "room/order", "event": "m",
                                 "data": {"from": i, "n": n}, "ref": n}),
                    )
                    .await;
            }
            // Acks and own events, in the order they come.
            let mut acks = BTreeMap::new();
            let mut own = Vec::new();
            while acks.len() < EACH || own.len() < expected {
                let Some(Incoming::Frame(frame)) =
                    publisher.next_within(Duration::from_secs(10)).await
                else {
                    panic!(
                        "publisher {i}: {} acks, {} of {expected} events",
                        acks.len(),
                        own.len()
                    );
                };
                match frame["type"].as_str() {
                    Some("ack") => {
                        assert!(
                            own.iter().all(|e: &Value| e["seq"] != frame["seq"]),
                            "the ack comes before its own event"
                        );
                        acks.insert(
                            frame["ref"].as_u64().unwrap(),
                            frame["seq"].as_u64().unwrap(),
                        );
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
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "every seq once, in order"
        );
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
    assert!(
        maps.windows(2).all(|w| w[0] == w[1]),
        "one seq -> event map on every node"
    );
    let (_, topics) = nodes[1].get_json("/admin/topics").await;
    assert_eq!(topics[0]["node"], "n2", "{topics}");
    assert_eq!(topics[0]["seq"], total as u64);
    assert_eq!(
        nodes[1].metric("realtide_node_info{node=\"n2\"}").await,
        1.0
    );
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

#[tokio::test]
async fn a_client_resumes_on_another_node_after_its_node_is_killed() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let doomed = NodeProcess::start(&db, &redis, "doomed").await;
    let (b, c) = (node(&db, &redis, "b").await, node(&db, &redis, "c").await);
    let mut client = Client::connect(&doomed.ws_url()).await;
    assert_eq!(client.welcome["node"], "doomed");
    client.subscribe("room/resume").await;
    let mut publisher = b.client().await;
    for n in 0..10 {
        publisher.publish("room/resume", "m", json!(n)).await;
    }
    let seen = events(&mut client, 10).await;
    let (since, epoch) = (seen[9]["seq"].as_u64().unwrap(), seen[9]["epoch"].clone());
    assert!(epoch.is_null(), "the epoch is in subscribed, not in events");
    let epoch = client.subscribe("room/resume").await["epoch"].clone();

    let mut doomed = doomed;
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    for n in 10..60 {
        publisher.publish("room/resume", "m", json!(n)).await;
    }
    let mut back = c.client().await;
    let reply = back
        .request(
            json!({"type": "subscribe", "topic": "room/resume", "since": since, "epoch": epoch}),
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch);
    let missed = events(&mut back, 50).await;
    let got: Vec<_> = missed.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(got, (10..60).map(|n| json!(n)).collect::<Vec<_>>());
    publisher.publish("room/resume", "m", json!("live")).await;
    assert_eq!(events(&mut back, 1).await[0]["data"], "live");
    back.expect_silence(Duration::from_millis(200)).await;

    // Past the replay window (a node started with --replay-size 5), not recovered.
    let small = {
        let url = redis.url();
        TestApp::spawn_on(common::TestDb::shared(&db), move |c| {
            c.redis_url = Some(url);
            c.redis_prefix = None;
            c.replay_size = 5;
        })
        .await
    };
    let mut p = small.client().await;
    for n in 0..200 {
        p.publish("room/short", "m", json!(n)).await;
    }
    let mut late = c.client().await;
    let first = late.subscribe("room/short").await;
    let reply = late
        .request(json!({"type": "subscribe", "topic": "room/short", "since": 1, "epoch": first["epoch"]}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
}

#[tokio::test]
async fn a_token_stream_started_on_one_node_is_joined_midway_on_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let (a, b) = (node(&db, &redis, "a").await, node(&db, &redis, "b").await);
    let mut early = a.client().await;
    early.subscribe("ai/answer").await;
    let (sender, body) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    let url = a.url("/api/realtime/stream?topic=ai/answer");
    let stream = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(reqwest::Body::wrap_stream(tokio_stream_of(body)))
            .send()
            .await
            .unwrap()
            .status()
    });
    for n in 0..3 {
        sender.send(Ok(format!("\"t{n}\"\n"))).await.unwrap();
    }
    events(&mut early, 3).await;
    let mut late = b.client().await;
    late.subscribe("ai/answer").await;
    for n in 3..5 {
        sender.send(Ok(format!("\"t{n}\"\n"))).await.unwrap();
    }
    drop(sender);
    assert_eq!(stream.await.unwrap(), 200);
    let got = events(&mut late, 6).await;
    let tokens: Vec<_> = got[..5]
        .iter()
        .map(|e| e["data"]["token"].clone())
        .collect();
    assert_eq!(
        tokens,
        (0..5).map(|n| json!(format!("t{n}"))).collect::<Vec<_>>()
    );
    assert_eq!(got[5]["event"], "ai:done");
    late.expect_silence(Duration::from_millis(200)).await;
}

/// The receiving half of a channel as a stream, for a streaming request body.
fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn every_node_delivers_a_table_change_with_the_same_seq_and_epoch() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    db.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY, status TEXT)");
    let (a, b) = (node(&db, &redis, "a").await, node(&db, &redis, "b").await);
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let sa = on_a.subscribe("orders").await;
    let sb = on_b.subscribe("orders").await;
    assert_eq!(sa["epoch"], sb["epoch"]);
    db.execute("INSERT INTO orders VALUES (1, 'new')");
    let (ca, cb) = (on_a.recv().await, on_b.recv().await);
    assert_eq!(ca["seq"], cb["seq"]);
    assert_eq!(ca["data"], cb["data"]);
}

#[tokio::test]
async fn with_redis_gone_pubsub_is_unavailable_tables_still_work_and_a_fresh_redis_means_1012() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    db.execute("CREATE TABLE items (id BIGINT PRIMARY KEY)");
    let (a, b) = (node(&db, &redis, "a").await, node(&db, &redis, "b").await);
    let mut listener = a.client().await;
    let before = listener.subscribe("room/outage").await;
    let mut table_only = a.client().await;
    table_only.subscribe("items").await;
    let mut publisher = b.client().await;
    publisher.publish("room/outage", "m", json!(1)).await;
    events(&mut listener, 1).await;

    redis.kill();
    // Within 5 s, what needs Redis is refused, and not applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = publisher
            .request(json!({"type": "publish", "topic": "room/outage", "event": "m", "data": 2}))
            .await;
        if reply["code"] == "unavailable" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{reply}");
    }
    let (status, _) = b
        .emit(json!({"topic": "room/outage", "event": "m", "data": 3}))
        .await;
    assert_eq!(status, 503);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, ready) = a.get_json("/readyz").await;
        assert_eq!((status, &ready["database"]), (200, &json!(true)));
        if ready["redis"] == false {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.execute("INSERT INTO items VALUES (1)");
    let change = table_only.recv().await;
    assert_eq!(change["type"], "db_change", "table topics keep working");

    redis.restart();
    // The topic lost its past: its subscribers close with 1012 (within 10 s),
    // the table-only connection stays.
    assert_eq!(
        listener.closed_code(Duration::from_secs(10)).await,
        Some(1012)
    );
    table_only.expect_silence(Duration::from_millis(300)).await;
    let mut back = a.client().await;
    let reply = back
        .request(json!({"type": "subscribe", "topic": "room/outage", "since": before["seq"].as_u64().unwrap() + 1,
                        "epoch": before["epoch"]}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], before["epoch"]);
    let ack = loop {
        let ack = publisher
            .request(json!({"type": "publish", "topic": "room/outage", "event": "m", "data": 4}))
            .await;
        if ack["type"] == "ack" {
            break ack;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ack["seq"], 1, "a new epoch starts again");
    let event = events(&mut back, 1).await;
    assert_eq!(event[0]["data"], 4);
}

#[tokio::test]
async fn dropped_or_stalled_redis_links_lose_no_acked_event_and_duplicate_none() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let (a, b) = (node(&db, &redis, "a").await, node(&db, &redis, "b").await);
    let mut listener = a.client().await;
    listener.subscribe("room/kill").await;
    let mut publisher = b.client().await;
    publisher.subscribe("room/kill").await;
    const N: u64 = 300;
    let sending = tokio::spawn(async move {
        let mut acked = Vec::new();
        for n in 0..N {
            publisher
                .send(json!({"type": "publish", "topic": "room/kill", "event": "m", "data": n, "ref": n}))
                .await;
            // Its own events may come between; the reply is the frame with the ref.
            let reply = loop {
                let frame = publisher.recv().await;
                if frame["ref"] == n {
                    break frame;
                }
            };
            match reply["type"].as_str() {
                Some("ack") => acked.push(n),
                _ => eprintln!("publish {n}: {reply}"),
            }
        }
        acked
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    // And a stall: every client of Redis waits a second.
    redis.cli(&["CLIENT", "PAUSE", "1000", "ALL"]);
    let acked = sending.await.unwrap();
    assert_eq!(
        acked.len() as u64,
        N,
        "a dropped pub/sub link refuses no publish"
    );
    let mut got = Vec::new();
    while let Some(Incoming::Frame(frame)) = listener.next_within(Duration::from_secs(3)).await {
        got.push((
            frame["seq"].as_u64().unwrap(),
            frame["data"].as_u64().unwrap(),
        ));
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, none twice");
    let data: Vec<u64> = got.iter().map(|(_, d)| *d).collect();
    for n in &acked {
        assert!(data.contains(n), "acked event {n} was not delivered");
    }
}

#[tokio::test]
async fn a_node_stopped_with_sigterm_under_load_closes_1012_and_clients_resume_elsewhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let leaving = NodeProcess::start(&db, &redis, "leaving").await;
    let other = node(&db, &redis, "other").await;
    let mut client = Client::connect(&leaving.ws_url()).await;
    let subscribed = client.subscribe("room/term").await;
    // Publishing goes on, from the other node, all through the stop.
    const TOTAL: u64 = 400;
    let mut publisher = other.client().await;
    let publishing = tokio::spawn(async move {
        for n in 1..=TOTAL {
            publisher.publish("room/term", "m", json!(n)).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut last = 0;
    while last < 50 {
        let frame = client.recv().await;
        last = frame["seq"].as_u64().unwrap_or(last);
    }
    leaving.signal(libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_within(left).await {
            Some(Incoming::Frame(frame)) => {
                let seq = frame["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1, "in order until the close");
                last = seq;
            }
            Some(Incoming::Closed(code)) => break code,
            None => panic!("no close within 10 s"),
        }
    };
    assert_eq!(code, Some(1012));
    publishing.await.unwrap();
    let mut back = other.client().await;
    let reply = back
        .request(json!({"type": "subscribe", "topic": "room/term", "since": last, "epoch": subscribed["epoch"]}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let missed = events(&mut back, (TOTAL - last) as usize).await;
    let data: Vec<u64> = missed.iter().map(|e| e["data"].as_u64().unwrap()).collect();
    assert_eq!(
        data,
        (last + 1..=TOTAL).collect::<Vec<_>>(),
        "exactly what it missed"
    );
    back.expect_silence(Duration::from_millis(200)).await;
    let mut leaving = leaving;
    let status = leaving.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn nodes_started_at_once_on_a_fresh_database_all_come_up() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let (a, b, c) = tokio::join!(
        NodeProcess::start(&db, &redis, "a"),
        NodeProcess::start(&db, &redis, "b"),
        NodeProcess::start(&db, &redis, "c"),
    );
    // All three migrated the one database and share its epoch.
    let mut epochs = Vec::new();
    db.execute("CREATE TABLE t (id INT PRIMARY KEY)");
    for node in [&a, &b, &c] {
        let mut client = Client::connect(&node.ws_url()).await;
        epochs.push(client.subscribe("t").await["epoch"].clone());
    }
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{epochs:?}");
}

#[tokio::test]
async fn when_the_node_streaming_the_slot_dies_another_takes_it_over_and_nothing_is_lost() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    if !db.is_postgres() {
        common::skip("PostgreSQL", "the replication slot is PostgreSQL's");
        return;
    }
    db.execute("CREATE TABLE items (id BIGINT PRIMARY KEY)");
    // The first node to watch the table streams the slot.
    let doomed = NodeProcess::start(&db, &redis, "doomed").await;
    let mut first = Client::connect(&doomed.ws_url()).await;
    first.subscribe("items").await;
    db.execute("INSERT INTO items VALUES (0)");
    assert_eq!(first.recv().await["data"]["id"], 0);

    let b = node(&db, &redis, "b").await;
    let (_, capture) = b.get_json("/admin/capture").await;
    if capture["mode"] != "logical" {
        common::skip("PostgreSQL with wal_level = logical", &capture.to_string());
        return;
    }
    let mut watcher = b.client().await;
    watcher.subscribe("items").await;
    for id in 1..=20 {
        db.execute(&format!("INSERT INTO items VALUES ({id})"));
    }
    let mut seqs = Vec::new();
    for id in 1..=20 {
        let change = watcher.recv().await;
        assert_eq!(change["data"]["id"], id, "{change}");
        seqs.push(change["seq"].as_u64().unwrap());
    }
    drop(doomed);
    for id in 21..=40 {
        db.execute(&format!("INSERT INTO items VALUES ({id})"));
    }
    for id in 21..=40 {
        let change = watcher.recv().await;
        assert_eq!(change["data"]["id"], id, "{change}");
        seqs.push(change["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    watcher.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn after_a_redis_restart_every_script_is_loaded_before_calls_go_through() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let db = shared_database();
    let a = node(&db, &redis, "scripts-a").await;
    let scripts = [
        concat!(
            include_str!("../src/broker/redis/lua/epoch.lua"),
            include_str!("../src/broker/redis/lua/publish.lua")
        ),
        concat!(
            include_str!("../src/broker/redis/lua/epoch.lua"),
            include_str!("../src/broker/redis/lua/join.lua")
        ),
        include_str!("../src/broker/redis/lua/track.lua"),
        include_str!("../src/broker/redis/lua/untrack.lua"),
        include_str!("../src/broker/redis/lua/occupancy.lua"),
        include_str!("../src/broker/redis/lua/forward.lua"),
        include_str!("../src/broker/redis/lua/open_stream.lua"),
    ];
    let hashes: Vec<String> = scripts
        .iter()
        .map(|code| redis::Script::new(code).get_hash().to_string())
        .collect();
    let loaded = |redis: &RedisServer| {
        let mut args = vec!["SCRIPT", "EXISTS"];
        args.extend(hashes.iter().map(String::as_str));
        redis.cli(&args).lines().filter(|l| l.trim() == "1").count()
    };
    assert_eq!(
        loaded(&redis),
        hashes.len(),
        "loaded at the first connection"
    );

    redis.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.get_json("/readyz").await.1["redis"] != false {
        assert!(tokio::time::Instant::now() < deadline, "Redis is gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back empty. Nothing is published, joined or tracked: the node loads
    // the scripts itself as it reconnects, before it takes calls again.
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, ready) = a.get_json("/readyz").await;
        if ready["redis"] == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis came back: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        loaded(&redis),
        hashes.len(),
        "every script is back once calls go through"
    );
}
