//! Delivers the stored webhooks: claims the oldest row of each order key
//! that is due, POSTs each (signed, with `X-Realtide-Event-Id`), and
//! records the outcome: a 2xx deletes the row; anything else retries it
//! after a backoff from 1 s doubling to 5 min, until `--webhook-retry-s`
//! has passed since it was recorded, when it is dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Notify;

use super::outbox::{self, Claimed, Outcome};
use crate::backend::BackendMetrics;
use crate::backend::signing::{SIGNATURE_HEADER, Signer};
use crate::clock::{now_ms, unix_now};
use crate::db::Database;

/// Rows delivered side by side, at most (each of another key).
const AT_ONCE: i64 = 64;
/// How often the table is looked at when nothing knocks (rows of other
/// nodes, retries coming due).
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// The longest wait between two tries of one row.
const MAX_BACKOFF_MS: i64 = 300_000;
/// The header that names the event.
const EVENT_ID_HEADER: &str = "X-Realtide-Event-Id";

pub(super) struct Settings {
    pub url: String,
    pub signer: Signer,
    pub timeout: Duration,
    pub retry_ms: i64,
    /// This sender's name in the table's leases.
    pub owner: String,
}

/// The delivery loop; runs for the life of the server.
pub(super) async fn deliver_all(
    db: Database,
    settings: Settings,
    knock: Arc<Notify>,
    metrics: BackendMetrics,
) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let settings = Arc::new(settings);
    // A lease outlives one delivery's timeout by far; a node that dies
    // mid-send holds its rows that long.
    let lease_ms = settings.timeout.as_millis() as i64 + 10_000;
    let mut counted_at = 0;
    loop {
        let now = now_ms();
        if now - counted_at >= 1000 {
            counted_at = now;
            if let Ok(pending) = db.run(outbox::pending).await {
                metrics.webhooks_pending.set(pending);
            }
        }
        let owner = settings.owner.clone();
        let claimed = db
            .run(move |conn| outbox::claim(conn, &owner, now, now + lease_ms, AT_ONCE))
            .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "reading the webhooks to deliver failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            let _ = tokio::time::timeout(LOOK_EVERY, knock.notified()).await;
            continue;
        }
        let sends = claimed
            .into_iter()
            .map(|row| deliver(&client, &settings, row));
        let outcomes: Vec<(i64, Outcome)> = join_all(sends).await;
        for (_, outcome) in &outcomes {
            let result = match outcome {
                Outcome::Delivered => "delivered",
                Outcome::Failed { .. } => "failed",
                Outcome::Dropped => "dropped",
            };
            metrics
                .webhook_deliveries
                .with_label_values(&[result])
                .inc();
        }
        let owner = settings.owner.clone();
        if let Err(e) = db
            .run(move |conn| outbox::settle(conn, &owner, &outcomes))
            .await
        {
            // The leases run out and the rows are sent again: at least once.
            tracing::warn!(error = %e, "recording webhook deliveries failed");
        }
    }
}

async fn deliver(client: &reqwest::Client, settings: &Settings, row: Claimed) -> (i64, Outcome) {
    let sent = client
        .post(&settings.url)
        .timeout(settings.timeout)
        .header("content-type", "application/json")
        .header(
            SIGNATURE_HEADER,
            settings.signer.sign(unix_now(), row.body.as_bytes()),
        )
        .header(EVENT_ID_HEADER, &row.id)
        .body(row.body.clone())
        .send()
        .await;
    let error = match sent {
        Ok(answer) if answer.status().is_success() => return (row.num, Outcome::Delivered),
        Ok(answer) => format!("the receiver answered {}", answer.status().as_u16()),
        Err(e) if e.is_timeout() => "the receiver did not answer in time".to_string(),
        Err(e) => format!("the receiver is unreachable: {e}"),
    };
    let now = now_ms();
    if now - row.created_at >= settings.retry_ms {
        tracing::warn!(id = %row.id, attempts = row.attempts + 1, %error, "a webhook is dropped: out of retries");
        return (row.num, Outcome::Dropped);
    }
    let backoff = 1000i64
        .saturating_mul(1 << row.attempts.clamp(0, 20))
        .min(MAX_BACKOFF_MS);
    (
        row.num,
        Outcome::Failed {
            next_at: now + backoff,
            error,
        },
    )
}
