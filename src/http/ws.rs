//! `GET /api/realtime`: authenticates before the upgrade (401/403 with a JSON
//! body), then hands the socket to a new `SessionActor`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde::Deserialize;

use super::{ApiError, bearer};
use crate::http::connection::Socket;
use crate::protocol::{ErrorCode, ProtocolError, close};
use crate::session::SessionActor;
use crate::session::outbound::{Outbox, OutboxStream};
use crate::state::AppState;

/// The subprotocol the Aerostack SDKs offer; the handshake must select it.
pub const SUBPROTOCOL: &str = "aerostack-v1";
const TOKEN_PROTOCOL_PREFIX: &str = "aerostack-token.";

#[derive(Debug, Deserialize)]
pub struct ConnectQuery {
    #[serde(rename = "projectId")]
    project_id: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    token: Option<String>,
}

/// The subprotocols a client offers.
fn offered_protocols(req: &HttpRequest) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A token offered as the `aerostack-token.<JWT>` subprotocol.
fn subprotocol_token(req: &HttpRequest) -> Option<&str> {
    offered_protocols(req).find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
}

fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ConnectQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !is_upgrade(&req) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "this endpoint speaks WebSocket: send an upgrade request",
        ));
    }
    let query = query.into_inner();
    let token = query
        .token
        .as_deref()
        .or_else(|| bearer(&req))
        .or_else(|| subprotocol_token(&req));
    let identity = state
        .verifier
        .identify(token, query.user_id)
        .inspect_err(|e| state.metrics.error(e.code))?;
    if let Some(project) = query.project_id.filter(|p| *p != state.config.project_id) {
        state.metrics.error(ErrorCode::Forbidden);
        return Err(ProtocolError::forbidden(format!(
            "project `{project}` is not served here; this server is `{}`",
            state.config.project_id
        ))
        .into());
    }
    // Select aerostack-v1 when offered; else the token protocol, since a
    // browser drops a handshake that selects none of the protocols it offered.
    let token_protocol = match offered_protocols(&req).any(|p| p == SUBPROTOCOL) {
        true => None,
        false => subprotocol_token(&req).map(|t| format!("{TOKEN_PROTOCOL_PREFIX}{t}")),
    };
    let protocols: Vec<&str> = std::iter::once(SUBPROTOCOL)
        .chain(token_protocol.as_deref())
        .collect();
    let mut response = ws::handshake_with_protocols(&req, &protocols)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let Some(socket) = req.conn_data::<Socket>() else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "this server was not started by realtide::server: no socket to write frames to",
        ));
    };
    socket.upgrade();
    let outbox = Outbox::new(
        socket.clone(),
        state.config.max_pending_bytes,
        close::SLOW_CONSUMER,
        state.metrics.slow_consumer_closes.clone(),
    );
    let codec = actix_http::ws::Codec::new().max_size(state.config.max_frame_bytes as usize);
    let session = SessionActor::new(state, identity, outbox.clone());
    let output = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(OutboxStream::new(Box::pin(output), outbox)))
}
