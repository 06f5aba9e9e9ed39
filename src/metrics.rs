//! Prometheus metrics, one registry per server so that tests never share counts.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::protocol::ErrorCode;

/// Cheap to clone: every field is a handle onto shared atomics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
}

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
        let errors =
            IntCounterVec::new(Opts::new("errors_total", "Errors sent, by code"), &["code"])
                .expect("valid metric");
        registry
            .register(Box::new(errors.clone()))
            .expect("unique metric");
        for code in ErrorCode::ALL {
            errors.with_label_values(&[code.as_str()]);
        }
        Metrics {
            registry,
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
