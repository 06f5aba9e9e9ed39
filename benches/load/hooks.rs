//! The app's backend in the loop (`hooks`): connections a second through
//! the connect proxy, publish throughput and ack p99 through the publish
//! proxy, and webhook deliveries a second; each beside the same load with
//! no backend. The backend is an HTTP server in this process that answers
//! at once.

use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

/// Connections opened side by side.
const OPENERS: usize = 8;
/// Publishes in flight on the publishing connection.
const WINDOW: u64 = 64;

/// Calls the bench's backend took: (webhooks, any).
#[derive(Default)]
struct Counts {
    webhooks: AtomicU64,
    calls: AtomicU64,
}

async fn answer(req: HttpRequest, counts: web::Data<Counts>) -> HttpResponse {
    counts.calls.fetch_add(1, Ordering::Relaxed);
    let body = match req.path() {
        "/connect" => r#"{"result":{"user":"bench"}}"#,
        "/hooks" => {
            counts.webhooks.fetch_add(1, Ordering::Relaxed);
            r#"{"ok":true}"#
        }
        _ => r#"{"result":{}}"#,
    };
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

/// The bench's backend on a thread of its own; its base URL and counts.
fn start_backend() -> (String, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = counts.clone();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let data = web::Data::from(served);
            HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .default_service(web::to(answer))
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        })
    });
    (url, counts)
}

/// Opens `n` connections (`OPENERS` at a time), each with the app's
/// session cookie, and keeps them; connections a second.
async fn open_many(addr: &str, n: usize) -> (f64, Vec<Socket>) {
    let started = Instant::now();
    let mut openers = Vec::new();
    for o in 0..OPENERS {
        let addr = addr.to_string();
        let count = n / OPENERS + usize::from(o < n % OPENERS);
        openers.push(tokio::spawn(async move {
            let mut sockets = Vec::with_capacity(count);
            for _ in 0..count {
                let mut request = format!("ws://{addr}/api/realtime")
                    .into_client_request()
                    .unwrap();
                request
                    .headers_mut()
                    .insert("cookie", "session=bench".parse().unwrap());
                let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
                // Open once the welcome came.
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("welcome") => break,
                        Some(Ok(_)) => {}
                        other => panic!("no welcome: {other:?}"),
                    }
                }
                sockets.push(ws);
            }
            sockets
        }));
    }
    let mut sockets = Vec::with_capacity(n);
    for opener in openers {
        sockets.extend(opener.await.unwrap());
    }
    (n as f64 / started.elapsed().as_secs_f64(), sockets)
}

/// `count` publishes on one connection with `WINDOW` in flight: publishes
/// a second, and each ack's latency.
async fn publish_windowed(addr: &str, count: u64) -> (f64, Histogram<u64>) {
    let mut ws = connect(addr).await;
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut sent_at = Vec::with_capacity(count as usize);
    let started = Instant::now();
    let mut acked = 0;
    while acked < count {
        while (sent_at.len() as u64) < count && (sent_at.len() as u64) < acked + WINDOW {
            let i = sent_at.len();
            let frame = format!(
                r#"{{"type":"publish","topic":"bench/hooks","event":"m","data":{{"n":{i}}},"ref":{i}}}"#
            );
            ws.feed(Message::text(frame)).await.unwrap();
            sent_at.push(Instant::now());
        }
        ws.flush().await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"ack""#) => {
                let i = number_after(text.as_bytes(), br#""ref":"#).unwrap() as usize;
                latencies.saturating_record(sent_at[i].elapsed().as_micros() as u64);
                acked += 1;
            }
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => panic!("{text}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
    (count as f64 / started.elapsed().as_secs_f64(), latencies)
}

pub(super) async fn hooks(connections: usize, publishes: u64) {
    let (backend, counts) = start_backend();
    let (connect, publish, webhook) = (
        format!("{backend}/connect"),
        format!("{backend}/publish"),
        format!("{backend}/hooks"),
    );
    let secret = "bench-webhook-secret-of-at-least-32-bytes";

    println!("hooks: {connections} connections opened {OPENERS} at a time");
    for (label, extra) in [
        ("no backend", vec![]),
        (
            "connect proxy",
            vec!["--proxy-connect-url", connect.as_str()],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let server = Server::start_with(&url, Some(dir), &extra).await;
        let (user0, sys0) = server.cpu();
        let (rate, sockets) = open_many(&server.addr, connections).await;
        let (user1, sys1) = server.cpu();
        println!(
            "  {label:<16} {rate:>8.0} connections/s, server CPU {:.0} µs per connection",
            (user1 - user0 + sys1 - sys0) * 1e6 / connections as f64
        );
        drop(sockets);
    }

    println!("hooks: {publishes} publishes on one connection, {WINDOW} in flight");
    for (label, extra) in [
        ("no backend", vec![]),
        (
            "publish proxy",
            vec!["--proxy-publish-url", publish.as_str()],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let server = Server::start_with(&url, Some(dir), &extra).await;
        let (user0, sys0) = server.cpu();
        let (rate, latencies) = publish_windowed(&server.addr, publishes).await;
        let (user1, sys1) = server.cpu();
        println!(
            "  {label:<16} {rate:>8.0} publishes/s, ack {}, server CPU {:.1} µs per publish",
            percentiles(&latencies),
            (user1 - user0 + sys1 - sys0) * 1e6 / publishes as f64
        );
    }

    println!("hooks: {connections} connections opened and closed (two webhooks each)");
    for (label, extra) in [
        ("no backend", vec![]),
        (
            "webhooks",
            vec![
                "--webhook-url",
                webhook.as_str(),
                "--webhook-secret",
                secret,
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let server = Server::start_with(&url, Some(dir), &extra).await;
        let before = counts.webhooks.load(Ordering::Relaxed);
        let started = Instant::now();
        let (rate, sockets) = open_many(&server.addr, connections).await;
        drop(sockets);
        if label == "webhooks" {
            let expected = before + 2 * connections as u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while counts.webhooks.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let got = counts.webhooks.load(Ordering::Relaxed) - before;
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "  {label:<16} {rate:>8.0} connections/s; {got} webhooks delivered in {elapsed:.2} s from the first connection: {:.0} deliveries/s",
                got as f64 / elapsed
            );
        } else {
            println!("  {label:<16} {rate:>8.0} connections/s");
        }
    }
    println!(
        "  (the bench's backend took {} calls in all)",
        counts.calls.load(Ordering::Relaxed)
    );
}
