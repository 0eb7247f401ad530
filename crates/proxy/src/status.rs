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

impl Proxy {
    /// The app's edge ports, lowest first.
    pub fn services(&self, app: &str) -> Vec<ServiceStatus> {
        let table = self.table();
        let listening = self.listening();
        let mut out: Vec<ServiceStatus> = Vec::new();
        for m in table.machines().filter(|m| m.app == app) {
            for s in &m.services {
                for p in &s.ports {
                    let port = if p.first == p.last {
                        p.first.to_string()
                    } else {
                        format!("{}-{}", p.first, p.last)
                    };
                    let idx = match out.iter().position(|o| o.port == port) {
                        Some(i) => i,
                        None => {
                            let mut handlers = Vec::new();
                            for (on, name) in [
                                (p.tls, "tls"),
                                (p.pg_tls, "pg_tls"),
                                (p.http, "http"),
                                (p.proxy_proto.is_some(), "proxy_proto"),
                            ] {
                                if on {
                                    handlers.push(name);
                                }
                            }
                            out.push(ServiceStatus {
                                port,
                                handlers,
                                internal_port: s.internal_port,
                                listening: listening
                                    .iter()
                                    .filter(|a| p.contains(a.port()))
                                    .map(|a| a.to_string())
                                    .collect(),
                                machines: Vec::new(),
                            });
                            out.len() - 1
                        }
                    };
                    out[idx].machines.push(BackendStatus {
                        id: m.id.clone(),
                        state: m.state.clone(),
                        routable: m.started && !m.cordoned && self.health.routable(&m.id),
                        load: self.load.inflight(&m.id),
                    });
                }
            }
        }
        let udp_listening = self.udp_listening();
        for m in table.machines().filter(|m| m.app == app) {
            for s in &m.udp {
                for (first, last) in &s.ports {
                    let port = if first == last {
                        format!("{first}/udp")
                    } else {
                        format!("{first}-{last}/udp")
                    };
                    let idx = match out.iter().position(|o| o.port == port) {
                        Some(i) => i,
                        None => {
                            out.push(ServiceStatus {
                                port,
                                handlers: Vec::new(),
                                internal_port: s.internal_port,
                                listening: udp_listening
                                    .iter()
                                    .filter(|a| (*first..=*last).contains(&a.port()))
                                    .map(|a| a.to_string())
                                    .collect(),
                                machines: Vec::new(),
                            });
                            out.len() - 1
                        }
                    };
                    out[idx].machines.push(BackendStatus {
                        id: m.id.clone(),
                        state: m.state.clone(),
                        routable: m.started && !m.cordoned && self.health.routable(&m.id),
                        load: self.load.inflight(&m.id),
                    });
                }
            }
        }
        out.sort_by_key(|s| {
            s.port
                .split(['-', '/'])
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        });
        out
    }
}
