//! The spawn helper: `hangar sandbox-spawn <plan>`, a fresh single-threaded process the daemon
//! runs for each machine start. It builds the sandbox (cgroup, namespaces), mounts each
//! container's root filesystem through the machine's user namespace (and the disk images of
//! sized layers and volumes), forks Pilot, and prints Pilot's pid. The daemon never unshares
//! anything itself: it is multi-threaded.

use std::path::{Path, PathBuf};

use hangar_image::RootfsSpec;
use serde::{Deserialize, Serialize};

use crate::SandboxSpec;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("reading the spawn plan {path}: {source}")]
    Plan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the spawn plan: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("{0}")]
    Sandbox(String),
}

/// What the spawn helper needs: the sandbox and the root filesystems to mount for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpawnPlan {
    pub sandbox: SandboxSpec,
    pub mounts: Vec<MountPlan>,
    /// `temp_dir` volumes with a size: a tmpfs (memory) or a loop-mounted ext4 image (disk).
    #[serde(default, alias = "tmpfs")]
    pub volume_mounts: Vec<VolumeMountPlan>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeMountPlan {
    pub target: PathBuf,
    pub size_mb: u64,
    pub uid: u32,
    /// For `storage_type: disk`: the ext4 image (made to `size_mb`) mounted at `target`, so the
    /// volume cannot grow past its size into the host's disk.
    #[serde(default)]
    pub disk_image: Option<PathBuf>,
    /// A persistent volume's ext4 image: loop-mounted, then bound at `target` idmapped through
    /// the machine's user namespace, so its files keep the ids the machine gave them whatever
    /// uid range the machine gets at its next boot.
    #[serde(default)]
    pub persistent_image: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MountPlan {
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
    pub target: PathBuf,
    /// With `rootfs.size_gb`: the ext4 image that holds the upper and work dirs, so that the
    /// container's writes cannot grow past the size into the host's disk.
    #[serde(default)]
    pub disk: Option<SizedLayer>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SizedLayer {
    pub image: PathBuf,
    /// Where the image is mounted; `upperdir` and `workdir` are inside it.
    pub target: PathBuf,
    /// The host uid of the machine's root, which owns the upper dir.
    pub owner: u32,
}

impl MountPlan {
    fn rootfs(&self) -> RootfsSpec {
        RootfsSpec {
            lowerdirs: self.lowerdirs.clone(),
            upperdir: self.upperdir.clone(),
            workdir: self.workdir.clone(),
        }
    }

    /// The root filesystem as a detached overlay (layers idmapped through `userns`) with the
    /// path to attach it at inside the machine's mount namespace; the layers' mounts go to
    /// `keep` (see `overlay_fd_keeping`).
    pub(crate) fn overlay_to_attach(
        &self,
        userns: &hangar_image::Userns,
        keep: &mut Vec<std::os::fd::OwnedFd>,
    ) -> Result<(std::os::fd::OwnedFd, PathBuf), String> {
        let overlay = hangar_image::rootfs::overlay_fd_keeping(&self.rootfs(), Some(userns), keep)
            .map_err(|e| e.to_string())?;
        Ok((overlay, self.target.clone()))
    }
}

/// Mounts a sized writable layer's disk image and makes its upper (the container's root dir,
/// owned by the machine's root) and work dirs.
fn mount_sized_layer(disk: &SizedLayer, upper: &Path, work: &Path) -> Result<(), String> {
    mount_ext4_image(&disk.image, &disk.target)?;
    for d in [upper, work] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    std::os::unix::fs::chown(upper, Some(disk.owner), Some(disk.owner))
        .map_err(|e| format!("chown {}: {e}", upper.display()))
}

/// util-linux sets up the loop device with autoclear: it goes when the mount does.
fn mount_ext4_image(image: &Path, target: &Path) -> Result<(), String> {
    let status = std::process::Command::new(system_tool("mount"))
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
        .arg(image)
        .arg(target)
        .status()
        .map_err(|e| format!("mount {}: {e}", target.display()))?;
    if !status.success() {
        return Err(format!(
            "mount {}: mount exited with {status}",
            target.display()
        ));
    }
    Ok(())
}

/// Mounts a volume's image at a private staging dir beside `target`, binds it at `target`
/// idmapped through `userns`, and drops the staging mount (the bind keeps the filesystem, and
/// with it the autocleared loop device, until the machine's cleanup unmounts `target`).
fn mount_persistent_volume(
    image: &Path,
    target: &Path,
    userns: &hangar_image::Userns,
) -> Result<(), String> {
    let name = target
        .file_name()
        .ok_or_else(|| format!("bad volume target {}", target.display()))?;
    let staging = target.with_file_name(format!(".{}.staging", name.to_string_lossy()));
    std::fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    let mounted = mount_ext4_image(image, &staging).and_then(|()| {
        hangar_image::idmap::idmapped_bind(&staging, target, userns).map_err(|e| e.to_string())
    });
    let _ = nix::mount::umount2(&staging, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&staging);
    mounted
}

/// Entry point of `hangar sandbox-spawn <plan>`: builds the sandbox, mounts the root
/// filesystems through the machine's user namespace and prints Pilot's pid.
pub fn spawn_main(plan_path: &Path) -> Result<(), SpawnError> {
    let bytes = std::fs::read(plan_path).map_err(|source| SpawnError::Plan {
        path: plan_path.to_path_buf(),
        source,
    })?;
    let pid = spawn_planned(&bytes)?;
    println!("{pid}");
    Ok(())
}

/// Builds the sandbox a JSON [`SpawnPlan`] describes, mounts its root filesystems through the
/// machine's user namespace, and returns Pilot's pid. Must run in a single-threaded process
/// whose stdin is Pilot's spec.
pub fn spawn_planned(plan: &[u8]) -> Result<i32, SpawnError> {
    let plan: SpawnPlan = serde_json::from_slice(plan)?;
    // Closed by this helper's exit, after its answer (see `overlay_fd_keeping`): the spawner's
    // helper and `hangar sandbox-spawn` both exit right after answering.
    let mut close_later = Vec::new();
    let pid = crate::spawn_machine(&plan.sandbox, |ns| {
        let fd = ns.try_clone().map_err(|e| e.to_string())?;
        let userns = hangar_image::Userns::from_fd(fd);
        let mut attach = Vec::new();
        for m in &plan.mounts {
            match &m.disk {
                // A sized layer's disk is found and unmounted in the host's namespace (its
                // loop device goes with it), so its overlay is mounted there too.
                Some(disk) => {
                    mount_sized_layer(disk, &m.upperdir, &m.workdir)?;
                    hangar_image::rootfs::mount_rootfs_keeping(
                        &m.rootfs(),
                        &m.target,
                        Some(&userns),
                        &mut close_later,
                    )
                    .map_err(|e| e.to_string())?;
                }
                // In the machine's namespace only (see `spawn_machine`), as a warm sandbox's.
                None => attach.push(m.overlay_to_attach(&userns, &mut close_later)?),
            }
        }
        for t in &plan.volume_mounts {
            if let Some(image) = &t.persistent_image {
                mount_persistent_volume(image, &t.target, &userns)
                    .map_err(|e| format!("volume: {e}"))?;
                continue;
            }
            if let Some(image) = &t.disk_image {
                // Cleanup unmounts everything under the volumes dir (and so frees the loop).
                mount_ext4_image(image, &t.target).map_err(|e| format!("disk volume: {e}"))?;
                continue;
            }
            let opts = format!("size={}m,mode=0755,uid={},gid={}", t.size_mb, t.uid, t.uid);
            nix::mount::mount(
                Some("tmpfs"),
                &t.target,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|e| format!("mount tmpfs volume {}: {e}", t.target.display()))?;
        }
        Ok(attach)
    })
    .map_err(|e| SpawnError::Sandbox(e.to_string()))?;
    std::mem::forget(close_later);
    Ok(pid)
}

/// A system tool by absolute path when it is in the usual place (a daemon's PATH may lack
/// the sbin dirs), else by name.
pub fn system_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
