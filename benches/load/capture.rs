//! `capture`: what table capture costs the application's own writes, and
//! how fast and how promptly its commits reach a subscriber, for each
//! capture mode of a backend, side by side in one run.
//!
//! ```text
//! cargo bench --bench load -- capture --backend postgres
//! cargo bench --bench load -- capture --backend sqlite --rows 50000 --commits 500
//! ```

use super::*;

use diesel::connection::SimpleConnection;

pub struct CaptureLoad {
    pub backend: String,
    pub rows: u64,
    pub commits: u64,
    pub quiet_s: u64,
    pub postgres_url: String,
}

#[derive(Default)]
struct CaptureReport {
    bulk_untracked_s: f64,
    bulk_tracked_s: f64,
    single_untracked: f64,
    single_tracked: f64,
    /// After the single-row writers stopped, until their last change arrived.
    catch_up_s: f64,
    delivery_per_s: f64,
    latency: String,
    lone_ms: f64,
}

/// Median seconds of three `UPDATE` of every row, one transaction each.
fn bulk_update(url: &str) -> f64 {
    let mut conn = realtide::db::connect(url).unwrap();
    let times = (0..3)
        .map(|_| {
            let started = Instant::now();
            conn.batch_execute("UPDATE bench_rows SET value = value + 1")
                .unwrap();
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

/// Commits a second by four writers, each committing single-row UPDATEs
/// of rows of its own for two seconds.
fn single_row_writers(url: &str, rows: u64) -> f64 {
    let window = Duration::from_secs(2);
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let mut conn = realtide::db::connect(&url).unwrap();
                let started = Instant::now();
                let mut commits = 0u64;
                while started.elapsed() < window {
                    let id = 1 + (w + 4 * commits) % rows;
                    conn.batch_execute(&format!(
                        "UPDATE bench_rows SET value = value + 1 WHERE id = {id}"
                    ))
                    .unwrap();
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    let commits: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    commits as f64 / window.as_secs_f64()
}

/// Reads `count` db_change frames; returns when the last arrived.
async fn drain(ws: &mut Socket, count: u64) -> (u64, Instant) {
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"db_change\"") => {
                seen += 1;
                last = Instant::now();
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    (seen, last)
}

/// The commit time of each write, by the `sent_ns` it wrote.
async fn commit_latency(ws: &mut Socket, url: &str, rows: u64, commits: u64) -> Histogram<u64> {
    let url = url.to_string();
    let writer = std::thread::spawn(move || {
        let mut conn = realtide::db::connect(&url).unwrap();
        let mut committed = HashMap::new();
        for i in 0..commits {
            // 20 to 50 ms apart, spread evenly without a random source.
            std::thread::sleep(Duration::from_millis(20 + (i * 7919) % 31));
            let sent = now_ns();
            let id = 1 + (i * 104_729) % rows;
            conn.batch_execute(&format!(
                "UPDATE bench_rows SET sent_ns = {sent} WHERE id = {id}"
            ))
            .unwrap();
            committed.insert(sent, now_ns());
        }
        committed
    });
    let mut arrived = Vec::new();
    while (arrived.len() as u64) < commits {
        let text = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            // The server's keep-alive pings during a quiet spell.
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        if let Some(sent) = number_after(text.as_bytes(), br#""sent_ns":"#) {
            arrived.push((sent, now_ns()));
        }
    }
    let committed = writer.join().unwrap();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for (sent, at) in arrived {
        if let Some(commit) = committed.get(&sent) {
            latency.saturating_record((at.saturating_sub(*commit) / 1000).max(1));
        }
    }
    latency
}

async fn measure(load: &CaptureLoad, mode: &str) -> CaptureReport {
    let mut scratch = ScratchDb::new(&load.backend, &load.postgres_url);
    let url = scratch.url.clone();
    {
        let mut conn = realtide::db::connect(&url).unwrap();
        if load.backend == "sqlite" {
            // As realtide leaves the file: untracked and tracked alike in WAL mode.
            conn.batch_execute("PRAGMA journal_mode = WAL").unwrap();
        }
        create_bench_rows(&mut conn, &load.backend, load.rows);
    }
    let mut report = CaptureReport {
        bulk_untracked_s: bulk_update(&url),
        single_untracked: single_row_writers(&url, load.rows),
        ..CaptureReport::default()
    };
    let server = Server::start_with(&url, scratch.dir.take(), &["--capture", mode]).await;
    let mut ws = connect(&server.addr).await;
    subscribe(&mut ws, "bench_rows").await;

    // Bulk: the writer's time, and the changes' delivery after its commit.
    let mut conn = realtide::db::connect(&url).unwrap();
    let mut bulk = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        conn.batch_execute("UPDATE bench_rows SET value = value + 1")
            .unwrap();
        let committed = Instant::now();
        bulk.push((committed - started).as_secs_f64());
        let (seen, last) = drain(&mut ws, load.rows).await;
        rates.push(seen as f64 / (last - committed).as_secs_f64().max(1e-9));
    }
    report.bulk_tracked_s = median(bulk);
    report.delivery_per_s = median(rates);

    // The subscriber reads while the writers write, as a live client does
    // (one that stopped reading would be cut off as a slow consumer).
    let writers = {
        let (url, rows) = (url.clone(), load.rows);
        tokio::task::spawn_blocking(move || single_row_writers(&url, rows))
    };
    tokio::pin!(writers);
    report.single_tracked = loop {
        tokio::select! {
            done = &mut writers => break done.unwrap(),
            _ = ws.next() => {}
        }
    };
    // The rest of the writers' changes, read off so the latency run starts
    // clean; how long that takes says how far capture fell behind them.
    let drained = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await {}
    })
    .await;
    report.catch_up_s = drained.elapsed().as_secs_f64() - 0.5;

    let latency = commit_latency(&mut ws, &url, load.rows, load.commits).await;
    report.latency = format!("{} over {} commits", percentiles(&latency), latency.len());
    if load.quiet_s > 0 {
        // Quiet, but reading: the client answers the server's keep-alive
        // pings as any live client does.
        let quiet = tokio::time::sleep(Duration::from_secs(load.quiet_s));
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                _ = &mut quiet => break,
                frame = ws.next() => if !matches!(frame, Some(Ok(_))) { break },
            }
        }
        let lone = commit_latency(&mut ws, &url, load.rows, 1).await;
        report.lone_ms = lone.max() as f64 / 1000.0;
    }
    drop(server);
    report
}

pub async fn capture(load: CaptureLoad) {
    let modes: &[&str] = if load.backend == "postgres" {
        &["logical", "triggers"]
    } else {
        &["triggers"]
    };
    println!(
        "capture: {}, {} rows; bulk = one UPDATE of every row (median of 3); \
         single = 4 writers of single-row UPDATEs for 2 s",
        load.backend, load.rows
    );
    for mode in modes {
        let r = measure(&load, mode).await;
        println!("  --capture {mode}");
        println!(
            "    bulk UPDATE     {:.3} s untracked, {:.3} s tracked ({:.2}x)",
            r.bulk_untracked_s,
            r.bulk_tracked_s,
            r.bulk_tracked_s / r.bulk_untracked_s
        );
        println!(
            "    single-row      {:.0}/s untracked, {:.0}/s tracked ({:.2}x the time)",
            r.single_untracked,
            r.single_tracked,
            r.single_untracked / r.single_tracked.max(1.0)
        );
        println!(
            "    after a bulk commit: {:.0} changes/s delivered",
            r.delivery_per_s
        );
        println!(
            "    the single-row writers' last change arrived {:.2} s after they stopped",
            r.catch_up_s.max(0.0)
        );
        println!("    commit->client  {}", r.latency);
        if load.quiet_s > 0 {
            println!(
                "    a lone commit after {} s quiet: {:.2} ms",
                load.quiet_s, r.lone_ms
            );
        }
    }
}
