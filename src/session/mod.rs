//! Sessions: one `SessionActor` per WebSocket. It parses the client's frames,
//! checks permissions and limits, routes requests to topics through the
//! registry, and writes every frame the client receives.

pub mod actor;
pub mod context;
pub mod keepalive;
pub mod messages;
pub mod outbound;
pub mod subscriptions;

pub use actor::SessionActor;
