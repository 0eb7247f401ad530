//! HTTP handlers of the `/v1` API. Each parses and checks its input, calls the service and
//! shapes the answer exactly as Fly's API does.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hangar_api::{
    CreateAppRequest, CreateMachineRequest, ErrorResponse, ExecRequest, LeaseReleaseData,
    LeaseReleaseResponse, LeaseRequest, LeaseResponse, ListAppsResponse, Machine, MachineEvent,
    MachineState, MachineVersion, MetadataValueRequest, MetadataValueResponse, OkResponse,
    SignalRequest, StartResponse, StopRequest, UpdateMetadataRequest, WaitResponse,
};

use crate::clock::rfc3339_ms;
use crate::convert::{self, MachineView};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_body, lease_nonce, optional_json_body, Path, Query};
use crate::service::{Hangar, ListFilter, StopOptions, WaitTarget, DEFAULT_ORG, MAX_WAIT};

pub use crate::service::AppState;

mod apps;
mod certificates;
mod ips;
mod leases;
mod lifecycle;
mod machines;
mod metadata;
mod process;
mod secrets;
mod volumes;

pub use apps::*;
pub use certificates::*;
pub use ips::*;
pub use leases::*;
pub use lifecycle::*;
pub use machines::*;
pub use metadata::*;
pub use process::*;
pub use secrets::*;
pub use volumes::*;

/// Events embedded in a machine object (newest first).
const EMBEDDED_EVENTS: usize = 10;
const EMBEDDED_EVENTS_IN_LIST: usize = 5;
const DEFAULT_EVENT_LIMIT: i64 = 20;
const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 30;
const MAX_EXEC_TIMEOUT_SECS: i64 = 3600;
const MAX_EVENT_LIMIT: i64 = 50;

/// Runs a mutation to completion even if the client goes away: hyper drops a request's future
/// when its connection closes, which must not leave a machine half-way through a transition.
async fn detached<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(fut)
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
        .map_err(Into::into)
}

fn ok() -> Json<OkResponse> {
    Json(OkResponse { ok: true })
}

async fn machine_json(
    h: &Hangar,
    m: &hangar_store::MachineRecord,
    nonce: Option<String>,
    with_lease: bool,
) -> ApiResult<Machine> {
    let events = h.events(&m.id, EMBEDDED_EVENTS).await?;
    let lease = if with_lease {
        h.active_lease(&m.id).await?
    } else {
        None
    };
    let mut machine = convert::machine(MachineView {
        record: m,
        events: Some(&events),
        lease: lease.as_ref(),
        nonce,
        summary: false,
    });
    // This host answers for itself: only another host's machine can be on a silent host.
    if m.host_id != h.host_id() && h.unreachable_hosts().await?.contains(&m.host_id) {
        machine.host_status = "unreachable".into();
    }
    add_live_status(h, m, &mut machine).await;
    Ok(machine)
}

/// A running machine's checks and containers, asked of its Pilot.
async fn add_live_status(h: &Hangar, m: &hangar_store::MachineRecord, machine: &mut Machine) {
    if let Some(views) = h.containers(m).await {
        let mut checks = Vec::new();
        let mut containers = Vec::new();
        for v in views {
            checks.extend(v.checks);
            containers.push(v.status);
        }
        machine.checks = Some(checks);
        // Single-image machines have one implicit container, which fly-go does not show;
        // multi-container and multi-process machines list theirs.
        let several = m.config.containers.as_ref().is_some_and(|c| !c.is_empty())
            || m.config.processes.as_ref().is_some_and(|p| p.len() > 1);
        if several {
            machine.containers = Some(containers);
        }
    }
}

// ---- apps ---------------------------------------------------------------------------------

/// JSON 404 for paths the API does not have; 501 for parts of Fly's Machines API that Hangar
/// does not serve, so a Fly client says "not supported" instead of "app not found".
pub async fn not_found(uri: axum::http::Uri) -> Response {
    match unserved_fly_endpoint(uri.path()) {
        Some(what) => ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("not supported by Hangar: {what}"),
        )
        .into_response(),
        None => ApiError::not_found("not found").into_response(),
    }
}

/// The family of a Fly Machines API endpoint (from fly-go's flaps client) Hangar does not
/// serve, when `path` is one.
fn unserved_fly_endpoint(path: &str) -> Option<String> {
    const APP_FAMILIES: &[(&str, &str)] = &[
        ("secretkeys", "secret keys"),
        ("deploy_token", "deploy tokens"),
    ];
    const TOP: &[(&str, &str)] = &[
        ("postgres", "managed Postgres"),
        ("platform", "platform placements"),
        ("tokens", "token introspection (OIDC, KMS, authorize)"),
        ("orgs", "organizations"),
    ];
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "apps", app, family, ..] if !app.is_empty() => APP_FAMILIES
            .iter()
            .find(|(f, _)| f == family)
            .map(|(f, what)| format!("{what} (/v1/apps/{{app}}/{f})")),
        ["v1", top, ..] => TOP
            .iter()
            .find(|(t, _)| t == top)
            .map(|(t, what)| format!("{what} (/v1/{t})")),
        _ => None,
    }
}

pub async fn method_not_allowed() -> Response {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response()
}
