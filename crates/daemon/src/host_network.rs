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
use std::sync::Mutex;

use anyhow::Context;
use hangar_net::netlink::Netlink;
use hangar_net::plan::{
    is_bridge_name, MachineNet, DEVICE_PREFIX, HOST_PREFIX_LEN, IPV4_BLOCK_PREFIX_LEN, RESOLVER,
};

const LOCK_FILE: &str = "/run/hangar/network.lock";

pub struct HostNetwork {
    /// Running machines' veths (host side), with the bridge each is on.
    veths: Mutex<HashMap<String, String>>,
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
            veths: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    fn veths(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.veths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readies the machine's bridge (with the host's addresses on it) before its helper runs.
    pub fn acquire(&self, net: &MachineNet) -> io::Result<()> {
        let mut veths = self.veths();
        if !veths.values().any(|b| *b == net.bridge) {
            let mut nl = Netlink::open()?;
            let index = nl.ensure_bridge(&net.bridge, net.bridge_mac)?;
            nl.add_address(index, IpAddr::V6(net.ipv6_gateway), HOST_PREFIX_LEN)?;
            nl.add_address(index, IpAddr::V4(net.ipv4_gateway), IPV4_BLOCK_PREFIX_LEN)?;
        }
        veths.insert(net.host_veth.clone(), net.bridge.clone());
        Ok(())
    }

    /// A machine found running at start-up keeps its veth and bridge.
    pub fn adopt(&self, net: &MachineNet) {
        self.veths()
            .insert(net.host_veth.clone(), net.bridge.clone());
    }

    /// Removes the machine's veth, and its bridge when no other machine is on it.
    pub fn release(&self, net: &MachineNet) -> io::Result<()> {
        let mut veths = self.veths();
        veths.remove(&net.host_veth);
        let mut nl = Netlink::open()?;
        nl.delete_link(&net.host_veth)?;
        if !veths.values().any(|b| *b == net.bridge) {
            nl.delete_link(&net.bridge)?;
        }
        Ok(())
    }

    /// Removes devices no running machine uses: left by a crash, or by machines that ended
    /// while the daemon was away. Run once the running machines are adopted.
    pub fn sweep(&self) -> io::Result<()> {
        let veths = self.veths();
        let in_use: HashSet<&String> = veths.keys().chain(veths.values()).collect();
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
