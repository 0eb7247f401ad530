//! `/v1/apps/{app}/secrets`: Fly's app secrets API (reference 1.7).

use hangar_api::{
    AppSecret, DeleteSecretResponse, ListSecretsResponse, SetSecretRequest, SetSecretResponse,
    SetSecretsRequest, SetSecretsResponse,
};

use super::*;
use crate::service::SecretView;

/// `min_version`, or fly-go's `version`: a secrets version the caller has written.
fn min_version(q: &Query) -> ApiResult<Option<u64>> {
    let v = match q.int("min_version")? {
        Some(v) => Some(v),
        None => q.int("version")?,
    };
    v.map(|v| {
        u64::try_from(v).map_err(|_| ApiError::bad_request("min_version: must not be negative"))
    })
    .transpose()
}

fn app_secret(view: SecretView) -> AppSecret {
    AppSecret {
        name: view.record.name,
        digest: view.record.digest,
        value: view.value.map(|v| v.as_str().to_string()),
        created_at: crate::clock::rfc3339_millis(view.record.created_at),
        updated_at: crate::clock::rfc3339_millis(view.record.updated_at),
    }
}

fn record_secret(record: hangar_store::SecretRecord) -> AppSecret {
    app_secret(SecretView {
        record,
        value: None,
    })
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/secrets", tag = "Secrets",
    params(("app_name" = String, Path),
        ("min_version" = Option<u64>, Query, description = "A secrets version this read must reflect (fly-go sends `version`)"),
        ("show_secrets" = Option<bool>, Query, description = "Include values (only where the daemon allows it)")),
    responses((status = 200, body = ListSecretsResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 412, body = ErrorResponse)))]
pub async fn list_secrets(
    State(h): State<AppState>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ListSecretsResponse>> {
    let q = Query::parse(q.as_deref());
    let (_, views) = h
        .list_secrets(&app, min_version(&q)?, q.bool("show_secrets", false)?)
        .await?;
    Ok(Json(ListSecretsResponse {
        secrets: views.into_iter().map(app_secret).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets", tag = "Secrets",
    params(("app_name" = String, Path)), request_body = SetSecretsRequest,
    responses((status = 200, body = SetSecretsResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn set_secrets(
    State(h): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<SetSecretsResponse>> {
    let req: SetSecretsRequest = json_body(&body)?;
    let (version, set) = detached(async move { h.write_secrets(&app, req.values).await }).await?;
    Ok(Json(SetSecretsResponse {
        secrets: set.into_iter().map(record_secret).collect(),
        version,
        version_deprecated: version,
    }))
}

#[utoipa::path(get, path = "/v1/apps/{app_name}/secrets/{secret_name}", tag = "Secrets",
    params(("app_name" = String, Path), ("secret_name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,254}$"),
        ("min_version" = Option<u64>, Query), ("show_secrets" = Option<bool>, Query)),
    responses((status = 200, body = AppSecret), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn get_secret(
    State(h): State<AppState>,
    Path((app, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<AppSecret>> {
    let q = Query::parse(q.as_deref());
    let (_, views) = h
        .list_secrets(&app, min_version(&q)?, q.bool("show_secrets", false)?)
        .await?;
    views
        .into_iter()
        .find(|v| v.record.name == name)
        .map(|v| Json(app_secret(v)))
        .ok_or_else(|| ApiError::not_found(format!("secret {name:?} not found in app {app:?}")))
}

#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets/{secret_name}", tag = "Secrets",
    params(("app_name" = String, Path), ("secret_name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,254}$")),
    request_body = SetSecretRequest,
    responses((status = 201, body = SetSecretResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn set_secret(
    State(h): State<AppState>,
    Path((app, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<SetSecretResponse>)> {
    let req: SetSecretRequest = json_body(&body)?;
    let values = [(name.clone(), Some(req.value))].into_iter().collect();
    let (version, set) = detached(async move { h.write_secrets(&app, values).await }).await?;
    let record = set
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::internal(format!("secret {name} was not stored")))?;
    Ok((
        StatusCode::CREATED,
        Json(SetSecretResponse {
            secret: record_secret(record),
            version,
            version_deprecated: version,
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/apps/{app_name}/secrets/{secret_name}", tag = "Secrets",
    params(("app_name" = String, Path), ("secret_name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,254}$")),
    responses((status = 200, description = "Deleted (also when it did not exist)", body = DeleteSecretResponse),
        (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete_secret(
    State(h): State<AppState>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Json<DeleteSecretResponse>> {
    let values = [(name, None)].into_iter().collect();
    let (version, _) = detached(async move { h.write_secrets(&app, values).await }).await?;
    Ok(Json(DeleteSecretResponse {
        version,
        version_deprecated: version,
    }))
}
