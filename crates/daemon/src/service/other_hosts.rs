//! Cluster mode: what this host knows of the machines other hosts run. Each host publishes its
//! own machines' writes to its resolver and proxy as it makes them; the others' are read from
//! the shared store every [`OTHER_HOSTS_REFRESH`], so that `.internal` names answer for the
//! whole network and any host's proxy routes to any host's machines (through the host that
//! runs them: the backhaul).
//!
//! A refresh reads only the machines written lately (`updated_at`, with a margin for the hosts'
//! clocks and for commits still in flight); every [`FULL_REFRESH`], or when a host's liveness
//! changed, it reads them all.

use std::collections::{HashMap, HashSet};

use super::hosts::silence;
use super::network::directory_entry;
use super::proxy::view;
use super::*;

/// How often a host reads the other hosts and their machines: a machine made (or started) on
/// one host resolves and is routed to on the others within this.
pub const OTHER_HOSTS_REFRESH: Duration = Duration::from_secs(1);
/// How often every machine is read again (whatever the incremental reads missed).
const FULL_REFRESH: Duration = Duration::from_secs(60);
/// How far back an incremental read looks before the last one: hosts' clocks differ a little,
/// and a write stamped just before the last read may commit just after it.
const CHANGES_MARGIN_MS: i64 = 30_000;

/// The other hosts' machines as this host last read them.
#[derive(Default)]
pub(super) struct OtherHosts {
    /// Machines in this host's resolver and proxy.
    known: HashSet<String>,
    /// Changes from this time on are read next (`None`: read everything).
    since: Option<i64>,
    last_full: Option<std::time::Instant>,
    /// Hosts judged silent at the last read.
    silent: HashSet<String>,
    /// The hosts' API addresses at the last read (their machines are reached there).
    addrs: HashMap<String, String>,
}

impl Hangar {
    /// Reads the other hosts and their machines: updates the resolver and the proxy, and
    /// returns the other hosts' API addresses (where their overlay packets come from).
    pub async fn refresh_from_other_hosts(&self) -> ServiceResult<Vec<String>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let hosts = db(&self.store, |s| s.list_hosts()).await?;
        let hosts: HashMap<String, HostRecord> = hosts
            .into_iter()
            .filter(|h| h.id != self.host_id)
            .map(|h| (h.id.clone(), h))
            .collect();
        let silent: HashSet<String> = hosts
            .values()
            .filter(|h| silence(h, now).is_some())
            .map(|h| h.id.clone())
            .collect();
        let addrs: HashMap<String, String> = hosts
            .values()
            .map(|h| (h.id.clone(), h.api_addr.clone()))
            .collect();
        let since = {
            let state = self.other_hosts();
            let full_due = state.last_full.is_none_or(|t| t.elapsed() >= FULL_REFRESH);
            // A host that went silent or came back, or moved its API, changes how its machines
            // are routed.
            (!full_due && state.silent == silent && state.addrs == addrs)
                .then_some(state.since)
                .flatten()
        };
        let machines = match since {
            Some(since) => db(&self.store, move |s| s.list_machines_changed_since(since)).await?,
            None => db(&self.store, |s| s.list_live_machines()).await?,
        };
        let mut state = self.other_hosts();
        let mut seen = HashSet::new();
        for m in machines.iter().filter(|m| m.host_id != self.host_id) {
            match directory_entry(m) {
                Some(entry) => {
                    seen.insert(m.id.clone());
                    state.known.insert(m.id.clone());
                    self.directory.put(entry);
                    self.publish_other_hosts_machine(m, hosts.get(&m.host_id), now);
                }
                None => self.forget_other_hosts_machine(&mut state, &m.id),
            }
        }
        if since.is_none() {
            let gone: Vec<String> = state.known.difference(&seen).cloned().collect();
            for id in gone {
                self.forget_other_hosts_machine(&mut state, &id);
            }
            state.last_full = Some(std::time::Instant::now());
        }
        state.since = Some(now - CHANGES_MARGIN_MS);
        state.silent = silent;
        state.addrs = addrs;
        Ok(hosts.into_values().map(|h| h.api_addr).collect())
    }

    fn other_hosts(&self) -> std::sync::MutexGuard<'_, OtherHosts> {
        self.from_other_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Puts another host's machine in the proxy (when it changed), reached through its host.
    fn publish_other_hosts_machine(&self, m: &MachineRecord, host: Option<&HostRecord>, now: i64) {
        let Some(proxy) = self.proxy.get() else {
            return;
        };
        // Always `via` something: `None` would mean this host's (autostop, UDP).
        let mut v = view(
            m,
            Some(host.map(|h| h.api_addr.clone()).unwrap_or_default()),
        );
        // A silent host's machines are not routed to (nor is one without an API address):
        // requests would wait on a host that does not answer.
        if host.is_none_or(|h| h.api_addr.is_empty() || silence(h, now).is_some()) {
            v.started = false;
        }
        if proxy.table().get(&v.id) != Some(&v) {
            proxy.put(v);
        }
    }

    /// Drops a machine destroyed on another host from the resolver and the proxy.
    fn forget_other_hosts_machine(&self, state: &mut OtherHosts, id: &str) {
        if state.known.remove(id) {
            self.directory.remove(id);
            if let Some(proxy) = self.proxy.get() {
                proxy.remove(id);
            }
        }
    }
}
