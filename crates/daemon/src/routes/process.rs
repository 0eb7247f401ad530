//! Endpoints on a running machine's processes: exec, ps, memory.

use super::*;

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
