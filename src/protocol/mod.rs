//! The wire protocol: client requests, server frames, error and close codes.

pub mod client;
pub mod codes;
pub mod frames;
pub mod server;

pub use codes::{ErrorCode, ProtocolError, close};
