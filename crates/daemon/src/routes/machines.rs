//! `/v1/apps/{app}/machines`: list, create, get, update, destroy, events, versions.

use super::*;

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
    let unreachable = h.unreachable_hosts().await?;
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
        let mut machine = convert::machine(MachineView {
            record: m,
            events: Some(&events),
            lease: lease.as_ref(),
            nonce: None,
            summary,
        });
        if !summary && unreachable.contains(&m.host_id) {
            machine.host_status = "unreachable".into();
        }
        out.push(machine);
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
