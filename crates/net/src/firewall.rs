//! The host firewall for machine networks: one nftables table, `inet hangar`, replaced as a
//! whole at daemon start. Rules match interface names (`hgn*`, every network's bridge), so
//! nothing changes per machine or per network.
//!
//! - Traffic a machine sends to the host itself (input) is dropped, except the resolver at
//!   `fdaa::3` port 53, neighbour discovery, and replies to connections the host opened (the
//!   proxy's, health checks').
//! - Nothing is forwarded between a network and anywhere else: not to another network's bridge,
//!   not beyond the host. With egress turned on, machines may open connections beyond the host
//!   (masqueraded), still never into another network.
//!
//! In a cluster each network's bridge also has an overlay port (`hgx*`, VXLAN) to the same
//! network's bridges on the other hosts. Only IPv6 crosses it (6PN is IPv6; each host's IPv4
//! gateways and blocks are its own), and the overlay's UDP port takes packets only from the
//! cluster's hosts (the `overlay_peers` sets, kept by the daemon), so nobody else can put
//! frames into a network.
//!
//! Hosts with `br_netfilter` loaded (Docker loads it) pass even frames bridged between two
//! machines of one network through the inet forward hook, with the bridge as both interfaces.
//! A `bridge hangar` table marks those frames first (from one machine's veth to another's: the
//! ports of one bridge), and the inet forward chain lets marked packets through.
//!
//! Applied with Debian's `nft`: the ruleset is static text, read by a tool that is made for it,
//! once per daemon start.

use std::io::Write;
use std::process::{Command, Stdio};

use std::net::IpAddr;

use crate::plan::{IPV4_POOL, OVERLAY_PORT, RESOLVER};

pub const TABLE: &str = "hangar";
/// The packet-mark bit of frames bridged within one network.
pub const BRIDGED_MARK: u32 = 0x0100_0000;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "machine networking needs nftables' `nft` (apt install nftables), or run the daemon \
         with --network off: {0}"
    )]
    Missing(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Rejected(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The ruleset, as `nft -f` reads it. Creating the table first makes the delete that follows
/// succeed on a host where it did not exist; the file is applied atomically. With `overlay`,
/// the overlay's port is open to the hosts of the `overlay_peers` sets only.
pub fn ruleset(egress: bool, overlay: bool) -> String {
    let overlay_input = if overlay {
        format!(
            "        udp dport {OVERLAY_PORT} ip saddr != @overlay_peers4 counter drop\n\
             \x20       udp dport {OVERLAY_PORT} ip6 saddr != @overlay_peers6 counter drop\n"
        )
    } else {
        String::new()
    };
    let pool = format!("{}.{}.0.0/16", IPV4_POOL[0], IPV4_POOL[1]);
    let (egress_forward, egress_nat) = if egress {
        (
            "        iifname \"hgn*\" oifname != \"hgn*\" accept\n\
             \x20       oifname \"hgn*\" ct state established,related accept\n"
                .to_string(),
            format!(
                "    chain postrouting {{\n\
                 \x20       type nat hook postrouting priority srcnat; policy accept;\n\
                 \x20       ip saddr {pool} oifname != \"hgn*\" masquerade\n\
                 \x20       ip6 saddr fdaa::/16 oifname != \"hgn*\" masquerade\n\
                 \x20   }}\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "table bridge {TABLE} {{}}\n\
         delete table bridge {TABLE}\n\
         table bridge {TABLE} {{\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter; policy accept;\n\
         \x20       iifname \"hgx*\" ether type != ip6 counter drop\n\
         \x20       oifname \"hgx*\" ether type != ip6 counter drop\n\
         \x20       iifname \"hgv*\" oifname \"hgv*\" meta mark set meta mark | {BRIDGED_MARK:#x}\n\
         \x20       iifname \"hgv*\" oifname \"hgx*\" meta mark set meta mark | {BRIDGED_MARK:#x}\n\
         \x20       iifname \"hgx*\" oifname \"hgv*\" meta mark set meta mark | {BRIDGED_MARK:#x}\n\
         \x20   }}\n\
         }}\n\
         table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20   set overlay_peers4 {{ type ipv4_addr; }}\n\
         \x20   set overlay_peers6 {{ type ipv6_addr; }}\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority filter - 10; policy accept;\n\
         {overlay_input}\
         \x20       iifname \"hgn*\" jump from_machines\n\
         \x20   }}\n\
         \x20   chain from_machines {{\n\
         \x20       ct state established,related accept\n\
         \x20       icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept\n\
         \x20       ip6 daddr {RESOLVER} udp dport 53 accept\n\
         \x20       ip6 daddr {RESOLVER} tcp dport 53 accept\n\
         \x20       counter drop\n\
         \x20   }}\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter - 10; policy accept;\n\
         \x20       iifname \"hgn*\" meta mark & {BRIDGED_MARK:#x} == {BRIDGED_MARK:#x} accept\n\
         {egress_forward}\
         \x20       iifname \"hgn*\" counter drop\n\
         \x20       oifname \"hgn*\" counter drop\n\
         \x20   }}\n\
         {egress_nat}\
         }}\n"
    )
}

/// Replaces the `inet hangar` table with [`ruleset`].
pub fn apply(egress: bool, overlay: bool) -> Result<(), FirewallError> {
    run_nft(&["-f", "-"], &ruleset(egress, overlay))
}

/// Has `nft` parse and check the ruleset without applying it.
pub fn check(egress: bool, overlay: bool) -> Result<(), FirewallError> {
    run_nft(&["-c", "-f", "-"], &ruleset(egress, overlay))
}

/// The commands that make `peers` the hosts the overlay takes packets from.
pub fn overlay_peers_commands(peers: &[IpAddr]) -> String {
    let mut out =
        format!("flush set inet {TABLE} overlay_peers4\nflush set inet {TABLE} overlay_peers6\n");
    for (set, v4) in [("overlay_peers4", true), ("overlay_peers6", false)] {
        let of_family: Vec<String> = peers
            .iter()
            .filter(|p| p.is_ipv4() == v4)
            .map(|p| p.to_string())
            .collect();
        if !of_family.is_empty() {
            out.push_str(&format!(
                "add element inet {TABLE} {set} {{ {} }}\n",
                of_family.join(", ")
            ));
        }
    }
    out
}

/// Makes `peers` the hosts the overlay's port takes packets from (in one `nft` transaction).
pub fn set_overlay_peers(peers: &[IpAddr]) -> Result<(), FirewallError> {
    run_nft(&["-f", "-"], &overlay_peers_commands(peers))
}

fn run_nft(args: &[&str], input: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| FirewallError::Io {
                what: "writing the ruleset to nft",
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| FirewallError::Io {
            what: "waiting for nft",
            source,
        })?;
    if !out.status.success() {
        return Err(FirewallError::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Turns on IPv4 and IPv6 forwarding, which egress needs (the rules above still confine it).
pub fn enable_forwarding() -> Result<(), FirewallError> {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        std::fs::write(path, "1").map_err(|source| FirewallError::Io {
            what: "turning on forwarding",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ruleset_drops_machine_traffic_unless_egress_is_on() {
        let closed = ruleset(false, false);
        assert!(closed.contains("iifname \"hgn*\" counter drop"));
        assert!(closed.contains("ip6 daddr fdaa::3 udp dport 53 accept"));
        assert!(!closed.contains("masquerade"));
        let open = ruleset(true, false);
        assert!(open.contains("masquerade"));
        // Egress never opens a path into another network.
        assert!(open.contains("oifname != \"hgn*\" accept"));
    }

    #[test]
    fn test_nft_accepts_every_ruleset() {
        for (egress, overlay) in [(false, false), (true, false), (false, true), (true, true)] {
            check(egress, overlay).unwrap();
        }
    }

    #[test]
    fn test_only_ipv6_crosses_the_overlay_and_only_from_peers() {
        let rules = ruleset(false, true);
        assert!(rules.contains("oifname \"hgx*\" ether type != ip6 counter drop"));
        assert!(rules.contains("udp dport 4789 ip saddr != @overlay_peers4 counter drop"));
        assert!(!ruleset(false, false).contains("dport 4789"));
        let cmds =
            overlay_peers_commands(&["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
        assert!(
            cmds.contains("add element inet hangar overlay_peers4 { 10.0.0.2 }"),
            "{cmds}"
        );
        assert!(
            cmds.contains("add element inet hangar overlay_peers6 { fd00::2 }"),
            "{cmds}"
        );
        assert!(!overlay_peers_commands(&[]).contains("add element"));
    }
}
