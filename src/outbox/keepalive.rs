//! Keepalive for every open connection in one periodic sweep (the
//! registry's) instead of a timer per connection: a timer costs an idle
//! connection about 150 bytes, the sweep a few atomic loads per connection
//! per tick, as uWebSockets does with its one timeout sweep per loop.
//!
//! Each connection is pinged every third of the idle timeout, so a client
//! that only answers pings stays open (a server-sent-events stream gets a
//! comment line instead, and is never idle: its client only listens). One from which nothing has arrived
//! for the whole idle timeout is told to close (4000); one whose token has
//! expired, to close (4001); one found too slow a reader when its ping is
//! due, to stop. The sweep
//! runs every tenth of the idle timeout (between 10 ms and 1 s), so each of
//! these happens at most that much late.

use std::sync::Arc;
use std::time::Duration;

use super::Outbox;
use super::messages::Disconnect;
use crate::clock::uptime_ms;

/// The idle timeout, and what follows from it.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    idle_ms: u64,
}

/// An open connection as the sweep watches it.
#[derive(Debug)]
pub struct Watched {
    pub outbox: Arc<Outbox>,
    /// When the next ping is due ([`uptime_ms`]).
    next_ping: u64,
}

impl Keepalive {
    pub fn new(idle: Duration) -> Self {
        Keepalive {
            idle_ms: (idle.as_millis() as u64).max(1),
        }
    }

    /// How often the sweep runs.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.idle_ms / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    fn ping_every(&self) -> u64 {
        (self.idle_ms / 3).max(1)
    }

    /// A connection that just opened: its first ping is a third of the idle
    /// timeout away.
    pub fn watch(&self, outbox: Arc<Outbox>) -> Watched {
        Watched {
            outbox,
            next_ping: uptime_ms() + self.ping_every(),
        }
    }

    /// One sweep's look at one connection, at `now` ([`uptime_ms`]) and
    /// `unix_now` (Unix seconds, [`crate::clock::unix_now`]).
    pub fn check(&self, watched: &mut Watched, now: u64, unix_now: u64) {
        let outbox = &watched.outbox;
        if outbox.is_closing() {
            return;
        }
        // An event stream's client only listens; a write that fails ends it.
        if now.saturating_sub(outbox.heard_at()) >= self.idle_ms && !outbox.is_event_stream() {
            outbox.disconnect(Disconnect::IdleTimeout);
            return;
        }
        if unix_now >= outbox.expires_at() {
            outbox.disconnect(Disconnect::TokenExpired);
        }
        if now >= watched.next_ping {
            watched.next_ping = now + self.ping_every();
            // Topics stop a reader that falls too far behind as they find
            // it; this catches one that fell behind on the session's own
            // frames. It takes the socket's lock, so only when pinging.
            match outbox.is_slow() {
                true => outbox.disconnect(Disconnect::TooSlow),
                false => outbox.ping(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;

    use super::*;
    use crate::outbox::OutboxPolicy;
    use crate::socket::test_pair;

    #[tokio::test]
    async fn a_connection_is_pinged_a_third_of_the_idle_timeout_apart() {
        let (_connection, socket, mut client) = test_pair().await;
        let policy = OutboxPolicy::new(1 << 20, 4008, IntCounter::new("t", "t").unwrap());
        let outbox = Outbox::new(socket, policy);
        let keepalive = Keepalive::new(Duration::from_millis(900));
        assert_eq!(keepalive.period(), Duration::from_millis(90));
        let mut watched = keepalive.watch(outbox.clone());
        let start = uptime_ms();
        outbox.heard();
        keepalive.check(&mut watched, start + 200, 0);
        client.assert_nothing_more().await;
        keepalive.check(&mut watched, start + 300, 0);
        keepalive.check(&mut watched, start + 400, 0);
        assert_eq!(client.read_exactly(2).await, b"\x89\x00");
        client.assert_nothing_more().await;
        keepalive.check(&mut watched, start + 600, 0);
        assert_eq!(client.read_exactly(2).await, b"\x89\x00");
        outbox.close(None, "");
        assert_eq!(client.read_exactly(2).await, b"\x88\x00");
        keepalive.check(&mut watched, start + 800, 0);
        client.assert_nothing_more().await;
    }
}
