//! This host's side of machine networking: one bridge per network with machines running here,
//! one veth pair per running machine (made by the spawn helper), the firewall, and the
//! resolver's address. A bridge is created when the first machine of its network starts and
//! removed when the last one stops.
//!
//! Bridges and the firewall belong to a network namespace, so one daemon per host (per
//! network namespace) owns networking: it holds `/run/hangar/network.lock` (in another network
//! namespace than init's, `network-<namespace inode>.lock`) for its lifetime.
//!
//! In a cluster, each bridge also gets an overlay port: a VXLAN device (VNI = the network id)
//! that floods to every other host of the cluster and learns where remote machines are, so one
//! network's bridges on all hosts are one Ethernet and its machines reach each other over
//! their on-link 6PN /48 wherever they run. The firewall lets only IPv6 cross it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hangar_net::netlink::{Netlink, Vxlan};
use hangar_net::plan::{
    bridge_name, bridge_network, is_bridge_name, vxlan_name, vxlan_network, MachineNet, SixPn,
    DEVICE_PREFIX, HOST_PREFIX_LEN, IPV4_BLOCK_PREFIX_LEN, OVERLAY_MAX_VNI, OVERLAY_OVERHEAD_V4,
    OVERLAY_OVERHEAD_V6, OVERLAY_PORT, RESOLVER,
};

/// The lock of this network namespace's networking, and whether it is a namespace's own
/// (`network-<inode>.lock`, not init's).
fn lock_file() -> (String, bool) {
    let inode = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| m.ino()).ok()
    };
    match inode("/proc/self/ns/net") {
        Some(ours) if inode("/proc/1/ns/net") != Some(ours) => {
            (format!("/run/hangar/network-{ours}.lock"), true)
        }
        _ => ("/run/hangar/network.lock".to_string(), false),
    }
}

/// The underlay MTU the overlay assumes (Ethernet's).
const UNDERLAY_MTU: u32 = 1500;

/// The cluster overlay of this host: where its VXLAN packets come from.
#[derive(Debug, Clone, Copy)]
pub struct Overlay {
    /// This host's address on the network the hosts share (its API's `--listen` address).
    pub local: IpAddr,
}

impl Overlay {
    /// What fits in a frame that crosses the overlay.
    fn mtu(&self) -> u32 {
        UNDERLAY_MTU
            - if self.local.is_ipv4() {
                OVERLAY_OVERHEAD_V4
            } else {
                OVERLAY_OVERHEAD_V6
            }
    }
}

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
    /// The cluster's other hosts (overlay flood destinations).
    peers: Vec<IpAddr>,
    /// IPv4 block gateways this daemon put on each bridge in use: a start on a bridge that
    /// has its block's gateway needs no netlink at all (asking for a link runs its pending
    /// carrier changes first, which can wait for an RCU grace period).
    gateways: HashSet<(String, std::net::Ipv4Addr)>,
}

pub struct HostNetwork {
    devices: Mutex<Devices>,
    overlay: Option<Overlay>,
    _lock: std::fs::File,
    /// The lock's path when it is a namespace's own (`network-<inode>.lock`): removed at
    /// shutdown, as that namespace may never run a daemon again.
    namespace_lock: Option<String>,
}

/// Removes the lock files of other network namespaces that no daemon holds (their daemons
/// ended without removing them: killed, or their namespace went). Taking the lock first
/// means no live daemon loses its own.
fn remove_stale_locks(ours: &str) {
    let Ok(entries) = std::fs::read_dir("/run/hangar") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("network-") && name.ends_with(".lock")) || path.as_os_str() == ours {
            continue;
        }
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        // SAFETY: flock on a file we hold open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl HostNetwork {
    /// Takes the host's networking for this daemon, installs the firewall (with `egress`,
    /// machines may reach beyond the host) and gives `lo` the resolver's address. With
    /// `overlay`, networks' bridges are joined to the cluster's other hosts
    /// ([`set_peers`](Self::set_peers) says which).
    pub fn set_up(egress: bool, overlay: Option<Overlay>) -> anyhow::Result<HostNetwork> {
        std::fs::create_dir_all("/run/hangar").context("failed to create /run/hangar")?;
        let (lock_file, namespace_own) = lock_file();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .with_context(|| format!("failed to open {lock_file}"))?;
        // SAFETY: flock on a file we hold open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "another hangar daemon runs machine networking on this host ({lock_file} is \
                 locked); stop it, or start this one with --network off"
            );
        }
        remove_stale_locks(&lock_file);
        hangar_net::firewall::apply(egress, overlay.is_some())?;
        if egress {
            hangar_net::firewall::enable_forwarding()?;
        }
        let mut nl = Netlink::open().context("failed to open netlink")?;
        let lo = nl
            .link_index("lo")?
            .context("the host has no loopback device")?;
        nl.add_address(lo, IpAddr::V6(RESOLVER), 128)
            .context("failed to give lo the resolver's address fdaa::3")?;
        let namespace_lock = namespace_own.then(|| lock_file.clone());
        Ok(HostNetwork {
            devices: Mutex::new(Devices::default()),
            overlay,
            _lock: lock,
            namespace_lock,
        })
    }

    /// The MTU of machines' veths: smaller than Ethernet's when frames may cross the overlay
    /// (a bridge forwards nothing larger than its smallest port takes, silently).
    pub fn machine_mtu(&self) -> Option<u32> {
        self.overlay.map(|o| o.mtu())
    }

    /// Makes `peers` the cluster's other hosts: the overlay floods to them and takes packets
    /// from them only.
    pub fn set_peers(&self, mut peers: Vec<IpAddr>) -> anyhow::Result<()> {
        let Some(overlay) = self.overlay else {
            return Ok(());
        };
        // A VXLAN device sends over one address family: its local address's.
        peers.retain(|p| *p != overlay.local && p.is_ipv4() == overlay.local.is_ipv4());
        peers.sort();
        peers.dedup();
        if self.devices().peers == peers {
            return Ok(());
        }
        // nft runs outside the devices lock (starts and stops take it from async code); only
        // this periodic pass changes the peers.
        hangar_net::firewall::set_overlay_peers(&peers)?;
        let mut devices = self.devices();
        let mut nl = Netlink::open().context("failed to open netlink")?;
        let bridges: Vec<String> = devices.uses.keys().cloned().collect();
        for bridge in bridges {
            let Some(network) = bridge_network(&bridge) else {
                continue;
            };
            let Some(index) = nl.link_index(&vxlan_name(network))? else {
                continue;
            };
            for gone in devices.peers.iter().filter(|p| !peers.contains(p)) {
                nl.flood_entry(index, *gone, false)?;
            }
            for new in peers.iter().filter(|p| !devices.peers.contains(p)) {
                nl.flood_entry(index, *new, true)?;
            }
        }
        tracing::info!(?peers, "overlay peers");
        devices.peers = peers;
        Ok(())
    }

    /// The network's overlay port on `bridge`, flooding to every peer.
    fn join_overlay(
        &self,
        nl: &mut Netlink,
        devices: &Devices,
        network: u32,
        bridge: u32,
    ) -> io::Result<()> {
        let Some(overlay) = self.overlay else {
            return Ok(());
        };
        if network > OVERLAY_MAX_VNI {
            tracing::warn!(
                network,
                "network id beyond VXLAN's 24 bits: its machines reach only this host's"
            );
            return Ok(());
        }
        let name = vxlan_name(network);
        let index = nl.ensure_vxlan(
            &Vxlan {
                name: &name,
                vni: network,
                local: overlay.local,
                port: OVERLAY_PORT,
                mtu: overlay.mtu(),
            },
            bridge,
        )?;
        for peer in &devices.peers {
            nl.flood_entry(index, *peer, true)?;
        }
        Ok(())
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readies the machine's bridge (with the host's addresses on it) before its helper runs.
    pub fn acquire(&self, net: &MachineNet) -> io::Result<()> {
        let mut devices = self.devices();
        let gateway = (net.bridge.clone(), net.ipv4_gateway);
        if devices.uses.contains_key(&net.bridge) && devices.gateways.contains(&gateway) {
            devices.put(net);
            return Ok(());
        }
        let mut nl = Netlink::open()?;
        let index = if devices.uses.contains_key(&net.bridge) {
            nl.link_index(&net.bridge)?
                .ok_or_else(|| io::Error::other(format!("bridge {} vanished", net.bridge)))?
        } else {
            let index = nl.ensure_bridge(&net.bridge, net.bridge_mac)?;
            nl.add_address(index, IpAddr::V6(net.ipv6_gateway), HOST_PREFIX_LEN)?;
            if let Some(six) = SixPn::network_of(net.ipv6) {
                self.join_overlay(&mut nl, &devices, six, index)?;
            }
            index
        };
        // The gateway of the machine's IPv4 block (a network may hold several); already there
        // for all but the first machine of a block.
        nl.add_address(index, IpAddr::V4(net.ipv4_gateway), IPV4_BLOCK_PREFIX_LEN)?;
        devices.gateways.insert(gateway);
        devices.put(net);
        Ok(())
    }

    /// A machine found running at start-up keeps its veth and bridge; the bridge gets its
    /// overlay port if it has none (it was made before this host joined a cluster).
    pub fn adopt(&self, net: &MachineNet) {
        let mut devices = self.devices();
        if self.overlay.is_some() && !devices.uses.contains_key(&net.bridge) {
            let joined = Netlink::open().and_then(|mut nl| {
                let (Some(index), Some(network)) =
                    (nl.link_index(&net.bridge)?, SixPn::network_of(net.ipv6))
                else {
                    return Ok(());
                };
                self.join_overlay(&mut nl, &devices, network, index)
            });
            if let Err(e) = joined {
                tracing::warn!(bridge = %net.bridge, error = %e, "joining the overlay failed");
            }
        }
        devices.put(net);
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
            devices.gateways.retain(|(b, _)| *b != bridge);
            let removed = Netlink::open().and_then(|mut nl| {
                if let Some(network) = bridge_network(&bridge) {
                    nl.delete_link(&vxlan_name(network))?;
                }
                nl.delete_link(&bridge)
            });
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
            let Devices {
                veths,
                uses,
                gateways,
                ..
            } = &mut *devices;
            uses.retain(|bridge, _| veths.values().any(|b| b == bridge));
            gateways.retain(|(bridge, _)| uses.contains_key(bridge));
        }
        let swept = self.sweep();
        // Last: a daemon starting in this namespace from now on finds no devices of ours.
        if let Some(path) = &self.namespace_lock {
            let _ = std::fs::remove_file(path);
        }
        swept
    }

    /// Removes devices no running machine uses: left by a crash, or by machines that ended
    /// while the daemon was away. Run once the running machines are adopted.
    pub fn sweep(&self) -> io::Result<()> {
        let devices = self.devices();
        let in_use: HashSet<&String> = devices.veths.keys().chain(devices.uses.keys()).collect();
        // A network's overlay port lives as long as its bridge.
        let overlay_in_use =
            |name: &str| vxlan_network(name).is_some_and(|n| in_use.contains(&bridge_name(n)));
        let mut nl = Netlink::open()?;
        let ours: Vec<String> = nl
            .links()?
            .into_iter()
            .map(|(_, name)| name)
            .filter(|n| n.starts_with(DEVICE_PREFIX) && !in_use.contains(n) && !overlay_in_use(n))
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
