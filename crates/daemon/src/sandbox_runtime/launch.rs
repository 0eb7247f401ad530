//! Booting a machine: its images (pinned digests), the plan of its containers and mounts, and
//! the spawn helper that builds the sandbox.

use super::*;
use hangar_sandbox::warm::WarmSandbox;
use std::os::fd::AsFd;

impl SandboxRuntime {
    /// The exact image a machine was created with (`image` resolved to `digest` then), even if
    /// the tag now names another: found here by digest, or pulled as `repository@digest`.
    pub(super) async fn ensure_pinned(
        &self,
        image: &str,
        digest: &str,
    ) -> Result<ImageRecord, RuntimeError> {
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
    pub(super) async fn ensure_image(&self, image: &str) -> Result<ImageRecord, RuntimeError> {
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
    pub(super) async fn plan(
        &self,
        m: &MachineRecord,
        dir: &Path,
        uid_base: u32,
        secrets: &SecretValues,
    ) -> Result<(PilotSpec, Vec<MountPlan>, Vec<VolumeMountPlan>), RuntimeError> {
        let mut containers = Vec::new();
        let mut mounts = Vec::new();
        let mut volumes = prepare_volumes(&m.config, dir, uid_base)?;
        // Persistent volumes (config.mounts): mounted by the spawn helper through the
        // machine's user namespace (idmapped), then bound into every container at their path.
        let mut persistent = Vec::new();
        for mount in m.config.mounts.iter().flatten() {
            if !hangar_api::validate::is_dir_safe_name(&mount.volume) {
                return Err(RuntimeError::Image(format!(
                    "invalid volume id {:?}",
                    mount.volume
                )));
            }
            let image = self.volumes.image(&mount.volume);
            if !image.is_file() {
                return Err(RuntimeError::Unsupported(format!(
                    "volume {} has no data on this host (destroyed?)",
                    mount.volume
                )));
            }
            // An extend that could not resize online is finished before the mount.
            let (volumes_dir, vol) = (self.volumes.clone(), mount.volume.clone());
            tokio::task::spawn_blocking(move || volumes_dir.fit_filesystem(&vol))
                .await
                .map_err(failed)?
                .map_err(|e| failed(format!("volume {}: {e}", mount.volume)))?;
            let target = dir
                .join("volumes")
                .join(format!("{PERSISTENT_VOLUME_PREFIX}{}", mount.volume));
            std::fs::create_dir_all(&target).map_err(failed)?;
            volumes.mounts.push(VolumeMountPlan {
                target: target.clone(),
                size_mb: 0,
                uid: uid_base,
                disk_image: None,
                persistent_image: Some(image),
            });
            persistent.push((target, mount.path.clone()));
        }
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
            let mut process = container_process(m, &c, &details.config, &rootfs, &target, secrets)?;
            process.binds.extend(persistent.iter().cloned());
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

    pub(super) async fn launch(
        &self,
        m: &MachineRecord,
        slot: u32,
        secrets: &SecretValues,
        warm: Option<super::warm::Warm>,
    ) -> Result<RuntimeState, LaunchError> {
        // A warm sandbox this launch ends without using goes back to nothing (an early error).
        let mut warm = UnusedWarm(warm.zip(self.pool.clone()));
        let dir = self.machine_dir(&m.id);
        let run = self.run_dir(&m.id);
        let uid_base = UID_BASE_START + slot * UID_RANGE;
        let made_ahead = warm
            .take_machine_dir()
            .is_some_and(|ahead| adopt_machine_dir(ahead, &dir, &m.config));
        if !made_ahead {
            std::fs::create_dir_all(&run).map_err(failed)?;
            // Only root and this boot's machine (its root's group) may enter the machine dir:
            // it holds the container's writable layer.
            restrict_machine_dir(&dir, uid_base).map_err(failed)?;
            // This boot's uid owns the run dir and what earlier boots left there (their logs).
            chown_tree_nofollow(&run, uid_base).map_err(failed)?;
            let _ = std::fs::remove_file(run.join(EXIT_FILE));
        }
        let (pilot_spec, mounts, volume_mounts) = self.plan(m, &dir, uid_base, secrets).await?;
        // Pilot's spec holds the machine's env and file contents, secrets included: it reaches
        // Pilot in memory only (crate::sandbox_runtime::host::spec_memfd), never on disk. A spec
        // file an older Hangar wrote goes.
        let _ = std::fs::remove_file(run.join(SPEC_FILE));
        let spec = spec_memfd(&serde_json::to_vec(&pilot_spec).map_err(failed)?)?;
        let net = match &self.net {
            Some(host) => {
                let mut net = machine_net(m)?;
                net.mtu = host.machine_mtu();
                // A warm sandbox's spare becomes the machine's veth under its own name.
                if let Some(spare) = warm.spare_veth() {
                    net.host_veth = spare.to_string();
                }
                let (h, n) = (host.clone(), net.clone());
                tokio::task::spawn_blocking(move || h.acquire(&n))
                    .await
                    .map_err(failed)?
                    .map_err(|e| failed(format!("setting up bridge {}: {e}", net.bridge)))?;
                Some(net)
            }
            None => None,
        };
        let spawned = self
            .spawn(
                m,
                uid_base,
                (mounts, volume_mounts),
                net.clone(),
                spec,
                warm.take(),
            )
            .await;
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                if let (Some(host), Some(net)) = (&self.net, net) {
                    host.release(&net);
                }
                return Err(e);
            }
        };
        Ok(RuntimeState {
            instance_id: m.instance_id.clone(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            slot,
            net,
        })
    }

    /// Runs the spawn helper for the machine and returns Pilot's pid.
    async fn spawn(
        &self,
        m: &MachineRecord,
        uid_base: u32,
        (mounts, volume_mounts): (Vec<MountPlan>, Vec<VolumeMountPlan>),
        net: Option<hangar_net::MachineNet>,
        spec: std::os::fd::OwnedFd,
        warm: Option<super::warm::Warm>,
    ) -> Result<i32, LaunchError> {
        let (dir, run) = (&self.machine_dir(&m.id), &self.run_dir(&m.id));
        let guest = m.spec().guest;
        let memory_bytes = guest.memory_mb << 20;
        let swap_bytes = guest.swap_mb << 20;
        let plan = SpawnPlan {
            sandbox: SandboxSpec {
                machine_id: m.id.clone(),
                machine_dir: dir.to_path_buf(),
                uid_base,
                uid_count: UID_RANGE,
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                cgroup_path: PathBuf::from(format!("hangar/{}", m.id)),
                cpus: guest.cpus,
                memory_bytes,
                swap_bytes,
                pids: pids_limit(guest.memory_mb),
                hostname: crate::container_plan::hostname(&m.config, &m.id),
                pilot_args: vec![
                    "pilot".into(),
                    "--machine-dir".into(),
                    run.display().to_string(),
                    "--spec-stdin".into(),
                ],
                pilot_exe: self.pilot_exe.clone(),
                pilot_log: run.join(PILOT_LOG),
                net,
                io_devices: self.io_devices.clone(),
                spare_veth: None,
                idle: false,
            },
            mounts,
            volume_mounts,
        };
        let sandbox_started = std::time::Instant::now();
        if let (Some(warm), Some(pool)) = (warm, &self.pool) {
            let pid = take_over(pool, warm, plan, spec, run).await;
            tracing::debug!(machine = %m.id, elapsed = ?sandbox_started.elapsed(), "warm sandbox taken over");
            return pid.map_err(|error| LaunchError {
                error,
                take_over: true,
            });
        }
        let pid = match hangar_sandbox::spawner::get().map(|s| s.request(&spec)) {
            Some(Ok(socket)) => ask_helper(socket, &plan).await,
            unavailable => {
                if let Some(Err(e)) = unavailable {
                    tracing::warn!(error = %e, "the pre-forked spawner is gone; executing the helper");
                }
                self.spawn_executed(&dir.join(SPAWN_FILE), &plan, spec)
                    .await
            }
        };
        tracing::debug!(machine = %m.id, elapsed = ?sandbox_started.elapsed(), "sandbox helper done");
        Ok(pid?)
    }

    /// The helper as its own process, `hangar sandbox-spawn <plan>` (a daemon without a
    /// spawner: embedded in a test).
    async fn spawn_executed(
        &self,
        plan_file: &Path,
        plan: &SpawnPlan,
        spec: std::os::fd::OwnedFd,
    ) -> Result<i32, RuntimeError> {
        write_json(plan_file, plan)?;
        let out = tokio::process::Command::new(&self.exe)
            .arg("sandbox-spawn")
            .arg(plan_file)
            // The helper hands its stdin on to Pilot, which reads its spec from it.
            .stdin(std::process::Stdio::from(spec))
            .output()
            .await
            .map_err(|e| failed(format!("running the sandbox helper: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "building the sandbox failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| failed("the sandbox helper did not report Pilot's pid"))
    }
}

/// Why a launch failed, and whether taking a warm sandbox over is what failed (the start then
/// builds its sandbox instead).
pub(super) struct LaunchError {
    pub error: RuntimeError,
    pub take_over: bool,
}

impl From<RuntimeError> for LaunchError {
    fn from(error: RuntimeError) -> Self {
        LaunchError {
            error,
            take_over: false,
        }
    }
}

/// A warm sandbox handed to a launch, let go (in the background) if the launch ends before
/// it is taken: its Pilot, cgroup and log would otherwise stay until the daemon's next start.
struct UnusedWarm(Option<(super::warm::Warm, Arc<super::warm::WarmPool>)>);

impl UnusedWarm {
    fn take(&mut self) -> Option<super::warm::Warm> {
        self.0.take().map(|(warm, _)| warm)
    }

    fn spare_veth(&self) -> Option<&str> {
        self.0.as_ref().and_then(|(w, _)| w.spare_veth.as_deref())
    }

    /// The machine dir made ahead with the sandbox, if any: the launch's from here on.
    fn take_machine_dir(&mut self) -> Option<PathBuf> {
        self.0.as_mut().and_then(|(w, _)| w.machine_dir.take())
    }
}

/// Makes `ahead`, a machine dir made with the warm sandbox for its uid range (the machine's
/// now), the machine's `dir`, unless that exists (a machine that ran before keeps its own: the
/// one made ahead goes). Its container dir is named after the machine's first container.
fn adopt_machine_dir(ahead: PathBuf, dir: &Path, config: &MachineConfig) -> bool {
    let renamed = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &ahead,
        nix::fcntl::AT_FDCWD,
        dir,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    if let Err(e) = renamed {
        if e != nix::errno::Errno::EEXIST {
            tracing::debug!(error = %e, "taking the machine dir made ahead failed");
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(super::warm::remove_machine_dir(ahead));
        }
        return false;
    }
    let first = container_configs(config)
        .into_iter()
        .next()
        .map(|c| c.rootfs_of.unwrap_or(c.name));
    // Names become host paths: validation admits only plain ones, checked again here (the
    // plan checks them too, after this).
    let first = first.filter(|n| {
        n != super::warm::MADE_AHEAD_CONTAINER && hangar_api::validate::is_dir_safe_name(n)
    });
    if let Some(first) = first {
        let containers = dir.join("containers");
        // Should this fail, the start makes the container's dir itself; the empty one stays.
        let _ = std::fs::rename(
            containers.join(super::warm::MADE_AHEAD_CONTAINER),
            containers.join(first),
        );
    }
    true
}

impl Drop for UnusedWarm {
    fn drop(&mut self) {
        if let (Some((warm, pool)), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            // The slot is the machine's now (its start frees it).
            rt.spawn(async move { pool.discard(warm, false).await });
        }
    }
}

/// How long a sandbox helper may take (it takes milliseconds; mounting a large volume's
/// filesystem after an unclean shutdown, a journal replay, is the slow case).
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// Makes the warm sandbox `warm` the machine `plan` describes: here, side by side, its cgroup,
/// root filesystems (made detached), the veth's host end with Pilot's scheduling class, and
/// the network's inside with the hostname; then Pilot, given its claim, attaches the root
/// filesystems (`hangar_pilot::pooled`). Returns Pilot's pid. A failure lets the sandbox go,
/// its spare veth at once (the machine's start cleans up what was renamed to it).
async fn take_over(
    pool: &super::warm::WarmPool,
    warm: super::warm::Warm,
    plan: SpawnPlan,
    spec: std::os::fd::OwnedFd,
    run: &Path,
) -> Result<i32, RuntimeError> {
    use hangar_sandbox::warm as host_side;
    let outcome = async {
        host_side::takes_warm(&plan).map_err(failed)?;
        if plan.mounts.len() > hangar_pilot::pooled::CLAIM_MOUNTS_MAX {
            return Err(failed("too many root filesystems for a warm sandbox"));
        }
        let pidfd = warm.pidfd.try_clone().map_err(failed)?;
        let shared = Arc::new((plan, warm.sandbox(), pidfd));
        let on_blocking = |f: fn(&SpawnPlan, &WarmSandbox, &OwnedFd) -> Result<(), String>| {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || f(&shared.0, &shared.1, &shared.2))
        };
        let cgroup = on_blocking(|plan, sandbox, _| host_side::take_cgroup(plan, sandbox));
        let network = on_blocking(|plan, sandbox, pidfd| {
            host_side::adopt_network(plan, sandbox)?;
            host_side::normal_class(pidfd, sandbox.pid)
        });
        let inside = on_blocking(host_side::set_up_inside);
        let roots = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                host_side::make_root_filesystems(&shared.0, &shared.1, &shared.2)
            })
        };
        let (cgroup, roots, network, inside) = tokio::join!(cgroup, roots, network, inside);
        // Closing the layers' detached mounts unmounts them, which waits for an RCU grace
        // period: never on this thread, whichever way the take-over ends.
        let prepared = CloseAside(roots.map_err(failed)?.map_err(failed)?);
        let plan = &shared.0;
        cgroup.map_err(failed)?.map_err(failed)?;
        network.map_err(failed)?.map_err(failed)?;
        inside.map_err(failed)?.map_err(failed)?;
        let log = {
            let (path, owner) = (plan.sandbox.pilot_log.clone(), plan.sandbox.uid_base);
            tokio::task::spawn_blocking(move || hangar_sandbox::spawn::open_pilot_log(&path, owner))
                .await
                .map_err(failed)?
                .map_err(failed)?
        };
        let claim = hangar_pilot::pooled::Claim {
            machine_dir: run.to_path_buf(),
            mounts: prepared.0.mounts.iter().map(|(_, to)| to.clone()).collect(),
        };
        let fds: Vec<_> = prepared.0.mounts.iter().map(|(fd, _)| fd.as_fd()).collect();
        warm.claim(&claim, &spec, &log, &fds)
            .await
            .map_err(|e| failed(format!("handing the warm sandbox its machine: {e}")))?;
        Ok(warm.pid)
    }
    .await;
    if outcome.is_err() {
        let sandbox = warm.sandbox();
        let _ = tokio::task::spawn_blocking(move || host_side::remove_spare(&sandbox)).await;
        pool.discard(warm, false).await;
    }
    outcome
}

/// Root filesystems made for a take-over, closed on the blocking pool when it ends.
struct CloseAside(hangar_sandbox::warm::Prepared);

impl Drop for CloseAside {
    fn drop(&mut self) {
        let prepared = std::mem::take(&mut self.0);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(prepared));
        }
    }
}

/// Sends `plan` to a helper forked by the daemon's pre-forked spawner (the usual way) on the
/// request's `socket`, and returns Pilot's pid from its answer.
pub(super) async fn ask_helper(
    socket: std::os::unix::net::UnixStream,
    plan: &SpawnPlan,
) -> Result<i32, RuntimeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let json = serde_json::to_vec(plan).map_err(failed)?;
    let socket = socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(socket))
        .map_err(|e| failed(format!("the sandbox helper's socket: {e}")))?;
    let (mut read, mut write) = socket.into_split();
    write
        .write_all(&json)
        .await
        .map_err(|e| failed(format!("sending the spawn plan: {e}")))?;
    write
        .shutdown()
        .await
        .map_err(|e| failed(format!("sending the spawn plan: {e}")))?;
    let mut answer = Vec::new();
    // A helper that never answers (a bug, a wedged kernel call) fails the start instead of
    // leaving the machine `starting` for good; the start's cleanup kills what it made.
    tokio::time::timeout(HELPER_TIMEOUT, read.read_to_end(&mut answer))
        .await
        .map_err(|_| {
            failed(format!(
                "the sandbox helper did not answer within {}s",
                HELPER_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| failed(format!("reading the sandbox helper's answer: {e}")))?;
    hangar_sandbox::spawner::parse_answer(&answer)
        .map_err(|e| failed(format!("building the sandbox failed: {e}")))
}

/// The plumbing for the machine's stored addresses.
fn machine_net(m: &MachineRecord) -> Result<hangar_net::MachineNet, RuntimeError> {
    let v6 = m.private_ip.parse().ok();
    let v4 = m.private_ipv4.parse().ok();
    v6.zip(v4)
        // A veth name of this boot's own (see `veth_name`).
        .and_then(|(v6, v4)| hangar_net::MachineNet::new(&m.id, v6, v4, rand::random()))
        .ok_or_else(|| {
            failed(format!(
                "machine {} has no usable private addresses ({:?}, {:?})",
                m.id, m.private_ip, m.private_ipv4
            ))
        })
}
