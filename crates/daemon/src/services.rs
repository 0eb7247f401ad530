//! `GET /hangar/v1/apps/{app}/services`: the app's edge ports, where they listen and the
//! machines behind them (`hangar services list`).

use axum::extract::State;
use axum::Json;

use crate::error::ApiError;
use crate::extract::Path as UrlPath;
use crate::routes::AppState;

pub async fn list(
    State(h): State<AppState>,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<Vec<hangar_proxy::status::ServiceStatus>>, ApiError> {
    h.get_app(&app).await?;
    Ok(Json(
        h.proxy().map(|p| p.services(&app)).unwrap_or_default(),
    ))
}
