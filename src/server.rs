//! The composition root: `start` builds the database, the registry, the
//! shared state and the HTTP server on a listener; `main` and the tests share
//! it. `RunningServer::shutdown` closes every client with 1012 first, then
//! stops the HTTP server, so clients know to reconnect elsewhere.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::body::BoxBody;
use actix_http::error::DispatchError;
use actix_http::{HttpService, KeepAlive, Protocol};
use actix_service::{
    IntoServiceFactory, ServiceFactory, ServiceFactoryExt, fn_service, map_config,
};
use actix_web::dev::{AppConfig, Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};

use crate::auth::api_keys::ApiKeys;
use crate::backend::webhooks::Webhooks;
use crate::broker::redis::{RedisBroker, RedisSettings, RedisTarget};
use crate::broker::{Broker, ClusterLink};
use crate::changes::logical::{self, LogicalSource};
use crate::changes::poller::Tracker;
use crate::changes::postgres::PostgresSource;
use crate::changes::sqlite::SqliteSource;
use crate::changes::tables::TableList;
use crate::changes::{CaptureStatus, ChangeSource};
use crate::config::{CaptureMode, Config};
use crate::db::{Database, DatabaseUrl, DbError};
use crate::history::HistoryWriter;
use crate::http;
use crate::http::upgrade;
use crate::metrics::Metrics;
use crate::outbox::keepalive::Keepalive;
use crate::registry::{CountSessions, HistoryRetention, Registry, ShutdownSessions};
use crate::socket::Connection;
use crate::state::AppState;
use crate::topic::actor::{TopicSettings, Tracking};

/// How long shutdown waits for sessions to send their close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long the HTTP server then waits for connections to finish.
const HTTP_SHUTDOWN_TIMEOUT_S: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Broker(String),
    #[error("{0}")]
    Config(String),
}

/// Binds the listening socket with `SO_REUSEADDR`, so a restarted server gets
/// its port back while the old connections sit in TIME_WAIT.
/// [`bind`], with an error that says what to do when the port is taken.
pub fn bind_or_explain(address: &str) -> Result<TcpListener, String> {
    bind(address).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {address}: the address is already in use (another realtide, \
             or another program, holds it); stop it, or choose another port with \
             `--port 4100` (or `--bind 127.0.0.1:4100`)"
        ),
        _ => format!("cannot listen on {address}: {e}"),
    })
}

pub fn bind(address: &str) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("`{address}` resolves to no address")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A started server: await [`RunningServer::wait`], or stop it with a [`Controller`].
pub struct RunningServer {
    server: Server,
    controller: Controller,
}

/// Stops a running server from any thread.
#[derive(Clone)]
pub struct Controller {
    pub addr: SocketAddr,
    state: web::Data<AppState>,
    http: ServerHandle,
    registry: Addr<Registry>,
    tracker: Tracker,
    broker: Option<RedisBroker>,
}

/// Connects this node to the cluster's Redis.
fn start_broker(
    target: RedisTarget,
    node: &Arc<str>,
    config: &Config,
    metrics: &Metrics,
) -> Result<RedisBroker, StartError> {
    RedisBroker::start(RedisSettings {
        target,
        node: node.clone(),
        prefix: config
            .redis_prefix
            .clone()
            .unwrap_or_else(|| format!("rt:{}:", config.project_id)),
        replay_size: config.replay_size,
        replay_ttl: config.replay_ttl(),
        node_timeout: Duration::from_millis(config.node_timeout_ms),
        connections: metrics.connections.clone(),
        up_gauge: metrics.redis_up.clone(),
        errors: metrics.redis_errors.clone(),
        calls: metrics.redis_calls.clone(),
    })
    .map_err(|e| StartError::Broker(e.to_string()))
}

/// Starts the change tracker on a thread of its own with its own
/// connection, capturing as `--capture` asks and the database allows.
fn start_tracker(
    db: &Database,
    config: &Config,
    tables: &Arc<TableList>,
    metrics: &Metrics,
) -> Result<(Tracker, CaptureStatus), StartError> {
    if let (DatabaseUrl::Sqlite(_), Some(table)) = (db.url(), tables.first_renamed()) {
        return Err(StartError::Config(format!(
            "--tables: {}: SQLite tables have no schema and are read under their own names",
            table.sql()
        )));
    }
    let mut conn = db.dedicated_connection()?;
    let (source, status): (Box<dyn ChangeSource>, CaptureStatus) = match db.url() {
        DatabaseUrl::Sqlite(path) => (
            Box::new(SqliteSource::new(conn, path.clone())),
            CaptureStatus::new("triggers", None),
        ),
        url => {
            let blocked = match config.capture {
                CaptureMode::Triggers => Some("--capture triggers".to_string()),
                _ => logical::unavailable_because(&mut conn)?,
            };
            match blocked {
                Some(why) if config.capture == CaptureMode::Logical => {
                    return Err(StartError::Config(format!(
                        "--capture logical: logical decoding is not available: {why}"
                    )));
                }
                Some(why) => {
                    if config.capture == CaptureMode::Auto {
                        tracing::info!(reason = %why, "change capture: logical decoding is not available; using triggers");
                    }
                    (
                        Box::new(PostgresSource::new(conn, url.clone())),
                        CaptureStatus::new("triggers", Some(why)),
                    )
                }
                None => {
                    let status = CaptureStatus::new("logical", None);
                    metrics.capture_logical.set(1);
                    let source = LogicalSource::new(
                        conn,
                        url.clone(),
                        db.epoch(),
                        tables.clone(),
                        config.capture == CaptureMode::Auto,
                        status.clone(),
                        metrics.clone(),
                    )?;
                    (Box::new(source), status)
                }
            }
        }
    };
    let tracker = Tracker::start(
        source,
        tables.clone(),
        Duration::from_millis(config.poll_interval_ms),
        Duration::from_secs(config.changes_retention_s),
        metrics.clone(),
    );
    Ok((tracker, status))
}

/// Starts realtide on `listener`. Call it inside an actix system; it blocks
/// while it opens the database and runs migrations.
pub fn start(listener: TcpListener, config: Config) -> Result<RunningServer, StartError> {
    start_with(listener, config, |_| {})
}

/// [`start`], with the embedding application's own routes registered ahead
/// of realtide's (see `src/demo/`).
pub fn start_with<F>(
    listener: TcpListener,
    config: Config,
    app_routes: F,
) -> Result<RunningServer, StartError>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    config.check().map_err(StartError::Config)?;
    let api_keys = ApiKeys::new(config.api_keys.as_deref(), config.api_key_grants.as_deref())
        .map_err(StartError::Config)?;
    let config = Arc::new(config);
    let db = Database::open_in(&config.database_url, &config.schema)?;
    tracing::info!(backend = db.backend(), epoch = db.epoch(), "database ready");
    let metrics = Metrics::new();
    let node: Arc<str> = match &config.node_id {
        Some(node) => node.as_str().into(),
        None => format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]).into(),
    };
    metrics.set_node(&node);
    let broker = match config.redis_target() {
        Some(target) => Some(start_broker(target, &node, &config, &metrics)?),
        None => None,
    };
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let arbiters = (0..workers).map(|_| Arbiter::new().handle()).collect();
    let tables = Arc::new(TableList::parse(&config.tables).map_err(StartError::Config)?);
    let (tracker, capture) = start_tracker(&db, &config, &tables, &metrics)?;
    let webhooks = Webhooks::start(&config, &db, node.clone(), &metrics);
    let tracking = Tracking {
        webhooks: webhooks.clone(),
        tracker: tracker.clone(),
        db: db.clone(),
        history: HistoryWriter::start(db.clone(), metrics.history_commits.clone())?,
        cluster: broker.clone().map(|broker| ClusterLink {
            broker: Arc::new(broker) as Arc<dyn Broker>,
            node: node.clone(),
        }),
        // Often enough that nothing outlives the retention by more than half
        // of it; at most once a minute.
        prune_every: (Duration::from_secs(config.changes_retention_s) / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(60)),
        snapshot_page_rows: config.snapshot_page_rows,
        max_snapshot_rows: config.max_snapshot_rows,
    };
    let registry = Registry::new(
        arbiters,
        TopicSettings {
            replay_size: config.replay_size,
            replay_ttl: config.replay_ttl(),
            fanout_split_at: config.fanout_split_at,
            fanout_busy_split_at: config.fanout_busy_split_at,
        },
        tracking,
        HistoryRetention {
            max_messages: config.history_max_messages,
            max_age: Duration::from_secs(config.history_max_age_s),
        },
        config.max_topics,
        Keepalive::new(config.idle_timeout()),
        metrics.clone(),
    )
    .start();
    let mut state = AppState::new(
        config.clone(),
        registry.clone(),
        db,
        metrics,
        node,
        broker
            .clone()
            .map(|broker| Arc::new(broker) as Arc<dyn Broker>),
        api_keys,
    );
    state.capture = capture;
    state.tables = tables;
    state.webhooks = webhooks;
    if let Some(broker) = &state.broker {
        let told_webhooks = state.webhooks.clone();
        broker.on_told(Arc::new(move |told| told_webhooks.record(told.into())));
        let streams = state.event_streams.clone();
        broker.receive_forwarded(Arc::new(move |forwarded| {
            let requests = forwarded.requests.into_iter().map(Into::into).collect();
            Box::pin(streams.deliver(&forwarded.conn, requests))
        }));
    }
    let state = web::Data::new(state);
    let sampled = state.clone();
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(crate::trends::SAMPLE_EVERY);
        loop {
            ticks.tick().await;
            sampled
                .trends
                .sample(&sampled.metrics, crate::clock::now_ms());
        }
    });
    let listening = state.clone();
    let addr = listener.local_addr()?;
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(HTTP_SHUTDOWN_TIMEOUT_S)
        .listen("realtide", listener, move || {
            let app = App::new()
                .app_data(state.clone())
                .configure(app_routes.clone())
                .configure(|cfg| http::routes(cfg, &state.config));
            http_service(app, addr, state.clone(), shutdown.clone())
        })?
        .run();
    tracing::info!(
        url = %format!("ws://{addr}{}", upgrade::PATH),
        database = %crate::config::redact_url(&config.database_url),
        capture = listening.capture.report().mode,
        tables = %config.tables,
        node = %listening.node_id,
        cluster = config.redis_target().is_some(),
        "realtide listening"
    );
    if config.jwt_secret.is_none() {
        tracing::warn!(
            "open mode: no --jwt-secret, so every client is accepted and its `userId` trusted; \
             set a secret before exposing this server"
        );
    }
    if !addr.ip().to_canonical().is_loopback() {
        for (key, flag) in [
            (&config.server_key, "--server-key"),
            (&config.admin_key, "--admin-key"),
        ] {
            if key.is_none() {
                // Behind a reverse proxy on this host every request comes
                // from loopback, so "loopback only" would mean "everyone".
                tracing::warn!(
                    %addr,
                    "listening beyond loopback without {flag}: its endpoints answer local \
                     peers only, and behind a local reverse proxy every peer looks local"
                );
            }
        }
    }
    let controller = Controller {
        addr,
        state: listening,
        http: server.handle(),
        registry,
        tracker,
        broker,
    };
    Ok(RunningServer { server, controller })
}

/// actix-web's `HttpServer::listen`, but serving each connection on a
/// [`Connection`] (whose write side a WebSocket session shares with its
/// topics), and taking upgrade requests before the router (see
/// [`upgrade`]).
fn http_service<T>(
    app: App<T>,
    addr: SocketAddr,
    state: web::Data<AppState>,
    shutdown: actix_server::GracefulShutdownSignal,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = DispatchError, InitError = ()>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let backlog_total = state.metrics.backlog_bytes.clone();
    let http = HttpService::build()
        // A graceful stop closes idle keep-alive connections at once.
        .graceful_shutdown_signal(move || {
            let shutdown = shutdown.clone();
            async move { shutdown.notified().await }
        })
        .keep_alive(KeepAlive::default())
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        .local_addr(addr)
        .upgrade(upgrade::service(state))
        .finish(map_config(
            app.into_factory().map_err(|err| err.error_response()),
            |_| AppConfig::default(),
        ));
    fn_service(move |stream: TcpStream| {
        let backlog_total = backlog_total.clone();
        async move {
            // Frames are small and latency-bound: never wait to coalesce them.
            let _ = stream.set_nodelay(true);
            let peer = stream.peer_addr().ok();
            Ok((
                Connection::new(stream, Some(backlog_total)),
                Protocol::Http1,
                peer,
            ))
        }
    })
    .and_then(http)
}

impl RunningServer {
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// Runs until the server is stopped, then stops the actix system with its arbiters.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.controller.tracker.stop();
        System::current().stop();
        result
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        let controller = self.controller.clone();
        let server = actix_web::rt::spawn(self.server);
        wait_for_signal().await?;
        let drain = controller.state.config.drain();
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "signal received: shutting down"
        );
        controller.drain(drain).await;
        controller.shutdown().await;
        let result = server.await.map_err(std::io::Error::other)?;
        System::current().stop();
        result
    }
}

impl Controller {
    /// `/readyz` answers 503 from now on; clients are served for `period` more.
    pub async fn drain(&self, period: Duration) {
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(period).await;
    }

    /// Closes every client with 1012, waits briefly for them to go, then stops
    /// the HTTP server. Callable from any thread or runtime.
    pub async fn shutdown(&self) {
        if let Ok(told) = self.registry.send(ShutdownSessions).await {
            tracing::info!(sessions = told, "closing sessions");
            let deadline = Instant::now() + CLOSE_GRACE;
            let mut open = told;
            while Instant::now() < deadline {
                match self.registry.send(CountSessions).await {
                    Ok(0) | Err(_) => {
                        open = 0;
                        break;
                    }
                    Ok(left) => {
                        open = left;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            tracing::info!(
                closed = told.saturating_sub(open),
                still_open = open,
                "sessions closed with 1012"
            );
        }
        if let Some(broker) = &self.broker {
            // Whatever presence the closed sessions left behind goes now,
            // with its leaves, rather than when this node is taken for dead.
            broker.retire().await;
        }
        // The closed connections' webhooks are stored before the process ends.
        self.state.webhooks.flush().await;
        self.http.stop(true).await;
        self.tracker.stop();
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
