//! What the daemon tells Pilot to run, written to `<machine dir>/pilot.json`, and the messages
//! of the control socket.

use hangar_sandbox::container::ContainerProcess;
use serde::{Deserialize, Serialize};

pub const SPEC_FILE: &str = "pilot.json";
pub const CONTROL_SOCKET: &str = "pilot.sock";
/// Written by Pilot just before it exits: a [`PilotExit`].
pub const EXIT_FILE: &str = "exit.json";
pub const LOG_DIR: &str = "logs";

/// How a machine ended: each container's last status, and the machine's own exit code and
/// signal as Pilot decided them (the one container of a single-container machine; for
/// `processes`, the process that ended the machine; otherwise the first container that did not
/// end with 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PilotExit {
    pub containers: Vec<crate::spec::ContainerStatus>,
    pub exit_code: i32,
    pub signal: Option<i32>,
}

impl PilotExit {
    /// Reads an exit file, also in the plain container-list form earlier Pilots wrote (its first
    /// container decided).
    pub fn parse(bytes: &[u8]) -> Option<PilotExit> {
        if let Ok(exit) = serde_json::from_slice::<PilotExit>(bytes) {
            return Some(exit);
        }
        let containers: Vec<ContainerStatus> = serde_json::from_slice(bytes).ok()?;
        let (exit_code, signal) = containers
            .first()
            .map(|c| match (c.exit_code, c.signal) {
                (Some(code), sig) => (code, sig),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (0, None),
            })
            .unwrap_or((0, None));
        Some(PilotExit {
            containers,
            exit_code,
            signal,
        })
    }
}

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
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    #[serde(default)]
    pub healthchecks: Vec<HealthcheckSpec>,
    /// Per-container restart policy. The implicit `app` container of a single-image machine
    /// has `no`: the daemon restarts the whole machine instead.
    #[serde(default)]
    pub restart: RestartSpec,
    /// The main process gets a pty (`init.tty`); its output still goes to the log.
    #[serde(default)]
    pub tty: bool,
    /// A process of a `processes` machine: when it ends for good, Pilot stops the others and
    /// the machine exits with its code.
    #[serde(default)]
    pub stops_machine: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dependency {
    pub name: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Started,
    Healthy,
    ExitedSuccessfully,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthcheckSpec {
    pub name: String,
    pub kind: CheckKind,
    /// `unhealthy: stop`: a failing liveness check stops the container; its restart policy decides.
    pub stop_when_unhealthy: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub grace_period_ms: u64,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub probe: Probe,
    /// A machine's top-level check (`config.checks`): run and reported, never part of the
    /// container's health (so it gates no dependent).
    #[serde(default)]
    pub machine_level: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Readiness,
    Liveness,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    Tcp {
        port: u16,
    },
    Http {
        port: u16,
        method: String,
        path: String,
        /// `http` or `https`.
        scheme: String,
        headers: Vec<(String, String)>,
        tls_skip_verify: bool,
        /// SNI and the name the certificate must carry (default `localhost`).
        #[serde(default)]
        tls_server_name: Option<String>,
    },
    Exec {
        command: Vec<String>,
    },
}

pub use hangar_policy::{RestartPolicy, RestartSpec};

/// Container states as the machine JSON reports them (`containers[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Not started yet: waiting for its dependencies.
    Created,
    Running,
    /// Ended; may be restarted by its policy.
    Exited,
    /// Could not start (exec failed, or a dependency can never be satisfied).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// `starting`, `healthy` or `unhealthy` when the container has health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckStatus {
    pub name: String,
    /// `passing`, `warning` (in grace period / not run yet) or `critical`.
    pub status: String,
    #[serde(default)]
    pub output: String,
    /// Unix milliseconds of the last result.
    #[serde(default)]
    pub updated_at: i64,
    /// See [`HealthcheckSpec::machine_level`].
    #[serde(default)]
    pub machine_level: bool,
}

/// Something that happened to a container; streamed to `watch` connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub container: String,
    pub kind: EventKind,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub restart_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Exited,
    Restarting,
    Failed,
    Health,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    pub exit_code: i32,
    /// Signal that killed the command, or 0.
    pub exit_signal: i32,
    pub stdout: String,
    pub stderr: String,
    /// More output than Pilot keeps ([`crate::exec`]'s cap) was written and dropped.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
}

/// One process of a container (the API's ProcessStat).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    pub container: String,
    pub pid: i32,
    pub command: String,
    pub directory: String,
    /// Bytes.
    pub rss: u64,
    /// CPU time in clock ticks (user + system).
    pub cpu: u64,
    /// TCP sockets the process listens on: (`tcp`, `address:port`).
    #[serde(default)]
    pub listen_sockets: Vec<(String, String)>,
}
