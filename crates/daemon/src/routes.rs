//! HTTP handlers of the `/v1` API. Each parses and checks its input, calls the service and
//! shapes the answer exactly as Fly's API does.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hangar_api::{
    CreateAppRequest, CreateAppResponse, CreateMachineRequest, ErrorResponse, ExecRequest,
    LeaseReleaseData, LeaseReleaseResponse, LeaseRequest, LeaseResponse, ListAppsResponse, Machine,
    MachineEvent, MachineState, MachineVersion, MetadataValueRequest, MetadataValueResponse,
    OkResponse, SignalRequest, StartResponse, StopRequest, UpdateMetadataRequest, WaitResponse,
};

use crate::clock::rfc3339_ms;
use crate::convert::{self, MachineView};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_body, lease_nonce, optional_json_body, Path, Query};
use crate::service::{Hangar, ListFilter, StopOptions, WaitTarget, DEFAULT_ORG, MAX_WAIT};

pub use crate::service::AppState;

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

#[utoipa::path(get, path = "/v1/apps", tag = "Apps", params(hangar_api::ListAppsQuery),
    responses((status = 200, body = ListAppsResponse), (status = 401, body = ErrorResponse)))]
pub async fn list_apps(
    State(h): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ListAppsResponse>> {
    let q = Query::parse(q.as_deref());
    let org = q
        .get("org_slug")
        .filter(|o| !o.is_empty())
        .map(str::to_string);
    let mut apps = h.list_apps(org).await?;
    if let Some(role) = q.get("app_role").filter(|r| !r.is_empty()) {
        apps.retain(|(a, _)| a.app_role == role);
    }
    Ok(Json(ListAppsResponse {
        total_apps: apps.len() as i64,
        apps: apps.iter().map(|(a, n)| convert::app(a, *n)).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/apps", tag = "Apps", request_body = CreateAppRequest,
    responses((status = 201, body = CreateAppResponse), (status = 400, body = ErrorResponse),
        (status = 422, description = "name_taken", body = ErrorResponse)))]
pub async fn create_app(
    State(h): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CreateAppResponse>)> {
    let req: CreateAppRequest = json_body(&body)?;
    let name = match (req.name.as_deref(), req.app_name.as_deref()) {
        (Some(n), Some(a)) if !n.is_empty() && !a.is_empty() && n != a => {
            return Err(ApiError::bad_request(
                "name and app_name disagree; give one of them",
            ))
        }
        (Some(n), _) if !n.is_empty() => Some(n.to_string()),
        (_, Some(a)) if !a.is_empty() => Some(a.to_string()),
        _ => None,
    };
    let key = req.idempotency_key.clone().filter(|k| !k.is_empty());
    // A retry with the same idempotency key (and the same name, or none) gets the first app.
    if let Some(k) = &key {
        if let Some(first) = h.app_by_idempotency_key(k).await? {
            if name.as_ref().is_some_and(|n| n != &first.name) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "idempotency key {k:?} was used to create app {:?}, not {:?}",
                        first.name,
                        name.unwrap_or_default()
                    ),
                ));
            }
            return Ok((
                StatusCode::CREATED,
                Json(CreateAppResponse {
                    id: first.id,
                    created_at: first.created_at,
                }),
            ));
        }
    }
    let name = name.ok_or_else(|| ApiError::bad_request("name is required"))?;
    let org = req
        .org_slug
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| DEFAULT_ORG.to_string());
    if org.len() > 63
        || !org
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ApiError::bad_request(format!("invalid org_slug {org:?}")));
    }
    let app = h
        .create_app(
            name,
            org,
            req.network.unwrap_or_default(),
            key,
            req.app_role_id.unwrap_or_default(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateAppResponse {
            id: app.id,
            created_at: app.created_at,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}", tag = "Apps",
    params(("app_name" = String, Path, description = "App name")),
    responses((status = 200, body = hangar_api::App), (status = 404, body = ErrorResponse)))]
pub async fn get_app(
    State(h): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<hangar_api::App>> {
    let a = h.get_app(&app).await?;
    let n = h.count_machines(&app).await?;
    Ok(Json(convert::app(&a, n)))
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}", tag = "Apps",
    params(("app_name" = String, Path, description = "App name"), hangar_api::DeleteAppQuery),
    responses((status = 202, description = "Deleted"), (status = 404, body = ErrorResponse),
        (status = 412, description = "The app still has machines", body = ErrorResponse)))]
pub async fn delete_app(
    State(h): State<AppState>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let force = Query::parse(q.as_deref()).bool("force", false)?;
    h.delete_app(&app, force).await?;
    Ok(StatusCode::ACCEPTED)
}

// ---- machines -----------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines", tag = "Machines",
    params(("app_name" = String, Path, description = "App name"), hangar_api::ListMachinesQuery),
    responses((status = 200, body = [Machine]), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list_machines(
    State(h): State<AppState>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<Machine>>> {
    let q = Query::parse(q.as_deref());
    let states = match q.get("state").filter(|s| !s.is_empty()) {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|s| {
                    s.trim()
                        .parse::<MachineState>()
                        .map_err(ApiError::bad_request)
                })
                .collect::<ApiResult<Vec<_>>>()?,
        ),
    };
    let filter = ListFilter {
        include_deleted: q.bool("include_deleted", false)?,
        region: q
            .get("region")
            .filter(|r| !r.is_empty())
            .map(str::to_string),
        states,
        metadata: q
            .with_prefix("metadata.")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let summary = q.bool("summary", false)?;
    let include_leases = q.bool("include_leases", false)?;
    let records = h.list_machines(&app, filter).await?;
    let mut out = Vec::with_capacity(records.len());
    for m in &records {
        let events = if summary {
            Vec::new()
        } else {
            h.events(&m.id, EMBEDDED_EVENTS_IN_LIST).await?
        };
        let lease = if include_leases {
            h.active_lease(&m.id).await?
        } else {
            None
        };
        out.push(convert::machine(MachineView {
            record: m,
            events: Some(&events),
            lease: lease.as_ref(),
            nonce: None,
            summary,
        }));
    }
    if !summary {
        // One Pilot round trip per running machine, all at once rather than in turn.
        futures_util::future::join_all(
            out.iter_mut()
                .zip(&records)
                .map(|(machine, m)| add_live_status(&h, m, machine)),
        )
        .await;
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines", tag = "Machines",
    params(("app_name" = String, Path, description = "App name")),
    request_body = CreateMachineRequest,
    responses((status = 200, body = Machine), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 412, description = "No runtime can start the machine", body = ErrorResponse),
        (status = 422, description = "name_taken", body = ErrorResponse)))]
pub async fn create_machine(
    State(h): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Machine>> {
    let req: CreateMachineRequest = json_body(&body)?;
    let (m, nonce) = detached({
        let (h, app) = (h.clone(), app.clone());
        async move { h.create_machine(&app, req).await }
    })
    .await?;
    Ok(Json(machine_json(&h, &m, nonce, false).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), hangar_api::GetMachineQuery),
    responses((status = 200, body = Machine), (status = 404, body = ErrorResponse)))]
pub async fn get_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Machine>> {
    let q = Query::parse(q.as_deref());
    let include_leases = q.bool("include_leases", false)?;
    let m = h
        .get_machine(&app, &id, q.bool("include_deleted", false)?)
        .await?;
    Ok(Json(machine_json(&h, &m, None, include_leases).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = CreateMachineRequest,
    responses((status = 200, body = Machine), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "Leased by someone else", body = ErrorResponse),
        (status = 412, description = "Stale current_version or wrong state", body = ErrorResponse)))]
pub async fn update_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Machine>> {
    let req: CreateMachineRequest = json_body(&body)?;
    let nonce = lease_nonce(&headers);
    let m = detached({
        let (h, app, id) = (h.clone(), app.clone(), id.clone());
        async move { h.update_machine(&app, &id, req, nonce.as_deref()).await }
    })
    .await?;
    Ok(Json(machine_json(&h, &m, None, false).await?))
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), hangar_api::DeleteMachineQuery),
    responses((status = 200, body = OkResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, description = "Started and not forced", body = ErrorResponse)))]
pub async fn destroy_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<OkResponse>> {
    let q = Query::parse(q.as_deref());
    let force = q.bool("force", false)? || q.bool("kill", false)?;
    let nonce = lease_nonce(&headers);
    detached(async move { h.destroy(&app, &id, force, nonce.as_deref()).await }).await?;
    Ok(ok())
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/start", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = StartResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn start_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<StartResponse>> {
    let nonce = lease_nonce(&headers);
    let previous = detached(async move { h.start(&app, &id, nonce.as_deref()).await }).await?;
    Ok(Json(StartResponse {
        previous_state: previous,
        migrated: false,
        new_host: String::new(),
    }))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/stop", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = StopRequest,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn stop_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<OkResponse>> {
    let req: StopRequest = optional_json_body(&body)?;
    let timeout = req.timeout.map(|t| t.as_duration());
    if timeout.is_some_and(|t| t > MAX_TIMEOUT) {
        return Err(ApiError::bad_request(format!(
            "timeout is too long (at most {})",
            hangar_api::duration::format_go_duration(MAX_TIMEOUT)
        )));
    }
    let opts = StopOptions {
        signal: req.signal,
        timeout,
    };
    let nonce = lease_nonce(&headers);
    detached(async move { h.stop(&app, &id, opts, nonce.as_deref()).await }).await?;
    Ok(ok())
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/restart", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), hangar_api::RestartQuery),
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn restart_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Json<OkResponse>> {
    let q = Query::parse(q.as_deref());
    // flaps sends these in the query, fly-admin in the body: accept both (the query wins).
    let from_body: RestartBody = optional_json_body(&body)?;
    let signal = match q.get("signal").filter(|s| !s.is_empty()) {
        Some(s) => {
            Some(hangar_api::Signal::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?)
        }
        None => match from_body.signal.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(
                hangar_api::Signal::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            None => None,
        },
    };
    if let Some(sig) = signal {
        // The restart's stop takes the same signals as a stop.
        if !sig.is_one_of(hangar_api::signal::STOP_SIGNALS) {
            return Err(ApiError::bad_request(format!(
                "invalid stop signal {sig}; use one of {}",
                hangar_api::signal::STOP_SIGNALS.join(", ")
            )));
        }
    }
    let timeout = match q.get("timeout").filter(|s| !s.is_empty()) {
        Some(t) => Some(parse_timeout(t)?),
        None => from_body.timeout.map(|t| t.as_duration()),
    };
    if timeout.is_some_and(|t| t > MAX_TIMEOUT) {
        return Err(ApiError::bad_request(format!(
            "timeout is too long (at most {})",
            hangar_api::duration::format_go_duration(MAX_TIMEOUT)
        )));
    }
    // force_stop: no graceful stop, the machine is killed and booted again.
    let force_stop = match q.get("force_stop") {
        Some(_) => q.bool("force_stop", false)?,
        None => from_body.force_stop.unwrap_or(false),
    };
    let opts = if force_stop {
        StopOptions {
            signal: Some(hangar_api::Signal::SIGKILL),
            timeout: None,
        }
    } else {
        StopOptions { signal, timeout }
    };
    let nonce = lease_nonce(&headers);
    detached(async move { h.restart(&app, &id, opts, nonce.as_deref()).await }).await?;
    Ok(ok())
}

/// A restart's parameters as fly-admin sends them (in the body).
#[derive(Debug, Default, serde::Deserialize)]
struct RestartBody {
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    timeout: Option<hangar_api::GoDuration>,
    #[serde(default)]
    force_stop: Option<bool>,
}

/// A duration string (`10s`) or a number of seconds.
fn parse_timeout(t: &str) -> ApiResult<Duration> {
    let d = match t.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => hangar_api::duration::parse_go_duration(t)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    if d > MAX_TIMEOUT {
        return Err(ApiError::bad_request(format!(
            "timeout {t:?} is too long (at most {})",
            hangar_api::duration::format_go_duration(MAX_TIMEOUT)
        )));
    }
    Ok(d)
}

/// The longest timeout a request may ask for (stop, restart, wait).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/signal", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = SignalRequest,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 412, body = ErrorResponse)))]
pub async fn signal_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<OkResponse>> {
    let req: SignalRequest = json_body(&body)?;
    if !req
        .signal
        .is_one_of(hangar_api::signal::SIGNAL_REQUEST_SIGNALS)
    {
        return Err(ApiError::bad_request(format!(
            "signal {} cannot be sent to a machine",
            req.signal
        )));
    }
    h.signal(&app, &id, req.signal, lease_nonce(&headers).as_deref())
        .await?;
    Ok(ok())
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/suspend", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 404, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn suspend_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    let nonce = lease_nonce(&headers);
    detached(async move { h.suspend(&app, &id, nonce.as_deref()).await }).await?;
    Ok(ok())
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/exec", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = ExecRequest,
    responses((status = 200, body = hangar_api::ExecResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn exec_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<hangar_api::ExecResponse>> {
    let req: ExecRequest = json_body(&body)?;
    let command = match (&req.command, req.cmd.as_deref()) {
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, Some(cmd)) if !cmd.trim().is_empty() => shlex::split(cmd)
            .ok_or_else(|| ApiError::bad_request(format!("cmd {cmd:?} has unbalanced quotes")))?,
        _ => return Err(ApiError::bad_request("command is required")),
    };
    if req.container.is_some() && req.machine == Some(true) {
        return Err(ApiError::bad_request(
            "container and machine are mutually exclusive",
        ));
    }
    let timeout = match req.timeout {
        Some(t) if t < 0 => return Err(ApiError::bad_request("timeout must not be negative")),
        Some(t) if t > 0 => Duration::from_secs(t.min(MAX_EXEC_TIMEOUT_SECS) as u64),
        _ => Duration::from_secs(DEFAULT_EXEC_TIMEOUT_SECS),
    };
    let spec = crate::runtime::ExecSpec {
        container: req.container,
        command,
        stdin: req.stdin,
        timeout,
    };
    Ok(Json(
        h.exec(&app, &id, spec, req.machine == Some(true)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/ps", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = [hangar_api::ProcessStat]), (status = 404, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn machine_ps(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<hangar_api::ProcessStat>>> {
    Ok(Json(h.ps(&app, &id).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/memory", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = hangar_api::MemoryResponse), (status = 404, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn get_memory(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<hangar_api::MemoryResponse>> {
    Ok(Json(h.memory(&app, &id).await?))
}

#[utoipa::path(put, path = "/v1/apps/{app_name}/machines/{machine_id}/memory", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = hangar_api::SetMemoryLimitRequest,
    responses((status = 200, body = hangar_api::MemoryResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn set_memory(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<hangar_api::MemoryResponse>> {
    let req: hangar_api::SetMemoryLimitRequest = json_body(&body)?;
    let nonce = lease_nonce(&headers);
    Ok(Json(
        h.set_memory_limit(&app, &id, req.limit_mb, nonce.as_deref())
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/memory/reclaim", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = hangar_api::ReclaimMemoryRequest,
    responses((status = 200, body = hangar_api::ReclaimMemoryResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn reclaim_memory(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<hangar_api::ReclaimMemoryResponse>> {
    let req: hangar_api::ReclaimMemoryRequest = json_body(&body)?;
    let nonce = lease_nonce(&headers);
    Ok(Json(
        h.reclaim_memory(&app, &id, req.amount_mb, nonce.as_deref())
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/cordon", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn cordon_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    h.set_cordoned(&app, &id, true, lease_nonce(&headers).as_deref())
        .await?;
    Ok(ok())
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/uncordon", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn uncordon_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    h.set_cordoned(&app, &id, false, lease_nonce(&headers).as_deref())
        .await?;
    Ok(ok())
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/wait", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), hangar_api::WaitQuery),
    responses((status = 200, body = WaitResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 408, description = "Timed out", body = ErrorResponse)))]
pub async fn wait_machine(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<WaitResponse>> {
    let q = Query::parse(q.as_deref());
    let mut targets = Vec::new();
    for s in q
        .all("state")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        targets.push(WaitTarget::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid state {s:?}: wait accepts started, stopped, suspended, destroyed, failed, created or settled"
            ))
        })?);
    }
    if targets.is_empty() {
        targets.push(WaitTarget::State(MachineState::Started));
    }
    let timeout = match q.get("timeout").filter(|t| !t.is_empty()) {
        None => MAX_WAIT,
        Some(t) => parse_timeout(t)?.min(MAX_WAIT),
    };
    let version = q
        .get("version")
        .or(q.get("instance_id"))
        .filter(|v| !v.is_empty());
    // Only a transition recorded after this event counts (event ids are ULIDs: they sort by
    // time).
    let after = match q.get("from_event_id").filter(|e| !e.is_empty()) {
        Some(e) => Some(
            e.parse::<ulid::Ulid>()
                .map_err(|_| ApiError::bad_request(format!("invalid from_event_id {e:?}")))?
                .to_string(),
        ),
        None => None,
    };
    let (snap, version) = h
        .wait(&app, &id, &targets, timeout, version, after.as_deref())
        .await?;
    Ok(Json(WaitResponse {
        ok: true,
        state: snap.state,
        version,
        event_id: snap.event_id,
    }))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/events", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), hangar_api::EventsQuery),
    responses((status = 200, body = [MachineEvent]), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn machine_events(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<MachineEvent>>> {
    let q = Query::parse(q.as_deref());
    let limit = q.int("limit")?.unwrap_or(DEFAULT_EVENT_LIMIT);
    if limit < 0 {
        return Err(ApiError::bad_request("limit must not be negative"));
    }
    let m = h.get_machine(&app, &id, true).await?;
    let events = h
        .events(&m.id, limit.clamp(1, MAX_EVENT_LIMIT) as usize)
        .await?;
    Ok(Json(events.iter().map(convert::event).collect()))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/versions", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = [MachineVersion]), (status = 404, body = ErrorResponse)))]
pub async fn machine_versions(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<MachineVersion>>> {
    let versions = h.versions(&app, &id).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|v| MachineVersion {
                version: v.instance_id,
                user_config: v.config,
                created_at: Some(rfc3339_ms(v.created_at)),
            })
            .collect(),
    ))
}

// ---- leases -------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "Leases",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = LeaseResponse), (status = 404, description = "lease not found", body = ErrorResponse)))]
pub async fn get_lease(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<LeaseResponse>> {
    let m = h.get_machine(&app, &id, false).await?;
    let lease = h
        .active_lease(&m.id)
        .await?
        .ok_or_else(|| ApiError::not_found("lease not found"))?;
    Ok(Json(convert::lease(&lease)))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "Leases",
    params(("app_name" = String, Path), ("machine_id" = String, Path), hangar_api::LeaseQuery),
    request_body = LeaseRequest,
    responses((status = 201, body = LeaseResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "Held by someone else", body = ErrorResponse)))]
pub async fn acquire_lease(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<LeaseResponse>)> {
    let req: LeaseRequest = optional_json_body(&body)?;
    let ttl = match req.ttl {
        Some(t) => Some(t),
        None => Query::parse(q.as_deref()).int("ttl")?,
    };
    let lease = h
        .acquire_lease(
            &app,
            &id,
            ttl,
            req.description,
            lease_nonce(&headers).as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(convert::lease(&lease))))
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "Leases",
    params(("app_name" = String, Path), ("machine_id" = String, Path),
        ("fly-machine-lease-nonce" = String, Header, description = "The lease's nonce")),
    responses((status = 200, body = LeaseReleaseResponse), (status = 400, description = "No nonce", body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn release_lease(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<LeaseReleaseResponse>> {
    h.release_lease(&app, &id, lease_nonce(&headers).as_deref())
        .await?;
    Ok(Json(LeaseReleaseResponse {
        status: "success".into(),
        data: LeaseReleaseData { ok: true },
    }))
}

// ---- metadata -----------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = std::collections::BTreeMap<String, String>), (status = 404, body = ErrorResponse)))]
pub async fn get_metadata(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<std::collections::BTreeMap<String, String>>> {
    let m = h.get_machine(&app, &id, false).await?;
    Ok(Json(m.config.metadata.unwrap_or_default()))
}

#[utoipa::path(patch, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = UpdateMetadataRequest,
    responses((status = 204, description = "Updated"), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, description = "Stale machine_version", body = ErrorResponse)))]
pub async fn patch_metadata(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: UpdateMetadataRequest = json_body(&body)?;
    h.update_metadata(
        &app,
        &id,
        req.metadata,
        req.machine_version.as_deref(),
        lease_nonce(&headers).as_deref(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = UpdateMetadataRequest,
    responses((status = 204, description = "Updated"), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 412, description = "Stale machine_version", body = ErrorResponse)))]
pub async fn put_metadata(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    patch_metadata(state, path, headers, body).await
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = MetadataValueResponse), (status = 404, body = ErrorResponse)))]
pub async fn get_metadata_key(
    State(h): State<AppState>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult<Json<MetadataValueResponse>> {
    let m = h.get_machine(&app, &id, false).await?;
    let value = m
        .config
        .metadata
        .and_then(|md| md.get(&key).cloned())
        .ok_or_else(|| ApiError::not_found(format!("metadata key {key:?} not found")))?;
    Ok(Json(MetadataValueResponse { value }))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    request_body = MetadataValueRequest,
    responses((status = 204, description = "Set"), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn set_metadata_key(
    State(h): State<AppState>,
    Path((app, id, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: MetadataValueRequest = json_body(&body)?;
    let changes = [(key, Some(req.value))].into_iter().collect();
    h.update_metadata(&app, &id, changes, None, lease_nonce(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn delete_metadata_key(
    State(h): State<AppState>,
    Path((app, id, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let changes = [(key, None)].into_iter().collect();
    h.update_metadata(&app, &id, changes, None, lease_nonce(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

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
        ("certificates", "app certificates"),
        ("ip_assignments", "IP assignments"),
        ("secretkeys", "secret keys"),
        ("secrets", "app secrets"),
        ("volumes", "volumes"),
        ("deploy_token", "deploy tokens"),
    ];
    const TOP: &[(&str, &str)] = &[
        ("postgres", "managed Postgres"),
        ("platform", "platform regions and placements"),
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
