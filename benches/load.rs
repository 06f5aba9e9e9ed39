//! A small load client for realtide: it starts the release server itself
//! (so it can read the server's CPU time and RSS from /proc) and drives it
//! over loopback with lean WebSocket clients. It prints figures; it asserts
//! nothing.
//!
//! ```text
//! cargo bench --bench load -- fanout --subscribers 1000 --rate 100 --seconds 10 --payload 100
//! cargo bench --bench load -- idle --connections 5000
//! cargo bench --bench load -- capture --backend postgres
//! ```

#[path = "load/capture.rs"]
mod capture;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// N subscribers on one topic, one publisher at R messages a second.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes of padding in each message's data.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Run the same load against a peer (`uws`: uWebSockets.js pub/sub;
        /// `ws`: Node `ws`) in the same run and print the ratios.
        #[arg(long, value_enum)]
        against: Option<Peer>,
        /// Repeat the run and report medians (the machine is noisy).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Raise the rate from `--rate` by 1.5x per step until p99 > 100 ms
        /// or loss, and plot latency against rate.
        #[arg(long)]
        find_max: bool,
        /// Where `--find-max` writes its plot.
        #[arg(long, default_value = "docs/fanout-latency.svg")]
        svg: String,
        /// Also write every run's figures as JSON here.
        #[arg(long)]
        json: Option<String>,
        /// With N > 1, also run the load on N nodes sharing a Redis of the
        /// bench's own (subscribers spread over the first N-1, the
        /// publisher on the last), beside the one-node run.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Redraws `--find-max`'s plot from the JSON it wrote (`--json`).
    Plot {
        #[arg(long)]
        json: String,
        #[arg(long, default_value = "docs/fanout-latency.svg")]
        svg: String,
    },
    /// N idle connections: the server's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// What each connection subscribes to: a topic of its own
        /// (`per-connection`, per-user channels), one topic for all
        /// (`shared`), or nothing (`none`).
        #[arg(long, default_value = "per-connection")]
        topics: String,
        /// Measure a peer too (`uws` or `ws`) and print the ratio.
        #[arg(long, value_enum)]
        against: Option<Peer>,
    },
    /// N viewers of one token stream: token -> viewer latency.
    Stream {
        #[arg(long, default_value_t = 1000)]
        viewers: usize,
        /// Tokens a second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 1000)]
        tokens: u64,
    },
    /// The cost of `persist: true`: ack latency with and without, and the
    /// persisted publishes per second one topic sustains.
    Persist {
        /// Publishes per measurement.
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        /// Topics the back-to-back publishes are spread over, round robin.
        #[arg(long, default_value_t = 1)]
        topics: u64,
        #[command(flatten)]
        db: Database,
    },
    /// Table change -> client latency for single writes by an external
    /// writer, the tracker's idle CPU, and its CPU per change.
    Changes {
        /// Rows in the table before the run: poll cost must not depend on it.
        #[arg(long, default_value_t = 1000)]
        rows: u64,
        #[arg(long, default_value_t = 300)]
        writes: u64,
        /// Writes a second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        #[command(flatten)]
        db: Database,
    },
    /// Table capture per mode, side by side: the writer's cost (bulk and
    /// four single-row writers), delivery after a bulk commit, and
    /// commit-to-client latency over commits 20-50 ms apart.
    Capture {
        #[arg(long, default_value_t = 50_000)]
        rows: u64,
        #[arg(long, default_value_t = 500)]
        commits: u64,
        /// Seconds of quiet before one more lone commit (0: skip).
        #[arg(long, default_value_t = 60)]
        quiet_s: u64,
        #[command(flatten)]
        db: Database,
    },
}

/// The database a mode runs against: a scratch one, made per run.
#[derive(clap::Args)]
struct Database {
    /// `sqlite` or `postgres` (`capture` measures both of PostgreSQL's modes).
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// PostgreSQL server to create the scratch database on.
    #[arg(
        long,
        env = "REALTIDE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The release server under test, killed on drop.
struct Server {
    child: Child,
    addr: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        Self::start_on(&url, Some(dir)).await
    }

    async fn start_on(database_url: &str, dir: Option<tempfile::TempDir>) -> Server {
        Self::start_with(database_url, dir, &[]).await
    }

    async fn start_with(
        database_url: &str,
        dir: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Server {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        // BENCH_SERVER_WRAPPER runs the server under a profiler, such as
        // `heaptrack` or `perf record -g --` (its CPU and RSS figures are
        // then the wrapper's, not the server's).
        let wrapper = std::env::var("BENCH_SERVER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let binary = env!("CARGO_BIN_EXE_realtide");
        let mut command = Command::new(words.next().unwrap_or(binary));
        if !wrapper.is_empty() {
            command.args(words).arg(binary);
        }
        let child = command
            .args(["serve", "--bind", &addr, "--max-publish-rate", "1000000"])
            .args(["--database-url", database_url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start realtide");
        Server {
            child,
            addr,
            _dir: dir,
        }
        .ready()
        .await
    }

    /// A peer: `benches/peers/<name>` (run `npm ci` there first).
    async fn start_peer(name: &str) -> Server {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/peers")
            .join(name);
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("node")
            .arg("server.mjs")
            .args(["--port", &addr.port().to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start the {name} peer (node on PATH, npm ci in benches/peers/{name}): {e}")
            });
        Server {
            child,
            addr: addr.to_string(),
            _dir: None,
        }
        .ready()
        .await
    }

    async fn start_target(target: Target) -> Server {
        match target {
            Target::Realtide => Self::start().await,
            Target::NodeWs => Self::start_peer("node-ws").await,
            Target::Uws => Self::start_peer("uws").await,
        }
    }

    async fn ready(self) -> Server {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server under test did not start");
    }

    /// (user, system) CPU seconds so far.
    fn cpu(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (
            fields[11].parse::<f64>().unwrap() / ticks,
            fields[12].parse::<f64>().unwrap() / ticks,
        )
    }

    /// CPU seconds of the whole process so far, threads that have exited
    /// included (a large topic's second sending thread lives for one
    /// batch), from the scheduler's exact accounting: the process's CPU
    /// clock, not the tick-sampled `stat` fields, which misjudge a thread
    /// that wakes briefly every few milliseconds.
    fn cpu_exact(&self) -> f64 {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        let mut clock: libc::clockid_t = 0;
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: each call writes only into the value it is handed.
        unsafe {
            assert_eq!(libc::clock_getcpuclockid(pid, &mut clock), 0);
            assert_eq!(libc::clock_gettime(clock, &mut now), 0);
        }
        now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }
}

/// A client with small buffers: tokio-tungstenite's defaults cost ~137 KB each.
/// Source addresses are spread over 127.0.0.1-16, so one load process can open
/// tens of thousands of connections without running out of ephemeral ports.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

async fn connect(addr: &str) -> Socket {
    let socket = TcpSocket::new_v4().unwrap();
    let source = 1 + NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 16;
    socket
        .bind(format!("127.0.0.{source}:0").parse().unwrap())
        .unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{addr}/api/realtime");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .expect("upgrade");
    let _welcome = ws.next().await;
    ws
}

async fn subscribe(ws: &mut Socket, topic: &str) {
    let frame = format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#);
    ws.send(Message::text(frame)).await.unwrap();
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message
            && text.contains(r#""type":"subscribed""#)
        {
            return;
        }
    }
    panic!("no subscribed");
}

/// A subscriber's socket, taken from tungstenite after the handshake, to be
/// read as raw frames by [`read_all`] (a `Message` per frame allocates).
/// Nothing is sent to a subscriber between its `subscribed` reply and the
/// first event, so tungstenite holds no unread bytes here; a frame that does
/// not parse would say otherwise.
fn raw_socket(ws: Socket) -> std::net::TcpStream {
    let MaybeTlsStream::Plain(stream) = ws.into_inner() else {
        unreachable!("the bench speaks plain ws://")
    };
    stream.into_std().unwrap()
}

/// Reads every subscriber's frames on one thread with one epoll (mio): a
/// delivery costs one `recv` and no task to wake. Readiness is edge
/// triggered, so a short read has emptied the socket (new data raises a new
/// edge) and needs no second `recv` to learn so. Calls `on_text` with each
/// text frame's payload until it answers false or `deadline` passes.
fn read_all(
    sockets: Vec<std::net::TcpStream>,
    deadline: Instant,
    mut on_text: impl FnMut(&[u8]) -> bool,
) {
    use mio::{Events, Interest, Poll, Token};
    use std::io::Read;
    let mut poll = Poll::new().unwrap();
    let mut connections: Vec<(mio::net::TcpStream, Vec<u8>)> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            socket.set_nonblocking(true).unwrap();
            let mut stream = mio::net::TcpStream::from_std(socket);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .unwrap();
            (stream, Vec::with_capacity(512))
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        poll.poll(&mut events, Some(left.min(Duration::from_millis(100))))
            .unwrap();
        for event in &events {
            let (stream, pending) = &mut connections[event.token().0];
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&chunk[..n]);
                        if !take_frames(pending, &mut on_text) {
                            return;
                        }
                        if n < chunk.len() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Hands each whole text frame at the front of `pending` to `on_text`,
/// keeping a partial one; false once `on_text` is.
fn take_frames(pending: &mut Vec<u8>, on_text: &mut impl FnMut(&[u8]) -> bool) -> bool {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
    let mut start = 0;
    let mut go_on = true;
    while go_on {
        let mut cursor = std::io::Cursor::new(&pending[start..]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("a frame header") else {
            break;
        };
        let body = start + cursor.position() as usize;
        if body + len as usize > pending.len() {
            break;
        }
        start = body + len as usize;
        if let OpCode::Data(_) = header.opcode {
            go_on = on_text(&pending[body..start]);
        }
    }
    pending.drain(..start);
    go_on
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The number after `key` (such as `"t":`) in a frame, without parsing the
/// whole frame.
fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// This process's (user, system) CPU seconds so far: the load client's cost.
fn own_cpu() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    Realtide,
    NodeWs,
    Uws,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Realtide => "realtide",
            Target::NodeWs => "node-ws",
            Target::Uws => "uws",
        }
    }
}

/// The server measured beside realtide in the same run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Peer {
    /// uWebSockets.js pub/sub (`benches/peers/uws`): the strongest found.
    Uws,
    /// Node `ws` (`benches/peers/node-ws`).
    Ws,
}

impl Peer {
    fn target(self) -> Target {
        match self {
            Peer::Uws => Target::Uws,
            Peer::Ws => Target::NodeWs,
        }
    }
}

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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Runs `fanout` `runs` times against realtide (and the peer when asked,
/// alternating), then prints medians and realtide's over the peer's.
async fn fanout_compared(
    load: Load,
    runs: usize,
    against: Option<Peer>,
    nodes: usize,
    json: Option<&str>,
) {
    let mut ours = Vec::new();
    let mut peers = Vec::new();
    let mut clustered = Vec::new();
    for _ in 0..runs.max(1) {
        ours.push(fanout(Target::Realtide, load).await);
        if let Some(peer) = against {
            peers.push(fanout(peer.target(), load).await);
        }
        if nodes > 1 {
            clustered.push(fanout_nodes(load, nodes).await);
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
    if let Some(path) = json {
        let all: Vec<&FanoutReport> = ours.iter().chain(peers.iter()).collect();
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
        println!("wrote {path}");
    }
}

/// Raises the rate until p99 passes 100 ms or anything is lost, for
/// realtide and (when asked) the peer; prints the highest sustained rate of
/// each and plots latency against rate.
async fn find_max(load: Load, start: u64, against: Option<Peer>, svg: &str, json: Option<&str>) {
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
fn replot(json: &str, svg: &str) {
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
struct Load {
    subscribers: usize,
    rate: u64,
    seconds: u64,
    payload: usize,
}

async fn fanout(target: Target, load: Load) -> FanoutReport {
    let server = Server::start_target(target).await;
    fanout_on(target, target.name(), &[server], None, load).await
}

/// A `redis-server` of the bench's own, on a free port, killed on drop.
struct BenchRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchRedis {
    fn start() -> BenchRedis {
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
    } = load;
    let topic = "bench/fanout";
    let messages = rate * seconds;
    let hosts = servers.len().saturating_sub(1).max(1);
    let mut sockets = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut ws = connect(&servers[i % hosts].addr).await;
        subscribe(&mut ws, topic).await;
        sockets.push(ws);
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
    let sockets: Vec<std::net::TcpStream> = sockets.into_iter().map(raw_socket).collect();
    let reader = std::thread::spawn(move || {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut got = 0;
        read_all(sockets, deadline, |frame| {
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

async fn idle_compared(connections: usize, topics: &str, against: Option<Peer>) {
    let ours = idle(Target::Realtide, connections, topics).await;
    if let Some(peer) = against {
        let theirs = idle(peer.target(), connections, topics).await;
        println!(
            "realtide / {} (same run): {:.2}x the memory per idle connection",
            peer.target().name(),
            ours / theirs
        );
    }
}

/// Returns KiB of server RSS per idle connection.
async fn idle(target: Target, connections: usize, topics: &str) -> f64 {
    let server = Server::start_target(target).await;
    drop(connect(&server.addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_bytes();
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut ws = connect(&server.addr).await;
        match topics {
            "per-connection" => subscribe(&mut ws, &format!("user/{i}")).await,
            "shared" => subscribe(&mut ws, "everyone/all").await,
            "none" => {}
            other => panic!("--topics {other}: per-connection, shared or none"),
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_bytes();
    println!(
        "idle ({}): {connections} connections, topics {topics}",
        target.name()
    );
    println!(
        "  server RSS     {:.1} MiB before, {:.1} MiB after",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    let per_connection = after.saturating_sub(before) as f64 / connections as f64 / 1024.0;
    println!("  per connection {per_connection:.1} KiB");
    drop(sockets);
    per_connection
}

/// A scratch database for the `changes` mode, dropped afterwards.
struct ScratchDb {
    url: String,
    dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl ScratchDb {
    fn new(backend: &str, postgres_url: &str) -> ScratchDb {
        use diesel::connection::SimpleConnection;
        if backend == "postgres" {
            let name = format!("realtide_bench_{}", std::process::id());
            let mut admin = realtide::db::connect(postgres_url).expect("PostgreSQL");
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"));
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
            let (prefix, _) = postgres_url.rsplit_once('/').unwrap();
            ScratchDb {
                url: format!("{prefix}/{name}"),
                dir: None,
                postgres: Some((postgres_url.to_string(), name)),
            }
        } else {
            let dir = tempfile::tempdir().unwrap();
            ScratchDb {
                url: format!("sqlite://{}", dir.path().join("bench.db").display()),
                dir: Some(dir),
                postgres: None,
            }
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        use diesel::connection::SimpleConnection;
        if let Some((admin, name)) = &self.postgres
            && let Ok(mut conn) = realtide::db::connect(admin)
        {
            // Logical capture left a slot, which keeps the database from being dropped.
            let _ = conn.batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'; \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}';"
            ));
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// The table the `changes` and `capture` modes write: `rows` rows of
/// (id, value, sent_ns), made before realtide watches it.
fn create_bench_rows(conn: &mut realtide::db::DbConnection, backend: &str, rows: u64) {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(
        "CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, value BIGINT NOT NULL, sent_ns BIGINT NOT NULL)",
    )
    .unwrap();
    let fill = if backend == "postgres" {
        format!("INSERT INTO bench_rows SELECT x, 0, 0 FROM generate_series(1, {rows}) AS x")
    } else {
        format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) \
             INSERT INTO bench_rows SELECT x, 0, 0 FROM c"
        )
    };
    conn.batch_execute(&fill).unwrap();
}

async fn changes(backend: &str, rows: u64, writes: u64, rate: u64, postgres_url: &str) {
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

async fn persist(backend: &str, messages: u64, topics: u64, postgres_url: &str) {
    let mut scratch = ScratchDb::new(backend, postgres_url);
    let server = Server::start_on(&scratch.url, scratch.dir.take()).await;
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
    drop(server);
}

async fn stream(viewers: usize, rate: u64, tokens: u64) {
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
        read_all(sockets, deadline, |frame| {
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

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BENCH_CLIENT_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        )
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match args.mode {
            Mode::Fanout {
                subscribers,
                rate,
                seconds,
                payload,
                against,
                runs,
                find_max: climb,
                svg,
                json,
                nodes,
            } => {
                let load = Load {
                    subscribers,
                    rate,
                    seconds,
                    payload,
                };
                if climb {
                    find_max(load, rate, against, &svg, json.as_deref()).await;
                } else {
                    fanout_compared(load, runs, against, nodes, json.as_deref()).await;
                }
            }
            Mode::Idle {
                connections,
                topics,
                against,
            } => idle_compared(connections, &topics, against).await,
            Mode::Stream {
                viewers,
                rate,
                tokens,
            } => stream(viewers, rate, tokens).await,
            Mode::Persist {
                messages,
                topics,
                db,
            } => persist(&db.backend, messages, topics, &db.postgres_url).await,
            Mode::Changes {
                rows,
                writes,
                rate,
                db,
            } => changes(&db.backend, rows, writes, rate, &db.postgres_url).await,
            Mode::Capture {
                rows,
                commits,
                quiet_s,
                db,
            } => {
                capture::capture(capture::CaptureLoad {
                    backend: db.backend,
                    rows,
                    commits,
                    quiet_s,
                    postgres_url: db.postgres_url,
                })
                .await
            }
            Mode::Plot { json, svg } => replot(&json, &svg),
        }
    });
}
