//! IP assignments (fly-go's flaps ip_assignments): an app gets a dedicated address from the
//! pool the daemon was given (`--proxy-ip-pool`), where the proxy opens its edge ports, its raw
//! TCP ports only there (so two apps can each have their own port 5432); or the shared
//! address, which every app has. Flycast (`private_v6`) is not served.

use std::net::IpAddr;

use hangar_store::IpAssignmentRecord;

use super::*;

impl Hangar {
    pub async fn assign_ip(
        &self,
        app: &str,
        kind: &str,
        service_name: Option<String>,
    ) -> ServiceResult<IpAssignmentRecord> {
        self.get_app(app).await?;
        let proxy = self
            .proxy()
            .cloned()
            .ok_or_else(|| ServiceError::precondition("this daemon runs no proxy"))?;
        let (ip, shared) =
            match kind {
                "v4" | "v6" => {
                    let v4 = kind == "v4";
                    let taken: Vec<String> = db(&self.store, |s| s.list_ip_assignments(None))
                        .await?
                        .into_iter()
                        .filter(|a| !a.shared)
                        .map(|a| a.ip)
                        .collect();
                    let free = proxy
                        .config
                        .ip_pool
                        .iter()
                        .find(|ip| ip.is_ipv4() == v4 && !taken.contains(&ip.to_string()))
                        .ok_or_else(|| {
                            ServiceError::conflict(format!(
                            "no free IP{kind} address: the daemon's pool (--proxy-ip-pool) is {}",
                            if proxy.config.ip_pool.iter().any(|ip| ip.is_ipv4() == v4) {
                                "all assigned"
                            } else {
                                "empty for this family"
                            }
                        ))
                        })?;
                    (free.to_string(), false)
                }
                "shared_v4" => {
                    let bind = proxy
                        .config
                        .binds
                        .iter()
                        .find(|ip| ip.is_ipv4())
                        .ok_or_else(|| {
                            ServiceError::precondition(
                                "the proxy listens on no IPv4 address (--proxy-bind)",
                            )
                        })?;
                    (bind.to_string(), true)
                }
                "private_v6" => return Err(ServiceError::bad_request(
                    "type: private_v6 (Flycast) is not supported by Hangar; machines reach each \
                     other by their .internal names",
                )),
                other => {
                    return Err(ServiceError::bad_request(format!(
                        "type: {other:?} is not one of v4, v6, shared_v4, private_v6"
                    )))
                }
            };
        let record = IpAssignmentRecord {
            ip: ip.clone(),
            app: app.to_string(),
            region: self.region.clone(),
            service_name: service_name.unwrap_or_default(),
            shared,
            created_at: now_ms(),
        };
        let rec = record.clone();
        db(&self.store, move |s| s.insert_ip_assignment(&rec))
            .await
            .map_err(|e| match e {
                ServiceError::Conflict(_) if shared => {
                    ServiceError::conflict(format!("app {app} has the shared address already"))
                }
                other => other,
            })?;
        if !shared {
            if let Ok(addr) = ip.parse::<IpAddr>() {
                proxy.set_dedicated(addr, app);
            }
        }
        tracing::info!(app, %ip, shared, "address assigned");
        Ok(record)
    }

    pub async fn list_ip_assignments(&self, app: &str) -> ServiceResult<Vec<IpAssignmentRecord>> {
        self.get_app(app).await?;
        let a = app.to_string();
        db(&self.store, move |s| s.list_ip_assignments(Some(&a))).await
    }

    /// Releases `ip` from `app`. Refused (409) while the app's raw TCP ports, which would move
    /// to the shared addresses, are held there by another app.
    pub async fn release_ip(&self, app: &str, ip: &str) -> ServiceResult<()> {
        let mine = self.list_ip_assignments(app).await?;
        let Some(rec) = mine.iter().find(|a| a.ip == ip) else {
            return Err(ServiceError::not_found(format!(
                "address {ip} is not assigned to app {app}"
            )));
        };
        let dedicated_left = mine.iter().filter(|a| !a.shared && a.ip != ip).count();
        if let (false, 0, Some(proxy)) = (rec.shared, dedicated_left, self.proxy()) {
            let table = proxy.table();
            for port in table.edge_ports() {
                let raw_here = table
                    .candidates_of(port, app)
                    .iter()
                    .any(|c| !c.edge().http && !c.edge().tls);
                if raw_here {
                    if let Some(holder) = proxy.port_conflict(app, port, false, true) {
                        return Err(ServiceError::conflict(format!(
                            "releasing {ip} would move app {app}'s raw TCP port {port} to the \
                             shared addresses, where app {holder} has it"
                        )));
                    }
                }
            }
        }
        let (a, i) = (app.to_string(), ip.to_string());
        db(&self.store, move |s| s.delete_ip_assignment(&a, &i)).await?;
        if !rec.shared {
            if let (Some(p), Ok(addr)) = (self.proxy(), ip.parse::<IpAddr>()) {
                p.remove_dedicated(addr);
            }
        }
        Ok(())
    }

    /// Hands the stored dedicated addresses to the proxy (start-up).
    pub async fn load_ip_assignments(&self) -> ServiceResult<()> {
        let Some(proxy) = self.proxy().cloned() else {
            return Ok(());
        };
        for a in db(&self.store, |s| s.list_ip_assignments(None)).await? {
            if let (false, Ok(addr)) = (a.shared, a.ip.parse::<IpAddr>()) {
                if !proxy.config.ip_pool.contains(&addr) {
                    tracing::warn!(app = %a.app, ip = %a.ip, "assigned address is no longer in --proxy-ip-pool; kept, served anyway");
                }
                proxy.set_dedicated(addr, &a.app);
            }
        }
        Ok(())
    }
}
