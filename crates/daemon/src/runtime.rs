//! What runs machines. The daemon's state machine drives a [`Runtime`]; the namespace sandbox
//! with Pilot is the real one and arrives with the sandbox issue. Until a runtime is configured,
//! [`NoRuntime`] refuses to start anything rather than pretending a machine is running.

use std::time::Duration;

use async_trait::async_trait;
use hangar_api::{CheckStatus, ContainerStatus, ExecResponse, MachineConfig, ProcessStat, Signal};
use hangar_store::MachineRecord;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "no machine runtime is configured on this host, so machines cannot be started; \
         create them with skip_launch to store them without starting"
    )]
    NotConfigured,
    #[error("{0}")]
    Unsupported(String),
    #[error("runtime failure: {0}")]
    Failed(String),
    #[error("{0}")]
    Image(String),
    /// The machine's own workload could not start (a container's command, a dependency that
    /// failed): the request was fine, the machine is `failed` with this reason.
    #[error("machine failed to start: {0}")]
    StartFailed(String),
    /// A request named a container the machine does not have.
    #[error("{0}")]
    NoSuchContainer(String),
    /// The container (or machine) is not running.
    #[error("{0}")]
    NotRunning(String),
}

/// An app's secret values, opened for one boot of one machine. Never printed.
#[derive(Default)]
pub struct SecretValues {
    /// The app's secrets version these were read at.
    pub version: u64,
    values: BTreeMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues")
            .field("version", &self.version)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretValues {
    pub fn new(version: u64, values: BTreeMap<String, Zeroizing<String>>) -> Self {
        SecretValues { version, values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        SecretValues {
            version: 1,
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string())))
                .collect(),
        }
    }
}

/// A running machine's use of the host, read from its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MachineStats {
    /// CPU time used since the machine's start, nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    /// Block-device bytes read and written since the machine's start.
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// A runtime failure with `e` as its reason.
pub(crate) fn failed(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed(e.to_string())
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Checks, before any state is written, that this runtime can run `config` at all.
    fn preflight(&self, config: &MachineConfig) -> Result<(), RuntimeError>;
    /// Makes sure every image `config` runs is stored here (pulling what is missing), before a
    /// create or update is written: an image that cannot be had is the request's error, not a
    /// machine left failed. Returns the manifest digest each image (as the config names it)
    /// resolved to, which the machine then runs until it is updated.
    async fn fetch_images(
        &self,
        _config: &MachineConfig,
    ) -> Result<std::collections::BTreeMap<String, String>, RuntimeError> {
        Ok(Default::default())
    }
    /// Boots the machine's current version; returns once it is running.
    async fn start(
        &self,
        machine: &MachineRecord,
        secrets: &SecretValues,
    ) -> Result<(), RuntimeError>;
    /// Sends `signal`, waits up to `timeout`, then kills what is left. Returns how the machine
    /// ended when this call stopped it (a requested stop is not reported as an exit).
    async fn stop(
        &self,
        machine: &MachineRecord,
        signal: Signal,
        timeout: Duration,
    ) -> Result<Option<MachineExit>, RuntimeError>;
    /// Releases everything the machine holds on the host (processes, mounts, cgroups, dirs).
    /// Its logs are kept for the retention period (crate::log_archive). May return once every
    /// process of the machine has been sent SIGKILL, with the rest of the release following
    /// in the background (a runtime that does so finishes it before its shutdown returns).
    async fn destroy(&self, machine: &MachineRecord) -> Result<(), RuntimeError>;
    /// Removes what is left on the host of machines not in `live` (start-up clean-up).
    async fn sweep(&self, _live: &std::collections::HashSet<String>) {}
    /// Start-up is settled (every running machine adopted): drop what no machine uses.
    async fn settled(&self) {}
    /// The daemon is stopping (machines keep running): release what only the daemon used.
    async fn shut_down(&self) {}
    /// Re-attaches to a machine that was running when the daemon last stopped. When it still
    /// runs, its later exit is reported as usual; when it ended while the daemon was down, how
    /// it ended (Pilot's exit report) comes back so the exit policy applies to it.
    async fn adopt(&self, machine: &MachineRecord) -> Adoption;
    /// Freezes (`true`) or thaws a running machine.
    async fn set_frozen(&self, machine: &MachineRecord, frozen: bool) -> Result<(), RuntimeError>;
    /// Sends `signal` to the machine's containers.
    async fn signal(&self, machine: &MachineRecord, signal: Signal) -> Result<(), RuntimeError>;
    /// Starts an interactive command in a running machine (`attach`); the returned stream
    /// carries the console frames both ways (docs/pilot-protocol.md).
    async fn attach(
        &self,
        _machine: &MachineRecord,
        _request: hangar_pilot::protocol::Request,
    ) -> Result<ConsoleConnection, RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }
    /// The machine's logs dir (its live one, else the copy kept after a destroy), opened
    /// without following links; `None` when it has none. Called on the blocking pool.
    fn open_logs(&self, _machine_id: &str) -> Option<std::os::fd::OwnedFd> {
        None
    }
    /// Runs a command in a container of a running machine and collects its output.
    async fn exec(
        &self,
        machine: &MachineRecord,
        exec: ExecSpec,
    ) -> Result<ExecResponse, RuntimeError>;
    /// The processes of a running machine.
    async fn ps(&self, machine: &MachineRecord) -> Result<Vec<ProcessStat>, RuntimeError>;
    /// (limit, usage) of a running machine's memory, in bytes.
    async fn memory(&self, _machine: &MachineRecord) -> Result<(u64, u64), RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }
    /// Sets a running machine's memory limit (its balloon), in bytes.
    async fn set_memory_limit(
        &self,
        _machine: &MachineRecord,
        _bytes: u64,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }
    /// Reclaims up to `bytes` of a running machine's memory; returns what was freed.
    async fn reclaim_memory(
        &self,
        _machine: &MachineRecord,
        _bytes: u64,
    ) -> Result<u64, RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }
    /// Whether `run` is still the machine's current run: an exit reported for an earlier one
    /// (replaced by a start while the report waited) must not count against the new one.
    fn is_current_run(&self, machine_id: &str, run: i64) -> bool;
    /// What a running machine uses now, from its cgroup.
    async fn stats(&self, _machine: &MachineRecord) -> Result<MachineStats, RuntimeError> {
        Err(RuntimeError::NotRunning(
            "the machine is not running".into(),
        ))
    }
    /// Where volume `volume_id` of machine `machine_id` is mounted on the host while the
    /// machine runs (usage, online extend, consistent snapshots), if it is.
    fn volume_mountpoint(&self, _machine_id: &str, _volume_id: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// What an image reference resolves to locally (digest, labels), when it is stored here;
    /// `digest`, when given, is the one the machine is pinned to.
    async fn image_ref(&self, image: &str, digest: Option<&str>) -> Option<hangar_api::ImageRef>;
    /// Live status of each container, `None` when the machine is not running here.
    async fn containers(&self, machine: &MachineRecord) -> Option<Vec<ContainerView>>;
}

/// A command to run inside a machine.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: Option<String>,
    pub timeout: Duration,
}

/// A container as the machine JSON shows it, with its health checks.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub status: ContainerStatus,
    pub checks: Vec<CheckStatus>,
}

/// What a runtime reports on its own, as it happens.
#[derive(Debug, Clone)]
pub enum RuntimeEvent {
    /// The machine's main process (Pilot) ended.
    Exited(MachineExit),
    /// Something happened to one container: started, exited, restarting, failed, health.
    Container(ContainerEvent),
}

#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub app: String,
    pub machine_id: String,
    pub instance_id: String,
    /// `started`, `exited`, `restarting`, `failed` or `health`.
    pub kind: String,
    /// Unix milliseconds.
    pub at: i64,
    /// The details: container, exit_code, signal, restart_count, health, message.
    pub detail: serde_json::Value,
}

/// How a machine's main process ended, reported by the runtime when it happens on its own
/// (and also after a requested stop).
#[derive(Debug, Clone)]
pub struct MachineExit {
    pub app: String,
    pub machine_id: String,
    pub instance_id: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Unix milliseconds.
    pub exited_at: i64,
    /// Which run of the machine ended (the runtime's own id for one boot).
    pub run: i64,
}

/// An attached console: framed bytes both ways. Bytes Pilot sent right after its reply stay
/// in the buffer and are read first.
pub type ConsoleConnection = tokio::io::BufReader<tokio::net::UnixStream>;

/// What [`Runtime::adopt`] found.
#[derive(Debug, Clone)]
pub enum Adoption {
    /// The machine still runs and is watched again.
    Running,
    /// Nothing runs; the exit it reported while the daemon was away, if any.
    Gone(Option<MachineExit>),
}

/// The runtime of a daemon with no machine backend: it stores machines but never runs them.
pub struct NoRuntime;

#[async_trait]
impl Runtime for NoRuntime {
    fn preflight(&self, _config: &MachineConfig) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }

    async fn start(&self, _machine: &MachineRecord, _: &SecretValues) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }

    async fn stop(
        &self,
        _: &MachineRecord,
        _: Signal,
        _: Duration,
    ) -> Result<Option<MachineExit>, RuntimeError> {
        // Nothing ever ran, so there is nothing to stop.
        Ok(None)
    }

    async fn destroy(&self, _machine: &MachineRecord) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn adopt(&self, _machine: &MachineRecord) -> Adoption {
        Adoption::Gone(None)
    }

    async fn set_frozen(&self, _: &MachineRecord, _: bool) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }

    async fn signal(&self, _: &MachineRecord, _: Signal) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }

    async fn exec(&self, _: &MachineRecord, _: ExecSpec) -> Result<ExecResponse, RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }

    async fn ps(&self, _: &MachineRecord) -> Result<Vec<ProcessStat>, RuntimeError> {
        Err(RuntimeError::NotConfigured)
    }

    async fn containers(&self, _: &MachineRecord) -> Option<Vec<ContainerView>> {
        None
    }

    async fn image_ref(&self, _: &str, _: Option<&str>) -> Option<hangar_api::ImageRef> {
        None
    }

    fn is_current_run(&self, _: &str, _: i64) -> bool {
        true
    }
}
