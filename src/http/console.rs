//! `/console`: the operators' web console (`clients/console`), static files
//! built into the binary. The page itself is public; everything it shows
//! comes from the admin API, which asks for the admin key.

use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../../clients/console/index.html");
const APP: &str = include_str!("../../clients/console/app.js");
const STYLE: &str = include_str!("../../clients/console/style.css");

fn file(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/console",
        web::get().to(|| async { file("text/html; charset=utf-8", INDEX) }),
    )
    .route(
        "/console/app.js",
        web::get().to(|| async { file("text/javascript; charset=utf-8", APP) }),
    )
    .route(
        "/console/style.css",
        web::get().to(|| async { file("text/css; charset=utf-8", STYLE) }),
    );
}
