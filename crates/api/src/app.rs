//! Apps (reference 1.1).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateAppRequest {
    /// Lowercase letters, digits and dashes, at most 63.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9-]{1,63}$")]
    pub name: Option<String>,
    /// Older spelling of `name`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9-]{1,63}$")]
    pub app_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9-]{1,63}$")]
    pub org_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_subdomains: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub name: String,
    pub slug: String,
    pub internal_numeric_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub network_cidr: String,
    pub internal_numeric_id: i64,
    pub machine_count: i64,
    pub volume_count: i64,
    pub organization: Organization,
    /// Unix milliseconds.
    #[serde(default)]
    pub created_at: i64,
    /// A role such as `postgres_cluster` (`app_role_id` at create); empty for none.
    #[serde(default)]
    pub app_role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListAppsResponse {
    pub total_apps: i64,
    pub apps: Vec<App>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAppsQuery {
    /// Organization slug; `personal` is the default organization.
    pub org_slug: Option<String>,
    pub app_role: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteAppQuery {
    /// Destroy the app's machines too.
    pub force: Option<String>,
}
