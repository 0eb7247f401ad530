//! What a machine holds on the host and how it is released: mounts, writable layers, the
//! cgroup, the run dir; and the file helpers that never follow a link the machine planted.

use super::*;

impl SandboxRuntime {
    /// Releases what a stopped machine held on the host: rootfs mounts, writable layers,
    /// cgroup, uid range. Logs stay until the machine is destroyed.
    pub(super) async fn cleanup(&self, id: &str, keep_rootfs: bool) -> Result<(), RuntimeError> {
        let state = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .map(|r| r.state)
            .or_else(|| read_state(&self.machine_dir(id)));
        let dir = self.machine_dir(id);
        let cgroup = self.cgroup(id);
        // A machine that never ran here (a create's first start) holds nothing: a few
        // stat()s say so without a trip through the blocking pool.
        if state.is_none() && !dir.exists() && !cgroup.exists() {
            return Ok(());
        }
        // Found on disk rather than from runtime.json: a crash may have left mounts behind
        // before that file was written.
        let targets: Vec<PathBuf> = std::fs::read_dir(dir.join("containers"))
            .map(|rd| rd.flatten().map(|e| e.path().join("rootfs")).collect())
            .unwrap_or_default();
        let exe = self.exe.clone();
        let net = self
            .net
            .clone()
            .zip(state.as_ref().and_then(|s| s.net.clone()));
        let machines_dir = self.machines_dir.clone();
        let trash = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>, RuntimeError> {
            let mut trash = Vec::new();
            if cgroup.exists() {
                // Killed and moved aside now; the slow removal is a helper's (reap_cgroups).
                let dead = cgroup.retire().map_err(failed)?;
                reap_cgroups(&exe, dead);
            }
            if let Some((host, net)) = net {
                host.release(&net);
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
                    // Out of the way at once, removed after the answer.
                    for d in ["upper", "work"] {
                        trash.extend(to_trash(&machines_dir, &cdir.join(d)).map_err(failed)?);
                    }
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
                // A persistent volume's mount point must be empty now: never delete into one
                // (if it were still mounted, that would be the user's data).
                for entry in std::fs::read_dir(&volumes).map_err(failed)?.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with(PERSISTENT_VOLUME_PREFIX) {
                        std::fs::remove_dir(entry.path()).map_err(|e| {
                            failed(format!("removing {}: {e}", entry.path().display()))
                        })?;
                    }
                }
                std::fs::remove_dir_all(&volumes).map_err(failed)?;
            }
            for f in [RUNTIME_FILE, SPAWN_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            let _ = std::fs::remove_file(dir.join(RUN_DIR).join(CONTROL_SOCKET));
            Ok(trash)
        })
        .await
        .map_err(failed)??;
        empty_trash(trash);
        if let Some(s) = state {
            self.free_slot(s.slot, id);
        }
        Ok(())
    }
}

/// Appends a line from the platform (container `hangar` in the logs API) to the machine's
/// logs, in Pilot's format. The run dir belongs to the machine's uid: every step is opened
/// without following links.
pub(super) fn append_platform_log(run_dir: &Path, line: &str) -> std::io::Result<()> {
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
    file.write_all(&hangar_pilot::logs::log_record("stderr", line.as_bytes()))
}

/// Name prefix of what is moved out of a machine's way to be removed in the background, in
/// the machines dir (a start-up sweep removes any a crash left): the trash bin below, and the
/// per-dir trash dirs of earlier versions.
pub(super) const TRASH_PREFIX: &str = ".trash-";
/// The trash bin in the machines dir (mode 0700: what a machine's uid owns, a container's
/// writable layer with the files its secrets went to, stays out of everyone else's reach until
/// it is removed), made once and kept.
const TRASH_BIN: &str = ".trash-bin";

/// Moves `dir` (if it exists) into the machines dir's trash bin under a fresh name. A rename is
/// instant, where removing a container's writable layer or a machine dir took 1–6 ms of a
/// destroy here; and the bin is made once, where a trash dir per moved dir cost a create, a
/// destroy and the next start an ext4 mkdir each (with the Orlov allocator's scan of block
/// groups that the machines dir's `+T` asks for: ~1 ms of CPU per create/destroy loop).
/// Returns where it went, for [`empty_trash`].
pub(super) fn to_trash(machines_dir: &Path, dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let target = machines_dir
        .join(TRASH_BIN)
        .join(format!("{:016x}", rand::random::<u64>()));
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    match std::fs::rename(dir, &target) {
        // Either `dir` is gone already (a second clean-up) or the bin is not there (it is made
        // at start-up; this is a fallback): with the bin there, NotFound means `dir` is gone.
        Err(e) if not_found(&e) => {
            make_trash_bin(machines_dir)?;
            match std::fs::rename(dir, &target) {
                Err(e) if not_found(&e) => Ok(None),
                renamed => renamed.map(|()| Some(target)),
            }
        }
        renamed => renamed.map(|()| Some(target)),
    }
}

/// Makes the machines dir's trash bin (mode 0700, root's) if it is not there.
pub(super) fn make_trash_bin(machines_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .create(machines_dir.join(TRASH_BIN))
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Hands trashed directories to the trash collector: a thread in the idle scheduling class
/// that removes what gathered once a second. Removing them right after each destroy put their
/// unlinks into the journal commit of the next create's sync (the sandbox platform's create,
/// exec, destroy loop measured ~3.5 ms slower); gathered, a second's destroys share one. Three
/// interleaved runs of 40 loops against removal in place: loop p50 17.4/18.4/20.8 vs
/// 18.5/21.1/23.0 ms, destroy 7.3/7.0/7.9 vs 8.9/9.0/9.0 ms.
pub(super) fn empty_trash(trash: Vec<PathBuf>) {
    use std::sync::{Condvar, OnceLock};
    /// Directories waiting, and the collector's wake-up.
    type Pending = Arc<(Mutex<Vec<PathBuf>>, Condvar)>;
    static COLLECTOR: OnceLock<Option<Pending>> = OnceLock::new();
    if trash.is_empty() {
        return;
    }
    let collector = COLLECTOR.get_or_init(|| {
        let shared = Arc::new((Mutex::new(Vec::<PathBuf>::new()), Condvar::new()));
        let theirs = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("hangar-trash".into())
            .spawn(move || {
                hangar_sandbox::cgroup::yield_to_machines();
                let (pending, wake) = &*theirs;
                loop {
                    {
                        let mut list = pending.lock().unwrap_or_else(|e| e.into_inner());
                        while list.is_empty() {
                            list = wake.wait(list).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    let batch =
                        std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
                    for dir in batch {
                        if let Err(e) = std::fs::remove_dir_all(&dir) {
                            tracing::warn!(dir = %dir.display(), error = %e, "removing a trashed dir failed");
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(shared),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to remove trashed dirs");
                None
            }
        }
    });
    // Without a collector, the next start-up's sweep removes them.
    if let Some(shared) = collector {
        let (pending, wake) = &**shared;
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(trash);
        wake.notify_one();
    }
}

/// Removes every trashed directory now (daemon start-up and shutdown), beside the collector if
/// it is at work on some of them. The bin itself stays (emptied): a move into it never finds
/// it missing.
pub(super) fn remove_trash_now(machines_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(machines_dir) else {
        return;
    };
    let bin = machines_dir.join(TRASH_BIN);
    let in_bin = std::fs::read_dir(&bin).into_iter().flatten().flatten();
    let trash_dirs = rd.flatten().filter(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with(TRASH_PREFIX) && name != TRASH_BIN
    });
    for entry in trash_dirs.chain(in_bin) {
        match std::fs::remove_dir_all(entry.path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %entry.path().display(), error = %e, "removing a trashed dir failed");
            }
            _ => {}
        }
    }
}

pub(super) async fn remove_dir(dir: PathBuf) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed(format!("removing {}: {e}", dir.display()))),
    })
    .await
    .map_err(failed)?
}

/// Marks `dir` a top of directory hierarchies (`chattr +T`), so that ext4 places each machine
/// dir made in it in a block group of its own choosing (the Orlov allocator, as for home dirs)
/// rather than beside the last one. Without it every machine's files share one group, and on
/// ext4 without a journal each new inode is found only after skipping every inode of the
/// group deleted in the last 30 s (`recently_deleted`): with machines made and destroyed in a
/// loop, a start's dozen or so creates took ~4 ms more (16 vs 8 ms create→started measured).
/// Other filesystems refuse or ignore the flag; nothing depends on it.
pub(super) fn mark_top_dir(dir: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let set = std::fs::File::open(dir).and_then(|f| {
        let flags = ioctl_getflags(&f)?;
        if !flags.contains(IFlags::TOPDIR) {
            ioctl_setflags(&f, flags | IFlags::TOPDIR)?;
        }
        Ok(())
    });
    if let Err(e) = set {
        tracing::debug!(dir = %dir.display(), error = %e, "not marked a top directory");
    }
}

/// Pilot and the container setup run as the machine's unprivileged host uid and reach their
/// machine dir by path, so every directory above the data dir must let others through.
pub(super) fn check_traversable(data_dir: &Path) -> anyhow::Result<()> {
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
pub(super) fn keep_rootfs(config: &MachineConfig) -> bool {
    hangar_api::spec::MachineSpec::from_config(config)
        .rootfs_persistence
        .survives_stop()
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(failed)?;
    std::fs::write(path, bytes).map_err(|e| failed(format!("writing {}: {e}", path.display())))
}

pub(super) fn read_state(dir: &Path) -> Option<RuntimeState> {
    serde_json::from_slice(&read_machine_file(&dir.join(RUNTIME_FILE))?).ok()
}

/// Writes a file root owns into a dir the machine's uid can write: whatever sits at the path
/// (a planted symlink, say) is removed first and the new file is created exclusively.
/// Writes a new file readable only by `owner` (and root): Pilot's spec carries every
/// container's env and file contents.
/// Pilot's spec in a sealed memfd: memory only, and once the helper has handed it to Pilot as
/// stdin and Pilot has read it, held by no one (Pilot swaps /dev/null in).
pub(super) fn spec_memfd(bytes: &[u8]) -> Result<std::os::fd::OwnedFd, RuntimeError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    use std::io::{Seek, Write};
    let fd = rustix::fs::memfd_create(
        "hangar-pilot-spec",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| failed(format!("memfd_create: {e}")))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).map_err(failed)?;
    file.rewind().map_err(failed)?;
    // Nobody holding it can change what Pilot reads.
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )
    .map_err(|e| failed(format!("sealing the spec: {e}")))?;
    Ok(file.into())
}

/// Mount points of persistent volumes under a machine's `volumes` dir: `persistent-<vol id>`.
pub(super) const PERSISTENT_VOLUME_PREFIX: &str = "persistent-";

/// The machine dir: root's, entered only by root and the group of this boot's machine root.
pub(super) fn restrict_machine_dir(dir: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(dir, Some(0), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
}

/// Gives `dir` and everything under it to `uid`, never following a symlink.
pub(super) fn chown_tree_nofollow(dir: &Path, uid: u32) -> std::io::Result<()> {
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

/// Reads a file from a machine dir, which belongs to the machine's uid: no symlinks, no FIFOs
/// or devices that could block or leak host data, at most 1 MiB.
pub(super) fn read_machine_file(path: &Path) -> Option<Vec<u8>> {
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

/// Pilot's exit report in a machine's run dir, if it wrote one naming its containers (a
/// report without any is what a Pilot that failed before starting one leaves).
pub(super) fn read_exit_report(run_dir: &Path) -> Option<PilotExit> {
    read_machine_file(&run_dir.join(EXIT_FILE))
        .and_then(|b| PilotExit::parse(&b))
        .filter(|e| !e.containers.is_empty())
}

/// Whether `path` itself (never what a symlink there points to) is a mount point.
pub(super) fn is_mountpoint(path: &Path) -> bool {
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

/// Removes retired cgroup directories in a process of its own (a child of the pre-forked
/// spawner, or `hangar reap-cgroups DIR…`): the work takes ~100 ms per machine on cgroup v1
/// and must not hold up a stop or a destroy, nor be lost if the daemon is killed meanwhile (the
/// reaper goes on; anything left is found at the next start-up).
pub(super) fn reap_cgroups(exe: &Path, dead: Vec<PathBuf>) {
    if dead.is_empty() {
        return;
    }
    // Forked by the pre-forked spawner when there is one (no exec of the daemon's binary).
    if let Some(spawner) = hangar_sandbox::spawner::get() {
        match spawner.reap(&dead) {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!("the spawner cannot reap cgroups ({e}); executing the reaper")
            }
        }
    }
    // Started before the answer (so a daemon killed right after cannot lose it), waited for
    // on a thread of its own so that it is no zombie of the daemon.
    let spawned = std::process::Command::new(exe)
        .arg("reap-cgroups")
        .args(&dead)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => {
            tracing::warn!("cannot start the cgroup reaper ({e}); removing them here");
            hangar_sandbox::cgroup::reap_dead(&dead);
        }
    }
}
