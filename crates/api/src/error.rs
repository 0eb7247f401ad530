//! Fly's error body: `{"error": "...", "status": "..."}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    /// `unknown | insufficient_capacity | volume_placement_capacity | name_taken`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}
