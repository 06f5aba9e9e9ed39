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
#[path = "load/changes.rs"]
mod changes;
#[path = "load/failover.rs"]
mod failover;
#[path = "load/fanout.rs"]
mod fanout;
#[path = "load/hooks.rs"]
mod hooks;
#[path = "load/idle.rs"]
mod idle;
#[path = "load/persist.rs"]
mod persist;
#[path = "load/readers.rs"]
mod readers;
#[path = "load/snapshot.rs"]
mod snapshot;
#[path = "load/stream.rs"]
mod stream;

use self::changes::changes;
use self::fanout::{Load, fanout_compared, find_max, replot};
use self::idle::idle_compared;
use self::persist::persist;
use self::readers::{Framing, raw_socket, read_all};
use self::snapshot::snapshot;
use self::stream::stream;

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
        /// Also run the load with server-sent-events subscribers
        /// (`GET /api/realtime/sse?subscribe=`) beside the WebSocket ones.
        #[arg(long)]
        sse: bool,
    },
    /// Redraws `--find-max`'s plot from the JSON it wrote (`--json`).
    Plot {
        #[arg(long)]
        json: String,
        #[arg(long, default_value = "docs/fanout-latency.svg")]
        svg: String,
    },
    /// A Redis failover under publishes: how long publishing is
    /// unavailable, and what subscribers see.
    Failover {
        /// Publishes a second, over both nodes.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Sentinel's `down-after-milliseconds`.
        #[arg(long, default_value_t = 1000)]
        down_after_ms: u64,
    },
    /// The app's backend in the loop: connections/s through the connect
    /// proxy, publishes through the publish proxy, webhook deliveries/s,
    /// each beside the same load with no backend.
    Hooks {
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        #[arg(long, default_value_t = 20_000)]
        publishes: u64,
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
        /// With N > 1: N cluster nodes beside one node, windowed
        /// publishes on one topic and on 100.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Interleaved runs (with --nodes).
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Only the 8 x 64 in-flight measurement, --runs times on one server.
        #[arg(long)]
        windowed_only: bool,
        #[command(flatten)]
        db: Database,
    },
    /// A table's rows by `snapshot: true`: time to the first and last frame,
    /// and another topic's delivery p99 while snapshots run.
    Snapshot {
        #[arg(long, default_value_t = 10_000)]
        rows: u64,
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
    create_bench_table(conn, backend, "bench_rows", rows);
}

/// A table shaped as `bench_rows`, under another name.
fn create_bench_table(conn: &mut realtide::db::DbConnection, backend: &str, name: &str, rows: u64) {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(&format!(
        "CREATE TABLE {name} (id BIGINT PRIMARY KEY, value BIGINT NOT NULL, sent_ns BIGINT NOT NULL)",
    ))
    .unwrap();
    let fill = if backend == "postgres" {
        format!("INSERT INTO {name} SELECT x, 0, 0 FROM generate_series(1, {rows}) AS x")
    } else {
        format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) \
             INSERT INTO {name} SELECT x, 0, 0 FROM c"
        )
    };
    conn.batch_execute(&fill).unwrap();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
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
                sse,
            } => {
                let load = Load {
                    subscribers,
                    rate,
                    seconds,
                    payload,
                    framing: Framing::WebSocket,
                };
                if climb {
                    find_max(load, rate, against, &svg, json.as_deref()).await;
                } else {
                    let with = fanout::Also { nodes, sse };
                    fanout_compared(load, runs, against, with, json.as_deref()).await;
                }
            }
            Mode::Idle {
                connections,
                topics,
                against,
            } => idle_compared(connections, &topics, against).await,
            Mode::Failover {
                rate,
                down_after_ms,
            } => failover::failover(rate, down_after_ms).await,
            Mode::Hooks {
                connections,
                publishes,
            } => hooks::hooks(connections, publishes).await,
            Mode::Stream {
                viewers,
                rate,
                tokens,
            } => stream(viewers, rate, tokens).await,
            Mode::Persist {
                messages,
                topics,
                nodes,
                runs,
                windowed_only,
                db,
            } => {
                let shape = persist::Shape {
                    messages,
                    topics,
                    nodes,
                    runs,
                    windowed_only,
                };
                persist(&db.backend, shape, &db.postgres_url).await
            }
            Mode::Snapshot { rows, db } => snapshot(&db.backend, rows, &db.postgres_url).await,
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
