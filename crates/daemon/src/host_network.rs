//! This host's side of machine networking: one bridge per network with machines running here,
//! one veth pair per running machine (made by the spawn helper), the firewall, and the
//! resolver's address. A bridge is created when the first machine of its network starts and
//! removed when the last one stops.
//!
//! Bridges and the firewall are host-wide, so one daemon per host owns networking: it holds
//! `/run/hangar/network.lock` for its lifetime.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hangar_net::netlink::Netlink;
use hangar_net::plan::{
    is_bridge_name, MachineNet, DEVICE_PREFIX, HOST_PREFIX_LEN, IPV4_BLOCK_PREFIX_LEN, RESOLVER,
};

const LOCK_FILE: &str = "/run/hangar/network.lock";

/// How long a bridge without machines stays before it is removed: a machine of the network
/// starting within it (the create → destroy → create loop of a sandbox platform) reuses it
/// instead of paying for a bridge's removal and creation each time.
const BRIDGE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Default)]
struct Devices {
    /// Running machines' veths (host side), with the bridge each is on.
    veths: HashMap<String, String>,
    /// Per bridge, how many times a machine was put on it: a removal scheduled before the
    /// latest one is void.
    uses: HashMap<String, u64>,
}

pub struct HostNetwork {
    devices: Mutex<Devices>,
    _lock: std::fs::File,
}

impl HostNetwork {
    /// Takes the host's networking for this daemon, installs the firewall (with `egress`,
    /// machines may reach beyond the host) and gives `lo` the resolver's address.
    pub fn set_up(egress: bool) -> anyhow::Result<HostNetwork> {
        std::fs::create_dir_all("/run/hangar").context("failed to create /run/hangar")?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("failed to open {LOCK_FILE}"))?;
        // SAFETY: flock on a file we hold open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "another hangar daemon runs machine networking on this host ({LOCK_FILE} is \
                 locked); stop it, or start this one with --network off"
            );
        }
        hangar_net::firewall::apply(egress)?;
        if egress {
            hangar_net::firewall::enable_forwarding()?;
        }
        let mut nl = Netlink::open().context("failed to open netlink")?;
        let lo = nl
            .link_index("lo")?
            .context("the host has no loopback device")?;
        nl.add_address(lo, IpAddr::V6(RESOLVER), 128)
            .context("failed to give lo the resolver's address fdaa::3")?;
        Ok(HostNetwork {
            devices: Mutex::new(Devices::default()),
            _lock: lock,
        })
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readies the machine's bridge (with the host's addresses on it) before its helper runs.
    pub fn acquire(&self, net: &MachineNet) -> io::Result<()> {
        let mut devices = self.devices();
        let mut nl = Netlink::open()?;
        let index = if devices.uses.contains_key(&net.bridge) {
            nl.link_index(&net.bridge)?
                .ok_or_else(|| io::Error::other(format!("bridge {} vanished", net.bridge)))?
        } else {
            let index = nl.ensure_bridge(&net.bridge, net.bridge_mac)?;
            nl.add_address(index, IpAddr::V6(net.ipv6_gateway), HOST_PREFIX_LEN)?;
            index
        };
        // The gateway of the machine's IPv4 block (a network may hold several); already there
        // for all but the first machine of a block.
        nl.add_address(index, IpAddr::V4(net.ipv4_gateway), IPV4_BLOCK_PREFIX_LEN)?;
        devices.put(net);
        Ok(())
    }

    /// A machine found running at start-up keeps its veth and bridge.
    pub fn adopt(&self, net: &MachineNet) {
        self.devices().put(net);
    }

    /// Forgets the machine's veth, and removes its bridge when no other machine is on it.
    ///
    /// The veth pair itself goes with the machine's network namespace, which the kernel tears
    /// down once the machine's last process is gone; deleting it here would add the kernel's
    /// ~15 ms device unregistration to every stop and destroy. A bridge left without machines
    /// is removed by a thread after [`BRIDGE_LINGER`], under the same lock as [`acquire`],
    /// unless a machine was put on it meanwhile. What a crash leaves is swept at the next
    /// start.
    ///
    /// [`acquire`]: Self::acquire
    pub fn release(self: &Arc<Self>, net: &MachineNet) {
        let mut devices = self.devices();
        devices.veths.remove(&net.host_veth);
        if devices.veths.values().any(|b| *b == net.bridge) {
            return;
        }
        let Some(seen) = devices.uses.get(&net.bridge).copied() else {
            return;
        };
        drop(devices);
        let (this, bridge) = (self.clone(), net.bridge.clone());
        std::thread::spawn(move || {
            std::thread::sleep(BRIDGE_LINGER);
            let mut devices = this.devices();
            if devices.uses.get(&bridge) != Some(&seen)
                || devices.veths.values().any(|b| *b == bridge)
            {
                return;
            }
            devices.uses.remove(&bridge);
            let removed = Netlink::open().and_then(|mut nl| nl.delete_link(&bridge));
            if let Err(e) = removed {
                tracing::warn!(%bridge, error = %e, "removing an unused bridge failed");
            }
        });
    }

    /// At shutdown: lingering bridges go now (no thread will be left to remove them); those
    /// of running machines stay with them.
    pub fn shut_down(&self) -> io::Result<()> {
        {
            let mut devices = self.devices();
            let Devices { veths, uses } = &mut *devices;
            uses.retain(|bridge, _| veths.values().any(|b| b == bridge));
        }
        self.sweep()
    }

    /// Removes devices no running machine uses: left by a crash, or by machines that ended
    /// while the daemon was away. Run once the running machines are adopted.
    pub fn sweep(&self) -> io::Result<()> {
        let devices = self.devices();
        let in_use: HashSet<&String> = devices.veths.keys().chain(devices.uses.keys()).collect();
        let mut nl = Netlink::open()?;
        let ours: Vec<String> = nl
            .links()?
            .into_iter()
            .map(|(_, name)| name)
            .filter(|n| n.starts_with(DEVICE_PREFIX) && !in_use.contains(n))
            .collect();
        // Veths first: a bridge goes more cleanly without ports.
        for name in ours
            .iter()
            .filter(|n| !is_bridge_name(n))
            .chain(ours.iter().filter(|n| is_bridge_name(n)))
        {
            tracing::info!(device = %name, "removing a network device no machine uses");
            nl.delete_link(name)?;
        }
        Ok(())
    }
}

impl Devices {
    fn put(&mut self, net: &MachineNet) {
        self.veths.insert(net.host_veth.clone(), net.bridge.clone());
        *self.uses.entry(net.bridge.clone()).or_default() += 1;
    }
}
