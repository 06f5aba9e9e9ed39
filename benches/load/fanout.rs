//! Fan-out (`fanout`): subscribers on one topic (or per node of a cluster), a
//! publisher at a fixed rate; deliveries, latency percentiles and CPU per
//! delivery, beside a peer server; `--find-max` climbs the rate and plots
//! latency against it.

use super::*;

/// One fan-out run's figures.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct FanoutReport {
    target: Target,
    subscribers: usize,
    rate: u64,
    deliveries_per_s: f64,
    loss: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    user_us: f64,
    system_us: f64,
    rss_mib: f64,
}

impl FanoutReport {
    /// Sustained: nothing lost, p99 within 100 ms.
    fn sustained(&self) -> bool {
        self.loss == 0 && self.p99_us <= 100_000
    }
}

/// What else each run of [`fanout_compared`] measures beside realtide.
#[derive(Debug, Clone, Copy)]
pub(super) struct Also {
    /// With N > 1, the load on N nodes.
    pub(super) nodes: usize,
    /// The load with server-sent-events subscribers.
    pub(super) sse: bool,
}

/// Runs `fanout` `runs` times against realtide (and the peer, the cluster
/// and SSE subscribers when asked, alternating), then prints medians and
/// realtide's over the peer's.
pub(super) async fn fanout_compared(
    load: Load,
    runs: usize,
    against: Option<Peer>,
    also: Also,
    json: Option<&str>,
) {
    let nodes = also.nodes;
    let mut ours = Vec::new();
    let mut peers = Vec::new();
    let mut clustered = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..runs.max(1) {
        ours.push(fanout(Target::Realtide, load).await);
        if let Some(peer) = against {
            peers.push(fanout(peer.target(), load).await);
        }
        if nodes > 1 {
            clustered.push(fanout_nodes(load, nodes).await);
        }
        if also.sse {
            let sse = Load {
                framing: Framing::Events,
                ..load
            };
            streams.push(fanout(Target::Realtide, sse).await);
        }
    }
    let summary = |reports: &[FanoutReport]| {
        let m = |f: fn(&FanoutReport) -> f64| median(reports.iter().map(f).collect());
        (
            m(|r| r.deliveries_per_s),
            m(|r| r.p50_us as f64),
            m(|r| r.p99_us as f64),
            m(|r| r.user_us),
            m(|r| r.user_us + r.system_us),
        )
    };
    let (dps, p50, p99, user, total) = summary(&ours);
    println!(
        "median of {} run(s), realtide: {dps:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, {user:.2} µs user / {total:.2} µs total CPU per delivery",
        ours.len(),
        p50 / 1000.0,
        p99 / 1000.0
    );
    if let Some(peer) = against {
        let name = peer.target().name();
        let (pdps, pp50, pp99, puser, ptotal) = summary(&peers);
        println!(
            "median of {} run(s), {name}: {pdps:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, {puser:.2} µs user / {ptotal:.2} µs total CPU per delivery",
            peers.len(),
            pp50 / 1000.0,
            pp99 / 1000.0
        );
        println!(
            "realtide / {name}: deliveries/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU per delivery {:.2}x (user {:.2}x)",
            dps / pdps,
            p50 / pp50.max(1.0),
            p99 / pp99.max(1.0),
            total / ptotal,
            user / puser
        );
    }
    if nodes > 1 {
        let (cdps, cp50, cp99, cuser, ctotal) = summary(&clustered);
        println!(
            "median of {} run(s), {nodes} nodes: {cdps:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, {cuser:.2} µs user / {ctotal:.2} µs total CPU per delivery (all nodes)",
            clustered.len(),
            cp50 / 1000.0,
            cp99 / 1000.0
        );
        println!(
            "{nodes} nodes / one node: deliveries/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU per delivery {:.2}x",
            cdps / dps,
            cp50 / p50.max(1.0),
            cp99 / p99.max(1.0),
            ctotal / total
        );
    }
    if also.sse {
        let (sdps, sp50, sp99, suser, stotal) = summary(&streams);
        println!(
            "median of {} run(s), realtide over SSE: {sdps:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, {suser:.2} µs user / {stotal:.2} µs total CPU per delivery",
            streams.len(),
            sp50 / 1000.0,
            sp99 / 1000.0
        );
        println!(
            "SSE / WebSocket: deliveries/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU per delivery {:.2}x",
            sdps / dps,
            sp50 / p50.max(1.0),
            sp99 / p99.max(1.0),
            stotal / total
        );
    }
    if let Some(path) = json {
        let all: Vec<&FanoutReport> = ours.iter().chain(peers.iter()).collect();
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
        println!("wrote {path}");
    }
}

/// Raises the rate until p99 passes 100 ms or anything is lost, for
/// realtide and (when asked) the peer; prints the highest sustained rate of
/// each and plots latency against rate.
pub(super) async fn find_max(
    load: Load,
    start: u64,
    against: Option<Peer>,
    svg: &str,
    json: Option<&str>,
) {
    let mut ladders = Vec::new();
    let mut targets = vec![Target::Realtide];
    targets.extend(against.map(Peer::target));
    for target in targets {
        let mut steps: Vec<FanoutReport> = Vec::new();
        let mut rate = start;
        loop {
            let report = fanout(target, Load { rate, ..load }).await;
            steps.push(report);
            if !report.sustained() || steps.len() >= 14 {
                break;
            }
            rate = rate * 3 / 2;
        }
        let best = steps
            .iter()
            .filter(|r| r.sustained())
            .map(|r| r.deliveries_per_s)
            .fold(0.0, f64::max);
        println!(
            "find-max ({}): {best:.0} deliveries/s sustained (p99 <= 100 ms, no loss)",
            target.name()
        );
        ladders.push((target, steps, best));
    }
    if let [(_, _, ours), (peer, _, theirs)] = ladders.as_slice() {
        println!(
            "realtide / {}: {:.2}x the sustained deliveries/s",
            peer.name(),
            ours / theirs
        );
    }
    plot(&ladders, load.subscribers, svg);
    println!("wrote {svg}");
    if let Some(path) = json {
        let all: Vec<&FanoutReport> = ladders.iter().flat_map(|(_, steps, _)| steps).collect();
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
        println!("wrote {path}");
    }
}

/// Reads the reports `--find-max --json` wrote and draws them again.
pub(super) fn replot(json: &str, svg: &str) {
    let reports: Vec<FanoutReport> =
        serde_json::from_str(&std::fs::read_to_string(json).expect("read the JSON")).unwrap();
    let mut ladders = Vec::new();
    let mut subscribers = 0;
    for target in [Target::Realtide, Target::Uws, Target::NodeWs] {
        let steps: Vec<FanoutReport> = reports
            .iter()
            .filter(|r| r.target == target)
            .copied()
            .collect();
        if let Some(first) = steps.first() {
            subscribers = first.subscribers;
            let best = steps
                .iter()
                .filter(|r| r.sustained())
                .map(|r| r.deliveries_per_s)
                .fold(0.0, f64::max);
            ladders.push((target, steps, best));
        }
    }
    plot(&ladders, subscribers, svg);
    println!("wrote {svg}");
}

/// Latency percentiles against publish rate, one colour per server.
fn plot(ladders: &[(Target, Vec<FanoutReport>, f64)], subscribers: usize, path: &str) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let max_rate = ladders
        .iter()
        .flat_map(|(_, s, _)| s.iter().map(|r| r.rate))
        .max()
        .unwrap_or(100) as f64;
    let min_rate = ladders
        .iter()
        .flat_map(|(_, s, _)| s.iter().map(|r| r.rate))
        .min()
        .unwrap_or(10) as f64;
    let max_ms = ladders
        .iter()
        .flat_map(|(_, s, _)| s.iter().map(|r| r.p99_us as f64 / 1000.0))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("fan-out to {subscribers} subscribers: latency vs publish rate"),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_rate * 0.8..max_rate * 1.25).log_scale(),
            (0.1..max_ms * 1.5).log_scale(),
        )
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("messages per second (log)")
        .y_desc("latency (ms, log)")
        .draw()
        .unwrap();
    for (target, steps, _) in ladders {
        let colour = if *target == Target::Realtide {
            BLUE
        } else {
            RED
        };
        for (quantile, style) in [("p50", colour.mix(0.45)), ("p99", colour.mix(1.0))] {
            let points: Vec<(f64, f64)> = steps
                .iter()
                .map(|r| {
                    let us = if quantile == "p50" {
                        r.p50_us
                    } else {
                        r.p99_us
                    };
                    (r.rate as f64, (us as f64 / 1000.0).max(0.1))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), style.stroke_width(2)))
                .unwrap()
                .label(format!("{} {quantile}", target.name()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], style.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, style.filled())))
                .unwrap();
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .unwrap();
    root.present().unwrap();
}

/// The shape of a fan-out load.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub(super) subscribers: usize,
    pub(super) rate: u64,
    pub(super) seconds: u64,
    pub(super) payload: usize,
    /// How subscribers connect: WebSocket, or server-sent events.
    pub(super) framing: Framing,
}

async fn fanout(target: Target, load: Load) -> FanoutReport {
    let server = Server::start_target(target).await;
    let label = match load.framing {
        Framing::WebSocket => target.name(),
        Framing::Events => "realtide, SSE subscribers",
    };
    fanout_on(target, label, &[server], None, load).await
}

/// A listen-only event stream on `topic`, once its subscription is made.
async fn sse_subscriber(addr: &str, topic: &str) -> std::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /api/realtime/sse?subscribe={topic} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 2048];
    while !seen.windows(12).any(|w| w == br#""subscribed""#) {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the stream ended before its subscription");
        seen.extend_from_slice(&chunk[..n]);
    }
    stream.into_std().unwrap()
}

/// A `redis-server` of the bench's own, on a free port, killed on drop.
pub(super) struct BenchRedis {
    child: Child,
    pub(super) port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchRedis {
    pub(super) fn start() -> BenchRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = BenchRedis {
            child,
            port,
            _dir: dir,
        };
        while redis.info("server").is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn info(&self, section: &str) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info", section])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// (round trips: script calls, commands processed in all, CPU seconds) so far.
    fn figures(&self) -> (f64, f64, f64) {
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (stats, cpu, commands) = (
            self.info("stats"),
            self.info("cpu"),
            self.info("commandstats"),
        );
        let scripts = commands
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|v| v.split(',').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        (
            scripts,
            field(&stats, "total_commands_processed"),
            field(&cpu, "used_cpu_user") + field(&cpu, "used_cpu_sys"),
        )
    }
}

/// The same load on `nodes` realtide nodes sharing one Redis and one
/// SQLite file: subscribers spread over all but the last node, the
/// publisher on the last.
async fn fanout_nodes(load: Load, nodes: usize) -> FanoutReport {
    let redis = BenchRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let mut servers = Vec::new();
    for n in 0..nodes {
        let id = format!("bench-{n}");
        let extra = ["--redis-url", redis_url.as_str(), "--node-id", id.as_str()];
        servers.push(Server::start_with(&url, None, &extra).await);
    }
    let label = format!("realtide, {nodes} nodes");
    let report = fanout_on(Target::Realtide, &label, &servers, Some(&redis), load).await;
    drop(dir);
    report
}

/// Runs the load: subscribers spread over all `servers` but the last when
/// there are several, the publisher on the last.
async fn fanout_on(
    target: Target,
    label: &str,
    servers: &[Server],
    redis: Option<&BenchRedis>,
    load: Load,
) -> FanoutReport {
    let Load {
        subscribers,
        rate,
        seconds,
        payload,
        framing,
    } = load;
    let topic = "bench/fanout";
    let messages = rate * seconds;
    let hosts = servers.len().saturating_sub(1).max(1);
    let mut sockets: Vec<std::net::TcpStream> = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let addr = &servers[i % hosts].addr;
        sockets.push(match framing {
            Framing::WebSocket => {
                let mut ws = connect(addr).await;
                subscribe(&mut ws, topic).await;
                raw_socket(ws)
            }
            Framing::Events => sse_subscriber(addr, topic).await,
        });
    }
    let server = &servers[servers.len() - 1];
    let cpu_of = |servers: &[Server]| {
        servers
            .iter()
            .map(Server::cpu)
            .fold((0.0, 0.0), |(u, s), (a, b)| (u + a, s + b))
    };
    let deadline = Instant::now() + Duration::from_secs(seconds + 10);
    let expected = messages * subscribers as u64;
    let reader = std::thread::spawn(move || {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut got = 0;
        read_all(sockets, framing, deadline, |frame| {
            if let Some(t) = number_after(frame, br#""t":"#) {
                let micros = now_ns().saturating_sub(t) / 1000;
                latencies.saturating_record(micros.max(1));
                got += 1;
            }
            got < expected
        });
        (latencies, got)
    });

    let mut publisher = connect(&server.addr).await;
    let pad = "x".repeat(payload);
    let (user0, sys0) = cpu_of(servers);
    let redis0 = redis.map(BenchRedis::figures);
    let (own_user0, own_sys0) = own_cpu();
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..messages {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let frame = format!(
            r#"{{"type":"publish","topic":"{topic}","event":"tick","data":{{"p":"{pad}","t":{}}}}}"#,
            now_ns()
        );
        publisher.send(Message::text(frame)).await.unwrap();
    }
    let (merged, delivered) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let (user1, sys1) = cpu_of(servers);
    let redis1 = redis.map(BenchRedis::figures);
    let (own_user1, own_sys1) = own_cpu();
    let per = |cpu: f64| cpu * 1e6 / delivered.max(1) as f64;
    println!(
        "fanout ({label}): {subscribers} subscribers, {rate} msg/s for {seconds} s, {payload} B payload"
    );
    println!(
        "  delivered      {delivered} of {expected} (loss {})",
        expected - delivered
    );
    println!("  deliveries/s   {:.0}", delivered as f64 / elapsed);
    println!(
        "  latency µs     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        merged.value_at_quantile(0.5),
        merged.value_at_quantile(0.9),
        merged.value_at_quantile(0.99),
        merged.value_at_quantile(0.999),
        merged.max()
    );
    println!(
        "  server CPU     {:.2} µs/delivery (user {:.2}, system {:.2}); {:.0}% of a core",
        per(user1 - user0 + sys1 - sys0),
        per(user1 - user0),
        per(sys1 - sys0),
        (user1 - user0 + sys1 - sys0) / elapsed * 100.0
    );
    println!(
        "  server RSS     {:.1} MiB",
        server.rss_bytes() as f64 / 1048576.0
    );
    if let (Some((scripts0, commands0, cpu0)), Some((scripts1, commands1, cpu1))) = (redis0, redis1)
    {
        println!(
            "  Redis          {:.2} round trips (script calls) and {:.1} commands per publish, {:.1} µs of Redis CPU per publish (its idle work included); server CPU {:.1} µs per publish (all nodes)",
            (scripts1 - scripts0) / messages as f64,
            (commands1 - commands0) / messages as f64,
            (cpu1 - cpu0) * 1e6 / messages as f64,
            (user1 - user0 + sys1 - sys0) * 1e6 / messages as f64
        );
    }
    println!(
        "  load client    {:.2} µs/delivery (user {:.2}, system {:.2})",
        per(own_user1 - own_user0 + own_sys1 - own_sys0),
        per(own_user1 - own_user0),
        per(own_sys1 - own_sys0),
    );
    FanoutReport {
        target,
        subscribers,
        rate,
        deliveries_per_s: delivered as f64 / elapsed,
        loss: expected - delivered,
        p50_us: merged.value_at_quantile(0.5),
        p90_us: merged.value_at_quantile(0.9),
        p99_us: merged.value_at_quantile(0.99),
        p999_us: merged.value_at_quantile(0.999),
        max_us: merged.max(),
        user_us: per(user1 - user0),
        system_us: per(sys1 - sys0),
        rss_mib: server.rss_bytes() as f64 / 1048576.0,
    }
}
