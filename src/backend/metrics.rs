//! What an operator sees of the app's backend: proxy calls by proxy and
//! result, their latency, and (with webhooks) deliveries.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The proxies, as labels.
pub const PROXIES: [&str; 3] = ["connect", "subscribe", "publish"];

/// How a proxy call ended, as labels: the backend's answer, or why none.
pub const RESULTS: [&str; 5] = ["allowed", "refused", "timeout", "error", "unreachable"];

#[derive(Clone)]
pub struct BackendMetrics {
    /// `realtide_proxy_calls_total{proxy,result}`.
    pub proxy_calls: IntCounterVec,
    /// `realtide_proxy_duration_seconds{proxy}`.
    pub proxy_duration: HistogramVec,
    /// `realtide_webhook_deliveries_total{result}`: delivered, failed (one
    /// try), dropped (out of retries).
    pub webhook_deliveries: IntCounterVec,
    /// `realtide_webhook_pending`: webhooks stored and not delivered yet.
    pub webhooks_pending: IntGauge,
}

impl BackendMetrics {
    pub fn new(registry: &Registry) -> BackendMetrics {
        let proxy_calls = IntCounterVec::new(
            Opts::new(
                "proxy_calls_total",
                "Calls to the app's backend proxies, by proxy and result",
            ),
            &["proxy", "result"],
        )
        .expect("valid metric");
        let proxy_duration = HistogramVec::new(
            HistogramOpts::new(
                "proxy_duration_seconds",
                "How long the app's backend took to answer a proxy call",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["proxy"],
        )
        .expect("valid metric");
        for proxy in PROXIES {
            for result in RESULTS {
                proxy_calls.with_label_values(&[proxy, result]);
            }
            proxy_duration.with_label_values(&[proxy]);
        }
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Webhook delivery attempts, by result (delivered, failed, dropped)",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["delivered", "failed", "dropped"] {
            webhook_deliveries.with_label_values(&[result]);
        }
        let webhooks_pending = IntGauge::new(
            "webhook_pending",
            "Webhooks stored and not delivered yet (every node's, in a cluster)",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(proxy_calls.clone()));
        let _ = registry.register(Box::new(proxy_duration.clone()));
        let _ = registry.register(Box::new(webhook_deliveries.clone()));
        let _ = registry.register(Box::new(webhooks_pending.clone()));
        BackendMetrics {
            proxy_calls,
            proxy_duration,
            webhook_deliveries,
            webhooks_pending,
        }
    }
}
