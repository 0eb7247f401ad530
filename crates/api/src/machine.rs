//! Machines, their events, leases and the request/response bodies of reference 1.2–1.4.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::config::{Extra, MachineConfig};
use crate::duration::GoDuration;
use crate::signal::Signal;

/// Machine states (reference 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Creating,
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Restarting,
    Updating,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
    LaunchFailed,
    Replaced,
    Migrated,
}

impl MachineState {
    pub const ALL: &'static [MachineState] = &[
        MachineState::Creating,
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Suspending,
        MachineState::Suspended,
        MachineState::Restarting,
        MachineState::Updating,
        MachineState::Replacing,
        MachineState::Destroying,
        MachineState::Destroyed,
        MachineState::Failed,
        MachineState::LaunchFailed,
        MachineState::Replaced,
        MachineState::Migrated,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            MachineState::Creating => "creating",
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Restarting => "restarting",
            MachineState::Updating => "updating",
            MachineState::Replacing => "replacing",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
            MachineState::LaunchFailed => "launch_failed",
            MachineState::Replaced => "replaced",
            MachineState::Migrated => "migrated",
        }
    }

    /// Persistent and terminal states: what `wait?state=settled` waits for.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            MachineState::Created
                | MachineState::Started
                | MachineState::Stopped
                | MachineState::Suspended
                | MachineState::Failed
                | MachineState::Destroyed
                | MachineState::Replaced
                | MachineState::Migrated
        )
    }

    /// No transition leaves these.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            MachineState::Destroyed | MachineState::Replaced | MachineState::Migrated
        )
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MachineState::ALL
            .iter()
            .find(|st| st.as_str() == s)
            .copied()
            .ok_or_else(|| format!("unknown machine state {s:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckStatus {
    pub name: String,
    /// `passing | warning | critical`
    pub status: String,
    #[serde(default)]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub restart_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The lease fields shown on a machine (`include_leases=true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StrippedLease {
    pub description: String,
    pub expires_at: i64,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub state: MachineState,
    pub region: String,
    pub instance_id: String,
    pub private_ip: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<MachineEvent>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<StrippedLease>,
    /// Empty (and left out) in `summary` listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_features: Option<Vec<String>>,
    pub cordoned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateMachineRequest {
    pub config: MachineConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<i64>,
    #[serde(default)]
    pub skip_launch: bool,
    #[serde(default)]
    pub skip_service_registration: bool,
    #[serde(default)]
    pub skip_secrets: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_secrets_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsvd: Option<bool>,
    /// Update only: the `instance_id` the caller expects to replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignalRequest {
    pub signal: Signal,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestartQuery {
    /// Duration string or seconds.
    #[param(pattern = "^([0-9]{1,5}|([0-9]{1,5}(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")]
    pub timeout: Option<String>,
    #[param(pattern = "^(SIGHUP|SIGINT|SIGQUIT|SIGKILL|SIGUSR1|SIGUSR2|SIGTERM)$")]
    pub signal: Option<String>,
    #[param(pattern = "^(true|false)$")]
    pub force_stop: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OkResponse {
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StartResponse {
    pub previous_state: MachineState,
    pub migrated: bool,
    pub new_host: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaitResponse {
    pub ok: bool,
    pub state: MachineState,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineVersion {
    pub version: String,
    pub user_config: MachineConfig,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    /// Seconds, 1 to 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseData {
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
    pub version: String,
}

/// fly-go's `MachineLease` envelope.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    pub status: String,
    pub data: LeaseData,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseReleaseData {
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseReleaseResponse {
    pub status: String,
    pub data: LeaseReleaseData,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UpdateMetadataRequest {
    #[serde(default)]
    pub metadata: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MetadataValueRequest {
    /// Required: `{}` is a 400, not an empty value.
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetadataValueResponse {
    pub value: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Deprecated single-string form flyctl still sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// `GET/PUT …/memory`: the machine's memory limit (its balloon) and what is free under it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MemoryResponse {
    pub limit_mb: i64,
    pub available_mb: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SetMemoryLimitRequest {
    /// At least 32, at most the machine's memory.
    #[schema(minimum = 32)]
    pub limit_mb: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReclaimMemoryRequest {
    #[schema(minimum = 1, maximum = 1048576)]
    pub amount_mb: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReclaimMemoryResponse {
    pub actual_mb: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    pub exit_code: i64,
    pub exit_signal: i64,
    pub stdout: String,
    pub stderr: String,
    /// Hangar: the command wrote more than the 1 MiB kept of its stdout; the rest was dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    /// Hangar: the same for stderr.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ListenSocket {
    pub proto: String,
    pub address: String,
}

/// One process of a machine (`GET …/ps`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ProcessStat {
    pub pid: i32,
    /// CPU time in kernel mode (clock ticks).
    pub stime: u64,
    /// CPU time in user mode (clock ticks).
    pub rtime: u64,
    pub command: String,
    pub directory: String,
    pub cpu: u64,
    pub rss: u64,
    #[serde(default)]
    pub listen_sockets: Vec<ListenSocket>,
    /// Hangar addition: the container the process belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Query of `GET /apps/{app}/machines`. `metadata.KEY=VALUE` filters arrive as extra keys.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListMachinesQuery {
    pub include_deleted: Option<String>,
    pub include_leases: Option<String>,
    pub region: Option<String>,
    /// Comma-separated states: created, started, stopped, suspended, …
    pub state: Option<String>,
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetMachineQuery {
    pub include_leases: Option<String>,
    pub include_deleted: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteMachineQuery {
    pub force: Option<String>,
    /// fly-go's spelling of `force`.
    pub kill: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Default 20, at most 50.
    #[param(pattern = "^[0-9]{1,9}$")]
    pub limit: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// One or more of started, stopped, suspended, destroyed, failed, settled; repeated or comma-separated.
    #[param(
        pattern = "^(started|stopped|suspended|destroyed|failed|created|settled)(,(started|stopped|suspended|destroyed|failed|created|settled))*$"
    )]
    pub state: Option<String>,
    /// Seconds, default 60, at most 60.
    #[param(pattern = "^([0-9]{1,5}|([0-9]{1,5}(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")]
    pub timeout: Option<String>,
    pub version: Option<String>,
    /// Deprecated alias of `version`.
    pub instance_id: Option<String>,
    pub from_event_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaseQuery {
    /// Seconds, 1 to 86400.
    #[param(pattern = "^[0-9]{1,5}$")]
    pub ttl: Option<String>,
}
