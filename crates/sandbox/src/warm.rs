//! Sandboxes made ahead of the machines that will use them (the daemon's pool): a cgroup, the
//! user, mount, uts, ipc, net, cgroup and pid namespaces, and Pilot started and waiting, all
//! built by [`crate::spawn_machine`] with nothing of a machine in them. Taking one over for a
//! machine is what is left of a start: its cgroup renamed to the machine's with the machine's
//! limits, its root filesystems mounted into the sandbox's mount namespace (idmapped through
//! its user namespace), its veth and hostname; then the daemon hands Pilot the machine's spec
//! (Pilot's claim message, `hangar_pilot::pooled`). A start saves the cgroup, the namespaces,
//! the veth, Pilot's exec and its start-up: ~2.3 ms here (docs/decisions.md, "Warm
//! sandboxes").
//!
//! Only cgroup v1 can rename a cgroup (its processes stay in it), so only v1 hosts pool; and
//! only machines whose mounts are all overlays: loop-mounted disks (sized root filesystems,
//! volumes) are found and unmounted by the daemon in the host's mount namespace.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};

use crate::cgroup::MachineCgroup;
use crate::plan::SpawnPlan;

/// A sandbox of the pool, as its take-over needs to know it.
#[derive(Debug, Clone)]
pub struct WarmSandbox {
    /// Pilot's host pid; the daemon holds a pidfd for it too, and trusts only what that
    /// pidfd confirms.
    pub pid: i32,
    /// The warm cgroup below each hierarchy root (`hangar/.warm-…`).
    pub cgroup_path: PathBuf,
    /// The host end of the veth made with the sandbox (`eth0` inside), when there is one.
    pub spare_veth: Option<String>,
}

/// Name prefix of warm sandboxes' cgroups, beside the machines' ones.
pub const WARM_CGROUP_PREFIX: &str = ".warm-";

/// Whether the process behind `pidfd` still runs: a pidfd turns readable when its process
/// ends (a signal would still reach it as a zombie), and a pid reused by another process
/// never makes it so.
pub fn alive(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut poll, 1, 0) == 0 }
}

/// The host end of a warm sandbox's spare veth becomes the machine's, under the spare's name
/// (the daemon names the machine's veth so: a rename waits for an RCU grace period): on its
/// network's bridge, up, and the bridge's entry for the machine's MAC pinned to it.
fn adopt_host_side(spare: &str, net: &hangar_net::MachineNet) -> std::io::Result<()> {
    if spare != net.host_veth {
        return Err(std::io::Error::other(format!(
            "the machine's veth is {}, not the warm sandbox's {spare}",
            net.host_veth
        )));
    }
    let mut nl = hangar_net::netlink::Netlink::open()?;
    let bridge = nl
        .link_index(&net.bridge)?
        .ok_or_else(|| std::io::Error::other(format!("bridge {} does not exist", net.bridge)))?;
    let port = nl
        .link_index(spare)?
        .ok_or_else(|| std::io::Error::other(format!("the warm sandbox's veth {spare} is gone")))?;
    nl.adopt_veth(port, bridge, net.mtu)?;
    nl.pin_fdb(port, hangar_net::plan::machine_mac(net.ipv4))
}

// A take-over is done by the daemon (cgroup, root filesystems made detached, the veth's host
// end, the scheduling class, and from a thread in the sandbox's namespaces its network and
// hostname) and by the sandbox's Pilot when claimed (the root filesystems attached in its
// mount namespace), with no helper process between them: a fork of the spawner and its
// plan's round trip were ~0.5 ms of each warm start. The daemon's parts are independent and
// run side by side.

/// Whether `plan`'s machine can take a warm sandbox: its mounts must all be overlays.
pub fn takes_warm(plan: &SpawnPlan) -> Result<(), String> {
    if !plan.volume_mounts.is_empty() || plan.mounts.iter().any(|m| m.disk.is_some()) {
        return Err("a warm sandbox takes overlay root filesystems only".into());
    }
    Ok(())
}

/// The warm sandbox's cgroup becomes the machine's (renamed, the machine's limits).
pub fn take_cgroup(plan: &SpawnPlan, warm: &WarmSandbox) -> Result<(), String> {
    let cgroup = plan.sandbox.cgroup().map_err(|e| e.to_string())?;
    let warm_cgroup = MachineCgroup::new(cgroup.hierarchy().clone(), warm.cgroup_path.clone());
    cgroup
        .take_over(&warm_cgroup, &plan.sandbox.limits())
        .map_err(|e| e.to_string())
}

/// The machine's root filesystems, made in the host's mount namespace (where the layers'
/// paths are) as detached overlays idmapped through the sandbox's user namespace, each with
/// where Pilot attaches it; and the layers' mounts, to be closed once Pilot holds them (see
/// `overlay_fd_keeping`: closing them unmounts, which waits for an RCU grace period).
pub fn make_root_filesystems(
    plan: &SpawnPlan,
    warm: &WarmSandbox,
    pidfd: &OwnedFd,
) -> Result<Prepared, String> {
    // The user namespace is opened by pid, then the pidfd confirms that pid was still Pilot.
    let userns = hangar_image::Userns::from_pid(warm.pid as u32).map_err(|e| e.to_string())?;
    if !alive(pidfd) {
        return Err(format!("the warm sandbox's Pilot ({}) is gone", warm.pid));
    }
    let mut prepared = Prepared::default();
    for m in &plan.mounts {
        prepared
            .mounts
            .push(m.overlay_to_attach(&userns, &mut prepared.close_later)?);
    }
    Ok(prepared)
}

/// Root filesystems for Pilot to attach ([`make_root_filesystems`]).
#[derive(Default)]
pub struct Prepared {
    /// Each detached overlay and its target inside the sandbox.
    pub mounts: Vec<(OwnedFd, PathBuf)>,
    /// The layers' detached mounts: close them after Pilot attached the overlays.
    pub close_later: Vec<OwnedFd>,
}

/// The host's end of the machine's network: the sandbox's spare veth adopted. (A sandbox made
/// without one, by a daemon without networking, is not taken for a machine with it.)
pub fn adopt_network(plan: &SpawnPlan, warm: &WarmSandbox) -> Result<(), String> {
    let Some(net) = &plan.sandbox.net else {
        return Ok(());
    };
    match &warm.spare_veth {
        Some(spare) => adopt_host_side(spare, net).map_err(|e| e.to_string()),
        None => Err("the warm sandbox has no spare veth".into()),
    }
}

/// Removes the sandbox's spare veth after a failed take-over: the pair would otherwise stay
/// on the bridge, with the machine's MAC and addresses, until the kernel tears down the
/// sandbox's network namespace, while the start is retried in a sandbox of its own.
pub fn remove_spare(warm: &WarmSandbox) {
    if let Some(spare) = &warm.spare_veth {
        if let Ok(mut nl) = hangar_net::netlink::Netlink::open() {
            let _ = nl.delete_link(spare);
        }
    }
}

/// Pilot leaves the idle class it was made in for the normal one (it cannot by itself
/// without CAP_SYS_NICE on the host).
pub fn normal_class(pidfd: &OwnedFd, pid: i32) -> Result<(), String> {
    if !alive(pidfd) {
        return Err(format!("the warm sandbox's Pilot ({pid}) is gone"));
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on a pid the pidfd confirmed, with a valid parameter block.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_OTHER, &param) } != 0 {
        return Err(format!(
            "give Pilot the normal scheduling class: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The inside of the machine's network and its hostname, set up from a thread of the caller
/// that enters the sandbox's network and uts namespaces (which a thread can do alone; it ends
/// there): `eth0` with the machine's MAC on a spare, its addresses and routes.
pub fn set_up_inside(plan: &SpawnPlan, warm: &WarmSandbox, pidfd: &OwnedFd) -> Result<(), String> {
    let (net, hostname) = (plan.sandbox.net.clone(), plan.sandbox.hostname.clone());
    let spare = warm.spare_veth.is_some();
    let pidfd = pidfd.try_clone().map_err(|e| e.to_string())?;
    let inside = move || -> Result<(), String> {
        let mut namespaces = CloneFlags::CLONE_NEWUTS;
        if net.is_some() {
            namespaces |= CloneFlags::CLONE_NEWNET;
        }
        setns(pidfd.as_fd(), namespaces).map_err(|e| format!("enter the warm sandbox: {e}"))?;
        if let Some(net) = &net {
            if spare {
                // The spare's inner end has a random address: the machine's comes from its
                // IPv4.
                let mut nl = hangar_net::netlink::Netlink::open()
                    .map_err(|e| format!("set up the machine's network: {e}"))?;
                let eth0 = nl
                    .link_index("eth0")
                    .map_err(|e| format!("set up the machine's network: {e}"))?
                    .ok_or("the warm sandbox has no eth0")?;
                nl.set_address(eth0, hangar_net::plan::machine_mac(net.ipv4), net.mtu)
                    .map_err(|e| format!("set up the machine's network: {e}"))?;
            }
            crate::spawn::plumb_machine_side(Some(net))
                .map_err(|e| format!("set up the machine's network: {e}"))?;
        }
        nix::unistd::sethostname(&hostname).map_err(|e| format!("sethostname: {e}"))
    };
    std::thread::Builder::new()
        .name("take-over".into())
        .spawn(inside)
        .map_err(|e| format!("a thread for the sandbox's inside: {e}"))?
        .join()
        .map_err(|_| "the thread setting up the sandbox's inside panicked".to_string())?
}

/// Pilot's part, in the sandbox when claimed: attaches the root filesystems in its mount
/// namespace (a thread of the daemon cannot enter that: its threads share their root).
pub fn enter_machine(mounts: &[(OwnedFd, PathBuf)]) -> Result<(), String> {
    crate::spawn::attach_all(mounts)
}
