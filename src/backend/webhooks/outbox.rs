//! `_realtide_webhooks`: the webhooks waiting to be delivered, as the
//! writer stores them and the sender claims, retries and deletes them.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::{Event, ToWrite};
use crate::db::{Database, DbConnection, DbError};

/// Happenings written in one transaction, at most.
const BATCH: usize = 500;

/// Stores every happening recorded, in batches, and knocks on the sender.
/// A batch the database refuses is tried again until it is stored: what
/// was recorded is never dropped here.
pub(super) async fn write_all(
    db: Database,
    mut recorded: mpsc::UnboundedReceiver<ToWrite>,
    knock: Arc<Notify>,
) {
    while let Some(first) = recorded.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                ToWrite::Event(event) => batch.push(event),
                ToWrite::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = recorded.try_recv().ok();
            }
        }
        let batch = Arc::new(batch);
        while !batch.is_empty() {
            let rows = batch.clone();
            match db.run(move |conn| insert(conn, &rows)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), "storing webhooks failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        knock.notify_one();
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn insert(conn: &mut DbConnection, events: &[Event]) -> Result<(), DbError> {
    conn.transaction(|conn| {
        for event in events {
            diesel::sql_query(
                "INSERT INTO _realtide_webhooks (id, order_key, kind, body, created_at, next_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind::<Text, _>(&event.id)
            .bind::<Text, _>(&event.order_key)
            .bind::<Text, _>(event.kind)
            .bind::<Text, _>(&event.body)
            .bind::<BigInt, _>(event.created_at)
            .execute(conn)?;
        }
        Ok::<_, diesel::result::Error>(())
    })?;
    Ok(())
}

/// A row the sender took to deliver.
#[derive(Debug, Clone, QueryableByName)]
pub(super) struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub num: i64,
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub body: String,
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// Takes up to `limit` rows to deliver now: the oldest of each order key,
/// due, and not leased by a live sender. Each is leased to `owner` until
/// `lease_until`; one another sender leased first is left to it.
pub(super) fn claim(
    conn: &mut DbConnection,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Claimed>, DbError> {
    let heads: Vec<Claimed> = diesel::sql_query(
        "SELECT num, id, body, created_at, attempts FROM _realtide_webhooks \
         WHERE num IN (SELECT MIN(num) FROM _realtide_webhooks GROUP BY order_key) \
           AND next_at <= $1 AND (owner IS NULL OR lease_until < $1) \
         ORDER BY num LIMIT $2",
    )
    .bind::<BigInt, _>(now)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    let mut claimed = Vec::with_capacity(heads.len());
    for head in heads {
        let taken = diesel::sql_query(
            "UPDATE _realtide_webhooks SET owner = $1, lease_until = $2 \
             WHERE num = $3 AND (owner IS NULL OR lease_until < $4)",
        )
        .bind::<Text, _>(owner)
        .bind::<BigInt, _>(lease_until)
        .bind::<BigInt, _>(head.num)
        .bind::<BigInt, _>(now)
        .execute(conn)?;
        if taken == 1 {
            claimed.push(head);
        }
    }
    Ok(claimed)
}

/// What became of one delivery.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Delivered,
    /// Try again at `next_at`.
    Failed {
        next_at: i64,
        error: String,
    },
    /// Out of retries: dropped.
    Dropped,
}

/// Records the outcomes of `owner`'s deliveries.
pub(super) fn settle(
    conn: &mut DbConnection,
    owner: &str,
    outcomes: &[(i64, Outcome)],
) -> Result<(), DbError> {
    conn.transaction(|conn| {
        for (num, outcome) in outcomes {
            match outcome {
                Outcome::Delivered | Outcome::Dropped => {
                    diesel::sql_query(
                        "DELETE FROM _realtide_webhooks WHERE num = $1 AND owner = $2",
                    )
                    .bind::<BigInt, _>(*num)
                    .bind::<Text, _>(owner)
                    .execute(conn)?;
                }
                Outcome::Failed { next_at, error } => {
                    diesel::sql_query(
                        "UPDATE _realtide_webhooks SET attempts = attempts + 1, next_at = $1, \
                         last_error = $2, owner = NULL, lease_until = 0 \
                         WHERE num = $3 AND owner = $4",
                    )
                    .bind::<BigInt, _>(*next_at)
                    .bind::<Text, _>(error)
                    .bind::<BigInt, _>(*num)
                    .bind::<Text, _>(owner)
                    .execute(conn)?;
                }
            }
        }
        Ok::<_, diesel::result::Error>(())
    })?;
    Ok(())
}

/// A webhook that failed at least once, for the console.
#[derive(Debug, Clone, Serialize, QueryableByName)]
pub struct Failing {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    #[serde(rename = "type")]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub order_key: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
    #[diesel(sql_type = BigInt)]
    pub next_at: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// What waits: how many, and the failing ones (at most 50, oldest first).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pending: i64,
    pub failing: Vec<Failing>,
}

pub fn summary(conn: &mut DbConnection) -> Result<Summary, DbError> {
    let pending = pending(conn)?;
    let failing = diesel::sql_query(
        "SELECT id, kind, order_key, attempts, created_at, next_at, last_error \
         FROM _realtide_webhooks WHERE attempts > 0 ORDER BY num LIMIT 50",
    )
    .load(conn)?;
    Ok(Summary { pending, failing })
}

pub(super) fn pending(conn: &mut DbConnection) -> Result<i64, DbError> {
    let count: Count =
        diesel::sql_query("SELECT COUNT(*) AS n FROM _realtide_webhooks").get_result(conn)?;
    Ok(count.n)
}
