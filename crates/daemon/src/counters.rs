//! The daemon's own counters (API requests, transitions, start latency, OOM kills, image pulls):
//! kept by the service and the API whether or not `/metrics` is served (crate::metrics serves
//! them).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route's template, not the path: `/v1/apps/:app_name/machines/:machine_id` (the
    /// `:name` form, since some Prometheus parsers stop a label set at the first `}`).
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The event (`launch`, `start`, `stop`, `restart`, `update`, `destroy`, `exit`…).
    pub event: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// The daemon's own counters, kept whether or not `/metrics` is served (cheap atomics).
#[derive(Clone)]
pub struct DaemonMetrics {
    pub requests: Family<RequestLabels, prometheus_client::metrics::counter::Counter>,
    pub request_seconds: Family<RouteLabels, prometheus_client::metrics::histogram::Histogram>,
    pub transitions: Family<TransitionLabels, prometheus_client::metrics::counter::Counter>,
    pub start_seconds: prometheus_client::metrics::histogram::Histogram,
    pub oom_kills: prometheus_client::metrics::counter::Counter,
    pub image_pulls: Family<ResultLabels, prometheus_client::metrics::counter::Counter>,
    /// Compressed layer bytes fetched from registries (layers already stored are not counted).
    pub image_pull_bytes: prometheus_client::metrics::counter::Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        DaemonMetrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new(latency_buckets())
            }),
            transitions: Family::default(),
            start_seconds: prometheus_client::metrics::histogram::Histogram::new(latency_buckets()),
            oom_kills: Default::default(),
            image_pulls: Family::default(),
            image_pull_bytes: Default::default(),
        }
    }
}

impl DaemonMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "hangar_api_requests",
            "API requests by method, route and status",
            self.requests.clone(),
        );
        r.register(
            "hangar_api_request_duration_seconds",
            "API request latency by method and route",
            self.request_seconds.clone(),
        );
        r.register(
            "hangar_machine_transitions",
            "Machine state changes by event and new state",
            self.transitions.clone(),
        );
        r.register(
            "hangar_machine_start_duration_seconds",
            "Time from a machine's start until it runs",
            self.start_seconds.clone(),
        );
        r.register(
            "hangar_machine_oom_kills",
            "Machines ended by the OOM killer",
            self.oom_kills.clone(),
        );
        r.register(
            "hangar_image_pulls",
            "Image pulls by result",
            self.image_pulls.clone(),
        );
        r.register(
            "hangar_image_pull_bytes",
            "Compressed layer bytes fetched from registries",
            self.image_pull_bytes.clone(),
        );
    }
}

/// A pull progress callback that adds each layer fetched (not found in the store) to
/// `counter`.
pub fn counting_pull_bytes(
    counter: prometheus_client::metrics::counter::Counter,
) -> hangar_image::ProgressFn {
    let sizes = std::sync::Mutex::new(std::collections::HashMap::new());
    Arc::new(move |p: hangar_image::Progress| match &p {
        hangar_image::Progress::Resolved { layers, .. } => {
            let mut sizes = sizes.lock().unwrap_or_else(|e| e.into_inner());
            sizes.extend(layers.iter().map(|(d, s)| (d.to_string(), *s)));
        }
        hangar_image::Progress::LayerVerified { digest } => {
            let mut sizes = sizes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(size) = sizes.remove(&digest.to_string()) {
                counter.inc_by(size);
            }
        }
        hangar_image::Progress::LayerCached { digest, .. } => {
            let mut sizes = sizes.lock().unwrap_or_else(|e| e.into_inner());
            sizes.remove(&digest.to_string());
        }
        _ => {}
    })
}
