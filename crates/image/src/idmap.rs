//! Idmapped mounts: a layer stored with the tar's real uids (root = 0) appears owned by the
//! machine's root when seen through a mount idmapped with the machine's user namespace, so one
//! unpacked layer serves every machine without per-machine chowned copies.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::error::{Error, Result};

/// An open user namespace (`/proc/PID/ns/user`); the fd keeps it alive.
#[derive(Debug)]
pub struct Userns {
    fd: OwnedFd,
}

/// One line of a uid_map/gid_map: `inside` in the namespace is `outside` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl Userns {
    /// The user namespace of a running process (a machine's init, say).
    pub fn from_pid(pid: u32) -> Result<Self> {
        let p = format!("/proc/{pid}/ns/user");
        let f = File::open(&p).map_err(Error::io("open user namespace", &p))?;
        Ok(Userns { fd: f.into() })
    }

    pub fn from_fd(fd: OwnedFd) -> Self {
        Userns { fd }
    }

    /// A new user namespace with the given uid and gid maps and no process in it: a helper
    /// process is started inside it, the maps are written, the namespace is opened, and the
    /// helper is killed. Needs CAP_SETUID/CAP_SETGID (the daemon runs as root).
    pub fn create(uid_map: &[IdRange], gid_map: &[IdRange]) -> Result<Self> {
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: unshare is async-signal-safe and the forked child is single-threaded, which
        // CLONE_NEWUSER requires. spawn() returns only after exec, so the unshare has happened.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(Error::io("spawn user namespace helper", "/bin/sleep"))?;
        let pid = child.id();
        let res = (|| {
            write_map(pid, "uid_map", uid_map)?;
            write_map(pid, "gid_map", gid_map)?;
            Userns::from_pid(pid)
        })();
        let _ = child.kill();
        let _ = child.wait();
        res
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn write_map(pid: u32, file: &str, ranges: &[IdRange]) -> Result<()> {
    let p = format!("/proc/{pid}/{file}");
    let text: String = ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect();
    // The kernel wants the whole map in one write.
    File::options()
        .write(true)
        .open(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(Error::io("write id map", &p))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// A detached clone of `path` whose ids are mapped through `userns`: a file owned by uid 0 on
/// disk shows as the host uid the namespace maps 0 to. Usable as an overlay layer fd or
/// attachable with [`attach`].
pub fn idmapped_tree(path: &Path, userns: &Userns) -> Result<OwnedFd> {
    let what = || format!("idmapped mount of {}", path.display());
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| Error::Mount {
        what: what(),
        source: e.into(),
    })?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.fd.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `size` bytes of `attr`, a live repr(C) struct laid out as
    // the kernel's struct mount_attr; the path is a NUL-terminated empty string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(Error::Mount {
            what: what(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(tree)
}

/// Attaches a detached mount (from [`idmapped_tree`] or an overlay `fsmount`) at `target`.
pub fn attach(mount: &OwnedFd, target: &Path) -> Result<()> {
    rustix::mount::move_mount(
        mount,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| Error::Mount {
        what: format!("attach mount at {}", target.display()),
        source: e.into(),
    })
}

/// `path` bind-mounted at `target` with ids mapped through `userns`.
pub fn idmapped_bind(path: &Path, target: &Path, userns: &Userns) -> Result<()> {
    attach(&idmapped_tree(path, userns)?, target)
}
