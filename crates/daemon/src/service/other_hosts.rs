//! Cluster mode: what this host knows of the machines other hosts run. Each host publishes its
//! own machines' writes to its resolver and proxy as it makes them; the others' are read from
//! the shared store every [`OTHER_HOSTS_REFRESH`], so that `.internal` names answer for the
//! whole network and any host's proxy routes to any host's machines (through the host that
//! runs them: the backhaul).

use std::collections::{HashMap, HashSet};

use super::hosts::silence;
use super::network::directory_entry;
use super::proxy::view;
use super::*;

/// How often a host reads the other hosts and their machines: a machine made (or started) on
/// one host resolves and is routed to on the others within this.
pub const OTHER_HOSTS_REFRESH: Duration = Duration::from_secs(1);

impl Hangar {
    /// Reads the other hosts and their machines: updates the resolver and the proxy, and
    /// returns the other hosts' API addresses (where their overlay packets come from).
    pub async fn refresh_from_other_hosts(&self) -> ServiceResult<Vec<String>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let (hosts, machines) = db(&self.store, |s| {
            Ok((s.list_hosts()?, s.list_live_machines()?))
        })
        .await?;
        let now = now_ms();
        let hosts: HashMap<&str, &HostRecord> = hosts
            .iter()
            .filter(|h| h.id != self.host_id)
            .map(|h| (h.id.as_str(), h))
            .collect();
        let proxy = self.proxy.get();
        let table = proxy.map(|p| p.table());
        let mut known = self
            .from_other_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut now_known = HashSet::new();
        for m in machines.iter().filter(|m| m.host_id != self.host_id) {
            let Some(entry) = directory_entry(m) else {
                continue;
            };
            now_known.insert(m.id.clone());
            self.directory.put(entry);
            let (Some(proxy), Some(table)) = (proxy, &table) else {
                continue;
            };
            let host = hosts.get(m.host_id.as_str());
            let mut v = view(m, host.map(|h| h.api_addr.clone()));
            // A silent host's machines are not routed to (nor is one without an API address):
            // requests would wait on a host that does not answer.
            if host.is_none_or(|h| h.api_addr.is_empty() || silence(h, now).is_some()) {
                v.started = false;
            }
            if table.get(&v.id) != Some(&v) {
                proxy.put(v);
            }
        }
        for gone in known.difference(&now_known) {
            // Destroyed, or now this host's (whose own writes publish it).
            if !machines
                .iter()
                .any(|m| m.id == *gone && m.host_id == self.host_id)
            {
                self.directory.remove(gone);
                if let Some(proxy) = proxy {
                    proxy.remove(gone);
                }
            }
        }
        *known = now_known;
        Ok(hosts.values().map(|h| h.api_addr.clone()).collect())
    }
}
