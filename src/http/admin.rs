//! The operators' API (admin key, or loopback when none is set).

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::join_all;

use super::{ApiError, bearer};
use crate::protocol::ProtocolError;
use crate::registry::ListTopics;
use crate::state::AppState;
use crate::topic::messages::GetTopicInfo;

fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    state.admin_guard.check(bearer(req), peer).map_err(|e| {
        state.metrics.error(e.code);
        e.into()
    })
}

/// `GET /admin/topics`: every running topic, sorted by name.
pub async fn topics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let topics = state
        .registry
        .send(ListTopics)
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    let mut infos: Vec<_> = join_all(topics.iter().map(|t| t.send(GetTopicInfo)))
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    infos.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(HttpResponse::Ok().json(infos))
}
