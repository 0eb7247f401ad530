//! `/v1/apps/{app}/certificates`: custom certificates for an app's hostnames (fly-go's flaps
//! certificates API). ACME issuance is not served: it needs the internet.

use hangar_api::{
    CertificateDetail, CertificateDetailResponse, CertificateSummary, CertificateValidation,
    ImportCertificateRequest, ListCertificatesResponse,
};
use hangar_store::CertificateRecord;

use super::*;

fn summary(c: &CertificateRecord) -> CertificateSummary {
    CertificateSummary {
        hostname: c.hostname.clone(),
        status: "Ready".into(),
        acme_dns_configured: false,
        acme_alpn_configured: false,
        acme_http_configured: false,
        ownership_txt_configured: false,
        configured: true,
        acme_requested: false,
        has_custom_certificate: true,
        has_fly_certificate: false,
        created_at: rfc3339_ms(c.created_at),
        updated_at: rfc3339_ms(c.updated_at),
    }
}

fn detail(c: &CertificateRecord) -> CertificateDetailResponse {
    CertificateDetailResponse {
        hostname: c.hostname.clone(),
        configured: true,
        acme_requested: false,
        status: "Ready".into(),
        certificates: vec![CertificateDetail {
            source: "custom".into(),
            status: "active".into(),
            created_at: rfc3339_ms(c.created_at),
            issued: Vec::new(),
        }],
        validation: CertificateValidation::default(),
        dns_requirements: serde_json::json!({"a": [], "aaaa": [], "cname": ""}),
    }
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/certificates", tag = "Certificates",
    params(("app_name" = String, Path)),
    responses((status = 200, body = ListCertificatesResponse), (status = 404, body = ErrorResponse)))]
pub async fn list_certificates(
    State(h): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<ListCertificatesResponse>> {
    let certs = h.list_certificates(&app).await?;
    Ok(Json(ListCertificatesResponse {
        total_count: certs.len(),
        certificates: certs.iter().map(summary).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/certificates/custom", tag = "Certificates",
    params(("app_name" = String, Path)), request_body = ImportCertificateRequest,
    responses((status = 201, body = CertificateDetailResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn import_certificate(
    State(h): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CertificateDetailResponse>)> {
    let req: ImportCertificateRequest = json_body(&body)?;
    let c = detached(async move { h.import_certificate(&app, req).await }).await?;
    Ok((StatusCode::CREATED, Json(detail(&c))))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/certificates/acme", tag = "Certificates",
    params(("app_name" = String, Path)),
    responses((status = 501, description = "ACME issuance is not served", body = ErrorResponse)))]
pub async fn acme_certificate() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not supported by Hangar: ACME certificates (issuance needs the internet); import one \
         with POST /v1/apps/{app}/certificates/custom",
    )
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/certificates/{hostname}", tag = "Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 200, body = CertificateDetailResponse), (status = 404, body = ErrorResponse)))]
pub async fn get_certificate(
    State(h): State<AppState>,
    Path((app, hostname)): Path<(String, String)>,
) -> ApiResult<Json<CertificateDetailResponse>> {
    Ok(Json(detail(&h.get_certificate(&app, &hostname).await?)))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/certificates/{hostname}/check", tag = "Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 200, body = CertificateDetailResponse), (status = 404, body = ErrorResponse)))]
pub async fn check_certificate(
    state: State<AppState>,
    path: Path<(String, String)>,
) -> ApiResult<Json<CertificateDetailResponse>> {
    get_certificate(state, path).await
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/certificates/{hostname}", tag = "Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorResponse)))]
pub async fn delete_certificate(
    State(h): State<AppState>,
    Path((app, hostname)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    h.delete_certificate(&app, &hostname).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/certificates/{hostname}/custom", tag = "Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorResponse)))]
pub async fn delete_custom_certificate(
    state: State<AppState>,
    path: Path<(String, String)>,
) -> ApiResult<StatusCode> {
    delete_certificate(state, path).await
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/certificates/{hostname}/acme", tag = "Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 404, description = "There are no ACME certificates", body = ErrorResponse)))]
pub async fn delete_acme_certificate(Path((app, hostname)): Path<(String, String)>) -> ApiError {
    ApiError::not_found(format!(
        "no ACME certificate for {hostname} in app {app} (Hangar issues none)"
    ))
}
