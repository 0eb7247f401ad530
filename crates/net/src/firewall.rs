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
//! Hosts with `br_netfilter` loaded (Docker loads it) pass even frames bridged between two
//! machines of one network through the inet forward hook, with the bridge as both interfaces.
//! A `bridge hangar` table marks those frames first (from one machine's veth to another's: the
//! ports of one bridge), and the inet forward chain lets marked packets through.
//!
//! Applied with Debian's `nft`: the ruleset is static text, read by a tool that is made for it,
//! once per daemon start.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::plan::{IPV4_POOL, RESOLVER};

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
/// succeed on a host where it did not exist; the file is applied atomically.
pub fn ruleset(egress: bool) -> String {
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
         \x20       iifname \"hgv*\" oifname \"hgv*\" meta mark set meta mark | {BRIDGED_MARK:#x}\n\
         \x20   }}\n\
         }}\n\
         table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority filter - 10; policy accept;\n\
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
pub fn apply(egress: bool) -> Result<(), FirewallError> {
    run_nft(&["-f", "-"], egress)
}

/// Has `nft` parse and check the ruleset without applying it.
pub fn check(egress: bool) -> Result<(), FirewallError> {
    run_nft(&["-c", "-f", "-"], egress)
}

fn run_nft(args: &[&str], egress: bool) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset(egress).as_bytes())
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
        let closed = ruleset(false);
        assert!(closed.contains("iifname \"hgn*\" counter drop"));
        assert!(closed.contains("ip6 daddr fdaa::3 udp dport 53 accept"));
        assert!(!closed.contains("masquerade"));
        let open = ruleset(true);
        assert!(open.contains("masquerade"));
        // Egress never opens a path into another network.
        assert!(open.contains("oifname != \"hgn*\" accept"));
    }

    #[test]
    fn test_nft_accepts_both_rulesets() {
        check(false).unwrap();
        check(true).unwrap();
    }
}
