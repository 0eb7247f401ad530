//! IP assignments (fly-go's flaps ip_assignments).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AssignIpRequest {
    /// `v4`, `v6` (a dedicated address), `shared_v4`, or `private_v6` (Flycast, not served).
    #[serde(default, rename = "type")]
    #[schema(pattern = "^(v4|v6|shared_v4)$")]
    pub kind: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub org_slug: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IpAssignment {
    pub ip: String,
    pub region: String,
    pub service_name: String,
    pub shared: bool,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListIpAssignmentsResponse {
    pub ips: Vec<IpAssignment>,
}
