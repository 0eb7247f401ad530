//! `GET /hangar/v1/apps/{app}/machines/{id}/schedule`: a scheduled machine's next fire and the
//! outcome of its last one (`hangar machine status`); 404 for a machine without a schedule.

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
