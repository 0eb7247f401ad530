//! The machines the resolver knows, by id.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::RwLock;

use hangar_net::plan::{Ipv4Block, SixPn};

/// One machine as the resolver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub app: String,
    pub region: String,
    pub ipv6: Ipv6Addr,
    pub ipv4: Option<Ipv4Addr>,
    /// `started`: answered by the AAAA names; others only by the `all.` TXT names.
    pub started: bool,
    /// `dns.skip_registration`: in no answer at all.
    pub skip_registration: bool,
    /// The machine's metadata (`fly_process_group` and the `kv._metadata` names).
    pub metadata: BTreeMap<String, String>,
}

impl Entry {
    pub fn network(&self) -> Option<u32> {
        SixPn::network_of(self.ipv6)
    }
}

/// Who is asking: a machine sees its own network; the host sees every network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Network(u32),
    Host,
    /// An address that belongs to no network the resolver knows: sees nothing.
    Nobody,
}

#[derive(Default)]
pub struct Directory {
    machines: RwLock<BTreeMap<String, Entry>>,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    /// Adds or replaces a machine.
    pub fn put(&self, entry: Entry) {
        self.machines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.id.clone(), entry);
    }

    pub fn remove(&self, id: &str) {
        self.machines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The scope of a query from `src`.
    pub fn scope_of(&self, src: IpAddr) -> Scope {
        let src = match src {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match src {
            IpAddr::V6(a) if a.is_loopback() => Scope::Host,
            IpAddr::V6(a) => match SixPn::network_of(a) {
                Some(n) => Scope::Network(n),
                None => Scope::Host,
            },
            IpAddr::V4(a) if a.is_loopback() => Scope::Host,
            IpAddr::V4(a) => match Ipv4Block::of(a) {
                // The block of a machine's IPv4 names its network.
                Some((block, _)) => self
                    .machines
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .find(|e| e.ipv4.and_then(Ipv4Block::of).map(|(b, _)| b) == Some(block))
                    .and_then(Entry::network)
                    .map_or(Scope::Nobody, Scope::Network),
                None => Scope::Host,
            },
        }
    }

    /// The registered machines `scope` may see, in id order (a stable order for `top<N>`).
    pub fn visible(&self, scope: Scope) -> Vec<Entry> {
        self.machines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| !e.skip_registration)
            .filter(|e| match scope {
                Scope::Host => true,
                Scope::Network(n) => e.network() == Some(n),
                Scope::Nobody => false,
            })
            .cloned()
            .collect()
    }

    /// Apps with a registered machine in `scope`, by name.
    pub fn apps(&self, scope: Scope) -> BTreeSet<String> {
        self.visible(scope).into_iter().map(|e| e.app).collect()
    }
}
