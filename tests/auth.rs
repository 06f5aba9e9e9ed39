//! Tokens: where they are read from, refusals before the upgrade, the
//! `realtime` claim's patterns, swapping tokens, expiry.

mod common;

use std::time::Duration;

use common::{Client, TestApp};
use realtide::auth::token::sign;
use serde_json::{Map, Value, json};

const SECRET: &str = "test-secret-that-is-32-bytes-long";

fn token_for(sub: &str, claims: Value) -> String {
    common::token_for(SECRET, sub, claims)
}

async fn secured() -> TestApp {
    TestApp::spawn_with(|c| c.jwt_secret = Some(SECRET.into())).await
}

#[tokio::test]
async fn a_token_is_read_from_the_query_the_header_or_the_subprotocol() {
    let app = secured().await;
    let token = token_for("ann", json!({}));

    let by_query = Client::connect(&app.ws_url(&format!("?token={token}&userId=mallory"))).await;
    assert_eq!(
        by_query.welcome["userId"], "ann",
        "the token's sub wins over userId"
    );

    let bearer = format!("Bearer {token}");
    let by_header =
        Client::connect_request(&app.ws_url(""), &[("Authorization", bearer.as_str())]).await;
    assert_eq!(by_header.unwrap().welcome["userId"], "ann");

    let protocols = format!("aerostack-token.{token}, aerostack-v1");
    let by_protocol = Client::connect_request(
        &app.ws_url(""),
        &[("Sec-WebSocket-Protocol", protocols.as_str())],
    )
    .await;
    assert_eq!(by_protocol.unwrap().welcome["userId"], "ann");

    // Without aerostack-v1 offered, the token subprotocol still counts.
    let alone = format!("aerostack-token.{token}");
    let only_token = Client::connect_request(
        &app.ws_url(""),
        &[("Sec-WebSocket-Protocol", alone.as_str())],
    )
    .await;
    assert!(only_token.is_ok());
}

#[tokio::test]
async fn missing_bad_and_expired_tokens_are_refused_with_401_before_the_upgrade() {
    let app = secured().await;
    let expired = {
        let mut claims = Map::new();
        claims.insert("exp".into(), json!(1_700_000_000));
        sign(SECRET, "ann", Duration::ZERO, claims).unwrap()
    };
    let wrong_secret = sign("another-secret", "ann", Duration::from_secs(60), Map::new()).unwrap();
    for query in [
        String::new(),
        "?token=garbage".to_string(),
        format!("?token={expired}"),
        format!("?token={wrong_secret}"),
    ] {
        let refused = Client::connect_request(&app.ws_url(&query), &[]).await;
        let (status, body) = refused
            .err()
            .unwrap_or_else(|| panic!("{query} was accepted"));
        assert_eq!(status, 401, "{query}");
        assert_eq!(body["error"]["code"], "unauthorized", "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[tokio::test]
async fn the_realtime_claim_limits_subscribing_and_publishing() {
    let app = secured().await;
    let token = token_for(
        "ann",
        json!({"realtime": {"subscribe": ["chat/*", "news/main"], "publish": ["chat/*"]}}),
    );
    let mut client = Client::connect(&app.ws_url(&format!("?token={token}"))).await;

    client.subscribe("chat/a").await;
    client.subscribe("chat/a/b").await;
    client.subscribe("news/main").await;
    for topic in ["news/other", "chat", "orders"] {
        let reply = client
            .request(json!({"type": "subscribe", "topic": topic}))
            .await;
        assert_eq!(reply["code"], "forbidden", "{topic}");
    }
    let ack = client
        .request(json!({"type": "publish", "topic": "chat/a", "event": "m", "data": 1}))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(client.recv().await["type"], "event", "its own echo");
    let refused = client
        .request(json!({"type": "publish", "topic": "news/main", "event": "m", "data": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
}

#[tokio::test]
async fn a_claim_without_a_publish_list_allows_no_publishing() {
    let app = secured().await;
    let token = token_for("ann", json!({"realtime": {"subscribe": ["*"]}}));
    let mut client = Client::connect(&app.ws_url(&format!("?token={token}"))).await;
    client.subscribe("any/topic").await;
    let refused = client
        .request(json!({"type": "publish", "topic": "any/topic", "event": "m", "data": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
}

#[tokio::test]
async fn an_auth_frame_swaps_the_token_and_ends_subscriptions_it_no_longer_allows() {
    let app = secured().await;
    let broad = token_for("ann", json!({}));
    let mut client = Client::connect(&app.ws_url(&format!("?token={broad}"))).await;
    client.subscribe("chat/a").await;
    client.subscribe("admin/alerts/realtide").await;

    let narrow = token_for(
        "ann",
        json!({"realtime": {"subscribe": ["chat/*"], "publish": []}}),
    );
    client
        .send(json!({"type": "auth", "token": narrow, "ref": "swap"}))
        .await;
    let ended = client.recv().await;
    assert_eq!(
        ended,
        json!({"type": "unsubscribed", "topic": "admin/alerts/realtide", "reason": "forbidden"}),
        "named as the client spelled it"
    );
    assert_eq!(client.recv().await, json!({"type": "ack", "ref": "swap"}));

    let mut publisher = app.client_with_token(&token_for("ops", json!({}))).await;
    publisher.publish("admin/alerts", "a", json!(1)).await;
    publisher.publish("chat/a", "m", json!(2)).await;
    let event = client.recv().await;
    assert_eq!(
        (event["topic"].clone(), event["data"].clone()),
        (json!("chat/a"), json!(2))
    );
}

#[tokio::test]
async fn an_auth_frame_for_another_identity_or_a_bad_token_changes_nothing() {
    let app = secured().await;
    let mut client =
        Client::connect(&app.ws_url(&format!("?token={}", token_for("ann", json!({}))))).await;
    let reply = client
        .request(json!({"type": "auth", "token": token_for("bob", json!({}))}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    let reply = client
        .request(json!({"type": "auth", "token": "garbage"}))
        .await;
    assert_eq!(reply["code"], "unauthorized");
    client.subscribe("still/works").await;
}

#[tokio::test]
async fn an_expiring_token_closes_with_4001_unless_refreshed() {
    let app = secured().await;
    let short = sign(SECRET, "ann", Duration::from_secs(2), Map::new()).unwrap();
    let mut expiring = Client::connect(&app.ws_url(&format!("?token={short}"))).await;
    let mut refreshed = Client::connect(&app.ws_url(&format!("?token={short}"))).await;
    let fresh = token_for("ann", json!({}));
    let ack = refreshed
        .request(json!({"type": "auth", "token": fresh}))
        .await;
    assert_eq!(ack["type"], "ack");

    let error = expiring.recv().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(
        expiring.closed_code(Duration::from_secs(8)).await,
        Some(4001)
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        refreshed.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn in_open_mode_an_auth_frame_is_acknowledged() {
    let app = TestApp::spawn().await;
    let mut client = app.client_as("ann").await;
    let reply = client
        .request(json!({"type": "auth", "token": "anything"}))
        .await;
    assert_eq!(reply["type"], "ack");
}

#[tokio::test]
async fn nbf_is_honoured_and_aud_is_checked_only_against_a_configured_audience() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let app = secured().await;
    let not_yet = token_for("ann", json!({"nbf": now + 60}));
    let refused = Client::connect_request(&app.ws_url(&format!("?token={not_yet}")), &[]).await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(401));
    let with_aud = token_for("ann", json!({"aud": "shop"}));
    let client = app.client_with_token(&with_aud).await;
    assert_eq!(
        client.welcome["userId"], "ann",
        "no audience configured: ignored"
    );

    let strict = TestApp::spawn_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_audience = Some("shop".into());
    })
    .await;
    strict.client_with_token(&with_aud).await;
    for token in [
        token_for("ann", json!({"aud": "blog"})),
        token_for("ann", json!({})),
    ] {
        let refused =
            Client::connect_request(&strict.ws_url(&format!("?token={token}")), &[]).await;
        assert_eq!(refused.err().map(|(status, _)| status), Some(401));
    }
}

/// A server with a secret and one API key whose grants allow `chat/*` only.
async fn keyed() -> TestApp {
    TestApp::spawn_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api_keys = Some("key-one, key-two".into());
        c.api_key_grants = Some(r#"{"subscribe":["chat/*"],"publish":["chat/*"]}"#.into());
    })
    .await
}

#[tokio::test]
async fn an_api_key_alone_connects_with_the_keys_grants_as_the_python_and_go_sdks_do() {
    let app = keyed().await;
    // As sdk-python and sdk-go connect: the key as a subprotocol beside aerostack-v1.
    let protocols = "aerostack-v1, aerostack-key.key-one";
    let mut client =
        Client::connect_request(&app.ws_url(""), &[("sec-websocket-protocol", protocols)])
            .await
            .expect("a known key is enough");
    assert_eq!(
        client.welcome["userId"],
        Value::Null,
        "a key carries no identity"
    );
    client.subscribe("chat/room").await;
    let refused = client
        .request(json!({"type": "subscribe", "topic": "news/x"}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let ack = client.publish("chat/room", "m", json!(1)).await;
    assert_eq!(ack["type"], "ack");
    // The query's apiKey and the X-Aerostack-Key header work the same.
    Client::connect_request(&app.ws_url("?apiKey=key-two"), &[])
        .await
        .expect("apiKey in the query");
    Client::connect_request(&app.ws_url(""), &[("x-aerostack-key", "key-one")])
        .await
        .expect("the X-Aerostack-Key header");
}

#[tokio::test]
async fn an_unknown_key_is_refused_even_beside_a_valid_token_and_a_token_decides_identity() {
    let app = keyed().await;
    let token = token_for("ann", json!({}));
    let refused =
        Client::connect_request(&app.ws_url(&format!("?token={token}&apiKey=nope")), &[]).await;
    let (status, body) = refused.err().expect("refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = Client::connect_request(&app.ws_url(""), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "neither key nor token while a secret is set");
    let mut ann =
        Client::connect_request(&app.ws_url(&format!("?token={token}&apiKey=key-one")), &[])
            .await
            .expect("a known key and a token");
    assert_eq!(ann.welcome["userId"], "ann");
    ann.subscribe("news/x").await;
}

#[tokio::test]
async fn the_history_endpoint_takes_the_key_as_x_aerostack_key() {
    let app = keyed().await;
    let read = |room: &'static str, key: &'static str| {
        let url = app.url(&format!("/api/v1/public/realtime/history?room={room}"));
        let request = app.http().get(url).header("X-Aerostack-Key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(read("chat/room", "key-one").await, 200);
    assert_eq!(
        read("news/x", "key-one").await,
        403,
        "the key's patterns limit reads"
    );
    assert_eq!(read("chat/room", "nope").await, 401);
}

#[tokio::test]
async fn without_configured_keys_a_key_is_accepted_and_ignored() {
    let app = TestApp::spawn().await;
    let client = Client::connect_request(&app.ws_url("?apiKey=whatever&userId=bo"), &[])
        .await
        .expect("accepted");
    assert_eq!(client.welcome["userId"], "bo");
}

#[tokio::test]
async fn the_check_endpoint_says_what_the_handshake_would_answer() {
    let app = secured().await;
    let (status, body) = app.get_json("/api/realtime/check").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = app.get_json("/api/realtime/check?token=garbage").await;
    assert_eq!(status, 401);
    let token = token_for("ann", json!({}));
    let (status, body) = app
        .get_json(&format!("/api/realtime/check?token={token}"))
        .await;
    assert_eq!((status, body), (200, json!({"ok": true, "userId": "ann"})));
    let (status, body) = app
        .get_json(&format!(
            "/api/realtime/check?token={token}&projectId=other"
        ))
        .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
}
