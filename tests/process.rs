//! The real binary: `realtide serve` shuts down on SIGTERM and SIGINT by
//! closing every client with 1001 and exiting 0; `realtide token` signs
//! tokens the server accepts.

mod common;

use std::net::TcpListener;

use common::TestDb;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use serde_json::json;

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

async fn start_binary(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rt.db").display());
    let mut server = start_binary_on(&db, extra).await;
    server._dir = Some(dir);
    server
}

async fn start_binary_on(db: &str, extra: &[&str]) -> Server {
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["serve", "--bind", &addr, "--database-url", db])
        .args(extra)
        .env_remove("REALTIDE_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start realtide");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = reqwest::get(format!("http://{addr}/healthz")).await
            && response.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "realtide did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        addr,
        _dir: None,
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

async fn shutdown_with(signal: libc::c_int) {
    let mut server = start_binary(&[]).await;
    let url = format!("ws://{}/api/realtime", server.addr);
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    a.subscribe("chat/x").await;
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, signal) },
        0
    );
    assert_eq!(a.closed_code(Duration::from_secs(10)).await, Some(1001));
    assert_eq!(b.closed_code(Duration::from_secs(10)).await, Some(1001));
    let status = wait_exit(&mut server.child, Duration::from_secs(10)).expect("exits within 10 s");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    shutdown_with(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_does_the_same() {
    shutdown_with(libc::SIGINT).await;
}

#[tokio::test]
async fn a_token_from_the_token_command_is_accepted_with_its_claims() {
    let server = start_binary(&["--jwt-secret", "cli-secret-of-at-least-thirty-two-bytes"]).await;
    let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args([
            "token",
            "--sub",
            "carol",
            "--ttl",
            "10m",
            "--jwt-secret",
            "cli-secret-of-at-least-thirty-two-bytes",
        ])
        .args(["--claims", r#"{"realtime":{"subscribe":["chat/*"]}}"#])
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let mut client =
        Client::connect(&format!("ws://{}/api/realtime?token={token}", server.addr)).await;
    assert_eq!(client.welcome["userId"], "carol");
    client.subscribe("chat/a").await;
    let reply = client
        .request(json!({"type": "subscribe", "topic": "news/a"}))
        .await;
    assert_eq!(reply["code"], "forbidden");
}

#[tokio::test]
async fn redis_url_is_refused_rather_than_ignored() {
    let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            "sqlite:///nonexistent-dir/x.db",
        ])
        .args(["--redis-url", "redis://127.0.0.1:6379"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("redis"));
}

#[tokio::test]
async fn after_a_sigkill_and_restart_a_resuming_client_gets_every_change_once() {
    for db in TestDb::all() {
        db.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY, status TEXT NOT NULL)");
        let mut server = start_binary_on(&db.url, &[]).await;
        let mut client = Client::connect(&format!("ws://{}/api/realtime", server.addr)).await;
        let subscribed = client.subscribe("orders").await;
        let epoch = subscribed["epoch"].clone();
        db.execute("INSERT INTO orders VALUES (1, 'new')");
        let seen = client.recv().await;
        assert_eq!(seen["operation"], "INSERT");

        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(
            unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGKILL) },
            0
        );
        server.child.wait().unwrap();
        db.execute("UPDATE orders SET status = 'paid' WHERE id = 1");
        db.execute("INSERT INTO orders VALUES (2, 'new')");
        db.execute("DELETE FROM orders WHERE id = 1");

        let server = start_binary_on(&db.url, &[]).await;
        let mut back = Client::connect(&format!("ws://{}/api/realtime", server.addr)).await;
        let reply = back
            .request(json!({"type": "subscribe", "topic": "orders", "since": seen["seq"], "epoch": epoch}))
            .await;
        assert_eq!(reply["recovered"], true, "{}: {reply}", db.backend());
        assert_eq!(reply["epoch"], epoch, "the epoch survives a restart");
        let mut got = Vec::new();
        for _ in 0..3 {
            let change = back.recv().await;
            got.push((
                change["operation"].as_str().unwrap().to_string(),
                change["seq"].as_u64().unwrap(),
            ));
        }
        let ops: Vec<&str> = got.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(ops, ["UPDATE", "INSERT", "DELETE"], "{}", db.backend());
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "in seq order: {got:?}"
        );
        db.execute("INSERT INTO orders VALUES (3, 'live')");
        let live = back.recv().await;
        assert_eq!(live["data"]["id"], 3, "then live changes, nothing repeated");
        assert!(live["seq"].as_u64().unwrap() > got[2].1);
    }
}
