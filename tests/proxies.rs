//! The app's backend decides (PROTOCOL §10): who a connection without
//! credentials is (connect proxy), who may subscribe and to which rows
//! (subscribe proxy), what a publish says (publish proxy). The backend is a
//! real HTTP server that answers, refuses, takes too long or is gone.

mod common;

use std::time::Duration;

use common::backend::{Backend, Reply};
use common::sse::SseClient;
use common::{Client, TestApp, TestDb};
use realtide::backend::signing::Signer;
use serde_json::{Value, json};

const HOOK_SECRET: &str = "webhook-secret-of-at-least-32-bytes!";

/// A backend that knows the session cookie `sid=ann-session` as ann, who may
/// read `orders` and `chat/*` and publish to `chat/*`, for 1 hour.
fn sessions() -> Backend {
    Backend::start(|call| match call.path.as_str() {
        "/connect" => {
            let cookie = call.body["headers"]["cookie"].as_str().unwrap_or_default();
            if cookie.contains("sid=ann-session") {
                Reply::json(json!({"result": {
                    "user": "ann",
                    "realtime": {"subscribe": ["orders", "chat/*"], "publish": ["chat/*"]},
                }}))
            } else if cookie.contains("sid=banned") {
                Reply::json(json!({"error": {"code": "forbidden", "message": "banned"}}))
            } else {
                Reply::status(
                    401,
                    json!({"error": {"code": "unauthorized", "message": "log in"}}),
                )
            }
        }
        _ => Reply::json(json!({"result": {}})),
    })
}

async fn app_with(
    backend: &Backend,
    adjust: impl FnOnce(&mut realtide::config::Config),
) -> TestApp {
    let url = backend.url("/connect");
    TestApp::spawn_with(move |c| {
        c.proxy_connect_url = Some(url);
        c.proxy_timeout_ms = 500;
        c.webhook_secret = Some(HOOK_SECRET.into());
        adjust(c);
    })
    .await
}

async fn connect_with_cookie(app: &TestApp, cookie: &str) -> Result<Client, (u16, Value)> {
    Client::connect_request(&app.ws_url(""), &[("Cookie", cookie)]).await
}

/// The status and error code a handshake with `cookie` is refused with.
async fn refusal(app: &TestApp, cookie: &str) -> (u16, Value) {
    let (status, body) = connect_with_cookie(app, cookie)
        .await
        .err()
        .expect("refused");
    (status, body["error"]["code"].clone())
}

#[tokio::test]
async fn a_connection_without_credentials_is_who_the_backend_says() {
    let backend = sessions();
    let app = app_with(&backend, |_| {}).await;
    let mut ann = connect_with_cookie(&app, "theme=dark; sid=ann-session")
        .await
        .expect("the backend knows ann");
    assert_eq!(ann.welcome["userId"], "ann");

    // The backend's grants hold as a token's would.
    assert_eq!(ann.subscribe("chat/room").await["type"], "subscribed");
    let refused = ann
        .request(json!({"type": "subscribe", "topic": "secret/room"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // What the backend was shown, signed.
    let call = backend.calls("/connect").pop().unwrap();
    assert_eq!(call.body["conn"], ann.welcome["conn"]);
    assert_eq!(
        call.body["headers"]["cookie"],
        "theme=dark; sid=ann-session"
    );
    assert_eq!(call.body["remote_addr"], "127.0.0.1");
    let signature = call.header("x-realtide-signature").expect("signed");
    let at: u64 = signature
        .strip_prefix("t=")
        .and_then(|s| s.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert_eq!(signature, Signer::new(HOOK_SECRET).sign(at, &call.raw));

    // The same cookie opens a server-sent-events stream.
    let stream = SseClient::open_on(&app.url(""), "", &[("Cookie", "sid=ann-session")])
        .await
        .expect("the stream opens");
    assert_eq!(stream.welcome["userId"], "ann");
}

#[tokio::test]
async fn the_backends_refusal_is_the_handshakes_answer() {
    let backend = sessions();
    let app = app_with(&backend, |_| {}).await;
    assert_eq!(refusal(&app, "sid=banned").await, (403, json!("forbidden")));
    assert_eq!(
        refusal(&app, "sid=stranger").await,
        (401, json!("unauthorized"))
    );
    let (status, _) = app.get_json("/api/realtime/check").await;
    assert_eq!(status, 401, "check asks the backend too");
    // No open mode behind a connect proxy: no cookie, no connection.
    let refused = Client::connect_request(&app.ws_url("?userId=mallory"), &[]).await;
    assert_eq!(refused.err().unwrap().0, 401);
    let stream = SseClient::open_on(&app.url(""), "", &[("Cookie", "sid=banned")]).await;
    assert_eq!(stream.err().unwrap().status, 403);
}

#[tokio::test]
async fn a_backend_that_is_slow_or_gone_fails_closed_with_503() {
    let backend = sessions();
    let app = app_with(&backend, |_| {}).await;
    backend
        .decide(|_| Reply::json(json!({"result": {"user": "late"}})).after(Duration::from_secs(2)));
    assert_eq!(
        refusal(&app, "sid=ann-session").await,
        (503, json!("unavailable"))
    );

    backend.decide(|_| Reply::status(500, json!({"oops": true})));
    assert_eq!(
        refusal(&app, "sid=ann-session").await,
        (503, json!("unavailable"))
    );
    backend.decide(|_| Reply::json(json!({"neither": 1})));
    assert_eq!(
        refusal(&app, "sid=ann-session").await,
        (503, json!("unavailable"))
    );

    let gone = format!("http://127.0.0.1:{}/connect", common::free_port());
    let app = TestApp::spawn_with(move |c| c.proxy_connect_url = Some(gone)).await;
    assert_eq!(
        refusal(&app, "sid=ann-session").await,
        (503, json!("unavailable"))
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"realtide_proxy_calls_total{proxy="connect",result="unreachable"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connection_with_a_token_or_key_is_not_asked_about() {
    let backend = sessions();
    let secret = "jwt-secret-that-is-at-least-32-bytes";
    let app = app_with(&backend, |c| c.jwt_secret = Some(secret.into())).await;
    let token = common::token_for(secret, "bob", json!({}));
    let bob = Client::connect(&app.ws_url(&format!("?token={token}"))).await;
    assert_eq!(bob.welcome["userId"], "bob");
    assert!(backend.calls("/connect").is_empty());
}

#[tokio::test]
async fn the_backends_expire_at_ends_the_connection_with_4001() {
    let backend = Backend::start(|_| {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2;
        Reply::json(json!({"result": {"user": "ann", "expire_at": at}}))
    });
    let app = app_with(&backend, |_| {}).await;
    let mut ann = connect_with_cookie(&app, "sid=x").await.unwrap();
    let error = ann.recv().await;
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(ann.closed_code(Duration::from_secs(8)).await, Some(4001));
}

#[tokio::test]
async fn the_subscribe_proxy_allows_refuses_and_narrows_a_tables_rows() {
    for db in TestDb::all() {
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, owner TEXT, item TEXT)");
        let backend = Backend::start(|call| {
            let topic = call.body["topic"].as_str().unwrap_or_default();
            match (topic, call.body["user"].as_str()) {
                ("orders", Some(user)) => {
                    Reply::json(json!({"result": {"filter": {"owner": {"eq": user}}}}))
                }
                ("chat/closed", _) => {
                    Reply::json(json!({"error": {"code": "not_found", "message": "no such room"}}))
                }
                ("chat/slow", _) => {
                    Reply::json(json!({"result": {}})).after(Duration::from_secs(2))
                }
                _ => Reply::json(json!({"result": {}})),
            }
        });
        let url = backend.url("/subscribe");
        let app = TestApp::spawn_on(db, move |c| {
            c.proxy_subscribe_url = Some(url);
            c.proxy_timeout_ms = 500;
        })
        .await;
        let mut ann = app.client_as("ann").await;
        assert_eq!(ann.subscribe("orders").await["type"], "subscribed");
        let closed = ann
            .request(json!({"type": "subscribe", "topic": "chat/closed"}))
            .await;
        assert_eq!(
            (&closed["code"], &closed["message"]),
            (&json!("not_found"), &json!("no such room"))
        );
        let slow = ann
            .request(json!({"type": "subscribe", "topic": "chat/slow"}))
            .await;
        assert_eq!(slow["code"], "unavailable", "{slow}");

        // Ann sees only her rows: the backend's filter is forced.
        app.db
            .shell("INSERT INTO orders VALUES (1, 'bob', 'kettle')");
        app.db
            .shell("INSERT INTO orders VALUES (2, 'ann', 'teapot')");
        let change = ann.recv().await;
        assert_eq!(
            change["data"]["item"],
            "teapot",
            "on {}: {change}",
            app.db.backend()
        );
        ann.expect_silence(Duration::from_millis(300)).await;

        let asked = backend.calls("/subscribe");
        assert_eq!(asked[0].body["user"], "ann");
        assert_eq!(asked[0].body["conn"], ann.welcome["conn"]);
    }
}

#[tokio::test]
async fn the_publish_proxy_passes_rewrites_or_refuses_and_keeps_one_connections_order() {
    let backend = Backend::start(|call| {
        let data = &call.body["data"];
        // Random-looking delays, so answers come back out of order.
        let n = data["n"].as_u64().unwrap_or(0);
        let delay = Duration::from_millis((n * 37) % 90);
        let reply = match data["text"].as_str() {
            Some(text) if text.contains("darn") => {
                json!({"result": {"data": {"text": text.replace("darn", "****"), "n": n}}})
            }
            Some("spam") => json!({"error": {"code": "forbidden", "message": "no spam"}}),
            _ => json!({"result": {}}),
        };
        Reply::json(reply).after(delay)
    });
    let url = backend.url("/publish");
    let app = TestApp::spawn_with(move |c| {
        c.proxy_publish_url = Some(url);
        c.max_publish_rate = 10_000;
    })
    .await;
    let mut ann = app.client_as("ann").await;
    ann.subscribe("chat/room").await;
    let mut bob = app.client_as("bob").await;
    bob.subscribe("chat/room").await;

    // 50 publishes sent at once.
    for n in 0..50u64 {
        let text = match n {
            7 => "spam".to_string(),
            9 => "darn it".to_string(),
            _ => format!("message {n}"),
        };
        ann.send(json!({"type": "publish", "topic": "chat/room", "event": "m", "data": {"text": text, "n": n}, "ref": n}))
            .await;
    }
    let mut acks = Vec::new();
    let mut refused = Vec::new();
    while acks.len() + refused.len() < 50 {
        let frame = ann.recv().await;
        match frame["type"].as_str() {
            Some("ack") => acks.push(frame["ref"].as_u64().unwrap()),
            Some("error") => refused.push((frame["ref"].as_u64().unwrap(), frame["code"].clone())),
            _ => {}
        }
    }
    let expected: Vec<u64> = (0..50).filter(|n| *n != 7).collect();
    assert_eq!(acks, expected, "every ack once, in the order sent");
    assert_eq!(refused, vec![(7, json!("forbidden"))]);
    let mut heard = Vec::new();
    while heard.len() < 49 {
        let event = bob.recv().await;
        heard.push((
            event["data"]["n"].as_u64().unwrap(),
            event["data"]["text"].clone(),
        ));
    }
    assert_eq!(
        heard.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        expected,
        "delivered in the order sent"
    );
    assert_eq!(
        heard[8],
        (9, json!("**** it")),
        "the backend's data went out"
    );
    assert_eq!(backend.calls("/publish").len(), 50);
}
