//! The figures an operator watches, over the last 15 minutes: every 10 s a
//! [`Sample`] of open connections, messages in and out, deliveries and the
//! delivery and change lags' p99, taken from this node's metrics. The
//! console draws each as a line (`GET /admin/trends`), because a trend reads
//! faster from a line than from the number of one instant.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::Histogram;
use prometheus::core::Metric;
use serde::Serialize;

use crate::metrics::Metrics;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// 15 minutes of samples.
const KEPT: usize = 90;

/// The figures of one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When the interval ended, in ms since the Unix epoch.
    pub at: i64,
    pub connections: i64,
    pub messages_in_per_s: f64,
    pub messages_out_per_s: f64,
    pub deliveries_per_s: f64,
    /// The upper bound of the bucket holding the interval's p99 (none
    /// without events in the interval).
    pub delivery_lag_p99_ms: Option<f64>,
    pub change_lag_p99_ms: Option<f64>,
}

/// Counters as they were at the last sample.
#[derive(Debug, Clone, Default)]
struct Totals {
    at: i64,
    messages_in: u64,
    messages_out: u64,
    deliveries: u64,
    delivery_lag: Vec<(f64, u64)>,
    change_lag: Vec<(f64, u64)>,
}

impl Totals {
    fn read(metrics: &Metrics, at: i64) -> Totals {
        Totals {
            at,
            messages_in: metrics.messages_in.get(),
            messages_out: metrics.messages_out.get(),
            deliveries: metrics.deliveries.get(),
            delivery_lag: buckets(&metrics.delivery_lag),
            change_lag: buckets(&metrics.change_lag),
        }
    }
}

/// A histogram's buckets: upper bound (s) and cumulative count.
fn buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
    histogram
        .metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect()
}

/// The upper bound, in ms, of the bucket holding the p99 of what was
/// observed between `before` and `after`; past the last bucket, that
/// bucket's bound (the p99 is at least that).
fn p99_ms(before: &[(f64, u64)], after: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let wanted = (total as f64 * 0.99).ceil() as u64;
    let largest = after
        .iter()
        .map(|(bound, _)| *bound)
        .filter(|bound| bound.is_finite())
        .fold(0.0, f64::max);
    let bound = after
        .iter()
        .enumerate()
        .find(|(i, (_, count))| count - before.get(*i).map_or(0, |b| b.1) >= wanted)
        .map_or(largest, |(_, (bound, _))| bound.min(largest));
    Some(bound * 1000.0)
}

/// The last 15 minutes of samples; shared by the sampler and the admin API.
#[derive(Debug, Default)]
pub struct Trends {
    state: Mutex<(VecDeque<Sample>, Option<Totals>)>,
}

impl Trends {
    /// Takes a sample of `metrics` at `at` (ms), against the last one.
    pub fn sample(&self, metrics: &Metrics, at: i64) {
        let now = Totals::read(metrics, at);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (samples, last) = &mut *state;
        if let Some(before) = last.as_ref() {
            let seconds = ((now.at - before.at) as f64 / 1000.0).max(0.001);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
            let observed = |h: &[(f64, u64)], b: &[(f64, u64)]| {
                h.last().map_or(0, |l| l.1) - b.last().map_or(0, |l| l.1)
            };
            samples.push_back(Sample {
                at,
                connections: metrics.connections.get().max(0),
                messages_in_per_s: rate(now.messages_in, before.messages_in),
                messages_out_per_s: rate(now.messages_out, before.messages_out),
                deliveries_per_s: rate(now.deliveries, before.deliveries),
                delivery_lag_p99_ms: p99_ms(
                    &before.delivery_lag,
                    &now.delivery_lag,
                    observed(&now.delivery_lag, &before.delivery_lag),
                ),
                change_lag_p99_ms: p99_ms(
                    &before.change_lag,
                    &now.change_lag,
                    observed(&now.change_lag, &before.change_lag),
                ),
            });
            while samples.len() > KEPT {
                samples.pop_front();
            }
        }
        *last = Some(now);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_holds_the_rates_and_the_lag_of_its_interval() {
        let metrics = Metrics::new();
        let trends = Trends::default();
        trends.sample(&metrics, 0);
        assert!(trends.samples().is_empty(), "a rate needs two readings");
        metrics.messages_in.inc_by(50);
        metrics.deliveries.inc_by(1000);
        metrics.connections.set(7);
        for _ in 0..99 {
            metrics.delivery_lag.observe(0.0004);
        }
        metrics.delivery_lag.observe(0.2);
        trends.sample(&metrics, 10_000);
        let samples = trends.samples();
        let [sample] = &samples[..] else {
            panic!("{samples:?}")
        };
        assert_eq!(sample.at, 10_000);
        assert_eq!(sample.connections, 7);
        assert_eq!(sample.messages_in_per_s, 5.0);
        assert_eq!(sample.deliveries_per_s, 100.0);
        let p99 = sample.delivery_lag_p99_ms.unwrap();
        assert!(p99 > 0.0 && p99 <= 1.0, "{p99}");
        assert_eq!(sample.change_lag_p99_ms, None);
    }

    #[test]
    fn fifteen_minutes_are_kept() {
        let metrics = Metrics::new();
        let trends = Trends::default();
        for i in 0..200 {
            trends.sample(&metrics, i * 10_000);
        }
        let samples = trends.samples();
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples.last().map(|s| s.at), Some(199 * 10_000));
    }
}
