//! The app's backend is told (PROTOCOL §10): topics occupied and vacated,
//! presence keys joining and leaving, connections opening and closing;
//! signed, in order per topic, and nothing lost when the receiver fails for
//! a while or realtide is killed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::backend::{Backend, Call, Reply};
use common::{TestApp, TestDb};
use realtide::backend::signing::Signer;
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-of-at-least-32-bytes!";

fn receiver() -> Backend {
    Backend::start(|_| Reply::json(json!({"ok": true})))
}

async fn app_telling(
    receiver: &Backend,
    adjust: impl FnOnce(&mut realtide::config::Config),
) -> TestApp {
    app_telling_on(TestDb::sqlite(), receiver, adjust).await
}

async fn app_telling_on(
    db: TestDb,
    receiver: &Backend,
    adjust: impl FnOnce(&mut realtide::config::Config),
) -> TestApp {
    let url = receiver.url("/hooks");
    TestApp::spawn_on(db, move |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
        adjust(c);
    })
    .await
}

/// The events delivered so far (answered 2xx), deduplicated by id, in
/// delivery order.
fn delivered(receiver: &Backend, accepted: impl Fn(&Call) -> bool) -> Vec<Value> {
    let mut seen = HashSet::new();
    receiver
        .calls("/hooks")
        .into_iter()
        .filter(|c| accepted(c))
        .filter(|c| seen.insert(c.body["id"].as_str().unwrap_or_default().to_string()))
        .map(|c| c.body)
        .collect()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test]
async fn every_kind_of_happening_is_told_once_signed_with_its_payload() {
    for db in TestDb::all() {
        every_kind_on(db).await;
    }
}

async fn every_kind_on(db: TestDb) {
    let hooks = receiver();
    let app = app_telling_on(db, &hooks, |_| {}).await;
    let mut tab1 = app.client_as("ann").await;
    let mut tab2 = app.client_as("ann").await;
    let conn1 = tab1.welcome["conn"].as_str().unwrap().to_string();
    tab1.subscribe("room/1").await;
    tab2.ask(json!({"type": "subscribe", "topic": "room/1"}))
        .await;
    tab1.ask(json!({"type": "track", "topic": "room/1", "state": {"tab": 1}}))
        .await;
    tab2.ask(json!({"type": "track", "topic": "room/1", "state": {"tab": 2}}))
        .await;
    tab1.ask(json!({"type": "untrack", "topic": "room/1"}))
        .await;
    tab2.ask(json!({"type": "untrack", "topic": "room/1"}))
        .await;
    tab1.ask(json!({"type": "unsubscribe", "topic": "room/1"}))
        .await;
    tab2.ask(json!({"type": "unsubscribe", "topic": "room/1"}))
        .await;
    tab1.close().await;

    let all = || delivered(&hooks, |_| true);
    wait_for("every webhook", Duration::from_secs(10), || {
        of_type(&all(), "topic.vacated").len() == 1
            && !of_type(&all(), "connection.closed").is_empty()
    })
    .await;
    let events = all();
    let room: Vec<(&str, Value)> = events
        .iter()
        .filter(|e| e["data"]["topic"] == "room/1")
        .map(|e| (e["type"].as_str().unwrap(), e["data"].clone()))
        .collect();
    assert_eq!(
        room,
        vec![
            ("topic.occupied", json!({"topic": "room/1"})),
            (
                "presence.join",
                json!({"topic": "room/1", "key": "ann", "state": {"tab": 1}})
            ),
            (
                "presence.leave",
                json!({"topic": "room/1", "key": "ann", "state": {"tab": 2}})
            ),
            ("topic.vacated", json!({"topic": "room/1"})),
        ],
        "two tabs are one key; in the order they happened"
    );
    let opened = of_type(&events, "connection.opened");
    assert_eq!(opened.len(), 2);
    assert_eq!(opened[0]["data"]["user"], "ann");
    assert!(opened[0]["data"]["node"].is_string());
    let closed = of_type(&events, "connection.closed");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["data"]["conn"], conn1.as_str());
    assert_eq!(
        closed[0]["data"]["code"], 1005,
        "the client closed without a code"
    );
    assert_eq!(closed[0]["data"]["reason"], "client");

    for call in hooks.calls("/hooks") {
        assert_eq!(call.header("x-realtide-event-id"), call.body["id"].as_str());
        assert!(call.body["created_at"].as_i64().unwrap() > 1_700_000_000_000);
        let signature = call.header("x-realtide-signature").unwrap();
        let at: u64 = signature[2..signature.find(',').unwrap()].parse().unwrap();
        assert_eq!(signature, Signer::new(SECRET).sign(at, &call.raw));
    }
    assert!(
        app.metric("realtide_webhook_deliveries_total{result=\"delivered\"}")
            .await
            >= 7.0
    );
}

#[tokio::test]
async fn only_the_chosen_kinds_are_told() {
    let hooks = receiver();
    let app = app_telling(&hooks, |c| c.webhook_events = Some("topic.occupied".into())).await;
    let mut ann = app.client_as("ann").await;
    ann.subscribe("room/2").await;
    ann.close().await;
    wait_for("the occupied event", Duration::from_secs(10), || {
        !delivered(&hooks, |_| true).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinds: Vec<Value> = delivered(&hooks, |_| true)
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, vec![json!("topic.occupied")]);
}

#[tokio::test]
async fn a_receiver_failing_for_three_seconds_gets_every_event_once_in_order_per_topic() {
    let hooks = receiver();
    let started = std::time::Instant::now();
    hooks.decide(move |_| match started.elapsed() < Duration::from_secs(3) {
        true => Reply::status(500, json!({"down": true})),
        false => Reply::json(json!({"ok": true})),
    });
    let app = app_telling(&hooks, |c| {
        c.webhook_events = Some("topic.occupied,topic.vacated".into())
    })
    .await;
    let mut ann = app.client().await;
    for round in 0..5 {
        for room in 0..4 {
            let topic = format!("room/{room}");
            ann.subscribe(&topic).await;
            ann.request(json!({"type": "unsubscribe", "topic": topic}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100 * round)).await;
    }
    wait_for("40 events", Duration::from_secs(30), || {
        distinct_ids(&hooks) >= 40 && pending_in(&app.db.url) == 0
    })
    .await;
    let events = delivered(&hooks, |_| true);
    assert_eq!(events.len(), 40, "each once, after dedupe by id");
    let mut per_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in &events {
        per_topic
            .entry(event["data"]["topic"].as_str().unwrap().to_string())
            .or_default()
            .push(event["type"].as_str().unwrap().to_string());
    }
    for (topic, kinds) in per_topic {
        let expected: Vec<String> = (0..5)
            .flat_map(|_| ["topic.occupied".to_string(), "topic.vacated".to_string()])
            .collect();
        assert_eq!(kinds, expected, "{topic}: in the order they happened");
    }
    assert!(
        app.metric("realtide_webhook_deliveries_total{result=\"failed\"}")
            .await
            >= 1.0
    );
}

/// Webhooks stored and not delivered yet.
fn pending_in(url: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = realtide::db::connect(url).unwrap();
    diesel::sql_query("SELECT COUNT(*) AS n FROM _realtide_webhooks")
        .get_result::<N>(&mut conn)
        .map(|r| r.n)
        .unwrap_or(-1)
}

/// The distinct event ids the receiver was offered.
fn distinct_ids(hooks: &Backend) -> usize {
    let ids: HashSet<String> = hooks
        .calls("/hooks")
        .iter()
        .map(|c| c.body["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.len()
}

#[tokio::test]
async fn realtide_killed_with_200_events_pending_delivers_all_of_them_after_a_restart() {
    let hooks = receiver();
    hooks.decide(|_| Reply::status(503, json!({"busy": true})));
    let db = TestDb::sqlite();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let url = hooks.url("/hooks");
    let args = [
        "--database-url",
        db.url.as_str(),
        "--webhook-url",
        url.as_str(),
        "--webhook-secret",
        SECRET,
        "--webhook-events",
        "connection.opened,connection.closed",
    ];
    let mut first = common::serve_binary(&addr, &args).await;
    for _ in 0..100 {
        let client = common::Client::connect(&format!("ws://{addr}/api/realtime")).await;
        client.close().await;
    }
    let pending = || pending_in(&db.url);
    wait_for("200 stored events", Duration::from_secs(10), || {
        pending() == 200
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();

    hooks.decide(|_| Reply::json(json!({"ok": true})));
    let mut second = common::serve_binary(&addr, &args).await;
    let ok_ids = || -> HashSet<String> {
        hooks
            .calls("/hooks")
            .iter()
            .filter(|c| c.body["type"].as_str().is_some())
            .map(|c| c.body["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The restarted server's own connection events are not among them:
    // nothing connects to it.
    wait_for("the 200 events", Duration::from_secs(30), || pending() == 0).await;
    let ids = ok_ids();
    assert_eq!(ids.len(), 200, "every event stored before the kill");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn two_nodes_tell_each_happening_once_and_a_killed_nodes_departures_once() {
    let Some(redis) = common::cluster::RedisServer::start() else {
        return;
    };
    let hooks = receiver();
    let db = common::cluster::shared_database();
    let node = |id: &str| {
        let (redis_url, hook, id) = (redis.url(), hooks.url("/hooks"), id.to_string());
        TestApp::spawn_on(TestDb::shared(&db), move |c| {
            c.redis_url = Some(redis_url);
            c.redis_prefix = None;
            c.node_id = Some(id);
            c.node_timeout_ms = common::cluster::NODE_TIMEOUT_MS;
            c.webhook_url = Some(hook);
            c.webhook_secret = Some(SECRET.into());
            c.webhook_events =
                Some("topic.occupied,topic.vacated,presence.join,presence.leave".into());
        })
    };
    let n1 = node("n1").await;
    let n2 = node("n2").await;
    // A third node, as a process of its own, to be killed.
    let addr = format!("127.0.0.1:{}", common::free_port());
    let (redis_url, hook, timeout) = (
        redis.url(),
        hooks.url("/hooks"),
        common::cluster::NODE_TIMEOUT_MS.to_string(),
    );
    let mut n3 = common::serve_binary(
        &addr,
        &[
            "--database-url",
            db.url.as_str(),
            "--redis-url",
            redis_url.as_str(),
            "--node-id",
            "n3",
            "--node-timeout-ms",
            timeout.as_str(),
            "--webhook-url",
            hook.as_str(),
            "--webhook-secret",
            SECRET,
            "--webhook-events",
            "topic.occupied,topic.vacated,presence.join,presence.leave",
        ],
    )
    .await;

    // Ann has a tab on each node; carol is on the node that dies.
    let mut ann1 = n1.client_as("ann").await;
    let mut ann2 = n2.client_as("ann").await;
    let mut carol =
        common::Client::connect(&format!("ws://{addr}/api/realtime?userId=carol")).await;
    for client in [&mut ann1, &mut ann2, &mut carol] {
        client
            .ask(json!({"type": "subscribe", "topic": "room/x"}))
            .await;
    }
    // Both tabs at once: the broker counts the key's entries, so one of
    // the two nodes tells the join.
    tokio::join!(
        ann1.ask(json!({"type": "track", "topic": "room/x", "state": {"tab": 1}})),
        ann2.ask(json!({"type": "track", "topic": "room/x", "state": {"tab": 2}})),
    );
    carol
        .ask(json!({"type": "track", "topic": "room/x", "state": {}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    n3.kill().unwrap();
    n3.wait().unwrap();
    // And both leave at once: one of them tells the leave.
    tokio::join!(
        ann1.ask(json!({"type": "unsubscribe", "topic": "room/x"})),
        ann2.ask(json!({"type": "unsubscribe", "topic": "room/x"})),
    );

    let all = || delivered(&hooks, |_| true);
    wait_for("the vacated topic", Duration::from_secs(20), || {
        !of_type(&all(), "topic.vacated").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let events = all();
    let told: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let who = e["data"]["key"].as_str().unwrap_or("").to_string();
            (e["type"].as_str().unwrap().to_string(), who)
        })
        .collect();
    let count = |kind: &str, key: &str| told.iter().filter(|(k, w)| k == kind && w == key).count();
    assert_eq!(
        count("topic.occupied", ""),
        1,
        "one occupied for three nodes: {told:?}"
    );
    assert_eq!(count("topic.vacated", ""), 1, "{told:?}");
    assert_eq!(
        count("presence.join", "ann"),
        1,
        "two tabs on two nodes are one key: {told:?}"
    );
    assert_eq!(count("presence.join", "carol"), 1, "{told:?}");
    assert_eq!(
        count("presence.leave", "carol"),
        1,
        "the killed node's key leaves once: {told:?}"
    );
    assert_eq!(count("presence.leave", "ann"), 1, "{told:?}");
    let calls = hooks.calls("/hooks");
    let ids: HashSet<&str> = calls.iter().filter_map(|c| c.body["id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        calls.len(),
        "no event sent twice (by both nodes)"
    );
    drop((n1, n2));
}
