//! History over HTTP: the clients' read endpoint (socket credentials) and the
//! operators' read and delete (admin key).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::history::{self, Before, PageRequest};
use crate::protocol::ProtocolError;
use crate::state::AppState;
use crate::topic::{TopicKind, TopicName};

#[derive(Debug, Deserialize)]
pub struct PublicQuery {
    room: String,
    limit: Option<i64>,
    /// Milliseconds (at most 15 digits) or a message id.
    before: Option<String>,
    before_id: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AdminQuery {
    topic: String,
    limit: Option<i64>,
    before: Option<String>,
    before_id: Option<String>,
}

fn pubsub_topic(state: &AppState, spelling: &str) -> Result<TopicName, ProtocolError> {
    let name = TopicName::parse(spelling, &state.config.project_id)?;
    if name.kind() == TopicKind::Table {
        return Err(ProtocolError::bad_request(
            "history is kept for pub/sub topics only",
        ));
    }
    Ok(name)
}

async fn read_page(
    state: &AppState,
    name: &TopicName,
    page: PageRequest,
) -> Result<Vec<Value>, ApiError> {
    let room = name.to_string();
    let messages = state
        .db
        .run(move |conn| history::page(conn, &room, page))
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    Ok(messages
        .iter()
        .map(history::StoredMessage::to_json)
        .collect())
}

/// `GET /api/v1/public/realtime/history?room=&limit=&before=&before_id=`
pub async fn public(
    req: HttpRequest,
    query: web::Query<PublicQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let identity = super::client_identity(&req, query.token.as_deref(), &state)?;
    let name = pubsub_topic(&state, &query.room)?;
    if !identity.grants.can_subscribe(name.as_str()) {
        return Err(ProtocolError::forbidden(format!(
            "your token does not allow reading `{name}`"
        ))
        .into());
    }
    let before = query.before.as_deref().map(Before::from_query);
    let page = PageRequest::new(query.limit, before, query.before_id.as_deref())?;
    let messages = read_page(&state, &name, page).await?;
    Ok(HttpResponse::Ok().json(json!({"messages": messages})))
}

/// `GET /admin/history?topic=&limit=&before_id=`
pub async fn admin_read(
    req: HttpRequest,
    query: web::Query<AdminQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::admin::authorize(&req, &state)?;
    let name = pubsub_topic(&state, &query.topic)?;
    let before = query.before.as_deref().map(Before::from_query);
    let page = PageRequest::new(query.limit, before, query.before_id.as_deref())?;
    let messages = read_page(&state, &name, page).await?;
    Ok(HttpResponse::Ok().json(json!({"topic": name.as_str(), "messages": messages})))
}

/// `DELETE /admin/history?topic=`
pub async fn admin_delete(
    req: HttpRequest,
    query: web::Query<AdminQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::admin::authorize(&req, &state)?;
    let name = pubsub_topic(&state, &query.topic)?;
    let room = name.to_string();
    let deleted = state
        .db
        .run(move |conn| history::delete_room(conn, &room))
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({"ok": true, "deleted": deleted})))
}
