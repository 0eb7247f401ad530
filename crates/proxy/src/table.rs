//! Services by edge port, as the machines' configs declare them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hangar_api::config::{Autostop, MachineCheck, MachinePort, MachineService};

/// Fly's default soft limit (connections) when a service sets none.
pub const DEFAULT_SOFT_LIMIT: u32 = 20;

/// One edge port (or range) of a service, with its handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePort {
    pub first: u16,
    pub last: u16,
    pub http: bool,
    pub tls: bool,
    /// `pg_tls`: PostgreSQL's SSLRequest answered and TLS terminated by the proxy.
    pub pg_tls: bool,
    pub force_https: bool,
    /// `Some(2)` for PROXY protocol v2, `Some(1)` for v1.
    pub proxy_proto: Option<u8>,
    /// `tls_options` (`alpn`, `versions`) as given.
    pub tls_options: Option<serde_json::Value>,
    pub http_options: HttpOptions,
}

/// `http_options` of an edge port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpOptions {
    /// Talk HTTP/2 (h2c, prior knowledge) to the machine, for gRPC.
    pub h2_backend: bool,
    /// `response.pristine`: add none of the proxy's own response headers.
    pub pristine: bool,
    /// `response.headers`: set (a value or a list of them) or remove (`false`) each header.
    pub response_headers: Vec<(String, Option<Vec<String>>)>,
}

impl HttpOptions {
    fn from_config(v: Option<&serde_json::Value>) -> HttpOptions {
        let Some(v) = v else {
            return HttpOptions::default();
        };
        let response = v.get("response");
        let response_headers = response
            .and_then(|r| r.get("headers"))
            .and_then(|h| h.as_object())
            .map(|h| {
                h.iter()
                    .map(|(name, value)| {
                        let values = match value {
                            serde_json::Value::Bool(false) | serde_json::Value::Null => None,
                            serde_json::Value::Array(list) => Some(
                                list.iter()
                                    .map(|v| {
                                        v.as_str().map_or_else(|| v.to_string(), str::to_string)
                                    })
                                    .collect(),
                            ),
                            serde_json::Value::String(s) => Some(vec![s.clone()]),
                            other => Some(vec![other.to_string()]),
                        };
                        (name.to_ascii_lowercase(), values)
                    })
                    .collect()
            })
            .unwrap_or_default();
        HttpOptions {
            h2_backend: v
                .get("h2_backend")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            pristine: response
                .and_then(|r| r.get("pristine"))
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            response_headers,
        }
    }
}

impl EdgePort {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A machine's service, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub internal_port: u16,
    pub ports: Vec<EdgePort>,
    /// Unset means on (Fly Proxy treats `null` as `true`).
    pub autostart: bool,
    pub autostop: Autostop,
    pub min_machines_running: u32,
    pub soft_limit: u32,
    pub hard_limit: Option<u32>,
    /// Service checks: a machine failing one is out of rotation.
    pub checks: Vec<Check>,
}

/// The edge ports of a `ports` entry: `port`, or `start_port`–`end_port`; `None` when
/// unusable.
fn edge_range(p: &MachinePort) -> Option<(u16, u16)> {
    let (first, last) = match (p.port, p.start_port, p.end_port) {
        (Some(port), _, _) => (port, port),
        (None, Some(a), Some(b)) => (a, b),
        _ => return None,
    };
    let first = u16::try_from(first).ok().filter(|p| *p > 0)?;
    let last = u16::try_from(last).ok().filter(|p| *p >= first)?;
    Some((first, last))
}

impl Service {
    /// The typed view of a TCP service; `None` for UDP ones (not proxied) and unusable ports.
    pub fn from_config(s: &MachineService) -> Option<Service> {
        if !s.protocol.is_empty() && s.protocol != "tcp" {
            return None;
        }
        let internal_port = u16::try_from(s.internal_port).ok().filter(|p| *p > 0)?;
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let (first, last) = edge_range(p)?;
                let handlers: BTreeSet<&str> =
                    p.handlers.iter().flatten().map(String::as_str).collect();
                let proxy_proto = handlers.contains("proxy_proto").then(|| {
                    let v2 = p
                        .proxy_proto_options
                        .as_ref()
                        .and_then(|o| o.get("version"))
                        .and_then(|v| v.as_str())
                        == Some("v2");
                    if v2 {
                        2
                    } else {
                        1
                    }
                });
                Some(EdgePort {
                    first,
                    last,
                    http: handlers.contains("http"),
                    tls: handlers.contains("tls"),
                    pg_tls: handlers.contains("pg_tls"),
                    force_https: p.force_https,
                    proxy_proto,
                    tls_options: p.tls_options.clone(),
                    http_options: HttpOptions::from_config(p.http_options.as_ref()),
                })
            })
            .collect();
        let concurrency = s.concurrency.as_ref();
        Some(Service {
            internal_port,
            ports,
            autostart: s.autostart.unwrap_or(true),
            autostop: s.autostop.unwrap_or(Autostop::Off),
            min_machines_running: s
                .min_machines_running
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            soft_limit: concurrency
                .and_then(|c| c.soft_limit)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_SOFT_LIMIT),
            hard_limit: concurrency
                .and_then(|c| c.hard_limit)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            checks: s
                .checks
                .iter()
                .flatten()
                .filter_map(|c| Check::from_config(c, internal_port))
                .collect(),
        })
    }

    pub fn port(&self, port: u16) -> Option<&EdgePort> {
        self.ports.iter().find(|p| p.contains(port))
    }
}

/// A UDP service: datagrams to its edge ports go to `internal_port` of one of its machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpService {
    pub internal_port: u16,
    /// Edge port ranges (`port`, or `start_port`–`end_port`).
    pub ports: Vec<(u16, u16)>,
}

impl UdpService {
    /// The typed view of a UDP service; `None` for TCP ones and unusable ports.
    pub fn from_config(s: &MachineService) -> Option<UdpService> {
        if s.protocol != "udp" {
            return None;
        }
        let internal_port = u16::try_from(s.internal_port).ok().filter(|p| *p > 0)?;
        let ports = s.ports.iter().flatten().filter_map(edge_range).collect();
        Some(UdpService {
            internal_port,
            ports,
        })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ports.iter().any(|(a, b)| (*a..=*b).contains(&port))
    }
}

/// A service check, typed; durations are clamped to 1 s … 1 min as Fly's API clamps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub port: u16,
    /// `Some((method, path))` for http checks; `None` for tcp.
    pub http: Option<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
}

fn clamp(d: Option<Duration>, default: Duration) -> Duration {
    d.unwrap_or(default)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl Check {
    pub fn from_config(c: &MachineCheck, internal_port: u16) -> Option<Check> {
        let http = match c.kind_type.as_deref().unwrap_or("tcp") {
            "tcp" => None,
            "http" => Some((
                c.method
                    .clone()
                    .unwrap_or_else(|| "GET".into())
                    .to_ascii_uppercase(),
                c.path.clone().unwrap_or_else(|| "/".into()),
            )),
            _ => return None,
        };
        Some(Check {
            port: c
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or(internal_port),
            http,
            interval: clamp(c.interval.map(|d| d.as_duration()), Duration::from_secs(15)),
            timeout: clamp(c.timeout.map(|d| d.as_duration()), Duration::from_secs(2)),
        })
    }
}

/// A machine as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub id: String,
    pub app: String,
    /// `started`: routable. Other states matter for autostart (`stopped`, `suspended`).
    pub state: String,
    pub started: bool,
    pub ipv4: Option<Ipv4Addr>,
    /// Cluster mode: the host that runs it when another one does (what the daemon's
    /// [`Controller::backhaul`](crate::Controller::backhaul) reaches it through); `None`: this
    /// host runs it. Only the host that runs a machine stops it when idle.
    pub via: Option<String>,
    /// `skip_service_registration`: never routed to.
    pub cordoned: bool,
    pub services: Vec<Service>,
    pub udp: Vec<UdpService>,
}

impl MachineView {
    /// The most restrictive autostop across its services (`off` < `stop` < `suspend`).
    pub fn autostop(&self) -> Autostop {
        let rank = |a: &Autostop| match a {
            Autostop::Off => 0,
            Autostop::Stop => 1,
            Autostop::Suspend => 2,
        };
        self.services
            .iter()
            .map(|s| s.autostop)
            .min_by_key(rank)
            .unwrap_or(Autostop::Off)
    }
}

/// A machine that serves an edge port, with that service's settings (shared with the table,
/// not copied: the proxy looks these up on every request).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub machine: Arc<MachineView>,
    service: usize,
    edge: usize,
}

impl Candidate {
    pub fn service(&self) -> &Service {
        &self.machine.services[self.service]
    }

    pub fn edge(&self) -> &EdgePort {
        &self.service().ports[self.edge]
    }
}

/// A [`Candidate`] borrowed from the table (choosing among them copies nothing shared).
#[derive(Debug, Clone, Copy)]
pub struct CandidateRef<'a> {
    pub machine: &'a Arc<MachineView>,
    service: usize,
    edge: usize,
}

impl<'a> CandidateRef<'a> {
    pub fn service(&self) -> &'a Service {
        &self.machine.services[self.service]
    }

    pub fn to_candidate(self) -> Candidate {
        Candidate {
            machine: self.machine.clone(),
            service: self.service,
            edge: self.edge,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    machines: BTreeMap<String, Arc<MachineView>>,
    /// The same machines by app, each app's in id order: a request looks only at its app's
    /// (a cluster's table holds every host's machines).
    by_app: BTreeMap<String, BTreeMap<String, Arc<MachineView>>>,
}

impl Table {
    pub fn put(&mut self, m: MachineView) {
        let m = Arc::new(m);
        if let Some(old) = self.machines.insert(m.id.clone(), m.clone()) {
            if old.app != m.app {
                self.remove_from_app(&old.app, &old.id);
            }
        }
        self.by_app
            .entry(m.app.clone())
            .or_default()
            .insert(m.id.clone(), m);
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(old) = self.machines.remove(id) {
            self.remove_from_app(&old.app, id);
        }
    }

    fn remove_from_app(&mut self, app: &str, id: &str) {
        if let Some(of_app) = self.by_app.get_mut(app) {
            of_app.remove(id);
            if of_app.is_empty() {
                self.by_app.remove(app);
            }
        }
    }

    pub fn machines(&self) -> impl Iterator<Item = &MachineView> {
        self.machines.values().map(|m| m.as_ref())
    }

    pub fn get(&self, id: &str) -> Option<&MachineView> {
        self.machines.get(id).map(|m| m.as_ref())
    }

    /// Every edge port some machine exposes.
    pub fn edge_ports(&self) -> BTreeSet<u16> {
        let mut out = BTreeSet::new();
        for m in self.machines.values() {
            for s in &m.services {
                for p in &s.ports {
                    out.extend(p.first..=p.last);
                }
            }
        }
        out
    }

    /// The machines serving `port`, by app (machines in id order).
    pub fn candidates(&self, port: u16) -> BTreeMap<String, Vec<Candidate>> {
        let mut out: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        for m in self.machines.values() {
            let found = m.services.iter().enumerate().find_map(|(si, s)| {
                s.ports
                    .iter()
                    .position(|p| p.contains(port))
                    .map(|ei| (si, ei))
            });
            if let Some((service, edge)) = found {
                out.entry(m.app.clone()).or_default().push(Candidate {
                    machine: m.clone(),
                    service,
                    edge,
                });
            }
        }
        out
    }

    /// The machines of `app` serving `port`, in id order: what each request chooses from.
    pub fn candidates_of(&self, port: u16, app: &str) -> Vec<Candidate> {
        self.candidate_refs(port, app)
            .map(CandidateRef::to_candidate)
            .collect()
    }

    /// [`candidates_of`](Self::candidates_of), borrowed.
    pub fn candidate_refs<'a>(
        &'a self,
        port: u16,
        app: &str,
    ) -> impl Iterator<Item = CandidateRef<'a>> {
        self.by_app
            .get(app)
            .into_iter()
            .flat_map(|of_app| of_app.values())
            .filter_map(move |m| {
                let (service, edge) = m.services.iter().enumerate().find_map(|(si, s)| {
                    s.ports
                        .iter()
                        .position(|p| p.contains(port))
                        .map(|ei| (si, ei))
                })?;
                Some(CandidateRef {
                    machine: m,
                    service,
                    edge,
                })
            })
    }

    /// The apps with an edge on `port` that passes `edge`, by name.
    pub fn apps_on(&self, port: u16, edge: impl Fn(&EdgePort) -> bool) -> Vec<&str> {
        let mut apps: Vec<&str> = self
            .machines
            .values()
            .filter(|m| {
                m.services
                    .iter()
                    .flat_map(|s| s.ports.iter())
                    .any(|p| p.contains(port) && edge(p))
            })
            .map(|m| m.app.as_str())
            .collect();
        apps.sort_unstable();
        apps.dedup();
        apps
    }

    /// Every UDP edge port some machine exposes, with the apps exposing it.
    pub fn udp_ports(&self) -> BTreeMap<u16, BTreeSet<&str>> {
        let mut out: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
        for m in self.machines.values() {
            for s in &m.udp {
                for (a, b) in &s.ports {
                    for port in *a..=*b {
                        out.entry(port).or_default().insert(m.app.as_str());
                    }
                }
            }
        }
        out
    }

    /// The machines of `app` serving UDP `port`, with the machine port it goes to.
    pub fn udp_candidates_of(&self, port: u16, app: &str) -> Vec<(Arc<MachineView>, u16)> {
        self.by_app
            .get(app)
            .into_iter()
            .flat_map(|of_app| of_app.values())
            // UDP flows are relayed to this host's machines only.
            .filter(|m| m.via.is_none())
            .filter_map(|m| {
                let s = m.udp.iter().find(|s| s.contains(port))?;
                Some((m.clone(), s.internal_port))
            })
            .collect()
    }

    /// Another app holding UDP `port` (a UDP port belongs to one app, as a raw TCP one);
    /// apps for which `elsewhere` holds keep theirs on a dedicated address.
    pub fn udp_conflict(
        &self,
        app: &str,
        port: u16,
        elsewhere: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.udp_ports()
            .get(&port)?
            .iter()
            .find(|other| **other != app && !elsewhere(other))
            .map(|other| other.to_string())
    }

    /// Another app whose services hold `port` in a way that cannot be shared with `app`'s
    /// use of it: raw TCP (or TLS-passthrough) ports belong to one app; HTTP ports are shared,
    /// routed by `Host`. Apps for which `elsewhere` holds keep their raw ports off these
    /// addresses (on a dedicated one) and conflict with no one here through them.
    pub fn conflict(
        &self,
        app: &str,
        port: u16,
        http: bool,
        elsewhere: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.candidates(port)
            .into_iter()
            .find(|(other, c)| {
                other != app
                    && (!http || c.iter().any(|c| !c.edge().http))
                    && !(elsewhere(other) && c.iter().all(|c| !c.edge().http))
            })
            .map(|(other, _)| other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: serde_json::Value) -> Service {
        let s: MachineService = serde_json::from_value(v).unwrap();
        Service::from_config(&s).unwrap()
    }

    #[test]
    fn test_reads_services_as_fly_defines_them() {
        let s = service(serde_json::json!({
            "protocol": "tcp", "internal_port": 8080,
            "ports": [{"port": 80, "handlers": ["http"], "force_https": true},
                      {"port": 443, "handlers": ["tls", "http"]},
                      {"start_port": 9000, "end_port": 9002, "handlers": ["proxy_proto"],
                       "proxy_proto_options": {"version": "v2"}}],
            "autostop": "suspend", "min_machines_running": 1,
            "concurrency": {"type": "requests", "soft_limit": 5, "hard_limit": 10}
        }));
        assert_eq!(s.internal_port, 8080);
        assert!(s.autostart, "unset autostart means on");
        assert_eq!(s.autostop, Autostop::Suspend);
        assert_eq!((s.soft_limit, s.hard_limit), (5, Some(10)));
        assert!(s.port(80).unwrap().force_https);
        assert!(s.port(443).unwrap().tls && s.port(443).unwrap().http);
        assert_eq!(s.port(9001).unwrap().proxy_proto, Some(2));
        assert!(s.port(81).is_none());
    }

    #[test]
    fn test_tcp_ports_belong_to_one_app_http_ports_are_shared() {
        let mut t = Table::default();
        let m = |id: &str, app: &str, handlers: serde_json::Value| MachineView {
            udp: Vec::new(),
            id: id.into(),
            app: app.into(),
            state: "started".into(),
            started: true,
            ipv4: None,
            via: None,
            cordoned: false,
            services: vec![service(serde_json::json!({
                "internal_port": 8080, "ports": [{"port": 80, "handlers": handlers}]
            }))],
        };
        t.put(m("a1", "a", serde_json::json!(["http"])));
        assert_eq!(t.conflict("b", 80, true, |_| false), None);
        assert_eq!(t.conflict("b", 80, false, |_| false), Some("a".into()));
        t.put(m("c1", "c", serde_json::json!([])));
        assert_eq!(t.conflict("b", 80, true, |_| false), Some("c".into()));
        assert_eq!(t.conflict("a", 81, false, |_| false), None);
        assert_eq!(t.edge_ports().into_iter().collect::<Vec<_>>(), vec![80]);

        // Each app's candidates, in id order, and none of another app's.
        t.put(m("a0", "a", serde_json::json!(["http"])));
        let ids = |t: &Table, app: &str| -> Vec<String> {
            t.candidates_of(80, app)
                .into_iter()
                .map(|c| c.machine.id.clone())
                .collect()
        };
        assert_eq!(ids(&t, "a"), ["a0", "a1"]);
        assert_eq!(ids(&t, "c"), ["c1"]);
        // A machine put again under another app moves; a removed one goes.
        t.put(m("a0", "c", serde_json::json!([])));
        assert_eq!(ids(&t, "a"), ["a1"]);
        assert_eq!(ids(&t, "c"), ["a0", "c1"]);
        t.remove("a1");
        assert!(ids(&t, "a").is_empty());
        assert!(!t.by_app.contains_key("a"), "no empty app left behind");
    }
}
