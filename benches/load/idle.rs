//! Idle connections (`idle`): the server's RSS growth per connection after a
//! burst of connections, each on a topic of its own, all on one, or on none,
//! beside a peer.

use super::*;

pub(super) async fn idle_compared(connections: usize, topics: &str, against: Option<Peer>) {
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
