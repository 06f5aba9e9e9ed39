//! `GET /healthz` (the process is up), `/readyz` (the database answers) and
//! `/metrics` (Prometheus text).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::ApiError;
use crate::protocol::ProtocolError;
use crate::state::AppState;

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"ok": true}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ping = tokio::time::timeout(READY_TIMEOUT, state.db.ping()).await;
    match ping {
        Ok(Ok(())) => {
            Ok(HttpResponse::Ok().json(json!({"ok": true, "database": state.db.backend()})))
        }
        Ok(Err(e)) => Err(ProtocolError::unavailable(e.to_string()).into()),
        Err(_) => Err(ProtocolError::unavailable("the database did not answer in time").into()),
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
