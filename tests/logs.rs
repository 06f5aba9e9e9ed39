//! What an operator reads: the real binary, started as `realtide --port N`
//! (no `serve`) with `--log-format json`, says where it listens and what it
//! serves, then one line per connection opened, refused and closed, and a
//! summary at shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, SECRET, free_port, token_for};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The binary with `args`, its log on a pipe; ready once `/readyz` answers.
async fn start(dir: &tempfile::TempDir, port: u16, args: &[&str]) -> Child {
    let db = format!("sqlite://{}", dir.path().join("rt.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["--bind", "127.0.0.1:1", "--port", &port.to_string()])
        .args(["--database-url", &db, "--log-format", "json"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("REALTIDE_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start realtide");
    for _ in 0..400 {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && response.status() == 200
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("realtide did not start on port {port}");
}

/// Stops the server with SIGTERM and returns its log, one JSON object a line.
fn stop_and_read_log(mut child: Child) -> Vec<Value> {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let stderr = child.stderr.take().unwrap();
    let lines: Vec<Value> = BufReader::new(stderr)
        .lines()
        .map(|line| {
            let line = line.unwrap();
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON log line: {line}"))
        })
        .collect();
    child.wait().unwrap();
    lines
}

fn find<'a>(log: &'a [Value], message: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|line| line["message"] == message)
        .collect()
}

#[tokio::test]
async fn the_log_says_who_connected_who_was_refused_and_how_each_connection_ended() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = start(&dir, port, &["--jwt-secret", SECRET]).await;
    let url = format!("ws://127.0.0.1:{port}/api/realtime");

    let token = token_for(SECRET, "ann", json!({}));
    let mut ann = Client::connect(&format!("{url}?token={token}")).await;
    ann.subscribe("chat/lobby").await;
    ann.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let refused = tokio_tungstenite::connect_async(format!("{url}?token=forged")).await;
    assert!(refused.is_err(), "a forged token is refused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = stop_and_read_log(child);

    let banner = find(&log, "realtide listening");
    assert_eq!(banner.len(), 1, "{log:?}");
    assert_eq!(
        banner[0]["url"],
        format!("ws://127.0.0.1:{port}/api/realtime")
    );
    assert!(
        banner[0]["database"]
            .as_str()
            .unwrap()
            .starts_with("sqlite://")
    );
    assert!(banner[0]["node"].as_str().is_some());
    assert!(
        !log.iter().any(
            |l| l["level"] == "WARN" && l["message"].as_str().unwrap().starts_with("open mode")
        ),
        "a server with a secret is not in open mode"
    );

    let opened = find(&log, "connection opened");
    assert_eq!(opened.len(), 1, "{log:?}");
    assert_eq!(opened[0]["user"], "ann");
    let closed = find(&log, "connection closed");
    assert_eq!(closed.len(), 1, "{log:?}");
    assert_eq!(closed[0]["user"], "ann");
    assert_eq!(closed[0]["code"], "1000");
    assert_eq!(closed[0]["frames_in"], 1);
    assert!(closed[0]["duration_ms"].as_u64().is_some());
    let refusals = find(&log, "connection refused");
    assert_eq!(refusals.len(), 1, "{log:?}");
    assert_eq!(refusals[0]["code"], "unauthorized");
    let peer = refusals[0]["peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(find(&log, "sessions closed with 1012").len(), 1, "{log:?}");
}

#[tokio::test]
async fn a_server_without_a_secret_warns_that_it_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = start(&dir, port, &[]).await;
    let log = stop_and_read_log(child);
    let warnings: Vec<_> = log
        .iter()
        .filter(|l| l["level"] == "WARN" && l["message"].as_str().unwrap().starts_with("open mode"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log:?}");
}

/// The log of the binary serving `db`, written to a file, read once it is ready.
async fn log_in_a_file(db: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let log_path = dir.path().join("realtide.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["serve", "--port", &port, "--database-url", db])
        .env_remove("RUST_LOG")
        .env_remove("REALTIDE_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log_path).unwrap()
}

#[tokio::test]
async fn a_log_written_to_a_file_has_no_colours_and_names_the_database_as_given() {
    let sqlite = common::TestDb::sqlite();
    let mut databases = vec![sqlite];
    databases.extend(common::TestDb::postgres());
    for db in &databases {
        let text = log_in_a_file(&db.url).await;
        assert!(text.contains("realtide listening"), "{text}");
        assert!(!text.contains('\x1b'), "escape codes in a file: {text}");
        // Not the url realtide rewrites for its own connections
        // (`sslmode`, `options=-c search_path…`).
        assert!(text.contains(&format!("database={} ", db.url)), "{text}");
    }
}

#[test]
fn a_sqlite_file_in_a_folder_that_does_not_exist_is_named_with_the_way_out() {
    let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["serve", "--port", "0"])
        .args(["--database-url", "sqlite://no-such-folder-here/app.db"])
        .env_remove("REALTIDE_JWT_SECRET")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("no-such-folder-here/app.db"), "{said}");
    assert!(said.contains("folder does not exist"), "{said}");
}

#[test]
fn a_postgres_password_never_reaches_the_log_and_its_url_is_shown_as_given() {
    assert_eq!(
        realtide::config::redact_url("postgres://app:s3cret@127.0.0.1:5432/db?application_name=x"),
        "postgres://app:***@127.0.0.1:5432/db?application_name=x"
    );
    assert_eq!(
        realtide::config::redact_url("redis://:pw@127.0.0.1:6379/0"),
        "redis://:***@127.0.0.1:6379/0"
    );
}
