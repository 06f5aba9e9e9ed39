//! Token streaming: a backend streams NDJSON into a topic; every line reaches
//! subscribers as it arrives, and late joiners catch up with no gap.

mod common;

use std::time::Duration;

use common::{Client, TestApp};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Starts a streaming POST whose body is fed line by line through the sender.
fn start_stream(
    app: &TestApp,
    query: &str,
) -> (mpsc::Sender<String>, tokio::task::JoinHandle<(u16, Value)>) {
    let (tx, rx) = mpsc::channel::<String>(16);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let request = app
        .http()
        .post(app.url(&format!("/api/realtime/stream?{query}")))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let response = tokio::spawn(async move {
        let response = request.await.expect("stream request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    });
    (tx, response)
}

async fn token(client: &mut Client) -> Value {
    let event = client.recv().await;
    assert_eq!(event["event"], "ai:token", "{event}");
    event
}

#[tokio::test]
async fn each_line_is_delivered_before_the_body_ends() {
    let app = TestApp::spawn().await;
    let mut viewer = app.client().await;
    viewer.subscribe("ai/answer").await;
    let (tx, response) = start_stream(&app, "topic=ai/answer");

    tx.send("\"Hel\"\n".into()).await.unwrap();
    let first = token(&mut viewer).await;
    assert_eq!(first["data"]["token"], "Hel");
    assert_eq!(first["data"]["index"], 0);
    let stream_id = first["data"]["stream"].as_str().unwrap().to_string();

    // A value split across chunks, a blank line, and a non-string token.
    tx.send("\"lo".into()).await.unwrap();
    tx.send("\"\n\n{\"t\":1}\n".into()).await.unwrap();
    let second = token(&mut viewer).await;
    assert_eq!(
        (
            second["data"]["token"].clone(),
            second["data"]["index"].clone()
        ),
        (json!("lo"), json!(1))
    );
    assert_eq!(token(&mut viewer).await["data"]["token"], json!({"t": 1}));
    assert!(!response.is_finished(), "the body is still open");

    drop(tx);
    let done = viewer.recv().await;
    assert_eq!(done["event"], "ai:done");
    assert_eq!(done["data"], json!({"stream": stream_id, "count": 3}));
    let (status, body) = response.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, json!({"ok": true, "stream": stream_id, "count": 3}));
}

#[tokio::test]
async fn event_names_can_be_chosen() {
    let app = TestApp::spawn().await;
    let mut viewer = app.client().await;
    viewer.subscribe("ai/custom").await;
    let (tx, response) = start_stream(&app, "topic=ai/custom&event=delta&done=finished");
    tx.send("1\n2".into()).await.unwrap();
    drop(tx);
    assert_eq!(viewer.recv().await["event"], "delta");
    let last = viewer.recv().await;
    assert_eq!(
        (last["event"].clone(), last["data"]["token"].clone()),
        (json!("delta"), json!(2)),
        "a last line without newline counts"
    );
    assert_eq!(viewer.recv().await["event"], "finished");
    assert_eq!(response.await.unwrap().0, 200);
}

#[tokio::test]
async fn a_line_that_is_not_json_ends_the_stream_with_an_error() {
    let app = TestApp::spawn().await;
    let mut viewer = app.client().await;
    viewer.subscribe("ai/broken").await;
    let (tx, response) = start_stream(&app, "topic=ai/broken");
    tx.send("\"ok\"\nnot json\n\"never\"\n".into())
        .await
        .unwrap();
    drop(tx);
    token(&mut viewer).await;
    let done = viewer.recv().await;
    assert_eq!(done["event"], "ai:done");
    assert_eq!(done["data"]["count"], 1);
    assert!(
        done["data"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{done}"
    );
    let (status, body) = response.await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    viewer.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_late_joiner_gets_the_tokens_already_sent_then_the_rest() {
    let app = TestApp::spawn().await;
    let mut early = app.client().await;
    early.subscribe("ai/late").await;
    let (tx, response) = start_stream(&app, "topic=ai/late");
    for n in 0..5 {
        tx.send(format!("{n}\n")).await.unwrap();
        token(&mut early).await;
    }
    let mut late = app.client().await;
    let subscribed = late.subscribe("ai/late").await;
    assert_eq!(subscribed["seq"], 5);
    for n in 5..8 {
        tx.send(format!("{n}\n")).await.unwrap();
    }
    drop(tx);
    let mut seen = Vec::new();
    loop {
        let event = late.recv().await;
        if event["event"] == "ai:done" {
            break;
        }
        seen.push(event["data"]["index"].as_u64().unwrap());
    }
    assert_eq!(seen, (0..8).collect::<Vec<_>>(), "no gap, no repeat");
    assert_eq!(response.await.unwrap().0, 200);

    // Once the stream is over, a newcomer gets no tokens.
    let mut after = app.client().await;
    after.subscribe("ai/late").await;
    after.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn streaming_needs_the_server_key_when_one_is_set() {
    let app = TestApp::spawn_with(|c| c.server_key = Some("k".into())).await;
    let response = app
        .http()
        .post(app.url("/api/realtime/stream?topic=a/b"))
        .body("\"x\"\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .http()
        .post(app.url("/api/realtime/stream?topic=a/b"))
        .bearer_auth("k")
        .body("\"x\"\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = {
        let r = app
            .http()
            .post(app.url("/api/realtime/stream?topic=orders"))
            .bearer_auth("k")
            .body("1\n")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 403, "tables take no streams");
}
