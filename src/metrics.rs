//! Prometheus metrics, one registry per server so that tests never share counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::protocol::ErrorCode;

/// Cheap to clone: every field is a handle onto shared atomics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Proxy calls and webhook deliveries (PROTOCOL §10).
    pub backend: crate::backend::BackendMetrics,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Live subscriptions over all connections.
    pub subscriptions: IntGauge,
    /// Topic actors running.
    pub topics: IntGauge,
    /// Frames received from clients.
    pub messages_in: IntCounter,
    /// Frames written to clients: replies, errors and events.
    pub messages_out: IntCounter,
    /// Events accepted by topics (publishes and emits).
    pub events_published: IntCounter,
    /// Event frames handed to subscribers (one event to N subscribers is N).
    pub deliveries: IntCounter,
    /// Error frames and HTTP errors, by code.
    pub errors: IntCounterVec,
    /// Connections closed with 4008 because the client read too slowly.
    pub slow_consumer_closes: IntCounter,
    /// Changed rows whose text was not valid UTF-8, delivered with U+FFFD.
    pub change_rows_repaired: IntCounter,
    /// 1 while Redis answers (several nodes only).
    pub redis_up: IntGauge,
    /// Redis calls that failed or timed out.
    pub redis_errors: IntCounter,
    /// Gaps in a topic's seq filled from the replay log, and not filled.
    pub gaps_filled: IntCounter,
    pub gaps_lost: IntCounter,
    /// Calls made to Redis (several nodes only): about one round trip each.
    pub redis_calls: IntCounter,
    /// From a topic accepting an event to the event written to its
    /// subscribers' sockets (or queued for them), per event.
    pub delivery_lag: Histogram,
    /// From a change written to the change log to the change written to its
    /// subscribers' sockets.
    pub change_lag: Histogram,
    /// Closed connections, by [`CloseCause`].
    pub closes: IntCounterVec,
    /// WebSocket handshakes refused, by error code.
    pub handshakes_refused: IntCounterVec,
    /// Bytes written for clients that their sockets did not take yet.
    pub backlog_bytes: IntGauge,
    /// Persisted publishes stored, and the commits that stored them (a
    /// group of one turn's publishes is one commit).
    pub messages_stored: IntCounter,
    pub history_commits: IntCounter,
    /// WAL that PostgreSQL keeps for realtide's replication slot and that
    /// the tracker has not read yet (logical capture only).
    pub capture_slot_lag_bytes: IntGauge,
    /// 1 while table changes are captured through logical decoding, 0 with triggers.
    pub capture_logical: IntGauge,
}

/// Why a connection ended, as `realtide_connections_closed_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The client closed (1000, 1001, or a close frame without a code).
    Client,
    /// The connection dropped without a close frame.
    Dropped,
    /// Nothing came from the client for the idle timeout (4000).
    Idle,
    /// The token expired (4001).
    TokenExpired,
    /// An operator disconnected it (4003).
    Disconnected,
    /// The client read too slowly (4008).
    SlowConsumer,
    /// The server is shutting down, or a topic lost continuity (1012).
    Restart,
    /// A message too large (1009) or a protocol violation (1002, 1007).
    BadInput,
    /// Any other code.
    Other,
}

impl CloseCause {
    pub const ALL: [CloseCause; 9] = [
        CloseCause::Client,
        CloseCause::Dropped,
        CloseCause::Idle,
        CloseCause::TokenExpired,
        CloseCause::Disconnected,
        CloseCause::SlowConsumer,
        CloseCause::Restart,
        CloseCause::BadInput,
        CloseCause::Other,
    ];

    /// The reason of a close with `code` (none: dropped).
    pub fn of(code: Option<u16>) -> CloseCause {
        match code {
            None => CloseCause::Dropped,
            Some(1000 | 1001 | 1005) => CloseCause::Client,
            Some(4000) => CloseCause::Idle,
            Some(4001) => CloseCause::TokenExpired,
            Some(4003) => CloseCause::Disconnected,
            Some(4008) => CloseCause::SlowConsumer,
            Some(1012) => CloseCause::Restart,
            Some(1002 | 1007 | 1009) => CloseCause::BadInput,
            Some(_) => CloseCause::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::Client => "client",
            CloseCause::Dropped => "dropped",
            CloseCause::Idle => "idle",
            CloseCause::TokenExpired => "token_expired",
            CloseCause::Disconnected => "disconnected",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::Restart => "restart",
            CloseCause::BadInput => "bad_input",
            CloseCause::Other => "other",
        }
    }
}

/// Latency buckets, in seconds: 0.25 ms to 10 s.
const LAG_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("realtide".into()), None)
            // unwrap: a fixed prefix and no labels cannot be rejected.
            .unwrap();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let connections = gauge("connections", "Open WebSocket connections");
        let subscriptions = gauge("subscriptions", "Live subscriptions");
        let topics = gauge("topics", "Topic actors running");
        let messages_in = counter("messages_in_total", "Frames received from clients");
        let messages_out = counter("messages_out_total", "Frames written to clients");
        let events_published = counter("events_published_total", "Events accepted by topics");
        let deliveries = counter("deliveries_total", "Event frames handed to subscribers");
        let slow_consumer_closes = counter(
            "slow_consumer_closes_total",
            "Connections closed because the client read too slowly",
        );
        let change_rows_repaired = counter(
            "change_rows_repaired_total",
            "Changed rows holding text that was not UTF-8, delivered with U+FFFD in its place",
        );
        let redis_up = gauge("redis_up", "1 while Redis answers (several nodes only)");
        let redis_errors = counter("redis_errors_total", "Redis calls that failed or timed out");
        let gaps_filled = counter(
            "gaps_filled_total",
            "Gaps in a topic's seq filled from the cluster's replay log",
        );
        let gaps_lost = counter(
            "gaps_lost_total",
            "Gaps in a topic's seq that could not be filled (subscribers closed with 1012)",
        );
        let redis_calls = counter(
            "redis_calls_total",
            "Calls made to Redis (several nodes only), about one round trip each",
        );
        let histogram = |name: &str, help: &str| {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(LAG_BUCKETS.into()))
                    .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let delivery_lag = histogram(
            "delivery_lag_seconds",
            "From a topic accepting an event to the event written to its subscribers",
        );
        let change_lag = histogram(
            "change_lag_seconds",
            "From a change written to the change log to the change written to its subscribers",
        );
        let labelled = |name: &str, help: &str, label: &str, values: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            // Every series from the start, so dashboards and alerts see zeros.
            for value in values {
                v.with_label_values(&[value]);
            }
            v
        };
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let errors = labelled("errors_total", "Errors sent, by code", "code", &codes);
        let handshakes_refused = labelled(
            "handshakes_refused_total",
            "WebSocket handshakes refused, by error code",
            "code",
            &codes,
        );
        let reasons: Vec<&str> = CloseCause::ALL.iter().map(|r| r.as_str()).collect();
        let closes = labelled(
            "connections_closed_total",
            "Closed WebSocket connections, by reason",
            "reason",
            &reasons,
        );
        let messages_stored = counter("messages_stored_total", "Persisted publishes stored");
        let history_commits = counter(
            "history_commits_total",
            "Transactions that stored persisted publishes (one per group, or shared by topics' groups)",
        );
        let capture_slot_lag_bytes = gauge(
            "capture_slot_lag_bytes",
            "WAL kept for realtide's replication slot and not yet read (logical capture only)",
        );
        let capture_logical = gauge(
            "capture_logical",
            "1 while table changes are captured through logical decoding, 0 with triggers",
        );
        let backlog_bytes = gauge(
            "backlog_bytes",
            "Bytes written for clients that their sockets did not take yet",
        );
        #[cfg(target_os = "linux")]
        {
            // CPU seconds, resident memory, open and maximum file descriptors.
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(process));
        }
        Metrics {
            connections,
            subscriptions,
            topics,
            messages_in,
            messages_out,
            events_published,
            deliveries,
            errors,
            slow_consumer_closes,
            change_rows_repaired,
            redis_up,
            redis_errors,
            gaps_filled,
            gaps_lost,
            redis_calls,
            delivery_lag,
            change_lag,
            closes,
            handshakes_refused,
            backlog_bytes,
            messages_stored,
            history_commits,
            capture_slot_lag_bytes,
            capture_logical,
            backend: crate::backend::BackendMetrics::new(&registry),
            registry,
        }
    }

    /// Labels every series of this registry's output with the node's id.
    pub fn set_node(&self, node: &str) {
        let info = IntGauge::with_opts(
            Opts::new(
                "node_info",
                "This node's id (several nodes share one Redis)",
            )
            .const_label("node", node),
        )
        .expect("valid metric");
        info.set(1);
        let _ = self.registry.register(Box::new(info));
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // unwrap-free: encoding into a Vec cannot fail for well-formed metrics.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
