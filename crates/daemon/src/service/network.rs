//! Machines' private addresses and the resolver's directory.
//!
//! Addresses are allocated in the store when a machine is created (or, for a machine made
//! before networking, at its next boot) and kept for its life: across stops, updates and daemon
//! restarts. The live unique indexes of the store make a racing allocation fail, and it is
//! tried again.

use hangar_net::plan::{Ipv4Block, SixPn, IPV4_BLOCKS, IPV4_BLOCK_MACHINES, IPV4_POOL};

use super::*;

/// The network an app's machines live in (`network` at app create, else the org's default).
pub(super) fn network_name(app: &AppRecord) -> &str {
    if app.network.is_empty() {
        "default"
    } else {
        &app.network
    }
}

/// This host's part of every 6PN address it hands out, chosen once and kept in the store; in a
/// cluster each host has its own (the store is shared), so it is kept under the host's id.
pub(crate) fn host_part(
    store: &dyn Store,
    cluster_host: Option<&str>,
) -> hangar_store::Result<u32> {
    let init = format!("{:08x}", rand::random::<u32>().max(1));
    let key = match cluster_host {
        Some(host) => format!("6pn_host/{host}"),
        None => "6pn_host".to_string(),
    };
    let value = store.setting_or_init(&key, &init)?;
    u32::from_str_radix(&value, 16)
        .map_err(|_| hangar_store::StoreError::Corrupt(format!("6pn_host {value:?}")))
}

/// Picks free addresses for a machine of `app` on host `host`: a random machine part of the
/// network's /48, and the lowest free IPv4 of the network's blocks (claiming another block when
/// they are full).
pub(super) fn allocate(
    store: &dyn Store,
    app: &AppRecord,
    host: u32,
) -> ServiceResult<(String, String)> {
    let name = network_name(app);
    let net = store.ensure_network(&app.org_slug, name, now_ms())?;
    let mut ipv4 = None;
    for block in net.ipv4_blocks.iter().copied().map(Ipv4Block) {
        if let Some(a) = free_ipv4(store, block)? {
            ipv4 = Some(a);
            break;
        }
    }
    let ipv4 = match ipv4 {
        Some(a) => a,
        None => {
            let block = store.claim_ipv4_block(net.id, IPV4_BLOCKS)?.ok_or_else(|| {
                ServiceError::Unavailable(format!(
                    "network {name:?} has no free private IPv4 address on this host: all {} are in use",
                    IPV4_BLOCKS * IPV4_BLOCK_MACHINES
                ))
            })?;
            free_ipv4(store, Ipv4Block(block))?.ok_or_else(|| {
                ServiceError::internal(format!("a new IPv4 block {block} is already in use"))
            })?
        }
    };
    let six = SixPn {
        network: net.id,
        host,
        machine: rand::random::<u32>().max(1),
    };
    Ok((six.address().to_string(), ipv4.to_string()))
}

fn free_ipv4(store: &dyn Store, block: Ipv4Block) -> ServiceResult<Option<std::net::Ipv4Addr>> {
    let prefix = format!("{}.{}.{}.", IPV4_POOL[0], IPV4_POOL[1], block.0);
    let used: std::collections::HashSet<String> =
        store.live_ipv4_addresses(&prefix)?.into_iter().collect();
    Ok((2..=254u8)
        .map(|i| block.address(i))
        .find(|a| !used.contains(&a.to_string())))
}

impl Hangar {
    /// Gives a machine made before networking its addresses (at its boot, where Fly allows an
    /// address to change).
    pub(super) async fn ensure_addresses(&self, m: &mut MachineRecord) -> ServiceResult<()> {
        if has_addresses(m) {
            return Ok(());
        }
        let app = self.get_app(&m.app).await?;
        let host = self.net_host;
        for _ in 0..5 {
            let app = app.clone();
            let (v6, v4) = db(&self.store, move |s| Ok(allocate(s, &app, host))).await??;
            m.private_ip = v6;
            m.private_ipv4 = v4;
            match self.save(m, false, None, None).await {
                Err(ServiceError::Conflict(msg)) if msg.contains("private address") => continue,
                other => return other,
            }
        }
        Err(ServiceError::Unavailable(
            "could not allocate a private address; try again".into(),
        ))
    }

    /// Keeps the resolver's view of `m` current (called after every write of it).
    pub(super) fn publish_to_directory(&self, m: &MachineRecord) {
        match directory_entry(m) {
            Some(entry) => self.directory.put(entry),
            None if m.state == MachineState::Destroyed => self.directory.remove(&m.id),
            None => {}
        }
    }

    /// The machines the resolver answers from.
    pub fn directory(&self) -> Arc<hangar_dns::Directory> {
        self.directory.clone()
    }
}

/// How the resolver sees `m`; `None` for a destroyed machine or one without a 6PN address.
pub(super) fn directory_entry(m: &MachineRecord) -> Option<hangar_dns::Entry> {
    if m.state == MachineState::Destroyed {
        return None;
    }
    let ipv6 = m.private_ip.parse().ok()?;
    Some(hangar_dns::Entry {
        id: m.id.clone(),
        app: m.app.clone(),
        region: m.region.clone(),
        ipv6,
        ipv4: m.private_ipv4.parse().ok(),
        started: m.state == MachineState::Started,
        skip_registration: m
            .config
            .dns
            .as_ref()
            .and_then(|d| d.skip_registration)
            .unwrap_or(false),
        metadata: m
            .config
            .metadata
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    })
}

/// Whether the machine has its private addresses (6PN and IPv4).
pub(super) fn has_addresses(m: &MachineRecord) -> bool {
    m.private_ip
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .and_then(SixPn::parse)
        .is_some()
        && m.private_ipv4.parse::<std::net::Ipv4Addr>().is_ok()
}
