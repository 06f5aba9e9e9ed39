//! Messages a session actor receives from topics, the registry and the
//! admin API.

use actix::prelude::*;
use serde::Serialize;

/// A connection's id inside this process (the wire `conn` id is a separate string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What a frame queued in a session's outbox belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Part of subscription `sub_id`'s stream; dropped unless that subscription
    /// is still current, so nothing leaks past an unsubscribe or re-subscribe.
    Stream { sub_id: u64 },
    /// A reply to a request (a publish ack): always written.
    Reply,
    /// Subscription `sub_id`'s `subscribed`: always written (every request
    /// gets its reply), and what that subscription replaced is forgotten.
    Admitted { sub_id: u64 },
    /// Subscription `sub_id` was refused (an `error` frame): always written,
    /// and the session forgets that subscription.
    Refusal { sub_id: u64 },
}

/// What reaches a session from outside its connection. It comes through the
/// session's outbox ([`crate::outbox::Outbox`]), the one handle
/// every topic and the registry already hold.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ToSession {
    End(Disconnect),
    /// The admin API asks what the connection is.
    Describe(tokio::sync::oneshot::Sender<ConnectionInfo>),
}

/// Someone other than the client ends the connection: a topic, the
/// registry's keepalive sweep, the server shutting down, or an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client reads too slowly: stop (the 4008 close is already queued).
    TooSlow,
    /// The topic lost continuity (a new epoch, or events no longer kept):
    /// close with 1012, so the client resumes and learns `recovered: false`.
    Restart,
    /// The server is shutting down: close with 1012 so the client
    /// reconnects (here or elsewhere).
    Shutdown,
    /// An operator ends the connection: close with 4003.
    Kicked,
    /// Nothing arrived for the idle timeout: close with 4000.
    IdleTimeout,
    /// The client's token may have expired: close with 4001 if it has (the
    /// client may have sent a fresh one meanwhile).
    TokenExpired,
}

/// What the admin API shows of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// The id clients see (`welcome.conn`, presence entries).
    pub conn: String,
    #[serde(rename = "userId")]
    pub user_id: Option<String>,
    /// Its topics, as it spelled them.
    pub subscriptions: Vec<String>,
    /// Topics where it tracks presence.
    pub tracked: usize,
    /// When it connected, in ms since the Unix epoch.
    pub opened_at: i64,
    pub frames_in: u64,
    /// Bytes written for it that its socket did not take yet.
    pub backlog_bytes: usize,
    /// `websocket`, or `sse` for a server-sent-events stream.
    pub transport: &'static str,
}
