//! Building a machine's sandbox. The daemon has a helper do it — a single-threaded process,
//! because forking and unsharing inside the multi-threaded daemon is unsafe — forked by its
//! pre-forked spawner ([`crate::spawner`]), or executed as `hangar sandbox-spawn <plan>`. The
//! helper:
//!
//! 1. creates the machine cgroup and joins it, so everything it forks is accounted there;
//! 2. forks a child that unshares a user namespace, and writes that child's uid/gid maps
//!    (machine root = `uid_base` on the host);
//! 3. runs `prepare` with the new user namespace (the caller makes the root filesystems);
//! 4. lets the child unshare mount, uts, ipc, net, cgroup and pid namespaces, attaches the
//!    root filesystems inside the new mount namespace (and plumbs the veth), then lets the
//!    child fork Pilot, which becomes PID 1 of the machine;
//! 5. reports Pilot's host pid and exits. Pilot is reparented to the daemon (a subreaper) and
//!    outlives it if the daemon dies.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{open, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::cgroup::{Hierarchy, Limits, MachineCgroup};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cgroup setup failed: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the machine failed: {0}")]
    Prepare(String),
    #[error("the sandbox child failed: {0}")]
    Child(String),
}

type Result<T> = std::result::Result<T, SpawnError>;

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SpawnError {
    let what = what.into();
    move |source| SpawnError::Sys { what, source }
}

fn ioerr(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpawnError {
    let what = what.into();
    move |source| SpawnError::Io { what, source }
}

/// Everything the helper needs, written by the daemon as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub machine_id: String,
    pub machine_dir: PathBuf,
    /// First host uid/gid of the machine's range; machine root maps to it.
    pub uid_base: u32,
    pub uid_count: u32,
    pub cgroup_root: PathBuf,
    /// Cgroup path below each hierarchy root (`hangar/<id>`).
    pub cgroup_path: PathBuf,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub pids: u64,
    pub hostname: String,
    /// Arguments for Pilot after the executable (`pilot --machine-dir …`).
    pub pilot_args: Vec<String>,
    /// Pilot's executable (`hangar-pilot`); without it, the helper's own (`hangar pilot`).
    #[serde(default)]
    pub pilot_exe: Option<PathBuf>,
    /// Where Pilot's own stdout/stderr go.
    pub pilot_log: PathBuf,
    /// The machine's veth into its network's bridge; `None` leaves it loopback only.
    #[serde(default)]
    pub net: Option<hangar_net::MachineNet>,
    /// Whole disks (`MAJ:MIN`) under the machine's files, for IO accounting.
    #[serde(default)]
    pub io_devices: Vec<String>,
    /// A veth pair to make without a machine's network: this host-side name, down and on no
    /// bridge, and `eth0` in the sandbox (a warm sandbox's, adopted at its take-over).
    #[serde(default)]
    pub spare_veth: Option<String>,
    /// Built in the idle scheduling class, Pilot included (a warm sandbox, made while starts
    /// run beside it; the take-over gives Pilot the normal class back).
    #[serde(default)]
    pub idle: bool,
}

impl SandboxSpec {
    pub fn cgroup(&self) -> Result<MachineCgroup> {
        Ok(MachineCgroup::new(
            Hierarchy::detect(&self.cgroup_root)?,
            self.cgroup_path.clone(),
        ))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            swap_bytes: self.swap_bytes,
            pids: self.pids,
            io_devices: self.io_devices.clone(),
        }
    }
}

/// Opens Pilot's log (its stdout and stderr) for a machine whose root is host uid `owner`. The
/// log sits in the machine's own dir: never follow a link planted there, and give the machine
/// the file opened, not whatever the path names.
pub fn open_pilot_log(path: &std::path::Path, owner: u32) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(ioerr(format!("open {}", path.display())))?;
    if !log.metadata().map_err(ioerr("stat pilot log"))?.is_file() {
        return Err(SpawnError::Child(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    std::os::unix::fs::fchown(&log, Some(owner), Some(owner)).map_err(ioerr("chown pilot log"))?;
    Ok(log)
}

/// Opens the user namespace of `pid` for the `prepare` step.
pub fn userns_fd(pid: Pid) -> Result<OwnedFd> {
    namespace_fd(pid, "user")
}

/// Opens `/proc/<pid>/ns/<kind>`.
fn namespace_fd(pid: Pid, kind: &str) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/{kind}");
    open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("open {path}")))
}

fn pipe_pair() -> Result<(File, File)> {
    // Close-on-exec, or Pilot (and every container after it) would hold the write ends and
    // the helper's reads would not see EOF until the machine exits.
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    Ok((File::from(r), File::from(w)))
}

/// Mounts made by `prepare` (detached: `fsmount`, `open_tree`) to attach inside the machine's
/// mount namespace, each at its absolute path (the daemon's paths are: its data dir is made
/// absolute at start).
pub type Attach = Vec<(OwnedFd, PathBuf)>;

/// Attaches `mounts` where this process is now (inside a machine's mount namespace, after
/// `setns`). A relative path would start at that namespace's root, not where it was meant to.
pub(crate) fn attach_all(mounts: &[(OwnedFd, PathBuf)]) -> std::result::Result<(), String> {
    for (mount, target) in mounts {
        if !target.is_absolute() {
            return Err(format!("{} is not an absolute path", target.display()));
        }
        hangar_image::idmap::attach(mount, target)
            .map_err(|e| format!("{e} (in the machine's namespace)"))?;
    }
    Ok(())
}

/// Runs the helper's job and returns Pilot's host pid. Must be called from a single-threaded
/// process. `prepare` runs in the helper (host root, host mount namespace) once the machine's
/// user namespace exists, with that namespace's fd: mounts it makes in the host's namespace
/// are inherited by Pilot, and the detached ones it returns are attached in the machine's
/// mount namespace only. That is where root filesystems go: a mount in the host's namespace
/// is copied into every sandbox made while it exists, and a copy holds the filesystem (a
/// stopped machine's writable layer) until that other machine ends.
pub fn spawn_machine(
    spec: &SandboxSpec,
    prepare: impl FnOnce(&OwnedFd) -> std::result::Result<Attach, String>,
) -> Result<i32> {
    if spec.idle {
        crate::cgroup::yield_to_machines();
    }
    let cgroup = spec.cgroup()?;
    cgroup.create(&spec.limits())?;
    // The helper is single-threaded (see above): moving itself is the cheap migration.
    cgroup.join_single_threaded()?;

    // Open the executable now: after the switch to the machine's uids, host paths such as a
    // 0700 home directory may not be traversable, but an open fd can still be executed.
    let exe_path = spec
        .pilot_exe
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let exe = open(
        exe_path.as_path(),
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("open {}", exe_path.display())))?;
    let log = open_pilot_log(&spec.pilot_log, spec.uid_base)?;
    let argv: Vec<CString> = std::iter::once("hangar".to_string())
        .chain(spec.pilot_args.iter().cloned())
        .map(|a| CString::new(a).map_err(|e| SpawnError::Child(e.to_string())))
        .collect::<Result<_>>()?;
    let env = [
        CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .map_err(|e| SpawnError::Child(e.to_string()))?,
    ];
    let hostname = spec.hostname.clone();
    let net = spec.net.clone();

    let (mut ready_r, mut ready_w) = pipe_pair()?; // child → helper: user namespace exists
    let (mut go_r, mut go_w) = pipe_pair()?; // helper → child: maps written, mounts ready
    let (mut pid_r, mut pid_w) = pipe_pair()?; // child → helper: Pilot's pid, or an error

    // SAFETY: the helper is single-threaded, so the child may allocate and run normal code.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop((ready_r, go_w, pid_r));
            let result = sandbox_child(
                &mut ready_w,
                &mut go_r,
                &hostname,
                net.as_ref(),
                &exe,
                &argv,
                &env,
                &log,
            );
            // Only errors come back here; Pilot's pid was reported on success.
            let msg = match result {
                Ok(pid) => format!("ok {pid}"),
                Err(e) => format!("err {e}"),
            };
            let _ = pid_w.write_all(msg.as_bytes());
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r, pid_w));
            let outcome = (|| {
                let mut b = [0u8; 1];
                ready_r
                    .read_exact(&mut b)
                    .map_err(|_| SpawnError::Child(child_error(&mut pid_r)))?;
                write_id_maps(child, spec.uid_base, spec.uid_count)?;
                let ns = userns_fd(child)?;
                let attach = prepare(&ns).map_err(SpawnError::Prepare)?;
                go_w.write_all(b"g")
                    .map_err(ioerr("signal sandbox child"))?;
                // The child has its namespaces now (its mounts private to it): its end of the
                // veth pair is made directly inside them, its root filesystems attached there.
                ready_r
                    .read_exact(&mut b)
                    .map_err(|_| SpawnError::Child(child_error(&mut pid_r)))?;
                match (&spec.net, &spec.spare_veth) {
                    (Some(net), _) => plumb_host_side(net, child)?,
                    (None, Some(spare)) => {
                        hangar_net::netlink::Netlink::open()
                            .and_then(|mut nl| {
                                nl.create_spare_veth(spare, "eth0", child.as_raw() as u32)
                            })
                            .map_err(ioerr(format!("create veth {spare}")))?;
                    }
                    (None, None) => {}
                }
                if !attach.is_empty() {
                    // For good: this helper ends after its answer.
                    enter_mount_namespace(child)?;
                    attach_all(&attach).map_err(SpawnError::Prepare)?;
                }
                go_w.write_all(b"v")
                    .map_err(ioerr("signal sandbox child"))?;
                let mut msg = String::new();
                pid_r
                    .read_to_string(&mut msg)
                    .map_err(ioerr("read pilot pid"))?;
                match msg.split_once(' ') {
                    Some(("ok", pid)) => pid
                        .trim()
                        .parse::<i32>()
                        .map_err(|_| SpawnError::Child(format!("bad pid {pid:?}"))),
                    Some(("err", e)) => Err(SpawnError::Child(e.to_string())),
                    _ => Err(SpawnError::Child(format!("unexpected reply {msg:?}"))),
                }
            })();
            drop(go_w);
            let _ = waitpid(child, None);
            if outcome.is_err() {
                // Out of the cgroup first: kill_all freezes it, and this helper is in it.
                let _ = cgroup.remove_process(std::process::id() as i32);
                let _ = cgroup.kill_all();
                let veth = spec
                    .net
                    .as_ref()
                    .map(|n| &n.host_veth)
                    .or(spec.spare_veth.as_ref());
                if let Some(veth) = veth {
                    // The pair goes with the namespace too, but not before the kernel gets to
                    // it: remove it now rather than leave it on the bridge.
                    if let Ok(mut nl) = hangar_net::netlink::Netlink::open() {
                        let _ = nl.delete_link(veth);
                    }
                }
            }
            outcome
        }
    }
}

/// The machine's veth pair: the host end on its network's bridge, the other end as `eth0` in
/// the network namespace of `child`. The bridge is the daemon's to create (it exists).
pub(crate) fn plumb_host_side(net: &hangar_net::MachineNet, child: Pid) -> Result<()> {
    let mut nl = hangar_net::netlink::Netlink::open().map_err(ioerr("open netlink"))?;
    let bridge = nl
        .link_index(&net.bridge)
        .map_err(ioerr(format!("look up bridge {}", net.bridge)))?
        .ok_or_else(|| SpawnError::Child(format!("bridge {} does not exist", net.bridge)))?;
    // The name is this boot's own: the previous boot's pair (same machine, same MAC) may
    // still be on the bridge until the kernel removes it with its namespace.
    let mac = hangar_net::plan::machine_mac(net.ipv4);
    nl.create_veth(
        &net.host_veth,
        bridge,
        "eth0",
        mac,
        child.as_raw() as u32,
        net.mtu,
    )
    .map_err(ioerr(format!("create veth {}", net.host_veth)))?;
    // So frames for the machine go to this port now, not to the previous boot's.
    let port = nl
        .link_index(&net.host_veth)
        .map_err(ioerr(format!("look up veth {}", net.host_veth)))?
        .ok_or_else(|| SpawnError::Child(format!("veth {} vanished", net.host_veth)))?;
    nl.pin_fdb(port, mac)
        .map_err(ioerr(format!("point the bridge at {}", net.host_veth)))
}

/// Inside the machine's network namespace: loopback and `eth0` up, the machine's addresses,
/// its network's /48 on-link, default routes through the host.
pub(crate) fn plumb_machine_side(net: Option<&hangar_net::MachineNet>) -> std::io::Result<()> {
    use hangar_net::plan::{IPV4_POOL_PREFIX_LEN, MACHINE_PREFIX_LEN, NETWORK_PREFIX_LEN};
    use std::net::IpAddr;
    let Some(net) = net else {
        return crate::net::loopback_up();
    };
    let mut nl = hangar_net::netlink::Netlink::open()?;
    let lo = nl
        .link_index("lo")?
        .ok_or_else(|| std::io::Error::other("no loopback device"))?;
    nl.set_up(lo)?;
    let eth0 = nl
        .link_index("eth0")?
        .ok_or_else(|| std::io::Error::other("eth0 did not arrive"))?;
    nl.add_address(eth0, IpAddr::V6(net.ipv6), MACHINE_PREFIX_LEN)?;
    nl.add_address(eth0, IpAddr::V4(net.ipv4), IPV4_POOL_PREFIX_LEN)?;
    nl.set_up(eth0)?;
    nl.add_route(
        IpAddr::V6(net.network_prefix),
        NETWORK_PREFIX_LEN,
        None,
        eth0,
    )?;
    nl.add_route(
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        0,
        Some(IpAddr::V6(net.ipv6_gateway)),
        eth0,
    )?;
    nl.add_route(
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        0,
        Some(IpAddr::V4(net.ipv4_gateway)),
        eth0,
    )
}

fn child_error(pid_r: &mut File) -> String {
    let mut msg = String::new();
    let _ = pid_r.read_to_string(&mut msg);
    msg.strip_prefix("err ").unwrap_or(&msg).to_string()
}

fn write_id_maps(child: Pid, base: u32, count: u32) -> Result<()> {
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, format!("0 {base} {count}\n"))
            .map_err(ioerr(format!("write {path}")))?;
    }
    Ok(())
}

/// Enters the mount namespace of `pid` (root and working directory move to its root).
fn enter_mount_namespace(pid: Pid) -> Result<()> {
    nix::sched::setns(namespace_fd(pid, "mnt")?, CloneFlags::CLONE_NEWNS)
        .map_err(sys("enter the machine's mount namespace"))
}

/// The first child: enters the new namespaces and forks Pilot. Returns Pilot's pid.
#[allow(clippy::too_many_arguments)]
fn sandbox_child(
    ready_w: &mut File,
    go_r: &mut File,
    hostname: &str,
    net: Option<&hangar_net::MachineNet>,
    exe: &OwnedFd,
    argv: &[CString],
    env: &[CString],
    log: &File,
) -> std::result::Result<i32, String> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare user namespace: {e}"))?;
    ready_w.write_all(b"r").map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    go_r.read_exact(&mut b)
        .map_err(|_| "helper gave up before the namespaces were ready".to_string())?;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| format!("setresgid: {e}"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| format!("setresuid: {e}"))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(|e| format!("unshare namespaces: {e}"))?;
    // Mounts made from here on stay inside the machine (the root filesystems the helper
    // attaches next among them), and the host's later ones stay out.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    ready_w.write_all(b"n").map_err(|e| e.to_string())?;
    go_r.read_exact(&mut b).map_err(|_| {
        "the helper could not attach the root filesystems or create the veth".to_string()
    })?;
    plumb_machine_side(net).map_err(|e| format!("set up the machine's network: {e}"))?;
    nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
    // SAFETY: single-threaded (the helper's only thread forked us).
    match unsafe { fork() }.map_err(|e| format!("fork pilot: {e}"))? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => {
            let err = pilot_child(exe, argv, env, log);
            let _ = writeln!(&*log, "hangar: starting pilot failed: {err}");
            // SAFETY: exit without unwinding into the parent's state.
            unsafe { libc::_exit(127) }
        }
    }
}

/// PID 1 of the machine before it becomes Pilot.
fn pilot_child(exe: &OwnedFd, argv: &[CString], env: &[CString], log: &File) -> String {
    use nix::mount::{mount, MsFlags};
    // A /proc of the machine's own pid namespace.
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        return format!("mount /proc: {e}");
    }
    if let Err(e) = nix::unistd::setsid() {
        return format!("setsid: {e}");
    }
    // Stdin stays: it is the helper's, which the daemon made Pilot's spec (a sealed memfd that
    // Pilot reads and then replaces with /dev/null).
    for (src, dst) in [(log.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
        // SAFETY: plain dup2 on fds we own.
        if unsafe { libc::dup2(src, dst) } < 0 {
            return format!("dup2: {}", std::io::Error::last_os_error());
        }
    }
    let err = nix::unistd::execveat(
        exe.as_fd(),
        c"",
        argv,
        env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    );
    format!("exec pilot: {err:?}")
}
