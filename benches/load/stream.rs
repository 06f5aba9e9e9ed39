//! Token streams (`stream`): an LLM-like stream of tokens to many viewers,
//! and what late joiners get.

use super::*;

pub(super) async fn stream(viewers: usize, rate: u64, tokens: u64) {
    let server = Server::start().await;
    let topic = "bench/stream";
    let mut sockets = Vec::with_capacity(viewers);
    for _ in 0..viewers {
        let mut ws = connect(&server.addr).await;
        subscribe(&mut ws, topic).await;
        sockets.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(tokens / rate + 20);
    let sockets: Vec<std::net::TcpStream> = sockets.into_iter().map(raw_socket).collect();
    // The viewers are read on a thread of their own, as in `fanout`, so the
    // body's tokens leave on time from the runtime.
    let reader = std::thread::spawn(move || {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut finished = 0;
        read_all(sockets, Framing::WebSocket, deadline, |frame| {
            let done = br#""event":"ai:done""#;
            if frame.windows(done.len()).any(|w| w == done) {
                finished += 1;
                return finished < viewers;
            }
            // The token is the send time in ns: `"token":123...`.
            if let Some(sent) = number_after(frame, br#""token":"#) {
                latencies.saturating_record((now_ns().saturating_sub(sent) / 1000).max(1));
            }
            true
        });
        latencies
    });
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let body = futures_util::stream::unfold(0u64, move |i| async move {
        if i == tokens {
            return None;
        }
        tokio::time::sleep_until((started + period * i as u32).into()).await;
        Some((Ok::<_, std::io::Error>(format!("{}\n", now_ns())), i + 1))
    });
    let c0 = server.cpu_exact();
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/realtime/stream?topic={topic}",
            server.addr
        ))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let merged = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let cpu = server.cpu_exact() - c0;
    println!("stream: {viewers} viewers, {tokens} tokens at {rate}/s");
    println!(
        "  received       {} of {}",
        merged.len(),
        tokens * viewers as u64
    );
    println!(
        "  token->viewer  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        merged.value_at_quantile(0.5) as f64 / 1000.0,
        merged.value_at_quantile(0.9) as f64 / 1000.0,
        merged.value_at_quantile(0.99) as f64 / 1000.0,
        merged.max() as f64 / 1000.0
    );
    println!(
        "  server CPU     {:.0}% of a core",
        cpu / started.elapsed().as_secs_f64() * 100.0
    );
}
