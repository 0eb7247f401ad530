//! The proxy's Prometheus metrics: requests by app and status, latency, in-flight requests,
//! open connections, and the machines it started and stopped.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub status: u16,
}

type HistogramFamily = Family<AppLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily,
    pub in_flight: Family<AppLabels, Gauge>,
    pub connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub autostarts: Family<AppLabels, Counter<u64, AtomicU64>>,
    pub autostops: Family<AppLabels, Counter<u64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            connections: Gauge::default(),
            autostarts: Family::default(),
            autostops: Family::default(),
        }
    }
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
