//! The HTTP edge: the WebSocket upgrade, the backend's emit endpoint, the
//! admin API, health and metrics. Every error leaves as the JSON body of
//! the protocol's HTTP API.

pub mod admin;
pub mod console;
pub mod emit;
pub mod errors;
pub mod health;
pub mod history;
pub mod home;
pub mod inbound;
pub mod sse;
pub mod stream;
pub mod tables;
pub mod upgrade;
pub mod ws;

use actix_cors::Cors;
use actix_web::{HttpRequest, web};

use crate::auth::keys::KeyGuard;
use crate::config::Config;
use crate::state::AppState;

pub use errors::ApiError;

/// Largest HTTP request body (emit batches), in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Cross-origin reads of a client-facing endpoint, for the origins of
/// `--cors-origins` (`None`: any). Another origin's request still gets its
/// answer, without the headers that would let a browser read it.
fn cors(origins: &Option<Vec<String>>) -> Cors {
    cors_for(origins, &["GET"])
}

/// [`cors`] for `methods`.
fn cors_for(origins: &Option<Vec<String>>, methods: &[&'static str]) -> Cors {
    let cors = Cors::default()
        .allowed_methods(methods.iter().copied())
        .allow_any_header()
        .max_age(3600)
        .block_on_origin_mismatch(false);
    match origins {
        None => cors.allow_any_origin().send_wildcard(),
        Some(list) => list
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin)),
    }
}

/// Registers every route; shared by the server and any app embedding realtide.
pub fn routes(cfg: &mut web::ServiceConfig, config: &Config) {
    let origins = config.cors_origins();
    cfg.app_data(errors::json_config())
        .app_data(errors::query_config())
        .configure(console::routes)
        .service(resource("/").route(web::get().to(home::home)))
        .service(resource("/api/realtime").route(web::get().to(ws::connect)))
        .service(
            resource("/api/realtime/check")
                .wrap(cors(&origins))
                .route(web::get().to(ws::check)),
        )
        .service(
            resource("/api/realtime/sse")
                .wrap(cors(&origins))
                .route(web::get().to(sse::open)),
        )
        .service(
            resource("/api/realtime/sse/{conn}")
                .wrap(cors_for(&origins, &["POST"]))
                .route(web::post().to(sse::post)),
        )
        .service(resource("/api/realtime/emit").route(web::post().to(emit::emit)))
        .service(resource("/api/realtime/stream").route(web::post().to(stream::stream)))
        .service(resource("/admin/topics").route(web::get().to(admin::topics)))
        .service(resource("/admin/presence").route(web::get().to(admin::presence)))
        .service(resource("/admin/nodes").route(web::get().to(admin::nodes)))
        .service(resource("/admin/trends").route(web::get().to(admin::trends)))
        .service(resource("/admin/capture").route(web::get().to(admin::capture)))
        .service(resource("/admin/webhooks").route(web::get().to(admin::webhooks)))
        .service(resource("/admin/connections").route(web::get().to(admin::connections)))
        .service(resource("/admin/connections/{conn}").route(web::delete().to(admin::disconnect)))
        .service(
            resource("/admin/history")
                .route(web::get().to(history::admin_read))
                .route(web::delete().to(history::admin_delete)),
        )
        .service(
            resource("/api/realtime/tables/{table}")
                .wrap(cors(&origins))
                .route(web::get().to(tables::rows)),
        )
        .service(
            resource("/api/v1/public/realtime/history")
                .wrap(cors(&origins))
                .route(web::get().to(history::public)),
        )
        .service(
            resource("/healthz")
                .wrap(cors(&origins))
                .route(web::get().to(health::healthz)),
        )
        .service(
            resource("/realtide.js")
                .wrap(cors(&origins))
                .route(web::get().to(client_module)),
        )
        .service(
            resource("/readyz")
                .wrap(cors(&origins))
                .route(web::get().to(health::readyz)),
        )
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .default_service(web::to(errors::not_found));
}

/// The JavaScript client (`clients/js/realtide.js`), served as is.
async fn client_module() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../../clients/js/realtide.js"))
}

/// A resource whose other methods get a JSON 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(errors::method_not_allowed))
}

/// Lets the request through `guard` (its bearer key, or a loopback peer when
/// no key is configured), counting a refusal in the metrics.
pub fn require(req: &HttpRequest, guard: &KeyGuard, state: &AppState) -> Result<(), ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    guard.check(bearer(req), peer).map_err(|e| {
        state.metrics.error(e.code);
        e.into()
    })
}

/// The `Authorization: Bearer <credential>` of a request.
/// Who a client's HTTP request comes from, with the socket's credentials: a
/// token (the query's `token`, else `Authorization: Bearer`) or an API key
/// (`X-Aerostack-Key`). A refusal is counted as the socket's are.
pub fn client_identity(
    req: &HttpRequest,
    query_token: Option<&str>,
    state: &AppState,
) -> Result<crate::auth::Identity, crate::protocol::ProtocolError> {
    let token = query_token.or_else(|| bearer(req));
    let key = ws::header_key(req.headers());
    ws::identify(state, token, key, None).inspect_err(|e| state.metrics.error(e.code))
}

pub fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_in(req.headers())
}

/// The `Authorization: Bearer <credential>` among `headers`.
pub fn bearer_in(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let value = headers.get(actix_web::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}
