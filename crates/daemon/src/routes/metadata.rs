//! Machine metadata.

use super::*;

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
