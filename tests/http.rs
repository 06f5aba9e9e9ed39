//! The HTTP API: emit, admin topics, health, metrics, and JSON errors.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};

#[tokio::test]
async fn an_emit_reaches_subscribers_as_a_server_event() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.subscribe("orders/alerts").await;
    let (status, body) = app
        .emit(json!({"topic": "orders/alerts", "event": "late", "data": {"id": 7}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ok": true, "seq": 1}));
    let event = client.recv().await;
    assert_eq!(event["event"], "late");
    assert_eq!(event["data"], json!({"id": 7}));
    assert_eq!(event["userId"], Value::Null);
    assert_eq!(event["seq"], 1);
}

#[tokio::test]
async fn a_batch_emit_arrives_in_order_and_answers_each_seq() {
    let app = TestApp::spawn().await;
    let mut a = app.client().await;
    let mut b = app.client().await;
    a.subscribe("batch/a").await;
    b.subscribe("batch/b").await;
    let (status, body) = app
        .emit(json!({"messages": [
            {"topic": "batch/a", "event": "e", "data": 1},
            {"topic": "batch/b", "event": "e", "data": 2},
            {"topic": "batch/a", "event": "e", "data": 3},
        ]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"ok": true, "results": [{"seq": 1}, {"seq": 1}, {"seq": 2}]})
    );
    assert_eq!(a.recv().await["data"], 1);
    assert_eq!(a.recv().await["data"], 3);
    assert_eq!(b.recv().await["data"], 2);
}

#[tokio::test]
async fn a_batch_with_one_bad_message_emits_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.subscribe("batch/x").await;
    let (status, body) = app
        .emit(json!({"messages": [
            {"topic": "batch/x", "event": "e", "data": 1},
            {"topic": "orders", "event": "e", "data": 2},
        ]}))
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_emits_get_json_errors_with_fitting_statuses() {
    let app = TestApp::spawn().await;
    for (body, status, code) in [
        (json!({"event": "e", "data": 1}), 400, "bad_request"),
        (
            json!({"topic": "a/b", "event": "", "data": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"topic": "a b/c", "event": "e", "data": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"topic": "orders", "event": "e", "data": 1}),
            403,
            "forbidden",
        ),
        (
            json!({"topic": "_x/y", "event": "e", "data": 1}),
            403,
            "forbidden",
        ),
        (json!([1, 2]), 400, "bad_request"),
    ] {
        let (got, reply) = app.emit(body.clone()).await;
        assert_eq!(got, status, "{body} -> {reply}");
        assert_eq!(reply["error"]["code"], code, "{body}");
    }
    let response = app
        .http()
        .post(app.url("/api/realtime/emit"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let huge = json!({"topic": "a/b", "event": "e", "data": "x".repeat(2 * 1024 * 1024)});
    let (status, reply) = app.emit(huge).await;
    assert_eq!(status, 413);
    assert_eq!(reply["error"]["code"], "too_large");
}

#[tokio::test]
async fn with_a_server_key_emit_requires_it_even_from_loopback() {
    let app = TestApp::spawn_with(|c| c.server_key = Some("backend-key".into())).await;
    let body = json!({"topic": "a/b", "event": "e", "data": 1});
    let (status, reply) = app.emit(body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(reply["error"]["code"], "unauthorized");
    let post = |key: &'static str| {
        app.http()
            .post(app.url("/api/realtime/emit"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    assert_eq!(post("wrong").await.unwrap().status(), 401);
    assert_eq!(post("backend-key").await.unwrap().status(), 200);
}

#[tokio::test]
async fn admin_topics_lists_running_topics_with_their_figures() {
    let app = TestApp::spawn_with(|c| c.admin_key = Some("ops".into())).await;
    let mut a = app.client().await;
    let mut b = app.client().await;
    a.subscribe("room/1").await;
    b.subscribe("room/1").await;
    b.subscribe("room/2").await;
    a.publish("room/1", "e", json!(1)).await;
    a.publish("room/1", "e", json!(2)).await;

    let (status, _) = app.get_json("/admin/topics").await;
    assert_eq!(status, 401, "the admin key is required");
    let topics = app
        .keyed_json(reqwest::Method::GET, "/admin/topics", "ops")
        .await;
    assert_eq!(
        topics,
        json!([
            {"topic": "room/1", "kind": "pubsub", "subscribers": 2, "presence": 0, "seq": 2},
            {"topic": "room/2", "kind": "pubsub", "subscribers": 1, "presence": 0, "seq": 0},
        ])
    );
}

#[tokio::test]
async fn admin_trends_answer_with_the_admin_key_a_sample_every_ten_seconds() {
    let app = TestApp::spawn_with(|c| c.admin_key = Some("ops".into())).await;
    let (status, _) = app.get_json("/admin/trends").await;
    assert_eq!(status, 401, "the admin key is required");
    let trends = app
        .keyed_json(reqwest::Method::GET, "/admin/trends", "ops")
        .await;
    assert_eq!(trends["interval_ms"], 10_000);
    // A fresh node has at most its first interval's sample.
    assert!(
        trends["samples"].as_array().is_some_and(|s| s.len() <= 1),
        "{trends}"
    );
}

#[tokio::test]
async fn a_topic_with_no_subscribers_stops_after_its_replay_window() {
    let app = TestApp::spawn_with(|c| c.replay_ttl_s = 1).await;
    let mut client = app.client().await;
    client.subscribe("brief/x").await;
    client.subscribe("kept/x").await;
    client
        .request(json!({"type": "unsubscribe", "topic": "brief/x"}))
        .await;
    let listed = |topics: Value| -> Vec<String> {
        topics
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["topic"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, topics) = app.get_json("/admin/topics").await;
    assert_eq!(listed(topics), vec!["brief/x", "kept/x"]);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, topics) = app.get_json("/admin/topics").await;
    assert_eq!(listed(topics), vec!["kept/x"], "the subscribed topic stays");
    // A stopped topic starts afresh, with a new epoch.
    let again = client.subscribe("brief/x").await;
    assert_eq!(again["seq"], 0);
}

#[tokio::test]
async fn metrics_count_connections_deliveries_and_errors() {
    let app = TestApp::spawn().await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut client = app.client().await;
        client.subscribe("m/x").await;
        subscribers.push(client);
    }
    assert_eq!(app.metric("realtide_connections").await, 3.0);
    assert_eq!(app.metric("realtide_subscriptions").await, 3.0);
    app.emit(json!({"topic": "m/x", "event": "e", "data": 1}))
        .await;
    for client in &mut subscribers {
        client.recv().await;
    }
    assert_eq!(app.metric("realtide_deliveries_total").await, 3.0);
    assert_eq!(app.metric("realtide_events_published_total").await, 1.0);
    let messages_in = app.metric("realtide_messages_in_total").await;
    let messages_out = app.metric("realtide_messages_out_total").await;
    assert_eq!(messages_in, 3.0, "three subscribe frames");
    assert_eq!(
        messages_out,
        3.0 * 3.0,
        "welcome, subscribed and one event each"
    );
    let errors_before = app
        .metric("realtide_errors_total{code=\"bad_request\"}")
        .await;
    subscribers[0].request(json!({"type": "nonsense"})).await;
    let errors_after = app
        .metric("realtide_errors_total{code=\"bad_request\"}")
        .await;
    assert_eq!(errors_after - errors_before, 1.0);
    drop(subscribers);
    for _ in 0..100 {
        if app.metric("realtide_connections").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.metric("realtide_connections").await, 0.0);
    assert_eq!(app.metric("realtide_subscriptions").await, 0.0);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get_json("/healthz").await, (200, json!({"ok": true})));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"database": true}),
        "one node: the database only"
    );
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = app.get_json("/api/realtime/emit").await;
    assert_eq!(status, 405);
    assert!(body["error"]["message"].as_str().is_some());
}

#[tokio::test]
async fn behind_a_dual_stack_bind_local_ipv4_peers_count_as_loopback() {
    let listener = std::net::TcpListener::bind("[::]:0").expect("a dual-stack bind");
    let port = listener.local_addr().unwrap().port();
    let app = TestApp::spawn_listening(common::TestDb::sqlite(), listener, |_| {}).await;
    // This peer arrives as ::ffff:127.0.0.1.
    let response = app
        .http()
        .post(format!("http://127.0.0.1:{port}/api/realtime/emit"))
        .json(&json!({"topic": "a/b", "event": "e", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "emit without a key from loopback");
    let admin = app
        .http()
        .get(format!("http://127.0.0.1:{port}/admin/topics"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}

/// The `Access-Control-Allow-Origin` a browser at `origin` would get.
async fn allowed_origin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    origin: &str,
) -> Option<String> {
    let mut request = app
        .http()
        .request(method.clone(), app.url(path))
        .header("Origin", origin);
    if method == reqwest::Method::OPTIONS {
        request = request.header("Access-Control-Request-Method", "GET");
    }
    let response = request.send().await.unwrap();
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn browsers_of_other_origins_may_read_client_endpoints_but_not_admin_or_emit() {
    let app = TestApp::spawn().await;
    let page = "http://app.example";
    for path in [
        "/realtide.js",
        "/api/v1/public/realtime/history?room=a/b",
        "/healthz",
    ] {
        let get = allowed_origin(&app, reqwest::Method::GET, path, page).await;
        assert_eq!(get.as_deref(), Some("*"), "{path} in open mode");
        let preflight = allowed_origin(&app, reqwest::Method::OPTIONS, path, page).await;
        assert!(preflight.is_some(), "{path}: preflight");
    }
    for path in ["/admin/topics", "/api/realtime/emit"] {
        let get = allowed_origin(&app, reqwest::Method::GET, path, page).await;
        assert_eq!(get, None, "{path}");
        let preflight = allowed_origin(&app, reqwest::Method::OPTIONS, path, page).await;
        assert_eq!(preflight, None, "{path}: preflight");
    }
}

#[tokio::test]
async fn with_a_secret_no_origin_is_allowed_unless_configured() {
    let secured = TestApp::spawn_with(|c| c.jwt_secret = Some(common::SECRET.into())).await;
    let none = allowed_origin(
        &secured,
        reqwest::Method::GET,
        "/realtide.js",
        "http://app.example",
    )
    .await;
    assert_eq!(none, None);
    let listed = TestApp::spawn_with(|c| {
        c.jwt_secret = Some(common::SECRET.into());
        c.cors_origins = Some("http://app.example, http://other.example".into());
    })
    .await;
    let ok = allowed_origin(
        &listed,
        reqwest::Method::GET,
        "/realtide.js",
        "http://app.example",
    )
    .await;
    assert_eq!(ok.as_deref(), Some("http://app.example"));
    let stranger = allowed_origin(
        &listed,
        reqwest::Method::GET,
        "/realtide.js",
        "http://evil.example",
    )
    .await;
    assert_eq!(stranger, None);
}

#[tokio::test]
async fn the_servers_address_in_a_browser_shows_where_to_go() {
    let app = TestApp::spawn().await;
    let response = app.http().get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/html"), "{kind}");
    let page = response.text().await.unwrap();
    for link in [
        "href=\"/console\"",
        "href=\"/realtide.js\"",
        "href=\"/healthz\"",
        "href=\"/readyz\"",
        "href=\"/metrics\"",
    ] {
        assert!(page.contains(link), "{link} in {page}");
    }
    assert!(page.contains("open mode"), "{page}");
}

/// The metrics say why clients were refused or cut off, how late events and
/// table changes reached them, and what the process uses.
#[tokio::test]
async fn metrics_explain_refusals_closes_lags_and_the_process() {
    let db = common::TestDb::sqlite();
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)");
    let app = TestApp::spawn_on(db, |c| c.project_id = "shop".into()).await;
    let refused = tokio_tungstenite::connect_async(app.ws_url("?projectId=elsewhere")).await;
    assert!(refused.is_err());
    assert_eq!(
        app.metric("realtide_handshakes_refused_total{code=\"forbidden\"}")
            .await,
        1.0
    );

    let mut client = app.client().await;
    client.subscribe("orders").await;
    client.subscribe("news/today").await;
    app.db
        .execute("INSERT INTO orders (id, status) VALUES (1, 'new')");
    app.emit(json!({"topic": "news/today", "event": "e", "data": 1}))
        .await;
    let mut got = 0;
    while got < 2 {
        let frame = client.recv().await;
        if frame["type"] == "db_change" || frame["type"] == "event" {
            got += 1;
        }
    }
    assert!(app.metric("realtide_delivery_lag_seconds_count").await >= 2.0);
    assert_eq!(app.metric("realtide_change_lag_seconds_count").await, 1.0);
    assert_eq!(app.metric("realtide_backlog_bytes").await, 0.0);
    client.close().await;
    let closed = "realtide_connections_closed_total{reason=\"client\"}";
    for _ in 0..100 {
        if app.metric(closed).await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.metric(closed).await, 1.0);
    assert_eq!(
        app.metric("realtide_connections_closed_total{reason=\"slow_consumer\"}")
            .await,
        0.0
    );
    assert!(app.metric("realtide_process_resident_memory_bytes").await > 0.0);
    assert!(app.metric("realtide_process_open_fds").await > 0.0);
    app.metric("realtide_process_cpu_seconds_total").await;
}

/// The metric names in `text`: `realtide_…`, a histogram's series by its family.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("realtide_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

/// Every metric the Grafana dashboard and the alert rules in `deploy/` use
/// is one the server exports.
#[tokio::test]
async fn the_dashboard_and_alerts_use_only_metrics_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus-alerts.yml")).unwrap();
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .collect();
    assert!(exprs.len() >= 8, "the rules have their expressions");
    for expr in exprs {
        used.extend(metric_names(expr));
    }
    let app = TestApp::spawn().await;
    let exported = app.metrics_text().await;
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        assert!(
            families.contains(&name.as_str()),
            "{name} is not exported:\n{exported}"
        );
    }
}

/// An operator sees who is connected, with what, and can cut one off (4003).
#[tokio::test]
async fn an_operator_lists_connections_and_disconnects_one() {
    let app = TestApp::spawn_with(|c| c.admin_key = Some("ops".into())).await;
    let mut ann = app.client_as("ann").await;
    ann.subscribe("chat/a").await;
    ann.subscribe("orders-feed/x").await;
    let conn = ann.welcome["conn"].as_str().unwrap().to_string();

    let unauthorized = app
        .http()
        .get(app.url("/admin/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let listed: Value = app
        .http()
        .get(app.url("/admin/connections"))
        .bearer_auth("ops")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conn"] == conn.as_str())
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(entry["userId"], "ann");
    assert_eq!(entry["subscriptions"], json!(["chat/a", "orders-feed/x"]));
    assert_eq!(entry["frames_in"], 2);
    assert_eq!(entry["backlog_bytes"], 0);

    let disconnect = || {
        app.http()
            .delete(app.url(&format!("/admin/connections/{conn}")))
            .bearer_auth("ops")
            .send()
    };
    assert_eq!(disconnect().await.unwrap().status(), 200);
    assert_eq!(ann.closed_code(Duration::from_secs(5)).await, Some(4003));
    assert_eq!(disconnect().await.unwrap().status(), 404, "gone already");
}

/// The console follows topics over a socket the admin key opens, even where
/// clients need tokens; without the right key it is refused.
#[tokio::test]
async fn the_admin_key_opens_a_console_socket_and_nothing_else_does() {
    let app = TestApp::spawn_with(|c| {
        c.admin_key = Some("ops".into());
        c.jwt_secret = Some(common::SECRET.into());
    })
    .await;
    for wrong in ["?adminKey=nope", "?adminKey="] {
        let refused = common::Client::connect_request(&app.ws_url(wrong), &[]).await;
        let (status, _) = refused.err().expect("refused");
        assert_eq!(status, 401, "{wrong}");
    }
    let mut console = common::Client::connect(&app.ws_url("?adminKey=ops")).await;
    assert_eq!(console.welcome["userId"], "console");
    console.subscribe("private/room").await;
    let ack = console
        .request(json!({"type": "publish", "topic": "private/room", "event": "note", "data": 1}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // Without an admin key configured, only loopback peers may open one:
    // the test's client is on loopback.
    let open = TestApp::spawn_with(|c| c.jwt_secret = Some(common::SECRET.into())).await;
    let console = common::Client::connect(&open.ws_url("?adminKey=")).await;
    assert_eq!(console.welcome["userId"], "console");
}
