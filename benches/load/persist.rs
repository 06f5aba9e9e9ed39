//! Persisted publishes (`persist`): ack latency one at a time, throughput
//! back to back, latency at half that rate, and several connections that
//! each keep a window of publishes in flight on one topic, with the
//! server's CPU per ack.

use super::*;

/// Ack round trips of `count` publishes sent one at a time (µs histogram).
async fn ack_latency(ws: &mut Socket, persist: bool, count: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for i in 0..count {
        let frame = format!(
            r#"{{"type":"publish","topic":"bench/persist","event":"m","data":{{"n":{i}}},"persist":{persist},"ref":{i}}}"#
        );
        let sent = Instant::now();
        ws.send(Message::text(frame)).await.unwrap();
        wait_acks(ws, 1).await;
        h.saturating_record(sent.elapsed().as_micros() as u64);
    }
    h
}

async fn wait_acks(ws: &mut Socket, mut count: u64) {
    while count > 0 {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"ack""#) => count -= 1,
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => panic!("{text}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// Publishes/s when `count` publishes are sent back to back.
async fn pipelined(ws: &mut Socket, persist: bool, count: u64, topics: u64) -> f64 {
    let started = Instant::now();
    for i in 0..count {
        let topic = i % topics.max(1);
        let frame = format!(
            r#"{{"type":"publish","topic":"bench/persist-{topic}","event":"m","data":{{"n":{i}}},"persist":{persist}}}"#
        );
        ws.feed(Message::text(frame)).await.unwrap();
    }
    ws.flush().await.unwrap();
    wait_acks(ws, count).await;
    count as f64 / started.elapsed().as_secs_f64()
}

/// Persisted publishes at `rate` a second for `seconds`, round robin over
/// `topics`, each ack's latency from its publish leaving.
async fn paced(ws: &mut Socket, rate: f64, seconds: u64, topics: u64) -> Histogram<u64> {
    let total = (rate * seconds as f64) as u64;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut sent_at = Vec::with_capacity(total as usize);
    let started = Instant::now();
    let mut acked = 0;
    while acked < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        if (sent_at.len() as u64) < due {
            while (sent_at.len() as u64) < due {
                let i = sent_at.len() as u64;
                let topic = i % topics.max(1);
                let frame = format!(
                    r#"{{"type":"publish","topic":"bench/paced-{topic}","event":"m","data":{{"n":{i}}},"persist":true,"ref":{i}}}"#
                );
                ws.feed(Message::text(frame)).await.unwrap();
                sent_at.push(Instant::now());
            }
            ws.flush().await.unwrap();
        }
        match tokio::time::timeout(Duration::from_micros(200), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains(r#""type":"ack""#) => {
                if let Some(i) = number_after(text.as_bytes(), br#""ref":"#) {
                    h.saturating_record(sent_at[i as usize].elapsed().as_micros() as u64);
                }
                acked += 1;
            }
            Ok(Some(Ok(Message::Text(text)))) if text.contains(r#""type":"error""#) => {
                panic!("{text}")
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(other) => panic!("socket ended: {other:?}"),
        }
    }
    h
}

/// `connections` publishers spread over `servers`, each keeping `window`
/// persisted publishes in flight (round robin over `topics`) until it has
/// sent `per_connection`: acks/s, ack latency (µs histogram) and the
/// servers' CPU seconds meanwhile.
async fn windowed(
    servers: &[Server],
    connections: usize,
    window: u64,
    per_connection: u64,
    topics: u64,
) -> (f64, Histogram<u64>, f64) {
    let mut sockets = Vec::new();
    for c in 0..connections {
        sockets.push(connect(&servers[c % servers.len()].addr).await);
    }
    let cpu = || servers.iter().map(Server::cpu_exact).sum::<f64>();
    let cpu_before = cpu();
    let started = Instant::now();
    let publishers = sockets.into_iter().enumerate().map(|(c, mut ws)| {
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut sent_at = Vec::with_capacity(per_connection as usize);
            let mut acked = 0u64;
            while acked < per_connection {
                let mut fed = false;
                while (sent_at.len() as u64) < per_connection
                    && (sent_at.len() as u64) - acked < window
                {
                    let i = sent_at.len();
                    let topic = (i as u64 + c as u64) % topics.max(1);
                    let frame = format!(
                        r#"{{"type":"publish","topic":"bench/window-{topic}","event":"m","data":{{"c":{c},"n":{i}}},"persist":true,"ref":{i}}}"#
                    );
                    ws.feed(Message::text(frame)).await.unwrap();
                    sent_at.push(Instant::now());
                    fed = true;
                }
                if fed {
                    ws.flush().await.unwrap();
                }
                match ws.next().await {
                    Some(Ok(Message::Text(text))) if text.contains(r#""type":"ack""#) => {
                        if let Some(i) = number_after(text.as_bytes(), br#""ref":"#) {
                            h.saturating_record(sent_at[i as usize].elapsed().as_micros() as u64);
                        }
                        acked += 1;
                    }
                    Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => {
                        panic!("{text}")
                    }
                    Some(Ok(_)) => {}
                    other => panic!("socket ended: {other:?}"),
                }
            }
            h
        })
    });
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for publisher in publishers.collect::<Vec<_>>() {
        all.add(publisher.await.unwrap()).unwrap();
    }
    let rate = (connections as u64 * per_connection) as f64 / started.elapsed().as_secs_f64();
    (rate, all, cpu() - cpu_before)
}

const CONNECTIONS: usize = 8;
const WINDOW: u64 = 64;

/// One windowed run's line.
fn windowed_line(label: &str, topics: u64, run: (f64, Histogram<u64>, f64), total: f64) -> f64 {
    let (rate, acks, cpu) = run;
    let ms = |q| acks.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {label:<9} {topics:>3} topic(s)  {rate:>7.0} persisted/s: ack p50 {:.2} ms p99 {:.2} ms; server CPU {:.1} µs per ack (all nodes)",
        ms(0.5),
        ms(0.99),
        cpu / total * 1e6
    );
    rate
}

/// Persisted publishes on `nodes` nodes sharing one Redis and one database,
/// beside one node, interleaved in one run: 8 connections (spread over the
/// nodes) with 64 in flight each, on one topic and on 100.
async fn persist_cluster(
    backend: &str,
    messages: u64,
    nodes: usize,
    runs: usize,
    postgres_url: &str,
) {
    let per_connection = messages / CONNECTIONS as u64;
    let total = CONNECTIONS as f64 * per_connection as f64;
    println!(
        "persist: {backend}, {CONNECTIONS} connections x {WINDOW} in flight, {nodes} nodes beside one, {runs} run(s)"
    );
    let mut ratios: Vec<(u64, f64)> = Vec::new();
    for run in 1..=runs {
        println!("  run {run}");
        for topics in [1u64, 100] {
            let scratch = ScratchDb::new(backend, postgres_url);
            let single = Server::start_on(&scratch.url, None).await;
            let alone = windowed(
                std::slice::from_ref(&single),
                CONNECTIONS,
                WINDOW,
                per_connection,
                topics,
            )
            .await;
            drop(single);
            drop(scratch);
            let scratch = ScratchDb::new(backend, postgres_url);
            let redis = super::fanout::BenchRedis::start();
            let redis_url = format!("redis://127.0.0.1:{}", redis.port);
            let mut cluster = Vec::new();
            for n in 0..nodes {
                let id = format!("bench-{n}");
                let extra = ["--redis-url", redis_url.as_str(), "--node-id", id.as_str()];
                cluster.push(Server::start_with(&scratch.url, None, &extra).await);
            }
            let together = windowed(&cluster, CONNECTIONS, WINDOW, per_connection, topics).await;
            let one = windowed_line("one node", topics, alone, total);
            let many = windowed_line(&format!("{nodes} nodes"), topics, together, total);
            ratios.push((topics, many / one));
            drop(cluster);
        }
    }
    for topics in [1u64, 100] {
        let of: Vec<String> = ratios
            .iter()
            .filter(|(t, _)| *t == topics)
            .map(|(_, r)| format!("{r:.2}x"))
            .collect();
        println!(
            "  {nodes} nodes / one node, {topics} topic(s): {}",
            of.join(", ")
        );
    }
}

/// What `persist` measures.
pub(super) struct Shape {
    pub messages: u64,
    pub topics: u64,
    pub nodes: usize,
    pub runs: usize,
    pub windowed_only: bool,
}

pub(super) async fn persist(backend: &str, shape: Shape, postgres_url: &str) {
    let Shape {
        messages,
        topics,
        nodes,
        runs,
        windowed_only,
    } = shape;
    if nodes > 1 {
        return persist_cluster(backend, messages, nodes, runs, postgres_url).await;
    }
    let mut scratch = ScratchDb::new(backend, postgres_url);
    let server = Server::start_on(&scratch.url, scratch.dir.take()).await;
    if windowed_only {
        println!("persist: {backend}, {CONNECTIONS} connections x {WINDOW} in flight on one topic");
        let per_connection = messages / CONNECTIONS as u64;
        let total = CONNECTIONS as f64 * per_connection as f64;
        for run in 1..=runs {
            let result = windowed(
                std::slice::from_ref(&server),
                CONNECTIONS,
                WINDOW,
                per_connection,
                1,
            )
            .await;
            windowed_line(&format!("run {run}"), 1, result, total);
        }
        return;
    }
    let mut ws = connect(&server.addr).await;
    let plain = ack_latency(&mut ws, false, messages / 4).await;
    let stored = ack_latency(&mut ws, true, messages / 4).await;
    let plain_rate = pipelined(&mut ws, false, messages, topics).await;
    let stored_rate = pipelined(&mut ws, true, messages, topics).await;
    // Half the rate just sustained, the load a deployment is sized for.
    let half = paced(&mut ws, stored_rate / 2.0, 3, topics).await;
    let ms = |h: &Histogram<u64>, q| h.value_at_quantile(q) as f64 / 1000.0;
    println!("persist: {backend}, {topics} topic(s), one publisher");
    println!(
        "  ack latency    plain p50 {:.2} ms p99 {:.2} ms; persisted p50 {:.2} ms p99 {:.2} ms (added p50 {:.2} ms)",
        ms(&plain, 0.5),
        ms(&plain, 0.99),
        ms(&stored, 0.5),
        ms(&stored, 0.99),
        ms(&stored, 0.5) - ms(&plain, 0.5)
    );
    println!(
        "  throughput     plain {plain_rate:.0}/s; persisted {stored_rate:.0}/s ({messages} back to back)"
    );
    println!(
        "  at half that   {:.0} persisted/s for 3 s: ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        stored_rate / 2.0,
        ms(&half, 0.5),
        ms(&half, 0.99),
        half.max() as f64 / 1000.0
    );
    let per_connection = messages / CONNECTIONS as u64;
    let (rate, acks, cpu) = windowed(
        std::slice::from_ref(&server),
        CONNECTIONS,
        WINDOW,
        per_connection,
        1,
    )
    .await;
    let total = CONNECTIONS as f64 * per_connection as f64;
    println!(
        "  {CONNECTIONS} x {WINDOW} in flight  {rate:.0} persisted/s on one topic: ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms; server CPU {:.1} µs per ack",
        ms(&acks, 0.5),
        ms(&acks, 0.99),
        acks.max() as f64 / 1000.0,
        cpu / total * 1e6
    );
    drop(server);
}
