//! What `hangar services list` shows: each edge port of an app, where it listens, and the
//! machines behind it with their load and health.

use serde::Serialize;

use crate::Proxy;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackendStatus {
    pub id: String,
    pub state: String,
    /// Whether the proxy would send traffic to it now (started, checks passing).
    pub routable: bool,
    /// In-flight requests or connections.
    pub load: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `80` or `9000-9002`; UDP ones `53/udp`.
    pub port: String,
    pub handlers: Vec<&'static str>,
    pub internal_port: u16,
    /// Where the port is open (`127.0.0.1:80`); empty when nothing listens (no
    /// `--proxy-bind`, networking off, or the bind failed).
    pub listening: Vec<String>,
    pub machines: Vec<BackendStatus>,
}

/// The range's label: `80`, `9000-9002`, with `suffix` (`/udp`).
fn label(first: u16, last: u16, suffix: &str) -> String {
    if first == last {
        format!("{first}{suffix}")
    } else {
        format!("{first}-{last}{suffix}")
    }
}

/// The entry labelled `port` in `out`, made by `make` when there is none yet.
fn entry(
    out: &mut Vec<ServiceStatus>,
    port: String,
    make: impl FnOnce(String) -> ServiceStatus,
) -> &mut ServiceStatus {
    let idx = match out.iter().position(|o| o.port == port) {
        Some(i) => i,
        None => {
            out.push(make(port));
            out.len() - 1
        }
    };
    &mut out[idx]
}

/// The addresses of `open` whose port is in `first..=last`.
fn listening_on(open: &[std::net::SocketAddr], first: u16, last: u16) -> Vec<String> {
    open.iter()
        .filter(|a| (first..=last).contains(&a.port()))
        .map(|a| a.to_string())
        .collect()
}

impl Proxy {
    /// The app's edge ports, lowest first.
    pub fn services(&self, app: &str) -> Vec<ServiceStatus> {
        let table = self.table();
        let (tcp_open, udp_open) = (self.listening(), self.udp_listening());
        let backend = |m: &crate::table::MachineView| BackendStatus {
            id: m.id.clone(),
            state: m.state.clone(),
            routable: m.started && !m.cordoned && self.health.routable(&m.id),
            load: self.load.inflight(&m.id),
        };
        let mut out: Vec<ServiceStatus> = Vec::new();
        for m in table.machines().filter(|m| m.app == app) {
            for s in &m.services {
                for p in &s.ports {
                    let e = entry(&mut out, label(p.first, p.last, ""), |port| {
                        let handlers = [
                            (p.tls, "tls"),
                            (p.pg_tls, "pg_tls"),
                            (p.http, "http"),
                            (p.proxy_proto.is_some(), "proxy_proto"),
                        ]
                        .into_iter()
                        .filter_map(|(on, name)| on.then_some(name))
                        .collect();
                        ServiceStatus {
                            port,
                            handlers,
                            internal_port: s.internal_port,
                            listening: listening_on(&tcp_open, p.first, p.last),
                            machines: Vec::new(),
                        }
                    });
                    e.machines.push(backend(m));
                }
            }
            for s in &m.udp {
                for &(first, last) in &s.ports {
                    let e = entry(&mut out, label(first, last, "/udp"), |port| ServiceStatus {
                        port,
                        handlers: Vec::new(),
                        internal_port: s.internal_port,
                        listening: listening_on(&udp_open, first, last),
                        machines: Vec::new(),
                    });
                    e.machines.push(backend(m));
                }
            }
        }
        // By first port; TCP before UDP on the same one.
        out.sort_by_key(|s| {
            let first = s.port.split(['-', '/']).next();
            (
                first.and_then(|p| p.parse::<u16>().ok()),
                s.port.ends_with("/udp"),
            )
        });
        out
    }
}
