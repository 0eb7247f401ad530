//! The proxy's Prometheus metrics: requests by app and status, latency, in-flight requests,
//! open connections, and the machines it started and stopped.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use crate::sharded::{ShardedCounter, ShardedGauge, ShardedHistogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub status: u16,
}

#[derive(Default)]
pub struct Metrics {
    pub requests: Family<RequestLabels, ShardedCounter>,
    pub duration: Family<AppLabels, ShardedHistogram>,
    pub in_flight: Family<AppLabels, ShardedGauge>,
    pub connections: Gauge<i64, AtomicI64>,
    pub autostarts: Family<AppLabels, Counter<u64, AtomicU64>>,
    pub autostops: Family<AppLabels, Counter<u64, AtomicU64>>,
}

impl Metrics {
    /// Adds the proxy's metrics to `registry` (under `hangar_proxy_…`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hangar_proxy");
        r.register(
            "http_requests",
            "HTTP requests answered, by app and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to the response head of HTTP requests, by app",
            self.duration.clone(),
        );
        r.register(
            "http_requests_in_flight",
            "HTTP requests in flight, by app",
            self.in_flight.clone(),
        );
        r.register(
            "connections",
            "Client connections open",
            self.connections.clone(),
        );
        r.register(
            "autostarts",
            "Machines started or resumed for a request, by app",
            self.autostarts.clone(),
        );
        r.register(
            "autostops",
            "Idle machines stopped or suspended, by app",
            self.autostops.clone(),
        );
    }

    pub fn app(app: &str) -> AppLabels {
        AppLabels {
            app: app.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharded::use_shard;

    #[test]
    fn test_sharded_metrics_are_summed_over_the_threads_when_scraped() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let web = Metrics::app("web");
        std::thread::scope(|s| {
            for i in 0..3 {
                let (m, web) = (&m, &web);
                s.spawn(move || {
                    use_shard(i);
                    let ok = RequestLabels {
                        app: "web".into(),
                        status: 200,
                    };
                    m.requests.get_or_create(&ok).inc();
                    m.duration.get_or_create(web).observe(0.001);
                    // Added on this thread, taken off on another: the sum stays right.
                    let held = m.in_flight.get_or_create(web).hold();
                    std::thread::spawn(move || drop(held)).join().unwrap();
                });
            }
        });
        let _held = m.in_flight.get_or_create(&web).hold();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "hangar_proxy_http_requests_total{app=\"web\",status=\"200\"} 3",
            "hangar_proxy_http_request_duration_seconds_count{app=\"web\"} 3",
            "hangar_proxy_http_request_duration_seconds_bucket{le=\"0.0005\",app=\"web\"} 0",
            "hangar_proxy_http_request_duration_seconds_bucket{le=\"0.001\",app=\"web\"} 3",
            "hangar_proxy_http_request_duration_seconds_bucket{le=\"+Inf\",app=\"web\"} 3",
            "hangar_proxy_http_requests_in_flight{app=\"web\"} 1",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }
}
