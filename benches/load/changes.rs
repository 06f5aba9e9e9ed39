//! Table changes (`changes`): writes to a table by another connection, and
//! how soon and how fast their changes reach a subscriber.

use super::*;

pub(super) async fn changes(backend: &str, rows: u64, writes: u64, rate: u64, postgres_url: &str) {
    use diesel::connection::SimpleConnection;
    let mut scratch = ScratchDb::new(backend, postgres_url);
    {
        let mut conn = realtide::db::connect(&scratch.url).unwrap();
        create_bench_rows(&mut conn, backend, rows);
    }
    let server = Server::start_on(&scratch.url, scratch.dir.take()).await;
    let mut ws = connect(&server.addr).await;
    subscribe(&mut ws, "bench_rows").await;

    // Idle: subscribed, nothing written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_window = Duration::from_secs(10);
    let c0 = server.cpu_exact();
    tokio::time::sleep(idle_window).await;
    let idle_percent = (server.cpu_exact() - c0) / idle_window.as_secs_f64() * 100.0;

    // Writes from a connection of the bench's own, as an external program would.
    let url = scratch.url.clone();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let writer = std::thread::spawn(move || {
        let mut conn = realtide::db::connect(&url).unwrap();
        let mut committed = HashMap::new();
        let started = Instant::now();
        for i in 0..writes {
            let due = started + period * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let id = 1 + (i * 7919) % rows;
            let sent = now_ns();
            conn.batch_execute(&format!(
                "UPDATE bench_rows SET value = value + 1, sent_ns = {sent} WHERE id = {id}"
            ))
            .unwrap();
            committed.insert(sent, now_ns());
        }
        committed
    });
    let c2 = server.cpu_exact();
    let writing_started = Instant::now();
    let mut received = Vec::with_capacity(writes as usize);
    let deadline = Instant::now() + period * writes as u32 + Duration::from_secs(10);
    while (received.len() as u64) < writes {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(left, ws.next()).await else {
            break;
        };
        if let Some(start) = text.find(r#""sent_ns":"#) {
            let digits: String = text[start + 10..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            received.push((digits.parse::<u64>().unwrap(), now_ns()));
        }
    }
    let busy = server.cpu_exact() - c2;
    let writing_elapsed = writing_started.elapsed();
    let committed = writer.join().unwrap();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for (sent, arrived) in &received {
        if let Some(commit) = committed.get(sent) {
            latency.saturating_record((arrived.saturating_sub(*commit) / 1000).max(1));
        }
    }
    println!(
        "changes: {backend}, {rows} rows, {writes} single-row UPDATEs at {rate}/s by an external writer"
    );
    println!("  delivered      {} of {writes}", received.len());
    println!("  commit->client {}", percentiles(&latency));
    println!(
        "  tracker idle   {idle_percent:.2}% of a core (server subscribed, nothing written, {}s)",
        idle_window.as_secs()
    );
    let idle_share = idle_percent / 100.0 * writing_elapsed.as_secs_f64();
    let changes = received.len().max(1) as f64;
    println!(
        "  server CPU     {:.0} µs per change while writing; {:.0} µs above the idle loop",
        busy * 1e6 / changes,
        (busy - idle_share).max(0.0) * 1e6 / changes
    );
    drop(server);
}
