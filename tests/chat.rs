//! The SDKs' legacy `sendChat`: a `chat` request is a persisted publish to
//! `chat/<roomId>`, delivered (and replayed) as `chat_message` frames.

mod common;

use common::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_chat_frame_is_stored_delivered_as_chat_message_and_kept_in_history() {
    let app = TestApp::spawn().await;
    let mut bob = app.client_as("bob").await;
    bob.subscribe("chat/lobby").await;
    let mut ann = app.client_as("ann").await;
    let ack = ann
        .request(json!({"type": "chat", "roomId": "lobby", "text": "hello"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["message_id"]
        .as_str()
        .expect("a message id")
        .to_string();
    let delivered = bob.recv().await;
    assert_eq!(
        delivered,
        json!({"type": "chat_message", "topic": "chat/lobby", "event": "chat",
               "data": {"text": "hello", "metadata": null}, "userId": "ann",
               "timestamp": delivered["timestamp"], "seq": ack["seq"], "message_id": id})
    );
    ann.request(
        json!({"type": "chat", "roomId": "lobby", "text": "again", "metadata": {"mood": "glad"}}),
    )
    .await;
    assert_eq!(
        bob.recv().await["data"]["metadata"],
        json!({"mood": "glad"})
    );
    let history = bob
        .request(json!({"type": "history", "topic": "chat/lobby"}))
        .await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["id"], id.as_str());
    assert_eq!(
        messages[0]["data"],
        json!({"text": "again", "metadata": {"mood": "glad"}})
    );
    assert_eq!(messages[0]["event"], "chat");
    // Replayed by `history: N` as chat_message too.
    let mut late = app.client().await;
    late.request(json!({"type": "subscribe", "topic": "chat/lobby", "history": 1}))
        .await;
    let replayed = late.recv().await;
    assert_eq!(replayed["type"], "chat_message");
    assert_eq!(replayed["data"]["text"], "again");
    // Other events on chat topics stay events.
    let plain = ann.publish("chat/lobby", "typing", json!(true)).await;
    assert_eq!(plain["type"], "ack");
    assert_eq!(bob.recv().await["type"], "event");
}

#[tokio::test]
async fn chat_follows_the_publish_patterns_and_wants_one_segment() {
    let app = TestApp::spawn_with(|c| c.jwt_secret = Some(common::SECRET.into())).await;
    let token = common::token_for(
        common::SECRET,
        "ann",
        json!({"realtime": {"publish": ["news/*"], "subscribe": ["*"]}}),
    );
    let mut ann = app.client_with_token(&token).await;
    let refused = ann
        .request(json!({"type": "chat", "roomId": "lobby", "text": "hi"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let bad = ann
        .request(json!({"type": "chat", "roomId": "a/b", "text": "hi"}))
        .await;
    assert_eq!(bad["code"], "bad_request");
    let missing = ann
        .request(json!({"type": "chat", "roomId": "lobby"}))
        .await;
    assert_eq!(missing["code"], "bad_request");
}
