//! The namespace sandbox runtime: each machine is a user/pid/mount/uts/ipc/net/cgroup namespace
//! set with Pilot as PID 1, built by a fresh `hangar sandbox-spawn` helper process (never by
//! unsharing inside this multi-threaded daemon). Container root filesystems are overlays of the
//! shared image layers, idmapped so that root-owned layer files belong to the machine's root.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    RuntimeEvent,
};

use crate::uid_slots::{MAX_SLOTS, UID_BASE_START, UID_RANGE};
const LOG_MAX_BYTES: u64 = 16 << 20;

/// A machine's process limit (`pids.max`), by its memory: 4 per MiB, at least 1,024 and at most
/// 32,768. A 256 MB machine gets 1,024, a 2 GB one 8,192: far above what real workloads of that
/// size run, low enough that a fork bomb stays small and quick to kill (docs/decisions.md).
pub(crate) fn pids_limit(memory_mb: u64) -> u64 {
    memory_mb.saturating_mul(4).clamp(1024, 32768)
}
const RUNTIME_FILE: &str = "runtime.json";
const SPAWN_FILE: &str = "spawn.json";
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
    config
        .rootfs
        .as_ref()
        .and_then(|r| r.size_gb)
        .filter(|gb| *gb > 0)
}

/// Kept in the machine dir so a restarted daemon can find the machine again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RuntimeState {
    instance_id: String,
    pid: i32,
    /// Process start time (clock ticks since boot), to tell a recycled pid from Pilot.
    start_time: u64,
    slot: u32,
}

struct Running {
    state: RuntimeState,
    exited: watch::Receiver<Option<MachineExit>>,
    /// Set by stop(): the exit that follows was asked for and is returned to the caller.
    stopping: bool,
}

pub struct SandboxRuntime {
    machines_dir: PathBuf,
    images: Arc<ImageStore>,
    pull: PullOptions,
    hierarchy: Hierarchy,
    exe: PathBuf,
    /// uid-range slots in use, with the machine holding each.
    slots: Mutex<BTreeMap<u32, String>>,
    /// The same slots, claimed host-wide.
    claims: crate::uid_slots::SlotClaims,
    running: Arc<Mutex<HashMap<String, Running>>>,
    exits: mpsc::UnboundedSender<RuntimeEvent>,
    /// How long a destroyed machine's logs are kept (crate::log_archive).
    log_retention: Duration,
}

pub(crate) use crate::runtime::failed;

impl SandboxRuntime {
    /// Checks the host can run sandboxes (a usable cgroup hierarchy) and sets up the dirs.
    pub fn new(
        data_dir: &Path,
        images: Arc<ImageStore>,
        pull: PullOptions,
        exits: mpsc::UnboundedSender<RuntimeEvent>,
        log_retention: Duration,
    ) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let hierarchy = Hierarchy::detect(Path::new("/sys/fs/cgroup"))?;
        let machines_dir = data_dir.join("machines");
        std::fs::create_dir_all(&machines_dir)?;
        check_traversable(data_dir)?;
        // Machine roots are unprivileged host uids; they must be able to reach their own
        // machine dir (but not list anything above it).
        for dir in [data_dir, machines_dir.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
        Ok(Self {
            machines_dir,
            images,
            pull,
            hierarchy,
            exe: std::env::current_exe()?,
            slots: Mutex::new(BTreeMap::new()),
            claims: crate::uid_slots::SlotClaims::open(
                Path::new(crate::uid_slots::DEFAULT_DIR),
                data_dir,
            )?,
            running: Arc::new(Mutex::new(HashMap::new())),
            exits,
            log_retention,
        })
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
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in (0..MAX_SLOTS).filter(|s| !slots.contains_key(s)) {
            if self
                .claims
                .claim(slot, machine_id)
                .map_err(|e| failed(format!("claiming a uid range: {e}")))?
            {
                slots.insert(slot, machine_id.to_string());
                return Ok(slot);
            }
        }
        Err(failed("no free uid range for another machine on this host"))
    }

    /// Frees `slot` if `machine_id` still holds it (freeing twice never frees another's).
    fn free_slot(&self, slot: u32, machine_id: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.get(&slot).is_some_and(|owner| owner == machine_id) {
            slots.remove(&slot);
            self.claims.release(slot, machine_id);
        }
    }

    /// The exact image a machine was created with (`image` resolved to `digest` then), even if
    /// the tag now names another: found here by digest, or pulled as `repository@digest`.
    async fn ensure_pinned(&self, image: &str, digest: &str) -> Result<ImageRecord, RuntimeError> {
        let store = self.images.clone();
        let d = digest.to_string();
        let found = tokio::task::spawn_blocking(move || store.resolve(&d))
            .await
            .map_err(failed)?;
        match found {
            Ok(rec) => Ok(rec),
            Err(hangar_image::Error::NotFound(_)) => {
                let mut reference =
                    Reference::parse(image).map_err(|e| RuntimeError::Image(e.to_string()))?;
                hangar_image::Digest::parse(digest)
                    .map_err(|e| RuntimeError::Image(e.to_string()))?;
                reference.digest = Some(digest.to_string());
                tracing::info!(%reference, "pulling the machine's pinned image");
                hangar_image::pull(&self.images, &reference, &self.pull)
                    .await
                    .map_err(|e| RuntimeError::Image(format!("pulling {reference}: {e}")))
            }
            Err(e) => Err(RuntimeError::Image(e.to_string())),
        }
    }

    /// Finds an image locally, pulling it when missing.
    async fn ensure_image(&self, image: &str) -> Result<ImageRecord, RuntimeError> {
        let reference = Reference::parse(image).map_err(|e| RuntimeError::Image(e.to_string()))?;
        let store = self.images.clone();
        let name = reference.to_string();
        let found = tokio::task::spawn_blocking(move || store.resolve(&name))
            .await
            .map_err(failed)?;
        match found {
            Ok(rec) => Ok(rec),
            Err(hangar_image::Error::NotFound(_)) => {
                tracing::info!(%reference, "pulling image");
                hangar_image::pull(&self.images, &reference, &self.pull)
                    .await
                    .map_err(|e| RuntimeError::Image(format!("pulling {reference}: {e}")))
            }
            Err(e) => Err(RuntimeError::Image(e.to_string())),
        }
    }

    /// Builds the pilot spec and the mount plan for the machine's current config.
    async fn plan(
        &self,
        m: &MachineRecord,
        dir: &Path,
        uid_base: u32,
    ) -> Result<(PilotSpec, Vec<MountPlan>, Vec<VolumeMountPlan>), RuntimeError> {
        let mut containers = Vec::new();
        let mut mounts = Vec::new();
        let volumes = prepare_volumes(&m.config, dir, uid_base)?;
        // Root filesystems by container, for processes that share the first one's.
        let mut prepared: HashMap<String, (hangar_image::ImageDetails, RootfsSpec)> =
            HashMap::new();
        for c in container_configs(&m.config) {
            // Names become host paths; validation admits only plain ones, checked again here.
            if !hangar_api::validate::is_dir_safe_name(&c.name) {
                return Err(RuntimeError::Image(format!(
                    "invalid container name {:?}",
                    c.name
                )));
            }
            let owner = c.rootfs_of.clone().unwrap_or_else(|| c.name.clone());
            let target = dir.join("containers").join(&owner).join("rootfs");
            let (details, rootfs) = match prepared.get(&owner) {
                Some(shared) => shared.clone(),
                None => {
                    let record = match m.image_digests.get(&c.image) {
                        Some(digest) => self.ensure_pinned(&c.image, digest).await?,
                        None => self.ensure_image(&c.image).await?,
                    };
                    let store = self.images.clone();
                    let cdir = dir.join("containers").join(&c.name);
                    let digest = record.manifest_digest.clone();
                    let size_gb = rootfs_size_gb(&m.config);
                    let sized_cdir = cdir.clone();
                    let (details, rootfs) = tokio::task::spawn_blocking(move || {
                        let details = store.inspect(&digest.to_string())?;
                        let rootfs = match size_gb {
                            // The writable layer lives on the disk image, mounted by the
                            // spawn helper: nothing to create here yet.
                            Some(_) => RootfsSpec {
                                lowerdirs: store.layer_dirs(&digest)?,
                                upperdir: sized_cdir.join(SIZED_LAYER_DIR).join("upper"),
                                workdir: sized_cdir.join(SIZED_LAYER_DIR).join("work"),
                            },
                            None => store.prepare_rootfs(
                                &digest,
                                &sized_cdir,
                                Some((uid_base, uid_base)),
                            )?,
                        };
                        Ok::<_, hangar_image::Error>((details, rootfs))
                    })
                    .await
                    .map_err(failed)?
                    .map_err(|e| RuntimeError::Image(e.to_string()))?;
                    std::fs::create_dir_all(&target).map_err(failed)?;
                    let disk = match size_gb {
                        Some(gb) => {
                            let image = cdir.join(SIZED_LAYER_IMAGE);
                            let layer = cdir.join(SIZED_LAYER_DIR);
                            tokio::task::spawn_blocking(move || {
                                crate::container_plan::ensure_disk_image(
                                    &image,
                                    gb.saturating_mul(1024),
                                    uid_base,
                                )?;
                                std::fs::create_dir_all(&layer).map_err(failed)?;
                                Ok::<_, RuntimeError>(Some(SizedLayer {
                                    image,
                                    target: layer,
                                    owner: uid_base,
                                }))
                            })
                            .await
                            .map_err(failed)??
                        }
                        None => None,
                    };
                    mounts.push(MountPlan {
                        lowerdirs: rootfs.lowerdirs.clone(),
                        upperdir: rootfs.upperdir.clone(),
                        workdir: rootfs.workdir.clone(),
                        target: target.clone(),
                        disk,
                    });
                    prepared.insert(c.name.clone(), (details.clone(), rootfs.clone()));
                    (details, rootfs)
                }
            };
            let mut process = container_process(m, &c, &details.config, &rootfs, &target)?;
            for (volume, path) in &c.mounts {
                let host = volumes
                    .dirs
                    .get(volume)
                    .ok_or_else(|| RuntimeError::Image(format!("unknown volume {volume:?}")))?;
                process.binds.push((host.clone(), path.clone()));
            }
            let stop_signal = c
                .stop_signal
                .or_else(|| {
                    details
                        .config
                        .stop_signal
                        .as_deref()
                        .and_then(|s| Signal::parse(s).ok())
                })
                .unwrap_or(Signal::SIGINT);
            containers.push(ContainerSpec {
                name: c.name.clone(),
                process,
                stop_signal: stop_signal.number(),
                stop_timeout_ms: c.stop_timeout.as_millis() as u64,
                depends_on: c.depends_on.clone(),
                healthchecks: c.healthchecks.clone(),
                restart: c.restart.clone(),
                tty: m.config.init.tty,
                stops_machine: c.stops_machine,
            });
        }
        Ok((
            PilotSpec {
                machine_id: m.id.clone(),
                containers,
                log_max_bytes: LOG_MAX_BYTES,
            },
            mounts,
            volumes.mounts,
        ))
    }

    async fn launch(&self, m: &MachineRecord, slot: u32) -> Result<RuntimeState, RuntimeError> {
        let dir = self.machine_dir(&m.id);
        let run = self.run_dir(&m.id);
        let uid_base = UID_BASE_START + slot * UID_RANGE;
        std::fs::create_dir_all(&run).map_err(failed)?;
        // Only root and this boot's machine (its root's group) may enter the machine dir: it
        // holds the container's writable layer and Pilot's spec (env, file contents).
        restrict_machine_dir(&dir, uid_base).map_err(failed)?;
        // This boot's uid owns the run dir and what earlier boots left there (their logs).
        chown_tree_nofollow(&run, uid_base).map_err(failed)?;
        let _ = std::fs::remove_file(run.join(EXIT_FILE));
        let (pilot_spec, mounts, volume_mounts) = self.plan(m, &dir, uid_base).await?;
        write_private_file(
            &run.join(SPEC_FILE),
            &serde_json::to_vec(&pilot_spec).map_err(failed)?,
            uid_base,
        )?;
        let guest = m.config.guest.clone().unwrap_or_default();
        let memory_bytes = (guest.memory_mb.max(1) as u64) << 20;
        let swap_bytes = (m.config.init.swap_size_mb.unwrap_or(0).max(0) as u64) << 20;
        let plan = SpawnPlan {
            sandbox: SandboxSpec {
                machine_id: m.id.clone(),
                machine_dir: dir.clone(),
                uid_base,
                uid_count: UID_RANGE,
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                cgroup_path: PathBuf::from(format!("hangar/{}", m.id)),
                cpus: guest.cpus.max(1) as u32,
                memory_bytes,
                swap_bytes,
                pids: pids_limit(guest.memory_mb.max(1) as u64),
                hostname: crate::container_plan::hostname(&m.config, &m.id),
                pilot_args: vec![
                    "pilot".into(),
                    "--machine-dir".into(),
                    run.display().to_string(),
                ],
                pilot_log: run.join(PILOT_LOG),
            },
            mounts,
            volume_mounts,
        };
        write_json(&dir.join(SPAWN_FILE), &plan)?;
        let out = tokio::process::Command::new(&self.exe)
            .arg("sandbox-spawn")
            .arg(dir.join(SPAWN_FILE))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| failed(format!("running the sandbox helper: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "building the sandbox failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| failed("the sandbox helper did not report Pilot's pid"))?;
        Ok(RuntimeState {
            instance_id: m.instance_id.clone(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            slot,
        })
    }

    /// Watches Pilot's exit through a pidfd and reports it; returns the receiver for stop().
    fn watch_exit(
        &self,
        m: &MachineRecord,
        state: &RuntimeState,
    ) -> Result<watch::Receiver<Option<MachineExit>>, RuntimeError> {
        let pidfd = pidfd_open(state.pid).map_err(|e| failed(format!("pidfd_open: {e}")))?;
        let (tx, rx) = watch::channel(None);
        // Registered before the watcher runs, so an instant exit still counts as current.
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                m.id.clone(),
                Running {
                    state: state.clone(),
                    exited: rx.clone(),
                    stopping: false,
                },
            );
        let exits = self.exits.clone();
        let dir = self.run_dir(&m.id);
        let cgroup = self.cgroup(&m.id);
        let (app, id, instance) = (m.app.clone(), m.id.clone(), state.instance_id.clone());
        let running = self.running.clone();
        let pid = state.pid;
        tokio::spawn(async move {
            let status = wait_pidfd(pidfd).await;
            let report = read_machine_file(&dir.join(EXIT_FILE))
                .and_then(|b| PilotExit::parse(&b))
                .filter(|e| !e.containers.is_empty());
            let (exit_code, signal) = match &report {
                Some(e) => (e.exit_code, e.signal),
                None => match status {
                    Some((code, sig)) if code != 0 || sig.is_some() => (code, sig),
                    // Pilot died without a report (killed): treat it as killed.
                    _ => (137, Some(9)),
                },
            };
            let oom_killed = cgroup.oom_kills().unwrap_or(0) > 0;
            if oom_killed {
                // Said where users look first: the machine's logs.
                let line = "Out of memory: the kernel's OOM killer ended this machine (its memory limit is guest.memory_mb; try a larger --vm-memory)";
                if let Err(e) = append_platform_log(&dir, line) {
                    tracing::warn!(machine = %id, "cannot log the OOM kill: {e}");
                }
            }
            let exit = MachineExit {
                app,
                machine_id: id,
                instance_id: instance,
                exit_code,
                signal,
                oom_killed,
                exited_at: now_ms(),
                run: i64::from(pid),
            };
            let _ = tx.send(Some(exit.clone()));
            // Only the machine's current run reports; a run replaced by a newer one (killed
            // while cleaning up before a restart) must not look like a crash.
            let current = running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&exit.machine_id)
                .is_some_and(|r| r.state.pid == pid && !r.stopping);
            if current {
                let _ = exits.send(RuntimeEvent::Exited(exit));
            }
        });
        Ok(rx)
    }

    /// Follows Pilot's event stream and reports each container event; ends with Pilot. Pilot
    /// replays its recent events first; those before `since` (unix ms) were reported already.
    fn watch_containers(&self, m: &MachineRecord, since: i64) {
        let socket = self.run_dir(&m.id).join(CONTROL_SOCKET);
        let events = self.exits.clone();
        let (app, id, instance) = (m.app.clone(), m.id.clone(), m.instance_id.clone());
        tokio::spawn(async move {
            // Pilot creates its socket within milliseconds of starting.
            let mut stream = None;
            for _ in 0..200 {
                if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
                    stream = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let Some(stream) = stream else { return };
            let (read, mut write) = stream.into_split();
            let watch = RequestLine::new(Request::Watch).to_line();
            if write.write_all(&watch).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(ev) = serde_json::from_str::<hangar_pilot::spec::Event>(&line) else {
                    continue;
                };
                if ev.at < since {
                    continue;
                }
                let kind = serde_json::to_value(ev.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let detail = serde_json::json!({
                    "container": ev.container,
                    "exit_code": ev.exit_code,
                    "signal": ev.signal,
                    "restart_count": ev.restart_count,
                    "health": ev.health,
                    "message": ev.message,
                });
                let sent = events.send(RuntimeEvent::Container(ContainerEvent {
                    app: app.clone(),
                    machine_id: id.clone(),
                    instance_id: instance.clone(),
                    kind,
                    at: ev.at,
                    detail,
                }));
                if sent.is_err() {
                    return;
                }
            }
        });
    }

    /// Releases what a stopped machine held on the host: rootfs mounts, writable layers,
    /// cgroup, uid range. Logs stay until the machine is destroyed.
    async fn cleanup(&self, id: &str, keep_rootfs: bool) -> Result<(), RuntimeError> {
        let state = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .map(|r| r.state)
            .or_else(|| read_state(&self.machine_dir(id)));
        let dir = self.machine_dir(id);
        let cgroup = self.cgroup(id);
        // Found on disk rather than from runtime.json: a crash may have left mounts behind
        // before that file was written.
        let targets: Vec<PathBuf> = std::fs::read_dir(dir.join("containers"))
            .map(|rd| rd.flatten().map(|e| e.path().join("rootfs")).collect())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            if cgroup.exists() {
                cgroup.destroy().map_err(failed)?;
            }
            for target in &targets {
                if is_mountpoint(target) {
                    hangar_image::unmount_rootfs(target).map_err(failed)?;
                }
                let Some(cdir) = target.parent() else {
                    continue;
                };
                // A sized writable layer's disk (its loop device goes with the mount).
                let layer = cdir.join(SIZED_LAYER_DIR);
                if is_mountpoint(&layer) {
                    hangar_image::unmount_rootfs(&layer).map_err(failed)?;
                }
                if !keep_rootfs {
                    hangar_image::remove_rootfs(cdir).map_err(failed)?;
                    let _ = std::fs::remove_dir(&layer);
                    match std::fs::remove_file(cdir.join(SIZED_LAYER_IMAGE)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(failed(e));
                        }
                        _ => {}
                    }
                }
            }
            // Between boots nothing of the machine runs: its run dir goes back to root, so the
            // uid range (reused by later machines) owns nothing here.
            let run = dir.join(RUN_DIR);
            if run.is_dir() {
                chown_tree_nofollow(&run, 0).map_err(failed)?;
            }
            // temp_dir volumes live as long as one boot of the machine.
            let volumes = dir.join("volumes");
            if let Ok(rd) = std::fs::read_dir(&volumes) {
                for entry in rd.flatten() {
                    if is_mountpoint(&entry.path()) {
                        nix::mount::umount2(
                            &entry.path(),
                            nix::mount::MntFlags::MNT_DETACH
                                | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
                        )
                        .map_err(|e| failed(format!("unmount {}: {e}", entry.path().display())))?;
                    }
                }
                std::fs::remove_dir_all(&volumes).map_err(failed)?;
            }
            for f in [RUNTIME_FILE, SPAWN_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            let _ = std::fs::remove_file(dir.join(RUN_DIR).join(CONTROL_SOCKET));
            Ok(())
        })
        .await
        .map_err(failed)??;
        if let Some(s) = state {
            self.free_slot(s.slot, id);
        }
        Ok(())
    }

    /// One request to Pilot's control socket. Bounded in time (a hung or frozen Pilot must not
    /// hold a machine's lock forever) and in size.
    async fn control(&self, id: &str, req: &Request) -> Result<Reply, RuntimeError> {
        let limit = match req {
            Request::Exec { timeout_ms, .. } => {
                Duration::from_millis(timeout_ms.unwrap_or(60_000)).saturating_add(CONTROL_TIMEOUT)
            }
            _ => CONTROL_TIMEOUT,
        };
        let path = self.run_dir(id).join(CONTROL_SOCKET);
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| failed(format!("connecting to pilot: {e}")))?;
            let (read, mut write) = stream.into_split();
            let line = RequestLine::new(req.clone()).to_line();
            write.write_all(&line).await.map_err(failed)?;
            let mut reply = String::new();
            BufReader::new(tokio::io::AsyncReadExt::take(read, CONTROL_REPLY_MAX))
                .read_line(&mut reply)
                .await
                .map_err(failed)?;
            // Any Pilot version this daemon knows (an older one keeps running its machine).
            let (_version, reply) = Reply::parse(reply.trim()).map_err(failed)?;
            match reply {
                Reply::Error { kind, message } => Err(pilot_error(kind, message)),
                ok => Ok(ok),
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| failed(format!("pilot did not answer within {}s", limit.as_secs())))?
    }

    /// Waits until Pilot has started (or failed to start) every container.
    async fn wait_ready(
        &self,
        id: &str,
        exited: &mut watch::Receiver<Option<MachineExit>>,
    ) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut delay = Duration::from_micros(200);
        loop {
            if exited.borrow().is_some() {
                let log = read_machine_file(&self.run_dir(id).join(PILOT_LOG))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let statuses: Vec<ContainerStatus> =
                    read_machine_file(&self.run_dir(id).join(EXIT_FILE))
                        .and_then(|b| PilotExit::parse(&b))
                        .map(|e| e.containers)
                        .unwrap_or_default();
                if let Some(err) = statuses.iter().find_map(|c| c.error.clone()) {
                    return Err(RuntimeError::StartFailed(err));
                }
                if statuses.is_empty() {
                    return Err(failed(format!("pilot exited during start: {}", log.trim())));
                }
                // Every container ran and exited already: a short-lived machine. That is a
                // successful start; the exit is reported separately.
                return Ok(());
            }
            if let Ok(Reply::Status { containers }) = self.control(id, &Request::Status).await {
                if let Some(err) = containers.iter().find_map(|c| c.error.clone()) {
                    return Err(RuntimeError::StartFailed(err));
                }
                if containers
                    .iter()
                    .all(|c| c.state != ContainerState::Created)
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(failed("pilot did not start the containers within 30s"));
            }
            // The socket appears within milliseconds; back off gently until it does.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = exited.changed() => {}
            }
            delay = (delay * 2).min(Duration::from_millis(20));
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

    async fn start(&self, m: &MachineRecord) -> Result<(), RuntimeError> {
        // Leftovers of an earlier run (a crash, a kill) go first.
        self.cleanup(&m.id, keep_rootfs(&m.config)).await?;
        let slot = self.alloc_slot(&m.id)?;
        // Frees the slot if this start fails or unwinds (a panic) before the run owns it.
        let mut slot_guard = SlotGuard {
            runtime: self,
            slot: Some(slot),
            machine_id: &m.id,
        };
        let keep = keep_rootfs(&m.config);
        let launched = match self.launch(m, slot).await {
            Ok(state) => write_json(&self.machine_dir(&m.id).join(RUNTIME_FILE), &state)
                .and_then(|()| self.watch_exit(m, &state)),
            Err(e) => Err(e),
        };
        let mut exited = match launched {
            Ok(exited) => exited,
            Err(e) => {
                // Kill whatever started; a persistent rootfs survives a failed start.
                let cgroup = self.cgroup(&m.id);
                let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
                let _ = self.cleanup(&m.id, keep).await;
                return Err(e);
            }
        };
        // The run holds the slot now; cleanup() frees it.
        slot_guard.slot = None;
        self.watch_containers(m, 0);
        if let Err(e) = self.wait_ready(&m.id, &mut exited).await {
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
        self.stop(m, Signal::SIGKILL, Duration::ZERO).await?;
        self.cleanup(&m.id, false).await?;
        let dir = self.machine_dir(&m.id);
        // The logs outlive the machine (crate::log_archive); everything else goes now.
        let live = dir.join(RUN_DIR).join("logs");
        let archive = crate::log_archive::archive_dir(&self.machines_dir);
        let (id, keep) = (m.id.clone(), self.log_retention);
        let _ = tokio::task::spawn_blocking(move || {
            crate::log_archive::archive(&live, &archive, &id, keep)
        })
        .await;
        remove_dir(dir).await
    }

    async fn sweep(&self, live: &std::collections::HashSet<String>) {
        let Ok(rd) = std::fs::read_dir(&self.machines_dir) else {
            return;
        };
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&id) {
                continue;
            }
            tracing::info!(machine = %id, "removing what a destroyed machine left behind");
            let _ = self.cleanup(&id, false).await;
            let _ = remove_dir(entry.path()).await;
        }
        // uid ranges this daemon claimed for machines that are gone.
        for (slot, machine) in self.claims.owned() {
            if !live.contains(&machine) && !self.machine_dir(&machine).exists() {
                self.claims.release(slot, &machine);
            }
        }
    }

    async fn adopt(&self, m: &MachineRecord) -> Adoption {
        let dir = self.machine_dir(&m.id);
        let state = read_state(&dir);
        if let Some(s) = &state {
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.slot, m.id.clone());
            // Claims written by a daemon from before host-wide claims, or lost with /run.
            if !self.claims.claim(s.slot, &m.id).unwrap_or(false) {
                tracing::error!(machine = %m.id, slot = s.slot, "this machine's uid range is claimed by another daemon on this host");
            }
        }
        let alive = state.as_ref().is_some_and(|s| {
            s.instance_id == m.instance_id && start_time(s.pid).is_some_and(|t| t == s.start_time)
        });
        match state {
            Some(state) if alive => {
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
                        let report = read_machine_file(&self.run_dir(&m.id).join(EXIT_FILE))
                            .and_then(|b| PilotExit::parse(&b))
                            .filter(|e| !e.containers.is_empty())?;
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

/// Appends a line from the platform (container `hangar` in the logs API) to the machine's
/// logs, in Pilot's format. The run dir belongs to the machine's uid: every step is opened
/// without following links.
fn append_platform_log(run_dir: &Path, line: &str) -> std::io::Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::io::Write;
    use std::os::fd::AsFd;
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let run = nix::fcntl::open(run_dir, dir_flags, Mode::empty())?;
    let logs = nix::fcntl::openat(run.as_fd(), "logs", dir_flags, Mode::empty())?;
    let file = nix::fcntl::openat(
        logs.as_fd(),
        "hangar.log",
        OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let mut file = std::fs::File::from(file);
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("hangar.log is not a regular file"));
    }
    let ts = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
        ))
        .map_err(std::io::Error::other)?;
    writeln!(file, "{ts} stderr {line}")
}

async fn remove_dir(dir: PathBuf) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed(format!("removing {}: {e}", dir.display()))),
    })
    .await
    .map_err(failed)?
}

/// Pilot and the container setup run as the machine's unprivileged host uid and reach their
/// machine dir by path, so every directory above the data dir must let others through.
fn check_traversable(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let abs = std::fs::canonicalize(data_dir)?;
    for dir in abs.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "{} (mode {:o}) blocks machines from reaching their files under {}: run `chmod o+x {}` or use a --data-dir elsewhere",
                dir.display(),
                mode & 0o7777,
                abs.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// The rootfs survives a stop only with `rootfs.persist` of `restart` or `always`.
fn keep_rootfs(config: &MachineConfig) -> bool {
    config
        .rootfs
        .as_ref()
        .and_then(|r| r.persist.as_deref())
        .is_some_and(|p| p == "restart" || p == "always")
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(failed)?;
    std::fs::write(path, bytes).map_err(|e| failed(format!("writing {}: {e}", path.display())))
}

fn read_state(dir: &Path) -> Option<RuntimeState> {
    serde_json::from_slice(&read_machine_file(&dir.join(RUNTIME_FILE))?).ok()
}

/// Writes a file root owns into a dir the machine's uid can write: whatever sits at the path
/// (a planted symlink, say) is removed first and the new file is created exclusively.
/// Writes a new file readable only by `owner` (and root): Pilot's spec carries every
/// container's env and file contents.
fn write_private_file(path: &Path, bytes: &[u8], owner: u32) -> Result<(), RuntimeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| failed(format!("writing {}: {e}", path.display())))?;
    std::os::unix::fs::fchown(&f, Some(owner), Some(owner)).map_err(failed)?;
    f.write_all(bytes).map_err(failed)
}

/// The machine dir: root's, entered only by root and the group of this boot's machine root.
fn restrict_machine_dir(dir: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(dir, Some(0), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
}

/// Gives `dir` and everything under it to `uid`, never following a symlink.
fn chown_tree_nofollow(dir: &Path, uid: u32) -> std::io::Result<()> {
    use nix::unistd::{fchownat, Gid, Uid};
    let own = |p: &Path| {
        fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(uid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)
    };
    own(dir)?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            chown_tree_nofollow(&path, uid)?;
        } else {
            own(&path)?;
        }
    }
    Ok(())
}

/// Largest file the daemon reads back from a machine dir.
const MACHINE_FILE_MAX: u64 = 1 << 20;

/// Reads a file from a machine dir, which belongs to the machine's uid: no symlinks, no FIFOs
/// or devices that could block or leak host data, at most 1 MiB.
fn read_machine_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut out = Vec::new();
    file.take(MACHINE_FILE_MAX).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Whether `path` itself (never what a symlink there points to) is a mount point.
fn is_mountpoint(path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(a), _) if a.file_type().is_symlink() => false,
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Field 22 of /proc/PID/stat: when the process started, to detect pid reuse.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits for the process behind `pidfd` to exit and reaps it when it is our child (Pilot is
/// reparented to the daemon, a subreaper). Returns (exit code, signal) when known.
async fn wait_pidfd(pidfd: OwnedFd) -> Option<(i32, Option<i32>)> {
    // SAFETY: we own the pidfd and it stays open for as long as the AsyncFd lives.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.ok()?;
    let _ = afd.readable().await.ok()?;
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: P_PIDFD with a valid pidfd; WEXITED reaps.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            afd.get_ref().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: after a successful waitid the status fields are valid.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    match code {
        libc::CLD_EXITED => Some((status, None)),
        libc::CLD_KILLED | libc::CLD_DUMPED => Some((128 + status, Some(status))),
        _ => None,
    }
}
