//! A Redis failover under load (`failover`): two nodes find the master
//! through three Sentinels (a master silent for `--down-after-ms` is down);
//! one publisher per node publishes with acks at `--rate` a second in all,
//! one subscriber per node listens. The master is killed (SIGKILL); the
//! figures are how long publishing was unavailable (last ack before the
//! kill to first ack after it), how much of that was Sentinel's own
//! detection and promotion, and what the subscribers saw.

use super::*;

struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn redis(dir: &std::path::Path, args: &[String]) -> Redis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    while cli(port, &["PING"]).trim() != "PONG" {
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis { child, port }
}

fn sentinel(dir: &std::path::Path, n: usize, master: u16, down_after_ms: u64) -> Redis {
    let port = free_port();
    let conf = dir.join(format!("sentinel-{n}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor bench 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds bench {down_after_ms}\nsentinel failover-timeout bench 10000\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a Sentinel");
    Redis { child, port }
}

fn master_port(sentinels: &[Redis]) -> Option<u16> {
    sentinels.iter().find_map(|s| {
        let answer = cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "bench"]);
        answer.lines().nth(1)?.trim().parse().ok()
    })
}

/// Publishes every `period` until `stop`; each answer's time and whether
/// it was an ack.
async fn publisher(addr: String, period: Duration, stop: Instant) -> Vec<(Instant, bool)> {
    let mut ws = connect(&addr).await;
    let mut answers = Vec::new();
    let mut ticks = tokio::time::interval(period);
    let mut n = 0u64;
    while Instant::now() < stop {
        ticks.tick().await;
        n += 1;
        let frame = format!(
            r#"{{"type":"publish","topic":"bench/failover","event":"m","data":{{"n":{n}}},"ref":{n}}}"#
        );
        ws.send(Message::text(frame)).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""ref":"#) => {
                    answers.push((Instant::now(), text.contains(r#""type":"ack""#)));
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("publisher socket ended: {other:?}"),
            }
        }
    }
    answers
}

/// Counts events until `stop`; answers (events, closed with 1012).
async fn subscriber(addr: String, stop: Instant) -> (u64, bool) {
    let mut ws = connect(&addr).await;
    subscribe(&mut ws, "bench/failover").await;
    let mut events = 0;
    while Instant::now() < stop {
        match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains(r#""type":"event""#) => events += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (events, frame.is_some_and(|f| u16::from(f.code) == 1012));
            }
            Ok(None | Some(Err(_))) => return (events, false),
            _ => {}
        }
    }
    (events, false)
}

pub(super) async fn failover(rate: u64, down_after_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut master = redis(dir.path(), &[]);
    let replica_of = vec![
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.port.to_string(),
    ];
    let replica = redis(dir.path(), &replica_of);
    let sentinels: Vec<Redis> = (0..3)
        .map(|n| sentinel(dir.path(), n, master.port, down_after_ms))
        .collect();
    // Until every Sentinel knows the replica and the others.
    let settled = Instant::now();
    while !sentinels.iter().all(|s| {
        cli(s.port, &["SENTINEL", "REPLICAS", "bench"]).contains(&replica.port.to_string())
            && cli(s.port, &["SENTINEL", "SENTINELS", "bench"])
                .matches("127.0.0.1")
                .count()
                >= 2
    }) {
        assert!(
            settled.elapsed() < Duration::from_secs(30),
            "Sentinels did not settle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let list = list.join(",");
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut nodes = Vec::new();
    for n in 0..2 {
        let id = format!("failover-{n}");
        let extra = [
            "--redis-sentinels",
            &list,
            "--redis-master-name",
            "bench",
            "--node-id",
            &id,
        ];
        nodes.push(Server::start_with(&db, None, &extra).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stop = Instant::now() + Duration::from_secs(14);
    let period = Duration::from_secs_f64(2.0 / rate as f64);
    let subscribers: Vec<_> = nodes
        .iter()
        .map(|node| tokio::spawn(subscriber(node.addr.clone(), stop + Duration::from_secs(1))))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let publishers: Vec<_> = nodes
        .iter()
        .map(|node| tokio::spawn(publisher(node.addr.clone(), period, stop)))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = master.port;
    let _ = master.child.kill();
    let _ = master.child.wait();
    let killed = Instant::now();
    let promoted = loop {
        if master_port(&sentinels).is_some_and(|port| port != old) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "failover: 2 nodes, Sentinel down-after {down_after_ms} ms, {rate} publishes/s with acks; master killed"
    );
    println!(
        "  Sentinel promoted the replica {:.2} s after the kill",
        (promoted - killed).as_secs_f64()
    );
    for (i, publisher) in publishers.into_iter().enumerate() {
        let answers = publisher.await.unwrap();
        let last_before = answers
            .iter()
            .filter(|(at, ok)| *ok && *at < killed)
            .map(|(at, _)| *at)
            .max();
        let first_after = answers
            .iter()
            .filter(|(at, ok)| *ok && *at > killed)
            .map(|(at, _)| *at)
            .min();
        let refused = answers.iter().filter(|(_, ok)| !ok).count();
        let acked = answers.iter().filter(|(_, ok)| *ok).count();
        match (last_before, first_after) {
            (Some(before), Some(after)) => println!(
                "  node {i}: unavailable {:.2} s (last ack before the kill to first after), first ack {:.0} ms after the promotion; {acked} acked, {refused} refused `unavailable`",
                (after - before).as_secs_f64(),
                after.saturating_duration_since(promoted).as_secs_f64() * 1000.0
            ),
            _ => println!(
                "  node {i}: publishing did not come back ({acked} acked, {refused} refused)"
            ),
        }
    }
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let (events, restarted) = subscriber.await.unwrap();
        println!(
            "  subscriber on node {i}: {events} events, {}",
            if restarted {
                "closed with 1012 (the new master lacked acked events)"
            } else {
                "never closed"
            }
        );
    }
    drop(nodes);
    drop(replica);
}
