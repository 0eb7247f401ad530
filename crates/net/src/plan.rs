//! Where a machine's addresses come from.
//!
//! 6PN, as Fly lays it out: `fdaa:NNNN:NNNN:HHHH:HHHH:MMMM:MMMM:2` is `fdaa` + a 32-bit network
//! id + a 32-bit host id + a 32-bit machine part + `2`. Each org network is the /48
//! `fdaa:NNNN:NNNN::/48`, each host a /80 inside it, each machine the /112 whose `::2` is its
//! address. The host's own address on a network's bridge is machine part 0, `::1`.
//!
//! IPv4 (the proxy's path into a machine, whose apps often listen on `0.0.0.0` only): a network
//! holds /24 blocks of the host's 172.19.0.0/16, as many as its machines need; `.1` of each block
//! is on the network's bridge, `.2` to `.254` are machines. A machine's address is on-link for
//! the whole /16, so machines of one network in different blocks reach each other directly; a
//! machine of another network is on another bridge and never answers.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The resolver every machine's `/etc/resolv.conf` names, as on Fly.
pub const RESOLVER: Ipv6Addr = Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 3);
pub const NETWORK_PREFIX_LEN: u8 = 48;
pub const HOST_PREFIX_LEN: u8 = 80;
pub const MACHINE_PREFIX_LEN: u8 = 112;

/// The first two octets of every machine's IPv4 address (Fly's guests use 172.19/16 too).
pub const IPV4_POOL: [u8; 2] = [172, 19];
pub const IPV4_POOL_PREFIX_LEN: u8 = 16;
pub const IPV4_BLOCK_PREFIX_LEN: u8 = 24;
/// IPv4 blocks a host can hand out.
pub const IPV4_BLOCKS: u32 = 256;
/// Machines one block holds (`.2` to `.254`).
pub const IPV4_BLOCK_MACHINES: u32 = 253;

/// Every device Hangar creates is named with this prefix (the leftover checks count them).
pub const DEVICE_PREFIX: &str = "hg";
const BRIDGE_PREFIX: &str = "hgn";
const VETH_PREFIX: &str = "hgv";
const VXLAN_PREFIX: &str = "hgx";

/// The UDP port of the overlay that joins a network's bridges on a cluster's hosts (VXLAN's
/// IANA port).
pub const OVERLAY_PORT: u16 = 4789;
/// VXLAN network identifiers are 24 bits: networks with a larger id have no overlay.
pub const OVERLAY_MAX_VNI: u32 = (1 << 24) - 1;
/// What VXLAN adds to each frame over an IPv4 / IPv6 underlay (outer IP, UDP, VXLAN and
/// Ethernet headers).
pub const OVERLAY_OVERHEAD_V4: u32 = 50;
pub const OVERLAY_OVERHEAD_V6: u32 = 70;

/// A 6PN address, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SixPn {
    pub network: u32,
    pub host: u32,
    pub machine: u32,
}

impl SixPn {
    /// The machine's address: `::2` of its /112.
    pub fn address(&self) -> Ipv6Addr {
        let [n, h, m] = [self.network, self.host, self.machine];
        Ipv6Addr::new(
            0xfdaa,
            (n >> 16) as u16,
            n as u16,
            (h >> 16) as u16,
            h as u16,
            (m >> 16) as u16,
            m as u16,
            2,
        )
    }

    /// The host's address on the network's bridge: machine part 0, `::1`.
    pub fn gateway(network: u32, host: u32) -> Ipv6Addr {
        let mut a = SixPn {
            network,
            host,
            machine: 0,
        }
        .address()
        .segments();
        a[7] = 1;
        Ipv6Addr::from(a)
    }

    /// The network's /48.
    pub fn network_prefix(network: u32) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfdaa,
            (network >> 16) as u16,
            network as u16,
            0,
            0,
            0,
            0,
            0,
        )
    }

    /// Takes a machine address apart; `None` for anything that is not one.
    pub fn parse(addr: Ipv6Addr) -> Option<SixPn> {
        let s = addr.segments();
        if s[0] != 0xfdaa || s[7] != 2 {
            return None;
        }
        let join = |hi: u16, lo: u16| (u32::from(hi) << 16) | u32::from(lo);
        Some(SixPn {
            network: join(s[1], s[2]),
            host: join(s[3], s[4]),
            machine: join(s[5], s[6]),
        })
    }

    /// The network of any address inside a 6PN /48 (a machine's, or a gateway's).
    pub fn network_of(addr: Ipv6Addr) -> Option<u32> {
        let s = addr.segments();
        (s[0] == 0xfdaa && (s[1] != 0 || s[2] != 0))
            .then(|| (u32::from(s[1]) << 16) | u32::from(s[2]))
    }
}

/// One /24 IPv4 block of the pool, held by one network on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Block(pub u8);

impl Ipv4Block {
    pub fn gateway(self) -> Ipv4Addr {
        self.address(1)
    }

    pub fn address(self, index: u8) -> Ipv4Addr {
        Ipv4Addr::new(IPV4_POOL[0], IPV4_POOL[1], self.0, index)
    }

    /// The block and index of an address of the pool.
    pub fn of(addr: Ipv4Addr) -> Option<(Ipv4Block, u8)> {
        let o = addr.octets();
        (o[0] == IPV4_POOL[0] && o[1] == IPV4_POOL[1]).then_some((Ipv4Block(o[2]), o[3]))
    }
}

/// The bridge of a network on this host.
pub fn bridge_name(network: u32) -> String {
    format!("{BRIDGE_PREFIX}{network:x}")
}

/// The host side of a machine's veth pair for one boot: 6 hex digits of the machine's id and
/// 6 of `boot` (interface names are at most 15 bytes). A new name per boot: the previous
/// boot's pair goes with its network namespace, which the kernel tears down in its own time
/// (tens of milliseconds, holding the lock every device change takes); removing it to reuse
/// its name made a start right after a stop take up to 80 ms instead of ~10.
pub fn veth_name(machine_id: &str, boot: u32) -> String {
    let short: String = machine_id.chars().take(6).collect();
    format!("{VETH_PREFIX}{short}{:06x}", boot & 0xff_ffff)
}

/// The overlay (VXLAN) device that joins a network's bridge to the same network's bridges on
/// the cluster's other hosts.
pub fn vxlan_name(network: u32) -> String {
    format!("{VXLAN_PREFIX}{network:x}")
}

/// The network whose overlay device `name` is.
pub fn vxlan_network(name: &str) -> Option<u32> {
    u32::from_str_radix(name.strip_prefix(VXLAN_PREFIX)?, 16).ok()
}

/// The bridge's own MAC: locally administered, unicast, derived from the network id and the
/// host's 6PN part, so that a bridge made again has the address machines already know, and
/// the bridges of one network on a cluster's hosts (one Ethernet over the overlay) differ.
pub fn bridge_mac(network: u32, host: u32) -> [u8; 6] {
    // FNV-1a of the eight bytes: the two ids folded into the four bytes a MAC has left.
    let mut h: u32 = 0x811c_9dc5;
    for b in network.to_be_bytes().into_iter().chain(host.to_be_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let h = h.to_be_bytes();
    [0x02, 0x68, h[0], h[1], h[2], h[3]]
}

/// A machine's own MAC (its `eth0`): locally administered, unicast, derived from its IPv4
/// address, which is unique on its bridge (as Docker derives one), and across a cluster's
/// hosts too (the shared store hands out IPv4 blocks). A machine that stops and
/// starts again comes back with the address its neighbours (the host, the proxy, other
/// machines) have cached: a random one would leave them sending to the old one until their
/// neighbour entries go stale, seconds in which connections to it hang.
pub fn machine_mac(ipv4: Ipv4Addr) -> [u8; 6] {
    let a = ipv4.octets();
    [0x02, 0x69, a[0], a[1], a[2], a[3]]
}

/// The network whose bridge `name` is.
pub fn bridge_network(name: &str) -> Option<u32> {
    u32::from_str_radix(name.strip_prefix(BRIDGE_PREFIX)?, 16).ok()
}

pub fn is_bridge_name(name: &str) -> bool {
    name.starts_with(BRIDGE_PREFIX)
}

/// What the spawn helper plumbs for one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineNet {
    pub bridge: String,
    pub bridge_mac: [u8; 6],
    pub host_veth: String,
    pub ipv6: Ipv6Addr,
    pub ipv6_gateway: Ipv6Addr,
    /// The network's /48: on-link from the machine, so its neighbours are one hop away.
    pub network_prefix: Ipv6Addr,
    pub ipv4: Ipv4Addr,
    pub ipv4_gateway: Ipv4Addr,
    /// The veth pair's MTU when the network's frames may cross the overlay (smaller than the
    /// host's by the overlay's headers); `None`: the kernel's default.
    #[serde(default)]
    pub mtu: Option<u32>,
}

impl MachineNet {
    /// The plumbing for a machine's stored addresses; `None` if they are not Hangar's.
    pub fn new(machine_id: &str, ipv6: Ipv6Addr, ipv4: Ipv4Addr, boot: u32) -> Option<MachineNet> {
        let six = SixPn::parse(ipv6)?;
        let (block, _) = Ipv4Block::of(ipv4)?;
        Some(MachineNet {
            bridge: bridge_name(six.network),
            bridge_mac: bridge_mac(six.network, six.host),
            host_veth: veth_name(machine_id, boot),
            ipv6,
            ipv6_gateway: SixPn::gateway(six.network, six.host),
            network_prefix: SixPn::network_prefix(six.network),
            ipv4,
            ipv4_gateway: block.gateway(),
            mtu: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_machine_macs_follow_the_ipv4_and_never_look_like_a_bridge() {
        let a = machine_mac(Ipv4Addr::new(172, 19, 0, 2));
        assert_eq!(a, [0x02, 0x69, 172, 19, 0, 2]);
        assert_ne!(a, machine_mac(Ipv4Addr::new(172, 19, 0, 3)));
        // Locally administered (bit 1), unicast (bit 0 clear), and not a bridge's prefix.
        assert_eq!(a[0] & 0b11, 0b10);
        assert_ne!(a[..2], bridge_mac(0x18, 1)[..2]);
    }

    #[test]
    fn test_bridges_of_one_network_on_two_hosts_have_their_own_macs() {
        let a = bridge_mac(0x18, 0x0a7b_007d);
        assert_eq!(a, bridge_mac(0x18, 0x0a7b_007d), "stable");
        assert_ne!(a, bridge_mac(0x18, 0x0a7b_007e));
        assert_ne!(a, bridge_mac(0x19, 0x0a7b_007d));
        assert_eq!(a[..2], [0x02, 0x68]);
        assert_eq!(vxlan_name(0x18), "hgx18");
        assert_eq!(vxlan_network("hgx18"), Some(0x18));
        assert_eq!(vxlan_network("hgn18"), None);
    }

    #[test]
    fn test_lays_out_addresses_as_fly_does() {
        let six = SixPn {
            network: 0x18,
            host: 0x0a7b_007d,
            machine: 0xf066_b83b,
        };
        assert_eq!(six.address().to_string(), "fdaa:0:18:a7b:7d:f066:b83b:2");
        assert_eq!(SixPn::parse(six.address()), Some(six));
        assert_eq!(
            SixPn::gateway(0x18, 0x0a7b_007d).to_string(),
            "fdaa:0:18:a7b:7d::1"
        );
        assert_eq!(SixPn::network_prefix(0x18).to_string(), "fdaa:0:18::");
        assert_eq!(SixPn::network_of(six.address()), Some(0x18));
        assert_eq!(SixPn::network_of(RESOLVER), None);
        assert_eq!(SixPn::parse("fdaa:0:18:a7b:7d::1".parse().unwrap()), None);
    }

    #[test]
    fn test_names_devices_within_the_kernel_limit() {
        assert_eq!(bridge_name(u32::MAX), "hgnffffffff");
        assert_eq!(veth_name("3d8d9e7c4e1e28", 0xabc), "hgv3d8d9e000abc");
        assert_eq!(veth_name("3d8d9e7c4e1e28", u32::MAX), "hgv3d8d9effffff");
        assert!(veth_name("3d8d9e7c4e1e28", u32::MAX).len() < 16);
    }

    #[test]
    fn test_plans_a_machine() {
        let net = MachineNet::new(
            "3d8d9e7c4e1e28",
            "fdaa:0:2:a7b:7d:1:2:2".parse().unwrap(),
            Ipv4Addr::new(172, 19, 3, 9),
            7,
        )
        .unwrap();
        assert_eq!(net.bridge, "hgn2");
        assert_eq!(net.ipv4_gateway, Ipv4Addr::new(172, 19, 3, 1));
        assert_eq!(net.ipv6_gateway.to_string(), "fdaa:0:2:a7b:7d::1");
        assert!(MachineNet::new("x", "fdaa::3".parse().unwrap(), net.ipv4, 0).is_none());
    }
}
