//! What the daemon tells Pilot to run, written to `<machine dir>/pilot.json`, and the messages
//! of the control socket.

use hangar_sandbox::container::ContainerProcess;
use serde::{Deserialize, Serialize};

pub const SPEC_FILE: &str = "pilot.json";
pub const CONTROL_SOCKET: &str = "pilot.sock";
/// Written by Pilot just before it exits: how each container ended.
pub const EXIT_FILE: &str = "exit.json";
pub const LOG_DIR: &str = "logs";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PilotSpec {
    pub machine_id: String,
    pub containers: Vec<ContainerSpec>,
    /// Largest size of one log file before it is rotated.
    pub log_max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub process: ContainerProcess,
    /// Signal number sent on stop.
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub restart_count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Stop every container (reverse order) and exit; `signal`/`timeout_ms` override the
    /// containers' own stop settings.
    Stop {
        signal: Option<i32>,
        timeout_ms: Option<u64>,
    },
    Signal {
        signal: i32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReply>,
}
