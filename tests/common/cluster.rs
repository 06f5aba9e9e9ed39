//! Several realtide nodes sharing one database and a Redis of the test's
//! own (on a free port, in a temp dir, so the test may kill, restart and
//! pause it without touching the machine's Redis).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestApp, TestDb, free_port};

/// A `redis-server` owned by one test.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Arguments beyond the defaults (a replica's `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one, or says SKIP (and returns `None`) when `redis-server` is
    /// not installed; with `REALTIDE_TEST_REQUIRE_REDIS` set, fails instead.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(Vec::new())
    }

    /// A replica of `master`.
    pub fn start_replica_of(master: &RedisServer) -> Option<RedisServer> {
        let port = master.port.to_string();
        Self::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), port])
    }

    fn start_with(extra: Vec<String>) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            super::skip("Redis", "redis-server is not installed");
            return None;
        }
        let mut redis = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra,
        };
        redis.restart();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (its data goes with it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a command through `redis-cli`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The database the nodes share: PostgreSQL when configured (else a SKIP
/// line, and one SQLite file, as nodes on one host may share).
pub fn shared_database() -> TestDb {
    TestDb::postgres().unwrap_or_else(TestDb::sqlite)
}

/// A node running in this process, with a short node timeout.
pub async fn node(db: &TestDb, redis: &RedisServer, id: &str) -> TestApp {
    let (url, id) = (redis.url(), id.to_string());
    TestApp::spawn_on(TestDb::shared(db), move |c| {
        c.redis_url = Some(url);
        c.redis_prefix = None;
        c.node_id = Some(id);
        c.node_timeout_ms = NODE_TIMEOUT_MS;
        c.max_publish_rate = 10_000;
    })
    .await
}

/// How long a silent node lives on in the tests.
pub const NODE_TIMEOUT_MS: u64 = 1500;

/// A node as a process of its own, to be killed.
pub struct NodeProcess {
    pub child: Child,
    pub addr: String,
}

impl NodeProcess {
    pub async fn start(db: &TestDb, redis: &RedisServer, id: &str) -> NodeProcess {
        Self::start_with(db, redis, id, &[]).await
    }

    /// With more arguments.
    pub async fn start_with(
        db: &TestDb,
        redis: &RedisServer,
        id: &str,
        extra: &[&str],
    ) -> NodeProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let (redis_url, timeout) = (redis.url(), NODE_TIMEOUT_MS.to_string());
        let mut args = vec![
            "--database-url",
            db.url.as_str(),
            "--redis-url",
            redis_url.as_str(),
            "--node-id",
            id,
            "--node-timeout-ms",
            timeout.as_str(),
        ];
        args.extend_from_slice(extra);
        let child = super::serve_binary(&addr, &args).await;
        NodeProcess { child, addr }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/realtime", self.addr)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis master, one replica and three Sentinels watching them (quorum
/// 2, a master silent for 1 s is down), each a process of the test's own.
pub struct SentinelGroup {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// The master's name in the group's Sentinels.
pub const MASTER_NAME: &str = "realtide-test";

impl SentinelGroup {
    /// Starts them and waits until every Sentinel knows the replica and
    /// the other Sentinels; `None` (with a SKIP line) without redis-server.
    pub fn start() -> Option<SentinelGroup> {
        let master = RedisServer::start()?;
        let replica = RedisServer::start_replica_of(&master)?;
        let dir = tempfile::tempdir().unwrap();
        let mut group = SentinelGroup {
            master,
            replica,
            sentinel_ports: Vec::new(),
            sentinels: Vec::new(),
            _dir: dir,
        };
        for i in 0..3 {
            let port = free_port();
            let conf = group._dir.path().join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = group._dir.path().display(),
                master = group.master.port,
            );
            std::fs::write(&conf, text).unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a Sentinel");
            group.sentinels.push(child);
            group.sentinel_ports.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !group.settled() {
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not find each other"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(group)
    }

    /// Whether every Sentinel sees the replica in sync and two others.
    fn settled(&self) -> bool {
        self.sentinel_ports.iter().all(|port| {
            let replicas = sentinel_cli(*port, &["SENTINEL", "REPLICAS", MASTER_NAME]);
            let others = sentinel_cli(*port, &["SENTINEL", "SENTINELS", MASTER_NAME]);
            replicas.contains(&self.replica.port.to_string())
                && !replicas.contains("disconnected")
                && others.matches("127.0.0.1").count() >= 2
        }) && self
            .replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    }

    /// `host:port,...` for `--redis-sentinels`.
    pub fn sentinels(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The port Sentinel names as the master now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinel_ports.iter().find_map(|port| {
            let answer = sentinel_cli(*port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
            answer.lines().nth(1)?.trim().parse().ok()
        })
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sentinel_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A node in this process that finds Redis through `group`'s Sentinels.
pub async fn sentinel_node(db: &TestDb, group: &SentinelGroup, id: &str) -> TestApp {
    let (sentinels, id) = (group.sentinels(), id.to_string());
    TestApp::spawn_on(TestDb::shared(db), move |c| {
        c.redis_url = None;
        c.redis_sentinels = sentinels;
        c.redis_master_name = MASTER_NAME.into();
        c.redis_prefix = None;
        c.node_id = Some(id);
        c.node_timeout_ms = NODE_TIMEOUT_MS;
        c.max_publish_rate = 10_000;
    })
    .await
}
