//! `realtide demo`: two small apps on realtide, embedded as a library, with
//! no build step of their own.
//!
//! - `/` is the Live Order Dashboard: the list comes from the app's own
//!   `GET /api/examples/orders`; the status dropdown posts to
//!   `/api/examples/orders/update`, which runs a SQL UPDATE and emits nothing.
//!   The page learns of every change from the `orders` table topic, whoever
//!   made it: try `sqlite3 realtide-demo.db "UPDATE orders SET status = 'delivered'"`.
//! - `/chat` is a chat room with persisted history, presence (who is here and
//!   who is typing) and an "ask the assistant" button whose canned answer is
//!   streamed token by token through `POST /api/realtime/stream`.
//!
//! It takes `realtide serve`'s flags (`--bind`, `--port`, `--database-url`,
//! ...); its database is `./realtide-demo.db` unless one is given.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::state::AppState;

/// The demo's database when none is given: not `realtide.db`, the server's
/// default, whose `orders` table (if any) is the user's own.
pub const DEMO_DATABASE: &str = "sqlite://realtide-demo.db";

const DASHBOARD: &str = include_str!("dashboard.html");
const CHAT: &str = include_str!("chat.html");
const ANSWER: &str = "Realtide streams each token the moment the backend writes it, \
so everyone in the room reads the answer as it is written, and anyone who joins late \
first gets what was already said.";

#[derive(QueryableByName, serde::Serialize)]
struct Order {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    customer_name: String,
    #[diesel(sql_type = Text)]
    product: String,
    #[diesel(sql_type = Double)]
    amount: f64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
}

fn html(page: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page)
}

async fn list_orders(state: web::Data<AppState>) -> HttpResponse {
    let orders = state
        .db
        .run(|conn| {
            Ok(diesel::sql_query(
                "SELECT id, customer_name, product, amount, status, created_at FROM orders \
                 ORDER BY created_at DESC LIMIT 50",
            )
            .load::<Order>(conn)?)
        })
        .await;
    match orders {
        Ok(orders) => HttpResponse::Ok().json(json!({"orders": orders})),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusUpdate {
    order_id: String,
    status: String,
}

/// Runs the UPDATE and nothing else: the table topic broadcasts it.
async fn update_order(state: web::Data<AppState>, update: web::Json<StatusUpdate>) -> HttpResponse {
    let StatusUpdate { order_id, status } = update.into_inner();
    let updated = state
        .db
        .run(move |conn| {
            Ok(
                diesel::sql_query("UPDATE orders SET status = $1 WHERE id = $2")
                    .bind::<Text, _>(status)
                    .bind::<Text, _>(order_id)
                    .execute(conn)?,
            )
        })
        .await;
    match updated {
        Ok(_) => HttpResponse::Ok().json(json!({"ok": true})),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct Ask {
    room: String,
}

/// Streams the canned answer into the room, a token every 60 ms, through the
/// server's own stream endpoint, as an LLM backend would.
async fn ask(ask: web::Json<Ask>, base: web::Data<String>) -> HttpResponse {
    let url = format!("{}/api/realtime/stream?topic={}", base.as_str(), ask.room);
    actix_web::rt::spawn(async move {
        let tokens: Vec<String> = ANSWER
            .split_inclusive(' ')
            .map(|t| format!("{}\n", json!(t)))
            .collect();
        let body = futures_util::stream::unfold(tokens.into_iter(), |mut tokens| async move {
            let token = tokens.next()?;
            tokio::time::sleep(Duration::from_millis(60)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from(token)), tokens))
        });
        let sent = reqwest::Client::new()
            .post(url)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "streaming the answer failed");
        }
    });
    HttpResponse::Accepted().json(json!({"ok": true}))
}

fn seed(database_url: &str) -> Result<(), String> {
    let mut conn = crate::db::connect(database_url).map_err(|e| e.to_string())?;
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS orders (
            id TEXT PRIMARY KEY,
            customer_name TEXT NOT NULL,
            product TEXT NOT NULL,
            amount DOUBLE PRECISION NOT NULL,
            status TEXT DEFAULT 'pending',
            created_at BIGINT NOT NULL
        )",
    )
    .map_err(|e| e.to_string())?;
    let now = crate::clock::now_ms();
    for (i, (name, product, amount)) in [
        ("Ada Lovelace", "Analytical engine", 1843.0),
        ("Grace Hopper", "Compiler", 1952.5),
        ("Alan Turing", "Bombe", 1939.0),
    ]
    .iter()
    .enumerate()
    {
        diesel::sql_query(
            "INSERT INTO orders (id, customer_name, product, amount, status, created_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind::<Text, _>(format!("{}", 101 + i))
        .bind::<Text, _>(*name)
        .bind::<Text, _>(*product)
        .bind::<Double, _>(*amount)
        .bind::<BigInt, _>(now - i as i64 * 60_000)
        .execute(&mut conn)
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Seeds the demo's `orders` table, then serves realtide with the demo's
/// pages and endpoints beside it until a signal stops it.
pub fn run(config: Config) -> Result<(), String> {
    seed(&config.database_url)?;
    actix_web::rt::System::new().block_on(async move {
        let listener = crate::server::bind_or_explain(&config.listen_address())?;
        let base = web::Data::new(format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        ));
        println!(
            "realtide demo: the order dashboard at {base}, the chat room at {base}/chat?name=ann (Ctrl-C stops it)",
            base = base.as_str()
        );
        let server = crate::server::start_with(listener, config, move |cfg| {
            cfg.app_data(base.clone())
                .route("/", web::get().to(|| async { html(DASHBOARD) }))
                .route("/chat", web::get().to(|| async { html(CHAT) }))
                .route("/api/examples/orders", web::get().to(list_orders))
                .route("/api/examples/orders/update", web::post().to(update_order))
                .route("/api/examples/ask", web::post().to(ask));
        })
        .map_err(|e| e.to_string())?;
        server.run_until_signal().await.map_err(|e| e.to_string())
    })
}
