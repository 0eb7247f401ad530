//! Service checks: tcp and http probes of each started machine's services, run by the proxy
//! over the machine's private IPv4 (through its host for another host's machine). A machine
//! whose check fails is out of rotation until it passes again; checks never stop or restart
//! it (Fly's rule).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::table::{Check, MachineView};
use crate::upstream::Purpose;
use crate::Proxy;

/// Results by (machine, check index): `true` passing.
#[derive(Default)]
pub struct Health {
    results: std::sync::Mutex<HashMap<(String, usize), (bool, Instant)>>,
    /// How many of `results` are failing: while none is (the usual case), a request asks
    /// nothing of the shared map (its lock is taken by every worker thread otherwise).
    failing: AtomicUsize,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, usize), (bool, Instant)>> {
        self.results.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routable unless one of its checks failed last time (not yet checked counts as passing,
    /// so a machine started for a request serves it).
    pub fn routable(&self, id: &str) -> bool {
        if self.failing.load(Ordering::Acquire) == 0 {
            return true;
        }
        !self.lock().iter().any(|((m, _), (ok, _))| m == id && !ok)
    }

    /// Records a check's result; the previous one, if any.
    fn record(&self, key: (String, usize), ok: bool) -> Option<bool> {
        let mut results = self.lock();
        let was = results.insert(key, (ok, Instant::now())).map(|(w, _)| w);
        match (was, ok) {
            (Some(false), true) => self.failing.fetch_sub(1, Ordering::Release),
            (None | Some(true), false) => self.failing.fetch_add(1, Ordering::Release),
            _ => 0,
        };
        was
    }

    /// Drops the results of checks no longer run (a machine's config lost a check, or a probe
    /// answered after its machine went): a failed one would hold the machine out of rotation,
    /// or every request on the slow path, for good.
    fn keep_only(&self, live: &std::collections::HashSet<(String, usize)>) {
        self.drop_where(|key| !live.contains(key));
    }

    pub fn forget(&self, id: &str) {
        self.drop_where(|(m, _)| m == id);
    }

    /// Drops the results whose key is `gone`, keeping the failing count.
    fn drop_where(&self, gone: impl Fn(&(String, usize)) -> bool) {
        self.lock().retain(|key, (ok, _)| {
            let drop = gone(key);
            if drop && !*ok {
                self.failing.fetch_sub(1, Ordering::Release);
            }
            !drop
        });
    }
}

impl Proxy {
    /// Runs `check` against machine `m` once: `true` if it passes within its timeout.
    async fn probe(&self, m: &MachineView, check: &Check) -> bool {
        let attempt = async {
            let Ok(stream) = self
                .dial(m, check.port, false, Duration::ZERO, Purpose::Check)
                .await
            else {
                return false;
            };
            let Some((method, path)) = &check.http else {
                return true;
            };
            let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) else {
                return false;
            };
            let host = m
                .ipv4
                .map_or_else(String::new, |ip| format!("{ip}:{}", check.port));
            let Ok(req) = hyper::Request::builder()
                .method(method)
                .uri(path.as_str())
                .header(hyper::header::HOST, host)
                .body(Empty::<Bytes>::new())
            else {
                return false;
            };
            let Ok((mut sender, connection)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return false;
            };
            tokio::spawn(connection);
            // 2xx passes; redirects are not followed (Fly's rule).
            sender
                .send_request(req)
                .await
                .is_ok_and(|r| r.status().is_success())
        };
        tokio::time::timeout(check.timeout, attempt)
            .await
            .unwrap_or(false)
    }
}

impl Proxy {
    /// Runs every started machine's service checks on their intervals, until the proxy goes.
    pub fn start_checks(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut due: HashMap<(String, usize), Instant> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(this) = me.upgrade() else { return };
                let now = Instant::now();
                let table = this.table();
                let mut live = std::collections::HashSet::new();
                for m in table.machines() {
                    if !m.started || m.ipv4.is_none() {
                        this.health.forget(&m.id);
                        continue;
                    }
                    for (i, check) in m.services.iter().flat_map(|s| s.checks.iter()).enumerate() {
                        let key = (m.id.clone(), i);
                        live.insert(key.clone());
                        if due.get(&key).is_some_and(|t| *t > now) {
                            continue;
                        }
                        due.insert(key.clone(), now + check.interval);
                        let (this, check) = (this.clone(), check.clone());
                        let machine = m.clone();
                        tokio::spawn(async move {
                            let ok = this.probe(&machine, &check).await;
                            let was = this.health.record(key.clone(), ok);
                            if was != Some(ok) {
                                tracing::info!(machine = %key.0, check = key.1, passing = ok, "proxy: service check changed");
                            }
                        });
                    }
                }
                due.retain(|k, _| live.contains(k));
                this.health.keep_only(&live);
            }
        });
    }
}
