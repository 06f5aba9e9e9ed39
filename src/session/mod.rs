//! Sessions: one `SessionActor` per WebSocket. It reads the client's
//! messages, checks permissions and limits, routes requests to topics
//! through the registry, and writes its replies through the connection's
//! outbox ([`crate::outbox`]).

pub mod actor;
pub mod context;

pub use actor::SessionActor;
