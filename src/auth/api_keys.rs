//! Project API keys (docs/protocol.md): what the Aerostack SDKs send as
//! their `apiKey`. With none configured, a key is accepted and ignored. With
//! keys configured, an unknown key is refused (401), even beside a valid
//! token; a known key without a token opens a connection with the keys'
//! grants (`--api-key-grants`).

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::grants::{Grants, RealtimeClaim};
use super::token::Identity;
use crate::protocol::ProtocolError;

/// The configured keys and what a key alone may do.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<String>,
    grants: Arc<Grants>,
}

/// What a request's key (if any) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// No key came, or keys are not configured: as if there were none.
    Absent,
    /// A configured key.
    Known,
}

impl ApiKeys {
    /// From `--api-keys` (a comma list) and `--api-key-grants` (a
    /// `realtime` claim object).
    pub fn new(keys: Option<&str>, grants: Option<&str>) -> Result<Self, String> {
        let keys: Vec<String> = keys
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        let claim = grants
            .map(|text| {
                serde_json::from_str::<RealtimeClaim>(text)
                    .map_err(|e| format!("--api-key-grants must be a `realtime` claim object: {e}"))
            })
            .transpose()?;
        Ok(ApiKeys {
            keys,
            grants: Grants::from_claim(claim.as_ref()),
        })
    }

    /// Checks a request's key, comparing in constant time.
    pub fn check(&self, key: Option<&str>) -> Result<KeyCheck, ProtocolError> {
        let Some(key) = key else {
            return Ok(KeyCheck::Absent);
        };
        if self.keys.is_empty() {
            return Ok(KeyCheck::Absent);
        }
        // Every configured key is compared, so timing tells nothing of which matched.
        let known = self.keys.iter().fold(false, |found, k| {
            found | bool::from(k.as_bytes().ct_eq(key.as_bytes()))
        });
        if known {
            Ok(KeyCheck::Known)
        } else {
            Err(ProtocolError::unauthorized("unknown API key"))
        }
    }

    /// The identity of a connection that came with a known key and no
    /// token: `user_id` (open mode's `userId`, none when a secret is set)
    /// with the keys' grants.
    pub fn identity(&self, user_id: Option<String>) -> Identity {
        Identity {
            user_id: user_id.map(Into::into),
            grants: self.grants.clone(),
            expires_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn without_keys_a_key_is_ignored_and_with_keys_only_known_ones_pass() {
        let none = ApiKeys::new(None, None).unwrap();
        assert_eq!(none.check(Some("anything")).unwrap(), KeyCheck::Absent);
        let keys = ApiKeys::new(Some("k1, k2"), None).unwrap();
        assert_eq!(keys.check(Some("k2")).unwrap(), KeyCheck::Known);
        assert_eq!(keys.check(None).unwrap(), KeyCheck::Absent);
        assert_eq!(
            keys.check(Some("k3")).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            keys.check(Some("k")).unwrap_err().code,
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn grants_come_from_a_realtime_claim_object() {
        let keys = ApiKeys::new(Some("k"), Some(r#"{"subscribe":["chat/*"]}"#)).unwrap();
        let identity = keys.identity(None);
        assert!(identity.grants.can_subscribe("chat/a"));
        assert!(!identity.grants.can_subscribe("news/a"));
        assert!(
            !identity.grants.can_publish("chat/a"),
            "a claim without a list allows nothing"
        );
        assert!(ApiKeys::new(Some("k"), Some("[1]")).is_err());
    }
}
