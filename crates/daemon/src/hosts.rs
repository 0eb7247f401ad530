//! `GET /hangar/v1/hosts`: the hosts sharing this daemon's store, what they offer and use, and
//! whether their heartbeats still come (`hangar hosts list`).

use axum::extract::State;
use axum::Json;

use crate::error::ApiError;
use crate::routes::AppState;
use crate::service::HostView;

pub async fn list(State(h): State<AppState>) -> Result<Json<Vec<HostView>>, ApiError> {
    Ok(Json(h.hosts().await?))
}
