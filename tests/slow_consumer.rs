//! A client that stops reading is closed with 4008 once its backlog passes
//! `--max-pending-bytes`, and everyone else keeps receiving every event.

mod common;

use std::time::Duration;

use common::{Client, Socket, TestApp};
use serde_json::json;
use tokio::net::TcpSocket;

/// A client whose socket receive buffer is tiny, so the server's backlog for
/// it builds up in realtide rather than in the kernel.
async fn tiny_buffered_client(app: &TestApp) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        app.ws_url(""),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let ws: Socket = ws;
    Client::from_socket(ws).await
}

#[tokio::test]
async fn a_reader_too_slow_is_closed_with_4008_and_the_others_get_everything() {
    const EVENTS: usize = 2000;
    const BATCH: usize = 20;
    // Well above one batch (20 x 8 KiB), so a reader that keeps up is never
    // cut off however the test machine schedules it; far below the 16 MiB
    // the firehose sends, so a reader that stops is.
    let app = TestApp::spawn_with(|c| c.max_pending_bytes = 2 * 1024 * 1024).await;
    let mut slow = tiny_buffered_client(&app).await;
    slow.subscribe("firehose/x").await;
    let mut fast = app.client().await;
    fast.subscribe("firehose/x").await;

    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < EVENTS {
            let event = fast.recv().await;
            assert_eq!(event["seq"], seen as u64 + 1, "in order, none lost");
            seen += 1;
        }
        seen
    });
    let payload = "x".repeat(8 * 1024);
    for batch in 0..EVENTS / BATCH {
        let messages: Vec<_> = (0..BATCH)
            .map(|i| json!({"topic": "firehose/x", "event": "chunk", "data": {"n": batch * BATCH + i, "pad": payload}}))
            .collect();
        let (status, body) = app.emit(json!({"messages": messages})).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(reader.await.unwrap(), EVENTS);

    // The slow client now reads: what was already on its way, then the close.
    assert_eq!(slow.closed_code(Duration::from_secs(20)).await, Some(4008));
    assert_eq!(app.metric("realtide_slow_consumer_closes_total").await, 1.0);
    // The operator's view: one connection closed for reading too slowly.
    let closes = "realtide_connections_closed_total{reason=\"slow_consumer\"}";
    for _ in 0..100 {
        if app.metric(closes).await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.metric(closes).await, 1.0);
}

#[tokio::test]
async fn a_reader_that_resumes_after_a_pause_still_gets_its_4008_close() {
    let app = TestApp::spawn_with(|c| c.max_pending_bytes = 256 * 1024).await;
    let mut slow = tiny_buffered_client(&app).await;
    slow.subscribe("firehose/late").await;
    let payload = "x".repeat(8 * 1024);
    let mut sent = 0;
    while app.metric("realtide_slow_consumer_closes_total").await < 1.0 {
        let messages: Vec<_> = (0..20)
            .map(|n| json!({"topic": "firehose/late", "event": "chunk", "data": {"n": n, "pad": payload}}))
            .collect();
        let (status, body) = app.emit(json!({"messages": messages})).await;
        assert_eq!(status, 200, "{body}");
        sent += 1;
        assert!(sent < 500, "the reader is never found too slow");
    }
    // Longer than any fixed grace: the close must wait for the reader.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(slow.closed_code(Duration::from_secs(20)).await, Some(4008));
}
