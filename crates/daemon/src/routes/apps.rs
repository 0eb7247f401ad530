//! `/v1/apps`: list, create, get, delete; and `/v1/platform/regions`.

use super::*;

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
    responses((status = 201, body = hangar_api::App, description = "The new app (Fly documents `id` and `created_at`; flaps decodes a whole app)"), (status = 400, body = ErrorResponse),
        (status = 422, description = "name_taken", body = ErrorResponse)))]
pub async fn create_app(
    State(h): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<hangar_api::App>)> {
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
            let machines = h.count_machines(&first.name).await?;
            return Ok((StatusCode::CREATED, Json(convert::app(&first, machines))));
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
    let network = req.network.unwrap_or_default();
    if !network.is_empty() && !is_network_name(&network) {
        return Err(ApiError::bad_request(format!(
            "invalid network {network:?}: use 1 to 63 lower-case letters, digits, '-' and '_', starting with a letter or digit"
        )));
    }
    let app = h
        .create_app(name, org, network, key, req.app_role_id.unwrap_or_default())
        .await?;
    Ok((StatusCode::CREATED, Json(convert::app(&app, 0))))
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

#[utoipa::path(get, path = "/v1/platform/regions", tag = "Platform",
    responses((status = 200, description = "`{\"Regions\": [Region], \"Nearest\": code}`: this host's region")))]
/// `GET /v1/platform/regions` as flaps reads it (`{"Regions": [fly.Region], "Nearest": …}`):
/// one host is one region; `capacity` is how many `shared-cpu-1x` machines it still admits.
pub async fn platform_regions(State(h): State<AppState>) -> Json<serde_json::Value> {
    let regions: Vec<serde_json::Value> = h
        .regions()
        .into_iter()
        .map(|(code, room)| {
            serde_json::json!({
                "code": code,
                "name": format!("Hangar host region {code}"),
                "latitude": 0.0,
                "longitude": 0.0,
                "gateway_available": false,
                "requires_paid_plan": false,
                "deprecated": false,
                "capacity": room,
                "geo_region": "",
                "mpg_available": false,
            })
        })
        .collect();
    Json(serde_json::json!({"Regions": regions, "Nearest": h.region()}))
}

/// A network name is a plain name: it becomes part of the resolver's view and of logs.
fn is_network_name(n: &str) -> bool {
    n.len() <= 63
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
