//! Sessions: one `SessionActor` per connection (a WebSocket, or a
//! server-sent-events stream whose requests come as POSTs:
//! [`event_streams`]). It reads the client's
//! messages, checks permissions and limits, routes requests to topics
//! through the registry, and writes its replies through the connection's
//! outbox ([`crate::outbox`]).

pub mod actor;
pub mod context;
pub mod event_streams;

pub use actor::SessionActor;
