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

use crate::counters::{DaemonMetrics, RequestLabels, RouteLabels};
use crate::service::Hangar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
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
