//! The real binary: `realtide serve` shuts down on SIGTERM and SIGINT by
//! closing every client with 1012 and exiting 0; `realtide token` signs
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
    let args: Vec<&str> = ["--database-url", db]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let child = common::serve_binary(&addr, &args).await;
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
    assert_eq!(a.closed_code(Duration::from_secs(10)).await, Some(1012));
    assert_eq!(b.closed_code(Duration::from_secs(10)).await, Some(1012));
    let status = wait_exit(&mut server.child, Duration::from_secs(10)).expect("exits within 10 s");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1012_and_exits_0() {
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
async fn sigterm_first_takes_the_node_out_of_readiness_then_closes_clients_after_the_drain() {
    let mut server = start_binary(&["--drain-ms", "1500"]).await;
    let url = format!("ws://{}/api/realtime", server.addr);
    let mut client = Client::connect(&url).await;
    client.subscribe("chat/x").await;
    let ready = format!("http://{}/readyz", server.addr);
    assert_eq!(reqwest::get(&ready).await.unwrap().status(), 200);
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    let mut refused = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        let response = reqwest::get(&ready).await.unwrap();
        if response.status() == 503 {
            let body: serde_json::Value = response.json().await.unwrap();
            refused = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = refused.expect("/readyz answers 503 while draining");
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(
        client.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
    assert_eq!(
        client.closed_code(Duration::from_secs(10)).await,
        Some(1012)
    );
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "clients stay served for the drain"
    );
    let status = wait_exit(&mut server.child, Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_tries_the_settings_the_address_and_the_database_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("rt.db");
    let check = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_realtide"))
            .arg("check")
            .args(args)
            .env_remove("REALTIDE_JWT_SECRET")
            .output()
            .unwrap()
    };
    let db = format!("sqlite://{}", db_path.display());
    let good = check(&["--database-url", &db, "--port", "0"]);
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{said}");
    assert!(said.contains("ok   database"), "{said}");
    assert!(!db_path.exists(), "check creates nothing");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dead_redis = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bad = check(&[
        "--database-url",
        "postgres://someone:hunter2-secret@127.0.0.1:1/app",
        "--port",
        &port,
        "--jwt-secret",
        "short",
        "--redis-url",
        &format!("redis://{dead_redis}"),
    ]);
    let said = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{said}");
    for what in ["settings", "listen", "database", "redis"] {
        assert!(said.contains(&format!("FAIL {what}")), "{what}: {said}");
    }
    assert!(
        !said.contains("hunter2"),
        "the password is never printed: {said}"
    );
}

#[tokio::test]
async fn check_reads_a_database_without_writing_and_counts_what_serve_will_migrate() {
    for db in TestDb::all() {
        let check = || {
            let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
                .args(["check", "--port", "0", "--database-url", &db.url])
                .env_remove("REALTIDE_JWT_SECRET")
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout).to_string()
        };
        if db.is_postgres() {
            // A fresh database, as the app made it: check leaves it so.
            let said = check();
            assert!(said.contains("will run"), "{said}");
            let tables = common::capture::query_number(
                &db.url,
                "SELECT count(*) AS value FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            );
            assert_eq!(tables, 0, "check created tables: {said}");
        } else {
            db.execute("CREATE TABLE app (id INTEGER PRIMARY KEY)");
            let said = check();
            assert!(said.contains("will run"), "{said}");
            let tables = common::capture::query_number(
                &db.url,
                "SELECT count(*) AS value FROM sqlite_master WHERE type = 'table'",
            );
            assert_eq!(tables, 1, "check created tables: {said}");
        }
        // Once serve has migrated, nothing is pending.
        let server = start_binary_on(&db.url, &[]).await;
        drop(server);
        let said = check();
        assert!(
            said.contains("its schema is current"),
            "{}: {said}",
            db.backend()
        );
    }
}

#[test]
fn check_says_how_changes_would_be_captured_and_how_to_get_logical_decoding() {
    let check = |url: &str, capture: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
            .args(["check", "--port", "0", "--database-url", url])
            .args(["--capture", capture])
            .env_remove("REALTIDE_JWT_SECRET")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string();
        (output.status.success(), said)
    };
    let sqlite = TestDb::sqlite();
    sqlite.execute("CREATE TABLE app (id INTEGER PRIMARY KEY)");
    let (ok, said) = check(&sqlite.url, "auto");
    assert!(
        ok && said.contains("ok   capture   triggers (SQLite"),
        "{said}"
    );

    let Some(db) = TestDb::postgres() else {
        return;
    };
    let logical = common::capture::query_number(
        &db.url,
        "SELECT (current_setting('wal_level') = 'logical')::int::int8 AS value",
    ) == 1;
    if logical {
        let (ok, said) = check(&db.url, "auto");
        assert!(
            ok && said.contains("ok   capture   logical decoding"),
            "{said}"
        );
        let (ok, said) = check(&db.url, "triggers");
        assert!(ok, "{said}");
        assert!(said.contains("logical decoding is available"), "{said}");
    } else {
        println!(
            "SKIP check_says_how_changes_would_be_captured (logical available): wal_level is not logical"
        );
    }
    // A role that may not replicate: auto says why and how; logical fails.
    db.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'realtide_no_replication') \
         THEN CREATE ROLE realtide_no_replication LOGIN; END IF; END $$",
    );
    let url = db.url.replacen(
        "postgres://postgres@",
        "postgres://realtide_no_replication@",
        1,
    );
    assert_ne!(url, db.url, "the test database url names the postgres role");
    let (ok, said) = check(&url, "auto");
    assert!(ok, "{said}");
    assert!(
        said.contains("ok   capture   triggers: logical decoding is not available"),
        "{said}"
    );
    assert!(said.contains("ALTER"), "it says how: {said}");
    let (ok, said) = check(&url, "logical");
    assert!(!ok && said.contains("FAIL capture"), "{said}");
}

#[test]
fn a_server_or_demo_on_a_busy_port_names_the_address_and_the_way_out() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rt.db").display());
    for command in ["serve", "demo"] {
        let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
            .args([command, "--port", &port, "--database-url", &db])
            .env_remove("REALTIDE_JWT_SECRET")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {said}");
        assert!(
            said.contains(&format!("127.0.0.1:{port}")),
            "{command}: {said}"
        );
        assert!(said.contains("already in use"), "{command}: {said}");
        assert!(said.contains("--port"), "{command}: {said}");
    }
}

#[tokio::test]
async fn a_malformed_redis_url_is_refused_at_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(["--database-url", "sqlite:///nonexistent-dir/x.db"])
        .args(["--redis-url", "not a url"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis"), "{stderr}");
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

#[tokio::test]
async fn a_short_or_empty_jwt_secret_is_refused_at_start_and_by_the_token_command() {
    for secret in ["", "only-31-bytes-long-xxxxxxxxxxxx"] {
        let output = Command::new(env!("CARGO_BIN_EXE_realtide"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(["--database-url", "sqlite:///nonexistent-dir/x.db"])
            .env("REALTIDE_JWT_SECRET", secret)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{secret:?} starts a server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("at least 32"), "{stderr}");
        let token = Command::new(env!("CARGO_BIN_EXE_realtide"))
            .args(["token", "--sub", "mallory", "--jwt-secret", secret])
            .output()
            .unwrap();
        assert!(!token.status.success(), "{secret:?} signs a token");
        assert!(token.stdout.is_empty());
    }
}

/// The process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test]
async fn a_hostile_client_cannot_push_the_server_past_a_bounded_memory() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = start_binary(&["--max-topics", "5000"]).await;
    let pid = server.child.id();
    let before = rss_kib(pid);
    let url = format!("ws://{}/api/realtime", server.addr);

    // 20,000 subscriptions and 1,000 presence states of 4 KiB on one
    // connection, sent without waiting; the replies are read meanwhile.
    let client = Client::connect(&url).await;
    let (mut write, mut read) = client.ws.split();
    let reader = tokio::spawn(async move {
        let mut refused = 0;
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(5), read.next()).await
        {
            if text.contains("too_large") {
                refused += 1;
            }
        }
        refused
    });
    let state = "x".repeat(4000);
    for n in 0..20_000 {
        let topic = format!("hostile/{n}");
        let mut frames = vec![json!({"type": "subscribe", "topic": topic, "ref": n})];
        if n < 1000 {
            frames.push(json!({"type": "track", "topic": topic, "state": {"s": state}}));
        }
        for frame in frames {
            if write.send(Message::text(frame.to_string())).await.is_err() {
                break;
            }
        }
    }
    let refused = reader.await.unwrap();
    assert!(refused >= 19_000, "only {refused} refusals");

    // 20,000 emitted topic names, from the backend's side.
    let http = reqwest::Client::new();
    let mut unavailable = 0;
    for batch in 0..200 {
        let messages: Vec<_> = (0..100)
            .map(|n| json!({"topic": format!("emitted/{batch}/{n}"), "event": "e", "data": n}))
            .collect();
        let status = http
            .post(format!("http://{}/api/realtime/emit", server.addr))
            .json(&json!({"messages": messages}))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            unavailable += 1;
        }
    }
    assert!(unavailable > 100, "past --max-topics emits are refused");

    // One frame announcing 256 MiB, whose payload then keeps coming.
    let mut client = Client::connect(&url).await;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(256u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    let tokio_tungstenite::MaybeTlsStream::Plain(stream) = client.ws.get_mut() else {
        unreachable!("plain TCP")
    };
    let chunk = vec![b' '; 1 << 20];
    let _ = stream.write_all(&frame).await;
    for _ in 0..64 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }

    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("RSS grew by {grown_mib} MiB");
    assert!(
        grown_mib < 160,
        "the server grew by {grown_mib} MiB under one hostile client"
    );
    // And it still serves everyone else, on the topics that run.
    let mut other = Client::connect(&url).await;
    other.subscribe("emitted/0/0").await;
    let pong = other.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn the_readme_in_order_works_the_walkthroughs_table_does_not_break_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    // The one-minute walkthrough's table, in the server's default database.
    let walkthrough = format!("sqlite://{}", dir.path().join("realtide.db").display());
    diesel::connection::SimpleConnection::batch_execute(
        &mut realtide::db::connect(&walkthrough).unwrap(),
        "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)",
    )
    .unwrap();
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtide"))
        .args(["demo", "--bind", &addr])
        .current_dir(dir.path())
        .env_remove("REALTIDE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let orders = loop {
        if let Ok(response) = reqwest::get(format!("http://{addr}/api/examples/orders")).await
            && response.status() == 200
        {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the demo exited ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "the demo did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        orders.to_string().contains("Ada Lovelace"),
        "the demo seeded its own orders: {orders}"
    );
    assert!(dir.path().join("realtide-demo.db").exists());
}

/// Nothing acked is lost: the server is killed (SIGKILL) in the middle of a
/// stream of persisted publishes; after a restart every message it acked
/// is in history.
#[tokio::test]
async fn every_acked_persisted_message_survives_a_sigkill() {
    for db in TestDb::all() {
        let backend = db.backend();
        let mut server = start_binary_on(&db.url, &["--max-publish-rate", "100000"]).await;
        let mut client = Client::connect(&format!("ws://{}/api/realtime", server.addr)).await;
        const SENT: usize = 3000;
        for n in 0..SENT {
            client
                .send(json!({"type": "publish", "topic": "ledger/x", "event": "e",
                             "data": {"n": n}, "persist": true, "ref": n.to_string()}))
                .await;
        }
        let mut acked = std::collections::BTreeSet::new();
        while acked.len() < SENT / 3 {
            let frame = client.recv().await;
            if frame["type"] == "ack" {
                acked.insert(frame["message_id"].as_str().unwrap().to_string());
            }
        }
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(
            unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGKILL) },
            0
        );
        server.child.wait().unwrap();
        // Acks that were on their way when it died count too.
        while let Some(common::Incoming::Frame(frame)) =
            client.next_within(Duration::from_millis(200)).await
        {
            if frame["type"] == "ack" {
                acked.insert(frame["message_id"].as_str().unwrap().to_string());
            }
        }

        let server = start_binary_on(&db.url, &[]).await;
        let mut kept = std::collections::BTreeSet::new();
        let mut before: Option<String> = None;
        loop {
            let mut url = format!(
                "http://{}/api/v1/public/realtime/history?room=ledger/x&limit=100",
                server.addr
            );
            if let Some(id) = &before {
                url.push_str(&format!("&before_id={id}"));
            }
            let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            let page = body["messages"].as_array().unwrap().clone();
            if page.is_empty() {
                break;
            }
            for message in &page {
                kept.insert(message["id"].as_str().unwrap().to_string());
            }
            before = page.last().unwrap()["id"].as_str().map(str::to_owned);
        }
        let lost: Vec<_> = acked.difference(&kept).collect();
        assert!(
            lost.is_empty(),
            "{backend}: {} acked messages lost: {lost:?}",
            lost.len()
        );
        assert!(acked.len() >= SENT / 3, "{backend}");
    }
}
