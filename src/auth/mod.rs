//! Who a client is and what it may do: HS256 tokens, their `realtime` claim,
//! and the topic patterns it grants (docs/protocol.md).

pub mod api_keys;
pub mod grants;
pub mod keys;
pub mod token;

pub use grants::Grants;
pub use token::{Claims, Identity, TokenVerifier};
