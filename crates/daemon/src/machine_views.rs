//! Hangar's per-machine views: `GET /hangar/v1/apps/{app}/machines/{id}/schedule` (a scheduled
//! machine's next fire and the outcome of its last one; 404 without a schedule) and `…/stats`
//! (what a started machine uses).

use axum::extract::State;
use axum::Json;

use crate::error::ApiError;
use crate::extract::Path as UrlPath;
use crate::routes::AppState;
use crate::service::ScheduleView;

pub async fn get(
    State(h): State<AppState>,
    UrlPath((app, id)): UrlPath<(String, String)>,
) -> Result<Json<ScheduleView>, ApiError> {
    h.schedule_of(&app, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("machine {id} has no schedule")))
}

/// `GET /hangar/v1/apps/{app}/machines/{id}/stats`: what a started machine uses now (CPU time,
/// memory, processes), from its cgroup (`hangar machine stats`).
pub async fn stats(
    State(h): State<AppState>,
    UrlPath((app, id)): UrlPath<(String, String)>,
) -> Result<Json<crate::runtime::MachineStats>, ApiError> {
    Ok(Json(h.machine_stats(&app, &id).await?))
}
