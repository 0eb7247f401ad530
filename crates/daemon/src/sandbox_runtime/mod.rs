//! The namespace sandbox runtime: each machine is a user/pid/mount/uts/ipc/net/cgroup namespace
//! set with Pilot as PID 1, built by a fresh `hangar sandbox-spawn` helper process (never by
//! unsharing inside this multi-threaded daemon). Container root filesystems are overlays of the
//! shared image layers, idmapped so that root-owned layer files belong to the machine's root.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use hangar_api::{MachineConfig, Signal};
use hangar_image::{ImageRecord, ImageStore, PullOptions, Reference, RootfsSpec};
use hangar_pilot::protocol::{ErrorKind, Reply, Request, RequestLine};
use hangar_pilot::spec::{
    ContainerSpec, ContainerState, ContainerStatus, PilotExit, PilotSpec, CONTROL_SOCKET,
    EXIT_FILE, SPEC_FILE,
};
use hangar_sandbox::cgroup::{Hierarchy, MachineCgroup};
use hangar_sandbox::plan::{MountPlan, SizedLayer, SpawnPlan, VolumeMountPlan};
use hangar_sandbox::SandboxSpec;
use hangar_store::MachineRecord;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::container_plan::{container_configs, container_process, prepare_volumes};
use crate::runtime::{
    Adoption, ContainerEvent, ContainerView, ExecSpec, MachineExit, Runtime, RuntimeError,
    RuntimeEvent, SecretValues,
};

use crate::uid_slots::{UID_BASE_START, UID_RANGE};

mod host;
mod launch;
mod pilot;
mod warm;

pub use warm::DEFAULT_WARM_SANDBOXES;

use host::*;
use pilot::*;
const LOG_MAX_BYTES: u64 = 16 << 20;

/// A machine's process limit (`pids.max`), by its memory: 4 per MiB, at least 1,024 and at most
/// 32,768. A 256 MB machine gets 1,024, a 2 GB one 8,192: far above what real workloads of that
/// size run, low enough that a fork bomb stays small and quick to kill (docs/decisions.md).
pub(crate) fn pids_limit(memory_mb: u64) -> u64 {
    memory_mb.saturating_mul(4).clamp(1024, 32768)
}
const RUNTIME_FILE: &str = "runtime.json";
const SPAWN_FILE: &str = "spawn.json";
/// Pilot's own executable, looked for beside the daemon's.
const PILOT_EXE: &str = "hangar-pilot";
const PILOT_LOG: &str = "pilot.log";
/// Pilot's writable dir inside a machine dir.
pub const RUN_DIR: &str = "run";
/// How long Pilot has to answer a control request (exec adds its own timeout).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest control reply accepted (exec output is capped at 1 MiB per stream by Pilot).
const CONTROL_REPLY_MAX: u64 = 16 << 20;

/// In a container dir: the disk image of a sized writable layer, and where it is mounted.
const SIZED_LAYER_IMAGE: &str = "rootfs.ext4";
const SIZED_LAYER_DIR: &str = "layer";

/// `rootfs.size_gb` when set (0 means unset, as flyctl's `--rootfs-size 0`).
fn rootfs_size_gb(config: &MachineConfig) -> Option<u64> {
    hangar_api::spec::MachineSpec::from_config(config).rootfs_size_gb
}

/// Kept in the machine dir so a restarted daemon can find the machine again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RuntimeState {
    instance_id: String,
    pid: i32,
    /// Process start time (clock ticks since boot), to tell a recycled pid from Pilot.
    start_time: u64,
    slot: u32,
    /// The run's veth and bridge; `None` when networking is off.
    #[serde(default)]
    net: Option<hangar_net::MachineNet>,
}

struct Running {
    state: RuntimeState,
    exited: watch::Receiver<Option<MachineExit>>,
    /// Set by stop() and destroy(): the exit that follows was asked for, not a crash.
    stopping: bool,
    /// Pilot's pidfd (shared with the exit watcher): a signal through it can never reach a
    /// process that took Pilot's pid after it was reaped.
    pidfd: Arc<OwnedFd>,
}

pub struct SandboxRuntime {
    /// The disk machines' files are on (`MAJ:MIN`), for IO accounting on cgroup v1.
    io_devices: Vec<String>,
    machines_dir: PathBuf,
    images: Arc<ImageStore>,
    pull: PullOptions,
    hierarchy: Hierarchy,
    exe: PathBuf,
    /// `hangar-pilot` beside the daemon's executable, if it is there (else `hangar pilot`).
    pilot_exe: Option<PathBuf>,
    /// uid-range slots in use, with the machine (or warm sandbox) holding each.
    slots: Arc<crate::uid_slots::Slots>,
    /// Sandboxes made ahead for the next starts; `None` when off or not possible here.
    pool: Option<Arc<warm::WarmPool>>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    exits: mpsc::UnboundedSender<RuntimeEvent>,
    /// How long a destroyed machine's logs are kept (crate::log_archive).
    log_retention: Duration,
    /// Bridges and veths; `None` runs machines with loopback only (`--network off`).
    net: Option<Arc<crate::host_network::HostNetwork>>,
    /// Persistent volumes' images.
    volumes: hangar_volumes::VolumeDir,
    /// Destroyed machines whose host resources are still being released (after the answer);
    /// shutdown waits for them.
    teardowns: tokio_util::task::TaskTracker,
    /// This runtime, for the releases that outlive a destroy call.
    me: Weak<SandboxRuntime>,
}

/// How long a killed machine's Pilot gets to end before it is taken for frozen (on cgroup v1
/// a suspended machine's tasks die only once thawed); ending takes a few milliseconds otherwise.
const KILLED_EXIT_GRACE: Duration = Duration::from_millis(200);
/// How long shutdown waits for destroyed machines' releases (a start-up sweep finishes any).
const TEARDOWN_SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// Pauses before a failed release is tried again (a cgroup still busy, a mount still in use).
const RELEASE_RETRIES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

pub(crate) use crate::runtime::failed;

/// Reaps the daemon's pre-forked spawner if it dies (starts then execute their helpers).
pub fn watch_spawner() {
    let Some(spawner) = hangar_sandbox::spawner::get() else {
        return;
    };
    let pidfd = match pidfd_open(spawner.pid()) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the pre-forked spawner");
            return;
        }
    };
    tokio::spawn(async move {
        let status = wait_pidfd(pidfd).await;
        tracing::warn!(
            ?status,
            "the pre-forked spawner ended; machine starts now execute their sandbox helper"
        );
        // Its helpers still running (a warm sandbox being made, a cgroup reaper) are the
        // daemon's now, as their subreaper: reaped here when they end.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for pid in orphaned_helpers() {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
        }
    });
}

/// Ended helpers of a dead spawner left to the daemon: zombie children named `hangar-spawner`.
fn orphaned_helpers() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            let (state, ppid) = (fields.next()?, fields.next()?);
            (comm == "hangar-spawner" && state == "Z" && ppid == me).then_some(pid)
        })
        .collect()
}

/// How the runtime runs machines, beside where their images come from.
pub struct RuntimeSettings {
    /// How long a destroyed machine's logs are kept (crate::log_archive).
    pub log_retention: Duration,
    /// Bridges and veths; `None` runs machines with loopback only (`--network off`).
    pub net: Option<Arc<crate::host_network::HostNetwork>>,
    /// Persistent volumes' images.
    pub volumes: hangar_volumes::VolumeDir,
    /// Sandboxes kept made ahead (`--warm-sandboxes`).
    pub warm_sandboxes: usize,
}

impl SandboxRuntime {
    /// Checks the host can run sandboxes (a usable cgroup hierarchy) and sets up the dirs.
    pub fn new(
        data_dir: &Path,
        images: Arc<ImageStore>,
        pull: PullOptions,
        exits: mpsc::UnboundedSender<RuntimeEvent>,
        settings: RuntimeSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let RuntimeSettings {
            log_retention,
            net,
            volumes,
            warm_sandboxes,
        } = settings;
        use std::os::unix::fs::PermissionsExt;
        let hierarchy = Hierarchy::detect(Path::new("/sys/fs/cgroup"))?;
        let machines_dir = data_dir.join("machines");
        std::fs::create_dir_all(&machines_dir)?;
        host::mark_top_dir(&machines_dir);
        host::make_trash_bin(&machines_dir)?;
        check_traversable(data_dir)?;
        // Machine roots are unprivileged host uids; they must be able to reach their own
        // machine dir (but not list anything above it).
        for dir in [data_dir, machines_dir.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
        let claims =
            crate::uid_slots::SlotClaims::open(Path::new(crate::uid_slots::DEFAULT_DIR), data_dir)?;
        let swept = claims.sweep_abandoned();
        if swept > 0 {
            tracing::info!(
                swept,
                "freed uid ranges claimed by daemons whose data dir is gone"
            );
        }
        let exe = std::env::current_exe()?;
        let io_devices: Vec<String> = hangar_sandbox::cgroup::whole_disk_of(&machines_dir)
            .into_iter()
            .collect();
        let slots = Arc::new(crate::uid_slots::Slots::new(claims));
        let pilot_exe = Some(exe.with_file_name(PILOT_EXE)).filter(|p| p.is_file());
        let pool = warm::WarmPool::new(warm::PoolSetup {
            target: warm_sandboxes,
            dir: data_dir.join("warm"),
            hierarchy: hierarchy.clone(),
            slots: slots.clone(),
            exe: exe.clone(),
            pilot_exe: pilot_exe.clone(),
            io_devices: io_devices.clone(),
            network: net.is_some(),
            machines_dir: machines_dir.clone(),
        })?;
        Ok(Arc::new_cyclic(|me| Self {
            io_devices,
            machines_dir,
            images,
            pull,
            hierarchy,
            pilot_exe,
            exe,
            slots,
            pool,
            running: Arc::new(Mutex::new(HashMap::new())),
            exits,
            log_retention,
            net,
            volumes,
            teardowns: tokio_util::task::TaskTracker::new(),
            me: me.clone(),
        }))
    }

    /// Pilot's own dir inside the machine dir: the only part the machine's uid may write
    /// (control socket, logs, exit report). The machine dir above it stays root's.
    fn run_dir(&self, id: &str) -> PathBuf {
        self.machine_dir(id).join(RUN_DIR)
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.machines_dir.join(id)
    }

    fn cgroup(&self, id: &str) -> MachineCgroup {
        MachineCgroup::new(self.hierarchy.clone(), format!("hangar/{id}"))
    }

    /// A uid-range slot for the machine, claimed host-wide (crate::uid_slots) so that another
    /// daemon on this host never hands out the same range.
    fn alloc_slot(&self, machine_id: &str) -> Result<u32, RuntimeError> {
        self.slots
            .alloc(machine_id)
            .map_err(|e| failed(format!("claiming a uid range: {e}")))?
            .ok_or_else(|| failed("no free uid range for another machine on this host"))
    }

    /// The machine's uid range: a warm sandbox's (taken from the pool when the machine can
    /// use one), or a new one.
    async fn slot_for(&self, m: &MachineRecord) -> Result<(u32, Option<warm::Warm>), RuntimeError> {
        let warm = match &self.pool {
            Some(pool) if warm::poolable(&m.config) => pool.take_alive().await.map(|w| (pool, w)),
            _ => None,
        };
        if let Some((pool, warm)) = warm {
            match self.slots.transfer(warm.slot, &warm.name, &m.id) {
                Ok(true) => return Ok((warm.slot, Some(warm))),
                outcome => {
                    tracing::warn!(machine = %m.id, ?outcome, "a warm sandbox's uid range could not be handed over");
                    pool.discard(warm, true).await;
                }
            }
        }
        Ok((self.alloc_slot(&m.id)?, None))
    }

    /// Frees `slot` if `machine_id` still holds it (freeing twice never frees another's).
    fn free_slot(&self, slot: u32, machine_id: &str) {
        self.slots.free(slot, machine_id);
    }

    /// Dooms every process of a running machine at once, without waiting for them to end:
    /// SIGKILL to Pilot, the init of the machine's pid namespace, takes the namespace's other
    /// processes (every container and exec session) down with it. Asking Pilot to stop and
    /// waiting for it to end took ~7 ms of a destroy here, most of it the kernel tearing down
    /// its namespaces.
    fn kill(&self, id: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.get_mut(id) {
            r.stopping = true;
            if r.exited.borrow().is_none() {
                if let Err(e) =
                    rustix::process::pidfd_send_signal(&*r.pidfd, rustix::process::Signal::KILL)
                {
                    tracing::debug!(machine = %id, error = %e, "killing pilot");
                }
            }
        }
    }

    /// Moves a destroyed machine's logs dir into the log archive (crate::log_archive).
    async fn archive_logs(&self, id: &str) {
        let live = self.run_dir(id).join("logs");
        let archive = crate::log_archive::archive_dir(&self.machines_dir);
        let (id, keep) = (id.to_string(), self.log_retention);
        let _ = tokio::task::spawn_blocking(move || {
            crate::log_archive::archive(&live, &archive, &id, keep)
        })
        .await;
    }

    /// Releases everything a destroyed (and [killed](Self::kill)) machine holds on the host:
    /// its processes once ended, mounts, cgroup, uid range and dirs; its logs are archived.
    async fn release(&self, m: &MachineRecord) -> Result<(), RuntimeError> {
        let exited = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&m.id)
            .map(|r| r.exited.clone());
        if let Some(mut exited) = exited {
            let ended = |e: &Option<MachineExit>| e.is_some();
            if tokio::time::timeout(KILLED_EXIT_GRACE, exited.wait_for(ended))
                .await
                .is_err()
            {
                // Frozen (suspended): the kill lands once thawed. Whatever still does not
                // end, the cgroup's kill in cleanup() ends.
                let _ = self.set_frozen(m, false).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), exited.wait_for(ended)).await;
            }
        }
        self.cleanup(&m.id, false).await?;
        let dir = self.machine_dir(&m.id);
        // The logs outlive the machine (crate::log_archive); everything else goes now.
        self.archive_logs(&m.id).await;
        // Gone from its place now (a machine dir's removal took 1–6 ms here), removed by the
        // trash collector.
        match to_trash(&self.machines_dir, &dir) {
            Ok(trash) => {
                empty_trash(trash.into_iter().collect());
                Ok(())
            }
            Err(_) => remove_dir(dir).await,
        }
    }
}

#[async_trait]
impl Runtime for SandboxRuntime {
    fn preflight(&self, config: &MachineConfig) -> Result<(), RuntimeError> {
        for c in container_configs(config) {
            Reference::parse(&c.image).map_err(|e| RuntimeError::Image(e.to_string()))?;
        }
        Ok(())
    }

    fn volume_mountpoint(&self, machine_id: &str, volume_id: &str) -> Option<PathBuf> {
        if !hangar_api::validate::is_dir_safe_name(volume_id) {
            return None;
        }
        let path = self
            .machine_dir(machine_id)
            .join("volumes")
            .join(format!("{}{volume_id}", host::PERSISTENT_VOLUME_PREFIX));
        host::is_mountpoint(&path).then_some(path)
    }

    async fn start(&self, m: &MachineRecord, secrets: &SecretValues) -> Result<(), RuntimeError> {
        // The pool refills once this start has ended (and starts have been quiet since).
        let _in_flight = self.pool.as_ref().map(|p| p.start_begins());
        // Leftovers of an earlier run (a crash, a kill) go first.
        self.cleanup(&m.id, keep_rootfs(&m.config)).await?;
        let (slot, warm) = self.slot_for(m).await?;
        // Frees the slot if this start fails or unwinds (a panic) before the run owns it.
        let mut slot_guard = SlotGuard {
            runtime: self,
            slot: Some(slot),
            machine_id: &m.id,
        };
        let keep = keep_rootfs(&m.config);
        let mut launched = self.launch(m, slot, secrets, warm).await;
        if let Err(launch::LaunchError {
            take_over: true,
            error,
        }) = &launched
        {
            // A warm sandbox that could not be taken over (its cgroup or veth gone under it,
            // …) was let go; what it left under the machine's name goes, and the start builds
            // its sandbox as it would without a pool, in the same uid range (the machine's
            // now; nothing of the sandbox runs in it any more).
            tracing::warn!(machine = %m.id, %error, "taking over a warm sandbox failed; building the sandbox");
            self.cleanup(&m.id, keep).await?;
            launched = self.launch(m, slot, secrets, None).await;
        }
        let launched = match launched {
            Ok(state) => write_json(&self.machine_dir(&m.id).join(RUNTIME_FILE), &state)
                .and_then(|()| self.watch_exit(m, &state)),
            Err(e) => Err(e.error),
        };
        let mut exited = match launched {
            Ok(exited) => exited,
            Err(e) => {
                // Kill whatever started; a persistent rootfs survives a failed start.
                let _ = self.cleanup(&m.id, keep).await;
                return Err(e);
            }
        };
        // The run holds the slot now; cleanup() frees it.
        slot_guard.slot = None;
        self.watch_containers(m, 0);
        // Containers that wait for another to be healthy may wait for long (or for ever, if
        // it never is): the machine is started without them, as on Fly; they show as waiting.
        let patient: std::collections::HashSet<String> = container_configs(&m.config)
            .into_iter()
            .filter(|c| {
                c.depends_on
                    .iter()
                    .any(|d| d.condition == hangar_pilot::spec::Condition::Healthy)
            })
            .map(|c| c.name)
            .collect();
        if let Err(e) = self.wait_ready(&m.id, &mut exited, &patient).await {
            let _ = self.stop(m, Signal::SIGKILL, Duration::ZERO).await;
            return Err(e);
        }
        Ok(())
    }

    async fn stop(
        &self,
        m: &MachineRecord,
        signal: Signal,
        timeout: Duration,
    ) -> Result<Option<MachineExit>, RuntimeError> {
        let exited = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&m.id)
            .map(|r| {
                r.stopping = true;
                r.exited.clone()
            });
        let mut outcome = None;
        if let Some(mut exited) = exited {
            if exited.borrow().is_none() {
                // A suspended (frozen) Pilot could not answer; thaw it first.
                let _ = self.set_frozen(m, false).await;
                let req = Request::Stop {
                    signal: Some(signal.number()),
                    timeout_ms: Some(timeout.as_millis() as u64),
                };
                let asked = self.control(&m.id, &req).await.is_ok();
                let grace = if asked {
                    timeout.saturating_add(Duration::from_secs(2))
                } else {
                    Duration::ZERO
                };
                if tokio::time::timeout(grace, exited.wait_for(|e| e.is_some()))
                    .await
                    .is_err()
                {
                    // Pilot did not finish in time: kill the whole machine.
                    let cgroup = self.cgroup(&m.id);
                    tokio::task::spawn_blocking(move || cgroup.kill_all())
                        .await
                        .map_err(failed)?
                        .map_err(failed)?;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        exited.wait_for(|e| e.is_some()),
                    )
                    .await;
                }
            }
            // Also an exit that happened just before this stop: its watcher's report is
            // dropped once the run is cleaned up, so the stop records it.
            outcome = exited.borrow().clone();
        }
        self.cleanup(&m.id, keep_rootfs(&m.config)).await?;
        Ok(outcome)
    }

    async fn destroy(&self, m: &MachineRecord) -> Result<(), RuntimeError> {
        self.kill(&m.id);
        // A persistent volume is another machine's to mount once the destroy is answered: its
        // mount must be gone by then. Everything else of the machine is its own (its dirs,
        // cgroup, uid range and veth are never handed out while it holds them), so it is
        // released after the answer; a start-up sweep finishes what a crash interrupted.
        // Once shutdown waits for the releases, a destroy (one still running, an
        // auto_destroy) releases before it answers, so that nothing is cut off.
        let holds_volume = m.config.mounts.as_ref().is_some_and(|v| !v.is_empty());
        match self.me.upgrade() {
            Some(me) if !holds_volume && !self.teardowns.is_closed() => {
                let m = m.clone();
                self.teardowns.spawn(async move {
                    let mut retries = RELEASE_RETRIES.iter();
                    while let Err(error) = me.release(&m).await {
                        let Some(pause) = retries.next() else {
                            tracing::error!(machine = %m.id, %error, "releasing a destroyed machine's host resources failed; the next start-up finishes it");
                            return;
                        };
                        tracing::warn!(machine = %m.id, %error, "releasing a destroyed machine's host resources failed; trying again in {pause:?}");
                        tokio::time::sleep(*pause).await;
                    }
                });
                Ok(())
            }
            _ => self.release(m).await,
        }
    }

    async fn sweep(&self, live: &std::collections::HashSet<String>) {
        // Dirs moved aside to be removed after an answer, left by a daemon that stopped first.
        let machines_dir = self.machines_dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_trash_now(&machines_dir)).await;
        let Ok(rd) = std::fs::read_dir(&self.machines_dir) else {
            return;
        };
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&id) || id.starts_with(TRASH_PREFIX) {
                continue;
            }
            tracing::info!(machine = %id, "removing what a destroyed machine left behind");
            let _ = self.cleanup(&id, false).await;
            // Its logs are kept as a destroy keeps them (a release cut off by a crash).
            self.archive_logs(&id).await;
            let _ = remove_dir(entry.path()).await;
        }
        // cgroups retired (emptied and moved aside) whose reaper did not finish, by this daemon
        // or another on the host: anyone may remove those. Live cgroups of machines that are
        // gone were handled above, through their machine dirs.
        let hierarchy = self.hierarchy.clone();
        let exe = self.exe.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let dead = hangar_sandbox::cgroup::dead_dirs(&hierarchy, Path::new("hangar"));
            reap_cgroups(&exe, dead);
        })
        .await;
        // uid ranges this daemon claimed for machines that are gone.
        for (slot, machine) in self.slots.claims.owned() {
            if !live.contains(&machine) && !self.machine_dir(&machine).exists() {
                self.slots.claims.release(slot, &machine);
            }
        }
    }

    async fn adopt(&self, m: &MachineRecord) -> Adoption {
        let dir = self.machine_dir(&m.id);
        let state = read_state(&dir);
        if let Some(s) = &state {
            self.slots.hold(s.slot, &m.id);
            // Claims written by a daemon from before host-wide claims, or lost with /run.
            if !self.slots.claims.claim(s.slot, &m.id).unwrap_or(false) {
                tracing::error!(machine = %m.id, slot = s.slot, "this machine's uid range is claimed by another daemon on this host");
            }
        }
        let alive = state.as_ref().is_some_and(|s| {
            s.instance_id == m.instance_id && start_time(s.pid).is_some_and(|t| t == s.start_time)
        });
        match state {
            Some(state) if alive => {
                if let (Some(host), Some(net)) = (&self.net, &state.net) {
                    host.adopt(net);
                }
                if self.watch_exit(m, &state).is_err() {
                    return Adoption::Gone(None);
                }
                // Re-adopted after a daemon restart: the earlier events were recorded then.
                self.watch_containers(m, now_ms());
                Adoption::Running
            }
            state => {
                // This version's run ended while the daemon was away: Pilot's report says how.
                let exit = state
                    .filter(|s| s.instance_id == m.instance_id)
                    .and_then(|s| {
                        let report = read_exit_report(&self.run_dir(&m.id))?;
                        Some(MachineExit {
                            app: m.app.clone(),
                            machine_id: m.id.clone(),
                            instance_id: m.instance_id.clone(),
                            exit_code: report.exit_code,
                            signal: report.signal,
                            oom_killed: self.cgroup(&m.id).oom_kills().unwrap_or(0) > 0,
                            exited_at: now_ms(),
                            run: i64::from(s.pid),
                        })
                    });
                // Whatever is left of it (processes, mounts, cgroup) goes.
                let _ = self.cleanup(&m.id, keep_rootfs(&m.config)).await;
                Adoption::Gone(exit)
            }
        }
    }

    async fn settled(&self) {
        if let Some(net) = self.net.clone() {
            match tokio::task::spawn_blocking(move || net.sweep()).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "sweeping network devices failed"),
                Err(e) => tracing::warn!(error = %e, "sweeping network devices failed"),
                Ok(Ok(())) => {}
            }
        }
        // After the devices' sweep: a warm sandbox's spare veth is no machine's yet.
        if let Some(pool) = &self.pool {
            pool.sweep().await;
            pool.fill();
            pool.keep_size();
        }
    }

    async fn shut_down(&self) {
        self.teardowns.close();
        if tokio::time::timeout(TEARDOWN_SHUTDOWN_WAIT, self.teardowns.wait())
            .await
            .is_err()
        {
            tracing::warn!("destroyed machines still being released at shutdown; the next start-up finishes them");
        }
        if let Some(pool) = &self.pool {
            pool.shut_down().await;
        }
        // What waits in the trash goes now, not at the next start: a container's writable
        // layer may hold the files its secrets were written to.
        let machines_dir = self.machines_dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_trash_now(&machines_dir)).await;
        if let Some(net) = self.net.clone() {
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || net.shut_down()).await {
                tracing::warn!(error = %e, "removing unused network devices failed");
            }
        }
    }

    async fn set_frozen(&self, m: &MachineRecord, frozen: bool) -> Result<(), RuntimeError> {
        let cgroup = self.cgroup(&m.id);
        tokio::task::spawn_blocking(move || cgroup.set_frozen(frozen))
            .await
            .map_err(failed)?
            .map_err(failed)
    }

    async fn exec(
        &self,
        m: &MachineRecord,
        exec: ExecSpec,
    ) -> Result<hangar_api::ExecResponse, RuntimeError> {
        let req = Request::Exec {
            container: exec.container,
            command: exec.command,
            stdin: exec.stdin,
            timeout_ms: Some(exec.timeout.as_millis() as u64),
        };
        let Reply::Exec { result: r } = self.control(&m.id, &req).await? else {
            return Err(failed("pilot sent no exec result"));
        };
        Ok(hangar_api::ExecResponse {
            exit_code: i64::from(r.exit_code),
            exit_signal: i64::from(r.exit_signal),
            stdout: r.stdout,
            stderr: r.stderr,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
        })
    }

    fn open_logs(&self, machine_id: &str) -> Option<OwnedFd> {
        use nix::fcntl::OFlag;
        // The run dir belongs to the machine's uid: never follow a link planted there.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = |p: &Path| nix::fcntl::open(p, flags, nix::sys::stat::Mode::empty()).ok();
        open(&self.run_dir(machine_id).join("logs"))
            .or_else(|| open(&crate::log_archive::archive_dir(&self.machines_dir).join(machine_id)))
    }

    async fn attach(
        &self,
        m: &MachineRecord,
        request: Request,
    ) -> Result<crate::runtime::ConsoleConnection, RuntimeError> {
        let path = self.run_dir(&m.id).join(CONTROL_SOCKET);
        let stream = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
            RuntimeError::NotRunning(format!("the machine's Pilot is not reachable: {e}"))
        })?;
        // Buffered for the reply line; bytes Pilot sends right after it stay in the buffer.
        let mut pilot = BufReader::new(stream);
        let line = RequestLine::new(request).to_line();
        pilot.write_all(&line).await.map_err(failed)?;
        let mut reply = String::new();
        tokio::time::timeout(CONTROL_TIMEOUT, pilot.read_line(&mut reply))
            .await
            .map_err(|_| failed("pilot did not answer the attach"))?
            .map_err(failed)?;
        match Reply::parse(reply.trim()).map_err(failed)? {
            (_, Reply::Error { kind, message }) => Err(pilot_error(kind, message)),
            _ => Ok(pilot),
        }
    }

    async fn ps(&self, m: &MachineRecord) -> Result<Vec<hangar_api::ProcessStat>, RuntimeError> {
        let Reply::Ps { processes } = self.control(&m.id, &Request::Ps).await? else {
            return Err(failed("pilot sent no process list"));
        };
        Ok(processes
            .into_iter()
            .map(|p| hangar_api::ProcessStat {
                pid: p.pid,
                stime: 0,
                rtime: p.cpu,
                command: p.command,
                directory: p.directory,
                cpu: p.cpu,
                rss: p.rss,
                listen_sockets: p
                    .listen_sockets
                    .into_iter()
                    .map(|(proto, address)| hangar_api::ListenSocket { proto, address })
                    .collect(),
                container: Some(p.container),
            })
            .collect())
    }

    fn is_current_run(&self, machine_id: &str, run: i64) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(machine_id)
            .is_some_and(|r| i64::from(r.state.pid) == run)
    }

    async fn image_ref(&self, image: &str, digest: Option<&str>) -> Option<hangar_api::ImageRef> {
        let reference = Reference::parse(image).ok()?;
        let store = self.images.clone();
        let name = digest.map_or_else(|| reference.to_string(), str::to_string);
        let details = tokio::task::spawn_blocking(move || store.inspect(&name))
            .await
            .ok()?
            .ok()?;
        Some(hangar_api::ImageRef {
            registry: reference.registry,
            repository: reference.repository,
            tag: reference.tag.unwrap_or_default(),
            digest: details.record.manifest_digest.to_string(),
            labels: details.config.labels,
        })
    }

    async fn containers(&self, m: &MachineRecord) -> Option<Vec<ContainerView>> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&m.id);
        if !running {
            return None;
        }
        let Reply::Status { containers } = self.control(&m.id, &Request::Status).await.ok()? else {
            return None;
        };
        let single = m.config.containers.as_ref().is_none_or(|c| c.is_empty());
        Some(
            containers
                .into_iter()
                .map(|c| ContainerView {
                    checks: c
                        .checks
                        .iter()
                        .map(|k| hangar_api::CheckStatus {
                            // Single-image machines and top-level checks show by name, as on
                            // Fly; container checks as `container:check`.
                            name: if single || k.machine_level {
                                k.name.clone()
                            } else {
                                format!("{}:{}", c.name, k.name)
                            },
                            status: k.status.clone(),
                            output: k.output.clone(),
                            updated_at: (k.updated_at > 0)
                                .then(|| crate::clock::rfc3339_ms(k.updated_at)),
                        })
                        .collect(),
                    status: hangar_api::ContainerStatus {
                        name: c.name.clone(),
                        state: serde_json::to_value(c.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        exit_code: c.exit_code.map(i64::from),
                        restart_count: i64::from(c.restart_count),
                        health: c.health.clone(),
                    },
                })
                .collect(),
        )
    }

    async fn fetch_images(
        &self,
        config: &MachineConfig,
    ) -> Result<std::collections::BTreeMap<String, String>, RuntimeError> {
        let mut pins = std::collections::BTreeMap::new();
        for c in container_configs(config) {
            if !pins.contains_key(&c.image) {
                let record = self.ensure_image(&c.image).await?;
                pins.insert(c.image.clone(), record.manifest_digest.to_string());
            }
        }
        Ok(pins)
    }

    async fn memory(&self, m: &MachineRecord) -> Result<(u64, u64), RuntimeError> {
        let cgroup = self.cgroup(&m.id);
        tokio::task::spawn_blocking(move || cgroup.memory())
            .await
            .map_err(failed)?
            .map_err(failed)
    }

    async fn stats(&self, m: &MachineRecord) -> Result<crate::runtime::MachineStats, RuntimeError> {
        let cgroup = self.cgroup(&m.id);
        let devices = self.io_devices.clone();
        tokio::task::spawn_blocking(move || {
            let (limit, usage) = cgroup.memory()?;
            let (io_read_bytes, io_write_bytes) = cgroup.io_bytes(&devices)?;
            Ok::<_, hangar_sandbox::cgroup::CgroupError>(crate::runtime::MachineStats {
                cpu_ns: cgroup.cpu_usage_ns()?,
                memory_bytes: usage,
                memory_limit_bytes: limit,
                pids: cgroup.pids_current()?,
                io_read_bytes,
                io_write_bytes,
            })
        })
        .await
        .map_err(failed)?
        .map_err(failed)
    }

    async fn set_memory_limit(&self, m: &MachineRecord, bytes: u64) -> Result<(), RuntimeError> {
        let cgroup = self.cgroup(&m.id);
        tokio::task::spawn_blocking(move || cgroup.set_memory_limit(bytes))
            .await
            .map_err(failed)?
            .map_err(failed)
    }

    async fn reclaim_memory(&self, m: &MachineRecord, bytes: u64) -> Result<u64, RuntimeError> {
        let cgroup = self.cgroup(&m.id);
        tokio::task::spawn_blocking(move || cgroup.reclaim(bytes))
            .await
            .map_err(failed)?
            .map_err(failed)
    }

    async fn signal(&self, m: &MachineRecord, signal: Signal) -> Result<(), RuntimeError> {
        self.control(
            &m.id,
            &Request::Signal {
                signal: signal.number(),
            },
        )
        .await
        .map(drop)
    }
}

/// A Pilot's failure as the runtime reports it: its kind says which, not its words.
pub(crate) fn pilot_error(kind: ErrorKind, message: String) -> RuntimeError {
    match kind {
        ErrorKind::NoSuchContainer => RuntimeError::NoSuchContainer(message),
        ErrorKind::NotRunning => RuntimeError::NotRunning(message),
        ErrorKind::Invalid | ErrorKind::BadRequest => RuntimeError::Unsupported(message),
        ErrorKind::Version => RuntimeError::Failed(format!(
            "{message}; restart the machine to run the current Pilot"
        )),
        ErrorKind::Failed => RuntimeError::Failed(message),
    }
}

/// Gives a uid slot back unless disarmed: a start that fails or unwinds before its run owns the
/// slot must not lose it.
struct SlotGuard<'a> {
    runtime: &'a SandboxRuntime,
    slot: Option<u32>,
    machine_id: &'a str,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.runtime.free_slot(slot, self.machine_id);
        }
    }
}

/// Largest file the daemon reads back from a machine dir.
const MACHINE_FILE_MAX: u64 = 1 << 20;
