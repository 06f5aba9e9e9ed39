//! The server and admin keys that guard the backend's and operators' HTTP
//! endpoints. Without a key configured, only loopback peers are answered.

use std::net::IpAddr;

use subtle::ConstantTimeEq;

use crate::protocol::ProtocolError;

/// One endpoint family's guard.
#[derive(Clone)]
pub struct KeyGuard {
    /// What the key is called in error messages (`server key`, `admin key`).
    label: &'static str,
    key: Option<String>,
}

impl KeyGuard {
    pub fn new(label: &'static str, key: Option<String>) -> Self {
        KeyGuard { label, key }
    }

    /// Checks a request's bearer credential, or its peer when no key is set.
    pub fn check(&self, bearer: Option<&str>, peer: Option<IpAddr>) -> Result<(), ProtocolError> {
        match &self.key {
            Some(key) => match bearer {
                Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
                Some(_) => Err(ProtocolError::unauthorized(format!("wrong {}", self.label))),
                None => Err(ProtocolError::unauthorized(format!(
                    "`Authorization: Bearer <{}>` is required",
                    self.label
                ))),
            },
            // Behind a dual-stack bind (`[::]`), local IPv4 clients arrive
            // as IPv4-mapped addresses (`::ffff:127.0.0.1`).
            None if peer.is_some_and(|ip| ip.to_canonical().is_loopback()) => Ok(()),
            None => Err(ProtocolError::forbidden(format!(
                "no {} is configured: only loopback peers are answered",
                self.label
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn without_a_key_only_loopback_is_answered() {
        let guard = KeyGuard::new("admin key", None);
        assert!(
            guard
                .check(None, Some("127.0.0.1".parse().unwrap()))
                .is_ok()
        );
        assert!(guard.check(None, Some("::1".parse().unwrap())).is_ok());
        let remote = guard.check(None, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(remote.unwrap_err().code, ErrorCode::Forbidden);
        let mapped = Some("::ffff:127.0.0.1".parse().unwrap());
        assert!(
            guard.check(None, mapped).is_ok(),
            "mapped loopback is loopback"
        );
        let mapped_remote = Some("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(
            guard.check(None, mapped_remote).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn with_a_key_the_key_is_required_even_on_loopback() {
        let guard = KeyGuard::new("admin key", Some("k".into()));
        let local = Some("127.0.0.1".parse().unwrap());
        assert!(guard.check(Some("k"), local).is_ok());
        assert_eq!(
            guard.check(None, local).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            guard.check(Some("x"), local).unwrap_err().code,
            ErrorCode::Unauthorized
        );
    }
}
