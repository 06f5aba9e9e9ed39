//! `ApiError`: a protocol error as an HTTP response with the §5 JSON body.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, error, web};
use serde_json::json;

use super::MAX_BODY_BYTES;
use crate::protocol::{ErrorCode, ProtocolError};

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ApiError(#[from] pub ProtocolError);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ProtocolError::new(code, message))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({
            "error": {"code": self.0.code.as_str(), "message": self.0.message}
        }))
    }
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(ErrorCode::NotFound, format!("no route for {}", req.path())).error_response()
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(json!({
        "error": {"code": "bad_request", "message": format!("{} is not allowed on {}", req.method(), req.path())}
    }))
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .content_type_required(false)
        .error_handler(|e, _req| {
            let code = match e {
                error::JsonPayloadError::Overflow { .. }
                | error::JsonPayloadError::OverflowKnownLength { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::BadRequest,
            };
            ApiError::new(code, e.to_string()).into()
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _req| ApiError::new(ErrorCode::BadRequest, e.to_string()).into())
}
