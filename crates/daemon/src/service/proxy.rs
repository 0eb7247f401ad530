//! The service's side of the edge proxy: what it is told of machines, what it may ask (start,
//! stop, suspend), and the edge ports create and update may claim.

use hangar_proxy::table::{MachineView, Service, UdpService};

use super::*;

/// The proxy's handle on the service; weak, so the proxy does not keep the service alive.
struct Control(Weak<Hangar>);

#[async_trait::async_trait]
impl hangar_proxy::Controller for Control {
    async fn start(&self, app: &str, id: &str) -> Result<(), String> {
        let h = self.0.upgrade().ok_or("the daemon is stopping")?;
        // On one host every machine is this host's, whatever host name it was made under.
        if !h.is_cluster() {
            return h.start_for_proxy(app, id).await.map_err(|e| e.to_string());
        }
        match h.machine_owner(app, id).await.map_err(|e| e.to_string())? {
            Owner::Local => h.start_for_proxy(app, id).await.map_err(|e| e.to_string()),
            // Another host's machine is started by that host, for this proxy.
            Owner::Host(host) => {
                crate::peers::start_remote(&h.peer(), &host.api_addr, app, id).await
            }
            Owner::Unreachable(host, _) => Err(format!(
                "machine {id} is on host {}, which cannot be reached",
                host.id
            )),
            Owner::Unregistered(host) => Err(format!(
                "machine {id} is on host {host}, which is not registered"
            )),
        }
    }

    async fn backhaul(
        &self,
        via: &str,
        target: &hangar_proxy::upstream::Backhaul<'_>,
    ) -> std::io::Result<Box<dyn hangar_proxy::upstream::Io>> {
        let h = self
            .0
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the daemon is stopping"))?;
        let stream = crate::peers::open(&h.peer(), via, target).await?;
        Ok(Box::new(stream))
    }

    async fn stop(&self, app: &str, id: &str, suspend: bool) -> Result<(), String> {
        let h = self.0.upgrade().ok_or("the daemon is stopping")?;
        let result = if suspend {
            match h.suspend_by(app, id, None, Source::Proxy).await {
                // A machine that cannot be suspended is stopped instead, as on Fly.
                Err(ServiceError::Precondition(_)) => {
                    let opts = StopOptions {
                        signal: None,
                        timeout: None,
                    };
                    h.stop_by(app, id, opts, None, Source::Proxy).await
                }
                other => other,
            }
        } else {
            let opts = StopOptions {
                signal: None,
                timeout: None,
            };
            h.stop_by(app, id, opts, None, Source::Proxy).await
        };
        result.map_err(|e| e.to_string())
    }
}

/// The proxy's view of a machine; `via`: the API address of the host that runs it, when that
/// is another host.
pub(super) fn view(m: &MachineRecord, via: Option<String>) -> MachineView {
    MachineView {
        id: m.id.clone(),
        app: m.app.clone(),
        state: m.state.to_string(),
        started: m.state == MachineState::Started,
        ipv4: m.private_ipv4.parse().ok(),
        via,
        cordoned: m.cordoned,
        services: m
            .config
            .services
            .iter()
            .flatten()
            .filter_map(Service::from_config)
            .collect(),
        udp: m
            .config
            .services
            .iter()
            .flatten()
            .filter_map(UdpService::from_config)
            .collect(),
    }
}

impl Hangar {
    /// Builds the edge proxy on this service and starts its autostop passes. Listeners open
    /// as machines with services are published.
    pub fn attach_proxy(
        self: &Arc<Self>,
        config: hangar_proxy::ProxyConfig,
    ) -> Arc<hangar_proxy::Proxy> {
        let proxy = hangar_proxy::Proxy::new(config, Arc::new(Control(Arc::downgrade(self))));
        proxy.start_autostop();
        proxy.start_checks();
        let _ = self.proxy.set(proxy.clone());
        proxy
    }

    pub fn proxy(&self) -> Option<&Arc<hangar_proxy::Proxy>> {
        self.proxy.get()
    }

    /// Starts (or resumes) a machine of this host for a proxy (this host's, or another's
    /// through the backhaul) and returns once it is `started`.
    pub async fn start_for_proxy(&self, app: &str, id: &str) -> ServiceResult<()> {
        self.start_internal(app, id, Source::Proxy, None).await?;
        // A start that raced another one returns at once: wait for the machine to be up.
        let started = [WaitTarget::State(MachineState::Started)];
        self.wait(app, id, &started, Duration::from_secs(60), None, None)
            .await
            .map(drop)
    }

    /// How this host presents itself to another host's API.
    pub fn peer(&self) -> crate::peers::Peer {
        crate::peers::Peer {
            token: self.cluster_token(),
            host_id: self.host_id.clone(),
            tls: self.cluster_tls().cloned(),
        }
    }

    pub(super) fn publish_to_proxy(&self, m: &MachineRecord) {
        let Some(proxy) = self.proxy.get() else {
            return;
        };
        if m.state == MachineState::Destroyed {
            proxy.remove(&m.id);
        } else {
            proxy.put(view(m, None));
        }
    }

    /// 400 when the config claims an edge port another app holds: raw TCP ports belong to one
    /// app; HTTP ports are shared (routed by `Host`).
    pub(super) fn check_edge_ports(&self, app: &str, config: &MachineConfig) -> ServiceResult<()> {
        let Some(proxy) = self.proxy.get() else {
            return Ok(());
        };
        for s in config
            .services
            .iter()
            .flatten()
            .filter_map(Service::from_config)
        {
            for p in &s.ports {
                for port in p.first..=p.last {
                    if let Some(holder) = proxy.port_conflict(app, port, p.http, false) {
                        return Err(ServiceError::bad_request(format!(
                            "services: edge port {port} is already used by app {holder:?}{}",
                            if p.http { " for raw TCP" } else { "" }
                        )));
                    }
                }
            }
        }
        for s in config
            .services
            .iter()
            .flatten()
            .filter_map(UdpService::from_config)
        {
            for (a, b) in &s.ports {
                for port in *a..=*b {
                    if let Some(holder) = proxy.udp_port_conflict(app, port) {
                        return Err(ServiceError::bad_request(format!(
                            "services: UDP edge port {port} is already used by app {holder:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
