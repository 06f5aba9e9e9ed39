//! HS256 tokens: verifying a client's, and signing one for development.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::grants::{Grants, RealtimeClaim};
use crate::protocol::ProtocolError;

/// The claims realtide reads; others are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub realtime: Option<RealtimeClaim>,
}

/// A connection's identity and permissions.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`, or the `userId` query parameter in open mode.
    pub user_id: Option<Arc<str>>,
    pub grants: Arc<Grants>,
    /// Unix seconds at which the token expires (none in open mode).
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn open(user_id: Option<String>) -> Self {
        Identity {
            user_id: user_id.map(Arc::from),
            grants: Grants::all(),
            expires_at: None,
        }
    }

    fn from_claims(claims: Claims) -> Self {
        Identity {
            grants: Grants::from_claim(claims.realtime.as_ref()),
            user_id: Some(claims.sub.into()),
            expires_at: Some(claims.exp),
        }
    }

    /// Time left before the token expires, if it does.
    pub fn time_left(&self) -> Option<Duration> {
        self.expires_at.map(|exp| {
            let exp = UNIX_EPOCH + Duration::from_secs(exp);
            exp.duration_since(SystemTime::now()).unwrap_or_default()
        })
    }
}

/// Verifies tokens with the configured secret; in open mode there is none.
#[derive(Clone)]
pub struct TokenVerifier {
    secret: Option<Arc<(DecodingKey, Validation)>>,
}

impl TokenVerifier {
    /// With `audience`, a token must carry it in `aud`; without, a token's
    /// `aud` is not checked.
    pub fn new(secret: Option<&str>, audience: Option<&str>) -> Self {
        let secret = secret.map(|s| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_required_spec_claims(&["exp", "sub"]);
            // An expired token is refused at once: the 4001 close relies on it.
            validation.leeway = 0;
            validation.validate_nbf = true;
            match audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    validation.required_spec_claims.insert("aud".into());
                }
                None => validation.validate_aud = false,
            }
            Arc::new((DecodingKey::from_secret(s.as_bytes()), validation))
        });
        TokenVerifier { secret }
    }

    pub fn is_open(&self) -> bool {
        self.secret.is_none()
    }

    /// The identity of a connecting client: from its token when a secret is
    /// set (a missing token is refused), else from `userId`.
    pub fn identify(
        &self,
        token: Option<&str>,
        user_id: Option<String>,
    ) -> Result<Identity, ProtocolError> {
        match (&self.secret, token) {
            (None, _) => Ok(Identity::open(user_id)),
            (Some(_), None) => Err(ProtocolError::unauthorized("a token is required")),
            (Some(_), Some(token)) => self.verify(token),
        }
    }

    /// Verifies a token (a secret must be configured).
    pub fn verify(&self, token: &str) -> Result<Identity, ProtocolError> {
        let Some(secret) = &self.secret else {
            return Err(ProtocolError::unauthorized(
                "this server has no token secret",
            ));
        };
        let (key, validation) = &**secret;
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| Identity::from_claims(data.claims))
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                    ErrorKind::ImmatureSignature => {
                        "the token is not valid yet (`nbf`)".to_string()
                    }
                    ErrorKind::InvalidAudience => {
                        "the token is for another audience (`aud`)".to_string()
                    }
                    ErrorKind::InvalidSignature => "the token's signature is wrong".to_string(),
                    ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                    _ => format!("the token is invalid: {e}"),
                };
                ProtocolError::unauthorized(why)
            })
    }
}

/// Signs a token for `sub` valid for `ttl`, with `extra` claims merged in.
pub fn sign(
    secret: &str,
    sub: &str,
    ttl: Duration,
    extra: Map<String, Value>,
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    claims.extend(extra);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

    fn signed(extra: serde_json::Value) -> String {
        let serde_json::Value::Object(extra) = extra else {
            unreachable!("claims are an object")
        };
        sign(SECRET, "alice", Duration::from_secs(60), extra).unwrap()
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_until_nbf() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let verifier = TokenVerifier::new(Some(SECRET), None);
        let later = verifier.verify(&signed(serde_json::json!({"nbf": now + 30})));
        assert!(later.unwrap_err().message.contains("nbf"));
        assert!(
            verifier
                .verify(&signed(serde_json::json!({"nbf": now - 1})))
                .is_ok()
        );
    }

    #[test]
    fn the_audience_is_checked_only_when_configured() {
        let for_app = signed(serde_json::json!({"aud": "my-app"}));
        let for_other = signed(serde_json::json!({"aud": "other"}));
        let without = signed(serde_json::json!({}));
        let open = TokenVerifier::new(Some(SECRET), None);
        assert!(
            open.verify(&for_app).is_ok(),
            "no audience configured: ignored"
        );
        assert!(open.verify(&without).is_ok());
        let strict = TokenVerifier::new(Some(SECRET), Some("my-app"));
        assert!(strict.verify(&for_app).is_ok());
        assert_eq!(
            strict.verify(&for_other).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            strict.verify(&without).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let listed = signed(serde_json::json!({"aud": ["x", "my-app"]}));
        assert!(strict.verify(&listed).is_ok(), "one of several audiences");
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_sub() {
        let token = sign(SECRET, "alice", Duration::from_secs(60), Map::new()).unwrap();
        let identity = TokenVerifier::new(Some(SECRET), None)
            .verify(&token)
            .unwrap();
        assert_eq!(identity.user_id.as_deref(), Some("alice"));
        assert!(identity.time_left().unwrap() > Duration::from_secs(50));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = sign("other", "alice", Duration::from_secs(60), Map::new()).unwrap();
        let error = TokenVerifier::new(Some(SECRET), None)
            .verify(&token)
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::Unauthorized);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut extra = Map::new();
        extra.insert("exp".into(), 1_000_000_000u64.into());
        let token = sign(SECRET, "alice", Duration::ZERO, extra).unwrap();
        let error = TokenVerifier::new(Some(SECRET), None)
            .verify(&token)
            .unwrap_err();
        assert!(error.message.contains("expired"), "{}", error.message);
    }

    #[test]
    fn open_mode_takes_the_user_id_and_a_secret_requires_a_token() {
        let open = TokenVerifier::new(None, None)
            .identify(None, Some("bob".into()))
            .unwrap();
        assert_eq!(open.user_id.as_deref(), Some("bob"));
        let closed = TokenVerifier::new(Some(SECRET), None).identify(None, Some("bob".into()));
        assert_eq!(closed.unwrap_err().code, ErrorCode::Unauthorized);
    }
}
