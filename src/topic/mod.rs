//! Topics: names, and the `TopicActor` that owns one topic's subscribers,
//! sequence, epoch and replay buffer.

pub mod actor;
pub mod fanout;
pub mod members;
pub mod messages;
pub mod name;
pub mod presence;
pub mod replay;
pub mod spellings;
pub mod streams;

pub use actor::TopicActor;
pub use name::{TopicKind, TopicName};
