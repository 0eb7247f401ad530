//! Service checks: tcp and http probes of each started machine's services, run by the proxy
//! over the machine's private IPv4. A machine whose check fails is out of rotation until it
//! passes again; checks never stop or restart it (Fly's rule).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hangar_api::config::MachineCheck;
use http_body_util::Empty;

use crate::Proxy;

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

/// Results by (machine, check index): `true` passing.
#[derive(Default)]
pub struct Health {
    results: std::sync::Mutex<HashMap<(String, usize), (bool, Instant)>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, usize), (bool, Instant)>> {
        self.results.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routable unless one of its checks failed last time (not yet checked counts as passing,
    /// so a machine started for a request serves it).
    pub fn routable(&self, id: &str) -> bool {
        !self.lock().iter().any(|((m, _), (ok, _))| m == id && !ok)
    }

    pub fn forget(&self, id: &str) {
        self.lock().retain(|(m, _), _| m != id);
    }
}

type ProbeClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

async fn probe(client: &ProbeClient, addr: SocketAddr, check: &Check) -> bool {
    let attempt = async {
        match &check.http {
            None => tokio::net::TcpStream::connect(addr).await.is_ok(),
            Some((method, path)) => {
                let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) else {
                    return false;
                };
                let Ok(req) = hyper::Request::builder()
                    .method(method)
                    .uri(format!("http://{addr}{path}"))
                    .body(Empty::new())
                else {
                    return false;
                };
                // 2xx passes; redirects are not followed (Fly's rule).
                client
                    .request(req)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(false)
}

impl Proxy {
    /// Runs every started machine's service checks on their intervals, until the proxy goes.
    pub fn start_checks(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let client: ProbeClient =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build_http();
            let mut due: HashMap<(String, usize), Instant> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(this) = me.upgrade() else { return };
                let now = Instant::now();
                let table = this.table();
                let mut live = std::collections::HashSet::new();
                for m in table.machines() {
                    let Some(ip) = m.ipv4.filter(|_| m.started) else {
                        this.health.forget(&m.id);
                        continue;
                    };
                    for (i, check) in m.services.iter().flat_map(|s| s.checks.iter()).enumerate() {
                        let key = (m.id.clone(), i);
                        live.insert(key.clone());
                        if due.get(&key).is_some_and(|t| *t > now) {
                            continue;
                        }
                        due.insert(key.clone(), now + check.interval);
                        let (this, client, check) = (this.clone(), client.clone(), check.clone());
                        let addr = SocketAddr::new(ip.into(), check.port);
                        tokio::spawn(async move {
                            let ok = probe(&client, addr, &check).await;
                            let mut results = this.health.lock();
                            let was = results.insert(key.clone(), (ok, Instant::now()));
                            if was.map(|(w, _)| w) != Some(ok) {
                                tracing::info!(machine = %key.0, check = key.1, passing = ok, "proxy: service check changed");
                            }
                        });
                    }
                }
                due.retain(|k, _| live.contains(k));
            }
        });
    }
}
