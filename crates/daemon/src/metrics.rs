//! `/metrics` in Prometheus' text format, on the opt-in `--metrics-listen` address: the
//! proxy's metrics, the machines by state, API requests by route and status with their
//! latency, machine transitions, start latency, OOM kills, and image pulls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::Hangar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

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
    fn register(&self, r: &mut Registry) {
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
/// `counter`, then hands the event to `inner`.
pub fn counting_pull_bytes(
    counter: prometheus_client::metrics::counter::Counter,
    inner: Option<hangar_image::ProgressFn>,
) -> hangar_image::ProgressFn {
    let sizes = std::sync::Mutex::new(std::collections::HashMap::new());
    Arc::new(move |p: hangar_image::Progress| {
        match &p {
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
        }
        if let Some(inner) = &inner {
            inner(p);
        }
    })
}

/// Counts each API request by its route template and status, and times it.
pub async fn track_requests(
    State(m): State<Arc<DaemonMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().replace('{', ":").replace('}', ""))
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    m.request_seconds
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

struct Exporter {
    hangar: Arc<Hangar>,
    registry: Registry,
    machines: Family<StateLabels, Gauge>,
}

async fn metrics(State(e): State<Arc<Exporter>>) -> impl IntoResponse {
    // Machines by state, read at scrape time.
    if let Ok(counts) = e.hangar.machine_counts().await {
        e.machines.clear();
        for (state, n) in counts {
            e.machines.get_or_create(&StateLabels { state }).set(n);
        }
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &e.registry).is_err() {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "encoding failed".to_string(),
        )
            .into_response();
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves `/metrics` on `addr` in the background.
pub async fn serve(addr: SocketAddr, hangar: Arc<Hangar>) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    if let Some(p) = hangar.proxy() {
        p.metrics.register(&mut registry);
    }
    hangar.metrics().register(&mut registry);
    let machines = Family::<StateLabels, Gauge>::default();
    registry.register(
        "hangar_machines",
        "Machines on this host, by state",
        machines.clone(),
    );
    let exporter = Arc::new(Exporter {
        hangar,
        registry,
        machines,
    });
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(exporter);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen for metrics on {addr}"))?;
    eprintln!(
        "hangar: serving metrics on http://{}/metrics",
        listener.local_addr()?
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

impl Hangar {
    /// Live machines by state.
    pub async fn machine_counts(
        &self,
    ) -> Result<BTreeMap<String, i64>, crate::service::ServiceError> {
        let machines = self.live_machines().await?;
        let mut out = BTreeMap::new();
        for m in machines {
            *out.entry(m.state.to_string()).or_default() += 1;
        }
        Ok(out)
    }
}
