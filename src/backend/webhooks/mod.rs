//! Webhooks (PROTOCOL §10): the backend is told when a topic gets its first
//! subscriber or loses its last, when a presence key joins or leaves, and
//! when a connection opens or closes.
//!
//! Nothing told is lost: a happening is written to `_realtide_webhooks`
//! (`outbox`) by one writer task that takes every happening waiting and
//! stores them in one transaction, and a sender task (`sender`) delivers the
//! rows: only the oldest of each order key (the topic, or the connection),
//! so each key's events go in order; retried with backoff until a 2xx or
//! the retry window ends; claimed with a lease, so each row is sent by one
//! node of a cluster and another takes over the rows of one that died.
//! A row is deleted once delivered.

mod outbox;
mod sender;

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};

use crate::clock::now_ms;
use crate::config::Config;
use crate::db::Database;
use crate::metrics::Metrics;

pub use self::outbox::{Failing, Summary, summary};

/// Every webhook type.
pub const KINDS: [&str; 6] = [
    "topic.occupied",
    "topic.vacated",
    "presence.join",
    "presence.leave",
    "connection.opened",
    "connection.closed",
];

/// Something the backend is told of.
#[derive(Debug, Clone)]
pub enum Happening {
    /// A topic's first subscriber arrived (`occupied: true`), or its last left.
    Occupancy {
        topic: String,
        occupied: bool,
    },
    /// A presence key got its first entry (`joined: true`), or lost its last.
    Presence {
        topic: String,
        key: String,
        state: Map<String, Value>,
        joined: bool,
    },
    ConnectionOpened {
        conn: String,
        user: Option<String>,
    },
    ConnectionClosed {
        conn: String,
        user: Option<String>,
        code: Option<u16>,
        reason: String,
    },
}

/// What the cluster decided, as the backend is told it.
impl From<crate::broker::Told> for Happening {
    fn from(told: crate::broker::Told) -> Happening {
        use crate::broker::Told;
        match told {
            Told::Occupancy { topic, occupied } => Happening::Occupancy { topic, occupied },
            Told::Presence {
                topic,
                key,
                state,
                joined,
            } => Happening::Presence {
                topic,
                key,
                state,
                joined,
            },
        }
    }
}

impl Happening {
    fn kind(&self) -> &'static str {
        match self {
            Happening::Occupancy { occupied: true, .. } => "topic.occupied",
            Happening::Occupancy { .. } => "topic.vacated",
            Happening::Presence { joined: true, .. } => "presence.join",
            Happening::Presence { .. } => "presence.leave",
            Happening::ConnectionOpened { .. } => "connection.opened",
            Happening::ConnectionClosed { .. } => "connection.closed",
        }
    }

    /// Events of one key are delivered in order.
    fn order_key(&self) -> String {
        match self {
            Happening::Occupancy { topic, .. } | Happening::Presence { topic, .. } => {
                format!("topic:{topic}")
            }
            Happening::ConnectionOpened { conn, .. } | Happening::ConnectionClosed { conn, .. } => {
                format!("conn:{conn}")
            }
        }
    }

    fn data(&self, node: &str) -> Value {
        match self {
            Happening::Occupancy { topic, .. } => json!({"topic": topic}),
            Happening::Presence {
                topic, key, state, ..
            } => json!({"topic": topic, "key": key, "state": state}),
            Happening::ConnectionOpened { conn, user } => {
                json!({"conn": conn, "user": user, "node": node})
            }
            Happening::ConnectionClosed {
                conn,
                user,
                code,
                reason,
            } => json!({"conn": conn, "user": user, "node": node, "code": code, "reason": reason}),
        }
    }
}

/// One webhook as stored and sent.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    order_key: String,
    kind: &'static str,
    created_at: i64,
    body: String,
}

/// What the writer is handed.
enum ToWrite {
    Event(Event),
    /// Answered once everything handed over before it is stored.
    Flush(tokio::sync::oneshot::Sender<()>),
}

struct Inner {
    written: mpsc::UnboundedSender<ToWrite>,
    kinds: Vec<&'static str>,
    node: Arc<str>,
}

/// Where happenings are recorded: a cheap handle every session and topic
/// holds; with no `--webhook-url`, recording does nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

impl Webhooks {
    /// Starts the writer and the sender (on the current actix system) when
    /// `--webhook-url` is set.
    pub fn start(config: &Config, db: &Database, node: Arc<str>, metrics: &Metrics) -> Webhooks {
        let (Some(url), Some(secret)) = (&config.webhook_url, &config.webhook_secret) else {
            return Webhooks::default();
        };
        let kinds = match &config.webhook_events {
            None => KINDS.to_vec(),
            Some(list) => KINDS
                .into_iter()
                .filter(|k| list.split(',').any(|wanted| wanted.trim() == *k))
                .collect(),
        };
        let (written, to_write) = mpsc::unbounded_channel();
        let knock = Arc::new(Notify::new());
        actix_rt::spawn(outbox::write_all(db.clone(), to_write, knock.clone()));
        let settings = sender::Settings {
            url: url.clone(),
            signer: super::signing::Signer::new(secret),
            timeout: std::time::Duration::from_millis(config.proxy_timeout_ms),
            retry_ms: config.webhook_retry_s.saturating_mul(1000) as i64,
            owner: format!("{node}/{}", uuid::Uuid::new_v4().simple()),
        };
        let metrics = metrics.backend.clone();
        actix_rt::spawn(sender::deliver_all(db.clone(), settings, knock, metrics));
        Webhooks {
            inner: Some(Arc::new(Inner {
                written,
                kinds,
                node,
            })),
        }
    }

    /// Records `happening` for the backend, if it wants its type.
    pub fn record(&self, happening: Happening) {
        let Some(inner) = &self.inner else { return };
        let kind = happening.kind();
        if !inner.kinds.contains(&kind) {
            return;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let created_at = now_ms();
        let body = json!({
            "id": id,
            "type": kind,
            "created_at": created_at,
            "data": happening.data(&inner.node),
        })
        .to_string();
        let event = Event {
            id,
            order_key: happening.order_key(),
            kind,
            created_at,
            body,
        };
        if inner.written.send(ToWrite::Event(event)).is_err() {
            tracing::error!(kind, "the webhook writer has stopped: an event is lost");
        }
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Waits until every happening recorded so far is stored (at a
    /// graceful stop), at most a few seconds.
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (done, stored) = tokio::sync::oneshot::channel();
        if inner.written.send(ToWrite::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stored).await;
        }
    }
}
