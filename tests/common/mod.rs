//! The test harness: `TestApp::spawn()` starts the whole server on
//! 127.0.0.1:0 with a database of its own, and `Client` is a real WebSocket
//! client (tokio-tungstenite) speaking the protocol as an app would.
#![allow(dead_code)]

pub mod backend;
pub mod capture;
pub mod cluster;
pub mod sse;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtide::config::Config;
use realtide::server::Controller;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// A database for one test: a fresh SQLite file, or a fresh PostgreSQL
/// database on the server named by `REALTIDE_TEST_POSTGRES_URL`.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("realtide.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` when no test server is
    /// configured: then a SKIP line names the test on the terminal, and with
    /// `REALTIDE_TEST_REQUIRE_POSTGRES` set (as CI does) the test fails.
    pub fn postgres() -> Option<TestDb> {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        let Ok(base) = std::env::var("REALTIDE_TEST_POSTGRES_URL") else {
            skip("PostgreSQL", "REALTIDE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!("realtide_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            PgConnection::establish(&base).expect("connect to REALTIDE_TEST_POSTGRES_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create test database");
        let (prefix, _) = base.rsplit_once('/').expect("postgres url with a database");
        Some(TestDb {
            url: format!("{prefix}/{name}"),
            _dir: None,
            postgres: Some((base, name)),
        })
    }

    /// Another handle on a database that `owner` keeps (and drops): for a
    /// second node of a cluster.
    pub fn shared(owner: &TestDb) -> TestDb {
        TestDb {
            url: owner.url.clone(),
            _dir: None,
            postgres: None,
        }
    }

    /// Every backend this machine can test: SQLite always, PostgreSQL when configured.
    pub fn all() -> Vec<TestDb> {
        let mut dbs = vec![TestDb::sqlite()];
        dbs.extend(TestDb::postgres());
        dbs
    }

    /// Runs SQL on a connection of its own, as another program would.
    pub fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        let mut conn = realtide::db::connect(&self.url).expect("connect");
        conn.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The same SQL text run by the backend's own command-line client.
    pub fn shell(&self, sql: &str) {
        let output = match &self.postgres {
            Some(_) => std::process::Command::new("psql")
                .args([self.url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
                .output(),
            None => {
                let path = self.url.trim_start_matches("sqlite://");
                std::process::Command::new("sqlite3")
                    .args(["-cmd", ".timeout 10000", path, sql])
                    .output()
            }
        }
        .expect("run the database shell");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// One of realtide's own tables as another program names it: on
    /// PostgreSQL they live in the `realtide` schema.
    pub fn own_table(&self, table: &str) -> String {
        if self.is_postgres() {
            format!("realtide.{table}")
        } else {
            table.to_string()
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }
}

/// Says that the running test skips what needs `service`, on the terminal
/// itself (past the test runner's capture of its output), or fails it when
/// `REALTIDE_TEST_REQUIRE_<SERVICE>` is set.
pub fn skip(service: &str, why: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let required = format!(
        "REALTIDE_TEST_REQUIRE_{}",
        service
            .to_ascii_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    if std::env::var_os(&required).is_some() {
        panic!("{test} needs {service} ({required} is set): {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test} on {service}: {why}");
}

impl Drop for TestDb {
    fn drop(&mut self) {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        if let Some((base, name)) = &self.postgres
            && let Ok(mut admin) = PgConnection::establish(base)
        {
            // A database with a replication slot (logical capture) cannot be
            // dropped: end its sessions, then drop its slots, then it.
            for _ in 0..20 {
                let _ = diesel::sql_query(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                ))
                .execute(&mut admin);
                let _ = diesel::sql_query(format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE database = '{name}' AND NOT active"
                ))
                .execute(&mut admin);
                if diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .is_ok()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The whole server, running on its own actix system thread.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDb,
    controller: Controller,
    http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_on(TestDb::sqlite(), adjust).await
    }

    pub async fn spawn_on(db: TestDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        Self::spawn_listening(db, listener, adjust).await
    }

    /// The server on a listener of the test's choosing (another address).
    pub async fn spawn_listening(
        db: TestDb,
        listener: TcpListener,
        adjust: impl FnOnce(&mut Config),
    ) -> TestApp {
        // Explicit values, so REALTIDE_* variables in the environment change nothing.
        let mut config = Config {
            database_url: db.url.clone(),
            workers: Some(2),
            jwt_secret: None,
            server_key: None,
            admin_key: None,
            redis_url: None,
            ..Config::default()
        };
        // With REALTIDE_TEST_REDIS_URL, every server is a node of a cluster
        // of its own (keys under a prefix of its own) on that Redis: the
        // single-node tests then check the same behaviour through Redis.
        if let Ok(url) = std::env::var("REALTIDE_TEST_REDIS_URL") {
            config.redis_url = Some(url);
            config.redis_prefix = Some(format!("test:{}:", uuid::Uuid::new_v4().simple()));
            config.node_timeout_ms = 2000;
        }
        adjust(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                match realtide::server::start(listener, config) {
                    Ok(server) => {
                        let _ = tx.send(Ok(server.controller()));
                        let _ = server.wait().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            })
        });
        let controller = rx.await.expect("server thread").expect("server starts");
        TestApp {
            addr: controller.addr,
            db,
            controller,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/api/realtime{}", self.addr, query)
    }

    /// An anonymous client in open mode, past its `welcome`.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url("")).await
    }

    pub async fn client_as(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(&format!("?userId={user}"))).await
    }

    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::connect(&self.ws_url(&format!("?token={token}"))).await
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A request with `Authorization: Bearer <key>`; the JSON answer.
    pub async fn keyed_json(&self, method: reqwest::Method, path: &str, key: &str) -> Value {
        let response = self
            .http
            .request(method, self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("keyed request");
        response.json().await.expect("a JSON answer")
    }

    pub async fn emit(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/api/realtime/emit"))
            .json(&body)
            .send()
            .await
            .expect("POST emit");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
    }

    pub async fn shutdown(&self) {
        self.controller.shutdown().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the server (and its change tracker) from a thread of its own:
        // this may run inside the test's runtime, which must not block.
        let controller = self.controller.clone();
        std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(controller.shutdown());
            }
        });
    }
}

/// What a client reads next.
#[derive(Debug)]
pub enum Incoming {
    Frame(Value),
    Closed(Option<u16>),
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Socket,
    pub welcome: Value,
    next_ref: u64,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_request(url, &[])
            .await
            .expect("websocket upgrade")
    }

    /// Connects with extra headers; `Err` carries the refused status and body.
    pub async fn connect_request(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, (u16, Value)> {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).unwrap());
        }
        match connect_async(request).await {
            Ok((ws, _response)) => {
                let mut client = Client {
                    ws,
                    welcome: Value::Null,
                    next_ref: 1,
                };
                client.welcome = client.recv().await;
                assert_eq!(
                    client.welcome["type"], "welcome",
                    "first frame: {}",
                    client.welcome
                );
                Ok(client)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Wraps an upgraded socket and reads its `welcome`.
    pub async fn from_socket(ws: Socket) -> Client {
        let mut client = Client {
            ws,
            welcome: Value::Null,
            next_ref: 1,
        };
        client.welcome = client.recv().await;
        assert_eq!(
            client.welcome["type"], "welcome",
            "first frame: {}",
            client.welcome
        );
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next frame or close, within `WAIT`; WebSocket pings are answered by the library.
    pub async fn next(&mut self) -> Incoming {
        self.next_within(WAIT)
            .await
            .expect("a frame within the wait")
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(Incoming::Frame(
                        serde_json::from_str(&text).expect("server frames are JSON"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Incoming::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(_)) | None => return Some(Incoming::Closed(None)),
            }
        }
    }

    /// The next JSON frame; panics on a close.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Incoming::Frame(v) => v,
            Incoming::Closed(code) => panic!("closed with {code:?} while waiting for a frame"),
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(incoming) = self.next_within(wait).await {
            panic!("expected silence, got {incoming:?}");
        }
    }

    /// Sends `frame` with a fresh `ref` and returns the reply carrying it;
    /// any other frame arriving first is a test failure.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let reference = format!("r{}", self.next_ref);
        self.next_ref += 1;
        frame["ref"] = json!(reference);
        self.send(frame).await;
        let reply = self.recv().await;
        assert_eq!(reply["ref"], json!(reference), "reply: {reply}");
        reply
    }

    /// Sends `frame` with a fresh `ref` and returns the reply carrying it,
    /// passing over the events that arrive first.
    pub async fn ask(&mut self, mut frame: Value) -> Value {
        let reference = format!("r{}", self.next_ref);
        self.next_ref += 1;
        frame["ref"] = json!(reference);
        self.send(frame).await;
        loop {
            let reply = self.recv().await;
            if reply["ref"] == json!(reference) {
                return reply;
            }
        }
    }

    pub async fn subscribe(&mut self, topic: &str) -> Value {
        let reply = self
            .request(json!({"type": "subscribe", "topic": topic}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    pub async fn publish(&mut self, topic: &str, event: &str, data: Value) -> Value {
        self.send(
            json!({"type": "publish", "topic": topic, "event": event, "data": data, "ref": "p"}),
        )
        .await;
        loop {
            let frame = self.recv().await;
            if frame["ref"] == "p" {
                return frame;
            }
        }
    }

    /// Reads until a close arrives (skipping frames) and returns its code.
    pub async fn closed_code(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Incoming::Closed(code)) => return code,
                Some(Incoming::Frame(_)) => continue,
                None => panic!("no close within {wait:?}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_raw(Message::Binary(Bytes::from(bytes))).await;
    }
}

/// Starts the real binary serving on `addr` with `args` after `serve
/// --bind <addr>`, and waits until it is ready.
// The child is handed to the caller, whose drop kills and waits for it.
#[allow(clippy::zombie_processes)]
pub async fn serve_binary(addr: &str, args: &[&str]) -> std::process::Child {
    use std::io::{Read, Seek};
    use std::process::{Command, Stdio};
    // The log is kept (in an unnamed file) so a server that does not come
    // up says why in the panic.
    let mut log = tempfile::tempfile().expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["serve", "--bind", addr])
        .args(args)
        .env_remove("REALTIDE_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("log file"))
        .spawn()
        .expect("start realtide");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = reqwest::get(format!("http://{addr}/readyz")).await
            && response.status() == 200
        {
            return child;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut printed = String::new();
            let _ = log.rewind();
            let _ = log.read_to_string(&mut printed);
            panic!("realtide on {addr} did not start; it printed:\n{printed}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JWT secret long enough to be accepted (32 bytes at least).
pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

/// A token for `sub` signed with `secret`, valid for an hour, with `claims`
/// (a JSON object) beside the standard ones.
pub fn token_for(secret: &str, sub: &str, claims: Value) -> String {
    let extra = serde_json::from_value(claims).expect("claims are a JSON object");
    realtide::auth::token::sign(secret, sub, Duration::from_secs(3600), extra).unwrap()
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}
