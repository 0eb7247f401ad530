//! Turning a freshly cloned process (new mount + pid namespace, inside the machine's user
//! namespace) into a container: its root filesystem with /proc, a minimal /dev and masked paths,
//! then user, capabilities, no_new_privs and seccomp, then exec. Written by hand because it runs
//! nested under Pilot inside an already-built user namespace, where youki's libcontainer would
//! insist on building every namespace itself; the steps follow the OCI runtime spec's defaults.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::RawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::in_root::{fd_path, InRoot};

/// What Pilot hands to the container setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerProcess {
    /// The container's root filesystem, already mounted (overlay of the image layers).
    pub rootfs: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Files to write into the rootfs before pivoting: (path, content, mode).
    #[serde(default)]
    pub files: Vec<ContainerFile>,
    /// Machine-level volumes bind-mounted into the container: (host path, container path).
    #[serde(default)]
    pub binds: Vec<(PathBuf, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Paths hidden from containers (the OCI/Docker defaults).
const MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/interrupts",
];
const MASKED_DIRS: &[&str] = &[
    "/proc/acpi",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn bind(src: &Path, dst: &Path, flags: MsFlags) -> Result<(), String> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(|e| err(&format!("bind {} on {}", src.display(), dst.display()), e))
}

/// Sets up the container and starts its process behind the container's init (see
/// [`crate::init`]): this process becomes PID 1 and never returns once the workload is forked;
/// how the workload ended goes to `status_fd`. Returns only on failure.
pub fn exec_container(p: &ContainerProcess, status_fd: RawFd, ready_fd: RawFd) -> String {
    match setup(p) {
        Ok(()) => start_workload(p, status_fd, ready_fd, None),
        Err(e) => e,
    }
}

/// Like [`exec_container`], with the process on a terminal of the container's own devpts
/// (`init.tty`): the pty is opened after the setup, so `tty` inside names a real
/// `/dev/pts/N`; its master goes back to Pilot over `master_to` (SCM_RIGHTS).
pub fn exec_container_on_tty(
    p: &ContainerProcess,
    master_to: RawFd,
    status_fd: RawFd,
    ready_fd: RawFd,
) -> String {
    match setup(p) {
        Ok(()) => start_workload(p, status_fd, ready_fd, Some(master_to)),
        Err(e) => e,
    }
}

/// Forks the workload (which execs `p`, on its own terminal when `tty` is given) and runs the
/// init in this process. Returns only on failure, in the workload's child.
fn start_workload(
    p: &ContainerProcess,
    status_fd: RawFd,
    ready_fd: RawFd,
    tty: Option<RawFd>,
) -> String {
    let old_mask = match crate::init::block_all_signals() {
        Ok(m) => m,
        Err(e) => return e,
    };
    crate::init::rename_process();
    // SAFETY: this container child is single-threaded (a clone of single-threaded Pilot).
    match unsafe { nix::unistd::fork() } {
        Err(e) => err("fork the workload", e),
        Ok(nix::unistd::ForkResult::Child) => {
            if let Err(e) = crate::init::reset_signals_for_workload(&old_mask) {
                return e;
            }
            if let Some(master_to) = tty {
                if let Err(e) = own_terminal(master_to) {
                    return e;
                }
            }
            exec(p, ready_fd)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // The init holds nothing of the workload's: not its output pipes (their readers
            // see EOF when the workload's side closes), not Pilot's exec-failure pipe.
            let status = keep_only(status_fd);
            crate::init::run(child, status)
        }
    }
}

/// Closes every descriptor but `fd`, which moves to 3; returns its new number.
fn keep_only(fd: RawFd) -> RawFd {
    const KEPT: RawFd = 3;
    // SAFETY: descriptor juggling in a process that owns all of them and uses none after.
    unsafe {
        if fd != KEPT {
            libc::dup2(fd, KEPT);
        }
        for std_fd in 0..KEPT {
            libc::close(std_fd);
        }
        libc::syscall(libc::SYS_close_range, KEPT + 1, u32::MAX, 0);
    }
    KEPT
}

fn own_terminal(master_to: RawFd) -> Result<(), String> {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| err("open /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| err("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| err("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| err("ptsname", e))?;
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on the master we own.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err(&format!("open {name}"), e))?;
    nix::unistd::setsid().map_err(|e| err("setsid", e))?;
    // SAFETY: plain ioctl/dup2 on fds this fresh child owns.
    unsafe {
        if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
            return Err(err("TIOCSCTTY", std::io::Error::last_os_error()));
        }
        for dst in 0..3 {
            if libc::dup2(slave.as_raw_fd(), dst) < 0 {
                return Err(err("dup2", std::io::Error::last_os_error()));
            }
        }
    }
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"m")];
    sendmsg::<()>(
        master_to,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err("hand the terminal to pilot", e))?;
    Ok(())
}

fn setup(p: &ContainerProcess) -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("make mounts private", e))?;
    let root = &p.rootfs;
    // pivot_root needs the new root to be a mount point.
    bind(root, root, MsFlags::MS_REC)?;
    // From here on every path inside the rootfs is resolved inside it (see in_root): the image
    // or a persisted rootfs may hold symlinks that point at the host's directories.
    let in_root = InRoot::open(root).map_err(|e| err("open rootfs", e))?;
    write_files(&in_root, &p.files)?;
    for (host, target) in &p.binds {
        let dst = in_root
            .mkdir_all(target, 0o755)
            .map_err(|e| err("volume mount point", e))?;
        bind(host, &fd_path(&dst), MsFlags::MS_REC)?;
    }
    let proc_dir = in_root
        .mkdir_all("proc", 0o555)
        .map_err(|e| err("mkdir /proc", e))?;
    mount(
        Some("proc"),
        &fd_path(&proc_dir),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("mount /proc", e))?;
    let sys_dir = in_root
        .mkdir_all("sys", 0o555)
        .map_err(|e| err("mkdir /sys", e))?;
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    if mount(
        Some("sysfs"),
        &fd_path(&sys_dir),
        Some("sysfs"),
        ro,
        None::<&str>,
    )
    .is_err()
    {
        // Without sysfs rights, an empty read-only tmpfs keeps /sys from showing the host.
        mount(
            Some("tmpfs"),
            &fd_path(&sys_dir),
            Some("tmpfs"),
            ro,
            Some("size=0"),
        )
        .map_err(|e| err("mount /sys", e))?;
    }
    setup_dev(&in_root)?;

    nix::unistd::fchdir(in_root.fd()).map_err(|e| err("chdir rootfs", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach old root", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;

    mask_paths()?;
    Ok(())
}

fn write_files(root: &InRoot, files: &[ContainerFile]) -> Result<(), String> {
    for f in files {
        root.write_file(&f.path, &f.content, f.mode)
            .map_err(|e| err("place file", e))?;
    }
    Ok(())
}

fn setup_dev(root: &InRoot) -> Result<(), String> {
    let mount_point = root
        .mkdir_all("dev", 0o755)
        .map_err(|e| err("mkdir /dev", e))?;
    mount(
        Some("tmpfs"),
        &fd_path(&mount_point),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| err("mount /dev", e))?;
    // The fresh tmpfs is ours alone (no links the image planted), so plain paths under its
    // descriptor are safe from here on.
    let dev_fd = root.open_dir("dev").map_err(|e| err("open /dev", e))?;
    let dev = fd_path(&dev_fd);
    // Device nodes cannot be created in a user namespace; bind the host's harmless ones.
    for name in DEVICES {
        let target = dev.join(name);
        fs::write(&target, b"").map_err(|e| err(&format!("create /dev/{name}"), e))?;
        bind(&Path::new("/dev").join(name), &target, MsFlags::empty())?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(|e| err("mkdir /dev/pts", e))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| err("mount /dev/pts", e))?;
    symlink("pts/ptmx", dev.join("ptmx")).map_err(|e| err("link /dev/ptmx", e))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| err("mkdir /dev/shm", e))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| err("mount /dev/shm", e))?;
    let mqueue = dev.join("mqueue");
    fs::create_dir(&mqueue).map_err(|e| err("mkdir /dev/mqueue", e))?;
    let _ = mount(
        Some("mqueue"),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(|e| err(&format!("link /dev/{link}"), e))?;
    }
    Ok(())
}

fn mask_paths() -> Result<(), String> {
    for path in MASKED_FILES {
        if Path::new(path).exists() {
            bind(Path::new("/dev/null"), Path::new(path), MsFlags::empty())?;
        }
    }
    for path in MASKED_DIRS {
        if Path::new(path).is_dir() {
            mount(
                Some("tmpfs"),
                *path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
            .map_err(|e| err(&format!("mask {path}"), e))?;
        }
    }
    for path in READONLY_PATHS {
        if !Path::new(path).exists() {
            continue;
        }
        bind(Path::new(path), Path::new(path), MsFlags::MS_REC)?;
        mount(
            None::<&str>,
            *path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| err(&format!("read-only {path}"), e))?;
    }
    Ok(())
}

/// Runs `argv` inside a running container, from a child that Pilot cloned into the container's
/// pid namespace: joins its mount namespace (`mnt_ns`, an open `/proc/<init>/ns/mnt`, which also
/// moves root and cwd to the container's root), then takes the container's user, capabilities,
/// no_new_privs, seccomp filter, working directory and environment, like its init process.
/// Returns only on failure.
pub fn exec_in_container(
    mnt_ns: std::os::fd::BorrowedFd<'_>,
    p: &ContainerProcess,
    argv: &[String],
) -> ExecFailure {
    if let Err(e) = nix::sched::setns(mnt_ns, nix::sched::CloneFlags::CLONE_NEWNS) {
        return ExecFailure::Setup(err("join the container's mount namespace", e));
    }
    exec_argv(p, argv, None)
}

/// Why a process did not start in a container: the container could not be entered as its
/// process (a platform or config fault), or the program itself could not run (a result of the
/// command, as a shell reports it: 127 not found, 126 not executable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFailure {
    Setup(String),
    Program { code: i32, message: String },
}

impl ExecFailure {
    pub fn message(&self) -> &str {
        match self {
            ExecFailure::Setup(m) | ExecFailure::Program { message: m, .. } => m,
        }
    }
}

/// The byte a container's workload writes on Pilot's exec pipe once everything before its
/// `execve` succeeded: the container counts as started from there, as on Fly (whose init
/// reports the machine started and then execs) and with runc (whose `start` does not wait for
/// the exec). An `execve` that fails after it (a binary of the wrong format, a missing ELF
/// interpreter) is the workload's exit: its reason goes to the container's stderr, its code
/// is a shell's (126, 127).
pub const READY_TO_EXEC: u8 = 0x06;

/// Execs the workload; returns only if the failure came before [`READY_TO_EXEC`].
fn exec(p: &ContainerProcess, ready_fd: RawFd) -> String {
    exec_argv(p, &p.argv, Some(ready_fd)).message().to_string()
}

/// Execs `argv` as the container's process. With `ready_fd`, [`READY_TO_EXEC`] is written
/// there just before the `execve`, and a failing `execve` ends the process (see there).
fn exec_argv(p: &ContainerProcess, argv: &[String], ready_fd: Option<RawFd>) -> ExecFailure {
    if let Err(e) = drop_privileges(p) {
        return ExecFailure::Setup(e);
    }
    if let Err(e) = std::env::set_current_dir(&p.cwd) {
        return ExecFailure::Setup(err(&format!("chdir {}", p.cwd), e));
    }
    let Some(program) = argv.first() else {
        return ExecFailure::Program {
            code: 127,
            message: "no command to run (the image has no entrypoint or cmd; set init.cmd)".into(),
        };
    };
    let path_var = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let resolved = if program.contains('/') {
        // A missing program fails the start, as runc's `create` does: checked before the
        // container counts as started ([`READY_TO_EXEC`]).
        if let Err(e) = fs::metadata(program) {
            if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
                return ExecFailure::Program {
                    code: 127,
                    message: format!("exec {program}: {}", nix::errno::Errno::ENOENT.desc()),
                };
            }
        }
        PathBuf::from(program)
    } else {
        match path_var
            .split(':')
            .map(|d| Path::new(d).join(program))
            .find(|c| c.is_file())
        {
            Some(c) => c,
            None => {
                return ExecFailure::Program {
                    code: 127,
                    message: format!("executable {program:?} not found in PATH {path_var}"),
                }
            }
        }
    };
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("argument {s:?} contains NUL"));
    let argv: Result<Vec<CString>, String> = argv.iter().map(|a| to_c(a)).collect();
    let env: Result<Vec<CString>, String> = p.env.iter().map(|a| to_c(a)).collect();
    let (argv, env) = match (argv, env) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return ExecFailure::Setup(e),
    };
    let path = match CString::new(resolved.as_os_str().as_encoded_bytes()) {
        Ok(p) => p,
        Err(_) => return ExecFailure::Setup("executable path contains NUL".into()),
    };
    if let Some(fd) = ready_fd {
        // SAFETY: one byte to the exec pipe this process holds.
        if unsafe { libc::write(fd, [READY_TO_EXEC].as_ptr().cast(), 1) } != 1 {
            return ExecFailure::Setup(err(
                "tell Pilot the container is ready",
                std::io::Error::last_os_error(),
            ));
        }
    }
    // execve returns only on failure.
    let failure = match nix::unistd::execve(&path, &argv, &env) {
        Err(e) => {
            let message = format!("exec {}: {}", resolved.display(), e.desc());
            match e {
                nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {
                    ExecFailure::Program { code: 127, message }
                }
                nix::errno::Errno::EACCES
                | nix::errno::Errno::ENOEXEC
                | nix::errno::Errno::EPERM
                | nix::errno::Errno::EISDIR => ExecFailure::Program { code: 126, message },
                _ => ExecFailure::Setup(message),
            }
        }
        Ok(never) => match never {},
    };
    if ready_fd.is_some() {
        // Pilot no longer listens: the reason goes where the program's own errors would.
        let line = format!("{}\n", failure.message());
        // SAFETY: writing our own buffer to stderr, then leaving without unwinding.
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
            libc::_exit(match &failure {
                ExecFailure::Program { code, .. } => *code,
                ExecFailure::Setup(_) => 127,
            });
        }
    }
    failure
}

/// Limits the container to Docker's capabilities, switches user, sets no_new_privs and loads
/// the seccomp filter (last, so the setup above may use what the filter forbids).
fn drop_privileges(p: &ContainerProcess) -> Result<(), String> {
    let keep: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities the running kernel does not know cannot be dropped; ignore them.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    let gids: Vec<nix::unistd::Gid> = p
        .additional_gids
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(|e| err("setgroups", e))?;
    let gid = nix::unistd::Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| err("setgid", e))?;
    // Keep capabilities across setuid so root keeps its set; others lose them below.
    let uid = nix::unistd::Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| err("setuid", e))?;
    let set: caps::CapsHashSet = if p.uid == 0 { keep } else { Default::default() };
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())
        .map_err(|e| err("clear inheritable caps", e))?;
    caps::set(None, CapSet::Effective, &set).map_err(|e| err("set effective caps", e))?;
    caps::set(None, CapSet::Permitted, &set).map_err(|e| err("set permitted caps", e))?;
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(err("no_new_privs", std::io::Error::last_os_error()));
    }
    crate::seccomp::apply_default_filter().map_err(|e| err("seccomp", e))
}
