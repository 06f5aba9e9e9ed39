//! `AppState`: what every HTTP handler and session shares, built once per
//! server by `server::start` and handed out through `web::Data`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix::Addr;

use crate::auth::TokenVerifier;
use crate::auth::api_keys::ApiKeys;
use crate::auth::keys::KeyGuard;
use crate::broker::Broker;
use crate::changes::CaptureStatus;
use crate::changes::tables::TableList;
use crate::config::Config;
use crate::db::Database;
use crate::metrics::Metrics;
use crate::outbox::OutboxPolicy;
use crate::outbox::messages::ConnId;
use crate::protocol::close;
use crate::registry::Registry;

pub struct AppState {
    pub config: Arc<Config>,
    /// This node's id: `welcome.node`, and its name in the cluster.
    pub node_id: Arc<str>,
    /// The cluster's broker, with `--redis-url`.
    pub broker: Option<Arc<dyn Broker>>,
    pub registry: Addr<Registry>,
    pub db: Database,
    pub verifier: TokenVerifier,
    /// Project API keys and what a key alone grants.
    pub api_keys: ApiKeys,
    /// Guards emit (and streaming): the server key.
    pub server_guard: KeyGuard,
    /// Guards the admin endpoints: the admin key.
    pub admin_guard: KeyGuard,
    pub metrics: Metrics,
    /// When this node started, in ms since the Unix epoch.
    pub started_at: i64,
    /// Set on SIGTERM: `/readyz` answers 503 while clients are still served.
    pub draining: AtomicBool,
    /// How table changes are captured (`/readyz` and `/admin/capture`
    /// report it); the server sets it from the tracker's.
    pub capture: CaptureStatus,
    /// `--tables`: the table topics and the tables they read (none until
    /// the server sets it from the tracker's).
    pub tables: Arc<TableList>,
    /// What every connection's outbox shares.
    pub outbox_policy: Arc<OutboxPolicy>,
    /// The last 15 minutes of this node's figures, for the console.
    pub trends: crate::trends::Trends,
    /// The app's backend: its proxies (PROTOCOL §10).
    pub backend: Arc<crate::backend::Backend>,
    /// What the backend is told of (none without `--webhook-url`); the
    /// server sets it.
    pub webhooks: crate::backend::webhooks::Webhooks,
    /// This node's server-sent-events connections, for their POSTed requests.
    pub event_streams: Arc<crate::session::event_streams::EventStreams>,
    next_conn: AtomicU64,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        registry: Addr<Registry>,
        db: Database,
        metrics: Metrics,
        node_id: Arc<str>,
        broker: Option<Arc<dyn Broker>>,
        api_keys: ApiKeys,
    ) -> Self {
        let backend = Arc::new(crate::backend::Backend::new(
            &config,
            metrics.backend.clone(),
        ));
        AppState {
            backend,
            webhooks: Default::default(),
            node_id,
            broker,
            api_keys,
            verifier: TokenVerifier::new(
                config.jwt_secret.as_deref(),
                config.jwt_audience.as_deref(),
            ),
            server_guard: KeyGuard::new("server key", config.server_key.clone()),
            outbox_policy: OutboxPolicy::new(
                config.max_pending_bytes,
                close::SLOW_CONSUMER,
                metrics.slow_consumer_closes.clone(),
            ),
            admin_guard: KeyGuard::new("admin key", config.admin_key.clone()),
            config,
            registry,
            db,
            metrics,
            started_at: crate::clock::now_ms(),
            draining: AtomicBool::new(false),
            capture: CaptureStatus::new("triggers", None),
            tables: Arc::default(),
            trends: crate::trends::Trends::default(),
            event_streams: Default::default(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Whether `--tables` lets clients subscribe to the table topic `table`.
    pub fn table_allowed(&self, table: &str) -> bool {
        self.tables.allows(table)
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}
