//! The operators' API (admin key, or loopback when none is set).

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::join_all;

use super::ApiError;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::registry::{FindTopic, KickSession, ListSessions, ListTopics};
use crate::state::AppState;
use crate::topic::TopicName;
use crate::topic::messages::{GetPresence, GetTopicInfo};
use serde_json::json;

pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    super::require(req, &state.admin_guard, state)
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
    if state.broker.is_none() {
        return Ok(HttpResponse::Ok().json(infos));
    }
    // In a cluster each entry says which node it is on (this one).
    let infos: Vec<serde_json::Value> = infos
        .into_iter()
        .map(|info| {
            let mut entry = json!(info);
            entry["node"] = json!(&*state.node_id);
            entry
        })
        .collect();
    Ok(HttpResponse::Ok().json(infos))
}

/// `GET /admin/trends`: this node's figures over the last 15 minutes, a
/// sample every 10 s, oldest first.
pub async fn trends(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(json!({
        "interval_ms": crate::trends::SAMPLE_EVERY.as_millis() as u64,
        "samples": state.trends.samples(),
    })))
}

/// `GET /admin/webhooks`: what waits to be told to the app's backend and
/// why (the failing ones' last error), and how its proxies answer.
pub async fn webhooks(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let summary = state
        .db
        .run(crate::backend::webhooks::summary)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    let calls = &state.metrics.backend.proxy_calls;
    let mut proxies = serde_json::Map::new();
    for proxy in crate::backend::metrics::PROXIES {
        let counts: serde_json::Map<String, serde_json::Value> = crate::backend::metrics::RESULTS
            .iter()
            .map(|result| {
                let n = calls.with_label_values(&[proxy, result]).get();
                (result.to_string(), json!(n))
            })
            .collect();
        proxies.insert(proxy.to_string(), json!(counts));
    }
    Ok(HttpResponse::Ok().json(json!({
        "enabled": state.webhooks.is_on(),
        "pending": summary.pending,
        "failing": summary.failing,
        "proxies": proxies,
    })))
}

/// `GET /admin/nodes`: the live nodes of the cluster (this one alone without Redis).
pub async fn nodes(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let Some(broker) = &state.broker else {
        let connections = state.metrics.connections.get().max(0);
        return Ok(HttpResponse::Ok().json(json!([{
            "node": &*state.node_id,
            "connections": connections,
            "started_at": state.started_at,
            "last_seen_ms": 0,
        }])));
    };
    let nodes = broker
        .nodes()
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok().json(nodes))
}

/// `GET /admin/capture`: how table changes are captured on this node, and
/// (logical decoding) how much WAL the replication slot holds back.
pub async fn capture(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let report = state.capture.report();
    let mut body = json!(report);
    if report.mode == "logical" {
        body["slot"] = json!(crate::changes::logical::slot_name(state.db.epoch()));
        body["publication"] = json!(crate::changes::logical::PUBLICATION);
        body["slot_lag_bytes"] = json!(state.metrics.capture_slot_lag_bytes.get());
    }
    body["backend"] = json!(state.db.backend());
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Debug, serde::Deserialize)]
pub struct PresenceQuery {
    topic: String,
}

/// `GET /admin/presence?topic=`: the topic's presence entries (none when it does not run).
pub async fn presence(
    req: HttpRequest,
    query: web::Query<PresenceQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let name = TopicName::parse(&query.topic, &state.config.project_id)?;
    let topic = state
        .registry
        .send(FindTopic {
            topic: name.shared(),
        })
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    let presences = match (topic, &state.broker) {
        (Some(topic), _) => topic.send(GetPresence).await.unwrap_or_else(|_| json!({})),
        // Not running here: the cluster still knows its entries.
        (None, Some(broker)) => {
            let entries = broker
                .presence(name.as_str())
                .await
                .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
            let mut presence = crate::topic::presence::Presence::default();
            for entry in entries {
                presence.track_wire(&entry.key, &entry.conn, entry.state);
            }
            presence.snapshot()
        }
        (None, _) => json!({}),
    };
    Ok(HttpResponse::Ok().json(json!({"topic": name.as_str(), "presences": presences})))
}

/// `GET /admin/connections`: this node's open connections, oldest first.
pub async fn connections(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let sessions = state
        .registry
        .send(ListSessions)
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    let mut infos: Vec<_> = join_all(sessions.iter().filter_map(|s| s.describe()))
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    infos.sort_by(|a, b| a.opened_at.cmp(&b.opened_at).then(a.conn.cmp(&b.conn)));
    Ok(HttpResponse::Ok().json(json!({"node": &*state.node_id, "connections": infos})))
}

/// `DELETE /admin/connections/{conn}`: closes that connection with 4003.
pub async fn disconnect(
    req: HttpRequest,
    conn: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let conn = conn.into_inner();
    let found = state
        .registry
        .send(KickSession {
            wire_id: conn.clone(),
        })
        .await
        .map_err(|e| ProtocolError::unavailable(e.to_string()))?;
    if !found {
        return Err(ProtocolError::new(
            crate::protocol::ErrorCode::NotFound,
            format!("no connection `{conn}` on this node"),
        )
        .into());
    }
    Ok(HttpResponse::Ok().json(json!({"ok": true, "conn": conn, "code": 4003})))
}
