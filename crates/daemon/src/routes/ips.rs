//! `/v1/apps/{app}/ip_assignments`: the app's addresses (fly-go's flaps ip_assignments).

use hangar_api::{AssignIpRequest, IpAssignment, ListIpAssignmentsResponse};

use super::*;

fn assignment(a: &hangar_store::IpAssignmentRecord) -> IpAssignment {
    IpAssignment {
        ip: a.ip.clone(),
        region: a.region.clone(),
        service_name: a.service_name.clone(),
        shared: a.shared,
        created_at: rfc3339_ms(a.created_at),
    }
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/ip_assignments", tag = "IP assignments",
    params(("app_name" = String, Path)),
    responses((status = 200, body = ListIpAssignmentsResponse), (status = 404, body = ErrorResponse)))]
pub async fn list_ip_assignments(
    State(h): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<ListIpAssignmentsResponse>> {
    let ips = h.list_ip_assignments(&app).await?;
    Ok(Json(ListIpAssignmentsResponse {
        ips: ips.iter().map(assignment).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/ip_assignments", tag = "IP assignments",
    params(("app_name" = String, Path)), request_body = AssignIpRequest,
    responses((status = 201, body = IpAssignment), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "No free address in the pool", body = ErrorResponse)))]
pub async fn assign_ip(
    State(h): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<IpAssignment>)> {
    let req: AssignIpRequest = json_body(&body)?;
    let a = detached(async move { h.assign_ip(&app, &req.kind, req.service_name).await }).await?;
    Ok((StatusCode::CREATED, Json(assignment(&a))))
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/ip_assignments/{ip}", tag = "IP assignments",
    params(("app_name" = String, Path), ("ip" = String, Path)),
    responses((status = 204, description = "Released"), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn release_ip(
    State(h): State<AppState>,
    Path((app, ip)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    detached(async move { h.release_ip(&app, &ip).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}
