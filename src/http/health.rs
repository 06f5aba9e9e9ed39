//! `GET /healthz` (the process is up), `/readyz` (the database answers) and
//! `/metrics` (Prometheus text).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// `/readyz`'s header naming the capture mode: `logical` or `triggers`.
pub const CAPTURE_HEADER: &str = "realtide-capture";

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"ok": true}))
}

/// `{"database":bool}`, and `"redis":bool` in a cluster; 503 when the
/// database does not answer (Redis being down leaves table topics working).
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ping = tokio::time::timeout(READY_TIMEOUT, state.db.ping()).await;
    let database = matches!(ping, Ok(Ok(())));
    let mut body = json!({"database": database});
    if let Some(broker) = &state.broker {
        body["redis"] = json!(broker.is_up());
    }
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    if draining {
        body["draining"] = json!(true);
    }
    // The body is the documented one; how changes are captured rides in a header.
    let capture = (CAPTURE_HEADER, state.capture.report().mode);
    if database && !draining {
        return HttpResponse::Ok().insert_header(capture).json(body);
    }
    let why = match ping {
        _ if draining => "this node is shutting down".to_string(),
        Ok(Err(e)) => e.to_string(),
        _ => "the database did not answer in time".to_string(),
    };
    if !draining {
        state.metrics.error(crate::protocol::ErrorCode::Unavailable);
    }
    body["error"] = json!({"code": "unavailable", "message": why});
    HttpResponse::ServiceUnavailable()
        .insert_header(capture)
        .json(body)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
