//! Machine lifecycle endpoints: start, stop, restart, signal, suspend, cordon, wait.

use super::*;

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
    let signal = q
        .get("signal")
        .filter(|s| !s.is_empty())
        .or(from_body.signal.as_deref().filter(|s| !s.is_empty()))
        .map(hangar_api::Signal::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
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
