//! `/v1/apps/{app}/volumes`: Fly's volumes API (reference 1.6).

use hangar_api::{
    CreateVolumeRequest, ExtendVolumeRequest, ExtendVolumeResponse, UpdateVolumeRequest, Volume,
    VolumeSnapshot,
};

use super::*;
use crate::service::VolumeView;

fn volume(v: VolumeView) -> Volume {
    let r = v.record;
    let u = v.usage;
    // A volume bound to a machine reads `attached` (the store keeps `created`: binding is
    // the attachment column's job).
    let state = match (&r.attached_machine_id, r.state.as_str()) {
        (Some(_), "created") => "attached".to_string(),
        _ => r.state,
    };
    Volume {
        id: r.id,
        name: r.name,
        state,
        size_gb: r.size_gb,
        region: r.region,
        zone: r.zone,
        encrypted: r.encrypted,
        fstype: r.fstype,
        kind: "local".into(),
        attached_alloc_id: r.attached_machine_id.clone(),
        attached_machine_id: r.attached_machine_id,
        created_at: rfc3339_ms(r.created_at),
        snapshot_retention: r.snapshot_retention,
        auto_backup_enabled: r.auto_backup_enabled,
        host_status: "ok".into(),
        host_dedication_id: String::new(),
        block_size: u.map(|u| u.block_size),
        blocks: u.map(|u| u.blocks),
        blocks_free: u.map(|u| u.blocks_free),
        blocks_avail: u.map(|u| u.blocks_avail),
        bytes_total: u.map(|u| u.bytes_total()),
        bytes_used: u.map(|u| u.bytes_used()),
    }
}

fn snapshot(s: hangar_store::SnapshotRecord) -> VolumeSnapshot {
    VolumeSnapshot {
        digest: s.id.clone(),
        id: s.id,
        size: s.size,
        volume_size: s.volume_size,
        created_at: rfc3339_ms(s.created_at),
        status: s.status,
        retention_days: s.retention_days,
    }
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes", tag = "Volumes",
    params(("app_name" = String, Path)),
    responses((status = 200, body = Vec<Volume>), (status = 404, body = ErrorResponse)))]
pub async fn list_volumes(
    State(h): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(
        h.list_volumes(&app)
            .await?
            .into_iter()
            .map(volume)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/volumes", tag = "Volumes",
    params(("app_name" = String, Path)), request_body = CreateVolumeRequest,
    responses((status = 200, body = Volume), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 422, description = "More than the host's disk holds", body = ErrorResponse),
        (status = 507, body = ErrorResponse)))]
pub async fn create_volume(
    State(h): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Volume>> {
    let req: CreateVolumeRequest = json_body(&body)?;
    let v = detached(async move { h.create_volume(&app, req).await }).await?;
    Ok(Json(volume(v)))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes/{volume_id}", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorResponse)))]
pub async fn get_volume(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(volume(h.get_volume(&app, &id).await?)))
}

#[utoipa::path(put, path = "/v1/apps/{app_name}/volumes/{volume_id}", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    request_body = UpdateVolumeRequest,
    responses((status = 200, body = Volume), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn update_volume(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Volume>> {
    let req: UpdateVolumeRequest = json_body(&body)?;
    Ok(Json(volume(h.update_volume(&app, &id, req).await?)))
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/volumes/{volume_id}", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorResponse),
        (status = 412, description = "volume is currently bound to machine", body = ErrorResponse)))]
pub async fn destroy_volume(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    let v = detached(async move { h.destroy_volume(&app, &id).await }).await?;
    Ok(Json(volume(v)))
}

#[utoipa::path(put, path = "/v1/apps/{app_name}/volumes/{volume_id}/extend", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    request_body = ExtendVolumeRequest,
    responses((status = 200, body = ExtendVolumeResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 422, description = "More than the host's disk holds", body = ErrorResponse),
        (status = 507, body = ErrorResponse)))]
pub async fn extend_volume(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<ExtendVolumeResponse>> {
    let req: ExtendVolumeRequest = json_body(&body)?;
    let (v, needs_restart) =
        detached(async move { h.extend_volume(&app, &id, req.size_gb).await }).await?;
    Ok(Json(ExtendVolumeResponse {
        volume: volume(v),
        needs_restart,
    }))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes/{volume_id}/snapshots", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, body = Vec<VolumeSnapshot>), (status = 404, body = ErrorResponse)))]
pub async fn list_snapshots(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<VolumeSnapshot>>> {
    Ok(Json(
        h.list_snapshots(&app, &id)
            .await?
            .into_iter()
            .map(snapshot)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/volumes/{volume_id}/snapshots", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, body = VolumeSnapshot), (status = 404, body = ErrorResponse),
        (status = 507, body = ErrorResponse)))]
pub async fn create_snapshot(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<VolumeSnapshot>> {
    let s = detached(async move { h.create_snapshot(&app, &id).await }).await?;
    Ok(Json(snapshot(s)))
}
