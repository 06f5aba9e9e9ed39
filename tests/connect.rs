//! Connecting: the welcome frame, credentials, refusals before the upgrade,
//! liveness, frame limits.

mod common;

use std::time::Duration;

use common::{Client, Incoming, TestApp};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;

#[tokio::test]
async fn the_first_frame_is_a_welcome_with_the_configured_limits() {
    let app = TestApp::spawn_with(|c| {
        c.idle_timeout_ms = 30_000;
        c.max_frame_bytes = 4096;
    })
    .await;
    let client = app.client_as("ann").await;
    let welcome = &client.welcome;
    assert_eq!(welcome["userId"], "ann");
    assert_eq!(welcome["idle_timeout_ms"], 30_000);
    assert_eq!(welcome["max_frame"], 4096);
    assert!(welcome["conn"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(welcome["node"].as_str().is_some_and(|n| !n.is_empty()));

    let anonymous = app.client().await;
    assert_eq!(anonymous.welcome["userId"], json!(null));
    assert_ne!(
        anonymous.welcome["conn"], welcome["conn"],
        "each connection has its own id"
    );
}

#[tokio::test]
async fn ping_frames_get_pong_with_their_ref() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let reply = client.request(json!({"type": "ping"})).await;
    assert_eq!(reply["type"], "pong");
    client.send(json!({"type": "ping"})).await;
    let reply = client.recv().await;
    assert_eq!(reply, json!({"type": "pong"}), "no ref, no ref field");
    client.send(json!({"type": "ping", "ref": 42})).await;
    assert_eq!(client.recv().await, json!({"type": "pong", "ref": 42}));
}

#[tokio::test]
async fn a_plain_get_is_answered_400_with_a_json_error() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/api/realtime").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().is_some());
}

#[tokio::test]
async fn an_upgrade_to_any_other_path_is_refused_with_404() {
    let app = TestApp::spawn().await;
    let refused = Client::connect_request(&format!("ws://{}/api/elsewhere", app.addr), &[]).await;
    let (status, body) = refused.err().expect("refused");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

/// A client may send its first frame in the same write as its handshake:
/// the server must not lose the bytes that arrived behind the request.
#[tokio::test]
async fn a_frame_sent_right_behind_the_handshake_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let frame = br#"{"type":"ping","ref":7}"#;
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut bytes = format!(
        "GET /api/realtime HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        app.addr
    )
    .into_bytes();
    bytes.extend([0x81, 0x80 | frame.len() as u8]);
    bytes.extend(mask);
    bytes.extend(frame.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&bytes).await.unwrap();

    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(r#""type":"pong""#) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("a pong");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 101"), "{seen}");
    assert!(seen.find("welcome") < seen.find("pong"), "{seen}");
    assert!(seen.contains(r#""ref":7"#), "{seen}");
}

#[tokio::test]
async fn the_handshake_selects_the_aerostack_subprotocol() {
    let app = TestApp::spawn().await;
    let mut request = app.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "aerostack-key.abc, aerostack-token.xyz, aerostack-v1"
            .parse()
            .unwrap(),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(response.headers()["sec-websocket-protocol"], "aerostack-v1");
}

#[tokio::test]
async fn a_project_other_than_the_servers_is_refused_with_403() {
    let app = TestApp::spawn_with(|c| c.project_id = "shop".into()).await;
    let refused = Client::connect_request(&app.ws_url("?projectId=other"), &[]).await;
    let (status, body) = refused.err().expect("refused");
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        Client::connect_request(&app.ws_url("?projectId=shop"), &[])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn binary_frames_are_answered_with_bad_request_and_the_connection_stays() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.send_binary(vec![1, 2, 3]).await;
    let error = client.recv().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_request");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn a_message_of_exactly_max_frame_is_accepted_and_one_byte_more_closes_1009() {
    let app = TestApp::spawn_with(|c| c.max_frame_bytes = 1024).await;
    let mut client = app.client().await;
    let frame_of = |len: usize| {
        let skeleton = json!({"type": "ping", "ref": "x", "pad": ""}).to_string();
        let pad = "a".repeat(len - skeleton.len());
        json!({"type": "ping", "ref": "x", "pad": pad}).to_string()
    };
    let exact = frame_of(1024);
    assert_eq!(exact.len(), 1024);
    client.send_raw(Message::text(exact)).await;
    assert_eq!(client.recv().await["type"], "pong");

    client.send_raw(Message::text(frame_of(1025))).await;
    assert_eq!(client.closed_code(common::WAIT).await, Some(1009));
}

#[tokio::test]
async fn a_fragmented_message_is_reassembled_and_its_whole_size_counts() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let app = TestApp::spawn_with(|c| c.max_frame_bytes = 1024).await;
    let mut client = app.client().await;
    let text = json!({"type": "ping", "ref": "frag"}).to_string();
    let (a, b) = text.split_at(10);
    let first = Frame::message(a.as_bytes().to_vec(), OpCode::Data(Data::Text), false);
    let last = Frame::message(b.as_bytes().to_vec(), OpCode::Data(Data::Continue), true);
    client.send_raw(Message::Frame(first)).await;
    client.send_raw(Message::Frame(last)).await;
    assert_eq!(client.recv().await, json!({"type": "pong", "ref": "frag"}));

    // Three fragments of 600 bytes: each fits, the message does not.
    let chunk = vec![b' '; 600];
    client
        .send_raw(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    client
        .send_raw(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    let _ = client
        .ws
        .send(Message::Frame(Frame::message(
            chunk,
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(client.closed_code(common::WAIT).await, Some(1009));
}

#[tokio::test]
async fn a_silent_connection_is_closed_with_4000_and_a_talking_one_is_not() {
    let app = TestApp::spawn_with(|c| c.idle_timeout_ms = 900).await;
    let mut silent = app.client().await;
    let mut talking = app.client().await;
    // `silent` is not even read, so it answers none of the server's pings;
    // `talking` sends application pings meanwhile.
    for _ in 0..6 {
        talking.send(json!({"type": "ping"})).await;
        assert_eq!(talking.recv().await["type"], "pong");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(silent.closed_code(Duration::from_secs(2)).await, Some(4000));
    assert_eq!(
        talking.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn a_client_that_only_answers_websocket_pings_stays_open() {
    let app = TestApp::spawn_with(|c| c.idle_timeout_ms = 600).await;
    let mut client = app.client().await;
    // tokio-tungstenite answers the server's pings while we read; we send nothing else.
    if let Some(incoming) = client.next_within(Duration::from_millis(1500)).await {
        panic!("expected no frame and no close, got {incoming:?}");
    }
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_nothing_is_lost() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    for bad in [
        "not json".to_string(),
        "[1]".to_string(),
        json!({"type": "dance", "ref": 1}).to_string(),
        json!({"type": "subscribe", "ref": 2}).to_string(),
        json!({"type": "subscribe", "topic": 7, "ref": 3}).to_string(),
        json!({"type": "publish", "topic": "a/b", "event": "e", "ref": 4}).to_string(),
    ] {
        client.send_raw(Message::text(bad.clone())).await;
        let error = client.recv().await;
        assert_eq!(error["type"], "error", "{bad}");
        assert_eq!(error["code"], "bad_request", "{bad}");
    }
    let reply = client.request(json!({"type": "ping"})).await;
    assert_eq!(reply["type"], "pong");
}

#[tokio::test]
async fn an_error_carries_the_requests_ref_and_topic() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .send(json!({"type": "subscribe", "topic": "bad topic/x", "ref": "s1"}))
        .await;
    let error = client.recv().await;
    assert_eq!(error["ref"], "s1");
    assert_eq!(error["topic"], "bad topic/x");
    assert_eq!(error["code"], "bad_request");
}

#[tokio::test]
async fn bad_refs_are_bad_requests() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    for bad_ref in [json!(1.5), json!(null), json!([1]), json!("x".repeat(65))] {
        client.send(json!({"type": "ping", "ref": bad_ref})).await;
        let error = client.recv().await;
        assert_eq!(error["code"], "bad_request", "{bad_ref}");
        assert!(error.get("ref").is_none());
    }
}

#[tokio::test]
async fn a_closing_client_gets_its_close_answered() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.send_raw(Message::Close(None)).await;
    match client.next().await {
        Incoming::Closed(_) => {}
        other => panic!("expected the close to be answered, got {other:?}"),
    }
}
