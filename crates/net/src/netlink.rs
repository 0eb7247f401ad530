//! A synchronous route-netlink client for the few calls machine networking needs.
//!
//! Every request asks for an acknowledgement and waits for it, so an error (an existing name,
//! a missing device) comes back as the `io::Error` of the kernel's errno.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A route-netlink socket of the network namespace it was opened in.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
}

/// A bridge forwarding-database entry for `mac` on device `index` (`state` NOARP is
/// `static`, PERMANENT with `Own` is the device's own table, `Controller` the bridge's).
fn fdb_entry(
    index: u32,
    state: NeighbourState,
    flags: NeighbourFlags,
    mac: [u8; 6],
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = state;
    msg.header.flags = flags;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the replies up to the acknowledgement (or, for a dump,
    /// the end of it).
    fn call(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        self.seq = self.seq.wrapping_add(1);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut replies = Vec::new();
        let mut data: Vec<u8> = Vec::with_capacity(64 << 10);
        loop {
            data.clear();
            self.socket.recv(&mut data, 0)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(invalid)?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(invalid("zero-length message"));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.call(msg, NLM_F_ACK | flags).map(drop)
    }

    /// Every link of the namespace, as (index, name).
    pub fn links(&mut self) -> io::Result<Vec<(u32, String)>> {
        let replies = self.call(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => {
                    let name = link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })?;
                    Some((link.header.index, name))
                }
                _ => None,
            })
            .collect())
    }

    /// The index of the link called `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.call(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge that is up, with the fixed MAC address `mac`: a bridge otherwise takes
    /// the lowest of its ports', and every machine's cached neighbour entry for the gateway
    /// would go stale when that port leaves. Returns its index; an existing bridge of that name
    /// is reused.
    pub fn ensure_bridge(&mut self, name: &str, mac: [u8; 6]) -> io::Result<u32> {
        if let Some(index) = self.link_index(name)? {
            self.set_up(index)?;
            return Ok(index);
        }
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::NfCallIpTables(false),
                InfoBridge::NfCallIp6Tables(false),
                InfoBridge::NfCallArpTables(false),
            ])),
        ]));
        match self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => {}
            // Another helper made it first.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.link_index(name)?
            .ok_or_else(|| io::Error::other(format!("bridge {name} vanished after creation")))
    }

    /// Creates a veth pair: `host_name` in this namespace, up and enslaved to `bridge`;
    /// `peer_name`, with MAC address `peer_mac`, directly inside the network namespace of
    /// process `peer_pid`. Both ends get `mtu` when there is one (the kernel's default is
    /// 1500).
    pub fn create_veth(
        &mut self,
        host_name: &str,
        bridge: u32,
        peer_name: &str,
        peer_mac: [u8; 6],
        peer_pid: u32,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::Address(peer_mac.to_vec()));
        peer.attributes.push(LinkAttribute::NetNsPid(peer_pid));
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        msg.attributes.push(LinkAttribute::Controller(bridge));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Creates a VXLAN device that is up, enslaved to `bridge`: network identifier `vni`,
    /// sending from `local` to UDP port `port`, learning where remote MACs are. Returns its
    /// index. A device of that name left from before (a crash, another `--listen` address) is
    /// replaced: its settings may not be these.
    pub fn ensure_vxlan(&mut self, vxlan: &Vxlan<'_>, bridge: u32) -> io::Result<u32> {
        self.delete_link(vxlan.name)?;
        let local = match vxlan.local {
            IpAddr::V4(a) => InfoVxlan::Local(a),
            IpAddr::V6(a) => InfoVxlan::Local6(a),
        };
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(vxlan.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(vxlan.mtu));
        msg.attributes.push(LinkAttribute::Controller(bridge));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vxlan.vni),
                local,
                InfoVxlan::Port(vxlan.port),
                InfoVxlan::Learning(true),
            ])),
        ]));
        match self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.link_index(vxlan.name)?.ok_or_else(|| {
            io::Error::other(format!("vxlan {} vanished after creation", vxlan.name))
        })
    }

    /// Adds (`add`) or removes a flood entry of VXLAN device `index`: frames for unknown
    /// and broadcast/multicast destinations are also sent to `remote` (head-end replication,
    /// `bridge fdb append 00:00:00:00:00:00 dev … dst …`). Adding an entry already there, or
    /// removing one that is not, is fine.
    pub fn flood_entry(&mut self, index: u32, remote: IpAddr, add: bool) -> io::Result<()> {
        let mut msg = fdb_entry(
            index,
            NeighbourState::Permanent,
            NeighbourFlags::Own,
            [0; 6],
        );
        msg.attributes
            .push(NeighbourAttribute::Destination(match remote {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        let done = if add {
            self.ack(
                RouteNetlinkMessage::NewNeighbour(msg),
                // Not EXCL: the kernel would refuse the second remote of the same (zero) MAC.
                NLM_F_CREATE | NLM_F_APPEND,
            )
        } else {
            self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0)
        };
        match done {
            Err(e) if !add && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Pins the bridge's forwarding entry for `mac` to port `port` (`bridge fdb replace MAC dev
    /// PORT master static`; the kernel refuses dynamic entries from user space): a machine
    /// restarting on a new port is reached there at once, not through its previous port,
    /// which lingers until the kernel removes it with the old namespace. The entry goes with
    /// the port.
    pub fn pin_fdb(&mut self, port: u32, mac: [u8; 6]) -> io::Result<()> {
        let msg = fdb_entry(port, NeighbourState::Noarp, NeighbourFlags::Controller, mac);
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// A veth pair made ahead of the machine that will use it (a warm sandbox's): `host_name`
    /// down and on no bridge here, `peer_name` in the network namespace of `peer_pid`. See
    /// [`Self::adopt_veth`].
    pub fn create_spare_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_pid: u32,
    ) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes.push(LinkAttribute::NetNsPid(peer_pid));
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Makes the host end of a spare veth (down) a machine's, under its own name: on
    /// `bridge`, with `mtu`, and up.
    pub fn adopt_veth(&mut self, index: u32, bridge: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(bridge));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Sets a (down) link's MAC address and MTU.
    pub fn set_address(&mut self, index: u32, mac: [u8; 6], mtu: Option<u32>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes the link called `name`; `false` if there was none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.ack(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr/prefix_len` to link `index`, skipping duplicate address detection (the
    /// address is ours by allocation, and DAD would hold it back for a second or more). An
    /// address already there is fine.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Adds a route in the main table: to `dst/prefix_len` through `gateway`, or on-link when
    /// there is none. An identical route already there is fine.
    pub fn add_route(
        &mut self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        match self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }
}

/// A VXLAN device to create ([`Netlink::ensure_vxlan`]).
#[derive(Debug, Clone, Copy)]
pub struct Vxlan<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub local: IpAddr,
    pub port: u16,
    pub mtu: u32,
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}
