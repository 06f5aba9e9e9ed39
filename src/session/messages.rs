//! Messages a session actor receives from topics and the registry.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

/// A connection's id inside this process (the wire `conn` id is a separate string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A frame for the client, from a topic: `subscribed`, replayed and live
/// events, and publish acks. A frame for subscription `sub_id` of `topic` is
/// dropped unless that subscription is still current, so nothing leaks past
/// an unsubscribe or re-subscribe; a reply (`sub_id: None`) always goes out.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    pub topic: Arc<str>,
    pub sub_id: Option<u64>,
    pub frame: ByteString,
}

/// A topic found that the client reads too slowly: the session must close (4008).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ClientTooSlow;

/// The server is shutting down: close with 1001 so the client reconnects elsewhere.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;
