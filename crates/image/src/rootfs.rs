//! Container root filesystems: overlayfs with the image's layers (shared, read-only) as lower
//! directories and a per-container `upper/` + `work/`. Preparing is two mkdirs and an index
//! lookup; mounting uses the new mount API so the layer list has no page-size limit and
//! layers can be passed as idmapped mount fds.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, UnmountFlags};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::idmap::{self, Userns};
use crate::store::ImageStore;

/// Everything needed to mount one container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsSpec {
    /// Image layer directories, top layer first (overlay's order).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
}

impl RootfsSpec {
    /// Options for a classic `mount -t overlay` (`lowerdir=top:…:bottom,upperdir=…,workdir=…`),
    /// with `\`, `:` and `,` escaped as overlayfs expects.
    pub fn mount_options(&self) -> String {
        let esc = |p: &Path| {
            let s = p.to_string_lossy();
            let mut o = String::with_capacity(s.len());
            for c in s.chars() {
                if matches!(c, '\\' | ':' | ',') {
                    o.push('\\');
                }
                o.push(c);
            }
            o
        };
        let lowers: Vec<String> = self.lowerdirs.iter().map(|p| esc(p)).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            esc(&self.upperdir),
            esc(&self.workdir)
        )
    }
}

impl ImageStore {
    /// Creates `<container_dir>/upper` and `/work` for the image `manifest_digest` and returns
    /// the overlay layout. `root_owner` is the host uid/gid the machine's root maps to: the
    /// upper dir is the root directory of the container and must belong to its root.
    /// Existing upper/work dirs are kept (a restarted machine keeps its writes).
    pub fn prepare_rootfs(
        &self,
        manifest_digest: &Digest,
        container_dir: &Path,
        root_owner: Option<(u32, u32)>,
    ) -> Result<RootfsSpec> {
        let lowerdirs = self.layer_dirs(manifest_digest)?;
        let upperdir = container_dir.join("upper");
        let workdir = container_dir.join("work");
        for d in [&upperdir, &workdir] {
            fs::create_dir_all(d).map_err(Error::io("create rootfs dir", d))?;
        }
        if let Some((uid, gid)) = root_owner {
            rustix::fs::chown(
                &upperdir,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::io("chown upper dir", &upperdir)(e.into()))?;
        }
        Ok(RootfsSpec {
            lowerdirs,
            upperdir,
            workdir,
        })
    }
}

/// Mounts the overlay described by `spec` at `target`. With `userns`, every lower layer is an
/// idmapped mount through it, so files root-owned in the layer are owned by the machine's root.
pub fn mount_rootfs(spec: &RootfsSpec, target: &Path, userns: Option<&Userns>) -> Result<()> {
    mount_rootfs_keeping(spec, target, userns, &mut Vec::new())
}

/// [`mount_rootfs`], leaving the fds it used on the way in `keep` (see
/// [`overlay_fd_keeping`]).
pub fn mount_rootfs_keeping(
    spec: &RootfsSpec,
    target: &Path,
    userns: Option<&Userns>,
    keep: &mut Vec<OwnedFd>,
) -> Result<()> {
    let mnt = overlay_fd_keeping(spec, userns, keep)?;
    idmap::attach(&mnt, target)
}

/// A detached overlay mount for `spec` (attach it with [`idmap::attach`], or inside a new
/// mount namespace).
pub fn overlay_fd(spec: &RootfsSpec, userns: Option<&Userns>) -> Result<OwnedFd> {
    overlay_fd_keeping(spec, userns, &mut Vec::new())
}

/// [`overlay_fd`], leaving in `keep` the fds it used on the way (the idmapped layers' detached
/// mounts, the filesystem context) for the caller to close when it suits: closing a detached
/// mount unmounts it, and an unmount waits for an RCU grace period (~0.5 ms measured here),
/// which a start should not wait for.
pub fn overlay_fd_keeping(
    spec: &RootfsSpec,
    userns: Option<&Userns>,
    keep: &mut Vec<OwnedFd>,
) -> Result<OwnedFd> {
    let err = |what: &str, e: rustix::io::Errno| Error::Mount {
        what: format!("overlay {what} (upper {})", spec.upperdir.display()),
        source: e.into(),
    };
    let fs_fd = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| err("fsopen", e))?;
    rustix::mount::fsconfig_set_string(&fs_fd, "source", "hangar").map_err(|e| err("source", e))?;
    // Layers are appended one at a time ("lowerdir+", Linux 6.8+), top first; with a userns
    // each is passed as an idmapped mount fd (Linux 6.13+), so nothing is attached anywhere.
    let mut held = Vec::new();
    for l in &spec.lowerdirs {
        match userns {
            Some(ns) => {
                let fd = idmap::idmapped_tree(l, ns)?;
                rustix::mount::fsconfig_set_fd(&fs_fd, "lowerdir+", &fd)
                    .map_err(|e| err(&format!("lowerdir+ fd {}", l.display()), e))?;
                held.push(fd);
            }
            None => rustix::mount::fsconfig_set_string(&fs_fd, "lowerdir+", l)
                .map_err(|e| err(&format!("lowerdir+ {}", l.display()), e))?,
        }
    }
    rustix::mount::fsconfig_set_string(&fs_fd, "upperdir", &spec.upperdir)
        .map_err(|e| err("upperdir", e))?;
    rustix::mount::fsconfig_set_string(&fs_fd, "workdir", &spec.workdir)
        .map_err(|e| err("workdir", e))?;
    rustix::mount::fsconfig_create(&fs_fd).map_err(|e| err("create", e))?;
    let mount = rustix::mount::fsmount(
        &fs_fd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| err("fsmount", e))?;
    keep.extend(held);
    keep.push(fs_fd);
    Ok(mount)
}

/// Unmounts a root filesystem (lazily if busy, so a stuck process cannot wedge cleanup).
///
/// Never follows a symlink at `target`: the dir it sits in may belong to the machine's uid.
pub fn unmount_rootfs(target: &Path) -> Result<()> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW).map_err(
                |e| Error::Mount {
                    what: format!("unmount {}", target.display()),
                    source: e.into(),
                },
            )
        }
        Err(rustix::io::Errno::INVAL) => Ok(()), // not mounted
        Err(e) => Err(Error::Mount {
            what: format!("unmount {}", target.display()),
            source: e.into(),
        }),
    }
}

/// Removes a container's writable layer (after [`unmount_rootfs`]).
pub fn remove_rootfs(container_dir: &Path) -> Result<()> {
    for d in ["upper", "work"] {
        let p = container_dir.join(d);
        match fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove rootfs dir", &p)(e)),
        }
    }
    Ok(())
}
