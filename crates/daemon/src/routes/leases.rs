//! Machine leases.

use super::*;

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
