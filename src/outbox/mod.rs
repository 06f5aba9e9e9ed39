//! A session's way out: the [`Outbox`] that topics and the session write
//! every frame through (replies, events, pings, pongs and the close),
//! straight to the connection's socket (see [`crate::socket`]).
//!
//! Why topics do not message the session actor per frame: a fan-out to
//! thousands of sessions would cost an actor message (an allocation, a
//! mailbox, a wake-up of the actor) per delivery. Instead a topic offers the
//! shared frame to the outbox, which checks the subscription and hands the
//! frame to the kernel from the topic's own thread.
//!
//! The outbox owns the connection's subscriptions (canonical topic ->
//! current subscription id and spelling), so a frame of a subscription that
//! ended or was replaced never goes out.
//!
//! Backpressure: a reader that lets more than `--max-pending-bytes` pile up
//! is too slow. The socket queues a 4008 close frame and refuses the rest;
//! whoever offered the frame that crossed the limit is told, once.

pub mod keepalive;
pub mod messages;
pub mod subscriptions;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use actix::Recipient;
use bytes::Bytes;
use bytestring::ByteString;
use prometheus::IntCounter;

use self::messages::{ConnectionInfo, Disconnect, FrameKind, ToSession};
pub use self::subscriptions::Subscription;
use self::subscriptions::Subscriptions;
use crate::cache::prefetch;
use crate::changes::Filter;
use crate::clock::uptime_ms;
use crate::socket::{MAX_CONTROL_FRAME, Offer, Socket, close_frame, close_payload, control_frame};

/// A WebSocket ping with no payload.
const PING: &[u8] = &[0x89, 0x00];

#[derive(Debug, Default)]
struct Shared {
    subscriptions: Subscriptions,
    /// Bumped on every change to `subscriptions`, so the last lookup may be
    /// remembered across frames.
    version: u64,
    last: LastLookup,
}

/// The last subscription lookup: a fan-out offers frame after frame of the
/// same topic (the same `Arc`), so one comparison replaces a hash lookup.
#[derive(Debug, Default, Clone, Copy)]
struct LastLookup {
    topic: usize,
    sub_id: u64,
    version: u64,
    current: bool,
}

impl Shared {
    fn is_current(&mut self, topic: &Arc<str>, sub_id: u64) -> bool {
        let key = Arc::as_ptr(topic) as *const u8 as usize;
        let last = self.last;
        if last.topic == key && last.sub_id == sub_id && last.version == self.version {
            return last.current;
        }
        let current = self
            .subscriptions
            .get(topic)
            .is_some_and(|s| s.id == sub_id);
        self.last = LastLookup {
            topic: key,
            sub_id,
            version: self.version,
            current,
        };
        current
    }

    fn remove(&mut self, topic: &str) -> bool {
        self.version += 1;
        self.subscriptions.remove(topic).is_some()
    }

    /// The topic refused subscription `sub_id`: if it was the current one,
    /// the one it would have replaced (if any) is current again.
    fn refused(&mut self, topic: &Arc<str>, sub_id: u64) {
        let Some(current) = self.subscriptions.get_mut(topic) else {
            return;
        };
        if current.id != sub_id {
            current.unlink(sub_id);
            return;
        }
        self.version += 1;
        match current.previous.take() {
            Some(previous) => *current = *previous,
            None => {
                self.subscriptions.remove(topic);
            }
        }
    }
}

/// What every connection's outbox shares: kept once per server, not once
/// per connection.
#[derive(Debug)]
pub struct OutboxPolicy {
    /// Bytes a reader may leave unread before it counts as too slow.
    limit: usize,
    /// The close frame a too-slow reader gets.
    slow_close: Bytes,
    slow_closes: IntCounter,
}

impl OutboxPolicy {
    pub fn new(limit: u64, close_code: u16, slow_closes: IntCounter) -> Arc<Self> {
        Arc::new(OutboxPolicy {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            slow_close: close_frame(close_code, "slow consumer"),
            slow_closes,
        })
    }
}

/// Shared by a session, the topics delivering to it, its output stream and
/// the registry, which keeps the connection alive through it
/// ([`keepalive`]) and ends it.
#[derive(Debug)]
pub struct Outbox {
    socket: Socket,
    policy: Arc<OutboxPolicy>,
    /// Set when the session sends its close frame: nothing may follow it.
    closing: AtomicBool,
    /// Set when the client's close frame arrived: once ours is out too, the
    /// closing handshake is complete and the connection may end at once.
    peer_closed: AtomicBool,
    /// When the client was last heard from ([`uptime_ms`]).
    heard_at: AtomicU64,
    /// When the client's token expires, in Unix seconds (`u64::MAX`: never).
    expires_at: AtomicU64,
    /// The connection's id as clients see it (`welcome.conn`).
    wire_id: uuid::Uuid,
    shared: Mutex<Shared>,
    /// The session, for whoever must end the connection or asks about it:
    /// one handle per connection, not one per subscription.
    session: OnceLock<Recipient<ToSession>>,
}

/// What became of a frame offered to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Sent, queued, or dropped on purpose (its subscription has ended).
    Ok,
    /// This frame found the client too slow; the 4008 close is queued.
    BecameSlow,
    /// The client was already too slow, or is gone.
    AlreadySlow,
}

impl From<Offer> for Reserve {
    fn from(offer: Offer) -> Reserve {
        match offer {
            Offer::Accepted => Reserve::Ok,
            Offer::BecameSlow => Reserve::BecameSlow,
            Offer::Refused => Reserve::AlreadySlow,
        }
    }
}

impl Outbox {
    pub fn new(socket: Socket, policy: Arc<OutboxPolicy>) -> Arc<Self> {
        Self::with_wire_id(socket, policy, uuid::Uuid::new_v4())
    }

    /// An outbox for the connection clients will know as `wire_id` (the
    /// id the connect proxy was told).
    pub fn with_wire_id(
        socket: Socket,
        policy: Arc<OutboxPolicy>,
        wire_id: uuid::Uuid,
    ) -> Arc<Self> {
        Arc::new(Outbox {
            socket,
            policy,
            closing: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            heard_at: AtomicU64::new(uptime_ms()),
            expires_at: AtomicU64::new(u64::MAX),
            wire_id,
            shared: Mutex::new(Shared::default()),
            session: OnceLock::new(),
        })
    }

    /// Names the session that ends this connection when told to; set once,
    /// when the session starts, before any topic or the registry hears of it.
    pub fn attach(&self, session: Recipient<ToSession>) {
        let _ = self.session.set(session);
    }

    /// Tells the session to end the connection.
    pub fn disconnect(&self, why: Disconnect) {
        if let Some(session) = self.session.get() {
            session.do_send(ToSession::End(why));
        }
    }

    /// Asks the session to describe its connection; `None` before it has
    /// started. A session that has stopped never answers: the receiver
    /// then reports the sender dropped.
    pub fn describe(&self) -> Option<tokio::sync::oneshot::Receiver<ConnectionInfo>> {
        let session = self.session.get()?;
        let (answer, described) = tokio::sync::oneshot::channel();
        // A session that is gone drops `answer`, and the receiver says so.
        session.do_send(ToSession::Describe(answer));
        Some(described)
    }

    /// The connection's id as clients see it.
    pub fn wire_id(&self) -> uuid::fmt::Simple {
        self.wire_id.simple()
    }

    /// The client was heard from just now.
    pub fn heard(&self) {
        self.heard_at.store(uptime_ms(), Ordering::Relaxed);
    }

    /// When the client was last heard from ([`uptime_ms`]).
    pub fn heard_at(&self) -> u64 {
        self.heard_at.load(Ordering::Relaxed)
    }

    /// Sets when the client's token expires, in Unix seconds.
    pub fn set_expiry(&self, expires_at: Option<u64>) {
        self.expires_at
            .store(expires_at.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the client's token expires, in Unix seconds (`u64::MAX`: never).
    pub fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    /// Sends the client a WebSocket ping, which it must answer.
    pub fn ping(&self) {
        if self.is_closing() {
            return;
        }
        let offer = self
            .socket
            .offer_frames(PING, self.policy.limit, &self.policy.slow_close);
        if self.counted(offer) == Reserve::BecameSlow {
            self.disconnect(Disconnect::TooSlow);
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock cannot leave it inconsistent: each
        // critical section is a single insert, remove or lookup.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn counted(&self, offer: Offer) -> Reserve {
        if offer == Offer::BecameSlow {
            self.policy.slow_closes.inc();
        }
        offer.into()
    }

    /// Sends a frame from a topic, unless its subscription has ended or the
    /// client reads too slowly.
    pub fn deliver(&self, topic: &Arc<str>, kind: FrameKind, frame: &ByteString) -> Reserve {
        self.deliver_checked(topic, kind, |socket, limit, close| {
            socket.offer_text(frame.as_bytes(), limit, close)
        })
    }

    /// Sends the wire bytes of whole frames of subscription `sub_id` (a
    /// topic's batch, encoded once for many subscribers), unless that
    /// subscription has ended or the client reads too slowly.
    pub fn deliver_wire(&self, topic: &Arc<str>, sub_id: u64, wire: &[u8]) -> Reserve {
        let kind = FrameKind::Stream { sub_id };
        self.deliver_checked(topic, kind, |socket, limit, close| {
            socket.offer_frames(wire, limit, close)
        })
    }

    /// Sends whole frames that answer the client's requests (a topic's acks
    /// of one turn, written at once).
    pub fn deliver_replies(&self, topic: &Arc<str>, frames: &[u8]) -> Reserve {
        self.deliver_checked(topic, FrameKind::Reply, |socket, limit, close| {
            socket.offer_frames(frames, limit, close)
        })
    }

    /// Writes with `write` what `kind` allows past the subscription check.
    fn deliver_checked(
        &self,
        topic: &Arc<str>,
        kind: FrameKind,
        write: impl FnOnce(&Socket, usize, &[u8]) -> Offer,
    ) -> Reserve {
        if self.is_closing() {
            return Reserve::Ok;
        }
        // The lock is held while the frame is written, so an unsubscribe is
        // never overtaken by a frame of the subscription it ends.
        let mut shared = self.shared();
        let send = match kind {
            FrameKind::Reply => true,
            FrameKind::Stream { sub_id } => shared.is_current(topic, sub_id),
            FrameKind::Admitted { sub_id } => {
                shared.subscriptions.admitted(topic, sub_id);
                true
            }
            FrameKind::Refusal { sub_id } => {
                shared.refused(topic, sub_id);
                true
            }
        };
        if !send {
            return Reserve::Ok;
        }
        let offer = write(&self.socket, self.policy.limit, &self.policy.slow_close);
        drop(shared);
        self.counted(offer)
    }

    /// Sends a frame of the session's own (replies, errors).
    pub fn send_own(&self, frame: &ByteString) -> Reserve {
        if self.is_closing() {
            return Reserve::Ok;
        }
        let offer =
            self.socket
                .offer_text(frame.as_bytes(), self.policy.limit, &self.policy.slow_close);
        self.counted(offer)
    }

    pub fn is_slow(&self) -> bool {
        self.socket.is_slow()
    }

    /// Whether the connection is a server-sent-events stream.
    pub fn is_event_stream(&self) -> bool {
        self.socket.is_event_stream()
    }

    /// Bytes written for this client that its socket did not take yet.
    pub fn backlog_bytes(&self) -> usize {
        self.socket.backlog_bytes()
    }

    /// Asks the CPU to fetch this outbox into its cache ahead of a delivery.
    pub fn prefetch(&self) {
        prefetch(self as *const Self as *const u8);
    }

    /// Asks the CPU to fetch the socket's shared state ahead of a delivery.
    pub fn prefetch_socket(&self) {
        self.socket.prefetch();
    }

    /// Whether the session sent its close frame: nothing more goes out, and
    /// it stops when the client answers the close or after a linger.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Answers the client's ping with its payload, behind what is already
    /// on its way and ahead of anything the session writes after.
    pub fn pong(&self, payload: &[u8]) {
        if self.is_closing() {
            return;
        }
        let mut frame = [0u8; MAX_CONTROL_FRAME];
        self.send_control(control_frame(0xA, payload, &mut frame));
    }

    /// Sends the close frame (with no payload when `code` is `None`, as an
    /// answer to a close that carried none); nothing is sent after it.
    pub fn close(&self, code: Option<u16>, reason: &str) {
        if self.closing.swap(true, Ordering::Relaxed) {
            return;
        }
        let payload = code.map_or_else(Vec::new, |code| close_payload(code, reason));
        let mut frame = [0u8; MAX_CONTROL_FRAME];
        self.send_control(control_frame(0x8, &payload, &mut frame));
    }

    fn send_control(&self, frame: &[u8]) {
        let policy = &self.policy;
        let offer = self
            .socket
            .offer_frames(frame, policy.limit, &policy.slow_close);
        // A session that made its reader too slow notices on its next
        // message or ping.
        self.counted(offer);
    }

    /// The client's close frame arrived.
    pub fn peer_closed(&self) {
        self.peer_closed.store(true, Ordering::Relaxed);
    }

    /// Whether both close frames have been exchanged (the client's arrived,
    /// ours was sent): nothing more is expected from the client.
    pub fn handshake_closed(&self) -> bool {
        self.peer_closed.load(Ordering::Relaxed) && self.is_closing()
    }

    /// Records a (new or replacing) subscription; what it replaces stays
    /// behind it until the topic answers (see [`Subscription::previous`]).
    pub fn subscribe(&self, topic: Arc<str>, mut subscription: Subscription) {
        let mut shared = self.shared();
        shared.version += 1;
        subscription.previous = shared.subscriptions.remove(&topic).map(Box::new);
        shared.subscriptions.insert(topic, subscription);
    }

    /// How many topics the connection is subscribed to (or subscribing to).
    pub fn subscription_count(&self) -> usize {
        self.shared().subscriptions.len()
    }

    /// Ends a subscription; answers whether there was one.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        self.shared().remove(topic)
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.shared().subscriptions.contains_key(topic)
    }

    /// Every subscription: canonical topic and spelling.
    pub fn subscriptions(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.shared()
            .subscriptions
            .iter()
            .map(|(topic, s)| (topic.clone(), s.spelling.clone()))
            .collect()
    }

    /// Every table subscription: topic, spelling and the client's own filter.
    pub fn table_filters(&self) -> Vec<(Arc<str>, Arc<str>, Filter)> {
        self.shared()
            .subscriptions
            .iter()
            .filter(|(topic, _)| !topic.contains('/'))
            .map(|(topic, s)| (topic.clone(), s.spelling.clone(), s.own_filter.clone()))
            .collect()
    }

    /// Ends every subscription; returns their topics.
    pub fn unsubscribe_all(&self) -> Vec<Arc<str>> {
        let mut shared = self.shared();
        shared.version += 1;
        shared.subscriptions.take_topics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::test_pair;

    fn outbox(socket: Socket) -> Arc<Outbox> {
        let counter = IntCounter::new("t", "t").unwrap();
        Outbox::new(socket, OutboxPolicy::new(1 << 20, 4008, counter))
    }

    fn subscription(topic: &Arc<str>, id: u64) -> Subscription {
        Subscription {
            id,
            spelling: topic.clone(),
            own_filter: Filter::default(),
            previous: None,
        }
    }

    #[tokio::test]
    async fn a_refused_resubscribe_leaves_the_earlier_subscription_current() {
        let (_connection, socket, mut client) = test_pair().await;
        let outbox = outbox(socket);
        let topic: Arc<str> = "a/b".into();
        let say = |kind, text: &str| outbox.deliver(&topic, kind, &ByteString::from(text));
        outbox.subscribe(topic.clone(), subscription(&topic, 1));
        say(FrameKind::Admitted { sub_id: 1 }, "1");
        // Two re-subscribes in flight; the first is refused, then the second.
        outbox.subscribe(topic.clone(), subscription(&topic, 2));
        outbox.subscribe(topic.clone(), subscription(&topic, 3));
        say(FrameKind::Refusal { sub_id: 2 }, "2");
        say(FrameKind::Stream { sub_id: 1 }, "-");
        say(FrameKind::Refusal { sub_id: 3 }, "3");
        say(FrameKind::Stream { sub_id: 1 }, "a");
        // An admitted re-subscribe replaces it for good.
        outbox.subscribe(topic.clone(), subscription(&topic, 4));
        say(FrameKind::Admitted { sub_id: 4 }, "4");
        say(FrameKind::Stream { sub_id: 1 }, "-");
        say(FrameKind::Stream { sub_id: 4 }, "b");
        assert_eq!(
            client.read_exactly(18).await,
            b"\x81\x011\x81\x012\x81\x013\x81\x01a\x81\x014\x81\x01b"
        );
        client.assert_nothing_more().await;
        outbox.subscribe(topic.clone(), subscription(&topic, 5));
        say(FrameKind::Refusal { sub_id: 5 }, "5");
        assert!(outbox.is_subscribed("a/b"), "4 is current again");
        say(FrameKind::Admitted { sub_id: 4 }, "x");
        assert_eq!(outbox.subscription_count(), 1);
    }

    #[tokio::test]
    async fn only_frames_of_current_subscriptions_go_out() {
        let (_connection, socket, mut client) = test_pair().await;
        let outbox = outbox(socket);
        let topic: Arc<str> = "a/b".into();
        outbox.subscribe(topic.clone(), subscription(&topic, 2));
        for (kind, text) in [
            (FrameKind::Stream { sub_id: 1 }, "old"),
            (FrameKind::Stream { sub_id: 2 }, "current"),
            (FrameKind::Reply, "ack"),
            (FrameKind::Refusal { sub_id: 2 }, "no"),
            (FrameKind::Stream { sub_id: 2 }, "after the refusal"),
        ] {
            assert_eq!(
                outbox.deliver(&topic, kind, &ByteString::from(text)),
                Reserve::Ok
            );
        }
        assert_eq!(
            client.read_exactly(18).await,
            b"\x81\x07current\x81\x03ack\x81\x02no"
        );
        client.assert_nothing_more().await;
        assert!(
            !outbox.is_subscribed("a/b"),
            "a refusal ends the subscription"
        );
    }

    #[tokio::test]
    async fn the_remembered_lookup_never_outlives_an_unsubscribe() {
        let (_connection, socket, mut client) = test_pair().await;
        let outbox = outbox(socket);
        let topic: Arc<str> = "a/b".into();
        outbox.subscribe(topic.clone(), subscription(&topic, 1));
        let one = FrameKind::Stream { sub_id: 1 };
        outbox.deliver(&topic, one, &ByteString::from("one"));
        outbox.unsubscribe("a/b");
        outbox.deliver(&topic, one, &ByteString::from("two"));
        outbox.subscribe(topic.clone(), subscription(&topic, 1));
        outbox.deliver(&topic, one, &ByteString::from("six"));
        assert_eq!(client.read_exactly(10).await, b"\x81\x03one\x81\x03six");
        client.assert_nothing_more().await;
    }

    #[tokio::test]
    async fn nothing_follows_the_sessions_close() {
        let (_connection, socket, mut client) = test_pair().await;
        let outbox = outbox(socket);
        let topic: Arc<str> = "a/b".into();
        outbox.subscribe(topic.clone(), subscription(&topic, 1));
        outbox.send_own(&ByteString::from("bye"));
        outbox.close(Some(1000), "done");
        outbox.close(Some(1001), "twice");
        outbox.pong(b"late");
        outbox.deliver(
            &topic,
            FrameKind::Stream { sub_id: 1 },
            &ByteString::from("late"),
        );
        outbox.send_own(&ByteString::from("late"));
        assert_eq!(client.read_exactly(5).await, b"\x81\x03bye");
        assert_eq!(client.read_exactly(8).await, b"\x88\x06\x03\xe8done");
        client.assert_nothing_more().await;
    }
}
