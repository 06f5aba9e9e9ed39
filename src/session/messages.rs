//! Messages a session actor receives from topics and the registry.

use actix::prelude::*;

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

/// A topic tells the session to end the connection.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Disconnect {
    /// The client reads too slowly: stop (the 4008 close is already queued).
    TooSlow,
    /// The topic lost continuity (a new epoch, or events no longer kept):
    /// close with 1012, so the client resumes and learns `recovered: false`.
    Restart,
}

/// The server is shutting down: close with 1012 so the client reconnects (here or elsewhere).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;
