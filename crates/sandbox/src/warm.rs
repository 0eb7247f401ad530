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
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroup::MachineCgroup;
use crate::plan::SpawnPlan;

/// A sandbox of the pool, as the claim helper needs to know it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmSandbox {
    /// Pilot's host pid; the helper gets a pidfd for it too, and trusts only what that
    /// pidfd confirms.
    pub pid: i32,
    /// The warm cgroup below each hierarchy root (`hangar/.warm-…`).
    pub cgroup_path: PathBuf,
    /// The host end of the veth made with the sandbox (`eth0` inside), when there is one.
    #[serde(default)]
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

/// Makes the warm sandbox `warm` (Pilot behind `pidfd`) the machine `plan` describes and
/// returns Pilot's pid. Runs in a fresh single-threaded helper: it enters the sandbox's mount,
/// uts and network namespaces for good.
pub fn take_over(plan: &SpawnPlan, warm: &WarmSandbox, pidfd: OwnedFd) -> Result<i32, String> {
    if !plan.volume_mounts.is_empty() || plan.mounts.iter().any(|m| m.disk.is_some()) {
        return Err("a warm sandbox takes overlay root filesystems only".into());
    }
    let sandbox = &plan.sandbox;
    // The user namespace is opened by pid, then the pidfd confirms that pid was still Pilot.
    let userns = hangar_image::Userns::from_pid(warm.pid as u32).map_err(|e| e.to_string())?;
    if !alive(&pidfd) {
        return Err(format!("the warm sandbox's Pilot ({}) is gone", warm.pid));
    }
    let cgroup = sandbox.cgroup().map_err(|e| e.to_string())?;
    let warm_cgroup = MachineCgroup::new(cgroup.hierarchy().clone(), warm.cgroup_path.clone());
    cgroup
        .take_over(&warm_cgroup, &sandbox.limits())
        .map_err(|e| e.to_string())?;
    // Made here, in the host's mount namespace (where the layers' paths are), attached below.
    let mut overlays = Vec::new();
    // Closed by this helper's exit, after its answer (see `overlay_fd_keeping`).
    let mut close_later = Vec::new();
    for m in &plan.mounts {
        overlays.push(m.overlay_to_attach(&userns, &mut close_later)?);
    }
    let pid = Pid::from_raw(warm.pid);
    let mut namespaces = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
    if let Some(net) = &sandbox.net {
        match &warm.spare_veth {
            Some(spare) => adopt_host_side(spare, net).map_err(|e| e.to_string())?,
            None => crate::spawn::plumb_host_side(net, pid).map_err(|e| e.to_string())?,
        }
        namespaces |= CloneFlags::CLONE_NEWNET;
    }
    setns(pidfd.as_fd(), namespaces).map_err(|e| format!("enter the warm sandbox: {e}"))?;
    crate::spawn::attach_all(&overlays)?;
    std::mem::forget(close_later);
    if let Some(net) = &sandbox.net {
        if warm.spare_veth.is_some() {
            // The spare's inner end has a random address: the machine's comes from its IPv4.
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
    nix::unistd::sethostname(&sandbox.hostname).map_err(|e| format!("sethostname: {e}"))?;
    // Made in the idle class; the machine runs in the normal one (Pilot, single-threaded until
    // its claim, cannot leave the idle class by itself without CAP_SYS_NICE on the host).
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on a pid the pidfd confirmed, with a valid parameter block.
    if unsafe { libc::sched_setscheduler(warm.pid, libc::SCHED_OTHER, &param) } != 0 {
        return Err(format!(
            "give Pilot the normal scheduling class: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(warm.pid)
}
