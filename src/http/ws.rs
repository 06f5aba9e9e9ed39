//! `GET /api/realtime`: the WebSocket handshake. A real upgrade request is
//! handed over by actix-http with its connection (see [`super::upgrade`]);
//! [`accept`] authenticates it before the upgrade (401/403 with a JSON
//! body). What reaches actix-web's router here is not an upgrade.

use actix_http::RequestHead;
use actix_http::header::{self, HeaderValue};
use actix_web::http::header::HeaderMap;
use actix_web::web;
use serde::Deserialize;

use super::ApiError;
use crate::auth::api_keys::KeyCheck;
use crate::auth::token::Identity;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::state::AppState;

/// The subprotocol the Aerostack SDKs offer; the handshake must select it.
pub const SUBPROTOCOL: &str = "aerostack-v1";
const TOKEN_PROTOCOL_PREFIX: &str = "aerostack-token.";
const KEY_PROTOCOL_PREFIX: &str = "aerostack-key.";
/// The header the history endpoint (and the handshake) takes an API key in.
pub const KEY_HEADER: &str = "x-aerostack-key";

#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    #[serde(rename = "projectId")]
    project_id: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    token: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
    /// The console's credential: the admin key (empty when none is set and
    /// the peer is on loopback).
    #[serde(rename = "adminKey")]
    admin_key: Option<String>,
}

/// The identity of the console's socket: it may subscribe and publish anywhere.
const CONSOLE_USER: &str = "console";

/// The subprotocols a client offers.
fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A token offered as the `aerostack-token.<JWT>` subprotocol.
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    offered_protocols(headers).find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
}

/// An API key offered as the `aerostack-key.<key>` subprotocol.
fn subprotocol_key(headers: &HeaderMap) -> Option<&str> {
    offered_protocols(headers).find_map(|p| p.strip_prefix(KEY_PROTOCOL_PREFIX))
}

/// The `X-Aerostack-Key` header.
pub fn header_key(headers: &HeaderMap) -> Option<&str> {
    headers.get(KEY_HEADER).and_then(|v| v.to_str().ok())
}

/// Who a client is, from its token and its API key (docs/protocol.md): a
/// token decides identity and grants; a known key without a token grants
/// `--api-key-grants`; an unknown key is refused even beside a token.
pub fn identify(
    state: &AppState,
    token: Option<&str>,
    key: Option<&str>,
    user_id: Option<String>,
) -> Result<Identity, ProtocolError> {
    let key = state.api_keys.check(key)?;
    match (token, key) {
        (None, KeyCheck::Known) => {
            // With a secret set the key carries no identity.
            let user_id = user_id.filter(|_| state.verifier.is_open());
            Ok(state.api_keys.identity(user_id))
        }
        _ => state.verifier.identify(token, user_id),
    }
}

/// Who a connecting client is: known from its credentials, or (a connect
/// proxy set, no credentials brought) for the app's backend to say.
pub enum Admission {
    Known(Identity),
    AskBackend,
}

impl Admission {
    /// The identity: known, or the connect proxy's answer for connection
    /// `conn` (a refusal counted as the handshake's are).
    pub async fn identity(
        self,
        conn: &str,
        head: &RequestHead,
        state: &AppState,
    ) -> Result<Identity, ApiError> {
        match self {
            Admission::Known(identity) => Ok(identity),
            Admission::AskBackend => {
                let call = crate::backend::proxy::ConnectCall {
                    conn,
                    headers: &head.headers,
                    query: head.uri.query().unwrap_or_default(),
                    remote_addr: head.peer_addr,
                };
                state.backend.connect(call).await.map_err(|e| {
                    state.metrics.error(e.code);
                    e.into()
                })
            }
        }
    }
}

/// A connection allowed in: who it is, and the subprotocol to select.
pub struct Accepted {
    pub admission: Admission,
    /// None when the client offered no subprotocol we speak.
    pub protocol: Option<HeaderValue>,
}

/// Checks an upgrade request: the handshake itself, the token, the project.
pub fn accept(head: &RequestHead, state: &AppState) -> Result<Accepted, ApiError> {
    actix_http::ws::verify_handshake(head).map_err(|e| {
        state.metrics.error(ErrorCode::BadRequest);
        ApiError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    let headers = &head.headers;
    let peer = head.peer_addr.map(|a| a.ip());
    let admission = admit(head.uri.query().unwrap_or_default(), headers, peer, state)?;
    // Select aerostack-v1 when offered; else the token (or key) protocol,
    // since a browser drops a handshake that selects none of those it offered.
    let credential = subprotocol_token(headers)
        .map(|token| format!("{TOKEN_PROTOCOL_PREFIX}{token}"))
        .or_else(|| subprotocol_key(headers).map(|key| format!("{KEY_PROTOCOL_PREFIX}{key}")));
    let protocol = match offered_protocols(headers).any(|p| p == SUBPROTOCOL) {
        true => Some(HeaderValue::from_static(SUBPROTOCOL)),
        false => match credential {
            Some(protocol) => Some(HeaderValue::from_str(&protocol).map_err(|e| {
                state.metrics.error(ErrorCode::BadRequest);
                ApiError::new(ErrorCode::BadRequest, e.to_string())
            })?),
            None => None,
        },
    };
    Ok(Accepted {
        admission,
        protocol,
    })
}

/// Who a connecting client is, from its query string and headers: its
/// token and API key (query, headers or subprotocols) and its project; or,
/// with neither and a connect proxy set, for the backend to say.
pub(super) fn admit(
    query: &str,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    state: &AppState,
) -> Result<Admission, ApiError> {
    let refuse = |error: ApiError| {
        state.metrics.error(error.0.code);
        error
    };
    let query = web::Query::<ConnectQuery>::from_query(query)
        .map_err(|e| refuse(ApiError::new(ErrorCode::BadRequest, e.to_string())))?
        .into_inner();
    if let Some(key) = &query.admin_key {
        let key = Some(key.as_str()).filter(|k| !k.is_empty());
        state
            .admin_guard
            .check(key, peer)
            .map_err(|e| refuse(e.into()))?;
        return Ok(Admission::Known(Identity::open(Some(
            CONSOLE_USER.to_string(),
        ))));
    }
    let token = query
        .token
        .as_deref()
        .or_else(|| super::bearer_in(headers))
        .or_else(|| subprotocol_token(headers));
    let key = query
        .api_key
        .as_deref()
        .or_else(|| header_key(headers))
        .or_else(|| subprotocol_key(headers));
    if let Some(project) = query
        .project_id
        .as_ref()
        .filter(|p| **p != state.config.project_id)
    {
        return Err(refuse(
            ProtocolError::forbidden(format!(
                "project `{project}` is not served here; this server is `{}`",
                state.config.project_id
            ))
            .into(),
        ));
    }
    // With a connect proxy, a connection without credentials never gets
    // open mode: the backend says who it is.
    if token.is_none() && key.is_none() && state.backend.decides_connections() {
        return Ok(Admission::AskBackend);
    }
    let identity = identify(state, token, key, query.user_id).map_err(|e| refuse(e.into()))?;
    Ok(Admission::Known(identity))
}

/// `GET /api/realtime/check`: what the handshake with these credentials
/// would answer, readable where a WebSocket's refusal is not (browsers and
/// Node's WebSocket hide the 401/403 body): `{"ok":true,"userId"}`, or the
/// refusal's status and JSON error.
pub async fn check(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<actix_web::HttpResponse, ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    let admission = admit(req.query_string(), req.headers(), peer, &state)?;
    let conn = uuid::Uuid::new_v4().simple().to_string();
    let identity = admission.identity(&conn, req.head(), &state).await?;
    Ok(actix_web::HttpResponse::Ok()
        .json(serde_json::json!({"ok": true, "userId": identity.user_id.as_deref()})))
}

/// What actix-web's router gets for `/api/realtime`: never an upgrade
/// (those are taken before routing), so a clear 400.
pub async fn connect() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::BadRequest,
        "this endpoint speaks WebSocket: send an upgrade request \
         (`Connection: upgrade`, `Upgrade: websocket`)",
    ))
}
