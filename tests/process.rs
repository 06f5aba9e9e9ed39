//! The real binary: `realtide serve` shuts down on SIGTERM and SIGINT by
//! closing every client with 1001 and exiting 0; `realtide token` signs
//! tokens the server accepts.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use serde_json::json;

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_binary(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let db = format!("sqlite://{}", dir.path().join("rt.db").display());
    let child = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["serve", "--bind", &addr, "--database-url", &db])
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
        _dir: dir,
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
    let server = start_binary(&["--jwt-secret", "cli-secret"]).await;
    let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args([
            "token",
            "--sub",
            "carol",
            "--ttl",
            "10m",
            "--jwt-secret",
            "cli-secret",
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
