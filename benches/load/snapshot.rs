//! Table snapshots (`snapshot`): a table of `--rows` rows, read by a client
//! that subscribes with `snapshot: true`: the time to its first `snapshot`
//! frame and to its last, median of five. Then another topic's deliveries
//! are timed (20 subscribers, a publisher at 200 msg/s): their p99 without
//! snapshots, then while clients take ten snapshots a second, read on a
//! thread of their own so that the load client's parsing of the rows does
//! not delay its reading of the other topic.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::*;

/// Milliseconds to the first snapshot frame and to the last.
async fn take_snapshot(addr: &str) -> (f64, f64) {
    let mut ws = connect(addr).await;
    let started = Instant::now();
    let request = r#"{"type":"subscribe","topic":"bench_rows","snapshot":true,"ref":1}"#;
    ws.send(Message::text(request)).await.unwrap();
    let mut first = None;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"snapshot""#) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let first = *first.get_or_insert(ms);
                if text.ends_with(r#""last":true}"#) {
                    return (first, ms);
                }
            }
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => panic!("{text}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

pub(super) async fn snapshot(backend: &str, rows: u64, postgres_url: &str) {
    let mut scratch = ScratchDb::new(backend, postgres_url);
    create_bench_rows(
        &mut realtide::db::connect(&scratch.url).unwrap(),
        backend,
        rows,
    );
    let server = Server::start_on(&scratch.url, scratch.dir.take()).await;

    let mut reads = Vec::new();
    for _ in 0..5 {
        reads.push(take_snapshot(&server.addr).await);
    }
    let first = median(reads.iter().map(|r| r.0).collect());
    let last = median(reads.iter().map(|r| r.1).collect());

    // Another topic's deliveries, timed from their publish.
    let during = Arc::new(AtomicBool::new(false));
    let histograms = Arc::new(Mutex::new([
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ]));
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut ws = connect(&server.addr).await;
        subscribe(&mut ws, "bench/other").await;
        let (during, histograms) = (during.clone(), histograms.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if let Some(sent) = number_after(text.as_bytes(), br#""t":"#) {
                    let micros = now_ns().saturating_sub(sent) / 1000;
                    let phase = usize::from(during.load(Ordering::Relaxed));
                    histograms.lock().unwrap()[phase].saturating_record(micros);
                }
            }
        }));
    }
    let publisher = {
        let addr = server.addr.clone();
        tokio::spawn(async move {
            let mut ws = connect(&addr).await;
            let started = Instant::now();
            for i in 0u64.. {
                if started.elapsed() > Duration::from_secs(6) {
                    break;
                }
                let frame = format!(
                    r#"{{"type":"publish","topic":"bench/other","event":"e","data":{{"t":{}}}}}"#,
                    now_ns()
                );
                ws.send(Message::text(frame)).await.unwrap();
                tokio::time::sleep_until((started + Duration::from_millis(5 * (i + 1))).into())
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    during.store(true, Ordering::Relaxed);
    let addr = server.addr.clone();
    let snapshots = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let started = Instant::now();
            let mut taken = 0u64;
            while started.elapsed() < Duration::from_secs(3) {
                take_snapshot(&addr).await;
                taken += 1;
                tokio::time::sleep_until((started + Duration::from_millis(100 * taken)).into())
                    .await;
            }
            taken
        })
    });
    let taken = snapshots.join().unwrap();
    publisher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for reader in readers {
        reader.abort();
    }
    let [quiet, busy] = &*histograms.lock().unwrap();
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    println!("snapshot: {backend}, {rows} rows");
    println!("  first frame    {first:.1} ms; last frame {last:.1} ms (median of 5)");
    println!(
        "  another topic  deliveries p99 {:.2} ms without snapshots, {:.2} ms while {taken} snapshots ran in 3 s ({:.1}x)",
        p99(quiet),
        p99(busy),
        p99(busy) / p99(quiet).max(0.001)
    );
    drop(server);
}
